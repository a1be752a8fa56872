//! Resolution: from the spanned TOML tree to a [`Plan`], collecting every problem.
//!
//! Sources, transforms and sinks form a graph through `inputs`: an input names a source or a
//! transform; a cycle, an unknown input, or a source or transform nothing reads is a problem. The
//! plan lists transforms in an order where each comes after its inputs.
//!
//! Engine-owned keys (`type`, `inputs`, `format`, `compression`, `columns`, `buffer`, `prefix`,
//! `error_prefix`, `time_zone`, `retry`) are read here; what is left of a component's table goes to
//! its connector, which deserializes it into its own `deny_unknown_fields` struct.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use toml::Spanned;

use super::columnar::take_parquet_spec;
use super::diagnostic::{Diagnostic, did_you_mean};
use super::document::{Section, join_ticked};
use super::registry::{ConnectorConfig, Durability, FixedBody, LogEncryption, Registry, Retention};
use crate::compression::Compression;
use crate::contract::{DestinationKind, Sink, Source, Transform};
use crate::format::{self, ObjectFormat};
use crate::keys::{ObjectKeyTemplate, ObjectKeys, PartitionKeyRef};
use crate::retry::RetryPolicy;

/// Firehose `BufferingHints`: deliver at `size_bytes` (before compression) or `interval`, whichever
/// comes first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BufferingHints {
    /// Size threshold in bytes, measured before compression.
    pub size_bytes: u64,
    /// Age threshold of the oldest buffered record.
    pub interval: Duration,
}

impl BufferingHints {
    /// S3 range and default for `size_mb` (docs/firehose.md §2).
    pub const SIZE_MB: std::ops::RangeInclusive<i64> = 1..=128;
    /// S3 range and default for `interval_s`.
    pub const INTERVAL_S: std::ops::RangeInclusive<i64> = 0..=900;
    /// Firehose's S3 defaults: 5 MB, 300 s.
    pub const DEFAULT: BufferingHints =
        BufferingHints { size_bytes: 5 * 1024 * 1024, interval: Duration::from_secs(300) };
    /// Firehose's defaults with format conversion: 128 MB, 300 s (and at least 64 MB).
    pub const DEFAULT_FOR_CONVERSION: BufferingHints =
        BufferingHints { size_bytes: 128 * 1024 * 1024, interval: Duration::from_secs(300) };
}

/// Everything the engine needs to build a sink's objects.
#[derive(Debug, Clone)]
pub struct SinkSettings {
    /// Object format, compression included: the pipeline's `format` and `compression`, or the
    /// sink's own wire format.
    pub format: Arc<dyn ObjectFormat>,
    /// When to close an object.
    pub hints: BufferingHints,
    /// How objects are named.
    pub keys: ObjectKeys,
    /// How long to retry a failing delivery.
    pub retry: RetryPolicy,
    /// What goes to the error output besides records that could not be converted.
    pub backup: BackupMode,
    /// Dynamic partitioning, when the prefix uses partition keys.
    pub partitioning: Option<Arc<Partitioning>>,
}

impl SinkSettings {
    /// Settings for objects of `format`, buffered by `hints` and named by `keys`, with the default
    /// retry policy, `backup = "failed"` and no partitioning (tests and the conformance testkit).
    pub fn new(format: Arc<dyn ObjectFormat>, hints: BufferingHints, keys: ObjectKeys) -> Self {
        SinkSettings {
            format,
            hints,
            keys,
            retry: RetryPolicy::default(),
            backup: BackupMode::Failed,
            partitioning: None,
        }
    }
}

/// A sink's dynamic partitioning: where each partition key of its prefix comes from, and the
/// memory its open partitions may hold on one worker.
#[derive(Clone)]
pub struct Partitioning {
    /// `partitioning.query`, for `!{partitionKeyFromQuery:…}` keys.
    pub query: Option<Arc<dyn crate::contract::KeyQuery>>,
    /// The prefix's partition keys, in order.
    pub keys: Vec<PartitionKeyRef>,
    /// `partitioning.max_open_mb` in bytes: past it the largest open partition is sealed early.
    pub max_open_bytes: u64,
    /// `deaggregation`: how a record holding several records is split before partitioning.
    pub deaggregation: Option<Deaggregation>,
}

impl Partitioning {
    /// The Firehose processors this partitioning amounts to, in Firehose's order: its
    /// `RecordDeAggregation` (`SubRecordType` `JSON` or `DELIMITED`, the delimiter in base64), then
    /// its `MetadataExtraction` (the query, parsed as jq 1.6).
    pub fn processors(&self) -> Vec<crate::contract::Processor> {
        use base64::Engine as _;
        let mut processors = Vec::new();
        match &self.deaggregation {
            Some(Deaggregation::Json) => processors.push(crate::contract::Processor {
                kind: "RecordDeAggregation",
                parameters: vec![("SubRecordType", "JSON".into())],
            }),
            Some(Deaggregation::Delimiter(delimiter)) => processors.push(crate::contract::Processor {
                kind: "RecordDeAggregation",
                parameters: vec![
                    ("SubRecordType", "DELIMITED".into()),
                    ("Delimiter", base64::engine::general_purpose::STANDARD.encode(delimiter)),
                ],
            }),
            None => {}
        }
        if let Some(query) = &self.query {
            processors.push(crate::contract::Processor {
                kind: "MetadataExtraction",
                parameters: vec![("MetadataExtractionQuery", query.describe()), ("JsonParsingEngine", "JQ-1.6".into())],
            });
        }
        processors
    }
}

/// What a `deaggregation` that is neither kind is told (message, hint).
const NOT_A_DEAGGREGATION: (&str, &str) = (
    "`deaggregation` is \"json\" or { delimiter = \"…\" }",
    "Firehose's RecordDeAggregation: JSON values one after another, or records split on a delimiter",
);

/// Firehose's record de-aggregation (`deaggregation`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Deaggregation {
    /// `"json"`: JSON values one after another (concatenated or one per line).
    Json,
    /// `{ delimiter = "…" }`: records separated by this text.
    Delimiter(Vec<u8>),
}

impl Deaggregation {
    /// The records `record` holds, appended to `out`; an error says why it cannot be split. A
    /// record that holds none (only white space, only delimiters) is an error too: it is not
    /// dropped without a word.
    pub fn split<'r>(&self, record: &'r [u8], out: &mut Vec<&'r [u8]>) -> Result<(), String> {
        let before = out.len();
        self.split_into(record, out)?;
        if out.len() == before {
            return Err(match self {
                Deaggregation::Json => "the record holds no JSON value".into(),
                Deaggregation::Delimiter(_) => "the record holds nothing but the delimiter".into(),
            });
        }
        Ok(())
    }

    fn split_into<'r>(&self, record: &'r [u8], out: &mut Vec<&'r [u8]>) -> Result<(), String> {
        match self {
            Deaggregation::Json => {
                let mut values = serde_json::Deserializer::from_slice(record).into_iter::<serde::de::IgnoredAny>();
                let mut start = 0;
                while let Some(value) = values.next() {
                    value.map_err(|e| format!("the record is not JSON values one after another: {e}"))?;
                    let end = values.byte_offset();
                    let piece = record[start..end].trim_ascii();
                    if !piece.is_empty() {
                        out.push(piece);
                    }
                    start = end;
                }
                Ok(())
            }
            Deaggregation::Delimiter(delimiter) => {
                let mut start = 0;
                for at in memchr::memmem::find_iter(record, delimiter) {
                    if at > start {
                        out.push(&record[start..at]);
                    }
                    start = at + delimiter.len();
                }
                if start < record.len() {
                    out.push(&record[start..]);
                }
                Ok(())
            }
        }
    }
}

impl std::fmt::Debug for Partitioning {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Partitioning")
            .field("query", &self.query.as_ref().map(|q| q.describe()))
            .field("keys", &self.keys)
            .field("max_open_bytes", &self.max_open_bytes)
            .finish()
    }
}

/// `backup` of a sink: what is written under `error_prefix` (Firehose's `S3BackupMode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BackupMode {
    /// Records whose delivery failed (retries exhausted or a permanent error), as error documents.
    #[default]
    Failed,
    /// Those, and every source record as it arrived (`source-record-backup`).
    All,
}

impl BackupMode {
    /// Names accepted in config.
    pub const NAMES: &'static [&'static str] = &["failed", "all"];

    /// The config name's mode.
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "failed" => Some(BackupMode::Failed),
            "all" => Some(BackupMode::All),
            _ => None,
        }
    }
}

/// A pipeline as the Firehose API describes it (DescribeDeliveryStream).
#[derive(Debug, Clone)]
pub struct StreamInfo {
    /// Delivery stream (pipeline) name.
    pub name: String,
    /// When the run started, ms since the epoch (the stream's creation time).
    pub created_ms: i64,
    /// One per sink.
    pub destinations: Vec<DestinationInfo>,
}

/// One sink as a Firehose destination.
#[derive(Debug, Clone)]
pub struct DestinationInfo {
    /// The sink's name.
    pub sink: String,
    /// Its Firehose destination kind.
    pub kind: DestinationKind,
    /// Where it delivers (the sink's own description, e.g. its URL).
    pub location: String,
    /// Buffering size hint in MB.
    pub size_mb: u64,
    /// Buffering interval hint in seconds.
    pub interval_s: u64,
    /// Firehose's `CompressionFormat` name (`UNCOMPRESSED`, `GZIP`, `Snappy`; sluice adds `ZSTD`;
    /// Parquet compresses inside the file, so it reports `UNCOMPRESSED`).
    pub compression_format: &'static str,
    /// Whether records are converted (Parquet).
    pub format_conversion: bool,
    /// `prefix` as configured.
    pub prefix: String,
    /// `error_prefix` as configured.
    pub error_prefix: Option<String>,
    /// Extension of data objects.
    pub file_extension: String,
    /// The Firehose processors of the transforms upstream of the sink, sources first, then those
    /// the sink itself amounts to (de-aggregation, the partitioning query, a format's delimiter).
    pub processors: Vec<crate::contract::Processor>,
    /// `retry.duration_s`.
    pub retry_s: u64,
    /// `backup = "all"`: every source record is backed up too (Firehose's S3BackupMode enabled).
    pub backs_up_all: bool,
    /// The time zone of its keys' timestamps (Firehose's CustomTimeZone).
    pub time_zone: String,
    /// Whether its objects are laid out by partition (Firehose's dynamic partitioning).
    pub partitioned: bool,
    /// The KMS key the destination encrypts with ([`crate::contract::Sink::kms_key`]).
    pub kms_key: Option<String>,
}

/// A resolved source.
#[derive(Clone)]
pub struct SourcePlan {
    /// Its name in `[sources.<name>]`.
    pub name: String,
    /// Its `type`.
    pub type_name: String,
    /// The connector.
    pub source: Arc<dyn Source>,
}

/// What a transform or sink reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Input {
    /// The source at this index of [`Plan::sources`].
    Source(usize),
    /// The transform at this index of [`Plan::transforms`].
    Transform(usize),
}

/// A resolved transform.
#[derive(Clone)]
pub struct TransformPlan {
    /// Its name in `[transforms.<name>]`.
    pub name: String,
    /// Its `type`.
    pub type_name: String,
    /// What it reads: sources, or transforms earlier in [`Plan::transforms`].
    pub inputs: Vec<Input>,
    /// The connector.
    pub transform: Arc<dyn Transform>,
}

/// A resolved sink.
#[derive(Clone)]
pub struct SinkPlan {
    /// Its name in `[sinks.<name>]`.
    pub name: String,
    /// Its `type`.
    pub type_name: String,
    /// What it reads.
    pub inputs: Vec<Input>,
    /// Engine-owned settings.
    pub settings: Arc<SinkSettings>,
    /// The connector.
    pub sink: Arc<dyn Sink>,
}

/// A checked pipeline: the graph the runtime builds on every worker.
#[derive(Clone)]
pub struct Plan {
    /// Pipeline (delivery stream) name.
    pub name: String,
    /// Configured worker count, if any.
    pub workers: Option<usize>,
    /// How long a stopped run waits for its deliveries (`stop_timeout_s`), if configured.
    pub stop_timeout: Option<Duration>,
    /// Sources, in file order.
    pub sources: Vec<SourcePlan>,
    /// Transforms, each after its inputs.
    pub transforms: Vec<TransformPlan>,
    /// Sinks, in file order.
    pub sinks: Vec<SinkPlan>,
    /// `[pipeline] audit_log`, if set.
    pub audit: Option<crate::line_store::LinePlan>,
    /// `[pipeline] error_log`, if set.
    pub error_log: Option<crate::line_store::LinePlan>,
    /// `[pipeline] data_dir` (resolved): where the pipeline keeps its state.
    pub data_dir: PathBuf,
}

impl Plan {
    /// The pipeline as a Firehose delivery stream, created at `created_ms`.
    pub fn stream_info(&self, created_ms: i64) -> StreamInfo {
        let destinations = self
            .sinks
            .iter()
            .map(|s| {
                let settings = &s.settings;
                let (prefix, error_prefix) = settings.keys.configured();
                let converts = settings.format.converts();
                DestinationInfo {
                    sink: s.name.clone(),
                    kind: s.sink.destination(),
                    location: s.sink.location(),
                    size_mb: settings.hints.size_bytes >> 20,
                    interval_s: settings.hints.interval.as_secs(),
                    compression_format: settings.format.compression_format().firehose_name(),
                    format_conversion: converts,
                    prefix: prefix.to_string(),
                    error_prefix: error_prefix.map(str::to_string),
                    file_extension: settings.keys.data_extension(&settings.format.extension()).to_string(),
                    processors: self
                        .transforms_upstream_of(&s.inputs)
                        .iter()
                        .flat_map(|&t| self.transforms[t].transform.processors())
                        .chain(settings.partitioning.iter().flat_map(|p| p.processors()))
                        .chain(settings.format.processors())
                        .collect(),
                    retry_s: settings.retry.duration.as_secs(),
                    backs_up_all: settings.backup == BackupMode::All,
                    time_zone: settings.keys.time_zone().name().to_string(),
                    partitioned: settings.partitioning.is_some(),
                    kms_key: s.sink.kms_key(),
                }
            })
            .collect();
        StreamInfo { name: self.name.clone(), created_ms, destinations }
    }

    /// Fresh counters for a run of this plan.
    pub fn new_metrics(&self) -> crate::metrics::PipelineMetrics {
        crate::metrics::PipelineMetrics::new(self.sources.len(), self.sinks.len())
            .with_transforms(self.transforms.len())
    }

    /// How the Prometheus endpoint labels the transforms.
    pub fn transform_labels(&self) -> Vec<crate::metrics::TransformLabel> {
        self.transforms
            .iter()
            .map(|t| crate::metrics::TransformLabel { name: t.name.clone(), type_name: t.type_name.clone() })
            .collect()
    }

    /// The sources whose records reach `inputs`, directly or through transforms, each once, in
    /// plan order.
    pub fn sources_upstream_of(&self, inputs: &[Input]) -> Vec<usize> {
        let mut seen = vec![false; self.sources.len()];
        let mut pending: Vec<Input> = inputs.to_vec();
        while let Some(input) = pending.pop() {
            match input {
                Input::Source(i) => seen[i] = true,
                Input::Transform(t) => pending.extend(self.transforms[t].inputs.iter().copied()),
            }
        }
        (0..seen.len()).filter(|&i| seen[i]).collect()
    }

    /// The transforms whose output reaches `inputs`, directly or through other transforms, each
    /// once, in plan order (inputs before what reads them).
    pub fn transforms_upstream_of(&self, inputs: &[Input]) -> Vec<usize> {
        let mut seen = vec![false; self.transforms.len()];
        let mut pending: Vec<Input> = inputs.to_vec();
        while let Some(input) = pending.pop() {
            if let Input::Transform(t) = input
                && !seen[t]
            {
                seen[t] = true;
                pending.extend(self.transforms[t].inputs.iter().copied());
            }
        }
        (0..seen.len()).filter(|&t| seen[t]).collect()
    }

    /// The name of what `input` reads.
    pub fn input_name(&self, input: Input) -> &str {
        match input {
            Input::Source(i) => &self.sources[i].name,
            Input::Transform(i) => &self.transforms[i].name,
        }
    }

    /// Whether every source ends by itself (a batch run).
    pub fn is_batch(&self) -> bool {
        self.sources.iter().all(|s| s.source.is_finite())
    }

    /// What every process of a cluster must agree on: the graph and every setting that shapes
    /// it or what it writes (transforms, sinks, formats, buffers, keys, partitioning), as a
    /// 64-bit FNV-1a hash. Per-host settings are left out: a source's own settings (listen
    /// addresses, paths as mounted) and `data_dir` (each process keeps its own state).
    pub fn fingerprint(&self) -> u64 {
        let mut shape = format!("pipeline {}\n", self.name);
        for s in &self.sources {
            shape.push_str(&format!("source {} {}\n", s.name, s.type_name));
        }
        // The transforms and sinks as `validate` shows them.
        let rendered = self.render();
        for line in rendered.lines().skip(1).filter(|l| !l.trim_start().starts_with("source ")) {
            shape.push_str(line);
            shape.push('\n');
        }
        for s in &self.sinks {
            let (prefix, error_prefix) = s.settings.keys.configured();
            shape.push_str(&format!("keys {} {prefix:?} {error_prefix:?}\n", s.name));
        }
        crate::contract::fingerprint(shape.as_bytes())
    }

    /// The graph as text, for `sluice validate`.
    pub fn render(&self) -> String {
        let mut out = format!(
            "pipeline {} ({} run, workers: {})\n",
            self.name,
            if self.is_batch() { "batch" } else { "stream" },
            self.workers.map_or("one per core".to_string(), |w| w.to_string())
        );
        for s in &self.sources {
            out.push_str(&format!("  source {:<16} {}\n", s.name, s.source.describe()));
        }
        for t in &self.transforms {
            let inputs: Vec<&str> = t.inputs.iter().map(|&i| self.input_name(i)).collect();
            out.push_str(&format!(
                "  transform {:<13} {} <- [{}]\n",
                t.name,
                t.transform.describe(),
                inputs.join(", ")
            ));
        }
        for s in &self.sinks {
            let inputs: Vec<&str> = s.inputs.iter().map(|&i| self.input_name(i)).collect();
            let st = &s.settings;
            out.push_str(&format!(
                "  sink   {:<16} {} <- [{}]\n         {:<16} format {} compression {}, buffer {} MiB / {} s, retry {} s, backup {}\n",
                s.name,
                s.sink.describe(),
                inputs.join(", "),
                "",
                st.format.describe(),
                st.format.compression().name(),
                st.hints.size_bytes / (1024 * 1024),
                st.hints.interval.as_secs(),
                st.retry.duration.as_secs(),
                match st.backup {
                    BackupMode::Failed => "failed",
                    BackupMode::All => "all",
                },
            ));
            if let Some(p) = &st.partitioning {
                let keys: Vec<String> = p
                    .keys
                    .iter()
                    .map(|k| format!("{}:{}", if k.from_lambda { "lambda" } else { "query" }, k.name))
                    .collect();
                out.push_str(&format!(
                    "         {:<16} partitioned by {} (max_open_mb {}){}\n",
                    "",
                    keys.join(", "),
                    p.max_open_bytes >> 20,
                    p.query.as_ref().map_or(String::new(), |q| format!(", query {}", q.describe()))
                ));
            }
        }
        out
    }
}

const TOP_LEVEL_KEYS: &[&str] = &["pipeline", "sources", "transforms", "sinks"];
/// Keys of a source table that the engine reads.
const SOURCE_ENGINE_KEYS: &[&str] = &["type"];
/// Keys of a transform table that the engine reads.
const TRANSFORM_ENGINE_KEYS: &[&str] = &["type", "inputs"];

/// Keys of a sink table that the engine reads (the rest belong to the connector).
pub const SINK_ENGINE_KEYS: &[&str] = &[
    "type",
    "inputs",
    "buffer",
    "prefix",
    "error_prefix",
    "time_zone",
    "retry",
    "backup",
    "format",
    "compression",
    "columns",
    "schema",
    "parquet",
    "json",
    "file_extension",
    "partitioning",
    "deaggregation",
];
/// The engine's keys of a sink whose type has a fixed body: the first of [`SINK_ENGINE_KEYS`],
/// without those that encode objects ([`OBJECT_BODY_KEYS`]) and partition them
/// ([`PARTITIONING_KEYS`]); a unit test keeps the three lists in step.
const FIXED_BODY_SINK_ENGINE_KEYS: &[&str] = SINK_ENGINE_KEYS.split_at(8).0;
/// How the engine encodes a sink's objects: refused for a type whose destination fixes the body.
const OBJECT_BODY_KEYS: &[&str] = &["format", "compression", "columns", "schema", "parquet", "json", "file_extension"];

/// The keys of `format = "parquet"` (read by [`take_parquet_spec`]).
const PARQUET_KEYS: &[&str] = &["schema", "parquet", "json"];
/// How the engine partitions a sink's objects: refused for a type whose destination fixes the body.
const PARTITIONING_KEYS: &[&str] = &["partitioning", "deaggregation"];
const PIPELINE_KEYS: &[&str] = &[
    "name",
    "workers",
    "data_dir",
    "durability",
    "retention",
    "stop_timeout_s",
    "encryption",
    "audit_log",
    "error_log",
];

/// Lines stored through a sink (the `object_store` sink of `audit_log`/`error_log`'s URL).
struct SinkLines(Arc<dyn Sink>);

impl crate::line_store::LineSink for SinkLines {
    fn prepare(&self) -> futures::future::BoxFuture<'static, Result<(), String>> {
        let prepared = self.0.prepare();
        Box::pin(async move { prepared.await.map_err(|e| e.to_string()) })
    }

    fn check(&self) -> futures::future::BoxFuture<'static, Result<(), String>> {
        let checked = self.0.check();
        Box::pin(async move { checked.await.map_err(|e| e.to_string()) })
    }

    fn put(&self, key: String, body: bytes::Bytes) -> futures::future::BoxFuture<'static, Result<(), String>> {
        let records = body.iter().filter(|&&b| b == b'\n').count() as u64;
        let payload = crate::contract::Payload {
            key,
            body,
            content_type: "application/x-ndjson",
            content_encoding: None,
            records,
            origins: None,
        };
        let delivered = self.0.deliver(payload);
        Box::pin(async move { delivered.await.map_err(|e| e.to_string()) })
    }

    fn describe(&self) -> String {
        self.0.describe()
    }

    fn finish(&self) -> futures::future::BoxFuture<'static, ()> {
        self.0.finish()
    }
}

/// `[pipeline] audit_log` or `error_log` (`key`) `= "stderr" | "<object_store URL>" | { url,
/// options, buffer = { size_mb, interval_s } }`: the store is the `object_store` sink for the URL
/// (its options, checks and errors), so any URL a sink takes works here.
fn line_plan<'a>(
    value: super::document::Value<'a>,
    key: &str,
    connector_config: &dyn Fn(String, Section<'a>) -> ConnectorConfig<'a>,
    registry: &Registry,
    problems: &mut Vec<Diagnostic>,
) -> Option<crate::line_store::LinePlan> {
    use crate::line_store::{LinePlan, LineTarget};
    use toml::de::DeValue;
    let span = value.span();
    let mut plan = LinePlan { target: LineTarget::Stderr, size_bytes: 5 << 20, interval: Duration::from_secs(60) };
    let hint = format!(
        "{key} = \"stderr\", an object store URL (\"file://./{key}\", \"s3://bucket/{key}\"), or {{ url = \"...\", options = {{ ... }}, buffer = {{ size_mb = 5, interval_s = 60 }} }}"
    );
    let mut section = match value.get_ref() {
        DeValue::String(url) if url.as_ref() == "stderr" => return Some(plan),
        DeValue::String(url) => {
            let mut table = toml::de::DeTable::new();
            table.insert(
                Spanned::new(span.clone(), std::borrow::Cow::Borrowed("url")),
                Spanned::new(span.clone(), DeValue::String(std::borrow::Cow::Owned(url.to_string()))),
            );
            Section::from_value(format!("pipeline.{key}"), Spanned::new(span.clone(), DeValue::Table(table)), problems)?
        }
        DeValue::Table(_) => Section::from_value(format!("pipeline.{key}"), value, problems)?,
        _ => {
            problems.push(Diagnostic::new(span, format!("`{key}` must be a string or a table")).with_hint(hint));
            return None;
        }
    };
    if let Some(mut buffer) = section.take_table("buffer", problems) {
        let size_hint = "MB of lines per object (1-128)";
        if let Some(mb) = buffer.take_int_in("size_mb", 1..=128, size_hint, problems) {
            plan.size_bytes = (mb.into_inner() as usize) << 20;
        }
        let interval_hint = "seconds the oldest line may wait (1-900)";
        if let Some(s) = buffer.take_int_in("interval_s", 1..=900, interval_hint, problems) {
            plan.interval = Duration::from_secs(s.into_inner() as u64);
        }
        buffer.deny_unknown(&["size_mb", "interval_s"], problems);
    }
    let sink_type = registry.sink("object_store")?;
    match (sink_type.configure)(connector_config(key.into(), section)) {
        Ok(sink) => {
            plan.target = LineTarget::Store(Arc::new(SinkLines(sink)));
            Some(plan)
        }
        Err(found) => {
            problems.extend(refusal(found));
            None
        }
    }
}

/// `[pipeline] encryption = { key_file = "..." }` or `{ kms_key_id = "...", kms_endpoint, region }`.
fn log_encryption(mut e: Section, base_dir: &Path, problems: &mut Vec<Diagnostic>) -> Option<LogEncryption> {
    let span = e.span.clone();
    let key_file = e.take_string("key_file", problems);
    let key_id = e.take_string("kms_key_id", problems);
    let endpoint = e.take_string("kms_endpoint", problems);
    let region = e.take_string("region", problems);
    e.deny_unknown(&["key_file", "kms_key_id", "kms_endpoint", "region"], problems);
    let generate = "make one with: head -c 32 /dev/urandom | base64 > keys/wal.key (and keep a copy: without it the log cannot be read)";
    match (key_file, key_id) {
        (Some(file), None) => {
            if let Some(extra) = endpoint.as_ref().or(region.as_ref()) {
                problems.push(
                    Diagnostic::new(extra.span(), "`kms_endpoint` and `region` belong to `kms_key_id`")
                        .with_hint("a key file needs only `key_file`"),
                );
            }
            let path = base_dir.join(file.get_ref());
            match crate::wal::seal::KeyFile::load(&path) {
                Ok(_) => Some(LogEncryption::KeyFile(path)),
                Err(why) => {
                    problems.push(Diagnostic::new(file.span(), why).with_hint(generate));
                    None
                }
            }
        }
        (None, Some(key_id)) => {
            if key_id.get_ref().is_empty() {
                problems.push(
                    Diagnostic::new(key_id.span(), "`kms_key_id` is empty")
                        .with_hint("a KMS key id, ARN or alias, e.g. \"arn:aws:kms:us-east-1:123456789012:key/…\""),
                );
                return None;
            }
            let from_arn =
                key_id.get_ref().strip_prefix("arn:aws:kms:").and_then(|r| r.split(':').next()).map(str::to_string);
            let region = region
                .map(Spanned::into_inner)
                .or(from_arn.filter(|r| !r.is_empty()))
                .or_else(|| std::env::var("AWS_REGION").ok().filter(|r| !r.is_empty()))
                .unwrap_or_else(|| "us-east-1".into());
            let endpoint = match endpoint {
                Some(url) if url.get_ref().starts_with("http://") || url.get_ref().starts_with("https://") => {
                    url.into_inner()
                }
                Some(url) => {
                    problems.push(
                        Diagnostic::new(url.span(), format!("`{}` is not an http(s) URL", url.get_ref()))
                            .with_hint("e.g. kms_endpoint = \"http://127.0.0.1:5000\""),
                    );
                    return None;
                }
                None => format!("https://kms.{region}.amazonaws.com"),
            };
            Some(LogEncryption::Kms { key_id: key_id.into_inner(), endpoint, region })
        }
        (Some(file), Some(key_id)) => {
            problems.push(
                Diagnostic::new(
                    key_id.span().start..file.span().end.max(key_id.span().end),
                    "`key_file` and `kms_key_id` are both set",
                )
                .with_hint("choose one: a local key file, or a KMS key"),
            );
            None
        }
        (None, None) => {
            problems.push(Diagnostic::new(span, "`encryption` names no key").with_hint(format!(
                "use {{ key_file = \"keys/wal.key\" }} ({generate}) or {{ kms_key_id = \"arn:aws:kms:...\" }}"
            )));
            None
        }
    }
}

fn valid_stream_name(name: &str) -> bool {
    (1..=64).contains(&name.len()) && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
}

pub(super) fn resolve<'a>(
    mut root: Section<'a>,
    base_dir: &Path,
    registry: &Registry,
    process: Option<usize>,
) -> Result<Plan, Vec<Diagnostic>> {
    let mut problems = Vec::new();
    let pipeline = root.take_table("pipeline", &mut problems);
    let sources_table = root.take_table("sources", &mut problems);
    let transforms_table = root.take_table("transforms", &mut problems);
    let sinks_table = root.take_table("sinks", &mut problems);
    let root_span = root.span.clone();
    root.deny_unknown(TOP_LEVEL_KEYS, &mut problems);

    // [pipeline]
    let (mut name, mut workers, mut stop_timeout) = (String::new(), None, None);
    let (mut data_dir, mut durability, mut retention) = (None, Durability::Fsync, Retention::default());
    let mut encryption = None;
    let (mut audit_value, mut error_log_value) = (None, None);
    match pipeline {
        None => problems.push(
            Diagnostic::new(root_span.start..root_span.start, "missing [pipeline] table")
                .with_hint("start the file with [pipeline] and name = \"my-stream\""),
        ),
        Some(mut p) => {
            // A name written but not a string is reported as such, not as missing too.
            let name_written = p.contains("name");
            match p.take_string("name", &mut problems) {
                Some(n) if n.get_ref().bytes().all(|b| b == b'.') && !n.get_ref().is_empty() => problems.push(
                    Diagnostic::new(n.span(), format!("pipeline name `{}` is not usable", n.get_ref()))
                        .with_hint("the name names folders (data/<name>) and objects: use letters, digits, `_`, `.` and `-`, not only dots"),
                ),
                Some(n) if valid_stream_name(n.get_ref()) => name = n.into_inner(),
                Some(n) => problems.push(
                    Diagnostic::new(
                        n.span(),
                        format!("pipeline name `{}` is not a valid delivery stream name", n.get_ref()),
                    )
                    .with_hint("use 1-64 characters of a-z, A-Z, 0-9, `_`, `.` and `-`"),
                ),
                None if !name_written => problems.push(
                    Diagnostic::new(p.span.clone(), "`pipeline.name` is missing")
                        .with_hint("add name = \"my-stream\" (it is the Firehose delivery stream name)"),
                ),
                None => {}
            }
            workers = p
                .take_int_in(
                    "workers",
                    1..=1024,
                    "the number of timely worker threads; leave it out for one per core",
                    &mut problems,
                )
                .map(|w| w.into_inner() as usize);
            data_dir = p.take_string("data_dir", &mut problems).map(|d| PathBuf::from(d.into_inner()));
            stop_timeout = p
                .take_int_in(
                    "stop_timeout_s",
                    1..=3600,
                    "seconds a stopped run waits for deliveries before leaving the rest for the next start",
                    &mut problems,
                )
                .map(|s| Duration::from_secs(s.into_inner() as u64));
            if let Some(mode) = p.take_string("durability", &mut problems) {
                match Durability::from_name(mode.get_ref()) {
                    Some(d) => durability = d,
                    None => problems.push(
                        Diagnostic::new(mode.span(), format!("unknown durability `{}`", mode.get_ref()))
                            .with_hint("use `fsync` (acknowledge after a group-committed fsync), `buffered` (after the write) or `none` (no log)"),
                    ),
                }
            }
            if let Some(mut r) = p.take_table("retention", &mut problems) {
                let hint = "the write-ahead log's disk budget; puts are throttled past it";
                if let Some(gb) = r.take_int_in("max_gb", 1..=1_000_000, hint, &mut problems) {
                    retention.max_bytes = (gb.into_inner() as u64) << 30;
                }
                let hint = "undelivered records older than this leave the log (Firehose keeps 24)";
                if let Some(hours) = r.take_int_in("max_hours", 1..=720, hint, &mut problems) {
                    retention.max_age = std::time::Duration::from_secs(hours.into_inner() as u64 * 3600);
                }
                r.deny_unknown(&["max_gb", "max_hours"], &mut problems);
            }
            if let Some(e) = p.take_table("encryption", &mut problems) {
                encryption = log_encryption(e, base_dir, &mut problems);
            }
            audit_value = p.take("audit_log");
            error_log_value = p.take("error_log");
            p.deny_unknown(PIPELINE_KEYS, &mut problems);
        }
    }

    // What every connector is told about its pipeline.
    let data_dir = resolve_data_dir(base_dir, data_dir.unwrap_or_else(|| PathBuf::from("data").join(&name)));
    let data_dir = match process {
        Some(n) => data_dir.join(format!("process-{n}")),
        None => data_dir,
    };
    let stream = super::StreamDescription::default();
    let connector_config = |component: String, table: Section<'a>| ConnectorConfig {
        pipeline: name.clone(),
        data_dir: data_dir.clone(),
        durability,
        retention,
        encryption: encryption.clone(),
        name: component,
        table,
        base_dir: base_dir.to_path_buf(),
        stream: Arc::clone(&stream),
    };

    let audit = audit_value.and_then(|v| line_plan(v, "audit_log", &connector_config, registry, &mut problems));
    let error_log = error_log_value.and_then(|v| line_plan(v, "error_log", &connector_config, registry, &mut problems));

    // [sources.*] Every declared source keeps its slot, valid or not, so that sinks naming an
    // invalid source get no second, misleading "unknown input" error.
    let mut declared: Vec<(String, std::ops::Range<usize>, Option<SourcePlan>)> = Vec::new();
    let sources_declared = sources_table.as_ref().is_some_and(|t| !t.keys().is_empty());
    if let Some(table) = sources_table {
        for (source_name, key_span, value) in table.into_entries() {
            check_component_name(&source_name, key_span.clone(), &mut problems);
            let plan =
                Section::from_value(format!("sources.{source_name}"), value, &mut problems).and_then(|mut section| {
                    let known = registry.sources.iter().map(|s| s.name).collect();
                    let type_name = take_type(&mut section, known, "source", &mut problems)?;
                    let source_type = registry.source(&type_name)?;
                    section.accept_engine_keys(SOURCE_ENGINE_KEYS);
                    let config = connector_config(source_name.clone(), section);
                    match (source_type.configure)(config) {
                        Ok(source) => Some(SourcePlan { name: source_name.clone(), type_name, source }),
                        Err(found) => {
                            problems.extend(refusal(found));
                            None
                        }
                    }
                });
            declared.push((source_name, key_span, plan));
        }
    }
    if !sources_declared {
        problems.push(
            Diagnostic::new(root_span.start..root_span.start, "the pipeline has no sources")
                .with_hint("add a [sources.<name>] table, e.g. type = \"file\" or type = \"generator\""),
        );
    }
    // [transforms.*] Every name is known before any is read: a transform may read one declared
    // later in the file. A name is a source's or a transform's, never both.
    let transform_entries = transforms_table.map(|t| t.into_entries()).unwrap_or_default();
    let mut all_names: Vec<String> = declared.iter().map(|(n, _, _)| n.clone()).collect();
    for (transform_name, key_span, _) in &transform_entries {
        check_component_name(transform_name, key_span.clone(), &mut problems);
        if all_names.contains(transform_name) {
            problems.push(
                Diagnostic::new(key_span.clone(), format!("`{transform_name}` names both a source and a transform"))
                    .with_hint("inputs name sources and transforms alike: give each a name of its own"),
            );
        }
        // Kept even when repeated, so that names and transforms keep their positions.
        all_names.push(transform_name.clone());
    }
    let names: Vec<&str> = all_names.iter().map(String::as_str).collect();
    let source_count = declared.len();
    let as_input = |i: usize| if i < source_count { Input::Source(i) } else { Input::Transform(i - source_count) };
    let mut used = vec![false; names.len()];
    let mut unresolved_inputs = false;
    // (name, key span, inputs as indices into `names`, the connector)
    let mut transforms_declared: Vec<DeclaredTransform> = Vec::new();
    for (transform_name, key_span, value) in transform_entries {
        let Some(mut section) = Section::from_value(format!("transforms.{transform_name}"), value, &mut problems)
        else {
            transforms_declared.push((transform_name, key_span, None, None));
            continue;
        };
        let known = registry.transforms.iter().map(|t| t.name).collect();
        let type_name = take_type(&mut section, known, "transform", &mut problems);
        let inputs = take_inputs(&mut section, &names, key_span.clone(), &mut problems);
        unresolved_inputs |= inputs.is_none();
        for &i in inputs.iter().flatten() {
            used[i] = true;
        }
        let connector = type_name.and_then(|type_name| {
            let transform_type = registry.transform(&type_name)?;
            section.accept_engine_keys(TRANSFORM_ENGINE_KEYS);
            match (transform_type.configure)(connector_config(transform_name.clone(), section)) {
                Ok(transform) => Some((type_name, transform)),
                Err(found) => {
                    problems.extend(refusal(found));
                    None
                }
            }
        });
        transforms_declared.push((transform_name, key_span, inputs, connector));
    }
    let transform_order = order_transforms(&transforms_declared, source_count, &mut problems);

    // [sinks.*]
    let mut sinks = Vec::new();
    let sinks_declared = sinks_table.as_ref().is_some_and(|t| !t.keys().is_empty());
    if let Some(table) = sinks_table {
        for (sink_name, key_span, value) in table.into_entries() {
            check_component_name(&sink_name, key_span.clone(), &mut problems);
            let Some(mut section) = Section::from_value(format!("sinks.{sink_name}"), value, &mut problems) else {
                continue;
            };
            let known = registry.sinks.iter().map(|s| s.name).collect();
            let type_name = take_type(&mut section, known, "sink", &mut problems);
            let sink_key_span = key_span.clone();
            let inputs = take_inputs(&mut section, &names, key_span, &mut problems);
            unresolved_inputs |= inputs.is_none();
            for &i in inputs.iter().flatten() {
                used[i] = true;
            }
            let sink_type = type_name.as_deref().and_then(|t| registry.sink(t));
            let fixed_body = sink_type.and_then(|t| t.fixed_body.map(|body| (t.name, body)));
            // Of a sink of unknown type, no key any sink type reads itself is judged as the engine's:
            // what it means is the type's.
            let lent_keys: Vec<&str> = match sink_type {
                Some(t) => t.reads.to_vec(),
                None => registry.sinks.iter().flat_map(|t| t.reads.iter().copied()).collect(),
            };
            let (prefix_span, error_prefix_span) = (section.value_span("prefix"), section.value_span("error_prefix"));
            let lent = section.set_aside(&lent_keys);
            let settings = take_sink_settings(
                &mut section,
                &name,
                base_dir,
                registry,
                sink_type.is_some(),
                fixed_body,
                &mut problems,
            );
            section.restore(lent);
            // The connector reads its keys whatever else is wrong, so every problem is reported at once.
            let Some(sink_type) = sink_type else { continue };
            section.accept_engine_keys(if fixed_body.is_some() {
                FIXED_BODY_SINK_ENGINE_KEYS
            } else {
                SINK_ENGINE_KEYS
            });
            let sink = match (sink_type.configure)(connector_config(sink_name.clone(), section)) {
                Ok(sink) => sink,
                Err(found) => {
                    problems.extend(refusal(found));
                    continue;
                }
            };
            let (Some(type_name), Some(inputs), Some(mut settings)) = (type_name, inputs, settings) else {
                continue;
            };
            match (fixed_body, sink.wire_format()) {
                (Some(_), Some(wire_format)) => settings.format = wire_format,
                (None, None) => {}
                (declared, _) => {
                    problems.push(Diagnostic::new(
                        sink_key_span,
                        format!(
                            "sink type `{type_name}` is registered {} a fixed body but its sink {} one (a bug in sluice)",
                            if declared.is_some() { "with" } else { "without" },
                            if declared.is_some() { "gives no" } else { "gives" },
                        ),
                    ));
                    continue;
                }
            }
            // Keys the store cannot hold whatever the records (a prefix's literal text too long):
            // refused now, not at each object's delivery.
            let error_store = sink.error_output().map_or(sink.key_limits(), |output| output.key_limits());
            let too_long = match fixed_body {
                Some(_) => None,
                None => settings
                    .keys
                    .check_data_limits(sink.key_limits(), &settings.format.extension())
                    .err()
                    .map(|why| (format!("bad prefix: {why}"), prefix_span.clone())),
            }
            .or_else(|| {
                let why = settings.keys.check_error_limits(error_store, sink.destination()).err()?;
                // A default error prefix is made of the prefix.
                Some((format!("bad error_prefix: {why}"), error_prefix_span.or(prefix_span)))
            });
            if let Some((message, span)) = too_long {
                problems.push(Diagnostic::new(span.unwrap_or(sink_key_span), message).with_hint(
                    "shorten it: a file system takes 255 bytes between two `/`, object stores 1,024 bytes for a whole key",
                ));
                continue;
            }
            let inputs = inputs.into_iter().map(as_input).collect();
            sinks.push(SinkPlan { name: sink_name, type_name, inputs, settings: Arc::new(settings), sink });
        }
    }
    if !sinks_declared {
        problems.push(
            Diagnostic::new(root_span.start..root_span.start, "the pipeline has no sinks")
                .with_hint("add a [sinks.<name>] table with type = \"object_store\" and inputs = [\"<source>\"]"),
        );
    } else if !unresolved_inputs {
        for (i, (source_name, span, plan)) in declared.iter().enumerate() {
            if !used[i] && plan.is_some() {
                problems.push(
                    Diagnostic::new(
                        span.clone(),
                        format!("source `{source_name}` is not an input of any sink or transform"),
                    )
                    .with_hint("its records would be read and dropped: list it in a sink's inputs, or remove it"),
                );
            }
        }
        for (i, (transform_name, span, _, connector)) in transforms_declared.iter().enumerate() {
            if !used[source_count + i] && connector.is_some() {
                problems.push(
                    Diagnostic::new(
                        span.clone(),
                        format!("transform `{transform_name}` is not an input of any sink or transform"),
                    )
                    .with_hint("its output would be dropped: list it in a sink's inputs, or remove it"),
                );
            }
        }
    }
    let sources: Vec<SourcePlan> = declared.into_iter().filter_map(|(_, _, plan)| plan).collect();

    if !problems.is_empty() {
        return Err(problems);
    }
    // Without problems every transform resolved and `transform_order` is a topological order.
    let mut position = vec![0; transforms_declared.len()];
    for (at, &i) in transform_order.iter().enumerate() {
        position[i] = at;
    }
    let renumber = |input: Input| match input {
        Input::Transform(i) => Input::Transform(position[i]),
        source => source,
    };
    let mut slots: Vec<Option<_>> = transforms_declared.into_iter().map(Some).collect();
    let transforms: Vec<TransformPlan> = transform_order
        .iter()
        .filter_map(|&i| slots[i].take())
        .filter_map(|(name, _, inputs, connector)| {
            let (type_name, transform) = connector?;
            let inputs = inputs?.into_iter().map(|i| renumber(as_input(i))).collect();
            Some(TransformPlan { name, type_name, inputs, transform })
        })
        .collect();
    for sink in &mut sinks {
        sink.inputs = sink.inputs.iter().map(|&i| renumber(i)).collect();
    }
    let plan = Plan { name, workers, stop_timeout, sources, transforms, sinks, audit, error_log, data_dir };
    // The stream is created when its pipeline is loaded.
    let _ = stream.set(plan.stream_info(crate::record::now_ms()));
    Ok(plan)
}

/// A `[transforms.<name>]` as read: its name, key span, inputs (indices into the names of sources
/// then transforms) and its type with the connector, each `None` when it had a problem.
type DeclaredTransform = (String, std::ops::Range<usize>, Option<Vec<usize>>, Option<(String, Arc<dyn Transform>)>);

/// The transforms in an order where each comes after the transforms it reads (indices into
/// `declared`); a cycle is a problem at each transform on it, naming the whole cycle.
fn order_transforms(declared: &[DeclaredTransform], source_count: usize, problems: &mut Vec<Diagnostic>) -> Vec<usize> {
    let reads = |t: usize| -> Vec<usize> {
        declared[t].2.iter().flatten().filter(|&&i| i >= source_count).map(|&i| i - source_count).collect()
    };
    // Depth-first, with the path kept to name a cycle when one is closed.
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        New,
        OnPath,
        Done,
    }
    let mut marks = vec![Mark::New; declared.len()];
    let mut order = Vec::new();
    let mut reported = vec![false; declared.len()];
    for start in 0..declared.len() {
        if marks[start] != Mark::New {
            continue;
        }
        let mut path: Vec<(usize, Vec<usize>)> = vec![(start, reads(start))];
        marks[start] = Mark::OnPath;
        while let Some((node, next)) = path.last_mut() {
            let node = *node;
            match next.pop() {
                Some(child) if marks[child] == Mark::New => {
                    marks[child] = Mark::OnPath;
                    let child_reads = reads(child);
                    path.push((child, child_reads));
                }
                Some(child) if marks[child] == Mark::OnPath => {
                    let from = path.iter().position(|(n, _)| *n == child).unwrap_or(0);
                    let cycle: Vec<usize> = path[from..].iter().map(|(n, _)| *n).collect();
                    if cycle.iter().all(|&n| !reported[n]) {
                        // In the direction records flow, from the transform declared first.
                        let mut flow: Vec<usize> = cycle.iter().rev().copied().collect();
                        let first = flow.iter().enumerate().min_by_key(|(_, n)| **n).map_or(0, |(i, _)| i);
                        flow.rotate_left(first);
                        let names: Vec<&str> =
                            flow.iter().chain(flow.first()).map(|&n| declared[n].0.as_str()).collect();
                        for &n in &cycle {
                            reported[n] = true;
                            problems.push(
                                Diagnostic::new(
                                    declared[n].1.clone(),
                                    format!("transforms read each other in a cycle: {}", names.join(" -> ")),
                                )
                                .with_hint(
                                    "records would go round forever: a transform's inputs must lead back to sources",
                                ),
                            );
                        }
                    }
                }
                Some(_) => {}
                None => {
                    marks[node] = Mark::Done;
                    order.push(node);
                    path.pop();
                }
            }
        }
    }
    order
}

/// `partitioning = { query, max_open_mb }` and the prefix's partition keys (Firehose's dynamic
/// partitioning rules, docs/firehose.md §13): `None` inside when the prefix uses no partition key;
/// the outer `None` when something is wrong (reported). `prefix_keys` is `None` when the prefix
/// does not parse: the table is then checked on its own.
fn take_partitioning(
    table: Option<Section>,
    table_span: Option<std::ops::Range<usize>>,
    prefix_keys: Option<Vec<PartitionKeyRef>>,
    prefix: Option<&Spanned<String>>,
    sink_span: std::ops::Range<usize>,
    registry: &Registry,
    problems: &mut Vec<Diagnostic>,
) -> Option<Option<Arc<Partitioning>>> {
    let before = problems.len();
    // `partitioning` written, but not as a table: that is its one problem (reported already).
    let written_wrong = table.is_none() && table_span.is_some();
    let prefix_parsed = prefix_keys.is_some();
    let partition_keys = prefix_keys.unwrap_or_default();
    let prefix_span = prefix.map_or(sink_span.clone(), |p| p.span());
    let (mut query, mut max_open_mb) = (None, 512u64);
    if let Some(mut t) = table {
        if let Some(q) = t.take_string("query", problems) {
            match registry.key_query.map(|compile| compile(q.get_ref())) {
                Some(Ok(compiled)) => query = Some((compiled, q.span())),
                Some(Err((offset, message))) => {
                    problems.push(
                        Diagnostic::in_string(
                            q.span(),
                            offset,
                            format!("the partitioning query does not compile: {message}"),
                        )
                        .with_hint("a jq expression giving an object, e.g. query = '{account: .recipientAccountId}'"),
                    );
                }
                None => problems.push(Diagnostic::new(q.span(), "this build has no query language for partitioning")),
            }
        }
        if let Some(m) = t.take_int_in(
            "max_open_mb",
            1..=1_000_000,
            "the memory the open partitions of this sink may hold on one worker (default 512)",
            problems,
        ) {
            max_open_mb = m.into_inner() as u64;
        }
        t.deny_unknown(&["query", "max_open_mb"], problems);
        if prefix_parsed && partition_keys.is_empty() {
            problems.push(
                Diagnostic::new(
                    table_span.unwrap_or(sink_span.clone()),
                    "`partitioning` has no effect: the prefix uses no partition key",
                )
                .with_hint(
                    "reference the query's keys in prefix, e.g. prefix = \"account=!{partitionKeyFromQuery:account}/\"",
                ),
            );
        }
    }
    let query_keys: Vec<&str> = partition_keys.iter().filter(|k| !k.from_lambda).map(|k| k.name.as_str()).collect();
    match &query {
        None if !query_keys.is_empty() && problems.len() == before && !written_wrong => problems.push(
            Diagnostic::new(
                prefix_span.clone(),
                format!(
                    "prefix uses !{{partitionKeyFromQuery:{}}} but the sink has no partitioning query",
                    query_keys[0]
                ),
            )
            .with_hint(
                "add partitioning = { query = '{account: .recipientAccountId}' } (a jq expression giving the keys)",
            ),
        ),
        Some((q, q_span)) => {
            if let Some(produced) = q.static_keys() {
                for name in &query_keys {
                    if !produced.iter().any(|p| p == name) {
                        problems.push(
                            Diagnostic::new(
                                prefix_span.clone(),
                                format!("the partitioning query gives no key `{name}`"),
                            )
                            .with_hint(format!("its keys: {}", produced.join(", "))),
                        );
                    }
                }
            }
            if query_keys.is_empty() && !partition_keys.is_empty() {
                problems.push(
                    Diagnostic::new(q_span.clone(), "the partitioning query's keys are not used in prefix")
                        .with_hint("reference them as !{partitionKeyFromQuery:<key>}"),
                );
            }
        }
        None => {}
    }
    if problems.len() > before || written_wrong {
        return None;
    }
    if partition_keys.is_empty() {
        return Some(None);
    }
    Some(Some(Arc::new(Partitioning {
        query: query.map(|(q, _)| q),
        keys: partition_keys,
        max_open_bytes: max_open_mb << 20,
        deaggregation: None,
    })))
}

/// `data_dir` (default `data/<pipeline>`) resolved against the pipeline file's folder. Before, a
/// relative `data_dir` was taken from the current directory: a log found only there is used (with
/// a warning), so an upgrade does not leave acknowledged records behind.
fn resolve_data_dir(base_dir: &Path, configured: PathBuf) -> PathBuf {
    let dir = base_dir.join(&configured);
    if configured.is_relative() && !dir.exists() && configured.exists() {
        tracing::warn!(
            used = %configured.display(),
            resolved = %dir.display(),
            "a relative data_dir is now relative to the pipeline file's folder; using the log found in the current directory: make data_dir absolute to keep it"
        );
        return configured;
    }
    dir
}

fn check_component_name(name: &str, span: std::ops::Range<usize>, problems: &mut Vec<Diagnostic>) {
    if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b"_-".contains(&b)) {
        problems.push(
            Diagnostic::new(span, format!("component name `{name}` is not valid"))
                .with_hint("use letters, digits, `_` and `-`"),
        );
    }
}

fn take_type(
    section: &mut Section,
    known: Vec<&'static str>,
    what: &str,
    problems: &mut Vec<Diagnostic>,
) -> Option<String> {
    let missing_span = section.span.clone();
    let Some(t) = section.take_string("type", problems) else {
        // A `type` of the wrong kind is said by `take_string`, not also missing.
        if !section.misread("type") {
            problems.push(
                Diagnostic::new(missing_span, format!("`{}` has no `type`", section.path))
                    .with_hint(format!("known {what} types: {}", join_ticked(&known))),
            );
        }
        return None;
    };
    if known.contains(&t.get_ref().as_str()) {
        return Some(t.into_inner());
    }
    let mut d = Diagnostic::new(t.span(), format!("unknown {what} type `{}`", t.get_ref()));
    d = match did_you_mean(t.get_ref(), known.iter().copied()) {
        Some(k) => d.with_hint(format!("did you mean `{k}`? known {what} types: {}", join_ticked(&known))),
        None => d.with_hint(format!("known {what} types: {}", join_ticked(&known))),
    };
    problems.push(d);
    None
}

/// What a connector that refused its keys reported; a refusal without a reason is said as one (a
/// connector's bug), never taken for success or left silent.
fn refusal(found: super::Problems) -> Vec<Diagnostic> {
    if found.is_empty() {
        return vec![Diagnostic::new(0..0, "a connector refused its keys without saying why (a bug in sluice)")];
    }
    found.into_diagnostics()
}

/// The hint for a value that is none of `names`: the nearest, if it looks like a typo of one, and all.
fn choose_from(value: &str, names: &[&str]) -> String {
    match did_you_mean(value, names.iter().copied()) {
        Some(near) => format!("did you mean `{near}`? use one of {}", join_ticked(names)),
        None => format!("use one of {}", join_ticked(names)),
    }
}

fn take_inputs(
    section: &mut Section,
    names: &[&str],
    key_span: std::ops::Range<usize>,
    problems: &mut Vec<Diagnostic>,
) -> Option<Vec<usize>> {
    let Some(list) = section.take_string_list("inputs", problems) else {
        // `inputs` of the wrong kind is said by `take_string_list`, not also missing.
        if !section.misread("inputs") {
            let (kind, name) = section.path.split_once('.').unwrap_or(("", section.path.as_str()));
            problems.push(
                Diagnostic::new(key_span, format!("{} `{name}` has no inputs", kind.trim_end_matches('s')))
                    .with_hint(format!("add inputs = [...] naming sources or transforms: {}", join_ticked(names))),
            );
        }
        return None;
    };
    if list.get_ref().is_empty() {
        problems.push(
            Diagnostic::new(list.span(), "`inputs` is empty")
                .with_hint(format!("name at least one source or transform: {}", join_ticked(names))),
        );
        return None;
    }
    let mut indices = Vec::new();
    let mut ok = true;
    for input in list.into_inner() {
        match names.iter().position(|n| *n == input.get_ref()) {
            Some(i) if indices.contains(&i) => problems.push(
                Diagnostic::new(input.span(), format!("input `{}` is listed twice", input.get_ref()))
                    .with_hint("each record would be delivered twice; list it once"),
            ),
            Some(i) => indices.push(i),
            None => {
                ok = false;
                let mut d = Diagnostic::new(input.span(), format!("unknown input `{}`", input.get_ref()));
                d = match did_you_mean(input.get_ref(), names.iter().copied()) {
                    Some(n) => d.with_hint(format!("did you mean `{n}`?")),
                    None if names.is_empty() => d.with_hint("no sources are defined"),
                    None => d.with_hint(format!("inputs name sources and transforms: {}", join_ticked(names))),
                };
                problems.push(d);
            }
        }
    }
    ok.then_some(indices)
}

/// The engine's keys of a sink. `fixed_body` (its type's name and body, when its destination
/// fixes the body) refuses the keys that encode or partition objects, each at once, and bounds
/// `buffer` by the destination's rules; of a sink whose type is not known (`type_known`), keys
/// that only the type could explain are not judged.
fn take_sink_settings(
    section: &mut Section,
    stream: &str,
    base_dir: &Path,
    registry: &Registry,
    type_known: bool,
    fixed_body: Option<(&str, FixedBody)>,
    problems: &mut Vec<Diagnostic>,
) -> Option<SinkSettings> {
    // A refused `partitioning` is the one error about it: a prefix using partition keys is not another.
    let mut partitioning_refused = false;
    if let Some((type_name, body)) = fixed_body {
        for key in OBJECT_BODY_KEYS.iter().chain(PARTITIONING_KEYS) {
            let Some(span) = section.key_span(key) else { continue };
            section.take(key);
            let problem = if PARTITIONING_KEYS.contains(key) {
                partitioning_refused = true;
                Diagnostic::new(span, format!("a sink of type `{type_name}` cannot partition: it has no `{key}`"))
                    .with_hint("dynamic partitioning names objects; only object store sinks have them")
            } else {
                let why = if matches!(*key, "format" | "compression") {
                    "where the sink can compress, it has its own key for it (e.g. `content_encoding`)".to_string()
                } else {
                    format!("`{key}` belongs to the formats of object store sinks")
                };
                Diagnostic::new(span, format!("a sink of type `{type_name}` has no `{key}`"))
                    .with_hint(format!("its destination fixes the body ({}); {why}", body.describe))
            };
            problems.push(problem);
        }
    }
    // `compression` is read before the format: Parquet's default (snappy) differs from the others (none).
    let mut compression_ok = true;
    let compression_span = section.value_span("compression");
    let compression = match section.take_string("compression", problems) {
        None => None,
        Some(c) => match Compression::from_name(c.get_ref()) {
            Some(c) => Some(c),
            None => {
                compression_ok = false;
                problems.push(
                    Diagnostic::new(c.span(), format!("unknown compression `{}`", c.get_ref()))
                        .with_hint(choose_from(c.get_ref(), Compression::NAMES)),
                );
                None
            }
        },
    };
    let format_name = section.take_string("format", problems);
    let columns = section.take_string_list("columns", problems);
    // Built once the compression is known; `None` is a problem already reported.
    enum Chosen {
        Text(fn(Compression) -> Arc<dyn ObjectFormat>),
        Csv(Vec<String>),
        Parquet(crate::columnar::ParquetSpec),
    }
    let format = match format_name.as_ref().map(|f| f.get_ref().as_str()) {
        // Of the wrong kind: said by `take_string`; no format, nor its keys, is judged.
        None if section.misread("format") => {
            for key in PARQUET_KEYS {
                section.take(key);
            }
            None
        }
        None => Some(Chosen::Text(format::raw)),
        Some(name) if let Some(open) = format::plain(name) => Some(Chosen::Text(open)),
        Some("csv") => match &columns {
            Some(c) if !c.get_ref().is_empty() => {
                Some(Chosen::Csv(c.get_ref().iter().map(|s| s.get_ref().clone()).collect()))
            }
            // Of the wrong kind: said by `take_string_list`.
            _ if section.misread("columns") => None,
            _ => {
                let span = format_name.as_ref().map(|f| f.span()).unwrap_or_default();
                problems.push(
                    Diagnostic::new(span, "format = \"csv\" needs `columns`")
                        .with_hint("add columns = [\"key1\", \"key2\"]: the JSON keys to write, in order"),
                );
                None
            }
        },
        Some("parquet") => {
            let span = format_name.as_ref().map(|f| f.span()).unwrap_or_default();
            take_parquet_spec(section, compression, base_dir, span, problems).map(Chosen::Parquet)
        }
        Some(other) => {
            let span = format_name.as_ref().map(|f| f.span()).unwrap_or_default();
            problems.push(
                Diagnostic::new(span, format!("unknown format `{other}`")).with_hint(choose_from(other, format::NAMES)),
            );
            None
        }
    };
    if let (Some(c), Some(f)) = (&columns, &format)
        && !matches!(f, Chosen::Csv(_))
    {
        problems.push(
            Diagnostic::new(c.span(), "`columns` applies only to format = \"csv\"")
                .with_hint("remove it or set format = \"csv\""),
        );
    }
    // Parquet's keys under another format: said as such (left unread, they were "unknown keys"
    // whose hint listed them as accepted), unless the format itself is the problem. Of a sink of
    // unknown type, whose `format` may be the type's own key (set aside), nothing is judged.
    let written_elsewhere = format_name.as_ref().is_some_and(|f| f.get_ref() != "parquet");
    if written_elsewhere || (format_name.is_none() && type_known) {
        for key in PARQUET_KEYS {
            let Some(span) = section.key_span(key) else { continue };
            section.take(key);
            if format.is_some() {
                let written =
                    format_name.as_ref().map_or("raw (the default)".to_string(), |f| format!("\"{}\"", f.get_ref()));
                problems
                    .push(Diagnostic::new(span, format!("`{key}` applies only to format = \"parquet\"")).with_hint(
                        format!("the format here is {written}: remove `{key}` or set format = \"parquet\""),
                    ));
            }
        }
    }
    // By name: a Parquet sink whose schema failed still gets Parquet's buffering rules checked.
    let columnar = format_name.as_ref().is_some_and(|f| f.get_ref() == "parquet");
    if let (true, Some(c @ (Compression::HadoopSnappy | Compression::Zip)), Some(span)) =
        (columnar, compression, compression_span)
    {
        problems.push(
            Diagnostic::new(
                span,
                format!("compression = \"{}\" is for text objects; Parquet compresses its own pages", c.name()),
            )
            .with_hint("compression = \"snappy\" (Parquet's default), \"zstd\", \"gzip\" or \"none\""),
        );
    }
    let compression = if compression_ok {
        Some(compression.unwrap_or(if columnar { Compression::Snappy } else { Compression::None }))
    } else {
        None
    };
    let buffer_span = section.key_span("buffer");
    let rules = fixed_body.and_then(|(_, body)| body.buffering);
    let hints = match section.take_table("buffer", problems) {
        None if columnar => Some(BufferingHints::DEFAULT_FOR_CONVERSION),
        None => Some(rules.map_or(BufferingHints::DEFAULT, |r| r.default)),
        Some(mut b) => {
            let before = problems.len();
            let span = b.span.clone();
            let size = b.take_int_in(
                "size_mb",
                BufferingHints::SIZE_MB,
                "Firehose's S3 range is 1..=128 MB (default 5)",
                problems,
            );
            let interval = b.take_int_in(
                "interval_s",
                BufferingHints::INTERVAL_S,
                "Firehose's S3 range is 0..=900 s (default 300)",
                problems,
            );
            b.deny_unknown(&["size_mb", "interval_s"], problems);
            match (size, interval) {
                (Some(s), Some(i)) => Some(BufferingHints {
                    size_bytes: s.into_inner() as u64 * 1024 * 1024,
                    interval: Duration::from_secs(i.into_inner() as u64),
                }),
                (None, None) | (Some(_), None) | (None, Some(_)) if problems.len() > before => None,
                _ => {
                    problems.push(Diagnostic::new(span, "`buffer` needs both `size_mb` and `interval_s`").with_hint(
                        "Firehose's BufferingHints are set together, e.g. buffer = { size_mb = 5, interval_s = 300 }",
                    ));
                    None
                }
            }
        }
    };
    if let (Some((type_name, body)), Some(h), Some(span)) = (fixed_body, hints, &buffer_span) {
        if let Some(rules) = rules
            && h.interval > rules.max_interval
        {
            problems.push(
                Diagnostic::new(
                    span.clone(),
                    format!(
                        "`buffer.interval_s` is at most {} for a sink of type `{type_name}`",
                        rules.max_interval.as_secs()
                    ),
                )
                .with_hint(format!(
                    "Firehose's range for this destination (default {} MB / {} s)",
                    rules.default.size_bytes >> 20,
                    rules.default.interval.as_secs()
                )),
            );
        }
        if let Some(max) = body.max_bytes
            && h.size_bytes > max
        {
            problems.push(
                Diagnostic::new(
                    span.clone(),
                    format!("`buffer.size_mb` is at most {} for a sink of type `{type_name}`", max >> 20),
                )
                .with_hint(format!("its destination takes a body of at most {} MiB", max >> 20)),
            );
        }
    }
    if columnar
        && let Some(h) = hints
        && h.size_bytes < BufferingHints::DEFAULT_FOR_CONVERSION.size_bytes / 2
    {
        problems.push(
            Diagnostic::new(
                buffer_span.clone().unwrap_or(section.span.clone()),
                "with format = \"parquet\", `buffer.size_mb` must be at least 64",
            )
            .with_hint(
                "Firehose requires 64..=128 MB with format conversion (default 128); small objects make slow tables",
            ),
        );
    }
    let time_zone = match section.take_string("time_zone", problems) {
        None => Some(chrono_tz::Tz::UTC),
        Some(z) => match z.get_ref().parse::<chrono_tz::Tz>() {
            Ok(tz) if z.get_ref().len() <= 50 => Some(tz),
            _ => {
                problems.push(
                    Diagnostic::new(z.span(), format!("unknown time zone `{}`", z.get_ref()))
                        .with_hint("use an IANA zone name such as `UTC`, `Europe/Paris` or `Asia/Tokyo`"),
                );
                None
            }
        },
    };
    let prefix = section.take_string("prefix", problems);
    let error_prefix = section.take_string("error_prefix", problems);
    let file_extension = section.take_string("file_extension", problems).and_then(|e| {
        match crate::keys::check_file_extension(e.get_ref()) {
            Ok(()) => Some(e.into_inner()),
            Err(why) => {
                problems.push(
                    Diagnostic::new(e.span(), format!("file_extension `{}` {why}", e.get_ref()))
                        .with_hint("e.g. file_extension = \".json.gz\": data objects' names end with it instead of their format's (`.gz`, `.parquet`, …)"),
                );
                None
            }
        }
    });
    // A prefix of the wrong kind is said by `take_string`: the pair's rules are not judged without it.
    let pair_read = !section.misread("prefix") && !section.misread("error_prefix");
    // An unknown time zone (reported) still lets the prefixes be checked, under UTC.
    let keys = match ObjectKeys::new(
        prefix.as_ref().map(|p| p.get_ref().as_str()),
        error_prefix.as_ref().map(|p| p.get_ref().as_str()),
        stream,
        time_zone.unwrap_or(chrono_tz::Tz::UTC),
    ) {
        Ok(k) => time_zone.map(|_| k.with_file_extension(file_extension)),
        Err(_) if !pair_read => None,
        Err(errors) => {
            for e in errors.0 {
                let value: Option<&Spanned<String>> =
                    if e.field == "prefix" { prefix.as_ref() } else { error_prefix.as_ref() };
                // Point inside the string when we can.
                let message = format!("bad {}: {}", e.field, e.error.message);
                let diagnostic = match value {
                    Some(v) if e.error.offset > 0 => Diagnostic::in_string(v.span(), e.error.offset, message),
                    Some(v) => Diagnostic::new(v.span(), message),
                    None => Diagnostic::new(section.span.clone(), message),
                };
                problems.push(diagnostic.with_hint(e.error.hint.clone()));
            }
            None
        }
    };
    let partitioning_span = section.key_span("partitioning");
    let partitioning_table = section.take_table("partitioning", problems);
    // The prefix's partition keys, from the prefix alone when the pair broke a rule, so the
    // partitioning table's own problems are reported with the prefixes' (every error at once).
    let prefix_keys = match &keys {
        // A prefix written wrong (not a string) is its one problem: its keys are unknown.
        _ if section.misread("prefix") => None,
        Some(keys) => Some(keys.partition_keys()),
        None => ObjectKeyTemplate::parse(prefix.as_ref().map_or("", |p| p.get_ref().as_str()))
            .ok()
            .map(|template| template.partition_keys()),
    };
    let partitioning = match fixed_body {
        // Its `partitioning` and `deaggregation` are refused above; its prefix names only backups.
        Some((type_name, _)) => match (&prefix_keys, &prefix) {
            (Some(used), Some(prefix)) if !used.is_empty() && !partitioning_refused => {
                problems.push(
                    Diagnostic::new(prefix.span(), format!("a sink of type `{type_name}` cannot partition: its prefix uses a partition key"))
                        .with_hint("its prefix names only the backups of what its destination does not take; partition keys name objects of object store sinks"),
                );
                None
            }
            _ => Some(None),
        },
        None => take_partitioning(
            partitioning_table,
            partitioning_span,
            prefix_keys,
            prefix.as_ref(),
            section.span.clone(),
            registry,
            problems,
        ),
    }
    .filter(|_| keys.is_some());
    let deaggregation_span = section.value_span("deaggregation").unwrap_or(section.span.clone());
    let deaggregation = match section.take("deaggregation") {
        None => Some(None),
        Some(value) => {
            let chosen = match value.get_ref() {
                toml::de::DeValue::String(s) if s.as_ref() == "json" => Ok(Deaggregation::Json),
                toml::de::DeValue::Table(t) if t.len() == 1 => match t.get("delimiter").map(|v| v.get_ref()) {
                    Some(toml::de::DeValue::String(d)) if d.is_empty() => Err((
                        "`deaggregation.delimiter` is empty",
                        "records are split where the delimiter is found: give its text, e.g. { delimiter = \"####\" }",
                    )),
                    Some(toml::de::DeValue::String(d)) => Ok(Deaggregation::Delimiter(d.as_bytes().to_vec())),
                    _ => Err(NOT_A_DEAGGREGATION),
                },
                _ => Err(NOT_A_DEAGGREGATION),
            };
            let chosen = chosen
                .map_err(|(message, hint)| {
                    problems.push(Diagnostic::new(deaggregation_span.clone(), message).with_hint(hint))
                })
                .ok();
            chosen.map(Some)
        }
    };
    let partitioning = match (partitioning, deaggregation) {
        (Some(Some(p)), Some(d)) => Some(Some(Arc::new(Partitioning { deaggregation: d, ..Partitioning::clone(&p) }))),
        (Some(None), Some(Some(_))) => {
            problems.push(Diagnostic::new(deaggregation_span, "`deaggregation` needs dynamic partitioning").with_hint(
                "as in Firehose, records are split before they are partitioned: use partition keys in prefix",
            ));
            None
        }
        (p, Some(_)) => p,
        (_, None) => None,
    };
    let retry = match section.take_table("retry", problems) {
        None => Some(RetryPolicy::default()),
        Some(mut r) => {
            let d = r.take_int_in(
                "duration_s",
                0..=7200,
                "Firehose's RetryOptions range is 0..=7200 s (default 300)",
                problems,
            );
            r.deny_unknown(&["duration_s"], problems);
            d.map(|d| RetryPolicy { duration: Duration::from_secs(d.into_inner() as u64), ..RetryPolicy::default() })
        }
    };
    let backup = match section.take_string("backup", problems) {
        None => Some(BackupMode::default()),
        Some(b) => BackupMode::from_name(b.get_ref()).or_else(|| {
            problems.push(Diagnostic::new(b.span(), format!("unknown backup `{}`", b.get_ref())).with_hint(format!(
                "use one of {} (Firehose's FailedDataOnly / AllData)",
                join_ticked(BackupMode::NAMES)
            )));
            None
        }),
    };
    let compression = compression?;
    let format = match format? {
        Chosen::Text(open) => open(compression),
        Chosen::Csv(columns) => format::csv(columns, compression),
        Chosen::Parquet(spec) => Arc::new(format::parquet::Parquet::new(spec)),
    };
    Some(SinkSettings {
        format,
        hints: hints?,
        keys: keys?,
        retry: retry?,
        backup: backup?,
        partitioning: partitioning?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fixed_body_sink_takes_every_engine_key_but_those_that_encode_or_partition_objects() {
        let refused: Vec<&str> = OBJECT_BODY_KEYS.iter().chain(PARTITIONING_KEYS).copied().collect();
        assert_eq!(&SINK_ENGINE_KEYS[..FIXED_BODY_SINK_ENGINE_KEYS.len()], FIXED_BODY_SINK_ENGINE_KEYS);
        assert_eq!(&SINK_ENGINE_KEYS[FIXED_BODY_SINK_ENGINE_KEYS.len()..], &refused[..]);
    }
}

//! `type = "kinesis"`: reads a Kinesis Data Stream, as a Firehose stream whose source is one
//! (`KinesisStreamAsSource`, docs/firehose.md §17).
//!
//! ```toml
//! [sources.trail]
//! type = "kinesis"
//! stream = "arn:aws:kinesis:eu-west-1:123456789012:stream/cloudtrail"   # Firehose's KinesisStreamARN
//! # endpoint = "http://127.0.0.1:4567"  # the Kinesis API's address (default https://kinesis.<region>.amazonaws.com, in the region's partition)
//! # start = "latest"                    # Firehose's (default); "trim_horizon"; or a time, "2026-11-30T00:00:00Z"
//! # poll_ms = 1000                      # how often a shard at its tip is asked again (200..=10000)
//! # max_buffered_mb = 64                # records fetched and not yet taken into the pipeline
//! # tls = { ca = "private-ca.pem" }     # as for every connector that sends requests
//! # access_key_id = "${KINESIS_KEY_ID}"  # credentials of its own (with secret_access_key and
//! # secret_access_key = "${KINESIS_SECRET}"  # optionally session_token); default: the AWS chain
//! ```
//!
//! Each Kinesis record is one record; a record the Kinesis Producer Library aggregated (its magic
//! bytes, a protobuf `AggregatedRecord`, an MD5 that matches) is de-aggregated into its user
//! records, as Firehose does; one whose digest does not match is a plain record (as the KCL treats
//! it). A batch's arrival time is the oldest Kinesis `ApproximateArrivalTimestamp` in it, so
//! `!{timestamp:…}` prefixes and `DataFreshness` count from when the stream took the records.
//! Each record carries what Firehose shows a Lambda processor of a Kinesis-sourced stream
//! (`sluice_engine::record::SourceMetadata`): the event's `sourceKinesisStreamArn` and its
//! `kinesisRecordMetadata` (shard, partition key, sequence number, subsequence number, arrival
//! time; a KPL user record's own partition key, from the aggregate's table, and its place in it).
//! Requests are signed (SigV4, service `kinesis`) with the source's `access_key_id` and
//! `secret_access_key` (and `session_token`) when it has them, else credentials from the AWS
//! SDKs' chain (`crate::aws_credentials`: the environment, a web identity, ECS or EKS roles, the
//! EC2 instance profile).
//!
//! Guarantees:
//! - **Where it starts.** `start = "latest"` is fixed once, at the first run of the pipeline's data
//!   folder (`start.json`): every shard without a checkpoint is read from that instant
//!   (`AT_TIMESTAMP`), so a shard that appears later by resharding is read from its first record
//!   and a restart does not skip what arrived while sluice was down.
//! - **At least once, resumed exactly.** Each shard's last sequence number taken into the
//!   pipeline is checkpointed at the delivered frontier (`offsets.json`, as the file sources do),
//!   so a restart resumes after the last delivered record (`AFTER_SEQUENCE_NUMBER`): records
//!   fetched but not delivered when the run stopped or died are read again, none is skipped. A stop
//!   does not wait to read the stream's backlog: the stream keeps it. A checkpoint the stream no
//!   longer holds (trimmed past its retention while nothing read it) is said in the error log at
//!   `ERROR` and the shard read on from its oldest record; a shard trimmed whole is ended; the
//!   checkpoints of shards read to their end and no longer listed are forgotten.
//! - **Shards.** Shards are listed at start, every 10 s and whenever a shard ends; each is read
//!   by one worker (a hash of its id over every worker of every process), so its records keep
//!   their order into that worker's objects. A child of a split or merge is read once its parents
//!   are read to their end (or trimmed, or read by another process of a cluster, which this one
//!   cannot see). A shard is at its end when Kinesis gives no next iterator, or when it is closed
//!   and a read at its tip finds nothing.
//! - **Bounded memory.** Records fetched and not yet taken by a worker (with their metadata) hold at most
//!   `max_buffered_mb` (plus one response per shard being read); a shard waits for room.
//! - **Throttling and failures** are retried with backoff, never fatal after start: a
//!   `ProvisionedThroughputExceededException` is counted (`ThrottledGetRecords`,
//!   `ThrottledGetShardIterator`, `ThrottledListShards`), an expired iterator is renewed after the
//!   last record read, anything else is logged and retried. A stream that is missing, or refused
//!   with the credentials, stops the run at start with Kinesis's own error.
//! - **Metrics** (Firehose's names, docs/firehose.md §17): `DataReadFromKinesisStream.Records`
//!   and `.Bytes`, `KinesisMillisBehindLatest` (the largest over the shards). Failed calls are in
//!   the error log as `Kinesis.<Kinesis's error>` (`Kinesis.ConnectionFailed` without an answer).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use base64::Engine as _;
use md5::Digest as _;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use sluice_engine::config::{ConnectorConfig, Diagnostic, Problems};
use sluice_engine::contract::{
    OnStop, PrepareContext, ReadStatus, Source, SourceContext, SourceError, SourceReader, StopSignal, fingerprint,
};
use sluice_engine::metrics::{Family, SourceMeter};
use sluice_engine::record::RecordBatch;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};

use super::file_checkpoint::{FileCheckpoints, Saved};
use crate::api::sigv4::Credentials;
use crate::aws_credentials::AwsCredentials;
use crate::tls::ClientTls;

/// `ListShards` calls the stream throttled.
const THROTTLED_LIST_SHARDS: Family =
    Family { name: "ThrottledListShards", help: "ListShards calls the Kinesis stream throttled." };
/// `GetRecords` calls the stream throttled.
const THROTTLED_GET_RECORDS: Family =
    Family { name: "ThrottledGetRecords", help: "GetRecords calls the Kinesis stream throttled." };
/// `GetShardIterator` calls the stream throttled.
const THROTTLED_GET_SHARD_ITERATOR: Family =
    Family { name: "ThrottledGetShardIterator", help: "GetShardIterator calls the Kinesis stream throttled." };
/// Records read (Firehose's `DataReadFromKinesisStream.Records`).
const RECORDS_READ: Family =
    Family { name: "DataReadFromKinesisStream_Records", help: "Records read from the Kinesis stream." };
/// Their bytes (`DataReadFromKinesisStream.Bytes`).
const BYTES_READ: Family =
    Family { name: "DataReadFromKinesisStream_Bytes", help: "Bytes read from the Kinesis stream." };
/// How far behind the stream's tip the source reads (Kinesis's `MillisBehindLatest`).
const MILLIS_BEHIND: Family = Family {
    name: "KinesisMillisBehindLatest",
    help: "How far behind the Kinesis stream's newest record the source reads, in milliseconds (the largest shard's).",
};

/// How often the shards are listed again (for splits and merges).
const LIST_EVERY: Duration = Duration::from_secs(10);
/// The largest chunk of records handed to a worker at once (about a batch).
const CHUNK_BYTES: usize = 1 << 20;
/// Kinesis allows 5 GetRecords a second per shard: a shard that is behind is read this often.
const CATCH_UP_EVERY: Duration = Duration::from_millis(200);
/// The longest wait between retries of a failing call.
const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// A request's timeout (GetRecords returns at most 10 MB).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Tries of the first listing before a busy or failing Kinesis stops the run at start.
const START_ATTEMPTS: u32 = 5;
/// The KPL's aggregated-record magic.
const KPL_MAGIC: [u8; 4] = [0xF3, 0x89, 0x9A, 0xC2];

/// The source's own keys.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct KinesisConfig {
    stream: String,
    endpoint: Option<String>,
    start: Option<String>,
    poll_ms: Option<u64>,
    max_buffered_mb: Option<u64>,
    access_key_id: Option<String>,
    secret_access_key: Option<String>,
    session_token: Option<String>,
}

/// Where a shard without a checkpoint starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Start {
    /// At the first run's start (Firehose's LATEST, fixed once).
    Latest,
    /// At the oldest record the stream keeps.
    TrimHorizon,
    /// At records that arrived at or after this time (ms since the epoch).
    At(i64),
}

impl Start {
    fn parse(text: &str) -> Option<Start> {
        match text {
            "latest" => Some(Start::Latest),
            "trim_horizon" => Some(Start::TrimHorizon),
            _ => chrono::DateTime::parse_from_rfc3339(text).ok().map(|t| Start::At(t.timestamp_millis())),
        }
    }
}

/// The stream's name and region, from `arn:<partition>:kinesis:<region>:<account>:stream/<name>`.
fn parse_stream_arn(arn: &str) -> Option<(String, String)> {
    let parts: Vec<&str> = arn.splitn(6, ':').collect();
    match parts.as_slice() {
        ["arn", partition, "kinesis", region, account, resource]
            if !partition.is_empty()
                && !region.is_empty()
                && account.len() == 12
                && account.bytes().all(|b| b.is_ascii_digit()) =>
        {
            let name = resource.strip_prefix("stream/")?;
            let valid = !name.is_empty()
                && name.len() <= 128
                && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
            valid.then(|| ((*region).to_string(), name.to_string()))
        }
        _ => None,
    }
}

/// Builds a Kinesis source from `[sources.<name>]`.
pub fn configure(mut config: ConnectorConfig) -> Result<Arc<dyn Source>, Problems> {
    let span = config.table.span.clone();
    let spans = |key: &str| config.table.value_span(key).unwrap_or(span.clone());
    let (stream_span, endpoint_span, start_span) = (spans("stream"), spans("endpoint"), spans("start"));
    let (poll_at, buffered_at) = (config.table.key_at("poll_ms"), config.table.key_at("max_buffered_mb"));
    // Half-given credentials are pointed at where they are given.
    let credentials_span = ["access_key_id", "secret_access_key", "session_token"]
        .iter()
        .find_map(|key| config.table.key_span(key))
        .unwrap_or(span.clone());
    let mut problems = Problems::default();
    let tls = ClientTls::take_from(&mut config.table, &config.base_dir, &mut problems);
    let Some(c) = config.table.deserialize::<KinesisConfig>(&mut problems) else { return Err(problems) };
    let arn = problems.take(parse_stream_arn(&c.stream).ok_or_else(|| {
        Diagnostic::new(stream_span.clone(), format!("`{}` is not a Kinesis stream ARN", c.stream))
            .with_hint("e.g. stream = \"arn:aws:kinesis:eu-west-1:123456789012:stream/cloudtrail\"")
    }));
    let endpoint = problems.take(match (&c.endpoint, &arn) {
        (Some(e), _) => {
            reqwest::Url::parse(e).ok().filter(|u| matches!(u.scheme(), "http" | "https")).ok_or_else(|| {
                Problems::from(
                    Diagnostic::new(endpoint_span, format!("`{e}` is not an http(s) URL"))
                        .with_hint("the Kinesis API's address, e.g. \"http://127.0.0.1:4567\""),
                )
            })
        }
        (None, Some((region, _))) => reqwest::Url::parse(&crate::aws_endpoint::service_endpoint("kinesis", region))
            .map_err(|e| Diagnostic::new(stream_span, format!("no Kinesis endpoint for this region: {e}")).into()),
        // The ARN's problem is reported already.
        (None, None) => Err(Problems::default()),
    });
    let start = problems.take(match &c.start {
        None => Ok(Start::Latest),
        Some(text) => Start::parse(text).ok_or_else(|| {
            Diagnostic::new(start_span, format!("`{text}` is not where a stream can be read from"))
                .with_hint("\"latest\" (Firehose's, the default), \"trim_horizon\", or an RFC 3339 time such as \"2026-11-30T00:00:00Z\"")
        }),
    });
    let poll = problems.take(
        poll_at
            .within(c.poll_ms, 1_000, 200..=10_000, "how often a shard at its tip is read again, in ms (default 1000; Kinesis allows 5 reads a second per shard)")
            .map(Duration::from_millis),
    );
    let buffered = problems.take(buffered_at.within(
        c.max_buffered_mb,
        64,
        1..=4_096,
        "MB of fetched records waiting for a worker (default 64)",
    ));
    let credentials = problems.take(match (c.access_key_id, c.secret_access_key, c.session_token) {
        (Some(key_id), Some(secret), session_token) => Ok(Some(Credentials { key_id, secret, session_token })),
        (None, None, None) => Ok(None),
        _ => Err(Diagnostic::new(credentials_span, "the source's credentials need `access_key_id` and `secret_access_key`")
            .with_hint("set both (and `session_token` for temporary credentials), or none to find them as the AWS SDKs do (the environment's AWS_ACCESS_KEY_ID, an instance profile, …)")),
    });
    let (arn, endpoint, start, poll, buffered, tls, credentials) =
        problems.finish((|| Some((arn?, endpoint?, start?, poll?, buffered?, tls?, credentials?)))())?;
    let client = tls.client(REQUEST_TIMEOUT)?;
    let (region, _) = arn;
    // The endpoint's own path (a proxy's prefix) is signed as it is sent.
    let path = if endpoint.path().is_empty() { "/".to_string() } else { endpoint.path().to_string() };
    Ok(Arc::new(KinesisSource {
        name: config.name.clone(),
        api: Arc::new(KinesisApi {
            client,
            url: endpoint,
            path,
            region,
            stream_arn: c.stream,
            credentials: credentials.map(|c| OnceLock::from(AwsCredentials::fixed(c))).unwrap_or_default(),
        }),
        start,
        poll,
        buffered_kib: (buffered * 1_000_000 / 1024) as usize,
        dir: config.data_dir.join(&config.name),
        prepared: OnceLock::new(),
    }))
}

/// Why a Kinesis call failed.
#[derive(Debug, thiserror::Error)]
enum CallError {
    /// `ProvisionedThroughputExceededException` or `LimitExceededException`: retry later.
    #[error("throttled: {0}")]
    Throttled(String),
    /// `ExpiredIteratorException`: get a new iterator.
    #[error("the shard iterator expired")]
    ExpiredIterator,
    /// Any other error Kinesis answered with.
    #[error("{code}: {message} (HTTP {status})")]
    Refused { status: u16, code: String, message: String },
    /// No answer, or one that is not Kinesis's.
    #[error("{0}")]
    Transport(String),
}

impl CallError {
    /// Its code in the error log: `Kinesis.<Kinesis's error>` (`Kinesis.ConnectionFailed` without
    /// an answer).
    fn code(&self) -> String {
        match self {
            CallError::Refused { code, .. } => format!("Kinesis.{code}"),
            CallError::Throttled(_) => "Kinesis.ProvisionedThroughputExceededException".into(),
            CallError::ExpiredIterator => "Kinesis.ExpiredIteratorException".into(),
            CallError::Transport(_) => "Kinesis.ConnectionFailed".into(),
        }
    }

    /// Whether trying again may succeed (throttled, a server error, no answer), unlike a refusal.
    fn is_transient(&self) -> bool {
        match self {
            CallError::Throttled(_) | CallError::Transport(_) | CallError::ExpiredIterator => true,
            CallError::Refused { status, .. } => *status >= 500,
        }
    }
}

/// The Kinesis API of one stream.
struct KinesisApi {
    client: crate::tls::TlsClient,
    url: reqwest::Url,
    path: String,
    region: String,
    stream_arn: String,
    credentials: OnceLock<AwsCredentials>,
}

impl KinesisApi {
    /// The start's listing of the shards failed with `error`: what stops the source, with its code.
    fn refused_listing(&self, error: &CallError) -> SourceError {
        let message = format!("cannot list the shards of {} at {}: {error}", self.stream_arn, self.url);
        SourceError::Refused { code: error.code(), message }
    }

    /// Finds the credentials from the AWS chain, unless the source's table gave them.
    async fn find_credentials(&self) -> Result<(), SourceError> {
        if self.credentials.get().is_none() {
            let chain = AwsCredentials::resolve(&self.region, "reading a Kinesis stream").await;
            let _ = self.credentials.set(chain.map_err(SourceError::Setup)?);
        }
        Ok(())
    }

    /// Calls `operation` with `body`; its answer, or why not.
    async fn call<T: DeserializeOwned>(&self, operation: &str, body: serde_json::Value) -> Result<T, CallError> {
        let credentials = self.credentials.get().ok_or_else(|| CallError::Transport("no credentials".into()))?;
        let credentials = credentials.current().await.map_err(CallError::Transport)?;
        let body = serde_json::to_vec(&body).map_err(|e| CallError::Transport(e.to_string()))?;
        let mut headers = http::HeaderMap::new();
        headers.insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/x-amz-json-1.1"));
        let target = http::HeaderValue::from_str(&format!("Kinesis_20131202.{operation}"))
            .map_err(|e| CallError::Transport(e.to_string()))?;
        headers.insert("x-amz-target", target);
        let headers = credentials
            .sign_request("POST", &self.url, &self.path, (&self.region, "kinesis"), headers, &body)
            .map_err(|e| CallError::Transport(format!("cannot sign the request: {e}")))?;
        let response = self
            .client
            .current()
            .post(self.url.clone())
            .headers(headers)
            .body(body)
            .send()
            .await
            .map_err(|e| CallError::Transport(sluice_engine::redact::error(&e)))?;
        let status = response.status();
        let text = response.bytes().await.map_err(|e| CallError::Transport(sluice_engine::redact::error(&e)))?;
        if status.is_success() {
            return serde_json::from_slice(&text)
                .map_err(|e| CallError::Transport(format!("{operation}: an answer that is not Kinesis's: {e}")));
        }
        #[derive(Deserialize, Default)]
        struct ErrorBody {
            #[serde(rename = "__type", default)]
            kind: String,
            #[serde(alias = "Message", default)]
            message: String,
        }
        let error: ErrorBody = serde_json::from_slice(&text).unwrap_or_default();
        // `__type` may carry a namespace: `com.amazonaws.kinesis.v20131202#ExpiredIteratorException`.
        let code = error.kind.rsplit('#').next().unwrap_or_default().to_string();
        Err(match code.as_str() {
            "ProvisionedThroughputExceededException" | "LimitExceededException" => CallError::Throttled(error.message),
            "ExpiredIteratorException" => CallError::ExpiredIterator,
            "" => CallError::Refused {
                status: status.as_u16(),
                code: "UnknownError".into(),
                message: String::from_utf8_lossy(&text).chars().take(300).collect(),
            },
            _ => CallError::Refused { status: status.as_u16(), code, message: error.message },
        })
    }

    /// Every shard of the stream (ListShards, page by page).
    async fn list_shards(&self) -> Result<Vec<Shard>, CallError> {
        #[derive(Deserialize)]
        #[serde(rename_all = "PascalCase")]
        struct Page {
            #[serde(default)]
            shards: Vec<Shard>,
            next_token: Option<String>,
        }
        let mut shards = Vec::new();
        let mut token: Option<String> = None;
        loop {
            // With a NextToken, the stream must not be named again.
            let body = match &token {
                Some(t) => serde_json::json!({ "NextToken": t }),
                None => serde_json::json!({ "StreamARN": self.stream_arn }),
            };
            let page: Page = self.call("ListShards", body).await?;
            shards.extend(page.shards);
            match page.next_token {
                Some(t) if !t.is_empty() => token = Some(t),
                _ => return Ok(shards),
            }
        }
    }
}

/// A shard as ListShards describes it.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Shard {
    shard_id: String,
    parent_shard_id: Option<String>,
    adjacent_parent_shard_id: Option<String>,
    sequence_number_range: SequenceRange,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct SequenceRange {
    /// Set once the shard is closed (split or merged): no record is added after.
    ending_sequence_number: Option<String>,
}

/// A GetRecords answer.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct GotRecords {
    #[serde(default)]
    records: Vec<KinesisRecord>,
    next_shard_iterator: Option<String>,
    #[serde(default)]
    millis_behind_latest: u64,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct KinesisRecord {
    sequence_number: String,
    #[serde(default)]
    partition_key: String,
    /// Seconds since the epoch, with a fraction.
    #[serde(default)]
    approximate_arrival_timestamp: f64,
    data: String,
}

/// A Kinesis record, decoded.
struct Fetched {
    sequence_number: String,
    partition_key: String,
    /// Its `ApproximateArrivalTimestamp` in ms (0 when Kinesis gave none).
    arrival_ms: i64,
    data: Vec<u8>,
}

/// `records` with their data decoded, or why an answer is not Kinesis's.
fn decode(records: Vec<KinesisRecord>) -> Result<Vec<Fetched>, CallError> {
    records
        .into_iter()
        .map(|record| {
            let data = base64::engine::general_purpose::STANDARD.decode(record.data.as_bytes()).map_err(|e| {
                CallError::Transport(format!(
                    "GetRecords: record {} has data that is not base64 ({e})",
                    record.sequence_number
                ))
            })?;
            let arrival_ms = (record.approximate_arrival_timestamp * 1000.0) as i64;
            Ok(Fetched {
                sequence_number: record.sequence_number,
                partition_key: record.partition_key,
                arrival_ms,
                data,
            })
        })
        .collect()
}

/// Records of one shard, fetched and waiting for its worker.
struct Chunk {
    shard: Arc<str>,
    records: RecordBatch,
    /// The sequence number of the last Kinesis record in it (`None`: an end marker alone).
    last: Option<String>,
    /// The shard is read to its end with this chunk.
    ended: bool,
    /// Its room in `max_buffered_mb`, given back when a worker took it.
    _room: Option<OwnedSemaphorePermit>,
}

/// What the shard readers of one process share.
struct Shared {
    /// The source's name, for the error log.
    name: String,
    metrics: Arc<sluice_engine::metrics::PipelineMetrics>,
    api: Arc<KinesisApi>,
    /// Where a shard without a checkpoint starts (`AT_TIMESTAMP`); `None`: `TRIM_HORIZON`.
    start_ms: Option<i64>,
    poll: Duration,
    stop: StopSignal,
    meter: SourceMeter,
    checkpoints: Arc<FileCheckpoints<String>>,
    room: Arc<Semaphore>,
    room_kib: usize,
    /// Each local worker's queue of chunks, once it opened.
    queues: Mutex<HashMap<usize, mpsc::UnboundedSender<Chunk>>>,
    /// Shards read to their end by this process (or earlier runs): their children may start.
    ended: Mutex<HashSet<String>>,
    /// Told when a shard ends, so its children are started at once, not at the next listing.
    relist: tokio::sync::Notify,
    /// Shards closed, from the latest listing.
    closed: Mutex<HashSet<String>>,
    /// How far behind each shard being read is, for the gauge.
    behind: Mutex<BTreeMap<String, u64>>,
}

impl Shared {
    /// Says in the error log (and on stderr) that a call failed and is tried again: `what` failed,
    /// for `shard` if one, on attempt `attempt`. Its code is `Kinesis.<Kinesis's error>`.
    fn report_retry(&self, error: &CallError, what: &str, shard: Option<&str>, attempt: u32) {
        let code = error.code();
        let message = format!("{what}; trying again in {:?}: {error}", backoff(attempt));
        self.report(sluice_engine::error_log::Level::Warn, &code, &message, shard, Some(attempt));
    }

    /// Says `message` in the error log (and on stderr) at `level`, under `code`.
    fn report(
        &self,
        level: sluice_engine::error_log::Level,
        code: &str,
        message: &str,
        shard: Option<&str>,
        attempts: Option<u32>,
    ) {
        self.metrics.report_error(sluice_engine::error_log::ErrorEvent {
            level,
            component: &self.name,
            error_code: code,
            message,
            attempts,
            key: shard,
        });
    }
}

/// What `prepare` set up.
struct Prepared {
    runtime: tokio::runtime::Handle,
    shared: Arc<Shared>,
    /// Started by the first worker that opens, with the workers' layout.
    lister: OnceLock<()>,
}

/// A configured Kinesis source.
pub struct KinesisSource {
    name: String,
    api: Arc<KinesisApi>,
    start: Start,
    poll: Duration,
    buffered_kib: usize,
    dir: std::path::PathBuf,
    prepared: OnceLock<Prepared>,
}

impl std::fmt::Debug for KinesisSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KinesisSource").field("stream", &self.api.stream_arn).field("start", &self.start).finish()
    }
}

/// Locks `m`, also after a panic elsewhere (the state stays consistent: every update is one step).
fn locked<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl KinesisSource {
    /// The instant `start = "latest"` means for this data folder: read from `start.json`, or now,
    /// written there (synced) by the first run.
    fn latest_instant(&self) -> Result<i64, SourceError> {
        #[derive(serde::Serialize, Deserialize)]
        struct Started {
            at_ms: i64,
        }
        let path = self.dir.join("start.json");
        if let Ok(bytes) = std::fs::read(&path) {
            return serde_json::from_slice::<Started>(&bytes).map(|s| s.at_ms).map_err(|e| {
                SourceError::Setup(format!(
                    "{} is not sluice's: {e}; remove it to start at the stream's tip",
                    path.display()
                ))
            });
        }
        let at_ms = sluice_engine::record::now_ms();
        let text = serde_json::to_vec(&Started { at_ms }).map_err(|e| SourceError::Setup(e.to_string()))?;
        sluice_engine::folders::create_dir_synced(&self.dir)
            .and_then(|()| sluice_engine::folders::replace_file(&path, &text))
            .map_err(|e| SourceError::Io { context: format!("writing {}", path.display()), source: e })?;
        Ok(at_ms)
    }
}

impl Source for KinesisSource {
    fn describe(&self) -> String {
        let start = match self.start {
            Start::Latest => "latest".to_string(),
            Start::TrimHorizon => "trim_horizon".to_string(),
            Start::At(ms) => chrono::DateTime::from_timestamp_millis(ms).map_or(ms.to_string(), |t| t.to_rfc3339()),
        };
        format!("kinesis: {} from {start} (via {})", self.api.stream_arn, self.api.url)
    }

    fn is_finite(&self) -> bool {
        false
    }

    /// The credentials found and the stream's shards listed once (a refusal is the error).
    fn check(&self) -> Option<futures::future::BoxFuture<'static, Result<(), SourceError>>> {
        let api = Arc::clone(&self.api);
        Some(Box::pin(async move {
            api.find_credentials().await?;
            api.list_shards().await.map(|_| ()).map_err(|e| api.refused_listing(&e))
        }))
    }

    /// Checks the credentials and the stream (one listing), fixes where `latest` is, and starts
    /// following the delivered frontier for checkpoints.
    fn prepare(&self, ctx: &PrepareContext) -> Result<(), SourceError> {
        self.api.client.tls_metrics().meter_with(ctx.meter.clone());
        ctx.runtime.block_on(self.api.find_credentials())?;
        let api = Arc::clone(&self.api);
        let listed = ctx.runtime.block_on(async {
            let mut attempt = 0;
            loop {
                attempt += 1;
                match api.list_shards().await {
                    // A refusal (no such stream, not allowed) is the answer; a busy or failing
                    // Kinesis is given a few more tries.
                    Err(e) if e.is_transient() && attempt < START_ATTEMPTS => {
                        tracing::warn!(stream = %api.stream_arn, error = %e, attempt, "cannot list the shards; trying again");
                        tokio::time::sleep(backoff(attempt)).await;
                    }
                    listed => return listed,
                }
            }
        });
        let shards = listed.map_err(|e| self.api.refused_listing(&e))?;
        let start_ms = match self.start {
            Start::Latest => Some(self.latest_instant()?),
            Start::At(ms) => Some(ms),
            Start::TrimHorizon => None,
        };
        tracing::info!(stream = %self.api.stream_arn, shards = shards.len(), "kinesis stream found");
        let checkpoints = FileCheckpoints::<String>::load(self.dir.clone());
        checkpoints.follow(Arc::clone(&ctx.delivered));
        let shared = Arc::new(Shared {
            name: self.name.clone(),
            metrics: Arc::clone(&ctx.metrics),
            api,
            start_ms,
            poll: self.poll,
            stop: ctx.stop.clone(),
            meter: ctx.meter.clone(),
            checkpoints,
            room: Arc::new(Semaphore::new(self.buffered_kib)),
            room_kib: self.buffered_kib,
            queues: Mutex::new(HashMap::new()),
            ended: Mutex::new(HashSet::new()),
            relist: tokio::sync::Notify::new(),
            closed: Mutex::new(HashSet::new()),
            behind: Mutex::new(BTreeMap::new()),
        });
        let _ = self.prepared.set(Prepared { runtime: ctx.runtime.clone(), shared, lister: OnceLock::new() });
        Ok(())
    }

    /// The stream keeps what was not read: the checkpoint is saved as it stands, never removed.
    fn finish(&self, _stopped: bool) {
        if let Some(p) = self.prepared.get() {
            p.shared.checkpoints.finish(true);
        }
    }

    fn open(&self, ctx: &SourceContext) -> Result<Box<dyn SourceReader>, SourceError> {
        let p = self.prepared.get().ok_or_else(|| SourceError::Setup("the kinesis source was not prepared".into()))?;
        let (sender, chunks) = mpsc::unbounded_channel();
        locked(&p.shared.queues).insert(ctx.worker, sender);
        p.lister.get_or_init(|| {
            let (shared, workers, local) = (Arc::clone(&p.shared), ctx.workers.max(1), ctx.local_workers.clone());
            p.runtime.spawn(follow_shards(shared, workers, local));
        });
        Ok(Box::new(KinesisReader {
            chunks,
            checkpoints: Arc::clone(&p.shared.checkpoints),
            epoch: 0,
            poll: p.shared.poll,
        }))
    }
}

/// The worker a shard belongs to, among every worker of every process.
fn owner(shard_id: &str, workers: usize) -> usize {
    (fingerprint(shard_id.as_bytes()) % workers as u64) as usize
}

/// Lists the shards at start and every [`LIST_EVERY`], and starts a reader for each shard this
/// process owns once its parents are read to their end.
async fn follow_shards(shared: Arc<Shared>, workers: usize, local: std::ops::Range<usize>) {
    let mut started: HashSet<String> = HashSet::new();
    let mut failures = 0u32;
    loop {
        match shared.api.list_shards().await {
            Ok(shards) => {
                failures = 0;
                let listed: HashSet<&str> = shards.iter().map(|s| s.shard_id.as_str()).collect();
                // Shards trimmed from the stream (long closed): their checkpoints go, so resharding
                // (which an on-demand stream does by itself) does not grow them without end.
                for id in shared.checkpoints.units() {
                    if !listed.contains(id.as_str()) && shared.checkpoints.forget_done(&id) {
                        started.remove(&id);
                        locked(&shared.ended).remove(&id);
                    }
                }
                *locked(&shared.closed) = shards
                    .iter()
                    .filter(|s| s.sequence_number_range.ending_sequence_number.is_some())
                    .map(|s| s.shard_id.clone())
                    .collect();
                for shard in &shards {
                    if started.contains(&shard.shard_id) || !local.contains(&owner(&shard.shard_id, workers)) {
                        continue;
                    }
                    let saved = shared.checkpoints.saved(&shard.shard_id);
                    if saved == Some(Saved::Done) {
                        locked(&shared.ended).insert(shard.shard_id.clone());
                        started.insert(shard.shard_id.clone());
                        continue;
                    }
                    let parents = [&shard.parent_shard_id, &shard.adjacent_parent_shard_id];
                    let waiting = parents.into_iter().flatten().any(|parent| {
                        listed.contains(parent.as_str())
                            && local.contains(&owner(parent, workers))
                            && !locked(&shared.ended).contains(parent)
                            && shared.checkpoints.saved(parent) != Some(Saved::Done)
                    });
                    if waiting {
                        continue;
                    }
                    started.insert(shard.shard_id.clone());
                    let after = match saved {
                        Some(Saved::Offset(sequence)) => Some(sequence),
                        _ => None,
                    };
                    let worker = owner(&shard.shard_id, workers);
                    tokio::spawn(read_shard(Arc::clone(&shared), shard.shard_id.clone(), worker, after));
                }
            }
            Err(e) => {
                failures += 1;
                if matches!(e, CallError::Throttled(_)) {
                    shared.meter.count(THROTTLED_LIST_SHARDS, 1);
                } else {
                    shared.report_retry(&e, "cannot list the shards", None, failures);
                }
            }
        }
        let wait = if failures == 0 { LIST_EVERY } else { backoff(failures).min(LIST_EVERY) };
        tokio::select! {
            () = shared.stop.stopped() => return,
            () = tokio::time::sleep(wait) => {}
            () = shared.relist.notified() => {}
        }
    }
}

/// The wait before retry `n` (from 1): 100 ms doubling, at most [`MAX_BACKOFF`].
fn backoff(n: u32) -> Duration {
    Duration::from_millis(100u64.saturating_mul(1 << n.min(10))).min(MAX_BACKOFF)
}

/// Reads one shard from `after` (a checkpoint) or the source's start, until its end or the stop,
/// handing its records to `worker` in chunks.
async fn read_shard(shared: Arc<Shared>, shard_id: String, worker: usize, mut after: Option<String>) {
    let shard: Arc<str> = Arc::from(shard_id.as_str());
    let mut failures = 0u32;
    let mut iterator: Option<String> = None;
    // Set when the checkpoint is no longer in the stream: read from the oldest record it keeps.
    let mut from_oldest = false;
    loop {
        if shared.stop.is_stopped() {
            return;
        }
        let result = match &iterator {
            None => get_iterator(&shared, &shard_id, after.as_deref(), from_oldest).await.map(|it| {
                iterator = Some(it);
                None
            }),
            Some(it) => shared
                .api
                .call::<GotRecords>(
                    "GetRecords",
                    serde_json::json!({ "ShardIterator": it, "StreamARN": shared.api.stream_arn }),
                )
                .await
                .map(Some),
        };
        let got = match result {
            Ok(None) => continue,
            Ok(Some(got)) => got,
            // Kinesis's answer to a sequence number it no longer holds (trimmed past the stream's
            // retention while nothing read it): what lay between is gone upstream; say so loudly
            // and go on from the oldest record kept rather than stop reading the shard.
            Err(CallError::Refused { code, message, .. })
                if iterator.is_none() && after.is_some() && code == "InvalidArgumentException" =>
            {
                shared.report(
                    sluice_engine::error_log::Level::Error,
                    "Kinesis.InvalidArgumentException",
                    &format!(
                        "the shard's checkpoint (after sequence {}) is not in the stream any more ({message}); reading from the oldest record it keeps: records between were trimmed before they were read",
                        after.as_deref().unwrap_or_default()
                    ),
                    Some(&shard_id),
                    None,
                );
                (after, from_oldest) = (None, true);
                continue;
            }
            // The shard itself is gone (trimmed whole): nothing more can be read from it.
            Err(CallError::Refused { code, message, .. })
                if iterator.is_none() && code == "ResourceNotFoundException" =>
            {
                shared.report(
                    sluice_engine::error_log::Level::Error,
                    "Kinesis.ResourceNotFoundException",
                    &format!("the shard is not in the stream any more ({message}); its children are read next"),
                    Some(&shard_id),
                    None,
                );
                locked(&shared.behind).remove(&shard_id);
                locked(&shared.ended).insert(shard_id);
                shared.relist.notify_one();
                return;
            }
            Err(e) => {
                failures += 1;
                match (&e, iterator.is_some()) {
                    // A new iterator after the last record handed over (at once, the first time).
                    (CallError::ExpiredIterator, _) => iterator = None,
                    (CallError::Throttled(_), true) => shared.meter.count(THROTTLED_GET_RECORDS, 1),
                    (CallError::Throttled(_), false) => shared.meter.count(THROTTLED_GET_SHARD_ITERATOR, 1),
                    _ => shared.report_retry(&e, "cannot read the shard", Some(&shard_id), failures),
                }
                if !matches!(e, CallError::ExpiredIterator) || failures > 1 {
                    tokio::select! {
                        () = shared.stop.stopped() => return,
                        () = tokio::time::sleep(backoff(failures)) => {}
                    }
                }
                continue;
            }
        };
        // Kinesis's data is base64; an answer that is not is read again, never passed over.
        let records = match decode(got.records) {
            Ok(records) => records,
            Err(e) => {
                failures += 1;
                shared.report_retry(&e, "cannot read the shard", Some(&shard_id), failures);
                tokio::select! {
                    () = shared.stop.stopped() => return,
                    () = tokio::time::sleep(backoff(failures)) => {}
                }
                continue;
            }
        };
        failures = 0;
        locked(&shared.behind).insert(shard_id.clone(), got.millis_behind_latest);
        let behind = locked(&shared.behind).values().copied().max().unwrap_or(0);
        shared.meter.set(MILLIS_BEHIND, behind);
        let at_tip = records.is_empty() && got.millis_behind_latest == 0;
        let ended = got.next_shard_iterator.is_none() || at_tip && locked(&shared.closed).contains(&shard_id);
        let fetched = records.len();
        if !hand_over(&shared, &shard, worker, records, ended, &mut after).await {
            return;
        }
        if ended {
            locked(&shared.behind).remove(&shard_id);
            locked(&shared.ended).insert(shard_id);
            shared.relist.notify_one();
            return;
        }
        iterator = got.next_shard_iterator;
        let wait = if fetched == 0 || got.millis_behind_latest == 0 { shared.poll } else { CATCH_UP_EVERY };
        tokio::select! {
            () = shared.stop.stopped() => return,
            () = tokio::time::sleep(wait) => {}
        }
    }
}

/// A shard iterator after `after`, or at the oldest record (`from_oldest`), or at the source's start.
async fn get_iterator(
    shared: &Shared,
    shard_id: &str,
    after: Option<&str>,
    from_oldest: bool,
) -> Result<String, CallError> {
    #[derive(Deserialize)]
    #[serde(rename_all = "PascalCase")]
    struct Iterator {
        shard_iterator: String,
    }
    let mut body = serde_json::json!({ "StreamARN": shared.api.stream_arn, "ShardId": shard_id });
    match (after, shared.start_ms) {
        (None, _) if from_oldest => body["ShardIteratorType"] = "TRIM_HORIZON".into(),
        (Some(sequence), _) => {
            body["ShardIteratorType"] = "AFTER_SEQUENCE_NUMBER".into();
            body["StartingSequenceNumber"] = sequence.into();
        }
        (None, Some(ms)) => {
            body["ShardIteratorType"] = "AT_TIMESTAMP".into();
            body["Timestamp"] = (ms as f64 / 1000.0).into();
        }
        (None, None) => body["ShardIteratorType"] = "TRIM_HORIZON".into(),
    }
    let got: Iterator = shared.api.call("GetShardIterator", body).await?;
    Ok(got.shard_iterator)
}

/// Decodes `records`, de-aggregates them and hands them to `worker` in chunks of about
/// [`CHUNK_BYTES`], each waiting for room in `max_buffered_mb`; the last chunk says whether the
/// shard `ended`. False when the run stops first (or the worker is gone).
async fn hand_over(
    shared: &Shared,
    shard: &Arc<str>,
    worker: usize,
    records: Vec<Fetched>,
    ended: bool,
    after: &mut Option<String>,
) -> bool {
    let count = records.len();
    let mut records = records.into_iter().peekable();
    let mut bytes_read = 0u64;
    while records.peek().is_some() || ended {
        let mut chunk = RecordBatch::with_capacity(i64::MAX, 0);
        chunk.describe_source(
            vec![(
                "sourceKinesisStreamArn".into(),
                serde_json::Value::from(shared.api.stream_arn.as_str()).to_string(),
            )],
            "kinesisRecordMetadata",
        );
        let (mut last, mut described_bytes) = (None, 0usize);
        for record in records.by_ref() {
            bytes_read += record.data.len() as u64;
            deaggregate(&record.data, &record.partition_key, |user, partition_key, subsequence| {
                let metadata = record_metadata(shard, partition_key, &record, subsequence);
                described_bytes += metadata.len();
                chunk.push_described(user, Some(metadata));
            });
            if record.arrival_ms > 0 {
                chunk.arrival_ms = chunk.arrival_ms.min(record.arrival_ms);
            }
            last = Some(record.sequence_number);
            if chunk.byte_len() + described_bytes >= CHUNK_BYTES {
                break;
            }
        }
        if chunk.arrival_ms == i64::MAX {
            chunk.arrival_ms = sluice_engine::record::now_ms();
        }
        let is_last = records.peek().is_none();
        // The records' metadata counts in the room too: small records carry as many bytes of it.
        let kib = ((chunk.byte_len() + described_bytes) / 1024).clamp(1, shared.room_kib) as u32;
        let room = tokio::select! {
            () = shared.stop.stopped() => return false,
            room = Arc::clone(&shared.room).acquire_many_owned(kib) => room.ok(),
        };
        let Some(queue) = wait_for_queue(shared, worker).await else { return false };
        match &last {
            Some(sequence) => *after = Some(sequence.clone()),
            // An end marker alone keeps the shard's position.
            None => last.clone_from(after),
        }
        let chunk = Chunk { shard: Arc::clone(shard), records: chunk, last, ended: ended && is_last, _room: room };
        if queue.send(chunk).is_err() {
            return false;
        }
        if is_last {
            break;
        }
    }
    if count > 0 {
        // Kinesis records as the stream holds them (an aggregated one counts once); the records
        // they hold are the pipeline's IncomingRecords.
        shared.meter.count(RECORDS_READ, count as u64);
        shared.meter.count(BYTES_READ, bytes_read);
    }
    true
}

/// The queue of `worker` (which opens right after the first worker did).
async fn wait_for_queue(shared: &Shared, worker: usize) -> Option<mpsc::UnboundedSender<Chunk>> {
    loop {
        if let Some(queue) = locked(&shared.queues).get(&worker) {
            return Some(queue.clone());
        }
        tokio::select! {
            () = shared.stop.stopped() => return None,
            () = tokio::time::sleep(Duration::from_millis(20)) => {}
        }
    }
}

/// Firehose's `kinesisRecordMetadata` of a user record (for a Lambda transform's function), in the
/// order Firehose's documentation shows it; written directly, not through a JSON value (one string
/// per record, not a map and its keys).
fn record_metadata(shard: &str, partition_key: &str, record: &Fetched, subsequence: u64) -> String {
    use std::io::Write as _;
    let mut out = Vec::with_capacity(160 + partition_key.len() + record.sequence_number.len());
    // Writing into a Vec cannot fail; serde_json escapes the strings.
    fn string(out: &mut Vec<u8>, name: &str, text: &str) {
        out.extend_from_slice(name.as_bytes());
        let _ = serde_json::to_writer(&mut *out, text);
    }
    string(&mut out, "{\"shardId\":", shard);
    string(&mut out, ",\"partitionKey\":", partition_key);
    let _ = write!(out, ",\"approximateArrivalTimestamp\":{}", record.arrival_ms);
    string(&mut out, ",\"sequenceNumber\":", &record.sequence_number);
    let _ = write!(out, ",\"subsequenceNumber\":{subsequence}}}");
    // Only UTF-8 was written.
    String::from_utf8(out).unwrap_or_default()
}

/// Calls `take` with each user record of `data` (a Kinesis record put with `partition_key`), its
/// partition key and its subsequence number: the records a KPL aggregated record holds, each with
/// the key its table gives it (the KCL's), numbered from 0; or `data` itself, numbered 0.
fn deaggregate<'a>(data: &'a [u8], partition_key: &'a str, mut take: impl FnMut(&'a [u8], &'a str, u64)) {
    match kpl_records(data) {
        Some(records) => {
            for (subsequence, (user, key)) in (0u64..).zip(records) {
                take(user, key.unwrap_or(partition_key), subsequence);
            }
        }
        None => take(data, partition_key, 0),
    }
}

/// The user records of a KPL aggregated record (magic, protobuf `AggregatedRecord`, MD5 of the
/// protobuf) with their partition keys (`None` where the record's index is past the table, or the
/// key is not UTF-8), or `None` when `data` is not one (or its digest does not match: then it is a
/// plain record, as the KCL treats it).
fn kpl_records(data: &[u8]) -> Option<Vec<(&[u8], Option<&str>)>> {
    let body = data.strip_prefix(&KPL_MAGIC)?;
    let (message, digest) = body.split_at_checked(body.len().checked_sub(16)?)?;
    if md5::Md5::digest(message).as_slice() != digest {
        return None;
    }
    // AggregatedRecord: 1 partition_key_table, 2 explicit_hash_key_table, 3 records (Record).
    let mut keys: Vec<Option<&str>> = Vec::new();
    let mut records = Vec::new();
    for field in Fields(message) {
        match field? {
            (1, FieldValue::Bytes(key)) => keys.push(std::str::from_utf8(key).ok()),
            (3, FieldValue::Bytes(record)) => {
                // Record: 1 partition_key_index, 2 explicit_hash_key_index, 3 data, 4 tags.
                let (mut data, mut key_index) = (&[][..], None);
                for field in Fields(record) {
                    match field? {
                        (1, FieldValue::Varint(index)) => key_index = Some(index),
                        (3, FieldValue::Bytes(bytes)) => data = bytes,
                        _ => {}
                    }
                }
                records.push((data, key_index));
            }
            (3, _) => return None,
            _ => {}
        }
    }
    // The table may come after the records in the message: keys are looked up at the end.
    let key = |index: Option<u64>| keys.get(usize::try_from(index?).ok()?).copied().flatten();
    Some(records.into_iter().map(|(data, index)| (data, key(index))).collect())
}

/// A protobuf field's value (the wire types a KPL record uses, and the fixed ones to skip).
enum FieldValue<'a> {
    Varint(u64),
    Fixed,
    Bytes(&'a [u8]),
}

/// The fields of a protobuf message, in order; an item is `None` where the message is malformed.
struct Fields<'a>(&'a [u8]);

impl<'a> Fields<'a> {
    fn varint(&mut self) -> Option<u64> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let (&byte, rest) = self.0.split_first()?;
            self.0 = rest;
            value |= u64::from(byte & 0x7F) << shift;
            if byte & 0x80 == 0 {
                return Some(value);
            }
        }
        None
    }

    fn skip(&mut self, n: usize) -> Option<&'a [u8]> {
        let (taken, rest) = self.0.split_at_checked(n)?;
        self.0 = rest;
        Some(taken)
    }
}

impl<'a> Iterator for Fields<'a> {
    type Item = Option<(u64, FieldValue<'a>)>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.0.is_empty() {
            return None;
        }
        let field = (|| {
            let key = self.varint()?;
            let value = match key & 7 {
                0 => self.varint().map(FieldValue::Varint)?,
                1 => self.skip(8).map(|_| FieldValue::Fixed)?,
                2 => {
                    let len = usize::try_from(self.varint()?).ok()?;
                    FieldValue::Bytes(self.skip(len)?)
                }
                5 => self.skip(4).map(|_| FieldValue::Fixed)?,
                _ => return None,
            };
            Some((key >> 3, value))
        })();
        if field.is_none() {
            self.0 = &[]; // Malformed: stop after saying so.
        }
        Some(field)
    }
}

/// One worker's share: the chunks of the shards it owns, taken in the order they were fetched.
struct KinesisReader {
    chunks: mpsc::UnboundedReceiver<Chunk>,
    checkpoints: Arc<FileCheckpoints<String>>,
    epoch: u64,
    poll: Duration,
}

impl SourceReader for KinesisReader {
    fn set_epoch(&mut self, epoch: u64) {
        self.epoch = epoch;
    }

    fn read(&mut self, batch: &mut RecordBatch, max_bytes: usize) -> Result<ReadStatus, SourceError> {
        while batch.byte_len() < max_bytes {
            let Ok(chunk) = self.chunks.try_recv() else { break };
            if batch.is_empty() {
                batch.arrival_ms = chunk.records.arrival_ms;
            } else {
                batch.arrival_ms = batch.arrival_ms.min(chunk.records.arrival_ms);
            }
            if let Some(metadata) = chunk.records.source_metadata() {
                batch.describe_source(metadata.event.clone(), &metadata.record_member);
            }
            for (index, record) in chunk.records.iter().enumerate() {
                batch.push_described(record, chunk.records.record_metadata(index).map(str::to_string));
            }
            // Recorded in the order taken, so a shard's checkpoint only moves forward; an end
            // marker of a shard that never had a record has no position, and is done when delivered.
            if chunk.last.is_some() || chunk.ended {
                self.checkpoints.read(&chunk.shard, self.epoch, chunk.last.unwrap_or_default(), chunk.ended);
            }
        }
        if batch.is_empty() {
            // Chunks arrive from the shards' readers; ask again soon (well inside a poll).
            Ok(ReadStatus::Pending(self.poll.min(Duration::from_millis(100))))
        } else {
            Ok(ReadStatus::Ready)
        }
    }

    fn on_stop(&mut self) -> OnStop {
        OnStop::Finish
    }
}

/// Bytes of a KPL aggregated record of `records` (all with the partition key `pk`), for tests.
#[cfg(test)]
fn aggregate(records: &[&[u8]]) -> Vec<u8> {
    aggregate_keyed(&["pk"], &records.iter().map(|r| (0, *r)).collect::<Vec<_>>(), false)
}

/// Bytes of a KPL aggregated record whose partition key table is `keys` (written after the records
/// when `table_last`), of `records` (each its key's index and its data), for tests.
#[cfg(test)]
fn aggregate_keyed(keys: &[&str], records: &[(u64, &[u8])], table_last: bool) -> Vec<u8> {
    fn varint(out: &mut Vec<u8>, mut v: u64) {
        while v >= 0x80 {
            out.push((v as u8) | 0x80);
            v >>= 7;
        }
        out.push(v as u8);
    }
    fn bytes_field(out: &mut Vec<u8>, number: u64, bytes: &[u8]) {
        varint(out, number << 3 | 2);
        varint(out, bytes.len() as u64);
        out.extend_from_slice(bytes);
    }
    let mut message = Vec::new();
    let table = |message: &mut Vec<u8>| keys.iter().for_each(|k| bytes_field(message, 1, k.as_bytes()));
    if !table_last {
        table(&mut message);
    }
    for (key, data) in records {
        let mut record = Vec::new();
        varint(&mut record, 1 << 3);
        varint(&mut record, *key);
        bytes_field(&mut record, 3, data);
        bytes_field(&mut message, 3, &record);
    }
    if table_last {
        table(&mut message);
    }
    let mut out = KPL_MAGIC.to_vec();
    out.extend_from_slice(&message);
    out.extend_from_slice(md5::Md5::digest(&message).as_slice());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn users(data: &[u8]) -> Vec<Vec<u8>> {
        let mut got = Vec::new();
        deaggregate(data, "outer", |r, _, _| got.push(r.to_vec()));
        got
    }

    /// Each user record's partition key and subsequence number.
    fn keyed(data: &[u8]) -> Vec<(String, u64)> {
        let mut got = Vec::new();
        deaggregate(data, "outer", |_, key, subsequence| got.push((key.to_string(), subsequence)));
        got
    }

    #[test]
    fn record_metadata_is_the_json_object_firehose_gives_with_its_strings_escaped() {
        let record = Fetched {
            sequence_number: "4959".into(),
            partition_key: String::new(),
            arrival_ms: 1_764_000_000_123,
            data: Vec::new(),
        };
        let key = "user \"7\" \\ é\n\u{1}";
        let text = record_metadata("shardId-000000000001", key, &record, 3);
        let parsed: serde_json::Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
        assert_eq!(
            parsed,
            serde_json::json!({
                "shardId": "shardId-000000000001",
                "partitionKey": key,
                "approximateArrivalTimestamp": 1_764_000_000_123i64,
                "sequenceNumber": "4959",
                "subsequenceNumber": 3,
            })
        );
        assert!(text.starts_with("{\"shardId\":\"shardId-000000000001\",\"partitionKey\":"), "{text}");
    }

    #[test]
    fn user_records_carry_their_own_partition_keys_and_subsequence_numbers() {
        let owned = |v: &[(&str, u64)]| v.iter().map(|(k, n)| (k.to_string(), *n)).collect::<Vec<_>>();
        // As the KPL writes it (the table first), and with the table after the records; an index
        // past the table falls back to the Kinesis record's own key.
        for table_last in [false, true] {
            let data = aggregate_keyed(&["a", "b"], &[(1, b"x"), (0, b"y"), (1, b"z"), (7, b"w")], table_last);
            assert_eq!(keyed(&data), owned(&[("b", 0), ("a", 1), ("b", 2), ("outer", 3)]));
        }
        assert_eq!(keyed(b"plain"), owned(&[("outer", 0)]));
    }

    #[test]
    fn an_aggregated_record_gives_its_user_records_in_order() {
        let data = aggregate(&[b"{\"a\":1}", b"", b"{\"a\":3}"]);
        assert_eq!(users(&data), vec![b"{\"a\":1}".to_vec(), Vec::new(), b"{\"a\":3}".to_vec()]);
    }

    #[test]
    fn a_record_that_only_looks_aggregated_is_a_plain_record() {
        let mut data = aggregate(&[b"x", b"y"]);
        let last = data.len() - 1;
        data[last] ^= 1; // The digest no longer matches.
        assert_eq!(users(&data), vec![data.clone()]);
        let short = [&KPL_MAGIC[..], b"abc"].concat();
        assert_eq!(users(&short), vec![short.clone()]);
        assert_eq!(users(b"plain"), vec![b"plain".to_vec()]);
    }

    #[test]
    fn a_malformed_protobuf_with_a_matching_digest_is_a_plain_record() {
        let message = [0x1A, 0x05, 0x01]; // Field 3 says 5 bytes; 1 follows.
        let mut data = KPL_MAGIC.to_vec();
        data.extend_from_slice(&message);
        data.extend_from_slice(md5::Md5::digest(message).as_slice());
        assert_eq!(users(&data), vec![data.clone()]);
    }

    #[test]
    fn stream_arns_and_starts_are_read_as_kinesis_writes_them() {
        assert_eq!(
            parse_stream_arn("arn:aws:kinesis:eu-west-1:123456789012:stream/cloud.trail-1"),
            Some(("eu-west-1".into(), "cloud.trail-1".into()))
        );
        assert_eq!(
            parse_stream_arn("arn:aws-cn:kinesis:cn-north-1:123456789012:stream/s").map(|a| a.0),
            Some("cn-north-1".into())
        );
        for bad in [
            "cloudtrail",
            "arn:aws:firehose:eu-west-1:123456789012:deliverystream/s",
            "arn:aws:kinesis:eu-west-1:1234:stream/s",
            "arn:aws:kinesis:eu-west-1:12345678901x:stream/s",
            "arn:aws:kinesis:eu-west-1:123456789012:stream/",
            "arn:aws:kinesis:eu-west-1:123456789012:stream/a b",
        ] {
            assert_eq!(parse_stream_arn(bad), None, "{bad}");
        }
        assert_eq!(Start::parse("latest"), Some(Start::Latest));
        assert_eq!(Start::parse("trim_horizon"), Some(Start::TrimHorizon));
        assert_eq!(Start::parse("2026-11-30T00:00:00Z"), Some(Start::At(1_795_996_800_000)));
        assert_eq!(Start::parse("yesterday"), None);
    }

    #[test]
    fn the_owner_of_a_shard_is_the_same_everywhere_and_spreads_shards() {
        let owners: HashSet<usize> = (0..16).map(|i| owner(&format!("shardId-{i:012}"), 4)).collect();
        assert!(owners.len() > 1, "{owners:?}");
        assert_eq!(owner("shardId-000000000007", 4), owner("shardId-000000000007", 4));
    }

    /// A Kinesis that answers as its API reference says, for one stream: `shardId-0` was split
    /// into `shardId-1` and `shardId-2` (closed: its last GetRecords gives no next iterator), and
    /// each shard holds `PER_SHARD` records `<shard>/<n>`; GetRecords gives at most 3 at a time.
    async fn fake_kinesis() -> (String, Arc<Mutex<Vec<String>>>) {
        const PER_SHARD: usize = 7;
        let calls = Arc::new(Mutex::new(Vec::new()));
        let seen = Arc::clone(&calls);
        let app = axum::Router::new().fallback(move |headers: http::HeaderMap, body: axum::body::Bytes| {
            let calls = Arc::clone(&seen);
            async move {
                let target = headers.get("x-amz-target").and_then(|v| v.to_str().ok()).unwrap_or_default();
                let operation = target.rsplit('.').next().unwrap_or_default().to_string();
                let body: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
                locked(&calls).push(operation.clone());
                let shard = |id: usize, parent: Option<&str>, closed: bool| {
                    let mut range = serde_json::json!({ "StartingSequenceNumber": "1" });
                    if closed {
                        range["EndingSequenceNumber"] = PER_SHARD.to_string().into();
                    }
                    serde_json::json!({ "ShardId": format!("shardId-{id}"), "ParentShardId": parent,
                        "HashKeyRange": { "StartingHashKey": "0", "EndingHashKey": "1" }, "SequenceNumberRange": range })
                };
                let answer = match operation.as_str() {
                    "ListShards" => serde_json::json!({ "Shards": [
                        shard(0, None, true), shard(1, Some("shardId-0"), false), shard(2, Some("shardId-0"), false)] }),
                    "GetShardIterator" => {
                        let at = match body["ShardIteratorType"].as_str() {
                            Some("AFTER_SEQUENCE_NUMBER") => body["StartingSequenceNumber"].as_str().and_then(|s| s.parse().ok()).unwrap_or(0),
                            _ => 0usize,
                        };
                        // A sequence number the shard does not hold (trimmed), as Kinesis answers it.
                        if at > PER_SHARD {
                            let refusal = serde_json::json!({ "__type": "InvalidArgumentException",
                                "message": format!("StartingSequenceNumber {at} used in GetShardIterator on shard {} is invalid", body["ShardId"]) });
                            return (http::StatusCode::BAD_REQUEST, refusal.to_string());
                        }
                        serde_json::json!({ "ShardIterator": format!("{}:{at}", body["ShardId"].as_str().unwrap_or_default()) })
                    }
                    "GetRecords" => {
                        let iterator = body["ShardIterator"].as_str().unwrap_or_default();
                        let (shard, at) = iterator.rsplit_once(':').unwrap_or_default();
                        let at: usize = at.parse().unwrap_or(0);
                        let end = (at + 3).min(PER_SHARD);
                        let records: Vec<serde_json::Value> = (at..end).map(|n| serde_json::json!({
                            "SequenceNumber": (n + 1).to_string(), "ApproximateArrivalTimestamp": 1_796_000_000.5,
                            "PartitionKey": "k", "Data": base64::engine::general_purpose::STANDARD.encode(format!("{shard}/{n}")) })).collect();
                        let next = (shard != "shardId-0" || end < PER_SHARD).then(|| format!("{shard}:{end}"));
                        serde_json::json!({ "Records": records, "NextShardIterator": next,
                            "MillisBehindLatest": if end < PER_SHARD { 1000 } else { 0 } })
                    }
                    _ => return (http::StatusCode::BAD_REQUEST, "{\"__type\":\"UnknownOperationException\"}".to_string()),
                };
                (http::StatusCode::OK, answer.to_string())
            }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap_or_else(|e| panic!("{e}"));
        let address = listener.local_addr().unwrap_or_else(|e| panic!("{e}"));
        tokio::spawn(async move { axum::serve(listener, app).await });
        (format!("http://{address}"), calls)
    }

    /// Runs a kinesis source on one worker against the fake Kinesis (`trim_horizon`, its data
    /// folder `dir`, where a test may leave a checkpoint) until `want` records came or 8 s passed:
    /// the records and batch arrival times, in the order handed over, and the calls it made.
    fn read_fake_stream(dir: &std::path::Path, want: usize) -> (Vec<String>, Vec<i64>, Vec<String>, Duration) {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap_or_else(|e| panic!("{e}"));
        let (endpoint, calls) = runtime.block_on(fake_kinesis());
        let toml = format!(
            "[pipeline]\nname = \"p\"\ndata_dir = \"{}\"\n[sources.k]\ntype = \"kinesis\"\n\
             stream = \"arn:aws:kinesis:us-east-1:123456789012:stream/s\"\nendpoint = \"{endpoint}\"\n\
             start = \"trim_horizon\"\npoll_ms = 200\naccess_key_id = \"AKID\"\nsecret_access_key = \"secret\"\n\
             [sinks.out]\ntype = \"object_store\"\ninputs = [\"k\"]\nurl = \"memory://kinesis-split\"\n",
            dir.display()
        );
        let plan = sluice_engine::testkit::plan_from_str(&toml, &crate::registry()).unwrap_or_else(|e| panic!("{e}"));
        let source = &plan.sources[0].source;
        let metrics = Arc::new(plan.new_metrics());
        let stop = StopSignal::default();
        let delivered = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let ctx = PrepareContext {
            runtime: runtime.handle().clone(),
            stop: stop.clone(),
            metrics: Arc::clone(&metrics),
            delivered: Arc::clone(&delivered),
            shared: None,
            meter: SourceMeter::new(Arc::clone(&metrics), 0, "in"),
        };
        source.prepare(&ctx).unwrap_or_else(|e| panic!("{e}"));
        let mut reader = source.open(&SourceContext::single_process(0, 1)).unwrap_or_else(|e| panic!("{e}"));
        let (mut got, mut arrivals) = (Vec::new(), Vec::new());
        let started = std::time::Instant::now();
        while got.len() < want && started.elapsed() < Duration::from_secs(8) {
            let mut batch = RecordBatch::with_capacity(0, 0);
            if let Ok(ReadStatus::Pending(wait)) = reader.read(&mut batch, 1 << 20) {
                std::thread::sleep(wait);
            }
            got.extend(batch.iter().map(|r| String::from_utf8_lossy(r).to_string()));
            arrivals.extend((!batch.is_empty()).then_some(batch.arrival_ms));
        }
        let took = started.elapsed();
        // Everything read in epoch 0 counts as delivered: the checkpoint follows within a second.
        delivered.store(1, std::sync::atomic::Ordering::SeqCst);
        std::thread::sleep(Duration::from_millis(1_200));
        stop.stop();
        let calls = locked(&calls).clone();
        (got, arrivals, calls, took)
    }

    /// A split shard's children are read only after it is read to its end, and at once after (no
    /// wait for the next listing); every record is handed over once, each shard's in order, and
    /// a batch's arrival time is Kinesis's.
    #[test]
    fn a_split_shards_children_are_read_after_it_to_its_end() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let (got, arrivals, calls, took) = read_fake_stream(dir.path(), 21);
        assert_eq!(got.len(), 21, "{got:?} after {calls:?}");
        let parent_last = got.iter().rposition(|r| r.starts_with("shardId-0/"));
        let child_first = got.iter().position(|r| !r.starts_with("shardId-0/"));
        assert!(parent_last < child_first, "{got:?}");
        for shard in 0..3 {
            let mine: Vec<&String> = got.iter().filter(|r| r.starts_with(&format!("shardId-{shard}/"))).collect();
            let want: Vec<String> = (0..7).map(|n| format!("shardId-{shard}/{n}")).collect();
            assert_eq!(mine, want.iter().collect::<Vec<_>>());
        }
        assert!(arrivals.iter().all(|&a| a == 1_796_000_000_500), "{arrivals:?}");
        assert!(took < Duration::from_secs(5), "the children waited for the next listing");
    }

    /// A checkpoint the stream no longer holds (Kinesis refuses its sequence number as
    /// InvalidArgumentException: trimmed past retention while nothing read it) does not stop the
    /// shard: it is read on from the oldest record kept; a shard checkpointed done is not read, and
    /// one no longer listed is forgotten.
    #[test]
    fn a_checkpoint_the_stream_no_longer_holds_is_read_on_from_the_oldest_record() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let checkpoint = dir.path().join("k");
        std::fs::create_dir_all(&checkpoint).unwrap_or_else(|e| panic!("{e}"));
        // shardId-7 was read to its end once and is no longer in the stream (trimmed).
        let saved = r#"{"shardId-0": "done", "shardId-1": {"offset": "999"}, "shardId-7": "done"}"#;
        std::fs::write(checkpoint.join("offsets.json"), saved).unwrap_or_else(|e| panic!("{e}"));
        let (mut got, _, calls, _) = read_fake_stream(dir.path(), 14);
        got.sort();
        let want: Vec<String> =
            [1, 2].iter().flat_map(|shard| (0..7).map(move |n| format!("shardId-{shard}/{n}"))).collect();
        assert_eq!(got, want, "after {calls:?}");
        // Once delivered, the checkpoint holds where each listed shard got to, and forgets the
        // trimmed one.
        let text = std::fs::read_to_string(checkpoint.join("offsets.json")).unwrap_or_else(|e| panic!("{e}"));
        let saved: serde_json::Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}"));
        let want = serde_json::json!({"shardId-0": "done", "shardId-1": {"offset": "7"}, "shardId-2": {"offset": "7"}});
        assert_eq!(saved, want);
    }

    #[test]
    fn backoff_doubles_up_to_its_cap() {
        assert_eq!(backoff(1), Duration::from_millis(200));
        assert_eq!(backoff(2), Duration::from_millis(400));
        assert_eq!(backoff(30), MAX_BACKOFF);
    }
}

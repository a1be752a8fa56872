//! The connectors a build knows and what each is told when it is configured: a source, transform
//! or sink `type` maps to a `configure` function that gets its own keys (the engine's taken out) and what
//! it must know of its pipeline, and answers with the connector or every problem in its keys
//! ([`Problems`]), so a file's errors are all reported in one run.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use super::{Problems, Section, StreamInfo};
use crate::contract::{BufferingRules, KeyQuery, Sink, Source, Transform};

/// `[pipeline] encryption`: how an API source's write-ahead log is encrypted at rest (see
/// [`crate::wal::seal`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogEncryption {
    /// `key_file`: 32 random bytes, base64 (read and checked at validation).
    KeyFile(std::path::PathBuf),
    /// `kms_key_id`: a data key from KMS `GenerateDataKey` wraps the segment keys; it is stored
    /// encrypted with them and unwrapped with `Decrypt` at a later start.
    Kms {
        /// The KMS key id, ARN or alias.
        key_id: String,
        /// `kms_endpoint` (default `https://kms.<region>.amazonaws.com`).
        endpoint: String,
        /// `region` (default: the ARN's, else `AWS_REGION`, else `us-east-1`).
        region: String,
    },
}

/// When an API source acknowledges a request (`[pipeline] durability`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// After the records are in the write-ahead log and fsynced (group commit: concurrent requests
    /// share one fsync). Survives a power loss.
    Fsync,
    /// After the records are written to the log (no fsync). Survives a process crash, not a power
    /// loss.
    Buffered,
    /// No log: after the records are queued in memory. A crash loses what was not delivered.
    None,
}

impl Durability {
    /// The config name's mode.
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "fsync" => Some(Durability::Fsync),
            "buffered" => Some(Durability::Buffered),
            "none" => Some(Durability::None),
            _ => None,
        }
    }
}

/// How much an API source's write-ahead log may hold (`[pipeline] retention`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// Bytes on disk; past this, puts are throttled (`max_gb`, default 50).
    pub max_bytes: u64,
    /// Age of the oldest undelivered record kept; older ones leave the log, counted and logged
    /// (`max_hours`, default 24, as Firehose keeps undelivered data).
    pub max_age: Duration,
}

impl Default for Retention {
    fn default() -> Self {
        Retention { max_bytes: 50 << 30, max_age: Duration::from_secs(24 * 3600) }
    }
}

/// The pipeline as a delivery stream (what DescribeDeliveryStream shows), set once the whole file
/// is resolved: a source that serves the Firehose API describes it, and at configure time the
/// sinks are not known yet.
pub type StreamDescription = Arc<OnceLock<StreamInfo>>;

/// What a connector's `configure` gets: its own keys (engine-owned keys already taken out).
#[derive(Debug)]
pub struct ConnectorConfig<'a> {
    /// The pipeline (delivery stream) name.
    pub pipeline: String,
    /// `[pipeline] data_dir`: where the pipeline keeps its state (logs, checkpoints).
    pub data_dir: std::path::PathBuf,
    /// `[pipeline] durability`.
    pub durability: Durability,
    /// `[pipeline] retention`.
    pub retention: Retention,
    /// `[pipeline] encryption` (none: the log is written plain).
    pub encryption: Option<LogEncryption>,
    /// The component's name, e.g. `logs` for `[sources.logs]`.
    pub name: String,
    /// Its remaining keys.
    pub table: Section<'a>,
    /// Folder of the pipeline file, for relative paths.
    pub base_dir: std::path::PathBuf,
    /// The pipeline as a delivery stream, set once the file is resolved.
    pub stream: StreamDescription,
}

/// A source `type`.
pub struct SourceType {
    /// The `type` value.
    pub name: &'static str,
    /// Builds the source from its keys, or says every problem in them.
    pub configure: fn(ConnectorConfig<'_>) -> Result<Arc<dyn Source>, Problems>,
}

/// A sink `type`.
pub struct SinkType {
    /// The `type` value.
    pub name: &'static str,
    /// Builds the sink from its keys, or says every problem in them.
    pub configure: fn(ConnectorConfig<'_>) -> Result<Arc<dyn Sink>, Problems>,
    /// Keys the engine reads for other sinks that this sink reads itself, with its own meaning
    /// (the `postgres` sink's `format` and `columns`): the engine leaves them to the connector.
    pub reads: &'static [&'static str],
    /// The body its destination takes, when the destination fixes it (`None`: objects in the
    /// sink's `format` and `compression`, named by its keys, which it may partition). Known
    /// before the sink's keys are read, so the engine checks its own keys (`format`,
    /// `partitioning`, `buffer`) beside the connector's problems, and lists only the keys the
    /// type takes; the sink built then gives the body's encoding ([`Sink::wire_format`]).
    pub fixed_body: Option<FixedBody>,
}

/// What a destination that takes its own body (a `_bulk` request, HEC events, rows for `COPY`)
/// imposes on a sink's engine keys: no `format`, `compression` or partitioning, and a bound on
/// `buffer`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FixedBody {
    /// What the body is, for the error refusing `format` (e.g. "Splunk HEC events").
    pub describe: &'static str,
    /// The largest body before compression, when the destination limits a request:
    /// `buffer.size_mb` may not be larger.
    pub max_bytes: Option<u64>,
    /// Its buffering rules when they are not S3's (docs/firehose.md §2).
    pub buffering: Option<BufferingRules>,
}

/// A transform `type`.
pub struct TransformType {
    /// The `type` value.
    pub name: &'static str,
    /// Builds the transform from its keys, or says every problem in them.
    pub configure: fn(ConnectorConfig<'_>) -> Result<Arc<dyn Transform>, Problems>,
}

/// Every connector the binary knows, listed explicitly.
#[derive(Default)]
pub struct Registry {
    /// Source types.
    pub sources: Vec<SourceType>,
    /// Transform types.
    pub transforms: Vec<TransformType>,
    /// Sink types.
    pub sinks: Vec<SinkType>,
    /// Compiles a partitioning query (jq); on failure, the byte offset in the query and why.
    pub key_query: Option<KeyQueryCompiler>,
}

/// Compiles a partitioning query.
pub type KeyQueryCompiler = fn(&str) -> Result<Arc<dyn KeyQuery>, (usize, String)>;

impl Registry {
    /// The source type called `name`.
    pub fn source(&self, name: &str) -> Option<&SourceType> {
        self.sources.iter().find(|s| s.name == name)
    }

    /// The transform type called `name`.
    pub fn transform(&self, name: &str) -> Option<&TransformType> {
        self.transforms.iter().find(|t| t.name == name)
    }

    /// The sink type called `name`.
    pub fn sink(&self, name: &str) -> Option<&SinkType> {
        self.sinks.iter().find(|s| s.name == name)
    }
}

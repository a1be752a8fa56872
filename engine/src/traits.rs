//! What connectors implement: a [`Source`] that reads records on each timely worker, a [`Sink`] that
//! stores finished payloads, and the [`Registry`] that maps config `type`s to them.
//!
//! Connectors never batch, encode or compress: the engine hands a sink a finished [`Payload`] and the
//! sink answers delivered or a classified [`DeliveryError`]. Adding a connector is one file plus one
//! registry line.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;

use crate::config::{Diagnostic, Section};
use crate::record::RecordBatch;

/// Set once when the run should stop (SIGINT/SIGTERM): sources finish, buffers flush, deliveries end.
#[derive(Debug, Clone, Default)]
pub struct StopSignal(Arc<StopState>);

#[derive(Debug, Default)]
struct StopState {
    stopped: AtomicBool,
    /// When the stop was first asked for.
    since: std::sync::OnceLock<std::time::Instant>,
    waiters: tokio::sync::Notify,
}

impl StopSignal {
    /// Asks everything to stop.
    pub fn stop(&self) {
        let _ = self.0.since.set(std::time::Instant::now());
        self.0.stopped.store(true, Ordering::SeqCst);
        self.0.waiters.notify_waiters();
    }

    /// How long ago the stop was asked for, if it was.
    pub fn stopped_for(&self) -> Option<Duration> {
        self.0.since.get().map(std::time::Instant::elapsed)
    }

    /// Whether a stop was asked for.
    pub fn is_stopped(&self) -> bool {
        self.0.stopped.load(Ordering::SeqCst)
    }

    /// Completes once a stop was asked for (for async tasks such as a listener).
    pub async fn stopped(&self) {
        loop {
            let notified = self.0.waiters.notified();
            tokio::pin!(notified);
            // Registered before the check, so a stop between the check and the wait is not missed.
            notified.as_mut().enable();
            if self.is_stopped() {
                return;
            }
            notified.await;
        }
    }
}

/// What a source reader does when the run is asked to stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnStop {
    /// Stop reading at once (a file or generator: what was not read is simply not part of the run).
    Finish,
    /// Keep reading until the reader says [`ReadStatus::Finished`]: records already acknowledged to
    /// a producer (an API source's queue) are drained into the pipeline first.
    Drain,
}

/// Where a source reader runs.
#[derive(Debug, Clone)]
pub struct SourceContext {
    /// This worker's index, `0..workers`.
    pub worker: usize,
    /// How many workers share the source.
    pub workers: usize,
}

/// What a read produced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadStatus {
    /// Records were added to the batch (or more are ready now).
    Ready,
    /// Nothing available now; ask again after this long.
    Pending(Duration),
    /// No more records, ever.
    Finished,
}

/// A source failed in a way that stops it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SourceError {
    /// Reading failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being read.
        context: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The source's setup was wrong in a way only seen at run time (e.g. a glob matched nothing).
    #[error("{0}")]
    Setup(String),
}

/// One worker's share of a source. It lives on that worker's thread.
pub trait SourceReader {
    /// Adds records to `batch` (up to about `max_bytes`) and says what happened.
    fn read(&mut self, batch: &mut RecordBatch, max_bytes: usize) -> Result<ReadStatus, SourceError>;

    /// The epoch the next [`SourceReader::read`] stamps its records with (for sources that track
    /// when what they read is delivered).
    fn set_epoch(&mut self, epoch: u64) {
        let _ = epoch;
    }

    /// Called once when the run is asked to stop; says whether to keep reading until finished.
    fn on_stop(&mut self) -> OnStop {
        OnStop::Finish
    }
}

/// What a source gets before the run starts, to start what it serves (e.g. a listener).
#[derive(Debug, Clone)]
pub struct PrepareContext {
    /// The run's async runtime.
    pub runtime: tokio::runtime::Handle,
    /// The run's stop signal.
    pub stop: StopSignal,
    /// The run's counters.
    pub metrics: Arc<crate::metrics::PipelineMetrics>,
    /// The pipeline as a delivery stream (for an API to describe).
    pub stream: Arc<crate::config::StreamInfo>,
    /// The delivered frontier: every record read in an epoch below it is delivered (or counted as
    /// failed); `u64::MAX` once the run has delivered everything.
    pub delivered: Arc<std::sync::atomic::AtomicU64>,
}

/// A configured source.
pub trait Source: std::any::Any + Send + Sync + 'static {
    /// One line for `sluice validate`, e.g. `file: 3 paths`.
    fn describe(&self) -> String;
    /// Whether the source ends by itself (batch) or runs until stopped (stream).
    fn is_finite(&self) -> bool;
    /// Called once before the workers start (e.g. bind a listener); an error stops the run.
    fn prepare(&self, ctx: &PrepareContext) -> Result<(), SourceError> {
        let _ = ctx;
        Ok(())
    }
    /// Opens this worker's share; every worker calls it with the same `workers`.
    fn open(&self, ctx: &SourceContext) -> Result<Box<dyn SourceReader>, SourceError>;
    /// Called once after the run delivered everything it read (`stopped`: it was asked to stop
    /// before its input ended), before the process may exit: write final checkpoints here.
    fn finish(&self, stopped: bool) {
        let _ = stopped;
    }
}

/// A finished object or request body, ready to store or send.
#[derive(Debug, Clone)]
pub struct Payload {
    /// Object key under the sink's location (object stores); ignored by request sinks.
    pub key: String,
    /// The bytes, already encoded and compressed.
    pub body: Bytes,
    /// MIME type of the decoded body.
    pub content_type: &'static str,
    /// `Content-Encoding`, when compressed.
    pub content_encoding: Option<&'static str>,
    /// Records in the body.
    pub records: u64,
}

/// Why a delivery failed. Callers match on the variant, never on the message.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum DeliveryError {
    /// May succeed if tried again (timeouts, connection errors, throttling, 5xx).
    #[error("retryable: {message}")]
    Retryable {
        /// Firehose-style code, e.g. `S3.InternalError`.
        code: String,
        /// What the destination said.
        message: String,
    },
    /// Will fail again the same way (bad credentials, missing bucket, other 4xx).
    #[error("permanent: {message}")]
    Permanent {
        /// Firehose-style code, e.g. `S3.AccessDenied`.
        code: String,
        /// What the destination said.
        message: String,
    },
    /// This payload can never be stored as it is, whatever the destination's state (an invalid
    /// object key): a data object goes to the error output at once; an error-output object that
    /// cannot be stored stops the run instead of blocking it forever.
    #[error("unstorable: {message}")]
    Unstorable {
        /// Firehose-style code, e.g. `S3.InvalidKey`.
        code: String,
        /// Why.
        message: String,
    },
}

impl DeliveryError {
    /// The Firehose-style code.
    pub fn code(&self) -> &str {
        match self {
            DeliveryError::Retryable { code, .. }
            | DeliveryError::Permanent { code, .. }
            | DeliveryError::Unstorable { code, .. } => code,
        }
    }

    /// Whether another attempt may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self, DeliveryError::Retryable { .. })
    }
}

/// A configured sink.
pub trait Sink: Send + Sync + 'static {
    /// One line for `sluice validate` and the run summary, e.g. `s3://bucket/prefix`.
    fn describe(&self) -> String;
    /// Where it delivers, for DescribeDeliveryStream (e.g. its URL); by default [`Sink::describe`].
    fn location(&self) -> String {
        self.describe()
    }
    /// The Firehose destination kind its metrics are named after (`DeliveryTo<kind>.Records`), e.g.
    /// `S3` or `HttpEndpoint`.
    fn destination_kind(&self) -> &'static str;
    /// Called once before the run (e.g. create a local folder); an error stops the run.
    fn prepare(&self) -> BoxFuture<'static, Result<(), DeliveryError>> {
        Box::pin(async { Ok(()) })
    }
    /// Stores one payload. Must be safe to call again with the same payload after an error.
    fn deliver(&self, payload: Payload) -> BoxFuture<'static, Result<(), DeliveryError>>;

    /// The format and compression this sink's payloads must have, when the sink fixes them (an HTTP
    /// endpoint sends Firehose's request JSON); `None` lets the pipeline's `format` and
    /// `compression` choose. When set, those keys are refused in the sink's table.
    fn request_format(&self) -> Option<(crate::encode::Format, crate::encode::Compression)> {
        None
    }

    /// Where this sink's error output goes (records it did not take, records that could not be
    /// converted, `backup = "all"`), when that is not the sink itself (an HTTP endpoint's backup
    /// bucket).
    fn error_output(&self) -> Option<Arc<dyn Sink>> {
        None
    }

    /// Whether this sink can take an object in parts while it grows ([`Sink::start_upload`]).
    fn supports_parts(&self) -> bool {
        false
    }

    /// Starts an upload of `key` in parts. Only called when [`Sink::supports_parts`] is true.
    fn start_upload(
        &self,
        key: &str,
        content_type: &'static str,
        content_encoding: Option<&'static str>,
    ) -> UploadStart {
        let _ = (key, content_type, content_encoding);
        Box::pin(async {
            Err(DeliveryError::Permanent { code: "NotSupported".into(), message: "no multipart uploads".into() })
        })
    }
}

/// A started upload in parts, or why it could not start.
pub type UploadStart = BoxFuture<'static, Result<Box<dyn PartUpload>, DeliveryError>>;

/// An object being uploaded in parts. Parts are numbered from 0 in the order they are sent; a part
/// may be sent again under the same number to retry it, where the store allows (see
/// [`PartUpload::retries_parts`]).
pub trait PartUpload: Send + Sync {
    /// Uploads part `index` (all but the last at least 5 MiB for S3).
    fn put_part(&self, index: usize, part: Bytes) -> BoxFuture<'static, Result<(), DeliveryError>>;
    /// Whether a failed part can be sent again under its number.
    fn retries_parts(&self) -> bool;
    /// Makes the object visible once every part is uploaded.
    fn complete(&self) -> BoxFuture<'static, Result<(), DeliveryError>>;
    /// Gives up, removing what was uploaded.
    fn abort(&self) -> BoxFuture<'static, Result<(), DeliveryError>>;
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

/// What a connector's `configure` gets: its own keys (engine-owned keys already taken out).
#[derive(Debug)]
pub struct ConnectorConfig {
    /// The pipeline (delivery stream) name.
    pub pipeline: String,
    /// `[pipeline] data_dir`: where the pipeline keeps its write-ahead log (default `data/<name>`).
    pub data_dir: std::path::PathBuf,
    /// `[pipeline] durability`.
    pub durability: Durability,
    /// `[pipeline] retention`.
    pub retention: Retention,
    /// The component's name, e.g. `logs` for `[sources.logs]`.
    pub name: String,
    /// Its remaining keys.
    pub table: Section,
    /// Folder of the pipeline file, for relative paths.
    pub base_dir: std::path::PathBuf,
}

/// A source `type`.
pub struct SourceType {
    /// The `type` value.
    pub name: &'static str,
    /// Builds the source from its keys.
    pub configure: fn(ConnectorConfig) -> Result<Arc<dyn Source>, Diagnostic>,
}

/// A sink `type`.
pub struct SinkType {
    /// The `type` value.
    pub name: &'static str,
    /// Builds the sink from its keys.
    pub configure: fn(ConnectorConfig) -> Result<Arc<dyn Sink>, Diagnostic>,
}

/// Every connector the binary knows, listed explicitly.
#[derive(Default)]
pub struct Registry {
    /// Source types.
    pub sources: Vec<SourceType>,
    /// Sink types.
    pub sinks: Vec<SinkType>,
}

impl Registry {
    /// The source type called `name`.
    pub fn source(&self, name: &str) -> Option<&SourceType> {
        self.sources.iter().find(|s| s.name == name)
    }

    /// The sink type called `name`.
    pub fn sink(&self, name: &str) -> Option<&SinkType> {
        self.sinks.iter().find(|s| s.name == name)
    }
}

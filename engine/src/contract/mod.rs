//! The connector contract: what a source, a transform and a sink are to the engine, and nothing else.
//!
//! A [`Source`] opens a [`SourceReader`] on each timely worker; a [`Transform`] opens a
//! [`TransformWorker`] on each worker (its contract is in `transform.rs`); a [`Sink`] stores finished
//! [`Payload`]s and answers delivered or a classified [`DeliveryError`]. Connectors never batch,
//! encode or compress: the engine buffers records, encodes them with the sink's
//! [`crate::format::ObjectFormat`] and compresses them. Optional capabilities are separate: a sink
//! that can take an object in parts while it grows offers a [`PartSink`]; a sink whose destination
//! takes its own body offers its [`Sink::wire_format`]; a source that serves through a listener the
//! process shares finds it in its [`PrepareContext`]; a sink that stores exactly once reads where
//! each record came from in [`Payload::origins`]. Adding a connector is one file, its `mod`
//! line and one registry line ([`crate::config::Registry`]), plus its tests, which run the
//! conformance testkit (ARCHITECTURE.md: Recipes).

mod errors;
mod origins;
mod transform;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;

pub use crate::destination::DestinationKind;
pub use crate::keys::KeyLimits;
pub use errors::{DeliveryError, RefusedRecord, SourceError};
pub use origins::{EntryRange, PayloadOrigins, RecordPosition};
pub use transform::{
    DataflowTransform, Emit, Holding, KeyQuery, KeyQueryError, KeyQueryWorker, PassThrough, Processor, RecordByRecord,
    RecordTransform, StageContext, Transform, TransformContext, TransformError, TransformFailure, TransformOutput,
    TransformWorker, put_key_value,
};

use crate::format::ObjectFormat;
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
    /// The workers of this process, `worker` among them (in a cluster each process has a
    /// contiguous range; they share the process's memory, so they can share work as it comes).
    pub local_workers: std::ops::Range<usize>,
}

impl SourceContext {
    /// The context of worker `worker` of `workers`, all in one process.
    pub fn single_process(worker: usize, workers: usize) -> Self {
        SourceContext { worker, workers, local_workers: 0..workers }
    }
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

/// A listener one process shares among its pipelines (`sluice serve`'s Firehose API). It is handed
/// to every source; a source that serves through such a listener registers with it instead of
/// binding its own address. The connector that defines the listener knows its type.
pub trait SharedListener: Send + Sync + 'static {
    /// The listener, for the connector that knows its type.
    fn as_any(&self) -> &(dyn std::any::Any + Send + Sync);
}

/// What a source gets before the run starts, to start what it serves (e.g. a listener).
#[derive(Clone)]
pub struct PrepareContext {
    /// The run's async runtime.
    pub runtime: tokio::runtime::Handle,
    /// The run's stop signal.
    pub stop: StopSignal,
    /// The run's counters.
    pub metrics: Arc<crate::metrics::PipelineMetrics>,
    /// The delivered frontier: every record read in an epoch below it is delivered (or counted as
    /// failed); `u64::MAX` once the run has delivered everything.
    pub delivered: Arc<std::sync::atomic::AtomicU64>,
    /// The listener the process shares among its pipelines, if any.
    pub shared: Option<Arc<dyn SharedListener>>,
    /// The source's own counters and gauges (besides the records and bytes the engine counts).
    pub meter: crate::metrics::SourceMeter,
}

impl std::fmt::Debug for PrepareContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PrepareContext").field("shared", &self.shared.is_some()).finish()
    }
}

/// A configured source.
pub trait Source: Send + Sync + 'static {
    /// One line for `sluice validate`, e.g. `file: 3 paths`.
    fn describe(&self) -> String;
    /// Whether the source ends by itself (batch) or runs until stopped (stream).
    fn is_finite(&self) -> bool;
    /// Opens this worker's share; every worker calls it with the same `workers`.
    fn open(&self, ctx: &SourceContext) -> Result<Box<dyn SourceReader>, SourceError>;
    /// Called once before the workers start (e.g. bind a listener); an error stops the run.
    fn prepare(&self, ctx: &PrepareContext) -> Result<(), SourceError> {
        let _ = ctx;
        Ok(())
    }
    /// Asks the service a source reads from (a stream) what its `prepare` asks, changing nothing,
    /// for `sluice validate --check`: credentials found and the input there; for a source that
    /// listens, whether its address can be taken. `None` (the default): nothing to ask (a source
    /// that reads local files or makes records).
    fn check(&self) -> Option<BoxFuture<'static, Result<(), SourceError>>> {
        None
    }
    /// Called once after the run delivered everything it read (`stopped`: it was asked to stop
    /// before its input ended), before the process may exit: write final checkpoints here.
    fn finish(&self, stopped: bool) {
        let _ = stopped;
    }
    /// For a source that splits a fixed input among the workers (files, objects): a hash of the
    /// input as this process found it at `prepare` (names and sizes). The processes of a cluster
    /// compare theirs before reading, so none splits a different list. `0` (the default): nothing
    /// to compare.
    fn input_fingerprint(&self) -> u64 {
        0
    }
    /// The largest record this source's records may be, in bytes, when it has such a limit (a
    /// listening source applies Firehose's record limit, 1,000 KiB). A record its reader yields
    /// over it is not delivered: the engine sends it, as read, to the error output of every sink
    /// it would have reached (`processing-failed`, errorCode `Source.RecordTooLarge`), says so in
    /// the error log and counts it (`SourceRecordsTooLarge`), so that a source takes what a
    /// producer sends whole rather than refusing or dropping records for their size. `None` (the
    /// default): no limit.
    fn max_record_bytes(&self) -> Option<usize> {
        None
    }
}

/// Prepares `sink`'s [`Sink::error_output`], then `sink`: what the engine does before a run.
pub async fn prepare_sink(sink: &Arc<dyn Sink>) -> Result<(), DeliveryError> {
    if let Some(error_output) = sink.error_output() {
        error_output.prepare().await?;
    }
    sink.prepare().await
}

/// Hands `sink`'s counters to its [`Sink::error_output`], then to `sink` ([`Sink::measure_with`]):
/// what an error output counts of its own (its store's refused TLS renewals) is the sink's.
pub fn measure_sink(sink: &Arc<dyn Sink>, meter: crate::metrics::SinkMeter) {
    if let Some(error_output) = sink.error_output() {
        error_output.measure_with(meter.clone());
    }
    sink.measure_with(meter);
}

/// Checks `sink`'s [`Sink::error_output`], then `sink` (`sluice validate --check`), changing nothing.
pub async fn check_sink(sink: &Arc<dyn Sink>) -> Result<(), DeliveryError> {
    if let Some(error_output) = sink.error_output() {
        error_output.check().await?;
    }
    sink.check().await
}

/// A stable 64-bit FNV-1a hash of `bytes` (the same in every process and build), for
/// [`Source::input_fingerprint`] and plan fingerprints.
pub fn fingerprint(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325_u64, |hash, &byte| (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3))
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
    /// Where its records came from, when some were read from a write-ahead log (a data object's
    /// records, in order; for sinks that store exactly once).
    pub origins: Option<Arc<PayloadOrigins>>,
}

/// A configured sink.
pub trait Sink: Send + Sync + 'static {
    /// One line for `sluice validate` and the run summary, e.g. `s3://bucket/prefix`.
    fn describe(&self) -> String;
    /// The Firehose destination kind it is (its metrics' names, the error-output type of what it
    /// does not take, how DescribeDeliveryStream shows it).
    fn destination(&self) -> DestinationKind;
    /// Stores one payload. Must be safe to call again with the same payload after an error.
    fn deliver(&self, payload: Payload) -> BoxFuture<'static, Result<(), DeliveryError>>;
    /// Where it delivers, for DescribeDeliveryStream (e.g. its URL); by default [`Sink::describe`].
    fn location(&self) -> String {
        self.describe()
    }
    /// The object keys its store can hold ([`KeyLimits`]): a partition whose key values would make
    /// a longer key goes to `partitioning-failed`, and a prefix that alone would is refused at
    /// validation. By default S3's; a store that keeps objects as files says so. A sink that
    /// stores no objects (a request sink) is asked for its error output's keys.
    fn key_limits(&self) -> KeyLimits {
        KeyLimits::OBJECT_STORE
    }
    /// The KMS key the destination encrypts what it stores with, when the sink names one (an S3
    /// sink's SSE-KMS `kms_key_id`), for DescribeDeliveryStream's `EncryptionConfiguration`.
    fn kms_key(&self) -> Option<String> {
        None
    }
    /// Called once before the run (e.g. create a local folder); an error stops the run. By default
    /// its [`Sink::check`]; a sink that also recovers or makes something runs its check too. The
    /// engine prepares the sink's [`Sink::error_output`] first, so a sink holding another need not
    /// forward it.
    fn prepare(&self) -> BoxFuture<'static, Result<(), DeliveryError>> {
        self.check()
    }
    /// Asks the destination whether it would take what is delivered, changing nothing: credentials
    /// found and taken, the bucket, table or index there, the certificate trusted (none of it with
    /// the sink's `healthcheck = false`, but what every delivery needs: credentials at all). An
    /// error says what would stop the run at start; a destination that does not answer is not one
    /// (a stream run starts without it) and is warned about. `sluice validate --check` calls it,
    /// for the sink's [`Sink::error_output`] too.
    fn check(&self) -> BoxFuture<'static, Result<(), DeliveryError>> {
        Box::pin(async { Ok(()) })
    }
    /// Called once after a run that stored everything it took (not after one stopped with
    /// deliveries still failing, whose state the next start needs), with nothing in flight: tidies
    /// what [`Sink::prepare`] made for the run alone (a `file://` store's empty staging folder).
    /// The engine calls it for each sink and for its [`Sink::error_output`], so a sink holding
    /// another need not forward it.
    fn finish(&self) -> BoxFuture<'static, ()> {
        Box::pin(async {})
    }
    /// Hands the sink its own counters before [`Sink::prepare`], for what it counts or times
    /// besides what the engine does (a warehouse sink's `CopyRows`, `CopyDuration`). The engine
    /// hands the same counters to its [`Sink::error_output`] ([`measure_sink`]), so a sink holding
    /// another need not forward them.
    fn measure_with(&self, meter: crate::metrics::SinkMeter) {
        let _ = meter;
    }
    /// The format its destination takes, when its type has a fixed body
    /// ([`crate::config::SinkType::fixed_body`]: an HTTP endpoint's request JSON); `None` for a
    /// type without one, whose objects the pipeline's `format` and `compression` encode.
    fn wire_format(&self) -> Option<Arc<dyn ObjectFormat>> {
        None
    }
    /// Where its error output goes (records it did not take, records that could not be converted,
    /// `backup = "all"`), when that is not the sink itself (an HTTP endpoint's backup bucket).
    fn error_output(&self) -> Option<Arc<dyn Sink>> {
        None
    }
    /// The sink's uploads in parts, when it can take an object in parts while it grows.
    fn parts(&self) -> Option<&dyn PartSink> {
        None
    }
    /// Called when delivery of the data payload `key` is given up (retry duration run out, or a
    /// permanent error), before its records go to the error output: a sink whose destination keeps
    /// its own record of what it skipped (Firehose's manifest of skipped objects for Redshift)
    /// writes it here. A failure is logged, not retried: the records are backed up either way.
    fn skipped(&self, key: &str, error: &DeliveryError) -> BoxFuture<'static, Result<(), DeliveryError>> {
        let _ = (key, error);
        Box::pin(async { Ok(()) })
    }
}

/// A destination's buffering default and longest interval (Splunk: 5 MB / 60 s, at most 60 s), in
/// its sink type's [`crate::config::FixedBody`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BufferingRules {
    /// `buffer` when the sink's table has none.
    pub default: crate::config::BufferingHints,
    /// The longest `interval_s` the destination allows.
    pub max_interval: Duration,
}

/// A sink's capability to take an object in parts while it grows.
pub trait PartSink: Send + Sync {
    /// Starts an upload of `key` in parts.
    fn start_upload(
        &self,
        key: &str,
        content_type: &'static str,
        content_encoding: Option<&'static str>,
    ) -> UploadStart;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::{PipelineMetrics, SinkMeter};

    /// A sink that counts one `Measured` when it is handed its counters, with an error output of
    /// its own kind.
    struct Counting(Option<Arc<dyn Sink>>);

    impl Sink for Counting {
        fn describe(&self) -> String {
            "counting".into()
        }
        fn destination(&self) -> DestinationKind {
            DestinationKind::HttpEndpoint
        }
        fn deliver(&self, _: Payload) -> BoxFuture<'static, Result<(), DeliveryError>> {
            Box::pin(async { Ok(()) })
        }
        fn measure_with(&self, meter: SinkMeter) {
            meter
                .count(crate::metrics::Family { name: "Measured", help: "Times the sink was handed its counters." }, 1);
        }
        fn error_output(&self) -> Option<Arc<dyn Sink>> {
            self.0.clone()
        }
    }

    /// What an error output counts of its own (its store's refused TLS renewals) is its sink's:
    /// both are handed the sink's counters.
    #[test]
    fn a_sink_and_its_error_output_are_handed_the_sinks_counters() {
        let metrics = Arc::new(PipelineMetrics::new(0, 1));
        let sink: Arc<dyn Sink> = Arc::new(Counting(Some(Arc::new(Counting(None)))));
        measure_sink(&sink, SinkMeter::new(Arc::clone(&metrics), 0, "counting"));
        assert_eq!(metrics.sinks[0].own_counts.lock().unwrap().get("Measured"), Some(&2));
    }
}

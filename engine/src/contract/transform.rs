//! The transform contract: what a transform is to the engine.
//!
//! A [`Transform`] is configured once and opens a [`TransformWorker`] on each timely worker, on that
//! worker's thread (so its state need not be `Send`: a jq filter compiled for one thread). The engine's
//! transform operator hands the worker record batches with the epoch they arrived at; the worker
//! answers with what they became — records on their way to the sinks, [`FailedRecords`] on their way
//! to the error output, or nothing (dropped, counted with [`TransformOutput::dropped`]) — now, or later
//! from [`TransformWorker::poll`] when its work is asynchronous (a Lambda function's invocations).
//!
//! A transform that answers each record at once implements the smaller [`RecordTransform`] and is
//! wrapped in [`RecordByRecord`]. Guarantees the engine builds on: every record handed to a worker is
//! answered exactly once (delivered, failed or dropped); a worker that keeps records across calls
//! says which epoch it still holds ([`Holding::oldest_epoch`]), and the operator holds that epoch's
//! capability until they are answered, so the delivered frontier never passes a record still in a
//! transform; a worker told `end_of_input` answers everything it holds (it may take several polls).

use std::sync::Arc;
use std::time::Instant;

use timely::dataflow::Stream;

use crate::error_output::ErrorOutputType;
use crate::metrics::{PipelineMetrics, TransformMetrics};
use crate::operators::{Epoch, ExchangeBudget, TransformRecords};
use crate::record::{FailedRecords, RecordBatch, RecordFailure, Records};

/// A configured transform.
pub trait Transform: Send + Sync + 'static {
    /// One line for `sluice validate` and the run summary, e.g. `jq: {time: .eventTime}`.
    fn describe(&self) -> String;
    /// The Firehose processors it is, for DescribeDeliveryStream's `ProcessingConfiguration`
    /// (none for a transform Firehose does not have).
    fn processors(&self) -> Vec<Processor> {
        Vec::new()
    }
    /// Opens this transform on one worker (called on the worker's thread).
    fn open(&self, context: &TransformContext) -> Result<Box<dyn TransformWorker>, TransformError>;
    /// Asks the service a transform calls (a function) what its start asks, changing nothing, for
    /// `sluice validate --check`: credentials found and the function there. `None` (the default):
    /// nothing to ask.
    fn check(&self) -> Option<futures::future::BoxFuture<'static, Result<(), TransformError>>> {
        None
    }
    /// The operators it builds itself, when its state spans workers (none: the engine runs
    /// [`Self::open`]'s workers in its transform operator).
    fn dataflow(&self) -> Option<&dyn DataflowTransform> {
        None
    }
}

/// A transform that builds its own operators over the record stream (see the module's notes).
pub trait DataflowTransform: Send + Sync + 'static {
    /// Builds this worker's operators between `records` and what goes on to the sinks.
    fn build<'scope>(
        &self,
        records: Stream<'scope, Epoch, Vec<Records>>,
        stage: &StageContext,
    ) -> Stream<'scope, Epoch, Vec<Records>>;
}

/// What a [`DataflowTransform`] is given to build with.
#[derive(Clone)]
pub struct StageContext {
    /// The transform's name in the pipeline.
    pub name: String,
    /// The transform itself (its worker part runs through [`Self::per_worker`]).
    pub transform: Arc<dyn Transform>,
    /// Its counters. [`Self::per_worker`] counts records in, out, dropped and failed there; the
    /// stage counts what its own operators drop, and keeps [`TransformMetrics::keys_held`].
    pub metrics: Arc<TransformMetrics>,
    /// The pipeline's metrics (`fatal`: a stage that cannot start stops the run).
    pub pipeline: Arc<PipelineMetrics>,
    /// The run's async runtime.
    pub runtime: tokio::runtime::Handle,
    /// The run's in-flight budget, with the workers of this process: a stage that sends records to
    /// other workers or holds them counts their bytes in it until they go on
    /// ([`ExchangeBudget::claim`]), so sources wait instead of piling records up behind it.
    pub budget: ExchangeBudget,
}

impl StageContext {
    /// Runs the transform's [`Transform::open`] workers over `records` in the engine's transform
    /// operator (capabilities held for what they hold; records counted).
    pub fn per_worker<'scope>(
        &self,
        records: Stream<'scope, Epoch, Vec<Records>>,
    ) -> Stream<'scope, Epoch, Vec<Records>> {
        records.transform(
            &self.name,
            Arc::clone(&self.transform),
            Arc::clone(&self.metrics),
            self.runtime.clone(),
            Arc::clone(&self.pipeline),
        )
    }

    /// Stops the run: the stage cannot start on this worker (`what` says why).
    pub fn fail(&self, what: impl std::fmt::Display) {
        tracing::error!(transform = %self.name, error = %what, "transform cannot start");
        let _ = self.pipeline.fatal.set(format!("transform `{}` cannot start: {what}", self.name));
    }
}

/// A worker part that passes every batch on as it is (a [`DataflowTransform`] whose work is all
/// in its own operators counts its records through it).
#[derive(Debug, Default)]
pub struct PassThrough;

impl TransformWorker for PassThrough {
    fn push(&mut self, batch: RecordBatch, epoch: u64, out: &mut TransformOutput) {
        out.give(epoch, Records::Deliver(batch));
    }
}

/// A Firehose processor (`Type` and `Parameters`, as DescribeDeliveryStream shows them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Processor {
    /// `Lambda`, `Decompression`, `CloudWatchLogProcessing`, …
    pub kind: &'static str,
    /// `ParameterName` → `ParameterValue`.
    pub parameters: Vec<(&'static str, String)>,
}

/// A transform could not start on a worker (the run stops: records cannot pass it), or its start-up
/// check failed.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct TransformError {
    /// The error code when the system the transform calls refused it (`Lambda.ResourceNotFound`),
    /// as the error log writes that system's errors.
    pub code: Option<String>,
    /// What went wrong.
    pub message: String,
}

impl TransformError {
    /// A failure of the transform itself (no code).
    pub fn new(message: impl Into<String>) -> Self {
        TransformError { code: None, message: message.into() }
    }

    /// The system the transform calls refused it, with that system's error `code`.
    pub fn refused(code: &str, message: impl Into<String>) -> Self {
        TransformError { code: Some(code.to_string()), message: message.into() }
    }
}

/// What a transform's worker is given.
#[derive(Clone)]
pub struct TransformContext {
    /// This worker's index, `0..workers`.
    pub worker: usize,
    /// How many workers run the transform.
    pub workers: usize,
    /// The run's async runtime, for I/O (a function's invocations).
    pub runtime: tokio::runtime::Handle,
    /// Wakes the transform operator from another thread (an invocation finished): it then polls.
    pub wake: Arc<dyn Fn() + Send + Sync>,
    /// The transform's counters (records in/out/dropped/failed are counted by the operator).
    pub metrics: Arc<TransformMetrics>,
}

impl std::fmt::Debug for TransformContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TransformContext").field("worker", &self.worker).field("workers", &self.workers).finish()
    }
}

/// What a worker still holds after a call.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Holding {
    /// The oldest epoch of a record it holds, if any.
    pub oldest_epoch: Option<u64>,
    /// When it wants to be polled again (a buffer's interval), if it does.
    pub next_deadline: Option<Instant>,
}

/// What a worker answered, in order, each at an epoch no later than its records arrived at.
#[derive(Debug, Default)]
pub struct TransformOutput {
    items: Vec<(u64, Records)>,
    dropped: u64,
}

impl TransformOutput {
    /// Sends `records` on at `epoch` (empty ones are skipped).
    pub fn give(&mut self, epoch: u64, records: Records) {
        if !records.is_empty() {
            self.items.push((epoch, records));
        }
    }

    /// Counts `n` records the transform dropped on purpose (a `select`, a function's `Dropped`).
    pub fn dropped(&mut self, n: u64) {
        self.dropped += n;
    }

    /// Takes what was answered, and the count of dropped records, leaving it empty.
    pub fn take(&mut self) -> (Vec<(u64, Records)>, u64) {
        (std::mem::take(&mut self.items), std::mem::take(&mut self.dropped))
    }
}

/// One worker's instance of a transform; it lives on that worker's thread.
pub trait TransformWorker {
    /// Transforms `batch`, which arrived at `epoch`; answers what it can now in `out`.
    fn push(&mut self, batch: RecordBatch, epoch: u64, out: &mut TransformOutput);

    /// Called at every activation after the input: answers finished work in `out` and says what it
    /// still holds. `end_of_input`: no more input will come; hold nothing longer than needed.
    fn poll(&mut self, now: Instant, end_of_input: bool, out: &mut TransformOutput) -> Holding {
        let _ = (now, end_of_input, out);
        Holding::default()
    }
}

/// Why one record could not be transformed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransformFailure {
    /// The error output it goes to: `processing-failed` or `decompression-failed`.
    pub output_type: ErrorOutputType,
    /// Machine-readable, e.g. `Jq.ProcessingFailed`.
    pub code: &'static str,
    /// What went wrong.
    pub message: String,
}

impl TransformFailure {
    /// A `processing-failed` failure.
    pub fn processing(code: &'static str, message: impl Into<String>) -> Self {
        TransformFailure { output_type: ErrorOutputType::ProcessingFailed, code, message: message.into() }
    }
}

/// Where a [`RecordTransform`] writes what one record became.
#[derive(Debug)]
pub struct Emit<'a> {
    batch: &'a mut RecordBatch,
}

impl<'a> Emit<'a> {
    /// Emits into `batch` (for a transform's own tests; the engine makes one per record).
    pub fn new(batch: &'a mut RecordBatch) -> Self {
        Emit { batch }
    }

    /// Emits one record.
    pub fn record(&mut self, bytes: &[u8]) {
        self.batch.push(bytes);
    }

    /// Emits one record written by `write` into the batch's buffer; nothing if `write` fails.
    pub fn record_with<E>(&mut self, write: impl FnOnce(&mut Vec<u8>) -> Result<(), E>) -> Result<(), E> {
        self.batch.push_with(write)
    }
}

/// A transform that answers each record at once: zero records (dropped), one, or many; or a failure,
/// in which case whatever it emitted for that record is discarded.
pub trait RecordTransform {
    /// Called with each batch before its records are transformed, which then happens one by one,
    /// in the batch's order: a transform may look ahead, e.g. start the lookups of every record of
    /// the batch together so that their memory accesses overlap. What it prepares is only a head
    /// start: `transform` gets each record as usual.
    fn begin_batch(&mut self, _batch: &RecordBatch) {}

    /// Transforms one record.
    fn transform(&mut self, record: &[u8], emit: &mut Emit<'_>) -> Result<(), TransformFailure>;

    /// Called after each batch (e.g. to add what it counted to the metrics).
    fn end_of_batch(&mut self) {}
}

/// A [`RecordTransform`] as a [`TransformWorker`]: each batch is answered at once, in one batch of
/// records to deliver and one batch of failed records per error output. What a record became
/// carries its [`crate::record::Origin`].
#[derive(Debug)]
pub struct RecordByRecord<T>(pub T);

impl<T: RecordTransform> TransformWorker for RecordByRecord<T> {
    fn push(&mut self, batch: RecordBatch, epoch: u64, out: &mut TransformOutput) {
        let mut delivered = RecordBatch::with_capacity(batch.arrival_ms, batch.byte_len());
        let mut failed: Vec<FailedRecords> = Vec::new();
        let mut dropped = 0;
        self.0.begin_batch(&batch);
        for (index, record) in batch.iter().enumerate() {
            let before = delivered.len();
            match self.0.transform(record, &mut Emit { batch: &mut delivered }) {
                Ok(()) if delivered.len() == before => dropped += 1,
                Ok(()) => delivered.set_origin_from(before, batch.origin(index)),
                Err(failure) => {
                    delivered.truncate(before);
                    let at = match failed.iter().position(|f| f.output_type == failure.output_type) {
                        Some(at) => at,
                        None => {
                            failed.push(FailedRecords::new(failure.output_type, batch.arrival_ms));
                            failed.len() - 1
                        }
                    };
                    failed[at].push(record, RecordFailure::local(failure.code, failure.message));
                }
            }
        }
        self.0.end_of_batch();
        out.dropped(dropped);
        out.give(epoch, Records::Deliver(delivered));
        for f in failed {
            out.give(epoch, Records::Failed(f));
        }
    }
}

/// A compiled query that gives a record's partition keys (a sink's `partitioning.query`): an object
/// whose values are strings, numbers or booleans. Compiled by the registry's
/// [`crate::config::Registry::key_query`] (jq, in the connectors).
pub trait KeyQuery: Send + Sync + 'static {
    /// The query as configured.
    fn describe(&self) -> String;
    /// The names every answer has, when the query shows them (an object built from paths).
    fn static_keys(&self) -> Option<Vec<String>>;
    /// The query for one worker (called on its thread), answering the keys named `wanted` (the
    /// prefix's `partitionKeyFromQuery` names), in that order.
    fn open(&self, wanted: &[String]) -> Result<Box<dyn KeyQueryWorker>, TransformError>;
}

/// One worker's [`KeyQuery`].
pub trait KeyQueryWorker {
    /// The values of the wanted keys for `record`, in the order they were asked for, into `values`
    /// (whose entries it replaces, reusing their buffers): strings as their characters (escapes
    /// decoded; UTF-8 not checked, which the caller does once per partition, not per record),
    /// numbers and booleans as their JSON text.
    fn values(&mut self, record: &[u8], values: &mut Vec<Vec<u8>>) -> Result<(), KeyQueryError>;
}

/// Puts `value` in `values[slot]`, reusing that entry's buffer (or appending it at the end): how
/// key values are filled in without an allocation per record.
pub fn put_key_value(values: &mut Vec<Vec<u8>>, slot: usize, value: &[u8]) {
    match values.get_mut(slot) {
        Some(buffer) => {
            buffer.clear();
            buffer.extend_from_slice(value);
        }
        None => values.push(value.to_vec()),
    }
}

/// Why a record has no partition keys from the query.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyQueryError {
    /// The query failed on the record, or gave something other than one object of strings,
    /// numbers and booleans.
    #[error("the partitioning query failed: {0}")]
    Failed(String),
    /// The query's object lacks a key the prefix uses.
    #[error("the partitioning query gave no key `{0}`")]
    MissingKey(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Emits each record twice, drops `drop`, fails `fail`.
    struct Twice;

    impl RecordTransform for Twice {
        fn transform(&mut self, record: &[u8], emit: &mut Emit<'_>) -> Result<(), TransformFailure> {
            match record {
                b"drop" => Ok(()),
                b"fail" => {
                    emit.record(b"half-made");
                    Err(TransformFailure::processing("Test.Failed", "asked to"))
                }
                _ => {
                    emit.record(record);
                    emit.record(record);
                    Ok(())
                }
            }
        }
    }

    #[test]
    fn what_a_record_became_carries_its_origin() {
        let mut batch = RecordBatch::with_capacity(1, 0);
        ["a", "drop", "fail", "b"].iter().for_each(|r| batch.push(r.as_bytes()));
        batch.set_log_entry(3, 8, 1);
        let mut out = TransformOutput::default();
        RecordByRecord(Twice).push(batch, 0, &mut out);
        let (items, dropped) = out.take();
        assert_eq!(dropped, 1);
        let Some((_, Records::Deliver(delivered))) = items.first() else { panic!("{items:?}") };
        let indices: Vec<Option<u32>> = (0..delivered.len()).map(|i| delivered.origin(i).map(|o| o.index)).collect();
        assert_eq!(indices, [Some(0), Some(0), Some(3), Some(3)]);
    }
}

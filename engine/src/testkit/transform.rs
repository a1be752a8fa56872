//! The conformance checks every transform runs, and [`run_transform`]: a transform run on one
//! worker, in sequence, outside the dataflow (the oracle a test compares the dataflow with).
//!
//! Checks ([`TransformCheck`]): every record handed over is answered once the input ends (nothing
//! still held); what comes out is at an epoch no later than its records went in, and the worker
//! holds the oldest epoch it keeps; failed records are records as they entered; the answer does not
//! depend on how the input is cut into batches; a one-to-one transform accounts for every record
//! (sent on, dropped or failed).

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::Report;
use crate::contract::{Transform, TransformContext, TransformOutput};
use crate::metrics::TransformMetrics;
use crate::record::{RecordBatch, Records};

/// What a transform's run answered: records sent on (in order), records failed (as they entered,
/// with their error code), and how many were dropped.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct TransformRun {
    /// Records sent on, in the order they came out.
    pub delivered: Vec<Vec<u8>>,
    /// Failed records: the record as it entered, its error-output type and code.
    pub failed: Vec<(Vec<u8>, &'static str, String)>,
    /// Records dropped on purpose.
    pub dropped: u64,
    /// The partition keys of each delivered record (`key=value` joined by `,`), when it has some.
    pub partition_keys: Vec<Option<String>>,
}

/// Runs `transform` on one worker over `batches` (batch `i` at epoch `i`), then ends the input and
/// polls until it holds nothing (or `timeout` passes: an error). A [`crate::contract::DataflowTransform`]
/// runs in a timely dataflow of its own instead ([`run_in_dataflow`]).
pub fn run_transform(
    transform: &Arc<dyn Transform>,
    batches: Vec<RecordBatch>,
    timeout: Duration,
) -> Result<TransformRun, String> {
    if transform.dataflow().is_some() {
        return run_in_dataflow(transform, batches, 1, timeout);
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let context = lone_worker(runtime.handle().clone(), Arc::new(TransformMetrics::default()));
    let mut worker = transform.open(&context).map_err(|e| e.to_string())?;
    let mut out = TransformOutput::default();
    let mut run = TransformRun::default();
    let mut answered: Vec<(u64, Records)> = Vec::new();
    let last_epoch = batches.len() as u64;
    for (epoch, batch) in batches.into_iter().enumerate() {
        worker.push(batch, epoch as u64, &mut out);
        let holding = worker.poll(Instant::now(), false, &mut out);
        let (items, dropped) = out.take();
        run.dropped += dropped;
        for (at, _) in &items {
            if *at > epoch as u64 {
                return Err(format!("records of epoch {epoch} came out at the later epoch {at}"));
            }
        }
        if let Some(oldest) = holding.oldest_epoch
            && oldest > epoch as u64
        {
            // It may hold only what it was given: the oldest epoch it holds is one it received.
            return Err(format!("holds epoch {oldest}, later than any it was given ({epoch})"));
        }
        answered.extend(items);
    }
    let started = Instant::now();
    loop {
        let holding = worker.poll(Instant::now(), true, &mut out);
        let (items, dropped) = out.take();
        run.dropped += dropped;
        if items.iter().any(|(at, _)| *at > last_epoch) {
            return Err("records came out at an epoch later than the input's".into());
        }
        answered.extend(items);
        if holding.oldest_epoch.is_none() {
            break;
        }
        if started.elapsed() > timeout {
            return Err(format!("still holds records of epoch {:?} after the input ended", holding.oldest_epoch));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    runtime.shutdown_timeout(Duration::from_secs(1));
    collect(answered, run)
}

/// The context of worker 0 of 1 (a transform opened by hand: tests, benchmarks): its async tasks
/// on `runtime`, nothing to wake, its counters in `metrics`.
pub fn lone_worker(runtime: tokio::runtime::Handle, metrics: Arc<TransformMetrics>) -> TransformContext {
    TransformContext { worker: 0, workers: 1, runtime, wake: Arc::new(|| {}), metrics }
}

/// What came out of a run, into `run`.
fn collect(answered: Vec<(u64, Records)>, mut run: TransformRun) -> Result<TransformRun, String> {
    for (_, records) in answered {
        match records {
            Records::Deliver(batch) => {
                for (i, record) in batch.iter().enumerate() {
                    run.delivered.push(record.to_vec());
                    run.partition_keys.push(
                        batch
                            .partition_keys(i)
                            .map(|keys| keys.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(",")),
                    );
                }
            }
            Records::Failed(failed) => {
                for (record, failure) in failed.records.iter().zip(&failed.failures) {
                    run.failed.push((record.to_vec(), failed.output_type.name(), failure.code.to_string()));
                }
            }
            Records::Backup(_) => return Err("a transform answered with source-record backups".into()),
        }
    }
    Ok(run)
}

/// Runs a transform that builds its own operators in a timely dataflow of `workers` workers:
/// `batches` enter on worker 0 (batch `i` at epoch `i`), the input closes, and the run ends when
/// everything came out (or `timeout` passes: an error). Records come out in epoch order; what
/// came out at an epoch later than the last input's is an error, and so are a transform that
/// cannot start and one that leaves bytes counted in the in-flight budget.
pub fn run_in_dataflow(
    transform: &Arc<dyn Transform>,
    batches: Vec<RecordBatch>,
    workers: usize,
    timeout: Duration,
) -> Result<TransformRun, String> {
    use timely::dataflow::InputHandle;
    use timely::dataflow::channels::pact::Pipeline;
    use timely::dataflow::operators::generic::Operator;

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let metrics = Arc::new(TransformMetrics::default());
    let pipeline = Arc::new(crate::metrics::PipelineMetrics::default());
    let answered: Arc<std::sync::Mutex<Vec<(u64, Records)>>> = Arc::default();
    let last_epoch = batches.len() as u64;
    let input_batches = std::sync::Mutex::new(Some(batches));
    let stage = crate::contract::StageContext {
        name: "kit".into(),
        transform: Arc::clone(transform),
        metrics: Arc::clone(&metrics),
        pipeline: Arc::clone(&pipeline),
        runtime: runtime.handle().clone(),
        budget: crate::operators::ExchangeBudget {
            inflight: crate::operators::InflightBudget::new(u64::MAX),
            local_workers: 0..workers.max(1),
        },
    };
    let budget = Arc::clone(&stage.budget.inflight);
    let out = Arc::clone(&answered);
    let started = Instant::now();
    let timed_out = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let gave_up = Arc::clone(&timed_out);
    let guards = timely::execute(timely::Config::process(workers.max(1)), move |worker| {
        let mut input = InputHandle::<u64, timely::container::CapacityContainerBuilder<Vec<Records>>>::new();
        let done = std::rc::Rc::new(std::cell::Cell::new(false));
        let finished = std::rc::Rc::clone(&done);
        let out = Arc::clone(&out);
        worker.dataflow::<u64, _, _>(|scope| {
            let records = input.to_stream(scope);
            let built = match stage.transform.dataflow() {
                Some(dataflow) => dataflow.build(records, &stage),
                None => stage.per_worker(records),
            };
            built.sink(Pipeline, "Collect", move |(input, frontier)| {
                input.for_each(|cap, data| {
                    let epoch = cap.least().copied().unwrap_or(u64::MAX);
                    if let Ok(mut out) = out.lock() {
                        out.extend(data.drain(..).map(|r| (epoch, r)));
                    }
                });
                finished.set(frontier.is_empty());
            });
        });
        if worker.index() == 0 {
            let batches = input_batches.lock().ok().and_then(|mut b| b.take()).unwrap_or_default();
            for (epoch, batch) in batches.into_iter().enumerate() {
                input.advance_to(epoch as u64);
                input.send(Records::Deliver(batch));
            }
        }
        input.close();
        while !done.get() {
            if started.elapsed() > timeout || stage.pipeline.fatal.get().is_some() {
                gave_up.store(true, std::sync::atomic::Ordering::SeqCst);
                for dataflow in worker.installed_dataflows() {
                    worker.drop_dataflow(dataflow);
                }
                return;
            }
            worker.step_or_park(Some(Duration::from_millis(10)));
        }
    })
    .map_err(|e| e.to_string())?;
    for result in guards.join() {
        result.map_err(|e| e.to_string())?;
    }
    runtime.shutdown_timeout(Duration::from_secs(1));
    if let Some(reason) = pipeline.fatal.get() {
        return Err(reason.clone());
    }
    if timed_out.load(std::sync::atomic::Ordering::SeqCst) {
        return Err(format!("still holds records {timeout:?} after the input ended"));
    }
    if budget.held() != 0 {
        return Err(format!("left {} bytes counted in the in-flight budget", budget.held()));
    }
    let mut answered = std::mem::take(&mut *answered.lock().map_err(|e| e.to_string())?);
    if answered.iter().any(|(at, _)| *at > last_epoch) {
        return Err("records came out at an epoch later than the input's".into());
    }
    answered.sort_by_key(|(epoch, _)| *epoch);
    let dropped = metrics.records_dropped.load(std::sync::atomic::Ordering::Relaxed);
    collect(answered, TransformRun { dropped, ..TransformRun::default() })
}

/// A conformance check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransformCheck {
    /// Everything is answered once the input ends; nothing comes out later than it went in.
    DrainsAndKeepsEpochs,
    /// Failed records are records of the input, as they entered.
    FailsRecordsAsTheyEntered,
    /// One batch or one batch per record: the same answer.
    IndependentOfBatching,
    /// Sent on + dropped + failed = records in (for a one-to-one transform).
    AccountsForEveryRecord,
}

/// Runs the checks on `transform` with `records` (which should include records it sends on, and
/// ones it fails or drops where it can). `one_to_one`: each record becomes at most one.
pub fn conformance(
    transform: &Arc<dyn Transform>,
    records: &[Vec<u8>],
    one_to_one: bool,
    timeout: Duration,
) -> Result<Report<TransformCheck>, String> {
    let mut report = Report::default();
    let batch_of = |records: &[Vec<u8>]| {
        let mut batch = RecordBatch::with_capacity(1_000, 0);
        records.iter().for_each(|r| batch.push(r));
        batch
    };
    let whole = run_transform(transform, vec![batch_of(records)], timeout)?;
    report.passed.push(TransformCheck::DrainsAndKeepsEpochs);
    if let Some((record, _, _)) = whole.failed.iter().find(|(r, _, _)| !records.contains(r)) {
        return Err(format!("failed record {:?} is not a record of the input", String::from_utf8_lossy(record)));
    }
    if whole.failed.is_empty() {
        report.skipped.push((TransformCheck::FailsRecordsAsTheyEntered, "no record failed".into()));
    } else {
        report.passed.push(TransformCheck::FailsRecordsAsTheyEntered);
    }
    let one_by_one =
        run_transform(transform, records.iter().map(|r| batch_of(std::slice::from_ref(r))).collect(), timeout)?;
    if (&one_by_one.delivered, &one_by_one.failed, one_by_one.dropped)
        != (&whole.delivered, &whole.failed, whole.dropped)
    {
        return Err("the answer depends on how the input is cut into batches".into());
    }
    report.passed.push(TransformCheck::IndependentOfBatching);
    if one_to_one {
        let accounted = whole.delivered.len() as u64 + whole.dropped + whole.failed.len() as u64;
        if accounted != records.len() as u64 {
            return Err(format!("{} records in, {accounted} accounted for", records.len()));
        }
        report.passed.push(TransformCheck::AccountsForEveryRecord);
    } else {
        report.skipped.push((TransformCheck::AccountsForEveryRecord, "a record may become several".into()));
    }
    Ok(report)
}

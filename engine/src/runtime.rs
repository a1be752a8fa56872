//! The runtime: compiles a [`Plan`] into a timely dataflow on every worker and runs it to the end.
//!
//! Each worker builds the same graph: every source's share → the transforms, each reading its
//! inputs concatenated → (concatenated per sink, with, for `backup = "all"`, a copy of every source
//! record the sink reads as it arrived) → `build_objects` → `deliver` → one probe. Deliveries run on a small tokio runtime beside the
//! workers. A batch run ends when the probe's frontier is empty (every record delivered or counted);
//! a stream run ends the same way after a [`StopSignal`] makes the sources finish. Guarantees: the
//! delivered output does not depend on the number of workers; a run never ends with data buffered.

use std::sync::Arc;
use std::time::{Duration, Instant};

use timely::dataflow::ProbeHandle;
use timely::dataflow::operators::vec::Map;
use timely::dataflow::operators::{Concatenate, Probe};

use crate::config::Plan;
use crate::config::{BackupMode, Input};
use crate::contract::{PrepareContext, SharedListener, SourceContext, StageContext, StopSignal};
use crate::metrics::PipelineMetrics;
use crate::operators::{
    BuildObjects, Deliver, DeliveryContext, DeliveryQueue, ExchangeBudget, InflightBudget, PartitionRecords,
    read_source,
};
use crate::record::Records;

/// How to run.
#[derive(Clone)]
pub struct RunOptions {
    /// Timely worker threads.
    pub workers: usize,
    /// Set to stop a stream run (or cut a batch run short).
    pub stop: StopSignal,
    /// Compressed bytes in flight to sinks before sources pause.
    pub max_inflight_bytes: u64,
    /// How long a stopped run waits for its deliveries (a destination may be down). Past it the
    /// run ends with what was not delivered left undelivered: not checkpointed, so sources that
    /// keep their input (API logs, file checkpoints) hand it over again at the next start.
    pub stop_grace: Duration,
    /// A listener the process shares among its pipelines (`sluice serve`), handed to every source.
    pub shared: Option<Arc<dyn SharedListener>>,
    /// `--log-format json`: the error log is written to stderr as JSON lines.
    pub json_error_log: bool,
    /// `--cluster`/`--process`: run as one process of a cluster (`workers` is then per process).
    pub cluster: Option<crate::cluster::Cluster>,
}

impl std::fmt::Debug for RunOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunOptions")
            .field("workers", &self.workers)
            .field("max_inflight_bytes", &self.max_inflight_bytes)
            .field("stop_grace", &self.stop_grace)
            .field("shared", &self.shared.is_some())
            .field("cluster", &self.cluster)
            .finish()
    }
}

impl RunOptions {
    /// `workers` from the plan, or one per core.
    pub fn for_plan(plan: &Plan) -> Self {
        RunOptions {
            workers: plan.workers.unwrap_or_else(default_workers),
            stop: StopSignal::default(),
            max_inflight_bytes: 256 << 20,
            stop_grace: plan.stop_timeout.unwrap_or_else(Self::default_stop_grace),
            shared: None,
            json_error_log: false,
            cluster: None,
        }
    }

    /// How long a stopped run waits for its deliveries unless told otherwise: 30 s.
    pub fn default_stop_grace() -> Duration {
        Duration::from_secs(30)
    }
}

/// One worker per core.
pub fn default_workers() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Why a run could not start or finish.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RunError {
    /// The async runtime could not start.
    #[error("cannot start the I/O runtime: {0}")]
    Runtime(std::io::Error),
    /// A sink's preparation failed (e.g. its folder cannot be created).
    #[error("sink `{sink}` is not usable: {error}")]
    Prepare {
        /// The sink.
        sink: String,
        /// Why.
        error: crate::contract::DeliveryError,
    },
    /// A source could not start (e.g. its listener address is taken).
    #[error("source `{name}` cannot start: {error}")]
    PrepareSource {
        /// The source.
        name: String,
        /// Why.
        error: crate::contract::SourceError,
    },
    /// Timely could not start or a worker failed.
    #[error("dataflow failed: {0}")]
    Dataflow(String),
    /// The cluster could not agree, or lost a process.
    #[error(transparent)]
    Cluster(#[from] crate::cluster::ClusterError),
    /// The audit trail or the error log could not start (its folder, its store).
    #[error("{0}")]
    Audit(String),
    /// Records can be stored nowhere (e.g. the error output's keys are invalid): the run stopped
    /// without releasing them, so logs and checkpoints keep them for the next start.
    #[error("the run had to stop: {0}")]
    Fatal(String),
}

/// What a finished run reports.
#[derive(Debug)]
pub struct RunReport {
    /// Wall time of the run.
    pub elapsed: Duration,
    /// Workers used.
    pub workers: usize,
    /// Stopped, the run did not deliver everything within [`RunOptions::stop_grace`]: what it
    /// read and did not deliver was left for the next start.
    pub abandoned: bool,
}

/// Runs `plan` to completion, counting into `metrics` (built with [`Plan::new_metrics`]):
/// [`prepare`], then
/// [`PreparedRun::run`].
pub fn run(plan: &Plan, options: &RunOptions, metrics: Arc<PipelineMetrics>) -> Result<RunReport, RunError> {
    prepare(plan, options, metrics)?.run()
}

/// A run whose sinks and sources are prepared (folders made, listeners bound or registered with
/// the shared one, logs recovered) and that has not read anything yet.
pub struct PreparedRun {
    started: Instant,
    runtime: tokio::runtime::Runtime,
    plan: Plan,
    options: RunOptions,
    metrics: Arc<PipelineMetrics>,
    delivered: Arc<std::sync::atomic::AtomicU64>,
}

impl std::fmt::Debug for PreparedRun {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PreparedRun").field("pipeline", &self.plan.name).finish()
    }
}

/// Prepares `plan`'s sinks, then its sources; nothing is read yet. A process that serves several
/// pipelines through one listener prepares them all (each registers its streams) before it opens
/// the listener, then runs them.
pub fn prepare(plan: &Plan, options: &RunOptions, metrics: Arc<PipelineMetrics>) -> Result<PreparedRun, RunError> {
    let started = Instant::now();
    if metrics.transforms.len() != plan.transforms.len() {
        return Err(RunError::Dataflow("the run's counters were not made for this plan (Plan::new_metrics)".into()));
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("sluice-io")
        .enable_all()
        .build()
        .map_err(RunError::Runtime)?;
    for (index, sink) in plan.sinks.iter().enumerate() {
        crate::contract::measure_sink(
            &sink.sink,
            crate::metrics::SinkMeter::new(Arc::clone(&metrics), index, &sink.name),
        );
        if let Some(counters) = metrics.sinks.get(index) {
            counters
                .buffer_interval_s
                .store(sink.settings.hints.interval.as_secs(), std::sync::atomic::Ordering::Relaxed);
            counters.buffer_size_bytes.store(sink.settings.hints.size_bytes, std::sync::atomic::Ordering::Relaxed);
            counters.format_converts.store(sink.settings.format.converts(), std::sync::atomic::Ordering::Relaxed);
            let partitioning = sink.settings.partitioning.as_ref();
            counters.partitioned.store(partitioning.is_some(), std::sync::atomic::Ordering::Relaxed);
            let by_query = partitioning.is_some_and(|p| p.query.is_some());
            counters.partitions_by_query.store(by_query, std::sync::atomic::Ordering::Relaxed);
        }
        runtime
            .block_on(crate::contract::prepare_sink(&sink.sink))
            .map_err(|error| RunError::Prepare { sink: sink.name.clone(), error })?;
    }
    if let Some(audit) = &plan.audit {
        if let crate::line_store::LineTarget::Store(sink) = &audit.target {
            runtime.block_on(sink.prepare()).map_err(|e| RunError::Audit(format!("audit_log is not usable: {e}")))?;
        }
        let trail = crate::audit::AuditTrail::start(&plan.name, audit.clone(), &plan.data_dir)
            .map_err(|e| RunError::Audit(e.to_string()))?;
        if let Err(trail) = metrics.audit.set(trail) {
            trail.close();
        }
    }
    // Always kept: without an output it still holds the last errors for the dashboard.
    {
        let store = match &plan.error_log {
            Some(lines @ crate::line_store::LinePlan { target: crate::line_store::LineTarget::Store(sink), .. }) => {
                runtime
                    .block_on(sink.prepare())
                    .map_err(|e| RunError::Audit(format!("error_log is not usable: {e}")))?;
                let store = crate::line_store::LineStore::start(&plan.name, "errors", lines.clone(), &plan.data_dir)
                    .map_err(|e| RunError::Audit(e.to_string()))?;
                Some(store)
            }
            _ => None,
        };
        // `error_log = "stderr"` and `--log-format json` write to stderr.
        let stderr = options.json_error_log || (plan.error_log.is_some() && store.is_none());
        let _ = metrics.errors.set(Arc::new(crate::error_log::ErrorLog::new(&plan.name, store, stderr)));
    }
    for (transform, counters) in plan.transforms.iter().zip(&metrics.transforms) {
        let _ = counters.owner.set((transform.name.clone(), Arc::downgrade(&metrics)));
    }
    let delivered = Arc::new(std::sync::atomic::AtomicU64::new(0));
    for (index, source) in plan.sources.iter().enumerate() {
        let prepare = PrepareContext {
            delivered: Arc::clone(&delivered),
            runtime: runtime.handle().clone(),
            stop: options.stop.clone(),
            metrics: Arc::clone(&metrics),
            shared: options.shared.clone(),
            meter: crate::metrics::SourceMeter::new(Arc::clone(&metrics), index, &source.name),
        };
        if let Err(error) = source.source.prepare(&prepare) {
            if let Some(log) = metrics.errors.get() {
                log.close();
            }
            if let Some(trail) = metrics.audit.get() {
                trail.close();
            }
            return Err(RunError::PrepareSource { name: source.name.clone(), error });
        }
    }
    Ok(PreparedRun { started, runtime, plan: plan.clone(), options: options.clone(), metrics, delivered })
}

impl PreparedRun {
    /// The pipeline.
    pub fn plan(&self) -> &Plan {
        &self.plan
    }

    /// Runs the pipeline to completion.
    pub fn run(self) -> Result<RunReport, RunError> {
        let PreparedRun { started, runtime, plan, options, metrics, delivered } = self;
        execute(started, runtime, plan, &options, metrics, delivered)
    }
}

fn execute(
    started: Instant,
    runtime: tokio::runtime::Runtime,
    plan: Plan,
    options: &RunOptions,
    metrics: Arc<PipelineMetrics>,
    delivered: Arc<std::sync::atomic::AtomicU64>,
) -> Result<RunReport, RunError> {
    let context = DeliveryContext {
        runtime: runtime.handle().clone(),
        budget: Arc::clone(metrics.inflight.get_or_init(|| InflightBudget::new(options.max_inflight_bytes))),
        metrics: Arc::clone(&metrics),
    };
    let sources: Vec<_> = plan.sources.iter().map(|s| Arc::clone(&s.source)).collect();
    let stop = options.stop.clone();
    let grace = options.stop_grace;
    let abandoned = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let gave_up = Arc::clone(&abandoned);
    let workers = options.workers.max(1);
    let cluster = options.cluster.clone();
    let (allocators, communication) = match &cluster {
        Some(c) => {
            crate::cluster::watch_peers(c);
            let _ = metrics.process.set(c.process);
            match c.allocators(workers, &stop) {
                Ok(built) => built,
                Err(e) => {
                    runtime.shutdown_timeout(Duration::from_secs(1));
                    return Err(RunError::Cluster(e));
                }
            }
        }
        None => timely::CommunicationConfig::Process(workers).try_build().map_err(RunError::Dataflow)?,
    };
    let disagreement: Arc<std::sync::OnceLock<crate::cluster::ClusterError>> = Arc::default();
    let disagreed = Arc::clone(&disagreement);
    // The plan, and the input each splitting source found: processes must agree on both.
    let inputs: Vec<u8> = plan.sources.iter().flat_map(|s| s.source.input_fingerprint().to_le_bytes()).collect();
    let fingerprint = plan.fingerprint() ^ crate::contract::fingerprint(&inputs).rotate_left(1);
    let process = cluster.as_ref().map_or(0, |c| c.process);
    let local = process * workers..(process + 1) * workers;
    // The workers share the plan; the run keeps it for the end (each sink's `finish`).
    let plan = Arc::new(plan);
    let kept = Arc::clone(&plan);
    let guards =
        timely::execute::execute_from(allocators, communication, timely::WorkerConfig::default(), move |worker| {
            if let Some(c) = &cluster
                && let Err(e) = crate::cluster::handshake(worker, (c.process, fingerprint, workers))
            {
                let _ = disagreed.set(e);
                return;
            }
            let probe = ProbeHandle::new();
            // Timely numbers workers process by process: this process's are one range.
            let ctx = SourceContext { worker: worker.index(), workers: worker.peers(), local_workers: local.clone() };
            let exchange = ExchangeBudget { inflight: Arc::clone(&context.budget), local_workers: local.clone() };
            let pipeline_done = std::rc::Rc::new(crate::cluster::RelayRelease::default());
            worker.dataflow::<u64, _, _>(|scope| {
                if cluster.is_some() {
                    crate::cluster::relay_stop(scope, stop.clone(), std::rc::Rc::clone(&pipeline_done));
                }
                let streams: Vec<_> = plan
                    .sources
                    .iter()
                    .enumerate()
                    .map(|(i, s)| match s.source.open(&ctx) {
                        Ok(reader) => Some(read_source(
                            scope,
                            s,
                            i,
                            reader,
                            Arc::clone(&context.metrics),
                            Arc::clone(&context.budget),
                            stop.clone(),
                        )),
                        Err(e) => {
                            tracing::error!(source = %s.name, error = %e, "source cannot start");
                            context.metrics.report_source_error(format!("source `{}`: {e}", s.name));
                            None
                        }
                    })
                    .collect();
                let mut transformed = Vec::with_capacity(plan.transforms.len());
                let stream_of = |input: Input, transformed: &Vec<Option<_>>| match input {
                    Input::Source(i) => streams[i].clone(),
                    Input::Transform(i) => transformed.get(i).cloned().flatten(),
                };
                for (t, transform) in plan.transforms.iter().enumerate() {
                    let inputs: Vec<_> = transform.inputs.iter().filter_map(|&i| stream_of(i, &transformed)).collect();
                    let stream = (!inputs.is_empty()).then(|| {
                        let stage = StageContext {
                            name: transform.name.clone(),
                            transform: Arc::clone(&transform.transform),
                            metrics: Arc::clone(&context.metrics.transforms[t]),
                            pipeline: Arc::clone(&context.metrics),
                            runtime: context.runtime.clone(),
                            budget: exchange.clone(),
                        };
                        let records = scope.concatenate(inputs);
                        match transform.transform.dataflow() {
                            Some(dataflow) => dataflow.build(records, &stage),
                            None => stage.per_worker(records),
                        }
                    });
                    transformed.push(stream);
                }
                for (j, sink) in plan.sinks.iter().enumerate() {
                    let mut inputs: Vec<_> = sink.inputs.iter().filter_map(|&i| stream_of(i, &transformed)).collect();
                    if sink.settings.backup == BackupMode::All {
                        // Every source record the sink reads, as it arrived (before any transform).
                        for source in plan.sources_upstream_of(&sink.inputs) {
                            if let Some(stream) = &streams[source] {
                                inputs.push(stream.clone().map(|records| match records {
                                    Records::Deliver(batch) => Records::Backup(batch),
                                    // A record the read operator set aside for its size is a
                                    // source record too: backed up here, it reaches the error
                                    // output by the sink's other input (not twice).
                                    Records::Failed(failed) => Records::Backup(failed.records),
                                    other => other,
                                }));
                            }
                        }
                    }
                    if inputs.is_empty() {
                        continue;
                    }
                    let mut stream = scope.concatenate(inputs);
                    if let Some(partitioning) = &sink.settings.partitioning {
                        stream = stream.partition(
                            sink,
                            j,
                            Arc::clone(partitioning),
                            Arc::clone(&context.metrics),
                            exchange.clone(),
                        );
                    }
                    let queue = std::rc::Rc::new(DeliveryQueue::default());
                    stream
                        .build_objects(
                            &sink.name,
                            j,
                            Arc::clone(&sink.settings),
                            sink.sink.parts().is_some(),
                            Arc::clone(&context.metrics),
                            std::rc::Rc::clone(&queue),
                        )
                        .deliver(&sink.name, j, Arc::clone(&sink.sink), Arc::clone(&sink.settings), &context, queue)
                        .probe_with(&probe);
                }
            });
            while !probe.done() {
                let out_of_time = stop.stopped_for().is_some_and(|d| d > grace);
                if context.metrics.fatal.get().is_some() || out_of_time {
                    // Leave what is undelivered held: the delivered frontier stays where it is. The
                    // dataflow is dropped, or timely would step it until it completes.
                    for dataflow in worker.installed_dataflows() {
                        worker.drop_dataflow(dataflow);
                    }
                    if out_of_time {
                        gave_up.store(true, std::sync::atomic::Ordering::SeqCst);
                    }
                    return;
                }
                worker.step_or_park(Some(Duration::from_millis(50)));
                // The frontier is the cluster's: each process's first worker publishes it for the
                // process's logs and checkpoints.
                if worker.index() % workers == 0 {
                    let frontier = probe.with_frontier(|f| f.first().copied().unwrap_or(u64::MAX));
                    delivered.store(frontier, std::sync::atomic::Ordering::SeqCst);
                }
            }
            pipeline_done.release();
            delivered.store(u64::MAX, std::sync::atomic::Ordering::SeqCst);
        })
        .map_err(RunError::Dataflow)?;
    // A lost peer makes timely's communication threads panic, and joining them (when the guards
    // are dropped) panics again: caught here, and reported as the lost peer below.
    let joined = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| guards.join()));
    let joined: Result<Vec<()>, String> = match joined {
        Ok(results) => results.into_iter().collect(),
        Err(_) => Err("the dataflow's communication threads failed".into()),
    };
    if let Err(e) = joined {
        runtime.shutdown_timeout(Duration::from_secs(1));
        return Err(crate::cluster::lost_peer().map_or(RunError::Dataflow(e), RunError::Cluster));
    }
    if let Some(e) = disagreement.get() {
        runtime.shutdown_timeout(Duration::from_secs(1));
        return Err(RunError::Cluster(e.clone()));
    }
    // Every line recorded so far is stored before the run ends (requests were answered: the
    // listeners stopped before the dataflow could finish).
    let close_audit = || {
        if let Some(log) = metrics.errors.get() {
            log.close();
        }
        if let Some(trail) = metrics.audit.get() {
            trail.close();
        }
    };
    if let Some(reason) = metrics.fatal.get() {
        // No final checkpoint: what was not delivered is read again at the next start.
        close_audit();
        runtime.shutdown_timeout(Duration::from_secs(1));
        return Err(RunError::Fatal(reason.clone()));
    }
    if abandoned.load(std::sync::atomic::Ordering::SeqCst) {
        tracing::error!(
            grace_s = grace.as_secs(),
            "stopped with deliveries still failing; what was not delivered is left for the next start"
        );
        close_audit();
        runtime.shutdown_timeout(Duration::from_secs(1));
        return Ok(RunReport { elapsed: started.elapsed(), workers, abandoned: true });
    }
    let stopped = options.stop.is_stopped();
    for source in &sources {
        source.finish(stopped);
    }
    close_audit();
    // Everything is stored: what the sinks made for this run alone goes (an empty staging folder).
    for sink in kept.sinks.iter().flat_map(|s| [Some(Arc::clone(&s.sink)), s.sink.error_output()]).flatten() {
        runtime.block_on(sink.finish());
    }
    for target in [kept.audit.as_ref().map(|a| &a.target), kept.error_log.as_ref().map(|l| &l.target)] {
        if let Some(crate::line_store::LineTarget::Store(lines)) = target {
            runtime.block_on(lines.finish());
        }
    }
    runtime.shutdown_timeout(Duration::from_secs(5));
    Ok(RunReport { elapsed: started.elapsed(), workers, abandoned: false })
}

//! Run counters: what came in, what each sink delivered, what went to the error output, and what
//! could not be delivered; for API sources, Firehose's ingest counters. Shared by every worker
//! (atomics), read by the progress bar, the summary and the Prometheus endpoint.
//!
//! Guarantees: every record a source produced is counted once in `records_in`, and for each sink
//! that reads it exactly once in `delivered`, `failed` (error output) or `undelivered`, once the run
//! has ended. [`PipelineMetrics::render_prometheus`] names families after docs/firehose.md §8
//! (`IncomingBytes`, `DeliveryToS3.Records`, … with `.` as `_`), labelled by stream and destination,
//! each family with its `# HELP` (the engine's in one table, a connector's in its [`Family`]).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A connector's own metric family: its name (served as `sluice_<name>`) and what it counts, the
/// `# HELP` line of `/metrics`. Families are told apart by name alone (a map of them is looked up
/// by name).
#[derive(Debug, Clone, Copy)]
pub struct Family {
    /// The name after `sluice_`, Firehose's where Firehose has the metric (`.` written `_`).
    pub name: &'static str,
    /// What it counts, one line.
    pub help: &'static str,
}

impl PartialEq for Family {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name
    }
}

impl Eq for Family {}

impl PartialOrd for Family {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Family {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.name.cmp(other.name)
    }
}

impl std::borrow::Borrow<str> for Family {
    fn borrow(&self) -> &str {
        self.name
    }
}

/// Counters of one source.
#[derive(Debug, Default)]
pub struct SourceMetrics {
    /// Records read.
    pub records: AtomicU64,
    /// Bytes read (record bytes).
    pub bytes: AtomicU64,
    /// Counters the source keeps besides these (a Kinesis source's `ThrottledGetRecords`), by family.
    pub own_counts: Mutex<BTreeMap<Family, u64>>,
    /// Gauges the source keeps (a Kinesis source's `KinesisMillisBehindLatest`), by family.
    pub own_gauges: Mutex<BTreeMap<Family, u64>>,
}

impl SourceMetrics {
    /// Adds `n` to the source's own counter `family`.
    pub fn count(&self, family: Family, n: u64) {
        add_to(&self.own_counts, family, n);
    }
}

/// Adds `n` to the counter `family` of a connector's own counters.
fn add_to(counts: &Mutex<BTreeMap<Family, u64>>, family: Family, n: u64) {
    if let Ok(mut counts) = counts.lock() {
        *counts.entry(family).or_default() += n;
    }
}

/// A source's handle on its own counters and gauges, rendered as `sluice_<family>` with the
/// stream's label (counters summed over the stream's sources, gauges their largest), as Firehose
/// counts per stream, and on the error log under its name.
#[derive(Debug, Clone)]
pub struct SourceMeter {
    metrics: Arc<PipelineMetrics>,
    index: usize,
    name: String,
}

impl SourceMeter {
    /// The meter of source number `index` of `metrics`, named `name` (its table's name).
    pub fn new(metrics: Arc<PipelineMetrics>, index: usize, name: &str) -> Self {
        SourceMeter { metrics, index, name: name.to_string() }
    }

    /// Writes `message` to the pipeline's error log as the source's, under `error_code`.
    pub fn report(&self, level: crate::error_log::Level, error_code: &str, message: &str) {
        report_as(&self.metrics, &self.name, level, error_code, message);
    }

    /// Sets when the client certificate the source presents ends (Unix seconds).
    pub fn set_client_certificate_expiry(&self, expiry_s: u64) {
        self.metrics.set_client_certificate_expiry("source", &self.name, expiry_s);
    }

    /// Adds `n` to the counter `family`.
    pub fn count(&self, family: Family, n: u64) {
        if let Some(source) = self.metrics.sources.get(self.index) {
            source.count(family, n);
        }
    }

    /// Sets the gauge `family` to `value`.
    pub fn set(&self, family: Family, value: u64) {
        if let Some(source) = self.metrics.sources.get(self.index)
            && let Ok(mut gauges) = source.own_gauges.lock()
        {
            gauges.insert(family, value);
        }
    }
}

/// Counters of one sink.
#[derive(Debug, Default)]
pub struct SinkMetrics {
    /// `buffer.interval_s` (the `BufferInterval_seconds` gauge alert rules compare freshness with).
    pub buffer_interval_s: AtomicU64,
    /// `buffer.size_mb` in bytes (the `BufferSize_bytes` gauge the dashboard fills a bar against).
    pub buffer_size_bytes: AtomicU64,
    /// What each worker's buffer operator holds in open objects: (bytes, arrival time in ms of
    /// the oldest record), for `BufferedBytes` and `BufferOldestRecordAge_seconds`.
    pub buffered: Mutex<Vec<(u64, Option<i64>)>>,
    /// Records stored in data objects.
    pub records_delivered: AtomicU64,
    /// Their bytes before compression.
    pub bytes_delivered: AtomicU64,
    /// Bytes stored (after compression).
    pub bytes_stored: AtomicU64,
    /// Data objects stored.
    pub objects: AtomicU64,
    /// Parts uploaded while objects grew (objects uploaded in parts).
    pub parts: AtomicU64,
    /// Records sent to the error output (and stored there).
    pub records_failed: AtomicU64,
    /// Whether its format converts records (Parquet): Firehose's conversion families are shown.
    pub format_converts: std::sync::atomic::AtomicBool,
    /// Records converted and their bytes (`SucceedConversion.Records`, `.Bytes`), counted as they
    /// are converted.
    pub converted_records: AtomicU64,
    /// Their bytes as they arrived.
    pub converted_bytes: AtomicU64,
    /// Records that could not be converted (`FailedConversion.Records`), counted when refused.
    pub conversion_failed_records: AtomicU64,
    /// Their bytes as they arrived (`FailedConversion.Bytes`).
    pub conversion_failed_bytes: AtomicU64,
    /// Error-output objects stored.
    pub error_objects: AtomicU64,
    /// Records that reached neither the destination nor the error output.
    pub records_undelivered: AtomicU64,
    /// Source records stored in the error output with `backup = "all"` (`BackupToS3.Records`).
    pub records_source_backup: AtomicU64,
    /// Failed attempts to store error-output objects (each one blocks delivery until it succeeds).
    pub error_output_failures: AtomicU64,
    /// Failure reasons with counts: error-output type or delivery error code → records.
    pub reasons: Mutex<BTreeMap<String, u64>>,
    /// Keys of the first error-output objects, for the summary.
    pub error_keys: Mutex<Vec<String>>,
    /// Last delivery error seen, for the summary.
    pub last_error: Mutex<Option<String>>,
    /// Delivery attempts (puts, part uploads count as one object) and objects stored, for
    /// `DeliveryTo<Dest>.Success` (stored ÷ attempted).
    pub attempts: AtomicU64,
    /// Objects (data or error output) stored.
    pub stored: AtomicU64,
    /// Attempts that failed, counted when they fail (whether retried or not), so a live success
    /// ratio (stored ÷ (stored + failed attempts) over a window) shows an outage at once.
    pub failed_attempts: AtomicU64,
    /// Failed attempts that were tried again (`Retries`).
    pub retries: AtomicU64,
    /// Arrival times of the oldest record each stage still holds, for `DataFreshness`.
    pub pending: OldestPending,
    /// Open partitions per worker (dynamic partitioning), for `PartitionCount`.
    pub open_partitions: Mutex<Vec<u64>>,
    /// Partitions sealed before their size or interval to keep within `max_open_mb`.
    pub partitions_sealed_early: AtomicU64,
    /// Records sent to `partitioning-failed` by the partition operator.
    pub partitioning_failed: AtomicU64,
    /// Whether it partitions records (dynamic partitioning, by a query or a function's keys): the
    /// dashboard shows its partitions.
    pub partitioned: std::sync::atomic::AtomicBool,
    /// Whether it partitions by a `partitioning.query`: `JQProcessing.Duration` is shown.
    pub partitions_by_query: std::sync::atomic::AtomicBool,
    /// How long finding the key values of one batch of records took, its query's evaluations
    /// included (Firehose's `JQProcessing.Duration`, there per batch of records too).
    pub jq_processing: LatencyHistogram,
    /// Records buffered per partition, for the run summary.
    pub partition_records: Mutex<PartitionTally>,
    /// What the sink counts itself, by family (`CopyRows`), through a [`SinkMeter`].
    pub own_counts: Mutex<BTreeMap<Family, u64>>,
    /// What the sink times itself, by family (`CopyDuration`), through a [`SinkMeter`].
    pub own_durations: Mutex<BTreeMap<Family, Arc<LatencyHistogram>>>,
}

/// A sink's handle on its own counters: what it counts and times besides what the engine does
/// (a warehouse sink's rows copied and COPY durations), rendered as `sluice_<family>` and
/// `sluice_<family>_seconds` with the sink's labels, and on the error log under its name.
#[derive(Debug, Clone)]
pub struct SinkMeter {
    metrics: Arc<PipelineMetrics>,
    index: usize,
    name: String,
}

/// One line of `metrics`' error log, of the connector `name`.
fn report_as(metrics: &PipelineMetrics, name: &str, level: crate::error_log::Level, error_code: &str, message: &str) {
    metrics.report_error(crate::error_log::ErrorEvent {
        level,
        component: name,
        error_code,
        message,
        attempts: None,
        key: None,
    });
}

impl SinkMeter {
    /// The meter of sink number `index` of `metrics`, named `name` (its table's name).
    pub fn new(metrics: Arc<PipelineMetrics>, index: usize, name: &str) -> Self {
        SinkMeter { metrics, index, name: name.to_string() }
    }

    /// Writes `message` to the pipeline's error log as the sink's, under `error_code`.
    pub fn report(&self, level: crate::error_log::Level, error_code: &str, message: &str) {
        report_as(&self.metrics, &self.name, level, error_code, message);
    }

    /// Sets when the client certificate the sink presents ends (Unix seconds).
    pub fn set_client_certificate_expiry(&self, expiry_s: u64) {
        self.metrics.set_client_certificate_expiry("destination", &self.name, expiry_s);
    }

    /// Adds `n` to `family`.
    pub fn count(&self, family: Family, n: u64) {
        if let Some(sink) = self.metrics.sinks.get(self.index) {
            add_to(&sink.own_counts, family, n);
        }
    }

    /// Observes one `duration` of `family`.
    pub fn observe(&self, family: Family, duration: Duration) {
        if let Some(sink) = self.metrics.sinks.get(self.index)
            && let Ok(mut durations) = sink.own_durations.lock()
        {
            durations.entry(family).or_default().observe(duration);
        }
    }
}

/// Records written per partition, for the run summary: how many partitions there were and the
/// largest three. It keeps 16 bytes per partition (a 64-bit hash of its key values and a count)
/// and the names of the largest only, so a run with millions of partitions does not keep their
/// names. And the bytes each partition took in the current window of [`THROUGHPUT_WINDOW`], for
/// Firehose's `PerPartitionThroughput`: the bytes per second of the busiest partition over the
/// last complete window (16 bytes per partition written in the window).
#[derive(Debug)]
pub struct PartitionTally {
    counts: rustc_hash::FxHashMap<u64, u64>,
    /// (records, key values joined by `/`, hash), most records first.
    largest: Vec<(u64, String, u64)>,
    /// Bytes per partition since `window_started`.
    window: rustc_hash::FxHashMap<u64, u64>,
    window_started: Instant,
    /// The busiest partition's bytes per second over the last complete window.
    busiest: u64,
}

/// The window `PerPartitionThroughput` is measured over.
pub const THROUGHPUT_WINDOW: Duration = Duration::from_secs(10);

impl Default for PartitionTally {
    fn default() -> Self {
        PartitionTally {
            counts: Default::default(),
            largest: Vec::new(),
            window: Default::default(),
            window_started: Instant::now(),
            busiest: 0,
        }
    }
}

impl PartitionTally {
    /// Adds `records` of `bytes` to the partition with key `values`.
    pub fn add(&mut self, values: &[(String, String)], records: u64, bytes: u64) {
        self.add_at(values, records, bytes, Instant::now());
    }

    /// [`Self::add`] at `now`.
    pub fn add_at(&mut self, values: &[(String, String)], records: u64, bytes: u64, now: Instant) {
        use std::hash::{Hash, Hasher};
        let mut hasher = rustc_hash::FxHasher::default();
        values.hash(&mut hasher);
        let hash = hasher.finish();
        self.roll(now);
        *self.window.entry(hash).or_default() += bytes;
        let count = self.counts.entry(hash).or_default();
        *count += records;
        let count = *count;
        if let Some(known) = self.largest.iter_mut().find(|(_, _, h)| *h == hash) {
            known.0 = count;
        } else if self.largest.len() < 3 || self.largest.last().is_some_and(|(n, _, _)| *n < count) {
            let name: Vec<&str> = values.iter().map(|(_, v)| v.as_str()).collect();
            self.largest.push((count, name.join("/"), hash));
        }
        self.largest.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(&b.1)));
        self.largest.truncate(3);
    }

    /// Ends the current window when it has lasted [`THROUGHPUT_WINDOW`]: its busiest partition's
    /// bytes per second become [`Self::busiest_throughput`] (none written: 0).
    fn roll(&mut self, now: Instant) {
        let lasted = now.saturating_duration_since(self.window_started);
        if lasted < THROUGHPUT_WINDOW {
            return;
        }
        let most = self.window.values().copied().max().unwrap_or(0);
        // A window with nothing in its second half counts as idle since: its rate over all it lasted.
        self.busiest = (most as f64 / lasted.as_secs_f64()) as u64;
        self.window.clear();
        self.window_started = now;
    }

    /// The bytes per second of the busiest partition over the last complete window of
    /// [`THROUGHPUT_WINDOW`] (Firehose's `PerPartitionThroughput`, its maximum over partitions).
    pub fn busiest_throughput(&mut self, now: Instant) -> u64 {
        self.roll(now);
        self.busiest
    }

    /// Partitions written to.
    pub fn partitions(&self) -> usize {
        self.counts.len()
    }

    /// The largest partitions: their key values joined by `/` and their records, most first.
    pub fn largest(&self) -> impl Iterator<Item = (&str, u64)> {
        self.largest.iter().map(|(n, name, _)| (name.as_str(), *n))
    }
}

/// Counters of one transform.
#[derive(Debug, Default)]
pub struct TransformMetrics {
    /// Records handed to it.
    pub records_in: AtomicU64,
    /// Records it sent on (a query may make several of one, or none).
    pub records_out: AtomicU64,
    /// Records it dropped on purpose (`select`, `empty`, a function's `Dropped`, control messages).
    pub records_dropped: AtomicU64,
    /// Records it failed (to the error output).
    pub records_failed: AtomicU64,
    /// Counts by family, label name and label value, e.g. (`RedactedValues`, `detector`, `ssn`).
    pub labelled: Mutex<BTreeMap<(Family, &'static str, String), u64>>,
    /// Invocations of a function (`lambda`), started.
    pub invocations: AtomicU64,
    /// Invocations answered with a well-formed response (Firehose's `ExecuteProcessing.Success`
    /// is this over `invocations`).
    pub invocations_succeeded: AtomicU64,
    /// How long invocations took, retries included (`ExecuteProcessing.Duration`).
    pub invocation_duration: LatencyHistogram,
    /// Records a function answered `Ok` (Firehose's `SucceedProcessing.Records`).
    pub processed_records: AtomicU64,
    /// The bytes it returned for them (`SucceedProcessing.Bytes`).
    pub processed_bytes: AtomicU64,
    /// Entries of state it holds across workers (a table's rows, a dedup window's keys), as a
    /// gauge `TransformKeysHeld`; each worker adds and subtracts its own.
    pub keys_held: std::sync::atomic::AtomicI64,
    /// The transform's name and its pipeline's counters (for the audit trail and the error log).
    pub owner: std::sync::OnceLock<(String, std::sync::Weak<PipelineMetrics>)>,
}

impl TransformMetrics {
    /// Counts records the transform failed (to the error output) and records the failure in
    /// the audit trail: one line per error code, with how many records and attempts.
    pub fn count_failed(&self, failed: &crate::record::FailedRecords) {
        let n = failed.records.len() as u64;
        if n == 0 {
            return;
        }
        self.records_failed.fetch_add(n, Relaxed);
        let Some((name, pipeline)) = self.owner.get() else { return };
        let Some(pipeline) = pipeline.upgrade() else { return };
        let mut by_code: BTreeMap<&str, (u64, u32)> = BTreeMap::new();
        for failure in &failed.failures {
            let entry = by_code.entry(&failure.code).or_insert((0, 0));
            entry.0 += 1;
            entry.1 = entry.1.max(failure.attempts);
        }
        // The code only, in the audit trail and the error log alike: a failure's message may quote
        // the record (a jq error does), and records stay out of logs; each error document says why.
        let message = format!("records went to the error output ({})", failed.output_type.name());
        for (code, (records, attempts)) in by_code {
            pipeline.report_error(crate::error_log::ErrorEvent {
                level: crate::error_log::Level::Error,
                component: name,
                error_code: code,
                message: &format!(
                    "{records} records to the error output ({}); each error document says why",
                    failed.output_type.name()
                ),
                attempts: Some(attempts),
                key: None,
            });
            let Some(trail) = pipeline.audit.get() else { continue };
            let details = serde_json::json!({
                "transform": name,
                "records": records,
                "attempts": attempts,
                "errorOutputType": failed.output_type.name(),
            });
            let event = crate::audit::AuditEvent::service_event("TransformRecords", trail.region(), details);
            trail.record(&event.error(code, &message));
        }
    }
}

impl TransformMetrics {
    /// Writes `message` to its pipeline's error log as the transform's, under `error_code` (once
    /// the run has named it; nothing before).
    pub fn report(&self, level: crate::error_log::Level, error_code: &str, message: &str) {
        if let Some((name, pipeline)) = self.owner.get()
            && let Some(pipeline) = pipeline.upgrade()
        {
            report_as(&pipeline, name, level, error_code, message);
        }
    }

    /// Sets when the client certificate the transform presents ends (Unix seconds; once the run
    /// has named it, nothing before).
    pub fn set_client_certificate_expiry(&self, expiry_s: u64) {
        if let Some((name, pipeline)) = self.owner.get()
            && let Some(pipeline) = pipeline.upgrade()
        {
            pipeline.set_client_certificate_expiry("transform", name, expiry_s);
        }
    }

    /// Adds `n` to `family{label=value}`.
    pub fn count(&self, family: Family, label: &'static str, value: &str, n: u64) {
        if let Ok(mut labelled) = self.labelled.lock() {
            *labelled.entry((family, label, value.to_string())).or_default() += n;
        }
    }
}

/// A transform as the Prometheus endpoint labels it.
#[derive(Debug, Clone)]
pub struct TransformLabel {
    /// The transform's name in the pipeline.
    pub name: String,
    /// Its `type`.
    pub type_name: String,
}

/// The oldest arrival time held by each stage of each worker (open objects, deliveries in flight).
#[derive(Debug, Default)]
pub struct OldestPending(Mutex<Vec<i64>>);

impl OldestPending {
    /// Sets what stage `slot` holds: the arrival time (ms) of its oldest record, or nothing.
    pub fn set(&self, slot: usize, oldest_arrival_ms: Option<i64>) {
        if let Ok(mut slots) = self.0.lock() {
            if slots.len() <= slot {
                slots.resize(slot + 1, i64::MAX);
            }
            slots[slot] = oldest_arrival_ms.unwrap_or(i64::MAX);
        }
    }

    /// The oldest arrival time (ms) of any record not yet delivered, if any.
    pub fn oldest(&self) -> Option<i64> {
        let slots = self.0.lock().ok()?;
        slots.iter().copied().min().filter(|&t| t != i64::MAX)
    }
}

impl SinkMetrics {
    /// Sets what worker `worker`'s buffer operator holds: `bytes` in open objects, the oldest of
    /// their records having arrived at `oldest_arrival_ms`.
    pub fn set_buffered(&self, worker: usize, bytes: u64, oldest_arrival_ms: Option<i64>) {
        if let Ok(mut slots) = self.buffered.lock() {
            if slots.len() <= worker {
                slots.resize(worker + 1, (0, None));
            }
            slots[worker] = (bytes, oldest_arrival_ms);
        }
    }

    /// Bytes in open objects on every worker, and the arrival time of their oldest record.
    pub fn buffered(&self) -> (u64, Option<i64>) {
        self.buffered
            .lock()
            .map_or((0, None), |slots| (slots.iter().map(|s| s.0).sum(), slots.iter().filter_map(|s| s.1).min()))
    }

    /// Counts a failed delivery attempt; `retried` when it will be tried again.
    pub fn count_failed_attempt(&self, retried: bool) {
        self.failed_attempts.fetch_add(1, Relaxed);
        if retried {
            self.retries.fetch_add(1, Relaxed);
        }
    }

    /// Counts what a worker's buffer operator converted and did not (Firehose's conversion
    /// families).
    pub fn count_conversions(&self, c: crate::buffer::Conversions) {
        if c == crate::buffer::Conversions::default() {
            return;
        }
        self.converted_records.fetch_add(c.succeeded_records, Relaxed);
        self.converted_bytes.fetch_add(c.succeeded_bytes, Relaxed);
        self.conversion_failed_records.fetch_add(c.failed_records, Relaxed);
        self.conversion_failed_bytes.fetch_add(c.failed_bytes, Relaxed);
    }

    /// Sets how many partitions worker `worker` holds open.
    pub fn set_open_partitions(&self, worker: usize, open: u64) {
        if let Ok(mut slots) = self.open_partitions.lock() {
            if slots.len() <= worker {
                slots.resize(worker + 1, 0);
            }
            slots[worker] = open;
        }
    }

    /// Partitions open on every worker together (`PartitionCount`).
    pub fn open_partitions(&self) -> u64 {
        self.open_partitions.lock().map(|p| p.iter().sum()).unwrap_or(0)
    }

    /// Adds `n` records to a reason's count.
    pub fn count_reason(&self, reason: &str, n: u64) {
        if let Ok(mut reasons) = self.reasons.lock() {
            *reasons.entry(reason.to_string()).or_default() += n;
        }
    }
}

/// Upper bounds (seconds) of the latency histogram buckets.
pub const LATENCY_BUCKETS: [f64; 14] =
    [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// A latency histogram (Prometheus-style cumulative buckets are computed when rendered).
#[derive(Debug, Default)]
pub struct LatencyHistogram {
    buckets: [AtomicU64; LATENCY_BUCKETS.len() + 1],
    sum_micros: AtomicU64,
    count: AtomicU64,
}

impl LatencyHistogram {
    /// Counts one observation.
    pub fn observe(&self, latency: Duration) {
        let seconds = latency.as_secs_f64();
        let bucket = LATENCY_BUCKETS.iter().position(|&le| seconds <= le).unwrap_or(LATENCY_BUCKETS.len());
        self.buckets[bucket].fetch_add(1, Relaxed);
        self.sum_micros.fetch_add(latency.as_micros() as u64, Relaxed);
        self.count.fetch_add(1, Relaxed);
    }

    /// Observations so far.
    pub fn count(&self) -> u64 {
        self.count.load(Relaxed)
    }

    /// The mean observation in seconds (0 without any).
    pub fn mean_seconds(&self) -> f64 {
        self.sum_micros.load(Relaxed) as f64 / 1e6 / self.count().max(1) as f64
    }

    fn render(&self, text: &mut PrometheusText, family: &str, labels: &str) {
        let mut cumulative = 0;
        for (i, bucket) in self.buckets.iter().enumerate() {
            cumulative += bucket.load(Relaxed);
            let le = LATENCY_BUCKETS.get(i).map_or("+Inf".to_string(), |b| b.to_string());
            text.line(family, "histogram", &format!("{family}_bucket{{{labels},le=\"{le}\"}} {cumulative}"));
        }
        let sum = self.sum_micros.load(Relaxed) as f64 / 1e6;
        text.line(family, "histogram", &format!("{family}_sum{{{labels}}} {sum}"));
        text.line(family, "histogram", &format!("{family}_count{{{labels}}} {}", self.count()));
    }
}

/// Firehose's ingest counters (docs/firehose.md §8), for pipelines with an API source.
#[derive(Debug, Default)]
pub struct ApiMetrics {
    /// Bytes accepted (record data, after throttling).
    pub incoming_bytes: AtomicU64,
    /// Records accepted.
    pub incoming_records: AtomicU64,
    /// Put requests accepted (PutRecord and PutRecordBatch, after throttling).
    pub incoming_put_requests: AtomicU64,
    /// Records refused with ServiceUnavailableException because too much was in flight.
    pub throttled_records: AtomicU64,
    /// PutRecord requests (accepted or not), their bytes and latency.
    pub put_record_requests: AtomicU64,
    /// PutRecord bytes accepted.
    pub put_record_bytes: AtomicU64,
    /// PutRecord latency.
    pub put_record_latency: LatencyHistogram,
    /// PutRecordBatch requests (accepted or not).
    pub put_record_batch_requests: AtomicU64,
    /// PutRecordBatch records accepted.
    pub put_record_batch_records: AtomicU64,
    /// PutRecordBatch bytes accepted.
    pub put_record_batch_bytes: AtomicU64,
    /// PutRecordBatch latency.
    pub put_record_batch_latency: LatencyHistogram,
    /// DescribeDeliveryStream requests.
    pub describe_requests: AtomicU64,
    /// ListDeliveryStreams requests.
    pub list_requests: AtomicU64,
    /// Requests refused, by error type (`__type`).
    pub errors: Mutex<BTreeMap<&'static str, u64>>,
    /// Bytes of the write-ahead log on disk.
    pub log_bytes: AtomicU64,
    /// `retention.max_gb` in bytes, once a log is open (the `LogRetentionBytes` gauge).
    pub log_retention_bytes: AtomicU64,
    /// Undelivered records that left the log because they were older than `retention.max_hours`.
    pub log_expired_records: AtomicU64,
    /// Acknowledged records the log could not read back at start (damaged, missing or shortened
    /// segments).
    pub log_corrupt_records: AtomicU64,
    /// Acknowledged log entries (requests) lost the same way.
    pub log_corrupt_entries: AtomicU64,
    /// Bytes of the log found damaged or missing at start (torn writes included).
    pub log_corrupt_bytes: AtomicU64,
    /// The certificate the API listener serves, when it serves TLS.
    pub certificate: ListenerCertificateMetrics,
}

/// The API listener's TLS certificate: when it expires, and its renewals taken or refused while
/// the listener runs.
#[derive(Debug, Default)]
pub struct ListenerCertificateMetrics {
    /// Whether the listener serves TLS (the families below are rendered only then).
    pub served: std::sync::atomic::AtomicBool,
    /// When the certificate served expires, Unix seconds (0: not known).
    pub expiry_s: AtomicU64,
    /// Changed certificate files taken without a restart.
    pub reloads: AtomicU64,
    /// Changed certificate files refused (the listener keeps the pair it serves).
    pub reload_failures: AtomicU64,
}

impl ApiMetrics {
    /// Counts an accepted put request with its records and bytes (after throttling).
    pub fn count_accepted(&self, records: u64, bytes: u64) {
        self.incoming_put_requests.fetch_add(1, Relaxed);
        self.incoming_records.fetch_add(records, Relaxed);
        self.incoming_bytes.fetch_add(bytes, Relaxed);
    }

    /// Counts a refused request by its error type.
    pub fn count_error(&self, error_type: &'static str) {
        if let Ok(mut errors) = self.errors.lock() {
            *errors.entry(error_type).or_default() += 1;
        }
    }
}

/// The gauge family of when a connector's client certificate (mutual TLS) ends, Unix seconds
/// ([`PipelineMetrics::set_client_certificate_expiry`]; the API listener's own certificate is
/// `ListenerCertificateExpiry_seconds`).
pub const CLIENT_CERTIFICATE_EXPIRY: &str = "ClientCertificateExpiry_seconds";

/// Days before a certificate's end from which it is said to end soon: the threshold of the alert
/// rules `SluiceListenerCertificateExpiring` and `SluiceClientCertificateExpiring`
/// (docs/alerts.yml), which the warning when a certificate is read, the dashboard and `sluice top`
/// follow.
pub const CERTIFICATE_ENDING_DAYS: u64 = 14;

/// A TLS certificate a stream uses and when it ends ([`PipelineMetrics::certificate_ends`]).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct CertificateEnd {
    /// Whose it is: `listener` (the certificate the API listener serves), or the kind of
    /// connector that presents it as its client certificate: `destination`, `source`, `transform`.
    pub of: &'static str,
    /// The connector's name (none for the listener).
    pub name: Option<String>,
    /// When it ends, Unix seconds.
    pub ends_s: u64,
}

/// Counters of a whole pipeline run.
#[derive(Debug, Default)]
pub struct PipelineMetrics {
    /// Per source, in plan order.
    pub sources: Vec<SourceMetrics>,
    /// Per sink, in plan order.
    pub sinks: Vec<SinkMetrics>,
    /// Per transform, in plan order (see [`PipelineMetrics::with_transforms`]).
    pub transforms: Vec<Arc<TransformMetrics>>,
    /// Errors that stopped a source early.
    pub source_errors: Mutex<Vec<String>>,
    /// Partial records a source found and did not deliver (the cut last line of a file truncated
    /// while it was read).
    pub partial_records: AtomicU64,
    /// Why the run had to stop (records it holds can be stored nowhere): set once; the workers
    /// leave the dataflow without releasing what is undelivered.
    pub fatal: std::sync::OnceLock<String>,
    /// API ingest counters (zero without an API source).
    pub api: ApiMetrics,
    /// The pipeline's audit trail (`[pipeline] audit_log`), set when the run is prepared. It lives
    /// with the counters because whatever counts a request, a delivery or a failure is also what
    /// audits it.
    pub audit: std::sync::OnceLock<Arc<crate::audit::AuditTrail>>,
    /// The pipeline's error log (`[pipeline] error_log`, `--log-format json`, and the dashboard's
    /// last errors), set when the run is prepared.
    pub errors: std::sync::OnceLock<Arc<crate::error_log::ErrorLog>>,
    /// The bytes of sealed objects handed to sinks and not yet stored, against the run's limit
    /// (past it, sources wait and API sources throttle): set when the dataflow starts.
    pub inflight: std::sync::OnceLock<Arc<crate::operators::InflightBudget>>,
    /// This process's index when it runs as part of a cluster: a `process` label on every family.
    pub process: std::sync::OnceLock<usize>,
    /// When the client certificate each connector presents (mutual TLS) ends, Unix seconds
    /// ([`CLIENT_CERTIFICATE_EXPIRY`]), by the label that names the connector (`destination`,
    /// `source`, `transform`) and its name: set by [`Self::set_client_certificate_expiry`].
    pub client_certificates: Mutex<BTreeMap<(&'static str, String), u64>>,
}

impl PipelineMetrics {
    /// Sets when the client certificate of the connector `name` (of the kind `label` names:
    /// `destination`, `source`, `transform`) ends: the one it presents now, read at start or
    /// renewed.
    pub fn set_client_certificate_expiry(&self, label: &'static str, name: &str, expiry_s: u64) {
        if let Ok(mut certificates) = self.client_certificates.lock() {
            certificates.insert((label, name.to_string()), expiry_s);
        }
    }

    /// The certificates the stream uses whose end is known: the API listener's (when it serves
    /// TLS), then each connector's client certificate by kind and name.
    pub fn certificate_ends(&self) -> Vec<CertificateEnd> {
        let certificate = &self.api.certificate;
        let listener = certificate.expiry_s.load(Relaxed);
        let mut ends = Vec::new();
        if certificate.served.load(Relaxed) && listener > 0 {
            ends.push(CertificateEnd { of: "listener", name: None, ends_s: listener });
        }
        if let Ok(certificates) = self.client_certificates.lock() {
            ends.extend(certificates.iter().map(|((of, name), ends_s)| CertificateEnd {
                of,
                name: Some(name.clone()),
                ends_s: *ends_s,
            }));
        }
        ends
    }

    /// Reports `event` to the error log, if the pipeline has one.
    pub fn report_error(&self, event: crate::error_log::ErrorEvent<'_>) {
        if let Some(log) = self.errors.get() {
            log.report(event);
        }
    }

    /// Records the event `event` makes (given the trail, for its region) in the audit trail, if
    /// the pipeline has one.
    pub fn audit(&self, event: impl FnOnce(&crate::audit::AuditTrail) -> crate::audit::AuditEvent) {
        if let Some(trail) = self.audit.get() {
            trail.record(&event(trail));
        }
    }
}

/// A sink as the Prometheus endpoint labels it.
#[derive(Debug, Clone)]
pub struct SinkLabel {
    /// The sink's name in the pipeline.
    pub name: String,
    /// Its Firehose destination kind.
    pub kind: crate::destination::DestinationKind,
}

/// Metrics in the Prometheus text format, grouped by family (one `# TYPE` line each), so several
/// pipelines and sinks can add samples of the same family.
#[derive(Debug, Default)]
pub struct PrometheusText {
    families: BTreeMap<String, (&'static str, Vec<String>)>,
    /// The help of connectors' own families ([`Family`]), by their served name.
    described: BTreeMap<String, &'static str>,
}

impl PrometheusText {
    /// Adds `sample` (a whole sample line) to `family` of type `kind`.
    fn line(&mut self, family: &str, kind: &'static str, sample: &str) {
        self.families.entry(family.to_string()).or_insert_with(|| (kind, Vec::new())).1.push(sample.to_string());
    }

    /// Says what the family served as `served` (a connector's [`Family`], with `sluice_` and any
    /// unit suffix) counts.
    fn describe(&mut self, served: &str, family: Family) {
        self.described.entry(served.to_string()).or_insert(family.help);
    }

    /// Adds one sample of a connector's own `family` (served as `sluice_<name>`).
    fn family_sample(&mut self, family: Family, kind: &'static str, labels: &str, value: impl std::fmt::Display) {
        let served = format!("sluice_{}", family.name);
        self.describe(&served, family);
        self.sample(&served, kind, labels, value);
    }

    /// Adds one sample `family{labels} value` (`family value` without labels).
    pub fn sample(&mut self, family: &str, kind: &'static str, labels: &str, value: impl std::fmt::Display) {
        if labels.is_empty() {
            self.line(family, kind, &format!("{family} {value}"));
        } else {
            self.line(family, kind, &format!("{family}{{{labels}}} {value}"));
        }
    }

    /// The exposition text: each family's `# HELP` (what it counts), `# TYPE` and samples.
    pub fn finish(self) -> String {
        let mut out = String::new();
        for (family, (kind, lines)) in self.families {
            if let Some(help) = self.described.get(&family).copied().or_else(|| engine_help(&family)) {
                let _ = writeln!(out, "# HELP {family} {help}");
            }
            let _ = writeln!(out, "# TYPE {family} {kind}");
            for line in lines {
                out.push_str(&line);
                out.push('\n');
            }
        }
        out
    }
}

/// What each of the engine's families counts (the name after `sluice_`), for `/metrics`'s `# HELP`;
/// the families of a destination (`DeliveryTo<Kind>_…`) are in [`DELIVERY_HELP`], connectors'
/// own families carry theirs ([`Family`]).
const ENGINE_HELP: &[(&str, &str)] = &[
    ("IncomingBytes", "Bytes of records taken in (Firehose's IncomingBytes)."),
    ("IncomingRecords", "Records taken in (Firehose's IncomingRecords)."),
    ("IncomingPutRequests", "PutRecord and PutRecordBatch requests accepted."),
    ("ThrottledRecords", "Records refused with ServiceUnavailableException: too much was in flight."),
    ("PutRecord_Requests", "PutRecord requests answered."),
    ("PutRecord_Bytes", "Bytes of record data accepted by PutRecord."),
    ("PutRecord_Latency_seconds", "Time to answer a PutRecord, its log append included."),
    ("PutRecordBatch_Requests", "PutRecordBatch requests answered."),
    ("PutRecordBatch_Records", "Records accepted by PutRecordBatch."),
    ("PutRecordBatch_Bytes", "Bytes of record data accepted by PutRecordBatch."),
    ("PutRecordBatch_Latency_seconds", "Time to answer a PutRecordBatch, its log append included."),
    ("DescribeDeliveryStream_Requests", "DescribeDeliveryStream requests answered."),
    ("ListDeliveryStreams_Requests", "ListDeliveryStreams requests answered."),
    ("ApiErrors", "API requests refused, by Firehose error type."),
    ("SourceErrors", "Inputs a source could not read (a file or object given up, a source that stopped)."),
    ("PartialRecords", "Cut lines of files truncated while read: counted, not delivered."),
    ("LogBytes", "Bytes of the write-ahead log on disk."),
    ("LogRetentionBytes", "The write-ahead log's size limit (retention.max_gb)."),
    ("LogExpiredRecords", "Undelivered records dropped from the write-ahead log by its retention limits."),
    ("LogCorruptRecords", "Acknowledged records found damaged or missing in the write-ahead log at start."),
    ("LogCorruptEntries", "Write-ahead log entries found damaged or missing at start."),
    ("LogCorruptBytes", "Bytes of write-ahead log entries found damaged at start."),
    ("ListenerCertificateExpiry_seconds", "When the API listener's TLS certificate ends, Unix time."),
    ("ListenerCertificateReloads", "Renewed certificate files the API listener took and serves."),
    (
        "ListenerCertificateReloadFailures",
        "Renewed certificate files the API listener refused (the pair before is kept).",
    ),
    ("ClientCertificateExpiry_seconds", "When the client TLS certificate a connector presents ends, Unix time."),
    ("InFlightBytes", "Bytes read and not yet stored: records on the workers and objects handed to sinks."),
    ("InFlightLimitBytes", "The in-flight limit: past it, sources wait."),
    ("ErrorLogLines", "Lines written to the pipeline's error log."),
    ("ErrorLogSuppressed", "Error log lines left out as repeats within their interval."),
    ("AuditEvents", "Lines written to the audit log."),
    ("AuditDeliveryFailures", "Audit log lines that could not be stored."),
    ("BufferInterval_seconds", "The sink's buffer interval (interval_s)."),
    ("BufferSize_bytes", "The sink's buffer size (size_mb)."),
    ("BufferedBytes", "Bytes the sink's open objects hold on every worker."),
    ("BufferOldestRecordAge_seconds", "Age of the oldest record in the sink's open objects."),
    ("BackupToS3_Records", "Records copied to the sink's backup as they arrived (backup = \"all\")."),
    ("SucceedConversion_Records", "Records converted to the sink's format (Parquet)."),
    ("SucceedConversion_Bytes", "Bytes, as they arrived, of records converted to the sink's format."),
    ("FailedConversion_Records", "Records that could not be converted (format-conversion-failed)."),
    ("FailedConversion_Bytes", "Bytes, as they arrived, of records that could not be converted."),
    ("PartitionCount", "Open partitions of the sink over every worker."),
    ("PartitionsSealedEarly", "Partitions sealed before their buffer was full to stay within max_open_mb."),
    ("PartitioningFailedRecords", "Records whose partition keys could not be found or used (partitioning-failed)."),
    ("PerPartitionThroughput_bytes_per_second", "Bytes per second of the sink's busiest partition."),
    ("JQProcessing_Duration_seconds", "Time the partitioning query took per batch of records."),
    ("DeliveryErrors", "Records not delivered, by error-output type or destination error code."),
    ("TransformRecords", "Records a transform took in, sent on, dropped on purpose or failed, by outcome."),
    ("TransformKeysHeld", "Keys a transform holds (a table's rows, dedup's keys)."),
    ("ExecuteProcessing_Success", "Function invocations answered well-formed, over those made."),
    ("ExecuteProcessing_Duration_seconds", "Time a function invocation took, retries included."),
    ("SucceedProcessing_Records", "Records a function answered Ok."),
    ("SucceedProcessing_Bytes", "Bytes a function returned for the records it answered Ok."),
    ("ConfigFilesFailed", "Pipeline files of sluice serve's folder not served as written."),
    ("ConfigReloads", "Times sluice serve read its folder again."),
    ("ConfigLastReload_seconds", "When sluice serve last read its folder again, Unix time (0 before)."),
];

/// What each family of a destination counts: `DeliveryTo<Kind>_<name>` by `<name>` (Firehose's
/// `DeliveryToS3.Records`, `DeliveryToSplunk.Records`, …).
const DELIVERY_HELP: &[(&str, &str)] = &[
    ("Records", "Records stored at the destination (in data objects or requests)."),
    ("Bytes", "Bytes of records stored at the destination, before compression."),
    ("StoredBytes", "Bytes stored at the destination, as written."),
    ("Objects", "Data objects (or requests) stored at the destination."),
    ("Attempts", "Delivery attempts (an object uploaded in parts counts once), error output included."),
    ("FailedAttempts", "Delivery attempts that failed, counted as they fail."),
    ("Retries", "Delivery attempts made again after a failure."),
    ("Success", "Objects stored over delivery attempts."),
    ("DataFreshness_seconds", "Age of the oldest record not yet delivered."),
    ("FailedRecords", "Records stored in the sink's error output."),
    ("UndeliveredRecords", "Records that reached neither the destination nor the error output."),
    ("ErrorOutputFailures", "Failed attempts to store error-output objects (each blocks delivery until it succeeds)."),
];

/// The help of the engine's family served as `served` (`sluice_…`).
fn engine_help(served: &str) -> Option<&'static str> {
    let name = served.strip_prefix("sluice_")?;
    let find = |table: &[(&str, &'static str)], key: &str| table.iter().find(|(n, _)| *n == key).map(|(_, h)| *h);
    match name.strip_prefix("DeliveryTo").and_then(|kind| kind.split_once('_')) {
        Some((_, family)) => find(DELIVERY_HELP, family),
        None => find(ENGINE_HELP, name),
    }
}

/// A label value with `\`, `"` and newlines escaped (Prometheus text format).
fn label_value(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

impl PipelineMetrics {
    /// Counters for `sources` sources and `sinks` sinks.
    pub fn new(sources: usize, sinks: usize) -> Self {
        PipelineMetrics {
            sources: (0..sources).map(|_| SourceMetrics::default()).collect(),
            sinks: (0..sinks).map(|_| SinkMetrics::default()).collect(),
            transforms: Vec::new(),
            source_errors: Mutex::new(Vec::new()),
            partial_records: AtomicU64::new(0),
            fatal: std::sync::OnceLock::new(),
            api: ApiMetrics::default(),
            audit: std::sync::OnceLock::new(),
            errors: std::sync::OnceLock::new(),
            inflight: std::sync::OnceLock::new(),
            process: std::sync::OnceLock::new(),
            client_certificates: Mutex::default(),
        }
    }

    /// With counters for `transforms` transforms.
    pub fn with_transforms(mut self, transforms: usize) -> Self {
        self.transforms = (0..transforms).map(|_| Arc::default()).collect();
        self
    }

    /// `stream="<stream>"`, and `process="<N>"` in a cluster.
    fn stream_label(&self, stream: &str) -> String {
        match self.process.get() {
            Some(n) => format!("stream=\"{}\",process=\"{n}\"", label_value(stream)),
            None => format!("stream=\"{}\"", label_value(stream)),
        }
    }

    /// Adds the transforms' counters to `text`: `TransformRecords{transform,type,outcome}` (in, out,
    /// dropped, failed), their labelled counts (e.g. `RedactedValues{detector}`), and for a
    /// function Firehose's `ExecuteProcessing_Duration`, `ExecuteProcessing_Success` and
    /// `SucceedProcessing_{Records,Bytes}`.
    pub fn render_transforms(&self, text: &mut PrometheusText, stream: &str, transforms: &[TransformLabel]) {
        for (t, label) in self.transforms.iter().zip(transforms) {
            let labels = format!("{},transform=\"{}\"", self.stream_label(stream), label_value(&label.name));
            for (outcome, counter) in [
                ("in", &t.records_in),
                ("out", &t.records_out),
                ("dropped", &t.records_dropped),
                ("failed", &t.records_failed),
            ] {
                let labels = format!("{labels},type=\"{}\",outcome=\"{outcome}\"", label_value(&label.type_name));
                text.sample("sluice_TransformRecords", "counter", &labels, counter.load(Relaxed));
            }
            if let Ok(labelled) = t.labelled.lock() {
                for ((family, name, value), n) in labelled.iter() {
                    let labels = format!("{labels},{name}=\"{}\"", label_value(value));
                    text.family_sample(*family, "counter", &labels, n);
                }
            }
            let keys_held = t.keys_held.load(Relaxed);
            if keys_held != 0 {
                text.sample("sluice_TransformKeysHeld", "gauge", &labels, keys_held);
            }
            if label.type_name == "lambda" {
                let invocations = t.invocations.load(Relaxed);
                let success = if invocations == 0 {
                    1.0
                } else {
                    t.invocations_succeeded.load(Relaxed) as f64 / invocations as f64
                };
                text.sample("sluice_ExecuteProcessing_Success", "gauge", &labels, success);
                text.sample("sluice_SucceedProcessing_Records", "counter", &labels, t.processed_records.load(Relaxed));
                text.sample("sluice_SucceedProcessing_Bytes", "counter", &labels, t.processed_bytes.load(Relaxed));
                t.invocation_duration.render(text, "sluice_ExecuteProcessing_Duration_seconds", &labels);
            }
        }
    }

    /// Adds this pipeline's metrics to `text`, labelled `stream="<stream>"` (and
    /// `destination="<sink>"` for delivery families). `now_ms` is the clock for `DataFreshness`.
    pub fn render_prometheus(&self, text: &mut PrometheusText, stream: &str, sinks: &[SinkLabel], now_ms: i64) {
        let stream_label = self.stream_label(stream);
        let api = &self.api;
        let counters: [(&str, u64); 17] = [
            ("IncomingBytes", api.incoming_bytes.load(Relaxed).max(self.bytes_in())),
            ("IncomingRecords", api.incoming_records.load(Relaxed).max(self.records_in())),
            ("IncomingPutRequests", api.incoming_put_requests.load(Relaxed)),
            ("ThrottledRecords", api.throttled_records.load(Relaxed)),
            ("PutRecord_Requests", api.put_record_requests.load(Relaxed)),
            ("PutRecord_Bytes", api.put_record_bytes.load(Relaxed)),
            ("PutRecordBatch_Requests", api.put_record_batch_requests.load(Relaxed)),
            ("PutRecordBatch_Records", api.put_record_batch_records.load(Relaxed)),
            ("PutRecordBatch_Bytes", api.put_record_batch_bytes.load(Relaxed)),
            ("DescribeDeliveryStream_Requests", api.describe_requests.load(Relaxed)),
            ("ListDeliveryStreams_Requests", api.list_requests.load(Relaxed)),
            ("SourceErrors", self.source_errors.lock().map_or(0, |e| e.len() as u64)),
            ("PartialRecords", self.partial_records.load(Relaxed)),
            ("LogExpiredRecords", api.log_expired_records.load(Relaxed)),
            ("LogCorruptRecords", api.log_corrupt_records.load(Relaxed)),
            ("LogCorruptEntries", api.log_corrupt_entries.load(Relaxed)),
            ("LogCorruptBytes", api.log_corrupt_bytes.load(Relaxed)),
        ];
        for (name, value) in counters {
            text.sample(&format!("sluice_{name}"), "counter", &stream_label, value);
        }
        let mut own: BTreeMap<Family, (&str, u64)> = BTreeMap::new();
        for source in &self.sources {
            for (family, n) in source.own_counts.lock().iter().flat_map(|c| c.iter()) {
                own.entry(*family).or_insert(("counter", 0)).1 += n;
            }
        }
        for (family, value) in self.source_gauge_families() {
            own.insert(family, ("gauge", value));
        }
        for (family, (kind, value)) in own {
            text.family_sample(family, kind, &stream_label, value);
        }
        text.sample("sluice_LogBytes", "gauge", &stream_label, api.log_bytes.load(Relaxed));
        let retention = api.log_retention_bytes.load(Relaxed);
        if retention > 0 {
            text.sample("sluice_LogRetentionBytes", "gauge", &stream_label, retention);
        }
        let certificate = &api.certificate;
        for end in self.certificate_ends() {
            match &end.name {
                None => text.sample("sluice_ListenerCertificateExpiry_seconds", "gauge", &stream_label, end.ends_s),
                Some(name) => {
                    let labels = format!("{stream_label},{}=\"{}\"", end.of, label_value(name));
                    text.sample(&format!("sluice_{CLIENT_CERTIFICATE_EXPIRY}"), "gauge", &labels, end.ends_s);
                }
            }
        }
        if certificate.served.load(Relaxed) {
            text.sample(
                "sluice_ListenerCertificateReloads",
                "counter",
                &stream_label,
                certificate.reloads.load(Relaxed),
            );
            let failures = certificate.reload_failures.load(Relaxed);
            text.sample("sluice_ListenerCertificateReloadFailures", "counter", &stream_label, failures);
        }
        if let Some(budget) = self.inflight.get() {
            text.sample("sluice_InFlightBytes", "gauge", &stream_label, budget.held());
            text.sample("sluice_InFlightLimitBytes", "gauge", &stream_label, budget.limit());
        }
        if let Some(log) = self.errors.get() {
            text.sample("sluice_ErrorLogLines", "counter", &stream_label, log.written.load(Relaxed));
            text.sample("sluice_ErrorLogSuppressed", "counter", &stream_label, log.suppressed.load(Relaxed));
        }
        if let Some(trail) = self.audit.get() {
            text.sample("sluice_AuditEvents", "counter", &stream_label, trail.lines.lines.load(Relaxed));
            text.sample("sluice_AuditDeliveryFailures", "counter", &stream_label, trail.lines.failures.load(Relaxed));
        }
        api.put_record_latency.render(text, "sluice_PutRecord_Latency_seconds", &stream_label);
        api.put_record_batch_latency.render(text, "sluice_PutRecordBatch_Latency_seconds", &stream_label);
        if let Ok(errors) = api.errors.lock() {
            for (error_type, n) in errors.iter() {
                text.sample("sluice_ApiErrors", "counter", &format!("{stream_label},type=\"{error_type}\""), n);
            }
        }
        for (sink, label) in self.sinks.iter().zip(sinks) {
            let labels = format!("{stream_label},destination=\"{}\"", label_value(&label.name));
            let family = |name: &str| format!("sluice_DeliveryTo{}_{name}", label.kind.metric_name());
            let attempts = sink.attempts.load(Relaxed);
            let success = if attempts == 0 { 1.0 } else { sink.stored.load(Relaxed) as f64 / attempts as f64 };
            let freshness = sink.pending.oldest().map_or(0.0, |t| (now_ms - t).max(0) as f64 / 1000.0);
            text.sample(&family("Records"), "counter", &labels, sink.records_delivered.load(Relaxed));
            text.sample(&family("Bytes"), "counter", &labels, sink.bytes_delivered.load(Relaxed));
            text.sample(&family("StoredBytes"), "counter", &labels, sink.bytes_stored.load(Relaxed));
            text.sample(&family("Objects"), "counter", &labels, sink.objects.load(Relaxed));
            text.sample(&family("Attempts"), "counter", &labels, attempts);
            text.sample(&family("FailedAttempts"), "counter", &labels, sink.failed_attempts.load(Relaxed));
            text.sample(&family("Retries"), "counter", &labels, sink.retries.load(Relaxed));
            text.sample(&family("Success"), "gauge", &labels, success);
            text.sample(&family("DataFreshness_seconds"), "gauge", &labels, freshness);
            text.sample("sluice_BufferInterval_seconds", "gauge", &labels, sink.buffer_interval_s.load(Relaxed));
            text.sample("sluice_BufferSize_bytes", "gauge", &labels, sink.buffer_size_bytes.load(Relaxed));
            let (buffered, oldest) = sink.buffered();
            let age = oldest.map_or(0.0, |t| (now_ms - t).max(0) as f64 / 1000.0);
            text.sample("sluice_BufferedBytes", "gauge", &labels, buffered);
            text.sample("sluice_BufferOldestRecordAge_seconds", "gauge", &labels, age);
            text.sample(&family("FailedRecords"), "counter", &labels, sink.records_failed.load(Relaxed));
            text.sample(&family("UndeliveredRecords"), "counter", &labels, sink.records_undelivered.load(Relaxed));
            text.sample(&family("ErrorOutputFailures"), "counter", &labels, sink.error_output_failures.load(Relaxed));
            text.sample("sluice_BackupToS3_Records", "counter", &labels, sink.records_source_backup.load(Relaxed));
            if sink.format_converts.load(Relaxed) {
                let conversions = [
                    ("SucceedConversion_Records", &sink.converted_records),
                    ("SucceedConversion_Bytes", &sink.converted_bytes),
                    ("FailedConversion_Records", &sink.conversion_failed_records),
                    ("FailedConversion_Bytes", &sink.conversion_failed_bytes),
                ];
                for (family, value) in conversions {
                    text.sample(&format!("sluice_{family}"), "counter", &labels, value.load(Relaxed));
                }
            }
            text.sample("sluice_PartitionCount", "gauge", &labels, sink.open_partitions());
            text.sample("sluice_PartitionsSealedEarly", "counter", &labels, sink.partitions_sealed_early.load(Relaxed));
            text.sample("sluice_PartitioningFailedRecords", "counter", &labels, sink.partitioning_failed.load(Relaxed));
            let busiest = sink.partition_records.lock().map(|mut t| t.busiest_throughput(Instant::now())).unwrap_or(0);
            text.sample("sluice_PerPartitionThroughput_bytes_per_second", "gauge", &labels, busiest);
            if sink.partitions_by_query.load(Relaxed) {
                sink.jq_processing.render(text, "sluice_JQProcessing_Duration_seconds", &labels);
            }
            if let Ok(reasons) = sink.reasons.lock() {
                for (reason, n) in reasons.iter() {
                    let labels = format!("{labels},reason=\"{}\"", label_value(reason));
                    text.sample("sluice_DeliveryErrors", "counter", &labels, n);
                }
            }
            if let Ok(counts) = sink.own_counts.lock() {
                for (family, n) in counts.iter() {
                    text.family_sample(*family, "counter", &labels, n);
                }
            }
            if let Ok(durations) = sink.own_durations.lock() {
                for (family, histogram) in durations.iter() {
                    let served = format!("sluice_{}_seconds", family.name);
                    text.describe(&served, *family);
                    histogram.render(text, &served, &labels);
                }
            }
        }
    }

    /// Notes an error that stopped a source (once, however many workers hit it).
    pub fn report_source_error(&self, error: String) {
        if let Ok(mut errors) = self.source_errors.lock()
            && !errors.contains(&error)
        {
            errors.push(error);
        }
    }

    /// The sources' own gauges (a Kinesis source's `KinesisMillisBehindLatest`), each the largest
    /// over the stream's sources: what `/metrics` and the dashboard show.
    pub fn source_gauges(&self) -> BTreeMap<&'static str, u64> {
        self.source_gauge_families().into_iter().map(|(family, value)| (family.name, value)).collect()
    }

    /// [`Self::source_gauges`] by family.
    fn source_gauge_families(&self) -> BTreeMap<Family, u64> {
        let mut gauges: BTreeMap<Family, u64> = BTreeMap::new();
        for source in &self.sources {
            for (&family, &value) in source.own_gauges.lock().iter().flat_map(|g| g.iter()) {
                let largest = gauges.entry(family).or_default();
                *largest = (*largest).max(value);
            }
        }
        gauges
    }

    /// Records read by every source.
    pub fn records_in(&self) -> u64 {
        self.sources.iter().map(|s| s.records.load(Relaxed)).sum()
    }

    /// Bytes read by every source.
    pub fn bytes_in(&self) -> u64 {
        self.sources.iter().map(|s| s.bytes.load(Relaxed)).sum()
    }
}

/// Peak resident set size of this process in bytes (Linux `VmHWM`), if known.
pub fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(account: &str) -> Vec<(String, String)> {
        vec![("account".to_string(), account.to_string())]
    }

    /// `PerPartitionThroughput`: the busiest partition's bytes per second over the last complete
    /// window, not the sum of all partitions, and nothing once a window passes without writes.
    #[test]
    fn the_busiest_partition_s_throughput_is_measured_over_complete_windows() {
        let start = Instant::now();
        let mut tally = PartitionTally { window_started: start, ..PartitionTally::default() };
        let at = |s: f64| start + Duration::from_secs_f64(s);
        tally.add_at(&keys("a"), 10, 30_000, at(1.0));
        tally.add_at(&keys("b"), 10, 20_000, at(2.0));
        tally.add_at(&keys("a"), 10, 20_000, at(5.0));
        // The first window is not complete: nothing measured yet.
        assert_eq!(tally.busiest_throughput(at(9.0)), 0);
        // Complete after 10 s: `a` took 50,000 bytes in it.
        assert_eq!(tally.busiest_throughput(at(10.0)), 5_000);
        // The next window: `b` alone, 100,000 bytes.
        tally.add_at(&keys("b"), 1, 100_000, at(12.0));
        assert_eq!(tally.busiest_throughput(at(15.0)), 5_000, "still the last complete window");
        assert_eq!(tally.busiest_throughput(at(20.0)), 10_000);
        // A window with no writes: 0.
        assert_eq!(tally.busiest_throughput(at(31.0)), 0);
        // The summary's counts are the records, whatever the windows.
        assert_eq!(tally.largest().collect::<Vec<_>>(), [("a", 20), ("b", 11)]);
    }

    /// The certificates a stream uses are listed once for every reader (/metrics, the dashboard,
    /// `sluice top`): the listener's only while it serves TLS and its end is known, then each
    /// connector's client certificate; /metrics renders each in its own family.
    #[test]
    fn a_stream_s_certificate_ends_are_listed_for_metrics_and_the_dashboard() {
        let m = PipelineMetrics::new(1, 1);
        assert!(m.certificate_ends().is_empty());
        m.api.certificate.expiry_s.store(1_900_000_000, Relaxed);
        assert!(m.certificate_ends().is_empty(), "a listener without TLS has no certificate");
        m.api.certificate.served.store(true, Relaxed);
        m.set_client_certificate_expiry("destination", "siem", 1_800_000_000);
        let ends = m.certificate_ends();
        let listed: Vec<_> = ends.iter().map(|e| (e.of, e.name.as_deref(), e.ends_s)).collect();
        assert_eq!(listed, [("listener", None, 1_900_000_000), ("destination", Some("siem"), 1_800_000_000)]);
        let mut text = PrometheusText::default();
        m.render_prometheus(&mut text, "s", &[], 0);
        let text = text.finish();
        assert!(text.contains("sluice_ListenerCertificateExpiry_seconds{stream=\"s\"} 1900000000"), "{text}");
        assert!(
            text.contains("sluice_ClientCertificateExpiry_seconds{stream=\"s\",destination=\"siem\"} 1800000000"),
            "{text}"
        );
    }

    /// Every family `/metrics` serves says what it counts (`# HELP`, right before its `# TYPE`):
    /// the engine's of every destination kind, transform and stream, and connectors' own.
    #[test]
    fn every_family_served_has_its_help() {
        use crate::destination::DestinationKind;
        let kinds = [
            DestinationKind::S3,
            DestinationKind::HttpEndpoint,
            DestinationKind::OpenSearch,
            DestinationKind::Splunk,
            DestinationKind::Redshift,
        ];
        let m = PipelineMetrics::new(1, kinds.len()).with_transforms(1);
        let own = Family { name: "OwnThings", help: "Things a connector counts." };
        m.api.count_error("ServiceUnavailableException");
        m.api.certificate.expiry_s.store(1_900_000_000, Relaxed);
        m.api.certificate.served.store(true, Relaxed);
        m.api.log_retention_bytes.store(1 << 30, Relaxed);
        m.set_client_certificate_expiry("destination", "siem", 1_800_000_000);
        let _ = m.inflight.set(crate::operators::InflightBudget::new(1 << 20));
        let _ = m.errors.set(Arc::new(crate::error_log::ErrorLog::new("s", None, false)));
        add_to(&m.sources[0].own_counts, own, 1);
        if let Ok(mut gauges) = m.sources[0].own_gauges.lock() {
            gauges.insert(Family { name: "OwnGauge", help: "A connector's gauge." }, 3);
        }
        for sink in &m.sinks {
            sink.format_converts.store(true, Relaxed);
            sink.partitions_by_query.store(true, Relaxed);
            if let Ok(mut reasons) = sink.reasons.lock() {
                reasons.insert("processing-failed".into(), 1);
            }
            add_to(&sink.own_counts, own, 1);
            if let Ok(mut durations) = sink.own_durations.lock() {
                durations.entry(Family { name: "OwnDuration", help: "A connector's timing." }).or_default();
            }
        }
        m.transforms[0].count(own, "part", "x", 1);
        m.transforms[0].keys_held.store(1, Relaxed);
        let sinks: Vec<SinkLabel> =
            kinds.iter().enumerate().map(|(i, &kind)| SinkLabel { name: format!("out{i}"), kind }).collect();
        let mut text = PrometheusText::default();
        m.render_prometheus(&mut text, "s", &sinks, 0);
        m.render_transforms(&mut text, "s", &[TransformLabel { name: "f".into(), type_name: "lambda".into() }]);
        let text = text.finish();
        let lines: Vec<&str> = text.lines().collect();
        let mut families = 0;
        for (i, line) in lines.iter().enumerate() {
            let Some(typed) = line.strip_prefix("# TYPE ") else { continue };
            families += 1;
            let family = typed.split(' ').next().unwrap_or_default();
            let help = i.checked_sub(1).and_then(|h| lines[h].strip_prefix(&format!("# HELP {family} ")));
            assert!(help.is_some_and(|h| h.len() > 10), "{family} has no help:\n{text}");
        }
        assert!(families > 60, "{families} families:\n{text}");
        assert!(text.contains("# HELP sluice_OwnThings Things a connector counts.\n"), "{text}");
        assert!(text.contains("# HELP sluice_OwnDuration_seconds A connector's timing.\n"), "{text}");
        // `sluice serve`'s own, served by the admin listener.
        for family in ["ConfigFilesFailed", "ConfigReloads", "ConfigLastReload_seconds", "AuditEvents"] {
            assert!(engine_help(&format!("sluice_{family}")).is_some(), "{family}");
        }
    }

    /// The dashboard's and `sluice top`'s "ending soon" is the alert rules' threshold.
    #[test]
    fn the_ending_soon_threshold_is_the_alert_rules_one() {
        let rules = include_str!("../../docs/alerts.yml");
        let threshold = format!("< {CERTIFICATE_ENDING_DAYS} * 86400");
        for family in ["sluice_ListenerCertificateExpiry_seconds", "sluice_ClientCertificateExpiry_seconds"] {
            let rule = rules.lines().find(|l| l.contains("expr:") && l.contains(family)).unwrap_or_default();
            assert!(rule.contains(&threshold), "{family}'s rule is not `{threshold}`: {rule}");
        }
    }
}

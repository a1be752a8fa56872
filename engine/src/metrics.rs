//! Run counters: what came in, what each sink delivered, what went to the error output, and what
//! could not be delivered. Shared by every worker (atomics), read by the progress bar and the summary.
//!
//! Guarantees: every record a source produced is counted once in `records_in`, and for each sink
//! that reads it exactly once in `delivered`, `failed` (error output) or `undelivered`, once the run
//! has ended.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Counters of one source.
#[derive(Debug, Default)]
pub struct SourceMetrics {
    /// Records read.
    pub records: AtomicU64,
    /// Bytes read (record bytes).
    pub bytes: AtomicU64,
}

/// Counters of one sink.
#[derive(Debug, Default)]
pub struct SinkMetrics {
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
    /// Error-output objects stored.
    pub error_objects: AtomicU64,
    /// Records that reached neither the destination nor the error output.
    pub records_undelivered: AtomicU64,
    /// Failure reasons with counts: error-output type or delivery error code → records.
    pub reasons: Mutex<BTreeMap<String, u64>>,
    /// Keys of the first error-output objects, for the summary.
    pub error_keys: Mutex<Vec<String>>,
    /// Last delivery error seen, for the summary.
    pub last_error: Mutex<Option<String>>,
}

impl SinkMetrics {
    /// Adds `n` records to a reason's count.
    pub fn count_reason(&self, reason: &str, n: u64) {
        if let Ok(mut reasons) = self.reasons.lock() {
            *reasons.entry(reason.to_string()).or_default() += n;
        }
    }
}

/// Counters of a whole pipeline run.
#[derive(Debug, Default)]
pub struct PipelineMetrics {
    /// Per source, in plan order.
    pub sources: Vec<SourceMetrics>,
    /// Per sink, in plan order.
    pub sinks: Vec<SinkMetrics>,
    /// Errors that stopped a source early.
    pub source_errors: Mutex<Vec<String>>,
}

impl PipelineMetrics {
    /// Counters for `sources` sources and `sinks` sinks.
    pub fn new(sources: usize, sinks: usize) -> Self {
        PipelineMetrics {
            sources: (0..sources).map(|_| SourceMetrics::default()).collect(),
            sinks: (0..sinks).map(|_| SinkMetrics::default()).collect(),
            source_errors: Mutex::new(Vec::new()),
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

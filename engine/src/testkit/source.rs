//! Source conformance: what every source must do, checked through the real runtime (prepare, the
//! timely workers, buffering, delivery) into the [`super::capture`] sink.
//!
//! A test describes its source with a [`SourceCase`]: the source's table, the records it must
//! deliver, and for a stream source how to produce them once the run is listening. [`conformance`]
//! returns a [`Report`] of the checks that passed and those skipped with the reason:
//! - [`Check::ExactlyOnce`] at 1, 2 and 4 workers: every expected record is delivered once, none
//!   twice, nothing else.
//! - [`Check::DrainOnStop`]: a stop asked at once (a finite source) ends the run with no record
//!   twice and none that was not in the input; a stop asked right after a stream source
//!   acknowledged its records still delivers every one of them (a source reading a stream that
//!   keeps its records, such as Kinesis, acknowledged nothing: it only must not repeat or invent).
//! - [`Check::Resume`] (sources that keep their place): a run stopped after its first delivery,
//!   then started again on the same data, delivers every record at least once across the two runs,
//!   and the second run does not deliver again everything the first did (for a source whose
//!   stream keeps its records, the second run runs on for a few seconds, `SETTLE`, after the
//!   missing ones came, so a source that started over would show it).
//! - [`Check::GivesUpAnUnreadableInput`] at 1, 2 and 4 workers (sources of several inputs whose
//!   case names one it cannot read, [`SourceCase::with_unreadable_input`]): every record of the
//!   readable inputs is delivered once, whichever worker met the unreadable one, and the run's
//!   outcome names it.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{capture, plan_from_str};
use crate::config::Registry;
use crate::runtime::{RunOptions, prepare};

/// Sends a stream source's records once its run is prepared; `Ok` once all are acknowledged.
pub type Producer = Box<dyn Fn() -> Result<(), String> + Send + Sync>;

/// A source under test.
pub struct SourceCase {
    /// The source's keys as TOML lines (`type = "file"` and the rest), for `[sources.in]`.
    pub table: String,
    /// Every record the source must deliver, as delivered (without a line's newline).
    pub expected: Vec<Vec<u8>>,
    /// For a stream source: sends `expected` once the run is prepared.
    pub produce: Option<Producer>,
    /// Whether the source keeps its place across runs (file checkpoints, a write-ahead log).
    pub keeps_its_place: bool,
    /// For a stream source: whether it acknowledged the records to their producer (an API
    /// source), so a stop must deliver every one; `false` for one reading a stream that keeps
    /// them (Kinesis), which reads at its next start what it had not delivered.
    pub acknowledges: bool,
    /// Where the runs keep their data (each run its own folder in it).
    pub dir: PathBuf,
    /// The source's keys naming inputs one of which it cannot read, and the records of the others.
    pub unreadable: Option<(String, Vec<Vec<u8>>)>,
}

impl SourceCase {
    /// A source that ends by itself, reading the records its table names.
    pub fn finite(table: String, expected: Vec<Vec<u8>>, keeps_its_place: bool, dir: &std::path::Path) -> Self {
        SourceCase {
            table,
            expected,
            produce: None,
            keeps_its_place,
            acknowledges: false,
            dir: dir.to_path_buf(),
            unreadable: None,
        }
    }

    /// The same case, checked also with `table`: inputs one of which cannot be read (a corrupt
    /// file), the others holding `readable`.
    pub fn with_unreadable_input(mut self, table: String, readable: Vec<Vec<u8>>) -> Self {
        self.unreadable = Some((table, readable));
        self
    }

    /// A stream source fed by `produce`, which keeps its place (a write-ahead log) across runs.
    pub fn stream(table: String, expected: Vec<Vec<u8>>, produce: Producer, dir: &std::path::Path) -> Self {
        SourceCase {
            table,
            expected,
            produce: Some(produce),
            keeps_its_place: true,
            acknowledges: true,
            dir: dir.to_path_buf(),
            unreadable: None,
        }
    }

    /// A source reading a stream that keeps its records (Kinesis), fed by `produce`: it keeps its
    /// place across runs, and a stop need not deliver what the stream still holds.
    pub fn durable_stream(table: String, expected: Vec<Vec<u8>>, produce: Producer, dir: &std::path::Path) -> Self {
        SourceCase { acknowledges: false, ..SourceCase::stream(table, expected, produce, dir) }
    }
}

/// One conformance check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    /// Every record once at this many workers.
    ExactlyOnce {
        /// Workers.
        workers: usize,
    },
    /// A stop drains what was acknowledged and never duplicates.
    DrainOnStop,
    /// A stopped run resumes.
    Resume,
    /// An input that cannot be read is given up, named, and the others are read, at this many
    /// workers.
    GivesUpAnUnreadableInput {
        /// Workers.
        workers: usize,
    },
}

/// What [`conformance`] checked.
pub type Report = super::Report<Check>;

/// When a run is stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StopWhen {
    /// Never: a finite source ends by itself.
    Never,
    /// Before anything is read.
    AtOnce,
    /// Right after the producer's records are acknowledged.
    AfterProducing,
    /// Once every expected record is delivered.
    AfterAll,
    /// Once a first object is delivered.
    AfterFirst,
    /// Without producing: once this many records are delivered, and [`SETTLE`] after.
    AfterMore(usize),
}

/// How long a resumed run of a source whose stream keeps its records goes on after it delivered
/// what the first run had not: long enough for a source that started over to deliver again (a
/// few buffer intervals of the capture sink).
const SETTLE: Duration = Duration::from_secs(4);

/// The in-flight limit of a finite source's first run in the resume check: four batches.
const RESUME_INFLIGHT_BYTES: u64 = 4 << 20;

/// How long a check waits for deliveries before it fails.
const PATIENCE: Duration = Duration::from_secs(120);

fn multiset(records: &[Vec<u8>]) -> BTreeMap<&[u8], usize> {
    let mut counts = BTreeMap::new();
    for r in records {
        *counts.entry(r.as_slice()).or_default() += 1;
    }
    counts
}

/// What `got` has that `want` has not (records, as text, at most three), and the reverse.
fn difference(got: &[Vec<u8>], want: &[Vec<u8>]) -> String {
    let (got, want) = (multiset(got), multiset(want));
    let show = |a: &BTreeMap<&[u8], usize>, b: &BTreeMap<&[u8], usize>| {
        a.iter()
            .filter(|(r, n)| b.get(*r).copied().unwrap_or(0) < **n)
            .take(3)
            .map(|(r, n)| format!("{} ×{n}", String::from_utf8_lossy(r)))
            .collect::<Vec<_>>()
            .join("; ")
    };
    format!("extra or repeated: [{}]; missing: [{}]", show(&got, &want), show(&want, &got))
}

impl SourceCase {
    /// Runs the source once with `workers` into a fresh capture; returns what it delivered.
    fn run(
        &self,
        registry: &Registry,
        data_dir: &std::path::Path,
        workers: usize,
        when: StopWhen,
    ) -> Result<Vec<Vec<u8>>, String> {
        self.run_table(&self.table, registry, data_dir, workers, when).map(|(records, _)| records)
    }

    /// Runs the source with the keys `table`; returns what it delivered and the errors the run's
    /// outcome names for its sources.
    fn run_table(
        &self,
        table: &str,
        registry: &Registry,
        data_dir: &std::path::Path,
        workers: usize,
        when: StopWhen,
    ) -> Result<(Vec<Vec<u8>>, Vec<String>), String> {
        let capture = format!("source-{:016x}", rand::random::<u64>());
        let toml = format!(
            "[pipeline]\nname = \"conformance\"\ndata_dir = \"{}\"\nstop_timeout_s = 60\n\n[sources.in]\n{}\n\n\
             [sinks.capture]\ntype = \"{}\"\ninputs = [\"in\"]\nname = \"{capture}\"\nformat = \"ndjson\"\n\
             buffer = {{ size_mb = 1, interval_s = 1 }}\n",
            data_dir.display(),
            table,
            capture::TYPE
        );
        let plan = plan_from_str(&toml, registry).map_err(|d| d.to_string())?;
        let metrics = Arc::new(plan.new_metrics());
        let counted = Arc::clone(&metrics);
        let mut options = RunOptions::for_plan(&plan);
        options.workers = workers;
        if when == StopWhen::AfterFirst && self.produce.is_none() {
            // A finite source may read only a few batches ahead of its deliveries, so the first
            // run of the resume check is stopped before it has read everything however fast it
            // reads (at 256 MiB it could read all before its first delivery on a busy machine).
            options.max_inflight_bytes = RESUME_INFLIGHT_BYTES;
        }
        let stop = options.stop.clone();
        let prepared = prepare(&plan, &options, metrics).map_err(|e| e.to_string())?;
        let running = std::thread::spawn(move || prepared.run());
        let wait_for = |n: usize| {
            let started = Instant::now();
            while capture::count(&capture) < n {
                if started.elapsed() > PATIENCE || running.is_finished() {
                    return Err(format!("{} of {n} records delivered", capture::count(&capture)));
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            Ok(())
        };
        let produced = match (when, &self.produce) {
            (StopWhen::Never | StopWhen::AtOnce | StopWhen::AfterMore(_), _) | (_, None) => Ok(()),
            (_, Some(produce)) => produce(),
        };
        let waited = match when {
            _ if produced.is_err() => Ok(()),
            StopWhen::AfterAll => wait_for(self.expected.len()),
            StopWhen::AfterFirst => wait_for(1),
            StopWhen::AfterMore(n) => wait_for(n).map(|()| std::thread::sleep(SETTLE)),
            StopWhen::Never | StopWhen::AtOnce | StopWhen::AfterProducing => Ok(()),
        };
        if when != StopWhen::Never || produced.is_err() || waited.is_err() {
            stop.stop();
        }
        let report = running.join().map_err(|_| "the run panicked".to_string())?;
        produced.map_err(|e| format!("producing: {e}"))?;
        waited?;
        let report = report.map_err(|e| e.to_string())?;
        if report.abandoned {
            return Err("the run stopped with deliveries left undone".into());
        }
        let source_errors = counted.source_errors.lock().map(|e| e.clone()).unwrap_or_default();
        Ok((capture::records(&capture), source_errors))
    }
}

/// Runs every check `case` allows; the first failure is the error.
pub fn conformance(registry: Registry, case: &SourceCase) -> Result<Report, String> {
    let registry = capture::with_capture(registry);
    let stream = case.produce.is_some();
    let mut report = Report::default();
    let mut expected = case.expected.clone();
    expected.sort();

    for workers in [1, 2, 4] {
        let when = if stream { StopWhen::AfterAll } else { StopWhen::Never };
        let dir = case.dir.join(format!("exactly-once-{workers}"));
        let mut got = case.run(&registry, &dir, workers, when).map_err(|e| format!("{workers} workers: {e}"))?;
        got.sort();
        if got != expected {
            return Err(format!("{workers} workers: {}", difference(&got, &expected)));
        }
        report.passed.push(Check::ExactlyOnce { workers });
    }

    match &case.unreadable {
        Some((table, readable)) => {
            let mut readable = readable.clone();
            readable.sort();
            for workers in [1, 2, 4] {
                let dir = case.dir.join(format!("unreadable-{workers}"));
                let (mut got, errors) = case
                    .run_table(table, &registry, &dir, workers, StopWhen::Never)
                    .map_err(|e| format!("an unreadable input, {workers} workers: {e}"))?;
                got.sort();
                if got != readable {
                    return Err(format!(
                        "an unreadable input, {workers} workers: the readable ones not read whole: {}",
                        difference(&got, &readable)
                    ));
                }
                if errors.is_empty() {
                    return Err(format!("an unreadable input, {workers} workers: the run's outcome does not name it"));
                }
                report.passed.push(Check::GivesUpAnUnreadableInput { workers });
            }
        }
        // A stream source reads one input (a listener, a stream): there is none to give up.
        None if stream => {}
        None => report
            .skipped
            .push((Check::GivesUpAnUnreadableInput { workers: 1 }, "the case names no unreadable input".into())),
    }

    let when = if stream { StopWhen::AfterProducing } else { StopWhen::AtOnce };
    let got = case.run(&registry, &case.dir.join("drain"), 2, when).map_err(|e| format!("drain on stop: {e}"))?;
    let (got_counts, want_counts) = (multiset(&got), multiset(&expected));
    let surplus = got_counts.iter().any(|(r, n)| want_counts.get(r).copied().unwrap_or(0) < *n);
    if surplus || (stream && case.acknowledges && got.len() != expected.len()) {
        return Err(format!("drain on stop: {}", difference(&got, &expected)));
    }
    report.passed.push(Check::DrainOnStop);

    if !case.keeps_its_place {
        report.skipped.push((Check::Resume, "the source does not keep its place".into()));
        return Ok(report);
    }
    let dir = case.dir.join("resume");
    let first = case.run(&registry, &dir, 2, StopWhen::AfterFirst).map_err(|e| format!("resume, first run: {e}"))?;
    if !stream && first.len() >= expected.len() {
        return Err("resume: the first run read everything before it was stopped; give the case more input".into());
    }
    let when = match (stream, case.acknowledges) {
        (false, _) => StopWhen::Never,
        (true, true) => StopWhen::AtOnce,
        (true, false) => StopWhen::AfterMore(expected.len().saturating_sub(first.len())),
    };
    let second = case.run(&registry, &dir, 2, when).map_err(|e| format!("resume, second run: {e}"))?;
    let both: Vec<Vec<u8>> = first.iter().chain(&second).cloned().collect();
    let both_counts = multiset(&both);
    if want_counts.iter().any(|(r, n)| both_counts.get(r).copied().unwrap_or(0) < *n) {
        return Err(format!("resume: records lost across the two runs: {}", difference(&both, &expected)));
    }
    let (first_counts, second_counts) = (multiset(&first), multiset(&second));
    let again: usize = first_counts.iter().map(|(r, n)| (*n).min(second_counts.get(r).copied().unwrap_or(0))).sum();
    if again >= first.len() {
        return Err(format!(
            "resume: the second run delivered again all {again} records of the first: it started over"
        ));
    }
    report.passed.push(Check::Resume);
    Ok(report)
}

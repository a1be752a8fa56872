//! Running the planned cases: alternately, each through `sluice measure`, each output checked
//! before its run counts; a failed baseline is a note, a failed sluice case the end of the bench.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;

use sluice_connectors::load;
use sluice_connectors::measure::{MeasuredCommand, Usage, measure_via};
use sluice_connectors::synth::Profile;

use super::check::{files, verify};
use super::plan::{Drive, INGEST_CLIENTS, Planner};
use super::report::{machine, write_results};
use super::stats::{BenchReport, CaseResult, ComparisonResult, case_result};
use super::tools::{command_line, venv_dirs};
use super::workload::workload;
use super::{BenchError, BenchOptions, SCENARIOS, io_error};

/// Runs the bench and writes `results.{md,json,svg}` to `options.out`; `progress` gets a line per run.
pub fn run_bench(options: &BenchOptions, mut progress: impl FnMut(&str)) -> Result<BenchReport, BenchError> {
    for s in &options.scenarios {
        if !SCENARIOS.contains(&s.as_str()) {
            return Err(BenchError::UnknownScenario(s.clone()));
        }
    }
    let wants = |s: &str| options.scenarios.iter().any(|x| x == s);
    let started = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    // Every path handed to a tool is absolute: some (rsyslogd) change directory when they start.
    let out =
        std::path::absolute(&options.out).map_err(io_error(format!("cannot resolve {}", options.out.display())))?;
    let options = &BenchOptions { out: out.clone(), ..options.clone() };
    let work = out.join("work");
    let marker = out.join(REMOVED_MARKER);
    if let Some(wait) = wait_after_removal(&marker, std::time::SystemTime::now()) {
        progress(&format!(
            "waiting {} s: the last invocation removed its outputs {} s ago, and ext4 without a journal \
             skips inodes freed in the last minute when it makes files (the runs would pay for it)",
            wait.as_secs(),
            (FREED_INODES_SETTLE - wait).as_secs()
        ));
        std::thread::sleep(wait);
    }
    std::fs::create_dir_all(&work).map_err(io_error(format!("cannot create {}", work.display())))?;
    // The outputs are removed however the bench ends; the generated inputs stay as a cache.
    let _work = WorkFolder { path: work.clone(), marker };
    let data = out.join("data");
    let mut planner = Planner {
        options,
        work,
        dirs: venv_dirs(&options.sluice),
        cases: Vec::new(),
        comparisons: Vec::new(),
        notes: Vec::new(),
    };
    progress("generating the workload");
    if wants("gzip")
        || wants("zstd")
        || wants("transform")
        || wants("partition")
        || wants("postgres")
        || wants("cluster")
    {
        let ct = workload(&data, Profile::Cloudtrail, 7, options.size_bytes)?;
        if wants("gzip") {
            planner.gzip(&ct)?;
        }
        if wants("zstd") {
            planner.zstd(&ct)?;
        }
        if wants("transform") {
            planner.transform(&ct)?;
        }
        if wants("partition") {
            planner.partition(&ct)?;
        }
        if wants("postgres") {
            planner.postgres(&ct)?;
        }
        if wants("cluster") {
            planner.cluster(&ct)?;
        }
    }
    if wants("parquet") || wants("enrich") || wants("scale") || wants("dedup") {
        let cf = workload(&data, Profile::Cloudfront, 1, options.size_bytes)?;
        if wants("parquet") {
            planner.parquet(&cf)?;
        }
        if wants("enrich") {
            planner.enrich(&cf)?;
        }
        if wants("scale") || wants("dedup") {
            let big = workload(&data, Profile::Cloudfront, 1, options.size_bytes * 10)?;
            if wants("scale") {
                planner.scale(&cf, &big)?;
            }
            if wants("dedup") {
                planner.dedup(&cf, &big)?;
            }
        }
    }
    if wants("parse") {
        // VPC Flow Logs' text is about 0.43 of the generator's NDJSON: the text is about `--size`.
        let flows = workload(&data, Profile::Vpcflow, 3, options.size_bytes * 23 / 10)?;
        planner.parse(&super::workload::vpc_flow_text(&flows)?)?;
    }
    if wants("tables") {
        progress("timing reference-table reloads");
        let figures = super::tables::reload_figures(&planner.work, 1_000_000, 10, options.threads)?;
        planner.notes.push(figures);
    }
    let receiver = if wants("http") || wants("opensearch") {
        let receiver = load::Receiver::start().map_err(io_error("cannot start the HTTP receiver"))?;
        let ct = workload(&data, Profile::Cloudtrail, 7, options.size_bytes)?;
        if wants("http") {
            planner.http(&ct, receiver.port)?;
        }
        if wants("opensearch") {
            planner.opensearch(&ct, receiver.port)?;
        }
        Some(receiver)
    } else {
        None
    };
    let bodies = load::bodies("bench").map_err(io_error("cannot prepare the ingest requests"))?;
    if wants("ingest") {
        planner.ingest(&bodies)?;
    }
    let Planner { cases, comparisons, mut notes, work, .. } = planner;
    let spent = work.join("spent");

    let mut usages: Vec<Vec<Usage>> = vec![Vec::new(); cases.len()];
    let mut failed = vec![false; cases.len()];
    for run in 0..options.runs {
        for ((case, runs), failed) in cases.iter().zip(usages.iter_mut()).zip(failed.iter_mut()) {
            if *failed {
                continue;
            }
            progress(&format!("run {}/{}: {} / {}", run + 1, options.runs, case.scenario, case.name));
            set_aside(&case.output, &spent);
            let received = receiver.as_ref().map(|r| {
                r.records.store(0, std::sync::atomic::Ordering::SeqCst);
                Arc::clone(&r.records)
            });
            let expected = case.input.records;
            let mut run_case = || -> io::Result<sluice_connectors::measure::Measured> {
                match &case.drive {
                    Drive::Batch => measure_via(&options.sluice, &case.command),
                    Drive::BatchIntoReceiver => measure_via(&options.sluice, &case.command).and_then(|m| {
                        let got = received.as_ref().map_or(0, |r| r.load(std::sync::atomic::Ordering::SeqCst));
                        if got == expected {
                            Ok(m)
                        } else {
                            Err(io::Error::other(format!("the receiver got {got} of {expected} records")))
                        }
                    }),
                    Drive::Ingest(server) => {
                        let requests = Arc::new(load::requests(&bodies, server.port, server.signed)?);
                        measure_until(&options.sluice, &case.command, |_| {
                            load::wait_for(server.port)?;
                            let outcome = load::send(
                                server.port,
                                &requests,
                                INGEST_CLIENTS,
                                load::Until::Requests(server.requests),
                            )?;
                            if outcome.throttled_requests > 0 {
                                notes.push(format!(
                                    "ingest: {} of {} requests to `{}` were throttled (not counted, not retried)",
                                    outcome.throttled_requests, server.requests, case.name
                                ));
                            }
                            Ok(Some(outcome.elapsed))
                        })
                    }
                    Drive::UntilFile { config, text, done } => {
                        if let Some(dir) = config.parent() {
                            std::fs::create_dir_all(dir)?;
                        }
                        std::fs::write(config, text)?;
                        measure_until(&options.sluice, &case.command, |running| {
                            let started = std::time::Instant::now();
                            while std::fs::metadata(done).map_or(true, |m| m.len() == 0) {
                                running()?;
                                if started.elapsed() > std::time::Duration::from_secs(600) {
                                    return Err(io::Error::other("the end of the input was not reached in 10 minutes"));
                                }
                                std::thread::sleep(std::time::Duration::from_millis(5));
                            }
                            Ok(None)
                        })
                        .and_then(|measured| {
                            // A daemon that failed half-way would look fast: its output must hold
                            // every record.
                            let out = config.with_file_name("out.gz");
                            let gz = std::fs::read(&out)?;
                            let text = sluice_engine::compression::decompress(
                                sluice_engine::compression::Compression::Gzip,
                                &gz,
                            )?;
                            let lines = memchr::memchr_iter(b'\n', &text).count() as u64;
                            if lines == expected {
                                Ok(measured)
                            } else {
                                Err(io::Error::other(format!("{} holds {lines} of {expected} records", out.display())))
                            }
                        })
                    }
                    Drive::UntilReceived { config, text, persist } => {
                        // A daemon's memory of what it read (a file, or a folder) starts empty.
                        let _ = std::fs::remove_file(persist);
                        let _ = std::fs::remove_dir_all(persist);
                        std::fs::write(config, text)?;
                        let counter = received.clone().unwrap_or_default();
                        measure_until(&options.sluice, &case.command, |running| {
                            let started = std::time::Instant::now();
                            while counter.load(std::sync::atomic::Ordering::SeqCst) < expected {
                                running()?;
                                if started.elapsed() > std::time::Duration::from_secs(600) {
                                    return Err(io::Error::other(format!(
                                        "the receiver got {} of {expected} records in 10 minutes",
                                        counter.load(std::sync::atomic::Ordering::SeqCst)
                                    )));
                                }
                                std::thread::sleep(std::time::Duration::from_millis(5));
                            }
                            Ok(Some(started.elapsed()))
                        })
                    }
                }
            };
            // A run counts only if its output holds what it read.
            let outcome = run_case().and_then(|measured| {
                if measured.code == Some(0) {
                    verify(&case.check, &case.output, expected)?;
                }
                Ok(measured)
            });
            set_aside(&case.output, &spent);
            let failure = match outcome {
                Ok(measured) if measured.code == Some(0) => {
                    runs.push(measured.usage);
                    continue;
                }
                Ok(measured) => format!("exited with {:?}", measured.code),
                Err(e) => e.to_string(),
            };
            if case.sluice {
                return Err(BenchError::CaseFailed {
                    case: case.name.clone(),
                    why: failure,
                    command: command_line(&case.command),
                });
            }
            // A baseline that fails is a noted failure of that case, never the end of the bench.
            notes.push(format!(
                "{}: baseline `{}` failed on run {} ({failure}); left out. Command: {}",
                case.scenario,
                case.name,
                run + 1,
                command_line(&case.command)
            ));
            *failed = true;
        }
    }

    let results: Vec<CaseResult> = cases
        .iter()
        .zip(usages)
        .zip(&failed)
        .filter(|(_, failed)| !**failed)
        .map(|((case, runs), _)| case_result(case, runs))
        .collect();
    let by_name: BTreeMap<(&str, &str), &CaseResult> =
        results.iter().map(|r| ((r.scenario.as_str(), r.case.as_str()), r)).collect();
    let comparisons = comparisons
        .iter()
        .filter_map(|c| {
            let (a, b) = (by_name.get(&(c.scenario, c.a.as_str()))?, by_name.get(&(c.scenario, c.b.as_str()))?);
            Some(ComparisonResult {
                scenario: c.scenario.to_string(),
                case: c.a.clone(),
                against: c.b.clone(),
                speed_ratio: b.wall_s.median / a.wall_s.median.max(1e-9),
                memory_ratio: a.peak_rss_mib.median / b.peak_rss_mib.median.max(1e-9),
                meaning: c.meaning.to_string(),
                about: c.about,
            })
        })
        .collect();
    let report = BenchReport {
        started,
        machine: machine(),
        command: format!(
            "sluice bench --size {} --runs {} --scenario {}",
            options.size_bytes,
            options.runs,
            options.scenarios.join(" --scenario ")
        ),
        runs: options.runs,
        cases: results,
        comparisons,
        notes,
    };
    write_results(&options.out, &report)?;
    Ok(report)
}

/// Starts a case that does not end by itself through `sluice measure`, runs `until` (the load, or
/// waiting for the receiver), stops the process with SIGTERM; the wall time is what `until`
/// returns, or the process's (start to exit) when it returns none.
pub(crate) fn measure_until(
    sluice: &Path,
    command: &MeasuredCommand,
    until: impl FnOnce(&mut dyn FnMut() -> io::Result<()>) -> io::Result<Option<std::time::Duration>>,
) -> io::Result<sluice_connectors::measure::Measured> {
    let report = tempfile::NamedTempFile::new()?;
    let mut child = Command::new(sluice)
        .args([
            "measure".as_ref(),
            "--report".as_ref(),
            report.path().as_os_str(),
            "--".as_ref(),
            command.program.as_os_str(),
        ])
        .args(&command.args)
        .stdout(Stdio::null())
        .spawn()?;
    let wall = {
        // What `until` calls while it waits: an error as soon as the process has exited.
        let mut running = || match child.try_wait()? {
            None => Ok(()),
            Some(status) => Err(io::Error::other(format!("it exited ({status}) before the end of its input"))),
        };
        until(&mut running)
    };
    // The measured process is the only child of `sluice measure`.
    let children = std::fs::read_to_string(format!("/proc/{0}/task/{0}/children", child.id()))?;
    for pid in children.split_whitespace() {
        Command::new("kill").args(["-TERM", pid]).status()?;
    }
    child.wait()?;
    let wall = wall?;
    let text = std::fs::read_to_string(report.path())?;
    let mut measured: sluice_connectors::measure::Measured =
        serde_json::from_str(&text).map_err(|e| io::Error::other(format!("bad measure report: {e}")))?;
    if let Some(wall) = wall {
        measured.usage.wall = wall;
    }
    Ok(measured)
}

/// Moves a run's output (if any) into `spent`, which goes with the work folder when the bench ends.
/// Outputs are not deleted between runs because deleting costs the next run: ext4 without a
/// journal (as on these machines) skips inodes freed in the last minutes when it allocates new
/// ones, so a run that creates many files and folders (a partitioned sink: hundreds of objects)
/// would pay for the cleanup of the runs before it, measured at 0.3-0.7 s of system time per run.
fn set_aside(output: &Path, spent: &Path) {
    if !output.exists() {
        return;
    }
    let aside = spent.join(uuid::Uuid::new_v4().to_string());
    let moved = std::fs::create_dir_all(spent).and_then(|()| std::fs::rename(output, &aside));
    if moved.is_err() {
        let _ = std::fs::remove_dir_all(output);
    }
}

/// Where an invocation notes when it removed many files (`<out>/.outputs-removed`: seconds since
/// the Unix epoch), so the next one can wait for ext4 to stop skipping their inodes.
const REMOVED_MARKER: &str = ".outputs-removed";

/// How long after removing [`MANY_FILES`] an invocation waits before its runs: ext4 without a
/// journal (as on these machines) passes over inodes freed in the last 60 s when it allocates new
/// ones (`recently_deleted` in fs/ext4/ialloc.c), so a partitioned run started 20 s after the
/// previous invocation removed its outputs took 1.16 s against 0.81 s a minute later (README:
/// Performance, footnote 18). Five seconds more for the removal's own writes to reach the disk.
const FREED_INODES_SETTLE: std::time::Duration = std::time::Duration::from_secs(65);

/// Files removed at once from which the next invocation waits (the partition scenario leaves
/// 1,020 a run, in ~2,400 folders; the others a few).
const MANY_FILES: usize = 1_000;

/// How long to wait before the runs, given `marker` (written by the previous invocation's
/// [`WorkFolder`]) and the time now: nothing if it removed few files or long enough ago.
fn wait_after_removal(marker: &Path, now: std::time::SystemTime) -> Option<std::time::Duration> {
    let text = std::fs::read_to_string(marker).ok()?;
    let removed = std::time::UNIX_EPOCH + std::time::Duration::from_secs(text.trim().parse().ok()?);
    let since = now.duration_since(removed).unwrap_or_default();
    FREED_INODES_SETTLE.checked_sub(since).filter(|wait| !wait.is_zero())
}

/// The bench's work folder (pipelines, outputs set aside), removed when dropped; when it held
/// [`MANY_FILES`] or more, the time is noted in `marker` for the next invocation.
struct WorkFolder {
    path: PathBuf,
    marker: PathBuf,
}

impl Drop for WorkFolder {
    fn drop(&mut self) {
        let many = files(&self.path).is_ok_and(|files| files.len() >= MANY_FILES);
        let _ = std::fs::remove_dir_all(&self.path);
        if many {
            let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
            let _ = std::fs::write(&self.marker, now.as_secs().to_string());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn a_run_waits_out_the_minute_after_many_files_were_removed_and_no_longer() {
        let dir = tempfile::tempdir().expect("temporary folder");
        let work = dir.path().join("work");
        let marker = dir.path().join(REMOVED_MARKER);
        // A few files: removed without a note.
        std::fs::create_dir_all(work.join("spent")).expect("folders");
        std::fs::write(work.join("spent/object"), b"x").expect("file");
        drop(WorkFolder { path: work.clone(), marker: marker.clone() });
        assert!(!work.exists());
        assert_eq!(wait_after_removal(&marker, std::time::SystemTime::now()), None);
        // A partitioned run's worth: noted, and the next invocation waits for the rest of the minute.
        for i in 0..MANY_FILES {
            let folder = work.join(format!("spent/p={i}"));
            std::fs::create_dir_all(&folder).expect("folders");
            std::fs::write(folder.join("object"), b"x").expect("file");
        }
        drop(WorkFolder { path: work.clone(), marker: marker.clone() });
        assert!(!work.exists());
        let noted: u64 = std::fs::read_to_string(&marker).expect("marker").parse().expect("seconds");
        let removed = UNIX_EPOCH + Duration::from_secs(noted);
        assert_eq!(wait_after_removal(&marker, removed + Duration::from_secs(20)), Some(Duration::from_secs(45)));
        assert_eq!(wait_after_removal(&marker, removed + FREED_INODES_SETTLE), None);
        assert_eq!(wait_after_removal(&marker, removed + Duration::from_secs(3600)), None);
        // A marker from the future (a clock set back) waits the whole settle time, not forever.
        assert_eq!(wait_after_removal(&marker, removed - Duration::from_secs(30)), Some(FREED_INODES_SETTLE));
    }
}

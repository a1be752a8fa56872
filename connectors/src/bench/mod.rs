//! `sluice bench`: sluice beside the tools users would otherwise use, on the same generated data, in
//! the same invocation, so every figure is read as a ratio on the same (shared, noisy) machine.
//!
//! The workload is generated once per size (`sluice gen`'s synthesizer, fixed seeds: CloudTrail-style
//! records for the compression scenarios, CloudFront-style for Parquet) under `<out>/data`. Each
//! scenario is a list of cases, sluice runs and baselines, each a process measured through
//! `sluice measure` (wall, CPU, peak RSS of that process alone); the `ingest` cases are servers,
//! started, sent PutRecordBatch load from this process, and stopped, their wall time being the load's. Runs alternate between the cases
//! (A B C A B C …) so a noisy neighbour hits all of them alike; the report gives each case's median
//! and spread (min–max), and each comparison's ratio of medians. Results go to `<out>` as
//! `results.md`, `results.json` and `results.svg`.
//!
//! Guarantees: a baseline that is not installed, or a scenario the harness cannot run yet, is listed
//! in the report's notes with the reason, never dropped silently; a case whose process fails stops
//! the bench with its exit code (a failed run has no meaningful time). No figure is asserted.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fmt::Write as _;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;

use serde::Serialize;

pub mod load;

use crate::measure::{MeasuredCommand, Usage, measure_via};
use crate::synth::{Profile, write_ndjson};

/// Every scenario the harness knows, in report order.
pub const SCENARIOS: &[&str] = &["gzip", "zstd", "parquet", "http", "ingest", "scale"];

/// The CloudFront schema the Parquet cases declare (the same file as `pipelines/schemas`).
const CLOUDFRONT_SCHEMA: &str = include_str!("../../../pipelines/schemas/cloudfront.toml");

/// What to run.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// Scenario names (from [`SCENARIOS`]).
    pub scenarios: Vec<String>,
    /// Input size in bytes (the `scale` scenario also uses ten times this).
    pub size_bytes: u64,
    /// Where data, work files and results go.
    pub out: PathBuf,
    /// Runs of each case.
    pub runs: usize,
    /// The `sluice` binary to measure (and to measure with).
    pub sluice: PathBuf,
    /// Threads for sluice and for the baselines that take a thread count.
    pub threads: usize,
}

/// Why the bench could not run.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// Reading or writing the work folder, or starting a process, failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The error.
        source: io::Error,
    },
    /// A sluice case failed (a baseline that fails is noted and left out instead).
    #[error("case `{case}` failed ({why}); run it by hand to see why: {command}")]
    CaseFailed {
        /// The case.
        case: String,
        /// How it failed: its exit code, or why it could not be measured.
        why: String,
        /// The command line.
        command: String,
    },
    /// An unknown scenario name.
    #[error("unknown scenario `{0}`; the scenarios are {list}", list = SCENARIOS.join(", "))]
    UnknownScenario(String),
}

fn io_error(what: impl Into<String>) -> impl FnOnce(io::Error) -> BenchError {
    let what = what.into();
    move |source| BenchError::Io { what, source }
}

/// One generated input file.
#[derive(Debug, Clone, Serialize)]
pub struct Workload {
    /// The file.
    pub path: PathBuf,
    /// Its size.
    pub bytes: u64,
    /// Its records (lines).
    pub records: u64,
}

/// One thing measured: a sluice run or a baseline.
#[derive(Debug, Clone)]
struct Case {
    scenario: &'static str,
    name: String,
    /// Whether this is sluice (else a baseline).
    sluice: bool,
    command: MeasuredCommand,
    input: Workload,
    /// Emptied before each run.
    output: PathBuf,
    /// How the process is run to its end.
    drive: Drive,
}

/// How a case's process is run and when its run ends.
#[derive(Debug, Clone)]
enum Drive {
    /// It ends by itself; its wall time is the process's.
    Batch,
    /// It ends by itself, and the receiver must then have counted its input's records.
    BatchIntoReceiver,
    /// A server sent PutRecordBatch load, then stopped.
    Ingest(ServerLoad),
    /// A shipper that never ends by itself: stopped once the receiver counted its input's records;
    /// its wall time is from start to that moment. `text` is written to `config` and `persist` (its
    /// state file) removed before each run, so it reads the file from its start.
    UntilReceived { config: PathBuf, text: String, persist: PathBuf },
    /// A daemon that never ends by itself: `text` is written to `config` (in the emptied output
    /// folder), and once `done` is written it is stopped with SIGTERM; its wall time is the
    /// process's, start to exit (it finishes its output file on the way out).
    UntilFile { config: PathBuf, text: String, done: PathBuf },
}

/// The last line of rsyslog's copy of the input, which tells that it read everything.
const END_MARKER: &str = "SLUICE-BENCH-END-OF-INPUT";

/// A server case: started, sent `requests` PutRecordBatch requests, stopped with SIGTERM. Its wall
/// time is the load's (first request to last answer); CPU and peak RSS are the whole process's.
#[derive(Debug, Clone, Copy)]
struct ServerLoad {
    port: u16,
    signed: bool,
    requests: usize,
}

/// Concurrent clients of the `ingest` scenario.
const INGEST_CLIENTS: usize = 8;

/// A ratio the report gives: `a` against `b`.
#[derive(Debug, Clone)]
struct Comparison {
    scenario: &'static str,
    a: String,
    b: String,
    /// What the ratio means, for the report.
    meaning: &'static str,
    /// Which ratio the comparison is about.
    about: About,
}

/// Which of a comparison's ratios it is about (the report shows the other as `—`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum About {
    /// Speed and memory alike (sluice against a baseline).
    Both,
    /// Speed only (a speed-up).
    Speed,
    /// Memory only (growth with the input).
    Memory,
}

/// The figures of one case over its runs.
#[derive(Debug, Clone, Serialize)]
pub struct CaseResult {
    /// Scenario.
    pub scenario: String,
    /// Case name, e.g. `sluice gzip` or `pigz -6 -p 2`.
    pub case: String,
    /// Whether this is sluice.
    pub sluice: bool,
    /// Input bytes and records.
    pub input_bytes: u64,
    /// Input records.
    pub input_records: u64,
    /// Each run's figures, in run order.
    pub runs: Vec<Usage>,
    /// Median and spread of wall seconds.
    pub wall_s: Stat,
    /// Median and spread of CPU seconds.
    pub cpu_s: Stat,
    /// Median and spread of input MB/s (10^6 bytes).
    pub mb_per_s: Stat,
    /// Median and spread of input records/s.
    pub records_per_s: Stat,
    /// Median and spread of peak RSS in MiB.
    pub peak_rss_mib: Stat,
}

/// Median, minimum and maximum.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Stat {
    /// Median.
    pub median: f64,
    /// Smallest.
    pub min: f64,
    /// Largest.
    pub max: f64,
}

impl Stat {
    fn of(mut values: Vec<f64>) -> Stat {
        values.sort_by(f64::total_cmp);
        let n = values.len();
        let median = match n {
            0 => 0.0,
            _ if n % 2 == 1 => values[n / 2],
            _ => (values[n / 2 - 1] + values[n / 2]) / 2.0,
        };
        Stat { median, min: values.first().copied().unwrap_or(0.0), max: values.last().copied().unwrap_or(0.0) }
    }
}

/// One comparison's ratios.
#[derive(Debug, Clone, Serialize)]
pub struct ComparisonResult {
    /// Scenario.
    pub scenario: String,
    /// The case compared (usually sluice).
    pub case: String,
    /// What it is compared with.
    pub against: String,
    /// Median wall of `against` ÷ median wall of `case`: above 1, `case` is faster.
    pub speed_ratio: f64,
    /// Median peak RSS of `case` ÷ that of `against`: below 1, `case` uses less memory.
    pub memory_ratio: f64,
    /// What the ratio means.
    pub meaning: String,
    /// Which ratio it is about.
    pub about: About,
}

/// Everything one `sluice bench` found.
#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    /// When it ran (RFC 3339, UTC).
    pub started: String,
    /// The machine: cores, memory, kernel.
    pub machine: String,
    /// The command line that reproduces it.
    pub command: String,
    /// Runs per case.
    pub runs: usize,
    /// Every case.
    pub cases: Vec<CaseResult>,
    /// Every ratio.
    pub comparisons: Vec<ComparisonResult>,
    /// Baselines and scenarios skipped, with why.
    pub notes: Vec<String>,
}

/// Parses `200MB`, `50MiB`, `2GB`, `1048576`.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let number: f64 = number.parse().map_err(|_| format!("`{text}` is not a size; e.g. 200MB, 2GB, 512KiB"))?;
    let scale = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "kb" | "k" => 1e3,
        "mb" | "m" => 1e6,
        "gb" | "g" => 1e9,
        "kib" => 1024.0,
        "mib" => 1024.0 * 1024.0,
        "gib" => 1024.0 * 1024.0 * 1024.0,
        other => return Err(format!("unknown size unit `{other}` in `{text}`; use B, KB, MB, GB, KiB, MiB or GiB")),
    };
    Ok((number * scale) as u64)
}

/// Generates (or reuses) `<data>/<profile>-<bytes>.ndjson` of about `bytes`.
fn workload(data: &Path, profile: Profile, seed: u64, bytes: u64) -> Result<Workload, BenchError> {
    let name = format!("{profile:?}").to_lowercase();
    let path = data.join(format!("{name}-{bytes}.ndjson"));
    let count = data.join(format!("{name}-{bytes}.records"));
    if let (Ok(meta), Ok(records)) = (std::fs::metadata(&path), std::fs::read_to_string(&count))
        && let Ok(records) = records.trim().parse()
    {
        return Ok(Workload { path, bytes: meta.len(), records });
    }
    std::fs::create_dir_all(data).map_err(io_error(format!("cannot create {}", data.display())))?;
    // The mean record size from a sample, then as many records as make `bytes`.
    let mut sample = Vec::new();
    write_ndjson(profile, seed, 1000, &mut sample).map_err(io_error("cannot generate records"))?;
    let records = (bytes * 1000 / sample.len().max(1) as u64).max(1);
    let file = std::fs::File::create(&path).map_err(io_error(format!("cannot create {}", path.display())))?;
    let mut writer = io::BufWriter::new(file);
    write_ndjson(profile, seed, records, &mut writer).map_err(io_error("cannot generate records"))?;
    writer.flush().map_err(io_error(format!("cannot write {}", path.display())))?;
    std::fs::write(&count, records.to_string()).map_err(io_error("cannot write the record count"))?;
    let bytes = std::fs::metadata(&path).map_err(io_error("cannot read the workload"))?.len();
    Ok(Workload { path, bytes, records })
}

/// A program on the PATH, or in one of the repository's virtualenvs (DuckDB CLI, pyarrow).
fn find_program(name: &str, extra_dirs: &[PathBuf]) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path).chain(extra_dirs.iter().cloned()).map(|d| d.join(name)).find(|p| p.is_file())
}

/// The `target` folders where `scripts/test.sh` puts the baselines: the working directory's and the
/// binary's (target/<profile>/sluice).
fn venv_roots(sluice: &Path) -> Vec<PathBuf> {
    let mut roots = vec![PathBuf::from("target")];
    if let Some(target) = sluice.parent().and_then(Path::parent) {
        roots.push(target.to_path_buf());
    }
    roots
}

/// The virtualenvs `scripts/test.sh` makes.
fn venv_dirs(sluice: &Path) -> Vec<PathBuf> {
    venv_roots(sluice).iter().flat_map(|t| ["bench-venv", "test-venv"].map(|v| t.join(v).join("bin"))).collect()
}

/// A Python that imports pyarrow.
fn python_with_pyarrow(dirs: &[PathBuf]) -> Option<PathBuf> {
    dirs.iter().map(|d| d.join("python")).chain([PathBuf::from("python3")]).find(|python| {
        Command::new(python)
            .args(["-c", "import pyarrow.json, pyarrow.parquet"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    })
}

fn shell_quote(p: &Path) -> String {
    format!("'{}'", p.display().to_string().replace('\'', "'\\''"))
}

/// `sh -c` running `line` (for baselines that write their output through a redirection).
fn shell(line: String) -> MeasuredCommand {
    MeasuredCommand::new("sh", ["-c".to_string(), line])
}

/// Builds every case and comparison of the chosen scenarios.
struct Planner<'a> {
    options: &'a BenchOptions,
    work: PathBuf,
    dirs: Vec<PathBuf>,
    cases: Vec<Case>,
    comparisons: Vec<Comparison>,
    notes: Vec<String>,
}

impl Planner<'_> {
    fn output(&self, scenario: &str, name: &str) -> PathBuf {
        let slug: String = name.chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '-' }).collect();
        self.work.join(format!("{scenario}-{slug}"))
    }

    /// A sluice case: a pipeline reading `input` into a `file://` sink with `sink_keys`.
    fn sluice(
        &mut self,
        scenario: &'static str,
        name: &str,
        input: &Workload,
        workers: usize,
        sink_keys: &str,
    ) -> Result<String, BenchError> {
        let output = self.output(scenario, name);
        let sink = format!("type = \"object_store\"\nurl = \"file://{}\"\n{sink_keys}", output.display());
        self.sluice_into(scenario, name, input, workers, &sink)
    }

    /// A sluice case: a pipeline reading `input` into the sink described by `sink` (its type and keys).
    fn sluice_into(
        &mut self,
        scenario: &'static str,
        name: &str,
        input: &Workload,
        workers: usize,
        sink: &str,
    ) -> Result<String, BenchError> {
        let output = self.output(scenario, name);
        let pipeline = self.work.join(format!("{}.toml", output.file_name().and_then(|n| n.to_str()).unwrap_or("p")));
        let toml = format!(
            "[pipeline]\nname = \"bench\"\ndata_dir = {data:?}\n\n[sources.in]\ntype = \"file\"\npaths = [{input:?}]\n\n\
             [sinks.out]\ninputs = [\"in\"]\n{sink}\n",
            data = self.work.join("state").display().to_string(),
            input = input.path.display().to_string(),
        );
        std::fs::write(&pipeline, toml).map_err(io_error(format!("cannot write {}", pipeline.display())))?;
        let command = MeasuredCommand::new(
            self.options.sluice.as_os_str(),
            [OsString::from("run"), "--quiet".into(), "--workers".into(), workers.to_string().into(), pipeline.into()],
        );
        self.cases.push(Case {
            scenario,
            name: name.to_string(),
            sluice: true,
            command,
            input: input.clone(),
            output,
            drive: Drive::Batch,
        });
        Ok(name.to_string())
    }

    /// A baseline, if its program is installed (otherwise a note).
    fn baseline(
        &mut self,
        scenario: &'static str,
        name: &str,
        program: &str,
        input: &Workload,
        line: impl FnOnce(&Path, &Path) -> String,
    ) -> Option<String> {
        let Some(found) = find_program(program, &self.dirs) else {
            self.notes.push(format!("{scenario}: baseline `{name}` skipped: `{program}` is not installed"));
            return None;
        };
        let output = self.output(scenario, name);
        let command = shell(line(&found, &output));
        self.cases.push(Case {
            scenario,
            name: name.to_string(),
            sluice: false,
            command,
            input: input.clone(),
            output,
            drive: Drive::Batch,
        });
        Some(name.to_string())
    }

    /// A command-line compressor (`program flags -c`) from the input into `<output>/out<extension>`.
    fn compressor(
        &mut self,
        scenario: &'static str,
        name: &str,
        program: &str,
        flags: &str,
        extension: &str,
        input: &Workload,
    ) -> Option<String> {
        self.baseline(scenario, name, program, input, |found, out| {
            format!(
                "mkdir -p {o} && {} {flags} -c < {} > {o}/out{extension}",
                shell_quote(found),
                shell_quote(&input.path),
                o = shell_quote(out)
            )
        })
    }

    fn compare(&mut self, scenario: &'static str, a: &str, b: Option<String>, meaning: &'static str) {
        self.compare_on(scenario, a, b, meaning, About::Both);
    }

    fn compare_on(&mut self, scenario: &'static str, a: &str, b: Option<String>, meaning: &'static str, about: About) {
        if let Some(b) = b {
            self.comparisons.push(Comparison { scenario, a: a.to_string(), b, meaning, about });
        }
    }

    fn text_sink(compression: &str) -> String {
        format!("format = \"ndjson\"\ncompression = \"{compression}\"\nbuffer = {{ size_mb = 64, interval_s = 900 }}\n")
    }

    fn parquet_sink(&self, codec: &str) -> Result<String, BenchError> {
        let schema = self.work.join("cloudfront-schema.toml");
        std::fs::write(&schema, CLOUDFRONT_SCHEMA).map_err(io_error("cannot write the Parquet schema"))?;
        Ok(format!(
            "format = \"parquet\"\ncompression = \"{codec}\"\nschema = {:?}\nparquet = {{ row_group_mb = 128 }}\nbuffer = {{ size_mb = 128, interval_s = 900 }}\n",
            schema.display().to_string()
        ))
    }

    fn gzip(&mut self, ct: &Workload) -> Result<(), BenchError> {
        let n = self.options.threads;
        let sluice = self.sluice("gzip", "sluice gzip", ct, n, &Self::text_sink("gzip"))?;
        let pigz = self.compressor("gzip", &format!("pigz -6 -p {n}"), "pigz", &format!("-6 -p {n}"), ".gz", ct);
        self.compare("gzip", &sluice, pigz, "same bytes compressed by pigz across all cores");
        let gzip = self.compressor("gzip", "gzip -6", "gzip", "-6", ".gz", ct);
        self.compare("gzip", &sluice, gzip, "single-threaded gzip");
        let rsyslog = self.rsyslog(ct)?;
        self.compare(
            "gzip",
            &sluice,
            rsyslog,
            "rsyslog tailing the file into a gzip file (imfile → omfile zipLevel=6)",
        );
        Ok(())
    }

    /// rsyslog reading `input` with imfile into a gzip-6 file, as a process from start to exit. Its
    /// copy of the input ends with a marker line that a rule writes to a `done` file (rsyslog keeps
    /// the order of one file's lines), after which it is stopped with SIGTERM and closes the gzip
    /// file. rsyslogd comes from the PATH or from Debian's package unpacked in
    /// target/bench-tools/rsyslog (Debian's rsyslog and syslog-ng packages conflict).
    fn rsyslog(&mut self, input: &Workload) -> Result<Option<String>, BenchError> {
        let unpacked: Vec<PathBuf> = venv_roots(&self.options.sluice)
            .iter()
            .map(|t| t.join("bench-tools/rsyslog"))
            .filter(|r| r.join("usr/sbin/rsyslogd").is_file())
            // rsyslogd changes directory: its module path must be absolute.
            .filter_map(|r| std::fs::canonicalize(r).ok())
            .collect();
        let (program, libraries) = match (find_program("rsyslogd", &[PathBuf::from("/usr/sbin")]), unpacked.first()) {
            (Some(p), _) => (p, None),
            (None, Some(root)) => (root.join("usr/sbin/rsyslogd"), Some(root.join("usr/lib/x86_64-linux-gnu"))),
            (None, None) => {
                self.notes.push(
                    "gzip: baseline `rsyslog` skipped: `rsyslogd` is not installed (scripts/test.sh unpacks Debian's package into target/bench-tools/rsyslog)".into(),
                );
                return Ok(None);
            }
        };
        let marked = input.path.with_extension("marked.ndjson");
        if !marked.exists() {
            std::fs::copy(&input.path, &marked).map_err(io_error("cannot copy the input for rsyslog"))?;
            let mut file =
                std::fs::OpenOptions::new().append(true).open(&marked).map_err(io_error("cannot mark the input"))?;
            file.write_all(format!("{END_MARKER}\n").as_bytes()).map_err(io_error("cannot mark the input"))?;
        }
        let name = "rsyslog imfile → omfile zipLevel=6".to_string();
        let output = self.output("gzip", "rsyslog");
        let (config, done) = (output.join("rsyslog.conf"), output.join("done"));
        let text = format!(
            "global(workDirectory=\"{out}\" maxMessageSize=\"1m\")\n\
             module(load=\"imfile\" mode=\"polling\" PollingInterval=\"1\")\n\
             input(type=\"imfile\" File=\"{input}\" Tag=\"bench\" ruleset=\"bench\" freshStartTail=\"off\")\n\
             template(name=\"raw\" type=\"string\" string=\"%msg%\\n\")\n\
             main_queue(queue.timeoutShutdown=\"600000\")\n\
             ruleset(name=\"bench\" queue.type=\"Direct\") {{\n\
               if $msg == \"{END_MARKER}\" then {{ action(type=\"omfile\" file=\"{done}\" template=\"raw\") stop }}\n\
               action(type=\"omfile\" file=\"{out}/out.gz\" template=\"raw\" zipLevel=\"6\" ioBufferSize=\"256k\")\n\
             }}\n",
            out = output.display(),
            input = marked.display(),
            done = done.display(),
        );
        let mut line = String::new();
        if let Some(libraries) = &libraries {
            line.push_str(&format!("LD_LIBRARY_PATH={} ", shell_quote(libraries)));
        }
        line.push_str(&format!(
            "exec {} -n -f {} -i {}",
            shell_quote(&program),
            shell_quote(&config),
            shell_quote(&output.join("pid"))
        ));
        if let Some(libraries) = &libraries {
            line.push_str(&format!(" -M {}", shell_quote(&libraries.join("rsyslog"))));
        }
        self.cases.push(Case {
            scenario: "gzip",
            name: name.clone(),
            sluice: false,
            command: shell(line),
            input: input.clone(),
            output,
            drive: Drive::UntilFile { config, text, done },
        });
        Ok(Some(name))
    }

    fn zstd(&mut self, ct: &Workload) -> Result<(), BenchError> {
        let n = self.options.threads;
        let sluice = self.sluice("zstd", "sluice zstd", ct, n, &Self::text_sink("zstd"))?;
        let zstd = self.compressor("zstd", &format!("zstd -3 -T{n}"), "zstd", &format!("-q -3 -T{n}"), ".zst", ct);
        self.compare("zstd", &sluice, zstd, "same bytes compressed by the zstd CLI across all cores");
        Ok(())
    }

    fn parquet(&mut self, cf: &Workload) -> Result<(), BenchError> {
        let n = self.options.threads;
        let python = python_with_pyarrow(&self.dirs);
        for codec in ["snappy", "zstd"] {
            let sink = self.parquet_sink(codec)?;
            let sluice = self.sluice("parquet", &format!("sluice parquet {codec}"), cf, n, &sink)?;
            let duckdb = self.baseline("parquet", &format!("duckdb {codec} threads={n}"), "duckdb", cf, |duckdb, out| {
                let sql = format!(
                    "SET threads = {n}; COPY (SELECT * FROM read_json('{}', format = 'newline_delimited')) TO '{}/out.parquet' (FORMAT parquet, COMPRESSION {codec});",
                    cf.path.display(),
                    out.display()
                );
                format!("mkdir -p {} && {} -c \"{sql}\" > /dev/null", shell_quote(out), shell_quote(duckdb))
            });
            self.compare("parquet", &sluice, duckdb, "DuckDB CLI reading the NDJSON and writing Parquet");
            match &python {
                Some(python) => {
                    let name = format!("pyarrow {codec}");
                    let output = self.output("parquet", &name);
                    let line = format!(
                        "mkdir -p {o} && {} -c 'import sys, pyarrow.json as j, pyarrow.parquet as pq; pq.write_table(j.read_json(sys.argv[1]), sys.argv[2], compression=sys.argv[3])' {} {o}/out.parquet {codec}",
                        shell_quote(python),
                        shell_quote(&cf.path),
                        o = shell_quote(&output)
                    );
                    self.cases.push(Case { scenario: "parquet", name: name.clone(), sluice: false, command: shell(line), input: cf.clone(), output, drive: Drive::Batch });
                    self.compare("parquet", &sluice, Some(name), "pyarrow's JSON reader and Parquet writer");
                }
                None => self.notes.push(format!("parquet: baseline `pyarrow {codec}` skipped: no python with pyarrow (scripts/test.sh installs it in target/test-venv)")),
            }
        }
        Ok(())
    }

    /// The file into a receiver over HTTP: sluice's `http_endpoint` sink (Firehose protocol, gzip
    /// requests of at most 4 MiB) against syslog-ng tailing the file into its `http()` destination
    /// (batches of 500 lines).
    fn http(&mut self, ct: &Workload, port: u16) -> Result<(), BenchError> {
        let n = self.options.threads;
        let backup = self.output("http", "sluice-backup");
        let mut names = Vec::new();
        for encoding in ["gzip", "none"] {
            let sink = format!(
                "type = \"http_endpoint\"\nurl = \"http://127.0.0.1:{port}/firehose\"\ncontent_encoding = \"{encoding}\"\n\
                 buffer = {{ size_mb = 4, interval_s = 60 }}\nbackup_store = {{ url = \"file://{}\" }}\n",
                backup.display()
            );
            names.push(self.sluice_into("http", &format!("sluice http_endpoint {encoding}"), ct, n, &sink)?);
            if let Some(case) = self.cases.last_mut() {
                case.drive = Drive::BatchIntoReceiver;
            }
        }
        let extra = [PathBuf::from("/usr/sbin")];
        let Some(syslog_ng) = find_program("syslog-ng", &extra) else {
            self.notes.push("http: baseline `syslog-ng` skipped: `syslog-ng` is not installed (Debian: syslog-ng-core, syslog-ng-mod-http)".into());
            return Ok(());
        };
        let dir = self.output("http", "syslog-ng");
        std::fs::create_dir_all(&dir).map_err(io_error(format!("cannot create {}", dir.display())))?;
        let (config, persist) = (dir.join("syslog-ng.conf"), dir.join("persist"));
        let text = format!(
            "@version: 3.38\noptions {{ threaded(yes); stats-freq(0); log-msg-size(1048576); }};\n\
             source s_in {{ file(\"{input}\" flags(no-parse) follow-freq(1) log-fetch-limit(1000) log-iw-size(10000)); }};\n\
             destination d_http {{ http(url(\"http://127.0.0.1:{port}/lines\") method(\"POST\") body(\"${{MESSAGE}}\") body-suffix(\"\\n\") \
             batch-lines(500) batch-bytes(4194304) batch-timeout(200) workers({n}) headers(\"Content-Type: application/x-ndjson\")); }};\n\
             log {{ source(s_in); destination(d_http); }};\n",
            input = ct.path.display()
        );
        let command = MeasuredCommand::new(
            syslog_ng.into_os_string(),
            [
                OsString::from("-F"),
                "--no-caps".into(),
                "-f".into(),
                config.clone().into(),
                "-R".into(),
                persist.clone().into(),
                "-p".into(),
                dir.join("pid").into(),
                "-c".into(),
                dir.join("ctl").into(),
            ],
        );
        let baseline = format!("syslog-ng http() batches of 500, workers={n}");
        self.cases.push(Case {
            scenario: "http",
            name: baseline.clone(),
            sluice: false,
            command,
            input: ct.clone(),
            output: self.output("http", "syslog-ng-output"),
            drive: Drive::UntilReceived { config, text, persist },
        });
        self.compare(
            "http",
            &names[0],
            Some(baseline.clone()),
            "syslog-ng tailing the file into the same receiver (it does not compress)",
        );
        self.compare(
            "http",
            &names[1],
            Some(baseline),
            "the same, both uncompressed (sluice's requests are base64 JSON)",
        );
        Ok(())
    }

    /// PutRecordBatch requests of `--size` bytes of records (SigV4-signed) into sluice (write-ahead
    /// log with fsync, zstd NDJSON objects), and the same requests into the trivial server.
    fn ingest(&mut self, bodies: &[(Vec<u8>, u64)]) -> Result<Workload, BenchError> {
        let per_request = bodies.iter().map(|b| b.1).sum::<u64>() / bodies.len().max(1) as u64;
        let requests = (self.options.size_bytes / per_request.max(1)).max(INGEST_CLIENTS as u64) as usize;
        let input = Workload {
            path: PathBuf::from("PutRecordBatch"),
            bytes: requests as u64 * per_request,
            records: (requests * load::RECORDS_PER_REQUEST) as u64,
        };
        let port = load::free_port().map_err(io_error("cannot find a free port"))?;
        let output = self.output("ingest", "sluice");
        let pipeline = self.work.join("ingest-sluice.toml");
        let toml = format!(
            "[pipeline]\nname = \"bench\"\ndata_dir = {data:?}\ndurability = \"fsync\"\n\n\
             [sources.api]\ntype = \"firehose\"\nlisten = \"127.0.0.1:{port}\"\n\
             auth = {{ access_keys = [{{ id = \"{key}\", secret = \"{secret}\" }}] }}\n\n\
             [sinks.out]\ntype = \"object_store\"\ninputs = [\"api\"]\nurl = \"file://{out}\"\nformat = \"ndjson\"\n\
             compression = \"zstd\"\nbuffer = {{ size_mb = 64, interval_s = 60 }}\n",
            data = self.work.join("state-ingest").display().to_string(),
            key = load::ACCESS_KEY,
            secret = load::SECRET_KEY,
            out = output.display(),
        );
        std::fs::write(&pipeline, toml).map_err(io_error(format!("cannot write {}", pipeline.display())))?;
        let n = self.options.threads.to_string();
        let name = "sluice ingest (SigV4, fsync log, zstd)";
        let command = MeasuredCommand::new(
            self.options.sluice.as_os_str(),
            [OsString::from("run"), "--quiet".into(), "--workers".into(), n.into(), pipeline.into()],
        );
        let drive = Drive::Ingest(ServerLoad { port, signed: true, requests });
        self.cases.push(Case {
            scenario: "ingest",
            name: name.into(),
            sluice: true,
            command,
            input: input.clone(),
            output,
            drive,
        });
        let port = load::free_port().map_err(io_error("cannot find a free port"))?;
        let trivial = "trivial server (reads the body)";
        let command = MeasuredCommand::new(
            self.options.sluice.as_os_str(),
            ["trivial-server".to_string(), "--listen".into(), format!("127.0.0.1:{port}")],
        );
        let drive = Drive::Ingest(ServerLoad { port, signed: false, requests });
        let output = self.output("ingest", trivial);
        self.cases.push(Case {
            scenario: "ingest",
            name: trivial.into(),
            sluice: false,
            command,
            input: input.clone(),
            output,
            drive,
        });
        self.compare("ingest", name, Some(trivial.to_string()), "the same requests into a server that only reads them");
        Ok(input)
    }

    fn scale(&mut self, cf: &Workload, big: &Workload) -> Result<(), BenchError> {
        let gzip = Self::text_sink("gzip");
        let parquet = self.parquet_sink("snappy")?;
        for (kind, sink) in [("gzip", gzip), ("parquet", parquet)] {
            let one = self.sluice("scale", &format!("sluice {kind} workers=1"), cf, 1, &sink)?;
            let two = self.sluice("scale", &format!("sluice {kind} workers=2"), cf, 2, &sink)?;
            self.compare_on("scale", &two, Some(one.clone()), "speed-up from a second worker (ideal 2)", About::Speed);
            let ten = self.sluice("scale", &format!("sluice {kind} workers=1 10x input"), big, 1, &sink)?;
            self.compare_on("scale", &ten, Some(one), "peak RSS with ten times the input (flat is 1)", About::Memory);
        }
        Ok(())
    }
}

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
    std::fs::create_dir_all(&work).map_err(io_error(format!("cannot create {}", work.display())))?;
    // The outputs are removed however the bench ends; the generated inputs stay as a cache.
    let _work = RemoveOnDrop(work.clone());
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
    if wants("gzip") || wants("zstd") {
        let ct = workload(&data, Profile::Cloudtrail, 7, options.size_bytes)?;
        if wants("gzip") {
            planner.gzip(&ct)?;
        }
        if wants("zstd") {
            planner.zstd(&ct)?;
        }
    }
    if wants("parquet") || wants("scale") {
        let cf = workload(&data, Profile::Cloudfront, 1, options.size_bytes)?;
        if wants("parquet") {
            planner.parquet(&cf)?;
        }
        if wants("scale") {
            let big = workload(&data, Profile::Cloudfront, 1, options.size_bytes * 10)?;
            planner.scale(&cf, &big)?;
        }
    }
    let receiver = if wants("http") {
        let receiver = load::Receiver::start().map_err(io_error("cannot start the HTTP receiver"))?;
        let ct = workload(&data, Profile::Cloudtrail, 7, options.size_bytes)?;
        planner.http(&ct, receiver.port)?;
        Some(receiver)
    } else {
        None
    };
    let bodies = load::bodies("bench").map_err(io_error("cannot prepare the ingest requests"))?;
    if wants("ingest") {
        planner.ingest(&bodies)?;
    }
    let Planner { cases, comparisons, mut notes, .. } = planner;

    let mut usages: Vec<Vec<Usage>> = vec![Vec::new(); cases.len()];
    let mut failed = vec![false; cases.len()];
    for run in 0..options.runs {
        for ((case, runs), failed) in cases.iter().zip(usages.iter_mut()).zip(failed.iter_mut()) {
            if *failed {
                continue;
            }
            progress(&format!("run {}/{}: {} / {}", run + 1, options.runs, case.scenario, case.name));
            let _ = std::fs::remove_dir_all(&case.output);
            let received = receiver.as_ref().map(|r| {
                r.records.store(0, std::sync::atomic::Ordering::SeqCst);
                Arc::clone(&r.records)
            });
            let expected = case.input.records;
            let mut run_case = || -> io::Result<crate::measure::Measured> {
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
                        let _ = std::fs::remove_file(persist);
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
            let outcome = run_case();
            let _ = std::fs::remove_dir_all(&case.output);
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
fn measure_until(
    sluice: &Path,
    command: &MeasuredCommand,
    until: impl FnOnce(&mut dyn FnMut() -> io::Result<()>) -> io::Result<Option<std::time::Duration>>,
) -> io::Result<crate::measure::Measured> {
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
    let mut measured: crate::measure::Measured =
        serde_json::from_str(&text).map_err(|e| io::Error::other(format!("bad measure report: {e}")))?;
    if let Some(wall) = wall {
        measured.usage.wall = wall;
    }
    Ok(measured)
}

/// A folder removed when dropped.
struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn command_line(c: &MeasuredCommand) -> String {
    std::iter::once(&c.program).chain(&c.args).map(|a| a.to_string_lossy().into_owned()).collect::<Vec<_>>().join(" ")
}

fn case_result(case: &Case, runs: Vec<Usage>) -> CaseResult {
    let stat = |f: &dyn Fn(&Usage) -> f64| Stat::of(runs.iter().map(f).collect());
    let secs = |u: &Usage| u.wall.as_secs_f64().max(1e-9);
    CaseResult {
        scenario: case.scenario.to_string(),
        case: case.name.clone(),
        sluice: case.sluice,
        input_bytes: case.input.bytes,
        input_records: case.input.records,
        wall_s: stat(&|u| u.wall.as_secs_f64()),
        cpu_s: stat(&|u| u.cpu.as_secs_f64()),
        mb_per_s: stat(&|u| case.input.bytes as f64 / 1e6 / secs(u)),
        records_per_s: stat(&|u| case.input.records as f64 / secs(u)),
        peak_rss_mib: stat(&|u| u.max_rss_bytes as f64 / (1024.0 * 1024.0)),
        runs,
    }
}

/// Cores, memory and kernel of this machine.
fn machine() -> String {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let memory = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| m.lines().next().and_then(|l| l.split_whitespace().nth(1)).and_then(|kb| kb.parse::<u64>().ok()))
        .map_or_else(|| "? GiB".to_string(), |kb| format!("{:.0} GiB", kb as f64 / 1024.0 / 1024.0));
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_string())
        })
        .unwrap_or_default();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!("{cores} cores ({cpu}), {memory}, Linux {}", kernel.trim())
}

fn write_results(out: &Path, report: &BenchReport) -> Result<(), BenchError> {
    let json = serde_json::to_vec_pretty(report)
        .map_err(|e| BenchError::Io { what: "cannot encode results".into(), source: io::Error::other(e) })?;
    std::fs::write(out.join("results.json"), json).map_err(io_error("cannot write results.json"))?;
    std::fs::write(out.join("results.md"), markdown(report)).map_err(io_error("cannot write results.md"))?;
    std::fs::write(out.join("results.svg"), svg(report)).map_err(io_error("cannot write results.svg"))?;
    Ok(())
}

fn spread(s: &Stat, digits: usize) -> String {
    format!("{:.d$} ({:.d$}–{:.d$})", s.median, s.min, s.max, d = digits)
}

/// The results as Markdown: the machine and command, the cases, the ratios, the notes.
pub fn markdown(report: &BenchReport) -> String {
    let mut md = String::new();
    let _ = writeln!(md, "# sluice bench\n");
    let _ = writeln!(md, "- when: {}\n- machine: {}\n- command: `{}`", report.started, report.machine, report.command);
    let _ = writeln!(md, "- each case ran {} times, alternating with the others; median (min–max)\n", report.runs);
    let _ = writeln!(md, "## Ratios\n");
    let _ = writeln!(md, "| scenario | case | against | speed ratio | memory ratio | meaning |");
    let _ = writeln!(md, "|---|---|---|---:|---:|---|");
    for c in &report.comparisons {
        let shown = |on: bool, ratio: f64| if on { format!("{ratio:.2}×") } else { "—".to_string() };
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} | {} |",
            c.scenario,
            c.case,
            c.against,
            shown(c.about != About::Memory, c.speed_ratio),
            shown(c.about != About::Speed, c.memory_ratio),
            c.meaning
        );
    }
    let _ = writeln!(
        md,
        "\nSpeed ratio: the other's median wall time ÷ this case's (above 1: faster). Memory ratio: this case's median peak RSS ÷ the other's (below 1: less memory).\n"
    );
    let _ = writeln!(md, "## Cases\n");
    let _ = writeln!(md, "| scenario | case | input | wall s | CPU s | MB/s | records/s | peak RSS MiB |");
    let _ = writeln!(md, "|---|---|---:|---:|---:|---:|---:|---:|");
    for c in &report.cases {
        let _ = writeln!(
            md,
            "| {} | {} | {:.0} MB | {} | {} | {} | {:.0} | {} |",
            c.scenario,
            if c.sluice { format!("**{}**", c.case) } else { c.case.clone() },
            c.input_bytes as f64 / 1e6,
            spread(&c.wall_s, 2),
            spread(&c.cpu_s, 2),
            spread(&c.mb_per_s, 1),
            c.records_per_s.median,
            spread(&c.peak_rss_mib, 0),
        );
    }
    if !report.notes.is_empty() {
        let _ = writeln!(md, "\n## Notes\n");
        for n in &report.notes {
            let _ = writeln!(md, "- {n}");
        }
    }
    md
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

/// Where `value` falls on a log axis from `low` to `high` (both decades), as a fraction.
fn log_fraction(value: f64, low: f64, high: f64) -> f64 {
    ((value.max(low).log10() - low.log10()) / (high.log10() - low.log10()).max(1e-9)).clamp(0.0, 1.0)
}

/// The decades around `values`: from the one at or below the smallest to the one at or above the
/// largest.
fn decades(values: impl Iterator<Item = f64>) -> (f64, f64) {
    let (low, high) = values.filter(|v| *v > 0.0).fold((f64::MAX, f64::MIN), |(l, h), v| (l.min(v), h.max(v)));
    if low > high {
        return (1.0, 10.0);
    }
    let low = 10f64.powf(low.log10().floor());
    let high = 10f64.powf(high.log10().ceil()).max(low * 10.0);
    (low, high)
}

/// Two bar charts side by side: MB/s and peak RSS per case, grouped by scenario, sluice in one
/// colour and baselines in another. Both axes are logarithmic (marked at each decade): the cases
/// span three orders of magnitude (a trivial server reads 1.5 GB/s; gzip compresses 50 MB/s), and
/// a linear axis would squeeze most bars to nothing. The label column is as wide as its longest
/// label.
pub fn svg(report: &BenchReport) -> String {
    let row = 22.0;
    let labels: Vec<String> = report.cases.iter().map(|c| format!("{} · {}", c.scenario, c.case)).collect();
    // ~7 px per character at 12 px sans-serif, plus margins.
    let label_width = 20.0 + 7.0 * labels.iter().map(|l| l.chars().count()).max().unwrap_or(10) as f64;
    let panel = 320.0;
    let gap = 70.0;
    let top = 58.0;
    let height = top + row * report.cases.len() as f64 + 44.0;
    let width = label_width + 2.0 * panel + gap + 70.0;
    let speed_axis = decades(report.cases.iter().map(|c| c.mb_per_s.median));
    let rss_axis = decades(report.cases.iter().map(|c| c.peak_rss_mib.median));
    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0}" height="{height:.0}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(svg, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        svg,
        r#"<text x="10" y="20" font-size="14" font-weight="bold">sluice bench: {}</text>"#,
        xml_escape(&report.machine)
    );
    let panels = [
        (label_width, "throughput, MB/s, log scale (longer is better)", speed_axis),
        (label_width + panel + gap, "peak RSS, MiB, log scale (shorter is better)", rss_axis),
    ];
    let bottom = top + row * report.cases.len() as f64;
    for (x, title, (low, high)) in panels {
        let _ = writeln!(svg, r#"<text x="{x:.0}" y="38">{title}</text>"#);
        // A gridline and a label at each decade.
        let mut decade = low;
        while decade <= high * 1.0001 {
            let gx = x + log_fraction(decade, low, high) * panel;
            let _ = writeln!(
                svg,
                r##"<line x1="{gx:.1}" y1="{:.0}" x2="{gx:.1}" y2="{bottom:.0}" stroke="#dddddd"/><text x="{gx:.1}" y="{:.0}" fill="#777" text-anchor="middle" font-size="10">{}</text>"##,
                top - 4.0,
                top - 8.0,
                if decade >= 1.0 { format!("{decade:.0}") } else { format!("{decade}") }
            );
            decade *= 10.0;
        }
    }
    for (i, (c, label)) in report.cases.iter().zip(&labels).enumerate() {
        let y = top + row * i as f64;
        let colour = if c.sluice { "#1f77b4" } else { "#aaaaaa" };
        let _ = writeln!(
            svg,
            r#"<text x="{:.0}" y="{:.0}" text-anchor="end">{}</text>"#,
            label_width - 8.0,
            y + 14.0,
            xml_escape(label)
        );
        for ((x, _, (low, high)), value) in panels.iter().zip([c.mb_per_s.median, c.peak_rss_mib.median]) {
            let w = (log_fraction(value, *low, *high) * panel).max(1.0);
            let _ = writeln!(
                svg,
                r#"<rect x="{x:.0}" y="{:.0}" width="{w:.1}" height="{:.0}" fill="{colour}"/>"#,
                y + 3.0,
                row - 6.0
            );
            let _ = writeln!(svg, r#"<text x="{:.1}" y="{:.0}">{value:.0}</text>"#, x + w + 4.0, y + 14.0);
        }
    }
    let _ = writeln!(
        svg,
        r##"<text x="10" y="{:.0}" fill="#555">blue: sluice, grey: baselines; medians of {} alternating runs</text>"##,
        height - 12.0,
        report.runs
    );
    svg.push_str("</svg>\n");
    svg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_units_and_reject_nonsense() {
        assert_eq!(parse_size("200MB"), Ok(200_000_000));
        assert_eq!(parse_size("2GB"), Ok(2_000_000_000));
        assert_eq!(parse_size("512KiB"), Ok(512 * 1024));
        assert_eq!(parse_size("1.5MiB"), Ok(1_572_864));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert!(parse_size("lots").is_err());
        assert!(parse_size("5 parsecs").unwrap_err().contains("unknown size unit"));
    }

    #[test]
    fn medians_and_spreads() {
        let s = Stat::of(vec![3.0, 1.0, 2.0]);
        assert_eq!((s.median, s.min, s.max), (2.0, 1.0, 3.0));
        assert_eq!(Stat::of(vec![4.0, 1.0, 2.0, 3.0]).median, 2.5);
    }
}

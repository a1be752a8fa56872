//! The `sluice` command: `run` a pipeline (batch or stream), `serve` a directory of pipelines behind
//! one Firehose API listener, `validate` pipeline files, `gen` synthetic logs.
//!
//! Exit codes of `run`: 0 when every record reached its destination; 2 when some went to the error
//! output (the summary says how many, why and where); 1 when anything was left undelivered or the
//! run could not start. `validate` exits 1 when any file has an error.

/// Writes a line to standard error, ignoring a closed one: `eprintln!` panics when stderr is gone
/// (`sluice run … 2>&1 | head`, a supervisor whose log pipe died), and a panic in the signal
/// thread left a run that SIGTERM could no longer stop.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}

mod bench;
mod serve;
mod top;

use std::io::{IsTerminal, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, mpsc};
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use sluice_connectors::api::admin::{self, MonitoredPipeline};
use sluice_connectors::api::{ListenerLimits, TlsFiles};
use sluice_connectors::measure::{self, MeasuredCommand};
use sluice_connectors::registry;
use sluice_connectors::synth::{Profile, write_ndjson};
use sluice_engine::cluster::Cluster;
use sluice_engine::config::{Plan, load_file, load_file_for, masked};
use sluice_engine::contract::StopSignal;
use sluice_engine::metrics::{PipelineMetrics, SinkLabel, peak_rss_bytes};
use sluice_engine::runtime::{RunOptions, RunReport, prepare};

// With `--features mimalloc` (musl/static builds); the system allocator otherwise (README: Performance).
#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// sluice: a self-hosted streaming delivery engine (what Amazon Kinesis Data Firehose does, as one binary)
///
/// It takes records from the Firehose API, HTTP, files, object stores or a generator, transforms
/// them (redact, jq, a Lambda function, enrich, dedup, CloudWatch Logs), buffers them by size and
/// time, partitions them by content, encodes and compresses them (NDJSON, CSV, Parquet; gzip, zstd,
/// snappy) and delivers them to object stores, HTTP endpoints, OpenSearch, Splunk and PostgreSQL,
/// backing up whatever a destination does not take. Pipelines are TOML files: see README.md.
#[derive(Parser)]
#[command(name = "sluice", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// `json`: the error log (delivery failures, backups, transform failures, throttling, log
    /// truncation) is written to stderr as JSON lines, rate-limited per error code.
    #[arg(long, global = true, value_enum, default_value = "text")]
    log_format: LogFormat,
}

/// `--log-format`.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    /// Errors as log text only.
    Text,
    /// The error log as JSON lines on stderr too.
    Json,
}

/// The shared listener's limits (each pipeline file's own are then not used).
#[derive(clap::Args)]
struct LimitArgs {
    /// Concurrent connections; more are closed at once.
    #[arg(long, default_value_t = 4096, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    max_connections: u64,
    /// MB of request bodies read at once; past it, requests get ServiceUnavailableException.
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u64).range(6..=65_536))]
    max_body_buffer_mb: u64,
    /// Seconds a client has to send a request's headers.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=3600))]
    header_timeout_s: u64,
    /// Seconds a client has to send a request's body.
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..=3600))]
    body_timeout_s: u64,
    /// Seconds an idle keep-alive connection stays open.
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..=3600))]
    idle_timeout_s: u64,
}

impl LimitArgs {
    fn limits(&self) -> ListenerLimits {
        ListenerLimits {
            max_connections: self.max_connections as usize,
            max_body_buffer: (self.max_body_buffer_mb as usize) << 20,
            header_timeout: Duration::from_secs(self.header_timeout_s),
            body_timeout: Duration::from_secs(self.body_timeout_s),
            idle_timeout: Duration::from_secs(self.idle_timeout_s),
        }
    }
}

/// `--cluster hosts.txt --process N`: one process of a cluster running the pipeline as one dataflow.
#[derive(clap::Args, Debug, Clone)]
struct ClusterArgs {
    /// Run as one process of a cluster: a file with one host:port per process (the same file on
    /// every process); every process runs the same pipeline file with the same --workers.
    #[arg(long, requires = "process", value_name = "HOSTS_FILE")]
    cluster: Option<PathBuf>,
    /// This process's line in the --cluster file, from 0.
    #[arg(long, requires = "cluster", value_name = "N")]
    process: Option<usize>,
}

impl ClusterArgs {
    /// The cluster, if asked for.
    fn cluster(&self) -> anyhow::Result<Option<Cluster>> {
        match (&self.cluster, self.process) {
            (Some(file), Some(process)) => Ok(Some(Cluster::from_file(file, process)?)),
            _ => Ok(None),
        }
    }
}

#[derive(Subcommand)]
enum Command {
    /// Run a pipeline: a batch run ends when its input is delivered; a stream run ends on Ctrl-C/SIGTERM.
    Run {
        /// The pipeline file.
        pipeline: PathBuf,
        /// Timely worker threads, 1–1024 (default: `workers` in the file, else one per core).
        #[arg(long, value_parser = positive_count)]
        workers: Option<usize>,
        /// No progress bar.
        #[arg(long)]
        quiet: bool,
        /// Serve the dashboard (`/`), `/metrics` (Prometheus) and `/health` on this address, e.g.
        /// 127.0.0.1:4580.
        #[arg(long)]
        admin: Option<SocketAddr>,
        #[command(flatten)]
        cluster: ClusterArgs,
    },
    /// Run every pipeline in a directory as one delivery stream each, behind one Firehose API
    /// listener (requests are routed by `DeliveryStreamName`), until Ctrl-C/SIGTERM; SIGHUP reads
    /// the directory again (new, removed and changed files taken without a restart).
    Serve {
        /// Directory of pipeline files (`*.toml`).
        dir: PathBuf,
        /// The shared Firehose API address (replaces each firehose source's `listen`).
        #[arg(long, default_value = "127.0.0.1:4573")]
        listen: SocketAddr,
        /// Serve the dashboard (`/`), `/metrics` (Prometheus) and `/health` on this address.
        #[arg(long)]
        admin: Option<SocketAddr>,
        /// Timely workers per pipeline, 1–1024 (default: `workers` in the file, else cores ÷ pipelines).
        #[arg(long, value_parser = positive_count)]
        workers: Option<usize>,
        /// Region in stream ARNs.
        #[arg(long, default_value = "us-east-1")]
        region: String,
        /// HTTPS: certificate chain (PEM); needs --tls-key. Renewed files are served without a
        /// restart (looked at every 5 s).
        #[arg(long, requires = "tls_key")]
        tls_cert: Option<PathBuf>,
        /// HTTPS: private key (PEM).
        #[arg(long, requires = "tls_cert")]
        tls_key: Option<PathBuf>,
        /// Mutual TLS: CA certificates (PEM) one of which must sign every client's certificate;
        /// clients without one are refused in the handshake. Needs --tls-cert.
        #[arg(long, requires = "tls_cert")]
        tls_client_ca: Option<PathBuf>,
        /// Read the directory again whenever its files change (looked at every 5 s; a change is
        /// taken once it has stayed as it is for one look), as SIGHUP does.
        #[arg(long, conflicts_with = "cluster")]
        watch: bool,
        #[command(flatten)]
        limits: LimitArgs,
        #[command(flatten)]
        cluster: ClusterArgs,
    },
    /// Check pipeline files and print their graphs, or every error with file:line:col.
    Validate {
        /// Also ask each sink's destination and error-output store, as a run's start-up check does
        /// and changing nothing, whether they would take deliveries: credentials, bucket, table,
        /// index, certificate.
        #[arg(long)]
        check: bool,
        /// With `--check`: how long to wait for the answers (asked all at once); one not given by
        /// then is a warning, as at a run's start.
        #[arg(long, value_name = "SECONDS", default_value_t = 60, requires = "check", value_parser = clap::value_parser!(u64).range(1..))]
        check_timeout: u64,
        /// Pipeline files.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Run a command and write what it cost (wall, CPU, peak RSS) as JSON: how benchmarks measure
    /// baselines and sluice alike from a small process.
    #[command(hide = true)]
    Measure {
        /// Where to write the JSON report.
        #[arg(long)]
        report: PathBuf,
        /// A file for the command's standard input.
        #[arg(long)]
        stdin: Option<PathBuf>,
        /// The command and its arguments (after `--`).
        #[arg(last = true, required = true)]
        command: Vec<std::ffi::OsString>,
    },
    /// An HTTP server that reads each POST body and answers `{}`: the `ingest` baseline of
    /// `sluice bench`. Runs until SIGTERM/Ctrl-C.
    #[command(hide = true)]
    TrivialServer {
        /// Address to listen on.
        #[arg(long)]
        listen: SocketAddr,
    },
    /// A terminal view of a running sluice's figures (its `--admin` address), redrawn every
    /// second; `q` or Ctrl-C quits.
    Top {
        /// The `--admin` address of `run` or `serve`, e.g. 127.0.0.1:4580.
        admin: SocketAddr,
    },
    /// Write synthetic logs as NDJSON (deterministic for a seed).
    Gen {
        /// Log shape.
        #[arg(long, value_enum, default_value = "cloudfront")]
        profile: Profile,
        /// How many records.
        #[arg(long, default_value_t = 1000)]
        records: u64,
        /// Seed (the generator source's default too).
        #[arg(long, default_value_t = sluice_connectors::synth::DEFAULT_SEED)]
        seed: u64,
        /// Output file (default: standard output).
        #[arg(long, short)]
        output: Option<PathBuf>,
    },
    /// Measure sluice against the tools users would otherwise use (pigz, gzip, zstd, DuckDB,
    /// pyarrow), alternating runs on the same generated data; writes results.md, results.json and
    /// results.svg.
    Bench {
        /// Scenarios to run (repeatable; default: all).
        #[arg(long = "scenario", value_parser = clap::builder::PossibleValuesParser::new(bench::SCENARIOS))]
        scenarios: Vec<String>,
        /// Input size, e.g. 200MB, 2GB (the `scale` scenario also uses ten times this).
        #[arg(long, default_value = "200MB", value_parser = bench::parse_size)]
        size: u64,
        /// Where the data, work files and results go.
        #[arg(long, default_value = "bench-results")]
        out: PathBuf,
        /// Runs of each case, 1–1024 (odd numbers give a true median).
        #[arg(long, default_value_t = 3, value_parser = positive_count)]
        runs: usize,
        /// Threads for sluice and the baselines that take a count, 1–1024 (default: one per core).
        #[arg(long, value_parser = positive_count)]
        threads: Option<usize>,
    },
}

/// A count on the command line (workers, threads, runs): 1–1024, as `[pipeline] workers` (0 was
/// taken as 1 before).
fn positive_count(text: &str) -> Result<usize, String> {
    match text.parse::<usize>() {
        Ok(n @ 1..=1024) => Ok(n),
        Ok(n) => Err(format!("{n} is out of range: expected 1..=1024")),
        Err(e) => Err(e.to_string()),
    }
}

/// glibc's allocator set for a process that runs indefinitely: blocks of 2 MiB and more are mapped
/// on their own and given back when freed, and at most 8 MiB of freed memory is kept at the top of
/// a heap. By default glibc raises its mapping threshold to the largest block freed so far (up to
/// 32 MiB), after which a Parquet object's column buffers come from the heap and their freed space
/// stays in the process: one worker writing 128 MiB Parquet objects held 141 MiB at its peak over
/// 2 GB of CloudFront records against 82 MiB over 200 MB; set so, 85 MiB against 73 MiB (gzip: 40
/// against 37 MiB, 36 against 35 since batch buffers are reused), for ~3 % more CPU over the 2 GB
/// runs (pages mapped again for each object) and
/// no difference measured on the 200 MB two-worker runs (README: Performance, footnote 13). An operator's own
/// `GLIBC_TUNABLES` is left to decide instead.
#[cfg(all(target_os = "linux", target_env = "gnu", not(feature = "mimalloc")))]
#[allow(unsafe_code)]
fn tune_allocator() {
    if std::env::var_os("GLIBC_TUNABLES").is_some() {
        return;
    }
    // SAFETY: `mallopt` only sets parameters of glibc's allocator (it takes the allocator's own
    // locks), with constants it accepts; it is called first thing in `main`, before any other
    // thread exists, and its result (0 when a value is refused) leaves the defaults in place.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 2 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 8 << 20);
    }
}

/// Other allocators (mimalloc, musl's) are used as they are.
#[cfg(not(all(target_os = "linux", target_env = "gnu", not(feature = "mimalloc"))))]
fn tune_allocator() {}

/// The log filter: `SLUICE_LOG` (any `tracing` filter), else warnings and errors. rustls's platform
/// verifier logs each certificate it refuses as an error of its own, which the refusal's error
/// (with the connector, and what to do) says already: it is silent unless `SLUICE_LOG` names it.
fn log_filter(configured: Option<String>) -> tracing_subscriber::EnvFilter {
    let configured = configured.filter(|c| !c.trim().is_empty());
    let names_verifier = configured.as_deref().is_some_and(|c| c.contains("rustls_platform_verifier"));
    let filter = configured.as_deref().unwrap_or("warn");
    let filter = if names_verifier { filter.to_string() } else { format!("{filter},rustls_platform_verifier=off") };
    tracing_subscriber::EnvFilter::try_new(&filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,rustls_platform_verifier=off"))
}

fn main() -> ExitCode {
    tune_allocator();
    tracing_subscriber::fmt()
        .with_env_filter(log_filter(std::env::var("SLUICE_LOG").ok()))
        .with_writer(std::io::stderr)
        // Colours only for a person at a terminal: a log file or a pipe gets plain text.
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let cli = Cli::parse();
    let json = cli.log_format == LogFormat::Json;
    let result = match cli.command {
        Command::Run { pipeline, workers, quiet, admin, cluster } => {
            cluster.cluster().and_then(|cluster| run_command(&pipeline, workers, quiet, admin, json, cluster))
        }
        Command::Serve {
            dir,
            listen,
            admin,
            workers,
            region,
            tls_cert,
            tls_key,
            tls_client_ca,
            watch,
            limits,
            cluster,
        } => {
            let tls = tls_cert.zip(tls_key).map(|(cert, key)| TlsFiles { cert, key, client_ca: tls_client_ca });
            let limits = limits.limits();
            cluster.cluster().and_then(|cluster| {
                let options = serve::ServeOptions {
                    listen,
                    admin,
                    workers,
                    region,
                    tls,
                    limits,
                    json_error_log: json,
                    cluster,
                    watch,
                };
                serve::serve_command(&dir, options)
            })
        }
        Command::Validate { files, check, check_timeout } => {
            validate_command(&files, check.then(|| Duration::from_secs(check_timeout)))
        }
        Command::Measure { report, stdin, command } => {
            let (program, args) = command.split_first().map(|(p, a)| (p.clone(), a.to_vec())).unwrap_or_default();
            let command = MeasuredCommand { program, args, stdin };
            measure::write_report(&command, &report)
                .with_context(|| format!("cannot run {:?}", command.program))
                .map(|()| ExitCode::SUCCESS)
        }
        Command::Top { admin } => top::top_command(admin),
        Command::Gen { profile, records, seed, output } => {
            gen_command(profile, records, seed, output).map(|()| ExitCode::SUCCESS)
        }
        Command::Bench { scenarios, size, out, runs, threads } => bench_command(scenarios, size, out, runs, threads),
        Command::TrivialServer { listen } => trivial_server_command(listen),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            say!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}

/// `sluice trivial-server`: the trivial server until a signal.
fn trivial_server_command(listen: SocketAddr) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    runtime.block_on(async {
        let listener =
            tokio::net::TcpListener::bind(listen).await.with_context(|| format!("cannot listen on {listen}"))?;
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            served = sluice_connectors::load::trivial_server(listener) => served?,
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        Ok(ExitCode::SUCCESS)
    })
}

/// `sluice bench`: runs the harness, prints the Markdown table and where the results went.
fn bench_command(
    scenarios: Vec<String>,
    size: u64,
    out: PathBuf,
    runs: usize,
    threads: Option<usize>,
) -> anyhow::Result<ExitCode> {
    use bench::{BenchOptions, SCENARIOS, markdown, run_bench};
    let options = BenchOptions {
        scenarios: if scenarios.is_empty() { SCENARIOS.iter().map(|s| s.to_string()).collect() } else { scenarios },
        size_bytes: size,
        out: out.clone(),
        runs,
        sluice: std::env::current_exe().context("cannot find the sluice binary")?,
        threads: threads.unwrap_or_else(sluice_engine::runtime::default_workers),
    };
    let report = run_bench(&options, |line| {
        let _ = writeln!(std::io::stderr(), "sluice bench: {line}");
    })?;
    // A reader that stopped early (`| head`) ends the output, not the run: the files hold it all.
    let _ = write!(std::io::stdout(), "{}", markdown(&report));
    let _ = writeln!(std::io::stderr(), "sluice bench: results in {}/results.{{md,json,svg}}", out.display());
    Ok(ExitCode::SUCCESS)
}

/// Checks each file, and with `check` (`--check`, its timeout) asks its services; the exit code
/// says whether all are valid. Output a reader stopped taking (`sluice validate … | head`) is
/// dropped, never a panic: the exit code still says what was found.
fn validate_command(files: &[PathBuf], check: Option<Duration>) -> anyhow::Result<ExitCode> {
    let registry = registry();
    let mut failed = false;
    // Only for `--check`: the checks are asynchronous.
    let runtime = match check {
        Some(within) => Some((
            tokio::runtime::Builder::new_current_thread().enable_all().build().context("cannot start a runtime")?,
            within,
        )),
        None => None,
    };
    for file in files {
        match load_file(file, &registry) {
            Ok(plan) => {
                let mut out = std::io::stdout().lock();
                let _ = writeln!(out, "{}: ok\n{}", file.display(), plan.render());
                // The file as it runs (variables expanded), secrets shown as ***.
                if let Some(shown) = std::fs::read_to_string(file).ok().as_deref().and_then(masked) {
                    let _ = writeln!(out, "resolved configuration (secrets masked):\n{shown}");
                }
                drop(out);
                if let Some((runtime, within)) = &runtime {
                    failed |= !check_services(runtime, file, &plan, *within);
                }
            }
            Err(diagnostics) => {
                failed = true;
                let _ = writeln!(std::io::stderr().lock(), "{diagnostics}\n");
            }
        }
    }
    Ok(if failed { ExitCode::from(1) } else { ExitCode::SUCCESS })
}

/// `validate --check`: each source's, transform's and sink's `check` (what a run asks at start),
/// said on stdout when it passes and on stderr when it fails; whether all passed.
///
/// The checks are asked all at once, so a file's checks take as long as its slowest; one without an
/// answer `within` is said as a warning (as a run's start-up check warns), not counted as a failure.
fn check_services(runtime: &tokio::runtime::Runtime, file: &std::path::Path, plan: &Plan, within: Duration) -> bool {
    let mut checks: Vec<(String, futures::future::BoxFuture<'static, Result<(), String>>)> = Vec::new();
    // Sources and transforms with nothing to ask (files, the generator, jq) are not listed.
    for source in &plan.sources {
        if let Some(check) = source.source.check() {
            let what = format!("sources.{} ({})", source.name, source.source.describe());
            let said = |e: sluice_engine::contract::SourceError| coded(&e, e.code());
            checks.push((what, Box::pin(async move { check.await.map_err(said) })));
        }
    }
    for transform in &plan.transforms {
        if let Some(check) = transform.transform.check() {
            let what = format!("transforms.{} ({})", transform.name, transform.transform.describe());
            let said = |e: sluice_engine::contract::TransformError| coded(&e, e.code.as_deref());
            checks.push((what, Box::pin(async move { check.await.map_err(said) })));
        }
    }
    let line_stores = [("audit_log", &plan.audit), ("error_log", &plan.error_log)];
    for (key, lines) in line_stores {
        if let Some(sluice_engine::line_store::LineTarget::Store(store)) = lines.as_ref().map(|l| &l.target) {
            checks.push((format!("pipeline.{key} ({})", store.describe()), store.check()));
        }
    }
    for sink in &plan.sinks {
        // With its error output (an HTTP endpoint's backup store, a warehouse's staging).
        let checked = Arc::clone(&sink.sink);
        let what = format!("sinks.{} ({})", sink.name, sink.sink.describe());
        let check = async move { sluice_engine::contract::check_sink(&checked).await };
        checks.push((what, Box::pin(async move { check.await.map_err(|e| coded(&e, Some(e.code()))) })));
    }
    let asked =
        checks.into_iter().map(|(what, check)| async move { (what, tokio::time::timeout(within, check).await) });
    let answers = runtime.block_on(futures::future::join_all(asked));
    let mut passed = true;
    for (what, answer) in answers {
        let what = format!("{}: {what}", file.display());
        match answer {
            Ok(Ok(())) => {
                let _ = writeln!(std::io::stdout(), "{what}: checked");
            }
            Ok(Err(error)) => {
                passed = false;
                say!("error: {what}: {error}");
            }
            Err(_) => {
                say!("warning: {what}: no answer within {} s; a run would start and retry", within.as_secs())
            }
        }
    }
    passed
}

/// A check's failure as `validate --check` says it: with the refusing system's code when it has one.
fn coded(error: &dyn std::fmt::Display, code: Option<&str>) -> String {
    match code {
        Some(code) => format!("{error} ({code})"),
        None => error.to_string(),
    }
}

fn gen_command(profile: Profile, records: u64, seed: u64, output: Option<PathBuf>) -> anyhow::Result<()> {
    match output {
        Some(path) => {
            let file = std::fs::File::create(&path).with_context(|| format!("cannot create {}", path.display()))?;
            write_ndjson(profile, seed, records, &mut std::io::BufWriter::new(file))
                .with_context(|| format!("writing {}", path.display()))
        }
        None => {
            let stdout = std::io::stdout();
            match write_ndjson(profile, seed, records, &mut stdout.lock()) {
                Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
                other => other.context("writing to standard output"),
            }
        }
    }
}

/// Says where a stream pipeline takes its input (listen addresses), once it listens.
fn announce(plan: &Plan) {
    if plan.is_batch() {
        return;
    }
    for source in plan.sources.iter().filter(|s| !s.source.is_finite()) {
        say!("sluice: {}: source {}: {}", plan.name, source.name, source.source.describe());
    }
}

/// What `sluice serve` is told by the signals, its `--watch` and its runs.
enum Event {
    /// Read the folder again (why: SIGHUP, a file changed).
    Reload(&'static str),
    /// SIGINT or SIGTERM: stop (the stop signal is set already).
    Stop,
    /// The run of this number (`sluice serve` counts them) ended.
    Ended(u64),
    /// The run of this number (`sluice serve` counts them) was asked to stop.
    Stopping(u64),
}

/// Stops the run on SIGINT or SIGTERM (a second signal exits at once).
fn stop_on_signals(stop: StopSignal, grace: Duration) {
    watch_signals(stop, grace, mpsc::channel().0, false);
}

/// Stops on SIGINT or SIGTERM (a second signal exits at once), saying so to `events` too, and with
/// `reloads` says each SIGHUP there.
fn watch_signals(stop: StopSignal, grace: Duration, events: mpsc::Sender<Event>, reloads: bool) {
    std::thread::spawn(move || {
        let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() else {
            return;
        };
        rt.block_on(async move {
            use tokio::signal::unix::{Signal, SignalKind, signal};
            let Ok(mut term) = signal(SignalKind::terminate()) else { return };
            // (Taken only when asked for: otherwise SIGHUP ends the process, as by default.)
            let mut hangup = if reloads { signal(SignalKind::hangup()).ok() } else { None };
            async fn next(signal: &mut Option<Signal>) {
                match signal {
                    Some(signal) => {
                        signal.recv().await;
                    }
                    None => std::future::pending().await,
                }
            }
            let mut round = 0;
            while round < 2 {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                    _ = next(&mut hangup) => {
                        let _ = events.send(Event::Reload("SIGHUP"));
                        continue;
                    }
                }
                if round == 0 {
                    stop.stop();
                    let _ = events.send(Event::Stop);
                    say!(
                        "sluice: stopping: no new input; flushing and delivering what was read, for up to {} s (signal again to abort)",
                        grace.as_secs()
                    );
                } else {
                    std::process::exit(130);
                }
                round += 1;
            }
        });
    });
}

/// Serves `/metrics` and `/health` for the pipelines `pipelines` names on `address` from a thread
/// of its own, for as long as the process lives.
fn start_admin(address: SocketAddr, pipelines: admin::Served) -> anyhow::Result<()> {
    let listener = std::net::TcpListener::bind(address).with_context(|| format!("cannot listen on {address}"))?;
    listener.set_nonblocking(true).with_context(|| format!("cannot listen on {address}"))?;
    std::thread::Builder::new().name("sluice-admin".into()).spawn(move || {
        let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() else { return };
        rt.block_on(async move {
            match tokio::net::TcpListener::from_std(listener) {
                Ok(listener) => {
                    if let Err(e) = axum::serve(listener, admin::router(pipelines)).await {
                        tracing::error!(error = %e, "admin endpoint failed");
                    }
                }
                Err(e) => tracing::error!(error = %e, "admin endpoint failed"),
            }
        });
    })?;
    Ok(())
}

fn monitored(plan: &Plan, metrics: &Arc<PipelineMetrics>) -> MonitoredPipeline {
    MonitoredPipeline {
        stream: plan.name.clone(),
        metrics: Arc::clone(metrics),
        sinks: plan.sinks.iter().map(|s| SinkLabel { name: s.name.clone(), kind: s.sink.destination() }).collect(),
        transforms: plan.transform_labels(),
    }
}

fn run_command(
    pipeline: &std::path::Path,
    workers: Option<usize>,
    quiet: bool,
    admin: Option<SocketAddr>,
    json_error_log: bool,
    cluster: Option<Cluster>,
) -> anyhow::Result<ExitCode> {
    let registry = registry();
    let plan = match load_file_for(pipeline, &registry, cluster.as_ref().map(|c| c.process)) {
        Ok(plan) => plan,
        Err(diagnostics) => {
            say!("{diagnostics}");
            return Ok(ExitCode::from(1));
        }
    };
    let metrics = Arc::new(plan.new_metrics());
    let mut options = RunOptions::for_plan(&plan);
    options.json_error_log = json_error_log;
    if let Some(w) = workers {
        options.workers = w;
    }
    if let Some(c) = &cluster {
        say!(
            "sluice: process {} of a cluster of {} ({} workers each): connecting to {}",
            c.process,
            c.addresses.len(),
            options.workers,
            c.addresses.join(", ")
        );
    }
    options.cluster = cluster;
    if let Some(address) = admin {
        start_admin(address, admin::Served::new(vec![monitored(&plan, &metrics)]))?;
        say!("sluice: metrics on http://{address}/metrics");
    }
    stop_on_signals(options.stop.clone(), options.stop_grace);
    // Listeners are bound when the run is prepared: a source is announced once it listens, never
    // before an error saying its address is taken.
    let prepared = prepare(&plan, &options, Arc::clone(&metrics));
    if prepared.is_ok() {
        announce(&plan);
    }
    let progress = (!quiet && std::io::stderr().is_terminal()).then(|| progress_bar(&metrics));
    let result = prepared.and_then(|prepared| prepared.run());
    if let Some((bar, handle)) = progress {
        bar.finish_and_clear();
        let _ = handle.join();
    }
    let report = result.with_context(|| format!("pipeline {}", plan.name))?;
    Ok(summarize(&plan, &report, &metrics))
}

fn progress_bar(metrics: &Arc<PipelineMetrics>) -> (indicatif::ProgressBar, std::thread::JoinHandle<()>) {
    let bar = indicatif::ProgressBar::new_spinner();
    bar.set_style(
        indicatif::ProgressStyle::with_template("{spinner} {elapsed_precise} {msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
    );
    let (bar2, metrics) = (bar.clone(), Arc::clone(metrics));
    let handle = std::thread::spawn(move || {
        let started = std::time::Instant::now();
        while !bar2.is_finished() {
            let records = metrics.records_in();
            let bytes = metrics.bytes_in();
            let delivered: u64 = metrics.sinks.iter().map(|s| s.records_delivered.load(Relaxed)).sum();
            let secs = started.elapsed().as_secs_f64().max(1e-3);
            bar2.set_message(format!(
                "read {} records, {} ({:.1} MB/s, {:.0} records/s), delivered {}",
                records,
                indicatif::HumanBytes(bytes),
                bytes as f64 / 1e6 / secs,
                records as f64 / secs,
                delivered
            ));
            bar2.tick();
            std::thread::sleep(Duration::from_millis(200));
        }
    });
    (bar, handle)
}

fn summarize(plan: &Plan, report: &RunReport, metrics: &PipelineMetrics) -> ExitCode {
    let secs = report.elapsed.as_secs_f64().max(1e-6);
    let mut out = std::io::stdout().lock();
    let bytes_in = metrics.bytes_in();
    let place = metrics
        .process
        .get()
        .map_or(String::new(), |p| format!(" (process {p} of a cluster; this process's share below)"));
    let _ = writeln!(out, "pipeline {} finished in {:.2} s with {} workers{place}", plan.name, secs, report.workers);
    let _ = writeln!(
        out,
        "  in         {} records, {} ({:.1} MB/s)",
        metrics.records_in(),
        indicatif::HumanBytes(bytes_in),
        bytes_in as f64 / 1e6 / secs
    );
    for (transform, m) in plan.transforms.iter().zip(&metrics.transforms) {
        let _ = writeln!(
            out,
            "  transform {}  {} in, {} out, {} dropped, {} failed",
            transform.name,
            m.records_in.load(Relaxed),
            m.records_out.load(Relaxed),
            m.records_dropped.load(Relaxed),
            m.records_failed.load(Relaxed),
        );
        if let Ok(labelled) = m.labelled.lock() {
            // One line per family (the map is ordered by family first).
            let mut families: Vec<(&str, Vec<String>)> = Vec::new();
            for ((family, _, value), n) in labelled.iter() {
                match families.last_mut() {
                    Some((f, counts)) if *f == family.name => counts.push(format!("{value} {n}")),
                    _ => families.push((family.name, vec![format!("{value} {n}")])),
                }
            }
            for (family, counts) in families {
                let _ = writeln!(out, "    {family}  {}", counts.join(", "));
            }
        }
        let invocations = m.invocations.load(Relaxed);
        if invocations > 0 {
            let _ = writeln!(
                out,
                "    invocations  {invocations}, {} answered well-formed, mean {:.0} ms",
                m.invocations_succeeded.load(Relaxed),
                m.invocation_duration.mean_seconds() * 1000.0
            );
        }
    }
    let mut any_failed = false;
    let mut any_undelivered = false;
    for (sink, m) in plan.sinks.iter().zip(&metrics.sinks) {
        let (raw, stored) = (m.bytes_delivered.load(Relaxed), m.bytes_stored.load(Relaxed));
        let _ = writeln!(
            out,
            "  sink {}  delivered {} records in {} objects, {} before compression, {} stored{}, {:.1} MB/s",
            sink.name,
            m.records_delivered.load(Relaxed),
            m.objects.load(Relaxed),
            indicatif::HumanBytes(raw),
            indicatif::HumanBytes(stored),
            if stored > 0 { format!(" ({:.2}x)", raw as f64 / stored as f64) } else { String::new() },
            raw as f64 / 1e6 / secs
        );
        if let Ok(partitions) = m.partition_records.lock()
            && partitions.partitions() > 0
        {
            let top: Vec<String> = partitions.largest().map(|(k, n)| format!("{k} ({n})")).collect();
            let _ = writeln!(
                out,
                "    partitions {} written, {} sealed early; largest: {}",
                partitions.partitions(),
                m.partitions_sealed_early.load(Relaxed),
                top.join(", ")
            );
        }
        let failed = m.records_failed.load(Relaxed);
        if failed > 0 {
            any_failed = true;
            let reasons = m
                .reasons
                .lock()
                .map(|r| r.iter().map(|(why, n)| format!("{why}: {n}")).collect::<Vec<_>>().join(", "))
                .unwrap_or_default();
            let keys = m.error_keys.lock().map(|k| k.join(", ")).unwrap_or_default();
            // The error output is the sink's own store, or its backup store (an HTTP endpoint's).
            let store = sink.sink.error_output().map_or_else(|| sink.sink.describe(), |backup| backup.describe());
            let _ = writeln!(
                out,
                "    failed   {failed} records went to the error output in {store} ({reasons}); e.g. {keys}"
            );
        }
        let undelivered = m.records_undelivered.load(Relaxed);
        if undelivered > 0 {
            any_undelivered = true;
            let last = m.last_error.lock().ok().and_then(|l| l.clone()).unwrap_or_default();
            let _ = writeln!(out, "    UNDELIVERED {undelivered} records: {last}");
        }
    }
    if report.abandoned {
        any_undelivered = true;
        let _ = writeln!(
            out,
            "  STOPPED    deliveries were still failing when the stop's grace period ended: what was read and not \
             delivered is not checkpointed, and API logs and file sources hand it over again at the next start"
        );
    }
    let partial = metrics.partial_records.load(Relaxed);
    if partial > 0 {
        let _ = writeln!(
            out,
            "  WARNING    {partial} partial records not delivered: files were truncated while read (see the log)"
        );
    }
    if let Ok(errors) = metrics.source_errors.lock() {
        for e in errors.iter() {
            any_undelivered = true;
            let _ = writeln!(out, "  ERROR      {e}");
        }
    }
    if let Some(rss) = peak_rss_bytes() {
        let _ = writeln!(out, "  peak RSS   {}", indicatif::HumanBytes(rss));
    }
    if any_undelivered {
        ExitCode::from(1)
    } else if any_failed {
        ExitCode::from(2)
    } else {
        ExitCode::SUCCESS
    }
}

#[cfg(test)]
mod tests {
    use super::log_filter;

    #[test]
    fn the_verifier_s_own_refusal_lines_are_off_unless_sluice_log_names_it() {
        for (configured, shown) in [
            (None, "warn,rustls_platform_verifier=off"),
            (Some(""), "warn,rustls_platform_verifier=off"),
            (Some("debug"), "debug,rustls_platform_verifier=off"),
            (Some("rustls_platform_verifier=debug"), "rustls_platform_verifier=debug"),
            (Some("no=such=level"), "warn,rustls_platform_verifier=off"),
        ] {
            let filter = log_filter(configured.map(String::from)).to_string();
            let mut got: Vec<&str> = filter.split(',').collect();
            let mut want: Vec<&str> = shown.split(',').collect();
            got.sort();
            want.sort();
            assert_eq!(got, want, "{configured:?}");
        }
    }
}

//! The `sluice` command: `run` a pipeline (batch or stream), `validate` pipeline files, `gen`
//! synthetic logs.
//!
//! Exit codes of `run`: 0 when every record reached its destination; 2 when some went to the error
//! output (the summary says how many, why and where); 1 when anything was left undelivered or the
//! run could not start. `validate` exits 1 when any file has an error.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use sluice_connectors::registry;
use sluice_connectors::synth::{Profile, write_ndjson};
use sluice_engine::config::{Plan, load_file};
use sluice_engine::metrics::{PipelineMetrics, peak_rss_bytes};
use sluice_engine::runtime::{RunOptions, RunReport, run};
use sluice_engine::traits::StopSignal;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// sluice: a self-hosted streaming delivery engine (what Kinesis Data Firehose does, as one binary).
#[derive(Parser)]
#[command(name = "sluice", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a pipeline: a batch run ends when its input is delivered; a stream run ends on Ctrl-C/SIGTERM.
    Run {
        /// The pipeline file.
        pipeline: PathBuf,
        /// Timely worker threads (default: `workers` in the file, else one per core).
        #[arg(long)]
        workers: Option<usize>,
        /// No progress bar.
        #[arg(long)]
        quiet: bool,
    },
    /// Check pipeline files and print their graphs, or every error with file:line:col.
    Validate {
        /// Pipeline files.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Write synthetic logs as NDJSON (deterministic for a seed).
    Gen {
        /// Log shape.
        #[arg(long, value_enum, default_value = "cloudfront")]
        profile: Profile,
        /// How many records.
        #[arg(long, default_value_t = 1000)]
        records: u64,
        /// Seed.
        #[arg(long, default_value_t = 42)]
        seed: u64,
        /// Output file (default: standard output).
        #[arg(long, short)]
        output: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("SLUICE_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run { pipeline, workers, quiet } => run_command(&pipeline, workers, quiet),
        Command::Validate { files } => Ok(validate_command(&files)),
        Command::Gen { profile, records, seed, output } => {
            gen_command(profile, records, seed, output).map(|()| ExitCode::SUCCESS)
        }
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn validate_command(files: &[PathBuf]) -> ExitCode {
    let registry = registry();
    let mut failed = false;
    for file in files {
        match load_file(file, &registry) {
            Ok(plan) => println!("{}: ok\n{}", file.display(), plan.render()),
            Err(diagnostics) => {
                failed = true;
                eprintln!("{diagnostics}\n");
            }
        }
    }
    if failed { ExitCode::from(1) } else { ExitCode::SUCCESS }
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

/// Stops the run on SIGINT or SIGTERM (a second signal exits at once).
fn stop_on_signals(stop: StopSignal) {
    std::thread::spawn(move || {
        let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() else {
            return;
        };
        rt.block_on(async move {
            let Ok(mut term) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) else {
                return;
            };
            for round in 0..2 {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
                if round == 0 {
                    eprintln!(
                        "sluice: stopping: no new input; flushing and delivering what was read (signal again to abort)"
                    );
                    stop.stop();
                } else {
                    std::process::exit(130);
                }
            }
        });
    });
}

fn run_command(pipeline: &std::path::Path, workers: Option<usize>, quiet: bool) -> anyhow::Result<ExitCode> {
    let registry = registry();
    let plan = match load_file(pipeline, &registry) {
        Ok(plan) => plan,
        Err(diagnostics) => {
            eprintln!("{diagnostics}");
            return Ok(ExitCode::from(1));
        }
    };
    let metrics = Arc::new(PipelineMetrics::new(plan.sources.len(), plan.sinks.len()));
    let mut options = RunOptions::for_plan(&plan);
    if let Some(w) = workers {
        options.workers = w.max(1);
    }
    stop_on_signals(options.stop.clone());
    let progress = (!quiet && std::io::stderr().is_terminal()).then(|| progress_bar(&metrics));
    let result = run(&plan, &options, Arc::clone(&metrics));
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
    let _ = writeln!(out, "pipeline {} finished in {:.2} s with {} workers", plan.name, secs, report.workers);
    let _ = writeln!(
        out,
        "  in         {} records, {} ({:.1} MB/s)",
        metrics.records_in(),
        indicatif::HumanBytes(bytes_in),
        bytes_in as f64 / 1e6 / secs
    );
    let mut any_failed = false;
    let mut any_undelivered = false;
    for (sink, m) in plan.sinks.iter().zip(&metrics.sinks) {
        let (raw, stored) = (m.bytes_delivered.load(Relaxed), m.bytes_stored.load(Relaxed));
        let _ = writeln!(
            out,
            "  sink {}  delivered {} records in {} objects, {} before compression, {} stored ({:.2}x), {:.1} MB/s",
            sink.name,
            m.records_delivered.load(Relaxed),
            m.objects.load(Relaxed),
            indicatif::HumanBytes(raw),
            indicatif::HumanBytes(stored),
            raw as f64 / stored.max(1) as f64,
            raw as f64 / 1e6 / secs
        );
        let failed = m.records_failed.load(Relaxed);
        if failed > 0 {
            any_failed = true;
            let reasons = m.reasons.lock().map(|r| format!("{r:?}")).unwrap_or_default();
            let keys = m.error_keys.lock().map(|k| k.join(", ")).unwrap_or_default();
            let _ = writeln!(
                out,
                "    failed   {failed} records went to the error output {} (reasons {reasons}); e.g. {keys}",
                sink.sink.describe()
            );
        }
        let undelivered = m.records_undelivered.load(Relaxed);
        if undelivered > 0 {
            any_undelivered = true;
            let last = m.last_error.lock().ok().and_then(|l| l.clone()).unwrap_or_default();
            let _ = writeln!(out, "    UNDELIVERED {undelivered} records: {last}");
        }
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

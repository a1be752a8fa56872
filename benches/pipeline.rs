//! End-to-end throughput, each sluice run beside its baseline in the same invocation so the ratios
//! compare runs on the same (shared, noisy) machine:
//! - `file → ndjson + gzip(6) → file://` and `+ zstd(3)`, 1 and 2 workers, vs `pigz -6 -p 2` and
//!   `zstd -3 -T2`;
//! - `file → parquet (snappy | zstd) → file://`, 1 and 2 workers, vs the DuckDB CLI's
//!   `COPY (SELECT * FROM read_json(..., columns = {...})) TO ... (FORMAT parquet)` with 2 threads,
//!   given the schema sluice declares and zstd at sluice's level (1).
//!
//! Whole processes side by side (wall, CPU and peak RSS of `sluice run` against each tool, alternating
//! runs, more baselines) are `sluice bench`.
//!
//! `cargo bench --bench pipeline` (input size: `SLUICE_BENCH_MB`, default 200). Baselines: `pigz` and
//! `zstd` from the PATH (`apt-get install pigz zstd`), `duckdb` from the PATH or
//! target/bench-venv (`python3 -m venv target/bench-venv && target/bench-venv/bin/pip install -r
//! benches/requirements.txt`); a missing baseline is skipped with a note.

// A benchmark has no caller to report to: a failed set-up aborts it with its reason.
#![allow(clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

// With `--features mimalloc` (musl/static builds); the system allocator otherwise (README: Performance).
#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use criterion::measurement::WallTime;
use criterion::{BenchmarkGroup, Criterion, Throughput};
use sluice_connectors::registry;
use sluice_connectors::synth::{Profile, write_ndjson};
use sluice_engine::runtime::{RunOptions, run};
use sluice_engine::testkit::{file_pipeline_toml, plan_from_str};

fn input_file() -> (PathBuf, u64) {
    let mb: u64 = std::env::var("SLUICE_BENCH_MB").ok().and_then(|v| v.parse().ok()).unwrap_or(200);
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("bench");
    let path = dir.join(format!("cloudfront-{mb}mb.ndjson"));
    if !path.exists() {
        std::fs::create_dir_all(&dir).expect("bench folder");
        // ~490 bytes per record.
        let records = mb * 1_000_000 / 490;
        let mut file = std::io::BufWriter::new(std::fs::File::create(&path).expect("bench input"));
        write_ndjson(Profile::Cloudfront, 1, records, &mut file).expect("write bench input");
    }
    let len = std::fs::metadata(&path).expect("bench input").len();
    (path, len)
}

fn pipeline(input: &Path, out: &Path, format: &str, compression: &str) -> String {
    let schema = cloudfront_schema();
    let (size_mb, extra) = if format == "parquet" {
        (128, format!("schema = \"{}\"\nparquet = {{ row_group_mb = 128 }}\n", schema.display()))
    } else {
        (64, String::new())
    };
    let sink_keys = format!(
        "format = \"{format}\"\ncompression = \"{compression}\"\nbuffer = {{ size_mb = {size_mb}, interval_s = 900 }}\n{extra}"
    );
    file_pipeline_toml("bench", input, &format!("file://{}", out.display()), &sink_keys)
}

/// The DuckDB CLI: on the PATH, or in target/bench-venv.
fn duckdb() -> Option<PathBuf> {
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench-venv/bin/duckdb");
    if venv.exists() {
        return Some(venv);
    }
    have("duckdb").then(|| PathBuf::from("duckdb"))
}

/// How `sluice bench` tells its baselines sluice's schema (the same file, not a copy).
#[allow(dead_code)]
#[path = "../connectors/src/bin/sluice/bench/schema.rs"]
mod schema;

/// The schema sluice's Parquet cases declare.
fn cloudfront_schema() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../pipelines/schemas/cloudfront.toml")
}

fn run_duckdb(duckdb: &Path, input: &Path, out: &Path, codec: &str) {
    let cloudfront = std::fs::read_to_string(cloudfront_schema()).expect("the CloudFront schema");
    let columns = schema::duckdb_columns(&schema::declared(&cloudfront).expect("the CloudFront schema"));
    // parquet-rs (sluice) writes zstd at level 1; DuckDB's default is 3.
    let level = if codec == "zstd" { ", COMPRESSION_LEVEL 1" } else { "" };
    let sql = format!(
        "SET threads = 2; COPY (SELECT * FROM read_json('{}', format = 'newline_delimited', columns = {columns})) TO '{}' (FORMAT parquet, COMPRESSION {codec}{level});",
        input.display(),
        out.join("duckdb.parquet").display()
    );
    let status = Command::new(duckdb).arg("-c").arg(sql).stdout(Stdio::null()).status().expect("duckdb");
    assert!(status.success());
}

fn run_sluice(toml: &str, workers: usize) {
    let plan = plan_from_str(toml, &registry()).expect("bench pipeline");
    let metrics = Arc::new(plan.new_metrics());
    let mut options = RunOptions::for_plan(&plan);
    options.workers = workers;
    run(&plan, &options, metrics).expect("bench run");
}

fn have(tool: &str) -> bool {
    Command::new(tool).arg("--version").stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok_and(|s| s.success())
}

fn run_tool(tool: &str, args: &[&str], input: &Path) {
    let status = Command::new(tool)
        .args(args)
        .stdin(std::fs::File::open(input).expect("bench input"))
        .stdout(Stdio::null())
        .status()
        .expect("baseline tool");
    assert!(status.success());
}

/// Benchmarks `toml` with 1 and 2 workers as `<label> workers=N`, emptying `out` after each run.
fn bench_sluice(group: &mut BenchmarkGroup<'_, WallTime>, label: &str, toml: &str, out: &Path) {
    for workers in [1, 2] {
        group.bench_function(format!("{label} workers={workers}"), |b| {
            b.iter(|| {
                run_sluice(toml, workers);
                let _ = std::fs::remove_dir_all(out);
            })
        });
    }
}

fn bench(c: &mut Criterion) {
    let (input, len) = input_file();
    let out = tempfile::tempdir().expect("bench output");
    let mut group = c.benchmark_group("file_to_object_store");
    group.sample_size(10).measurement_time(Duration::from_secs(20)).throughput(Throughput::Bytes(len));
    let cases: [(&str, &str, &str, &[&str]); 2] = [
        ("gzip", "pigz", "pigz -6 -p 2", &["-6", "-p", "2", "-c"]),
        ("zstd", "zstd", "zstd -3 -T2", &["-3", "-T2", "-c"]),
    ];
    for (compression, tool, name, args) in cases {
        if have(tool) {
            group.bench_function(name, |b| b.iter(|| run_tool(tool, args, &input)));
        } else {
            eprintln!("{tool} not found: baseline skipped");
        }
        let toml = pipeline(&input, out.path(), "ndjson", compression);
        bench_sluice(&mut group, &format!("sluice {compression}"), &toml, out.path());
    }
    group.finish();

    let mut group = c.benchmark_group("json_to_parquet");
    group.sample_size(10).measurement_time(Duration::from_secs(30)).throughput(Throughput::Bytes(len));
    for codec in ["snappy", "zstd"] {
        match duckdb() {
            Some(duckdb) => {
                group.bench_function(format!("duckdb {codec} threads=2"), |b| {
                    b.iter(|| {
                        std::fs::create_dir_all(out.path()).expect("bench output");
                        run_duckdb(&duckdb, &input, out.path(), codec);
                        let _ = std::fs::remove_dir_all(out.path());
                    })
                });
            }
            None => eprintln!("duckdb not found: baseline skipped (see benches/requirements.txt)"),
        }
        let toml = pipeline(&input, out.path(), "parquet", codec);
        bench_sluice(&mut group, &format!("sluice parquet {codec}"), &toml, out.path());
    }
    group.finish();
}

/// Prints each sluice run's speed as a ratio to its baseline, from criterion's estimates.
fn print_ratios() {
    let root = Path::new(env!("CARGO_TARGET_TMPDIR")).join("../criterion");
    let mean = |id: &str| -> Option<f64> {
        let text = std::fs::read_to_string(root.join(id).join("new/estimates.json")).ok()?;
        let v: serde_json::Value = serde_json::from_str(&text).ok()?;
        v["mean"]["point_estimate"].as_f64()
    };
    println!("\nratios (baseline time / sluice time; > 1 means sluice is faster):");
    let pairs = [
        ("file_to_object_store", "sluice gzip", "pigz -6 -p 2"),
        ("file_to_object_store", "sluice zstd", "zstd -3 -T2"),
        ("json_to_parquet", "sluice parquet snappy", "duckdb snappy threads=2"),
        ("json_to_parquet", "sluice parquet zstd", "duckdb zstd threads=2"),
    ];
    for (group, sluice, baseline) in pairs {
        for workers in [1, 2] {
            let id = format!("{sluice} workers={workers}");
            if let (Some(b), Some(s)) = (mean(&format!("{group}/{baseline}")), mean(&format!("{group}/{id}"))) {
                println!("  {id:<34} vs {baseline:<24} {:.2}x", b / s);
            }
        }
    }
}

fn main() {
    let mut criterion = Criterion::default().configure_from_args();
    bench(&mut criterion);
    criterion.final_summary();
    print_ratios();
}

//! PutRecordBatch ingest through sluice's Firehose API into an object store, against the same
//! requests to a trivial HTTP server that only reads the body, in the same run.
//!
//! Each request carries 500 VPC-Flow-Logs-style records (~300 B each). `SLUICE_INGEST_CLIENTS`
//! concurrent clients (default 8) send pre-built requests back to back for `SLUICE_INGEST_SECONDS`
//! (default 5) per scenario: the trivial server; then sluice with SigV4 off and on, into
//! `file://` objects with `compression = "none"` and `"zstd"`, each with the write-ahead log
//! `durability = "fsync"`; then `compression = "none"`, SigV4 on, with `durability = "buffered"` and
//! `"none"` (no log), for the cost of the log. Prints records/s, MiB/s of record
//! data, p50/p99 request latency and each scenario's throughput as a ratio to the trivial server.
//! Every acknowledged record is checked to have been delivered.
//!
//! `cargo bench --bench ingest`

// A benchmark has no caller to report to: a failed set-up aborts it with its reason.
#![allow(clippy::expect_used, clippy::unwrap_used)]

// With `--features mimalloc` (musl/static builds); the system allocator otherwise (README: Performance).
#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use sluice_connectors::load::{
    ACCESS_KEY, LoadOutcome, RECORDS_PER_REQUEST, SECRET_KEY, Until, bodies, free_port, requests, send, trivial_server,
    wait_for,
};
use sluice_connectors::registry;
use sluice_engine::runtime::{RunOptions, run};
use sluice_engine::testkit::plan_from_str;

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn report(label: &str, o: &LoadOutcome, baseline: Option<f64>) -> f64 {
    let secs = o.elapsed.as_secs_f64();
    let mib_s = o.bytes as f64 / (1 << 20) as f64 / secs;
    println!(
        "  {label:<40} {:>10.0} records/s {:>8.1} MiB/s   p50 {:>6.1} ms  p99 {:>6.1} ms{}",
        o.records as f64 / secs,
        mib_s,
        o.latency_ms(0.50),
        o.latency_ms(0.99),
        baseline.map_or(String::new(), |b| format!("   {:.2}x the trivial server", mib_s / b))
    );
    mib_s
}

fn main() {
    let clients = env_number("SLUICE_INGEST_CLIENTS", 8) as usize;
    let seconds = env_number("SLUICE_INGEST_SECONDS", 5);
    let bodies = bodies("bench").unwrap();
    let mean_record = bodies.iter().map(|b| b.1).sum::<u64>() / (bodies.len() * RECORDS_PER_REQUEST) as u64;
    println!(
        "PutRecordBatch ingest: {clients} clients, {RECORDS_PER_REQUEST} records of ~{mean_record} B per request, {seconds} s per scenario"
    );
    let prepared = |port: u16, signed: bool| Arc::new(requests(&bodies, port, signed).unwrap());
    let load = |port: u16, signed: bool| {
        send(port, &prepared(port, signed), clients, Until::Elapsed(Duration::from_secs(seconds))).unwrap()
    };

    let port = free_port().unwrap();
    let server = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let listener = server.block_on(tokio::net::TcpListener::bind(("127.0.0.1", port))).unwrap();
    server.spawn(trivial_server(listener));
    wait_for(port).unwrap();
    let trivial = load(port, false);
    let baseline = report("trivial server (reads the body)", &trivial, None);
    server.shutdown_background();

    let scenarios = [
        ("none", false, "fsync"),
        ("none", true, "fsync"),
        ("zstd", false, "fsync"),
        ("zstd", true, "fsync"),
        ("none", true, "buffered"),
        ("none", true, "none"),
    ];
    for (compression, signed, durability) in scenarios {
        let out = tempfile::tempdir().unwrap();
        let port = free_port().unwrap();
        let auth = if signed {
            format!("auth = {{ access_keys = [{{ id = \"{ACCESS_KEY}\", secret = \"{SECRET_KEY}\" }}] }}")
        } else {
            String::new()
        };
        let toml = format!(
            "[pipeline]\nname = \"bench\"\ndata_dir = \"{}\"\ndurability = \"{durability}\"\n[sources.api]\ntype = \"firehose\"\nlisten = \"127.0.0.1:{port}\"\n{auth}\n\
             [sinks.out]\ntype = \"object_store\"\ninputs = [\"api\"]\nurl = \"file://{}\"\nformat = \"raw\"\n\
             compression = \"{compression}\"\nbuffer = {{ size_mb = 64, interval_s = 60 }}\n",
            out.path().join("data").display(),
            out.path().join("objects").display()
        );
        let plan = plan_from_str(&toml, &registry()).expect("bench pipeline");
        let metrics = Arc::new(plan.new_metrics());
        let mut options = RunOptions::for_plan(&plan);
        options.workers = 2;
        let stop = options.stop.clone();
        let m = Arc::clone(&metrics);
        let pipeline = std::thread::spawn(move || run(&plan, &options, m).expect("bench run"));
        wait_for(port).unwrap();
        let outcome = load(port, signed);
        let label = format!("sluice {compression}, SigV4 {}, log {durability}", if signed { "on" } else { "off" });
        report(&label, &outcome, Some(baseline));
        stop.stop();
        pipeline.join().expect("pipeline thread");
        let delivered = metrics.sinks[0].records_delivered.load(Relaxed);
        assert_eq!(delivered, metrics.api.incoming_records.load(Relaxed), "acknowledged records not delivered");
        assert!(delivered >= outcome.records);
    }
}

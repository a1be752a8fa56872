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
use std::time::{Duration, Instant};

use base64::Engine as _;
use sluice_connectors::api::sigv4::Signer;
use sluice_connectors::registry;
use sluice_connectors::synth::{Profile, write_ndjson};
use sluice_engine::metrics::PipelineMetrics;
use sluice_engine::runtime::{RunOptions, run};
use sluice_engine::testkit::plan_from_str;

const RECORDS_PER_REQUEST: usize = 500;
const DISTINCT_REQUESTS: usize = 32;
const KEY: &str = "AKIDBENCH";
const SECRET: &str = "bench-secret";

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// Request bodies and the record bytes each carries.
fn bodies() -> Vec<(Vec<u8>, u64)> {
    let mut ndjson = Vec::new();
    write_ndjson(Profile::Vpcflow, 7, (RECORDS_PER_REQUEST * DISTINCT_REQUESTS) as u64, &mut ndjson).unwrap();
    let lines: Vec<&[u8]> = ndjson.split(|b| *b == b'\n').filter(|l| !l.is_empty()).collect();
    lines
        .chunks(RECORDS_PER_REQUEST)
        .map(|chunk| {
            let records: Vec<serde_json::Value> = chunk
                .iter()
                .map(|r| serde_json::json!({"Data": base64::engine::general_purpose::STANDARD.encode(r)}))
                .collect();
            let body = serde_json::json!({"DeliveryStreamName": "bench", "Records": records});
            (serde_json::to_vec(&body).unwrap(), chunk.iter().map(|r| r.len() as u64).sum())
        })
        .collect()
}

/// Headers for one request, signed when `signed`.
fn headers(port: u16, body: &[u8], signed: bool) -> reqwest::header::HeaderMap {
    let mut h = http::HeaderMap::new();
    h.insert("host", format!("127.0.0.1:{port}").parse().unwrap());
    h.insert("content-type", "application/x-amz-json-1.1".parse().unwrap());
    h.insert("x-amz-target", "Firehose_20150804.PutRecordBatch".parse().unwrap());
    if signed {
        let now = chrono::Utc::now().format("%Y%m%dT%H%M%SZ").to_string();
        let signer = Signer { key_id: KEY, secret: SECRET, region: "us-east-1", service: "firehose" };
        signer.sign(&now, "POST", "/", &mut h, body).unwrap();
    }
    h
}

struct Outcome {
    records: u64,
    bytes: u64,
    latencies: Vec<Duration>,
    elapsed: Duration,
}

/// Sends the requests from `clients` concurrent clients for `seconds`.
fn load(
    port: u16,
    requests: &Arc<Vec<(bytes::Bytes, reqwest::header::HeaderMap, u64)>>,
    clients: usize,
    seconds: u64,
) -> Outcome {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let started = Instant::now();
    let deadline = started + Duration::from_secs(seconds);
    let http = reqwest::Client::builder().pool_max_idle_per_host(clients).build().unwrap();
    let results = runtime.block_on(async {
        let tasks: Vec<_> = (0..clients)
            .map(|c| {
                let (http, requests) = (http.clone(), Arc::clone(requests));
                tokio::spawn(async move {
                    let (mut records, mut bytes, mut latencies) = (0u64, 0u64, Vec::new());
                    let mut i = c;
                    while Instant::now() < deadline {
                        let (body, headers, data_bytes) = &requests[i % requests.len()];
                        i += clients;
                        let sent = Instant::now();
                        let response = http
                            .post(format!("http://127.0.0.1:{port}/"))
                            .headers(headers.clone())
                            .body(body.clone())
                            .send()
                            .await
                            .expect("request");
                        assert!(response.status().is_success(), "status {}", response.status());
                        let text = response.bytes().await.expect("response body");
                        latencies.push(sent.elapsed());
                        // Throttled records are not counted (an SDK would send them again).
                        if text.windows(18).any(|w| w == b"\"FailedPutCount\":0") || text.as_ref() == b"{}" {
                            records += RECORDS_PER_REQUEST as u64;
                            bytes += data_bytes;
                        }
                    }
                    (records, bytes, latencies)
                })
            })
            .collect();
        let mut out = Vec::new();
        for t in tasks {
            out.push(t.await.expect("client"));
        }
        out
    });
    let elapsed = started.elapsed();
    let mut outcome = Outcome { records: 0, bytes: 0, latencies: Vec::new(), elapsed };
    for (r, b, l) in results {
        outcome.records += r;
        outcome.bytes += b;
        outcome.latencies.extend(l);
    }
    outcome.latencies.sort();
    outcome
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn wait_for(port: u16) {
    let started = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(started.elapsed() < Duration::from_secs(10), "nothing listens on {port}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn report(label: &str, o: &Outcome, baseline: Option<f64>) -> f64 {
    let secs = o.elapsed.as_secs_f64();
    let mib_s = o.bytes as f64 / (1 << 20) as f64 / secs;
    let pct =
        |p: f64| o.latencies.get(((o.latencies.len() as f64 * p) as usize).min(o.latencies.len().saturating_sub(1)));
    let ms = |d: Option<&Duration>| d.map_or(0.0, |d| d.as_secs_f64() * 1000.0);
    println!(
        "  {label:<40} {:>10.0} records/s {:>8.1} MiB/s   p50 {:>6.1} ms  p99 {:>6.1} ms{}",
        o.records as f64 / secs,
        mib_s,
        ms(pct(0.50)),
        ms(pct(0.99)),
        baseline.map_or(String::new(), |b| format!("   {:.2}x the trivial server", mib_s / b))
    );
    mib_s
}

/// The trivial server: reads the body, answers `{}`.
fn trivial_server(port: u16) -> tokio::runtime::Runtime {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    runtime.spawn(async move {
        let app = axum::Router::new()
            .route(
                "/",
                axum::routing::post(|body: axum::body::Bytes| async move {
                    std::hint::black_box(body.len());
                    "{}"
                }),
            )
            .layer(axum::extract::DefaultBodyLimit::disable());
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await.unwrap();
        axum::serve(listener, app).await.unwrap();
    });
    runtime
}

fn main() {
    let clients = env_number("SLUICE_INGEST_CLIENTS", 8) as usize;
    let seconds = env_number("SLUICE_INGEST_SECONDS", 5);
    let bodies = bodies();
    let mean_record = bodies.iter().map(|b| b.1).sum::<u64>() / (bodies.len() * RECORDS_PER_REQUEST) as u64;
    println!(
        "PutRecordBatch ingest: {clients} clients, {RECORDS_PER_REQUEST} records of ~{mean_record} B per request, {seconds} s per scenario"
    );
    let prepared = |port: u16, signed: bool| {
        Arc::new(
            bodies
                .iter()
                .map(|(body, data)| (bytes::Bytes::from(body.clone()), headers(port, body, signed), *data))
                .collect::<Vec<_>>(),
        )
    };

    let port = free_port();
    let server = trivial_server(port);
    wait_for(port);
    let trivial = load(port, &prepared(port, false), clients, seconds);
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
        let port = free_port();
        let auth = if signed {
            format!("auth = {{ access_keys = [{{ id = \"{KEY}\", secret = \"{SECRET}\" }}] }}")
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
        let metrics = Arc::new(PipelineMetrics::new(plan.sources.len(), plan.sinks.len()));
        let mut options = RunOptions::for_plan(&plan);
        options.workers = 2;
        let stop = options.stop.clone();
        let m = Arc::clone(&metrics);
        let pipeline = std::thread::spawn(move || run(&plan, &options, m).expect("bench run"));
        wait_for(port);
        let outcome = load(port, &prepared(port, signed), clients, seconds);
        let label = format!("sluice {compression}, SigV4 {}, log {durability}", if signed { "on" } else { "off" });
        report(&label, &outcome, Some(baseline));
        stop.stop();
        pipeline.join().expect("pipeline thread");
        let delivered = metrics.sinks[0].records_delivered.load(Relaxed);
        assert_eq!(delivered, metrics.api.incoming_records.load(Relaxed), "acknowledged records not delivered");
        assert!(delivered >= outcome.records);
    }
}

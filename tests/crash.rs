//! Acknowledged means durable: a producer sends uniquely numbered records through the Firehose API
//! while the sluice process is killed with SIGKILL at random (seeded) moments and restarted; at the
//! end every record whose PutRecordBatch entry was acknowledged is at the destination at least once.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use rand::{Rng, SeedableRng};

use super::support::sluice;

const KILLS: usize = 20;
const PER_REQUEST: u64 = 50;

fn start(config: &Path, port: u16) -> Child {
    let child =
        sluice().args(["run", config.to_str().unwrap()]).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let started = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(started.elapsed() < Duration::from_secs(20), "sluice did not listen");
        std::thread::sleep(Duration::from_millis(20));
    }
    child
}

/// Sends numbered records until `stop`; returns the numbers acknowledged.
fn produce(port: u16, next: &AtomicU64, stop: &AtomicBool) -> Vec<u64> {
    let http = reqwest::blocking::Client::builder().timeout(Duration::from_secs(10)).build().unwrap();
    let mut acknowledged = Vec::new();
    while !stop.load(Ordering::SeqCst) {
        let first = next.fetch_add(PER_REQUEST, Ordering::SeqCst);
        let numbers: Vec<u64> = (first..first + PER_REQUEST).collect();
        let records: Vec<serde_json::Value> = numbers
            .iter()
            .map(|n| serde_json::json!({"Data": base64::engine::general_purpose::STANDARD.encode(format!("{{\"n\":{n}}}"))}))
            .collect();
        let body = serde_json::json!({"DeliveryStreamName": "crash", "Records": records}).to_string();
        let response = http
            .post(format!("http://127.0.0.1:{port}/"))
            .header("x-amz-target", "Firehose_20150804.PutRecordBatch")
            .header("content-type", "application/x-amz-json-1.1")
            .body(body)
            .send();
        let Ok(response) = response else { break };
        if !response.status().is_success() {
            continue;
        }
        let Ok(text) = response.text() else { break };
        let parsed: serde_json::Value = serde_json::from_str(&text).unwrap();
        for (n, r) in numbers.iter().zip(parsed["RequestResponses"].as_array().unwrap()) {
            if r["RecordId"].is_string() {
                acknowledged.push(*n);
            }
        }
    }
    acknowledged
}

/// Every `{"n":…}` in delivered objects (staging files of interrupted uploads, `…#…`, are not
/// delivered objects), with how often it appears.
fn delivered(dir: &Path) -> BTreeMap<u64, usize> {
    let mut counts = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            if path.to_string_lossy().contains('#') {
                continue;
            }
            let mut text = String::new();
            std::fs::File::open(&path).unwrap().read_to_string(&mut text).unwrap();
            for line in text.lines() {
                let v: serde_json::Value =
                    serde_json::from_str(line).unwrap_or_else(|e| panic!("{}: {e}: {line}", path.display()));
                *counts.entry(v["n"].as_u64().unwrap()).or_default() += 1;
            }
        }
    }
    counts
}

#[test]
fn records_acknowledged_before_any_of_twenty_kill_9s_are_all_delivered() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let config = dir.path().join("crash.toml");
    std::fs::write(
        &config,
        format!(
            "[pipeline]\nname = \"crash\"\nworkers = 2\ndata_dir = \"{}\"\ndurability = \"fsync\"\n\
             [sources.api]\ntype = \"firehose\"\nlisten = \"127.0.0.1:{port}\"\n\
             [sinks.out]\ntype = \"object_store\"\ninputs = [\"api\"]\nurl = \"file://{}\"\nformat = \"ndjson\"\n\
             buffer = {{ size_mb = 1, interval_s = 1 }}\n",
            dir.path().join("data").display(),
            out.display()
        ),
    )
    .unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(20261126);
    let next = Arc::new(AtomicU64::new(0));
    let acknowledged = Arc::new(Mutex::new(BTreeSet::new()));
    for _ in 0..KILLS {
        let mut child = start(&config, port);
        let stop = Arc::new(AtomicBool::new(false));
        let producers: Vec<_> = (0..2)
            .map(|_| {
                let (next, stop, acknowledged) = (Arc::clone(&next), Arc::clone(&stop), Arc::clone(&acknowledged));
                std::thread::spawn(move || {
                    let acked = produce(port, &next, &stop);
                    acknowledged.lock().unwrap().extend(acked);
                })
            })
            .collect();
        std::thread::sleep(Duration::from_millis(rng.random_range(50..1500)));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        stop.store(true, Ordering::SeqCst);
        for p in producers {
            p.join().unwrap();
        }
    }
    // A last run with a clean stop delivers whatever the log still holds.
    let child = start(&config, port);
    std::thread::sleep(Duration::from_millis(1500));
    assert!(Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap().success());
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));

    let acknowledged = acknowledged.lock().unwrap();
    let counts = delivered(&out);
    let lost: Vec<&u64> = acknowledged.iter().filter(|n| !counts.contains_key(n)).collect();
    let duplicates: usize = counts.values().map(|c| c - 1).sum();
    eprintln!(
        "{} records acknowledged across {KILLS} kills; {} distinct delivered, {duplicates} duplicates",
        acknowledged.len(),
        counts.len()
    );
    assert!(acknowledged.len() > 1000, "too few records acknowledged to mean anything: {}", acknowledged.len());
    assert!(lost.is_empty(), "{} acknowledged records lost, e.g. {:?}", lost.len(), &lost[..lost.len().min(10)]);
}

//! Acknowledged means durable: a producer sends uniquely numbered records through the Firehose API
//! (or Splunk's HTTP Event Collector, acknowledgement ids and all) while the sluice process is
//! killed with SIGKILL at random (seeded) moments and restarted; at the end every record whose
//! PutRecordBatch entry (or HEC request, its ack id true) was acknowledged is at the destination at
//! least once (exactly once in PostgreSQL).

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use rand::{Rng, SeedableRng};

use super::support::{firehose_to_files, free_port, logged_run, sluice, start_listening_with, terminate};

const KILLS: usize = 20;
const PER_REQUEST: u64 = 50;

/// Starts `sluice run config`, its output appended to `log` next to the config (with what the log
/// replays and what loads recognise as loaded before), and waits until it listens on `port`.
fn start(config: &Path, port: u16) -> super::support::Started {
    let filter = "warn,sluice_connectors::api=info,sluice_connectors::sinks::postgres=info";
    start_listening_with(&mut logged_run(config, filter), port)
}

/// How the producers send: one request of records `first..first + PER_REQUEST`, answering the
/// numbers acknowledged, or `None` when the process did not answer.
type Put = fn(&reqwest::blocking::Client, u16, u64) -> Option<Vec<u64>>;

/// How the records reach sluice: the source's keys (its `type` line and what it needs), and one
/// request.
struct Via {
    source: String,
    put: Put,
}

/// Through the Firehose API.
fn firehose() -> Via {
    Via { source: "type = \"firehose\"".into(), put: put_numbered }
}

/// The token of the `splunk_hec` source the HEC crash test sends to.
const HEC_TOKEN: &str = "crash-test-token";

/// Sends numbered records with `put` until `stop`; returns the numbers acknowledged.
fn produce(put: Put, port: u16, next: &AtomicU64, stop: &AtomicBool) -> Vec<u64> {
    let http = reqwest::blocking::Client::builder().timeout(Duration::from_secs(10)).build().unwrap();
    let mut acknowledged = Vec::new();
    while !stop.load(Ordering::SeqCst) {
        match put(&http, port, next.fetch_add(PER_REQUEST, Ordering::SeqCst)) {
            Some(acked) => acknowledged.extend(acked),
            None => break,
        }
    }
    acknowledged
}

/// One PutRecordBatch of records `first..first + PER_REQUEST`; the numbers acknowledged, or `None`
/// when the process did not answer.
fn put_numbered(http: &reqwest::blocking::Client, port: u16, first: u64) -> Option<Vec<u64>> {
    let numbers: Vec<u64> = (first..first + PER_REQUEST).collect();
    let records: Vec<serde_json::Value> = numbers
        .iter()
        .map(
            |n| serde_json::json!({"Data": base64::engine::general_purpose::STANDARD.encode(format!("{{\"n\":{n}}}"))}),
        )
        .collect();
    let body = serde_json::json!({"DeliveryStreamName": "crash", "Records": records}).to_string();
    let response = http
        .post(format!("http://127.0.0.1:{port}/"))
        .header("x-amz-target", "Firehose_20150804.PutRecordBatch")
        .header("content-type", "application/x-amz-json-1.1")
        .body(body)
        .send()
        .ok()?;
    if !response.status().is_success() {
        return Some(Vec::new());
    }
    let parsed: serde_json::Value = serde_json::from_str(&response.text().ok()?).unwrap();
    let responses = parsed["RequestResponses"].as_array().unwrap();
    Some(numbers.iter().zip(responses).filter(|(_, r)| r["RecordId"].is_string()).map(|(n, _)| *n).collect())
}

/// One HEC request of events `{"n":…}` on a channel, as Firehose's Splunk destination sends them:
/// acknowledged when its `ackId` is then answered `true`.
fn put_hec(http: &reqwest::blocking::Client, port: u16, first: u64) -> Option<Vec<u64>> {
    const CHANNEL: &str = "9c2e4a1b-3d5f-4e6a-8b7c-0d1e2f3a4b5c";
    let numbers: Vec<u64> = (first..first + PER_REQUEST).collect();
    let body: String = numbers.iter().map(|n| format!("{{\"event\":{{\"n\":{n}}}}}")).collect();
    let post = |path: &str, body: String| {
        http.post(format!("http://127.0.0.1:{port}{path}"))
            .header("Authorization", format!("Splunk {HEC_TOKEN}"))
            .header("X-Splunk-Request-Channel", CHANNEL)
            .body(body)
            .send()
            .ok()
    };
    let response = post("/services/collector/event", body)?;
    if !response.status().is_success() {
        return Some(Vec::new());
    }
    let answer: serde_json::Value = serde_json::from_str(&response.text().ok()?).unwrap();
    let id = answer["ackId"].as_u64().unwrap();
    let acks: serde_json::Value =
        serde_json::from_str(&post("/services/collector/ack", format!("{{\"acks\":[{id}]}}"))?.text().ok()?).unwrap();
    Some(if acks["acks"][id.to_string()] == true { numbers } else { Vec::new() })
}

/// One forward-protocol message of records `{"n":…}` (Forward mode, a chunk id in its option) on
/// a connection of its own, as Fluent Bit sends with `Require_ack_response`: acknowledged when
/// `{"ack": <chunk>}` comes back.
fn put_fluent(_: &reqwest::blocking::Client, port: u16, first: u64) -> Option<Vec<u64>> {
    use std::io::Write as _;
    let numbers: Vec<u64> = (first..first + PER_REQUEST).collect();
    let chunk = format!("chunk-{first:020}");
    let mut message = vec![0x93, 0xa5];
    message.extend_from_slice(b"crash");
    message.push(0xdc);
    message.extend_from_slice(&u16::try_from(numbers.len()).unwrap().to_be_bytes());
    for n in &numbers {
        message.extend_from_slice(&[0x92, 0xce]);
        message.extend_from_slice(&1_764_547_200u32.to_be_bytes());
        message.extend_from_slice(&[0x81, 0xa1, b'n', 0xcf]);
        message.extend_from_slice(&n.to_be_bytes());
    }
    let mut packed_chunk = vec![0xd9, u8::try_from(chunk.len()).unwrap()];
    packed_chunk.extend_from_slice(chunk.as_bytes());
    message.extend_from_slice(&[0x81, 0xa5]);
    message.extend_from_slice(b"chunk");
    message.extend_from_slice(&packed_chunk);
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    stream.write_all(&message).ok()?;
    let mut expected = vec![0x81, 0xa3, b'a', b'c', b'k'];
    expected.extend_from_slice(&packed_chunk);
    let mut ack = vec![0; expected.len()];
    stream.read_exact(&mut ack).ok()?;
    assert_eq!(ack, expected);
    Some(numbers)
}

/// Every `{"n":…}` (or HEC event `{"event":{"n":…}}`, fluent event `{"record":{"n":…}}`) in delivered objects, with how often it appears. Nothing else may be under
/// `dir`: an interrupted write is staged outside it, never left as a partial object.
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
            assert!(!path.to_string_lossy().contains('#'), "a partial object is visible: {}", path.display());
            let mut text = String::new();
            std::fs::File::open(&path).unwrap().read_to_string(&mut text).unwrap();
            for line in text.lines() {
                let v: serde_json::Value =
                    serde_json::from_str(line).unwrap_or_else(|e| panic!("{}: {e}: {line}", path.display()));
                let n = v["n"].as_u64().or(v["event"]["n"].as_u64()).or(v["record"]["n"].as_u64());
                let n = n.unwrap_or_else(|| panic!("{line}"));
                *counts.entry(n).or_default() += 1;
            }
        }
    }
    counts
}

#[test]
fn records_acknowledged_before_any_of_twenty_kill_9s_are_all_delivered() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    survive_kills(&firehose(), dir.path(), KILLS, None, None, &|| delivered(&out));
}

/// The same through the `splunk_hec` source, a request acknowledged when its ack id is true.
#[test]
fn events_acknowledged_by_splunk_hec_before_kill_9s_are_all_delivered() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let via = Via { source: format!("type = \"splunk_hec\"\ntoken = \"{HEC_TOKEN}\""), put: put_hec };
    survive_kills(&via, dir.path(), 8, None, None, &|| delivered(&out));
}

/// The same through the `fluent` source, a message acknowledged when its chunk id comes back.
#[test]
fn events_acknowledged_by_the_fluent_source_before_kill_9s_are_all_delivered() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let via = Via { source: "type = \"fluent\"".into(), put: put_fluent };
    survive_kills(&via, dir.path(), 8, None, None, &|| delivered(&out));
}

/// The same into PostgreSQL through the `postgres` sink (staged objects, COPY, the load ledgers):
/// every acknowledged record is in the table exactly once. Records loaded and then replayed
/// because the process died between the COMMIT and the log's checkpoint are recognised by their
/// log positions and not loaded again (issue 16).
#[test]
fn records_acknowledged_before_kill_9s_are_loaded_into_postgres_exactly_once() {
    let pg = super::postgres::cluster("CREATE TABLE numbers (n bigint NOT NULL)");
    let dir = tempfile::tempdir().unwrap();
    let sink = format!(
        "[sinks.out]\ntype = \"postgres\"\ninputs = [\"api\"]\nurl = \"{}\"\ntable = \"numbers\"\ncolumns = [\"n\"]\n\
         staging = {{ url = \"file://{}\" }}\nerror_prefix = \"errors/!{{firehose:error-output-type}}/\"\n\
         buffer = {{ size_mb = 1, interval_s = 1 }}\n",
        pg.url(super::postgres::LOADER_PASSWORD),
        dir.path().join("staging").display()
    );
    let loaded = || {
        pg.sql("SELECT n, count(*) FROM numbers GROUP BY n")
            .iter()
            .map(|row| (row[0].parse::<u64>().unwrap(), row[1].parse::<usize>().unwrap()))
            .collect()
    };
    let duplicates = survive_kills(&firehose(), dir.path(), 8, None, Some(&sink), &loaded);
    let log = std::fs::read_to_string(dir.path().join("crash.log")).unwrap();
    let replays = log.matches("replaying acknowledged records").count();
    let recognised = log.matches("were loaded before").count();
    eprintln!("{replays} restarts replayed the log; {recognised} loads found replayed records loaded before");
    assert!(replays > 0, "no restart replayed anything: the test proves nothing\n{log}");
    assert_eq!(duplicates, 0, "records loaded twice");
}

/// The same with a function transform between the API and the sink (issue 13): records held in
/// its buffer or in an invocation in flight when the process is killed are not lost.
#[test]
fn records_in_a_lambda_transform_when_killed_are_not_lost() {
    let server = super::transforms::FunctionServer::start();
    let dir = tempfile::tempdir().unwrap();
    let transform = format!(
        "[transforms.fn]\ntype = \"lambda\"\ninputs = [\"api\"]\nurl = \"{}\"\nbuffer = {{ size_mb = 0.2, interval_s = 60 }}\n",
        server.url("echo")
    );
    let out = dir.path().join("out");
    survive_kills(&firehose(), dir.path(), 8, Some(&transform), None, &|| delivered(&out));
    assert!(!server.events().is_empty(), "the function was called");
}

/// The same through stateful transforms (issue 17): a reference table (enrich) and dedup, whose
/// records wait for their epoch's state, hold nothing back from a restart: nothing acknowledged is
/// lost, and dedup drops none of the distinct records.
#[test]
fn records_in_enrich_and_dedup_when_killed_are_not_lost() {
    let dir = tempfile::tempdir().unwrap();
    let table = dir.path().join("numbers.csv");
    let mut text = "n,hundred\n".to_string();
    (0..1000).for_each(|n| text.push_str(&format!("{n},{}\n", n / 100)));
    std::fs::write(&table, text).unwrap();
    let transforms = format!(
        "[transforms.tag]\ntype = \"enrich\"\ninputs = [\"api\"]\n\
         tables = [{{ path = \"{}\", field = \"n\", key = \"n\", target = \"t\" }}]\n\
         [transforms.fn]\ntype = \"dedup\"\ninputs = [\"tag\"]\nkey = \".n\"\nwindow_s = 60\n",
        table.display()
    );
    let out = dir.path().join("out");
    survive_kills(&firehose(), dir.path(), 8, Some(&transforms), None, &|| delivered(&out));
    let log = std::fs::read_to_string(dir.path().join("crash.log")).unwrap();
    assert!(!log.contains("cannot start"), "{log}");
}

/// Kills `sluice run` `kills` times under load sent `via` a source (a transform `fn` between the source and the sink
/// when given; `sink_table`, a whole `[sinks.out]` table, instead of NDJSON files under `dir/out` when
/// given), then stops it cleanly: every acknowledged record is in what `delivered` reads. Returns
/// how many copies beyond the first `delivered` holds.
fn survive_kills(
    via: &Via,
    dir: &Path,
    kills: usize,
    transform: Option<&str>,
    sink_table: Option<&str>,
    delivered: &dyn Fn() -> BTreeMap<u64, usize>,
) -> usize {
    let out = dir.join("out");
    let port = free_port();
    let config = dir.join("crash.toml");
    let (pipeline, sink) = ("workers = 2\ndurability = \"fsync\"", "buffer = { size_mb = 1, interval_s = 1 }");
    let mut text = firehose_to_files("crash", port, &dir.join("data"), &out, pipeline, "", sink);
    if let Some(transform) = transform {
        text = text.replace(
            "[sinks.out]\ntype = \"object_store\"\ninputs = [\"api\"]",
            &format!("{transform}\n[sinks.out]\ntype = \"object_store\"\ninputs = [\"fn\"]"),
        );
        assert!(text.contains("inputs = [\"fn\"]"));
    }
    if let Some(table) = sink_table {
        let start = text.find("[sinks.out]").unwrap();
        text.replace_range(start.., table);
    }
    text = text.replacen("type = \"firehose\"", &via.source, 1);
    std::fs::write(&config, text).unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(20261126);
    let next = Arc::new(AtomicU64::new(0));
    let acknowledged = Arc::new(Mutex::new(BTreeSet::new()));
    for _ in 0..kills {
        let mut child = start(&config, port);
        let stop = Arc::new(AtomicBool::new(false));
        let put = via.put;
        let producers: Vec<_> = (0..2)
            .map(|_| {
                let (next, stop, acknowledged) = (Arc::clone(&next), Arc::clone(&stop), Arc::clone(&acknowledged));
                std::thread::spawn(move || {
                    let acked = produce(put, port, &next, &stop);
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
    let mut child = start(&config, port);
    std::thread::sleep(Duration::from_millis(1500));
    terminate(&child);
    let status = child.wait().unwrap();
    let log = std::fs::read_to_string(config.with_extension("log")).unwrap();
    assert!(status.success(), "{log}");
    assert!(!log.contains("LOST"), "{log}");

    let acknowledged = acknowledged.lock().unwrap();
    let counts = delivered();
    let lost: Vec<&u64> = acknowledged.iter().filter(|n| !counts.contains_key(n)).collect();
    let duplicates: usize = counts.values().map(|c| c - 1).sum();
    eprintln!(
        "{} records acknowledged across {kills} kills; {} distinct delivered, {duplicates} duplicates",
        acknowledged.len(),
        counts.len()
    );
    if std::env::var("SLUICE_CRASH_KEEP").is_ok() {
        let kept = std::path::PathBuf::from("/tmp/crash-out");
        let _ = std::fs::remove_dir_all(&kept);
        assert!(Command::new("cp").arg("-r").arg(&out).arg(&kept).status().unwrap().success());
        std::fs::copy(config.with_extension("log"), "/tmp/crash-out.log").unwrap();
    }
    assert!(acknowledged.len() > 1000, "too few records acknowledged to mean anything: {}", acknowledged.len());
    assert!(lost.is_empty(), "{} acknowledged records lost, e.g. {:?}", lost.len(), &lost[..lost.len().min(10)]);
    duplicates
}

/// A byte flip in the middle of the log at rest (issue 11, item 2): the restart skips only the
/// damaged entry, delivers every other acknowledged record, reports exactly what was lost (error
/// log and `LogCorruptRecords`), and keeps the damaged bytes in `quarantine/`.
#[test]
fn a_corrupt_log_entry_costs_only_its_own_records_and_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let data = dir.path().join("data");
    let (port, admin) = (free_port(), free_port());
    let config = dir.path().join("crash.toml");
    // Nothing is delivered before the kill: everything acknowledged is only in the log.
    let sink = "buffer = { size_mb = 64, interval_s = 900 }";
    std::fs::write(&config, firehose_to_files("crash", port, &data, &out, "workers = 1", "", sink)).unwrap();
    let mut child = start(&config, port);
    let http = reqwest::blocking::Client::new();
    let mut acknowledged = Vec::new();
    for request in 0..40 {
        let acked = put_numbered(&http, port, request * PER_REQUEST).unwrap();
        assert_eq!(acked.len(), PER_REQUEST as usize);
        acknowledged.extend(acked);
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    // Entry 18 of 40: flip four bytes in the middle of its payload.
    let segment = std::fs::read_dir(data.join("api"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "wal"))
        .unwrap();
    let mut bytes = std::fs::read(&segment).unwrap();
    let magic = [0xE7, b'S', b'L', b'W'];
    let starts: Vec<usize> = bytes.windows(4).enumerate().filter(|(_, w)| *w == magic).map(|(i, _)| i).collect();
    assert_eq!(starts.len(), 40);
    let middle = (starts[18] + starts[19]) / 2;
    for b in &mut bytes[middle..middle + 4] {
        *b ^= 0xff;
    }
    std::fs::write(&segment, &bytes).unwrap();

    let child = sluice()
        .args(["run", config.to_str().unwrap(), "--admin", &format!("127.0.0.1:{admin}")])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The admin endpoint answers from the start, before the log's recovery has counted what it
    // found: wait for the count (a loaded CI machine once read the metrics in between).
    let started = Instant::now();
    let metrics = loop {
        let text = reqwest::blocking::get(format!("http://127.0.0.1:{admin}/metrics")).and_then(|r| r.text());
        match text {
            Ok(text) if text.contains("sluice_LogCorruptEntries{stream=\"crash\"} 1") => break text,
            text => assert!(started.elapsed() < Duration::from_secs(20), "no corruption counted: {text:?}"),
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(metrics.contains("sluice_LogCorruptRecords{stream=\"crash\"} 50"), "{metrics}");
    assert!(metrics.contains("sluice_LogCorruptEntries{stream=\"crash\"} 1"), "{metrics}");
    terminate(&child);
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(stderr.contains("ACKNOWLEDGED RECORDS LOST") && stderr.contains("entries 18..19"), "{stderr}");
    let counts = delivered(&out);
    let lost: Vec<u64> = acknowledged.iter().copied().filter(|n| !counts.contains_key(n)).collect();
    let entry_18: Vec<u64> = (18 * PER_REQUEST..19 * PER_REQUEST).collect();
    assert_eq!(lost, entry_18, "only the damaged entry's records are missing");
    let report = std::fs::read_to_string(data.join("api/quarantine/report.ndjson")).unwrap();
    assert!(report.contains("\"lostRecords\":50"), "{report}");
}

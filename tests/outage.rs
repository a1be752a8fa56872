//! Destination outages against the real S3-protocol server: a store stopped for longer than the
//! retry duration, a store answering 500 (also to a partitioned sink with more partitions than the
//! delivery queue takes), a store answering 403, a store refusing parts of an upload for a while. Every record must end in the
//! destination or in the error output (as Firehose error documents with the destination's code and
//! the attempts made), and be counted; the error output blocks and retries while it is down too.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use base64::Engine;
use s3s::S3ErrorCode;
use sluice_connectors::registry;
use sluice_connectors::synth::Profile;
use sluice_engine::testkit::run_pipeline;

use super::s3::{S3Server, SECRET_KEY};
use super::support::{StartedRun, folder_objects, generated, raw_data};

/// A bucket on a fresh server.
fn server_with_bucket(root: &std::path::Path, bucket: &str) -> S3Server {
    std::fs::create_dir(root.join(bucket)).unwrap();
    S3Server::start(root)
}

/// One sink section writing to `bucket` under `archive/` (data under `data/`, the error output
/// under `errors/<type>/`).
fn sink(server: &S3Server, name: &str, bucket: &str, extra: &str) -> String {
    format!(
        "[sinks.{name}]\ntype = \"object_store\"\ninputs = [\"gen\"]\n{}\nerror_prefix = \"errors/!{{firehose:error-output-type}}/\"\n{extra}\n",
        server.sink_toml(bucket, SECRET_KEY)
    )
}

/// The objects of `bucket`, split into data lines and error documents by key.
struct Stored {
    data: Vec<String>,
    /// Error-output type → its documents.
    errors: BTreeMap<String, Vec<serde_json::Value>>,
}

fn stored(server: &S3Server, bucket: &str) -> Stored {
    let mut out = Stored { data: Vec::new(), errors: BTreeMap::new() };
    for (key, lines) in folder_objects(&server.root.join(bucket)) {
        if let Some(rest) = key.strip_prefix("archive/errors/") {
            let kind = rest.split('/').next().unwrap().to_string();
            let docs = lines.iter().map(|l| serde_json::from_str(l).unwrap());
            out.errors.entry(kind).or_default().extend(docs);
        } else {
            out.data.extend(lines);
        }
    }
    out
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

#[test]
fn a_store_answering_500_is_retried_with_backoff_then_backed_up_whole_objects_and_parts_alike() {
    let root = tempfile::tempdir().unwrap();
    let server = server_with_bucket(root.path(), "bkt");
    server.faults.fail_writes(&["archive/data/", "archive/big/"], S3ErrorCode::InternalError);
    // `small` makes whole 4 MiB objects; `big` one ~27 MB object uploaded in 8 MiB parts.
    let toml = format!(
        "[pipeline]\nname = \"five-hundreds\"\n[sources.gen]\ntype = \"generator\"\nprofile = \"cloudtrail\"\nrecords = 30000\nseed = 8\n{}{}",
        sink(
            &server,
            "small",
            "bkt",
            "prefix = \"data/\"\nformat = \"ndjson\"\ncompression = \"gzip\"\nbuffer = { size_mb = 4, interval_s = 60 }\nretry = { duration_s = 3 }"
        ),
        sink(
            &server,
            "big",
            "bkt",
            "prefix = \"big/\"\nformat = \"ndjson\"\nbuffer = { size_mb = 128, interval_s = 60 }\nretry = { duration_s = 3 }"
        ),
    );
    let (_, metrics) = run_pipeline(&toml, &registry(), 1).unwrap();
    let expected = sorted(generated(Profile::Cloudtrail, 8, 30000));
    let out = stored(&server, "bkt");
    assert!(out.data.is_empty(), "{} data lines stored", out.data.len());
    let docs = &out.errors["s3-failed"];
    // Both sinks backed up every record: each record twice.
    let mut twice: Vec<String> = expected.iter().flat_map(|r| [r.clone(), r.clone()]).collect();
    twice.sort();
    assert_eq!(sorted(docs.iter().map(raw_data).collect()), twice);
    for doc in docs {
        assert_eq!(doc["errorCode"], "S3.InternalError", "{doc}");
        // Back-off 1 s then 2 s (±15 %) inside a 3 s retry duration: two or three attempts.
        let attempts = doc["attemptsMade"].as_u64().unwrap();
        assert!((2..=3).contains(&attempts), "{doc}");
        assert!(doc["attemptEndingTimestamp"].as_i64() >= doc["arrivalTimestamp"].as_i64());
    }
    for m in &metrics.sinks {
        assert_eq!(m.records_failed.load(Relaxed), 30000);
        assert_eq!(m.records_delivered.load(Relaxed) + m.records_undelivered.load(Relaxed), 0);
        assert_eq!(m.reasons.lock().unwrap().get("S3.InternalError"), Some(&30000));
    }
    // Six 4 MiB objects of `small`, each tried at least twice.
    assert!(server.faults.refused.load(Relaxed) >= 2 * 6, "{}", server.faults.refused.load(Relaxed));
    // Failed attempts that are tried again are in the error log (rate-limited), and each backup
    // after them.
    let lines = metrics.errors.get().map(|log| log.recent()).unwrap_or_default();
    for sink in ["small", "big"] {
        let of = |level: &str, says: &str| {
            lines.iter().any(|l| {
                l["component"] == sink
                    && l["level"] == level
                    && l["message"].as_str().is_some_and(|m| m.starts_with(says))
            })
        };
        assert!(of("WARN", "delivery failed; retrying in"), "{sink}: {lines:#?}");
        assert!(of("ERROR", "object not delivered; its records are backed up"), "{sink}: {lines:#?}");
    }
}

#[test]
fn a_part_the_store_refuses_is_sent_again_under_its_number_and_said_in_the_error_log() {
    let root = tempfile::tempdir().unwrap();
    let server = server_with_bucket(root.path(), "bkt");
    // The upload starts and completes; two of its part uploads fail (one part twice, or two once).
    server.faults.fail_next("UploadPart", 2, S3ErrorCode::InternalError);
    let toml = format!(
        "[pipeline]\nname = \"parts\"\n[sources.gen]\ntype = \"generator\"\nprofile = \"cloudtrail\"\nrecords = 30000\nseed = 8\n{}",
        sink(
            &server,
            "big",
            "bkt",
            "prefix = \"big/\"\nformat = \"ndjson\"\nbuffer = { size_mb = 128, interval_s = 60 }\nretry = { duration_s = 30 }"
        ),
    );
    let (_, metrics) = run_pipeline(&toml, &registry(), 1).unwrap();
    assert_eq!(server.faults.refused.load(Relaxed), 2);
    let objects = folder_objects(&server.root.join("bkt"));
    assert_eq!(objects.len(), 1, "{:?}", objects.keys().collect::<Vec<_>>());
    let (key, lines) = objects.into_iter().next().unwrap();
    assert_eq!(sorted(lines), sorted(generated(Profile::Cloudtrail, 8, 30000)), "{key}");
    let m = &metrics.sinks[0];
    assert_eq!(m.records_delivered.load(Relaxed), 30000);
    assert_eq!(m.records_failed.load(Relaxed), 0);
    assert!(m.parts.load(Relaxed) >= 2, "a ~27 MB object goes in 8 MiB parts");
    // The parts' retried attempts are in the error log, under the object's key: nothing else failed.
    let lines = metrics.errors.get().map(|log| log.recent()).unwrap_or_default();
    let retried: Vec<_> = lines
        .iter()
        .filter(|l| {
            l["level"] == "WARN" && l["message"].as_str().is_some_and(|m| m.starts_with("delivery failed; retrying in"))
        })
        .collect();
    assert!(!retried.is_empty(), "{lines:#?}");
    for line in retried {
        assert_eq!(line["component"], "big", "{line}");
        assert_eq!(line["errorCode"], "S3.InternalError", "{line}");
        assert_eq!(format!("archive/{}", line["key"].as_str().unwrap()), key, "{line}");
    }
}

#[test]
fn a_store_answering_403_is_not_retried_and_backup_all_keeps_every_source_record() {
    let root = tempfile::tempdir().unwrap();
    let server = server_with_bucket(root.path(), "bkt");
    server.faults.fail_writes(&["archive/data/"], S3ErrorCode::AccessDenied);
    // The default retry duration is 300 s: a permanent error must not wait for it.
    let toml = format!(
        "[pipeline]\nname = \"denied\"\n[sources.gen]\ntype = \"generator\"\nprofile = \"vpcflow\"\nrecords = 3000\nseed = 2\n{}",
        sink(&server, "s3", "bkt", "prefix = \"data/\"\nformat = \"ndjson\"\ncompression = \"zstd\"\nbackup = \"all\""),
    );
    let started = std::time::Instant::now();
    let (_, metrics) = run_pipeline(&toml, &registry(), 2).unwrap();
    assert!(started.elapsed() < Duration::from_secs(60), "a 403 was retried: {:?}", started.elapsed());
    let expected = sorted(generated(Profile::Vpcflow, 2, 3000));
    let out = stored(&server, "bkt");
    assert!(out.data.is_empty());
    let failed = &out.errors["s3-failed"];
    assert_eq!(sorted(failed.iter().map(raw_data).collect()), expected);
    // The 403 ends the delivery at once (the elapsed time above says no 300 s of retries); on a
    // loaded machine one transient failure of the in-process server before it may count an attempt.
    assert!(
        failed
            .iter()
            .all(|d| d["attemptsMade"].as_u64().is_some_and(|a| a <= 2) && d["errorCode"] == "S3.AccessDenied"),
        "{}",
        failed[0]
    );
    // backup = "all": the source records as they came, one per line.
    let backup: Vec<String> = folder_objects(&server.root.join("bkt"))
        .into_iter()
        .filter(|(k, _)| k.starts_with("archive/errors/source-record-backup/"))
        .flat_map(|(_, lines)| lines)
        .collect();
    assert_eq!(sorted(backup), expected);
    let m = &metrics.sinks[0];
    assert_eq!((m.records_failed.load(Relaxed), m.records_source_backup.load(Relaxed)), (3000, 3000));
    let failed_objects =
        folder_objects(&server.root.join("bkt")).keys().filter(|k| k.starts_with("archive/errors/s3-failed/")).count();
    assert_eq!(server.faults.refused.load(Relaxed), failed_objects as u64, "one attempt per object");
}

#[test]
fn a_store_stopped_past_the_retry_duration_loses_nothing_the_error_output_waits_for_it() {
    let root = tempfile::tempdir().unwrap();
    let mut server = server_with_bucket(root.path(), "bkt");
    // A stream run (2000 records/s) with 1 s objects and a 2 s retry duration; the store goes away
    // from 1.5 s to 7.5 s, so objects of that window exhaust their retries and go to the error
    // output, which is down too: it must block and retry until the store is back.
    let toml = format!(
        "[pipeline]\nname = \"outage\"\n[sources.gen]\ntype = \"generator\"\nprofile = \"cloudfront\"\nrate = 2000\nseed = 4\n{}",
        sink(
            &server,
            "s3",
            "bkt",
            "prefix = \"data/\"\nformat = \"ndjson\"\ncompression = \"gzip\"\nbuffer = { size_mb = 64, interval_s = 1 }\nretry = { duration_s = 2 }"
        ),
    );
    let running = StartedRun::start(&toml, 1);
    std::thread::sleep(Duration::from_millis(1500));
    server.stop();
    std::thread::sleep(Duration::from_secs(6));
    server.resume();
    std::thread::sleep(Duration::from_millis(1500));
    let metrics = Arc::clone(&running.metrics);
    running.finish().unwrap();

    let records_in = metrics.records_in();
    let m = &metrics.sinks[0];
    let (delivered, failed) = (m.records_delivered.load(Relaxed), m.records_failed.load(Relaxed));
    assert!(delivered > 0 && failed > 0, "delivered {delivered}, backed up {failed}");
    assert_eq!(delivered + failed, records_in, "every record is counted once, delivered or backed up");
    assert_eq!(m.records_undelivered.load(Relaxed), 0);
    assert!(m.error_output_failures.load(Relaxed) > 0, "the error output was down too and was retried");
    let out = stored(&server, "bkt");
    let docs = &out.errors["s3-failed"];
    assert!(docs.iter().all(|d| d["errorCode"] == "S3.InternalError"), "{}", docs[0]);
    // At least once: a put cut off by the stop may have landed before its retry or backup.
    let mut all: Vec<String> = out.data.clone();
    all.extend(docs.iter().map(raw_data));
    let all = sorted(all);
    let expected = sorted(generated(Profile::Cloudfront, 4, records_in));
    let missing: Vec<_> = expected.iter().filter(|r| all.binary_search(r).is_err()).take(3).collect();
    assert!(missing.is_empty(), "{} of {records_in} records lost, e.g. {missing:?}", missing.len());
}

/// A sink whose store takes data objects but refuses every error-output key as invalid (what an
/// object store answers for a key it can never hold).
struct RefusingErrorKeys;

impl sluice_engine::contract::Sink for RefusingErrorKeys {
    fn describe(&self) -> String {
        "refusing error keys".into()
    }

    fn destination(&self) -> sluice_engine::contract::DestinationKind {
        sluice_engine::contract::DestinationKind::S3
    }

    fn deliver(
        &self,
        payload: sluice_engine::contract::Payload,
    ) -> futures::future::BoxFuture<'static, Result<(), sluice_engine::contract::DeliveryError>> {
        let refused = payload.key.contains("format-conversion-failed");
        Box::pin(async move {
            if refused {
                Err(sluice_engine::contract::DeliveryError::Unstorable {
                    code: "S3.InvalidKey".into(),
                    message: format!("`{}` is not a valid key", payload.key),
                })
            } else {
                Ok(())
            }
        })
    }
}

fn refusing_error_keys(
    config: sluice_engine::config::ConnectorConfig,
) -> Result<Arc<dyn sluice_engine::contract::Sink>, sluice_engine::config::Problems> {
    let mut problems = sluice_engine::config::Problems::default();
    let keys = config.table.deserialize::<std::collections::BTreeMap<String, toml::Value>>(&mut problems);
    problems.finish(keys.map(|_| Arc::new(RefusingErrorKeys) as Arc<dyn sluice_engine::contract::Sink>))
}

/// Issue 11, item 9: an error output whose keys can never be stored stops the run with the reason
/// instead of retrying forever (and a batch run does not hang).
#[test]
fn an_unstorable_error_output_key_stops_the_run_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.ndjson");
    std::fs::write(&input, "{\"a\":1}\nnot json\n{\"a\":2}\n").unwrap();
    let mut registry = registry();
    registry.sinks.push(sluice_engine::config::SinkType {
        name: "refusing_keys",
        configure: refusing_error_keys,
        reads: &[],
        fixed_body: None,
    });
    let toml = format!(
        "[pipeline]\nname = \"unstorable\"\n[sources.in]\ntype = \"file\"\npaths = [\"{}\"]\n\
         [sinks.out]\ntype = \"refusing_keys\"\ninputs = [\"in\"]\nformat = \"csv\"\ncolumns = [\"a\"]\n",
        input.display()
    );
    let (done, finished) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = done.send(run_pipeline(&toml, &registry, 1).map(|_| ()));
    });
    let result = finished.recv_timeout(Duration::from_secs(60)).expect("the run did not stop");
    let error = result.unwrap_err();
    assert!(error.contains("the run had to stop") && error.contains("no retry can"), "{error}");
}

/// A first SIGTERM ends a run in bounded time even while its destination is down (issue 11, item
/// 14): past `stop_timeout_s` the run exits 1 saying so, and what it acknowledged and did not
/// deliver stays in the log, delivered by the next start.
#[test]
fn a_stop_while_the_destination_is_down_ends_in_bounded_time_and_keeps_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let port = super::support::free_port();
    // Nothing listens on the endpoint's port.
    let closed = super::support::free_port();
    let pipeline = |sink: &str| {
        let config = dir.path().join("down.toml");
        std::fs::write(
            &config,
            format!(
                "[pipeline]\nname = \"down\"\ndata_dir = \"{}\"\nstop_timeout_s = 2\n\
                 [sources.api]\ntype = \"firehose\"\nlisten = \"127.0.0.1:{port}\"\n{sink}",
                dir.path().join("data").display()
            ),
        )
        .unwrap();
        config
    };
    let down = pipeline(&format!(
        "[sinks.siem]\ntype = \"http_endpoint\"\ninputs = [\"api\"]\nurl = \"http://127.0.0.1:{closed}/\"\n\
         buffer = {{ size_mb = 1, interval_s = 0 }}\nbackup_store = {{ url = \"file://{}\" }}\n",
        dir.path().join("backup").display()
    ));
    let start = |config: &std::path::Path| {
        let args = ["run", "--quiet", config.to_str().unwrap()];
        super::support::start_listening(&args, port, std::process::Stdio::piped(), std::process::Stdio::piped())
    };
    let child = start(&down);
    let records: Vec<serde_json::Value> = (0..50)
        .map(
            |i| serde_json::json!({"Data": base64::engine::general_purpose::STANDARD.encode(format!("{{\"n\":{i}}}"))}),
        )
        .collect();
    let response = reqwest::blocking::Client::new()
        .post(format!("http://127.0.0.1:{port}/"))
        .header("x-amz-target", "Firehose_20150804.PutRecordBatch")
        .body(serde_json::json!({"DeliveryStreamName": "down", "Records": records}).to_string())
        .send()
        .unwrap();
    assert!(response.status().is_success());
    std::thread::sleep(Duration::from_millis(500));
    let stopping = std::time::Instant::now();
    super::support::terminate(&child);
    let output = child.wait_with_output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(stopping.elapsed() < Duration::from_secs(20), "the stop took {:?}", stopping.elapsed());
    assert_eq!(output.status.code(), Some(1), "{text}");
    assert!(text.contains("STOPPED"), "{text}");
    // The next start, to a destination that works, delivers what the log kept.
    let out = dir.path().join("out");
    let up = pipeline(&format!(
        "[sinks.archive]\ntype = \"object_store\"\ninputs = [\"api\"]\nurl = \"file://{}\"\nformat = \"ndjson\"\n",
        out.display()
    ));
    let child = start(&up);
    std::thread::sleep(Duration::from_millis(1500));
    super::support::terminate(&child);
    assert!(child.wait_with_output().unwrap().status.success());
    let delivered = super::support::all_lines(&folder_objects(&out));
    assert_eq!(delivered.len(), 50, "{delivered:?}");
}

/// A partitioned sink whose store refuses every data object: more partitions end at once than the
/// delivery queue takes (4,096), so the buffer operator waits for failed deliveries and their
/// backups to finish before it seals the rest. Every record ends in the error output exactly once.
#[test]
fn a_partitioned_sink_whose_store_refuses_everything_backs_up_every_partition_once() {
    const RECORDS: u64 = 5_000;
    let root = tempfile::tempdir().unwrap();
    let server = server_with_bucket(root.path(), "bkt");
    server.faults.fail_writes(&["archive/data/"], S3ErrorCode::InternalError);
    let toml = format!(
        "[pipeline]\nname = \"refused-partitions\"\n[sources.gen]\ntype = \"generator\"\nprofile = \"cloudtrail\"\nrecords = {RECORDS}\nseed = 12\n{}",
        sink(
            &server,
            "lake",
            "bkt",
            "prefix = \"data/id=!{partitionKeyFromQuery:id}/\"\npartitioning = { query = '{id: .eventID}' }\n\
             format = \"ndjson\"\ncompression = \"gzip\"\nbuffer = { size_mb = 64, interval_s = 900 }\nretry = { duration_s = 0 }"
        ),
    );
    let (_, metrics) = run_pipeline(&toml, &registry(), 1).unwrap();
    let out = stored(&server, "bkt");
    assert!(out.data.is_empty(), "{} data lines stored", out.data.len());
    let docs = &out.errors["s3-failed"];
    assert_eq!(sorted(docs.iter().map(raw_data).collect()), sorted(generated(Profile::Cloudtrail, 12, RECORDS)));
    assert!(docs.iter().all(|d| d["errorCode"] == "S3.InternalError"));
    let m = &metrics.sinks[0];
    assert_eq!((m.records_failed.load(Relaxed), m.records_delivered.load(Relaxed)), (RECORDS, 0));
    assert_eq!(m.partition_records.lock().unwrap().partitions(), RECORDS as usize);
    assert!(server.faults.refused.load(Relaxed) >= RECORDS, "every partition's object was tried");
}

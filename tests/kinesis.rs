//! The `kinesis` source against moto_server's Kinesis on 127.0.0.1: records put by boto3 and, as
//! KPL aggregated records, by AWS's own aws_kinesis_agg (tests/kinesis_put.py). The source
//! conformance kit; a run stopped and started again, with records put and a shard split while it
//! was down; the example pipeline as it is; a Kinesis that throttles, expires iterators and fails
//! (a proxy in front of moto answering as Kinesis documents), which loses nothing; credentials
//! from an EC2 instance profile and from a role profile assumed through moto's STS; and a cluster
//! of two processes sharing the shards.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::security::{Moto, aws_env};
use super::support::WithoutAwsKeys;
use super::support::{folder_objects, free_port, logged_run, python, repo_root, start_listening_with, terminate};

/// A new stream `name` of `shards` shards; its ARN once ACTIVE.
pub(super) fn create_stream(moto: &Moto, name: &str, shards: u32) -> String {
    moto.boto3(&format!(
        "k = boto3.client('kinesis', endpoint_url=ENDPOINT, region_name='us-east-1')\n\
         k.create_stream(StreamName={name:?}, ShardCount={shards})\n\
         k.get_waiter('stream_exists').wait(StreamName={name:?}, WaiterConfig={{'Delay': 0.2}})\n\
         print(k.describe_stream_summary(StreamName={name:?})['StreamDescriptionSummary']['StreamARN'])"
    ))
}

/// Puts `records` into `stream` through `endpoint` (every `aggregate_every`th group of 100 as one
/// KPL aggregated record; 0: none).
fn put(endpoint: &str, stream: &str, records: &[String], aggregate_every: usize) -> Result<(), String> {
    let file = tempfile::NamedTempFile::new().map_err(|e| e.to_string())?;
    std::fs::write(file.path(), records.join("\n") + "\n").map_err(|e| e.to_string())?;
    let output = Command::new(python())
        .arg(repo_root().join("tests/kinesis_put.py"))
        .args([endpoint, stream, file.path().to_str().unwrap_or_default()])
        .args(["--aggregate-every", &aggregate_every.to_string()])
        .envs(aws_env())
        .output()
        .map_err(|e| e.to_string())?;
    if !output.status.success() {
        return Err(String::from_utf8_lossy(&output.stderr).to_string());
    }
    Ok(())
}

fn numbered(range: std::ops::Range<u32>) -> Vec<String> {
    range.map(|i| format!(r#"{{"n":{i},"service":"svc-{}"}}"#, i % 3)).collect()
}

/// How many times each line was delivered under `out`.
fn delivered(out: &Path) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for line in folder_objects(out).into_values().flatten() {
        *counts.entry(line).or_default() += 1;
    }
    counts
}

/// Waits (at most 60 s) until `out` holds `n` records.
fn wait_for_records(out: &Path, n: usize, log: &Path) {
    let started = Instant::now();
    loop {
        let got: usize = delivered(out).values().sum();
        if got >= n {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "{got} of {n} records delivered: {}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A pipeline reading `stream_arn` through `endpoint` into `file://<out>` (1 s buffers).
fn pipeline(dir: &Path, stream_arn: &str, endpoint: &str, source_keys: &str) -> std::path::PathBuf {
    let config = dir.join("kinesis.toml");
    std::fs::write(
        &config,
        format!(
            "[pipeline]\nname = \"from-kinesis\"\ndata_dir = \"{}\"\n\n\
             [sources.stream]\ntype = \"kinesis\"\nstream = \"{stream_arn}\"\nendpoint = \"{endpoint}\"\npoll_ms = 200\n{source_keys}\n\
             [sinks.out]\ntype = \"object_store\"\ninputs = [\"stream\"]\nurl = \"file://{}\"\nformat = \"ndjson\"\n\
             buffer = {{ size_mb = 1, interval_s = 1 }}\n",
            dir.join("data").display(),
            dir.join("out").display()
        ),
    )
    .unwrap();
    config
}

/// `sluice run config --admin 127.0.0.1:<admin>` with moto's credentials, once it serves.
fn start(config: &Path, admin: u16) -> super::support::Started {
    let mut run = logged_run(config, "warn");
    run.args(["--admin", &format!("127.0.0.1:{admin}")]).envs(aws_env());
    start_listening_with(&mut run, admin)
}

/// The value of the Prometheus sample `name` at `admin`'s `/metrics`.
fn metric(admin: u16, name: &str) -> Option<f64> {
    let text = reqwest::blocking::get(format!("http://127.0.0.1:{admin}/metrics")).ok()?.text().ok()?;
    text.lines().find(|l| l.starts_with(&format!("{name}{{"))).and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

/// `sluice validate --check` lists the stream's shards as a run's start does: a stream Kinesis does
/// not have is an error naming it, one it has passes; nothing is read or written.
#[test]
fn validate_check_finds_a_missing_stream() {
    let moto = Moto::start();
    let arn = create_stream(&moto, "checked", 1);
    let dir = tempfile::tempdir().unwrap();
    let validate = |stream: &str| {
        let config = pipeline(dir.path(), stream, &moto.endpoint, "");
        super::support::sluice().args(["validate", "--check"]).arg(&config).envs(aws_env()).output().unwrap()
    };
    let found = validate(&arn);
    assert!(found.status.success(), "{}", String::from_utf8_lossy(&found.stderr));
    assert!(String::from_utf8_lossy(&found.stdout).contains("sources.stream (kinesis"));
    let missing = validate(&arn.replace("stream/checked", "stream/no-such-stream"));
    let said = String::from_utf8_lossy(&missing.stderr);
    assert_eq!(missing.status.code(), Some(1), "{said}");
    assert!(said.contains("sources.stream (kinesis") && said.contains("cannot list the shards of"), "{said}");
    // With Kinesis's error as its code, as the error log writes it.
    assert!(said.trim_end().ends_with("(Kinesis.ResourceNotFoundException)"), "{said}");
    assert!(!dir.path().join("data").exists() && !dir.path().join("out").exists());
}

/// The source conformance kit: every record exactly once at 1, 2 and 4 workers (a third of them
/// put as KPL aggregated records), a stop right after the records are put repeats nothing, and a
/// run stopped after its first delivery resumes from its checkpoint without starting over.
#[test]
fn the_kinesis_source_passes_the_source_conformance_kit() {
    use sluice_engine::testkit::source::{Check, SourceCase, conformance};
    let moto = Moto::start();
    let arn = create_stream(&moto, "conformance", 3);
    let dir = tempfile::tempdir().unwrap();
    let records = numbered(0..3_000);
    let expected = records.iter().map(|r| r.clone().into_bytes()).collect();
    let endpoint = moto.endpoint.clone();
    let produce = move || put(&endpoint, "conformance", &records, 3);
    let table = format!(
        "type = \"kinesis\"\nstream = \"{arn}\"\nendpoint = \"{}\"\npoll_ms = 200\n\
         access_key_id = \"AKIAMOTOTEST\"\nsecret_access_key = \"moto-secret-never-logged\"\n",
        moto.endpoint
    );
    let case = SourceCase::durable_stream(table, expected, Box::new(produce), dir.path());
    let report = conformance(sluice_connectors::registry(), &case).unwrap_or_else(|e| panic!("{e}"));
    assert!(report.passed.contains(&Check::Resume) && report.skipped.is_empty(), "{report:?}");
}

/// A run delivers what was put while it ran, and counts it as Firehose does; stopped, it keeps
/// each shard's place. Records put while it is down, before and after a shard is split, are all
/// read by the next run (the parent to its end, then its children), and nothing delivered by the
/// first run is delivered again. A stream that does not exist stops a run at start, saying so.
#[test]
fn a_restarted_kinesis_source_resumes_where_it_delivered_and_follows_a_split() {
    let moto = Moto::start();
    let dir = tempfile::tempdir().unwrap();

    let missing = pipeline(dir.path(), "arn:aws:kinesis:us-east-1:123456789012:stream/nowhere", &moto.endpoint, "");
    let output = super::support::sluice().args(["run", missing.to_str().unwrap()]).envs(aws_env()).output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("cannot list the shards of") && stderr.contains("ResourceNotFoundException"), "{stderr}");

    let arn = create_stream(&moto, "trail", 2);
    let config = pipeline(dir.path(), &arn, &moto.endpoint, "");
    let (out, log) = (dir.path().join("out"), config.with_extension("log"));
    let admin = free_port();
    let run = start(&config, admin);
    let first = numbered(0..2_000);
    put(&moto.endpoint, "trail", &first, 4).unwrap();
    wait_for_records(&out, 2_000, &log);
    // 2,000 records in 20 groups of 100, every 4th group one KPL aggregated record: 1,505 Kinesis
    // records read, holding the 2,000 the pipeline takes in.
    let read_records = metric(admin, "sluice_DataReadFromKinesisStream_Records");
    assert_eq!(read_records, Some(1_505.0), "{:?}", std::fs::read_to_string(&log));
    assert_eq!(metric(admin, "sluice_IncomingRecords"), Some(2_000.0));
    assert!(metric(admin, "sluice_DataReadFromKinesisStream_Bytes").unwrap_or(0.0) > 40_000.0);
    assert!(metric(admin, "sluice_KinesisMillisBehindLatest").is_some());
    terminate(&run);
    let mut run = run;
    assert_eq!(run.wait().unwrap().code(), Some(0), "{}", std::fs::read_to_string(&log).unwrap());

    // While it is down: more records, a split of a shard, more records.
    put(&moto.endpoint, "trail", &numbered(2_000..3_000), 0).unwrap();
    moto.boto3(
        "k = boto3.client('kinesis', endpoint_url=ENDPOINT, region_name='us-east-1')\n\
         s = k.list_shards(StreamName='trail')['Shards'][0]\n\
         lo, hi = int(s['HashKeyRange']['StartingHashKey']), int(s['HashKeyRange']['EndingHashKey'])\n\
         k.split_shard(StreamName='trail', ShardToSplit=s['ShardId'], NewStartingHashKey=str((lo + hi) // 2))",
    );
    put(&moto.endpoint, "trail", &numbered(3_000..4_000), 2).unwrap();

    let mut run = start(&config, admin);
    wait_for_records(&out, 4_000, &log);
    std::thread::sleep(Duration::from_secs(3)); // Time to deliver again, were it to start over.
    terminate(&run);
    assert_eq!(run.wait().unwrap().code(), Some(0), "{}", std::fs::read_to_string(&log).unwrap());
    let counts = delivered(&out);
    let want = numbered(0..4_000);
    assert_eq!(counts.len(), want.len(), "distinct records");
    assert!(want.iter().all(|r| counts.get(r) == Some(&1)), "a record missing or delivered twice");
    let offsets: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("data/stream/offsets.json")).unwrap()).unwrap();
    assert_eq!(offsets["shardId-000000000000"], "done", "the split shard is read to its end: {offsets}");
    assert!(offsets["shardId-000000000001"]["offset"].is_string(), "{offsets}");
}

/// What the fault proxy does and did.
#[derive(Default)]
pub(super) struct Faults {
    /// Whether it answers a share of the calls with failures (else it only passes calls on).
    inject: bool,
    /// What it says GetRecords answers are behind the stream's tip (moto always says 0).
    behind_ms: Option<u64>,
    calls: AtomicU64,
    throttled: AtomicU64,
    expired: AtomicU64,
    failed: AtomicU64,
    /// The access key ids and session tokens the calls were signed with.
    signed_with: std::sync::Mutex<std::collections::BTreeSet<(String, String)>>,
}

impl Faults {
    /// A proxy that only passes calls on, its GetRecords answers `ms` behind the stream's tip.
    pub(super) fn behind(ms: u64) -> Self {
        Faults { behind_ms: Some(ms), ..Faults::default() }
    }
}

/// A proxy in front of moto that answers as Kinesis does when it is busy or failing (its API
/// reference: `ProvisionedThroughputExceededException` and `ExpiredIteratorException` with HTTP
/// 400, `InternalFailure` with 500) for a share of the calls, and passes the rest on (with
/// `behind_ms`, as GetRecords answers of a reader that far behind the stream).
pub(super) fn fault_proxy(moto: &str, faults: Arc<Faults>) -> (u16, tokio::runtime::Runtime) {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let port = free_port();
    let moto = moto.to_string();
    let listener = runtime.block_on(tokio::net::TcpListener::bind(("127.0.0.1", port))).unwrap();
    let client = reqwest::Client::new();
    let app = axum::Router::new().fallback(move |mut headers: axum::http::HeaderMap, body: axum::body::Bytes| {
        let (client, moto, faults) = (client.clone(), moto.clone(), Arc::clone(&faults));
        async move {
            let target = headers.get("x-amz-target").and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
            let n = faults.calls.fetch_add(1, Ordering::SeqCst);
            let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
            let key_id = header("authorization")
                .split("Credential=")
                .nth(1)
                .and_then(|c| c.split('/').next())
                .unwrap_or_default()
                .to_string();
            faults.signed_with.lock().unwrap().insert((key_id, header("x-amz-security-token")));
            let error = |status: u16, kind: &str, message: &str| {
                let body = serde_json::json!({ "__type": kind, "message": message }).to_string();
                (
                    axum::http::StatusCode::from_u16(status).unwrap(),
                    [("content-type", "application/x-amz-json-1.1")],
                    body,
                )
            };
            let fault = match n % 7 {
                _ if !faults.inject => None,
                1 if target.ends_with("GetRecords") => {
                    faults.throttled.fetch_add(1, Ordering::SeqCst);
                    Some(error(400, "ProvisionedThroughputExceededException", "Rate exceeded for shard"))
                }
                3 if target.ends_with("GetRecords") => {
                    faults.expired.fetch_add(1, Ordering::SeqCst);
                    Some(error(400, "ExpiredIteratorException", "Iterator expired"))
                }
                5 => {
                    faults.failed.fetch_add(1, Ordering::SeqCst);
                    Some(error(500, "InternalFailure", "We encountered an internal error"))
                }
                _ => None,
            };
            if let Some(fault) = fault {
                return fault;
            }
            // Passed on as sent (moto tells the service by the signature's scope).
            headers.remove("host");
            headers.remove("content-length");
            let answer = client.post(&moto).headers(headers).body(body).send().await.unwrap();
            let status = axum::http::StatusCode::from_u16(answer.status().as_u16()).unwrap();
            let mut text = answer.text().await.unwrap();
            if let Some(behind) = faults.behind_ms.filter(|_| status.is_success() && target.ends_with("GetRecords")) {
                let mut records: serde_json::Value = serde_json::from_str(&text).unwrap();
                records["MillisBehindLatest"] = behind.into();
                text = records.to_string();
            }
            (status, [("content-type", "application/x-amz-json-1.1")], text)
        }
    });
    runtime.spawn(async move { axum::serve(listener, app).await });
    (port, runtime)
}

/// A Kinesis that throttles reads, expires iterators and fails a call in seven: every record is
/// delivered once all the same, the throttling is counted (`ThrottledGetRecords`) and the failures
/// are logged as retried, never fatal.
#[test]
fn a_throttling_and_failing_kinesis_loses_and_repeats_nothing() {
    let moto = Moto::start();
    let arn = create_stream(&moto, "busy", 2);
    let faults = Arc::new(Faults { inject: true, ..Faults::default() });
    let (proxy, _runtime) = fault_proxy(&moto.endpoint, Arc::clone(&faults));
    let dir = tempfile::tempdir().unwrap();
    let config = pipeline(dir.path(), &arn, &format!("http://127.0.0.1:{proxy}"), "start = \"trim_horizon\"\n");
    let (out, log) = (dir.path().join("out"), config.with_extension("log"));
    put(&moto.endpoint, "busy", &numbered(0..3_000), 3).unwrap();
    let admin = free_port();
    let mut run = start(&config, admin);
    wait_for_records(&out, 3_000, &log);
    let throttled = metric(admin, "sluice_ThrottledGetRecords").unwrap_or(0.0);
    terminate(&run);
    assert_eq!(run.wait().unwrap().code(), Some(0), "{}", std::fs::read_to_string(&log).unwrap());
    let counts = delivered(&out);
    assert_eq!(counts.len(), 3_000);
    assert!(counts.values().all(|&n| n == 1), "a record delivered twice");
    let (t, e, f) = (
        faults.throttled.load(Ordering::SeqCst),
        faults.expired.load(Ordering::SeqCst),
        faults.failed.load(Ordering::SeqCst),
    );
    assert!(t > 0 && e > 0 && f > 0, "throttled {t}, expired {e}, failed {f}");
    assert!(throttled >= 1.0, "ThrottledGetRecords {throttled}");
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("InternalFailure") && text.contains("trying again"), "{text}");
}

/// The example pipeline `pipelines/from-kinesis.toml` as a user runs it (its stream from
/// `KINESIS_STREAM_ARN`; its folders, interval and Kinesis endpoint moved into the test's): records of three services land under their service's prefix,
/// one without a service goes to the error output as `partitioning-failed`.
#[test]
fn the_example_from_kinesis_pipeline_partitions_a_streams_records_by_service() {
    let moto = Moto::start();
    let arn = create_stream(&moto, "app-logs", 2);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let text = std::fs::read_to_string(repo_root().join("pipelines/from-kinesis.toml")).unwrap();
    let changed = text
        .replace("file://./out/from-kinesis", &format!("file://{}", out.display()))
        .replace("interval_s = 300", "interval_s = 1")
        .replace("start = \"latest\"\n", &format!("start = \"latest\"\nendpoint = \"{}\"\n", moto.endpoint))
        .replace("[pipeline]\n", &format!("[pipeline]\ndata_dir = \"{}\"\n", dir.path().join("data").display()));
    assert_ne!(changed, text);
    let config = dir.path().join("from-kinesis.toml");
    std::fs::write(&config, changed).unwrap();
    let log = config.with_extension("log");
    let admin = free_port();
    let mut command = logged_run(&config, "warn");
    command.args(["--admin", &format!("127.0.0.1:{admin}")]).envs(aws_env()).env("KINESIS_STREAM_ARN", &arn);
    let mut run = start_listening_with(&mut command, admin);
    let mut records = numbered(0..300);
    records.push(r#"{"n":300}"#.to_string());
    put(&moto.endpoint, "app-logs", &records, 0).unwrap();
    wait_for_records(&out, 301, &log);
    terminate(&run);
    // 2: every record stored, one in the error output.
    assert_eq!(run.wait().unwrap().code(), Some(2), "{}", std::fs::read_to_string(&log).unwrap());
    let objects = folder_objects(&out);
    for service in ["svc-0", "svc-1", "svc-2"] {
        let lines: Vec<&String> = objects
            .iter()
            .filter(|(k, _)| k.starts_with(&format!("service={service}/dt=")))
            .flat_map(|(_, l)| l)
            .collect();
        assert_eq!(lines.len(), 100, "{service}: {:?}", objects.keys());
        assert!(lines.iter().all(|l| l.contains(&format!("\"service\":\"{service}\""))));
    }
    let failed: Vec<_> = objects.iter().filter(|(k, _)| k.starts_with("errors/partitioning-failed/")).collect();
    assert_eq!(failed.len(), 1, "{:?}", objects.keys());
}

/// A Lambda transform on a Kinesis source is shown what Firehose shows a function whose stream
/// reads a Kinesis Data Stream: the event's `sourceKinesisStreamArn` and each record's
/// `kinesisRecordMetadata`: its shard, the partition key its producer gave (a KPL user record's
/// own, from the aggregate's table), its sequence number (shared by an aggregate's user records),
/// its subsequence number (its place in the aggregate) and when Kinesis took it.
#[test]
fn a_lambda_on_a_kinesis_source_is_shown_each_records_kinesis_metadata() {
    use base64::Engine;
    use md5::Digest;
    let moto = Moto::start();
    let arn = create_stream(&moto, "described", 2);
    let function = super::transforms::FunctionServer::start();
    let dir = tempfile::tempdir().unwrap();
    let (out, config) = (dir.path().join("out"), dir.path().join("described.toml"));
    std::fs::write(
        &config,
        format!(
            "[pipeline]\nname = \"described\"\ndata_dir = \"{}\"\n\n\
             [sources.stream]\ntype = \"kinesis\"\nstream = \"{arn}\"\nendpoint = \"{}\"\npoll_ms = 200\n\n\
             [transforms.fn]\ntype = \"lambda\"\ninputs = [\"stream\"]\nurl = \"{}\"\n\n\
             [sinks.out]\ntype = \"object_store\"\ninputs = [\"fn\"]\nurl = \"file://{}\"\nformat = \"ndjson\"\n\
             buffer = {{ size_mb = 1, interval_s = 1 }}\n",
            dir.path().join("data").display(),
            moto.endpoint,
            function.url("echo"),
            out.display()
        ),
    )
    .unwrap();
    let log = config.with_extension("log");
    let admin = free_port();
    let started_ms = chrono::Utc::now().timestamp_millis();
    let run = start(&config, admin);
    // Three groups of 100: the first and the last each one KPL aggregated record.
    put(&moto.endpoint, "described", &numbered(0..300), 2).unwrap();
    let waited = Instant::now();
    while metric(admin, "sluice_IncomingRecords") != Some(300.0) {
        assert!(waited.elapsed() < Duration::from_secs(60), "{}", std::fs::read_to_string(&log).unwrap_or_default());
        std::thread::sleep(Duration::from_millis(100));
    }
    // The function is called at the stop (its buffer's 60 s are not over): every record answered.
    terminate(&run);
    let mut run = run;
    assert_eq!(run.wait().unwrap().code(), Some(0), "{}", std::fs::read_to_string(&log).unwrap());
    assert_eq!(delivered(&out).len(), 300);

    let mut seen = BTreeMap::new();
    for logged in function.events() {
        let event = &logged["event"];
        assert_eq!(event["sourceKinesisStreamArn"], arn.as_str(), "{event}");
        for record in event["records"].as_array().unwrap() {
            let data = base64::engine::general_purpose::STANDARD.decode(record["data"].as_str().unwrap()).unwrap();
            let line: serde_json::Value = serde_json::from_slice(&data).unwrap();
            let n = line["n"].as_u64().unwrap();
            let meta = &record["kinesisRecordMetadata"];
            let keys: Vec<&str> = meta.as_object().unwrap().keys().map(String::as_str).collect();
            assert_eq!(
                keys,
                ["approximateArrivalTimestamp", "partitionKey", "sequenceNumber", "shardId", "subsequenceNumber"]
            );
            // tests/kinesis_put.py keys every record, aggregated or not, by its data's MD5.
            assert_eq!(
                meta["partitionKey"],
                md5::Md5::digest(&data).iter().map(|b| format!("{b:02x}")).collect::<String>(),
                "{n}: {meta}"
            );
            let aggregated = (n / 100).is_multiple_of(2);
            assert_eq!(meta["subsequenceNumber"], if aggregated { n % 100 } else { 0 }, "{n}: {meta}");
            assert!(meta["shardId"].as_str().is_some_and(|s| s.starts_with("shardId-0000000000")), "{meta}");
            let sequence = meta["sequenceNumber"].as_str().unwrap().to_string();
            assert!(!sequence.is_empty() && sequence.bytes().all(|b| b.is_ascii_digit()), "{meta}");
            let arrived = meta["approximateArrivalTimestamp"].as_i64().unwrap();
            assert!(arrived >= started_ms - 5_000 && arrived <= chrono::Utc::now().timestamp_millis(), "{meta}");
            let shard = meta["shardId"].as_str().unwrap().to_string();
            assert!(seen.insert(n, (shard, sequence)).is_none(), "record {n} shown twice");
        }
    }
    assert_eq!(seen.len(), 300);
    // An aggregate's user records share its Kinesis record's sequence number; plain records have
    // their own (sequence numbers are unique within a shard).
    let distinct =
        |range: std::ops::Range<u64>| range.map(|n| seen[&n].clone()).collect::<std::collections::BTreeSet<_>>().len();
    assert_eq!((distinct(0..100), distinct(100..200), distinct(200..300)), (1, 100, 1));
}

/// On an EC2 instance (or EKS, ECS) there are no keys in the environment: the source signs with
/// the instance profile's temporary credentials (and their session token), as the AWS SDKs and
/// sluice's S3 stores do; without them either, the run stops at start naming what it tried.
#[test]
fn a_kinesis_source_without_keys_signs_with_the_instance_profile() {
    let moto = Moto::start();
    let arn = create_stream(&moto, "profiled", 1);
    let faults = Arc::new(Faults::default());
    let (proxy, runtime) = fault_proxy(&moto.endpoint, Arc::clone(&faults));
    let asked = Arc::new(AtomicU64::new(0));
    let imds = super::support::instance_metadata(&runtime, Arc::clone(&asked));
    let dir = tempfile::tempdir().unwrap();
    let config = pipeline(dir.path(), &arn, &format!("http://127.0.0.1:{proxy}"), "start = \"trim_horizon\"\n");
    let (out, log) = (dir.path().join("out"), config.with_extension("log"));
    put(&moto.endpoint, "profiled", &numbered(0..200), 0).unwrap();

    let mut nowhere = super::support::sluice();
    nowhere.args(["run", config.to_str().unwrap()]);
    nowhere.without_aws_keys();
    let output = nowhere.output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("reading a Kinesis stream needs AWS credentials") && stderr.contains("instance profile"),
        "{stderr}"
    );

    let admin = free_port();
    let mut command = logged_run(&config, "warn");
    command
        .args(["--admin", &format!("127.0.0.1:{admin}")])
        .env("AWS_METADATA_ENDPOINT", format!("http://127.0.0.1:{imds}"));
    command.without_aws_keys();
    let mut run = start_listening_with(&mut command, admin);
    wait_for_records(&out, 200, &log);
    terminate(&run);
    assert_eq!(run.wait().unwrap().code(), Some(0), "{}", std::fs::read_to_string(&log).unwrap());
    let signed_with = faults.signed_with.lock().unwrap().clone();
    let profile = ("ASIAIMDSROLE".to_string(), "imds-role-session-token".to_string());
    assert_eq!(signed_with.into_iter().collect::<Vec<_>>(), [profile], "every call signed with the profile's keys");
    assert!(asked.load(Ordering::SeqCst) >= 1);
}

/// A profile of the AWS shared files that names a role (`role_arn` with a `source_profile`, as
/// cross-account readers are set up): the source assumes it through STS (moto's, which implements
/// AWS's AssumeRole API) and signs every Kinesis call with the role's temporary key and session
/// token, never with the source profile's own key.
#[test]
fn a_kinesis_source_signs_with_the_role_its_profile_assumes() {
    let moto = Moto::start();
    let arn = create_stream(&moto, "assumed", 1);
    let faults = Arc::new(Faults::default());
    let (proxy, _runtime) = fault_proxy(&moto.endpoint, Arc::clone(&faults));
    let dir = tempfile::tempdir().unwrap();
    let config = pipeline(dir.path(), &arn, &format!("http://127.0.0.1:{proxy}"), "start = \"trim_horizon\"\n");
    let (out, log) = (dir.path().join("out"), config.with_extension("log"));
    put(&moto.endpoint, "assumed", &numbered(0..100), 0).unwrap();
    let aws_config = dir.path().join("aws-config");
    std::fs::write(
        &aws_config,
        "[profile base]\naws_access_key_id = AKIDBASEPROFILE\naws_secret_access_key = base-secret\n\n\
         [profile reader]\nrole_arn = arn:aws:iam::123456789012:role/stream-reader\nsource_profile = base\nregion = us-east-1\n",
    )
    .unwrap();
    let admin = free_port();
    let mut command = logged_run(&config, "warn");
    command
        .args(["--admin", &format!("127.0.0.1:{admin}")])
        .without_aws_keys()
        .env("AWS_CONFIG_FILE", &aws_config)
        .env("AWS_PROFILE", "reader")
        .env("AWS_ENDPOINT_URL_STS", &moto.endpoint);
    let mut run = start_listening_with(&mut command, admin);
    wait_for_records(&out, 100, &log);
    terminate(&run);
    assert_eq!(run.wait().unwrap().code(), Some(0), "{}", std::fs::read_to_string(&log).unwrap());
    let signed_with: Vec<_> = faults.signed_with.lock().unwrap().iter().cloned().collect();
    assert_eq!(signed_with.len(), 1, "{signed_with:?}");
    let (key, token) = &signed_with[0];
    assert!(key.starts_with("ASIA") && key != "AKIDBASEPROFILE" && !token.is_empty(), "{signed_with:?}");
}

/// In a cluster (2 processes × 1 worker) each shard is read by one worker of one process: every
/// record is delivered once, and the two processes' checkpoints hold disjoint shards that together
/// are the stream's; a SIGTERM to one process stops both with everything taken delivered.
#[test]
fn a_cluster_reads_each_shard_on_one_process_and_every_record_once() {
    use super::cluster::{ProcessSettings, hosts_file, log_of, start_cluster, wait_all};
    let moto = Moto::start();
    let arn = create_stream(&moto, "clustered", 4);
    let dir = tempfile::tempdir().unwrap();
    let config = pipeline(
        dir.path(),
        &arn,
        &moto.endpoint,
        "start = \"trim_horizon\"\naccess_key_id = \"AKIAMOTOTEST\"\nsecret_access_key = \"moto-secret-never-logged\"\n",
    );
    let out = dir.path().join("out");
    let records = numbered(0..4_000);
    put(&moto.endpoint, "clustered", &records, 5).unwrap();
    let hosts = hosts_file(dir.path(), 2);
    let mut children = start_cluster(&config, &hosts, 2, 1, |_| ProcessSettings::default());
    let started = Instant::now();
    while delivered(&out).values().sum::<usize>() < 4_000 {
        assert!(started.elapsed() < Duration::from_secs(60), "{}\n{}", log_of(&config, 0), log_of(&config, 1));
        std::thread::sleep(Duration::from_millis(100));
    }
    terminate(&children[1]);
    let codes = wait_all(&mut children, Duration::from_secs(60));
    assert_eq!(codes, [Some(0), Some(0)], "{}\n{}", log_of(&config, 0), log_of(&config, 1));
    let counts = delivered(&out);
    assert!(counts.len() == 4_000 && counts.values().all(|&n| n == 1), "each record once");
    let shards_of = |process: usize| -> Vec<String> {
        let path = dir.path().join(format!("data/process-{process}/stream/offsets.json"));
        let saved: BTreeMap<String, serde_json::Value> =
            serde_json::from_slice(&std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display())))
                .unwrap();
        saved.into_keys().collect()
    };
    let (first, second) = (shards_of(0), shards_of(1));
    assert!(!first.is_empty() && !second.is_empty(), "{first:?} {second:?}");
    assert!(first.iter().all(|s| !second.contains(s)), "a shard read by both: {first:?} {second:?}");
    assert_eq!(first.len() + second.len(), 4, "{first:?} {second:?}");
}

/// kill -9 in the middle of a run, then again once everything was delivered and checkpointed
/// (half a second at the delivered frontier): after the first, every record is delivered at least
/// once, the records put after the restart too; after the second, nothing delivered before it is
/// delivered again, since each shard resumes after its checkpoint.
#[test]
fn a_killed_kinesis_run_loses_nothing_and_resumes_after_its_checkpoints() {
    let moto = Moto::start();
    let arn = create_stream(&moto, "crashing", 2);
    let dir = tempfile::tempdir().unwrap();
    let config = pipeline(dir.path(), &arn, &moto.endpoint, "start = \"trim_horizon\"\n");
    let (out, log) = (dir.path().join("out"), config.with_extension("log"));
    let admin = free_port();
    let settle = || std::thread::sleep(Duration::from_secs(2));
    let wait_for_all = |n: u32| {
        let started = Instant::now();
        while delivered(&out).len() < n as usize {
            assert!(started.elapsed() < Duration::from_secs(60), "{}", std::fs::read_to_string(&log).unwrap());
            std::thread::sleep(Duration::from_millis(100));
        }
    };

    // kill -9, start again, put `more`, and wait until every record so far is delivered.
    let crash_and_put = |mut run: super::support::Started, more: std::ops::Range<u32>| -> super::support::Started {
        run.kill().unwrap();
        run.wait().unwrap();
        let run = start(&config, admin);
        put(&moto.endpoint, "crashing", &numbered(more.clone()), 0).unwrap();
        wait_for_all(more.end);
        settle();
        run
    };

    put(&moto.endpoint, "crashing", &numbered(0..6_000), 3).unwrap();
    let run = start(&config, admin);
    wait_for_records(&out, 1, &log);
    let run = crash_and_put(run, 6_000..7_000);
    let before_second_kill = delivered(&out);
    assert!(numbered(0..7_000).iter().all(|r| before_second_kill.contains_key(r)), "a record lost");

    let mut run = crash_and_put(run, 7_000..7_500);
    terminate(&run);
    assert_eq!(run.wait().unwrap().code(), Some(0), "{}", std::fs::read_to_string(&log).unwrap());
    let after = delivered(&out);
    let again: Vec<&String> =
        before_second_kill.iter().filter(|(r, n)| after.get(*r) != Some(n)).map(|(r, _)| r).collect();
    assert!(
        again.is_empty(),
        "{} records delivered again after the second restart, e.g. {:?}",
        again.len(),
        again.first()
    );
    assert!(numbered(7_000..7_500).iter().all(|r| after.get(r) == Some(&1)));
}

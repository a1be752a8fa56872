//! Security (issue 18): the write-ahead log encrypted at rest with a key file or a KMS data key
//! (moto_server's KMS on 127.0.0.1), replayed after a kill, refused with a wrong key, and a
//! tampered entry reported while the rest is replayed.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::Value;

use super::support::WithoutAwsKeys;
use super::support::{
    Peer, all_lines, files_under, firehose_call, firehose_to_files, folder_objects, free_port, json_lines_under,
    logged_run, python, sluice, start_listening_with, terminate,
};

/// Records per request.
const PER_REQUEST: usize = 20;

/// moto_server (KMS, S3) on a free port of 127.0.0.1, stopped when dropped.
pub struct Moto {
    _server: Peer,
    /// `http://127.0.0.1:<port>`.
    pub endpoint: String,
}

impl Moto {
    pub fn start() -> Moto {
        let port = free_port();
        let server = Peer::listening(
            Command::new(python().with_file_name("moto_server"))
                .args(["-H", "127.0.0.1", "-p", &port.to_string()])
                .stdout(Stdio::null())
                .stderr(Stdio::null()),
            port,
            "moto_server",
        );
        Moto { _server: server, endpoint: format!("http://127.0.0.1:{port}") }
    }

    /// Runs `script` with boto3, `ENDPOINT` bound; its stdout, trimmed.
    pub fn boto3(&self, script: &str) -> String {
        let output = Command::new(python())
            .args(["-c", &format!("import boto3\nENDPOINT = {:?}\n{script}", self.endpoint)])
            .envs(aws_env())
            .output()
            .unwrap();
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        String::from_utf8_lossy(&output.stdout).trim().to_string()
    }

    /// A new KMS key's ARN.
    pub fn kms_key(&self) -> String {
        self.boto3(
            "print(boto3.client('kms', endpoint_url=ENDPOINT, region_name='us-east-1').create_key()['KeyMetadata']['Arn'])",
        )
    }
}

/// Test credentials for moto (it does not check them).
pub fn aws_env() -> [(&'static str, &'static str); 5] {
    [
        ("AWS_ACCESS_KEY_ID", "AKIAMOTOTEST"),
        ("AWS_SECRET_ACCESS_KEY", "moto-secret-never-logged"),
        ("AWS_REGION", "us-east-1"),
        ("AWS_CONFIG_FILE", "/dev/null"),
        ("AWS_SHARED_CREDENTIALS_FILE", "/dev/null"),
    ]
}

/// `sluice run config`, output appended beside the config, started once it listens on `port`.
fn start(config: &Path, port: u16) -> super::support::Started {
    start_listening_with(logged_run(config, "warn").envs(aws_env()), port)
}

/// One PutRecordBatch of marked records `first..first + PER_REQUEST`; the answer.
fn put(port: u16, first: usize) -> Value {
    let records: Vec<Value> = (first..first + PER_REQUEST)
        .map(|n| {
            let data = format!("{{\"n\":{n},\"note\":\"PLAINTEXT-MARKER-{n}\"}}");
            serde_json::json!({"Data": base64::engine::general_purpose::STANDARD.encode(data)})
        })
        .collect();
    let body = serde_json::json!({"DeliveryStreamName": "sealed", "Records": records}).to_string();
    firehose_call(port, "PutRecordBatch", body)
}

/// The `n` of every delivered record under `out`, sorted.
fn delivered(out: &Path) -> Vec<usize> {
    let mut numbers: Vec<usize> =
        json_lines_under(out).iter().map(|line| line["n"].as_u64().unwrap() as usize).collect();
    numbers.sort_unstable();
    numbers
}

/// A sealed pipeline: acknowledged records are only in the log when it is killed (the sink's
/// buffer holds them), so the restart must unwrap the key and replay them.
fn sealed_pipeline(dir: &Path, port: u16, encryption: &str) -> (PathBuf, PathBuf, PathBuf) {
    let (data, out) = (dir.join("data"), dir.join("out"));
    let config = dir.join("sealed.toml");
    let sink = "buffer = { size_mb = 64, interval_s = 900 }";
    let pipeline = format!("workers = 1\nencryption = {encryption}");
    std::fs::write(&config, firehose_to_files("sealed", port, &data, &out, &pipeline, "", sink)).unwrap();
    (config, data, out)
}

/// Sends `requests` batches, checks each is acknowledged encrypted, and kills the process.
fn put_and_kill(mut child: super::support::Started, port: u16, requests: usize) {
    for request in 0..requests {
        let answer = put(port, request * PER_REQUEST);
        assert_eq!(
            (answer["FailedPutCount"].as_u64(), answer["Encrypted"].as_bool()),
            (Some(0), Some(true)),
            "{answer}"
        );
    }
    child.kill().unwrap();
    child.wait().unwrap();
}

/// Restarts, stops cleanly, and returns the exit status and what the run printed.
fn restart_and_stop(config: &Path, port: u16) -> (bool, String) {
    let child = start(config, port);
    std::thread::sleep(Duration::from_millis(500));
    terminate(&child);
    let mut child = child;
    let status = child.wait().unwrap();
    (status.success(), std::fs::read_to_string(config.with_extension("log")).unwrap_or_default())
}

#[test]
fn a_kms_encrypted_log_holds_no_plaintext_replays_after_a_kill_and_refuses_another_key() {
    let moto = Moto::start();
    let (key, other_key) = (moto.kms_key(), moto.kms_key());
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let encryption = |key: &str| format!("{{ kms_key_id = \"{key}\", kms_endpoint = \"{}\" }}", moto.endpoint);
    let (config, data, out) = sealed_pipeline(dir.path(), port, &encryption(&key));
    // `validate --check` asks KMS for a data key as the start does, writing nothing: a key KMS
    // does not have is said, the real one passes.
    let validate = |config: &Path| sluice().args(["validate", "--check"]).arg(config).envs(aws_env()).output().unwrap();
    let unknown = "arn:aws:kms:us-east-1:123456789012:key/00000000-0000-0000-0000-000000000000";
    std::fs::create_dir(dir.path().join("wrong")).unwrap();
    let (wrong, _, _) = sealed_pipeline(&dir.path().join("wrong"), port, &encryption(unknown));
    let checked = validate(&wrong);
    let stderr = String::from_utf8_lossy(&checked.stderr);
    assert_eq!(checked.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("sources.api (firehose API") && stderr.contains("NotFoundException"), "{stderr}");
    let checked = validate(&config);
    assert!(checked.status.success(), "{}", String::from_utf8_lossy(&checked.stderr));
    assert!(String::from_utf8_lossy(&checked.stdout).contains("sources.api (firehose API"));
    assert!(!data.exists(), "the check wrote the log");
    put_and_kill(start(&config, port), port, 10);

    // Nothing of a record is on disk in the clear; each segment has its key file (KMS's copy).
    let on_disk = files_under(&data);
    assert!(on_disk.iter().any(|f| f.extension().is_some_and(|e| e == "key")), "{on_disk:?}");
    for file in &on_disk {
        let bytes = std::fs::read(file).unwrap();
        assert!(!bytes.windows(9).any(|w| w == b"PLAINTEXT"), "plaintext in {}", file.display());
    }
    assert!(delivered(&out).is_empty());

    // Another KMS key: a clear start-up error naming the segment; nothing is lost or moved.
    std::fs::write(&config, std::fs::read_to_string(&config).unwrap().replace(&key, &other_key)).unwrap();
    let mut refused = sluice()
        .args(["run", config.to_str().unwrap()])
        .envs(aws_env())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while refused.try_wait().unwrap().is_none() {
        assert!(started.elapsed() < Duration::from_secs(30), "a run with another key did not stop");
        std::thread::sleep(Duration::from_millis(50));
    }
    let output = refused.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(
        stderr.contains(".wal") && stderr.contains("KMS Decrypt") && stderr.contains("AccessDeniedException"),
        "{stderr}"
    );
    assert!(!data.join("api/quarantine").exists(), "nothing is quarantined for a wrong key");

    // The right key: everything acknowledged is delivered, and DescribeDeliveryStream says so.
    std::fs::write(&config, std::fs::read_to_string(&config).unwrap().replace(&other_key, &key)).unwrap();
    let child = start(&config, port);
    let described = firehose_call(port, "DescribeDeliveryStream", r#"{"DeliveryStreamName":"sealed"}"#.into());
    let encryption = &described["DeliveryStreamDescription"]["DeliveryStreamEncryptionConfiguration"];
    assert_eq!(*encryption, serde_json::json!({"Status": "ENABLED", "KeyType": "CUSTOMER_MANAGED_CMK", "KeyARN": key}));
    terminate(&child);
    let mut child = child;
    assert!(child.wait().unwrap().success(), "{}", std::fs::read_to_string(config.with_extension("log")).unwrap());
    assert_eq!(delivered(&out), (0..10 * PER_REQUEST).collect::<Vec<_>>());
}

/// An attacker's change to an encrypted entry, checksums recomputed: the start reports the
/// tampered entry with its segment and offset, and replays every other record.
#[test]
fn a_tampered_entry_in_a_key_file_encrypted_log_is_reported_and_the_rest_replayed() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("keys")).unwrap();
    std::fs::write(dir.path().join("keys/wal.key"), base64::engine::general_purpose::STANDARD.encode([7u8; 32]))
        .unwrap();
    let port = free_port();
    let (config, data, out) = sealed_pipeline(dir.path(), port, "{ key_file = \"keys/wal.key\" }");
    put_and_kill(start(&config, port), port, 8);

    let segment =
        files_under(&data.join("api")).into_iter().find(|p| p.extension().is_some_and(|x| x == "wal")).unwrap();
    let mut bytes = std::fs::read(&segment).unwrap();
    let magic = [0xE7, b'S', b'L', b'W'];
    let starts: Vec<usize> = bytes.windows(4).enumerate().filter(|(_, w)| *w == magic).map(|(i, _)| i).collect();
    assert_eq!(starts.len(), 8);
    // Entry 3: one ciphertext byte, then both checksums made to agree again.
    let at = starts[3];
    let len = u32::from_le_bytes(bytes[at + 8..at + 12].try_into().unwrap()) as usize;
    bytes[at + 36 + 40] ^= 0x01;
    let payload_crc = crc32c::crc32c(&bytes[at + 36..at + 36 + len]);
    bytes[at + 32..at + 36].copy_from_slice(&payload_crc.to_le_bytes());
    let header_crc = crc32c::crc32c(&bytes[at + 8..at + 36]);
    bytes[at + 4..at + 8].copy_from_slice(&header_crc.to_le_bytes());
    std::fs::write(&segment, &bytes).unwrap();

    let (stopped, log) = restart_and_stop(&config, port);
    assert!(stopped, "{log}");
    let name = segment.file_name().unwrap().to_string_lossy().to_string();
    assert!(
        log.contains(&format!("tampered entry in {name} at offset {at}")) && log.contains("ACKNOWLEDGED RECORDS LOST"),
        "{log}"
    );
    let expected: Vec<usize> = (0..8 * PER_REQUEST).filter(|n| n / PER_REQUEST != 3).collect();
    assert_eq!(delivered(&out), expected);
}

#[test]
fn encryption_config_errors_point_at_the_key() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("short.key"), base64::engine::general_purpose::STANDARD.encode([1u8; 16])).unwrap();
    let cases = [
        ("{ key_file = \"short.key\" }", "holds 16 bytes", "head -c 32 /dev/urandom"),
        ("{ key_file = \"missing.key\" }", "cannot read", "head -c 32 /dev/urandom"),
        ("{ key_file = \"short.key\", kms_key_id = \"k\" }", "both set", "choose one"),
        ("{ }", "names no key", "kms_key_id"),
        ("{ kms_key_id = \"k\", kms_endpoint = \"127.0.0.1:1\" }", "not an http(s) URL", "http://127.0.0.1:5000"),
    ];
    for (encryption, error, hint) in cases {
        let config = dir.path().join("p.toml");
        let text = firehose_to_files(
            "p",
            1,
            &dir.path().join("d"),
            &dir.path().join("o"),
            &format!("encryption = {encryption}"),
            "",
            "",
        );
        std::fs::write(&config, text).unwrap();
        let output = sluice().args(["validate", config.to_str().unwrap()]).output().unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            !output.status.success() && stderr.contains("p.toml:4:") && stderr.contains(error) && stderr.contains(hint),
            "{encryption}: {stderr}"
        );
    }
    // Server-side encryption is S3's: asked of a file:// sink, it is an error at its value.
    let config = dir.path().join("p.toml");
    let sse = "encryption = { sse = \"aws:kms\" }";
    std::fs::write(&config, firehose_to_files("p", 1, &dir.path().join("d"), &dir.path().join("o"), "", "", sse))
        .unwrap();
    let output = sluice().args(["validate", config.to_str().unwrap()]).output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !output.status.success() && stderr.contains("p.toml:14:14") && stderr.contains("is not an s3:// URL"),
        "{stderr}"
    );
}

/// `encryption = { sse, kms_key_id }` on S3 sinks: moto's S3 echoes the headers it was sent, and
/// every object, single PUT and multipart alike, carries them.
#[test]
fn s3_objects_carry_the_server_side_encryption_asked_for_single_and_multipart() {
    let moto = Moto::start();
    let key = moto.kms_key();
    moto.boto3("boto3.client('s3', endpoint_url=ENDPOINT, region_name='us-east-1').create_bucket(Bucket='lake')");
    let dir = tempfile::tempdir().unwrap();
    let options = format!(
        "options = {{ endpoint = \"{}\", allow_http = true, region = \"us-east-1\", access_key_id = \"AKIAMOTOTEST\", secret_access_key = \"moto-secret-never-logged\" }}",
        moto.endpoint
    );
    // ~27 MB uncompressed into one object (multipart), and the same gzip'd (one PUT each).
    let config = dir.path().join("sse.toml");
    std::fs::write(
        &config,
        format!(
            "[pipeline]\nname = \"sse\"\ndata_dir = \"{}\"\n\
             [sources.demo]\ntype = \"generator\"\nprofile = \"cloudtrail\"\nrecords = 30000\nseed = 5\n\
             [sinks.big]\ntype = \"object_store\"\ninputs = [\"demo\"]\nurl = \"s3://lake/big\"\n{options}\n\
             encryption = {{ sse = \"aws:kms\", kms_key_id = \"{key}\" }}\nformat = \"ndjson\"\nbuffer = {{ size_mb = 128, interval_s = 900 }}\n\
             [sinks.small]\ntype = \"object_store\"\ninputs = [\"demo\"]\nurl = \"s3://lake/small\"\n{options}\n\
             encryption = {{ sse = \"AES256\" }}\nformat = \"ndjson\"\ncompression = \"gzip\"\n",
            dir.path().join("data").display()
        ),
    )
    .unwrap();
    let output = sluice().args(["run", config.to_str().unwrap()]).envs(aws_env()).output().unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let heads: Value = serde_json::from_str(&moto.boto3(
        "import json\ns3 = boto3.client('s3', endpoint_url=ENDPOINT, region_name='us-east-1')\n\
         keys = [o['Key'] for o in s3.list_objects_v2(Bucket='lake').get('Contents', [])]\n\
         heads = [s3.head_object(Bucket='lake', Key=k) for k in keys]\n\
         print(json.dumps([[k, h.get('ServerSideEncryption'), h.get('SSEKMSKeyId'), h['ETag']] for k, h in zip(keys, heads)]))",
    ))
    .unwrap();
    let heads = heads.as_array().unwrap();
    let (big, small): (Vec<&Value>, Vec<&Value>) =
        heads.iter().partition(|h| h[0].as_str().unwrap().starts_with("big/"));
    assert!(!big.is_empty() && !small.is_empty(), "{heads:?}");
    for head in big {
        assert!(head[3].as_str().unwrap().contains('-'), "not a multipart upload: {heads:?}");
        assert_eq!((head[1].as_str(), head[2].as_str()), (Some("aws:kms"), Some(key.as_str())), "{heads:?}");
    }
    for head in small {
        assert_eq!((head[1].as_str(), head[2].as_str()), (Some("AES256"), None), "{heads:?}");
    }
}

const APP: (&str, &str) = ("AKIAAPPPRODUCER", "app-secret-never-logged");
const OPS: (&str, &str) = ("AKIAOPSREADER", "ops-secret-never-logged");

/// boto3's outcome of each of the four operations on `stream` signed with `key`.
fn access(endpoint: &str, stream: &str, key: (&str, &str)) -> Value {
    let script = super::support::repo_root().join("tests/firehose_client.py");
    let output = Command::new(python()).arg(script).args(["access", endpoint, stream, key.0, key.1]).output().unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    serde_json::from_slice(&output.stdout).unwrap()
}

fn denied(key: &str, operation: &str, resource: &str) -> Value {
    serde_json::json!({
        "error": "AccessDeniedException",
        "message": format!("User: {key} is not authorized to perform: firehose:{operation} on resource: arn:aws:firehose:us-east-1:000000000000:deliverystream/{resource}"),
        "status": 400,
    })
}

/// A pipeline `name` whose firehose source (on `port`, or the shared listener) lists `keys`.
fn keyed_pipeline(dir: &Path, name: &str, port: u16, keys: &str) -> PathBuf {
    let config = dir.join(format!("{name}.toml"));
    let auth = format!("auth = {{ access_keys = [{keys}] }}");
    let text = firehose_to_files(name, port, &dir.join("data").join(name), &dir.join("out").join(name), "", &auth, "");
    std::fs::write(&config, text).unwrap();
    config
}

fn key_entry(key: (&str, &str), allow: &str) -> String {
    format!("{{ id = \"{}\", secret = \"{}\"{allow} }}", key.0, key.1)
}

/// Stops `child` cleanly and returns what it printed; its exit code must be `code` (2: some
/// records went to the error output).
fn stop(child: super::support::Started, code: i32) -> String {
    terminate(&child);
    let output = child.wait_with_output().unwrap();
    let printed = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert_eq!(output.status.code(), Some(code), "{printed}");
    printed
}

/// Issue 18 §1 under `run`: each key may call exactly what its `allow` lists; the rest is
/// AccessDeniedException in AWS's shape (boto3 and the AWS CLI read it), counted in ApiErrors.
#[test]
fn access_keys_may_call_only_the_operations_they_are_allowed() {
    let dir = tempfile::tempdir().unwrap();
    let (port, admin) = (free_port(), free_port());
    let keys = format!(
        "{}, {}",
        key_entry(APP, ", allow = [\"PutRecord\", \"PutRecordBatch\"]"),
        key_entry(OPS, ", allow = [\"DescribeDeliveryStream\", \"ListDeliveryStreams\"]")
    );
    let config = keyed_pipeline(dir.path(), "app", port, &keys);
    let child = start_listening_with(
        sluice()
            .args(["run", config.to_str().unwrap(), "--admin", &format!("127.0.0.1:{admin}")])
            .stdout(Stdio::null())
            .stderr(Stdio::piped()),
        port,
    );
    let endpoint = format!("http://127.0.0.1:{port}");
    let app = access(&endpoint, "app", APP);
    assert_eq!(app["PutRecord"], serde_json::json!({"ok": true}), "{app}");
    assert_eq!(app["PutRecordBatch"], serde_json::json!({"ok": true}), "{app}");
    assert_eq!(app["DescribeDeliveryStream"], denied(APP.0, "DescribeDeliveryStream", "app"));
    assert_eq!(app["ListDeliveryStreams"], denied(APP.0, "ListDeliveryStreams", "*"));
    let ops = access(&endpoint, "app", OPS);
    assert_eq!(ops["PutRecord"], denied(OPS.0, "PutRecord", "app"));
    assert_eq!(ops["PutRecordBatch"], denied(OPS.0, "PutRecordBatch", "app"));
    assert!(ops["DescribeDeliveryStream"]["ok"] == true, "{ops}");
    assert_eq!(ops["ListDeliveryStreams"], serde_json::json!({"ok": ["app"]}));
    // The AWS CLI shows the same refusal.
    let cli = Command::new(python().with_file_name("aws"))
        .args(["firehose", "put-record", "--delivery-stream-name", "app", "--record", "Data=e30="])
        .args(["--endpoint-url", &endpoint, "--region", "us-east-1"])
        .env("AWS_ACCESS_KEY_ID", OPS.0)
        .env("AWS_SECRET_ACCESS_KEY", OPS.1)
        .env("AWS_CONFIG_FILE", "/dev/null")
        .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&cli.stderr);
    assert!(
        !cli.status.success()
            && stderr.contains(
                "(AccessDeniedException) when calling the PutRecord operation: User: AKIAOPSREADER is not authorized"
            ),
        "{stderr}"
    );
    let metrics = reqwest::blocking::get(format!("http://127.0.0.1:{admin}/metrics")).unwrap().text().unwrap();
    assert!(metrics.contains("sluice_ApiErrors{stream=\"app\",type=\"AccessDeniedException\"} 5"), "{metrics}");
    stop(child, 0);
    let delivered = all_lines(&folder_objects(&dir.path().join("out")));
    assert_eq!(delivered, ["{\"access\":\"PutRecord\"}", "{\"access\":\"PutRecordBatch\"}"]);
}

/// Issue 18 §1 under `serve`: a key is valid only for the pipelines whose files list it.
#[test]
fn under_serve_a_key_reaches_only_the_streams_that_list_it() {
    let dir = tempfile::tempdir().unwrap();
    let pipelines = dir.path().join("pipelines");
    std::fs::create_dir(&pipelines).unwrap();
    let port = free_port();
    let orders = keyed_pipeline(&pipelines, "orders", port, &key_entry(APP, ""));
    let audit = keyed_pipeline(&pipelines, "audit", port, &key_entry(OPS, ", allow = [\"PutRecordBatch\"]"));
    // Each pipeline keeps its own audit trail.
    for config in [&orders, &audit] {
        let stream = config.file_stem().unwrap().to_string_lossy().to_string();
        let trail =
            format!("audit_log = \"file://{}\"\n[sources.api]", dir.path().join(format!("trail-{stream}")).display());
        let text = std::fs::read_to_string(config).unwrap().replacen("[sources.api]", &trail, 1);
        std::fs::write(config, text).unwrap();
    }
    let listen = format!("127.0.0.1:{port}");
    let child = start_listening_with(
        sluice()
            .args(["serve", pipelines.to_str().unwrap(), "--listen", &listen])
            .stdout(Stdio::null())
            .stderr(Stdio::piped()),
        port,
    );
    let endpoint = format!("http://127.0.0.1:{port}");
    let app_on_orders = access(&endpoint, "orders", APP);
    assert!(
        ["PutRecord", "PutRecordBatch", "DescribeDeliveryStream"].iter().all(|op| app_on_orders[op]["ok"] == true),
        "{app_on_orders}"
    );
    assert_eq!(
        app_on_orders["ListDeliveryStreams"],
        serde_json::json!({"ok": ["orders"]}),
        "only the streams the key may list"
    );
    let app_on_audit = access(&endpoint, "audit", APP);
    assert_eq!(app_on_audit["PutRecordBatch"], denied(APP.0, "PutRecordBatch", "audit"));
    assert_eq!(app_on_audit["DescribeDeliveryStream"], denied(APP.0, "DescribeDeliveryStream", "audit"));
    let ops_on_audit = access(&endpoint, "audit", OPS);
    assert_eq!(ops_on_audit["PutRecordBatch"], serde_json::json!({"ok": true}));
    assert_eq!(ops_on_audit["PutRecord"], denied(OPS.0, "PutRecord", "audit"));
    assert_eq!(ops_on_audit["ListDeliveryStreams"], denied(OPS.0, "ListDeliveryStreams", "*"));
    assert_eq!(access(&endpoint, "orders", OPS)["PutRecord"], denied(OPS.0, "PutRecord", "orders"));
    stop(child, 0);
    // A request naming a stream is in that stream's trail only; ListDeliveryStreams names none and
    // is in both.
    for (stream, other) in [("orders", "audit"), ("audit", "orders")] {
        let lines = json_lines_under(&dir.path().join(format!("trail-{stream}")));
        let named = |name: &str| lines.iter().filter(|l| l["requestParameters"]["deliveryStreamName"] == name).count();
        assert_eq!((named(stream), named(other)), (6, 0), "{stream}: {lines:#?}");
        let lists = lines.iter().filter(|l| l["eventName"] == "ListDeliveryStreams").count();
        assert_eq!(lists, 4, "{stream}: {lines:#?}");
    }
}

#[test]
fn an_unknown_operation_in_allow_is_a_config_error_with_the_nearest_name() {
    let dir = tempfile::tempdir().unwrap();
    let config = keyed_pipeline(dir.path(), "p", 1, &key_entry(APP, ", allow = [\"PutRecords\"]"));
    let output = sluice().args(["validate", config.to_str().unwrap()]).output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !output.status.success()
            && stderr.contains("allows `PutRecords`")
            && stderr.contains("did you mean `PutRecord`?"),
        "{stderr}"
    );
    assert!(!stderr.contains(APP.1), "a secret in an error: {stderr}");
}

/// Issue 18 §2: one CloudTrail-shaped line per API request (accepted and refused, Firehose and
/// http), per delivered object and per transform failure, stored through an object store by a
/// clean stop; no secret, signature or record data in any of them.
#[test]
fn the_audit_log_records_every_request_delivery_and_failure_and_no_secret() {
    let dir = tempfile::tempdir().unwrap();
    let (port, http_port) = (free_port(), free_port());
    let (audit, out) = (dir.path().join("audit"), dir.path().join("out"));
    let keys = format!(
        "{}, {}",
        key_entry(APP, ", allow = [\"PutRecord\", \"PutRecordBatch\"]"),
        key_entry(OPS, ", allow = [\"DescribeDeliveryStream\", \"ListDeliveryStreams\"]")
    );
    let config = dir.path().join("audited.toml");
    std::fs::write(
        &config,
        format!(
            r#"[pipeline]
name = "app"
data_dir = "{data}"
audit_log = {{ url = "file://{audit}", buffer = {{ size_mb = 1, interval_s = 1 }} }}

[sources.api]
type = "firehose"
listen = "127.0.0.1:{port}"
auth = {{ access_keys = [{keys}] }}

[sources.ndjson]
type = "http"
listen = "127.0.0.1:{http_port}"
bearer_tokens = [{{ name = "shipper-a", token = "token-a-never-logged" }}]

[transforms.check]
type = "jq"
inputs = ["api", "ndjson"]
query = 'if .fail then error("refused record SECRET-DATA-\(.n)") else . end'

[sinks.out]
type = "object_store"
inputs = ["check"]
url = "file://{out}"
format = "ndjson"
buffer = {{ size_mb = 1, interval_s = 1 }}
"#,
            data = dir.path().join("data").display(),
            audit = audit.display(),
            out = out.display(),
        ),
    )
    .unwrap();
    let child = start_listening_with(
        sluice()
            .args(["run", config.to_str().unwrap()])
            .env("SLUICE_LOG", "debug")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped()),
        port,
    );
    let endpoint = format!("http://127.0.0.1:{port}");
    access(&endpoint, "app", APP);
    access(&endpoint, "app", OPS);
    // Unsigned: refused before its body is read.
    let unsigned = reqwest::blocking::Client::new()
        .post(&endpoint)
        .header("x-amz-target", "Firehose_20150804.PutRecord")
        .header("user-agent", "unsigned-probe/1.0")
        .body(r#"{"DeliveryStreamName":"app","Record":{"Data":"e30="}}"#)
        .send()
        .unwrap();
    assert_eq!(unsigned.status().as_u16(), 400);
    let http = reqwest::blocking::Client::new();
    let post = |token: &str, body: &'static str| {
        http.post(format!("http://127.0.0.1:{http_port}/logs"))
            .bearer_auth(token)
            .body(body)
            .send()
            .unwrap()
            .status()
            .as_u16()
    };
    assert_eq!(post("token-a-never-logged", "{\"n\":1,\"note\":\"SECRET-DATA-ok\"}\n{\"n\":2,\"fail\":true}\n"), 200);
    assert_eq!(post("wrong-token", "{\"n\":3}\n"), 401);
    std::thread::sleep(Duration::from_millis(1500));
    let printed = stop(child, 2);

    let lines = json_lines_under(&audit);
    assert!(
        files_under(&audit)
            .iter()
            .all(|f| f.to_string_lossy().contains("app-audit-") && f.extension().is_some_and(|e| e == "jsonl"))
    );
    let firehose: Vec<&Value> = lines
        .iter()
        .filter(|l| l["eventSource"] == "firehose.amazonaws.com" && l["eventType"] == "AwsApiCall")
        .collect();
    assert_eq!(firehose.len(), 9, "{firehose:#?}");
    for line in &firehose {
        for field in ["eventTime", "eventName", "requestID", "eventID", "userAgent"] {
            assert!(line[field].is_string(), "{field} missing: {line}");
        }
        assert_eq!(
            (line["awsRegion"].as_str(), line["sourceIPAddress"].as_str()),
            (Some("us-east-1"), Some("127.0.0.1")),
            "{line}"
        );
    }
    let find = |name: &str, key: &str| {
        firehose
            .iter()
            .find(|l| l["eventName"] == name && l["userIdentity"]["accessKeyId"] == key)
            .unwrap_or_else(|| panic!("no {name} by {key}: {firehose:#?}"))
    };
    let batch = find("PutRecordBatch", APP.0);
    assert_eq!(
        batch["requestParameters"],
        serde_json::json!({"deliveryStreamName": "app", "recordCount": 1, "bytes": 27})
    );
    assert_eq!(batch["responseElements"], serde_json::json!({"failedPutCount": 0}));
    assert!(batch.get("errorCode").is_none(), "{batch}");
    let denied = find("PutRecord", OPS.0);
    assert_eq!(denied["errorCode"], "AccessDeniedException");
    assert!(denied["errorMessage"].as_str().unwrap().starts_with("User: AKIAOPSREADER is not authorized"), "{denied}");
    assert_eq!(find("ListDeliveryStreams", APP.0)["errorCode"], "AccessDeniedException");
    let anonymous: Vec<_> = firehose.iter().filter(|l| l["userIdentity"]["type"] == "Unknown").collect();
    assert_eq!(anonymous.len(), 1, "{firehose:#?}");
    assert_eq!(anonymous[0]["errorCode"], "MissingAuthenticationTokenException");

    let http_lines: Vec<&Value> = lines.iter().filter(|l| l["eventSource"] == "http.sluice").collect();
    assert_eq!(http_lines.len(), 2, "{http_lines:#?}");
    assert!(http_lines.iter().any(|l| l["userIdentity"]["tokenName"] == "shipper-a"
        && l["requestParameters"]["recordCount"] == 2
        && l.get("errorCode").is_none()));
    assert!(http_lines.iter().any(|l| l["errorCode"] == "Unauthorized" && l["userIdentity"]["type"] == "Unknown"));

    let failed: Vec<&Value> = lines.iter().filter(|l| l["eventName"] == "TransformRecords").collect();
    assert_eq!(failed.len(), 1, "{lines:#?}");
    assert_eq!(failed[0]["errorCode"], "Jq.ProcessingFailed");
    assert_eq!(failed[0]["serviceEventDetails"]["transform"], "check");
    assert_eq!(failed[0]["serviceEventDetails"]["records"], 1);
    let delivered: Vec<&Value> = lines.iter().filter(|l| l["eventName"] == "DeliverObject").collect();
    assert!(!delivered.is_empty(), "{lines:#?}");
    for line in &delivered {
        let key = line["serviceEventDetails"]["objectKey"].as_str().unwrap();
        assert!(files_under(&out).iter().any(|f| f.to_string_lossy().ends_with(key)), "{key} not stored");
        assert_eq!(line["serviceEventDetails"]["destination"], "out");
    }
    let stored_records: u64 = delivered.iter().map(|l| l["serviceEventDetails"]["records"].as_u64().unwrap()).sum();
    assert_eq!(stored_records, 3, "PutRecord, PutRecordBatch and one http record: {delivered:#?}");
    assert!(
        lines.iter().any(|l| l["eventName"] == "StoreErrorOutput"
            && l["serviceEventDetails"]["errorOutputType"] == "processing-failed")
    );

    // Nothing secret, signed or carried in a record, anywhere the run wrote or printed.
    let everything = format!("{}{printed}", lines.iter().map(Value::to_string).collect::<String>());
    for secret in [APP.1, OPS.1, "token-a-never-logged", "wrong-token", "Signature=", "SECRET-DATA"] {
        assert!(!everything.contains(secret), "`{secret}` appears in the audit log or the output");
    }
    assert!(
        !files_under(&dir.path().join("data/audit")).iter().any(|f| f.to_string_lossy().contains("sending-")),
        "lines left unsent"
    );
}

/// An answered request's audit line is in the spool before the answer: a kill -9 loses none, and
/// the next start stores them.
#[test]
fn audit_lines_of_answered_requests_survive_a_kill() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let audit = dir.path().join("audit");
    let (config, _, _) = sealed_pipeline(dir.path(), port, "{ key_file = \"k\" }");
    std::fs::write(dir.path().join("k"), base64::engine::general_purpose::STANDARD.encode([3u8; 32])).unwrap();
    let text = std::fs::read_to_string(&config).unwrap().replace(
        "encryption = ",
        &format!(
            "audit_log = {{ url = \"file://{}\", buffer = {{ interval_s = 900 }} }}\nencryption = ",
            audit.display()
        ),
    );
    std::fs::write(&config, text).unwrap();
    put_and_kill(start(&config, port), port, 5);
    assert!(files_under(&audit).is_empty(), "nothing stored before the kill");
    let (stopped, log) = restart_and_stop(&config, port);
    assert!(stopped, "{log}");
    let puts = json_lines_under(&audit).into_iter().filter(|l| l["eventName"] == "PutRecordBatch").count();
    assert_eq!(puts, 5, "{log}");
}

/// Every kind of secret a pipeline can hold, each a distinct marker.
const SECRETS: [(&str, &str); 7] = [
    ("API_SECRET", "leak-marker-api-secret"),
    ("HTTP_TOKEN", "leak-marker-http-token"),
    ("REDACT_KEY", "leak-marker-hash-key"),
    ("OS_PASS", "leak-marker-os-password"),
    ("HEC_TOKEN", "leak-marker-hec-token"),
    ("PG_PASS", "leak-marker-pg-password"),
    ("S3_SECRET", "leak-marker-s3-secret"),
];

/// Every file under `dir` and `printed`, with no marker of [`SECRETS`] in any of them.
fn assert_no_secret(dir: &Path, printed: &str, skip: &[&Path]) {
    for (_, secret) in SECRETS {
        assert!(!printed.contains(secret), "`{secret}` printed:\n{printed}");
        for file in files_under(dir).iter().filter(|f| !skip.iter().any(|s| f.starts_with(s))) {
            let bytes = std::fs::read(file).unwrap();
            assert!(!bytes.windows(secret.len()).any(|w| w == secret.as_bytes()), "`{secret}` in {}", file.display());
        }
    }
}

/// Issue 18 §4: a pipeline holding every kind of secret, at debug level, its destinations down
/// (so that retries, error documents and backups happen): no secret in stdout, stderr, metrics,
/// the audit log, error documents or anything else it wrote; and `validate` of every example
/// pipeline shows none either.
#[test]
fn no_configured_secret_appears_in_output_metrics_audit_or_error_documents() {
    let dir = tempfile::tempdir().unwrap();
    let (port, http_port, admin, down) = (free_port(), free_port(), free_port(), free_port());
    let work = dir.path().join("work");
    std::fs::create_dir(&work).unwrap();
    let config = dir.path().join("secrets.toml");
    std::fs::write(
        &config,
        format!(
            r#"[pipeline]
name = "secrets"
data_dir = "{work}/data"
stop_timeout_s = 3
audit_log = {{ url = "file://{work}/audit", buffer = {{ interval_s = 1 }} }}

[sources.api]
type = "firehose"
listen = "127.0.0.1:{port}"
auth = {{ access_keys = [{{ id = "AKIALEAKTEST", secret = "${{API_SECRET}}" }}] }}

[sources.ndjson]
type = "http"
listen = "127.0.0.1:{http_port}"
bearer_token = "${{HTTP_TOKEN}}"

[transforms.mask]
type = "redact"
inputs = ["api", "ndjson"]
mode = "hash"
hash_key = "${{REDACT_KEY}}"

[sinks.search]
type = "opensearch"
inputs = ["mask"]
url = "http://127.0.0.1:{down}"
index = "logs"
auth = {{ username = "admin", password = "${{OS_PASS}}" }}
retry = {{ duration_s = 0 }}
buffer = {{ size_mb = 1, interval_s = 1 }}
backup_store = {{ url = "file://{work}/backup" }}

[sinks.siem]
type = "splunk"
inputs = ["mask"]
url = "http://127.0.0.1:{down}"
token = "${{HEC_TOKEN}}"
retry = {{ duration_s = 0 }}
buffer = {{ size_mb = 1, interval_s = 1 }}
backup_store = {{ url = "file://{work}/backup" }}

[sinks.warehouse]
type = "postgres"
inputs = ["mask"]
url = "postgres://loader:${{PG_PASS}}@127.0.0.1:{down}/security"
table = "events"
columns = ["n"]
mapping = {{ n = "n" }}
staging = {{ url = "file://{work}/staging" }}
retry = {{ duration_s = 0 }}
buffer = {{ size_mb = 1, interval_s = 1 }}

[sinks.lake]
type = "object_store"
inputs = ["mask"]
url = "s3://lake/raw"
options = {{ endpoint = "http://127.0.0.1:{down}", allow_http = true, region = "us-east-1", access_key_id = "AKIALAKE", secret_access_key = "${{S3_SECRET}}" }}
healthcheck = false
retry = {{ duration_s = 0 }}
buffer = {{ size_mb = 1, interval_s = 1 }}
"#,
            work = work.display()
        ),
    )
    .unwrap();
    let child = start_listening_with(
        sluice()
            .args(["run", config.to_str().unwrap(), "--admin", &format!("127.0.0.1:{admin}")])
            .envs(SECRETS)
            .env("SLUICE_LOG", "debug")
            .current_dir(&work)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped()),
        port,
    );
    let put = Command::new(python())
        .arg(super::support::repo_root().join("tests/firehose_client.py"))
        .args(["put", &format!("http://127.0.0.1:{port}"), "secrets", "20", "AKIALEAKTEST", SECRETS[0].1])
        .output()
        .unwrap();
    assert!(put.status.success(), "{}", String::from_utf8_lossy(&put.stderr));
    let posted = reqwest::blocking::Client::new()
        .post(format!("http://127.0.0.1:{http_port}/"))
        .bearer_auth(SECRETS[1].1)
        .body("{\"n\":1,\"email\":\"someone@example.com\"}\n")
        .send()
        .unwrap();
    assert_eq!(posted.status().as_u16(), 200);
    // Every sink gives up on its first object (nothing listens): error documents are written.
    let started = Instant::now();
    while files_under(&work.join("backup")).len() < 2 {
        assert!(started.elapsed() < Duration::from_secs(60), "no error documents: {:?}", files_under(&work));
        std::thread::sleep(Duration::from_millis(200));
    }
    let metrics = reqwest::blocking::get(format!("http://127.0.0.1:{admin}/metrics")).unwrap().text().unwrap();
    terminate(&child);
    let output = child.wait_with_output().unwrap();
    let printed =
        format!("{}{}{metrics}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(printed.contains("DEBUG"), "not at debug level: {printed}");
    assert!(!files_under(&work.join("audit")).is_empty() && !files_under(&work.join("backup")).is_empty());
    assert_no_secret(&work, &printed, &[&work.join("data")]);

    // `validate` of every example pipeline, with its secrets set: shown as ***.
    let examples = super::support::repo_root().join("pipelines");
    for example in std::fs::read_dir(&examples).unwrap().flatten().map(|e| e.path()) {
        if example.extension().is_none_or(|e| e != "toml") {
            continue;
        }
        let envs = [
            ("API_KEY", "AKIAEXAMPLE"),
            ("API_SECRET", SECRETS[0].1),
            ("SLUICE_KEY_ID", "AKIAEXAMPLE"),
            ("SLUICE_SECRET", SECRETS[0].1),
            ("HEC_TOKEN", SECRETS[4].1),
            ("OS_PASS", SECRETS[3].1),
            ("PG_PASS", SECRETS[5].1),
            ("SIEM_ACCESS_KEY", SECRETS[6].1),
        ];
        let output = sluice()
            .args(["validate", example.to_str().unwrap()])
            .envs(envs)
            .env("SLUICE_LOG", "debug")
            .output()
            .unwrap();
        let printed = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
        assert!(output.status.success(), "{}: {printed}", example.display());
        assert_no_secret(dir.path().join("nothing").as_path(), &printed, &[]);
    }
}

/// KMS that cannot be reached at start: the run does not start, and says which call failed where;
/// without credentials it stops before the call, and a profile of the shared files gives them.
#[test]
fn an_unreachable_kms_stops_the_start_with_the_call_that_failed() {
    let dir = tempfile::tempdir().unwrap();
    let (port, kms) = (free_port(), free_port());
    let encryption = format!(
        "{{ kms_key_id = \"arn:aws:kms:us-east-1:123456789012:key/k\", kms_endpoint = \"http://127.0.0.1:{kms}\" }}"
    );
    let (config, _, _) = sealed_pipeline(dir.path(), port, &encryption);
    let output = sluice().args(["run", config.to_str().unwrap()]).envs(aws_env()).output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("write-ahead log") && stderr.contains("KMS GenerateDataKey could not be reached"),
        "{stderr}"
    );
    assert!(!stderr.contains("moto-secret-never-logged"), "{stderr}");
    // No credentials anywhere (environment, shared files, instance profile): the start says so
    // before any KMS call, naming what it tried.
    let without = sluice().args(["run", config.to_str().unwrap()]).without_aws_keys().output().unwrap();
    let stderr = String::from_utf8_lossy(&without.stderr);
    assert_eq!(without.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("`encryption.kms_key_id` needs AWS credentials: none in the environment")
            && stderr.contains("the EC2 instance profile (IMDS) gave none"),
        "{stderr}"
    );
    // A profile of the shared files gives them: the start goes on to the KMS call.
    let credentials = dir.path().join("aws-credentials");
    std::fs::write(&credentials, "[wal]\naws_access_key_id = AKIAPROFILE\naws_secret_access_key = profile-secret\n")
        .unwrap();
    let profiled = sluice()
        .args(["run", config.to_str().unwrap()])
        .without_aws_keys()
        .env("AWS_SHARED_CREDENTIALS_FILE", &credentials)
        .env("AWS_PROFILE", "wal")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&profiled.stderr);
    assert_eq!(profiled.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("KMS GenerateDataKey could not be reached") && !stderr.contains("profile-secret"),
        "{stderr}"
    );
}

/// A source listening beyond this machine without authentication is warned about at start, and
/// one with authentication is not, for each listening source (`firehose`, `http`,
/// `http_endpoint`). The address is TEST-NET-1's (RFC 5737), which no interface here has: the
/// warning comes before the bind, which then fails, so nothing listens beyond 127.0.0.1.
#[test]
fn a_source_open_beyond_this_machine_without_authentication_is_warned_about() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        ("firehose", "auth = { access_keys = [{ id = \"AKIDOPEN\", secret = \"s3cret\" }] }", "set `auth = {"),
        ("http", "bearer_token = \"t0ken\"", "set `bearer_token` (or `bearer_tokens`)"),
        ("http_endpoint", "access_key = \"k3y\"", "set `access_key` (or `access_keys`)"),
    ];
    for (kind, auth, how) in cases {
        for authenticated in [false, true] {
            let config = dir.path().join(format!("{kind}-{authenticated}.toml"));
            let text = format!(
                "[pipeline]\nname = \"open\"\ndata_dir = \"{}\"\n\n[sources.in]\ntype = \"{kind}\"\nlisten = \"192.0.2.1:4599\"\n{}\n\n\
                 [sinks.out]\ntype = \"object_store\"\ninputs = [\"in\"]\nurl = \"file://{}\"\n",
                dir.path().join("data").display(),
                if authenticated { auth } else { "" },
                dir.path().join("out").display()
            );
            std::fs::write(&config, text).unwrap();
            let output = sluice().args(["run", config.to_str().unwrap()]).env("SLUICE_LOG", "warn").output().unwrap();
            let said = String::from_utf8_lossy(&output.stderr);
            assert_eq!(output.status.code(), Some(1), "{said}");
            assert!(said.contains("cannot listen on 192.0.2.1:4599"), "{said}");
            let warned = said.lines().find(|l| l.contains("no authentication, so anyone who reaches that address"));
            match (authenticated, warned) {
                (false, Some(line)) => {
                    assert!(line.contains("on 192.0.2.1:4599: no authentication") && line.contains(how), "{line}")
                }
                (false, None) => panic!("{kind} without authentication was not warned about: {said}"),
                (true, Some(line)) => panic!("{kind} with authentication was warned about: {line}"),
                (true, None) => {}
            }
        }
    }
}

/// Mutual TLS (`tls.client_ca`): the http source and the fluent source (whose accept loop is its
/// own) serve only clients presenting a certificate of the client CA meant for client
/// authentication; none, another CA's, or a server certificate are refused in the handshake,
/// before anything they send is read. A CA rotated in place is taken without a restart: the old
/// CA's clients are refused from then on and the new one's served. Every record a served client
/// was answered for is delivered; none of a refused one is.
#[test]
fn mutual_tls_serves_only_clients_with_a_certificate_of_the_client_ca() {
    let dir = tempfile::tempdir().unwrap();
    let (certs, other) = (super::support::TestCertificates::make(), super::support::TestCertificates::make());
    let clients_ca = dir.path().join("clients-ca.pem");
    std::fs::copy(certs.path("ca.pem"), &clients_ca).unwrap();
    let (port, fluent_port) = (free_port(), free_port());
    let tls = format!(
        "tls = {{ cert = \"{}\", key = \"{}\", client_ca = \"{}\" }}",
        certs.path("server.pem"),
        certs.path("server.key"),
        clients_ca.display()
    );
    let config = dir.path().join("mutual.toml");
    std::fs::write(
        &config,
        format!(
            "[pipeline]\nname = \"mutual\"\ndata_dir = \"{data}\"\naudit_log = \"file://{audit}\"\n\
             [sources.web]\ntype = \"http\"\nlisten = \"127.0.0.1:{port}\"\n{tls}\n\
             [sources.forward]\ntype = \"fluent\"\nlisten = \"127.0.0.1:{fluent_port}\"\n{tls}\n\
             [sinks.lake]\ntype = \"object_store\"\ninputs = [\"web\", \"forward\"]\nurl = \"file://{lake}\"\nformat = \"ndjson\"\n",
            data = dir.path().join("data").display(),
            lake = dir.path().join("lake").display(),
            audit = dir.path().join("audit").display(),
        ),
    )
    .unwrap();
    let mut run = start_listening_with(
        sluice().args(["run", "--quiet"]).arg(&config).stdout(Stdio::null()).stderr(Stdio::piped()),
        port,
    );
    super::support::wait_for_port(fluent_port, "the fluent source");
    let server_ca = reqwest::Certificate::from_pem(&std::fs::read(certs.path("ca.pem")).unwrap()).unwrap();
    // A POST of one record by a new client presenting `identity` (cert, key), if any: answered 200?
    let post = |identity: Option<(&super::support::TestCertificates, &str)>, text: &str| -> bool {
        let mut client = reqwest::blocking::Client::builder().tls_certs_only([server_ca.clone()]);
        if let Some((made, name)) = identity {
            let pem = [std::fs::read(made.path(&format!("{name}.pem"))).unwrap(), b"\n".to_vec()].concat();
            let key = std::fs::read(made.path(&format!("{name}.key"))).unwrap();
            client = client.identity(reqwest::Identity::from_pem(&[pem, key].concat()).unwrap());
        }
        let sent = client.build().unwrap().post(format!("https://127.0.0.1:{port}/")).body(format!("{text}\n")).send();
        match sent {
            Ok(response) => response.status().is_success(),
            Err(_) => false,
        }
    };
    assert!(post(Some((&certs, "client")), "{\"by\": \"client\"}"));
    assert!(!post(None, "{\"by\": \"nobody\"}"), "a client without a certificate was served");
    assert!(!post(Some((&other, "client")), "{\"by\": \"another CA\"}"), "another CA's client was served");
    assert!(
        !post(Some((&certs, "server")), "{\"by\": \"a server certificate\"}"),
        "a serverAuth certificate was served"
    );
    assert!(!post(Some((&certs, "self-signed")), "{\"by\": \"self-signed\"}"));

    // The forward protocol over the same TLS: an event and its ack, or no answer.
    let forward = |cert: Option<(&super::support::TestCertificates, &str)>, tag: &str| -> String {
        let load = cert.map_or(String::new(), |(made, name)| {
            format!(
                "context.load_cert_chain('{}', '{}')\n",
                made.path(&format!("{name}.pem")),
                made.path(&format!("{name}.key"))
            )
        });
        let script = format!(
            "import msgpack, socket, ssl, time\n\
             context = ssl.create_default_context(cafile='{ca}')\n{load}\
             try:\n\
             \x20   s = context.wrap_socket(socket.create_connection(('127.0.0.1', {fluent_port})), server_hostname='127.0.0.1')\n\
             \x20   s.sendall(msgpack.packb(['{tag}', int(time.time()), {{'message': 'over mutual tls'}}, {{'chunk': 'c1'}}]))\n\
             \x20   answer = s.recv(1024)\n\
             \x20   print(msgpack.unpackb(answer) if answer else 'closed')\n\
             except (ssl.SSLError, OSError) as e:\n\
             \x20   print('refused', type(e).__name__)\n",
            ca = certs.path("ca.pem"),
        );
        let ran = Command::new(python()).arg("-c").arg(script).output().unwrap();
        assert!(ran.status.success(), "{}", String::from_utf8_lossy(&ran.stderr));
        String::from_utf8_lossy(&ran.stdout).trim().to_string()
    };
    assert_eq!(forward(Some((&certs, "client")), "app.served"), "{'ack': 'c1'}");
    let refused = forward(None, "app.nobody");
    assert!(refused.starts_with("refused") || refused == "closed", "{refused}");
    let refused = forward(Some((&other, "client")), "app.other");
    assert!(refused.starts_with("refused") || refused == "closed", "{refused}");

    // The client CA rotated in place: the other CA's clients from the next look at the files on.
    std::fs::copy(other.path("ca.pem"), &clients_ca).unwrap();
    let waited = Instant::now();
    let mut served_before = 0;
    while !post(Some((&other, "client")), "{\"by\": \"the new CA\"}") {
        assert!(waited.elapsed() < Duration::from_secs(30), "the rotated client CA was not taken");
        // Until then the old CA's client may still be served: each one it was answered for counts.
        served_before += usize::from(post(Some((&certs, "client")), "{\"by\": \"client\"}"));
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(!post(Some((&certs, "client")), "{\"by\": \"the old CA\"}"), "the old CA's client was still served");

    terminate(&run);
    let status = run.wait().unwrap();
    let mut stderr = String::new();
    std::io::Read::read_to_string(run.stderr.as_mut().unwrap(), &mut stderr).unwrap();
    assert!(status.success(), "{stderr}");
    let records = json_lines_under(&dir.path().join("lake"));
    let by = |who: &str| records.iter().filter(|r| r["by"] == who).count();
    assert_eq!(by("client"), 1 + served_before, "{records:?}");
    assert_eq!(by("the new CA"), 1, "{records:?}");
    let forwarded: Vec<&Value> = records.iter().filter(|r| r.get("tag").is_some()).collect();
    assert_eq!(forwarded.len(), 1, "{records:?}");
    assert_eq!(
        (&forwarded[0]["tag"], &forwarded[0]["record"]["message"]),
        (&"app.served".into(), &"over mutual tls".into())
    );
    assert_eq!(records.len(), 1 + served_before + 1 + 1, "nothing of a refused client: {records:?}");
    // The audit trail names each served client by its certificate.
    let serial = |made: &super::support::TestCertificates| {
        let text = Command::new("openssl")
            .args(["x509", "-noout", "-serial", "-in", &made.path("client.pem")])
            .output()
            .unwrap()
            .stdout;
        String::from_utf8_lossy(&text).trim().trim_start_matches("serial=").to_ascii_lowercase()
    };
    let trail = json_lines_under(&dir.path().join("audit"));
    let served: Vec<&Value> = trail.iter().filter(|e| e.get("errorCode").is_none()).collect();
    let posts: Vec<&&Value> = served.iter().filter(|e| e["eventSource"] == "http.sluice").collect();
    assert_eq!(posts.len(), 1 + served_before + 1, "{trail:#?}");
    for post in &posts {
        assert_eq!(post["userIdentity"]["type"], "ClientCertificate", "{post}");
        assert_eq!(post["userIdentity"]["clientCertificate"]["subject"], "CN=sluice test", "{post}");
    }
    let serials: std::collections::BTreeSet<String> = posts
        .iter()
        .map(|p| p["userIdentity"]["clientCertificate"]["serialNumber"].as_str().unwrap_or_default().to_string())
        .collect();
    assert_eq!(serials, [serial(&certs), serial(&other)].into_iter().collect());
    let forwards: Vec<&&Value> = served.iter().filter(|e| e["eventSource"] == "fluent.sluice").collect();
    assert_eq!(forwards.len(), 1, "{trail:#?}");
    assert_eq!(forwards[0]["userIdentity"]["clientCertificate"]["subject"], "CN=sluice test");
}

/// A client that opens a connection to a TLS listener and never finishes the handshake (a
/// slowloris on TLS) is closed after 10 s, by the HTTP listeners (axum-server's handshake timeout)
/// and by the fluent source (its own), so that it does not hold a place under `max_connections`.
#[test]
fn a_tls_handshake_never_finished_is_closed_after_ten_seconds() {
    use std::io::{Read as _, Write as _};
    let dir = tempfile::tempdir().unwrap();
    let certs = super::support::TestCertificates::make();
    let (port, fluent_port) = (free_port(), free_port());
    let tls = format!("tls = {{ cert = \"{}\", key = \"{}\" }}", certs.path("server.pem"), certs.path("server.key"));
    let config = dir.path().join("slow-handshake.toml");
    std::fs::write(
        &config,
        format!(
            "[pipeline]\nname = \"slow-handshake\"\ndata_dir = \"{data}\"\n\
             [sources.web]\ntype = \"http\"\nlisten = \"127.0.0.1:{port}\"\n{tls}\n\
             [sources.forward]\ntype = \"fluent\"\nlisten = \"127.0.0.1:{fluent_port}\"\n{tls}\n\
             [sinks.lake]\ntype = \"object_store\"\ninputs = [\"web\", \"forward\"]\nurl = \"file://{lake}\"\nformat = \"ndjson\"\n",
            data = dir.path().join("data").display(),
            lake = dir.path().join("lake").display(),
        ),
    )
    .unwrap();
    let mut run = start_listening_with(
        sluice().args(["run", "--quiet"]).arg(&config).stdout(Stdio::null()).stderr(Stdio::null()),
        port,
    );
    super::support::wait_for_port(fluent_port, "the fluent source");
    let started = Instant::now();
    // The first bytes of a ClientHello's record header, then silence.
    let stalled: Vec<std::net::TcpStream> = [port, fluent_port]
        .into_iter()
        .map(|p| {
            let mut stream = std::net::TcpStream::connect(("127.0.0.1", p)).unwrap();
            stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
            stream.write_all(&[0x16, 0x03, 0x01]).unwrap();
            stream
        })
        .collect();
    for mut stream in stalled {
        let mut rest = Vec::new();
        let ended = stream.read_to_end(&mut rest);
        let waited = started.elapsed();
        assert!(ended.is_ok() || waited < Duration::from_secs(29), "not closed: {ended:?} after {waited:?}");
        assert!(waited >= Duration::from_secs(9) && waited < Duration::from_secs(25), "closed after {waited:?}");
    }
    terminate(&run);
    assert!(run.wait().unwrap().success());
}

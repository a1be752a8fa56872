//! Transforms in whole pipelines: the same records at 1, 2 and 4 workers through redact → jq and in
//! a fan-out; jq against the jq 1.6 CLI; a real function server with Firehose's transformation
//! contract (dropped, failed and missing records, slow answers, 500s then success, partition keys,
//! the Invoke API's signature); CloudWatch Logs payloads sent through the Firehose API by boto3;
//! config errors for graphs and transform keys; every transform through the conformance kit; the
//! example pipelines that parse CloudFront standard log files and VPC Flow Logs into Parquet.

use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use sluice_connectors::registry;
use sluice_connectors::synth::Profile;
use sluice_engine::contract::Transform;
use sluice_engine::record::RecordBatch;
use sluice_engine::testkit::transform::{TransformCheck, TransformRun, conformance, run_transform};
use sluice_engine::testkit::{plan_from_str, run_pipeline};

use super::support::WithoutAwsKeys;
use super::support::{
    Peer, all_lines, duckdb_json, firehose_call, folder_objects, free_port, generated, memory_objects, python,
    repo_root, run_example_pipeline, start_listening, terminate, write_gzip,
};

const CHAIN: &str = r#"{time: .eventTime, user: .userIdentity.userName, event: .eventName, ip: .sourceIPAddress} | select(.event != "GetObject")"#;

/// The transform `name` of a pipeline made of `toml` (resolved, not run).
fn transform_of(toml: &str, name: &str) -> Arc<dyn Transform> {
    let plan = plan_from_str(toml, &registry()).unwrap_or_else(|e| panic!("{e}"));
    let t = plan.transforms.iter().find(|t| t.name == name).unwrap_or_else(|| panic!("no transform {name}"));
    Arc::clone(&t.transform)
}

/// A pipeline with one generator source `gen`, the transforms `transforms` (TOML) and `sinks`.
fn pipeline(name: &str, records: u64, transforms: &str, sinks: &str) -> String {
    format!(
        "[pipeline]\nname = \"{name}\"\n[sources.gen]\ntype = \"generator\"\nprofile = \"cloudtrail\"\nrecords = {records}\nseed = 7\n{transforms}\n{sinks}"
    )
}

fn memory_sink(name: &str, input: &str, store: &str) -> String {
    format!(
        "[sinks.{name}]\ntype = \"object_store\"\ninputs = [\"{input}\"]\nurl = \"memory://{store}/{name}\"\nformat = \"ndjson\"\ncompression = \"gzip\"\n"
    )
}

fn batch(records: &[String]) -> RecordBatch {
    let mut b = RecordBatch::with_capacity(1_000, 0);
    records.iter().for_each(|r| b.push(r.as_bytes()));
    b
}

fn text(run: &TransformRun) -> Vec<String> {
    run.delivered.iter().map(|r| String::from_utf8_lossy(r).into_owned()).collect()
}

#[test]
fn redact_then_jq_and_a_fan_out_deliver_the_same_records_at_1_2_and_4_workers() {
    const RECORDS: u64 = 3_000;
    let transforms = format!(
        "[transforms.mask]\ntype = \"redact\"\ninputs = [\"gen\"]\n[transforms.shape]\ntype = \"jq\"\ninputs = [\"mask\"]\nquery = '{CHAIN}'\n"
    );
    // The oracle: the same transforms, one after the other, on one worker outside the dataflow.
    let source = generated(Profile::Cloudtrail, 7, RECORDS);
    let toml = |store: &str| {
        pipeline(
            "oracle",
            RECORDS,
            &transforms,
            &(memory_sink("shaped", "shape", store) + &memory_sink("raw", "gen", store)),
        )
    };
    let masked =
        run_transform(&transform_of(&toml("x"), "mask"), vec![batch(&source)], Duration::from_secs(10)).unwrap();
    assert_eq!(masked.delivered.len(), source.len());
    let shaped =
        run_transform(&transform_of(&toml("x"), "shape"), vec![batch(&text(&masked))], Duration::from_secs(10))
            .unwrap();
    let mut expected = text(&shaped);
    expected.sort();
    assert!(expected.len() > RECORDS as usize / 2 && expected.len() < RECORDS as usize, "the select drops some");
    assert!(expected.iter().all(|r| r.contains("[REDACTED:ipv4]")), "every source IP is masked");
    let mut raw = source.clone();
    raw.sort();
    for workers in [1, 2, 4] {
        let store = format!("transform-oracle-{workers}");
        let (_, metrics) = run_pipeline(&toml(&store), &registry(), workers).unwrap();
        let objects = memory_objects(&store);
        let shaped: BTreeMap<_, _> = objects.iter().filter(|(k, _)| k.starts_with("shaped/")).collect();
        let untouched: BTreeMap<_, _> = objects.iter().filter(|(k, _)| k.starts_with("raw/")).collect();
        assert_eq!(all_lines(shaped), expected, "{workers} workers: transformed sink");
        assert_eq!(all_lines(untouched), raw, "{workers} workers: untransformed sink of the fan-out");
        let shape = &metrics.transforms[1];
        let load = |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
        assert_eq!(load(&metrics.transforms[0].records_in), RECORDS);
        assert_eq!(load(&shape.records_out) + load(&shape.records_dropped), RECORDS);
    }
}

#[test]
fn jq_answers_as_the_jq_1_6_cli_does() {
    let records = generated(Profile::Cloudtrail, 11, 300);
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.ndjson");
    std::fs::write(&input, records.join("\n") + "\n").unwrap();
    let queries = [
        ".",
        CHAIN,
        ".userIdentity | {type, userName}",
        "select(.readOnly) | .eventName",
        "[.eventName, .awsRegion] | join(\"/\")",
        ".requestParameters // {} | keys",
        "{n: (.eventName | length), up: (.eventName | ascii_upcase), src: (.eventSource | split(\".\")[0])}",
        ".tags[]?",
        "to_entries | map(select(.value | type == \"string\")) | length",
        "if .eventName | test(\"^Describe\") then {d: .eventName} else empty end",
        ".userIdentity.arn | sub(\"arn:aws:iam::\"; \"\")",
        "[paths | length] | max",
    ];
    for query in queries {
        let cli = Command::new("jq").arg("-c").arg(query).arg(&input).output().expect("the jq CLI (Debian jq 1.6)");
        assert!(cli.status.success(), "jq {query}: {}", String::from_utf8_lossy(&cli.stderr));
        let expected: Vec<serde_json::Value> =
            String::from_utf8_lossy(&cli.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        let toml = format!(
            "[pipeline]\nname = \"jq\"\n[sources.gen]\ntype = \"generator\"\nprofile = \"cloudtrail\"\nrecords = 1\n\
             [transforms.q]\ntype = \"jq\"\ninputs = [\"gen\"]\nquery = '{query}'\n{}",
            memory_sink("out", "q", "jq-unused")
        );
        let run = run_transform(&transform_of(&toml, "q"), vec![batch(&records)], Duration::from_secs(10)).unwrap();
        assert!(run.failed.is_empty(), "{query}: {:?}", run.failed.first());
        let got: Vec<serde_json::Value> = text(&run).iter().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(got, expected, "query {query}");
    }
}

/// The function server of tests/lambda_function.py on a free port.
pub struct FunctionServer {
    _server: Peer,
    port: u16,
}

impl FunctionServer {
    /// Starts it and waits until it listens.
    pub fn start() -> FunctionServer {
        let port = free_port();
        let server = Peer::listening(
            Command::new(python())
                .arg(repo_root().join("tests/lambda_function.py"))
                .arg(port.to_string())
                .stdout(Stdio::null()),
            port,
            "the function server",
        );
        FunctionServer { _server: server, port }
    }

    /// The URL of one of its modes.
    pub fn url(&self, mode: &str) -> String {
        format!("http://127.0.0.1:{}/{mode}", self.port)
    }

    /// The events it received.
    pub fn events(&self) -> Vec<serde_json::Value> {
        let body = reqwest::blocking::get(self.url("events")).unwrap().text().unwrap();
        body.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
    }
}

fn lambda_toml(keys: &str) -> String {
    format!(
        "[pipeline]\nname = \"fn-stream\"\n[sources.gen]\ntype = \"generator\"\nprofile = \"cloudtrail\"\nrecords = 1\n\
         [transforms.fn]\ntype = \"lambda\"\ninputs = [\"gen\"]\n{keys}\n{}",
        memory_sink("out", "fn", "lambda-unused")
    )
}

fn lambda_run(keys: &str, records: &[String]) -> TransformRun {
    run_transform(&transform_of(&lambda_toml(keys), "fn"), vec![batch(records)], Duration::from_secs(60)).unwrap()
}

#[test]
fn a_function_with_the_transformation_contract_replaces_drops_and_fails_records_in_order() {
    let server = FunctionServer::start();
    let records: Vec<String> = (0..40)
        .map(|i| match i % 10 {
            3 => format!("{{\"n\":{i},\"drop\":true}}"),
            7 => format!("{{\"n\":{i},\"fail\":true}}"),
            _ => format!("{{\"n\":{i}}}"),
        })
        .collect();
    let run = lambda_run(&format!("url = \"{}\"\nmax_concurrency = 3", server.url("ok")), &records);
    let expected: Vec<String> =
        records.iter().filter(|r| !r.contains("drop") && !r.contains("fail")).map(|r| r.to_uppercase()).collect();
    assert_eq!(text(&run), expected, "Ok records replaced, in input order");
    assert_eq!(run.dropped, 4);
    let failed: Vec<String> =
        run.failed.iter().map(|(r, t, c)| format!("{} {t} {c}", String::from_utf8_lossy(r))).collect();
    assert_eq!(failed.len(), 4);
    assert!(
        failed.iter().all(|f| f.contains("fail") && f.ends_with("processing-failed Lambda.ProcessingFailed")),
        "{failed:?}"
    );
    assert_eq!(run.partition_keys[0].as_deref(), Some("first={,size=7"), "partition keys stay on the record");
    let events = server.events();
    let event = &events[0]["event"];
    assert!(event["deliveryStreamArn"].as_str().unwrap().ends_with(":deliverystream/fn-stream"));
    assert_eq!(event["region"], "us-east-1");
    assert_eq!(event["records"][0]["approximateArrivalTimestamp"], 1_000);
    let first =
        base64::engine::general_purpose::STANDARD.decode(event["records"][0]["data"].as_str().unwrap()).unwrap();
    assert_eq!(first, records[0].as_bytes());

    // In a pipeline: Firehose's SucceedProcessing counts the records answered Ok and the bytes
    // returned for them, in the lambda transform's families.
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.ndjson");
    std::fs::write(&input, records.join("\n")).unwrap();
    let toml = format!(
        "[pipeline]\nname = \"fn-stream\"\n[sources.file]\ntype = \"file\"\npaths = [\"{}\"]\n\
         [transforms.fn]\ntype = \"lambda\"\ninputs = [\"file\"]\nurl = \"{}\"\n{}",
        input.display(),
        server.url("ok"),
        memory_sink("out", "fn", "lambda-processed")
    );
    let (_, metrics) = run_pipeline(&toml, &registry(), 2).unwrap();
    let t = &metrics.transforms[0];
    let returned: u64 = expected.iter().map(|r| r.len() as u64).sum();
    let relaxed = std::sync::atomic::Ordering::Relaxed;
    assert_eq!((t.processed_records.load(relaxed), t.processed_bytes.load(relaxed)), (32, returned));
    let mut text = sluice_engine::metrics::PrometheusText::default();
    let label = sluice_engine::metrics::TransformLabel { name: "fn".into(), type_name: "lambda".into() };
    metrics.render_transforms(&mut text, "fn-stream", &[label]);
    let text = text.finish();
    assert!(text.contains("sluice_SucceedProcessing_Records{stream=\"fn-stream\",transform=\"fn\"} 32"), "{text}");
    assert!(
        text.contains(&format!("sluice_SucceedProcessing_Bytes{{stream=\"fn-stream\",transform=\"fn\"}} {returned}")),
        "{text}"
    );

    let report = conformance(
        &transform_of(&lambda_toml(&format!("url = \"{}\"", server.url("ok"))), "fn"),
        &records.iter().map(|r| r.as_bytes().to_vec()).collect::<Vec<_>>(),
        true,
        Duration::from_secs(60),
    )
    .unwrap();
    assert!(
        report.passed(TransformCheck::AccountsForEveryRecord)
            && report.passed(TransformCheck::FailsRecordsAsTheyEntered)
    );
}

#[test]
fn invocations_run_up_to_max_concurrency_at_once_and_records_leave_in_input_order() {
    let server = FunctionServer::start();
    // 3,000 records of ~200 bytes: 0.6 MB, three batches of `size_mb = 0.2`.
    let records: Vec<String> = (0..3_000).map(|i| format!("{{\"n\":{i},\"pad\":\"{}\"}}", "x".repeat(180))).collect();
    let keys = format!(
        "url = \"{}\"\nbuffer = {{ size_mb = 0.2, interval_s = 60 }}\nmax_concurrency = 2",
        server.url("concurrent")
    );
    let run = lambda_run(&keys, &records);
    let expected: Vec<String> = records.iter().map(|r| r.to_uppercase()).collect();
    assert_eq!(text(&run), expected, "in input order");
    assert!(server.events().len() >= 3, "{} invocations", server.events().len());
    let peak: usize = reqwest::blocking::get(server.url("peak")).unwrap().text().unwrap().trim().parse().unwrap();
    assert_eq!(peak, 2, "at most max_concurrency invocations at once, and that many used");
}

#[test]
fn a_function_that_breaks_the_contract_fails_the_batch_and_retries_only_what_may_succeed() {
    let server = FunctionServer::start();
    let records: Vec<String> = (0..5).map(|i| format!("{{\"n\":{i}}}")).collect();
    let codes = |run: &TransformRun| run.failed.iter().map(|(_, _, c)| c.clone()).collect::<Vec<_>>();
    for (mode, code) in [
        ("missing", "Lambda.MissingRecordId"),
        ("duplicate", "Lambda.DuplicatedRecordId"),
        ("notjson", "Lambda.JsonProcessingException"),
    ] {
        let run = lambda_run(&format!("url = \"{}\"\nretries = 2", server.url(mode)), &records);
        assert!(run.delivered.is_empty(), "{mode}");
        assert_eq!(codes(&run), vec![code.to_string(); 5], "{mode}");
    }
    // A malformed answer is not retried: one invocation each.
    assert_eq!(server.events().len(), 3);

    // Slower than timeout_s: retried, then every record fails with the timeout.
    let run = lambda_run(&format!("url = \"{}\"\nretries = 1\ntimeout_s = 1", server.url("slow")), &records);
    assert_eq!(codes(&run), vec!["Lambda.FunctionTimedOut".to_string(); 5]);
    assert_eq!(server.events().len(), 5, "the first attempt and one retry");

    // 500 twice, then success: retried with back-off.
    let run = lambda_run(&format!("url = \"{}\"\nretries = 3", server.url("flaky")), &records);
    assert!(run.failed.is_empty(), "{:?}", run.failed);
    assert_eq!(run.delivered.len(), 5);
    // 500s past the retries: the whole batch fails with the last error.
    let server = FunctionServer::start();
    let run = lambda_run(&format!("url = \"{}\"\nretries = 1", server.url("flaky")), &records);
    assert_eq!(codes(&run), vec!["Lambda.ServiceException".to_string(); 5]);
}

#[test]
fn the_invoke_api_is_called_with_a_sigv4_signature_for_lambda() {
    let server = FunctionServer::start();
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.ndjson");
    std::fs::write(&input, "{\"a\":1}\n").unwrap();
    let out = dir.path().join("out");
    let config = dir.path().join("invoke.toml");
    std::fs::write(
        &config,
        format!(
            "[pipeline]\nname = \"invoke\"\n[sources.in]\ntype = \"file\"\npaths = [\"{}\"]\n\
             [transforms.fn]\ntype = \"lambda\"\ninputs = [\"in\"]\n\
             function = \"arn:aws:lambda:eu-west-1:123456789012:function:mask\"\nendpoint = \"http://127.0.0.1:{}/invoke\"\n\
             [sinks.out]\ntype = \"object_store\"\ninputs = [\"fn\"]\nurl = \"file://{}\"\nformat = \"ndjson\"\n",
            input.display(),
            server.port,
            out.display()
        ),
    )
    .unwrap();
    let run = |env: &[(&str, &str)]| {
        let mut cmd = super::support::sluice();
        cmd.args(["run", config.to_str().unwrap(), "--quiet"]).without_aws_keys();
        cmd.envs(env.iter().copied()).output().unwrap()
    };
    let without = run(&[]);
    assert!(!without.status.success());
    assert!(
        String::from_utf8_lossy(&without.stderr).contains("needs AWS credentials"),
        "{}",
        String::from_utf8_lossy(&without.stderr)
    );
    let with = run(&[("AWS_ACCESS_KEY_ID", "AKIDLAMBDATEST"), ("AWS_SECRET_ACCESS_KEY", "lambda-test-secret")]);
    assert!(with.status.success(), "{}", String::from_utf8_lossy(&with.stderr));
    assert_eq!(all_lines(&folder_objects(&out)), vec!["{\"A\":1}".to_string()]);
    let events = server.events();
    assert_eq!(
        events[0]["path"],
        "/invoke/2015-03-31/functions/arn%3Aaws%3Alambda%3Aeu-west-1%3A123456789012%3Afunction%3Amask/invocations"
    );
    let auth = events[0]["authorization"].as_str().unwrap();
    assert!(
        auth.starts_with("AWS4-HMAC-SHA256 Credential=AKIDLAMBDATEST/")
            && auth.contains("/eu-west-1/lambda/aws4_request"),
        "{auth}"
    );
    // The start-up check, GetFunctionConfiguration, signed alike, once per run.
    let checks: Vec<serde_json::Value> = reqwest::blocking::get(server.url("checks"))
        .unwrap()
        .text()
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(checks.len(), 1, "{checks:?}");
    assert_eq!(
        checks[0]["path"],
        "/invoke/2015-03-31/functions/arn%3Aaws%3Alambda%3Aeu-west-1%3A123456789012%3Afunction%3Amask/configuration"
    );
    assert!(checks[0]["authorization"].as_str().unwrap().contains("/eu-west-1/lambda/aws4_request"));
    // A function Lambda does not know stops the run at start, before any record is read.
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, text.replace("function:mask", "function:missing-mask")).unwrap();
    let missing = run(&[("AWS_ACCESS_KEY_ID", "AKIDLAMBDATEST"), ("AWS_SECRET_ACCESS_KEY", "lambda-test-secret")]);
    let said = String::from_utf8_lossy(&missing.stderr);
    assert_eq!(missing.status.code(), Some(1), "{said}");
    assert!(
        said.contains(
            "the Lambda function arn:aws:lambda:eu-west-1:123456789012:function:missing-mask does not exist \
             (404 Not Found: ResourceNotFoundException: Function not found: arn:aws:lambda:eu-west-1:123456789012:function:missing-mask)"
        ),
        "{said}"
    );
    assert_eq!(server.events().len(), 1, "never invoked");
    // `validate --check` asks the same, invoking nothing.
    let validate = || {
        let mut cmd = super::support::sluice();
        cmd.args(["validate", "--check", config.to_str().unwrap()]).without_aws_keys();
        cmd.envs([("AWS_ACCESS_KEY_ID", "AKIDLAMBDATEST"), ("AWS_SECRET_ACCESS_KEY", "lambda-test-secret")]);
        cmd.output().unwrap()
    };
    let checked = validate();
    let said = String::from_utf8_lossy(&checked.stderr);
    assert_eq!(checked.status.code(), Some(1), "{said}");
    assert!(
        said.contains("transforms.fn (lambda: arn:aws:lambda:eu-west-1:123456789012:function:missing-mask")
            && said.contains("function:missing-mask does not exist")
            && said.trim_end().ends_with("(Lambda.ResourceNotFound)"),
        "{said}"
    );
    // Without credentials the check is refused as an invocation would be.
    let mut unsigned = super::support::sluice();
    let unsigned =
        unsigned.args(["validate", "--check", config.to_str().unwrap()]).without_aws_keys().output().unwrap();
    let said = String::from_utf8_lossy(&unsigned.stderr);
    assert_eq!(unsigned.status.code(), Some(1), "{said}");
    assert!(
        said.contains("needs AWS credentials") && said.trim_end().ends_with("(Lambda.InvokeAccessDenied)"),
        "{said}"
    );
    std::fs::write(&config, &text).unwrap();
    let checked = validate();
    assert!(checked.status.success(), "{}", String::from_utf8_lossy(&checked.stderr));
    assert!(String::from_utf8_lossy(&checked.stdout).contains("transforms.fn (lambda: "));
    assert_eq!(server.events().len(), 1, "validate invoked nothing");
    // An endpoint without GetFunctionConfiguration (an emulator) is only warned about.
    std::fs::write(&config, text.replace("function:mask", "function:noapi-mask")).unwrap();
    let emulated = run(&[("AWS_ACCESS_KEY_ID", "AKIDLAMBDATEST"), ("AWS_SECRET_ACCESS_KEY", "lambda-test-secret")]);
    assert!(emulated.status.success(), "{}", String::from_utf8_lossy(&emulated.stderr));
    assert_eq!(server.events().len(), 2);
}

#[test]
fn redact_and_cloudwatch_logs_pass_the_conformance_kit() {
    let records: Vec<Vec<u8>> = generated(Profile::Cloudtrail, 3, 50)
        .into_iter()
        .chain(["not json, mail me at a@example.com".to_string(), "{\"ssn\":\"123-45-6789\"}".to_string()])
        .map(String::into_bytes)
        .collect();
    let toml = pipeline(
        "kit",
        1,
        "[transforms.mask]\ntype = \"redact\"\ninputs = [\"gen\"]\nmode = \"mask\"\n",
        &memory_sink("o", "mask", "kit"),
    );
    let report = conformance(&transform_of(&toml, "mask"), &records, true, Duration::from_secs(10)).unwrap();
    assert!(
        report.passed(TransformCheck::AccountsForEveryRecord) && report.passed(TransformCheck::IndependentOfBatching)
    );

    let toml = pipeline(
        "kit",
        1,
        "[transforms.q]\ntype = \"jq\"\ninputs = [\"gen\"]\nquery = '.tags[]?, .eventName'\n",
        &memory_sink("o", "q", "kit"),
    );
    let report = conformance(&transform_of(&toml, "q"), &records, false, Duration::from_secs(10)).unwrap();
    assert!(report.passed(TransformCheck::FailsRecordsAsTheyEntered), "the text record fails");

    let toml = pipeline(
        "kit",
        1,
        "[transforms.cwl]\ntype = \"cloudwatch_logs\"\ninputs = [\"gen\"]\n",
        &memory_sink("o", "cwl", "kit"),
    );
    let payloads: Vec<Vec<u8>> =
        vec![gzip(data_message(&["one", "two"]).as_bytes()), b"plain".to_vec(), gzip(CONTROL.as_bytes())];
    let report = conformance(&transform_of(&toml, "cwl"), &payloads, false, Duration::from_secs(10)).unwrap();
    assert!(report.passed(TransformCheck::FailsRecordsAsTheyEntered));
}

pub const CONTROL: &str = r#"{"messageType":"CONTROL_MESSAGE","owner":"CloudwatchLogs","logGroup":"","logStream":"","subscriptionFilters":[],"logEvents":[{"id":"","timestamp":1680683189085,"message":"CWL CONTROL MESSAGE: Checking health of destination Firehose."}]}"#;

pub fn data_message(messages: &[&str]) -> String {
    let events: Vec<serde_json::Value> = messages
        .iter()
        .enumerate()
        .map(|(i, m)| serde_json::json!({"id": i.to_string(), "timestamp": 1_680_683_189_085u64 + i as u64, "message": m}))
        .collect();
    serde_json::json!({"messageType": "DATA_MESSAGE", "owner": "123456789012", "logGroup": "/aws/lambda/app",
        "logStream": "2026/12/02/[$LATEST]abc", "subscriptionFilters": ["to-firehose"], "logEvents": events})
    .to_string()
}

pub fn gzip(bytes: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

#[test]
fn cloudwatch_logs_subscription_records_sent_by_boto3_are_unpacked_and_bad_ones_kept_compressed() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let out = dir.path().join("out");
    let config = dir.path().join("cwl.toml");
    std::fs::write(
        &config,
        format!(
            "[pipeline]\nname = \"cwl\"\nworkers = 2\ndata_dir = \"{}\"\n[sources.api]\ntype = \"firehose\"\nlisten = \"127.0.0.1:{port}\"\n\
             [transforms.cwl]\ntype = \"cloudwatch_logs\"\ninputs = [\"api\"]\nextract_messages = true\n\
             [sinks.out]\ntype = \"object_store\"\ninputs = [\"cwl\"]\nurl = \"file://{}\"\nformat = \"ndjson\"\n\
             error_prefix = \"errors/!{{firehose:error-output-type}}/\"\nbuffer = {{ size_mb = 1, interval_s = 1 }}\n",
            dir.path().join("data").display(),
            out.display()
        ),
    )
    .unwrap();
    let payloads: Vec<Vec<u8>> = vec![
        gzip(data_message(&["GET /index.html 200", "héllo \"quoted\" line"]).as_bytes()),
        gzip(CONTROL.as_bytes()),
        b"not gzip at all".to_vec(),
        gzip(b"{\"some\":\"json\"}"),
        gzip(data_message(&["third"]).as_bytes()),
    ];
    let file = dir.path().join("payloads.b64");
    let lines: Vec<String> = payloads.iter().map(|p| base64::engine::general_purpose::STANDARD.encode(p)).collect();
    std::fs::write(&file, lines.join("\n")).unwrap();
    let child = start_listening(&["run", config.to_str().unwrap()], port, Stdio::null(), Stdio::null());
    let sent = Command::new(python())
        .arg(repo_root().join("tests/firehose_client.py"))
        .args(["put_b64", &format!("http://127.0.0.1:{port}"), "cwl", file.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(sent.status.success(), "{}", String::from_utf8_lossy(&sent.stderr));
    // DescribeDeliveryStream shows the transform as Firehose's processors.
    let described = firehose_call(port, "DescribeDeliveryStream", r#"{"DeliveryStreamName":"cwl"}"#.into());
    let processing = &described["DeliveryStreamDescription"]["Destinations"][0]["ExtendedS3DestinationDescription"]["ProcessingConfiguration"];
    assert_eq!(processing["Enabled"], true, "{described}");
    assert_eq!(processing["Processors"][0]["Type"], "Decompression");
    assert_eq!(processing["Processors"][1]["Type"], "CloudWatchLogProcessing");
    assert_eq!(processing["Processors"][1]["Parameters"][0]["ParameterValue"], "true");
    std::thread::sleep(Duration::from_millis(2500));
    terminate(&child);
    let code = wait(child);
    assert_eq!(code, Some(2), "records went to the error output");
    let objects = folder_objects(&out);
    let data: BTreeMap<_, _> = objects.iter().filter(|(k, _)| !k.starts_with("errors/")).collect();
    let mut expected =
        vec!["GET /index.html 200".to_string(), "héllo \"quoted\" line".to_string(), "third".to_string()];
    expected.sort();
    assert_eq!(all_lines(data), expected);
    let errors: BTreeMap<_, _> =
        objects.iter().filter(|(k, _)| k.starts_with("errors/decompression-failed/")).collect();
    let documents: Vec<serde_json::Value> =
        all_lines(errors).iter().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(documents.len(), 2);
    let mut raw: Vec<String> = documents.iter().map(|d| d["rawData"].as_str().unwrap().to_string()).collect();
    raw.sort();
    let mut kept = vec![lines[2].clone(), lines[3].clone()];
    kept.sort();
    assert_eq!(raw, kept, "kept still compressed, as it arrived");
    let codes: Vec<&str> = documents.iter().map(|d| d["errorCode"].as_str().unwrap()).collect();
    assert!(codes.contains(&"CloudWatchLogs.DecompressionFailed") && codes.contains(&"CloudWatchLogs.InvalidDocument"));
}

fn wait(mut child: super::support::Started) -> Option<i32> {
    let started = std::time::Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status.code();
        }
        assert!(started.elapsed() < Duration::from_secs(60), "sluice did not stop");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_query_error_in_a_multi_line_string_points_at_its_line_and_column() {
    let transforms = "[transforms.a]\ntype = \"jq\"\ninputs = [\"gen\"]\nquery = '''\n.a\n  | nosuch(1)'''\n";
    let toml = pipeline("bad", 1, transforms, &memory_sink("out", "a", "bad"));
    let Err(d) = plan_from_str(&toml, &registry()) else { panic!("accepted:\n{toml}") };
    let at = toml.find("nosuch(1)").unwrap();
    let line = toml[..at].matches('\n').count() + 1;
    let col = at - toml[..at].rfind('\n').map_or(0, |n| n + 1) + 1;
    let short = d.short();
    assert!(
        short.iter().any(|l| l.contains(&format!(":{line}:{col}: the jq query does not compile"))),
        "expected {line}:{col} in {short:?}"
    );
}

#[test]
fn transform_config_errors_point_at_what_is_wrong() {
    let check = |transforms: &str, sinks_input: &str, expected: &[&str]| {
        let toml = pipeline("bad", 1, transforms, &memory_sink("out", sinks_input, "bad"));
        let errors = match plan_from_str(&toml, &registry()) {
            Ok(_) => panic!("accepted:\n{toml}"),
            Err(d) => d.to_string(),
        };
        for e in expected {
            assert!(errors.contains(e), "expected `{e}` in:\n{errors}");
        }
        assert!(errors.contains("pipeline.toml:"), "{errors}");
    };
    check(
        "[transforms.a]\ntype = \"jq\"\ninputs = [\"b\"]\nquery = \".\"\n[transforms.b]\ntype = \"jq\"\ninputs = [\"a\"]\nquery = \".\"\n",
        "a",
        &["transforms read each other in a cycle: a -> b -> a", "source `gen` is not an input"],
    );
    check(
        "[transforms.a]\ntype = \"jq\"\ninputs = [\"gne\"]\nquery = \".\"\n",
        "a",
        &["unknown input `gne`", "inputs name sources and transforms: `gen`, `a`"],
    );
    check(
        "[transforms.a]\ntype = \"jq\"\ninputs = [\"gen\"]\nquery = \".\"\n",
        "gen",
        &["transform `a` is not an input of any sink or transform"],
    );
    check(
        "[transforms.a]\ntype = \"jq\"\ninputs = [\"gen\"]\nquery = \".a | nosuch(1)\"\n",
        "a",
        &["the jq query does not compile: undefined filter `nosuch`"],
    );
    check(
        "[transforms.a]\ntype = \"redact\"\ninputs = [\"gen\"]\npatterns = [{ name = \"x\", regex = \"EMP-[0-9\" }]\n",
        "a",
        &["pattern `x`: invalid regex"],
    );
    check(
        "[transforms.a]\ntype = \"redact\"\ninputs = [\"gen\"]\nmode = \"hash\"\n",
        "a",
        &["mode = \"hash\" needs `hash_key`"],
    );
    check(
        "[transforms.a]\ntype = \"redact\"\ninputs = [\"gen\"]\ndetectors = [\"ssm\"]\n",
        "a",
        &["unknown detector `ssm`", "did you mean `ssn`?"],
    );
    check("[transforms.a]\ntype = \"lambda\"\ninputs = [\"gen\"]\n", "a", &["needs `url` or `function`"]);
    check(
        "[transforms.gen]\ntype = \"jq\"\ninputs = [\"gen\"]\nquery = \".\"\n",
        "gen",
        &["`gen` names both a source and a transform"],
    );
}

#[test]
fn the_example_mask_pii_pipeline_runs_and_masks() {
    let dir = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(repo_root().join("pipelines/mask-pii.toml")).unwrap();
    let out = dir.path().join("out");
    let text = text.replace("file://./out/mask-pii", &format!("file://{}", out.display()));
    let config = dir.path().join("mask-pii.toml");
    std::fs::write(&config, text).unwrap();
    let run = super::support::sluice().args(["run", config.to_str().unwrap(), "--quiet"]).output().unwrap();
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let summary = String::from_utf8_lossy(&run.stdout);
    assert!(summary.contains("transform mask") && summary.contains("transform shape"), "{summary}");
    let lines = all_lines(&folder_objects(&out));
    assert!(!lines.is_empty());
    for line in &lines {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        assert!(v["source_ip"].as_str().is_some_and(|ip| ip == "[REDACTED:ipv4]"), "{line}");
    }
}

#[test]
fn backup_all_keeps_the_source_records_as_they_arrived_before_any_transform() {
    const RECORDS: u64 = 500;
    let transforms = "[transforms.shape]\ntype = \"jq\"\ninputs = [\"gen\"]\nquery = '{event: .eventName}'\n";
    let sinks = "[sinks.out]\ntype = \"object_store\"\ninputs = [\"shape\", \"gen\"]\nurl = \"memory://transform-backup/out\"\nformat = \"ndjson\"\n\
                 backup = \"all\"\nerror_prefix = \"errors/!{firehose:error-output-type}/\"\n";
    let (_, metrics) = run_pipeline(&pipeline("backup", RECORDS, transforms, sinks), &registry(), 2).unwrap();
    let objects = memory_objects("transform-backup");
    let backups: BTreeMap<_, _> =
        objects.iter().filter(|(k, _)| k.starts_with("out/errors/source-record-backup/")).collect();
    let data: BTreeMap<_, _> = objects.iter().filter(|(k, _)| !k.starts_with("out/errors/")).collect();
    let mut source = generated(Profile::Cloudtrail, 7, RECORDS);
    source.sort();
    // The sink reads the source twice (directly and through the transform): each source record is
    // backed up once, as it arrived.
    assert_eq!(all_lines(backups), source);
    assert_eq!(all_lines(data).len() as u64, 2 * RECORDS);
    assert_eq!(metrics.sinks[0].records_source_backup.load(std::sync::atomic::Ordering::Relaxed), RECORDS);
}

/// The example pipeline `pipelines/cloudfront-standard-logs.toml` as a user runs it (its buckets
/// moved into the test's folder): CloudFront standard log files as the legacy logging writes them
/// (gzip, `#Version` and `#Fields` directives, tab-separated fields, `-` for none, the user agent
/// URL-encoded) become Parquet of the cloudfront schema, partitioned by day. DuckDB reads back every
/// request once, with its values.
#[test]
fn the_example_cloudfront_standard_logs_pipeline_turns_log_files_into_a_parquet_lake() {
    const REQUESTS: u64 = 2_000;
    let dir = tempfile::tempdir().unwrap();
    let logs = dir.path().join("cloudfront-logs");
    std::fs::create_dir_all(&logs).unwrap();
    let requests: Vec<serde_json::Value> =
        generated(Profile::Cloudfront, 21, REQUESTS).iter().map(|l| serde_json::from_str(l).unwrap()).collect();
    let field = |r: &serde_json::Value, key: &str| match &r[key] {
        serde_json::Value::Null => "-".to_string(),
        serde_json::Value::String(s) if s.is_empty() => "-".to_string(),
        serde_json::Value::String(s) => s.replace(' ', "%20"),
        other => other.to_string(),
    };
    let mut expected = Vec::new();
    for (i, chunk) in requests.chunks(300).enumerate() {
        let mut text = String::from(
            "#Version: 1.0\n#Fields: date time x-edge-location sc-bytes c-ip cs-method cs(Host) cs-uri-stem sc-status cs(Referer) cs(User-Agent) cs-uri-query cs(Cookie) x-edge-result-type x-edge-request-id x-host-header cs-protocol cs-bytes time-taken x-forwarded-for ssl-protocol ssl-cipher x-edge-response-result-type cs-protocol-version fle-status fle-encrypted-fields c-port time-to-first-byte x-edge-detailed-result-type sc-content-type sc-content-len sc-range-start sc-range-end\n",
        );
        for r in chunk {
            let at = r["timestamp"].as_str().unwrap();
            let (date, time) = (&at[..10], &at[11..19]);
            let fields = [
                date.to_string(),
                time.to_string(),
                field(r, "x_edge_location"),
                field(r, "sc_bytes"),
                field(r, "c_ip"),
                field(r, "cs_method"),
                field(r, "cs_host"),
                field(r, "cs_uri_stem"),
                field(r, "sc_status"),
                field(r, "cs_referer"),
                field(r, "cs_user_agent"),
                field(r, "cs_uri_query"),
                "-".into(),
                field(r, "x_edge_result_type"),
                field(r, "x_edge_request_id"),
                field(r, "cs_host"),
                field(r, "cs_protocol"),
                field(r, "cs_bytes"),
                field(r, "time_taken"),
                "-".into(),
                field(r, "ssl_protocol"),
                "TLS_AES_128_GCM_SHA256".into(),
                field(r, "x_edge_result_type"),
                "HTTP/2.0".into(),
                "-".into(),
                "-".into(),
                "443".into(),
                "0.001".into(),
                field(r, "x_edge_result_type"),
                "text/html".into(),
                "-".into(),
                "-".into(),
                "-".into(),
            ];
            text.push_str(&fields.join("\t"));
            text.push('\n');
            expected.push(format!(
                "{}|{date} {time}|{}|{}|{}|{}",
                field(r, "x_edge_request_id"),
                field(r, "sc_bytes"),
                field(r, "sc_status"),
                field(r, "c_ip"),
                field(r, "cs_user_agent"),
            ));
        }
        write_gzip(&logs.join(format!("E2EXAMPLE.2026-11-01-0{i}.a1b2c3d{i}.gz")), &text);
    }
    let lake = dir.path().join("lake");
    let said = run_example_pipeline(
        dir.path(),
        "cloudfront-standard-logs",
        &[("s3://amzn-s3-demo-bucket/cloudfront-logs/", &logs), ("s3://amzn-s3-demo-bucket/lake/cloudfront", &lake)],
        "cloudfront.toml",
    );
    assert!(said.contains("14 dropped"), "the directives of the 7 files: {said}");
    assert!(!lake.join("errors").exists(), "nothing went to the error output");
    let v = duckdb_json(
        &lake,
        "rows = c.execute(f\"select x_edge_request_id || '|' || strftime(timestamp, '%Y-%m-%d %H:%M:%S') || '|' || sc_bytes || '|' || \
             sc_status || '|' || c_ip || '|' || coalesce(cs_user_agent, '-'), day from {lake}\").fetchall()\n\
         print(json.dumps({'rows': sorted(r[0] for r in rows), 'wrong_day': sum(1 for r in rows if r[0].split('|')[1][:10] != r[1])}))\n",
    );
    expected.sort();
    assert_eq!(v["rows"], serde_json::json!(expected), "every request once, with its values");
    assert_eq!(v["wrong_day"], 0);
}

/// The example pipeline `pipelines/vpc-flow-archive.toml` as a user runs it (its buckets moved into
/// the test's folder): VPC Flow Logs as S3 delivery writes them (gzip text files, a header line
/// each, `-` for a NODATA record's fields) become Parquet of the vpcflow schema partitioned by
/// account and day. DuckDB reads back every flow once, under the partition its values name.
#[test]
fn the_example_vpc_flow_archive_pipeline_turns_flow_log_files_into_a_partitioned_lake() {
    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join("AWSLogs");
    use sluice_connectors::transforms::parse::{VPC_FLOW_FIELDS, key_of};
    let header = VPC_FLOW_FIELDS.join(" ");
    let keys: Vec<String> = VPC_FLOW_FIELDS.iter().map(|f| key_of(f)).collect();
    let mut expected: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    let flows = generated(Profile::Vpcflow, 8, 1_500);
    for (file, chunk) in flows.chunks(400).enumerate() {
        let account = format!("11112222333{}", file % 2);
        let mut text = format!("{header}\n");
        for (i, line) in chunk.iter().enumerate() {
            let mut flow: serde_json::Value = serde_json::from_str(line).unwrap();
            flow["account_id"] = account.clone().into();
            let start = flow["start"].as_i64().unwrap() + 86_400 * (i as i64 % 3);
            flow["start"] = start.into();
            if i % 50 == 0 {
                // A NODATA record: no addresses, ports or counts.
                for k in ["srcaddr", "dstaddr", "srcport", "dstport", "protocol", "packets", "bytes", "action"] {
                    flow[k] = serde_json::Value::Null;
                }
                flow["log_status"] = "NODATA".into();
            }
            let day = ["2026-11-01", "2026-11-02", "2026-11-03"][i % 3];
            let entry = expected.entry(format!("{account}/{day}")).or_default();
            *entry = (entry.0 + 1, entry.1 + flow["bytes"].as_u64().unwrap_or(0));
            let field = |v: &serde_json::Value| match v {
                serde_json::Value::Null => "-".to_string(),
                serde_json::Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            text.push_str(&keys.iter().map(|k| field(&flow[k.as_str()])).collect::<Vec<_>>().join(" "));
            text.push('\n');
        }
        let name = format!("{account}_vpcflowlogs_us-east-1_fl-0a1b2c3d{file}_20261101T0{file}00Z_h{file}.log.gz");
        write_gzip(&archive.join(format!("{account}/vpcflowlogs/us-east-1/2026/11/01")).join(name), &text);
    }
    let lake = dir.path().join("lake");
    let said = run_example_pipeline(
        dir.path(),
        "vpc-flow-archive",
        &[("s3://amzn-s3-demo-bucket/AWSLogs/", &archive), ("s3://amzn-s3-demo-bucket/lake/vpc-flow", &lake)],
        "vpcflow.toml",
    );
    assert!(said.contains("4 dropped"), "the headers of the 4 files: {said}");
    let v = duckdb_json(
        &lake,
        "rows = c.execute(f\"select account || '/' || day, count(*), coalesce(sum(bytes), 0) from {lake} group by 1\").fetchall()\n\
         wrong = c.execute(f\"select count(*) from {lake} where account != account_id or day != strftime(to_timestamp(start), '%Y-%m-%d')\").fetchone()[0]\n\
         print(json.dumps({'partitions': {r[0]: [r[1], int(r[2])] for r in rows}, 'wrong': wrong}))\n",
    );
    let partitions: BTreeMap<String, (u64, u64)> = serde_json::from_value(v["partitions"].clone()).unwrap();
    assert_eq!(partitions, expected, "every flow once, in its own partition, its bytes kept");
    assert_eq!(v["wrong"], 0, "the partition columns match the rows");
}

/// The example pipeline `pipelines/alb-access-logs.toml` as a user runs it (its buckets moved into
/// the test's folder): Application Load Balancer access logs as Elastic Load Balancing delivers
/// them (gzip files per account, quoted request lines and user agents holding spaces and escaped
/// quotes, IPv6 clients, Lambda targets that failed with `-` for the target, lines of an older
/// layout without the later fields and lines with a field AWS added since) become Parquet of the
/// alb schema, partitioned by day. DuckDB reads back every request once, with its values, under
/// the day of its time.
#[test]
fn the_example_alb_access_logs_pipeline_turns_load_balancer_logs_into_a_parquet_lake() {
    const REQUESTS: usize = 1_200;
    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join("AWSLogs");
    let mut expected = Vec::new();
    let mut files: BTreeMap<String, String> = BTreeMap::new();
    for i in 0..REQUESTS {
        let day = ["2026-11-01", "2026-11-02"][i % 2];
        let time = format!("{day}T{:02}:{:02}:{:02}.{:06}Z", i % 24, i % 60, (i * 7) % 60, i * 811 % 1_000_000);
        let (client_ip, client) = if i % 7 == 0 {
            let ip = format!("2001:db8::{i:x}");
            (ip.clone(), format!("{ip}:{}", 1024 + i))
        } else {
            let ip = format!("10.{}.{}.7", i / 256 % 256, i % 256);
            (ip.clone(), format!("{ip}:{}", 1024 + i))
        };
        let (target, status, target_status, error) = if i % 10 == 0 {
            ("-".to_string(), 502, "-", "\"LambdaInvalidResponse\"")
        } else {
            (format!("10.0.0.{}:80", i % 5 + 1), [200, 404][i % 2], "200", "\"-\"")
        };
        let (agent, agent_written) = if i % 3 == 0 {
            (
                format!("Mozilla/5.0 (X11; Linux) \"quoted {i}\" \\ back"),
                format!("Mozilla/5.0 (X11; Linux) \\\"quoted {i}\\\" \\\\ back"),
            )
        } else {
            (format!("curl/8.{i}"), format!("curl/8.{i}"))
        };
        let sent = i * 13;
        let mut line = format!(
            "https {time} app/my-loadbalancer/50dc6c495c0c9188 {client} {target} 0.000 0.00{} 0.000 {status} {target_status} 34 {sent} \
             \"GET https://www.example.com:443/items?id={i} HTTP/1.1\" \"{agent_written}\" ECDHE-RSA-AES128-GCM-SHA256 TLSv1.2 \
             arn:aws:elasticloadbalancing:us-east-1:111122223333:targetgroup/my-targets/73e2d6bc24d8a067 \"Root=1-58337281-{i:024x}\"",
            i % 10
        );
        if i % 11 != 0 {
            line.push_str(&format!(
                " \"www.example.com\" \"-\" 1 {time} \"forward\" \"-\" {error} \"{target}\" \"{target_status}\" \"-\" \"-\" TID_{i:032x}"
            ));
            if i % 13 == 0 {
                line.push_str(" \"a field AWS added\"");
            }
        }
        let account = format!("11112222333{}", i % 2);
        let file = format!(
            "{account}/elasticloadbalancing/us-east-1/2026/11/01/{account}_elasticloadbalancing_us-east-1_app.my-loadbalancer.50dc6c495c0c9188_20261101T{:02}05Z_10.0.0.1_a1b2c3.log.gz",
            i % 3
        );
        files.entry(file).or_default().push_str(&(line + "\n"));
        let target_ip = if target == "-" { "-".to_string() } else { target.trim_end_matches(":80").to_string() };
        expected.push(format!(
            "{client_ip}|{}|{status}|{sent}|{target_ip}|{agent}|{}",
            1024 + i,
            time.replace('T', " ").trim_end_matches('Z')
        ));
    }
    for (name, text) in &files {
        write_gzip(&archive.join(name), text);
    }
    let lake = dir.path().join("lake");
    let said = run_example_pipeline(
        dir.path(),
        "alb-access-logs",
        &[("s3://amzn-s3-demo-bucket/AWSLogs/", &archive), ("s3://amzn-s3-demo-bucket/lake/alb", &lake)],
        "alb.toml",
    );
    assert!(!lake.join("errors").exists(), "nothing went to the error output: {said}");
    let v = duckdb_json(
        &lake,
        "rows = c.execute(f\"select client_ip || '|' || client_port || '|' || elb_status_code || '|' || sent_bytes || '|' || \
             coalesce(target_ip, '-') || '|' || user_agent || '|' || strftime(time, '%Y-%m-%d %H:%M:%S.%f') from {lake}\").fetchall()\n\
         wrong = c.execute(f\"select count(*) from {lake} where day != strftime(time, '%Y-%m-%d')\").fetchone()[0]\n\
         print(json.dumps({'rows': sorted(r[0] for r in rows), 'wrong_day': wrong}))\n",
    );
    expected.sort();
    let rows: Vec<String> = serde_json::from_value(v["rows"].clone()).unwrap();
    assert_eq!(rows.len(), expected.len(), "every request once");
    assert_eq!(rows, expected, "with its values");
    assert_eq!(v["wrong_day"], 0);
}

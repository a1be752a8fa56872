//! The error log (issue 19 §2): one JSON line per delivery failure, backup and transform failure,
//! rate-limited per error code with what was held back counted, to `[pipeline] error_log` and, with
//! `--log-format json`, to stderr; no configured secret in any line.

use serde_json::Value;

use super::support::{free_port, json_lines_under, sluice};

#[test]
fn failures_are_json_lines_rate_limited_per_code_in_the_error_log_and_on_stderr() {
    let dir = tempfile::tempdir().unwrap();
    let errors = dir.path().join("errors");
    let config = dir.path().join("failing.toml");
    std::fs::write(
        &config,
        format!(
            r#"[pipeline]
name = "failing"
data_dir = "{data}"
error_log = {{ url = "file://{errors}", buffer = {{ size_mb = 1, interval_s = 1 }} }}

[sources.trail]
type = "generator"
profile = "cloudtrail"
records = 20000
seed = 3

[transforms.check]
type = "jq"
inputs = ["trail"]
query = 'if .eventName == "GetObject" then error("refused-record " + .eventID) else . end'

[sinks.siem]
type = "http_endpoint"
inputs = ["check"]
url = "http://127.0.0.1:{down}/in"
access_key = "leak-marker-endpoint-key"
buffer = {{ size_mb = 1, interval_s = 1 }}
retry = {{ duration_s = 2 }}
backup_store = {{ url = "file://{backup}" }}
"#,
            data = dir.path().join("data").display(),
            errors = errors.display(),
            down = free_port(),
            backup = dir.path().join("backup").display(),
        ),
    )
    .unwrap();
    let output = sluice().args(["--log-format", "json", "run", "--quiet", config.to_str().unwrap()]).output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "records went to the error output: {stderr}");

    let mut stored = json_lines_under(&errors);
    let mut printed: Vec<Value> =
        stderr.lines().filter(|l| l.starts_with('{')).map(|l| serde_json::from_str(l).unwrap()).collect();
    stored.sort_by_key(Value::to_string);
    printed.sort_by_key(Value::to_string);
    assert_eq!(stored, printed, "the same lines in the error log and on stderr");
    for line in &stored {
        for field in ["time", "level", "stream", "component", "errorCode", "message"] {
            assert!(line[field].is_string(), "{field}: {line}");
        }
        assert_eq!(line["stream"], "failing");
    }
    let of = |component: &str, level: &str| -> Vec<&Value> {
        stored
            .iter()
            .filter(|l| l["component"] == component && l["level"] == level && l.get("suppressed").is_none())
            .collect()
    };
    let retries = of("siem", "WARN");
    assert!(!retries.is_empty(), "{stored:#?}");
    for line in &retries {
        assert!(line["errorCode"] == "HttpEndpoint.ConnectionFailed" && line["key"].is_string(), "{line}");
        assert!(line["attempts"].is_u64() && line["message"].as_str().unwrap().contains("retrying"), "{line}");
    }
    // Each backed-up record says why, down to the cause: reqwest's own message names only the request.
    let documents = json_lines_under(&dir.path().join("backup"));
    let undelivered: Vec<&Value> =
        documents.iter().filter(|d| d["errorCode"] == "HttpEndpoint.ConnectionFailed").collect();
    assert!(!undelivered.is_empty(), "{documents:#?}");
    for document in undelivered {
        let message = document["errorMessage"].as_str().unwrap_or_default();
        assert!(message.contains("error sending request") && message.contains("Connection refused"), "{document}");
    }
    let backups = of("siem", "ERROR");
    assert!(!backups.is_empty(), "{stored:#?}");
    assert!(backups.iter().all(|l| l["message"].as_str().unwrap().contains("backed up") && l["key"].is_string()));
    let transform = of("check", "ERROR");
    assert!(!transform.is_empty() && transform.iter().all(|l| l["errorCode"] == "Jq.ProcessingFailed"));
    assert!(transform.iter().all(|l| l["message"].as_str().unwrap().contains("records to the error output")));
    // The failure's own message quotes the record (its eventID): records stay out of the log.
    assert!(!stored.iter().any(|l| l.to_string().contains("refused-record")), "{stored:#?}");
    // Rate limit: at most 5 lines per component, code and level in a minute; what was held back is
    // counted, in a last line at the stop.
    for (component, level) in [("siem", "WARN"), ("siem", "ERROR"), ("check", "ERROR")] {
        assert!(of(component, level).len() <= 5, "{component} {level}: {stored:#?}");
    }
    let held: u64 = stored.iter().filter_map(|l| l["suppressed"].as_u64()).sum();
    assert!(held > 0, "a down destination must be rate-limited: {stored:#?}");
    assert!(!stderr.contains("leak-marker-endpoint-key"), "a secret on stderr");
}

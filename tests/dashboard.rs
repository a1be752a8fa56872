//! The dashboard on the admin address (issue 19 §1): in a real browser (Debian's Chromium driven by
//! Playwright, tests/dashboard_check.py) during a run with a producer and an injected destination
//! outage; and under `serve`, where one page shows every stream of the process.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::json;

use super::support::{firehose_call, firehose_to_files, free_port, python, repo_root, start_serve, wait_for_port};

/// The page's figures move and match /metrics, its layout holds still, an outage shows in the
/// success ratio and the error list, a Kinesis source reading an hour behind its stream (moto,
/// behind the test proxy that says so as Kinesis would) shows in red, so does the end of the API
/// listener's certificate two days away, a partitioning sink's open partitions show, it loads
/// nothing from elsewhere; the screenshot lands in
/// target/test-output/dashboard/.
#[test]
fn the_dashboard_in_chromium_follows_a_run_and_shows_an_outage() {
    let work = tempfile::tempdir().unwrap();
    let out = repo_root().join("target/test-output/dashboard");
    let _ = std::fs::remove_file(out.join("dashboard.png"));
    let moto = super::security::Moto::start();
    let stream = super::kinesis::create_stream(&moto, "trail", 1);
    let behind = std::sync::Arc::new(super::kinesis::Faults::behind(3_600_000));
    let (kinesis, _proxy_runtime) = super::kinesis::fault_proxy(&moto.endpoint, behind);
    // The API listener serves a certificate that ends in two days: within the alert rules' 14.
    let certificates = super::support::TestCertificates::make();
    browser_checks("dashboard_check.py", work.path(), &out, "sluice.log", 20, |check| {
        check
            .arg(format!("http://127.0.0.1:{kinesis}"))
            .arg(&stream)
            .arg("--tls")
            .args(["server.pem", "server.key", "ca.pem"].map(|f| certificates.path(f)))
            .envs(super::security::aws_env());
    });
    let screenshot = std::fs::read(out.join("dashboard.png")).unwrap();
    assert!(screenshot.starts_with(b"\x89PNG"), "a PNG screenshot");
}

/// Under `sluice serve`, in Chromium: a pipeline file with an error is listed in the page with its
/// problem and counted in the header, red, as /metrics counts it; once fixed and reloaded (SIGHUP)
/// the page says so. The screenshot lands in target/test-output/dashboard/.
#[test]
fn the_dashboard_under_serve_in_chromium_lists_the_files_not_served() {
    let work = tempfile::tempdir().unwrap();
    let out = repo_root().join("target/test-output/dashboard");
    browser_checks("dashboard_serve_check.py", work.path(), &out, "sluice-serve.log", 8, |_| {});
}

/// Runs the browser check tests/`script` with the binary, `work` and `out` (then what `more` adds)
/// and asserts that it ran at least `at_least` checks and every one passed (else its report, its
/// errors and sluice's log, `out`/`log`, say which did not).
fn browser_checks(script: &str, work: &Path, out: &Path, log: &str, at_least: usize, more: impl FnOnce(&mut Command)) {
    let mut check = Command::new(python());
    check.arg(repo_root().join("tests").join(script)).arg(env!("CARGO_BIN_EXE_sluice")).arg(work).arg(out);
    more(&mut check);
    let checked = check.output().unwrap();
    let report = String::from_utf8_lossy(&checked.stdout);
    assert!(
        checked.status.success(),
        "{report}\n{}\nsluice's log: {}",
        String::from_utf8_lossy(&checked.stderr),
        std::fs::read_to_string(out.join(log)).unwrap_or_default()
    );
    let report: serde_json::Value = serde_json::from_str(&report).unwrap();
    let checks = report["checks"].as_object().unwrap();
    assert!(checks.len() >= at_least && checks.values().all(|ok| ok == true), "{report}");
}

/// Reads server-sent events from `url` until `done` says so (or 20 s pass): (event, data) pairs.
fn events_until(url: &str, mut done: impl FnMut(&str, &serde_json::Value) -> bool) -> Vec<(String, serde_json::Value)> {
    let response =
        reqwest::blocking::Client::builder().timeout(Duration::from_secs(20)).build().unwrap().get(url).send().unwrap();
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let started = Instant::now();
    let (mut seen, mut event) = (Vec::new(), String::new());
    for line in BufReader::new(response).lines() {
        let line = line.unwrap();
        if let Some(name) = line.strip_prefix("event: ") {
            event = name.to_string();
        } else if let Some(data) = line.strip_prefix("data: ") {
            let data: serde_json::Value = serde_json::from_str(data).unwrap();
            let stop = done(&event, &data);
            seen.push((event.clone(), data));
            if stop {
                return seen;
            }
        }
        assert!(started.elapsed() < Duration::from_secs(20), "events never satisfied the test: {seen:?}");
    }
    seen
}

/// Under `serve`, one page and one event stream cover every pipeline of the process; a record put
/// into one stream shows in that stream's frame only.
#[test]
fn under_serve_the_dashboard_shows_every_stream() {
    let dir = tempfile::tempdir().unwrap();
    let pipelines = dir.path().join("pipelines");
    std::fs::create_dir(&pipelines).unwrap();
    let (port, admin) = (free_port(), free_port());
    for name in ["orders", "audit"] {
        let config = firehose_to_files(
            name,
            port,
            &dir.path().join(format!("data-{name}")),
            &dir.path().join(format!("out-{name}")),
            "",
            "",
            "buffer = { size_mb = 1, interval_s = 1 }",
        );
        std::fs::write(pipelines.join(format!("{name}.toml")), config).unwrap();
    }
    let mut child = start_serve(&pipelines, port, admin);
    // The admin address opens after the API's (every pipeline is prepared first).
    wait_for_port(admin, "the admin address");
    let page = reqwest::blocking::get(format!("http://127.0.0.1:{admin}/")).unwrap();
    assert!(page.headers()["content-type"].to_str().unwrap().starts_with("text/html"));
    assert!(page.headers()["content-security-policy"].to_str().unwrap().starts_with("default-src 'none'"));
    assert!(page.text().unwrap().contains("new EventSource(\"events\")"));

    let answer = firehose_call(
        port,
        "PutRecordBatch",
        r#"{"DeliveryStreamName":"audit","Records":[{"Data":"eyJhIjoxfQo="},{"Data":"eyJhIjoyfQo="}]}"#.into(),
    );
    assert_eq!(answer["FailedPutCount"], 0, "{answer}");
    let streams = |data: &serde_json::Value| -> Vec<(String, u64, u64)> {
        data["frame"]["streams"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| {
                let delivered = s["sinks"][0]["delivered_records"].as_u64().unwrap();
                (s["stream"].as_str().unwrap().to_string(), s["records_in"].as_u64().unwrap(), delivered)
            })
            .collect()
    };
    let seen = events_until(&format!("http://127.0.0.1:{admin}/events"), |event, data| {
        event == "frame" && streams(data).iter().any(|(name, _, delivered)| name == "audit" && *delivered == 2)
    });
    assert_eq!(seen[0].0, "history", "the first event is the history");
    assert!(seen[0].1.is_array());
    let (_, last) = seen.last().unwrap();
    let mut shown = streams(last);
    shown.sort();
    assert_eq!(shown, [("audit".to_string(), 2, 2), ("orders".to_string(), 0, 0)]);
    assert!(last["errors"].as_array().unwrap().is_empty(), "{last}");
    // The folder's state comes with each live frame (every file served, no reload yet), and is
    // kept in no history frame.
    assert_eq!((last["folder"]["failed"].clone(), last["folder"]["reloads"].clone()), (json!([]), json!(0)), "{last}");
    assert!(seen[0].1.as_array().unwrap().iter().all(|f| f.get("folder").is_none()));
    super::support::terminate(&child);
    assert!(child.wait().unwrap().success());
}

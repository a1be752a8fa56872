//! The `sluice` binary as users run it: the quickstart, `gen`, exit codes and the run summary.

use sluice_connectors::synth::Profile;

use super::support::{all_lines, folder_objects, generated, repo_root, sluice, terminate};

fn run_in(dir: &std::path::Path, args: &[&str], pipeline: &std::path::Path) -> (Option<i32>, String) {
    let out = sluice().current_dir(dir).args(args).arg(pipeline).output().unwrap_or_else(|e| panic!("{e}"));
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.code(), text)
}

/// Writes the pipeline `toml` as `p.toml` in `dir`; its path.
fn pipeline_in(dir: &std::path::Path, toml: &str) -> std::path::PathBuf {
    let pipeline = dir.join("p.toml");
    std::fs::write(&pipeline, toml).unwrap_or_else(|e| panic!("{e}"));
    pipeline
}

#[test]
fn the_quickstart_writes_gzip_objects_holding_exactly_the_generated_records() {
    let work = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let (code, text) = run_in(work.path(), &["run", "--quiet"], &repo_root().join("pipelines/quickstart.toml"));
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("delivered 200000 records"), "{text}");
    let objects = folder_objects(&work.path().join("out/quickstart"));
    assert!(objects.keys().all(|k| k.starts_with("logs/") && k.ends_with(".gz")), "{:?}", objects.keys());
    let mut expected = generated(Profile::Cloudfront, 42, 200_000);
    expected.sort();
    assert_eq!(all_lines(&objects), expected);
    // The staging folder the objects were written in is gone once everything is stored: the run
    // leaves `out/` as it found it but for the objects.
    let left: Vec<_> = std::fs::read_dir(work.path().join("out")).unwrap().flatten().map(|e| e.file_name()).collect();
    assert_eq!(left, ["quickstart"], "{left:?}");
}

#[test]
fn gen_is_deterministic_and_matches_the_generator_source() {
    let a = sluice().args(["gen", "--profile", "vpcflow", "--records", "500", "--seed", "9"]).output();
    let a = a.unwrap_or_else(|e| panic!("{e}"));
    assert!(a.status.success());
    let lines: Vec<String> = String::from_utf8_lossy(&a.stdout).lines().map(str::to_string).collect();
    assert_eq!(lines, generated(Profile::Vpcflow, 9, 500));
}

#[test]
fn conversion_failures_exit_2_and_the_summary_says_how_many_why_and_where() {
    let work = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    std::fs::write(work.path().join("in.ndjson"), "{\"a\":1}\nbroken\n{\"a\":2}\n").unwrap_or_else(|e| panic!("{e}"));
    let pipeline = pipeline_in(
        work.path(),
        "[pipeline]\nname = \"csv\"\n[sources.in]\ntype = \"file\"\npaths = [\"in.ndjson\"]\n[sinks.out]\ntype = \"object_store\"\ninputs = [\"in\"]\nurl = \"file://./out\"\nformat = \"csv\"\ncolumns = [\"a\"]\n",
    );
    let (code, text) = run_in(work.path(), &["run", "--quiet", "--workers", "1"], &pipeline);
    assert_eq!(code, Some(2), "{text}");
    assert!(text.contains("1 records went to the error output in object_store file://"), "{text}");
    assert!(text.contains("format-conversion-failed"), "{text}");
    let objects = folder_objects(&work.path().join("out"));
    let errors: Vec<_> = objects.keys().filter(|k| k.starts_with("format-conversion-failed/")).collect();
    assert_eq!(errors.len(), 1, "{:?}", objects.keys());
    let data: Vec<_> = objects.iter().filter(|(k, _)| k.ends_with(".csv")).collect();
    assert_eq!(all_lines(data), ["1", "2", "a"]);
}

/// An HTTP endpoint that takes nothing: the summary says where its records went (its backup
/// store, given as its URL alone, not the endpoint) and gives no compression ratio for nothing
/// stored.
#[test]
fn records_an_endpoint_refused_are_said_to_be_in_its_backup_store() {
    let work = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    // A port nothing listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port());
    let port = port.unwrap_or_else(|e| panic!("{e}"));
    let pipeline = pipeline_in(
        work.path(),
        &format!(
            "[pipeline]\nname = \"hook\"\n[sources.in]\ntype = \"generator\"\nprofile = \"cloudtrail\"\nrecords = 50\n\
             [sinks.hook]\ntype = \"http_endpoint\"\ninputs = [\"in\"]\nurl = \"http://127.0.0.1:{port}/\"\n\
             retry = {{ duration_s = 1 }}\nbackup_store = \"file://./failed\"\n"
        ),
    );
    let (code, text) = run_in(work.path(), &["run", "--quiet", "--workers", "1"], &pipeline);
    assert_eq!(code, Some(2), "{text}");
    assert!(text.contains("0 B stored, "), "{text}");
    assert!(
        text.contains(
            "50 records went to the error output in object_store file://./failed (HttpEndpoint.ConnectionFailed: 50)"
        ),
        "{text}"
    );
    let objects = folder_objects(&work.path().join("failed"));
    assert!(objects.keys().all(|k| k.starts_with("http-endpoint-failed/")), "{:?}", objects.keys());
}

/// Issue 11, item 15: a file source whose globs match nothing stops the run at start, also when
/// another source (a generator streaming forever) would keep it running.
#[test]
fn a_glob_matching_nothing_stops_the_run_beside_a_stream_source() {
    let work = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let pipeline = pipeline_in(
        work.path(),
        "[pipeline]\nname = \"missing\"\n[sources.in]\ntype = \"file\"\npaths = [\"nothing-here/*.ndjson\"]\n\
         [sources.tick]\ntype = \"generator\"\nprofile = \"vpcflow\"\nrate = 10\n\
         [sinks.out]\ntype = \"object_store\"\ninputs = [\"in\", \"tick\"]\nurl = \"file://./out\"\n",
    );
    let mut child = sluice()
        .current_dir(work.path())
        .args(["run", "--quiet"])
        .arg(&pipeline)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let started = std::time::Instant::now();
    while child.try_wait().unwrap().is_none() {
        if started.elapsed() > std::time::Duration::from_secs(30) {
            let _ = child.kill();
            panic!("the run went on without its file source");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let out = child.wait_with_output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("no file matches nothing-here/*.ndjson"), "{text}");
}

#[test]
fn a_missing_input_file_exits_1_with_the_reason() {
    let work = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let pipeline = pipeline_in(
        work.path(),
        "[pipeline]\nname = \"missing\"\n[sources.in]\ntype = \"file\"\npaths = [\"nothing-here/*.ndjson\"]\n[sinks.out]\ntype = \"object_store\"\ninputs = [\"in\"]\nurl = \"file://./out\"\n",
    );
    let (code, text) = run_in(work.path(), &["run", "--quiet"], &pipeline);
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("no file matches nothing-here/*.ndjson"), "{text}");
}

/// One corrupt file among several, met by the only worker before the others: given up, named in
/// the summary and the exit code, and every other file read (it stopped the worker's share, so
/// which files were read depended on the number of workers). A truncated file delivers what it
/// held before the cut. The checkpoint is kept: the next run reads only the file given up (now
/// repaired), not the others again.
#[test]
fn a_corrupt_file_is_given_up_and_the_other_files_are_read() {
    use std::io::Write as _;
    let work = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let input = work.path().join("in");
    std::fs::create_dir(&input).unwrap_or_else(|e| panic!("{e}"));
    let gzip = |lines: &[String]| {
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        encoder.write_all((lines.join("\n") + "\n").as_bytes()).unwrap_or_else(|e| panic!("{e}"));
        encoder.finish().unwrap_or_else(|e| panic!("{e}"))
    };
    let mut expected = Vec::new();
    for file in 0..6 {
        let lines: Vec<String> = (0..500).map(|i| format!("{{\"file\":{file},\"i\":{i}}}")).collect();
        std::fs::write(input.join(format!("{file}.ndjson.gz")), gzip(&lines)).unwrap_or_else(|e| panic!("{e}"));
        expected.extend(lines);
    }
    std::fs::write(input.join("2a-not-gzip.ndjson.gz"), b"not gzip at all").unwrap_or_else(|e| panic!("{e}"));
    let cut: Vec<String> = (0..20_000).map(|i| format!("{{\"cut\":{i},\"pad\":\"{i:0>40}\"}}")).collect();
    let whole = gzip(&cut);
    std::fs::write(input.join("3a-cut.ndjson.gz"), &whole[..whole.len() / 2]).unwrap_or_else(|e| panic!("{e}"));
    let pipeline = pipeline_in(
        work.path(),
        "[pipeline]\nname = \"corrupt\"\n[sources.in]\ntype = \"file\"\npaths = [\"in/*.gz\"]\n[sinks.out]\ntype = \"object_store\"\ninputs = [\"in\"]\nurl = \"file://./out\"\nformat = \"ndjson\"\n",
    );
    let (code, text) = run_in(work.path(), &["run", "--quiet", "--workers", "1"], &pipeline);
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("2a-not-gzip.ndjson.gz: invalid gzip header"), "{text}");
    assert!(text.contains("3a-cut.ndjson.gz"), "{text}");
    let delivered = all_lines(&folder_objects(&work.path().join("out")));
    let (from_cut, mut others): (Vec<String>, Vec<String>) = delivered.into_iter().partition(|l| l.contains("cut"));
    others.sort();
    expected.sort();
    assert_eq!(others, expected, "every record of every readable file");
    assert!(!from_cut.is_empty() && from_cut.len() < cut.len(), "{}", from_cut.len());
    assert!(from_cut.iter().all(|l| cut.contains(l)), "whole records only");
    let repaired: Vec<String> = (0..10).map(|i| format!("{{\"repaired\":{i}}}")).collect();
    std::fs::write(input.join("2a-not-gzip.ndjson.gz"), gzip(&repaired)).unwrap_or_else(|e| panic!("{e}"));
    std::fs::remove_file(input.join("3a-cut.ndjson.gz")).unwrap_or_else(|e| panic!("{e}"));
    let (code, text) = run_in(work.path(), &["run", "--quiet", "--workers", "1"], &pipeline);
    assert_eq!(code, Some(0), "{text}");
    let mut delivered = all_lines(&folder_objects(&work.path().join("out")));
    delivered.retain(|l| !l.contains("cut"));
    delivered.sort();
    expected.extend(repaired);
    expected.sort();
    assert_eq!(delivered, expected, "the readable files once, the repaired one once");
}

/// A run that gave a file up keeps its checkpoint, the files it read marked done. A file replaced
/// by another of the same size before the next run is read again, its new lines delivered (the
/// checkpoint names a file by its path, range, size and modification time; by size alone the new
/// file was skipped as done). A checkpoint saved before the time was part of its keys still
/// counts: nothing it marks done is read again.
#[test]
fn a_file_replaced_by_one_of_the_same_size_is_read_again() {
    let work = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let input = work.path().join("in");
    std::fs::create_dir(&input).unwrap_or_else(|e| panic!("{e}"));
    let lines = |name: &str| (0..50).map(|i| format!("{{\"{name}\":\"{i:03}\"}}")).collect::<Vec<String>>();
    std::fs::write(input.join("a.ndjson"), lines("a").join("\n") + "\n").unwrap_or_else(|e| panic!("{e}"));
    std::fs::write(input.join("b.ndjson.gz"), b"not gzip").unwrap_or_else(|e| panic!("{e}"));
    let pipeline = pipeline_in(
        work.path(),
        "[pipeline]\nname = \"replaced\"\n[sources.in]\ntype = \"file\"\npaths = [\"in/*\"]\n[sinks.out]\ntype = \"object_store\"\ninputs = [\"in\"]\nurl = \"file://./out\"\nformat = \"ndjson\"\n",
    );
    let delivered = || {
        let mut lines = all_lines(&folder_objects(&work.path().join("out")));
        lines.sort();
        lines
    };
    let (code, text) = run_in(work.path(), &["run", "--quiet"], &pipeline);
    assert_eq!(code, Some(1), "{text}");
    assert_eq!(delivered(), lines("a"));
    std::thread::sleep(std::time::Duration::from_millis(20));
    std::fs::write(input.join("a.ndjson"), lines("A").join("\n") + "\n").unwrap_or_else(|e| panic!("{e}"));
    let (code, text) = run_in(work.path(), &["run", "--quiet"], &pipeline);
    assert_eq!(code, Some(1), "{text}");
    let mut expected = [lines("A"), lines("a")].concat();
    expected.sort();
    assert_eq!(delivered(), expected, "the new file's lines delivered once: {text}");
    let checkpoint = work.path().join("data/replaced/in/offsets.json");
    let saved: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&checkpoint).unwrap_or_else(|e| panic!("{e}"))).unwrap_or_default();
    let legacy: serde_json::Map<String, serde_json::Value> = saved
        .as_object()
        .into_iter()
        .flatten()
        .map(|(key, state)| (key.rsplit_once('~').map_or(key.as_str(), |(k, _)| k).to_string(), state.clone()))
        .collect();
    assert!(legacy.keys().any(|k| k.contains("a.ndjson@0-end#")), "{saved}");
    std::fs::write(&checkpoint, serde_json::Value::Object(legacy).to_string()).unwrap_or_else(|e| panic!("{e}"));
    let (code, text) = run_in(work.path(), &["run", "--quiet"], &pipeline);
    assert_eq!(code, Some(1), "{text}");
    assert_eq!(delivered(), expected, "nothing read again: {text}");
}

#[test]
fn the_ci_script_calls_the_readme_test_command() {
    let readme = std::fs::read_to_string(repo_root().join("README.md")).unwrap_or_default();
    let ci = std::fs::read_to_string(repo_root().join(".ci/run")).unwrap_or_default();
    let command = "scripts/test.sh";
    assert!(readme.contains(command) && ci.contains(command), "README and .ci/run must share the test command");
}

/// Issue 11, item 8: secrets written in a pipeline file (a URL's password and token, inline keys)
/// appear nowhere sluice prints the config: `validate`'s graph, config errors with their quoted
/// lines, DescribeDeliveryStream.
#[test]
fn secrets_in_a_pipeline_are_never_printed() {
    let work = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let pipeline = |extra: &str| {
        format!(
            "[pipeline]\nname = \"secrets\"\ndata_dir = \"data\"\n\
             [sources.api]\ntype = \"firehose\"\nlisten = \"127.0.0.1:{port}\"\n\
             auth = {{ access_keys = [{{ id = \"AKIDSECRETS\", secret = \"sekr1t-inline\" }}] }}\n\
             [sinks.siem]\ntype = \"http_endpoint\"\ninputs = [\"api\"]\n\
             url = \"https://user:hunter2-pass@127.0.0.1:9/in?token=t0ken-value&env=prod\"\n\
             access_key = \"access-inline\"\n{extra}\
             backup_store = {{ url = \"file://./failed\" }}\n"
        )
    };
    let good = work.path().join("good.toml");
    std::fs::write(&good, pipeline("")).unwrap();
    // Errors on the lines of the secrets, and messages that echo the URL.
    let bad = work.path().join("bad.toml");
    let text = pipeline("")
        .replace("secret = \"sekr1t-inline\"", "secret = \"sekr1t-inline\", bogus = 1")
        .replace("https://", "ftp://");
    std::fs::write(&bad, text).unwrap();
    let bad_backup = work.path().join("bad-backup.toml");
    let text = pipeline("").replace("url = \"file://./failed\"", "url = \"file://./failed\", password = \"pw-inline\"");
    std::fs::write(&bad_backup, text).unwrap();
    let secrets = ["sekr1t-inline", "hunter2-pass", "t0ken-value", "access-inline", "pw-inline"];
    let (code, text) = run_in(work.path(), &["validate"], &good);
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("https://user:***@127.0.0.1:9/in?token=***&env=prod"), "{text}");
    let (code, errors) = run_in(work.path(), &["validate"], &bad);
    assert_eq!(code, Some(1), "{errors}");
    assert!(errors.contains("bogus") && errors.contains("ftp://user:***@"), "{errors}");
    let (code, backup_errors) = run_in(work.path(), &["validate"], &bad_backup);
    assert_eq!(code, Some(1), "{backup_errors}");
    assert!(backup_errors.contains("password = \"***\""), "{backup_errors}");
    for printed in [&text, &errors, &backup_errors] {
        for secret in secrets {
            assert!(!printed.contains(secret), "`{secret}` printed:\n{printed}");
        }
    }
    // DescribeDeliveryStream, answered by a running stream.
    let child = sluice()
        .current_dir(work.path())
        .args(["run", "--quiet"])
        .arg(&good)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let started = std::time::Instant::now();
    let describe = loop {
        let body = "{\"DeliveryStreamName\":\"secrets\"}";
        let mut headers = http::HeaderMap::new();
        headers.insert("host", format!("127.0.0.1:{port}").parse().unwrap());
        headers.insert("x-amz-target", "Firehose_20150804.DescribeDeliveryStream".parse().unwrap());
        headers.insert("content-type", "application/x-amz-json-1.1".parse().unwrap());
        let signer = sluice_connectors::api::sigv4::Signer {
            key_id: "AKIDSECRETS",
            secret: "sekr1t-inline",
            region: "us-east-1",
            service: "firehose",
        };
        let now = chrono::Utc::now().format("%Y%m%dT%H%M%SZ").to_string();
        signer.sign(&now, "POST", "/", &mut headers, body.as_bytes()).unwrap();
        let sent = reqwest::blocking::Client::new()
            .post(format!("http://127.0.0.1:{port}/"))
            .headers(headers)
            .body(body)
            .send();
        if let Ok(response) = sent {
            break response.text().unwrap();
        }
        assert!(started.elapsed() < std::time::Duration::from_secs(20), "no API");
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    assert!(std::process::Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap().success());
    let _ = child.wait_with_output();
    assert!(describe.contains("https://user:***@127.0.0.1:9/in?token=***&env=prod"), "{describe}");
    for secret in secrets {
        assert!(!describe.contains(secret), "`{secret}` in DescribeDeliveryStream: {describe}");
    }
}

/// Issue 11, item 15: an s3:// destination with no credentials anywhere (options, environment,
/// instance role) stops the run at start with what to do, instead of retrying for minutes.
#[test]
fn a_remote_store_without_any_credentials_stops_the_run_at_start() {
    let work = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let pipeline = pipeline_in(
        work.path(),
        "[pipeline]\nname = \"nocreds\"\n[sources.demo]\ntype = \"generator\"\nprofile = \"vpcflow\"\nrecords = 10\n\
         [sinks.archive]\ntype = \"object_store\"\ninputs = [\"demo\"]\nurl = \"s3://amzn-s3-demo-bucket/logs\"\n\
         options = { region = \"us-east-1\" }\n",
    );
    let mut command = sluice();
    for (name, _) in std::env::vars().filter(|(n, _)| n.starts_with("AWS_")) {
        command.env_remove(name);
    }
    let started = std::time::Instant::now();
    let out = command.current_dir(work.path()).args(["run", "--quiet"]).arg(&pipeline).output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("no credentials were found for s3://amzn-s3-demo-bucket/logs"), "{text}");
    assert!(started.elapsed() < std::time::Duration::from_secs(90), "it took {:?}", started.elapsed());
}

/// `sluice validate … | head`: a reader that stops early closes the pipe; the command's output
/// ends there, with its exit code (0: valid, 1: invalid) and no panic. The pipe's read end is closed
/// before the command starts, so every write fails with `EPIPE`.
#[test]
fn validate_into_a_closed_pipe_keeps_its_exit_code_and_does_not_panic() {
    let closed_pipe = || {
        let (reader, writer) = std::io::pipe().unwrap_or_else(|e| panic!("{e}"));
        drop(reader);
        writer
    };
    let valid = repo_root().join("pipelines/quickstart.toml");
    let out = sluice().arg("validate").arg(&valid).stdout(closed_pipe()).output().unwrap_or_else(|e| panic!("{e}"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    let invalid = repo_root().join("tests/fixtures/config/unknown_keys.toml");
    let out = sluice().arg("validate").arg(&invalid).stderr(closed_pipe()).output().unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty());
}

/// The README's CLI summary names every `sluice bench` scenario the binary takes (its `--help` lists
/// them from the one list the bench runs).
#[test]
fn the_readme_names_every_bench_scenario() {
    let help = sluice().args(["bench", "--help"]).output().unwrap_or_else(|e| panic!("{e}"));
    let help = String::from_utf8_lossy(&help.stdout);
    let scenarios: Vec<&str> = help
        .split("[possible values: ")
        .nth(1)
        .and_then(|rest| rest.split(']').next())
        .unwrap_or_else(|| panic!("no possible values in {help}"))
        .split(", ")
        .collect();
    assert!(scenarios.len() >= 10, "{scenarios:?}");
    let readme = std::fs::read_to_string(repo_root().join("README.md")).unwrap_or_else(|e| panic!("{e}"));
    let line =
        readme.lines().find(|l| l.starts_with("sluice bench [--scenario ")).unwrap_or_else(|| panic!("no bench line"));
    let listed: Vec<&str> =
        line.trim_start_matches("sluice bench [--scenario ").split(' ').next().unwrap_or_default().split('|').collect();
    assert_eq!(listed, scenarios, "README: {line}");
}

/// `--workers 0` is refused as `[pipeline] workers = 0` is (it ran with one worker, silently).
#[test]
fn a_count_of_zero_on_the_command_line_is_refused_with_the_range() {
    let quickstart = repo_root().join("pipelines/quickstart.toml");
    let out = sluice().args(["run", "--workers", "0"]).arg(&quickstart).output().unwrap_or_else(|e| panic!("{e}"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("0 is out of range: expected 1..=1024"), "{stderr}");
    let out = sluice().args(["bench", "--runs", "0"]).output().unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(out.status.code(), Some(2));
}

/// An object store that cannot be reached is said with the cause (object_store's own message
/// stops at "error sending request"): a source that cannot list it, and a sink whose objects and
/// error output cannot be stored (its error lines, until the stop's grace period ends). The sink's
/// failed attempts show on stderr at once, without `--log-format json` (they were only in the
/// JSON error log, so a terminal showed nothing for the whole retry duration).
#[test]
fn an_unreachable_object_store_is_reported_with_the_cause() {
    let work = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    // Port 1 on the loopback: nothing listens there.
    let store = "url = \"s3://bucket/p\"\noptions = { endpoint = \"http://127.0.0.1:1\", access_key_id = \"a\", \
                 secret_access_key = \"b\", region = \"us-east-1\", allow_http = \"true\" }\n";
    let source = work.path().join("source.toml");
    std::fs::write(
        &source,
        format!(
            "[pipeline]\nname = \"unreachable-source\"\n[sources.in]\ntype = \"object_store\"\n{store}\
             [sinks.out]\ntype = \"object_store\"\ninputs = [\"in\"]\nurl = \"memory://out\"\n"
        ),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let (code, text) = run_in(work.path(), &["run", "--quiet"], &source);
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("cannot list s3://bucket/p") && text.contains("Connection refused"), "{text}");

    let sink = work.path().join("sink.toml");
    std::fs::write(
        &sink,
        format!(
            "[pipeline]\nname = \"unreachable-sink\"\nstop_timeout_s = 1\n[sources.in]\ntype = \"generator\"\n\
             profile = \"cloudtrail\"\nrecords = 10\n[sinks.out]\ntype = \"object_store\"\ninputs = [\"in\"]\n{store}\
             retry = {{ duration_s = 2 }}\n"
        ),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let (piped, also_piped) = (std::process::Stdio::piped(), std::process::Stdio::piped());
    let run = sluice()
        .env("SLUICE_LOG", "warn")
        .current_dir(work.path())
        .args(["run", "--quiet"])
        .arg(&sink)
        .stdout(piped)
        .stderr(also_piped)
        .spawn();
    let child = run.unwrap_or_else(|e| panic!("{e}"));
    std::thread::sleep(std::time::Duration::from_secs(3));
    terminate(&child);
    let out = child.wait_with_output().unwrap_or_else(|e| panic!("{e}"));
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("cannot store the error output") && text.contains("Connection refused"), "{text}");
    assert!(text.contains("delivery failed; retrying in"), "{text}");
    assert!(text.contains("(out, S3.InternalError, 1 attempt, key "), "{text}");
}

/// A stream pipeline's sources are announced once they listen: with its address taken, the run
/// stops with the error alone (the banner had come first, saying it listened there); with the
/// address free, the banner comes and the address takes connections. Then its stderr is closed (as
/// `2>&1 | head` does) and one SIGTERM still stops it: the signal thread had panicked printing
/// "stopping" to the closed stderr before it set the stop, and the run went on for ever.
#[test]
fn a_listening_source_is_announced_only_once_it_listens() {
    use std::io::BufRead as _;
    let work = tempfile::tempdir().unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let pipeline = |port: u16| {
        format!(
            "[pipeline]\nname = \"announced\"\ndata_dir = \"{}\"\n[sources.web]\ntype = \"http\"\nlisten = \"127.0.0.1:{port}\"\n\
             [sinks.out]\ntype = \"object_store\"\ninputs = [\"web\"]\nurl = \"memory://announced\"\n",
            work.path().join("data").display()
        )
    };
    let config = pipeline_in(work.path(), &pipeline(taken.local_addr().unwrap().port()));
    let (code, text) = run_in(work.path(), &["run"], &config);
    assert_ne!(code, Some(0), "{text}");
    assert!(text.contains(&taken.local_addr().unwrap().to_string()), "the address is named: {text}");
    assert!(!text.contains("source web:"), "no banner before the error: {text}");

    let port = super::support::free_port();
    let config = pipeline_in(work.path(), &pipeline(port));
    let mut child = sluice()
        .current_dir(work.path())
        .args(["run"])
        .arg(&config)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = std::io::BufReader::new(child.stderr.take().unwrap());
    let banner = stderr.lines().map_while(Result::ok).find(|l| l.contains("source web:")).unwrap_or_default();
    assert!(banner.contains(&format!("http://127.0.0.1:{port}")), "{banner}");
    // Once announced, it listens.
    std::net::TcpStream::connect(("127.0.0.1", port)).expect("the announced address takes connections");
    terminate(&child);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    assert!(status.is_some_and(|s| s.success()), "SIGTERM stops a run whose stderr was closed: {status:?}");
}

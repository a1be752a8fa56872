//! Cluster mode (issue 20): several `sluice` processes on 127.0.0.1 running one pipeline as one
//! timely dataflow. The worker oracle across processes (a file source, an object-store source read
//! from the in-process S3 server, a partitioned sink with one object per partition); a SIGTERM to
//! one process stopping all of them with everything acknowledged delivered; a kill -9 stopping the
//! others with an error naming it, and a restart of all replaying what was acknowledged; processes
//! given different pipelines refusing to start; a `dedup` transform exchanging records between
//! processes.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use sluice_connectors::synth::Profile;

use super::s3::{S3Server, SECRET_KEY};
use super::support::{firehose_call, folder_objects, free_port, generated, sluice, terminate, wait_for_port};

/// A hosts file for `n` processes on free ports of 127.0.0.1.
pub fn hosts_file(dir: &Path, n: usize) -> PathBuf {
    let path = dir.join(format!("hosts-{n}-{}.txt", free_port()));
    let lines: Vec<String> = (0..n).map(|_| format!("127.0.0.1:{}", free_port())).collect();
    std::fs::write(&path, lines.join("\n") + "\n").unwrap();
    path
}

/// What one process of a test cluster gets besides the common arguments.
#[derive(Default)]
pub struct ProcessSettings {
    pub env: Vec<(String, String)>,
    pub args: Vec<String>,
}

/// The environment variable `API_PORT` set to `port`.
fn api_port(port: u16) -> ProcessSettings {
    ProcessSettings { env: vec![("API_PORT".into(), port.to_string())], args: Vec::new() }
}

/// `sluice run config --cluster hosts --process i --workers w` for every process, each with its
/// own settings from `settings(i)`, output to `<dir>/process-<i>.log`.
pub fn start_cluster(
    config: &Path,
    hosts: &Path,
    processes: usize,
    workers: usize,
    settings: impl Fn(usize) -> ProcessSettings,
) -> Vec<Child> {
    (0..processes)
        .map(|i| {
            let log = std::fs::File::create(config.with_extension(format!("process-{i}.log"))).unwrap();
            let ProcessSettings { env, args } = settings(i);
            sluice()
                .args(["run", "--quiet", config.to_str().unwrap(), "--cluster", hosts.to_str().unwrap()])
                .args(["--process", &i.to_string(), "--workers", &workers.to_string()])
                .args(args)
                .envs(env)
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .spawn()
                .unwrap()
        })
        .collect()
}

/// Waits for every child, at most `limit`; their exit codes (killing what is left).
pub fn wait_all(children: &mut [Child], limit: Duration) -> Vec<Option<i32>> {
    let started = Instant::now();
    let mut codes = vec![None; children.len()];
    let mut done = vec![false; children.len()];
    while done.iter().any(|d| !d) && started.elapsed() < limit {
        for (i, child) in children.iter_mut().enumerate() {
            if !done[i]
                && let Some(status) = child.try_wait().unwrap()
            {
                codes[i] = status.code();
                done[i] = true;
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    for (i, child) in children.iter_mut().enumerate() {
        if !done[i] {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
    codes
}

pub fn log_of(config: &Path, process: usize) -> String {
    std::fs::read_to_string(config.with_extension(format!("process-{process}.log"))).unwrap_or_default()
}

/// Every line under `dir`, sorted (a multiset).
fn lines_under(dir: &Path) -> Vec<String> {
    let mut lines: Vec<String> = folder_objects(dir).into_values().flatten().collect();
    lines.sort();
    lines
}

/// Objects per partition folder (`event=<name>`) under `dir`.
fn objects_per_partition(dir: &Path) -> BTreeMap<String, usize> {
    let mut per = BTreeMap::new();
    for key in folder_objects(dir).keys() {
        let partition = key.split('/').find(|p| p.starts_with("event=")).unwrap_or("?").to_string();
        *per.entry(partition).or_default() += 1;
    }
    per
}

/// Writes `lines` to `path`, compressed by its extension (.gz, .zst), else plain.
fn write_lines(path: &Path, lines: &[String]) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let text = lines.join("\n") + "\n";
    let bytes = match path.extension().and_then(|e| e.to_str()) {
        Some("gz") => {
            let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            gz.write_all(text.as_bytes()).unwrap();
            gz.finish().unwrap()
        }
        Some("zst") => zstd::encode_all(text.as_bytes(), 1).unwrap(),
        _ => text.into_bytes(),
    };
    std::fs::write(path, bytes).unwrap();
}

/// The same multiset of records, per sink, from 1 process × 2 workers, 2 processes × 2 workers and
/// 3 processes × 1 worker; the partitioned sink writes each partition as one object however the
/// records were spread.
#[test]
fn a_cluster_delivers_what_one_process_does_from_files_and_objects_with_partitions() {
    let dir = tempfile::tempdir().unwrap();
    let records = generated(Profile::Cloudtrail, 20, 24_000);
    // Files: one large plain file split into ranges across workers, and a gzip file read whole.
    let (plain, rest) = records.split_at(12_000);
    let (gzipped, objects) = rest.split_at(4_000);
    write_lines(&dir.path().join("logs/big.ndjson"), plain);
    write_lines(&dir.path().join("logs/small.ndjson.gz"), gzipped);
    // Objects in an S3 bucket: plain, gzip and zstd, and one the pattern leaves out.
    let archive = dir.path().join("s3/lake/archive/2026/11");
    std::fs::create_dir_all(&archive).unwrap();
    let server = S3Server::start(&dir.path().join("s3"));
    for (i, chunk) in objects.chunks(1_000).enumerate() {
        let ext = ["ndjson", "ndjson.gz", "ndjson.zst"][i % 3];
        write_lines(&archive.join(format!("part-{i:02}.{ext}")), chunk);
    }
    write_lines(&archive.join("notes.txt"), &["not a record".to_string()]);
    let store = server.sink_toml("lake", SECRET_KEY);
    let config = |out: &Path| {
        format!(
            r#"[pipeline]
name = "oracle"
data_dir = "{data}"

[sources.logs]
type = "file"
paths = ["{logs}/*"]
split_mb = 1

[sources.archive]
type = "object_store"
{store}
pattern = "*.ndjson*"

[sinks.from_files]
type = "object_store"
inputs = ["logs"]
url = "file://{out}/files"
format = "ndjson"

[sinks.from_objects]
type = "object_store"
inputs = ["archive"]
url = "file://{out}/objects"
format = "ndjson"
compression = "gzip"

[sinks.lake]
type = "object_store"
inputs = ["logs", "archive"]
url = "file://{out}/lake"
format = "ndjson"
buffer = {{ size_mb = 128, interval_s = 900 }}
partitioning = {{ query = '{{event: .eventName}}' }}
prefix = "event=!{{partitionKeyFromQuery:event}}/"
error_prefix = "errors/!{{firehose:error-output-type}}/"
"#,
            data = out.join("data").display(),
            logs = dir.path().join("logs").display(),
            out = out.display(),
        )
    };
    let run = |name: &str, processes: usize, workers: usize| -> PathBuf {
        let out = dir.path().join(name);
        std::fs::create_dir_all(&out).unwrap();
        let file = out.join("pipeline.toml");
        std::fs::write(&file, config(&out)).unwrap();
        if processes == 1 {
            let output = sluice().args(["run", "--quiet", file.to_str().unwrap(), "--workers", "2"]).output().unwrap();
            assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        } else {
            let hosts = hosts_file(dir.path(), processes);
            let mut children = start_cluster(&file, &hosts, processes, workers, |_| ProcessSettings::default());
            let codes = wait_all(&mut children, Duration::from_secs(120));
            for (i, code) in codes.iter().enumerate() {
                assert_eq!(*code, Some(0), "process {i}: {}", log_of(&file, i));
            }
        }
        out
    };
    let alone = run("alone", 1, 2);
    let expected_files = lines_under(&alone.join("files"));
    let expected_objects = lines_under(&alone.join("objects"));
    assert_eq!(expected_files.len(), 16_000);
    assert_eq!(expected_objects.len(), 8_000, "every object the pattern matches, and nothing else");
    let partitions = objects_per_partition(&alone.join("lake"));
    assert!(partitions.len() > 3 && partitions.values().all(|&n| n == 1), "{partitions:?}");
    let mut expected_lake = expected_files.clone();
    expected_lake.extend(expected_objects.iter().cloned());
    expected_lake.sort();
    assert_eq!(lines_under(&alone.join("lake")), expected_lake);

    for (name, processes, workers) in [("two-by-two", 2, 2), ("three-by-one", 3, 1)] {
        let out = run(name, processes, workers);
        assert_eq!(lines_under(&out.join("files")), expected_files, "{name}: the file source");
        assert_eq!(lines_under(&out.join("objects")), expected_objects, "{name}: the object-store source");
        assert_eq!(lines_under(&out.join("lake")), expected_lake, "{name}: the partitioned sink");
        assert_eq!(objects_per_partition(&out.join("lake")), partitions, "{name}: one object per partition");
    }
}

/// A stream pipeline whose Firehose API listens on `${API_PORT}` (each process its own) and
/// delivers to `<out>` with a long interval (so nothing is delivered before a stop).
fn stream_config(dir: &Path, name: &str) -> PathBuf {
    let file = dir.join(format!("{name}.toml"));
    std::fs::write(
        &file,
        format!(
            r#"[pipeline]
name = "{name}"
data_dir = "{data}"
stop_timeout_s = 20

[sources.api]
type = "firehose"
listen = "127.0.0.1:${{API_PORT}}"

[sinks.out]
type = "object_store"
inputs = ["api"]
url = "file://{out}"
format = "ndjson"
buffer = {{ size_mb = 64, interval_s = 600 }}
"#,
            data = dir.join(format!("{name}-data")).display(),
            out = dir.join(format!("{name}-out")).display(),
        ),
    )
    .unwrap();
    file
}

/// Puts `n` records, tagged with `tag`, to the Firehose API on `port`; the records acknowledged.
fn put(port: u16, stream: &str, tag: &str, n: usize) -> Vec<String> {
    use base64::Engine as _;
    let lines: Vec<String> = (0..n).map(|i| format!("{{\"tag\":\"{tag}\",\"n\":{i}}}")).collect();
    let records: Vec<serde_json::Value> = lines
        .iter()
        .map(|l| serde_json::json!({"Data": base64::engine::general_purpose::STANDARD.encode(l)}))
        .collect();
    let body = serde_json::json!({"DeliveryStreamName": stream, "Records": records}).to_string();
    let answer = firehose_call(port, "PutRecordBatch", body);
    assert_eq!(answer["FailedPutCount"], 0, "{answer}");
    lines
}

/// SIGTERM to one process during a stream run with producers on both processes' API ports: the
/// stop travels to the other, both drain and deliver, both exit 0, nothing acknowledged is lost.
#[test]
fn sigterm_to_one_process_stops_the_whole_cluster_with_everything_delivered() {
    let dir = tempfile::tempdir().unwrap();
    let config = stream_config(dir.path(), "stopping");
    let hosts = hosts_file(dir.path(), 2);
    let ports = [free_port(), free_port()];
    // Process 0 also serves its own figures, labelled with its index.
    let admin = free_port();
    let mut children = start_cluster(&config, &hosts, 2, 1, |i| {
        let mut settings = api_port(ports[i]);
        if i == 0 {
            settings.args = vec!["--admin".into(), format!("127.0.0.1:{admin}")];
        }
        settings
    });
    let mut acknowledged = Vec::new();
    for round in 0..3 {
        for (i, &port) in ports.iter().enumerate() {
            wait_for_port(port, "the API");
            acknowledged.extend(put(port, "stopping", &format!("p{i}-r{round}"), 200));
        }
    }
    let metrics = reqwest::blocking::get(format!("http://127.0.0.1:{admin}/metrics")).unwrap().text().unwrap();
    assert!(metrics.contains("sluice_IncomingRecords{stream=\"stopping\",process=\"0\"} 600"), "{metrics}");
    let page = reqwest::blocking::get(format!("http://127.0.0.1:{admin}/events")).unwrap();
    let mut first = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(page), &mut first).unwrap();
    assert_eq!(first.trim(), "event: history");
    terminate(&children[1]);
    let codes = wait_all(&mut children, Duration::from_secs(60));
    assert_eq!(codes, [Some(0), Some(0)], "{}\n{}", log_of(&config, 0), log_of(&config, 1));
    acknowledged.sort();
    assert_eq!(lines_under(&dir.path().join("stopping-out")), acknowledged);
}

/// kill -9 of one process of three: the others stop with an error naming it; a restart of all
/// three replays their logs and delivers every record acknowledged before the kill.
#[test]
fn a_killed_process_stops_the_others_and_a_restart_of_all_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let config = stream_config(dir.path(), "killed");
    let hosts = hosts_file(dir.path(), 3);
    let ports = [free_port(), free_port(), free_port()];
    let mut children = start_cluster(&config, &hosts, 3, 1, |i| api_port(ports[i]));
    let mut acknowledged = Vec::new();
    for (i, &port) in ports.iter().enumerate() {
        wait_for_port(port, "the API");
        acknowledged.extend(put(port, "killed", &format!("p{i}"), 300));
    }
    // Let the cluster form and take the records in before the kill.
    std::thread::sleep(Duration::from_secs(2));
    let status = Command::new("kill").args(["-KILL", &children[2].id().to_string()]).status().unwrap();
    assert!(status.success());
    let codes = wait_all(&mut children[..2], Duration::from_secs(30));
    let _ = children[2].wait();
    // Each survivor names the killed process; it may name the other survivor too when that one
    // stopped first (its connection closes uncleanly as well).
    let killed = std::fs::read_to_string(&hosts).unwrap().lines().nth(2).unwrap().to_string();
    for (i, code) in codes.iter().enumerate() {
        let log = log_of(&config, i);
        assert!(code.is_some_and(|c| c != 0), "process {i} must fail: {log}");
        let named = log.contains(&format!("2 ({killed})"))
            && (log.contains(") of the cluster is gone") || log.contains(") of the cluster are gone"));
        assert!(named, "process {i}: {log}");
    }
    assert!(lines_under(&dir.path().join("killed-out")).is_empty(), "nothing was due before the kill");

    // A restart of all three: each replays its own log.
    let mut children = start_cluster(&config, &hosts, 3, 1, |i| api_port(ports[i]));
    for &port in &ports {
        wait_for_port(port, "the API");
    }
    std::thread::sleep(Duration::from_secs(2));
    terminate(&children[0]);
    let codes = wait_all(&mut children, Duration::from_secs(60));
    assert_eq!(codes, [Some(0), Some(0), Some(0)], "{}", log_of(&config, 0));
    acknowledged.sort();
    let mut delivered = lines_under(&dir.path().join("killed-out"));
    delivered.dedup();
    assert_eq!(delivered, acknowledged, "every acknowledged record, after the restart");
}

/// Processes loaded with different pipelines all stop at start with the same clear error.
#[test]
fn processes_with_different_pipelines_refuse_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let config = |interval: u32| {
        let file = dir.path().join(format!("mismatch-{interval}.toml"));
        std::fs::write(
            &file,
            format!(
                "[pipeline]\nname = \"mismatch\"\ndata_dir = \"{data}\"\n\n[sources.gen]\ntype = \"generator\"\nprofile = \"vpcflow\"\nrecords = 100\n\n\
                 [sinks.out]\ntype = \"object_store\"\ninputs = [\"gen\"]\nurl = \"file://{out}\"\nbuffer = {{ size_mb = 1, interval_s = {interval} }}\n",
                data = dir.path().join("data").display(),
                out = dir.path().join("out").display(),
            ),
        )
        .unwrap();
        file
    };
    let (first, second) = (config(1), config(2));
    let hosts = hosts_file(dir.path(), 2);
    let mut children: Vec<Child> = [&first, &second]
        .iter()
        .enumerate()
        .map(|(i, file)| {
            sluice()
                .args(["run", "--quiet", file.to_str().unwrap(), "--cluster", hosts.to_str().unwrap()])
                .args(["--process", &i.to_string(), "--workers", "1"])
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(dir.path().join(format!("mismatch-{i}.err"))).unwrap())
                .spawn()
                .unwrap()
        })
        .collect();
    let codes = wait_all(&mut children, Duration::from_secs(60));
    for (i, code) in codes.iter().enumerate() {
        let said = std::fs::read_to_string(dir.path().join(format!("mismatch-{i}.err"))).unwrap();
        assert_eq!(*code, Some(1), "process {i}: {said}");
        assert!(said.contains("the cluster's processes disagree") && said.contains("process 1: pipeline"), "{said}");
    }
    assert!(folder_objects(&dir.path().join("out")).is_empty(), "nothing ran");
}

/// The object-store source checkpoints at the delivered frontier: a batch run stopped part-way and
/// run again delivers every record, and does not read again what the first run delivered.
#[test]
fn a_stopped_object_store_run_resumes_after_what_it_delivered() {
    let dir = tempfile::tempdir().unwrap();
    let records = generated(Profile::Vpcflow, 21, 120_000);
    let archive = dir.path().join("s3/flows/raw");
    std::fs::create_dir_all(&archive).unwrap();
    for (i, chunk) in records.chunks(2_000).enumerate() {
        let ext = if i % 2 == 0 { "log" } else { "log.gz" };
        write_lines(&archive.join(format!("{i:03}.{ext}")), chunk);
    }
    let server = S3Server::start(&dir.path().join("s3"));
    let out = dir.path().join("out");
    let config = dir.path().join("resume.toml");
    std::fs::write(
        &config,
        format!(
            "[pipeline]\nname = \"resume\"\ndata_dir = \"{data}\"\n\n[sources.flows]\ntype = \"object_store\"\n{store}\n\n\
             [sinks.out]\ntype = \"object_store\"\ninputs = [\"flows\"]\nurl = \"file://{out}\"\nformat = \"ndjson\"\n\
             buffer = {{ size_mb = 1, interval_s = 1 }}\n",
            data = dir.path().join("data").display(),
            store = server.sink_toml("flows", SECRET_KEY).replace("s3://flows/archive", "s3://flows/raw"),
            out = out.display(),
        ),
    )
    .unwrap();
    let mut first = sluice()
        .args(["run", "--quiet", "--workers", "1", config.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while folder_objects(&out).is_empty() {
        assert!(started.elapsed() < Duration::from_secs(60), "nothing delivered");
        std::thread::sleep(Duration::from_millis(10));
    }
    terminate(&first);
    assert!(first.wait().unwrap().code().is_some());
    let after_first = lines_under(&out).len();
    assert!(after_first > 0 && after_first < records.len(), "stopped part-way: {after_first}");
    let second = sluice().args(["run", "--quiet", "--workers", "1", config.to_str().unwrap()]).output().unwrap();
    assert!(second.status.success(), "{}", String::from_utf8_lossy(&second.stderr));
    let mut delivered = lines_under(&out);
    let read_again = delivered.len() - records.len();
    delivered.dedup();
    let mut expected = records.clone();
    expected.sort();
    expected.dedup();
    assert_eq!(delivered, expected, "every record, after the second run");
    assert!(
        read_again < after_first,
        "the second run read again {read_again} of the {after_first} the first delivered"
    );
}

/// `sluice serve --cluster`: every pipeline of the folder runs as its own cluster (pipeline i on the
/// hosts' ports + i); records put to either process's shared listener are delivered, and a SIGTERM
/// to one process stops both.
#[test]
fn serve_runs_each_pipeline_of_its_folder_as_a_cluster() {
    let dir = tempfile::tempdir().unwrap();
    let folder = dir.path().join("pipelines");
    std::fs::create_dir(&folder).unwrap();
    for name in ["orders", "trail"] {
        std::fs::write(
            folder.join(format!("{name}.toml")),
            format!(
                "[pipeline]\nname = \"{name}\"\ndata_dir = \"{data}\"\n\n[sources.api]\ntype = \"firehose\"\n\
                 listen = \"127.0.0.1:1\"\n\n[sinks.out]\ntype = \"object_store\"\ninputs = [\"api\"]\n\
                 url = \"file://{out}\"\nformat = \"ndjson\"\nbuffer = {{ size_mb = 64, interval_s = 600 }}\n",
                data = dir.path().join(format!("{name}-data")).display(),
                out = dir.path().join(format!("{name}-out")).display(),
            ),
        )
        .unwrap();
    }
    // Room for pipeline 1's cluster on the ports above each host's.
    let hosts = dir.path().join("hosts.txt");
    let base = free_port();
    std::fs::write(&hosts, format!("127.0.0.1:{base}\n127.0.0.1:{}\n", base + 10)).unwrap();
    let listen = [free_port(), free_port()];
    let mut children: Vec<Child> = (0..2)
        .map(|i| {
            sluice()
                .args(["serve", folder.to_str().unwrap(), "--listen", &format!("127.0.0.1:{}", listen[i])])
                .args(["--cluster", hosts.to_str().unwrap(), "--process", &i.to_string(), "--workers", "1"])
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(dir.path().join(format!("serve-{i}.log"))).unwrap())
                .spawn()
                .unwrap()
        })
        .collect();
    let mut expected: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for (i, &port) in listen.iter().enumerate() {
        wait_for_port(port, "the API");
        for stream in ["orders", "trail"] {
            expected.entry(stream).or_default().extend(put(port, stream, &format!("p{i}"), 50));
        }
    }
    terminate(&children[0]);
    let codes = wait_all(&mut children, Duration::from_secs(60));
    let log = |i: usize| std::fs::read_to_string(dir.path().join(format!("serve-{i}.log"))).unwrap_or_default();
    assert_eq!(codes, [Some(0), Some(0)], "{}\n{}", log(0), log(1));
    for (stream, mut lines) in expected {
        lines.sort();
        assert_eq!(lines_under(&dir.path().join(format!("{stream}-out"))), lines, "{stream}");
    }
}

/// An object that cannot be read is given up with an error naming the object, in the summary and
/// in the error log, and the worker reads on: the object after it is delivered.
#[test]
fn an_unreadable_object_is_named_in_the_error_and_the_error_log() {
    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join("archive");
    write_lines(&archive.join("good.ndjson"), &["{\"a\":1}".to_string()]);
    std::fs::write(archive.join("broken.ndjson.gz"), b"this is not gzip").unwrap();
    let config = dir.path().join("broken.toml");
    std::fs::write(
        &config,
        format!(
            "[pipeline]\nname = \"broken\"\ndata_dir = \"{data}\"\n\n[sources.archive]\ntype = \"object_store\"\nurl = \"file://{archive}\"\n\n\
             [sinks.out]\ntype = \"object_store\"\ninputs = [\"archive\"]\nurl = \"file://{out}\"\n",
            data = dir.path().join("data").display(),
            archive = archive.display(),
            out = dir.path().join("out").display(),
        ),
    )
    .unwrap();
    let output = sluice()
        .args(["--log-format", "json", "run", "--quiet", "--workers", "1", config.to_str().unwrap()])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{said}");
    let object = format!("{}/broken.ndjson.gz", archive.display());
    let line = said
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|l| l["errorCode"] == "SourceReadFailed")
        .unwrap_or_else(|| panic!("no error-log line: {said}"));
    assert_eq!(line["component"], "archive");
    assert!(line["message"].as_str().unwrap().contains(&object), "{line}");
    assert_eq!(lines_under(&dir.path().join("out")), vec!["{\"a\":1}".to_string()], "{said}");
}

/// A `dedup` transform across two processes: records are exchanged to their key's owner in the
/// other process and back (the in-flight budget counts only what stays within a process, so
/// neither process's budget drifts), and the cluster keeps each distinct record once, as one
/// process does.
#[test]
fn dedup_across_processes_keeps_each_record_once() {
    let dir = tempfile::tempdir().unwrap();
    let distinct = generated(Profile::Cloudtrail, 21, 6_000);
    // Every record twice, the copy far from the original (likely read by the other process).
    let mut lines = distinct.clone();
    lines.extend(distinct.iter().rev().cloned());
    write_lines(&dir.path().join("logs/twice.ndjson"), &lines);
    let config = |out: &Path| {
        format!(
            "[pipeline]\nname = \"once\"\ndata_dir = \"{data}\"\n\n[sources.logs]\ntype = \"file\"\n\
             paths = [\"{logs}/*\"]\nsplit_mb = 1\n\n[transforms.once]\ntype = \"dedup\"\ninputs = [\"logs\"]\n\
             window_s = 600\n\n[sinks.out]\ntype = \"object_store\"\ninputs = [\"once\"]\nurl = \"file://{out}/out\"\n\
             format = \"ndjson\"\n",
            data = out.join("data").display(),
            logs = dir.path().join("logs").display(),
            out = out.display(),
        )
    };
    let out = dir.path().join("two-by-one");
    std::fs::create_dir_all(&out).unwrap();
    let file = out.join("pipeline.toml");
    std::fs::write(&file, config(&out)).unwrap();
    let hosts = hosts_file(dir.path(), 2);
    let mut children = start_cluster(&file, &hosts, 2, 1, |_| ProcessSettings::default());
    for (i, code) in wait_all(&mut children, Duration::from_secs(120)).iter().enumerate() {
        assert_eq!(*code, Some(0), "process {i}: {}", log_of(&file, i));
    }
    let mut expected = distinct;
    expected.sort();
    assert!(lines_under(&out.join("out")) == expected, "each distinct record exactly once");
}

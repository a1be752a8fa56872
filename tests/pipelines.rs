//! Whole pipelines run in-process: the worker-count oracle, fan-out, file splitting, buffering by
//! interval in a stream run, and conversion failures routed to the error output.

use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use sluice_connectors::registry;
use sluice_connectors::synth::Profile;
use sluice_engine::metrics::PipelineMetrics;
use sluice_engine::runtime::{RunOptions, run};
use sluice_engine::testkit::{file_pipeline_toml, plan_from_str, run_pipeline};

use super::support::{all_lines, generated, memory_objects};

/// Input files for the oracle: a plain file big enough to be split (split_mb = 1) and a gzip one.
fn oracle_inputs(dir: &std::path::Path) -> Vec<String> {
    let plain = generated(Profile::Cloudtrail, 1, 6000); // ~5 MB: split into several ranges
    let gz = generated(Profile::Cloudfront, 2, 3000);
    std::fs::write(dir.join("a.ndjson"), plain.join("\n") + "\n").unwrap_or_else(|e| panic!("{e}"));
    let file = std::fs::File::create(dir.join("b.ndjson.gz")).unwrap_or_else(|e| panic!("{e}"));
    let mut gzw = flate2::write::GzEncoder::new(file, flate2::Compression::fast());
    gzw.write_all((gz.join("\n") + "\n").as_bytes()).unwrap_or_else(|e| panic!("{e}"));
    gzw.finish().unwrap_or_else(|e| panic!("{e}"));
    plain.into_iter().chain(gz).collect()
}

#[test]
fn output_does_not_depend_on_the_worker_count() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let mut file_lines = oracle_inputs(dir.path());
    file_lines.sort();
    let generator_lines = generated(Profile::Vpcflow, 7, 20_000);
    let mut everything: Vec<String> = file_lines.iter().cloned().chain(generator_lines).collect();
    everything.sort();

    for workers in [1, 2, 4] {
        let store = format!("oracle-{workers}");
        let toml = format!(
            r#"
[pipeline]
name = "oracle"

[sources.logs]
type = "file"
paths = ["{dir}/*.ndjson", "{dir}/*.ndjson.gz"]
split_mb = 1

[sources.demo]
type = "generator"
profile = "vpcflow"
records = 20000
seed = 7

[sinks.all]
type = "object_store"
inputs = ["logs", "demo"]
url = "memory://{store}/all"
format = "ndjson"
compression = "zstd"
buffer = {{ size_mb = 1, interval_s = 60 }}

[sinks.logs_only]
type = "object_store"
inputs = ["logs"]
url = "memory://{store}/logs"
format = "ndjson"
compression = "snappy"
prefix = "only-logs/"
"#,
            dir = dir.path().display()
        );
        let (_, metrics) = run_pipeline(&toml, &registry(), workers).unwrap_or_else(|e| panic!("{e}"));
        let objects = memory_objects(&store);
        let all: Vec<_> = objects.iter().filter(|(k, _)| k.starts_with("all/")).collect();
        let logs: Vec<_> = objects.iter().filter(|(k, _)| k.starts_with("logs/only-logs/")).collect();
        assert_eq!(all_lines(all.iter().copied()), everything, "fan-out sink `all` with {workers} workers");
        assert_eq!(all_lines(logs.iter().copied()), file_lines, "sink `logs_only` with {workers} workers");
        // Size-bounded objects: 1 MiB before compression, so several of them.
        assert!(all.len() >= 8, "{} objects", all.len());
        assert!(all.iter().all(|(k, _)| k.ends_with(".zst")));
        assert!(logs.iter().all(|(k, _)| k.ends_with(".snappy")));
        assert_eq!(metrics.records_in(), everything.len() as u64);
        assert_eq!(metrics.sinks[0].records_delivered.load(Relaxed), everything.len() as u64);
        assert_eq!(metrics.sinks[1].records_delivered.load(Relaxed), file_lines.len() as u64);
    }
}

/// `file_extension` (Firehose's FileExtension) names every data object, partitioned ones too, in
/// place of its format's extension; DescribeDeliveryStream shows it.
#[test]
fn a_file_extension_ends_every_data_object_name() {
    let dir = tempfile::tempdir().unwrap();
    let (toml, out) = cloudtrail_into_a_folder(
        dir.path(),
        3000,
        "compression = \"gzip\"\nfile_extension = \".jsonl.gz\"\npartitioning = { query = '{region: .awsRegion}' }\n\
         prefix = \"region=!{partitionKeyFromQuery:region}/\"\nerror_prefix = \"errors/!{firehose:error-output-type}/\"",
    );
    let plan = plan_from_str(&toml, &registry()).unwrap();
    assert_eq!(plan.stream_info(0).destinations[0].file_extension, ".jsonl.gz");
    run_pipeline(&toml, &registry(), 2).unwrap();
    let objects = super::support::folder_objects(&out);
    assert!(objects.len() >= 2, "{:?}", objects.keys());
    assert!(objects.keys().all(|k| k.starts_with("region=") && k.ends_with(".jsonl.gz")), "{:?}", objects.keys());
    let mut expected = generated(Profile::Cloudtrail, 5, 3000);
    expected.sort();
    assert_eq!(all_lines(&objects), expected);
}

/// A pipeline of `records` CloudTrail records (seed 5) into an NDJSON `file://` sink `lake` under
/// `dir` with `sink_keys` added: its text, and the sink's folder.
fn cloudtrail_into_a_folder(dir: &std::path::Path, records: u64, sink_keys: &str) -> (String, std::path::PathBuf) {
    let out = dir.join("lake");
    let toml = format!(
        "[pipeline]\nname = \"lake\"\ndata_dir = \"{data}\"\n[sources.demo]\ntype = \"generator\"\n\
         profile = \"cloudtrail\"\nrecords = {records}\nseed = 5\n[sinks.lake]\ntype = \"object_store\"\n\
         inputs = [\"demo\"]\nurl = \"file://{out}\"\nformat = \"ndjson\"\n{sink_keys}\n",
        data = dir.join("data").display(),
        out = out.display(),
    );
    (toml, out)
}

/// `compression = "hadoop_snappy"` (Firehose's HADOOP_SNAPPY): `.snappy` objects in Hadoop's block
/// framing, read back whole by python-snappy's Hadoop stream decompressor, and by the
/// `object_store` source, which tells the framing by the first byte.
#[test]
fn hadoop_snappy_objects_are_read_by_a_hadoop_framing_reader_and_by_the_source() {
    let dir = tempfile::tempdir().unwrap();
    let (toml, out) = cloudtrail_into_a_folder(
        dir.path(),
        4000,
        "compression = \"hadoop_snappy\"\nbuffer = { size_mb = 1, interval_s = 900 }",
    );
    run_pipeline(&toml, &registry(), 2).unwrap();
    let files = super::support::files_under(&out);
    assert!(files.len() >= 2 && files.iter().all(|f| f.to_string_lossy().ends_with(".snappy")), "{files:?}");
    let read = std::process::Command::new(super::support::python())
        .arg(super::support::repo_root().join("tests/read_hadoop_snappy.py"))
        .args(&files)
        .output()
        .unwrap();
    assert!(
        read.status.success(),
        "{} (scripts/test.sh installs python-snappy)",
        String::from_utf8_lossy(&read.stderr)
    );
    let mut lines: Vec<String> = serde_json::from_slice(&read.stdout).unwrap();
    let mut expected = generated(Profile::Cloudtrail, 5, 4000);
    lines.sort();
    expected.sort();
    assert_eq!(lines, expected);
    read_back_and_refused_by_parquet(dir.path(), &out, &toml, "hadoop_snappy", &expected);
}

/// The objects in `out` (written by the pipeline `toml` with `compression`) read back by the
/// `object_store` source as exactly `expected`; the same sink as Parquet refused, since Parquet
/// compresses its own pages.
fn read_back_and_refused_by_parquet(
    dir: &std::path::Path,
    out: &std::path::Path,
    toml: &str,
    compression: &str,
    expected: &[String],
) {
    let memory = format!("{compression}-reread");
    let reread = format!(
        "[pipeline]\nname = \"reread\"\ndata_dir = \"{data}\"\n[sources.lake]\ntype = \"object_store\"\nurl = \"file://{out}\"\n\
         [sinks.copy]\ntype = \"object_store\"\ninputs = [\"lake\"]\nurl = \"memory://{memory}/\"\nformat = \"ndjson\"\n",
        data = dir.join("data2").display(),
        out = out.display(),
    );
    run_pipeline(&reread, &registry(), 2).unwrap();
    assert_eq!(all_lines(&memory_objects(&memory)), expected);
    let parquet = toml.replace("format = \"ndjson\"", "format = \"parquet\"\nschema = \"infer\"");
    let refused = plan_from_str(&parquet, &registry()).map(|_| ()).unwrap_err().to_string();
    let said = format!("compression = \"{compression}\" is for text objects; Parquet compresses its own pages");
    assert!(refused.contains(&said), "{refused}");
}

/// `compression = "zip"` (Firehose's ZIP): each object a ZIP archive of one deflated entry named
/// after the object, which Python's `zipfile` lists, checks (CRC-32, the local and central
/// headers' names) and reads, and which the `object_store` source reads back; Parquet refuses it.
#[test]
fn zip_objects_are_archives_python_reads_and_the_source_reads_back() {
    let dir = tempfile::tempdir().unwrap();
    // 1 MiB objects: some of them pass a block (a deflate stream of several blocks), the last not.
    let (toml, out) =
        cloudtrail_into_a_folder(dir.path(), 4000, "compression = \"zip\"\nbuffer = { size_mb = 1, interval_s = 900 }");
    run_pipeline(&toml, &registry(), 2).unwrap();
    let files = super::support::files_under(&out);
    assert!(files.len() >= 2 && files.iter().all(|f| f.to_string_lossy().ends_with(".zip")), "{files:?}");
    let script = r#"
import json, sys, zipfile
lines = []
for path in sys.argv[1:]:
    with zipfile.ZipFile(path) as archive:
        assert archive.testzip() is None, path
        (entry,) = archive.infolist()
        name = path.rsplit("/", 1)[-1][: -len(".zip")]
        assert entry.filename == name and entry.compress_type == zipfile.ZIP_DEFLATED, (entry.filename, name)
        lines += archive.read(entry).decode().splitlines()
print(json.dumps(lines))
"#;
    let read = std::process::Command::new(super::support::python()).args(["-c", script]).args(&files).output().unwrap();
    assert!(read.status.success(), "{}", String::from_utf8_lossy(&read.stderr));
    let mut lines: Vec<String> = serde_json::from_slice(&read.stdout).unwrap();
    let mut expected = generated(Profile::Cloudtrail, 5, 4000);
    lines.sort();
    expected.sort();
    assert_eq!(lines, expected);
    read_back_and_refused_by_parquet(dir.path(), &out, &toml, "zip", &expected);
}

#[test]
fn a_record_that_is_not_json_goes_to_the_error_output_and_the_rest_is_delivered() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let input = dir.path().join("in.ndjson");
    std::fs::write(&input, "{\"a\":1,\"b\":\"x\"}\nnot json at all\n{\"a\":2}\n[1,2]\n{\"b\":\"y,z\"}\n")
        .unwrap_or_else(|e| panic!("{e}"));
    let toml = file_pipeline_toml(
        "csv-test",
        &input,
        "memory://csv-test/t",
        "format = \"csv\"\ncolumns = [\"a\", \"b\"]\ncompression = \"gzip\"\nprefix = \"rows/\"",
    );
    let (_, metrics) = run_pipeline(&toml, &registry(), 2).unwrap_or_else(|e| panic!("{e}"));
    let objects = memory_objects("csv-test");
    let data: Vec<_> = objects.iter().filter(|(k, _)| k.starts_with("t/rows/") && !k.contains("failed")).collect();
    let mut rows: Vec<String> = data.iter().flat_map(|(_, l)| l.iter().skip(1).cloned()).collect();
    rows.sort();
    assert_eq!(rows, [",\"y,z\"", "1,x", "2,"].map(String::from));
    assert!(data.iter().all(|(k, l)| k.ends_with(".csv.gz") && l[0] == "a,b"));
    let errors: Vec<_> = objects.iter().filter(|(k, _)| k.starts_with("t/rows/format-conversion-failed/")).collect();
    let docs: Vec<serde_json::Value> =
        errors.iter().flat_map(|(_, l)| l.iter().map(|x| serde_json::from_str(x).unwrap_or_default())).collect();
    assert_eq!(docs.len(), 2, "{objects:?}");
    let mut raw: Vec<String> = docs
        .iter()
        .map(|d| {
            use base64::Engine;
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(d["rawData"].as_str().unwrap_or(""))
                .unwrap_or_default();
            String::from_utf8_lossy(&bytes).to_string()
        })
        .collect();
    raw.sort();
    assert_eq!(raw, ["[1,2]", "not json at all"]);
    for d in &docs {
        assert_eq!(d["lastErrorCode"], "DataFormatConversion.MalformedData");
        assert!(d["lastErrorMessage"].as_str().is_some_and(|m| m.contains("JSON")), "{d}");
        assert!(d["arrivalTimestamp"].as_i64().is_some_and(|t| t > 1_700_000_000_000));
        assert_eq!(d["attemptsMade"], 1);
    }
    let m = &metrics.sinks[0];
    assert_eq!(m.records_delivered.load(Relaxed), 3);
    assert_eq!(m.records_failed.load(Relaxed), 2);
    assert_eq!(m.records_undelivered.load(Relaxed), 0);
}

#[test]
fn a_stream_run_delivers_by_interval_and_flushes_everything_on_stop() {
    let toml = r#"
[pipeline]
name = "stream"
[sources.live]
type = "generator"
profile = "cloudfront"
rate = 400
seed = 3
[sinks.lake]
type = "object_store"
inputs = ["live"]
url = "memory://stream-test/lake"
format = "ndjson"
compression = "gzip"
buffer = { size_mb = 64, interval_s = 1 }
"#;
    let plan = plan_from_str(toml, &registry()).unwrap_or_else(|e| panic!("{e}"));
    assert!(!plan.is_batch());
    let metrics = Arc::new(PipelineMetrics::new(1, 1));
    let mut options = RunOptions::for_plan(&plan);
    options.workers = 2;
    let stop = options.stop.clone();
    let m = Arc::clone(&metrics);
    let runner = std::thread::spawn(move || run(&plan, &options, m).map_err(|e| e.to_string()));
    // Objects must appear while the stream runs: the 64 MiB size is never reached, only the 1 s interval.
    let deadline = Instant::now() + Duration::from_secs(60);
    while metrics.sinks[0].objects.load(Relaxed) < 2 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(metrics.sinks[0].objects.load(Relaxed) >= 2, "no object delivered by interval while running");
    stop.stop();
    runner.join().unwrap_or_else(|_| panic!("run panicked")).unwrap_or_else(|e| panic!("{e}"));
    let objects = memory_objects("stream-test");
    let delivered = all_lines(&objects);
    assert_eq!(delivered.len() as u64, metrics.records_in());
    assert!(delivered.len() > 100);
    let mut distinct = delivered.clone();
    distinct.dedup();
    assert_eq!(distinct.len(), delivered.len(), "a record was delivered twice");
    assert!(delivered.iter().all(|l| serde_json::from_str::<serde_json::Value>(l).is_ok()));
    assert_eq!(metrics.sinks[0].records_delivered.load(Relaxed), metrics.records_in());
}

/// A sink whose uploads in parts fail part 1 once (a retryable error) and keep the parts in memory.
mod flaky {
    use std::collections::BTreeMap;
    use std::sync::atomic::{AtomicU32, Ordering::SeqCst};
    use std::sync::{Arc, Mutex};

    use bytes::Bytes;
    use futures::future::BoxFuture;
    use sluice_engine::config::{ConnectorConfig, Problems};
    use sluice_engine::contract::{DeliveryError, DestinationKind, PartSink, PartUpload, Payload, Sink, UploadStart};

    /// Attempts at part 1, and the objects completed: key → bytes.
    pub static PART_ONE_ATTEMPTS: AtomicU32 = AtomicU32::new(0);
    pub static OBJECTS: Mutex<BTreeMap<String, Vec<u8>>> = Mutex::new(BTreeMap::new());

    pub struct FlakySink;

    pub fn configure(_: ConnectorConfig) -> Result<Arc<dyn Sink>, Problems> {
        Ok(Arc::new(FlakySink))
    }

    impl Sink for FlakySink {
        fn destination(&self) -> DestinationKind {
            DestinationKind::S3
        }

        fn describe(&self) -> String {
            "flaky".into()
        }
        fn deliver(&self, payload: Payload) -> BoxFuture<'static, Result<(), DeliveryError>> {
            OBJECTS.lock().unwrap().insert(payload.key, payload.body.to_vec());
            Box::pin(async { Ok(()) })
        }
        fn parts(&self) -> Option<&dyn PartSink> {
            Some(self)
        }
    }

    impl PartSink for FlakySink {
        fn start_upload(&self, key: &str, _: &'static str, _: Option<&'static str>) -> UploadStart {
            let upload = Upload { key: key.to_string(), parts: Arc::default() };
            Box::pin(async move { Ok(Box::new(upload) as Box<dyn PartUpload>) })
        }
    }

    struct Upload {
        key: String,
        parts: Arc<Mutex<BTreeMap<usize, Bytes>>>,
    }

    impl PartUpload for Upload {
        fn put_part(&self, index: usize, part: Bytes) -> BoxFuture<'static, Result<(), DeliveryError>> {
            let parts = Arc::clone(&self.parts);
            Box::pin(async move {
                if index == 1 && PART_ONE_ATTEMPTS.fetch_add(1, SeqCst) == 0 {
                    return Err(DeliveryError::Retryable { code: "Test.SlowDown".into(), message: "try again".into() });
                }
                parts.lock().unwrap().insert(index, part);
                Ok(())
            })
        }
        fn retries_parts(&self) -> bool {
            true
        }
        fn complete(&self) -> BoxFuture<'static, Result<(), DeliveryError>> {
            let bytes: Vec<u8> = self.parts.lock().unwrap().values().flat_map(|p| p.to_vec()).collect();
            OBJECTS.lock().unwrap().insert(self.key.clone(), bytes);
            Box::pin(async { Ok(()) })
        }
        fn abort(&self) -> BoxFuture<'static, Result<(), DeliveryError>> {
            Box::pin(async { Ok(()) })
        }
    }
}

#[test]
fn a_failed_part_is_retried_under_its_number_and_the_object_completes() {
    let mut registry = registry();
    registry.sinks.push(sluice_engine::config::SinkType {
        name: "flaky",
        configure: flaky::configure,
        reads: &[],
        fixed_body: None,
    });
    let toml = r#"
[pipeline]
name = "flaky-parts"
[sources.demo]
type = "generator"
profile = "cloudtrail"
records = 30000
seed = 4
[sinks.out]
type = "flaky"
inputs = ["demo"]
format = "ndjson"
buffer = { size_mb = 128, interval_s = 900 }
retry = { duration_s = 30 }
"#;
    let (_, metrics) = run_pipeline(toml, &registry, 1).unwrap();
    assert_eq!(flaky::PART_ONE_ATTEMPTS.load(std::sync::atomic::Ordering::SeqCst), 2, "part 1 was sent twice");
    assert!(metrics.sinks[0].parts.load(Relaxed) >= 3);
    assert_eq!(metrics.sinks[0].records_undelivered.load(Relaxed), 0);
    let objects = flaky::OBJECTS.lock().unwrap().clone();
    assert_eq!(objects.len(), 1);
    let mut lines: Vec<String> = objects
        .values()
        .flat_map(|b| String::from_utf8_lossy(b).lines().map(str::to_string).collect::<Vec<_>>())
        .collect();
    lines.sort();
    let mut expected = generated(Profile::Cloudtrail, 4, 30000);
    expected.sort();
    assert_eq!(lines, expected);
}

/// gzip objects are libdeflate members of 256 KiB back to back: every reader users point at them
/// reads each object whole — zcat, Python's `gzip`, DuckDB's `read_json`, pyarrow's JSON reader
/// over a gzip stream — one record per input line, in order.
#[test]
fn gzip_objects_of_many_members_are_read_whole_by_every_reader() {
    objects_of_many_members_are_read_whole("gzip", &[0x1f, 0x8b, 8, 0], 20);
}

/// zstd objects are frames of 1 MiB back to back: the zstd CLI, DuckDB and pyarrow (libzstd's
/// streaming decoder) read each object whole.
#[test]
fn zstd_objects_of_many_frames_are_read_whole_by_every_reader() {
    objects_of_many_members_are_read_whole("zstd", &[0x28, 0xb5, 0x2f, 0xfd], 5);
}

/// Writes 20,000 CloudTrail records through a `compression` sink into one object, checks it holds
/// at least `members` members (each starting with `magic`), and reads it back with the command-line
/// decoder, Python (gzip only: its standard library has no zstd before 3.14), DuckDB and pyarrow.
fn objects_of_many_members_are_read_whole(compression: &str, magic: &[u8], members: usize) {
    let dir = tempfile::tempdir().unwrap();
    let records = generated(Profile::Cloudtrail, 5, 20_000);
    let input = dir.path().join("in.ndjson");
    std::fs::write(&input, records.join("\n") + "\n").unwrap();
    let out = dir.path().join("out");
    let config = dir.path().join("many.toml");
    std::fs::write(
        &config,
        format!(
            "[pipeline]\nname = \"many\"\ndata_dir = \"{data}\"\n\n[sources.in]\ntype = \"file\"\npaths = [\"{input}\"]\n\n\
             [sinks.out]\ntype = \"object_store\"\ninputs = [\"in\"]\nurl = \"file://{out}\"\nformat = \"ndjson\"\n\
             compression = \"{compression}\"\nbuffer = {{ size_mb = 64, interval_s = 900 }}\n",
            data = dir.path().join("data").display(),
            input = input.display(),
            out = out.display(),
        ),
    )
    .unwrap();
    let ran =
        super::support::sluice().args(["run", "--quiet", "--workers", "1", config.to_str().unwrap()]).output().unwrap();
    assert!(ran.status.success(), "{}", String::from_utf8_lossy(&ran.stderr));
    let objects = super::support::files_under(&out);
    assert_eq!(objects.len(), 1, "{objects:?}");
    let object = &objects[0];
    let bytes = std::fs::read(object).unwrap();
    let found = bytes.windows(magic.len()).filter(|w| w == &magic).count();
    assert!(found >= members, "{found} members");
    let cli = if compression == "gzip" { "zcat" } else { "zstdcat" };
    let cat = std::process::Command::new(cli).arg(object).output().unwrap();
    assert_eq!(String::from_utf8_lossy(&cat.stdout).lines().collect::<Vec<_>>(), records, "{cli}");
    let script = r#"
import gzip, json, sys
import duckdb, pyarrow as pa, pyarrow.json as pj
path, compression = sys.argv[1], sys.argv[2]
python = None
if compression == "gzip":
    with gzip.open(path, "rt") as f:
        python = [line.rstrip("\n") for line in f]
duck = duckdb.sql(f"select count(*) from read_json('{path}', format='newline_delimited', compression='{compression}')").fetchone()[0]
arrow = pj.read_json(pa.input_stream(path, compression=compression)).num_rows
print(json.dumps({"python": python, "duckdb": duck, "pyarrow": arrow}))
"#;
    let read = std::process::Command::new(super::support::python())
        .args(["-c", script])
        .arg(object)
        .arg(compression)
        .output()
        .unwrap();
    assert!(read.status.success(), "{}", String::from_utf8_lossy(&read.stderr));
    let said: serde_json::Value = serde_json::from_slice(&read.stdout).unwrap();
    if compression == "gzip" {
        assert_eq!(said["python"].as_array().unwrap().len(), records.len());
        assert_eq!(said["python"][19_999], records[19_999].as_str());
    }
    assert_eq!((said["duckdb"].as_u64(), said["pyarrow"].as_u64()), (Some(20_000), Some(20_000)));
}

/// A `file://` sink whose folder is a file system of its own (a mount point, as a container's
/// volume is): objects are staged inside it, since no rename crosses into a mount point (staged
/// beside it, every delivery failed with "Invalid cross-device link" and was retried forever), and
/// a source reading the folder skips them. Needs a tmpfs mounted for the test (as root, as CI runs).
#[test]
fn a_file_sink_on_a_mount_point_of_its_own_stages_inside_it_and_delivers_everything() {
    let dir = tempfile::tempdir().unwrap();
    let Some(volume) = super::support::Tmpfs::mount(&dir.path().join("volume"), "64m") else {
        eprintln!("note: cannot mount a tmpfs here (not root?); the mount-point case is not run");
        return;
    };
    let toml = format!(
        "[pipeline]\nname = \"vol\"\ndata_dir = \"{data}\"\n[sources.in]\ntype = \"generator\"\nprofile = \"cloudtrail\"\n\
         records = 3000\nseed = 9\n[sinks.out]\ntype = \"object_store\"\ninputs = [\"in\"]\nurl = \"file://{root}\"\n\
         format = \"ndjson\"\ncompression = \"gzip\"\nbuffer = {{ size_mb = 1, interval_s = 900 }}\n",
        data = dir.path().join("data").display(),
        root = volume.0.display(),
    );
    // A delivery that cannot succeed is retried forever: a run that does not end is the failure.
    let (done, finished) = std::sync::mpsc::channel();
    std::thread::spawn(move || done.send(run_pipeline(&toml, &registry(), 2).map(|(_, metrics)| metrics)));
    let metrics = finished.recv_timeout(Duration::from_secs(120)).expect("the run ends").unwrap();
    assert_eq!(metrics.sinks[0].records_delivered.load(Relaxed), 3000);
    let objects = super::support::folder_objects(&volume.0);
    let mut delivered: Vec<String> = objects.values().flatten().cloned().collect();
    let mut expected = generated(Profile::Cloudtrail, 9, 3000);
    delivered.sort();
    expected.sort();
    assert_eq!(delivered, expected, "every record once, in objects under the mount point");
    // Staged inside (no rename crosses into the mount point: staged beside, no delivery would have
    // succeeded), nothing beside, and the staging folder removed once everything was stored.
    let staging = volume.0.join(".sluice-staging/vol.out");
    assert!(!volume.0.join(".sluice-staging").exists() && !dir.path().join(".sluice-staging").exists());
    // An object_store source reading the folder skips what is being staged in it.
    std::fs::create_dir_all(&staging).unwrap();
    std::fs::write(staging.join("being-written"), "{\"partial\":").unwrap();
    let reread = format!(
        "[pipeline]\nname = \"reread\"\ndata_dir = \"{data}\"\n[sources.vol]\ntype = \"object_store\"\nurl = \"file://{root}\"\n\
         [sinks.out]\ntype = \"object_store\"\ninputs = [\"vol\"]\nurl = \"memory://reread/\"\nformat = \"ndjson\"\n",
        data = dir.path().join("data2").display(),
        root = volume.0.display(),
    );
    let (_, metrics) = run_pipeline(&reread, &registry(), 2).unwrap();
    assert_eq!(metrics.sinks[0].records_delivered.load(Relaxed), 3000);
}

/// A `file://` sink whose folder the sink may write but not its parent (a folder given to the
/// service's user inside one it does not own): objects are staged inside the folder. Run as
/// `nobody` (`runuser`, when the suite runs as root, as CI does), since root writes anywhere.
#[test]
fn a_file_sink_whose_parent_it_cannot_write_stages_inside_its_folder() {
    use std::os::unix::fs::PermissionsExt;
    if !super::support::as_root() {
        eprintln!("note: not root: the unwritable-parent case (run as nobody) is not run");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // The parent: root's, readable by all; the sink's folder and the run's state: nobody's.
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let (root, data) = (dir.path().join("lake"), dir.path().join("data"));
    for folder in [&root, &data] {
        std::fs::create_dir(folder).unwrap();
        let owned = std::process::Command::new("chown").arg("nobody").arg(folder).status().unwrap();
        assert!(owned.success());
    }
    let pipeline = dir.path().join("p.toml");
    let toml = format!(
        "[pipeline]\nname = \"owned\"\ndata_dir = \"{data}\"\n[sources.in]\ntype = \"generator\"\nprofile = \"vpcflow\"\n\
         records = 500\nseed = 4\n[sinks.out]\ntype = \"object_store\"\ninputs = [\"in\"]\nurl = \"file://{root}\"\n\
         format = \"ndjson\"\n",
        data = data.display(),
        root = root.display(),
    );
    std::fs::write(&pipeline, &toml).unwrap();
    let as_nobody = |args: &[&str], pipeline: &std::path::Path| {
        std::process::Command::new("runuser")
            .args(["-u", "nobody", "--", env!("CARGO_BIN_EXE_sluice")])
            .args(args)
            .arg(pipeline)
            .output()
            .unwrap()
    };
    // `validate --check` finds a folder nobody may make (under root's folder), and passes this one.
    let elsewhere = dir.path().join("elsewhere.toml");
    std::fs::write(
        &elsewhere,
        toml.replace(&format!("file://{}", root.display()), &format!("file://{}/theirs/out", dir.path().display())),
    )
    .unwrap();
    let refused = as_nobody(&["validate", "--check"], &elsewhere);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains(&format!("{} cannot be written by this process", dir.path().display())), "{stderr}");
    let checked = as_nobody(&["validate", "--check"], &pipeline);
    assert!(checked.status.success(), "{}", String::from_utf8_lossy(&checked.stderr));
    let out = as_nobody(&["run", "--quiet"], &pipeline);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let mut delivered: Vec<String> = super::support::folder_objects(&root).into_values().flatten().collect();
    let mut expected = generated(Profile::Vpcflow, 4, 500);
    delivered.sort();
    expected.sort();
    assert_eq!(delivered, expected);
    // Staged inside (the parent cannot take a staging folder: prepared beside, the run would have
    // stopped at start), and that folder removed once everything was stored.
    assert!(!root.join(".sluice-staging").exists() && !dir.path().join(".sluice-staging").exists());
}

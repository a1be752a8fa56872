//! Dynamic partitioning: records exchanged by partition across 1, 2 and 4 workers (every record
//! once, one object per partition, every object's records evaluating with the jq 1.6 CLI to the
//! key values in its prefix), hostile key values to `partitioning-failed`, keys from a lambda
//! transform through a real function server, the open-partition memory budget (100,000 partitions
//! in `max_open_mb = 64`), partitioned CSV, raw and Parquet objects (Parquet read by DuckDB with hive
//! partitioning), the config rules, and the example pipeline that turns a CloudTrail archive into a
//! partitioned Parquet lake.

use std::collections::BTreeMap;
use std::process::Command;

use sluice_connectors::registry;
use sluice_connectors::synth::Profile;
use sluice_engine::testkit::{plan_from_str, run_pipeline};

use super::support::{all_lines, folder_objects, generated, memory_objects, python, raw_data};
use super::transforms::FunctionServer;

const QUERY: &str = "{account: .recipientAccountId, region: .awsRegion, event: .eventName}";

/// The key values in an object key `…/account=A/region=R/event=E/…`.
fn values_in(key: &str) -> BTreeMap<String, String> {
    key.split('/').filter_map(|segment| segment.split_once('=')).map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

#[test]
fn each_partition_is_one_object_holding_only_its_records_at_1_2_and_4_workers() {
    const RECORDS: u64 = 3_000;
    let mut expected = generated(Profile::Cloudtrail, 5, RECORDS);
    expected.sort();
    for workers in [1, 2, 4] {
        let store = format!("partitioned-{workers}");
        let toml = format!(
            "[pipeline]\nname = \"lake\"\n[sources.gen]\ntype = \"generator\"\nprofile = \"cloudtrail\"\nrecords = {RECORDS}\nseed = 5\n\
             [sinks.lake]\ntype = \"object_store\"\ninputs = [\"gen\"]\nurl = \"memory://{store}/lake\"\nformat = \"ndjson\"\n\
             buffer = {{ size_mb = 64, interval_s = 60 }}\npartitioning = {{ query = '{QUERY}' }}\n\
             prefix = \"account=!{{partitionKeyFromQuery:account}}/region=!{{partitionKeyFromQuery:region}}/event=!{{partitionKeyFromQuery:event}}/\"\n\
             error_prefix = \"errors/!{{firehose:error-output-type}}/\"\n"
        );
        let (_, metrics) = run_pipeline(&toml, &registry(), workers).unwrap();
        let objects = memory_objects(&store);
        assert!(objects.keys().all(|k| !k.contains("/errors/")), "{workers} workers: nothing failed");
        assert_eq!(all_lines(&objects), expected, "{workers} workers: every record exactly once");
        let mut partitions: BTreeMap<String, usize> = BTreeMap::new();
        // The reference evaluator: the jq 1.6 CLI, run once on every object's records in turn (one
        // answer per record, in the same order), each answer checked against its object's key.
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("objects.ndjson");
        let mut owners = Vec::new();
        let mut text = String::new();
        for (key, lines) in &objects {
            let values = values_in(key);
            let partition = format!("{}/{}/{}", values["account"], values["region"], values["event"]);
            *partitions.entry(partition).or_default() += 1;
            for line in lines {
                text.push_str(line);
                text.push('\n');
                owners.push((key, values.clone()));
            }
        }
        std::fs::write(&file, text).unwrap();
        let jq = Command::new("jq").arg("-c").arg(QUERY).arg(&file).output().expect("the jq CLI");
        assert!(jq.status.success(), "{}", String::from_utf8_lossy(&jq.stderr));
        let answers: Vec<String> = String::from_utf8_lossy(&jq.stdout).lines().map(str::to_string).collect();
        assert_eq!(answers.len(), owners.len(), "one jq answer per record");
        for (answer, (key, values)) in answers.iter().zip(&owners) {
            let v: serde_json::Value = serde_json::from_str(answer).unwrap();
            assert_eq!(v["account"], values["account"].as_str(), "{key}");
            assert_eq!(v["region"], values["region"].as_str(), "{key}");
            assert_eq!(v["event"], values["event"].as_str(), "{key}");
        }
        assert!(partitions.len() > 10, "{partitions:?}");
        assert!(partitions.values().all(|&n| n == 1), "{workers} workers: one object per partition: {partitions:?}");
        assert_eq!(metrics.sinks[0].partition_records.lock().unwrap().partitions(), partitions.len());
    }
}

#[test]
fn hostile_key_values_go_to_partitioning_failed_and_never_change_the_folders() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.ndjson");
    let long = "L".repeat(600);
    let records = [
        r#"{"a":"x/y"}"#.to_string(),
        r#"{"a":"x\/y"}"#.to_string(),
        r#"{"a":"\u002e\u002e"}"#.to_string(),
        r#"{"a":".."}"#.to_string(),
        r#"{"a":"."}"#.to_string(),
        r#"{"a":""}"#.to_string(),
        r#"{"a":"line\nbreak"}"#.to_string(),
        format!(r#"{{"a":"{long}"}}"#),
        r#"{"a":null}"#.to_string(),
        r#"{"b":1}"#.to_string(),
        "not json".to_string(),
        // Under 512 characters, but longer than a file name (255 bytes) on the file system.
        format!(r#"{{"a":"{}"}}"#, "F".repeat(300)),
        format!(r#"{{"a":"{}"}}"#, "中".repeat(100)),
        r#"{"a":"é🦀"}"#.to_string(),
        r#"{"a":5}"#.to_string(),
        r#"{"a":true}"#.to_string(),
        // A staging folder's name: no object goes there (readers skip it, a start empties it).
        r#"{"a":".sluice-staging"}"#.to_string(),
    ];
    std::fs::write(&input, records.join("\n") + "\n").unwrap();
    let out = dir.path().join("out");
    let toml = format!(
        "[pipeline]\nname = \"hostile\"\n[sources.in]\ntype = \"file\"\npaths = [\"{}\"]\n\
         [sinks.out]\ntype = \"object_store\"\ninputs = [\"in\"]\nurl = \"file://{}\"\nformat = \"ndjson\"\n\
         partitioning = {{ query = '{{a: .a}}' }}\nprefix = \"!{{partitionKeyFromQuery:a}}/\"\n\
         error_prefix = \"errors/!{{firehose:error-output-type}}/\"\n",
        input.display(),
        out.display()
    );
    let (_, metrics) = run_pipeline(&toml, &registry(), 2).unwrap();
    let objects = folder_objects(&out);
    let folders: Vec<String> = objects
        .keys()
        .filter(|k| !k.starts_with("errors/"))
        .map(|k| k.split('/').next().unwrap_or("").to_string())
        .collect();
    let mut folders_sorted = folders.clone();
    folders_sorted.sort();
    assert_eq!(folders_sorted, vec!["5".to_string(), "true".to_string(), "é🦀".to_string()]);
    let failed: BTreeMap<_, _> = objects.iter().filter(|(k, _)| k.starts_with("errors/partitioning-failed/")).collect();
    let documents: Vec<serde_json::Value> =
        all_lines(failed).iter().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(documents.len(), 13, "{documents:?}");
    let too_long =
        documents.iter().filter(|d| d["errorMessage"].as_str().unwrap_or("").contains("at most 255")).count();
    assert_eq!(too_long, 2, "{documents:?}");
    let mut raw: Vec<String> = documents.iter().map(raw_data).collect();
    raw.sort();
    let mut expected: Vec<String> = records[..13].to_vec();
    expected.sort();
    assert_eq!(raw, expected);
    assert!(documents.iter().all(|d| d["errorCode"] == "DynamicPartitioning.MetadataExtractionFailed"));
    assert_eq!(metrics.sinks[0].partitioning_failed.load(std::sync::atomic::Ordering::Relaxed), 13);
    let refused: BTreeMap<_, _> = objects.iter().filter(|(k, _)| k.starts_with("errors/s3-failed/")).collect();
    let refused: Vec<serde_json::Value> = all_lines(refused).iter().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(refused.len(), 1, "{refused:?}");
    assert_eq!(raw_data(&refused[0]), records[16]);
    assert_eq!(refused[0]["errorCode"], "Local.InvalidKey");
    assert!(!out.join(".sluice-staging").exists());
    // Firehose's `JQProcessing.Duration`: one observation per batch the query ran on.
    let timed = metrics.sinks[0].jq_processing.count();
    assert!(timed >= 1, "{timed}");
    let mut text = sluice_engine::metrics::PrometheusText::default();
    let label =
        sluice_engine::metrics::SinkLabel { name: "out".into(), kind: sluice_engine::destination::DestinationKind::S3 };
    metrics.render_prometheus(&mut text, "hostile", &[label], 0);
    let text = text.finish();
    let count = format!("sluice_JQProcessing_Duration_seconds_count{{stream=\"hostile\",destination=\"out\"}} {timed}");
    assert!(text.contains(&count), "{text}");
    // Firehose's `PerPartitionThroughput`: the busiest partition's bytes per second once its window
    // is complete (the run lasted less than one: measured as if the window ended now).
    let window_end = std::time::Instant::now() + sluice_engine::metrics::THROUGHPUT_WINDOW;
    let busiest = metrics.sinks[0].partition_records.lock().unwrap().busiest_throughput(window_end);
    // The partition of the object the store refused counts: it was buffered.
    let largest_partition: u64 = objects
        .iter()
        .filter(|(k, _)| !k.starts_with("errors/"))
        .map(|(_, lines)| lines.iter().map(|l| l.len() as u64).sum::<u64>())
        .chain([records[16].len() as u64])
        .max()
        .unwrap();
    let window = sluice_engine::metrics::THROUGHPUT_WINDOW.as_secs();
    assert!((largest_partition / (window + 5)..=largest_partition / window).contains(&busiest), "{busiest}");
    let mut text = sluice_engine::metrics::PrometheusText::default();
    let label =
        sluice_engine::metrics::SinkLabel { name: "out".into(), kind: sluice_engine::destination::DestinationKind::S3 };
    metrics.render_prometheus(&mut text, "hostile", &[label], 0);
    let gauge =
        format!("sluice_PerPartitionThroughput_bytes_per_second{{stream=\"hostile\",destination=\"out\"}} {busiest}");
    assert!(text.finish().contains(&gauge), "{gauge}");
}

#[test]
fn keys_from_a_lambda_transform_name_the_partitions() {
    let server = FunctionServer::start();
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.txt");
    std::fs::write(&input, "apple\navocado\nbanana\nblueberry\ncherry\n").unwrap();
    let out = dir.path().join("out");
    let toml = format!(
        "[pipeline]\nname = \"fruit\"\n[sources.in]\ntype = \"file\"\npaths = [\"{}\"]\n\
         [transforms.fn]\ntype = \"lambda\"\ninputs = [\"in\"]\nurl = \"{}\"\n\
         [sinks.out]\ntype = \"object_store\"\ninputs = [\"fn\"]\nurl = \"file://{}\"\nformat = \"ndjson\"\n\
         prefix = \"first=!{{partitionKeyFromLambda:first}}/size=!{{partitionKeyFromLambda:size}}/\"\n\
         error_prefix = \"errors/!{{firehose:error-output-type}}/\"\n\
         [sinks.missing]\ntype = \"object_store\"\ninputs = [\"fn\"]\nurl = \"file://{}\"\nformat = \"ndjson\"\n\
         prefix = \"!{{partitionKeyFromLambda:colour}}/\"\nerror_prefix = \"errors/!{{firehose:error-output-type}}/\"\n",
        input.display(),
        server.url("ok"),
        out.display(),
        dir.path().join("missing").display()
    );
    run_pipeline(&toml, &registry(), 2).unwrap();
    let objects = folder_objects(&out);
    let by_folder: BTreeMap<String, Vec<String>> =
        objects.iter().map(|(k, lines)| (k.split('/').take(2).collect::<Vec<_>>().join("/"), lines.clone())).collect();
    let folders: Vec<&String> = by_folder.keys().collect();
    assert_eq!(
        folders,
        vec!["first=a/size=5", "first=a/size=7", "first=b/size=6", "first=b/size=9", "first=c/size=6"],
        "{objects:?}"
    );
    assert_eq!(by_folder["first=b/size=9"], vec!["BLUEBERRY".to_string()]);
    // A key the function does not give: every record to partitioning-failed.
    let missing = folder_objects(&dir.path().join("missing"));
    assert!(missing.keys().all(|k| k.starts_with("errors/partitioning-failed/")), "{missing:?}");
    assert_eq!(all_lines(&missing).len(), 5);
}

#[test]
fn many_partitions_stay_within_max_open_mb_by_sealing_the_largest_early() {
    const RECORDS: u64 = 4_000;
    let toml = format!(
        "[pipeline]\nname = \"many\"\n[sources.gen]\ntype = \"generator\"\nprofile = \"cloudtrail\"\nrecords = {RECORDS}\nseed = 9\n\
         [sinks.lake]\ntype = \"object_store\"\ninputs = [\"gen\"]\nurl = \"memory://many-partitions/lake\"\nformat = \"ndjson\"\n\
         buffer = {{ size_mb = 64, interval_s = 900 }}\npartitioning = {{ query = '{{id: .eventID}}', max_open_mb = 1 }}\n\
         prefix = \"id=!{{partitionKeyFromQuery:id}}/\"\nerror_prefix = \"errors/!{{firehose:error-output-type}}/\"\n"
    );
    let (_, metrics) = run_pipeline(&toml, &registry(), 2).unwrap();
    let objects = memory_objects("many-partitions");
    let mut expected = generated(Profile::Cloudtrail, 9, RECORDS);
    expected.sort();
    assert_eq!(all_lines(&objects), expected);
    // ~3 MB of records in 4,000 partitions within 1 MiB per worker: partitions were sealed early.
    assert!(metrics.sinks[0].partitions_sealed_early.load(std::sync::atomic::Ordering::Relaxed) > 0);
    for (key, lines) in &objects {
        let id = values_in(key)["id"].clone();
        assert!(lines.iter().all(|l| l.contains(&format!("\"eventID\":\"{id}\""))), "{key}");
    }
}

#[test]
fn partitioned_parquet_reads_back_with_duckdb_hive_partitioning() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("lake");
    let toml = format!(
        "[pipeline]\nname = \"pq\"\n[sources.gen]\ntype = \"generator\"\nprofile = \"cloudtrail\"\nrecords = 2000\nseed = 4\n\
         [sinks.lake]\ntype = \"object_store\"\ninputs = [\"gen\"]\nurl = \"file://{}\"\nformat = \"parquet\"\nschema = \"infer\"\n\
         partitioning = {{ query = '{{account: .recipientAccountId, region: .awsRegion}}' }}\n\
         prefix = \"account=!{{partitionKeyFromQuery:account}}/region=!{{partitionKeyFromQuery:region}}/\"\n\
         error_prefix = \"errors/!{{firehose:error-output-type}}/\"\n",
        out.display()
    );
    run_pipeline(&toml, &registry(), 2).unwrap();
    let script = format!(
        "import duckdb, json\n\
         c = duckdb.connect()\n\
         q = \"select count(*) from read_parquet('{root}/**/*.parquet', hive_partitioning = true, hive_types_autocast = false)\"\n\
         total = c.execute(q).fetchone()[0]\n\
         wrong = c.execute(q + \" where account != recipientAccountId or region != awsRegion\").fetchone()[0]\n\
         regions = c.execute(\"select count(distinct region) from read_parquet('{root}/**/*.parquet', hive_partitioning = true, hive_types_autocast = false)\").fetchone()[0]\n\
         print(json.dumps({{'total': total, 'wrong': wrong, 'regions': regions}}))\n",
        root = out.display()
    );
    let output = Command::new(python()).arg("-c").arg(script).output().unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let v: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(v["total"], 2000);
    assert_eq!(v["wrong"], 0, "the partition columns match the rows");
    assert!(v["regions"].as_u64().unwrap() > 1);
}

/// A partition's object holds no compressor of its own: each 256 KiB block is its own gzip member.
/// The readers users point at a lake read such objects whole: DuckDB, pyarrow and Python's gzip.
#[test]
fn partitioned_gzip_objects_of_several_members_read_back_whole() {
    const RECORDS: u64 = 6_000;
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("lake");
    let toml = format!(
        "[pipeline]\nname = \"gz\"\n[sources.gen]\ntype = \"generator\"\nprofile = \"cloudtrail\"\nrecords = {RECORDS}\nseed = 9\n\
         [sinks.lake]\ntype = \"object_store\"\ninputs = [\"gen\"]\nurl = \"file://{}\"\nformat = \"ndjson\"\ncompression = \"gzip\"\n\
         partitioning = {{ query = '{{account: .recipientAccountId}}' }}\nprefix = \"account=!{{partitionKeyFromQuery:account}}/\"\n\
         error_prefix = \"errors/!{{firehose:error-output-type}}/\"\n",
        out.display()
    );
    run_pipeline(&toml, &registry(), 2).unwrap();
    let script = format!(
        "import duckdb, glob, gzip, json, pyarrow.json as pj\n\
         files = sorted(glob.glob('{root}/**/*.gz', recursive=True))\n\
         members = sum(open(f, 'rb').read().count(bytes([0x1f, 0x8b, 8])) for f in files)\n\
         lines = sum(gzip.decompress(open(f, 'rb').read()).count(b'\\n') for f in files)\n\
         arrow = sum(pj.read_json(f).num_rows for f in files)\n\
         duck = duckdb.sql(\"select count(*) from read_json('{root}/**/*.gz', format='newline_delimited')\").fetchone()[0]\n\
         print(json.dumps({{'files': len(files), 'members': members, 'lines': lines, 'arrow': arrow, 'duckdb': duck}}))\n",
        root = out.display()
    );
    let output = Command::new(python()).arg("-c").arg(script).output().unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let v: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert!(v["members"].as_u64().unwrap() > v["files"].as_u64().unwrap(), "several members per object: {v}");
    for reader in ["lines", "arrow", "duckdb"] {
        assert_eq!(v[reader], RECORDS, "{reader}: {v}");
    }
}

#[test]
fn partitioning_config_errors_follow_firehose_rules() {
    let sink = |keys: &str| {
        format!(
            "[pipeline]\nname = \"bad\"\n[sources.gen]\ntype = \"generator\"\nprofile = \"cloudtrail\"\nrecords = 1\n\
             [sinks.out]\ntype = \"object_store\"\ninputs = [\"gen\"]\nurl = \"memory://bad/out\"\n{keys}\n"
        )
    };
    let check = |keys: &str, expected: &str| {
        let toml = sink(keys);
        let errors = match plan_from_str(&toml, &registry()) {
            Ok(_) => panic!("accepted:\n{toml}"),
            Err(d) => d.to_string(),
        };
        assert!(errors.contains(expected), "expected `{expected}` in:\n{errors}");
    };
    let prefix = "prefix = \"a=!{partitionKeyFromQuery:a}/\"";
    let error_prefix = "error_prefix = \"errors/!{firehose:error-output-type}/\"";
    check(&format!("partitioning = {{ query = '{{a: .a}}' }}\n{prefix}"), "error_prefix is required");
    check(
        &format!(
            "partitioning = {{ query = '{{a: .a}}' }}\n{prefix}\nerror_prefix = \"e/!{{firehose:error-output-type}}/!{{partitionKeyFromQuery:a}}/\""
        ),
        "partition keys are not allowed in error_prefix",
    );
    check(
        &format!("partitioning = {{ query = '{{b: .b}}' }}\n{prefix}\n{error_prefix}"),
        "the partitioning query gives no key `a`",
    );
    check(
        &format!("partitioning = {{ query = '{{a: .a' }}\n{prefix}\n{error_prefix}"),
        "the partitioning query does not compile",
    );
    check(&format!("{prefix}\n{error_prefix}"), "but the sink has no partitioning query");
    // Every error at once: the prefixes' and the partitioning table's, each pointed at.
    let all = sink(
        "partitioning = { query = '{a: .a', max_open_mb = 0 }\n\
         prefix = \"a=!{partitionKeyFromQuery:a}/!{firehose:error-output-type}/\"\n\
         error_prefix = \"e/!{partitionKeyFromQuery:a}/\"",
    );
    let errors = plan_from_str(&all, &registry()).err().map(|d| d.to_string()).unwrap_or_default();
    for expected in [
        "the partitioning query does not compile",
        "max_open_mb` = 0 is out of range",
        "`!{firehose:error-output-type}` is allowed only in error_prefix",
        "error_prefix must contain `!{firehose:error-output-type}`",
        "partition keys are not allowed in error_prefix",
        "5 errors",
    ] {
        assert!(errors.contains(expected), "expected `{expected}` in:\n{errors}");
    }
    check(&format!("partitioning = {{ query = '{{a: .a}}' }}\n{error_prefix}"), "`partitioning` has no effect");
    let http = "[pipeline]\nname = \"bad\"\n[sources.gen]\ntype = \"generator\"\nprofile = \"cloudtrail\"\nrecords = 1\n\
                [sinks.out]\ntype = \"http_endpoint\"\ninputs = [\"gen\"]\nurl = \"http://127.0.0.1:1/\"\nbackup_store = { url = \"memory://bad/b\" }\n\
                partitioning = { query = '{a: .a}' }\nprefix = \"a=!{partitionKeyFromQuery:a}/\"\nerror_prefix = \"errors/!{firehose:error-output-type}/\"\n";
    let errors = plan_from_str(http, &registry()).err().map(|d| d.to_string()).unwrap_or_default();
    assert!(errors.contains("cannot partition"), "{errors}");
}

/// Peak RSS (MiB) and records delivered that `sluice run` printed in its summary.
fn summary_figures(output: &std::process::Output) -> (f64, u64) {
    let text = String::from_utf8_lossy(&output.stdout);
    let rss = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("peak RSS"))
        .and_then(|r| r.trim().strip_suffix(" MiB"))
        .and_then(|r| r.trim().parse().ok())
        .unwrap_or_else(|| panic!("no peak RSS in {text}"));
    let delivered = text
        .lines()
        .find_map(|l| l.split("delivered ").nth(1))
        .and_then(|r| r.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no delivered count in {text}"));
    (rss, delivered)
}

#[test]
fn csv_and_raw_objects_are_partitioned_too() {
    const RECORDS: u64 = 2_000;
    let expected: std::collections::BTreeSet<String> = generated(Profile::Cloudtrail, 7, RECORDS)
        .iter()
        .map(|r| serde_json::from_str::<serde_json::Value>(r).unwrap()["eventID"].as_str().unwrap().to_string())
        .collect();
    for (format, compression, extra) in [
        ("csv", "gzip", "columns = [\"recipientAccountId\", \"awsRegion\", \"eventName\", \"eventID\"]\n"),
        ("raw", "zstd", ""),
    ] {
        let store = format!("partitioned-{format}");
        let toml = format!(
            "[pipeline]\nname = \"lake\"\n[sources.gen]\ntype = \"generator\"\nprofile = \"cloudtrail\"\nrecords = {RECORDS}\nseed = 7\n\
             [sinks.lake]\ntype = \"object_store\"\ninputs = [\"gen\"]\nurl = \"memory://{store}/lake\"\nformat = \"{format}\"\n\
             compression = \"{compression}\"\n{extra}buffer = {{ size_mb = 64, interval_s = 60 }}\npartitioning = {{ query = '{QUERY}' }}\n\
             prefix = \"account=!{{partitionKeyFromQuery:account}}/region=!{{partitionKeyFromQuery:region}}/event=!{{partitionKeyFromQuery:event}}/\"\n\
             error_prefix = \"errors/!{{firehose:error-output-type}}/\"\n"
        );
        run_pipeline(&toml, &registry(), 2).unwrap();
        let objects = memory_objects(&store);
        assert!(
            objects.len() > 10 && objects.keys().all(|k| !k.contains("/errors/")),
            "{format}: {:?}",
            objects.keys()
        );
        let mut ids = Vec::new();
        for (key, lines) in &objects {
            let values = values_in(key);
            // Each record as (account, region, event, id).
            let records: Vec<[String; 4]> = if format == "csv" {
                assert!(key.ends_with(".csv.gz"), "{key}");
                assert_eq!(lines[0], "recipientAccountId,awsRegion,eventName,eventID", "{key}");
                lines[1..]
                    .iter()
                    .map(|row| {
                        let f: Vec<&str> = row.split(',').collect();
                        [f[0].to_string(), f[1].to_string(), f[2].to_string(), f[3].to_string()]
                    })
                    .collect()
            } else {
                assert!(key.ends_with(".zst"), "{key}");
                // Raw: the records' bytes back to back, as received.
                let text = lines.join("\n");
                serde_json::Deserializer::from_str(&text)
                    .into_iter::<serde_json::Value>()
                    .map(|v| {
                        let v = v.unwrap();
                        let field = |name: &str| v[name].as_str().unwrap_or_default().to_string();
                        [field("recipientAccountId"), field("awsRegion"), field("eventName"), field("eventID")]
                    })
                    .collect()
            };
            for [account, region, event, id] in records {
                assert_eq!(
                    (&account, &region, &event),
                    (&values["account"], &values["region"], &values["event"]),
                    "{key}"
                );
                ids.push(id);
            }
        }
        let delivered: std::collections::BTreeSet<String> = ids.iter().cloned().collect();
        assert_eq!((ids.len(), delivered), (RECORDS as usize, expected.clone()), "{format}: every record once");
    }
}

#[test]
fn a_hundred_thousand_partitions_complete_within_max_open_mb() {
    const RECORDS: u64 = 100_000;
    let dir = tempfile::tempdir().unwrap();
    // The objects go to files (in memory when /dev/shm is there, for speed): an in-memory store
    // would count the 100,000 delivered objects in the pipeline's RSS.
    let shm = std::path::Path::new("/dev/shm");
    let out = if shm.is_dir() { tempfile::tempdir_in(shm) } else { tempfile::tempdir() }.unwrap();
    let write_input = |name: &str, key: fn(u64) -> u64| {
        let path = dir.path().join(name);
        let lines: Vec<String> = (0..RECORDS).map(|n| format!("{{\"k\":{}}}", key(n))).collect();
        std::fs::write(&path, lines.join("\n") + "\n").unwrap();
        path
    };
    let distinct = write_input("distinct.ndjson", |n| n);
    let same = write_input("same.ndjson", |_| 7);
    // The pipeline partitions by `k` within `max_open_mb`.
    let run = |input: &std::path::Path, max_open_mb: u32, name: &str| {
        let config = dir.path().join(format!("{name}.toml"));
        std::fs::write(
            &config,
            format!(
                "[pipeline]\nname = \"many\"\nworkers = 1\n[sources.in]\ntype = \"file\"\npaths = [\"{}\"]\n\
                 [sinks.out]\ntype = \"object_store\"\ninputs = [\"in\"]\nurl = \"file://{}/{name}/\"\nformat = \"ndjson\"\n\
                 compression = \"gzip\"\nbuffer = {{ size_mb = 64, interval_s = 900 }}\n\
                 partitioning = {{ query = '{{k: .k}}', max_open_mb = {max_open_mb} }}\nprefix = \"k=!{{partitionKeyFromQuery:k}}/\"\n\
                 error_prefix = \"errors/!{{firehose:error-output-type}}/\"\n",
                input.display(),
                out.path().display()
            ),
        )
        .unwrap();
        let output = super::support::sluice().args(["run", "--quiet", config.to_str().unwrap()]).output().unwrap();
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        let (rss, delivered) = summary_figures(&output);
        assert_eq!(delivered, RECORDS, "{name}");
        let summary = String::from_utf8_lossy(&output.stdout).into_owned();
        let sealed_early = summary
            .split(" written, ")
            .nth(1)
            .and_then(|rest| rest.split(' ').next())
            .and_then(|n| n.parse::<u64>().ok())
            .unwrap_or_else(|| panic!("{summary}"));
        let objects = folder_objects(&out.path().join(name));
        (rss, sealed_early, objects, summary)
    };
    // The pipeline's base: the same pipeline, every record in one partition.
    let (base_rss, _, objects, _) = run(&same, 64, "base");
    assert_eq!(objects.len(), 1);
    // Open gzip objects would take 100,000 × ~400 KiB of compressor state (1.6 GiB was measured
    // before small objects were compressed whole at sealing). In `max_open_mb = 64` all 100,000
    // fit (~0.5 KiB each); in 16 the budget binds, and partitions sealed early wait for room in the
    // delivery queue like due ones instead of piling up there (+95 MiB was measured when they did
    // not). What the heap holds besides is the allocator's (heaptrack: the heap peaks at ~41 MB for
    // 64 and ~24 MB for 16 against +50–60 MiB of RSS).
    for (max_open_mb, name) in [(64, "open64"), (16, "open16")] {
        let (rss, sealed_early, objects, summary) = run(&distinct, max_open_mb, name);
        assert!(summary.contains("partitions 100000 written"), "{summary}");
        if max_open_mb == 16 {
            assert!(sealed_early > 10_000, "the budget binds: {summary}");
        }
        assert!(
            rss < base_rss + 64.0,
            "max_open_mb = {max_open_mb}: peak RSS {rss} MiB against {base_rss} MiB with one partition"
        );
        assert_eq!(objects.len(), RECORDS as usize, "one object per partition");
        for (key, lines) in &objects {
            let k = key.strip_prefix("k=").and_then(|rest| rest.split('/').next()).unwrap_or_default();
            assert_eq!(lines, &vec![format!("{{\"k\":{k}}}")], "{key}");
        }
    }
}

#[test]
fn deaggregation_splits_records_before_partitioning() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.ndjson");
    std::fs::write(&input, "{\"a\":\"x\"}{\"a\":\"y\"} {\"a\":\"x\"}\n{\"a\":\"y\"}\nnot json {\n   \n").unwrap();
    let delimited = dir.path().join("in.txt");
    std::fs::write(&delimited, "{\"a\":\"x\"}####{\"a\":\"y\"}####\n########\n").unwrap();
    let run = |input: &std::path::Path, deaggregation: &str, out: &std::path::Path| {
        let toml = format!(
            "[pipeline]\nname = \"deagg\"\n[sources.in]\ntype = \"file\"\npaths = [\"{}\"]\n\
             [sinks.out]\ntype = \"object_store\"\ninputs = [\"in\"]\nurl = \"file://{}\"\nformat = \"ndjson\"\n\
             partitioning = {{ query = '{{a: .a}}' }}\ndeaggregation = {deaggregation}\nprefix = \"a=!{{partitionKeyFromQuery:a}}/\"\n\
             error_prefix = \"errors/!{{firehose:error-output-type}}/\"\n",
            input.display(),
            out.display()
        );
        run_pipeline(&toml, &registry(), 2).unwrap();
        folder_objects(out)
    };
    let by_partition = |objects: &BTreeMap<String, Vec<String>>, p: &str| {
        let mut lines: Vec<String> =
            objects.iter().filter(|(k, _)| k.starts_with(p)).flat_map(|(_, l)| l.clone()).collect();
        lines.sort();
        lines
    };
    let json = run(&input, "\"json\"", &dir.path().join("json"));
    assert_eq!(by_partition(&json, "a=x/"), vec![r#"{"a":"x"}"#, r#"{"a":"x"}"#]);
    assert_eq!(by_partition(&json, "a=y/"), vec![r#"{"a":"y"}"#, r#"{"a":"y"}"#]);
    let failed = by_partition(&json, "errors/partitioning-failed/");
    assert_eq!(failed.len(), 2, "the record that is not JSON, whole, and the one holding none");
    assert!(failed.iter().all(|d| d.contains("DynamicPartitioning.DeAggregationFailed")));
    assert!(failed.iter().any(|d| d.contains("the record holds no JSON value")), "{failed:?}");
    let delimited = run(&delimited, "{ delimiter = \"####\" }", &dir.path().join("delimited"));
    assert_eq!(by_partition(&delimited, "a=x/"), vec![r#"{"a":"x"}"#]);
    assert_eq!(by_partition(&delimited, "a=y/"), vec![r#"{"a":"y"}"#]);
    let failed = by_partition(&delimited, "errors/partitioning-failed/");
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert!(failed[0].contains("the record holds nothing but the delimiter"), "{failed:?}");
}

/// Records on their way to the worker that buffers their partition count in the run's in-flight
/// budget until that worker takes them in, so a worker owning the busiest partitions pauses the
/// sources instead of letting the others' records pile up in its channel. Every record here is in
/// one partition (one worker buffers all of them; the other reads half the file and sends it
/// over), the budget is 256 KiB: the run completes with every record once, counted the batches
/// it exchanged (a compressed object is a few KiB: what the peak holds beyond it is exchanged
/// records), stayed within the budget but for what the two workers' reads between two checks
/// add, and released everything it counted.
#[test]
fn records_crossing_to_their_partitions_worker_count_in_the_inflight_budget() {
    use sluice_engine::operators::InflightBudget;
    use sluice_engine::runtime::{RunOptions, run};
    use std::sync::atomic::Ordering::Relaxed;

    const RECORDS: usize = 60_000;
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("one-partition.ndjson");
    // ~20 MB: above the size the file source splits between workers at (16 MiB).
    let pad = "x".repeat(300);
    let lines: Vec<String> = (0..RECORDS).map(|n| format!("{{\"k\":\"one\",\"n\":{n},\"pad\":\"{pad}\"}}")).collect();
    std::fs::write(&input, lines.join("\n") + "\n").unwrap();
    let out = dir.path().join("out");
    let toml = sluice_engine::testkit::file_pipeline_toml(
        "exchange",
        &input,
        &format!("file://{}", out.display()),
        "format = \"ndjson\"\ncompression = \"zstd\"\nbuffer = { size_mb = 64, interval_s = 900 }\n\
         partitioning = { query = '{k: .k}' }\nprefix = \"k=!{partitionKeyFromQuery:k}/\"\n\
         error_prefix = \"errors/!{firehose:error-output-type}/\"",
    );
    let plan = plan_from_str(&toml, &registry::registry()).unwrap();
    let metrics = std::sync::Arc::new(plan.new_metrics());
    const LIMIT: u64 = 256 << 10;
    let budget = InflightBudget::new(LIMIT);
    assert!(metrics.inflight.set(std::sync::Arc::clone(&budget)).is_ok());
    let mut options = RunOptions::for_plan(&plan);
    options.workers = 2;
    run(&plan, &options, std::sync::Arc::clone(&metrics)).unwrap();

    assert_eq!(metrics.sinks[0].records_delivered.load(Relaxed), RECORDS as u64);
    let objects = folder_objects(&out);
    assert_eq!(objects.len(), 1, "one partition, one object: {:?}", objects.keys().collect::<Vec<_>>());
    let mut expected = lines;
    expected.sort();
    assert!(all_lines(&objects) == expected, "every record exactly once");
    assert_eq!(budget.held(), 0, "every byte counted was released");
    // A source batch is about 1 MiB: its records were counted on their way.
    assert!(budget.peak() >= 512 << 10, "exchanged records were not counted: peak {} bytes", budget.peak());
    // Each worker checks the budget, then reads up to four batches of ~1.1 MiB before it checks
    // again; the one object, compressed, is a few KiB.
    let bound = LIMIT + 2 * 4 * (1 << 20) * 9 / 8 + (1 << 20);
    assert!(budget.peak() <= bound, "peak {} bytes against a bound of {bound}", budget.peak());
}

/// The example pipeline `pipelines/cloudtrail-archive.toml` as a user runs it (its buckets moved
/// into the test's folder): a trail's archive as CloudTrail delivers it, gzip files of
/// `{"Records":[…]}` under `AWSLogs/<account>/CloudTrail/<region>/…` beside digest files, becomes
/// Parquet partitioned by account, region and event day. DuckDB reads it back with hive
/// partitioning: every event once, each under the partition its own values name, and no digest
/// file read (one would have gone to the error output).
#[test]
fn the_example_cloudtrail_archive_pipeline_turns_a_trail_archive_into_a_partitioned_lake() {
    const EVENTS: u64 = 3_000;
    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join("AWSLogs");
    let events: Vec<serde_json::Value> =
        generated(Profile::Cloudtrail, 12, EVENTS).iter().map(|l| serde_json::from_str(l).unwrap()).collect();
    let mut expected: BTreeMap<String, u64> = BTreeMap::new();
    for event in &events {
        let day = &event["eventTime"].as_str().unwrap()[..10];
        let key =
            format!("{}/{}/{day}", event["recipientAccountId"].as_str().unwrap(), event["awsRegion"].as_str().unwrap());
        *expected.entry(key).or_default() += 1;
    }
    for (i, chunk) in events.chunks(700).enumerate() {
        let folder = archive.join(format!("11112222333{}/CloudTrail/eu-west-{}/2026/11/01", i % 2, i % 3 + 1));
        let file = folder.join(format!("111122223333_CloudTrail_eu-west-1_20261101T0{i}05Z_a{i}.json.gz"));
        super::support::write_gzip(&file, &serde_json::json!({ "Records": chunk }).to_string());
        let digest = archive.join(format!("11112222333{}/CloudTrail-Digest/eu-west-1/2026/11/01/d{i}.json.gz", i % 2));
        super::support::write_gzip(
            &digest,
            r#"{"awsAccountId":"111122223333","digestStartTime":"2026-11-01T00:00:00Z"}"#,
        );
    }
    let lake = dir.path().join("lake");
    let said = super::support::run_example_pipeline(
        dir.path(),
        "cloudtrail-archive",
        &[("s3://amzn-s3-demo-bucket/AWSLogs/", &archive), ("s3://amzn-s3-demo-bucket/lake/cloudtrail", &lake)],
        "cloudtrail.toml",
    );
    assert!(!lake.join("errors").exists(), "nothing went to the error output: {said}");
    let v = super::support::duckdb_json(
        &lake,
        "rows = c.execute(f\"select account || '/' || region || '/' || day, count(*) from {lake} group by 1\").fetchall()\n\
         wrong = c.execute(f\"select count(*) from {lake} where account != recipientaccountid or region != awsregion \
                             or day != strftime(eventtime, '%Y-%m-%d')\").fetchone()[0]\n\
         print(json.dumps({'partitions': dict(rows), 'wrong': wrong}))\n",
    );
    let partitions: BTreeMap<String, u64> = serde_json::from_value(v["partitions"].clone()).unwrap();
    assert_eq!(partitions, expected, "every event once, in its own partition");
    assert_eq!(v["wrong"], 0, "the partition columns match the rows");
}

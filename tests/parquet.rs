//! Parquet output read back by readers nobody here wrote: pyarrow and DuckDB (pinned, installed by
//! scripts/test.sh into target/test-venv). Types, values, nulls, nested data, decimals, timestamps,
//! row groups and statistics round-trip; records that do not fit land in the error output.

use std::path::Path;
use std::process::Command;

use serde_json::{Value, json};
use sluice_connectors::registry;
use sluice_engine::testkit::{file_pipeline_toml, run_pipeline};

use super::support::{folder_objects, python, repo_root, sluice};

/// What pyarrow and DuckDB see in each Parquet file under `dir`.
fn read_back(dir: &Path) -> Vec<Value> {
    let mut files: Vec<String> = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = entry.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|e| e == "parquet") {
                files.push(p.display().to_string());
            }
        }
    }
    assert!(!files.is_empty(), "no .parquet file under {}", dir.display());
    let out =
        Command::new(python()).arg(repo_root().join("tests/read_parquet.py")).args(&files).output().unwrap_or_else(
            |e| {
                panic!("cannot run {}: {e}; run scripts/test.sh, which installs pyarrow and duckdb", python().display())
            },
        );
    assert!(
        out.status.success(),
        "pyarrow/duckdb could not read the files (run scripts/test.sh to install them): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

const RECORDS: &[&str] = &[
    r#"{"ID":1,"name":"alice","ok":true,"small":-5,"big":9007199254740993,"ratio":0.25,"price":"12.345","day":"2026-11-01","timestamp":"2026-11-01T10:00:00.123456789Z","raw":"hi","User.Name":"Alice A","tags":["a","b"],"who":{"Type":"IAMUser","accountId":"123"},"counts":{"x":1,"y":2},"nested":[{"a":1,"b":["p"]},{"a":2,"b":[]}],"seen":"25/12/2026 08:30:00"}"#,
    r#"{"id":2,"timestamp":1793491200,"price":7,"seen":1793491200000}{"id":3,"timestamp":"2026-11-01 00:00:00.5","ok":"false","tags":[],"nested":null,"extra":"ignored"}"#,
    r#"{"id":4,"timestamp":1793491200.25,"who":{"type":null},"counts":{}}"#,
    r#"{"id":5,"small":300}"#,
    r#"{"name":"nobody"}"#,
    r#"{"id":6,"timestamp":"yesterday"}"#,
    r#"not json"#,
    r#"{"id":7,"name":"far too long name"}"#,
];

fn lake_toml(input: &Path, out: &Path) -> String {
    let sink_keys = r#"
format = "parquet"
compression = "zstd"
parquet = { row_group_mb = 1, writer_version = "v2" }
json = { dots_to_underscores = true, column_to_json_key = { ts = "timestamp" } }
prefix = "t/"

[sinks.out.schema]
columns = [
  { name = "id", type = "int", nullable = false },
  { name = "name", type = "varchar(8)" },
  { name = "ok", type = "boolean" },
  { name = "small", type = "tinyint" },
  { name = "big", type = "bigint" },
  { name = "ratio", type = "double" },
  { name = "price", type = "decimal(10,2)" },
  { name = "day", type = "date" },
  { name = "ts", type = "timestamp" },
  { name = "raw", type = "binary" },
  { name = "user_name", type = "string" },
  { name = "tags", type = "array<string>" },
  { name = "who", type = "struct<type:string,accountid:bigint>" },
  { name = "counts", type = "map<string,bigint>" },
  { name = "nested", type = "array<struct<a:int,b:array<string>>>" },
  { name = "seen", type = "timestamp", formats = ["dd/MM/yyyy HH:mm:ss", "epoch_millis"] },
]"#;
    file_pipeline_toml("parquet-types", input, &format!("file://{}", out.display()), sink_keys)
}

#[test]
fn every_type_round_trips_through_pyarrow_and_duckdb_and_misfits_go_to_the_error_output() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.ndjson");
    std::fs::write(&input, RECORDS.join("\n")).unwrap();
    let out = dir.path().join("lake");
    let (_, metrics) = run_pipeline(&lake_toml(&input, &out), &registry(), 2).unwrap();
    let m = &metrics.sinks[0];
    use std::sync::atomic::Ordering::Relaxed;
    assert_eq!(m.records_delivered.load(Relaxed), 3, "three records (four rows) fit");
    assert_eq!(m.records_failed.load(Relaxed), 5);
    // Firehose's conversion families: records converted and not, with their bytes as they came.
    let bytes = |records: &[&str]| records.iter().map(|r| r.len() as u64).sum::<u64>();
    let counted = [&m.converted_records, &m.converted_bytes, &m.conversion_failed_records, &m.conversion_failed_bytes];
    assert_eq!(counted.map(|c| c.load(Relaxed)), [3, bytes(&RECORDS[..3]), 5, bytes(&RECORDS[3..])]);
    let mut text = sluice_engine::metrics::PrometheusText::default();
    let label =
        sluice_engine::metrics::SinkLabel { name: "out".into(), kind: sluice_engine::destination::DestinationKind::S3 };
    metrics.render_prometheus(&mut text, "parquet-types", &[label], 0);
    let text = text.finish();
    for family in
        ["SucceedConversion_Records", "SucceedConversion_Bytes", "FailedConversion_Records", "FailedConversion_Bytes"]
    {
        assert!(
            text.contains(&format!("sluice_{family}{{stream=\"parquet-types\",destination=\"out\"}}")),
            "{family}: {text}"
        );
    }
    assert!(text.contains("sluice_FailedConversion_Records{stream=\"parquet-types\",destination=\"out\"} 5"), "{text}");

    let files = read_back(&out);
    let mut rows: Vec<Value> = files.iter().flat_map(|f| f["rows"].as_array().cloned().unwrap_or_default()).collect();
    rows.sort_by_key(|r| r["id"].as_i64());
    let expected = vec![
        json!({"id":1,"name":"alice","ok":true,"small":-5,"big":9007199254740993i64,"ratio":0.25,"price":"12.35","day":"2026-11-01",
               "ts":"2026-11-01T10:00:00.123456+00:00","raw":"6869","user_name":"Alice A","tags":["a","b"],
               "who":{"type":"IAMUser","accountid":123},"counts":[["x",1],["y",2]],
               "nested":[{"a":1,"b":["p"]},{"a":2,"b":[]}],"seen":"2026-12-25T08:30:00+00:00"}),
        json!({"id":2,"name":null,"ok":null,"small":null,"big":null,"ratio":null,"price":"7.00","day":null,
               "ts":"2026-11-01T00:00:00+00:00","raw":null,"user_name":null,"tags":null,"who":null,"counts":null,
               "nested":null,"seen":"2026-11-01T00:00:00+00:00"}),
        json!({"id":3,"name":null,"ok":false,"small":null,"big":null,"ratio":null,"price":null,"day":null,
               "ts":"2026-11-01T00:00:00.500000+00:00","raw":null,"user_name":null,"tags":[],"who":null,"counts":null,
               "nested":null,"seen":null}),
        json!({"id":4,"name":null,"ok":null,"small":null,"big":null,"ratio":null,"price":null,"day":null,
               "ts":"2026-11-01T00:00:00.250000+00:00","raw":null,"user_name":null,"tags":null,"who":{"type":null,"accountid":null},
               "counts":[],"nested":null,"seen":null}),
    ];
    assert_eq!(rows, expected);

    for f in &files {
        assert!(f["file"].as_str().is_some_and(|p| p.ends_with(".parquet") && p.contains("/t/")), "{}", f["file"]);
        let schema = &f["schema"];
        for (column, ty) in [
            ("id", "int32"),
            ("name", "string"),
            ("ok", "bool"),
            ("small", "int8"),
            ("big", "int64"),
            ("ratio", "double"),
            ("price", "decimal128(10, 2)"),
            ("day", "date32[day]"),
            ("ts", "timestamp[us, tz=UTC]"),
            ("raw", "binary"),
            ("tags", "list<element: string>"),
            ("who", "struct<type: string, accountid: int64>"),
            ("nested", "list<element: struct<a: int32, b: list<element: string>>>"),
        ] {
            assert_eq!(schema[column], ty, "column {column}");
        }
        // pyarrow names a Parquet map's group in its type string: `map<string, int64 ('counts')>`.
        assert!(schema["counts"].as_str().is_some_and(|t| t.starts_with("map<string, int64")), "{}", schema["counts"]);
        let ts = &f["physical"]["ts"];
        assert_eq!(ts[0], "INT64");
        let logical = ts[1].as_str().unwrap_or("");
        assert!(logical.contains("isAdjustedToUTC=true") && logical.contains("microseconds"), "{logical}");
        assert_eq!(f["duckdb_types"]["ts"], "TIMESTAMP WITH TIME ZONE");
        assert_eq!(f["duckdb_types"]["price"], "DECIMAL(10,2)");
        assert_eq!(f["duckdb_rows"], f["num_rows"]);
        assert_eq!(f["missing_statistics"], json!([]), "every column chunk has min/max statistics");
        assert!(f["created_by"].as_str().is_some_and(|c| c.starts_with("sluice")));
    }

    // The five misfits, each alone, with the column and the value named, as plain NDJSON (as
    // Firehose writes them: its CompressionFormat is UNCOMPRESSED with conversion), not compressed
    // with the file's page codec.
    let objects = folder_objects(&out);
    let error_objects: Vec<&String> = objects.keys().filter(|k| k.starts_with("t/format-conversion-failed/")).collect();
    assert!(!error_objects.is_empty(), "{:?}", objects.keys());
    for key in error_objects {
        let stored = std::fs::read(out.join(key)).unwrap_or_default();
        assert!(stored.starts_with(b"{\"") && !key.ends_with(".zst"), "{key}");
    }
    let docs: Vec<Value> = objects
        .iter()
        .filter(|(k, _)| k.starts_with("t/format-conversion-failed/"))
        .flat_map(|(_, lines)| lines.iter().map(|l| serde_json::from_str::<Value>(l).unwrap()))
        .collect();
    let mut messages: Vec<String> =
        docs.iter().map(|d| d["lastErrorMessage"].as_str().unwrap_or("").to_string()).collect();
    messages.sort();
    assert_eq!(messages.len(), 5, "{messages:?}");
    for (needle, value) in [
        ("column `small`", "300"),
        ("column `id`", "not nullable"),
        ("column `ts`", "yesterday"),
        ("column `name`", "far too long name"),
        ("column `(record)`", "not a JSON object"),
    ] {
        assert!(
            messages.iter().any(|m| m.contains(needle) && m.contains(value)),
            "no message with {needle} and {value}: {messages:?}"
        );
    }
    assert!(
        docs.iter().all(|d| d["lastErrorCode"] == "DataFormatConversion.MalformedData" && d["rawData"].is_string())
    );
}

#[test]
fn the_parquet_example_runs_and_writes_row_groups_with_statistics() {
    let work = tempfile::tempdir().unwrap();
    let pipeline = work.path().join("trail.toml");
    // The example pipeline, with small row groups so that one object holds several.
    let example = std::fs::read_to_string(repo_root().join("pipelines/cloudtrail-parquet.toml")).unwrap();
    let schema = repo_root().join("pipelines/schemas/cloudtrail.toml");
    let text = example
        .replace("schemas/cloudtrail.toml", &schema.display().to_string())
        .replace("row_group_mb = 64", "row_group_mb = 1");
    std::fs::write(&pipeline, text).unwrap();
    let out = sluice().current_dir(work.path()).args(["run", "--quiet"]).arg(&pipeline).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("delivered 50000 records"), "{stdout}");
    let files = read_back(&work.path().join("out/cloudtrail"));
    let rows: i64 = files.iter().map(|f| f["num_rows"].as_i64().unwrap()).sum();
    assert_eq!(rows, 50_000);
    assert!(files.iter().any(|f| f["row_groups"].as_i64().unwrap() > 1), "row groups are cut by size");
    for f in &files {
        assert_eq!(f["missing_statistics"], json!([]));
        assert_eq!(f["duckdb_rows"], f["num_rows"]);
        assert_eq!(f["schema"]["eventtime"], "timestamp[us, tz=UTC]");
        assert!(f["file"].as_str().unwrap().contains("/events/year="));
    }
    // Values survive: the first generated record's event time and user.
    let first = super::support::generated(sluice_connectors::synth::Profile::Cloudtrail, 7, 1);
    let first: Value = serde_json::from_str(&first[0]).unwrap();
    let all: Vec<&Value> = files.iter().flat_map(|f| f["rows"].as_array().unwrap().iter()).collect();
    let found = all.iter().find(|r| r["eventid"] == first["eventID"]).expect("first record present");
    assert_eq!(found["useridentity"]["username"], first["userIdentity"]["userName"]);
    let account: i64 = first["recipientAccountId"].as_str().unwrap().parse().unwrap();
    assert_eq!(found["recipientaccountid"], account, "the declared bigint holds the account id");
}

#[test]
fn an_inferred_schema_fits_the_first_records_and_later_misfits_go_to_the_error_output() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.ndjson");
    // 1,000 records fix the schema (n: bigint, when: timestamp, user: struct); the 1,001st does not fit.
    let mut lines: Vec<String> = (0..1000)
        .map(|i| {
            format!(r#"{{"N":{i},"when":"2026-11-01T00:00:{:02}Z","user":{{"Name":"u{i}"}},"tags":["t"]}}"#, i % 60)
        })
        .collect();
    lines.push(r#"{"n":"not a number"}"#.to_string());
    std::fs::write(&input, lines.join("\n")).unwrap();
    let out = dir.path().join("lake");
    let toml = file_pipeline_toml(
        "inferred",
        &input,
        &format!("file://{}", out.display()),
        "format = \"parquet\"\nschema = \"infer\"\nprefix = \"t/\"",
    );
    let (_, metrics) = run_pipeline(&toml, &registry(), 1).unwrap();
    use std::sync::atomic::Ordering::Relaxed;
    assert_eq!(metrics.sinks[0].records_delivered.load(Relaxed), 1000);
    assert_eq!(metrics.sinks[0].records_failed.load(Relaxed), 1);
    let files = read_back(&out);
    assert_eq!(files.len(), 1);
    let f = &files[0];
    assert_eq!(f["schema"]["n"], "int64");
    assert_eq!(f["schema"]["when"], "timestamp[us, tz=UTC]");
    assert_eq!(f["schema"]["user"], "struct<name: string>");
    assert_eq!(f["schema"]["tags"], "list<element: string>");
    assert_eq!(f["num_rows"], 1000);
    let rows = f["rows"].as_array().unwrap();
    assert_eq!(rows[7], json!({"n": 7, "tags": ["t"], "user": {"name": "u7"}, "when": "2026-11-01T00:00:07+00:00"}));
    let errors = folder_objects(&out);
    let doc =
        errors.iter().find(|(k, _)| k.starts_with("t/format-conversion-failed/")).map(|(_, l)| l[0].clone()).unwrap();
    assert!(doc.contains("column `n`") && doc.contains("not a number"), "{doc}");
}

#[test]
fn a_parquet_object_uploaded_in_parts_is_one_valid_file() {
    let work = tempfile::tempdir().unwrap();
    let out = work.path().join("lake");
    let schema = repo_root().join("pipelines/schemas/cloudtrail.toml");
    // Uncompressed pages and 1 MiB row groups: finished row groups pass 8 MiB, so parts go out
    // before the object is sealed.
    let toml = format!(
        "[pipeline]\nname = \"pq-parts\"\n[sources.trail]\ntype = \"generator\"\nprofile = \"cloudtrail\"\nrecords = 30000\nseed = 9\n\
         [sinks.lake]\ntype = \"object_store\"\ninputs = [\"trail\"]\nurl = \"file://{}\"\nformat = \"parquet\"\ncompression = \"none\"\n\
         schema = \"{}\"\nparquet = {{ row_group_mb = 1, dictionary = false }}\n",
        out.display(),
        schema.display()
    );
    let (_, metrics) = run_pipeline(&toml, &registry(), 1).unwrap();
    use std::sync::atomic::Ordering::Relaxed;
    assert!(metrics.sinks[0].parts.load(Relaxed) >= 1, "no part was sent while the object grew");
    let files = read_back(&out);
    assert_eq!(files.len(), 1);
    assert_eq!(files[0]["num_rows"], 30000);
    assert!(files[0]["row_groups"].as_i64().unwrap() > 1, "{}", files[0]["row_groups"]);
    assert_eq!(files[0]["missing_statistics"], json!([]));
    assert_eq!(files[0]["duckdb_rows"], 30000);
}

//! The `enrich` transform (issue 17) against independent oracles: Geo-IP and ASN values for every
//! network of MaxMind's test databases (tests/fixtures/mmdb, Apache-2.0/MIT) against the Python
//! `maxminddb` reader on the same files; user agents against uap-core's own test cases
//! (tests/fixtures/uap, converted from the YAML the ua-parser crate ships); a database replaced on
//! disk is reloaded and a truncated one keeps the loaded data; the same output at 1, 2 and 4
//! workers; the conformance kit; config errors that say what is wrong.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;
use sluice_connectors::registry;
use sluice_connectors::synth::Profile;
use sluice_engine::contract::{Transform, TransformOutput};
use sluice_engine::metrics::TransformMetrics;
use sluice_engine::record::{RecordBatch, Records};
use sluice_engine::testkit::transform::{TransformCheck, conformance, lone_worker, run_transform};
use sluice_engine::testkit::{plan_from_str, run_pipeline};

use super::support::{memory_objects, python, repo_root};

fn fixture(name: &str) -> String {
    repo_root().join("tests/fixtures/mmdb").join(name).display().to_string()
}

/// An enrich transform `[transforms.e]` with the parts `parts` (TOML lines), resolved.
fn enrich(parts: &str) -> Arc<dyn Transform> {
    let toml = format!(
        "[pipeline]\nname = \"e\"\n[sources.gen]\ntype = \"generator\"\nprofile = \"cloudfront\"\nrecords = 1\n\
         [transforms.e]\ntype = \"enrich\"\ninputs = [\"gen\"]\n{parts}\n\
         [sinks.o]\ntype = \"object_store\"\ninputs = [\"e\"]\nurl = \"memory://e/o\"\n"
    );
    let plan = plan_from_str(&toml, &registry()).unwrap_or_else(|e| panic!("{e}"));
    Arc::clone(&plan.transforms[0].transform)
}

fn batch(records: &[String]) -> RecordBatch {
    let mut b = RecordBatch::with_capacity(1_000, 0);
    records.iter().for_each(|r| b.push(r.as_bytes()));
    b
}

fn enriched(transform: &Arc<dyn Transform>, records: &[String]) -> Vec<Value> {
    let run = run_transform(transform, vec![batch(records)], Duration::from_secs(10)).unwrap();
    run.delivered.iter().map(|r| serde_json::from_slice(r).unwrap()).collect()
}

/// What the Python `maxminddb` reader answers for the first address of every network of the City
/// and ASN test databases, and for a few addresses they do not hold, in our fields.
const ORACLE: &str = r#"
import json, sys, maxminddb
city = maxminddb.open_database(sys.argv[1])
asn = maxminddb.open_database(sys.argv[2])
addresses = sorted({str(net.network_address) for net, _ in city} | {str(net.network_address) for net, _ in asn})
addresses += ["10.0.0.1", "127.0.0.1", "::1", "8.8.8.8"]
out = []
for ip in addresses:
    g, a = city.get(ip) or {}, asn.get(ip) or {}
    geo = {}
    if "iso_code" in g.get("country", {}): geo["country_code"] = g["country"]["iso_code"]
    if "en" in g.get("country", {}).get("names", {}): geo["country"] = g["country"]["names"]["en"]
    if "en" in g.get("city", {}).get("names", {}): geo["city"] = g["city"]["names"]["en"]
    loc = g.get("location", {})
    if "latitude" in loc and "longitude" in loc: geo["lat"], geo["lon"] = loc["latitude"], loc["longitude"]
    n = {}
    if "autonomous_system_number" in a: n["number"] = a["autonomous_system_number"]
    if "autonomous_system_organization" in a: n["org"] = a["autonomous_system_organization"]
    out.append({"ip": ip, "geo": geo or None, "asn": n or None})
print(json.dumps(out))
"#;

#[test]
fn geo_and_asn_values_match_the_python_maxminddb_reader_on_every_test_network() {
    let (city, asn) = (fixture("GeoIP2-City-Test.mmdb"), fixture("GeoLite2-ASN-Test.mmdb"));
    let output = Command::new(python()).args(["-c", ORACLE, &city, &asn]).output().unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let expected: Vec<Value> = serde_json::from_slice(&output.stdout).unwrap();
    assert!(expected.len() > 600, "{} addresses", expected.len());
    // Top-level targets are appended to the record's bytes; a nested one goes through a parsed tree.
    for (geo_target, asn_target, asn_pointer) in [("geo", "asn", "/asn"), ("geo", "net.asn", "/net/asn")] {
        let transform = enrich(&format!(
            "geoip = {{ database = \"{city}\", field = \"c_ip\", target = \"{geo_target}\" }}\n\
             asn = {{ database = \"{asn}\", field = \"c_ip\", target = \"{asn_target}\" }}"
        ));
        let records: Vec<String> =
            expected.iter().map(|e| serde_json::json!({"c_ip": e["ip"], "n": 1}).to_string()).collect();
        let got = enriched(&transform, &records);
        assert_eq!(got.len(), expected.len());
        let (mut geo_hits, mut asn_hits) = (0, 0);
        for (record, want) in got.iter().zip(&expected) {
            let geo = record.get("geo").cloned().unwrap_or(Value::Null);
            let asn = record.pointer(asn_pointer).cloned().unwrap_or(Value::Null);
            assert_eq!((&geo, &asn), (&want["geo"], &want["asn"]), "{asn_target}: {} {record}", want["ip"]);
            assert_eq!(record["n"], 1, "the record's own fields stay");
            geo_hits += usize::from(!geo.is_null());
            asn_hits += usize::from(!asn.is_null());
        }
        assert!(geo_hits > 100 && asn_hits > 100, "{geo_hits} geo, {asn_hits} asn");
    }
}

/// uap-core's test cases: `user_agent_string` with the browser (`family`, `major`, `minor`,
/// `patch`) or, for the OS files, the OS it must be parsed as.
#[test]
fn user_agents_match_uap_core_test_cases() {
    let transform = enrich("user_agent = { field = \"agent\", target = \"ua\" }");
    let dir = repo_root().join("tests/fixtures/uap");
    let version = |case: &Value, keys: &[&str]| {
        let parts: Vec<&str> = keys.iter().map_while(|k| case[*k].as_str().filter(|s| !s.is_empty())).collect();
        (!parts.is_empty()).then(|| parts.join("."))
    };
    let mut checked = 0;
    for (file, os) in [
        ("firefox_user_agent_strings.json", false),
        ("opera_mini_user_agent_strings.json", false),
        ("podcasting_user_agent_strings.json", false),
        ("additional_os_tests.json", true),
    ] {
        let cases: Value = serde_json::from_slice(&std::fs::read(dir.join(file)).unwrap()).unwrap();
        let cases = cases["test_cases"].as_array().unwrap();
        let records: Vec<String> =
            cases.iter().map(|c| serde_json::json!({"agent": c["user_agent_string"]}).to_string()).collect();
        for (record, case) in enriched(&transform, &records).iter().zip(cases) {
            let ua = &record["ua"];
            let (name, version_key) = if os { ("os", "os_version") } else { ("browser", "browser_version") };
            let keys: &[&str] =
                if os { &["major", "minor", "patch", "patch_minor"] } else { &["major", "minor", "patch"] };
            assert_eq!(ua[name], case["family"], "{file}: {}", case["user_agent_string"]);
            assert_eq!(
                ua[version_key].as_str().map(str::to_string),
                version(case, keys),
                "{file}: {}",
                case["user_agent_string"]
            );
            checked += 1;
        }
    }
    assert!(checked > 300, "{checked} cases");
}

/// One worker of `transform`, fed by hand.
fn worker(
    transform: &Arc<dyn Transform>,
    metrics: &Arc<TransformMetrics>,
) -> (Box<dyn sluice_engine::contract::TransformWorker>, tokio::runtime::Runtime) {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let context = lone_worker(runtime.handle().clone(), Arc::clone(metrics));
    (transform.open(&context).unwrap(), runtime)
}

fn push(worker: &mut Box<dyn sluice_engine::contract::TransformWorker>, record: &str) -> Value {
    let mut out = TransformOutput::default();
    worker.push(batch(&[record.to_string()]), 0, &mut out);
    let (items, _) = out.take();
    match &items[0].1 {
        Records::Deliver(b) => serde_json::from_slice(b.iter().next().unwrap()).unwrap(),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_database_replaced_on_disk_is_reloaded_and_a_truncated_one_keeps_the_loaded_data() {
    let dir = tempfile::tempdir().unwrap();
    let live = dir.path().join("geo.mmdb");
    std::fs::copy(fixture("GeoIP2-City-Test.mmdb"), &live).unwrap();
    let transform =
        enrich(&format!("geoip = {{ database = \"{}\", field = \"ip\", target = \"geo\" }}", live.display()));
    let metrics = Arc::new(TransformMetrics::default());
    let (mut worker, _runtime) = worker(&transform, &metrics);
    let record = r#"{"ip":"81.2.69.142"}"#;
    assert_eq!(push(&mut worker, record)["geo"]["city"], "London");
    // An updater's atomic rename of a database without cities (the Country test database).
    let next = dir.path().join("geo.mmdb.tmp");
    std::fs::copy(fixture("GeoIP2-Country-Test.mmdb"), &next).unwrap();
    std::fs::rename(&next, &live).unwrap();
    let reloaded = wait_for(|| push(&mut worker, record)["geo"].get("city").is_none());
    assert!(reloaded, "the new database is used within seconds");
    assert_eq!(push(&mut worker, record)["geo"]["country_code"], "GB");
    // A half-written file: the loaded database stays, the failure is counted.
    let bytes = std::fs::read(fixture("GeoIP2-City-Test.mmdb")).unwrap();
    std::fs::write(&live, &bytes[..bytes.len() / 3]).unwrap();
    let counted = wait_for(|| {
        push(&mut worker, record);
        labelled(&metrics, "EnrichmentReloadFailures") == 1
    });
    assert!(counted, "{:?}", metrics.labelled.lock().unwrap());
    assert_eq!(push(&mut worker, record)["geo"]["country_code"], "GB", "the loaded data stays");
    assert_eq!(labelled(&metrics, "EnrichmentReloads"), 1);
}

fn labelled(metrics: &TransformMetrics, family: &str) -> u64 {
    metrics.labelled.lock().unwrap().iter().filter(|((f, _, _), _)| f.name == family).map(|(_, n)| n).sum()
}

/// Polls `done` for up to 10 s.
fn wait_for(mut done: impl FnMut() -> bool) -> bool {
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(10) {
        if done() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    false
}

#[test]
fn cloudfront_records_are_enriched_the_same_at_1_2_and_4_workers_and_pass_the_kit() {
    let (city, asn) = (fixture("GeoIP2-City-Test.mmdb"), fixture("GeoLite2-ASN-Test.mmdb"));
    let parts = format!(
        "geoip = {{ database = \"{city}\", field = \"c_ip\", target = \"geo\" }}\n\
         asn = {{ database = \"{asn}\", field = \"c_ip\", target = \"asn\" }}\n\
         user_agent = {{ field = \"cs_user_agent\", target = \"ua\", url_decoded = true }}"
    );
    let mut outputs = Vec::new();
    for workers in [1, 2, 4] {
        let toml = format!(
            "[pipeline]\nname = \"cf\"\n[sources.gen]\ntype = \"generator\"\nprofile = \"cloudfront\"\nrecords = 3000\nseed = 5\n\
             [transforms.e]\ntype = \"enrich\"\ninputs = [\"gen\"]\n{parts}\n\
             [sinks.o]\ntype = \"object_store\"\ninputs = [\"e\"]\nurl = \"memory://enrich-{workers}/o\"\nformat = \"ndjson\"\n"
        );
        let (_, metrics) = run_pipeline(&toml, &registry(), workers).unwrap();
        assert_eq!(metrics.sinks[0].records_delivered.load(std::sync::atomic::Ordering::Relaxed), 3000);
        let mut lines: Vec<String> = memory_objects(&format!("enrich-{workers}")).into_values().flatten().collect();
        lines.sort();
        outputs.push(lines);
    }
    assert_eq!(outputs[0], outputs[1]);
    assert_eq!(outputs[0], outputs[2]);
    let decoded: Vec<Value> = outputs[0].iter().map(|l| serde_json::from_str(l).unwrap()).collect();
    let mut browsers: BTreeMap<String, usize> = BTreeMap::new();
    for record in &decoded {
        *browsers.entry(record["ua"]["browser"].as_str().unwrap().to_string()).or_default() += 1;
    }
    // The generator's agents: Windows and Mac Mozilla without a browser token, CloudFront itself
    // (uap-core: browser "Other"), and curl.
    assert!(browsers.contains_key("curl") && browsers.contains_key("Other"), "{browsers:?}");
    assert!(decoded.iter().any(|r| r["ua"]["os"] == "Windows"), "url-decoded before parsing");

    let records: Vec<Vec<u8>> = super::support::generated(Profile::Cloudfront, 3, 40)
        .into_iter()
        .chain(["not json".to_string(), "{\"c_ip\":\"not an address\"}".to_string()])
        .map(String::into_bytes)
        .collect();
    let report = conformance(&enrich(&parts), &records, true, Duration::from_secs(10)).unwrap();
    assert!(
        report.passed(TransformCheck::AccountsForEveryRecord) && report.passed(TransformCheck::IndependentOfBatching)
    );
}

#[test]
fn enrich_config_errors_say_what_is_wrong() {
    let base = |parts: &str| {
        format!(
            "[pipeline]\nname = \"e\"\n[sources.gen]\ntype = \"generator\"\nprofile = \"cloudfront\"\nrecords = 1\n\
             [transforms.e]\ntype = \"enrich\"\ninputs = [\"gen\"]\n{parts}\n\
             [sinks.o]\ntype = \"object_store\"\ninputs = [\"e\"]\nurl = \"memory://e/o\"\n"
        )
    };
    let error = |parts: &str| plan_from_str(&base(parts), &registry()).err().map(|e| e.to_string()).unwrap_or_default();
    let missing = error("geoip = { database = \"nowhere.mmdb\", field = \"ip\", target = \"geo\" }");
    assert!(missing.contains("10:9") && missing.contains("nowhere.mmdb") && missing.contains("MaxMind"), "{missing}");
    let asn_as_city = error(&format!(
        "geoip = {{ database = \"{}\", field = \"ip\", target = \"geo\" }}",
        fixture("GeoLite2-ASN-Test.mmdb")
    ));
    assert!(asn_as_city.contains("GeoLite2-ASN") && asn_as_city.contains("City"), "{asn_as_city}");
    let tables = error("tables = [{ path = \"t.csv\", field = \"ip\", key = \"ip\", target = \"t\" }]");
    assert!(tables.contains("10:10") && tables.contains("cannot read") && tables.contains("t.csv"), "{tables}");
    let dir = tempfile::tempdir().unwrap();
    let assets = dir.path().join("assets.csv");
    std::fs::write(&assets, "addr,owner\n1.1.1.1,ann\n").unwrap();
    let no_key = error(&format!(
        "tables = [{{ path = \"{}\", field = \"ip\", key = \"ip\", target = \"t\" }}]",
        assets.display()
    ));
    assert!(no_key.contains("no column `ip`") && no_key.contains("`addr`, `owner`"), "{no_key}");
    let nothing = error("");
    assert!(nothing.contains("changes nothing"), "{nothing}");
    let unknown = error("geoip = { database = \"x\", field = \"ip\", target = \"geo\", extra = 1 }");
    assert!(unknown.contains("extra"), "{unknown}");
}

/// Edge locations of the generator's CloudFront records, with `version` as the table's version.
fn edges_table(version: &str) -> String {
    let mut text = "location,city,version\n".to_string();
    for (location, city) in [
        ("IAD89-C1", "Ashburn"),
        ("FRA56-P7", "Frankfurt"),
        ("NRT57-C3", "Tokyo"),
        ("SFO5-P2", "San Francisco"),
        ("LHR61-P4", "London"),
        ("GRU3-C1", "São Paulo, \"Guarulhos\""),
    ] {
        text.push_str(&format!("{location},\"{}\",{version}\n", city.replace('"', "\"\"")));
    }
    text
}

/// Writes `text` next to `path` and renames it into place, as updaters do.
fn replace_file(path: &Path, text: &str) {
    let next = path.with_extension("next");
    std::fs::write(&next, text).unwrap();
    std::fs::rename(&next, path).unwrap();
}

#[test]
fn a_table_lookup_passes_the_conformance_kit_with_keys_found_missing_and_unknown() {
    let dir = tempfile::tempdir().unwrap();
    let table = dir.path().join("owners.ndjson");
    std::fs::write(&table, "{\"id\":7,\"owner\":\"ann\"}\n{\"id\":\"x\",\"owner\":\"bob\",\"tags\":[1]}\n").unwrap();
    let transform = enrich(&format!(
        "tables = [{{ path = \"{}\", field = \"who.id\", key = \"id\", target = \"meta.owner\" }}]",
        table.display()
    ));
    let records: Vec<Vec<u8>> = [
        r#"{"who":{"id":7}}"#,
        r#"{"who":{"id":"x"},"meta":{"keep":1}}"#,
        r#"{"who":{"id":"nobody"}}"#,
        r#"{"other":1}"#,
        "not json",
    ]
    .iter()
    .map(|r| r.as_bytes().to_vec())
    .collect();
    let report = conformance(&transform, &records, true, Duration::from_secs(20)).unwrap();
    assert!(
        report.passed(TransformCheck::AccountsForEveryRecord) && report.passed(TransformCheck::IndependentOfBatching)
    );
    let run = run_transform(
        &transform,
        vec![batch(&records.iter().map(|r| String::from_utf8_lossy(r).into_owned()).collect::<Vec<_>>())],
        Duration::from_secs(20),
    )
    .unwrap();
    let out: Vec<String> = run.delivered.iter().map(|r| String::from_utf8_lossy(r).into_owned()).collect();
    let value = |i: usize| serde_json::from_str::<Value>(&out[i]).unwrap();
    assert_eq!(value(0)["meta"]["owner"], serde_json::json!({"id": 7, "owner": "ann"}));
    assert_eq!(value(1)["meta"], serde_json::json!({"keep": 1, "owner": {"id": "x", "owner": "bob", "tags": [1]}}));
    assert_eq!(out[2], r#"{"who":{"id":"nobody"}}"#);
    assert_eq!(out[3], r#"{"other":1}"#);
    assert_eq!(out[4], "not json");
}

#[test]
fn a_table_replaced_mid_stream_is_seen_from_then_on_and_a_truncated_one_keeps_the_loaded_rows() {
    use std::sync::atomic::Ordering::Relaxed;
    for workers in [1, 2, 4] {
        let dir = tempfile::tempdir().unwrap();
        let table = dir.path().join("edges.csv");
        std::fs::write(&table, edges_table("1")).unwrap();
        // `seen` stamps each record with the wall clock as it passes, to compare with the renames.
        let toml = format!(
            "[pipeline]\nname = \"t\"\n[sources.gen]\ntype = \"generator\"\nprofile = \"cloudfront\"\nrate = 2000\n\
             [transforms.stamp]\ntype = \"jq\"\ninputs = [\"gen\"]\nquery = '. + {{seen: now}}'\n\
             [transforms.e]\ntype = \"enrich\"\ninputs = [\"stamp\"]\n\
             tables = [{{ path = \"{}\", field = \"x_edge_location\", key = \"location\", target = \"edge\" }}]\n\
             [sinks.o]\ntype = \"object_store\"\ninputs = [\"e\"]\nurl = \"memory://tables-{workers}/o\"\nformat = \"ndjson\"\n",
            table.display()
        );
        let plan = plan_from_str(&toml, &registry()).unwrap_or_else(|e| panic!("{e}"));
        let metrics = Arc::new(plan.new_metrics());
        let mut options = sluice_engine::runtime::RunOptions::for_plan(&plan);
        options.workers = workers;
        let stop = options.stop.clone();
        let counters = Arc::clone(&metrics);
        let run = std::thread::spawn(move || sluice_engine::runtime::run(&plan, &options, counters));
        let clock = || std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64();
        std::thread::sleep(Duration::from_secs(3));
        let renamed = clock();
        replace_file(&table, &edges_table("2"));
        std::thread::sleep(Duration::from_secs(4));
        let truncated = clock();
        let whole = edges_table("3");
        replace_file(&table, &whole[..whole.len() - 12]);
        std::thread::sleep(Duration::from_secs(3));
        stop.stop();
        run.join().unwrap().unwrap_or_else(|e| panic!("{e}"));

        let lines: Vec<Value> = memory_objects(&format!("tables-{workers}"))
            .into_values()
            .flatten()
            .map(|l| serde_json::from_str(&l).unwrap())
            .collect();
        assert_eq!(lines.len() as u64, metrics.sources[0].records.load(Relaxed), "every record delivered");
        let (mut before, mut after) = (0, 0);
        for record in &lines {
            let seen = record["seen"].as_f64().unwrap();
            let version = record["edge"]["version"].as_str().unwrap_or_else(|| panic!("not enriched: {record}"));
            assert_eq!(record["edge"]["location"], record["x_edge_location"]);
            // Around the rename either version is right (the change is stamped with the epoch after
            // the one the records had reached when it was seen); well before and well after, only one.
            if seen < renamed - 2.5 {
                assert_eq!(version, "1", "{workers} workers, {:.1} s before the rename: {record}", renamed - seen);
                before += 1;
            } else if seen > renamed + 2.5 {
                assert_eq!(version, "2", "{workers} workers, {:.1} s after the rename: {record}", seen - renamed);
                after += 1;
            }
        }
        assert!(before > 0 && after > 0, "{before} before, {after} after");
        assert!(lines.iter().any(|r| r["seen"].as_f64().unwrap() > truncated + 1.0), "records after the truncation");
        let t = &metrics.transforms[1];
        let count = |family: &str| {
            t.labelled
                .lock()
                .unwrap()
                .iter()
                .filter(|((f, _, v), _)| f.name == family && v == "table:edge")
                .map(|(_, n)| *n)
                .sum::<u64>()
        };
        assert_eq!((count("EnrichmentReloads"), count("EnrichmentReloadFailures")), (1, 1), "{workers} workers");
        assert_eq!(count("EnrichmentHits"), lines.len() as u64);
        assert_eq!(t.keys_held.load(Relaxed), 6);
    }
}

#[test]
fn the_example_pipeline_runs_on_the_test_databases() {
    let example = repo_root().join("pipelines/cloudfront-enrich.toml");
    let text = std::fs::read_to_string(&example).unwrap();
    assert!(Path::new(&example).exists() && text.contains("type = \"enrich\""));
    let plan = sluice_engine::config::load_file(&example, &registry());
    assert!(plan.is_ok(), "{:?}", plan.err().map(|e| e.to_string()));
    // Run it, smaller and into memory, from the pipelines folder (its paths are relative to it).
    let copy = repo_root().join("pipelines").join(format!(".test-{}.toml", std::process::id()));
    let text = text
        .replace("records = 100000", "records = 2000")
        .replace("file://./out/cloudfront-enriched", "memory://example/o");
    std::fs::write(&copy, &text).unwrap();
    let plan = sluice_engine::config::load_file(&copy, &registry());
    let _ = std::fs::remove_file(&copy);
    let plan = plan.unwrap_or_else(|e| panic!("{e}"));
    let metrics = Arc::new(plan.new_metrics());
    let mut options = sluice_engine::runtime::RunOptions::for_plan(&plan);
    options.workers = 2;
    sluice_engine::runtime::run(&plan, &options, Arc::clone(&metrics)).unwrap_or_else(|e| panic!("{e}"));
    let lines: Vec<Value> =
        memory_objects("example").into_values().flatten().map(|l| serde_json::from_str(&l).unwrap()).collect();
    assert_eq!(lines.len(), 2000);
    assert!(lines.iter().all(|r| r["edge"]["location"] == r["x_edge_location"] && r["ua"]["browser"].is_string()));
    assert!(lines.iter().any(|r| r["edge"]["city"] == "São Paulo, Guarulhos"));
}

//! `sluice bench` end to end on a tiny input: every scenario runs (or is noted as not run), each
//! case twice alternating, and the Markdown, JSON and SVG results are written. No timing is
//! asserted: only that the harness works and reports what it skipped.

use super::support::sluice;

#[test]
fn the_bench_harness_runs_every_scenario_and_writes_its_three_reports() {
    let out = tempfile::tempdir().unwrap();
    let run = sluice().args(["bench", "--size", "400KB", "--runs", "2", "--out"]).arg(out.path()).output().unwrap();
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(run.status.success(), "{stdout}{}", String::from_utf8_lossy(&run.stderr));

    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.path().join("results.json")).unwrap()).unwrap();
    let cases = json["cases"].as_array().unwrap();
    let names: Vec<&str> = cases.iter().map(|c| c["case"].as_str().unwrap()).collect();
    for expected in [
        "sluice gzip",
        "sluice zstd",
        "sluice parquet snappy",
        "sluice parquet zstd",
        "sluice gzip workers=2",
        "sluice http_endpoint gzip",
        "sluice opensearch gzip",
        "sluice postgres (staged, COPY)",
        "sluice redact+jq gzip",
        "sluice parse vpc_flow",
        "sluice partitioned gzip",
        "sluice ingest (SigV4, fsync log, zstd)",
        "sluice ingest, log encrypted (AES-256-GCM)",
    ] {
        assert!(names.contains(&expected), "{expected} missing from {names:?}");
    }
    for case in cases {
        assert_eq!(case["runs"].as_array().unwrap().len(), 2, "{case}");
        assert!(case["input_bytes"].as_u64().unwrap() > 300_000, "{case}");
        assert!(case["peak_rss_mib"]["median"].as_f64().unwrap() > 0.0, "{case}");
        let wall = &case["wall_s"];
        assert!(wall["min"].as_f64() <= wall["median"].as_f64() && wall["median"].as_f64() <= wall["max"].as_f64());
    }
    // Every baseline the harness knows is either measured (and compared) or noted as skipped.
    let notes: Vec<&str> = json["notes"].as_array().unwrap().iter().map(|n| n.as_str().unwrap()).collect();
    let comparisons = json["comparisons"].as_array().unwrap();
    for baseline in [
        "pigz",
        "gzip -6",
        "rsyslog",
        "zstd -3",
        "duckdb snappy",
        "duckdb zstd",
        "pyarrow snappy, same schema",
        "pyarrow zstd, same schema",
        "pyarrow snappy, inferred schema",
        "syslog-ng",
        "filebeat",
        "jq -c",
        "psql \\copy",
    ] {
        let measured = comparisons.iter().any(|c| c["against"].as_str().unwrap().starts_with(baseline));
        let noted = notes.iter().any(|n| n.contains(baseline) && n.contains("skipped"));
        assert!(measured || noted, "{baseline}: neither measured nor noted");
    }
    assert!(comparisons.iter().any(|c| c["about"] == "memory" && c["case"] == "sluice parquet workers=1 10x input"));
    // The headline Parquet baselines are given sluice's schema; the inferring ones say they differ.
    for c in comparisons.iter().filter(|c| c["scenario"] == "parquet") {
        let (against, meaning) = (c["against"].as_str().unwrap(), c["meaning"].as_str().unwrap());
        assert_eq!(against.ends_with("same schema"), meaning.contains("declared schema"), "{c}");
        assert_eq!(against.ends_with("inferred schema"), meaning.contains("not the same work"), "{c}");
    }

    let md = std::fs::read_to_string(out.path().join("results.md")).unwrap();
    assert!(md.contains("## Ratios") && md.contains("| gzip | **sluice gzip** |"), "{md}");
    assert_eq!(md, stdout, "stdout is the Markdown report");
    let svg = std::fs::read_to_string(out.path().join("results.svg")).unwrap();
    assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
    assert_eq!(svg.matches("<rect").count(), 1 + 2 * cases.len(), "a background and two bars per case");
    // The generated input stays for the next run; the work outputs are gone.
    assert!(out.path().join("data").read_dir().unwrap().count() >= 2);
}

/// Issue 11, item 13: a relative `--out` (what the README runs) and baselines that fail or exit at
/// once: the bench notes each failed baseline and finishes, instead of waiting for it, and leaves
/// only its results and its input cache behind.
#[test]
fn failing_baselines_are_noted_and_a_relative_out_works() {
    let dir = tempfile::tempdir().unwrap();
    let bin = dir.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    // pigz fails, rsyslogd exits at once, and gzip "succeeds" but writes half its output: each is a
    // noted failure, none a figure.
    for (name, script) in [
        ("pigz", "#!/bin/sh\necho broken >&2\nexit 1\n"),
        ("rsyslogd", "#!/bin/sh\nexit 3\n"),
        ("gzip", "#!/bin/sh\nhead -c 20000 | /bin/gzip \"$@\"\n"),
    ] {
        let path = bin.join(name);
        std::fs::write(&path, script).unwrap();
        std::process::Command::new("chmod").arg("+x").arg(&path).status().unwrap();
    }
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap_or_default());
    let started = std::time::Instant::now();
    let run = sluice()
        .current_dir(dir.path())
        .env("PATH", path)
        .args(["bench", "--scenario", "gzip", "--size", "100KB", "--runs", "1", "--out", "results"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(run.status.success(), "{stdout}{}", String::from_utf8_lossy(&run.stderr));
    assert!(started.elapsed() < std::time::Duration::from_secs(120), "took {:?}", started.elapsed());
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("results/results.json")).unwrap()).unwrap();
    let notes: Vec<&str> = json["notes"].as_array().unwrap().iter().map(|n| n.as_str().unwrap()).collect();
    for baseline in ["pigz", "rsyslog", "gzip -6"] {
        assert!(notes.iter().any(|n| n.contains(baseline) && n.contains("failed")), "{baseline}: {notes:?}");
    }
    assert!(notes.iter().any(|n| n.contains("gzip -6") && n.contains("records")), "the short output: {notes:?}");
    let cases: Vec<&str> = json["cases"].as_array().unwrap().iter().map(|c| c["case"].as_str().unwrap()).collect();
    assert!(cases.contains(&"sluice gzip") && !cases.iter().any(|c| c.starts_with("pigz")), "{cases:?}");
    assert!(!cases.contains(&"gzip -6"), "{cases:?}");
    let left: Vec<String> = std::fs::read_dir(dir.path().join("results"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert!(!left.contains(&"work".to_string()), "{left:?}");
}

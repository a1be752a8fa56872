//! Config errors: every fixture in tests/fixtures/config yields exactly the diagnostics in its
//! `.expected` file (file:line:col, message, hint). `SLUICE_BLESS=1` rewrites the expectations.

use std::path::Path;

use sluice_connectors::registry;
use sluice_engine::config::load_file;

fn rendered(path: &Path) -> String {
    let registry = registry();
    match load_file(path, &registry) {
        Ok(_) => "ok\n".to_string(),
        Err(d) => {
            let mut out = String::new();
            for (line, item) in d.short().iter().zip(&d.items) {
                let line =
                    line.replace(&d.file, path.file_name().map(|f| f.to_string_lossy()).unwrap_or_default().as_ref());
                out.push_str(&line);
                out.push('\n');
                if let Some(h) = &item.hint {
                    out.push_str(&format!("  hint: {h}\n"));
                }
            }
            out
        }
    }
}

#[test]
fn every_fixture_reports_its_expected_errors() {
    let dir = super::support::repo_root().join("tests/fixtures/config");
    let mut checked = 0;
    let mut entries: Vec<_> =
        std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{e}")).flatten().map(|e| e.path()).collect();
    entries.sort();
    for path in entries.into_iter().filter(|p| p.extension().is_some_and(|e| e == "toml")) {
        let got = rendered(&path);
        let expected_path = path.with_extension("expected");
        if std::env::var_os("SLUICE_BLESS").is_some() {
            std::fs::write(&expected_path, &got).unwrap_or_else(|e| panic!("{e}"));
        }
        let expected =
            std::fs::read_to_string(&expected_path).unwrap_or_else(|e| panic!("{}: {e}", expected_path.display()));
        assert_eq!(got, expected, "{}", path.display());
        assert_ne!(got, "ok\n", "{} should fail", path.display());
        checked += 1;
    }
    assert!(checked >= 8, "only {checked} fixtures");
}

#[test]
fn every_example_pipeline_validates() {
    let dir = super::support::repo_root().join("pipelines");
    let files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{e}"))
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    assert!(files.len() >= 5, "{files:?}");
    // As a user runs them on a fresh machine: nothing set in the environment.
    let out = super::support::sluice()
        .arg("validate")
        .args(&files)
        .env_remove("SIEM_ACCESS_KEY")
        .output()
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn validate_exits_1_with_positions_and_0_with_the_graph() {
    let validate = |file: &str| {
        super::support::sluice().arg("validate").arg(super::support::repo_root().join(file)).output().unwrap()
    };
    let out = validate("tests/fixtures/config/unknown_keys.toml");
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("unknown_keys.toml:3:1"), "{stderr}");
    assert!(stderr.contains("did you mean `workers`?"), "{stderr}");
    assert!(stderr.contains("3 errors"), "{stderr}");

    let out = validate("pipelines/quickstart.toml");
    assert_eq!(out.status.code(), Some(0));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("source demo") && stdout.contains("<- [demo]"), "{stdout}");

    // The example with the OpenSearch, Splunk and PostgreSQL sinks, its secrets set (they replace
    // its placeholders and are never printed).
    let out = super::support::sluice()
        .arg("validate")
        .arg(super::support::repo_root().join("pipelines/security-destinations.toml"))
        .envs([
            ("API_KEY", "k"),
            ("API_SECRET", "s"),
            ("OS_USER", "u"),
            ("OS_PASS", "p"),
            ("HEC_TOKEN", "t"),
            ("PG_PASS", "pw"),
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    for sink in [
        "sink   search           opensearch",
        "sink   siem             splunk",
        "postgres://db.example.com:5432/security",
    ] {
        assert!(stdout.contains(sink), "{sink}: {stdout}");
    }
    assert!(!stdout.contains("pw"), "{stdout}");
}

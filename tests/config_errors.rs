//! Config errors: every fixture in tests/fixtures/config yields exactly the diagnostics in its
//! `.expected` file (file:line:col, message, hint). `SLUICE_BLESS=1` rewrites the expectations.

use std::path::Path;

use sluice_connectors::registry;
use sluice_engine::config::{load_file, load_str};

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

/// The example pipelines, `pipelines/*.toml`.
fn example_pipelines() -> Vec<std::path::PathBuf> {
    let dir = super::support::repo_root().join("pipelines");
    let files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{e}"))
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    assert!(files.len() >= 5, "{files:?}");
    files
}

#[test]
fn every_example_pipeline_validates() {
    let files = example_pipelines();
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
    assert!(stderr.contains("6 errors"), "{stderr}");

    // A folder given for a pipeline: `serve` is what takes one.
    let out = validate("pipelines");
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("`sluice serve DIR`"), "{out:?}");

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

/// Every connector type's tables, valid as written: the examples, and the types they do not use.
const EVERY_OTHER_TYPE: &str = r#"[pipeline]
name = "every-type"

[sources.api]
type = "http"

[sources.bucket]
type = "object_store"
url = "memory://bucket/in"

[transforms.unpack]
type = "cloudwatch_logs"
inputs = ["api", "bucket"]

[transforms.call]
type = "lambda"
inputs = ["unpack"]
url = "http://127.0.0.1:9/"

[transforms.once]
type = "dedup"
inputs = ["call"]
key = ".id"

[sinks.out]
type = "object_store"
inputs = ["once"]
url = "memory://out/x"
"#;

/// Calls `check(file, lines, header, path, type)` for each connector table of each valid example
/// (and [`EVERY_OTHER_TYPE`]), which each validate as they are; every registered type is among them.
fn for_each_connector_table(mut check: impl FnMut(&str, &[&str], usize, &str, &str)) {
    let dir = super::support::repo_root().join("pipelines");
    let mut files: Vec<(String, String)> = example_pipelines()
        .into_iter()
        .map(|p| (p.display().to_string(), std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{e}"))))
        .collect();
    files.push(("every-type.toml".into(), EVERY_OTHER_TYPE.into()));
    let registry = registry();
    let mut types = std::collections::BTreeSet::new();
    for (file, text) in &files {
        assert!(load_str(file, text.clone(), &dir, &registry).is_ok(), "{file} does not validate as it is");
        let lines: Vec<&str> = text.lines().collect();
        for (at, header) in lines.iter().enumerate() {
            let Some(path) = header.strip_prefix('[').and_then(|h| h.strip_suffix(']')) else { continue };
            if !["sources.", "transforms.", "sinks."].iter().any(|kind| path.starts_with(kind)) {
                continue;
            }
            let kind = lines[at + 1..]
                .iter()
                .take_while(|l| !l.starts_with('['))
                .find_map(|l| l.strip_prefix("type = "))
                .unwrap_or_else(|| panic!("{file}: [{path}] has no type"));
            types.insert(format!("{}{kind}", &path[..path.find('.').unwrap_or(0)]));
            check(file, &lines, at, path, kind);
        }
    }
    let registry_types = registry.sources.len() + registry.transforms.len() + registry.sinks.len();
    assert_eq!(types.len(), registry_types, "every registered type is checked: {types:?}");
}

/// The messages of `lines` loaded as `file`, none when it validates.
fn messages(file: &str, lines: &[&str]) -> Vec<String> {
    let dir = super::support::repo_root().join("pipelines");
    match load_str(file, lines.join("\n"), &dir, &registry()) {
        Ok(_) => Vec::new(),
        Err(d) => d.items.iter().map(|i| i.message.clone()).collect(),
    }
}

/// A connector reports its problems itself (`Problems`): one that went on past an unknown key in
/// its table and returned its connector anyway would accept any typo. Each table of each valid
/// example gets one unknown key in turn: that key, and only it, is reported.
#[test]
fn every_connector_type_refuses_an_unknown_key_in_an_otherwise_valid_table() {
    for_each_connector_table(|file, lines, at, path, kind| {
        let mut changed = lines.to_vec();
        changed.insert(at + 1, "bogus_key_for_the_test = 1");
        let errors = messages(file, &changed);
        assert!(!errors.is_empty(), "{file}: [{path}] (type {kind}) took an unknown key");
        assert_eq!(errors, [format!("unknown key `{path}.bogus_key_for_the_test`")], "{file}: [{path}]");
    });
}

/// A required key that is absent or of the wrong type is reported, and the connector's checks of
/// its other keys still run on a stand-in for it (so they are reported at once too): the stand-in
/// itself must never come out as a problem, nor a check comparing another key with it. Each key
/// of each table of each valid example is left out in turn, then given a number of another type:
/// when that makes a required key missing, or a key of the wrong type, that is the only problem.
#[test]
fn a_required_key_left_out_of_a_valid_table_is_its_only_problem() {
    let mut required = std::collections::BTreeSet::new();
    for_each_connector_table(|file, lines, at, path, kind| {
        let table = lines[at + 1..].iter().take_while(|l| !l.starts_with('[')).count();
        for line in at + 1..=at + table {
            let Some((key, _)) = lines[line].split_once(" = ") else { continue };
            let mut changed = lines.to_vec();
            changed.remove(line);
            let errors = messages(file, &changed);
            let missing = format!("`{path}` needs `{key}`");
            if errors.contains(&missing) {
                assert_eq!(errors, [missing], "{file}: [{path}] without `{key}`");
                required.insert(format!("{kind}.{key}"));
            }
            let wrong = format!("{key} = 1.5");
            changed.insert(line, &wrong);
            let errors = messages(file, &changed);
            let said = format!("`{path}.{key}` must be ");
            if errors.iter().any(|e| e.starts_with(&said)) {
                assert_eq!(errors.len(), 1, "{file}: [{path}] with {wrong}: {errors:?}");
            }
        }
    });
    // The examples' required keys: a change that stops reporting them is caught too.
    for key in ["\"object_store\".url", "\"jq\".query", "\"file\".paths", "\"opensearch\".index", "\"splunk\".token"] {
        assert!(required.contains(key), "{key} not found required: {required:?}");
    }
}

/// A sink type whose registration and built sink disagree about the body, or whose `configure`
/// refuses its keys without a reason, is reported as a bug in sluice, never taken silently.
#[test]
fn a_connector_at_odds_with_its_registration_is_reported_as_a_bug() {
    use std::sync::Arc;

    use sluice_engine::config::{ConnectorConfig, Problems, SinkType};
    use sluice_engine::contract::Sink;

    fn refuses_without_a_reason(_: ConnectorConfig) -> Result<Arc<dyn Sink>, Problems> {
        Err(Problems::default())
    }
    let mut registry = registry();
    // Registered with Splunk's body, built as an object store (which takes the engine's objects).
    registry.sinks.push(SinkType {
        name: "mislabelled",
        configure: sluice_connectors::sinks::object_store::configure,
        reads: &[],
        fixed_body: Some(sluice_connectors::sinks::splunk::BODY),
    });
    registry.sinks.push(SinkType { name: "mute", configure: refuses_without_a_reason, reads: &[], fixed_body: None });
    for (type_name, says) in [
        ("mislabelled", "is registered with a fixed body but its sink gives no one (a bug in sluice)"),
        ("mute", "a connector refused its keys without saying why (a bug in sluice)"),
    ] {
        let toml = format!(
            "[pipeline]\nname = \"bug\"\n[sources.gen]\ntype = \"generator\"\nprofile = \"cloudtrail\"\nrecords = 1\n\
             [sinks.out]\ntype = \"{type_name}\"\ninputs = [\"gen\"]\nurl = \"memory://bug\"\n"
        );
        let errors =
            load_str("bug.toml", toml, Path::new("."), &registry).err().map(|d| d.to_string()).unwrap_or_default();
        assert!(errors.contains(says), "{type_name}: {errors}");
    }
}

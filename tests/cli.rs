//! The `sluice` binary as users run it: the quickstart, `gen`, exit codes and the run summary.

use sluice_connectors::synth::Profile;

use super::support::{all_lines, folder_objects, generated, repo_root, sluice};

fn run_in(dir: &std::path::Path, args: &[&str], pipeline: &std::path::Path) -> (Option<i32>, String) {
    let out = sluice().current_dir(dir).args(args).arg(pipeline).output().unwrap_or_else(|e| panic!("{e}"));
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.code(), text)
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
    let pipeline = work.path().join("p.toml");
    std::fs::write(
        &pipeline,
        "[pipeline]\nname = \"csv\"\n[sources.in]\ntype = \"file\"\npaths = [\"in.ndjson\"]\n[sinks.out]\ntype = \"object_store\"\ninputs = [\"in\"]\nurl = \"file://./out\"\nformat = \"csv\"\ncolumns = [\"a\"]\n",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let (code, text) = run_in(work.path(), &["run", "--quiet", "--workers", "1"], &pipeline);
    assert_eq!(code, Some(2), "{text}");
    assert!(text.contains("1 records went to the error output"), "{text}");
    assert!(text.contains("format-conversion-failed"), "{text}");
    let objects = folder_objects(&work.path().join("out"));
    let errors: Vec<_> = objects.keys().filter(|k| k.starts_with("format-conversion-failed/")).collect();
    assert_eq!(errors.len(), 1, "{:?}", objects.keys());
    let data: Vec<_> = objects.iter().filter(|(k, _)| k.ends_with(".csv")).collect();
    assert_eq!(all_lines(data), ["1", "2", "a"]);
}

#[test]
fn a_missing_input_file_exits_1_with_the_reason() {
    let work = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let pipeline = work.path().join("p.toml");
    std::fs::write(
        &pipeline,
        "[pipeline]\nname = \"missing\"\n[sources.in]\ntype = \"file\"\npaths = [\"nothing-here/*.ndjson\"]\n[sinks.out]\ntype = \"object_store\"\ninputs = [\"in\"]\nurl = \"file://./out\"\n",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let (code, text) = run_in(work.path(), &["run", "--quiet"], &pipeline);
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("no file matches nothing-here/*.ndjson"), "{text}");
}

#[test]
fn the_ci_script_calls_the_readme_test_command() {
    let readme = std::fs::read_to_string(repo_root().join("README.md")).unwrap_or_default();
    let ci = std::fs::read_to_string(repo_root().join(".ci/run")).unwrap_or_default();
    let command = "scripts/test.sh";
    assert!(readme.contains(command) && ci.contains(command), "README and .ci/run must share the test command");
}

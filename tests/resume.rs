//! A batch run stopped halfway resumes where its delivered frontier was: the second run reads only
//! what the first did not deliver, and together they deliver every line (file-source checkpoints).

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::Duration;

use super::support::{all_lines, folder_objects, sluice};

#[test]
fn a_stopped_batch_run_resumes_from_its_checkpoint_and_skips_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("logs.ndjson");
    let generated = sluice().args(["gen", "--records", "300000", "-o"]).arg(&input).status().unwrap();
    assert!(generated.success());
    let config = dir.path().join("resume.toml");
    let out = dir.path().join("out");
    std::fs::write(
        &config,
        format!(
            "[pipeline]\nname = \"resume\"\nworkers = 2\ndata_dir = \"{}\"\n\
             [sources.logs]\ntype = \"file\"\npaths = [\"{}\"]\nsplit_mb = 4\n\
             [sinks.out]\ntype = \"object_store\"\ninputs = [\"logs\"]\nurl = \"file://{}\"\nformat = \"ndjson\"\n\
             compression = \"gzip\"\nbuffer = {{ size_mb = 1, interval_s = 1 }}\n",
            dir.path().join("data").display(),
            input.display(),
            out.display()
        ),
    )
    .unwrap();
    let records_in = |summary: &str| -> u64 {
        let line = summary.lines().find(|l| l.trim_start().starts_with("in ")).unwrap_or_else(|| panic!("{summary}"));
        line.split_whitespace().nth(1).unwrap().parse().unwrap()
    };

    // First run: stopped once its first objects are out (a clean stop: what was read is delivered
    // and checkpointed).
    let mut first = sluice().args(["run", "--quiet"]).arg(&config).stdout(Stdio::piped()).spawn().unwrap();
    let started = std::time::Instant::now();
    while folder_objects(&out).len() < 3 {
        assert!(started.elapsed() < Duration::from_secs(30), "no objects appeared");
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(Command::new("kill").args(["-TERM", &first.id().to_string()]).status().unwrap().success());
    let mut summary = String::new();
    first.stdout.take().unwrap().read_to_string(&mut summary).unwrap();
    assert!(first.wait().unwrap().success(), "{summary}");
    let read_first = records_in(&summary);
    assert!(read_first > 0 && read_first < 300_000, "the first run should stop halfway: {summary}");
    assert!(dir.path().join("data/logs/offsets.json").exists());

    // Second run: resumes; a run that ends by itself removes the checkpoint.
    let second = sluice().args(["run", "--quiet"]).arg(&config).output().unwrap();
    let summary = String::from_utf8_lossy(&second.stdout).to_string();
    assert!(second.status.success(), "{summary}");
    let read_second = records_in(&summary);
    assert!(read_second < 300_000, "the second run started over: {summary}");
    assert!(read_first + read_second >= 300_000);
    assert!(!dir.path().join("data/logs/offsets.json").exists());

    let mut expected: Vec<String> = std::fs::read_to_string(&input).unwrap().lines().map(str::to_string).collect();
    expected.sort();
    let mut delivered = all_lines(&folder_objects(&out));
    delivered.dedup();
    assert_eq!(delivered.len(), expected.len(), "every line delivered (duplicates aside)");
    assert_eq!(delivered, expected);
}

//! `sluice top` (issue 19 §4) against a running stream: it shows the stream, sink and transform
//! figures moving, and quits cleanly on `q` and on Ctrl-C (SIGINT).

use std::io::Write;
use std::process::Stdio;
use std::time::{Duration, Instant};

use super::support::{free_port, sluice, start_listening_with, terminate};

fn wait(child: &mut std::process::Child, within: Duration) -> std::process::ExitStatus {
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(started.elapsed() < within, "sluice top did not quit");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn top_shows_a_running_stream_and_quits_on_q_and_on_ctrl_c() {
    let dir = tempfile::tempdir().unwrap();
    let admin = free_port();
    let config = dir.path().join("watched.toml");
    std::fs::write(
        &config,
        format!(
            "[pipeline]\nname = \"watched\"\ndata_dir = \"{data}\"\n\
             [sources.gen]\ntype = \"generator\"\nprofile = \"cloudfront\"\nrate = 2000\n\
             [transforms.shape]\ntype = \"jq\"\ninputs = [\"gen\"]\nquery = '{{ip: .c_ip}}'\n\
             [sinks.out]\ntype = \"object_store\"\ninputs = [\"shape\"]\nurl = \"file://{out}\"\nformat = \"ndjson\"\n\
             buffer = {{ size_mb = 1, interval_s = 1 }}\n",
            data = dir.path().join("data").display(),
            out = dir.path().join("out").display()
        ),
    )
    .unwrap();
    let address = format!("127.0.0.1:{admin}");
    let run = start_listening_with(
        sluice()
            .args(["run", "--quiet", config.to_str().unwrap(), "--admin", &address])
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
        admin,
    );

    let mut top = sluice().args(["top", &address]).stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().unwrap();
    std::thread::sleep(Duration::from_millis(3500));
    top.stdin.take().unwrap().write_all(b"q").unwrap();
    assert!(wait(&mut top, Duration::from_secs(5)).success());
    let mut shown = String::new();
    std::io::Read::read_to_string(&mut top.stdout.take().unwrap(), &mut shown).unwrap();
    // The last frame: the stream takes ~2000 records/s, and each part of the pipeline shows.
    let last = shown.rsplit("sluice top").next().unwrap();
    let stream = last.lines().find(|l| l.starts_with("watched ")).unwrap_or_else(|| panic!("{shown}"));
    let per_second: f64 = stream.split_whitespace().nth(1).unwrap().parse().unwrap();
    assert!((1000.0..4000.0).contains(&per_second), "{shown}");
    assert!(last.lines().any(|l| l.starts_with("watched/out ")), "{shown}");
    assert!(last.lines().any(|l| l.starts_with("watched/shape ")), "{shown}");

    // Ctrl-C ends it too, with exit code 0.
    let top = sluice().args(["top", &address]).stdin(Stdio::null()).stdout(Stdio::null()).spawn().unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    let sent = std::process::Command::new("kill").args(["-INT", &top.id().to_string()]).status().unwrap();
    assert!(sent.success());
    let mut top = top;
    assert!(wait(&mut top, Duration::from_secs(5)).success());
    terminate(&run);
    let mut run = run;
    assert!(run.wait().unwrap().success());
}

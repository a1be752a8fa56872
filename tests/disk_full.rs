//! A full disk under the write-ahead log (issue 11, item 1): while the filesystem holding
//! `data_dir` is full, puts are refused with `ServiceUnavailableException` and nothing refused is
//! acknowledged; once space returns puts are acknowledged again; after a SIGKILL and a restart
//! every acknowledged record is delivered; the same for the fluent source, whose refusal is a
//! message left unacknowledged, and the syslog source, which closes the connection and says so. Runs on a real tmpfs, mounted by the test where it can
//! (as root, as CI runs); engine/src/wal's unit and property tests inject the same failed writes
//! everywhere.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use base64::Engine as _;

use super::support::{Tmpfs, firehose_to_files, folder_objects, free_port, start_listening, terminate};

fn start(config: &Path, port: u16) -> super::support::Started {
    start_listening(&["run", config.to_str().unwrap()], port, Stdio::null(), Stdio::null())
}

/// One PutRecordBatch of records `first..first + n` (about 1 KB each); returns the acknowledged
/// numbers and whether the request was refused for lack of space.
fn put(port: u16, first: u64, n: u64) -> (Vec<u64>, bool) {
    let pad = "x".repeat(1000);
    let records: Vec<serde_json::Value> = (first..first + n)
        .map(|i| {
            let data = format!("{{\"n\":{i},\"pad\":\"{pad}\"}}");
            serde_json::json!({"Data": base64::engine::general_purpose::STANDARD.encode(data)})
        })
        .collect();
    let body = serde_json::json!({"DeliveryStreamName": "full", "Records": records}).to_string();
    let response = reqwest::blocking::Client::new()
        .post(format!("http://127.0.0.1:{port}/"))
        .header("x-amz-target", "Firehose_20150804.PutRecordBatch")
        .header("content-type", "application/x-amz-json-1.1")
        .body(body)
        .send()
        .unwrap();
    let status = response.status();
    let text = response.text().unwrap();
    if !status.is_success() {
        assert_eq!(status.as_u16(), 503, "{text}");
        assert!(text.contains("ServiceUnavailableException"), "{text}");
        return (Vec::new(), text.contains("No space left"));
    }
    let parsed: serde_json::Value = serde_json::from_str(&text).unwrap();
    let acked = (first..first + n)
        .zip(parsed["RequestResponses"].as_array().unwrap())
        .filter(|(_, r)| r["RecordId"].is_string())
        .map(|(i, _)| i)
        .collect();
    (acked, false)
}

#[test]
fn a_full_disk_refuses_puts_and_loses_nothing_acknowledged_after_a_kill() {
    let dir = tempfile::tempdir().unwrap();
    let Some(tmpfs) = Tmpfs::mount(&dir.path().join("data"), "1m") else {
        eprintln!(
            "note: cannot mount a tmpfs here (not root?); the full-disk case runs only through the log's injected faults"
        );
        return;
    };
    let out = dir.path().join("out");
    let port = free_port();
    let config = dir.path().join("full.toml");
    let sink = "buffer = { size_mb = 1, interval_s = 1 }";
    std::fs::write(&config, firehose_to_files("full", port, &tmpfs.0, &out, "workers = 1", "", sink)).unwrap();
    let mut child = start(&config, port);
    let mut acknowledged = BTreeSet::new();
    let mut next = 0;
    // Fill the disk: puts are acknowledged until the log cannot append, then refused.
    let mut refusals = 0;
    while refusals < 3 {
        let (acked, no_space) = put(port, next, 50);
        next += 50;
        if acked.is_empty() {
            assert!(no_space, "a refusal while the disk is full says why");
            refusals += 1;
        }
        acknowledged.extend(acked);
        assert!(next < 100_000, "the disk never filled");
    }
    let before_space = acknowledged.len();
    assert!(before_space > 100, "too few records acknowledged before the disk filled: {before_space}");
    // Space returns: puts are acknowledged again, appended after the failed ones.
    tmpfs.resize("64m");
    for _ in 0..20 {
        let (acked, _) = put(port, next, 50);
        next += 50;
        acknowledged.extend(acked);
    }
    assert!(acknowledged.len() >= before_space + 900, "puts were not acknowledged once space returned");
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    // A restart replays the log; a clean stop delivers everything.
    let child = start(&config, port);
    std::thread::sleep(Duration::from_millis(1500));
    terminate(&child);
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success());
    let delivered: BTreeSet<u64> = folder_objects(&out)
        .values()
        .flatten()
        .map(|line| serde_json::from_str::<serde_json::Value>(line).unwrap()["n"].as_u64().unwrap())
        .collect();
    let lost: Vec<&u64> = acknowledged.difference(&delivered).collect();
    assert!(
        lost.is_empty(),
        "{} of {} acknowledged records lost, e.g. {:?}",
        lost.len(),
        acknowledged.len(),
        &lost[..lost.len().min(5)]
    );
}

/// The fluent source on a full disk: a message whose records the log cannot append is not
/// acknowledged (its connection is closed, `Fluent.LogFailed` in the process's log and in the error
/// log, whose spool is on the full disk too: the lines it could not spool are stored from memory)
/// and the client
/// sends it again; once space returns messages are acknowledged again; after a SIGKILL and a
/// restart every acknowledged event is delivered.
#[test]
fn a_full_disk_leaves_fluent_messages_unacknowledged_and_loses_nothing_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let Some(tmpfs) = Tmpfs::mount(&dir.path().join("data"), "1m") else {
        eprintln!("note: cannot mount a tmpfs here (not root?); the fluent source's full-disk case is not run");
        return;
    };
    let (out, errors) = (dir.path().join("out"), dir.path().join("errors"));
    let port = free_port();
    let config = dir.path().join("fluent-full.toml");
    std::fs::write(
        &config,
        format!(
            "[pipeline]\nname = \"fluent-full\"\nworkers = 1\ndata_dir = \"{data}\"\n\
             error_log = {{ url = \"file://{errors}\", buffer = {{ size_mb = 1, interval_s = 1 }} }}\n\
             [sources.fluent]\ntype = \"fluent\"\nlisten = \"127.0.0.1:{port}\"\n\
             [sinks.out]\ntype = \"object_store\"\ninputs = [\"fluent\"]\nurl = \"file://{out}\"\nformat = \"ndjson\"\n\
             buffer = {{ size_mb = 1, interval_s = 1 }}\n",
            data = tmpfs.0.display(),
            errors = errors.display(),
            out = out.display(),
        ),
    )
    .unwrap();
    let mut child = start_listening(&["run", config.to_str().unwrap()], port, Stdio::null(), Stdio::piped());
    // A client that sends events `first..` one message at a time, each asking for an ack, until
    // `count` are sent or `refusals` messages went unanswered (their connection closed: it
    // connects again and goes on with the next event); prints each acknowledged number, then the
    // refusals.
    let send = |first: u64, count: u64, refusals: u32| -> (Vec<u64>, u32) {
        let script = format!(
            "import msgpack, socket, time\n\
             pad = 'x' * 1000\n\
             def connect():\n\
             \x20   s = socket.create_connection(('127.0.0.1', {port}))\n\
             \x20   s.settimeout(10)\n\
             \x20   return s\n\
             s, refused = connect(), 0\n\
             for n in range({first}, {first} + {count}):\n\
             \x20   try:\n\
             \x20       s.sendall(msgpack.packb(['app.full', int(time.time()), {{'n': n, 'pad': pad}}, {{'chunk': str(n)}}]))\n\
             \x20       answer = s.recv(1024)\n\
             \x20   except OSError:\n\
             \x20       answer = b''\n\
             \x20   if answer and msgpack.unpackb(answer) == {{'ack': str(n)}}:\n\
             \x20       print(n)\n\
             \x20       continue\n\
             \x20   refused += 1\n\
             \x20   s.close()\n\
             \x20   if refused >= {refusals}:\n\
             \x20       break\n\
             \x20   s = connect()\n\
             print('refused', refused)\n"
        );
        let ran = std::process::Command::new(super::support::python()).arg("-c").arg(script).output().unwrap();
        assert!(ran.status.success(), "{}", String::from_utf8_lossy(&ran.stderr));
        let said = String::from_utf8_lossy(&ran.stdout).into_owned();
        let mut acked = Vec::new();
        let mut refused = 0;
        for line in said.lines() {
            match line.strip_prefix("refused ") {
                Some(count) => refused = count.parse().unwrap(),
                None => acked.push(line.parse::<u64>().unwrap()),
            }
        }
        (acked, refused)
    };
    // Fill the disk: messages are acknowledged until the log cannot append, then left unanswered.
    let (mut acknowledged, refused) = send(0, 100_000, 3);
    assert_eq!(refused, 3, "the disk never filled");
    let before_space = acknowledged.len();
    assert!(before_space > 100, "too few events acknowledged before the disk filled: {before_space}");
    // Space returns: every message is acknowledged again.
    tmpfs.resize("64m");
    let (acked, refused) = send(200_000, 1_000, 1);
    assert_eq!((acked.len(), refused), (1_000, 0), "messages were not acknowledged once space returned");
    acknowledged.extend(acked);
    // The error log stores the refusals it could not spool while the disk was full.
    let waited = std::time::Instant::now();
    while !super::support::json_lines_under(&errors).iter().any(|e| e["errorCode"] == "Fluent.LogFailed") {
        assert!(waited.elapsed() < Duration::from_secs(30), "the error log never stored the refusals");
        std::thread::sleep(Duration::from_millis(200));
    }
    child.kill().unwrap(); // SIGKILL
    let killed = child.wait_with_output().unwrap();
    // Each refusal was said with its code.
    let said = String::from_utf8_lossy(&killed.stderr);
    assert!(said.contains("Fluent.LogFailed") && said.contains("not acknowledged"), "{said}");
    // A restart replays the log; a clean stop delivers everything.
    let child = start(&config, port);
    std::thread::sleep(Duration::from_millis(1500));
    terminate(&child);
    assert!(child.wait_with_output().unwrap().status.success());
    let delivered: BTreeSet<u64> = folder_objects(&out)
        .values()
        .flatten()
        .map(|line| serde_json::from_str::<serde_json::Value>(line).unwrap()["record"]["n"].as_u64().unwrap())
        .collect();
    let lost: Vec<&u64> = acknowledged.iter().filter(|n| !delivered.contains(n)).collect();
    assert!(
        lost.is_empty(),
        "{} of {} acknowledged events lost, e.g. {:?}",
        lost.len(),
        acknowledged.len(),
        &lost[..lost.len().min(5)]
    );
}

/// The syslog source on a full disk: messages the log cannot append are not taken, their
/// connection is closed, and that is said (`Syslog.LogFailed` in the error log) and recorded in the
/// audit trail (both spooled on the full disk: the lines are stored from memory); once space
/// returns a new connection's messages are all delivered, and nothing is delivered twice.
#[test]
fn a_full_disk_closes_syslog_connections_and_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let Some(tmpfs) = Tmpfs::mount(&dir.path().join("data"), "1m") else {
        eprintln!("note: cannot mount a tmpfs here (not root?); the syslog source's full-disk case is not run");
        return;
    };
    let (out, errors, audit) = (dir.path().join("out"), dir.path().join("errors"), dir.path().join("audit"));
    let port = free_port();
    let config = dir.path().join("syslog-full.toml");
    std::fs::write(
        &config,
        format!(
            "[pipeline]\nname = \"syslog-full\"\nworkers = 1\ndata_dir = \"{data}\"\n\
             error_log = {{ url = \"file://{errors}\", buffer = {{ size_mb = 1, interval_s = 1 }} }}\n\
             audit_log = {{ url = \"file://{audit}\", buffer = {{ size_mb = 1, interval_s = 1 }} }}\n\
             [sources.syslog]\ntype = \"syslog\"\nlisten = \"127.0.0.1:{port}\"\n\
             [sinks.out]\ntype = \"object_store\"\ninputs = [\"syslog\"]\nurl = \"file://{out}\"\nformat = \"ndjson\"\n\
             buffer = {{ size_mb = 1, interval_s = 1 }}\n",
            data = tmpfs.0.display(),
            errors = errors.display(),
            audit = audit.display(),
            out = out.display(),
        ),
    )
    .unwrap();
    let child = start(&config, port);
    // Messages `first..first + count` of 1 KB, one a line, on one connection, 50 at a time; stops
    // at the first failure (the connection closed); prints how many it sent.
    let send = |first: u64, count: u64| -> u64 {
        let script = format!(
            "import socket, time\n\
             s = socket.create_connection(('127.0.0.1', {port}))\n\
             pad = 'x' * 1000\n\
             sent = 0\n\
             try:\n\
             \x20   for start in range({first}, {first} + {count}, 50):\n\
             \x20       s.sendall(b''.join(f'<14>1 - host app - - - n={{n}} {{pad}}\\n'.encode() for n in range(start, start + 50)))\n\
             \x20       sent += 50\n\
             \x20       time.sleep(0.01)\n\
             except OSError:\n\
             \x20   pass\n\
             s.close()\n\
             print(sent)\n"
        );
        let ran = std::process::Command::new(super::support::python()).arg("-c").arg(script).output().unwrap();
        assert!(ran.status.success(), "{}", String::from_utf8_lossy(&ran.stderr));
        String::from_utf8_lossy(&ran.stdout).trim().parse().unwrap()
    };
    // Far more than the 1 MiB disk holds: the connection is closed once the log cannot append.
    let sent = send(0, 20_000);
    assert!(sent < 20_000, "the connection was never closed");
    tmpfs.resize("64m");
    assert_eq!(send(100_000, 1_000), 1_000);
    let waited = std::time::Instant::now();
    while !super::support::json_lines_under(&errors).iter().any(|e| e["errorCode"] == "Syslog.LogFailed") {
        assert!(waited.elapsed() < Duration::from_secs(30), "the error log never stored the failure");
        std::thread::sleep(Duration::from_millis(200));
    }
    std::thread::sleep(Duration::from_millis(1500));
    terminate(&child);
    assert!(child.wait_with_output().unwrap().status.success());
    let trail = super::support::json_lines_under(&audit);
    let connections: Vec<&serde_json::Value> = trail.iter().filter(|l| l["eventSource"] == "syslog.sluice").collect();
    assert_eq!(connections.len(), 2, "{connections:#?}");
    let failed = connections.iter().find(|l| l["errorCode"] == "Syslog.LogFailed").expect("the failed connection");
    assert!(failed["errorMessage"].as_str().is_some_and(|m| m.contains("could not be made durable")), "{failed}");
    let numbers: Vec<u64> = folder_objects(&out)
        .values()
        .flatten()
        .map(|line| {
            let message =
                serde_json::from_str::<serde_json::Value>(line).unwrap()["message"].as_str().unwrap().to_string();
            message.trim_start_matches("n=").split(' ').next().unwrap().parse().unwrap()
        })
        .collect();
    let distinct: BTreeSet<u64> = numbers.iter().copied().collect();
    assert_eq!(distinct.len(), numbers.len(), "a message delivered twice");
    assert!((100_000..101_000).all(|n| distinct.contains(&n)), "messages sent once space returned were lost");
    let before: Vec<&u64> = distinct.iter().filter(|n| **n < 100_000).collect();
    assert!(before.len() > 100, "too few messages taken before the disk filled: {}", before.len());
    let taken_before = failed["requestParameters"]["recordCount"].as_u64().unwrap();
    assert_eq!(taken_before, before.len() as u64, "the audit trail counts what was taken: {failed}");
}

/// The syslog source in RELP mode on a full disk: messages the log cannot append are not answered
/// (their connection is closed, `Syslog.LogFailed` said), so rsyslog's RELP output sends them again
/// until space returns; then every line of its log lands.
#[test]
fn a_full_disk_leaves_relp_messages_unanswered_and_rsyslog_sends_them_again() {
    use super::syslog::{assert_landed, await_lines, relp_pipeline, rsyslog_relp};
    let dir = tempfile::tempdir().unwrap();
    let Some(tmpfs) = Tmpfs::mount(&dir.path().join("data"), "1m") else {
        eprintln!("note: cannot mount a tmpfs here (not root?); the RELP full-disk case is not run");
        return;
    };
    let port = free_port();
    let config = relp_pipeline(dir.path(), port, "");
    let child = start(&config, port);
    let (rsyslog, log) = rsyslog_relp(dir.path(), port, "");
    // Three times what the 1 MiB disk holds.
    let lines: Vec<String> = (0..3_000).map(|n| format!("n={n} {}", "x".repeat(1_000))).collect();
    std::fs::write(&log, lines.join("\n") + "\n").unwrap();
    let errors = dir.path().join("errors");
    let waited = std::time::Instant::now();
    while !super::support::json_lines_under(&errors).iter().any(|e| e["errorCode"] == "Syslog.LogFailed") {
        assert!(waited.elapsed() < Duration::from_secs(60), "the log never refused a message");
        std::thread::sleep(Duration::from_millis(200));
    }
    tmpfs.resize("64m");
    let said = await_lines(dir.path(), &lines, rsyslog);
    terminate(&child);
    assert!(child.wait_with_output().unwrap().status.success());
    assert_landed(dir.path(), &lines, &said);
}

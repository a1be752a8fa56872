//! The `fluent` source against the Fluent organization's own loggers: Node.js's fluent-logger in
//! each of its event modes (Message, PackedForward, CompressedPackedForward) with acknowledgements,
//! its shared-key handshake and TLS, and Python's fluent-logger (EventTime). Every event the
//! loggers sent is in the lake once, its record's keys and values, tag and time as sent; a wrong
//! key is refused in the handshake, and what is not the protocol closes its connection, both said
//! in the error log; each connection is in the audit trail.

use std::io::{Read as _, Write as _};
use std::process::{Command, Stdio};

use super::support::{
    TestCertificates, files_under, free_port, json_lines_under, listening_pipeline, python, raw_data,
    records_and_error_documents, repo_root, run_listening, sluice, start_listening_with, terminate,
};

/// Runs tests/js/fluent_forward.mjs: `count` events to `port` in `mode`; its output.
fn node_logger(port: u16, mode: &str, count: usize, key: Option<&str>, ca: Option<&str>) -> std::process::Output {
    node_logger_as(port, mode, count, key, ca, None)
}

/// The same, naming `user` (name, password) in the handshake.
fn node_logger_as(
    port: u16,
    mode: &str,
    count: usize,
    key: Option<&str>,
    ca: Option<&str>,
    user: Option<(&str, &str)>,
) -> std::process::Output {
    let mut node = Command::new("node");
    if let Some((name, password)) = user {
        node.env("FLUENT_USERNAME", name).env("FLUENT_PASSWORD", password);
    }
    node.arg(repo_root().join("tests/js/fluent_forward.mjs")).args([&port.to_string(), mode, &count.to_string()]);
    node.arg(key.unwrap_or(""));
    if let Some(ca) = ca {
        node.arg(ca);
    }
    node.output().unwrap()
}

/// The example pipeline `pipelines/from-fluent.toml` as a user runs it (its port moved): Python's
/// logger, then Node's in its three modes, each acknowledged; the lake holds every event once,
/// flattened by the example's jq, by tag.
#[test]
fn fluent_loggers_forward_every_event_into_the_example_pipeline() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let example = std::fs::read_to_string(repo_root().join("pipelines/from-fluent.toml")).unwrap();
    let listen = "listen = \"127.0.0.1:24224\"";
    assert!(example.contains(listen));
    let config = dir.path().join("from-fluent.toml");
    std::fs::write(&config, example.replace(listen, &format!("listen = \"127.0.0.1:{port}\""))).unwrap();
    let mut run = start_listening_with(
        sluice().current_dir(dir.path()).args(["run", "--quiet"]).arg(&config).stdout(Stdio::null()),
        port,
    );
    // Python's logger sends Message mode, its times as EventTime, and asks for no acknowledgement:
    // it runs first, so its connection is served before the acknowledged ones end.
    let script = format!(
        "from fluent import sender, event\n\
         logger = sender.FluentSender('py', host='127.0.0.1', port={port}, nanosecond_precision=True)\n\
         for i in range(100):\n\
         \x20   assert logger.emit_with_time('jobs', 1764547200 + i / 4, {{'job': 'nightly', 'i': i, 'ok': i % 2 == 0, 'tags': ['a', 'b']}}), logger.last_error\n\
         logger.close()\n"
    );
    let python_run = Command::new(python()).arg("-c").arg(script).output().unwrap();
    assert!(python_run.status.success(), "{}", String::from_utf8_lossy(&python_run.stderr));
    for (mode, count) in [("Message", 150), ("PackedForward", 300), ("CompressedPackedForward", 450)] {
        let sent = node_logger(port, mode, count, None, None);
        let said = String::from_utf8_lossy(&sent.stdout);
        assert!(sent.status.success(), "{mode}: {said}{}", String::from_utf8_lossy(&sent.stderr));
        assert_eq!(said.trim(), format!("acknowledged {count}"));
    }
    terminate(&run);
    assert!(run.wait().unwrap().success());

    let lake = dir.path().join("lake/fluent");
    let files = files_under(&lake);
    assert!(files.iter().all(|f| {
        let f = f.to_string_lossy();
        (f.contains("/tag=web.access/") || f.contains("/tag=py.jobs/")) && f.ends_with(".gz")
    }));
    let records = json_lines_under(&lake);
    let (mut web, mut py): (Vec<_>, Vec<_>) = records.iter().partition(|r| r["tag"] == "web.access");
    assert_eq!(py.len(), 100, "each Python event once");
    py.sort_by_key(|r| r["i"].as_i64());
    for (i, r) in py.iter().enumerate() {
        let time = chrono::DateTime::from_timestamp(1_764_547_200 + i as i64 / 4, (i as u32 % 4) * 250_000_000)
            .unwrap()
            .to_rfc3339_opts(chrono::SecondsFormat::Nanos, true);
        let expected = serde_json::json!({
            "job": "nightly", "i": i, "ok": i % 2 == 0, "tags": ["a", "b"], "tag": "py.jobs", "time": time,
        });
        assert_eq!(**r, expected);
    }
    // Node's three runs sent n = 0.. each: 150 + 300 + 450 events.
    assert_eq!(web.len(), 900, "each Node event once");
    web.sort_by_key(|r| (r["n"].as_i64(), r["time"].as_str().map(str::to_string)));
    let mut per_n = std::collections::BTreeMap::<i64, usize>::new();
    for r in &web {
        let n = r["n"].as_i64().unwrap();
        *per_n.entry(n).or_default() += 1;
        assert_eq!(r["path"], format!("/item/{n}"), "{r}");
        // (JavaScript's numbers: an integral one is packed as an integer.)
        assert_eq!((&r["status"], r["bytes"].as_f64()), (&200.into(), Some(n as f64 * 1.5)), "{r}");
        let time = chrono::DateTime::from_timestamp(1_764_547_200 + n, n as u32 * 1000)
            .unwrap()
            .to_rfc3339_opts(chrono::SecondsFormat::Nanos, true);
        assert_eq!(r["time"], time, "{r}");
    }
    assert!(per_n.iter().all(|(n, count)| *count
        == if *n < 150 {
            3
        } else if *n < 300 {
            2
        } else {
            1
        }));
}

/// With `shared_key`, `users` and `tls`: the right key and user over TLS are served in every mode;
/// a wrong key, password or user (or none) is refused in the handshake, as the logger reports; what is not the protocol closes its
/// connection unanswered; both are in the error log.
#[test]
fn the_handshake_and_tls_admit_only_the_shared_key_and_its_users() {
    let dir = tempfile::tempdir().unwrap();
    let certs = TestCertificates::make();
    let port = free_port();
    let table = format!(
        "type = \"fluent\"\nlisten = \"127.0.0.1:{port}\"\nshared_key = \"s3cret-key\"\n\
         self_hostname = \"lake-gateway\"\nusers = [{{ username = \"fluent-bit\", password = \"pa55word\" }}]\n\
         tls = {{ cert = \"{}\", key = \"{}\" }}",
        certs.path("server.pem"),
        certs.path("server.key"),
    );
    let config = listening_pipeline(dir.path(), "fluent-tls", "", "fluent", &table);
    let mut run = run_listening(&config, port);
    let ca = certs.path("ca.pem");
    for mode in ["Message", "CompressedPackedForward"] {
        let sent = node_logger_as(port, mode, 40, Some("s3cret-key"), Some(&ca), Some(("fluent-bit", "pa55word")));
        assert!(sent.status.success(), "{mode}: {}", String::from_utf8_lossy(&sent.stdout));
    }
    let user = Some(("fluent-bit", "pa55word"));
    let refused = node_logger_as(port, "Message", 1, Some("not-the-key"), Some(&ca), user);
    let said = String::from_utf8_lossy(&refused.stdout);
    assert_eq!(refused.status.code(), Some(2), "{said}");
    assert!(said.contains("Authentication failed: shared_key mismatch"), "{said}");
    for user in [Some(("fluent-bit", "not-it")), Some(("someone", "pa55word")), None] {
        let refused = node_logger_as(port, "Message", 1, Some("s3cret-key"), Some(&ca), user);
        let said = String::from_utf8_lossy(&refused.stdout);
        assert_eq!(refused.status.code(), Some(2), "{user:?}: {said}");
        assert!(said.contains("Authentication failed: username/password mismatch"), "{user:?}: {said}");
    }

    // What is not the protocol, sent where the PING goes over TLS (0xc1 starts no MessagePack
    // value): the connection is closed, no PONG sent.
    let connector = {
        let mut roots = rustls::RootCertStore::empty();
        use rustls::pki_types::pem::PemObject as _;
        for cert in rustls::pki_types::CertificateDer::pem_file_iter(&ca).unwrap() {
            roots.add(cert.unwrap()).unwrap();
        }
        let config = rustls::ClientConfig::builder().with_root_certificates(roots).with_no_client_auth();
        std::sync::Arc::new(config)
    };
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let mut tls = rustls::ClientConnection::new(connector, name).unwrap();
    let mut tcp = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    tcp.set_read_timeout(Some(std::time::Duration::from_secs(20))).unwrap();
    let mut stream = rustls::Stream::new(&mut tls, &mut tcp);
    let mut helo = [0u8; 64];
    let got = stream.read(&mut helo).unwrap();
    assert!(helo[..got].windows(4).any(|w| w == b"HELO"), "{:?}", &helo[..got]);
    stream.write_all(&[0xc1, 0x00]).unwrap();
    let mut rest = Vec::new();
    let _ = stream.read_to_end(&mut rest);
    assert!(!rest.windows(4).any(|w| w == b"PONG"), "garbage answered: {rest:?}");

    terminate(&run);
    assert!(run.wait().unwrap().success());
    let records = json_lines_under(&dir.path().join("lake"));
    assert_eq!(records.len(), 80, "the events sent with the key, once each");
    assert!(records.iter().all(|r| r["tag"] == "web.access" && r["record"]["path"].is_string()));
    let errors = json_lines_under(&dir.path().join("errors"));
    let codes: Vec<&str> = errors.iter().filter_map(|e| e["errorCode"].as_str()).collect();
    assert!(codes.contains(&"Fluent.HandshakeRefused") && codes.contains(&"Fluent.BadMessage"), "{errors:?}");
    assert_eq!(codes.iter().filter(|c| **c == "Fluent.HandshakeRefused").count(), 4, "{errors:?}");
    assert!(
        errors.iter().any(|e| e["message"].as_str().is_some_and(|m| m.contains("shared_key mismatch"))),
        "{errors:?}"
    );
    // The audit trail: each connection, who it was by the handshake, what it brought, its refusal.
    let trail: Vec<serde_json::Value> = json_lines_under(&dir.path().join("audit"))
        .into_iter()
        .filter(|l| l["eventSource"] == "fluent.sluice" && l["eventName"] == "Forward")
        .collect();
    let served: Vec<&serde_json::Value> = trail.iter().filter(|l| l.get("errorCode").is_none()).collect();
    assert_eq!(served.len(), 2, "{trail:#?}");
    for line in &served {
        assert_eq!(
            line["userIdentity"],
            serde_json::json!({"type": "SharedKey", "hostname": "node-client", "userName": "fluent-bit"})
        );
        assert_eq!(
            (&line["requestParameters"]["recordCount"], &line["sourceIPAddress"]),
            (&40.into(), &"127.0.0.1".into())
        );
    }
    let refused =
        trail.iter().find(|l| l["errorCode"] == "Fluent.HandshakeRefused").unwrap_or_else(|| panic!("{trail:#?}"));
    assert_eq!(
        (&refused["userIdentity"]["type"], &refused["requestParameters"]["clientHostname"]),
        (&"Unknown".into(), &"node-client".into())
    );
    assert!(trail.iter().any(|l| l["errorCode"] == "Fluent.BadMessage"), "{trail:#?}");
}

/// Messages that arrive together are taken together (one write to the log) and answered together;
/// one that is not the protocol's among them ends the connection after the ones before it are
/// taken and answered, and nothing of it (a Forward message whose second entry has no time) or
/// after it is taken.
#[test]
fn messages_sent_together_are_answered_together_and_a_bad_one_ends_the_connection() {
    use std::io::{Read as _, Write as _};
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let table = format!("type = \"fluent\"\nlisten = \"127.0.0.1:{port}\"");
    let config = listening_pipeline(dir.path(), "fluent-group", "durability = \"fsync\"", "fluent", &table);
    let mut run = run_listening(&config, port);
    // [tag, time, {"n": n}, {"chunk": id}]
    let message = |n: u8, chunk: &str| {
        let mut m = vec![0x94, 0xa1, b't', 0x01, 0x81, 0xa1, b'n', n, 0x81, 0xa5];
        m.extend_from_slice(b"chunk");
        m.push(0xa0 | chunk.len() as u8);
        m.extend_from_slice(chunk.as_bytes());
        m
    };
    // Forward: [tag, [[1, {"n": 3}], ["no time", {"n": 4}]], {"chunk": "c"}]
    let mut half_bad = vec![0x93, 0xa1, b't', 0x92, 0x92, 0x01, 0x81, 0xa1, b'n', 3, 0x92, 0xa7];
    half_bad.extend_from_slice(b"no time");
    half_bad.extend_from_slice(&[0x81, 0xa1, b'n', 4, 0x81, 0xa5]);
    half_bad.extend_from_slice(b"chunk");
    half_bad.extend_from_slice(&[0xa1, b'c']);
    let sent = [message(1, "a"), message(2, "b"), half_bad, message(5, "d")].concat();
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream.set_read_timeout(Some(std::time::Duration::from_secs(20))).unwrap();
    stream.write_all(&sent).unwrap();
    let mut answered = Vec::new();
    stream.read_to_end(&mut answered).unwrap();
    assert_eq!(answered, b"\x81\xa3ack\xa1a\x81\xa3ack\xa1b", "the acks of the two before, then the end");
    terminate(&run);
    assert!(run.wait().unwrap().success());
    let mut taken: Vec<i64> =
        json_lines_under(&dir.path().join("lake")).iter().map(|r| r["record"]["n"].as_i64().unwrap()).collect();
    taken.sort();
    assert_eq!(taken, [1, 2]);
}

/// `max_buffer_mb` bounds what the connections together hold of messages still arriving: a second
/// client whose half-sent message would pass it is closed (said as `Fluent.Busy`), while the
/// first, whose room is held, completes its message and is answered.
#[test]
fn messages_still_arriving_are_held_within_max_buffer_mb() {
    use std::io::{Read as _, Write as _};
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let table = format!("type = \"fluent\"\nlisten = \"127.0.0.1:{port}\"\nmax_message_mb = 1\nmax_buffer_mb = 2");
    let config = listening_pipeline(dir.path(), "fluent-buffer", "", "fluent", &table);
    let mut run = run_listening(&config, port);
    // [tag, 1, {"s": <1,000,000 bytes>}, {"chunk": "A"}], its first 900,000 bytes sent, then the rest.
    let mut message = vec![0x94, 0xa3];
    message.extend_from_slice(b"big");
    message.extend_from_slice(&[0x01, 0x81, 0xa1, b's', 0xdb]);
    message.extend_from_slice(&1_000_000u32.to_be_bytes());
    message.extend(std::iter::repeat_n(b'x', 1_000_000));
    message.extend_from_slice(&[0x81, 0xa5]);
    message.extend_from_slice(b"chunk");
    message.extend_from_slice(&[0xa1, b'A']);
    let connect = || {
        let stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        stream.set_read_timeout(Some(std::time::Duration::from_secs(20))).unwrap();
        stream
    };
    let mut first = connect();
    first.write_all(&message[..900_000]).unwrap();
    std::thread::sleep(std::time::Duration::from_secs(1));
    let mut second = connect();
    let _ = second.write_all(&message[..900_000]);
    let mut answered = Vec::new();
    let closed = second.read_to_end(&mut answered);
    assert!(
        closed.is_ok() || closed.as_ref().is_err_and(|e| e.kind() == std::io::ErrorKind::ConnectionReset),
        "{closed:?}"
    );
    assert!(answered.is_empty(), "{answered:?}");
    first.write_all(&message[900_000..]).unwrap();
    let mut ack = [0u8; 7];
    first.read_exact(&mut ack).unwrap();
    assert_eq!(&ack, b"\x81\xa3ack\xa1A");
    drop(first);
    terminate(&run);
    assert!(run.wait().unwrap().success());
    let records = json_lines_under(&dir.path().join("lake"));
    assert_eq!(records.len(), 1);
    assert_eq!(records[0]["record"]["s"].as_str().map(str::len), Some(1_000_000));
    let errors = json_lines_under(&dir.path().join("errors"));
    assert!(errors.iter().any(|e| e["errorCode"] == "Fluent.Busy"), "{errors:?}");
}

/// An event over a record's 1,000 KiB as JSON (a dumped blob) is taken with the rest of its
/// message, which is acknowledged, and goes whole to the sink's error output (`processing-failed`,
/// `Source.RecordTooLarge`): Fluent Bit or Fluentd would otherwise resend the whole chunk, or drop
/// it, for one event. Said in the error log, and in the connection's audit line as a record taken.
#[test]
fn an_event_over_a_records_size_goes_to_the_error_output_and_its_message_is_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let table = format!("type = \"fluent\"\nlisten = \"127.0.0.1:{port}\"");
    let config = listening_pipeline(dir.path(), "fluent-large", "", "fluent", &table);
    let mut run = run_listening(&config, port);
    let script = format!(
        "import msgpack, socket\n\
         entries = [[1764547200, {{'n': 0}}], [1764547201, {{'n': 1, 'blob': 'x' * 1100000}}], [1764547202, {{'n': 2}}]]\n\
         s = socket.create_connection(('127.0.0.1', {port}))\n\
         s.settimeout(20)\n\
         s.sendall(msgpack.packb(['app.big', entries, {{'chunk': 'c-1'}}]))\n\
         print(msgpack.unpackb(s.recv(1024)))\n"
    );
    let sent = Command::new(python()).arg("-c").arg(script).output().unwrap();
    let said = String::from_utf8_lossy(&sent.stdout);
    assert!(sent.status.success(), "{said}{}", String::from_utf8_lossy(&sent.stderr));
    assert_eq!(said.trim(), "{'ack': 'c-1'}");
    terminate(&run);
    // (Exit code 2: records went to the error output.)
    assert_eq!(run.wait().unwrap().code(), Some(2));
    let (records, failed) = records_and_error_documents(&dir.path().join("lake"));
    let mut kept: Vec<i64> = records.iter().map(|r| r["record"]["n"].as_i64().unwrap()).collect();
    kept.sort_unstable();
    assert_eq!(kept, [0, 2]);
    assert_eq!(failed.len(), 1, "{failed:#?}");
    assert_eq!(failed[0]["errorCode"], "Source.RecordTooLarge");
    let event: serde_json::Value = serde_json::from_str(&raw_data(&failed[0])).unwrap();
    assert_eq!(
        (&event["tag"], &event["time"], &event["record"]["n"]),
        (&"app.big".into(), &"2025-12-01T00:00:01Z".into(), &1.into())
    );
    assert_eq!(event["record"]["blob"].as_str().map(str::len), Some(1_100_000));
    let errors = json_lines_under(&dir.path().join("errors"));
    let said: Vec<&serde_json::Value> = errors.iter().filter(|e| e["errorCode"] == "Source.RecordTooLarge").collect();
    assert_eq!(said.len(), 1, "{errors:#?}");
    assert_eq!(said[0]["component"], "fluent", "{said:?}");
    let trail = json_lines_under(&dir.path().join("audit"));
    let forward: Vec<&serde_json::Value> = trail.iter().filter(|l| l["eventSource"] == "fluent.sluice").collect();
    assert_eq!(forward.len(), 1, "{trail:#?}");
    assert_eq!(forward[0]["requestParameters"]["recordCount"], 3);
}

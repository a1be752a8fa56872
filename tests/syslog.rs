//! The `syslog` source against real senders: util-linux's `logger` (RFC 5424 octet-counted with
//! structured data, RFC 3164 one message a line, over TCP and UDP) and Python's
//! `logging.handlers.SysLogHandler` (NUL-ended messages over TCP, datagrams over UDP), and RFC 5425
//! (TLS with client certificates) through Python's `ssl`. Every message sent is in the lake once,
//! its fields as sent.

use std::process::{Command, Stdio};

use super::support::{free_port, json_lines_under, python, repo_root, sluice, terminate};

/// `logger` with `args`, to 127.0.0.1:`port`.
fn logger(port: u16, args: &[&str]) {
    let sent = Command::new("logger").args(["-n", "127.0.0.1", "-P", &port.to_string()]).args(args).output().unwrap();
    assert!(sent.status.success(), "logger {args:?}: {}", String::from_utf8_lossy(&sent.stderr));
}

/// Runs a Python script; its stdout.
fn run_python(script: &str) -> String {
    let ran = Command::new(python()).arg("-c").arg(script).output().unwrap();
    assert!(ran.status.success(), "{}", String::from_utf8_lossy(&ran.stderr));
    String::from_utf8_lossy(&ran.stdout).into_owned()
}

/// The example pipeline `pipelines/from-syslog.toml` as a user runs it (its port moved, a TLS
/// source with client certificates added beside it): `logger` in both framings, Python's
/// `SysLogHandler` over TCP, and an RFC 5425 client; a client without a certificate is refused.
#[test]
fn logger_python_and_tls_clients_land_in_the_example_lake() {
    let dir = tempfile::tempdir().unwrap();
    let certs = super::support::TestCertificates::make();
    let (port, tls_port) = (free_port(), free_port());
    let example = std::fs::read_to_string(repo_root().join("pipelines/from-syslog.toml")).unwrap();
    let listen = "listen = \"127.0.0.1:5140\"";
    assert!(example.contains(listen));
    let tls_source = format!(
        "\n[sources.secure]\ntype = \"syslog\"\nlisten = \"127.0.0.1:{tls_port}\"\n\
         tls = {{ cert = \"{}\", key = \"{}\", client_ca = \"{}\" }}\n",
        certs.path("server.pem"),
        certs.path("server.key"),
        certs.path("ca.pem")
    );
    let config = dir.path().join("from-syslog.toml");
    let text = example
        .replace(listen, &format!("listen = \"127.0.0.1:{port}\""))
        .replace("inputs = [\"syslog\"]", "inputs = [\"syslog\", \"secure\"]")
        .replace("[sinks.lake]", &format!("{tls_source}\n[sinks.lake]"))
        .replace("name = \"from-syslog\"\n", "name = \"from-syslog\"\naudit_log = \"file://./audit\"\n");
    std::fs::write(&config, text).unwrap();
    let mut run = super::support::run_listening(&config, port);
    super::support::wait_for_port(tls_port, "the TLS syslog source");
    logger(
        port,
        &[
            "-T",
            "--octet-count",
            "--rfc5424",
            "--msgid",
            "ID7",
            "--sd-id",
            "zoo@123",
            "--sd-param",
            "tiger=\"hungry\"",
            "-t",
            "billing",
            "-p",
            "local3.warning",
            "octet counted, with structured data",
        ],
    );
    logger(port, &["-T", "--rfc3164", "-t", "cron", "-p", "cron.info", "one message a line"]);
    run_python(&format!(
        "import logging, logging.handlers, socket\n\
         handler = logging.handlers.SysLogHandler(address=('127.0.0.1', {port}), socktype=socket.SOCK_STREAM)\n\
         log = logging.getLogger('payments')\n\
         log.addHandler(handler)\n\
         for i in range(100):\n\
         \x20   log.error('payment %d declined', i)\n\
         handler.close()\n"
    ));
    // RFC 5425: octet-counted messages over TLS, with the client's certificate; and without one.
    let tls_client = |with_certificate: bool| {
        let load = if with_certificate {
            format!("context.load_cert_chain('{}', '{}')\n", certs.path("client.pem"), certs.path("client.key"))
        } else {
            String::new()
        };
        run_python(&format!(
            "import socket, ssl\n\
             context = ssl.create_default_context(cafile='{ca}')\n{load}\
             message = b'<86>1 2026-12-07T10:00:00.5Z gateway sshd 4242 - - Accepted publickey for ops'\n\
             try:\n\
             \x20   s = context.wrap_socket(socket.create_connection(('127.0.0.1', {tls_port})), server_hostname='127.0.0.1')\n\
             \x20   s.sendall(str(len(message)).encode() + b' ' + message)\n\
             \x20   s.settimeout(2)\n\
             \x20   s.recv(1)\n\
             \x20   print('answered')\n\
             except TimeoutError:\n\
             \x20   print('kept open')\n\
             except (ssl.SSLError, OSError) as e:\n\
             \x20   print('refused', type(e).__name__)\n",
            ca = certs.path("ca.pem"),
        ))
    };
    // (Syslog answers nothing: a client served is left waiting; one refused reads TLS's alert.)
    assert_eq!(tls_client(true).trim(), "kept open");
    let refused = tls_client(false);
    assert!(refused.starts_with("refused"), "{refused}");
    terminate(&run);
    assert!(run.wait().unwrap().success());

    let lake = dir.path().join("lake/syslog");
    let records = json_lines_under(&lake);
    assert_eq!(records.len(), 1 + 1 + 100 + 1, "{records:#?}");
    let one = |message: &str| {
        let found: Vec<&serde_json::Value> = records.iter().filter(|r| r["message"] == message).collect();
        assert_eq!(found.len(), 1, "{message}: {records:#?}");
        found[0]
    };
    let octet = one("octet counted, with structured data");
    assert_eq!(
        (&octet["protocol"], &octet["facility"], &octet["severity"], &octet["appname"], &octet["msgid"]),
        (&"rfc5424".into(), &"local3".into(), &"warning".into(), &"billing".into(), &"ID7".into())
    );
    assert_eq!(octet["structured_data"]["zoo@123"], serde_json::json!({"tiger": "hungry"}));
    assert_eq!(octet["source_ip"], "127.0.0.1");
    assert!(octet["timestamp"].as_str().is_some_and(|t| t.ends_with('Z')), "{octet}");
    let line = one("one message a line");
    assert_eq!(
        (&line["protocol"], &line["facility"], &line["appname"]),
        (&"rfc3164".into(), &"cron".into(), &"cron".into())
    );
    let mut declined: Vec<String> = records
        .iter()
        .filter(|r| r["message"].as_str().is_some_and(|m| m.contains("declined")))
        .map(|r| {
            assert_eq!((&r["facility"], &r["severity"]), (&"user".into(), &"err".into()), "{r}");
            r["message"].as_str().unwrap_or_default().to_string()
        })
        .collect();
    declined.sort();
    let mut expected: Vec<String> = (0..100).map(|i| format!("payment {i} declined")).collect();
    expected.sort();
    assert_eq!(declined, expected);
    let secure = one("Accepted publickey for ops");
    assert_eq!(
        (&secure["hostname"], &secure["appname"], &secure["procid"], &secure["timestamp"]),
        (&"gateway".into(), &"sshd".into(), &"4242".into(), &"2026-12-07T10:00:00.500Z".into())
    );
    assert!(
        super::support::files_under(&lake).iter().all(|f| f.to_string_lossy().contains("/host=")),
        "laid out by host"
    );
    // The audit trail: each connection that brought messages (the client refused in its handshake
    // brought none), what it brought, and the certificate of the one over mutual TLS.
    let trail: Vec<serde_json::Value> = json_lines_under(&dir.path().join("audit"))
        .into_iter()
        .filter(|l| l["eventSource"] == "syslog.sluice" && l["eventName"] == "SendMessages")
        .collect();
    let mut counts: Vec<u64> = trail.iter().map(|l| l["requestParameters"]["recordCount"].as_u64().unwrap()).collect();
    counts.sort_unstable();
    assert_eq!(counts, [1, 1, 1, 100], "{trail:#?}");
    assert!(trail.iter().all(|l| l["sourceIPAddress"] == "127.0.0.1" && l.get("errorCode").is_none()), "{trail:#?}");
    let over_tls: Vec<&serde_json::Value> = trail.iter().filter(|l| l["requestParameters"]["tls"] == true).collect();
    assert_eq!(over_tls.len(), 1, "{trail:#?}");
    let identity = &over_tls[0]["userIdentity"];
    assert_eq!(identity["type"], "ClientCertificate", "{identity}");
    assert_eq!(identity["clientCertificate"]["subject"], "CN=sluice test", "{identity}");
    assert!(
        trail.iter().filter(|l| l["requestParameters"]["tls"] == false).all(|l| l["userIdentity"]["type"] == "Unknown")
    );
}

/// `mode = "udp"`: `logger -d` and Python's `SysLogHandler` datagrams, each one message; a
/// datagram longer than `max_message_kb` is truncated to it, said in the error log and counted.
#[test]
fn udp_datagrams_land_and_one_too_long_is_truncated_and_said() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let table = format!("type = \"syslog\"\nmode = \"udp\"\nlisten = \"127.0.0.1:{port}\"\nmax_message_kb = 1");
    let config = super::support::listening_pipeline(dir.path(), "syslog-udp", "", "udp", &table);
    let mut run =
        sluice().args(["run", "--quiet"]).arg(&config).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    // (A UDP source has no port to connect to: the datagrams are sent once it says it listens.)
    std::thread::sleep(std::time::Duration::from_millis(1500));
    logger(port, &["-d", "--rfc5424", "-t", "router", "-p", "local7.notice", "interface ge-0/0/1 down"]);
    run_python(&format!(
        "import socket\n\
         socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b'<14>' + b'y' * 2000, ('127.0.0.1', {port}))\n"
    ));
    run_python(&format!(
        "import logging, logging.handlers, time\n\
         handler = logging.handlers.SysLogHandler(address=('127.0.0.1', {port}))\n\
         log = logging.getLogger('udp')\n\
         log.addHandler(handler)\n\
         for i in range(50):\n\
         \x20   log.warning('datagram %d', i)\n\
         \x20   time.sleep(0.002)\n\
         handler.close()\n"
    ));
    std::thread::sleep(std::time::Duration::from_millis(1500));
    terminate(&run);
    assert!(run.wait().unwrap().success());
    let records = json_lines_under(&dir.path().join("lake"));
    let router: Vec<&serde_json::Value> = records.iter().filter(|r| r["appname"] == "router").collect();
    assert_eq!(router.len(), 1, "{records:#?}");
    assert_eq!((&router[0]["message"], &router[0]["facility"]), (&"interface ge-0/0/1 down".into(), &"local7".into()));
    let datagrams =
        records.iter().filter(|r| r["message"].as_str().is_some_and(|m| m.starts_with("datagram "))).count();
    assert_eq!(datagrams, 50, "{records:#?}");
    let truncated: Vec<&serde_json::Value> =
        records.iter().filter(|r| r["message"].as_str().is_some_and(|m| m.starts_with('y'))).collect();
    assert_eq!(truncated.len(), 1, "{records:#?}");
    // Its first KiB: the PRI and 1,020 of its 2,000 bytes of message.
    assert_eq!(truncated[0]["message"], "y".repeat(1020));
    let said = json_lines_under(&dir.path().join("errors"));
    let said: Vec<&serde_json::Value> = said.iter().filter(|e| e["errorCode"] == "Syslog.MessageTruncated").collect();
    assert_eq!(said.len(), 1, "{said:#?}");
    assert!(said[0]["message"].as_str().is_some_and(|m| m.starts_with("a message of 2004 bytes")), "{said:#?}");
}

/// Over TCP, a message longer than `max_message_kb` (a stack trace in one message) is truncated
/// to it in either framing, `logger`'s octet counting (`--size` lets it send one that long) and a
/// line: its first KiB is its record, the rest of it never becomes a message, and the messages after
/// it on the same connection land; said in the error log and the connection's audit line.
#[test]
fn a_tcp_message_too_long_is_truncated_and_the_connection_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let table = format!("type = \"syslog\"\nlisten = \"127.0.0.1:{port}\"\nmax_message_kb = 1");
    let config = super::support::listening_pipeline(dir.path(), "syslog-long", "", "tcp", &table);
    let mut run = super::support::run_listening(&config, port);
    let trace = "at frame ".repeat(600);
    logger(port, &["-T", "--octet-count", "--rfc5424", "--size", "8192", "-t", "java", &trace]);
    run_python(&format!(
        "import socket\n\
         s = socket.create_connection(('127.0.0.1', {port}))\n\
         s.sendall(b'<11>app: ' + b'z' * 3000 + b'\\n<11>app: after the long line\\n')\n\
         s.close()\n"
    ));
    terminate(&run);
    assert!(run.wait().unwrap().success());
    let records = json_lines_under(&dir.path().join("lake"));
    let message = |r: &serde_json::Value| r["message"].as_str().unwrap_or_default().to_string();
    let java: Vec<String> = records.iter().filter(|r| r["appname"] == "java").map(message).collect();
    assert_eq!(java.len(), 1, "{records:#?}");
    assert!(java[0].starts_with("at frame at frame") && java[0].len() < 1024, "{}", java[0].len());
    // (No timestamp nor hostname: RFC 3164's parse leaves the tag in the message.)
    let mut lines: Vec<String> = records.iter().map(message).filter(|m| m.starts_with("app: ")).collect();
    lines.sort();
    assert_eq!(
        lines,
        ["app: after the long line".to_string(), format!("app: {}", "z".repeat(1024 - "<11>app: ".len()))]
    );
    let said = json_lines_under(&dir.path().join("errors"));
    assert_eq!(said.iter().filter(|e| e["errorCode"] == "Syslog.MessageTruncated").count(), 2, "{said:#?}");
    let trail = json_lines_under(&dir.path().join("audit"));
    let truncated: u64 = trail.iter().filter_map(|l| l["requestParameters"]["truncatedMessages"].as_u64()).sum();
    assert_eq!(truncated, 2, "{trail:#?}");
}

/// A child process killed and reaped when dropped (a test that fails leaves none running).
pub struct Reaped(std::process::Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A RELP pipeline under `dir` (`relp.toml`): a syslog source with `mode = "relp"` on `port` and
/// `source_keys` besides, into NDJSON objects under `<dir>/lake` each second (so that a test sees
/// lines land while its sender runs); its log under `<dir>/data`, its error log under
/// `<dir>/errors`, its audit trail under `<dir>/audit`.
pub fn relp_pipeline(dir: &std::path::Path, port: u16, source_keys: &str) -> std::path::PathBuf {
    let config = dir.join("relp.toml");
    std::fs::write(
        &config,
        format!(
            "[pipeline]\nname = \"relp\"\ndata_dir = \"{data}\"\naudit_log = \"file://{audit}\"\n\
             error_log = {{ url = \"file://{errors}\", buffer = {{ size_mb = 1, interval_s = 1 }} }}\n\
             [sources.relp]\ntype = \"syslog\"\nmode = \"relp\"\nlisten = \"127.0.0.1:{port}\"\n{source_keys}\n\
             [sinks.lake]\ntype = \"object_store\"\ninputs = [\"relp\"]\nurl = \"file://{lake}\"\nformat = \"ndjson\"\n\
             buffer = {{ size_mb = 1, interval_s = 1 }}\n",
            data = dir.join("data").display(),
            audit = dir.join("audit").display(),
            errors = dir.join("errors").display(),
            lake = dir.join("lake").display()
        ),
    )
    .unwrap();
    config
}

/// rsyslogd in the foreground (Debian's rsyslog and rsyslog-relp), following `<dir>/app.log`
/// with `imfile` and sending each line to `port` with its RELP output (`omrelp`, `omrelp_keys`
/// besides), retrying for ever; the log's path.
pub fn rsyslog_relp(dir: &std::path::Path, port: u16, omrelp_keys: &str) -> (Reaped, std::path::PathBuf) {
    let (log, work, conf) = (dir.join("app.log"), dir.join("rsyslog"), dir.join("rsyslog.conf"));
    std::fs::create_dir_all(&work).unwrap();
    std::fs::write(&log, "").unwrap();
    std::fs::write(
        &conf,
        format!(
            "global(workDirectory=\"{work}\")\n\
             module(load=\"imfile\" PollingInterval=\"1\")\n\
             module(load=\"omrelp\")\n\
             input(type=\"imfile\" File=\"{log}\" Tag=\"app:\")\n\
             action(type=\"omrelp\" target=\"127.0.0.1\" port=\"{port}\" {omrelp_keys} \
             action.resumeRetryCount=\"-1\" action.resumeInterval=\"1\")\n",
            work = work.display(),
            log = log.display()
        ),
    )
    .unwrap();
    let rsyslog = Command::new("rsyslogd")
        .args(["-n", "-f"])
        .arg(&conf)
        .arg("-i")
        .arg(dir.join("rsyslog.pid"))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("rsyslogd (Debian's rsyslog and rsyslog-relp; scripts/test.sh installs them)");
    (Reaped(rsyslog), log)
}

/// Waits (up to a minute) until the messages landed under `<dir>/lake` are `lines`, then kills
/// `rsyslog`; what it said, for a failing test's message.
pub fn await_lines(dir: &std::path::Path, lines: &[String], rsyslog: Reaped) -> String {
    let landed = || {
        json_lines_under(&dir.join("lake"))
            .iter()
            .filter_map(|r| r["message"].as_str().map(str::to_string))
            .collect::<std::collections::BTreeSet<_>>()
    };
    let waited = std::time::Instant::now();
    while landed().len() < lines.len() && waited.elapsed() < std::time::Duration::from_secs(60) {
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
    let mut rsyslog = rsyslog;
    let _ = rsyslog.0.kill();
    let mut said = String::new();
    if let Some(mut err) = rsyslog.0.stderr.take() {
        let _ = std::io::Read::read_to_string(&mut err, &mut said);
    }
    said
}

/// Every one of `lines` is among the messages under `<dir>/lake` (once or more), and nothing else.
pub fn assert_landed(dir: &std::path::Path, lines: &[String], rsyslog_said: &str) {
    let landed: std::collections::BTreeSet<String> =
        json_lines_under(&dir.join("lake")).iter().filter_map(|r| r["message"].as_str().map(str::to_string)).collect();
    let missing: Vec<String> =
        lines.iter().filter(|l| !landed.contains(*l)).take(5).map(|l| l.chars().take(40).collect()).collect();
    assert!(missing.is_empty(), "lines missing, e.g. {missing:?}; rsyslog said: {rsyslog_said}");
    assert_eq!(landed.len(), lines.len(), "rsyslog said: {rsyslog_said}");
}

/// A RELP peer that is not one: a `syslog` frame before `open`, or bytes that are no frame, close
/// the connection unanswered; an unknown command after `open` is answered 500 and the session goes
/// on; each is said in the error log (`Syslog.RelpRefused`) and nothing of them lands.
#[test]
fn relp_frames_out_of_protocol_are_refused_and_said() {
    use std::io::{Read as _, Write as _};
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = relp_pipeline(dir.path(), port, "");
    let mut run = super::support::run_listening(&config, port);
    let session = |sent: &[u8]| {
        let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        stream.set_read_timeout(Some(std::time::Duration::from_secs(10))).unwrap();
        stream.write_all(sent).unwrap();
        let mut answered = Vec::new();
        stream.read_to_end(&mut answered).unwrap();
        String::from_utf8_lossy(&answered).into_owned()
    };
    assert_eq!(session(b"1 syslog 5 <13>x\n"), "");
    assert_eq!(session(b"GET / HTTP/1.1\r\n\r\n"), "");
    let open = "1 open 14 relp_version=0\n2 teleport 0\n3 syslog 11 <13>app: ok\n4 close 0\n";
    let answered = session(open.as_bytes());
    let lines: Vec<&str> = answered.lines().collect();
    assert!(lines[0].starts_with("1 rsp ") && lines[0].ends_with("200 OK"), "{answered}");
    assert!(answered.contains("\n2 rsp 25 500 command not supported\n3 rsp 6 200 OK\n4 rsp 0\n"), "{answered}");
    terminate(&run);
    assert!(run.wait().unwrap().success());
    let records = json_lines_under(&dir.path().join("lake"));
    let messages: Vec<&str> = records.iter().filter_map(|r| r["message"].as_str()).collect();
    assert_eq!(messages, ["app: ok"], "{records:#?}");
    let said = json_lines_under(&dir.path().join("errors"));
    let refused = said.iter().filter(|e| e["errorCode"] == "Syslog.RelpRefused").count();
    assert_eq!(refused, 3, "{said:#?}");
}

/// `mode = "relp"` against rsyslog's own RELP output (`omrelp`, Debian's rsyslog-relp), fed by
/// rsyslog's `imfile` from a log being written: sluice is killed (SIGKILL) while the lines flow and
/// started again; rsyslog sends again what sluice had not answered, so every line of the log lands
/// (at least once: what was answered was durable, what was not is sent again), and the session's
/// `open`, `syslog` and `close` frames are answered as librelp expects (rsyslog would say otherwise
/// in its own output, which the test shows when it fails).
#[test]
fn rsyslog_relp_output_loses_nothing_when_sluice_is_killed() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = relp_pipeline(dir.path(), port, "");
    let start = || {
        super::support::start_listening_with(
            sluice().args(["run", "--quiet"]).arg(&config).stdout(Stdio::null()).stderr(Stdio::null()),
            port,
        )
    };
    let mut run = start();
    let (rsyslog, log) = rsyslog_relp(dir.path(), port, "");
    // The log is written in rounds; sluice is killed after the second. (rsyslog's RELP output
    // sends about a thousand messages a second here: librelp corks its socket (TCP_CORK) while it
    // sends a batch, and a corked segment leaves after the kernel's 200 ms.)
    let lines: Vec<String> = (0..6_000).map(|i| format!("request {i} served in {}ms", i % 97)).collect();
    let mut file = std::fs::OpenOptions::new().append(true).open(&log).unwrap();
    for (round, chunk) in lines.chunks(1_000).enumerate() {
        std::io::Write::write_all(&mut file, (chunk.join("\n") + "\n").as_bytes()).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(100));
        if round == 1 {
            run.kill().unwrap(); // SIGKILL
            run.wait().unwrap();
            run = start();
        }
    }
    let said = await_lines(dir.path(), &lines, rsyslog);
    terminate(&run);
    assert!(run.wait().unwrap().success());
    assert_landed(dir.path(), &lines, &said);
}

/// RELP over mutual TLS (`tls` with `client_ca`): rsyslog's `omrelp` with `tls="on"`, checking
/// sluice's certificate by name and presenting its own (without one, librelp offers only
/// anonymous Diffie-Hellman, which a server with a certificate does not serve); the session's
/// audit line names the client's certificate.
#[test]
fn rsyslog_relp_output_over_mutual_tls_lands_with_its_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let certs = super::support::TestCertificates::make();
    let port = free_port();
    let tls = format!(
        "tls = {{ cert = \"{}\", key = \"{}\", client_ca = \"{}\" }}",
        certs.path("server.pem"),
        certs.path("server.key"),
        certs.path("ca.pem")
    );
    let config = relp_pipeline(dir.path(), port, &tls);
    let mut run = super::support::run_listening(&config, port);
    let omrelp_tls = format!(
        "tls=\"on\" tls.caCert=\"{}\" tls.authMode=\"name\" tls.permittedPeer=[\"sluice test\"] \
         tls.myCert=\"{}\" tls.myPrivKey=\"{}\"",
        certs.path("ca.pem"),
        certs.path("client.pem"),
        certs.path("client.key")
    );
    let (rsyslog, log) = rsyslog_relp(dir.path(), port, &omrelp_tls);
    let lines: Vec<String> = (0..200).map(|i| format!("over TLS {i}")).collect();
    std::fs::write(&log, lines.join("\n") + "\n").unwrap();
    let said = await_lines(dir.path(), &lines, rsyslog);
    terminate(&run);
    assert!(run.wait().unwrap().success());
    assert_landed(dir.path(), &lines, &said);
    let trail = json_lines_under(&dir.path().join("audit"));
    let sessions: Vec<&serde_json::Value> = trail.iter().filter(|l| l["eventSource"] == "syslog.sluice").collect();
    assert!(!sessions.is_empty(), "{trail:#?}");
    assert!(
        sessions
            .iter()
            .all(|l| l["requestParameters"]["tls"] == true && l["userIdentity"].to_string().contains("sluice test")),
        "{sessions:#?}"
    );
}

/// Under `sluice serve`, a changed pipeline of a UDP syslog source keeps its socket through the
/// reload: a sender on a connected socket (which Linux tells when a datagram is refused) is never
/// refused, and every datagram it sent is delivered once, by the old run or the new one.
#[test]
fn a_reload_under_serve_keeps_the_udp_socket_and_its_datagrams() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let dir = tempfile::tempdir().unwrap();
    let pipelines = dir.path().join("pipelines");
    std::fs::create_dir(&pipelines).unwrap();
    let (api, admin, port) = (free_port(), free_port(), free_port());
    let lake = |folder: &str| dir.path().join(folder);
    let write = |folder: &str| {
        let text = format!(
            "[pipeline]\nname = \"syslog-udp\"\ndata_dir = \"{}\"\n\
             [sources.udp]\ntype = \"syslog\"\nmode = \"udp\"\nlisten = \"127.0.0.1:{port}\"\n\
             [sinks.lake]\ntype = \"object_store\"\ninputs = [\"udp\"]\nurl = \"file://{}\"\nformat = \"ndjson\"\n\
             buffer = {{ size_mb = 1, interval_s = 1 }}\n",
            dir.path().join("data").display(),
            lake(folder).display()
        );
        std::fs::write(pipelines.join("syslog-udp.toml"), text).unwrap();
    };
    write("before");
    let mut serving = super::support::start_serve(&pipelines, api, admin);
    // (The admin endpoint listens once the pipelines are prepared: the socket is bound.)
    super::support::wait_for_port(admin, "the admin endpoint");
    let sending = std::sync::Arc::new(AtomicBool::new(true));
    let sender = {
        let sending = std::sync::Arc::clone(&sending);
        std::thread::spawn(move || {
            let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
            socket.connect(("127.0.0.1", port)).unwrap();
            let (mut sent, mut refused) = (Vec::new(), Vec::new());
            let mut n = 0;
            while sending.load(Ordering::SeqCst) {
                let message = format!("datagram {n}");
                n += 1;
                match socket.send(format!("<13>1 - host app - - - {message}").as_bytes()) {
                    Ok(_) => sent.push(message),
                    Err(e) => refused.push(format!("{message}: {e}")),
                }
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            (sent, refused)
        })
    };
    std::thread::sleep(std::time::Duration::from_millis(1500));
    write("after");
    let hup = Command::new("kill").args(["-HUP", &serving.id().to_string()]).status().unwrap();
    assert!(hup.success());
    let http = reqwest::blocking::Client::new();
    let waited = std::time::Instant::now();
    while !http
        .get(format!("http://127.0.0.1:{admin}/metrics"))
        .send()
        .and_then(|r| r.text())
        .is_ok_and(|m| m.contains("\nsluice_ConfigReloads 1\n"))
    {
        assert!(waited.elapsed() < std::time::Duration::from_secs(60), "no reload");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    std::thread::sleep(std::time::Duration::from_millis(1500));
    sending.store(false, Ordering::SeqCst);
    let (mut sent, refused) = sender.join().unwrap();
    // (What was sent last is read before the stop: a stop takes no more datagrams.)
    std::thread::sleep(std::time::Duration::from_millis(500));
    terminate(&serving);
    assert!(serving.wait().unwrap().success());
    assert!(refused.is_empty(), "datagrams refused during the reload: {refused:?}");
    let (before, after) = (json_lines_under(&lake("before")), json_lines_under(&lake("after")));
    assert!(!before.is_empty() && !after.is_empty(), "{} before, {} after", before.len(), after.len());
    let mut delivered: Vec<String> =
        before.iter().chain(&after).map(|r| r["message"].as_str().unwrap_or_default().to_string()).collect();
    delivered.sort();
    sent.sort();
    assert_eq!(delivered, sent);
}

/// UDP with a receive buffer too small for a burst (`receive_buffer_kb`): the datagrams the kernel
/// drops are said and counted (`Syslog.DatagramsDropped`), so that the datagrams delivered and
/// those said dropped add up to those sent, each delivered once.
#[test]
fn datagrams_the_kernel_drops_are_said_so_that_nothing_is_lost_unsaid() {
    let dir = tempfile::tempdir().unwrap();
    let (port, admin) = (free_port(), free_port());
    let table = format!("type = \"syslog\"\nmode = \"udp\"\nlisten = \"127.0.0.1:{port}\"\nreceive_buffer_kb = 4");
    let config = super::support::listening_pipeline(dir.path(), "syslog-drops", "", "udp", &table);
    let mut run = sluice()
        .args(["run", "--quiet", "--admin", &format!("127.0.0.1:{admin}")])
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // (The admin endpoint listens once the source is prepared: its socket is bound.)
    super::support::wait_for_port(admin, "the admin endpoint");
    let sent: u64 = 20_000;
    run_python(&format!(
        "import socket\n\
         s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n\
         for n in range({sent}):\n\
         \x20   s.sendto(b'<13>1 - host app - - - n=%d ' % n + b'x' * 400, ('127.0.0.1', {port}))\n"
    ));
    std::thread::sleep(std::time::Duration::from_millis(1500));
    terminate(&run);
    assert!(run.wait().unwrap().success());
    let mut delivered: Vec<String> = json_lines_under(&dir.path().join("lake"))
        .iter()
        .map(|r| r["message"].as_str().unwrap_or_default().to_string())
        .collect();
    let errors = json_lines_under(&dir.path().join("errors"));
    let dropped: u64 = errors
        .iter()
        .filter(|e| e["errorCode"] == "Syslog.DatagramsDropped")
        .map(|e| {
            let message = e["message"].as_str().unwrap_or_default();
            message.trim_start_matches("the kernel dropped ").split(' ').next().unwrap().parse::<u64>().unwrap()
        })
        .sum();
    assert!(dropped > 0, "a 4 KiB buffer held a burst of {sent} datagrams: {} delivered", delivered.len());
    let count = delivered.len() as u64;
    delivered.sort();
    delivered.dedup();
    assert_eq!(delivered.len() as u64, count, "a datagram delivered twice");
    assert_eq!(count + dropped, sent, "{count} delivered and {dropped} said dropped");
}

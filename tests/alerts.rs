//! docs/alerts.yml (issue 19 §3): `promtool check rules` accepts it, and each rule fires, in
//! `promtool test rules`, on series taken from real `/metrics` scrapes of a run whose destinations
//! are down (deliveries failing, data going stale, records going to the error output), whose
//! API serves a certificate that expires within two days, one of whose sinks presents a client
//! certificate that does too, whose Kinesis source reads an hour
//! behind its stream (moto, behind a proxy that says so as Kinesis would), one of whose sinks
//! has its `tls.ca` renewed with a broken file, and whose UDP syslog source gets a burst its buffer
//! cannot hold; and of a `sluice serve` whose folder holds a file with an error.

use std::process::{Command, Stdio};
use std::time::Duration;

use super::support::{
    TestCertificates, free_port, python, repo_root, sluice, start_listening_with, start_serve, terminate,
};

fn promtool() -> Command {
    Command::new("promtool")
}

#[test]
fn the_alert_rules_are_valid_and_each_fires_on_a_real_scrape_where_its_condition_holds() {
    let rules = repo_root().join("docs/alerts.yml");
    let checked = promtool()
        .args(["check", "rules"])
        .arg(&rules)
        .output()
        .expect("promtool (scripts/test.sh installs Debian's prometheus)");
    let said = String::from_utf8_lossy(&checked.stdout);
    assert!(
        checked.status.success() && said.contains("SUCCESS: 11 rules found"),
        "{said}{}",
        String::from_utf8_lossy(&checked.stderr)
    );

    let dir = tempfile::tempdir().unwrap();
    // A Kinesis stream the source reads an hour behind its tip (moto, behind a proxy saying so).
    let moto = super::security::Moto::start();
    let stream = super::kinesis::create_stream(&moto, "lagging", 1);
    let lag = super::kinesis::Faults::behind(3_600_000);
    let (kinesis, _proxy_runtime) = super::kinesis::fault_proxy(&moto.endpoint, std::sync::Arc::new(lag));
    // The API serves a certificate of the test CA, which lasts two days: within the expiry rule's 14.
    let certs = TestCertificates::make();
    let (api, admin, down, udp) = (free_port(), free_port(), free_port(), free_port());
    // The stuck sink's CA file, renewed with a broken one once the run is up; its client
    // certificate (the test CA's too) ends within two days.
    let ca = dir.path().join("ca.pem");
    std::fs::copy(certs.path("ca.pem"), &ca).unwrap();
    let config = dir.path().join("alerts.toml");
    std::fs::write(
        &config,
        format!(
            r#"[pipeline]
name = "alerts"
data_dir = "{data}"
stop_timeout_s = 1

[sources.gen]
type = "generator"
profile = "cloudfront"
rate = 500

[sources.api]
type = "firehose"
listen = "127.0.0.1:{api}"
tls = {{ cert = "{cert}", key = "{key}" }}

[sources.lagging]
type = "kinesis"
stream = "{stream}"
endpoint = "http://127.0.0.1:{kinesis}"
poll_ms = 200

[sources.datagrams]
type = "syslog"
mode = "udp"
listen = "127.0.0.1:{udp}"
receive_buffer_kb = 4

[sinks.stuck]
type = "http_endpoint"
inputs = ["gen", "api", "lagging", "datagrams"]
url = "http://127.0.0.1:{down}/in"
buffer = {{ size_mb = 1, interval_s = 1 }}
retry = {{ duration_s = 600 }}
backup_store = {{ url = "file://{backup}" }}
tls = {{ ca = "{ca}", cert = "{client_cert}", key = "{client_key}" }}

[sinks.failing]
type = "http_endpoint"
inputs = ["gen"]
url = "http://127.0.0.1:{down}/in"
buffer = {{ size_mb = 1, interval_s = 1 }}
retry = {{ duration_s = 0 }}
backup_store = {{ url = "file://{backup}" }}
"#,
            data = dir.path().join("data").display(),
            backup = dir.path().join("backup").display(),
            cert = certs.path("server.pem"),
            key = certs.path("server.key"),
            ca = ca.display(),
            client_cert = certs.path("client.pem"),
            client_key = certs.path("client.key"),
        ),
    )
    .unwrap();
    let run = start_listening_with(
        sluice()
            .args(["run", "--quiet", config.to_str().unwrap(), "--admin", &format!("127.0.0.1:{admin}")])
            .envs(super::security::aws_env())
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
        api,
    );
    // A `sluice serve` of a folder with a file it cannot serve: its families join each scrape.
    let served = dir.path().join("served");
    std::fs::create_dir(&served).unwrap();
    std::fs::write(
        served.join("good.toml"),
        format!(
            "[pipeline]\nname = \"good\"\ndata_dir = \"{}\"\n[sources.api]\ntype = \"firehose\"\n\
             [sinks.out]\ntype = \"object_store\"\ninputs = [\"api\"]\nurl = \"file://{}\"\n",
            dir.path().join("served-data").display(),
            dir.path().join("served-out").display()
        ),
    )
    .unwrap();
    std::fs::write(served.join("broken.toml"), "[pipeline]\nname = 3\n").unwrap();
    let (serve_port, serve_admin) = (free_port(), free_port());
    let serve = start_serve(&served, serve_port, serve_admin);
    let get = |port: u16| {
        let answer = reqwest::blocking::get(format!("http://127.0.0.1:{port}/metrics"));
        answer.and_then(reqwest::blocking::Response::text)
    };
    let waited = std::time::Instant::now();
    let serve_text = loop {
        match get(serve_admin) {
            Ok(text) => break text,
            Err(e) => assert!(waited.elapsed() < Duration::from_secs(20), "{e}"),
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(serve_text.contains("\nsluice_ConfigFilesFailed 1\n"), "{serve_text}");
    let scrape = |name: &str| {
        let text = get(admin).unwrap() + &serve_text;
        std::fs::write(dir.path().join(name), &text).unwrap();
        text
    };
    std::thread::sleep(Duration::from_secs(2));
    scrape("before.prom");
    let between = std::time::Instant::now();
    // The stuck sink's CA file renewed with a broken one: refused at the sink's next look at its
    // files (every 5 s, when a delivery asks for its client: every second here), which the second
    // scrape waits for; the other conditions get their 7 s at least.
    std::fs::write(&ca, "-----BEGIN CERTIFICATE-----\ncut short\n").unwrap();
    // A burst of datagrams into the syslog source's 4 KiB buffer: the kernel drops most of them.
    let burst = Command::new(python())
        .arg("-c")
        .arg(format!(
            "import socket\n\
             s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n\
             for n in range(20000):\n\
             \x20   s.sendto(b'<13>1 - host app - - - %d ' % n + b'x' * 400, ('127.0.0.1', {udp}))\n"
        ))
        .status()
        .unwrap();
    assert!(burst.success());
    let refused = |text: &str| {
        text.lines()
            .any(|l| l.starts_with("sluice_TlsRenewalFailures{") && l.contains("\"stuck\"") && l.ends_with(" 1"))
    };
    loop {
        std::thread::sleep(Duration::from_millis(250));
        let text = scrape("after.prom");
        if refused(&text) && between.elapsed() >= Duration::from_secs(7) {
            break;
        }
        assert!(between.elapsed() < Duration::from_secs(40), "the broken CA file was not refused:\n{text}");
    }
    let seconds = between.elapsed().as_secs_f64();
    // Each exposition parses, and every family says what it counts (`# HELP`); the names follow
    // Firehose's (camelCase, counters without `_total`), which promtool's other lints point out.
    for (what, text) in [("run", get(admin).unwrap()), ("serve", serve_text.clone())] {
        let mut check = promtool()
            .args(["check", "metrics"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        std::io::Write::write_all(&mut check.stdin.take().unwrap(), text.as_bytes()).unwrap();
        let said = check.wait_with_output().unwrap();
        let said = String::from_utf8_lossy(&said.stdout).into_owned() + &String::from_utf8_lossy(&said.stderr);
        let unfit: Vec<&str> = said.lines().filter(|l| l.contains("no help text") || l.contains("error")).collect();
        assert!(unfit.is_empty(), "{what}'s /metrics: {unfit:?}\n{text}");
        let told = if what == "run" { "# HELP sluice_TlsRenewalFailures " } else { "# HELP sluice_ConfigFilesFailed " };
        assert!(text.contains(told), "{what}: {text}");
    }
    terminate(&serve);
    let mut serve = serve;
    serve.wait().unwrap();
    terminate(&run);
    let mut run = run;
    run.wait().unwrap();

    let checked = Command::new(python())
        .arg(repo_root().join("tests/alerts_check.py"))
        .arg(&rules)
        .args([dir.path().join("before.prom"), dir.path().join("after.prom")])
        .arg(seconds.to_string())
        .arg(dir.path())
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&checked.stdout);
    assert!(checked.status.success(), "{report}{}", String::from_utf8_lossy(&checked.stderr));
    let report: serde_json::Value = serde_json::from_str(&report).unwrap();
    // The run drove three conditions itself, on the sinks they concern.
    let fired = |alert: &str| {
        report["expected"][alert]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l["destination"].as_str().unwrap_or("").to_string())
            .collect::<Vec<_>>()
    };
    // (Success counts finished deliveries: the sink still retrying shows as stale instead.)
    assert_eq!(fired("SluiceDeliveryFailing"), ["failing"], "{report}");
    assert_eq!(fired("SluiceDataStale"), ["stuck"], "{report}");
    assert_eq!(fired("SluiceErrorOutputGrowing"), ["failing"], "{report}");
    assert_eq!(fired("SluiceTlsRenewalRefused"), ["stuck"], "{report}");
    let behind = &report["expected"]["SluiceKinesisSourceBehind"];
    assert_eq!(behind.as_array().map(Vec::len), Some(1), "{report}");
    assert_eq!(behind[0]["stream"], "alerts", "{report}");
    let expiring = &report["expected"]["SluiceListenerCertificateExpiring"];
    assert_eq!(expiring.as_array().map(Vec::len), Some(1), "{report}");
    assert_eq!(expiring[0]["stream"], "alerts", "{report}");
    assert_eq!(fired("SluiceClientCertificateExpiring"), ["stuck"], "{report}");
    assert_eq!(report["expected"]["SluiceConfigFilesFailed"].as_array().map(Vec::len), Some(1), "{report}");
    let dropping = &report["expected"]["SluiceSourceDroppingData"];
    assert_eq!(dropping.as_array().map(Vec::len), Some(1), "{report}");
    assert_eq!(dropping[0]["stream"], "alerts", "{report}");
}

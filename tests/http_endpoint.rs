//! The `http_endpoint` sink against a real HTTP receiver on 127.0.0.1 that checks Firehose's HTTP
//! endpoint protocol 1.0 (headers, request body, requestId echo): records arrive exactly, gzip and
//! headers as configured, a 500 is retried under the same request id, and what the endpoint never
//! takes (500s past the retry duration, 413 at once) is in the backup store as error documents;
//! and the `http_endpoint` source, the protocol's receiving side, fed by that sink from another
//! sluice and by hand-made requests that check its answers.

use std::collections::BTreeMap;
use std::io::Read;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};

use base64::Engine;
use sluice_connectors::registry;
use sluice_connectors::synth::Profile;
use sluice_engine::testkit::sink::{Destination, Fault};
use sluice_engine::testkit::{plan_from_str, run_pipeline};

use super::support::{
    StartedRun, TestCertificates, folder_objects, free_port, generated, logged_run, serve, sluice,
    start_listening_with, terminate,
};

/// What the receiver answers.
#[derive(Clone, Copy)]
enum Answer {
    /// 200 with the request id, after failing the first `n` requests with 500.
    OkAfter(usize),
    /// Always this status.
    Always(u16),
}

#[derive(Default)]
struct Seen {
    records: Vec<String>,
    /// The body of each request answered 200, as sent (compressed or not), by request id.
    bodies: BTreeMap<String, Vec<u8>>,
    /// Request id of each request, in arrival order.
    request_ids: Vec<String>,
    headers: Vec<BTreeMap<String, String>>,
    requests: usize,
}

struct Receiver {
    url: String,
    seen: Arc<Mutex<Seen>>,
    /// What it answers from now on.
    answer: Arc<Mutex<Answer>>,
    _runtime: tokio::runtime::Runtime,
}

fn receiver(answer: Answer) -> Receiver {
    receiver_over(answer, None)
}

/// A receiver serving HTTPS with `tls` (plain HTTP without).
fn receiver_over(answer: Answer, tls: Option<axum_server::tls_rustls::RustlsConfig>) -> Receiver {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let seen = Arc::new(Mutex::new(Seen::default()));
    let state = Arc::clone(&seen);
    let answer = Arc::new(Mutex::new(answer));
    let answering = Arc::clone(&answer);
    let app = axum::Router::new().route(
        "/firehose",
        axum::routing::post(move |headers: axum::http::HeaderMap, body: axum::body::Bytes| {
            let seen = Arc::clone(&state);
            let answer = *answering.lock().unwrap();
            async move {
                let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
                let mut text = Vec::new();
                if header("content-encoding") == "gzip" {
                    flate2::read::GzDecoder::new(&body[..]).read_to_end(&mut text).unwrap();
                } else {
                    text = body.to_vec();
                }
                let request: serde_json::Value = serde_json::from_slice(&text).unwrap();
                let id = header("x-amz-firehose-request-id");
                assert_eq!(request["requestId"], id.as_str(), "the body's requestId is the header's");
                assert!(request["timestamp"].as_i64().unwrap() > 1_700_000_000_000);
                let mut seen = seen.lock().unwrap();
                seen.requests += 1;
                seen.request_ids.push(id.clone());
                seen.headers.push(headers.iter().map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_string())).collect());
                let status = match answer {
                    Answer::OkAfter(n) if seen.requests <= n => 500,
                    Answer::OkAfter(_) => 200,
                    Answer::Always(s) => s,
                };
                if status == 200 {
                    seen.bodies.insert(id.clone(), body.to_vec());
                    let records = request["records"].as_array().unwrap();
                    assert!(records.len() <= 10_000);
                    for r in records {
                        let data = base64::engine::general_purpose::STANDARD.decode(r["data"].as_str().unwrap()).unwrap();
                        seen.records.push(String::from_utf8(data).unwrap());
                    }
                }
                let body = serde_json::json!({"requestId": id, "timestamp": 1_764_000_000_000i64, "errorMessage": if status == 200 { "" } else { "busy" }});
                (axum::http::StatusCode::from_u16(status).unwrap(), [("content-type", "application/json")], body.to_string())
            }
        }),
    );
    let url = format!("{}/firehose", serve(&runtime, app, tls));
    Receiver { url, seen, answer, _runtime: runtime }
}

fn pipeline(url: &str, backup: &std::path::Path, records: u64, extra: &str) -> String {
    format!(
        "[pipeline]\nname = \"to-http\"\n[sources.gen]\ntype = \"generator\"\nprofile = \"cloudtrail\"\nrecords = {records}\nseed = 6\n\
         [sinks.siem]\ntype = \"http_endpoint\"\ninputs = [\"gen\"]\nurl = \"{url}\"\n\
         error_prefix = \"failed/!{{firehose:error-output-type}}/\"\nbackup_store = {{ url = \"file://{}\" }}\n{extra}\n",
        backup.display()
    )
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

#[test]
fn records_reach_the_endpoint_with_the_protocol_headers_and_a_500_is_retried_under_the_same_id() {
    let endpoint = receiver(Answer::OkAfter(2));
    let backup = tempfile::tempdir().unwrap();
    let toml = pipeline(
        &endpoint.url,
        backup.path(),
        12_000,
        "access_key = \"secret-key\"\ncontent_encoding = \"gzip\"\ncommon_attributes = { env = \"test\" }\n\
         buffer = { size_mb = 64, interval_s = 60 }\nretry = { duration_s = 30 }",
    );
    let (_, metrics) = run_pipeline(&toml, &registry(), 2).unwrap();
    let seen = endpoint.seen.lock().unwrap();
    assert_eq!(sorted(seen.records.clone()), sorted(generated(Profile::Cloudtrail, 6, 12_000)));
    // 12,000 records on two workers: at least two requests (10,000 at most each), plus two refused.
    assert!(seen.requests >= 4, "{} requests", seen.requests);
    let retried = seen.request_ids.iter().filter(|id| seen.request_ids.iter().filter(|x| x == id).count() > 1).count();
    assert!(retried >= 2, "a refused request is sent again under its id: {:?}", seen.request_ids);
    for h in &seen.headers {
        assert_eq!(h["x-amz-firehose-protocol-version"], "1.0");
        assert_eq!(h["x-amz-firehose-access-key"], "secret-key");
        assert_eq!(h["x-amz-firehose-source-arn"], "arn:aws:firehose:us-east-1:000000000000:deliverystream/to-http");
        assert_eq!(h["x-amz-firehose-common-attributes"], r#"{"commonAttributes":{"env":"test"}}"#);
        assert_eq!(h["content-type"], "application/json");
        assert_eq!(h["content-encoding"], "gzip");
    }
    let m = &metrics.sinks[0];
    assert_eq!((m.records_delivered.load(Relaxed), m.records_failed.load(Relaxed)), (12_000, 0));
    assert!(folder_objects(backup.path()).is_empty());
}

#[test]
fn what_the_endpoint_never_takes_is_in_the_backup_store_and_413_is_not_retried() {
    for (status, retry_s, attempts) in [(500u16, 2u64, 2..=3u64), (413, 300, 1..=1)] {
        let endpoint = receiver(Answer::Always(status));
        let backup = tempfile::tempdir().unwrap();
        let toml = pipeline(&endpoint.url, backup.path(), 1500, &format!("retry = {{ duration_s = {retry_s} }}"));
        let (_, metrics) = run_pipeline(&toml, &registry(), 1).unwrap();
        let objects = folder_objects(backup.path());
        assert!(objects.keys().all(|k| k.starts_with("failed/http-endpoint-failed/")), "{:?}", objects.keys());
        let docs: Vec<serde_json::Value> =
            objects.values().flatten().map(|l| serde_json::from_str(l).unwrap()).collect();
        let raw: Vec<String> = docs
            .iter()
            .map(|d| {
                let bytes = base64::engine::general_purpose::STANDARD.decode(d["rawData"].as_str().unwrap()).unwrap();
                String::from_utf8(bytes).unwrap()
            })
            .collect();
        assert_eq!(sorted(raw), sorted(generated(Profile::Cloudtrail, 6, 1500)), "status {status}");
        for d in &docs {
            assert_eq!(d["errorCode"], "HttpEndpoint.DestinationException", "{d}");
            let message = d["errorMessage"].as_str().unwrap();
            assert!(message.contains(&status.to_string()), "{d}");
            // The destination's answer, as Firehose writes it: not sluice's classification of it.
            assert!(!message.starts_with("retryable") && !message.starts_with("permanent"), "{d}");
            assert!(attempts.contains(&d["attemptsMade"].as_u64().unwrap()), "status {status}: {d}");
        }
        assert_eq!(metrics.sinks[0].records_failed.load(Relaxed), 1500);
        assert!(endpoint.seen.lock().unwrap().records.is_empty());
    }
}

#[test]
fn an_http_endpoint_sink_refuses_format_keys_and_needs_a_backup_store() {
    let with_format = "[pipeline]\nname = \"p\"\n[sources.gen]\ntype = \"generator\"\nprofile = \"vpcflow\"\nrecords = 1\n\
        [sinks.s]\ntype = \"http_endpoint\"\ninputs = [\"gen\"]\nurl = \"http://127.0.0.1:9/\"\nformat = \"ndjson\"\n\
        backup_store = { url = \"memory://b\" }\n";
    let error = plan_from_str(with_format, &registry()).err().unwrap().to_string();
    assert!(
        error.contains("pipeline.toml:11:1") && error.contains("has no `format`") && error.contains("content_encoding"),
        "{error}"
    );
    let without_backup =
        with_format.replace("format = \"ndjson\"\n", "").replace("backup_store = { url = \"memory://b\" }\n", "");
    let error = plan_from_str(&without_backup, &registry()).err().unwrap().to_string();
    assert!(error.contains("needs `backup_store`"), "{error}");
}

/// The receiver as the conformance kit sees it: a request is stored when answered 200 (its body as
/// sent, by request id); unavailable is a 500, refused a 413 (the one final status); the error
/// output is the backup folder.
struct EndpointDestination {
    endpoint: Receiver,
    backup: tempfile::TempDir,
}

impl Destination for EndpointDestination {
    fn sink(&self) -> Arc<dyn sluice_engine::contract::Sink> {
        let toml = pipeline(&self.endpoint.url, self.backup.path(), 10, "content_encoding = \"gzip\"\n");
        Arc::clone(&plan_from_str(&toml, &registry()).unwrap().sinks[0].sink)
    }

    fn stored(&self, key: &str) -> futures::future::BoxFuture<'static, Option<Vec<u8>>> {
        let body = self.endpoint.seen.lock().unwrap().bodies.get(key).cloned();
        Box::pin(async move { body })
    }

    fn stored_error_output(&self, key: &str) -> futures::future::BoxFuture<'static, Option<Vec<u8>>> {
        super::support::file_when_read(self.backup.path().join(key))
    }

    fn inject(&self, fault: Option<Fault>) -> bool {
        *self.endpoint.answer.lock().unwrap() = match fault {
            None => Answer::OkAfter(0),
            Some(Fault::Unavailable) => Answer::Always(500),
            Some(Fault::Refused) => Answer::Always(413),
        };
        true
    }
}

#[test]
fn the_http_endpoint_sink_passes_the_conformance_kit() {
    let destination =
        EndpointDestination { endpoint: receiver(Answer::OkAfter(0)), backup: tempfile::tempdir().unwrap() };
    super::support::request_sink_conformance(&destination);
}

/// One pipeline of 300 records to `endpoint` with `tls` (no retrying): how many records it
/// delivered, and the error messages of the records backed up.
fn deliver_over_tls(endpoint: &Receiver, tls: &str) -> (u64, Vec<String>) {
    let backup = tempfile::tempdir().unwrap();
    let toml = pipeline(&endpoint.url, backup.path(), 300, &format!("retry = {{ duration_s = 0 }}\n{tls}"));
    let (_, metrics) = run_pipeline(&toml, &registry(), 1).unwrap();
    let messages = folder_objects(backup.path())
        .values()
        .flatten()
        .map(|line| {
            serde_json::from_str::<serde_json::Value>(line).unwrap()["errorMessage"].as_str().unwrap().to_string()
        })
        .collect();
    (metrics.sinks[0].records_delivered.load(Relaxed), messages)
}

#[test]
fn an_endpoint_with_a_certificate_of_a_private_ca_takes_records_when_tls_names_the_ca() {
    let certs = TestCertificates::make();
    let ca = format!("tls = {{ ca = \"{}\" }}", certs.path("ca.pem"));
    let endpoint = receiver_over(Answer::OkAfter(0), Some(certs.server("server", false)));
    assert_eq!(deliver_over_tls(&endpoint, &ca), (300, vec![]));
    assert_eq!(sorted(endpoint.seen.lock().unwrap().records.clone()), sorted(generated(Profile::Cloudtrail, 6, 300)));
    // Without the CA, the system's roots do not know it: the start-up check stops the run, saying
    // what to set, before anything is read...
    let backup = tempfile::tempdir().unwrap();
    let refused = run_pipeline(&pipeline(&endpoint.url, backup.path(), 300, ""), &registry(), 1).err();
    let said = refused.map(|e| e.to_string()).unwrap_or_default();
    assert!(
        said.contains("the server's certificate is not trusted")
            && said.contains("UnknownIssuer")
            && said.contains("give the CA that signs it as `tls = { ca"),
        "{said}"
    );
    // ...and without the check, nothing is sent, everything is backed up with the reason
    let (delivered, messages) = deliver_over_tls(&endpoint, "healthcheck = false");
    assert_eq!((delivered, messages.len()), (0, 300));
    // with what to set, as Firehose's messages of refused certificates say what to check.
    assert!(
        messages.iter().all(|m| m.contains("UnknownIssuer") && m.contains("not trusted: give the CA that signs it as `tls = { ca")),
        "{:?}",
        messages.first()
    );
    // The CA is added to the system's roots, not put in their place: only with
    // `verify_hostname = false` is it trusted alone, and then the name is not checked.
    let elsewhere = receiver_over(Answer::OkAfter(0), Some(certs.server("elsewhere", false)));
    let (delivered, messages) = deliver_over_tls(&elsewhere, &format!("{ca}\nhealthcheck = false"));
    assert_eq!(delivered, 0);
    assert!(messages.iter().all(|m| m.contains("not valid for name")), "{:?}", messages.first());
    let any_name = format!("tls = {{ ca = \"{}\", verify_hostname = false }}", certs.path("ca.pem"));
    assert_eq!(deliver_over_tls(&elsewhere, &any_name), (300, vec![]));
    // A certificate of no CA at all is taken only with verify_certificate = false.
    let self_signed = receiver_over(Answer::OkAfter(0), Some(certs.server("self-signed", false)));
    assert_eq!(deliver_over_tls(&self_signed, &format!("{ca}\nhealthcheck = false")).0, 0);
    assert_eq!(deliver_over_tls(&self_signed, "tls = { verify_certificate = false }"), (300, vec![]));
}

#[test]
fn an_endpoint_that_asks_for_a_client_certificate_gets_the_one_tls_names() {
    let certs = TestCertificates::make();
    let endpoint = receiver_over(Answer::OkAfter(0), Some(certs.server("server", true)));
    let (ca, cert, key) = (certs.path("ca.pem"), certs.path("client.pem"), certs.path("client.key"));
    let (delivered, messages) = deliver_over_tls(&endpoint, &format!("tls = {{ ca = \"{ca}\" }}"));
    assert_eq!((delivered, messages.len()), (0, 300), "refused without a client certificate");
    // The server's refusal (its alert, or a connection it closed, depending on when TLS 1.3's
    // client sees it) is not said as a certificate of its own to trust: the start-up check let
    // the run start, and no message gives that advice.
    assert!(messages.iter().all(|m| !m.contains("give the CA that signs it")), "{:?}", messages.first());
    let mutual = format!("tls = {{ ca = \"{ca}\", cert = \"{cert}\", key = \"{key}\" }}");
    assert_eq!(deliver_over_tls(&endpoint, &mutual), (300, vec![]));
    assert_eq!(endpoint.seen.lock().unwrap().records.len(), 300);
    // A key that is not the certificate's is said when the pipeline is configured.
    let other_key = mutual.replace("client.key", "server.key");
    let error = plan_from_str(&pipeline(&endpoint.url, std::path::Path::new("/tmp"), 1, &other_key), &registry())
        .err()
        .unwrap()
        .to_string();
    assert!(error.contains("`sinks.siem.tls.key` is not the private key of `cert`'s certificate"), "{error}");
}

/// `sluice validate --check` finds an endpoint whose certificate is not trusted before any run,
/// as the run's start-up check would, naming what to set; with the CA named it passes. The
/// backup store's folder is not made.
#[test]
fn validate_check_finds_an_untrusted_endpoint_certificate() {
    let certs = TestCertificates::make();
    let endpoint = receiver_over(Answer::OkAfter(0), Some(certs.server("server", false)));
    let work = tempfile::tempdir().unwrap();
    let backup = work.path().join("backup");
    let validate = |tls: &str| {
        let file = work.path().join("p.toml");
        std::fs::write(&file, pipeline(&endpoint.url, &backup, 10, tls)).unwrap();
        sluice().args(["validate", "--check"]).arg(&file).output().unwrap()
    };
    let refused = validate("");
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("sinks.siem (http_endpoint")
            && stderr.contains("the server's certificate is not trusted")
            && stderr.contains("(HttpEndpoint.TlsFailed)"),
        "{stderr}"
    );
    let trusted = validate(&format!("tls = {{ ca = \"{}\" }}", certs.path("ca.pem")));
    assert!(trusted.status.success(), "{}", String::from_utf8_lossy(&trusted.stderr));
    assert!(String::from_utf8_lossy(&trusted.stdout).contains("sinks.siem (http_endpoint"));
    assert!(!backup.exists());
    assert!(endpoint.seen.lock().unwrap().records.is_empty());
}

/// `sluice validate --check` asks every destination at once and waits `--check-timeout` for the
/// answers: two endpoints behind a server that answers only once both requests have come are both
/// checked (asked one after the other, the first would get no answer before the timeout); one that
/// takes the connection and never answers is a warning after the timeout, not a failure.
#[test]
fn validate_check_asks_every_destination_at_once_within_its_timeout() {
    use std::io::{Read as _, Write as _};
    let together = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let together_url = format!("http://{}/in", together.local_addr().unwrap());
    let answered = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    {
        let answered = Arc::clone(&answered);
        std::thread::spawn(move || {
            let mut waiting = Vec::new();
            for connection in together.incoming() {
                let mut connection = connection.unwrap();
                // The request's head (a HEAD has no body).
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") && connection.read(&mut byte).unwrap_or(0) == 1 {
                    head.push(byte[0]);
                }
                waiting.push(connection);
                if waiting.len() == 2 {
                    for mut connection in waiting.drain(..) {
                        let _ = connection.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n");
                        answered.fetch_add(1, Relaxed);
                    }
                }
            }
        });
    }
    // Connections are taken by the kernel and never read.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let silent_url = format!("http://{}/in", silent.local_addr().unwrap());
    let work = tempfile::tempdir().unwrap();
    let sink = |name: &str, url: &str| {
        format!(
            "[sinks.{name}]\ntype = \"http_endpoint\"\ninputs = [\"gen\"]\nurl = \"{url}\"\n\
             error_prefix = \"failed/!{{firehose:error-output-type}}/\"\nbackup_store = {{ url = \"file://{}\" }}\n",
            work.path().join(name).display()
        )
    };
    let file = work.path().join("p.toml");
    std::fs::write(
        &file,
        format!(
            "[pipeline]\nname = \"checked\"\n[sources.gen]\ntype = \"generator\"\nprofile = \"cloudtrail\"\nrecords = 1\n{}{}{}",
            sink("first", &together_url),
            sink("second", &together_url),
            sink("quiet", &silent_url)
        ),
    )
    .unwrap();
    let checked = sluice().args(["validate", "--check", "--check-timeout", "3"]).arg(&file).output().unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&checked.stdout), String::from_utf8_lossy(&checked.stderr));
    assert_eq!(checked.status.code(), Some(0), "{stderr}");
    assert_eq!(answered.load(Relaxed), 2, "the two checks were not asked together: {stdout}{stderr}");
    for name in ["first", "second"] {
        assert!(
            stdout.lines().any(|l| l.contains(&format!("sinks.{name} (http_endpoint")) && l.ends_with(": checked")),
            "{stdout}"
        );
    }
    assert!(
        stderr.lines().any(|l| l.starts_with("warning: ")
            && l.contains("sinks.quiet (http_endpoint")
            && l.contains("no answer within 3 s; a run would start and retry")),
        "{stderr}"
    );
    assert!(!stdout.lines().any(|l| l.contains("sinks.quiet (") && l.ends_with(": checked")), "{stdout}");
    // Without `--check` the timeout means nothing: refused as a usage error.
    let alone = sluice().args(["validate", "--check-timeout", "3"]).arg(&file).output().unwrap();
    assert_eq!(alone.status.code(), Some(2), "{}", String::from_utf8_lossy(&alone.stderr));
    drop(silent);
}

/// A private CA and a client certificate renewed in place while a run delivers are used without a
/// restart: the endpoint has moved to a certificate of a new CA and asks for client certificates
/// of that CA, so every request made with the files read at start is refused (and retried) until
/// the renewed files are written where the old ones were; then everything goes through, nothing
/// is backed up. A renewal that first leaves a broken CA file is refused, the files before kept,
/// counted in the sink's `TlsRenewalFailures` (there at 0 from the start) once, and said once in
/// the error log as the sink's warning. `ClientCertificateExpiry_seconds` follows the client
/// certificate in use: the old one's end until the renewed one (a month long) is taken.
#[test]
fn renewed_tls_files_are_used_without_a_restart() {
    let (old, renewed) = (TestCertificates::make(), TestCertificates::make_lasting(30));
    let tls = old.server("server", true);
    let endpoint = receiver_over(Answer::OkAfter(0), Some(tls.clone()));
    let files = tempfile::tempdir().unwrap();
    // As a renewal writes them: each file whole, by a rename.
    let write = |name: &str, bytes: &[u8]| {
        let staged = files.path().join(format!(".{name}.new"));
        std::fs::write(&staged, bytes).unwrap();
        std::fs::rename(&staged, files.path().join(name)).unwrap();
    };
    let install = |from: &TestCertificates| {
        for name in ["ca.pem", "client.pem", "client.key"] {
            write(name, &std::fs::read(from.path(name)).unwrap());
        }
    };
    install(&old);
    let path = |name: &str| files.path().join(name).display().to_string();
    let sink_tls = format!(
        "tls = {{ ca = \"{}\", cert = \"{}\", key = \"{}\" }}",
        path("ca.pem"),
        path("client.pem"),
        path("client.key")
    );
    assert_eq!(deliver_over_tls(&endpoint, &sink_tls), (300, vec![]), "the files read at start");
    tls.reload_from_config(renewed.server_config("server", true));
    let backup = tempfile::tempdir().unwrap();
    let toml = pipeline(
        &endpoint.url,
        backup.path(),
        300,
        &format!("healthcheck = false\nretry = {{ duration_s = 90 }}\n{sink_tls}"),
    );
    let run = StartedRun::start(&toml, 1);
    let refused = || run.metrics.sinks[0].own_counts.lock().unwrap().get("TlsRenewalFailures").copied();
    let waited = std::time::Instant::now();
    while refused().is_none() && waited.elapsed() < std::time::Duration::from_secs(10) {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert_eq!(refused(), Some(0), "the family starts at 0 for a sink with files to renew");
    let client_certificate_ends =
        || run.metrics.client_certificates.lock().unwrap().get(&("destination", "siem".to_string())).copied();
    assert_eq!(client_certificate_ends(), Some(old.ends("client.pem")), "the client certificate read at start");
    std::thread::sleep(std::time::Duration::from_secs(1));
    write("ca.pem", b"-----BEGIN CERTIFICATE-----\ncut short by the renewal\n");
    let waited = std::time::Instant::now();
    while refused() != Some(1) {
        assert!(waited.elapsed() < std::time::Duration::from_secs(30), "the broken CA file was not refused");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    // Said in the error log too, as the sink's warning, naming the files and why.
    let lines = run.metrics.errors.get().map(|log| log.recent()).unwrap_or_default();
    let said: Vec<_> = lines.iter().filter(|l| l["errorCode"] == "Tls.RenewalRefused").collect();
    assert_eq!(said.len(), 1, "{lines:?}");
    assert_eq!((said[0]["component"].as_str(), said[0]["level"].as_str()), (Some("siem"), Some("WARN")), "{said:?}");
    let message = said[0]["message"].as_str().unwrap_or_default();
    assert!(message.contains("ca.pem") && message.contains("`ca`"), "{message}");
    assert_eq!(client_certificate_ends(), Some(old.ends("client.pem")), "a refused renewal changes nothing");
    install(&renewed);
    while run.metrics.sinks[0].records_delivered.load(Relaxed) < 300 {
        assert!(waited.elapsed() < std::time::Duration::from_secs(80), "the renewed files were not taken");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(renewed.ends("client.pem") > old.ends("client.pem") + 27 * 86_400);
    assert_eq!(client_certificate_ends(), Some(renewed.ends("client.pem")), "the renewed client certificate");
    let metrics = Arc::clone(&run.metrics);
    run.finish().unwrap();
    assert_eq!(metrics.sinks[0].records_delivered.load(Relaxed), 300);
    assert_eq!(metrics.sinks[0].own_counts.lock().unwrap().get("TlsRenewalFailures"), Some(&1), "counted once");
    assert!(metrics.sinks[0].retries.load(Relaxed) > 0, "no request was refused before the renewal");
    assert!(folder_objects(backup.path()).is_empty(), "records were backed up");
    assert_eq!(endpoint.seen.lock().unwrap().records.len(), 600);
}

/// One answer of the receiving sluice: its status and JSON body.
fn post_to(port: u16, headers: &[(&str, &str)], body: Vec<u8>) -> (u16, serde_json::Value, String) {
    let mut request = reqwest::blocking::Client::new().post(format!("http://127.0.0.1:{port}/from-edge")).body(body);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = request.send().unwrap();
    let status = response.status().as_u16();
    let content_type = response.headers().get("content-type").map(|v| v.to_str().unwrap().to_string());
    let text = response.text().unwrap();
    let json = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
    (status, json, content_type.unwrap_or_default())
}

/// A Firehose HTTP endpoint request body holding `records`.
fn delivery(id: &str, records: &[impl AsRef<[u8]>]) -> Vec<u8> {
    let records: Vec<_> = records
        .iter()
        .map(|r| serde_json::json!({"data": base64::engine::general_purpose::STANDARD.encode(r.as_ref())}))
        .collect();
    serde_json::json!({"requestId": id, "timestamp": 1_764_000_000_000i64, "records": records}).to_string().into_bytes()
}

/// The receiving sluice's pipeline file in `dir`: an `http_endpoint` source on `port` with
/// `source_keys`, its records as NDJSON objects in `<dir>/out`, its audit log in `<dir>/audit`;
/// the file and the output folder.
fn central_pipeline(dir: &std::path::Path, port: u16, source_keys: &str) -> (std::path::PathBuf, std::path::PathBuf) {
    let out = dir.join("out");
    let config = dir.join("central.toml");
    let text = format!(
        "[pipeline]\nname = \"central\"\ndata_dir = \"{}\"\naudit_log = \"file://{}\"\n\
         [sources.edge]\ntype = \"http_endpoint\"\nlisten = \"127.0.0.1:{port}\"\n{source_keys}\n\
         [sinks.lake]\ntype = \"object_store\"\ninputs = [\"edge\"]\nurl = \"file://{}\"\nformat = \"ndjson\"\n\
         buffer = {{ size_mb = 64, interval_s = 900 }}\n",
        dir.join("data").display(),
        dir.join("audit").display(),
        out.display()
    );
    std::fs::write(&config, text).unwrap();
    (config, out)
}

/// A sluice delivering with its `http_endpoint` sink to another sluice's `http_endpoint` source (a
/// separate process, as Firehose would reach it, one of its access keys read from a mounted secret
/// file): every record arrives exactly once, gzip bodies and common attributes included; before that, the receiver answers the protocol's refusals with its
/// error body (no access key: 401, another protocol version: 400, a body over `max_body_mb`: 413)
/// and takes a request sent again under its id (a retry after a lost answer) only once.
#[test]
fn one_sluice_delivers_to_another_through_the_http_endpoint_protocol() {
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let keys = "max_body_mb = 4\naccess_keys = [{ name = \"edge-a\", access_key = \"key-a\" }, \
                { name = \"edge-b\", access_key = \"${file:secrets/edge-b}\" }]";
    let (config, out) = central_pipeline(dir.path(), port, keys);
    // The second key as a mounted secret: a file beside the pipeline, ending with a newline.
    std::fs::create_dir(dir.path().join("secrets")).unwrap();
    std::fs::write(dir.path().join("secrets/edge-b"), "key-b\n").unwrap();
    let mut central = start_listening_with(&mut logged_run(&config, "error"), port);

    let protocol = [("X-Amz-Firehose-Protocol-Version", "1.0"), ("X-Amz-Firehose-Access-Key", "key-a")];
    let with_id = |id: &'static str, headers: &[(&'static str, &'static str)]| {
        let mut all = headers.to_vec();
        all.push(("X-Amz-Firehose-Request-Id", id));
        all
    };
    // Refusals: the protocol's error body, with the request's id.
    let (status, answer, content_type) =
        post_to(port, &with_id("no-key", &[("X-Amz-Firehose-Protocol-Version", "1.0")]), delivery("no-key", &["lost"]));
    assert_eq!((status, content_type.as_str()), (401, "application/json"), "{answer}");
    assert_eq!(answer["requestId"], "no-key");
    assert!(answer["timestamp"].as_i64().unwrap() > 1_700_000_000_000, "{answer}");
    assert!(answer["errorMessage"].as_str().unwrap().contains("X-Amz-Firehose-Access-Key"), "{answer}");
    let wrong_key = [("X-Amz-Firehose-Protocol-Version", "1.0"), ("X-Amz-Firehose-Access-Key", "key-c")];
    assert_eq!(post_to(port, &with_id("bad-key", &wrong_key), delivery("bad-key", &["lost"])).0, 401);
    let version = [("X-Amz-Firehose-Protocol-Version", "2.0"), ("X-Amz-Firehose-Access-Key", "key-a")];
    let (status, answer, _) = post_to(port, &with_id("v2", &version), delivery("v2", &["lost"]));
    assert_eq!(status, 400, "{answer}");
    assert!(answer["errorMessage"].as_str().unwrap().contains("version `2.0`"), "{answer}");
    let (status, answer, _) = post_to(port, &with_id("other", &protocol), delivery("mismatch", &["lost"]));
    assert_eq!(status, 400, "{answer}");
    let long_id: &'static str = "i".repeat(257).leak();
    assert_eq!(post_to(port, &with_id(long_id, &protocol), delivery(long_id, &["lost"])).0, 400);
    let large = "x".repeat(1_000_000);
    let five_mb: Vec<&str> = vec![large.as_str(); 4];
    assert_eq!(post_to(port, &with_id("large", &protocol), delivery("large", &five_mb)).0, 413);
    // A request sent twice under its id is taken once.
    for _ in 0..2 {
        let (status, answer, content_type) = post_to(
            port,
            &with_id("twice", &protocol),
            delivery("twice", &["{\"by\":\"hand\",\"n\":1}", "{\"by\":\"hand\",\"n\":2}"]),
        );
        assert_eq!((status, content_type.as_str()), (200, "application/json"), "{answer}");
        assert_eq!(answer["requestId"], "twice");
        assert!(answer.get("errorMessage").is_none(), "{answer}");
    }

    // The edge sluice's sink: gzip, common attributes, the second access key, small requests.
    let backup = tempfile::tempdir().unwrap();
    let toml = pipeline(
        &format!("http://127.0.0.1:{port}/from-edge"),
        backup.path(),
        12_000,
        "access_key = \"key-b\"\ncontent_encoding = \"gzip\"\ncommon_attributes = { site = \"edge-1\" }\n\
         buffer = { size_mb = 1, interval_s = 60 }\nretry = { duration_s = 30 }",
    );
    let (_, metrics) = run_pipeline(&toml, &registry(), 2).unwrap();
    let m = &metrics.sinks[0];
    assert_eq!((m.records_delivered.load(Relaxed), m.records_failed.load(Relaxed)), (12_000, 0));
    assert!(folder_objects(backup.path()).is_empty());

    terminate(&central);
    assert!(central.wait().unwrap().success(), "{}", std::fs::read_to_string(config.with_extension("log")).unwrap());
    let mut expected = generated(Profile::Cloudtrail, 6, 12_000);
    expected.extend(["{\"by\":\"hand\",\"n\":1}".to_string(), "{\"by\":\"hand\",\"n\":2}".to_string()]);
    let objects = folder_objects(&out);
    assert_eq!(sorted(objects.into_values().flatten().collect()), sorted(expected));
    // The audit log: each request, by whom, from which stream, with its common attributes.
    let events: Vec<serde_json::Value> = folder_objects(&dir.path().join("audit"))
        .into_values()
        .flatten()
        .map(|l| serde_json::from_str(&l).unwrap())
        .filter(|e: &serde_json::Value| e["eventSource"] == "http-endpoint.sluice")
        .collect();
    let refused = events.iter().filter(|e| e["errorCode"].is_string()).count();
    assert_eq!(refused, 6, "{events:?}");
    let repeated: Vec<_> = events.iter().filter(|e| e["requestID"] == "twice").collect();
    assert_eq!(repeated.len(), 2);
    assert_eq!(repeated[1]["requestParameters"]["repeated"], true, "{:?}", repeated[1]);
    assert_eq!(repeated[0]["userIdentity"], serde_json::json!({"type": "AccessKey", "accessKeyName": "edge-a"}));
    let edge: Vec<_> = events.iter().filter(|e| e["userIdentity"]["accessKeyName"] == "edge-b").collect();
    assert!(edge.len() >= 2, "{events:?}");
    for e in edge {
        assert_eq!(e["eventName"], "DeliverRecords");
        assert_eq!(e["requestParameters"]["commonAttributes"], serde_json::json!({"site": "edge-1"}), "{e}");
        assert_eq!(
            e["requestParameters"]["sourceArn"], "arn:aws:firehose:us-east-1:000000000000:deliverystream/to-http",
            "{e}"
        );
    }
}

/// A request Firehose sends again after the receiving sluice restarted (its answer lost in the
/// restart) is recognised by its id, kept beside the write-ahead log: answered `200`, its records
/// not taken twice; a new request after it is taken.
#[test]
fn a_retry_that_arrives_after_a_restart_is_taken_once() {
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let (config, out) = central_pipeline(dir.path(), port, "access_key = \"key-a\"");
    let headers = |id: &'static str| {
        vec![
            ("X-Amz-Firehose-Protocol-Version", "1.0"),
            ("X-Amz-Firehose-Access-Key", "key-a"),
            ("X-Amz-Firehose-Request-Id", id),
        ]
    };
    let first = ["{\"n\":1}", "{\"n\":2}"];
    let mut central = start_listening_with(&mut logged_run(&config, "error"), port);
    assert_eq!(post_to(port, &headers("before-restart"), delivery("before-restart", &first)).0, 200);
    terminate(&central);
    assert!(central.wait().unwrap().success(), "{}", std::fs::read_to_string(config.with_extension("log")).unwrap());
    let ids = std::fs::read_to_string(dir.path().join("data/edge.request-ids")).unwrap();
    assert_eq!(ids, "before-restart\n");

    central = start_listening_with(&mut logged_run(&config, "error"), port);
    let (status, answer, _) = post_to(port, &headers("before-restart"), delivery("before-restart", &first));
    assert_eq!((status, &answer["requestId"]), (200, &serde_json::json!("before-restart")), "{answer}");
    assert_eq!(post_to(port, &headers("after-restart"), delivery("after-restart", &["{\"n\":3}"])).0, 200);
    terminate(&central);
    assert!(central.wait().unwrap().success(), "{}", std::fs::read_to_string(config.with_extension("log")).unwrap());
    let lines = sorted(folder_objects(&out).into_values().flatten().collect());
    assert_eq!(lines, ["{\"n\":1}", "{\"n\":2}", "{\"n\":3}"]);
}

/// The example pipeline `pipelines/from-firehose.toml` as a user runs it (its folder and port moved
/// into the test's): a delivery of CloudWatch Logs subscription records, as Firehose forwards them,
/// becomes one record per log event in the lake; the control message is dropped; a record that is
/// not gzip is kept, still as it arrived, under `errors/decompression-failed/`.
#[test]
fn the_example_from_firehose_pipeline_unpacks_cloudwatch_logs_delivered_by_firehose() {
    use super::transforms::{CONTROL, data_message, gzip};
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let out = dir.path().join("out");
    let text = std::fs::read_to_string(super::support::repo_root().join("pipelines/from-firehose.toml")).unwrap();
    let text = text
        .replace("file://./out/from-firehose", &format!("file://{}", out.display()))
        .replace("listen = \"127.0.0.1:4575\"", &format!("listen = \"127.0.0.1:{port}\""))
        .replace("[pipeline]\n", &format!("[pipeline]\ndata_dir = \"{}\"\n", dir.path().join("data").display()));
    let config = dir.path().join("from-firehose.toml");
    std::fs::write(&config, text).unwrap();
    let mut run = logged_run(&config, "error");
    let mut pipeline = start_listening_with(run.env("FIREHOSE_ACCESS_KEY", "stream-key"), port);
    let records =
        [gzip(data_message(&["GET /a 200", "GET /b 404"]).as_bytes()), gzip(CONTROL.as_bytes()), b"not gzip".to_vec()];
    let headers = [
        ("X-Amz-Firehose-Protocol-Version", "1.0"),
        ("X-Amz-Firehose-Access-Key", "stream-key"),
        ("X-Amz-Firehose-Request-Id", "cwl-1"),
        ("X-Amz-Firehose-Source-Arn", "arn:aws:firehose:eu-west-1:123456789012:deliverystream/cwl"),
    ];
    let (status, answer, _) = post_to(port, &headers, delivery("cwl-1", &records));
    assert_eq!(status, 200, "{answer}");
    terminate(&pipeline);
    // 2: every record stored, some in the error output.
    let log = || std::fs::read_to_string(config.with_extension("log")).unwrap();
    assert_eq!(pipeline.wait().unwrap().code(), Some(2), "{}", log());
    let objects = folder_objects(&out);
    let events: Vec<String> =
        objects.iter().filter(|(k, _)| k.starts_with("logs/")).flat_map(|(_, lines)| lines.clone()).collect();
    assert_eq!(sorted(events), ["GET /a 200", "GET /b 404"]);
    let failed: Vec<_> = objects.iter().filter(|(k, _)| k.starts_with("errors/decompression-failed/")).collect();
    let docs: Vec<serde_json::Value> =
        failed.iter().flat_map(|(_, lines)| lines.iter().map(|l| serde_json::from_str(l).unwrap())).collect();
    assert_eq!(docs.len(), 1, "{objects:?}");
    assert_eq!(super::support::raw_data(&docs[0]), "not gzip");
}

/// Firehose reaches an HTTP endpoint over HTTPS only: the receiving source serves a certificate of
/// a private CA (`tls = { cert, key }`), and the sending sink trusts that CA (`tls = { ca }`).
#[test]
fn the_http_endpoint_protocol_runs_over_tls_between_two_sluices() {
    let certs = TestCertificates::make();
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let tls = format!("tls = {{ cert = \"{}\", key = \"{}\" }}", certs.path("server.pem"), certs.path("server.key"));
    let (config, out) = central_pipeline(dir.path(), port, &format!("access_key = \"k\"\n{tls}"));
    let mut central = start_listening_with(&mut logged_run(&config, "error"), port);
    let backup = tempfile::tempdir().unwrap();
    let trust = format!("access_key = \"k\"\ntls = {{ ca = \"{}\" }}", certs.path("ca.pem"));
    let toml = pipeline(&format!("https://127.0.0.1:{port}/"), backup.path(), 300, &trust);
    let (_, metrics) = run_pipeline(&toml, &registry(), 1).unwrap();
    assert_eq!(metrics.sinks[0].records_delivered.load(Relaxed), 300);
    terminate(&central);
    assert!(central.wait().unwrap().success(), "{}", std::fs::read_to_string(config.with_extension("log")).unwrap());
    let stored: Vec<String> = folder_objects(&out).into_values().flatten().collect();
    assert_eq!(sorted(stored), sorted(generated(Profile::Cloudtrail, 6, 300)));
}

/// Senders that hang up once their requests are sent (Firehose giving up on an answer): each
/// request's records are taken, and its retry under the same id is answered 200 and not taken
/// again, rather than refused as "being taken" for ever. (Whether a hang-up lands while the records
/// are being taken is a race: eight requests make it likely that one does.)
#[test]
fn requests_whose_senders_hung_up_are_settled_and_their_retries_answered() {
    use std::io::Write as _;
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let (config, out) = central_pipeline(dir.path(), port, "");
    let mut central = start_listening_with(&mut logged_run(&config, "error"), port);
    let mut all = Vec::new();
    let mut requests = Vec::new();
    for n in 0..8 {
        let records: Vec<String> =
            (0..5_000).map(|i| format!("{{\"request\":{n},\"record\":{i},\"pad\":\"{}\"}}", "p".repeat(200))).collect();
        let id = format!("hung-up-{n}");
        requests.push((id.clone(), delivery(&id, &records)));
        all.extend(records);
    }
    for (id, body) in &requests {
        let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        let head = format!(
            "POST / HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
             x-amz-firehose-protocol-version: 1.0\r\nx-amz-firehose-request-id: {id}\r\n\r\n",
            body.len()
        );
        stream.write_all(head.as_bytes()).unwrap();
        stream.write_all(body).unwrap();
        // Gone before the answer.
        stream.shutdown(std::net::Shutdown::Both).unwrap();
    }
    let started = std::time::Instant::now();
    for (id, body) in &requests {
        let headers = [("X-Amz-Firehose-Protocol-Version", "1.0"), ("X-Amz-Firehose-Request-Id", id.as_str())];
        loop {
            let (status, answer, _) = post_to(port, &headers, body.clone());
            if status == 200 {
                break;
            }
            assert_eq!(status, 503, "{answer}");
            assert!(started.elapsed() < std::time::Duration::from_secs(10), "{id} stays `being taken`: {answer}");
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }
    terminate(&central);
    assert!(central.wait().unwrap().success(), "{}", std::fs::read_to_string(config.with_extension("log")).unwrap());
    let stored: Vec<String> = folder_objects(&out).into_values().flatten().collect();
    assert_eq!(sorted(stored), sorted(all));
}

/// A client certificate that ends within 14 days is warned about when its file is read, here by
/// `sluice validate` (no server asked): the file, the certificate's subject, when, and what to do
/// (the test CA's certificates last two days).
#[test]
fn validate_warns_of_a_client_certificate_that_ends_soon() {
    let certs = TestCertificates::make();
    let work = tempfile::tempdir().unwrap();
    let file = work.path().join("p.toml");
    let tls = format!(
        "tls = {{ ca = \"{}\", cert = \"{}\", key = \"{}\" }}",
        certs.path("ca.pem"),
        certs.path("client.pem"),
        certs.path("client.key")
    );
    std::fs::write(&file, pipeline("https://127.0.0.1:9/in", &work.path().join("backup"), 10, &tls)).unwrap();
    let validated = sluice().env("SLUICE_LOG", "warn").arg("validate").arg(&file).output().unwrap();
    let stderr = String::from_utf8_lossy(&validated.stderr);
    assert!(validated.status.success(), "a warning, not an error: {stderr}");
    let said = format!("the client certificate in {} (", certs.path("client.pem"));
    assert!(stderr.contains(&said), "{stderr}");
    assert!(stderr.contains(" ends at ") && stderr.contains(" days; renew it"), "{stderr}");
}

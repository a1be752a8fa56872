//! The `opensearch` sink against osmem-server (an in-memory OpenSearch API server, PyPI, started per
//! test on 127.0.0.1), through a recording proxy where a test needs to see or break requests, and
//! against a `_bulk` receiver that answers some items 429: every document is indexed in its rotated
//! index; a mapping conflict's per-item 400s land in the error output with Firehose's
//! failed-document fields while the rest is indexed; a whole-request 503 after the cluster indexed
//! the request is retried without duplicates (and with `document_id = "none"` it would duplicate);
//! only the items answered 429 are sent again, with their ids.

use std::collections::BTreeMap;
use std::io::Read;
use std::process::{Command, Stdio};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};

use sluice_connectors::registry;
use sluice_connectors::synth::Profile;
use sluice_engine::testkit::sink::{Destination, Fault};
use sluice_engine::testkit::{plan_from_str, run_pipeline};

use super::support::WithoutAwsKeys;
use super::support::{Peer, folder_objects, free_port, generated, python, raw_data};

/// An osmem-server process, killed when dropped.
struct Osmem {
    _server: Peer,
    url: String,
}

/// Starts osmem-server (installed by scripts/test.sh from tests/requirements.txt) on a free port.
fn osmem() -> Osmem {
    let out = Command::new(python())
        .args([
            "-c",
            "import os, osmem_server; print(os.path.join(os.path.dirname(osmem_server.__file__), 'bin', 'osmem-server'))",
        ])
        .output()
        .unwrap();
    let binary = String::from_utf8(out.stdout).unwrap().trim().to_string();
    assert!(out.status.success() && !binary.is_empty(), "osmem-server is not installed: run scripts/test.sh");
    let port = free_port();
    let server = Peer::spawn(
        Command::new(&binary)
            .args(["-addr", &format!("127.0.0.1:{port}"), "-no-stdin-watch"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
        "osmem-server",
    );
    let url = format!("http://127.0.0.1:{port}");
    let server = Osmem { _server: server, url };
    for _ in 0..200 {
        if reqwest::blocking::get(&server.url).is_ok_and(|r| r.status().is_success()) {
            return server;
        }
        std::thread::sleep(std::time::Duration::from_millis(25));
    }
    panic!("osmem-server did not answer on {}", server.url);
}

/// A JSON answer of the cluster at `path`.
fn get(url: &str, path: &str) -> serde_json::Value {
    serde_json::from_slice(&reqwest::blocking::get(format!("{url}{path}")).unwrap().bytes().unwrap()).unwrap()
}

fn count(url: &str, index: &str) -> u64 {
    get(url, &format!("/{index}/_count"))["count"].as_u64().unwrap_or_else(|| panic!("no count for {index}"))
}

/// What the proxy does with a request.
#[derive(Clone, Copy, Debug)]
enum Mode {
    /// Forward it and pass the answer back.
    Forward,
    /// Forward the first `n` `_bulk` requests but answer them 503 (the cluster indexed them; the
    /// answer was lost), then forward.
    LoseAnswers(usize),
    /// Answer this status without forwarding.
    Always(u16),
}

#[derive(Default)]
struct ProxySeen {
    /// The body of each `_bulk` request the cluster answered 200, by `X-Opaque-Id`.
    bodies: BTreeMap<String, Vec<u8>>,
    bulk_requests: usize,
}

/// A recording proxy in front of a cluster.
struct Proxy {
    url: String,
    seen: Arc<Mutex<ProxySeen>>,
    mode: Arc<Mutex<Mode>>,
    _runtime: tokio::runtime::Runtime,
}

fn proxy(upstream: &str, mode: Mode) -> Proxy {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let seen = Arc::new(Mutex::new(ProxySeen::default()));
    let mode = Arc::new(Mutex::new(mode));
    let (state, modes, upstream) = (Arc::clone(&seen), Arc::clone(&mode), upstream.to_string());
    let client = reqwest::Client::new();
    let app = axum::Router::new().fallback(
        move |method: axum::http::Method,
              uri: axum::http::Uri,
              headers: axum::http::HeaderMap,
              body: axum::body::Bytes| {
            let (seen, client, upstream) = (Arc::clone(&state), client.clone(), upstream.clone());
            let bulk = uri.path().ends_with("/_bulk");
            let mode = {
                let mut mode = modes.lock().unwrap();
                let now = *mode;
                if let (Mode::LoseAnswers(n), true) = (now, bulk) {
                    *mode = if n > 1 { Mode::LoseAnswers(n - 1) } else { Mode::Forward };
                }
                now
            };
            async move {
                if bulk {
                    seen.lock().unwrap().bulk_requests += 1;
                }
                if let Mode::Always(status) = mode {
                    return (axum::http::StatusCode::from_u16(status).unwrap(), b"{\"error\":\"injected\"}".to_vec());
                }
                let mut forwarded = client.request(method, format!("{upstream}{uri}")).body(body.clone());
                for name in ["content-type", "content-encoding"] {
                    if let Some(v) = headers.get(name) {
                        forwarded = forwarded.header(name, v.clone());
                    }
                }
                let answer = forwarded.send().await.unwrap();
                let status = answer.status().as_u16();
                let text = answer.bytes().await.unwrap().to_vec();
                if bulk && status == 200 && !matches!(mode, Mode::LoseAnswers(_)) {
                    let id = headers.get("x-opaque-id").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
                    seen.lock().unwrap().bodies.insert(id, body.to_vec());
                }
                match mode {
                    Mode::LoseAnswers(_) if bulk => (axum::http::StatusCode::SERVICE_UNAVAILABLE, b"{}".to_vec()),
                    _ => (axum::http::StatusCode::from_u16(status).unwrap(), text),
                }
            }
        },
    );
    Proxy { url: super::support::serve(&runtime, app, None), seen, mode, _runtime: runtime }
}

/// A pipeline from `source` (TOML lines of `[sources.in]`) into an `opensearch` sink at `url`.
fn pipeline(source: &str, url: &str, backup: &std::path::Path, extra: &str) -> String {
    format!(
        "[pipeline]\nname = \"to-search\"\n[sources.in]\n{source}\n\
         [sinks.search]\ntype = \"opensearch\"\ninputs = [\"in\"]\nurl = \"{url}\"\n\
         error_prefix = \"failed/!{{firehose:error-output-type}}/\"\nbackup_store = {{ url = \"file://{}\" }}\n\
         buffer = {{ size_mb = 1, interval_s = 60 }}\n{extra}\n",
        backup.display()
    )
}

fn generator(records: u64) -> String {
    format!("type = \"generator\"\nprofile = \"cloudtrail\"\nrecords = {records}\nseed = 15")
}

fn today(index: &str) -> String {
    format!("{index}-{}", chrono::Utc::now().format("%Y-%m-%d"))
}

#[test]
fn a_cloudtrail_run_is_indexed_whole_in_its_day_index() {
    let cluster = osmem();
    let backup = tempfile::tempdir().unwrap();
    let toml = pipeline(&generator(3_000), &cluster.url, backup.path(), "index = \"cloudtrail\"");
    let (_, metrics) = run_pipeline(&toml, &registry(), 2).unwrap();
    let m = &metrics.sinks[0];
    assert_eq!((m.records_delivered.load(Relaxed), m.records_failed.load(Relaxed)), (3_000, 0));
    let index = today("cloudtrail");
    assert_eq!(count(&cluster.url, &index), 3_000);
    // The documents are the records: every generated eventID is found once.
    let expected = generated(Profile::Cloudtrail, 15, 3_000);
    let record: serde_json::Value = serde_json::from_str(&expected[1234]).unwrap();
    let query = serde_json::json!({"query": {"term": {"eventID.keyword": record["eventID"]}}});
    let found = reqwest::blocking::Client::new()
        .post(format!("{}/{index}/_search", cluster.url))
        .header("content-type", "application/json")
        .body(query.to_string())
        .send()
        .unwrap()
        .bytes()
        .unwrap();
    let found: serde_json::Value = serde_json::from_slice(&found).unwrap();
    let hits = found["hits"]["hits"].as_array().unwrap();
    assert_eq!(hits.len(), 1, "{found}");
    assert_eq!(hits[0]["_source"], record);
    assert!(folder_objects(backup.path()).is_empty(), "nothing failed");
}

#[test]
fn a_mapping_conflict_sends_only_the_conflicting_documents_to_the_error_output() {
    let cluster = osmem();
    let mapping = serde_json::json!({"mappings": {"properties": {"x": {"type": "object"}}}});
    let created = reqwest::blocking::Client::new()
        .put(format!("{}/conflict", cluster.url))
        .header("content-type", "application/json")
        .body(mapping.to_string())
        .send()
        .unwrap();
    assert!(created.status().is_success());
    let dir = tempfile::tempdir().unwrap();
    let records: Vec<String> = (0..200)
        .map(|i| {
            if i % 10 == 0 {
                serde_json::json!({"n": i, "x": "flat"}).to_string()
            } else {
                serde_json::json!({"n": i, "x": {"y": i}}).to_string()
            }
        })
        .collect();
    let input = dir.path().join("in.ndjson");
    std::fs::write(&input, records.join("\n") + "\n").unwrap();
    // One record that is not JSON: refused before it is sent.
    std::fs::write(dir.path().join("bad.ndjson"), "not json\n").unwrap();
    let source = format!("type = \"file\"\npaths = [\"{}\", \"{}/bad.ndjson\"]", input.display(), dir.path().display());
    let backup = dir.path().join("backup");
    let toml = pipeline(&source, &cluster.url, &backup, "index = \"conflict\"\nindex_rotation = \"none\"");
    let (_, metrics) = run_pipeline(&toml, &registry(), 2).unwrap();
    assert_eq!(count(&cluster.url, "conflict"), 180);
    let m = &metrics.sinks[0];
    assert_eq!((m.records_delivered.load(Relaxed), m.records_failed.load(Relaxed)), (180, 21));
    let objects = folder_objects(&backup);
    let refused: Vec<serde_json::Value> = objects
        .iter()
        .filter(|(key, _)| key.starts_with("failed/AmazonOpenSearchService-failed/"))
        .flat_map(|(_, lines)| lines.iter().map(|l| serde_json::from_str(l).unwrap()))
        .collect();
    assert_eq!(refused.len(), 20, "{objects:?}");
    let mut raw: Vec<String> = refused.iter().map(raw_data).collect();
    raw.sort();
    let mut expected: Vec<String> = records.iter().filter(|r| r.contains("\"flat\"")).cloned().collect();
    expected.sort();
    assert_eq!(raw, expected);
    for doc in &refused {
        assert_eq!(doc["errorCode"], "400", "{doc}");
        assert!(doc["errorMessage"].as_str().unwrap().contains("mapper_parsing_exception"), "{doc}");
        assert_eq!(doc["esIndexName"], "conflict");
        assert_eq!(doc["esDocumentId"].as_str().unwrap().len(), 32, "{doc}");
        assert!(doc.get("esTypeName").is_some() && doc["attemptsMade"] == 1, "{doc}");
    }
    let malformed: Vec<&String> = objects
        .iter()
        .filter(|(key, _)| key.starts_with("failed/format-conversion-failed/"))
        .flat_map(|(_, lines)| lines)
        .collect();
    assert_eq!(malformed.len(), 1, "{objects:?}");
    assert!(malformed[0].contains("OpenSearch.MalformedData"), "{}", malformed[0]);
}

/// Runs 2,000 records through a proxy that loses the cluster's answer to the first bulk request:
/// the number of documents the cluster then holds.
fn documents_after_a_lost_answer(document_id: &str) -> (u64, usize) {
    let cluster = osmem();
    let proxy = proxy(&cluster.url, Mode::LoseAnswers(1));
    let backup = tempfile::tempdir().unwrap();
    let extra = format!(
        "index = \"retried\"\nindex_rotation = \"none\"\ndocument_id = \"{document_id}\"\nretry = {{ duration_s = 60 }}"
    );
    let toml = pipeline(&generator(2_000), &proxy.url, backup.path(), &extra);
    let (_, metrics) = run_pipeline(&toml, &registry(), 1).unwrap();
    assert_eq!(metrics.sinks[0].records_delivered.load(Relaxed), 2_000);
    let requests = proxy.seen.lock().unwrap().bulk_requests;
    (count(&cluster.url, "retried"), requests)
}

#[test]
fn a_request_retried_after_a_lost_answer_does_not_duplicate_its_documents() {
    let (documents, requests) = documents_after_a_lost_answer("firehose");
    assert!(requests >= 2, "the 503 was retried: {requests} requests");
    assert_eq!(documents, 2_000);
    // The control: without ids the cluster names each copy anew, and the retry duplicates.
    let (documents, _) = documents_after_a_lost_answer("none");
    assert!(documents > 2_000, "{documents} documents without ids");
}

/// A `_bulk` receiver (checking basic auth) that answers every third item of the first request 429
/// and indexes the rest.
#[derive(Default)]
struct ItemsSeen {
    /// Each request's items: (id, document).
    requests: Vec<Vec<(String, String)>>,
    /// Indexed documents by id.
    indexed: BTreeMap<String, String>,
}

#[test]
fn only_the_items_answered_429_are_sent_again_with_their_ids() {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let seen = Arc::new(Mutex::new(ItemsSeen::default()));
    let state = Arc::clone(&seen);
    let app = axum::Router::new().route(
        "/_bulk",
        axum::routing::post(move |headers: axum::http::HeaderMap, body: axum::body::Bytes| {
            let seen = Arc::clone(&state);
            async move {
                let mut text = String::new();
                if headers.get("content-encoding").is_some_and(|v| v == "gzip") {
                    flate2::read::GzDecoder::new(&body[..]).read_to_string(&mut text).unwrap();
                } else {
                    text = String::from_utf8(body.to_vec()).unwrap();
                }
                let lines: Vec<&str> = text.lines().collect();
                // user:secret, as `auth` says.
                assert_eq!(headers.get("authorization").unwrap(), "Basic dXNlcjpzZWNyZXQ=");
                let mut seen = seen.lock().unwrap();
                let first = seen.requests.is_empty();
                let mut items = Vec::new();
                let mut answers = Vec::new();
                for (i, pair) in lines.chunks(2).enumerate() {
                    let action: serde_json::Value = serde_json::from_str(pair[0]).unwrap();
                    let id = action["index"]["_id"].as_str().unwrap().to_string();
                    items.push((id.clone(), pair[1].to_string()));
                    if first && i % 3 == 0 {
                        answers.push(serde_json::json!({"index": {"_index": "items", "_id": id, "status": 429,
                            "error": {"type": "es_rejected_execution_exception", "reason": "rejected"}}}));
                    } else {
                        assert!(seen.indexed.insert(id.clone(), pair[1].to_string()).is_none(), "{id} indexed twice");
                        answers.push(serde_json::json!({"index": {"_index": "items", "_id": id, "status": 201, "result": "created"}}));
                    }
                }
                seen.requests.push(items);
                let errors = answers.iter().any(|a| a["index"]["status"] != 201);
                serde_json::json!({"took": 1, "errors": errors, "items": answers}).to_string()
            }
        }),
    );
    let url = super::support::serve(&runtime, app, None);

    let backup = tempfile::tempdir().unwrap();
    let toml = pipeline(
        &generator(300),
        &url,
        backup.path(),
        "index = \"items\"\nindex_rotation = \"none\"\nretry = { duration_s = 60 }\nauth = { username = \"user\", password = \"secret\" }",
    );
    let (_, metrics) = run_pipeline(&toml, &registry(), 1).unwrap();
    assert_eq!(metrics.sinks[0].records_delivered.load(Relaxed), 300);
    let seen = seen.lock().unwrap();
    assert_eq!(seen.requests.len(), 2, "one request, then one with the refused items");
    let refused: Vec<(String, String)> = seen.requests[0].iter().step_by(3).cloned().collect();
    assert_eq!(seen.requests[1], refused, "the second request holds exactly the 429 items, ids kept");
    let mut indexed: Vec<String> = seen.indexed.values().cloned().collect();
    indexed.sort();
    let mut expected = generated(Profile::Cloudtrail, 15, 300);
    expected.sort();
    assert_eq!(indexed, expected);
}

/// osmem-server behind a recording proxy, for the conformance kit.
struct SearchDestination {
    _cluster: Osmem,
    proxy: Proxy,
    backup: tempfile::TempDir,
}

impl Destination for SearchDestination {
    fn sink(&self) -> Arc<dyn sluice_engine::contract::Sink> {
        let toml = pipeline(&generator(10), &self.proxy.url, self.backup.path(), "index = \"conformance\"");
        Arc::clone(&plan_from_str(&toml, &registry()).unwrap().sinks[0].sink)
    }

    fn stored(&self, key: &str) -> futures::future::BoxFuture<'static, Option<Vec<u8>>> {
        let body = self.proxy.seen.lock().unwrap().bodies.get(key).cloned();
        Box::pin(async move { body })
    }

    fn stored_error_output(&self, key: &str) -> futures::future::BoxFuture<'static, Option<Vec<u8>>> {
        super::support::file_when_read(self.backup.path().join(key))
    }

    fn inject(&self, fault: Option<Fault>) -> bool {
        *self.proxy.mode.lock().unwrap() = match fault {
            None => Mode::Forward,
            Some(Fault::Unavailable) => Mode::Always(503),
            Some(Fault::Refused) => Mode::Always(403),
        };
        true
    }
}

#[test]
fn the_opensearch_sink_passes_the_conformance_kit() {
    let cluster = osmem();
    let proxy = proxy(&cluster.url, Mode::Forward);
    let destination = SearchDestination { _cluster: cluster, proxy, backup: tempfile::tempdir().unwrap() };
    super::support::request_sink_conformance(&destination);
}

#[test]
fn opensearch_config_errors_point_at_the_value() {
    let base = "[pipeline]\nname = \"p\"\n[sources.gen]\ntype = \"generator\"\nprofile = \"vpcflow\"\nrecords = 1\n\
        [sinks.s]\ntype = \"opensearch\"\ninputs = [\"gen\"]\nurl = \"http://127.0.0.1:9\"\nindex = \"logs\"\n\
        backup_store = { url = \"memory://b\" }\n";
    assert!(plan_from_str(base, &registry()).is_ok());
    for (change, line_col, says) in [
        (("index = \"logs\"", "index = \"Logs\""), "pipeline.toml:11:9", "not an index name"),
        (
            ("index = \"logs\"", "index = \"logs\"\nindex_rotation = \"daily\""),
            "pipeline.toml:12:18",
            "unknown index_rotation",
        ),
        (
            ("index = \"logs\"", "index = \"logs\"\ndocument_id = \"random\""),
            "pipeline.toml:12:15",
            "unknown document_id",
        ),
        (("url = \"http://127.0.0.1:9\"", "url = \"ftp://x\""), "pipeline.toml:10:7", "not an http(s) URL"),
        (("index = \"logs\"", "index = \"logs\"\nformat = \"ndjson\""), "pipeline.toml:12:1", "has no `format`"),
        (("backup_store = { url = \"memory://b\" }", ""), "pipeline.toml:7:1", "needs `backup_store`"),
        (
            (
                "index = \"logs\"",
                "index = \"logs\"\nauth = { username = \"u\", password = \"p\" }\naws_sigv4 = { region = \"us-east-1\" }",
            ),
            "pipeline.toml:13:13",
            "exclude each other",
        ),
        (
            ("index = \"logs\"", "index = \"logs\"\nbuffer = { size_mb = 128, interval_s = 60 }"),
            "pipeline.toml:12:1",
            "at most 100",
        ),
    ] {
        let toml = base.replace(change.0, change.1);
        let error = plan_from_str(&toml, &registry()).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(error.contains(line_col) && error.contains(says), "{change:?}: {error}");
    }
}

/// The keys the SigV4 receiver below accepts: the environment's of the test, and the instance
/// profile's ([`super::support::instance_metadata`]).
fn signers() -> sluice_connectors::api::sigv4::AccessKeys {
    let (profile_key, profile_secret, _) = super::support::IMDS_ROLE_KEY;
    sluice_connectors::api::sigv4::AccessKeys::new([
        ("AKIDSEARCHTEST".to_string(), "search-test-secret".to_string()),
        (profile_key.to_string(), profile_secret.to_string()),
    ])
}

/// Amazon OpenSearch Service's side of SigV4, as far as a receiver on 127.0.0.1 can be: every
/// `_bulk` request must verify for service `es` (or `aoss`) in `eu-west-1` with the environment's
/// key (or, without one, the EC2 instance profile's temporary key and its session token), its body
/// hash sent as `x-amz-content-sha256` (Serverless requires it), with the verifier the Firehose API
/// uses (itself checked against boto3, the AWS CLI and the JS SDK).
#[test]
fn aws_sigv4_requests_verify_for_the_service_and_region() {
    use sluice_connectors::api::sigv4::{Scope, SignedRequest, verify};
    for service in ["es", "aoss"] {
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
        let verified = Arc::new(Mutex::new((0usize, Vec::<String>::new())));
        let state = Arc::clone(&verified);
        let root_state = Arc::clone(&verified);
        let app = axum::Router::new().route(
            "/",
            // The start-up check: the cluster's root, signed as `_bulk` requests are.
            axum::routing::get(move |headers: axum::http::HeaderMap| {
                let state = Arc::clone(&root_state);
                async move {
                    let keys = signers();
                    let request = SignedRequest { method: "GET", path: "/", query: "", headers: &headers, body: &[] };
                    let scope = Scope { region: "eu-west-1", service: if service == "es" { "es" } else { "aoss" } };
                    match verify(&keys, &request, chrono::Utc::now().timestamp(), scope) {
                        Ok(_) => (axum::http::StatusCode::OK, r#"{"version":{"number":"2.19.0"}}"#.to_string()),
                        Err(e) => {
                            state.lock().unwrap().1.push(format!("GET /: {e}"));
                            (axum::http::StatusCode::FORBIDDEN, "{}".to_string())
                        }
                    }
                }
            }),
        );
        let app = app.route(
            "/_bulk",
            axum::routing::post(move |headers: axum::http::HeaderMap, body: axum::body::Bytes| {
                let state = Arc::clone(&state);
                async move {
                    let keys = signers();
                    let request =
                        SignedRequest { method: "POST", path: "/_bulk", query: "", headers: &headers, body: &body };
                    let scope = Scope { region: "eu-west-1", service: if service == "es" { "es" } else { "aoss" } };
                    let outcome = verify(&keys, &request, chrono::Utc::now().timestamp(), scope);
                    let mut state = state.lock().unwrap();
                    if let Err(e) = outcome {
                        state.1.push(e.to_string());
                        return (axum::http::StatusCode::FORBIDDEN, "{}".to_string());
                    }
                    if headers.get("x-amz-content-sha256").is_none() {
                        state.1.push("no x-amz-content-sha256".into());
                    }
                    let mut text = Vec::new();
                    flate2::read::GzDecoder::new(&body[..]).read_to_end(&mut text).unwrap();
                    let documents = text.split(|&b| b == b'\n').filter(|l| !l.is_empty()).count() / 2;
                    state.0 += documents;
                    let items: Vec<_> = (0..documents).map(|_| serde_json::json!({"index": {"status": 201}})).collect();
                    (axum::http::StatusCode::OK, serde_json::json!({"errors": false, "items": items}).to_string())
                }
            }),
        );
        let url = super::support::serve(&runtime, app, None);
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("signed.toml");
        let sigv4 = format!("index = \"signed\"\naws_sigv4 = {{ region = \"eu-west-1\", service = \"{service}\" }}");
        std::fs::write(&config, pipeline(&generator(100), &url, &dir.path().join("b"), &sigv4)).unwrap();
        let run = |env: &[(&str, &str)]| {
            let mut cmd = super::support::sluice();
            cmd.args(["run", config.to_str().unwrap(), "--quiet"]).without_aws_keys().envs(env.iter().copied());
            cmd.output().unwrap()
        };
        let without = run(&[]);
        assert!(!without.status.success());
        assert!(String::from_utf8_lossy(&without.stderr).contains("`aws_sigv4` needs AWS credentials"));
        let with = run(&[("AWS_ACCESS_KEY_ID", "AKIDSEARCHTEST"), ("AWS_SECRET_ACCESS_KEY", "search-test-secret")]);
        assert!(with.status.success(), "{}", String::from_utf8_lossy(&with.stderr));
        let (documents, problems) = verified.lock().unwrap().clone();
        assert!(problems.is_empty(), "{service}: {problems:?}");
        assert_eq!(documents, 100, "{service}");
        // No keys in the environment (an EC2 instance, an EKS pod): the instance profile's.
        let asked = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let imds = super::support::instance_metadata(&runtime, Arc::clone(&asked));
        let profiled = run(&[("AWS_METADATA_ENDPOINT", &format!("http://127.0.0.1:{imds}"))]);
        assert!(profiled.status.success(), "{}", String::from_utf8_lossy(&profiled.stderr));
        let (documents, problems) = verified.lock().unwrap().clone();
        assert!(problems.is_empty() && documents == 200, "{service}: {documents} {problems:?}");
        assert!(asked.load(std::sync::atomic::Ordering::SeqCst) >= 1);
        // A profile of the AWS shared files, before the instance profile (the SDKs' order): static
        // keys, then a `credential_process` with a session token.
        let aws_config = dir.path().join("aws-config");
        std::fs::write(
            &aws_config,
            "[profile search]\naws_access_key_id = AKIDSEARCHTEST\naws_secret_access_key = search-test-secret\n\
             [profile helper]\ncredential_process = printf '{\"Version\":1,\"AccessKeyId\":\"AKIDSEARCHTEST\",\
             \"SecretAccessKey\":\"search-test-secret\",\"SessionToken\":\"helper-token\"}'\n",
        )
        .unwrap();
        let imds_asked = asked.load(std::sync::atomic::Ordering::SeqCst);
        for (profile, documents) in [("search", 300), ("helper", 400)] {
            let metadata = format!("http://127.0.0.1:{imds}");
            let aws_config = aws_config.to_str().unwrap();
            let profiled =
                run(&[("AWS_CONFIG_FILE", aws_config), ("AWS_PROFILE", profile), ("AWS_METADATA_ENDPOINT", &metadata)]);
            assert!(profiled.status.success(), "{profile}: {}", String::from_utf8_lossy(&profiled.stderr));
            let (counted, problems) = verified.lock().unwrap().clone();
            assert!(problems.is_empty() && counted == documents, "{service} {profile}: {counted} {problems:?}");
        }
        assert_eq!(asked.load(std::sync::atomic::Ordering::SeqCst), imds_asked, "the instance profile was asked");
        let missing = run(&[("AWS_CONFIG_FILE", aws_config.to_str().unwrap()), ("AWS_PROFILE", "nope")]);
        let said = String::from_utf8_lossy(&missing.stderr);
        assert!(!missing.status.success() && said.contains("AWS_PROFILE is `nope`, but neither"), "{said}");
        // A wrong secret is refused (403) by the start-up check: the run stops before it reads.
        let wrong = run(&[("AWS_ACCESS_KEY_ID", "AKIDSEARCHTEST"), ("AWS_SECRET_ACCESS_KEY", "wrong")]);
        let said = String::from_utf8_lossy(&wrong.stderr);
        assert_eq!(wrong.status.code(), Some(1), "{said}");
        assert!(
            said.contains("refused our credentials (403 Forbidden)") && said.contains("healthcheck = false"),
            "{said}"
        );
        assert!(verified.lock().unwrap().1.iter().all(|p| p.starts_with("GET /")), "no _bulk request was sent");
        // Without the check, `_bulk` refuses it (403): permanent, so the records are backed up,
        // not retried.
        let text = std::fs::read_to_string(&config).unwrap();
        std::fs::write(&config, format!("{text}healthcheck = false\n")).unwrap();
        let wrong = run(&[("AWS_ACCESS_KEY_ID", "AKIDSEARCHTEST"), ("AWS_SECRET_ACCESS_KEY", "wrong")]);
        assert_eq!(wrong.status.code(), Some(2), "{}", String::from_utf8_lossy(&wrong.stderr));
        assert!(verified.lock().unwrap().1.iter().any(|p| !p.starts_with("GET /")));
    }
}

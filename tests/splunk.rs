//! The `splunk` sink against a receiver that implements Splunk's HTTP Event Collector as Splunk
//! documents it (no HEC server is packaged): `Authorization: Splunk <token>` (401 code 2 without it,
//! 403 code 4 for a wrong one), a channel required (400 code 10 without, 11 for a non-GUID), event
//! bodies of concatenated `{"event":…}` objects (400 code 6 for bad JSON, 12 without `event`, 13 for
//! a blank one, 5 for no data) or raw bodies, `{"text":"Success","code":0,"ackId":n}` with ack ids
//! counted per channel, `/services/collector/ack` answering each id `true` once it is indexed and
//! only once, acknowledgement disabled (no `ackId`; the ack endpoint answers 400 code 14), busy
//! (503 code 9) and `/services/collector/health` (code 17; 503 code 18 when busy, which the sink
//! only warns about). Every record is indexed exactly once
//! when acks arrive; a busy server is retried; refused tokens and disabled acks end in the backup
//! store with `EventId`s; a withheld ack ends in a backup with `Splunk.AckTimeout`.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sluice_connectors::registry;
use sluice_connectors::synth::Profile;
use sluice_engine::testkit::sink::{Destination, Fault};
use sluice_engine::testkit::{plan_from_str, run_pipeline};

use super::support::{folder_objects, generated, raw_data};

const TOKEN: &str = "7b5a6f0e-2c3d-4e5f-8a9b-0c1d2e3f4a5b";

/// How the receiver behaves.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Behaviour {
    /// Acknowledges each request this long after indexing it.
    AckAfter(Duration),
    /// Answers the first `n` requests 503 "Server is busy" (code 9), then acknowledges at once; its
    /// health endpoint answers 503 "HEC is unhealthy, queues are full" (code 18).
    BusyFirst(usize),
    /// Indexes, but never acknowledges.
    WithholdAcks,
    /// Takes requests without acknowledgement (the token's ack is disabled).
    AckDisabled,
}

/// One indexed request.
struct Indexed {
    /// When its ack turns true.
    acked_at: Instant,
    /// Whether `true` was reported (it is reported once).
    reported: bool,
}

#[derive(Default)]
struct Hec {
    /// Every event indexed (event endpoint: the `event` values as JSON text; raw: the bodies).
    events: Vec<String>,
    /// Indexed requests by (channel, ack id).
    acks: HashMap<(String, u64), Indexed>,
    /// The next ack id per channel.
    next_ack: HashMap<String, u64>,
    /// Request bodies taken, by `X-Request-Id`.
    bodies: BTreeMap<String, Vec<u8>>,
    channels: Vec<String>,
    requests: usize,
    acks_reported: usize,
    /// Requests to the health endpoint.
    health_checks: usize,
}

struct Receiver {
    url: String,
    hec: Arc<Mutex<Hec>>,
    behaviour: Arc<Mutex<Behaviour>>,
    _runtime: tokio::runtime::Runtime,
}

type Answer = (axum::http::StatusCode, String);

fn answer(status: u16, text: &str, code: i64) -> Answer {
    (axum::http::StatusCode::from_u16(status).unwrap(), serde_json::json!({"text": text, "code": code}).to_string())
}

/// The query parameters of `uri`.
fn query_of(uri: &axum::http::Uri) -> HashMap<String, String> {
    let url = reqwest::Url::parse(&format!("http://x{uri}")).unwrap();
    url.query_pairs().map(|(k, v)| (k.into_owned(), v.into_owned())).collect()
}

/// The channel of a request (header or query), or HEC's error.
fn channel(headers: &axum::http::HeaderMap, query: &HashMap<String, String>) -> Result<String, Answer> {
    let channel = headers
        .get("x-splunk-request-channel")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .or_else(|| query.get("channel").cloned())
        .ok_or_else(|| answer(400, "Data channel is missing", 10))?;
    if uuid::Uuid::parse_str(&channel).is_err() {
        return Err(answer(400, "Invalid data channel", 11));
    }
    Ok(channel)
}

fn authorized(headers: &axum::http::HeaderMap) -> Result<(), Answer> {
    match headers.get("authorization").and_then(|v| v.to_str().ok()) {
        None => Err(answer(401, "Token is required", 2)),
        Some(v) if v == format!("Splunk {TOKEN}") => Ok(()),
        Some(v) if v.starts_with("Splunk ") => Err(answer(403, "Invalid token", 4)),
        Some(_) => Err(answer(401, "Invalid authorization", 3)),
    }
}

/// The `event` values of an event-endpoint body, as JSON text, or HEC's error.
fn events(body: &[u8]) -> Result<Vec<String>, Answer> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(answer(400, "No data", 5));
    }
    let mut events = Vec::new();
    for value in serde_json::Deserializer::from_slice(body).into_iter::<serde_json::Value>() {
        let value = value.map_err(|_| answer(400, "Invalid data format", 6))?;
        match value.get("event") {
            None => return Err(answer(400, "Event field is required", 12)),
            Some(serde_json::Value::String(s)) if s.is_empty() => {
                return Err(answer(400, "Event field cannot be blank", 13));
            }
            Some(event) => {
                assert!(value["time"].as_f64().is_some_and(|t| t > 1.7e9), "an arrival time in seconds: {value}");
                events.push(match event {
                    serde_json::Value::String(s) => s.clone(),
                    other => other.to_string(),
                });
            }
        }
    }
    Ok(events)
}

fn receiver(behaviour: Behaviour) -> Receiver {
    receiver_over(behaviour, None)
}

/// A HEC receiver serving HTTPS with `tls` (plain HTTP without).
fn receiver_over(behaviour: Behaviour, tls: Option<axum_server::tls_rustls::RustlsConfig>) -> Receiver {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let hec = Arc::new(Mutex::new(Hec::default()));
    let behaviour = Arc::new(Mutex::new(behaviour));
    let (state, behaving) = (Arc::clone(&hec), Arc::clone(&behaviour));
    let (hec_health, behaving_health) = (Arc::clone(&hec), Arc::clone(&behaviour));
    let send = move |raw: bool| {
        let (state, behaving) = (Arc::clone(&state), Arc::clone(&behaving));
        move |headers: axum::http::HeaderMap, uri: axum::http::Uri, body: axum::body::Bytes| {
            let query = query_of(&uri);
            let (state, behaviour) = (Arc::clone(&state), *behaving.lock().unwrap());
            async move {
                let mut hec = state.lock().unwrap();
                hec.requests += 1;
                if let Behaviour::BusyFirst(n) = behaviour
                    && hec.requests <= n
                {
                    return answer(503, "Server is busy", 9);
                }
                if let Err(e) = authorized(&headers) {
                    return e;
                }
                let channel = match channel(&headers, &query) {
                    Ok(c) => c,
                    Err(e) => return e,
                };
                let indexed = if raw {
                    vec![String::from_utf8(body.to_vec()).unwrap()]
                } else {
                    match events(&body) {
                        Ok(events) => events,
                        Err(e) => return e,
                    }
                };
                hec.events.extend(indexed);
                let id = headers.get("x-request-id").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
                hec.bodies.insert(id, body.to_vec());
                if !hec.channels.contains(&channel) {
                    hec.channels.push(channel.clone());
                }
                if behaviour == Behaviour::AckDisabled {
                    return (axum::http::StatusCode::OK, serde_json::json!({"text": "Success", "code": 0}).to_string());
                }
                let next = hec.next_ack.entry(channel.clone()).or_insert(0);
                let ack_id = *next;
                *next += 1;
                let delay = match behaviour {
                    Behaviour::AckAfter(d) => d,
                    Behaviour::WithholdAcks => Duration::from_secs(100_000),
                    _ => Duration::ZERO,
                };
                hec.acks.insert((channel, ack_id), Indexed { acked_at: Instant::now() + delay, reported: false });
                (
                    axum::http::StatusCode::OK,
                    serde_json::json!({"text": "Success", "code": 0, "ackId": ack_id}).to_string(),
                )
            }
        }
    };
    let (state, behaving) = (Arc::clone(&hec), Arc::clone(&behaviour));
    let ack = move |headers: axum::http::HeaderMap, uri: axum::http::Uri, body: axum::body::Bytes| {
        let query = query_of(&uri);
        let (state, behaviour) = (Arc::clone(&state), *behaving.lock().unwrap());
        async move {
            if let Err(e) = authorized(&headers) {
                return e;
            }
            if behaviour == Behaviour::AckDisabled {
                return answer(400, "ACK is disabled", 14);
            }
            let channel = match channel(&headers, &query) {
                Ok(c) => c,
                Err(e) => return e,
            };
            let Ok(asked) = serde_json::from_slice::<serde_json::Value>(&body) else {
                return answer(400, "Invalid data format", 6);
            };
            let mut hec = state.lock().unwrap();
            let mut acks = serde_json::Map::new();
            for id in asked["acks"].as_array().into_iter().flatten().filter_map(serde_json::Value::as_u64) {
                // True once the request is indexed, reported once.
                let done = match hec.acks.get_mut(&(channel.clone(), id)) {
                    Some(indexed) if !indexed.reported && Instant::now() >= indexed.acked_at => {
                        indexed.reported = true;
                        true
                    }
                    _ => false,
                };
                hec.acks_reported += usize::from(done);
                acks.insert(id.to_string(), done.into());
            }
            (axum::http::StatusCode::OK, serde_json::json!({ "acks": acks }).to_string())
        }
    };
    let app = axum::Router::new()
        .route("/services/collector/event", axum::routing::post(send(false)))
        .route("/services/collector/raw", axum::routing::post(send(true)))
        .route("/services/collector/ack", axum::routing::post(ack))
        .route(
            "/services/collector/health",
            axum::routing::get(move || {
                let (state, behaviour) = (Arc::clone(&hec_health), *behaving_health.lock().unwrap());
                async move {
                    state.lock().unwrap().health_checks += 1;
                    match behaviour {
                        Behaviour::BusyFirst(_) => answer(503, "HEC is unhealthy, queues are full", 18),
                        _ => answer(200, "HEC is healthy", 17),
                    }
                }
            }),
        );
    Receiver { url: super::support::serve(&runtime, app, tls), hec, behaviour, _runtime: runtime }
}

fn pipeline(url: &str, backup: &std::path::Path, records: u64, extra: &str) -> String {
    format!(
        "[pipeline]\nname = \"to-splunk\"\n[sources.gen]\ntype = \"generator\"\nprofile = \"cloudtrail\"\nrecords = {records}\nseed = 8\n\
         [sinks.siem]\ntype = \"splunk\"\ninputs = [\"gen\"]\nurl = \"{url}\"\ntoken = \"{TOKEN}\"\n\
         error_prefix = \"failed/!{{firehose:error-output-type}}/\"\nbackup_store = {{ url = \"file://{}\" }}\n\
         buffer = {{ size_mb = 1, interval_s = 60 }}\n{extra}\n",
        backup.display()
    )
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

/// The records as the receiver sees event values (a JSON object's text, compacted by serde).
fn as_events(records: Vec<String>) -> Vec<String> {
    sorted(records.iter().map(|r| serde_json::from_str::<serde_json::Value>(r).unwrap().to_string()).collect())
}

/// The error documents under `failed/splunk-failed/`.
fn backed_up(dir: &std::path::Path) -> Vec<serde_json::Value> {
    folder_objects(dir)
        .iter()
        .filter(|(key, _)| key.starts_with("failed/splunk-failed/"))
        .flat_map(|(_, lines)| lines.iter().map(|l| serde_json::from_str(l).unwrap()))
        .collect()
}

#[test]
fn every_record_is_indexed_once_and_delivered_only_when_acknowledged() {
    let hec = receiver(Behaviour::AckAfter(Duration::from_millis(700)));
    let backup = tempfile::tempdir().unwrap();
    let (_, metrics) = run_pipeline(&pipeline(&hec.url, backup.path(), 4_000, ""), &registry(), 2).unwrap();
    let m = &metrics.sinks[0];
    assert_eq!((m.records_delivered.load(Relaxed), m.records_failed.load(Relaxed)), (4_000, 0));
    // Acks turn true 700 ms after indexing: DataAckLatency saw every request wait that long.
    let latency = m.own_durations.lock().unwrap().get("DeliveryToSplunk_DataAckLatency").cloned().unwrap();
    assert!(
        latency.count() >= 3 && latency.mean_seconds() >= 0.7,
        "{} acks, mean {}",
        latency.count(),
        latency.mean_seconds()
    );
    let seen = hec.hec.lock().unwrap();
    assert_eq!(sorted(seen.events.clone()), as_events(generated(Profile::Cloudtrail, 8, 4_000)));
    // 4,000 records of ~700 bytes in 1 MB requests: several requests, each acknowledged before the run
    // counted it delivered.
    assert!(seen.acks.len() >= 3, "{} requests", seen.acks.len());
    assert_eq!(seen.acks_reported, seen.acks.len(), "every request's ack was asked for until true");
    assert!(!seen.channels.is_empty() && seen.channels.len() <= 2, "a channel per worker: {:?}", seen.channels);
    assert!(backed_up(backup.path()).is_empty());
}

#[test]
fn a_busy_server_is_retried_and_raw_requests_concatenate_records() {
    let hec = receiver(Behaviour::BusyFirst(2));
    let backup = tempfile::tempdir().unwrap();
    let toml = pipeline(&hec.url, backup.path(), 500, "endpoint = \"raw\"\nretry = { duration_s = 60 }");
    let (_, metrics) = run_pipeline(&toml, &registry(), 1).unwrap();
    assert_eq!(metrics.sinks[0].records_delivered.load(Relaxed), 500);
    let seen = hec.hec.lock().unwrap();
    assert!(seen.requests >= 3, "two refused, then taken: {}", seen.requests);
    // The start-up check found HEC unhealthy (503 code 18) and delivered anyway: busy is not down.
    assert_eq!(seen.health_checks, 1);
    // Raw: the records' bytes with no delimiter (Firehose's behaviour), in one request.
    assert_eq!(seen.events, vec![generated(Profile::Cloudtrail, 8, 500).concat()]);
}

#[test]
fn a_hec_with_a_certificate_of_its_own_ca_under_another_name_takes_events_with_that_ca_alone() {
    // Splunk's default HEC certificate is signed by its own CA (`SplunkCommonCA`) and named
    // `SplunkServerDefaultCert`, not the host: `ca` with `verify_hostname = false` is how it is reached.
    let certs = super::support::TestCertificates::make();
    let hec = receiver_over(Behaviour::AckAfter(Duration::ZERO), Some(certs.server("elsewhere", false)));
    let backup = tempfile::tempdir().unwrap();
    let tls = format!("tls = {{ ca = \"{}\", verify_hostname = false }}", certs.path("ca.pem"));
    let (_, metrics) = run_pipeline(&pipeline(&hec.url, backup.path(), 200, &tls), &registry(), 1).unwrap();
    assert_eq!(metrics.sinks[0].records_delivered.load(Relaxed), 200);
    assert_eq!(sorted(hec.hec.lock().unwrap().events.clone()), as_events(generated(Profile::Cloudtrail, 8, 200)));
    // With the name checked, the same certificate is refused by the start-up check (HEC's health
    // endpoint), with what to do: nothing is read.
    let tls = format!("tls = {{ ca = \"{}\" }}\nretry = {{ duration_s = 0 }}", certs.path("ca.pem"));
    let error = run_pipeline(&pipeline(&hec.url, backup.path(), 200, &tls), &registry(), 1).err().unwrap();
    assert!(
        error.contains(
            "the server's certificate is not trusted (invalid peer certificate: certificate not valid for name"
        ) && error.contains("verify_hostname = false"),
        "{error}"
    );
    // Without the check, each request is refused the same way, and the events are backed up.
    let unchecked = format!("{tls}\nhealthcheck = false");
    let (_, metrics) = run_pipeline(&pipeline(&hec.url, backup.path(), 200, &unchecked), &registry(), 1).unwrap();
    assert_eq!(metrics.sinks[0].records_failed.load(Relaxed), 200);
    let docs = backed_up(backup.path());
    assert!(docs.iter().all(|d| d["errorCode"] == "Splunk.ConnectionFailed"), "{:?}", docs.first());
    assert!(
        docs.iter().all(|d| d["errorMessage"].as_str().unwrap().contains("not valid for name")),
        "{:?}",
        docs.first()
    );
}

#[test]
fn a_refused_token_and_disabled_acks_end_in_the_backup_store_with_event_ids() {
    for (behaviour, token, code) in [
        (Behaviour::AckAfter(Duration::ZERO), "wrong-token", "Splunk.InvalidToken"),
        (Behaviour::AckDisabled, TOKEN, "Splunk.DisabledAck"),
    ] {
        let hec = receiver(behaviour);
        let backup = tempfile::tempdir().unwrap();
        let toml = pipeline(&hec.url, backup.path(), 50, "retry = { duration_s = 60 }").replace(TOKEN, token);
        let (_, metrics) = run_pipeline(&toml, &registry(), 1).unwrap();
        assert_eq!(metrics.sinks[0].records_failed.load(Relaxed), 50, "{code}");
        let docs = backed_up(backup.path());
        assert_eq!(sorted(docs.iter().map(raw_data).collect()), sorted(generated(Profile::Cloudtrail, 8, 50)));
        for (i, doc) in docs.iter().enumerate() {
            assert_eq!(doc["errorCode"], code, "{doc}");
            assert_eq!(doc["attemptsMade"], 1, "permanent: not retried: {doc}");
            let event_id = doc["EventId"].as_str().unwrap();
            assert!(event_id.ends_with(&format!(".{i}")), "{event_id}");
        }
        if behaviour == Behaviour::AckDisabled {
            assert_eq!(hec.hec.lock().unwrap().events.len(), 50, "indexed, but never acknowledged");
        }
    }
}

#[test]
fn a_withheld_acknowledgement_ends_in_a_backup_after_the_ack_timeout() {
    // Firehose's shortest acknowledgement timeout is 180 s: this test waits that long.
    let hec = receiver(Behaviour::WithholdAcks);
    let backup = tempfile::tempdir().unwrap();
    let toml = pipeline(&hec.url, backup.path(), 20, "ack_timeout_s = 180\nretry = { duration_s = 0 }");
    let started = Instant::now();
    let (_, metrics) = run_pipeline(&toml, &registry(), 1).unwrap();
    assert!(started.elapsed() >= Duration::from_secs(179));
    assert_eq!(metrics.sinks[0].records_failed.load(Relaxed), 20);
    let docs = backed_up(backup.path());
    assert_eq!(docs.len(), 20);
    assert!(docs.iter().all(|d| d["errorCode"] == "Splunk.AckTimeout"), "{docs:?}");
    assert!(docs[0]["errorMessage"].as_str().unwrap().contains("may be indexed"), "{}", docs[0]);
    assert_eq!(hec.hec.lock().unwrap().events.len(), 20, "indexed, never acknowledged");
}

#[test]
fn splunk_config_errors_point_at_the_value() {
    let backup = tempfile::tempdir().unwrap();
    let base = pipeline("http://127.0.0.1:9", backup.path(), 1, "");
    assert!(plan_from_str(&base, &registry()).is_ok());
    for (change, says) in [
        (
            ("buffer = { size_mb = 1, interval_s = 60 }", "buffer = { size_mb = 1, interval_s = 61 }"),
            "`buffer.interval_s` is at most 60",
        ),
        (
            ("buffer = { size_mb = 1, interval_s = 60 }", "buffer = { size_mb = 6, interval_s = 60 }"),
            "`buffer.size_mb` is at most 5",
        ),
        (
            ("buffer = { size_mb = 1, interval_s = 60 }", "ack_timeout_s = 30"),
            "`sinks.siem.ack_timeout_s` = 30 is out of range: expected 180..=600",
        ),
        (("buffer = { size_mb = 1, interval_s = 60 }", "endpoint = \"collector\""), "unknown endpoint `collector`"),
        (("buffer = { size_mb = 1, interval_s = 60 }", "compression = \"gzip\""), "has no `compression`"),
    ] {
        let toml = base.replace(change.0, change.1);
        let error = plan_from_str(&toml, &registry()).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(error.contains(says) && error.contains("pipeline.toml:"), "{change:?}: {error}");
    }
    // Without `buffer`, Firehose's Splunk default: 5 MB / 60 s.
    let plan = plan_from_str(&base.replace("buffer = { size_mb = 1, interval_s = 60 }", ""), &registry()).unwrap();
    let hints = plan.sinks[0].settings.hints;
    assert_eq!((hints.size_bytes, hints.interval), (5 << 20, Duration::from_secs(60)));
}

/// The receiver as the conformance kit sees it: a request is stored when HEC took it and its ack
/// turned true; unavailable is busy (503), refused a wrong token's 403.
struct HecDestination {
    hec: Receiver,
    backup: tempfile::TempDir,
}

impl Destination for HecDestination {
    fn sink(&self) -> Arc<dyn sluice_engine::contract::Sink> {
        let toml = pipeline(&self.hec.url, self.backup.path(), 10, "");
        Arc::clone(&plan_from_str(&toml, &registry()).unwrap().sinks[0].sink)
    }

    fn stored(&self, key: &str) -> futures::future::BoxFuture<'static, Option<Vec<u8>>> {
        let body = self.hec.hec.lock().unwrap().bodies.get(key).cloned();
        Box::pin(async move { body })
    }

    fn stored_error_output(&self, key: &str) -> futures::future::BoxFuture<'static, Option<Vec<u8>>> {
        super::support::file_when_read(self.backup.path().join(key))
    }

    fn inject(&self, fault: Option<Fault>) -> bool {
        *self.hec.behaviour.lock().unwrap() = match fault {
            None => Behaviour::AckAfter(Duration::ZERO),
            Some(Fault::Unavailable) => Behaviour::BusyFirst(usize::MAX),
            Some(Fault::Refused) => Behaviour::AckDisabled,
        };
        true
    }
}

#[test]
fn the_splunk_sink_passes_the_conformance_kit() {
    let destination =
        HecDestination { hec: receiver(Behaviour::AckAfter(Duration::ZERO)), backup: tempfile::tempdir().unwrap() };
    super::support::request_sink_conformance(&destination);
}

//! `type = "http_endpoint"`: receives Firehose's HTTP endpoint deliveries (protocol 1.0,
//! docs/firehose.md §5), so that an Amazon Data Firehose stream (or another sluice's
//! `http_endpoint` sink) can deliver into a sluice pipeline: CloudWatch Logs subscriptions, AWS
//! WAF or any Firehose source, taken into an on-premises lake, Splunk or PostgreSQL.
//!
//! ```toml
//! [sources.from_aws]
//! type = "http_endpoint"
//! listen = "0.0.0.0:8443"
//! access_key = "${FIREHOSE_ACCESS_KEY}"     # X-Amz-Firehose-Access-Key must be this
//! # or several, each named (the name, never the key, is what the audit log shows):
//! # access_keys = [{ name = "prod-stream", access_key = "${KEY_A}" }, { name = "dev-stream", access_key = "${KEY_B}" }]
//! tls = { cert = "...", key = "..." }       # Firehose delivers to https:// on port 443 only
//! max_body_mb = 64                         # Firehose's request limit before compression
//! max_inflight_mb = 256                    # past this, requests get 503 (Firehose retries)
//! remember_requests = 10000                # request ids remembered to take a retried request once
//! max_connections = 4096                   # the listener's limits (crate::api::listener)
//! ```
//!
//! A request is a `POST` of `{"requestId","timestamp","records":[{"data":"<base64>"}]}` with the
//! headers `X-Amz-Firehose-Protocol-Version: 1.0` and `X-Amz-Firehose-Request-Id` (the same id as
//! the body's), its body plain or gzip (`Content-Encoding`); each record's `data` decodes to at
//! most 1,024,000 bytes, a request holds at most 10,000 records. It is answered `200` with
//! `{"requestId","timestamp"}` once its records are queued (and logged as durably as the pipeline
//! asks), and otherwise with the protocol's error body `{"requestId","timestamp","errorMessage"}`:
//! 400 (not the protocol, a request id over 256 bytes, a body or record that does not decode), 401 (no or another access key),
//! 408 (the body did not arrive in time), 413 (over `max_body_mb`, which Firehose does not retry),
//! 415 (an encoding other than plain, gzip, deflate, br or zstd) or 503 (throttled, too many bodies being
//! read, stopping, or the same request still being taken: Firehose retries every status but 413).
//!
//! Guarantees: a request is taken whole or not at all; the access key is checked before the body
//! is read, in constant time, against every configured one. Firehose sends a request again under
//! the same id when it saw no answer (a timeout, a connection reset); the ids of the last
//! `remember_requests` requests taken are remembered, so such a retry is answered `200` without
//! taking its records twice; with a write-ahead log they are also kept in a file beside it
//! (`<data_dir>/<source>.request-ids`), so a retry that arrives after a restart is recognised too
//! (with `durability = "none"` it is taken again, which Firehose's at-least-once delivery allows). Beyond Firehose's documentation, which
//! specifies only the sender: `X-Amz-Firehose-Common-Attributes` must be the protocol's
//! `{"commonAttributes":{…}}` when present and is recorded, with the source ARN, in the audit log.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::Response;
use serde::Deserialize;
use serde_json::json;
use sluice_engine::audit::{AuditEvent, HTTP_ENDPOINT_EVENT_SOURCE};
use sluice_engine::config::{ConnectorConfig, Problems};
use sluice_engine::contract::Source;
use sluice_engine::record::{RecordBatch, now_ms};

use crate::api::Caller;
use crate::api::firehose::MAX_RECORD_BYTES;
use crate::api::post::{
    KeyPlaces, ListenerKeys, PostEndpoint, PostSource, Protocol, Refusal, SecretKeys, enqueue, json_answer,
};
use crate::api::{ListenerLimits, TlsFiles};

/// Most records in one request (the protocol's limit).
pub const MAX_REQUEST_RECORDS: usize = 10_000;
/// The protocol version this source speaks.
const PROTOCOL_VERSION: &str = "1.0";
/// The longest request id taken (Firehose's are GUIDs, 36 characters): ids are remembered, so their
/// memory stays bounded by `remember_requests`.
const MAX_REQUEST_ID_BYTES: usize = 256;

/// The source's own keys.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct HttpEndpointConfig {
    /// Address to listen on (default `127.0.0.1:4575`).
    listen: Option<String>,
    /// The access key requests must carry.
    access_key: Option<String>,
    /// Several, each with a name.
    access_keys: Option<Vec<NamedKey>>,
    /// Largest request body in MB, after decompression (default 64, Firehose's request limit).
    max_body_mb: Option<u64>,
    /// Bytes accepted but not yet taken by the workers before requests get 503 (default 256).
    max_inflight_mb: Option<u64>,
    /// HTTPS with these PEM files.
    tls: Option<TlsFiles>,
    /// Request ids remembered to recognise a retried request (default 10,000; 0: none).
    remember_requests: Option<u64>,
}

/// `{ name, access_key }` of `access_keys` (a field name that marks a secret: `sluice validate` and
/// diagnostics mask its value).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NamedKey {
    /// Who holds it (shown in the audit log).
    name: String,
    /// The key.
    access_key: String,
}

/// How the access keys are called in messages.
const ACCESS_KEYS: SecretKeys = SecretKeys {
    single: "access_key",
    named: "access_keys",
    what: "access key",
    example: "{ name = \"prod-stream\", access_key = \"${KEY_A}\" }",
};

/// What the handler needs besides the shared endpoint.
struct Receiver {
    endpoint: Arc<PostEndpoint>,
    recent: Mutex<RecentRequests>,
}

/// Builds the source from `[sources.<name>]`.
pub fn configure(mut config: ConnectorConfig) -> Result<Arc<dyn Source>, Problems> {
    let places = KeyPlaces::of(&config, ACCESS_KEYS);
    let remember_at = config.table.key_at("remember_requests");
    let mut problems = Problems::default();
    let limits = ListenerLimits::take_from(&mut config.table, 1, &mut problems);
    let Some(c) = config.table.deserialize::<HttpEndpointConfig>(&mut problems) else { return Err(problems) };
    let remember = problems.take(remember_at.within(
        c.remember_requests,
        10_000,
        0..=1_000_000,
        "request ids remembered to take a retried request once (default 10000; 0: none)",
    ));
    let keys = ListenerKeys {
        listen: c.listen,
        grpc_listen: None,
        max_body_mb: c.max_body_mb,
        max_inflight_mb: c.max_inflight_mb,
        tls: c.tls,
        secret: c.access_key,
        named_secrets: c.access_keys.map(|keys| keys.into_iter().map(|k| (k.name, k.access_key)).collect()),
    };
    let protocol = Protocol {
        what: "http_endpoint: Firehose HTTP endpoint deliveries",
        default_listen: "127.0.0.1:4575",
        default_body_mb: 64,
        grpc_router: None,
        router: Box::new(move |endpoint| {
            let file = endpoint.state_file("request-ids");
            let recent = Mutex::new(RecentRequests::new(remember.unwrap_or(0) as usize, file));
            axum::Router::new()
                .fallback(axum::routing::post(receive))
                .with_state(Arc::new(Receiver { endpoint, recent }))
        }),
    };
    PostSource::configure(places, keys, limits, protocol, problems)
}

/// The ids of the requests taken lately, and of those being taken; with a write-ahead log, the
/// taken ones also in a file beside it (one per line, appended once the request's records are
/// logged, rewritten with the remembered ones when it holds twice as many), read at start, so a
/// retry that arrives after a restart is recognised too. The file is written without `fsync`:
/// an id it lost (a power cut) only lets a retry be taken again, and an id is written only after
/// its records are as durable as the pipeline asks.
#[derive(Debug)]
struct RecentRequests {
    /// At most this many taken ids are remembered (0: none).
    capacity: usize,
    /// Each remembered id: whether its request is taken (else still being taken).
    ids: HashMap<String, bool>,
    /// Taken ids, oldest first.
    order: VecDeque<String>,
    /// The file of taken ids, open for appending, and how many lines it holds.
    file: Option<(std::path::PathBuf, std::fs::File, usize)>,
}

/// What a request id says about its request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Seen {
    /// Not seen: take it (it is now being taken).
    New,
    /// Its records were taken already.
    Taken,
    /// Another request with this id is being taken.
    InProgress,
}

impl RecentRequests {
    /// Remembering `capacity` ids, those in `file` first (when given).
    fn new(capacity: usize, file: Option<std::path::PathBuf>) -> Self {
        let mut recent = RecentRequests { capacity, ids: HashMap::new(), order: VecDeque::new(), file: None };
        let Some(path) = file.filter(|_| capacity > 0) else { return recent };
        let known = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => {
                tracing::warn!(file = %path.display(), error = %e, "cannot read the request ids taken before; a retry of one of them would be taken again");
                String::new()
            }
        };
        for id in known.lines().filter(|l| !l.is_empty()) {
            recent.remember(id);
        }
        match std::fs::OpenOptions::new().create(true).append(true).open(&path) {
            Ok(f) => recent.file = Some((path, f, known.lines().count())),
            Err(e) => {
                tracing::warn!(file = %path.display(), error = %e, "cannot keep the request ids taken; after a restart a retry would be taken again")
            }
        }
        recent
    }

    /// Remembers `id` as taken, forgetting the oldest past the capacity.
    fn remember(&mut self, id: &str) {
        if self.ids.insert(id.to_string(), true) != Some(true) {
            self.order.push_back(id.to_string());
        }
        while self.order.len() > self.capacity {
            if let Some(oldest) = self.order.pop_front() {
                self.ids.remove(&oldest);
            }
        }
    }

    /// Adds `id` to the file, rewriting it with the remembered ids when it holds twice as many;
    /// a failure stops the file being kept (ids are then remembered in memory only).
    fn keep(&mut self, id: &str) {
        use std::io::Write;
        let Some((path, file, lines)) = self.file.as_mut() else { return };
        let written = if *lines + 1 > 2 * self.capacity.max(1) {
            let text: String = self.order.iter().map(|id| format!("{id}\n")).collect();
            let staged = path.with_extension("request-ids.new");
            std::fs::write(&staged, text)
                .and_then(|()| std::fs::rename(&staged, &*path))
                .and_then(|()| std::fs::OpenOptions::new().append(true).open(&*path))
                .map(|reopened| {
                    *file = reopened;
                    *lines = self.order.len();
                })
        } else {
            file.write_all(format!("{id}\n").as_bytes()).map(|()| *lines += 1)
        };
        if let Err(e) = written {
            tracing::warn!(file = %path.display(), error = %e, "cannot keep the request ids taken; after a restart a retry would be taken again");
            self.file = None;
        }
    }

    /// Looks `id` up and, when it is new, marks it as being taken.
    fn begin(&mut self, id: &str) -> Seen {
        if self.capacity == 0 {
            return Seen::New;
        }
        match self.ids.get(id) {
            Some(true) => Seen::Taken,
            Some(false) => Seen::InProgress,
            None => {
                self.ids.insert(id.to_string(), false);
                Seen::New
            }
        }
    }

    /// The request `id` ended: remembered as taken, or forgotten when it was refused.
    fn end(&mut self, id: &str, taken: bool) {
        if self.capacity == 0 {
            return;
        }
        if !taken {
            self.ids.remove(id);
            return;
        }
        self.remember(id);
        self.keep(id);
    }
}

/// A request's body, as the protocol gives it.
#[derive(Deserialize)]
struct DeliveryRequest<'a> {
    #[serde(rename = "requestId", borrow)]
    request_id: Option<Cow<'a, str>>,
    timestamp: Option<serde_json::Number>,
    #[serde(borrow)]
    records: Option<Vec<DeliveredRecord<'a>>>,
}

#[derive(Deserialize)]
struct DeliveredRecord<'a> {
    #[serde(borrow)]
    data: Option<Cow<'a, str>>,
}

/// `X-Amz-Firehose-Common-Attributes`.
#[derive(Deserialize)]
struct CommonAttributes {
    #[serde(rename = "commonAttributes")]
    common_attributes: BTreeMap<String, String>,
}

/// The records of a request body whose header named it `header_id`, checked against the protocol.
fn records(body: &[u8], header_id: &str) -> Result<RecordBatch, String> {
    let request: DeliveryRequest =
        serde_json::from_slice(body).map_err(|e| format!("the body is not a Firehose HTTP endpoint request: {e}"))?;
    match request.request_id.as_deref() {
        None => return Err("the body has no `requestId`".into()),
        Some(id) if id != header_id => {
            return Err(format!("the body's requestId `{id}` is not the X-Amz-Firehose-Request-Id header's"));
        }
        Some(_) => {}
    }
    if request.timestamp.is_none() {
        return Err("the body has no `timestamp`".into());
    }
    let records = request.records.ok_or("the body has no `records`")?;
    if records.len() > MAX_REQUEST_RECORDS {
        return Err(format!("{} records; a request holds at most {MAX_REQUEST_RECORDS}", records.len()));
    }
    let decoded: usize = records.iter().map(|r| r.data.as_ref().map_or(0, |d| d.len() / 4 * 3)).sum();
    let mut batch = RecordBatch::with_capacity(now_ms(), decoded);
    for (i, record) in records.iter().enumerate() {
        let data = record.data.as_deref().ok_or_else(|| format!("records[{i}] has no `data`"))?;
        let before = batch.byte_len();
        batch
            .push_with(|buf| crate::record_data::decode_append(data.as_bytes(), buf))
            .map_err(|e| format!("records[{i}].data is not valid base64: {e}"))?;
        if batch.byte_len() - before > MAX_RECORD_BYTES {
            return Err(format!(
                "records[{i}] holds {} bytes; a record is at most {MAX_RECORD_BYTES}",
                batch.byte_len() - before
            ));
        }
    }
    Ok(batch)
}

/// The protocol's answer: `{"requestId","timestamp"}`, with `errorMessage` when refused.
fn answer(status: StatusCode, request_id: &str, error: Option<&str>) -> Response {
    let body = match error {
        None => json!({"requestId": request_id, "timestamp": now_ms()}),
        Some(message) => json!({"requestId": request_id, "timestamp": now_ms(), "errorMessage": message}),
    };
    json_answer(status, &body)
}

/// What the audit trail records of a delivery.
#[derive(Debug, Default)]
struct Facts {
    /// The name of the access key it carried.
    key: Option<String>,
    /// Records in its body.
    records: Option<usize>,
    /// Their bytes.
    bytes: Option<usize>,
    /// `X-Amz-Firehose-Common-Attributes`, parsed.
    attributes: Option<BTreeMap<String, String>>,
    /// A retry of a request already taken (answered without taking its records again).
    repeated: bool,
}

fn header_text<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

async fn receive(State(receiver): State<Arc<Receiver>>, caller: Caller, headers: HeaderMap, body: Body) -> Response {
    let request_id = header_text(&headers, "x-amz-firehose-request-id").unwrap_or_default().to_string();
    let mut facts = Facts::default();
    let outcome = take(&receiver, &request_id, &headers, body, &mut facts).await;
    if let Some(metrics) = receiver.endpoint.metrics() {
        metrics.audit(|trail| {
            let identity = caller.identity(match &facts.key {
                Some(name) => json!({"type": "AccessKey", "accessKeyName": name}),
                None => json!({"type": "Unknown"}),
            });
            let user_agent = header_text(&headers, header::USER_AGENT.as_str());
            let event = AuditEvent::api_call(HTTP_ENDPOINT_EVENT_SOURCE, "DeliverRecords", trail.region(), &request_id)
                .from_caller(Some(caller.address.ip().to_string()), user_agent)
                .identity(identity)
                .parameters(json!({
                    "sourceArn": header_text(&headers, "x-amz-firehose-source-arn"),
                    "commonAttributes": facts.attributes,
                    "recordCount": facts.records,
                    "bytes": facts.bytes,
                    "repeated": facts.repeated,
                }));
            match &outcome {
                Ok(()) => event,
                Err((status, message)) => event.error(status.canonical_reason().unwrap_or("Error"), message),
            }
        });
    }
    match outcome {
        Ok(()) => answer(StatusCode::OK, &request_id, None),
        Err((status, message)) => {
            tracing::debug!(request_id = %request_id, status = status.as_u16(), error = %message, "HTTP endpoint delivery refused");
            answer(status, &request_id, Some(&message))
        }
    }
}

/// Takes one delivery's records, or says why not (status and message).
async fn take(
    receiver: &Arc<Receiver>,
    request_id: &str,
    headers: &HeaderMap,
    body: Body,
    facts: &mut Facts,
) -> Result<(), Refusal> {
    let started = Instant::now();
    let endpoint = &receiver.endpoint;
    let bad = |message: String| Err((StatusCode::BAD_REQUEST, message));
    if endpoint.secrets.required() {
        let given = header_text(headers, "x-amz-firehose-access-key");
        match given.and_then(|key| endpoint.secrets.holder(key)) {
            Some(holder) => facts.key = Some(holder.to_string()),
            None => {
                return Err((
                    StatusCode::UNAUTHORIZED,
                    "a valid X-Amz-Firehose-Access-Key header is required (the stream's access key)".into(),
                ));
            }
        }
    }
    match header_text(headers, "x-amz-firehose-protocol-version") {
        Some(PROTOCOL_VERSION) => {}
        Some(other) => return bad(format!("protocol version `{other}` is not supported; this endpoint speaks 1.0")),
        None => return bad("no X-Amz-Firehose-Protocol-Version header: not a Firehose HTTP endpoint request".into()),
    }
    if request_id.is_empty() {
        return bad("no X-Amz-Firehose-Request-Id header".into());
    }
    if request_id.len() > MAX_REQUEST_ID_BYTES {
        return bad(format!(
            "X-Amz-Firehose-Request-Id is longer than {MAX_REQUEST_ID_BYTES} bytes (Firehose's is a GUID)"
        ));
    }
    if let Some(text) = header_text(headers, "x-amz-firehose-common-attributes") {
        match serde_json::from_str::<CommonAttributes>(text) {
            Ok(attributes) => facts.attributes = Some(attributes.common_attributes),
            Err(e) => {
                return bad(format!(
                    "X-Amz-Firehose-Common-Attributes is not {{\"commonAttributes\":{{\"name\":\"value\",…}}}}: {e}"
                ));
            }
        }
    }
    let body = endpoint.read(headers, body).await?;
    let batch = records(body.bytes(), request_id).map_err(|message| (StatusCode::BAD_REQUEST, message))?;
    (facts.records, facts.bytes) = (Some(batch.len()), Some(batch.byte_len()));
    let seen = receiver.recent.lock().map(|mut recent| recent.begin(request_id)).unwrap_or(Seen::New);
    match seen {
        Seen::Taken => {
            facts.repeated = true;
            return Ok(());
        }
        Seen::InProgress => {
            return Err((StatusCode::SERVICE_UNAVAILABLE, "a request with this id is being taken; retry later".into()));
        }
        Seen::New => {}
    }
    // Taken in a task of its own: a handler dropped with its connection (a sender that gave up)
    // still ends what it began, so the id is remembered as taken, or forgotten, and never stays
    // "being taken" (which would refuse every retry of it).
    let task = {
        let receiver = Arc::clone(receiver);
        let id = request_id.to_string();
        tokio::spawn(async move {
            let taken = enqueue(&receiver.endpoint, batch, started).await;
            if let Ok(mut recent) = receiver.recent.lock() {
                recent.end(&id, taken.is_ok());
            }
            taken
        })
    };
    task.await
        .unwrap_or_else(|e| Err((StatusCode::INTERNAL_SERVER_ERROR, format!("the request could not be handled: {e}"))))
}

#[cfg(test)]
mod tests {
    use base64::Engine as _;

    use super::*;

    /// A request body as Firehose sends it.
    fn request_body(id: &str, records: &[&[u8]]) -> Vec<u8> {
        let records: Vec<_> =
            records.iter().map(|r| json!({"data": base64::engine::general_purpose::STANDARD.encode(r)})).collect();
        json!({"requestId": id, "timestamp": 1_594_265_943_615u64, "records": records}).to_string().into_bytes()
    }

    #[test]
    fn takes_the_records_of_a_request_and_refuses_what_the_protocol_does_not_allow() {
        let batch = records(&request_body("r1", &[b"a", b"", b"{\"b\":1}"]), "r1").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(batch.iter().collect::<Vec<_>>(), vec![&b"a"[..], b"", b"{\"b\":1}"]);
        // JSON may escape the `/` of base64.
        let escaped = br#"{"requestId":"r","timestamp":1,"records":[{"data":"Lz8\/"}]}"#;
        assert_eq!(
            records(escaped, "r").map(|b| b.iter().map(<[u8]>::to_vec).collect::<Vec<_>>()),
            Ok(vec![b"/??".to_vec()])
        );
        let refused = |body: &[u8], id: &str| records(body, id).err().unwrap_or_default();
        assert!(refused(&request_body("r1", &[b"a"]), "r2").contains("is not the X-Amz-Firehose-Request-Id"));
        assert!(refused(br#"{"timestamp":1,"records":[]}"#, "r").contains("no `requestId`"));
        assert!(refused(br#"{"requestId":"r","records":[]}"#, "r").contains("no `timestamp`"));
        assert!(refused(br#"{"requestId":"r","timestamp":1}"#, "r").contains("no `records`"));
        assert!(
            refused(br#"{"requestId":"r","timestamp":1,"records":[{}]}"#, "r").contains("records[0] has no `data`")
        );
        assert!(
            refused(br#"{"requestId":"r","timestamp":1,"records":[{"data":"@@"}]}"#, "r")
                .contains("records[0].data is not valid base64")
        );
        assert!(refused(b"[1,2]", "r").contains("not a Firehose HTTP endpoint request"));
        let big = vec![b'x'; MAX_RECORD_BYTES + 1];
        assert!(refused(&request_body("r", &[b"ok", &big]), "r").contains("records[1] holds 1024001 bytes"));
        let many: Vec<&[u8]> = vec![b"x"; MAX_REQUEST_RECORDS + 1];
        assert!(refused(&request_body("r", &many), "r").contains("at most 10000"));
        let exactly: Vec<&[u8]> = vec![b"x"; MAX_REQUEST_RECORDS];
        assert_eq!(records(&request_body("r", &exactly), "r").map(|b| b.len()), Ok(MAX_REQUEST_RECORDS));
    }

    #[test]
    fn a_request_taken_is_recognised_until_it_is_among_the_oldest_forgotten() {
        let mut recent = RecentRequests::new(2, None);
        assert_eq!(recent.begin("a"), Seen::New);
        assert_eq!(recent.begin("a"), Seen::InProgress);
        recent.end("a", true);
        assert_eq!(recent.begin("a"), Seen::Taken);
        // A refused request is forgotten: its retry is taken.
        assert_eq!(recent.begin("b"), Seen::New);
        recent.end("b", false);
        assert_eq!(recent.begin("b"), Seen::New);
        recent.end("b", true);
        assert_eq!(recent.begin("c"), Seen::New);
        recent.end("c", true);
        // Three taken, two remembered: the oldest is forgotten.
        assert_eq!(recent.begin("a"), Seen::New);
        assert_eq!((recent.begin("b"), recent.begin("c")), (Seen::Taken, Seen::Taken));
        let mut none = RecentRequests::new(0, None);
        assert_eq!(none.begin("a"), Seen::New);
        none.end("a", true);
        assert_eq!(none.begin("a"), Seen::New);
    }

    #[test]
    fn taken_ids_are_kept_in_a_file_read_at_the_next_start_and_compacted() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let file = dir.path().join("edge.request-ids");
        let mut recent = RecentRequests::new(3, Some(file.clone()));
        for id in ["a", "b", "c", "d", "e", "f"] {
            assert_eq!(recent.begin(id), Seen::New);
            recent.end(id, true);
        }
        // A refused request leaves no trace.
        assert_eq!(recent.begin("refused"), Seen::New);
        recent.end("refused", false);
        assert_eq!(std::fs::read_to_string(&file).unwrap_or_default(), "a\nb\nc\nd\ne\nf\n");
        // The seventh line would pass twice the capacity: rewritten with the three remembered.
        assert_eq!(recent.begin("g"), Seen::New);
        recent.end("g", true);
        assert_eq!(std::fs::read_to_string(&file).unwrap_or_default(), "e\nf\ng\n");
        drop(recent);
        // The next start knows them, and only them.
        let mut restarted = RecentRequests::new(3, Some(file.clone()));
        assert_eq!(
            (restarted.begin("e"), restarted.begin("g"), restarted.begin("d"), restarted.begin("refused")),
            (Seen::Taken, Seen::Taken, Seen::New, Seen::New)
        );
        // A file that cannot be written (a folder stands there): remembered in memory only.
        let blocked = dir.path().join("blocked");
        std::fs::create_dir(&blocked).unwrap_or_else(|e| panic!("{e}"));
        let mut memory_only = RecentRequests::new(3, Some(blocked));
        assert_eq!(memory_only.begin("x"), Seen::New);
        memory_only.end("x", true);
        assert_eq!(memory_only.begin("x"), Seen::Taken);
    }

    /// The source through the real runtime, fed as Firehose feeds an HTTP endpoint (every other
    /// request gzip-compressed, each sent twice under its id as a retry after a lost answer would
    /// be): every record exactly once at 1, 2 and 4 workers, all delivered when the stop comes right
    /// after the last acceptance, and a restarted source does not replay what its log delivered.
    #[test]
    fn passes_the_source_conformance_kit() {
        use sluice_engine::testkit::source::{Check, SourceCase, conformance};
        use std::io::Write as _;

        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .unwrap_or_else(|e| panic!("{e}"))
            .port();
        let expected: Vec<Vec<u8>> = (0..5_000).map(|i| format!(r#"{{"delivered":{i}}}"#).into_bytes()).collect();
        let records = expected.clone();
        let produce = move || -> Result<(), String> {
            let client = reqwest::blocking::Client::new();
            for (n, chunk) in records.chunks(700).enumerate() {
                let id = format!("request-{n}");
                let chunk: Vec<&[u8]> = chunk.iter().map(Vec::as_slice).collect();
                let mut body = request_body(&id, &chunk);
                let gzip = n % 2 == 1;
                if gzip {
                    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
                    encoder.write_all(&body).map_err(|e| e.to_string())?;
                    body = encoder.finish().map_err(|e| e.to_string())?;
                }
                for _attempt in 0..2 {
                    let mut request = client
                        .post(format!("http://127.0.0.1:{port}/firehose"))
                        .header("X-Amz-Firehose-Protocol-Version", "1.0")
                        .header("X-Amz-Firehose-Request-Id", id.as_str())
                        .header("X-Amz-Firehose-Access-Key", "the-key")
                        .header("Content-Type", "application/json")
                        .body(body.clone());
                    if gzip {
                        request = request.header("Content-Encoding", "gzip");
                    }
                    let response = request.send().map_err(|e| e.to_string())?;
                    let status = response.status();
                    let text = response.text().map_err(|e| e.to_string())?;
                    let answer: serde_json::Value = serde_json::from_str(&text).map_err(|e| format!("{e}: {text}"))?;
                    if status != reqwest::StatusCode::OK || answer["requestId"] != id.as_str() {
                        return Err(format!("refused: {status} {answer}"));
                    }
                }
            }
            Ok(())
        };
        let table = format!("type = \"http_endpoint\"\nlisten = \"127.0.0.1:{port}\"\naccess_key = \"the-key\"\n");
        let case = SourceCase::stream(table, expected, Box::new(produce), dir.path());
        let report = conformance(crate::registry(), &case).unwrap_or_else(|e| panic!("{e}"));
        assert!(report.passed.contains(&Check::Resume) && report.skipped.is_empty(), "{report:?}");
    }
}

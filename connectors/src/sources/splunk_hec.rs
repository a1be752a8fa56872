//! `type = "splunk_hec"`: Splunk's HTTP Event Collector, served: what sends to Splunk HEC (a
//! Firehose stream's Splunk destination, the OpenTelemetry Collector's `splunk_hec` exporter,
//! Vector's and Fluent Bit's Splunk outputs, Docker's `splunk` logging driver, the SaaS products
//! that stream audit logs "to Splunk") sends to sluice instead, unchanged but for the URL.
//!
//! ```toml
//! [sources.hec]
//! type = "splunk_hec"
//! listen = "127.0.0.1:8088"              # Splunk's HEC port
//! token = "${HEC_TOKEN}"                 # required: `Authorization: Splunk <token>`
//! # or several, each named (the name, never the token, is what the audit log shows):
//! # tokens = [{ name = "okta", token = "${OKTA_HEC_TOKEN}" }, { name = "otel", token = "${OTEL_HEC_TOKEN}" }]
//! max_body_mb = 16                       # larger bodies get 413
//! max_inflight_mb = 256                  # past this, requests get 503 "Server is busy" (code 9)
//! tls = { cert = "...", key = "..." }    # optional, as for the http source
//! raw_format = "events"                  # optional: raw lines as event objects with the query's metadata
//! ```
//!
//! The endpoints and answers are HEC's as Splunk documents them ("HTTP Event Collector REST API
//! endpoints", "Troubleshoot HTTP Event Collector"): `POST /services/collector/event` (also
//! `/services/collector` and `…/event/1.0`) takes JSON event objects one after another (HEC's
//! batch format); each object is one record, its text byte for byte (`time`, `host`, `source`,
//! `sourcetype`, `index`, `fields` and `event` as the client wrote them: a `jq` transform's
//! `.event` takes the event alone). `POST /services/collector/raw` (and `…/raw/1.0`) takes text,
//! each line a record (as the http source's lines: `\r\n` ends a line too, empty lines skipped);
//! with `raw_format = "events"` each line becomes an event object instead, `event` the line and the
//! request's query metadata (`time`, `host`, `source`, `sourcetype`, `index`) with it.
//! `GET` or `POST /services/collector/health` answers `{"text":"HEC is healthy","code":17}`.
//! Success is `200 {"text":"Success","code":0}`, with an `ackId` when the request names a channel
//! (`X-Splunk-Request-Channel` or `?channel=`, a GUID: 400 code 11 otherwise), and
//! `POST /services/collector/ack` with `{"acks":[ids]}` answers each id issued on that channel
//! `true`: indexer acknowledgement, which Firehose's Splunk destination requires. A request is
//! answered only once its records are queued and as durable as the pipeline asks (the write-ahead
//! log synced), so an id is true from the moment it is given; as Splunk does, an id is answered
//! `true` once (asked again, it is `false`). Refusals carry HEC's codes: 401 code 2 (no `Authorization`), 401 code 3 (not
//! `Splunk <token>` nor Basic auth with the token as password), 403 code 4 (another token), 400
//! code 16 (a `?token=`), 400 code 5 (no data), 400 code 6 (not JSON, not an object; with
//! `invalid-event-number`, counted from 0), 400 code 12 (no `event`), 400 code 13 (`event` an
//! empty string), 503 code 9 (busy or stopping; `Retry-After`). A request is taken whole or not at
//! all. An event over a record's 1,000 KiB (Firehose's limit; Splunk has none per event) is taken
//! with the others and goes, whole, to the error output of every sink it would have reached
//! (`processing-failed`, `Source.RecordTooLarge`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri, header};
use axum::response::Response;
use serde::Deserialize;
use serde_json::json;
use serde_json::value::RawValue;
use sluice_engine::config::{ConnectorConfig, Diagnostic, Problems};
use sluice_engine::contract::Source;
use sluice_engine::record::{RecordBatch, UTF8_BOM, now_ms};

use crate::api::Caller;
use crate::api::post::{
    KeyPlaces, ListenerKeys, NamedToken, PostEndpoint, PostSource, Protocol, RequestFacts, SecretKeys, body_lines,
    enqueue, json_answer,
};
use crate::api::{ListenerLimits, TlsFiles};

/// `eventSource` of the audit trail's records of requests to this source.
const HEC_EVENT_SOURCE: &str = "splunk-hec.sluice";
/// Channels whose acknowledgement ids are remembered; past it the oldest is forgotten (its ids
/// then answer `false`, and its client sends the request again: a duplicate, never a loss).
const MAX_CHANNELS: usize = 100_000;
/// Runs of a channel's ids given and not yet answered that are remembered (the same: the oldest
/// forgotten past it).
const MAX_PENDING_RANGES: usize = 10_000;

/// The source's own keys.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct HecConfig {
    /// Address to listen on (default `127.0.0.1:8088`).
    listen: Option<String>,
    /// The token requests carry.
    token: Option<String>,
    /// Several tokens, each with a name.
    tokens: Option<Vec<NamedToken>>,
    /// Largest request body in MB, after decompression (default 16).
    max_body_mb: Option<u64>,
    /// Bytes accepted but not yet taken by the workers before requests get 503 (default 256).
    max_inflight_mb: Option<u64>,
    /// HTTPS with these PEM files.
    tls: Option<TlsFiles>,
    /// What a raw-endpoint line becomes (default `lines`).
    raw_format: Option<RawFormat>,
}

/// What each line of a raw-endpoint body becomes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum RawFormat {
    /// The line as it is (the request's query metadata is not kept).
    #[default]
    Lines,
    /// An event object as the event endpoint takes one: `event` the line, with the `time`,
    /// `host`, `source`, `sourcetype` and `index` the request's query names.
    Events,
}

/// How the tokens are called in messages.
const TOKEN_KEYS: SecretKeys = SecretKeys {
    single: "token",
    named: "tokens",
    what: "HEC token",
    example: "{ name = \"okta\", token = \"${OKTA_HEC_TOKEN}\" }",
};

/// Builds the source from `[sources.<name>]`.
pub fn configure(mut config: ConnectorConfig) -> Result<Arc<dyn Source>, Problems> {
    let places = KeyPlaces::of(&config, TOKEN_KEYS);
    let table_span = config.table.span.clone();
    // (Written but mistyped is the deserializer's to say.)
    let tokenless = ["token", "tokens"].iter().all(|key| config.table.value_span(key).is_none());
    let mut problems = Problems::default();
    let limits = ListenerLimits::take_from(&mut config.table, 1, &mut problems);
    let Some(c) = config.table.deserialize::<HecConfig>(&mut problems) else { return Err(problems) };
    if tokenless {
        problems.push(
            Diagnostic::new(table_span, "a splunk_hec source needs `token` (or `tokens`)")
                .with_hint("HEC clients always send one: token = \"${HEC_TOKEN}\", the value they are given"),
        );
    }
    let raw_format = c.raw_format.unwrap_or_default();
    let keys = ListenerKeys {
        listen: c.listen,
        grpc_listen: None,
        max_body_mb: c.max_body_mb,
        max_inflight_mb: c.max_inflight_mb,
        tls: c.tls,
        secret: c.token,
        named_secrets: c.tokens.map(NamedToken::pairs),
    };
    let protocol = Protocol {
        what: "splunk_hec: HTTP Event Collector",
        default_listen: "127.0.0.1:8088",
        default_body_mb: 16,
        grpc_router: None,
        router: Box::new(move |endpoint| {
            let hec = Arc::new(Hec { endpoint, channels: Mutex::new(Channels::default()), raw_format });
            let post =
                |kind: Kind| move |state, caller, uri, headers, body| receive(kind, state, caller, uri, headers, body);
            axum::Router::new()
                .route("/services/collector", axum::routing::post(post(Kind::Event)))
                .route("/services/collector/event", axum::routing::post(post(Kind::Event)))
                .route("/services/collector/event/1.0", axum::routing::post(post(Kind::Event)))
                .route("/services/collector/raw", axum::routing::post(post(Kind::Raw)))
                .route("/services/collector/raw/1.0", axum::routing::post(post(Kind::Raw)))
                .route("/services/collector/ack", axum::routing::post(post(Kind::Ack)))
                .route("/services/collector/ack/1.0", axum::routing::post(post(Kind::Ack)))
                .route("/services/collector/health", axum::routing::get(health).post(health))
                .route("/services/collector/health/1.0", axum::routing::get(health).post(health))
                .fallback(|| async {
                    hec_answer(StatusCode::NOT_FOUND, "The requested URL was not found on this server.", 404)
                })
                .with_state(hec)
        }),
    };
    PostSource::configure(places, keys, limits, protocol, problems)
}

/// What a request asks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// JSON event objects.
    Event,
    /// Lines of text.
    Raw,
    /// The state of acknowledgement ids.
    Ack,
}

/// The source's state behind its routes.
#[derive(Debug)]
struct Hec {
    endpoint: Arc<PostEndpoint>,
    channels: Mutex<Channels>,
    raw_format: RawFormat,
}

/// The acknowledgement ids given per channel and not yet answered `true` (HEC answers an id `true`
/// once: asked again, it is `false`).
#[derive(Debug, Default)]
struct Channels {
    given: HashMap<String, Acks>,
    /// The channels in the order they were first seen (the oldest is forgotten first).
    order: std::collections::VecDeque<String>,
}

/// One channel's ids: the next to give, and those given and not yet answered, as ranges in order
/// (ids are given in order and mostly asked for in order, so a few ranges hold them).
#[derive(Debug, Default)]
struct Acks {
    next: u64,
    pending: std::collections::VecDeque<std::ops::Range<u64>>,
}

impl Channels {
    /// The next id of `channel`, counted as given.
    fn next_id(&mut self, channel: &str) -> u64 {
        if !self.given.contains_key(channel) {
            if self.order.len() >= MAX_CHANNELS
                && let Some(oldest) = self.order.pop_front()
            {
                self.given.remove(&oldest);
            }
            self.order.push_back(channel.to_string());
        }
        let acks = self.given.entry(channel.to_string()).or_default();
        let id = acks.next;
        acks.next += 1;
        match acks.pending.back_mut() {
            Some(last) if last.end == id => last.end += 1,
            _ => acks.pending.push_back(id..id + 1),
        }
        // (A client that asks out of order leaves gaps; past this many the oldest ids are
        // forgotten: asked, they are `false` and their requests sent again, never lost.)
        if acks.pending.len() > MAX_PENDING_RANGES {
            acks.pending.pop_front();
        }
        id
    }

    /// Whether `id` was given on `channel` and not answered `true` before; it is not pending after.
    fn answer(&mut self, channel: &str, id: u64) -> bool {
        let Some(acks) = self.given.get_mut(channel) else { return false };
        let at = acks.pending.partition_point(|range| range.end <= id);
        let Some(range) = acks.pending.get_mut(at).filter(|range| range.contains(&id)) else { return false };
        match (range.start == id, range.end == id + 1) {
            (true, true) => {
                acks.pending.remove(at);
            }
            (true, false) => range.start += 1,
            (false, true) => range.end -= 1,
            (false, false) => {
                let after = id + 1..range.end;
                range.end = id;
                acks.pending.insert(at + 1, after);
            }
        }
        true
    }
}

/// A HEC answer: `{"text": …, "code": …}` (503s with `Retry-After`).
fn hec_answer(status: StatusCode, text: &str, code: u16) -> Response {
    json_answer(status, &json!({"text": text, "code": code}))
}

/// A refused request: its status, HEC's text and code, and for a bad event its number.
#[derive(Debug)]
struct HecError {
    status: StatusCode,
    text: String,
    code: u16,
    invalid_event: Option<usize>,
}

impl HecError {
    fn new(status: StatusCode, text: impl Into<String>, code: u16) -> Self {
        HecError { status, text: text.into(), code, invalid_event: None }
    }

    /// HEC's code 6 (400): the data is not what the endpoint takes.
    fn invalid(text: impl Into<String>, event: Option<usize>) -> Self {
        HecError { invalid_event: event, ..HecError::new(StatusCode::BAD_REQUEST, text, 6) }
    }

    fn answer(&self) -> Response {
        let mut body = json!({"text": self.text, "code": self.code});
        if let Some(n) = self.invalid_event {
            body["invalid-event-number"] = n.into();
        }
        json_answer(self.status, &body)
    }
}

/// A refusal of the shared POST machinery (body limits, decoding, queueing) as HEC says it: busy
/// for 503s, an internal error for 5xx, invalid data for the rest.
fn from_refusal((status, message): (StatusCode, String)) -> HecError {
    let code = match status {
        StatusCode::SERVICE_UNAVAILABLE => 9,
        s if s.is_server_error() => 8,
        _ => 6,
    };
    HecError::new(status, message, code)
}

/// The token a request's `Authorization` carries (`Splunk <token>`, or Basic with the token as
/// password, as HEC takes both), or HEC's refusal.
fn token_of(headers: &HeaderMap, uri: &Uri) -> Result<String, HecError> {
    if uri.query().is_some_and(|q| q.split('&').any(|pair| pair.starts_with("token="))) {
        return Err(HecError::new(StatusCode::BAD_REQUEST, "Query string authorization is not enabled", 16));
    }
    let Some(given) = headers.get(header::AUTHORIZATION) else {
        return Err(HecError::new(StatusCode::UNAUTHORIZED, "Token is required", 2));
    };
    let invalid = || HecError::new(StatusCode::UNAUTHORIZED, "Invalid authorization", 3);
    let given = given.to_str().map_err(|_| invalid())?;
    let (scheme, value) = given.split_once(' ').ok_or_else(invalid)?;
    if scheme.eq_ignore_ascii_case("splunk") {
        return Ok(value.trim().to_string());
    }
    if scheme.eq_ignore_ascii_case("basic") {
        use base64::Engine as _;
        let decoded = base64::engine::general_purpose::STANDARD.decode(value.trim()).map_err(|_| invalid())?;
        let decoded = String::from_utf8(decoded).map_err(|_| invalid())?;
        let (_, password) = decoded.split_once(':').ok_or_else(invalid)?;
        return Ok(password.to_string());
    }
    Err(invalid())
}

/// The request's channel (`X-Splunk-Request-Channel`, else `?channel=`), if it names one; one
/// that is no GUID is HEC's code 11.
fn channel_of(headers: &HeaderMap, uri: &Uri) -> Result<Option<String>, HecError> {
    let from_header = headers.get("x-splunk-request-channel").and_then(|v| v.to_str().ok()).map(str::to_string);
    let from_query = || {
        uri.query()?
            .split('&')
            .find_map(|pair| pair.strip_prefix("channel="))
            .map(|c| percent_encoding::percent_decode_str(c).decode_utf8_lossy().into_owned())
    };
    match from_header.or_else(from_query) {
        None => Ok(None),
        Some(channel) if uuid::Uuid::parse_str(&channel).is_ok() => Ok(Some(channel)),
        Some(_) => Err(HecError::new(StatusCode::BAD_REQUEST, "Invalid data channel", 11)),
    }
}

/// The records of an event-endpoint body: each JSON object, as written; or HEC's refusal, with
/// the number of the event at fault.
fn events(body: &[u8]) -> Result<RecordBatch, HecError> {
    let body = body.strip_prefix(UTF8_BOM).unwrap_or(body);
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(HecError::new(StatusCode::BAD_REQUEST, "No data", 5));
    }
    /// What an event object says of its `event` (its other keys skipped, not parsed).
    #[derive(Deserialize)]
    struct Envelope<'a> {
        #[serde(borrow)]
        event: Option<&'a RawValue>,
    }
    let mut batch = RecordBatch::with_capacity(now_ms(), body.len());
    // One parse per object: its text is the body between the stream's offsets before and after it.
    let mut objects = serde_json::Deserializer::from_slice(body).into_iter::<Envelope<'_>>();
    let mut start = 0;
    let mut n = 0;
    while let Some(envelope) = objects.next() {
        let end = objects.byte_offset();
        let text = body.get(start..end).unwrap_or_default().trim_ascii_start();
        start = end;
        // (A struct would take an array's elements too: only an object is an event.)
        let not_an_object = || {
            HecError::invalid(
                "Invalid data format: an event is a JSON object, one after another (not an array)",
                Some(n),
            )
        };
        let envelope = match envelope {
            Ok(_) if text.first() != Some(&b'{') => return Err(not_an_object()),
            Ok(envelope) => envelope,
            Err(e) if e.is_data() => return Err(not_an_object()),
            Err(e) => return Err(HecError::invalid(format!("Invalid data format: {e}"), Some(n))),
        };
        match envelope.event.map(RawValue::get) {
            None => {
                return Err(HecError {
                    invalid_event: Some(n),
                    ..HecError::new(StatusCode::BAD_REQUEST, "Event field is required", 12)
                });
            }
            Some("\"\"") => {
                return Err(HecError {
                    invalid_event: Some(n),
                    ..HecError::new(StatusCode::BAD_REQUEST, "Event field cannot be blank", 13)
                });
            }
            Some(_) => {}
        }
        batch.push(text);
        n += 1;
    }
    Ok(batch)
}

/// The records of a raw-endpoint body: each line (as the http source's).
fn lines(body: &[u8]) -> Result<RecordBatch, HecError> {
    let batch = body_lines(body);
    if batch.is_empty() {
        return Err(HecError::new(StatusCode::BAD_REQUEST, "No data", 5));
    }
    Ok(batch)
}

/// The metadata a raw-endpoint request's query names (`?host=…&sourcetype=…`), in the order an
/// event object writes it, each left out when not named; the last of a name given twice counts.
#[derive(Debug, Default, serde::Serialize)]
struct RawMetadata {
    #[serde(skip_serializing_if = "Option::is_none")]
    time: Option<serde_json::Number>,
    #[serde(skip_serializing_if = "Option::is_none")]
    host: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    source: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    sourcetype: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    index: Option<String>,
}

impl RawMetadata {
    /// The metadata of `query` (percent-decoded), or HEC's refusal of a `time` that is no number
    /// of seconds.
    fn of(query: Option<&str>) -> Result<Self, HecError> {
        let mut metadata = RawMetadata::default();
        for (name, value) in url::form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
            let value = value.into_owned();
            match name.as_ref() {
                "time" => {
                    let seconds = serde_json::from_str::<serde_json::Number>(&value)
                        .ok()
                        .filter(|n| n.as_f64().is_some_and(|s| s >= 0.0));
                    let Some(seconds) = seconds else {
                        return Err(HecError::invalid(
                            format!("Invalid data format: time={value} is not a number of seconds since the epoch"),
                            None,
                        ));
                    };
                    metadata.time = Some(seconds);
                }
                "host" => metadata.host = Some(value),
                "source" => metadata.source = Some(value),
                "sourcetype" => metadata.sourcetype = Some(value),
                "index" => metadata.index = Some(value),
                _ => {}
            }
        }
        Ok(metadata)
    }
}

/// The records of a raw-endpoint body as events (`raw_format = "events"`): each line an event
/// object, `{"time", "host", "source", "sourcetype", "index"}` of the query (those named) and
/// `"event"` the line; or HEC's refusal (a line that is not UTF-8 text, with its number).
fn raw_events(body: &[u8], query: Option<&str>) -> Result<RecordBatch, HecError> {
    #[derive(serde::Serialize)]
    struct RawEvent<'a> {
        #[serde(flatten)]
        metadata: &'a RawMetadata,
        event: &'a str,
    }
    let metadata = RawMetadata::of(query)?;
    let lines = lines(body)?;
    let mut batch = RecordBatch::with_capacity(lines.arrival_ms, lines.byte_len() + lines.len() * 64);
    let mut text = Vec::new();
    for (n, line) in lines.iter().enumerate() {
        let event = std::str::from_utf8(line).map_err(|e| {
            HecError::invalid(format!("Invalid data format: line {} is not UTF-8 text: {e}", n + 1), Some(n))
        })?;
        text.clear();
        serde_json::to_writer(&mut text, &RawEvent { metadata: &metadata, event })
            .map_err(|e| HecError::invalid(format!("Invalid data format: line {}: {e}", n + 1), Some(n)))?;
        batch.push(&text);
    }
    Ok(batch)
}

async fn health() -> Response {
    hec_answer(StatusCode::OK, "HEC is healthy", 17)
}

async fn receive(
    kind: Kind,
    State(hec): State<Arc<Hec>>,
    caller: Caller,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let mut facts = RequestFacts::default();
    let outcome = take(kind, &hec, &uri, &headers, body, &mut facts).await;
    let name = match kind {
        Kind::Event => "SendEvents",
        Kind::Raw => "SendRaw",
        Kind::Ack => "QueryAcks",
    };
    let code = outcome.as_ref().err().map(|e| format!("HEC.{}", e.code));
    let refused = outcome.as_ref().err().zip(code.as_deref()).map(|(e, code)| (code, e.text.as_str()));
    hec.endpoint.audit_request((HEC_EVENT_SOURCE, name), &caller, (&uri, &headers), &facts, refused);
    match outcome {
        Ok(answer) => json_answer(StatusCode::OK, &answer),
        Err(e) => e.answer(),
    }
}

/// Takes one request: HEC's answer, or its refusal.
async fn take(
    kind: Kind,
    hec: &Hec,
    uri: &Uri,
    headers: &HeaderMap,
    body: Body,
    facts: &mut RequestFacts,
) -> Result<serde_json::Value, HecError> {
    let started = Instant::now();
    let token = token_of(headers, uri)?;
    match hec.endpoint.secrets.holder(&token) {
        Some(holder) => facts.token = Some(holder.to_string()),
        None => return Err(HecError::new(StatusCode::FORBIDDEN, "Invalid token", 4)),
    }
    let channel = channel_of(headers, uri)?;
    let body = hec.endpoint.read(headers, body).await.map_err(from_refusal)?;
    if kind == Kind::Ack {
        let Some(channel) = channel else {
            return Err(HecError::new(StatusCode::BAD_REQUEST, "Data channel is missing", 10));
        };
        #[derive(Deserialize)]
        struct Asked {
            acks: Vec<u64>,
        }
        let asked: Asked = serde_json::from_slice(body.bytes())
            .map_err(|e| HecError::invalid(format!("Invalid data format: {{\"acks\": [ids]}} expected: {e}"), None))?;
        let mut channels = hec.channels.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let acks: serde_json::Map<String, serde_json::Value> =
            asked.acks.iter().map(|id| (id.to_string(), channels.answer(&channel, *id).into())).collect();
        return Ok(json!({ "acks": acks }));
    }
    let batch = match (kind, hec.raw_format) {
        (Kind::Raw, RawFormat::Lines) => lines(body.bytes())?,
        (Kind::Raw, RawFormat::Events) => raw_events(body.bytes(), uri.query())?,
        _ => events(body.bytes())?,
    };
    let count = batch.len();
    (facts.records, facts.bytes) = (Some(count), Some(batch.byte_len()));
    enqueue(&hec.endpoint, batch, started).await.map_err(from_refusal)?;
    Ok(match channel {
        Some(channel) => {
            let id = hec.channels.lock().unwrap_or_else(std::sync::PoisonError::into_inner).next_id(&channel);
            json!({"text": "Success", "code": 0, "ackId": id})
        }
        None => json!({"text": "Success", "code": 0}),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An id given is answered `true` once, in any order; one asked again, or never given, or of
    /// another channel, is `false`; what is left pending stays a few ranges.
    #[test]
    fn an_ack_id_is_true_once() {
        let mut channels = Channels::default();
        let ids: Vec<u64> = (0..10).map(|_| channels.next_id("c")).collect();
        assert_eq!(ids, (0..10).collect::<Vec<u64>>());
        assert!(channels.answer("c", 5) && !channels.answer("c", 5));
        assert!(channels.answer("c", 0) && channels.answer("c", 9) && channels.answer("c", 3));
        assert!(!channels.answer("c", 10) && !channels.answer("other", 1));
        assert_eq!(channels.given["c"].pending, [1..3, 4..5, 6..9]);
        assert_eq!(channels.next_id("c"), 10);
        assert_eq!(channels.given["c"].pending, [1..3, 4..5, 6..9, 10..11]);
        assert!((1..9).filter(|id| ![3, 5].contains(id)).all(|id| channels.answer("c", id)));
        assert_eq!(channels.given["c"].pending.iter().collect::<Vec<_>>(), [&(10..11)]);
    }

    fn texts(batch: &RecordBatch) -> Vec<String> {
        batch.iter().map(|r| String::from_utf8_lossy(r).into_owned()).collect()
    }

    /// HEC's batch format (Splunk's "Format events for HTTP Event Collector" examples): each
    /// object a record, byte for byte; every refusal with HEC's code and the event at fault.
    #[test]
    fn event_bodies_give_each_object_as_written_and_refuse_with_hecs_codes() {
        let body = "{\"time\": 1426279439, \"host\": \"localhost\", \"source\": \"random-data-generator\", \
                    \"sourcetype\": \"my_sample_data\", \"index\": \"main\", \"event\": \"Hello world!\"}\n\
                    {\"event\": {\"message\": \"Something happened\", \"severity\": \"INFO\"}, \"fields\": {\"cluster\": \"east\"}}{\"event\":0}";
        let batch = events(body.as_bytes()).unwrap();
        assert_eq!(
            texts(&batch),
            [
                "{\"time\": 1426279439, \"host\": \"localhost\", \"source\": \"random-data-generator\", \"sourcetype\": \"my_sample_data\", \"index\": \"main\", \"event\": \"Hello world!\"}",
                "{\"event\": {\"message\": \"Something happened\", \"severity\": \"INFO\"}, \"fields\": {\"cluster\": \"east\"}}",
                "{\"event\":0}",
            ]
        );
        let refused = |body: &str| events(body.as_bytes()).map(|_| ()).unwrap_err();
        let no_data = refused(" \n");
        assert_eq!((no_data.status, no_data.code), (StatusCode::BAD_REQUEST, 5));
        let missing = refused("{\"event\":\"a\"}{\"time\":1}");
        assert_eq!((missing.code, missing.invalid_event), (12, Some(1)));
        let blank = refused("{\"event\":\"\"}");
        assert_eq!((blank.code, blank.invalid_event), (13, Some(0)));
        let broken = refused("{\"event\":\"a\"}{\"event\":");
        assert_eq!((broken.code, broken.invalid_event), (6, Some(1)));
        let array = refused("[{\"event\":\"a\"}]");
        assert_eq!(array.code, 6);
        assert!(array.text.contains("not an array"), "{}", array.text);
        // An event over a record's size is an event like the others (the engine sends it to the
        // error output, `Source::max_record_bytes`), in the event and raw bodies alike.
        let big = format!("{{\"event\":\"{}\"}}", "x".repeat(1_100_000));
        assert_eq!(events(format!("{{\"event\":1}}{big}").as_bytes()).unwrap().len(), 2);
        assert_eq!(raw_events(format!("a\n{}\n", "y".repeat(1_100_000)).as_bytes(), None).unwrap().len(), 2);
    }

    /// With `raw_format = "events"`, each raw line becomes an event object carrying the query's
    /// metadata (percent-decoded, in Splunk's order, those not named left out); a `time` that is
    /// no number and a line that is not text are refused with HEC's code 6.
    #[test]
    fn raw_lines_become_events_with_the_querys_metadata() {
        let query = "channel=x&sourcetype=access_combined&host=web-1&source=%2Fvar%2Flog%2Fnginx%2Faccess.log\
                     &index=web&time=1764547200.5&other=ignored";
        let batch = raw_events(b"GET / 200\r\n\n{\"raw\":1}\n", Some(query)).unwrap();
        assert_eq!(
            texts(&batch),
            [
                r#"{"time":1764547200.5,"host":"web-1","source":"/var/log/nginx/access.log","sourcetype":"access_combined","index":"web","event":"GET / 200"}"#,
                r#"{"time":1764547200.5,"host":"web-1","source":"/var/log/nginx/access.log","sourcetype":"access_combined","index":"web","event":"{\"raw\":1}"}"#,
            ]
        );
        assert_eq!(texts(&raw_events(b"plain\n", None).unwrap()), [r#"{"event":"plain"}"#]);
        assert_eq!(texts(&raw_events(b"a", Some("host=h1&host=h2")).unwrap()), [r#"{"host":"h2","event":"a"}"#]);
        for time in ["time=yesterday", "time=-5", "time="] {
            let refused = raw_events(b"a", Some(time)).unwrap_err();
            assert_eq!((refused.status, refused.code), (StatusCode::BAD_REQUEST, 6), "{time}");
        }
        let refused = raw_events(b"ok\n\xff\xfe\n", None).unwrap_err();
        assert_eq!((refused.code, refused.invalid_event), (6, Some(1)));
        assert_eq!(raw_events(b"\n\n", None).unwrap_err().code, 5);
    }

    /// The source through the real runtime, fed by HEC event batches (concatenated objects, a
    /// channel, `Authorization: Splunk`): every event taken exactly once at 1, 2 and 4 workers,
    /// all delivered when the stop comes right after the last answer, and a restarted source does
    /// not replay what its log delivered.
    #[test]
    fn passes_the_source_conformance_kit() {
        use sluice_engine::testkit::source::{Check, SourceCase, conformance};

        let dir = tempfile::tempdir().unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let expected: Vec<Vec<u8>> = (0..5_000)
            .map(|i| format!(r#"{{"time":{},"event":{{"n":{i}}}}}"#, 1_764_547_200 + i).into_bytes())
            .collect();
        let produce = crate::api::post::posting_producer(
            format!("http://127.0.0.1:{port}/services/collector/event"),
            &[
                ("Authorization", "Splunk kit-token"),
                ("X-Splunk-Request-Channel", "5f0c8a9e-1b2d-4c3e-8f4a-6b7c8d9e0f1a"),
            ],
            expected.clone(),
            <[Vec<u8>]>::concat,
        );
        let table = format!("type = \"splunk_hec\"\nlisten = \"127.0.0.1:{port}\"\ntoken = \"kit-token\"\n");
        let case = SourceCase::stream(table, expected, produce, dir.path());
        let report = conformance(crate::registry(), &case).unwrap_or_else(|e| panic!("{e}"));
        assert!(report.passed.contains(&Check::Resume) && report.skipped.is_empty(), "{report:?}");
    }

    /// The shared machinery's refusals as HEC says them: busy or stopping (503) is code 9, which
    /// HEC clients retry; another server error is 8; a body too large, slow or undecodable is 6.
    #[test]
    fn shared_refusals_carry_hecs_codes() {
        let code = |status| from_refusal((status, "why".to_string())).code;
        assert_eq!(code(StatusCode::SERVICE_UNAVAILABLE), 9);
        assert_eq!(code(StatusCode::INTERNAL_SERVER_ERROR), 8);
        for status in [StatusCode::PAYLOAD_TOO_LARGE, StatusCode::REQUEST_TIMEOUT, StatusCode::UNSUPPORTED_MEDIA_TYPE] {
            assert_eq!(code(status), 6, "{status}");
        }
        let busy = from_refusal((StatusCode::SERVICE_UNAVAILABLE, "too much data in flight".into())).answer();
        assert_eq!(busy.headers().get(header::RETRY_AFTER).map(|v| v.as_bytes()), Some(&b"1"[..]));
    }

    #[test]
    fn raw_bodies_give_each_line() {
        assert_eq!(texts(&lines(b"a b\r\n\nc\n").unwrap()), ["a b", "c"]);
        assert_eq!(lines(b"\n\r\n").unwrap_err().code, 5);
    }

    /// `Splunk <token>` and Basic auth with the token as password; HEC's codes for the rest.
    #[test]
    fn the_token_is_taken_as_hec_takes_it() {
        let uri: Uri = "/services/collector/event".parse().unwrap();
        let with = |value: &str| {
            let mut headers = HeaderMap::new();
            headers.insert(header::AUTHORIZATION, value.parse().unwrap());
            token_of(&headers, &uri).map_err(|e| (e.status, e.code))
        };
        assert_eq!(with("Splunk 1234-abcd"), Ok("1234-abcd".to_string()));
        use base64::Engine as _;
        let basic = base64::engine::general_purpose::STANDARD.encode("x:1234-abcd");
        assert_eq!(with(&format!("Basic {basic}")), Ok("1234-abcd".to_string()));
        assert_eq!(with("Bearer 1234-abcd"), Err((StatusCode::UNAUTHORIZED, 3)));
        assert_eq!(with("Splunk1234"), Err((StatusCode::UNAUTHORIZED, 3)));
        assert_eq!(token_of(&HeaderMap::new(), &uri).map_err(|e| e.code), Err(2));
        let query: Uri = "/services/collector/event?token=1234-abcd".parse().unwrap();
        assert_eq!(token_of(&HeaderMap::new(), &query).map_err(|e| e.code), Err(16));
    }

    #[test]
    fn channels_count_their_ids_and_the_oldest_is_forgotten_first() {
        let mut channels = Channels::default();
        assert_eq!((channels.next_id("a"), channels.next_id("a"), channels.next_id("b")), (0, 1, 0));
        assert!(channels.answer("a", 1) && !channels.answer("a", 2) && !channels.answer("c", 0));
        for i in 0..MAX_CHANNELS {
            channels.next_id(&format!("c{i}"));
        }
        assert!(!channels.answer("a", 0) && channels.answer("c0", 0));
        assert_eq!(channels.given.len(), MAX_CHANNELS);
    }
}

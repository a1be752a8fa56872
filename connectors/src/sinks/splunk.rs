//! `type = "splunk"`: delivers to Splunk's HTTP Event Collector with indexer acknowledgement, as
//! Firehose's Splunk destination does (docs/firehose.md §15).
//!
//! ```toml
//! [sinks.siem]
//! type = "splunk"
//! inputs = ["cwl"]
//! url = "https://splunk.example.com:8088"   # HEC base URL (http:// allowed)
//! token = "${HEC_TOKEN}"
//! endpoint = "event"                        # event (default): {"time": <arrival s>, "event": <record>} per record | raw
//! ack_timeout_s = 180                       # 180-600: how long to wait for the indexer acknowledgement
//! buffer = { size_mb = 5, interval_s = 60 } # Firehose: 1-5 MB, 0-60 s (default 5 MB / 60 s)
//! retry = { duration_s = 3600 }
//! backup = "failed"                         # failed (FailedEventsOnly) | all (AllEvents)
//! backup_store = { url = "s3://bucket/splunk-backup" }
//! tls = { ca = "cacert.pem", verify_hostname = false } # optional (Splunk's default certificate): crate::tls
//! healthcheck = true                        # default: GET /services/collector/health at start (prepare)
//! ```
//!
//! A request is one buffer: to `/services/collector/event`, each record as `{"time":…,"event":…}`
//! (the record itself when it is a JSON object or array, else the record as a string; a record that
//! is not UTF-8 is refused before it is sent, `Splunk.InvalidDataFormat`), one per line; to
//! `/services/collector/raw`, the records' bytes concatenated with no delimiter (Firehose's
//! behaviour). Every request carries `Authorization: Splunk <token>` and `X-Splunk-Request-Channel`,
//! a channel per sink and worker (the worker's part travels in the request id, made on the worker
//! that sealed the request). Indexer acknowledgement is required: the answer's `ackId` is polled on
//! `/services/collector/ack` (from 100 ms, doubling to 2 s) until the indexer says `true`; only then
//! is the request delivered, so its epoch is held until Splunk has indexed it. No ack within
//! `ack_timeout_s` is `Splunk.AckTimeout`, retried (the same request) within the retry duration and
//! then backed up, although the events may be indexed (Firehose's behaviour: duplicates are
//! possible, data loss is not). HEC's error codes map to Firehose's: a missing, invalid or disabled
//! token (HEC codes 1-4) is `Splunk.InvalidToken` and acknowledgement disabled (14) is
//! `Splunk.DisabledAck`, both permanent; bad data (5, 6, 12, 13, 15) is `Splunk.InvalidDataFormat`,
//! permanent; a busy server (9, 503), an internal error (8, 5xx) and connection failures are
//! retried (`Splunk.ServerError`, `Splunk.ConnectionFailed`, `Splunk.RequestTimeout`). Error
//! documents carry Firehose's `EventId` (the request id and the event's position in it); the request
//! id is also sent as `X-Request-Id`, for proxies' and load balancers' logs. The time from a
//! request's answer to its acknowledgement is Firehose's `DeliveryToSplunk.DataAckLatency`
//! (`sluice_DeliveryToSplunk_DataAckLatency_seconds`).

use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use serde::Deserialize;
use sluice_engine::compression::Compression;
use sluice_engine::config::{BufferingHints, ConnectorConfig, Diagnostic, FixedBody, Problems};
use sluice_engine::contract::{BufferingRules, DeliveryError, DestinationKind, Payload, Sink};
use sluice_engine::format::{ObjectFormat, RecordCodec, TextFormat};
use sluice_engine::metrics::{Family, SinkMeter};

use crate::sinks::object_store::{BackupOwner, BackupStore};
use crate::tls::ClientTls;
use crate::transforms::json;

/// A request's answer to its acknowledgement.
const DATA_ACK_LATENCY: Family = Family {
    name: "DeliveryToSplunk_DataAckLatency",
    help: "Time from a request's answer to its indexer acknowledgement.",
};

/// What the sink type's destination takes (the registry's line): HEC requests of at most 5 MB
/// (Firehose's Splunk buffer range ends there), buffered by default 5 MB / 60 s, at most 60 s.
pub const BODY: FixedBody = FixedBody {
    describe: "Splunk HEC events or raw lines",
    max_bytes: Some(5 << 20),
    buffering: Some(BufferingRules {
        default: BufferingHints { size_bytes: 5 << 20, interval: Duration::from_secs(60) },
        max_interval: Duration::from_secs(60),
    }),
};
/// A HEC answer larger than this is an error.
const MAX_RESPONSE_BYTES: usize = 1 << 20;
/// How often an acknowledgement is asked for: from the first wait, doubling up to the last.
const ACK_POLL: (Duration, Duration) = (Duration::from_millis(100), Duration::from_secs(2));

thread_local! {
    /// This worker thread's part of the channel of every request it seals.
    static WORKER_CHANNEL: uuid::Uuid = uuid::Uuid::new_v4();
}

/// A request id made on the worker that seals the request: `<worker channel>.<request uuid>`.
fn request_id() -> String {
    WORKER_CHANNEL.with(|worker| format!("{worker}.{}", uuid::Uuid::new_v4()))
}

/// The request ids' `EventId`s: `<request id>.<position>`, as Firehose names each event of a batch.
fn event_id(key: &str, index: usize) -> Option<serde_json::Map<String, serde_json::Value>> {
    let mut details = serde_json::Map::new();
    details.insert("EventId".into(), format!("{key}.{index}").into());
    Some(details)
}

/// The body of a request to `/services/collector/event`: one HEC event per record (module docs).
#[derive(Debug, Clone, Copy)]
pub struct HecEvents;

impl RecordCodec for HecEvents {
    fn describe(&self) -> String {
        "splunk-hec-events".into()
    }

    fn content_type(&self) -> &'static str {
        "application/json"
    }

    fn encode(&self, record: &[u8], out: &mut Vec<u8>) -> Result<(), String> {
        self.encode_arrived(record, sluice_engine::record::now_ms(), out)
    }

    fn encode_arrived(&self, record: &[u8], arrival_ms: i64, out: &mut Vec<u8>) -> Result<(), String> {
        let Ok(text) = std::str::from_utf8(record) else {
            return Err("Splunk.InvalidDataFormat: the record is not UTF-8".into());
        };
        out.extend_from_slice(
            format!("{{\"time\":{}.{:03},\"event\":", arrival_ms.div_euclid(1000), arrival_ms.rem_euclid(1000))
                .as_bytes(),
        );
        let structured = matches!(record.iter().find(|b| !b.is_ascii_whitespace()), Some(b'{' | b'['))
            && json::validate(record) == json::Scanned::Valid;
        if structured {
            out.extend_from_slice(record);
        } else {
            // Serializing a string into a Vec cannot fail.
            let _ = serde_json::to_writer(&mut *out, text);
        }
        out.extend_from_slice(b"}\n");
        Ok(())
    }

    /// Each event's record: an object or array as it was sent, a string's text.
    fn records_of(&self, text: &[u8]) -> Result<Vec<Vec<u8>>, String> {
        let mut records = Vec::new();
        let mut events = serde_json::Deserializer::from_slice(text).into_iter::<serde::de::IgnoredAny>();
        let mut members = Vec::new();
        let mut start = 0;
        while let Some(event) = events.next() {
            event.map_err(|e| e.to_string())?;
            let end = events.byte_offset();
            let raw = &text[start..end];
            start = end;
            if json::object_members(raw, &mut members) != json::Scanned::Valid {
                return Err("an event that is not a JSON object".into());
            }
            let event = members
                .iter()
                .find(|m| &raw[m.key.clone()] == b"\"event\"")
                .map(|m| &raw[m.value.clone()])
                .ok_or("an event without `event`")?;
            records.push(match serde_json::from_slice::<String>(event) {
                Ok(string) => string.into_bytes(),
                Err(_) => event.to_vec(),
            });
        }
        Ok(records)
    }

    fn record_details(&self, key: &str, index: usize) -> Option<serde_json::Map<String, serde_json::Value>> {
        event_id(key, index)
    }
}

/// The body of a request to `/services/collector/raw`: the records' bytes, concatenated.
#[derive(Debug, Clone, Copy)]
pub struct HecRaw;

impl RecordCodec for HecRaw {
    fn describe(&self) -> String {
        "splunk-hec-raw".into()
    }

    fn content_type(&self) -> &'static str {
        "text/plain"
    }

    fn encode(&self, record: &[u8], out: &mut Vec<u8>) -> Result<(), String> {
        out.extend_from_slice(record);
        Ok(())
    }

    /// Raw requests have no delimiter: the backup keeps a request whole.
    fn records_of(&self, _text: &[u8]) -> Result<Vec<Vec<u8>>, String> {
        Err("a raw HEC request has no delimiter between its records".into())
    }
}

/// The sink's own keys.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SplunkConfig {
    url: String,
    token: String,
    #[serde(default)]
    endpoint: Option<String>,
    #[serde(default)]
    ack_timeout_s: Option<u64>,
    #[serde(default)]
    timeout_s: Option<u64>,
    #[serde(default)]
    healthcheck: Option<bool>,
    #[serde(default, deserialize_with = "crate::sinks::object_store::url_or_table")]
    backup_store: Option<BackupStore>,
}

/// A configured Splunk HEC sink.
pub struct SplunkSink {
    base: reqwest::Url,
    /// Whether `prepare` asks HEC's health endpoint first.
    healthcheck: bool,
    hec: Arc<Hec>,
    wire: Arc<dyn ObjectFormat>,
    backup: Arc<dyn Sink>,
}

/// What sending a request and waiting for its acknowledgement needs.
struct Hec {
    /// `/services/collector/event` or `/raw`.
    send_url: reqwest::Url,
    ack_url: reqwest::Url,
    authorization: http::HeaderValue,
    /// This sink's part of its channels.
    channel_seed: uuid::Uuid,
    ack_timeout: Duration,
    client: crate::tls::TlsClient,
    /// `DeliveryToSplunk_DataAckLatency`, once the run hands the meter over.
    meter: std::sync::OnceLock<SinkMeter>,
}

/// Builds a Splunk sink from `[sinks.<name>]`.
pub fn configure(mut config: ConnectorConfig) -> Result<Arc<dyn Sink>, Problems> {
    let span = config.table.span.clone();
    let spans = |key: &str| config.table.value_span(key).unwrap_or(span.clone());
    let (url_span, token_span, endpoint_span) = (spans("url"), spans("token"), spans("endpoint"));
    let (ack_at, timeout_at) = (config.table.key_at("ack_timeout_s"), config.table.key_at("timeout_s"));
    let owner = BackupOwner::of(&config);
    let mut problems = Problems::default();
    let tls = ClientTls::take_from(&mut config.table, &config.base_dir, &mut problems);
    let Some(c) = config.table.deserialize::<SplunkConfig>(&mut problems) else { return Err(problems) };
    let base =
        reqwest::Url::parse(&c.url).ok().filter(|u| matches!(u.scheme(), "http" | "https") && u.host_str().is_some());
    if base.is_none() {
        problems.push(
            Diagnostic::new(url_span.clone(), format!("`{}` is not an http(s) URL", c.url))
                .with_hint("HEC's base URL, e.g. url = \"https://splunk.example.com:8088\""),
        );
    }
    let endpoint: Option<(Arc<dyn ObjectFormat>, &str)> = match c.endpoint.as_deref() {
        None | Some("event") => Some((Arc::new(wire(HecEvents)), "services/collector/event")),
        Some("raw") => Some((Arc::new(wire(HecRaw)), "services/collector/raw")),
        Some(other) => {
            problems.push(
                Diagnostic::new(endpoint_span, format!("unknown endpoint `{other}`"))
                    .with_hint("`event` (HEC events, default) or `raw` (Firehose's HECEndpointType)"),
            );
            None
        }
    };
    let authorization =
        http::HeaderValue::from_str(&format!("Splunk {}", c.token)).ok().filter(|_| !c.token.is_empty());
    if authorization.is_none() {
        problems.push(Diagnostic::new(token_span, "`token` must be a HEC token (printable, not empty)"));
    }
    let ack_timeout = problems.take(
        ack_at
            .within(c.ack_timeout_s, 180, 180..=600, "Firehose's HECAcknowledgmentTimeoutInSeconds range (default 180)")
            .map(Duration::from_secs),
    );
    let timeout = problems.take(
        timeout_at
            .within(c.timeout_s, 60, 1..=600, "how long one HEC request may take (default 60)")
            .map(Duration::from_secs),
    );
    let backup = owner.required(c.backup_store, "splunk", &problems);
    let backup = problems.take(backup);
    let (base, (codec, path), mut authorization, ack_timeout, timeout, backup, tls) =
        problems.finish((|| Some((base?, endpoint?, authorization?, ack_timeout?, timeout?, backup?, tls?)))())?;
    authorization.set_sensitive(true);
    let join = |path: &str| {
        base.join(&format!("{}/{path}", base.path().trim_end_matches('/')))
            .map_err(|e| Diagnostic::new(url_span.clone(), format!("cannot make the HEC URLs of `{}`: {e}", c.url)))
    };
    let (send_url, ack_url) = (join(path)?, join("services/collector/ack")?);
    let client = tls.client(timeout)?;
    let hec = Hec {
        send_url,
        ack_url,
        authorization,
        channel_seed: uuid::Uuid::new_v4(),
        ack_timeout,
        client,
        meter: std::sync::OnceLock::new(),
    };
    let healthcheck = c.healthcheck.unwrap_or(true);
    Ok(Arc::new(SplunkSink { base, healthcheck, hec: Arc::new(hec), wire: codec, backup }))
}

/// Requests of `codec`: at most 5 MB, uncompressed, named on the worker that seals them.
fn wire<C: RecordCodec>(codec: C) -> TextFormat<C> {
    TextFormat::new(codec, Compression::None).named_by(request_id)
}

/// HEC's answer to a request or an ack query.
#[derive(Debug, Default, Deserialize)]
struct HecAnswer {
    #[serde(default)]
    text: String,
    #[serde(default)]
    code: Option<i64>,
    #[serde(rename = "ackId", default)]
    ack_id: Option<u64>,
}

/// The failure HEC's answer `status` with `answer` means (HEC's documented codes).
fn hec_error(status: u16, answer: &HecAnswer) -> DeliveryError {
    let message = format!("{status}: {} (HEC code {})", answer.text, answer.code.map_or("-".into(), |c| c.to_string()));
    let permanent = |code: &str| DeliveryError::Permanent { code: code.into(), message: message.clone() };
    match (status, answer.code) {
        (_, Some(1..=4)) | (401 | 403, _) => permanent("Splunk.InvalidToken"),
        (_, Some(14)) => permanent("Splunk.DisabledAck"),
        (_, Some(5 | 6 | 12 | 13 | 15)) => permanent("Splunk.InvalidDataFormat"),
        (_, Some(7)) => permanent("Splunk.InvalidIndex"),
        (_, Some(10 | 11)) => permanent("Splunk.InvalidChannel"),
        (400..=499, _) if status != 429 && status != 408 => permanent("Splunk.InvalidDataFormat"),
        _ => DeliveryError::Retryable { code: "Splunk.ServerError".into(), message },
    }
}

/// The error code of a request that got no answer.
fn send_error(e: &reqwest::Error) -> DeliveryError {
    let code = if e.is_timeout() { "Splunk.RequestTimeout" } else { "Splunk.ConnectionFailed" };
    DeliveryError::Retryable { code: code.into(), message: crate::tls::send_failure(e) }
}

/// Sends `request` and reads HEC's answer (its status and JSON).
async fn exchange(request: reqwest::RequestBuilder) -> Result<(u16, HecAnswer, String), DeliveryError> {
    let mut response = request.send().await.map_err(|e| send_error(&e))?;
    let status = response.status().as_u16();
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(|e| send_error(&e))? {
        body.extend_from_slice(&chunk);
        if body.len() > MAX_RESPONSE_BYTES {
            return Err(DeliveryError::Retryable {
                code: "Splunk.ServerError".into(),
                message: format!("{status}: an answer over 1 MiB"),
            });
        }
    }
    let text = String::from_utf8_lossy(&body).into_owned();
    Ok((status, serde_json::from_slice(&body).unwrap_or_default(), text))
}

impl Hec {
    /// The channel of requests sealed by the worker named in `key`: a UUID of this sink's and that
    /// worker's parts.
    fn channel(&self, key: &str) -> String {
        use sha2::Digest;
        let worker = key.split('.').next().unwrap_or_default();
        let hash = sha2::Sha256::digest(format!("{}.{worker}", self.channel_seed));
        let mut bytes = [0u8; 16];
        bytes.copy_from_slice(&hash[..16]);
        uuid::Builder::from_random_bytes(bytes).into_uuid().to_string()
    }

    /// The ack endpoint with the channel also in its query (HEC takes either).
    fn ack_url_for(&self, channel: &str) -> reqwest::Url {
        let mut url = self.ack_url.clone();
        url.query_pairs_mut().append_pair("channel", channel);
        url
    }

    /// Waits until the indexer acknowledges `ack_id` on `channel`, or `ack_timeout` passes.
    async fn acknowledged(&self, channel: &str, ack_id: u64) -> Result<(), DeliveryError> {
        let started = tokio::time::Instant::now();
        let mut wait = ACK_POLL.0;
        let mut last;
        loop {
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(ACK_POLL.1);
            let query = self
                .client
                .current()
                .post(self.ack_url_for(channel))
                .header(http::header::AUTHORIZATION, self.authorization.clone())
                .header("x-splunk-request-channel", channel)
                .header(http::header::CONTENT_TYPE, "application/json")
                .body(format!("{{\"acks\":[{ack_id}]}}"));
            match exchange(query).await {
                Ok((200, _, text)) => {
                    let acks: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
                    if acks["acks"][ack_id.to_string()] == true {
                        if let Some(meter) = self.meter.get() {
                            meter.observe(DATA_ACK_LATENCY, started.elapsed());
                        }
                        return Ok(());
                    }
                    last = format!("ack {ack_id} not yet true: {text}");
                }
                // A token or ack setting that fails now fails the request for good.
                Ok((status, answer, _)) => match hec_error(status, &answer) {
                    e @ DeliveryError::Permanent { .. } => return Err(e),
                    e => last = e.to_string(),
                },
                Err(e) => last = e.to_string(),
            }
            if started.elapsed() + wait > self.ack_timeout {
                return Err(DeliveryError::Retryable {
                    code: "Splunk.AckTimeout".into(),
                    message: format!(
                        "no indexer acknowledgement of ack {ack_id} on channel {channel} within {} s (the events may be indexed); last: {last}",
                        self.ack_timeout.as_secs()
                    ),
                });
            }
        }
    }

    /// Sends one request and waits for its acknowledgement.
    async fn send(&self, payload: Payload) -> Result<(), DeliveryError> {
        let channel = self.channel(&payload.key);
        let request = self
            .client
            .current()
            .post(self.send_url.clone())
            .header(http::header::AUTHORIZATION, self.authorization.clone())
            .header("x-splunk-request-channel", channel.as_str())
            .header("x-request-id", payload.key.as_str())
            .header(http::header::CONTENT_TYPE, payload.content_type)
            .body(payload.body);
        let (status, answer, _) = exchange(request).await?;
        if status != 200 || answer.code.is_some_and(|c| c != 0) {
            return Err(hec_error(status, &answer));
        }
        let Some(ack_id) = answer.ack_id else {
            return Err(DeliveryError::Permanent {
                code: "Splunk.DisabledAck".into(),
                message: "HEC answered without an ackId: indexer acknowledgement is off for this token".into(),
            });
        };
        self.acknowledged(&channel, ack_id).await
    }
}

impl Sink for SplunkSink {
    fn describe(&self) -> String {
        format!("splunk {} ({})", self.location(), self.wire.describe())
    }

    fn location(&self) -> String {
        sluice_engine::redact::url(self.base.as_str())
    }

    fn destination(&self) -> DestinationKind {
        DestinationKind::Splunk
    }

    /// Unless `healthcheck = false`, HEC's health endpoint asked (`GET /services/collector/health`,
    /// which takes no token): a certificate the client refuses is an error; no answer, or one other
    /// than 200 ("HEC is healthy"), is warned. (The engine checks and prepares the backup store.)
    fn check(&self) -> BoxFuture<'static, Result<(), DeliveryError>> {
        let health = self.base.join(&format!("{}/services/collector/health", self.base.path().trim_end_matches('/')));
        let check = match health {
            Ok(url) if self.healthcheck => {
                Some((self.hec.client.current().get(url), sluice_engine::redact::url(self.base.as_str())))
            }
            _ => None,
        };
        Box::pin(async move {
            let Some((request, url)) = check else { return Ok(()) };
            match crate::tls::start_up_check(request, &url, "Splunk.ConnectionFailed").await? {
                Some(status) if status != reqwest::StatusCode::OK => {
                    tracing::warn!(url = %url, %status, "HEC's health endpoint did not answer 200; deliveries will be tried anyway");
                }
                _ => {}
            }
            Ok(())
        })
    }

    fn wire_format(&self) -> Option<Arc<dyn ObjectFormat>> {
        Some(Arc::clone(&self.wire))
    }

    fn error_output(&self) -> Option<Arc<dyn Sink>> {
        Some(Arc::clone(&self.backup))
    }

    fn measure_with(&self, meter: SinkMeter) {
        self.hec.client.tls_metrics().meter_with(meter.clone());
        let _ = self.hec.meter.set(meter);
    }

    fn deliver(&self, payload: Payload) -> BoxFuture<'static, Result<(), DeliveryError>> {
        let hec = Arc::clone(&self.hec);
        Box::pin(async move { hec.send(payload).await })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_carry_the_arrival_time_and_come_back_as_they_were() {
        let records: [&[u8]; 4] = [br#"{"b": 2, "a": [1]}"#, b"plain text \"quoted\"", b"[1,2]", b"\"a json string\""];
        let mut text = Vec::new();
        for r in records {
            HecEvents.encode_arrived(r, 1_764_000_000_123, &mut text).unwrap_or_else(|e| panic!("{e}"));
        }
        let lines: Vec<&[u8]> = text.split(|&b| b == b'\n').filter(|l| !l.is_empty()).collect();
        assert_eq!(lines[0], br#"{"time":1764000000.123,"event":{"b": 2, "a": [1]}}"#);
        assert_eq!(lines[1], br#"{"time":1764000000.123,"event":"plain text \"quoted\""}"#);
        let back = HecEvents.records_of(&text).unwrap_or_default();
        // A JSON string record is sent as its text: it comes back as that text.
        assert_eq!(back, records.map(<[u8]>::to_vec));
        let mut out = Vec::new();
        assert!(
            HecEvents
                .encode_arrived(b"\xff\xfe", 0, &mut out)
                .is_err_and(|e| e.starts_with("Splunk.InvalidDataFormat"))
        );
        assert!(out.is_empty());
        assert_eq!(HecEvents.record_details("w.r", 3).and_then(|d| d.get("EventId").cloned()), Some("w.r.3".into()));
    }

    #[test]
    fn hec_codes_map_to_firehose_codes() {
        let answer = |code: i64| HecAnswer { text: "x".into(), code: Some(code), ack_id: None };
        let code = |status: u16, hec: i64| {
            let e = hec_error(status, &answer(hec));
            (e.code().to_string(), e.is_retryable())
        };
        assert_eq!(code(403, 4), ("Splunk.InvalidToken".into(), false));
        assert_eq!(code(401, 2), ("Splunk.InvalidToken".into(), false));
        assert_eq!(code(403, 1), ("Splunk.InvalidToken".into(), false));
        assert_eq!(code(400, 14), ("Splunk.DisabledAck".into(), false));
        assert_eq!(code(400, 6), ("Splunk.InvalidDataFormat".into(), false));
        assert_eq!(code(400, 12), ("Splunk.InvalidDataFormat".into(), false));
        assert_eq!(code(400, 10), ("Splunk.InvalidChannel".into(), false));
        assert_eq!(code(503, 9), ("Splunk.ServerError".into(), true));
        assert_eq!(code(500, 8), ("Splunk.ServerError".into(), true));
        let none = HecAnswer::default();
        assert!(hec_error(429, &none).is_retryable() && hec_error(502, &none).is_retryable());
        assert!(!hec_error(404, &none).is_retryable());
    }

    #[test]
    fn a_worker_keeps_its_channel_and_sinks_have_their_own() {
        let hec = |seed| Hec {
            send_url: reqwest::Url::parse("http://127.0.0.1:1/").unwrap_or_else(|e| panic!("{e}")),
            ack_url: reqwest::Url::parse("http://127.0.0.1:1/").unwrap_or_else(|e| panic!("{e}")),
            authorization: http::HeaderValue::from_static("Splunk t"),
            channel_seed: seed,
            ack_timeout: Duration::from_secs(180),
            client: crate::tls::TlsClient::plain(Duration::from_secs(1)).unwrap_or_else(|e| panic!("{e}")),
            meter: std::sync::OnceLock::new(),
        };
        let (a, b) = (hec(uuid::Uuid::new_v4()), hec(uuid::Uuid::new_v4()));
        let (one, two) = (request_id(), request_id());
        assert_ne!(one, two);
        assert_eq!(a.channel(&one), a.channel(&two), "one worker thread, one channel");
        assert_ne!(a.channel(&one), b.channel(&one), "another sink, another channel");
        let other_worker = std::thread::spawn(request_id).join().unwrap_or_default();
        assert_ne!(a.channel(&one), a.channel(&other_worker));
        assert!(uuid::Uuid::parse_str(&a.channel(&one)).is_ok());
    }
}

//! `type = "http"`: a plain HTTP endpoint for newline-delimited records.
//!
//! ```toml
//! [sources.ndjson]
//! type = "http"
//! listen = "127.0.0.1:4574"
//! bearer_token = "${SLUICE_HTTP_TOKEN}"   # optional: then `Authorization: Bearer <token>` is required
//! # or several, each named (the name, never the token, is what the audit log shows):
//! # bearer_tokens = [{ name = "shipper-a", token = "${TOKEN_A}" }, { name = "shipper-b", token = "${TOKEN_B}" }]
//! max_body_mb = 16                       # larger bodies get 413 (from their declared length)
//! max_inflight_mb = 256                  # past this, requests get 503 with Retry-After
//! tls = { cert = "...", key = "..." }    # optional
//! max_connections = 4096                 # the listener's limits (crate::api::listener)
//! max_body_buffer_mb = 256
//! header_timeout_s = 10
//! body_timeout_s = 60
//! idle_timeout_s = 60
//! ```
//!
//! `POST` any path with one record per line, the body plain or with `Content-Encoding` `gzip`,
//! `deflate` (zlib, or raw deflate as some clients send it) or `br`; empty lines are skipped.
//! Answers `200 {"accepted": n}` once the records are queued for the pipeline, or an error
//! `{"error": "..."}` with 400 (a body that does not decode, a record over 1,000 KiB), 401
//! (token), 408 (the body did not arrive in time), 413 (body too large), 415 (another encoding:
//! its bytes are never stored as records) or 503 (throttled, too many bodies being read, or
//! stopping). A request is accepted whole or not at all; the token is checked before the body is
//! read, in constant time (digests compared), against every configured token.

use std::io::Read;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;
use std::time::Instant;

use axum::body::Body;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;
use sluice_engine::audit::{AuditEvent, HTTP_EVENT_SOURCE};
use sluice_engine::config::ConnectorConfig;
use sluice_engine::config::{Diagnostic, Problems};
use sluice_engine::contract::{PrepareContext, Source, SourceContext, SourceError, SourceReader};
use sluice_engine::metrics::PipelineMetrics;
use sluice_engine::record::{RecordBatch, now_ms};

use super::firehose::parse_listen;
use crate::api::firehose::MAX_RECORD_BYTES;
use crate::api::listener::{BodyBudget, BodyError, declared_length, read_body};
use crate::api::queue::IngestQueue;
use crate::api::{ListenerLimits, LogSlot, QueueReader, Rejected, TlsFiles, accept, bind, inflight_limit, serve};

/// The http source's own keys.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct HttpConfig {
    /// Address to listen on (default `127.0.0.1:4574`).
    listen: Option<String>,
    /// When set, requests need `Authorization: Bearer <token>`.
    bearer_token: Option<String>,
    /// Several tokens, each with a name.
    bearer_tokens: Option<Vec<NamedToken>>,
    /// Largest request body in MB, after decompression (default 16).
    max_body_mb: Option<u64>,
    /// Bytes accepted but not yet taken by the workers before requests get 503 (default 256).
    max_inflight_mb: Option<u64>,
    /// HTTPS with these PEM files.
    tls: Option<TlsFiles>,
}

/// `{ name, token }` of `bearer_tokens`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NamedToken {
    /// Who holds it (shown in the audit log).
    name: String,
    /// The token.
    token: String,
}

/// The configured bearer tokens: names and SHA-256 digests (the tokens themselves are not kept).
#[derive(Debug, Default)]
struct Tokens(Vec<(String, [u8; 32])>);

impl Tokens {
    fn digest(token: &str) -> [u8; 32] {
        use sha2::Digest as _;
        sha2::Sha256::digest(token.as_bytes()).into()
    }

    /// The tokens of `bearer_token` (named `default`) or `bearer_tokens`; an error is (message, hint).
    fn from_config(single: Option<String>, named: Option<Vec<NamedToken>>) -> Result<Tokens, (String, String)> {
        let named = match (single, named) {
            (Some(_), Some(_)) => {
                return Err((
                    "`bearer_token` and `bearer_tokens` are both set".into(),
                    "keep one: bearer_tokens = [{ name = \"...\", token = \"...\" }] names each holder".into(),
                ));
            }
            (Some(token), None) => vec![NamedToken { name: "default".into(), token }],
            (None, Some(named)) if named.is_empty() => {
                return Err(("`bearer_tokens` is empty".into(), "list at least one, or leave it out".into()));
            }
            (None, Some(named)) => named,
            (None, None) => Vec::new(),
        };
        let mut tokens = Tokens::default();
        for NamedToken { name, token } in named {
            let hint = "each token needs a name of its own and a non-empty token of its own, e.g. { name = \"shipper-a\", token = \"${TOKEN_A}\" }";
            if name.is_empty() || token.is_empty() {
                return Err((format!("bearer token `{name}` has an empty name or token"), hint.into()));
            }
            let digest = Self::digest(&token);
            if let Some((other, _)) = tokens.0.iter().find(|(n, d)| *n == name || *d == digest) {
                return Err((format!("bearer tokens `{other}` and `{name}` share a name or a token"), hint.into()));
            }
            tokens.0.push((name, digest));
        }
        Ok(tokens)
    }

    /// The name of the token `given` is, comparing digests in constant time against all of them.
    fn holder(&self, given: &str) -> Option<&str> {
        let given = Self::digest(given);
        let mut found = None;
        for (name, digest) in &self.0 {
            let differs = digest.iter().zip(given.iter()).fold(0u8, |acc, (a, b)| acc | (a ^ b));
            if differs == 0 {
                found = Some(name.as_str());
            }
        }
        found
    }
}

/// A configured HTTP source.
#[derive(Debug)]
pub struct HttpSource {
    listen: SocketAddr,
    endpoint: Arc<Endpoint>,
    tls: Option<TlsFiles>,
    limits: ListenerLimits,
}

#[derive(Debug)]
struct Endpoint {
    tokens: Tokens,
    max_body: usize,
    bodies: Arc<BodyBudget>,
    body_timeout: Duration,
    queue: Arc<IngestQueue>,
    log: LogSlot,
    metrics: std::sync::OnceLock<Arc<PipelineMetrics>>,
}

/// Builds the source from `[sources.<name>]`.
pub fn configure(mut config: ConnectorConfig) -> Result<Arc<dyn Source>, Problems> {
    let span = config.table.span.clone();
    let listen_span = config.table.value_span("listen").unwrap_or(span.clone());
    let (body_at, inflight_at) = (config.table.key_at("max_body_mb"), config.table.key_at("max_inflight_mb"));
    let tls_at = config.table.key_at("tls");
    let tokens_span =
        config.table.value_span("bearer_tokens").or(config.table.value_span("bearer_token")).unwrap_or(span);
    let mut problems = Problems::default();
    let limits = ListenerLimits::take_from(&mut config.table, 1, &mut problems);
    let log = LogSlot::for_source(&config);
    let Some(c) = config.table.deserialize::<HttpConfig>(&mut problems) else { return Err(problems) };
    let listen = problems.take(parse_listen(c.listen.as_deref(), "127.0.0.1:4574", listen_span));
    let max_body_mb =
        problems.take(body_at.within(c.max_body_mb, 16, 1..=1024, "MB of one request's body (default 16)"));
    // Checked against its own range too when `max_body_mb` is wrong: both are reported at once.
    let inflight =
        problems.take(inflight_limit(c.max_inflight_mb, max_body_mb.unwrap_or(1), "max_body_mb", &inflight_at));
    let tokens = problems.take(
        Tokens::from_config(c.bearer_token, c.bearer_tokens)
            .map_err(|(message, hint)| Diagnostic::new(tokens_span, message).with_hint(hint)),
    );
    let tls = problems.take(c.tls.as_ref().map(|t| t.checked(&config.base_dir, &tls_at)).transpose());
    let (limits, listen, max_body_mb, inflight, tokens, tls) =
        problems.finish((|| Some((limits?, listen?, max_body_mb?, inflight?, tokens?, tls?)))())?;
    Ok(Arc::new(HttpSource {
        listen,
        endpoint: Arc::new(Endpoint {
            tokens,
            max_body: (max_body_mb << 20) as usize,
            bodies: BodyBudget::new(limits.max_body_buffer),
            body_timeout: limits.body_timeout,
            queue: Arc::new(IngestQueue::new(inflight)),
            log,
            metrics: std::sync::OnceLock::new(),
        }),
        tls,
        limits,
    }))
}

impl Source for HttpSource {
    fn describe(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        let auth = match self.endpoint.tokens.0.as_slice() {
            [] => "no auth".to_string(),
            [(name, _)] => format!("bearer token `{name}`"),
            tokens => format!(
                "bearer tokens {}",
                tokens.iter().map(|(name, _)| format!("`{name}`")).collect::<Vec<_>>().join(", ")
            ),
        };
        format!("http: NDJSON on {scheme}://{} ({auth})", self.listen)
    }

    fn is_finite(&self) -> bool {
        false
    }

    fn prepare(&self, ctx: &PrepareContext) -> Result<(), SourceError> {
        let _ = self.endpoint.metrics.set(Arc::clone(&ctx.metrics));
        if let Some(log) = self.endpoint.log.open(&self.endpoint.queue, &ctx.metrics)? {
            log.follow(Arc::clone(&ctx.delivered), Arc::clone(&ctx.metrics));
        }
        let router = axum::Router::new()
            .fallback(axum::routing::post(receive))
            .layer(axum::extract::DefaultBodyLimit::disable())
            .with_state(Arc::clone(&self.endpoint));
        let listener = bind(self.listen)?;
        let queue = Arc::clone(&self.endpoint.queue);
        let tls = self.tls.as_ref().map(|files| files.served_for(vec![Arc::clone(&ctx.metrics)]));
        serve(&ctx.runtime, listener, router, tls, self.limits, ctx.stop.clone(), vec![queue])
    }

    fn finish(&self, _stopped: bool) {
        if let Some(log) = self.endpoint.log.get() {
            log.finish();
        }
    }

    fn open(&self, _ctx: &SourceContext) -> Result<Box<dyn SourceReader>, SourceError> {
        Ok(Box::new(QueueReader::new(Arc::clone(&self.endpoint.queue), self.endpoint.log.get())))
    }
}

fn refuse(status: StatusCode, message: impl Into<String>) -> Response {
    let mut response = (status, json!({"error": message.into()}).to_string()).into_response();
    response.headers_mut().insert(header::CONTENT_TYPE, header::HeaderValue::from_static("application/json"));
    if status == StatusCode::SERVICE_UNAVAILABLE {
        response.headers_mut().insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
    }
    response
}

/// A request body's `Content-Encoding`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ContentEncoding {
    Identity,
    Gzip,
    Deflate,
    Brotli,
}

/// Why a body did not decode.
#[derive(Debug)]
enum DecodeError {
    /// It decodes to more than the limit.
    TooLarge,
    /// It is not what its encoding says.
    Invalid(std::io::Error),
}

impl ContentEncoding {
    /// The encoding the headers name, or the name of one not supported.
    fn of(headers: &HeaderMap) -> Result<Self, String> {
        let Some(value) = headers.get(header::CONTENT_ENCODING) else { return Ok(ContentEncoding::Identity) };
        let name = String::from_utf8_lossy(value.as_bytes()).trim().to_ascii_lowercase();
        match name.as_str() {
            "" | "identity" => Ok(ContentEncoding::Identity),
            "gzip" | "x-gzip" => Ok(ContentEncoding::Gzip),
            "deflate" => Ok(ContentEncoding::Deflate),
            "br" => Ok(ContentEncoding::Brotli),
            _ => Err(name),
        }
    }

    fn name(self) -> &'static str {
        match self {
            ContentEncoding::Identity => "identity",
            ContentEncoding::Gzip => "gzip",
            ContentEncoding::Deflate => "deflate",
            ContentEncoding::Brotli => "br",
        }
    }

    /// The decoded body (`None`: it is not encoded), at most `limit` bytes.
    fn decode(self, raw: &[u8], limit: usize) -> Result<Option<Vec<u8>>, DecodeError> {
        let read_all = |reader: &mut dyn Read| {
            let mut out = Vec::new();
            // Decompress no further than the limit allows.
            match reader.take(limit as u64 + 1).read_to_end(&mut out) {
                Ok(_) if out.len() > limit => Err(DecodeError::TooLarge),
                Ok(_) => Ok(out),
                Err(e) => Err(DecodeError::Invalid(e)),
            }
        };
        match self {
            ContentEncoding::Identity => Ok(None),
            ContentEncoding::Gzip => read_all(&mut flate2::read::MultiGzDecoder::new(raw)).map(Some),
            // HTTP's deflate is zlib-wrapped; some clients send raw deflate.
            ContentEncoding::Deflate => read_all(&mut flate2::read::ZlibDecoder::new(raw))
                .or_else(|_| read_all(&mut flate2::read::DeflateDecoder::new(raw)))
                .map(Some),
            ContentEncoding::Brotli => read_all(&mut brotli_decompressor::Decompressor::new(raw, 4096)).map(Some),
        }
    }
}

/// Splits `body` into records (one per line, empty lines skipped).
fn records(body: &[u8]) -> Result<RecordBatch, String> {
    let mut batch = RecordBatch::with_capacity(now_ms(), body.len());
    for (i, line) in body.split(|b| *b == b'\n').enumerate() {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            continue;
        }
        if line.len() > MAX_RECORD_BYTES {
            return Err(format!("line {} has {} bytes; a record is at most {MAX_RECORD_BYTES}", i + 1, line.len()));
        }
        batch.push(line);
    }
    Ok(batch)
}

/// A refused request: its status and why.
type Refusal = (StatusCode, String);

/// What the audit trail records of a request to the http source.
#[derive(Debug, Default)]
struct Facts {
    /// The name of the token it carried.
    token: Option<String>,
    /// Records in its body.
    records: Option<usize>,
    /// Their bytes.
    bytes: Option<usize>,
}

async fn receive(
    State(endpoint): State<Arc<Endpoint>>,
    ConnectInfo(caller): ConnectInfo<SocketAddr>,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let mut facts = Facts::default();
    let outcome = take(&endpoint, &headers, body, &mut facts).await;
    if let Some(metrics) = endpoint.metrics.get() {
        metrics.audit(|trail| {
            let identity = match &facts.token {
                Some(name) => json!({"type": "Token", "tokenName": name}),
                None => json!({"type": "Unknown"}),
            };
            let user_agent = headers.get(header::USER_AGENT).and_then(|v| v.to_str().ok());
            let event = AuditEvent::api_call(
                HTTP_EVENT_SOURCE,
                "PostRecords",
                trail.region(),
                &uuid::Uuid::new_v4().to_string(),
            )
            .from_caller(Some(caller.ip().to_string()), user_agent)
            .identity(identity)
            .parameters(json!({"path": uri.path(), "recordCount": facts.records, "bytes": facts.bytes}));
            match &outcome {
                Ok(_) => event,
                Err((status, message)) => event.error(status.canonical_reason().unwrap_or("Error"), message),
            }
        });
    }
    match outcome {
        Ok(count) => {
            (StatusCode::OK, [(header::CONTENT_TYPE, "application/json")], json!({"accepted": count}).to_string())
                .into_response()
        }
        Err((status, message)) => refuse(status, message),
    }
}

/// Takes one request's records: how many, or why not (status and message).
async fn take(endpoint: &Arc<Endpoint>, headers: &HeaderMap, body: Body, facts: &mut Facts) -> Result<usize, Refusal> {
    let no = |status: StatusCode, message: String| Err((status, message));
    let started = Instant::now();
    if !endpoint.tokens.0.is_empty() {
        let given =
            headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "));
        match given.and_then(|token| endpoint.tokens.holder(token)) {
            Some(holder) => facts.token = Some(holder.to_string()),
            None => {
                return no(
                    StatusCode::UNAUTHORIZED,
                    "a valid `Authorization: Bearer <token>` header is required".into(),
                );
            }
        }
    }
    let encoding = match ContentEncoding::of(headers) {
        Ok(encoding) => encoding,
        Err(name) => {
            return no(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                format!("Content-Encoding `{name}` is not supported; send the body plain, gzip, deflate or br"),
            );
        }
    };
    let too_large =
        || no(StatusCode::PAYLOAD_TOO_LARGE, format!("the body is larger than {} bytes", endpoint.max_body));
    let read =
        read_body(body, declared_length(headers), endpoint.max_body, &endpoint.bodies, endpoint.body_timeout).await;
    let (raw, _room) = match read {
        Ok(read) => read,
        Err(BodyError::TooLarge(_)) => return too_large(),
        Err(e @ BodyError::Busy) => return no(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
        Err(e @ BodyError::TimedOut(_)) => return no(StatusCode::REQUEST_TIMEOUT, e.to_string()),
        Err(e @ BodyError::Broken(_)) => return no(StatusCode::BAD_REQUEST, e.to_string()),
    };
    let body: std::borrow::Cow<'_, [u8]> = match encoding.decode(&raw, endpoint.max_body) {
        Ok(Some(decoded)) => decoded.into(),
        Ok(None) => raw[..].into(),
        Err(DecodeError::TooLarge) => return too_large(),
        Err(DecodeError::Invalid(e)) => {
            return no(StatusCode::BAD_REQUEST, format!("the body is not valid {}: {e}", encoding.name()));
        }
    };
    let batch = match records(&body) {
        Ok(b) => b,
        Err(message) => return no(StatusCode::BAD_REQUEST, message),
    };
    let (count, bytes) = (batch.len(), batch.byte_len());
    (facts.records, facts.bytes) = (Some(count), Some(bytes));
    let metrics = endpoint.metrics.get();
    if count > 0 {
        // With a log this waits for a group commit: on a blocking thread.
        let target = Arc::clone(endpoint);
        let accepted =
            tokio::task::spawn_blocking(move || accept(&target.queue, target.log.get().as_ref(), batch)).await;
        match accepted {
            Ok(Ok(())) => {}
            Ok(Err(Rejected::Full)) => {
                if let Some(m) = metrics {
                    m.api.throttled_records.fetch_add(count as u64, Relaxed);
                }
                return no(StatusCode::SERVICE_UNAVAILABLE, "too much data in flight; retry later".into());
            }
            Ok(Err(Rejected::Closed)) => return no(StatusCode::SERVICE_UNAVAILABLE, "the pipeline is stopping".into()),
            Ok(Err(Rejected::Log(e))) => {
                return no(StatusCode::SERVICE_UNAVAILABLE, format!("the records could not be made durable: {e}"));
            }
            Err(e) => {
                return no(StatusCode::INTERNAL_SERVER_ERROR, format!("the request could not be handled: {e}"));
            }
        }
    }
    if let Some(m) = metrics {
        m.api.count_accepted(count as u64, bytes as u64);
        m.api.put_record_batch_latency.observe(started.elapsed());
    }
    Ok(count)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_lines_skipping_empty_ones_and_refuses_oversize_records() {
        let batch = records(b"a\r\n\nbc\n").unwrap();
        assert_eq!(batch.iter().collect::<Vec<_>>(), vec![&b"a"[..], b"bc"]);
        let big = vec![b'x'; MAX_RECORD_BYTES + 1];
        assert!(records(&big).unwrap_err().contains("line 1"));
    }

    /// The http source through the real runtime, fed by POSTs of newline-delimited records: every
    /// accepted record exactly once at 1, 2 and 4 workers, all delivered when the stop comes right
    /// after the last acceptance, and a restarted source does not replay what its log delivered.
    #[test]
    fn passes_the_source_conformance_kit() {
        use sluice_engine::testkit::source::{Check, SourceCase, conformance};

        let dir = tempfile::tempdir().unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let expected: Vec<Vec<u8>> = (0..5_000).map(|i| format!(r#"{{"post":{i}}}"#).into_bytes()).collect();
        let records = expected.clone();
        let produce = move || -> Result<(), String> {
            let client = reqwest::blocking::Client::new();
            for chunk in records.chunks(700) {
                let body: Vec<u8> = chunk.iter().flat_map(|r| r.iter().copied().chain([b'\n'])).collect();
                let response = client
                    .post(format!("http://127.0.0.1:{port}/logs"))
                    .body(body)
                    .send()
                    .map_err(|e| e.to_string())?;
                if !response.status().is_success() {
                    return Err(format!("refused: {}", response.status()));
                }
            }
            Ok(())
        };
        let table = format!("type = \"http\"\nlisten = \"127.0.0.1:{port}\"\n");
        let case = SourceCase::stream(table, expected, Box::new(produce), dir.path());
        let report = conformance(crate::registry(), &case).unwrap_or_else(|e| panic!("{e}"));
        assert!(report.passed.contains(&Check::Resume) && report.skipped.is_empty(), "{report:?}");
    }

    #[test]
    fn each_named_token_is_known_by_its_holder_and_nothing_else_is() {
        use super::{NamedToken, Tokens};
        let named = |name: &str, token: &str| NamedToken { name: name.into(), token: token.into() };
        let tokens = Tokens::from_config(None, Some(vec![named("shipper-a", "tok-a"), named("shipper-b", "tok-b")]))
            .unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!(tokens.holder("tok-a"), Some("shipper-a"));
        assert_eq!(tokens.holder("tok-b"), Some("shipper-b"));
        assert_eq!(tokens.holder("tok-"), None);
        assert_eq!(tokens.holder(""), None);
        let single = Tokens::from_config(Some("t".into()), None).unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!(single.holder("t"), Some("default"));
        let refused = |single: Option<&str>, named: Option<Vec<NamedToken>>| {
            Tokens::from_config(single.map(str::to_string), named).err().map(|(message, _)| message)
        };
        assert!(refused(Some("t"), Some(vec![named("a", "x")])).is_some_and(|m| m.contains("both set")));
        assert!(refused(None, Some(vec![])).is_some_and(|m| m.contains("is empty")));
        assert!(refused(None, Some(vec![named("a", "x"), named("a", "y")])).is_some_and(|m| m.contains("share")));
        assert!(refused(None, Some(vec![named("a", "x"), named("b", "x")])).is_some_and(|m| m.contains("share")));
        assert!(refused(None, Some(vec![named("", "x")])).is_some_and(|m| m.contains("empty name or token")));
    }
}

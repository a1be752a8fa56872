//! Records taken from HTTP POST bodies: what the `http` source (newline-delimited records) and the
//! `http_endpoint` source (Firehose's HTTP endpoint deliveries) share, so that each of them is only
//! its wire format and its answers.
//!
//! [`PostSource`] is the source both configure: one listener (`listen`, `tls`, the listener limits
//! of [`ListenerLimits`]), one queue with its write-ahead log ([`LogSlot`]), a body limit after
//! decompression and an in-flight limit. Guarantees: a secret ([`Secrets`]) is checked before the
//! body is read, in constant time, against every configured one, and only its digest is kept; a
//! body is read within the listener's body budget and timeout and decompressed no further than its
//! limit; [`enqueue`] answers only once the records are queued and, with a log, as durable as the
//! pipeline asks, or refuses them whole, so a request answered with success is never lost and one
//! refused is never partly taken.

use std::io::Read;
use std::net::SocketAddr;
use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{HeaderMap, StatusCode, header};
use sluice_engine::config::{ConnectorConfig, Diagnostic, KeyAt, Problems};
use sluice_engine::contract::{PrepareContext, Source, SourceContext, SourceError, SourceReader};
use sluice_engine::metrics::PipelineMetrics;
use sluice_engine::record::RecordBatch;

use super::listener::{BodyBudget, BodyError, BodyRoom, declared_length, open_listener_warning, read_body};
use super::queue::IngestQueue;
use super::{
    Caller, ListenerLimits, LogSlot, QueueReader, Rejected, TlsFiles, Wire, accept, bind, inflight_limit, serve,
};
use crate::sources::firehose::parse_listen;

/// A refused request: its status and why.
pub type Refusal = (StatusCode, String);

/// Configured secrets (bearer tokens, access keys): names and SHA-256 digests (the secrets
/// themselves are not kept), and what one is called.
#[derive(Debug, Default)]
pub struct Secrets {
    keys: SecretKeys,
    digests: Vec<(String, [u8; 32])>,
}

/// `{ name, token }`: a token and who holds it, as a list of tokens names them (`bearer_tokens`,
/// `tokens`); [`NamedToken::pairs`] makes them the named secrets of [`ListenerKeys`].
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NamedToken {
    /// Who holds it (shown in the audit log).
    pub name: String,
    /// The token.
    pub token: String,
}

impl NamedToken {
    /// `tokens` as (name, token) pairs.
    pub fn pairs(tokens: Vec<NamedToken>) -> Vec<(String, String)> {
        tokens.into_iter().map(|t| (t.name, t.token)).collect()
    }
}

/// How the bearer tokens of the sources that take them (`http`, `otlp`) are called in messages.
pub const BEARER_TOKENS: SecretKeys = SecretKeys {
    single: "bearer_token",
    named: "bearer_tokens",
    what: "bearer token",
    example: "{ name = \"shipper-a\", token = \"${TOKEN_A}\" }",
};

/// How a source's secret keys are called, for its messages.
#[derive(Debug, Clone, Copy, Default)]
pub struct SecretKeys {
    /// The key holding one secret (`bearer_token`).
    pub single: &'static str,
    /// The key holding named ones (`bearer_tokens`).
    pub named: &'static str,
    /// What one is (`bearer token`).
    pub what: &'static str,
    /// An entry of `named` as the user writes it.
    pub example: &'static str,
}

impl Secrets {
    fn digest(secret: &str) -> [u8; 32] {
        use sha2::Digest as _;
        sha2::Sha256::digest(secret.as_bytes()).into()
    }

    /// The secrets of `single` (named `default`) or of `named` (name, secret); an error is
    /// (message, hint).
    pub fn from_config(
        single: Option<String>,
        named: Option<Vec<(String, String)>>,
        keys: SecretKeys,
    ) -> Result<Secrets, (String, String)> {
        let SecretKeys { single: one, named: many, what, example } = keys;
        let named = match (single, named) {
            (Some(_), Some(_)) => {
                return Err((
                    format!("`{one}` and `{many}` are both set"),
                    format!("keep one: {many} = [{example}] names each holder"),
                ));
            }
            (Some(secret), None) => vec![("default".to_string(), secret)],
            (None, Some(named)) if named.is_empty() => {
                return Err((format!("`{many}` is empty"), "list at least one, or leave it out".into()));
            }
            (None, Some(named)) => named,
            (None, None) => Vec::new(),
        };
        let mut secrets = Secrets { keys, digests: Vec::new() };
        for (name, secret) in named {
            let hint = format!("each {what} needs a name of its own and a non-empty value of its own, e.g. {example}");
            if name.is_empty() || secret.is_empty() {
                return Err((format!("{what} `{name}` has an empty name or value"), hint));
            }
            let digest = Self::digest(&secret);
            if let Some((other, _)) = secrets.digests.iter().find(|(n, d)| *n == name || *d == digest) {
                return Err((format!("{what}s `{other}` and `{name}` share a name or a value"), hint));
            }
            secrets.digests.push((name, digest));
        }
        Ok(secrets)
    }

    /// Whether any is configured (else requests need none).
    pub fn required(&self) -> bool {
        !self.digests.is_empty()
    }

    /// The name of the secret `given` is, comparing digests in constant time against all of them.
    pub fn holder(&self, given: &str) -> Option<&str> {
        let given = Self::digest(given);
        let mut found = None;
        for (name, digest) in &self.digests {
            let differs = digest.iter().zip(given.iter()).fold(0u8, |acc, (a, b)| acc | (a ^ b));
            if differs == 0 {
                found = Some(name.as_str());
            }
        }
        found
    }

    /// How the source describes its authentication (`no auth`, `bearer token `a``, …).
    pub fn describe(&self) -> String {
        let what = self.keys.what;
        match self.digests.as_slice() {
            [] => "no auth".to_string(),
            [(name, _)] => format!("{what} `{name}`"),
            many => {
                format!("{what}s {}", many.iter().map(|(name, _)| format!("`{name}`")).collect::<Vec<_>>().join(", "))
            }
        }
    }
}

/// A request body's `Content-Encoding` (or a gRPC message's `grpc-encoding`, the same names).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContentEncoding {
    /// Not encoded.
    Identity,
    /// gzip, every member read as one stream.
    Gzip,
    /// zlib, as HTTP and gRPC mean `deflate`; raw deflate too, as some clients send it.
    Deflate,
    /// Brotli (`br`).
    Brotli,
    /// RFC 8878 §7.2's `zstd` (Vector's and the OpenTelemetry Collector's `compression = "zstd"`).
    Zstd,
    /// `snappy`: one raw Snappy block, or Snappy's framed stream, told apart by the stream's
    /// identifier at its start as the OpenTelemetry Collector's receivers do (its exporters sent
    /// the framed format under this name before they sent blocks; gRPC's `snappy` is framed).
    Snappy,
    /// `x-snappy-framed`: Snappy's framed stream.
    SnappyFramed,
}

/// What Snappy's framed stream starts with: its stream identifier chunk.
const SNAPPY_STREAM_IDENTIFIER: &[u8] = b"\xff\x06\x00\x00sNaPpY";

/// Why a body did not decode.
#[derive(Debug)]
pub enum DecodeError {
    /// It decodes to more than the limit.
    TooLarge,
    /// It is not what its encoding says.
    Invalid(std::io::Error),
}

impl ContentEncoding {
    /// The names of the encodings read, for messages that list them.
    pub const NAMES: &'static str = "gzip, deflate, br, zstd, snappy, x-snappy-framed";

    /// The encoding the headers name, or the name of one not supported.
    fn of(headers: &HeaderMap) -> Result<Self, String> {
        let Some(value) = headers.get(header::CONTENT_ENCODING) else { return Ok(ContentEncoding::Identity) };
        Self::named(&String::from_utf8_lossy(value.as_bytes()))
    }

    /// The encoding called `name` (case and surrounding space aside), or the name if none is.
    pub fn named(name: &str) -> Result<Self, String> {
        let name = name.trim().to_ascii_lowercase();
        match name.as_str() {
            "" | "identity" => Ok(ContentEncoding::Identity),
            "gzip" | "x-gzip" => Ok(ContentEncoding::Gzip),
            "deflate" => Ok(ContentEncoding::Deflate),
            "br" => Ok(ContentEncoding::Brotli),
            "zstd" => Ok(ContentEncoding::Zstd),
            "snappy" => Ok(ContentEncoding::Snappy),
            "x-snappy-framed" => Ok(ContentEncoding::SnappyFramed),
            _ => Err(name),
        }
    }

    /// Its name, as a header gives it.
    pub fn name(self) -> &'static str {
        match self {
            ContentEncoding::Identity => "identity",
            ContentEncoding::Gzip => "gzip",
            ContentEncoding::Deflate => "deflate",
            ContentEncoding::Brotli => "br",
            ContentEncoding::Zstd => "zstd",
            ContentEncoding::Snappy => "snappy",
            ContentEncoding::SnappyFramed => "x-snappy-framed",
        }
    }

    /// The decoded body (`None`: it is not encoded), at most `limit` bytes.
    pub fn decode(self, raw: &[u8], limit: usize) -> Result<Option<Vec<u8>>, DecodeError> {
        let read_all = |reader: &mut dyn Read| read_within(reader, limit);
        match self {
            ContentEncoding::Identity => Ok(None),
            ContentEncoding::Gzip => gunzip(raw, limit).map(Some),
            // HTTP's deflate is zlib-wrapped; some clients send raw deflate.
            ContentEncoding::Deflate => read_all(&mut flate2::read::ZlibDecoder::new(raw))
                .or_else(|_| read_all(&mut flate2::read::DeflateDecoder::new(raw)))
                .map(Some),
            ContentEncoding::Brotli => read_all(&mut brotli_decompressor::Decompressor::new(raw, 4096)).map(Some),
            // Every frame of the body, as one stream (RFC 8878 §3.1).
            ContentEncoding::Zstd => {
                read_all(&mut zstd::stream::read::Decoder::new(raw).map_err(DecodeError::Invalid)?).map(Some)
            }
            ContentEncoding::Snappy if !raw.starts_with(SNAPPY_STREAM_IDENTIFIER) => {
                // A block says its length first: checked before anything is allocated.
                let length = snap::raw::decompress_len(raw).map_err(|e| DecodeError::Invalid(e.into()))?;
                if length > limit {
                    return Err(DecodeError::TooLarge);
                }
                snap::raw::Decoder::new().decompress_vec(raw).map(Some).map_err(|e| DecodeError::Invalid(e.into()))
            }
            ContentEncoding::Snappy | ContentEncoding::SnappyFramed => {
                read_all(&mut snap::read::FrameDecoder::new(raw)).map(Some)
            }
        }
    }
}

/// All `reader` gives, decompressing no further than `limit` bytes allow.
fn read_within(reader: &mut dyn Read, limit: usize) -> Result<Vec<u8>, DecodeError> {
    let mut out = Vec::new();
    match reader.take(limit as u64 + 1).read_to_end(&mut out) {
        Ok(_) if out.len() > limit => Err(DecodeError::TooLarge),
        Ok(_) => Ok(out),
        Err(e) => Err(DecodeError::Invalid(e)),
    }
}

/// gzip bytes decompressed (every member, as one stream), at most `limit` bytes of them: request
/// bodies, and what protocols carry gzip'd inside them (a gRPC message, the forward protocol's
/// packed entries).
pub fn gunzip(raw: &[u8], limit: usize) -> Result<Vec<u8>, DecodeError> {
    read_within(&mut flate2::read::MultiGzDecoder::new(raw), limit)
}

/// Where a POST source's common keys are in its table, and what else the source needs of the
/// table besides its keys (its folder, its log), taken before the table is read.
#[derive(Debug)]
pub struct KeyPlaces {
    base_dir: std::path::PathBuf,
    log: LogSlot,
    listen: Range<usize>,
    grpc_listen: Range<usize>,
    /// How the source's secret keys are called, and where they are (else the table).
    secret_keys: SecretKeys,
    secrets: Range<usize>,
    max_body: KeyAt,
    inflight: KeyAt,
    tls: KeyAt,
}

impl KeyPlaces {
    /// The places of `listen`, `max_body_mb`, `max_inflight_mb`, `tls` and the secrets (`keys`) in
    /// `config`.
    pub fn of(config: &ConnectorConfig, keys: SecretKeys) -> Self {
        let table = &config.table;
        KeyPlaces {
            secrets: table.value_span(keys.named).or(table.value_span(keys.single)).unwrap_or(table.span.clone()),
            secret_keys: keys,
            base_dir: config.base_dir.clone(),
            log: LogSlot::for_source(config),
            listen: config.table.value_span("listen").unwrap_or(config.table.span.clone()),
            grpc_listen: config.table.value_span("grpc_listen").unwrap_or(config.table.span.clone()),
            max_body: config.table.key_at("max_body_mb"),
            inflight: config.table.key_at("max_inflight_mb"),
            tls: config.table.key_at("tls"),
        }
    }
}

/// A POST source's common keys as its table gave them.
#[derive(Debug)]
pub struct ListenerKeys {
    /// `listen`.
    pub listen: Option<String>,
    /// `grpc_listen` (a source whose protocol has a gRPC service): where it is served.
    pub grpc_listen: Option<String>,
    /// `max_body_mb`.
    pub max_body_mb: Option<u64>,
    /// `max_inflight_mb`.
    pub max_inflight_mb: Option<u64>,
    /// `tls`.
    pub tls: Option<TlsFiles>,
    /// The one secret (`bearer_token`, `access_key`).
    pub secret: Option<String>,
    /// Named secrets (`bearer_tokens`, `access_keys`): name and secret.
    pub named_secrets: Option<Vec<(String, String)>>,
}

/// What differs between the POST sources: how they describe themselves, their defaults, and the
/// router that answers their requests.
pub struct Protocol {
    /// The start of the source's description (`http: NDJSON`).
    pub what: &'static str,
    /// The listen address when `listen` is not set.
    pub default_listen: &'static str,
    /// `max_body_mb` when not set.
    pub default_body_mb: u64,
    /// Its routes, given the endpoint they take records for.
    pub router: Box<dyn Fn(Arc<PostEndpoint>) -> axum::Router + Send + Sync>,
    /// Its gRPC service's routes, served over HTTP/2 at `grpc_listen` when that is set (OTLP/gRPC).
    pub grpc_router: Option<Box<dyn Fn(Arc<PostEndpoint>) -> axum::Router + Send + Sync>>,
}

impl std::fmt::Debug for Protocol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Protocol").field("what", &self.what).finish()
    }
}

/// What a POST source's requests are checked against and hand their records to.
#[derive(Debug)]
pub struct PostEndpoint {
    /// The secrets a request must carry one of (none: no authentication).
    pub secrets: Secrets,
    max_body: usize,
    bodies: Arc<BodyBudget>,
    body_timeout: Duration,
    queue: Arc<IngestQueue>,
    log: LogSlot,
    metrics: std::sync::OnceLock<Arc<PipelineMetrics>>,
}

impl PostEndpoint {
    /// Where the source may keep state beside its write-ahead log ([`LogSlot::state_file`]).
    pub fn state_file(&self, suffix: &str) -> Option<std::path::PathBuf> {
        self.log.state_file(suffix)
    }

    /// The pipeline's metrics, once the source is prepared.
    pub fn metrics(&self) -> Option<&Arc<PipelineMetrics>> {
        self.metrics.get()
    }

    /// The largest body taken (`max_body_mb`), after decompression.
    pub fn max_body(&self) -> usize {
        self.max_body
    }

    /// The request's body, read within the listener's budget and timeout and decoded by its
    /// `Content-Encoding` (plain, gzip, deflate, br), at most `max_body_mb`. It counts
    /// in the listener's body budget until it is dropped.
    pub async fn read(&self, headers: &HeaderMap, body: Body) -> Result<ReadBody, Refusal> {
        let encoding = ContentEncoding::of(headers).map_err(|name| {
            (
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                format!("Content-Encoding `{name}` is not supported; send the body plain, gzip, deflate or br"),
            )
        })?;
        let too_large = || (StatusCode::PAYLOAD_TOO_LARGE, format!("the body is larger than {} bytes", self.max_body));
        let read = read_body(body, declared_length(headers), self.max_body, &self.bodies, self.body_timeout).await;
        let (raw, room) = match read {
            Ok(read) => read,
            Err(BodyError::TooLarge(_)) => return Err(too_large()),
            Err(e @ BodyError::Busy) => return Err((StatusCode::SERVICE_UNAVAILABLE, e.to_string())),
            Err(e @ BodyError::TimedOut(_)) => return Err((StatusCode::REQUEST_TIMEOUT, e.to_string())),
            Err(e @ BodyError::Broken(_)) => return Err((StatusCode::BAD_REQUEST, e.to_string())),
        };
        match encoding.decode(&raw, self.max_body) {
            Ok(decoded) => Ok(ReadBody { raw, decoded, _room: room }),
            Err(DecodeError::TooLarge) => Err(too_large()),
            Err(DecodeError::Invalid(e)) => {
                Err((StatusCode::BAD_REQUEST, format!("the body is not valid {}: {e}", encoding.name())))
            }
        }
    }
}

/// The records of a body of lines: each line without its line end (`\n` or `\r\n`), empty lines
/// and a UTF-8 byte order mark at the body's start skipped (as the file source reads a file). A
/// line longer than a record may be is a record too: the engine sends it to the error output
/// ([`Source::max_record_bytes`]), so one such line costs its sender none of the others.
pub fn body_lines(body: &[u8]) -> RecordBatch {
    let body = body.strip_prefix(sluice_engine::record::UTF8_BOM).unwrap_or(body);
    let mut batch = RecordBatch::with_capacity(sluice_engine::record::now_ms(), body.len());
    for line in body.split(|b| *b == b'\n') {
        let line = sluice_engine::record::without_line_end(line);
        if !line.is_empty() {
            batch.push(line);
        }
    }
    batch
}

/// What the audit trail records of a request to a source that takes bodies by token: the name of
/// the token it carried, and the records and bytes it brought.
#[derive(Debug, Default)]
pub struct RequestFacts {
    /// The name of the token it carried.
    pub token: Option<String>,
    /// Records in its body.
    pub records: Option<usize>,
    /// Their bytes.
    pub bytes: Option<usize>,
}

impl PostEndpoint {
    /// When the source has tokens, the request's `Authorization: Bearer <token>` must be one of
    /// them (its holder noted in `facts`); else 401.
    pub fn check_bearer(&self, headers: &HeaderMap, facts: &mut RequestFacts) -> Result<(), Refusal> {
        if !self.secrets.required() {
            return Ok(());
        }
        let given =
            headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "));
        match given.and_then(|token| self.secrets.holder(token)) {
            Some(holder) => {
                facts.token = Some(holder.to_string());
                Ok(())
            }
            None => {
                Err((StatusCode::UNAUTHORIZED, "a valid `Authorization: Bearer <token>` header is required".into()))
            }
        }
    }

    /// Records a request in the pipeline's audit trail (when it keeps one) as `event_source`'s
    /// `name`, from `caller`, with `facts`; `refused` is its error code and message.
    pub fn audit_request(
        &self,
        (event_source, name): (&'static str, &str),
        caller: &Caller,
        (uri, headers): (&axum::http::Uri, &HeaderMap),
        facts: &RequestFacts,
        refused: Option<(&str, &str)>,
    ) {
        let Some(metrics) = self.metrics() else { return };
        metrics.audit(|trail| {
            let identity = caller.identity(match &facts.token {
                Some(name) => serde_json::json!({"type": "Token", "tokenName": name}),
                None => serde_json::json!({"type": "Unknown"}),
            });
            let user_agent = headers.get(header::USER_AGENT).and_then(|v| v.to_str().ok());
            let event = sluice_engine::audit::AuditEvent::api_call(
                event_source,
                name,
                trail.region(),
                &uuid::Uuid::new_v4().to_string(),
            )
            .from_caller(Some(caller.address.ip().to_string()), user_agent)
            .identity(identity)
            .parameters(serde_json::json!({"path": uri.path(), "recordCount": facts.records, "bytes": facts.bytes}));
            match refused {
                None => event,
                Some((code, message)) => event.error(code, message),
            }
        });
    }
}

/// A request's body as read, and decoded when it was encoded; its bytes count in the listener's
/// body budget while it lives.
#[derive(Debug)]
pub struct ReadBody {
    raw: bytes::Bytes,
    decoded: Option<Vec<u8>>,
    _room: BodyRoom,
}

impl ReadBody {
    /// The body's bytes, decoded.
    pub fn bytes(&self) -> &[u8] {
        self.decoded.as_deref().unwrap_or(&self.raw)
    }
}

/// Takes `batch` into the pipeline (the records of one request, received from `started`): `Ok`
/// once they are queued and as durable as the pipeline asks, counted as accepted; else why not,
/// and none of them is taken.
pub async fn enqueue(endpoint: &Arc<PostEndpoint>, batch: RecordBatch, started: Instant) -> Result<(), Refusal> {
    let (count, bytes) = (batch.len() as u64, batch.byte_len() as u64);
    let metrics = endpoint.metrics.get();
    if count > 0 {
        // With a log this waits for a group commit: on a blocking thread.
        let target = Arc::clone(endpoint);
        let accepted =
            tokio::task::spawn_blocking(move || accept(&target.queue, target.log.get().as_ref(), batch)).await;
        let unavailable = |message: String| Err((StatusCode::SERVICE_UNAVAILABLE, message));
        match accepted {
            Ok(Ok(())) => {}
            Ok(Err(Rejected::Full)) => {
                if let Some(m) = metrics {
                    m.api.throttled_records.fetch_add(count, Relaxed);
                }
                return unavailable("too much data in flight; retry later".into());
            }
            Ok(Err(Rejected::Closed)) => return unavailable("the pipeline is stopping".into()),
            Ok(Err(Rejected::Log(e))) => return unavailable(format!("the records could not be made durable: {e}")),
            Err(e) => {
                return Err((StatusCode::INTERNAL_SERVER_ERROR, format!("the request could not be handled: {e}")));
            }
        }
    }
    if let Some(m) = metrics {
        m.api.count_accepted(count, bytes);
        m.api.put_record_batch_latency.observe(started.elapsed());
    }
    Ok(())
}

/// A JSON answer with `status`: 503s say when to come back (`Retry-After: 1`).
pub fn json_answer(status: StatusCode, body: &serde_json::Value) -> axum::response::Response {
    use axum::response::IntoResponse as _;
    let mut response = (status, body.to_string()).into_response();
    response.headers_mut().insert(header::CONTENT_TYPE, header::HeaderValue::from_static("application/json"));
    if status == StatusCode::SERVICE_UNAVAILABLE {
        response.headers_mut().insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
    }
    response
}

/// A source that takes records from HTTP POSTs on its own listener.
#[derive(Debug)]
pub struct PostSource {
    listen: SocketAddr,
    grpc_listen: Option<SocketAddr>,
    endpoint: Arc<PostEndpoint>,
    tls: Option<TlsFiles>,
    limits: ListenerLimits,
    protocol: Protocol,
}

impl PostSource {
    /// The source of `protocol` from its table's common keys (`keys`, found at `places`) and its
    /// listener limits (already read); `problems` gets every mistake in them.
    pub fn configure(
        places: KeyPlaces,
        keys: ListenerKeys,
        limits: Option<ListenerLimits>,
        protocol: Protocol,
        mut problems: Problems,
    ) -> Result<Arc<dyn Source>, Problems> {
        let listen =
            problems.take(parse_listen(keys.listen.as_deref(), protocol.default_listen, places.listen.clone()));
        let grpc_listen = problems.take(
            keys.grpc_listen
                .map(|text| {
                    parse_listen(Some(&text), "127.0.0.1:4317", places.grpc_listen.clone()).map_err(|d| {
                        d.with_hint("use host:port with an IP address, e.g. grpc_listen = \"127.0.0.1:4317\"")
                    })
                })
                .transpose(),
        );
        let hint = format!("MB of one request's body (default {})", protocol.default_body_mb);
        let max_body_mb =
            problems.take(places.max_body.within(keys.max_body_mb, protocol.default_body_mb, 1..=1024, &hint));
        // Checked against its own range too when `max_body_mb` is wrong: both are reported at once.
        let inflight = problems.take(inflight_limit(
            keys.max_inflight_mb,
            max_body_mb.unwrap_or(1),
            "max_body_mb",
            &places.inflight,
        ));
        let tls = problems.take(keys.tls.as_ref().map(|t| t.checked(&places.base_dir, &places.tls)).transpose());
        let secrets = problems.take(
            Secrets::from_config(keys.secret, keys.named_secrets, places.secret_keys)
                .map_err(|(message, hint)| Diagnostic::new(places.secrets.clone(), message).with_hint(hint)),
        );
        let (limits, (listen, grpc_listen), max_body_mb, inflight, secrets, tls) =
            problems.finish((|| Some((limits?, (listen?, grpc_listen?), max_body_mb?, inflight?, secrets?, tls?)))())?;
        Ok(Arc::new(PostSource {
            listen,
            grpc_listen,
            endpoint: Arc::new(PostEndpoint {
                secrets,
                max_body: (max_body_mb << 20) as usize,
                bodies: BodyBudget::new(limits.max_body_buffer),
                body_timeout: limits.body_timeout,
                queue: Arc::new(IngestQueue::new(inflight)),
                log: places.log,
                metrics: std::sync::OnceLock::new(),
            }),
            tls,
            limits,
            protocol,
        }))
    }
}

impl Source for PostSource {
    fn describe(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        let auth = self.endpoint.secrets.describe();
        let grpc = match self.grpc_listen {
            Some(address) => format!(", gRPC on {scheme}://{address}"),
            None => String::new(),
        };
        format!("{} on {scheme}://{}{grpc} ({auth})", self.protocol.what, self.listen)
    }

    fn is_finite(&self) -> bool {
        false
    }

    /// Firehose's: a record over it goes to the error output.
    fn max_record_bytes(&self) -> Option<usize> {
        Some(super::firehose::MAX_RECORD_BYTES)
    }

    /// The addresses, and the log's encryption key when it has one ([`LogSlot::check`]).
    fn check(&self) -> Option<futures::future::BoxFuture<'static, Result<(), SourceError>>> {
        let (first, grpc) = (self.endpoint.log.check_with_listener(self.listen), self.grpc_listen);
        Some(Box::pin(async move {
            if let Some(address) = grpc {
                super::listener::check_listen(address)?;
            }
            match first {
                Some(check) => check.await,
                None => Ok(()),
            }
        }))
    }

    fn prepare(&self, ctx: &PrepareContext) -> Result<(), SourceError> {
        let secrets = &self.endpoint.secrets;
        let how = format!("set `{}` (or `{}`)", secrets.keys.single, secrets.keys.named);
        for address in std::iter::once(self.listen).chain(self.grpc_listen) {
            let authenticated = secrets.required() || self.tls.as_ref().is_some_and(TlsFiles::verifies_clients);
            if let Some(warning) = open_listener_warning(self.protocol.what, address, authenticated, &how) {
                tracing::warn!("{warning}");
            }
        }
        let _ = self.endpoint.metrics.set(Arc::clone(&ctx.metrics));
        if let Some(log) = self.endpoint.log.open(&self.endpoint.queue, &ctx.metrics)? {
            log.follow(Arc::clone(&ctx.delivered), Arc::clone(&ctx.metrics));
        }
        let router =
            (self.protocol.router)(Arc::clone(&self.endpoint)).layer(axum::extract::DefaultBodyLimit::disable());
        let grpc = match (self.grpc_listen, &self.protocol.grpc_router) {
            (Some(address), Some(grpc_router)) => Some((
                bind(address)?,
                grpc_router(Arc::clone(&self.endpoint)).layer(axum::extract::DefaultBodyLimit::disable()),
            )),
            _ => None,
        };
        let listener = bind(self.listen)?;
        // The queue closes once every server of the source has ended (each has queued all it
        // acknowledged by then).
        let servers = Arc::new(std::sync::atomic::AtomicUsize::new(1 + usize::from(grpc.is_some())));
        let last_to_end = |servers: Arc<std::sync::atomic::AtomicUsize>, queue: Arc<IngestQueue>| {
            move || {
                if servers.fetch_sub(1, std::sync::atomic::Ordering::SeqCst) == 1 { vec![queue] } else { Vec::new() }
            }
        };
        let tls = self.tls.as_ref().map(|files| files.served_for(ctx));
        if let Some((listener, router)) = grpc {
            let closer = last_to_end(Arc::clone(&servers), Arc::clone(&self.endpoint.queue));
            serve(&ctx.runtime, listener, router, tls.clone(), (self.limits, Wire::Http2), ctx.stop.clone(), closer)?;
        }
        let closer = last_to_end(servers, Arc::clone(&self.endpoint.queue));
        serve(&ctx.runtime, listener, router, tls, (self.limits, Wire::Http1), ctx.stop.clone(), closer)
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

/// A conformance-kit producer for a source that takes POST bodies: `records` POSTed to `url` in
/// requests of 700, each body made by `body`, with `headers`; an error when one is refused.
#[cfg(test)]
pub fn posting_producer(
    url: String,
    headers: &'static [(&'static str, &'static str)],
    records: Vec<Vec<u8>>,
    body: fn(&[Vec<u8>]) -> Vec<u8>,
) -> sluice_engine::testkit::source::Producer {
    Box::new(move || {
        let client = reqwest::blocking::Client::new();
        for chunk in records.chunks(700) {
            let mut request = client.post(&url).body(body(chunk));
            for (name, value) in headers {
                request = request.header(*name, *value);
            }
            let response = request.send().map_err(|e| e.to_string())?;
            if !response.status().is_success() {
                return Err(format!("refused: {}", response.status()));
            }
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEYS: SecretKeys = SecretKeys {
        single: "bearer_token",
        named: "bearer_tokens",
        what: "bearer token",
        example: "{ name = \"a\", token = \"x\" }",
    };

    #[test]
    fn each_named_secret_is_known_by_its_holder_and_nothing_else_is() {
        let named = |name: &str, secret: &str| (name.to_string(), secret.to_string());
        let secrets =
            Secrets::from_config(None, Some(vec![named("shipper-a", "tok-a"), named("shipper-b", "tok-b")]), KEYS)
                .unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!(secrets.holder("tok-a"), Some("shipper-a"));
        assert_eq!(secrets.holder("tok-b"), Some("shipper-b"));
        assert_eq!(secrets.holder("tok-"), None);
        assert_eq!(secrets.holder(""), None);
        assert_eq!(secrets.describe(), "bearer tokens `shipper-a`, `shipper-b`");
        let single = Secrets::from_config(Some("t".into()), None, KEYS).unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!(single.holder("t"), Some("default"));
        assert_eq!(single.describe(), "bearer token `default`");
        assert_eq!(Secrets::default().describe(), "no auth");
        let refused = |single: Option<&str>, named: Option<Vec<(String, String)>>| {
            Secrets::from_config(single.map(str::to_string), named, KEYS).err().map(|(message, _)| message)
        };
        assert!(refused(Some("t"), Some(vec![named("a", "x")])).is_some_and(|m| m.contains("both set")));
        assert!(refused(None, Some(vec![])).is_some_and(|m| m.contains("is empty")));
        assert!(refused(None, Some(vec![named("a", "x"), named("a", "y")])).is_some_and(|m| m.contains("share")));
        assert!(refused(None, Some(vec![named("a", "x"), named("b", "x")])).is_some_and(|m| m.contains("share")));
        assert!(refused(None, Some(vec![named("", "x")])).is_some_and(|m| m.contains("empty name or value")));
    }

    #[test]
    fn bodies_decode_by_their_encoding_within_the_limit() {
        use std::io::Write as _;
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(&[b'a'; 1000]).unwrap_or_else(|e| panic!("{e}"));
        let gz = gz.finish().unwrap_or_else(|e| panic!("{e}"));
        let decoded = ContentEncoding::Gzip.decode(&gz, 1000).unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!(decoded.map(|d| d.len()), Some(1000));
        assert!(matches!(ContentEncoding::Gzip.decode(&gz, 999), Err(DecodeError::TooLarge)));
        assert!(matches!(ContentEncoding::Gzip.decode(b"not gzip", 999), Err(DecodeError::Invalid(_))));
        let zstd = zstd::encode_all(&[b'a'; 1000][..], 3).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(ContentEncoding::Zstd.decode(&zstd, 1000).ok().flatten().map(|d| d.len()), Some(1000));
        assert!(matches!(ContentEncoding::Zstd.decode(&zstd, 999), Err(DecodeError::TooLarge)));
        let mut headers = HeaderMap::new();
        headers.insert(header::CONTENT_ENCODING, header::HeaderValue::from_static("zstd"));
        assert_eq!(ContentEncoding::of(&headers), Ok(ContentEncoding::Zstd));
        headers.insert(header::CONTENT_ENCODING, header::HeaderValue::from_static("compress"));
        assert_eq!(ContentEncoding::of(&headers), Err("compress".to_string()));
    }

    /// `snappy` is a raw block or the framed stream, told apart by the stream's identifier (as
    /// the OpenTelemetry Collector's receivers tell them); `x-snappy-framed` is the framed stream;
    /// a block's declared length is held to the limit before anything is decompressed.
    #[test]
    fn snappy_bodies_decode_as_blocks_or_framed_streams() {
        use std::io::Write as _;
        let text = b"{\"resourceLogs\":[]}\n".repeat(50);
        let block = snap::raw::Encoder::new().compress_vec(&text).unwrap_or_else(|e| panic!("{e}"));
        let mut framed = snap::write::FrameEncoder::new(Vec::new());
        framed.write_all(&text).unwrap_or_else(|e| panic!("{e}"));
        let framed = framed.into_inner().unwrap_or_else(|e| panic!("{e}"));
        assert!(framed.starts_with(SNAPPY_STREAM_IDENTIFIER));
        let decoded = |encoding: ContentEncoding, raw: &[u8], limit: usize| encoding.decode(raw, limit);
        for (encoding, raw) in [
            (ContentEncoding::Snappy, &block),
            (ContentEncoding::Snappy, &framed),
            (ContentEncoding::SnappyFramed, &framed),
        ] {
            let out = decoded(encoding, raw, text.len()).unwrap_or_else(|e| panic!("{encoding:?}: {e:?}"));
            assert_eq!(out.as_deref(), Some(&text[..]), "{encoding:?}");
            assert!(matches!(decoded(encoding, raw, text.len() - 1), Err(DecodeError::TooLarge)), "{encoding:?}");
        }
        assert!(matches!(decoded(ContentEncoding::SnappyFramed, &block, 10_000), Err(DecodeError::Invalid(_))));
        assert!(matches!(
            decoded(ContentEncoding::Snappy, b"\xff\xff\xff\xff\x0f", 10_000),
            Err(DecodeError::TooLarge)
        ));
        assert!(matches!(decoded(ContentEncoding::Snappy, b"\x05ab", 10_000), Err(DecodeError::Invalid(_))));
        for (name, encoding) in [
            ("snappy", ContentEncoding::Snappy),
            ("X-Snappy-Framed", ContentEncoding::SnappyFramed),
            (" deflate ", ContentEncoding::Deflate),
        ] {
            assert_eq!(ContentEncoding::named(name), Ok(encoding));
        }
        assert_eq!(ContentEncoding::named("lz4"), Err("lz4".to_string()));
    }
}

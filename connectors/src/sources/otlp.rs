//! `type = "otlp"`: OpenTelemetry logs over OTLP/HTTP and OTLP/gRPC, so that the OpenTelemetry
//! Collector's `otlphttp` and `otlp` exporters, every OpenTelemetry SDK's OTLP log exporter, and
//! the agents that speak OTLP (Fluent Bit's and Vector's `opentelemetry` outputs) deliver into a
//! pipeline with nothing changed but the endpoint.
//!
//! ```toml
//! [sources.otel]
//! type = "otlp"
//! listen = "127.0.0.1:4318"              # OTLP/HTTP's port
//! grpc_listen = "127.0.0.1:4317"         # optional: OTLP/gRPC served there too (HTTP/2)
//! bearer_token = "${OTLP_TOKEN}"         # optional: then `Authorization: Bearer <token>` is required
//! # bearer_tokens = [{ name = "collector-eu", token = "${TOKEN_EU}" }]
//! max_body_mb = 16
//! max_inflight_mb = 256
//! tls = { cert = "...", key = "..." }    # optional
//! ```
//!
//! `POST /v1/logs` takes an `ExportLogsServiceRequest` as the OTLP specification (1.x, "OTLP/HTTP")
//! defines it: binary protobuf (`Content-Type: application/x-protobuf`) or its JSON encoding
//! (`application/json`: hex trace and span ids, 64-bit integers as strings or numbers), plain or
//! `gzip` (and the other encodings of the http source). Each log record is one record, a JSON
//! object with the fields of OpenTelemetry's log data model: `timestamp` and `observed_timestamp`
//! (RFC 3339 with nanoseconds, null when unset), `severity_text`, `severity_number`, `body` (its
//! `AnyValue` as JSON: strings, numbers, booleans, arrays, objects as they are; bytes in base64; a
//! double that is not finite as the string `NaN`, `Infinity` or `-Infinity`), `attributes`,
//! `resource` (the resource's attributes) and `instrumentation_scope` (`name`, `version`,
//! `attributes`) as objects, `trace_id` and `span_id` (hex, null when unset), `trace_flags`,
//! `event_name` (null when unset) and `dropped_attributes_count`. The answer is the specification's:
//! `200` with an empty `ExportLogsServiceResponse` in the request's encoding, once the records are
//! queued and as durable as the pipeline asks; `400` with a `google.rpc.Status` (code 3,
//! `INVALID_ARGUMENT`, and why) for a body that does not decode or a record over 1,000 KiB; `401`
//! (token), `404` for another signal's path (`/v1/traces`, `/v1/metrics`) or OTLP/gRPC's (the
//! answer says to send gRPC to `grpc_listen`), `415` for another `Content-Type`, `503` with
//! `Retry-After` when busy or stopping (which OTLP clients retry). A request is taken whole or not
//! at all.
//!
//! With `grpc_listen`, the same records come from OTLP/gRPC's `LogsService/Export` (unary) on
//! HTTP/2: cleartext with prior knowledge (the exporters' `insecure`), or TLS with `tls`, offering
//! `h2` in the handshake. The request is one length-prefixed protobuf message, gzip'd when its flag
//! says so (`grpc-encoding: gzip`); the bearer token comes as `authorization` metadata. The answer
//! is an empty `ExportLogsServiceResponse` with `grpc-status: 0` once the records are queued and as
//! durable as the pipeline asks, or the refusal's status: `UNAUTHENTICATED` (16), `INVALID_ARGUMENT`
//! (3: a message that does not decode, a record over 1,000 KiB), `UNIMPLEMENTED` (12: another
//! service or method, another `grpc-encoding`), `UNAVAILABLE` (14: busy or stopping, which
//! exporters retry). A connection silent for `idle_timeout_s` is closed.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use opentelemetry_proto::tonic::collector::logs::v1::{ExportLogsServiceRequest, ExportLogsServiceResponse};
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use prost::Message as _;
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Value, json};
use sluice_engine::config::{ConnectorConfig, Problems};
use sluice_engine::contract::Source;
use sluice_engine::record::{RecordBatch, now_ms};

use crate::api::firehose::MAX_RECORD_BYTES;
use crate::api::post::{
    BEARER_TOKENS, DecodeError, KeyPlaces, ListenerKeys, NamedToken, PostEndpoint, PostSource, Protocol, Refusal,
    RequestFacts, enqueue,
};
use crate::api::{ListenerLimits, TlsFiles};

/// `eventSource` of the audit trail's records of requests to this source.
const OTLP_EVENT_SOURCE: &str = "otlp.sluice";
/// `google.rpc.Code` `INVALID_ARGUMENT`, of a request whose data does not decode.
const INVALID_ARGUMENT: i32 = 3;
/// `google.rpc.Code` `UNAVAILABLE`, of a request to retry.
const UNAVAILABLE: i32 = 14;
/// `google.rpc.Code` `UNAUTHENTICATED`.
const UNAUTHENTICATED: i32 = 16;
/// `google.rpc.Code` `UNIMPLEMENTED`.
const UNIMPLEMENTED: i32 = 12;
/// OTLP/gRPC's method for logs.
const GRPC_EXPORT_LOGS: &str = "/opentelemetry.proto.collector.logs.v1.LogsService/Export";

/// The source's own keys.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct OtlpConfig {
    /// Address to listen on (default `127.0.0.1:4318`).
    listen: Option<String>,
    /// Where OTLP/gRPC is served too (none unless set; its port is 4317).
    grpc_listen: Option<String>,
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

/// Builds the source from `[sources.<name>]`.
pub fn configure(mut config: ConnectorConfig) -> Result<Arc<dyn Source>, Problems> {
    let places = KeyPlaces::of(&config, BEARER_TOKENS);
    let mut problems = Problems::default();
    let limits = ListenerLimits::take_from(&mut config.table, 1, &mut problems);
    let Some(c) = config.table.deserialize::<OtlpConfig>(&mut problems) else { return Err(problems) };
    let keys = ListenerKeys {
        listen: c.listen,
        grpc_listen: c.grpc_listen,
        max_body_mb: c.max_body_mb,
        max_inflight_mb: c.max_inflight_mb,
        tls: c.tls,
        secret: c.bearer_token,
        named_secrets: c.bearer_tokens.map(NamedToken::pairs),
    };
    let protocol = Protocol {
        what: "otlp: OpenTelemetry logs over OTLP/HTTP",
        default_listen: "127.0.0.1:4318",
        default_body_mb: 16,
        router: Box::new(|endpoint| {
            axum::Router::new()
                .route("/v1/logs", axum::routing::post(receive))
                .fallback(|uri: Uri| async move {
                    let message = if uri.path().starts_with("/opentelemetry.proto.collector.") {
                        "OTLP/gRPC is not served on this address: give the source `grpc_listen` (4317 is \
                         gRPC's port) and send gRPC there, or set the exporter's protocol to http/protobuf \
                         (OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf; the Collector's otlphttp exporter) and its \
                         endpoint to this address, whose path is /v1/logs"
                            .to_string()
                    } else {
                        format!(
                            "this source takes OpenTelemetry logs at POST /v1/logs, not {}: send traces and metrics elsewhere",
                            uri.path()
                        )
                    };
                    status_answer(Encoding::Json, StatusCode::NOT_FOUND, 5, &message)
                })
                .with_state(endpoint)
        }),
        grpc_router: Some(Box::new(|endpoint| {
            axum::Router::new()
                .route(GRPC_EXPORT_LOGS, axum::routing::post(receive_grpc))
                .fallback(|uri: Uri| async move {
                    grpc_status(UNIMPLEMENTED, &format!("{} is not served: only {GRPC_EXPORT_LOGS}", uri.path()))
                })
                .with_state(endpoint)
        })),
    };
    PostSource::configure(places, keys, limits, protocol, problems)
}

/// How a request's body (and so its answer) is encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Encoding {
    Protobuf,
    Json,
}

impl Encoding {
    /// The encoding a request's `Content-Type` names, or why it is none of OTLP's.
    fn of(headers: &HeaderMap) -> Result<Self, String> {
        let given = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or_default();
        let media_type = given.split(';').next().unwrap_or_default().trim().to_ascii_lowercase();
        match media_type.as_str() {
            "application/x-protobuf" | "application/protobuf" => Ok(Encoding::Protobuf),
            "application/json" => Ok(Encoding::Json),
            other => Err(format!(
                "`Content-Type: {other}` is not OTLP/HTTP's: send `application/x-protobuf` or `application/json`"
            )),
        }
    }

    fn content_type(self) -> &'static str {
        match self {
            Encoding::Protobuf => "application/x-protobuf",
            Encoding::Json => "application/json",
        }
    }
}

/// `google.rpc.Status`, the body of OTLP/HTTP's error answers.
#[derive(Clone, PartialEq, prost::Message, serde::Serialize)]
struct Status {
    #[prost(int32, tag = "1")]
    code: i32,
    #[prost(string, tag = "2")]
    message: String,
}

/// An answer of `status` with a `google.rpc.Status` of `code` and `message` in `encoding` (503s
/// with `Retry-After`).
fn status_answer(encoding: Encoding, status: StatusCode, code: i32, message: &str) -> Response {
    let rpc = Status { code, message: message.to_string() };
    let body = match encoding {
        Encoding::Protobuf => rpc.encode_to_vec(),
        Encoding::Json => serde_json::to_vec(&rpc).unwrap_or_default(),
    };
    let mut response = (status, body).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, header::HeaderValue::from_static(encoding.content_type()));
    if status == StatusCode::SERVICE_UNAVAILABLE {
        headers.insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
    }
    response
}

/// An attribute list as a JSON object (a key given twice: its last value).
fn attributes(list: &[KeyValue]) -> Value {
    Value::Object(list.iter().map(|kv| (kv.key.clone(), any_value(kv.value.as_ref()))).collect())
}

/// An `AnyValue` as JSON.
fn any_value(value: Option<&AnyValue>) -> Value {
    use any_value::Value as V;
    match value.and_then(|v| v.value.as_ref()) {
        None => Value::Null,
        Some(V::StringValue(s)) => Value::String(s.clone()),
        Some(V::BoolValue(b)) => Value::Bool(*b),
        Some(V::IntValue(i)) => Value::from(*i),
        Some(V::DoubleValue(d)) => serde_json::Number::from_f64(*d).map_or_else(
            || {
                Value::String(if d.is_nan() {
                    "NaN".into()
                } else if *d > 0.0 {
                    "Infinity".into()
                } else {
                    "-Infinity".into()
                })
            },
            Value::Number,
        ),
        Some(V::ArrayValue(array)) => Value::Array(array.values.iter().map(|v| any_value(Some(v))).collect()),
        Some(V::KvlistValue(list)) => attributes(&list.values),
        // An index into a profile's string table: only profiles use it, and a log has none.
        Some(V::StringValueStrindex(_)) => Value::Null,
        Some(V::BytesValue(bytes)) => {
            use base64::Engine as _;
            Value::String(base64::engine::general_purpose::STANDARD.encode(bytes))
        }
    }
}

/// Nanoseconds since the epoch as RFC 3339 (`2026-12-07T13:00:00.123456789Z`); null when unset (0).
fn time_of(nanos: u64) -> Value {
    match i64::try_from(nanos) {
        Ok(0) | Err(_) => Value::Null,
        Ok(nanos) => Value::String(
            chrono::DateTime::from_timestamp_nanos(nanos).to_rfc3339_opts(chrono::SecondsFormat::Nanos, true),
        ),
    }
}

/// A string field as JSON: null when empty (unset, in protobuf's terms).
fn text_or_null(text: &str) -> Value {
    if text.is_empty() { Value::Null } else { Value::String(text.to_string()) }
}

/// Bytes as lowercase hex; null when empty (an unset trace or span id).
fn hex_of(bytes: &[u8]) -> Value {
    if bytes.is_empty() {
        return Value::Null;
    }
    Value::String(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// A log record as the JSON object it becomes: its keys in alphabetical order (as a JSON map
/// writes them), its resource and scope made JSON text once for all their records.
#[derive(serde::Serialize)]
struct LogJson<'a> {
    attributes: Value,
    body: Value,
    dropped_attributes_count: u32,
    event_name: Value,
    instrumentation_scope: &'a RawValue,
    observed_timestamp: Value,
    resource: &'a RawValue,
    severity_number: i32,
    severity_text: Value,
    span_id: Value,
    timestamp: Value,
    trace_flags: u32,
    trace_id: Value,
}

/// `value` as JSON text, kept to be written into each record as it is.
fn raw(value: &Value) -> Box<RawValue> {
    RawValue::from_string(value.to_string()).unwrap_or_else(|_| RawValue::NULL.to_owned())
}

/// The records of a request: each log record as a JSON object of the log data model; or why a
/// record cannot be one.
fn records(request: &ExportLogsServiceRequest) -> Result<RecordBatch, String> {
    let mut batch = RecordBatch::with_capacity(now_ms(), 0);
    let mut text = Vec::new();
    for resource_logs in &request.resource_logs {
        let resource = raw(&resource_logs.resource.as_ref().map_or(json!({}), |r| attributes(&r.attributes)));
        for scope_logs in &resource_logs.scope_logs {
            let scope =
                raw(&scope_logs.scope.as_ref().map_or(json!({"name": null, "version": null, "attributes": {}}), |s| {
                    json!({
                        "name": text_or_null(&s.name),
                        "version": text_or_null(&s.version),
                        "attributes": attributes(&s.attributes),
                    })
                }));
            for log in &scope_logs.log_records {
                let record = LogJson {
                    attributes: attributes(&log.attributes),
                    body: any_value(log.body.as_ref()),
                    dropped_attributes_count: log.dropped_attributes_count,
                    event_name: text_or_null(&log.event_name),
                    instrumentation_scope: &scope,
                    observed_timestamp: time_of(log.observed_time_unix_nano),
                    resource: &resource,
                    severity_number: log.severity_number,
                    severity_text: text_or_null(&log.severity_text),
                    span_id: hex_of(&log.span_id),
                    timestamp: time_of(log.time_unix_nano),
                    trace_flags: log.flags,
                    trace_id: hex_of(&log.trace_id),
                };
                text.clear();
                serde_json::to_writer(&mut text, &record)
                    .map_err(|e| format!("log record {}: {e}", batch.len() + 1))?;
                if text.len() > MAX_RECORD_BYTES {
                    return Err(format!(
                        "log record {} is {} bytes as JSON; a record is at most {MAX_RECORD_BYTES}",
                        batch.len() + 1,
                        text.len()
                    ));
                }
                batch.push(&text);
            }
        }
    }
    Ok(batch)
}

/// The request a body holds, in `encoding`.
fn decode(encoding: Encoding, body: &[u8]) -> Result<ExportLogsServiceRequest, String> {
    match encoding {
        Encoding::Protobuf => ExportLogsServiceRequest::decode(body)
            .map_err(|e| format!("the body is no protobuf ExportLogsServiceRequest: {e}")),
        Encoding::Json => serde_json::from_slice(body)
            .map_err(|e| format!("the body is no ExportLogsServiceRequest in OTLP's JSON encoding: {e}")),
    }
}

async fn receive(
    State(endpoint): State<Arc<PostEndpoint>>,
    ConnectInfo(caller): ConnectInfo<SocketAddr>,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let mut facts = RequestFacts::default();
    // An answer is in the request's encoding; one that names none of OTLP's is answered in JSON.
    let encoding = Encoding::of(&headers);
    let answer_in = *encoding.as_ref().unwrap_or(&Encoding::Json);
    let outcome = match encoding {
        Ok(encoding) => take(encoding, &endpoint, &headers, body, &mut facts).await,
        Err(why) => Err((StatusCode::UNSUPPORTED_MEDIA_TYPE, why)),
    };
    let refused = outcome
        .as_ref()
        .err()
        .map(|(status, message)| (status.canonical_reason().unwrap_or("Error"), message.as_str()));
    endpoint.audit_request((OTLP_EVENT_SOURCE, "ExportLogs"), caller, (&uri, &headers), &facts, refused);
    match outcome {
        Ok(()) => {
            let body = match answer_in {
                Encoding::Protobuf => ExportLogsServiceResponse::default().encode_to_vec(),
                Encoding::Json => b"{}".to_vec(),
            };
            let mut response = (StatusCode::OK, body).into_response();
            response
                .headers_mut()
                .insert(header::CONTENT_TYPE, header::HeaderValue::from_static(answer_in.content_type()));
            response
        }
        Err((status, message)) => {
            let code = match status {
                StatusCode::UNAUTHORIZED => UNAUTHENTICATED,
                s if s.is_server_error() => UNAVAILABLE,
                _ => INVALID_ARGUMENT,
            };
            status_answer(answer_in, status, code, &message)
        }
    }
}

/// Takes one request's log records, or says why not.
async fn take(
    encoding: Encoding,
    endpoint: &Arc<PostEndpoint>,
    headers: &HeaderMap,
    body: Body,
    facts: &mut RequestFacts,
) -> Result<(), Refusal> {
    let started = Instant::now();
    endpoint.check_bearer(headers, facts)?;
    let body = endpoint.read(headers, body).await?;
    let request = decode(encoding, body.bytes()).map_err(|why| (StatusCode::BAD_REQUEST, why))?;
    let batch = records(&request).map_err(|why| (StatusCode::BAD_REQUEST, why))?;
    (facts.records, facts.bytes) = (Some(batch.len()), Some(batch.byte_len()));
    enqueue(endpoint, batch, started).await
}

/// OTLP/gRPC's `LogsService/Export` (unary): one length-prefixed `ExportLogsServiceRequest`,
/// compressed as `grpc-encoding` says when its flag is set; answered with an empty
/// `ExportLogsServiceResponse` and `grpc-status: 0` once the records are queued and as durable as
/// the pipeline asks, or with the status of the refusal (`UNAUTHENTICATED`, `INVALID_ARGUMENT`,
/// `UNAVAILABLE` for what to retry).
async fn receive_grpc(
    State(endpoint): State<Arc<PostEndpoint>>,
    ConnectInfo(caller): ConnectInfo<SocketAddr>,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let mut facts = RequestFacts::default();
    let outcome = take_grpc(&endpoint, &headers, body, &mut facts).await;
    let refused = outcome.as_ref().err().map(|(code, message)| (grpc_code_name(*code), message.as_str()));
    endpoint.audit_request((OTLP_EVENT_SOURCE, "ExportLogs"), caller, (&uri, &headers), &facts, refused);
    match outcome {
        Ok(()) => {
            use http_body_util::BodyExt as _;
            // The empty response, length-prefixed, then the status as trailers.
            let message = ExportLogsServiceResponse::default().encode_to_vec();
            let mut framed = vec![0u8];
            framed.extend_from_slice(&u32::try_from(message.len()).unwrap_or(0).to_be_bytes());
            framed.extend_from_slice(&message);
            let mut trailers = HeaderMap::new();
            trailers.insert("grpc-status", header::HeaderValue::from_static("0"));
            let body =
                http_body_util::Full::new(bytes::Bytes::from(framed)).with_trailers(async move { Some(Ok(trailers)) });
            let mut response = Response::new(Body::new(body));
            response.headers_mut().insert(header::CONTENT_TYPE, header::HeaderValue::from_static("application/grpc"));
            response
        }
        Err((code, message)) => grpc_status(code, &message),
    }
}

/// A gRPC "trailers-only" answer: HTTP 200 with `grpc-status` and `grpc-message`, no message.
fn grpc_status(code: i32, message: &str) -> Response {
    let mut response = Response::new(Body::empty());
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, header::HeaderValue::from_static("application/grpc"));
    headers.insert("grpc-status", header::HeaderValue::from(code));
    // gRPC's percent-encoding of the message (its unreserved set: printable ASCII but `%`).
    const GRPC_MESSAGE: &percent_encoding::AsciiSet = &percent_encoding::CONTROLS.add(b'%').add(0x7f);
    let encoded = percent_encoding::utf8_percent_encode(message, GRPC_MESSAGE).to_string();
    if let Ok(value) = header::HeaderValue::from_str(&encoded) {
        headers.insert("grpc-message", value);
    }
    response
}

/// A gRPC status code's name, as the audit trail says it.
fn grpc_code_name(code: i32) -> &'static str {
    match code {
        INVALID_ARGUMENT => "INVALID_ARGUMENT",
        UNIMPLEMENTED => "UNIMPLEMENTED",
        UNAVAILABLE => "UNAVAILABLE",
        UNAUTHENTICATED => "UNAUTHENTICATED",
        _ => "UNKNOWN",
    }
}

/// Takes one gRPC request's log records, or says why not with a gRPC status code.
async fn take_grpc(
    endpoint: &Arc<PostEndpoint>,
    headers: &HeaderMap,
    body: Body,
    facts: &mut RequestFacts,
) -> Result<(), (i32, String)> {
    // 4xx refusals are the request's fault; 503 and other 5xx are to be retried.
    let as_grpc = |(status, message): Refusal| match status {
        StatusCode::UNAUTHORIZED => (UNAUTHENTICATED, message),
        s if s.is_server_error() => (UNAVAILABLE, message),
        _ => (INVALID_ARGUMENT, message),
    };
    let started = Instant::now();
    let content_type = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or_default();
    if !content_type.starts_with("application/grpc") {
        return Err((INVALID_ARGUMENT, format!("`content-type: {content_type}` is not gRPC's (application/grpc)")));
    }
    endpoint.check_bearer(headers, facts).map_err(as_grpc)?;
    let body = endpoint.read(headers, body).await.map_err(as_grpc)?;
    let message = grpc_message(body.bytes(), headers, endpoint.max_body())?;
    let request = ExportLogsServiceRequest::decode(message.as_ref())
        .map_err(|e| (INVALID_ARGUMENT, format!("the message is no protobuf ExportLogsServiceRequest: {e}")))?;
    let batch = records(&request).map_err(|why| (INVALID_ARGUMENT, why))?;
    (facts.records, facts.bytes) = (Some(batch.len()), Some(batch.byte_len()));
    enqueue(endpoint, batch, started).await.map_err(as_grpc)
}

/// The one message of a unary gRPC request body (`[compressed flag][length, 4 bytes][message]`),
/// decompressed by `grpc-encoding` when flagged, at most `max` bytes.
fn grpc_message<'a>(
    body: &'a [u8],
    headers: &HeaderMap,
    max: usize,
) -> Result<std::borrow::Cow<'a, [u8]>, (i32, String)> {
    let invalid = |why: String| (INVALID_ARGUMENT, why);
    let (Some(&flag), Some(length)) = (body.first(), body.get(1..5)) else {
        return Err(invalid("the body is not a gRPC length-prefixed message".into()));
    };
    let length = u32::from_be_bytes([length[0], length[1], length[2], length[3]]) as usize;
    let message = body.get(5..).filter(|m| m.len() == length).ok_or_else(|| {
        invalid(format!(
            "the body holds {} bytes after its prefix, which says {length} (one message)",
            body.len().saturating_sub(5)
        ))
    })?;
    if flag == 0 {
        return Ok(std::borrow::Cow::Borrowed(message));
    }
    let encoding = headers.get("grpc-encoding").and_then(|v| v.to_str().ok()).unwrap_or("identity");
    if encoding != "gzip" {
        return Err((UNIMPLEMENTED, format!("grpc-encoding `{encoding}` is not supported: send gzip or none")));
    }
    match crate::api::post::gunzip(message, max) {
        Ok(out) => Ok(std::borrow::Cow::Owned(out)),
        Err(DecodeError::TooLarge) => Err(invalid(format!("the message is larger than {max} bytes once decompressed"))),
        Err(DecodeError::Invalid(e)) => Err(invalid(format!("the message is not valid gzip: {e}"))),
    }
}

#[cfg(test)]
mod tests {
    use opentelemetry_proto::tonic::common::v1::{ArrayValue, InstrumentationScope, KeyValueList};
    use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
    use opentelemetry_proto::tonic::resource::v1::Resource;

    use super::*;

    fn text(value: &str) -> Option<AnyValue> {
        Some(AnyValue { value: Some(any_value::Value::StringValue(value.into())) })
    }

    fn pair(key: &str, value: any_value::Value) -> KeyValue {
        KeyValue { key: key.into(), value: Some(AnyValue { value: Some(value) }), ..Default::default() }
    }

    fn texts(batch: &RecordBatch) -> Vec<Value> {
        batch.iter().map(|r| serde_json::from_slice(r).unwrap()).collect()
    }

    /// A request as an SDK builds it, through protobuf: each log record one object of the log
    /// data model, its resource and scope with it; every kind of `AnyValue` as JSON.
    #[test]
    fn a_protobuf_request_gives_each_log_record_with_its_resource_and_scope() {
        use any_value::Value as V;
        let body = AnyValue {
            value: Some(V::KvlistValue(KeyValueList {
                values: vec![
                    pair("n", V::IntValue(-9_007_199_254_740_993)),
                    pair("ok", V::BoolValue(true)),
                    pair("ratio", V::DoubleValue(0.25)),
                    pair("bad", V::DoubleValue(f64::NAN)),
                    pair("raw", V::BytesValue(b"\x00\xff".to_vec())),
                    pair(
                        "list",
                        V::ArrayValue(ArrayValue { values: vec![text("a").unwrap(), AnyValue { value: None }] }),
                    ),
                ],
            })),
        };
        let request = ExportLogsServiceRequest {
            resource_logs: vec![ResourceLogs {
                resource: Some(Resource {
                    attributes: vec![pair("service.name", V::StringValue("checkout".into()))],
                    ..Default::default()
                }),
                scope_logs: vec![ScopeLogs {
                    scope: Some(InstrumentationScope {
                        name: "app.payments".into(),
                        version: "1.2.0".into(),
                        ..Default::default()
                    }),
                    log_records: vec![
                        LogRecord {
                            time_unix_nano: 1_764_547_200_123_456_789,
                            observed_time_unix_nano: 1_764_547_200_200_000_000,
                            severity_number: 17,
                            severity_text: "ERROR".into(),
                            body: text("payment declined"),
                            attributes: vec![pair("http.status_code", V::IntValue(402))],
                            flags: 1,
                            trace_id: vec![
                                0x5b, 0x8e, 0xff, 0xf7, 0x98, 0x03, 0x81, 0x03, 0xd2, 0x69, 0xb6, 0x33, 0x81, 0x3f,
                                0xc6, 0x0c,
                            ],
                            span_id: vec![0xee, 0xe1, 0x9b, 0x7e, 0xc3, 0xc1, 0xb1, 0x74],
                            event_name: "payment.declined".into(),
                            ..Default::default()
                        },
                        LogRecord { body: Some(body), ..Default::default() },
                    ],
                    ..Default::default()
                }],
                ..Default::default()
            }],
        };
        let decoded = decode(Encoding::Protobuf, &request.encode_to_vec()).unwrap();
        let records = texts(&records(&decoded).unwrap());
        assert_eq!(
            records[0],
            json!({
                "timestamp": "2025-12-01T00:00:00.123456789Z", "observed_timestamp": "2025-12-01T00:00:00.200000000Z",
                "severity_text": "ERROR", "severity_number": 17, "body": "payment declined",
                "attributes": {"http.status_code": 402}, "resource": {"service.name": "checkout"},
                "instrumentation_scope": {"name": "app.payments", "version": "1.2.0", "attributes": {}},
                "trace_id": "5b8efff798038103d269b633813fc60c", "span_id": "eee19b7ec3c1b174", "trace_flags": 1,
                "event_name": "payment.declined", "dropped_attributes_count": 0
            })
        );
        assert_eq!(
            records[1]["body"],
            json!({"n": -9_007_199_254_740_993_i64, "ok": true, "ratio": 0.25, "bad": "NaN", "raw": "AP8=", "list": ["a", null]})
        );
        assert_eq!(
            (
                &records[1]["timestamp"],
                &records[1]["trace_id"],
                &records[1]["severity_text"],
                &records[1]["event_name"]
            ),
            (&Value::Null, &Value::Null, &Value::Null, &Value::Null)
        );
        let garbage = decode(Encoding::Protobuf, b"\xff\xff\xff").unwrap_err();
        assert!(garbage.contains("no protobuf ExportLogsServiceRequest"), "{garbage}");
    }

    /// The OTLP JSON encoding, as the specification's example request writes it (hex ids,
    /// 64-bit integers as strings, camelCase names).
    #[test]
    fn a_json_request_in_otlps_encoding_gives_the_same_records() {
        let body = r#"{"resourceLogs":[{"resource":{"attributes":[{"key":"service.name","value":{"stringValue":"my.service"}}]},
            "scopeLogs":[{"scope":{"name":"my.library","version":"1.0.0","attributes":[{"key":"my.scope.attribute","value":{"stringValue":"some scope attribute"}}]},
            "logRecords":[{"timeUnixNano":"1544712660300000000","observedTimeUnixNano":"1544712660300000000","severityNumber":10,"severityText":"Information",
            "traceId":"5b8efff798038103d269b633813fc60c","spanId":"eee19b7ec3c1b174","body":{"stringValue":"Example log record"},
            "attributes":[{"key":"string.attribute","value":{"stringValue":"some string"}},{"key":"int.attribute","value":{"intValue":"10"}},
            {"key":"array.attribute","value":{"arrayValue":{"values":[{"stringValue":"many"},{"stringValue":"values"}]}}},
            {"key":"map.attribute","value":{"kvlistValue":{"values":[{"key":"some.map.key","value":{"stringValue":"some value"}}]}}}]}]}]}]}"#;
        let records = texts(&records(&decode(Encoding::Json, body.as_bytes()).unwrap()).unwrap());
        assert_eq!(records.len(), 1);
        let r = &records[0];
        assert_eq!(r["timestamp"], "2018-12-13T14:51:00.300000000Z");
        assert_eq!((&r["severity_text"], &r["severity_number"]), (&"Information".into(), &10.into()));
        assert_eq!(r["trace_id"], "5b8efff798038103d269b633813fc60c");
        assert_eq!(
            r["attributes"],
            json!({"string.attribute": "some string", "int.attribute": 10, "array.attribute": ["many", "values"],
                   "map.attribute": {"some.map.key": "some value"}})
        );
        assert_eq!(r["instrumentation_scope"]["attributes"], json!({"my.scope.attribute": "some scope attribute"}));
        assert_eq!(r["resource"], json!({"service.name": "my.service"}));
        let wrong = decode(Encoding::Json, br#"{"resourceLogs":"no"}"#).unwrap_err();
        assert!(wrong.contains("OTLP's JSON encoding"), "{wrong}");
    }

    #[test]
    fn the_content_type_says_the_encoding() {
        let with = |value: &str| {
            let mut headers = HeaderMap::new();
            headers.insert(header::CONTENT_TYPE, value.parse().unwrap());
            Encoding::of(&headers)
        };
        assert_eq!(with("application/x-protobuf"), Ok(Encoding::Protobuf));
        assert_eq!(with("application/json; charset=utf-8"), Ok(Encoding::Json));
        assert!(with("text/plain").unwrap_err().contains("application/x-protobuf"));
        assert!(Encoding::of(&HeaderMap::new()).is_err());
    }

    /// The source through the real runtime, fed OTLP/HTTP JSON requests of 700 log records: every
    /// record once at 1, 2 and 4 workers, all delivered when the stop comes right after the last
    /// answer, and a restarted source does not replay what its log delivered.
    #[test]
    fn passes_the_source_conformance_kit() {
        use sluice_engine::testkit::source::{Check, SourceCase, conformance};

        let dir = tempfile::tempdir().unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let record = |i: usize| {
            json!({
                "timestamp": null, "observed_timestamp": null, "severity_text": null, "severity_number": 0,
                "body": format!("line {i}"), "attributes": {}, "resource": {},
                "instrumentation_scope": {"name": null, "version": null, "attributes": {}},
                "trace_id": null, "span_id": null, "trace_flags": 0, "event_name": null, "dropped_attributes_count": 0
            })
            .to_string()
            .into_bytes()
        };
        let expected: Vec<Vec<u8>> = (0..5_000).map(record).collect();
        let body = |chunk: &[Vec<u8>]| {
            let logs: Vec<Value> = chunk
                .iter()
                .map(|r| json!({"body": {"stringValue": serde_json::from_slice::<Value>(r).unwrap()["body"]}}))
                .collect();
            json!({"resourceLogs": [{"scopeLogs": [{"logRecords": logs}]}]}).to_string().into_bytes()
        };
        let produce = crate::api::post::posting_producer(
            format!("http://127.0.0.1:{port}/v1/logs"),
            &[("Content-Type", "application/json")],
            expected.clone(),
            body,
        );
        let table = format!("type = \"otlp\"\nlisten = \"127.0.0.1:{port}\"\n");
        let case = SourceCase::stream(table, expected, produce, dir.path());
        let report = conformance(crate::registry(), &case).unwrap_or_else(|e| panic!("{e}"));
        assert!(report.passed.contains(&Check::Resume) && report.skipped.is_empty(), "{report:?}");
    }

    /// A unary gRPC body is one length-prefixed message: taken as it is, or gunzipped when its
    /// flag says so and `grpc-encoding` is gzip; anything else refused with the status code to say.
    #[test]
    fn grpc_bodies_are_one_length_prefixed_message() {
        use std::io::Write as _;
        let frame = |flag: u8, message: &[u8]| {
            let mut body = vec![flag];
            body.extend_from_slice(&u32::try_from(message.len()).unwrap().to_be_bytes());
            body.extend_from_slice(message);
            body
        };
        let plain = HeaderMap::new();
        assert_eq!(grpc_message(&frame(0, b"abc"), &plain, 100).unwrap().as_ref(), b"abc");
        assert_eq!(grpc_message(&frame(0, b""), &plain, 100).unwrap().as_ref(), b"");
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(&[b'x'; 200]).unwrap();
        let gzipped = frame(1, &gz.finish().unwrap());
        let mut gzip = HeaderMap::new();
        gzip.insert("grpc-encoding", header::HeaderValue::from_static("gzip"));
        assert_eq!(grpc_message(&gzipped, &gzip, 200).unwrap().len(), 200);
        assert_eq!(grpc_message(&gzipped, &gzip, 199).unwrap_err().0, INVALID_ARGUMENT);
        assert_eq!(grpc_message(&gzipped, &plain, 200).unwrap_err().0, UNIMPLEMENTED);
        let mut snappy = HeaderMap::new();
        snappy.insert("grpc-encoding", header::HeaderValue::from_static("snappy"));
        assert_eq!(grpc_message(&gzipped, &snappy, 200).unwrap_err().0, UNIMPLEMENTED);
        // A prefix that says another length, two messages, no prefix at all.
        let mut short = frame(0, b"abc");
        short.pop();
        assert_eq!(grpc_message(&short, &plain, 100).unwrap_err().0, INVALID_ARGUMENT);
        assert_eq!(
            grpc_message(&[frame(0, b"a"), frame(0, b"b")].concat(), &plain, 100).unwrap_err().0,
            INVALID_ARGUMENT
        );
        assert_eq!(grpc_message(&[0, 0], &plain, 100).unwrap_err().0, INVALID_ARGUMENT);
        // Trailers-only refusals carry the code and the message, percent-encoded.
        let refused = grpc_status(UNAUTHENTICATED, "100% wrong: é");
        assert_eq!(refused.headers()["grpc-status"], "16");
        assert_eq!(refused.headers()["grpc-message"], "100%25 wrong: %C3%A9");
    }
}

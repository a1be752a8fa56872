//! `type = "otlp"`: OpenTelemetry logs, traces and metrics over OTLP/HTTP and OTLP/gRPC, so that
//! the OpenTelemetry Collector's `otlphttp` and `otlp` exporters, every OpenTelemetry SDK's OTLP
//! log, span and metric exporters, and the agents that speak OTLP (Fluent Bit's and Vector's `opentelemetry`
//! outputs) deliver into a pipeline with nothing changed but the endpoint.
//!
//! ```toml
//! [sources.otel]
//! type = "otlp"
//! listen = "127.0.0.1:4318"              # OTLP/HTTP's port
//! grpc_listen = "127.0.0.1:4317"         # optional: OTLP/gRPC served there too (HTTP/2)
//! signals = ["logs", "traces", "metrics"] # default ["logs"]
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
//! `INVALID_ARGUMENT`, and why) for a body that does not decode; `401` (token), `404` for a signal not in `signals` or OTLP/gRPC's
//! path (the answer says to send gRPC to `grpc_listen`), `415` for another `Content-Type`, `503`
//! with `Retry-After` when busy or stopping (which OTLP clients retry). A request's records are
//! taken together or not at all. An item over a record's 1,000 KiB as JSON (Firehose's limit) is
//! taken with the others and goes, whole, to the error output of every sink it would have reached
//! (`processing-failed`, `Source.RecordTooLarge`): rejecting it (OTLP's `partial_success`) would
//! leave it to the exporter, which drops it.
//!
//! With `"traces"` in `signals`, `POST /v1/traces` takes an `ExportTraceServiceRequest` the same
//! way, each span one record of OpenTelemetry's trace data model: `trace_id`, `span_id`,
//! `parent_span_id` (hex, null when unset), `trace_state`, `trace_flags`, `name`, `kind` (its
//! protobuf name, `SPAN_KIND_SERVER`; a number the definition does not name as that number),
//! `start_timestamp`, `end_timestamp` (RFC 3339, null when unset), `duration_ns` (end minus start,
//! null when either is unset or the end comes first), `attributes`, `events` (each `name`,
//! `timestamp`, `attributes`, `dropped_attributes_count`), `links` (each `trace_id`, `span_id`,
//! `trace_state`, `trace_flags`, `attributes`, `dropped_attributes_count`), `status` (`code` as
//! `STATUS_CODE_OK`, `…_ERROR`, `…_UNSET`; `message`), the three `dropped_…_count`s, `resource` and
//! `instrumentation_scope` as for logs.
//!
//! With `"metrics"` in `signals`, `POST /v1/metrics` takes an `ExportMetricsServiceRequest`, each
//! data point one record of its metric: `name`, `description`, `unit` (null when empty), `type`
//! (`gauge`, `sum`, `histogram`, `exponential_histogram`, `summary`), `metadata`, `attributes`,
//! `start_timestamp`, `timestamp`, `flags`, then its type's values — gauge and sum: `value` (an
//! integer or a double as sent); sum: `aggregation_temporality` (`AGGREGATION_TEMPORALITY_DELTA`,
//! `…_CUMULATIVE`), `is_monotonic`; histogram: `aggregation_temporality`, `count`, `sum`, `min`,
//! `max` (null when unset), `bucket_counts`, `explicit_bounds`; exponential histogram: those but the
//! buckets, then `scale`, `zero_count`, `zero_threshold`, `positive` and `negative` (`offset`,
//! `bucket_counts`); summary: `count`, `sum`, `quantile_values` (`quantile`, `value`); all but
//! summaries: `exemplars` (`timestamp`, `value`, `trace_id`, `span_id`, `filtered_attributes`) —
//! and `resource` and `instrumentation_scope` as for logs. A metric without data gives none.
//!
//! The signals of one source go to the same outputs; a log record has `severity_number`, a span
//! `parent_span_id`, a data point `type`, which a `jq` transform's `select(has(…))` tells apart.
//!
//! With `grpc_listen`, the same records come from OTLP/gRPC's `LogsService/Export`,
//! `TraceService/Export` and `MetricsService/Export` (unary; each as `signals` says) on HTTP/2: cleartext with prior knowledge (the exporters' `insecure`), or TLS with `tls`, offering
//! `h2` in the handshake. The request is one length-prefixed protobuf message, compressed when its
//! flag says so as `grpc-encoding` says (`gzip`, `deflate`, `zstd` or `snappy`, Snappy's framed
//! stream as grpc-go's compressor writes it); the bearer token comes as `authorization` metadata. The answer
//! is an empty `Export…ServiceResponse` with `grpc-status: 0`
//! once the records are queued and as durable as the pipeline asks, or the refusal's status:
//! `UNAUTHENTICATED` (16), `INVALID_ARGUMENT` (3: a message that does not decode),
//! `UNIMPLEMENTED` (12: another
//! service or method, another `grpc-encoding`), `UNAVAILABLE` (14: busy or stopping, which
//! exporters retry). A connection silent for `idle_timeout_s` is closed.

use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value};
use opentelemetry_proto::tonic::resource::v1::Resource;
use prost::Message as _;
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Value, json};
use sluice_engine::config::{ConnectorConfig, Diagnostic, Problems};
use sluice_engine::contract::Source;
use sluice_engine::record::{RecordBatch, now_ms};

use crate::api::Caller;
use crate::api::post::{
    BEARER_TOKENS, ContentEncoding, DecodeError, KeyPlaces, ListenerKeys, NamedToken, PostEndpoint, PostSource,
    Protocol, Refusal, RequestFacts, enqueue,
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

/// A kind of telemetry OTLP carries that the source serves (`signals`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Signal {
    /// Log records: `/v1/logs`, `LogsService/Export`.
    Logs,
    /// Spans: `/v1/traces`, `TraceService/Export`.
    Traces,
    /// Metric data points: `/v1/metrics`, `MetricsService/Export`.
    Metrics,
}

/// Every signal, in the order they are served and said.
const ALL_SIGNALS: [Signal; 3] = [Signal::Logs, Signal::Traces, Signal::Metrics];

impl Signal {
    /// Its name in `signals`.
    fn name(self) -> &'static str {
        match self {
            Signal::Logs => "logs",
            Signal::Traces => "traces",
            Signal::Metrics => "metrics",
        }
    }

    /// OTLP/HTTP's path for it.
    fn path(self) -> &'static str {
        match self {
            Signal::Logs => "/v1/logs",
            Signal::Traces => "/v1/traces",
            Signal::Metrics => "/v1/metrics",
        }
    }

    /// OTLP/gRPC's method for it.
    fn grpc_method(self) -> &'static str {
        match self {
            Signal::Logs => "/opentelemetry.proto.collector.logs.v1.LogsService/Export",
            Signal::Traces => "/opentelemetry.proto.collector.trace.v1.TraceService/Export",
            Signal::Metrics => "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export",
        }
    }

    /// The audit trail's `eventName` of a request of it.
    fn audit_name(self) -> &'static str {
        match self {
            Signal::Logs => "ExportLogs",
            Signal::Traces => "ExportTraces",
            Signal::Metrics => "ExportMetrics",
        }
    }

    /// The records of a request body of it in `encoding` (protobuf for gRPC), or why it holds none.
    fn records(self, encoding: Encoding, body: &[u8]) -> Result<RecordBatch, String> {
        match self {
            Signal::Logs => {
                log_records(&decode::<ExportLogsServiceRequest>(encoding, body, "ExportLogsServiceRequest")?)
            }
            Signal::Traces => {
                span_records(&decode::<ExportTraceServiceRequest>(encoding, body, "ExportTraceServiceRequest")?)
            }
            Signal::Metrics => {
                point_records(&decode::<ExportMetricsServiceRequest>(encoding, body, "ExportMetricsServiceRequest")?)
            }
        }
    }

    /// Its `Export…ServiceResponse` in `encoding`: empty, a full success (protobuf's empty
    /// message is no bytes, JSON's `{}`; every response message's fields are optional).
    fn response(encoding: Encoding) -> &'static [u8] {
        match encoding {
            Encoding::Protobuf => b"",
            Encoding::Json => b"{}",
        }
    }
}

/// The signals a source serves, in a fixed order (logs, traces, metrics), each once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Signals(u8);

impl Signals {
    /// The signals of a `signals` list (each once, whatever the list repeats).
    fn of(listed: &[Signal]) -> Self {
        Signals(listed.iter().fold(0, |bits, signal| bits | 1 << *signal as u8))
    }

    fn contains(self, signal: Signal) -> bool {
        self.0 & 1 << signal as u8 != 0
    }

    fn iter(self) -> impl Iterator<Item = Signal> {
        ALL_SIGNALS.into_iter().filter(move |signal| self.contains(*signal))
    }

    /// A router with a POST route for each signal served, at `path` of it, to `handler` of it.
    fn routes<H, T>(
        self,
        path: fn(Signal) -> &'static str,
        handler: impl Fn(Signal) -> H,
    ) -> axum::Router<Arc<PostEndpoint>>
    where
        H: axum::handler::Handler<T, Arc<PostEndpoint>>,
        T: 'static,
    {
        self.iter().fold(axum::Router::new(), |router, signal| {
            router.route(path(signal), axum::routing::post(handler(signal)))
        })
    }

    /// The paths served, for messages (`/v1/logs and /v1/traces`).
    fn paths(self) -> String {
        self.iter().map(Signal::path).collect::<Vec<_>>().join(" and ")
    }
}

/// The source's own keys.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct OtlpConfig {
    /// Address to listen on (default `127.0.0.1:4318`).
    listen: Option<String>,
    /// Where OTLP/gRPC is served too (none unless set; its port is 4317).
    grpc_listen: Option<String>,
    /// The signals served (default logs alone).
    signals: Option<Vec<Signal>>,
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
    let signals_span = config.table.value_span("signals").unwrap_or(config.table.span.clone());
    let mut problems = Problems::default();
    let limits = ListenerLimits::take_from(&mut config.table, 1, &mut problems);
    let Some(c) = config.table.deserialize::<OtlpConfig>(&mut problems) else { return Err(problems) };
    let listed = c.signals.unwrap_or_else(|| vec![Signal::Logs]);
    let signals = Signals::of(&listed);
    if listed.is_empty() {
        problems.push(
            Diagnostic::new(signals_span, "`signals` is empty: the source would serve nothing")
                .with_hint("signals = [\"logs\"] (the default), or any of \"logs\", \"traces\" and \"metrics\""),
        );
    }
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
        what: "otlp: OpenTelemetry over OTLP/HTTP",
        default_listen: "127.0.0.1:4318",
        default_body_mb: 16,
        router: Box::new(move |endpoint| {
            signals
                .routes(Signal::path, |signal| {
                    move |state, caller, uri, headers, body| receive(signal, state, caller, uri, headers, body)
                })
                .fallback(move |uri: Uri| async move {
                    let message = if uri.path().starts_with("/opentelemetry.proto.collector.") {
                        format!(
                            "OTLP/gRPC is not served on this address: give the source `grpc_listen` (4317 is \
                             gRPC's port) and send gRPC there, or set the exporter's protocol to http/protobuf \
                             (OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf; the Collector's otlphttp exporter) and its \
                             endpoint to this address, where it takes POST {}",
                            signals.paths()
                        )
                    } else if let Some(signal) = ALL_SIGNALS.into_iter().find(|s| s.path() == uri.path()) {
                        format!(
                            "this source does not take {0}: add \"{0}\" to its `signals` (it takes POST {1})",
                            signal.name(),
                            signals.paths()
                        )
                    } else {
                        format!("this source takes OpenTelemetry data at POST {}, not {}", signals.paths(), uri.path())
                    };
                    status_answer(Encoding::Json, StatusCode::NOT_FOUND, 5, &message)
                })
                .with_state(endpoint)
        }),
        grpc_router: Some(Box::new(move |endpoint| {
            signals
                .routes(Signal::grpc_method, |signal| {
                    move |state, caller, uri, headers, body| receive_grpc(signal, state, caller, uri, headers, body)
                })
                .fallback(move |uri: Uri| async move {
                    let served: Vec<&str> = signals.iter().map(Signal::grpc_method).collect();
                    grpc_status(UNIMPLEMENTED, &format!("{} is not served: only {}", uri.path(), served.join(" and ")))
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

/// A double as JSON: a number, or the string `NaN`, `Infinity` or `-Infinity` (which JSON has no
/// number for).
fn double(d: f64) -> Value {
    serde_json::Number::from_f64(d).map_or_else(
        || {
            Value::String(if d.is_nan() {
                "NaN".into()
            } else if d > 0.0 {
                "Infinity".into()
            } else {
                "-Infinity".into()
            })
        },
        Value::Number,
    )
}

/// An `AnyValue` as JSON.
fn any_value(value: Option<&AnyValue>) -> Value {
    use any_value::Value as V;
    match value.and_then(|v| v.value.as_ref()) {
        None => Value::Null,
        Some(V::StringValue(s)) => Value::String(s.clone()),
        Some(V::BoolValue(b)) => Value::Bool(*b),
        Some(V::IntValue(i)) => Value::from(*i),
        Some(V::DoubleValue(d)) => double(*d),
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

/// A span as the JSON object it becomes (OpenTelemetry's trace data model), keys in alphabetical
/// order as for logs.
#[derive(serde::Serialize)]
struct SpanJson<'a> {
    attributes: Value,
    dropped_attributes_count: u32,
    dropped_events_count: u32,
    dropped_links_count: u32,
    duration_ns: Option<u64>,
    end_timestamp: Value,
    events: Vec<Value>,
    instrumentation_scope: &'a RawValue,
    kind: Value,
    links: Vec<Value>,
    name: &'a str,
    parent_span_id: Value,
    resource: &'a RawValue,
    span_id: Value,
    start_timestamp: Value,
    status: Value,
    trace_flags: u32,
    trace_id: Value,
    trace_state: Value,
}

/// `value` as JSON text, kept to be written into each record as it is.
fn raw(value: &Value) -> Box<RawValue> {
    RawValue::from_string(value.to_string()).unwrap_or_else(|_| RawValue::NULL.to_owned())
}

/// A resource as the `resource` of its records: its attributes.
fn resource_json(resource: Option<&Resource>) -> Box<RawValue> {
    raw(&resource.map_or(json!({}), |r| attributes(&r.attributes)))
}

/// An instrumentation scope as the `instrumentation_scope` of its records.
fn scope_json(scope: Option<&InstrumentationScope>) -> Box<RawValue> {
    raw(&scope.map_or(json!({"name": null, "version": null, "attributes": {}}), |s| {
        json!({
            "name": text_or_null(&s.name),
            "version": text_or_null(&s.version),
            "attributes": attributes(&s.attributes),
        })
    }))
}

/// An enumeration's value by its name in the protobuf definition (`SPAN_KIND_SERVER`), or its
/// number when the definition has none for it (a newer sender's).
fn enum_name(name: Option<&'static str>, number: i32) -> Value {
    name.map_or_else(|| Value::from(number), Value::from)
}

/// The records a request's items become, one JSON text each.
struct Records {
    batch: RecordBatch,
}

impl Records {
    fn new() -> Self {
        Records { batch: RecordBatch::with_capacity(now_ms(), 0) }
    }

    /// Appends `item` as one JSON record (`what`, numbered from 1 among the request's items, says
    /// it when it cannot be written). One over a record's 1,000 KiB too: the engine sends it to
    /// the error output ([`Source::max_record_bytes`]).
    fn push(&mut self, item: &impl serde::Serialize, what: &str) -> Result<(), String> {
        let n = self.batch.len() + 1;
        self.batch.push_with(|out| serde_json::to_writer(out, item)).map_err(|e| format!("{what} {n}: {e}"))
    }

    fn finish(self) -> RecordBatch {
        self.batch
    }
}

/// Calls `each` with every item of a request (log records, spans, metrics): each resource's scopes
/// (as `scopes` finds them), each scope's items (as `items` does), with the resource's and the
/// scope's JSON made once for all the items under them.
fn each_item<'r, R, S: 'r, I: 'r>(
    resources: &'r [R],
    scopes: impl Fn(&'r R) -> (Option<&'r Resource>, &'r [S]),
    items: impl Fn(&'r S) -> (Option<&'r InstrumentationScope>, &'r [I]),
    mut each: impl FnMut(&'r I, &RawValue, &RawValue) -> Result<(), String>,
) -> Result<(), String> {
    for in_resource in resources {
        let (resource, in_scopes) = scopes(in_resource);
        let resource = resource_json(resource);
        for in_scope in in_scopes {
            let (scope, of_scope) = items(in_scope);
            let scope = scope_json(scope);
            for item in of_scope {
                each(item, &resource, &scope)?;
            }
        }
    }
    Ok(())
}

/// The records of a logs request: each log record as a JSON object of the log data model; or
/// why a record cannot be one.
fn log_records(request: &ExportLogsServiceRequest) -> Result<RecordBatch, String> {
    let mut records = Records::new();
    each_item(
        &request.resource_logs,
        |r| (r.resource.as_ref(), &r.scope_logs),
        |s| (s.scope.as_ref(), &s.log_records),
        |log, resource, scope| {
            let record = LogJson {
                attributes: attributes(&log.attributes),
                body: any_value(log.body.as_ref()),
                dropped_attributes_count: log.dropped_attributes_count,
                event_name: text_or_null(&log.event_name),
                instrumentation_scope: scope,
                observed_timestamp: time_of(log.observed_time_unix_nano),
                resource,
                severity_number: log.severity_number,
                severity_text: text_or_null(&log.severity_text),
                span_id: hex_of(&log.span_id),
                timestamp: time_of(log.time_unix_nano),
                trace_flags: log.flags,
                trace_id: hex_of(&log.trace_id),
            };
            records.push(&record, "log record")
        },
    )?;
    Ok(records.finish())
}

/// The records of a traces request: each span as a JSON object of the trace data model, its
/// events and links inside it; or why a span cannot be one.
fn span_records(request: &ExportTraceServiceRequest) -> Result<RecordBatch, String> {
    use opentelemetry_proto::tonic::trace::v1::{span::SpanKind, status::StatusCode as SpanStatus};
    let mut records = Records::new();
    each_item(
        &request.resource_spans,
        |r| (r.resource.as_ref(), &r.scope_spans),
        |s| (s.scope.as_ref(), &s.spans),
        |span, resource, scope| {
            let (start, end) = (span.start_time_unix_nano, span.end_time_unix_nano);
            let status = span.status.as_ref();
            let status_code = status.map_or(0, |s| s.code);
            let record = SpanJson {
                attributes: attributes(&span.attributes),
                dropped_attributes_count: span.dropped_attributes_count,
                dropped_events_count: span.dropped_events_count,
                dropped_links_count: span.dropped_links_count,
                duration_ns: (start != 0 && end != 0).then(|| end.checked_sub(start)).flatten(),
                end_timestamp: time_of(end),
                events: span
                    .events
                    .iter()
                    .map(|event| {
                        json!({
                            "name": event.name,
                            "timestamp": time_of(event.time_unix_nano),
                            "attributes": attributes(&event.attributes),
                            "dropped_attributes_count": event.dropped_attributes_count,
                        })
                    })
                    .collect(),
                instrumentation_scope: scope,
                kind: enum_name(SpanKind::try_from(span.kind).ok().map(|k| k.as_str_name()), span.kind),
                links: span
                    .links
                    .iter()
                    .map(|link| {
                        json!({
                            "trace_id": hex_of(&link.trace_id),
                            "span_id": hex_of(&link.span_id),
                            "trace_state": text_or_null(&link.trace_state),
                            "trace_flags": link.flags,
                            "attributes": attributes(&link.attributes),
                            "dropped_attributes_count": link.dropped_attributes_count,
                        })
                    })
                    .collect(),
                name: &span.name,
                parent_span_id: hex_of(&span.parent_span_id),
                resource,
                span_id: hex_of(&span.span_id),
                start_timestamp: time_of(start),
                status: json!({
                    "code": enum_name(SpanStatus::try_from(status_code).ok().map(|c| c.as_str_name()), status_code),
                    "message": text_or_null(status.map_or("", |s| s.message.as_str())),
                }),
                trace_flags: span.flags,
                trace_id: hex_of(&span.trace_id),
                trace_state: text_or_null(&span.trace_state),
            };
            records.push(&record, "span")
        },
    )?;
    Ok(records.finish())
}

/// A metric data point as the JSON object it becomes: what every point has, then its type's
/// values (`values`), then its metric's resource and scope.
#[derive(serde::Serialize)]
struct PointJson<'a> {
    name: &'a str,
    description: Value,
    unit: Value,
    #[serde(rename = "type")]
    kind: &'static str,
    metadata: &'a RawValue,
    attributes: Value,
    start_timestamp: Value,
    timestamp: Value,
    flags: u32,
    /// An object (a serializer error otherwise, which refuses the request).
    #[serde(flatten)]
    values: Value,
    resource: &'a RawValue,
    instrumentation_scope: &'a RawValue,
}

/// What a data point says besides its values: attributes, times, flags.
struct PointBase<'a> {
    attributes: &'a [KeyValue],
    start: u64,
    time: u64,
    flags: u32,
}

/// The [`PointBase`] of a data point of any type (they name these fields alike).
macro_rules! point_base {
    ($point:expr) => {
        PointBase {
            attributes: &$point.attributes,
            start: $point.start_time_unix_nano,
            time: $point.time_unix_nano,
            flags: $point.flags,
        }
    };
}

/// Exemplars as JSON: each `timestamp`, `value`, `trace_id`, `span_id`, `filtered_attributes`.
fn exemplars(list: &[opentelemetry_proto::tonic::metrics::v1::Exemplar]) -> Value {
    use opentelemetry_proto::tonic::metrics::v1::exemplar::Value as V;
    Value::Array(
        list.iter()
            .map(|exemplar| {
                json!({
                    "timestamp": time_of(exemplar.time_unix_nano),
                    "value": match exemplar.value {
                        Some(V::AsInt(i)) => Value::from(i),
                        Some(V::AsDouble(d)) => double(d),
                        None => Value::Null,
                    },
                    "trace_id": hex_of(&exemplar.trace_id),
                    "span_id": hex_of(&exemplar.span_id),
                    "filtered_attributes": attributes(&exemplar.filtered_attributes),
                })
            })
            .collect(),
    )
}

/// An aggregation temporality by its protobuf name (`AGGREGATION_TEMPORALITY_CUMULATIVE`).
fn temporality(value: i32) -> Value {
    use opentelemetry_proto::tonic::metrics::v1::AggregationTemporality;
    enum_name(AggregationTemporality::try_from(value).ok().map(|t| t.as_str_name()), value)
}

/// An optional double (a histogram's `sum`, `min`, `max`) as JSON: null when unset.
fn maybe_double(value: Option<f64>) -> Value {
    value.map_or(Value::Null, double)
}

/// The records of a metrics request: each data point of each metric as a JSON object, the
/// metric's name, description, unit and type with it; or why a point cannot be one.
fn point_records(request: &ExportMetricsServiceRequest) -> Result<RecordBatch, String> {
    use opentelemetry_proto::tonic::metrics::v1::metric::Data;
    use opentelemetry_proto::tonic::metrics::v1::number_data_point::Value as Number;
    let mut records = Records::new();
    each_item(
        &request.resource_metrics,
        |r| (r.resource.as_ref(), &r.scope_metrics),
        |s| (s.scope.as_ref(), &s.metrics),
        |metric, resource, scope| {
            let metadata = raw(&attributes(&metric.metadata));
            let mut push = |kind: &'static str, base: PointBase<'_>, values: Value| {
                let record = PointJson {
                    name: &metric.name,
                    description: text_or_null(&metric.description),
                    unit: text_or_null(&metric.unit),
                    kind,
                    metadata: &metadata,
                    attributes: attributes(base.attributes),
                    start_timestamp: time_of(base.start),
                    timestamp: time_of(base.time),
                    flags: base.flags,
                    values,
                    resource,
                    instrumentation_scope: scope,
                };
                records.push(&record, "data point")
            };
            let number = |value: &Option<Number>| match value {
                Some(Number::AsInt(i)) => Value::from(*i),
                Some(Number::AsDouble(d)) => double(*d),
                None => Value::Null,
            };
            match &metric.data {
                None => {}
                Some(Data::Gauge(gauge)) => {
                    for p in &gauge.data_points {
                        let base = point_base!(p);
                        push("gauge", base, json!({"value": number(&p.value), "exemplars": exemplars(&p.exemplars)}))?;
                    }
                }
                Some(Data::Sum(sum)) => {
                    for p in &sum.data_points {
                        let base = point_base!(p);
                        let values = json!({
                            "value": number(&p.value),
                            "aggregation_temporality": temporality(sum.aggregation_temporality),
                            "is_monotonic": sum.is_monotonic,
                            "exemplars": exemplars(&p.exemplars),
                        });
                        push("sum", base, values)?;
                    }
                }
                Some(Data::Histogram(histogram)) => {
                    for p in &histogram.data_points {
                        let base = point_base!(p);
                        let values = json!({
                            "aggregation_temporality": temporality(histogram.aggregation_temporality),
                            "count": p.count,
                            "sum": maybe_double(p.sum),
                            "min": maybe_double(p.min),
                            "max": maybe_double(p.max),
                            "bucket_counts": p.bucket_counts,
                            "explicit_bounds": p.explicit_bounds.iter().map(|b| double(*b)).collect::<Vec<_>>(),
                            "exemplars": exemplars(&p.exemplars),
                        });
                        push("histogram", base, values)?;
                    }
                }
                Some(Data::ExponentialHistogram(histogram)) => {
                    for p in &histogram.data_points {
                        let base = point_base!(p);
                        let buckets = |b: &Option<_>| match b {
                            Some(
                                opentelemetry_proto::tonic::metrics::v1::exponential_histogram_data_point::Buckets {
                                    offset,
                                    bucket_counts,
                                },
                            ) => json!({"offset": offset, "bucket_counts": bucket_counts}),
                            None => json!({"offset": 0, "bucket_counts": []}),
                        };
                        let values = json!({
                            "aggregation_temporality": temporality(histogram.aggregation_temporality),
                            "count": p.count,
                            "sum": maybe_double(p.sum),
                            "min": maybe_double(p.min),
                            "max": maybe_double(p.max),
                            "scale": p.scale,
                            "zero_count": p.zero_count,
                            "zero_threshold": double(p.zero_threshold),
                            "positive": buckets(&p.positive),
                            "negative": buckets(&p.negative),
                            "exemplars": exemplars(&p.exemplars),
                        });
                        push("exponential_histogram", base, values)?;
                    }
                }
                Some(Data::Summary(summary)) => {
                    for p in &summary.data_points {
                        let base = point_base!(p);
                        let quantiles: Vec<Value> = p
                            .quantile_values
                            .iter()
                            .map(|q| json!({"quantile": double(q.quantile), "value": double(q.value)}))
                            .collect();
                        let values = json!({"count": p.count, "sum": double(p.sum), "quantile_values": quantiles});
                        push("summary", base, values)?;
                    }
                }
            }
            Ok(())
        },
    )?;
    Ok(records.finish())
}

/// The request (`name`, for messages) a body holds, in `encoding`.
fn decode<M: prost::Message + Default + serde::de::DeserializeOwned>(
    encoding: Encoding,
    body: &[u8],
    name: &str,
) -> Result<M, String> {
    match encoding {
        Encoding::Protobuf => M::decode(body).map_err(|e| format!("the body is no protobuf {name}: {e}")),
        Encoding::Json => {
            serde_json::from_slice(body).map_err(|e| format!("the body is no {name} in OTLP's JSON encoding: {e}"))
        }
    }
}

async fn receive(
    signal: Signal,
    State(endpoint): State<Arc<PostEndpoint>>,
    caller: Caller,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let mut facts = RequestFacts::default();
    // An answer is in the request's encoding; one that names none of OTLP's is answered in JSON.
    let encoding = Encoding::of(&headers);
    let answer_in = *encoding.as_ref().unwrap_or(&Encoding::Json);
    let outcome = match encoding {
        Ok(encoding) => take(signal, encoding, &endpoint, &headers, body, &mut facts).await,
        Err(why) => Err((StatusCode::UNSUPPORTED_MEDIA_TYPE, why)),
    };
    let refused = outcome
        .as_ref()
        .err()
        .map(|(status, message)| (status.canonical_reason().unwrap_or("Error"), message.as_str()));
    endpoint.audit_request((OTLP_EVENT_SOURCE, signal.audit_name()), &caller, (&uri, &headers), &facts, refused);
    match outcome {
        Ok(()) => {
            let body = Signal::response(answer_in);
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

/// Takes one request's records, or says why not.
async fn take(
    signal: Signal,
    encoding: Encoding,
    endpoint: &Arc<PostEndpoint>,
    headers: &HeaderMap,
    body: Body,
    facts: &mut RequestFacts,
) -> Result<(), Refusal> {
    let started = Instant::now();
    endpoint.check_bearer(headers, facts)?;
    let body = endpoint.read(headers, body).await?;
    let batch = signal.records(encoding, body.bytes()).map_err(|why| (StatusCode::BAD_REQUEST, why))?;
    take_records(endpoint, batch, started, facts).await
}

/// Takes a request's records into the pipeline.
async fn take_records(
    endpoint: &Arc<PostEndpoint>,
    batch: RecordBatch,
    started: Instant,
    facts: &mut RequestFacts,
) -> Result<(), Refusal> {
    (facts.records, facts.bytes) = (Some(batch.len()), Some(batch.byte_len()));
    enqueue(endpoint, batch, started).await
}

/// OTLP/gRPC's `LogsService/Export` or `TraceService/Export` (unary): one length-prefixed
/// `Export…ServiceRequest`, compressed as `grpc-encoding` says when its flag is set; answered
/// with an empty `Export…ServiceResponse` and `grpc-status: 0` once the records are queued and as durable as
/// the pipeline asks, or with the status of the refusal (`UNAUTHENTICATED`, `INVALID_ARGUMENT`,
/// `UNAVAILABLE` for what to retry).
async fn receive_grpc(
    signal: Signal,
    State(endpoint): State<Arc<PostEndpoint>>,
    caller: Caller,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let mut facts = RequestFacts::default();
    let outcome = take_grpc(signal, &endpoint, &headers, body, &mut facts).await;
    let refused = outcome.as_ref().err().map(|(code, message)| (grpc_code_name(*code), message.as_str()));
    endpoint.audit_request((OTLP_EVENT_SOURCE, signal.audit_name()), &caller, (&uri, &headers), &facts, refused);
    match outcome {
        Ok(()) => {
            use http_body_util::BodyExt as _;
            // The response, length-prefixed, then the status as trailers.
            let message = Signal::response(Encoding::Protobuf);
            let mut framed = vec![0u8];
            framed.extend_from_slice(&u32::try_from(message.len()).unwrap_or(0).to_be_bytes());
            framed.extend_from_slice(message);
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

/// Takes one gRPC request's records, or says why not with a gRPC status code.
async fn take_grpc(
    signal: Signal,
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
    let batch = signal.records(Encoding::Protobuf, message.as_ref()).map_err(|why| (INVALID_ARGUMENT, why))?;
    take_records(endpoint, batch, started, facts).await.map_err(as_grpc)
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
    let name = headers.get("grpc-encoding").map_or("identity".into(), |v| String::from_utf8_lossy(v.as_bytes()));
    let unsupported = |name: &str| {
        let names = ContentEncoding::NAMES;
        (UNIMPLEMENTED, format!("the message is compressed and grpc-encoding is `{name}`: send {names} or none"))
    };
    let encoding = ContentEncoding::named(&name).map_err(|name| unsupported(&name))?;
    match encoding.decode(message, max) {
        Ok(Some(out)) => Ok(std::borrow::Cow::Owned(out)),
        // (Flagged compressed, and `identity`: gRPC's spec makes that an error.)
        Ok(None) => Err(unsupported(encoding.name())),
        Err(DecodeError::TooLarge) => Err(invalid(format!("the message is larger than {max} bytes once decompressed"))),
        Err(DecodeError::Invalid(e)) => Err(invalid(format!("the message is not valid {}: {e}", encoding.name()))),
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

    /// The resource of the test requests: the service `checkout`.
    fn checkout() -> Option<Resource> {
        Some(Resource {
            attributes: vec![pair("service.name", any_value::Value::StringValue("checkout".into()))],
            ..Default::default()
        })
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
                resource: checkout(),
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
        let records = texts(&Signal::Logs.records(Encoding::Protobuf, &request.encode_to_vec()).unwrap());
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
        let garbage = Signal::Logs.records(Encoding::Protobuf, b"\xff\xff\xff").unwrap_err();
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
        let records = texts(&Signal::Logs.records(Encoding::Json, body.as_bytes()).unwrap());
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
        let wrong = Signal::Logs.records(Encoding::Json, br#"{"resourceLogs":"no"}"#).unwrap_err();
        assert!(wrong.contains("OTLP's JSON encoding"), "{wrong}");
    }

    /// A traces request as an SDK builds it, through protobuf: each span one object of the trace
    /// data model, its events, links, status and kind by their protobuf names, its duration.
    #[test]
    fn a_protobuf_request_gives_each_span_with_its_events_links_and_status() {
        use any_value::Value as V;
        use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span, Status as SpanStatus, span};
        let trace_id =
            vec![0x5b, 0x8e, 0xff, 0xf7, 0x98, 0x03, 0x81, 0x03, 0xd2, 0x69, 0xb6, 0x33, 0x81, 0x3f, 0xc6, 0x0c];
        let request = ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                resource: checkout(),
                scope_spans: vec![ScopeSpans {
                    scope: Some(InstrumentationScope { name: "app.http".into(), ..Default::default() }),
                    spans: vec![
                        Span {
                            trace_id: trace_id.clone(),
                            span_id: vec![0xee, 0xe1, 0x9b, 0x7e, 0xc3, 0xc1, 0xb1, 0x74],
                            parent_span_id: vec![0, 0, 0, 0, 0, 0, 0, 1],
                            trace_state: "vendor=1".into(),
                            flags: 0x301,
                            name: "POST /pay".into(),
                            kind: span::SpanKind::Server as i32,
                            start_time_unix_nano: 1_764_547_200_000_000_000,
                            end_time_unix_nano: 1_764_547_200_250_000_001,
                            attributes: vec![pair("http.response.status_code", V::IntValue(502))],
                            events: vec![span::Event {
                                time_unix_nano: 1_764_547_200_100_000_000,
                                name: "exception".into(),
                                attributes: vec![pair("exception.type", V::StringValue("Timeout".into()))],
                                dropped_attributes_count: 2,
                            }],
                            dropped_events_count: 3,
                            links: vec![span::Link {
                                trace_id: trace_id.clone(),
                                span_id: vec![9; 8],
                                flags: 1,
                                ..Default::default()
                            }],
                            status: Some(SpanStatus {
                                code: opentelemetry_proto::tonic::trace::v1::status::StatusCode::Error as i32,
                                message: "upstream timed out".into(),
                            }),
                            ..Default::default()
                        },
                        // Unset times, no parent, a kind and a status code newer than this source.
                        Span {
                            name: "x".into(),
                            kind: 9,
                            status: Some(SpanStatus { code: 7, message: String::new() }),
                            ..Default::default()
                        },
                    ],
                    ..Default::default()
                }],
                ..Default::default()
            }],
        };
        let records = texts(&Signal::Traces.records(Encoding::Protobuf, &request.encode_to_vec()).unwrap());
        assert_eq!(
            records[0],
            json!({
                "trace_id": "5b8efff798038103d269b633813fc60c", "span_id": "eee19b7ec3c1b174",
                "parent_span_id": "0000000000000001", "trace_state": "vendor=1", "trace_flags": 0x301,
                "name": "POST /pay", "kind": "SPAN_KIND_SERVER",
                "start_timestamp": "2025-12-01T00:00:00.000000000Z", "end_timestamp": "2025-12-01T00:00:00.250000001Z",
                "duration_ns": 250_000_001,
                "attributes": {"http.response.status_code": 502}, "dropped_attributes_count": 0,
                "events": [{"name": "exception", "timestamp": "2025-12-01T00:00:00.100000000Z",
                            "attributes": {"exception.type": "Timeout"}, "dropped_attributes_count": 2}],
                "dropped_events_count": 3,
                "links": [{"trace_id": "5b8efff798038103d269b633813fc60c", "span_id": "0909090909090909",
                           "trace_state": null, "trace_flags": 1, "attributes": {}, "dropped_attributes_count": 0}],
                "dropped_links_count": 0,
                "status": {"code": "STATUS_CODE_ERROR", "message": "upstream timed out"},
                "resource": {"service.name": "checkout"},
                "instrumentation_scope": {"name": "app.http", "version": null, "attributes": {}}
            })
        );
        let bare = &records[1];
        assert_eq!(
            (&bare["kind"], &bare["status"], &bare["parent_span_id"], &bare["start_timestamp"], &bare["duration_ns"]),
            (&json!(9), &json!({"code": 7, "message": null}), &Value::Null, &Value::Null, &Value::Null)
        );
        // An end before the start is kept as sent, with no duration.
        let backwards = Span { start_time_unix_nano: 20, end_time_unix_nano: 10, ..Default::default() };
        let request = ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                scope_spans: vec![ScopeSpans { spans: vec![backwards], ..Default::default() }],
                ..Default::default()
            }],
        };
        let records = texts(&Signal::Traces.records(Encoding::Protobuf, &request.encode_to_vec()).unwrap());
        assert_eq!(records[0]["duration_ns"], Value::Null);
        assert_eq!(records[0]["status"], json!({"code": "STATUS_CODE_UNSET", "message": null}));
        let garbage = Signal::Traces.records(Encoding::Protobuf, b"\xff\xff\xff").unwrap_err();
        assert!(garbage.contains("no protobuf ExportTraceServiceRequest"), "{garbage}");
    }

    /// The OTLP specification's example traces request in its JSON encoding (integers for the
    /// kind and status code, hex ids).
    #[test]
    fn a_json_traces_request_in_otlps_encoding_gives_its_spans() {
        let body = r#"{"resourceSpans":[{"resource":{"attributes":[{"key":"service.name","value":{"stringValue":"my.service"}}]},
            "scopeSpans":[{"scope":{"name":"my.library","version":"1.0.0","attributes":[{"key":"my.scope.attribute","value":{"stringValue":"some scope attribute"}}]},
            "spans":[{"traceId":"5b8efff798038103d269b633813fc60c","spanId":"eee19b7ec3c1b174","parentSpanId":"eee19b7ec3c1b173",
            "name":"I'm a server span","startTimeUnixNano":"1544712660000000000","endTimeUnixNano":"1544712661000000000","kind":2,
            "attributes":[{"key":"my.span.attr","value":{"stringValue":"some value"}}],"status":{"code":1}}]}]}]}"#;
        let records = texts(&Signal::Traces.records(Encoding::Json, body.as_bytes()).unwrap());
        assert_eq!(records.len(), 1);
        let r = &records[0];
        assert_eq!((&r["name"], &r["kind"]), (&"I'm a server span".into(), &"SPAN_KIND_SERVER".into()));
        assert_eq!((&r["parent_span_id"], &r["duration_ns"]), (&"eee19b7ec3c1b173".into(), &1_000_000_000.into()));
        assert_eq!(r["start_timestamp"], "2018-12-13T14:51:00.000000000Z");
        assert_eq!(r["status"], json!({"code": "STATUS_CODE_OK", "message": null}));
        assert_eq!(r["attributes"], json!({"my.span.attr": "some value"}));
        assert_eq!(r["resource"], json!({"service.name": "my.service"}));
        let wrong = Signal::Traces.records(Encoding::Json, br#"{"resourceSpans":"no"}"#).unwrap_err();
        assert!(wrong.contains("no ExportTraceServiceRequest in OTLP's JSON encoding"), "{wrong}");
    }

    /// A metrics request with a metric of each type: each data point one record, the metric's
    /// name, unit and type with it, its type's values (exemplars, buckets, quantiles), a double
    /// that is not finite as text; a metric without data gives none.
    #[test]
    fn a_metrics_request_gives_each_data_point_with_its_metric() {
        use any_value::Value as V;
        use opentelemetry_proto::tonic::metrics::v1::{
            AggregationTemporality, Exemplar, ExponentialHistogram, ExponentialHistogramDataPoint, Gauge, Histogram,
            HistogramDataPoint, Metric, NumberDataPoint, ResourceMetrics, ScopeMetrics, Sum, Summary, SummaryDataPoint,
            exemplar, exponential_histogram_data_point::Buckets, metric::Data, number_data_point,
            summary_data_point::ValueAtQuantile,
        };
        let metric = |name: &str, data: Data| Metric {
            name: name.into(),
            unit: "ms".into(),
            description: format!("{name} described"),
            data: Some(data),
            ..Default::default()
        };
        let at = 1_764_547_200_000_000_000;
        let request = ExportMetricsServiceRequest {
            resource_metrics: vec![ResourceMetrics {
                resource: checkout(),
                scope_metrics: vec![ScopeMetrics {
                    scope: Some(InstrumentationScope { name: "app.meter".into(), ..Default::default() }),
                    metrics: vec![
                        metric(
                            "queue.depth",
                            Data::Gauge(Gauge {
                                data_points: vec![NumberDataPoint {
                                    attributes: vec![pair("queue", V::StringValue("a".into()))],
                                    time_unix_nano: at,
                                    value: Some(number_data_point::Value::AsDouble(f64::NAN)),
                                    exemplars: vec![Exemplar {
                                        time_unix_nano: at,
                                        value: Some(exemplar::Value::AsInt(4)),
                                        span_id: vec![1; 8],
                                        ..Default::default()
                                    }],
                                    ..Default::default()
                                }],
                            }),
                        ),
                        metric(
                            "orders",
                            Data::Sum(Sum {
                                data_points: vec![NumberDataPoint {
                                    start_time_unix_nano: at - 60_000_000_000,
                                    time_unix_nano: at,
                                    value: Some(number_data_point::Value::AsInt(42)),
                                    ..Default::default()
                                }],
                                aggregation_temporality: AggregationTemporality::Delta as i32,
                                is_monotonic: true,
                            }),
                        ),
                        metric(
                            "latency",
                            Data::Histogram(Histogram {
                                data_points: vec![HistogramDataPoint {
                                    time_unix_nano: at,
                                    count: 3,
                                    sum: Some(7.5),
                                    bucket_counts: vec![1, 2, 0],
                                    explicit_bounds: vec![1.0, 5.0],
                                    min: Some(0.5),
                                    max: None,
                                    ..Default::default()
                                }],
                                aggregation_temporality: AggregationTemporality::Cumulative as i32,
                            }),
                        ),
                        metric(
                            "size",
                            Data::ExponentialHistogram(ExponentialHistogram {
                                data_points: vec![ExponentialHistogramDataPoint {
                                    time_unix_nano: at,
                                    count: 4,
                                    scale: 2,
                                    zero_count: 1,
                                    positive: Some(Buckets { offset: -1, bucket_counts: vec![2, 1] }),
                                    ..Default::default()
                                }],
                                aggregation_temporality: 9,
                            }),
                        ),
                        metric(
                            "rtt",
                            Data::Summary(Summary {
                                data_points: vec![SummaryDataPoint {
                                    time_unix_nano: at,
                                    count: 10,
                                    sum: 55.0,
                                    quantile_values: vec![ValueAtQuantile { quantile: 0.99, value: 9.9 }],
                                    ..Default::default()
                                }],
                            }),
                        ),
                        Metric { name: "empty".into(), ..Default::default() },
                    ],
                    ..Default::default()
                }],
                ..Default::default()
            }],
        };
        let records = texts(&Signal::Metrics.records(Encoding::Protobuf, &request.encode_to_vec()).unwrap());
        assert_eq!(records.len(), 5, "{records:#?}");
        let common = |r: &Value| {
            (
                r["resource"].clone(),
                r["instrumentation_scope"]["name"].clone(),
                r["timestamp"].clone(),
                r["unit"].clone(),
            )
        };
        for r in &records {
            assert_eq!(
                common(r),
                (
                    json!({"service.name": "checkout"}),
                    json!("app.meter"),
                    json!("2025-12-01T00:00:00.000000000Z"),
                    json!("ms")
                )
            );
        }
        assert_eq!(
            records[0],
            json!({
                "name": "queue.depth", "description": "queue.depth described", "unit": "ms", "type": "gauge",
                "metadata": {}, "attributes": {"queue": "a"}, "start_timestamp": null,
                "timestamp": "2025-12-01T00:00:00.000000000Z", "flags": 0, "value": "NaN",
                "exemplars": [{"timestamp": "2025-12-01T00:00:00.000000000Z", "value": 4, "trace_id": null,
                               "span_id": "0101010101010101", "filtered_attributes": {}}],
                "resource": {"service.name": "checkout"},
                "instrumentation_scope": {"name": "app.meter", "version": null, "attributes": {}}
            })
        );
        let orders = &records[1];
        assert_eq!(
            (&orders["type"], &orders["value"], &orders["is_monotonic"]),
            (&json!("sum"), &json!(42), &json!(true))
        );
        assert_eq!(orders["aggregation_temporality"], "AGGREGATION_TEMPORALITY_DELTA");
        assert_eq!(orders["start_timestamp"], "2025-11-30T23:59:00.000000000Z");
        let latency = &records[2];
        assert_eq!(
            (&latency["count"], &latency["sum"], &latency["min"], &latency["max"]),
            (&json!(3), &json!(7.5), &json!(0.5), &Value::Null)
        );
        assert_eq!((&latency["bucket_counts"], &latency["explicit_bounds"]), (&json!([1, 2, 0]), &json!([1.0, 5.0])));
        let size = &records[3];
        assert_eq!(size["type"], "exponential_histogram");
        assert_eq!(
            (&size["scale"], &size["zero_count"], &size["aggregation_temporality"]),
            (&json!(2), &json!(1), &json!(9))
        );
        assert_eq!(
            (&size["positive"], &size["negative"]),
            (&json!({"offset": -1, "bucket_counts": [2, 1]}), &json!({"offset": 0, "bucket_counts": []}))
        );
        let rtt = &records[4];
        assert_eq!((&rtt["type"], &rtt["count"], &rtt["sum"]), (&json!("summary"), &json!(10), &json!(55.0)));
        assert_eq!(rtt["quantile_values"], json!([{"quantile": 0.99, "value": 9.9}]));
        assert!(rtt.get("exemplars").is_none());
        // OTLP's JSON encoding: the specification's example request.
        let body = r#"{"resourceMetrics":[{"resource":{"attributes":[{"key":"service.name","value":{"stringValue":"my.service"}}]},
            "scopeMetrics":[{"scope":{"name":"my.library","version":"1.0.0"},"metrics":[{"name":"my.counter","unit":"1",
            "description":"I am a Counter","sum":{"aggregationTemporality":1,"isMonotonic":true,"dataPoints":[{"asDouble":5,
            "startTimeUnixNano":"1544712660300000000","timeUnixNano":"1544712660300000000",
            "attributes":[{"key":"my.counter.attr","value":{"stringValue":"some value"}}]}]}}]}]}]}"#;
        let records = texts(&Signal::Metrics.records(Encoding::Json, body.as_bytes()).unwrap());
        assert_eq!(records.len(), 1);
        assert_eq!((&records[0]["name"], &records[0]["value"]), (&json!("my.counter"), &json!(5.0)));
        assert_eq!(records[0]["attributes"], json!({"my.counter.attr": "some value"}));
        let wrong = Signal::Metrics.records(Encoding::Json, br#"{"resourceMetrics":1}"#).unwrap_err();
        assert!(wrong.contains("no ExportMetricsServiceRequest in OTLP's JSON encoding"), "{wrong}");
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

    /// A unary gRPC body is one length-prefixed message: taken as it is, or decompressed as
    /// `grpc-encoding` says when its flag says so (gzip, deflate, zstd, snappy: the OpenTelemetry
    /// Collector's and grpcio's); anything else refused with the status code to say.
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
        let named = |name: &'static str| {
            let mut headers = HeaderMap::new();
            headers.insert("grpc-encoding", header::HeaderValue::from_static(name));
            headers
        };
        // What grpc-go's snappy compressor (the Collector's) writes: Snappy's framed stream.
        let mut snappy = snap::write::FrameEncoder::new(Vec::new());
        snappy.write_all(&[b'x'; 200]).unwrap();
        let mut zlib = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
        zlib.write_all(&[b'x'; 200]).unwrap();
        for (name, message) in [
            ("snappy", snappy.into_inner().unwrap()),
            ("zstd", zstd::encode_all(&[b'x'; 200][..], 3).unwrap()),
            ("deflate", zlib.finish().unwrap()),
        ] {
            assert_eq!(grpc_message(&frame(1, &message), &named(name), 200).unwrap().as_ref(), [b'x'; 200], "{name}");
            assert_eq!(grpc_message(&frame(1, &message), &named(name), 199).unwrap_err().0, INVALID_ARGUMENT);
            assert_eq!(grpc_message(&frame(0, &message), &named(name), 200).unwrap().as_ref(), &message[..]);
        }
        assert_eq!(grpc_message(&gzipped, &named("snappy"), 200).unwrap_err().0, INVALID_ARGUMENT);
        let lz4 = grpc_message(&gzipped, &named("lz4"), 200).unwrap_err();
        assert_eq!(lz4.0, UNIMPLEMENTED);
        assert!(lz4.1.contains("`lz4`") && lz4.1.contains("zstd, snappy"), "{}", lz4.1);
        assert_eq!(grpc_message(&gzipped, &named("identity"), 200).unwrap_err().0, UNIMPLEMENTED);
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

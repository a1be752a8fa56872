//! `type = "http"`: a plain HTTP endpoint for newline-delimited records, or JSON.
//!
//! ```toml
//! [sources.ndjson]
//! type = "http"
//! listen = "127.0.0.1:4574"
//! format = "ndjson"                      # or "json": see below
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
//! `deflate` (zlib, or raw deflate as some clients send it), `br`, `zstd`, `snappy` (a raw block or
//! the framed stream) or `x-snappy-framed` (`api::post::ContentEncoding`); empty lines, and a
//! byte order mark at the body's start, are skipped; a body that is one JSON value written over
//! several lines (pretty-printed) is refused (400: its lines are no records). With
//! `format = "json"` the body is JSON instead, as shippers batch it: an array whose elements are
//! the records (Fluent Bit's `format json`, Vector's http sink with
//! `encoding.codec = "json"`, Logstash's `json_batch`), or JSON values one after another,
//! concatenated or one per line (Fluent Bit's `json_stream` and `json_lines`); each record is its
//! value's own text, byte for byte, and a body that is not JSON is refused whole (400, with the
//! line and column).
//! Answers `200 {"accepted": n}` once the records are queued for the pipeline, or an error
//! `{"error": "..."}` with 400 (a body that does not decode), 401
//! (token), 408 (the body did not arrive in time), 413 (body too large), 415 (another encoding,
//! or a `Content-Type` of a binary format such as Fluent Bit's default MessagePack: its bytes are
//! never stored as records) or 503 (throttled, too many bodies being read, or
//! stopping). A request is accepted whole or not at all; the token is checked before the body is
//! read, in constant time (digests compared), against every configured token. A record over a
//! record's 1,000 KiB (Firehose's limit) is accepted with the others and goes, whole, to the error
//! output of every sink it would have reached (`processing-failed`, `Source.RecordTooLarge`): a
//! shipper drops a batch answered 400, so refusing the request would lose every other record of it.

use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri, header};
use axum::response::Response;
use serde::Deserialize;
use serde_json::json;
use serde_json::value::RawValue;
use sluice_engine::audit::HTTP_EVENT_SOURCE;
use sluice_engine::config::{ConnectorConfig, Problems};
use sluice_engine::contract::Source;
use sluice_engine::record::{RecordBatch, UTF8_BOM, now_ms};

use crate::api::Caller;
use crate::api::post::{
    BEARER_TOKENS, KeyPlaces, ListenerKeys, NamedToken, PostEndpoint, PostSource, Protocol, Refusal, RequestFacts,
    body_lines, enqueue, json_answer,
};
use crate::api::{ListenerLimits, TlsFiles};

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
    /// How a body holds its records (default `ndjson`).
    format: Option<BodyFormat>,
}

/// How a request's body holds its records (`format`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum BodyFormat {
    /// One record per line (NDJSON, JSON Lines, or any text).
    #[default]
    Ndjson,
    /// JSON: each element of a top-level array is a record, and so is each other top-level value.
    Json,
}

/// Builds the source from `[sources.<name>]`.
pub fn configure(mut config: ConnectorConfig) -> Result<Arc<dyn Source>, Problems> {
    let places = KeyPlaces::of(&config, BEARER_TOKENS);
    let mut problems = Problems::default();
    let limits = ListenerLimits::take_from(&mut config.table, 1, &mut problems);
    let Some(c) = config.table.deserialize::<HttpConfig>(&mut problems) else { return Err(problems) };
    let keys = ListenerKeys {
        listen: c.listen,
        grpc_listen: None,
        max_body_mb: c.max_body_mb,
        max_inflight_mb: c.max_inflight_mb,
        tls: c.tls,
        secret: c.bearer_token,
        named_secrets: c.bearer_tokens.map(NamedToken::pairs),
    };
    let format = c.format.unwrap_or_default();
    let protocol = Protocol {
        what: match format {
            BodyFormat::Ndjson => "http: NDJSON",
            BodyFormat::Json => "http: JSON",
        },
        default_listen: "127.0.0.1:4574",
        default_body_mb: 16,
        grpc_router: None,
        router: Box::new(move |endpoint| {
            let receive = move |state, caller, uri, headers, body| receive(format, state, caller, uri, headers, body);
            axum::Router::new().fallback(axum::routing::post(receive)).with_state(endpoint)
        }),
    };
    PostSource::configure(places, keys, limits, protocol, problems)
}

/// Splits `body` into records as `format` says (a UTF-8 byte order mark at its start skipped, as
/// the file source skips a file's); an error says why the body is refused.
fn records(format: BodyFormat, body: &[u8]) -> Result<RecordBatch, String> {
    match format {
        BodyFormat::Ndjson => Ok(body_lines(body)),
        BodyFormat::Json => json_records(body),
    }
}

/// The records of a JSON body: each element of a top-level array, each other top-level value.
fn json_records(body: &[u8]) -> Result<RecordBatch, String> {
    let body = body.strip_prefix(UTF8_BOM).unwrap_or(body);
    let mut batch = RecordBatch::with_capacity(now_ms(), body.len());
    for value in serde_json::Deserializer::from_slice(body).into_iter::<&RawValue>() {
        let value = value.map_err(|e| format!("the body is not JSON: {e}"))?;
        if value.get().starts_with('[') {
            let elements: Vec<&RawValue> =
                serde_json::from_str(value.get()).map_err(|e| format!("the body is not JSON: {e}"))?;
            elements.into_iter().for_each(|record| batch.push(record.get().as_bytes()));
        } else {
            batch.push(value.get().as_bytes());
        }
    }
    Ok(batch)
}

/// Media types of binary encodings of many records: read as lines they would be stored as
/// records of binary garbage, so they are refused with what to send instead.
const BINARY_BODIES: &[(&str, &str)] = &[
    (
        "application/msgpack",
        "MessagePack (Fluent Bit's http output sends it unless told otherwise; its `forward` output to a `fluent` source is read as it is)",
    ),
    ("application/x-msgpack", "MessagePack"),
    ("application/x-protobuf", "protobuf (OTLP/HTTP's default encoding: the `otlp` source takes it)"),
    ("application/protobuf", "protobuf"),
    ("application/vnd.google.protobuf", "protobuf"),
    ("application/grpc", "gRPC (OTLP/gRPC: the `otlp` source's `grpc_listen` takes it)"),
    ("avro/binary", "Avro"),
];

/// Why a request's `Content-Type` says its body is none of this source's formats, if it does.
fn binary_body(headers: &HeaderMap) -> Option<String> {
    let given = headers.get(header::CONTENT_TYPE)?.to_str().ok()?;
    let media_type = given.split(';').next().unwrap_or_default().trim().to_ascii_lowercase();
    let (_, what) = BINARY_BODIES.iter().find(|(name, _)| *name == media_type)?;
    Some(format!(
        "`Content-Type: {media_type}` is {what}, which this source does not read: send newline-delimited \
         JSON or text (Fluent Bit: `format json_lines`), or JSON with the source's `format = \"json\"` \
         (Fluent Bit: `format json`)"
    ))
}

/// Why a body sent to an `ndjson` source is refused though it decodes: one JSON value written over
/// several lines (a pretty-printed document, `curl -d @event.json`), whose lines would each be
/// stored as a broken record. (Records of one per line never make one JSON value together: a JSON
/// value's line breaks are outside its strings, so its lines are pieces of it.)
fn one_value_over_lines(format: BodyFormat, body: &[u8]) -> Option<String> {
    let body = body.strip_prefix(UTF8_BOM).unwrap_or(body).trim_ascii();
    let over_lines = format == BodyFormat::Ndjson && body.contains(&b'\n');
    (over_lines && serde_json::from_slice::<serde::de::IgnoredAny>(body).is_ok()).then(|| {
        "the body is one JSON value written over several lines, not one record per line: set the source's \
         `format = \"json\"` to take JSON bodies (each array element a record), or send one record per line"
            .to_string()
    })
}

async fn receive(
    format: BodyFormat,
    State(endpoint): State<Arc<PostEndpoint>>,
    caller: Caller,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let mut facts = RequestFacts::default();
    let outcome = take(format, &endpoint, &headers, body, &mut facts).await;
    let refused = outcome
        .as_ref()
        .err()
        .map(|(status, message)| (status.canonical_reason().unwrap_or("Error"), message.as_str()));
    endpoint.audit_request((HTTP_EVENT_SOURCE, "PostRecords"), &caller, (&uri, &headers), &facts, refused);
    match outcome {
        Ok(count) => json_answer(StatusCode::OK, &json!({"accepted": count})),
        Err((status, message)) => json_answer(status, &json!({"error": message})),
    }
}

/// Takes one request's records: how many, or why not (status and message).
async fn take(
    format: BodyFormat,
    endpoint: &Arc<PostEndpoint>,
    headers: &HeaderMap,
    body: Body,
    facts: &mut RequestFacts,
) -> Result<usize, Refusal> {
    let started = Instant::now();
    endpoint.check_bearer(headers, facts)?;
    if let Some(refusal) = binary_body(headers) {
        return Err((StatusCode::UNSUPPORTED_MEDIA_TYPE, refusal));
    }
    let body = endpoint.read(headers, body).await?;
    if let Some(refusal) = one_value_over_lines(format, body.bytes()) {
        return Err((StatusCode::BAD_REQUEST, refusal));
    }
    let batch = records(format, body.bytes()).map_err(|message| (StatusCode::BAD_REQUEST, message))?;
    let count = batch.len();
    (facts.records, facts.bytes) = (Some(count), Some(batch.byte_len()));
    enqueue(endpoint, batch, started).await.map(|()| count)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_lines_skipping_empty_ones() {
        let batch = records(BodyFormat::Ndjson, b"a\r\n\nbc\n").unwrap();
        assert_eq!(batch.iter().collect::<Vec<_>>(), vec![&b"a"[..], b"bc"]);
    }

    fn json_records(body: &str) -> Result<Vec<String>, String> {
        let batch = records(BodyFormat::Json, body.as_bytes())?;
        Ok(batch.iter().map(|r| String::from_utf8(r.to_vec()).unwrap()).collect())
    }

    /// The bodies shippers send with JSON formats (Fluent Bit's documented payloads for `json`,
    /// `json_stream` and `json_lines`; Vector's http sink's array): each record once, its text
    /// byte for byte (numbers, escapes and key order as sent).
    #[test]
    fn a_json_body_gives_each_array_element_and_each_value_as_a_record() {
        let fluent_bit_json = "[\n  {\n    \"timestamp\": 1398282091.000,\n    \"log\": \"Core: initialization\"\n  },\n  \
                               {\"timestamp\": 1422350608.000, \"log\": \"Initial import.\"}\n]";
        assert_eq!(
            json_records(fluent_bit_json).unwrap(),
            [
                "{\n    \"timestamp\": 1398282091.000,\n    \"log\": \"Core: initialization\"\n  }",
                r#"{"timestamp": 1422350608.000, "log": "Initial import."}"#
            ]
        );
        let stream = r#"{"a":1}{"b":"\u00e9"}  {"c":[1,2]}"#;
        assert_eq!(json_records(stream).unwrap(), [r#"{"a":1}"#, r#"{"b":"\u00e9"}"#, r#"{"c":[1,2]}"#]);
        let lines = "{\"a\":1}\r\n{\"b\":2}\n\n";
        assert_eq!(json_records(lines).unwrap(), [r#"{"a":1}"#, r#"{"b":2}"#]);
        // Arrays one after another, arrays as elements, scalars.
        assert_eq!(json_records(r#"[{"a":1}] [[1,2], 3, "x"]"#).unwrap(), [r#"{"a":1}"#, "[1,2]", "3", r#""x""#]);
        // What .NET's `StreamWriter` with `Encoding.UTF8` writes first: no part of a record.
        assert_eq!(json_records("\u{feff}[{\"a\":1}]").unwrap(), [r#"{"a":1}"#]);
        let lines = records(BodyFormat::Ndjson, "\u{feff}{\"a\":1}\n\u{feff}x".as_bytes()).unwrap();
        assert_eq!(lines.iter().collect::<Vec<_>>(), [&br#"{"a":1}"#[..], "\u{feff}x".as_bytes()]);
        for empty in ["", " \n", "[]", "[ ]\n[]"] {
            assert_eq!(json_records(empty).unwrap(), Vec::<String>::new(), "{empty:?}");
        }
    }

    /// Fluent Bit's default MessagePack and OTLP's protobuf are refused by their media type, before
    /// a byte is stored; text and JSON types (parameters and case aside) are read.
    #[test]
    fn binary_media_types_are_refused_and_text_ones_read() {
        let with = |value: &str| {
            let mut headers = HeaderMap::new();
            headers.insert(header::CONTENT_TYPE, value.parse().unwrap());
            binary_body(&headers)
        };
        let msgpack = with("application/msgpack").unwrap();
        assert!(msgpack.contains("MessagePack") && msgpack.contains("format json_lines"), "{msgpack}");
        assert!(with("Application/X-Protobuf; charset=binary").unwrap().contains("protobuf"));
        for text in
            ["application/json", "application/x-ndjson", "text/plain; charset=utf-8", "application/octet-stream"]
        {
            assert_eq!(with(text), None, "{text}");
        }
        assert_eq!(binary_body(&HeaderMap::new()), None);
    }

    /// A pretty-printed JSON body sent to an `ndjson` source is refused (its lines are no
    /// records); NDJSON, one value on one line, text lines, and the same body to a `json` source
    /// are read.
    #[test]
    fn one_json_value_over_several_lines_is_refused_by_an_ndjson_source() {
        let pretty = b"{\n  \"event\": \"login\",\n  \"user\": \"a\"\n}\n";
        let refused = one_value_over_lines(BodyFormat::Ndjson, pretty);
        assert!(refused.is_some_and(|m| m.contains("format = \"json\"")));
        assert!(one_value_over_lines(BodyFormat::Ndjson, b"[\n{\"a\":1}\n]").is_some());
        for (format, body) in [
            (BodyFormat::Json, &pretty[..]),
            (BodyFormat::Ndjson, b"{\"a\":1}\n{\"b\":2}\n"),
            (BodyFormat::Ndjson, b"{\"a\":1}\n"),
            (BodyFormat::Ndjson, b"[1]\n[2]"),
            (BodyFormat::Ndjson, b"text\nlines\n"),
            (BodyFormat::Ndjson, b"1\n2\n"),
        ] {
            assert_eq!(one_value_over_lines(format, body), None, "{:?}", String::from_utf8_lossy(body));
        }
    }

    #[test]
    fn a_json_body_that_is_not_json_is_refused_whole_with_where() {
        let cut = json_records("[{\"a\":1},\n {\"b\":").unwrap_err();
        assert!(cut.starts_with("the body is not JSON") && cut.contains("line 2"), "{cut}");
        let text = json_records("{\"a\":1}\nplain text\n").unwrap_err();
        assert!(text.contains("line 2 column 1"), "{text}");
    }

    /// The http source through the real runtime, fed by POSTs of newline-delimited records: every
    /// accepted record exactly once at 1, 2 and 4 workers, all delivered when the stop comes right
    /// after the last acceptance, and a restarted source does not replay what its log delivered.
    #[test]
    fn passes_the_source_conformance_kit() {
        passes_the_kit_with("ndjson", |chunk| chunk.iter().flat_map(|r| r.iter().copied().chain([b'\n'])).collect());
    }

    /// The same with `format = "json"` and each request's records in one JSON array, as Fluent
    /// Bit's `format json` and Vector's http sink send them.
    #[test]
    fn passes_the_source_conformance_kit_with_json_arrays() {
        passes_the_kit_with("json", |chunk| {
            format!("[{}]", chunk.iter().map(|r| String::from_utf8_lossy(r)).collect::<Vec<_>>().join(",\n"))
                .into_bytes()
        });
    }

    /// Runs the source conformance kit on an http source with this `format`, each request's body
    /// made of its records by `body`.
    fn passes_the_kit_with(format: &str, body: fn(&[Vec<u8>]) -> Vec<u8>) {
        use sluice_engine::testkit::source::{Check, SourceCase, conformance};

        let dir = tempfile::tempdir().unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let expected: Vec<Vec<u8>> = (0..5_000).map(|i| format!(r#"{{"post":{i}}}"#).into_bytes()).collect();
        let produce =
            crate::api::post::posting_producer(format!("http://127.0.0.1:{port}/logs"), &[], expected.clone(), body);
        let table = format!("type = \"http\"\nlisten = \"127.0.0.1:{port}\"\nformat = \"{format}\"\n");
        let case = SourceCase::stream(table, expected, produce, dir.path());
        let report = conformance(crate::registry(), &case).unwrap_or_else(|e| panic!("{e}"));
        assert!(report.passed.contains(&Check::Resume) && report.skipped.is_empty(), "{report:?}");
    }
}

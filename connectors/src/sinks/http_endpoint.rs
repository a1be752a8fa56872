//! `type = "http_endpoint"`: delivers to an HTTP endpoint with Firehose's HTTP endpoint protocol 1.0
//! (docs/firehose.md §5), the one Datadog, New Relic, Sumo Logic, Coralogix, Elastic and other partners
//! take, and what a custom receiver written for Firehose expects.
//!
//! ```toml
//! [sinks.siem]
//! type = "http_endpoint"
//! inputs = ["api"]
//! url = "https://collector.example.com/firehose"
//! name = "collector"                          # optional, for logs and DescribeDeliveryStream
//! access_key = "${COLLECTOR_KEY}"             # X-Amz-Firehose-Access-Key
//! content_encoding = "gzip"                   # none (default) | gzip
//! common_attributes = { env = "prod" }        # X-Amz-Firehose-Common-Attributes
//! buffer = { size_mb = 5, interval_s = 300 }  # Firehose's range for HTTP: 1..=64 MB
//! retry = { duration_s = 300 }
//! error_prefix = "http-failed/!{firehose:error-output-type}/"
//! backup_store = { url = "s3://bucket/backup", options = { region = "eu-west-1" } }
//! tls = { ca = "certs/private-ca.pem" }     # optional: crate::tls
//! healthcheck = true                         # default: a HEAD of `url` at start
//! ```
//!
//! Each request is `{"records":[{"data":"<base64>"},…],"requestId":"<uuid>","timestamp":<ms>}` (at
//! most 10,000 records; [`FirehoseRequest`], this sink's wire format) with the protocol's headers;
//! only 200 with a JSON body whose `requestId` matches is success. Failures
//! are classified as docs/firehose.md §5 gives them (`HttpEndpoint.RequestTimeout`, `.ConnectionFailed`,
//! `.ConnectionReset`, `.ResponseTooLarge`, `.InvalidResponseFromDestination`,
//! `.DestinationException`); only 413 is permanent, every other status is retried (Firehose
//! retries 4xx too). What is not delivered goes to the error output in `backup_store` (required,
//! like Firehose's S3Configuration). Beyond Firehose: `http://` URLs and any port are allowed (for
//! receivers on the same host), and a 413 is backed up rather than dropped; and, unless
//! `healthcheck = false`, a `HEAD` of `url` at start (the protocol has no health call: any answer
//! will do), so that a server certificate the client refuses stops the run with what to set,
//! instead of every request failing and being backed up; no answer only warns.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use serde::Deserialize;
use sluice_engine::compression::Compression;
use sluice_engine::config::{ConnectorConfig, Diagnostic, FixedBody, Problems};
use sluice_engine::contract::{DeliveryError, DestinationKind, Payload, Sink};
use sluice_engine::format::{ObjectFormat, RecordCodec, TextFormat};

use crate::api::firehose::{ACCOUNT, stream_arn};
use crate::sinks::object_store::{BackupOwner, BackupStore};
use crate::tls::ClientTls;

/// A response body larger than this is an error (`HttpEndpoint.ResponseTooLarge`).
const MAX_RESPONSE_BYTES: usize = 1 << 20;
/// Most records in one request (Firehose's HTTP endpoint protocol).
const MAX_REQUEST_RECORDS: u64 = 10_000;
/// What the sink type's destination takes (the registry's line): Firehose HTTP endpoint requests
/// of at most 64 MiB before compression (its buffer range ends at 64 MB).
pub const BODY: FixedBody =
    FixedBody { describe: "Firehose HTTP endpoint request JSON", max_bytes: Some(64 << 20), buffering: None };

/// The body of a Firehose HTTP endpoint request, as a record codec: the engine streams records
/// into it (compressed when `content_encoding = "gzip"`, at most 10,000 records and 64 MiB, each
/// request named with a fresh id) and splits a refused request back into its records for the backup.
#[derive(Debug, Clone, Copy)]
pub struct FirehoseRequest;

impl RecordCodec for FirehoseRequest {
    fn describe(&self) -> String {
        "firehose-http-request".into()
    }

    fn content_type(&self) -> &'static str {
        "application/json"
    }

    fn header(&self) -> Vec<u8> {
        b"{\"records\":[".to_vec()
    }

    fn encode(&self, record: &[u8], out: &mut Vec<u8>) -> Result<(), String> {
        use base64::Engine;
        out.extend_from_slice(b"{\"data\":\"");
        let start = out.len();
        out.resize(start + base64::encoded_len(record.len(), true).unwrap_or(0), 0);
        // The slice has exactly the encoded length, so this cannot fail.
        let _ = base64::engine::general_purpose::STANDARD.encode_slice(record, &mut out[start..]);
        out.extend_from_slice(b"\"}");
        Ok(())
    }

    fn separator(&self) -> &'static [u8] {
        b","
    }

    /// Closes the record array and adds the request id (the object's key) and the time it was sealed.
    fn trailer(&self, request_id: &str) -> Vec<u8> {
        format!("],\"requestId\":\"{request_id}\",\"timestamp\":{}}}", sluice_engine::record::now_ms()).into_bytes()
    }

    /// The records of a request body, base64-decoded.
    fn records_of(&self, body: &[u8]) -> Result<Vec<Vec<u8>>, String> {
        use base64::Engine;
        #[derive(Deserialize)]
        struct Request {
            records: Vec<Record>,
        }
        #[derive(Deserialize)]
        struct Record {
            data: String,
        }
        let request: Request = serde_json::from_slice(body).map_err(|e| e.to_string())?;
        request
            .records
            .iter()
            .map(|r| base64::engine::general_purpose::STANDARD.decode(&r.data).map_err(|e| e.to_string()))
            .collect()
    }
}

/// The sink's own keys.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct HttpEndpointConfig {
    url: String,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    access_key: Option<String>,
    #[serde(default)]
    content_encoding: Option<String>,
    #[serde(default)]
    common_attributes: BTreeMap<String, String>,
    #[serde(default)]
    timeout_s: Option<u64>,
    #[serde(default)]
    region: Option<String>,
    #[serde(default, deserialize_with = "crate::sinks::object_store::url_or_table")]
    backup_store: Option<BackupStore>,
    #[serde(default)]
    healthcheck: Option<bool>,
}

/// A configured HTTP endpoint sink.
pub struct HttpEndpointSink {
    url: reqwest::Url,
    name: Option<String>,
    access_key: Option<String>,
    /// Request bodies, compressed with `content_encoding`.
    wire: Arc<dyn ObjectFormat>,
    /// `{"commonAttributes":{…}}`, when any are set.
    common_attributes: Option<String>,
    source_arn: String,
    client: crate::tls::TlsClient,
    backup: Arc<dyn Sink>,
    /// Whether `prepare` sends its `HEAD` first.
    healthcheck: bool,
}

/// Builds an HTTP endpoint sink from `[sinks.<name>]`.
pub fn configure(mut config: ConnectorConfig) -> Result<Arc<dyn Sink>, Problems> {
    let span = config.table.span.clone();
    let spans = |key: &str| config.table.value_span(key).unwrap_or(span.clone());
    let (url_span, encoding_span, attributes_span) =
        (spans("url"), spans("content_encoding"), spans("common_attributes"));
    let timeout_at = config.table.key_at("timeout_s");
    let key_span = spans("access_key");
    let owner = BackupOwner::of(&config);
    let pipeline = config.pipeline.clone();
    let mut problems = Problems::default();
    let tls = ClientTls::take_from(&mut config.table, &config.base_dir, &mut problems);
    let Some(c) = config.table.deserialize::<HttpEndpointConfig>(&mut problems) else { return Err(problems) };
    let url =
        reqwest::Url::parse(&c.url).ok().filter(|u| matches!(u.scheme(), "http" | "https") && c.url.len() <= 1000);
    if url.is_none() {
        problems.push(
            Diagnostic::new(url_span, format!("`{}` is not an http(s) URL of at most 1000 characters", c.url))
                .with_hint("e.g. url = \"https://collector.example.com/firehose\""),
        );
    }
    let compression = match c.content_encoding.as_deref() {
        None | Some("none") => Some(Compression::None),
        Some("gzip") => Some(Compression::Gzip),
        Some(other) => {
            problems.push(
                Diagnostic::new(encoding_span, format!("unknown content_encoding `{other}`"))
                    .with_hint("Firehose's ContentEncoding is `none` or `gzip`"),
            );
            None
        }
    };
    if c.access_key.as_ref().is_some_and(|k| k.len() > 4096 || http::HeaderValue::from_str(k).is_err()) {
        problems.push(Diagnostic::new(key_span, "`access_key` must be at most 4096 printable characters"));
    }
    let bad_attribute = c.common_attributes.iter().find(|(k, v)| !(1..=256).contains(&k.len()) || v.len() > 1024);
    if c.common_attributes.len() > 50 || bad_attribute.is_some() {
        problems.push(
            Diagnostic::new(attributes_span, "too many or too long common attributes")
                .with_hint("Firehose allows 50, names of 1-256 characters and values of at most 1024"),
        );
    }
    let common_attributes = (!c.common_attributes.is_empty())
        .then(|| serde_json::json!({ "commonAttributes": c.common_attributes }).to_string());
    let timeout = problems.take(
        timeout_at
            .within(c.timeout_s, 180, 1..=180, "Firehose waits 3 minutes for an endpoint's answer (default 180)")
            .map(Duration::from_secs),
    );
    let backup = owner.required(c.backup_store, "http_endpoint", &problems);
    let backup = problems.take(backup);
    let (url, compression, timeout, backup, tls) =
        problems.finish((|| Some((url?, compression?, timeout?, backup?, tls?)))())?;
    let client = tls.client(timeout)?;
    let region = c.region.unwrap_or_else(|| "us-east-1".to_string());
    Ok(Arc::new(HttpEndpointSink {
        url,
        name: c.name,
        access_key: c.access_key,
        // A request is named by a fresh id, sent again unchanged on every retry.
        wire: Arc::new(
            TextFormat::new(FirehoseRequest, compression)
                .one_stream()
                .at_most_records(MAX_REQUEST_RECORDS)
                .named_by(|| uuid::Uuid::new_v4().to_string()),
        ),
        common_attributes,
        source_arn: stream_arn(&region, ACCOUNT, &pipeline),
        client,
        backup,
        healthcheck: c.healthcheck.unwrap_or(true),
    }))
}

/// The error code of a request that got no answer.
fn send_error(e: &reqwest::Error) -> &'static str {
    if e.is_timeout() {
        "HttpEndpoint.RequestTimeout"
    } else if e.is_connect() {
        "HttpEndpoint.ConnectionFailed"
    } else {
        "HttpEndpoint.ConnectionReset"
    }
}

/// The endpoint's answer to one request.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct EndpointResponse {
    request_id: String,
    #[serde(default, rename = "errorMessage")]
    error_message: Option<String>,
}

impl HttpEndpointSink {
    /// Sends one request; `Ok` only for 200 with a matching `requestId`.
    async fn send(request: reqwest::RequestBuilder, request_id: String) -> Result<(), DeliveryError> {
        let retryable = |code: &str, message: String| DeliveryError::Retryable { code: code.into(), message };
        let mut response = request.send().await.map_err(|e| retryable(send_error(&e), crate::tls::send_failure(&e)))?;
        let status = response.status();
        let mut body = Vec::new();
        while let Some(chunk) =
            response.chunk().await.map_err(|e| retryable(send_error(&e), sluice_engine::redact::error(&e)))?
        {
            body.extend_from_slice(&chunk);
            if body.len() > MAX_RESPONSE_BYTES {
                return Err(retryable("HttpEndpoint.ResponseTooLarge", format!("{status}: response over 1 MiB")));
            }
        }
        let parsed = serde_json::from_slice::<EndpointResponse>(&body).ok();
        let said = parsed.as_ref().and_then(|r| r.error_message.clone()).unwrap_or_else(|| {
            let text = String::from_utf8_lossy(&body);
            text.chars().take(512).collect()
        });
        if status == reqwest::StatusCode::PAYLOAD_TOO_LARGE {
            return Err(DeliveryError::Permanent {
                code: "HttpEndpoint.DestinationException".into(),
                message: format!("{status}: {said}"),
            });
        }
        if status != reqwest::StatusCode::OK {
            return Err(retryable("HttpEndpoint.DestinationException", format!("{status}: {said}")));
        }
        match parsed {
            Some(r) if r.request_id == request_id => Ok(()),
            Some(r) => Err(retryable(
                "HttpEndpoint.InvalidResponseFromDestination",
                format!("the response's requestId `{}` is not the request's `{request_id}`", r.request_id),
            )),
            None => Err(retryable(
                "HttpEndpoint.InvalidResponseFromDestination",
                format!("200 without a JSON body holding requestId: {said}"),
            )),
        }
    }
}

impl Sink for HttpEndpointSink {
    fn describe(&self) -> String {
        match &self.name {
            Some(name) => format!("http_endpoint {name} {}", self.location()),
            None => format!("http_endpoint {}", self.location()),
        }
    }

    /// The URL without its secrets (a userinfo password, credential-like query values).
    fn location(&self) -> String {
        sluice_engine::redact::url(self.url.as_str())
    }

    fn destination(&self) -> DestinationKind {
        DestinationKind::HttpEndpoint
    }

    /// Unless `healthcheck = false`, a `HEAD` of the URL: a certificate the client refuses is an
    /// error; whatever the endpoint answers (the protocol defines only `POST`), or no answer, is
    /// not. (The engine checks and prepares the backup store.)
    fn check(&self) -> BoxFuture<'static, Result<(), DeliveryError>> {
        let check = self.healthcheck.then(|| (self.client.current().head(self.url.clone()), self.location()));
        Box::pin(async move {
            if let Some((request, url)) = check {
                crate::tls::start_up_check(request, &url, "HttpEndpoint.TlsFailed").await?;
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

    fn measure_with(&self, meter: sluice_engine::metrics::SinkMeter) {
        self.client.tls_metrics().meter_with(meter);
    }

    /// `payload.key` is the request id (the batcher names requests so); the same id is sent on
    /// every retry, as Firehose does.
    fn deliver(&self, payload: Payload) -> BoxFuture<'static, Result<(), DeliveryError>> {
        let mut request = self
            .client
            .current()
            .post(self.url.clone())
            .header("X-Amz-Firehose-Protocol-Version", "1.0")
            .header("X-Amz-Firehose-Request-Id", payload.key.as_str())
            .header("X-Amz-Firehose-Source-Arn", self.source_arn.as_str())
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(payload.body);
        if let Some(key) = &self.access_key {
            request = request.header("X-Amz-Firehose-Access-Key", key.as_str());
        }
        if let Some(attributes) = &self.common_attributes {
            request = request.header("X-Amz-Firehose-Common-Attributes", attributes.as_str());
        }
        if let Some(encoding) = payload.content_encoding {
            request = request.header(reqwest::header::CONTENT_ENCODING, encoding);
        }
        Box::pin(HttpEndpointSink::send(request, payload.key))
    }
}

//! `type = "opensearch"`: delivers to OpenSearch or Elasticsearch with one `_bulk` request per buffer,
//! as Firehose's OpenSearch destination does (docs/firehose.md §14).
//!
//! ```toml
//! [sinks.search]
//! type = "opensearch"
//! inputs = ["trail"]
//! url = "https://search.example.com:9200"   # http:// allowed for local clusters
//! index = "cloudtrail"                      # 1-80 characters, OpenSearch's index name rules
//! index_rotation = "day"                    # none | hour | day (default) | week | month
//! document_id = "firehose"                  # firehose (default): an id per record, the same on every retry | none
//! auth = { username = "${OS_USER}", password = "${OS_PASS}" }   # basic auth, or:
//! # aws_sigv4 = { region = "us-east-1", service = "es" }       # Amazon OpenSearch Service ("aoss": Serverless)
//! content_encoding = "gzip"                 # gzip (default) | none: how request bodies are sent
//! buffer = { size_mb = 5, interval_s = 300 }
//! retry = { duration_s = 300 }
//! backup = "failed"                         # failed (FailedDocumentsOnly) | all (AllDocuments)
//! backup_store = { url = "s3://bucket/os-backup" }   # required, as Firehose's S3Configuration
//! tls = { cert = "client.pem", key = "client.key" }  # optional (client certificates): crate::tls
//! healthcheck = true                        # default: GET / at start, authenticated (prepare)
//! ```
//!
//! The request body is this sink's wire format ([`BulkRequest`]): for each record an `index` action
//! naming its index explicitly (the index name plus the suffix of the record's arrival time in UTC,
//! [`Rotation`]) and, with `document_id = "firehose"`, an `_id` made once per record and sent
//! unchanged on every retry, so a retried document replaces itself instead of duplicating; then
//! the record as one line. A record that is not one UTF-8 JSON object is refused before it is
//! sent: it goes to the error output at once (`DataFormatConversion.MalformedData`, with
//! `OpenSearch.MalformedData`'s reason). The answer is read item by item: an item answered 2xx is
//! stored, 429 and 5xx are sent again alone (a payload made of their own lines, ids kept) within
//! `retry.duration_s`, and any other status (a 400 mapping conflict, a 409) is refused for good:
//! the engine writes it under `AmazonOpenSearchService-failed` with Firehose's failed-document
//! fields (`esDocumentId`, `esIndexName`, `esTypeName`, `errorCode` = the item's status,
//! `errorMessage` = its error). A whole request that fails (no connection, a timeout, 429, 5xx, 413)
//! is retried whole; 401/403 and other 4xx are permanent. Each request carries its payload key as
//! `X-Opaque-Id`, which OpenSearch and Elasticsearch echo in their task and slow logs.
//! Beyond Firehose: `http://` URLs and any port, basic auth to self-managed clusters, gzip request
//! bodies (Firehose does not say), and ids that also make a replay after a crash replace, not
//! duplicate, whatever the first attempt indexed, as long as the same object is resent.

use std::cell::Cell;
use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use chrono::{Datelike, TimeZone};
use futures::future::BoxFuture;
use serde::Deserialize;
use sluice_engine::compression::{Compression, compress, decompress};
use sluice_engine::config::{ConnectorConfig, Diagnostic, FixedBody, Problems};
use sluice_engine::contract::{DeliveryError, DestinationKind, Payload, RefusedRecord, Sink};
use sluice_engine::format::{ObjectFormat, RecordCodec, TextFormat};

use crate::aws_credentials::AwsCredentials;
use crate::sinks::object_store::{BackupOwner, BackupStore};
use crate::tls::ClientTls;
use crate::transforms::json;

/// What the sink type's destination takes (the registry's line): `_bulk` requests of at most
/// 100 MiB before compression (Firehose's OpenSearch buffer range ends at 100 MB).
pub const BODY: FixedBody =
    FixedBody { describe: "`_bulk` request NDJSON", max_bytes: Some(100 << 20), buffering: None };
/// A bulk answer larger than this is an error (about 2 KiB per item for 50,000 items).
const MAX_RESPONSE_BYTES: usize = 128 << 20;
/// The longest index name (Firehose's `IndexName`), before the rotation suffix.
const MAX_INDEX_NAME: usize = 80;

/// How the index of a record is named from its arrival time (UTC), as Firehose's
/// `IndexRotationPeriod` does for `myindex` at 2016-02-25T13:00Z.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rotation {
    /// `myindex`.
    None,
    /// `myindex-2016-02-25-13`.
    Hour,
    /// `myindex-2016-02-25`.
    Day,
    /// `myindex-2016-w09`: weeks start on Sunday and week 1 is the first week that contains a
    /// Saturday of the year (Firehose's rule; its own example says `w08` for this date, which its
    /// rule does not give: docs/firehose.md §14).
    Week,
    /// `myindex-2016-02`.
    Month,
}

impl Rotation {
    /// The names in a pipeline file.
    pub const NAMES: &'static [&'static str] = &["none", "hour", "day", "week", "month"];

    fn from_name(name: &str) -> Option<Self> {
        Some(match name {
            "none" => Rotation::None,
            "hour" => Rotation::Hour,
            "day" => Rotation::Day,
            "week" => Rotation::Week,
            "month" => Rotation::Month,
            _ => return None,
        })
    }

    /// The index for a record of `index` that arrived at `arrival_ms`.
    pub fn index_name(self, index: &str, arrival_ms: i64) -> String {
        let Some(at) = chrono::Utc.timestamp_millis_opt(arrival_ms).single() else {
            return index.to_string();
        };
        match self {
            Rotation::None => index.to_string(),
            Rotation::Hour => format!("{index}-{}", at.format("%Y-%m-%d-%H")),
            Rotation::Day => format!("{index}-{}", at.format("%Y-%m-%d")),
            Rotation::Month => format!("{index}-{}", at.format("%Y-%m")),
            Rotation::Week => {
                // A week belongs to the year of its Saturday and is numbered by that Saturday.
                let day = at.date_naive();
                let saturday = day + chrono::Days::new(u64::from(6 - day.weekday().num_days_from_sunday()));
                format!("{index}-{}-w{:02}", saturday.year(), saturday.ordinal0() / 7 + 1)
            }
        }
    }
}

/// Whether `name` is a name OpenSearch accepts for an index (lowercase, none of `\/*?"<>|,#:` or a
/// space, not starting with `_`, `-` or `+`, not `.` or `..`), at most 80 bytes.
fn valid_index_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_INDEX_NAME
        && name != "."
        && name != ".."
        && !name.starts_with(['_', '-', '+'])
        && !name.chars().any(|c| c.is_uppercase() || "\\/*?\"<>|,#: ".contains(c))
}

thread_local! {
    /// This thread's document ids: a random prefix drawn once and a counter.
    static DOCUMENT_IDS: Cell<Option<(u64, u64)>> = const { Cell::new(None) };
}

/// A fresh document id: 32 hex digits, unique across threads and processes (a 64-bit random prefix
/// per thread and a counter), made when the record is encoded and kept in the request body.
fn document_id() -> String {
    DOCUMENT_IDS.with(|ids| {
        let (prefix, count) = ids.get().unwrap_or_else(|| (rand::random(), 0));
        ids.set(Some((prefix, count.wrapping_add(1))));
        format!("{prefix:016x}{count:016x}")
    })
}

/// The body of a `_bulk` request, as a record codec: each record becomes an `index` action line and
/// the record as one line (module docs).
#[derive(Debug, Clone)]
pub struct BulkRequest {
    index: String,
    rotation: Rotation,
    document_ids: bool,
}

impl RecordCodec for BulkRequest {
    fn describe(&self) -> String {
        "opensearch-bulk".into()
    }

    fn content_type(&self) -> &'static str {
        "application/x-ndjson"
    }

    fn encode(&self, record: &[u8], out: &mut Vec<u8>) -> Result<(), String> {
        self.encode_arrived(record, sluice_engine::record::now_ms(), out)
    }

    fn encode_arrived(&self, record: &[u8], arrival_ms: i64, out: &mut Vec<u8>) -> Result<(), String> {
        let start = out.len();
        let index = self.rotation.index_name(&self.index, arrival_ms);
        // The index name is checked when configured, and the suffix is digits and dashes: no
        // escaping is needed; neither is the id (hex digits).
        out.extend_from_slice(b"{\"index\":{\"_index\":\"");
        out.extend_from_slice(index.as_bytes());
        if self.document_ids {
            out.extend_from_slice(b"\",\"_id\":\"");
            out.extend_from_slice(document_id().as_bytes());
        }
        out.extend_from_slice(b"\"}}\n");
        // The document, one line; a record that cannot be one leaves nothing, its action neither.
        if let Err(why) = json::push_object_line(record, out) {
            out.truncate(start);
            return Err(format!("OpenSearch.MalformedData: {why}"));
        }
        Ok(())
    }

    /// The documents of a request body (every second line), as they were sent.
    fn records_of(&self, text: &[u8]) -> Result<Vec<Vec<u8>>, String> {
        let items = items(text)?;
        Ok(items.into_iter().map(|(_, document)| document.to_vec()).collect())
    }
}

/// One item of a request body: its action line and its document line, without their newlines.
type Item<'a> = (&'a [u8], &'a [u8]);

/// The items of a request body.
fn items(text: &[u8]) -> Result<Vec<Item<'_>>, String> {
    let mut lines = text.split(|&b| b == b'\n');
    let mut items = Vec::new();
    while let Some(action) = lines.next() {
        if action.is_empty() {
            continue;
        }
        let document = lines.next().ok_or("a bulk action without its document")?;
        items.push((action, document));
    }
    Ok(items)
}

/// The sink's own keys.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct OpenSearchConfig {
    url: String,
    index: String,
    #[serde(default)]
    index_rotation: Option<String>,
    #[serde(default)]
    document_id: Option<String>,
    #[serde(default)]
    auth: Option<BasicAuth>,
    #[serde(default)]
    aws_sigv4: Option<AwsSigV4>,
    #[serde(default)]
    content_encoding: Option<String>,
    #[serde(default)]
    timeout_s: Option<u64>,
    #[serde(default)]
    healthcheck: Option<bool>,
    #[serde(default, deserialize_with = "crate::sinks::object_store::url_or_table")]
    backup_store: Option<BackupStore>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct BasicAuth {
    username: String,
    password: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AwsSigV4 {
    region: String,
    #[serde(default = "default_service")]
    service: String,
}

fn default_service() -> String {
    "es".into()
}

/// How requests are authenticated.
#[derive(Clone)]
enum Auth {
    None,
    /// `Authorization: Basic …`, made once.
    Basic(http::HeaderValue),
    /// SigV4 with credentials from the AWS chain (`crate::aws_credentials`), found at start.
    SigV4 {
        credentials: Arc<tokio::sync::OnceCell<AwsCredentials>>,
        region: String,
        service: String,
    },
}

impl Auth {
    /// Finds the credentials SigV4 signs with (once; an error names what was tried).
    async fn resolve(&self) -> Result<(), DeliveryError> {
        if let Auth::SigV4 { credentials, region, .. } = self {
            credentials
                .get_or_try_init(|| AwsCredentials::resolve(region, "`aws_sigv4`"))
                .await
                .map_err(|message| DeliveryError::Permanent { code: "OpenSearch.NoCredentials".into(), message })?;
        }
        Ok(())
    }

    /// `headers` with the request's authentication: basic auth, or SigV4 over `method`, `url` and
    /// `body` with the credentials of now (temporary ones refreshed).
    async fn authorize(
        &self,
        method: &str,
        url: &reqwest::Url,
        mut headers: http::HeaderMap,
        body: &[u8],
    ) -> Result<http::HeaderMap, DeliveryError> {
        Ok(match self {
            Auth::None => headers,
            Auth::Basic(value) => {
                headers.insert(http::header::AUTHORIZATION, value.clone());
                headers
            }
            Auth::SigV4 { credentials, region, service } => {
                let signing =
                    |message: String| DeliveryError::Retryable { code: "OpenSearch.SigningFailed".into(), message };
                self.resolve().await?;
                let chain = credentials.get().ok_or_else(|| signing("no AWS credentials".into()))?;
                let now = chain.current().await.map_err(signing)?;
                now.sign_request(method, url, url.path(), (region, service), headers, body).map_err(|e| {
                    DeliveryError::Permanent { code: "OpenSearch.SigningFailed".into(), message: e.to_string() }
                })?
            }
        })
    }
}

/// A configured OpenSearch sink.
pub struct OpenSearchSink {
    /// The cluster's base URL.
    url: reqwest::Url,
    /// `<url>/_bulk`.
    bulk_url: reqwest::Url,
    auth: Auth,
    wire: Arc<dyn ObjectFormat>,
    compression: Compression,
    client: crate::tls::TlsClient,
    backup: Arc<dyn Sink>,
    /// Whether `prepare` asks the cluster's root (`GET /`) first.
    healthcheck: bool,
}

/// Builds an OpenSearch sink from `[sinks.<name>]`.
pub fn configure(mut config: ConnectorConfig) -> Result<Arc<dyn Sink>, Problems> {
    let span = config.table.span.clone();
    let spans = |key: &str| config.table.value_span(key).unwrap_or(span.clone());
    let (url_span, index_span, rotation_span, id_span) =
        (spans("url"), spans("index"), spans("index_rotation"), spans("document_id"));
    let (auth_span, encoding_span) = (spans("aws_sigv4"), spans("content_encoding"));
    let timeout_at = config.table.key_at("timeout_s");
    let owner = BackupOwner::of(&config);
    let mut problems = Problems::default();
    let tls = ClientTls::take_from(&mut config.table, &config.base_dir, &mut problems);
    let Some(c) = config.table.deserialize::<OpenSearchConfig>(&mut problems) else { return Err(problems) };
    let urls = problems.take(
        reqwest::Url::parse(&c.url)
            .ok()
            .filter(|u| matches!(u.scheme(), "http" | "https") && u.host_str().is_some())
            .ok_or_else(|| {
                Diagnostic::new(url_span.clone(), format!("`{}` is not an http(s) URL", c.url))
                    .with_hint("the cluster's endpoint, e.g. url = \"https://search.example.com:9200\"")
            })
            .and_then(|url| {
                let bulk_url = url.join(&format!("{}/_bulk", url.path().trim_end_matches('/'))).map_err(|e| {
                    Diagnostic::new(url_span.clone(), format!("cannot make the _bulk URL of `{}`: {e}", c.url))
                })?;
                Ok((url, bulk_url))
            }),
    );
    if !valid_index_name(&c.index) {
        problems.push(
            Diagnostic::new(index_span, format!("`{}` is not an index name OpenSearch takes", c.index)).with_hint(
                "1-80 lowercase characters, none of \\ / * ? \" < > | , # : or a space, not starting with _ - +",
            ),
        );
    }
    let rotation = problems.take(match c.index_rotation.as_deref() {
        None => Ok(Rotation::Day),
        Some(name) => Rotation::from_name(name).ok_or_else(|| {
            Diagnostic::new(rotation_span, format!("unknown index_rotation `{name}`")).with_hint(format!(
                "one of {} (Firehose's IndexRotationPeriod; default day)",
                Rotation::NAMES.join(", ")
            ))
        }),
    });
    let document_ids = problems.take(match c.document_id.as_deref() {
        None | Some("firehose") => Ok(true),
        Some("none") => Ok(false),
        Some(other) => Err(Diagnostic::new(id_span, format!("unknown document_id `{other}`")).with_hint(
            "`firehose` (an id per record, the same on every retry: no duplicates) or `none` (the cluster assigns ids)",
        )),
    });
    let compression = problems.take(match c.content_encoding.as_deref() {
        None | Some("gzip") => Ok(Compression::Gzip),
        Some("none") => Ok(Compression::None),
        Some(other) => Err(Diagnostic::new(encoding_span, format!("unknown content_encoding `{other}`"))
            .with_hint("`gzip` (default) or `none`")),
    });
    let auth = problems.take(match (c.auth, c.aws_sigv4) {
        (Some(_), Some(_)) => Err(Diagnostic::new(auth_span, "`auth` and `aws_sigv4` exclude each other")
            .with_hint("basic auth for a self-managed cluster, SigV4 for Amazon OpenSearch Service")),
        (Some(basic), None) => {
            let token =
                base64::engine::general_purpose::STANDARD.encode(format!("{}:{}", basic.username, basic.password));
            http::HeaderValue::from_str(&format!("Basic {token}"))
                .map_err(|_| Diagnostic::new(auth_span, "`auth` holds characters a header cannot"))
                .map(|mut value| {
                    value.set_sensitive(true);
                    Auth::Basic(value)
                })
        }
        (None, Some(aws)) if !matches!(aws.service.as_str(), "es" | "aoss") => {
            Err(Diagnostic::new(auth_span, format!("unknown SigV4 service `{}`", aws.service))
                .with_hint("`es` for Amazon OpenSearch Service domains, `aoss` for OpenSearch Serverless"))
        }
        // The credentials are found when the run starts (`prepare`): an instance profile or a web
        // identity is there only then.
        (None, Some(aws)) => Ok(Auth::SigV4 { credentials: Arc::default(), region: aws.region, service: aws.service }),
        (None, None) => Ok(Auth::None),
    });
    let timeout = problems.take(
        timeout_at
            .within(c.timeout_s, 180, 1..=900, "how long one `_bulk` request may take (default 180)")
            .map(Duration::from_secs),
    );
    let backup = owner.required(c.backup_store, "opensearch", &problems);
    let backup = problems.take(backup);
    let ((url, bulk_url), rotation, document_ids, compression, auth, timeout, backup, tls) =
        problems.finish((|| Some((urls?, rotation?, document_ids?, compression?, auth?, timeout?, backup?, tls?)))())?;
    let client = tls.client(timeout)?;
    let codec = BulkRequest { index: c.index, rotation, document_ids };
    Ok(Arc::new(OpenSearchSink {
        url,
        bulk_url,
        auth,
        // A request is named by a fresh id (sent as X-Opaque-Id), the same on every retry.
        wire: Arc::new(TextFormat::new(codec, compression).one_stream().named_by(|| uuid::Uuid::new_v4().to_string())),
        compression,
        client,
        backup,
        healthcheck: c.healthcheck.unwrap_or(true),
    }))
}

/// The part of a `_bulk` answer read first: whether any item failed.
#[derive(Debug, Deserialize)]
struct BulkAnswer {
    #[serde(default)]
    errors: bool,
}

/// A `_bulk` answer with its items, read when some failed.
#[derive(Debug, Deserialize)]
struct BulkItems {
    items: Vec<std::collections::HashMap<String, BulkItem>>,
}

/// One item of a `_bulk` answer (under its action's name).
#[derive(Debug, Deserialize)]
struct BulkItem {
    status: u16,
    #[serde(default, rename = "_id")]
    id: Option<String>,
    #[serde(default, rename = "_index")]
    index: Option<String>,
    #[serde(default, rename = "_type")]
    kind: Option<String>,
    #[serde(default)]
    error: Option<serde_json::Value>,
}

/// The error code of a request that got no answer.
fn send_error(e: &reqwest::Error) -> &'static str {
    if e.is_timeout() {
        "OpenSearch.RequestTimeout"
    } else if e.is_connect() {
        "OpenSearch.ConnectionFailed"
    } else {
        "OpenSearch.ConnectionReset"
    }
}

impl OpenSearchSink {
    /// The headers of the `_bulk` request for `payload`, before its authentication.
    fn bulk_headers(payload: &Payload) -> http::HeaderMap {
        let mut headers = http::HeaderMap::new();
        headers.insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/x-ndjson"));
        if let Some(encoding) = payload.content_encoding {
            headers.insert(http::header::CONTENT_ENCODING, http::HeaderValue::from_static(encoding));
        }
        if let Ok(id) = http::HeaderValue::from_str(&payload.key) {
            headers.insert("x-opaque-id", id);
        }
        headers
    }
}

/// Reads the answer to `payload` (its body compressed with `compression`) item by item (module docs).
fn answer(
    compression: Compression,
    payload: &Payload,
    status: reqwest::StatusCode,
    body: &[u8],
) -> Result<(), DeliveryError> {
    let said = || String::from_utf8_lossy(&body[..body.len().min(512)]).into_owned();
    let retryable = |code: &str, message: String| DeliveryError::Retryable { code: code.into(), message };
    match status.as_u16() {
        200 => {}
        401 | 403 => {
            return Err(DeliveryError::Permanent {
                code: "OpenSearch.AccessDenied".into(),
                message: format!("{status}: {}", said()),
            });
        }
        413 => return Err(retryable("OpenSearch.RequestTooLarge", format!("{status}: {}", said()))),
        429 => return Err(retryable("OpenSearch.TooManyRequests", format!("{status}: {}", said()))),
        500..=599 => return Err(retryable("OpenSearch.ServerError", format!("{status}: {}", said()))),
        _ => {
            return Err(DeliveryError::Permanent {
                code: "OpenSearch.InvalidRequest".into(),
                message: format!("{status}: {}", said()),
            });
        }
    }
    let invalid = |why: String| retryable("OpenSearch.InvalidResponse", why);
    let head: BulkAnswer = serde_json::from_slice(body).map_err(|e| invalid(format!("the _bulk answer: {e}")))?;
    if !head.errors {
        return Ok(());
    }
    let answer: BulkItems = serde_json::from_slice(body).map_err(|e| invalid(format!("the _bulk answer: {e}")))?;
    let text = decompress(compression, &payload.body)
        .map_err(|e| invalid(format!("cannot read back the request body: {e}")))?;
    let sent = items(&text).map_err(invalid)?;
    if sent.len() != answer.items.len() {
        return Err(invalid(format!("{} items answered for {} sent", answer.items.len(), sent.len())));
    }
    let mut retry_body = Vec::new();
    let (mut retried, mut refused, mut first_error) = (0u64, Vec::new(), None);
    for ((action, document), item) in sent.iter().zip(&answer.items) {
        let Some(item) = item.values().next() else {
            return Err(invalid("an item without an action".into()));
        };
        if (200..300).contains(&item.status) {
            continue;
        }
        let error = item.error.as_ref().map_or_else(|| format!("status {}", item.status), ToString::to_string);
        first_error.get_or_insert_with(|| format!("{}: {error}", item.status));
        if item.status == 429 || item.status >= 500 {
            retry_body.extend_from_slice(action);
            retry_body.push(b'\n');
            retry_body.extend_from_slice(document);
            retry_body.push(b'\n');
            retried += 1;
            continue;
        }
        let mut details = serde_json::Map::new();
        details.insert("esDocumentId".into(), item.id.clone().unwrap_or_default().into());
        details.insert("esIndexName".into(), item.index.clone().unwrap_or_default().into());
        details.insert("esTypeName".into(), item.kind.clone().unwrap_or_default().into());
        refused.push(RefusedRecord {
            record: document.to_vec(),
            code: item.status.to_string(),
            message: error,
            details,
        });
    }
    let retry = if retried == 0 {
        None
    } else {
        let body = compress(compression, &retry_body)
            .map_err(|e| invalid(format!("cannot compress the items to send again: {e}")))?;
        Some(Box::new(Payload {
            key: payload.key.clone(),
            body: Bytes::from(body),
            content_type: payload.content_type,
            content_encoding: payload.content_encoding,
            records: retried,
            origins: None,
        }))
    };
    Err(DeliveryError::Partly {
        code: "OpenSearch.ItemErrors".into(),
        message: format!(
            "{} of {} documents not indexed ({retried} to send again, {} refused); first: {}",
            retried + refused.len() as u64,
            sent.len(),
            refused.len(),
            first_error.unwrap_or_default()
        ),
        retry,
        refused,
    })
}

impl Sink for OpenSearchSink {
    fn describe(&self) -> String {
        format!("opensearch {}", self.location())
    }

    /// The URL without its secrets.
    fn location(&self) -> String {
        sluice_engine::redact::url(self.url.as_str())
    }

    fn destination(&self) -> DestinationKind {
        DestinationKind::OpenSearch
    }

    /// The credentials resolved and (unless `healthcheck = false`) the cluster's root asked (`GET
    /// /`, authenticated as `_bulk` requests are): credentials it refuses (401, 403) and a
    /// certificate the client refuses are errors; no answer, or another status, is warned. (The
    /// engine checks and prepares the backup store.)
    fn check(&self) -> BoxFuture<'static, Result<(), DeliveryError>> {
        let (auth, client, root, healthcheck) =
            (self.auth.clone(), self.client.current(), self.url.clone(), self.healthcheck);
        let url = sluice_engine::redact::url(self.url.as_str());
        Box::pin(async move {
            auth.resolve().await?;
            if !healthcheck {
                return Ok(());
            }
            let headers = auth.authorize("GET", &root, http::HeaderMap::new(), &[]).await?;
            let request = client.get(root).headers(headers);
            match crate::tls::start_up_check(request, &url, "OpenSearch.ConnectionFailed").await? {
                Some(status) if matches!(status.as_u16(), 401 | 403) => Err(DeliveryError::Permanent {
                    code: "OpenSearch.AccessDenied".into(),
                    message: format!(
                        "{url} refused our credentials ({status}); check `auth` or `aws_sigv4`, or set healthcheck = false if they may only write to `_bulk`"
                    ),
                }),
                Some(status) if !status.is_success() => {
                    tracing::warn!(url = %url, %status, "the cluster's root did not answer 2xx at start; deliveries will be tried anyway");
                    Ok(())
                }
                _ => Ok(()),
            }
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

    fn deliver(&self, payload: Payload) -> BoxFuture<'static, Result<(), DeliveryError>> {
        let (auth, client, bulk_url, compression) =
            (self.auth.clone(), self.client.current(), self.bulk_url.clone(), self.compression);
        Box::pin(async move {
            let retryable = |code: &str, message: String| DeliveryError::Retryable { code: code.into(), message };
            let headers = auth.authorize("POST", &bulk_url, Self::bulk_headers(&payload), &payload.body).await?;
            let request = client.post(bulk_url).headers(headers).body(payload.body.clone());
            let mut response =
                request.send().await.map_err(|e| retryable(send_error(&e), crate::tls::send_failure(&e)))?;
            let status = response.status();
            let mut body = Vec::new();
            while let Some(chunk) =
                response.chunk().await.map_err(|e| retryable(send_error(&e), sluice_engine::redact::error(&e)))?
            {
                if body.len() + chunk.len() > MAX_RESPONSE_BYTES {
                    return Err(retryable("OpenSearch.ResponseTooLarge", format!("{status}: an answer over 128 MiB")));
                }
                body.write_all(&chunk).map_err(|e| retryable("OpenSearch.ConnectionReset", e.to_string()))?;
            }
            answer(compression, &payload, status, &body)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2016-02-25T13:00:00Z, Firehose's example.
    const EXAMPLE_MS: i64 = 1_456_405_200_000;

    fn ms(date: &str) -> i64 {
        chrono::DateTime::parse_from_rfc3339(date).map(|d| d.timestamp_millis()).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn index_names_follow_firehose_rotation() {
        let name = |r: Rotation, at: i64| r.index_name("myindex", at);
        assert_eq!(name(Rotation::None, EXAMPLE_MS), "myindex");
        assert_eq!(name(Rotation::Hour, EXAMPLE_MS), "myindex-2016-02-25-13");
        assert_eq!(name(Rotation::Day, EXAMPLE_MS), "myindex-2016-02-25");
        assert_eq!(name(Rotation::Month, EXAMPLE_MS), "myindex-2016-02");
        // Weeks start on Sunday; week 1 holds the year's first Saturday (2016-01-02).
        assert_eq!(name(Rotation::Week, EXAMPLE_MS), "myindex-2016-w09");
        assert_eq!(name(Rotation::Week, ms("2015-12-27T00:00:00Z")), "myindex-2016-w01");
        assert_eq!(name(Rotation::Week, ms("2016-01-02T23:59:59Z")), "myindex-2016-w01");
        assert_eq!(name(Rotation::Week, ms("2016-01-03T00:00:00Z")), "myindex-2016-w02");
        assert_eq!(name(Rotation::Week, ms("2016-12-31T12:00:00Z")), "myindex-2016-w53");
        assert_eq!(name(Rotation::Week, ms("2017-01-01T00:00:00Z")), "myindex-2017-w01");
        assert_eq!(name(Rotation::Week, ms("2022-12-31T00:00:00Z")), "myindex-2022-w53");
        assert_eq!(name(Rotation::Week, ms("2023-01-01T00:00:00Z")), "myindex-2023-w01");
    }

    #[test]
    fn index_names_are_checked_as_opensearch_does() {
        for good in ["cloudtrail", "logs.app-1", "a"] {
            assert!(valid_index_name(good), "{good}");
        }
        for bad in ["", "Upper", "_hidden", "-x", "+x", "a b", "a/b", "a,b", "a#b", "a:b", ".", "..", &"x".repeat(81)] {
            assert!(!valid_index_name(bad), "{bad}");
        }
    }

    fn codec(document_ids: bool) -> BulkRequest {
        BulkRequest { index: "logs".into(), rotation: Rotation::Day, document_ids }
    }

    #[test]
    fn each_record_becomes_an_action_and_one_line() {
        let mut out = Vec::new();
        codec(true)
            .encode_arrived(b"{\n  \"a\": 1,\r\n  \"b\": \"x\"\n}\n", EXAMPLE_MS, &mut out)
            .unwrap_or_else(|e| panic!("{e}"));
        codec(true).encode_arrived(br#"{"c":2}"#, EXAMPLE_MS, &mut out).unwrap_or_else(|e| panic!("{e}"));
        let text = String::from_utf8(out.clone()).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 4, "{text}");
        let action: serde_json::Value = serde_json::from_str(lines[0]).unwrap_or_default();
        assert_eq!(action["index"]["_index"], "logs-2016-02-25");
        let (first, second) = (action["index"]["_id"].clone(), serde_json::from_str::<serde_json::Value>(lines[2]));
        assert_eq!(first.as_str().map(str::len), Some(32));
        assert_ne!(second.unwrap_or_default()["index"]["_id"], first, "ids differ");
        assert_eq!(lines[1], "{   \"a\": 1,    \"b\": \"x\" }");
        let records = codec(true).records_of(&out).unwrap_or_default();
        assert_eq!(records, [lines[1].as_bytes().to_vec(), br#"{"c":2}"#.to_vec()]);
        // Without ids the cluster names them.
        let mut out = Vec::new();
        codec(false).encode_arrived(br#"{"c":2}"#, EXAMPLE_MS, &mut out).unwrap_or_else(|e| panic!("{e}"));
        assert!(
            out.starts_with(b"{\"index\":{\"_index\":\"logs-2016-02-25\"}}\n"),
            "{}",
            String::from_utf8_lossy(&out)
        );
    }

    #[test]
    fn what_is_not_one_json_object_is_refused() {
        for bad in [&b"not json"[..], b"[1,2]", b"\"text\"", b"{\"a\":1} {\"b\":2}", b"{\"a\":\"\xff\"}", b""] {
            let mut out = Vec::new();
            let refused = codec(true).encode_arrived(bad, EXAMPLE_MS, &mut out);
            assert!(refused.is_err_and(|e| e.starts_with("OpenSearch.MalformedData")), "{bad:?}");
            assert!(out.is_empty());
        }
    }

    /// A request of `n` documents `{"n":i}` and its payload.
    fn request(n: usize) -> (Vec<u8>, Payload) {
        let mut text = Vec::new();
        for i in 0..n {
            codec(true)
                .encode_arrived(format!("{{\"n\":{i}}}").as_bytes(), EXAMPLE_MS, &mut text)
                .unwrap_or_else(|e| panic!("{e}"));
        }
        let body = compress(Compression::Gzip, &text).unwrap_or_default();
        let payload = Payload {
            key: "request-1".into(),
            body: Bytes::from(body),
            content_type: "application/x-ndjson",
            content_encoding: Some("gzip"),
            records: n as u64,
            origins: None,
        };
        (text, payload)
    }

    fn item(status: u16) -> serde_json::Value {
        let error = (status >= 300).then(|| serde_json::json!({"type": "x", "reason": format!("status {status}")}));
        serde_json::json!({"index": {"_index": "logs-2016-02-25", "_id": format!("id{status}"), "status": status, "error": error}})
    }

    #[test]
    fn a_bulk_answer_is_read_item_by_item() {
        let (text, payload) = request(4);
        let ok = reqwest::StatusCode::OK;
        let all =
            serde_json::json!({"took": 1, "errors": false, "items": [item(201), item(201), item(200), item(201)]});
        assert!(answer(Compression::Gzip, &payload, ok, all.to_string().as_bytes()).is_ok());
        let mixed =
            serde_json::json!({"took": 1, "errors": true, "items": [item(201), item(429), item(400), item(503)]});
        let Err(DeliveryError::Partly { retry, refused, .. }) =
            answer(Compression::Gzip, &payload, ok, mixed.to_string().as_bytes())
        else {
            panic!("a partly stored request");
        };
        let sent = items(&text).unwrap_or_default();
        let retry = retry.unwrap_or_else(|| panic!("items to send again"));
        assert_eq!(retry.records, 2);
        let again = decompress(Compression::Gzip, &retry.body).unwrap_or_default();
        let expected: Vec<u8> = [sent[1], sent[3]].iter().flat_map(|(a, d)| [*a, b"\n", *d, b"\n"].concat()).collect();
        assert_eq!(again, expected, "the 429 and 503 items, action lines (ids) kept");
        assert_eq!(refused.len(), 1);
        assert_eq!((refused[0].record.as_slice(), refused[0].code.as_str()), (&br#"{"n":2}"#[..], "400"));
        assert_eq!(refused[0].details["esDocumentId"], "id400");
        assert_eq!(refused[0].details["esIndexName"], "logs-2016-02-25");
        assert!(refused[0].message.contains("status 400"));
    }

    #[test]
    fn whole_request_failures_are_classified() {
        let (_, payload) = request(2);
        let status = |s: u16| reqwest::StatusCode::from_u16(s).unwrap_or_default();
        for retried in [429, 500, 502, 503, 413] {
            let e = answer(Compression::Gzip, &payload, status(retried), b"busy").err();
            assert!(e.is_some_and(|e| e.is_retryable()), "{retried}");
        }
        for permanent in [400, 401, 403, 404] {
            let e = answer(Compression::Gzip, &payload, status(permanent), b"no").err();
            assert!(e.is_some_and(|e| matches!(e, DeliveryError::Permanent { .. })), "{permanent}");
        }
        // An answer that does not match the request is not taken for success.
        let short = serde_json::json!({"errors": true, "items": [item(400)]}).to_string();
        let e = answer(Compression::Gzip, &payload, status(200), short.as_bytes()).err();
        assert!(e.is_some_and(|e| e.is_retryable()));
        assert!(answer(Compression::Gzip, &payload, status(200), b"<html>").err().is_some_and(|e| e.is_retryable()));
    }
}

//! The Firehose ingest API over AWS JSON 1.1 (docs/firehose.md §1): `POST /` with
//! `X-Amz-Target: Firehose_20150804.<Op>`, for PutRecord, PutRecordBatch, ListDeliveryStreams and
//! DescribeDeliveryStream, so the AWS SDKs and CLI send to sluice unchanged.
//!
//! Guarantees: limits are checked before a body is buffered (its declared length) and before any
//! record is accepted (500 records, 4 MiB per batch, 1,000 KiB per record, the stream-name pattern);
//! a request is accepted whole or, for PutRecordBatch past the in-flight limit, record by record
//! with each refused record reported in order as `ServiceUnavailableException`; nothing is
//! acknowledged before it is in its stream's queue; every refusal is an AWS error document
//! (`{"__type","message"}`) with its HTTP status, never a panic. With access keys, what the
//! headers condemn (no or a malformed signature, an unknown key, a stale date, another region or
//! service) is refused before the body is read, and bodies being read count against the
//! listener's `max_body_buffer_mb` ([`super::listener`]).

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Instant;

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};
use sluice_engine::audit::{AuditEvent, FIREHOSE_EVENT_SOURCE};
use sluice_engine::config::{LogEncryption, StreamInfo};
use sluice_engine::contract::DestinationKind;
use sluice_engine::error_log::{ErrorEvent, Level};
use sluice_engine::metrics::PipelineMetrics;
use sluice_engine::record::{RecordBatch, now_ms};

use super::durable::DurableLog;
use super::listener::{BodyBudget, BodyError, ListenerLimits, declared_length, read_body};
use super::queue::IngestQueue;
use super::sigv4::{AccessKeys, Scope, SignedRequest, check_headers, verify};
use super::{Rejected, accept};
use crate::api::Caller;

/// What the audit trail records of a request, filled in as it is handled.
#[derive(Debug, Default)]
struct Facts {
    /// The delivery stream it names.
    stream: Option<String>,
    /// Records it carries.
    records: Option<usize>,
    /// Data bytes accepted.
    bytes: Option<u64>,
    /// Records refused (PutRecordBatch's `FailedPutCount`).
    failed: Option<usize>,
}

/// The operation `X-Amz-Target` names (empty when none).
fn operation_of(headers: &HeaderMap) -> &str {
    headers.get("x-amz-target").and_then(|v| v.to_str().ok()).and_then(|t| t.strip_prefix(TARGET_PREFIX)).unwrap_or("")
}

/// The access key id of a SigV4 `Authorization` header (`Credential=<id>/...`), whether or not
/// it verifies.
fn access_key_id(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let credential = value.split("Credential=").nth(1)?;
    let id = credential.split('/').next()?.trim();
    (!id.is_empty() && id.len() <= 128).then(|| id.to_string())
}

/// Adds AWS's `x-amzn-RequestId` header (the audit trail's `requestID`) to `response`.
fn with_request_id(response: &mut Response, request_id: &str) {
    if let Ok(id) = HeaderValue::from_str(request_id) {
        response.headers_mut().insert("x-amzn-requestid", id);
    }
}

/// The `DeliveryStreamName` a request body names, if it is JSON that names one.
fn stream_named_in(body: &[u8]) -> Option<String> {
    serde_json::from_slice::<Value>(body).ok()?.get("DeliveryStreamName")?.as_str().map(str::to_string)
}

/// The account id in sluice's ARNs (there is no AWS account behind them).
pub const ACCOUNT: &str = "000000000000";

/// A delivery stream's ARN, as Firehose writes it.
pub fn stream_arn(region: &str, account: &str, name: &str) -> String {
    format!("arn:aws:firehose:{region}:{account}:deliverystream/{name}")
}

/// Records per PutRecordBatch.
pub const MAX_BATCH_RECORDS: usize = 500;
/// Data bytes (decoded) per PutRecordBatch.
pub const MAX_BATCH_BYTES: usize = 4 << 20;
/// Data bytes (decoded) per record.
pub const MAX_RECORD_BYTES: usize = 1_024_000;
/// The largest body a valid request can have: 4 MiB of data in base64, JSON around it, slack.
pub const MAX_REQUEST_BYTES: usize = MAX_BATCH_BYTES / 3 * 4 + 8 + MAX_BATCH_RECORDS * 16 + 64 * 1024;
/// The operation namespace of `X-Amz-Target`.
pub const TARGET_PREFIX: &str = "Firehose_20150804.";
const CONTENT_TYPE: &str = "application/x-amz-json-1.1";

/// The operations an access key may be allowed (`allow`), the default being all of them.
pub const OPERATIONS: [&str; 5] =
    ["PutRecord", "PutRecordBatch", "DescribeDeliveryStream", "ListDeliveryStreams", "ListTagsForDeliveryStream"];

/// What each access key of one stream may call on it (`allow`). A key not listed may do nothing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Grants(BTreeMap<String, Vec<&'static str>>);

impl Grants {
    /// Allows `id` the operations named in `allow` (all of [`OPERATIONS`] when `None`); an unknown
    /// name is returned.
    pub fn allow(&mut self, id: &str, allow: Option<&[String]>) -> Result<(), String> {
        let operations = match allow {
            None => OPERATIONS.to_vec(),
            Some(names) => names
                .iter()
                .map(|name| OPERATIONS.iter().copied().find(|op| op == name).ok_or_else(|| name.clone()))
                .collect::<Result<Vec<_>, _>>()?,
        };
        self.0.insert(id.to_string(), operations);
        Ok(())
    }

    /// Whether `id` may call `operation`.
    pub fn allows(&self, id: &str, operation: &str) -> bool {
        self.0.get(id).is_some_and(|ops| ops.contains(&operation))
    }

    /// Whether `id` is one of the stream's keys.
    pub fn knows(&self, id: &str) -> bool {
        self.0.contains_key(id)
    }
}

/// One delivery stream the API serves: a pipeline with an API source.
#[derive(Debug, Clone)]
pub struct StreamEndpoint {
    /// The pipeline as DescribeDeliveryStream reports it.
    pub info: Arc<StreamInfo>,
    /// Where accepted records go.
    pub queue: Arc<IngestQueue>,
    /// The pipeline's write-ahead log (none with `durability = "none"`).
    pub log: Option<Arc<DurableLog>>,
    /// The pipeline's counters.
    pub metrics: Arc<PipelineMetrics>,
    /// Keys allowed to put to this stream (empty: any key the API accepts).
    pub keys: AccessKeys,
    /// What each of `keys` may do (`allow`).
    pub grants: Grants,
    /// How the stream's write-ahead log is encrypted at rest (`None`: not encrypted, or no log).
    pub encryption: Option<LogEncryption>,
}

impl StreamEndpoint {
    /// Counts `refused` of a request's `total` records as throttled (`ThrottledRecords`) and says
    /// so in the error log.
    fn throttled(&self, refused: usize, total: usize) {
        self.metrics.api.throttled_records.fetch_add(refused as u64, Relaxed);
        self.metrics.report_error(ErrorEvent {
            level: Level::Warn,
            component: &self.info.name,
            error_code: "ServiceUnavailableException",
            message: &format!("{refused} of {total} records throttled: max_inflight_mb is reached"),
            attempts: None,
            key: None,
        });
    }

    /// `Encrypted` in put responses: whether what was accepted is encrypted at rest.
    fn encrypted(&self) -> bool {
        self.encryption.is_some()
    }

    /// `DeliveryStreamEncryptionConfiguration` as DescribeDeliveryStream shows it.
    fn encryption_description(&self) -> Value {
        match &self.encryption {
            None => json!({"Status": "DISABLED"}),
            Some(LogEncryption::Kms { key_id, .. }) => {
                json!({"Status": "ENABLED", "KeyType": "CUSTOMER_MANAGED_CMK", "KeyARN": key_id})
            }
            // A key sluice holds itself: the nearest Firehose key type.
            Some(LogEncryption::KeyFile(_)) => json!({"Status": "ENABLED", "KeyType": "AWS_OWNED_CMK"}),
        }
    }
}

/// The API a listener serves: one for good (a source's own listener), or replaced whole when `sluice
/// serve` reloads its streams. Each request is handled by the API of the moment it arrived.
#[derive(Debug)]
pub struct ApiSlot(std::sync::RwLock<Arc<FirehoseApi>>);

impl ApiSlot {
    /// Serves `api`.
    pub fn new(api: FirehoseApi) -> Self {
        ApiSlot(std::sync::RwLock::new(Arc::new(api)))
    }

    /// The API requests are handled by now.
    pub fn current(&self) -> Arc<FirehoseApi> {
        Arc::clone(&self.0.read().unwrap_or_else(std::sync::PoisonError::into_inner))
    }

    /// Requests are handled by `api` from now on (those in progress finish with the one before).
    pub fn replace(&self, api: FirehoseApi) {
        *self.0.write().unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(api);
    }
}

/// The API behind one listener: its streams by name and the keys requests must be signed with.
#[derive(Debug)]
pub struct FirehoseApi {
    streams: BTreeMap<String, StreamEndpoint>,
    /// Streams whose pipeline `sluice serve` is starting again (its file changed): refused with
    /// ServiceUnavailableException, which the SDKs retry, until the new one serves them.
    reloading: std::collections::BTreeSet<String>,
    keys: AccessKeys,
    region: String,
    limits: ListenerLimits,
    /// Bytes of request bodies being read.
    bodies: Arc<BodyBudget>,
    account: String,
    record_ids: Arc<RecordIds>,
    /// Whether any stream logs its records (requests then wait for a group commit).
    logs: bool,
}

/// Opaque, unique record ids: a random per-process prefix and a counter.
#[derive(Debug)]
struct RecordIds {
    prefix: u64,
    next: AtomicU64,
}

impl RecordIds {
    fn take(&self, n: usize) -> u64 {
        self.next.fetch_add(n as u64, Relaxed)
    }

    fn format(&self, n: u64) -> String {
        let mut out = String::with_capacity(32);
        self.write(n, &mut out);
        out
    }

    /// Appends id `n` (32 hex digits) to `out`.
    fn write(&self, n: u64, out: &mut String) {
        super::sigv4::push_hex(out, &self.prefix.to_be_bytes());
        super::sigv4::push_hex(out, &n.to_be_bytes());
    }
}

/// An AWS error document and its status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// `__type`.
    pub error_type: &'static str,
    /// `message`.
    pub message: String,
}

impl ApiError {
    fn client(error_type: &'static str, message: impl Into<String>) -> Self {
        ApiError { status: StatusCode::BAD_REQUEST, error_type, message: message.into() }
    }

    fn validation(message: impl Into<String>) -> Self {
        ApiError::client("ValidationException", format!("1 validation error detected: {}", message.into()))
    }

    fn serialization(message: impl Into<String>) -> Self {
        ApiError::client("SerializationException", message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({"__type": self.error_type, "message": self.message}).to_string();
        let mut response = (self.status, body).into_response();
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE));
        if let Ok(v) = HeaderValue::from_str(self.error_type) {
            headers.insert("x-amzn-errortype", v);
        }
        response
    }
}

fn valid_stream_name(name: &str) -> bool {
    (1..=64).contains(&name.len()) && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
}

/// A structure of the input: accepted only as a JSON object (serde would also take an array of the
/// fields' values, which AWS refuses as a SerializationException).
struct Structure<T>(T);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Structure<T> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ObjectOnly<T>(std::marker::PhantomData<T>);
        impl<'de, T: Deserialize<'de>> serde::de::Visitor<'de> for ObjectOnly<T> {
            type Value = T;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<T, A::Error> {
                T::deserialize(serde::de::value::MapAccessDeserializer::new(map))
            }
        }
        deserializer.deserialize_map(ObjectOnly(std::marker::PhantomData)).map(Structure)
    }
}

#[derive(Deserialize)]
struct DataRecord<'a> {
    #[serde(rename = "Data", borrow)]
    data: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct PutRecordInput<'a> {
    #[serde(rename = "DeliveryStreamName", borrow)]
    stream: Option<Cow<'a, str>>,
    #[serde(rename = "Record", borrow)]
    record: Option<Structure<DataRecord<'a>>>,
}

#[derive(Deserialize)]
struct PutRecordBatchInput<'a> {
    #[serde(rename = "DeliveryStreamName", borrow)]
    stream: Option<Cow<'a, str>>,
    #[serde(rename = "Records", borrow)]
    records: Option<Vec<Structure<DataRecord<'a>>>>,
}

#[derive(Deserialize)]
struct DescribeInput {
    #[serde(rename = "DeliveryStreamName")]
    stream: Option<String>,
    #[serde(rename = "Limit")]
    limit: Option<i64>,
    #[serde(rename = "ExclusiveStartDestinationId")]
    exclusive_start: Option<String>,
}

/// A request's `Limit`, when given, is within 1..=`max` (else Firehose's ValidationException).
fn limit_within(limit: Option<i64>, max: i64) -> Result<(), ApiError> {
    match limit {
        Some(limit) if !(1..=max).contains(&limit) => Err(ApiError::validation(format!(
            "Value '{limit}' at 'limit' failed to satisfy constraint: Member must have value between 1 and {max}"
        ))),
        _ => Ok(()),
    }
}

#[derive(Deserialize)]
struct ListTagsInput {
    #[serde(rename = "DeliveryStreamName")]
    stream: Option<String>,
    #[serde(rename = "Limit")]
    limit: Option<i64>,
}

#[derive(Deserialize)]
struct ListInput {
    #[serde(rename = "Limit")]
    limit: Option<i64>,
    #[serde(rename = "DeliveryStreamType")]
    stream_type: Option<String>,
    #[serde(rename = "ExclusiveStartDeliveryStreamName")]
    exclusive_start: Option<String>,
}

fn parse<'a, T: Deserialize<'a>>(body: &'a [u8]) -> Result<T, ApiError> {
    // AWS clients send `{}` for empty input; an empty body reads the same.
    let body: &[u8] = if body.iter().all(u8::is_ascii_whitespace) { b"{}" } else { body };
    serde_json::from_slice::<Structure<T>>(body)
        .map(|input| input.0)
        .map_err(|e| ApiError::serialization(format!("the request body is not valid input: {e}")))
}

impl FirehoseApi {
    /// An API for `streams` in `region`, requiring SigV4 with one of `keys` (scoped to `region` and
    /// `firehose`) when any is configured, within the listener's `limits`.
    pub fn new(streams: Vec<StreamEndpoint>, keys: AccessKeys, region: &str, limits: ListenerLimits) -> Self {
        let listener = FirehoseApi {
            logs: false,
            streams: BTreeMap::new(),
            reloading: std::collections::BTreeSet::new(),
            keys: AccessKeys::default(),
            region: region.to_string(),
            limits,
            bodies: BodyBudget::new(limits.max_body_buffer),
            account: ACCOUNT.to_string(),
            record_ids: Arc::new(RecordIds { prefix: rand::random(), next: AtomicU64::new(0) }),
        };
        listener.with_streams(streams, keys, [])
    }

    /// The same listener's API (its region, limits, body budget and record ids) for `streams`
    /// and `keys`, with the streams named in `reloading` answered ServiceUnavailableException.
    pub fn with_streams(
        &self,
        streams: Vec<StreamEndpoint>,
        keys: AccessKeys,
        reloading: impl IntoIterator<Item = String>,
    ) -> Self {
        FirehoseApi {
            logs: streams.iter().any(|s| s.log.is_some()),
            streams: streams.into_iter().map(|s| (s.info.name.clone(), s)).collect(),
            reloading: reloading.into_iter().collect(),
            keys,
            region: self.region.clone(),
            limits: self.limits,
            bodies: Arc::clone(&self.bodies),
            account: self.account.clone(),
            record_ids: Arc::clone(&self.record_ids),
        }
    }

    /// Every stream's endpoint.
    pub fn streams(&self) -> impl Iterator<Item = &StreamEndpoint> {
        self.streams.values()
    }

    fn arn(&self, name: &str) -> String {
        stream_arn(&self.region, &self.account, name)
    }

    /// AWS's refusal of `operation` on `resource` to the key `key_id`.
    fn access_denied(key_id: &str, operation: &str, resource: &str) -> ApiError {
        ApiError::client(
            "AccessDeniedException",
            format!("User: {key_id} is not authorized to perform: firehose:{operation} on resource: {resource}"),
        )
    }

    /// The stream `name` names, if the request's key (`key_id`, when signed) may call `operation` on it.
    fn stream(&self, name: Option<&str>, key_id: Option<&str>, operation: &str) -> Result<&StreamEndpoint, ApiError> {
        let name = name.ok_or_else(|| {
            ApiError::validation(
                "Value null at 'deliveryStreamName' failed to satisfy constraint: Member must not be null",
            )
        })?;
        if !valid_stream_name(name) {
            return Err(ApiError::validation(format!(
                "Value '{name}' at 'deliveryStreamName' failed to satisfy constraint: Member must satisfy regular expression pattern: [a-zA-Z0-9_.-]+ and have length between 1 and 64"
            )));
        }
        let endpoint = self.streams.get(name).ok_or_else(|| {
            if self.reloading.contains(name) {
                return ApiError {
                    status: StatusCode::SERVICE_UNAVAILABLE,
                    error_type: "ServiceUnavailableException",
                    message: format!("Firehose {name} is being reloaded (its pipeline file changed); retry shortly."),
                };
            }
            ApiError::client(
                "ResourceNotFoundException",
                format!("Firehose {name} under account {} not found.", self.account),
            )
        })?;
        if let Some(id) = key_id
            && !endpoint.keys.is_empty()
            && !endpoint.grants.allows(id, operation)
        {
            return Err(Self::access_denied(id, operation, &self.arn(name)));
        }
        Ok(endpoint)
    }

    /// Handles one request; `now_seconds` is the clock SigV4 timestamps are checked against.
    pub fn handle(&self, method: &Method, uri: &Uri, headers: &HeaderMap, body: &[u8], now_seconds: i64) -> Response {
        self.handle_from(None, method, uri, headers, body, now_seconds)
    }

    /// [`FirehoseApi::handle`] for a request from `caller` (recorded in the audit trail).
    pub fn handle_from(
        &self,
        caller: Option<&Caller>,
        method: &Method,
        uri: &Uri,
        headers: &HeaderMap,
        body: &[u8],
        now_seconds: i64,
    ) -> Response {
        let started = Instant::now();
        let operation = operation_of(headers);
        let mut facts = Facts::default();
        let result = self.authenticate(method, uri, headers, body, now_seconds).and_then(|key_id| match operation {
            "PutRecord" => self.put_record(body, key_id.as_deref(), started, &mut facts),
            "PutRecordBatch" => self.put_record_batch(body, key_id.as_deref(), started, &mut facts),
            "DescribeDeliveryStream" => self.describe(body, key_id.as_deref(), &mut facts),
            "ListDeliveryStreams" => self.list(body, key_id.as_deref()),
            "ListTagsForDeliveryStream" => self.list_tags(body, key_id.as_deref(), &mut facts),
            "CreateDeliveryStream"
            | "DeleteDeliveryStream"
            | "UpdateDestination"
            | "TagDeliveryStream"
            | "UntagDeliveryStream"
            | "StartDeliveryStreamEncryption"
            | "StopDeliveryStreamEncryption" => Err(ApiError::client(
                "InvalidArgumentException",
                format!("{operation} is not supported: sluice delivery streams are defined by pipeline files"),
            )),
            _ => Err(ApiError::client(
                "UnknownOperationException",
                format!(
                    "unknown operation `{}`",
                    headers.get("x-amz-target").and_then(|v| v.to_str().ok()).unwrap_or("")
                ),
            )),
        });
        if result.is_err() && facts.stream.is_none() {
            facts.stream = stream_named_in(body);
        }
        let request_id = uuid::Uuid::new_v4().to_string();
        self.audit(caller, headers, &facts, result.as_ref().err(), &request_id);
        let mut response = match result {
            Ok(body) => {
                let mut response = (StatusCode::OK, body).into_response();
                response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE));
                response
            }
            Err(e) => self.refuse(e, Some(facts.stream.as_deref())),
        };
        with_request_id(&mut response, &request_id);
        response
    }

    /// Refuses a request before its body was read (recorded in the audit trail).
    fn refuse_unread(&self, caller: Option<&Caller>, headers: &HeaderMap, e: ApiError) -> Response {
        let request_id = uuid::Uuid::new_v4().to_string();
        self.audit(caller, headers, &Facts::default(), Some(&e), &request_id);
        let mut response = self.refuse(e, None);
        with_request_id(&mut response, &request_id);
        response
    }

    /// Records the request in the audit trail of the stream it names, or of every stream of the
    /// listener when it names none that is known. Only what the headers and `facts` say: the key
    /// id (never the secret or the signature), counts and sizes (never record data).
    fn audit(
        &self,
        caller: Option<&Caller>,
        headers: &HeaderMap,
        facts: &Facts,
        error: Option<&ApiError>,
        request_id: &str,
    ) {
        let named = facts.stream.as_deref().and_then(|s| self.streams.get(s));
        let endpoints: Vec<&StreamEndpoint> = match named {
            Some(endpoint) => vec![endpoint],
            None => self.streams.values().collect(),
        };
        let operation = operation_of(headers);
        let event = |_: &sluice_engine::audit::AuditTrail| {
            let name = if operation.is_empty() { "Unknown" } else { operation };
            let identity = match access_key_id(headers) {
                Some(id) => json!({"type": "IAMUser", "accessKeyId": id}),
                None => json!({"type": "Unknown"}),
            };
            let identity = match caller {
                Some(caller) => caller.identity(identity),
                None => identity,
            };
            let mut parameters = serde_json::Map::new();
            if let Some(stream) = &facts.stream {
                parameters.insert("deliveryStreamName".into(), stream.as_str().into());
            }
            if let Some(records) = facts.records {
                parameters.insert("recordCount".into(), records.into());
            }
            if let Some(bytes) = facts.bytes {
                parameters.insert("bytes".into(), bytes.into());
            }
            let user_agent = headers.get(header::USER_AGENT).and_then(|v| v.to_str().ok());
            let mut event = AuditEvent::api_call(FIREHOSE_EVENT_SOURCE, name, &self.region, request_id)
                .from_caller(caller.map(|c| c.address.ip().to_string()), user_agent)
                .identity(identity)
                .parameters(Value::Object(parameters));
            if let Some(failed) = facts.failed {
                event = event.response(json!({"failedPutCount": failed}));
            }
            if let Some(e) = error {
                // A parser's message may quote the body: record data never goes to the trail.
                let message = if e.error_type == "SerializationException" {
                    "the request body is not valid input"
                } else {
                    e.message.as_str()
                };
                event = event.error(e.error_type, message);
            }
            event
        };
        for endpoint in endpoints {
            endpoint.metrics.audit(event);
        }
    }

    /// Answers a refused request, counted against the stream its body named (`Some`: the body was
    /// read; nothing is counted when it names no stream the API serves), or against every stream of
    /// the listener (`None`: refused before its body was read).
    fn refuse(&self, e: ApiError, named: Option<Option<&str>>) -> Response {
        match named {
            Some(stream) => {
                if let Some(endpoint) = stream.and_then(|s| self.streams.get(s)) {
                    endpoint.metrics.api.count_error(e.error_type);
                }
            }
            None => self.streams.values().for_each(|endpoint| endpoint.metrics.api.count_error(e.error_type)),
        }
        if e.status.is_server_error() {
            tracing::debug!(error_type = e.error_type, "request refused: {}", e.message);
        } else {
            tracing::info!(error_type = e.error_type, "request refused: {}", e.message);
        }
        e.into_response()
    }

    fn scope(&self) -> Scope<'_> {
        Scope { region: &self.region, service: "firehose" }
    }

    /// Refuses, before the body is read, a request whose headers already fail authentication.
    pub fn check_headers(&self, headers: &HeaderMap, now_seconds: i64) -> Result<(), ApiError> {
        if self.keys.is_empty() {
            return Ok(());
        }
        check_headers(&self.keys, headers, now_seconds, self.scope()).map(|_| ()).map_err(auth_error)
    }

    fn authenticate(
        &self,
        method: &Method,
        uri: &Uri,
        headers: &HeaderMap,
        body: &[u8],
        now_seconds: i64,
    ) -> Result<Option<String>, ApiError> {
        if self.keys.is_empty() {
            return Ok(None);
        }
        let request = SignedRequest {
            method: method.as_str(),
            path: uri.path(),
            query: uri.query().unwrap_or(""),
            headers,
            body,
        };
        verify(&self.keys, &request, now_seconds, self.scope()).map(Some).map_err(auth_error)
    }

    /// Decodes records into one batch, checking the per-record and per-batch limits.
    fn decode(records: &[DataRecord<'_>], member: impl Fn(usize) -> String) -> Result<RecordBatch, ApiError> {
        let mut batch = RecordBatch::with_capacity(
            now_ms(),
            records.iter().map(|r| r.data.as_ref().map_or(0, |d| d.len() / 4 * 3)).sum(),
        );
        for (i, record) in records.iter().enumerate() {
            let before = batch.byte_len();
            let data = record.data.as_deref().ok_or_else(|| {
                ApiError::validation(format!(
                    "Value null at '{}' failed to satisfy constraint: Member must not be null",
                    member(i)
                ))
            })?;
            batch
                .push_with(|buf| crate::record_data::decode_append(data.as_bytes(), buf))
                .map_err(|e| ApiError::serialization(format!("{} is not valid base64: {e}", member(i))))?;
            if batch.byte_len() - before > MAX_RECORD_BYTES {
                return Err(ApiError::validation(format!(
                    "Value at '{}' failed to satisfy constraint: Member must have length less than or equal to {MAX_RECORD_BYTES}",
                    member(i)
                )));
            }
        }
        Ok(batch)
    }

    fn put_record(
        &self,
        body: &[u8],
        key_id: Option<&str>,
        started: Instant,
        facts: &mut Facts,
    ) -> Result<String, ApiError> {
        let input: PutRecordInput = parse(body)?;
        facts.stream = input.stream.as_deref().map(str::to_string);
        facts.records = Some(1);
        let endpoint = self.stream(input.stream.as_deref(), key_id, "PutRecord")?;
        let api = &endpoint.metrics.api;
        api.put_record_requests.fetch_add(1, Relaxed);
        let record = input.record.ok_or_else(|| {
            ApiError::validation("Value null at 'record' failed to satisfy constraint: Member must not be null")
        })?;
        let batch = Self::decode(std::slice::from_ref(&record.0), |_| "record.data".to_string())?;
        let bytes = batch.byte_len() as u64;
        facts.bytes = Some(bytes);
        if let Err(rejected) = accept(&endpoint.queue, endpoint.log.as_ref(), batch) {
            if rejected == Rejected::Full {
                endpoint.throttled(1, 1);
            }
            return Err(refusal(rejected));
        }
        api.count_accepted(1, bytes);
        api.put_record_bytes.fetch_add(bytes, Relaxed);
        api.put_record_latency.observe(started.elapsed());
        let id = self.record_ids.take(1);
        Ok(json!({"RecordId": self.record_ids.format(id), "Encrypted": endpoint.encrypted()}).to_string())
    }

    fn put_record_batch(
        &self,
        body: &[u8],
        key_id: Option<&str>,
        started: Instant,
        facts: &mut Facts,
    ) -> Result<String, ApiError> {
        let input: PutRecordBatchInput = parse(body)?;
        facts.stream = input.stream.as_deref().map(str::to_string);
        facts.records = input.records.as_ref().map(Vec::len);
        let endpoint = self.stream(input.stream.as_deref(), key_id, "PutRecordBatch")?;
        let api = &endpoint.metrics.api;
        api.put_record_batch_requests.fetch_add(1, Relaxed);
        let records = input.records.ok_or_else(|| {
            ApiError::validation("Value null at 'records' failed to satisfy constraint: Member must not be null")
        })?;
        if records.is_empty() || records.len() > MAX_BATCH_RECORDS {
            return Err(ApiError::validation(format!(
                "Value at 'records' failed to satisfy constraint: Member must have length between 1 and {MAX_BATCH_RECORDS} (it has {})",
                records.len()
            )));
        }
        let records: Vec<DataRecord<'_>> = records.into_iter().map(|r| r.0).collect();
        let batch = Self::decode(&records, |i| format!("records.{}.member.data", i + 1))?;
        if batch.byte_len() > MAX_BATCH_BYTES {
            return Err(ApiError::client(
                "InvalidArgumentException",
                format!("Records size exceeds 4 MB limit ({} bytes in {} records)", batch.byte_len(), batch.len()),
            ));
        }
        // Past the in-flight limit, accept the records that fit and refuse the rest, in order.
        let total = batch.len();
        let room = endpoint.queue.room();
        let (head, accepted) = if batch.byte_len() <= room {
            (batch, total)
        } else {
            let fit = fitting(&batch, room);
            let mut head = RecordBatch::with_capacity(batch.arrival_ms, room.min(batch.byte_len()));
            batch.iter().take(fit).for_each(|r| head.push(r));
            (head, fit)
        };
        let bytes = head.byte_len() as u64;
        let accepted = match accept(&endpoint.queue, endpoint.log.as_ref(), head) {
            Ok(()) => accepted,
            Err(Rejected::Full) => 0,
            // Stopping, or the log failed: nothing of this request is taken or acknowledged.
            Err(rejected) => return Err(refusal(rejected)),
        };
        let refused = total - accepted;
        (facts.bytes, facts.failed) = (Some(bytes), Some(refused));
        if refused > 0 {
            endpoint.throttled(refused, total);
        }
        if accepted > 0 {
            api.count_accepted(accepted as u64, bytes);
            api.put_record_batch_records.fetch_add(accepted as u64, Relaxed);
            api.put_record_batch_bytes.fetch_add(bytes, Relaxed);
        }
        // Written directly: 500 small objects through `serde_json::Value` cost more than the rest.
        let first = self.record_ids.take(accepted);
        let mut out = String::with_capacity(64 + total * 52);
        out.push_str(&format!(
            "{{\"FailedPutCount\":{refused},\"Encrypted\":{},\"RequestResponses\":[",
            endpoint.encrypted()
        ));
        for i in 0..total {
            if i > 0 {
                out.push(',');
            }
            if i < accepted {
                out.push_str("{\"RecordId\":\"");
                self.record_ids.write(first + i as u64, &mut out);
                out.push_str("\"}");
            } else {
                out.push_str("{\"ErrorCode\":\"ServiceUnavailableException\",\"ErrorMessage\":\"Slow down.\"}");
            }
        }
        out.push_str("]}");
        api.put_record_batch_latency.observe(started.elapsed());
        Ok(out)
    }

    /// ListTagsForDeliveryStream: a stream defined by a pipeline file has no tags (tagging one is
    /// refused), so the answer is an empty page; a stream that does not exist, or one the caller
    /// may not list the tags of, is refused as DescribeDeliveryStream refuses it.
    fn list_tags(&self, body: &[u8], key_id: Option<&str>, facts: &mut Facts) -> Result<String, ApiError> {
        let input: ListTagsInput = parse(body)?;
        facts.stream = input.stream.clone();
        limit_within(input.limit, 50)?;
        self.stream(input.stream.as_deref(), key_id, "ListTagsForDeliveryStream")?;
        Ok(json!({"Tags": [], "HasMoreTags": false}).to_string())
    }

    fn describe(&self, body: &[u8], key_id: Option<&str>, facts: &mut Facts) -> Result<String, ApiError> {
        let input: DescribeInput = parse(body)?;
        facts.stream = input.stream.clone();
        limit_within(input.limit, 10_000)?;
        let endpoint = self.stream(input.stream.as_deref(), key_id, "DescribeDeliveryStream")?;
        endpoint.metrics.api.describe_requests.fetch_add(1, Relaxed);
        let info = &endpoint.info;
        let limit = input.limit.unwrap_or(10_000) as usize;
        let all: Vec<(String, Value)> = info
            .destinations
            .iter()
            .enumerate()
            .map(|(i, d)| (format!("destinationId-{:012}", i + 1), destination_description(d)))
            .collect();
        let start = match &input.exclusive_start {
            Some(id) => all.iter().position(|(d, _)| d == id).map_or(0, |p| p + 1),
            None => 0,
        };
        let page: Vec<Value> = all
            .iter()
            .skip(start)
            .take(limit)
            .map(|(id, description)| {
                let mut d = description.clone();
                if let Value::Object(map) = &mut d {
                    map.insert("DestinationId".into(), Value::from(id.clone()));
                }
                d
            })
            .collect();
        let has_more = start + page.len() < all.len();
        let created = info.created_ms as f64 / 1000.0;
        Ok(json!({
            "DeliveryStreamDescription": {
                "DeliveryStreamName": info.name,
                "DeliveryStreamARN": self.arn(&info.name),
                "DeliveryStreamStatus": "ACTIVE",
                "DeliveryStreamEncryptionConfiguration": endpoint.encryption_description(),
                "DeliveryStreamType": "DirectPut",
                "VersionId": "1",
                "CreateTimestamp": created,
                "LastUpdateTimestamp": created,
                "Source": {"DirectPutSourceDescription": {"ThroughputHintInMBs": endpoint.queue.limit() >> 20}},
                "Destinations": page,
                "HasMoreDestinations": has_more,
            }
        })
        .to_string())
    }

    /// ListDeliveryStreams: the streams the request's key may list (all of them unsigned).
    fn list(&self, body: &[u8], key_id: Option<&str>) -> Result<String, ApiError> {
        let input: ListInput = parse(body)?;
        let limit = input.limit.unwrap_or(10);
        limit_within(Some(limit), 10_000)?;
        let visible = |e: &StreamEndpoint| {
            key_id.is_none_or(|id| e.keys.is_empty() || e.grants.allows(id, "ListDeliveryStreams"))
        };
        if let Some(id) = key_id
            && !self.streams.values().any(visible)
        {
            // Counted against the streams the key belongs to (the request names none).
            self.streams
                .values()
                .filter(|e| e.grants.knows(id))
                .for_each(|e| e.metrics.api.count_error("AccessDeniedException"));
            let resource = format!("{}*", self.arn(""));
            return Err(Self::access_denied(id, "ListDeliveryStreams", &resource));
        }
        for endpoint in self.streams.values().filter(|e| visible(e)) {
            endpoint.metrics.api.list_requests.fetch_add(1, Relaxed);
        }
        // Every sluice stream is DirectPut.
        let direct = input.stream_type.as_deref().is_none_or(|t| t == "DirectPut");
        let names: Vec<&String> = self
            .streams
            .iter()
            .filter(|(_, e)| visible(e))
            .map(|(name, _)| name)
            .filter(|_| direct)
            .filter(|n| input.exclusive_start.as_ref().is_none_or(|s| n.as_str() > s.as_str()))
            .collect();
        let page: Vec<&String> = names.iter().take(limit as usize).copied().collect();
        Ok(json!({"DeliveryStreamNames": page, "HasMoreDeliveryStreams": names.len() > page.len()}).to_string())
    }
}

/// An authentication failure as AWS reports it (HTTP 400 with its `__type`).
fn auth_error(e: super::sigv4::AuthError) -> ApiError {
    ApiError { status: StatusCode::BAD_REQUEST, error_type: e.error_type(), message: e.to_string() }
}

/// How many leading records of `batch` fit in `room` bytes.
fn fitting(batch: &RecordBatch, room: usize) -> usize {
    let mut used = 0;
    batch
        .iter()
        .take_while(|r| {
            used += r.len();
            used <= room
        })
        .count()
}

/// A refusal as Firehose says it: `ServiceUnavailableException` (503), which the SDKs retry.
fn refusal(rejected: Rejected) -> ApiError {
    let message = match rejected {
        Rejected::Full => "Slow down.".to_string(),
        Rejected::Closed => "The delivery stream is shutting down.".to_string(),
        Rejected::Log(e) => format!("The records could not be made durable: {e}"),
    };
    ApiError { status: StatusCode::SERVICE_UNAVAILABLE, error_type: "ServiceUnavailableException", message }
}

/// One destination as DescribeDeliveryStream reports it (`ExtendedS3DestinationDescription` for
/// object stores, `HttpEndpointDestinationDescription` otherwise), with the Firehose processors
/// of the transforms upstream of it in `ProcessingConfiguration`.
fn destination_description(d: &sluice_engine::config::DestinationInfo) -> Value {
    let hints = json!({"SizeInMBs": d.size_mb, "IntervalInSeconds": d.interval_s});
    let processors: Vec<Value> = d
        .processors
        .iter()
        .map(|p| {
            let parameters: Vec<Value> = p
                .parameters
                .iter()
                .map(|(name, value)| json!({"ParameterName": name, "ParameterValue": value}))
                .collect();
            json!({"Type": p.kind, "Parameters": parameters})
        })
        .collect();
    let processing = json!({"Enabled": !processors.is_empty(), "Processors": processors});
    match d.kind {
        DestinationKind::S3 => {
            // An S3 bucket's ARN; other object stores report their URL.
            let bucket_arn = match d.location.strip_prefix("s3://") {
                Some(rest) => format!("arn:aws:s3:::{}", rest.split('/').next().unwrap_or(rest)),
                None => d.location.clone(),
            };
            let mut partitioning = json!({"Enabled": d.partitioned});
            if d.partitioned {
                partitioning["RetryOptions"] = json!({"DurationInSeconds": d.retry_s});
            }
            json!({"ExtendedS3DestinationDescription": {
                "RoleARN": "arn:aws:iam::000000000000:role/sluice",
                "BucketARN": bucket_arn,
                "Prefix": d.prefix,
                "ErrorOutputPrefix": d.error_prefix,
                "BufferingHints": hints,
                "CompressionFormat": d.compression_format,
                "EncryptionConfiguration": match &d.kms_key {
                    Some(key) => json!({"KMSEncryptionConfig": {"AWSKMSKeyARN": key}}),
                    None => json!({"NoEncryptionConfig": "NoEncryption"}),
                },
                "S3BackupMode": d.kind.backup_mode(d.backs_up_all),
                "FileExtension": d.file_extension,
                "CustomTimeZone": d.time_zone,
                "DataFormatConversionConfiguration": {"Enabled": d.format_conversion},
                "DynamicPartitioningConfiguration": partitioning,
                "ProcessingConfiguration": processing,
            }})
        }
        // An endpoint that sluice delivers to over HTTP: its URL, as Firehose shows an HTTP
        // endpoint (the kinds that have their own shape in Firehose add it here).
        kind => {
            let mut description = serde_json::Map::new();
            description.insert(
                kind.description_key().to_string(),
                json!({
                    "EndpointConfiguration": {"Url": d.location, "Name": d.sink},
                    "BufferingHints": hints,
                    "RetryOptions": {"DurationInSeconds": d.retry_s},
                    "S3BackupMode": kind.backup_mode(d.backs_up_all),
                    "ProcessingConfiguration": processing,
                }),
            );
            Value::Object(description)
        }
    }
}

/// The axum handler: refuses what the headers condemn before reading the body, then reads the
/// body within [`MAX_REQUEST_BYTES`], the listener's body budget and its body timeout, and answers
/// through [`FirehoseApi::handle`].
pub async fn serve_request(
    State(slot): State<Arc<ApiSlot>>,
    caller: Caller,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Response {
    // The API of the moment the request arrived handles it whole.
    let api = slot.current();
    let now = chrono::Utc::now().timestamp();
    if let Err(refused) = api.check_headers(&headers, now) {
        return api.refuse_unread(Some(&caller), &headers, refused);
    }
    let read =
        read_body(body, declared_length(&headers), MAX_REQUEST_BYTES, &api.bodies, api.limits.body_timeout).await;
    let (body, room) = match read {
        Ok(read) => read,
        // Only a batch over 4 MiB of data needs a body this large.
        Err(BodyError::TooLarge(_)) => {
            let message =
                format!("Records size exceeds 4 MB limit (the request body is over {MAX_REQUEST_BYTES} bytes)");
            return api.refuse_unread(Some(&caller), &headers, ApiError::client("InvalidArgumentException", message));
        }
        Err(e @ BodyError::Busy) => {
            let error = ApiError {
                status: StatusCode::SERVICE_UNAVAILABLE,
                error_type: "ServiceUnavailableException",
                message: e.to_string(),
            };
            return api.refuse_unread(Some(&caller), &headers, error);
        }
        Err(e @ BodyError::TimedOut(_)) => {
            let error = ApiError {
                status: StatusCode::REQUEST_TIMEOUT,
                error_type: "RequestTimeoutException",
                message: e.to_string(),
            };
            return api.refuse_unread(Some(&caller), &headers, error);
        }
        Err(e @ BodyError::Broken(_)) => {
            return api.refuse_unread(Some(&caller), &headers, ApiError::serialization(e.to_string()));
        }
    };
    let handled = if api.logs {
        // With a log, a request waits for its group commit: on a blocking thread, so that many
        // requests wait (and share one fsync) at once.
        match tokio::task::spawn_blocking(move || api.handle_from(Some(&caller), &method, &uri, &headers, &body, now))
            .await
        {
            Ok(response) => response,
            Err(e) => ApiError {
                status: StatusCode::INTERNAL_SERVER_ERROR,
                error_type: "InternalFailure",
                message: format!("the request could not be handled: {e}"),
            }
            .into_response(),
        }
    } else {
        // Decoding and hashing run here, on the I/O thread: a few milliseconds for the largest
        // body, cheaper than handing each request to another thread.
        api.handle_from(Some(&caller), &method, &uri, &headers, &body, now)
    };
    drop(room);
    handled
}

#[cfg(test)]
mod tests {
    use base64::Engine as _;

    use super::*;
    use crate::api::queue::Popped;

    fn api(limit: usize) -> (FirehoseApi, Arc<IngestQueue>, Arc<PipelineMetrics>) {
        let queue = Arc::new(IngestQueue::new(limit));
        let metrics = Arc::new(PipelineMetrics::new(1, 0));
        let info = Arc::new(StreamInfo { name: "s".into(), created_ms: 0, destinations: Vec::new() });
        let endpoint = StreamEndpoint {
            info,
            queue: Arc::clone(&queue),
            log: None,
            metrics: Arc::clone(&metrics),
            keys: AccessKeys::default(),
            grants: Grants::default(),
            encryption: None,
        };
        (
            FirehoseApi::new(vec![endpoint], AccessKeys::default(), "us-east-1", ListenerLimits::default()),
            queue,
            metrics,
        )
    }

    fn call(api: &FirehoseApi, op: &str, body: Value) -> (StatusCode, Value) {
        let mut headers = HeaderMap::new();
        headers.insert("x-amz-target", HeaderValue::from_str(&format!("{TARGET_PREFIX}{op}")).unwrap());
        let response = api.handle(&Method::POST, &Uri::from_static("/"), &headers, body.to_string().as_bytes(), 0);
        let status = response.status();
        let bytes = futures::executor::block_on(axum::body::to_bytes(response.into_body(), usize::MAX)).unwrap();
        (status, serde_json::from_slice(&bytes).unwrap())
    }

    /// The API made again for other streams (a reload of `sluice serve`): a stream being reloaded
    /// is answered ServiceUnavailableException (which the SDKs retry), one withdrawn is not found,
    /// and the record ids go on from the API before (never one given twice).
    #[test]
    fn an_api_made_again_answers_reloading_streams_as_unavailable_and_keeps_its_ids() {
        let (api, _, _) = api(1 << 20);
        let put = json!({"DeliveryStreamName": "s", "Record": {"Data": "eA=="}});
        let (status, first) = call(&api, "PutRecord", put.clone());
        assert_eq!(status, StatusCode::OK);
        let reloading = api.with_streams(Vec::new(), AccessKeys::default(), ["s".to_string()]);
        let (status, body) = call(&reloading, "PutRecord", put.clone());
        assert_eq!(
            (status, body["__type"].as_str()),
            (StatusCode::SERVICE_UNAVAILABLE, Some("ServiceUnavailableException"))
        );
        let withdrawn = reloading.with_streams(Vec::new(), AccessKeys::default(), []);
        let (status, body) = call(&withdrawn, "PutRecord", put.clone());
        assert_eq!((status, body["__type"].as_str()), (StatusCode::BAD_REQUEST, Some("ResourceNotFoundException")));
        let (fresh, _, _) = self::api(1 << 20);
        let back = api.with_streams(fresh.streams().cloned().collect(), AccessKeys::default(), []);
        let (status, second) = call(&back, "PutRecord", put);
        assert_eq!(status, StatusCode::OK);
        // The same prefix, the next number.
        let id = |v: &Value| v["RecordId"].as_str().unwrap().to_string();
        let (first, second) = (id(&first), id(&second));
        assert_eq!(first[..16], second[..16]);
        let number = |id: &str| u64::from_str_radix(&id[16..], 16).unwrap();
        assert_eq!(number(&second), number(&first) + 1);
    }

    #[test]
    fn record_ids_are_the_prefix_and_the_counter_in_32_hex_digits() {
        let ids = RecordIds { prefix: 0x0123_4567_89ab_cdef, next: AtomicU64::new(0) };
        for n in [0, 1, 0xff, 0x1234_5678_9abc_def0, u64::MAX] {
            assert_eq!(ids.format(n), format!("{:016x}{n:016x}", 0x0123_4567_89ab_cdef_u64));
        }
        let mut out = "x".to_string();
        ids.write(10, &mut out);
        assert_eq!(out, "x0123456789abcdef000000000000000a");
    }

    fn records(n: usize, len: usize) -> Value {
        let data = base64::engine::general_purpose::STANDARD.encode(vec![b'r'; len]);
        json!({"DeliveryStreamName": "s", "Records": vec![json!({"Data": data}); n]})
    }

    #[test]
    fn past_the_inflight_limit_puts_are_throttled_record_by_record_in_order() {
        let (api, queue, metrics) = api(100);
        let _ = metrics.errors.set(Arc::new(sluice_engine::error_log::ErrorLog::new("s", None, false)));
        let (status, body) = call(&api, "PutRecordBatch", records(5, 30));
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body["FailedPutCount"], 2);
        let responses = body["RequestResponses"].as_array().unwrap();
        assert!(responses[..3].iter().all(|r| r["RecordId"].is_string()));
        assert!(responses[3..].iter().all(|r| r["ErrorCode"] == "ServiceUnavailableException"));
        assert_eq!(metrics.api.throttled_records.load(Relaxed), 2);
        assert_eq!(metrics.api.incoming_records.load(Relaxed), 3);
        // A throttled put is a WARN line in the error log, counting what was refused.
        let line = metrics.errors.get().unwrap().recent().pop().unwrap();
        assert_eq!(
            (line["level"].as_str(), line["errorCode"].as_str()),
            (Some("WARN"), Some("ServiceUnavailableException"))
        );
        assert!(line["message"].as_str().unwrap().starts_with("2 of 5 records throttled"), "{line}");

        let data = base64::engine::general_purpose::STANDARD.encode([b'r'; 30]);
        let one = json!({"DeliveryStreamName": "s", "Record": {"Data": data}});
        let (status, body) = call(&api, "PutRecord", one.clone());
        assert_eq!(
            (status, body["__type"].as_str()),
            (StatusCode::SERVICE_UNAVAILABLE, Some("ServiceUnavailableException"))
        );
        // Once the workers took the queued records, puts are accepted again.
        assert!(matches!(queue.pop(), Popped::Batch(b, None) if b.len() == 3));
        assert_eq!(call(&api, "PutRecord", one).0, StatusCode::OK);

        // Stopping: nothing more is acknowledged.
        queue.close();
        let (status, body) = call(&api, "PutRecordBatch", records(1, 1));
        assert_eq!(
            (status, body["__type"].as_str()),
            (StatusCode::SERVICE_UNAVAILABLE, Some("ServiceUnavailableException"))
        );
    }

    /// What a destination's description says of the sink beyond its buffering and prefixes, in
    /// Firehose's names: dynamic partitioning (its retry duration) and the processors it amounts
    /// to (de-aggregation, the query as jq 1.6's, NDJSON's delimiter) after the transforms', the
    /// keys' time zone, the backup mode (`backup = "all"`) in each kind's own words, and a request
    /// destination's retry duration.
    #[test]
    fn a_destination_is_described_with_what_the_sink_does_in_firehoses_names() {
        let toml = r#"
[pipeline]
name = "lake"
[sources.api]
type = "firehose"
[sinks.lake]
type = "object_store"
inputs = ["api"]
url = "memory://lake"
format = "ndjson"
time_zone = "Asia/Tokyo"
backup = "all"
retry = { duration_s = 120 }
partitioning = { query = '{account: .recipientAccountId}' }
deaggregation = { delimiter = "||" }
prefix = "account=!{partitionKeyFromQuery:account}/"
error_prefix = "errors/!{firehose:error-output-type}/"
[sinks.siem]
type = "http_endpoint"
inputs = ["api"]
url = "http://127.0.0.1:9/in"
backup_store = "memory://failed"
retry = { duration_s = 60 }
[sinks.vault]
type = "object_store"
inputs = ["api"]
url = "s3://vault/trail"
options = { region = "eu-west-1", access_key_id = "AKIDEXAMPLE", secret_access_key = "secret" }
encryption = { sse = "aws:kms", kms_key_id = "arn:aws:kms:eu-west-1:111122223333:key/abc" }
"#;
        // The same bucket with SSE-KMS without a key, and with SSE-S3.
        let vault = toml.split("[sinks.vault]").nth(1).unwrap_or_default();
        let toml = format!(
            "{toml}[sinks.managed]{}[sinks.s3_keys]{}",
            vault.replace(", kms_key_id = \"arn:aws:kms:eu-west-1:111122223333:key/abc\"", ""),
            vault.replace(
                "sse = \"aws:kms\", kms_key_id = \"arn:aws:kms:eu-west-1:111122223333:key/abc\"",
                "sse = \"AES256\""
            ),
        );
        let plan = sluice_engine::testkit::plan_from_str(&toml, &crate::registry()).unwrap_or_else(|e| panic!("{e}"));
        let info = plan.stream_info(0);
        let lake = &destination_description(&info.destinations[0])["ExtendedS3DestinationDescription"];
        assert_eq!(
            lake["DynamicPartitioningConfiguration"],
            json!({"Enabled": true, "RetryOptions": {"DurationInSeconds": 120}})
        );
        assert_eq!(
            lake["ProcessingConfiguration"],
            json!({"Enabled": true, "Processors": [
                {"Type": "RecordDeAggregation", "Parameters": [
                    {"ParameterName": "SubRecordType", "ParameterValue": "DELIMITED"},
                    {"ParameterName": "Delimiter", "ParameterValue": "fHw="},
                ]},
                {"Type": "MetadataExtraction", "Parameters": [
                    {"ParameterName": "MetadataExtractionQuery", "ParameterValue": "{account: .recipientAccountId}"},
                    {"ParameterName": "JsonParsingEngine", "ParameterValue": "JQ-1.6"},
                ]},
                {"Type": "AppendDelimiterToRecord", "Parameters": []},
            ]})
        );
        assert_eq!(
            (lake["CustomTimeZone"].as_str(), lake["S3BackupMode"].as_str()),
            (Some("Asia/Tokyo"), Some("Enabled"))
        );
        assert_eq!(lake["EncryptionConfiguration"], json!({"NoEncryptionConfig": "NoEncryption"}));
        let vault = &destination_description(&info.destinations[2])["ExtendedS3DestinationDescription"];
        assert_eq!(
            vault["EncryptionConfiguration"],
            json!({"KMSEncryptionConfig": {"AWSKMSKeyARN": "arn:aws:kms:eu-west-1:111122223333:key/abc"}})
        );
        assert_eq!(vault["BucketARN"], "arn:aws:s3:::vault");
        // SSE-KMS without a key: S3's AWS managed key, not "no encryption"; SSE-S3 has no shape.
        let encryption = |i: usize| {
            destination_description(&info.destinations[i])["ExtendedS3DestinationDescription"]["EncryptionConfiguration"]
                .clone()
        };
        assert_eq!(encryption(3), json!({"KMSEncryptionConfig": {"AWSKMSKeyARN": "alias/aws/s3"}}));
        assert_eq!(encryption(4), json!({"NoEncryptionConfig": "NoEncryption"}));
        let siem = &destination_description(&info.destinations[1])["HttpEndpointDestinationDescription"];
        assert_eq!(siem["RetryOptions"], json!({"DurationInSeconds": 60}));
        assert_eq!(siem["S3BackupMode"], "FailedDataOnly");
        assert_eq!(siem["ProcessingConfiguration"], json!({"Enabled": false, "Processors": []}));
    }

    #[test]
    fn describe_pages_destinations_and_list_pages_names() {
        let (api, _, _) = api(100);
        let (status, body) = call(&api, "ListDeliveryStreams", json!({"Limit": 1}));
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body, json!({"DeliveryStreamNames": ["s"], "HasMoreDeliveryStreams": false}));
        let (_, body) = call(&api, "ListDeliveryStreams", json!({"ExclusiveStartDeliveryStreamName": "s"}));
        assert_eq!(body["DeliveryStreamNames"], json!([]));
        let (_, body) = call(&api, "DescribeDeliveryStream", json!({"DeliveryStreamName": "s", "Limit": 0}));
        assert_eq!(body["__type"], "ValidationException");
        let (_, body) = call(&api, "DescribeDeliveryStream", json!({"DeliveryStreamName": "s"}));
        assert_eq!(body["DeliveryStreamDescription"]["HasMoreDestinations"], false);
        // Each operation's Limit has its own range.
        for (op, limit, refused) in [
            ("ListDeliveryStreams", 10_001, true),
            ("ListDeliveryStreams", 10_000, false),
            ("DescribeDeliveryStream", 10_000, false),
            ("ListTagsForDeliveryStream", 51, true),
            ("ListTagsForDeliveryStream", 50, false),
            ("ListTagsForDeliveryStream", 0, true),
        ] {
            let (_, body) = call(&api, op, json!({"DeliveryStreamName": "s", "Limit": limit}));
            assert_eq!(body["__type"] == "ValidationException", refused, "{op} {limit}: {body}");
        }
        let (_, body) = call(&api, "ListTagsForDeliveryStream", json!({"DeliveryStreamName": "s"}));
        assert_eq!(body, json!({"Tags": [], "HasMoreTags": false}));
    }
}

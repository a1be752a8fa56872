//! The audit trail (`[pipeline] audit_log`): one CloudTrail-shaped JSON line per API request
//! (accepted or refused), per delivery outcome and per transform failure, buffered by size and
//! time and stored as objects through the `object_store` sink, or written to stderr.
//!
//! Lines are CloudTrail records: `eventVersion, eventTime, eventSource, eventName, awsRegion,
//! sourceIPAddress, userAgent, userIdentity {type, accessKeyId | tokenName}, requestParameters
//! {deliveryStreamName, recordCount, bytes}, responseElements {failedPutCount}, errorCode,
//! errorMessage, requestID, eventID, eventType` (`AwsApiCall` for requests, `AwsServiceEvent` with
//! `serviceEventDetails` for deliveries and transform failures). Callers build them from what
//! they know about a request or an outcome; nothing here can see a record's data, a secret or a
//! signature, and [`AuditEvent`] has no field that could hold one.
//!
//! Guarantees: lines are written through a [`LineStore`] (`<data_dir>/audit`), so a line is in its
//! spool before [`AuditTrail::record`] returns (an API answers after recording): a process kill
//! loses no line of an answered request, and a clean stop stores every line before the run ends.
//! Objects are `YYYY/MM/DD/HH/<pipeline>-audit-<YYYY-MM-DD-HH-MM-SS>-<uuid>.jsonl` under the URL.

use std::path::Path;
use std::sync::Arc;

use serde::Serialize;
use serde_json::Value;

use crate::line_store::{LinePlan, LineStore, LineStoreError};

/// One CloudTrail record. Fields are exactly what is recorded: there is none for data or secrets.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AuditEvent {
    event_version: &'static str,
    event_time: String,
    event_source: &'static str,
    event_name: String,
    aws_region: String,
    #[serde(rename = "sourceIPAddress", skip_serializing_if = "Option::is_none")]
    source_ip_address: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    user_agent: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    user_identity: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    request_parameters: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    response_elements: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error_code: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error_message: Option<String>,
    #[serde(rename = "requestID", skip_serializing_if = "Option::is_none")]
    request_id: Option<String>,
    #[serde(rename = "eventID")]
    event_id: String,
    event_type: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    service_event_details: Option<Value>,
}

/// `eventSource` of requests to the Firehose API.
pub const FIREHOSE_EVENT_SOURCE: &str = "firehose.amazonaws.com";
/// `eventSource` of requests to the `http` source.
pub const HTTP_EVENT_SOURCE: &str = "http.sluice";
/// `eventSource` of Firehose HTTP endpoint deliveries to the `http_endpoint` source.
pub const HTTP_ENDPOINT_EVENT_SOURCE: &str = "http-endpoint.sluice";

impl AuditEvent {
    fn new(source: &'static str, name: &str, region: &str, event_type: &'static str) -> Self {
        AuditEvent {
            event_version: "1.08",
            event_time: chrono::Utc::now().format("%Y-%m-%dT%H:%M:%SZ").to_string(),
            event_source: source,
            event_name: name.to_string(),
            aws_region: region.to_string(),
            source_ip_address: None,
            user_agent: None,
            user_identity: None,
            request_parameters: None,
            response_elements: None,
            error_code: None,
            error_message: None,
            request_id: None,
            event_id: uuid::Uuid::new_v4().to_string(),
            event_type,
            service_event_details: None,
        }
    }

    /// A request `name` (the operation) to `source`, answered with `request_id`.
    pub fn api_call(source: &'static str, name: &str, region: &str, request_id: &str) -> Self {
        let mut event = AuditEvent::new(source, name, region, "AwsApiCall");
        event.request_id = Some(request_id.to_string());
        event
    }

    /// Something the pipeline did by itself (`DeliverObject`, `TransformRecords`), with `details`.
    pub fn service_event(name: &str, region: &str, details: Value) -> Self {
        let mut event = AuditEvent::new(FIREHOSE_EVENT_SOURCE, name, region, "AwsServiceEvent");
        event.service_event_details = Some(details);
        event
    }

    /// Who called: the caller's address and `User-Agent`.
    pub fn from_caller(mut self, address: Option<String>, user_agent: Option<&str>) -> Self {
        self.source_ip_address = address;
        self.user_agent = user_agent.map(|a| a.chars().take(1024).collect());
        self
    }

    /// The caller's identity: `{"type": "IAMUser", "accessKeyId": ...}` or `{"type": "Token", "tokenName": ...}`.
    pub fn identity(mut self, identity: Value) -> Self {
        self.user_identity = Some(identity);
        self
    }

    /// `requestParameters`.
    pub fn parameters(mut self, parameters: Value) -> Self {
        self.request_parameters = Some(parameters);
        self
    }

    /// `responseElements`.
    pub fn response(mut self, response: Value) -> Self {
        self.response_elements = Some(response);
        self
    }

    /// `errorCode` and `errorMessage`.
    pub fn error(mut self, code: &str, message: &str) -> Self {
        self.error_code = Some(code.to_string());
        self.error_message = Some(message.chars().take(2048).collect());
        self
    }
}

/// A pipeline's audit trail.
#[derive(Debug)]
pub struct AuditTrail {
    /// Where its lines go (`AuditEvents` and `AuditDeliveryFailures` are its counts).
    pub lines: Arc<LineStore>,
    /// `awsRegion` of the pipeline's own events (the Firehose source's `region`).
    region: std::sync::OnceLock<String>,
}

impl AuditTrail {
    /// Starts the trail of `pipeline` with its spool in `data_dir/audit`; lines an earlier run
    /// left there are stored first.
    pub fn start(pipeline: &str, plan: LinePlan, data_dir: &Path) -> Result<Arc<AuditTrail>, LineStoreError> {
        let lines = LineStore::start(pipeline, "audit", plan, data_dir)?;
        Ok(Arc::new(AuditTrail { lines, region: std::sync::OnceLock::new() }))
    }

    /// The region the pipeline's own events are recorded in (`local` until a source names one).
    pub fn region(&self) -> &str {
        self.region.get().map_or("local", String::as_str)
    }

    /// Sets [`AuditTrail::region`] (the first source to name one wins).
    pub fn set_region(&self, region: &str) {
        let _ = self.region.set(region.to_string());
    }

    /// Records `event` (in the spool before this returns).
    pub fn record(&self, event: &AuditEvent) {
        let Ok(mut line) = serde_json::to_vec(event) else { return };
        line.push(b'\n');
        self.lines.write(&line);
    }

    /// Stores every line recorded so far and stops (a clean stop).
    pub fn close(&self) {
        self.lines.close();
    }
}

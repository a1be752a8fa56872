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
//! Guarantees: a line is appended to a spool file in the pipeline's data folder before
//! [`AuditTrail::record`] returns (an API answers after recording), so a process kill loses no
//! line of an answered request; a clean stop ([`AuditTrail::close`]) stores every line before the
//! run ends; a store that refuses keeps the lines on disk (`audit/sending-*.jsonl`) and they are
//! stored, first, by the next start. Objects are
//! `YYYY/MM/DD/HH/<pipeline>-audit-<YYYY-MM-DD-HH-MM-SS>-<uuid>.jsonl` under the URL.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde::Serialize;
use serde_json::Value;

use crate::contract::{Payload, Sink};

/// Where audit lines go.
#[derive(Clone)]
pub enum AuditTarget {
    /// One line at a time to stderr.
    Stderr,
    /// Objects through a sink (the `object_store` sink for the URL).
    Store(Arc<dyn Sink>),
}

impl std::fmt::Debug for AuditTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AuditTarget::Stderr => f.write_str("stderr"),
            AuditTarget::Store(sink) => f.write_str(&sink.describe()),
        }
    }
}

/// `[pipeline] audit_log` as resolved.
#[derive(Debug, Clone)]
pub struct AuditPlan {
    /// Where lines go.
    pub target: AuditTarget,
    /// An object is stored once this many bytes are buffered…
    pub size_bytes: usize,
    /// …or its oldest line is this old.
    pub interval: Duration,
}

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

#[derive(Debug, Default)]
struct Pending {
    /// Lines not yet handed to the store, in order.
    lines: Vec<u8>,
    /// When the first of them was recorded.
    since: Option<Instant>,
    /// The spool file they are also in.
    spool: Option<std::fs::File>,
    closing: bool,
}

/// A pipeline's audit trail.
#[derive(Debug)]
pub struct AuditTrail {
    pipeline: String,
    plan: AuditPlan,
    /// `<data_dir>/audit`: the spool and lines waiting to be stored.
    dir: PathBuf,
    pending: Mutex<Pending>,
    wake: Condvar,
    flusher: Mutex<Option<std::thread::JoinHandle<()>>>,
    /// Lines recorded (`AuditEvents`).
    pub events: AtomicU64,
    /// Objects a store refused at least once (`AuditDeliveryFailures`).
    pub failures: AtomicU64,
    /// `awsRegion` of the pipeline's own events (the Firehose source's `region`).
    region: std::sync::OnceLock<String>,
}

/// Why the trail could not start.
#[derive(Debug, thiserror::Error)]
#[error("audit log in {dir}: {source}")]
pub struct AuditError {
    dir: String,
    source: std::io::Error,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

const SPOOL: &str = "spool.jsonl";

impl AuditTrail {
    /// Starts the trail of `pipeline` with its spool in `data_dir/audit`; lines an earlier run
    /// left there are stored first.
    pub fn start(pipeline: &str, plan: AuditPlan, data_dir: &Path) -> Result<Arc<AuditTrail>, AuditError> {
        let dir = data_dir.join("audit");
        let shown = dir.display().to_string();
        let io = |source| AuditError { dir: shown.clone(), source };
        std::fs::create_dir_all(&dir).map_err(io)?;
        // What a killed run spooled is sent as it is (it was never handed to the store).
        let spool_path = dir.join(SPOOL);
        if std::fs::metadata(&spool_path).is_ok_and(|m| m.len() > 0) {
            let leftover = dir.join(format!("sending-{}.jsonl", uuid::Uuid::new_v4()));
            std::fs::rename(&spool_path, leftover).map_err(io)?;
        }
        let spool = match plan.target {
            AuditTarget::Stderr => None,
            AuditTarget::Store(_) => {
                Some(std::fs::OpenOptions::new().create(true).append(true).open(&spool_path).map_err(io)?)
            }
        };
        let trail = Arc::new(AuditTrail {
            pipeline: pipeline.to_string(),
            plan,
            dir,
            pending: Mutex::new(Pending { spool, ..Pending::default() }),
            wake: Condvar::new(),
            flusher: Mutex::new(None),
            events: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            region: std::sync::OnceLock::new(),
        });
        if matches!(trail.plan.target, AuditTarget::Store(_)) {
            let flusher = Arc::clone(&trail);
            let handle = std::thread::Builder::new()
                .name("sluice-audit".into())
                .spawn(move || flusher.flush_until_closed())
                .map_err(io)?;
            *lock(&trail.flusher) = Some(handle);
        }
        Ok(trail)
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
        self.events.fetch_add(1, Relaxed);
        if matches!(self.plan.target, AuditTarget::Stderr) {
            let _ = std::io::stderr().lock().write_all(&line);
            return;
        }
        let mut pending = lock(&self.pending);
        if let Some(spool) = pending.spool.as_mut()
            && let Err(e) = spool.write_all(&line)
        {
            tracing::error!(error = %e, "cannot write the audit spool; the line is kept in memory only");
        }
        pending.lines.extend_from_slice(&line);
        pending.since.get_or_insert_with(Instant::now);
        if pending.lines.len() >= self.plan.size_bytes {
            self.wake.notify_all();
        }
    }

    /// Stores every line recorded so far and stops the flusher (a clean stop).
    pub fn close(&self) {
        lock(&self.pending).closing = true;
        self.wake.notify_all();
        if let Some(handle) = lock(&self.flusher).take() {
            let _ = handle.join();
        }
    }

    /// Hands the pending lines over: the spool becomes a `sending-*` file (kept until stored).
    fn take_pending(&self, pending: &mut Pending) -> Option<PathBuf> {
        if pending.lines.is_empty() {
            return None;
        }
        let sending = self.dir.join(format!("sending-{}.jsonl", uuid::Uuid::new_v4()));
        let spool = self.dir.join(SPOOL);
        pending.spool = None;
        let moved = std::fs::rename(&spool, &sending)
            .and_then(|()| std::fs::OpenOptions::new().create(true).append(true).open(&spool));
        match moved {
            Ok(file) => pending.spool = Some(file),
            Err(e) => {
                tracing::error!(error = %e, "cannot rotate the audit spool; writing the pending lines aside");
                let _ = std::fs::write(&sending, &pending.lines);
            }
        }
        pending.lines.clear();
        pending.since = None;
        Some(sending)
    }

    fn flush_until_closed(self: Arc<Self>) {
        let Ok(runtime) = tokio::runtime::Builder::new_current_thread().enable_all().build() else {
            tracing::error!("cannot start the audit log's writer; lines stay in its spool");
            return;
        };
        let AuditTarget::Store(sink) = self.plan.target.clone() else { return };
        loop {
            // Earlier runs' lines and lines a refusal left, oldest first.
            let mut waiting: Vec<PathBuf> = std::fs::read_dir(&self.dir)
                .into_iter()
                .flatten()
                .flatten()
                .map(|e| e.path())
                .filter(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("sending-")))
                .collect();
            waiting.sort_by_key(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok());
            let closing = {
                let mut pending = lock(&self.pending);
                if waiting.is_empty() && !pending.closing {
                    let full = |p: &Pending| p.lines.len() >= self.plan.size_bytes;
                    let due = |p: &Pending| p.since.is_some_and(|s| s.elapsed() >= self.plan.interval);
                    while !pending.closing && !full(&pending) && !due(&pending) {
                        let wait = pending
                            .since
                            .map_or(self.plan.interval, |s| self.plan.interval.saturating_sub(s.elapsed()));
                        pending = self
                            .wake
                            .wait_timeout(pending, wait.max(Duration::from_millis(10)))
                            .map_or_else(|e| e.into_inner().0, |(g, _)| g);
                    }
                }
                let closing = pending.closing;
                waiting.extend(self.take_pending(&mut pending));
                closing
            };
            let mut refused = false;
            for file in waiting {
                if !self.store(&runtime, &sink, &file, closing) {
                    refused = true;
                    break;
                }
            }
            if closing {
                if refused {
                    tracing::error!(dir = %self.dir.display(), "the audit log's store refused; its lines are kept for the next start");
                }
                return;
            }
            if refused {
                // Wait a little before trying again (new lines keep going to the spool).
                let pending = lock(&self.pending);
                let _ = self.wake.wait_timeout(pending, Duration::from_secs(1));
            }
        }
    }

    /// Stores the lines of `file` as one object and deletes it; `false` if the store refused
    /// (after a few attempts when `closing`).
    fn store(&self, runtime: &tokio::runtime::Runtime, sink: &Arc<dyn Sink>, file: &Path, closing: bool) -> bool {
        let Ok(body) = std::fs::read(file) else { return true };
        if body.is_empty() {
            let _ = std::fs::remove_file(file);
            return true;
        }
        let now = chrono::Utc::now();
        let key = format!(
            "{}/{}-audit-{}-{}.jsonl",
            now.format("%Y/%m/%d/%H"),
            self.pipeline,
            now.format("%Y-%m-%d-%H-%M-%S"),
            uuid::Uuid::new_v4()
        );
        let attempts = if closing { 5 } else { 1 };
        for attempt in 0..attempts {
            let payload = Payload {
                key: key.clone(),
                body: Bytes::from(body.clone()),
                content_type: "application/x-ndjson",
                content_encoding: None,
                records: body.iter().filter(|&&b| b == b'\n').count() as u64,
                origins: None,
            };
            match runtime.block_on(sink.deliver(payload)) {
                Ok(()) => {
                    let _ = std::fs::remove_file(file);
                    return true;
                }
                Err(e) => {
                    self.failures.fetch_add(1, Relaxed);
                    tracing::warn!(error = %e, attempt = attempt + 1, "the audit log's store refused an object");
                    if attempt + 1 < attempts {
                        std::thread::sleep(Duration::from_millis(200 << attempt));
                    }
                }
            }
        }
        false
    }
}

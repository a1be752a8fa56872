//! The deliver operator: `objects.deliver(...)` hands each sealed object to its sink on the tokio
//! runtime, retrying by the sink's policy, and holds the object's epoch until the sink answered.
//!
//! The worker never blocks: deliveries run as tokio tasks, and a finished task wakes this operator
//! through a `SyncActivator`. An object the destination does not take (retry duration exhausted, or a
//! permanent error) is turned back into records and written to the error output as Firehose error
//! documents ([`crate::backup`]); the error output itself is retried until stored, however long.
//! Guarantees: a capability is released only after its object was stored or its records were
//! stored in the error output, so the probe after this operator means "delivered or backed up", and
//! nothing acknowledged is passed over while a destination and its backup are both down.

use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use timely::container::CapacityContainerBuilder;
use timely::dataflow::Stream;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::Capability;
use timely::dataflow::operators::generic::Operator;

use super::{DeliveryQueue, Epoch, InflightBudget, Stage, pending_slot};
use bytes::Bytes;
use timely::scheduling::SyncActivator;

use crate::backup::{self, FailedObject};
use crate::buffer::{ObjectKind, SealedObject, UploadStep};
use crate::config::SinkSettings;
use crate::contract::{DeliveryError, PartUpload, Payload, Sink};
use crate::error_log::{ErrorEvent, Level};
use crate::error_output::ErrorOutputType;
use crate::metrics::PipelineMetrics;
use crate::retry::{RetryClock, until_stored, with_retries};

/// What came back for one object.
#[derive(Debug, Clone)]
pub struct DeliveryReceipt {
    /// Data or error output.
    pub kind: ObjectKind,
    /// Records in the object.
    pub records: u64,
    /// Whether the destination stored it (otherwise its records are in the error output).
    pub stored: bool,
}

/// What every deliver operator of a run shares.
#[derive(Clone)]
pub struct DeliveryContext {
    /// The runtime deliveries run on.
    pub runtime: tokio::runtime::Handle,
    /// In-flight bytes, shared with the sources.
    pub budget: Arc<InflightBudget>,
    /// Run counters.
    pub metrics: Arc<PipelineMetrics>,
}

struct InFlight {
    capability: Capability<Epoch>,
    kind: ObjectKind,
    oldest_arrival_ms: i64,
    key: String,
    records: u64,
    raw_bytes: u64,
    /// Bytes stored for the object (all its parts).
    body_bytes: u64,
    /// Bytes of the in-flight budget this delivery holds.
    budget_bytes: u64,
    /// The last step of an object uploaded in parts (its session runs on its own, not counted in
    /// the whole objects being delivered).
    in_parts: bool,
}

/// Whole objects one deliver operator stores at once.
pub(super) const MAX_DELIVERIES: usize = 256;

/// How one object's delivery ended: every object ends stored or backed up (the error output is
/// retried until it is stored, blocking delivery meanwhile).
#[derive(Debug)]
struct Outcome {
    /// Attempts made at the destination.
    attempts: u32,
    ending: Ending,
}

#[derive(Debug)]
enum Ending {
    /// The destination stored it.
    Stored,
    /// The destination did not take it; its records are in the error output under `key`.
    BackedUp { error: DeliveryError, key: String },
    /// The destination took all but `failed` of its records (it answers record by record); those
    /// are in the error output, the last of them under `key`.
    Partly { failed: u64, error: DeliveryError, key: String },
}

impl Outcome {
    fn stored(attempts: u32) -> Self {
        Outcome { attempts, ending: Ending::Stored }
    }
}

/// Where one sink's objects go, shared by its delivery tasks.
struct Target {
    /// The sink's name in the pipeline.
    name: String,
    sink: Arc<dyn Sink>,
    /// Where the error output goes: the sink itself, or its backup store.
    error_sink: Arc<dyn Sink>,
    settings: Arc<SinkSettings>,
    metrics: Arc<PipelineMetrics>,
    index: usize,
}

impl Target {
    /// Says in the error log (rate-limited) that an attempt on `key` failed and will be tried again.
    fn report_retry(&self, key: &str, attempts: u32, error: &DeliveryError, wait: std::time::Duration) {
        self.metrics.report_error(ErrorEvent {
            level: Level::Warn,
            component: &self.name,
            error_code: error.code(),
            message: &format!("delivery failed; retrying in {} ms: {error}", wait.as_millis()),
            attempts: Some(attempts),
            key: Some(key),
        });
    }

    /// Stores an error-output object, retrying whatever the error until it is stored; `None` when
    /// it can never be stored (an invalid key): the run is then told to stop, and the object's
    /// epoch stays held, so nothing of it is taken for delivered.
    async fn store_error_output(&self, payload: Payload) -> Option<u32> {
        let failures = &self.metrics.sinks[self.index].error_output_failures;
        // Through the error log, rate-limited: a store that is down blocks every object's error
        // output at once (a partitioned sink's thousand), and each would log every attempt.
        let blocked = |attempts: u32, error: &DeliveryError, wait: std::time::Duration| {
            self.metrics.report_error(ErrorEvent {
                level: Level::Error,
                component: &self.name,
                error_code: error.code(),
                message: &format!(
                    "cannot store the error output; delivery is blocked until it is stored (next try in {} ms): {error}",
                    wait.as_millis()
                ),
                attempts: Some(attempts),
                key: Some(&payload.key),
            });
        };
        let stored =
            until_stored(self.settings.retry, failures, blocked, || self.error_sink.deliver(payload.clone())).await;
        match stored {
            Ok(attempts) => Some(attempts),
            Err(e) => {
                let reason = format!(
                    "sink `{}`: the error output cannot store `{}`, and no retry can: {e}",
                    self.name, payload.key
                );
                tracing::error!("{reason}; stopping the run");
                let _ = self.metrics.fatal.set(reason);
                None
            }
        }
    }

    /// Delivers a whole data object; if the destination does not take it, backs up its records. A
    /// destination that answers record by record may take part of it: the records it refused go
    /// to the error output at once, and the ones it asks for again are sent again, alone, with the
    /// same back-off and within the same retry duration (counted from the first failure) as a whole
    /// object.
    async fn deliver_or_back_up(&self, payload: Payload, oldest_arrival_ms: i64) -> Option<Outcome> {
        let mut clock = RetryClock::new(self.settings.retry);
        let mut payload = payload;
        let (mut attempts, mut refused_records) = (0u32, 0u64);
        let mut refused_at: Option<(DeliveryError, String)> = None;
        loop {
            attempts += 1;
            let error = match self.sink.deliver(payload.clone()).await {
                Ok(()) => break,
                Err(DeliveryError::Partly { code, message, retry, refused }) => {
                    if !refused.is_empty() {
                        let output_type = ErrorOutputType::DeliveryFailed(self.sink.destination());
                        let backup = tokio::task::block_in_place(|| {
                            backup::refused_payload(&self.settings, output_type, &refused, oldest_arrival_ms, attempts)
                        });
                        let key = backup.key.clone();
                        self.store_error_output(backup).await?;
                        refused_records += refused.len() as u64;
                        let error = DeliveryError::Permanent { code: code.clone(), message: message.clone() };
                        refused_at = Some((error, key));
                    }
                    let Some(retry) = retry else { break };
                    payload = *retry;
                    DeliveryError::Retryable { code, message }
                }
                Err(error) => error,
            };
            let wait = clock.after_failure(attempts, &error);
            self.metrics.sinks[self.index].count_failed_attempt(wait.is_some());
            let Some(wait) = wait else {
                let failed = FailedObject {
                    key: payload.key,
                    body: payload.body,
                    records: payload.records,
                    oldest_arrival_ms,
                    attempts,
                    error,
                };
                let backed_up = self.back_up(failed).await?;
                return Some(match (backed_up.ending, refused_records) {
                    (ending, 0) => Outcome { attempts, ending },
                    (Ending::BackedUp { error, key }, refused) => {
                        Outcome { attempts, ending: Ending::Partly { failed: refused + payload.records, error, key } }
                    }
                    (ending, _) => Outcome { attempts, ending },
                });
            };
            self.report_retry(&payload.key, attempts, &error, wait);
            tokio::time::sleep(wait).await;
        }
        Some(match refused_at {
            None => Outcome::stored(attempts),
            Some((error, key)) => Outcome { attempts, ending: Ending::Partly { failed: refused_records, error, key } },
        })
    }

    /// Writes a failed object's records to the error output as error documents (`None`: they
    /// cannot be stored there either, and the run stops).
    async fn back_up(&self, failed: FailedObject) -> Option<Outcome> {
        if let Err(e) = self.sink.skipped(&failed.key, &failed.error).await {
            tracing::error!(sink = %self.name, key = %failed.key, error = %e, "cannot record the skipped object; its records are backed up");
        }
        let output_type = ErrorOutputType::DeliveryFailed(self.sink.destination());
        // Decoding the object is CPU work: off the I/O threads' event loop.
        let payload = tokio::task::block_in_place(|| backup::error_payload(&self.settings, output_type, &failed));
        let key = payload.key.clone();
        self.store_error_output(payload).await?;
        Some(Outcome { attempts: failed.attempts, ending: Ending::BackedUp { error: failed.error, key } })
    }
}

/// What the deliver operator sends to an object's upload-in-parts task.
enum SessionMessage {
    Part(Bytes),
    Last { body: Bytes, ticket: u64, records: u64, oldest_arrival_ms: i64 },
}

/// Everything an upload-in-parts task needs.
struct Session {
    target: Arc<Target>,
    key: String,
    content_type: &'static str,
    content_encoding: Option<&'static str>,
    budget: Arc<InflightBudget>,
}

impl Session {
    /// Uploads one object's parts in order as they come, then completes it; if the destination does
    /// not take it, backs up its records. Reports on `done`. The parts are kept (and stay in the
    /// in-flight budget) until the object is stored or backed up: they are what the backup is made of.
    async fn run(
        self,
        mut messages: tokio::sync::mpsc::UnboundedReceiver<SessionMessage>,
        done: std::sync::mpsc::Sender<(u64, Outcome)>,
        wake: SyncActivator,
    ) {
        let target = &self.target;
        let retry = target.settings.retry;
        // Sessions are only opened for a sink that offers parts (the runtime checks).
        let (attempts, started) = match target.sink.parts() {
            Some(parts) => {
                let retrying = |n, e: &DeliveryError, wait| target.report_retry(&self.key, n, e, wait);
                with_retries(retry, &target.metrics.sinks[target.index], retrying, || {
                    parts.start_upload(&self.key, self.content_type, self.content_encoding)
                })
                .await
            }
            None => (
                0,
                Err(DeliveryError::Permanent {
                    code: "InternalError".into(),
                    message: "the sink takes no uploads in parts".into(),
                }),
            ),
        };
        let upload: Result<Arc<dyn PartUpload>, DeliveryError> = started.map(Arc::from);
        let mut failure: Option<DeliveryError> = None;
        let mut uploads = Vec::new();
        let mut kept: Vec<Bytes> = Vec::new();
        let mut kept_part_bytes = 0u64;
        while let Some(message) = messages.recv().await {
            let (body, last) = match message {
                SessionMessage::Part(body) => (body, None),
                SessionMessage::Last { body, ticket, records, oldest_arrival_ms } => {
                    (body, Some((ticket, records, oldest_arrival_ms)))
                }
            };
            if last.is_none() {
                kept_part_bytes += body.len() as u64;
            }
            kept.push(body.clone());
            if let Ok(u) = &upload
                && failure.is_none()
                && (!body.is_empty() || last.is_some() && uploads.is_empty())
            {
                let (u, index) = (Arc::clone(u), uploads.len());
                // A store that numbers parts itself numbers them when they are handed over, so they
                // are handed over here, in order (spawned tasks start in any order), and cannot be
                // sent again: one attempt. A store with numbered parts retries each on its own.
                let first_attempt = u.put_part(index, body.clone());
                let (part_target, key) = (Arc::clone(target), self.key.clone());
                uploads.push(tokio::spawn(async move {
                    let (metrics, sink_index) = (&part_target.metrics, part_target.index);
                    let counts = &metrics.sinks[sink_index];
                    let result = match first_attempt.await {
                        Err(e) if e.is_retryable() && u.retries_parts() => {
                            counts.count_failed_attempt(true);
                            // Tried again at once (the first attempt was handed over in order).
                            part_target.report_retry(&key, 1, &e, std::time::Duration::ZERO);
                            let retrying =
                                |n: u32, e: &DeliveryError, wait| part_target.report_retry(&key, n + 1, e, wait);
                            with_retries(retry, counts, retrying, || u.put_part(index, body.clone())).await.1
                        }
                        result => {
                            if result.is_err() {
                                counts.count_failed_attempt(false);
                            }
                            result
                        }
                    };
                    if result.is_ok() {
                        metrics.sinks[sink_index].parts.fetch_add(1, Relaxed);
                    }
                    result
                }));
            }
            let Some((ticket, records, oldest_arrival_ms)) = last else { continue };
            for part in uploads.drain(..) {
                let error = match part.await {
                    Ok(Ok(())) => continue,
                    Ok(Err(e)) => e,
                    Err(e) => DeliveryError::Retryable { code: "InternalError".into(), message: e.to_string() },
                };
                failure.get_or_insert(error);
            }
            let result = match (&upload, failure.take()) {
                (Ok(u), None) => {
                    let retrying = |n, e: &DeliveryError, wait| target.report_retry(&self.key, n, e, wait);
                    with_retries(retry, &target.metrics.sinks[target.index], retrying, || u.complete()).await.1
                }
                (Ok(u), Some(e)) => {
                    let _ = u.abort().await;
                    Err(e)
                }
                (Err(e), _) => Err(e.clone()),
            };
            let outcome = match result {
                Ok(()) => Some(Outcome::stored(attempts)),
                Err(error) => {
                    let body = Bytes::from(kept.concat());
                    let key = self.key.clone();
                    target.back_up(FailedObject { key, body, records, oldest_arrival_ms, attempts, error }).await
                }
            };
            self.budget.release(kept_part_bytes);
            // Without an outcome the run stops: the object's epoch is never released.
            if let Some(outcome) = outcome {
                let _ = done.send((ticket, outcome));
            }
            let _ = wake.activate();
            return;
        }
        // The operator went away before the last part (shutdown): leave nothing half-made behind.
        self.budget.release(kept_part_bytes);
        if let Ok(u) = &upload {
            let _ = u.abort().await;
        }
    }
}

/// Extension trait for the deliver operator.
pub trait Deliver<'scope> {
    /// Delivers every object to `sink` (number `index` in the plan), backing up to its error output
    /// what it does not take.
    fn deliver(
        self,
        name: &str,
        index: usize,
        sink: Arc<dyn Sink>,
        settings: Arc<SinkSettings>,
        context: &DeliveryContext,
        queue: Rc<DeliveryQueue>,
    ) -> Stream<'scope, Epoch, Vec<DeliveryReceipt>>;
}

impl<'scope> Deliver<'scope> for Stream<'scope, Epoch, Vec<SealedObject>> {
    fn deliver(
        self,
        name: &str,
        index: usize,
        sink: Arc<dyn Sink>,
        settings: Arc<SinkSettings>,
        context: &DeliveryContext,
        queue: Rc<DeliveryQueue>,
    ) -> Stream<'scope, Epoch, Vec<DeliveryReceipt>> {
        let DeliveryContext { runtime, budget, metrics } = context.clone();
        let error_sink = sink.error_output().unwrap_or_else(|| Arc::clone(&sink));
        let target = Arc::new(Target {
            name: name.to_string(),
            sink,
            error_sink,
            settings,
            metrics: Arc::clone(&metrics),
            index,
        });
        let worker = self.scope().worker();
        let worker_index = self.scope().index();
        let sink_name = name.to_string();
        self.unary_frontier::<CapacityContainerBuilder<Vec<DeliveryReceipt>>, _, _, _>(Pipeline, &format!("Deliver({name})"), move |initial, info| {
            drop(initial);
            let activator = worker.sync_activator_for(info.address.to_vec());
            let (done_tx, done_rx) = std::sync::mpsc::channel::<(u64, Outcome)>();
            let mut in_flight: HashMap<u64, InFlight> = HashMap::new();
            let mut sessions: HashMap<u64, tokio::sync::mpsc::UnboundedSender<SessionMessage>> = HashMap::new();
            let mut next_ticket = 0u64;
            let mut waiting: std::collections::VecDeque<(u64, Payload, ObjectKind, i64)> = std::collections::VecDeque::new();
            let mut delivering = 0usize;
            let activator_local = worker.sync_activator_for(info.address.to_vec());
            let pending_slot = pending_slot(worker_index, Stage::Delivering);
            move |(input, _frontier), output| {
                input.for_each(|cap, data| {
                    for object in data.drain(..) {
                        let part_len = object.payload.body.len() as u64;
                        let mut session_for = |id: u64| {
                            sessions
                                .entry(id)
                                .or_insert_with(|| {
                                    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
                                    let session = Session {
                                        target: Arc::clone(&target),
                                        key: object.payload.key.clone(),
                                        content_type: object.payload.content_type,
                                        content_encoding: object.payload.content_encoding,
                                        budget: Arc::clone(&budget),
                                    };
                                    runtime.spawn(session.run(rx, done_tx.clone(), activator.clone()));
                                    tx
                                })
                                .clone()
                        };
                        let id = match object.upload {
                            UploadStep::Part { object: id } => {
                                // Parts carry no capability: the object's epoch is held by its last step.
                                budget.acquire(part_len);
                                let _ = session_for(id).send(SessionMessage::Part(object.payload.body));
                                continue;
                            }
                            UploadStep::Last { object: id, .. } => Some(id),
                            UploadStep::Whole => None,
                        };
                        let Some(capability) = cap.retain_least(0) else { continue };
                        queue.add();
                        let ticket = next_ticket;
                        next_ticket += 1;
                        budget.acquire(part_len);
                        let sent = if let UploadStep::Last { sent, .. } = object.upload { sent } else { 0 };
                        in_flight.insert(ticket, InFlight {
                            capability,
                            kind: object.kind,
                            oldest_arrival_ms: object.oldest_arrival_ms,
                            key: object.payload.key.clone(),
                            records: object.payload.records,
                            raw_bytes: object.raw_bytes,
                            body_bytes: sent + part_len,
                            budget_bytes: part_len,
                            in_parts: id.is_some(),
                        });
                        if let Some(id) = id {
                            let session = session_for(id);
                            sessions.remove(&id);
                            let _ = session.send(SessionMessage::Last {
                                body: object.payload.body,
                                ticket,
                                records: object.payload.records,
                                oldest_arrival_ms: object.oldest_arrival_ms,
                            });
                            continue;
                        }
                        waiting.push_back((ticket, object.payload, object.kind, object.oldest_arrival_ms));
                    }
                });
                // At most MAX_DELIVERIES whole objects are being stored at once (a partitioned sink
                // may seal thousands of small objects in one step); the rest wait here, held.
                while delivering < MAX_DELIVERIES {
                    let Some((ticket, payload, kind, oldest_arrival_ms)) = waiting.pop_front() else { break };
                    delivering += 1;
                    let target = Arc::clone(&target);
                    let tx = done_tx.clone();
                    let wake = activator.clone();
                    runtime.spawn(async move {
                        let outcome = match kind {
                            ObjectKind::Data => target.deliver_or_back_up(payload, oldest_arrival_ms).await,
                            ObjectKind::ErrorOutput { .. } => target.store_error_output(payload).await.map(Outcome::stored),
                        };
                        // Without an outcome the run stops: the object's epoch is never released.
                        if let Some(outcome) = outcome {
                            let _ = tx.send((ticket, outcome));
                        }
                        let _ = wake.activate();
                    });
                }
                while let Ok((ticket, outcome)) = done_rx.try_recv() {
                    let Some(done) = in_flight.remove(&ticket) else { continue };
                    queue.done();
                    if !done.in_parts {
                        delivering -= 1;
                        // A slot is free: the next activation starts a waiting object.
                        if !waiting.is_empty() {
                            let _ = activator_local.activate();
                        }
                    }
                    budget.release(done.budget_bytes);
                    let m = &metrics.sinks[index];
                    m.attempts.fetch_add(u64::from(outcome.attempts), Relaxed);
                    let note_error_key = |key: &str| {
                        if let Ok(mut keys) = m.error_keys.lock()
                            && keys.len() < 5
                        {
                            keys.push(key.to_string());
                        }
                    };
                    let stored = matches!(outcome.ending, Ending::Stored);
                    metrics.audit(|trail| delivery_event(trail, &sink_name, &done, &outcome));
                    // One place says it, rate-limited: the error log (JSON, or log lines on stderr).
                    let backed_up = match &outcome.ending {
                        Ending::Partly { failed, error, key } => Some((
                            error,
                            format!("{failed} records refused by the destination, backed up to the error output ({key}): {error}"),
                        )),
                        Ending::BackedUp { error, key } => Some((
                            error,
                            format!("object not delivered; its records are backed up to the error output ({key}): {error}"),
                        )),
                        Ending::Stored => None,
                    };
                    if let Some((error, message)) = backed_up {
                        metrics.report_error(ErrorEvent {
                            level: Level::Error,
                            component: &sink_name,
                            error_code: error.code(),
                            message: &message,
                            attempts: Some(outcome.attempts),
                            key: Some(&done.key),
                        });
                    }
                    match (outcome.ending, done.kind) {
                        (Ending::Stored, ObjectKind::Data) => {
                            m.stored.fetch_add(1, Relaxed);
                            m.records_delivered.fetch_add(done.records, Relaxed);
                            m.bytes_delivered.fetch_add(done.raw_bytes, Relaxed);
                            m.bytes_stored.fetch_add(done.body_bytes, Relaxed);
                            m.objects.fetch_add(1, Relaxed);
                        }
                        (Ending::Stored, ObjectKind::ErrorOutput { output_type: ErrorOutputType::SourceRecordBackup }) => {
                            m.records_source_backup.fetch_add(done.records, Relaxed);
                        }
                        (Ending::Stored, ObjectKind::ErrorOutput { output_type }) => {
                            m.records_failed.fetch_add(done.records, Relaxed);
                            m.error_objects.fetch_add(1, Relaxed);
                            m.count_reason(output_type.name(), done.records);
                            note_error_key(&done.key);
                        }
                        (Ending::Partly { failed, error, key }, _) => {
                            m.stored.fetch_add(1, Relaxed);
                            m.records_delivered.fetch_add(done.records.saturating_sub(failed), Relaxed);
                            m.bytes_delivered.fetch_add(done.raw_bytes, Relaxed);
                            m.bytes_stored.fetch_add(done.body_bytes, Relaxed);
                            m.objects.fetch_add(1, Relaxed);
                            m.records_failed.fetch_add(failed, Relaxed);
                            m.error_objects.fetch_add(1, Relaxed);
                            m.count_reason(error.code(), failed);
                            note_error_key(&key);
                            if let Ok(mut last) = m.last_error.lock() {
                                *last = Some(format!("{error} (after {} attempts)", outcome.attempts));
                            }
                        }
                        (Ending::BackedUp { error, key }, _) => {
                            m.records_failed.fetch_add(done.records, Relaxed);
                            m.error_objects.fetch_add(1, Relaxed);
                            m.count_reason(error.code(), done.records);
                            note_error_key(&key);
                            if let Ok(mut last) = m.last_error.lock() {
                                *last = Some(format!("{error} (after {} attempts)", outcome.attempts));
                            }
                        }
                    }
                    output.session(&done.capability).give(DeliveryReceipt { kind: done.kind, records: done.records, stored });
                }
                metrics.sinks[index].pending.set(pending_slot, in_flight.values().map(|f| f.oldest_arrival_ms).min());
            }
        })
    }
}

/// The audit trail's line for one object's outcome: `DeliverObject` (data) or `StoreErrorOutput`,
/// with the sink, the object key, records, bytes and attempts, and the error code when the object
/// (or some of its records) went to the error output.
fn delivery_event(
    trail: &crate::audit::AuditTrail,
    sink: &str,
    done: &InFlight,
    outcome: &Outcome,
) -> crate::audit::AuditEvent {
    let mut details = serde_json::json!({
        "destination": sink,
        "objectKey": done.key,
        "records": done.records,
        "bytes": done.body_bytes,
        "attempts": outcome.attempts,
    });
    let name = match done.kind {
        ObjectKind::Data => "DeliverObject",
        ObjectKind::ErrorOutput { output_type } => {
            details["errorOutputType"] = output_type.name().into();
            "StoreErrorOutput"
        }
    };
    let failed = match &outcome.ending {
        Ending::Stored => None,
        Ending::Partly { failed, error, key } => {
            details["failedRecords"] = (*failed).into();
            details["backupKey"] = key.as_str().into();
            Some(error)
        }
        Ending::BackedUp { error, key } => {
            details["failedRecords"] = done.records.into();
            details["backupKey"] = key.as_str().into();
            Some(error)
        }
    };
    let event = crate::audit::AuditEvent::service_event(name, trail.region(), details);
    // The code only: a destination's message may quote the records it refused.
    match failed {
        Some(error) => event.error(error.code(), "records went to the error output (see backupKey)"),
        None => event,
    }
}

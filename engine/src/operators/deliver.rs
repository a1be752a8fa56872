//! The deliver operator: `objects.deliver(...)` hands each sealed object to its sink on the tokio
//! runtime, retrying by the sink's policy, and holds the object's epoch until the sink answered.
//!
//! The worker never blocks: deliveries run as tokio tasks, and a finished task wakes this operator
//! through a `SyncActivator`. Guarantees: a capability is released only after its object was stored
//! or its failure was counted, so the probe after this operator means "delivered".

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use timely::container::CapacityContainerBuilder;
use timely::dataflow::Stream;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::Capability;
use timely::dataflow::operators::generic::Operator;

use super::{Epoch, InflightBudget, Stage, pending_slot};
use bytes::Bytes;
use timely::scheduling::SyncActivator;

use crate::buffer::{ObjectKind, SealedObject, UploadStep};
use crate::metrics::PipelineMetrics;
use crate::retry::{DeliveryOutcome, RetryPolicy, deliver_with_retries, with_retries};
use crate::traits::{DeliveryError, PartUpload, Sink};

/// What came back for one object.
#[derive(Debug, Clone)]
pub struct DeliveryReceipt {
    /// Data or error output.
    pub kind: ObjectKind,
    /// Records in the object.
    pub records: u64,
    /// Whether it was stored.
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
}

/// What the deliver operator sends to an object's upload-in-parts task.
enum SessionMessage {
    Part(Bytes),
    Last { body: Bytes, ticket: u64 },
}

/// Everything an upload-in-parts task needs.
struct Session {
    sink: Arc<dyn Sink>,
    key: String,
    content_type: &'static str,
    content_encoding: Option<&'static str>,
    retry: RetryPolicy,
    budget: Arc<InflightBudget>,
    metrics: Arc<PipelineMetrics>,
    index: usize,
}

impl Session {
    /// Uploads one object's parts in order as they come, then completes it; reports on `done`.
    async fn run(
        self,
        mut messages: tokio::sync::mpsc::UnboundedReceiver<SessionMessage>,
        done: std::sync::mpsc::Sender<(u64, DeliveryOutcome)>,
        wake: SyncActivator,
    ) {
        let (attempts, started) =
            with_retries(self.retry, || self.sink.start_upload(&self.key, self.content_type, self.content_encoding))
                .await;
        let upload: Result<Arc<dyn PartUpload>, DeliveryError> = started.map(Arc::from);
        let mut failure: Option<DeliveryError> = None;
        let mut parts = Vec::new();
        while let Some(message) = messages.recv().await {
            let (body, last) = match message {
                SessionMessage::Part(body) => (body, None),
                SessionMessage::Last { body, ticket } => (body, Some(ticket)),
            };
            let len = body.len() as u64;
            match &upload {
                Ok(u) if failure.is_none() && (!body.is_empty() || last.is_some() && parts.is_empty()) => {
                    let (u, index, retry) = (Arc::clone(u), parts.len(), self.retry);
                    // A store that numbers parts itself cannot take a part again: one attempt only.
                    let policy =
                        if u.retries_parts() { retry } else { RetryPolicy { duration: Duration::ZERO, ..retry } };
                    let (budget, metrics, sink_index) =
                        (Arc::clone(&self.budget), Arc::clone(&self.metrics), self.index);
                    let counted = last.is_none();
                    parts.push(tokio::spawn(async move {
                        let (_, result) = with_retries(policy, || u.put_part(index, body.clone())).await;
                        if counted {
                            budget.release(len);
                        }
                        if result.is_ok() {
                            metrics.sinks[sink_index].parts.fetch_add(1, Relaxed);
                        }
                        result
                    }));
                }
                // Nothing to send, or the upload already failed: the bytes are dropped with it.
                _ if last.is_none() => self.budget.release(len),
                _ => {}
            }
            let Some(ticket) = last else { continue };
            for part in parts.drain(..) {
                match part.await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => {
                        failure.get_or_insert(e);
                    }
                    Err(e) => {
                        failure.get_or_insert(DeliveryError::Retryable {
                            code: "InternalError".into(),
                            message: e.to_string(),
                        });
                    }
                }
            }
            let result = match (&upload, failure.take()) {
                (Ok(u), None) => with_retries(self.retry, || u.complete()).await.1,
                (Ok(u), Some(e)) => {
                    let _ = u.abort().await;
                    Err(e)
                }
                (Err(e), _) => Err(e.clone()),
            };
            let _ = done.send((ticket, DeliveryOutcome { attempts, result }));
            let _ = wake.activate();
            return;
        }
        // The operator went away before the last part (shutdown): leave nothing half-made behind.
        if let Ok(u) = &upload {
            let _ = u.abort().await;
        }
    }
}

/// Extension trait for the deliver operator.
pub trait Deliver<'scope> {
    /// Delivers every object to `sink` (number `index` in the plan).
    fn deliver(
        self,
        name: &str,
        index: usize,
        sink: Arc<dyn Sink>,
        retry: RetryPolicy,
        context: &DeliveryContext,
    ) -> Stream<'scope, Epoch, Vec<DeliveryReceipt>>;
}

impl<'scope> Deliver<'scope> for Stream<'scope, Epoch, Vec<SealedObject>> {
    fn deliver(
        self,
        name: &str,
        index: usize,
        sink: Arc<dyn Sink>,
        retry: RetryPolicy,
        context: &DeliveryContext,
    ) -> Stream<'scope, Epoch, Vec<DeliveryReceipt>> {
        let DeliveryContext { runtime, budget, metrics } = context.clone();
        let worker = self.scope().worker();
        let worker_index = self.scope().index();
        let sink_name = name.to_string();
        self.unary_frontier::<CapacityContainerBuilder<Vec<DeliveryReceipt>>, _, _, _>(Pipeline, &format!("Deliver({name})"), move |initial, info| {
            drop(initial);
            let activator = worker.sync_activator_for(info.address.to_vec());
            let (done_tx, done_rx) = std::sync::mpsc::channel::<(u64, DeliveryOutcome)>();
            let mut in_flight: HashMap<u64, InFlight> = HashMap::new();
            let mut sessions: HashMap<u64, tokio::sync::mpsc::UnboundedSender<SessionMessage>> = HashMap::new();
            let mut next_ticket = 0u64;
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
                                        sink: Arc::clone(&sink),
                                        key: object.payload.key.clone(),
                                        content_type: object.payload.content_type,
                                        content_encoding: object.payload.content_encoding,
                                        retry,
                                        budget: Arc::clone(&budget),
                                        metrics: Arc::clone(&metrics),
                                        index,
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
                        });
                        if let Some(id) = id {
                            let session = session_for(id);
                            sessions.remove(&id);
                            let _ = session.send(SessionMessage::Last { body: object.payload.body, ticket });
                            continue;
                        }
                        let sink = Arc::clone(&sink);
                        let payload = object.payload;
                        let tx = done_tx.clone();
                        let wake = activator.clone();
                        runtime.spawn(async move {
                            let outcome = deliver_with_retries(retry, || sink.deliver(payload.clone())).await;
                            let _ = tx.send((ticket, outcome));
                            let _ = wake.activate();
                        });
                    }
                });
                while let Ok((ticket, outcome)) = done_rx.try_recv() {
                    let Some(done) = in_flight.remove(&ticket) else { continue };
                    budget.release(done.budget_bytes);
                    let m = &metrics.sinks[index];
                    let stored = outcome.result.is_ok();
                    m.attempts.fetch_add(u64::from(outcome.attempts), Relaxed);
                    if stored {
                        m.stored.fetch_add(1, Relaxed);
                    }
                    match (&outcome.result, done.kind) {
                        (Ok(()), ObjectKind::Data) => {
                            m.records_delivered.fetch_add(done.records, Relaxed);
                            m.bytes_delivered.fetch_add(done.raw_bytes, Relaxed);
                            m.bytes_stored.fetch_add(done.body_bytes, Relaxed);
                            m.objects.fetch_add(1, Relaxed);
                        }
                        (Ok(()), ObjectKind::ErrorOutput { output_type }) => {
                            m.records_failed.fetch_add(done.records, Relaxed);
                            m.error_objects.fetch_add(1, Relaxed);
                            m.count_reason(output_type, done.records);
                            if let Ok(mut keys) = m.error_keys.lock()
                                && keys.len() < 5
                            {
                                keys.push(done.key.clone());
                            }
                        }
                        (Err(e), _) => {
                            tracing::error!(sink = %sink_name, key = %done.key, attempts = outcome.attempts, error = %e, "object not delivered");
                            m.records_undelivered.fetch_add(done.records, Relaxed);
                            m.count_reason(e.code(), done.records);
                            if let Ok(mut last) = m.last_error.lock() {
                                *last = Some(format!("{e} (after {} attempts)", outcome.attempts));
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

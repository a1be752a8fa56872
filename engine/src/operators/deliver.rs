//! The deliver operator: `objects.deliver(...)` hands each sealed object to its sink on the tokio
//! runtime, retrying by the sink's policy, and holds the object's epoch until the sink answered.
//!
//! The worker never blocks: deliveries run as tokio tasks, and a finished task wakes this operator
//! through a `SyncActivator`. Guarantees: a capability is released only after its object was stored
//! or its failure was counted, so the probe after this operator means "delivered".

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use timely::container::CapacityContainerBuilder;
use timely::dataflow::Stream;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::Capability;
use timely::dataflow::operators::generic::Operator;

use super::{Epoch, InflightBudget};
use crate::buffer::{ObjectKind, SealedObject};
use crate::metrics::PipelineMetrics;
use crate::retry::{DeliveryOutcome, RetryPolicy, deliver_with_retries};
use crate::traits::Sink;

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
    key: String,
    records: u64,
    raw_bytes: u64,
    body_bytes: u64,
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
        let sink_name = name.to_string();
        self.unary_frontier::<CapacityContainerBuilder<Vec<DeliveryReceipt>>, _, _, _>(Pipeline, &format!("Deliver({name})"), move |initial, info| {
            drop(initial);
            let activator = worker.sync_activator_for(info.address.to_vec());
            let (done_tx, done_rx) = std::sync::mpsc::channel::<(u64, DeliveryOutcome)>();
            let mut in_flight: HashMap<u64, InFlight> = HashMap::new();
            let mut next_ticket = 0u64;
            move |(input, _frontier), output| {
                input.for_each(|cap, data| {
                    for object in data.drain(..) {
                        let Some(capability) = cap.retain_least(0) else { continue };
                        let ticket = next_ticket;
                        next_ticket += 1;
                        let body_bytes = object.payload.body.len() as u64;
                        budget.acquire(body_bytes);
                        in_flight.insert(ticket, InFlight {
                            capability,
                            kind: object.kind,
                            key: object.payload.key.clone(),
                            records: object.payload.records,
                            raw_bytes: object.raw_bytes,
                            body_bytes,
                        });
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
                    budget.release(done.body_bytes);
                    let m = &metrics.sinks[index];
                    let stored = outcome.result.is_ok();
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
            }
        })
    }
}

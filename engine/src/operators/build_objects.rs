//! The buffer operator: `stream.build_objects(...)` turns record batches into sealed objects with an
//! [`ObjectBatcher`], holding the capability of the oldest epoch it still buffers.
//!
//! Guarantees: objects are sealed by size or interval while the input runs (a timer activation is
//! set for the next deadline) and all at end of input; each sealed object is sent at its own oldest
//! epoch; no capability is held when nothing is buffered.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use timely::container::CapacityContainerBuilder;
use timely::dataflow::Stream;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::Capability;
use timely::dataflow::operators::generic::Operator;

use super::{Epoch, Stage, pending_slot};
use crate::buffer::{ObjectBatcher, PART_BYTES, SealedObject};
use crate::config::SinkSettings;
use crate::metrics::PipelineMetrics;
use crate::record::Records;

/// Extension trait for the buffer operator.
pub trait BuildObjects<'scope> {
    /// Buffers, encodes and compresses records into objects for one sink.
    fn build_objects(
        self,
        sink: &str,
        index: usize,
        settings: Arc<SinkSettings>,
        in_parts: bool,
        metrics: Arc<PipelineMetrics>,
    ) -> Stream<'scope, Epoch, Vec<SealedObject>>;
}

impl<'scope> BuildObjects<'scope> for Stream<'scope, Epoch, Vec<Records>> {
    fn build_objects(
        self,
        sink: &str,
        index: usize,
        settings: Arc<SinkSettings>,
        in_parts: bool,
        metrics: Arc<PipelineMetrics>,
    ) -> Stream<'scope, Epoch, Vec<SealedObject>> {
        let scope = self.scope();
        let sink_name = sink.to_string();
        self.unary_frontier::<CapacityContainerBuilder<Vec<SealedObject>>, _, _, _>(
            Pipeline,
            &format!("BuildObjects({sink})"),
            move |initial, info| {
                drop(initial);
                let activator = scope.activator_for(info.address);
                let mut batcher = ObjectBatcher::new(settings);
                if in_parts {
                    batcher = batcher.with_parts(PART_BYTES);
                }
                let mut held: Option<Capability<Epoch>> = None;
                let mut sealed = Vec::new();
                let pending_slot = pending_slot(scope.index(), Stage::Buffering);
                move |(input, frontier), output| {
                    let now = Instant::now();
                    input.for_each(|cap, data| {
                        let Some(&time) = cap.least() else { return };
                        if held.as_ref().is_none_or(|h| time < *h.time()) {
                            held = cap.retain_least(0);
                        }
                        for records in data.drain(..) {
                            let appended = match &records {
                                Records::Deliver(batch) => batcher.append(batch, time, now, &mut sealed),
                                Records::Failed(failed) => batcher.append_failed(failed, time, now, &mut sealed),
                                Records::Backup(batch) => batcher.append_backup(batch, time, now, &mut sealed),
                            };
                            if let Err(e) = appended {
                                tracing::error!(sink = %sink_name, error = %e, "cannot encode a batch");
                                let m = &metrics.sinks[index];
                                m.records_undelivered.fetch_add(records.len() as u64, Ordering::Relaxed);
                                m.count_reason("EncodingFailed", records.len() as u64);
                            }
                        }
                    });
                    let end_of_input = frontier.frontier().is_empty();
                    let result = if end_of_input {
                        batcher.seal_all(&mut sealed)
                    } else {
                        batcher.seal_expired(now, &mut sealed)
                    };
                    if let Err(e) = result {
                        tracing::error!(sink = %sink_name, error = %e, "cannot finish an object");
                    }
                    if let Some(h) = held.as_ref() {
                        for object in sealed.drain(..) {
                            let at = h.delayed(&object.epoch.max(*h.time()));
                            output.session(&at).give(object);
                        }
                    }
                    match (batcher.oldest_epoch(), held.as_mut()) {
                        (None, _) => held = None,
                        (Some(oldest), Some(h)) if oldest > *h.time() => h.downgrade(&oldest),
                        _ => {}
                    }
                    metrics.sinks[index].pending.set(pending_slot, batcher.oldest_arrival_ms());
                    if let Some(deadline) = batcher.next_deadline() {
                        activator.activate_after(deadline.saturating_duration_since(now));
                    }
                }
            },
        )
    }
}

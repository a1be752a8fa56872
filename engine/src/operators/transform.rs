//! The transform operator: `stream.transform(...)` runs one transform's worker over record batches.
//!
//! Records a transform failed upstream (and source-record backups) pass through untouched (they go to the error output of every
//! sink they would have reached). Guarantees: the operator holds the capability of the oldest epoch
//! the worker still holds (a function's buffer, invocations in flight), so the delivered frontier
//! never passes a record inside a transform; what the worker answers is sent at an epoch no later
//! than the one its records arrived at, in the order the worker answered it; at end of input the
//! worker is polled until it holds nothing; records in, out, dropped and failed are counted.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Instant;

use timely::container::CapacityContainerBuilder;
use timely::dataflow::Stream;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::Capability;
use timely::dataflow::operators::generic::Operator;

use super::Epoch;
use crate::contract::{Transform, TransformContext, TransformOutput};
use crate::metrics::{PipelineMetrics, TransformMetrics};
use crate::record::Records;

/// Extension trait for the transform operator.
pub trait TransformRecords<'scope> {
    /// Runs `transform` over the stream, counting into `counters`; a transform that cannot start
    /// on this worker stops the run (`pipeline.fatal`).
    fn transform(
        self,
        name: &str,
        transform: Arc<dyn Transform>,
        counters: Arc<TransformMetrics>,
        runtime: tokio::runtime::Handle,
        pipeline: Arc<PipelineMetrics>,
    ) -> Stream<'scope, Epoch, Vec<Records>>;
}

impl<'scope> TransformRecords<'scope> for Stream<'scope, Epoch, Vec<Records>> {
    fn transform(
        self,
        name: &str,
        transform: Arc<dyn Transform>,
        counters: Arc<TransformMetrics>,
        runtime: tokio::runtime::Handle,
        pipeline: Arc<PipelineMetrics>,
    ) -> Stream<'scope, Epoch, Vec<Records>> {
        let scope = self.scope();
        let worker = scope.worker();
        let transform_name = name.to_string();
        self.unary_frontier::<CapacityContainerBuilder<Vec<Records>>, _, _, _>(
            Pipeline,
            &format!("Transform({name})"),
            move |initial, info| {
                drop(initial);
                let activator = scope.activator_for(info.address.clone());
                let sync_activator = worker.sync_activator_for(info.address.to_vec());
                let context = TransformContext {
                    worker: scope.index(),
                    workers: scope.peers(),
                    runtime,
                    wake: Arc::new(move || {
                        let _ = sync_activator.activate();
                    }),
                    metrics: Arc::clone(&counters),
                };
                let mut state = match transform.open(&context) {
                    Ok(state) => Some(state),
                    Err(e) => {
                        tracing::error!(transform = %transform_name, error = %e, "transform cannot start");
                        let _ = pipeline.fatal.set(format!("transform `{transform_name}` cannot start: {e}"));
                        None
                    }
                };
                let mut held: Option<Capability<Epoch>> = None;
                let mut out = TransformOutput::default();
                move |(input, frontier), output| {
                    let Some(state) = state.as_mut() else {
                        // The run is stopping (fatal): hold nothing, send nothing.
                        input.for_each(|_, data| data.clear());
                        return;
                    };
                    let mut passed = Vec::new();
                    input.for_each(|cap, data| {
                        let Some(&time) = cap.least() else { return };
                        if held.as_ref().is_none_or(|h| time < *h.time()) {
                            held = cap.retain_least(0);
                        }
                        for records in data.drain(..) {
                            match records {
                                Records::Deliver(batch) => {
                                    counters.records_in.fetch_add(batch.len() as u64, Relaxed);
                                    state.push(batch, time, &mut out);
                                }
                                other @ (Records::Failed(_) | Records::Backup(_)) => passed.push((time, other)),
                            }
                        }
                    });
                    let end_of_input = frontier.frontier().is_empty();
                    let now = Instant::now();
                    let holding = state.poll(now, end_of_input, &mut out);
                    let (answered, dropped) = out.take();
                    counters.records_dropped.fetch_add(dropped, Relaxed);
                    for (_, records) in &answered {
                        match records {
                            Records::Deliver(batch) => counters.records_out.fetch_add(batch.len() as u64, Relaxed),
                            Records::Failed(f) => {
                                counters.count_failed(f);
                                0
                            }
                            Records::Backup(_) => 0,
                        };
                    }
                    if let Some(h) = held.as_ref() {
                        // One session per run of equal epochs (order kept).
                        let floor = *h.time();
                        let mut items = answered.into_iter().chain(passed).peekable();
                        while let Some((epoch, records)) = items.next() {
                            let epoch = epoch.max(floor);
                            let at = h.delayed(&epoch);
                            let mut session = output.session(&at);
                            session.give(records);
                            while let Some((_, next)) = items.next_if(|(e, _)| (*e).max(floor) == epoch) {
                                session.give(next);
                            }
                        }
                    }
                    match (holding.oldest_epoch, held.as_mut()) {
                        (None, _) => held = None,
                        (Some(oldest), Some(h)) if oldest > *h.time() => h.downgrade(&oldest),
                        _ => {}
                    }
                    if let Some(deadline) = holding.next_deadline {
                        activator.activate_after(deadline.saturating_duration_since(now));
                    } else if end_of_input && holding.oldest_epoch.is_some() {
                        // Work in flight wakes the operator when it ends; poll now and then anyway.
                        activator.activate_after(std::time::Duration::from_millis(100));
                    }
                }
            },
        )
    }
}

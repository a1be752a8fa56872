//! The source operator: reads this worker's share of a source in batches, stamps them with the
//! current epoch, advances the epoch on a tick, and finishes at end of input or on stop.
//!
//! Guarantees: it never reads while the in-flight budget is exhausted; it advances the epoch at
//! least once per tick even when idle (so interval flushing and the delivered frontier progress);
//! on stop it finishes at once, or, for a reader that asks to drain (records already acknowledged
//! to producers), reads on until the reader is finished; a read error stops this share (one input
//! of several that fails, [`crate::contract::SourceError::InputFailed`], is given up and the share
//! goes on), is logged and counted in the run's outcome, and never panics.

use std::sync::Arc;
use std::time::{Duration, Instant};

use timely::container::CapacityContainerBuilder;
use timely::dataflow::operators::generic::operator::source;
use timely::dataflow::{Scope, Stream};

use super::{Epoch, InflightBudget};
use crate::contract::{OnStop, ReadStatus, SourceReader, StopSignal};
use crate::metrics::PipelineMetrics;
use crate::record::{RecordBatch, Records, now_ms};

/// How often the epoch advances. Finer epochs do not make checkpoints follow deliveries sooner:
/// each worker's objects span about `interval_s` of epochs, and the frontier waits for the slowest
/// worker's oldest one; measured with tests/crash.rs, 200 ms epochs replayed more after a kill.
pub const TICK: Duration = Duration::from_secs(1);
/// Target bytes per batch.
pub const BATCH_BYTES: usize = 1 << 20;
/// Batches read per activation before yielding to the rest of the worker.
const BATCHES_PER_ACTIVATION: usize = 4;

/// Builds the operator that reads `reader` (source number `index` in the plan).
pub fn read_source<'scope>(
    scope: Scope<'scope, Epoch>,
    name: &str,
    index: usize,
    mut reader: Box<dyn SourceReader>,
    metrics: Arc<PipelineMetrics>,
    budget: Arc<InflightBudget>,
    stop: StopSignal,
) -> Stream<'scope, Epoch, Vec<Records>> {
    let source_name = name.to_string();
    source::<Epoch, CapacityContainerBuilder<Vec<Records>>, _, _>(
        scope,
        &format!("Read({name})"),
        move |capability, info| {
            let activator = scope.activator_for(info.address);
            let mut capability = Some(capability);
            let mut epoch_started = Instant::now();
            let mut draining = false;
            move |output| {
                let Some(cap) = capability.as_mut() else {
                    return;
                };
                if stop.is_stopped() && !draining {
                    match reader.on_stop() {
                        OnStop::Finish => {
                            capability = None;
                            return;
                        }
                        OnStop::Drain => draining = true,
                    }
                }
                if epoch_started.elapsed() >= TICK {
                    let next = *cap.time() + 1;
                    cap.downgrade(&next);
                    epoch_started = Instant::now();
                }
                if budget.is_exhausted() {
                    activator.activate_after(Duration::from_millis(5));
                    return;
                }
                reader.set_epoch(*cap.time());
                for _ in 0..BATCHES_PER_ACTIVATION {
                    let mut batch = RecordBatch::with_capacity(now_ms(), BATCH_BYTES + BATCH_BYTES / 8);
                    let status = reader.read(&mut batch, BATCH_BYTES);
                    if !batch.is_empty() {
                        let counters = &metrics.sources[index];
                        counters.records.fetch_add(batch.len() as u64, std::sync::atomic::Ordering::Relaxed);
                        counters.bytes.fetch_add(batch.byte_len() as u64, std::sync::atomic::Ordering::Relaxed);
                        output.session(&*cap).give(Records::Deliver(batch));
                    }
                    match status {
                        Ok(ReadStatus::Ready) => {}
                        Ok(ReadStatus::Pending(wait)) => {
                            activator.activate_after(wait.min(TICK));
                            return;
                        }
                        Ok(ReadStatus::Finished) => {
                            capability = None;
                            return;
                        }
                        Err(e) => {
                            metrics.report_source_error(format!("source `{source_name}`: {e}"));
                            // The error names what was being read (a file, an object's URL); the
                            // error log says it on stderr too.
                            let goes_on = e.reader_goes_on();
                            let message = if goes_on {
                                format!("the rest of this input is given up; the source goes on: {e}")
                            } else {
                                format!("this worker's share of the source stopped: {e}")
                            };
                            metrics.report_error(crate::error_log::ErrorEvent {
                                level: crate::error_log::Level::Error,
                                component: &source_name,
                                error_code: "SourceReadFailed",
                                message: &message,
                                attempts: None,
                                key: None,
                            });
                            if !goes_on {
                                capability = None;
                                return;
                            }
                        }
                    }
                }
                activator.activate();
            }
        },
    )
}

//! The source operator: reads this worker's share of a source in batches, stamps them with the
//! current epoch, advances the epoch on a tick, and finishes at end of input or on stop.
//!
//! Guarantees: it never reads while the in-flight budget is exhausted; it advances the epoch at
//! least once per tick even when idle (so interval flushing and the delivered frontier progress);
//! on stop it finishes at once, or, for a reader that asks to drain (records already acknowledged
//! to producers), reads on until the reader is finished; a read error stops this share (one input
//! of several that fails, [`crate::contract::SourceError::InputFailed`], is given up and the share
//! goes on), is logged and counted in the run's outcome, and never panics. A record over the
//! source's [`crate::contract::Source::max_record_bytes`] leaves as a failed record
//! (`processing-failed`, `Source.RecordTooLarge`) for the error output of every sink it would have
//! reached, in the same epoch as the batch it came in: never delivered, never lost.

use std::sync::Arc;
use std::time::{Duration, Instant};

use timely::container::CapacityContainerBuilder;
use timely::dataflow::operators::generic::operator::source;
use timely::dataflow::{Scope, Stream};

use super::{Epoch, InflightBudget};
use crate::config::SourcePlan;
use crate::contract::{OnStop, ReadStatus, SourceReader, StopSignal};
use crate::error_output::ErrorOutputType;
use crate::metrics::{Family, PipelineMetrics};
use crate::record::{FailedRecords, RecordBatch, RecordFailure, Records, now_ms};

/// How often the epoch advances. Finer epochs do not make checkpoints follow deliveries sooner:
/// each worker's objects span about `interval_s` of epochs, and the frontier waits for the slowest
/// worker's oldest one; measured with tests/crash.rs, 200 ms epochs replayed more after a kill.
pub const TICK: Duration = Duration::from_secs(1);
/// Target bytes per batch.
pub const BATCH_BYTES: usize = 1 << 20;
/// Batches read per activation before yielding to the rest of the worker.
const BATCHES_PER_ACTIVATION: usize = 4;
/// The error document's `errorCode` of a record over its source's limit.
pub const RECORD_TOO_LARGE: &str = "Source.RecordTooLarge";
/// Records over their source's limit, sent to the error output.
pub const RECORDS_TOO_LARGE: Family = Family {
    name: "SourceRecordsTooLarge",
    help: "Records over their source's record limit (1,000 KiB for a listening source), sent to the error output of the sinks they would have reached.",
};

/// Builds the operator that reads `reader` (`planned`, source number `index` in the plan).
pub fn read_source<'scope>(
    scope: Scope<'scope, Epoch>,
    planned: &SourcePlan,
    index: usize,
    mut reader: Box<dyn SourceReader>,
    metrics: Arc<PipelineMetrics>,
    budget: Arc<InflightBudget>,
    stop: StopSignal,
) -> Stream<'scope, Epoch, Vec<Records>> {
    let source_name = planned.name.clone();
    let max_record_bytes = planned.source.max_record_bytes();
    source::<Epoch, CapacityContainerBuilder<Vec<Records>>, _, _>(
        scope,
        &format!("Read({source_name})"),
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
                        let too_large = max_record_bytes.and_then(|limit| split_off_too_large(&mut batch, limit));
                        let mut session = output.session(&*cap);
                        if !batch.is_empty() {
                            session.give(Records::Deliver(batch));
                        }
                        if let Some(failed) = too_large {
                            say_too_large(&metrics, index, &source_name, &failed);
                            session.give(Records::Failed(failed));
                        }
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

/// Takes the records of `batch` over `limit` bytes out of it, as failed records with why; the
/// others stay, in order, with their origins, partition keys and what the source said of them.
/// `None` (and `batch` untouched) when none is over it.
pub fn split_off_too_large(batch: &mut RecordBatch, limit: usize) -> Option<FailedRecords> {
    if batch.byte_len() <= limit || batch.iter().all(|record| record.len() <= limit) {
        return None;
    }
    let mut kept = RecordBatch::with_capacity(batch.arrival_ms, batch.byte_len());
    if let Some(metadata) = batch.source_metadata() {
        kept.describe_source(metadata.event.clone(), &metadata.record_member);
    }
    let mut failed = FailedRecords::new(ErrorOutputType::ProcessingFailed, batch.arrival_ms);
    for (index, record) in batch.iter().enumerate() {
        if record.len() > limit {
            let why = format!("the record has {} bytes; its source's records are at most {limit}", record.len());
            failed.push(record, RecordFailure::local(RECORD_TOO_LARGE, why));
        } else {
            kept.push_carrying(record, batch.origin(index), batch.partition_keys(index));
            kept.set_record_metadata(kept.len() - 1, batch.record_metadata(index).map(str::to_string));
        }
    }
    *batch = kept;
    Some(failed)
}

/// Says in the error log that `failed` records of source `name` (number `index`) went to the
/// error output for their size, and counts them.
fn say_too_large(metrics: &PipelineMetrics, index: usize, name: &str, failed: &FailedRecords) {
    let largest = failed.records.iter().map(<[u8]>::len).max().unwrap_or(0);
    let count = failed.records.len();
    let message = format!(
        "{count} record(s) over the source's record limit (the largest {largest} bytes) went to the error output \
         (processing-failed) of the sinks they would have reached; each error document holds its record"
    );
    metrics.report_error(crate::error_log::ErrorEvent {
        level: crate::error_log::Level::Error,
        component: name,
        error_code: RECORD_TOO_LARGE,
        message: &message,
        attempts: None,
        key: None,
    });
    if let Some(source) = metrics.sources.get(index) {
        source.count(RECORDS_TOO_LARGE, count as u64);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::record::Origin;

    /// Records over the limit leave in order with why; the rest stay in order with their origins,
    /// partition keys and what the source said of them; a batch within the limit is untouched.
    #[test]
    fn records_over_the_limit_are_split_off_and_the_rest_keep_what_they_carry() {
        let keys: crate::record::PartitionKeys = Arc::from(vec![("account".to_string(), "1".to_string())]);
        let mut batch = RecordBatch::with_capacity(1_000, 0);
        batch.describe_source(vec![("sourceKinesisStreamArn".into(), "\"arn\"".into())], "kinesisRecordMetadata");
        for (i, record) in [&b"ab"[..], b"toolong", b"sixsix", b"longer!!", b"e"].into_iter().enumerate() {
            let origin = Origin { log: 7, seq: 3, index: i as u32, replay_floor: 0 };
            batch.push_carrying(record, Some(origin), (i == 2).then_some(&keys));
            batch.set_record_metadata(i, Some(format!("{{\"i\":{i}}}")));
        }
        let mut within = batch.clone();
        assert_eq!(split_off_too_large(&mut within, 8), None);
        assert_eq!(within, batch);

        let failed = split_off_too_large(&mut batch, 6).unwrap();
        assert_eq!(failed.output_type, ErrorOutputType::ProcessingFailed);
        assert_eq!(failed.records.iter().collect::<Vec<_>>(), [&b"toolong"[..], b"longer!!"]);
        assert_eq!(failed.records.arrival_ms, 1_000);
        assert!(failed.failures.iter().all(|f| &*f.code == RECORD_TOO_LARGE && f.attempts == 1));
        assert_eq!(&*failed.failures[1].message, "the record has 8 bytes; its source's records are at most 6");
        assert_eq!(batch.iter().collect::<Vec<_>>(), [&b"ab"[..], b"sixsix", b"e"]);
        assert_eq!(batch.arrival_ms, 1_000);
        let origins: Vec<u32> = (0..3).map(|i| batch.origin(i).unwrap().index).collect();
        assert_eq!(origins, [0, 2, 4]);
        assert_eq!(
            (batch.partition_keys(0), batch.partition_keys(1), batch.partition_keys(2)),
            (None, Some(&keys), None)
        );
        let said: Vec<Option<&str>> = (0..3).map(|i| batch.record_metadata(i)).collect();
        assert_eq!(said, [Some("{\"i\":0}"), Some("{\"i\":2}"), Some("{\"i\":4}")]);
        assert_eq!(batch.source_metadata().unwrap().record_member, "kinesisRecordMetadata");
    }
}

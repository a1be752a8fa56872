//! The partition operator: `stream.partition(...)` finds each record's partition key values for a
//! partitioned sink and sends every partition to one worker (a timely exchange), so each partition
//! is buffered by exactly one worker.
//!
//! With `deaggregation`, a record is first split into the records it holds (a record that cannot
//! be split goes to `partitioning-failed` whole). Guarantees: each record either goes on with its key values attached (in the order of the
//! prefix's partition keys) to the worker its values hash to, or goes to the sink's error output as
//! `partitioning-failed` with the reason (the query failed or gave a non-object, a key is missing,
//! a value has `/` or a control character, the prefix would be unusable or over 512 characters,
//! or the key longer than the sink's store holds);
//! failed records and source backups stay on their worker. Nothing is held across activations, so
//! epochs pass through unchanged. A batch bound for a worker of this process counts its bytes in
//! the in-flight budget until that worker takes it in (a [`super::BudgetClaim`]), so a worker that
//! owns the busiest partitions pauses the sources instead of letting the others' records pile up
//! in its channel.

use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use timely::container::CapacityContainerBuilder;
use timely::dataflow::Stream;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::Exchange;
use timely::dataflow::operators::generic::Operator;

use super::{Epoch, ExchangeBudget};
use crate::config::{Partitioning, SinkPlan};
use crate::contract::{KeyQueryError, KeyQueryWorker, put_key_value};
use crate::error_output::ErrorOutputType;
use crate::metrics::PipelineMetrics;
use crate::record::{FailedRecords, PartitionKeys, RecordBatch, RecordFailure, Records};

/// Extension trait for the partition operator.
pub trait PartitionRecords<'scope> {
    /// Partitions the stream for `sink` (number `index`) by `partitioning` and exchanges it.
    fn partition(
        self,
        sink: &SinkPlan,
        index: usize,
        partitioning: Arc<Partitioning>,
        metrics: Arc<PipelineMetrics>,
        exchange: ExchangeBudget,
    ) -> Stream<'scope, Epoch, Vec<Records>>;
}

/// A partition met: its keys, the worker that buffers it, and its number in the batch that last
/// met it; or why its key values cannot name objects.
type Partition = Result<Known, Arc<str>>;

/// A record's partition key values, in the prefix's order, as bytes (checked to be UTF-8 once per
/// partition, when it is first met).
type KeyValues = Vec<Vec<u8>>;

/// A partition whose key values were checked.
struct Known {
    keys: PartitionKeys,
    worker: u32,
    /// The batch that last met it, and its number there.
    batch: u64,
    id: u32,
}

/// Distinct key values remembered between batches (then forgotten all at once): enough for
/// Firehose-like partition counts, bounded with any number.
const MAX_INTERNED: usize = 16_384;

/// The error code of a record whose partition keys cannot be found or used.
const METADATA_EXTRACTION_FAILED: &str = "DynamicPartitioning.MetadataExtractionFailed";

/// The worker-independent route of a partition: a hash of its key values.
fn route(keys: &PartitionKeys) -> u64 {
    let mut hasher = rustc_hash::FxHasher::default();
    keys.hash(&mut hasher);
    hasher.finish()
}

impl<'scope> PartitionRecords<'scope> for Stream<'scope, Epoch, Vec<Records>> {
    fn partition(
        self,
        sink: &SinkPlan,
        index: usize,
        partitioning: Arc<Partitioning>,
        metrics: Arc<PipelineMetrics>,
        exchange: ExchangeBudget,
    ) -> Stream<'scope, Epoch, Vec<Records>> {
        let worker = self.scope().index() as u64;
        let peers = self.scope().peers() as u64;
        let (sink_name, settings) = (sink.name.clone(), Arc::clone(&sink.settings));
        let key_limits = sink.sink.key_limits();
        let keyed = self.unary::<CapacityContainerBuilder<Vec<Records>>, _, _, _>(
            Pipeline,
            &format!("Partition({sink_name})"),
            move |_, _| {
                let mut query: Option<Box<dyn KeyQueryWorker>> = None;
                if let Some(q) = &partitioning.query {
                    let wanted: Vec<String> =
                        partitioning.keys.iter().filter(|k| !k.from_lambda).map(|k| k.name.clone()).collect();
                    match q.open(&wanted) {
                        Ok(w) => query = Some(w),
                        Err(e) => {
                            let _ = metrics
                                .fatal
                                .set(format!("sink `{sink_name}`: the partitioning query cannot start: {e}"));
                        }
                    }
                }
                let mut from_query: Vec<Vec<u8>> = Vec::new();
                let mut values: KeyValues = Vec::new();
                // The values as one byte string (each after its length): one hash and one
                // comparison per record, not one per value (those were 2 % of the partition
                // bench's CPU).
                let mut flat: Vec<u8> = Vec::new();
                // Key values met recently (as `flat`): checked once (UTF-8 included), their keys
                // shared by all their records.
                let mut interned: rustc_hash::FxHashMap<u64, Vec<(Vec<u8>, Partition)>> =
                    rustc_hash::FxHashMap::default();
                let mut batch_number = 0u64;
                let extension = settings.format.extension();
                move |input, output| {
                    input.for_each(|cap, data| {
                        let mut session = output.session(&cap);
                        for records in data.drain(..) {
                            let batch = match records {
                                Records::Deliver(batch) => batch,
                                other => {
                                    session.give(other);
                                    continue;
                                }
                            };
                            let mut failed = FailedRecords::new(ErrorOutputType::PartitioningFailed, batch.arrival_ms);
                            // (worker, partition, record): sorted, one batch per worker, grouped
                            // by partition, records in arrival order within a partition.
                            let mut routed: Vec<(u32, u32, &[u8], u32)> = Vec::with_capacity(batch.len());
                            let mut partitions: Vec<PartitionKeys> = Vec::new();
                            batch_number += 1;
                            let mut pieces: Vec<&[u8]> = Vec::new();
                            // `JQProcessing.Duration`: two clock reads per batch, not per record.
                            let started = query.is_some().then(std::time::Instant::now);
                            for (i, whole) in batch.iter().enumerate() {
                                pieces.clear();
                                let split = match &partitioning.deaggregation {
                                    Some(d) => d.split(whole, &mut pieces),
                                    None => {
                                        pieces.push(whole);
                                        Ok(())
                                    }
                                };
                                if let Err(reason) = split {
                                    failed.push(
                                        whole,
                                        RecordFailure::local("DynamicPartitioning.DeAggregationFailed", reason),
                                    );
                                    continue;
                                }
                                for &record in &pieces {
                                    let found_values = key_values(
                                        &partitioning.keys,
                                        query.as_deref_mut(),
                                        record,
                                        batch.partition_keys(i),
                                        &mut from_query,
                                        &mut values,
                                    );
                                    if let Err(reason) = found_values {
                                        failed.push(record, RecordFailure::local(METADATA_EXTRACTION_FAILED, reason));
                                        continue;
                                    }
                                    // One hash of the values finds their partition (and
                                    // whether this batch met it already).
                                    flat.clear();
                                    for value in &values {
                                        flat.extend_from_slice(&(value.len() as u64).to_le_bytes());
                                        flat.extend_from_slice(value);
                                    }
                                    let mut hasher = rustc_hash::FxHasher::default();
                                    hasher.write(&flat);
                                    let hash = hasher.finish();
                                    // Forgetting is safe mid-batch: a partition met again gets
                                    // new, equal keys (the buffer operator compares values).
                                    if interned.len() >= MAX_INTERNED && !interned.contains_key(&hash) {
                                        interned.clear();
                                    }
                                    let bucket = interned.entry(hash).or_default();
                                    let slot = match bucket.iter().position(|(v, _)| *v == flat) {
                                        Some(slot) => slot,
                                        None => {
                                            // Bytes that are not UTF-8 become U+FFFD, as jq reads them.
                                            let text: Vec<String> = values
                                                .iter()
                                                .map(|v| String::from_utf8_lossy(v).into_owned())
                                                .collect();
                                            let partition = settings
                                                .keys
                                                .check_partition(&text, key_limits, &extension)
                                                .map_err(Arc::from)
                                                .map(|()| {
                                                    let pairs: Vec<(String, String)> = partitioning
                                                        .keys
                                                        .iter()
                                                        .zip(text)
                                                        .map(|(k, v)| (k.name.clone(), v))
                                                        .collect();
                                                    let keys: PartitionKeys = Arc::from(pairs);
                                                    let worker = (route(&keys) % peers) as u32;
                                                    Known { keys, worker, batch: u64::MAX, id: 0 }
                                                });
                                            bucket.push((flat.clone(), partition));
                                            bucket.len() - 1
                                        }
                                    };
                                    match &mut bucket[slot].1 {
                                        Ok(known) => {
                                            if known.batch != batch_number {
                                                known.batch = batch_number;
                                                known.id = partitions.len() as u32;
                                                partitions.push(Arc::clone(&known.keys));
                                            }
                                            routed.push((known.worker, known.id, record, i as u32));
                                        }
                                        Err(reason) => failed.push(
                                            record,
                                            RecordFailure::local(METADATA_EXTRACTION_FAILED, Arc::clone(reason)),
                                        ),
                                    }
                                }
                            }
                            if let Some(started) = started {
                                metrics.sinks[index].jq_processing.observe(started.elapsed());
                            }
                            if !failed.records.is_empty() {
                                metrics.sinks[index]
                                    .partitioning_failed
                                    .fetch_add(failed.records.len() as u64, Relaxed);
                                session.give(Records::Failed(failed));
                            }
                            let routed = grouped(routed, partitions.len());
                            let mut bytes_per_worker = vec![0usize; peers as usize];
                            for (worker, _, record, _) in &routed {
                                if let Some(b) = bytes_per_worker.get_mut(*worker as usize) {
                                    *b += record.len();
                                }
                            }
                            let mut routed = routed.into_iter().peekable();
                            while let Some(&(worker, _, _, _)) = routed.peek() {
                                let bytes = bytes_per_worker.get(worker as usize).copied().unwrap_or(0);
                                let mut out = RecordBatch::with_capacity(batch.arrival_ms, bytes);
                                while let Some((_, id, record, from)) = routed.next_if(|r| r.0 == worker) {
                                    out.push_carrying(record, batch.origin(from as usize), partitions.get(id as usize));
                                }
                                out.claim_budget(&exchange, worker as usize);
                                session.give(Records::Deliver(out));
                            }
                        }
                    });
                }
            },
        );
        // A keyed batch holds the partitions of one worker: it goes there; the rest stays.
        keyed.exchange(move |records| match records {
            Records::Deliver(b) => b.partition_keys(0).map_or(worker, route),
            _ => worker,
        })
    }
}

/// `routed` (worker, partition, record, index) grouped by worker, then partition, records in
/// their order within a partition: a counting sort, partitions being numbered `0..partitions` in
/// the order the batch met them (a comparison sort of every record was 1 % of a partitioned
/// pipeline's CPU).
fn grouped<T: Copy>(routed: Vec<(u32, u32, T, u32)>, partitions: usize) -> Vec<(u32, u32, T, u32)> {
    let Some(&first) = routed.first() else { return routed };
    let mut workers = vec![0u32; partitions];
    let mut counts = vec![0usize; partitions];
    for &(worker, id, _, _) in &routed {
        workers[id as usize] = worker;
        counts[id as usize] += 1;
    }
    let mut order: Vec<u32> = (0..partitions as u32).collect();
    order.sort_by_key(|&id| (workers[id as usize], id));
    // Each partition's first place in the output, then the next free one.
    let mut next = vec![0usize; partitions];
    let mut place = 0;
    for &id in &order {
        next[id as usize] = place;
        place += counts[id as usize];
    }
    let mut out = vec![first; routed.len()];
    for entry in routed {
        let slot = &mut next[entry.1 as usize];
        out[*slot] = entry;
        *slot += 1;
    }
    out
}

/// The values of `keys` for `record` into `values`: from the query's answer or the record's
/// Lambda-supplied keys. With only query keys the query fills `values` itself; mixed with Lambda
/// keys, its answers (in the order of the query keys among `keys`) go through `from_query`.
fn key_values(
    keys: &[crate::keys::PartitionKeyRef],
    query: Option<&mut (dyn KeyQueryWorker + '_)>,
    record: &[u8],
    lambda: Option<&PartitionKeys>,
    from_query: &mut Vec<Vec<u8>>,
    values: &mut Vec<Vec<u8>>,
) -> Result<(), String> {
    let from_lambda = keys.iter().filter(|k| k.from_lambda).count();
    match query {
        Some(q) if from_lambda == 0 && !keys.is_empty() => return q.values(record, values).map_err(|e| e.to_string()),
        Some(q) if from_lambda < keys.len() => q.values(record, from_query).map_err(|e| e.to_string())?,
        _ => from_query.clear(),
    }
    // The buffers of `values` are reused: no allocation per record.
    values.truncate(keys.len());
    let mut answers = from_query.iter();
    for (slot, key) in keys.iter().enumerate() {
        let value = if key.from_lambda {
            lambda
                .and_then(|l| l.iter().find(|(n, _)| *n == key.name))
                .map(|(_, v)| v.as_bytes())
                .ok_or_else(|| format!("the record has no partition key `{}` from a lambda transform", key.name))?
        } else {
            answers.next().map(Vec::as_slice).ok_or_else(|| KeyQueryError::MissingKey(key.name.clone()).to_string())?
        };
        put_key_value(values, slot, value);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::grouped;

    proptest! {
        /// The counting sort orders as a stable sort by (worker, partition) does.
        #[test]
        fn grouping_is_a_stable_sort_by_worker_and_partition(ids in proptest::collection::vec(0u32..12, 0..200), seed in 0u32..7) {
            // A partition's worker is a function of the partition.
            let routed: Vec<(u32, u32, usize, u32)> =
                ids.iter().enumerate().map(|(i, &id)| ((id * 7 + seed) % 3, id, i, i as u32)).collect();
            let partitions = ids.iter().max().map_or(0, |m| *m as usize + 1);
            let mut expected = routed.clone();
            expected.sort_by_key(|&(worker, id, _, _)| (worker, id));
            prop_assert_eq!(grouped(routed, partitions), expected);
        }
    }
}

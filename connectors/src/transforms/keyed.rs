//! Keyed state across workers, on differential dataflow: what the `enrich` transform's reference
//! tables and the `dedup` transform share (ARCHITECTURE.md: "Where transform state lives").
//!
//! A key has one owner among the workers ([`owner`], the same function on every worker, for
//! records and for state updates alike). Records are split by their keys' owners and exchanged
//! ([`exchange_by_key`]); state updates are differences `((key, value), time, diff)` arranged by key
//! on the owner ([`arrange_owned`]: a differential-dataflow trace that each worker holds its share
//! of and that compacts as the frontier moves). An owner reads its trace **as of** a record's epoch
//! ([`read_as_of`]): the values whose differences up to and including that epoch add up to a
//! positive count, once the trace's frontier has passed the epoch, so a record sees the state as it
//! was at its epoch whatever the number of workers and however late it is looked up.

use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use differential_dataflow::ExchangeData;
use differential_dataflow::operators::arrange::{Arranged, TraceAgent};
use differential_dataflow::trace::TraceReader;
use differential_dataflow::trace::cursor::{Cursor, cursor_list};
use differential_dataflow::trace::implementations::{ValBatcher, ValSpine};
use serde::{Deserialize, Serialize};
use sluice_engine::error_output::ErrorOutputType;
use sluice_engine::metrics::TransformMetrics;
use sluice_engine::operators::{BudgetClaim, Epoch, ExchangeBudget};
use sluice_engine::record::{FailedRecords, RecordBatch, RecordFailure, Records};
use timely::container::CapacityContainerBuilder;
use timely::dataflow::Stream;
use timely::dataflow::channels::pact::{Exchange, Pipeline};
use timely::dataflow::operators::Exchange as _;
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::operators::{Capability, InputCapability};
use timely::progress::Antichain;

/// A trace of `(key, value)` with epochs as times and counts as differences.
pub type KeyedTrace<K, V> = TraceAgent<ValSpine<K, V, Epoch, isize>>;

/// One difference to keyed state: `((key, value), epoch, +1 | -1)`.
pub type Update<K, V> = ((K, V), Epoch, isize);

/// The worker (of `peers`) that owns `key`.
pub fn owner<K: Hash + ?Sized>(key: &K, peers: usize) -> u64 {
    let mut hasher = rustc_hash::FxHasher::default();
    key.hash(&mut hasher);
    // Fx's low bits are weak: fold the high half in before taking the remainder.
    let hash = hasher.finish();
    (hash ^ (hash >> 32)) % peers.max(1) as u64
}

/// Records on their way to the owner of their keys: a batch and each record's key (`None`: the
/// record has none, and is passed on where it is). Failed records and backups travel with no keys.
/// Sent to a worker of this process, its bytes count in the in-flight budget until the receiving
/// stage lets the records go ([`Held`]); a copy, or one from another process, counts nothing.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Keyed<K> {
    /// The records.
    pub records: Records,
    /// Per record of a `Deliver` batch, its key.
    pub keys: Vec<Option<K>>,
    #[serde(skip)]
    claim: BudgetClaim,
}

impl<K> Keyed<K> {
    /// `records` with their `keys`, sent to worker `to`: counted in `exchange`'s budget when `to`
    /// is a worker of this process.
    fn sent(records: Records, keys: Vec<Option<K>>, exchange: &ExchangeBudget, to: u64) -> Self {
        let bytes = match &records {
            Records::Deliver(batch) | Records::Backup(batch) => batch.byte_len() as u64,
            Records::Failed(failed) => failed.records.iter().map(|r| r.len() as u64).sum(),
        };
        Keyed { records, keys, claim: exchange.claim(to as usize, bytes) }
    }
}

/// Splits every batch by the owners of its records' keys (`key_of`, called once per record on
/// this worker) and sends each part to its owner. Records without a key, failed records and
/// backups stay on this worker; a record whose key cannot be found (`key_of`'s error) goes to
/// `processing-failed` with `failure_code` and the reason. With `counters`, records in and failed
/// are counted here. Nothing is held: epochs pass through unchanged. What it sends to a worker of
/// this process is counted in the in-flight budget until the receiving stage lets it go ([`Keyed`],
/// [`Held`]): records queued for another worker count, so sources wait instead of piling records up
/// in the exchange.
pub fn exchange_by_key<'scope, K>(
    records: Stream<'scope, Epoch, Vec<Records>>,
    name: &str,
    failure_code: &'static str,
    counters: Option<Arc<TransformMetrics>>,
    budget: ExchangeBudget,
    mut key_of: impl FnMut(&[u8]) -> Result<Option<K>, String> + 'static,
) -> Stream<'scope, Epoch, Vec<(u64, Keyed<K>)>>
where
    K: Hash + Clone + Serialize + for<'a> Deserialize<'a> + Send + 'static,
{
    let worker = records.scope().index() as u64;
    let peers = records.scope().peers();
    records
        .unary::<CapacityContainerBuilder<Vec<(u64, Keyed<K>)>>, _, _, _>(
            Pipeline,
            &format!("KeyBy({name})"),
            move |_, _| {
                move |input, output| {
                    input.for_each(|cap, data| {
                        let mut session = output.session(&cap);
                        for records in data.drain(..) {
                            let batch = match records {
                                Records::Deliver(batch) => batch,
                                other => {
                                    session.give((worker, Keyed::sent(other, Vec::new(), &budget, worker)));
                                    continue;
                                }
                            };
                            let mut failed = FailedRecords::new(ErrorOutputType::ProcessingFailed, batch.arrival_ms);
                            let mut routed: Vec<(u64, usize, Option<K>)> = Vec::with_capacity(batch.len());
                            for (i, record) in batch.iter().enumerate() {
                                match key_of(record) {
                                    Ok(key) => {
                                        let to = key.as_ref().map_or(worker, |k| owner(k, peers));
                                        routed.push((to, i, key));
                                    }
                                    Err(reason) => failed.push(record, RecordFailure::local(failure_code, reason)),
                                }
                            }
                            if let Some(counters) = &counters {
                                counters.records_in.fetch_add(batch.len() as u64, Relaxed);
                                counters.count_failed(&failed);
                            }
                            if !failed.records.is_empty() {
                                let keyed = Keyed::sent(Records::Failed(failed), Vec::new(), &budget, worker);
                                session.give((worker, keyed));
                            }
                            if routed.len() == batch.len() && routed.iter().all(|(to, _, _)| *to == worker) {
                                let keys = routed.into_iter().map(|(_, _, k)| k).collect();
                                session.give((worker, Keyed::sent(Records::Deliver(batch), keys, &budget, worker)));
                                continue;
                            }
                            routed.sort_by_key(|(to, i, _)| (*to, *i));
                            let mut routed = routed.into_iter().peekable();
                            while let Some(&(to, _, _)) = routed.peek() {
                                let mut part = RecordBatch::with_capacity(batch.arrival_ms, 0);
                                let mut keys = Vec::new();
                                while let Some((_, i, key)) = routed.next_if(|r| r.0 == to) {
                                    let record = batch.range(i..i + 1).next().unwrap_or_default();
                                    part.push_carrying(record, batch.origin(i), batch.partition_keys(i));
                                    keys.push(key);
                                }
                                session.give((to, Keyed::sent(Records::Deliver(part), keys, &budget, to)));
                            }
                        }
                    });
                }
            },
        )
        .exchange(|(to, _)| *to)
}

/// Arranges `updates` by key on the keys' owners: each worker's trace holds its share.
pub fn arrange_owned<'scope, K, V>(
    updates: Stream<'scope, Epoch, Vec<Update<K, V>>>,
    name: &str,
) -> Arranged<'scope, KeyedTrace<K, V>>
where
    K: ExchangeData + Hash,
    V: ExchangeData,
{
    let peers = updates.scope().peers();
    differential_dataflow::operators::arrange::arrangement::arrange_core::<_, _, ValBatcher<K, V, Epoch, isize>, _>(
        updates,
        Exchange::new(move |((key, _), _, _): &Update<K, V>| owner(key, peers)),
        name,
        ValBatcher::new,
    )
}

/// Whether `trace` is complete through `epoch` (no update at or before it can still arrive).
pub fn complete_through(frontier: &[Epoch], epoch: Epoch) -> bool {
    frontier.iter().all(|&f| f > epoch)
}

/// For each `(key, tag)` of `keys` (distinct and sorted by key, as [`distinct`] makes them), calls
/// `found(tag, value)` with the values whose count at epochs up to and including `at` is
/// positive, smallest first, until it answers `false`; keys with none are skipped. The trace must
/// be complete through `at` ([`complete_through`]).
pub fn read_as_of<K, V>(
    trace: &mut KeyedTrace<K, V>,
    keys: &[(K, usize)],
    at: Epoch,
    mut found: impl FnMut(usize, &V) -> bool,
) where
    K: ExchangeData,
    V: ExchangeData,
{
    let mut upper = Antichain::new();
    trace.read_upper(&mut upper);
    let Some(batches) = trace.batches_through(upper.borrow()) else { return };
    let (mut cursor, storage) = cursor_list(batches);
    for (key, tag) in keys {
        cursor.seek_key(&storage, key);
        if cursor.get_key(&storage) != Some(key) {
            continue;
        }
        while let Some(value) = cursor.get_val(&storage) {
            let mut count = 0isize;
            cursor.map_times(&storage, |time, diff| {
                if *time <= at {
                    count += *diff;
                }
            });
            if count > 0 && !found(*tag, value) {
                break;
            }
            cursor.step_val(&storage);
        }
    }
}

/// The distinct keys of a batch's records, sorted and tagged with their place in the answer (what
/// [`read_as_of`] reads, each key once), and for each record the place of its key.
pub fn distinct<K: Ord>(keys: Vec<Option<K>>) -> (Vec<(K, usize)>, Vec<Option<usize>>) {
    let mut at = vec![None; keys.len()];
    let mut sorted: Vec<(K, usize)> = keys.into_iter().enumerate().filter_map(|(i, k)| Some((k?, i))).collect();
    sorted.sort_unstable();
    let mut distinct: Vec<(K, usize)> = Vec::with_capacity(sorted.len());
    for (key, record) in sorted {
        if distinct.last().is_none_or(|(last, _)| *last != key) {
            distinct.push((key, distinct.len()));
        }
        at[record] = Some(distinct.len() - 1);
    }
    (distinct, at)
}

/// The records a keyed stage holds until its state is complete through their epoch, by epoch, each
/// epoch with its capability (the delivered frontier waits for them). Their bytes were counted in
/// the in-flight budget by [`exchange_by_key`]; they leave it when they go on.
pub struct Held<K> {
    by_epoch: BTreeMap<Epoch, (Capability<Epoch>, Vec<Keyed<K>>)>,
}

impl<K> Default for Held<K> {
    fn default() -> Self {
        Held { by_epoch: BTreeMap::new() }
    }
}

impl<K> Held<K> {
    /// Nothing held yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Holds `keyed`, which arrived with `cap`.
    pub fn hold(&mut self, cap: &InputCapability<Epoch>, keyed: Keyed<K>) {
        let Some(&time) = cap.least() else { return };
        match self.by_epoch.get_mut(&time) {
            Some((_, held)) => held.push(keyed),
            None => {
                if let Some(capability) = cap.retain_least(0) {
                    self.by_epoch.insert(time, (capability, vec![keyed]));
                }
            }
        }
    }

    /// Lets `keyed` go on at once: its records.
    pub fn pass(&self, mut keyed: Keyed<K>) -> Records {
        keyed.claim.release();
        keyed.records
    }

    /// The oldest epoch held, with its capability and records, when the state is complete through
    /// it (`state` is the state's frontier).
    pub fn next_complete(&mut self, state: &[Epoch]) -> Option<(Epoch, Capability<Epoch>, Vec<Keyed<K>>)> {
        let (&epoch, _) = self.by_epoch.first_key_value()?;
        if !complete_through(state, epoch) {
            return None;
        }
        let (capability, mut records) = self.by_epoch.remove(&epoch)?;
        records.iter_mut().for_each(|keyed| keyed.claim.release());
        Some((epoch, capability, records))
    }

    /// The oldest epoch a record may still be answered at: the oldest held, or the oldest still to
    /// come (`records` is the records' frontier); `None` when neither.
    pub fn oldest(&self, records: &[Epoch]) -> Option<Epoch> {
        self.by_epoch.keys().next().copied().into_iter().chain(records.iter().copied()).min()
    }
}

/// Lets `trace` forget distinctions between epochs before `through` (no read will ask for one)
/// and merge its batches up to there.
pub fn compact<K, V>(trace: &mut KeyedTrace<K, V>, through: Epoch)
where
    K: ExchangeData,
    V: ExchangeData,
{
    let frontier = [through];
    trace.set_logical_compaction(timely::progress::frontier::AntichainRef::new(&frontier));
    trace.set_physical_compaction(timely::progress::frontier::AntichainRef::new(&frontier));
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_engine::operators::InflightBudget;

    /// Records sent to a worker of this process count until the receiving stage lets them go;
    /// records sent to another process, and what arrives from one, count nothing here (the budget
    /// of the process that receives them never counted them).
    #[test]
    fn keyed_records_count_in_the_budget_only_within_the_process() {
        let budget = InflightBudget::new(1 << 20);
        // This process runs workers 0 and 1 of four.
        let exchange = ExchangeBudget { inflight: Arc::clone(&budget), local_workers: 0..2 };
        let batch = |text: &[u8]| {
            let mut batch = RecordBatch::with_capacity(0, 0);
            batch.push(text);
            Records::Deliver(batch)
        };
        let remote = Keyed::sent(batch(b"to another process"), vec![Some(1u64)], &exchange, 3);
        assert_eq!(budget.held(), 0);
        let local = Keyed::sent(batch(b"to worker one"), vec![Some(2u64)], &exchange, 1);
        assert_eq!(budget.held(), 13);
        // As another process would receive it: nothing to release there.
        let text = serde_json::to_string(&local).unwrap_or_else(|e| panic!("{e}"));
        let arrived: Keyed<u64> = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((arrived.claim.bytes(), local.clone().claim.bytes()), (0, 0));
        drop((remote, arrived));
        assert_eq!(budget.held(), 13);
        // The receiving stage lets it go: released once.
        let records = Held::<u64>::new().pass(local);
        assert_eq!((budget.held(), records.len()), (0, 1));
    }
}

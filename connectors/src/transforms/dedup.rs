//! `type = "dedup"`: drops records whose key was seen within a window, with the keys kept as a
//! differential-dataflow collection partitioned by key across workers (issue 17; beyond Firehose,
//! which has no de-duplication; Vector's `dedup` keeps an LRU cache per process).
//!
//! ```toml
//! [transforms.once]
//! type = "dedup"
//! inputs = ["api"]
//! key = ".eventID"          # jq expression (default: the whole record's bytes)
//! window_s = 600            # a key seen again within this many seconds of arrival is dropped
//! max_keys = 10000000       # bound on remembered keys per pipeline; beyond it the oldest windows are forgotten early
//! ```
//!
//! **What is dropped.** Time is the dataflow's epoch (one a second). A record whose key was *kept*
//! at epoch `e` makes the key present from epoch `e + 1` until its window ends: windows end on
//! multiples of `window_s / 16` (at least one epoch), the first one at least `window_s` epochs
//! after `e`. A record whose key is present is dropped; among records of one epoch with the same
//! key (from any worker), the first to reach the key's owner is kept (within one batch, the
//! earliest to arrive, then the smallest) and the others are dropped. So a duplicate within
//! `window_s` seconds of the record kept is always dropped, one more than `window_s + window_s / 16`
//! seconds later is always kept, and the keys kept are the same at any number of workers for the
//! same epochs. Records are decided as they come: a record of the records' current epoch needs
//! only the earlier epochs' keys, which are complete (only records of a worker ahead of the
//! others by an epoch wait for them). Dropped duplicates are
//! counted (`DuplicatesDropped{window_s}` and the transform's `dropped`), never written anywhere.
//!
//! **The key** is the first output of the `key` query, as compact JSON, or the record's bytes;
//! 128 bits of two independent hashes of it are kept (a false match is about as likely as
//! 2⁻¹²⁸ per pair). A record the query fails on goes to `processing-failed`
//! (`Dedup.KeyFailed`); a record it gives no output for passes, never de-duplicated.
//!
//! **State** is a collection of `(key, end of its window)` arranged by key on the worker that owns
//! each key (records are exchanged to their key's owner, [`super::keyed`]): a kept key is a `+1`
//! an epoch later; a lookup counts only windows that have not ended; a window that ended is
//! retracted (`-1`) as soon as no decision can come before its end, and the trace compacts it
//! away, so nothing is written at future epochs and nothing waits in the arrangement's batcher. A
//! record is decided once the collection is complete through its epoch, reading it as of that
//! epoch, and against the keys its epoch kept so far. Each worker remembers the keys of its
//! windows to retract them: past `max_keys / workers` keys it retracts its oldest windows whole,
//! then the oldest keys of the next (`DedupKeysForgotten`), so memory
//! stays flat under any number of distinct keys. `TransformKeysHeld` is the keys remembered. State is
//! in memory: after a restart the window starts empty, and a record the write-ahead log replays
//! may be delivered again.
//!
//! Guarantees kept: a record is held with its epoch's capability until decided; failed records
//! and backups pass on at once.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::hash::{BuildHasher, Hasher};
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use serde::Deserialize;
use sluice_engine::config::{ConnectorConfig, Diagnostic, Problems};
use sluice_engine::contract::{
    DataflowTransform, PassThrough, StageContext, Transform, TransformContext, TransformError, TransformWorker,
};
use sluice_engine::operators::Epoch;
use sluice_engine::record::{RecordBatch, Records};
use timely::container::CapacityContainerBuilder;
use timely::dataflow::Stream;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::operators::generic::operator::source;
use timely::scheduling::Activator;

use super::jq::ValueQuery;
use super::keyed::{self, Held, Keyed, Update};
use sluice_engine::metrics::Family;

/// Records dropped as repeats, by window.
const DUPLICATES_DROPPED: Family = Family {
    name: "DuplicatesDropped",
    help: "Records dropped as repeats of a key seen within the window, by window.",
};
/// Keys forgotten before their window ended to stay within `max_keys`, by window.
const KEYS_FORGOTTEN: Family = Family {
    name: "DedupKeysForgotten",
    help: "Keys forgotten before their window ended, to stay within max_keys, by window.",
};

/// A key: two independent 64-bit hashes of its bytes.
type Key = u128;

/// The error code of a record whose key query failed.
const KEY_FAILED: &str = "Dedup.KeyFailed";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DedupConfig {
    key: Option<String>,
    #[serde(default = "default_window_s")]
    window_s: u64,
    #[serde(default = "default_max_keys")]
    max_keys: u64,
}

fn default_window_s() -> u64 {
    600
}

fn default_max_keys() -> u64 {
    10_000_000
}

/// A configured dedup transform.
pub struct DedupTransform {
    key: Option<Arc<ValueQuery>>,
    window_s: u64,
    max_keys: u64,
}

/// Builds the transform from `[transforms.<name>]`.
pub fn configure(config: ConnectorConfig) -> Result<Arc<dyn Transform>, Problems> {
    let span = config.table.span.clone();
    let spans = |key: &str| config.table.value_span(key).unwrap_or(span.clone());
    let (key_span, max_span) = (spans("key"), spans("max_keys"));
    let window_at = config.table.key_at("window_s");
    let mut problems = Problems::default();
    let Some(c) = config.table.deserialize::<DedupConfig>(&mut problems) else { return Err(problems) };
    let key = match &c.key {
        Some(query) => problems.take(ValueQuery::new(query).map(|q| Some(Arc::new(q))).map_err(|(offset, message)| {
            Diagnostic::in_string(key_span, offset, format!("the key query does not compile: {message}"))
                .with_hint("a jq expression giving the key, e.g. key = '.eventID' or key = '[.requestID, .eventName]'")
        })),
        None => Some(None),
    };
    problems.take(window_at.within(
        Some(c.window_s),
        default_window_s(),
        1..=7 * 24 * 3600,
        "seconds a key is remembered, at most a week (default 600)",
    ));
    if c.max_keys == 0 {
        problems.push(
            Diagnostic::new(max_span, "max_keys = 0 would remember nothing")
                .with_hint("the keys to remember across all workers, e.g. max_keys = 10000000"),
        );
    }
    let key = problems.finish(key)?;
    Ok(Arc::new(DedupTransform { key, window_s: c.window_s, max_keys: c.max_keys }))
}

impl Transform for DedupTransform {
    fn describe(&self) -> String {
        let key = self.key.as_ref().map_or("the whole record", |k| k.describe());
        format!("dedup: {key} within {} s, at most {} keys", self.window_s, self.max_keys)
    }

    fn open(&self, _context: &TransformContext) -> Result<Box<dyn TransformWorker>, TransformError> {
        Ok(Box::new(PassThrough))
    }

    fn dataflow(&self) -> Option<&dyn DataflowTransform> {
        Some(self)
    }
}

/// The two hashes of a key's bytes.
fn key_of(bytes: &[u8]) -> Key {
    let low = rustc_hash::FxBuildHasher.hash_one(bytes);
    let mut high = std::hash::DefaultHasher::new();
    high.write(bytes);
    (u128::from(high.finish()) << 64) | u128::from(low)
}

/// When the window of a key kept at `epoch` ends: the first multiple of the step at least
/// `window` epochs after `epoch + 1`.
fn window_end(epoch: Epoch, window: u64) -> Epoch {
    let step = (window / 16).max(1);
    (epoch + 1 + window).div_ceil(step) * step
}

/// What the decisions send to the key collection, and the epoch it may still be written at: a
/// source operator feeds them to the arrangement (a loop through shared memory on one worker, not
/// a dataflow cycle: the source's capability follows the decisions' frontier).
#[derive(Default)]
struct Feed {
    updates: Vec<Update<Key, Epoch>>,
    /// The earliest epoch an update may still carry (`None`: no more will come).
    floor: Option<Epoch>,
    /// Wakes the source.
    activator: Option<Activator>,
}

impl DataflowTransform for DedupTransform {
    fn build<'scope>(
        &self,
        records: Stream<'scope, Epoch, Vec<Records>>,
        stage: &StageContext,
    ) -> Stream<'scope, Epoch, Vec<Records>> {
        let scope = records.scope();
        let mut query = match self.key.as_ref().map(|k| k.open()).transpose() {
            Ok(query) => query,
            Err(e) => {
                stage.fail(e);
                None
            }
        };
        let counters = Some(Arc::clone(&stage.metrics));
        let keyed =
            keyed::exchange_by_key(records, "dedup", KEY_FAILED, counters, stage.budget.clone(), move |record| {
                match query.as_mut() {
                    Some(q) => Ok(q.first_value(record)?.map(key_of)),
                    None => Ok(Some(key_of(record))),
                }
            });
        let feed = Rc::new(RefCell::new(Feed { floor: Some(0), ..Feed::default() }));
        let source_feed = Rc::clone(&feed);
        let updates = source::<Epoch, CapacityContainerBuilder<Vec<Update<Key, Epoch>>>, _, _>(
            scope,
            "DedupKeys",
            move |capability, info| {
                source_feed.borrow_mut().activator = Some(scope.activator_for(info.address));
                let mut capability = Some(capability);
                move |output| {
                    let Some(cap) = capability.as_mut() else { return };
                    let mut feed = source_feed.borrow_mut();
                    let updates = std::mem::take(&mut feed.updates);
                    if !updates.is_empty() {
                        output.session(&*cap).give_iterator(updates.into_iter());
                    }
                    match feed.floor {
                        None => capability = None,
                        Some(floor) if floor > *cap.time() => cap.downgrade(&floor),
                        Some(_) => {}
                    }
                }
            },
        );
        let arranged = keyed::arrange_owned(updates, "Arrange(dedup)");
        let window = self.window_s;
        let per_worker = self.max_keys.div_ceil(scope.peers() as u64).max(1) as usize;
        let metrics = Arc::clone(&stage.metrics);
        let window_label = window.to_string();
        let mut trace = arranged.trace;
        keyed.binary_frontier::<_, CapacityContainerBuilder<Vec<Records>>, _, _, _, _>(
            arranged.stream,
            Pipeline,
            Pipeline,
            "Dedup",
            move |_, _| {
                let mut held_records = Held::new();
                // The keys kept in each window, by the epoch it ends.
                let mut windows: BTreeMap<Epoch, Vec<Key>> = BTreeMap::new();
                let mut held = 0usize;
                // Keys kept at epochs whose records may still come.
                let mut open: BTreeMap<Epoch, rustc_hash::FxHashSet<Key>> = BTreeMap::new();
                // What this worker last added to the `keys_held` gauge.
                let mut reported = 0i64;
                move |(records, records_frontier), (batches, keys_frontier), output| {
                    records.for_each(|cap, data| {
                        for (_, keyed) in data.drain(..) {
                            if matches!(keyed.records, Records::Deliver(_)) {
                                held_records.hold(&cap, keyed);
                            } else {
                                output.session(&cap).give(held_records.pass(keyed));
                            }
                        }
                    });
                    batches.for_each(|_, data| data.clear());
                    let mut feed = feed.borrow_mut();
                    // Once the keys are complete through an epoch, what earlier epochs kept is
                    // known; what this epoch kept so far is in `open` (its records may come in
                    // several rounds while the epoch is the records' current one).
                    while let Some((epoch, cap, batches)) = held_records.next_complete(&keys_frontier.frontier()) {
                        let decided = decide(&mut trace, &batches, epoch, open.entry(epoch).or_default());
                        let end = window_end(epoch, window);
                        let mut kept_keys = Vec::new();
                        let (mut kept, mut dropped) = (0u64, 0u64);
                        let mut session = output.session(&cap);
                        for (keyed, decisions) in batches.into_iter().zip(decided) {
                            let Records::Deliver(batch) = keyed.records else { continue };
                            kept_keys.extend(decisions.iter().filter_map(|d| match d {
                                Decision::First(key) => Some(*key),
                                _ => None,
                            }));
                            let duplicates = decisions.iter().filter(|d| **d == Decision::Duplicate).count();
                            dropped += duplicates as u64;
                            kept += (batch.len() - duplicates) as u64;
                            if duplicates == 0 {
                                session.give(Records::Deliver(batch));
                                continue;
                            }
                            let mut out = RecordBatch::with_capacity(batch.arrival_ms, batch.byte_len());
                            for (i, (record, decision)) in batch.iter().zip(&decisions).enumerate() {
                                if *decision != Decision::Duplicate {
                                    out.push_carrying(record, batch.origin(i), batch.partition_keys(i));
                                }
                            }
                            if !out.is_empty() {
                                session.give(Records::Deliver(out));
                            }
                        }
                        for &key in &kept_keys {
                            feed.updates.push(((key, end), epoch + 1, 1));
                        }
                        held += kept_keys.len();
                        windows.entry(end).or_default().extend(kept_keys);
                        // Past the bound, the oldest keys are forgotten from the next epoch:
                        // the oldest windows whole, and of the last one its oldest keys.
                        let mut forgotten = 0u64;
                        while held > per_worker {
                            let Some(mut window) = windows.first_entry() else { break };
                            let end = *window.key();
                            let excess = held - per_worker;
                            let keys: Vec<Key> = if excess >= window.get().len() {
                                window.remove()
                            } else {
                                window.get_mut().drain(..excess).collect()
                            };
                            for key in &keys {
                                feed.updates.push(((*key, end), epoch + 1, -1));
                            }
                            held -= keys.len();
                            forgotten += keys.len() as u64;
                        }
                        metrics.records_out.fetch_add(kept, Relaxed);
                        metrics.records_dropped.fetch_add(dropped, Relaxed);
                        if dropped > 0 {
                            metrics.count(DUPLICATES_DROPPED, "window_s", &window_label, dropped);
                        }
                        if forgotten > 0 {
                            metrics.count(KEYS_FORGOTTEN, "window_s", &window_label, forgotten);
                        }
                    }
                    // Decisions still to come are at the oldest epoch held or yet to arrive; what
                    // they send is stamped an epoch later.
                    // An epoch the records have passed is whole: its keys are in the trace.
                    let whole = records_frontier.frontier().iter().copied().min().unwrap_or(Epoch::MAX);
                    open.retain(|&epoch, _| epoch >= whole);
                    let undecided = held_records.oldest(&records_frontier.frontier());
                    let floor = undecided.map(|e| e + 1);
                    // Windows that ended are retracted as soon as no decision can be before their
                    // end (a lookup ignores an ended window anyway: retracting it is for memory).
                    if let Some(floor) = floor {
                        while let Some(entry) = windows.first_entry() {
                            if *entry.key() > floor {
                                break;
                            }
                            let end = *entry.key();
                            let keys = entry.remove();
                            held -= keys.len();
                            feed.updates.extend(keys.into_iter().map(|key| ((key, end), floor, -1)));
                        }
                    }
                    if floor != feed.floor || !feed.updates.is_empty() {
                        feed.floor = floor;
                        if let Some(activator) = &feed.activator {
                            activator.activate();
                        }
                    }
                    if let Some(e) = undecided {
                        keyed::compact(&mut trace, e);
                    }
                    metrics.keys_held.fetch_add(held as i64 - reported, Relaxed);
                    reported = held as i64;
                }
            },
        )
    }
}

/// The decision for a record: it has no key (passed, not remembered), it is the first of its key
/// (kept, its key remembered) or a duplicate (dropped).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Decision {
    NoKey,
    First(Key),
    Duplicate,
}

/// Decides the records of `batches` (all of epoch `epoch`): per batch, per record. `open` holds
/// the keys this epoch kept in earlier rounds, and takes the ones it keeps now.
fn decide(
    trace: &mut keyed::KeyedTrace<Key, Epoch>,
    batches: &[Keyed<Key>],
    epoch: Epoch,
    open: &mut rustc_hash::FxHashSet<Key>,
) -> Vec<Vec<Decision>> {
    let mut decided: Vec<Vec<Decision>> = batches.iter().map(|k| vec![Decision::NoKey; k.keys.len()]).collect();
    // Every record with a key, across the batches: (batch, record, key).
    let places: Vec<(usize, usize, Key)> = batches
        .iter()
        .enumerate()
        .flat_map(|(b, k)| k.keys.iter().enumerate().filter_map(move |(i, key)| Some((b, i, (*key)?))))
        .collect();
    let (distinct, key_of) = keyed::distinct(places.iter().map(|&(_, _, key)| Some(key)).collect());
    // As of this epoch, windows that have not ended: what earlier epochs kept (stamped an epoch
    // after their decision).
    let mut present = vec![false; distinct.len()];
    keyed::read_as_of(trace, &distinct, epoch, |d, end| {
        let live = *end > epoch;
        if live && let Some(p) = present.get_mut(d) {
            *p = true;
        }
        !live
    });
    // The first record of each key: the earliest to arrive, then the smallest.
    let order = |&(b, i, _): &(usize, usize, Key)| match &batches[b].records {
        Records::Deliver(batch) => (batch.arrival_ms, batch.range(i..i + 1).next().unwrap_or_default()),
        _ => (i64::MAX, &[][..]),
    };
    let mut first: Vec<Option<usize>> = vec![None; distinct.len()];
    for (p, d) in key_of.iter().enumerate() {
        let Some(d) = *d else { continue };
        if first[d].is_none_or(|f| order(&places[p]) < order(&places[f])) {
            first[d] = Some(p);
        }
    }
    for (p, &(b, i, key)) in places.iter().enumerate() {
        let Some(d) = key_of[p] else { continue };
        let kept = first[d] == Some(p) && !present[d] && open.insert(key);
        decided[b][i] = if kept { Decision::First(key) } else { Decision::Duplicate };
    }
    decided
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_window_ends_between_window_s_and_window_s_plus_two_steps_after_the_next_epoch() {
        for window in [1, 4, 15, 16, 600, 604_800] {
            let step = (window / 16).max(1);
            for epoch in [0, 1, 7, 1_000, 123_457] {
                let end = window_end(epoch, window);
                assert!(end > epoch + window && end <= epoch + 1 + window + step, "{epoch} {window} {end}");
                assert_eq!(end % step, 0);
            }
        }
    }
}

//! Buffering for a partitioned sink: one [`ObjectBatcher`] per open partition on this worker, within
//! a memory budget.
//!
//! Records reach it with their partition key values attached (the partition operator put them on
//! each record and sent every partition to one worker). Guarantees: each partition buffers by size
//! and interval on its own (Firehose's per-partition buffering), so its objects are named by their
//! own oldest record; the open partitions together (their bookkeeping, buffers and compressors)
//! stay within `max_open_bytes`: when a partition's records take them over it, the largest
//! partitions are sealed early until they fit; a partition that holds nothing is forgotten, so
//! memory follows the open partitions, not all partitions ever seen. Due partitions (interval,
//! end of input) are sealed within the caller's [`SealRoom`]: as many objects as its delivery queue
//! takes, about as many bytes as it wants compressed before it hands them on.
//! Failed records, source backups and records without keys go through one shared batcher to the
//! sink's error output.

use rustc_hash::FxHashMap as HashMap;
use std::sync::Arc;
use std::time::Instant;

use crate::buffer::{ObjectBatcher, SealedObject};
use crate::config::SinkSettings;
use crate::error_output::ErrorOutputType;
use crate::record::{FailedRecords, PartitionKeys, RecordBatch, RecordFailure, Records};

/// What an open partition costs besides its objects' buffers and its key strings: its batcher, its
/// map entries, its open object's encoder and its share of the run's tally (measured with heaptrack
/// at 100,000 partitions: ~420 bytes).
const PARTITION_BOOKKEEPING: u64 = 512;

/// Every open partition of one sink on one worker.
pub struct PartitionedBatchers {
    max_open_bytes: u64,
    /// Failed records, backups and records without keys; the model each partition's batcher is made from.
    shared: ObjectBatcher,
    /// Boxed: the map's table stays small however many partitions are open.
    partitions: HashMap<PartitionKeys, Box<ObjectBatcher>>,
    /// About the memory of the open partitions' objects.
    open_bytes: u64,
    /// Partitions sealed early to stay within the budget, since the last [`Self::take_counts`].
    sealed_early: u64,
    /// Records per partition written since the last [`Self::take_counts`] (for the summary).
    written: HashMap<PartitionKeys, u64>,
    /// The oldest epoch, oldest arrival and next deadline of the open objects, kept until the
    /// partitions change (the operator asks every activation; a pass over 100,000 partitions each
    /// time would cost more than the records).
    aggregates: std::cell::Cell<Option<Aggregates>>,
}

#[derive(Clone, Copy)]
struct Aggregates {
    oldest_epoch: Option<u64>,
    oldest_arrival_ms: Option<i64>,
    next_deadline: Option<Instant>,
}

/// How much one call may seal: objects the sink's delivery queue still takes, and bytes of open
/// partitions to finish (each sealed partition's last block is compressed then). The bytes bound
/// lets a worker hand its first sealed objects to the deliver operator, whose writes then overlap
/// the compression of the rest, instead of finishing hundreds of partitions before any is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SealRoom {
    /// Objects (at most one per partition).
    pub objects: usize,
    /// Bytes of open partitions; at least one partition is sealed whatever its size.
    pub bytes: u64,
}

impl SealRoom {
    /// Room for `objects` objects, however large.
    pub fn objects(objects: usize) -> Self {
        SealRoom { objects, bytes: u64::MAX }
    }

    /// Why nothing more may be sealed, if so.
    fn exhausted(&self) -> Option<Sealing> {
        if self.objects == 0 {
            Some(Sealing::QueueFull)
        } else if self.bytes == 0 {
            Some(Sealing::SliceFull)
        } else {
            None
        }
    }

    /// Counts one partition of `bytes` sealed.
    fn take(&mut self, bytes: u64) {
        self.objects -= 1;
        self.bytes = self.bytes.saturating_sub(bytes);
    }
}

/// Whether a seal call left due partitions open, and why.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sealing {
    /// Everything due is sealed.
    Done,
    /// The delivery queue is full: wait until it has room.
    QueueFull,
    /// This call's bytes are sealed: call again once the sealed objects are handed on.
    SliceFull,
}

impl std::fmt::Debug for PartitionedBatchers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PartitionedBatchers").field("open", &self.partitions.len()).finish()
    }
}

impl PartitionedBatchers {
    /// Batchers for a sink with `max_open_bytes` for its open partitions; objects are uploaded in
    /// parts of `part_bytes` when the sink takes parts.
    pub fn new(settings: Arc<SinkSettings>, max_open_bytes: u64, part_bytes: Option<usize>) -> Self {
        let mut shared = ObjectBatcher::new(settings);
        if let Some(p) = part_bytes {
            shared = shared.with_parts(p);
        }
        PartitionedBatchers {
            max_open_bytes,
            shared,
            partitions: HashMap::default(),
            open_bytes: 0,
            sealed_early: 0,
            written: HashMap::default(),
            aggregates: std::cell::Cell::new(None),
        }
    }

    /// Adds what arrived at `epoch`.
    pub fn append(
        &mut self,
        records: &Records,
        epoch: u64,
        now: Instant,
        sealed: &mut Vec<SealedObject>,
    ) -> std::io::Result<()> {
        self.aggregates.set(None);
        let Records::Deliver(batch) = records else {
            return self.shared.append_records(records, epoch, now, sealed);
        };
        // The partition operator sends each worker one batch, its records grouped by partition
        // and each partition's records sharing one set of keys: a batch is taken in runs.
        let mut start = 0;
        while start < batch.len() {
            let keys = batch.partition_keys(start).cloned();
            let same = |i: usize| match (&keys, batch.partition_keys(i)) {
                (Some(a), Some(b)) => Arc::ptr_eq(a, b) || a == b,
                (None, None) => true,
                _ => false,
            };
            let end = (start + 1..batch.len()).find(|&i| !same(i)).unwrap_or(batch.len());
            match keys {
                Some(keys) => self.append_partition(keys, batch, start..end, epoch, now, sealed)?,
                None => {
                    let mut unkeyed = FailedRecords::new(ErrorOutputType::PartitioningFailed, batch.arrival_ms);
                    for record in batch.range(start..end) {
                        unkeyed.push(
                            record,
                            RecordFailure::local(
                                "DynamicPartitioning.MissingKeys",
                                "the record reached a partitioned sink without partition keys",
                            ),
                        );
                    }
                    self.shared.append_failed(&unkeyed, epoch, now, sealed)?;
                }
            }
            start = end;
        }
        Ok(())
    }

    /// Adds the records at `run` in `batch`, of the partition `keys`, then keeps the open
    /// partitions within the budget.
    fn append_partition(
        &mut self,
        keys: PartitionKeys,
        batch: &RecordBatch,
        run: std::ops::Range<usize>,
        epoch: u64,
        now: Instant,
        sealed: &mut Vec<SealedObject>,
    ) -> std::io::Result<()> {
        *self.written.entry(Arc::clone(&keys)).or_default() += run.len() as u64;
        // A new partition was counted for nothing before.
        let (batcher, before) = match self.partitions.entry(Arc::clone(&keys)) {
            std::collections::hash_map::Entry::Occupied(o) => {
                let b = o.into_mut();
                let before = partition_bytes(b);
                (b, before)
            }
            std::collections::hash_map::Entry::Vacant(v) => {
                (v.insert(Box::new(self.shared.for_partition(Arc::clone(&keys)))), 0)
            }
        };
        batcher.append_from(batch, run, epoch, now, sealed)?;
        self.open_bytes = (self.open_bytes + partition_bytes(batcher)).saturating_sub(before);
        self.keep_within_budget(sealed)
    }

    /// Seals the largest open partitions until all of them fit in the budget, with an eighth of it
    /// to spare: one pass over the open partitions frees room for many records, not for one.
    fn keep_within_budget(&mut self, sealed: &mut Vec<SealedObject>) -> std::io::Result<()> {
        if self.open_bytes <= self.max_open_bytes {
            return Ok(());
        }
        let target = self.max_open_bytes - self.max_open_bytes / 8;
        let mut sizes: Vec<(u64, PartitionKeys)> =
            self.partitions.iter().map(|(k, b)| (partition_bytes(b), Arc::clone(k))).collect();
        sizes.sort_unstable_by_key(|s| std::cmp::Reverse(s.0));
        for (bytes, keys) in sizes {
            if self.open_bytes <= target {
                break;
            }
            if let Some(mut batcher) = self.partitions.remove(&keys) {
                batcher.seal_all(sealed)?;
            }
            self.sealed_early += 1;
            self.open_bytes = self.open_bytes.saturating_sub(bytes);
        }
        Ok(())
    }

    /// Recounts the open partitions' memory (after objects were sealed by size or age).
    fn recount(&mut self) {
        self.open_bytes = self.partitions.values().map(|b| partition_bytes(b)).sum();
    }

    /// Seals what has waited the interval, within `room`, and forgets partitions that hold
    /// nothing; says whether due partitions were left open, and why.
    pub fn seal_expired(
        &mut self,
        now: Instant,
        sealed: &mut Vec<SealedObject>,
        room: SealRoom,
    ) -> std::io::Result<Sealing> {
        if self.next_deadline().is_none_or(|d| d > now) {
            return Ok(Sealing::Done);
        }
        self.aggregates.set(None);
        self.shared.seal_expired(now, sealed)?;
        let mut left = room;
        let mut outcome = Sealing::Done;
        for batcher in self.partitions.values_mut() {
            if batcher.next_deadline().is_none_or(|d| d > now) {
                continue;
            }
            if let Some(stop) = left.exhausted() {
                outcome = stop;
                break;
            }
            left.take(partition_bytes(batcher));
            batcher.seal_expired(now, sealed)?;
        }
        self.partitions.retain(|_, b| b.buffered_records() > 0);
        self.recount();
        Ok(outcome)
    }

    /// Seals everything (end of input) within `room`; says whether partitions were left open for
    /// a later call, and why.
    pub fn seal_all(&mut self, sealed: &mut Vec<SealedObject>, room: SealRoom) -> std::io::Result<Sealing> {
        if room.objects == 0 && self.shared.buffered_records() == 0 {
            return Ok(if self.partitions.is_empty() { Sealing::Done } else { Sealing::QueueFull });
        }
        self.aggregates.set(None);
        self.shared.seal_all(sealed)?;
        let mut left = room;
        let mut outcome = Sealing::Done;
        let mut chosen = Vec::new();
        for (keys, batcher) in &self.partitions {
            if let Some(stop) = left.exhausted() {
                outcome = stop;
                break;
            }
            left.take(partition_bytes(batcher));
            chosen.push(Arc::clone(keys));
        }
        for keys in chosen {
            if let Some(mut batcher) = self.partitions.remove(&keys) {
                self.open_bytes = self.open_bytes.saturating_sub(partition_bytes(&batcher));
                batcher.seal_all(sealed)?;
            }
        }
        Ok(outcome)
    }

    fn aggregates(&self) -> Aggregates {
        if let Some(known) = self.aggregates.get() {
            return known;
        }
        let mut a = Aggregates { oldest_epoch: None, oldest_arrival_ms: None, next_deadline: None };
        for b in std::iter::once(&self.shared).chain(self.partitions.values().map(|b| &**b)) {
            a.oldest_epoch = min(a.oldest_epoch, b.oldest_epoch());
            a.oldest_arrival_ms = min(a.oldest_arrival_ms, b.oldest_arrival_ms());
            a.next_deadline = min(a.next_deadline, b.next_deadline());
        }
        self.aggregates.set(Some(a));
        a
    }

    /// The oldest epoch of any open object.
    pub fn oldest_epoch(&self) -> Option<u64> {
        self.aggregates().oldest_epoch
    }

    /// The arrival time of the oldest record in an open object.
    pub fn oldest_arrival_ms(&self) -> Option<i64> {
        self.aggregates().oldest_arrival_ms
    }

    /// When the next open object expires.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.aggregates().next_deadline
    }

    /// About the memory the open partitions hold (kept as records arrive: a pass over every
    /// partition's objects each activation would cost more than the records).
    pub fn buffered_bytes(&self) -> u64 {
        self.open_bytes
    }

    /// Open partitions.
    pub fn open_partitions(&self) -> usize {
        self.partitions.len()
    }

    /// Partitions sealed early and records written per partition since the last call.
    pub fn take_counts(&mut self) -> (u64, HashMap<PartitionKeys, u64>) {
        (std::mem::take(&mut self.sealed_early), std::mem::take(&mut self.written))
    }
}

/// The memory an open partition is counted for: its bookkeeping, its key strings and its open
/// objects.
fn partition_bytes(batcher: &ObjectBatcher) -> u64 {
    PARTITION_BOOKKEEPING + batcher.partition_key_bytes() + batcher.open_bytes()
}

/// The smaller of two optional values (either when the other is `None`).
fn min<T: Ord>(x: Option<T>, y: Option<T>) -> Option<T> {
    match (x, y) {
        (Some(x), Some(y)) => Some(std::cmp::min(x, y)),
        (x, y) => x.or(y),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::compression::Compression;
    use crate::config::BufferingHints;
    use crate::keys::ObjectKeys;

    fn partitioned(max_open_bytes: u64) -> PartitionedBatchers {
        partitioned_every(max_open_bytes, Duration::from_secs(900))
    }

    fn partitioned_every(max_open_bytes: u64, interval: Duration) -> PartitionedBatchers {
        let keys = ObjectKeys::new(
            Some("k=!{partitionKeyFromQuery:k}/"),
            Some("e/!{firehose:error-output-type}/"),
            "s",
            chrono_tz::Tz::UTC,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let hints = BufferingHints { size_bytes: 64 << 20, interval };
        let settings = Arc::new(SinkSettings::new(crate::format::ndjson(Compression::Gzip), hints, keys));
        PartitionedBatchers::new(settings, max_open_bytes, None)
    }

    /// One batch of `n` records, each in its own partition `k=<i>`.
    fn one_record_per_partition(n: usize) -> Records {
        let mut batch = RecordBatch::with_capacity(0, 0);
        for i in 0..n {
            let keys: PartitionKeys = Arc::from(vec![("k".to_string(), i.to_string())]);
            batch.push_with_keys(format!("{{\"k\":{i}}}").as_bytes(), Some(keys));
        }
        Records::Deliver(batch)
    }

    #[test]
    fn due_partitions_are_sealed_at_most_room_at_a_time_and_hold_their_epoch_meanwhile() {
        let mut p = partitioned(1 << 30);
        let mut sealed = Vec::new();
        p.append(&one_record_per_partition(1000), 7, Instant::now(), &mut sealed).unwrap_or_else(|e| panic!("{e}"));
        assert!(sealed.is_empty());
        assert_eq!(p.open_partitions(), 1000);
        let mut rounds = 0;
        while p.seal_all(&mut sealed, SealRoom::objects(300)).unwrap_or_else(|e| panic!("{e}")) == Sealing::QueueFull {
            rounds += 1;
            assert!(sealed.len() <= 300 * rounds, "{} sealed after {rounds} rounds", sealed.len());
            // What is still open still holds its epoch.
            assert_eq!(p.oldest_epoch(), Some(7));
        }
        assert_eq!((rounds, sealed.len(), p.oldest_epoch()), (3, 1000, None));
        // Nothing is sealed while the queue has no room.
        let mut p = partitioned(1 << 30);
        p.append(&one_record_per_partition(10), 1, Instant::now(), &mut sealed).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(p.seal_all(&mut sealed, SealRoom::objects(0)).unwrap_or_else(|e| panic!("{e}")), Sealing::QueueFull);
        assert_eq!(p.open_partitions(), 10);
        // Every sealed object is a complete gzip member holding its partition's one record.
        for object in &sealed {
            let text = crate::compression::decompress(Compression::Gzip, &object.payload.body).unwrap_or_default();
            let k = object.payload.key.strip_prefix("k=").and_then(|r| r.split('/').next()).unwrap_or_default();
            assert_eq!(String::from_utf8_lossy(&text), format!("{{\"k\":{k}}}\n"));
        }
    }

    #[test]
    fn partitions_due_by_interval_are_sealed_at_most_room_at_a_time() {
        let mut p = partitioned_every(1 << 30, Duration::from_millis(10));
        let mut sealed = Vec::new();
        let opened = Instant::now();
        p.append(&one_record_per_partition(1000), 3, opened, &mut sealed).unwrap_or_else(|e| panic!("{e}"));
        // Not due yet: nothing sealed, whatever the room.
        assert_eq!(
            p.seal_expired(opened, &mut sealed, SealRoom::objects(5000)).unwrap_or_else(|e| panic!("{e}")),
            Sealing::Done
        );
        assert!(sealed.is_empty());
        let later = opened + Duration::from_millis(20);
        let mut calls = 1;
        while p.seal_expired(later, &mut sealed, SealRoom::objects(400)).unwrap_or_else(|e| panic!("{e}"))
            == Sealing::QueueFull
        {
            assert_eq!(sealed.len(), 400 * calls);
            assert_eq!(p.oldest_epoch(), Some(3), "what waits still holds its epoch");
            calls += 1;
        }
        assert_eq!((calls, sealed.len(), p.open_partitions(), p.oldest_epoch()), (3, 1000, 0, None));
    }

    #[test]
    fn due_partitions_are_sealed_in_slices_of_about_the_room_in_bytes() {
        let mut sealed = Vec::new();
        let mut p = partitioned(1 << 30);
        p.append(&one_record_per_partition(1000), 5, Instant::now(), &mut sealed).unwrap_or_else(|e| panic!("{e}"));
        let each = p.buffered_bytes() / 1000;
        // Room for 1,000 objects but the bytes of about 100 partitions: ten slices.
        let room = SealRoom { objects: 1000, bytes: 100 * each };
        let mut slices = vec![];
        loop {
            let before = sealed.len();
            let outcome = p.seal_all(&mut sealed, room).unwrap_or_else(|e| panic!("{e}"));
            slices.push(sealed.len() - before);
            if outcome == Sealing::Done {
                break;
            }
            assert_eq!(outcome, Sealing::SliceFull);
            assert_eq!(p.oldest_epoch(), Some(5), "what waits still holds its epoch");
        }
        assert_eq!(sealed.len(), 1000);
        assert!(slices.iter().all(|&n| n <= 101), "{slices:?}");
        assert!((10..=11).contains(&slices.len()), "{slices:?}");
        // One partition larger than the slice is still sealed, alone.
        let mut p = partitioned(1 << 30);
        p.append(&one_record_per_partition(3), 5, Instant::now(), &mut sealed).unwrap_or_else(|e| panic!("{e}"));
        let tiny = SealRoom { objects: 1000, bytes: 1 };
        let outcomes: Vec<Sealing> =
            (0..3).map(|_| p.seal_all(&mut sealed, tiny).unwrap_or_else(|e| panic!("{e}"))).collect();
        assert_eq!(outcomes, [Sealing::SliceFull, Sealing::SliceFull, Sealing::Done]);
        // Interval-due partitions are sliced the same way.
        let mut p = partitioned_every(1 << 30, Duration::from_millis(10));
        let opened = Instant::now();
        p.append(&one_record_per_partition(1000), 5, opened, &mut sealed).unwrap_or_else(|e| panic!("{e}"));
        let later = opened + Duration::from_millis(20);
        let before = sealed.len();
        assert_eq!(p.seal_expired(later, &mut sealed, room).unwrap_or_else(|e| panic!("{e}")), Sealing::SliceFull);
        assert!((100..=101).contains(&(sealed.len() - before)), "{}", sealed.len() - before);
    }

    #[test]
    fn open_partitions_are_counted_with_their_bookkeeping_and_sealed_early_past_the_budget() {
        // Room for about 100 small partitions.
        let mut p = partitioned(100 * (PARTITION_BOOKKEEPING + 64));
        let mut sealed = Vec::new();
        p.append(&one_record_per_partition(1000), 0, Instant::now(), &mut sealed).unwrap_or_else(|e| panic!("{e}"));
        assert!((80..=120).contains(&p.open_partitions()), "{} open", p.open_partitions());
        assert!(p.open_bytes <= p.max_open_bytes);
        assert!(p.open_bytes >= p.open_partitions() as u64 * PARTITION_BOOKKEEPING);
        let (early, written) = p.take_counts();
        assert_eq!(early as usize, sealed.len());
        assert_eq!(written.len(), 1000);
        assert_eq!(sealed.len() + p.open_partitions(), 1000);
    }
}

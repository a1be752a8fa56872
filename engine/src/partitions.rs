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
    /// Records and bytes per partition written since the last [`Self::take_counts`] (for the
    /// summary and `PerPartitionThroughput`).
    written: HashMap<PartitionKeys, (u64, u64)>,
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

    /// Adds what arrived at `epoch`, from record `from` of `records` on. To stay within the budget
    /// it seals the largest partitions early, at most `room` objects (the delivery queue's room,
    /// taken from as it seals): when the budget is spent and so is the room, it stops and says at
    /// which record, and the caller offers the rest again once the queue has room. So neither the
    /// open partitions nor the objects waiting for delivery outgrow their bounds (by more than one
    /// partition's run of records) however fast records come and however slowly objects are
    /// stored. `None`: every record was added.
    pub fn append(
        &mut self,
        records: &Records,
        from: usize,
        epoch: u64,
        now: Instant,
        sealed: &mut Vec<SealedObject>,
        room: &mut usize,
    ) -> std::io::Result<Option<usize>> {
        self.aggregates.set(None);
        let Records::Deliver(batch) = records else {
            return self.shared.append_records(records, epoch, now, sealed).map(|()| None);
        };
        // The partition operator sends each worker one batch, its records grouped by partition
        // and each partition's records sharing one set of keys: a batch is taken in runs.
        let mut start = from;
        while start < batch.len() {
            if self.open_bytes > self.max_open_bytes {
                self.keep_within_budget(sealed, room)?;
                // Only a spent room stops it: the objects already given to the queue free it
                // again, so the caller is woken (over the budget with room left means nothing
                // is open to seal).
                if self.open_bytes > self.max_open_bytes && *room == 0 {
                    return Ok(Some(start));
                }
            }
            let (keys, end) = batch.partition_key_run(start);
            match keys.cloned() {
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
        self.keep_within_budget(sealed, room)?;
        Ok(None)
    }

    /// Adds the records at `run` in `batch`, of the partition `keys`.
    fn append_partition(
        &mut self,
        keys: PartitionKeys,
        batch: &RecordBatch,
        run: std::ops::Range<usize>,
        epoch: u64,
        now: Instant,
        sealed: &mut Vec<SealedObject>,
    ) -> std::io::Result<()> {
        let bytes = batch.range_byte_len(run.clone());
        let written = self.written.entry(Arc::clone(&keys)).or_default();
        *written = (written.0 + run.len() as u64, written.1 + bytes as u64);
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
        Ok(())
    }

    /// Seals the largest open partitions until all of them fit in the budget, with an eighth of it
    /// to spare (one pass over the open partitions frees room for many records, not for one), or
    /// until `room` objects are sealed.
    fn keep_within_budget(&mut self, sealed: &mut Vec<SealedObject>, room: &mut usize) -> std::io::Result<()> {
        if self.open_bytes <= self.max_open_bytes || *room == 0 {
            return Ok(());
        }
        let target = self.max_open_bytes - self.max_open_bytes / 8;
        let mut sizes: Vec<(u64, PartitionKeys)> =
            self.partitions.iter().map(|(k, b)| (partition_bytes(b), Arc::clone(k))).collect();
        sizes.sort_unstable_by_key(|s| std::cmp::Reverse(s.0));
        for (bytes, keys) in sizes {
            if self.open_bytes <= target || *room == 0 {
                break;
            }
            if let Some(mut batcher) = self.partitions.remove(&keys) {
                batcher.seal_all(sealed)?;
            }
            *room -= 1;
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

    /// What the sink's batchers converted and did not since the last call
    /// ([`ObjectBatcher::take_conversions`]: the partitions share one tally).
    pub fn take_conversions(&self) -> crate::buffer::Conversions {
        self.shared.take_conversions()
    }

    /// Partitions sealed early and records and bytes written per partition since the last call.
    pub fn take_counts(&mut self) -> (u64, HashMap<PartitionKeys, (u64, u64)>) {
        (std::mem::take(&mut self.sealed_early), std::mem::take(&mut self.written))
    }
}

/// The memory an open partition is counted for: its bookkeeping, its key strings and its open
/// objects.
fn partition_bytes(batcher: &ObjectBatcher) -> u64 {
    PARTITION_BOOKKEEPING + batcher.partition_key_bytes() + batcher.open_bytes()
}

/// The smaller of two optional values (either when the other is `None`).
pub(crate) fn min<T: Ord>(x: Option<T>, y: Option<T>) -> Option<T> {
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
            batch.push_with_keys(format!("{{\"k\":{i}}}").as_bytes(), Some(&keys));
        }
        Records::Deliver(batch)
    }

    /// Appends every record of `records`, with unlimited room for early seals.
    fn add_all(
        p: &mut PartitionedBatchers,
        records: &Records,
        epoch: u64,
        now: Instant,
        sealed: &mut Vec<SealedObject>,
    ) {
        let mut unlimited = usize::MAX;
        let stopped = p.append(records, 0, epoch, now, sealed, &mut unlimited).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(stopped, None, "unlimited room never stops an append");
    }

    #[test]
    fn due_partitions_are_sealed_at_most_room_at_a_time_and_hold_their_epoch_meanwhile() {
        let mut p = partitioned(1 << 30);
        let mut sealed = Vec::new();
        add_all(&mut p, &one_record_per_partition(1000), 7, Instant::now(), &mut sealed);
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
        add_all(&mut p, &one_record_per_partition(10), 1, Instant::now(), &mut sealed);
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
        add_all(&mut p, &one_record_per_partition(1000), 3, opened, &mut sealed);
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
        add_all(&mut p, &one_record_per_partition(1000), 5, Instant::now(), &mut sealed);
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
        add_all(&mut p, &one_record_per_partition(3), 5, Instant::now(), &mut sealed);
        let tiny = SealRoom { objects: 1000, bytes: 1 };
        let outcomes: Vec<Sealing> =
            (0..3).map(|_| p.seal_all(&mut sealed, tiny).unwrap_or_else(|e| panic!("{e}"))).collect();
        assert_eq!(outcomes, [Sealing::SliceFull, Sealing::SliceFull, Sealing::Done]);
        // Interval-due partitions are sliced the same way.
        let mut p = partitioned_every(1 << 30, Duration::from_millis(10));
        let opened = Instant::now();
        add_all(&mut p, &one_record_per_partition(1000), 5, opened, &mut sealed);
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
        add_all(&mut p, &one_record_per_partition(1000), 0, Instant::now(), &mut sealed);
        assert!((80..=120).contains(&p.open_partitions()), "{} open", p.open_partitions());
        assert!(p.open_bytes <= p.max_open_bytes);
        assert!(p.open_bytes >= p.open_partitions() as u64 * PARTITION_BOOKKEEPING);
        let (early, written) = p.take_counts();
        assert_eq!(early as usize, sealed.len());
        assert_eq!(written.len(), 1000);
        assert_eq!(sealed.len() + p.open_partitions(), 1000);
    }

    #[test]
    fn early_seals_wait_for_room_and_the_append_resumes_where_it_stopped() {
        let budget = 100 * (PARTITION_BOOKKEEPING + 64);
        let mut p = partitioned(budget);
        let mut sealed = Vec::new();
        let records = one_record_per_partition(1000);
        let mut from = 0;
        let mut stops = 0;
        loop {
            // Room for 30 objects per call: the queue takes that many before the append waits.
            let mut room = 30;
            let before = sealed.len();
            let stopped =
                p.append(&records, from, 4, Instant::now(), &mut sealed, &mut room).unwrap_or_else(|e| panic!("{e}"));
            assert!(sealed.len() - before <= 30, "{} sealed with room for 30", sealed.len() - before);
            // Over the budget by at most the one partition added before the check.
            assert!(p.open_bytes <= budget + PARTITION_BOOKKEEPING + 64, "{} open bytes", p.open_bytes);
            match stopped {
                Some(at) => {
                    assert_eq!(room, 0, "an append stops only when the room is spent");
                    assert!(at > from || (at == from && sealed.len() > before), "progress from {from}");
                    from = at;
                    stops += 1;
                }
                None => break,
            }
        }
        assert!(stops >= 20, "{stops} stops: 900 early seals at 30 a call");
        assert_eq!(p.oldest_epoch(), Some(4));
        // Every record is in exactly one object or open partition, once.
        let mut keys: Vec<String> = sealed.iter().map(|o| o.payload.key.clone()).collect();
        assert_eq!(sealed.len() + p.open_partitions(), 1000);
        keys.sort();
        keys.dedup();
        assert_eq!(keys.len(), sealed.len(), "no partition sealed twice");
        // Without room, nothing is sealed early: records are added until the budget is spent.
        let mut none = 0;
        let sealed_before = sealed.len();
        let more = p.append(&one_record_per_partition(2000), 1500, 5, Instant::now(), &mut sealed, &mut none);
        let stopped_at = more.unwrap_or_else(|e| panic!("{e}")).unwrap_or_else(|| panic!("a full budget stops"));
        assert!((1500..2000).contains(&stopped_at), "{stopped_at}");
        assert_eq!(sealed.len(), sealed_before);
        assert!(p.open_bytes > budget && p.open_bytes <= budget + PARTITION_BOOKKEEPING + 64, "{}", p.open_bytes);
    }
}

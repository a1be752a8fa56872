//! Buffering for a partitioned sink: one [`ObjectBatcher`] per open partition on this worker, within
//! a memory budget.
//!
//! Records reach it with their partition key values attached (the partition operator put them on
//! each record and sent every partition to one worker). Guarantees: each partition buffers by size
//! and interval on its own (Firehose's per-partition buffering), so its objects are named by their
//! own oldest record; the open objects of all partitions together (their buffers and compressors)
//! stay within `max_open_bytes`: when a partition's records take them over it, the largest
//! partitions are sealed early until they fit; a partition that holds nothing is forgotten, so memory follows the open
//! partitions, not all partitions ever seen. Failed records, source backups and records without
//! keys go through one shared batcher to the sink's error output.

use rustc_hash::FxHashMap as HashMap;
use std::sync::Arc;
use std::time::Instant;

use crate::buffer::{ObjectBatcher, SealedObject};
use crate::config::SinkSettings;
use crate::error_output::ErrorOutputType;
use crate::record::{FailedRecords, PartitionKeys, RecordBatch, RecordFailure, Records};

/// Every open partition of one sink on one worker.
pub struct PartitionedBatchers {
    settings: Arc<SinkSettings>,
    part_bytes: Option<usize>,
    max_open_bytes: u64,
    shared: ObjectBatcher,
    partitions: HashMap<PartitionKeys, ObjectBatcher>,
    /// About the memory of the open partitions' objects.
    open_bytes: u64,
    /// Partitions sealed early to stay within the budget, since the last [`Self::take_counts`].
    sealed_early: u64,
    /// Records per partition written since the last [`Self::take_counts`] (for the summary).
    written: HashMap<PartitionKeys, u64>,
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
        let mut shared = ObjectBatcher::new(Arc::clone(&settings));
        if let Some(p) = part_bytes {
            shared = shared.with_parts(p);
        }
        PartitionedBatchers {
            settings,
            part_bytes,
            max_open_bytes,
            shared,
            partitions: HashMap::default(),
            open_bytes: 0,
            sealed_early: 0,
            written: HashMap::default(),
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
        let Records::Deliver(batch) = records else {
            return self.shared.append_records(records, epoch, now, sealed);
        };
        // The partition operator sends each partition's records as one batch sharing one set of
        // keys: a batch is taken in runs of records with the same keys (usually one run, whole).
        let mut start = 0;
        while start < batch.len() {
            let keys = batch.partition_keys(start).cloned();
            let same = |i: usize| match (&keys, batch.partition_keys(i)) {
                (Some(a), Some(b)) => Arc::ptr_eq(a, b) || a == b,
                (None, None) => true,
                _ => false,
            };
            let end = (start + 1..batch.len()).find(|&i| !same(i)).unwrap_or(batch.len());
            let run = if start == 0 && end == batch.len() {
                std::borrow::Cow::Borrowed(batch)
            } else {
                let mut run = RecordBatch::with_capacity(batch.arrival_ms, 0);
                batch.iter().skip(start).take(end - start).for_each(|r| run.push(r));
                std::borrow::Cow::Owned(run)
            };
            match keys {
                Some(keys) => self.append_partition(keys, &run, epoch, now, sealed)?,
                None => {
                    let mut unkeyed = FailedRecords::new(ErrorOutputType::PartitioningFailed, batch.arrival_ms);
                    for record in run.iter() {
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

    /// Adds `records` of the partition `keys`, then keeps the open partitions within the budget.
    fn append_partition(
        &mut self,
        keys: PartitionKeys,
        records: &RecordBatch,
        epoch: u64,
        now: Instant,
        sealed: &mut Vec<SealedObject>,
    ) -> std::io::Result<()> {
        *self.written.entry(Arc::clone(&keys)).or_default() += records.len() as u64;
        let batcher = self.partitions.entry(Arc::clone(&keys)).or_insert_with(|| {
            let values = keys.iter().map(|(_, v)| v.clone()).collect();
            let b = ObjectBatcher::for_partition(Arc::clone(&self.settings), values);
            match self.part_bytes {
                Some(p) => b.with_parts(p),
                None => b,
            }
        });
        let before = batcher.open_bytes();
        batcher.append(records, epoch, now, sealed)?;
        self.open_bytes = (self.open_bytes + batcher.open_bytes()).saturating_sub(before);
        self.keep_within_budget(sealed)
    }

    /// Seals the largest open partitions until all of them fit in the budget.
    fn keep_within_budget(&mut self, sealed: &mut Vec<SealedObject>) -> std::io::Result<()> {
        while self.open_bytes > self.max_open_bytes {
            let Some((keys, bytes)) =
                self.partitions.iter().map(|(k, b)| (Arc::clone(k), b.open_bytes())).max_by_key(|(_, bytes)| *bytes)
            else {
                self.open_bytes = 0;
                break;
            };
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
        self.open_bytes = self.partitions.values().map(ObjectBatcher::open_bytes).sum();
    }

    /// Seals what has waited the interval, and forgets partitions that hold nothing.
    pub fn seal_expired(&mut self, now: Instant, sealed: &mut Vec<SealedObject>) -> std::io::Result<()> {
        self.shared.seal_expired(now, sealed)?;
        for batcher in self.partitions.values_mut() {
            batcher.seal_expired(now, sealed)?;
        }
        self.partitions.retain(|_, b| b.buffered_records() > 0);
        self.recount();
        Ok(())
    }

    /// Seals everything (end of input).
    pub fn seal_all(&mut self, sealed: &mut Vec<SealedObject>) -> std::io::Result<()> {
        self.shared.seal_all(sealed)?;
        for batcher in self.partitions.values_mut() {
            batcher.seal_all(sealed)?;
        }
        self.partitions.clear();
        self.open_bytes = 0;
        Ok(())
    }

    fn all(&self) -> impl Iterator<Item = &ObjectBatcher> {
        std::iter::once(&self.shared).chain(self.partitions.values())
    }

    /// The oldest epoch of any open object.
    pub fn oldest_epoch(&self) -> Option<u64> {
        self.all().filter_map(ObjectBatcher::oldest_epoch).min()
    }

    /// The arrival time of the oldest record in an open object.
    pub fn oldest_arrival_ms(&self) -> Option<i64> {
        self.all().filter_map(ObjectBatcher::oldest_arrival_ms).min()
    }

    /// When the next open object expires.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.all().filter_map(ObjectBatcher::next_deadline).min()
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

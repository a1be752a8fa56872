//! Records and the batches they travel in.
//!
//! A record is opaque bytes plus its approximate arrival time. Records never travel alone: a
//! [`RecordBatch`] keeps many records in one contiguous buffer with an end offset per record, so a
//! timely message carries thousands of records and one allocation, not one allocation per record.
//! Guarantees: records keep their bytes exactly and their order within a batch.
//!
//! Between the stages of the dataflow records travel as [`Records`]: a batch on its way to the
//! sinks, [`FailedRecords`] that a transform could not process, on their way to the error output
//! of every sink they would have reached, each with its reason, or source records as they arrived
//! for a sink that backs up everything.
//!
//! A record read from a write-ahead log carries its [`Origin`]: which log, which entry, which
//! record of it. Origins travel with records through every transform and exchange (a transform's
//! outputs carry the origin of the record they came from), so a sink can tell, after a restart
//! replays an entry, which of its records it already stored (the postgres sink's exactly-once
//! loads).
//!
//! A batch may also carry what its source says of its records ([`SourceMetadata`]: a Kinesis
//! record's shard, partition key and sequence number), for a Lambda transform's function, which
//! Firehose shows them; it stays with the batch as read, not with records a transform rebuilds.

use std::sync::Arc;

use crate::error_output::ErrorOutputType;
use crate::operators::{BudgetClaim, ExchangeBudget};

/// UTF-8's byte order mark, which Windows tools (PowerShell, Notepad) write at the start of a text
/// file: it marks the file's encoding and is no part of its first record (jq and Python's `json`
/// skip it), so line readers drop it.
pub const UTF8_BOM: &[u8] = b"\xEF\xBB\xBF";

/// `line` without its line end, `\n` or `\r\n` (Windows' files, Filebeat, the producers that append
/// one to each record): no part of the record. The one rule every line reader of sluice's follows.
pub fn without_line_end(line: &[u8]) -> &[u8] {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    line.strip_suffix(b"\r").unwrap_or(line)
}

/// Partition keys a transform gave a record (a Lambda function's `metadata.partitionKeys`), in
/// key order.
pub type PartitionKeys = Arc<[(String, String)]>;

/// Where a record came from: record `index` of entry `seq` of write-ahead log `log`. A restart
/// replays an undelivered entry whole, so a record has the same origin every time it is read.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct Origin {
    /// The log's identity, drawn at random when the log was created (a log recreated empty has
    /// another, so its sequence numbers never meet an older log's).
    pub log: u64,
    /// The entry's sequence number in the log.
    pub seq: u64,
    /// The record's place in the entry.
    pub index: u32,
    /// Entries of this log below this sequence number are never replayed (its checkpoint when
    /// the record was read): what a sink remembers about them may be forgotten.
    pub replay_floor: u64,
}

/// What a source says about the records of a batch besides their bytes, which a Lambda
/// transform's function is shown as Firehose shows it: a Kinesis Data Stream source's
/// `sourceKinesisStreamArn` in the event and `kinesisRecordMetadata` in each record's entry.
/// Guarantees: it travels with the batch as the source read it, through the stages that pass
/// batches on whole and a Lambda transform's own grouping; a stage that builds new records (jq,
/// redact, …) does not carry it, as Firehose calls its Lambda processor on the source's records.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SourceMetadata {
    /// Members the event gets: (name, JSON value).
    pub event: Vec<(String, String)>,
    /// The member each record's entry gets.
    pub record_member: String,
    /// That member's JSON value per record, by the record's index in the batch (`None` for a
    /// record the source said nothing about; absent past the last it did).
    pub records: Vec<Option<String>>,
}

/// Many records, stored back to back, with the arrival time they share.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RecordBatch {
    /// Approximate arrival time of the records (milliseconds since the Unix epoch, UTC), the
    /// instant the source read or received them; Firehose's `ApproximateArrivalTimestamp`.
    pub arrival_ms: i64,
    /// The records' bytes back to back; serialized as one byte string (a batch crossing to
    /// another process is copied, not walked byte by byte).
    data: BatchBytes,
    ends: Vec<u32>,
    /// Partition keys as runs: each run's first record and the keys of its records, up to the next
    /// run (empty when no record has keys; records before the first run have none). One entry per
    /// run, not per record: a partitioned batch holds a few partitions of thousands of records,
    /// and a key set cloned per record was an atomic increment per record on a count the other
    /// worker decrements (measured: 2 % of a partitioned pipeline's CPU).
    keys: Vec<(u32, Option<PartitionKeys>)>,
    /// Origin per record, when any record has one (empty otherwise; shorter than `ends` when the
    /// last records have none).
    origins: Vec<Option<Origin>>,
    /// What the source said about the records, when it said anything.
    #[serde(default)]
    source_metadata: Option<Box<SourceMetadata>>,
    /// This batch's bytes counted in its process's in-flight budget while it crosses to another
    /// worker of the process (the partition operator's exchange). Never serialized: a batch that
    /// arrives from another process was not counted in this one.
    #[serde(skip)]
    claim: BudgetClaim,
}

/// A batch's record bytes. A buffer of about a source batch's size goes back to its thread when
/// the batch is dropped, and that thread's next batch of that size starts in it: a source cuts a
/// batch every MiB, and a buffer freed and allocated again is pages given back to the kernel and
/// faulted in again (or, kept by the allocator, a heap that grows in pieces over a long run).
/// Guarantees: a thread keeps at most [`SPARE_BUFFERS`] buffers, each empty, of a capacity in
/// [`RECYCLED`]; a batch starts empty whichever buffer it gets.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct BatchBytes(Vec<u8>);

/// Buffers a thread keeps for its next batches: a worker reads a batch while its last is taken in.
const SPARE_BUFFERS: usize = 2;

/// Capacities of buffers kept and handed out again: a source batch's (about 1 MiB) and an
/// exchange batch's, not a few records' or a whole object's.
const RECYCLED: std::ops::RangeInclusive<usize> = (256 << 10)..=(4 << 20);

thread_local! {
    static SPARE: std::cell::RefCell<Vec<Vec<u8>>> = const { std::cell::RefCell::new(Vec::new()) };
}

impl BatchBytes {
    /// An empty buffer of at least `bytes`: one of the thread's spares when one fits.
    fn with_capacity(bytes: usize) -> Self {
        BatchBytes(Self::spare(bytes).unwrap_or_else(|| Vec::with_capacity(bytes)))
    }

    /// One of the thread's spares holding at least `bytes`, for a batch of a recycled size.
    fn spare(bytes: usize) -> Option<Vec<u8>> {
        if !RECYCLED.contains(&bytes) {
            return None;
        }
        SPARE
            .try_with(|spare| {
                let mut spare = spare.try_borrow_mut().ok()?;
                let at = spare.iter().position(|b| b.capacity() >= bytes)?;
                Some(spare.swap_remove(at))
            })
            .ok()
            .flatten()
    }
}

impl Drop for BatchBytes {
    fn drop(&mut self) {
        if !RECYCLED.contains(&self.0.capacity()) {
            return;
        }
        let mut buffer = std::mem::take(&mut self.0);
        buffer.clear();
        // A thread being torn down has no spares any more: the buffer is freed.
        let _ = SPARE.try_with(|spare| {
            if let Ok(mut spare) = spare.try_borrow_mut()
                && spare.len() < SPARE_BUFFERS
            {
                spare.push(buffer);
            }
        });
    }
}

impl std::ops::Deref for BatchBytes {
    type Target = Vec<u8>;
    fn deref(&self) -> &Vec<u8> {
        &self.0
    }
}

impl std::ops::DerefMut for BatchBytes {
    fn deref_mut(&mut self) -> &mut Vec<u8> {
        &mut self.0
    }
}

impl serde::Serialize for BatchBytes {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serde_bytes::serialize(&self.0, serializer)
    }
}

impl<'de> serde::Deserialize<'de> for BatchBytes {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        serde_bytes::deserialize(deserializer).map(BatchBytes)
    }
}

impl RecordBatch {
    /// An empty batch stamped with `arrival_ms`, with room for `bytes` of record data.
    pub fn with_capacity(arrival_ms: i64, bytes: usize) -> Self {
        RecordBatch {
            arrival_ms,
            data: BatchBytes::with_capacity(bytes),
            ends: Vec::new(),
            keys: Vec::new(),
            origins: Vec::new(),
            source_metadata: None,
            claim: BudgetClaim::default(),
        }
    }

    /// Appends one record. A batch holds at most 4 GiB (offsets are `u32`); sources cut batches at
    /// about 1 MiB, and a single record is at most one line of input.
    pub fn push(&mut self, record: &[u8]) {
        self.push_with_keys(record, None);
    }

    /// The record about to be pushed has `keys`: starts a run unless the last run has the same.
    fn mark_keys(&mut self, keys: Option<&PartitionKeys>) {
        let same = match (self.keys.last(), keys) {
            (None | Some((_, None)), None) => true,
            (Some((_, Some(last))), Some(keys)) => Arc::ptr_eq(last, keys) || last == keys,
            _ => false,
        };
        if !same {
            self.keys.push((u32::try_from(self.ends.len()).unwrap_or(u32::MAX), keys.cloned()));
        }
    }

    /// Appends one record written by `write` straight into the batch's buffer (e.g. decoded from
    /// base64 without a copy); if `write` fails, the batch is as it was.
    pub fn push_with<E>(&mut self, write: impl FnOnce(&mut Vec<u8>) -> Result<(), E>) -> Result<(), E> {
        let start = self.data.len();
        match write(&mut self.data) {
            Ok(()) => {
                if !self.keys.is_empty() {
                    self.mark_keys(None);
                }
                self.ends.push(u32::try_from(self.data.len()).unwrap_or(u32::MAX));
                Ok(())
            }
            Err(e) => {
                self.data.truncate(start);
                Err(e)
            }
        }
    }

    /// Appends one record with the partition keys a transform gave it.
    pub fn push_with_keys(&mut self, record: &[u8], keys: Option<&PartitionKeys>) {
        if keys.is_some() || !self.keys.is_empty() {
            self.mark_keys(keys);
        }
        self.data.extend_from_slice(record);
        self.ends.push(u32::try_from(self.data.len()).unwrap_or(u32::MAX));
    }

    /// Appends one record with its origin and partition keys (what a stage passing records on
    /// keeps of them).
    pub fn push_carrying(&mut self, record: &[u8], origin: Option<Origin>, keys: Option<&PartitionKeys>) {
        let at = self.ends.len();
        self.push_with_keys(record, keys);
        self.set_origin_from(at, origin);
    }

    /// Gives records `from..` (those pushed since `from`) the origin `origin`, e.g. what a
    /// transform emitted for one input record.
    pub fn set_origin_from(&mut self, from: usize, origin: Option<Origin>) {
        if origin.is_none() && self.origins.is_empty() {
            return;
        }
        self.origins.resize(self.ends.len(), None);
        if let Some(emitted) = self.origins.get_mut(from..) {
            emitted.iter_mut().for_each(|o| *o = origin);
        }
    }

    /// Marks every record as read from entry `seq` of log `log` (record `i` is its record `i`),
    /// whose replay floor is `replay_floor`.
    pub fn set_log_entry(&mut self, log: u64, seq: u64, replay_floor: u64) {
        self.origins = (0..self.ends.len())
            .map(|i| Some(Origin { log, seq, index: u32::try_from(i).unwrap_or(u32::MAX), replay_floor }))
            .collect();
    }

    /// Says what the source tells a Lambda function of these records: the event's `event` members
    /// and the member `record_member` of each record's entry (given with
    /// [`Self::push_described`]). Kept when the batch said so already.
    pub fn describe_source(&mut self, event: Vec<(String, String)>, record_member: &str) {
        if self.source_metadata.is_none() {
            self.source_metadata =
                Some(Box::new(SourceMetadata { event, record_member: record_member.to_string(), records: Vec::new() }));
        }
    }

    /// Appends one record with the JSON value of its entry's member ([`Self::describe_source`],
    /// which must come first: without it the value is not kept).
    pub fn push_described(&mut self, record: &[u8], value: Option<String>) {
        self.push(record);
        self.set_record_metadata(self.ends.len() - 1, value);
    }

    /// Gives record `index` the JSON value of its entry's member ([`Self::describe_source`] first),
    /// e.g. for a record passed on with [`Self::push_carrying`].
    pub fn set_record_metadata(&mut self, index: usize, value: Option<String>) {
        if let Some(metadata) = self.source_metadata.as_deref_mut()
            && value.is_some()
            && index < self.ends.len()
        {
            if metadata.records.len() <= index {
                metadata.records.resize(index + 1, None);
            }
            metadata.records[index] = value;
        }
    }

    /// What the source said about the records, if anything.
    pub fn source_metadata(&self) -> Option<&SourceMetadata> {
        self.source_metadata.as_deref()
    }

    /// The JSON value the source gave record `index`'s entry, if any.
    pub fn record_metadata(&self, index: usize) -> Option<&str> {
        self.source_metadata.as_deref()?.records.get(index)?.as_deref()
    }

    /// The origin of record `index`, if it has one.
    pub fn origin(&self, index: usize) -> Option<Origin> {
        self.origins.get(index).copied().flatten()
    }

    /// The partition keys of record `index`, if a transform gave it some.
    pub fn partition_keys(&self, index: usize) -> Option<&PartitionKeys> {
        self.partition_key_run(index).0
    }

    /// The partition keys of record `index` and the end of the run of records from it on that
    /// have the same (at most the batch's length; `None` and the index itself past the end).
    pub fn partition_key_run(&self, index: usize) -> (Option<&PartitionKeys>, usize) {
        if index >= self.ends.len() {
            return (None, index);
        }
        let next = self.keys.partition_point(|(start, _)| *start as usize <= index);
        let end = self.keys.get(next).map_or(self.ends.len(), |(start, _)| *start as usize);
        let keys = next.checked_sub(1).and_then(|run| self.keys[run].1.as_ref());
        (keys, end)
    }

    /// The batch as bytes (for the write-ahead log): arrival time, record ends, record bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(12 + self.ends.len() * 4 + self.data.len());
        out.extend_from_slice(&self.arrival_ms.to_le_bytes());
        out.extend_from_slice(&(self.ends.len() as u32).to_le_bytes());
        self.ends.iter().for_each(|e| out.extend_from_slice(&e.to_le_bytes()));
        out.extend_from_slice(&self.data);
        out
    }

    /// A batch from [`RecordBatch::to_bytes`]; `None` if the bytes are not one.
    pub fn from_bytes(bytes: &[u8]) -> Option<RecordBatch> {
        let arrival_ms = i64::from_le_bytes(bytes.get(..8)?.try_into().ok()?);
        let count = u32::from_le_bytes(bytes.get(8..12)?.try_into().ok()?) as usize;
        let ends_end = 12usize.checked_add(count.checked_mul(4)?)?;
        let ends: Vec<u32> =
            bytes.get(12..ends_end)?.chunks_exact(4).map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
        let mut data = BatchBytes::with_capacity(bytes.len().saturating_sub(ends_end));
        data.extend_from_slice(bytes.get(ends_end..)?);
        let ordered = ends.windows(2).all(|w| w[0] <= w[1]) && ends.last().is_none_or(|&e| e as usize == data.len());
        ordered.then_some(RecordBatch {
            data,
            ends,
            arrival_ms,
            keys: Vec::new(),
            origins: Vec::new(),
            source_metadata: None,
            claim: BudgetClaim::default(),
        })
    }

    /// Number of records.
    pub fn len(&self) -> usize {
        self.ends.len()
    }

    /// Whether the batch holds no record.
    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// Total bytes of record data.
    pub fn byte_len(&self) -> usize {
        self.data.len()
    }

    /// Counts the batch's bytes in the in-flight budget until [`Self::release_budget`] (or until
    /// it is dropped) when it is sent to worker `to` of this process ([`ExchangeBudget::claim`]).
    pub fn claim_budget(&mut self, exchange: &ExchangeBudget, to: usize) {
        // The claim held before is released first: replaced, it would be dropped only after the
        // new one counted, and the budget would see the batch twice for a moment.
        self.claim.release();
        self.claim = exchange.claim(to, self.data.len() as u64);
    }

    /// Releases what [`Self::claim_budget`] counted: the receiving worker took the batch in.
    pub fn release_budget(&mut self) {
        self.claim.release();
    }

    /// The records, in order.
    pub fn iter(&self) -> impl Iterator<Item = &[u8]> + '_ {
        let mut start = 0usize;
        self.ends.iter().map(move |&end| {
            let end = end as usize;
            let record = &self.data[start..end];
            start = end;
            record
        })
    }

    /// The records at positions `range`, in order (none past the end).
    pub fn range(&self, range: std::ops::Range<usize>) -> impl Iterator<Item = &[u8]> + '_ {
        let ends = self.ends.get(range.start..range.end.min(self.ends.len())).unwrap_or_default();
        let mut start = match range.start.checked_sub(1) {
            Some(before) => self.ends.get(before).map_or(0, |&e| e as usize),
            None => 0,
        };
        ends.iter().map(move |&end| {
            let end = end as usize;
            let record = &self.data[start..end];
            start = end;
            record
        })
    }

    /// The bytes of the records at positions `range` together (from the offsets: no pass over them).
    pub fn range_byte_len(&self, range: std::ops::Range<usize>) -> usize {
        let offset = |records: usize| match records.min(self.ends.len()).checked_sub(1) {
            Some(last) => self.ends[last] as usize,
            None => 0,
        };
        offset(range.end).saturating_sub(offset(range.start))
    }

    /// Keeps the first `len` records (no-op when it has no more).
    pub fn truncate(&mut self, len: usize) {
        if len < self.ends.len() {
            let end = if len == 0 { 0 } else { self.ends[len - 1] as usize };
            self.ends.truncate(len);
            self.data.truncate(end);
            self.keys.truncate(self.keys.partition_point(|(start, _)| (*start as usize) < len));
            self.origins.truncate(len);
            if let Some(metadata) = self.source_metadata.as_deref_mut() {
                metadata.records.truncate(len);
            }
        }
    }

    /// Removes every record, keeping the allocation.
    pub fn clear(&mut self) {
        self.data.clear();
        self.ends.clear();
        self.keys.clear();
        self.origins.clear();
        self.source_metadata = None;
    }
}

/// What travels between the stages of the dataflow (serializable: records are exchanged between
/// workers by partition).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Records {
    /// Records on their way to the sinks.
    Deliver(RecordBatch),
    /// Records a transform could not process, on their way to the error output of every sink they
    /// would have reached.
    Failed(FailedRecords),
    /// Source records as they arrived, before any transform, for a sink with `backup = "all"`
    /// (Firehose's source-record backup).
    Backup(RecordBatch),
}

impl Records {
    /// Number of records.
    pub fn len(&self) -> usize {
        match self {
            Records::Deliver(batch) | Records::Backup(batch) => batch.len(),
            Records::Failed(failed) => failed.records.len(),
        }
    }

    /// Whether it holds no record.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Total bytes of record data.
    pub fn byte_len(&self) -> usize {
        match self {
            Records::Deliver(batch) | Records::Backup(batch) => batch.byte_len(),
            Records::Failed(failed) => failed.records.byte_len(),
        }
    }
}

/// Records a transform could not process, as they entered it, each with why.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FailedRecords {
    /// `processing-failed` or `decompression-failed`.
    pub output_type: ErrorOutputType,
    /// The records as they entered the transform that failed (with their arrival time).
    pub records: RecordBatch,
    /// One per record, in order.
    pub failures: Vec<RecordFailure>,
}

impl FailedRecords {
    /// No failed records yet, of `output_type`, that arrived at `arrival_ms`.
    pub fn new(output_type: ErrorOutputType, arrival_ms: i64) -> Self {
        FailedRecords { output_type, records: RecordBatch::with_capacity(arrival_ms, 0), failures: Vec::new() }
    }

    /// Adds `record` with its failure.
    pub fn push(&mut self, record: &[u8], failure: RecordFailure) {
        self.records.push(record);
        self.failures.push(failure);
    }
}

/// Why one record failed in a transform: the error document's `errorCode`, `errorMessage`,
/// `attemptsMade` and, for a Lambda function, `lambdaArn`.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RecordFailure {
    /// Machine-readable, e.g. `Lambda.ProcessingFailed`.
    pub code: Arc<str>,
    /// What went wrong.
    pub message: Arc<str>,
    /// Attempts made (invocations of a function; 1 for a local transform).
    pub attempts: u32,
    /// The function's ARN or URL, for a `lambda` transform.
    pub lambda_arn: Option<Arc<str>>,
}

impl RecordFailure {
    /// A failure found in this process, at the first attempt (not a function's).
    pub fn local(code: impl Into<Arc<str>>, message: impl Into<Arc<str>>) -> Self {
        RecordFailure { code: code.into(), message: message.into(), attempts: 1, lambda_arn: None }
    }
}

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_end_is_no_part_of_a_record() {
        for (line, record) in [
            (&b"a\n"[..], &b"a"[..]),
            (b"a\r\n", b"a"),
            (b"a\r", b"a"),
            (b"a", b"a"),
            (b"a\n\n", b"a\n"),
            (b"a\rb", b"a\rb"),
            (b"\r\n", b""),
        ] {
            assert_eq!(without_line_end(line), record, "{:?}", String::from_utf8_lossy(line));
        }
    }

    #[test]
    fn a_range_s_bytes_come_from_the_offsets_as_its_records_add_up() {
        let mut batch = RecordBatch::with_capacity(0, 0);
        for record in [&b"a"[..], b"", b"bcd", b"ef"] {
            batch.push(record);
        }
        for (start, end) in [(0, 4), (1, 3), (2, 2), (3, 9), (5, 7), (0, 0)] {
            let added: usize = batch.range(start..end).map(<[u8]>::len).sum();
            assert_eq!(batch.range_byte_len(start..end), added, "{start}..{end}");
        }
    }

    #[test]
    fn a_dropped_batchs_buffer_starts_the_threads_next_batch_empty() {
        // Each test runs on its own thread: its spares are its own.
        let mut first = RecordBatch::with_capacity(1, 1 << 20);
        first.push(b"left behind");
        let buffer = first.data.as_ptr();
        drop(first);
        let second = RecordBatch::with_capacity(2, 1 << 20);
        assert_eq!(second.data.as_ptr(), buffer, "the spare was used");
        assert!(second.is_empty() && second.data.is_empty());
        // A larger batch than the spare holds gets a buffer of its own, the spare stays.
        let larger = RecordBatch::with_capacity(3, 2 << 20);
        assert_ne!(larger.data.as_ptr(), buffer);
        assert!(larger.data.capacity() >= 2 << 20);
        drop(second);
        // A small batch neither takes a spare nor leaves one.
        let small = RecordBatch::with_capacity(4, 100);
        assert_ne!(small.data.as_ptr(), buffer);
        drop(small);
        drop(larger);
        SPARE.with(|spare| {
            let spare = spare.borrow();
            assert_eq!(spare.len(), SPARE_BUFFERS, "two kept, the small one not");
            assert!(spare.iter().all(|b| b.is_empty() && RECYCLED.contains(&b.capacity())));
        });
        // No more than SPARE_BUFFERS are kept, whatever is dropped.
        let many: Vec<RecordBatch> = (0..5).map(|i| RecordBatch::with_capacity(i, 512 << 10)).collect();
        drop(many);
        SPARE.with(|spare| assert_eq!(spare.borrow().len(), SPARE_BUFFERS));
        // Another thread does not see this one's spares.
        let elsewhere = std::thread::spawn(|| SPARE.with(|spare| spare.borrow().len())).join().unwrap();
        assert_eq!(elsewhere, 0);
    }

    #[test]
    fn a_batch_survives_serde_and_the_log_format_whole() {
        let mut batch = RecordBatch::with_capacity(9, 1 << 20);
        batch.push(b"{\"a\":1}");
        batch.push(b"");
        batch.push(&[0xff, 0x00, b'\n']);
        let json = serde_json::to_vec(&batch).unwrap();
        let back: RecordBatch = serde_json::from_slice(&json).unwrap();
        assert_eq!(back, batch);
        assert_eq!(RecordBatch::from_bytes(&batch.to_bytes()), Some(batch));
    }

    #[test]
    fn a_claimed_batch_counts_its_bytes_once_until_taken_in_or_dropped() {
        let budget = crate::operators::InflightBudget::new(1 << 20);
        // This process runs workers 2 and 3.
        let exchange = ExchangeBudget { inflight: std::sync::Arc::clone(&budget), local_workers: 2..4 };
        let mut batch = RecordBatch::with_capacity(7, 0);
        batch.push(b"twelve bytes");
        // Bound for another process: not counted here.
        batch.claim_budget(&exchange, 0);
        assert_eq!((budget.held(), batch.claim.bytes()), (0, 0));
        batch.claim_budget(&exchange, 3);
        assert_eq!((budget.held(), batch.claim.bytes()), (12, 12));
        // Claiming again replaces the claim; it does not add to it.
        batch.claim_budget(&exchange, 2);
        assert_eq!(budget.held(), 12);
        // A copy, or the batch as another process receives it, holds nothing.
        let copy = batch.clone();
        assert_eq!((copy.claim.bytes(), copy == batch), (0, true));
        let sent: RecordBatch = serde_json::from_str(&serde_json::to_string(&batch).unwrap()).unwrap();
        assert_eq!((sent.claim.bytes(), sent == batch), (0, true));
        drop((copy, sent));
        assert_eq!(budget.held(), 12, "only the batch that was counted releases");
        batch.release_budget();
        batch.release_budget();
        assert_eq!((budget.held(), batch.claim.bytes()), (0, 0), "released once");
        batch.claim_budget(&exchange, 2);
        drop(batch);
        assert_eq!(budget.held(), 0, "a dropped batch releases what it counted");
        assert_eq!(budget.peak(), 12);
    }

    #[test]
    fn source_metadata_follows_its_records_through_pushes_and_truncation() {
        let mut batch = RecordBatch::with_capacity(0, 0);
        batch.push_described(b"before", Some("{}".into()));
        assert_eq!(batch.record_metadata(0), None, "kept only once the source is described");
        batch.describe_source(vec![("sourceKinesisStreamArn".into(), "\"arn\"".into())], "kinesisRecordMetadata");
        batch.push_described(b"a", Some(r#"{"n":1}"#.into()));
        batch.push_described(b"b", None);
        batch.push_described(b"c", Some(r#"{"n":3}"#.into()));
        let said: Vec<Option<&str>> = (0..5).map(|i| batch.record_metadata(i)).collect();
        assert_eq!(said, [None, Some(r#"{"n":1}"#), None, Some(r#"{"n":3}"#), None]);
        assert_eq!(batch.source_metadata().map(|m| m.record_member.as_str()), Some("kinesisRecordMetadata"));
        // It crosses to another process with the batch (cluster mode's exchange).
        let copied: RecordBatch =
            serde_json::from_slice(&serde_json::to_vec(&batch).unwrap_or_default()).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(copied.record_metadata(3), Some(r#"{"n":3}"#));
        batch.truncate(2);
        assert_eq!((batch.record_metadata(1), batch.record_metadata(3)), (Some(r#"{"n":1}"#), None));
        batch.clear();
        assert!(batch.source_metadata().is_none());
    }

    #[test]
    fn origins_follow_their_records_through_pushes_and_truncation() {
        let mut batch = RecordBatch::with_capacity(7, 0);
        batch.push(b"unlogged");
        assert_eq!(batch.origin(0), None);
        let origin = Origin { log: 1, seq: 2, index: 3, replay_floor: 0 };
        batch.push_carrying(b"logged", Some(origin), None);
        batch.push(b"after");
        assert_eq!((batch.origin(0), batch.origin(1), batch.origin(2)), (None, Some(origin), None));
        batch.truncate(1);
        batch.push(b"again");
        assert_eq!(batch.origin(1), None, "a truncated record's origin is gone");
        batch.set_log_entry(4, 5, 6);
        assert_eq!(batch.origin(1), Some(Origin { log: 4, seq: 5, index: 1, replay_floor: 6 }));
        // The log holds records, not origins: a replayed entry gets them again when read.
        assert_eq!(RecordBatch::from_bytes(&batch.to_bytes()).and_then(|b| b.origin(0)), None);
    }

    #[test]
    fn keeps_records_exactly_and_in_order() {
        let mut batch = RecordBatch::with_capacity(7, 0);
        batch.push(b"one");
        batch.push(b"");
        batch.push(b"three\n");
        let records: Vec<&[u8]> = batch.iter().collect();
        assert_eq!(records, vec![&b"one"[..], b"", b"three\n"]);
        assert_eq!(batch.len(), 3);
        assert_eq!(batch.byte_len(), 9);
        batch.truncate(1);
        assert_eq!(batch.iter().collect::<Vec<_>>(), vec![&b"one"[..]]);
        assert_eq!(batch.byte_len(), 3);
    }

    #[test]
    fn keeps_partition_keys_beside_their_records() {
        let mut batch = RecordBatch::with_capacity(7, 0);
        batch.push(b"a");
        let keys: PartitionKeys = Arc::from(vec![("k".to_string(), "v".to_string())]);
        batch.push_with_keys(b"b", Some(&keys));
        batch.push(b"c");
        assert_eq!(batch.partition_keys(0), None);
        assert_eq!(batch.partition_keys(1), Some(&keys));
        assert_eq!(batch.partition_keys(2), None);
    }

    proptest::proptest! {
        /// Keys kept as runs answer per record exactly as a key per record would, whatever the
        /// mix of pushes (keys shared, equal but separate, none), truncation included.
        #[test]
        fn key_runs_answer_as_keys_per_record(pushes in proptest::collection::vec((0usize..4, 0usize..3), 0..40), cut in 0usize..45) {
            let sets: Vec<PartitionKeys> = (0..3).map(|k| Arc::from(vec![("k".to_string(), k.to_string())])).collect();
            let mut batch = RecordBatch::with_capacity(0, 0);
            let mut expected: Vec<Option<PartitionKeys>> = Vec::new();
            for (i, &(how, set)) in pushes.iter().enumerate() {
                let record = i.to_string();
                let keys = match how {
                    0 => None,
                    // An equal set in its own allocation.
                    1 => Some(Arc::from(sets[set].to_vec())),
                    _ => Some(Arc::clone(&sets[set])),
                };
                match (how, &keys) {
                    (0, _) if i % 2 == 0 => batch.push(record.as_bytes()),
                    (0, _) => batch.push_with(|out| { out.extend_from_slice(record.as_bytes()); Ok::<(), ()>(()) }).unwrap(),
                    _ => batch.push_carrying(record.as_bytes(), None, keys.as_ref()),
                }
                expected.push(keys);
            }
            let check = |batch: &RecordBatch, expected: &[Option<PartitionKeys>]| -> Result<(), proptest::test_runner::TestCaseError> {
                for i in 0..expected.len() + 2 {
                    proptest::prop_assert_eq!(batch.partition_keys(i), expected.get(i).and_then(Option::as_ref));
                    let (keys, end) = batch.partition_key_run(i);
                    if i < expected.len() {
                        proptest::prop_assert!(end > i && end <= expected.len());
                        proptest::prop_assert!((i..end).all(|j| expected[j] == expected[i]));
                        proptest::prop_assert!(end == expected.len() || expected[end] != expected[i]);
                        proptest::prop_assert_eq!(keys, expected[i].as_ref());
                    } else {
                        proptest::prop_assert_eq!((keys, end), (None, i));
                    }
                }
                Ok(())
            };
            check(&batch, &expected)?;
            batch.truncate(cut);
            expected.truncate(cut);
            check(&batch, &expected)?;
            // Pushing after a cut starts from the kept records' keys.
            batch.push(b"after");
            expected.push(None);
            check(&batch, &expected)?;
        }
    }
}

//! Buffering: records become objects, encoded and compressed as they arrive, closed by size or age.
//!
//! One [`ObjectBatcher`] per (sink, worker). It keeps at most one open data object (encoded with the
//! sink's [`ObjectFormat`]) and one open error-output object per [`ErrorOutputType`] (NDJSON error
//! documents, compressed with the format's `compression_format`: as the data objects are, and not
//! at all beside Parquet's). An object is sealed when its bytes before compression
//! reach the size hint, when it holds the format's most records, when its oldest record has waited
//! the interval, or at end of input. Memory is the compressed bytes of the open objects, never the
//! input. Records the format refuses go, alone, to the error output as Firehose error documents.
//! Guarantees: every appended record ends up in exactly one sealed object (data or error output),
//! and a sealed object records the oldest epoch of its records so the dataflow can hold that epoch
//! until it is stored.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;

use crate::config::SinkSettings;
use crate::contract::{Payload, PayloadOrigins, RecordPosition};
use crate::error_output::{ErrorDocument, ErrorOutputType, Processing, Reason};
use crate::format::{self, EncodeError, ObjectEncoder, ObjectFormat};
use crate::record::{FailedRecords, Origin, PartitionKeys, RecordBatch, Records, now_ms};

/// Firehose-style error code of a record that could not be converted to the sink's format.
pub const MALFORMED_DATA: &str = "DataFormatConversion.MalformedData";

/// Whether an object holds delivered records or failed ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ObjectKind {
    /// Records in the sink's format.
    Data,
    /// Error documents (or backed-up source records), under the error prefix.
    ErrorOutput {
        /// Why its records are there (`!{firehose:error-output-type}`).
        output_type: ErrorOutputType,
    },
}

/// A finished object on its way to the sink.
#[derive(Debug, Clone)]
pub struct SealedObject {
    /// Data or error output.
    pub kind: ObjectKind,
    /// Oldest dataflow epoch of its records (the capability the dataflow holds for it).
    pub epoch: u64,
    /// Arrival time of its oldest record.
    pub oldest_arrival_ms: i64,
    /// Bytes before compression.
    pub raw_bytes: u64,
    /// What the sink stores (for a part, this part's bytes).
    pub payload: Payload,
    /// A whole object, or one step of an object uploaded in parts.
    pub upload: UploadStep,
}

/// How an object reaches its sink.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UploadStep {
    /// In one piece, when sealed.
    Whole,
    /// A part of object `object` (numbered per batcher), uploaded while the object grows; more follow.
    Part {
        /// The object.
        object: u64,
    },
    /// The last bytes of object `object`, sealed: upload them and complete the object.
    Last {
        /// The object.
        object: u64,
        /// Bytes already sent in parts.
        sent: u64,
    },
}

/// Size of the parts of an object uploaded while it grows (S3 wants at least 5 MiB but the last).
pub const PART_BYTES: usize = 8 << 20;

struct OpenObject {
    encoder: Box<dyn ObjectEncoder>,
    opened: Instant,
    oldest_arrival_ms: i64,
    epoch: u64,
    records: u64,
    /// Set when the first part is sent: the key and this object's number (boxed: few objects
    /// are streamed, and a partitioned sink keeps thousands open).
    streaming: Option<Box<(String, u64)>>,
    /// Bytes sent in parts.
    sent: u64,
}

impl OpenObject {
    /// An object of `format`; `one_of_many` for a partition's (see [`ObjectFormat::open_one_of_many`]).
    fn open(
        format: &dyn ObjectFormat,
        one_of_many: bool,
        epoch: u64,
        arrival_ms: i64,
        now: Instant,
    ) -> std::io::Result<Self> {
        Ok(OpenObject {
            encoder: if one_of_many { format.open_one_of_many()? } else { format.open()? },
            opened: now,
            oldest_arrival_ms: arrival_ms,
            epoch,
            records: 0,
            streaming: None,
            sent: 0,
        })
    }

    fn include(&mut self, epoch: u64, arrival_ms: i64) {
        self.epoch = self.epoch.min(epoch);
        self.oldest_arrival_ms = self.oldest_arrival_ms.min(arrival_ms);
        self.records += 1;
    }
}

/// What the batchers of one sink on one worker share (a partitioned sink has one per partition).
#[derive(Clone)]
struct BatcherConfig {
    settings: Arc<SinkSettings>,
    /// The error output's format: NDJSON documents, compressed like the sink's data.
    error_format: Arc<dyn ObjectFormat>,
    /// Upload objects in parts of this size while they grow (sinks that support it).
    part_bytes: Option<usize>,
    /// Records converted and not, since last taken (a format that converts).
    conversions: Arc<ConversionTally>,
}

/// Records a converting format (Parquet) converted (Firehose's `SucceedConversion`) and could not
/// convert (`FailedConversion`, sent to `format-conversion-failed`), with their bytes as they
/// arrived.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Conversions {
    /// Records converted.
    pub succeeded_records: u64,
    /// Their bytes.
    pub succeeded_bytes: u64,
    /// Records that could not be converted.
    pub failed_records: u64,
    /// Their bytes.
    pub failed_bytes: u64,
}

/// [`Conversions`] shared by the batchers of one sink on one worker (added once per batch).
#[derive(Debug, Default)]
struct ConversionTally([std::sync::atomic::AtomicU64; 4]);

impl ConversionTally {
    fn add(&self, c: Conversions) {
        let values = [c.succeeded_records, c.succeeded_bytes, c.failed_records, c.failed_bytes];
        for (counter, value) in self.0.iter().zip(values) {
            if value > 0 {
                counter.fetch_add(value, std::sync::atomic::Ordering::Relaxed);
            }
        }
    }

    fn take(&self) -> Conversions {
        let [a, b, c, d] = &self.0;
        let take = |x: &std::sync::atomic::AtomicU64| x.swap(0, std::sync::atomic::Ordering::Relaxed);
        Conversions {
            succeeded_records: take(a),
            succeeded_bytes: take(b),
            failed_records: take(c),
            failed_bytes: take(d),
        }
    }
}

/// Builds one sink's objects on one worker.
pub struct ObjectBatcher {
    config: Arc<BatcherConfig>,
    objects_streamed: u64,
    data: Option<OpenObject>,
    errors: BTreeMap<ErrorOutputType, OpenObject>,
    /// The partition keys its data objects are named with (dynamic partitioning).
    partition: Option<PartitionKeys>,
    /// Where the open data object's records came from, once a record read from a log arrived
    /// (boxed: a partitioned sink keeps thousands of batchers).
    origins: Option<Box<OriginState>>,
}

/// The origins of a batcher's open data object.
#[derive(Debug, Default)]
struct OriginState {
    /// The open data object's record positions.
    open: PayloadOrigins,
    /// The origin of the last record appended and which part of it it was (a transform may have
    /// made several records of one, and they may span two objects): the next position follows.
    last: Option<(Origin, u32)>,
}

impl std::fmt::Debug for ObjectBatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ObjectBatcher")
            .field("format", &self.config.settings.format.describe())
            .field("buffered_records", &self.buffered_records())
            .finish()
    }
}

impl ObjectBatcher {
    /// A batcher for a sink's settings.
    pub fn new(settings: Arc<SinkSettings>) -> Self {
        let error_format = format::ndjson(settings.format.compression_format());
        ObjectBatcher {
            config: Arc::new(BatcherConfig { settings, error_format, part_bytes: None, conversions: Arc::default() }),
            objects_streamed: 0,
            data: None,
            errors: BTreeMap::new(),
            partition: None,
            origins: None,
        }
    }

    /// A batcher like this one for one partition of a partitioned sink: its data objects are
    /// named with the values of `keys` (in the order of the prefix's partition keys).
    pub fn for_partition(&self, keys: PartitionKeys) -> Self {
        ObjectBatcher {
            config: Arc::clone(&self.config),
            objects_streamed: 0,
            data: None,
            errors: BTreeMap::new(),
            partition: Some(keys),
            origins: None,
        }
    }

    /// About how much memory its open objects hold (their buffers and compressors).
    pub fn open_bytes(&self) -> u64 {
        self.data.iter().chain(self.errors.values()).map(|o| o.encoder.memory()).sum()
    }

    /// The bytes of its partition key names and values.
    pub fn partition_key_bytes(&self) -> u64 {
        self.partition.iter().flat_map(|keys| keys.iter()).map(|(k, v)| (k.len() + v.len()) as u64).sum()
    }

    /// What its sink's batchers on this worker converted and did not since last asked ([`Conversions`];
    /// zero for a format that does not convert).
    pub fn take_conversions(&self) -> Conversions {
        self.config.conversions.take()
    }

    /// Uploads data objects in parts of `part_bytes` while they grow (the sink must support it).
    pub fn with_parts(mut self, part_bytes: usize) -> Self {
        Arc::make_mut(&mut self.config).part_bytes = Some(part_bytes.max(1));
        self
    }

    /// Sends the data object's finished bytes as a part once they reach the part size.
    fn send_part_if_full(&mut self, sealed: &mut Vec<SealedObject>) {
        let Some(part_bytes) = self.config.part_bytes else { return };
        let Some(object) = self.data.as_mut() else { return };
        if object.encoder.ready_len() < part_bytes {
            return;
        }
        let s = &self.config.settings;
        let (key, id) = &mut **object.streaming.get_or_insert_with(|| {
            self.objects_streamed += 1;
            Box::new((data_key(s, self.partition.as_ref(), object.oldest_arrival_ms), self.objects_streamed))
        });
        let body = object.encoder.take_ready();
        object.sent += body.len() as u64;
        sealed.push(SealedObject {
            kind: ObjectKind::Data,
            epoch: object.epoch,
            oldest_arrival_ms: object.oldest_arrival_ms,
            raw_bytes: 0,
            payload: Payload {
                key: key.clone(),
                body: Bytes::from(body),
                content_type: s.format.content_type(),
                content_encoding: s.format.content_encoding(),
                records: 0,
                origins: None,
            },
            upload: UploadStep::Part { object: *id },
        });
    }

    /// Adds one record to the open data object (opening one if needed); `Ok(Err(reason))` when the
    /// format refuses the record, in which case nothing of it was added.
    fn append_data(
        &mut self,
        record: &[u8],
        origin: Option<Origin>,
        epoch: u64,
        arrival_ms: i64,
        now: Instant,
    ) -> std::io::Result<Result<(), String>> {
        let position = origin.map(|o| {
            let state = self.origins.get_or_insert_default();
            let same = |(last, _): &(Origin, u32)| (last.log, last.seq, last.index) == (o.log, o.seq, o.index);
            let part = state.last.filter(same).map_or(0, |(_, part)| part.saturating_add(1));
            state.last = Some((o, part));
            RecordPosition::new(o, part)
        });
        let object = match &mut self.data {
            Some(object) => object,
            empty => {
                let one_of_many = self.partition.is_some();
                empty.insert(OpenObject::open(
                    self.config.settings.format.as_ref(),
                    one_of_many,
                    epoch,
                    arrival_ms,
                    now,
                )?)
            }
        };
        match object.encoder.append_arrived(record, arrival_ms) {
            Ok(()) => {
                if let Some(state) = self.origins.as_deref_mut() {
                    state.open.record(object.records as usize, position);
                }
                object.include(epoch, arrival_ms);
                Ok(Ok(()))
            }
            Err(e) => {
                // An object opened for a refused record holds nothing: it must not hold the
                // record's epoch or start an interval.
                if object.records == 0 {
                    self.data = None;
                }
                match e {
                    EncodeError::Record(reason) => Ok(Err(reason)),
                    EncodeError::Io(e) => Err(e),
                }
            }
        }
    }

    /// Encodes every record of `batch` (which arrived at `epoch`) into the open objects; objects
    /// that reach the size hint are sealed into `sealed`.
    pub fn append(
        &mut self,
        batch: &RecordBatch,
        epoch: u64,
        now: Instant,
        sealed: &mut Vec<SealedObject>,
    ) -> std::io::Result<()> {
        self.append_from(batch, 0..batch.len(), epoch, now, sealed)
    }

    /// [`Self::append`] for the records at `run` in `batch`.
    pub fn append_from(
        &mut self,
        batch: &RecordBatch,
        run: std::ops::Range<usize>,
        epoch: u64,
        now: Instant,
        sealed: &mut Vec<SealedObject>,
    ) -> std::io::Result<()> {
        let size_limit = self.config.settings.hints.size_bytes;
        let max_records = self.config.settings.format.max_records();
        let arrival_ms = batch.arrival_ms;
        let mut conversions = Conversions::default();
        for (index, record) in run.clone().zip(batch.range(run)) {
            match self.append_data(record, batch.origin(index), epoch, arrival_ms, now)? {
                Ok(()) => {
                    conversions.succeeded_records += 1;
                    conversions.succeeded_bytes += record.len() as u64;
                    if self.data.as_ref().is_some_and(|o| o.encoder.size() >= size_limit || o.records >= max_records) {
                        self.seal_data(sealed)?;
                    } else {
                        self.send_part_if_full(sealed);
                    }
                }
                Err(message) => {
                    conversions.failed_records += 1;
                    conversions.failed_bytes += record.len() as u64;
                    let document = ErrorDocument::new(
                        record,
                        arrival_ms,
                        Reason::Conversion { last_error_code: MALFORMED_DATA, last_error_message: &message },
                        1,
                        now_ms(),
                    );
                    self.write_document(ErrorOutputType::FormatConversionFailed, &document, epoch, now, sealed)?;
                }
            }
        }
        if self.config.settings.format.converts() {
            self.config.conversions.add(conversions);
        }
        Ok(())
    }

    /// Writes source records, as they arrived, to the `source-record-backup` error output (a sink
    /// with `backup = "all"`; the runtime sends it every source record it reads, before transforms).
    pub fn append_backup(
        &mut self,
        batch: &RecordBatch,
        epoch: u64,
        now: Instant,
        sealed: &mut Vec<SealedObject>,
    ) -> std::io::Result<()> {
        for record in batch.iter() {
            self.write_error_output(ErrorOutputType::SourceRecordBackup, record, epoch, batch.arrival_ms, now, sealed)?;
        }
        Ok(())
    }

    /// Writes the records a transform failed to the error output of their type, one error document
    /// each (the record as it entered the transform, with its reason).
    pub fn append_failed(
        &mut self,
        failed: &FailedRecords,
        epoch: u64,
        now: Instant,
        sealed: &mut Vec<SealedObject>,
    ) -> std::io::Result<()> {
        let ended = now_ms();
        let arrival_ms = failed.records.arrival_ms;
        for (record, failure) in failed.records.iter().zip(&failed.failures) {
            let reason = Reason::Processing(Processing {
                error_code: &failure.code,
                error_message: &failure.message,
                lambda_arn: failure.lambda_arn.as_deref(),
            });
            let document = ErrorDocument::new(record, arrival_ms, reason, failure.attempts, ended);
            self.write_document(failed.output_type, &document, epoch, now, sealed)?;
        }
        Ok(())
    }

    /// Adds whatever `records` are (records to encode, failed records, source backups).
    pub fn append_records(
        &mut self,
        records: &Records,
        epoch: u64,
        now: Instant,
        sealed: &mut Vec<SealedObject>,
    ) -> std::io::Result<()> {
        match records {
            Records::Deliver(batch) => self.append(batch, epoch, now, sealed),
            Records::Failed(failed) => self.append_failed(failed, epoch, now, sealed),
            Records::Backup(batch) => self.append_backup(batch, epoch, now, sealed),
        }
    }

    /// Writes one error document as a line of the error output of `kind`.
    fn write_document(
        &mut self,
        kind: ErrorOutputType,
        document: &ErrorDocument<'_>,
        epoch: u64,
        now: Instant,
        sealed: &mut Vec<SealedObject>,
    ) -> std::io::Result<()> {
        let mut line = Vec::new();
        document.write_line(&mut line);
        self.write_error_output(kind, &line, epoch, document.arrival_timestamp, now, sealed)
    }

    /// Adds `line` (one record's document, or a backed-up record) to the open error-output object
    /// of `kind`, opening one if needed and sealing it at the size hint.
    fn write_error_output(
        &mut self,
        kind: ErrorOutputType,
        line: &[u8],
        epoch: u64,
        arrival_ms: i64,
        now: Instant,
        sealed: &mut Vec<SealedObject>,
    ) -> std::io::Result<()> {
        let object = match self.errors.entry(kind) {
            std::collections::btree_map::Entry::Occupied(o) => o.into_mut(),
            std::collections::btree_map::Entry::Vacant(v) => {
                v.insert(OpenObject::open(self.config.error_format.as_ref(), false, epoch, arrival_ms, now)?)
            }
        };
        object.encoder.append(line).map_err(|e| match e {
            EncodeError::Io(e) => e,
            // NDJSON takes every line.
            EncodeError::Record(reason) => std::io::Error::other(reason),
        })?;
        object.include(epoch, arrival_ms);
        if object.encoder.size() >= self.config.settings.hints.size_bytes {
            self.seal_errors(kind, sealed)?;
        }
        Ok(())
    }

    fn seal_data(&mut self, sealed: &mut Vec<SealedObject>) -> std::io::Result<()> {
        // A streamed object has records: parts are only cut after a record was added.
        if let Some(mut object) = self.data.take().filter(|o| o.records > 0) {
            let s = &self.config.settings;
            let streaming = object.streaming.take();
            let key = match streaming.as_deref() {
                Some((key, _)) => key.clone(),
                None => data_key(s, self.partition.as_ref(), object.oldest_arrival_ms),
            };
            let sent = object.sent;
            let mut sealed_object =
                seal(object, key, ObjectKind::Data, s.format.content_type(), s.format.content_encoding())?;
            if let Some(state) = self.origins.as_deref_mut() {
                let origins = std::mem::take(&mut state.open);
                sealed_object.payload.origins = (!origins.is_empty()).then(|| Arc::new(origins));
            }
            if let Some((_, id)) = streaming.as_deref() {
                sealed_object.upload = UploadStep::Last { object: *id, sent };
            }
            sealed.push(sealed_object);
        }
        Ok(())
    }

    fn seal_errors(&mut self, kind: ErrorOutputType, sealed: &mut Vec<SealedObject>) -> std::io::Result<()> {
        if let Some(object) = self.errors.remove(&kind) {
            let s = &self.config.settings;
            let key = s.keys.error_key(object.oldest_arrival_ms, kind.name(), &self.config.error_format.extension());
            sealed.push(seal(
                object,
                key,
                ObjectKind::ErrorOutput { output_type: kind },
                self.config.error_format.content_type(),
                self.config.error_format.content_encoding(),
            )?);
        }
        Ok(())
    }

    /// Seals every object whose oldest record has waited the interval hint.
    pub fn seal_expired(&mut self, now: Instant, sealed: &mut Vec<SealedObject>) -> std::io::Result<()> {
        let interval = self.config.settings.hints.interval;
        if self.data.as_ref().is_some_and(|o| now.duration_since(o.opened) >= interval) {
            self.seal_data(sealed)?;
        }
        let expired: Vec<ErrorOutputType> =
            self.errors.iter().filter(|(_, o)| now.duration_since(o.opened) >= interval).map(|(k, _)| *k).collect();
        for kind in expired {
            self.seal_errors(kind, sealed)?;
        }
        Ok(())
    }

    /// Seals everything (end of input).
    pub fn seal_all(&mut self, sealed: &mut Vec<SealedObject>) -> std::io::Result<()> {
        self.seal_data(sealed)?;
        let kinds: Vec<ErrorOutputType> = self.errors.keys().copied().collect();
        for kind in kinds {
            self.seal_errors(kind, sealed)?;
        }
        Ok(())
    }

    /// The oldest epoch of any open object: the capability the operator must hold.
    pub fn oldest_epoch(&self) -> Option<u64> {
        self.data.iter().chain(self.errors.values()).map(|o| o.epoch).min()
    }

    /// The arrival time (ms) of the oldest record in an open object, for `DataFreshness`.
    pub fn oldest_arrival_ms(&self) -> Option<i64> {
        self.data.iter().chain(self.errors.values()).map(|o| o.oldest_arrival_ms).min()
    }

    /// When the next open object expires.
    pub fn next_deadline(&self) -> Option<Instant> {
        let interval = self.config.settings.hints.interval;
        self.data.iter().chain(self.errors.values()).map(|o| o.opened + interval).min()
    }

    /// Bytes in open objects, measured as `size_mb` is (encoded records before compression),
    /// parts already sent included.
    pub fn buffered_bytes(&self) -> u64 {
        self.data.iter().chain(self.errors.values()).map(|o| o.encoder.size()).sum()
    }

    /// Records in open objects.
    pub fn buffered_records(&self) -> u64 {
        self.data.iter().chain(self.errors.values()).map(|o| o.records).sum()
    }
}

/// The key of a data object: the name its format gives it (a request id), or the sink's key.
fn data_key(s: &SinkSettings, partition: Option<&PartitionKeys>, oldest_arrival_ms: i64) -> String {
    s.format.object_key().unwrap_or_else(|| match partition {
        None => s.keys.data_key(oldest_arrival_ms, &s.format.extension()),
        Some(keys) => {
            let values: Vec<&str> = keys.iter().map(|(_, v)| v.as_str()).collect();
            s.keys.partition_data_key(oldest_arrival_ms, &values, &s.format.extension())
        }
    })
}

fn seal(
    object: OpenObject,
    key: String,
    kind: ObjectKind,
    content_type: &'static str,
    content_encoding: Option<&'static str>,
) -> std::io::Result<SealedObject> {
    let raw_bytes = object.encoder.size();
    let body = object.encoder.finish(&key)?;
    Ok(SealedObject {
        kind,
        epoch: object.epoch,
        oldest_arrival_ms: object.oldest_arrival_ms,
        raw_bytes,
        payload: Payload {
            key,
            body: Bytes::from(body),
            content_type,
            content_encoding,
            records: object.records,
            origins: None,
        },
        upload: UploadStep::Whole,
    })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::compression::{Compression, decompress};
    use crate::config::{BackupMode, BufferingHints};
    use crate::keys::ObjectKeys;

    fn settings(format: Arc<dyn ObjectFormat>, size_bytes: u64, interval_s: u64) -> Arc<SinkSettings> {
        let keys = ObjectKeys::new(Some("p/"), None, "s", chrono_tz::Tz::UTC).unwrap_or_else(|e| panic!("{e}"));
        Arc::new(SinkSettings::new(
            format,
            BufferingHints { size_bytes, interval: Duration::from_secs(interval_s) },
            keys,
        ))
    }

    fn batch(arrival: i64, records: &[&str]) -> RecordBatch {
        let mut b = RecordBatch::with_capacity(arrival, 0);
        records.iter().for_each(|r| b.push(r.as_bytes()));
        b
    }

    fn lines(o: &SealedObject) -> Vec<String> {
        let text = decompress(Compression::Gzip, &o.payload.body).unwrap_or_default();
        String::from_utf8_lossy(&text).lines().map(str::to_string).collect()
    }

    #[test]
    fn sealed_data_objects_carry_their_records_log_positions_with_parts_counted() {
        let mut b = ObjectBatcher::new(settings(format::ndjson(Compression::Gzip), 12, 300));
        let (mut sealed, now) = (Vec::new(), Instant::now());
        let mut logged = batch(1, &["a", "b", "c"]);
        logged.set_log_entry(9, 5, 2);
        b.append(&logged, 1, now, &mut sealed).unwrap_or_else(|e| panic!("{e}"));
        // What a transform made of entry 5's record 2 (two records) and of an unlogged record.
        let mut made = RecordBatch::with_capacity(1, 0);
        let record_2 = logged.origin(2);
        made.push_carrying(b"c1", record_2, None);
        made.push_carrying(b"c2", record_2, None);
        made.push_carrying(b"plain", None, None);
        b.append(&made, 1, now, &mut sealed).unwrap_or_else(|e| panic!("{e}"));
        b.seal_all(&mut sealed).unwrap_or_else(|e| panic!("{e}"));
        let positions: Vec<Vec<Option<u64>>> = sealed
            .iter()
            .map(|o| {
                let origins = o.payload.origins.as_deref().cloned().unwrap_or_default();
                (0..o.payload.records as usize).map(|i| origins.get(i).map(|p| p.position)).collect()
            })
            .collect();
        let at = |index: u64, part: u64| Some((index << 32) | part);
        // The first object seals at 12 bytes: a, b, c, c1 and c2.
        assert_eq!(positions, [vec![at(0, 0), at(1, 0), at(2, 0), at(2, 1), at(2, 2)], vec![None]]);
        assert!(sealed[1].payload.origins.is_none(), "an object of unlogged records has no origins");
        let first = sealed[0].payload.origins.as_deref().and_then(|o| o.get(0)).unwrap_or_else(|| panic!("none"));
        assert_eq!((first.log, first.seq, first.replay_floor), (9, 5, 2));
    }

    #[test]
    fn seals_by_size_before_compression() {
        let mut b = ObjectBatcher::new(settings(format::ndjson(Compression::Gzip), 10, 300));
        let mut sealed = Vec::new();
        let now = Instant::now();
        b.append(&batch(1, &["aaaa", "bbbb", "cccc", "dddd"]), 3, now, &mut sealed).unwrap_or_else(|e| panic!("{e}"));
        // 5 bytes each with the newline: sealed after 2 records (10 bytes), twice.
        assert_eq!(sealed.len(), 2);
        assert_eq!(lines(&sealed[0]), ["aaaa", "bbbb"]);
        assert_eq!(sealed[0].raw_bytes, 10);
        assert_eq!(sealed[0].epoch, 3);
        assert!(b.oldest_epoch().is_none());
    }

    #[test]
    fn seals_by_age_and_at_end_and_keeps_the_oldest_epoch_and_arrival() {
        let mut b = ObjectBatcher::new(settings(format::ndjson(Compression::Gzip), 1 << 20, 60));
        let mut sealed = Vec::new();
        let t0 = Instant::now();
        b.append(&batch(2_000, &["x"]), 5, t0, &mut sealed).unwrap_or_else(|e| panic!("{e}"));
        b.append(&batch(1_000, &["y"]), 4, t0, &mut sealed).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(b.oldest_epoch(), Some(4));
        assert_eq!(b.next_deadline(), Some(t0 + Duration::from_secs(60)));
        b.seal_expired(t0 + Duration::from_secs(59), &mut sealed).unwrap_or_else(|e| panic!("{e}"));
        assert!(sealed.is_empty());
        b.seal_expired(t0 + Duration::from_secs(60), &mut sealed).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(sealed.len(), 1);
        assert_eq!(sealed[0].oldest_arrival_ms, 1_000);
        assert_eq!(sealed[0].epoch, 4);
        assert!(sealed[0].payload.key.starts_with("p/1970/01/01/00/s-1-1970-01-01-00-00-01-"));
        b.append(&batch(3_000, &["z"]), 6, t0, &mut sealed).unwrap_or_else(|e| panic!("{e}"));
        b.seal_all(&mut sealed).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(lines(&sealed[1]), ["z"]);
        assert_eq!(b.buffered_records(), 0);
    }

    #[test]
    fn a_record_that_cannot_be_encoded_goes_alone_to_the_error_output() {
        let mut b = ObjectBatcher::new(settings(format::csv(vec!["a".into()], Compression::Gzip), 1 << 20, 60));
        let mut sealed = Vec::new();
        b.append(&batch(7, &[r#"{"a":1}"#, "oops", r#"{"a":2}"#]), 1, Instant::now(), &mut sealed)
            .unwrap_or_else(|e| panic!("{e}"));
        b.seal_all(&mut sealed).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(sealed.len(), 2);
        assert_eq!(lines(&sealed[0]), ["a", "1", "2"]);
        assert!(sealed[0].payload.key.ends_with(".csv.gz"));
        assert_eq!(sealed[1].kind, ObjectKind::ErrorOutput { output_type: ErrorOutputType::FormatConversionFailed });
        assert!(sealed[1].payload.key.starts_with("p/format-conversion-failed/1970/01/01/00/"));
        let doc: serde_json::Value = serde_json::from_str(&lines(&sealed[1])[0]).unwrap_or_default();
        assert_eq!(doc["rawData"], "b29wcw==");
        assert_eq!(doc["lastErrorCode"], "DataFormatConversion.MalformedData");
        assert_eq!(sealed[1].payload.records, 1);
    }

    /// The reference the batcher is checked against: "an object is sealed when its bytes before
    /// compression reach the size hint, or when it has been open for the interval".
    #[derive(Debug, Default, Clone)]
    struct ModelObject {
        body: Vec<u8>,
        records: u64,
        opened_ms: u64,
        epoch: u64,
        oldest_arrival_ms: i64,
    }

    #[derive(Debug, Clone)]
    enum Step {
        /// A batch of records arriving at `arrival_ms`, in epoch `epoch_step` after the last one.
        Append { records: Vec<String>, arrival_ms: i64, epoch_step: u64 },
        /// The clock moves on by `ms`, then expired objects are sealed.
        Tick { ms: u64 },
    }

    fn step() -> impl proptest::strategy::Strategy<Value = Step> {
        use proptest::prelude::*;
        prop_oneof![
            3 => (proptest::collection::vec("[a-z0-9{}\":, ]{0,120}\n?", 0..12), 0i64..5_000, 0u64..2)
                .prop_map(|(records, arrival_ms, epoch_step)| Step::Append { records, arrival_ms, epoch_step }),
            1 => (0u64..4_000).prop_map(|ms| Step::Tick { ms }),
        ]
    }

    /// What a sealed object is, compared field by field with the model's.
    fn observed(o: &SealedObject, compression: Compression) -> (ObjectKind, Vec<u8>, u64, u64, i64) {
        let body = decompress(compression, &o.payload.body).unwrap_or_else(|e| panic!("{e}"));
        (o.kind, body, o.payload.records, o.epoch, o.oldest_arrival_ms)
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(200))]
        /// Random records, sizes and clock steps: the batcher seals exactly what the reference
        /// seals, in the same order, with the same bytes, epochs and arrival times; and what it
        /// holds open is what the reference holds open.
        #[test]
        fn seals_exactly_when_size_or_age_is_reached(
            steps in proptest::collection::vec(step(), 1..60),
            size_bytes in 1u64..2_000,
            interval_ms in 1u64..6_000,
            gzip in proptest::prelude::any::<bool>(),
            backup_all in proptest::prelude::any::<bool>(),
        ) {
            let compression = if gzip { Compression::Gzip } else { Compression::None };
            let keys = ObjectKeys::new(Some("p/"), None, "s", chrono_tz::Tz::UTC).unwrap_or_else(|e| panic!("{e}"));
            let hints = BufferingHints { size_bytes, interval: Duration::from_millis(interval_ms) };
            let settings = Arc::new(SinkSettings {
                backup: if backup_all { BackupMode::All } else { BackupMode::Failed },
                ..SinkSettings::new(format::ndjson(compression), hints, keys)
            });
            let mut batcher = ObjectBatcher::new(Arc::clone(&settings));
            let start = Instant::now();
            let (mut clock_ms, mut epoch) = (0u64, 0u64);
            let mut sealed = Vec::new();
            // The reference: the data object and the backup object, and what each sealed.
            let mut open: [Option<ModelObject>; 2] = [None, None];
            let kinds = [ObjectKind::Data, ObjectKind::ErrorOutput { output_type: ErrorOutputType::SourceRecordBackup }];
            let mut expected = Vec::new();
            let seal = |slot: &mut Option<ModelObject>, kind: ObjectKind, out: &mut Vec<_>| {
                if let Some(o) = slot.take() {
                    out.push((kind, o.body, o.records, o.epoch, o.oldest_arrival_ms));
                }
            };
            for step in steps {
                match step {
                    Step::Append { records, arrival_ms, epoch_step } => {
                        epoch += epoch_step;
                        let mut batch = RecordBatch::with_capacity(arrival_ms, 0);
                        records.iter().for_each(|r| batch.push(r.as_bytes()));
                        batcher.append(&batch, epoch, start + Duration::from_millis(clock_ms), &mut sealed).unwrap_or_else(|e| panic!("{e}"));
                        if backup_all {
                            batcher.append_backup(&batch, epoch, start + Duration::from_millis(clock_ms), &mut sealed).unwrap_or_else(|e| panic!("{e}"));
                        }
                        for (i, slot) in open.iter_mut().enumerate() {
                            if i == 1 && !backup_all {
                                continue;
                            }
                            for r in &records {
                                let o = slot.get_or_insert_with(|| ModelObject { opened_ms: clock_ms, epoch, oldest_arrival_ms: arrival_ms, ..ModelObject::default() });
                                o.body.extend_from_slice(r.as_bytes());
                                if !r.ends_with('\n') {
                                    o.body.push(b'\n');
                                }
                                o.records += 1;
                                o.epoch = o.epoch.min(epoch);
                                o.oldest_arrival_ms = o.oldest_arrival_ms.min(arrival_ms);
                                if o.body.len() as u64 >= size_bytes {
                                    seal(slot, kinds[i], &mut expected);
                                }
                            }
                        }
                    }
                    Step::Tick { ms } => {
                        clock_ms += ms;
                        batcher.seal_expired(start + Duration::from_millis(clock_ms), &mut sealed).unwrap_or_else(|e| panic!("{e}"));
                        for (i, slot) in open.iter_mut().enumerate() {
                            if slot.as_ref().is_some_and(|o| clock_ms - o.opened_ms >= interval_ms) {
                                seal(slot, kinds[i], &mut expected);
                            }
                        }
                    }
                }
                let got: Vec<_> = sealed.iter().map(|o| observed(o, compression)).collect();
                proptest::prop_assert_eq!(&got, &expected);
                let held: u64 = open.iter().flatten().map(|o| o.records).sum();
                proptest::prop_assert_eq!(batcher.buffered_records(), held);
                proptest::prop_assert_eq!(batcher.oldest_epoch(), open.iter().flatten().map(|o| o.epoch).min());
                let deadline = open.iter().flatten().map(|o| start + Duration::from_millis(o.opened_ms + interval_ms)).min();
                proptest::prop_assert_eq!(batcher.next_deadline(), deadline);
            }
            batcher.seal_all(&mut sealed).unwrap_or_else(|e| panic!("{e}"));
            for (i, slot) in open.iter_mut().enumerate() {
                seal(slot, kinds[i], &mut expected);
            }
            let got: Vec<_> = sealed.iter().map(|o| observed(o, compression)).collect();
            proptest::prop_assert_eq!(got, expected);
            proptest::prop_assert_eq!(batcher.buffered_records(), 0);
        }
    }
}

//! Text formats: a [`RecordCodec`] turns each record into bytes (with a header, separators and a
//! trailer around them), and [`TextFormat`] streams them through the sink's compressor, so an open
//! object holds compressed bytes only.
//!
//! Guarantees: a record the codec refuses adds nothing; [`ObjectEncoder::size`] counts bytes before
//! compression; the trailer is written at [`ObjectEncoder::finish`] with the object's key.

use std::sync::Arc;

use super::{EncodeError, ObjectEncoder, ObjectFormat};
use crate::compression::{Compression, ObjectWriter, decompress};

/// How one text format encodes records, and reads them back.
pub trait RecordCodec: Send + Sync + std::fmt::Debug + 'static {
    /// How `sluice validate` shows it.
    fn describe(&self) -> String;
    /// MIME type of the uncompressed content.
    fn content_type(&self) -> &'static str;
    /// The Firehose processors its encoding amounts to ([`ObjectFormat::processors`]).
    fn processors(&self) -> Vec<crate::contract::Processor> {
        Vec::new()
    }
    /// Extension before the compression's (`.csv`; Firehose adds none for raw and NDJSON).
    fn extension(&self) -> &'static str {
        ""
    }
    /// Bytes that start every object (a CSV header row, `{"records":[`).
    fn header(&self) -> Vec<u8> {
        Vec::new()
    }
    /// Appends `record`'s encoded form to `out`; on error `out` is as it was.
    fn encode(&self, record: &[u8], out: &mut Vec<u8>) -> Result<(), String>;
    /// [`Self::encode`] for a record that arrived at `arrival_ms` (epoch ms), which is what the
    /// engine calls: a codec whose encoding names when a record arrived (an OpenSearch index
    /// rotated by arrival day, a Splunk event's `time`) overrides this one; by default the arrival
    /// is not part of the encoding.
    fn encode_arrived(&self, record: &[u8], arrival_ms: i64, out: &mut Vec<u8>) -> Result<(), String> {
        let _ = arrival_ms;
        self.encode(record, out)
    }
    /// Bytes between two records (the comma between JSON array elements).
    fn separator(&self) -> &'static [u8] {
        b""
    }
    /// Bytes that end the object named `key`.
    fn trailer(&self, key: &str) -> Vec<u8> {
        let _ = key;
        Vec::new()
    }
    /// The records of a decompressed object, as encoded.
    fn records_of(&self, text: &[u8]) -> Result<Vec<Vec<u8>>, String>;
    /// See [`ObjectFormat::record_details`].
    fn record_details(&self, key: &str, index: usize) -> Option<serde_json::Map<String, serde_json::Value>> {
        let _ = (key, index);
        None
    }
}

/// A text format: a codec, the compression its objects are streamed through, and what the
/// destination imposes on an object (a request's record limit, its own name).
#[derive(Debug)]
pub struct TextFormat<C> {
    codec: Arc<C>,
    compression: Compression,
    max_records: u64,
    /// Names each object (a request id) instead of the sink's keys.
    name: Option<fn() -> String>,
    /// Each object one compressed stream (an HTTP request body: not every server's decoder reads
    /// concatenated gzip members), compressed whole when it is finished.
    one_stream: bool,
}

impl<C: RecordCodec> TextFormat<C> {
    /// `codec`'s objects compressed with `compression`, named by the sink's keys, without limits.
    pub fn new(codec: C, compression: Compression) -> Self {
        TextFormat { codec: Arc::new(codec), compression, max_records: u64::MAX, name: None, one_stream: false }
    }

    /// Objects of at most `records` records (a request; its byte limit is the sink type's,
    /// [`crate::config::FixedBody::max_bytes`], which bounds `buffer.size_mb`).
    pub fn at_most_records(mut self, records: u64) -> Self {
        self.max_records = records;
        self
    }

    /// Each object one compressed stream, compressed whole when finished: a request body sent
    /// with `Content-Encoding: gzip`, which some servers decode as a single gzip member only.
    pub fn one_stream(mut self) -> Self {
        self.one_stream = true;
        self
    }

    /// Each object named by `name` (a fresh request id) instead of the sink's keys.
    pub fn named_by(mut self, name: fn() -> String) -> Self {
        self.name = Some(name);
        self
    }
}

impl<C: RecordCodec> TextFormat<C> {
    fn open_with(&self, mut writer: ObjectWriter) -> std::io::Result<Box<dyn ObjectEncoder>> {
        writer.write(&self.codec.header())?;
        Ok(Box::new(TextEncoder { codec: Arc::clone(&self.codec), writer, records: 0 }))
    }
}

impl<C: RecordCodec> ObjectFormat for TextFormat<C> {
    fn describe(&self) -> String {
        self.codec.describe()
    }

    fn processors(&self) -> Vec<crate::contract::Processor> {
        self.codec.processors()
    }

    fn open(&self) -> std::io::Result<Box<dyn ObjectEncoder>> {
        if self.one_stream {
            return self.open_with(ObjectWriter::whole(self.compression));
        }
        self.open_with(ObjectWriter::new(self.compression)?)
    }

    fn open_one_of_many(&self) -> std::io::Result<Box<dyn ObjectEncoder>> {
        if self.one_stream {
            return self.open_with(ObjectWriter::whole(self.compression));
        }
        self.open_with(ObjectWriter::in_blocks(self.compression))
    }

    fn content_type(&self) -> &'static str {
        // A ZIP object is an archive (its entry holds the codec's content); other compressions are
        // said by `Content-Encoding`.
        if self.compression == Compression::Zip { "application/zip" } else { self.codec.content_type() }
    }

    fn content_encoding(&self) -> Option<&'static str> {
        self.compression.content_encoding()
    }

    fn extension(&self) -> String {
        format!("{}{}", self.codec.extension(), self.compression.extension())
    }

    fn compression(&self) -> Compression {
        self.compression
    }

    fn max_records(&self) -> u64 {
        self.max_records
    }

    fn object_key(&self) -> Option<String> {
        self.name.map(|name| name())
    }

    fn records_of(&self, object: &[u8]) -> Result<Vec<Vec<u8>>, String> {
        let text = decompress(self.compression, object).map_err(|e| e.to_string())?;
        self.codec.records_of(&text)
    }

    fn record_details(&self, key: &str, index: usize) -> Option<serde_json::Map<String, serde_json::Value>> {
        self.codec.record_details(key, index)
    }
}

/// One text object being written.
struct TextEncoder<C> {
    codec: Arc<C>,
    writer: ObjectWriter,
    records: u64,
}

impl<C: RecordCodec> TextEncoder<C> {
    /// Writes the separator (after the first record) and what `encode` appends, or nothing.
    fn push(&mut self, encode: impl FnOnce(&C, &mut Vec<u8>) -> Result<(), String>) -> Result<(), EncodeError> {
        let separator = if self.records > 0 { self.codec.separator() } else { b"" };
        let codec = &self.codec;
        self.writer
            .write_with(|out| {
                out.extend_from_slice(separator);
                encode(codec, out)
            })?
            .map_err(EncodeError::Record)?;
        self.records += 1;
        Ok(())
    }
}

impl<C: RecordCodec> ObjectEncoder for TextEncoder<C> {
    fn append(&mut self, record: &[u8]) -> Result<(), EncodeError> {
        self.push(|codec, out| codec.encode(record, out))
    }

    fn append_arrived(&mut self, record: &[u8], arrival_ms: i64) -> Result<(), EncodeError> {
        self.push(|codec, out| codec.encode_arrived(record, arrival_ms, out))
    }

    fn size(&self) -> u64 {
        self.writer.uncompressed_len()
    }

    fn memory(&self) -> u64 {
        self.writer.memory()
    }

    fn ready_len(&mut self) -> usize {
        self.writer.output_len()
    }

    fn take_ready(&mut self) -> Vec<u8> {
        self.writer.take_output()
    }

    fn finish(mut self: Box<Self>, key: &str) -> std::io::Result<Vec<u8>> {
        let trailer = self.codec.trailer(key);
        self.writer.write(&trailer)?;
        self.writer.finish_named(&crate::compression::zip::entry_name(key))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_zip_object_is_an_archive_and_other_compressions_keep_the_content_type() {
        assert_eq!(crate::format::ndjson(Compression::Zip).content_type(), "application/zip");
        assert_eq!(crate::format::ndjson(Compression::Zip).content_encoding(), None);
        let gzip = crate::format::ndjson(Compression::Gzip);
        assert_eq!((gzip.content_type(), gzip.content_encoding()), ("application/x-ndjson", Some("gzip")));
    }
}

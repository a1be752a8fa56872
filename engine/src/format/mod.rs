//! Object formats: what a sink's objects are made of, behind one contract.
//!
//! An [`ObjectFormat`] opens [`ObjectEncoder`]s (one per object: append records, bytes so far, the
//! finished output ready to be sent as a part, finish) and turns an encoded object back into its
//! records (the backup of an object a destination refused). The generic formats are one file each:
//! [`mod@raw`], [`mod@ndjson`], [`mod@csv`] (record codecs streamed through a compressor by [`text`]) and
//! [`parquet`]. A sink whose destination takes its own body (an HTTP endpoint's request JSON, a
//! `_bulk` body) provides its format from its own file through the same contract
//! ([`crate::contract::Sink::wire_format`]); the engine never names a sink.
//!
//! Guarantees of every format: a record the format refuses adds nothing to the object (it goes to
//! the error output with the reason); [`ObjectFormat::records_of`] gives back every record of an
//! object it made, as encoded, or says why it cannot.

pub mod csv;
pub mod ndjson;
pub mod parquet;
pub mod raw;
pub mod text;

use std::sync::Arc;

use crate::compression::Compression;

pub use text::{RecordCodec, TextFormat};

/// Why a record was not added to an object.
#[derive(Debug, thiserror::Error)]
pub enum EncodeError {
    /// The record cannot be encoded in this format (the reason goes to the error output).
    #[error("{0}")]
    Record(String),
    /// Writing the object failed (a compressor's memory, a Parquet writer).
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// A format of a sink's objects.
pub trait ObjectFormat: Send + Sync + std::fmt::Debug {
    /// How `sluice validate` shows it, e.g. `ndjson`, `csv(a,b)`, `parquet(12 columns)`.
    fn describe(&self) -> String;
    /// A new, empty object.
    fn open(&self) -> std::io::Result<Box<dyn ObjectEncoder>>;
    /// A new, empty object that is one of many open at once (a partition's): where the format can,
    /// it holds no compressor of its own and compresses each block as an independent member (gzip
    /// members, zstd frames, Snappy streams, which every reader of the format reads back to back)
    /// with the thread's compressor, so its memory is its bytes. By default [`Self::open`].
    fn open_one_of_many(&self) -> std::io::Result<Box<dyn ObjectEncoder>> {
        self.open()
    }
    /// MIME type of an object's content (before any `Content-Encoding`).
    fn content_type(&self) -> &'static str;
    /// `Content-Encoding` of the stored bytes, when the object is compressed as a stream.
    fn content_encoding(&self) -> Option<&'static str>;
    /// Extension of its objects, compression included (`.csv.gz`, `.parquet`).
    fn extension(&self) -> String;
    /// The stream compression, or the page codec inside (Parquet).
    fn compression(&self) -> Compression;
    /// Whether records are converted to a table format (Firehose's DataFormatConversion).
    fn converts(&self) -> bool {
        false
    }
    /// Firehose's `CompressionFormat`: the compression of the object as a whole, none for a
    /// converted object (it compresses inside its file, and Firehose requires `UNCOMPRESSED`
    /// then). The sink's error output is compressed with it, as Firehose's is: a Parquet sink's
    /// error documents are plain NDJSON.
    fn compression_format(&self) -> Compression {
        if self.converts() { Compression::None } else { self.compression() }
    }
    /// Most records in one object.
    fn max_records(&self) -> u64 {
        u64::MAX
    }
    /// The Firehose processors this format amounts to (NDJSON: `AppendDelimiterToRecord`), for
    /// DescribeDeliveryStream.
    fn processors(&self) -> Vec<crate::contract::Processor> {
        Vec::new()
    }
    /// A name the format gives each object itself (a request id), instead of the sink's object key.
    fn object_key(&self) -> Option<String> {
        None
    }
    /// The records an object of this format holds, as they were encoded (the backup's inverse).
    fn records_of(&self, object: &[u8]) -> Result<Vec<Vec<u8>>, String>;
    /// Fields the error document of record `index` of the object or request `key` carries
    /// besides Firehose's common ones, when the destination names records (Splunk's `EventId`).
    fn record_details(&self, key: &str, index: usize) -> Option<serde_json::Map<String, serde_json::Value>> {
        let _ = (key, index);
        None
    }
}

/// One object being encoded.
pub trait ObjectEncoder {
    /// Adds one record; a refused record adds nothing.
    fn append(&mut self, record: &[u8]) -> Result<(), EncodeError>;
    /// [`Self::append`] for a record that arrived at `arrival_ms` (epoch ms), which is what the
    /// engine calls; a format whose encoding names the arrival passes it on to its codec.
    fn append_arrived(&mut self, record: &[u8], arrival_ms: i64) -> Result<(), EncodeError> {
        let _ = arrival_ms;
        self.append(record)
    }
    /// Bytes counted against the size hint (before compression).
    fn size(&self) -> u64;
    /// About how much memory the open object holds (what a partitioned sink's budget counts); by
    /// default its size before compression.
    fn memory(&self) -> u64 {
        self.size()
    }
    /// Finished output bytes not yet taken (what can be sent as a part while the object grows).
    fn ready_len(&mut self) -> usize;
    /// Takes the finished output so far; the object continues after it.
    fn take_ready(&mut self) -> Vec<u8>;
    /// Finishes the object named `key` (a format whose body carries its name writes it in).
    fn finish(self: Box<Self>, key: &str) -> std::io::Result<Vec<u8>>;
}

/// The config names of the generic formats.
pub const NAMES: &[&str] = &["raw", "ndjson", "csv", "parquet"];

/// The formats that take no keys of their own, by config name, given the sink's compression
/// (`csv` needs `columns` and `parquet` a schema: the config reads those itself).
pub fn plain(name: &str) -> Option<fn(Compression) -> Arc<dyn ObjectFormat>> {
    match name {
        "raw" => Some(raw),
        "ndjson" => Some(ndjson),
        _ => None,
    }
}

/// `format = "raw"` compressed with `compression`.
pub fn raw(compression: Compression) -> Arc<dyn ObjectFormat> {
    Arc::new(TextFormat::new(raw::Raw, compression))
}

/// `format = "ndjson"` compressed with `compression`.
pub fn ndjson(compression: Compression) -> Arc<dyn ObjectFormat> {
    Arc::new(TextFormat::new(ndjson::Ndjson, compression))
}

/// `format = "csv"` with `columns`, compressed with `compression`.
pub fn csv(columns: Vec<String>, compression: Compression) -> Arc<dyn ObjectFormat> {
    Arc::new(TextFormat::new(csv::Csv::new(columns), compression))
}

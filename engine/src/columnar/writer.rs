//! The Parquet object writer: rows are buffered in small chunks, turned into Arrow arrays and
//! appended to the open row group; a row group is written out when it reaches `row_group_mb`.
//!
//! Guarantees: memory holds one chunk of rows plus the open row group's encoded pages plus the
//! finished bytes of the object (until the object is sealed); each finished object is a complete
//! Parquet file with row counts and statistics in its footer; timestamps are INT64 microseconds
//! adjusted to UTC.

use std::sync::Arc;

use arrow_array::RecordBatch;
use arrow_schema::ArrowError;
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression as ParquetCompression, GzipLevel, ZstdLevel};
use parquet::file::properties::{EnabledStatistics, WriterProperties, WriterVersion};

use super::columns::Columns;
use super::convert::{ConversionError, JsonOptions, KeyMemo, RowConverter};
use super::infer::{INFER_SAMPLE, infer_schema};

/// Rows converted before they are handed to the Arrow writer.
const CHUNK_ROWS: usize = 8192;

/// String bytes converted before they are handed to the Arrow writer (far below the 2 GiB that
/// 32-bit string offsets allow).
const CHUNK_TEXT_BYTES: usize = 64 << 20;

/// Writer settings (`parquet = { ... }` and the sink's `compression`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParquetOptions {
    /// Row-group size in bytes (`row_group_mb`, default 128).
    pub row_group_bytes: usize,
    /// Data page size in bytes (`page_kb`, default 1024).
    pub page_bytes: usize,
    /// Dictionary encoding (`dictionary`, default true).
    pub dictionary: bool,
    /// `writer_version = "v2"` (default `v1`).
    pub v2: bool,
    /// Page compression: `snappy` (default), `zstd`, `gzip` or `none`.
    pub compression: crate::compression::Compression,
}

impl Default for ParquetOptions {
    fn default() -> Self {
        ParquetOptions {
            row_group_bytes: 128 << 20,
            page_bytes: 1 << 20,
            dictionary: true,
            v2: false,
            compression: crate::compression::Compression::Snappy,
        }
    }
}

impl ParquetOptions {
    fn properties(&self) -> WriterProperties {
        use crate::compression::Compression as C;
        let compression = match self.compression {
            C::None => ParquetCompression::UNCOMPRESSED,
            // (Hadoop's framing and ZIP archives are for text objects; a Parquet sink refuses them
            // at configure time.)
            C::Snappy | C::HadoopSnappy => ParquetCompression::SNAPPY,
            C::Gzip | C::Zip => ParquetCompression::GZIP(GzipLevel::default()),
            C::Zstd => ParquetCompression::ZSTD(ZstdLevel::default()),
        };
        WriterProperties::builder()
            .set_compression(compression)
            .set_data_page_size_limit(self.page_bytes)
            .set_dictionary_enabled(self.dictionary)
            .set_writer_version(if self.v2 { WriterVersion::PARQUET_2_0 } else { WriterVersion::PARQUET_1_0 })
            .set_statistics_enabled(EnabledStatistics::Page)
            // Row groups are closed by bytes (below), not by row count.
            .set_max_row_group_row_count(Some(usize::MAX))
            .set_created_by(format!("sluice {}", env!("CARGO_PKG_VERSION")))
            .build()
    }
}

/// Why a Parquet object could not be written (not a record's fault).
#[derive(Debug, thiserror::Error)]
pub enum ParquetWriteError {
    /// Arrow refused the arrays.
    #[error("arrow: {0}")]
    Arrow(#[from] ArrowError),
    /// Parquet refused the batch.
    #[error("parquet: {0}")]
    Parquet(#[from] parquet::errors::ParquetError),
    /// A schema could not be inferred (or a sampled record did not fit it).
    #[error("schema inference: {0}")]
    Inference(String),
}

impl From<ParquetWriteError> for std::io::Error {
    fn from(e: ParquetWriteError) -> Self {
        std::io::Error::other(e.to_string())
    }
}

/// Where an object's schema comes from.
#[derive(Debug, Clone)]
pub enum SchemaSource {
    /// Declared in the config.
    Declared(Arc<RowConverter>),
    /// Inferred from the first records of each object, matching keys with these options.
    Infer(JsonOptions),
}

/// Records held while an inferred schema is not fixed yet.
#[derive(Debug, Default)]
struct Sample {
    records: Vec<Vec<u8>>,
    objects: Vec<serde_json::Map<String, serde_json::Value>>,
}

/// The schema of an object being written, the converted rows not yet handed to the writer, and
/// the writer.
struct Writing {
    converter: Arc<RowConverter>,
    columns: Columns,
    memo: KeyMemo,
    writer: ArrowWriter<Vec<u8>>,
}

/// One Parquet object being built.
pub struct ParquetObjectWriter {
    options: ParquetOptions,
    /// Once the schema is known.
    writing: Option<Writing>,
    /// With `schema = "infer"`, until the schema is fixed.
    sample: Option<(JsonOptions, Sample)>,
    input_bytes: u64,
}

impl std::fmt::Debug for ParquetObjectWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ParquetObjectWriter")
            .field("rows", &self.writing.as_ref().map_or(0, |w| w.columns.rows()))
            .field("input_bytes", &self.input_bytes)
            .finish()
    }
}

impl ParquetObjectWriter {
    /// An empty object.
    pub fn new(schema: &SchemaSource, options: ParquetOptions) -> Result<Self, ParquetWriteError> {
        let mut writer = ParquetObjectWriter { options, writing: None, sample: None, input_bytes: 0 };
        match schema {
            SchemaSource::Declared(converter) => writer.start(Arc::clone(converter))?,
            SchemaSource::Infer(json) => writer.sample = Some((json.clone(), Sample::default())),
        }
        Ok(writer)
    }

    fn start(&mut self, converter: Arc<RowConverter>) -> Result<(), ParquetWriteError> {
        let schema = converter.schema().arrow_schema();
        let writer = ArrowWriter::try_new(Vec::new(), schema, Some(self.options.properties()))?;
        self.writing = Some(Writing { columns: converter.new_columns(), converter, memo: KeyMemo::default(), writer });
        Ok(())
    }

    /// Fixes an inferred schema from the sample and converts the sampled records under it.
    fn infer_now(&mut self) -> Result<(), ParquetWriteError> {
        let Some((json, sample)) = self.sample.take() else { return Ok(()) };
        let schema = infer_schema(&sample.objects, &json);
        if schema.columns.is_empty() {
            return Err(ParquetWriteError::Inference("the sampled records have no keys".into()));
        }
        self.start(Arc::new(RowConverter::new(Arc::new(schema), json)))?;
        let Some(w) = self.writing.as_mut() else { return Ok(()) };
        for record in &sample.records {
            // Every sampled record fits the schema inferred from it; a failure here is a bug.
            w.converter
                .convert(record, &mut w.columns, &mut w.memo)
                .map_err(|e| ParquetWriteError::Inference(e.to_string()))?;
        }
        Ok(())
    }

    /// Converts `record` into rows; on a conversion failure nothing is added.
    pub fn append(&mut self, record: &[u8]) -> Result<Result<(), ConversionError>, ParquetWriteError> {
        if let Some((_, sample)) = self.sample.as_mut() {
            let mut objects = Vec::new();
            for value in serde_json::Deserializer::from_slice(record).into_iter::<serde_json::Value>() {
                match value {
                    Ok(serde_json::Value::Object(map)) => objects.push(map),
                    Ok(other) => {
                        let kind = if other.is_array() { "an array" } else { "not an object" };
                        return Ok(Err(ConversionError {
                            column: "(record)".into(),
                            message: format!("not a JSON object: {kind}"),
                        }));
                    }
                    Err(e) => {
                        return Ok(Err(ConversionError {
                            column: "(record)".into(),
                            message: format!("not a JSON object: {e}"),
                        }));
                    }
                }
            }
            if objects.is_empty() {
                return Ok(Err(ConversionError {
                    column: "(record)".into(),
                    message: "not a JSON object: empty".into(),
                }));
            }
            sample.objects.extend(objects);
            sample.records.push(record.to_vec());
            self.input_bytes += record.len() as u64;
            if sample.records.len() >= INFER_SAMPLE {
                self.infer_now()?;
            }
            return Ok(Ok(()));
        }
        let Some(w) = self.writing.as_mut() else {
            return Err(ParquetWriteError::Inference("no schema".into()));
        };
        if let Err(e) = w.converter.convert(record, &mut w.columns, &mut w.memo) {
            return Ok(Err(e));
        }
        self.input_bytes += record.len() as u64;
        let rows = w.columns.rows();
        if rows >= CHUNK_ROWS || rows % 64 == 0 && w.columns.text_bytes() >= CHUNK_TEXT_BYTES {
            self.write_chunk()?;
        }
        Ok(Ok(()))
    }

    /// File bytes written and not yet taken (finished row groups).
    pub fn output_len(&mut self) -> usize {
        self.writing.as_mut().map_or(0, |w| w.writer.inner_mut().len())
    }

    /// Takes the file bytes written so far (the file continues after them): a part of an object
    /// uploaded while it grows. The writer counts offsets itself, so the footer stays right.
    pub fn take_output(&mut self) -> Vec<u8> {
        self.writing.as_mut().map(|w| std::mem::take(w.writer.inner_mut())).unwrap_or_default()
    }

    /// Record bytes appended (the size the buffering hints count).
    pub fn input_bytes(&self) -> u64 {
        self.input_bytes
    }

    fn write_chunk(&mut self) -> Result<(), ParquetWriteError> {
        let Some(w) = self.writing.as_mut() else { return Ok(()) };
        if w.columns.rows() == 0 {
            return Ok(());
        }
        let batch = RecordBatch::try_new(w.converter.schema().arrow_schema(), w.columns.take_arrays()?)?;
        w.writer.write(&batch)?;
        let row_group_bytes = w.writer.in_progress_size();
        if row_group_bytes >= self.options.row_group_bytes {
            // The row group is copied into the file buffer at once: size it once.
            w.writer.inner_mut().reserve(row_group_bytes);
            w.writer.flush()?;
        }
        Ok(())
    }

    /// Writes the last rows and the footer; returns the file's bytes.
    pub fn finish(mut self) -> Result<Vec<u8>, ParquetWriteError> {
        self.infer_now()?;
        self.write_chunk()?;
        match self.writing {
            Some(mut w) => {
                let row_group_bytes = w.writer.in_progress_size();
                w.writer.inner_mut().reserve(row_group_bytes);
                Ok(w.writer.into_inner()?)
            }
            None => Err(ParquetWriteError::Inference("no schema".into())),
        }
    }
}

//! The Parquet object writer: rows are buffered in small chunks, turned into Arrow arrays and
//! appended to the open row group; a row group is written out when it reaches `row_group_mb`.
//!
//! Guarantees: memory holds one chunk of rows plus the open row group's encoded pages plus the
//! finished bytes of the object (until the object is sealed); each finished object is a complete
//! Parquet file with row counts and statistics in its footer; timestamps are INT64 microseconds
//! adjusted to UTC.

use std::sync::Arc;

use arrow_array::builder::{BinaryBuilder, BooleanBuilder, Float32Builder, Float64Builder, StringBuilder};
use arrow_array::types::{
    Date32Type, Decimal128Type, Int8Type, Int16Type, Int32Type, Int64Type, TimestampMicrosecondType,
};
use arrow_array::{ArrayRef, ListArray, MapArray, PrimitiveArray, RecordBatch, StructArray};
use arrow_buffer::{NullBuffer, OffsetBuffer};
use arrow_schema::{ArrowError, Field};
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression as ParquetCompression, GzipLevel, ZstdLevel};
use parquet::file::properties::{EnabledStatistics, WriterProperties, WriterVersion};

use super::convert::{Cell, ConversionError, JsonOptions, RowConverter};
use super::infer::{INFER_SAMPLE, infer_schema};
use super::schema::{ColumnType, map_entries_field, struct_fields};

/// Rows converted before they are handed to the Arrow writer.
const CHUNK_ROWS: usize = 8192;

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
    pub compression: crate::encode::Compression,
}

impl Default for ParquetOptions {
    fn default() -> Self {
        ParquetOptions {
            row_group_bytes: 128 << 20,
            page_bytes: 1 << 20,
            dictionary: true,
            v2: false,
            compression: crate::encode::Compression::Snappy,
        }
    }
}

impl ParquetOptions {
    fn properties(&self) -> WriterProperties {
        use crate::encode::Compression as C;
        let compression = match self.compression {
            C::None => ParquetCompression::UNCOMPRESSED,
            C::Snappy => ParquetCompression::SNAPPY,
            C::Gzip => ParquetCompression::GZIP(GzipLevel::default()),
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

/// One Parquet object being built.
pub struct ParquetObjectWriter {
    options: ParquetOptions,
    /// The schema, and the writer built on it, once known.
    writing: Option<(Arc<RowConverter>, ArrowWriter<Vec<u8>>)>,
    /// With `schema = "infer"`, until the schema is fixed.
    sample: Option<(JsonOptions, Sample)>,
    rows: Vec<Vec<Cell>>,
    input_bytes: u64,
}

impl std::fmt::Debug for ParquetObjectWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ParquetObjectWriter")
            .field("rows", &self.rows.len())
            .field("input_bytes", &self.input_bytes)
            .finish()
    }
}

impl ParquetObjectWriter {
    /// An empty object.
    pub fn new(schema: &SchemaSource, options: ParquetOptions) -> Result<Self, ParquetWriteError> {
        let mut writer = ParquetObjectWriter {
            options,
            writing: None,
            sample: None,
            rows: Vec::with_capacity(CHUNK_ROWS),
            input_bytes: 0,
        };
        match schema {
            SchemaSource::Declared(converter) => writer.start(Arc::clone(converter))?,
            SchemaSource::Infer(json) => writer.sample = Some((json.clone(), Sample::default())),
        }
        Ok(writer)
    }

    fn start(&mut self, converter: Arc<RowConverter>) -> Result<(), ParquetWriteError> {
        let schema = converter.schema().arrow_schema();
        let writer = ArrowWriter::try_new(Vec::new(), schema, Some(self.options.properties()))?;
        self.writing = Some((converter, writer));
        Ok(())
    }

    /// Fixes an inferred schema from the sample and converts the sampled records under it.
    fn infer_now(&mut self) -> Result<(), ParquetWriteError> {
        let Some((json, sample)) = self.sample.take() else { return Ok(()) };
        let schema = infer_schema(&sample.objects, &json);
        if schema.columns.is_empty() {
            return Err(ParquetWriteError::Inference("the sampled records have no keys".into()));
        }
        let converter = Arc::new(RowConverter::new(Arc::new(schema), json));
        self.start(Arc::clone(&converter))?;
        for record in &sample.records {
            // Every sampled record fits the schema inferred from it; a failure here is a bug.
            converter.convert(record, &mut self.rows).map_err(|e| ParquetWriteError::Inference(e.to_string()))?;
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
        let Some((converter, _)) = self.writing.as_ref() else {
            return Err(ParquetWriteError::Inference("no schema".into()));
        };
        if let Err(e) = converter.convert(record, &mut self.rows) {
            return Ok(Err(e));
        }
        self.input_bytes += record.len() as u64;
        if self.rows.len() >= CHUNK_ROWS {
            self.write_chunk()?;
        }
        Ok(Ok(()))
    }

    /// File bytes written and not yet taken (finished row groups).
    pub fn output_len(&mut self) -> usize {
        self.writing.as_mut().map_or(0, |(_, w)| w.inner_mut().len())
    }

    /// Takes the file bytes written so far (the file continues after them): a part of an object
    /// uploaded while it grows. The writer counts offsets itself, so the footer stays right.
    pub fn take_output(&mut self) -> Vec<u8> {
        self.writing.as_mut().map(|(_, w)| std::mem::take(w.inner_mut())).unwrap_or_default()
    }

    /// Record bytes appended (the size the buffering hints count).
    pub fn input_bytes(&self) -> u64 {
        self.input_bytes
    }

    fn write_chunk(&mut self) -> Result<(), ParquetWriteError> {
        let Some((converter, writer)) = self.writing.as_mut() else { return Ok(()) };
        if self.rows.is_empty() {
            return Ok(());
        }
        let schema = converter.schema();
        let mut arrays = Vec::with_capacity(schema.columns.len());
        for (i, column) in schema.columns.iter().enumerate() {
            let cells: Vec<&Cell> = self.rows.iter().map(|r| &r[i]).collect();
            arrays.push(build_array(&column.ty, &cells)?);
        }
        let batch = RecordBatch::try_new(schema.arrow_schema(), arrays)?;
        self.rows.clear();
        writer.write(&batch)?;
        if writer.in_progress_size() >= self.options.row_group_bytes {
            writer.flush()?;
        }
        Ok(())
    }

    /// Writes the last rows and the footer; returns the file's bytes.
    pub fn finish(mut self) -> Result<Vec<u8>, ParquetWriteError> {
        self.infer_now()?;
        self.write_chunk()?;
        match self.writing {
            Some((_, writer)) => Ok(writer.into_inner()?),
            None => Err(ParquetWriteError::Inference("no schema".into())),
        }
    }
}

static NULL: Cell = Cell::Null;

fn validity(cells: &[&Cell]) -> Option<NullBuffer> {
    let valid: Vec<bool> = cells.iter().map(|c| !matches!(c, Cell::Null)).collect();
    if valid.iter().all(|v| *v) { None } else { Some(NullBuffer::from(valid)) }
}

fn int_array<T>(cells: &[&Cell]) -> ArrayRef
where
    T: arrow_array::types::ArrowPrimitiveType,
    T::Native: TryFrom<i64>,
{
    Arc::new(PrimitiveArray::<T>::from_iter(cells.iter().map(|c| match c {
        Cell::Int(v) => T::Native::try_from(*v).ok(),
        Cell::Date(d) => T::Native::try_from(i64::from(*d)).ok(),
        Cell::Micros(m) => T::Native::try_from(*m).ok(),
        _ => None,
    })))
}

/// Builds one column's Arrow array from its cells (recursively for nested types).
fn build_array(ty: &ColumnType, cells: &[&Cell]) -> Result<ArrayRef, ArrowError> {
    Ok(match ty {
        ColumnType::String | ColumnType::Varchar(_) | ColumnType::Char(_) => {
            let mut b = StringBuilder::with_capacity(cells.len(), cells.len() * 16);
            for c in cells {
                match c {
                    Cell::Str(s) => b.append_value(s),
                    _ => b.append_null(),
                }
            }
            Arc::new(b.finish())
        }
        ColumnType::Boolean => {
            let mut b = BooleanBuilder::with_capacity(cells.len());
            cells.iter().for_each(|c| b.append_option(if let Cell::Bool(v) = c { Some(*v) } else { None }));
            Arc::new(b.finish())
        }
        ColumnType::TinyInt => int_array::<Int8Type>(cells),
        ColumnType::SmallInt => int_array::<Int16Type>(cells),
        ColumnType::Int => int_array::<Int32Type>(cells),
        ColumnType::BigInt => int_array::<Int64Type>(cells),
        ColumnType::Date => int_array::<Date32Type>(cells),
        ColumnType::Timestamp => {
            let a = PrimitiveArray::<TimestampMicrosecondType>::from_iter(
                cells.iter().map(|c| if let Cell::Micros(m) = c { Some(*m) } else { None }),
            );
            Arc::new(a.with_timezone("UTC"))
        }
        ColumnType::Float => {
            let mut b = Float32Builder::with_capacity(cells.len());
            cells.iter().for_each(|c| b.append_option(if let Cell::Float(v) = c { Some(*v as f32) } else { None }));
            Arc::new(b.finish())
        }
        ColumnType::Double => {
            let mut b = Float64Builder::with_capacity(cells.len());
            cells.iter().for_each(|c| b.append_option(if let Cell::Float(v) = c { Some(*v) } else { None }));
            Arc::new(b.finish())
        }
        ColumnType::Decimal { precision, scale } => {
            let a = PrimitiveArray::<Decimal128Type>::from_iter(
                cells.iter().map(|c| if let Cell::Decimal(v) = c { Some(*v) } else { None }),
            );
            Arc::new(a.with_precision_and_scale(*precision, *scale)?)
        }
        ColumnType::Binary => {
            let mut b = BinaryBuilder::with_capacity(cells.len(), cells.len() * 16);
            for c in cells {
                match c {
                    Cell::Bytes(v) => b.append_value(v),
                    _ => b.append_null(),
                }
            }
            Arc::new(b.finish())
        }
        ColumnType::Array(inner) => {
            let mut lengths = Vec::with_capacity(cells.len());
            let mut children: Vec<&Cell> = Vec::new();
            for c in cells {
                if let Cell::List(items) = c {
                    children.extend(items.iter());
                    lengths.push(items.len());
                } else {
                    lengths.push(0);
                }
            }
            let values = build_array(inner, &children)?;
            let field = Arc::new(Field::new("element", inner.arrow_type(), true));
            Arc::new(ListArray::try_new(field, OffsetBuffer::from_lengths(lengths), values, validity(cells))?)
        }
        ColumnType::Struct(fields) => {
            let mut children = Vec::with_capacity(fields.len());
            for (i, (_, field_ty)) in fields.iter().enumerate() {
                let field_cells: Vec<&Cell> = cells
                    .iter()
                    .map(|c| if let Cell::Struct(v) = c { v.get(i).unwrap_or(&NULL) } else { &NULL })
                    .collect();
                children.push(build_array(field_ty, &field_cells)?);
            }
            Arc::new(StructArray::try_new(struct_fields(fields), children, validity(cells))?)
        }
        ColumnType::Map(key_ty, value_ty) => {
            let mut lengths = Vec::with_capacity(cells.len());
            let (mut keys, mut values): (Vec<&Cell>, Vec<&Cell>) = (Vec::new(), Vec::new());
            for c in cells {
                if let Cell::Map(entries) = c {
                    for (k, v) in entries {
                        keys.push(k);
                        values.push(v);
                    }
                    lengths.push(entries.len());
                } else {
                    lengths.push(0);
                }
            }
            let entries_field = map_entries_field(key_ty, value_ty);
            let arrow_schema::DataType::Struct(entry_fields) = entries_field.data_type().clone() else {
                return Err(ArrowError::SchemaError("map entries are not a struct".into()));
            };
            let entries = StructArray::try_new(
                entry_fields,
                vec![build_array(key_ty, &keys)?, build_array(value_ty, &values)?],
                None,
            )?;
            Arc::new(MapArray::try_new(
                entries_field,
                OffsetBuffer::from_lengths(lengths),
                entries,
                validity(cells),
                false,
            )?)
        }
    })
}

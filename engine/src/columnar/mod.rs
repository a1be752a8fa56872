//! Columnar output: JSON records converted to Parquet against a declared schema.
//!
//! [`schema`] parses Glue/Hive column types, [`convert`] reads JSON the way Firehose's OpenX JSON
//! SerDe does into [`columns`], and [`writer`] streams those into row groups of a Parquet file.

pub mod columns;
pub mod convert;
pub mod infer;
pub mod schema;
pub mod writer;

use std::sync::Arc;

pub use columns::Cell;
pub use columns::Columns;
pub use convert::{ConversionError, JsonOptions, KeyMemo, RowConverter};
pub use schema::{Column, ColumnType, TableSchema, TimestampFormat};
pub use writer::{ParquetObjectWriter, ParquetOptions, ParquetWriteError, SchemaSource};

/// Everything a Parquet sink needs: where the schema comes from (with the JSON options) and writer
/// settings.
#[derive(Debug, Clone)]
pub struct ParquetSpec {
    /// Declared schema, or inference per object.
    pub schema: SchemaSource,
    /// Writer settings.
    pub options: ParquetOptions,
}

impl ParquetSpec {
    /// Columns of a declared schema (`None` when inferred), for `sluice validate`.
    pub fn declared_columns(&self) -> Option<usize> {
        match &self.schema {
            SchemaSource::Declared(c) => Some(c.schema().columns.len()),
            SchemaSource::Infer(_) => None,
        }
    }
}

impl PartialEq for ParquetSpec {
    fn eq(&self, other: &Self) -> bool {
        let same_schema = match (&self.schema, &other.schema) {
            (SchemaSource::Declared(a), SchemaSource::Declared(b)) => Arc::ptr_eq(a, b),
            (SchemaSource::Infer(a), SchemaSource::Infer(b)) => a == b,
            _ => false,
        };
        same_schema && self.options == other.options
    }
}

impl Eq for ParquetSpec {}

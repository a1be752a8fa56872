//! Columnar output: JSON records converted to Parquet against a declared schema.
//!
//! [`schema`] parses Glue/Hive column types, [`convert`] reads JSON the way Firehose's OpenX JSON
//! SerDe does, and [`writer`] streams rows into row groups of a Parquet file.

pub mod convert;
pub mod schema;
pub mod writer;

use std::sync::Arc;

pub use convert::{Cell, ConversionError, JsonOptions, RowConverter};
pub use schema::{Column, ColumnType, TableSchema, TimestampFormat};
pub use writer::{ParquetObjectWriter, ParquetOptions, ParquetWriteError};

/// Everything a Parquet sink needs: the converter (schema + JSON options) and writer settings.
#[derive(Debug, Clone)]
pub struct ParquetSpec {
    /// Schema and key matching.
    pub converter: Arc<RowConverter>,
    /// Writer settings.
    pub options: ParquetOptions,
}

impl PartialEq for ParquetSpec {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.converter, &other.converter) && self.options == other.options
    }
}

impl Eq for ParquetSpec {}

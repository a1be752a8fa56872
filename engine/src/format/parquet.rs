//! `format = "parquet"`: JSON records converted against a declared (or inferred) schema into
//! Parquet files, pages compressed inside the file ([`crate::columnar`] does the work). A record
//! whose values do not fit its columns is refused alone. Split back into its rows as JSON objects.

use bytes::Bytes;

use super::{EncodeError, ObjectEncoder, ObjectFormat};
use crate::columnar::{ParquetObjectWriter, ParquetSpec};
use crate::compression::Compression;

/// Parquet objects of one schema.
#[derive(Debug)]
pub struct Parquet {
    spec: ParquetSpec,
}

impl Parquet {
    /// Objects written with `spec`.
    pub fn new(spec: ParquetSpec) -> Self {
        Parquet { spec }
    }
}

impl ObjectFormat for Parquet {
    fn describe(&self) -> String {
        match self.spec.declared_columns() {
            Some(n) => format!("parquet({n} columns)"),
            None => "parquet(schema inferred per object)".into(),
        }
    }

    fn open(&self) -> std::io::Result<Box<dyn ObjectEncoder>> {
        Ok(Box::new(ParquetObjectWriter::new(&self.spec.schema, self.spec.options.clone())?))
    }

    fn content_type(&self) -> &'static str {
        "application/vnd.apache.parquet"
    }

    fn content_encoding(&self) -> Option<&'static str> {
        None
    }

    fn extension(&self) -> String {
        ".parquet".into()
    }

    fn compression(&self) -> Compression {
        self.spec.options.compression
    }

    fn converts(&self) -> bool {
        true
    }

    fn records_of(&self, object: &[u8]) -> Result<Vec<Vec<u8>>, String> {
        use parquet::file::reader::{FileReader, SerializedFileReader};
        let reader = SerializedFileReader::new(Bytes::copy_from_slice(object)).map_err(|e| e.to_string())?;
        let mut rows = Vec::new();
        for row in reader.get_row_iter(None).map_err(|e| e.to_string())? {
            let row = row.map_err(|e| e.to_string())?;
            rows.push(row.to_json_value().to_string().into_bytes());
        }
        Ok(rows)
    }
}

impl ObjectEncoder for ParquetObjectWriter {
    fn append(&mut self, record: &[u8]) -> Result<(), EncodeError> {
        match ParquetObjectWriter::append(self, record).map_err(std::io::Error::from)? {
            Ok(()) => Ok(()),
            Err(e) => Err(EncodeError::Record(e.to_string())),
        }
    }

    fn size(&self) -> u64 {
        self.input_bytes()
    }

    fn ready_len(&mut self) -> usize {
        self.output_len()
    }

    fn take_ready(&mut self) -> Vec<u8> {
        self.take_output()
    }

    fn finish(self: Box<Self>, _key: &str) -> std::io::Result<Vec<u8>> {
        Ok(ParquetObjectWriter::finish(*self)?)
    }
}

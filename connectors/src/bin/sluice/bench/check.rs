//! What a case's output must hold for its run to count: a tool that stopped half-way, dropped
//! records or wrote other column types would look fast, so every output that can be read back is,
//! before the run is kept.
//!
//! Guarantees: text outputs (every file under the case's output folder, decompressed as its
//! extension says, streamed) hold exactly one line per input record; Parquet outputs hold exactly
//! the input's record count in rows, and, for the cases that declare a schema, exactly its columns
//! with its Arrow types (a timestamp's time zone compared as present or not: tools spell UTC
//! differently).

use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow_schema::DataType;

/// What to read back from a case's output folder.
#[derive(Debug, Clone)]
pub(crate) enum OutputCheck {
    /// Nothing here: the output is counted elsewhere (a receiver, a daemon's own file, a server).
    Elsewhere,
    /// Newline-delimited text files, compressed or not (by extension).
    Lines,
    /// Parquet files; with `columns`, exactly these columns and types.
    Parquet {
        /// The declared columns, or `None` for a tool that infers its schema.
        columns: Option<Arc<Vec<(String, DataType)>>>,
    },
    /// Rows loaded into the `postgres` scenario's table (emptied again after the count).
    Table(Arc<super::pg::PgServer>),
}

/// Every file under `dir`, except in hidden folders (a sink's staging).
pub(super) fn files(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let mut found = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir)? {
            let entry = entry?;
            let hidden = entry.file_name().to_string_lossy().starts_with('.');
            if entry.file_type()?.is_dir() {
                if !hidden {
                    pending.push(entry.path());
                }
            } else {
                found.push(entry.path());
            }
        }
    }
    found.sort();
    Ok(found)
}

/// Lines in a (possibly compressed) text file, streamed.
fn count_lines(path: &Path) -> io::Result<u64> {
    let file = std::fs::File::open(path)?;
    let name = path.to_string_lossy();
    let mut reader: Box<dyn Read> = if name.ends_with(".gz") {
        Box::new(flate2::read::MultiGzDecoder::new(file))
    } else if name.ends_with(".zst") {
        Box::new(zstd::stream::read::Decoder::new(file)?)
    } else {
        Box::new(file)
    };
    let mut buffer = vec![0u8; 1 << 20];
    let mut lines = 0;
    loop {
        let n = reader.read(&mut buffer)?;
        if n == 0 {
            return Ok(lines);
        }
        lines += memchr::memchr_iter(b'\n', &buffer[..n]).count() as u64;
    }
}

/// A timestamp's zone as present or not; other types as they are.
fn comparable(t: &DataType) -> DataType {
    match t {
        DataType::Timestamp(unit, zone) => DataType::Timestamp(*unit, zone.as_ref().map(|_| "UTC".into())),
        other => other.clone(),
    }
}

/// Checks the output folder of a run that read `records` records.
pub(crate) fn verify(check: &OutputCheck, output: &Path, records: u64) -> io::Result<()> {
    let found = match check {
        OutputCheck::Elsewhere => return Ok(()),
        OutputCheck::Table(server) => server.take_rows()?,
        OutputCheck::Lines => files(output)?.iter().map(|p| count_lines(p)).sum::<io::Result<u64>>()?,
        OutputCheck::Parquet { columns } => {
            let mut rows = 0;
            for path in files(output)?.iter().filter(|p| p.extension().is_some_and(|e| e == "parquet")) {
                let file = std::fs::File::open(path)?;
                let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)
                    .map_err(|e| io::Error::other(format!("{}: {e}", path.display())))?;
                rows += reader.metadata().file_metadata().num_rows() as u64;
                if let Some(columns) = columns {
                    let got: Vec<(String, DataType)> = reader
                        .schema()
                        .fields()
                        .iter()
                        .map(|f| (f.name().clone(), comparable(f.data_type())))
                        .collect();
                    let want: Vec<(String, DataType)> =
                        columns.iter().map(|(n, t)| (n.clone(), comparable(t))).collect();
                    if got != want {
                        return Err(io::Error::other(format!(
                            "{} has the columns {got:?}, not the declared {want:?}",
                            path.display()
                        )));
                    }
                }
            }
            rows
        }
    };
    if found == records {
        Ok(())
    } else {
        Err(io::Error::other(format!("its output holds {found} of {records} records")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_lines_across_compressed_files_and_skips_staging() {
        use std::io::Write;
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("a/.staging")).unwrap();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(b"1\n2\n3\n").unwrap();
        std::fs::write(dir.path().join("a/x.gz"), gz.finish().unwrap()).unwrap();
        std::fs::write(dir.path().join("a/y.zst"), zstd::encode_all(&b"4\n5\n"[..], 3).unwrap()).unwrap();
        std::fs::write(dir.path().join("a/.staging/z"), "6\n").unwrap();
        assert!(verify(&OutputCheck::Lines, dir.path(), 5).is_ok());
        let short = verify(&OutputCheck::Lines, dir.path(), 6).unwrap_err();
        assert!(short.to_string().contains("5 of 6"), "{short}");
    }
}

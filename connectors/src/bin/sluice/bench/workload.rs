//! The bench's inputs: generated once per profile and size with `sluice gen`'s synthesizer (fixed
//! seeds), kept under `<out>/data` with their record count so later runs reuse them.

use std::io::{self, Write};
use std::path::{Path, PathBuf};

use serde::Serialize;
use sluice_connectors::synth::{Profile, write_ndjson};

use super::{BenchError, io_error};

/// One generated input file.
#[derive(Debug, Clone, Serialize)]
pub struct Workload {
    /// The file.
    pub path: PathBuf,
    /// Its size.
    pub bytes: u64,
    /// Its records (lines).
    pub records: u64,
}

/// Parses `200MB`, `50MiB`, `2GB`, `1048576`.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let number: f64 = number.parse().map_err(|_| format!("`{text}` is not a size; e.g. 200MB, 2GB, 512KiB"))?;
    let scale = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "kb" | "k" => 1e3,
        "mb" | "m" => 1e6,
        "gb" | "g" => 1e9,
        "kib" => 1024.0,
        "mib" => 1024.0 * 1024.0,
        "gib" => 1024.0 * 1024.0 * 1024.0,
        other => return Err(format!("unknown size unit `{other}` in `{text}`; use B, KB, MB, GB, KiB, MiB or GiB")),
    };
    Ok((number * scale) as u64)
}

/// Generates (or reuses) `<data>/<profile>-<bytes>.ndjson` of about `bytes`. A kept file is reused
/// only when it was made by this build's synthesizer: its record count is stored with a
/// fingerprint of the first thousand records, so a changed generator regenerates the input
/// instead of measuring a stale one.
pub(crate) fn workload(data: &Path, profile: Profile, seed: u64, bytes: u64) -> Result<Workload, BenchError> {
    let name = format!("{profile:?}").to_lowercase();
    let path = data.join(format!("{name}-{bytes}.ndjson"));
    let count = data.join(format!("{name}-{bytes}.records"));
    // The mean record size from a sample, then as many records as make `bytes`.
    let mut sample = Vec::new();
    write_ndjson(profile, seed, 1000, &mut sample).map_err(io_error("cannot generate records"))?;
    let fingerprint = {
        let mut hasher = rustc_hash::FxHasher::default();
        std::hash::Hasher::write(&mut hasher, &sample);
        std::hash::Hasher::finish(&hasher)
    };
    if let (Ok(meta), Ok(kept)) = (std::fs::metadata(&path), std::fs::read_to_string(&count))
        && let Some((records, made_by)) = kept.trim().split_once(' ')
        && let Ok(records) = records.parse()
        && made_by == format!("{fingerprint:016x}")
    {
        return Ok(Workload { path, bytes: meta.len(), records });
    }
    std::fs::create_dir_all(data).map_err(io_error(format!("cannot create {}", data.display())))?;
    let records = (bytes * 1000 / sample.len().max(1) as u64).max(1);
    let file = std::fs::File::create(&path).map_err(io_error(format!("cannot create {}", path.display())))?;
    let mut writer = io::BufWriter::new(file);
    write_ndjson(profile, seed, records, &mut writer).map_err(io_error("cannot generate records"))?;
    writer.flush().map_err(io_error(format!("cannot write {}", path.display())))?;
    std::fs::write(&count, format!("{records} {fingerprint:016x}"))
        .map_err(io_error("cannot write the record count"))?;
    let bytes = std::fs::metadata(&path).map_err(io_error("cannot read the workload"))?.len();
    Ok(Workload { path, bytes, records })
}

/// The records of a `vpcflow` workload as VPC Flow Logs' S3 delivery writes them (`<ndjson>.log`):
/// the header line of version 2's fields, then each record's fields separated by one space, `-`
/// for none. Its `records` are the data lines (the header is no record). Kept beside the NDJSON and
/// made again when that changed.
pub(crate) fn vpc_flow_text(ndjson: &Workload) -> Result<Workload, BenchError> {
    use sluice_connectors::transforms::parse::{VPC_FLOW_FIELDS, key_of};
    let path = ndjson.path.with_extension("log");
    let made_from = path.with_extension("log.from");
    let source = format!("{} {}", ndjson.records, ndjson.bytes);
    if let (Ok(meta), Ok(kept)) = (std::fs::metadata(&path), std::fs::read_to_string(&made_from))
        && kept == source
    {
        return Ok(Workload { path, bytes: meta.len(), records: ndjson.records });
    }
    let input = std::fs::File::open(&ndjson.path).map_err(io_error("cannot read the workload"))?;
    let file = std::fs::File::create(&path).map_err(io_error(format!("cannot create {}", path.display())))?;
    let mut writer = io::BufWriter::new(file);
    let write = |writer: &mut io::BufWriter<std::fs::File>, line: &str| writeln!(writer, "{line}");
    write(&mut writer, &VPC_FLOW_FIELDS.join(" ")).map_err(io_error("cannot write the text workload"))?;
    let keys: Vec<String> = VPC_FLOW_FIELDS.iter().map(|f| key_of(f)).collect();
    for line in io::BufRead::lines(io::BufReader::new(input)) {
        let line = line.map_err(io_error("cannot read the workload"))?;
        let record: serde_json::Map<String, serde_json::Value> = serde_json::from_str(&line)
            .map_err(|e| io_error("the vpcflow workload holds a line that is not an object")(io::Error::other(e)))?;
        let fields: Vec<String> = keys
            .iter()
            .map(|k| match record.get(k) {
                None | Some(serde_json::Value::Null) => "-".to_string(),
                Some(serde_json::Value::String(s)) => s.clone(),
                Some(other) => other.to_string(),
            })
            .collect();
        write(&mut writer, &fields.join(" ")).map_err(io_error("cannot write the text workload"))?;
    }
    writer.flush().map_err(io_error(format!("cannot write {}", path.display())))?;
    std::fs::write(&made_from, source).map_err(io_error("cannot write the text workload's source"))?;
    let bytes = std::fs::metadata(&path).map_err(io_error("cannot read the text workload"))?.len();
    Ok(Workload { path, bytes, records: ndjson.records })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_units_and_reject_nonsense() {
        assert_eq!(parse_size("200MB"), Ok(200_000_000));
        assert_eq!(parse_size("2GB"), Ok(2_000_000_000));
        assert_eq!(parse_size("512KiB"), Ok(512 * 1024));
        assert_eq!(parse_size("1.5MiB"), Ok(1_572_864));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert!(parse_size("lots").is_err());
        assert!(parse_size("5 parsecs").unwrap_err().contains("unknown size unit"));
    }

    #[test]
    fn a_kept_input_is_reused_only_when_this_synthesizer_made_it() {
        let dir = tempfile::tempdir().unwrap();
        let first = workload(dir.path(), Profile::Cloudtrail, 7, 50_000).unwrap();
        let text = std::fs::read_to_string(&first.path).unwrap();
        assert_eq!(text.lines().count() as u64, first.records);
        // Reused as it is: a marker appended to the file survives.
        std::fs::write(&first.path, format!("{text}marker\n")).unwrap();
        let again = workload(dir.path(), Profile::Cloudtrail, 7, 50_000).unwrap();
        assert!(std::fs::read_to_string(&again.path).unwrap().ends_with("marker\n"));
        // Counted by an older generator (no fingerprint, or another one): made again.
        for stale in [format!("{}", first.records), format!("{} 0123456789abcdef", first.records)] {
            std::fs::write(dir.path().join("cloudtrail-50000.records"), stale).unwrap();
            let remade = workload(dir.path(), Profile::Cloudtrail, 7, 50_000).unwrap();
            assert_eq!(std::fs::read_to_string(&remade.path).unwrap(), text);
            assert_eq!(remade.records, first.records);
        }
    }
}

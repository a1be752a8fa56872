//! `format = "raw"` (Firehose's default): the record bytes concatenated exactly as received, with
//! nothing between them. Such an object has no delimiter: it cannot be split back into records (a
//! backup keeps it whole).

use super::RecordCodec;

/// Records as they are.
#[derive(Debug, Clone, Copy)]
pub struct Raw;

impl RecordCodec for Raw {
    fn describe(&self) -> String {
        "raw".into()
    }

    fn content_type(&self) -> &'static str {
        "application/octet-stream"
    }

    fn encode(&self, record: &[u8], out: &mut Vec<u8>) -> Result<(), String> {
        out.extend_from_slice(record);
        Ok(())
    }

    fn records_of(&self, _text: &[u8]) -> Result<Vec<Vec<u8>>, String> {
        Err("format `raw` has no record delimiter".into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn concatenates_exactly_and_cannot_be_split() {
        let mut out = Vec::new();
        for r in [&b"a"[..], b"b\n", b""] {
            Raw.encode(r, &mut out).unwrap();
        }
        assert_eq!(out, b"ab\n");
        assert!(Raw.records_of(&out).is_err());
    }
}

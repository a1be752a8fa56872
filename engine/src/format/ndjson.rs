//! `format = "ndjson"`: one record per line, a `\n` added unless the record ends with one
//! (Firehose's AppendDelimiterToRecord). Split back at newlines (empty lines dropped).

use super::RecordCodec;

/// Newline-delimited records.
#[derive(Debug, Clone, Copy)]
pub struct Ndjson;

impl RecordCodec for Ndjson {
    fn describe(&self) -> String {
        "ndjson".into()
    }

    fn content_type(&self) -> &'static str {
        "application/x-ndjson"
    }

    fn processors(&self) -> Vec<crate::contract::Processor> {
        vec![crate::contract::Processor { kind: "AppendDelimiterToRecord", parameters: Vec::new() }]
    }

    fn encode(&self, record: &[u8], out: &mut Vec<u8>) -> Result<(), String> {
        out.extend_from_slice(record);
        if record.last() != Some(&b'\n') {
            out.push(b'\n');
        }
        Ok(())
    }

    fn records_of(&self, text: &[u8]) -> Result<Vec<Vec<u8>>, String> {
        Ok(text.split(|&b| b == b'\n').filter(|l| !l.is_empty()).map(<[u8]>::to_vec).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adds_one_newline_unless_present_and_splits_back() {
        let mut out = Vec::new();
        for r in [&b"a"[..], b"b\n", b""] {
            Ndjson.encode(r, &mut out).unwrap();
        }
        assert_eq!(out, b"a\nb\n\n");
        assert_eq!(Ndjson.records_of(&out).unwrap(), vec![b"a".to_vec(), b"b".to_vec()]);
    }
}

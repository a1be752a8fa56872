//! The error output's documents: one Firehose-style JSON object per failed record
//! (FIREHOSE.md §6 and §7), written newline-delimited under the sink's `error_prefix`.
//!
//! Guarantees: `rawData` is the record's exact bytes in base64, so nothing of a failed record is
//! lost; `arrivalTimestamp` and `attemptEndingTimestamp` are epoch milliseconds.

use base64::Engine;
use serde::Serialize;

/// The `!{firehose:error-output-type}` values sluice produces.
pub mod output_type {
    /// A record that could not be converted to the sink's format (Firehose's name).
    pub const FORMAT_CONVERSION_FAILED: &str = "format-conversion-failed";
}

/// One failed record as written to the error output.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ErrorDocument<'a> {
    /// How many times delivery or conversion was attempted.
    pub attempts_made: u32,
    /// When the record arrived (epoch ms).
    pub arrival_timestamp: i64,
    /// Machine-readable reason, e.g. `DataFormatConversion.MalformedData`.
    pub last_error_code: &'a str,
    /// Human-readable reason.
    pub last_error_message: &'a str,
    /// When the last attempt ended (epoch ms).
    pub attempt_ending_timestamp: i64,
    /// The record, base64.
    pub raw_data: String,
}

impl<'a> ErrorDocument<'a> {
    /// A document for `record`.
    pub fn new(record: &[u8], arrival_ms: i64, code: &'a str, message: &'a str, attempts: u32, ended_ms: i64) -> Self {
        ErrorDocument {
            attempts_made: attempts,
            arrival_timestamp: arrival_ms,
            last_error_code: code,
            last_error_message: message,
            attempt_ending_timestamp: ended_ms,
            raw_data: base64::engine::general_purpose::STANDARD.encode(record),
        }
    }

    /// Appends the document and a newline to `out`.
    pub fn write_line(&self, out: &mut Vec<u8>) {
        // Serializing this struct into a Vec cannot fail.
        let _ = serde_json::to_writer(&mut *out, self);
        out.push(b'\n');
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn has_the_firehose_field_names() {
        let mut out = Vec::new();
        ErrorDocument::new(b"x\xff", 5, "C", "m", 1, 6).write_line(&mut out);
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap_or_default();
        assert_eq!(v["rawData"], "eP8=");
        assert_eq!(v["arrivalTimestamp"], 5);
        assert_eq!(v["lastErrorCode"], "C");
        assert_eq!(v["lastErrorMessage"], "m");
        assert_eq!(v["attemptsMade"], 1);
        assert_eq!(v["attemptEndingTimestamp"], 6);
    }
}

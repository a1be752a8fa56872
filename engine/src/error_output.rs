//! The error output's documents: one Firehose-style JSON object per failed record
//! (docs/firehose.md §6), written newline-delimited under the sink's `error_prefix`.
//!
//! Guarantees: `rawData` is the record's exact bytes in base64, so nothing of a failed record is
//! lost; `arrivalTimestamp` and `attemptEndingTimestamp` are epoch milliseconds. A record that
//! could not be converted carries `lastErrorCode`/`lastErrorMessage` (Firehose's
//! `format-conversion-failed` shape); a record whose delivery failed carries
//! `errorCode`/`errorMessage` (the HTTP endpoint destination's shape); a record a transform failed
//! carries `errorCode`/`errorMessage` and, for a Lambda function, `lambdaArn` (the
//! `processing-failed` shape).

use base64::Engine;
use serde::Serialize;

use crate::destination::DestinationKind;

/// The `!{firehose:error-output-type}` of an error-output object: why its records are there.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
pub enum ErrorOutputType {
    /// Records that could not be converted to the sink's format (`format-conversion-failed`,
    /// Firehose's name).
    FormatConversionFailed,
    /// Records a transform could not process (`processing-failed`, Firehose's name for records a
    /// Lambda function failed; sluice's transforms use it too).
    ProcessingFailed,
    /// Records that could not be decompressed (`decompression-failed`: CloudWatch Logs payloads
    /// that are not gzip or not a subscription document), kept still compressed.
    DecompressionFailed,
    /// Records whose partition keys could not be found or used (`partitioning-failed`, Firehose's
    /// name for dynamic partitioning failures).
    PartitioningFailed,
    /// Every source record, kept with `backup = "all"` (`source-record-backup`; Firehose's
    /// `S3BackupMode` all-data).
    SourceRecordBackup,
    /// Records a destination of this kind did not take before its retry duration ran out or with a
    /// permanent error (`s3-failed`, `http-endpoint-failed`, `AmazonOpenSearchService-failed`, …).
    DeliveryFailed(DestinationKind),
}

impl ErrorOutputType {
    /// The value of `!{firehose:error-output-type}` in object keys (and of the `reason` label).
    pub fn name(self) -> &'static str {
        match self {
            ErrorOutputType::FormatConversionFailed => "format-conversion-failed",
            ErrorOutputType::ProcessingFailed => "processing-failed",
            ErrorOutputType::DecompressionFailed => "decompression-failed",
            ErrorOutputType::PartitioningFailed => "partitioning-failed",
            ErrorOutputType::SourceRecordBackup => "source-record-backup",
            ErrorOutputType::DeliveryFailed(kind) => kind.failed_output_type(),
        }
    }

    /// The longest name an error-output object of a sink of `destination` can carry.
    pub fn longest_name(destination: DestinationKind) -> &'static str {
        [
            ErrorOutputType::FormatConversionFailed,
            ErrorOutputType::ProcessingFailed,
            ErrorOutputType::DecompressionFailed,
            ErrorOutputType::PartitioningFailed,
            ErrorOutputType::SourceRecordBackup,
            ErrorOutputType::DeliveryFailed(destination),
        ]
        .into_iter()
        .map(ErrorOutputType::name)
        .max_by_key(|name| name.len())
        .unwrap_or_default()
    }
}

/// Why a record is in the error output, with Firehose's field names for each case.
#[derive(Debug, Serialize)]
#[serde(untagged)]
pub enum Reason<'a> {
    /// It could not be converted (`lastErrorCode`, `lastErrorMessage`).
    #[serde(rename_all = "camelCase")]
    Conversion {
        /// Machine-readable reason, e.g. `DataFormatConversion.MalformedData`.
        last_error_code: &'a str,
        /// Human-readable reason.
        last_error_message: &'a str,
    },
    /// Its destination did not take it (`errorCode`, `errorMessage`).
    #[serde(rename_all = "camelCase")]
    Delivery {
        /// The destination's error code, e.g. `S3.AccessDenied`.
        error_code: &'a str,
        /// What the destination said.
        error_message: &'a str,
    },
    /// A transform failed it (`errorCode`, `errorMessage`, `lambdaArn`).
    Processing(Processing<'a>),
}

/// A record a transform failed (`errorCode`, `errorMessage`, and `lambdaArn` for a Lambda
/// function), written by [`ErrorDocument::write_line`] in Firehose's `processing-failed` shape.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Processing<'a> {
    /// Machine-readable reason, e.g. `Lambda.ProcessingFailed`.
    pub error_code: &'a str,
    /// Human-readable reason.
    pub error_message: &'a str,
    /// The function's ARN (or URL).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lambda_arn: Option<&'a str>,
}

/// One failed record as written to the error output.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ErrorDocument<'a> {
    /// How many times delivery or conversion was attempted.
    pub attempts_made: u32,
    /// When the record arrived (epoch ms).
    pub arrival_timestamp: i64,
    /// Why it failed.
    #[serde(flatten)]
    pub reason: Reason<'a>,
    /// When the last attempt ended (epoch ms).
    pub attempt_ending_timestamp: i64,
    /// Fields the destination adds for a record it refused itself (`esDocumentId`,
    /// `esIndexName`, `esTypeName` for OpenSearch), in the sink's order.
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub details: Option<&'a serde_json::Map<String, serde_json::Value>>,
    /// The record, base64.
    pub raw_data: String,
}

impl<'a> ErrorDocument<'a> {
    /// A document for `record`.
    pub fn new(record: &[u8], arrival_ms: i64, reason: Reason<'a>, attempts: u32, ended_ms: i64) -> Self {
        ErrorDocument {
            attempts_made: attempts,
            arrival_timestamp: arrival_ms,
            reason,
            attempt_ending_timestamp: ended_ms,
            details: None,
            raw_data: base64::engine::general_purpose::STANDARD.encode(record),
        }
    }

    /// The document with the destination's own fields for the record.
    pub fn with_details(mut self, details: &'a serde_json::Map<String, serde_json::Value>) -> Self {
        self.details = Some(details);
        self
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

    fn line(doc: &ErrorDocument) -> serde_json::Value {
        let mut out = Vec::new();
        doc.write_line(&mut out);
        assert_eq!(out.last(), Some(&b'\n'));
        serde_json::from_slice(&out).unwrap_or_default()
    }

    #[test]
    fn has_the_firehose_field_names_for_each_shape() {
        let conversion = Reason::Conversion { last_error_code: "C", last_error_message: "m" };
        let v = line(&ErrorDocument::new(b"x\xff", 5, conversion, 1, 6));
        assert_eq!(v["rawData"], "eP8=");
        assert_eq!(v["arrivalTimestamp"], 5);
        assert_eq!(v["lastErrorCode"], "C");
        assert_eq!(v["lastErrorMessage"], "m");
        assert_eq!(v["attemptsMade"], 1);
        assert_eq!(v["attemptEndingTimestamp"], 6);

        let delivery = Reason::Delivery { error_code: "S3.AccessDenied", error_message: "no" };
        let v = line(&ErrorDocument::new(b"{}", 5, delivery, 3, 9));
        assert_eq!(v["errorCode"], "S3.AccessDenied");
        assert_eq!(v["errorMessage"], "no");
        assert_eq!(v["attemptsMade"], 3);
        assert!(v.get("lastErrorCode").is_none());

        let processing = Reason::Processing(Processing {
            error_code: "Lambda.ProcessingFailed",
            error_message: "m",
            lambda_arn: Some("a"),
        });
        let v = line(&ErrorDocument::new(b"{}", 5, processing, 4, 9));
        assert_eq!(v["errorCode"], "Lambda.ProcessingFailed");
        assert_eq!(v["lambdaArn"], "a");
        assert_eq!(v["attemptsMade"], 4);
        let local =
            Reason::Processing(Processing { error_code: "Jq.ProcessingFailed", error_message: "m", lambda_arn: None });
        assert!(line(&ErrorDocument::new(b"{}", 5, local, 1, 9)).get("lambdaArn").is_none());
    }
}

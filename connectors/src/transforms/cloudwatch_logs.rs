//! `type = "cloudwatch_logs"`: unpacks CloudWatch Logs subscription records, as Firehose's
//! `Decompression` (GZIP) and `CloudWatchLogProcessing` processors do (docs/firehose.md §12).
//!
//! ```toml
//! [transforms.cwl]
//! type = "cloudwatch_logs"
//! inputs = ["api"]
//! extract_messages = true   # DataMessageExtraction: each logEvents[].message becomes one record (default false)
//! ```
//!
//! Each record is a gzip'd subscription document (`messageType`, `owner`, `logGroup`, `logStream`,
//! `subscriptionFilters`, `logEvents[{id, timestamp, message}]`). A `CONTROL_MESSAGE` (CloudWatch
//! checking that the destination is reachable) is dropped, counted. A `DATA_MESSAGE` becomes the
//! decompressed JSON document, or with `extract_messages` one record per log event holding exactly
//! its `message`. A record that is not gzip, or whose content is not a subscription document, goes
//! **still compressed** (as it arrived) to the error output as `decompression-failed`
//! (`CloudWatchLogs.DecompressionFailed` / `CloudWatchLogs.InvalidDocument`); the others go on.
//! Several gzip members in one record are read as one stream, as `gunzip` does. A decompressed record
//! is at most 64 MiB (a gzip bomb fails instead of filling memory).

use std::io::Read;
use std::sync::Arc;

use serde::Deserialize;
use sluice_engine::config::{ConnectorConfig, Problems};
use sluice_engine::contract::{
    Emit, Processor, RecordByRecord, RecordTransform, Transform, TransformContext, TransformError, TransformFailure,
    TransformWorker,
};
use sluice_engine::error_output::ErrorOutputType;
use sluice_engine::metrics::Family;

/// Messages taken apart, by `type` (`DATA_MESSAGE`, `CONTROL_MESSAGE`).
const MESSAGES: Family =
    Family { name: "CloudWatchLogsMessages", help: "CloudWatch Logs subscription messages taken apart, by type." };

/// The error code of a record that is not gzip.
pub const DECOMPRESSION_FAILED: &str = "CloudWatchLogs.DecompressionFailed";
/// The error code of a record whose content is not a subscription document.
pub const INVALID_DOCUMENT: &str = "CloudWatchLogs.InvalidDocument";
/// Most bytes a record may decompress to.
const MAX_DECOMPRESSED: u64 = 64 << 20;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CloudWatchLogsConfig {
    #[serde(default)]
    extract_messages: bool,
}

/// A configured CloudWatch Logs transform.
#[derive(Debug)]
pub struct CloudWatchLogsTransform {
    extract_messages: bool,
}

/// Builds the transform from `[transforms.<name>]`.
pub fn configure(config: ConnectorConfig) -> Result<Arc<dyn Transform>, Problems> {
    let mut problems = Problems::default();
    let Some(c) = config.table.deserialize::<CloudWatchLogsConfig>(&mut problems) else { return Err(problems) };
    let c = problems.finish(Some(c))?;
    Ok(Arc::new(CloudWatchLogsTransform { extract_messages: c.extract_messages }))
}

impl Transform for CloudWatchLogsTransform {
    fn processors(&self) -> Vec<Processor> {
        vec![
            Processor { kind: "Decompression", parameters: vec![("CompressionFormat", "GZIP".into())] },
            Processor {
                kind: "CloudWatchLogProcessing",
                parameters: vec![("DataMessageExtraction", self.extract_messages.to_string())],
            },
        ]
    }

    fn describe(&self) -> String {
        format!(
            "cloudwatch_logs: gunzip{}",
            if self.extract_messages { ", one record per log event message" } else { "" }
        )
    }

    fn open(&self, context: &TransformContext) -> Result<Box<dyn TransformWorker>, TransformError> {
        Ok(Box::new(RecordByRecord(Unpacker {
            extract_messages: self.extract_messages,
            plain: Vec::new(),
            metrics: Arc::clone(&context.metrics),
        })))
    }
}

/// The subscription document, as much of it as is read.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Subscription<'a> {
    #[serde(borrow)]
    message_type: std::borrow::Cow<'a, str>,
    #[serde(default, borrow)]
    log_events: Vec<LogEvent<'a>>,
}

#[derive(Deserialize)]
struct LogEvent<'a> {
    #[serde(borrow)]
    message: std::borrow::Cow<'a, str>,
}

struct Unpacker {
    extract_messages: bool,
    plain: Vec<u8>,
    metrics: Arc<sluice_engine::metrics::TransformMetrics>,
}

fn decompression_failed(code: &'static str, message: String) -> TransformFailure {
    TransformFailure { output_type: ErrorOutputType::DecompressionFailed, code, message }
}

impl RecordTransform for Unpacker {
    fn transform(&mut self, record: &[u8], emit: &mut Emit<'_>) -> Result<(), TransformFailure> {
        self.plain.clear();
        let mut reader = flate2::read::MultiGzDecoder::new(record).take(MAX_DECOMPRESSED + 1);
        reader
            .read_to_end(&mut self.plain)
            .map_err(|e| decompression_failed(DECOMPRESSION_FAILED, format!("the record is not gzip: {e}")))?;
        if self.plain.len() as u64 > MAX_DECOMPRESSED {
            return Err(decompression_failed(
                DECOMPRESSION_FAILED,
                format!("the record decompresses to more than {} MiB", MAX_DECOMPRESSED >> 20),
            ));
        }
        let document: Subscription = serde_json::from_slice(&self.plain).map_err(|e| {
            decompression_failed(INVALID_DOCUMENT, format!("not a CloudWatch Logs subscription document: {e}"))
        })?;
        match document.message_type.as_ref() {
            "CONTROL_MESSAGE" => {
                self.metrics.count(MESSAGES, "type", "CONTROL_MESSAGE", 1);
                Ok(())
            }
            "DATA_MESSAGE" => {
                self.metrics.count(MESSAGES, "type", "DATA_MESSAGE", 1);
                if self.extract_messages {
                    for event in &document.log_events {
                        emit.record(event.message.as_bytes());
                    }
                } else {
                    emit.record(&self.plain);
                }
                Ok(())
            }
            other => Err(decompression_failed(INVALID_DOCUMENT, format!("unknown messageType `{other}`"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use sluice_engine::record::RecordBatch;

    use super::*;

    fn gzip(bytes: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        let _ = e.write_all(bytes);
        e.finish().unwrap_or_default()
    }

    fn unpack(extract: bool, record: &[u8]) -> Result<Vec<String>, TransformFailure> {
        let mut u = Unpacker { extract_messages: extract, plain: Vec::new(), metrics: Arc::default() };
        let mut batch = RecordBatch::default();
        u.transform(record, &mut Emit::new(&mut batch))?;
        Ok(batch.iter().map(|r| String::from_utf8_lossy(r).into_owned()).collect())
    }

    const DATA: &str = r#"{"messageType":"DATA_MESSAGE","owner":"123456789012","logGroup":"/aws/lambda/f","logStream":"s","subscriptionFilters":["all"],"logEvents":[{"id":"1","timestamp":1680683189085,"message":"first \"quoted\" line"},{"id":"2","timestamp":1680683189086,"message":"second"}]}"#;
    const CONTROL: &str = r#"{"messageType":"CONTROL_MESSAGE","owner":"CloudwatchLogs","logGroup":"","logStream":"","subscriptionFilters":[],"logEvents":[{"id":"","timestamp":1680683189085,"message":"CWL CONTROL MESSAGE: Checking health of destination Firehose."}]}"#;

    #[test]
    fn unpacks_data_messages_and_drops_control_messages() {
        assert_eq!(
            unpack(true, &gzip(DATA.as_bytes())).ok(),
            Some(vec!["first \"quoted\" line".into(), "second".into()])
        );
        assert_eq!(unpack(false, &gzip(DATA.as_bytes())).ok(), Some(vec![DATA.to_string()]));
        assert_eq!(unpack(true, &gzip(CONTROL.as_bytes())).ok(), Some(vec![]));
    }

    #[test]
    fn fails_what_is_not_a_gzip_subscription_document() {
        let not_gzip = unpack(true, DATA.as_bytes()).err();
        assert_eq!(
            not_gzip.map(|f| (f.output_type, f.code)),
            Some((ErrorOutputType::DecompressionFailed, DECOMPRESSION_FAILED))
        );
        let not_document = unpack(true, &gzip(b"{\"hello\":1}")).err();
        assert_eq!(not_document.map(|f| f.code), Some(INVALID_DOCUMENT));
        let mut truncated = gzip(DATA.as_bytes());
        truncated.truncate(truncated.len() / 2);
        assert!(unpack(true, &truncated).is_err());
    }
}

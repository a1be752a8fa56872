//! Backing up what a destination did not take: a failed object is turned back into its records and
//! written to the error output as Firehose error documents (docs/firehose.md §6;
//! `errorCode` with the destination's code, `attemptsMade`, timestamps), under `error_prefix` with
//! the error-output type of the destination (`s3-failed`, `http-endpoint-failed`, …). Records a
//! destination refused one by one ([`crate::contract::DeliveryError::Partly`]) get documents with
//! the destination's own code, message and fields ([`refused_payload`]).
//!
//! Guarantees: every record of the failed object is in the documents, as the sink's format encoded
//! it ([`crate::format::ObjectFormat::records_of`]: NDJSON lines, CSV rows without the header,
//! Parquet rows as JSON objects, the records of an HTTP endpoint request as they were received). An
//! object that cannot be split (format `raw` has no delimiter, or the bytes do not decode) becomes
//! one document holding the whole object, so nothing is lost either way. Building the payload
//! cannot fail.

use bytes::Bytes;

use crate::compression::{Compression, compress};
use crate::config::SinkSettings;
use crate::contract::{DeliveryError, Payload, RefusedRecord};
use crate::error_output::{ErrorDocument, ErrorOutputType, Reason};
use crate::record::now_ms;

/// A data object whose delivery failed for good.
#[derive(Debug, Clone)]
pub struct FailedObject {
    /// Its key or request id.
    pub key: String,
    /// The object as it was to be stored (all its parts).
    pub body: Bytes,
    /// Records in it.
    pub records: u64,
    /// Arrival time of its oldest record (each document's `arrivalTimestamp`).
    pub oldest_arrival_ms: i64,
    /// Delivery attempts made.
    pub attempts: u32,
    /// The last error.
    pub error: DeliveryError,
}

/// The error-output object for `failed`: one document per record, compressed as the sink's
/// objects are, keyed under the error prefix with `output_type`.
pub fn error_payload(settings: &SinkSettings, output_type: ErrorOutputType, failed: &FailedObject) -> Payload {
    let ended = now_ms();
    let (code, message) = (failed.error.code(), failed.error.to_string());
    let mut text = Vec::new();
    let mut document = |raw: &[u8], message: &str, details: Option<&serde_json::Map<String, serde_json::Value>>| {
        let reason = Reason::Delivery { error_code: code, error_message: message };
        let document = ErrorDocument::new(raw, failed.oldest_arrival_ms, reason, failed.attempts, ended);
        match details {
            Some(details) => document.with_details(details).write_line(&mut text),
            None => document.write_line(&mut text),
        }
    };
    match settings.format.records_of(&failed.body) {
        Ok(records) => records.iter().enumerate().for_each(|(index, r)| {
            let details = settings.format.record_details(&failed.key, index);
            document(r, &message, details.as_ref());
        }),
        Err(why) => document(&failed.body, &format!("{message} (the object is kept whole: {why})"), None),
    }
    documents_payload(settings, output_type, text, failed.records, failed.oldest_arrival_ms)
}

/// The error-output object for records a destination refused one by one (per-item errors of a
/// request it otherwise took): one document per record with the destination's own code, message
/// and fields.
pub fn refused_payload(
    settings: &SinkSettings,
    output_type: ErrorOutputType,
    refused: &[RefusedRecord],
    oldest_arrival_ms: i64,
    attempts: u32,
) -> Payload {
    let ended = now_ms();
    let mut text = Vec::new();
    for r in refused {
        let reason = Reason::Delivery { error_code: &r.code, error_message: &r.message };
        ErrorDocument::new(&r.record, oldest_arrival_ms, reason, attempts, ended)
            .with_details(&r.details)
            .write_line(&mut text);
    }
    documents_payload(settings, output_type, text, refused.len() as u64, oldest_arrival_ms)
}

/// Error documents compressed with the format's `compression_format` (as the sink's objects are;
/// not at all for a converted format's), keyed under the error prefix.
fn documents_payload(
    settings: &SinkSettings,
    output_type: ErrorOutputType,
    text: Vec<u8>,
    records: u64,
    oldest_arrival_ms: i64,
) -> Payload {
    // Compression into memory does not fail in practice; if it did, the documents go uncompressed.
    let compression = settings.format.compression_format();
    let (compression, body) = match compress(compression, &text) {
        Ok(body) => (compression, body),
        Err(_) => (Compression::None, text),
    };
    Payload {
        key: settings.keys.error_key(oldest_arrival_ms, output_type.name(), compression.extension()),
        body: Bytes::from(body),
        content_type: "application/x-ndjson",
        content_encoding: compression.content_encoding(),
        records,
        origins: None,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use super::*;
    use crate::buffer::ObjectBatcher;
    use crate::columnar::{JsonOptions, ParquetOptions, ParquetSpec, SchemaSource};
    use crate::compression::decompress;
    use crate::config::BufferingHints;
    use crate::contract::DestinationKind;
    use crate::format::{self, ObjectFormat};
    use crate::keys::ObjectKeys;
    use crate::record::RecordBatch;

    const S3_FAILED: ErrorOutputType = ErrorOutputType::DeliveryFailed(DestinationKind::S3);

    fn settings(format: std::sync::Arc<dyn ObjectFormat>) -> SinkSettings {
        let keys =
            ObjectKeys::new(Some("data/"), Some("errors/!{firehose:error-output-type}/"), "s", chrono_tz::Tz::UTC)
                .unwrap_or_else(|e| panic!("{e}"));
        SinkSettings::new(format, BufferingHints { size_bytes: 1 << 30, interval: Duration::from_secs(60) }, keys)
    }

    /// The one object the batcher makes of `records`.
    fn object(settings: &SinkSettings, records: &[&str]) -> Bytes {
        let mut batcher = ObjectBatcher::new(Arc::new(settings.clone()));
        let mut batch = RecordBatch::with_capacity(1_000, 0);
        records.iter().for_each(|r| batch.push(r.as_bytes()));
        let mut sealed = Vec::new();
        batcher.append(&batch, 1, Instant::now(), &mut sealed).unwrap_or_else(|e| panic!("{e}"));
        batcher.seal_all(&mut sealed).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(sealed.len(), 1);
        sealed.remove(0).payload.body
    }

    fn failed(body: Bytes, records: u64) -> FailedObject {
        let error = DeliveryError::Permanent { code: "S3.AccessDenied".into(), message: "Access Denied".into() };
        FailedObject { key: "object-1".into(), body, records, oldest_arrival_ms: 1_000, attempts: 1, error }
    }

    /// The documents of an error payload, decompressed.
    fn documents(payload: &Payload, compression: Compression) -> Vec<serde_json::Value> {
        let text = decompress(compression, &payload.body).unwrap_or_else(|e| panic!("{e}"));
        text.split(|&b| b == b'\n')
            .filter(|l| !l.is_empty())
            .map(|l| serde_json::from_slice(l).unwrap_or_default())
            .collect()
    }

    fn raw_data(doc: &serde_json::Value) -> String {
        use base64::Engine;
        let bytes = base64::engine::general_purpose::STANDARD.decode(doc["rawData"].as_str().unwrap_or_default());
        String::from_utf8(bytes.unwrap_or_default()).unwrap_or_default()
    }

    #[test]
    fn ndjson_objects_come_back_record_by_record_as_delivery_error_documents() {
        let s = settings(format::ndjson(Compression::Gzip));
        let records = [r#"{"a":1}"#, r#"{"a":2}"#, r#"{"b":"x y"}"#];
        let payload = error_payload(&s, S3_FAILED, &failed(object(&s, &records), 3));
        assert!(payload.key.starts_with("errors/s3-failed/1970/01/01/00/s-1-1970-01-01-00-00-01-"), "{}", payload.key);
        assert!(payload.key.ends_with(".gz"));
        assert_eq!(payload.records, 3);
        let docs = documents(&payload, Compression::Gzip);
        assert_eq!(docs.iter().map(raw_data).collect::<Vec<_>>(), records);
        assert_eq!(docs[0]["errorCode"], "S3.AccessDenied");
        assert_eq!(docs[0]["attemptsMade"], 1);
        assert_eq!(docs[0]["arrivalTimestamp"], 1_000);
    }

    #[test]
    fn csv_rows_keep_their_quoted_newlines_and_lose_the_header() {
        let s = settings(format::csv(vec!["a".into(), "b".into()], Compression::Zstd));
        let body = object(&s, &[r#"{"a":"line\nbreak","b":1}"#, r#"{"a":"plain","b":2}"#]);
        let rows = s.format.records_of(&body).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(rows, [b"\"line\nbreak\",1".to_vec(), b"plain,2".to_vec()]);
    }

    #[test]
    fn parquet_rows_come_back_as_json_objects() {
        let spec = ParquetSpec {
            schema: SchemaSource::Infer(JsonOptions::default()),
            options: ParquetOptions {
                row_group_bytes: 1 << 20,
                page_bytes: 1 << 20,
                dictionary: true,
                v2: false,
                compression: Compression::Snappy,
            },
        };
        let s = settings(Arc::new(format::parquet::Parquet::new(spec)));
        let body = object(&s, &[r#"{"a":1,"b":"x"}"#, r#"{"a":2,"b":"y"}"#]);
        let rows = s.format.records_of(&body).unwrap_or_else(|e| panic!("{e}"));
        let rows: Vec<serde_json::Value> = rows.iter().map(|r| serde_json::from_slice(r).unwrap_or_default()).collect();
        assert_eq!(rows, [serde_json::json!({"a":1,"b":"x"}), serde_json::json!({"a":2,"b":"y"})]);
    }

    #[test]
    fn an_object_that_cannot_be_split_is_kept_whole() {
        let s = settings(format::raw(Compression::None));
        let payload = error_payload(&s, S3_FAILED, &failed(Bytes::from_static(b"abcdef"), 2));
        let docs = documents(&payload, Compression::None);
        assert_eq!(docs.len(), 1);
        assert_eq!(raw_data(&docs[0]), "abcdef");
        assert!(docs[0]["errorMessage"].as_str().unwrap_or_default().contains("kept whole"), "{}", docs[0]);
        // Bytes that do not decompress are kept whole too.
        let s = settings(format::ndjson(Compression::Gzip));
        let docs =
            documents(&error_payload(&s, S3_FAILED, &failed(Bytes::from_static(b"not gzip"), 1)), Compression::Gzip);
        assert_eq!(docs.iter().map(raw_data).collect::<Vec<_>>(), ["not gzip"]);
    }
}

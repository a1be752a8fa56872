//! Sink conformance: what every sink must do against its real destination, checked the same way for
//! all of them.
//!
//! A test describes its destination with a [`Destination`] (the sink configured against it, how to
//! read back what it holds, and, where the destination can be made to fail, how to inject a
//! [`Fault`]); [`conformance`] runs every check it can and returns a [`Report`] naming the checks
//! that passed and the ones skipped with the reason, so a test asserts which ran and cannot pass by
//! skipping. Payloads are made as the engine makes them: encoded with the sink's own wire format
//! when it has one, NDJSON compressed with gzip otherwise, and keyed under a fresh prefix.
//!
//! The checks:
//! - [`Check::StartUpCheck`]: after [`Sink::prepare`], the sink's [`Sink::check`] passes against
//!   the healthy destination.
//! - [`Check::Deliver`]: eight payloads delivered concurrently are stored byte for byte.
//! - [`Check::Redeliver`]: delivering a stored payload again succeeds and leaves the same bytes.
//! - [`Check::RetryableThenDelivered`]: with the destination unavailable a delivery fails as
//!   retryable and stores nothing; healed, the same payload is delivered.
//! - [`Check::PermanentRefusal`]: a destination that refuses (credentials, a 4xx the protocol calls
//!   final) fails the delivery as not retryable.
//! - [`Check::Parts`], [`Check::PartRetried`], [`Check::Abort`] (sinks with [`Sink::parts`]): an
//!   object sent in parts is stored as their concatenation; a part that failed is sent again under
//!   its number where the store allows; an aborted upload leaves nothing.
//! - [`Check::BackupOfRefused`]: the engine's backup of an object the destination refused, sent to
//!   the sink's error output, holds one error document per record with the record's exact bytes
//!   as the object holds it (its format's `records_of`: the record itself for every format that
//!   stores records as they are; the row for one that stores what a warehouse loads).

use std::sync::Arc;

use base64::Engine;
use bytes::Bytes;
use futures::future::BoxFuture;

use crate::backup::{FailedObject, error_payload};
use crate::compression::{Compression, decompress};
use crate::config::{BufferingHints, SinkSettings};
use crate::contract::{DeliveryError, Payload, Sink};
use crate::error_output::ErrorOutputType;
use crate::format::{self, ObjectFormat};
use crate::keys::ObjectKeys;
use crate::record::now_ms;

/// How a destination can be made to fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// It fails as a destination that may recover does (a 5xx, a reset connection).
    Unavailable,
    /// It refuses as a destination that will refuse again does (refused credentials, a final 4xx).
    Refused,
}

/// The real destination a sink under test delivers to, as the test sees it.
pub trait Destination: Send + Sync {
    /// The sink under test, configured against this destination.
    fn sink(&self) -> Arc<dyn Sink>;
    /// The bytes the destination holds for the object or request `key`, exactly as delivered
    /// (`None`: it holds nothing under that key).
    fn stored(&self, key: &str) -> BoxFuture<'static, Option<Vec<u8>>>;
    /// The bytes the sink's error output holds under `key` (by default, the destination itself).
    fn stored_error_output(&self, key: &str) -> BoxFuture<'static, Option<Vec<u8>>> {
        self.stored(key)
    }
    /// From now on, every write fails with `fault` (`None`: the destination is healed). Returns
    /// `false` when this destination cannot be made to fail that way; the checks that need it are
    /// then reported as skipped.
    fn inject(&self, fault: Option<Fault>) -> bool {
        let _ = fault;
        false
    }
}

/// One conformance check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    /// Its start-up check ([`Sink::check`], what `sluice validate --check` asks) passes against the
    /// healthy destination.
    StartUpCheck,
    /// Payloads delivered concurrently are stored byte for byte.
    Deliver,
    /// A stored payload delivered again is stored the same.
    Redeliver,
    /// An unavailable destination fails as retryable, then takes the same payload once healed.
    RetryableThenDelivered,
    /// A refusing destination fails as not retryable.
    PermanentRefusal,
    /// An object sent in parts is stored whole.
    Parts,
    /// A failed part is sent again under its number.
    PartRetried,
    /// An aborted upload leaves nothing.
    Abort,
    /// The backup of a refused object reaches the error output with every record.
    BackupOfRefused,
}

/// What [`conformance`] checked.
pub type Report = super::Report<Check>;

/// One payload and the records encoded in it.
struct Sample {
    payload: Payload,
    records: Vec<Vec<u8>>,
}

/// Encodes `records` with `format` into a payload keyed under `prefix` (or named by the format).
fn sample(format: &dyn ObjectFormat, prefix: &str, index: usize, records: Vec<Vec<u8>>) -> Result<Sample, String> {
    let mut encoder = format.open().map_err(|e| format!("cannot open an object: {e}"))?;
    for record in &records {
        encoder.append(record).map_err(|e| format!("the sink's format refused a plain JSON record: {e}"))?;
    }
    let key =
        format.object_key().unwrap_or_else(|| format!("{prefix}/data/{index}/object-{index}{}", format.extension()));
    let body = encoder.finish(&key).map_err(|e| format!("cannot finish an object: {e}"))?;
    let payload = Payload {
        key,
        body: Bytes::from(body),
        content_type: format.content_type(),
        content_encoding: format.content_encoding(),
        records: records.len() as u64,
        origins: None,
    };
    Ok(Sample { payload, records })
}

/// `n` JSON records, each different (quotes, non-ASCII text and a nested value included).
fn records(index: usize, n: usize) -> Vec<Vec<u8>> {
    (0..n)
        .map(|j| {
            format!(r#"{{"object":{index},"record":{j},"text":"a \"quoted\" é line","nested":{{"n":[{j},{index}]}}}}"#)
                .into_bytes()
        })
        .collect()
}

async fn expect_stored(destination: &dyn Destination, payload: &Payload, what: &str) -> Result<(), String> {
    match destination.stored(&payload.key).await {
        Some(stored) if stored == payload.body.as_ref() => Ok(()),
        Some(stored) => {
            Err(format!("{what}: {} holds {} bytes, {} were delivered", payload.key, stored.len(), payload.body.len()))
        }
        None => Err(format!("{what}: nothing is stored under {}", payload.key)),
    }
}

/// Runs every check `destination` allows; the first failure is the error.
pub async fn conformance(destination: &dyn Destination) -> Result<Report, String> {
    let sink = destination.sink();
    let mut report = Report::default();
    let prefix = format!("conformance-{:08x}", rand::random::<u32>());
    let format = sink.wire_format().unwrap_or_else(|| format::ndjson(Compression::Gzip));
    let samples =
        (0..10).map(|i| sample(format.as_ref(), &prefix, i, records(i, i * 7 + 1))).collect::<Result<Vec<_>, _>>()?;
    crate::contract::prepare_sink(&sink).await.map_err(|e| format!("prepare: {e}"))?;
    crate::contract::check_sink(&sink)
        .await
        .map_err(|e| format!("the start-up check of a healthy destination failed: {e}"))?;
    report.passed.push(Check::StartUpCheck);

    // Deliver, concurrently.
    let deliveries = samples[..8].iter().map(|s| sink.deliver(s.payload.clone()));
    for (result, s) in futures::future::join_all(deliveries).await.into_iter().zip(&samples) {
        result.map_err(|e| format!("deliver {}: {e}", s.payload.key))?;
    }
    for s in &samples[..8] {
        expect_stored(destination, &s.payload, "deliver").await?;
    }
    report.passed.push(Check::Deliver);

    // Redeliver: what a retry after a lost answer does.
    sink.deliver(samples[0].payload.clone()).await.map_err(|e| format!("redeliver: {e}"))?;
    expect_stored(destination, &samples[0].payload, "redeliver").await?;
    report.passed.push(Check::Redeliver);

    // Unavailable, then healed.
    let retried = &samples[8].payload;
    if destination.inject(Some(Fault::Unavailable)) {
        let failed = sink.deliver(retried.clone()).await;
        let stored_while_failing = destination.stored(&retried.key).await.is_some();
        destination.inject(None);
        match failed {
            Err(e) if e.is_retryable() => {}
            Err(e) => return Err(format!("an unavailable destination failed the delivery as final: {e}")),
            Ok(()) => return Err("an unavailable destination took the delivery".into()),
        }
        if stored_while_failing {
            return Err(format!("a failed delivery left {} stored", retried.key));
        }
        sink.deliver(retried.clone()).await.map_err(|e| format!("delivery after the destination healed: {e}"))?;
        expect_stored(destination, retried, "delivery after a retryable failure").await?;
        report.passed.push(Check::RetryableThenDelivered);
    } else {
        report.skipped.push((Check::RetryableThenDelivered, "the destination cannot be made unavailable".into()));
    }

    // Refused.
    if destination.inject(Some(Fault::Refused)) {
        let refused = sink.deliver(samples[9].payload.clone()).await;
        destination.inject(None);
        match refused {
            Err(e) if !e.is_retryable() => report.passed.push(Check::PermanentRefusal),
            Err(e) => return Err(format!("a refusing destination failed the delivery as retryable: {e}")),
            Ok(()) => return Err("a refusing destination took the delivery".into()),
        }
    } else {
        report.skipped.push((Check::PermanentRefusal, "the destination cannot be made to refuse".into()));
    }

    parts(destination, sink.as_ref(), &prefix, &mut report).await?;
    backup_of_refused(destination, &sink, format, &prefix, &samples[1]).await?;
    report.passed.push(Check::BackupOfRefused);
    Ok(report)
}

/// Uploads in parts: stored whole, a failed part sent again, an abort leaves nothing.
async fn parts(
    destination: &dyn Destination,
    sink: &dyn Sink,
    prefix: &str,
    report: &mut Report,
) -> Result<(), String> {
    let Some(parts) = sink.parts() else {
        for check in [Check::Parts, Check::PartRetried, Check::Abort] {
            report.skipped.push((check, "the sink takes no uploads in parts".into()));
        }
        return Ok(());
    };
    // Every part but the last is at least 5 MiB (S3's rule).
    let first = Bytes::from(vec![b'a'; (5 << 20) + 17]);
    let last = Bytes::from_static(b"the last part\n");
    let key = format!("{prefix}/parts/whole.bin");
    let upload = parts.start_upload(&key, "application/octet-stream", None).await.map_err(|e| format!("start: {e}"))?;
    upload.put_part(0, first.clone()).await.map_err(|e| format!("part 0: {e}"))?;
    let mut part_failed = false;
    if upload.retries_parts() && destination.inject(Some(Fault::Unavailable)) {
        let failed = upload.put_part(1, last.clone()).await;
        destination.inject(None);
        match failed {
            Err(e) if e.is_retryable() => part_failed = true,
            Err(e) => return Err(format!("an unavailable destination failed a part as final: {e}")),
            Ok(()) => return Err("an unavailable destination took a part".into()),
        }
    }
    upload.put_part(1, last.clone()).await.map_err(|e| format!("part 1: {e}"))?;
    upload.complete().await.map_err(|e| format!("complete: {e}"))?;
    let whole: Vec<u8> = [first.as_ref(), last.as_ref()].concat();
    match destination.stored(&key).await {
        Some(stored) if stored == whole => report.passed.push(Check::Parts),
        Some(stored) => return Err(format!("parts: {key} holds {} bytes, {} were sent", stored.len(), whole.len())),
        None => return Err(format!("parts: nothing is stored under {key}")),
    }
    if part_failed {
        report.passed.push(Check::PartRetried);
    } else if upload.retries_parts() {
        report.skipped.push((Check::PartRetried, "the destination cannot be made unavailable".into()));
    } else {
        report.skipped.push((Check::PartRetried, "the store numbers parts itself: a part is not sent again".into()));
    }

    let key = format!("{prefix}/parts/aborted.bin");
    let upload = parts.start_upload(&key, "application/octet-stream", None).await.map_err(|e| format!("start: {e}"))?;
    upload.put_part(0, first).await.map_err(|e| format!("part 0 of the aborted upload: {e}"))?;
    upload.abort().await.map_err(|e| format!("abort: {e}"))?;
    if destination.stored(&key).await.is_some() {
        return Err(format!("an aborted upload left {key} stored"));
    }
    report.passed.push(Check::Abort);
    Ok(())
}

/// The engine's backup of `refused` (as if the destination refused it for good), sent to the
/// sink's error output, must hold each of its records in an error document.
async fn backup_of_refused(
    destination: &dyn Destination,
    sink: &Arc<dyn Sink>,
    format: Arc<dyn ObjectFormat>,
    prefix: &str,
    refused: &Sample,
) -> Result<(), String> {
    let keys = ObjectKeys::new(
        Some(&format!("{prefix}/data/")),
        Some(&format!("{prefix}/errors/!{{firehose:error-output-type}}/")),
        "conformance",
        chrono_tz::Tz::UTC,
    )
    .map_err(|e| format!("{e:?}"))?;
    let compression = format.compression();
    let settings = SinkSettings::new(format, BufferingHints::DEFAULT, keys);
    let failed = FailedObject {
        key: refused.payload.key.clone(),
        body: refused.payload.body.clone(),
        records: refused.payload.records,
        oldest_arrival_ms: now_ms(),
        attempts: 3,
        error: DeliveryError::Permanent {
            code: "Conformance.Refused".into(),
            message: "refused by the testkit".into(),
        },
    };
    let output_type = ErrorOutputType::DeliveryFailed(sink.destination());
    let payload = error_payload(&settings, output_type, &failed);
    if !payload.key.contains(output_type.name()) {
        return Err(format!("the backup's key {} does not name its type {}", payload.key, output_type.name()));
    }
    let error_output = sink.error_output().unwrap_or_else(|| Arc::clone(sink));
    error_output.deliver(payload.clone()).await.map_err(|e| format!("the error output refused the backup: {e}"))?;
    let stored = destination
        .stored_error_output(&payload.key)
        .await
        .ok_or_else(|| format!("the error output holds nothing under {}", payload.key))?;
    let text = decompress(compression, &stored).map_err(|e| format!("the backup does not decompress: {e}"))?;
    let mut backed_up = Vec::new();
    for line in text.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
        let document: serde_json::Value =
            serde_json::from_slice(line).map_err(|e| format!("an error document is not JSON: {e}"))?;
        if document["errorCode"] != "Conformance.Refused" || document["attemptsMade"] != 3 {
            return Err(format!("an error document lacks the delivery error: {document}"));
        }
        let raw = document["rawData"].as_str().ok_or_else(|| format!("no rawData in {document}"))?;
        backed_up.push(
            base64::engine::general_purpose::STANDARD.decode(raw).map_err(|e| format!("rawData is not base64: {e}"))?,
        );
    }
    let held = settings
        .format
        .records_of(&refused.payload.body)
        .map_err(|e| format!("the refused object does not decode: {e}"))?;
    if held.len() != refused.records.len() {
        return Err(format!("the object decodes to {} records, not the {} encoded", held.len(), refused.records.len()));
    }
    if backed_up != held {
        return Err(format!(
            "the backup holds {} records, not the {} of the refused object, as they were",
            backed_up.len(),
            refused.records.len()
        ));
    }
    Ok(())
}

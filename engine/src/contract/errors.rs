//! How connectors fail: a sink's [`DeliveryError`] (retry it, not, or never, or — for a
//! destination that answers record by record — which records it did not take) and a source's
//! [`SourceError`]. Callers match on variants, never on messages.

use super::Payload;

/// Why a delivery failed. Callers match on the variant, never on the message. Its text is what the
/// destination said (the message alone: it becomes an error document's `errorMessage`, where
/// Firehose puts the destination's answer, and the logs say what is done about it).
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum DeliveryError {
    /// May succeed if tried again (timeouts, connection errors, throttling, 5xx).
    #[error("{message}")]
    Retryable {
        /// Firehose-style code, e.g. `S3.InternalError`.
        code: String,
        /// What the destination said.
        message: String,
    },
    /// Will fail again the same way (bad credentials, missing bucket, other 4xx).
    #[error("{message}")]
    Permanent {
        /// Firehose-style code, e.g. `S3.AccessDenied`.
        code: String,
        /// What the destination said.
        message: String,
    },
    /// This payload can never be stored as it is, whatever the destination's state (an invalid
    /// object key): a data object goes to the error output at once; an error-output object that
    /// cannot be stored stops the run instead of blocking it forever.
    #[error("{message}")]
    Unstorable {
        /// Firehose-style code, e.g. `S3.InvalidKey`.
        code: String,
        /// Why.
        message: String,
    },
    /// The destination answered record by record and took only some of the payload's records (an
    /// OpenSearch `_bulk` response with per-item errors). The engine writes `refused` to the error
    /// output at once and sends `retry` (a payload the sink made of the records worth sending
    /// again, such as items answered 429 or 5xx) with back-off within the retry duration, backing it
    /// up when the duration runs out; every other record of the payload is stored.
    #[error("{message}")]
    Partly {
        /// Firehose-style code of why the rest was not stored, e.g. `OpenSearch.ItemErrors`.
        code: String,
        /// A summary of the per-record answers.
        message: String,
        /// Records to send again, as a payload of the sink's own wire format.
        retry: Option<Box<Payload>>,
        /// Records the destination refused for good.
        refused: Vec<RefusedRecord>,
    },
}

/// One record a destination refused for good, with its own answer (an OpenSearch item's status and
/// error) and the fields its error document carries besides Firehose's common ones
/// (`esDocumentId`, `esIndexName`, `esTypeName` for OpenSearch).
#[derive(Debug, Clone)]
pub struct RefusedRecord {
    /// The record as it was received.
    pub record: Vec<u8>,
    /// Its error code (an OpenSearch item's HTTP status, e.g. `400`).
    pub code: String,
    /// What the destination said about it.
    pub message: String,
    /// Destination-specific fields of its error document.
    pub details: serde_json::Map<String, serde_json::Value>,
}

impl DeliveryError {
    /// The Firehose-style code.
    pub fn code(&self) -> &str {
        match self {
            DeliveryError::Retryable { code, .. }
            | DeliveryError::Permanent { code, .. }
            | DeliveryError::Unstorable { code, .. }
            | DeliveryError::Partly { code, .. } => code,
        }
    }

    /// Whether another attempt of the same payload may succeed (a partly stored payload is not sent
    /// again whole: its `retry` payload is).
    pub fn is_retryable(&self) -> bool {
        matches!(self, DeliveryError::Retryable { .. })
    }
}

/// A source failed in a way that stops it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SourceError {
    /// Reading failed: this worker's reader stops.
    #[error("{context}: {source}")]
    Io {
        /// What was being read.
        context: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// One input of several (a file, an object) could not be read to its end (it is corrupt,
    /// or went away): what was read of it goes on, the rest of it is given up, and the reader
    /// goes on with its next input, so one bad file among thousands neither stops the others
    /// nor stops some of them depending on which worker met it. The engine reports it as it
    /// reports a stopping error (the run's outcome names it: exit 1).
    #[error("{context}: {source}")]
    InputFailed {
        /// What was being read.
        context: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The source's setup was wrong in a way only seen at run time (e.g. a glob matched nothing).
    #[error("{0}")]
    Setup(String),
    /// The system the source reads refused it at start (a stream or bucket it does not have,
    /// credentials it does not take), with that system's error code as the error log writes it.
    #[error("{message}")]
    Refused {
        /// `Kinesis.ResourceNotFoundException`, `S3.NoSuchBucket`, …
        code: String,
        /// What was refused, and why.
        message: String,
    },
}

impl SourceError {
    /// Whether the reader goes on after it (with its next input).
    pub fn reader_goes_on(&self) -> bool {
        matches!(self, SourceError::InputFailed { .. })
    }

    /// The error code of a refusal ([`SourceError::Refused`]); none for the others.
    pub fn code(&self) -> Option<&str> {
        match self {
            SourceError::Refused { code, .. } => Some(code),
            _ => None,
        }
    }
}

//! How connectors fail: a sink's [`DeliveryError`] (retry it, not, or never) and a source's
//! [`SourceError`]. Callers match on variants, never on messages.

/// Why a delivery failed. Callers match on the variant, never on the message.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum DeliveryError {
    /// May succeed if tried again (timeouts, connection errors, throttling, 5xx).
    #[error("retryable: {message}")]
    Retryable {
        /// Firehose-style code, e.g. `S3.InternalError`.
        code: String,
        /// What the destination said.
        message: String,
    },
    /// Will fail again the same way (bad credentials, missing bucket, other 4xx).
    #[error("permanent: {message}")]
    Permanent {
        /// Firehose-style code, e.g. `S3.AccessDenied`.
        code: String,
        /// What the destination said.
        message: String,
    },
    /// This payload can never be stored as it is, whatever the destination's state (an invalid
    /// object key): a data object goes to the error output at once; an error-output object that
    /// cannot be stored stops the run instead of blocking it forever.
    #[error("unstorable: {message}")]
    Unstorable {
        /// Firehose-style code, e.g. `S3.InvalidKey`.
        code: String,
        /// Why.
        message: String,
    },
}

impl DeliveryError {
    /// The Firehose-style code.
    pub fn code(&self) -> &str {
        match self {
            DeliveryError::Retryable { code, .. }
            | DeliveryError::Permanent { code, .. }
            | DeliveryError::Unstorable { code, .. } => code,
        }
    }

    /// Whether another attempt may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self, DeliveryError::Retryable { .. })
    }
}

/// A source failed in a way that stops it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SourceError {
    /// Reading failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being read.
        context: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The source's setup was wrong in a way only seen at run time (e.g. a glob matched nothing).
    #[error("{0}")]
    Setup(String),
}

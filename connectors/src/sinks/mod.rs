//! Sinks: each stores finished payloads and classifies its failures. `staged_files`,
//! `upload_journal` and `renewing_store` are parts of the `object_store` sink (its `file://`
//! backend, its record of open multipart uploads, and its store trusting a `tls.ca` renewed while
//! it runs), not sinks of their own.

pub mod http_endpoint;
pub mod object_store;
pub mod opensearch;
pub mod postgres;
mod renewing_store;
pub mod splunk;
pub(crate) mod staged_files;
mod upload_journal;

//! Sinks: each stores finished payloads and classifies its failures. `staged_files` and
//! `upload_journal` are parts of the `object_store` sink (its `file://` backend, and its record of
//! open multipart uploads), not sinks of their own.

pub mod http_endpoint;
pub mod object_store;
pub mod opensearch;
pub mod postgres;
pub mod splunk;
pub(crate) mod staged_files;
mod upload_journal;

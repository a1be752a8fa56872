//! Sinks: each stores finished payloads and classifies its failures.

pub mod http_endpoint;
pub mod object_store;

//! Sinks: each stores finished payloads and classifies its failures.

pub mod object_store;

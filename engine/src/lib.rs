//! sluice's engine: records, pipeline config (parse → resolve → plan), the timely dataflow and its
//! operators, buffering, encoders and compression, object keys, retries, metrics, the traits
//! connectors implement, and a testkit.
//!
//! Connectors (sources and sinks) live in `sluice-connectors`; they never batch, encode or compress.

pub mod backup;
pub mod buffer;
pub mod columnar;
pub mod config;
pub mod encode;
pub mod error_output;
pub mod keys;
pub mod metrics;
pub mod operators;
pub mod record;
pub mod redact;
pub mod retry;
pub mod runtime;
pub mod testkit;
pub mod traits;
pub mod wal;

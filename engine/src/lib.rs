//! sluice's engine: records, pipeline config (parse → resolve → plan), the timely dataflow and its
//! operators, buffering, object formats and compression, object keys, retries, metrics, the
//! connector contract, and (behind the `testkit` feature) the conformance testkit.
//!
//! Connectors (sources and sinks) live in `sluice-connectors`; they never batch or compress, and a
//! sink that needs its own request body provides its format through the contract.

pub mod audit;
pub mod backup;
pub mod buffer;
pub mod cluster;
pub mod columnar;
pub mod compression;
pub mod config;
pub mod contract;
pub mod destination;
pub mod error_log;
pub mod error_output;
pub mod folders;
pub mod format;
pub mod keys;
pub mod line_store;
pub mod metrics;
pub mod operators;
pub mod partitions;
pub mod record;
pub mod redact;
pub mod retry;
pub mod runtime;
#[cfg(feature = "testkit")]
pub mod testkit;
pub mod unbuffered;
pub mod wal;

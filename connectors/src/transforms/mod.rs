//! Transforms, one file each: what runs between sources and sinks (contract:
//! `sluice_engine::contract::Transform`), listed in [`mod@crate::registry`]; [`json`] is the scanner
//! the JSON transforms share, [`mmdb`] the MaxMind DB search the enrich transform walks, [`words`]
//! the eight-bytes-at-a-time byte tests the scanners use.

pub mod cloudwatch_logs;
pub mod dedup;
pub mod enrich;
pub mod jq;
pub mod json;
pub mod keyed;
pub mod lambda;
pub mod mmdb;
pub mod parse;
pub mod redact;
pub mod tables;
pub mod words;

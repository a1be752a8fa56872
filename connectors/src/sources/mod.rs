//! Sources: each reads records on the timely workers, one share per worker.

pub mod file;
pub mod firehose;
pub mod generator;
pub mod http;

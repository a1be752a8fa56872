//! Sources: each reads records on the timely workers, one share per worker.

pub mod file;
pub mod file_checkpoint;
pub mod firehose;
pub mod fluent;
pub mod generator;
pub mod http;
pub mod http_endpoint;
pub mod kinesis;
pub mod object_store;
pub mod otlp;
pub mod splunk_hec;
pub mod syslog;

//! sluice's integration tests: one test binary for the workspace (links once). Every test runs
//! whole pipelines against real components on 127.0.0.1 (an S3-protocol server, the file system,
//! the `sluice` binary itself).

// A failed set-up or check should stop a test with its reason: panicking is the point here.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod alerts;
mod api;
mod azure;
mod bench;
mod cli;
mod cluster;
mod config_errors;
mod crash;
mod dashboard;
mod dedup;
mod disk_full;
mod enrich;
mod error_log;
mod fluent;
mod fuzz;
mod gcs;
mod http_endpoint;
mod kinesis;
mod listener;
mod opensearch;
mod otlp;
mod outage;
mod parquet;
mod partitioning;
mod pipelines;
mod postgres;
mod resume;
mod s3;
mod security;
mod splunk;
mod splunk_hec;
mod support;
mod syslog;
mod top;
mod transforms;
mod webdav;

//! sluice's integration tests: one test binary for the workspace (links once). Every test runs
//! whole pipelines against real components on 127.0.0.1 (an S3-protocol server, the file system,
//! the `sluice` binary itself).

mod cli;
mod config_errors;
mod pipelines;
mod s3;
mod support;

//! `sluice bench`: sluice beside the tools users would otherwise use, on the same generated data, in
//! the same invocation, so every figure is read as a ratio on the same (shared, noisy) machine.
//!
//! It is part of the `sluice` binary, not of the connectors' library: one concern per file.
//! - [`workload`]: the generated inputs (`sluice gen`'s synthesizer, fixed seeds: CloudTrail-style
//!   records for the compression scenarios, CloudFront-style for Parquet), cached under `<out>/data`.
//! - [`tools`]: finding the baselines (the PATH, the repository's virtualenvs) and command lines.
//! - [`plan`]: the scenarios, each a list of cases (sluice runs and baselines doing the same work:
//!   the same input, the same schema, the same compression level) and the comparisons between them.
//! - [`schema`]: the schema sluice declares, as each baseline is told it.
//! - [`check`]: what each case's output must hold for its run to count.
//! - [`run`]: running the cases alternately (A B C A B C …, so a noisy neighbour hits all alike), each
//!   a process measured through `sluice measure` (wall, CPU, peak RSS of that process alone); the
//!   `ingest` cases are servers sent PutRecordBatch load from this process.
//! - [`stats`]: medians, spreads and ratios; [`report`]: the Markdown and JSON; [`svg`]: the chart.
//!
//! Guarantees: a baseline that is not installed, fails or writes an incomplete output is listed in
//! the report's notes with the reason, never dropped silently and never compared; a sluice case that
//! fails stops the bench with its exit code (a failed run has no meaningful time). No figure is
//! asserted.

mod check;
mod pg;
mod plan;
mod report;
mod run;
mod schema;
mod stats;
mod svg;
mod tables;
mod tools;
mod workload;

use std::io;
use std::path::PathBuf;

pub use report::markdown;
pub use run::run_bench;
pub use workload::parse_size;

/// Every scenario the harness knows, in report order.
pub const SCENARIOS: &[&str] = &[
    "gzip",
    "zstd",
    "transform",
    "parse",
    "partition",
    "parquet",
    "enrich",
    "tables",
    "dedup",
    "http",
    "opensearch",
    "postgres",
    "ingest",
    "scale",
    "cluster",
];

/// What to run.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// Scenario names (from [`SCENARIOS`]).
    pub scenarios: Vec<String>,
    /// Input size in bytes (the `scale` and `dedup` scenarios also use ten times this).
    pub size_bytes: u64,
    /// Where data, work files and results go.
    pub out: PathBuf,
    /// Runs of each case.
    pub runs: usize,
    /// The `sluice` binary to measure (and to measure with).
    pub sluice: PathBuf,
    /// Threads for sluice and for the baselines that take a thread count.
    pub threads: usize,
}

/// Why the bench could not run.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// Reading or writing the work folder, or starting a process, failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The error.
        source: io::Error,
    },
    /// A sluice case failed (a baseline that fails is noted and left out instead).
    #[error("case `{case}` failed ({why}); run it by hand to see why: {command}")]
    CaseFailed {
        /// The case.
        case: String,
        /// How it failed: its exit code, or why it could not be measured.
        why: String,
        /// The command line.
        command: String,
    },
    /// An unknown scenario name.
    #[error("unknown scenario `{0}`; the scenarios are {list}", list = SCENARIOS.join(", "))]
    UnknownScenario(String),
}

fn io_error(what: impl Into<String>) -> impl FnOnce(io::Error) -> BenchError {
    let what = what.into();
    move |source| BenchError::Io { what, source }
}

#[cfg(test)]
mod tests {
    use super::schema::{declared, duckdb_columns};

    #[test]
    fn the_cloudfront_schema_is_given_to_duckdb_with_its_types() {
        let columns = declared(include_str!("../../../../../pipelines/schemas/cloudfront.toml")).unwrap();
        let text = duckdb_columns(&columns);
        assert!(text.starts_with("{'timestamp': 'TIMESTAMPTZ', "), "{text}");
        assert!(text.contains("'sc_status': 'SMALLINT'") && text.ends_with("'ssl_protocol': 'VARCHAR'}"), "{text}");
        assert!(declared("[[columns]]\nname = \"m\"\ntype = \"map<string,int>\"\n").is_err());
    }
}

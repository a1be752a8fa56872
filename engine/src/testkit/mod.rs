//! Testkit (the `testkit` feature; never in the product): the conformance checks every connector
//! runs, and helpers the connectors' and integration tests share.
//!
//! [`sink::conformance`] is what every sink must pass against its real destination (its start-up
//! check, deliver,
//! redeliver, a retryable failure then the redelivery, a permanent refusal, uploads in parts and
//! their abort, the backup of a refused object); [`source::conformance`] is what every source must
//! pass through the real runtime (each record exactly once at 1, 2 and 4 workers, drained on stop,
//! resumed after a stop where it keeps its place), delivering into [`capture`]'s sink;
//! [`transform::conformance`] is what every transform must pass (everything answered once the input
//! ends, epochs kept, failures as records entered, independent of batching).
//! [`run_pipeline`] resolves TOML text and runs it to completion; [`read_lines`] decompresses and
//! splits delivered objects.

pub mod capture;
pub mod sink;
pub mod source;
pub mod transform;

use std::path::Path;
use std::sync::Arc;

use crate::compression::{Compression, decompress};
use crate::config::{Diagnostics, Plan, Registry, load_str};
use crate::metrics::PipelineMetrics;
use crate::runtime::{RunOptions, RunReport, run};

/// What a conformance run checked: the checks that passed, and those not run with the reason (a
/// test asserts which ran, so it cannot pass by skipping).
#[derive(Debug)]
pub struct Report<C> {
    /// The checks that passed.
    pub passed: Vec<C>,
    /// The checks not run, and why.
    pub skipped: Vec<(C, String)>,
}

impl<C> Default for Report<C> {
    fn default() -> Self {
        Report { passed: Vec::new(), skipped: Vec::new() }
    }
}

impl<C: PartialEq> Report<C> {
    /// Whether `check` ran and passed.
    pub fn passed(&self, check: C) -> bool {
        self.passed.contains(&check)
    }
}

/// Resolves `toml` (named `pipeline.toml` in messages).
pub fn plan_from_str(toml: &str, registry: &Registry) -> Result<Plan, Diagnostics> {
    load_str("pipeline.toml", toml.to_string(), Path::new("."), registry)
}

/// A pipeline `name` reading the files `input` (source `in`) into one object-store sink `out` at
/// `url`; `sink_keys` are the sink's other keys as TOML lines (format, compression, schema, ...).
pub fn file_pipeline_toml(name: &str, input: &Path, url: &str, sink_keys: &str) -> String {
    format!(
        "[pipeline]\nname = \"{name}\"\n\n[sources.in]\ntype = \"file\"\npaths = [\"{}\"]\n\n\
         [sinks.out]\ntype = \"object_store\"\ninputs = [\"in\"]\nurl = \"{url}\"\n{sink_keys}\n",
        input.display()
    )
}

/// Resolves and runs `toml` with `workers` workers; returns the report and the counters.
pub fn run_pipeline(
    toml: &str,
    registry: &Registry,
    workers: usize,
) -> Result<(RunReport, Arc<PipelineMetrics>), String> {
    let plan = plan_from_str(toml, registry).map_err(|d| d.to_string())?;
    let metrics = Arc::new(plan.new_metrics());
    let mut options = RunOptions::for_plan(&plan);
    options.workers = workers;
    let report = run(&plan, &options, Arc::clone(&metrics)).map_err(|e| e.to_string())?;
    Ok((report, metrics))
}

/// The compression of the object `key` holding `body`: its key's extension says which, and for
/// `.snappy` its first byte which framing.
pub fn compression_of_object(key: &str, body: &[u8]) -> Compression {
    if key.ends_with(".gz") {
        Compression::Gzip
    } else if key.ends_with(".zst") {
        Compression::Zstd
    } else if key.ends_with(".snappy") {
        crate::compression::snappy_framing(body.first().copied())
    } else {
        Compression::None
    }
}

/// Decompresses an object (by its key's extension) and returns its lines.
pub fn read_lines(key: &str, body: &[u8]) -> std::io::Result<Vec<String>> {
    let bytes = decompress(compression_of_object(key, body), body)?;
    Ok(String::from_utf8_lossy(&bytes).lines().map(str::to_string).collect())
}

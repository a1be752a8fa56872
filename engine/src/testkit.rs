//! Testkit: helpers every connector's tests and the integration tests share.
//!
//! [`run_pipeline`] resolves TOML text and runs it to completion; [`read_lines`] decompresses and
//! splits delivered objects; [`sink_conformance`] is the check every sink must pass (deliver, then
//! find the exact bytes under the key, repeatedly and concurrently).

use std::path::Path;
use std::sync::Arc;

use crate::compression::{Compression, decompress};
use crate::config::Registry;
use crate::config::{Diagnostics, Plan, load_str};
use crate::contract::{Payload, Sink};
use crate::metrics::PipelineMetrics;
use crate::runtime::{RunOptions, RunReport, run};

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
    let metrics = Arc::new(PipelineMetrics::new(plan.sources.len(), plan.sinks.len()));
    let mut options = RunOptions::for_plan(&plan);
    options.workers = workers;
    let report = run(&plan, &options, Arc::clone(&metrics)).map_err(|e| e.to_string())?;
    Ok((report, metrics))
}

/// The compression an object key's extension says.
pub fn compression_of_key(key: &str) -> Compression {
    if key.ends_with(".gz") {
        Compression::Gzip
    } else if key.ends_with(".zst") {
        Compression::Zstd
    } else if key.ends_with(".snappy") {
        Compression::Snappy
    } else {
        Compression::None
    }
}

/// Decompresses an object (by its key's extension) and returns its lines.
pub fn read_lines(key: &str, body: &[u8]) -> std::io::Result<Vec<String>> {
    let bytes = decompress(compression_of_key(key), body)?;
    Ok(String::from_utf8_lossy(&bytes).lines().map(str::to_string).collect())
}

/// The conformance check for sinks: `fetch(key)` must return exactly what was delivered.
pub async fn sink_conformance<F, Fut>(sink: Arc<dyn Sink>, fetch: F) -> Result<(), String>
where
    F: Fn(String) -> Fut,
    Fut: std::future::Future<Output = Option<Vec<u8>>>,
{
    sink.prepare().await.map_err(|e| format!("prepare: {e}"))?;
    let payloads: Vec<Payload> = (0..8)
        .map(|i| Payload {
            key: format!("conformance/{i}/obj-{i}.bin"),
            body: bytes::Bytes::from(vec![i as u8; 1000 * (i + 1)]),
            content_type: "application/octet-stream",
            content_encoding: None,
            records: 1,
        })
        .collect();
    let deliveries = payloads.iter().map(|p| sink.deliver(p.clone()));
    for result in futures::future::join_all(deliveries).await {
        result.map_err(|e| format!("deliver: {e}"))?;
    }
    // Delivering the same payload again (a retry) must succeed and leave the same bytes.
    sink.deliver(payloads[0].clone()).await.map_err(|e| format!("redeliver: {e}"))?;
    for p in &payloads {
        let got = fetch(p.key.clone()).await.ok_or_else(|| format!("{} not found", p.key))?;
        if got != p.body.as_ref() {
            return Err(format!("{}: stored {} bytes, delivered {}", p.key, got.len(), p.body.len()));
        }
    }
    Ok(())
}

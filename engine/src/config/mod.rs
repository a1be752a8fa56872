//! Pipeline config: parse (TOML with spans) → resolve (types, ranges, Firehose rules, the graph) →
//! [`Plan`], the checked description the runtime compiles into a timely dataflow.
//!
//! Guarantees: a file either resolves completely or yields every problem found, each with
//! file:line:col, what was expected and a hint; nothing is half-applied.

mod columnar;
pub mod diagnostic;
pub mod document;
mod masked;
mod registry;
mod resolve;

use std::path::Path;

pub use diagnostic::{Diagnostic, Diagnostics, Problems, did_you_mean};
pub use document::{KeyAt, Section};
pub use masked::masked;
pub use registry::{
    ConnectorConfig, Durability, FixedBody, KeyQueryCompiler, LogEncryption, Registry, Retention, SinkType, SourceType,
    StreamDescription, TransformType,
};
pub use resolve::{
    BackupMode, BufferingHints, Deaggregation, DestinationInfo, Input, Partitioning, Plan, SinkPlan, SinkSettings,
    SourcePlan, StreamInfo, TransformPlan,
};

/// Reads and resolves a pipeline file.
pub fn load_file(path: &Path, registry: &Registry) -> Result<Plan, Diagnostics> {
    load_file_for(path, registry, None)
}

/// Reads and resolves a pipeline file for process `process` of a cluster (`--cluster`, `--process`):
/// the pipeline's state then lives in `<data_dir>/process-<N>`, so processes sharing a host (or a
/// network folder) never share a write-ahead log or a checkpoint.
pub fn load_file_for(path: &Path, registry: &Registry, process: Option<usize>) -> Result<Plan, Diagnostics> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| {
        let problem = Diagnostic::new(0..0, format!("cannot read the file: {e}"));
        let problem = if e.kind() == std::io::ErrorKind::IsADirectory {
            problem
                .with_hint("a pipeline is one TOML file; `sluice serve DIR` serves every stream pipeline of a folder")
        } else {
            problem
        };
        Diagnostics { file: file.clone(), source: String::new(), items: vec![problem] }
    })?;
    let base_dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
    load_str_for(&file, text, &base_dir, registry, process)
}

/// What a pipeline file amounts to, for `sluice serve`'s reloads: `text` with every `${VAR}` and
/// `${file:PATH}` (PATH relative to `base_dir`) replaced, so that a renewed secret file changes it
/// as an edit of the pipeline file does; `text` as it is when that cannot be done (loading it says
/// why). It holds the secrets: keep it in memory, never show it.
pub fn expanded_text(text: &str, base_dir: &Path) -> String {
    match document::expand_env_in(text, Some(base_dir)) {
        Ok(Some(expanded)) => expanded,
        Ok(None) | Err(_) => text.to_string(),
    }
}

/// Resolves pipeline text; `file` names it in messages, `base_dir` anchors relative paths.
pub fn load_str(file: &str, text: String, base_dir: &Path, registry: &Registry) -> Result<Plan, Diagnostics> {
    load_str_for(file, text, base_dir, registry, None)
}

/// [`load_str`] for process `process` of a cluster (see [`load_file_for`]).
pub fn load_str_for(
    file: &str,
    text: String,
    base_dir: &Path,
    registry: &Registry,
    process: Option<usize>,
) -> Result<Plan, Diagnostics> {
    // The spanned tree borrows the text; the plan owns what it keeps, so the text goes with the
    // tree (a `sluice serve` reloading changed files for months holds no old texts).
    let fail = |items: Vec<Diagnostic>| Diagnostics::new(file, &text, items);
    let root = document::parse_document(&text, base_dir).map_err(fail)?;
    resolve::resolve(root, base_dir, registry, process).map_err(fail)
}

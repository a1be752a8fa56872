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

pub use diagnostic::{Diagnostic, Diagnostics, did_you_mean};
pub use document::Section;
pub use masked::masked;
pub use registry::{
    ConnectorConfig, Durability, KeyQueryCompiler, LogEncryption, Registry, Retention, SinkType, SourceType,
    StreamDescription, TransformType,
};
pub use resolve::{
    BackupMode, BufferingHints, Deaggregation, DestinationInfo, Input, Partitioning, Plan, SinkPlan, SinkSettings,
    SourcePlan, StreamInfo, TransformPlan,
};

/// Reads and resolves a pipeline file.
pub fn load_file(path: &Path, registry: &Registry) -> Result<Plan, Diagnostics> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| Diagnostics {
        file: file.clone(),
        source: String::new(),
        items: vec![Diagnostic::new(0..0, format!("cannot read the file: {e}"))],
    })?;
    let base_dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
    load_str(&file, text, &base_dir, registry)
}

/// Resolves pipeline text; `file` names it in messages, `base_dir` anchors relative paths.
pub fn load_str(file: &str, text: String, base_dir: &Path, registry: &Registry) -> Result<Plan, Diagnostics> {
    // The spanned tree borrows the text; a config is loaded once, so its text lives for the process.
    let text: &'static str = Box::leak(text.into_boxed_str());
    let fail = |items: Vec<Diagnostic>| Diagnostics::new(file, text, items);
    let root = document::parse_document(text).map_err(fail)?;
    resolve::resolve(root, base_dir, registry).map_err(fail)
}

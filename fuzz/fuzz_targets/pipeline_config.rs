//! Pipeline files through `validate`'s whole resolution (TOML, every connector's configure, the
//! graph): any text gives a plan or diagnostics that render, never a panic.

#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use sluice_engine::config::{Registry, load_str};

thread_local! {
    static REGISTRY: Registry = sluice_connectors::registry::registry();
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let pipelines = Path::new(env!("CARGO_MANIFEST_DIR")).join("../pipelines");
    REGISTRY.with(|registry| match load_str("fuzzed.toml", text.to_string(), &pipelines, registry) {
        Ok(plan) => {
            let _ = plan.render();
        }
        Err(diagnostics) => {
            assert!(!diagnostics.items.is_empty(), "an error without diagnostics");
            let _ = diagnostics.to_string();
        }
    });
});

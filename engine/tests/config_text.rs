//! Loading a pipeline keeps none of its text: `sluice serve` loads a changed file again for as long
//! as it runs (SIGHUP, `--watch`), so each load's text must go with the tree parsed from it, whether
//! the file loads or fails. Measured as the process's resident memory across many loads of a large
//! file (this binary's only test, so no other test's memory moves it).

use std::path::Path;

use sluice_engine::config::{Registry, load_str};

/// Resident memory of this process, in bytes (`/proc/self/statm`, pages of 4 KiB).
fn resident_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    statm.split_whitespace().nth(1).and_then(|pages| pages.parse::<u64>().ok()).unwrap_or(0) * 4096
}

#[test]
fn loading_a_pipeline_again_and_again_keeps_none_of_its_texts() {
    if !Path::new("/proc/self/statm").exists() {
        eprintln!("skipped: no /proc/self/statm on this system");
        return;
    }
    // 1 MiB of comments, then a pipeline whose source type no registry here knows: parsed whole,
    // then refused with a diagnostic that quotes the file.
    let padding = "# a comment line that pads the pipeline file to a size a leak would show\n".repeat(15_000);
    let text = format!("{padding}[pipeline]\nname = \"p\"\n\n[sources.in]\ntype = \"nowhere\"\n");
    assert!(text.len() > 1 << 20);
    let registry = Registry::default();
    let load = || {
        let refused = load_str("pipeline.toml", text.clone(), Path::new("."), &registry);
        assert!(refused.is_err_and(|d| d.to_string().contains("nowhere")));
    };
    load();
    let before = resident_bytes();
    for _ in 0..100 {
        load();
    }
    let grown = resident_bytes().saturating_sub(before);
    // Kept texts would be 100 MiB or more; the allocator's own slack is a few MiB at most.
    assert!(grown < 16 << 20, "100 loads of a 1 MiB pipeline file grew resident memory by {} MiB", grown >> 20);
}

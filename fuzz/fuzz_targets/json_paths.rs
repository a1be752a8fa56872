//! The one-pass search of JSON paths (`transforms::json::find_paths`, which the jq fast paths,
//! enrich and the postgres sink's rows read values with) against its slow way, which decodes keys
//! with escapes (`find_paths_decoding_keys`), and both against serde_json's parsed tree: the same
//! value, null, missing or blocked for every path.

#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice_connectors::transforms::json::decoding_way_agrees;

/// Paths as sinks and transforms configure them: nested, sharing prefixes, keys that need escapes.
fn paths() -> Vec<Vec<Vec<u8>>> {
    [
        &["a"][..],
        &["a", "b"],
        &["b", "c", "d"],
        &["eventName"],
        &["userIdentity", "userName"],
        &["é"],
        &["q\"k"],
        &["n"],
    ]
    .iter()
    .map(|path| path.iter().map(|key| key.as_bytes().to_vec()).collect())
    .collect()
}

thread_local! {
    static PATHS: Vec<Vec<Vec<u8>>> = paths();
}

fuzz_target!(|data: &[u8]| {
    PATHS.with(|paths| {
        if let Err(difference) = decoding_way_agrees(paths, data) {
            panic!("{difference}");
        }
    });
});

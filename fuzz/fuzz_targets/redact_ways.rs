//! The redact transform's walk-free way (records whose matches all lie inside string values,
//! rewritten without being parsed) against the walked way (read as JSON, else as text): the first
//! byte's low bit picks masking or hashing, the rest is the record. Different records or counts,
//! or a JSON record that comes out as something else, is a finding.

#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice_connectors::transforms::redact::walk_free_way_agrees;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, record)) = data.split_first() else { return };
    if let Err(difference) = walk_free_way_agrees(mode & 1 == 1, record) {
        panic!("{difference}");
    }
});

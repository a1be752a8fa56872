//! The transforms' JSON scanner (`transforms::json::validate`) against serde_json: on any UTF-8
//! input nested no deeper than the scanner judges, it accepts exactly what serde_json reads into a
//! tree (strings decoded: a lone surrogate escape is refused), numbers out of f64's range
//! included (serde_json's tree refuses them, its skipping reader takes them, as the scanner does).

#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice_connectors::transforms::json::{Scanned, validate};

fuzz_target!(|data: &[u8]| {
    let ours = validate(data);
    // The scanner leaves UTF-8 to its callers, and does not judge deeper documents.
    if ours == Scanned::TooDeep || std::str::from_utf8(data).is_err() {
        return;
    }
    let skipped = serde_json::from_slice::<serde::de::IgnoredAny>(data);
    let tree = serde_json::from_slice::<serde_json::Value>(data);
    let why = |e: &serde_json::Error| e.to_string();
    let expected = match (&skipped, &tree) {
        (_, Err(e)) | (Err(e), _) if why(e).contains("recursion limit") => return,
        (Ok(_), Ok(_)) => true,
        (Ok(_), Err(e)) if why(e).contains("number out of range") => true,
        _ => false,
    };
    assert_eq!(
        ours == Scanned::Valid,
        expected,
        "{:?}: serde_json skipping says {skipped:?}, as a tree {:?}",
        String::from_utf8_lossy(data),
        tree.as_ref().map(|_| ())
    );
});

//! The jq transform's fast paths (the projection, projected partition keys, a plain path's value,
//! an iterated array's elements) against jaq itself: the first byte picks a query, the rest is the record. Any difference in
//! the records made, the keys read or the value found is a finding.

#![no_main]

use std::cell::RefCell;

use libfuzzer_sys::fuzz_target;
use sluice_connectors::transforms::jq::FastPathOracle;

/// Queries with a fast path (and a few shapes beside them), as pipelines write them.
const QUERIES: &[&str] = &[
    r#"{time: .eventTime, user: .userIdentity.userName, event: .eventName} | select(.event != "GetObject")"#,
    r#"{a, b: .b.c.d, n: .n} | select(.n == 3)"#,
    r#"{x: .a.b}"#,
    r#"{e: .e} | select(.e == null)"#,
    r#"{a: .a} | select(.a == "x")"#,
    r#"{a: .a} | select(.a != true)"#,
    r#"{account: .recipientAccountId, region: .awsRegion}"#,
    r#"{account: .recipientAccountId, region: .awsRegion, user: .userIdentity.userName}"#,
    ".a.b",
    ".eventName",
    ".userIdentity.accessKeyId",
    r#"{time: .eventTime, at: .eventTime, who: .userIdentity.userName, user: .userIdentity.userName}"#,
    ".Records[]",
    ".a.b[]",
];

fn oracles() -> Vec<FastPathOracle> {
    QUERIES.iter().map(|q| FastPathOracle::new(q).unwrap_or_else(|| panic!("{q} does not compile"))).collect()
}

thread_local! {
    static ORACLES: RefCell<Vec<FastPathOracle>> = RefCell::new(oracles());
}

fuzz_target!(|data: &[u8]| {
    let Some((&pick, record)) = data.split_first() else { return };
    ORACLES.with_borrow_mut(|oracles| {
        let count = oracles.len();
        if let Err(difference) = oracles[usize::from(pick) % count].check(record) {
            panic!("{difference}");
        }
    });
});

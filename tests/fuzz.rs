//! A structured fuzz harness, bounded in time (issue 11): random and mutated Firehose API requests
//! (bodies, targets, headers, signatures) against the API's handler, and random and mutated
//! pipeline files against `validate`'s resolution. Nothing may panic or hang; every request gets an
//! AWS error document or a success, every file a plan or diagnostics that render. The log's
//! recovery gets the same treatment beside the log (engine/src/wal).

use std::sync::Arc;

use axum::http::{HeaderMap, HeaderValue, Method, Uri};
use proptest::prelude::*;
use sluice_connectors::api::ListenerLimits;
use sluice_connectors::api::firehose::{FirehoseApi, Grants, StreamEndpoint};
use sluice_connectors::api::queue::IngestQueue;
use sluice_connectors::api::sigv4::{AccessKeys, Signer};
use sluice_connectors::registry;
use sluice_engine::config::{StreamInfo, load_str};
use sluice_engine::metrics::PipelineMetrics;

use super::support::repo_root;

const NOW: i64 = 1_796_000_000;
const AMZ_DATE: &str = "20261130T051320Z";

fn api(keys: bool) -> FirehoseApi {
    let mut grants = Grants::default();
    let keys = if keys {
        grants.allow("AKIDFUZZ", None).unwrap();
        AccessKeys::new([("AKIDFUZZ".to_string(), "fuzz-secret".to_string())])
    } else {
        AccessKeys::default()
    };
    let endpoint = StreamEndpoint {
        info: Arc::new(StreamInfo { name: "fuzz".into(), created_ms: 0, destinations: Vec::new() }),
        queue: Arc::new(IngestQueue::new(64 << 20)),
        log: None,
        metrics: Arc::new(PipelineMetrics::new(1, 0)),
        keys: keys.clone(),
        grants,
        encryption: None,
    };
    FirehoseApi::new(vec![endpoint], keys, "us-east-1", ListenerLimits::default())
}

/// Valid requests to start mutations from.
fn seeds() -> Vec<(&'static str, Vec<u8>)> {
    let record =
        |s: &str| serde_json::json!({"Data": base64::Engine::encode(&base64::engine::general_purpose::STANDARD, s)});
    vec![
        ("PutRecord", serde_json::json!({"DeliveryStreamName": "fuzz", "Record": record("{\"a\":1}")}).to_string().into_bytes()),
        (
            "PutRecordBatch",
            serde_json::json!({"DeliveryStreamName": "fuzz", "Records": [record("x"), record(""), record("{\"b\":[1,2]}")]})
                .to_string()
                .into_bytes(),
        ),
        ("DescribeDeliveryStream", br#"{"DeliveryStreamName":"fuzz","Limit":3}"#.to_vec()),
        ("ListDeliveryStreams", br#"{"Limit":10,"ExclusiveStartDeliveryStreamName":"a"}"#.to_vec()),
        ("ListTagsForDeliveryStream", br#"{"DeliveryStreamName":"fuzz","Limit":5}"#.to_vec()),
    ]
}

/// A mutation of `bytes`: flips, cuts, insertions and duplications at positions from `ops`.
fn mutate(bytes: &[u8], ops: &[(u8, u16, u8)]) -> Vec<u8> {
    let mut out = bytes.to_vec();
    for &(kind, at, value) in ops {
        let at = if out.is_empty() { 0 } else { usize::from(at) % out.len() };
        match kind % 5 {
            0 if !out.is_empty() => out[at] ^= value.max(1),
            1 => out.insert(at, value),
            2 if !out.is_empty() => {
                out.truncate(at);
            }
            3 => {
                let copy: Vec<u8> = out[at..].iter().take(32).copied().collect();
                out.splice(at..at, copy);
            }
            _ => out.insert(at, b"{}[]\",:\\0"[usize::from(value) % 9]),
        }
    }
    out
}

fn check_response(response: axum::response::Response) -> Result<(), TestCaseError> {
    let status = response.status();
    let body = futures::executor::block_on(axum::body::to_bytes(response.into_body(), 1 << 20)).unwrap();
    let value: serde_json::Value = serde_json::from_slice(&body)
        .map_err(|e| TestCaseError::fail(format!("{status}: not JSON ({e}): {body:?}")))?;
    if status.is_success() {
        prop_assert!(value.is_object());
    } else {
        prop_assert!(status.is_client_error() || status.as_u16() == 503, "{}", status);
        let kind = value["__type"].as_str().unwrap_or("");
        prop_assert!(kind.ends_with("Exception"), "{}: {}", status, value);
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    /// Mutated bodies and targets, without authentication.
    #[test]
    fn any_request_body_gets_a_firehose_answer(
        seed in 0usize..4,
        ops in proptest::collection::vec((any::<u8>(), any::<u16>(), any::<u8>()), 0..12),
        target_mutation in proptest::option::of(proptest::collection::vec((any::<u8>(), any::<u16>(), any::<u8>()), 1..4)),
        random in proptest::collection::vec(any::<u8>(), 0..300),
        use_random in any::<bool>(),
    ) {
        let api = api(false);
        let (op, body) = &seeds()[seed];
        let body = if use_random { random } else { mutate(body, &ops) };
        let target = format!("Firehose_20150804.{op}");
        let target = match &target_mutation {
            Some(ops) => String::from_utf8_lossy(&mutate(target.as_bytes(), ops)).into_owned(),
            None => target,
        };
        let mut headers = HeaderMap::new();
        if let Ok(v) = HeaderValue::from_str(&target) {
            headers.insert("x-amz-target", v);
        }
        check_response(api.handle(&Method::POST, &Uri::from_static("/"), &headers, &body, NOW))?;
    }

    /// Correctly signed requests whose headers and signature are then mutated: refused with an
    /// authentication error before or after the body, never accepted, never a panic.
    #[test]
    fn any_mutated_signature_is_refused(
        seed in 0usize..4,
        header in 0usize..4,
        ops in proptest::collection::vec((any::<u8>(), any::<u16>(), any::<u8>()), 1..6),
    ) {
        let api = api(true);
        let (op, body) = &seeds()[seed];
        let mut headers = HeaderMap::new();
        headers.insert("host", HeaderValue::from_static("127.0.0.1:4573"));
        headers.insert("x-amz-target", HeaderValue::from_str(&format!("Firehose_20150804.{op}")).unwrap());
        let signer = Signer { key_id: "AKIDFUZZ", secret: "fuzz-secret", region: "us-east-1", service: "firehose" };
        signer.sign(AMZ_DATE, "POST", "/", &mut headers, body).unwrap();
        let name = ["authorization", "x-amz-date", "x-amz-target", "host"][header];
        let original = headers[name].as_bytes().to_vec();
        let mutated = mutate(&original, &ops);
        if mutated == original {
            return Ok(());
        }
        match HeaderValue::from_bytes(&mutated) {
            Ok(v) => { headers.insert(name, v); }
            Err(_) => { headers.remove(name); }
        }
        // The header check alone never panics and agrees with the full check when it refuses.
        let refused_early = api.check_headers(&headers, NOW).is_err();
        let response = api.handle(&Method::POST, &Uri::from_static("/"), &headers, body, NOW);
        prop_assert!(!(refused_early && response.status().is_success()), "{} mutated: refused early, accepted later", name);
        check_response(response)?;
    }

    /// Mutated example pipelines and fixtures resolve to a plan or to diagnostics that render.
    #[test]
    fn any_pipeline_file_resolves_or_is_diagnosed(
        file in 0usize..64,
        ops in proptest::collection::vec((any::<u8>(), any::<u16>(), any::<u8>()), 0..10),
    ) {
        let mut files: Vec<std::path::PathBuf> = ["pipelines", "tests/fixtures/config"]
            .iter()
            .flat_map(|d| std::fs::read_dir(repo_root().join(d)).unwrap().flatten().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "toml"))
            .collect();
        files.sort();
        let path = &files[file % files.len()];
        let text = std::fs::read(path).unwrap();
        let mutated = String::from_utf8_lossy(&mutate(&text, &ops)).into_owned();
        match load_str("fuzzed.toml", mutated, &repo_root().join("pipelines"), &registry()) {
            Ok(plan) => { let _ = plan.render(); }
            Err(diagnostics) => {
                prop_assert!(!diagnostics.items.is_empty());
                let _ = diagnostics.to_string();
            }
        }
    }
}

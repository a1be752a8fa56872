//! A sink that keeps what it is given in memory, for checks that run a source through the real
//! runtime: `type = "testkit_capture"` with `name = "..."` (the capture to read back with
//! [`records`]). It is a plain sink: NDJSON objects of the pipeline's format are split back into
//! records, in delivery order.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use futures::future::BoxFuture;

use crate::compression::decompress;
use crate::config::{ConnectorConfig, Problems, Registry, SinkType};
use crate::contract::{DeliveryError, DestinationKind, Payload, Sink};

/// The sink type's name.
pub const TYPE: &str = "testkit_capture";

type Captured = Arc<Mutex<Vec<Vec<u8>>>>;

fn captures() -> &'static Mutex<HashMap<String, Captured>> {
    static CAPTURES: OnceLock<Mutex<HashMap<String, Captured>>> = OnceLock::new();
    CAPTURES.get_or_init(Mutex::default)
}

fn capture(name: &str) -> Captured {
    let mut map = captures().lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    Arc::clone(map.entry(name.to_string()).or_default())
}

/// The records capture `name` holds so far.
pub fn records(name: &str) -> Vec<Vec<u8>> {
    capture(name).lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
}

/// How many records capture `name` holds so far.
pub fn count(name: &str) -> usize {
    capture(name).lock().unwrap_or_else(std::sync::PoisonError::into_inner).len()
}

/// `registry` with the capture sink added.
pub fn with_capture(mut registry: Registry) -> Registry {
    if registry.sink(TYPE).is_none() {
        registry.sinks.push(SinkType { name: TYPE, configure, reads: &[], fixed_body: None });
    }
    registry
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct CaptureConfig {
    name: String,
}

fn configure(config: ConnectorConfig) -> Result<Arc<dyn Sink>, Problems> {
    let mut problems = Problems::default();
    let Some(c) = config.table.deserialize::<CaptureConfig>(&mut problems) else { return Err(problems) };
    let c = problems.finish(Some(c))?;
    Ok(Arc::new(CaptureSink { name: c.name.clone(), records: capture(&c.name) }))
}

struct CaptureSink {
    name: String,
    records: Captured,
}

impl Sink for CaptureSink {
    fn describe(&self) -> String {
        format!("testkit capture {}", self.name)
    }

    fn destination(&self) -> DestinationKind {
        DestinationKind::S3
    }

    fn deliver(&self, payload: Payload) -> BoxFuture<'static, Result<(), DeliveryError>> {
        let records = Arc::clone(&self.records);
        Box::pin(async move {
            let compression = crate::testkit::compression_of_object(&payload.key, &payload.body);
            let text = decompress(compression, &payload.body)
                .map_err(|e| DeliveryError::Permanent { code: "Capture.Decompress".into(), message: e.to_string() })?;
            let mut held = records.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            held.extend(text.split(|&b| b == b'\n').filter(|l| !l.is_empty()).map(<[u8]>::to_vec));
            Ok(())
        })
    }
}

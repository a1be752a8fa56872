//! `type = "firehose"`: the Firehose ingest API (AWS JSON 1.1), so the AWS SDKs, the AWS CLI and
//! shippers with a Firehose output send to sluice unchanged. The delivery stream name is the
//! pipeline name.
//!
//! ```toml
//! [sources.api]
//! type = "firehose"
//! listen = "127.0.0.1:4573"
//! auth = { access_keys = [                                                            # SigV4 when set
//!   { id = "${APP_KEY}", secret = "${APP_SECRET}", allow = ["PutRecord", "PutRecordBatch"] },
//!   { id = "${OPS_KEY}", secret = "${OPS_SECRET}", allow = ["DescribeDeliveryStream", "ListDeliveryStreams"] },
//! ] }                       # `allow` defaults to all four operations
//! tls = { cert = "certs/server.pem", key = "certs/server.key" }                        # optional
//! max_inflight_mb = 256     # past this, puts are throttled (ServiceUnavailableException)
//! region = "us-east-1"      # for ARNs, and the region requests must be signed for
//! max_connections = 4096    # the listener's limits (crate::api::listener)
//! max_body_buffer_mb = 256
//! header_timeout_s = 10
//! body_timeout_s = 60
//! idle_timeout_s = 60
//! ```
//!
//! A stream source: the run lasts until SIGINT/SIGTERM, then stops accepting, drains what it
//! acknowledged, flushes and delivers. Under `sluice serve` the run is handed a [`SharedFirehose`]:
//! the source registers its stream there instead of binding `listen`, and the process serves every
//! registered stream on one listener once all its pipelines are prepared.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use serde::Deserialize;
use sluice_engine::config::{ConnectorConfig, Diagnostic, Problems, StreamDescription, StreamInfo, did_you_mean};
use sluice_engine::contract::{PrepareContext, SharedListener, Source, SourceContext, SourceError, SourceReader};

use crate::api::firehose::MAX_REQUEST_BYTES;
use crate::api::firehose::{ApiSlot, FirehoseApi, Grants, OPERATIONS, StreamEndpoint};
use crate::api::listener::{Wire, open_listener_warning};
use crate::api::queue::IngestQueue;
use crate::api::sigv4::AccessKeys;
use crate::api::{ListenerLimits, LogSlot, QueueReader, TlsFiles, bind, inflight_limit, serve};

/// Default listen address (sluice's port for the Firehose API).
pub const DEFAULT_LISTEN: &str = "127.0.0.1:4573";

/// One access key.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AccessKeyConfig {
    /// Access key id.
    id: String,
    /// Secret access key.
    secret: String,
    /// The operations the key may call on this stream (default: all four).
    allow: Option<Vec<String>>,
}

/// `auth = { access_keys = [...] }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AuthConfig {
    /// Keys requests may be signed with (SigV4).
    access_keys: Vec<AccessKeyConfig>,
}

/// The Firehose source's own keys.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FirehoseConfig {
    /// Address to listen on (default `127.0.0.1:4573`).
    listen: Option<String>,
    /// SigV4 verification; without it requests are not authenticated.
    auth: Option<AuthConfig>,
    /// HTTPS with these PEM files.
    tls: Option<TlsFiles>,
    /// Bytes accepted but not yet taken by the workers before puts are throttled (default 256).
    max_inflight_mb: Option<u64>,
    /// Region for ARNs and of the signatures' scope (default `us-east-1`).
    region: Option<String>,
}

/// A configured Firehose API source.
#[derive(Debug)]
pub struct FirehoseSource {
    stream: String,
    /// The pipeline as DescribeDeliveryStream shows it (set once the pipeline file is resolved).
    description: StreamDescription,
    listen: SocketAddr,
    keys: AccessKeys,
    grants: Grants,
    tls: Option<TlsFiles>,
    region: String,
    queue: Arc<IngestQueue>,
    log: LogSlot,
    limits: ListenerLimits,
    /// Served by `sluice serve`'s shared listener instead of its own.
    shared: AtomicBool,
}

/// Parses a `listen` address, pointing at `span` when it is not one.
pub fn parse_listen(text: Option<&str>, default: &str, span: std::ops::Range<usize>) -> Result<SocketAddr, Diagnostic> {
    let text = text.unwrap_or(default);
    text.parse().map_err(|_| {
        Diagnostic::new(span, format!("`{text}` is not a listen address"))
            .with_hint(format!("use host:port with an IP address, e.g. listen = \"{default}\""))
    })
}

/// Builds the source from `[sources.<name>]`.
pub fn configure(mut config: ConnectorConfig) -> Result<Arc<dyn Source>, Problems> {
    let span = config.table.span.clone();
    let listen_span = config.table.value_span("listen").unwrap_or(span.clone());
    let (inflight_at, tls_at) = (config.table.key_at("max_inflight_mb"), config.table.key_at("tls"));
    let auth_span = config.table.value_span("auth").unwrap_or(span);
    let mut problems = Problems::default();
    let limits = ListenerLimits::take_from(&mut config.table, (MAX_REQUEST_BYTES >> 20) as u64 + 1, &mut problems);
    let log = LogSlot::for_source(&config);
    let Some(c) = config.table.deserialize::<FirehoseConfig>(&mut problems) else { return Err(problems) };
    let listen = problems.take(parse_listen(c.listen.as_deref(), DEFAULT_LISTEN, listen_span));
    let inflight =
        problems.take(inflight_limit(c.max_inflight_mb, 8, "a PutRecordBatch alone can carry 4 MiB", &inflight_at));
    let access = problems.take(match c.auth {
        None => Ok((AccessKeys::default(), Grants::default())),
        Some(auth) => access_keys(auth.access_keys).map_err(|(message, hint)| {
            Diagnostic::new(auth_span, message).with_hint(hint.unwrap_or_else(|| {
                "each key needs its own id and a non-empty secret, e.g. { id = \"${KEY_ID}\", secret = \"${SECRET}\" }"
                    .into()
            }))
        }),
    });
    let tls = problems.take(c.tls.as_ref().map(|t| t.checked(&config.base_dir, &tls_at)).transpose());
    let (limits, listen, inflight, (keys, grants), tls) =
        problems.finish((|| Some((limits?, listen?, inflight?, access?, tls?)))())?;
    Ok(Arc::new(FirehoseSource {
        stream: config.pipeline,
        description: config.stream,
        listen,
        keys,
        grants,
        tls,
        region: c.region.unwrap_or_else(|| "us-east-1".into()),
        queue: Arc::new(IngestQueue::new(inflight)),
        log,
        limits,
        shared: AtomicBool::new(false),
    }))
}

/// The configured keys and what each may do, refusing none at all, an empty secret, an id listed
/// twice, an empty `allow` and an unknown operation; an error is (message, hint).
fn access_keys(keys: Vec<AccessKeyConfig>) -> Result<(AccessKeys, Grants), (String, Option<String>)> {
    if keys.is_empty() {
        return Err(("`auth.access_keys` is empty; list at least one key, or leave `auth` out".into(), None));
    }
    let mut seen = std::collections::BTreeSet::new();
    let mut grants = Grants::default();
    let operations = OPERATIONS.join(", ");
    for key in &keys {
        if key.id.is_empty() || key.secret.is_empty() {
            return Err((format!("access key `{}` has an empty id or secret", key.id), None));
        }
        if !seen.insert(key.id.as_str()) {
            return Err((format!("access key `{}` is listed twice", key.id), None));
        }
        if key.allow.as_ref().is_some_and(Vec::is_empty) {
            return Err((
                format!("access key `{}` allows nothing", key.id),
                Some(format!("list what it may call ({operations}), or remove the key")),
            ));
        }
        grants.allow(&key.id, key.allow.as_deref()).map_err(|unknown| {
            let hint = match did_you_mean(&unknown, OPERATIONS) {
                Some(near) => format!("did you mean `{near}`? The operations are {operations}"),
                None => format!("the operations are {operations}"),
            };
            (
                format!("access key `{}` allows `{unknown}`, which is not a Firehose operation sluice serves", key.id),
                Some(hint),
            )
        })?;
    }
    Ok((AccessKeys::new(keys.into_iter().map(|k| (k.id, k.secret))), grants))
}

impl FirehoseSource {
    /// The stream this source serves (opens the source's log).
    fn endpoint(&self, metrics: Arc<sluice_engine::metrics::PipelineMetrics>) -> Result<StreamEndpoint, SourceError> {
        let log = self.log.open(&self.queue, &metrics)?;
        let info = Arc::new(self.description.get().cloned().unwrap_or_else(|| StreamInfo {
            name: self.stream.clone(),
            created_ms: sluice_engine::record::now_ms(),
            destinations: Vec::new(),
        }));
        Ok(StreamEndpoint {
            info,
            queue: Arc::clone(&self.queue),
            log,
            metrics,
            keys: self.keys.clone(),
            grants: self.grants.clone(),
            encryption: self.log.encryption(),
        })
    }
}

/// The Firehose listener `sluice serve` shares among its pipelines: each pipeline's firehose source
/// registers its stream while the pipeline is prepared; once every pipeline is prepared the process
/// builds one [`FirehoseApi`] of them ([`SharedFirehose::api`]) and serves it on one address. When
/// `sluice serve` reloads its folder, streams are withdrawn and registered again, and the API is
/// made anew from them ([`SharedFirehose::rebuilt`]) and replaces the one served.
///
/// Guarantees: an access key id is given one secret only (a stream whose key has another secret in
/// an already registered stream is refused, and its pipeline does not start); a stream whose
/// pipeline could not start is withdrawn before the API is built, so nothing is acknowledged that
/// no run would deliver; a stream withdrawn while served has its queue closed by the caller once
/// the API without it is served, so a request still in progress for it is refused (and retried
/// by its producer), never acknowledged into a queue no reader takes.
#[derive(Debug, Default)]
pub struct SharedFirehose {
    streams: Mutex<Vec<StreamEndpoint>>,
}

impl SharedListener for SharedFirehose {
    fn as_any(&self) -> &(dyn std::any::Any + Send + Sync) {
        self
    }
}

impl SharedFirehose {
    /// The keys of every registered stream, or the id that has two secrets.
    fn merged_keys<'a>(streams: impl Iterator<Item = &'a StreamEndpoint>) -> Result<AccessKeys, String> {
        let mut keys = AccessKeys::default();
        for stream in streams {
            keys.merge(&stream.keys)?;
        }
        Ok(keys)
    }

    fn register(&self, endpoint: StreamEndpoint) -> Result<(), SourceError> {
        let mut streams = self.streams.lock().map_err(|_| SourceError::Setup("the shared listener failed".into()))?;
        if streams.iter().any(|s| s.info.name == endpoint.info.name) {
            return Err(SourceError::Setup(format!("another pipeline already serves stream `{}`", endpoint.info.name)));
        }
        Self::merged_keys(streams.iter().chain([&endpoint]))
            .map_err(|id| SourceError::Setup(format!("access key `{id}` has another secret in another pipeline")))?;
        streams.push(endpoint);
        Ok(())
    }

    /// Withdraws `stream` (its pipeline could not start, or is stopping); its queue, if it was
    /// registered.
    pub fn withdraw(&self, stream: &str) -> Option<Arc<IngestQueue>> {
        let mut streams = self.streams.lock().ok()?;
        let at = streams.iter().position(|s| s.info.name == stream)?;
        Some(streams.remove(at).queue)
    }

    /// The queues of the streams registered now (closed when the listener shuts down).
    pub fn queues(&self) -> Vec<Arc<IngestQueue>> {
        self.streams.lock().map(|streams| streams.iter().map(|s| Arc::clone(&s.queue)).collect()).unwrap_or_default()
    }

    /// `current`'s listener serving the streams registered now, those named in `reloading`
    /// answered ServiceUnavailableException.
    pub fn rebuilt(&self, current: &FirehoseApi, reloading: Vec<String>) -> FirehoseApi {
        let (streams, keys) = self.registered();
        current.with_streams(streams, keys, reloading)
    }

    /// The API serving every registered stream (none, possibly) in `region` within `limits`.
    pub fn api(&self, region: &str, limits: ListenerLimits) -> FirehoseApi {
        let (streams, keys) = self.registered();
        if !keys.is_empty() && streams.iter().any(|s| s.keys.is_empty()) {
            tracing::warn!("some streams have access keys and some do not: every request must now be signed");
        }
        FirehoseApi::new(streams, keys, region, limits)
    }

    /// The streams registered now, and the keys of them all.
    fn registered(&self) -> (Vec<StreamEndpoint>, AccessKeys) {
        let streams = self.streams.lock().map(|s| s.clone()).unwrap_or_default();
        // Conflicts were refused at registration.
        let keys = Self::merged_keys(streams.iter()).unwrap_or_default();
        (streams, keys)
    }
}

/// How a Firehose API listener is made to authenticate its requests (for the warning about one
/// that does not).
pub const SET_ACCESS_KEYS: &str =
    "set `auth = { access_keys = [{ id = \"…\", secret = \"${…}\" }] }` (requests are then SigV4-signed)";

impl Source for FirehoseSource {
    fn describe(&self) -> String {
        let auth = if self.keys.is_empty() { "no auth" } else { "SigV4" };
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        let place = if self.shared.load(Ordering::SeqCst) {
            "the shared listener of `sluice serve`".to_string()
        } else {
            format!("{scheme}://{}", self.listen)
        };
        format!(
            "firehose API: stream {} on {place} ({auth}, throttles past {} MiB)",
            self.stream,
            self.queue.limit() >> 20
        )
    }

    fn is_finite(&self) -> bool {
        false
    }

    /// Its `listen` address, then the log's encryption key, when it has one
    /// ([`LogSlot::check_with_listener`]).
    fn check(&self) -> Option<futures::future::BoxFuture<'static, Result<(), SourceError>>> {
        self.log.check_with_listener(self.listen)
    }

    fn prepare(&self, ctx: &PrepareContext) -> Result<(), SourceError> {
        if let Some(trail) = ctx.metrics.audit.get() {
            trail.set_region(&self.region);
        }
        if let Some(log) = self.log.open(&self.queue, &ctx.metrics)? {
            log.follow(Arc::clone(&ctx.delivered), Arc::clone(&ctx.metrics));
        }
        let endpoint = self.endpoint(Arc::clone(&ctx.metrics))?;
        let source = format!("the firehose API of stream {}", self.stream);
        let shared = ctx.shared.as_ref().and_then(|s| s.as_any().downcast_ref::<SharedFirehose>());
        let authenticated = !self.keys.is_empty() || self.tls.as_ref().is_some_and(TlsFiles::verifies_clients);
        // (The shared listener of `sluice serve` is said of once, for all its streams.)
        if let (None, Some(warning)) =
            (shared, open_listener_warning(&source, self.listen, authenticated, SET_ACCESS_KEYS))
        {
            tracing::warn!("{warning}");
        }
        if let Some(shared) = ctx.shared.as_ref().and_then(|s| s.as_any().downcast_ref::<SharedFirehose>()) {
            shared.register(endpoint)?;
            self.shared.store(true, Ordering::SeqCst);
            return Ok(());
        }
        let api =
            Arc::new(ApiSlot::new(FirehoseApi::new(vec![endpoint], self.keys.clone(), &self.region, self.limits)));
        let listener = bind(self.listen)?;
        let queues = vec![Arc::clone(&self.queue)];
        let tls = self.tls.as_ref().map(|files| files.served_for(ctx));
        serve(&ctx.runtime, listener, router(api), tls, (self.limits, Wire::Http1), ctx.stop.clone(), move || queues)
    }

    fn finish(&self, _stopped: bool) {
        if let Some(log) = self.log.get() {
            log.finish();
        }
    }

    fn open(&self, _ctx: &SourceContext) -> Result<Box<dyn SourceReader>, SourceError> {
        Ok(Box::new(QueueReader::new(Arc::clone(&self.queue), self.log.get())))
    }
}

/// The Firehose API's routes.
pub fn router(api: Arc<ApiSlot>) -> axum::Router {
    // The body limit is enforced by the handler itself (with a Firehose error document).
    axum::Router::new()
        .route("/", axum::routing::post(crate::api::firehose::serve_request))
        .layer(axum::extract::DefaultBodyLimit::disable())
        .with_state(api)
}

#[cfg(test)]
mod tests {
    use base64::Engine;
    use sluice_engine::testkit::source::{Check, SourceCase, conformance};

    /// A free port on 127.0.0.1.
    fn free_port() -> u16 {
        std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
    }

    /// The Firehose source through the real runtime, fed by PutRecordBatch over HTTP: every
    /// acknowledged record exactly once at 1, 2 and 4 workers, all of them delivered when the stop
    /// comes right after the last acknowledgement, and a restarted stream does not replay what its
    /// log already delivered.
    #[test]
    fn passes_the_source_conformance_kit() {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let expected: Vec<Vec<u8>> =
            (0..3_000).map(|i| format!(r#"{{"put":{i},"text":"é \"q\""}}"#).into_bytes()).collect();
        let records = expected.clone();
        let produce = move || -> Result<(), String> {
            let client = reqwest::blocking::Client::new();
            for chunk in records.chunks(500) {
                let body = serde_json::json!({
                    "DeliveryStreamName": "conformance",
                    "Records": chunk
                        .iter()
                        .map(|r| serde_json::json!({"Data": base64::engine::general_purpose::STANDARD.encode(r)}))
                        .collect::<Vec<_>>(),
                });
                let answer = client
                    .post(format!("http://127.0.0.1:{port}/"))
                    .header("X-Amz-Target", "Firehose_20150804.PutRecordBatch")
                    .header("Content-Type", "application/x-amz-json-1.1")
                    .body(body.to_string())
                    .send()
                    .and_then(reqwest::blocking::Response::bytes)
                    .map_err(|e| e.to_string())?;
                let answer: serde_json::Value = serde_json::from_slice(&answer).map_err(|e| e.to_string())?;
                if answer["FailedPutCount"] != 0 {
                    return Err(format!("records refused: {answer}"));
                }
            }
            Ok(())
        };
        let table = format!("type = \"firehose\"\nlisten = \"127.0.0.1:{port}\"\n");
        let case = SourceCase::stream(table, expected, Box::new(produce), dir.path());
        let report = conformance(crate::registry(), &case).unwrap_or_else(|e| panic!("{e}"));
        assert!(report.passed.contains(&Check::Resume) && report.skipped.is_empty(), "{report:?}");
    }
}

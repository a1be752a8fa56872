//! The admin endpoint: `GET /metrics` (Prometheus text, Firehose's metric names per stream and
//! destination, see [`sluice_engine::metrics::PipelineMetrics::render_prometheus`]),
//! `GET /health` (`ok` while the process serves), and the dashboard (`GET /`, `GET /events`,
//! [`super::dashboard`]).
//!
//! Guarantees: reading metrics never blocks the pipelines (atomics and short locks only); every
//! pipeline of the process appears in one exposition, each family once; the pipelines shown are
//! those served at the moment of the request ([`Served`]: `sluice serve` changes them when it
//! reloads its folder).

use std::sync::{Arc, PoisonError, RwLock};

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use sluice_engine::metrics::{PipelineMetrics, PrometheusText, SinkLabel, TransformLabel};
use sluice_engine::record::now_ms;

/// One pipeline as the admin endpoint shows it.
#[derive(Debug, Clone)]
pub struct MonitoredPipeline {
    /// Delivery stream name.
    pub stream: String,
    /// Its counters.
    pub metrics: Arc<PipelineMetrics>,
    /// Its sinks, in plan order.
    pub sinks: Vec<SinkLabel>,
    /// Its transforms, in plan order.
    pub transforms: Vec<TransformLabel>,
}

/// The pipelines a process serves, as its admin endpoint, its dashboard and its API listener's
/// certificate families see them: set once by `sluice run`, replaced by each reload of `sluice
/// serve`, with the state of `serve`'s folder. Clones share them; a reader gets the list of one
/// moment, whole.
#[derive(Debug, Clone, Default)]
pub struct Served(Arc<ServedState>);

#[derive(Debug, Default)]
struct ServedState {
    pipelines: RwLock<Arc<Vec<MonitoredPipeline>>>,
    folder: std::sync::Mutex<Option<FolderState>>,
}

/// How `sluice serve` last read its folder (at start, then at each reload), for `/metrics`
/// (`ConfigFilesFailed`, `ConfigReloads`, `ConfigLastReload_seconds`) and the dashboard.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct FolderState {
    /// Pipeline files it left out, or kept the pipeline of, for an error (in the file, a name
    /// another file has, a pipeline that could not start), in name order.
    pub failed: Vec<FailedFile>,
    /// Reloads since the start.
    pub reloads: u64,
    /// When it last reloaded, Unix seconds (0: not yet).
    pub last_reload_s: u64,
}

/// A pipeline file `sluice serve` does not serve as written, and why.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct FailedFile {
    /// Its name in the folder.
    pub file: String,
    /// Its problems, one line each (a config error as `file:line:col: message`, secrets redacted).
    pub problems: Vec<String>,
}

impl Served {
    /// `pipelines`, until [`Self::replace`]d.
    pub fn new(pipelines: Vec<MonitoredPipeline>) -> Self {
        Served(Arc::new(ServedState { pipelines: RwLock::new(Arc::new(pipelines)), folder: Default::default() }))
    }

    /// The pipelines served now.
    pub fn now(&self) -> Arc<Vec<MonitoredPipeline>> {
        Arc::clone(&self.0.pipelines.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// Serves `pipelines` from now on.
    pub fn replace(&self, pipelines: Vec<MonitoredPipeline>) {
        *self.0.pipelines.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(pipelines);
    }

    /// How `sluice serve` last read its folder.
    pub fn set_folder(&self, state: &FolderState) {
        *self.0.folder.lock().unwrap_or_else(PoisonError::into_inner) = Some(state.clone());
    }

    /// How `sluice serve` last read its folder; `None` for `sluice run`.
    pub fn folder(&self) -> Option<FolderState> {
        self.0.folder.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// The counters of the pipelines served now.
    pub fn metrics(&self) -> Vec<Arc<PipelineMetrics>> {
        self.now().iter().map(|p| Arc::clone(&p.metrics)).collect()
    }
}

/// The admin routes for the pipelines `served` names at each request. Called on a tokio runtime:
/// the dashboard's sampler runs on it.
pub fn router(served: Served) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/health", get(|| async { "ok\n" }))
        .with_state(served.clone())
        .merge(super::dashboard::router(served))
}

/// Every pipeline's metrics in one exposition, and `sluice serve`'s folder state.
pub fn render(served: &Served) -> String {
    let pipelines = served.now();
    let mut text = PrometheusText::default();
    if let Some(folder) = served.folder() {
        // The process's, not a stream's: no label.
        text.sample("sluice_ConfigFilesFailed", "gauge", "", folder.failed.len());
        text.sample("sluice_ConfigReloads", "counter", "", folder.reloads);
        text.sample("sluice_ConfigLastReload_seconds", "gauge", "", folder.last_reload_s);
    }
    let now = now_ms();
    for p in pipelines.iter() {
        p.metrics.render_prometheus(&mut text, &p.stream, &p.sinks, now);
        p.metrics.render_transforms(&mut text, &p.stream, &p.transforms);
    }
    text.finish()
}

async fn metrics(State(served): State<Served>) -> Response {
    let mut response = render(&served).into_response();
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"));
    response
}

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
/// serve`. Clones share the list; a reader gets the list of one moment, whole.
#[derive(Debug, Clone, Default)]
pub struct Served(Arc<RwLock<Arc<Vec<MonitoredPipeline>>>>);

impl Served {
    /// `pipelines`, until [`Self::replace`]d.
    pub fn new(pipelines: Vec<MonitoredPipeline>) -> Self {
        Served(Arc::new(RwLock::new(Arc::new(pipelines))))
    }

    /// The pipelines served now.
    pub fn now(&self) -> Arc<Vec<MonitoredPipeline>> {
        Arc::clone(&self.0.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// Serves `pipelines` from now on.
    pub fn replace(&self, pipelines: Vec<MonitoredPipeline>) {
        *self.0.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(pipelines);
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

/// Every pipeline's metrics in one exposition.
pub fn render(pipelines: &[MonitoredPipeline]) -> String {
    let mut text = PrometheusText::default();
    let now = now_ms();
    for p in pipelines {
        p.metrics.render_prometheus(&mut text, &p.stream, &p.sinks, now);
        p.metrics.render_transforms(&mut text, &p.stream, &p.transforms);
    }
    text.finish()
}

async fn metrics(State(served): State<Served>) -> Response {
    let mut response = render(&served.now()).into_response();
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"));
    response
}

//! The admin endpoint: `GET /metrics` (Prometheus text, Firehose's metric names per stream and
//! destination, see [`sluice_engine::metrics::PipelineMetrics::render_prometheus`]),
//! `GET /health` (`ok` while the process serves), and the dashboard (`GET /`, `GET /events`,
//! [`super::dashboard`]).
//!
//! Guarantees: reading metrics never blocks the pipelines (atomics and short locks only); every
//! pipeline of the process appears in one exposition, each family once.

use std::sync::Arc;

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

/// The admin routes for `pipelines`. Called on a tokio runtime: the dashboard's sampler runs on it.
pub fn router(pipelines: Vec<MonitoredPipeline>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/health", get(|| async { "ok\n" }))
        .with_state(Arc::new(pipelines.clone()))
        .merge(super::dashboard::router(pipelines))
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

async fn metrics(State(pipelines): State<Arc<Vec<MonitoredPipeline>>>) -> Response {
    let mut response = render(&pipelines).into_response();
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"));
    response
}

//! The dashboard on the admin address: `GET /` serves one self-contained page (HTML, CSS and
//! script embedded in the binary, `dashboard.html`), `GET /events` a server-sent-events stream the
//! page draws from: a `history` event on connect (the last [`HISTORY`] frames, one a second: 15
//! minutes), then a `frame` event every second with the newest frame, the last 50 errors and,
//! under `sluice serve`, how it last read its folder: its reloads and the pipeline files it does
//! not serve as written, with their problems.
//!
//! A frame holds, per pipeline (stream): incoming records/s and bytes/s, throttled records/s,
//! in-flight bytes against their limit, the write-ahead log against `retention.max_gb`, how far a
//! Kinesis source reads behind its stream (`KinesisMillisBehindLatest`, when it has one), when the
//! TLS certificates the stream uses end (the API listener's, connectors' client certificates); per
//! sink, delivered records/s, the success ratio of delivery attempts over the last minute,
//! retries/s, records sent to the error output by reason, bytes buffered against `size_mb`, the
//! oldest buffered record's age against `interval_s`, data freshness and, when it partitions
//! records, its open partitions and those sealed early; per transform records in, out, dropped and
//! failed per second. Totals travel with the rates, so what the page shows
//! can be checked against `/metrics`, which reads the same counters.
//!
//! Guarantees: one sampler per process reads the counters once a second (atomics and short locks,
//! never the pipelines' own locks for long); the ring holds at most [`HISTORY`] frames whatever the
//! number of viewers; a viewer that falls behind skips frames instead of holding memory; the page
//! loads nothing from anywhere else (its `Content-Security-Policy` forbids it).

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderValue, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use serde::Serialize;
use sluice_engine::metrics::{CERTIFICATE_ENDING_DAYS, CertificateEnd};
use sluice_engine::record::now_ms;
use tokio::sync::broadcast;

use super::admin::MonitoredPipeline;

/// Frames kept: 15 minutes at one a second.
pub const HISTORY: usize = 900;
/// Frames the success ratio looks back over (a minute, CloudWatch's usual period).
const SUCCESS_WINDOW: usize = 60;
/// Errors a frame event carries.
const ERRORS_SHOWN: usize = 50;
/// How often frames are taken.
const PERIOD: Duration = Duration::from_secs(1);

/// The page.
const PAGE: &str = include_str!("dashboard.html");

/// One second of every pipeline.
#[derive(Debug, Clone, Serialize)]
pub struct Frame {
    /// When it was taken (ms since the epoch).
    pub time: i64,
    /// Per pipeline, in the order the process runs them.
    pub streams: Vec<StreamFrame>,
}

/// One pipeline in a frame.
#[derive(Debug, Clone, Serialize)]
pub struct StreamFrame {
    /// Delivery stream (pipeline) name.
    pub stream: String,
    /// Which run of the stream it is (its counters' address): rates are taken against frames of
    /// the same run only.
    #[serde(skip)]
    pub run: usize,
    /// This process's index when it runs as part of a cluster (its figures are its own).
    pub process: Option<usize>,
    /// Records in (all sources, or accepted by the API), bytes in, records throttled: totals.
    pub records_in: u64,
    /// Bytes in.
    pub bytes_in: u64,
    /// Records refused with ServiceUnavailableException.
    pub throttled_records: u64,
    /// Per second since the previous frame.
    pub records_in_per_s: f64,
    /// Per second since the previous frame.
    pub bytes_in_per_s: f64,
    /// Per second since the previous frame.
    pub throttled_per_s: f64,
    /// Sealed objects handed to sinks and not yet stored, and the limit past which sources wait.
    pub inflight_bytes: u64,
    /// The in-flight limit.
    pub inflight_limit_bytes: u64,
    /// The write-ahead log's bytes on disk, and `retention.max_gb` (absent without a log).
    pub log_bytes: u64,
    /// `retention.max_gb` in bytes.
    pub log_limit_bytes: Option<u64>,
    /// The sources' own gauges by family, each the largest over the stream's sources (a Kinesis
    /// source's `KinesisMillisBehindLatest`: how far behind its stream's tip it reads, in ms).
    pub source_gauges: BTreeMap<&'static str, u64>,
    /// When the TLS certificates the stream uses end: the API listener's and each connector's
    /// client certificate (absent when it uses none).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub certificates: Vec<CertificateEnd>,
    /// Per sink, in plan order.
    pub sinks: Vec<SinkFrame>,
    /// Per transform, in plan order.
    pub transforms: Vec<TransformFrame>,
}

/// One sink in a frame.
#[derive(Debug, Clone, Serialize)]
pub struct SinkFrame {
    /// The sink's name.
    pub name: String,
    /// Its Firehose destination (`S3`, `HttpEndpoint`, …).
    pub destination: &'static str,
    /// Records stored in data objects: total and per second.
    pub delivered_records: u64,
    /// Per second since the previous frame.
    pub delivered_per_s: f64,
    /// Objects stored and attempts failed: totals the success ratio is taken from.
    pub stored: u64,
    /// Attempts that failed.
    pub failed_attempts: u64,
    /// Stored ÷ (stored + failed attempts) over the last minute; absent when nothing was tried.
    pub success: Option<f64>,
    /// Retries: total and per second.
    pub retries: u64,
    /// Per second since the previous frame.
    pub retries_per_s: f64,
    /// Records sent to the error output, total and by reason (error-output type or error code).
    pub error_output_records: u64,
    /// By reason.
    pub error_output_by_reason: BTreeMap<String, u64>,
    /// Bytes in open objects on every worker, and `size_mb` in bytes.
    pub buffered_bytes: u64,
    /// `size_mb` in bytes.
    pub buffer_size_bytes: u64,
    /// Age of the oldest buffered record (s), absent when nothing is buffered; and `interval_s`.
    pub buffer_age_s: Option<f64>,
    /// `interval_s`.
    pub interval_s: u64,
    /// Age of the oldest record not yet delivered (s): `DataFreshness`.
    pub freshness_s: f64,
    /// Its partitions, when it partitions records (absent otherwise).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub partitions: Option<PartitionsFrame>,
}

/// A partitioning sink's partitions in a frame.
#[derive(Debug, Clone, Serialize)]
pub struct PartitionsFrame {
    /// Open on every worker together (`PartitionCount`).
    pub open: u64,
    /// Sealed before their size or interval to stay within `max_open_mb` (`PartitionsSealedEarly`).
    pub sealed_early: u64,
}

/// One transform in a frame.
#[derive(Debug, Clone, Serialize)]
pub struct TransformFrame {
    /// The transform's name.
    pub name: String,
    /// Its type.
    #[serde(rename = "type")]
    pub type_name: String,
    /// Totals: in, out, dropped, failed.
    pub records_in: u64,
    /// Sent on.
    pub records_out: u64,
    /// Dropped on purpose.
    pub dropped: u64,
    /// Sent to the error output.
    pub failed: u64,
    /// The same per second since the previous frame: in, out, dropped, failed.
    pub per_s: [f64; 4],
}

/// The sampler's state: the ring and the viewers' channel.
struct Dashboard {
    pipelines: super::admin::Served,
    /// Frames with their JSON, oldest first.
    ring: Mutex<VecDeque<(Frame, Arc<str>)>>,
    frames: broadcast::Sender<Arc<str>>,
}

fn per_second(now: u64, before: u64, seconds: f64) -> f64 {
    if seconds <= 0.0 { 0.0 } else { now.saturating_sub(before) as f64 / seconds }
}

/// Takes a frame of `pipelines` at `time`, rates against `previous`, the success ratio against
/// `window_start` (the frame a minute back, or the oldest kept).
pub fn take_frame(
    pipelines: &[MonitoredPipeline],
    time: i64,
    previous: Option<&Frame>,
    window_start: Option<&Frame>,
) -> Frame {
    let seconds = previous.map_or(0.0, |p| (time - p.time) as f64 / 1000.0);
    let streams = pipelines
        .iter()
        .map(|p| {
            // The same run's frame (a stream reloaded with `sluice serve` counts from 0 again).
            let run = run_of(p);
            let before = previous.and_then(|f| same_run(f, run, &p.stream));
            let window = window_start.and_then(|f| same_run(f, run, &p.stream));
            stream_frame(p, time, seconds, before, window)
        })
        .collect();
    Frame { time, streams }
}

/// Which run of its stream `p` is: the address of its counters (each run has its own).
fn run_of(p: &MonitoredPipeline) -> usize {
    Arc::as_ptr(&p.metrics) as usize
}

/// The frame of `stream` in `frame`, if it is of the run `run`.
fn same_run<'a>(frame: &'a Frame, run: usize, stream: &str) -> Option<&'a StreamFrame> {
    frame.streams.iter().find(|s| s.run == run && s.stream == stream)
}

fn stream_frame(
    p: &MonitoredPipeline,
    time: i64,
    seconds: f64,
    before: Option<&StreamFrame>,
    window: Option<&StreamFrame>,
) -> StreamFrame {
    let m = &p.metrics;
    let api = &m.api;
    let records_in = api.incoming_records.load(Relaxed).max(m.records_in());
    let bytes_in = api.incoming_bytes.load(Relaxed).max(m.bytes_in());
    let throttled_records = api.throttled_records.load(Relaxed);
    let rate = |now: u64, then: fn(&StreamFrame) -> u64| per_second(now, before.map_or(now, then), seconds);
    let retention = api.log_retention_bytes.load(Relaxed);
    let sinks = m
        .sinks
        .iter()
        .zip(&p.sinks)
        .enumerate()
        .map(|(i, (s, label))| {
            let before = before.and_then(|b| b.sinks.get(i));
            let window = window.and_then(|w| w.sinks.get(i));
            let delivered_records = s.records_delivered.load(Relaxed);
            let stored = s.stored.load(Relaxed);
            let failed_attempts = s.failed_attempts.load(Relaxed);
            let retries = s.retries.load(Relaxed);
            let (window_stored, window_failed) = window.map_or((0, 0), |w| (w.stored, w.failed_attempts));
            let tried_stored = stored.saturating_sub(window_stored);
            let tried = tried_stored + failed_attempts.saturating_sub(window_failed);
            let (buffered_bytes, oldest) = s.buffered();
            let freshness_ms = s.pending.oldest().map_or(0, |t| (time - t).max(0));
            SinkFrame {
                name: label.name.clone(),
                destination: label.kind.metric_name(),
                delivered_records,
                delivered_per_s: per_second(
                    delivered_records,
                    before.map_or(delivered_records, |b| b.delivered_records),
                    seconds,
                ),
                stored,
                failed_attempts,
                success: (tried > 0).then(|| tried_stored as f64 / tried as f64),
                retries,
                retries_per_s: per_second(retries, before.map_or(retries, |b| b.retries), seconds),
                error_output_records: s.records_failed.load(Relaxed),
                error_output_by_reason: s.reasons.lock().map(|r| r.clone()).unwrap_or_default(),
                buffered_bytes,
                buffer_size_bytes: s.buffer_size_bytes.load(Relaxed),
                buffer_age_s: oldest.map(|t| (time - t).max(0) as f64 / 1000.0),
                interval_s: s.buffer_interval_s.load(Relaxed),
                freshness_s: freshness_ms as f64 / 1000.0,
                partitions: s.partitioned.load(Relaxed).then(|| PartitionsFrame {
                    open: s.open_partitions(),
                    sealed_early: s.partitions_sealed_early.load(Relaxed),
                }),
            }
        })
        .collect();
    let transforms = m
        .transforms
        .iter()
        .zip(&p.transforms)
        .enumerate()
        .map(|(i, (t, label))| {
            let totals = [
                t.records_in.load(Relaxed),
                t.records_out.load(Relaxed),
                t.records_dropped.load(Relaxed),
                t.records_failed.load(Relaxed),
            ];
            let then = before
                .and_then(|b| b.transforms.get(i))
                .map_or(totals, |b| [b.records_in, b.records_out, b.dropped, b.failed]);
            TransformFrame {
                name: label.name.clone(),
                type_name: label.type_name.clone(),
                records_in: totals[0],
                records_out: totals[1],
                dropped: totals[2],
                failed: totals[3],
                per_s: std::array::from_fn(|k| per_second(totals[k], then[k], seconds)),
            }
        })
        .collect();
    let (inflight_bytes, inflight_limit_bytes) = m.inflight.get().map_or((0, 0), |b| (b.held(), b.limit()));
    StreamFrame {
        stream: p.stream.clone(),
        run: run_of(p),
        process: m.process.get().copied(),
        records_in,
        bytes_in,
        throttled_records,
        records_in_per_s: rate(records_in, |b| b.records_in),
        bytes_in_per_s: rate(bytes_in, |b| b.bytes_in),
        throttled_per_s: rate(throttled_records, |b| b.throttled_records),
        inflight_bytes,
        inflight_limit_bytes,
        log_bytes: api.log_bytes.load(Relaxed),
        log_limit_bytes: (retention > 0).then_some(retention),
        source_gauges: m.source_gauges(),
        certificates: m.certificate_ends(),
        sinks,
        transforms,
    }
}

/// The last `ERRORS_SHOWN` error-log lines of every pipeline, oldest first.
fn recent_errors(pipelines: &[MonitoredPipeline]) -> Vec<serde_json::Value> {
    let mut lines: Vec<serde_json::Value> =
        pipelines.iter().filter_map(|p| p.metrics.errors.get()).flat_map(|log| log.recent()).collect();
    // `time` is RFC 3339 in UTC with milliseconds: its text sorts as time does.
    lines.sort_by(|a, b| a["time"].as_str().cmp(&b["time"].as_str()));
    let skip = lines.len().saturating_sub(ERRORS_SHOWN);
    lines.split_off(skip)
}

impl Dashboard {
    /// Takes a frame, keeps it, and sends it with the recent errors to every viewer.
    fn sample(&self) {
        let pipelines = self.pipelines.now();
        let json = {
            let mut ring = self.ring.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            let window_start = ring.len().checked_sub(SUCCESS_WINDOW).and_then(|i| ring.get(i)).or(ring.front());
            let frame = take_frame(&pipelines, now_ms(), ring.back().map(|(f, _)| f), window_start.map(|(f, _)| f));
            let json: Arc<str> = serde_json::to_string(&frame).unwrap_or_default().into();
            if ring.len() == HISTORY {
                ring.pop_front();
            }
            ring.push_back((frame, Arc::clone(&json)));
            json
        };
        let errors = serde_json::to_string(&recent_errors(&pipelines)).unwrap_or_else(|_| "[]".into());
        // Like the errors, the folder's state travels with the live frame only: the history holds
        // no copy of it per second.
        let folder = serde_json::to_string(&self.pipelines.folder()).unwrap_or_else(|_| "null".into());
        // No viewer is not an error.
        let _ = self.frames.send(format!("{{\"frame\":{json},\"errors\":{errors},\"folder\":{folder}}}").into());
    }

    /// Every frame kept, as one JSON array.
    fn history(&self) -> String {
        let ring = self.ring.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut out = String::with_capacity(ring.iter().map(|(_, j)| j.len() + 1).sum::<usize>() + 2);
        out.push('[');
        for (i, (_, json)) in ring.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            out.push_str(json);
        }
        out.push(']');
        out
    }
}

/// The dashboard's routes for the pipelines `pipelines` names at each frame; its sampler runs on
/// the caller's tokio runtime for as long as the runtime does.
pub fn router(pipelines: super::admin::Served) -> Router {
    let (frames, _) = broadcast::channel(8);
    let dashboard = Arc::new(Dashboard { pipelines, ring: Mutex::new(VecDeque::with_capacity(HISTORY)), frames });
    let sampler = Arc::clone(&dashboard);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(PERIOD);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            sampler.sample();
        }
    });
    Router::new().route("/", get(page)).route("/events", get(events)).with_state(dashboard)
}

/// The page as served: with the alert rules' threshold for certificates ending soon.
fn page_text() -> String {
    PAGE.replace("{{CERTIFICATE_ENDING_DAYS}}", &CERTIFICATE_ENDING_DAYS.to_string())
}

async fn page() -> Response {
    let mut response = Html(page_text()).into_response();
    // Nothing from elsewhere: no CDN, fonts or scripts; the event stream from this origin only.
    response.headers_mut().insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; \
             img-src data:; connect-src 'self'; base-uri 'none'; form-action 'none'",
        ),
    );
    response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

async fn events(
    State(dashboard): State<Arc<Dashboard>>,
) -> Sse<impl futures::Stream<Item = Result<Event, std::convert::Infallible>>> {
    // Subscribed before the history is read: a frame taken in between arrives twice at most, and
    // the page skips frames no newer than what it has.
    let receiver = dashboard.frames.subscribe();
    let history = Event::default().event("history").data(dashboard.history());
    let live = futures::stream::unfold(receiver, |mut receiver| async move {
        loop {
            match receiver.recv().await {
                Ok(json) => return Some((Ok(Event::default().event("frame").data(&*json)), receiver)),
                // Behind: skip to the newest frames.
                Err(broadcast::error::RecvError::Lagged(_)) => continue,
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    });
    let stream = futures::StreamExt::chain(futures::stream::once(async move { Ok(history) }), live);
    Sse::new(stream).keep_alive(KeepAlive::default())
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_engine::destination::DestinationKind;
    use sluice_engine::metrics::{PipelineMetrics, SinkLabel, TransformLabel};

    fn pipeline() -> MonitoredPipeline {
        MonitoredPipeline {
            stream: "s".into(),
            metrics: Arc::new(PipelineMetrics::new(1, 1).with_transforms(1)),
            sinks: vec![SinkLabel { name: "out".into(), kind: DestinationKind::HttpEndpoint }],
            transforms: vec![TransformLabel { name: "shape".into(), type_name: "jq".into() }],
        }
    }

    /// Rates come from consecutive frames; the success ratio from the window's start; nothing
    /// tried in the window is no ratio rather than 100 %.
    #[test]
    fn frames_carry_totals_rates_and_a_windowed_success_ratio() {
        let p = pipeline();
        let m = &p.metrics;
        let first = take_frame(std::slice::from_ref(&p), 10_000, None, None);
        assert_eq!(first.streams[0].sinks[0].success, None);
        m.sources[0].records.fetch_add(2_000, Relaxed);
        m.sources[0].bytes.fetch_add(200_000, Relaxed);
        m.sinks[0].records_delivered.fetch_add(1_000, Relaxed);
        m.sinks[0].stored.fetch_add(3, Relaxed);
        m.sinks[0].count_failed_attempt(true);
        m.transforms[0].records_in.fetch_add(2_000, Relaxed);
        m.transforms[0].records_dropped.fetch_add(500, Relaxed);
        m.sinks[0].set_buffered(1, 4096, Some(9_000));
        let second = take_frame(std::slice::from_ref(&p), 12_000, Some(&first), Some(&first));
        let s = &second.streams[0];
        assert_eq!((s.records_in, s.records_in_per_s, s.bytes_in_per_s), (2_000, 1_000.0, 100_000.0));
        let sink = &s.sinks[0];
        assert_eq!((sink.delivered_per_s, sink.retries_per_s, sink.success), (500.0, 0.5, Some(0.75)));
        assert_eq!((sink.buffered_bytes, sink.buffer_age_s), (4096, Some(3.0)));
        assert_eq!((s.transforms[0].per_s, s.transforms[0].dropped), ([1_000.0, 0.0, 250.0, 0.0], 500));
        assert!(s.certificates.is_empty());
        assert!(sink.partitions.is_none(), "a sink that does not partition shows no partitions");
        m.sinks[0].partitioned.store(true, Relaxed);
        m.sinks[0].set_open_partitions(0, 700);
        m.sinks[0].set_open_partitions(1, 320);
        m.sinks[0].partitions_sealed_early.fetch_add(4, Relaxed);
        let partitioned = take_frame(std::slice::from_ref(&p), 12_500, Some(&second), Some(&first));
        let parts = partitioned.streams[0].sinks[0].partitions.as_ref().map(|p| (p.open, p.sealed_early));
        assert_eq!(parts, Some((1_020, 4)), "the workers' open partitions together");
        // A window in which nothing was tried has no ratio.
        let third = take_frame(std::slice::from_ref(&p), 13_000, Some(&second), Some(&second));
        assert_eq!(third.streams[0].sinks[0].success, None);
    }

    /// A frame says when the certificates the stream uses end, and only when it uses some (the
    /// page's certificate chips read `certificates`).
    #[test]
    fn frames_say_when_the_stream_s_certificates_end() {
        let p = pipeline();
        let none = serde_json::to_value(take_frame(std::slice::from_ref(&p), 1_000, None, None)).unwrap();
        assert!(none["streams"][0].get("certificates").is_none(), "{none}");
        p.metrics.api.certificate.served.store(true, Relaxed);
        p.metrics.api.certificate.expiry_s.store(1_900_000_000, Relaxed);
        p.metrics.set_client_certificate_expiry("destination", "out", 1_800_000_000);
        let frame = serde_json::to_value(take_frame(std::slice::from_ref(&p), 2_000, None, None)).unwrap();
        assert_eq!(
            frame["streams"][0]["certificates"],
            serde_json::json!([
                {"of": "listener", "name": null, "ends_s": 1_900_000_000u64},
                {"of": "destination", "name": "out", "ends_s": 1_800_000_000u64},
            ])
        );
    }

    /// The page is whole: nothing it loads comes from elsewhere.
    #[test]
    fn the_page_references_nothing_outside_itself() {
        for outside in ["http://", "https://", "//cdn", "@import", "<link", "src="] {
            assert!(!PAGE.contains(outside), "the page refers to something outside itself: {outside}");
        }
        assert!(PAGE.contains("new EventSource(\"events\")"));
        let served = page_text();
        assert!(
            served.contains(&format!("const ENDING_DAYS = {CERTIFICATE_ENDING_DAYS};")),
            "the threshold is filled in"
        );
        assert!(!served.contains("{{"), "no placeholder is left");
    }
}

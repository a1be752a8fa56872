//! PutRecordBatch load for the benchmarks (`sluice bench`'s `ingest` scenario and `cargo bench
//! --bench ingest`): prepared requests of 500 VPC-Flow-Logs-style records, optionally SigV4-signed,
//! sent by concurrent clients; and the trivial server they are compared with, which only reads the
//! body and answers `{}`.
//!
//! Guarantees: a record counts as sent only when its request was answered 200 with
//! `"FailedPutCount":0` (or `{}` from the trivial server); throttled requests are counted apart, not
//! retried, so a run that throttles says so instead of looking fast.

use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use bytes::Bytes;

use crate::api::sigv4::Signer;
use crate::synth::{Profile, write_ndjson};

/// Records per PutRecordBatch request (Firehose's maximum).
pub const RECORDS_PER_REQUEST: usize = 500;
/// Distinct request bodies, sent in turn.
const DISTINCT_REQUESTS: usize = 32;
/// The access key the benchmarks sign with (and the pipelines accept).
pub const ACCESS_KEY: &str = "AKIDBENCH";
/// Its secret.
pub const SECRET_KEY: &str = "bench-secret";

/// One prepared request.
#[derive(Debug, Clone)]
pub struct Request {
    /// The JSON body.
    pub body: Bytes,
    /// Its headers (signed when asked).
    pub headers: reqwest::header::HeaderMap,
    /// Bytes of record data it carries (before base64).
    pub data_bytes: u64,
}

/// What a load run achieved.
#[derive(Debug, Clone, Default)]
pub struct LoadOutcome {
    /// Records acknowledged.
    pub records: u64,
    /// Their bytes (before base64).
    pub bytes: u64,
    /// Requests answered with throttled records (not retried).
    pub throttled_requests: u64,
    /// Each request's latency, sorted.
    pub latencies: Vec<Duration>,
    /// From the first request to the last answer.
    pub elapsed: Duration,
}

impl LoadOutcome {
    /// The latency at quantile `q` (0..=1), in milliseconds.
    pub fn latency_ms(&self, q: f64) -> f64 {
        let n = self.latencies.len();
        let i = ((n as f64 * q) as usize).min(n.saturating_sub(1));
        self.latencies.get(i).map_or(0.0, |d| d.as_secs_f64() * 1000.0)
    }
}

/// How long to send.
#[derive(Debug, Clone, Copy)]
pub enum Until {
    /// Until `n` requests were answered (the prepared ones in turn).
    Requests(usize),
    /// For a time.
    Elapsed(Duration),
}

/// The distinct request bodies for `stream`, with the record bytes each carries.
pub fn bodies(stream: &str) -> std::io::Result<Vec<(Vec<u8>, u64)>> {
    let mut ndjson = Vec::new();
    write_ndjson(Profile::Vpcflow, 7, (RECORDS_PER_REQUEST * DISTINCT_REQUESTS) as u64, &mut ndjson)?;
    let lines: Vec<&[u8]> = ndjson.split(|b| *b == b'\n').filter(|l| !l.is_empty()).collect();
    lines
        .chunks(RECORDS_PER_REQUEST)
        .map(|chunk| {
            let records: Vec<serde_json::Value> = chunk
                .iter()
                .map(|r| serde_json::json!({"Data": base64::engine::general_purpose::STANDARD.encode(r)}))
                .collect();
            let body = serde_json::json!({"DeliveryStreamName": stream, "Records": records});
            Ok((serde_json::to_vec(&body)?, chunk.iter().map(|r| r.len() as u64).sum()))
        })
        .collect()
}

/// The requests for `bodies` to `127.0.0.1:port`, SigV4-signed with [`ACCESS_KEY`] when `signed`.
pub fn requests(bodies: &[(Vec<u8>, u64)], port: u16, signed: bool) -> std::io::Result<Vec<Request>> {
    let now = chrono::Utc::now().format("%Y%m%dT%H%M%SZ").to_string();
    bodies
        .iter()
        .map(|(body, data_bytes)| {
            let mut h = http::HeaderMap::new();
            let value = |v: &str| http::HeaderValue::from_str(v).map_err(std::io::Error::other);
            h.insert("host", value(&format!("127.0.0.1:{port}"))?);
            h.insert("content-type", value("application/x-amz-json-1.1")?);
            h.insert("x-amz-target", value("Firehose_20150804.PutRecordBatch")?);
            if signed {
                let signer =
                    Signer { key_id: ACCESS_KEY, secret: SECRET_KEY, region: "us-east-1", service: "firehose" };
                signer.sign(&now, "POST", "/", &mut h, body).map_err(std::io::Error::other)?;
            }
            Ok(Request { body: Bytes::from(body.clone()), headers: h, data_bytes: *data_bytes })
        })
        .collect()
}

/// Sends `requests` in turn to `127.0.0.1:port` from `clients` concurrent clients until `until`.
pub fn send(port: u16, requests: &Arc<Vec<Request>>, clients: usize, until: Until) -> std::io::Result<LoadOutcome> {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let http = reqwest::Client::builder().pool_max_idle_per_host(clients).build().map_err(std::io::Error::other)?;
    let started = Instant::now();
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let results = runtime.block_on(async {
        let tasks: Vec<_> = (0..clients.max(1))
            .map(|_| {
                let (http, requests, next) = (http.clone(), Arc::clone(requests), Arc::clone(&next));
                tokio::spawn(async move {
                    let mut outcome = LoadOutcome::default();
                    loop {
                        let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let more = match until {
                            Until::Requests(n) => i < n,
                            Until::Elapsed(d) => started.elapsed() < d,
                        };
                        if !more || requests.is_empty() {
                            return Ok::<_, std::io::Error>(outcome);
                        }
                        let request = &requests[i % requests.len()];
                        let sent = Instant::now();
                        let response = http
                            .post(format!("http://127.0.0.1:{port}/"))
                            .headers(request.headers.clone())
                            .body(request.body.clone())
                            .send()
                            .await
                            .map_err(std::io::Error::other)?;
                        let status = response.status();
                        let text = response.bytes().await.map_err(std::io::Error::other)?;
                        if !status.is_success() {
                            return Err(std::io::Error::other(format!(
                                "the server answered {status}: {}",
                                String::from_utf8_lossy(&text)
                            )));
                        }
                        outcome.latencies.push(sent.elapsed());
                        if text.windows(18).any(|w| w == b"\"FailedPutCount\":0") || text.as_ref() == b"{}" {
                            outcome.records += RECORDS_PER_REQUEST as u64;
                            outcome.bytes += request.data_bytes;
                        } else {
                            outcome.throttled_requests += 1;
                        }
                    }
                })
            })
            .collect();
        let mut all = LoadOutcome::default();
        for task in tasks {
            let one = task.await.map_err(std::io::Error::other)??;
            all.records += one.records;
            all.bytes += one.bytes;
            all.throttled_requests += one.throttled_requests;
            all.latencies.extend(one.latencies);
        }
        Ok::<_, std::io::Error>(all)
    });
    let mut outcome = results?;
    outcome.elapsed = started.elapsed();
    outcome.latencies.sort();
    Ok(outcome)
}

/// Serves the trivial server on `listener` until the future is dropped: reads each body, answers `{}`.
pub async fn trivial_server(listener: tokio::net::TcpListener) -> std::io::Result<()> {
    let app = axum::Router::new()
        .route(
            "/",
            axum::routing::post(|body: Bytes| async move {
                std::hint::black_box(body.len());
                "{}"
            }),
        )
        .layer(axum::extract::DefaultBodyLimit::disable());
    axum::serve(listener, app).await
}

/// A free port on 127.0.0.1.
pub fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Waits until something accepts connections on `port` (10 s at most).
pub fn wait_for(port: u16) -> std::io::Result<()> {
    let started = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if started.elapsed() > Duration::from_secs(10) {
            return Err(std::io::Error::other(format!("nothing listens on 127.0.0.1:{port} after 10 s")));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// A receiver on 127.0.0.1 counting the records it is sent: Firehose HTTP endpoint requests on
/// `/firehose` (answered with their `requestId`, as the protocol wants), newline-delimited
/// batches on `/lines` (what syslog-ng's `http()` destination posts), and Elasticsearch 8 `_bulk`
/// requests (gzip or not), answered as Elasticsearch does without indexing: an item per document
/// under its action's name, with `/` and `/_license` answered as an Elasticsearch 8.1.3 node does
/// (Beats check both before they send). Lives as long as the value.
pub struct Receiver {
    /// Its port.
    pub port: u16,
    /// Records received so far.
    pub records: Arc<std::sync::atomic::AtomicU64>,
    _runtime: tokio::runtime::Runtime,
}

impl Receiver {
    /// Starts one.
    pub fn start() -> std::io::Result<Receiver> {
        use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build()?;
        let records = Arc::new(AtomicU64::new(0));
        let (on_requests, on_lines) = (Arc::clone(&records), Arc::clone(&records));
        let app = axum::Router::new()
            .route(
                "/firehose",
                axum::routing::post(move |headers: http::HeaderMap, body: Bytes| {
                    let records = Arc::clone(&on_requests);
                    async move {
                        let mut text = Vec::new();
                        let gzip = headers.get("content-encoding").is_some_and(|v| v == "gzip");
                        let read = if gzip {
                            std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&body[..]), &mut text)
                                .map(|_| ())
                        } else {
                            text.extend_from_slice(&body);
                            Ok(())
                        };
                        // Records are counted, not decoded: the receiver should cost little.
                        #[derive(serde::Deserialize)]
                        struct Request {
                            #[serde(rename = "requestId")]
                            request_id: String,
                            records: Vec<serde::de::IgnoredAny>,
                        }
                        let request: Option<Request> = read.ok().and_then(|()| serde_json::from_slice(&text).ok());
                        let Some(request) = request else {
                            return (http::StatusCode::BAD_REQUEST, String::new());
                        };
                        records.fetch_add(request.records.len() as u64, Relaxed);
                        let answer = serde_json::json!({
                            "requestId": request.request_id,
                            "timestamp": chrono::Utc::now().timestamp_millis()
                        });
                        (http::StatusCode::OK, answer.to_string())
                    }
                }),
            )
            .route(
                "/lines",
                axum::routing::post(move |body: Bytes| {
                    let records = Arc::clone(&on_lines);
                    async move {
                        records.fetch_add(memchr::memchr_iter(b'\n', &body).count() as u64, Relaxed);
                        "{}"
                    }
                }),
            )
            .route("/", axum::routing::get(|| async { elasticsearch(ELASTICSEARCH_INFO) }))
            .route("/_license", axum::routing::get(|| async { elasticsearch(ELASTICSEARCH_LICENSE) }))
            .route("/_bulk", axum::routing::post(bulk_handler(Arc::clone(&records))))
            .route("/{index}/_bulk", axum::routing::post(bulk_handler(Arc::clone(&records))))
            .layer(axum::extract::DefaultBodyLimit::disable());
        let listener = runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))?;
        let port = listener.local_addr()?.port();
        runtime.spawn(async move { axum::serve(listener, app).await });
        Ok(Receiver { port, records, _runtime: runtime })
    }
}

/// What an Elasticsearch 8.1.3 node answers on `/`.
const ELASTICSEARCH_INFO: &str = r#"{"name":"bench","cluster_name":"bench","cluster_uuid":"bench-cluster-uuid-0000","version":{"number":"8.1.3","build_flavor":"default","build_type":"tar","build_hash":"39afaa3c0fe7db4869a161985e240bd7182d7a07","build_date":"2022-04-19T08:13:25.444693396Z","build_snapshot":false,"lucene_version":"9.0.0","minimum_wire_compatibility_version":"7.17.0","minimum_index_compatibility_version":"7.0.0"},"tagline":"You Know, for Search"}"#;

/// What it answers on `/_license` (a basic license, as a fresh node has).
const ELASTICSEARCH_LICENSE: &str = r#"{"license":{"status":"active","uid":"bench-license-uid","type":"basic","issue_date":"2022-04-19T00:00:00.000Z","issue_date_in_millis":1650326400000,"max_nodes":1000,"max_resource_units":null,"issued_to":"bench","issuer":"elasticsearch","start_date_in_millis":-1}}"#;

/// A JSON answer with the header Elasticsearch 8 clients check.
fn elasticsearch(body: &'static str) -> ([(&'static str, &'static str); 2], &'static str) {
    ([("content-type", "application/json"), ("x-elastic-product", "Elasticsearch")], body)
}

/// An answer of the Elasticsearch endpoints: status, headers, JSON.
type ElasticsearchAnswer = (http::StatusCode, [(&'static str, &'static str); 2], String);

/// A `_bulk` handler counting documents into `records`.
fn bulk_handler(
    records: Arc<std::sync::atomic::AtomicU64>,
) -> impl Fn(http::HeaderMap, Bytes) -> std::future::Ready<ElasticsearchAnswer> + Clone + Send + 'static {
    move |headers: http::HeaderMap, body: Bytes| {
        let answer = bulk_answer(&headers, &body);
        if let Ok((documents, _)) = &answer {
            records.fetch_add(*documents, std::sync::atomic::Ordering::Relaxed);
        }
        let headers = [("content-type", "application/json"), ("x-elastic-product", "Elasticsearch")];
        std::future::ready(match answer {
            Ok((_, text)) => (http::StatusCode::OK, headers, text),
            Err(why) => (http::StatusCode::BAD_REQUEST, headers, format!("{{\"error\":\"{why}\"}}")),
        })
    }
}

/// The documents of a `_bulk` body and Elasticsearch's answer: an item per document, named as its
/// action (`index` or `create`), all created.
fn bulk_answer(headers: &http::HeaderMap, body: &[u8]) -> Result<(u64, String), &'static str> {
    let mut text = Vec::new();
    let body = if headers.get("content-encoding").is_some_and(|v| v == "gzip") {
        std::io::Read::read_to_end(&mut flate2::read::MultiGzDecoder::new(body), &mut text).map_err(|_| "not gzip")?;
        &text[..]
    } else {
        body
    };
    let mut answer = String::with_capacity(body.len() / 8);
    answer.push_str("{\"took\":1,\"errors\":false,\"items\":[");
    let mut documents = 0u64;
    let mut lines = body.split(|&b| b == b'\n').filter(|l| !l.is_empty());
    while let Some(action) = lines.next() {
        lines.next().ok_or("an action without its document")?;
        let name = if action.starts_with(b"{\"create\"") { "create" } else { "index" };
        if documents > 0 {
            answer.push(',');
        }
        answer.push_str(&format!("{{\"{name}\":{{\"_index\":\"bench\",\"_id\":\"{documents}\",\"_version\":1,\"result\":\"created\",\"status\":201}}}}"));
        documents += 1;
    }
    answer.push_str("]}");
    Ok((documents, answer))
}

//! `type = "lambda"`: calls a function with Firehose's data-transformation contract
//! (docs/firehose.md §12): any HTTP server or Lambda function URL (`url`), or a Lambda function
//! through the Invoke API (`function`, SigV4).
//!
//! ```toml
//! [transforms.fn]
//! type = "lambda"
//! inputs = ["api"]
//! url = "http://127.0.0.1:9000/"      # POST the event JSON, or:
//! # function = "arn:aws:lambda:us-east-1:123456789012:function:mask"
//! # endpoint = "http://127.0.0.1:9001" # the Lambda API's address (default https://lambda.<region>.amazonaws.com, in the region's partition)
//! buffer = { size_mb = 1, interval_s = 60 }   # Firehose: 0.2-3 MB, 60-900 s; default 1 MB / 60 s
//! retries = 3                          # NumberOfRetries, 0-300 (default 3)
//! timeout_s = 60                       # per invocation, 1-900 (default 60)
//! max_concurrency = 4                  # invocations in flight per worker, 1-64 (default 4)
//! tls = { ca = "private-ca.pem" }      # optional: crate::tls
//! ```
//!
//! With `function`, the first worker to open asks Lambda for the function (`GetFunctionConfiguration`,
//! `Invoker::check_function`): one Lambda does not know stops the run at start.
//!
//! Each worker buffers records until `size_mb` of record data, `interval_s` since the first, 6 MB of
//! request (Lambda's synchronous payload limit) or the end of the input, then sends
//! `{invocationId, deliveryStreamArn, region, records:[{recordId, approximateArrivalTimestamp, data}]}`,
//! with what the records' source says of them when it says anything
//! ([`sluice_engine::record::SourceMetadata`]: a `kinesis` source's `sourceKinesisStreamArn` in the
//! event and `kinesisRecordMetadata` in each record's entry, as Firehose sends them).
//! The answer must list every recordId once: `Ok` replaces the record's data (its
//! `metadata.partitionKeys` stay on the record), `Dropped` drops it (counted), `ProcessingFailed`
//! sends the record as it entered to the error output (`processing-failed`,
//! `Lambda.ProcessingFailed`). A response that misses a recordId, repeats one or is not the
//! contract's JSON fails the whole batch at once (`Lambda.MissingRecordId`,
//! `Lambda.DuplicatedRecordId`, `Lambda.JsonProcessingException`). Connection errors, timeouts
//! (`Lambda.FunctionTimedOut`), 429 (`Lambda.InvokeLimitExceeded`), 5xx (`Lambda.ServiceException`)
//! and function errors (`X-Amz-Function-Error`: `Lambda.FunctionError`) are retried `retries` times
//! with exponential back-off; other 4xx are not (`Lambda.InvokeAccessDenied`,
//! `Lambda.ResourceNotFound`, `Lambda.InvalidRequest`). A batch that fails sends every record to the
//! error output with the last error, the attempts made and `lambdaArn` (the ARN or the URL).
//!
//! Up to `max_concurrency` invocations of a worker run at once; records leave in their input order
//! whatever order the answers come in. Until a record is answered, the worker holds its epoch, so
//! the write-ahead log and file checkpoints keep it: a crash re-sends it.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use serde::Deserialize;
use sluice_engine::config::{ConnectorConfig, Diagnostic, Problems};
use sluice_engine::contract::{
    Holding, Processor, Transform, TransformContext, TransformError, TransformOutput, TransformWorker,
};
use sluice_engine::error_output::ErrorOutputType;
use sluice_engine::record::{FailedRecords, PartitionKeys, RecordBatch, RecordFailure, Records};

use crate::api::firehose::{ACCOUNT, stream_arn};
use crate::aws_credentials::AwsCredentials;
use crate::tls::ClientTls;

/// The code of a call made without credentials (none found, or none given by the chain).
const NO_CREDENTIALS: &str = "Lambda.InvokeAccessDenied";

/// Lambda's synchronous invocation payload limit.
const MAX_REQUEST_BYTES: usize = 6_000_000;
/// A response body larger than this is an error.
const MAX_RESPONSE_BYTES: usize = 6 << 20;
/// JSON around one record besides its base64 data: `{"recordId":"…","approximateArrivalTimestamp":…,"data":""},`.
const RECORD_OVERHEAD: usize = 120;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LambdaConfig {
    #[serde(default)]
    url: Option<String>,
    #[serde(default)]
    function: Option<String>,
    #[serde(default)]
    endpoint: Option<String>,
    #[serde(default)]
    buffer: Option<BufferConfig>,
    #[serde(default)]
    retries: Option<u32>,
    #[serde(default)]
    timeout_s: Option<u64>,
    #[serde(default)]
    max_concurrency: Option<usize>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct BufferConfig {
    size_mb: f64,
    interval_s: u64,
}

/// Where invocations go.
#[derive(Debug, Clone)]
enum Target {
    /// POST the event to this URL.
    Url(reqwest::Url),
    /// The Lambda Invoke API.
    Function {
        /// `https://lambda.<region>.amazonaws.com/2015-03-31/functions/<name>/invocations`.
        url: reqwest::Url,
        /// The path as SigV4 canonicalizes it for Lambda (each segment encoded twice).
        signed_path: String,
        /// `…/2015-03-31/functions/<name>/configuration` (GetFunctionConfiguration, the start-up
        /// check) and its signed path.
        check_url: reqwest::Url,
        check_signed_path: String,
        region: String,
    },
}

/// A configured lambda transform.
#[derive(Debug)]
pub struct LambdaTransform {
    shared: Arc<Invoker>,
    size_bytes: usize,
    interval: Duration,
    max_concurrency: usize,
}

/// What every invocation of the transform shares.
#[derive(Debug)]
struct Invoker {
    target: Target,
    /// The ARN or URL, as error documents name it (`lambdaArn`).
    lambda_arn: Arc<str>,
    stream_arn: String,
    region: String,
    retries: u32,
    client: crate::tls::TlsClient,
    /// For a `function`: where Invoke requests get their credentials, found once when the first
    /// worker opens (every worker signs with them).
    credentials: tokio::sync::OnceCell<AwsCredentials>,
}

/// Builds a lambda transform from `[transforms.<name>]`.
pub fn configure(mut config: ConnectorConfig) -> Result<Arc<dyn Transform>, Problems> {
    let span = config.table.span.clone();
    let spans = |key: &str| config.table.value_span(key).unwrap_or(span.clone());
    let (url_span, function_span, endpoint_span, buffer_span) =
        (spans("url"), spans("function"), spans("endpoint"), spans("buffer"));
    let (retries_at, timeout_at, concurrency_at) =
        (config.table.key_at("retries"), config.table.key_at("timeout_s"), config.table.key_at("max_concurrency"));
    let pipeline = config.pipeline.clone();
    let mut problems = Problems::default();
    let tls = ClientTls::take_from(&mut config.table, &config.base_dir, &mut problems);
    let Some(c) = config.table.deserialize::<LambdaConfig>(&mut problems) else { return Err(problems) };
    let http_url = |text: &str, at: std::ops::Range<usize>, what: &str| {
        reqwest::Url::parse(text).ok().filter(|u| matches!(u.scheme(), "http" | "https")).ok_or_else(|| {
            Diagnostic::new(at, format!("`{text}` is not an http(s) URL"))
                .with_hint(format!("{what}, e.g. \"http://127.0.0.1:9000/\""))
        })
    };
    let endpoint = c.endpoint;
    let target = problems.take((|| -> Result<_, Problems> { match (c.url, c.function) {
        (Some(url), None) => {
            if endpoint.is_some() {
                return Err(Diagnostic::new(endpoint_span, "`endpoint` goes with `function`, not `url`")
                    .with_hint("with `url`, the event is POSTed to that URL")
                    .into());
            }
            let parsed = http_url(&url, url_span, "the function's URL (any HTTP server, or a Lambda function URL)")?;
            Ok((Target::Url(parsed), url, "us-east-1".to_string()))
        }
        (None, Some(function)) => {
            let Some((region, _)) = parse_function_arn(&function) else {
                return Err(Diagnostic::new(function_span, format!("`{function}` is not a Lambda function ARN"))
                    .with_hint("e.g. function = \"arn:aws:lambda:us-east-1:123456789012:function:mask\" (a version or alias may follow: `:live`)")
                    .into());
            };
            let base = match &endpoint {
                Some(e) => http_url(e, endpoint_span, "the Lambda API's address")?,
                None => http_url(&crate::aws_endpoint::service_endpoint("lambda", &region), function_span, "")?,
            };
            // The endpoint's own path (a proxy's prefix) is kept in front of the API's.
            let once = uri_encode(&function);
            let prefix = base.path().trim_end_matches('/').to_string();
            let url = base
                .join(&format!("{prefix}/2015-03-31/functions/{once}/invocations"))
                .map_err(|e| Diagnostic::new(span.clone(), format!("cannot build the Invoke URL: {e}")))?;
            let signed_path = format!("{prefix}/2015-03-31/functions/{}/invocations", uri_encode(&once));
            let check_url = base
                .join(&format!("{prefix}/2015-03-31/functions/{once}/configuration"))
                .map_err(|e| Diagnostic::new(span.clone(), format!("cannot build the function's URL: {e}")))?;
            let check_signed_path = format!("{prefix}/2015-03-31/functions/{}/configuration", uri_encode(&once));
            let target = Target::Function { url, signed_path, check_url, check_signed_path, region: region.clone() };
            Ok((target, function, region))
        }
        (Some(_), Some(_)) => {
            Err(Diagnostic::new(function_span, "a lambda transform has `url` or `function`, not both")
                .with_hint("`url` POSTs the event to any HTTP server; `function` calls the Lambda Invoke API")
                .into())
        }
        // Written wrong or misspelt: its problem is reported already.
        (None, None) if problems.said("url") || problems.said("function") => Err(Problems::default()),
        (None, None) => {
            Err(Diagnostic::new(span.clone(), "a lambda transform needs `url` or `function`").of_the_table().with_hint(
                "url = \"http://127.0.0.1:9000/\", or function = \"arn:aws:lambda:<region>:<account>:function:<name>\"",
            ).into())
        }
    }})());
    let buffer = problems.take(match c.buffer {
        None => Ok((1_000_000, Duration::from_secs(60))),
        Some(b) if (0.2..=3.0).contains(&b.size_mb) && (60..=900).contains(&b.interval_s) => {
            Ok(((b.size_mb * 1_000_000.0) as usize, Duration::from_secs(b.interval_s)))
        }
        Some(_) => Err(Diagnostic::new(buffer_span, "`buffer` is out of Firehose's range for a Lambda processor")
            .with_hint("size_mb in 0.2..=3 (default 1), interval_s in 60..=900 (default 60)")),
    });
    let retries = problems.take(retries_at.within(
        c.retries,
        3,
        0..=300,
        "Firehose's NumberOfRetries (default 3); then the whole batch is processing-failed",
    ));
    let timeout = problems.take(
        timeout_at
            .within(
                c.timeout_s,
                60,
                1..=900,
                "how long one invocation may take, default 60 (a Lambda function runs at most 15 minutes)",
            )
            .map(Duration::from_secs),
    );
    let max_concurrency = problems.take(concurrency_at.within(
        c.max_concurrency,
        4,
        1..=64,
        "invocations in flight per worker, default 4 (Firehose runs at most 5 per shard)",
    ));
    let ((target, lambda_arn, region), (size_bytes, interval), retries, timeout, max_concurrency, tls) =
        problems.finish((|| Some((target?, buffer?, retries?, timeout?, max_concurrency?, tls?)))())?;
    let client = tls.client(timeout)?;
    Ok(Arc::new(LambdaTransform {
        shared: Arc::new(Invoker {
            target,
            lambda_arn: lambda_arn.into(),
            stream_arn: stream_arn(&region, ACCOUNT, &pipeline),
            region,
            retries,
            client,
            credentials: tokio::sync::OnceCell::new(),
        }),
        size_bytes,
        interval,
        max_concurrency,
    }))
}

/// The region and the function part of `arn:aws:lambda:<region>:<account>:function:<name>[:qualifier]`.
fn parse_function_arn(arn: &str) -> Option<(String, String)> {
    let parts: Vec<&str> = arn.split(':').collect();
    let valid_name = |s: &str| {
        !s.is_empty() && s.len() <= 140 && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_$".contains(&b))
    };
    match parts.as_slice() {
        ["arn", partition, "lambda", region, account, "function", name, rest @ ..]
            if partition.starts_with("aws")
                && !region.is_empty()
                && account.len() == 12
                && account.bytes().all(|b| b.is_ascii_digit())
                && valid_name(name)
                && rest.len() <= 1
                && rest.iter().all(|q| valid_name(q)) =>
        {
            Some(((*region).to_string(), (*name).to_string()))
        }
        _ => None,
    }
}

/// Percent-encodes everything but RFC 3986's unreserved characters.
fn uri_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

impl Transform for LambdaTransform {
    fn processors(&self) -> Vec<Processor> {
        let parameters = vec![
            ("LambdaArn", self.shared.lambda_arn.to_string()),
            ("NumberOfRetries", self.shared.retries.to_string()),
            ("BufferSizeInMBs", format!("{}", self.size_bytes as f64 / 1e6)),
            ("BufferIntervalInSeconds", self.interval.as_secs().to_string()),
        ];
        vec![Processor { kind: "Lambda", parameters }]
    }

    fn describe(&self) -> String {
        format!(
            "lambda: {} (buffer {:.1} MB / {} s, {} retries, {} in flight per worker)",
            self.shared.lambda_arn,
            self.size_bytes as f64 / 1e6,
            self.interval.as_secs(),
            self.shared.retries,
            self.max_concurrency
        )
    }

    /// A `function`'s credentials found and the function known to Lambda (the start-up check of
    /// `Invoker::check_function`); nothing for a `url`.
    fn check(&self) -> Option<futures::future::BoxFuture<'static, Result<(), TransformError>>> {
        let Target::Function { region, .. } = &self.shared.target else { return None };
        let (shared, region) = (Arc::clone(&self.shared), region.clone());
        Some(Box::pin(async move {
            let credentials = AwsCredentials::resolve(&region, "calling a Lambda function")
                .await
                .map_err(|e| TransformError::refused(NO_CREDENTIALS, e))?;
            shared.check_function(&credentials).await
        }))
    }

    fn open(&self, context: &TransformContext) -> Result<Box<dyn TransformWorker>, TransformError> {
        self.shared.client.tls_metrics().meter_with(Arc::clone(&context.metrics));
        if let Target::Function { region, .. } = &self.shared.target {
            let find = || async {
                let credentials = AwsCredentials::resolve(region, "calling a Lambda function")
                    .await
                    .map_err(|e| TransformError::refused(NO_CREDENTIALS, e))?;
                self.shared.check_function(&credentials).await?;
                Ok::<_, TransformError>(credentials)
            };
            context.runtime.block_on(self.shared.credentials.get_or_try_init(find))?;
        }
        Ok(Box::new(LambdaWorker {
            invoker: Arc::clone(&self.shared),
            context: context.clone(),
            size_bytes: self.size_bytes,
            interval: self.interval,
            max_concurrency: self.max_concurrency,
            open: None,
            queue: VecDeque::new(),
            invocations: 0,
        }))
    }
}

/// Records waiting to be sent together.
struct Batch {
    /// The oldest epoch of its records.
    epoch: u64,
    opened: Instant,
    /// Records, grouped as they arrived (each group shares an arrival time).
    inputs: Vec<RecordBatch>,
    data_bytes: usize,
    request_bytes: usize,
    records: usize,
}

impl Batch {
    fn new(epoch: u64, now: Instant) -> Self {
        Batch { epoch, opened: now, inputs: Vec::new(), data_bytes: 0, request_bytes: 200, records: 0 }
    }
}

/// What one record became.
#[derive(Debug)]
enum Answer {
    Ok(Vec<u8>, Option<PartitionKeys>),
    Dropped,
    Failed(String),
}

/// Why a whole batch failed.
#[derive(Debug, Clone)]
struct BatchFailure {
    code: &'static str,
    message: String,
    /// Invocations made.
    attempts: u32,
}

type Outcome = Result<Vec<Answer>, BatchFailure>;

/// A batch sent (or waiting to be), in input order.
struct Invocation {
    batch: Batch,
    state: InvocationState,
}

enum InvocationState {
    Waiting,
    Running(tokio::sync::oneshot::Receiver<Outcome>),
    Done(Outcome),
}

/// One worker's buffer and invocations.
struct LambdaWorker {
    invoker: Arc<Invoker>,
    context: TransformContext,
    size_bytes: usize,
    interval: Duration,
    max_concurrency: usize,
    open: Option<Batch>,
    queue: VecDeque<Invocation>,
    invocations: u64,
}

impl LambdaWorker {
    fn seal(&mut self) {
        if let Some(batch) = self.open.take().filter(|b| b.records > 0) {
            self.queue.push_back(Invocation { batch, state: InvocationState::Waiting });
        }
    }

    /// Starts waiting invocations while fewer than `max_concurrency` run.
    fn start(&mut self) {
        let mut running = self.queue.iter().filter(|i| matches!(i.state, InvocationState::Running(_))).count();
        for invocation in self.queue.iter_mut() {
            if running >= self.max_concurrency {
                break;
            }
            if !matches!(invocation.state, InvocationState::Waiting) {
                continue;
            }
            self.invocations += 1;
            let id = format!("{}-{}", self.context.worker, self.invocations);
            let body = event(&self.invoker, &id, &invocation.batch);
            let (tx, rx) = tokio::sync::oneshot::channel();
            let invoker = Arc::clone(&self.invoker);
            let metrics = Arc::clone(&self.context.metrics);
            let wake = Arc::clone(&self.context.wake);
            let records = invocation.batch.records;
            self.context.runtime.spawn(async move {
                let started = Instant::now();
                let outcome = invoker.invoke(body, &id, records, &metrics).await;
                metrics.invocation_duration.observe(started.elapsed());
                let _ = tx.send(outcome);
                wake();
            });
            invocation.state = InvocationState::Running(rx);
            running += 1;
        }
    }

    /// Sends on the answers of finished invocations at the front of the queue, in order.
    fn answer(&mut self, out: &mut TransformOutput) {
        for invocation in self.queue.iter_mut() {
            if let InvocationState::Running(rx) = &mut invocation.state {
                match rx.try_recv() {
                    Ok(outcome) => invocation.state = InvocationState::Done(outcome),
                    Err(tokio::sync::oneshot::error::TryRecvError::Empty) => {}
                    Err(tokio::sync::oneshot::error::TryRecvError::Closed) => {
                        invocation.state = InvocationState::Done(Err(BatchFailure {
                            code: "Lambda.ServiceException",
                            message: "the invocation was cancelled".into(),
                            attempts: 0,
                        }))
                    }
                }
            }
        }
        while self.queue.front().is_some_and(|i| matches!(i.state, InvocationState::Done(_))) {
            let Some(Invocation { batch, state: InvocationState::Done(outcome) }) = self.queue.pop_front() else {
                break;
            };
            self.emit(batch, outcome, out);
        }
    }

    fn emit(&self, batch: Batch, outcome: Outcome, out: &mut TransformOutput) {
        let arn = Some(Arc::clone(&self.invoker.lambda_arn));
        match outcome {
            Err(failure) => {
                let record_failure = RecordFailure {
                    code: failure.code.into(),
                    message: failure.message.into(),
                    attempts: failure.attempts,
                    lambda_arn: arn,
                };
                for input in batch.inputs {
                    let failures = vec![record_failure.clone(); input.len()];
                    out.give(
                        batch.epoch,
                        Records::Failed(FailedRecords {
                            output_type: ErrorOutputType::ProcessingFailed,
                            records: input,
                            failures,
                        }),
                    );
                }
            }
            Ok(answers) => {
                let mut answers = answers.into_iter();
                let (mut processed, mut processed_bytes) = (0u64, 0u64);
                for input in batch.inputs {
                    let mut delivered = RecordBatch::with_capacity(input.arrival_ms, input.byte_len());
                    let mut failed = FailedRecords::new(ErrorOutputType::ProcessingFailed, input.arrival_ms);
                    let mut dropped = 0;
                    for (index, record) in input.iter().enumerate() {
                        match answers.next() {
                            Some(Answer::Ok(data, keys)) => {
                                processed += 1;
                                processed_bytes += data.len() as u64;
                                delivered.push_carrying(&data, input.origin(index), keys.as_ref())
                            }
                            Some(Answer::Dropped) => dropped += 1,
                            Some(Answer::Failed(message)) => failed.push(
                                record,
                                RecordFailure {
                                    code: "Lambda.ProcessingFailed".into(),
                                    message: message.into(),
                                    attempts: 1,
                                    lambda_arn: arn.clone(),
                                },
                            ),
                            None => failed.push(
                                record,
                                RecordFailure {
                                    code: "Lambda.MissingRecordId".into(),
                                    message: "no answer for the record".into(),
                                    attempts: 1,
                                    lambda_arn: arn.clone(),
                                },
                            ),
                        }
                    }
                    out.dropped(dropped);
                    out.give(batch.epoch, Records::Deliver(delivered));
                    out.give(batch.epoch, Records::Failed(failed));
                }
                let metrics = &self.context.metrics;
                metrics.processed_records.fetch_add(processed, std::sync::atomic::Ordering::Relaxed);
                metrics.processed_bytes.fetch_add(processed_bytes, std::sync::atomic::Ordering::Relaxed);
            }
        }
    }
}

impl TransformWorker for LambdaWorker {
    fn push(&mut self, batch: RecordBatch, epoch: u64, _out: &mut TransformOutput) {
        let now = Instant::now();
        let source = batch.source_metadata();
        for (index, record) in batch.iter().enumerate() {
            let metadata = batch.record_metadata(index);
            let described = metadata.map_or(0, |m| m.len() + source.map_or(0, |s| s.record_member.len() + 6));
            let request_bytes =
                base64::encoded_len(record.len(), true).unwrap_or(usize::MAX) + RECORD_OVERHEAD + described;
            let full = self.open.as_ref().is_some_and(|b| {
                b.records > 0
                    && (b.data_bytes >= self.size_bytes || b.request_bytes + request_bytes > MAX_REQUEST_BYTES)
            });
            if full {
                self.seal();
            }
            let open = self.open.get_or_insert_with(|| Batch::new(epoch, now));
            open.epoch = open.epoch.min(epoch);
            // A group shares its arrival time and what its source says to the function.
            let event = source.map(|m| &m.event);
            if open
                .inputs
                .last()
                .is_none_or(|b| b.arrival_ms != batch.arrival_ms || b.source_metadata().map(|m| &m.event) != event)
            {
                let mut group = RecordBatch::with_capacity(batch.arrival_ms, 0);
                if let Some(source) = source {
                    group.describe_source(source.event.clone(), &source.record_member);
                    open.request_bytes += source.event.iter().map(|(k, v)| k.len() + v.len() + 6).sum::<usize>();
                }
                open.inputs.push(group);
            }
            if let Some(group) = open.inputs.last_mut() {
                group.push_carrying(record, batch.origin(index), None);
                group.set_record_metadata(group.len() - 1, metadata.map(str::to_string));
            }
            open.data_bytes += record.len();
            open.request_bytes += request_bytes;
            open.records += 1;
        }
        if self.open.as_ref().is_some_and(|b| b.data_bytes >= self.size_bytes) {
            self.seal();
        }
        self.start();
    }

    fn poll(&mut self, now: Instant, end_of_input: bool, out: &mut TransformOutput) -> Holding {
        if end_of_input || self.open.as_ref().is_some_and(|b| now.duration_since(b.opened) >= self.interval) {
            self.seal();
        }
        self.answer(out);
        self.start();
        let oldest_epoch = self.open.iter().map(|b| b.epoch).chain(self.queue.iter().map(|i| i.batch.epoch)).min();
        Holding { oldest_epoch, next_deadline: self.open.as_ref().map(|b| b.opened + self.interval) }
    }
}

/// The event sent to the function (Firehose's transformation event).
fn event(invoker: &Invoker, invocation_id: &str, batch: &Batch) -> Vec<u8> {
    let mut body = Vec::with_capacity(batch.request_bytes);
    body.extend_from_slice(b"{\"invocationId\":");
    let _ = serde_json::to_writer(&mut body, invocation_id);
    body.extend_from_slice(b",\"deliveryStreamArn\":");
    let _ = serde_json::to_writer(&mut body, &invoker.stream_arn);
    body.extend_from_slice(b",\"region\":");
    let _ = serde_json::to_writer(&mut body, &invoker.region);
    // What the records' source adds to the event (a Kinesis stream's `sourceKinesisStreamArn`).
    if let Some(source) = batch.inputs.iter().find_map(RecordBatch::source_metadata) {
        for (name, value) in &source.event {
            body.push(b',');
            let _ = serde_json::to_writer(&mut body, name);
            body.push(b':');
            body.extend_from_slice(value.as_bytes());
        }
    }
    body.extend_from_slice(b",\"records\":[");
    let mut index = 0usize;
    for group in &batch.inputs {
        let member = group.source_metadata().map(|m| m.record_member.as_str());
        for (at, record) in group.iter().enumerate() {
            if index > 0 {
                body.push(b',');
            }
            body.extend_from_slice(
                format!("{{\"recordId\":\"{index}\",\"approximateArrivalTimestamp\":{},\"data\":\"", group.arrival_ms)
                    .as_bytes(),
            );
            let start = body.len();
            body.resize(start + base64::encoded_len(record.len(), true).unwrap_or(0), 0);
            let _ = base64::engine::general_purpose::STANDARD.encode_slice(record, &mut body[start..]);
            body.push(b'"');
            // What the source says of the record (a Kinesis record's `kinesisRecordMetadata`).
            if let (Some(member), Some(value)) = (member, group.record_metadata(at)) {
                body.push(b',');
                let _ = serde_json::to_writer(&mut body, member);
                body.push(b':');
                body.extend_from_slice(value.as_bytes());
            }
            body.push(b'}');
            index += 1;
        }
    }
    body.extend_from_slice(b"]}");
    body
}

/// Whether another attempt may succeed.
enum Attempt {
    Retry(BatchFailure),
    Fail(BatchFailure),
}

impl Invoker {
    /// The start-up check of a `function`: Lambda's `GetFunctionConfiguration`, which Firehose's
    /// role needs too (`lambda:GetFunctionConfiguration`). A function Lambda does not know
    /// (`ResourceNotFoundException`) stops the run: every invocation would fail and every record
    /// go to the error output. Anything else (no permission to read the configuration, no answer)
    /// is only warned about: invoking may still work.
    async fn check_function(&self, credentials: &AwsCredentials) -> Result<(), TransformError> {
        let Target::Function { check_url, check_signed_path, region, .. } = &self.target else { return Ok(()) };
        let warn = |why: String| {
            tracing::warn!(function = %self.lambda_arn, "cannot check the function at start ({why}); invocations will be tried anyway");
            Ok(())
        };
        let credentials = match credentials.current().await {
            Ok(credentials) => credentials,
            Err(why) => return warn(why),
        };
        let headers = match credentials.sign_request(
            "GET",
            check_url,
            check_signed_path,
            (region, "lambda"),
            http::HeaderMap::new(),
            b"",
        ) {
            Ok(headers) => headers,
            Err(e) => return warn(e.to_string()),
        };
        let response = match self.client.current().get(check_url.clone()).headers(headers).send().await {
            Ok(response) => response,
            Err(e) => return warn(crate::tls::send_failure(&e)),
        };
        let (status, headers) = (response.status(), response.headers().clone());
        let body = response.bytes().await.unwrap_or_default();
        let answer = crate::aws_error::ErrorAnswer::read(&headers, &body, "__type", "Message");
        match (status.as_u16(), answer.kind.as_deref()) {
            (200, _) => Ok(()),
            // Only Lambda's own answer: an emulator without this call (the runtime interface
            // emulator answers only invocations) is no reason to stop.
            (404, Some("ResourceNotFoundException")) => Err(TransformError::refused(
                "Lambda.ResourceNotFound",
                format!(
                    "the Lambda function {} does not exist ({status}{}); check `function` (its name, account and region)",
                    self.lambda_arn,
                    answer.suffix()
                ),
            )),
            _ => warn(format!("GetFunctionConfiguration answered {status}{}", answer.suffix())),
        }
    }

    /// Invokes the function with `body` (retrying what may succeed later) and reads its answers.
    async fn invoke(
        &self,
        body: Vec<u8>,
        invocation_id: &str,
        records: usize,
        metrics: &sluice_engine::metrics::TransformMetrics,
    ) -> Outcome {
        let body = bytes::Bytes::from(body);
        let mut attempts = 0;
        loop {
            attempts += 1;
            metrics.invocations.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let result = self.attempt(body.clone(), records).await;
            let failure = match result {
                Ok(answers) => {
                    metrics.invocations_succeeded.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    return Ok(answers);
                }
                Err(Attempt::Fail(mut failure)) => {
                    failure.attempts = attempts;
                    return Err(failure);
                }
                Err(Attempt::Retry(failure)) => failure,
            };
            if attempts > self.retries {
                tracing::warn!(invocation = invocation_id, code = failure.code, error = %failure.message, attempts, "function invocation failed; its records go to the error output");
                return Err(BatchFailure { attempts, ..failure });
            }
            let backoff =
                Duration::from_millis(500).saturating_mul(1 << (attempts - 1).min(6)).min(Duration::from_secs(20));
            let jitter = rand::random_range(0.75..1.25);
            tokio::time::sleep(backoff.mul_f64(jitter)).await;
        }
    }

    async fn attempt(&self, body: bytes::Bytes, records: usize) -> Result<Vec<Answer>, Attempt> {
        let retry = |code: &'static str, message: String| Attempt::Retry(BatchFailure { code, message, attempts: 0 });
        let fail = |code: &'static str, message: String| Attempt::Fail(BatchFailure { code, message, attempts: 0 });
        let request = match &self.target {
            Target::Url(url) => self.client.current().post(url.clone()).header("content-type", "application/json"),
            Target::Function { url, signed_path, region, .. } => {
                let Some(credentials) = self.credentials.get() else {
                    return Err(fail(NO_CREDENTIALS, "no AWS credentials".into()));
                };
                // Temporary credentials being refreshed may be back at the next attempt.
                let credentials = credentials.current().await.map_err(|e| retry(NO_CREDENTIALS, e))?;
                let mut headers = http::HeaderMap::new();
                headers.insert("content-type", http::HeaderValue::from_static("application/json"));
                let headers = credentials
                    .sign_request("POST", url, signed_path, (region, "lambda"), headers, &body)
                    .map_err(|e| fail("Lambda.InvalidRequest", e.to_string()))?;
                self.client.current().post(url.clone()).headers(headers)
            }
        };
        let response = request.body(body).send().await.map_err(|e| {
            if e.is_timeout() {
                retry("Lambda.FunctionTimedOut", format!("no answer in time: {}", sluice_engine::redact::error(&e)))
            } else {
                retry("Lambda.ServiceException", format!("cannot reach the function: {}", crate::tls::send_failure(&e)))
            }
        })?;
        let status = response.status();
        let function_error =
            response.headers().get("x-amz-function-error").map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
        let mut response = response;
        let mut answer = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(|e| {
            if e.is_timeout() {
                retry("Lambda.FunctionTimedOut", format!("no whole answer in time: {e}"))
            } else {
                retry("Lambda.ServiceException", format!("the answer was cut: {e}"))
            }
        })? {
            if answer.len() + chunk.len() > MAX_RESPONSE_BYTES {
                return Err(fail("Lambda.JsonProcessingException", "the response is larger than 6 MB".into()));
            }
            answer.extend_from_slice(&chunk);
        }
        let said = || String::from_utf8_lossy(&answer[..answer.len().min(512)]).into_owned();
        match status.as_u16() {
            200 if function_error.is_some() => {
                return Err(retry(
                    "Lambda.FunctionError",
                    format!("the function failed ({}): {}", function_error.unwrap_or_default(), said()),
                ));
            }
            200 => {}
            429 => return Err(retry("Lambda.InvokeLimitExceeded", format!("HTTP 429: {}", said()))),
            s if s >= 500 => return Err(retry("Lambda.ServiceException", format!("HTTP {s}: {}", said()))),
            401 | 403 => return Err(fail("Lambda.InvokeAccessDenied", format!("HTTP {status}: {}", said()))),
            404 => return Err(fail("Lambda.ResourceNotFound", format!("HTTP {status}: {}", said()))),
            s => return Err(fail("Lambda.InvalidRequest", format!("HTTP {s}: {}", said()))),
        }
        read_answers(&answer, records).map_err(|(code, message)| fail(code, message))
    }
}

#[derive(Deserialize)]
struct Response {
    records: Vec<ResponseRecord>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ResponseRecord {
    record_id: String,
    result: String,
    #[serde(default)]
    data: Option<String>,
    #[serde(default)]
    metadata: Option<Metadata>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Metadata {
    #[serde(default)]
    partition_keys: Option<std::collections::BTreeMap<String, serde_json::Value>>,
}

/// The answers of a response, by record index; or why the response breaks the contract.
fn read_answers(body: &[u8], records: usize) -> Result<Vec<Answer>, (&'static str, String)> {
    let response: Response = serde_json::from_slice(body).map_err(|e| {
        ("Lambda.JsonProcessingException", format!("the response is not the transformation contract's JSON: {e}"))
    })?;
    let mut answers: Vec<Option<Answer>> = (0..records).map(|_| None).collect();
    for r in response.records {
        let Some(slot) = r.record_id.parse::<usize>().ok().and_then(|i| answers.get_mut(i)) else {
            return Err((
                "Lambda.JsonProcessingException",
                format!("the response has recordId `{}`, which was not sent", r.record_id),
            ));
        };
        if slot.is_some() {
            return Err((
                "Lambda.DuplicatedRecordId",
                format!("recordId `{}` is answered more than once", r.record_id),
            ));
        }
        *slot = Some(match r.result.as_str() {
            "Ok" => {
                let data = r.data.unwrap_or_default();
                match crate::record_data::decode(data.as_bytes()) {
                    Ok(data) => {
                        let keys = r.metadata.and_then(|m| m.partition_keys).filter(|k| !k.is_empty()).map(|k| {
                            let pairs: Vec<(String, String)> = k
                                .into_iter()
                                .map(|(k, v)| (k, v.as_str().map_or_else(|| v.to_string(), str::to_string)))
                                .collect();
                            PartitionKeys::from(pairs)
                        });
                        Answer::Ok(data, keys)
                    }
                    Err(e) => Answer::Failed(format!("the function returned data that is not base64: {e}")),
                }
            }
            "Dropped" => Answer::Dropped,
            "ProcessingFailed" => Answer::Failed("the function returned ProcessingFailed for the record".into()),
            other => Answer::Failed(format!("the function returned an unknown result `{other}`")),
        });
    }
    if let Some(missing) = answers.iter().position(Option::is_none) {
        return Err(("Lambda.MissingRecordId", format!("the response has no answer for recordId `{missing}`")));
    }
    Ok(answers.into_iter().flatten().collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_contract_and_refuses_what_breaks_it() {
        let ok = br#"{"records":[{"recordId":"1","result":"Dropped"},{"recordId":"0","result":"Ok","data":"aGk=","metadata":{"partitionKeys":{"a":"x","n":3}}},{"recordId":"2","result":"ProcessingFailed"}]}"#;
        let answers = read_answers(ok, 3).unwrap_or_else(|e| panic!("{e:?}"));
        match &answers[0] {
            Answer::Ok(data, Some(keys)) => {
                assert_eq!(data, b"hi");
                assert_eq!(keys.as_ref(), &[("a".to_string(), "x".to_string()), ("n".to_string(), "3".to_string())]);
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(answers[1], Answer::Dropped));
        assert!(matches!(answers[2], Answer::Failed(_)));
        let code = |body: &[u8]| read_answers(body, 2).err().map(|e| e.0);
        assert_eq!(code(br#"{"records":[{"recordId":"0","result":"Ok","data":""}]}"#), Some("Lambda.MissingRecordId"));
        assert_eq!(
            code(br#"{"records":[{"recordId":"0","result":"Dropped"},{"recordId":"0","result":"Dropped"}]}"#),
            Some("Lambda.DuplicatedRecordId")
        );
        assert_eq!(code(b"not json"), Some("Lambda.JsonProcessingException"));
    }

    #[test]
    fn function_arns() {
        assert_eq!(
            parse_function_arn("arn:aws:lambda:us-east-1:123456789012:function:mask"),
            Some(("us-east-1".into(), "mask".into()))
        );
        assert!(parse_function_arn("arn:aws:lambda:us-east-1:123456789012:function:mask:live").is_some());
        assert!(parse_function_arn("arn:aws:s3:::bucket").is_none());
        assert!(parse_function_arn("mask").is_none());
        assert_eq!(uri_encode("a:b"), "a%3Ab");
    }
}

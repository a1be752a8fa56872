//! Listeners that take records from producers: the Firehose API ([`firehose`]), the sources that take
//! records from POST bodies ([`post`]: the plain NDJSON endpoint `type = "http"` and Firehose's HTTP
//! endpoint deliveries `type = "http_endpoint"`), and the admin endpoint (`/metrics`, `/health`, the
//! dashboard).
//!
//! A listener hands accepted records to an [`queue::IngestQueue`] per stream; each timely worker's
//! [`QueueReader`] takes them into the dataflow. Guarantees: a listener is bound before the run
//! starts (a taken address fails the run at once); on stop it refuses new requests, finishes the
//! ones in progress (their records are acknowledged and queued), and only then closes its queues,
//! so the readers drain every acknowledged record before the run ends.

pub mod admin;
pub mod bound;
pub mod certificate;
pub mod dashboard;
pub mod durable;
pub mod firehose;
pub mod listener;
pub mod post;
pub mod queue;
pub mod sigv4;
pub mod stream;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use sluice_engine::config::{ConnectorConfig, Diagnostic, Durability, LogEncryption, Retention};
use sluice_engine::contract::{OnStop, ReadStatus, SourceError, SourceReader};
use sluice_engine::record::RecordBatch;

pub use bound::bind;
pub use certificate::ListenerTls;
pub use listener::{Caller, ListenerLimits, Wire, serve};
use queue::{IngestQueue, Popped};

/// How soon an idle reader looks again.
const IDLE_POLL: Duration = Duration::from_millis(5);

/// `tls = { cert = "...", key = "...", client_ca = "..." }`: PEM files.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TlsFiles {
    /// Certificate chain (PEM).
    pub cert: PathBuf,
    /// Private key (PEM).
    pub key: PathBuf,
    /// When set, the CA certificates (PEM) one of which must sign the certificate every client
    /// presents (mutual TLS): a client without one is refused in the handshake.
    #[serde(default)]
    pub client_ca: Option<PathBuf>,
}

impl TlsFiles {
    /// The same files, relative paths taken from `base`.
    pub fn relative_to(&self, base: &std::path::Path) -> TlsFiles {
        TlsFiles {
            cert: base.join(&self.cert),
            key: base.join(&self.key),
            client_ca: self.client_ca.as_ref().map(|ca| base.join(ca)),
        }
    }

    /// Whether clients must present a certificate (`client_ca`): authentication, as a token is.
    pub fn verifies_clients(&self) -> bool {
        self.client_ca.is_some()
    }

    /// The files a listener serving them looks at for changes: the pair, and the client CAs.
    pub fn watched(&self) -> Vec<PathBuf> {
        [self.cert.clone(), self.key.clone()].into_iter().chain(self.client_ca.clone()).collect()
    }

    /// A source's listener's TLS with these files: its certificate shown in the families of the
    /// source's pipeline, a refused renewal written to its error log as the source's.
    pub fn served_for(&self, source: &sluice_engine::contract::PrepareContext) -> ListenerTls {
        ListenerTls {
            files: self.clone(),
            metrics: certificate::ShownIn::Fixed(vec![Arc::clone(&source.metrics)]),
            reported_by: Some(source.meter.clone()),
            alpn: vec![b"http/1.1".to_vec()],
        }
    }

    /// A listener's TLS with these files, its certificate shown in the families of the pipelines
    /// `served` names at each moment (`sluice serve`).
    pub fn served_for_each(&self, served: admin::Served) -> ListenerTls {
        ListenerTls {
            files: self.clone(),
            metrics: certificate::ShownIn::Served(served),
            reported_by: None,
            alpn: vec![b"http/1.1".to_vec()],
        }
    }

    /// The files relative to `base`, checked when the pipeline is configured (readable PEM, the
    /// key the certificate's: [`crate::tls::key_pair`]; client CAs that are certificates a
    /// verifier takes), so `sluice validate` says what is wrong with them, at `at` (the `tls` key),
    /// rather than the listener when it starts.
    pub fn checked(
        &self,
        base: &std::path::Path,
        at: &sluice_engine::config::KeyAt,
    ) -> Result<TlsFiles, sluice_engine::config::Problems> {
        let said = |key: &str, why: String| {
            Diagnostic::new(at.span.clone(), format!("{}.{key}` {why}", at.label.trim_end_matches('`')))
        };
        let mut problems = sluice_engine::config::Problems::default();
        if let Err((on_key, why)) = crate::tls::key_pair(base, &self.cert, &self.key) {
            problems.push(said(if on_key { "key" } else { "cert" }, why).with_hint(format!(
                "`cert`: the server's certificate chain, `key`: its private key, both PEM; {}",
                crate::tls::RELATIVE_PATHS
            )));
        }
        let files = self.relative_to(base);
        if let (Some(written), Some(ca)) = (&self.client_ca, &files.client_ca)
            && let Err(why) = certificate::client_verifier(ca)
        {
            problems.push(said("client_ca", format!("= \"{}\" {why}", written.display())).with_hint(format!(
                "`client_ca`: the CA certificates (PEM) that sign the certificates clients present; {}",
                crate::tls::RELATIVE_PATHS
            )));
        }
        problems.finish(Some(files))
    }
}

/// `max_inflight_mb` of an API source (default 256), at least `min_mb`, as bytes.
pub fn inflight_limit(
    configured: Option<u64>,
    min_mb: u64,
    why_min: &str,
    at: &sluice_engine::config::KeyAt,
) -> Result<usize, sluice_engine::config::Diagnostic> {
    let why = format!("MB of records taken and not yet delivered, default 256, at least {min_mb} ({why_min})");
    at.within(configured, 256, min_mb..=65_536, &why).map(|mb| (mb << 20) as usize)
}

/// An API source's write-ahead log, opened once (by the run's `prepare`, or earlier by a shared
/// listener), its replay queued as it opens.
#[derive(Debug)]
pub struct LogSlot {
    dir: PathBuf,
    mode: Durability,
    retention: Retention,
    encryption: Option<LogEncryption>,
    pipeline: String,
    opened: std::sync::Mutex<Option<Option<Arc<durable::DurableLog>>>>,
}

impl LogSlot {
    /// The log of the source `config` configures, in `<data_dir>/<source name>`, with the
    /// pipeline's durability, retention and encryption (nothing is opened yet).
    pub fn for_source(config: &ConnectorConfig) -> Self {
        LogSlot {
            dir: config.data_dir.join(&config.name),
            mode: config.durability,
            retention: config.retention,
            encryption: config.encryption.clone(),
            pipeline: config.pipeline.clone(),
            opened: std::sync::Mutex::new(None),
        }
    }

    /// How the log is encrypted at rest (`None`: plain, or no log).
    pub fn encryption(&self) -> Option<LogEncryption> {
        self.encryption.clone().filter(|_| self.mode != Durability::None)
    }

    /// For an encrypted log, its key asked for as [`Self::open`] asks for it (a key file read, or
    /// KMS's GenerateDataKey), nothing written: `sluice validate --check` ([`Source::check`]).
    ///
    /// [`Source::check`]: sluice_engine::contract::Source::check
    pub fn check(&self) -> Option<futures::future::BoxFuture<'static, Result<(), SourceError>>> {
        let (encryption, pipeline, dir) = (self.encryption()?, self.pipeline.clone(), self.dir.clone());
        Some(Box::pin(async move {
            let failed = |e: String| SourceError::Setup(format!("write-ahead log in {}: {e}", dir.display()));
            let asked =
                tokio::task::spawn_blocking(move || match crate::kms::log_keys(Some(&encryption), &pipeline)? {
                    Some(keys) => keys.current().map(|_| ()),
                    None => Ok(()),
                });
            asked.await.map_err(|e| failed(e.to_string()))?.map_err(failed)
        }))
    }

    /// [`Source::check`] of a source listening on `listen` with this log: the address taken and
    /// let go at once ([`listener::check_listen`]), then the log's key ([`Self::check`]).
    ///
    /// [`Source::check`]: sluice_engine::contract::Source::check
    pub fn check_with_listener(
        &self,
        listen: std::net::SocketAddr,
    ) -> Option<futures::future::BoxFuture<'static, Result<(), SourceError>>> {
        let log = self.check();
        Some(Box::pin(async move {
            listener::check_listen(listen)?;
            match log {
                Some(log) => log.await,
                None => Ok(()),
            }
        }))
    }

    /// Opens the log (once) and starts queueing into `queue` what it replays: batches acknowledged
    /// before a restart and not delivered, one at a time as the queue has room (a thread of its
    /// own; new requests are taken meanwhile). `None` with `durability = "none"`. What recovery
    /// found is counted into `metrics`.
    pub fn open(
        &self,
        queue: &Arc<IngestQueue>,
        metrics: &sluice_engine::metrics::PipelineMetrics,
    ) -> Result<Option<Arc<durable::DurableLog>>, SourceError> {
        let mut opened = self.opened.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(log) = opened.as_ref() {
            return Ok(log.clone());
        }
        let log = if self.mode == Durability::None {
            None
        } else {
            let failed = |e: String| SourceError::Setup(format!("write-ahead log in {}: {e}", self.dir.display()));
            let keys = crate::kms::log_keys(self.encryption.as_ref(), &self.pipeline).map_err(failed)?;
            let (log, replay) = durable::DurableLog::open(&self.dir, self.mode, self.retention, keys, metrics)
                .map_err(|e| failed(e.to_string()))?;
            if !replay.is_empty() {
                tracing::info!(batches = replay.len(), dir = %self.dir.display(), "replaying acknowledged records not yet delivered");
                let queue = Arc::clone(queue);
                std::thread::Builder::new()
                    .name("sluice-replay".into())
                    .spawn(move || replay_into(&queue, replay))
                    .map_err(|e| SourceError::Setup(format!("cannot start the log replay: {e}")))?;
            }
            Some(log)
        };
        *opened = Some(log.clone());
        Ok(log)
    }

    /// `<data_dir>/<source name>.<suffix>`: where the source keeps state beside its log that is
    /// only as durable as its records (`None` with `durability = "none"`, when nothing is).
    pub fn state_file(&self, suffix: &str) -> Option<PathBuf> {
        (self.mode != Durability::None).then(|| {
            let mut name = self.dir.clone().into_os_string();
            name.push(".");
            name.push(suffix);
            PathBuf::from(name)
        })
    }

    /// The log, once opened.
    pub fn get(&self) -> Option<Arc<durable::DurableLog>> {
        self.opened.lock().ok().and_then(|o| o.clone()).flatten()
    }
}

/// Queues replayed entries as room allows. An entry not queued (the run stopped first) stays in
/// the log for the next start.
fn replay_into(queue: &IngestQueue, replay: durable::Replay) {
    for entry in replay {
        let batch = match entry.read().map(|payload| RecordBatch::from_bytes(&payload)) {
            Ok(Some(batch)) => batch,
            Ok(None) => {
                tracing::error!(seq = entry.seq, "a log entry is not a record batch; skipped");
                continue;
            }
            Err(e) => {
                tracing::error!(seq = entry.seq, error = %e, "cannot read a log entry; the rest waits for the next start");
                return;
            }
        };
        loop {
            match queue.reserve(batch.byte_len()) {
                Ok(reservation) => {
                    if queue.push_reserved(reservation, batch, Some(entry.seq)).is_err() {
                        return;
                    }
                    break;
                }
                // A replayed batch larger than the whole limit goes in once the queue is empty.
                Err(queue::Refused::Full) if queue.queued_bytes() == 0 => {
                    queue.push_replayed(batch, entry.seq);
                    break;
                }
                Err(queue::Refused::Full) => std::thread::sleep(IDLE_POLL),
                Err(queue::Refused::Closed) => return,
            }
        }
    }
}

/// Why accepted records could not be taken.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rejected {
    /// Too much is in flight: throttle.
    Full,
    /// The run is stopping.
    Closed,
    /// The write-ahead log failed (nothing was acknowledged).
    Log(String),
}

/// Takes `batch` for a pipeline: room in `queue` first, then the log (when there is one; this waits
/// for the durability the pipeline asks for), then the queue. Returns only when the records may be
/// acknowledged, or refuses them whole.
pub fn accept(queue: &IngestQueue, log: Option<&Arc<durable::DurableLog>>, batch: RecordBatch) -> Result<(), Rejected> {
    let reservation = queue.reserve(batch.byte_len()).map_err(|r| match r {
        queue::Refused::Full => Rejected::Full,
        queue::Refused::Closed => Rejected::Closed,
    })?;
    commit_reserved(queue, log, reservation, batch)
}

/// The rest of [`accept`] once `reservation` (room for `batch` in `queue`) is held: the log, then
/// the queue. A source that waits for room rather than refusing (the `fluent` source holds its
/// connection back) reserves first, then calls this.
pub fn commit_reserved(
    queue: &IngestQueue,
    log: Option<&Arc<durable::DurableLog>>,
    reservation: queue::Reservation,
    batch: RecordBatch,
) -> Result<(), Rejected> {
    let seq = match log.map(|log| log.commit(&batch)) {
        Some(Ok(seq)) => Some(seq),
        Some(Err(e)) => {
            queue.cancel(reservation);
            tracing::error!(error = %e, "cannot log accepted records; refusing them");
            return Err(Rejected::Log(e.to_string()));
        }
        None => None,
    };
    queue.push_reserved(reservation, batch, seq).map_err(|_| {
        if let (Some(log), Some(seq)) = (log, seq) {
            log.abandon(seq);
        }
        Rejected::Closed
    })
}

/// One worker's reader of a listener's queue.
#[derive(Debug)]
pub struct QueueReader {
    queue: Arc<IngestQueue>,
    /// The source's log: told in which epoch each logged batch entered the dataflow.
    log: Option<Arc<durable::DurableLog>>,
    epoch: u64,
}

impl QueueReader {
    /// A reader taking from `queue`, reporting logged batches to `log`.
    pub fn new(queue: Arc<IngestQueue>, log: Option<Arc<durable::DurableLog>>) -> Self {
        QueueReader { queue, log, epoch: 0 }
    }
}

impl SourceReader for QueueReader {
    fn read(&mut self, batch: &mut RecordBatch, _max_bytes: usize) -> Result<ReadStatus, SourceError> {
        match self.queue.pop() {
            Popped::Batch(mut accepted, seq) => {
                if let (Some(log), Some(seq)) = (&self.log, seq) {
                    log.read_at(seq, self.epoch);
                    log.mark_origins(&mut accepted, seq);
                }
                if batch.is_empty() {
                    // One request's records, as the request brought them (no copy).
                    std::mem::swap(batch, &mut accepted);
                } else {
                    (0..accepted.len())
                        .zip(accepted.iter())
                        .for_each(|(i, r)| batch.push_carrying(r, accepted.origin(i), None));
                }
                Ok(ReadStatus::Ready)
            }
            Popped::Empty => Ok(ReadStatus::Pending(IDLE_POLL)),
            Popped::Closed => Ok(ReadStatus::Finished),
        }
    }

    fn set_epoch(&mut self, epoch: u64) {
        self.epoch = epoch;
    }

    fn on_stop(&mut self) -> OnStop {
        OnStop::Drain
    }
}

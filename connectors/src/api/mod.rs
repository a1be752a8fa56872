//! Listeners that take records from producers: the Firehose API ([`firehose`]), the plain NDJSON
//! HTTP endpoint (`type = "http"`), and the admin endpoint (`/metrics`, `/health`).
//!
//! A listener hands accepted records to an [`queue::IngestQueue`] per stream; each timely worker's
//! [`QueueReader`] takes them into the dataflow. Guarantees: a listener is bound before the run
//! starts (a taken address fails the run at once); on stop it refuses new requests, finishes the
//! ones in progress (their records are acknowledged and queued), and only then closes its queues,
//! so the readers drain every acknowledged record before the run ends.

pub mod admin;
pub mod firehose;
pub mod queue;
pub mod sigv4;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use sluice_engine::record::RecordBatch;
use sluice_engine::traits::{OnStop, ReadStatus, SourceError, SourceReader, StopSignal};

use queue::{IngestQueue, Popped};

/// How long a stopping listener waits for requests in progress.
const GRACE: Duration = Duration::from_secs(30);
/// How soon an idle reader looks again.
const IDLE_POLL: Duration = Duration::from_millis(5);

/// `tls = { cert = "...", key = "..." }`: PEM files.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TlsFiles {
    /// Certificate chain (PEM).
    pub cert: PathBuf,
    /// Private key (PEM).
    pub key: PathBuf,
}

impl TlsFiles {
    /// The same files, relative paths taken from `base`.
    pub fn relative_to(&self, base: &std::path::Path) -> TlsFiles {
        TlsFiles { cert: base.join(&self.cert), key: base.join(&self.key) }
    }
}

/// Binds `address` now (so a taken address is an error before the run starts).
pub fn bind(address: SocketAddr) -> Result<std::net::TcpListener, SourceError> {
    let listener = std::net::TcpListener::bind(address)
        .map_err(|source| SourceError::Io { context: format!("cannot listen on {address}"), source })?;
    listener
        .set_nonblocking(true)
        .map_err(|source| SourceError::Io { context: format!("cannot listen on {address}"), source })?;
    Ok(listener)
}

/// Serves `router` on `listener` (with TLS when `tls` is set) until `stop`, then lets requests in
/// progress finish and closes `queues`. Runs on `runtime`; returns at once.
pub fn serve(
    runtime: &tokio::runtime::Handle,
    listener: std::net::TcpListener,
    router: axum::Router,
    tls: Option<TlsFiles>,
    stop: StopSignal,
    queues: Vec<Arc<IngestQueue>>,
) -> Result<(), SourceError> {
    let address = listener.local_addr().map_err(|source| SourceError::Io { context: "listener".into(), source })?;
    let handle = axum_server::Handle::new();
    let shutdown = handle.clone();
    runtime.spawn(async move {
        stop.stopped().await;
        shutdown.graceful_shutdown(Some(GRACE));
    });
    let tls_config = match &tls {
        Some(files) => Some(
            runtime.block_on(axum_server::tls_rustls::RustlsConfig::from_pem_file(&files.cert, &files.key)).map_err(
                |source| SourceError::Io {
                    context: format!(
                        "cannot load TLS certificate {} and key {}",
                        files.cert.display(),
                        files.key.display()
                    ),
                    source,
                },
            )?,
        ),
        None => None,
    };
    runtime.spawn(async move {
        let service = router.into_make_service();
        let served = match tls_config {
            Some(config) => match axum_server::from_tcp_rustls(listener, config) {
                Ok(server) => server.handle(handle).serve(service).await,
                Err(e) => Err(e),
            },
            None => match axum_server::from_tcp(listener) {
                Ok(server) => server.handle(handle).serve(service).await,
                Err(e) => Err(e),
            },
        };
        if let Err(e) = served {
            tracing::error!(%address, error = %e, "listener failed");
        }
        // Every request that was acknowledged is queued by now: let the readers drain and finish.
        for queue in &queues {
            queue.close();
        }
    });
    tracing::info!(%address, tls = tls.is_some(), "listening");
    Ok(())
}

/// One worker's reader of a listener's queue.
#[derive(Debug)]
pub struct QueueReader {
    queue: Arc<IngestQueue>,
}

impl QueueReader {
    /// A reader taking from `queue`.
    pub fn new(queue: Arc<IngestQueue>) -> Self {
        QueueReader { queue }
    }
}

impl SourceReader for QueueReader {
    fn read(&mut self, batch: &mut RecordBatch, _max_bytes: usize) -> Result<ReadStatus, SourceError> {
        match self.queue.pop() {
            Popped::Batch(mut accepted) => {
                if batch.is_empty() {
                    // One request's records, as the request brought them (no copy).
                    std::mem::swap(batch, &mut accepted);
                } else {
                    accepted.iter().for_each(|r| batch.push(r));
                }
                Ok(ReadStatus::Ready)
            }
            Popped::Empty => Ok(ReadStatus::Pending(IDLE_POLL)),
            Popped::Closed => Ok(ReadStatus::Finished),
        }
    }

    fn on_stop(&mut self) -> OnStop {
        OnStop::Drain
    }
}

//! What the sources that speak a protocol over plain TCP or TLS connections share (`fluent`,
//! `syslog`): the accept loop and the hand-over of a connection's records to the queue and the
//! write-ahead log.
//!
//! Guarantees: at most `max_connections` connections are served at once (one past the cap is
//! closed at once, before TLS, nothing read); a TLS handshake not finished within
//! [`TLS_HANDSHAKE`] ends the connection; a stop ends the accepting, then waits up to [`GRACE`]
//! for the connections being served to finish what they are taking, and only then returns, so
//! the caller closes its queue after every record it acknowledged is queued. [`take`] queues a
//! connection's records only once the queue has room (the connection is held back meanwhile, which
//! TCP passes on to the client) and logged as durably as the pipeline asks.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use sluice_engine::contract::StopSignal;
use sluice_engine::metrics::PipelineMetrics;
use sluice_engine::record::RecordBatch;
use tokio::io::{AsyncRead, AsyncWrite};

use super::bound::Bound;
use super::certificate::ClientCertificate;
use super::queue::{IngestQueue, Refused};
use super::{LogSlot, Rejected, commit_reserved};

/// How long a stopping source waits for its connections to finish what they are taking.
pub const GRACE: Duration = Duration::from_secs(30);
/// How long a TLS handshake may take.
pub const TLS_HANDSHAKE: Duration = Duration::from_secs(10);
/// How often a connection held back by a full queue looks for room.
const ROOM_POLL: Duration = Duration::from_millis(5);

/// A connection's bytes: plain TCP or TLS.
pub trait Connection: AsyncRead + AsyncWrite + Unpin + Send {}

impl<T: AsyncRead + AsyncWrite + Unpin + Send> Connection for T {}

/// A connection accepted and, with TLS, through its handshake.
pub struct Accepted {
    /// Its bytes.
    pub stream: Box<dyn Connection>,
    /// The client's address.
    pub peer: SocketAddr,
    /// The certificate its client presented (mutual TLS).
    pub certificate: Option<Arc<ClientCertificate>>,
}

/// Why an accepted connection never started: its TLS handshake failed or took too long.
#[derive(Debug)]
pub enum HandshakeFailed {
    /// It failed (the client's certificate refused, not TLS at all, …).
    Io(std::io::Error),
    /// It did not finish within [`TLS_HANDSHAKE`].
    TimedOut,
}

/// Accepts connections on `bound` until `stop` (through TLS when `tls` is set), each served by a
/// task running `serve` on it (or on why its handshake failed); then waits up to [`GRACE`] for
/// them to end. `what` names the source in log lines.
pub async fn serve_connections<F, Fut>(
    bound: Bound,
    tls: Option<axum_server::tls_rustls::RustlsConfig>,
    max_connections: usize,
    stop: StopSignal,
    what: &'static str,
    serve: F,
) where
    F: Fn(Result<Accepted, (SocketAddr, HandshakeFailed)>) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let Bound { socket, serving } = bound;
    let permits = Arc::new(tokio::sync::Semaphore::new(max_connections));
    let serve = Arc::new(serve);
    match tokio::net::TcpListener::from_std(socket) {
        Ok(listener) => loop {
            let (stream, peer) = tokio::select! {
                () = stop.stopped() => break,
                accepted = listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        // Out of file descriptors, say: wait, rather than spin.
                        tracing::warn!(error = %e, "{what}: cannot accept a connection");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
            };
            // Past the cap a connection is closed at once, nothing read.
            let Ok(permit) = Arc::clone(&permits).try_acquire_owned() else { continue };
            let _ = stream.set_nodelay(true);
            let (serve, tls) = (Arc::clone(&serve), tls.clone());
            tokio::spawn(async move {
                let accepted = match tls {
                    None => Ok(Accepted { stream: Box::new(stream), peer, certificate: None }),
                    Some(config) => {
                        let acceptor = tokio_rustls::TlsAcceptor::from(config.get_inner());
                        match tokio::time::timeout(TLS_HANDSHAKE, acceptor.accept(stream)).await {
                            Ok(Ok(stream)) => {
                                let certificate = ClientCertificate::of_connection(stream.get_ref().1);
                                Ok(Accepted { stream: Box::new(stream), peer, certificate })
                            }
                            Ok(Err(e)) => Err((peer, HandshakeFailed::Io(e))),
                            Err(_) => Err((peer, HandshakeFailed::TimedOut)),
                        }
                    }
                };
                serve(accepted).await;
                drop(permit);
            });
        },
        Err(e) => tracing::error!(error = %e, "{what}: cannot serve the listening socket"),
    }
    let all = u32::try_from(max_connections).unwrap_or(u32::MAX);
    let _ = tokio::time::timeout(GRACE, permits.acquire_many(all)).await;
    drop(serving);
}

/// The TLS a stream-protocol listener serves with `files`, if any (renewed in place as every
/// listener's is; no ALPN name is offered: these protocols have none).
pub fn serve_tls(
    files: Option<&super::TlsFiles>,
    ctx: &sluice_engine::contract::PrepareContext,
) -> Result<Option<axum_server::tls_rustls::RustlsConfig>, sluice_engine::contract::SourceError> {
    let Some(files) = files else { return Ok(None) };
    let tls = super::ListenerTls { alpn: Vec::new(), ..files.served_for(ctx) };
    super::certificate::serve_certificate(&ctx.runtime, tls, ctx.stop.clone()).map(Some).map_err(|why| {
        sluice_engine::contract::SourceError::Setup(format!(
            "cannot serve TLS certificate {}: {why}",
            files.cert.display()
        ))
    })
}

/// The keys every connection-serving source has, as its table wrote them.
#[derive(Debug)]
pub struct ConnectionKeys {
    /// `listen`.
    pub listen: Option<String>,
    /// `max_connections`.
    pub max_connections: Option<u64>,
    /// `idle_timeout_s`.
    pub idle_timeout_s: Option<u64>,
    /// `max_inflight_mb`.
    pub max_inflight_mb: Option<u64>,
    /// `tls`.
    pub tls: Option<super::TlsFiles>,
}

/// What differs between the connection-serving sources' common keys: defaults and the hints of
/// their ranges.
#[derive(Debug)]
pub struct ConnectionDefaults {
    /// `listen` when not set.
    pub listen: &'static str,
    /// `max_connections` when not set.
    pub max_connections: u64,
    /// What `max_connections` counts (its range's hint).
    pub connections_hint: &'static str,
    /// What `idle_timeout_s` is (its range's hint).
    pub idle_hint: &'static str,
    /// The least `max_inflight_mb`…
    pub least_inflight_mb: u64,
    /// …and why.
    pub inflight_hint: &'static str,
}

/// Where a source's common keys are written, read from its table before the table is taken.
#[derive(Debug)]
pub struct ConnectionPlaces {
    listen: std::ops::Range<usize>,
    connections: sluice_engine::config::KeyAt,
    idle: sluice_engine::config::KeyAt,
    inflight: sluice_engine::config::KeyAt,
    tls: sluice_engine::config::KeyAt,
    base_dir: std::path::PathBuf,
}

/// The common keys, checked.
#[derive(Debug)]
pub struct ConnectionSettings {
    /// Where it listens.
    pub listen: SocketAddr,
    /// Connections served at once.
    pub max_connections: usize,
    /// How long a connection may stay silent.
    pub idle_timeout: Duration,
    /// Bytes of records taken and not yet delivered.
    pub max_inflight: usize,
    /// Its certificate (and client CAs), checked.
    pub tls: Option<super::TlsFiles>,
}

impl ConnectionPlaces {
    /// The places of `config`'s common keys.
    pub fn of(config: &sluice_engine::config::ConnectorConfig) -> Self {
        let table = &config.table;
        ConnectionPlaces {
            listen: table.value_span("listen").unwrap_or(table.span.clone()),
            connections: table.key_at("max_connections"),
            idle: table.key_at("idle_timeout_s"),
            inflight: table.key_at("max_inflight_mb"),
            tls: table.key_at("tls"),
            base_dir: config.base_dir.clone(),
        }
    }

    /// Checks `keys` against `defaults`, every problem said in `problems`; `None` if any.
    pub fn check(
        &self,
        keys: ConnectionKeys,
        defaults: &ConnectionDefaults,
        problems: &mut sluice_engine::config::Problems,
    ) -> Option<ConnectionSettings> {
        let listen = problems.take(crate::sources::firehose::parse_listen(
            keys.listen.as_deref(),
            defaults.listen,
            self.listen.clone(),
        ));
        let connections = problems.take(self.connections.within(
            keys.max_connections,
            defaults.max_connections,
            1..=1_000_000,
            defaults.connections_hint,
        ));
        let idle = problems.take(self.idle.within(keys.idle_timeout_s, 300, 1..=86_400, defaults.idle_hint));
        let inflight = problems.take(super::inflight_limit(
            keys.max_inflight_mb,
            defaults.least_inflight_mb,
            defaults.inflight_hint,
            &self.inflight,
        ));
        let tls = problems.take(keys.tls.as_ref().map(|t| t.checked(&self.base_dir, &self.tls)).transpose());
        Some(ConnectionSettings {
            listen: listen?,
            max_connections: usize::try_from(connections?).unwrap_or(usize::MAX),
            idle_timeout: Duration::from_secs(idle?),
            max_inflight: inflight?,
            tls: tls?,
        })
    }
}

/// Why [`take`] did not take every batch.
#[derive(Debug)]
pub enum NotTaken {
    /// The run is stopping (or the queue closed).
    Stopping,
    /// The records could not be made durable.
    Log(String),
}

/// Queues `batches` once the queue has room, logged as the pipeline asks (on a blocking thread:
/// a group commit may wait for its fsync), counted as accepted in `metrics`; `Ok` once every one
/// is taken. Batches before a refused one stay taken.
pub async fn take(
    queue: &Arc<IngestQueue>,
    log: &LogSlot,
    metrics: Option<&Arc<PipelineMetrics>>,
    batches: Vec<RecordBatch>,
    stop: &StopSignal,
) -> Result<(), NotTaken> {
    for batch in batches {
        let (count, bytes) = (batch.len() as u64, batch.byte_len() as u64);
        let reservation = loop {
            match queue.reserve(batch.byte_len()) {
                Ok(reservation) => break reservation,
                Err(Refused::Full) if !stop.is_stopped() => tokio::time::sleep(ROOM_POLL).await,
                Err(_) => return Err(NotTaken::Stopping),
            }
        };
        let (queue, log) = (Arc::clone(queue), log.get());
        let committed =
            tokio::task::spawn_blocking(move || commit_reserved(&queue, log.as_ref(), reservation, batch)).await;
        match committed {
            Ok(Ok(())) => {}
            Ok(Err(Rejected::Log(why))) => return Err(NotTaken::Log(why)),
            Ok(Err(_)) => return Err(NotTaken::Stopping),
            Err(e) => return Err(NotTaken::Log(e.to_string())),
        }
        if let Some(metrics) = metrics {
            metrics.api.count_accepted(count, bytes);
        }
    }
    Ok(())
}

//! What every API listener (the Firehose API, the `http` source, `sluice serve`) does to stay
//! bounded whatever its clients do: a cap on concurrent connections, timeouts on reading request
//! headers, on reading a body and on idle keep-alive connections, and a per-listener budget for
//! the bytes of request bodies being read.
//!
//! Guarantees: a connection past `max_connections` is closed at once, before TLS or HTTP; a
//! connection must send a request's headers within `header_timeout` of its first byte (or of
//! being opened), must not sit idle between requests longer than `idle_timeout`, and must send a
//! body within `body_timeout` of the handler starting to read it, or it is closed; the bytes of
//! bodies being read never pass `max_body_buffer` (a request that would pass it is refused from its
//! declared length, before its body is read). HTTP/1.1 is served, or HTTP/2 only
//! ([`Wire::Http2`], for OTLP/gRPC), where the idle timeout alone applies.
//!
//! Each request carries who sent it ([`Caller`]): the peer's address and, with mutual TLS, the
//! certificate its client presented, which the handlers record in the audit trail.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum_server::accept::{Accept, DefaultAcceptor};
use futures::future::BoxFuture;
use http_body_util::BodyExt;
use sluice_engine::config::{Problems, Section};
use sluice_engine::contract::{SourceError, StopSignal};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::bound::Bound;
use super::certificate::{ClientCertificate, ListenerTls, serve_certificate};
use super::queue::IngestQueue;

/// How long a stopping listener waits for requests in progress.
const GRACE: Duration = Duration::from_secs(30);

/// What a listener's connections speak.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wire {
    /// HTTP/1.1 (every listener but OTLP/gRPC's): the header, body and idle timeouts.
    Http1,
    /// HTTP/2 only, cleartext with prior knowledge or TLS with ALPN `h2` (OTLP/gRPC): the idle
    /// timeout only, counted from the last byte read or written (its frames show no request
    /// boundaries a byte watcher could time).
    Http2,
}

/// What one listener allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListenerLimits {
    /// Concurrent connections (`max_connections`, default 4096).
    pub max_connections: usize,
    /// Bytes of request bodies being read at once (`max_body_buffer_mb`, default 256).
    pub max_body_buffer: usize,
    /// From a request's first byte (or the connection's opening) to the end of its headers
    /// (`header_timeout_s`, default 10).
    pub header_timeout: Duration,
    /// For a request's body, once the handler reads it (`body_timeout_s`, default 60).
    pub body_timeout: Duration,
    /// Between the end of a response and the next request (`idle_timeout_s`, default 60).
    pub idle_timeout: Duration,
}

impl Default for ListenerLimits {
    fn default() -> Self {
        ListenerLimits {
            max_connections: 4096,
            max_body_buffer: 256 << 20,
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(60),
            idle_timeout: Duration::from_secs(60),
        }
    }
}

/// The listener keys a source's table may hold.
pub const LIMIT_KEYS: &[&str] =
    &["max_connections", "max_body_buffer_mb", "header_timeout_s", "body_timeout_s", "idle_timeout_s"];

impl ListenerLimits {
    /// Takes the listener keys out of a source's table (the rest is the source's own); a bad value
    /// is a problem pointing at it (every one is added to `found`; then `None`). `min_body_mb` is
    /// the smallest body buffer that can hold one request of this listener.
    pub fn take_from(table: &mut Section, min_body_mb: u64, found: &mut Problems) -> Option<Self> {
        let mut problems = Vec::new();
        let mut limits = ListenerLimits::default();
        let connections =
            table.take_int_in("max_connections", 1..=1_000_000, "concurrent connections per listener", &mut problems);
        let hint = format!("MB of request bodies read at once, at least {min_body_mb} (one request)");
        let body = table.take_int_in("max_body_buffer_mb", min_body_mb as i64..=65_536, &hint, &mut problems);
        let seconds = "seconds, 1..=3600";
        let header = table.take_int_in("header_timeout_s", 1..=3600, seconds, &mut problems);
        let body_timeout = table.take_int_in("body_timeout_s", 1..=3600, seconds, &mut problems);
        let idle = table.take_int_in("idle_timeout_s", 1..=3600, seconds, &mut problems);
        if !problems.is_empty() {
            for problem in problems {
                found.push(problem);
            }
            return None;
        }
        let secs = |v: toml::Spanned<i64>| Duration::from_secs(v.into_inner() as u64);
        if let Some(n) = connections {
            limits.max_connections = n.into_inner() as usize;
        }
        if let Some(mb) = body {
            limits.max_body_buffer = (mb.into_inner() as usize) << 20;
        }
        limits.header_timeout = header.map_or(limits.header_timeout, secs);
        limits.body_timeout = body_timeout.map_or(limits.body_timeout, secs);
        limits.idle_timeout = idle.map_or(limits.idle_timeout, secs);
        Some(limits)
    }
}

/// Bytes of request bodies being read on one listener.
#[derive(Debug)]
pub struct BodyBudget {
    used: AtomicUsize,
    limit: usize,
}

/// Room taken in a [`BodyBudget`], given back when dropped.
#[derive(Debug)]
pub struct BodyRoom {
    budget: Arc<BodyBudget>,
    bytes: usize,
}

impl BodyRoom {
    /// The bytes it holds.
    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

impl Drop for BodyRoom {
    fn drop(&mut self) {
        self.budget.used.fetch_sub(self.bytes, Ordering::SeqCst);
    }
}

impl BodyBudget {
    /// A budget of `limit` bytes.
    pub fn new(limit: usize) -> Arc<Self> {
        Arc::new(BodyBudget { used: AtomicUsize::new(0), limit })
    }

    /// Takes room for a body of up to `bytes`, or `None` when that would pass the limit.
    pub fn take(self: &Arc<Self>, bytes: usize) -> Option<BodyRoom> {
        let mut used = self.used.load(Ordering::SeqCst);
        loop {
            if used + bytes > self.limit {
                return None;
            }
            match self.used.compare_exchange(used, used + bytes, Ordering::SeqCst, Ordering::SeqCst) {
                Ok(_) => return Some(BodyRoom { budget: Arc::clone(self), bytes }),
                Err(now) => used = now,
            }
        }
    }

    /// Bytes taken now.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::SeqCst)
    }
}

/// Why a body could not be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BodyError {
    /// Its declared length, or the bytes that arrived, pass the request's limit.
    #[error("the body is larger than {0} bytes")]
    TooLarge(usize),
    /// Reading it would pass the listener's `max_body_buffer_mb`.
    #[error("too many request bodies are being read; retry later")]
    Busy,
    /// It did not arrive within `body_timeout_s`.
    #[error("the body did not arrive within {0} s")]
    TimedOut(u64),
    /// The connection failed while it was read.
    #[error("the body could not be read: {0}")]
    Broken(String),
}

/// Reads a request body of at most `max` bytes within `limits.body_timeout`, holding room in
/// `budget` for it: its declared length when there is one (so an oversize or unaffordable body
/// is refused before a byte of it is read), else `max`. The room stays taken while the returned
/// [`BodyRoom`] lives.
pub async fn read_body(
    body: Body,
    declared: Option<usize>,
    max: usize,
    budget: &Arc<BodyBudget>,
    timeout: Duration,
) -> Result<(Bytes, BodyRoom), BodyError> {
    if let Some(declared) = declared.filter(|&n| n > max) {
        // Refused before it is read; the body the client is still sending is read and dropped
        // beside the answer (up to LINGER_BYTES, within `timeout`), so that the client finishes
        // writing and reads the 413 instead of a broken pipe (which it would retry).
        tokio::spawn(linger(body, declared.min(LINGER_BYTES), timeout));
        return Err(BodyError::TooLarge(max));
    }
    let room = budget.take(declared.unwrap_or(max)).ok_or(BodyError::Busy)?;
    let limited = http_body_util::Limited::new(body, max);
    match tokio::time::timeout(timeout, limited.collect()).await {
        Ok(Ok(collected)) => Ok((collected.to_bytes(), room)),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => Err(BodyError::TooLarge(max)),
        Ok(Err(e)) => Err(BodyError::Broken(e.to_string())),
        Err(_) => Err(BodyError::TimedOut(timeout.as_secs())),
    }
}

/// How much of a refused oversize body is read and dropped after the answer, at most.
const LINGER_BYTES: usize = 64 << 20;

/// Reads and drops up to `bytes` of a refused body within `timeout`, then lets the connection go.
async fn linger(body: Body, bytes: usize, timeout: Duration) {
    use http_body_util::BodyExt as _;
    let mut body = http_body_util::Limited::new(body, bytes);
    let _ = tokio::time::timeout(timeout, async { while let Some(Ok(_frame)) = body.frame().await {} }).await;
}

/// The `Content-Length` a request declares, if any.
pub fn declared_length(headers: &http::HeaderMap) -> Option<usize> {
    headers.get(http::header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok())
}

/// The warning for a source listening on `address` that takes records from anyone who reaches it:
/// none on a loopback address (only this machine reaches it) or when requests must authenticate.
/// `how` says what to set for authentication.
pub fn open_listener_warning(source: &str, address: SocketAddr, authenticated: bool, how: &str) -> Option<String> {
    (!authenticated && !address.ip().is_loopback()).then(|| {
        format!(
            "{source} on {address}: no authentication, so anyone who reaches that address can put records \
             into the pipeline; {how}, or listen on 127.0.0.1 behind a proxy that authenticates"
        )
    })
}

/// Whether `address` can be listened on now, for `sluice validate --check`: bound and let go at
/// once (nothing served). An address no interface of this host has, or a port this process may
/// not take, is an error (the run would not start); an address another process holds (a sluice
/// already running the pipeline, which is what a change is usually validated beside) is said as a
/// warning, since it frees when that process stops.
pub fn check_listen(address: SocketAddr) -> Result<(), SourceError> {
    let error = match std::net::TcpListener::bind(address) {
        Ok(_) => return Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AddrInUse => {
            tracing::warn!(
                "{address} is taken by another process (a sluice already running this pipeline?): a run cannot start until it is free"
            );
            return Ok(());
        }
        Err(e) => e,
    };
    let hint = match error.kind() {
        io::ErrorKind::AddrNotAvailable => {
            "; no interface of this host has that address: listen on one of its own, or on 0.0.0.0 for all"
        }
        io::ErrorKind::PermissionDenied => {
            "; ports below 1024 need root or CAP_NET_BIND_SERVICE: listen on a higher port (4573, say)"
        }
        _ => "",
    };
    Err(SourceError::Setup(format!("cannot listen on {address}: {error}{hint}")))
}

/// Serves `router` on `bound` (with TLS when `tls` is set) within `limits` until `stop`, then
/// lets requests in progress finish and closes the queues `queues` gives then (those of the streams
/// served at that moment); the socket is the next run's to take from then on (see [`super::bound`]).
/// Runs on `runtime`; returns at once.
pub fn serve(
    runtime: &tokio::runtime::Handle,
    bound: Bound,
    router: axum::Router,
    tls: Option<ListenerTls>,
    (limits, wire): (ListenerLimits, Wire),
    stop: StopSignal,
    queues: impl FnOnce() -> Vec<Arc<IngestQueue>> + Send + 'static,
) -> Result<(), SourceError> {
    let Bound { socket: listener, serving } = bound;
    let address = listener.local_addr().map_err(|source| SourceError::Io { context: "listener".into(), source })?;
    let with_tls = tls.is_some();
    let tls_config = match tls {
        Some(mut tls) => {
            tls.alpn = match wire {
                Wire::Http1 => vec![b"http/1.1".to_vec()],
                Wire::Http2 => vec![b"h2".to_vec()],
            };
            let files = tls.files.clone();
            Some(serve_certificate(runtime, tls, stop.clone()).map_err(|why| SourceError::Io {
                context: format!(
                    "cannot serve TLS certificate {} and key {}",
                    files.cert.display(),
                    files.key.display()
                ),
                source: io::Error::other(why),
            })?)
        }
        None => None,
    };
    let handle = axum_server::Handle::new();
    let shutdown = handle.clone();
    runtime.spawn(async move {
        stop.stopped().await;
        shutdown.graceful_shutdown(Some(GRACE));
    });
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    runtime.spawn(async move {
        // Handlers may ask who is calling (the audit trail records it).
        let service = router.into_make_service_with_connect_info::<std::net::SocketAddr>();
        let served = match tls_config {
            Some(config) => match axum_server::from_tcp_rustls(listener, config) {
                Ok(server) => {
                    let server = server.map(|tls| Guarded { inner: tls, permits, limits, wire }).handle(handle);
                    let mut server = match wire {
                        Wire::Http1 => server.http1_only(),
                        Wire::Http2 => server.http2_only(),
                    };
                    // The guard's timers replace hyper's (which would also close idle connections).
                    server.http_builder().http1().header_read_timeout(None);
                    server.serve(service).await
                }
                Err(e) => Err(e),
            },
            None => match axum_server::from_tcp(listener) {
                Ok(server) => {
                    let server =
                        server.acceptor(Guarded { inner: DefaultAcceptor, permits, limits, wire }).handle(handle);
                    let mut server = match wire {
                        Wire::Http1 => server.http1_only(),
                        Wire::Http2 => server.http2_only(),
                    };
                    server.http_builder().http1().header_read_timeout(None);
                    server.serve(service).await
                }
                Err(e) => Err(e),
            },
        };
        if let Err(e) = served {
            tracing::error!(%address, error = %e, "listener failed");
        }
        // Every request that was acknowledged is queued by now: let the readers drain and finish.
        for queue in queues() {
            queue.close();
        }
        drop(serving);
    });
    tracing::info!(%address, tls = with_tls, "listening");
    Ok(())
}

/// An acceptor that refuses connections past the cap and times the ones it accepts.
#[derive(Debug, Clone)]
struct Guarded<A> {
    inner: A,
    permits: Arc<Semaphore>,
    limits: ListenerLimits,
    wire: Wire,
}

impl<A, I, S> Accept<I, S> for Guarded<A>
where
    A: Accept<I, S>,
    A::Future: Send + 'static,
    A::Stream: PresentedCertificate + Send + 'static,
    A::Service: Send + 'static,
    I: Send + 'static,
{
    type Stream = TimedStream<A::Stream>;
    type Service = WithCertificate<A::Service>;
    type Future = BoxFuture<'static, io::Result<(Self::Stream, Self::Service)>>;

    fn accept(&self, stream: I, service: S) -> Self::Future {
        let Ok(permit) = Arc::clone(&self.permits).try_acquire_owned() else {
            // Dropping the stream closes it: nothing is read or held for a connection past the cap.
            drop(stream);
            return Box::pin(async { Err(io::Error::other("too many connections")) });
        };
        let accepted = self.inner.accept(stream, service);
        let (limits, wire) = (self.limits, self.wire);
        Box::pin(async move {
            let (stream, service) = accepted.await?;
            let certificate = stream.client_certificate();
            Ok((TimedStream::new(stream, permit, limits, wire), WithCertificate { inner: service, certificate }))
        })
    }
}

/// A connection that may carry the certificate its client presented (mutual TLS).
pub trait PresentedCertificate {
    /// The client's certificate, if the connection's handshake verified one.
    fn client_certificate(&self) -> Option<Arc<ClientCertificate>>;
}

impl PresentedCertificate for tokio::net::TcpStream {
    fn client_certificate(&self) -> Option<Arc<ClientCertificate>> {
        None
    }
}

impl<S> PresentedCertificate for tokio_rustls::server::TlsStream<S> {
    fn client_certificate(&self) -> Option<Arc<ClientCertificate>> {
        ClientCertificate::of_connection(self.get_ref().1)
    }
}

/// A connection's service, which puts the connection's client certificate (if any) into each of
/// its requests' extensions, where [`Caller`] finds it.
#[derive(Debug, Clone)]
pub struct WithCertificate<S> {
    inner: S,
    certificate: Option<Arc<ClientCertificate>>,
}

impl<S, B> tower_service::Service<http::Request<B>> for WithCertificate<S>
where
    S: tower_service::Service<http::Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        if let Some(certificate) = &self.certificate {
            request.extensions_mut().insert(Arc::clone(certificate));
        }
        self.inner.call(request)
    }
}

/// Who sent a request, as handlers record it in the audit trail: the address it came from, and
/// the certificate its client presented when the listener asks for one (`tls.client_ca`).
#[derive(Debug, Clone)]
pub struct Caller {
    /// The client's address.
    pub address: SocketAddr,
    /// Its certificate (mutual TLS).
    pub certificate: Option<Arc<ClientCertificate>>,
}

impl Caller {
    /// `identity` (an audit record's `userIdentity`) with the client's certificate, if it
    /// presented one.
    pub fn identity(&self, identity: serde_json::Value) -> serde_json::Value {
        match &self.certificate {
            Some(certificate) => certificate.add_to(identity),
            None => identity,
        }
    }
}

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for Caller {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut http::request::Parts, _: &S) -> Result<Self, Self::Rejection> {
        // (Every listener serves its routes with the peer's address; a router driven without one,
        // in a unit test, is called from nowhere.)
        let address = parts
            .extensions
            .get::<axum::extract::ConnectInfo<SocketAddr>>()
            .map_or(SocketAddr::from(([0, 0, 0, 0], 0)), |info| info.0);
        Ok(Caller { address, certificate: parts.extensions.get::<Arc<ClientCertificate>>().cloned() })
    }
}

/// Where a connection is in its request cycle, as its bytes show.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Between requests: the next byte starts one (`idle_timeout` runs).
    Idle,
    /// Reading a request's headers (`header_timeout` runs).
    Head,
    /// Headers read: the body and the response (the handler's own timeout applies).
    Request,
}

/// A connection with header and idle timeouts, holding its place under the connection cap.
pub struct TimedStream<S> {
    inner: S,
    phase: Phase,
    /// The last bytes of the headers read so far (to find `\r\n\r\n` across reads).
    tail: u32,
    /// A response byte was written since the request's headers ended.
    responded: bool,
    deadline: Pin<Box<tokio::time::Sleep>>,
    limits: ListenerLimits,
    _permit: OwnedSemaphorePermit,
    /// The task that last found nothing to read during a request: woken when the response is
    /// flushed, so that the idle timeout starts even if the server does not read again by itself.
    reader: Option<std::task::Waker>,
    /// HTTP/2: every byte read or written restarts the idle timeout; there are no phases.
    opaque: bool,
}

impl<S> TimedStream<S> {
    fn new(inner: S, permit: OwnedSemaphorePermit, limits: ListenerLimits, wire: Wire) -> Self {
        let opaque = wire == Wire::Http2;
        TimedStream {
            inner,
            // A new connection must send its first request's headers in time (HTTP/1.1), or
            // anything within the idle timeout (HTTP/2).
            phase: if opaque { Phase::Idle } else { Phase::Head },
            tail: 0,
            responded: false,
            deadline: Box::pin(tokio::time::sleep(if opaque { limits.idle_timeout } else { limits.header_timeout })),
            limits,
            _permit: permit,
            reader: None,
            opaque,
        }
    }

    fn restart(&mut self, phase: Phase, after: Duration) {
        self.phase = phase;
        self.deadline.as_mut().reset(tokio::time::Instant::now() + after);
    }

    /// Follows the request cycle through the bytes just read.
    fn saw(&mut self, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        if self.opaque {
            self.restart(Phase::Idle, self.limits.idle_timeout);
            return;
        }
        if self.phase == Phase::Idle {
            self.restart(Phase::Head, self.limits.header_timeout);
            self.tail = 0;
        }
        if self.phase == Phase::Head {
            for &b in bytes {
                self.tail = self.tail << 8 | u32::from(b);
                if self.tail == u32::from_be_bytes(*b"\r\n\r\n") {
                    self.phase = Phase::Request;
                    self.responded = false;
                    return;
                }
            }
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for TimedStream<S> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        // A read after a response was written waits for the next request.
        if this.phase == Phase::Request && this.responded {
            this.restart(Phase::Idle, this.limits.idle_timeout);
        }
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                let filled = buf.filled()[before..].to_vec();
                this.saw(&filled);
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => {
                if this.phase != Phase::Request {
                    ready!(this.deadline.as_mut().poll(cx));
                    let what = if this.phase == Phase::Idle { "idle" } else { "request headers" };
                    return Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, format!("{what} timed out"))));
                }
                this.reader = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for TimedStream<S> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let written = ready!(Pin::new(&mut this.inner).poll_write(cx, buf))?;
        if written > 0 && this.opaque {
            this.restart(Phase::Idle, this.limits.idle_timeout);
        } else if written > 0 && this.phase == Phase::Request {
            this.responded = true;
        }
        Poll::Ready(Ok(written))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(Pin::new(&mut this.inner).poll_flush(cx))?;
        // The response is out: the connection is idle from now, whether or not a read is pending
        // (a read that was pending during the request is woken to start the idle timeout).
        if this.phase == Phase::Request && this.responded {
            this.restart(Phase::Idle, this.limits.idle_timeout);
            if let Some(reader) = this.reader.take() {
                reader.wake();
            }
        }
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let written = ready!(Pin::new(&mut this.inner).poll_write_vectored(cx, bufs))?;
        if written > 0 && this.opaque {
            this.restart(Phase::Idle, this.limits.idle_timeout);
        } else if written > 0 && this.phase == Phase::Request {
            this.responded = true;
        }
        Poll::Ready(Ok(written))
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_listener_beyond_this_machine_without_authentication_is_warned_about() {
        let warned = |address: &str, authenticated: bool| {
            let address: SocketAddr = address.parse().unwrap_or_else(|e| panic!("{e}"));
            open_listener_warning("http: NDJSON", address, authenticated, "set `bearer_token`")
        };
        for open in ["0.0.0.0:4574", "[::]:4574", "10.1.2.3:4574", "192.0.2.1:80"] {
            let said = warned(open, false).unwrap_or_else(|| panic!("{open} not warned about"));
            assert!(said.starts_with(&format!("http: NDJSON on {open}: no authentication")), "{said}");
            assert!(said.contains("set `bearer_token`, or listen on 127.0.0.1"), "{said}");
            assert_eq!(warned(open, true), None);
        }
        for local in ["127.0.0.1:4574", "127.0.0.2:4574", "[::1]:4574"] {
            assert_eq!(warned(local, false), None, "{local}");
        }
    }

    #[test]
    fn the_body_budget_refuses_past_its_limit_and_frees_on_drop() {
        let budget = BodyBudget::new(10);
        let a = budget.take(6).unwrap();
        assert!(budget.take(5).is_none());
        let b = budget.take(4).unwrap();
        assert_eq!(budget.used(), 10);
        drop(a);
        assert_eq!(budget.used(), 4);
        drop(b);
        assert!(budget.take(10).is_some());
    }

    #[tokio::test]
    async fn an_oversize_or_unaffordable_body_is_refused_before_it_is_read() {
        let budget = BodyBudget::new(100);
        let body = || Body::from(vec![b'x'; 50]);
        let timeout = Duration::from_secs(1);
        assert_eq!(read_body(body(), Some(200), 100, &budget, timeout).await.err(), Some(BodyError::TooLarge(100)));
        let (bytes, room) = read_body(body(), Some(50), 100, &budget, timeout).await.unwrap();
        assert_eq!(bytes.len(), 50);
        assert_eq!(read_body(body(), Some(60), 100, &budget, timeout).await.err(), Some(BodyError::Busy));
        drop(room);
        // No declared length: the request's limit is taken, and the bytes are counted against it.
        assert_eq!(
            read_body(Body::from(vec![0u8; 101]), None, 100, &budget, timeout).await.err(),
            Some(BodyError::TooLarge(100))
        );
    }
}

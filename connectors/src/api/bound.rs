//! Listening sockets (TCP, and UDP): bound before a run starts (so a taken address is an error
//! then), and, under `sluice serve`, kept open while the pipeline that listened on them restarts.
//!
//! A reload stops a changed pipeline and starts its new version once the old one has ended (they
//! never share a log): seconds in which nothing listens on the address of its own `http` or
//! `http_endpoint` source. With [`keep_across_runs`] (called by `sluice serve`), the process holds
//! a second handle to each socket it binds, so the socket stays in the listening state after its
//! server ends: the kernel completes producers' connections and queues them (up to the listen
//! backlog), and the next run that binds the same address takes that very socket over and serves
//! them. Producers see a pause, never a refused connection. (A connection the stopping server had
//! already accepted but not read a request from is closed unanswered, as hyper's graceful shutdown
//! does at any HTTP server's stop; clients send such a request again.) A UDP socket (the `syslog`
//! source's) is kept the same way: the datagrams that arrive between the runs wait in its receive
//! buffer (as much as it holds) for the next run, where without it they would be refused.
//!
//! Guarantees: a socket is taken over only from a server that has ended (its [`Bound`] and the
//! server holding it dropped), so two live servers never share one, and binding an address a live
//! server of this process holds fails as the operating system's bind does; a socket no run took
//! back is closed by [`release_unclaimed`] (`sluice serve` calls it once its pipelines are prepared
//! at start, after each reload and when a run ends by itself), so the port of a removed pipeline, or
//! of one that could not start, is refused again.
//! Without [`keep_across_runs`] (`sluice run`), binding is a plain bind and nothing is kept.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};

use sluice_engine::contract::SourceError;

/// The process's sockets (one list: every source's listener binds through it).
static SOCKETS: Sockets = Sockets::new();

/// The sockets bound through it and, once keeping, those kept for the next run at their address.
struct Sockets {
    kept: Mutex<Option<Vec<Kept>>>,
}

/// A socket kept for the next run at its address.
struct Kept {
    address: SocketAddr,
    socket: KeptSocket,
    /// Alive while a [`Bound`] of it, or the server it was handed to, exists.
    serving: Weak<()>,
}

/// A kept socket of either protocol (a TCP and a UDP socket may share an address).
enum KeptSocket {
    Tcp(std::net::TcpListener),
    Udp(std::net::UdpSocket),
}

/// A socket a source listens on: a TCP listener, or a UDP socket (the `syslog` source's
/// datagrams, which wait in its receive buffer while it is kept).
trait Listening: Sized {
    /// How an address of it is written in errors (`udp://…` for UDP).
    fn describe(address: SocketAddr) -> String;
    /// Binds `address`, non-blocking.
    fn bind_now(address: SocketAddr) -> std::io::Result<Self>;
    /// A second handle to the same socket, kept.
    fn to_kept(&self) -> std::io::Result<KeptSocket>;
    /// A handle to `kept` if it is a socket of this protocol.
    fn from_kept(kept: &KeptSocket) -> Option<std::io::Result<Self>>;
}

impl Listening for std::net::TcpListener {
    fn describe(address: SocketAddr) -> String {
        address.to_string()
    }

    fn bind_now(address: SocketAddr) -> std::io::Result<Self> {
        let socket = std::net::TcpListener::bind(address)?;
        socket.set_nonblocking(true)?;
        Ok(socket)
    }

    fn to_kept(&self) -> std::io::Result<KeptSocket> {
        self.try_clone().map(KeptSocket::Tcp)
    }

    fn from_kept(kept: &KeptSocket) -> Option<std::io::Result<Self>> {
        match kept {
            KeptSocket::Tcp(socket) => Some(socket.try_clone()),
            KeptSocket::Udp(_) => None,
        }
    }
}

impl Listening for std::net::UdpSocket {
    fn describe(address: SocketAddr) -> String {
        format!("udp://{address}")
    }

    fn bind_now(address: SocketAddr) -> std::io::Result<Self> {
        let socket = std::net::UdpSocket::bind(address)?;
        socket.set_nonblocking(true)?;
        Ok(socket)
    }

    fn to_kept(&self) -> std::io::Result<KeptSocket> {
        self.try_clone().map(KeptSocket::Udp)
    }

    fn from_kept(kept: &KeptSocket) -> Option<std::io::Result<Self>> {
        match kept {
            KeptSocket::Udp(socket) => Some(socket.try_clone()),
            KeptSocket::Tcp(_) => None,
        }
    }
}

/// A bound socket, non-blocking, ready for its server (which holds it, and its place among the
/// kept sockets, until it ends): a TCP listener for [`super::serve`] unless said otherwise.
#[derive(Debug)]
pub struct Bound<S = std::net::TcpListener> {
    pub(crate) socket: S,
    /// Says that this socket is served (None when nothing is kept).
    pub(crate) serving: Option<Arc<()>>,
}

/// From now on, sockets bound by this process are kept open when their servers end, for the next
/// run at their address (`sluice serve`).
pub fn keep_across_runs() {
    SOCKETS.keep();
}

/// Closes the kept sockets no server took back: addresses no running pipeline listens on.
pub fn release_unclaimed() {
    SOCKETS.release_unclaimed();
}

/// Binds `address` (TCP) now (so a taken address is an error before the run starts); under
/// [`keep_across_runs`], takes over the socket an ended run left listening there.
pub fn bind(address: SocketAddr) -> Result<Bound, SourceError> {
    SOCKETS.bind(address)
}

/// [`bind`] for a UDP socket: under [`keep_across_runs`] the datagrams that arrive while no run
/// reads it wait in its receive buffer for the next run.
pub fn bind_udp(address: SocketAddr) -> Result<Bound<std::net::UdpSocket>, SourceError> {
    SOCKETS.bind(address)
}

fn bind_error<S: Listening>(address: SocketAddr) -> impl FnOnce(std::io::Error) -> SourceError {
    move |source| SourceError::Io { context: format!("cannot listen on {}", S::describe(address)), source }
}

impl Sockets {
    const fn new() -> Self {
        Sockets { kept: Mutex::new(None) }
    }

    fn kept(&self) -> MutexGuard<'_, Option<Vec<Kept>>> {
        // A panic while holding the list leaves it whole (every change is one push or retain).
        self.kept.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn keep(&self) {
        self.kept().get_or_insert_with(Vec::new);
    }

    fn release_unclaimed(&self) {
        if let Some(kept) = self.kept().as_mut() {
            kept.retain(|k| k.serving.strong_count() > 0);
        }
    }

    fn bind<S: Listening>(&self, address: SocketAddr) -> Result<Bound<S>, SourceError> {
        let mut guard = self.kept();
        let Some(kept) = guard.as_mut().filter(|_| address.port() != 0) else {
            return Ok(Bound { socket: S::bind_now(address).map_err(bind_error::<S>(address))?, serving: None });
        };
        let serving = Arc::new(());
        let ended = |k: &Kept| k.serving.strong_count() == 0;
        if let Some((left, socket)) = kept
            .iter_mut()
            .filter(|k| k.address == address && ended(k))
            .find_map(|k| S::from_kept(&k.socket).map(|socket| (k, socket)))
        {
            let socket = socket.map_err(bind_error::<S>(address))?;
            left.serving = Arc::downgrade(&serving);
            return Ok(Bound { socket, serving: Some(serving) });
        }
        // An ended run's socket of this protocol on the same port (another address of this host,
        // or all of them) would refuse this one: it is not wanted any more.
        kept.retain(|k| k.address.port() != address.port() || !ended(k) || S::from_kept(&k.socket).is_none());
        let socket = S::bind_now(address).map_err(bind_error::<S>(address))?;
        let handle = socket.to_kept().map_err(bind_error::<S>(address))?;
        kept.push(Kept { address, socket: handle, serving: Arc::downgrade(&serving) });
        Ok(Bound { socket, serving: Some(serving) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_socket_outlives_its_server_only_until_a_run_takes_it_or_it_is_released() {
        let sockets = Sockets::new();
        let plain = sockets.bind::<std::net::TcpListener>("127.0.0.1:0".parse().unwrap_or_else(|e| panic!("{e}")));
        assert!(plain.is_ok_and(|b| b.serving.is_none()), "nothing is kept before `keep`");
        sockets.keep();
        let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("{e}"));
        let address = free.local_addr().unwrap_or_else(|e| panic!("{e}"));
        drop(free);
        let first = sockets.bind::<std::net::TcpListener>(address).unwrap_or_else(|e| panic!("{e}"));
        // A live server's address cannot be bound again.
        assert!(matches!(sockets.bind::<std::net::TcpListener>(address), Err(SourceError::Io { .. })));
        drop(first);
        // Its server ended: a connection waits in the backlog, and the next run serves it.
        let waiting = std::net::TcpStream::connect(address).unwrap_or_else(|e| panic!("{e}"));
        let second = sockets.bind::<std::net::TcpListener>(address).unwrap_or_else(|e| panic!("{e}"));
        second.socket.set_nonblocking(false).unwrap_or_else(|e| panic!("{e}"));
        let (accepted, from) = second.socket.accept().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(from, waiting.local_addr().unwrap_or_else(|e| panic!("{e}")));
        drop((accepted, waiting));
        sockets.release_unclaimed();
        // Still served: still listening.
        assert!(std::net::TcpStream::connect(address).is_ok());
        drop(second);
        sockets.release_unclaimed();
        let refused = std::net::TcpStream::connect(address).map_err(|e| e.kind());
        assert_eq!(refused.err(), Some(std::io::ErrorKind::ConnectionRefused));
    }

    /// A UDP socket is kept like a listener: the datagrams that arrive after its server ended wait
    /// for the next run at its address; a TCP listener on the same port is another socket; once
    /// released, the address is free.
    #[test]
    fn a_udp_socket_keeps_the_datagrams_between_runs() {
        let sockets = Sockets::new();
        sockets.keep();
        let free = std::net::UdpSocket::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("{e}"));
        let address = free.local_addr().unwrap_or_else(|e| panic!("{e}"));
        drop(free);
        let first: Bound<std::net::UdpSocket> = sockets.bind(address).unwrap_or_else(|e| panic!("{e}"));
        assert!(matches!(sockets.bind::<std::net::UdpSocket>(address), Err(SourceError::Io { .. })));
        // (TCP on the same port is another socket: bound beside it, and no kept UDP socket is let go.)
        let tcp: Result<Bound, _> = sockets.bind(address);
        drop(first);
        let sender = std::net::UdpSocket::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("{e}"));
        sender.send_to(b"<13>between the runs", address).unwrap_or_else(|e| panic!("{e}"));
        let second: Bound<std::net::UdpSocket> = sockets.bind(address).unwrap_or_else(|e| panic!("{e}"));
        second.socket.set_nonblocking(false).unwrap_or_else(|e| panic!("{e}"));
        second.socket.set_read_timeout(Some(std::time::Duration::from_secs(5))).unwrap_or_else(|e| panic!("{e}"));
        let mut datagram = [0u8; 64];
        let (length, from) = second.socket.recv_from(&mut datagram).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            (&datagram[..length], from),
            (&b"<13>between the runs"[..], sender.local_addr().unwrap_or_else(|e| panic!("{e}")))
        );
        drop((second, tcp));
        sockets.release_unclaimed();
        assert!(std::net::UdpSocket::bind(address).is_ok(), "released");
    }

    /// A run that moved to another address of the same port (`127.0.0.1` to `0.0.0.0`) binds it:
    /// the ended run's kept socket on that port is let go instead of refusing the bind.
    #[test]
    fn a_new_address_on_the_same_port_lets_an_ended_runs_socket_go() {
        let sockets = Sockets::new();
        sockets.keep();
        let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("{e}"));
        let port = free.local_addr().unwrap_or_else(|e| panic!("{e}")).port();
        drop(free);
        let before = sockets
            .bind::<std::net::TcpListener>(SocketAddr::from(([127, 0, 0, 1], port)))
            .unwrap_or_else(|e| panic!("{e}"));
        let everywhere = SocketAddr::from(([0, 0, 0, 0], port));
        // While it is served, the port is taken.
        assert!(matches!(sockets.bind::<std::net::TcpListener>(everywhere), Err(SourceError::Io { .. })));
        drop(before);
        let after = sockets.bind::<std::net::TcpListener>(everywhere).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(after.socket.local_addr().unwrap_or_else(|e| panic!("{e}")), everywhere);
    }
}

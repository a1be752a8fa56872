//! Cluster mode: one pipeline run by several sluice processes as one timely dataflow, over timely's
//! own TCP communication: sluice connects the processes' sockets (timely's handshake: each process
//! dials the lower-numbered ones and sends its index; retried every 20 ms, not every second) and
//! hands them to timely's `initialize_networking_from_sockets`; the rest is timely's protocol.
//!
//! `hosts.txt` lists one `host:port` per process (the same file everywhere); process N is line N
//! and runs W workers, so worker indices are global and every source, exchange and probe spans the
//! cluster. This module adds what timely leaves to its user:
//! - a **handshake** before the pipeline's dataflow is built: every worker broadcasts (process,
//!   plan fingerprint, worker count) and each checks them all, so processes loaded with different
//!   pipelines all stop with the same clear error instead of building different graphs;
//! - a **stop relay**: a stop asked of any one process (SIGTERM) is broadcast through the dataflow
//!   to every worker, so the whole cluster drains, flushes and delivers;
//! - **peer loss**: timely's receive thread panics when a peer's connection closes without a clean
//!   shutdown (a process killed); a panic hook notes which process that was, so the run ends with
//!   an error naming it rather than a wall of panics.
//!
//! Guarantees: a handshake mismatch is reported identically on every process and nothing of the
//! pipeline runs; the stop relay holds no capability the delivered frontier waits for (it is not
//! upstream of any probe) and lets the dataflow complete once the worker's pipeline is done.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, BTreeSet};
use std::rc::Rc;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use std::io::{Read as _, Write as _};
use std::net::{TcpListener, TcpStream};

use timely::communication::Hooks;
use timely::communication::allocator::zero_copy::initialize::initialize_networking_from_sockets;
use timely::communication::allocator::{AllocatorBuilder, ProcessBuilder};
use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::generic::operator::source;
use timely::dataflow::operators::vec::Broadcast;
use timely::dataflow::operators::{Inspect, Operator, Probe};
use timely::dataflow::{InputHandle, ProbeHandle, Scope};
use timely::scheduling::Activator;

use crate::contract::StopSignal;

/// Where this process sits in a cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cluster {
    /// This process's index: its line in `hosts.txt`, from 0.
    pub process: usize,
    /// Every process's `host:port`, in order.
    pub addresses: Vec<String>,
}

/// Why a cluster cannot be formed or ended badly.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ClusterError {
    /// `hosts.txt` could not be read.
    #[error("cannot read {file}: {reason}")]
    Hosts {
        /// The file.
        file: String,
        /// Why.
        reason: String,
    },
    /// A line of `hosts.txt` is not `host:port`.
    #[error("{file}:{line}: `{text}` is not host:port (one process per line, e.g. 10.0.0.5:4600)")]
    BadLine {
        /// The file.
        file: String,
        /// 1-based line number.
        line: usize,
        /// What it says.
        text: String,
    },
    /// `--process` is not a line of `hosts.txt`.
    #[error("--process {process} is not a line of {file}, which lists {processes} processes (0..{processes})")]
    NoSuchProcess {
        /// The file.
        file: String,
        /// The index given.
        process: usize,
        /// Lines in the file.
        processes: usize,
    },
    /// The processes loaded different pipelines or worker counts.
    #[error(
        "the cluster's processes disagree: {0}; every process must load the same pipeline file with the same --workers"
    )]
    Mismatch(String),
    /// The processes could not connect.
    #[error("the cluster could not form: {0}")]
    Connect(String),
    /// Processes whose connections closed without a clean shutdown. When one process is killed
    /// the others stop too, so a process may see several go: every one it saw is named (the one
    /// killed among them), in process order.
    #[error(
        "{} of the cluster {} gone: {} closed without a clean stop; this process stops too. Restart every process: each replays its write-ahead log, so nothing acknowledged is lost",
        LostPeers(lost),
        if lost.len() == 1 { "is" } else { "are" },
        if lost.len() == 1 { "its connection" } else { "their connections" }
    )]
    PeerLost {
        /// Each lost process's index and address, in index order (at least one).
        lost: Vec<(usize, String)>,
    },
}

/// Names lost processes: `process 2 (10.0.0.7:4600)` or `processes 1 (…) and 2 (…)`.
struct LostPeers<'a>(&'a [(usize, String)]);

impl std::fmt::Display for LostPeers<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.len() == 1 { "process " } else { "processes " })?;
        for (i, (process, address)) in self.0.iter().enumerate() {
            let separator = match i {
                0 => "",
                _ if i + 1 == self.0.len() => " and ",
                _ => ", ",
            };
            write!(f, "{separator}{process} ({address})")?;
        }
        Ok(())
    }
}

impl Cluster {
    /// The cluster `hosts_text` (the contents of `file`) describes, as process `process`.
    pub fn parse(file: &str, hosts_text: &str, process: usize) -> Result<Cluster, ClusterError> {
        let mut addresses = Vec::new();
        for (i, line) in hosts_text.lines().enumerate() {
            let text = line.trim();
            if text.is_empty() || text.starts_with('#') {
                continue;
            }
            let valid = text
                .rsplit_once(':')
                .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0));
            if !valid || text.contains(char::is_whitespace) {
                return Err(ClusterError::BadLine { file: file.into(), line: i + 1, text: text.into() });
            }
            addresses.push(text.to_string());
        }
        if process >= addresses.len() {
            return Err(ClusterError::NoSuchProcess { file: file.into(), process, processes: addresses.len() });
        }
        Ok(Cluster { process, addresses })
    }

    /// Reads `hosts.txt` at `path`.
    pub fn from_file(path: &std::path::Path, process: usize) -> Result<Cluster, ClusterError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path)
            .map_err(|e| ClusterError::Hosts { file: file.clone(), reason: e.to_string() })?;
        Cluster::parse(&file, &text, process)
    }

    /// The same cluster on ports moved up by `offset`: `sluice serve` runs one timely cluster per
    /// pipeline, pipeline number `offset` (in file-name order) on `port + offset`.
    pub fn shifted(&self, offset: u16) -> Cluster {
        let addresses = self
            .addresses
            .iter()
            .map(|a| match a.rsplit_once(':').and_then(|(h, p)| Some((h, p.parse::<u16>().ok()?))) {
                Some((host, port)) => format!("{host}:{}", port.saturating_add(offset)),
                None => a.clone(),
            })
            .collect();
        Cluster { process: self.process, addresses }
    }

    /// Connects this process to every other as timely's own set-up does (a connection to each
    /// lower-numbered process, on which this process's index is sent as a big-endian `u64`, and
    /// one accepted from each higher-numbered process, which sends its index), but retrying every
    /// 20 ms where timely sleeps a second between tries: a second of every batch run. Waits until
    /// every process is up (saying on stderr every 5 s which it waits for), or until `stop`.
    /// Position `process` of the result is `None`.
    fn connect(&self, stop: &StopSignal) -> Result<Vec<Option<TcpStream>>, ClusterError> {
        const RETRY: Duration = Duration::from_millis(20);
        const SAY_EVERY: Duration = Duration::from_secs(5);
        let me = self.process;
        let failed = |what: String| move |e: std::io::Error| ClusterError::Connect(format!("{what}: {e}"));
        let listener = TcpListener::bind(&self.addresses[me])
            .map_err(failed(format!("cannot listen on {}", self.addresses[me])))?;
        listener.set_nonblocking(true).map_err(failed("cannot listen".into()))?;
        let later = self.addresses.len() - me - 1;
        let accepting_stop = stop.clone();
        let accepting = std::thread::Builder::new()
            .name("sluice-cluster-accept".into())
            .spawn(move || -> Result<Vec<Option<TcpStream>>, ClusterError> {
                let mut accepted: Vec<Option<TcpStream>> = (0..later).map(|_| None).collect();
                while accepted.iter().any(Option::is_none) {
                    if accepting_stop.is_stopped() {
                        return Err(ClusterError::Connect("stopped before every process connected".into()));
                    }
                    match listener.accept() {
                        Ok((mut stream, _)) => {
                            stream.set_nonblocking(false).map_err(failed("accepting a process".into()))?;
                            stream.set_nodelay(true).map_err(failed("accepting a process".into()))?;
                            let mut index = [0u8; 8];
                            stream.read_exact(&mut index).map_err(failed("reading a process's index".into()))?;
                            let index = usize::try_from(u64::from_be_bytes(index)).unwrap_or(usize::MAX);
                            match index.checked_sub(me + 1).and_then(|i| accepted.get_mut(i)) {
                                Some(slot) => *slot = Some(stream),
                                None => tracing::warn!(
                                    index,
                                    "a connection claimed a process index this cluster has not; ignored"
                                ),
                            }
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => std::thread::sleep(RETRY),
                        Err(e) => return Err(ClusterError::Connect(format!("accepting a process: {e}"))),
                    }
                }
                Ok(accepted)
            })
            .map_err(failed("cannot start accepting".into()))?;
        let mut sockets = Vec::with_capacity(self.addresses.len());
        for (index, address) in self.addresses.iter().enumerate().take(me) {
            let started = std::time::Instant::now();
            let mut said = started;
            let stream = loop {
                match TcpStream::connect(address) {
                    Ok(stream) => break stream,
                    Err(e) => {
                        if stop.is_stopped() {
                            return Err(ClusterError::Connect("stopped before every process connected".into()));
                        }
                        if said.elapsed() >= SAY_EVERY {
                            said = std::time::Instant::now();
                            eprintln!("sluice: waiting for process {index} of the cluster ({address}): {e}");
                        }
                        std::thread::sleep(RETRY);
                    }
                }
            };
            let mut stream = stream;
            stream.set_nodelay(true).map_err(failed(format!("connecting to {address}")))?;
            stream.write_all(&(me as u64).to_be_bytes()).map_err(failed(format!("connecting to {address}")))?;
            sockets.push(Some(stream));
        }
        sockets.push(None);
        let accepted = accepting.join().map_err(|_| ClusterError::Connect("accepting processes failed".into()))??;
        sockets.extend(accepted);
        Ok(sockets)
    }

    /// timely's allocators for `workers` threads in this process, connected to every other
    /// process (see `Cluster::connect`), and the guard of timely's communication threads.
    pub fn allocators(
        &self,
        workers: usize,
        stop: &StopSignal,
    ) -> Result<(Vec<AllocatorBuilder>, CommunicationGuard), ClusterError> {
        let sockets = self.connect(stop)?;
        let hooks = Hooks::default();
        let local = ProcessBuilder::new_typed_vector(workers, hooks.refill.clone(), hooks.spill.clone());
        let (tcp, guard) = initialize_networking_from_sockets(local, sockets, self.process, workers, hooks)
            .map_err(|e| ClusterError::Connect(format!("cannot start the cluster's communication: {e}")))?;
        Ok((tcp.into_iter().map(AllocatorBuilder::Tcp).collect(), Box::new(guard)))
    }
}

/// The guard of timely's communication threads (joined when dropped).
pub type CommunicationGuard = Box<dyn std::any::Any + Send>;

/// What each worker says in the handshake: (process, plan fingerprint, workers per process).
type Hello = (usize, u64, usize);

/// Runs the handshake on `worker`: every worker learns every other's `Hello`. `Err` (the same
/// on every worker) when they disagree.
pub fn handshake(worker: &mut timely::worker::Worker, hello: Hello) -> Result<(), ClusterError> {
    let heard: Rc<std::cell::RefCell<Vec<Hello>>> = Rc::default();
    let mut input = InputHandle::<u64, CapacityContainerBuilder<Vec<Hello>>>::new();
    let probe = ProbeHandle::new();
    let into = Rc::clone(&heard);
    worker.dataflow::<u64, _, _>(|scope| {
        input.to_stream(scope).broadcast().inspect(move |h| into.borrow_mut().push(*h)).probe_with(&probe);
    });
    input.send(hello);
    input.close();
    while !probe.done() {
        worker.step_or_park(Some(Duration::from_millis(20)));
    }
    let heard = heard.borrow();
    let mut by_process: BTreeMap<usize, (u64, usize)> = BTreeMap::new();
    for &(process, fingerprint, workers) in heard.iter() {
        by_process.insert(process, (fingerprint, workers));
    }
    let distinct: std::collections::BTreeSet<(u64, usize)> = by_process.values().copied().collect();
    if distinct.len() <= 1 {
        return Ok(());
    }
    let said: Vec<String> =
        by_process.iter().map(|(p, (f, w))| format!("process {p}: pipeline {f:016x}, {w} workers")).collect();
    Err(ClusterError::Mismatch(said.join("; ")))
}

/// Lets a worker's stop relay go when the worker's pipeline is delivered: at once, not at the
/// relay's next look at the stop signal (a tenth of a second later, at the end of every run).
#[derive(Default)]
pub struct RelayRelease {
    done: Cell<bool>,
    activator: RefCell<Option<Activator>>,
}

impl RelayRelease {
    /// The pipeline is delivered: the relay lets go now.
    pub fn release(&self) {
        self.done.set(true);
        if let Some(activator) = self.activator.borrow().as_ref() {
            activator.activate();
        }
    }
}

/// Builds the stop relay in `scope`: when `stop` is asked on this worker's process, every worker
/// of the cluster hears it and asks its own process's `stop`. The relay lets go once `release` is
/// released (the worker's pipeline is delivered) or once it has spoken.
pub fn relay_stop(scope: Scope<'_, u64>, stop: StopSignal, release: Rc<RelayRelease>) {
    let heard = stop.clone();
    source::<u64, CapacityContainerBuilder<Vec<u8>>, _, _>(scope, "StopRelay", move |capability, info| {
        let activator = scope.activator_for(info.address);
        *release.activator.borrow_mut() = Some(activator.clone());
        let mut capability = Some(capability);
        move |output| {
            let Some(cap) = capability.as_ref() else { return };
            if stop.is_stopped() {
                output.session(cap).give(1u8);
                capability = None;
            } else if release.done.get() {
                capability = None;
            } else {
                activator.activate_after(Duration::from_millis(100));
            }
        }
    })
    .broadcast()
    .sink(Pipeline, "StopRelayed", move |(input, _)| {
        input.for_each(|_, data| {
            if !data.is_empty() && !heard.is_stopped() {
                tracing::info!("a process of the cluster was asked to stop: stopping with it");
                heard.stop();
            }
        });
    });
}

/// The processes whose connections closed, noted by the panic hook [`watch_peers`] installs (each
/// peer's receive and send threads panic on their own, so every lost peer is noted by the time
/// the communication threads are joined).
static LOST_PEERS: Mutex<BTreeSet<usize>> = Mutex::new(BTreeSet::new());
/// The addresses the hook names processes by.
static PEERS: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// Installs (once per process) a panic hook that turns timely's communication panics into a note
/// of which peer was lost ([`lost_peer`]) and keeps the cascade of panics they cause in this
/// process's workers quiet; every other panic goes to the hook that was there before.
pub fn watch_peers(cluster: &Cluster) {
    if let Ok(mut peers) = PEERS.lock() {
        peers.clone_from(&cluster.addresses);
    }
    static INSTALLED: OnceLock<()> = OnceLock::new();
    INSTALLED.get_or_init(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let thread = std::thread::current();
            let name = thread.name().unwrap_or("");
            let message = info
                .payload()
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| info.payload().downcast_ref::<&str>().copied())
                .unwrap_or("");
            let peer = name.strip_prefix("timely:recv-").or_else(|| name.strip_prefix("timely:send-"));
            if let Some(peer) = peer.and_then(|p| p.parse::<usize>().ok())
                && message.starts_with("timely communication error")
            {
                if let Ok(mut lost) = LOST_PEERS.lock() {
                    lost.insert(peer);
                }
                return;
            }
            let cascade = ["MergeQueue", "timely communication", "Send thread panic", "Recv thread panic"];
            let any_lost = LOST_PEERS.lock().is_ok_and(|lost| !lost.is_empty());
            if any_lost && cascade.iter().any(|c| message.contains(c)) {
                return;
            }
            previous(info);
        }));
    });
}

/// The peers whose connections closed during this process's run, if any did. Called after the
/// communication threads are joined, so it names every peer this process lost.
pub fn lost_peer() -> Option<ClusterError> {
    let lost = LOST_PEERS.lock().ok()?.clone();
    let addresses = PEERS.lock().map(|p| p.clone()).unwrap_or_default();
    let lost: Vec<(usize, String)> =
        lost.into_iter().map(|p| (p, addresses.get(p).cloned().unwrap_or_default())).collect();
    (!lost.is_empty()).then_some(ClusterError::PeerLost { lost })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_files_are_one_address_per_line_with_clear_errors() {
        let c = Cluster::parse("hosts.txt", "# three\n10.0.0.1:4600\n\n10.0.0.2:4600\nlocalhost:4601\n", 2).unwrap();
        assert_eq!(c.addresses, ["10.0.0.1:4600", "10.0.0.2:4600", "localhost:4601"]);
        assert_eq!(c.shifted(2).addresses[2], "localhost:4603");
        assert_eq!(
            Cluster::parse("h", "a:1\nb\n", 0),
            Err(ClusterError::BadLine { file: "h".into(), line: 2, text: "b".into() })
        );
        assert!(matches!(Cluster::parse("h", "a:1\n", 1), Err(ClusterError::NoSuchProcess { processes: 1, .. })));
        assert!(matches!(Cluster::parse("h", "a:0\n", 0), Err(ClusterError::BadLine { .. })));
    }

    #[test]
    fn every_lost_process_is_named_with_its_address() {
        let lost = |peers: &[usize]| {
            ClusterError::PeerLost { lost: peers.iter().map(|&p| (p, format!("10.0.0.{p}:4600"))).collect() }
                .to_string()
        };
        assert!(lost(&[2]).starts_with("process 2 (10.0.0.2:4600) of the cluster is gone: its connection closed"));
        assert!(
            lost(&[1, 2]).starts_with(
                "processes 1 (10.0.0.1:4600) and 2 (10.0.0.2:4600) of the cluster are gone: their connections closed"
            ),
            "{}",
            lost(&[1, 2])
        );
        assert!(
            lost(&[0, 1, 3]).starts_with("processes 0 (10.0.0.0:4600), 1 (10.0.0.1:4600) and 3 (10.0.0.3:4600) of")
        );
    }

    /// One process with two workers agreeing, and disagreeing workers (as processes would), each
    /// told the same.
    #[test]
    fn the_handshake_finds_disagreement_on_every_worker() {
        let agree = timely::execute(timely::Config::process(2), |w| handshake(w, (0, 7, 2)))
            .unwrap()
            .join()
            .into_iter()
            .map(|r| r.unwrap())
            .collect::<Vec<_>>();
        assert_eq!(agree, [Ok(()), Ok(())]);
        let disagree = timely::execute(timely::Config::process(2), |w| handshake(w, (w.index(), w.index() as u64, 2)))
            .unwrap()
            .join()
            .into_iter()
            .map(|r| r.unwrap())
            .collect::<Vec<_>>();
        assert_eq!(disagree[0], disagree[1]);
        let Err(ClusterError::Mismatch(said)) = &disagree[0] else { panic!("{disagree:?}") };
        assert!(said.contains("process 0: pipeline 0000000000000000") && said.contains("process 1"), "{said}");
    }
}

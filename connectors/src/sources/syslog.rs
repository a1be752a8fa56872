//! `type = "syslog"`: syslog messages served on TCP (RFC 6587), TLS (RFC 5425), UDP (RFC 5426) or
//! RELP (rsyslog's acknowledged protocol, librelp's framing), so that rsyslog's and syslog-ng's forwarding, `logger`, network devices
//! (firewalls, switches, load balancers) and appliances that only speak syslog deliver into a
//! pipeline, beyond Firehose (Vector's and Fluent Bit's `syslog` sources do the same).
//!
//! ```toml
//! [sources.syslog]
//! type = "syslog"
//! listen = "127.0.0.1:5140"          # default
//! mode = "tcp"                       # "tcp" (default, with `tls` for RFC 5425), "udp" or "relp"
//! tls = { cert = "...", key = "..." } # optional, TCP and RELP only (client_ca for mutual TLS)
//! max_message_kb = 64                # longer messages are truncated to it, said and counted
//! max_connections = 1024             # TCP only
//! idle_timeout_s = 300               # TCP only: a silent connection is closed
//! max_inflight_mb = 256
//! timezone = "Europe/Berlin"         # of RFC 3164 dates, which have none (default UTC)
//! receive_buffer_kb = 4096           # UDP only: the socket's receive buffer (default the kernel's)
//! ```
//!
//! Framing on TCP is RFC 6587's, told apart per message as receivers do: a message that starts with
//! a digit is octet-counted (`<length> <message>`), any other ends at a line feed (a carriage
//! return before it dropped; a NUL ends one too, as Python's `SysLogHandler` sends); what a client
//! sends before it closes the connection with no line feed is its last message; an empty message
//! (`0 `, a blank line) is nothing. On UDP each datagram is one message. Each message is parsed as
//! RFC 5424, else as RFC 3164 (the `syslog_loose` crate, which Vector uses: it takes what it can
//! and never refuses; a message it cannot read at all keeps only `message`), and becomes one JSON
//! record: `source_ip` (the sender's address), `protocol` (`rfc5424` or `rfc3164`), `facility` and
//! `severity` (their names, `local0`, `err`; null without a PRI), `timestamp` (RFC 3339 in UTC; an
//! RFC 3164 date has no year or zone: in `timezone`, default UTC, this year unless that would be
//! more than a day ahead, then last year), `hostname`, `appname`, `procid`, `msgid` (null when
//! absent), `structured_data` (`{"<SD-ID>": {"<name>": "<value>"}}`, escapes undone) and `message`.
//! Bytes that are not UTF-8 are written as U+FFFD.
//!
//! With `mode = "relp"` a connection is a RELP session (`relp_converse`): each message is
//! answered once it is queued and as durable as the pipeline asks, so its client (rsyslog's
//! `omrelp`) sends again what was not answered.
//!
//! Guarantees: records are queued, and logged as durably as the pipeline asks, as they arrive (a
//! connection's messages read together are taken together); while the queue is full a TCP
//! connection is not read, which holds its client back. Plain syslog has no acknowledgement: a client
//! cannot know what was taken when a connection breaks (RELP's answers say it), and UDP loses what the socket's buffer
//! cannot hold, as it does for every receiver, but not unsaid: each second the kernel's count of
//! the socket's drops is read and what it dropped said (`Syslog.DatagramsDropped`) and counted
//! (`SyslogKernelDroppedDatagrams`; those of a reload's gap by the next run); a stop takes the
//! datagrams already received. Under `sluice serve` a reload keeps the socket (TCP's
//! listening, UDP's receiving: datagrams wait in its buffer) for the pipeline's next run. A message
//! longer than `max_message_kb` is truncated to its first `max_message_kb` KiB, which become its
//! record (as rsyslog, syslog-ng and Vector truncate), and the stream goes on after its end (an
//! octet-counted one's length, a line's line feed), neither held nor ever read as messages
//! (`Syslog.MessageTruncated` in the error log, `SyslogTruncatedMessages`); a record over Firehose's
//! 1,000 KiB (a message whose escapes make its JSON that long) goes, whole, to the error output
//! of every sink it would have reached (`processing-failed`, `Source.RecordTooLarge`). Messages the log cannot
//! take (a full disk) are lost, said (`Syslog.LogFailed`), and their connection closed. Each TCP
//! connection that brought anything is recorded in the audit trail (`syslog.sluice`,
//! `SendMessages`: the client's certificate with mutual TLS, the messages taken and truncated, a log
//! failure); a datagram has no connection and is not. A stop ends the accepting, and the
//! connections' bytes already received are still taken.

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use serde::Deserialize;
use serde_json::{Value, json};
use sluice_engine::config::{ConnectorConfig, Diagnostic, Problems};
use sluice_engine::contract::{PrepareContext, Source, SourceContext, SourceError, SourceReader, StopSignal};
use sluice_engine::error_log::Level;
use sluice_engine::metrics::{Family, PipelineMetrics, SourceMeter};
use sluice_engine::record::{RecordBatch, now_ms};
use tokio::io::AsyncReadExt as _;

use crate::api::bound::{Bound, bind_udp};
use crate::api::certificate::ClientCertificate;
use crate::api::firehose::MAX_RECORD_BYTES;
use crate::api::listener::open_listener_warning;
use crate::api::queue::IngestQueue;
use crate::api::stream::{
    Accepted, Connection, ConnectionDefaults, ConnectionKeys, ConnectionPlaces, ConnectionSettings, HandshakeFailed,
    NotTaken, serve_connections,
};
use crate::api::{LogSlot, QueueReader, TlsFiles, bind};

/// Where the source listens unless told (Fluent Bit's syslog port; 514 needs root).
const DEFAULT_LISTEN: &str = "127.0.0.1:5140";
/// How much is read from a connection at once.
const READ_CHUNK: usize = 64 << 10;
/// Messages already received are taken together up to about this many bytes of records.
const GROUP_BYTES: usize = 4 << 20;
/// The largest UDP datagram.
const MAX_DATAGRAM: usize = 65_535;
/// The longest length prefix of an octet-counted message (`MSG-LEN` is at most this many digits).
const MAX_LENGTH_DIGITS: usize = 10;

/// The error code of messages that could not be made durable.
const LOG_FAILED: &str = "Syslog.LogFailed";

/// Datagrams the kernel dropped for the UDP socket.
const KERNEL_DROPPED: Family = Family {
    name: "SyslogKernelDroppedDatagrams",
    help: "Datagrams the kernel dropped for a UDP syslog source, its receive buffer full (said in the error log).",
};

/// Messages truncated for their length.
const TRUNCATED: Family = Family {
    name: "SyslogTruncatedMessages",
    help: "Syslog messages longer than max_message_kb, truncated to it (said in the error log).",
};

/// The source's keys.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SyslogConfig {
    listen: Option<String>,
    mode: Option<Mode>,
    tls: Option<TlsFiles>,
    max_message_kb: Option<u64>,
    max_connections: Option<u64>,
    idle_timeout_s: Option<u64>,
    max_inflight_mb: Option<u64>,
    timezone: Option<String>,
    receive_buffer_kb: Option<u64>,
}

/// The transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Mode {
    /// TCP, or TLS with `tls`.
    Tcp,
    /// UDP datagrams.
    Udp,
    /// RELP on TCP (or TLS with `tls`): each message acknowledged once durable.
    Relp,
}

/// The common keys' defaults.
const CONNECTIONS: ConnectionDefaults = ConnectionDefaults {
    listen: DEFAULT_LISTEN,
    max_connections: 1024,
    connections_hint: "concurrent TCP connections (default 1024)",
    idle_hint: "seconds a TCP connection may stay silent (default 300); clients connect again",
    least_inflight_mb: 8,
    inflight_hint: "the messages read together are queued together, up to 4 MiB",
};

/// Builds the source from `[sources.<name>]`.
pub fn configure(config: ConnectorConfig) -> Result<Arc<dyn Source>, Problems> {
    let table = &config.table;
    let places = ConnectionPlaces::of(&config);
    let timezone_span = table.value_span("timezone").unwrap_or(table.span.clone());
    let (message_at, buffer_at) = (table.key_at("max_message_kb"), table.key_at("receive_buffer_kb"));
    let udp_only = table.key_span("receive_buffer_kb");
    let tcp_only: Vec<(&str, std::ops::Range<usize>)> = ["tls", "max_connections", "idle_timeout_s"]
        .into_iter()
        .filter_map(|key| table.key_span(key).map(|span| (key, span)))
        .collect();
    let log = LogSlot::for_source(&config);
    let mut problems = Problems::default();
    let Some(c) = config.table.deserialize::<SyslogConfig>(&mut problems) else { return Err(problems) };
    let mode = c.mode.unwrap_or(Mode::Tcp);
    if mode == Mode::Udp {
        for (key, span) in tcp_only {
            problems.push(
                Diagnostic::new(span, format!("`{key}` is for TCP connections; this source has mode = \"udp\""))
                    .with_hint(if key == "tls" {
                        "syslog over TLS is TCP (RFC 5425): set mode = \"tcp\"; syslog over DTLS is not served"
                    } else {
                        "UDP has no connections: remove it, or set mode = \"tcp\""
                    }),
            );
        }
    }
    if let (Mode::Tcp | Mode::Relp, Some(span)) = (mode, udp_only) {
        let named = if mode == Mode::Relp { "relp" } else { "tcp" };
        problems.push(
            Diagnostic::new(span, format!("`receive_buffer_kb` is for UDP; this source has mode = \"{named}\""))
                .with_hint("TCP holds its senders back instead: remove it, or set mode = \"udp\""),
        );
    }
    let receive_buffer_kb = problems.take(
        c.receive_buffer_kb
            .map(|kb| {
                buffer_at.within(
                    Some(kb),
                    kb,
                    1..=1_048_576,
                    "KiB of datagrams the kernel holds for the source (UDP; its default is net.core.rmem_default, and net.core.rmem_max caps it)",
                )
            })
            .transpose(),
    );
    let keys = ConnectionKeys {
        listen: c.listen,
        max_connections: c.max_connections,
        idle_timeout_s: c.idle_timeout_s,
        max_inflight_mb: c.max_inflight_mb,
        tls: c.tls,
    };
    let connections = places.check(keys, &CONNECTIONS, &mut problems);
    let max_message_kb = problems.take(message_at.within(
        c.max_message_kb,
        64,
        1..=512,
        "KiB of one syslog message (default 64; RFC 5425 asks receivers for at least 2 KiB, and 8 KiB)",
    ));
    let timezone = problems.take(match c.timezone.as_deref() {
        None => Ok(chrono_tz::UTC),
        Some(name) => name.parse::<chrono_tz::Tz>().map_err(|_| {
            Diagnostic::new(timezone_span, format!("`{name}` is not a time zone"))
                .with_hint("an IANA time zone name, as the senders' clocks are set: \"UTC\", \"Europe/Berlin\", \"America/New_York\"")
        }),
    });
    let (connections, max_message_kb, timezone, receive_buffer_kb) =
        problems.finish((|| Some((connections?, max_message_kb?, timezone?, receive_buffer_kb?)))())?;
    let ConnectionSettings { listen, max_connections, idle_timeout, max_inflight, tls } = connections;
    Ok(Arc::new(SyslogSource {
        listen,
        mode,
        tls,
        max_connections,
        receive_buffer: receive_buffer_kb.map(|kb| usize::try_from(kb << 10).unwrap_or(usize::MAX)),
        shared: Arc::new(Shared {
            queue: Arc::new(IngestQueue::new(max_inflight)),
            log,
            max_message: usize::try_from(max_message_kb << 10).unwrap_or(usize::MAX),
            idle_timeout,
            timezone,
            metrics: OnceLock::new(),
        }),
    }))
}

/// The configured source.
#[derive(Debug)]
struct SyslogSource {
    listen: SocketAddr,
    mode: Mode,
    tls: Option<TlsFiles>,
    max_connections: usize,
    /// `receive_buffer_kb` (UDP), in bytes.
    receive_buffer: Option<usize>,
    shared: Arc<Shared>,
}

/// What the connections (or the UDP socket) work with.
#[derive(Debug)]
struct Shared {
    queue: Arc<IngestQueue>,
    log: LogSlot,
    max_message: usize,
    idle_timeout: Duration,
    /// The zone of RFC 3164 dates.
    timezone: chrono_tz::Tz,
    metrics: OnceLock<(Arc<PipelineMetrics>, SourceMeter)>,
}

impl Source for SyslogSource {
    fn describe(&self) -> String {
        let scheme = match (self.mode, &self.tls) {
            (Mode::Udp, _) => "udp",
            (Mode::Tcp, Some(_)) => "tls",
            (Mode::Tcp, None) => "tcp",
            (Mode::Relp, Some(_)) => "relp+tls",
            (Mode::Relp, None) => "relp",
        };
        format!("syslog: RFC 5424 and 3164 messages on {scheme}://{}", self.listen)
    }

    fn is_finite(&self) -> bool {
        false
    }

    /// Firehose's: a message over it as JSON goes to the error output.
    fn max_record_bytes(&self) -> Option<usize> {
        Some(MAX_RECORD_BYTES)
    }

    /// The address (TCP), and the log's encryption key when it has one.
    fn check(&self) -> Option<futures::future::BoxFuture<'static, Result<(), SourceError>>> {
        match self.mode {
            Mode::Tcp | Mode::Relp => self.shared.log.check_with_listener(self.listen),
            Mode::Udp => self.shared.log.check(),
        }
    }

    fn prepare(&self, ctx: &PrepareContext) -> Result<(), SourceError> {
        let authenticated = self.tls.as_ref().is_some_and(TlsFiles::verifies_clients);
        let how = match self.mode {
            Mode::Tcp | Mode::Relp => "set `tls` with `client_ca` (clients with certificates)",
            Mode::Udp => "syslog over UDP has no authentication: use mode = \"tcp\" with `tls` and `client_ca`",
        };
        if let Some(warning) = open_listener_warning("syslog", self.listen, authenticated, how) {
            tracing::warn!("{warning}");
        }
        let _ = self.shared.metrics.set((Arc::clone(&ctx.metrics), ctx.meter.clone()));
        if let Some(log) = self.shared.log.open(&self.shared.queue, &ctx.metrics)? {
            log.follow(Arc::clone(&ctx.delivered), Arc::clone(&ctx.metrics));
        }
        let shared = Arc::clone(&self.shared);
        match self.mode {
            Mode::Tcp | Mode::Relp => {
                let bound = bind(self.listen)?;
                let tls = crate::api::stream::serve_tls(self.tls.as_ref(), ctx)?;
                let relp = self.mode == Mode::Relp;
                ctx.runtime.spawn(serve_tcp(bound, tls, shared, (self.max_connections, relp), ctx.stop.clone()));
            }
            Mode::Udp => {
                let Bound { socket, serving } = bind_udp(self.listen)?;
                if let Some(bytes) = self.receive_buffer {
                    size_receive_buffer(&socket, bytes)?;
                }
                let stop = ctx.stop.clone();
                ctx.runtime.spawn(async move {
                    match tokio::net::UdpSocket::from_std(socket) {
                        Ok(socket) => serve_udp(socket, &shared, &stop).await,
                        Err(e) => tracing::error!(error = %e, "syslog: cannot serve the UDP socket"),
                    }
                    drop(serving);
                    shared.queue.close();
                });
            }
        }
        tracing::info!(address = %self.listen, mode = ?self.mode, tls = self.tls.is_some(), "syslog: listening");
        Ok(())
    }

    fn finish(&self, _stopped: bool) {
        if let Some(log) = self.shared.log.get() {
            log.finish();
        }
    }

    fn open(&self, _ctx: &SourceContext) -> Result<Box<dyn SourceReader>, SourceError> {
        Ok(Box::new(QueueReader::new(Arc::clone(&self.shared.queue), self.shared.log.get())))
    }
}

impl Shared {
    /// Queues what a connection or the socket brought; why not when it could not be taken (the
    /// run stopping; the log failing, said: the message is returned).
    async fn take(&self, batch: RecordBatch, peer: SocketAddr, stop: &StopSignal) -> Result<(), Option<String>> {
        if batch.is_empty() {
            return Ok(());
        }
        let metrics = self.metrics.get().map(|(metrics, _)| metrics);
        match crate::api::stream::take(&self.queue, &self.log, metrics, vec![batch], stop).await {
            Ok(()) => Ok(()),
            Err(NotTaken::Stopping) => Err(None),
            Err(NotTaken::Log(why)) => {
                let message = format!("messages from {peer} could not be made durable: {why}; they are lost");
                self.report(Level::Error, LOG_FAILED, &message);
                Err(Some(message))
            }
        }
    }

    /// Records a TCP connection from `peer` in the pipeline's audit trail (when it keeps one), as
    /// `eventSource` `syslog.sluice`, `eventName` `SendMessages`: the client's certificate (mutual
    /// TLS), the messages it brought, taken and truncated, and a failure to make them durable. A
    /// connection that brought nothing is not recorded.
    fn audit(&self, peer: SocketAddr, certificate: Option<&ClientCertificate>, brought: &Brought) {
        if brought.taken == 0 && brought.failed.is_none() {
            return;
        }
        let Some((metrics, _)) = self.metrics.get() else { return };
        metrics.audit(|trail| {
            let identity = serde_json::json!({"type": "Unknown"});
            let identity = match certificate {
                Some(certificate) => certificate.add_to(identity),
                None => identity,
            };
            let event = sluice_engine::audit::AuditEvent::api_call(
                "syslog.sluice",
                "SendMessages",
                trail.region(),
                &uuid::Uuid::new_v4().to_string(),
            )
            .from_caller(Some(peer.ip().to_string()), None)
            .identity(identity)
            .parameters(json!({
                "recordCount": brought.taken,
                "bytes": brought.bytes,
                "truncatedMessages": brought.truncated,
                "tls": brought.tls,
            }));
            match &brought.failed {
                Some(message) => event.error(LOG_FAILED, message),
                None => event,
            }
        });
    }

    /// Says `message` in the log and the pipeline's error log (`code`).
    fn report(&self, level: Level, code: &str, message: &str) {
        tracing::warn!("syslog: {message}");
        if let Some((_, meter)) = self.metrics.get() {
            meter.report(level, code, message);
        }
    }

    /// Says that the kernel dropped `count` datagrams for the UDP socket (none: nothing said).
    fn say_kernel_drops(&self, count: u64) {
        if count == 0 {
            return;
        }
        let message = format!(
            "the kernel dropped {count} datagram(s) sent to this source: its receive buffer was full, \
             faster than they were read (raise `receive_buffer_kb`, and net.core.rmem_max with it)"
        );
        self.report(Level::Warn, "Syslog.DatagramsDropped", &message);
        if let Some((_, meter)) = self.metrics.get() {
            meter.count(KERNEL_DROPPED, count);
        }
    }

    /// Says that a message of at least `length` bytes from `peer`, longer than `max_message_kb`,
    /// was truncated to it; counts it.
    fn say_truncated(&self, peer: SocketAddr, length: usize) {
        let message = format!(
            "a message of {length} bytes or more from {peer} is longer than `max_message_kb` ({} bytes): \
             truncated to it",
            self.max_message
        );
        self.report(Level::Warn, "Syslog.MessageTruncated", &message);
        if let Some((_, meter)) = self.metrics.get() {
            meter.count(TRUNCATED, 1);
        }
    }
}

/// Serves TCP (or TLS) connections, of RELP when `relp`, until `stop`, then closes the queue once
/// they have ended.
async fn serve_tcp(
    bound: Bound,
    tls: Option<axum_server::tls_rustls::RustlsConfig>,
    shared: Arc<Shared>,
    (max_connections, relp): (usize, bool),
    stop: StopSignal,
) {
    let (each, stopping, tls_served) = (Arc::clone(&shared), stop.clone(), tls.is_some());
    serve_connections(bound, tls, max_connections, stop, "syslog", move |accepted| {
        let (shared, stop) = (Arc::clone(&each), stopping.clone());
        async move {
            match accepted {
                Ok(Accepted { stream, peer, certificate }) => {
                    let mut brought = Brought { tls: tls_served, ..Brought::default() };
                    let conversed = match relp {
                        true => relp_converse(stream, peer, &shared, &stop, &mut brought).await,
                        false => converse(stream, peer, &shared, &stop, &mut brought).await,
                    };
                    if let Err(e) = conversed {
                        tracing::debug!(%peer, error = %e, "syslog: connection ended");
                    }
                    shared.audit(peer, certificate.as_deref(), &brought);
                }
                Err((peer, HandshakeFailed::Io(e))) => {
                    tracing::debug!(%peer, error = %e, "syslog: TLS handshake failed");
                }
                Err((peer, HandshakeFailed::TimedOut)) => {
                    tracing::debug!(%peer, "syslog: TLS handshake timed out");
                }
            }
        }
    })
    .await;
    shared.queue.close();
}

/// What a TCP connection brought, for the audit trail.
#[derive(Debug, Default)]
struct Brought {
    /// Over TLS.
    tls: bool,
    /// Messages taken (one record each).
    taken: u64,
    /// Their records' bytes.
    bytes: u64,
    /// Messages truncated for their length (among those taken).
    truncated: u64,
    /// Why what it brought last could not be made durable.
    failed: Option<String>,
}

impl Brought {
    /// Takes `batch` into the queue, counting it; `false` when the connection is to end.
    async fn take(&mut self, shared: &Shared, batch: RecordBatch, peer: SocketAddr, stop: &StopSignal) -> bool {
        let (taken, bytes) = (batch.len() as u64, batch.byte_len() as u64);
        match shared.take(batch, peer, stop).await {
            Ok(()) => {
                self.taken += taken;
                self.bytes += bytes;
                true
            }
            Err(failed) => {
                self.failed = failed;
                false
            }
        }
    }
}

/// Reads a connection's messages until it ends (or is silent past the idle timeout), taking those
/// read together at once, counting them in `brought`.
async fn converse(
    mut stream: Box<dyn Connection>,
    peer: SocketAddr,
    shared: &Shared,
    stop: &StopSignal,
    brought: &mut Brought,
) -> std::io::Result<()> {
    let mut bytes: Vec<u8> = Vec::with_capacity(READ_CHUNK);
    let mut framer = Framer::default();
    loop {
        let more = read_more(&mut stream, &mut bytes, shared.idle_timeout, stop).await?;
        let mut batch = RecordBatch::with_capacity(now_ms(), 0);
        let mut start = 0;
        while let Some(frame) = framer.next(&bytes[start..], shared.max_message, !more) {
            match frame {
                Frame::Message { skip, message } => {
                    push_message(&mut batch, &bytes[start + message.0..start + message.1], peer, shared);
                    start += skip;
                }
                Frame::TooLong { skip, length, kept } => {
                    push_message(&mut batch, &bytes[start + kept.0..start + kept.1], peer, shared);
                    shared.say_truncated(peer, length);
                    brought.truncated += 1;
                    start += skip;
                }
                Frame::Skipped { skip } => start += skip,
            }
            if batch.byte_len() >= GROUP_BYTES && !brought.take(shared, std::mem::take(&mut batch), peer, stop).await {
                return Ok(());
            }
        }
        bytes.drain(..start);
        if !brought.take(shared, batch, peer, stop).await || !more {
            return Ok(());
        }
    }
}

/// Reads more of `stream` into `bytes`: `false` once the client closed it, or the run stops and
/// nothing more has arrived.
async fn read_more(
    stream: &mut Box<dyn Connection>,
    bytes: &mut Vec<u8>,
    idle: Duration,
    stop: &StopSignal,
) -> std::io::Result<bool> {
    use futures::FutureExt as _;
    bytes.reserve(READ_CHUNK);
    tokio::select! {
        biased;
        () = stop.stopped() => match stream.read_buf(bytes).now_or_never() {
            Some(read) => read.map(|n| n > 0),
            None => Ok(false),
        },
        read = tokio::time::timeout(idle, stream.read_buf(bytes)) => match read {
            Ok(read) => read.map(|n| n > 0),
            Err(_) => Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "silent past idle_timeout_s")),
        },
    }
}

/// What sluice says of itself in a RELP session's `open` answer.
const RELP_OFFERS: &str = concat!(
    "200 OK\nrelp_version=0\nrelp_software=sluice,",
    env!("CARGO_PKG_VERSION"),
    ",https://github.com/sluice\ncommands=syslog"
);
/// The most data a RELP frame of another command than `syslog` may have (`open`'s offers).
const RELP_MAX_OTHER_DATA: usize = 64 << 10;
/// The longest header a RELP frame may have: `TXNR SP COMMAND SP DATALEN` (9 digits, 32 letters).
const RELP_MAX_HEADER: usize = 9 + 1 + 32 + 1 + 9;

/// Serves one RELP session (librelp's protocol, rsyslog's `omrelp`): `open` is answered with
/// sluice's offers, each `syslog` frame's message is taken and answered `200 OK` only once it is
/// queued and as durable as the pipeline asks (those read together taken at once, their answers
/// sent together, in order), `close` is answered and ends the session. A frame that is not RELP's,
/// a `syslog` before `open`, or a failure to take the messages ends the connection unanswered: the
/// client sends its unanswered messages again on its next connection. At a stop, the session is
/// ended with the `serverclose` hint after the messages received are taken and answered.
async fn relp_converse(
    mut stream: Box<dyn Connection>,
    peer: SocketAddr,
    shared: &Shared,
    stop: &StopSignal,
    brought: &mut Brought,
) -> std::io::Result<()> {
    use tokio::io::AsyncWriteExt as _;
    let mut bytes: Vec<u8> = Vec::with_capacity(READ_CHUNK);
    let (mut framer, mut opened) = (RelpFramer::default(), false);
    loop {
        let more = read_more(&mut stream, &mut bytes, shared.idle_timeout, stop).await?;
        let mut batch = RecordBatch::with_capacity(now_ms(), 0);
        let (mut start, mut answers, mut closing) = (0, Vec::new(), false);
        while !closing {
            let frame = match framer.next(&bytes[start..], shared.max_message) {
                Ok(Some(frame)) => frame,
                Ok(None) => break,
                Err(bad) => {
                    shared.report(
                        Level::Warn,
                        "Syslog.RelpRefused",
                        &format!("RELP from {peer}: {bad}: connection closed"),
                    );
                    return Ok(());
                }
            };
            let at = |range: (usize, usize)| &bytes[start + range.0..start + range.1];
            match frame {
                RelpFrame::Skipped { skip } => start += skip,
                RelpFrame::Command { txnr, command, data, skip } => {
                    let answer: &[u8] = match (at(command), opened) {
                        (b"open", false) => {
                            opened = true;
                            RELP_OFFERS.as_bytes()
                        }
                        (b"syslog", true) => {
                            push_message(&mut batch, at(data), peer, shared);
                            b"200 OK"
                        }
                        (b"close", _) => {
                            closing = true;
                            b""
                        }
                        (b"open", true) => b"500 protocol error: connection already open",
                        (command, _) if opened => {
                            let command = String::from_utf8_lossy(command);
                            shared.report(
                                Level::Warn,
                                "Syslog.RelpRefused",
                                &format!("RELP from {peer}: unknown command `{command}` (answered 500)"),
                            );
                            b"500 command not supported"
                        }
                        (command, _) => {
                            let command = String::from_utf8_lossy(command);
                            let message = format!("RELP from {peer}: `{command}` before `open`: connection closed");
                            shared.report(Level::Warn, "Syslog.RelpRefused", &message);
                            return Ok(());
                        }
                    };
                    relp_answer(&mut answers, txnr, answer);
                    start += skip;
                }
                RelpFrame::Truncated { txnr, length, kept, skip } => {
                    push_message(&mut batch, at(kept), peer, shared);
                    shared.say_truncated(peer, length);
                    brought.truncated += 1;
                    relp_answer(&mut answers, txnr, b"200 OK");
                    start += skip;
                }
            }
        }
        bytes.drain(..start);
        // The messages before their answers: an answer says its message is durable.
        if !brought.take(shared, batch, peer, stop).await {
            return Ok(());
        }
        if !answers.is_empty() {
            stream.write_all(&answers).await?;
            stream.flush().await?;
        }
        if closing {
            return Ok(());
        }
        if !more {
            if stop.is_stopped() {
                // (A hint: the client may be gone already.)
                let _ = stream.write_all(b"0 serverclose 0\n").await;
            }
            return Ok(());
        }
    }
}

/// Appends the answer to transaction `txnr` (`TXNR rsp DATALEN [SP DATA] LF`) to `out`.
fn relp_answer(out: &mut Vec<u8>, txnr: u32, data: &[u8]) {
    out.extend_from_slice(format!("{txnr} rsp {}", data.len()).as_bytes());
    if !data.is_empty() {
        out.push(b' ');
        out.extend_from_slice(data);
    }
    out.push(b'\n');
}

/// What comes next in a RELP session's bytes; ranges are (start, end) in the bytes given.
#[derive(Debug, PartialEq, Eq)]
enum RelpFrame {
    /// A whole frame: its transaction number, command and data; `skip` bytes long.
    Command { txnr: u32, command: (usize, usize), data: (usize, usize), skip: usize },
    /// A frame whose data is longer than allowed (`length` bytes): its first `max` bytes at
    /// `kept`; `skip` bytes of it are passed over here, the rest (with its trailer) by the frames
    /// after it.
    Truncated { txnr: u32, length: usize, kept: (usize, usize), skip: usize },
    /// Bytes passed over: the rest of a frame too long.
    Skipped { skip: usize },
}

/// Why bytes are not a RELP frame.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
enum RelpBad {
    /// The header is not `TXNR SP COMMAND SP DATALEN`.
    #[error("a frame's header is not `TXNR SP COMMAND SP DATALEN`")]
    Header,
    /// The data is not followed by a line feed.
    #[error("a frame's data is not followed by its trailer (a line feed)")]
    Trailer,
}

/// RELP's framing; keeps its place in a frame too long.
#[derive(Debug, Default)]
struct RelpFramer {
    /// Bytes of a frame too long (its data's rest and its trailer) still to pass over.
    passing: usize,
}

impl RelpFramer {
    /// The next frame in `bytes` (which start where the last one ended), if it is whole.
    fn next(&mut self, bytes: &[u8], max: usize) -> Result<Option<RelpFrame>, RelpBad> {
        if self.passing > 0 {
            let skip = self.passing.min(bytes.len());
            self.passing -= skip;
            return Ok((skip > 0).then_some(RelpFrame::Skipped { skip }));
        }
        let mut fields = [(0usize, 0usize); 3];
        let mut at = 0;
        for (i, field) in fields.iter_mut().enumerate() {
            let rest = bytes.get(at..).unwrap_or_default();
            let len = match i {
                1 => rest.iter().take(33).take_while(|b| b.is_ascii_alphabetic()).count(),
                _ => rest.iter().take(10).take_while(|b| b.is_ascii_digit()).count(),
            };
            let longest = if i == 1 { 32 } else { 9 };
            match rest.get(len) {
                // Wait for more of the header, unless it is already too long to be one.
                None if at + len <= RELP_MAX_HEADER => return Ok(None),
                Some(b' ') if (1..=longest).contains(&len) => {}
                Some(b'\n') if i == 2 && (1..=longest).contains(&len) => {}
                _ => return Err(RelpBad::Header),
            }
            *field = (at, at + len);
            at += len + 1;
        }
        let number = |(start, end): (usize, usize)| {
            std::str::from_utf8(&bytes[start..end]).ok().and_then(|n| n.parse::<u32>().ok()).ok_or(RelpBad::Header)
        };
        let (txnr, length) = (number(fields[0])?, number(fields[2])? as usize);
        let after_length = fields[2].1;
        if length == 0 {
            // `TXNR SP COMMAND SP 0 LF`: no data.
            return match bytes[after_length] {
                b'\n' => Ok(Some(RelpFrame::Command { txnr, command: fields[1], data: (at, at), skip: at })),
                _ => Err(RelpBad::Header),
            };
        }
        if bytes[after_length] != b' ' {
            return Err(RelpBad::Header);
        }
        let data_start = after_length + 1;
        if length > max && &bytes[fields[1].0..fields[1].1] != b"syslog" {
            // (The other commands' data, `open`'s offers, is a few lines.)
            if length > RELP_MAX_OTHER_DATA {
                return Err(RelpBad::Header);
            }
        } else if length > max {
            // Its first `max` bytes are waited for (they are kept), no more.
            if bytes.len() < data_start + max {
                return Ok(None);
            }
            let here = (bytes.len() - data_start).min(length + 1);
            self.passing = length + 1 - here;
            let kept = (data_start, data_start + max);
            return Ok(Some(RelpFrame::Truncated { txnr, length, kept, skip: data_start + here }));
        }
        let end = data_start + length;
        match bytes.get(end) {
            None => Ok(None),
            Some(b'\n') => {
                Ok(Some(RelpFrame::Command { txnr, command: fields[1], data: (data_start, end), skip: end + 1 }))
            }
            Some(_) => Err(RelpBad::Trailer),
        }
    }
}

/// What comes next in a connection's bytes.
#[derive(Debug, PartialEq, Eq)]
enum Frame {
    /// A message at `message` (start, end), the frame `skip` bytes long.
    Message { skip: usize, message: (usize, usize) },
    /// A message longer than allowed, at least `length` bytes (exactly, when octet-counted), its
    /// first `max` bytes at `kept` (start, end): `skip` bytes of it are passed over here, the rest
    /// (if any) by the frames after it.
    TooLong { skip: usize, length: usize, kept: (usize, usize) },
    /// Bytes passed over: the rest of a message too long, or blank lines.
    Skipped { skip: usize },
}

/// RFC 6587's two framings, told apart per message; keeps its place in a message too long.
#[derive(Debug, Default)]
struct Framer {
    /// Bytes of an octet-counted message too long still to pass over.
    passing: usize,
    /// Passing over a line too long until its line feed.
    passing_line: bool,
}

impl Framer {
    /// The next frame in `bytes` (which start where the last frame ended), if it is whole;
    /// `ended` says the connection has closed (the rest is a last message without a line feed).
    fn next(&mut self, bytes: &[u8], max: usize, ended: bool) -> Option<Frame> {
        if self.passing > 0 {
            let skip = self.passing.min(bytes.len());
            self.passing -= skip;
            return (skip > 0).then_some(Frame::Skipped { skip });
        }
        if self.passing_line {
            return match memchr::memchr2(b'\n', 0, bytes) {
                Some(at) => {
                    self.passing_line = false;
                    Some(Frame::Skipped { skip: at + 1 })
                }
                None => (!bytes.is_empty()).then_some(Frame::Skipped { skip: bytes.len() }),
            };
        }
        let first = *bytes.first()?;
        if first == b'\n' || first == b'\r' || first == 0 {
            let blank = bytes.iter().take_while(|b| matches!(b, b'\n' | b'\r' | 0)).count();
            return Some(Frame::Skipped { skip: blank });
        }
        if first.is_ascii_digit() {
            // Octet counting: `MSG-LEN SP SYSLOG-MSG`.
            let digits = bytes.iter().take(MAX_LENGTH_DIGITS + 1).take_while(|b| b.is_ascii_digit()).count();
            match bytes.get(digits) {
                Some(b' ') if digits <= MAX_LENGTH_DIGITS => {
                    let length: usize = std::str::from_utf8(&bytes[..digits]).ok()?.parse().ok()?;
                    let begins = digits + 1;
                    if length == 0 {
                        // (RFC 6587's MSG-LEN starts with a nonzero digit: `0 ` carries no message.)
                        return Some(Frame::Skipped { skip: begins });
                    }
                    if length > max {
                        // Its first `max` bytes are waited for (they are kept), no more.
                        if bytes.len() < begins + max && !ended {
                            return None;
                        }
                        let here = (bytes.len() - begins).min(length);
                        self.passing = length - here;
                        let kept = (begins, begins + here.min(max));
                        return Some(Frame::TooLong { skip: begins + here, length, kept });
                    }
                    return (bytes.len() >= begins + length)
                        .then_some(Frame::Message { skip: begins + length, message: (begins, begins + length) });
                }
                // Not a length (a message that begins with a digit, line-framed): read as a line.
                Some(_) => {}
                None if !ended => return None,
                None => {}
            }
        }
        match memchr::memchr2(b'\n', 0, bytes) {
            Some(at) if at > max => Some(Frame::TooLong { skip: at + 1, length: at, kept: (0, max) }),
            Some(at) => {
                let end = if at > 0 && bytes[at - 1] == b'\r' { at - 1 } else { at };
                Some(Frame::Message { skip: at + 1, message: (0, end) })
            }
            None if bytes.len() > max => {
                self.passing_line = true;
                Some(Frame::TooLong { skip: bytes.len(), length: bytes.len(), kept: (0, max) })
            }
            None if ended => Some(Frame::Message { skip: bytes.len(), message: (0, bytes.len()) }),
            None => None,
        }
    }
}

/// Receives datagrams until `stop`, each one message; those waiting together are taken at once.
/// At the stop, the datagrams already in the socket's buffer are taken too. Each second, and at
/// the end, the datagrams the kernel dropped for the socket (its buffer full) are said and counted.
async fn serve_udp(socket: tokio::net::UdpSocket, shared: &Shared, stop: &StopSignal) {
    let mut datagram = vec![0u8; MAX_DATAGRAM];
    let mut dropped = KernelDrops::of(&socket);
    let mut look = tokio::time::interval(Duration::from_secs(1));
    look.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let (length, peer) = tokio::select! {
            () = stop.stopped() => break,
            _ = look.tick() => {
                shared.say_kernel_drops(dropped.as_mut().map_or(0, KernelDrops::since_last));
                continue;
            }
            received = socket.recv_from(&mut datagram) => match received {
                Ok(received) => received,
                Err(e) => {
                    tracing::debug!(error = %e, "syslog: cannot receive a datagram");
                    continue;
                }
            },
        };
        let mut batch = RecordBatch::with_capacity(now_ms(), 0);
        push_datagram(&mut batch, &datagram[..length], peer, shared);
        if !take_waiting(&socket, &mut datagram, batch, peer, shared, stop).await {
            break;
        }
    }
    // The datagrams received before the stop.
    while let Ok((length, peer)) = socket.try_recv_from(&mut datagram) {
        let mut batch = RecordBatch::with_capacity(now_ms(), 0);
        push_datagram(&mut batch, &datagram[..length], peer, shared);
        if !take_waiting(&socket, &mut datagram, batch, peer, shared, stop).await {
            break;
        }
    }
    shared.say_kernel_drops(dropped.as_mut().map_or(0, KernelDrops::since_last));
}

/// Asks the kernel for a receive buffer of `bytes` for `socket`; says when it gives less (Linux
/// caps it at net.core.rmem_max, and reports twice what it was asked, its bookkeeping included).
fn size_receive_buffer(socket: &std::net::UdpSocket, bytes: usize) -> Result<(), SourceError> {
    let socket = socket2::SockRef::from(socket);
    let io =
        |source| SourceError::Io { context: format!("cannot size the UDP receive buffer to {bytes} bytes"), source };
    socket.set_recv_buffer_size(bytes).map_err(io)?;
    let given = socket.recv_buffer_size().map_err(io)?;
    if given < bytes {
        tracing::warn!(
            asked = bytes,
            given,
            "syslog: the kernel gave the UDP socket a smaller receive buffer than `receive_buffer_kb` asks: raise net.core.rmem_max"
        );
    }
    Ok(())
}

/// Adds the datagrams already waiting to `batch` (up to [`GROUP_BYTES`]) and takes them all;
/// `false` when they could not be taken.
async fn take_waiting(
    socket: &tokio::net::UdpSocket,
    datagram: &mut [u8],
    mut batch: RecordBatch,
    peer: SocketAddr,
    shared: &Shared,
    stop: &StopSignal,
) -> bool {
    while batch.byte_len() < GROUP_BYTES {
        match socket.try_recv_from(datagram) {
            Ok((length, peer)) => push_datagram(&mut batch, &datagram[..length], peer, shared),
            Err(_) => break,
        }
    }
    shared.take(batch, peer, stop).await.is_ok()
}

/// The count of datagrams the kernel dropped for a UDP socket because its receive buffer was full,
/// read from `/proc/net/udp` and `/proc/net/udp6` by the socket's inode (Linux; elsewhere, or
/// when they cannot be read, none is said). What was said of a socket is remembered across runs
/// ([`SAID_DROPS`]): a socket kept through a `sluice serve` reload has the drops of the gap
/// between the runs said by the next run, and none said twice.
struct KernelDrops {
    inode: u64,
}

/// The drops said so far of each UDP socket this process read, by inode.
static SAID_DROPS: std::sync::Mutex<std::collections::BTreeMap<u64, u64>> =
    std::sync::Mutex::new(std::collections::BTreeMap::new());

impl KernelDrops {
    /// The drops of `socket`, from what was said of it before (a new socket: from 0).
    fn of(socket: &impl std::os::fd::AsRawFd) -> Option<Self> {
        use std::os::unix::fs::MetadataExt as _;
        let inode = std::fs::metadata(format!("/proc/self/fd/{}", socket.as_raw_fd())).ok()?.ino();
        let now = udp_drops(inode)?;
        let mut said = SAID_DROPS.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        // (A count above the socket's is another, closed socket's whose inode was used again.)
        if said.get(&inode).is_some_and(|said| *said > now) {
            said.remove(&inode);
        }
        Some(KernelDrops { inode })
    }

    /// The datagrams dropped and not yet said.
    fn since_last(&mut self) -> u64 {
        let Some(now) = udp_drops(self.inode) else { return 0 };
        let mut said = SAID_DROPS.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let before = said.insert(self.inode, now).unwrap_or(0);
        now.saturating_sub(before)
    }
}

/// The `drops` of the UDP socket `inode` in the kernel's socket tables (`sl local_address
/// rem_address st tx_queue:rx_queue tr:tm->when retrnsmt uid timeout inode ref pointer drops`).
fn udp_drops(inode: u64) -> Option<u64> {
    ["/proc/net/udp", "/proc/net/udp6"].into_iter().find_map(|table| {
        let text = std::fs::read_to_string(table).ok()?;
        text.lines().skip(1).find_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            (fields.get(9)?.parse::<u64>().ok()? == inode).then(|| fields.get(12)?.parse().ok())?
        })
    })
}

/// Appends a datagram's message to `batch` (its trailing line ends and NULs dropped; an empty one
/// is nothing; one too long is truncated to `max_message_kb`, said).
fn push_datagram(batch: &mut RecordBatch, datagram: &[u8], peer: SocketAddr, shared: &Shared) {
    let datagram = match datagram.get(..shared.max_message) {
        Some(kept) if kept.len() < datagram.len() => {
            shared.say_truncated(peer, datagram.len());
            kept
        }
        _ => datagram,
    };
    let end = datagram.iter().rposition(|b| !matches!(b, b'\n' | b'\r' | 0)).map_or(0, |i| i + 1);
    if end > 0 {
        push_message(batch, &datagram[..end], peer, shared);
    }
}

/// Appends a message's record to `batch` (one over a record's 1,000 KiB as JSON too, which the
/// engine sends to the error output: its message's escapes can make it longer than
/// `max_message_kb`).
fn push_message(batch: &mut RecordBatch, message: &[u8], peer: SocketAddr, shared: &Shared) {
    let record = record_of(&String::from_utf8_lossy(message), peer.ip(), shared.timezone);
    batch.push(record.to_string().as_bytes());
}

/// The year of an RFC 3164 date (which has none): this year (UTC), unless that puts it more than
/// a day ahead of now (a December message read in January), then last year.
fn year_of((month, day, hour, minute, second): syslog_loose::IncompleteDate) -> i32 {
    use chrono::{Datelike as _, TimeZone as _};
    let now = chrono::Utc::now();
    let this_year = now.year();
    let dated = chrono::Utc.with_ymd_and_hms(this_year, month, day, hour, minute, second).single();
    match dated {
        Some(dated) if dated > now + chrono::Duration::days(1) => this_year - 1,
        _ => this_year,
    }
}

/// A message's PRI (`<0>` to `<191>`) and what follows it, if it begins with one.
fn leading_pri(text: &str) -> Option<(u8, &str)> {
    let rest = text.strip_prefix('<')?;
    let (digits, rest) = rest.split_once('>')?;
    if digits.is_empty() || digits.len() > 3 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let pri: u8 = digits.parse().ok().filter(|pri| *pri <= 191)?;
    Some((pri, rest))
}

/// A message parsed, a date without a zone read at `offset`.
fn parsed(text: &str, offset: chrono::FixedOffset) -> syslog_loose::Message<&str> {
    use syslog_loose::Variant;
    let parse = |text| syslog_loose::parse_message_with_year_tz(text, year_of, Some(offset), Variant::Either);
    let mut message = parse(text);
    // A PRI and then neither format (`<11>payment declined`, as Python's `SysLogHandler` sends):
    // the PRI still says facility and severity, and the rest is read without it.
    if message.facility.is_none()
        && let Some((pri, rest)) = leading_pri(text)
    {
        message = parse(rest);
        if message.facility.is_none() {
            (message.facility, message.severity) = syslog_loose::decompose_pri(pri);
        }
    }
    message
}

/// A message as the JSON record it becomes (a date without a zone read in `timezone`).
fn record_of(text: &str, source: std::net::IpAddr, timezone: chrono_tz::Tz) -> Value {
    use chrono::TimeZone as _;
    use syslog_loose::{ProcId, Protocol};
    let utc = chrono::Offset::fix(&chrono::Utc);
    let message = parsed(text, utc);
    let mut timestamp = message.timestamp.map(|t| t.with_timezone(&chrono::Utc));
    // A date that names no zone (RFC 3164's) is a wall-clock time of the sender's: read in
    // `timezone`. (It names none when reading it at another offset gives another instant.)
    if timezone != chrono_tz::UTC
        && let Some(read) = message.timestamp
        && let Some(hour_east) = chrono::FixedOffset::east_opt(3600)
        && parsed(text, hour_east).timestamp != Some(read)
    {
        timestamp = timezone.from_local_datetime(&read.naive_utc()).earliest().map(|t| t.with_timezone(&chrono::Utc));
    }
    let structured: serde_json::Map<String, Value> = message
        .structured_data
        .iter()
        .map(|element| {
            let params: serde_json::Map<String, Value> =
                element.params().map(|(name, value)| (name.to_string(), Value::String(value))).collect();
            (element.id.to_string(), Value::Object(params))
        })
        .collect();
    json!({
        "source_ip": source.to_string(),
        "protocol": match message.protocol {
            Protocol::RFC5424(_) => "rfc5424",
            Protocol::RFC3164 => "rfc3164",
        },
        "facility": message.facility.map(|f| f.as_str()),
        "severity": message.severity.map(|s| s.as_str()),
        "timestamp": timestamp.map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)),
        "hostname": message.hostname,
        "appname": message.appname,
        "procid": message.procid.map(|p| match p {
            ProcId::PID(pid) => pid.to_string(),
            ProcId::Name(name) => name.to_string(),
        }),
        "msgid": message.msgid,
        "structured_data": structured,
        "message": message.msg,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The frames of `input` as a connection delivers it in `pieces` reads, the messages as text.
    fn frames(pieces: &[&[u8]], max: usize) -> Vec<String> {
        let mut framer = Framer::default();
        let (mut bytes, mut said) = (Vec::new(), Vec::new());
        for (i, piece) in pieces.iter().enumerate() {
            bytes.extend_from_slice(piece);
            let ended = i + 1 == pieces.len();
            let mut start = 0;
            while let Some(frame) = framer.next(&bytes[start..], max, ended) {
                match frame {
                    Frame::Message { skip, message } => {
                        said.push(String::from_utf8_lossy(&bytes[start + message.0..start + message.1]).into_owned());
                        start += skip;
                    }
                    Frame::TooLong { skip, length, kept } => {
                        let kept = String::from_utf8_lossy(&bytes[start + kept.0..start + kept.1]);
                        said.push(format!("<too long: {length}> {kept}"));
                        start += skip;
                    }
                    Frame::Skipped { skip } => start += skip,
                }
            }
            bytes.drain(..start);
        }
        said
    }

    /// The kernel's drops of a socket are said once: the first look says those since it was bound,
    /// a look of the next run (a socket kept through a reload) those since the last look, none twice.
    #[test]
    fn kernel_drops_are_said_once_across_runs() {
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        socket2::SockRef::from(&socket).set_recv_buffer_size(1024).unwrap();
        let address = socket.local_addr().unwrap();
        let sender = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let burst = |n: usize| (0..n).for_each(|_| drop(sender.send_to(&[b'x'; 500], address)));
        // Dropped before any run looked (the first run's start, or the gap of a reload).
        burst(200);
        let mut first = KernelDrops::of(&socket).expect("/proc/net/udp");
        let said_first = first.since_last();
        assert!(said_first > 100, "{said_first}");
        assert_eq!(first.since_last(), 0);
        burst(200);
        let mut next = KernelDrops::of(&socket).unwrap();
        let said_next = next.since_last();
        assert!(said_next > 100, "{said_next}");
        assert_eq!((first.since_last(), next.since_last()), (0, 0));
        assert_eq!(udp_drops(next.inode), Some(said_first + said_next));
    }

    /// RFC 6587: octet counting and line feeds, told apart per message, whole across reads; a
    /// message that starts with a digit but no length is a line; the last line needs no line feed.
    #[test]
    fn both_framings_are_read_whatever_the_reads() {
        let input: &[u8] =
            b"11 <13>1 - - a\n<13>Oct 11 22:14:15 host app: b\r\n\n0 5 <1>c2024-01-01 starts with a digit\n<14>nul\0last";
        let expected = [
            "<13>1 - - a",
            "<13>Oct 11 22:14:15 host app: b",
            "<1>c2",
            "024-01-01 starts with a digit",
            "<14>nul",
            "last",
        ];
        // (`0 ` is an empty octet-counted message, nothing; `5 <1>c2` takes five bytes.)
        let whole = frames(&[input], 100);
        assert_eq!(whole, expected);
        for cut in 1..input.len() {
            assert_eq!(frames(&[&input[..cut], &input[cut..]], 100), expected, "cut at {cut}");
        }
        let byte_by_byte: Vec<&[u8]> = input.chunks(1).collect();
        assert_eq!(frames(&byte_by_byte, 100), expected);
    }

    /// A message longer than the limit is truncated to it, in either framing and across reads,
    /// the rest of it passed over, and the next one is read.
    #[test]
    fn a_message_too_long_is_truncated_and_the_stream_goes_on() {
        let (octets, line) = ("0123456789".repeat(5), "abcdefghij".repeat(5));
        let input = format!("50 {octets}{line}\n4 next\n");
        let (octets_kept, line_kept) = (&octets[..20], &line[..20]);
        assert_eq!(
            frames(&[input.as_bytes()], 20),
            [format!("<too long: 50> {octets_kept}"), format!("<too long: 50> {line_kept}"), "next".to_string()]
        );
        // (A line too long is said with what was read of it when it passed the limit.)
        for size in 1..30 {
            let pieces: Vec<&[u8]> = input.as_bytes().chunks(size).collect();
            let said = frames(&pieces, 20);
            assert_eq!(
                (said.len(), said[0].as_str(), said[2].as_str()),
                (3, format!("<too long: 50> {octets_kept}").as_str(), "next"),
                "{size}"
            );
            let (length, kept) = said[1].trim_start_matches("<too long: ").split_once("> ").unwrap();
            assert!((21..=50).contains(&length.parse::<usize>().unwrap()), "{size}: {said:?}");
            assert_eq!(kept, line_kept, "{size}");
        }
        // A connection that ends inside an octet-counted message too long keeps what came of it.
        assert_eq!(frames(&[b"50 short"], 20), ["<too long: 50> short"]);
    }

    /// The frames of `input` as a RELP session delivers it in `pieces` reads: each command and its
    /// data as text, or why the bytes are not RELP.
    fn relp_frames(pieces: &[&[u8]], max: usize) -> Result<Vec<String>, RelpBad> {
        let mut framer = RelpFramer::default();
        let (mut bytes, mut said) = (Vec::new(), Vec::new());
        for piece in pieces {
            bytes.extend_from_slice(piece);
            let mut start = 0;
            while let Some(frame) = framer.next(&bytes[start..], max)? {
                let text =
                    |(from, to): (usize, usize)| String::from_utf8_lossy(&bytes[start + from..start + to]).into_owned();
                match frame {
                    RelpFrame::Command { txnr, command, data, skip } => {
                        said.push(format!("{txnr} {} [{}]", text(command), text(data)));
                        start += skip;
                    }
                    RelpFrame::Truncated { txnr, length, kept, skip } => {
                        said.push(format!("{txnr} syslog <too long: {length}> [{}]", text(kept)));
                        start += skip;
                    }
                    RelpFrame::Skipped { skip } => start += skip,
                }
            }
            bytes.drain(..start);
        }
        Ok(said)
    }

    /// RELP's frames as librelp writes them (`open` with its offers, `syslog`, a data-less
    /// `close`), whole whatever the reads; data longer than the limit is truncated and the frames
    /// after it read; a header or trailer that is not RELP's is refused.
    #[test]
    fn relp_frames_are_read_whatever_the_reads() {
        let input: &[u8] =
            b"1 open 86 relp_version=0\nrelp_software=librelp,1.11.0,http://librelp.adiscon.com\ncommands=syslog\n\
                             2 syslog 26 <13>Oct 11 22:14:15 h a: b\n\
                             3 syslog 35 <13>Oct 11 22:14:15 h a: 0123456789\n\
                             4 close 0\n";
        let expected = [
            "1 open [relp_version=0\nrelp_software=librelp,1.11.0,http://librelp.adiscon.com\ncommands=syslog]",
            "2 syslog [<13>Oct 11 22:14:15 h a: b]",
            "3 syslog <too long: 35> [<13>Oct 11 22:14:15 h a: 01]",
            "4 close []",
        ];
        assert_eq!(relp_frames(&[input], 27).unwrap(), expected);
        for size in 1..40 {
            let pieces: Vec<&[u8]> = input.chunks(size).collect();
            assert_eq!(relp_frames(&pieces, 27).unwrap(), expected, "{size}");
        }
        let big_open = format!("1 open {} ", RELP_MAX_OTHER_DATA + 1);
        for bad in [
            &b"x open 0\n"[..],
            b"1 op3n 0\n",
            b"1 syslog 3 abcd\n",
            b"1 syslog 3abc\n",
            b"1234567890 syslog 1 a\n",
            big_open.as_bytes(),
        ] {
            assert!(relp_frames(&[bad], 100).is_err(), "{}", String::from_utf8_lossy(bad));
        }
        assert_eq!(relp_frames(&[b"1 syslog 3 abcd\n"], 100), Err(RelpBad::Trailer));
        // A header that cannot end within its longest length is refused before its end arrives.
        assert_eq!(relp_frames(&[&[b'1'; 80]], 100), Err(RelpBad::Header));
        let mut answers = Vec::new();
        relp_answer(&mut answers, 7, b"200 OK");
        relp_answer(&mut answers, 8, b"");
        assert_eq!(answers, b"7 rsp 6 200 OK\n8 rsp 0\n");
    }

    /// RFC 5424 with structured data (escapes undone), RFC 3164 with a pid, and a line neither
    /// reads, as records.
    #[test]
    fn messages_become_records_of_their_fields() {
        let ip: std::net::IpAddr = "10.0.0.7".parse().unwrap();
        let rfc5424 = record_of(
            r#"<165>1 2003-10-11T22:14:15.003Z mymachine.example.com evntslog 1370 ID47 [exampleSDID@32473 iut="3" eventSource="Appl\"ication"] An application event"#,
            ip,
            chrono_tz::Europe::Berlin,
        );
        assert_eq!(
            rfc5424,
            json!({
                "source_ip": "10.0.0.7", "protocol": "rfc5424", "facility": "local4", "severity": "notice",
                "timestamp": "2003-10-11T22:14:15.003Z", "hostname": "mymachine.example.com", "appname": "evntslog",
                "procid": "1370", "msgid": "ID47",
                "structured_data": {"exampleSDID@32473": {"iut": "3", "eventSource": "Appl\"ication"}},
                "message": "An application event"
            })
        );
        let rfc3164 =
            record_of("<34>Oct 11 22:14:15 mymachine su[230]: 'su root' failed for lonvick", ip, chrono_tz::UTC);
        assert_eq!(
            (&rfc3164["protocol"], &rfc3164["facility"], &rfc3164["severity"]),
            (&json!("rfc3164"), &json!("auth"), &json!("crit"))
        );
        assert_eq!(
            (&rfc3164["hostname"], &rfc3164["appname"], &rfc3164["procid"]),
            (&json!("mymachine"), &json!("su"), &json!("230"))
        );
        assert_eq!(rfc3164["message"], "'su root' failed for lonvick");
        assert!(rfc3164["timestamp"].as_str().is_some_and(|t| t.ends_with("-10-11T22:14:15Z")), "{rfc3164}");
        // A date without a zone in the source's `timezone` (October in Berlin: two hours ahead of
        // UTC); one with a zone (RFC 5424, above) as written, whatever `timezone` says.
        let berlin = record_of("<34>Oct 11 22:14:15 mymachine su: x", ip, chrono_tz::Europe::Berlin);
        assert!(berlin["timestamp"].as_str().is_some_and(|t| t.ends_with("-10-11T20:14:15Z")), "{berlin}");
        let plain = record_of("just some text", ip, chrono_tz::UTC);
        assert_eq!((&plain["facility"], &plain["message"]), (&Value::Null, &json!("just some text")));
        let bare = record_of("<11>payment 0 declined", ip, chrono_tz::UTC);
        assert_eq!(
            (&bare["facility"], &bare["severity"], &bare["message"]),
            (&json!("user"), &json!("err"), &json!("payment 0 declined"))
        );
        for not_a_pri in ["<192>x", "<>x", "<1a>x", "<1234>x"] {
            assert_eq!(record_of(not_a_pri, ip, chrono_tz::UTC)["facility"], Value::Null, "{not_a_pri}");
        }
    }

    /// An RFC 3164 date is this year's unless that is more than a day ahead.
    #[test]
    fn a_date_without_a_year_is_the_latest_one_not_ahead() {
        use chrono::{Datelike as _, Timelike as _};
        let now = chrono::Utc::now();
        assert_eq!(year_of((now.month(), now.day(), now.hour(), now.minute(), now.second())), now.year());
        let ahead = now + chrono::Duration::days(3);
        let expected = if ahead.year() == now.year() { now.year() - 1 } else { ahead.year() - 1 };
        assert_eq!(year_of((ahead.month(), ahead.day(), 0, 0, 0)), expected);
    }

    /// The source through the real runtime, fed octet-counted RFC 5424 messages on one connection
    /// (its client waits for the source to close its side, which it does once it has taken all):
    /// every message once at 1, 2 and 4 workers, and a restarted source does not replay what its
    /// log delivered.
    #[test]
    fn passes_the_source_conformance_kit() {
        passes_the_kit_with("tcp", |messages| {
            let framed: Vec<u8> = messages.iter().flat_map(|m| format!("{} {m}", m.len()).into_bytes()).collect();
            (framed, Vec::new())
        });
    }

    /// The same in `mode = "relp"`, the messages in a RELP session (`open`, a `syslog` frame each,
    /// `close`) whose client also checks every answer: the offers, `200 OK` for each message, the
    /// close's empty answer, in order.
    #[test]
    fn passes_the_source_conformance_kit_over_relp() {
        passes_the_kit_with("relp", |messages| {
            let offers = "relp_version=0\nrelp_software=kit\ncommands=syslog";
            let mut framed = format!("1 open {} {offers}\n", offers.len()).into_bytes();
            let mut answers = format!("1 rsp {} {RELP_OFFERS}\n", RELP_OFFERS.len()).into_bytes();
            for (n, message) in messages.iter().enumerate() {
                framed.extend_from_slice(format!("{} syslog {} {message}\n", n + 2, message.len()).as_bytes());
                answers.extend_from_slice(format!("{} rsp 6 200 OK\n", n + 2).as_bytes());
            }
            let close = messages.len() + 2;
            framed.extend_from_slice(format!("{close} close 0\n").as_bytes());
            answers.extend_from_slice(format!("{close} rsp 0\n").as_bytes());
            (framed, answers)
        });
    }

    /// What a kit's client sends on its connection for the messages given, and the answers it
    /// expects back.
    type Framing = fn(&[String]) -> (Vec<u8>, Vec<u8>);

    /// Runs the conformance kit on a source of `mode`, its client sending the bytes `frame` makes
    /// of the kit's messages on one connection and, once the source closes its side, finding the
    /// answers `frame` expects.
    fn passes_the_kit_with(mode: &str, frame: Framing) {
        use sluice_engine::testkit::source::{Check, SourceCase, conformance};

        let dir = tempfile::tempdir().unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let messages = 5_000;
        let expected: Vec<Vec<u8>> = (0..messages)
            .map(|n| {
                json!({
                    "source_ip": "127.0.0.1", "protocol": "rfc5424", "facility": "local0", "severity": "info",
                    "timestamp": "2025-12-01T00:00:00Z", "hostname": "kit", "appname": "app", "procid": null,
                    "msgid": null, "structured_data": {}, "message": format!("message {n}")
                })
                .to_string()
                .into_bytes()
            })
            .collect();
        let produce: sluice_engine::testkit::source::Producer = Box::new(move || {
            use std::io::{Read as _, Write as _};
            let messages: Vec<String> =
                (0..messages).map(|n| format!("<134>1 2025-12-01T00:00:00Z kit app - - - message {n}")).collect();
            let (sent, answers) = frame(&messages);
            let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
            stream.write_all(&sent).map_err(|e| e.to_string())?;
            stream.shutdown(std::net::Shutdown::Write).map_err(|e| e.to_string())?;
            let mut answered = Vec::new();
            stream.read_to_end(&mut answered).map_err(|e| e.to_string())?;
            match answered == answers {
                true => Ok(()),
                false => Err(format!("answered {:?}…", String::from_utf8_lossy(&answered[..answered.len().min(300)]))),
            }
        });
        let table = format!("type = \"syslog\"\nmode = \"{mode}\"\nlisten = \"127.0.0.1:{port}\"\n");
        let case = SourceCase::stream(table, expected, produce, dir.path());
        let report = conformance(crate::registry(), &case).unwrap_or_else(|e| panic!("{e}"));
        assert!(report.passed.contains(&Check::Resume) && report.skipped.is_empty(), "{report:?}");
    }
}

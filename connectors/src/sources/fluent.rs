//! `type = "fluent"`: Fluentd's forward protocol served, so that what forwards to Fluentd (Fluent
//! Bit's and Fluentd's `forward` outputs, Docker's `fluentd` logging driver, the Fluent loggers of
//! Node.js, Python, Java, Go) forwards to sluice instead, unchanged but for the address.
//!
//! ```toml
//! [sources.fluent]
//! type = "fluent"
//! listen = "127.0.0.1:24224"           # Fluentd's forward port
//! shared_key = "${FLUENT_SHARED_KEY}"  # optional: the protocol's handshake (Fluent Bit's `Shared_Key`,
//!                                      # Fluentd's `<security> shared_key`); clients without it are refused
//! users = [{ username = "fluent-bit", password = "${FLUENT_BIT_PASSWORD}" }]
//!                                      # optional, with `shared_key`: each client names one in the handshake
//! self_hostname = "sluice"             # the server's name in the handshake (default "sluice")
//! max_message_mb = 16                  # one message, as sent; a larger one closes its connection
//! max_inflight_mb = 256                # past this, connections are read no further until there is room
//! max_connections = 4096
//! max_buffer_mb = 256                  # messages still arriving, all connections together
//! idle_timeout_s = 300                 # a connection silent this long between messages is closed
//! tls = { cert = "...", key = "..." }  # optional: TLS (Fluent Bit's `tls on`, Fluentd's `transport tls`)
//! ```
//!
//! The protocol is the Forward Protocol Specification v1 (docs/fluent-forward.md): on one TCP
//! connection, MessagePack arrays one after another, each one tag's events in one of four modes:
//! Message `[tag, time, record, option?]`, Forward `[tag, [[time, record], …], option?]`,
//! PackedForward `[tag, <entries as one bin/str>, option?]` and CompressedPackedForward (the same
//! entries gzip'd, `compressed: "gzip"` in the option; concatenated gzip members are read whole).
//! A time is integer seconds, an `EventTime` (extension type 0: seconds and nanoseconds), or a
//! float; an entry's time may also be Fluent Bit's `[time, metadata]` (in Message mode, its
//! option's `metadata`).
//!
//! Each event becomes one record, a JSON object: `{"tag": …, "time": "<RFC 3339, UTC>", "record":
//! {…}}` (`"metadata"` before `"record"` when Fluent Bit sent some): nothing of the event is lost
//! and nothing of the record is renamed (a `jq` transform's `.record + {tag, time}` flattens it).
//! MessagePack values become JSON as they are, but: a `bin` that is UTF-8 becomes a string and
//! other binary is base64; a `str` that is not UTF-8 has its invalid bytes replaced by U+FFFD; a
//! non-finite float becomes `null`; an `EventTime` inside a record becomes its RFC 3339 text and
//! another extension value the base64 of its data; a map key that is a number, a boolean or nil
//! becomes its text.
//!
//! Guarantees: a message whose option carries a `chunk` is answered `{"ack": <chunk>}` only once
//! all its events are queued and as durable as the pipeline asks (the write-ahead log synced):
//! at-least-once delivery for clients that ask for acknowledgements (Fluent Bit's
//! `Require_ack_response`, Fluentd's `require_ack_response`). A message is taken whole or not at
//! all; an event over a record's 1,000 KiB as JSON (Firehose's limit) is taken with the rest and
//! goes, whole, to the error output of every sink it would have reached (`processing-failed`,
//! `Source.RecordTooLarge`): a client would otherwise resend, or drop, the whole chunk for it.
//! The whole messages already received on a connection are taken together (one
//! write to the log, up to 8 MiB of records) and their acknowledgements sent together, so a client
//! that does not wait for each answer is not held to one log commit per message. A message that is
//! not the protocol's (not MessagePack, not an array of 2 to 4, a tag that is no string, a time
//! that is none, more than `max_message_mb`, gzip that does not decode, Fluent Bit's metrics or
//! traces) closes its connection unacknowledged, said in the pipeline's
//! error log (`Fluent.BadMessage`) and counted (`FluentRefusedMessages`); so is a failed handshake
//! (`Fluent.HandshakeRefused`, `FluentRefusedHandshakes`). When the queue is full a connection is
//! simply read no further (TCP holds its client back), rather than refused. What the connections
//! hold of messages still arriving stays within `max_buffer_mb` (their buffers' memory): a
//! connection that would pass it is closed (`Fluent.Busy`; its client sends again). The audit trail
//! records each connection that sent or was refused anything (`fluent.sluice`, `Forward`). On stop,
//! new connections are refused, each open one takes the whole messages it has received (queued and,
//! when asked, answered) and waits for no more, and only then the queue closes.
//!
//! Not served, though Fluentd serves it: UDP heartbeats (Fluentd's `heartbeat_type udp`; use
//! `transport` or `none`).

use std::net::SocketAddr;
use std::ops::Range;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use base64::Engine as _;
use rmp::Marker;
use serde::Deserialize;
use sluice_engine::config::{ConnectorConfig, Diagnostic, Problems};
use sluice_engine::contract::{PrepareContext, Source, SourceContext, SourceError, SourceReader, StopSignal};
use sluice_engine::error_log::Level;
use sluice_engine::metrics::{Family, PipelineMetrics, SourceMeter};
use sluice_engine::record::{RecordBatch, now_ms};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::api::bound::Bound;
use crate::api::certificate::ClientCertificate;
use crate::api::firehose::MAX_RECORD_BYTES;
use crate::api::listener::{BodyBudget, BodyRoom, open_listener_warning};
use crate::api::queue::IngestQueue;
use crate::api::stream::{
    Accepted, ConnectionDefaults, ConnectionKeys, ConnectionPlaces, ConnectionSettings, HandshakeFailed, NotTaken,
    serve_connections,
};
use crate::api::{LogSlot, QueueReader, TlsFiles, bind};

/// Where the source listens unless told: Fluentd's forward port, on this machine only.
const DEFAULT_LISTEN: &str = "127.0.0.1:24224";
/// The whole messages already received are taken together up to about this many bytes of records.
const GROUP_BYTES: usize = 8 << 20;
/// The records of a message are queued in batches of about this many bytes.
const BATCH_BYTES: usize = 1 << 20;
/// How deep arrays and maps may nest in a message (as deep as JSON readers take).
const MAX_DEPTH: usize = 100;
/// How much is read from a connection at once.
const READ_CHUNK: usize = 64 << 10;
/// The largest `PING` a client sends in the handshake.
const MAX_PING: usize = 64 << 10;
/// MessagePack's extension type of Fluentd's `EventTime`.
const EVENT_TIME: i8 = 0;

/// Messages refused (closing their connections).
const REFUSED_MESSAGES: Family = Family {
    name: "FluentRefusedMessages",
    help: "Forward-protocol messages refused as not the protocol's (their connections closed, nothing taken).",
};
/// Handshakes refused.
const REFUSED_HANDSHAKES: Family = Family {
    name: "FluentRefusedHandshakes",
    help: "Forward-protocol connections refused in the handshake (a wrong or missing shared key or user).",
};

/// The source's keys.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FluentConfig {
    listen: Option<String>,
    shared_key: Option<String>,
    users: Option<Vec<FluentUser>>,
    self_hostname: Option<String>,
    max_message_mb: Option<u64>,
    max_inflight_mb: Option<u64>,
    max_connections: Option<u64>,
    max_buffer_mb: Option<u64>,
    idle_timeout_s: Option<u64>,
    tls: Option<TlsFiles>,
}

/// One of `users`: a name and its password (Fluentd's `<user>`, Fluent Bit's `Username` and
/// `Password`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FluentUser {
    username: String,
    password: String,
}

/// The common keys' defaults.
const CONNECTIONS: ConnectionDefaults = ConnectionDefaults {
    listen: DEFAULT_LISTEN,
    max_connections: 4096,
    connections_hint: "concurrent connections (default 4096)",
    idle_hint: "seconds a connection may stay silent between messages (default 300); clients connect again",
    least_inflight_mb: 2,
    inflight_hint: "a message's records go into the queue in batches of up to 2 MiB",
};

/// Builds the source from `[sources.<name>]`.
pub fn configure(config: ConnectorConfig) -> Result<Arc<dyn Source>, Problems> {
    let table = &config.table;
    let places = ConnectionPlaces::of(&config);
    let key_span = table.value_span("shared_key").unwrap_or(table.span.clone());
    let hostname_span = table.value_span("self_hostname").unwrap_or(table.span.clone());
    let users_span = table.value_span("users").unwrap_or(table.span.clone());
    let (message_at, buffer_at) = (table.key_at("max_message_mb"), table.key_at("max_buffer_mb"));
    let log = LogSlot::for_source(&config);
    let mut problems = Problems::default();
    let Some(c) = config.table.deserialize::<FluentConfig>(&mut problems) else { return Err(problems) };
    let keys = ConnectionKeys {
        listen: c.listen,
        max_connections: c.max_connections,
        idle_timeout_s: c.idle_timeout_s,
        max_inflight_mb: c.max_inflight_mb,
        tls: c.tls,
    };
    let connections = places.check(keys, &CONNECTIONS, &mut problems);
    let max_message_mb = problems.take(message_at.within(
        c.max_message_mb,
        16,
        1..=1024,
        "MB of one forward-protocol message as sent (default 16; Fluent Bit's chunks are 2 MB)",
    ));
    // (Without `max_buffer_mb`, room for at least one whole message, in a buffer grown by quarters.)
    let least_buffer_mb = max_message_mb.map_or(2, |mb| mb + mb / 4 + 1);
    let buffer_mb = problems.take(buffer_at.within(
        c.max_buffer_mb,
        least_buffer_mb.max(256),
        least_buffer_mb..=65_536,
        "MB of messages being received, across connections (default 256); at least 1.25 times `max_message_mb`, so that one can be whole",
    ));
    let shared_key = problems.take(match c.shared_key {
        Some(key) if key.is_empty() => Err(Diagnostic::new(key_span, "`shared_key` is empty")
            .with_hint("the key the clients share (Fluent Bit's `Shared_Key`): shared_key = \"${FLUENT_SHARED_KEY}\"; leave it out for no handshake")),
        key => Ok(key.map(SharedKey)),
    });
    let hostname = problems.take(match (c.self_hostname, &shared_key) {
        (Some(name), _) if name.trim().is_empty() => Err(Diagnostic::new(hostname_span, "`self_hostname` is empty")
            .with_hint("the name the server gives in the handshake, e.g. \"sluice\"")),
        (Some(_), Some(None)) => Err(Diagnostic::new(
            hostname_span,
            "`self_hostname` is said only in the handshake, which needs `shared_key`",
        )
        .with_hint("set `shared_key` too, or leave `self_hostname` out")),
        (name, _) => Ok(name.unwrap_or_else(|| "sluice".into())),
    });
    let users = problems.take(match (c.users, &shared_key) {
        (Some(_), Some(None)) => Err(Diagnostic::new(
            users_span,
            "`users` are checked in the handshake, which needs `shared_key`",
        )
        .with_hint("set `shared_key` too (Fluent Bit sends `Username`/`Password` with its `Shared_Key`)")),
        (users, _) => Users::from_config(users)
            .map_err(|why| Diagnostic::new(users_span, why).with_hint(
                "each user needs a name of its own and a password: users = [{ username = \"fluent-bit\", password = \"${FLUENT_BIT_PASSWORD}\" }]",
            )),
    });
    let ((connections, max_message_mb), (shared_key, users, hostname, buffer_mb)) =
        problems.finish((|| Some(((connections?, max_message_mb?), (shared_key?, users?, hostname?, buffer_mb?))))())?;
    let ConnectionSettings { listen, max_connections, idle_timeout, max_inflight, tls } = connections;
    Ok(Arc::new(FluentSource {
        listen,
        tls,
        max_connections,
        shared: Arc::new(Shared {
            queue: Arc::new(IngestQueue::new(max_inflight)),
            log,
            shared_key,
            users,
            hostname,
            max_message: usize::try_from(max_message_mb << 20).unwrap_or(usize::MAX),
            idle_timeout,
            buffers: BodyBudget::new(usize::try_from(buffer_mb << 20).unwrap_or(usize::MAX)),
            metrics: OnceLock::new(),
        }),
    }))
}

/// The shared key, never shown.
struct SharedKey(String);

impl std::fmt::Debug for SharedKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SharedKey(…)")
    }
}

/// The users a handshake may name (none: the shared key alone), their passwords never shown.
#[derive(Default)]
struct Users(Vec<(String, String)>);

impl std::fmt::Debug for Users {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.0.iter().map(|(name, _)| name)).finish()
    }
}

impl Users {
    /// The `users` key's users (absent: none), refusing an empty list, an empty name or password,
    /// and a name given twice.
    fn from_config(users: Option<Vec<FluentUser>>) -> Result<Self, String> {
        let Some(users) = users else { return Ok(Users::default()) };
        if users.is_empty() {
            return Err("`users` is empty; list at least one, or leave it out".into());
        }
        let mut names = std::collections::BTreeSet::new();
        for user in &users {
            if user.username.is_empty() || user.password.is_empty() {
                return Err(format!("user `{}` has an empty name or password", user.username));
            }
            if !names.insert(user.username.as_str()) {
                return Err(format!("user `{}` is listed twice", user.username));
            }
        }
        Ok(Users(users.into_iter().map(|u| (u.username, u.password)).collect()))
    }

    fn required(&self) -> bool {
        !self.0.is_empty()
    }

    /// Whether `digest` is the `PING`'s hex SHA-512 of `salt`, `username` and that user's password.
    fn admits(&self, salt: &[u8], username: &[u8], digest: &[u8]) -> bool {
        self.0.iter().any(|(name, password)| {
            name.as_bytes() == username
                && constant_time_eq(hex_sha512(&[salt, username, password.as_bytes()]).as_bytes(), digest)
        })
    }
}

/// The configured source.
#[derive(Debug)]
struct FluentSource {
    listen: SocketAddr,
    tls: Option<TlsFiles>,
    max_connections: usize,
    shared: Arc<Shared>,
}

/// What every connection works with.
#[derive(Debug)]
struct Shared {
    queue: Arc<IngestQueue>,
    log: LogSlot,
    shared_key: Option<SharedKey>,
    users: Users,
    hostname: String,
    max_message: usize,
    idle_timeout: Duration,
    /// The bytes the connections hold of messages being received (`max_buffer_mb`).
    buffers: Arc<BodyBudget>,
    metrics: OnceLock<(Arc<PipelineMetrics>, SourceMeter)>,
}

impl Source for FluentSource {
    /// Firehose's: an event over it as JSON goes to the error output.
    fn max_record_bytes(&self) -> Option<usize> {
        Some(MAX_RECORD_BYTES)
    }

    fn describe(&self) -> String {
        let scheme = if self.tls.is_some() { "tls" } else { "tcp" };
        let auth = match (&self.shared.shared_key, self.shared.users.required()) {
            (Some(_), true) => "shared key and users",
            (Some(_), false) => "shared key",
            (None, _) => "no auth",
        };
        format!("fluent: forward protocol on {scheme}://{} ({auth})", self.listen)
    }

    fn is_finite(&self) -> bool {
        false
    }

    /// The address, and the log's encryption key when it has one.
    fn check(&self) -> Option<futures::future::BoxFuture<'static, Result<(), SourceError>>> {
        self.shared.log.check_with_listener(self.listen)
    }

    fn prepare(&self, ctx: &PrepareContext) -> Result<(), SourceError> {
        let authenticated =
            self.shared.shared_key.is_some() || self.tls.as_ref().is_some_and(TlsFiles::verifies_clients);
        if let Some(warning) = open_listener_warning("fluent", self.listen, authenticated, "set `shared_key`") {
            tracing::warn!("{warning}");
        }
        let _ = self.shared.metrics.set((Arc::clone(&ctx.metrics), ctx.meter.clone()));
        if let Some(log) = self.shared.log.open(&self.shared.queue, &ctx.metrics)? {
            log.follow(Arc::clone(&ctx.delivered), Arc::clone(&ctx.metrics));
        }
        let bound = bind(self.listen)?;
        let tls = crate::api::stream::serve_tls(self.tls.as_ref(), ctx)?;
        let (shared, stop, connections) = (Arc::clone(&self.shared), ctx.stop.clone(), self.max_connections);
        ctx.runtime.spawn(serve(bound, tls, shared, connections, stop));
        tracing::info!(address = %self.listen, tls = self.tls.is_some(), "fluent: listening");
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

/// Serves connections until `stop` (`crate::api::stream`), each one's refusal said and recorded,
/// then closes the queue once the open ones have finished the message they are taking.
async fn serve(
    bound: Bound,
    tls: Option<axum_server::tls_rustls::RustlsConfig>,
    shared: Arc<Shared>,
    max_connections: usize,
    stop: StopSignal,
) {
    let (each, stopping) = (Arc::clone(&shared), stop.clone());
    serve_connections(bound, tls, max_connections, stop, "fluent", move |accepted| {
        let (shared, stop) = (Arc::clone(&each), stopping.clone());
        async move {
            let mut seen = Seen::default();
            let (peer, ended) = match accepted {
                Ok(Accepted { stream, peer, certificate }) => {
                    seen.certificate = certificate;
                    (peer, converse(stream, &shared, &stop, &mut seen).await)
                }
                Err((peer, HandshakeFailed::Io(e))) => (peer, Err(Ended::Io(e))),
                Err((peer, HandshakeFailed::TimedOut)) => (peer, Err(Ended::TimedOut)),
            };
            shared.audit(peer, &seen, ended.as_ref().err());
            if let Err(ended) = ended {
                shared.say(peer, &ended);
            }
        }
    })
    .await;
    // Every acknowledged message is queued by now: let the readers drain and finish.
    shared.queue.close();
}

/// Why a connection ended other than by its client closing it.
#[derive(Debug)]
enum Ended {
    /// It sent what is not the protocol.
    Bad(Bad),
    /// Its handshake failed: why, as the `PONG` said.
    Handshake(String),
    /// It was silent past the idle timeout.
    TimedOut,
    /// The run is stopping.
    Stopping,
    /// The records could not be made durable.
    Log(String),
    /// The connections together hold `max_buffer_mb` of messages being received (this many bytes).
    Busy(usize),
    /// Reading or writing failed.
    Io(std::io::Error),
}

impl Ended {
    /// A refusal's error code, level and message (`None`: the connection ended without one).
    fn refusal(&self, peer: SocketAddr) -> Option<(&'static str, Level, String)> {
        match self {
            Ended::Bad(bad) => Some((
                "Fluent.BadMessage",
                Level::Error,
                format!(
                    "a message from {peer} is not the forward protocol's: {bad}; the connection is closed and nothing of the message taken"
                ),
            )),
            Ended::Handshake(why) => {
                Some(("Fluent.HandshakeRefused", Level::Warn, format!("the handshake of {peer} was refused: {why}")))
            }
            Ended::Log(why) => Some((
                "Fluent.LogFailed",
                Level::Error,
                format!("records from {peer} could not be made durable: {why}; not acknowledged"),
            )),
            Ended::Busy(used) => Some((
                "Fluent.Busy",
                Level::Warn,
                format!(
                    "the connection from {peer} was closed: the connections hold {used} bytes of messages being received, \
                     the most `max_buffer_mb` allows (its client sends again)"
                ),
            )),
            Ended::TimedOut | Ended::Stopping | Ended::Io(_) => None,
        }
    }
}

/// What a connection did, for the audit trail.
#[derive(Debug, Default)]
struct Seen {
    /// The hostname its `PING` gave.
    client_hostname: Option<String>,
    /// The user its `PING` named.
    username: Option<String>,
    /// Whether its handshake passed.
    authenticated: bool,
    /// The certificate its client presented (mutual TLS).
    certificate: Option<Arc<ClientCertificate>>,
    /// Messages taken.
    messages: u64,
    /// Their records.
    records: u64,
    /// Their bytes (as records).
    bytes: u64,
}

impl From<Bad> for Ended {
    fn from(bad: Bad) -> Self {
        Ended::Bad(bad)
    }
}

impl From<std::io::Error> for Ended {
    fn from(e: std::io::Error) -> Self {
        Ended::Io(e)
    }
}

impl Shared {
    /// Says why the connection from `peer` ended, where its operator looks for it: a refusal in
    /// the error log (and counted), the rest in the process's log.
    fn say(&self, peer: SocketAddr, ended: &Ended) {
        let meter = self.metrics.get().map(|(_, meter)| meter);
        match ended.refusal(peer) {
            Some((code, level, message)) => {
                tracing::warn!("fluent: {message}");
                if let Some(meter) = meter {
                    meter.report(level, code, &message);
                    match ended {
                        Ended::Bad(_) => meter.count(REFUSED_MESSAGES, 1),
                        Ended::Handshake(_) => meter.count(REFUSED_HANDSHAKES, 1),
                        _ => {}
                    }
                }
            }
            None => match ended {
                Ended::Io(e) => tracing::debug!(%peer, error = %e, "fluent: connection failed"),
                other => tracing::debug!(%peer, ended = ?other, "fluent: connection ended"),
            },
        }
    }

    /// Records the connection from `peer` in the pipeline's audit trail (when it keeps one), as
    /// `eventSource` `fluent.sluice`, `eventName` `Forward`: who it was (the client's hostname from
    /// a handshake), what it brought, and its refusal. A connection that sent nothing and was
    /// refused nothing (a heartbeat) is not recorded.
    fn audit(&self, peer: SocketAddr, seen: &Seen, ended: Option<&Ended>) {
        let refusal = ended.and_then(|e| e.refusal(peer));
        if seen.messages == 0 && seen.client_hostname.is_none() && refusal.is_none() {
            return;
        }
        let Some((metrics, _)) = self.metrics.get() else { return };
        metrics.audit(|trail| {
            let identity = match (&seen.client_hostname, seen.authenticated) {
                (Some(hostname), true) => match &seen.username {
                    Some(user) => serde_json::json!({"type": "SharedKey", "hostname": hostname, "userName": user}),
                    None => serde_json::json!({"type": "SharedKey", "hostname": hostname}),
                },
                _ => serde_json::json!({"type": "Unknown"}),
            };
            let identity = match &seen.certificate {
                Some(certificate) => certificate.add_to(identity),
                None => identity,
            };
            let event = sluice_engine::audit::AuditEvent::api_call(
                "fluent.sluice",
                "Forward",
                trail.region(),
                &uuid::Uuid::new_v4().to_string(),
            )
            .from_caller(Some(peer.ip().to_string()), None)
            .identity(identity)
            .parameters(serde_json::json!({
                "clientHostname": seen.client_hostname,
                "userName": seen.username,
                "messages": seen.messages,
                "recordCount": seen.records,
                "bytes": seen.bytes,
            }));
            match refusal {
                Some((code, _, message)) => event.error(code, &message),
                None => event,
            }
        });
    }

    /// Queues `batches` (one message's records) once the queue has room, logged as the pipeline
    /// asks; `Ok` once every one is taken. (A message refused after a first batch was taken is
    /// not acknowledged: its client sends it again, a duplicate, never a loss.)
    async fn take(self: &Arc<Self>, batches: Vec<RecordBatch>, stop: &StopSignal) -> Result<(), Ended> {
        let metrics = self.metrics.get().map(|(metrics, _)| metrics);
        crate::api::stream::take(&self.queue, &self.log, metrics, batches, stop).await.map_err(|e| match e {
            NotTaken::Stopping => Ended::Stopping,
            NotTaken::Log(why) => Ended::Log(why),
        })
    }
}

/// One connection: its bytes read so far and where the message they begin ends.
struct Connection<S> {
    stream: S,
    bytes: Vec<u8>,
    framer: Framer,
    /// Room in the source's buffer budget for `bytes` and one more read.
    room: Option<BodyRoom>,
    budget: Arc<BodyBudget>,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Connection<S> {
    /// Reads more; `false` when the client closed the connection, or the run stops and nothing
    /// more has arrived (what a client sent before the stop, without waiting for an
    /// acknowledgement, is still taken).
    async fn read_more(&mut self, idle: Duration, stop: &StopSignal) -> Result<bool, Ended> {
        use futures::FutureExt as _;
        self.hold_room()?;
        tokio::select! {
            biased;
            () = stop.stopped() => match self.stream.read_buf(&mut self.bytes).now_or_never() {
                Some(Ok(read)) => Ok(read > 0),
                Some(Err(e)) => Err(Ended::Io(e)),
                None => Ok(false),
            },
            read = tokio::time::timeout(idle, self.stream.read_buf(&mut self.bytes)) => match read {
                Ok(Ok(0)) => Ok(false),
                Ok(Ok(_)) => Ok(true),
                Ok(Err(e)) => Err(Ended::Io(e)),
                Err(_) => Err(Ended::TimedOut),
            },
        }
    }

    /// The length of the next whole message (reading until it is here), or `None` when the
    /// connection ends first.
    async fn next_message(&mut self, max: usize, idle: Duration, stop: &StopSignal) -> Result<Option<usize>, Ended> {
        loop {
            if let Some(end) = self.framer.next(&self.bytes, max)? {
                return Ok(Some(end));
            }
            if !self.read_more(idle, stop).await? {
                return Ok(None);
            }
        }
    }

    /// Makes room in the buffer for one more read and holds room in the budget for all of the
    /// buffer's memory (given back, and the buffer shrunk, as messages are taken);
    /// [`Ended::Busy`] when the budget has none.
    fn hold_room(&mut self) -> Result<(), Ended> {
        let wanted = self.bytes.len() + READ_CHUNK;
        if self.bytes.capacity() > 2 * wanted {
            self.bytes.shrink_to(wanted);
        }
        // Grown by a quarter at a time (not doubled): a message of `max_message_mb` fits in 1.25
        // times it, as `max_buffer_mb`'s least value allows.
        if self.bytes.capacity() - self.bytes.len() < READ_CHUNK {
            self.bytes.reserve_exact(READ_CHUNK.max(self.bytes.len() / 4));
        }
        let memory = self.bytes.capacity();
        if self.room.as_ref().map_or(0, BodyRoom::bytes) != memory {
            self.room = None;
            self.room = Some(self.budget.take(memory).ok_or(Ended::Busy(self.budget.used()))?);
        }
        Ok(())
    }

    /// Sends `bytes` whole.
    async fn send(&mut self, bytes: &[u8]) -> Result<(), Ended> {
        self.stream.write_all(bytes).await?;
        self.stream.flush().await?;
        Ok(())
    }
}

/// Serves one connection: the handshake when there is a shared key, then each message taken and,
/// when it asks, acknowledged, until the client closes it or the run stops.
async fn converse<S: AsyncRead + AsyncWrite + Unpin>(
    stream: S,
    shared: &Arc<Shared>,
    stop: &StopSignal,
    seen: &mut Seen,
) -> Result<(), Ended> {
    let mut connection = Connection {
        stream,
        bytes: Vec::with_capacity(READ_CHUNK),
        framer: Framer::default(),
        room: None,
        budget: Arc::clone(&shared.buffers),
    };
    if let Some(key) = &shared.shared_key {
        handshake(&mut connection, key, shared, stop, seen).await?;
    }
    loop {
        // Every whole message here (up to `GROUP_BYTES` of records) is taken at once, one write to
        // the log for all, and their acknowledgements sent together: a client that sends without
        // waiting is not held to one log commit per message.
        let mut records = Records::new();
        let (mut consumed, mut acks, mut messages, mut bad) = (0, Vec::new(), 0, None);
        while records.counts().1 < GROUP_BYTES {
            let rest = &connection.bytes[consumed..];
            let len = match connection.framer.next(rest, shared.max_message) {
                Ok(Some(len)) => len,
                Ok(None) => break,
                Err(e) => {
                    bad = Some(e);
                    break;
                }
            };
            match decode_into(&rest[..len], shared.max_message, &mut records) {
                Ok(chunk) => {
                    if let Some(chunk) = chunk {
                        acks.extend(ack_of(&rest[chunk]));
                    }
                    consumed += len;
                    messages += 1;
                }
                Err(e) => {
                    bad = Some(e);
                    break;
                }
            }
        }
        if messages > 0 {
            let (count, bytes) = records.counts();
            shared.take(records.finish(), stop).await?;
            seen.messages += messages;
            seen.records += count as u64;
            seen.bytes += bytes as u64;
            if !acks.is_empty() {
                connection.send(&acks).await?;
            }
            connection.bytes.drain(..consumed);
        }
        // (The messages before a bad one are taken and answered; it closes the connection.)
        if let Some(bad) = bad {
            return Err(bad.into());
        }
        if messages == 0 && !connection.read_more(shared.idle_timeout, stop).await? {
            return Ok(());
        }
    }
}

/// `{"ack": <chunk>}`, the chunk id as the client encoded it.
fn ack_of(chunk: &[u8]) -> Vec<u8> {
    let mut ack = vec![0x81, 0xa3, b'a', b'c', b'k'];
    ack.extend_from_slice(chunk);
    ack
}

/// The shared-key handshake (the specification's "Handshake Messages"): `HELO` with a fresh
/// nonce, the client's `PING` checked (its digest of salt, hostname, nonce and key), then `PONG`
/// with the server's own digest, or with the reason and the connection closed.
async fn handshake<S: AsyncRead + AsyncWrite + Unpin>(
    connection: &mut Connection<S>,
    key: &SharedKey,
    shared: &Shared,
    stop: &StopSignal,
    seen: &mut Seen,
) -> Result<(), Ended> {
    let nonce: [u8; 16] = rand::random();
    let auth_salt: Option<[u8; 16]> = shared.users.required().then(rand::random);
    connection.send(&helo(&nonce, auth_salt.as_ref())).await?;
    let Some(end) = connection.next_message(MAX_PING, shared.idle_timeout, stop).await? else {
        return Err(Ended::Handshake("the connection closed before its PING".into()));
    };
    let checked = Ping::parse(&connection.bytes[..end]).and_then(|ping| {
        seen.client_hostname = Some(String::from_utf8_lossy(ping.hostname).into_owned());
        if ping.hostname == shared.hostname.as_bytes() {
            return Err("Same hostname between input and output: invalid configuration".to_string());
        }
        let expected = hex_sha512(&[ping.salt, ping.hostname, &nonce, key.0.as_bytes()]);
        if !constant_time_eq(expected.as_bytes(), ping.digest) {
            return Err("shared_key mismatch".to_string());
        }
        if let Some(auth_salt) = &auth_salt {
            seen.username = Some(String::from_utf8_lossy(ping.username).into_owned()).filter(|u| !u.is_empty());
            if !shared.users.admits(auth_salt, ping.username, ping.password_digest) {
                return Err("username/password mismatch".to_string());
            }
        }
        Ok(hex_sha512(&[ping.salt, shared.hostname.as_bytes(), &nonce, key.0.as_bytes()]))
    });
    connection.bytes.drain(..end);
    match checked {
        Ok(digest) => {
            seen.authenticated = true;
            connection.send(&pong(true, "", &shared.hostname, &digest)).await
        }
        Err(why) => {
            connection.send(&pong(false, &why, "", "")).await?;
            Err(Ended::Handshake(why))
        }
    }
}

/// `["HELO", {"nonce": <nonce>, "auth": <salt, or "" without user authentication>, "keepalive":
/// true}]`.
fn helo(nonce: &[u8; 16], auth_salt: Option<&[u8; 16]>) -> Vec<u8> {
    let mut helo = Vec::with_capacity(64);
    helo.extend_from_slice(&[0x92, 0xa4]);
    helo.extend_from_slice(b"HELO");
    helo.extend_from_slice(&[0x83, 0xa5]);
    helo.extend_from_slice(b"nonce");
    helo.extend_from_slice(&[0xc4, 16]);
    helo.extend_from_slice(nonce);
    helo.extend_from_slice(&[0xa4]);
    helo.extend_from_slice(b"auth");
    match auth_salt {
        Some(salt) => {
            helo.extend_from_slice(&[0xc4, 16]);
            helo.extend_from_slice(salt);
        }
        None => helo.push(0xa0),
    }
    helo.push(0xa9);
    helo.extend_from_slice(b"keepalive");
    helo.push(0xc3);
    helo
}

/// `["PONG", ok, reason, hostname, digest]`.
fn pong(ok: bool, reason: &str, hostname: &str, digest: &str) -> Vec<u8> {
    let mut pong = vec![0x95];
    push_str(&mut pong, "PONG");
    pong.push(if ok { 0xc3 } else { 0xc2 });
    for text in [reason, hostname, digest] {
        push_str(&mut pong, text);
    }
    pong
}

/// Appends `text` as a MessagePack str (rmp's encoder; writing to a `Vec` cannot fail, and the
/// texts are a reason, a hostname and a digest, far below a str's 4 GiB).
fn push_str(out: &mut Vec<u8>, text: &str) {
    let _ = rmp::encode::write_str(out, text);
}

/// A client's `PING`: `["PING", hostname, salt, hex digest, username, password digest]`.
struct Ping<'a> {
    hostname: &'a [u8],
    salt: &'a [u8],
    digest: &'a [u8],
    /// Empty without user authentication.
    username: &'a [u8],
    password_digest: &'a [u8],
}

impl<'a> Ping<'a> {
    /// The `PING` in `message`, or why it is none.
    fn parse(message: &'a [u8]) -> Result<Self, String> {
        let not_a_ping = || "the first message is not a PING".to_string();
        let mut cursor = Cursor::new(message);
        let Ok(Kind::Array(len @ 4..=6)) = cursor.head() else { return Err(not_a_ping()) };
        let mut text = || cursor.text().map_err(|_| not_a_ping());
        if text()? != b"PING" {
            return Err(not_a_ping());
        }
        let (hostname, salt, digest) = (text()?, text()?, text()?);
        let username = if len > 4 { text()? } else { b"" };
        let password_digest = if len > 5 { text()? } else { b"" };
        Ok(Ping { hostname, salt, digest, username, password_digest })
    }
}

/// The lowercase hex SHA-512 of `parts` one after another.
fn hex_sha512(parts: &[&[u8]]) -> String {
    use sha2::Digest as _;
    let mut hasher = sha2::Sha512::new();
    for part in parts {
        hasher.update(part);
    }
    hasher.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// Whether `a` and `b` are equal, in time that does not depend on where they differ.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |differ, (x, y)| differ | (x ^ y)) == 0
}

/// Why a message is not the protocol's.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
enum Bad {
    /// A byte no MessagePack value starts with (0xc1).
    #[error("not MessagePack (a value starts with 0xc1)")]
    NotMessagePack,
    /// It ends inside a value.
    #[error("it ends inside a value")]
    Truncated,
    /// Larger than `max_message_mb` (or, decompressed, larger than that).
    #[error("larger than {0} bytes (`max_message_mb`)")]
    TooLarge(usize),
    /// Nested too deep.
    #[error("arrays and maps nest deeper than {MAX_DEPTH}")]
    TooDeep,
    /// Not `[tag, time, record, option?]`, `[tag, entries, option?]`.
    #[error("{0}")]
    Shape(&'static str),
    /// A time that is none.
    #[error("an event's time is not integer seconds, an EventTime or a float within the years 0 to 9999")]
    Time,
    /// An entry that is not `[time, record]`.
    #[error("an entry is not [time, record]")]
    Entry,
    /// A map key that is an array, a map or an extension value.
    #[error("a map key is an array, a map or an extension value")]
    Key,
    /// `compressed` names what is not gzip.
    #[error("`compressed` is {0:?}: only \"gzip\" (or \"text\") is known")]
    Compression(String),
    /// The gzip'd entries do not decode.
    #[error("the gzip'd entries do not decode: {0}")]
    Gzip(String),
    /// Fluent Bit's metrics or traces (`fluent_signal` 1 or 2 in the option): not events.
    #[error(
        "it holds Fluent Bit's {0} (`fluent_signal` in its option), not log events: this source takes logs; send {0} to a metrics or tracing backend"
    )]
    NotLogs(&'static str),
}

/// What a MessagePack value is, from its header; lengths and counts as the header says them.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    Nil,
    Bool(bool),
    UInt(u64),
    Int(i64),
    Float(f64),
    /// A str of this many bytes.
    Str(u64),
    /// A bin of this many bytes.
    Bin(u64),
    /// An extension value: its type and its data's length.
    Ext(i8, u64),
    /// An array of this many values.
    Array(u64),
    /// A map of this many pairs.
    Map(u64),
}

impl Kind {
    /// The bytes that follow the header.
    fn payload(self) -> u64 {
        match self {
            Kind::Str(n) | Kind::Bin(n) | Kind::Ext(_, n) => n,
            _ => 0,
        }
    }

    /// The values it holds.
    fn children(self) -> u64 {
        match self {
            Kind::Array(n) => n,
            Kind::Map(n) => n.saturating_mul(2),
            _ => 0,
        }
    }
}

/// The header of the value `bytes` start with and its length (the marker and what follows it
/// before the payload); `None` when not all of it is here yet.
fn head(bytes: &[u8]) -> Result<Option<(Kind, usize)>, Bad> {
    let Some(&first) = bytes.first() else { return Ok(None) };
    // The `n` bytes after the marker, big-endian.
    let be = |n: usize| bytes.get(1..=n).map(|b| b.iter().fold(0u64, |v, &x| v << 8 | u64::from(x)));
    let sized = |n: usize, kind: fn(u64) -> Kind| be(n).map(|v| (kind(v), 1 + n));
    // An extension value's type, `at` bytes after the marker.
    let ext = |at: usize, len: Option<u64>, header: usize| {
        bytes.get(at).zip(len).map(|(&t, n)| (Kind::Ext(i8::from_be_bytes([t]), n), header))
    };
    let head = match Marker::from_u8(first) {
        Marker::FixPos(v) => Some((Kind::UInt(v.into()), 1)),
        Marker::FixNeg(v) => Some((Kind::Int(v.into()), 1)),
        Marker::Null => Some((Kind::Nil, 1)),
        Marker::False => Some((Kind::Bool(false), 1)),
        Marker::True => Some((Kind::Bool(true), 1)),
        Marker::U8 => sized(1, Kind::UInt),
        Marker::U16 => sized(2, Kind::UInt),
        Marker::U32 => sized(4, Kind::UInt),
        Marker::U64 => sized(8, Kind::UInt),
        Marker::I8 => bytes.get(1).map(|&b| (Kind::Int(i8::from_be_bytes([b]).into()), 2)),
        Marker::I16 => {
            bytes.get(1..3).and_then(|b| b.try_into().ok()).map(|b| (Kind::Int(i16::from_be_bytes(b).into()), 3))
        }
        Marker::I32 => {
            bytes.get(1..5).and_then(|b| b.try_into().ok()).map(|b| (Kind::Int(i32::from_be_bytes(b).into()), 5))
        }
        Marker::I64 => bytes.get(1..9).and_then(|b| b.try_into().ok()).map(|b| (Kind::Int(i64::from_be_bytes(b)), 9)),
        Marker::F32 => {
            bytes.get(1..5).and_then(|b| b.try_into().ok()).map(|b| (Kind::Float(f32::from_be_bytes(b).into()), 5))
        }
        Marker::F64 => bytes.get(1..9).and_then(|b| b.try_into().ok()).map(|b| (Kind::Float(f64::from_be_bytes(b)), 9)),
        Marker::FixStr(n) => Some((Kind::Str(n.into()), 1)),
        Marker::Str8 => sized(1, Kind::Str),
        Marker::Str16 => sized(2, Kind::Str),
        Marker::Str32 => sized(4, Kind::Str),
        Marker::Bin8 => sized(1, Kind::Bin),
        Marker::Bin16 => sized(2, Kind::Bin),
        Marker::Bin32 => sized(4, Kind::Bin),
        Marker::FixArray(n) => Some((Kind::Array(n.into()), 1)),
        Marker::Array16 => sized(2, Kind::Array),
        Marker::Array32 => sized(4, Kind::Array),
        Marker::FixMap(n) => Some((Kind::Map(n.into()), 1)),
        Marker::Map16 => sized(2, Kind::Map),
        Marker::Map32 => sized(4, Kind::Map),
        Marker::FixExt1 => ext(1, Some(1), 2),
        Marker::FixExt2 => ext(1, Some(2), 2),
        Marker::FixExt4 => ext(1, Some(4), 2),
        Marker::FixExt8 => ext(1, Some(8), 2),
        Marker::FixExt16 => ext(1, Some(16), 2),
        Marker::Ext8 => ext(2, be(1), 3),
        Marker::Ext16 => ext(3, be(2), 4),
        Marker::Ext32 => ext(5, be(4), 6),
        Marker::Reserved => return Err(Bad::NotMessagePack),
    };
    Ok(head)
}

/// Finds where whole MessagePack values end in bytes that arrive a piece at a time, resuming
/// where it stopped (a large message is walked once, however many reads bring it), without
/// decoding or allocating for what the values claim to hold.
#[derive(Debug)]
struct Framer {
    /// Where the walk is.
    at: usize,
    /// Values still to walk in each open array or map, the outermost first.
    open: Vec<u64>,
}

impl Default for Framer {
    fn default() -> Self {
        Framer { at: 0, open: vec![1] }
    }
}

impl Framer {
    /// The length of the value `bytes` start with once all of it is here (then the framer starts
    /// over for the next), `None` until then; an error when it is not MessagePack, nests deeper
    /// than [`MAX_DEPTH`] or would be longer than `max`.
    fn next(&mut self, bytes: &[u8], max: usize) -> Result<Option<usize>, Bad> {
        loop {
            while self.open.last() == Some(&0) {
                self.open.pop();
            }
            if self.open.is_empty() {
                let end = self.at;
                *self = Framer::default();
                return Ok(Some(end));
            }
            if self.at >= max {
                return Err(Bad::TooLarge(max));
            }
            let Some((kind, header)) = head(bytes.get(self.at..).unwrap_or_default())? else { return Ok(None) };
            let payload = usize::try_from(kind.payload()).unwrap_or(usize::MAX);
            let end = self.at.saturating_add(header).saturating_add(payload);
            if end > max {
                return Err(Bad::TooLarge(max));
            }
            if end > bytes.len() {
                return Ok(None);
            }
            self.at = end;
            if let Some(left) = self.open.last_mut() {
                *left -= 1;
            }
            if kind.children() > 0 {
                if self.open.len() > MAX_DEPTH {
                    return Err(Bad::TooDeep);
                }
                self.open.push(kind.children());
            }
        }
    }
}

/// Reads the values of one whole message (every length in it already checked by the [`Framer`]).
struct Cursor<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Cursor<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        Cursor { bytes, at: 0 }
    }

    /// The next value's header, read.
    fn head(&mut self) -> Result<Kind, Bad> {
        let (kind, header) = self.peek_head()?;
        self.at += header;
        Ok(kind)
    }

    fn peek_head(&self) -> Result<(Kind, usize), Bad> {
        head(self.bytes.get(self.at..).unwrap_or_default())?.ok_or(Bad::Truncated)
    }

    /// The next value's kind, not read.
    fn peek(&self) -> Result<Kind, Bad> {
        self.peek_head().map(|(kind, _)| kind)
    }

    /// The next `n` bytes.
    fn take(&mut self, n: u64) -> Result<&'a [u8], Bad> {
        let end = usize::try_from(n).ok().and_then(|n| self.at.checked_add(n)).ok_or(Bad::Truncated)?;
        let taken = self.bytes.get(self.at..end).ok_or(Bad::Truncated)?;
        self.at = end;
        Ok(taken)
    }

    /// The next value, a str or bin, as bytes.
    fn text(&mut self) -> Result<&'a [u8], Bad> {
        match self.head()? {
            Kind::Str(n) | Kind::Bin(n) => self.take(n),
            _ => Err(Bad::Shape("a string was expected")),
        }
    }

    /// Steps over the next value; its bytes.
    fn skip(&mut self) -> Result<Range<usize>, Bad> {
        let start = self.at;
        let len =
            Framer::default().next(self.bytes.get(start..).unwrap_or_default(), usize::MAX)?.ok_or(Bad::Truncated)?;
        self.at += len;
        Ok(start..self.at)
    }

    /// The next value, an event's time, as RFC 3339 text (whole seconds for integer seconds,
    /// nanoseconds for an `EventTime` or a float).
    fn time(&mut self) -> Result<String, Bad> {
        let (seconds, nanos, fraction) = match self.head()? {
            Kind::UInt(s) => (i64::try_from(s).map_err(|_| Bad::Time)?, 0, false),
            Kind::Int(s) => (s, 0, false),
            Kind::Float(f) if f.is_finite() && f.abs() < 1e15 => {
                let seconds = f.floor();
                // (Within ±1e15 both fit; a float's nanoseconds are as exact as it is.)
                let nanos = ((f - seconds) * 1e9).round().clamp(0.0, 999_999_999.0);
                (seconds as i64, nanos as u32, true)
            }
            Kind::Ext(EVENT_TIME, 8) => return event_time(self.take(8)?),
            _ => return Err(Bad::Time),
        };
        rfc3339(seconds, nanos, fraction)
    }

    /// Writes the next value as JSON.
    fn json(&mut self, out: &mut Vec<u8>, depth: usize) -> Result<(), Bad> {
        if depth > MAX_DEPTH {
            return Err(Bad::TooDeep);
        }
        match self.head()? {
            Kind::Nil => out.extend_from_slice(b"null"),
            Kind::Bool(true) => out.extend_from_slice(b"true"),
            Kind::Bool(false) => out.extend_from_slice(b"false"),
            Kind::UInt(v) => push_json(out, &v),
            Kind::Int(v) => push_json(out, &v),
            Kind::Float(v) if v.is_finite() => push_json(out, &v),
            Kind::Float(_) => out.extend_from_slice(b"null"),
            Kind::Str(n) => push_json(out, &String::from_utf8_lossy(self.take(n)?)),
            Kind::Bin(n) => {
                let bytes = self.take(n)?;
                match std::str::from_utf8(bytes) {
                    Ok(text) => push_json(out, text),
                    Err(_) => push_json(out, &base64::engine::general_purpose::STANDARD.encode(bytes)),
                }
            }
            Kind::Ext(EVENT_TIME, 8) => push_json(out, &event_time(self.take(8)?)?),
            Kind::Ext(_, n) => push_json(out, &base64::engine::general_purpose::STANDARD.encode(self.take(n)?)),
            Kind::Array(n) => {
                out.push(b'[');
                for i in 0..n {
                    if i > 0 {
                        out.push(b',');
                    }
                    self.json(out, depth + 1)?;
                }
                out.push(b']');
            }
            Kind::Map(n) => {
                out.push(b'{');
                for i in 0..n {
                    if i > 0 {
                        out.push(b',');
                    }
                    self.key(out)?;
                    out.push(b':');
                    self.json(out, depth + 1)?;
                }
                out.push(b'}');
            }
        }
        Ok(())
    }

    /// Writes the next value, a map key, as a JSON string.
    fn key(&mut self, out: &mut Vec<u8>) -> Result<(), Bad> {
        match self.peek()? {
            Kind::Str(_) | Kind::Bin(_) => self.json(out, 0),
            Kind::Array(_) | Kind::Map(_) | Kind::Ext(..) => Err(Bad::Key),
            _ => {
                let mut text = Vec::new();
                self.json(&mut text, 0)?;
                push_json(out, &String::from_utf8_lossy(&text));
                Ok(())
            }
        }
    }
}

/// An `EventTime`'s data (seconds and nanoseconds, big-endian) as RFC 3339 text.
fn event_time(data: &[u8]) -> Result<String, Bad> {
    let part = |range: Range<usize>| data.get(range).and_then(|b| b.try_into().ok()).map(u32::from_be_bytes);
    match part(0..4).zip(part(4..8)) {
        Some((seconds, nanos)) if nanos < 1_000_000_000 => rfc3339(i64::from(seconds), nanos, true),
        _ => Err(Bad::Time),
    }
}

/// A time as RFC 3339 text in UTC, with nanoseconds when `fraction`; within the years 0 to 9999.
fn rfc3339(seconds: i64, nanos: u32, fraction: bool) -> Result<String, Bad> {
    let format = if fraction { chrono::SecondsFormat::Nanos } else { chrono::SecondsFormat::Secs };
    chrono::DateTime::from_timestamp(seconds, nanos)
        .filter(|t| (0..=9999).contains(&chrono::Datelike::year(t)))
        .map(|t| t.to_rfc3339_opts(format, true))
        .ok_or(Bad::Time)
}

/// Writes `value` as JSON (to a `Vec`, which cannot fail).
fn push_json<T: serde::Serialize + ?Sized>(out: &mut Vec<u8>, value: &T) {
    if serde_json::to_writer(&mut *out, value).is_err() {
        out.extend_from_slice(b"null");
    }
}

/// A message's records, and where its chunk id is (when it asks for an acknowledgement).
#[cfg(test)]
#[derive(Debug)]
struct Message {
    batches: Vec<RecordBatch>,
    chunk: Option<Range<usize>>,
}

/// Builds a message's records, one batch at a time.
struct Records {
    batches: Vec<RecordBatch>,
    current: RecordBatch,
    arrival_ms: i64,
}

/// Where [`Records`] were, to go back to.
#[derive(Debug, Clone, Copy)]
struct Mark {
    batches: usize,
    records: usize,
}

impl Records {
    fn new() -> Self {
        let arrival_ms = now_ms();
        Records { batches: Vec::new(), current: RecordBatch::with_capacity(arrival_ms, 0), arrival_ms }
    }

    /// Writes one event: `{"tag":…,"time":…,["metadata":…,]"record":…}` (one over a record's
    /// 1,000 KiB as JSON too: the engine sends it to the error output).
    fn event(
        &mut self,
        tag: &[u8],
        time: &str,
        metadata: Option<&mut Cursor<'_>>,
        record: &mut Cursor<'_>,
    ) -> Result<(), Bad> {
        self.current.push_with(|out| {
            out.extend_from_slice(b"{\"tag\":");
            out.extend_from_slice(tag);
            out.extend_from_slice(b",\"time\":");
            push_json(out, time);
            if let Some(metadata) = metadata {
                out.extend_from_slice(b",\"metadata\":");
                metadata.json(out, 1)?;
            }
            out.extend_from_slice(b",\"record\":");
            record.json(out, 1)?;
            out.push(b'}');
            Ok(())
        })?;
        if self.current.byte_len() >= BATCH_BYTES {
            let full = std::mem::replace(&mut self.current, RecordBatch::with_capacity(self.arrival_ms, 0));
            self.batches.push(full);
        }
        Ok(())
    }

    /// An entry `[time, record]` (or Fluent Bit's `[[time, metadata], record]`).
    fn entry(&mut self, tag: &[u8], entries: &mut Cursor<'_>) -> Result<(), Bad> {
        if entries.head()? != Kind::Array(2) {
            return Err(Bad::Entry);
        }
        let (time, metadata) = match entries.peek()? {
            Kind::Array(2) => {
                entries.head()?;
                let time = entries.time()?;
                let metadata = entries.skip()?;
                // Fluent Bit's metadata is most often an empty map: left out.
                (time, Some(metadata).filter(|m| entries.bytes.get(m.clone()) != Some(&[0x80][..])))
            }
            _ => (entries.time()?, None),
        };
        let mut metadata = metadata.map(|m| Cursor { bytes: entries.bytes, at: m.start });
        self.event(tag, &time, metadata.as_mut(), entries)
    }

    fn finish(mut self) -> Vec<RecordBatch> {
        if !self.current.is_empty() {
            self.batches.push(self.current);
        }
        self.batches
    }

    /// Where the records are now, to go back to ([`Self::rollback`]).
    fn mark(&self) -> Mark {
        Mark { batches: self.batches.len(), records: self.current.len() }
    }

    /// Drops every record written since `mark`.
    fn rollback(&mut self, Mark { batches, records }: Mark) {
        if self.batches.len() > batches {
            // The batch that was being written then has been filled and set aside since.
            self.current = self.batches.swap_remove(batches);
            self.batches.truncate(batches);
        }
        self.current.truncate(records);
    }

    /// Records and bytes written.
    fn counts(&self) -> (usize, usize) {
        self.batches.iter().chain([&self.current]).fold((0, 0), |(r, b), batch| (r + batch.len(), b + batch.byte_len()))
    }
}

/// The records of one whole message, or why it is not the protocol's.
#[cfg(test)]
fn decode_message(message: &[u8], max: usize) -> Result<Message, Bad> {
    let mut records = Records::new();
    let chunk = decode_into(message, max, &mut records)?;
    Ok(Message { batches: records.finish(), chunk })
}

/// Writes the records of one whole message into `records` and says where its chunk id is (when it
/// asks for an acknowledgement); or, writing none of them, why it is not the protocol's.
fn decode_into(message: &[u8], max: usize, records: &mut Records) -> Result<Option<Range<usize>>, Bad> {
    let mark = records.mark();
    let decoded = decode_records(message, max, records);
    if decoded.is_err() {
        records.rollback(mark);
    }
    decoded
}

fn decode_records(message: &[u8], max: usize, records: &mut Records) -> Result<Option<Range<usize>>, Bad> {
    let mut cursor = Cursor::new(message);
    let Kind::Array(len @ 2..=4) = cursor.head()? else {
        return Err(Bad::Shape("a message is an array [tag, time, record, option?] or [tag, entries, option?]"));
    };
    let tag = match cursor.head()? {
        Kind::Str(n) | Kind::Bin(n) => {
            let mut tag = Vec::new();
            push_json(&mut tag, &String::from_utf8_lossy(cursor.take(n)?));
            tag
        }
        _ => return Err(Bad::Shape("a message's tag is not a string")),
    };
    let option;
    match cursor.peek()? {
        // Message mode: [tag, time, record, option?].
        Kind::UInt(_) | Kind::Int(_) | Kind::Float(_) | Kind::Ext(..) => {
            if len < 3 {
                return Err(Bad::Shape("a message of one event is [tag, time, record, option?]"));
            }
            let time = cursor.time()?;
            // Its option, after the record, may carry Fluent Bit's metadata of the event.
            let record = cursor.skip()?;
            option = (len == 4).then_some(cursor.at);
            let options = option.map(|at| read_option(&Cursor { bytes: message, at })).transpose()?;
            let mut metadata = options
                .and_then(|o| o.metadata)
                .filter(|m| message.get(m.clone()) != Some(&[0x80][..]))
                .map(|m| Cursor { bytes: message, at: m.start });
            records.event(&tag, &time, metadata.as_mut(), &mut Cursor { bytes: message, at: record.start })?;
        }
        // Forward mode: [tag, [[time, record], …], option?].
        Kind::Array(n) => {
            cursor.head()?;
            for _ in 0..n {
                records.entry(&tag, &mut cursor)?;
            }
            option = entries_option(len, cursor.at)?;
        }
        // (Compressed)PackedForward mode: [tag, entries as bytes, option?].
        Kind::Str(n) | Kind::Bin(n) => {
            cursor.head()?;
            let packed = cursor.take(n)?;
            option = entries_option(len, cursor.at)?;
            let options = option.map(|at| read_option(&Cursor { bytes: message, at })).transpose()?;
            match options.as_ref().and_then(|o| o.signal) {
                Some(1) => return Err(Bad::NotLogs("metrics")),
                Some(2) => return Err(Bad::NotLogs("traces")),
                _ => {}
            }
            let gunzipped;
            let entries = match options.as_ref().and_then(|o| o.compressed.as_deref()) {
                None | Some("text") => packed,
                Some("gzip") => {
                    gunzipped = gunzip(packed, max)?;
                    &gunzipped
                }
                Some(other) => return Err(Bad::Compression(other.to_string())),
            };
            // Every length in the entries checked before one is read (they came in one value).
            let mut framer = Framer::default();
            let mut at = 0;
            while at < entries.len() {
                let len = framer.next(&entries[at..], usize::MAX)?.ok_or(Bad::Truncated)?;
                let mut entry = Cursor::new(&entries[at..at + len]);
                records.entry(&tag, &mut entry)?;
                at += len;
            }
        }
        _ => return Err(Bad::Shape("a message's second element is not a time, an array of entries or packed entries")),
    }
    let chunk = match option {
        Some(at) => read_option(&Cursor { bytes: message, at })?.chunk,
        None => None,
    };
    Ok(chunk)
}

/// Where the option of a message of entries (`[tag, entries, option?]`, `len` long) is.
fn entries_option(len: u64, at: usize) -> Result<Option<usize>, Bad> {
    match len {
        2 => Ok(None),
        3 => Ok(Some(at)),
        _ => Err(Bad::Shape("a message of entries is [tag, entries, option?]")),
    }
}

/// What a message's option says.
#[derive(Debug, Default)]
struct Options {
    /// Where the chunk id's value is in the message.
    chunk: Option<Range<usize>>,
    compressed: Option<String>,
    /// Fluent Bit's `fluent_signal`: 0 logs, 1 metrics, 2 traces.
    signal: Option<u64>,
    /// Where a Message-mode event's metadata (Fluent Bit's) is in the message.
    metadata: Option<Range<usize>>,
}

/// The option map at `cursor` (nil is none).
fn read_option(cursor: &Cursor<'_>) -> Result<Options, Bad> {
    let mut cursor = Cursor { bytes: cursor.bytes, at: cursor.at };
    let mut options = Options::default();
    let pairs = match cursor.head()? {
        Kind::Nil => return Ok(options),
        Kind::Map(n) => n,
        _ => return Err(Bad::Shape("a message's option is not a map")),
    };
    for _ in 0..pairs {
        let key = match cursor.peek()? {
            Kind::Str(_) | Kind::Bin(_) => cursor.text()?,
            _ => {
                cursor.skip()?;
                b""
            }
        };
        match key {
            b"chunk" => options.chunk = Some(cursor.skip()?),
            b"metadata" if matches!(cursor.peek()?, Kind::Map(_)) => {
                options.metadata = Some(cursor.skip()?);
            }
            b"fluent_signal" => match cursor.head()? {
                Kind::UInt(signal) => options.signal = Some(signal),
                _ => return Err(Bad::Shape("a message's `fluent_signal` is not a number")),
            },
            b"compressed" => {
                let value = cursor.text().map_err(|_| Bad::Compression("not a string".into()))?;
                options.compressed = Some(String::from_utf8_lossy(value).into_owned());
            }
            _ => {
                cursor.skip()?;
            }
        }
    }
    Ok(options)
}

/// The gzip'd entries (every member), at most `max` bytes of them.
fn gunzip(packed: &[u8], max: usize) -> Result<Vec<u8>, Bad> {
    crate::api::post::gunzip(packed, max).map_err(|e| match e {
        crate::api::post::DecodeError::TooLarge => Bad::TooLarge(max),
        crate::api::post::DecodeError::Invalid(e) => Bad::Gzip(e.to_string()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// MessagePack for the tests, written with rmp's encoder.
    mod pack {
        pub fn array(out: &mut Vec<u8>, len: u32) {
            rmp::encode::write_array_len(out, len).unwrap();
        }
        pub fn map(out: &mut Vec<u8>, len: u32) {
            rmp::encode::write_map_len(out, len).unwrap();
        }
        pub fn str(out: &mut Vec<u8>, text: &str) {
            rmp::encode::write_str(out, text).unwrap();
        }
        pub fn bin(out: &mut Vec<u8>, bytes: &[u8]) {
            rmp::encode::write_bin(out, bytes).unwrap();
        }
        pub fn uint(out: &mut Vec<u8>, v: u64) {
            rmp::encode::write_uint(out, v).unwrap();
        }
        pub fn event_time(out: &mut Vec<u8>, seconds: u32, nanos: u32) {
            rmp::encode::write_ext_meta(out, 8, 0).unwrap();
            out.extend_from_slice(&seconds.to_be_bytes());
            out.extend_from_slice(&nanos.to_be_bytes());
        }
        /// `{"n": n}`.
        pub fn record(out: &mut Vec<u8>, n: u64) {
            map(out, 1);
            str(out, "n");
            uint(out, n);
        }
        /// `{"chunk": chunk}`, with `compressed` when given.
        pub fn option(out: &mut Vec<u8>, chunk: &str, compressed: Option<&str>) {
            map(out, 1 + u32::from(compressed.is_some()));
            str(out, "chunk");
            str(out, chunk);
            if let Some(c) = compressed {
                str(out, "compressed");
                str(out, c);
            }
        }
        /// Forward mode: `[tag, [[seconds + i, {"n": i}] for i in ns], {"chunk": chunk}]`.
        pub fn forward(tag: &str, seconds: u64, ns: std::ops::Range<u64>, chunk: &str) -> Vec<u8> {
            let mut out = Vec::new();
            array(&mut out, 3);
            str(&mut out, tag);
            array(&mut out, u32::try_from(ns.end - ns.start).unwrap());
            for n in ns {
                array(&mut out, 2);
                uint(&mut out, seconds + n);
                record(&mut out, n);
            }
            option(&mut out, chunk, None);
            out
        }
    }

    fn records(message: &Message) -> Vec<String> {
        message.batches.iter().flat_map(|b| b.iter().map(|r| String::from_utf8_lossy(r).into_owned())).collect()
    }

    fn decoded(bytes: &[u8]) -> Result<Vec<String>, Bad> {
        decode_message(bytes, 1 << 20).map(|m| records(&m))
    }

    /// The four modes of the specification give the same records; the chunk id is echoed as sent.
    #[test]
    fn every_mode_gives_one_json_record_per_event() {
        // Message: [tag, EventTime, record, option].
        let mut message = Vec::new();
        pack::array(&mut message, 4);
        pack::str(&mut message, "app.web");
        pack::event_time(&mut message, 1_764_547_200, 123_456_789);
        pack::record(&mut message, 7);
        pack::option(&mut message, "c2x1aWNl", None);
        let decoded_message = decode_message(&message, 1 << 20).unwrap();
        assert_eq!(
            records(&decoded_message),
            [r#"{"tag":"app.web","time":"2025-12-01T00:00:00.123456789Z","record":{"n":7}}"#]
        );
        let chunk = decoded_message.chunk.clone().unwrap();
        assert_eq!(ack_of(&message[chunk]), b"\x81\xa3ack\xa8c2x1aWNl");

        // Forward: integer seconds give whole seconds.
        let forward = pack::forward("app.web", 1_764_547_200, 0..3, "id");
        let expected: Vec<String> = (0..3)
            .map(|n| format!(r#"{{"tag":"app.web","time":"2025-12-01T00:00:0{n}Z","record":{{"n":{n}}}}}"#))
            .collect();
        assert_eq!(decoded(&forward).unwrap(), expected);

        // PackedForward, then CompressedPackedForward in two gzip members (read whole).
        let mut entries = Vec::new();
        for n in 0..3 {
            pack::array(&mut entries, 2);
            pack::uint(&mut entries, 1_764_547_200 + n);
            pack::record(&mut entries, n);
        }
        let packed = |blob: &[u8], compressed: Option<&str>| {
            let mut out = Vec::new();
            pack::array(&mut out, 3);
            pack::str(&mut out, "app.web");
            pack::bin(&mut out, blob);
            pack::option(&mut out, "id", compressed);
            out
        };
        assert_eq!(decoded(&packed(&entries, None)).unwrap(), expected);
        let gzip = |bytes: &[u8]| {
            use std::io::Write as _;
            let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
            gz.write_all(bytes).unwrap();
            gz.finish().unwrap()
        };
        let split = entries.len() / 2;
        let members = [gzip(&entries[..split]), gzip(&entries[split..])].concat();
        assert_eq!(decoded(&packed(&members, Some("gzip"))).unwrap(), expected);
        assert_eq!(decoded(&packed(&entries, Some("text"))).unwrap(), expected);
        assert_eq!(decoded(&packed(&entries, Some("zstd"))), Err(Bad::Compression("zstd".into())));
        // Fluent Bit's metrics (`fluent_signal: 1`, a CMetrics blob): said as such, not misread.
        let mut metrics = Vec::new();
        pack::array(&mut metrics, 3);
        pack::str(&mut metrics, "fluentbit.metrics");
        pack::bin(&mut metrics, &[0x80]);
        pack::map(&mut metrics, 2);
        pack::str(&mut metrics, "chunk");
        pack::str(&mut metrics, "id");
        pack::str(&mut metrics, "fluent_signal");
        pack::uint(&mut metrics, 1);
        assert_eq!(decoded(&metrics), Err(Bad::NotLogs("metrics")));
        assert!(matches!(decoded(&packed(b"not gzip", Some("gzip"))), Err(Bad::Gzip(_))));
        // Decompressed past the message limit.
        let big = gzip(&vec![0x90; 2 << 20]);
        assert_eq!(
            decode_message(&packed(&big, Some("gzip")), 1 << 20).map(|_| ()).unwrap_err(),
            Bad::TooLarge(1 << 20)
        );
    }

    /// A message refused half way through leaves no record behind, even when it had filled batches
    /// (the records of messages before it stay).
    #[test]
    fn a_refused_message_leaves_no_record_behind() {
        let mut records = Records::new();
        decode_into(&pack::forward("a", 0, 0..2, "one"), 1 << 30, &mut records).unwrap();
        // 3,000 entries of ~1 KiB (past a batch), the last with a time that is none.
        let mut bad = Vec::new();
        pack::array(&mut bad, 2);
        pack::str(&mut bad, "b");
        pack::array(&mut bad, 3_000);
        for n in 0..3_000 {
            pack::array(&mut bad, 2);
            if n == 2_999 {
                pack::str(&mut bad, "no time");
            } else {
                pack::uint(&mut bad, 0);
            }
            pack::map(&mut bad, 1);
            pack::str(&mut bad, "pad");
            pack::str(&mut bad, &"x".repeat(1_000));
        }
        assert_eq!(decode_into(&bad, 1 << 30, &mut records), Err(Bad::Time));
        let batches = records.finish();
        let kept: Vec<&[u8]> = batches.iter().flat_map(|b| b.iter()).collect();
        assert_eq!(kept.len(), 2);
        assert!(kept.iter().all(|r| r.starts_with(b"{\"tag\":\"a\"")));
    }

    /// Fluent Bit's Message mode carries an event's metadata in the option: kept beside the
    /// record (left out when empty), the chunk id still found.
    #[test]
    fn message_mode_metadata_in_the_option_is_kept() {
        let message = |metadata: u64| {
            let mut m = Vec::new();
            pack::array(&mut m, 4);
            pack::str(&mut m, "fb");
            pack::uint(&mut m, 0);
            pack::record(&mut m, 1);
            pack::map(&mut m, 2);
            pack::str(&mut m, "metadata");
            pack::map(&mut m, u32::try_from(metadata).unwrap());
            if metadata > 0 {
                pack::str(&mut m, "k");
                pack::uint(&mut m, metadata);
            }
            pack::str(&mut m, "chunk");
            pack::str(&mut m, "id");
            m
        };
        let with = decode_message(&message(1), 1 << 20).unwrap();
        assert_eq!(
            records(&with),
            [r#"{"tag":"fb","time":"1970-01-01T00:00:00Z","metadata":{"k":1},"record":{"n":1}}"#]
        );
        assert!(with.chunk.is_some());
        assert_eq!(decoded(&message(0)).unwrap(), [r#"{"tag":"fb","time":"1970-01-01T00:00:00Z","record":{"n":1}}"#]);
    }

    /// Fluent Bit's entries `[[time, metadata], record]`; MessagePack values JSON cannot hold.
    #[test]
    fn values_become_json_without_loss_where_json_can_hold_them() {
        let mut message = Vec::new();
        pack::array(&mut message, 2);
        pack::str(&mut message, "fb");
        pack::array(&mut message, 2);
        // [[EventTime, {"otlp": 1}], record]
        pack::array(&mut message, 2);
        pack::array(&mut message, 2);
        pack::event_time(&mut message, 0, 5);
        pack::map(&mut message, 1);
        pack::str(&mut message, "otlp");
        pack::uint(&mut message, 1);
        pack::map(&mut message, 8);
        pack::str(&mut message, "bin");
        pack::bin(&mut message, b"text");
        pack::str(&mut message, "raw");
        pack::bin(&mut message, &[0xff, 0x00]);
        pack::str(&mut message, "latin1");
        message.extend_from_slice(&[0xa2, b'a', 0xe9]);
        pack::uint(&mut message, 42);
        rmp::encode::write_bool(&mut message, true).unwrap();
        pack::str(&mut message, "nan");
        rmp::encode::write_f64(&mut message, f64::NAN).unwrap();
        pack::str(&mut message, "neg");
        rmp::encode::write_sint(&mut message, -5).unwrap();
        pack::str(&mut message, "at");
        pack::event_time(&mut message, 1, 0);
        pack::str(&mut message, "list");
        pack::array(&mut message, 2);
        rmp::encode::write_nil(&mut message).unwrap();
        rmp::encode::write_f32(&mut message, 1.5).unwrap();
        // [[EventTime, {}], {}]: empty metadata left out.
        pack::array(&mut message, 2);
        pack::array(&mut message, 2);
        pack::event_time(&mut message, 0, 0);
        pack::map(&mut message, 0);
        pack::map(&mut message, 0);
        let records = decoded(&message).unwrap();
        assert_eq!(
            records,
            [
                concat!(
                    r#"{"tag":"fb","time":"1970-01-01T00:00:00.000000005Z","metadata":{"otlp":1},"record":"#,
                    r#"{"bin":"text","raw":"/wA=","latin1":"a\ufffd","42":true,"nan":null,"neg":-5,"#,
                    r#""at":"1970-01-01T00:00:01.000000000Z","list":[null,1.5]}}"#
                )
                .replace("\\ufffd", "\u{fffd}"),
                r#"{"tag":"fb","time":"1970-01-01T00:00:00.000000000Z","record":{}}"#.to_string(),
            ]
        );
        for record in &records {
            serde_json::from_str::<serde_json::Value>(record).unwrap();
        }
    }

    /// What is not the protocol is refused with the reason, whatever it claims to hold.
    #[test]
    fn what_is_not_the_protocol_is_refused_with_the_reason() {
        let message = |build: &dyn Fn(&mut Vec<u8>)| {
            let mut out = Vec::new();
            build(&mut out);
            decoded(&out).map(|_| ())
        };
        // Not an array; a tag that is a number; a string where the time goes, with 3 elements.
        assert!(matches!(message(&|o| pack::str(o, "hello")), Err(Bad::Shape(_))));
        assert!(matches!(
            message(&|o| {
                pack::array(o, 3);
                pack::uint(o, 1);
                pack::uint(o, 1);
                pack::map(o, 0);
            }),
            Err(Bad::Shape(_))
        ));
        // A time that is a boolean, in an entry.
        assert_eq!(
            message(&|o| {
                pack::array(o, 2);
                pack::str(o, "t");
                pack::array(o, 1);
                pack::array(o, 2);
                rmp::encode::write_bool(o, true).unwrap();
                pack::map(o, 0);
            }),
            Err(Bad::Time)
        );
        // An EventTime with 10^9 nanoseconds; an entry of three.
        assert_eq!(
            message(&|o| {
                pack::array(o, 3);
                pack::str(o, "t");
                pack::event_time(o, 0, 1_000_000_000);
                pack::map(o, 0);
            }),
            Err(Bad::Time)
        );
        assert_eq!(
            message(&|o| {
                pack::array(o, 2);
                pack::str(o, "t");
                pack::array(o, 1);
                pack::array(o, 3);
                pack::uint(o, 0);
                pack::map(o, 0);
                pack::map(o, 0);
            }),
            Err(Bad::Entry)
        );
        // A map key that is a map.
        assert_eq!(
            message(&|o| {
                pack::array(o, 3);
                pack::str(o, "t");
                pack::uint(o, 0);
                pack::map(o, 1);
                pack::map(o, 0);
                pack::uint(o, 0);
            }),
            Err(Bad::Key)
        );
    }

    /// An event past a record's limit is a record like the others (the engine sends it to the
    /// error output, [`Source::max_record_bytes`]); a message refused after one forgets it with the
    /// records it had written.
    #[test]
    fn an_event_past_a_records_limit_is_taken_with_the_rest() {
        let entries = |o: &mut Vec<u8>, bad_last: bool| {
            pack::array(o, 2);
            pack::str(o, "t");
            pack::array(o, 3);
            for (n, big) in [(0, false), (1, true), (2, false)] {
                if bad_last && n == 2 {
                    pack::uint(o, 0);
                    continue;
                }
                pack::array(o, 2);
                pack::uint(o, n);
                if big {
                    pack::map(o, 1);
                    pack::str(o, "blob");
                    pack::str(o, &"x".repeat(MAX_RECORD_BYTES));
                } else {
                    pack::record(o, n);
                }
            }
        };
        let mut bytes = Vec::new();
        entries(&mut bytes, false);
        let taken = decode_message(&bytes, 16 << 20).unwrap();
        let records: Vec<serde_json::Value> =
            taken.batches.iter().flat_map(|b| b.iter().map(|r| serde_json::from_slice(r).unwrap())).collect();
        assert_eq!(
            records.iter().map(|r| r["time"].as_str().unwrap()).collect::<Vec<_>>(),
            ["1970-01-01T00:00:00Z", "1970-01-01T00:00:01Z", "1970-01-01T00:00:02Z"]
        );
        assert_eq!(records[1]["record"]["blob"].as_str().map(str::len), Some(MAX_RECORD_BYTES));
        // The same with its last entry not an entry: refused whole, nothing of it kept.
        let mut records = Records::new();
        let mut bad = Vec::new();
        entries(&mut bad, true);
        assert!(matches!(decode_into(&bad, 16 << 20, &mut records), Err(Bad::Entry)));
        assert_eq!(records.counts(), (0, 0));
    }

    /// Messages of every mode are found whole when their bytes arrive one at a time (each read a
    /// byte more than the last), the framer resuming where it stopped each time.
    #[test]
    fn the_framer_finds_whole_messages_arriving_a_byte_at_a_time() {
        let forward = pack::forward("a", 0, 0..20, "one");
        let mut entries = Vec::new();
        for n in 0..300u64 {
            pack::array(&mut entries, 2);
            pack::event_time(&mut entries, 1_764_547_200, 7);
            pack::record(&mut entries, n);
        }
        let mut packed = Vec::new();
        pack::array(&mut packed, 3);
        pack::str(&mut packed, "b");
        pack::bin(&mut packed, &entries);
        pack::option(&mut packed, "two", Some("gzip"));
        let mut message = Vec::new();
        pack::array(&mut message, 4);
        pack::str(&mut message, "c");
        pack::uint(&mut message, 1);
        pack::record(&mut message, 9);
        pack::option(&mut message, "three", None);
        let stream = [forward.clone(), packed.clone(), message.clone()].concat();
        let mut framer = Framer::default();
        let (mut offset, mut ends) = (0, Vec::new());
        for arrived in 1..=stream.len() {
            while let Some(end) = framer.next(&stream[offset..arrived], usize::MAX).unwrap() {
                offset += end;
                ends.push(offset);
            }
        }
        assert_eq!(ends, [forward.len(), forward.len() + packed.len(), stream.len()]);
    }

    /// A message is found whole however its bytes are cut by reads; a claimed length is never
    /// trusted (nothing is allocated for it, a message past the limit is refused as its header
    /// comes), nor a nesting past the depth.
    #[test]
    fn the_framer_finds_whole_messages_across_any_cut() {
        let first = pack::forward("a", 0, 0..50, "one");
        let second = pack::forward("b", 0, 50..60, "two");
        let stream = [first.clone(), second.clone()].concat();
        for cut in 0..=stream.len() {
            let mut framer = Framer::default();
            let mut ends = Vec::new();
            let mut seen = &stream[..cut];
            let mut offset = 0;
            for arrived in [cut, stream.len()] {
                seen = &stream[..arrived];
                while let Some(end) = framer.next(&seen[offset..], usize::MAX).unwrap() {
                    offset += end;
                    ends.push(offset);
                }
            }
            assert_eq!(ends, [first.len(), stream.len()], "cut at {cut}");
            assert_eq!(seen.len(), offset);
        }
        // A str claiming 4 GiB: refused from its header against the limit, nothing allocated.
        let mut claim = Vec::new();
        pack::array(&mut claim, 3);
        pack::str(&mut claim, "t");
        claim.extend_from_slice(&[0xdb, 0xff, 0xff, 0xff, 0xff]);
        assert_eq!(Framer::default().next(&claim, 1 << 20), Err(Bad::TooLarge(1 << 20)));
        // An array claiming 4 billion elements waits for them (each at least a byte).
        assert_eq!(Framer::default().next(&[0xdd, 0xff, 0xff, 0xff, 0xff, 0x01], usize::MAX), Ok(None));
        assert_eq!(Framer::default().next(&[0xdd, 0xff, 0xff, 0xff, 0xff, 0x01], 5), Err(Bad::TooLarge(5)));
        assert_eq!(Framer::default().next(&[0x91; MAX_DEPTH + 2], usize::MAX), Err(Bad::TooDeep));
        assert_eq!(Framer::default().next(&[0xc1], usize::MAX), Err(Bad::NotMessagePack));
    }

    /// A JSON value as MessagePack (strings as str, numbers as they are).
    fn pack_json(out: &mut Vec<u8>, value: &serde_json::Value) {
        use serde_json::Value;
        match value {
            Value::Null => rmp::encode::write_nil(out).unwrap(),
            Value::Bool(b) => rmp::encode::write_bool(out, *b).unwrap(),
            Value::Number(n) => match (n.as_u64(), n.as_i64(), n.as_f64()) {
                (Some(u), _, _) => pack::uint(out, u),
                (_, Some(i), _) => drop(rmp::encode::write_sint(out, i).unwrap()),
                (_, _, Some(f)) => rmp::encode::write_f64(out, f).unwrap(),
                _ => unreachable!(),
            },
            Value::String(text) => pack::str(out, text),
            Value::Array(items) => {
                pack::array(out, u32::try_from(items.len()).unwrap());
                items.iter().for_each(|item| pack_json(out, item));
            }
            Value::Object(map) => {
                pack::map(out, u32::try_from(map.len()).unwrap());
                for (key, item) in map {
                    pack::str(out, key);
                    pack_json(out, item);
                }
            }
        }
    }

    fn json_values() -> impl proptest::strategy::Strategy<Value = serde_json::Value> {
        use proptest::prelude::*;
        use serde_json::Value;
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            any::<u64>().prop_map(Value::from),
            (-1e300f64..1e300).prop_map(Value::from),
            ".{0,12}".prop_map(Value::String),
        ];
        leaf.prop_recursive(4, 48, 6, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                proptest::collection::btree_map(".{0,6}", inner, 0..6)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest::proptest! {
        /// Whatever bytes arrive, framing and decoding never panic, and whatever is taken is JSON.
        #[test]
        fn any_bytes_are_framed_and_decoded_without_panic(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..256)) {
            let mut framer = Framer::default();
            if let Ok(Some(end)) = framer.next(&bytes, 1 << 20)
                && let Ok(message) = decode_message(&bytes[..end], 1 << 20)
            {
                for record in message.batches.iter().flat_map(|b| b.iter()) {
                    proptest::prop_assert!(serde_json::from_slice::<serde_json::Value>(record).is_ok());
                }
            }
        }

        /// A record of JSON-like values, sent in Message mode, is delivered as that JSON, byte for
        /// byte as serde_json writes it.
        #[test]
        fn records_arrive_as_the_json_they_hold(record in json_values(), seconds in 0u32..4_000_000_000) {
            let mut message = Vec::new();
            pack::array(&mut message, 3);
            pack::str(&mut message, "prop");
            pack::uint(&mut message, u64::from(seconds));
            pack_json(&mut message, &record);
            proptest::prop_assert_eq!(Framer::default().next(&message, usize::MAX), Ok(Some(message.len())));
            let taken = decoded(&message).map_err(|e| proptest::test_runner::TestCaseError::fail(e.to_string()))?;
            // Compared as text: serde_json's reader rounds some floats' last digit, its writer not.
            let time = chrono::DateTime::from_timestamp(i64::from(seconds), 0).unwrap();
            let time = time.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
            let expected = format!(r#"{{"tag":"prop","time":"{time}","record":{}}}"#, serde_json::to_string(&record).unwrap());
            proptest::prop_assert_eq!(&taken[0], &expected);
        }
    }

    /// The handshake's digests are SHA-512 of salt, hostname, nonce and key, in lowercase hex;
    /// a `PING` is read as its fields.
    #[test]
    fn the_handshake_reads_pings_and_digests_as_the_specification_says() {
        // SHA-512("abc") (FIPS 180-2's example), given in two parts.
        assert!(hex_sha512(&[b"a", b"bc"]).starts_with("ddaf35a193617abacc417349ae204131"));
        let mut ping = Vec::new();
        pack::array(&mut ping, 6);
        for field in ["PING", "client.local", "salt", "digest", "", ""] {
            pack::str(&mut ping, field);
        }
        let parsed = Ping::parse(&ping).unwrap();
        assert_eq!((parsed.hostname, parsed.salt, parsed.digest), (&b"client.local"[..], &b"salt"[..], &b"digest"[..]));
        let mut helo_reply = Vec::new();
        pack::array(&mut helo_reply, 2);
        pack::str(&mut helo_reply, "HELO");
        pack::map(&mut helo_reply, 0);
        assert!(Ping::parse(&helo_reply).is_err());
        // HELO and PONG are whole MessagePack values of the shapes clients check.
        let nonce = [7u8; 16];
        assert_eq!(Framer::default().next(&helo(&nonce, None), usize::MAX), Ok(Some(helo(&nonce, None).len())));
        let pong = pong(true, "", "sluice", &"f".repeat(128));
        assert_eq!(Framer::default().next(&pong, usize::MAX), Ok(Some(pong.len())));
        // Users: the PING's password digest is SHA-512 of the HELO's auth salt, the name and the password.
        let users =
            Users::from_config(Some(vec![FluentUser { username: "fb".into(), password: "pw".into() }])).unwrap();
        let digest = hex_sha512(&[b"salt", b"fb", b"pw"]);
        assert!(users.admits(b"salt", b"fb", digest.as_bytes()));
        assert!(
            !users.admits(b"other salt", b"fb", digest.as_bytes()) && !users.admits(b"salt", b"fc", digest.as_bytes())
        );
        assert!(format!("{users:?}").contains("fb") && !format!("{users:?}").contains("pw"));
        let user = |name: &str, password: &str| FluentUser { username: name.into(), password: password.into() };
        assert!(Users::from_config(Some(vec![])).is_err());
        assert!(Users::from_config(Some(vec![user("a", "")])).is_err());
        assert!(Users::from_config(Some(vec![user("a", "x"), user("a", "y")])).is_err());
        assert!(!Users::from_config(None).unwrap().required());
        let mut with_salt = Vec::new();
        pack::array(&mut with_salt, 2);
        pack::str(&mut with_salt, "HELO");
        pack::map(&mut with_salt, 3);
        pack::str(&mut with_salt, "nonce");
        pack::bin(&mut with_salt, &nonce);
        pack::str(&mut with_salt, "auth");
        pack::bin(&mut with_salt, &[9; 16]);
        pack::str(&mut with_salt, "keepalive");
        rmp::encode::write_bool(&mut with_salt, true).unwrap();
        assert_eq!(helo(&nonce, Some(&[9; 16])), with_salt);
        assert!(
            constant_time_eq(b"same", b"same") && !constant_time_eq(b"same", b"sane") && !constant_time_eq(b"a", b"ab")
        );
    }

    /// Sends `expected`'s events to `port` in Forward-mode messages of 500 with chunk ids, each
    /// answered `{"ack": id}` before the next goes.
    fn forwarding_producer(port: u16, events: u64) -> sluice_engine::testkit::source::Producer {
        Box::new(move || {
            use std::io::{Read as _, Write as _};
            let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
            for start in (0..events).step_by(500) {
                let chunk = format!("chunk-{start}");
                let message = pack::forward("kit", 1_764_547_200, start..(start + 500).min(events), &chunk);
                stream.write_all(&message).map_err(|e| e.to_string())?;
                let expected = ack_of(&{
                    let mut c = Vec::new();
                    pack::str(&mut c, &chunk);
                    c
                });
                let mut ack = vec![0; expected.len()];
                stream.read_exact(&mut ack).map_err(|e| e.to_string())?;
                if ack != expected {
                    return Err(format!("ack {ack:?} for {chunk}"));
                }
            }
            Ok(())
        })
    }

    /// The source through the real runtime, fed by acknowledged Forward-mode messages: every
    /// event taken exactly once at 1, 2 and 4 workers, all delivered when the stop comes right
    /// after the last ack, and a restarted source does not replay what its log delivered.
    #[test]
    fn passes_the_source_conformance_kit() {
        use sluice_engine::testkit::source::{Check, SourceCase, conformance};

        let dir = tempfile::tempdir().unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let events = 5_000;
        let expected: Vec<Vec<u8>> = (0..events)
            .map(|n| {
                let time = chrono::DateTime::from_timestamp(1_764_547_200 + n, 0).unwrap();
                format!(
                    r#"{{"tag":"kit","time":"{}","record":{{"n":{n}}}}}"#,
                    time.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
                )
                .into_bytes()
            })
            .collect();
        let table = format!("type = \"fluent\"\nlisten = \"127.0.0.1:{port}\"\n");
        let produce = forwarding_producer(port, u64::try_from(events).unwrap());
        let case = SourceCase::stream(table, expected, produce, dir.path());
        let report = conformance(crate::registry(), &case).unwrap_or_else(|e| panic!("{e}"));
        assert!(report.passed.contains(&Check::Resume) && report.skipped.is_empty(), "{report:?}");
    }
}

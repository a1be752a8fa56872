//! TLS settings of the connectors. The client side: one builder of the HTTP client of the
//! connectors that send requests (`http_endpoint`, `splunk`, `opensearch` and `lambda`), and the
//! `tls` table they share:
//!
//! ```toml
//! tls = { ca = "certs/private-ca.pem" }                            # trust a private CA too
//! tls = { ca = "splunk-ca.pem", verify_hostname = false }          # that CA alone, any name
//! tls = { cert = "certs/sluice.pem", key = "certs/sluice.key" }    # a client certificate (mutual TLS)
//! tls = { verify_certificate = false }                             # accept any certificate (tests only)
//! ```
//!
//! Beyond Firehose, whose endpoints must present a publicly trusted certificate: a self-hosted
//! Splunk, OpenSearch or collector usually presents one of a private CA (Splunk's default HEC
//! certificate is signed by its own `SplunkCommonCA` and named `SplunkServerDefaultCert`, the
//! OpenSearch image's by its demo CA). Object stores (`object_store` sinks and sources,
//! `backup_store`, `staging`) take `tls = { ca }` alone ([`take_store_roots`], [`store_roots`]):
//! object_store's client adds roots and presents no certificate. Paths are taken from the
//! pipeline file's folder. The server
//! side (the API sources' `tls = { cert, key }`) has its files checked by [`key_pair`] too, and
//! [`refusal`] finds a refused certificate among any client's error causes.
//!
//! Guarantees: every file is read and checked when the pipeline is configured (`sluice validate`
//! says what is wrong with it, at its key: unreadable, no PEM certificate in it, a key that is
//! not a private key, a client certificate without its key, a key not of that certificate), so a
//! run never starts with TLS settings it cannot use. `ca` adds to the system's trusted roots, never
//! replaces them, except with `verify_hostname = false`, which trusts `ca` alone (a name check
//! skipped against every public CA would accept any site's certificate). `verify_certificate =
//! false` is logged as a warning when the sink is configured. One builder makes every client:
//! redirects are never followed (a redirected delivery would send records where nobody asked), and
//! each request is bounded by the connector's timeout.
//!
//! Renewed files are taken without a restart (beyond Firehose, which has none to renew): a
//! [`TlsClient`] looks at its `ca`, `cert` and `key` files at most every [`LOOK_EVERY`] when a
//! request asks for the client, and makes the client again from them once a change has settled
//! (the files unchanged at the next look, or written 2 s before or longer, so none is read half
//! written) and passes the checks of configure time; until then, and when they
//! fail (said once per change of the files), requests use the client made before. A request in
//! flight keeps the client it began with. Object stores take a renewed `tls.ca` the same way
//! (`RenewingStore` of the `object_store` sink), and the `postgres` sink its `sslrootcert`, through
//! the same `Renewing`. Each change refused is counted in the connector's
//! `TlsRenewalFailures` ([`RENEWAL_FAILURES`]) and written to the pipeline's error log
//! (`Tls.RenewalRefused`, a warning) once its run hands it its counters ([`TlsMetrics`]); the
//! family is there at 0 from then on for every connector with files to renew, so an alert sees its
//! first refusal. When the client certificate in use ends is the gauge
//! `ClientCertificateExpiry_seconds` ([`sluice_engine::metrics::CLIENT_CERTIFICATE_EXPIRY`]): the one read at start, then
//! each renewed one taken (a refused one changes nothing).

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use sluice_engine::config::document::join_ticked;
use sluice_engine::config::{Diagnostic, Problems, Section};

/// The keys of the `tls` table.
pub const TLS_KEYS: &[&str] = &["ca", "cert", "key", "verify_certificate", "verify_hostname"];

/// What a client trusts.
enum Trust {
    /// The system's roots and these (`ca`, if any), the name checked (the default).
    Added(Vec<reqwest::Certificate>),
    /// These roots alone, the name not checked (`verify_hostname = false`).
    OnlyAnyName(Vec<reqwest::Certificate>),
    /// Any certificate (`verify_certificate = false`).
    Any,
}

impl Trust {
    /// The same trust with `roots` (read again) in place of its own.
    fn with_roots(&self, roots: Vec<reqwest::Certificate>) -> Trust {
        match self {
            Trust::Added(_) => Trust::Added(roots),
            Trust::OnlyAnyName(_) => Trust::OnlyAnyName(roots),
            Trust::Any => Trust::Any,
        }
    }
}

/// A connector's `tls` table, its files read and checked (the default: the system's roots, full
/// verification, no client certificate).
pub struct ClientTls {
    trust: Trust,
    /// `cert` and `key`.
    identity: Option<reqwest::Identity>,
    /// When `cert`'s certificate ends (Unix seconds), when it can be read.
    certificate_ends: Option<u64>,
    /// The files `trust` and `identity` were read from, to read again when they change.
    files: ClientFiles,
    /// The table, as errors name it (`` `sinks.siem.tls` ``).
    label: String,
    /// Where problems building the client point (the `tls` table, or the connector's).
    at: Range<usize>,
}

/// The files of a `tls` table, relative paths taken from the pipeline file's folder.
#[derive(Debug, Clone, Default)]
struct ClientFiles {
    ca: Option<PathBuf>,
    /// `cert` and `key`.
    identity: Option<(PathBuf, PathBuf)>,
}

impl ClientFiles {
    fn paths(&self) -> Vec<&Path> {
        let identity = self.identity.iter().flat_map(|(cert, key)| [cert.as_path(), key.as_path()]);
        self.ca.iter().map(PathBuf::as_path).chain(identity).collect()
    }

    /// The roots and identity (with its certificate's end, when it can be read) the files hold
    /// now, checked as at configure time; else why not.
    #[allow(clippy::type_complexity)]
    fn read(&self) -> Result<(Vec<reqwest::Certificate>, Option<(reqwest::Identity, Option<u64>)>), String> {
        let roots = match &self.ca {
            Some(ca) => read(Path::new(""), ca).and_then(|pem| ca_roots(&pem)).map_err(|why| format!("`ca` {why}"))?,
            None => Vec::new(),
        };
        let identity = match &self.identity {
            Some((cert, key)) => Some(
                identity(Path::new(""), cert, key)
                    .map_err(|(on_key, why)| format!("`{}` {why}", if on_key { "key" } else { "cert" }))?,
            ),
            None => None,
        };
        Ok((roots, identity))
    }
}

/// Where a relative path of a `tls` table is taken from (said in the hints of its files).
pub const RELATIVE_PATHS: &str = "a relative path is taken from the pipeline file's folder";

impl ClientTls {
    /// Takes `tls` out of a connector's table before the connector reads its own keys (files are
    /// relative to `base_dir`); every problem in it is added to `found` (then `None`).
    pub fn take_from(table: &mut Section, base_dir: &Path, found: &mut Problems) -> Option<ClientTls> {
        let mut problems = Vec::new();
        let mut tls = ClientTls {
            trust: Trust::Added(Vec::new()),
            identity: None,
            certificate_ends: None,
            files: ClientFiles::default(),
            label: String::new(),
            at: table.span.clone(),
        };
        let Some(mut section) = table.take_table("tls", &mut problems) else {
            if !table.misread("tls") {
                return Some(tls);
            }
            if let Some(problem) = problems.last_mut() {
                problem.hint =
                    Some(format!("write `tls = {{ ca = \"private-ca.pem\" }}` (its keys: {})", join_ticked(TLS_KEYS)));
            }
            return report(problems, found);
        };
        tls.at = section.span.clone();
        let label = table.key_at("tls").label;
        tls.label = label.clone();
        let key_label = |key: &str| section.key_at(key).label;
        let (ca_label, cert_label, key_label) = (key_label("ca"), key_label("cert"), key_label("key"));
        let ca = section.take_string("ca", &mut problems);
        let cert = section.take_string("cert", &mut problems);
        let key = section.take_string("key", &mut problems);
        let verify_certificate = section.take_bool("verify_certificate", &mut problems);
        let verify_hostname = section.take_bool("verify_hostname", &mut problems);
        // Written, even if written wrong (its problem said already): no follow-on is reported.
        let written = |key: &str, given: bool| given || section.misread(key);
        let (ca_written, cert_written, key_written) =
            (written("ca", ca.is_some()), written("cert", cert.is_some()), written("key", key.is_some()));
        let hostname_written = written("verify_hostname", verify_hostname.is_some());
        let certificate_misread = section.misread("verify_certificate");
        section.deny_unknown(TLS_KEYS, &mut problems);
        let off = |flag: &Option<toml::Spanned<bool>>| flag.as_ref().is_some_and(|v| !*v.get_ref());
        let (any_certificate, any_name) = (off(&verify_certificate), off(&verify_hostname));
        let mut roots = Vec::new();
        if let Some(ca) = &ca {
            match read(base_dir, Path::new(ca.get_ref())).and_then(|pem| ca_roots(&pem)) {
                Ok(read) => {
                    roots = read;
                    tls.files.ca = Some(base_dir.join(ca.get_ref()));
                }
                Err(why) => problems.push(Diagnostic::new(ca.span(), format!("{ca_label} {why}")).with_hint(format!(
                    "a PEM file of the CA certificates that sign the server's (`-----BEGIN CERTIFICATE-----`); {RELATIVE_PATHS}"
                ))),
            }
        }
        tls.trust = if any_certificate {
            Trust::Any
        } else if any_name {
            Trust::OnlyAnyName(roots)
        } else {
            Trust::Added(roots)
        };
        match (&cert, &key) {
            (Some(cert), Some(key)) => match identity(base_dir, Path::new(cert.get_ref()), Path::new(key.get_ref())) {
                Ok((identity, ends)) => {
                    (tls.identity, tls.certificate_ends) = (Some(identity), ends);
                    tls.files.identity = Some((base_dir.join(cert.get_ref()), base_dir.join(key.get_ref())));
                }
                Err((on_key, why)) => {
                    let (span, name) = if on_key { (key.span(), &key_label) } else { (cert.span(), &cert_label) };
                    problems.push(Diagnostic::new(span, format!("{name} {why}")).with_hint(format!(
                        "`cert`: the client certificate (and its chain), `key`: its private key, both PEM; {RELATIVE_PATHS}"
                    )));
                }
            },
            (Some(given), None) | (None, Some(given)) if !(cert_written && key_written) => {
                let (has, lacks) = if cert.is_some() { ("cert", "key") } else { ("key", "cert") };
                problems.push(
                    Diagnostic::new(given.span(), format!("{label} has `{has}` without `{lacks}`")).with_hint(
                        "a client certificate is `cert` (its PEM chain) and `key` (its PEM private key) together",
                    ),
                );
            }
            _ => {}
        }
        // (With `verify_certificate = false` the next check says what is wrong.)
        if let Some(hostname) = verify_hostname.as_ref().filter(|_| any_name)
            && !ca_written
            && !any_certificate
            && !certificate_misread
        {
            problems.push(
                Diagnostic::new(hostname.span(), format!("{label} has `verify_hostname = false` without `ca`")).with_hint(
                    "the certificate is then checked against `ca` alone, its name not at all: give the CA that signs it",
                ),
            );
        }
        if let Some(off) = verify_certificate.as_ref().filter(|_| any_certificate) {
            if ca_written || hostname_written {
                let other = if ca_written { "ca" } else { "verify_hostname" };
                problems.push(
                    Diagnostic::new(off.span(), format!("{label} has `verify_certificate = false` with `{other}`"))
                        .with_hint(format!(
                            "accepting any certificate leaves nothing for `{other}` to do: keep one of the two"
                        )),
                );
            } else {
                tracing::warn!(
                    "{label}: verify_certificate = false: any certificate is accepted, so anyone on the way can read and change what is sent"
                );
            }
        }
        if problems.is_empty() { Some(tls) } else { report(problems, found) }
    }

    /// The client of a connector: requests bounded by `timeout`, no redirects, this TLS, made again
    /// when its files change (module docs). A client the TLS settings cannot make (a key that is
    /// not the certificate's) is a problem at `tls`.
    pub fn client(self, timeout: Duration) -> Result<TlsClient, Diagnostic> {
        let client = build(&self.trust, self.identity.as_ref(), timeout)
            .map_err(|why| Diagnostic::new(self.at.clone(), format!("cannot build the HTTP client: {why}")))?;
        let paths: Vec<PathBuf> = self.files.paths().into_iter().map(Path::to_path_buf).collect();
        let reloading = (!paths.is_empty()).then(|| Reloading {
            client: Renewing::new(format!("the TLS files of {}", self.label), paths, client.clone()),
            files: self.files,
            trust: self.trust,
            timeout,
        });
        if let (Some(reloading), Some(ends)) = (&reloading, self.certificate_ends) {
            reloading.client.tls_metrics().client_certificate_read(ends);
        }
        Ok(TlsClient { client, reloading: reloading.map(Arc::new) })
    }
}

/// A client of `trust` (its roots replaced by those read again, when given) and `identity`.
fn build(trust: &Trust, identity: Option<&reqwest::Identity>, timeout: Duration) -> Result<reqwest::Client, String> {
    let mut builder = reqwest::Client::builder().timeout(timeout).redirect(reqwest::redirect::Policy::none());
    builder = match trust {
        Trust::Added(roots) if roots.is_empty() => builder,
        Trust::Added(roots) => builder.tls_certs_merge(roots.iter().cloned()),
        Trust::OnlyAnyName(roots) => {
            builder.tls_certs_only(roots.iter().cloned()).tls_danger_accept_invalid_hostnames(true)
        }
        Trust::Any => builder.tls_danger_accept_invalid_certs(true),
    };
    if let Some(identity) = identity {
        builder = builder.identity(identity.clone());
    }
    builder.build().map_err(|e| sluice_engine::redact::error(&e).to_string())
}

/// A certificate this close to its end is warned about when it is read (the listener's, a client's):
/// the alert rules' threshold, which the dashboard and `sluice top` follow too.
pub const WARN_WITHIN: Duration = Duration::from_secs(sluice_engine::metrics::CERTIFICATE_ENDING_DAYS * 86_400);

/// The subject and end (Unix seconds) of a certificate, when it parses as X.509 (an end not known
/// is no reason to refuse what rustls takes).
pub(crate) fn certificate_expiry(der: &CertificateDer<'_>) -> Option<(String, u64)> {
    use x509_cert::der::Decode;
    let certificate = x509_cert::Certificate::from_der(der.as_ref()).ok()?;
    let tbs = certificate.tbs_certificate;
    Some((tbs.subject.to_string(), tbs.validity.not_after.to_unix_duration().as_secs()))
}

/// How near a certificate's end is, with the end as RFC 3339 text.
#[derive(Debug, Clone, PartialEq)]
pub enum Ends {
    /// It has ended.
    Past(String),
    /// Within [`WARN_WITHIN`].
    Soon {
        /// When it ends.
        at: String,
        /// In how many days.
        days: f64,
    },
    /// Later.
    Later(String),
}

impl Ends {
    /// Where `expiry_s` (Unix seconds) is from now.
    pub fn of(expiry_s: u64) -> Ends {
        let now = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        Self::from(expiry_s, now)
    }

    fn from(expiry_s: u64, now: u64) -> Ends {
        let at = chrono::DateTime::from_timestamp(i64::try_from(expiry_s).unwrap_or(i64::MAX), 0).map_or_else(
            || format!("{expiry_s} (Unix seconds)"),
            |t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        );
        if expiry_s <= now {
            Ends::Past(at)
        } else if expiry_s - now < WARN_WITHIN.as_secs() {
            Ends::Soon { at, days: (expiry_s - now) as f64 / 86_400.0 }
        } else {
            Ends::Later(at)
        }
    }
}

/// Warns when the client certificate of the file `cert` (its chain `certs`) has ended or ends
/// within [`WARN_WITHIN`]: a server that checks client certificates refuses an ended one. Said
/// when the file is read: by `sluice validate`, at a run's start, and at each renewal. When it
/// ends (Unix seconds), if that can be read.
fn warn_of_client_certificate_end(cert: &Path, certs: &[CertificateDer<'_>]) -> Option<u64> {
    let (subject, expiry_s) = certs.first().and_then(certificate_expiry)?;
    let cert = cert.display();
    match Ends::of(expiry_s) {
        Ends::Past(at) => tracing::warn!(
            "the client certificate in {cert} ({subject}) ended at {at}, so servers that check client certificates refuse it; renew it (renewed files are used without a restart)"
        ),
        Ends::Soon { at, days } => tracing::warn!(
            "the client certificate in {cert} ({subject}) ends at {at}, in {days:.1} days; renew it (renewed files are used without a restart)"
        ),
        Ends::Later(_) => {}
    }
    Some(expiry_s)
}

/// The counter family of renewed TLS files a connector refused (`sluice_TlsRenewalFailures`; the
/// API listener's own is `ListenerCertificateReloadFailures`).
pub const RENEWAL_FAILURES: sluice_engine::metrics::Family = sluice_engine::metrics::Family {
    name: "TlsRenewalFailures",
    help: "Renewed TLS files (ca, cert, key) the connector refused and did not use.",
};

/// The error log's code of a refused renewal.
pub const RENEWAL_REFUSED: &str = "Tls.RenewalRefused";

/// What a connector's counters are told of its TLS files: the refusals family started at 0, each
/// refused renewal counted and written to the error log (as a warning: the files before are still
/// used, and the next change is tried), which also makes it a log line, and when the client
/// certificate it presents ends.
pub trait TlsMeter: Send + Sync {
    /// The run handed the counters over: [`RENEWAL_FAILURES`] starts at 0.
    fn start(&self);
    /// A renewal was refused: `message` says which files and why.
    fn refused(&self, message: &str);
    /// The client certificate presented from now on ends at `expiry_s` (Unix seconds):
    /// [`sluice_engine::metrics::CLIENT_CERTIFICATE_EXPIRY`].
    fn client_certificate_ends(&self, expiry_s: u64);
}

/// A sink's and a source's meters count and report alike.
macro_rules! tls_meter {
    ($($meter:ty),*) => {$(
        impl TlsMeter for $meter {
            fn start(&self) {
                self.count(RENEWAL_FAILURES, 0);
            }
            fn refused(&self, message: &str) {
                self.count(RENEWAL_FAILURES, 1);
                self.report(sluice_engine::error_log::Level::Warn, RENEWAL_REFUSED, message);
            }
            fn client_certificate_ends(&self, expiry_s: u64) {
                self.set_client_certificate_expiry(expiry_s);
            }
        }
    )*};
}

tls_meter!(sluice_engine::metrics::SinkMeter, sluice_engine::metrics::SourceMeter);

/// A transform's (its refusals labelled `files="tls"`: a transform's own families carry a label).
impl TlsMeter for Arc<sluice_engine::metrics::TransformMetrics> {
    fn start(&self) {
        self.count(RENEWAL_FAILURES, "files", "tls", 0);
    }
    fn refused(&self, message: &str) {
        self.count(RENEWAL_FAILURES, "files", "tls", 1);
        self.report(sluice_engine::error_log::Level::Warn, RENEWAL_REFUSED, message);
    }
    fn client_certificate_ends(&self, expiry_s: u64) {
        self.set_client_certificate_expiry(expiry_s);
    }
}

/// Where a connector's TLS files are metered (refused renewals, its client certificate's end):
/// nowhere until its run hands over its counters ([`Self::meter_with`]; `sluice validate` and
/// checks meter nothing). Clones share it, so the connector keeps one and each `Renewing` it made
/// meters through it. The default stands for a connector with no file to renew: it meters nothing
/// and starts no family.
#[derive(Clone, Default)]
pub struct TlsMetrics(Option<Arc<Metered>>);

/// What [`TlsMetrics`] shares.
#[derive(Default)]
struct Metered {
    meter: OnceLock<Box<dyn TlsMeter>>,
    /// When the client certificate in use ends (Unix seconds; 0: none, or its end not known),
    /// kept for the meter handed over later.
    client_certificate_ends: AtomicU64,
}

impl TlsMetrics {
    /// Meters from now on with `meter`, starting the refusals at 0 and setting the client
    /// certificate's end when there is one; the first meter handed over is kept (each worker of a
    /// transform hands one).
    pub fn meter_with(&self, meter: impl TlsMeter + 'static) {
        if let Some(metered) = &self.0
            && metered.meter.get().is_none()
        {
            meter.start();
            if metered.meter.set(Box::new(meter)).is_ok() {
                // (Read after the meter is in place: an end read meanwhile is set by its reader too.)
                self.set_client_certificate_end();
            }
        }
    }

    /// The client certificate presented from now on ends at `expiry_s` (Unix seconds).
    fn client_certificate_read(&self, expiry_s: u64) {
        if let Some(metered) = &self.0 {
            metered.client_certificate_ends.store(expiry_s, Ordering::Relaxed);
            self.set_client_certificate_end();
        }
    }

    /// Sets the gauge from the end kept, once there is a meter and an end.
    fn set_client_certificate_end(&self) {
        let Some(metered) = &self.0 else { return };
        let expiry_s = metered.client_certificate_ends.load(Ordering::Relaxed);
        if let Some(meter) = metered.meter.get().filter(|_| expiry_s > 0) {
            meter.client_certificate_ends(expiry_s);
        }
    }

    /// Counts and reports a refusal; whether a meter took it (else the caller logs it).
    fn refused(&self, message: &str) -> bool {
        let meter = self.0.as_ref().and_then(|metered| metered.meter.get());
        if let Some(meter) = meter {
            meter.refused(message);
        }
        meter.is_some()
    }
}

/// How often renewable TLS files are looked at: a [`TlsClient`]'s and an object store's (at most;
/// only when a request asks for them), and a listener's certificate (`api::certificate`).
pub const LOOK_EVERY: Duration = Duration::from_secs(5);

/// The HTTP client of a connector, made again when the files of its `tls` table change (module
/// docs). Cloning it is cheap; clones share the client and its files' state.
#[derive(Clone)]
pub struct TlsClient {
    /// The client made at start (used as it is when the table names no file).
    client: reqwest::Client,
    reloading: Option<Arc<Reloading>>,
}

impl std::fmt::Debug for TlsClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsClient").field("reloading", &self.reloading.is_some()).finish()
    }
}

/// What a client with files needs to make itself again.
struct Reloading {
    files: ClientFiles,
    /// How the roots are trusted (the roots it holds are those read at start).
    trust: Trust,
    timeout: Duration,
    client: Renewing<reqwest::Client>,
}

impl TlsClient {
    /// A client of the system's roots, full verification, no client certificate, bounded by
    /// `timeout` (unit tests).
    #[cfg(test)]
    pub(crate) fn plain(timeout: Duration) -> Result<TlsClient, String> {
        Ok(TlsClient { client: build(&Trust::Added(Vec::new()), None, timeout)?, reloading: None })
    }

    /// Where its TLS files are metered: its refused renewals, its client certificate's end (nowhere
    /// when its table names no file).
    pub fn tls_metrics(&self) -> TlsMetrics {
        self.reloading.as_ref().map(|r| r.client.tls_metrics()).unwrap_or_default()
    }

    /// The client to send a request with: made again first if its files changed (module docs).
    pub fn current(&self) -> reqwest::Client {
        let Some(reloading) = &self.reloading else { return self.client.clone() };
        reloading.client.current(|| {
            let (roots, identity) = reloading.files.read()?;
            let client =
                build(&reloading.trust.with_roots(roots), identity.as_ref().map(|(i, _)| i), reloading.timeout)?;
            if let Some((_, Some(ends))) = identity {
                reloading.client.tls_metrics().client_certificate_read(ends);
            }
            Ok(client)
        })
    }
}

/// A value made from files (a request client, an object store), made again from them when they
/// change (module docs): at most every [`LOOK_EVERY`], when it is asked for, from a change that
/// has settled ([`FileWatch`]); a change it cannot be made from is said once, and the value made
/// before is kept.
pub(crate) struct Renewing<T> {
    /// The files, as the log names them (e.g. the TLS files of `sinks.x.tls`).
    what: String,
    state: Mutex<Looked<T>>,
    /// Where a refused change is counted (the connector holds a clone).
    metrics: TlsMetrics,
}

/// The value in use, its files, and when they were last looked at.
struct Looked<T> {
    value: T,
    watch: FileWatch,
    at: Instant,
}

impl<T: Clone> Renewing<T> {
    /// `value`, made from `paths` as they are now (their state is taken now: a change between the
    /// reading and this call is read again at the first look, which costs one remaking).
    pub(crate) fn new(what: String, paths: Vec<PathBuf>, value: T) -> Renewing<T> {
        let state = Mutex::new(Looked { value, watch: FileWatch::new(paths), at: Instant::now() });
        Renewing { what, state, metrics: TlsMetrics(Some(Arc::default())) }
    }

    /// Where its refused changes are counted: the connector hands it its counters.
    pub(crate) fn tls_metrics(&self) -> TlsMetrics {
        self.metrics.clone()
    }

    /// The value to use now: made again by `make` first when the files changed.
    pub(crate) fn current(&self, make: impl FnOnce() -> Result<T, String>) -> T {
        let mut looked = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if looked.at.elapsed() >= LOOK_EVERY {
            looked.at = Instant::now();
            if let Some(changed) = looked.watch.look() {
                let files = looked.watch.paths.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ");
                match make() {
                    Ok(value) => {
                        tracing::info!(%files, "{} changed: requests use the renewed files from now on", self.what);
                        looked.value = value;
                        looked.watch.taken(changed);
                    }
                    Err(why) => {
                        let message = format!(
                            "{} ({files}) changed and cannot be used ({why}); requests still use the files read before, and they are looked at again when they change",
                            self.what
                        );
                        // The error log writes it as a log line too; before a run (a check), the log alone.
                        if !self.metrics.refused(&message) {
                            tracing::warn!("{message}");
                        }
                        looked.watch.refused(changed);
                    }
                }
            }
        }
        looked.value.clone()
    }

    /// The value in use, without looking at the files.
    pub(crate) fn in_use(&self) -> T {
        self.state.lock().unwrap_or_else(PoisonError::into_inner).value.clone()
    }

    /// Makes the next [`Self::current`] look at the files (tests).
    #[cfg(test)]
    pub(crate) fn look_next_time(&self) {
        self.state.lock().unwrap_or_else(PoisonError::into_inner).at = Instant::now() - LOOK_EVERY;
    }
}

/// Files looked at now and then for a change to take (a renewed certificate, CA bundle or key):
/// the state last taken, the state seen at the last look, and the state last refused.
pub(crate) struct FileWatch {
    paths: Vec<PathBuf>,
    taken: Option<FilesState>,
    seen: Option<FilesState>,
    /// Itself possibly "cannot be looked at".
    refused: Option<Option<FilesState>>,
}

impl FileWatch {
    /// Watches `paths` as they are now (look before reading them, so a change in between is seen).
    pub(crate) fn new(paths: Vec<PathBuf>) -> FileWatch {
        let now = FilesState::of(&paths);
        FileWatch { paths, taken: now.clone(), seen: now, refused: None }
    }

    /// Looks at the files: their state, when it differs from the one taken, has settled (the same
    /// as at the previous look, or every file left as it is for [`SETTLED_AFTER`], so none is read
    /// half written) and was not refused before. The caller reads them, then says
    /// [`Self::taken`] or [`Self::refused`].
    pub(crate) fn look(&mut self) -> Option<Option<FilesState>> {
        let now = FilesState::of(&self.paths);
        let settled = now == self.seen || now.as_ref().is_some_and(FilesState::settled);
        self.seen = now.clone();
        (now != self.taken && settled && self.refused.as_ref() != Some(&now)).then_some(now)
    }

    /// The files in `state` were read and are used.
    pub(crate) fn taken(&mut self, state: Option<FilesState>) {
        (self.taken, self.refused) = (state, None);
    }

    /// The files in `state` cannot be used: not read again until they change.
    pub(crate) fn refused(&mut self, state: Option<FilesState>) {
        self.refused = Some(state);
    }
}

/// What identifies the contents of some files without reading them: device, inode, size and
/// modification time of each, symbolic links followed (so a mounted secret's link swapped to a new
/// folder is a change). `None` when any cannot be looked at (being replaced, say).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct FilesState(Vec<(u64, u64, u64, Option<SystemTime>)>);

/// How long files must have been left as they are to be read without waiting for another look.
const SETTLED_AFTER: Duration = Duration::from_secs(2);

impl FilesState {
    fn of(paths: &[PathBuf]) -> Option<FilesState> {
        use std::os::unix::fs::MetadataExt as _;
        let state = |path: &Path| std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino(), m.len(), m.modified().ok()));
        paths.iter().map(|p| state(p)).collect::<Option<Vec<_>>>().map(FilesState)
    }

    /// Whether every file was last modified [`SETTLED_AFTER`] ago or longer (so none is still
    /// being written).
    fn settled(&self) -> bool {
        let now = SystemTime::now();
        self.0
            .iter()
            .all(|(.., modified)| modified.is_some_and(|m| now.duration_since(m).is_ok_and(|age| age >= SETTLED_AFTER)))
    }
}

/// Why a TLS handshake refused the server, if that is what `error` (or one of its causes) is:
/// rustls's own words (`invalid peer certificate: UnknownIssuer`), wherever the client that
/// reports it (reqwest, object_store, tokio-postgres) put it in its chain of causes. Only the
/// client's refusal of the server's certificate counts: an alert the server sent (it asks for a
/// client certificate, or refuses the one given) is not one, and its advice would be wrong.
pub fn refusal(error: &(dyn std::error::Error + 'static)) -> Option<String> {
    let mut next = Some(error);
    while let Some(error) = next {
        if let Some(tls) = error.downcast_ref::<rustls::Error>() {
            return matches!(tls, rustls::Error::InvalidCertificate(_) | rustls::Error::NoCertificatesPresented)
                .then(|| tls.to_string());
        }
        // An I/O error's `source` is its inner error's source, skipping the inner error itself
        // (tokio-rustls's rustls::Error, itself wrapped in another I/O error by hyper's connector).
        next = match error.downcast_ref::<std::io::Error>().and_then(std::io::Error::get_ref) {
            Some(inner) => Some(inner as &(dyn std::error::Error + 'static)),
            None => error.source(),
        };
    }
    None
}

/// What to do about a server certificate the client refused.
const TRUST_ADVICE: &str = "give the CA that signs it as `tls = { ca = \"…\" }`, with `verify_hostname = false` when \
     the certificate is not of this host's name";

/// The text of a request that got no answer: its causes, and, when the server's certificate was
/// refused, what to set (as Firehose's own messages of refused certificates say what to check).
pub fn send_failure(error: &reqwest::Error) -> String {
    let said = sluice_engine::redact::error(error);
    match refusal(error) {
        Some(_) => format!("{said}; the server's certificate is not trusted: {TRUST_ADVICE}"),
        None => said,
    }
}

/// How long a start-up check waits for its answer, whatever the connector's own timeout (up to 15
/// minutes): a destination that hangs delays the start by this much, then is warned about.
const START_UP_CHECK_TIMEOUT: Duration = Duration::from_secs(5);

/// Sends a connector's start-up check (`what`: its URL as shown), waiting at most
/// `START_UP_CHECK_TIMEOUT` (5 s): the answer's status; `None` (warned) when the destination cannot be
/// reached now or does not answer in time, since deliveries retry; a certificate the client
/// refuses stops the run with `code`, since no retry heals it.
pub async fn start_up_check(
    request: reqwest::RequestBuilder,
    what: &str,
    code: &str,
) -> Result<Option<reqwest::StatusCode>, sluice_engine::contract::DeliveryError> {
    match request.timeout(START_UP_CHECK_TIMEOUT).send().await {
        Ok(answer) => Ok(Some(answer.status())),
        Err(e) => match refusal(&e) {
            Some(why) => Err(sluice_engine::contract::DeliveryError::Permanent {
                code: code.into(),
                message: format!("{what}: the server's certificate is not trusted ({why}); {TRUST_ADVICE}"),
            }),
            None => {
                let error = sluice_engine::redact::error(&e);
                tracing::warn!(url = %what, error = %error, "the destination did not answer the start-up check; deliveries will be tried anyway");
                Ok(None)
            }
        },
    }
}

/// An object store's `tls` table (`object_store` sinks and sources over `s3://`, `gs://`, `az://`
/// or `https://`): `ca` only, the CAs its client trusts besides the system's (a MinIO or Ceph
/// gateway with a certificate of a private CA). Taken out of `table` before the connector reads its
/// own keys; `None` when there is none, or when it has a problem (added to `found`).
pub fn take_store_roots(table: &mut Section, base_dir: &Path, found: &mut Problems) -> Option<StoreRoots> {
    let mut problems = Vec::new();
    let Some(mut section) = table.take_table("tls", &mut problems) else {
        if let Some(problem) = problems.last_mut() {
            problem.hint = Some(STORE_TLS.into());
        }
        return report(problems, found);
    };
    let (label, span) = (section.key_at("ca").label, section.span.clone());
    let ca = section.take_string("ca", &mut problems);
    let before = problems.len();
    section.deny_unknown(&["ca"], &mut problems);
    for unknown in &mut problems[before..] {
        unknown.hint = Some(format!(
            "an object store's `tls` takes `ca` only: its client presents no certificate, and `options = {{ \
             allow_invalid_certificates = true }}` accepts any (tests only); {STORE_TLS}"
        ));
    }
    let Some(ca) = ca else {
        // (Not said again when `ca` is written wrong or beside an unknown key.)
        if problems.is_empty() {
            problems.push(Diagnostic::new(span, "an object store's `tls` needs `ca`".to_string()).with_hint(STORE_TLS));
        }
        return report(problems, found);
    };
    match store_roots(base_dir, ca.get_ref()) {
        Ok(roots) if problems.is_empty() => Some(roots),
        Ok(_) => report(problems, found),
        Err(why) => {
            problems.push(Diagnostic::new(ca.span(), format!("{label} {why}")).with_hint(STORE_CA_FILE));
            report(problems, found)
        }
    }
}

/// The CAs an object store's client trusts besides the system's: the certificates of its
/// `tls.ca` file as read at configure time, and the file, which the store looks at for a renewal
/// (`RenewingStore` of the `object_store` sink). Empty without `tls`.
#[derive(Debug, Clone, Default)]
pub struct StoreRoots {
    /// The file's certificates.
    pub certificates: Vec<object_store::Certificate>,
    /// The file, its path made from the pipeline file's folder.
    pub file: Option<PathBuf>,
}

/// The CA certificates of an object store's `tls.ca` file (relative to `base_dir`), or why not
/// (said after the key).
pub fn store_roots(base_dir: &Path, ca: &str) -> Result<StoreRoots, String> {
    let pem = read(base_dir, Path::new(ca))?;
    Ok(StoreRoots { certificates: store_certificates_of(&pem)?, file: Some(base_dir.join(ca)) })
}

/// The CA certificates of the `tls.ca` file at `path` read again (a renewal), or why not.
pub(crate) fn store_certificates(path: &Path) -> Result<Vec<object_store::Certificate>, String> {
    store_certificates_of(&pem_file(path)?)
}

/// The bytes of the PEM file at `path` (a path made already), or why not (said after its name).
pub(crate) fn pem_file(path: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("cannot be read: {e}"))
}

fn store_certificates_of(pem: &[u8]) -> Result<Vec<object_store::Certificate>, String> {
    certificates(pem)?;
    object_store::Certificate::from_pem_bundle(pem).map_err(|e| format!("holds a certificate that cannot be used: {e}"))
}

/// What an object store's `tls.ca` file must be.
pub const STORE_CA_FILE: &str = "a PEM file of the CA certificates that sign the store's (`-----BEGIN CERTIFICATE-----`); a relative path is taken from the pipeline file's folder";

/// What an object store's `tls` table looks like.
const STORE_TLS: &str = "write `tls = { ca = \"private-ca.pem\" }`: the CAs that sign the store's certificate, trusted besides the system's";

/// Adds `problems` to `found`; nothing to build.
fn report<T>(problems: Vec<Diagnostic>, found: &mut Problems) -> Option<T> {
    for problem in problems {
        found.push(problem);
    }
    None
}

/// The bytes of `path` (relative to `base_dir`), or why not (the path said as written).
fn read(base_dir: &Path, path: &Path) -> Result<Vec<u8>, String> {
    if path.as_os_str().is_empty() {
        return Err("is empty: name a PEM file".into());
    }
    std::fs::read(base_dir.join(path)).map_err(|e| format!("= \"{}\" cannot be read: {e}", path.display()))
}

/// The certificates of a PEM text, at least one.
pub(crate) fn certificates(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs =
        CertificateDer::pem_slice_iter(pem).collect::<Result<Vec<_>, _>>().map_err(|e| format!("is not PEM: {e}"))?;
    if certs.is_empty() {
        return Err("holds no PEM certificate".into());
    }
    Ok(certs)
}

/// The certificates of a PEM text as roots a client trusts.
fn ca_roots(pem: &[u8]) -> Result<Vec<reqwest::Certificate>, String> {
    certificates(pem)?
        .iter()
        .map(|der| {
            reqwest::Certificate::from_der(der).map_err(|e| format!("holds a certificate that cannot be used: {e}"))
        })
        .collect()
}

/// The client identity of `cert` and `key`; else whether the problem is the key's, and what it is.
fn identity(base_dir: &Path, cert: &Path, key: &Path) -> Result<(reqwest::Identity, Option<u64>), (bool, String)> {
    let pair = key_pair(base_dir, cert, key)?;
    let ends = warn_of_client_certificate_end(&base_dir.join(cert), &pair.certs);
    let mut both = pair.chain_pem;
    both.push(b'\n');
    both.extend_from_slice(&pair.key_pem);
    reqwest::Identity::from_pem(&both)
        .map(|identity| (identity, ends))
        .map_err(|e| (true, format!("cannot be used with `cert`: {}", sluice_engine::redact::error(&e))))
}

/// A certificate chain and its private key, PEM files relative to `base_dir` (a client's identity,
/// or what an API source serves with), checked: both readable, at least one certificate, a private
/// key, and the key the first certificate's. The pair; else whether the problem is the key's, and
/// what it is (said of the key, after `key`'s name).
pub fn key_pair(base_dir: &Path, cert: &Path, key: &Path) -> Result<KeyPair, (bool, String)> {
    let chain = read(base_dir, cert).map_err(|why| (false, why))?;
    let certs = certificates(&chain).map_err(|why| (false, why))?;
    let private = read(base_dir, key).map_err(|why| (true, why))?;
    let parsed =
        PrivateKeyDer::from_pem_slice(&private).map_err(|e| (true, format!("holds no PEM private key: {e}")))?;
    // The key must be the certificate's (reqwest and rustls would say so only when serving or
    // building a client, as "builder error" or a handshake failure).
    let provider = rustls::crypto::aws_lc_rs::default_provider();
    rustls::sign::CertifiedKey::from_der(certs.clone(), parsed.clone_key(), &provider).map_err(|e| match e {
        rustls::Error::InconsistentKeys(_) => (true, "is not the private key of `cert`'s certificate".to_string()),
        other => (true, format!("cannot be used: {other}")),
    })?;
    Ok(KeyPair { chain_pem: chain, key_pem: private, certs, key: parsed })
}

/// A certificate chain and its private key, read and checked by [`key_pair`]: as written (PEM),
/// and parsed.
pub struct KeyPair {
    /// The chain's PEM text.
    pub chain_pem: Vec<u8>,
    /// The key's PEM text.
    pub key_pem: Vec<u8>,
    /// The chain's certificates, the leaf first.
    pub certs: Vec<CertificateDer<'static>>,
    /// The private key.
    pub key: PrivateKeyDer<'static>,
}

/// The test fixture's CA certificate (a PEM file).
#[cfg(test)]
pub(crate) fn fixture_ca() -> Vec<u8> {
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/config/ca.pem");
    std::fs::read(fixture).unwrap()
}

/// A [`TlsMeter`] that notes what it is told: `start`, each refusal's message, `ends <expiry_s>`
/// (tests).
#[cfg(test)]
#[derive(Clone, Default)]
pub(crate) struct NotedRenewals(pub(crate) Arc<Mutex<Vec<String>>>);

#[cfg(test)]
impl NotedRenewals {
    pub(crate) fn noted(&self) -> Vec<String> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }
}

#[cfg(test)]
impl TlsMeter for NotedRenewals {
    fn start(&self) {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).push("start".into());
    }
    fn refused(&self, message: &str) {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).push(message.into());
    }
    fn client_certificate_ends(&self, expiry_s: u64) {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).push(format!("ends {expiry_s}"));
    }
}

/// Writes `bytes` to `path` as a renewal settled a minute ago (a watch takes it at its next look).
#[cfg(test)]
pub(crate) fn write_settled(path: &Path, bytes: &[u8]) {
    std::fs::write(path, bytes).unwrap();
    let long_ago = SystemTime::now() - Duration::from_secs(60);
    std::fs::File::options().write(true).open(path).and_then(|f| f.set_modified(long_ago)).unwrap();
}

#[cfg(test)]
mod tests {
    use super::{
        ClientFiles, ClientTls, Ends, FileWatch, NotedRenewals, RENEWAL_FAILURES, RENEWAL_REFUSED, TlsMeter,
        TlsMetrics, Trust, fixture_ca, refusal, write_settled,
    };
    use std::sync::Arc;

    /// A client whose `ca` file is renewed: a file that fails the checks is refused and the client
    /// made before is kept (requests go on as before); a good one is taken.
    #[test]
    fn a_client_takes_renewed_files_that_pass_the_checks_and_keeps_its_own_otherwise() {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        let good = fixture_ca();
        let write = |bytes: &[u8]| write_settled(&ca, bytes);
        write(&good);
        let files = ClientFiles { ca: Some(ca.clone()), identity: None };
        let (roots, _) = files.read().unwrap();
        let tls = ClientTls {
            trust: Trust::Added(roots),
            identity: None,
            certificate_ends: None,
            files,
            label: "`t.tls`".into(),
            at: 0..0,
        };
        let client = tls.client(std::time::Duration::from_secs(1)).unwrap();
        let reloading = client.reloading.as_ref().unwrap();
        // Refusals are counted once the run hands its counters over, the family starting at 0.
        let noted = NotedRenewals::default();
        client.tls_metrics().meter_with(noted.clone());
        let counts = || noted.noted().iter().map(|n| if n == "start" { 0 } else { 1 }).collect::<Vec<_>>();
        assert_eq!(counts(), [0]);
        let look_now = || {
            reloading.client.look_next_time();
            client.current();
        };
        let taken = || reloading.client.state.lock().unwrap().watch.taken.clone();
        let refused = || reloading.client.state.lock().unwrap().watch.refused.clone();
        let before = taken();
        look_now();
        assert_eq!((taken(), refused()), (before.clone(), None), "nothing changed");
        write(b"not a certificate");
        look_now();
        assert_eq!(taken(), before, "a file that is not PEM is not taken");
        assert!(refused().is_some());
        assert_eq!(counts(), [0, 1], "the refusal is counted");
        let said = &noted.noted()[1];
        assert!(
            said.contains("the TLS files of `t.tls`") && said.contains("ca.pem") && said.contains("`ca`"),
            "{said}"
        );
        look_now();
        assert_eq!(counts(), [0, 1], "a refused change is counted once");
        write(&good);
        look_now();
        assert!(taken() != before && taken().is_some(), "the good file again is taken");
        assert_eq!(refused(), None);
        assert_eq!(counts(), [0, 1], "a change taken is no failure");
        // A second counter handed over (another worker's) does not replace the first.
        let second = NotedRenewals::default();
        client.tls_metrics().meter_with(second.clone());
        write(b"not a certificate either");
        look_now();
        assert_eq!(counts(), [0, 1, 1]);
        assert!(second.noted().is_empty());
    }

    /// A sink's, a source's and a transform's meters start the family at 0, count each refusal in
    /// it (the transform's labelled `files="tls"`) and write it to the pipeline's error log as
    /// their component's warning.
    #[test]
    fn each_kind_of_meter_counts_and_reports_a_refusal_as_its_own() {
        use sluice_engine::metrics::{PipelineMetrics, SinkMeter, SourceMeter};
        let metrics = std::sync::Arc::new(PipelineMetrics::new(1, 1).with_transforms(1));
        let _ = metrics.errors.set(std::sync::Arc::new(sluice_engine::error_log::ErrorLog::new("p", None, false)));
        let transform = std::sync::Arc::clone(&metrics.transforms[0]);
        let _ = transform.owner.set(("fn".into(), std::sync::Arc::downgrade(&metrics)));
        let meters: [Box<dyn TlsMeter>; 3] = [
            Box::new(SinkMeter::new(std::sync::Arc::clone(&metrics), 0, "lake")),
            Box::new(SourceMeter::new(std::sync::Arc::clone(&metrics), 0, "stream")),
            Box::new(transform),
        ];
        for meter in &meters {
            meter.start();
        }
        let counted = || {
            let labelled = metrics.transforms[0].labelled.lock().unwrap();
            [
                metrics.sinks[0].own_counts.lock().unwrap().get(RENEWAL_FAILURES.name).copied(),
                metrics.sources[0].own_counts.lock().unwrap().get(RENEWAL_FAILURES.name).copied(),
                labelled.get(&(RENEWAL_FAILURES, "files", "tls".to_string())).copied(),
            ]
        };
        assert_eq!(counted(), [Some(0); 3]);
        for meter in &meters {
            meter.refused("the TLS files of `x.tls` changed and cannot be used");
        }
        assert_eq!(counted(), [Some(1); 3]);
        let lines = metrics.errors.get().unwrap().recent();
        let said: Vec<_> =
            lines.iter().map(|l| (l["component"].as_str(), l["errorCode"].as_str(), l["level"].as_str())).collect();
        let warned = |component| (Some(component), Some(RENEWAL_REFUSED), Some("WARN"));
        assert_eq!(said, [warned("lake"), warned("stream"), warned("fn")]);
        // Each sets its client certificate's end under the label that names its kind.
        for (meter, ends) in meters.iter().zip([1_800_000_001, 1_800_000_002, 1_800_000_003]) {
            meter.client_certificate_ends(ends);
        }
        let ends = metrics.client_certificates.lock().unwrap().clone();
        let expected = [(("destination", "lake"), 1_800_000_001), (("source", "stream"), 1_800_000_002)];
        let expected = expected.into_iter().chain([(("transform", "fn"), 1_800_000_003)]);
        assert_eq!(ends, expected.map(|((label, name), e)| ((label, name.to_string()), e)).collect());
    }

    /// A client certificate's end read before the run hands its meter over is set when it does,
    /// and each end read after (a renewal taken) is set at once; a connector without files to
    /// renew sets nothing.
    #[test]
    fn the_client_certificate_end_reaches_the_meter_whenever_it_is_read() {
        let metrics = TlsMetrics(Some(Arc::default()));
        metrics.client_certificate_read(1_800_000_000);
        let noted = NotedRenewals::default();
        metrics.meter_with(noted.clone());
        assert_eq!(noted.noted(), ["start", "ends 1800000000"]);
        metrics.client_certificate_read(1_802_592_000);
        assert_eq!(noted.noted(), ["start", "ends 1800000000", "ends 1802592000"]);
        let without = TlsMetrics::default();
        without.client_certificate_read(1_800_000_000);
        let none = NotedRenewals::default();
        without.meter_with(none.clone());
        assert!(none.noted().is_empty());
    }

    /// A certificate's end is past, within 14 days, or later.
    #[test]
    fn a_certificate_end_is_judged_against_fourteen_days() {
        let now = 1_790_000_000;
        assert_eq!(Ends::from(now, now), Ends::Past("2026-09-21T14:13:20Z".into()));
        assert_eq!(Ends::from(now + 2 * 86_400, now), Ends::Soon { at: "2026-09-23T14:13:20Z".into(), days: 2.0 });
        assert!(matches!(Ends::from(now + 14 * 86_400 - 1, now), Ends::Soon { .. }));
        assert!(matches!(Ends::from(now + 14 * 86_400, now), Ends::Later(_)));
    }

    /// A client whose table names no file has nothing to renew: no family is started for it.
    #[test]
    fn a_client_without_files_counts_nothing() {
        let tls = ClientTls {
            trust: Trust::Added(Vec::new()),
            identity: None,
            certificate_ends: None,
            files: ClientFiles::default(),
            label: "`t.tls`".into(),
            at: 0..0,
        };
        let client = tls.client(std::time::Duration::from_secs(1)).unwrap();
        let noted = NotedRenewals::default();
        client.tls_metrics().meter_with(noted.clone());
        client.current();
        assert!(noted.noted().is_empty(), "counted for a client without files");
    }

    /// A mounted secret is renewed by pointing a link at a new folder: the link's target is what
    /// is looked at, so that is a change. A change is offered once it has settled (seen unchanged
    /// by a second look, or written long enough ago), and one refused is not offered again until
    /// the files change once more.
    #[test]
    fn a_watch_offers_each_settled_change_once() {
        let dir = tempfile::tempdir().unwrap();
        let long_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(60);
        for (folder, text) in [("a", "one"), ("b", "two"), ("c", "three")] {
            std::fs::create_dir(dir.path().join(folder)).unwrap();
            for file in ["tls.crt", "tls.key"] {
                std::fs::write(dir.path().join(folder).join(file), text).unwrap();
                if folder == "c" {
                    std::fs::File::options()
                        .write(true)
                        .open(dir.path().join(folder).join(file))
                        .and_then(|f| f.set_modified(long_ago))
                        .unwrap();
                }
            }
        }
        let data = dir.path().join("..data");
        let point_at = |folder: &str| {
            let swapped = dir.path().join("..data_tmp");
            std::os::unix::fs::symlink(folder, &swapped).unwrap();
            std::fs::rename(&swapped, &data).unwrap();
        };
        point_at("a");
        let mut watch = FileWatch::new(vec![data.join("tls.crt"), data.join("tls.key")]);
        assert_eq!(watch.look(), None, "nothing changed");
        // Files written a moment ago: offered at the second look that sees them unchanged.
        point_at("b");
        assert_eq!(watch.look(), None, "not settled yet");
        let changed = watch.look();
        assert!(changed.as_ref().is_some_and(Option::is_some), "{changed:?}");
        watch.refused(changed.unwrap());
        assert_eq!(watch.look(), None, "a refused change is not offered again");
        // Files last written a minute ago: offered at once.
        point_at("c");
        let changed = watch.look();
        assert!(changed.as_ref().is_some_and(Option::is_some), "{changed:?}");
        watch.taken(changed.unwrap());
        assert_eq!(watch.look(), None, "what was taken is no change");
        // A file that cannot be looked at is a change too (its reading then fails and is said).
        std::fs::remove_file(dir.path().join("c").join("tls.key")).unwrap();
        assert_eq!(watch.look(), None);
        assert_eq!(watch.look(), Some(None));
    }

    #[derive(Debug)]
    struct Wrapper(std::io::Error);

    impl std::fmt::Display for Wrapper {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("client error (Connect)")
        }
    }

    impl std::error::Error for Wrapper {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.0)
        }
    }

    /// A destination that takes the connection and never answers: the start-up check gives up after
    /// its own bound, not the connector's timeout (a minute here), and only warns.
    #[tokio::test]
    async fn a_start_up_check_of_a_destination_that_hangs_gives_up_and_lets_the_run_start() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap_or_else(|e| panic!("{e}"));
        let url = format!("http://{}/", listener.local_addr().unwrap_or_else(|e| panic!("{e}")));
        let held = tokio::spawn(async move {
            let mut open = Vec::new();
            while let Ok((socket, _)) = listener.accept().await {
                open.push(socket);
            }
        });
        let client = reqwest::Client::builder().timeout(std::time::Duration::from_secs(60)).build().unwrap();
        let started = std::time::Instant::now();
        let checked = super::start_up_check(client.get(&url), &url, "Test.ConnectionFailed").await;
        assert!(matches!(checked, Ok(None)), "{checked:?}");
        assert!(started.elapsed() < std::time::Duration::from_secs(30), "waited {:?}", started.elapsed());
        held.abort();
        // Nobody listening: warned, not a stop.
        let checked = super::start_up_check(client.get(&url), &url, "Test.ConnectionFailed").await;
        assert!(matches!(checked, Ok(None)), "{checked:?}");
    }

    #[test]
    fn a_refused_certificate_is_found_inside_i_o_errors_wrapping_each_other() {
        use std::io::{Error, ErrorKind};
        let refused = rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer);
        // As reqwest's connector reports it: an I/O error whose inner error is tokio-rustls's I/O
        // error, whose inner error is rustls's (an I/O error's `source` skips its inner error).
        let nested = Wrapper(Error::other(Error::new(ErrorKind::InvalidData, refused.clone())));
        assert_eq!(refusal(&nested).as_deref(), Some("invalid peer certificate: UnknownIssuer"));
        assert_eq!(refusal(&refused).as_deref(), Some("invalid peer certificate: UnknownIssuer"));
        let refused_connection = Wrapper(Error::new(ErrorKind::ConnectionRefused, "connection refused"));
        assert_eq!(refusal(&refused_connection), None);
        assert_eq!(refusal(&Error::other("plain")), None);
    }
}

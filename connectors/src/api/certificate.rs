//! The certificate an API listener serves (`tls = { cert, key }` of a `firehose` or `http` source,
//! `sluice serve --tls-cert/--tls-key`): loaded at start and loaded again whenever its files
//! change, so a certificate renewed in place (certbot, cert-manager's mounted secret, a script) is
//! served without a restart. Beyond Firehose, whose endpoint's certificate is AWS's business.
//!
//! Guarantees: every connection gets a whole, checked pair. The files are looked at every
//! [`LOOK_EVERY`] (as the connectors' client files are); a change is taken only once it has settled
//! (`crate::tls::FileWatch`: the files stayed as they are for one look, or were last written two
//! seconds before or longer, so a file still being written is not read half way) and passes the
//! checks of configure time ([`crate::tls::key_pair`]: PEM, a certificate, the key the
//! certificate's). Otherwise the pair in use stays: the reason is said once per change of the files
//! (a source's listener: in its pipeline's error log as the source's, `Tls.RenewalRefused`, as the
//! connectors' refused client files are; `sluice serve`'s API: in the process's log) and counted
//! (`ListenerCertificateReloadFailures`), and the next change is looked at again. Connections
//! already open keep the certificate they began with. The certificate's expiry is logged at start
//! and at each reload, warned about within [`crate::tls::WARN_WITHIN`] of it, and exported
//! (`ListenerCertificateExpiry_seconds`, which docs/alerts.yml watches).

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use axum_server::tls_rustls::RustlsConfig;
use sluice_engine::contract::StopSignal;
use sluice_engine::error_log::Level;
use sluice_engine::metrics::{PipelineMetrics, SourceMeter};

use super::TlsFiles;
use crate::tls::{FileWatch, LOOK_EVERY, RENEWAL_REFUSED};

/// What a listener serves TLS with: its files, and the pipelines whose metrics show them.
#[derive(Debug, Clone)]
pub struct ListenerTls {
    /// The certificate chain and key (PEM).
    pub files: TlsFiles,
    /// Each pipeline served by the listener.
    pub metrics: ShownIn,
    /// The source whose listener it is, which writes a refused renewal to its pipeline's error log
    /// (`None` for `sluice serve`'s API, the process's: said in its log).
    pub reported_by: Option<SourceMeter>,
    /// The application protocols offered in the handshake (ALPN), most preferred first: HTTP/1.1
    /// for the HTTP listeners, `h2` for OTLP/gRPC's, none for the forward protocol.
    pub alpn: Vec<Vec<u8>>,
}

/// The pipelines whose metrics show a listener's certificate.
#[derive(Debug, Clone)]
pub enum ShownIn {
    /// These (a source's own listener: its pipeline).
    Fixed(Vec<Arc<PipelineMetrics>>),
    /// Those served at each moment (`sluice serve`, whose streams change when it reloads): one that
    /// joins shows the certificate from the next look at the files on.
    Served(super::admin::Served),
}

impl ShownIn {
    fn now(&self) -> Vec<Arc<PipelineMetrics>> {
        match self {
            ShownIn::Fixed(metrics) => metrics.clone(),
            ShownIn::Served(served) => served.metrics(),
        }
    }

    /// Shows the certificate served, ending at `expiry_s` (when known), in each pipeline.
    fn show(&self, expiry_s: Option<u64>) {
        for metrics in self.now() {
            metrics.api.certificate.served.store(true, Relaxed);
            if let Some(expiry_s) = expiry_s {
                metrics.api.certificate.expiry_s.store(expiry_s, Relaxed);
            }
        }
    }
}

/// A checked pair, ready to be served.
struct Pair {
    config: rustls::ServerConfig,
    /// The leaf certificate's subject and expiry (Unix seconds), when they can be read.
    leaf: Option<(String, u64)>,
}

/// Loads the pair (the error says why it cannot be served), reports it, and looks for changes
/// of its files on `runtime` until `stop`.
pub fn serve_certificate(
    runtime: &tokio::runtime::Handle,
    tls: ListenerTls,
    stop: StopSignal,
) -> Result<RustlsConfig, String> {
    let watch_files = FileWatch::new(vec![tls.files.cert.clone(), tls.files.key.clone()]);
    let pair = load(&tls.files, &tls.alpn)?;
    report(&tls, &pair, "serving the TLS certificate");
    let expiry_s = pair.leaf.as_ref().map(|(_, expiry_s)| *expiry_s);
    let served = RustlsConfig::from_config(Arc::new(pair.config));
    runtime.spawn(watch(tls, served.clone(), watch_files, expiry_s, stop));
    Ok(served)
}

/// Looks at the files every [`LOOK_EVERY`] and serves a changed pair once it has settled and
/// passes the checks.
/// The pipelines shown it are told again at each look (a stream `sluice serve` started since).
async fn watch(
    tls: ListenerTls,
    served: RustlsConfig,
    mut files: FileWatch,
    mut expiry_s: Option<u64>,
    stop: StopSignal,
) {
    loop {
        tokio::select! {
            () = stop.stopped() => return,
            () = tokio::time::sleep(LOOK_EVERY) => {}
        }
        tls.metrics.show(expiry_s);
        let Some(changed) = files.look() else { continue };
        match load(&tls.files, &tls.alpn) {
            Ok(pair) => {
                report(&tls, &pair, "serving the renewed TLS certificate");
                expiry_s = pair.leaf.as_ref().map(|(_, expiry_s)| *expiry_s);
                served.reload_from_config(Arc::new(pair.config));
                for metrics in tls.metrics.now() {
                    metrics.api.certificate.reloads.fetch_add(1, Relaxed);
                }
                files.taken(changed);
            }
            Err(why) => {
                let message = format!(
                    "the TLS certificate's files {} and {} changed and cannot be served ({why}); still serving \
                     the one loaded before, and looking again when they change",
                    tls.files.cert.display(),
                    tls.files.key.display()
                );
                // The error log writes a log line too (or JSON on stderr).
                match &tls.reported_by {
                    Some(source) => source.report(Level::Warn, RENEWAL_REFUSED, &message),
                    None => tracing::warn!("{message}"),
                }
                for metrics in tls.metrics.now() {
                    metrics.api.certificate.reload_failures.fetch_add(1, Relaxed);
                }
                files.refused(changed);
            }
        }
    }
}

/// Reads and checks the pair as configure time does, as a server configuration offering the
/// application protocols `alpn`.
fn load(files: &TlsFiles, alpn: &[Vec<u8>]) -> Result<Pair, String> {
    let crate::tls::KeyPair { certs, key, .. } = crate::tls::key_pair(Path::new(""), &files.cert, &files.key)
        .map_err(|(on_key, why)| format!("`{}` {why}", if on_key { "key" } else { "cert" }))?;
    let leaf = certs.first().and_then(crate::tls::certificate_expiry);
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .and_then(|builder| builder.with_no_client_auth().with_single_cert(certs, key))
        .map_err(|e| format!("the pair cannot be served: {e}"))?;
    config.alpn_protocols = alpn.to_vec();
    Ok(Pair { config, leaf })
}

/// Logs what is served and when it expires (a warning when that is near or past), and shows it in
/// the pipelines' metrics (the expiry gauge).
fn report(tls: &ListenerTls, pair: &Pair, what: &str) {
    let cert = tls.files.cert.display();
    tls.metrics.show(pair.leaf.as_ref().map(|(_, expiry_s)| *expiry_s));
    let Some((subject, expiry_s)) = &pair.leaf else {
        tracing::info!(%cert, "{what} (its expiry cannot be read)");
        return;
    };
    match crate::tls::Ends::of(*expiry_s) {
        crate::tls::Ends::Past(expires) => {
            tracing::warn!(%cert, %subject, "{what}: it expired at {expires}, so clients refuse it; renew it (the renewed files are served without a restart)");
        }
        crate::tls::Ends::Soon { at: expires, days } => {
            tracing::warn!(%cert, %subject, "{what}: it expires at {expires}, in {days:.1} days; renew it (the renewed files are served without a restart)");
        }
        crate::tls::Ends::Later(expires) => tracing::info!(%cert, %subject, %expires, "{what}"),
    }
}

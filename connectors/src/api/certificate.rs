//! The certificate an API listener serves (`tls = { cert, key }` of a `firehose` or `http` source,
//! `sluice serve --tls-cert/--tls-key`): loaded at start and loaded again whenever its files
//! change, so a certificate renewed in place (certbot, cert-manager's mounted secret, a script) is
//! served without a restart. Beyond Firehose, whose endpoint's certificate is AWS's business.
//!
//! With `client_ca` (`--tls-client-ca`), mutual TLS: every client must present a certificate that
//! chains to one of that file's CA certificates, is within its validity and is meant for client
//! authentication (rustls's WebPKI verifier); a client without one, or with another, is refused in
//! the handshake, before a byte of its requests is read. The CA file is looked at for changes with
//! the pair, so a CA rotated in place is taken without a restart.
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
    let watch_files = FileWatch::new(tls.files.watched());
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
                let names: Vec<String> = tls.files.watched().iter().map(|f| f.display().to_string()).collect();
                let message = format!(
                    "the TLS files {} changed and cannot be served ({why}); still serving the ones loaded \
                     before, and looking again when they change",
                    names.join(", ")
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

/// The verifier of the certificates clients present, trusting the CA certificates of the PEM
/// file `client_ca` (a path made already): chains to one of them, within their validity, for
/// client authentication; or why not (said after the file's name).
pub fn client_verifier(client_ca: &Path) -> Result<Arc<dyn rustls::server::danger::ClientCertVerifier>, String> {
    let pem = crate::tls::pem_file(client_ca)?;
    let mut roots = rustls::RootCertStore::empty();
    for certificate in crate::tls::certificates(&pem)? {
        roots.add(certificate).map_err(|e| format!("holds a CA certificate that cannot be used: {e}"))?;
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
        .build()
        .map_err(|e| format!("cannot verify clients: {e}"))
}

/// The certificate a client presented in a mutual-TLS handshake (verified against `client_ca`),
/// as the audit trail names the caller: its subject and serial number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientCertificate {
    /// The subject's distinguished name, RFC 4514 (`CN=billing-agent,O=Example`).
    pub subject: String,
    /// The serial number, lowercase hex (as `openssl x509 -serial` prints it, in lowercase).
    pub serial_number: String,
}

impl ClientCertificate {
    /// The leaf of the chain a TLS connection's client presented, if it presented one.
    pub fn of_connection(connection: &rustls::ServerConnection) -> Option<Arc<ClientCertificate>> {
        Self::of_der(connection.peer_certificates()?.first()?).map(Arc::new)
    }

    /// A certificate's subject and serial number, if it is one x509-cert reads.
    fn of_der(der: &rustls::pki_types::CertificateDer<'_>) -> Option<ClientCertificate> {
        use x509_cert::der::Decode;
        let certificate = x509_cert::Certificate::from_der(der.as_ref()).ok()?;
        let tbs = certificate.tbs_certificate;
        // (DER writes a zero byte before a positive number whose top bit is set: not the number's.)
        let serial = tbs.serial_number.as_bytes();
        let serial = match serial {
            [0, next, ..] if *next >= 0x80 => &serial[1..],
            _ => serial,
        };
        let serial_number = serial.iter().map(|b| format!("{b:02x}")).collect();
        Some(ClientCertificate { subject: tbs.subject.to_string(), serial_number })
    }

    /// `identity` (an audit record's `userIdentity`) with the certificate added as
    /// `clientCertificate`; an identity that says nothing else (`Unknown`) becomes
    /// `{"type": "ClientCertificate", ...}`.
    pub fn add_to(&self, mut identity: serde_json::Value) -> serde_json::Value {
        if identity["type"] == "Unknown" {
            identity["type"] = "ClientCertificate".into();
        }
        identity["clientCertificate"] =
            serde_json::json!({"subject": self.subject, "serialNumber": self.serial_number});
        identity
    }
}

/// Reads and checks the pair (and the client CAs) as configure time does, as a server
/// configuration offering the application protocols `alpn`.
fn load(files: &TlsFiles, alpn: &[Vec<u8>]) -> Result<Pair, String> {
    let crate::tls::KeyPair { certs, key, .. } = crate::tls::key_pair(Path::new(""), &files.cert, &files.key)
        .map_err(|(on_key, why)| format!("`{}` {why}", if on_key { "key" } else { "cert" }))?;
    let leaf = certs.first().and_then(crate::tls::certificate_expiry);
    let clients = match &files.client_ca {
        Some(ca) => Some(client_verifier(ca).map_err(|why| format!("`client_ca` {why}"))?),
        None => None,
    };
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .and_then(|builder| match clients {
            Some(verifier) => builder.with_client_cert_verifier(verifier).with_single_cert(certs, key),
            None => builder.with_no_client_auth().with_single_cert(certs, key),
        })
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

#[cfg(test)]
mod tests {
    use rustls::pki_types::pem::PemObject as _;

    use super::*;

    /// The audit trail's names of a client certificate: its subject as RFC 4514 text, its serial
    /// as `openssl x509 -serial` prints it (no zero byte DER puts before a top bit that is set).
    #[test]
    fn a_client_certificate_is_named_by_its_subject_and_serial() {
        let dir = tempfile::tempdir().unwrap();
        for (serial, expected) in [("0x80ff", "80ff"), ("0x1234", "1234"), ("0x00c0ffee", "c0ffee")] {
            let made = std::process::Command::new("openssl")
                .current_dir(dir.path())
                .args(["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"])
                .args(["-subj", "/O=Example/CN=billing agent", "-days", "1", "-set_serial", serial])
                .args(["-keyout", "client.key", "-out", "client.pem"])
                .output()
                .unwrap();
            assert!(made.status.success(), "{}", String::from_utf8_lossy(&made.stderr));
            let der = rustls::pki_types::CertificateDer::from_pem_file(dir.path().join("client.pem")).unwrap();
            let named = ClientCertificate::of_der(&der).unwrap();
            assert_eq!(named.serial_number, expected, "{serial}");
            assert_eq!(named.subject, "CN=billing agent,O=Example");
            let identity = named.add_to(serde_json::json!({"type": "Unknown"}));
            assert_eq!(
                identity,
                serde_json::json!({"type": "ClientCertificate",
                    "clientCertificate": {"subject": "CN=billing agent,O=Example", "serialNumber": expected}})
            );
            let token = named.add_to(serde_json::json!({"type": "Token", "tokenName": "okta"}));
            assert_eq!(
                (&token["type"], &token["clientCertificate"]["serialNumber"]),
                (&"Token".into(), &expected.into())
            );
        }
    }
}

//! Helpers shared by the integration tests: reading objects back from stores and folders, and the
//! `sluice` binary.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use futures::TryStreamExt;
use object_store::{ObjectStore, ObjectStoreExt};
use sluice_connectors::sinks::object_store::memory_store;
use sluice_engine::testkit::read_lines;

/// Every object in the `memory://NAME` store: key → decompressed lines.
pub fn memory_objects(name: &str) -> BTreeMap<String, Vec<String>> {
    let store = memory_store(name);
    let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap_or_else(|e| panic!("{e}"));
    runtime.block_on(async {
        let metas: Vec<_> = store.list(None).try_collect().await.unwrap_or_else(|e| panic!("{e}"));
        let mut out = BTreeMap::new();
        for meta in metas {
            let key = meta.location.to_string();
            let bytes = store.get(&meta.location).await.unwrap_or_else(|e| panic!("{e}")).bytes().await;
            let bytes = bytes.unwrap_or_else(|e| panic!("{e}"));
            out.insert(key.clone(), read_lines(&key, &bytes).unwrap_or_else(|e| panic!("{key}: {e}")));
        }
        out
    })
}

/// Every file under `dir` (recursively; none when `dir` does not exist).
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else { continue };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() { stack.push(path) } else { out.push(path) }
        }
    }
    out
}

/// Every file under `dir`: path relative to `dir` → decompressed lines.
pub fn folder_objects(dir: &Path) -> BTreeMap<String, Vec<String>> {
    let mut out = BTreeMap::new();
    for path in files_under(dir) {
        let key = path.strip_prefix(dir).unwrap_or(&path).to_string_lossy().to_string();
        let bytes = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            // A store's staging file, renamed between the listing and the read (a run in progress).
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => panic!("{}: {e}", path.display()),
        };
        out.insert(key.clone(), read_lines(&key, &bytes).unwrap_or_else(|e| panic!("{key}: {e}")));
    }
    out
}

/// Every line of every file under `dir`, each parsed as JSON (in no particular order).
pub fn json_lines_under(dir: &Path) -> Vec<serde_json::Value> {
    folder_objects(dir)
        .into_values()
        .flatten()
        .map(|line| serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}")))
        .collect()
}

/// Every line of every file under `dir` parsed as JSON, split into records and error documents
/// (the lines with an `errorCode` and a `rawData`: what went to the sink's error output).
pub fn records_and_error_documents(dir: &Path) -> (Vec<serde_json::Value>, Vec<serde_json::Value>) {
    json_lines_under(dir).into_iter().partition(|line| line.get("errorCode").is_none() || line.get("rawData").is_none())
}

/// All lines of all objects, sorted (a multiset).
pub fn all_lines<'a>(objects: impl IntoIterator<Item = (&'a String, &'a Vec<String>)>) -> Vec<String> {
    let mut lines: Vec<String> = objects.into_iter().flat_map(|(_, l)| l.iter().cloned()).collect();
    lines.sort();
    lines
}

/// The built `sluice` binary. Its AWS credential chain's last resort, the EC2 instance metadata
/// service, is pointed at a closed port of 127.0.0.1 (a test that wants one starts
/// [`instance_metadata`] and sets `AWS_METADATA_ENDPOINT`), so no test reaches 169.254.169.254.
pub fn sluice() -> std::process::Command {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_sluice"));
    // Never the machine's instance profile or its user's ~/.aws files: a test gives its own.
    cmd.env("SLUICE_LOG", "error")
        .env("AWS_METADATA_ENDPOINT", "http://127.0.0.1:9")
        .env("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent/aws/credentials")
        .env("AWS_CONFIG_FILE", "/nonexistent/aws/config")
        .env_remove("AWS_PROFILE")
        .env_remove("AWS_DEFAULT_PROFILE");
    cmd
}

/// A `sluice` command without the test's own AWS keys, so that the credentials come from where
/// the test puts them (a profile, an instance profile) or from nowhere.
pub trait WithoutAwsKeys {
    /// Removes `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY` and `AWS_SESSION_TOKEN`.
    fn without_aws_keys(&mut self) -> &mut Self;
}

impl WithoutAwsKeys for std::process::Command {
    fn without_aws_keys(&mut self) -> &mut Self {
        self.env_remove("AWS_ACCESS_KEY_ID").env_remove("AWS_SECRET_ACCESS_KEY").env_remove("AWS_SESSION_TOKEN")
    }
}

/// The repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// `n` generated records of `profile` for `seed`, as lines.
pub fn generated(profile: sluice_connectors::synth::Profile, seed: u64, n: u64) -> Vec<String> {
    let mut out = Vec::new();
    sluice_connectors::synth::write_ndjson(profile, seed, n, &mut out).unwrap_or_else(|e| panic!("{e}"));
    String::from_utf8_lossy(&out).lines().map(str::to_string).collect()
}

/// The Python with the test packages (pyarrow, DuckDB, boto3, the AWS CLI): `SLUICE_TEST_PYTHON`,
/// else target/test-venv, else python3.
pub fn python() -> PathBuf {
    if let Some(p) = std::env::var_os("SLUICE_TEST_PYTHON") {
        return PathBuf::from(p);
    }
    let venv = repo_root().join("target/test-venv/bin/python");
    if venv.exists() { venv } else { PathBuf::from("python3") }
}

/// A free port on 127.0.0.1, with the [`PORT_STRIDE`] − 1 ports above it free for the caller too
/// (`serve --cluster` uses port + i for pipeline i).
///
/// Ports come from below Linux's ephemeral range (32768–60999): a port the kernel picks for
/// `bind(0)` is released before the process under test binds it, and in between any outgoing
/// connection of the tests running beside it may take it as its source port (the suite saw
/// `Address already in use` that way). Below that range only listeners take ports, and each block
/// is handed out once per run, from an offset that differs between runs.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    const LOW: u32 = 10_000;
    const HIGH: u32 = 32_000;
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let blocks = (HIGH - LOW) / PORT_STRIDE;
    let seed = (std::process::id().wrapping_mul(2_654_435_761) >> 8) % blocks;
    loop {
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        let block = (seed + n) % blocks;
        let port = (LOW + block * PORT_STRIDE) as u16;
        let room = (0..PORT_STRIDE as u16).all(|i| std::net::TcpListener::bind(("127.0.0.1", port + i)).is_ok());
        if room {
            return port;
        }
        assert!(n < blocks, "no free block of {PORT_STRIDE} ports below {HIGH} on 127.0.0.1");
    }
}

/// Ports [`free_port`] keeps free above the one it returns, itself included.
pub const PORT_STRIDE: u32 = 16;

/// A pipeline `name` whose `firehose` source listens on `port` (its log under `data`), delivered as
/// NDJSON to `file://<out>`; `pipeline_keys`, `source_keys` and `sink_keys` are added lines.
pub fn firehose_to_files(
    name: &str,
    port: u16,
    data: &Path,
    out: &Path,
    pipeline_keys: &str,
    source_keys: &str,
    sink_keys: &str,
) -> String {
    format!(
        "[pipeline]\nname = \"{name}\"\ndata_dir = \"{}\"\n{pipeline_keys}\n\
         [sources.api]\ntype = \"firehose\"\nlisten = \"127.0.0.1:{port}\"\n{source_keys}\n\
         [sinks.out]\ntype = \"object_store\"\ninputs = [\"api\"]\nurl = \"file://{}\"\nformat = \"ndjson\"\n{sink_keys}\n",
        data.display(),
        out.display()
    )
}

/// Starts `sluice <args>` with its output going to `output` (a pipe nobody reads would block it
/// once full), and waits until `port` accepts connections.
pub fn start_listening(args: &[&str], port: u16, output: std::process::Stdio, errors: std::process::Stdio) -> Started {
    start_listening_with(sluice().args(args).stdout(output).stderr(errors), port)
}

/// Spawns `sluice serve folder` with its API on `port` and `--admin` on `admin` (its output
/// discarded) and waits until the API listens.
pub fn start_serve(folder: &Path, port: u16, admin: u16) -> Started {
    start_listening_with(
        sluice()
            .args(["serve", &folder.display().to_string(), "--listen", &format!("127.0.0.1:{port}")])
            .args(["--admin", &format!("127.0.0.1:{admin}")])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null()),
        port,
    )
}

/// Spawns `command` (a `sluice` command) and waits until it listens on `port`.
pub fn start_listening_with(command: &mut std::process::Command, port: u16) -> Started {
    let child = Started(Some(command.spawn().unwrap()));
    wait_for_port(port, "sluice");
    child
}

/// A `sluice` process a test started: the test stops it (`terminate`, then `wait`) and reads its
/// outcome; if the test fails first, it is killed and reaped when dropped, so that it does not run
/// on (retrying deliveries into a temporary folder already removed).
pub struct Started(Option<std::process::Child>);

impl Started {
    /// Waits for it to end and takes its output (as `Child::wait_with_output`).
    pub fn wait_with_output(mut self) -> std::io::Result<std::process::Output> {
        self.0.take().unwrap().wait_with_output()
    }
}

impl std::ops::Deref for Started {
    type Target = std::process::Child;

    fn deref(&self) -> &std::process::Child {
        self.0.as_ref().unwrap()
    }
}

impl std::ops::DerefMut for Started {
    fn deref_mut(&mut self) -> &mut std::process::Child {
        self.0.as_mut().unwrap()
    }
}

impl Drop for Started {
    fn drop(&mut self) {
        if let Some(child) = self.0.as_mut()
            && let Ok(None) = child.try_wait()
        {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A server the tests talk to (an emulator, a receiver, a function server), killed and reaped when
/// dropped: a test that fails, even while the server is still starting, leaves nothing running.
pub struct Peer(std::process::Child);

impl Peer {
    /// Spawns `command`; `what` names the server (installed by scripts/test.sh) if it cannot start.
    pub fn spawn(command: &mut std::process::Command, what: &str) -> Peer {
        Peer(command.spawn().unwrap_or_else(|e| panic!("cannot start {what} (scripts/test.sh installs it): {e}")))
    }

    /// [`Self::spawn`], then waits until it accepts connections on `port`.
    pub fn listening(command: &mut std::process::Command, port: u16, what: &str) -> Peer {
        let peer = Self::spawn(command, what);
        wait_for_port(port, what);
        peer
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Waits (at most 30 s) until something accepts connections on 127.0.0.1:`port`; `what` names it
/// when nothing does.
pub fn wait_for_port(port: u16, what: &str) {
    let started = std::time::Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(started.elapsed() < std::time::Duration::from_secs(30), "{what} did not listen on {port}");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// A pipeline file `dir/name.toml` (its data under `dir/data/name`): the source `in` (`source`,
/// TOML lines) into the object store sink `out` (`sinks`: its TOML lines, then any tables after it).
pub fn object_store_pipeline(dir: &Path, name: &str, source: &str, sinks: &str) -> PathBuf {
    let config = dir.join(format!("{name}.toml"));
    let text = format!(
        "[pipeline]\nname = \"{name}\"\ndata_dir = \"{}\"\n\n[sources.in]\n{source}\n\n[sinks.out]\ntype = \"object_store\"\ninputs = [\"in\"]\n{sinks}\n",
        dir.join("data").join(name).display()
    );
    std::fs::write(&config, text).unwrap();
    config
}

/// A pipeline file `dir/<name>.toml` as the tests of a listening source write it: its data under
/// `dir/data`, its error log (an object a second) under `dir/errors` and its audit log under
/// `dir/audit`, `pipeline` (more `[pipeline]` lines, or none), the source `[sources.<source>]` of
/// `table` (its TOML lines), and an NDJSON lake of that source under `dir/lake`.
pub fn listening_pipeline(dir: &Path, name: &str, pipeline: &str, source: &str, table: &str) -> PathBuf {
    let config = dir.join(format!("{name}.toml"));
    let text = format!(
        "[pipeline]\nname = \"{name}\"\ndata_dir = \"{data}\"\n\
         error_log = {{ url = \"file://{errors}\", buffer = {{ size_mb = 1, interval_s = 1 }} }}\n\
         audit_log = \"file://{audit}\"\n{pipeline}\n\
         [sources.{source}]\n{table}\n\
         [sinks.lake]\ntype = \"object_store\"\ninputs = [\"{source}\"]\nurl = \"file://{lake}\"\nformat = \"ndjson\"\n",
        data = dir.join("data").display(),
        errors = dir.join("errors").display(),
        audit = dir.join("audit").display(),
        lake = dir.join("lake").display(),
    );
    std::fs::write(&config, text).unwrap();
    config
}

/// `sluice run --quiet config` in the config's folder (where an example pipeline's relative
/// `file://./lake` lands), its output dropped, once it listens on `port`.
pub fn run_listening(config: &Path, port: u16) -> Started {
    start_listening_with(
        sluice()
            .current_dir(config.parent().unwrap_or(Path::new(".")))
            .args(["run", "--quiet"])
            .arg(config)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null()),
        port,
    )
}

/// Opens a multipart upload of one 5 MiB part through the first sink of the pipeline `toml` and
/// leaves it open, as a killed run does, then prepares that sink again as the next start does:
/// `open_uploads` (what the store says is open) must go from 1 to 0.
pub fn an_upload_left_open_is_aborted_at_the_next_start(toml: &str, open_uploads: impl Fn() -> usize) {
    use sluice_engine::testkit::plan_from_str;
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let sink = std::sync::Arc::clone(&plan_from_str(toml, &sluice_connectors::registry()).unwrap().sinks[0].sink);
    runtime.block_on(async {
        sink.prepare().await.unwrap();
        let upload = sink.parts().unwrap().start_upload("big/object", "application/x-ndjson", None).await.unwrap();
        upload.put_part(0, bytes::Bytes::from(vec![b'x'; 5 << 20])).await.unwrap();
        // The process dies here: the upload is neither completed nor aborted.
    });
    assert_eq!(open_uploads(), 1);
    let restarted = std::sync::Arc::clone(&plan_from_str(toml, &sluice_connectors::registry()).unwrap().sinks[0].sink);
    runtime.block_on(restarted.prepare()).unwrap();
    assert_eq!(open_uploads(), 0, "the stale upload was not aborted");
}

/// Runs `command` to its end, or kills it after `within` and panics: a run expected to stop by
/// itself (at start, say) fails its test instead of hanging it. For commands printing little (the
/// pipes are read once it ends).
pub fn output_within(command: &mut std::process::Command, within: std::time::Duration) -> std::process::Output {
    let mut child = command
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {command:?}: {e}"));
    let started = std::time::Instant::now();
    while child.try_wait().unwrap().is_none() {
        if started.elapsed() > within {
            let _ = child.kill();
            let output = child.wait_with_output().unwrap();
            panic!("{command:?} still ran after {within:?}: {}", String::from_utf8_lossy(&output.stderr));
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

/// `sluice run config` with `SLUICE_LOG=log_filter`, its stdout and stderr appended to the
/// config's `.log` beside it (read it after the run); add environment, then start it.
pub fn logged_run(config: &Path, log_filter: &str) -> std::process::Command {
    let log = std::fs::OpenOptions::new().create(true).append(true).open(config.with_extension("log")).unwrap();
    let mut command = sluice();
    command
        .args(["run", config.to_str().unwrap()])
        .env("SLUICE_LOG", log_filter)
        .stdout(log.try_clone().unwrap())
        .stderr(log);
    command
}

/// A Firehose API call `operation` (`PutRecordBatch`, …) with `body` to sluice on `port`, unsigned;
/// the answer's JSON.
pub fn firehose_call(port: u16, operation: &str, body: String) -> serde_json::Value {
    let answer = reqwest::blocking::Client::new()
        .post(format!("http://127.0.0.1:{port}/"))
        .header("x-amz-target", format!("Firehose_20150804.{operation}"))
        .header("content-type", "application/x-amz-json-1.1")
        .body(body)
        .send()
        .unwrap()
        .text()
        .unwrap();
    serde_json::from_str(&answer).unwrap_or_else(|e| panic!("{e}: {answer}"))
}

/// SIGTERM to `child`.
pub fn terminate(child: &std::process::Child) {
    let status = std::process::Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    assert!(status.success());
}

/// The record an error document holds (`rawData`, base64), as text.
pub fn raw_data(doc: &serde_json::Value) -> String {
    use base64::Engine as _;
    let bytes = base64::engine::general_purpose::STANDARD.decode(doc["rawData"].as_str().unwrap()).unwrap();
    String::from_utf8(bytes).unwrap()
}

/// Runs the sink conformance kit against `destination`, a sink that sends requests: every check
/// passes but the three about uploads in parts, which a request never is.
pub fn request_sink_conformance(destination: &dyn sluice_engine::testkit::sink::Destination) {
    use sluice_engine::testkit::sink::{Check, conformance};
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let report = runtime.block_on(conformance(destination)).unwrap_or_else(|e| panic!("{e}"));
    for check in [
        Check::StartUpCheck,
        Check::Deliver,
        Check::Redeliver,
        Check::RetryableThenDelivered,
        Check::PermanentRefusal,
        Check::BackupOfRefused,
    ] {
        assert!(report.passed(check), "{check:?}: {report:?}");
    }
    let skipped: Vec<Check> = report.skipped.iter().map(|(check, _)| *check).collect();
    assert_eq!(skipped, [Check::Parts, Check::PartRetried, Check::Abort], "{report:?}");
}

/// The file at `path` as the conformance kit reads a stored object (`None` when there is none).
pub fn file_when_read(path: PathBuf) -> futures::future::BoxFuture<'static, Option<Vec<u8>>> {
    Box::pin(async move { std::fs::read(path).ok() })
}

/// A tmpfs mounted for the test, unmounted when dropped.
pub struct Tmpfs(pub PathBuf);

impl Tmpfs {
    /// Mounts a tmpfs of `size` at `path` (made first), if this process may (as root, as CI runs).
    pub fn mount(path: &Path, size: &str) -> Option<Tmpfs> {
        std::fs::create_dir_all(path).unwrap();
        let mounted = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(path)
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        mounted.then(|| Tmpfs(path.to_path_buf()))
    }

    /// Gives the tmpfs another size.
    pub fn resize(&self, size: &str) {
        let status = std::process::Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(&self.0)
            .status()
            .unwrap();
        assert!(status.success());
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Whether the tests run as root (as CI does): then they may mount, and run programs as other users.
pub fn as_root() -> bool {
    std::process::Command::new("id").arg("-u").output().is_ok_and(|o| o.stdout.trim_ascii() == b"0")
}

/// Certificates for the TLS tests, made by the `openssl` CLI in a temporary folder: a private CA
/// (`ca.pem`), server certificates it signs for 127.0.0.1 (`server`) and for another name only
/// (`elsewhere`, `elsewhere.test`), a client certificate it signs (`client`), and a self-signed
/// certificate for 127.0.0.1 (`self-signed`); each `<name>.pem` with its key `<name>.key`. Each
/// lasts two days ([`Self::make_lasting`] for other lengths).
pub struct TestCertificates(pub tempfile::TempDir);

impl TestCertificates {
    pub fn make() -> TestCertificates {
        Self::make_lasting(2)
    }

    /// The certificates, each lasting `days` days from now.
    pub fn make_lasting(days: u32) -> TestCertificates {
        let days = days.to_string();
        let dir = tempfile::tempdir().unwrap();
        let openssl = |args: &[&str]| {
            let made = std::process::Command::new("openssl").current_dir(dir.path()).args(args).output().unwrap();
            assert!(made.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&made.stderr));
        };
        let new_key = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
        let self_signed = |name: &str, subject: &str, extensions: &[&str]| {
            let (pem, key) = (format!("{name}.pem"), format!("{name}.key"));
            let mut args = vec!["req", "-x509"];
            args.extend(new_key);
            args.extend(["-days", &days, "-subj", subject, "-keyout", &key, "-out", &pem]);
            args.extend(extensions);
            openssl(&args);
        };
        self_signed("ca", "/CN=sluice test CA", &[]);
        self_signed("self-signed", "/CN=127.0.0.1", &["-addext", "subjectAltName=IP:127.0.0.1"]);
        for (name, extensions) in [
            ("server", "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth"),
            // The same name's next certificate (a renewal), with a key of its own.
            ("renewed", "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth"),
            ("elsewhere", "subjectAltName=DNS:elsewhere.test\nextendedKeyUsage=serverAuth"),
            ("client", "extendedKeyUsage=clientAuth"),
        ] {
            let (pem, key, request, ext) =
                (format!("{name}.pem"), format!("{name}.key"), format!("{name}.csr"), format!("{name}.ext"));
            std::fs::write(dir.path().join(&ext), format!("basicConstraints=CA:FALSE\n{extensions}\n")).unwrap();
            let mut args = vec!["req", "-new"];
            args.extend(new_key);
            args.extend(["-subj", "/CN=sluice test", "-keyout", &key, "-out", &request]);
            openssl(&args);
            let serial = format!("{}", rand::random::<u32>());
            openssl(&[
                "x509",
                "-req",
                "-in",
                &request,
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-set_serial",
                &serial,
                "-days",
                &days,
                "-extfile",
                &ext,
                "-out",
                &pem,
            ]);
        }
        TestCertificates(dir)
    }

    /// When the certificate of the file `name` (`client.pem`) ends, Unix seconds.
    pub fn ends(&self, name: &str) -> u64 {
        use rustls::pki_types::CertificateDer;
        use rustls::pki_types::pem::PemObject;
        use x509_cert::der::Decode;
        let der = CertificateDer::from_pem_file(self.path(name)).unwrap();
        let certificate = x509_cert::Certificate::from_der(der.as_ref()).unwrap();
        certificate.tbs_certificate.validity.not_after.to_unix_duration().as_secs()
    }

    /// The file `name` (`ca.pem`, `client.key`, …).
    pub fn path(&self, name: &str) -> String {
        self.0.path().join(name).display().to_string()
    }

    /// An axum TLS server's settings: [`Self::server_config`].
    pub fn server(&self, name: &str, clients_signed: bool) -> axum_server::tls_rustls::RustlsConfig {
        axum_server::tls_rustls::RustlsConfig::from_config(self.server_config(name, clients_signed))
    }

    /// A TLS server presenting `name`'s certificate, asking for a client certificate the CA signs
    /// when `clients_signed` (else for none).
    pub fn server_config(&self, name: &str, clients_signed: bool) -> std::sync::Arc<rustls::ServerConfig> {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let provider = std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let chain: Vec<_> =
            CertificateDer::pem_file_iter(self.path(&format!("{name}.pem"))).unwrap().map(Result::unwrap).collect();
        let key = PrivateKeyDer::from_pem_file(self.path(&format!("{name}.key"))).unwrap();
        let builder = rustls::ServerConfig::builder_with_provider(std::sync::Arc::clone(&provider))
            .with_safe_default_protocol_versions()
            .unwrap();
        let builder = if clients_signed {
            let mut roots = rustls::RootCertStore::empty();
            for ca in CertificateDer::pem_file_iter(self.path("ca.pem")).unwrap() {
                roots.add(ca.unwrap()).unwrap();
            }
            let verifier =
                rustls::server::WebPkiClientVerifier::builder_with_provider(std::sync::Arc::new(roots), provider)
                    .build()
                    .unwrap();
            builder.with_client_cert_verifier(verifier)
        } else {
            builder.with_no_client_auth()
        };
        let mut config = builder.with_single_cert(chain, key).unwrap();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        std::sync::Arc::new(config)
    }
}

/// Serves `app` on a free port of 127.0.0.1 on `runtime`, over HTTPS with `tls` (plain HTTP
/// without): its base URL, `http(s)://127.0.0.1:<port>`.
pub fn serve(
    runtime: &tokio::runtime::Runtime,
    app: axum::Router,
    tls: Option<axum_server::tls_rustls::RustlsConfig>,
) -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let addr = listener.local_addr().unwrap();
    let _entered = runtime.enter();
    match tls {
        Some(tls) => {
            runtime.spawn(axum_server::from_tcp_rustls(listener, tls).unwrap().serve(app.into_make_service()));
            format!("https://{addr}")
        }
        None => {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            runtime.spawn(async move { axum::serve(listener, app).await });
            format!("http://{addr}")
        }
    }
}

/// The access key id, secret and session token [`instance_metadata`] hands out.
pub const IMDS_ROLE_KEY: (&str, &str, &str) = ("ASIAIMDSROLE", "imds-role-secret", "imds-role-session-token");

/// An EC2 instance metadata service (IMDSv2, as its documentation describes it): a session token
/// from `PUT /latest/api/token`, then the role's name and its temporary credentials, each asked with
/// that token. Counts the credential requests. Its credentials: [`IMDS_ROLE_KEY`].
pub fn instance_metadata(
    runtime: &tokio::runtime::Runtime,
    asked: std::sync::Arc<std::sync::atomic::AtomicU64>,
) -> u16 {
    use axum::http::{HeaderMap, StatusCode};
    const TOKEN: &str = "imds-session-for-the-test";
    let port = free_port();
    let listener = runtime.block_on(tokio::net::TcpListener::bind(("127.0.0.1", port))).unwrap();
    let with_token = |headers: &HeaderMap| headers.get("x-aws-ec2-metadata-token").is_some_and(|t| t == TOKEN);
    let app = axum::Router::new()
        .route(
            "/latest/api/token",
            axum::routing::put(|headers: HeaderMap| async move {
                match headers.get("x-aws-ec2-metadata-token-ttl-seconds") {
                    Some(_) => (StatusCode::OK, TOKEN.to_string()),
                    None => (StatusCode::BAD_REQUEST, String::new()),
                }
            }),
        )
        .route(
            "/latest/meta-data/iam/security-credentials/",
            axum::routing::get(move |headers: HeaderMap| async move {
                if with_token(&headers) {
                    (StatusCode::OK, "sluice-role".to_string())
                } else {
                    (StatusCode::UNAUTHORIZED, String::new())
                }
            }),
        )
        .route(
            "/latest/meta-data/iam/security-credentials/sluice-role",
            axum::routing::get(move |headers: HeaderMap| {
                let asked = std::sync::Arc::clone(&asked);
                async move {
                    if !with_token(&headers) {
                        return (StatusCode::UNAUTHORIZED, String::new());
                    }
                    asked.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    let expiration = (chrono::Utc::now() + chrono::Duration::hours(6))
                        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
                    let body = serde_json::json!({ "Code": "Success", "LastUpdated": chrono::Utc::now().to_rfc3339(),
                        "Type": "AWS-HMAC", "AccessKeyId": IMDS_ROLE_KEY.0, "SecretAccessKey": IMDS_ROLE_KEY.1,
                        "Token": IMDS_ROLE_KEY.2, "Expiration": expiration });
                    (StatusCode::OK, body.to_string())
                }
            }),
        );
    runtime.spawn(async move { axum::serve(listener, app).await });
    port
}

/// A pipeline (its TOML) running on a thread of its own with `workers` workers, its metrics read
/// while it runs, until [`StartedRun::finish`] stops it (a finite one may have ended by then).
pub struct StartedRun {
    pub metrics: std::sync::Arc<sluice_engine::metrics::PipelineMetrics>,
    stop: sluice_engine::contract::StopSignal,
    run: std::thread::JoinHandle<Result<(), String>>,
}

impl StartedRun {
    pub fn start(toml: &str, workers: usize) -> StartedRun {
        let plan = sluice_engine::testkit::plan_from_str(toml, &sluice_connectors::registry()).unwrap();
        let metrics = std::sync::Arc::new(plan.new_metrics());
        let mut options = sluice_engine::runtime::RunOptions::for_plan(&plan);
        options.workers = workers;
        let stop = options.stop.clone();
        let counters = std::sync::Arc::clone(&metrics);
        let run = std::thread::spawn(move || {
            sluice_engine::runtime::run(&plan, &options, counters).map(|_| ()).map_err(|e| e.to_string())
        });
        StartedRun { metrics, stop, run }
    }

    /// Stops the run and waits for its end: what it returned.
    pub fn finish(self) -> Result<(), String> {
        self.stop.stop();
        self.run.join().unwrap()
    }
}

/// The example pipeline `pipelines/<name>.toml` run as a user runs it (`sluice run`), moved into
/// `dir`: each of its `s3://` URLs replaced by the `file://` URL given for it (its `options` lines
/// dropped), its `data_dir` in `dir`, and the schema it names (`schemas/<schema>`) copied beside it.
/// Asserts that it ends with exit 0; answers what it said, stdout then stderr.
pub fn run_example_pipeline(dir: &Path, name: &str, urls: &[(&str, &Path)], schema: &str) -> String {
    let mut text = std::fs::read_to_string(repo_root().join(format!("pipelines/{name}.toml"))).unwrap();
    for (s3, folder) in urls {
        let end = if s3.ends_with('/') { "/" } else { "" };
        text = text.replace(s3, &format!("file://{}{end}", folder.display()));
    }
    let text = text
        .replace("options = { region = \"us-east-1\" }\n", "")
        .replace("[pipeline]\n", &format!("[pipeline]\ndata_dir = \"{}\"\n", dir.join("data").display()));
    assert!(!text.lines().any(|l| !l.starts_with('#') && l.contains("s3://")), "{text}");
    let config = dir.join(format!("{name}.toml"));
    std::fs::write(&config, text).unwrap();
    std::fs::create_dir_all(dir.join("schemas")).unwrap();
    std::fs::copy(repo_root().join("pipelines/schemas").join(schema), dir.join("schemas").join(schema)).unwrap();
    let run = sluice().args(["run"]).arg(&config).output().unwrap();
    let said = String::from_utf8_lossy(&run.stdout).into_owned() + &String::from_utf8_lossy(&run.stderr);
    assert_eq!(run.status.code(), Some(0), "{said}");
    said
}

/// Writes `text` gzip-compressed to `path`, its folders made (as AWS delivers its log files).
pub fn write_gzip(path: &Path, text: &str) {
    use std::io::Write as _;
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    encoder.write_all(text.as_bytes()).unwrap();
    std::fs::write(path, encoder.finish().unwrap()).unwrap();
}

/// The JSON that `script` prints, run by Python's DuckDB in UTC with `c` its connection and
/// `lake` the Parquet files under `root` read with hive partitioning (partition values as text),
/// as the example pipelines' lakes are read back.
pub fn duckdb_json(root: &Path, script: &str) -> serde_json::Value {
    let script = format!(
        "import duckdb, json\n\
         c = duckdb.connect()\n\
         c.execute(\"set TimeZone = 'UTC'\")\n\
         lake = \"read_parquet('{}/**/*.parquet', hive_partitioning = true, hive_types_autocast = false)\"\n{script}",
        root.display()
    );
    let output = std::process::Command::new(python()).arg("-c").arg(script).output().unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    serde_json::from_slice(&output.stdout).unwrap()
}

//! The object_store sink against a real S3-protocol server on 127.0.0.1: s3s-fs running in this
//! process with SigV4 checking on. Objects are read back from the server's folder, not through our
//! client, and a wrong secret must be refused (permanent error, nothing stored, exit code 1).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder as ConnBuilder;
use s3s::access::{S3Access, S3AccessContext};
use s3s::auth::SimpleAuth;
use s3s::path::S3Path;
use s3s::service::S3ServiceBuilder;
use s3s::{S3Error, S3ErrorCode, S3Result};
use sluice_connectors::registry;
use sluice_connectors::sinks::object_store::ObjectStoreSink;
use sluice_connectors::synth::Profile;
use sluice_engine::testkit::run_pipeline;
use sluice_engine::testkit::sink::{Check, Destination, Fault, conformance};

use super::support::WithoutAwsKeys;
use super::support::{all_lines, files_under, folder_objects, generated, python, sluice};

const ACCESS_KEY: &str = "AKIDSLUICETEST";
pub const SECRET_KEY: &str = "sluice-test-secret-key";

/// An S3 server over `root` (buckets are its sub-folders), alive as long as the value. It can be
/// stopped and started again on the same address, and told to fail writes under key prefixes.
pub struct S3Server {
    pub addr: SocketAddr,
    pub root: PathBuf,
    pub faults: Faults,
    runtime: Option<tokio::runtime::Runtime>,
    /// Served over HTTPS with these settings (plain HTTP without).
    tls: Option<Arc<rustls::ServerConfig>>,
}

/// Key prefixes whose writes fail, and the S3 error they get.
type FaultRule = (Vec<String>, S3ErrorCode);

/// An operation whose next calls fail, how many more will, and the S3 error they get.
type NextFailures = (&'static str, u64, S3ErrorCode);

/// Writes (PutObject and the multipart calls) under these key prefixes fail with this S3 error.
#[derive(Clone, Default)]
pub struct Faults {
    rule: Arc<Mutex<Option<FaultRule>>>,
    /// Calls that fail whatever their key ([`Faults::fail_next`]).
    next: Arc<Mutex<Option<NextFailures>>>,
    /// Writes refused so far.
    pub refused: Arc<AtomicU64>,
}

impl Faults {
    pub fn fail_writes(&self, prefixes: &[&str], code: S3ErrorCode) {
        *self.rule.lock().unwrap() = Some((prefixes.iter().map(|p| p.to_string()).collect(), code));
    }

    /// The next `times` calls of `operation` (e.g. "UploadPart") fail with `code`, whatever the key.
    pub fn fail_next(&self, operation: &'static str, times: u64, code: S3ErrorCode) {
        *self.next.lock().unwrap() = Some((operation, times, code));
    }

    /// Writes succeed again.
    pub fn heal(&self) {
        *self.rule.lock().unwrap() = None;
        *self.next.lock().unwrap() = None;
    }

    /// The error the call of `operation` gets from [`Faults::fail_next`], counting it.
    fn next_failure(&self, operation: &str) -> Option<S3ErrorCode> {
        let mut next = self.next.lock().unwrap();
        let (named, left, code) = next.as_mut()?;
        if *named != operation || *left == 0 {
            return None;
        }
        *left -= 1;
        Some(code.clone())
    }
}

struct FaultyAccess(Faults);

#[async_trait::async_trait]
impl S3Access for FaultyAccess {
    async fn check(&self, cx: &mut S3AccessContext<'_>) -> S3Result<()> {
        if cx.credentials().is_none() {
            return Err(s3s::s3_error!(AccessDenied, "Signature required"));
        }
        if let Some(code) = self.0.next_failure(cx.s3_op().name()) {
            self.0.refused.fetch_add(1, Ordering::Relaxed);
            return Err(S3Error::with_message(code, "injected by the test"));
        }
        let write = matches!(
            cx.s3_op().name(),
            "PutObject" | "CreateMultipartUpload" | "UploadPart" | "CompleteMultipartUpload"
        );
        if let (true, S3Path::Object { key, .. }) = (write, cx.s3_path())
            && let Some((prefixes, code)) = self.0.rule.lock().unwrap().as_ref()
            && prefixes.iter().any(|p| key.starts_with(p.as_str()))
        {
            self.0.refused.fetch_add(1, Ordering::Relaxed);
            return Err(S3Error::with_message(code.clone(), "injected by the test"));
        }
        Ok(())
    }
}

impl S3Server {
    pub fn start(root: &Path) -> Self {
        Self::start_over(root, None)
    }

    /// An S3 server serving HTTPS with `tls` (plain HTTP without).
    pub fn start_over(root: &Path, tls: Option<Arc<rustls::ServerConfig>>) -> Self {
        let mut server = S3Server {
            addr: "127.0.0.1:0".parse().unwrap(),
            root: root.to_path_buf(),
            faults: Faults::default(),
            runtime: None,
            tls,
        };
        server.resume();
        server
    }

    /// Stops serving: the listener and every open connection close.
    pub fn stop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }

    /// Serves HTTPS with `tls` from now on, on the same address (a certificate renewed by another
    /// CA): open connections close.
    pub fn serve_with(&mut self, tls: Arc<rustls::ServerConfig>) {
        self.stop();
        self.tls = Some(tls);
        self.resume();
    }

    /// Serves again (on the same address after a stop).
    pub fn resume(&mut self) {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap_or_else(|e| panic!("{e}"));
        let fs = s3s_fs::FileSystem::new(&self.root).unwrap_or_else(|e| panic!("{e:?}"));
        let mut builder = S3ServiceBuilder::new(fs);
        builder.set_auth(SimpleAuth::from_single(ACCESS_KEY, SECRET_KEY));
        builder.set_access(FaultyAccess(self.faults.clone()));
        let service = builder.build();
        // The listener of a runtime just shut down may still hold the address for a moment.
        let bind = || runtime.block_on(tokio::net::TcpListener::bind(self.addr));
        let mut bound = bind();
        for _ in 0..100 {
            match &bound {
                Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
                    std::thread::sleep(std::time::Duration::from_millis(50));
                    bound = bind();
                }
                _ => break,
            }
        }
        let listener = bound.unwrap_or_else(|e| panic!("{e}"));
        self.addr = listener.local_addr().unwrap_or_else(|e| panic!("{e}"));
        let tls = self.tls.clone().map(tokio_rustls::TlsAcceptor::from);
        runtime.spawn(async move {
            let http = ConnBuilder::new(TokioExecutor::new());
            loop {
                let Ok((socket, _)) = listener.accept().await else { continue };
                let (http, service, tls) = (http.clone(), service.clone(), tls.clone());
                tokio::spawn(async move {
                    let _ = match tls {
                        Some(tls) => match tls.accept(socket).await {
                            Ok(stream) => http.serve_connection(TokioIo::new(stream), service).await,
                            Err(_) => return,
                        },
                        None => http.serve_connection(TokioIo::new(socket), service).await,
                    };
                });
            }
        });
        self.runtime = Some(runtime);
    }

    pub fn sink_toml(&self, bucket: &str, secret: &str) -> String {
        format!(
            r#"url = "s3://{bucket}/archive"
options = {{ endpoint = "http://{addr}", allow_http = true, region = "us-east-1", access_key_id = "{ACCESS_KEY}", secret_access_key = "{secret}", virtual_hosted_style_request = false }}"#,
            addr = self.addr
        )
    }
}

#[test]
fn objects_land_in_a_real_s3_server_with_firehose_keys() {
    let root = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    std::fs::create_dir(root.path().join("logs-bucket")).unwrap_or_else(|e| panic!("{e}"));
    let server = S3Server::start(root.path());
    let toml = format!(
        r#"
[pipeline]
name = "s3-roundtrip"
[sources.demo]
type = "generator"
profile = "cloudtrail"
records = 5000
seed = 11
[sinks.s3]
type = "object_store"
inputs = ["demo"]
{sink}
format = "ndjson"
compression = "gzip"
prefix = "ct/!{{timestamp:'year='yyyy'/month='MM}}/"
error_prefix = "errors/!{{firehose:error-output-type}}/"
buffer = {{ size_mb = 1, interval_s = 60 }}
"#,
        sink = server.sink_toml("logs-bucket", SECRET_KEY)
    );
    let (_, metrics) = run_pipeline(&toml, &registry(), 2).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(metrics.sinks[0].records_undelivered.load(std::sync::atomic::Ordering::Relaxed), 0);
    let objects = folder_objects(&server.root.join("logs-bucket"));
    assert!(objects.len() >= 3, "{:?}", objects.keys().collect::<Vec<_>>());
    let now = chrono::Utc::now();
    let key_shape = regex_lite_match(now);
    for key in objects.keys() {
        assert!(key_shape(key), "unexpected key {key}");
    }
    assert_eq!(all_lines(&objects), {
        let mut g = generated(Profile::Cloudtrail, 11, 5000);
        g.sort();
        g
    });
}

/// `archive/ct/year=YYYY/month=MM/s3-roundtrip-1-YYYY-MM-DD-HH-MM-SS-<uuid>.gz`
fn regex_lite_match(now: chrono::DateTime<chrono::Utc>) -> impl Fn(&str) -> bool {
    let head = format!(
        "archive/ct/year={}/month={}/s3-roundtrip-1-{}-",
        now.format("%Y"),
        now.format("%m"),
        now.format("%Y-%m-%d")
    );
    move |key: &str| {
        let Some(rest) = key.strip_prefix(&head) else { return false };
        let Some(rest) = rest.strip_suffix(".gz") else { return false };
        // HH-MM-SS-uuid
        rest.len() == 9 + 36 && uuid::Uuid::parse_str(&rest[9..]).is_ok()
    }
}

/// The S3 server as the conformance kit sees it: objects read back from the server's folder, and
/// faults injected as S3 errors (500 InternalError: unavailable; 403 AccessDenied: refused).
struct S3Destination {
    server: S3Server,
}

impl Destination for S3Destination {
    fn sink(&self) -> std::sync::Arc<dyn sluice_engine::contract::Sink> {
        let options = [
            ("endpoint", format!("http://{}", self.server.addr)),
            ("allow_http", "true".into()),
            ("region", "us-east-1".into()),
            ("access_key_id", ACCESS_KEY.into()),
            ("secret_access_key", SECRET_KEY.into()),
        ]
        .map(|(k, v)| (k.to_string(), v));
        std::sync::Arc::new(ObjectStoreSink::from_url("s3://conf/base", &options).unwrap())
    }

    fn stored(&self, key: &str) -> futures::future::BoxFuture<'static, Option<Vec<u8>>> {
        let path = self.server.root.join("conf/base").join(key);
        Box::pin(async move { std::fs::read(path).ok() })
    }

    fn inject(&self, fault: Option<Fault>) -> bool {
        match fault {
            None => self.server.faults.heal(),
            Some(Fault::Unavailable) => self.server.faults.fail_writes(&[""], S3ErrorCode::InternalError),
            Some(Fault::Refused) => self.server.faults.fail_writes(&[""], S3ErrorCode::AccessDenied),
        }
        true
    }
}

#[test]
fn the_object_store_sink_passes_the_conformance_kit_against_s3() {
    let root = tempfile::tempdir().unwrap();
    std::fs::create_dir(root.path().join("conf")).unwrap();
    let destination = S3Destination { server: S3Server::start(root.path()) };
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let report = runtime.block_on(conformance(&destination)).unwrap_or_else(|e| panic!("{e}"));
    assert!(report.skipped.is_empty(), "{report:?}");
    assert!(report.passed(Check::PartRetried) && report.passed(Check::PermanentRefusal), "{report:?}");
}

#[test]
fn a_wrong_secret_is_refused_and_the_run_exits_1() {
    let root = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    std::fs::create_dir(root.path().join("bkt")).unwrap_or_else(|e| panic!("{e}"));
    let server = S3Server::start(root.path());
    let work = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let pipeline = work.path().join("p.toml");
    std::fs::write(
        &pipeline,
        format!(
            "[pipeline]\nname = \"denied\"\n[sources.demo]\ntype = \"generator\"\nprofile = \"vpcflow\"\nrecords = 100\n[sinks.s3]\ntype = \"object_store\"\ninputs = [\"demo\"]\n{}\nretry = {{ duration_s = 0 }}\n",
            server.sink_toml("bkt", "not-the-secret")
        ),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let out = sluice().args(["run", "--quiet"]).arg(&pipeline).output().unwrap_or_else(|e| panic!("{e}"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    // Refused credentials stop the run before anything is read (the error output would refuse them
    // too, and delivery would block), with what to do about it.
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("refused our credentials") && stderr.contains("healthcheck = false"), "{stderr}");
    assert!(folder_objects(&server.root.join("bkt")).is_empty());
}

/// Credentials from the AWS shared files, as `aws configure` writes them: a profile's static keys
/// (`AWS_PROFILE`, from `AWS_SHARED_CREDENTIALS_FILE`), a `credential_process` profile of the config
/// file, and roles assumed through STS with another profile's keys (`source_profile`) and with the
/// instance profile's (`credential_source = Ec2InstanceMetadata`), each verified by the server's
/// SigV4 check; a profile neither file has, a process that fails and a role STS refuses stop the
/// run at start saying so.
#[test]
fn credentials_come_from_a_profile_of_the_aws_shared_files() {
    let root = tempfile::tempdir().unwrap();
    std::fs::create_dir(root.path().join("bkt")).unwrap();
    let server = S3Server::start(root.path());
    let work = tempfile::tempdir().unwrap();
    let (credentials, config) = (work.path().join("credentials"), work.path().join("config"));
    std::fs::write(
        &credentials,
        format!("[default]\naws_access_key_id = AKIDWRONG\naws_secret_access_key = wrong\n\n[lake]\naws_access_key_id = {ACCESS_KEY}\naws_secret_access_key = {SECRET_KEY}\n\n[base]\naws_access_key_id = AKIDBASE\naws_secret_access_key = base-secret\n"),
    )
    .unwrap();
    std::fs::write(
        &config,
        format!(
            "[profile lake]\nregion = us-east-1\n\n[profile helper]\ncredential_process = printf '{{\"Version\": 1, \"AccessKeyId\": \"{ACCESS_KEY}\", \"SecretAccessKey\": \"{SECRET_KEY}\"}}'\n\n\
             [profile expired]\ncredential_process = echo 'the SSO session has expired' >&2 && exit 2\n\n\
             [profile writer]\nrole_arn = arn:aws:iam::123456789012:role/lake-writer\nsource_profile = base\nregion = eu-west-1\nrole_session_name = nightly-load\n\n\
             [profile denied]\nrole_arn = arn:aws:iam::123456789012:role/other\nsource_profile = base\nregion = eu-west-1\n\n\
             [profile on-instance]\nrole_arn = arn:aws:iam::123456789012:role/lake-writer\ncredential_source = Ec2InstanceMetadata\nregion = eu-west-1\nrole_session_name = from-the-instance\n\n\
             [profile pod]\nrole_arn = arn:aws:iam::123456789012:role/lake-writer\nweb_identity_token_file = {token}\nregion = eu-west-1\nrole_session_name = from-the-pod\n\n\
             [profile pod-wrong]\nrole_arn = arn:aws:iam::123456789012:role/lake-writer\nweb_identity_token_file = {wrong}\nregion = eu-west-1\n",
            token = work.path().join("token").display(),
            wrong = work.path().join("wrong-token").display(),
        ),
    )
    .unwrap();
    // The sink gives no keys: only the endpoint.
    let sink = format!(
        r#"url = "s3://bkt/archive"
options = {{ endpoint = "http://{}", allow_http = true, virtual_hosted_style_request = false }}"#,
        server.addr
    );
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let (sts, sessions) = security_token_service(&runtime);
    let instance = super::support::instance_metadata(&runtime, Arc::new(AtomicU64::new(0)));
    let pipeline = work.path().join("p.toml");
    let run_as = |variable: &str, profile: &str, name: &str| {
        let toml = format!(
            "[pipeline]\nname = \"{name}\"\n[sources.demo]\ntype = \"generator\"\nprofile = \"vpcflow\"\nrecords = 300\nseed = 5\n\
             [sinks.s3]\ntype = \"object_store\"\ninputs = [\"demo\"]\nformat = \"ndjson\"\nprefix = \"{name}/\"\n{sink}\n"
        );
        std::fs::write(&pipeline, toml).unwrap();
        sluice()
            .args(["run", "--quiet"])
            .arg(&pipeline)
            .without_aws_keys()
            .env("AWS_SHARED_CREDENTIALS_FILE", &credentials)
            .env("AWS_CONFIG_FILE", &config)
            .env(variable, profile)
            .env("AWS_ENDPOINT_URL_STS", &sts)
            .env("AWS_METADATA_ENDPOINT", format!("http://127.0.0.1:{instance}"))
            .output()
            .unwrap()
    };
    let run = |profile: &str, name: &str| run_as("AWS_PROFILE", profile, name);
    let lines_under = |prefix: &str| {
        let objects = folder_objects(&server.root.join("bkt"));
        objects
            .iter()
            .filter(|(k, _)| k.starts_with(&format!("archive/{prefix}/")))
            .map(|(_, v)| v.len())
            .sum::<usize>()
    };
    // A web identity token as a token issuer writes it (EKS's projected service-account token).
    std::fs::write(work.path().join("token"), "eyJ.pod-token.sig\n").unwrap();
    std::fs::write(work.path().join("wrong-token"), "eyJ.other.sig").unwrap();
    for (profile, name) in
        [("lake", "keys"), ("helper", "process"), ("writer", "role"), ("on-instance", "instance"), ("pod", "pod")]
    {
        let out = run(profile, name);
        assert!(out.status.success(), "{profile}: {}", String::from_utf8_lossy(&out.stderr));
        assert_eq!(lines_under(name), 300, "{profile}");
    }
    // botocore's older name for the variable, read when AWS_PROFILE is not set.
    let out = run_as("AWS_DEFAULT_PROFILE", "lake", "older");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(lines_under("older"), 300);
    let out = run_as("AWS_DEFAULT_PROFILE", "nope", "older-nope");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("AWS_DEFAULT_PROFILE is `nope`, but neither"), "{stderr}");
    // The default profile's keys are refused: the profile is what chose the right ones.
    let out = run("default", "default");
    assert_eq!(out.status.code(), Some(1), "{}", String::from_utf8_lossy(&out.stderr));
    for (profile, says) in [
        ("nope", "AWS_PROFILE is `nope`, but neither"),
        (
            "expired",
            "the `credential_process` of the AWS profile `expired` failed: it exited with exit status: 2: the SSO session has expired",
        ),
        (
            "denied",
            "the AWS profile `denied` names a role (`role_arn`) sluice cannot assume: STS answered 403 Forbidden: \
             AccessDenied: User: arn:aws:iam::123456789012:user/base is not authorized to perform: sts:AssumeRole",
        ),
        (
            "pod-wrong",
            "the AWS profile `pod-wrong` names a role (`role_arn`) sluice cannot assume: STS answered 400 Bad Request: \
             InvalidIdentityToken: Couldn't retrieve verification key from your identity provider",
        ),
    ] {
        let out = run(profile, profile);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        assert!(
            stderr.contains("no credentials were found for s3://bkt/archive: ") && stderr.contains(says),
            "{stderr}"
        );
        // The profile's own words say what to do; the generic advice on where else to put keys does not follow.
        assert!(!stderr.contains("skip_signature"), "{stderr}");
    }
    let refused = ["default", "nope", "expired", "denied", "pod-wrong"];
    assert_eq!(refused.iter().map(|name| lines_under(name)).sum::<usize>(), 0);
    // The role was asked for with the profile's session name, once per run (cached meanwhile) after
    // the throttled first request, the denied one once; every request verified as signed by the
    // source's keys.
    let sessions = sessions.lock().unwrap().clone();
    assert_eq!(sessions.len(), 5, "{sessions:?}");
    assert_eq!(sessions[..4], ["nightly-load", "nightly-load", "from-the-instance", "from-the-pod"]);
    assert!(sessions[4].starts_with("sluice-"), "{sessions:?}");
}

/// What the AWS profile tests share: an S3 server (SigV4-checking) with the bucket `bkt`, a home
/// folder holding the AWS config file, and runs of a 200-record pipeline into
/// `s3://bkt/archive/<name>/` with no credentials but the selected profile's.
struct ProfileLab {
    server: S3Server,
    home: tempfile::TempDir,
    config: PathBuf,
    _root: tempfile::TempDir,
}

impl ProfileLab {
    fn new(config_text: &str) -> ProfileLab {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir(root.path().join("bkt")).unwrap();
        let server = S3Server::start(root.path());
        let home = tempfile::tempdir().unwrap();
        let config = home.path().join("config");
        std::fs::write(&config, config_text).unwrap();
        ProfileLab { server, home, config, _root: root }
    }

    /// `sluice run` as the profile `profile`, its objects under `archive/<name>/`, with the
    /// variables `endpoints` set (the test services' `AWS_ENDPOINT_URL_*`).
    fn run(&self, profile: &str, name: &str, endpoints: &[(&str, &str)]) -> std::process::Output {
        let pipeline = self.home.path().join(format!("{name}.toml"));
        let toml = format!(
            "[pipeline]\nname = \"{name}\"\n[sources.demo]\ntype = \"generator\"\nprofile = \"vpcflow\"\nrecords = 200\nseed = 5\n\
             [sinks.s3]\ntype = \"object_store\"\ninputs = [\"demo\"]\nformat = \"ndjson\"\nprefix = \"{name}/\"\n\
             url = \"s3://bkt/archive\"\noptions = {{ endpoint = \"http://{}\", allow_http = true, virtual_hosted_style_request = false }}\n",
            self.server.addr
        );
        std::fs::write(&pipeline, toml).unwrap();
        let mut command = sluice();
        command
            .args(["run", "--quiet"])
            .arg(&pipeline)
            .without_aws_keys()
            .env("HOME", self.home.path())
            .env("AWS_CONFIG_FILE", &self.config)
            .env("AWS_PROFILE", profile);
        for (variable, url) in endpoints {
            command.env(variable, url);
        }
        command.output().unwrap()
    }

    /// Records stored under `archive/<name>/`.
    fn lines_under(&self, name: &str) -> usize {
        folder_objects(&self.server.root.join("bkt"))
            .iter()
            .filter(|(k, _)| k.starts_with(&format!("archive/{name}/")))
            .map(|(_, v)| v.len())
            .sum()
    }
}

/// An IAM Identity Center profile (`aws sso login`'s cached token): the token, two minutes from
/// expiry, is refreshed with SSO OIDC (and written back for the CLI), exchanged with
/// `GetRoleCredentials` for the role's credentials, and those sign the S3 requests; a second run
/// uses the refreshed token as it is; a third signs in to a hub account's permission set and
/// assumes the lake's role from there (a role profile whose `source_profile` is an SSO one).
#[test]
fn credentials_come_from_an_iam_identity_center_session() {
    let lab = ProfileLab::new(
        "[profile lake]\nsso_session = corp\nsso_account_id = 123456789012\nsso_role_name = LakeWriter\nregion = us-east-1\n\n\
         [profile hub]\nsso_session = corp\nsso_account_id = 123456789012\nsso_role_name = HubAdmin\n\n\
         [profile via-hub]\nrole_arn = arn:aws:iam::123456789012:role/lake-writer\nsource_profile = hub\nregion = eu-west-1\nrole_session_name = from-sso\n\n\
         [sso-session corp]\nsso_start_url = https://corp.awsapps.com/start\nsso_region = eu-west-1\nsso_registration_scopes = sso:account:access\n",
    );
    // The CLI's cache file for the session `corp`: named by SHA-1("corp").
    let cache = lab.home.path().join(".aws/sso/cache");
    std::fs::create_dir_all(&cache).unwrap();
    let token_file = cache.join("ee0bfd2552fbd840c02cc48b6e823320543c450f.json");
    let in_minutes =
        |m: i64| (chrono::Utc::now() + chrono::Duration::minutes(m)).to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    std::fs::write(
        &token_file,
        format!(
            r#"{{"startUrl":"https://corp.awsapps.com/start","region":"eu-west-1","accessToken":"first-token","expiresAt":"{}","clientId":"cli-client","clientSecret":"cli-secret","registrationExpiresAt":"{}","refreshToken":"refresh-1"}}"#,
            in_minutes(2),
            in_minutes(60 * 24 * 30)
        ),
    )
    .unwrap();
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let (center, calls) = identity_center(&runtime);
    let (sts, sessions) = security_token_service(&runtime);
    let endpoints = [
        ("AWS_ENDPOINT_URL_SSO", center.as_str()),
        ("AWS_ENDPOINT_URL_SSO_OIDC", center.as_str()),
        ("AWS_ENDPOINT_URL_STS", sts.as_str()),
    ];
    let run_as = |profile: &str, name: &str| lab.run(profile, name, &endpoints);
    let run = |name: &str| run_as("lake", name);
    let lines_under = |name: &str| lab.lines_under(name);
    for name in ["refreshed", "cached"] {
        let out = run(name);
        assert!(out.status.success(), "{name}: {}", String::from_utf8_lossy(&out.stderr));
        assert_eq!(lines_under(name), 200, "{name}");
    }
    // One refresh (the first run), then the portal shown the refreshed token each run.
    assert_eq!(
        *calls.lock().unwrap(),
        [
            "CreateToken refresh-1",
            "GetRoleCredentials second-token LakeWriter",
            "GetRoleCredentials second-token LakeWriter"
        ]
    );
    // Through the hub: its permission set's keys sign STS's AssumeRole (the receiver checks the
    // signature), whose role's keys sign the S3 requests.
    let out = run_as("via-hub", "chained");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(lines_under("chained"), 200);
    assert_eq!(calls.lock().unwrap().last().map(String::as_str), Some("GetRoleCredentials second-token HubAdmin"));
    // (STS throttles its first call: asked again.)
    assert_eq!(*sessions.lock().unwrap(), ["from-sso", "from-sso"]);
    let saved: serde_json::Value = serde_json::from_slice(&std::fs::read(&token_file).unwrap()).unwrap();
    assert_eq!(
        (saved["accessToken"].as_str(), saved["refreshToken"].as_str(), saved["clientId"].as_str()),
        (Some("second-token"), Some("refresh-2"), Some("cli-client"))
    );
    // Logged out (the token expired, its refresh revoked): the run stops at start saying what to do.
    std::fs::write(
        &token_file,
        format!(r#"{{"accessToken":"second-token","expiresAt":"{}","clientId":"cli-client","clientSecret":"cli-secret","registrationExpiresAt":"{}","refreshToken":"revoked"}}"#, in_minutes(-5), in_minutes(600)),
    )
    .unwrap();
    let out = run("expired");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(
            "the AWS profile `lake` gets no credentials from IAM Identity Center (SSO): its token expired at"
        ) && stderr
            .contains("SSO OIDC answered 400 Bad Request: InvalidGrantException: Invalid refresh token provided")
            && stderr.contains("run `aws sso login --sso-session corp`"),
        "{stderr}"
    );
    assert!(!stderr.contains("cli-secret") && !stderr.contains("second-token"), "{stderr}");
    assert!(!stderr.contains("skip_signature"), "{stderr}");
    assert_eq!(lines_under("expired"), 0);
}

/// A role profile with `mfa_serial`: sluice cannot ask for the code, so it stops at start saying
/// which AWS CLI command asks for it; the real AWS CLI (`aws sts get-caller-identity`, its prompt
/// answered on stdin) assumes the role with the code through the strict STS receiver and caches the
/// role's credentials; sluice then signs its S3 requests with them, from that cache.
#[test]
fn a_role_that_needs_an_mfa_code_uses_the_credentials_the_aws_cli_cached() {
    let lab = ProfileLab::new(
        "[profile base]\naws_access_key_id = AKIDBASE\naws_secret_access_key = base-secret\n\n\
         [profile mfa]\nrole_arn = arn:aws:iam::123456789012:role/lake-writer\nsource_profile = base\n\
         mfa_serial = arn:aws:iam::111122223333:mfa/alice\nduration_seconds = 3600\nregion = eu-west-1\n",
    );
    let (home, config) = (lab.home.path(), &lab.config);
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let (sts, _) = security_token_service(&runtime);
    let run = || lab.run("mfa", "mfa", &[("AWS_ENDPOINT_URL_STS", sts.as_str())]);
    let out = run();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("its role needs an MFA code (`mfa_serial`), which sluice cannot ask for")
            && stderr.contains("run `aws sts get-caller-identity --profile mfa`"),
        "{stderr}"
    );
    // The AWS CLI asks for the code (on stdin: `setsid` leaves it no terminal to ask on).
    let mut cli = std::process::Command::new("setsid")
        .arg(python().with_file_name("aws"))
        .args(["sts", "get-caller-identity", "--profile", "mfa", "--output", "json"])
        .env("HOME", home)
        .env("AWS_CONFIG_FILE", config)
        .env("AWS_SHARED_CREDENTIALS_FILE", home.join("no-credentials"))
        .env("AWS_ENDPOINT_URL_STS", &sts)
        .env_remove("AWS_ACCESS_KEY_ID")
        .env_remove("AWS_SECRET_ACCESS_KEY")
        .env_remove("AWS_PROFILE")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut cli.stdin.take().unwrap(), b"123456\n").unwrap();
    let asked = cli.wait_with_output().unwrap();
    let said = String::from_utf8_lossy(&asked.stderr);
    assert!(asked.status.success(), "{said}");
    assert!(said.contains("Enter MFA code for arn:aws:iam::111122223333:mfa/alice"), "{said}");
    assert!(String::from_utf8_lossy(&asked.stdout).contains("assumed-role/lake-writer"));
    let cached = files_under(&home.join(".aws/cli/cache"));
    assert_eq!(cached.len(), 1, "{cached:?}");
    let out = run();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(lab.lines_under("mfa"), 200);
    // Credentials two minutes from their expiry are not used.
    let mut answer: serde_json::Value = serde_json::from_slice(&std::fs::read(&cached[0]).unwrap()).unwrap();
    let soon = chrono::Utc::now() + chrono::Duration::minutes(2);
    answer["Credentials"]["Expiration"] = soon.to_rfc3339_opts(chrono::SecondsFormat::Secs, true).into();
    std::fs::write(&cached[0], answer.to_string()).unwrap();
    let out = run();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("expire at") && stderr.contains("run `aws sts get-caller-identity --profile mfa`"),
        "{stderr}"
    );
    assert!(!stderr.contains(SECRET_KEY), "{stderr}");
}

/// IAM Identity Center's two services, as their API references describe them: SSO OIDC's
/// `CreateToken` (`POST /token`, JSON) gives `second-token` (and `refresh-2`) for client
/// `cli-client`'s refresh token `refresh-1`, `invalid_grant` (400) for any other; the portal's
/// `GetRoleCredentials` (`GET /federation/credentials?account_id=&role_name=` with the
/// `x-amz-sso_bearer_token` header) gives, for `second-token` and account 123456789012, the S3
/// server's keys with a session token for the role LakeWriter and the keys the test STS takes
/// (`AKIDBASE`) for HubAdmin, `UnauthorizedException` (401) for anything else. Returns its URL and the calls made.
fn identity_center(runtime: &tokio::runtime::Runtime) -> (String, Arc<Mutex<Vec<String>>>) {
    let calls = Arc::new(Mutex::new(Vec::new()));
    let (token_calls, portal_calls) = (Arc::clone(&calls), Arc::clone(&calls));
    let app = axum::Router::new()
        .route(
            "/token",
            axum::routing::post(move |headers: axum::http::HeaderMap, body: axum::body::Bytes| {
                let calls = Arc::clone(&token_calls);
                async move {
                    assert_eq!(headers.get("content-type").and_then(|v| v.to_str().ok()), Some("application/json"));
                    let grant: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
                    let field = |k: &str| grant[k].as_str().unwrap_or_default().to_string();
                    calls.lock().unwrap().push(format!("CreateToken {}", field("refreshToken")));
                    if [field("clientId"), field("clientSecret"), field("grantType"), field("refreshToken")] != ["cli-client", "cli-secret", "refresh_token", "refresh-1"] {
                        return (
                            axum::http::StatusCode::BAD_REQUEST,
                            [("x-amzn-ErrorType", "InvalidGrantException")],
                            r#"{"error":"invalid_grant","error_description":"Invalid refresh token provided"}"#,
                        );
                    }
                    (
                        axum::http::StatusCode::OK,
                        [("x-amzn-RequestId", "1")],
                        r#"{"accessToken":"second-token","expiresIn":28800,"refreshToken":"refresh-2","tokenType":"Bearer"}"#,
                    )
                }
            }),
        )
        .route(
            "/federation/credentials",
            axum::routing::get(move |headers: axum::http::HeaderMap, uri: axum::http::Uri| {
                let calls = Arc::clone(&portal_calls);
                async move {
                    let token = headers.get("x-amz-sso_bearer_token").and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
                    let query: std::collections::HashMap<String, String> =
                        url::form_urlencoded::parse(uri.query().unwrap_or_default().as_bytes()).into_owned().collect();
                    let role = query.get("role_name").cloned().unwrap_or_default();
                    calls.lock().unwrap().push(format!("GetRoleCredentials {token} {role}"));
                    // LakeWriter gets the S3 server's keys; HubAdmin those STS knows as the base profile's.
                    let keys = match role.as_str() {
                        "LakeWriter" => Some((ACCESS_KEY, SECRET_KEY)),
                        "HubAdmin" => Some(("AKIDBASE", "base-secret")),
                        _ => None,
                    };
                    let account = query.get("account_id").map(String::as_str);
                    let (Some((key_id, secret)), "second-token", Some("123456789012")) = (keys, token.as_str(), account) else {
                        return (
                            axum::http::StatusCode::UNAUTHORIZED,
                            [("x-amzn-ErrorType", "UnauthorizedException")],
                            r#"{"message":"Session token not found or invalid"}"#.to_string(),
                        );
                    };
                    let expiration = (chrono::Utc::now() + chrono::Duration::hours(1)).timestamp_millis();
                    (
                        axum::http::StatusCode::OK,
                        [("x-amzn-RequestId", "2")],
                        format!(r#"{{"roleCredentials":{{"accessKeyId":"{key_id}","secretAccessKey":"{secret}","sessionToken":"sso-session-token","expiration":{expiration}}}}}"#),
                    )
                }
            }),
        );
    (super::support::serve(runtime, app, None), calls)
}

/// STS's side of `AssumeRole`, as its API reference describes it: a form POST to `/`, signed with
/// SigV4 for service `sts` in `eu-west-1` by `AKIDBASE`/`base-secret` (the source profile's keys)
/// or by the instance profile's temporary key ([`super::support::IMDS_ROLE_KEY`]);
/// the role `lake-writer` is given the S3 server's keys with a session token (its first request
/// answered `Throttling`, as a busy STS does), any other role `AccessDenied` (403, STS's error
/// document). A call with an MFA device's `SerialNumber` needs its `TokenCode` `123456` (else
/// `AccessDenied`, as STS answers a wrong code). `GetCallerIdentity`, signed with the role's keys,
/// says who they are. Returns its URL and the session names it was asked for.
fn security_token_service(runtime: &tokio::runtime::Runtime) -> (String, Arc<Mutex<Vec<String>>>) {
    use sluice_connectors::api::sigv4::{AccessKeys, Scope, SignedRequest, verify};
    let sessions = Arc::new(Mutex::new(Vec::new()));
    let asked = Arc::clone(&sessions);
    let throttled = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let app = axum::Router::new().route(
        "/",
        axum::routing::post(move |headers: axum::http::HeaderMap, body: axum::body::Bytes| {
            let asked = Arc::clone(&asked);
            let throttled = Arc::clone(&throttled);
            async move {
                let (instance_key, instance_secret, _) = super::support::IMDS_ROLE_KEY;
                let keys = AccessKeys::new([
                    ("AKIDBASE".to_string(), "base-secret".to_string()),
                    (instance_key.to_string(), instance_secret.to_string()),
                ]);
                let form: std::collections::HashMap<String, String> =
                    url::form_urlencoded::parse(&body).into_owned().collect();
                let field = |k: &str| form.get(k).map(String::as_str).unwrap_or_default();
                // AssumeRoleWithWebIdentity is unsigned: the token is the proof.
                let web_identity = field("Action") == "AssumeRoleWithWebIdentity";
                let request = SignedRequest { method: "POST", path: "/", query: "", headers: &headers, body: &body };
                let scope = Scope { region: "eu-west-1", service: "sts" };
                if field("Action") == "GetCallerIdentity" {
                    let role_keys = AccessKeys::new([(ACCESS_KEY.to_string(), SECRET_KEY.to_string())]);
                    if let Err(e) = verify(&role_keys, &request, chrono::Utc::now().timestamp(), scope) {
                        return (axum::http::StatusCode::FORBIDDEN, format!("<ErrorResponse><Error><Code>SignatureDoesNotMatch</Code><Message>{e}</Message></Error></ErrorResponse>"));
                    }
                    let answer = "<GetCallerIdentityResponse xmlns=\"https://sts.amazonaws.com/doc/2011-06-15/\"><GetCallerIdentityResult>\
                                  <Arn>arn:aws:sts::123456789012:assumed-role/lake-writer/botocore-session</Arn><UserId>AROA:botocore-session</UserId>\
                                  <Account>123456789012</Account></GetCallerIdentityResult><ResponseMetadata><RequestId>3</RequestId></ResponseMetadata></GetCallerIdentityResponse>";
                    return (axum::http::StatusCode::OK, answer.to_string());
                }
                if web_identity {
                    if headers.contains_key("authorization") || field("WebIdentityToken") != "eyJ.pod-token.sig" {
                        return (axum::http::StatusCode::BAD_REQUEST, "<ErrorResponse><Error><Type>Sender</Type><Code>InvalidIdentityToken</Code><Message>Couldn't retrieve verification key from your identity provider</Message></Error></ErrorResponse>".to_string());
                    }
                } else if let Err(e) = verify(&keys, &request, chrono::Utc::now().timestamp(), scope) {
                    return (axum::http::StatusCode::FORBIDDEN, format!("<ErrorResponse><Error><Code>SignatureDoesNotMatch</Code><Message>{e}</Message></Error></ErrorResponse>"));
                }
                assert!(["AssumeRole", "AssumeRoleWithWebIdentity"].contains(&field("Action")), "{form:?}");
                assert_eq!((field("Version"), field("DurationSeconds")), ("2011-06-15", "3600"));
                asked.lock().unwrap().push(field("RoleSessionName").to_string());
                if form.contains_key("SerialNumber") && field("TokenCode") != "123456" {
                    let refused = "<ErrorResponse xmlns=\"https://sts.amazonaws.com/doc/2011-06-15/\"><Error><Type>Sender</Type><Code>AccessDenied</Code>\
                                   <Message>MultiFactorAuthentication failed with invalid MFA one time pass code. </Message></Error><RequestId>4</RequestId></ErrorResponse>";
                    return (axum::http::StatusCode::FORBIDDEN, refused.to_string());
                }
                if field("RoleArn") != "arn:aws:iam::123456789012:role/lake-writer" {
                    let denied = format!(
                        "<ErrorResponse xmlns=\"https://sts.amazonaws.com/doc/2011-06-15/\"><Error><Type>Sender</Type><Code>AccessDenied</Code>\
                         <Message>User: arn:aws:iam::123456789012:user/base is not authorized to perform: sts:AssumeRole on resource: {}</Message></Error>\
                         <RequestId>1</RequestId></ErrorResponse>",
                        field("RoleArn")
                    );
                    return (axum::http::StatusCode::FORBIDDEN, denied);
                }
                if !throttled.swap(true, Ordering::SeqCst) {
                    let busy = "<ErrorResponse><Error><Type>Sender</Type><Code>Throttling</Code><Message>Rate exceeded</Message></Error></ErrorResponse>";
                    return (axum::http::StatusCode::BAD_REQUEST, busy.to_string());
                }
                let expiration = (chrono::Utc::now() + chrono::Duration::hours(1)).to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
                // Each action's answer as the STS API reference shows it.
                let action = field("Action");
                let provider = if web_identity { "<SubjectFromWebIdentityToken>system:serviceaccount:lake:writer</SubjectFromWebIdentityToken><Provider>oidc.eks.eu-west-1.amazonaws.com/id/EXAMPLE</Provider>" } else { "" };
                let answer = format!(
                    "<{action}Response xmlns=\"https://sts.amazonaws.com/doc/2011-06-15/\"><{action}Result>{provider}\
                     <AssumedRoleUser><Arn>arn:aws:sts::123456789012:assumed-role/lake-writer/{session}</Arn><AssumedRoleId>AROA:{session}</AssumedRoleId></AssumedRoleUser>\
                     <Credentials><AccessKeyId>{ACCESS_KEY}</AccessKeyId><SecretAccessKey>{SECRET_KEY}</SecretAccessKey>\
                     <SessionToken>assumed-session-token</SessionToken><Expiration>{expiration}</Expiration></Credentials>\
                     </{action}Result><ResponseMetadata><RequestId>2</RequestId></ResponseMetadata></{action}Response>",
                    session = field("RoleSessionName")
                );
                (axum::http::StatusCode::OK, answer)
            }
        }),
    );
    (super::support::serve(runtime, app, None), sessions)
}

/// A bucket that does not exist stops the run at start with what to do, as refused credentials
/// do (its error output, in the same bucket, could not be stored either: delivery would block).
#[test]
fn a_missing_bucket_stops_the_run_at_start() {
    let root = tempfile::tempdir().unwrap();
    let server = S3Server::start(root.path());
    let work = tempfile::tempdir().unwrap();
    let pipeline = work.path().join("p.toml");
    std::fs::write(
        &pipeline,
        format!(
            "[pipeline]\nname = \"nobucket\"\n[sources.demo]\ntype = \"generator\"\nprofile = \"vpcflow\"\nrecords = 10\n\
             [sinks.s3]\ntype = \"object_store\"\ninputs = [\"demo\"]\n{}\n",
            server.sink_toml("no-such-bucket", SECRET_KEY)
        ),
    )
    .unwrap();
    let out = sluice().args(["run", "--quiet"]).arg(&pipeline).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("the bucket of s3://no-such-bucket/archive does not exist; create it"), "{stderr}");
}

/// `sluice validate --check` asks each sink's destination as a run's start-up check does, and
/// changes nothing: a missing bucket, refused credentials and a local folder that cannot be made
/// are errors, each said with its sink
/// (exit 1); a bucket that takes the credentials and a local folder pass; nothing is written
/// anywhere (no object, no `data_dir`, no local folder). Without the failing sinks it exits 0.
#[test]
fn validate_check_asks_each_destination_and_changes_nothing() {
    let root = tempfile::tempdir().unwrap();
    std::fs::create_dir(root.path().join("bkt")).unwrap();
    let server = S3Server::start(root.path());
    let work = tempfile::tempdir().unwrap();
    let (data, out) = (work.path().join("data"), work.path().join("out"));
    let pipeline = |name: &str, pipeline_keys: &str, sinks: &[(&str, String)]| {
        let mut text = format!(
            "[pipeline]\nname = \"{name}\"\ndata_dir = \"{}\"\n{pipeline_keys}\n[sources.demo]\ntype = \"generator\"\nprofile = \"vpcflow\"\nrecords = 10\n",
            data.display()
        );
        for (sink, keys) in sinks {
            text.push_str(&format!("[sinks.{sink}]\ntype = \"object_store\"\ninputs = [\"demo\"]\n{keys}\n"));
        }
        let path = work.path().join(format!("{name}.toml"));
        std::fs::write(&path, text).unwrap();
        path
    };
    let good =
        [("good", server.sink_toml("bkt", SECRET_KEY)), ("local", format!("url = \"file://{}\"", out.display()))];
    let mut all = good.to_vec();
    all.push(("missing", server.sink_toml("no-such-bucket", SECRET_KEY)));
    all.push(("denied", server.sink_toml("bkt", "not-the-secret")));
    // A local folder that cannot be made: a file stands where a folder of its path should be.
    std::fs::write(work.path().join("a-file"), "").unwrap();
    all.push(("blocked", format!("url = \"file://{}\"", work.path().join("a-file/out").display())));
    // The audit log's store is asked too.
    let audit = format!("audit_log = {{ {} }}", server.sink_toml("no-audit-bucket", SECRET_KEY).replace('\n', ", "));
    let checked = sluice().args(["validate", "--check"]).arg(pipeline("all", &audit, &all)).output().unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&checked.stdout), String::from_utf8_lossy(&checked.stderr));
    assert_eq!(checked.status.code(), Some(1), "{stdout}\n{stderr}");
    assert!(stdout.contains("all.toml: sinks.good (object_store s3://bkt/archive): checked"), "{stdout}");
    assert!(
        stdout.contains(&format!("all.toml: sinks.local (object_store file://{}): checked", out.display())),
        "{stdout}"
    );
    assert!(
        stderr.contains("sinks.missing (object_store s3://no-such-bucket/archive): the bucket of s3://no-such-bucket/archive does not exist; create it, or correct the URL (S3.NoSuchBucket)"),
        "{stderr}"
    );
    assert!(
        stderr.contains("sinks.denied (object_store s3://bkt/archive): s3://bkt/archive refused our credentials"),
        "{stderr}"
    );
    assert!(
        stderr.contains("pipeline.audit_log (")
            && stderr.contains("the bucket of s3://no-audit-bucket/archive does not exist"),
        "{stderr}"
    );
    assert!(
        stderr.contains("sinks.blocked (") && stderr.contains("a-file is not a folder (Local.AccessDenied)"),
        "{stderr}"
    );
    assert!(!stderr.contains("not-the-secret") && !stderr.contains(SECRET_KEY), "{stderr}");
    assert!(folder_objects(&server.root.join("bkt")).is_empty() && !data.exists() && !out.exists());
    let passed = sluice().args(["validate", "--check"]).arg(pipeline("good", "", &good)).output().unwrap();
    assert!(passed.status.success(), "{}", String::from_utf8_lossy(&passed.stderr));
    // An `object_store` source is listed as a run's start lists it: a prefix with no object is an
    // error, one with objects passes (none of them read).
    std::fs::create_dir_all(root.path().join("bkt/in")).unwrap();
    std::fs::write(root.path().join("bkt/in/a.ndjson"), "{}\n").unwrap();
    let reading = |bucket_and_prefix: &str| {
        let source =
            server.sink_toml("bkt", SECRET_KEY).replace("s3://bkt/archive", &format!("s3://{bucket_and_prefix}"));
        let path = work.path().join("reads.toml");
        std::fs::write(
            &path,
            format!(
                "[pipeline]\nname = \"reads\"\ndata_dir = \"{}\"\n[sources.archive]\ntype = \"object_store\"\n{source}\n\
                 [sinks.local]\ntype = \"object_store\"\ninputs = [\"archive\"]\nurl = \"file://{}\"\n",
                data.display(),
                out.display()
            ),
        )
        .unwrap();
        sluice().args(["validate", "--check"]).arg(path).output().unwrap()
    };
    let found = reading("bkt/in");
    assert!(found.status.success(), "{}", String::from_utf8_lossy(&found.stderr));
    assert!(String::from_utf8_lossy(&found.stdout).contains("sources.archive (object_store: s3://bkt/in): checked"));
    let empty = reading("bkt/none");
    let stderr = String::from_utf8_lossy(&empty.stderr);
    assert_eq!(empty.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("sources.archive (object_store: s3://bkt/none): no object under s3://bkt/none"),
        "{stderr}"
    );
    // A bucket the store does not have: the store's refusal, with its code.
    let missing = reading("nobkt/in");
    let stderr = String::from_utf8_lossy(&missing.stderr);
    assert_eq!(missing.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("sources.archive (object_store: s3://nobkt/in): cannot list s3://nobkt/in"), "{stderr}");
    assert!(stderr.trim_end().ends_with("(S3.NoSuchBucket)"), "{stderr}");
    assert!(!data.exists() && !out.exists());
}

#[test]
fn an_s3_server_with_a_certificate_of_a_private_ca_stops_the_run_at_start_until_the_ca_is_trusted() {
    let certs = super::support::TestCertificates::make();
    let root = tempfile::tempdir().unwrap();
    std::fs::create_dir(root.path().join("lake")).unwrap();
    let server = S3Server::start_over(root.path(), Some(certs.server_config("server", false)));
    let work = tempfile::tempdir().unwrap();
    let pipeline = work.path().join("p.toml");
    let sink = server.sink_toml("lake", SECRET_KEY).replace("http://", "https://").replace(", allow_http = true", "");
    std::fs::write(
        &pipeline,
        format!(
            "[pipeline]\nname = \"privateca\"\n[sources.demo]\ntype = \"generator\"\nprofile = \"cloudtrail\"\nrecords = 100\n\
             [sinks.s3]\ntype = \"object_store\"\ninputs = [\"demo\"]\nformat = \"ndjson\"\n{sink}\n"
        ),
    )
    .unwrap();
    // The system's roots do not know the CA: every delivery would fail, so the run does not start.
    let out = sluice().args(["run", "--quiet"]).arg(&pipeline).env_remove("SSL_CERT_FILE").output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("the server's certificate is not trusted (invalid peer certificate: UnknownIssuer)")
            && stderr.contains("trust its CA with `tls = { ca = \"ca.pem\" }`"),
        "{stderr}"
    );
    // The library's own log line of the refusal is not shown besides sluice's.
    assert!(!stderr.contains("rustls_platform_verifier"), "{stderr}");
    assert!(files_under(&root.path().join("lake")).is_empty());
    // Trusted as the error says: everything is delivered.
    let out =
        sluice().args(["run", "--quiet"]).arg(&pipeline).env("SSL_CERT_FILE", certs.path("ca.pem")).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let lines: usize = folder_objects(&root.path().join("lake")).values().map(Vec::len).sum();
    assert_eq!(lines, 100);
    // Or trusted by the sink's own `tls = { ca }`, the system's roots as they were: 100 more.
    let with_ca = std::fs::read_to_string(&pipeline)
        .unwrap()
        .replace("[sinks.s3]\n", &format!("[sinks.s3]\ntls = {{ ca = \"{}\" }}\n", certs.path("ca.pem")));
    std::fs::write(&pipeline, &with_ca).unwrap();
    let out = sluice().args(["run", "--quiet"]).arg(&pipeline).env_remove("SSL_CERT_FILE").output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let lines: usize = folder_objects(&root.path().join("lake")).values().map(Vec::len).sum();
    assert_eq!(lines, 200);
    // The object_store source reads them back over the same TLS with its own `tls = { ca }`.
    let store =
        sink.lines().filter(|l| l.starts_with("url") || l.starts_with("options")).collect::<Vec<_>>().join("\n");
    let copied = work.path().join("copied");
    std::fs::write(
        &pipeline,
        format!(
            "[pipeline]\nname = \"readback\"\ndata_dir = \"{data}\"\n[sources.lake]\ntype = \"object_store\"\n{store}\n\
             tls = {{ ca = \"{ca}\" }}\n[sinks.copy]\ntype = \"object_store\"\ninputs = [\"lake\"]\nurl = \"file://{copied}\"\n\
             format = \"ndjson\"\n",
            data = work.path().join("data").display(),
            ca = certs.path("ca.pem"),
            copied = copied.display(),
        ),
    )
    .unwrap();
    let out = sluice().args(["run", "--quiet"]).arg(&pipeline).env_remove("SSL_CERT_FILE").output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let mut read_back = all_lines(&folder_objects(&copied));
    let mut stored = all_lines(&folder_objects(&root.path().join("lake")));
    read_back.sort();
    stored.sort();
    assert_eq!(read_back.len(), 200);
    assert_eq!(read_back, stored);
    // A request sink's `backup_store` table takes the same `tls`: what an endpoint that is down does
    // not take is backed up there, as error documents.
    let options = sink.lines().find(|l| l.starts_with("options")).unwrap().trim_start_matches("options = ");
    let down = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    std::fs::write(
        &pipeline,
        format!(
            "[pipeline]\nname = \"backup\"\n[sources.demo]\ntype = \"generator\"\nprofile = \"cloudtrail\"\nrecords = 10\n\
             [sinks.hook]\ntype = \"http_endpoint\"\ninputs = [\"demo\"]\nurl = \"http://{down}/in\"\nretry = {{ duration_s = 0 }}\n\
             backup_store = {{ url = \"s3://lake/failed\", options = {options}, tls = {{ ca = \"{ca}\" }} }}\n",
            ca = certs.path("ca.pem"),
        ),
    )
    .unwrap();
    let out = sluice().args(["run", "--quiet"]).arg(&pipeline).env_remove("SSL_CERT_FILE").output().unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", String::from_utf8_lossy(&out.stderr));
    let documents: usize = folder_objects(&root.path().join("lake").join("failed")).values().map(Vec::len).sum();
    assert_eq!(documents, 10);
}

/// The store moves to a certificate of a new CA while sluice runs, and the sink's `tls.ca` file is
/// renewed (written whole, by a rename, as a renewal writes it): the objects refused by the old CA
/// are retried, stored once the new file is taken, and none is backed up. Read once at start, the
/// file would leave every object, and then its error documents, refused by the store.
#[test]
fn a_renewed_store_ca_is_trusted_without_a_restart() {
    let (old, renewed) = (super::support::TestCertificates::make(), super::support::TestCertificates::make());
    let root = tempfile::tempdir().unwrap();
    std::fs::create_dir(root.path().join("lake")).unwrap();
    let mut server = S3Server::start_over(root.path(), Some(old.server_config("server", false)));
    let files = tempfile::tempdir().unwrap();
    let install = |from: &super::support::TestCertificates| {
        let staged = files.path().join(".ca.pem.new");
        std::fs::copy(from.path("ca.pem"), &staged).unwrap();
        std::fs::rename(&staged, files.path().join("ca.pem")).unwrap();
    };
    install(&old);
    let sink = server.sink_toml("lake", SECRET_KEY).replace("http://", "https://").replace(", allow_http = true", "");
    let toml = format!(
        "[pipeline]\nname = \"renewedca\"\n[sources.demo]\ntype = \"generator\"\nprofile = \"cloudtrail\"\nrecords = 300\n\
         [sinks.s3]\ntype = \"object_store\"\ninputs = [\"demo\"]\nformat = \"ndjson\"\n{sink}\n\
         tls = {{ ca = \"{ca}\" }}\nhealthcheck = false\nretry = {{ duration_s = 60 }}\n\
         error_prefix = \"errors/!{{firehose:error-output-type}}/\"\n",
        ca = files.path().join("ca.pem").display()
    );
    run_pipeline(&toml, &registry(), 1).unwrap();
    assert_eq!(all_lines(&folder_objects(&root.path().join("lake"))).len(), 300, "the CA read at start");
    server.serve_with(renewed.server_config("server", false));
    let (done, finished) = std::sync::mpsc::channel();
    std::thread::spawn(move || done.send(run_pipeline(&toml, &registry(), 1).map(|(_, metrics)| metrics)));
    std::thread::sleep(std::time::Duration::from_secs(1));
    install(&renewed);
    // (Not taken, the objects' retries and then their error documents would be refused by the same
    // store for ever: the run would not end.)
    let renewed_run = finished
        .recv_timeout(std::time::Duration::from_secs(45))
        .expect("the renewed CA was not taken: the run did not end in 45 s")
        .unwrap();
    let sink = &renewed_run.sinks[0];
    assert_eq!(sink.records_delivered.load(Ordering::Relaxed), 300);
    assert!(sink.retries.load(Ordering::Relaxed) > 0, "no request was refused before the renewal");
    assert_eq!(sink.records_undelivered.load(Ordering::Relaxed), 0);
    let objects = folder_objects(&root.path().join("lake"));
    assert!(!objects.keys().any(|key| key.contains("errors/")), "records were backed up: {:?}", objects.keys());
    assert_eq!(all_lines(&objects).len(), 600);
}

#[test]
fn large_objects_are_uploaded_in_parts_while_they_grow() {
    let root = tempfile::tempdir().unwrap();
    std::fs::create_dir(root.path().join("parts")).unwrap();
    let server = S3Server::start(root.path());
    // ~27 MB of records into one uncompressed object: three 8 MiB parts are sent before it is sealed.
    let toml = format!(
        "[pipeline]\nname = \"parts\"\n[sources.demo]\ntype = \"generator\"\nprofile = \"cloudtrail\"\nrecords = 30000\nseed = 5\n\
         [sinks.s3]\ntype = \"object_store\"\ninputs = [\"demo\"]\n{}\nformat = \"ndjson\"\nbuffer = {{ size_mb = 128, interval_s = 900 }}\n",
        server.sink_toml("parts", SECRET_KEY)
    );
    let (_, metrics) = run_pipeline(&toml, &registry(), 1).unwrap();
    let m = &metrics.sinks[0];
    use std::sync::atomic::Ordering::Relaxed;
    assert!(m.parts.load(Relaxed) >= 3, "{} parts", m.parts.load(Relaxed));
    assert_eq!(m.objects.load(Relaxed), 1);
    assert_eq!(m.records_delivered.load(Relaxed), 30000);
    let objects = folder_objects(&server.root.join("parts"));
    assert_eq!(objects.len(), 1, "{:?}", objects.keys());
    let mut expected = generated(Profile::Cloudtrail, 5, 30000);
    expected.sort();
    assert_eq!(all_lines(&objects), expected);
}

/// Issue 11, item 3: a multipart upload a killed run left open is aborted by the sink at the next
/// start (S3 keeps, and bills, open uploads that no listing shows).
#[test]
fn multipart_uploads_an_interrupted_run_left_open_are_aborted_at_the_next_start() {
    let root = tempfile::tempdir().unwrap();
    std::fs::create_dir(root.path().join("stale")).unwrap();
    let server = S3Server::start(root.path());
    let toml = format!(
        "[pipeline]\nname = \"stale\"\ndata_dir = \"{}\"\n[sources.demo]\ntype = \"generator\"\nprofile = \"vpcflow\"\nrecords = 1\n\
         [sinks.s3]\ntype = \"object_store\"\ninputs = [\"demo\"]\n{}\n",
        root.path().join("data").display(),
        server.sink_toml("stale", SECRET_KEY)
    );
    // s3s-fs keeps an open upload as `.upload-<id>.json` in its root.
    let open_uploads = || {
        std::fs::read_dir(root.path())
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with(".upload-"))
            .count()
    };
    super::support::an_upload_left_open_is_aborted_at_the_next_start(&toml, open_uploads);
}

/// The `object_store` source against a store that fails: a GET answered `SlowDown` (503) is tried
/// again after a wait and everything is delivered once; an object the store keeps failing is
/// given up after its five tries and one it refuses (403) at once, each named, and the other
/// objects are read (exit 1).
#[test]
fn the_object_store_source_tries_again_what_may_pass_and_gives_up_what_cannot() {
    use std::io::Write as _;
    let root = tempfile::tempdir().unwrap();
    let objects = root.path().join("arc/in");
    std::fs::create_dir_all(&objects).unwrap();
    let lines = |name: &str| (0..200).map(|i| format!("{{\"{name}\":{i}}}")).collect::<Vec<String>>();
    std::fs::write(objects.join("a.ndjson"), lines("a").join("\n") + "\n").unwrap();
    let mut gzip = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gzip.write_all((lines("b").join("\n") + "\n").as_bytes()).unwrap();
    std::fs::write(objects.join("b.ndjson.gz"), gzip.finish().unwrap()).unwrap();
    std::fs::write(objects.join("c.ndjson"), lines("c").join("\n") + "\n").unwrap();
    let server = S3Server::start(root.path());
    let work = tempfile::tempdir().unwrap();
    let run = |name: &str| {
        let source = server.sink_toml("arc", SECRET_KEY).replace("s3://arc/archive", "s3://arc/in");
        read_with_the_object_store_source(work.path(), name, &source)
    };
    let expected = |names: &[&str]| {
        let mut all: Vec<String> = names.iter().flat_map(|n| lines(n)).collect();
        all.sort();
        all
    };
    server.faults.fail_next("GetObject", 2, S3ErrorCode::SlowDown);
    let (code, said, delivered) = run("slowed");
    assert_eq!(code, Some(0), "{said}");
    assert!(said.contains("reading the object failed; trying again in 500 ms from offset 0"), "{said}");
    assert!(said.contains("(archive, S3.SlowDown, 2 attempts, key s3://arc/in/a.ndjson)"), "{said}");
    assert_eq!(delivered, expected(&["a", "b", "c"]), "each record once");
    server.faults.fail_next("GetObject", 5, S3ErrorCode::InternalError);
    let (code, said, delivered) = run("failing");
    assert_eq!(code, Some(1), "{said}");
    assert!(said.contains("reading object s3://arc/in/a.ndjson (5 tries)"), "{said}");
    assert_eq!(delivered, expected(&["b", "c"]));
    server.faults.fail_next("GetObject", 1, S3ErrorCode::AccessDenied);
    let (code, said, delivered) = run("refused");
    assert_eq!(code, Some(1), "{said}");
    assert!(said.contains("reading object s3://arc/in/a.ndjson:"), "{said}");
    assert!(!said.contains("trying again"), "{said}");
    assert_eq!(delivered, expected(&["b", "c"]));
    server.faults.heal();
}

/// A run of the `object_store` source that gave an object up keeps its checkpoint, with the
/// objects it read marked done. An object replaced by another of the same size before the next
/// run is read again, its new lines delivered (the checkpoint is keyed by key, size and ETag; by
/// key and size alone the new object was skipped as done and its records never delivered).
/// Against moto's S3, which lists ETags as S3 does (quoted, as its GETs answer them).
#[test]
fn an_object_replaced_by_one_of_the_same_size_is_read_again() {
    let moto = super::security::Moto::start();
    let put = |key: &str, body: &str| {
        moto.boto3(&format!(
            "s3 = boto3.client('s3', endpoint_url=ENDPOINT, region_name='us-east-1')\n\
             try:\n    s3.create_bucket(Bucket='arc')\nexcept s3.exceptions.BucketAlreadyOwnedByYou:\n    pass\n\
             s3.put_object(Bucket='arc', Key={key:?}, Body={body:?}.encode())"
        ));
    };
    let lines = |name: &str| (0..50).map(|i| format!("{{\"{name}\":\"{i:03}\"}}")).collect::<Vec<String>>();
    put("in/a.ndjson", &(lines("a").join("\n") + "\n"));
    put("in/b.ndjson.gz", "not gzip");
    let source = format!(
        "url = \"s3://arc/in\"\noptions = {{ endpoint = \"{}\", allow_http = true, region = \"us-east-1\", \
         access_key_id = \"AKIAMOTOTEST\", secret_access_key = \"moto-secret-never-logged\" }}",
        moto.endpoint
    );
    let work = tempfile::tempdir().unwrap();
    let (code, said, delivered) = read_with_the_object_store_source(work.path(), "replaced", &source);
    assert_eq!(code, Some(1), "{said}");
    assert!(said.contains("b.ndjson.gz"), "{said}");
    assert_eq!(delivered, lines("a"));
    put("in/a.ndjson", &(lines("A").join("\n") + "\n"));
    let (code, said, delivered) = read_with_the_object_store_source(work.path(), "replaced", &source);
    assert_eq!(code, Some(1), "{said}");
    let mut expected = [lines("A"), lines("a")].concat();
    expected.sort();
    assert_eq!(delivered, expected, "the new object's lines delivered once: {said}");
    // A checkpoint saved before ETags were part of its keys still counts: the object it marks
    // done is not read again.
    let checkpoint = work.path().join("data/replaced/archive/offsets.json");
    let saved: serde_json::Value = serde_json::from_slice(&std::fs::read(&checkpoint).unwrap()).unwrap();
    let key = saved.as_object().unwrap().keys().find(|k| k.starts_with("in/a.ndjson\t")).unwrap().clone();
    assert_eq!(key.split('\t').count(), 3, "key, size and ETag: {key}");
    let legacy = key.rsplit_once('\t').unwrap().0.to_string();
    std::fs::write(&checkpoint, serde_json::json!({ legacy: "done" }).to_string()).unwrap();
    let (code, said, again) = read_with_the_object_store_source(work.path(), "replaced", &source);
    assert_eq!(code, Some(1), "{said}");
    assert_eq!(again, delivered, "nothing read again: {said}");
}

/// `sluice run --workers 1` (warnings shown) of a pipeline `name` whose `object_store` source reads
/// `source` (the store's `url` and `options` lines) into NDJSON objects under `work/<name>`: the
/// exit code, what it said on stderr, and the lines delivered, sorted.
fn read_with_the_object_store_source(work: &Path, name: &str, source: &str) -> (Option<i32>, String, Vec<String>) {
    let out = work.join(name);
    let pipeline = work.join(format!("{name}.toml"));
    std::fs::write(
        &pipeline,
        format!(
            "[pipeline]\nname = \"{name}\"\n[sources.archive]\ntype = \"object_store\"\n{source}\n\
             [sinks.local]\ntype = \"object_store\"\ninputs = [\"archive\"]\nurl = \"file://{}\"\nformat = \"ndjson\"\n",
            out.display()
        ),
    )
    .unwrap();
    let output =
        sluice().args(["run", "--quiet", "--workers", "1"]).arg(&pipeline).env("SLUICE_LOG", "warn").output().unwrap();
    let mut delivered = all_lines(&folder_objects(&out));
    delivered.sort();
    (output.status.code(), String::from_utf8_lossy(&output.stderr).into_owned(), delivered)
}

/// A TCP proxy to `upstream` that cuts the first `cuts` connections whose answers pass `after`
/// bytes, in the middle of the answer (a connection lost mid-object); its address.
fn cutting_proxy(upstream: SocketAddr, after: usize, cuts: u64) -> SocketAddr {
    use std::io::{Read as _, Write as _};
    use std::net::{Shutdown, TcpListener, TcpStream};
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap();
    let left = Arc::new(AtomicU64::new(cuts));
    std::thread::spawn(move || {
        for client in listener.incoming().flatten() {
            let Ok(server) = TcpStream::connect(upstream) else { continue };
            let (mut asked, mut forward) = (client.try_clone().unwrap(), server.try_clone().unwrap());
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut asked, &mut forward);
                let _ = forward.shutdown(Shutdown::Write);
            });
            let left = Arc::clone(&left);
            std::thread::spawn(move || {
                let (mut server, mut client) = (server, client);
                let (mut buffer, mut sent) = (vec![0u8; 16 * 1024], 0);
                loop {
                    let n = match server.read(&mut buffer) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => n,
                    };
                    if sent + n > after
                        && left.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |l| l.checked_sub(1)).is_ok()
                    {
                        let _ = client.write_all(&buffer[..after - sent]);
                        let _ = client.shutdown(Shutdown::Both);
                        let _ = server.shutdown(Shutdown::Both);
                        return;
                    }
                    if client.write_all(&buffer[..n]).is_err() {
                        break;
                    }
                    sent += n;
                }
                let _ = client.shutdown(Shutdown::Write);
            });
        }
    });
    address
}

/// A connection lost in the middle of an object: the object_store source opens it again at its
/// next unread line (a ranged GET of a plain object; a gzip object decompressed again and skipped
/// to it) and every line is delivered exactly once.
#[test]
fn the_object_store_source_resumes_an_object_whose_connection_was_lost() {
    use std::io::Write as _;
    let root = tempfile::tempdir().unwrap();
    // Lines that compress badly, so the gzip object too is far larger than the cut.
    let line = |object: &str, i: u64| {
        format!("{{\"{object}\":{i},\"pad\":\"{:016x}\"}}", i.wrapping_mul(0x9E37_79B9_7F4A_7C15))
    };
    let lines = |object: &str| (0..30_000).map(|i| line(object, i)).collect::<Vec<String>>();
    std::fs::create_dir_all(root.path().join("arc/plain")).unwrap();
    std::fs::write(root.path().join("arc/plain/big.ndjson"), lines("plain").join("\n") + "\n").unwrap();
    std::fs::create_dir_all(root.path().join("arc/gzip")).unwrap();
    let mut gzip = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gzip.write_all((lines("gzip").join("\n") + "\n").as_bytes()).unwrap();
    let compressed = gzip.finish().unwrap();
    assert!(compressed.len() > 300_000, "{}", compressed.len());
    std::fs::write(root.path().join("arc/gzip/big.ndjson.gz"), compressed).unwrap();
    let server = S3Server::start(root.path());
    let work = tempfile::tempdir().unwrap();
    for folder in ["plain", "gzip"] {
        let proxy = cutting_proxy(server.addr, 200_000, 1);
        let source = server
            .sink_toml("arc", SECRET_KEY)
            .replace("s3://arc/archive", &format!("s3://arc/{folder}"))
            .replace(&server.addr.to_string(), &proxy.to_string());
        let (code, said, delivered) = read_with_the_object_store_source(work.path(), folder, &source);
        assert_eq!(code, Some(0), "{folder}: {said}");
        assert!(said.contains("reading the object failed; trying again in 500 ms from offset"), "{folder}: {said}");
        let mut expected = lines(folder);
        expected.sort();
        assert_eq!(delivered.len(), expected.len(), "{folder}: each line once");
        assert_eq!(delivered, expected, "{folder}");
    }
}

/// A large object read over a link that drops now and then: six connections cut, each after
/// 1.5 MB of the answer. Each try got on with the object (1 MiB or more read), so the count of
/// tries starts over and the object is read to its end, every line once (five tries in all gave it
/// up). A store that fails at once each time is still given up after five (the test above).
#[test]
fn the_object_store_source_reads_a_large_object_whose_connection_drops_now_and_then() {
    let root = tempfile::tempdir().unwrap();
    let lines: Vec<String> = (0..200_000).map(|i| format!("{{\"n\":{i},\"pad\":\"{:032x}\"}}", i * 7919)).collect();
    std::fs::create_dir_all(root.path().join("arc/big")).unwrap();
    std::fs::write(root.path().join("arc/big/big.ndjson"), lines.join("\n") + "\n").unwrap();
    let server = S3Server::start(root.path());
    let proxy = cutting_proxy(server.addr, 1_500_000, 6);
    let source = server
        .sink_toml("arc", SECRET_KEY)
        .replace("s3://arc/archive", "s3://arc/big")
        .replace(&server.addr.to_string(), &proxy.to_string());
    let work = tempfile::tempdir().unwrap();
    let (code, said, delivered) = read_with_the_object_store_source(work.path(), "big", &source);
    assert_eq!(code, Some(0), "{said}");
    // (The error log writes five lines of one code a minute: the later tries are counted, not said.)
    assert!(said.contains("reading the object failed; trying again in 500 ms"), "{said}");
    let mut expected = lines;
    expected.sort();
    assert_eq!(delivered.len(), expected.len(), "each line once");
    assert_eq!(delivered, expected);
}

/// A ZIP archive as Python's `zipfile` writes one of several files (a Windows export: a file
/// without its last newline, one with a byte order mark and CRLF lines, an empty one, stored and
/// deflated entries), read by the `object_store` source: every line of every file is one record,
/// as it was in its file; no two files' lines run together. Beside it, a gzip object whose name
/// does not say so (a Firehose `file_extension = ".json"`) is read by its first bytes, and a
/// bzip2 object is given up and named, never delivered as text.
#[test]
fn the_object_store_source_reads_archives_and_objects_by_their_content() {
    let root = tempfile::tempdir().unwrap();
    let archive = root.path().join("export/logs.zip");
    std::fs::create_dir_all(archive.parent().unwrap()).unwrap();
    let made = std::process::Command::new(python())
        .arg("-c")
        .arg(
            "import sys, zipfile\n\
             with zipfile.ZipFile(sys.argv[1], 'w') as z:\n\
             \x20   z.writestr('a.ndjson', '{\"a\":1}\\n{\"a\":2}', zipfile.ZIP_DEFLATED)\n\
             \x20   z.writestr('b.ndjson', '\\ufeff{\"b\":1}\\r\\n{\"b\":2}\\r\\n', zipfile.ZIP_STORED)\n\
             \x20   z.writestr('empty.ndjson', '', zipfile.ZIP_DEFLATED)\n\
             \x20   z.writestr('c.ndjson', '{\"c\":1}', zipfile.ZIP_STORED)\n",
        )
        .arg(&archive)
        .output()
        .unwrap();
    assert!(made.status.success(), "{}", String::from_utf8_lossy(&made.stderr));
    let mut gzip = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    std::io::Write::write_all(&mut gzip, b"{\"f\":1}\n").unwrap();
    std::fs::write(root.path().join("export/stream-1-2026-12-07.json"), gzip.finish().unwrap()).unwrap();
    std::fs::write(root.path().join("export/old.log.bz2"), b"BZh91AY&SY\x00\x01 not text").unwrap();
    let work = tempfile::tempdir().unwrap();
    let source = format!("url = \"file://{}\"", root.path().join("export").display());
    let (code, said, delivered) = read_with_the_object_store_source(work.path(), "zip", &source);
    assert_eq!(code, Some(1), "{said}");
    assert!(said.contains("old.log.bz2") && said.contains("it is bzip2-compressed"), "{said}");
    let expected = ["{\"a\":1}", "{\"a\":2}", "{\"b\":1}", "{\"b\":2}", "{\"c\":1}", "{\"f\":1}"];
    assert_eq!(delivered, expected, "{said}");
}

//! `type = "object_store"`: stores objects in any store `object_store` speaks: `s3://`, `gs://`,
//! `az://`, `http(s)://`, `file://` and `memory://`.
//!
//! Options (`options = { ... }`) use object_store's own names (`region`, `endpoint`,
//! `access_key_id`, `secret_access_key`, `virtual_hosted_style_request`, `allow_http`, …), and the
//! builders read the usual environment variables (`AWS_*`, `GOOGLE_*`, `AZURE_*`) first.
//! `tls = { ca = "minio-ca.pem" }` trusts a private CA's certificates besides the system's.
//! `encryption = { sse = "aws:kms", kms_key_id = "..." }` (or `"aws:kms:dsse"`, or
//! `{ sse = "AES256" }`) asks S3 for server-side encryption: object_store sends the headers on every
//! PUT and on every multipart upload's creation; it is refused for other stores.
//! Guarantees: an object is reported delivered only after the store acknowledged the PUT (local
//! files are fsynced before that); failures are classified by error variant, never by message:
//! authentication, permission, missing bucket and bad path are permanent, the rest retryable.
//! `file://` paths may be relative (to the current directory); objects there are staged beside the
//! folder (inside it when it is a mount point of its own) and renamed into place
//! (`super::staged_files`), so a listing never sees a partial one.
//! Multipart uploads a killed run left open on S3, GCS or Azure are aborted at the next start
//! (`super::upload_journal`). `memory://NAME/...` stores live in this process and are shared by
//! name (tests, dry runs).

use std::collections::{BTreeMap, HashMap};
use std::str::FromStr;
use std::sync::{Arc, Mutex, OnceLock};

use futures::future::BoxFuture;
use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
use object_store::azure::{AzureConfigKey, MicrosoftAzureBuilder};
use object_store::gcp::{GoogleCloudStorageBuilder, GoogleConfigKey};
use object_store::http::HttpBuilder;
use object_store::local::LocalFileSystem;
use object_store::memory::InMemory;
use object_store::multipart::{MultipartStore, PartId};
use object_store::path::Path;
use object_store::{
    Certificate, ClientConfigKey, ClientOptions, MultipartId, MultipartUpload, ObjectStore, ObjectStoreExt,
    PutMultipartOptions, PutOptions, PutPayload, RetryConfig,
};
use serde::Deserialize;
use sluice_engine::config::{ConnectorConfig, Diagnostic, Problems};
use sluice_engine::contract::{
    DeliveryError, DestinationKind, KeyLimits, PartSink, PartUpload, Payload, Sink, UploadStart,
};
use sluice_engine::metrics::SinkMeter;

use super::renewing_store::{Rebuild, RenewingStore, StoreClients};
use super::staged_files::{STAGING_FOLDER, StagedFiles};
use super::upload_journal::UploadJournal;
use crate::tls::StoreRoots;

/// The sink's own keys.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ObjectStoreConfig {
    /// Where objects go: `s3://bucket/prefix`, `file://./out`, `memory://name/prefix`, …
    url: String,
    /// object_store options for the URL's scheme.
    #[serde(default)]
    options: BTreeMap<String, toml::Value>,
    /// Check the credentials before the run (a HEAD under the prefix); off for write-only roles.
    #[serde(default = "default_true")]
    healthcheck: bool,
    /// S3 server-side encryption.
    encryption: Option<SseConfig>,
}

/// `encryption = { sse, kms_key_id }` of an S3 sink.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SseConfig {
    /// `AES256` (SSE-S3), `aws:kms` (SSE-KMS) or `aws:kms:dsse`.
    sse: String,
    /// The KMS key for `aws:kms` (default: the bucket's or the account's default key).
    kms_key_id: Option<String>,
}

/// The key S3 encrypts with under SSE-KMS when none is named: the account's AWS managed key.
const AWS_MANAGED_S3_KEY: &str = "alias/aws/s3";

impl SseConfig {
    /// The KMS key DescribeDeliveryStream names: the one given; for SSE-KMS without one, S3's AWS
    /// managed key (`alias/aws/s3`: the objects are KMS-encrypted, and describing them as not
    /// encrypted would mislead an audit); none for SSE-S3 (`AES256`, S3's own keys, which
    /// Firehose's `EncryptionConfiguration` cannot express).
    fn described_key(&self) -> Option<String> {
        match (&self.kms_key_id, self.sse.as_str()) {
            (Some(key), _) => Some(key.clone()),
            (None, "aws:kms" | "aws:kms:dsse") => Some(AWS_MANAGED_S3_KEY.into()),
            (None, _) => None,
        }
    }

    /// The object_store options these ask for, or (message, hint).
    fn options(&self, url: &str) -> Result<Vec<(String, String)>, (String, String)> {
        if !(url.starts_with("s3://") || url.starts_with("s3a://")) {
            return Err((
                format!("`encryption` is S3 server-side encryption, and `{url}` is not an s3:// URL"),
                "leave it out for other stores (they encrypt at rest by their own settings)".into(),
            ));
        }
        if !["AES256", "aws:kms", "aws:kms:dsse"].contains(&self.sse.as_str()) {
            return Err((
                format!("unknown server-side encryption `{}`", self.sse),
                "use sse = \"aws:kms\" (with kms_key_id), \"aws:kms:dsse\" or \"AES256\"".into(),
            ));
        }
        let mut options = vec![("aws_server_side_encryption".to_string(), self.sse.clone())];
        match &self.kms_key_id {
            Some(key) if self.sse == "AES256" => {
                return Err((
                    format!("`kms_key_id = \"{key}\"` needs sse = \"aws:kms\""),
                    "AES256 (SSE-S3) uses S3's own keys".into(),
                ));
            }
            Some(key) => options.push(("aws_sse_kms_key_id".to_string(), key.clone())),
            None => {}
        }
        Ok(options)
    }
}

fn default_true() -> bool {
    true
}

/// A configured object-store sink.
pub struct ObjectStoreSink {
    /// The URL as shown (secrets masked).
    url: String,
    store: Arc<dyn ObjectStore>,
    /// The same store's numbered-part API, where it has one (parts can then be retried).
    parts: Option<Arc<dyn MultipartStore>>,
    base: Path,
    /// `file://`: objects staged and renamed into place.
    local: Option<StagedFiles>,
    /// Remote multipart uploads started and not yet ended (aborted at the next start if left open).
    journal: Option<Arc<UploadJournal>>,
    /// Error-code prefix, `S3` for s3:// (Firehose's `S3.AccessDenied` style).
    code_prefix: &'static str,
    /// Whether `prepare` checks that the store takes our credentials (remote stores).
    healthcheck: bool,
    /// Fetches credentials the way the store will (S3, GCS, Azure): `prepare` fails when none can
    /// be found at all, instead of every delivery failing for minutes.
    credentials: Option<CredentialCheck>,
    /// An `http(s)://` store (a WebDAV server): it takes an object in one PUT only (object_store
    /// has no multipart upload for it) and is not told the object's `Content-Encoding`, which a
    /// WebDAV server may refuse on a PUT (WsgiDAV answers 501); the extension says it.
    web_server: bool,
    /// Where its store counts a refused renewal of its `tls.ca` (nowhere without one).
    tls_metrics: crate::tls::TlsMetrics,
    /// `encryption.kms_key_id` (SSE-KMS), for DescribeDeliveryStream.
    kms_key: Option<String>,
}

/// A store's own way of finding credentials, run once at start.
type CredentialCheck = Arc<dyn Fn() -> BoxFuture<'static, Result<(), NoCredentials>> + Send + Sync>;

/// Why a store has no credentials.
#[derive(Debug)]
enum NoCredentials {
    /// The selected AWS profile cannot give them: its own words say what to do.
    Profile(String),
    /// None of the places the store looks gave any.
    NoneFound(String),
}

/// The check for a store whose credentials come from `provider`.
fn credential_check<C: Send + Sync + 'static>(
    provider: Arc<dyn object_store::CredentialProvider<Credential = C>>,
) -> CredentialCheck {
    Arc::new(move || {
        let provider = Arc::clone(&provider);
        Box::pin(async move {
            provider.get_credential().await.map(|_| ()).map_err(|e| {
                let why = crate::aws_profile::credential_error(&e);
                if crate::aws_profile::is_profile_error(&e) {
                    NoCredentials::Profile(why)
                } else {
                    NoCredentials::NoneFound(why)
                }
            })
        })
    })
}

/// `builder` with what the AWS shared files' profile gives ([`crate::aws_profile`]), where neither
/// the store's `options` nor the environment set it: its region, and its credentials unless keys
/// were given (the SDKs' order: given keys, the environment's, the profile's, then web identity,
/// ECS, EKS Pod Identity and the instance profile, which object_store asks).
fn with_shared_profile(builder: AmazonS3Builder) -> AmazonS3Builder {
    with_profile(builder, crate::aws_profile::SharedProfile::from_process())
}

fn with_profile(builder: AmazonS3Builder, profile: crate::aws_profile::SharedProfile) -> AmazonS3Builder {
    let unset = |key| builder.get_config_value(&key).is_none_or(|v| v.is_empty());
    let (region_unset, keys_unset) = (unset(AmazonS3ConfigKey::Region), unset(AmazonS3ConfigKey::AccessKeyId));
    let signs = builder.get_config_value(&AmazonS3ConfigKey::SkipSignature).is_none_or(|v| v != "true");
    let mut builder = builder;
    if let Some(region) = profile.region.filter(|_| region_unset) {
        builder = builder.with_region(region);
    }
    match profile.credentials {
        Some(provider) if keys_unset && signs => builder.with_credentials(provider),
        _ => builder,
    }
}

/// The process-wide `memory://NAME` stores.
pub fn memory_store(name: &str) -> Arc<InMemory> {
    static STORES: OnceLock<Mutex<HashMap<String, Arc<InMemory>>>> = OnceLock::new();
    let stores = STORES.get_or_init(|| Mutex::new(HashMap::new()));
    match stores.lock() {
        Ok(mut map) => Arc::clone(map.entry(name.to_string()).or_insert_with(|| Arc::new(InMemory::new()))),
        Err(_) => Arc::new(InMemory::new()),
    }
}

fn option_text(v: &toml::Value) -> Option<String> {
    match v {
        toml::Value::String(s) => Some(s.clone()),
        toml::Value::Boolean(b) => Some(b.to_string()),
        toml::Value::Integer(i) => Some(i.to_string()),
        _ => None,
    }
}

/// `$builder` (a cloud store's, its keys of type `$key`, its environment variables `$prefix…`)
/// trusting `$roots` besides the system's CAs, the client options written kept: [`client_trusting`].
macro_rules! trusting {
    ($builder:expr, $key:ident, $prefix:literal, $roots:expr, $options:expr) => {{
        let builder = $builder;
        if $roots.is_empty() {
            builder
        } else {
            let client_key = |k: &str| match $key::from_str(k) {
                Ok($key::Client(key)) => Some(key),
                _ => None,
            };
            let read = |key| builder.get_config_value(&$key::Client(key));
            let client = client_trusting($roots, $prefix, $options, client_key, read);
            builder.with_client_options(client)
        }
    }};
}

/// The client options written for a store (the client keys set by its environment variables,
/// `env_prefix…`, and by `options`), read back from its builder through `value`, with `roots`
/// trusted besides the system's CAs: object_store takes roots only in a whole `ClientOptions`,
/// which replaces the one its builder holds.
fn client_trusting(
    roots: &[Certificate],
    env_prefix: &str,
    options: &[(String, String)],
    client_key: impl Fn(&str) -> Option<ClientConfigKey>,
    value: impl Fn(ClientConfigKey) -> Option<String>,
) -> ClientOptions {
    // (`vars_os`, as the builders' `from_env`: `vars` panics on a variable that is not UTF-8.)
    let from_env = std::env::vars_os()
        .filter_map(|(k, _)| k.to_str().filter(|k| k.starts_with(env_prefix)).map(str::to_ascii_lowercase));
    let written = from_env.chain(options.iter().map(|(k, _)| k.clone())).filter_map(|k| client_key(&k));
    let mut client = ClientOptions::new();
    for key in written {
        if let Some(v) = value(key) {
            client = client.with_config(key, v);
        }
    }
    for root in roots {
        client = client.with_root_certificate(root.clone());
    }
    client
}

/// The error code a store's GET answer names when the bucket (container) itself is missing, and
/// what the store calls it; `None` for S3 (its HeadBucket tells) and local stores.
fn missing_bucket_code(code_prefix: &str) -> Option<(&'static str, &'static str)> {
    match code_prefix {
        "Azure" => Some(("ContainerNotFound", "container")),
        "GCS" => Some(("NoSuchBucket", "bucket")),
        _ => None,
    }
}

/// The error code of a store's refusal `error`: the store's own (`S3.NoSuchBucket`), read from the
/// `<Code>` of its XML error body where object_store passes the body on (S3, GCS and Azure answer
/// so; object_store gives no other way to it), else [`store_error_code`]'s.
pub(crate) fn store_answer_code(code_prefix: &str, error: &object_store::Error) -> String {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = cause {
        let text = e.to_string();
        let answered = text.split_once("<Code>").and_then(|(_, rest)| rest.split_once("</Code>")).map(|(code, _)| code);
        if let Some(code) = answered.filter(|c| !c.is_empty() && c.bytes().all(|b| b.is_ascii_alphanumeric())) {
            return format!("{code_prefix}.{code}");
        }
        cause = e.source();
    }
    store_error_code(code_prefix, error).1
}

/// No retries inside object_store: the engine's retry policy is the one that counts.
fn no_client_retries() -> RetryConfig {
    RetryConfig { max_retries: 0, ..RetryConfig::default() }
}

/// Builds an object-store sink from `[sinks.<name>]`.
pub fn configure(mut config: ConnectorConfig) -> Result<Arc<dyn Sink>, Problems> {
    let spans = StoreKeySpans::of(&config.table);
    let encryption_span = config.table.value_span("encryption").unwrap_or(spans.url.clone());
    let mut problems = Problems::default();
    let roots = crate::tls::take_store_roots(&mut config.table, &config.base_dir, &mut problems).unwrap_or_default();
    let Some(c) = config.table.deserialize::<ObjectStoreConfig>(&mut problems) else { return Err(problems) };
    let sse = match &c.encryption {
        // Without a URL (its absence reported) there is no store to check the encryption against.
        Some(_) if problems.said("url") => Some(Vec::new()),
        Some(sse) => problems.take(
            sse.options(&c.url).map_err(|(message, hint)| Diagnostic::new(encryption_span, message).with_hint(hint)),
        ),
        None => Some(Vec::new()),
    };
    let option_problems = ObjectStoreSink::option_problems(&c.url, &c.options);
    for problem in &option_problems {
        problems.push(problem.at_its_key(&spans));
    }
    let sink = sse.filter(|_| option_problems.is_empty()).and_then(|sse| {
        problems
            .take(ObjectStoreSink::from_config_with(&c.url, &c.options, sse, &roots).map_err(|e| e.at_its_key(&spans)))
    });
    let mut sink = problems.finish(sink)?;
    sink.kms_key = c.encryption.as_ref().and_then(SseConfig::described_key);
    let sink = sink.owned_by(&config.pipeline, &config.name, &config.data_dir);
    Ok(Arc::new(if c.healthcheck { sink } else { sink.without_healthcheck() }))
}

/// `backup_store = "s3://bucket/prefix"` or `{ url = "...", options = {...}, tls = { ca } }` of a sink that sends
/// requests (Firehose's required S3Configuration): the object store its error output goes to.
/// Read with [`url_or_table`].
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackupStore {
    url: String,
    #[serde(default)]
    options: BTreeMap<String, toml::Value>,
    #[serde(default)]
    tls: Option<StoreTls>,
}

impl From<String> for BackupStore {
    fn from(url: String) -> Self {
        BackupStore { url, options: BTreeMap::new(), tls: None }
    }
}

/// `tls = { ca = "..." }` of a store written as a table inside another key (`backup_store`, a
/// `postgres` sink's `staging`): the CAs its client trusts besides the system's.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct StoreTls {
    /// A PEM file of CA certificates, relative to the pipeline file.
    pub ca: String,
}

/// Reads a connector's optional store key (`#[serde(default, deserialize_with = "url_or_table")]`)
/// written as its URL alone (`"s3://bucket/prefix"`, as the engine's `error_log` and `audit_log`
/// may be) or as its table (`{ url = "…", options = {…} }`, read as `T`, whose unknown keys are
/// refused by name).
pub fn url_or_table<'de, D, T>(deserializer: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de> + From<String>,
{
    struct Written<T>(std::marker::PhantomData<T>);
    impl<'de, T: Deserialize<'de> + From<String>> serde::de::Visitor<'de> for Written<T> {
        type Value = T;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a URL or a table")
        }
        fn visit_str<E: serde::de::Error>(self, url: &str) -> Result<T, E> {
            Ok(T::from(url.to_string()))
        }
        fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<T, A::Error> {
            T::deserialize(serde::de::value::MapAccessDeserializer::new(map))
        }
    }
    deserializer.deserialize_any(Written(std::marker::PhantomData)).map(Some)
}

/// What a sink's backup store needs to know of the sink, taken from its config before its keys are
/// read.
#[derive(Debug, Clone)]
pub struct BackupOwner {
    sink_span: std::ops::Range<usize>,
    store_span: std::ops::Range<usize>,
    pipeline: String,
    name: String,
    data_dir: std::path::PathBuf,
    base_dir: std::path::PathBuf,
}

impl BackupOwner {
    /// The sink `config` describes.
    pub fn of(config: &ConnectorConfig) -> Self {
        let sink_span = config.table.span.clone();
        BackupOwner {
            store_span: config.table.value_span("backup_store").unwrap_or(sink_span.clone()),
            sink_span,
            pipeline: config.pipeline.clone(),
            name: config.name.clone(),
            data_dir: config.data_dir.clone(),
            base_dir: config.base_dir.clone(),
        }
    }

    /// Its store, which a sink of type `type_name` must have: its absence is an error at the sink's
    /// table, a bad URL or option one at `backup_store`. A `backup_store` whose problem `found`
    /// holds already (written wrong, or misspelt) gives an `Err` adding no problem.
    pub fn required(
        &self,
        store: Option<BackupStore>,
        type_name: &str,
        found: &Problems,
    ) -> Result<Arc<dyn Sink>, Problems> {
        let Some(store) = store else {
            if found.said("backup_store") {
                return Err(Problems::default());
            }
            return Err(Diagnostic::new(
                self.sink_span.clone(),
                format!("a sink of type `{type_name}` needs `backup_store`"),
            )
            .with_hint(
                "where records the destination does not take are kept, as Firehose's S3Configuration: \
                     backup_store = \"s3://bucket/prefix\" (or \"file://./failed\", or a table { url, options })",
            )
            .of_the_table()
            .into());
        };
        let sink = ObjectStoreSink::from_nested(&store.url, &store.options, store.tls.as_ref(), &self.base_dir)
            .map_err(|e| Diagnostic::new(self.store_span.clone(), format!("backup_store: {e}")).with_hint(e.hint()))?
            .owned_by(&self.pipeline, &format!("{}-backup", self.name), &self.data_dir);
        Ok(Arc::new(sink))
    }
}

/// What is wrong with a store's URL or options as written in a pipeline file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreConfigError {
    /// The URL cannot be read (no scheme, or a relative path without a current folder).
    #[error("bad url `{url}`: {reason}")]
    BadUrl {
        /// The URL as written.
        url: String,
        /// Why it cannot be read.
        reason: String,
    },
    /// A scheme no store speaks.
    #[error("unsupported object store scheme `{scheme}://`")]
    UnsupportedScheme {
        /// The scheme as written.
        scheme: String,
    },
    /// An option the scheme's store does not know.
    #[error("unknown option `{key}` for {scheme}:// stores")]
    UnknownOption {
        /// The option's name.
        key: String,
        /// The URL's scheme.
        scheme: String,
        /// The option it looks like a typo of, if any.
        near: Option<&'static str>,
    },
    /// An option whose value is no string, boolean or integer.
    #[error("option `{key}` must be a string, boolean or integer")]
    OptionType {
        /// The option's name.
        key: String,
    },
    /// The store's builder refused the URL with its options.
    #[error("cannot use `{url}`: {cause}")]
    Refused {
        /// The URL as written.
        url: String,
        /// What the builder said.
        cause: String,
    },
    /// A `tls.ca` file that cannot be used.
    #[error("`tls.ca` {why}")]
    CaFile {
        /// Why (the file said as written).
        why: String,
    },
    /// A `tls` table for a store that makes no requests.
    #[error("{scheme}:// stores make no requests: `tls` is not used")]
    TlsUnused {
        /// The URL's scheme.
        scheme: String,
    },
}

/// Where a store's keys are written in its table, for [`StoreConfigError::at_its_key`].
#[derive(Debug, Clone)]
pub struct StoreKeySpans {
    /// The `url` value (the table when it is absent).
    pub url: std::ops::Range<usize>,
    /// The `options` key (the url's when absent).
    pub options: std::ops::Range<usize>,
    /// Each key written in `options`.
    pub option_keys: Vec<(String, std::ops::Range<usize>)>,
    /// The `tls` table (the url's when absent).
    pub tls: std::ops::Range<usize>,
}

impl StoreKeySpans {
    /// The spans in `table`, read before its keys are taken.
    pub fn of(table: &sluice_engine::config::Section) -> Self {
        let url = table.value_span("url").unwrap_or(table.span.clone());
        StoreKeySpans {
            options: table.key_span("options").unwrap_or(url.clone()),
            option_keys: table.member_key_spans("options"),
            tls: table.value_span("tls").unwrap_or(url.clone()),
            url,
        }
    }
}

/// Options every store but `file://` and `memory://` takes (object_store's client options).
const CLIENT_OPTIONS: &[&str] = &[
    "allow_http",
    "allow_invalid_certificates",
    "connect_timeout",
    "default_content_type",
    "http1_only",
    "http2_only",
    "pool_idle_timeout",
    "pool_max_idle_per_host",
    "proxy_url",
    "proxy_ca_certificate",
    "proxy_excludes",
    "read_timeout",
    "timeout",
    "user_agent",
];

/// The names an unknown option is compared with, by scheme: object_store's short names (a test
/// checks that the scheme's store takes each; one it adds later is only not suggested).
fn option_names(scheme: &str) -> &'static [&'static str] {
    match scheme {
        "s3" | "s3a" => &[
            "access_key_id",
            "secret_access_key",
            "session_token",
            "region",
            "default_region",
            "bucket",
            "endpoint",
            "virtual_hosted_style_request",
            "skip_signature",
            "imdsv1_fallback",
            "metadata_endpoint",
            "unsigned_payload",
            "checksum_algorithm",
            "role_arn",
            "role_session_name",
            "web_identity_token_file",
            "endpoint_url_sts",
            "request_payer",
            "s3_express",
            "conditional_put",
            "copy_if_not_exists",
            "disable_tagging",
            "server_side_encryption",
            "sse_kms_key_id",
            "sse_bucket_key_enabled",
        ],
        "gs" => &[
            "service_account",
            "service_account_path",
            "service_account_key",
            "bucket",
            "base_url",
            "application_credentials",
            "bearer_token",
            "skip_signature",
        ],
        "az" | "abfs" | "abfss" | "azure" => &[
            "account_name",
            "account_key",
            "client_id",
            "client_secret",
            "tenant_id",
            "authority_host",
            "sas_key",
            "token",
            "use_emulator",
            "endpoint",
            "msi_endpoint",
            "object_id",
            "msi_resource_id",
            "federated_token_file",
            "use_fabric_endpoint",
            "use_azure_cli",
            "skip_signature",
            "container_name",
            "disable_tagging",
        ],
        _ => &[],
    }
}

/// The option of `scheme`'s store that `key` looks like a typo of.
fn near_option(scheme: &str, key: &str) -> Option<&'static str> {
    if matches!(scheme, "file" | "memory") {
        return None;
    }
    sluice_engine::config::did_you_mean(key, option_names(scheme).iter().chain(CLIENT_OPTIONS).copied())
}

impl StoreConfigError {
    /// How to put it right.
    pub fn hint(&self) -> String {
        match self {
            StoreConfigError::BadUrl { .. } => "e.g. s3://bucket/prefix, file://./out, memory://test".into(),
            StoreConfigError::UnsupportedScheme { .. } => {
                "use s3://, gs://, az://, http(s)://, file:// or memory://".into()
            }
            StoreConfigError::UnknownOption { near: Some(near), .. } => {
                format!("did you mean `{near}`? (object_store's option names)")
            }
            StoreConfigError::UnknownOption { scheme, .. } if matches!(scheme.as_str(), "file" | "memory") => {
                format!("{scheme}:// stores take no options")
            }
            StoreConfigError::UnknownOption { .. } => {
                "use object_store's option names, e.g. region, endpoint, access_key_id, allow_http".into()
            }
            StoreConfigError::OptionType { .. } => "e.g. allow_http = true, region = \"eu-west-1\"".into(),
            StoreConfigError::Refused { .. } => "check the url and options".into(),
            StoreConfigError::CaFile { .. } => crate::tls::STORE_CA_FILE.into(),
            StoreConfigError::TlsUnused { .. } => {
                "`tls = { ca }` is for s3://, gs://, az:// and https:// stores behind a certificate of a private CA: remove it"
                    .into()
            }
        }
    }

    /// The problem pointing at `span`.
    pub fn at(&self, span: &std::ops::Range<usize>) -> Diagnostic {
        Diagnostic::new(span.clone(), self.to_string()).with_hint(self.hint())
    }

    /// The problem pointing at what it is about: the url's value, the option's key (else the
    /// `options` key), or `tls`.
    pub fn at_its_key(&self, spans: &StoreKeySpans) -> Diagnostic {
        match self {
            StoreConfigError::TlsUnused { .. } | StoreConfigError::CaFile { .. } => self.at(&spans.tls),
            StoreConfigError::UnknownOption { key, .. } | StoreConfigError::OptionType { key } => {
                let option = spans.option_keys.iter().find(|(name, _)| name == key).map(|(_, span)| span);
                self.at(option.unwrap_or(&spans.options))
            }
            _ => self.at(&spans.url),
        }
    }
}

impl ObjectStoreSink {
    /// Builds the store for `url` with `options` as written in a pipeline file; or what is wrong.
    pub fn from_config(url: &str, options: &BTreeMap<String, toml::Value>) -> Result<Self, StoreConfigError> {
        Self::from_config_with(url, options, Vec::new(), &StoreRoots::default())
    }

    /// [`ObjectStoreSink::from_config`] with `extra` options (already checked) after the written
    /// ones, its client trusting `roots` besides the system's CAs (`tls = { ca }`), and built again
    /// when their file is renewed.
    pub fn from_config_with(
        url: &str,
        options: &BTreeMap<String, toml::Value>,
        extra: Vec<(String, String)>,
        roots: &StoreRoots,
    ) -> Result<Self, StoreConfigError> {
        let mut texts = Vec::new();
        for (key, value) in options {
            let Some(text) = option_text(value) else {
                return Err(StoreConfigError::OptionType { key: key.clone() });
            };
            texts.push((key.clone(), text));
        }
        texts.extend(extra);
        ObjectStoreSink::from_url_trusting(url, &texts, roots)
    }

    /// Every problem of `options` for `url`'s scheme at once (values that are no string, boolean or
    /// integer; names its store does not take), so a pipeline file's mistakes are all said in one
    /// pass; building the store says the first only. Empty for an unknown scheme (said by the build).
    pub fn option_problems(url: &str, options: &BTreeMap<String, toml::Value>) -> Vec<StoreConfigError> {
        let scheme = url.split_once("://").map_or("", |(scheme, _)| scheme);
        let known = |key: &str| match scheme {
            "file" | "memory" => Some(false),
            "s3" | "s3a" => Some(AmazonS3ConfigKey::from_str(key).is_ok()),
            "gs" => Some(GoogleConfigKey::from_str(key).is_ok()),
            "az" | "abfs" | "abfss" | "azure" => Some(AzureConfigKey::from_str(key).is_ok()),
            "http" | "https" => Some(ClientConfigKey::from_str(key).is_ok()),
            _ => None,
        };
        let mut problems = Vec::new();
        for (key, value) in options {
            if option_text(value).is_none() {
                problems.push(StoreConfigError::OptionType { key: key.clone() });
            } else if known(key) == Some(false) {
                problems.push(StoreConfigError::UnknownOption {
                    key: key.clone(),
                    scheme: scheme.to_string(),
                    near: near_option(scheme, key),
                });
            }
        }
        problems
    }

    /// The store of a table nested in a connector's keys (`backup_store`, `staging`): its `url`,
    /// `options` and `tls` (`ca` relative to `base_dir`).
    pub fn from_nested(
        url: &str,
        options: &BTreeMap<String, toml::Value>,
        tls: Option<&StoreTls>,
        base_dir: &std::path::Path,
    ) -> Result<Self, StoreConfigError> {
        let roots = match tls {
            Some(tls) => crate::tls::store_roots(base_dir, &tls.ca).map_err(|why| StoreConfigError::CaFile { why })?,
            None => StoreRoots::default(),
        };
        Self::from_config_with(url, options, Vec::new(), &roots)
    }

    /// Builds the store for `url`, or says what is wrong.
    pub fn from_url(url: &str, options: &[(String, String)]) -> Result<Self, StoreConfigError> {
        Self::from_url_trusting(url, options, &StoreRoots::default())
    }

    /// [`ObjectStoreSink::from_url`], its client trusting `roots` besides the system's CAs; when
    /// they come from a file, the store is built again with its certificates once it changes
    /// ([`RenewingStore`]).
    fn from_url_trusting(
        url: &str,
        options: &[(String, String)],
        roots: &StoreRoots,
    ) -> Result<Self, StoreConfigError> {
        let mut sink = Self::from_url_with_certificates(url, options, &roots.certificates)?;
        // (`file://` and `memory://` refuse `tls`: only a remote store gets here with a file.)
        if let Some(file) = roots.file.clone() {
            let (url, options) = (url.to_string(), options.to_vec());
            let rebuild: Rebuild = Box::new(move |certificates: &[Certificate]| {
                let built =
                    Self::from_url_with_certificates(&url, &options, certificates).map_err(|e| e.to_string())?;
                Ok(StoreClients { store: built.store, parts: built.parts })
            });
            let clients = StoreClients { store: Arc::clone(&sink.store), parts: sink.parts.clone() };
            let renewing = Arc::new(RenewingStore::new(file, clients, rebuild));
            sink.tls_metrics = renewing.tls_metrics();
            sink.parts = sink.parts.is_some().then(|| Arc::clone(&renewing) as Arc<dyn MultipartStore>);
            sink.store = renewing;
        }
        Ok(sink)
    }

    /// The store for `url`, its client trusting `roots` besides the system's CAs.
    fn from_url_with_certificates(
        url: &str,
        options: &[(String, String)],
        roots: &[Certificate],
    ) -> Result<Self, StoreConfigError> {
        let bad_url = |reason: String| StoreConfigError::BadUrl { url: url.to_string(), reason };
        let Some((scheme, rest)) = url.split_once("://") else {
            return Err(bad_url("no scheme".into()));
        };
        let unknown = |key: &str, scheme: &str| StoreConfigError::UnknownOption {
            key: key.to_string(),
            scheme: scheme.to_string(),
            near: near_option(scheme, key),
        };
        let build_error =
            |e: object_store::Error| StoreConfigError::Refused { url: url.to_string(), cause: e.to_string() };
        let mut parts: Option<Arc<dyn MultipartStore>> = None;
        let mut credentials = None;
        let (store, base, local_dir, code_prefix): (Arc<dyn ObjectStore>, Path, _, _) = match scheme {
            "file" | "memory" if !roots.is_empty() => {
                return Err(StoreConfigError::TlsUnused { scheme: scheme.to_string() });
            }
            "file" => {
                if let Some((k, _)) = options.first() {
                    return Err(unknown(k, scheme));
                }
                let dir = std::path::PathBuf::from(if rest.is_empty() { "." } else { rest });
                let dir = if dir.is_absolute() {
                    dir
                } else {
                    std::env::current_dir().map_err(|e| bad_url(e.to_string()))?.join(dir)
                };
                let dir = normalize(&dir);
                let base =
                    Path::from_filesystem_path(&dir).unwrap_or_else(|_| Path::from(dir.to_string_lossy().as_ref()));
                let store = LocalFileSystem::new().with_fsync(true);
                (Arc::new(store), base, Some(StagedFiles::new(dir, "sink")), "Local")
            }
            "memory" => {
                if let Some((k, _)) = options.first() {
                    return Err(unknown(k, scheme));
                }
                let (name, prefix) = rest.split_once('/').unwrap_or((rest, ""));
                let memory = memory_store(name);
                parts = Some(Arc::clone(&memory) as Arc<dyn MultipartStore>);
                (memory, Path::from(prefix), None, "Memory")
            }
            "s3" | "s3a" => {
                let mut b = AmazonS3Builder::from_env().with_url(url).with_retry(no_client_retries());
                for (k, v) in options {
                    let key = AmazonS3ConfigKey::from_str(k).map_err(|_| unknown(k, scheme))?;
                    b = b.with_config(key, v);
                }
                let b = with_shared_profile(b);
                let b = trusting!(b, AmazonS3ConfigKey, "AWS_", roots, options);
                let anonymous = b.get_config_value(&AmazonS3ConfigKey::SkipSignature).is_some_and(|v| v == "true");
                let s3 = Arc::new(b.build().map_err(build_error)?);
                parts = Some(Arc::clone(&s3) as Arc<dyn MultipartStore>);
                credentials = (!anonymous).then(|| credential_check(Arc::clone(s3.credentials())));
                (s3, url_path(rest), None, "S3")
            }
            "gs" => {
                let mut b = GoogleCloudStorageBuilder::from_env().with_url(url).with_retry(no_client_retries());
                for (k, v) in options {
                    let key = GoogleConfigKey::from_str(k).map_err(|_| unknown(k, scheme))?;
                    b = b.with_config(key, v);
                }
                let b = trusting!(b, GoogleConfigKey, "GOOGLE_", roots, options);
                let anonymous = b.get_config_value(&GoogleConfigKey::SkipSignature).is_some_and(|v| v == "true");
                let gcs = Arc::new(b.build().map_err(build_error)?);
                parts = Some(Arc::clone(&gcs) as Arc<dyn MultipartStore>);
                credentials = (!anonymous).then(|| credential_check(Arc::clone(gcs.credentials())));
                (gcs, url_path(rest), None, "GCS")
            }
            "az" | "abfs" | "abfss" | "azure" => {
                let mut b = MicrosoftAzureBuilder::from_env().with_url(url).with_retry(no_client_retries());
                for (k, v) in options {
                    let key = AzureConfigKey::from_str(k).map_err(|_| unknown(k, scheme))?;
                    b = b.with_config(key, v);
                }
                let b = trusting!(b, AzureConfigKey, "AZURE_", roots, options);
                let anonymous = b.get_config_value(&AzureConfigKey::SkipSignature).is_some_and(|v| v == "true");
                let azure = Arc::new(b.build().map_err(build_error)?);
                parts = Some(Arc::clone(&azure) as Arc<dyn MultipartStore>);
                credentials = (!anonymous).then(|| credential_check(Arc::clone(azure.credentials())));
                (azure, url_path(rest), None, "Azure")
            }
            "http" | "https" => {
                // An `http://` URL asks for plain HTTP itself (object_store refuses it by default,
                // which failed every request with "URL scheme is not allowed"); `allow_http` in
                // `options` still decides.
                let mut client = ClientOptions::new().with_allow_http(scheme == "http");
                for (k, v) in options {
                    let key = ClientConfigKey::from_str(k).map_err(|_| unknown(k, scheme))?;
                    client = client.with_config(key, v);
                }
                for root in roots {
                    client = client.with_root_certificate(root.clone());
                }
                // The store at the server's root and the URL's path as the prefix of every key:
                // object_store's listings name objects by their whole path on the server, so a
                // store at a deeper URL would read `a/b/a/b/key` for what it lists under `a/b/`;
                // and it then makes the URL's own folders too (MKCOL) when they are missing.
                // (The root keeps the URL's user and password, if any.)
                let parsed = reqwest::Url::parse(url).map_err(|e| bad_url(e.to_string()))?;
                let base = Path::from_url_path(parsed.path()).map_err(|e| bad_url(e.to_string()))?;
                let mut root = parsed;
                root.set_path("/");
                root.set_query(None);
                root.set_fragment(None);
                let b = HttpBuilder::new()
                    .with_url(root.as_str())
                    .with_retry(no_client_retries())
                    .with_client_options(client);
                (Arc::new(b.build().map_err(build_error)?), base, None, "Http")
            }
            other => return Err(StoreConfigError::UnsupportedScheme { scheme: other.to_string() }),
        };
        let healthcheck = !matches!(scheme, "file" | "memory");
        // The URL is kept only to be shown: without its secrets.
        let url = sluice_engine::redact::url(url);
        Ok(ObjectStoreSink {
            url,
            store,
            parts,
            base,
            local: local_dir,
            journal: None,
            code_prefix,
            healthcheck,
            credentials,
            web_server: matches!(scheme, "http" | "https"),
            tls_metrics: crate::tls::TlsMetrics::default(),
            kms_key: None,
        })
    }

    /// Names what the sink keeps for itself after its pipeline and name: its staging folder
    /// (`file://`) and its journal of open uploads under `data_dir` (stores with multipart uploads
    /// that outlive the process).
    pub fn owned_by(mut self, pipeline: &str, sink: &str, data_dir: &std::path::Path) -> Self {
        if let Some(local) = &self.local {
            self.local = Some(StagedFiles::new(local.root().to_path_buf(), &format!("{pipeline}.{sink}")));
        }
        if self.parts.is_some() && self.code_prefix != "Memory" {
            self.journal = Some(Arc::new(UploadJournal::new(data_dir.join(sink).join("uploads.json"))));
        }
        self
    }

    /// Where its store counts a refused renewal of its `tls.ca` (a source that reads through the
    /// store hands it its counters).
    pub fn tls_metrics(&self) -> crate::tls::TlsMetrics {
        self.tls_metrics.clone()
    }

    /// The store, the base path under it, the URL as shown (secrets masked) and the store's
    /// error-code prefix: for the `object_store` source, which reads where this sink would write.
    pub fn into_store(self) -> (Arc<dyn ObjectStore>, Path, String, &'static str) {
        (self.store, self.base, self.url, self.code_prefix)
    }

    /// Skips the credentials check before the run.
    pub fn without_healthcheck(mut self) -> Self {
        self.healthcheck = false;
        self
    }

    /// Content type and encoding as object attributes (local files keep none: object_store
    /// refuses attributes there).
    fn attributes(
        &self,
        content_type: &'static str,
        content_encoding: Option<&'static str>,
    ) -> object_store::Attributes {
        let mut attributes = object_store::Attributes::new();
        if self.local.is_none() {
            attributes.insert(object_store::Attribute::ContentType, content_type.into());
            if let Some(encoding) = content_encoding.filter(|_| !self.web_server) {
                attributes.insert(object_store::Attribute::ContentEncoding, encoding.into());
            }
        }
        attributes
    }

    /// The full path of `key` under the sink's location. A key with a folder named like a
    /// staging folder is refused: the `object_store` source skips such objects, and under
    /// `file://` the next start would remove what lies in one (a partition key value
    /// `.sluice-staging` must not put an object there).
    pub fn location(&self, key: &str) -> Result<Path, DeliveryError> {
        let joined = if self.base.as_ref().is_empty() { key.to_string() } else { format!("{}/{key}", self.base) };
        let invalid = |why: String| DeliveryError::Unstorable {
            code: format!("{}.InvalidKey", self.code_prefix),
            message: format!("object key `{joined}` is not valid: {why}"),
        };
        if key.split('/').any(|folder| folder == STAGING_FOLDER) {
            return Err(invalid(format!("`{STAGING_FOLDER}` is the name of sluice's staging folders")));
        }
        Path::parse(&joined).map_err(|e| invalid(e.to_string()))
    }
}

/// An upload in numbered parts (`MultipartStore`: S3, GCS, Azure, memory): a part can be sent
/// again under its number.
struct NumberedUpload {
    store: Arc<dyn MultipartStore>,
    path: Path,
    id: MultipartId,
    /// The ids of the parts stored, by number.
    done: Arc<Mutex<Vec<Option<PartId>>>>,
    code_prefix: &'static str,
    journal: Option<Arc<UploadJournal>>,
}

impl PartUpload for NumberedUpload {
    fn put_part(&self, index: usize, part: bytes::Bytes) -> BoxFuture<'static, Result<(), DeliveryError>> {
        let (store, path, id, code_prefix) =
            (Arc::clone(&self.store), self.path.clone(), self.id.clone(), self.code_prefix);
        let done = Arc::clone(&self.done);
        Box::pin(async move {
            let part_id = store
                .put_part(&path, &id, index, PutPayload::from_bytes(part))
                .await
                .map_err(|e| classify(code_prefix, e))?;
            if let Ok(mut done) = done.lock() {
                if done.len() <= index {
                    done.resize(index + 1, None);
                }
                done[index] = Some(part_id);
            }
            Ok(())
        })
    }

    fn retries_parts(&self) -> bool {
        true
    }

    fn complete(&self) -> BoxFuture<'static, Result<(), DeliveryError>> {
        let (store, path, id, code_prefix) =
            (Arc::clone(&self.store), self.path.clone(), self.id.clone(), self.code_prefix);
        let parts: Option<Vec<PartId>> = self.done.lock().ok().and_then(|d| d.iter().cloned().collect());
        let journal = self.journal.clone();
        Box::pin(async move {
            let parts = parts.ok_or_else(|| DeliveryError::Retryable {
                code: format!("{code_prefix}.InternalError"),
                message: "a part of the upload is missing".into(),
            })?;
            store.complete_multipart(&path, &id, parts).await.map_err(|e| classify(code_prefix, e))?;
            ended(journal, id).await;
            Ok(())
        })
    }

    fn abort(&self) -> BoxFuture<'static, Result<(), DeliveryError>> {
        let (store, path, id, code_prefix) =
            (Arc::clone(&self.store), self.path.clone(), self.id.clone(), self.code_prefix);
        let journal = self.journal.clone();
        Box::pin(async move {
            store.abort_multipart(&path, &id).await.map_err(|e| classify(code_prefix, e))?;
            ended(journal, id).await;
            Ok(())
        })
    }
}

/// Forgets an ended upload in the journal (off the async threads: the journal is synced).
async fn ended(journal: Option<Arc<UploadJournal>>, id: MultipartId) {
    if let Some(journal) = journal {
        let _ = tokio::task::spawn_blocking(move || journal.ended(&id)).await;
    }
}

/// An upload whose store numbers parts as they are handed over (`MultipartUpload`: local files,
/// HTTP): parts go out in order and cannot be sent again.
struct OrderedUpload {
    upload: Arc<tokio::sync::Mutex<Box<dyn MultipartUpload>>>,
    /// Parts handed to the store so far.
    sent: Mutex<usize>,
    code_prefix: &'static str,
}

impl PartUpload for OrderedUpload {
    fn put_part(&self, index: usize, part: bytes::Bytes) -> BoxFuture<'static, Result<(), DeliveryError>> {
        let code_prefix = self.code_prefix;
        // The store numbers the part now, in call order; a second call for a number is a retry.
        let put = match (self.sent.lock(), self.upload.try_lock()) {
            (Ok(mut sent), Ok(mut upload)) if *sent == index => {
                *sent += 1;
                Ok(upload.put_part(PutPayload::from_bytes(part)))
            }
            _ => Err(DeliveryError::Permanent {
                code: format!("{code_prefix}.InternalError"),
                message: format!("part {index} cannot be sent again to this store"),
            }),
        };
        Box::pin(async move { put?.await.map_err(|e| classify(code_prefix, e)) })
    }

    fn retries_parts(&self) -> bool {
        false
    }

    fn complete(&self) -> BoxFuture<'static, Result<(), DeliveryError>> {
        let (upload, code_prefix) = (Arc::clone(&self.upload), self.code_prefix);
        Box::pin(async move { upload.lock().await.complete().await.map(|_| ()).map_err(|e| classify(code_prefix, e)) })
    }

    fn abort(&self) -> BoxFuture<'static, Result<(), DeliveryError>> {
        let (upload, code_prefix) = (Arc::clone(&self.upload), self.code_prefix);
        Box::pin(async move { upload.lock().await.abort().await.map_err(|e| classify(code_prefix, e)) })
    }
}

/// Removes `.` and resolves `..` without touching the file system.
fn normalize(path: &std::path::Path) -> std::path::PathBuf {
    use std::path::Component;
    let mut out = std::path::PathBuf::new();
    for c in path.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            other => out.push(other.as_os_str()),
        }
    }
    out
}

/// The prefix after `bucket/` in `bucket/prefix/...`.
fn url_path(rest: &str) -> Path {
    rest.split_once('/').map(|(_, p)| Path::from(p)).unwrap_or_default()
}

/// Classifies an object_store error by variant.
fn classify(code_prefix: &str, e: object_store::Error) -> DeliveryError {
    use object_store::Error as E;
    let (permanent, code) = store_error_code(code_prefix, &e);
    // With its causes: the store's own message says "error sending request", its cause why.
    let message = sluice_engine::redact::error(&e);
    // S3 refuses a key over 1,024 bytes (`400 KeyTooLongError`), whatever is tried again.
    let too_long = format!("{code_prefix}.KeyTooLongError");
    if matches!(e, E::InvalidPath { .. }) {
        DeliveryError::Unstorable { code, message }
    } else if store_answer_code(code_prefix, &e) == too_long {
        DeliveryError::Unstorable { code: too_long, message }
    } else if permanent {
        DeliveryError::Permanent { code, message }
    } else {
        DeliveryError::Retryable { code, message }
    }
}

/// Whether trying `e`'s call again cannot help (a missing object or bucket, refused credentials,
/// a bad key): what a reader of the store gives up on at once.
pub(crate) fn is_permanent(e: &object_store::Error) -> bool {
    store_error_code("", e).0
}

/// The error code of a store's error `e` in Firehose's style (`S3.AccessDenied`; `code_prefix` is
/// the store's), and whether trying again cannot help.
fn store_error_code(code_prefix: &str, e: &object_store::Error) -> (bool, String) {
    use object_store::Error as E;
    let (permanent, code) = match e {
        E::NotFound { .. } => (true, "NoSuchBucket"),
        E::PermissionDenied { .. } => (true, "AccessDenied"),
        E::Unauthenticated { .. } => (true, "InvalidCredentials"),
        E::InvalidPath { .. } => (true, "InvalidKey"),
        E::NotSupported { .. } | E::NotImplemented { .. } => (true, "NotSupported"),
        E::UnknownConfigurationKey { .. } => (true, "InvalidConfiguration"),
        E::Precondition { .. } | E::AlreadyExists { .. } | E::NotModified { .. } => (true, "Conflict"),
        _ => (false, "InternalError"),
    };
    (permanent, format!("{code_prefix}.{code}"))
}

/// Every store but a WebDAV server takes an object in parts: multipart uploads (S3, GCS, Azure), or
/// a staged file.
impl PartSink for ObjectStoreSink {
    fn start_upload(
        &self,
        key: &str,
        content_type: &'static str,
        content_encoding: Option<&'static str>,
    ) -> UploadStart {
        let store = Arc::clone(&self.store);
        let parts = self.parts.clone();
        let location = self.location(key);
        let code_prefix = self.code_prefix;
        let attributes = self.attributes(content_type, content_encoding);
        let local = self.local.clone().map(|local| (local, key.to_string()));
        let journal = self.journal.clone();
        Box::pin(async move {
            let path = location?;
            if let Some((local, key)) = local {
                return local.start(&key).await;
            }
            let options = PutMultipartOptions { attributes, ..PutMultipartOptions::default() };
            if let Some(parts) = parts {
                let id = match parts.create_multipart_opts(&path, options).await {
                    // A store that cannot take attributes on multipart uploads still takes the bytes.
                    Err(object_store::Error::NotSupported { .. }) => parts.create_multipart(&path).await,
                    other => other,
                }
                .map_err(|e| classify(code_prefix, e))?;
                if let Some(journal) = journal.clone() {
                    let (id, object) = (id.clone(), path.to_string());
                    let recorded = tokio::task::spawn_blocking(move || journal.started(&id, &object)).await;
                    if let Ok(Err(e)) | Err(e) = recorded.map_err(std::io::Error::other) {
                        tracing::warn!(object = %path, error = %e, "cannot record an upload in the journal; a crash would leave it open");
                    }
                }
                let upload = NumberedUpload { store: parts, path, id, done: Arc::default(), code_prefix, journal };
                return Ok(Box::new(upload) as Box<dyn PartUpload>);
            }
            let upload = store.put_multipart_opts(&path, options).await.map_err(|e| classify(code_prefix, e))?;
            let upload =
                OrderedUpload { upload: Arc::new(tokio::sync::Mutex::new(upload)), sent: Mutex::new(0), code_prefix };
            Ok(Box::new(upload) as Box<dyn PartUpload>)
        })
    }
}

impl Sink for ObjectStoreSink {
    fn destination(&self) -> DestinationKind {
        DestinationKind::S3
    }

    fn measure_with(&self, meter: SinkMeter) {
        self.tls_metrics.meter_with(meter);
    }

    fn kms_key(&self) -> Option<String> {
        self.kms_key.clone()
    }

    /// S3's, GCS's and Azure's 1,024 bytes, less the URL's own prefix (`s3://bucket/p` keys
    /// start `p/`); files under `file://` take 255 bytes a name and the path (`PATH_MAX`) what
    /// the folder leaves; a WebDAV server keeps objects as files too.
    fn key_limits(&self) -> KeyLimits {
        const PATH_MAX: usize = 4096;
        // The folder or the URL's prefix, and the `/` after it.
        let under = |base: usize| if base == 0 { 0 } else { base + 1 };
        match &self.local {
            Some(local) => KeyLimits {
                // And the path's terminating NUL.
                key_bytes: PATH_MAX.saturating_sub(under(local.root().as_os_str().len()) + 1),
                segment_bytes: KeyLimits::FILE_NAME_BYTES,
            },
            None => {
                let key_bytes = KeyLimits::OBJECT_STORE.key_bytes.saturating_sub(under(self.base.as_ref().len()));
                let segment_bytes = if self.web_server { KeyLimits::FILE_NAME_BYTES } else { key_bytes };
                KeyLimits { key_bytes, segment_bytes }
            }
        }
    }

    fn describe(&self) -> String {
        format!("object_store {}", self.url)
    }

    fn location(&self) -> String {
        self.url.to_string()
    }

    /// Removes a `file://` store's staging folder once the run stored everything.
    fn finish(&self) -> BoxFuture<'static, ()> {
        let local = self.local.clone();
        Box::pin(async move {
            if let Some(local) = local {
                local.finish().await;
            }
        })
    }

    /// For a local folder, that it is one and can be made or written; for other stores, finds
    /// credentials as the store will (none at all stops the run: every delivery would fail)
    /// and (unless `healthcheck = false`) checks that the store takes them with a HEAD under the
    /// prefix, and that its bucket (S3, GCS) or container (Azure) exists; changes nothing. Refused
    /// credentials and a missing bucket are errors (at start, they stop the run before anything is
    /// read: otherwise every object would go to an error output in the same store, which refuses
    /// it too, and delivery would block); an unreachable store only warns, since a stream run
    /// should take data while its destination is down.
    fn check(&self) -> BoxFuture<'static, Result<(), DeliveryError>> {
        let local = self.local.clone();
        let credentials = self.credentials.clone();
        let probe =
            if self.healthcheck { Some((Arc::clone(&self.store), self.location(".sluice-healthcheck"))) } else { None };
        let (code_prefix, url) = (self.code_prefix, self.url.clone());
        Box::pin(async move {
            if let Some(local) = local {
                local.check().await?;
            }
            if let Some(check) = credentials
                && let Err(e) = check().await
            {
                let message = match e {
                    NoCredentials::Profile(why) => format!("no credentials were found for {url}: {why}"),
                    NoCredentials::NoneFound(why) => format!(
                        "no credentials were found for {url} ({why}); give them in `options` (access_key_id and \
                         secret_access_key for s3://) or the usual environment variables (AWS_ACCESS_KEY_ID and \
                         AWS_SECRET_ACCESS_KEY, GOOGLE_APPLICATION_CREDENTIALS, AZURE_STORAGE_ACCOUNT_KEY), run with an \
                         instance or task role, or set options.skip_signature = true for a public bucket"
                    ),
                };
                return Err(DeliveryError::Permanent { code: format!("{code_prefix}.MissingCredentials"), message });
            }
            let Some((store, location)) = probe else { return Ok(()) };
            let location = location?;
            match store.head(&location).await {
                Ok(_) => Ok(()),
                // No such object, or no such bucket (a HEAD's answer has no body to tell which). On
                // S3 a HEAD of the bucket's root is HeadBucket, whose 404 says the bucket is
                // missing: that stops the run, as refused credentials do (its answer when the
                // bucket exists, which lacks an object's headers, and a 403 are not judged).
                Err(object_store::Error::NotFound { .. }) if code_prefix == "S3" => {
                    match store.head(&Path::from("")).await {
                        Err(object_store::Error::NotFound { .. }) => Err(DeliveryError::Permanent {
                            code: format!("{code_prefix}.NoSuchBucket"),
                            message: format!("the bucket of {url} does not exist; create it, or correct the URL"),
                        }),
                        _ => Ok(()),
                    }
                }
                // A HEAD's answer has no body; a GET's names the error: Azure's `ContainerNotFound`
                // (`BlobNotFound` when only the probe is missing), GCS's `NoSuchBucket` (else
                // `NoSuchKey`), as their XML error bodies say.
                Err(object_store::Error::NotFound { .. })
                    if let Some((missing, what)) = missing_bucket_code(code_prefix) =>
                {
                    match store.get(&location).await {
                        Err(e @ object_store::Error::NotFound { .. })
                            if store_answer_code(code_prefix, &e) == format!("{code_prefix}.{missing}") =>
                        {
                            Err(DeliveryError::Permanent {
                                code: format!("{code_prefix}.{missing}"),
                                message: format!("the {what} of {url} does not exist; create it, or correct the URL"),
                            })
                        }
                        _ => Ok(()),
                    }
                }
                Err(object_store::Error::NotFound { .. }) => Ok(()),
                Err(
                    e @ (object_store::Error::PermissionDenied { .. } | object_store::Error::Unauthenticated { .. }),
                ) => {
                    let error = classify(code_prefix, e);
                    Err(DeliveryError::Permanent {
                        code: error.code().to_string(),
                        message: format!(
                            "{url} refused our credentials ({error}); check them, or set healthcheck = false if the role may only write"
                        ),
                    })
                }
                // A certificate the store's client does not trust is refused at every delivery too,
                // and no retry heals it: the run stops, saying how to trust it.
                Err(e) if let Some(why) = crate::tls::refusal(&e) => Err(DeliveryError::Permanent {
                    code: format!("{code_prefix}.TlsFailed"),
                    message: format!(
                        "{url}: the server's certificate is not trusted ({why}); trust its CA with `tls = {{ ca = \"ca.pem\" }}` (a PEM file of the CA certificates; or the system's trust store, or SSL_CERT_FILE naming a bundle that holds it)"
                    ),
                }),
                Err(e) => {
                    let error = sluice_engine::redact::error(&e);
                    tracing::warn!(url = %url, error = %error, "the destination did not answer the start-up check; deliveries will be tried anyway");
                    Ok(())
                }
            }
        })
    }

    /// [`Sink::check`], then creates a local folder and removes what an interrupted run left
    /// staged, and aborts the multipart uploads an interrupted run left open.
    fn prepare(&self) -> BoxFuture<'static, Result<(), DeliveryError>> {
        let check = self.check();
        let local = self.local.clone();
        let stale = self.parts.clone().zip(self.journal.clone());
        let url = self.url.clone();
        Box::pin(async move {
            check.await?;
            if let Some(local) = local {
                let removed = local.prepare().await?;
                if removed > 0 {
                    tracing::info!(url = %url, files = removed, staging = %local.staging().display(), "removed what an interrupted run left staged");
                }
            }
            if let Some((parts, journal)) = stale {
                for (id, path) in tokio::task::spawn_blocking(move || journal.take_stale()).await.unwrap_or_default() {
                    match parts.abort_multipart(&Path::from(path.as_str()), &id).await {
                        Ok(()) | Err(object_store::Error::NotFound { .. }) => {
                            tracing::info!(url = %url, object = %path, "aborted a multipart upload an interrupted run left open");
                        }
                        Err(e) => {
                            tracing::warn!(url = %url, object = %path, error = %e, "cannot abort a multipart upload an interrupted run left open")
                        }
                    }
                }
            }
            Ok(())
        })
    }

    fn parts(&self) -> Option<&dyn PartSink> {
        // A WebDAV server takes whole objects only: objects are delivered when sealed.
        (!self.web_server).then_some(self as &dyn PartSink)
    }

    fn deliver(&self, payload: Payload) -> BoxFuture<'static, Result<(), DeliveryError>> {
        let location = self.location(&payload.key);
        if let Some(local) = &self.local {
            return match location {
                Ok(_) => local.put(&payload.key, payload.body),
                Err(e) => Box::pin(async move { Err(e) }),
            };
        }
        let store = Arc::clone(&self.store);
        let code_prefix = self.code_prefix;
        let attributes = self.attributes(payload.content_type, payload.content_encoding);
        Box::pin(async move {
            let location = location?;
            let options = PutOptions { attributes, ..PutOptions::default() };
            store
                .put_opts(&location, PutPayload::from_bytes(payload.body), options)
                .await
                .map(|_| ())
                .map_err(|e| classify(code_prefix, e))
        })
    }
}

#[cfg(test)]
mod tests {

    /// A refusal is coded with the store's own code where its XML answer says it, else by the
    /// kind of object_store error.
    #[test]
    fn a_store_refusal_is_coded_with_the_store_s_own_code() {
        let answered = object_store::Error::Generic {
            store: "S3",
            source: "Server returned non-2xx status code: 404 Not Found: <?xml version=\"1.0\"?><Error><Code>NoSuchBucket</Code></Error>".into(),
        };
        assert_eq!(store_answer_code("S3", &answered), "S3.NoSuchBucket");
        let unanswered = object_store::Error::PermissionDenied { path: "a".into(), source: "refused".into() };
        assert_eq!(store_answer_code("GCS", &unanswered), "GCS.AccessDenied");
        let odd = object_store::Error::Generic { store: "S3", source: "<Code>not a code</Code>".into() };
        assert_eq!(store_answer_code("S3", &odd), "S3.InternalError");
    }

    /// A key S3 says is too long is not tried again (its object goes to the error output at once);
    /// another 400 is, and a store's missing bucket fails for good.
    #[test]
    fn a_key_too_long_for_the_store_is_unstorable() {
        let answer = |code: &str| object_store::Error::Generic {
            store: "S3",
            source: format!("Server returned non-2xx status code: 400 Bad Request: <Error><Code>{code}</Code></Error>")
                .into(),
        };
        match classify("S3", answer("KeyTooLongError")) {
            DeliveryError::Unstorable { code, .. } => assert_eq!(code, "S3.KeyTooLongError"),
            other => panic!("{other:?}"),
        }
        assert!(matches!(classify("S3", answer("SlowDown")), DeliveryError::Retryable { .. }));
        let missing = object_store::Error::NotFound { path: "a".into(), source: "gone".into() };
        assert!(matches!(classify("S3", missing), DeliveryError::Permanent { .. }));
    }
    #[test]
    fn a_backup_store_is_its_url_alone_or_its_table_whose_unknown_keys_are_refused() {
        use super::{BTreeMap, BackupStore};
        #[derive(Debug, serde::Deserialize)]
        struct Sink {
            #[serde(default, deserialize_with = "super::url_or_table")]
            backup_store: Option<BackupStore>,
        }
        let read = |text: &str| {
            let sink = toml::from_str::<Sink>(text).map_err(|e| e.message().to_string())?;
            sink.backup_store.ok_or_else(|| "no backup_store".to_string())
        };
        let alone = read("backup_store = \"s3://bucket/failed\"").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((alone.url.as_str(), alone.options), ("s3://bucket/failed", BTreeMap::new()));
        let table = read("backup_store = { url = \"s3://b/p\", options = { region = \"eu-west-1\" } }");
        let table = table.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((table.url.as_str(), table.options.len()), ("s3://b/p", 1));
        let trusting = read("backup_store = { url = \"s3://b/p\", tls = { ca = \"minio-ca.pem\" } }");
        let trusting = trusting.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(trusting.tls, Some(super::StoreTls { ca: "minio-ca.pem".into() }));
        let misspelt = read("backup_store = { url = \"s3://b/p\", optoins = {} }").map(|s| s.url);
        assert!(misspelt.as_ref().is_err_and(|e| e.starts_with("unknown field `optoins`")), "{misspelt:?}");
        let number = read("backup_store = 5").map(|s| s.url);
        assert_eq!(number, Err("invalid type: integer `5`, expected a URL or a table".to_string()));
    }

    /// Trusting a CA replaces the builder's client options: the client keys written in `options`
    /// are kept (the S3 key is not a client key and stays the builder's).
    #[test]
    fn a_store_trusting_a_ca_keeps_the_client_options_written() {
        use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
        let options: Vec<(String, String)> = [("allow_http", "true"), ("timeout", "7s"), ("region", "eu-west-1")]
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let mut builder = AmazonS3Builder::new();
        for (k, v) in &options {
            builder = builder.with_config(AmazonS3ConfigKey::from_str(k).unwrap(), v);
        }
        let roots = Certificate::from_pem_bundle(include_bytes!("../../../tests/fixtures/config/ca.pem")).unwrap();
        let roots = &roots[..];
        let builder = trusting!(builder, AmazonS3ConfigKey, "SLUICE_TEST_NO_SUCH_PREFIX_", roots, &options[..]);
        let client = |key| builder.get_config_value(&AmazonS3ConfigKey::Client(key));
        assert_eq!(client(ClientConfigKey::AllowHttp).as_deref(), Some("true"));
        assert_eq!(client(ClientConfigKey::Timeout).as_deref(), Some("7s"));
        assert_eq!(builder.get_config_value(&AmazonS3ConfigKey::Region).as_deref(), Some("eu-west-1"));
    }

    /// The shared files' profile fills what `options` leave unset: its region, and its credentials
    /// unless keys were given.
    #[test]
    fn a_profile_gives_the_region_and_credentials_options_leave_unset() {
        use crate::aws_profile::SharedProfile;
        use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
        let profile = || {
            let credential =
                object_store::aws::AwsCredential { key_id: "AKIDPROFILE".into(), secret_key: "s".into(), token: None };
            SharedProfile {
                credentials: Some(Arc::new(object_store::StaticCredentialProvider::new(credential))),
                region: Some("ap-southeast-2".into()),
            }
        };
        let key_of = |builder: AmazonS3Builder| {
            let store = builder.with_bucket_name("b").build().unwrap_or_else(|e| panic!("{e}"));
            let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap_or_else(|e| panic!("{e}"));
            runtime.block_on(store.credentials().get_credential()).map(|c| c.key_id.clone()).unwrap_or_default()
        };
        let bare = with_profile(AmazonS3Builder::new(), profile());
        assert_eq!(bare.get_config_value(&AmazonS3ConfigKey::Region).as_deref(), Some("ap-southeast-2"));
        assert_eq!(key_of(bare), "AKIDPROFILE");
        let given =
            AmazonS3Builder::new().with_region("eu-west-1").with_access_key_id("AKIDGIVEN").with_secret_access_key("g");
        let given = with_profile(given, profile());
        assert_eq!(given.get_config_value(&AmazonS3ConfigKey::Region).as_deref(), Some("eu-west-1"));
        assert_eq!(key_of(given), "AKIDGIVEN");
        let nothing = with_profile(AmazonS3Builder::new(), SharedProfile::default());
        assert_eq!(nothing.get_config_value(&AmazonS3ConfigKey::Region), None);
    }

    #[test]
    fn every_option_name_suggested_is_one_its_store_takes() {
        use object_store::aws::AmazonS3ConfigKey;
        for (scheme, takes) in [
            ("s3", (|k| AmazonS3ConfigKey::from_str(k).is_ok()) as fn(&str) -> bool),
            ("gs", |k| GoogleConfigKey::from_str(k).is_ok()),
            ("az", |k| AzureConfigKey::from_str(k).is_ok()),
            ("https", |k| ClientConfigKey::from_str(k).is_ok()),
        ] {
            for name in option_names(scheme).iter().chain(CLIENT_OPTIONS) {
                assert!(takes(name), "{scheme}:// does not take `{name}`");
            }
        }
        assert_eq!(near_option("s3", "regoin"), Some("region"));
        assert_eq!(near_option("az", "acount_name"), Some("account_name"));
        assert_eq!(near_option("https", "alow_http"), Some("allow_http"));
        assert_eq!(near_option("file", "region"), None);
        let refused = ObjectStoreSink::from_url("s3://bucket/x", &[("regoin".into(), "eu-west-1".into())]).err();
        let hint = refused.as_ref().map(StoreConfigError::hint);
        assert_eq!(hint.as_deref(), Some("did you mean `region`? (object_store's option names)"));
        let refused = ObjectStoreSink::from_url("file://./x", &[("region".into(), "eu-west-1".into())]).err();
        assert_eq!(refused.as_ref().map(StoreConfigError::hint).as_deref(), Some("file:// stores take no options"));
    }

    use sluice_engine::testkit::sink::{Check, Destination, conformance};

    use super::*;

    /// A `memory://` store, read back through the process-wide store the sink writes to.
    struct Memory {
        name: String,
    }

    impl Destination for Memory {
        fn sink(&self) -> Arc<dyn Sink> {
            Arc::new(ObjectStoreSink::from_url(&format!("memory://{}/base", self.name), &[]).unwrap())
        }

        fn stored(&self, key: &str) -> BoxFuture<'static, Option<Vec<u8>>> {
            let (store, path) = (memory_store(&self.name), Path::from(format!("base/{key}")));
            Box::pin(async move { store.get(&path).await.ok()?.bytes().await.ok().map(|b| b.to_vec()) })
        }
    }

    /// A `file://` folder, read back from the file system.
    struct Folder {
        dir: tempfile::TempDir,
    }

    impl Destination for Folder {
        fn sink(&self) -> Arc<dyn Sink> {
            let url = format!("file://{}", self.dir.path().display());
            Arc::new(ObjectStoreSink::from_url(&url, &[]).unwrap())
        }

        fn stored(&self, key: &str) -> BoxFuture<'static, Option<Vec<u8>>> {
            let path = self.dir.path().join(key);
            Box::pin(async move { std::fs::read(path).ok() })
        }
    }

    fn passes(destination: &dyn Destination) -> sluice_engine::testkit::sink::Report {
        let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
        let report = runtime.block_on(conformance(destination)).unwrap_or_else(|e| panic!("{e}"));
        for check in [Check::Deliver, Check::Redeliver, Check::Parts, Check::Abort, Check::BackupOfRefused] {
            assert!(report.passed(check), "{check:?} did not run: {report:?}");
        }
        report
    }

    #[test]
    fn memory_stores_pass_the_sink_conformance_kit() {
        passes(&Memory { name: format!("conformance-{}", uuid::Uuid::new_v4()) });
    }

    #[test]
    fn local_folders_pass_the_sink_conformance_kit_and_leave_nothing_staged() {
        let folder = Folder { dir: tempfile::tempdir().unwrap() };
        passes(&folder);
        let staging = folder.dir.path().join(".sluice-staging");
        let left: Vec<_> = walk(&staging);
        assert!(left.is_empty(), "staged files left behind: {left:?}");
    }

    fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
        let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
        entries.flatten().flat_map(|e| if e.path().is_dir() { walk(&e.path()) } else { vec![e.path()] }).collect()
    }
}

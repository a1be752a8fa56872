//! The AWS shared config and credentials files (`~/.aws/credentials`, `~/.aws/config`: what
//! `aws configure` writes), read as the AWS SDKs read them: the profile `AWS_PROFILE` names (else
//! `AWS_DEFAULT_PROFILE`, which botocore and the AWS CLI also read, else `default`), from `AWS_SHARED_CREDENTIALS_FILE` and `AWS_CONFIG_FILE` when set. A profile gives
//! credentials by static keys (`aws_access_key_id`, `aws_secret_access_key`, `aws_session_token`),
//! by `credential_process` (a command printing the SDKs' JSON), by a role (`role_arn`: STS
//! `AssumeRole`, signed with the credentials of its `source_profile` or `credential_source`, or
//! `AssumeRoleWithWebIdentity` with the token of its `web_identity_token_file`; a role that needs
//! an MFA code, `mfa_serial`, from the AWS CLI's cache of it, `aws_profile/mfa.rs`), or by
//! IAM Identity Center (`sso_session` or the older `sso_start_url`: the token `aws sso login`
//! cached, `aws_profile/sso.rs`), and may give a `region`.
//!
//! Guarantees: a role outranks the profile's own keys, as in every SDK, and so does Identity
//! Center (botocore's order: role, SSO, keys); otherwise the credentials
//! file's keys win over the config file's for one profile, static keys in the credentials file over
//! `credential_process`, and that over static keys in the config file (botocore's order).
//! Credentials that expire (a process's, a role's, Identity Center's) are obtained again five
//! minutes before they do; STS's and Identity Center's throttling and failures are tried three
//! times (the SDKs' standard mode).
//! A profile `AWS_PROFILE` names that neither file has, a malformed line, keys without their
//! secret, a `source_profile` loop, a role STS refuses, an SSO session whose token expired, and
//! an MFA role the CLI holds no fresh credentials for are errors that name the
//! file or profile and what to do, never a silent fall to the
//! next source of the chain; without `AWS_PROFILE`, a missing `default` profile is no error.
//! Secrets and a process's output never appear in errors or `Debug` output; the process's own
//! error output does (trimmed).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use object_store::StaticCredentialProvider;
use object_store::aws::{AwsCredential, AwsCredentialProvider};

mod mfa;
mod sso;

/// How long a `credential_process` may run.
const PROCESS_TIMEOUT: Duration = Duration::from_secs(60);

/// Credentials that expire (a process's, a role's) are obtained again this long before they do.
const REFRESH_BEFORE_EXPIRY: chrono::Duration = chrono::Duration::minutes(5);

/// Why a profile gives no credentials.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ProfileError {
    /// A shared file exists but cannot be read.
    #[error("cannot read the AWS shared file {path}: {why}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The system's reason.
        why: String,
    },
    /// A line of a shared file is neither a profile line, a property nor a comment.
    #[error("{path}:{line}: {what} (the AWS shared files take `[profile name]` lines and `key = value` lines)")]
    Syntax {
        /// The file.
        path: PathBuf,
        /// The line's number, from 1.
        line: usize,
        /// What is wrong with it.
        what: String,
    },
    /// `AWS_PROFILE` (or `AWS_DEFAULT_PROFILE`) names a profile neither file has.
    #[error(
        "{variable} is `{name}`, but neither {credentials} nor {config} has that profile (in the config file \
         it is `[profile {name}]`)"
    )]
    Missing {
        /// The variable that named it.
        variable: &'static str,
        /// The profile asked for.
        name: String,
        /// The credentials file read.
        credentials: PathBuf,
        /// The config file read.
        config: PathBuf,
    },
    /// A key without the one it needs (an access key id without its secret).
    #[error("the AWS profile `{name}` sets `{key}` without `{needs}`")]
    Incomplete {
        /// The profile.
        name: String,
        /// The key it sets.
        key: &'static str,
        /// The key it lacks.
        needs: &'static str,
    },
    /// A role profile that cannot be used as written, or whose role STS did not give.
    #[error("the AWS profile `{name}` names a role (`role_arn`) sluice cannot assume: {why}")]
    Role {
        /// The profile.
        name: String,
        /// Why.
        why: String,
    },
    /// An IAM Identity Center profile that cannot be used as written, or whose credentials
    /// Identity Center did not give (an expired token, a refused role).
    #[error("the AWS profile `{name}` gets no credentials from IAM Identity Center (SSO): {why}")]
    Sso {
        /// The profile.
        name: String,
        /// Why, and what to do.
        why: String,
    },
    /// The profile's `credential_process` failed or printed no usable credentials.
    #[error("the `credential_process` of the AWS profile `{name}` failed: {why}")]
    Process {
        /// The profile.
        name: String,
        /// Why (never its output, which may hold a secret).
        why: String,
    },
}

/// Where the shared files are and which profile is selected: the process's environment, or given.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct ProfileEnvironment {
    /// `AWS_PROFILE` (else `AWS_DEFAULT_PROFILE`), when set.
    pub profile: Option<String>,
    /// Which of the two set [`Self::profile`] (in errors).
    pub profile_variable: &'static str,
    /// The shared credentials file.
    pub credentials_file: Option<PathBuf>,
    /// The shared config file.
    pub config_file: Option<PathBuf>,
    /// `AWS_REGION` (else `AWS_DEFAULT_REGION`): STS's region for a role profile without `region`.
    pub region: Option<String>,
    /// `AWS_ENDPOINT_URL_STS`: where role profiles' `AssumeRole` goes instead of
    /// `https://sts.<region>.amazonaws.com`.
    pub sts_endpoint: Option<String>,
    /// Where `aws sso login` caches its tokens (`~/.aws/sso/cache`).
    pub sso_cache: Option<PathBuf>,
    /// Where the AWS CLI caches the credentials of roles it assumed (`~/.aws/cli/cache`): those of
    /// roles that need an MFA code are read from there.
    pub cli_cache: Option<PathBuf>,
    /// `AWS_ENDPOINT_URL_SSO`: where `GetRoleCredentials` goes instead of
    /// `https://portal.sso.<sso_region>.amazonaws.com`.
    pub sso_endpoint: Option<String>,
    /// `AWS_ENDPOINT_URL_SSO_OIDC`: where a token's refresh (`CreateToken`) goes instead of
    /// `https://oidc.<sso_region>.amazonaws.com`.
    pub sso_oidc_endpoint: Option<String>,
}

impl ProfileEnvironment {
    /// The process's: `AWS_PROFILE` (else `AWS_DEFAULT_PROFILE`), `AWS_SHARED_CREDENTIALS_FILE` (else `~/.aws/credentials`) and
    /// `AWS_CONFIG_FILE` (else `~/.aws/config`); a file is `None` when neither it nor `HOME` is set
    /// (the token cache, `~/.aws/sso/cache`, when `HOME` is not).
    pub fn from_process() -> Self {
        let var = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty());
        let home = var("HOME").map(PathBuf::from);
        // The Rust, Java and Go SDKs read AWS_PROFILE only; botocore (the AWS CLI, boto3) also
        // AWS_DEFAULT_PROFILE, an older name: read when AWS_PROFILE is not set.
        let profile = ["AWS_PROFILE", "AWS_DEFAULT_PROFILE"].into_iter().find_map(|name| var(name).map(|v| (name, v)));
        let file =
            |name: &str, default: &str| var(name).map(PathBuf::from).or_else(|| home.as_ref().map(|h| h.join(default)));
        ProfileEnvironment {
            profile: profile.as_ref().map(|(_, p)| p.to_string_lossy().into_owned()),
            profile_variable: profile.map_or("AWS_PROFILE", |(variable, _)| variable),
            credentials_file: file("AWS_SHARED_CREDENTIALS_FILE", ".aws/credentials"),
            config_file: file("AWS_CONFIG_FILE", ".aws/config"),
            region: ["AWS_REGION", "AWS_DEFAULT_REGION"]
                .iter()
                .find_map(|name| var(name))
                .map(|r| r.to_string_lossy().into_owned()),
            sts_endpoint: var("AWS_ENDPOINT_URL_STS").map(|e| e.to_string_lossy().into_owned()),
            sso_cache: home.as_ref().map(|h| h.join(".aws/sso/cache")),
            cli_cache: home.as_ref().map(|h| h.join(".aws/cli/cache")),
            sso_endpoint: var("AWS_ENDPOINT_URL_SSO").map(|e| e.to_string_lossy().into_owned()),
            sso_oidc_endpoint: var("AWS_ENDPOINT_URL_SSO_OIDC").map(|e| e.to_string_lossy().into_owned()),
        }
    }
}

/// What the selected profile gives.
#[derive(Debug, Clone, Default)]
pub struct SharedProfile {
    /// Its credentials (a provider that fails with the reason when the profile is unusable); `None`
    /// when it sets none, so the rest of the chain is asked.
    pub credentials: Option<AwsCredentialProvider>,
    /// Its `region`.
    pub region: Option<String>,
}

impl SharedProfile {
    /// The profile the process's environment selects, read once per process (per environment):
    /// every store and connector then shares its providers, so a role is assumed and a process run
    /// once per expiry for all of them, not once each.
    pub fn from_process() -> Self {
        static SELECTED: std::sync::OnceLock<std::sync::Mutex<HashMap<ProfileEnvironment, SharedProfile>>> =
            std::sync::OnceLock::new();
        let env = ProfileEnvironment::from_process();
        let selected = SELECTED.get_or_init(Default::default);
        let mut selected = selected.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        selected.entry(env).or_insert_with_key(Self::select).clone()
    }

    /// The profile `env` selects.
    pub fn select(env: &ProfileEnvironment) -> Self {
        let profiles = match Profiles::load(env) {
            Ok(profiles) => profiles,
            Err(e) => return SharedProfile { credentials: Some(failing(e)), region: None },
        };
        let name = env.profile.as_deref().unwrap_or("default");
        match profiles.by_name.get(name) {
            Some(profile) => SharedProfile {
                region: profile.get("region").map(str::to_string),
                credentials: profile.credentials(&profiles, env, &mut Vec::new()).map(|c| c.unwrap_or_else(failing)),
            },
            None if env.profile.is_none() => SharedProfile::default(),
            None => SharedProfile {
                credentials: Some(failing(ProfileError::Missing {
                    variable: if env.profile_variable.is_empty() { "AWS_PROFILE" } else { env.profile_variable },
                    name: name.to_string(),
                    credentials: env.credentials_file.clone().unwrap_or_else(|| "~/.aws/credentials".into()),
                    config: env.config_file.clone().unwrap_or_else(|| "~/.aws/config".into()),
                })),
                region: None,
            },
        }
    }
}

/// Every profile of both files, and the config file's `[sso-session name]` sections.
#[derive(Debug, Default)]
struct Profiles {
    by_name: HashMap<String, Profile>,
    sso_sessions: HashMap<String, HashMap<String, String>>,
}

impl Profiles {
    fn load(env: &ProfileEnvironment) -> Result<Profiles, ProfileError> {
        let mut profiles = Profiles::default();
        // The config file first, so the credentials file's keys replace its.
        for (path, from_credentials) in [(&env.config_file, false), (&env.credentials_file, true)] {
            let Some(path) = path else { continue };
            let text = match std::fs::read_to_string(path) {
                Ok(text) => text,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(ProfileError::Read { path: path.clone(), why: e.to_string() }),
            };
            for (section, properties) in parse(path, &text, from_credentials)? {
                let name = match section {
                    Section::Profile(name) => name,
                    Section::SsoSession(name) => {
                        profiles.sso_sessions.entry(name).or_default().extend(properties);
                        continue;
                    }
                };
                let profile = profiles
                    .by_name
                    .entry(name.clone())
                    .or_insert_with(|| Profile { name, properties: HashMap::new() });
                for (key, value) in properties {
                    profile.properties.insert(key, (value, from_credentials));
                }
            }
        }
        Ok(profiles)
    }
}

/// A profile's properties, each with whether it came from the credentials file.
#[derive(Debug, Default)]
struct Profile {
    name: String,
    properties: HashMap<String, (String, bool)>,
}

impl Profile {
    fn get(&self, key: &str) -> Option<&str> {
        self.properties.get(key).map(|(v, _)| v.as_str()).filter(|v| !v.is_empty())
    }

    fn in_credentials_file(&self, key: &str) -> bool {
        self.get(key).is_some() && self.properties.get(key).is_some_and(|(_, c)| *c)
    }

    /// A role profile with `mfa_serial`: the credentials the AWS CLI cached for its role when it
    /// asked for the code ([`mfa`]).
    fn role_cached_by_the_cli(
        &self,
        mfa_serial: &str,
        env: &ProfileEnvironment,
    ) -> Result<AwsCredentialProvider, ProfileError> {
        let duration = match self.get("duration_seconds") {
            None => None,
            Some(text) => Some(text.parse::<u32>().map_err(|_| ProfileError::Role {
                name: self.name.clone(),
                why: format!("`duration_seconds` is {text}, not a number of seconds"),
            })?),
        };
        let file = mfa::cache_file_name(
            self.get("role_arn").unwrap_or_default(),
            mfa_serial,
            self.get("external_id"),
            self.get("role_session_name"),
            duration,
        );
        Ok(Arc::new(mfa::CliCachedRole {
            profile: self.name.clone(),
            mfa_serial: mfa_serial.to_string(),
            file: env.cli_cache.as_ref().map(|folder| folder.join(file)),
            cached: Cached::default(),
        }))
    }

    /// Its credentials in botocore's order, or `None` when it sets none; `chain` holds the role
    /// profiles that led here (a `source_profile` loop is an error).
    fn credentials(
        &self,
        profiles: &Profiles,
        env: &ProfileEnvironment,
        chain: &mut Vec<String>,
    ) -> Option<Result<AwsCredentialProvider, ProfileError>> {
        if self.get("role_arn").is_some() {
            return Some(self.assumed_role(profiles, env, chain));
        }
        if self.get("sso_session").is_some() || self.get("sso_start_url").is_some() {
            return Some(sso::provider(self, profiles, env));
        }
        self.own_credentials()
    }

    /// Its static keys or process, ignoring `role_arn`.
    fn own_credentials(&self) -> Option<Result<AwsCredentialProvider, ProfileError>> {
        let process = self.get("credential_process").map(|command| {
            let provider: AwsCredentialProvider = Arc::new(ProcessProvider {
                profile: self.name.clone(),
                command: command.to_string(),
                timeout: PROCESS_TIMEOUT,
                cached: Default::default(),
            });
            Ok(provider)
        });
        if self.in_credentials_file("aws_access_key_id")
            || (process.is_none() && self.get("aws_access_key_id").is_some())
        {
            return Some(self.static_keys());
        }
        if process.is_some() {
            return process;
        }
        if self.get("aws_secret_access_key").is_some() {
            return Some(Err(ProfileError::Incomplete {
                name: self.name.clone(),
                key: "aws_secret_access_key",
                needs: "aws_access_key_id",
            }));
        }
        None
    }

    fn static_keys(&self) -> Result<AwsCredentialProvider, ProfileError> {
        let (Some(key_id), Some(secret_key)) = (self.get("aws_access_key_id"), self.get("aws_secret_access_key"))
        else {
            return Err(ProfileError::Incomplete {
                name: self.name.clone(),
                key: "aws_access_key_id",
                needs: "aws_secret_access_key",
            });
        };
        let credential = AwsCredential {
            key_id: key_id.to_string(),
            secret_key: secret_key.to_string(),
            token: self.get("aws_session_token").map(str::to_string),
        };
        Ok(Arc::new(StaticCredentialProvider::new(credential)))
    }

    /// The role `role_arn` names, assumed with STS by the credentials of `source_profile` (another
    /// profile, or this one's own keys) or of `credential_source`, or with the web identity token
    /// `web_identity_token_file` holds (`AssumeRoleWithWebIdentity`, which then wins, as in
    /// botocore).
    fn assumed_role(
        &self,
        profiles: &Profiles,
        env: &ProfileEnvironment,
        chain: &mut Vec<String>,
    ) -> Result<AwsCredentialProvider, ProfileError> {
        let role_error = |why: String| ProfileError::Role { name: self.name.clone(), why };
        if let Some(mfa_serial) = self.get("mfa_serial") {
            return self.role_cached_by_the_cli(mfa_serial, env);
        }
        chain.push(self.name.clone());
        let source = match (self.get("source_profile"), self.get("credential_source")) {
            _ if let Some(file) = self.get("web_identity_token_file") => RoleSource::WebIdentity(PathBuf::from(file)),
            (Some(_), Some(_)) => {
                return Err(role_error("it sets both `source_profile` and `credential_source`; keep one".into()));
            }
            (None, None) => {
                return Err(role_error("it sets neither `source_profile` nor `credential_source`".into()));
            }
            (Some(source), None) if source == self.name => match self.own_credentials() {
                Some(own) => RoleSource::Signed(own?),
                None => return Err(role_error("it is its own `source_profile` but has no keys of its own".into())),
            },
            (Some(source), None) => {
                if chain.iter().any(|n| n == source) {
                    return Err(role_error(format!(
                        "its `source_profile` chain loops: {} → {source}",
                        chain.join(" → ")
                    )));
                }
                let Some(profile) = profiles.by_name.get(source) else {
                    return Err(role_error(format!("its `source_profile` `{source}` is in neither shared file")));
                };
                match profile.credentials(profiles, env, chain) {
                    Some(credentials) => RoleSource::Signed(credentials?),
                    None => return Err(role_error(format!("its `source_profile` `{source}` sets no credentials"))),
                }
            }
            (None, Some(kind)) => RoleSource::Signed(credential_source(kind).map_err(role_error)?),
        };
        let duration = match self.get("duration_seconds") {
            None => 3600,
            Some(text) => match text.parse::<u32>() {
                Ok(seconds) if (900..=43_200).contains(&seconds) => seconds,
                _ => {
                    return Err(role_error(format!(
                        "`duration_seconds` is {text}, not a number of seconds from 900 to 43200"
                    )));
                }
            },
        };
        let region = self
            .get("region")
            .map(str::to_string)
            .or_else(|| env.region.clone())
            .filter(|r| !r.is_empty())
            .unwrap_or_else(|| "us-east-1".to_string());
        let endpoint = env.sts_endpoint.clone().filter(|e| !e.is_empty()).unwrap_or_else(|| sts_endpoint(&region));
        let endpoint = reqwest::Url::parse(&endpoint)
            .map_err(|e| role_error(format!("the STS endpoint {endpoint} is not a URL: {e}")))?;
        let client = sts_client(STS_TIMEOUT).map_err(role_error)?;
        Ok(Arc::new(AssumeRoleProvider {
            profile: self.name.clone(),
            source,
            role_arn: self.get("role_arn").unwrap_or_default().to_string(),
            session_name: self
                .get("role_session_name")
                .map_or_else(|| format!("sluice-{}", Utc::now().timestamp_millis()), str::to_string),
            external_id: self.get("external_id").map(str::to_string),
            duration,
            region,
            endpoint,
            client,
            cached: Default::default(),
        }))
    }
}

/// The HTTP client of `AssumeRole` requests: each bounded by `timeout`, redirects not followed.
fn sts_client(timeout: Duration) -> Result<reqwest::Client, String> {
    reqwest::Client::builder()
        .timeout(timeout)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(|e| format!("cannot build the HTTP client: {}", sluice_engine::redact::error(&e)))
}

/// STS's regional endpoint for `region` (in its partition's domain).
fn sts_endpoint(region: &str) -> String {
    crate::aws_endpoint::service_endpoint("sts", region)
}

/// The credentials a role profile's `credential_source` names.
fn credential_source(kind: &str) -> Result<AwsCredentialProvider, String> {
    use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
    let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    // object_store's chain, given only what leads to the source named.
    let mut builder = AmazonS3Builder::new().with_bucket_name("sluice-credentials");
    match kind {
        "Environment" => {
            let credentials = crate::api::sigv4::Credentials::from_env().ok_or_else(|| {
                "its `credential_source` is Environment, but AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY are not set"
                    .to_string()
            })?;
            let credential = AwsCredential {
                key_id: credentials.key_id,
                secret_key: credentials.secret,
                token: credentials.session_token,
            };
            return Ok(Arc::new(StaticCredentialProvider::new(credential)));
        }
        "Ec2InstanceMetadata" => {
            if let Some(endpoint) = var("AWS_METADATA_ENDPOINT") {
                builder = builder.with_config(AmazonS3ConfigKey::MetadataEndpoint, endpoint);
            }
        }
        "EcsContainer" => {
            let relative = var("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI");
            let full = var("AWS_CONTAINER_CREDENTIALS_FULL_URI");
            if relative.is_none() && full.is_none() {
                return Err("its `credential_source` is EcsContainer, but neither \
                            AWS_CONTAINER_CREDENTIALS_RELATIVE_URI nor AWS_CONTAINER_CREDENTIALS_FULL_URI is set"
                    .to_string());
            }
            if let Some(uri) = relative {
                builder = builder.with_config(AmazonS3ConfigKey::ContainerCredentialsRelativeUri, uri);
            }
            if let Some(uri) = full {
                builder = builder.with_config(AmazonS3ConfigKey::ContainerCredentialsFullUri, uri);
            }
            if let Some(file) = var("AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE") {
                builder = builder.with_config(AmazonS3ConfigKey::ContainerAuthorizationTokenFile, file);
            }
        }
        other => {
            return Err(format!(
                "its `credential_source` is `{other}`, not Environment, Ec2InstanceMetadata or EcsContainer"
            ));
        }
    }
    let store = builder.build().map_err(|e| sluice_engine::redact::error(&e))?;
    Ok(Arc::clone(store.credentials()))
}

/// A section of a shared file that sluice reads.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Section {
    /// `[name]` in the credentials file, `[profile name]` or `[default]` in the config file.
    Profile(String),
    /// `[sso-session name]` in the config file.
    SsoSession(String),
}

/// A section and its properties (keys lower-cased) in the order one file gives them.
type ParsedProfile = (Section, Vec<(String, String)>);

/// The properties of every profile in one shared file: in the credentials file `[name]`, in the
/// config file `[profile name]` (or `[default]`). Keys are lower-cased; a value ends at a `#` or
/// `;` after white space; indented lines continue the property above (sub-properties, which sluice
/// does not use).
fn parse(path: &Path, text: &str, credentials_file: bool) -> Result<Vec<ParsedProfile>, ProfileError> {
    let syntax =
        |line: usize, what: &str| ProfileError::Syntax { path: path.to_path_buf(), line, what: what.to_string() };
    // Some(the profile's index in `found`, or None for a section that is not a profile)
    let mut section: Option<Option<usize>> = None;
    let mut found: Vec<ParsedProfile> = Vec::new();
    for (index, raw) in text.lines().enumerate() {
        let number = index + 1;
        let line = raw.trim_end();
        let trimmed = line.trim_start();
        if trimmed.is_empty() || trimmed.starts_with('#') || trimmed.starts_with(';') {
            continue;
        }
        if let Some(header) = trimmed.strip_prefix('[') {
            let Some((inside, after)) = header.split_once(']') else {
                return Err(syntax(number, "a profile line without its closing `]`"));
            };
            let after = after.trim_start();
            if !(after.is_empty() || after.starts_with('#') || after.starts_with(';')) {
                return Err(syntax(number, "text after a profile line's `]`"));
            }
            let inside = inside.trim();
            let name = if credentials_file {
                Some(Section::Profile(inside.to_string()))
            } else if inside == "default" {
                Some(Section::Profile("default".to_string()))
            } else {
                match inside.split_once(char::is_whitespace) {
                    Some(("profile", rest)) => Some(Section::Profile(rest.trim().to_string())),
                    Some(("sso-session", rest)) => Some(Section::SsoSession(rest.trim().to_string())),
                    _ => None, // `[services x]`: not read
                }
            };
            section = Some(name.map(|name| {
                found.iter().position(|(n, _)| *n == name).unwrap_or_else(|| {
                    found.push((name, Vec::new()));
                    found.len() - 1
                })
            }));
            continue;
        }
        if line.starts_with(char::is_whitespace) {
            // A sub-property of the property above.
            if section.is_none() {
                return Err(syntax(number, "an indented line before any profile line"));
            }
            continue;
        }
        let Some(profile) = section else {
            return Err(syntax(number, "a property before any profile line"));
        };
        let Some((key, value)) = trimmed.split_once('=') else {
            return Err(syntax(number, "a line that is neither a profile line nor `key = value`"));
        };
        let key = key.trim();
        if key.is_empty() {
            return Err(syntax(number, "a property without a name"));
        }
        if let Some((_, properties)) = profile.and_then(|i| found.get_mut(i)) {
            properties.push((key.to_ascii_lowercase(), strip_comment(value).trim().to_string()));
        }
    }
    Ok(found)
}

/// `value` up to a `#` or `;` that follows white space.
fn strip_comment(value: &str) -> &str {
    let bytes = value.as_bytes();
    for (i, &b) in bytes.iter().enumerate() {
        if (b == b'#' || b == b';') && i > 0 && bytes[i - 1].is_ascii_whitespace() {
            return &value[..i];
        }
    }
    value
}

/// A provider that always fails with why the profile is unusable (reported when the connector starts).
fn failing(error: ProfileError) -> AwsCredentialProvider {
    Arc::new(Failing(error))
}

#[derive(Debug)]
struct Failing(ProfileError);

#[async_trait::async_trait]
impl object_store::CredentialProvider for Failing {
    type Credential = AwsCredential;
    async fn get_credential(&self) -> object_store::Result<Arc<AwsCredential>> {
        Err(generic(self.0.clone()))
    }
}

/// The `store` of the errors this module's providers give.
const PROFILE_ERRORS: &str = "AWS profile";

fn generic(error: ProfileError) -> object_store::Error {
    object_store::Error::Generic { store: PROFILE_ERRORS, source: Box::new(error) }
}

/// Whether a credential provider's error is a profile's own (one this module's providers gave):
/// it says what to do about that profile, and no other source of credentials was asked.
pub fn is_profile_error(error: &object_store::Error) -> bool {
    matches!(error, object_store::Error::Generic { store: PROFILE_ERRORS, .. })
}

/// What a credential provider's error says: a profile's problem as this module words it, another
/// (object_store's own providers') with its causes, secrets redacted.
pub fn credential_error(error: &object_store::Error) -> String {
    match error {
        object_store::Error::Generic { store: PROFILE_ERRORS, source } => source.to_string(),
        other => sluice_engine::redact::error(other),
    }
}

/// Credentials and when they expire (never, when their source said no expiry).
type Expiring = (Arc<AwsCredential>, Option<DateTime<Utc>>);

/// The credentials last obtained, given out until shortly before they expire.
#[derive(Default)]
struct Cached(tokio::sync::Mutex<Option<Expiring>>);

impl Cached {
    /// The cached credentials while they are fresh, else those `obtain` gives (then cached).
    async fn get(
        &self,
        obtain: impl Future<Output = Result<(AwsCredential, Option<DateTime<Utc>>), ProfileError>>,
    ) -> object_store::Result<Arc<AwsCredential>> {
        let mut cached = self.0.lock().await;
        if let Some((credential, expires)) = cached.as_ref()
            && expires.is_none_or(|at| Utc::now() + REFRESH_BEFORE_EXPIRY < at)
        {
            return Ok(Arc::clone(credential));
        }
        let (credential, expires) = obtain.await.map_err(generic)?;
        let credential = Arc::new(credential);
        *cached = Some((Arc::clone(&credential), expires));
        Ok(credential)
    }
}

/// Credentials from a profile's `credential_process`.
struct ProcessProvider {
    profile: String,
    command: String,
    /// How long it may run ([`PROCESS_TIMEOUT`]).
    timeout: Duration,
    cached: Cached,
}

impl std::fmt::Debug for ProcessProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProcessProvider").field("profile", &self.profile).finish_non_exhaustive()
    }
}

#[async_trait::async_trait]
impl object_store::CredentialProvider for ProcessProvider {
    type Credential = AwsCredential;
    async fn get_credential(&self) -> object_store::Result<Arc<AwsCredential>> {
        let run = async {
            run_process(&self.command, self.timeout)
                .await
                .map_err(|why| ProfileError::Process { name: self.profile.clone(), why })
        };
        self.cached.get(run).await
    }
}

/// How a role profile proves who asks for the role.
enum RoleSource {
    /// `AssumeRole`, signed with these credentials (`source_profile`, `credential_source`).
    Signed(AwsCredentialProvider),
    /// `AssumeRoleWithWebIdentity` (unsigned) with the token in this file, read at each call (a
    /// token issuer rotates it in place).
    WebIdentity(PathBuf),
}

/// A role profile's credentials: STS `AssumeRole`, signed with its source's credentials, or
/// `AssumeRoleWithWebIdentity` with its token.
struct AssumeRoleProvider {
    profile: String,
    source: RoleSource,
    role_arn: String,
    session_name: String,
    external_id: Option<String>,
    duration: u32,
    region: String,
    endpoint: reqwest::Url,
    /// STS's client: requests bounded by [`STS_TIMEOUT`], no redirects.
    client: reqwest::Client,
    cached: Cached,
}

impl std::fmt::Debug for AssumeRoleProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AssumeRoleProvider")
            .field("profile", &self.profile)
            .field("role_arn", &self.role_arn)
            .finish_non_exhaustive()
    }
}

#[async_trait::async_trait]
impl object_store::CredentialProvider for AssumeRoleProvider {
    type Credential = AwsCredential;
    async fn get_credential(&self) -> object_store::Result<Arc<AwsCredential>> {
        let assume = async {
            retried(&self.profile, "AssumeRole", || self.assume())
                .await
                .map_err(|why| ProfileError::Role { name: self.profile.clone(), why })
        };
        self.cached.get(assume).await
    }
}

/// How long a request to STS or Identity Center may take.
const STS_TIMEOUT: Duration = Duration::from_secs(30);

/// Attempts at a call to STS or Identity Center when it throttles, fails (5xx) or cannot be
/// reached (the SDKs' standard retry mode: three), the pause before the second doubling after each.
const STS_ATTEMPTS: u32 = 3;
const STS_FIRST_PAUSE: Duration = Duration::from_millis(200);

/// Why a call to STS or Identity Center gave no credentials, and whether trying again may.
#[derive(Debug, PartialEq, Eq)]
struct CallFailure {
    retryable: bool,
    why: String,
}

impl CallFailure {
    fn permanent(why: String) -> Self {
        CallFailure { retryable: false, why }
    }

    fn retryable(why: String) -> Self {
        CallFailure { retryable: true, why }
    }
}

/// `call` (named `operation` in the log) until it succeeds, fails for good, or has been tried
/// [`STS_ATTEMPTS`] times; why it failed last.
async fn retried<T, F: Future<Output = Result<T, CallFailure>>>(
    profile: &str,
    operation: &str,
    mut call: impl FnMut() -> F,
) -> Result<T, String> {
    let (mut attempt, mut pause) = (1, STS_FIRST_PAUSE);
    loop {
        match call().await {
            Ok(answer) => return Ok(answer),
            Err(failure) if failure.retryable && attempt < STS_ATTEMPTS => {
                tracing::warn!(profile, attempt, "{operation} failed, trying again: {}", failure.why);
                tokio::time::sleep(pause).await;
                (attempt, pause) = (attempt + 1, pause * 2);
            }
            Err(failure) => return Err(failure.why),
        }
    }
}

impl AssumeRoleProvider {
    /// The `AssumeRole` form (`AssumeRoleWithWebIdentity` with `token`).
    fn request_body(&self, token: Option<&str>) -> Vec<u8> {
        let mut form = url::form_urlencoded::Serializer::new(String::new());
        let action = if token.is_some() { "AssumeRoleWithWebIdentity" } else { "AssumeRole" };
        form.append_pair("Action", action)
            .append_pair("Version", "2011-06-15")
            .append_pair("RoleArn", &self.role_arn)
            .append_pair("RoleSessionName", &self.session_name)
            .append_pair("DurationSeconds", &self.duration.to_string());
        match token {
            Some(token) => {
                form.append_pair("WebIdentityToken", token);
            }
            None => {
                if let Some(id) = &self.external_id {
                    form.append_pair("ExternalId", id);
                }
            }
        }
        form.finish().into_bytes()
    }

    async fn assume(&self) -> Result<(AwsCredential, Option<DateTime<Utc>>), CallFailure> {
        let mut headers = http::HeaderMap::new();
        headers.insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/x-www-form-urlencoded; charset=utf-8"),
        );
        let (body, headers) = match &self.source {
            RoleSource::Signed(source) => {
                let source = source
                    .get_credential()
                    .await
                    .map_err(|e| CallFailure::permanent(format!("its source credentials: {}", credential_error(&e))))?;
                let source = crate::api::sigv4::Credentials {
                    key_id: source.key_id.clone(),
                    secret: source.secret_key.clone(),
                    session_token: source.token.clone(),
                };
                let body = self.request_body(None);
                let path = self.endpoint.path().to_string();
                let headers = source
                    .sign_request("POST", &self.endpoint, &path, (&self.region, "sts"), headers, &body)
                    .map_err(|e| CallFailure::permanent(format!("cannot sign the AssumeRole request: {e}")))?;
                (body, headers)
            }
            RoleSource::WebIdentity(file) => {
                let token = tokio::fs::read_to_string(file).await.map_err(|e| {
                    CallFailure::permanent(format!("cannot read its `web_identity_token_file` {}: {e}", file.display()))
                })?;
                (self.request_body(Some(token.trim())), headers)
            }
        };
        let unanswered = CallFailure::retryable;
        let response =
            self.client.post(self.endpoint.clone()).headers(headers).body(body).send().await.map_err(|e| {
                unanswered(format!("STS at {} did not answer: {}", self.endpoint, sluice_engine::redact::error(&e)))
            })?;
        let status = response.status();
        let text = response.text().await.map_err(|e| unanswered(format!("STS's answer was cut short: {e}")))?;
        assumed_credentials(status, &text)
    }
}

/// The credentials in STS's `AssumeRole` answer, or its error (`AccessDenied: …`), retryable when
/// STS throttled (`Throttling`, HTTP 400) or failed (5xx).
fn assumed_credentials(
    status: reqwest::StatusCode,
    text: &str,
) -> Result<(AwsCredential, Option<DateTime<Utc>>), CallFailure> {
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "PascalCase")]
    struct Response {
        #[serde(alias = "AssumeRoleWithWebIdentityResult")]
        assume_role_result: AssumeRoleResult,
    }
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "PascalCase")]
    struct AssumeRoleResult {
        credentials: StsCredentials,
    }
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "PascalCase")]
    struct StsCredentials {
        access_key_id: String,
        secret_access_key: String,
        session_token: String,
        expiration: String,
    }
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "PascalCase")]
    struct ErrorResponse {
        error: StsError,
    }
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "PascalCase")]
    struct StsError {
        code: String,
        #[serde(default)]
        message: String,
    }
    if !status.is_success() {
        let error = quick_xml::de::from_str::<ErrorResponse>(text).ok().map(|e| e.error);
        let throttled = error.as_ref().is_some_and(|e| matches!(e.code.as_str(), "Throttling" | "ThrottlingException"));
        return Err(CallFailure {
            retryable: throttled || status.is_server_error(),
            why: match error {
                Some(error) => format!("STS answered {status}: {}: {}", error.code, error.message),
                None => format!("STS answered {status}"),
            },
        });
    }
    let answer: Response = quick_xml::de::from_str(text)
        .map_err(|_| CallFailure::permanent("STS's answer holds no AssumeRole credentials".to_string()))?;
    let c = answer.assume_role_result.credentials;
    let expires = DateTime::parse_from_rfc3339(&c.expiration)
        .map_err(|e| CallFailure::permanent(format!("STS's `Expiration` is not an RFC 3339 time: {e}")))?
        .with_timezone(&Utc);
    Ok((
        AwsCredential { key_id: c.access_key_id, secret_key: c.secret_access_key, token: Some(c.session_token) },
        Some(expires),
    ))
}

/// Runs `command` with `sh -c` (as the AWS SDK for Rust does) and reads its credentials.
async fn run_process(command: &str, timeout: Duration) -> Result<(AwsCredential, Option<DateTime<Utc>>), String> {
    let child = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(command)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("cannot start `sh -c`: {e}"))?;
    let output = tokio::time::timeout(timeout, child.wait_with_output())
        .await
        .map_err(|_| format!("no answer within {timeout:?} (it was stopped)"))?
        .map_err(|e| format!("cannot read its output: {e}"))?;
    if !output.status.success() {
        let said = String::from_utf8_lossy(&output.stderr);
        let said: String = said.trim().chars().take(500).collect();
        return Err(format!(
            "it exited with {}{}",
            output.status,
            if said.is_empty() { String::new() } else { format!(": {said}") }
        ));
    }
    process_credentials(&output.stdout)
}

/// The SDKs' `credential_process` output: `{"Version": 1, "AccessKeyId", "SecretAccessKey",
/// "SessionToken"?, "Expiration"? (RFC 3339)}`. Errors never quote it (it holds the secret).
fn process_credentials(stdout: &[u8]) -> Result<(AwsCredential, Option<DateTime<Utc>>), String> {
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "PascalCase")]
    struct Output {
        version: Option<i64>,
        access_key_id: Option<String>,
        secret_access_key: Option<String>,
        session_token: Option<String>,
        expiration: Option<String>,
    }
    let output: Output = serde_json::from_slice(stdout).map_err(|e| {
        format!(
            "its output is not the credentials JSON ({} at line {} column {})",
            e.classify_kind(),
            e.line(),
            e.column()
        )
    })?;
    if output.version != Some(1) {
        return Err("its output's `Version` is not 1".into());
    }
    let (Some(key_id), Some(secret_key)) = (output.access_key_id, output.secret_access_key) else {
        return Err("its output lacks `AccessKeyId` or `SecretAccessKey`".into());
    };
    let expires = match output.expiration {
        Some(text) => Some(
            DateTime::parse_from_rfc3339(&text)
                .map_err(|e| format!("its output's `Expiration` is not an RFC 3339 time: {e}"))?
                .with_timezone(&Utc),
        ),
        None => None,
    };
    Ok((AwsCredential { key_id, secret_key, token: output.session_token }, expires))
}

/// `<SHA-1 of text, in lowercase hex>.json`: how the AWS CLI names its cache files (SSO tokens,
/// assumed roles' credentials).
fn sha1_json_file_name(text: &str) -> String {
    use sha1::Digest as _;
    let digest = sha1::Sha1::digest(text.as_bytes());
    let mut name: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    name.push_str(".json");
    name
}

/// The kind of a JSON error, without the text that caused it.
trait ClassifyKind {
    fn classify_kind(&self) -> &'static str;
}

impl ClassifyKind for serde_json::Error {
    fn classify_kind(&self) -> &'static str {
        match self.classify() {
            serde_json::error::Category::Io => "unreadable",
            serde_json::error::Category::Syntax => "malformed JSON",
            serde_json::error::Category::Data => "a value of the wrong type",
            serde_json::error::Category::Eof => "cut short",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use object_store::CredentialProvider;

    struct Files {
        dir: tempfile::TempDir,
    }

    impl Files {
        fn new(credentials: &str, config: &str) -> Self {
            let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
            std::fs::write(dir.path().join("credentials"), credentials).unwrap_or_else(|e| panic!("{e}"));
            std::fs::write(dir.path().join("config"), config).unwrap_or_else(|e| panic!("{e}"));
            Files { dir }
        }

        fn env(&self, profile: Option<&str>) -> ProfileEnvironment {
            ProfileEnvironment {
                profile: profile.map(str::to_string),
                profile_variable: "AWS_PROFILE",
                credentials_file: Some(self.dir.path().join("credentials")),
                config_file: Some(self.dir.path().join("config")),
                // Never AWS's: a closed port on this machine.
                sts_endpoint: Some("http://127.0.0.1:9".into()),
                region: None,
                sso_cache: Some(self.dir.path().join("sso")),
                cli_cache: Some(self.dir.path().join("cli")),
                sso_endpoint: Some("http://127.0.0.1:9".into()),
                sso_oidc_endpoint: Some("http://127.0.0.1:9".into()),
            }
        }
    }

    fn credential(env: &ProfileEnvironment) -> Result<AwsCredential, String> {
        let provider = SharedProfile::select(env).credentials.ok_or("no credentials")?;
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| e.to_string())?;
        let got = runtime.block_on(provider.get_credential()).map_err(|e| credential_error(&e))?;
        Ok(AwsCredential { key_id: got.key_id.clone(), secret_key: got.secret_key.clone(), token: got.token.clone() })
    }

    const AWS_CONFIGURE: &str = "\
# written by aws configure
[default]
aws_access_key_id = AKIDDEFAULT
aws_secret_access_key = default/secret+key

[lake]
aws_access_key_id=AKIDLAKE   ; the lake account
AWS_Secret_Access_Key = lake-secret
aws_session_token = lake-token
";

    const CONFIG: &str = "\
[default]
region = eu-west-1
s3 =
  max_concurrent_requests = 20

[profile lake]
region = us-west-2
[sso-session corp]
sso_region = us-east-1
[profile process]
credential_process = printf '{\"Version\": 1, \"AccessKeyId\": \"AKIDPROCESS\", \"SecretAccessKey\": \"s\"}'
";

    #[test]
    fn static_keys_and_the_region_come_from_the_selected_profile() {
        let files = Files::new(AWS_CONFIGURE, CONFIG);
        let default = credential(&files.env(None)).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            (default.key_id.as_str(), default.secret_key.as_str(), default.token),
            ("AKIDDEFAULT", "default/secret+key", None)
        );
        assert_eq!(SharedProfile::select(&files.env(None)).region.as_deref(), Some("eu-west-1"));
        let lake = credential(&files.env(Some("lake"))).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((lake.key_id.as_str(), lake.secret_key.as_str()), ("AKIDLAKE", "lake-secret"));
        assert_eq!(lake.token.as_deref(), Some("lake-token"));
        assert_eq!(SharedProfile::select(&files.env(Some("lake"))).region.as_deref(), Some("us-west-2"));
    }

    #[test]
    fn the_credentials_file_wins_and_a_process_runs_only_without_its_keys() {
        let config = "[profile p]\naws_access_key_id = AKIDCONFIG\naws_secret_access_key = c\ncredential_process = printf '{\"Version\":1,\"AccessKeyId\":\"AKIDPROCESS\",\"SecretAccessKey\":\"s\",\"SessionToken\":\"t\",\"Expiration\":\"2999-01-01T00:00:00Z\"}'\n";
        // The process beats static keys of the config file...
        let files = Files::new("", config);
        let c = credential(&files.env(Some("p"))).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((c.key_id.as_str(), c.token.as_deref()), ("AKIDPROCESS", Some("t")));
        // ...and static keys of the credentials file beat the process.
        let files = Files::new("[p]\naws_access_key_id = AKIDCREDS\naws_secret_access_key = k\n", config);
        assert_eq!(credential(&files.env(Some("p"))).unwrap_or_else(|e| panic!("{e}")).key_id, "AKIDCREDS");
        // Without a process, the config file's keys.
        let files = Files::new("", "[profile p]\naws_access_key_id = AKIDCONFIG\naws_secret_access_key = c\n");
        assert_eq!(credential(&files.env(Some("p"))).unwrap_or_else(|e| panic!("{e}")).key_id, "AKIDCONFIG");
    }

    #[test]
    fn a_profile_that_sets_no_credentials_leaves_them_to_the_rest_of_the_chain() {
        let files = Files::new("", CONFIG);
        let default = SharedProfile::select(&files.env(None));
        assert!(default.credentials.is_none());
        assert_eq!(default.region.as_deref(), Some("eu-west-1"));
        // No files at all, no AWS_PROFILE: nothing, and no error.
        let none = ProfileEnvironment::default();
        assert!(SharedProfile::select(&none).credentials.is_none());
        let missing = ProfileEnvironment {
            credentials_file: Some("/nonexistent/credentials".into()),
            config_file: Some("/nonexistent/config".into()),
            ..ProfileEnvironment::default()
        };
        assert!(SharedProfile::select(&missing).credentials.is_none());
    }

    #[test]
    fn a_process_prints_the_sdks_json_and_is_asked_again_only_when_it_expires() {
        let files = Files::new("", CONFIG);
        assert_eq!(credential(&files.env(Some("process"))).unwrap_or_else(|e| panic!("{e}")).key_id, "AKIDPROCESS");
        // A counter file shows how often the command ran.
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let count = dir.path().join("count");
        let script = |expiration: &str| {
            format!(
                "[profile p]\ncredential_process = echo x >> {c} && printf '{{\"Version\":1,\"AccessKeyId\":\"AKID\",\"SecretAccessKey\":\"s\",\"Expiration\":\"{expiration}\"}}'\n",
                c = count.display()
            )
        };
        let runs = |config: String| {
            let files = Files::new("", &config);
            let provider = SharedProfile::select(&files.env(Some("p"))).credentials.unwrap_or_else(|| panic!("none"));
            let runtime =
                tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap_or_else(|e| panic!("{e}"));
            let _ = std::fs::remove_file(&count);
            for _ in 0..3 {
                runtime.block_on(provider.get_credential()).unwrap_or_else(|e| panic!("{e}"));
            }
            std::fs::read_to_string(&count).unwrap_or_default().lines().count()
        };
        assert_eq!(runs(script("2999-01-01T00:00:00Z")), 1);
        // Expiring within five minutes: asked again each time.
        let soon = (Utc::now() + chrono::Duration::minutes(2)).to_rfc3339();
        assert_eq!(runs(script(&soon)), 3);
    }

    #[test]
    fn a_failing_or_malformed_process_is_an_error_that_never_quotes_its_output() {
        for (command, says) in [
            ("echo 'token expired, run aws sso login' >&2; exit 3", "exit status: 3: token expired, run aws sso login"),
            ("printf '{\"Version\":2,\"AccessKeyId\":\"A\",\"SecretAccessKey\":\"SECRET\"}'", "`Version` is not 1"),
            ("printf '{\"Version\":1,\"AccessKeyId\":\"A\"}'", "lacks `AccessKeyId` or `SecretAccessKey`"),
            ("printf 'SECRET-not-json'", "not the credentials JSON (malformed JSON at line 1"),
            (
                "printf '{\"Version\":1,\"AccessKeyId\":\"A\",\"SecretAccessKey\":\"SECRET\",\"Expiration\":\"tomorrow\"}'",
                "not an RFC 3339 time",
            ),
        ] {
            let files = Files::new("", &format!("[profile p]\ncredential_process = {command}\n"));
            let error = credential(&files.env(Some("p"))).err().unwrap_or_else(|| panic!("{command}: no error"));
            assert!(
                error.contains("`credential_process` of the AWS profile `p` failed") && error.contains(says),
                "{error}"
            );
            assert!(!error.contains("SECRET"), "{error}");
        }
    }

    #[test]
    fn unusable_profiles_say_why_and_what_to_do() {
        let cases = [
            (Some("nope"), "", "AWS_PROFILE is `nope`, but neither"),
            (
                Some("half"),
                "[half]\naws_access_key_id = AKID\n",
                "sets `aws_access_key_id` without `aws_secret_access_key`",
            ),
            (
                Some("role"),
                "[role]\nrole_arn = arn:aws:iam::1:role/r\nsource_profile = base\n",
                "`source_profile` `base` is in neither shared file",
            ),
            (
                Some("a"),
                "[a]\nrole_arn = arn:aws:iam::1:role/a\nsource_profile = b\n[b]\nrole_arn = arn:aws:iam::1:role/b\nsource_profile = a\n",
                "`source_profile` chain loops: a → b → a",
            ),
            (
                Some("both"),
                "[both]\nrole_arn = r\nsource_profile = x\ncredential_source = Environment\n",
                "sets both `source_profile` and `credential_source`",
            ),
            (Some("neither"), "[neither]\nrole_arn = r\n", "sets neither `source_profile` nor `credential_source`"),
            (
                Some("mfa"),
                "[mfa]\nrole_arn = r\nsource_profile = mfa\nmfa_serial = arn:aws:iam::1:mfa/me\n",
                "its role needs an MFA code (`mfa_serial`), which sluice cannot ask for, and the AWS CLI has cached no credentials for it",
            ),
            (
                Some("long"),
                "[long]\nrole_arn = r\nsource_profile = long\naws_access_key_id = A\naws_secret_access_key = s\nduration_seconds = 99999\n",
                "`duration_seconds` is 99999",
            ),
            (
                Some("bare"),
                "[bare]\nrole_arn = r\nsource_profile = empty\n[empty]\nregion = x\n",
                "`source_profile` `empty` sets no credentials",
            ),
            (Some("self"), "[self]\nrole_arn = r\nsource_profile = self\n", "its own `source_profile` but has no keys"),
            (
                Some("kind"),
                "[kind]\nrole_arn = r\ncredential_source = Lambda\n",
                "`credential_source` is `Lambda`, not Environment",
            ),
            (None, "[default]\nsso_session = corp\n", "IAM Identity Center (SSO): it sets no `sso_account_id`"),
            (None, "[default]\naws_access_key_id AKID\n", "credentials:2: a line that is neither"),
            (None, "aws_access_key_id = AKID\n", "credentials:1: a property before any profile line"),
            (None, "[default\n", "credentials:1: a profile line without its closing `]`"),
        ];
        for (profile, credentials, says) in cases {
            let files = Files::new(credentials, "");
            let error = credential(&files.env(profile)).err().unwrap_or_else(|| panic!("{credentials}: no error"));
            assert!(error.contains(says), "{credentials}: {error}");
        }
    }

    #[test]
    fn identity_center_profiles_missing_a_key_say_which() {
        let session = "[sso-session corp]\nsso_start_url = https://corp.awsapps.com/start\nsso_region = eu-west-1\n";
        let cases = [
            ("sso_session = corp\nsso_account_id = 1\n", "it sets no `sso_role_name`"),
            (
                "sso_session = other\nsso_account_id = 1\nsso_role_name = r\n",
                "its `sso_session` is `other`, but the config file has no `[sso-session other]`",
            ),
            (
                "sso_session = corp\nsso_account_id = 1\nsso_role_name = r\nsso_region = us-east-1\n",
                "its `sso_region` (us-east-1) is not its `[sso-session corp]`'s (eu-west-1)",
            ),
            (
                "sso_start_url = https://corp.awsapps.com/start\nsso_account_id = 1\nsso_role_name = r\n",
                "it sets no `sso_region`",
            ),
            // No `aws sso login` yet: no cache file.
            (
                "sso_session = corp\nsso_account_id = 1\nsso_role_name = r\n",
                "is missing): run `aws sso login --sso-session corp`",
            ),
        ];
        for (profile, says) in cases {
            let files = Files::new("", &format!("[profile p]\n{profile}\n{session}"));
            let error = credential(&files.env(Some("p"))).err().unwrap_or_else(|| panic!("{profile}: no error"));
            assert!(
                error.starts_with("the AWS profile `p` gets no credentials from IAM Identity Center (SSO): ")
                    && error.contains(says),
                "{profile}: {error}"
            );
        }
        let files = Files::new("", &format!("[profile s]\nsso_session = corp\n{session}"));
        let error = credential(&files.env(Some("s"))).err().unwrap_or_default();
        assert!(error.contains("it sets no `sso_account_id`"), "{error}");
    }

    /// Identity Center's two services as their API references describe them: `GetRoleCredentials`
    /// gives role credentials for a known bearer token (any other is `UnauthorizedException`), and
    /// `CreateToken` gives `new-token` for the refresh token `refresh-1` of client `client` (any
    /// other grant is `invalid_grant`); for the refresh token `refresh-unwritable` it answers the
    /// same after putting a folder where the file `unwritable` was (a cache the refreshed token
    /// cannot be written to, even by root). Returns its URL and the bearer tokens it was shown.
    fn identity_center(
        runtime: &tokio::runtime::Runtime,
        unwritable: PathBuf,
    ) -> (String, Arc<std::sync::Mutex<Vec<String>>>) {
        let shown = Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = Arc::clone(&shown);
        let app = axum::Router::new()
            .route(
                "/federation/credentials",
                axum::routing::get(
                    move |headers: axum::http::HeaderMap, uri: axum::http::Uri| {
                        let seen = Arc::clone(&seen);
                        async move {
                            let query: HashMap<String, String> =
                                url::form_urlencoded::parse(uri.query().unwrap_or_default().as_bytes()).into_owned().collect();
                            let token = headers
                                .get("x-amz-sso_bearer_token")
                                .and_then(|v| v.to_str().ok())
                                .unwrap_or_default()
                                .to_string();
                            seen.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push(token.clone());
                            let wanted = (query.get("account_id").map(String::as_str), query.get("role_name").map(String::as_str));
                            if !["old-token", "new-token"].contains(&token.as_str()) || wanted != (Some("123456789012"), Some("LakeWriter")) {
                                return (
                                    axum::http::StatusCode::UNAUTHORIZED,
                                    [("x-amzn-ErrorType", "UnauthorizedException:http://internal.amazon.com/coral/")],
                                    r#"{"message":"Session token not found or invalid"}"#.to_string(),
                                );
                            }
                            let expiration = (Utc::now() + chrono::Duration::hours(1)).timestamp_millis();
                            let answer = format!(
                                r#"{{"roleCredentials":{{"accessKeyId":"ASIA-{token}","secretAccessKey":"s","sessionToken":"t","expiration":{expiration}}}}}"#
                            );
                            (axum::http::StatusCode::OK, [("x-amzn-ErrorType", "")], answer)
                        }
                    },
                ),
            )
            .route(
                "/token",
                axum::routing::post(move |body: axum::body::Bytes| async move {
                    let grant: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
                    let field = |k: &str| grant.get(k).and_then(|v| v.as_str()).unwrap_or_default().to_string();
                    let mut refresh = field("refreshToken");
                    if refresh == "refresh-unwritable" {
                        let _ = std::fs::remove_file(&unwritable);
                        std::fs::create_dir_all(unwritable.join("blocked")).unwrap_or_else(|e| panic!("{e}"));
                        refresh = "refresh-1".into();
                    }
                    if (field("clientId"), field("clientSecret"), field("grantType"), refresh)
                        != ("client".into(), "client-secret".into(), "refresh_token".into(), "refresh-1".into())
                    {
                        return (
                            axum::http::StatusCode::BAD_REQUEST,
                            r#"{"error":"invalid_grant","error_description":"Invalid refresh token provided"}"#,
                        );
                    }
                    (
                        axum::http::StatusCode::OK,
                        r#"{"accessToken":"new-token","expiresIn":28800,"refreshToken":"refresh-2","tokenType":"Bearer"}"#,
                    )
                }),
            );
        let listener = runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap_or_else(|e| panic!("{e}"));
        let address = listener.local_addr().unwrap_or_else(|e| panic!("{e}"));
        runtime.spawn(async move { axum::serve(listener, app).await });
        (format!("http://{address}"), shown)
    }

    #[test]
    fn identity_center_tokens_are_exchanged_for_role_credentials_and_refreshed_when_due() {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap_or_else(|e| panic!("{e}"));
        let config = "[profile lake]\nsso_session = corp\nsso_account_id = 123456789012\nsso_role_name = LakeWriter\nregion = eu-west-1\n\n\
                      [sso-session corp]\nsso_start_url = https://corp.awsapps.com/start\nsso_region = eu-west-1\n\n\
                      [profile old]\nsso_start_url = https://corp.awsapps.com/start\nsso_region = eu-west-1\nsso_account_id = 123456789012\nsso_role_name = LakeWriter\n";
        let files = Files::new("", config);
        let cache = files.dir.path().join("sso");
        std::fs::create_dir_all(&cache).unwrap_or_else(|e| panic!("{e}"));
        let session_file = cache.join(sso::token_file_name("corp"));
        let (center, shown) = identity_center(&runtime, session_file.clone());
        let env = ProfileEnvironment {
            sso_endpoint: Some(center.clone()),
            sso_oidc_endpoint: Some(center.clone()),
            ..files.env(Some("lake"))
        };
        let in_minutes =
            |m: i64| (Utc::now() + chrono::Duration::minutes(m)).to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        let write = |token: &str, expires: &str, refresh: &str| {
            let json = format!(
                r#"{{"startUrl":"https://corp.awsapps.com/start","region":"eu-west-1","accessToken":"{token}","expiresAt":"{expires}","clientId":"client","clientSecret":"client-secret","registrationExpiresAt":"{}","refreshToken":"{refresh}"}}"#,
                in_minutes(60 * 24 * 60)
            );
            std::fs::write(&session_file, json).unwrap_or_else(|e| panic!("{e}"));
        };
        let token_file = || -> serde_json::Value {
            serde_json::from_slice(&std::fs::read(&session_file).unwrap_or_default()).unwrap_or_default()
        };
        let take_shown = || std::mem::take(&mut *shown.lock().unwrap_or_else(std::sync::PoisonError::into_inner));

        // A token valid for an hour: used as it is, the file untouched.
        write("old-token", &in_minutes(60), "refresh-1");
        assert_eq!(credential(&env).unwrap_or_else(|e| panic!("{e}")).key_id, "ASIA-old-token");
        assert_eq!(
            (take_shown(), token_file()["accessToken"].as_str()),
            (vec!["old-token".to_string()], Some("old-token"))
        );

        // Two minutes left: refreshed first, the new token written back with the rest kept.
        write("old-token", &in_minutes(2), "refresh-1");
        let c = credential(&env).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((c.key_id.as_str(), c.token.as_deref()), ("ASIA-new-token", Some("t")));
        assert_eq!(take_shown(), ["new-token"]);
        let saved = token_file();
        assert_eq!(
            (saved["accessToken"].as_str(), saved["refreshToken"].as_str(), saved["startUrl"].as_str()),
            (Some("new-token"), Some("refresh-2"), Some("https://corp.awsapps.com/start"))
        );
        let expires = saved["expiresAt"].as_str().and_then(|t| DateTime::parse_from_rfc3339(t).ok());
        assert!(expires.is_some_and(|t| (t.timestamp() - (Utc::now().timestamp() + 28_800)).abs() < 60), "{saved}");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&session_file).map(|m| m.permissions().mode() & 0o777).unwrap_or_default();
            assert_eq!(mode, 0o600);
        }

        // Refreshed, but the cache cannot take the new token (a folder stands where its file was):
        // the new token is used all the same (OIDC may have rotated the refresh token the file
        // holds), and nothing is written.
        write("old-token", &in_minutes(2), "refresh-unwritable");
        let c = credential(&env).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.key_id, "ASIA-new-token");
        assert_eq!(take_shown(), ["new-token"]);
        assert!(session_file.join("blocked").is_dir(), "the folder is left as it was");
        std::fs::remove_dir_all(&session_file).unwrap_or_else(|e| panic!("{e}"));

        // Two minutes left and the refresh refused: the still valid token is used.
        write("old-token", &in_minutes(2), "revoked");
        assert_eq!(credential(&env).unwrap_or_else(|e| panic!("{e}")).key_id, "ASIA-old-token");
        assert_eq!(take_shown(), ["old-token"]);

        // Expired and the refresh refused: log in again.
        write("old-token", &in_minutes(-1), "revoked");
        let error = credential(&env).err().unwrap_or_default();
        assert!(
            error.contains("its token expired at")
                && error.contains("could not be refreshed (SSO OIDC answered 400 Bad Request: invalid_grant: Invalid refresh token provided)")
                && error.ends_with("run `aws sso login --sso-session corp`"),
            "{error}"
        );
        // A token Identity Center no longer knows.
        write("forgotten-token", &in_minutes(60), "refresh-1");
        let error = credential(&env).err().unwrap_or_default();
        assert!(
            error.contains(
                "UnauthorizedException: Session token not found or invalid: run `aws sso login --sso-session corp`"
            ),
            "{error}"
        );
        // Refused, not tried again; the expired token before it was never sent.
        assert_eq!(take_shown(), ["forgotten-token"]);

        // The older form: its cache file is named by the start URL, and it is never refreshed.
        let old_file = cache.join(sso::token_file_name("https://corp.awsapps.com/start"));
        let old = ProfileEnvironment { profile: Some("old".into()), ..env.clone() };
        std::fs::write(&old_file, format!(r#"{{"accessToken":"old-token","expiresAt":"{}"}}"#, in_minutes(60)))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(credential(&old).unwrap_or_else(|e| panic!("{e}")).key_id, "ASIA-old-token");
        std::fs::write(
            &old_file,
            format!(
                r#"{{"accessToken":"old-token","expiresAt":"{}","refreshToken":"refresh-1","clientId":"client","clientSecret":"client-secret","registrationExpiresAt":"{}"}}"#,
                in_minutes(-1),
                in_minutes(600)
            ),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let error = credential(&old).err().unwrap_or_default();
        assert!(
            error.contains("its token expired at") && error.ends_with("run `aws sso login --profile old`"),
            "{error}"
        );
        assert!(!error.contains("secret") && !error.contains("refresh-1") && !error.contains("old-token"), "{error}");
    }

    #[test]
    fn a_web_identity_profile_asks_sts_unsigned_with_the_token_its_file_holds() {
        let files = Files::new("", "");
        let token = files.dir.path().join("token");
        std::fs::write(&token, "eyJ.token.sig\n").unwrap_or_else(|e| panic!("{e}"));
        let config = format!(
            "[profile pod]\nrole_arn = arn:aws:iam::1:role/r\nweb_identity_token_file = {}\nsource_profile = ignored\nexternal_id = x\n",
            token.display()
        );
        std::fs::write(files.dir.path().join("config"), config).unwrap_or_else(|e| panic!("{e}"));
        // The token wins over `source_profile` (botocore's order), and the form is the web identity one.
        let provider = AssumeRoleProvider {
            profile: "pod".into(),
            source: RoleSource::WebIdentity(token.clone()),
            role_arn: "arn:aws:iam::1:role/r".into(),
            session_name: "s".into(),
            external_id: Some("x".into()),
            duration: 3600,
            region: "eu-west-1".into(),
            endpoint: reqwest::Url::parse("http://127.0.0.1:9/").unwrap_or_else(|e| panic!("{e}")),
            client: sts_client(Duration::from_millis(300)).unwrap_or_else(|e| panic!("{e}")),
            cached: Cached::default(),
        };
        let form: HashMap<String, String> =
            url::form_urlencoded::parse(&provider.request_body(Some("eyJ.token.sig"))).into_owned().collect();
        let field = |k: &str| form.get(k).map(String::as_str);
        assert_eq!(
            (field("Action"), field("WebIdentityToken"), field("RoleArn"), field("ExternalId")),
            (Some("AssumeRoleWithWebIdentity"), Some("eyJ.token.sig"), Some("arn:aws:iam::1:role/r"), None)
        );
        // Selected from the files: STS is asked (a closed port here), not the `source_profile`.
        let error = credential(&files.env(Some("pod"))).err().unwrap_or_default();
        assert!(
            error.contains("names a role") && error.contains("STS at http://127.0.0.1:9/ did not answer"),
            "{error}"
        );
        // A token file that is not there says so.
        std::fs::remove_file(&token).unwrap_or_else(|e| panic!("{e}"));
        let error = credential(&files.env(Some("pod"))).err().unwrap_or_default();
        assert!(error.contains("cannot read its `web_identity_token_file`"), "{error}");
    }

    /// A `credential_process` that never answers is stopped at its time limit (killed, not left
    /// behind) and its profile's credentials are an error that says so.
    #[test]
    fn a_process_that_hangs_is_stopped_at_its_limit() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let pid_file = dir.path().join("pid");
        let provider = ProcessProvider {
            profile: "hung".into(),
            command: format!("echo $$ > {} && exec sleep 30", pid_file.display()),
            timeout: Duration::from_millis(300),
            cached: Cached::default(),
        };
        let runtime =
            tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap_or_else(|e| panic!("{e}"));
        let started = std::time::Instant::now();
        let error = runtime.block_on(provider.get_credential()).err().map(|e| credential_error(&e)).unwrap_or_default();
        assert!(error.contains("`hung` failed: no answer within 300ms (it was stopped)"), "{error}");
        assert!(started.elapsed() < Duration::from_secs(5));
        let pid = std::fs::read_to_string(&pid_file).unwrap_or_default().trim().to_string();
        let gone = (0..50).any(|_| {
            std::thread::sleep(Duration::from_millis(20));
            !std::path::Path::new(&format!("/proc/{pid}")).exists()
                || std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| s.contains(") Z "))
        });
        assert!(!pid.is_empty() && gone, "process {pid} left running");
    }

    /// An STS that accepts the connection and never answers: each request ends at the client's
    /// limit, is tried [`STS_ATTEMPTS`] times, and the role is an error saying STS did not answer.
    #[test]
    fn an_sts_that_never_answers_is_tried_three_times_then_reported() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("{e}"));
        let address = listener.local_addr().unwrap_or_else(|e| panic!("{e}"));
        let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = Arc::clone(&accepted);
        std::thread::spawn(move || {
            let mut held = Vec::new();
            for socket in listener.incoming().flatten() {
                counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                held.push(socket); // read nothing, answer nothing
            }
        });
        let source = AwsCredential { key_id: "AKIDSOURCE".into(), secret_key: "s".into(), token: None };
        let provider = AssumeRoleProvider {
            profile: "slow".into(),
            source: RoleSource::Signed(Arc::new(StaticCredentialProvider::new(source))),
            role_arn: "arn:aws:iam::123456789012:role/r".into(),
            session_name: "s".into(),
            external_id: None,
            duration: 3600,
            region: "eu-west-1".into(),
            endpoint: reqwest::Url::parse(&format!("http://{address}/")).unwrap_or_else(|e| panic!("{e}")),
            client: sts_client(Duration::from_millis(300)).unwrap_or_else(|e| panic!("{e}")),
            cached: Cached::default(),
        };
        let runtime =
            tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap_or_else(|e| panic!("{e}"));
        let error = runtime.block_on(provider.get_credential()).err().map(|e| credential_error(&e)).unwrap_or_default();
        assert!(error.contains("the AWS profile `slow` names a role") && error.contains("did not answer"), "{error}");
        assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), STS_ATTEMPTS as usize);
    }

    #[test]
    fn sts_is_asked_in_the_profiles_region_and_partition() {
        assert_eq!(sts_endpoint("eu-west-1"), "https://sts.eu-west-1.amazonaws.com");
        assert_eq!(sts_endpoint("us-gov-west-1"), "https://sts.us-gov-west-1.amazonaws.com");
        assert_eq!(sts_endpoint("cn-north-1"), "https://sts.cn-north-1.amazonaws.com.cn");
    }

    #[test]
    fn sts_answers_are_read_as_the_sts_api_reference_shows_them() {
        // The AssumeRole response of the STS API reference (AssumedRoleUser's details shortened).
        let answer = r#"<AssumeRoleResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/">
  <AssumeRoleResult>
    <SourceIdentity>Alice</SourceIdentity>
    <AssumedRoleUser><Arn>arn:aws:sts::123456789012:assumed-role/demo/TestAR</Arn><AssumedRoleId>ARO123EXAMPLE123:TestAR</AssumedRoleId></AssumedRoleUser>
    <Credentials>
      <AccessKeyId>ASIAIOSFODNN7EXAMPLE</AccessKeyId>
      <SecretAccessKey>wJalrXUtnFEMI/K7MDENG/bPxRfiCYzEXAMPLEKEY</SecretAccessKey>
      <SessionToken>AQoDYXdzEPT//////////wEXAMPLEtc764</SessionToken>
      <Expiration>2019-11-09T13:34:41Z</Expiration>
    </Credentials>
    <PackedPolicySize>6</PackedPolicySize>
  </AssumeRoleResult>
  <ResponseMetadata><RequestId>c6104cbe-af31-11e0-8154-cbc7ccf896c7</RequestId></ResponseMetadata>
</AssumeRoleResponse>"#;
        let (c, expires) = assumed_credentials(reqwest::StatusCode::OK, answer).unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!(
            (c.key_id.as_str(), c.secret_key.as_str()),
            ("ASIAIOSFODNN7EXAMPLE", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYzEXAMPLEKEY")
        );
        assert_eq!(c.token.as_deref(), Some("AQoDYXdzEPT//////////wEXAMPLEtc764"));
        assert_eq!(expires.map(|e| e.to_rfc3339()), Some("2019-11-09T13:34:41+00:00".to_string()));
        let refused = r#"<ErrorResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/">
  <Error><Type>Sender</Type><Code>AccessDenied</Code><Message>User: arn:aws:iam::1:user/u is not authorized to perform: sts:AssumeRole</Message></Error>
  <RequestId>4a3f0c0e</RequestId>
</ErrorResponse>"#;
        let error =
            assumed_credentials(reqwest::StatusCode::FORBIDDEN, refused).err().map(|e| e.why).unwrap_or_default();
        assert_eq!(
            error,
            "STS answered 403 Forbidden: AccessDenied: User: arn:aws:iam::1:user/u is not authorized to perform: sts:AssumeRole"
        );
        let error = assumed_credentials(reqwest::StatusCode::OK, "<html/>").err();
        assert_eq!(error, Some(CallFailure::permanent("STS's answer holds no AssumeRole credentials".into())));
        // Throttling and STS's own failures are worth another attempt; a refusal is not.
        let throttled = "<ErrorResponse><Error><Type>Sender</Type><Code>Throttling</Code><Message>Rate exceeded</Message></Error></ErrorResponse>";
        let retryable = |status: u16, text: &str| {
            let status = reqwest::StatusCode::from_u16(status).unwrap_or_default();
            assumed_credentials(status, text).err().is_some_and(|e| e.retryable)
        };
        assert!(retryable(400, throttled));
        assert!(retryable(503, ""));
        assert!(!retryable(403, refused));
        assert!(!retryable(400, "<ErrorResponse><Error><Code>ValidationError</Code></Error></ErrorResponse>"));
    }

    #[test]
    fn profiles_of_the_config_file_are_named_with_profile_and_comments_are_skipped() {
        let config = "; comment\n[profile  spaced ]  # trailing\nregion = ap-south-1 # why\n[lake]\nregion = wrong\n";
        let files = Files::new("", config);
        assert_eq!(SharedProfile::select(&files.env(Some("spaced"))).region.as_deref(), Some("ap-south-1"));
        // `[lake]` is not a profile in the config file (it would be `[profile lake]`).
        let lake = SharedProfile::select(&files.env(Some("lake")));
        let error = credential(&files.env(Some("lake"))).err().unwrap_or_default();
        assert!(lake.region.is_none() && error.contains("`[profile lake]`"), "{error}");
    }

    proptest::proptest! {
        /// Whatever the shared files hold (fragments of profile lines, properties, comments and
        /// continuations in any order, any bytes), selecting a profile answers without panicking,
        /// and asking its credentials gives them or an error (no process is run: none is named).
        #[test]
        fn any_shared_file_is_read_or_refused_without_panicking(
            lines in proptest::collection::vec(proptest::sample::select(vec![
                "[default]", "[profile p]", "[p]", "[profile", "[sso-session s]", "]", "", "  indented = 1",
                "aws_access_key_id = AKID", "aws_secret_access_key = s", "region = eu-west-1 # c",
                "role_arn = arn:aws:iam::1:role/r", "source_profile = p", "source_profile = default",
                "credential_source = Environment", "duration_seconds = 7", "; comment", "# comment",
                "key", "= value", "é = ü", "aws_session_token = t ;x",
            ]), 0..12),
            profile in proptest::option::of(proptest::sample::select(vec!["default", "p", "q"])),
            in_credentials in proptest::bool::ANY,
        ) {
            let text = lines.join("\n");
            let files = if in_credentials { Files::new(&text, "") } else { Files::new("", &text) };
            let env = files.env(profile);
            let chosen = SharedProfile::select(&env);
            if chosen.credentials.is_some() {
                let _ = credential(&env);
            }
        }
    }
}

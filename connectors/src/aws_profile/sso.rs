//! IAM Identity Center (SSO) credentials of a shared-config profile, obtained as the AWS SDKs
//! obtain them after `aws sso login`:
//!
//! ```ini
//! [profile lake]                     # the newer form: a session shared by profiles
//! sso_session = corp
//! sso_account_id = 123456789012
//! sso_role_name = LakeWriter
//!
//! [sso-session corp]
//! sso_start_url = https://corp.awsapps.com/start
//! sso_region = eu-west-1
//!
//! [profile old]                      # the older form: everything in the profile
//! sso_start_url = https://corp.awsapps.com/start
//! sso_region = eu-west-1
//! sso_account_id = 123456789012
//! sso_role_name = LakeWriter
//! ```
//!
//! The access token is read from the CLI's cache, `~/.aws/sso/cache/<SHA-1 of the session name,
//! or of the start URL in the older form>.json`, and exchanged for the role's credentials with
//! Identity Center's `GetRoleCredentials` (`GET /federation/credentials` at
//! `portal.sso.<sso_region>.amazonaws.com`, or `AWS_ENDPOINT_URL_SSO`), which are asked again five
//! minutes before they expire.
//!
//! Guarantees: a session's token (the newer form) is refreshed as the SDKs do, with SSO OIDC's
//! `CreateToken` (`grant_type` `refresh_token`, at `oidc.<sso_region>.amazonaws.com` or
//! `AWS_ENDPOINT_URL_SSO_OIDC`) when it expires within five minutes, its client registration has
//! not expired, and no refresh was tried in the last 30 s; the refreshed token is written back to
//! the cache file (replaced whole, readable by its owner only), so the CLI and every SDK see it. A
//! refresh that fails while the token is still valid leaves the token in use. A token that has
//! expired and cannot be refreshed, a missing cache file, or a profile missing one of the keys is
//! an error that says what to run or write (`aws sso login --sso-session corp`). Tokens, refresh
//! tokens, client secrets and credentials never appear in errors, logs or `Debug` output.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use object_store::aws::{AwsCredential, AwsCredentialProvider};

use crate::aws_error::ErrorAnswer;

use super::{
    Cached, CallFailure, ClassifyKind, Profile, ProfileEnvironment, ProfileError, Profiles, REFRESH_BEFORE_EXPIRY,
    STS_TIMEOUT, retried, sts_client,
};

/// The shortest time between two refreshes of one token (the SDKs').
const MIN_TIME_BETWEEN_REFRESHES: Duration = Duration::from_secs(30);

/// The provider of an Identity Center profile, or why the profile cannot be used as written.
pub(super) fn provider(
    profile: &Profile,
    profiles: &Profiles,
    env: &ProfileEnvironment,
) -> Result<AwsCredentialProvider, ProfileError> {
    let error = |why: String| ProfileError::Sso { name: profile.name.clone(), why };
    let needed = |key: &str| {
        profile.get(key).map(str::to_string).ok_or_else(|| {
            error(format!("it sets no `{key}` (an Identity Center profile needs `sso_account_id` and `sso_role_name`)"))
        })
    };
    let (account_id, role_name) = (needed("sso_account_id")?, needed("sso_role_name")?);
    let (session, start_url, region) = match profile.get("sso_session") {
        Some(session) => {
            let Some(section) = profiles.sso_sessions.get(session) else {
                return Err(error(format!(
                    "its `sso_session` is `{session}`, but the config file has no `[sso-session {session}]`"
                )));
            };
            let from_session = |key: &str| {
                let value = section
                    .get(key)
                    .filter(|v| !v.is_empty())
                    .ok_or_else(|| error(format!("`[sso-session {session}]` sets no `{key}`")))?;
                // The profile may repeat the session's keys, but not contradict them.
                match profile.get(key) {
                    Some(own) if own != value => Err(error(format!(
                        "its `{key}` ({own}) is not its `[sso-session {session}]`'s ({value}); remove it from the profile"
                    ))),
                    _ => Ok(value.clone()),
                }
            };
            let start_url = from_session("sso_start_url")?;
            let region = from_session("sso_region")?;
            (Some(session.to_string()), start_url, region)
        }
        None => (None, needed("sso_start_url")?, needed("sso_region")?),
    };
    let Some(cache) = &env.sso_cache else {
        return Err(error("HOME is not set, so the token cache (~/.aws/sso/cache) cannot be found".into()));
    };
    let endpoint = |given: &Option<String>, host: &str| {
        let url = given
            .clone()
            .filter(|e| !e.is_empty())
            .unwrap_or_else(|| crate::aws_endpoint::service_endpoint(host, &region));
        reqwest::Url::parse(&url).map_err(|e| error(format!("the endpoint {url} is not a URL: {e}")))
    };
    let portal = endpoint(&env.sso_endpoint, "portal.sso")?;
    let oidc = endpoint(&env.sso_oidc_endpoint, "oidc")?;
    let identifier = session.as_deref().unwrap_or(&start_url);
    Ok(Arc::new(SsoProvider {
        profile: profile.name.clone(),
        token_file: cache.join(token_file_name(identifier)),
        account_id,
        role_name,
        session,
        portal,
        oidc,
        client: sts_client(STS_TIMEOUT).map_err(error)?,
        last_refresh: std::sync::Mutex::new(None),
        cached: Cached::default(),
    }))
}

/// The cache file's name for a session name (or an older profile's start URL): its SHA-1 in
/// lower-case hex, `.json`.
pub(super) fn token_file_name(identifier: &str) -> String {
    super::sha1_json_file_name(identifier)
}

/// An Identity Center profile's credentials.
struct SsoProvider {
    profile: String,
    account_id: String,
    role_name: String,
    /// The `sso_session` (whose tokens are refreshed); `None` for the older form.
    session: Option<String>,
    token_file: PathBuf,
    portal: reqwest::Url,
    oidc: reqwest::Url,
    /// Requests bounded by [`STS_TIMEOUT`], no redirects.
    client: reqwest::Client,
    last_refresh: std::sync::Mutex<Option<Instant>>,
    cached: Cached,
}

impl std::fmt::Debug for SsoProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SsoProvider")
            .field("profile", &self.profile)
            .field("account_id", &self.account_id)
            .field("role_name", &self.role_name)
            .finish_non_exhaustive()
    }
}

#[async_trait::async_trait]
impl object_store::CredentialProvider for SsoProvider {
    type Credential = AwsCredential;
    async fn get_credential(&self) -> object_store::Result<Arc<AwsCredential>> {
        let obtain = async {
            let token = self.token().await.map_err(|why| ProfileError::Sso { name: self.profile.clone(), why })?;
            retried(&self.profile, "GetRoleCredentials", || self.role_credentials(&token))
                .await
                .map_err(|why| ProfileError::Sso { name: self.profile.clone(), why })
        };
        self.cached.get(obtain).await
    }
}

/// The CLI's token cache file (the fields sluice reads; the others are kept as they are when it is
/// written back).
#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct CachedToken {
    access_token: String,
    expires_at: String,
    refresh_token: Option<String>,
    client_id: Option<String>,
    client_secret: Option<String>,
    registration_expires_at: Option<String>,
}

impl SsoProvider {
    /// What to run for a new token.
    fn login(&self) -> String {
        match &self.session {
            Some(session) => format!("run `aws sso login --sso-session {session}`"),
            None => format!("run `aws sso login --profile {}`", self.profile),
        }
    }

    /// The cached access token, refreshed first when it expires soon and can be.
    async fn token(&self) -> Result<String, String> {
        let file = &self.token_file;
        let bytes = match tokio::fs::read(file).await {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(format!("no token is cached for it ({} is missing): {}", file.display(), self.login()));
            }
            Err(e) => return Err(format!("cannot read its cached token {}: {e}", file.display())),
        };
        let token: CachedToken = serde_json::from_slice(&bytes).map_err(|e| {
            format!(
                "its cached token {} is not the CLI's JSON ({} at line {} column {}): {}",
                file.display(),
                e.classify_kind(),
                e.line(),
                e.column(),
                self.login()
            )
        })?;
        let expires = rfc3339(&token.expires_at)
            .map_err(|e| format!("its cached token's `expiresAt` is not an RFC 3339 time ({e}): {}", self.login()))?;
        let now = Utc::now();
        if now + REFRESH_BEFORE_EXPIRY >= expires
            && let Some(refresh) = self.refreshable(&token, now)
        {
            match self.refresh(&token, refresh, now).await {
                Ok(access_token) => return Ok(access_token),
                Err(why) if now < expires => {
                    tracing::warn!(profile = %self.profile, "the SSO token could not be refreshed (still valid, used): {why}");
                }
                Err(why) => {
                    return Err(format!(
                        "its token expired at {expires} and could not be refreshed ({why}): {}",
                        self.login()
                    ));
                }
            }
        }
        if now >= expires {
            return Err(format!("its token expired at {expires}: {}", self.login()));
        }
        Ok(token.access_token)
    }

    /// What a refresh of `token` needs, when it may be tried now: a session's token with its
    /// client's registration unexpired, and no refresh tried in the last 30 s.
    fn refreshable<'t>(&self, token: &'t CachedToken, now: DateTime<Utc>) -> Option<RefreshGrant<'t>> {
        self.session.as_ref()?;
        let registered_until = rfc3339(token.registration_expires_at.as_deref()?).ok()?;
        if registered_until <= now {
            return None;
        }
        let mut last = self.last_refresh.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if last.is_some_and(|at| at.elapsed() < MIN_TIME_BETWEEN_REFRESHES) {
            return None;
        }
        let grant = RefreshGrant {
            client_id: token.client_id.as_deref()?,
            client_secret: token.client_secret.as_deref()?,
            refresh_token: token.refresh_token.as_deref()?,
        };
        *last = Some(Instant::now());
        Some(grant)
    }

    /// SSO OIDC's `CreateToken` with the refresh token; the new access token, written to the cache.
    async fn refresh(
        &self,
        token: &CachedToken,
        grant: RefreshGrant<'_>,
        now: DateTime<Utc>,
    ) -> Result<String, String> {
        #[derive(serde::Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Created {
            access_token: String,
            expires_in: i64,
            refresh_token: Option<String>,
        }
        let body = serde_json::json!({
            "clientId": grant.client_id,
            "clientSecret": grant.client_secret,
            "grantType": "refresh_token",
            "refreshToken": grant.refresh_token,
        });
        let url = join(&self.oidc, "token");
        let response = self
            .client
            .post(url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body.to_string())
            .send()
            .await
            .map_err(|e| format!("SSO OIDC at {} did not answer: {}", self.oidc, sluice_engine::redact::error(&e)))?;
        let (status, headers) = (response.status(), response.headers().clone());
        let text = response.bytes().await.map_err(|e| format!("SSO OIDC's answer was cut short: {e}"))?;
        if !status.is_success() {
            return Err(format!(
                "SSO OIDC answered {status}{}",
                ErrorAnswer::read(&headers, &text, "error", "error_description").suffix()
            ));
        }
        let created: Created = serde_json::from_slice(&text)
            .map_err(|e| format!("SSO OIDC's answer holds no token ({})", e.classify_kind()))?;
        if created.expires_in <= 0 {
            return Err("SSO OIDC's `expiresIn` is not a positive number of seconds".into());
        }
        let expires_at = now + chrono::Duration::seconds(created.expires_in);
        // The new token is used even when the cache cannot take it: OIDC may have rotated the
        // refresh token, so the one in the file may no longer work, and failing would lose both.
        if let Err(why) = self.write_back(token, &created.access_token, expires_at, created.refresh_token.as_deref()) {
            tracing::warn!(profile = %self.profile, "the refreshed SSO token is used but not cached: {why}");
        }
        Ok(created.access_token)
    }

    /// Rewrites the cache file with the refreshed token (its other fields as they were), replacing
    /// it whole so a reader never sees half of it.
    fn write_back(
        &self,
        token: &CachedToken,
        access_token: &str,
        expires_at: DateTime<Utc>,
        refresh_token: Option<&str>,
    ) -> Result<(), String> {
        use std::io::Write;
        let file = &self.token_file;
        let cannot = |e: std::io::Error| format!("cannot write the refreshed token to {}: {e}", file.display());
        let mut fields: serde_json::Map<String, serde_json::Value> =
            std::fs::read(file).ok().and_then(|bytes| serde_json::from_slice(&bytes).ok()).unwrap_or_default();
        fields.insert("accessToken".into(), access_token.into());
        fields.insert("expiresAt".into(), expires_at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true).into());
        let refresh_token = refresh_token.or(token.refresh_token.as_deref());
        if let Some(refresh_token) = refresh_token {
            fields.insert("refreshToken".into(), refresh_token.into());
        }
        let bytes = serde_json::to_vec(&fields).map_err(|e| format!("cannot encode the refreshed token: {e}"))?;
        let folder = file.parent().unwrap_or(std::path::Path::new("."));
        let mut staged = tempfile::NamedTempFile::new_in(folder).map_err(cannot)?;
        staged.write_all(&bytes).map_err(cannot)?;
        staged.as_file().sync_all().map_err(cannot)?;
        staged.persist(file).map_err(|e| cannot(e.error))?;
        Ok(())
    }

    /// Identity Center's `GetRoleCredentials` for the profile's account and role.
    async fn role_credentials(&self, token: &str) -> Result<(AwsCredential, Option<DateTime<Utc>>), CallFailure> {
        let mut url = join(&self.portal, "federation/credentials");
        url.query_pairs_mut().append_pair("account_id", &self.account_id).append_pair("role_name", &self.role_name);
        let response = self.client.get(url).header("x-amz-sso_bearer_token", token).send().await.map_err(|e| {
            CallFailure::retryable(format!(
                "Identity Center at {} did not answer: {}",
                self.portal,
                sluice_engine::redact::error(&e)
            ))
        })?;
        let (status, headers) = (response.status(), response.headers().clone());
        let text = response
            .bytes()
            .await
            .map_err(|e| CallFailure::retryable(format!("Identity Center's answer was cut short: {e}")))?;
        role_credentials(status, &headers, &text, || self.login())
    }
}

/// What [`SsoProvider::refresh`] sends.
struct RefreshGrant<'t> {
    client_id: &'t str,
    client_secret: &'t str,
    refresh_token: &'t str,
}

/// The credentials in a `GetRoleCredentials` answer, or its error: retryable when Identity Center
/// throttled (429, `TooManyRequestsException`) or failed (5xx); a refused token
/// (`UnauthorizedException`) says to log in again (`login`).
fn role_credentials(
    status: reqwest::StatusCode,
    headers: &reqwest::header::HeaderMap,
    text: &[u8],
    login: impl Fn() -> String,
) -> Result<(AwsCredential, Option<DateTime<Utc>>), CallFailure> {
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Answer {
        role_credentials: RoleCredentials,
    }
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct RoleCredentials {
        access_key_id: String,
        secret_access_key: String,
        session_token: Option<String>,
        /// Milliseconds since the epoch.
        expiration: i64,
    }
    if !status.is_success() {
        let mut why = format!(
            "Identity Center answered {status}{}",
            ErrorAnswer::read(headers, text, "__type", "message").suffix()
        );
        if status == reqwest::StatusCode::UNAUTHORIZED {
            why = format!("{why}: {}", login());
        }
        let retryable = status == reqwest::StatusCode::TOO_MANY_REQUESTS || status.is_server_error();
        return Err(CallFailure { retryable, why });
    }
    let answer: Answer = serde_json::from_slice(text).map_err(|e| {
        CallFailure::permanent(format!("Identity Center's answer holds no role credentials ({})", e.classify_kind()))
    })?;
    let c = answer.role_credentials;
    let expires = DateTime::from_timestamp_millis(c.expiration)
        .ok_or_else(|| CallFailure::permanent("Identity Center's `expiration` is not a time".into()))?;
    Ok((
        AwsCredential { key_id: c.access_key_id, secret_key: c.secret_access_key, token: c.session_token },
        Some(expires),
    ))
}

/// `base` with `path` after its own path (an endpoint may have one).
fn join(base: &reqwest::Url, path: &str) -> reqwest::Url {
    let mut url = base.clone();
    let joined = format!("{}/{path}", base.path().trim_end_matches('/'));
    url.set_path(&joined);
    url
}

/// A cache file's time: RFC 3339, or as early AWS CLI v2 releases wrote `expiresAt`
/// (`2019-11-14T04:05:45UTC`), which botocore still reads.
pub(super) fn rfc3339(text: &str) -> Result<DateTime<Utc>, chrono::ParseError> {
    let text = match text.strip_suffix("UTC") {
        Some(time) => std::borrow::Cow::Owned(format!("{time}Z")),
        None => std::borrow::Cow::Borrowed(text),
    };
    DateTime::parse_from_rfc3339(&text).map(|t| t.with_timezone(&Utc))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cache_file_is_named_by_the_sha1_of_the_session_or_start_url() {
        // SHA-1("abc") from FIPS 180-2's examples.
        assert_eq!(token_file_name("abc"), "a9993e364706816aba3e25717850c26c9cd0d89d.json");
    }

    #[test]
    fn get_role_credentials_answers_are_read_as_the_api_reference_shows_them() {
        let login = || "run `aws sso login --sso-session corp`".to_string();
        let typed = |t: Option<&str>| {
            let mut headers = reqwest::header::HeaderMap::new();
            if let Some(t) = t {
                headers.insert("x-amzn-ErrorType", t.parse().unwrap_or_else(|e| panic!("{e}")));
            }
            headers
        };
        let answer = br#"{"roleCredentials":{"accessKeyId":"ASIAEXAMPLE","secretAccessKey":"secret","sessionToken":"token","expiration":1796000000000}}"#;
        let (c, expires) =
            role_credentials(reqwest::StatusCode::OK, &typed(None), answer, login).unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!(
            (c.key_id.as_str(), c.secret_key.as_str(), c.token.as_deref()),
            ("ASIAEXAMPLE", "secret", Some("token"))
        );
        assert_eq!(expires.map(|e| e.timestamp()), Some(1_796_000_000));
        let refused = role_credentials(
            reqwest::StatusCode::UNAUTHORIZED,
            &typed(Some("UnauthorizedException")),
            br#"{"message":"Session token not found or invalid"}"#,
            login,
        )
        .err();
        assert_eq!(
            refused,
            Some(CallFailure::permanent(
                "Identity Center answered 401 Unauthorized: UnauthorizedException: Session token not found or invalid: \
                 run `aws sso login --sso-session corp`"
                    .into()
            ))
        );
        let busy = role_credentials(
            reqwest::StatusCode::TOO_MANY_REQUESTS,
            &typed(None),
            br#"{"message":"slow down"}"#,
            login,
        );
        assert!(busy.err().is_some_and(|e| e.retryable && e.why.ends_with("429 Too Many Requests: slow down")));
        assert!(
            role_credentials(reqwest::StatusCode::BAD_GATEWAY, &typed(None), b"", login)
                .err()
                .is_some_and(|e| e.retryable)
        );
        let forbidden =
            role_credentials(reqwest::StatusCode::FORBIDDEN, &typed(Some("ForbiddenException:http://x")), b"{}", login);
        assert_eq!(
            forbidden.err().map(|e| (e.retryable, e.why)),
            Some((false, "Identity Center answered 403 Forbidden: ForbiddenException".into()))
        );
        let garbled = role_credentials(reqwest::StatusCode::OK, &typed(None), b"{\"roleCredentials\":{}}", login);
        assert!(garbled.err().is_some_and(|e| !e.retryable && e.why.contains("holds no role credentials")));
    }

    #[test]
    fn cache_times_are_read_as_the_cli_writes_them() {
        let at = |t: &str| rfc3339(t).map(|t| t.timestamp()).ok();
        assert_eq!(at("2019-11-14T04:05:45Z"), Some(1_573_704_345));
        assert_eq!(at("2019-11-14T04:05:45UTC"), Some(1_573_704_345));
        assert_eq!(at("2019-11-14T05:05:45+01:00"), Some(1_573_704_345));
        assert_eq!(at("tomorrow"), None);
    }

    #[test]
    fn endpoints_keep_their_own_path() {
        let base = reqwest::Url::parse("http://127.0.0.1:9/sso/").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(join(&base, "federation/credentials").as_str(), "http://127.0.0.1:9/sso/federation/credentials");
        let bare = reqwest::Url::parse("https://oidc.eu-west-1.amazonaws.com").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(join(&bare, "token").as_str(), "https://oidc.eu-west-1.amazonaws.com/token");
    }
}

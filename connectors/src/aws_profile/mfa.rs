//! Role profiles whose role needs an MFA code (`mfa_serial`). sluice runs unattended and cannot ask
//! for the code, so it uses the role's credentials the AWS CLI cached when it asked for one: after
//! `aws sts get-caller-identity --profile NAME` (any command with the profile), the CLI (v1 and v2)
//! keeps `AssumeRole`'s answer in `~/.aws/cli/cache/<key>.json`, the key being the SHA-1 of the
//! call's arguments as botocore writes them (`json.dumps(args, sort_keys=True)` of `RoleArn`,
//! `SerialNumber`, and `ExternalId`, `RoleSessionName`, `DurationSeconds` when the profile sets
//! them; `AssumeRoleCredentialFetcher._create_cache_key`), and reads them back until they expire.
//!
//! Guarantees: the cached credentials are used while they are valid for more than five minutes, and
//! the file is read again whenever they are not, so running the CLI again (a new code) renews a
//! running sluice's credentials; missing or expiring ones are an error saying which command to run.
//! Secrets never appear in errors.

use std::path::PathBuf;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use object_store::aws::AwsCredential;

use super::{Cached, ClassifyKind, ProfileError, REFRESH_BEFORE_EXPIRY};

/// The file name botocore gives the cached answer of `AssumeRole` called with these arguments.
pub(super) fn cache_file_name(
    role_arn: &str,
    mfa_serial: &str,
    external_id: Option<&str>,
    session_name: Option<&str>,
    duration: Option<u32>,
) -> String {
    // json.dumps(args, sort_keys=True): keys sorted, ", " and ": " between items, ASCII only.
    let mut members: Vec<(&str, String)> =
        vec![("RoleArn", python_json_string(role_arn)), ("SerialNumber", python_json_string(mfa_serial))];
    if let Some(id) = external_id {
        members.push(("ExternalId", python_json_string(id)));
    }
    if let Some(name) = session_name {
        members.push(("RoleSessionName", python_json_string(name)));
    }
    if let Some(seconds) = duration {
        members.push(("DurationSeconds", seconds.to_string()));
    }
    members.sort_by(|a, b| a.0.cmp(b.0));
    let text = members.iter().map(|(k, v)| format!("\"{k}\": {v}")).collect::<Vec<_>>().join(", ");
    super::sha1_json_file_name(&format!("{{{text}}}"))
}

/// `text` as Python's `json.dumps` writes a string by default (`ensure_ascii`: every character
/// past ASCII as `\uXXXX`, in UTF-16 surrogate pairs past the BMP).
fn python_json_string(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 || (c as u32) > 0x7e => {
                let mut units = [0u16; 2];
                for unit in c.encode_utf16(&mut units) {
                    out.push_str(&format!("\\u{unit:04x}"));
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// The credentials of a role profile with `mfa_serial`, from the AWS CLI's cache.
pub(super) struct CliCachedRole {
    pub(super) profile: String,
    pub(super) mfa_serial: String,
    /// `~/.aws/cli/cache/<key>.json` (`None`: `HOME` is not set).
    pub(super) file: Option<PathBuf>,
    pub(super) cached: Cached,
}

impl std::fmt::Debug for CliCachedRole {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CliCachedRole").field("profile", &self.profile).finish_non_exhaustive()
    }
}

/// The part of the cached `AssumeRole` answer sluice reads.
#[derive(serde::Deserialize)]
struct CachedAnswer {
    #[serde(rename = "Credentials")]
    credentials: CachedCredentials,
}

#[derive(serde::Deserialize)]
struct CachedCredentials {
    #[serde(rename = "AccessKeyId")]
    access_key_id: String,
    #[serde(rename = "SecretAccessKey")]
    secret_access_key: String,
    #[serde(rename = "SessionToken")]
    session_token: String,
    #[serde(rename = "Expiration")]
    expiration: String,
}

impl CliCachedRole {
    /// What to run to cache fresh credentials.
    fn renew(&self) -> String {
        format!(
            "run `aws sts get-caller-identity --profile {}` (the AWS CLI asks for the code of {} and caches the \
             role's credentials, which sluice reads)",
            self.profile, self.mfa_serial
        )
    }

    /// The cached credentials, when they are valid for more than five minutes.
    async fn read(&self) -> Result<(AwsCredential, Option<DateTime<Utc>>), ProfileError> {
        let error = |why: String| ProfileError::Role { name: self.profile.clone(), why };
        let Some(file) = &self.file else {
            return Err(error(format!(
                "its role needs an MFA code (`mfa_serial`) and HOME is not set, so the AWS CLI's cache \
                 (~/.aws/cli/cache) cannot be found: {}",
                self.renew()
            )));
        };
        let bytes = match tokio::fs::read(file).await {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(error(format!(
                    "its role needs an MFA code (`mfa_serial`), which sluice cannot ask for, and the AWS CLI has \
                     cached no credentials for it ({} is missing): {}",
                    file.display(),
                    self.renew()
                )));
            }
            Err(e) => {
                return Err(error(format!("cannot read the AWS CLI's cached credentials {}: {e}", file.display())));
            }
        };
        let answer: CachedAnswer = serde_json::from_slice(&bytes).map_err(|e| {
            error(format!(
                "the AWS CLI's cached credentials {} are not its JSON ({}): {}",
                file.display(),
                e.classify_kind(),
                self.renew()
            ))
        })?;
        let c = answer.credentials;
        let expires = super::sso::rfc3339(&c.expiration).map_err(|e| {
            error(format!("the cached credentials' `Expiration` is not a time ({e}): {}", self.renew()))
        })?;
        if Utc::now() + REFRESH_BEFORE_EXPIRY >= expires {
            return Err(error(format!(
                "the role's credentials the AWS CLI cached (its role needs an MFA code, `mfa_serial`) expire at \
                 {expires}: {}",
                self.renew()
            )));
        }
        let credential =
            AwsCredential { key_id: c.access_key_id, secret_key: c.secret_access_key, token: Some(c.session_token) };
        Ok((credential, Some(expires)))
    }
}

#[async_trait::async_trait]
impl object_store::CredentialProvider for CliCachedRole {
    type Credential = AwsCredential;
    async fn get_credential(&self) -> object_store::Result<Arc<AwsCredential>> {
        self.cached.get(self.read()).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Names botocore 1.44 gives (`AssumeRoleCredentialFetcher(...)._cache_key` for these
    /// arguments, computed with the test venv's botocore).
    #[test]
    fn cache_files_are_named_as_botocore_names_them() {
        let role = "arn:aws:iam::123456789012:role/lake-writer";
        let serial = "arn:aws:iam::111122223333:mfa/alice";
        assert_eq!(cache_file_name(role, serial, None, None, None), "4b2257643ca8dcbad5bca0a4a7af682e399e5956.json");
        assert_eq!(
            cache_file_name(role, serial, None, None, Some(3600)),
            "3e49f7237126a3ad5216832cbe81278cfbd7cb15.json"
        );
        assert_eq!(
            cache_file_name(role, serial, Some("Ext\u{e9}\"rnal"), Some("lake-session"), Some(900)),
            "c2f3d215cdc2b09a473ae07d67ccc725e2747d2b.json"
        );
    }

    /// What a cache the CLI did not write (or no HOME) gives: errors naming the command to run,
    /// never a secret.
    #[test]
    fn a_missing_or_malformed_cache_says_which_command_caches_credentials() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let role = |file: Option<PathBuf>| CliCachedRole {
            profile: "lake".into(),
            mfa_serial: "arn:aws:iam::1:mfa/me".into(),
            file,
            cached: Cached::default(),
        };
        let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap_or_else(|e| panic!("{e}"));
        let said = |file: Option<PathBuf>| {
            runtime.block_on(role(file).read()).err().map(|e| e.to_string()).unwrap_or_default()
        };
        let missing = said(Some(dir.path().join("none.json")));
        assert!(missing.contains("has cached no credentials for it") && missing.contains("none.json"), "{missing}");
        assert!(said(None).contains("HOME is not set"), "no HOME");
        let malformed = dir.path().join("bad.json");
        std::fs::write(&malformed, r#"{"Credentials":{"AccessKeyId":"AKID","SecretAccessKey":"very-secret"}}"#)
            .unwrap_or_else(|e| panic!("{e}"));
        let error = said(Some(malformed.clone()));
        assert!(error.contains("are not its JSON (a value of the wrong type)"), "{error}");
        std::fs::write(
            &malformed,
            r#"{"Credentials":{"AccessKeyId":"AKID","SecretAccessKey":"very-secret","SessionToken":"t","Expiration":"soon"}}"#,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let error = said(Some(malformed));
        assert!(error.contains("`Expiration` is not a time"), "{error}");
        for error in [missing, error] {
            assert!(
                error.contains("run `aws sts get-caller-identity --profile lake`") && !error.contains("very-secret"),
                "{error}"
            );
        }
    }

    #[test]
    fn strings_are_written_as_python_s_json_dumps_writes_them() {
        assert_eq!(python_json_string("a\"b\\c/d"), r#""a\"b\\c/d""#);
        assert_eq!(python_json_string("é\n\u{1}"), r#""\u00e9\n\u0001""#);
        assert_eq!(python_json_string("😀"), r#""\ud83d\ude00""#);
        assert_eq!(python_json_string("\u{7f}"), r#""\u007f""#);
    }
}

//! Where the connectors that sign AWS requests themselves (the `kinesis` source, the `lambda`
//! transform's Invoke, the `opensearch` sink's `aws_sigv4`, the write-ahead log's KMS keys) get
//! their credentials: the chain the AWS SDKs use, and the one sluice's S3
//! stores already use (object_store's, which this module asks). In order: keys the connector was
//! given in its table; the environment's `AWS_ACCESS_KEY_ID` and `AWS_SECRET_ACCESS_KEY` (and
//! `AWS_SESSION_TOKEN`); the shared config and credentials files' profile (`AWS_PROFILE`, else
//! `default`: static keys, a `credential_process` or a role assumed with STS,
//! [`crate::aws_profile`]); a web identity (`AWS_WEB_IDENTITY_TOKEN_FILE` with `AWS_ROLE_ARN`:
//! EKS's IAM roles for service accounts); ECS's task role (`AWS_CONTAINER_CREDENTIALS_RELATIVE_URI`);
//! EKS Pod Identity (`AWS_CONTAINER_CREDENTIALS_FULL_URI` with
//! `AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE`); and the EC2 instance profile (IMDSv2, at
//! `AWS_METADATA_ENDPOINT` when set).
//!
//! Guarantees: temporary credentials are refreshed before they expire (object_store's cache), so a
//! long run keeps signing with valid ones. The chain is asked once when the connector starts
//! ([`AwsCredentials::resolve`]): a machine without credentials fails then, naming what was
//! tried, instead of at its first request; a later failure to refresh is an error of the request
//! that needed them, retried as that request is. Secrets never appear in `Debug` output or errors.

use std::sync::Arc;
use std::time::Duration;

use object_store::aws::{AmazonS3Builder, AwsCredential, AwsCredentialProvider};
use object_store::{RetryConfig, StaticCredentialProvider};

use crate::api::sigv4::Credentials;
use crate::aws_profile::SharedProfile;

/// How long the first ask of the chain may take (an instance profile answers in milliseconds; a
/// machine without one times out here).
const FIRST_ASK: Duration = Duration::from_secs(10);

/// A source of AWS credentials for signing requests.
#[derive(Clone)]
pub struct AwsCredentials(AwsCredentialProvider);

impl std::fmt::Debug for AwsCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AwsCredentials(..)")
    }
}

impl AwsCredentials {
    /// Keys given in a connector's table.
    pub fn fixed(credentials: Credentials) -> Self {
        let Credentials { key_id, secret, session_token } = credentials;
        let credential = AwsCredential { key_id, secret_key: secret, token: session_token };
        AwsCredentials(Arc::new(StaticCredentialProvider::new(credential)))
    }

    /// The environment's credentials, else the first of the chain that answers, asked once now;
    /// `needed_for` names what needs them in the error (e.g. "reading a Kinesis stream").
    pub async fn resolve(region: &str, needed_for: &str) -> Result<Self, String> {
        if let Some(credentials) = Credentials::from_env() {
            return Ok(AwsCredentials::fixed(credentials));
        }
        if let Some(provider) = SharedProfile::from_process().credentials {
            // A profile's process has its own time limit; its failure is final, as the SDKs' is.
            return match provider.get_credential().await {
                Ok(_) => Ok(AwsCredentials(provider)),
                Err(e) => {
                    Err(format!("{needed_for} needs AWS credentials: {}", crate::aws_profile::credential_error(&e)))
                }
            };
        }
        let tried = tried_source();
        let unavailable = |why: String| {
            format!(
                "{needed_for} needs AWS credentials: none in the environment (AWS_ACCESS_KEY_ID and \
                 AWS_SECRET_ACCESS_KEY) or the shared files (~/.aws/credentials, ~/.aws/config), and {tried} \
                 gave none: {why}"
            )
        };
        let retry = RetryConfig { max_retries: 2, retry_timeout: FIRST_ASK, ..RetryConfig::default() };
        let store = AmazonS3Builder::from_env()
            .with_bucket_name("sluice-credentials")
            .with_region(region)
            .with_retry(retry)
            .build()
            .map_err(|e| unavailable(sluice_engine::redact::error(&e)))?;
        let provider = Arc::clone(store.credentials());
        match tokio::time::timeout(FIRST_ASK, provider.get_credential()).await {
            Ok(Ok(_)) => Ok(AwsCredentials(provider)),
            Ok(Err(e)) => Err(unavailable(sluice_engine::redact::error(&e))),
            Err(_) => Err(unavailable(format!("no answer within {} s", FIRST_ASK.as_secs()))),
        }
    }

    /// The credentials to sign a request with now (refreshed when they are about to expire).
    pub async fn current(&self) -> Result<Credentials, String> {
        let credential = self
            .0
            .get_credential()
            .await
            .map_err(|e| format!("cannot get AWS credentials: {}", sluice_engine::redact::error(&e)))?;
        Ok(Credentials {
            key_id: credential.key_id.clone(),
            secret: credential.secret_key.clone(),
            session_token: credential.token.clone(),
        })
    }
}

/// Which source of the chain the environment points at, for errors.
fn tried_source() -> &'static str {
    let set = |name: &str| std::env::var_os(name).is_some_and(|v| !v.is_empty());
    if set("AWS_WEB_IDENTITY_TOKEN_FILE") && set("AWS_ROLE_ARN") {
        "the web identity (AWS_WEB_IDENTITY_TOKEN_FILE, AWS_ROLE_ARN)"
    } else if set("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI") {
        "the ECS task role (AWS_CONTAINER_CREDENTIALS_RELATIVE_URI)"
    } else if set("AWS_CONTAINER_CREDENTIALS_FULL_URI") {
        "EKS Pod Identity (AWS_CONTAINER_CREDENTIALS_FULL_URI)"
    } else {
        "the EC2 instance profile (IMDS)"
    }
}

//! AWS KMS for the write-ahead log's envelope encryption (`[pipeline] encryption = { kms_key_id,
//! kms_endpoint, region }`): `GenerateDataKey` (AES_256) once per start for the log key,
//! `Decrypt` for a log key stored with older segments, both over KMS's JSON 1.1 API signed with
//! SigV4 and credentials from the AWS chain (`crate::aws_credentials`: the environment, a web
//! identity, ECS or EKS roles, the EC2 instance profile), with the encryption context
//! `{"pipeline": <name>}` (so a data key of one pipeline does not unwrap in another).
//!
//! Guarantees: the plaintext data key never leaves this process (only KMS's encrypted copy is
//! stored, as the locator `{"kind":"kms","key_id","blob"}`); a refusal names KMS's error type and
//! message (`NotFoundException`, `InvalidCiphertextException`, `AccessDeniedException`, …) and the
//! key id, never the key; calls run on a thread of their own (on a runtime the KMS calls of the
//! process share, which also keeps the credentials' refreshing client), so they may be made from
//! inside the async runtime. [`log_keys`] turns a pipeline's `encryption` into the engine's
//! [`LogKeys`].

use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use serde_json::{Value, json};
use sluice_engine::config::LogEncryption;
use sluice_engine::wal::seal::{KeyBytes, KeyFile, LogKey, LogKeys};

use crate::aws_credentials::AwsCredentials;

/// How long one KMS call may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// The log keys of a pipeline's `encryption`, `None` without it.
pub fn log_keys(encryption: Option<&LogEncryption>, pipeline: &str) -> Result<Option<Arc<dyn LogKeys>>, String> {
    match encryption {
        None => Ok(None),
        Some(LogEncryption::KeyFile(path)) => Ok(Some(Arc::new(KeyFile::load(path)?))),
        Some(LogEncryption::Kms { key_id, endpoint, region }) => {
            let region_of_key = region.clone();
            let credentials =
                on_kms_runtime(
                    async move { AwsCredentials::resolve(&region_of_key, "`encryption.kms_key_id`").await },
                )?;
            Ok(Some(Arc::new(KmsKeys {
                key_id: key_id.clone(),
                endpoint: endpoint.clone(),
                region: region.clone(),
                pipeline: pipeline.to_string(),
                credentials,
            })))
        }
    }
}

/// Log keys from KMS.
#[derive(Debug)]
pub struct KmsKeys {
    key_id: String,
    endpoint: String,
    region: String,
    pipeline: String,
    credentials: AwsCredentials,
}

/// Runs `work` to its end on the runtime the KMS calls share, from a thread of its own (the caller
/// may be on another runtime's thread, where blocking on a runtime is not allowed).
fn on_kms_runtime<T: Send + 'static>(
    work: impl std::future::Future<Output = Result<T, String>> + Send + 'static,
) -> Result<T, String> {
    static RUNTIME: std::sync::OnceLock<Result<tokio::runtime::Runtime, String>> = std::sync::OnceLock::new();
    let runtime = RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("sluice-kms")
            .enable_all()
            .build()
            .map_err(|e| format!("cannot start the KMS client: {e}"))
    });
    let runtime = runtime.as_ref().map_err(Clone::clone)?;
    std::thread::scope(|scope| {
        scope.spawn(|| runtime.block_on(work)).join().map_err(|_| "the KMS call failed".to_string())?
    })
}

impl KmsKeys {
    /// Calls `operation` with `input`; the answer, or KMS's error as text.
    fn call(&self, operation: &'static str, input: Value) -> Result<Value, String> {
        let url = reqwest::Url::parse(&self.endpoint).map_err(|e| format!("kms_endpoint `{}`: {e}", self.endpoint))?;
        let body = input.to_string().into_bytes();
        let mut headers = http::HeaderMap::new();
        headers.insert("content-type", http::HeaderValue::from_static("application/x-amz-json-1.1"));
        let target = http::HeaderValue::from_str(&format!("TrentService.{operation}")).map_err(|e| e.to_string())?;
        headers.insert("x-amz-target", target);
        let key_id = self.key_id.clone();
        let (credentials, region) = (self.credentials.clone(), self.region.clone());
        on_kms_runtime(async move {
            let headers = credentials
                .current()
                .await?
                .sign_request("POST", &url, url.path(), (&region, "kms"), headers, &body)
                .map_err(|e| format!("cannot sign the KMS request: {e}"))?;
            let client = reqwest::Client::builder().timeout(CALL_TIMEOUT).build().map_err(|e| e.to_string())?;
            let response =
                client.post(url).headers(headers).body(body).send().await.map_err(|e| {
                    format!("KMS {operation} could not be reached: {}", sluice_engine::redact::error(&e))
                })?;
            let status = response.status();
            let text =
                response.text().await.map_err(|e| format!("KMS {operation}: {}", sluice_engine::redact::error(&e)))?;
            let answer: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
            if status.is_success() {
                return Ok(answer);
            }
            let kind = answer.get("__type").and_then(Value::as_str).unwrap_or("an error");
            let kind = kind.rsplit('#').next().unwrap_or(kind);
            let message = answer.get("message").or_else(|| answer.get("Message")).and_then(Value::as_str);
            Err(format!(
                "KMS {operation} with key `{key_id}` failed: {kind} (HTTP {}){}",
                status.as_u16(),
                message.map(|m| format!(": {m}")).unwrap_or_default()
            ))
        })
    }

    fn context(&self) -> Value {
        json!({"pipeline": self.pipeline})
    }
}

fn key_bytes(answer: &Value, operation: &str) -> Result<KeyBytes, String> {
    let plaintext = answer
        .get("Plaintext")
        .and_then(Value::as_str)
        .and_then(|p| base64::engine::general_purpose::STANDARD.decode(p).ok())
        .ok_or_else(|| format!("KMS {operation} answered without a key"))?;
    let key: [u8; 32] =
        plaintext.try_into().map_err(|_| format!("KMS {operation} answered with a key that is not 256 bits"))?;
    Ok(KeyBytes(key))
}

impl LogKeys for KmsKeys {
    fn current(&self) -> Result<LogKey, String> {
        let answer = self.call(
            "GenerateDataKey",
            json!({"KeyId": self.key_id, "KeySpec": "AES_256", "EncryptionContext": self.context()}),
        )?;
        let key = key_bytes(&answer, "GenerateDataKey")?;
        let blob = answer
            .get("CiphertextBlob")
            .and_then(Value::as_str)
            .ok_or("KMS GenerateDataKey answered without CiphertextBlob")?;
        let key_id = answer.get("KeyId").and_then(Value::as_str).unwrap_or(&self.key_id);
        Ok(LogKey { key, locator: json!({"kind": "kms", "key_id": key_id, "blob": blob}) })
    }

    fn recover(&self, locator: &Value) -> Result<KeyBytes, String> {
        if locator.get("kind").and_then(Value::as_str) != Some("kms") {
            return Err("its key is a local key file, but `encryption` names a KMS key".into());
        }
        let blob = locator.get("blob").and_then(Value::as_str).ok_or("its key file holds no KMS ciphertext")?;
        // KMS finds the key from the ciphertext; naming the configured one makes another refused.
        let answer = self.call(
            "Decrypt",
            json!({"CiphertextBlob": blob, "KeyId": self.key_id, "EncryptionContext": self.context()}),
        )?;
        key_bytes(&answer, "Decrypt")
    }
}

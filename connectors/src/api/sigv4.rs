//! AWS Signature Version 4 verification of incoming requests (the `Authorization` header form the
//! AWS SDKs and CLI send).
//!
//! The canonical request is rebuilt from exactly the headers the client listed in `SignedHeaders`,
//! so any SDK's choice of signed headers verifies. Verification is in two steps: [`check_headers`]
//! needs only the headers and refuses, before a body is read, whatever they already condemn (no or
//! a malformed `Authorization`, an unknown key, a date more than 15 minutes off, a scope for
//! another region or service, `host` not signed); [`check_signature`] then checks the signature
//! over the body. Guarantees: a request verifies only with a configured key's secret, a signature
//! over this method, path, query, signed headers (always including `host`) and body (the body
//! hash is always computed here, never taken from the client), a scope of the configured region
//! and service, and a timestamp within 15 minutes of now; the comparison is constant-time;
//! secrets never appear in `Debug` output or errors.

use std::collections::BTreeMap;
use std::fmt;

use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256};

type HmacSha256 = Hmac<Sha256>;

/// How far a request's `X-Amz-Date` may be from now (AWS allows 15 minutes).
pub const MAX_CLOCK_SKEW_SECONDS: i64 = 15 * 60;

/// Access key id → secret. `Debug` shows ids only.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct AccessKeys(BTreeMap<String, String>);

impl fmt::Debug for AccessKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.0.keys()).finish()
    }
}

impl AccessKeys {
    /// Keys from `(id, secret)` pairs.
    pub fn new(pairs: impl IntoIterator<Item = (String, String)>) -> Self {
        AccessKeys(pairs.into_iter().collect())
    }

    /// Whether no key is configured (requests are then not verified).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether `id` is one of these keys.
    pub fn contains(&self, id: &str) -> bool {
        self.0.contains_key(id)
    }

    /// Adds every key of `other`; an id `other` gives another secret is refused (named).
    pub fn merge(&mut self, other: &AccessKeys) -> Result<(), String> {
        for (id, secret) in &other.0 {
            match self.0.get(id) {
                Some(known) if known != secret => return Err(id.clone()),
                _ => {
                    self.0.insert(id.clone(), secret.clone());
                }
            }
        }
        Ok(())
    }
}

/// Why a request did not verify. Each maps to the error AWS returns for it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No `Authorization` header.
    #[error("Missing Authentication Token")]
    Missing,
    /// The header is not a SigV4 authorization.
    #[error("Authorization header is malformed: {0}")]
    Malformed(String),
    /// The access key id is not configured.
    #[error("The security token included in the request is invalid.")]
    UnknownKey,
    /// The request time is too far from now.
    #[error("Signature expired: {request_time} is not within 15 minutes of the server time {server_time}.")]
    Expired {
        /// `X-Amz-Date` of the request.
        request_time: String,
        /// The server's time in the same format.
        server_time: String,
    },
    /// The signature does not match.
    #[error(
        "The request signature we calculated does not match the signature you provided. Check your AWS Secret Access Key and signing method. Consult the service documentation for details."
    )]
    BadSignature,
    /// The `Authorization` header is not ASCII.
    #[error("Authorization header is not ASCII")]
    NotAscii,
    /// The credential scope names another region.
    #[error("Credential should be scoped to a valid region, not '{0}'. ")]
    WrongRegion(String),
    /// The credential scope names another service.
    #[error("Credential should be scoped to correct service: '{0}'. ")]
    WrongService(&'static str),
    /// `host` is not among the signed headers.
    #[error("'Host' or ':authority' must be a 'SignedHeader' in the AWS Authorization.")]
    HostNotSigned,
}

impl AuthError {
    /// The AWS error type (`__type`) for this failure.
    pub fn error_type(&self) -> &'static str {
        match self {
            AuthError::Missing => "MissingAuthenticationTokenException",
            AuthError::Malformed(_) | AuthError::NotAscii => "IncompleteSignatureException",
            AuthError::UnknownKey => "UnrecognizedClientException",
            AuthError::Expired { .. }
            | AuthError::BadSignature
            | AuthError::WrongRegion(_)
            | AuthError::WrongService(_)
            | AuthError::HostNotSigned => "InvalidSignatureException",
        }
    }
}

/// The parts of a request a signature covers.
#[derive(Debug, Clone, Copy)]
pub struct SignedRequest<'a> {
    /// `POST`, `GET`, …
    pub method: &'a str,
    /// The path, as sent (e.g. `/`).
    pub path: &'a str,
    /// The raw query string, without `?` (empty when none).
    pub query: &'a str,
    /// Every header, names in any case.
    pub headers: &'a http::HeaderMap,
    /// The body.
    pub body: &'a [u8],
}

struct Authorization<'a> {
    key_id: &'a str,
    /// `date/region/service/aws4_request`.
    scope: &'a str,
    date: &'a str,
    region: &'a str,
    service: &'a str,
    signed_headers: &'a str,
    signature: &'a str,
}

fn parse_authorization(value: &str) -> Result<Authorization<'_>, AuthError> {
    let malformed = |m: &str| AuthError::Malformed(m.to_string());
    let rest = value.strip_prefix("AWS4-HMAC-SHA256").ok_or_else(|| malformed("expected AWS4-HMAC-SHA256"))?;
    let (mut credential, mut signed_headers, mut signature) = (None, None, None);
    for part in rest.split(',') {
        let part = part.trim();
        if let Some(v) = part.strip_prefix("Credential=") {
            credential = Some(v);
        } else if let Some(v) = part.strip_prefix("SignedHeaders=") {
            signed_headers = Some(v);
        } else if let Some(v) = part.strip_prefix("Signature=") {
            signature = Some(v);
        }
    }
    let credential = credential.ok_or_else(|| malformed("no Credential"))?;
    let (key_id, scope) = credential.split_once('/').ok_or_else(|| malformed("Credential has no scope"))?;
    let parts: Vec<&str> = scope.split('/').collect();
    let [date, region, service, "aws4_request"] = parts[..] else {
        return Err(malformed("Credential scope must be date/region/service/aws4_request"));
    };
    Ok(Authorization {
        key_id,
        scope,
        date,
        region,
        service,
        signed_headers: signed_headers.ok_or_else(|| malformed("no SignedHeaders"))?,
        signature: signature.ok_or_else(|| malformed("no Signature"))?,
    })
}

/// `X-Amz-Date` (`yyyyMMddTHHmmssZ`) as seconds since the epoch.
fn amz_date_seconds(text: &str) -> Option<i64> {
    chrono::NaiveDateTime::parse_from_str(text, "%Y%m%dT%H%M%SZ").ok().map(|t| t.and_utc().timestamp())
}

/// RFC 3986 encoding as SigV4 wants it: unreserved characters as they are, everything else `%XX`.
fn uri_encode(text: &str, keep_slash: bool, out: &mut String) {
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) || keep_slash && b == b'/' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
}

/// Percent-decoding of a path or query component (invalid escapes are kept as they are).
fn uri_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match (bytes[i], bytes.get(i + 1).and_then(|b| hex(*b)), bytes.get(i + 2).and_then(|b| hex(*b))) {
            (b'%', Some(h), Some(l)) => {
                out.push((h * 16 + l) as u8);
                i += 3;
            }
            (b, _, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn canonical_query(query: &str) -> String {
    let mut pairs: Vec<(String, String)> = query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            let (mut key, mut value) = (String::new(), String::new());
            uri_encode(&uri_decode(k), false, &mut key);
            uri_encode(&uri_decode(v), false, &mut value);
            (key, value)
        })
        .collect();
    pairs.sort();
    pairs.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join("&")
}

fn hex(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 2);
    push_hex(&mut out, bytes);
    out
}

/// Appends `bytes` as lowercase hex (two digits each) to `out`, without formatting machinery:
/// the Firehose API writes a record id per record this way.
pub(crate) fn push_hex(out: &mut String, bytes: &[u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    // Digits are gathered 32 bytes at a time and appended as one ASCII string (a `push` per
    // character encodes each as UTF-8).
    let mut digits = [0u8; 64];
    for chunk in bytes.chunks(32) {
        for (pair, &b) in digits.chunks_exact_mut(2).zip(chunk) {
            pair[0] = DIGITS[usize::from(b >> 4)];
            pair[1] = DIGITS[usize::from(b & 0x0f)];
        }
        if let Ok(text) = std::str::from_utf8(&digits[..chunk.len() * 2]) {
            out.push_str(text);
        }
    }
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len()).step_by(2).map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok()).collect()
}

fn hmac(key: &[u8], data: &[u8]) -> Result<HmacSha256, AuthError> {
    let mut mac = HmacSha256::new_from_slice(key).map_err(|_| AuthError::BadSignature)?;
    mac.update(data);
    Ok(mac)
}

/// The canonical request over `signed_headers` (`a;b;c`, lowercase, sorted).
fn canonical_request(request: &SignedRequest<'_>, signed_headers: &str, body_hash: &str) -> String {
    let mut canonical = String::with_capacity(512);
    canonical.push_str(request.method);
    canonical.push('\n');
    uri_encode(&uri_decode(request.path), true, &mut canonical);
    canonical.push('\n');
    canonical.push_str(&canonical_query(request.query));
    canonical.push('\n');
    for name in signed_headers.split(';') {
        let values: Vec<String> = request
            .headers
            .get_all(name)
            .iter()
            .map(|v| String::from_utf8_lossy(v.as_bytes()).split_whitespace().collect::<Vec<_>>().join(" "))
            .collect();
        canonical.push_str(name);
        canonical.push(':');
        canonical.push_str(&values.join(","));
        canonical.push('\n');
    }
    canonical.push('\n');
    canonical.push_str(signed_headers);
    canonical.push('\n');
    canonical.push_str(body_hash);
    canonical
}

fn string_to_sign(amz_date: &str, scope: &str, canonical: &str) -> String {
    format!("AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{}", hex(&Sha256::digest(canonical.as_bytes())))
}

/// The key derived from `secret` for `scope` (`date/region/service/aws4_request`).
fn signing_key(secret: &str, scope: &str) -> Result<Vec<u8>, AuthError> {
    let mut key = format!("AWS4{secret}").into_bytes();
    for part in scope.split('/') {
        key = hmac(&key, part.as_bytes())?.finalize().into_bytes().to_vec();
    }
    Ok(key)
}

/// Credentials and scope to sign requests with, the way the AWS SDKs do (for load generators and
/// tests; the server only verifies).
#[derive(Clone, Copy)]
pub struct Signer<'a> {
    /// Access key id.
    pub key_id: &'a str,
    /// Secret access key.
    pub secret: &'a str,
    /// Region of the scope, e.g. `us-east-1`.
    pub region: &'a str,
    /// Service of the scope: `firehose`, `lambda`, `es`.
    pub service: &'a str,
}

impl fmt::Debug for Signer<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Signer").field("key_id", &self.key_id).field("region", &self.region).finish()
    }
}

impl Signer<'_> {
    /// Sets `X-Amz-Date` (`amz_date`, `yyyyMMddTHHmmssZ`) and `Authorization` over every header
    /// present (which must include `host`).
    pub fn sign(
        &self,
        amz_date: &str,
        method: &str,
        path: &str,
        headers: &mut http::HeaderMap,
        body: &[u8],
    ) -> Result<(), AuthError> {
        let Signer { key_id, secret, region, service } = *self;
        let date_value = http::HeaderValue::from_str(amz_date).map_err(|e| AuthError::Malformed(e.to_string()))?;
        headers.insert("x-amz-date", date_value);
        headers.remove("authorization");
        let mut names: Vec<String> = headers.keys().map(|k| k.as_str().to_ascii_lowercase()).collect();
        names.sort();
        names.dedup();
        let signed_headers = names.join(";");
        let scope = format!("{}/{region}/{service}/aws4_request", amz_date.get(..8).unwrap_or(amz_date));
        let body_hash = hex(&Sha256::digest(body));
        let request = SignedRequest { method, path, query: "", headers, body };
        let canonical = canonical_request(&request, &signed_headers, &body_hash);
        let signature =
            hex(&hmac(&signing_key(secret, &scope)?, string_to_sign(amz_date, &scope, &canonical).as_bytes())?
                .finalize()
                .into_bytes());
        let value = format!(
            "AWS4-HMAC-SHA256 Credential={key_id}/{scope}, SignedHeaders={signed_headers}, Signature={signature}"
        );
        headers.insert(
            "authorization",
            http::HeaderValue::from_str(&value).map_err(|e| AuthError::Malformed(e.to_string()))?,
        );
        Ok(())
    }
}

/// AWS credentials for signing outgoing requests (a Kinesis read, a Lambda Invoke, an Amazon
/// OpenSearch Service `_bulk`, a KMS call); where they come from is `crate::aws_credentials`'s
/// concern. `Debug` shows the key id only.
pub struct Credentials {
    /// `AWS_ACCESS_KEY_ID`.
    pub key_id: String,
    /// `AWS_SECRET_ACCESS_KEY`.
    pub secret: String,
    /// `AWS_SESSION_TOKEN`, for temporary credentials.
    pub session_token: Option<String>,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials").field("key_id", &self.key_id).finish_non_exhaustive()
    }
}

impl Credentials {
    /// `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY` and `AWS_SESSION_TOKEN`, if the first two are set.
    pub fn from_env() -> Option<Self> {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        Some(Credentials {
            key_id: var("AWS_ACCESS_KEY_ID")?,
            secret: var("AWS_SECRET_ACCESS_KEY")?,
            session_token: var("AWS_SESSION_TOKEN"),
        })
    }

    /// `headers` plus what signs a `method` request with `body` to `url` (whose canonical path is
    /// `path`) for `service` in `region`, now: `x-amz-date`, the session token if any, `x-amz-content-sha256` and
    /// `authorization` (signed over every header given and `host`, which is taken from `url` and
    /// left for the HTTP client to send).
    pub fn sign_request(
        &self,
        method: &str,
        url: &reqwest::Url,
        path: &str,
        scope: (&str, &str),
        mut headers: http::HeaderMap,
        body: &[u8],
    ) -> Result<http::HeaderMap, AuthError> {
        let (region, service) = scope;
        let host = match url.port() {
            Some(port) => format!("{}:{port}", url.host_str().unwrap_or_default()),
            None => url.host_str().unwrap_or_default().to_string(),
        };
        let value = |v: &str| http::HeaderValue::from_str(v).map_err(|e| AuthError::Malformed(e.to_string()));
        headers.insert("host", value(&host)?);
        if let Some(token) = &self.session_token {
            headers.insert("x-amz-security-token", value(token)?);
        }
        // OpenSearch Serverless requires the body's hash as a header; every service accepts it.
        headers.insert("x-amz-content-sha256", value(&hex(&Sha256::digest(body)))?);
        let signer = Signer { key_id: &self.key_id, secret: &self.secret, region, service };
        let amz_date = chrono::Utc::now().format("%Y%m%dT%H%M%SZ").to_string();
        signer.sign(&amz_date, method, path, &mut headers, body)?;
        headers.remove("host");
        Ok(headers)
    }
}

/// Where requests must be signed for: the service and region of the credential scope.
#[derive(Debug, Clone, Copy)]
pub struct Scope<'a> {
    /// The region, e.g. `us-east-1`.
    pub region: &'a str,
    /// The service, `firehose`.
    pub service: &'static str,
}

/// A request whose headers passed [`check_headers`]: its signature is still to be checked.
pub struct Checked<'r> {
    authorization: Authorization<'r>,
    secret: String,
    request_time: &'r str,
}

impl fmt::Debug for Checked<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Checked").field("key_id", &self.authorization.key_id).finish()
    }
}

impl Checked<'_> {
    /// The access key id the request claims.
    pub fn key_id(&self) -> &str {
        self.authorization.key_id
    }
}

/// Checks what the headers alone decide, so a request they condemn is refused before its body is
/// read: an `Authorization` of the SigV4 form with a known key, a scope of `scope`'s region and
/// service for the day of `X-Amz-Date`, `host` among the signed headers, and a time within 15
/// minutes of `now_seconds`.
pub fn check_headers<'r>(
    keys: &AccessKeys,
    headers: &'r http::HeaderMap,
    now_seconds: i64,
    scope: Scope<'_>,
) -> Result<Checked<'r>, AuthError> {
    let raw = headers.get(http::header::AUTHORIZATION).ok_or(AuthError::Missing)?;
    let authorization = parse_authorization(raw.to_str().map_err(|_| AuthError::NotAscii)?)?;
    let secret = keys.0.get(authorization.key_id).ok_or(AuthError::UnknownKey)?.clone();
    if authorization.service != scope.service {
        return Err(AuthError::WrongService(scope.service));
    }
    if authorization.region != scope.region {
        return Err(AuthError::WrongRegion(authorization.region.to_string()));
    }
    if !authorization.signed_headers.split(';').any(|h| h == "host") {
        return Err(AuthError::HostNotSigned);
    }
    let request_time = headers
        .get("x-amz-date")
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| AuthError::Malformed("no X-Amz-Date header".into()))?;
    let request_seconds = amz_date_seconds(request_time)
        .ok_or_else(|| AuthError::Malformed("X-Amz-Date is not yyyyMMddTHHmmssZ".into()))?;
    if (request_seconds - now_seconds).abs() > MAX_CLOCK_SKEW_SECONDS {
        let server_time = chrono::DateTime::from_timestamp(now_seconds, 0)
            .map(|t| t.format("%Y%m%dT%H%M%SZ").to_string())
            .unwrap_or_default();
        return Err(AuthError::Expired { request_time: request_time.to_string(), server_time });
    }
    if !request_time.starts_with(authorization.date) {
        return Err(AuthError::Malformed("the Credential date is not the X-Amz-Date day".into()));
    }
    Ok(Checked { authorization, secret, request_time })
}

/// Checks the signature of a request whose headers passed [`check_headers`]; returns the access
/// key id it was signed with.
pub fn check_signature(checked: &Checked<'_>, request: &SignedRequest<'_>) -> Result<String, AuthError> {
    let authorization = &checked.authorization;
    let body_hash = hex(&Sha256::digest(request.body));
    if let Some(claimed) = request.headers.get("x-amz-content-sha256").and_then(|v| v.to_str().ok())
        && claimed != body_hash
        && claimed != "UNSIGNED-PAYLOAD"
    {
        return Err(AuthError::BadSignature);
    }
    let canonical = canonical_request(request, authorization.signed_headers, &body_hash);
    let string_to_sign = string_to_sign(checked.request_time, authorization.scope, &canonical);
    let provided = unhex(authorization.signature).ok_or(AuthError::BadSignature)?;
    hmac(&signing_key(&checked.secret, authorization.scope)?, string_to_sign.as_bytes())?
        .verify_slice(&provided)
        .map_err(|_| AuthError::BadSignature)?;
    Ok(authorization.key_id.to_string())
}

/// Verifies `request` against `keys` for `scope`; returns the access key id it was signed with.
pub fn verify(
    keys: &AccessKeys,
    request: &SignedRequest<'_>,
    now_seconds: i64,
    scope: Scope<'_>,
) -> Result<String, AuthError> {
    check_signature(&check_headers(keys, request.headers, now_seconds, scope)?, request)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_is_two_lowercase_digits_per_byte_at_every_length() {
        for len in [0usize, 1, 31, 32, 33, 64, 70] {
            let bytes: Vec<u8> = (0..len).map(|i| (i * 37 + 5) as u8).collect();
            let expected: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
            let mut out = "x".to_string();
            push_hex(&mut out, &bytes);
            assert_eq!(out, format!("x{expected}"), "{len} bytes");
            assert_eq!(hex(&bytes), expected);
            assert_eq!(unhex(&expected), Some(bytes));
        }
    }

    /// The `get-vanilla` case of AWS's SigV4 test suite (example key, `service`/`us-east-1`).
    #[test]
    fn verifies_the_aws_test_suite_vanilla_request() {
        let keys =
            AccessKeys::new([("AKIDEXAMPLE".to_string(), "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY".to_string())]);
        let mut headers = http::HeaderMap::new();
        headers.insert("host", "example.amazonaws.com".parse().unwrap());
        headers.insert("x-amz-date", "20150830T123600Z".parse().unwrap());
        headers.insert(
            "authorization",
            "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, SignedHeaders=host;x-amz-date, Signature=5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31"
                .parse()
                .unwrap(),
        );
        let request = SignedRequest { method: "GET", path: "/", query: "", headers: &headers, body: b"" };
        let now = amz_date_seconds("20150830T123600Z").unwrap();
        let scope = Scope { region: "us-east-1", service: "service" };
        let verify = |keys: &AccessKeys, request: &SignedRequest<'_>, now| verify(keys, request, now, scope);
        assert_eq!(verify(&keys, &request, now), Ok("AKIDEXAMPLE".to_string()));
        // Another body, another secret, an unknown key, a stale clock: each is refused as AWS does.
        let tampered = SignedRequest { body: b"x", ..request };
        assert_eq!(verify(&keys, &tampered, now), Err(AuthError::BadSignature));
        let wrong = AccessKeys::new([("AKIDEXAMPLE".to_string(), "not-the-secret".to_string())]);
        assert_eq!(verify(&wrong, &request, now).unwrap_err().error_type(), "InvalidSignatureException");
        assert_eq!(verify(&AccessKeys::default(), &request, now), Err(AuthError::UnknownKey));
        assert!(matches!(verify(&keys, &request, now + 16 * 60), Err(AuthError::Expired { .. })));
        let mut bare = headers.clone();
        bare.remove("authorization");
        let unsigned = SignedRequest { headers: &bare, ..request };
        assert_eq!(verify(&keys, &unsigned, now).unwrap_err().error_type(), "MissingAuthenticationTokenException");
        assert!(!format!("{keys:?}").contains("wJalr"));
    }

    #[test]
    fn what_sign_signs_verifies() {
        let keys = AccessKeys::new([("AKID".to_string(), "secret".to_string())]);
        let mut headers = http::HeaderMap::new();
        headers.insert("host", "127.0.0.1:4573".parse().unwrap());
        headers.insert("x-amz-target", "Firehose_20150804.PutRecord".parse().unwrap());
        let signer = Signer { key_id: "AKID", secret: "secret", region: "us-east-1", service: "firehose" };
        signer.sign("20261126T120000Z", "POST", "/", &mut headers, b"{}").unwrap();
        let request = SignedRequest { method: "POST", path: "/", query: "", headers: &headers, body: b"{}" };
        let now = amz_date_seconds("20261126T120100Z").unwrap();
        let scope = Scope { region: "us-east-1", service: "firehose" };
        assert_eq!(verify(&keys, &request, now, scope), Ok("AKID".to_string()));
    }

    /// AWS refuses a signature for another region or service, one that does not sign `host`, and
    /// a non-ASCII header, whatever the signature itself.
    #[test]
    fn scope_host_and_header_form_are_checked_as_aws_does() {
        let keys = AccessKeys::new([("AKID".to_string(), "secret".to_string())]);
        let scope = Scope { region: "eu-west-1", service: "firehose" };
        let now = amz_date_seconds("20261126T120100Z").unwrap();
        let signed = |region: &str, service: &str, with_host: bool| {
            let mut headers = http::HeaderMap::new();
            if with_host {
                headers.insert("host", "127.0.0.1:4573".parse().unwrap());
            }
            let signer = Signer { key_id: "AKID", secret: "secret", region, service };
            signer.sign("20261126T120000Z", "POST", "/", &mut headers, b"{}").unwrap();
            headers
        };
        let check = |headers: &http::HeaderMap| {
            let request = SignedRequest { method: "POST", path: "/", query: "", headers, body: b"{}" };
            verify(&keys, &request, now, scope)
        };
        assert_eq!(check(&signed("eu-west-1", "firehose", true)), Ok("AKID".to_string()));
        assert_eq!(check(&signed("us-east-1", "firehose", true)), Err(AuthError::WrongRegion("us-east-1".into())));
        assert_eq!(check(&signed("eu-west-1", "s3", true)), Err(AuthError::WrongService("firehose")));
        assert_eq!(check(&signed("eu-west-1", "firehose", false)), Err(AuthError::HostNotSigned));
        let mut headers = signed("eu-west-1", "firehose", true);
        headers.insert("authorization", http::HeaderValue::from_bytes(b"AWS4-HMAC-SHA256 Credential=\xff").unwrap());
        let refused = check(&headers).unwrap_err();
        assert_eq!((refused.clone(), refused.error_type()), (AuthError::NotAscii, "IncompleteSignatureException"));
        // Each is refused from the headers alone, before a body is read.
        let headers = signed("us-east-1", "firehose", true);
        assert!(check_headers(&keys, &headers, now, scope).is_err());
    }

    #[test]
    fn canonical_queries_sort_and_encode() {
        assert_eq!(canonical_query("b=2&a=x%20y&c"), "a=x%20y&b=2&c=");
    }
}

//! Redaction of secrets in what sluice prints about a config: URLs (a userinfo password, query
//! parameters that look like credentials) and the values of keys that hold secrets (`secret`,
//! `secret_access_key`, `access_key`, `token`, `password`, `bearer_token`, …).
//!
//! Guarantees: [`text`] leaves everything but those values as it was (positions in a line shift
//! only where a value was replaced), and never panics on any input; a redacted value becomes
//! `***`. Every place that prints config text — diagnostics and their quoted source lines,
//! `sluice validate`, the run summary, DescribeDeliveryStream — goes through here.

/// What a redacted value is replaced with.
pub const MASK: &str = "***";

/// Key names (in config files) whose values are secrets, and endings that mark one.
const SECRET_KEYS: &[&str] = &["secret", "token", "password", "passwd", "apikey"];
const SECRET_ENDINGS: &[&str] = &[
    "_secret",
    "_token",
    "_password",
    "access_key",
    "account_key",
    "sas_key",
    "hash_key",
    "api_key",
    "private_key",
    "_credentials",
];
/// Query parameter names (lowercased) that look like credentials, and parts that mark one.
const SECRET_PARAMETER_PARTS: &[&str] =
    &["token", "key", "secret", "password", "passwd", "pwd", "sig", "credential", "auth", "session"];

/// Whether a config key holds a secret.
pub fn is_secret_key(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    SECRET_KEYS.contains(&key.as_str()) || SECRET_ENDINGS.iter().any(|e| key.ends_with(e))
}

fn is_secret_parameter(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    SECRET_PARAMETER_PARTS.iter().any(|p| name.contains(p))
}

/// `text` with every URL's password and credential-like query values, and every quoted value of a
/// secret key (`secret = "..."`, also inside inline tables), replaced by [`MASK`].
pub fn text(text: &str) -> String {
    urls(&values_of_secret_keys(text))
}

/// `error` and each of its causes (`error sending request …: client error (Connect): tcp connect
/// error: Connection refused (os error 111)`), each said once, redacted as [`text`] does: what a
/// delivery failure logs and its error documents carry. An HTTP client's own message often names
/// only the request; the reason is in its causes.
pub fn error(error: &(dyn std::error::Error + 'static)) -> String {
    let mut said = error.to_string();
    let mut cause = error.source();
    while let Some(inner) = cause {
        let message = inner.to_string();
        if !said.contains(&message) {
            said.push_str(": ");
            said.push_str(&message);
        }
        cause = inner.source();
    }
    text(&said)
}

/// One URL with its password and credential-like query values masked.
pub fn url(url: &str) -> String {
    urls(url)
}

/// Masks the URLs found in `text` (a URL runs from its scheme to whitespace, a quote or a backtick).
fn urls(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("://") {
        let scheme_start = rest[..at]
            .char_indices()
            .rev()
            .find(|&(_, c)| !(c.is_ascii_alphanumeric() || "+-.".contains(c)))
            .map_or(0, |(i, c)| i + c.len_utf8());
        let end =
            rest[at + 3..].find(|c: char| c.is_whitespace() || "\"'`<>".contains(c)).map_or(rest.len(), |i| at + 3 + i);
        out.push_str(&rest[..scheme_start]);
        out.push_str(&rest[scheme_start..at + 3]);
        out.push_str(&mask_url_rest(&rest[at + 3..end]));
        rest = &rest[end..];
    }
    out.push_str(rest);
    out
}

/// Masks the password of an authority's userinfo and the credential-like query values of what
/// follows a URL's `://`.
fn mask_url_rest(rest: &str) -> String {
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, path) = rest.split_at(authority_end);
    let mut out = String::with_capacity(rest.len());
    match authority.rfind('@') {
        Some(at) => {
            let userinfo = &authority[..at];
            match userinfo.split_once(':') {
                Some((user, _)) => {
                    out.push_str(user);
                    out.push(':');
                    out.push_str(MASK);
                }
                None => out.push_str(userinfo),
            }
            out.push_str(&authority[at..]);
        }
        None => out.push_str(authority),
    }
    let Some(query_at) = path.find('?') else {
        out.push_str(path);
        return out;
    };
    out.push_str(&path[..=query_at]);
    let query = &path[query_at + 1..];
    let (query, fragment) = query.split_at(query.find('#').unwrap_or(query.len()));
    let masked: Vec<String> = query
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some((name, value)) if is_secret_parameter(name) && !value.is_empty() => format!("{name}={MASK}"),
            _ => pair.to_string(),
        })
        .collect();
    out.push_str(&masked.join("&"));
    out.push_str(fragment);
    out
}

/// Masks the quoted value after `key =` wherever `key` is a secret key.
fn values_of_secret_keys(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut copied = 0;
    let mut i = 0;
    while i < bytes.len() {
        // A key: a run of key characters not preceded by one.
        let is_key_char = |b: u8| b.is_ascii_alphanumeric() || b == b'_' || b == b'-';
        if !is_key_char(bytes[i]) || i > 0 && is_key_char(bytes[i - 1]) {
            i += 1;
            continue;
        }
        let key_end = (i..bytes.len()).find(|&j| !is_key_char(bytes[j])).unwrap_or(bytes.len());
        let key = &text[i..key_end];
        let mut j = key_end;
        // Allow a closing quote of a quoted key, spaces, `=` or `:`, spaces.
        while j < bytes.len() && (bytes[j] == b'"' || bytes[j] == b' ' || bytes[j] == b'\t') {
            j += 1;
        }
        if j >= bytes.len() || !(bytes[j] == b'=' || bytes[j] == b':') || !is_secret_key(key) {
            i = key_end;
            continue;
        }
        j += 1;
        while j < bytes.len() && (bytes[j] == b' ' || bytes[j] == b'\t') {
            j += 1;
        }
        let Some(&quote) = bytes.get(j) else { break };
        if quote != b'"' && quote != b'\'' {
            i = key_end;
            continue;
        }
        // Find the closing quote (a basic string may escape one).
        let mut k = j + 1;
        while k < bytes.len() && bytes[k] != quote {
            k += if quote == b'"' && bytes[k] == b'\\' { 2 } else { 1 };
        }
        let value_end = k.min(bytes.len());
        // `${NAME}` names a variable, not a secret: it stays readable (a default after `:-` does not).
        let value = &text[j + 1..value_end];
        let inner = value.strip_prefix("${").and_then(|v| v.strip_suffix('}')).filter(|v| !v.contains(['$', '{', '}']));
        match inner {
            Some(inner) => {
                if let Some((name, default)) = inner.split_once(":-")
                    && !default.is_empty()
                {
                    out.push_str(&text[copied..=j]);
                    out.push_str(&format!("${{{name}:-{MASK}}}"));
                    copied = value_end;
                }
            }
            None if value_end > j + 1 => {
                out.push_str(&text[copied..=j]);
                out.push_str(MASK);
                copied = value_end;
            }
            None => {}
        }
        i = value_end.max(key_end);
    }
    out.push_str(&text[copied..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[derive(Debug)]
    struct Failure(&'static str, Option<Box<Failure>>);

    impl std::fmt::Display for Failure {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(self.0)
        }
    }

    impl std::error::Error for Failure {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            self.1.as_deref().map(|e| e as &(dyn std::error::Error + 'static))
        }
    }

    #[test]
    fn an_error_is_said_with_each_cause_once_and_redacted() {
        let refused = Failure("connection refused", None);
        let connect = Failure("connect to https://user:pw@host/ failed", Some(Box::new(refused)));
        // A cause whose message the error already holds is not said again.
        let repeated = Failure("connect to https://user:pw@host/ failed", Some(Box::new(connect)));
        let sending = Failure("error sending request", Some(Box::new(repeated)));
        assert_eq!(
            error(&sending),
            "error sending request: connect to https://user:***@host/ failed: connection refused"
        );
        assert_eq!(error(&Failure("alone", None)), "alone");
    }

    #[test]
    fn masks_url_passwords_and_credential_parameters() {
        assert_eq!(
            url("https://user:hunter2@collector.example.com:8443/in?token=abc&env=prod&X-Amz-Signature=f00#top"),
            "https://user:***@collector.example.com:8443/in?token=***&env=prod&X-Amz-Signature=***#top"
        );
        assert_eq!(url("s3://bucket/prefix?region=eu"), "s3://bucket/prefix?region=eu");
        assert_eq!(url("https://user@host/p"), "https://user@host/p");
        // Found by tests/fuzz.rs: a multi-byte character right before the scheme.
        assert_eq!(text("scheme `memo\u{fffd}y://x`"), "scheme `memo\u{fffd}y://x`");
        assert_eq!(text("é://a:b@h"), "é://a:***@h");
        assert_eq!(
            text("bad url `https://a:b@h/x?sig=1`: no scheme"),
            "bad url `https://a:***@h/x?sig=***`: no scheme"
        );
    }

    #[test]
    fn masks_the_values_of_secret_keys_only() {
        let line =
            r#"auth = { access_keys = [{ id = "AKID", secret = "s3cr\"et" }] }, bearer_token = 't0k', json_key = "ts""#;
        assert_eq!(
            text(line),
            r#"auth = { access_keys = [{ id = "AKID", secret = "***" }] }, bearer_token = '***', json_key = "ts""#
        );
        assert_eq!(
            text(r#"secret_access_key = "x", access_key_id = "AKID""#),
            r#"secret_access_key = "***", access_key_id = "AKID""#
        );
        assert_eq!(text(r#"password="p" hash_key = "${KEY}""#), r#"password="***" hash_key = "${KEY}""#);
        assert_eq!(text(r#"token = "${T:-s3cr3t}""#), r#"token = "${T:-***}""#);
        assert_eq!(text("secret = 5"), "secret = 5");
        assert_eq!(text("tokens are fine"), "tokens are fine");
    }

    proptest! {
        #[test]
        fn never_panics_and_leaves_text_without_secrets_alone(s in "\\PC{0,80}") {
            let masked = text(&s);
            if !s.contains("://") && !s.contains('=') && !s.contains(':') {
                prop_assert_eq!(masked, s);
            }
        }
    }
}

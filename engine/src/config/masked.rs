//! A pipeline file as `sluice validate` shows it: `${VAR}`s expanded, every secret replaced by
//! `***`, so that what is printed can be pasted into a ticket.
//!
//! Guarantees: a value is masked when its key names a secret (`secret`, `secret_access_key`,
//! `session_token`, `token`, `bearer_token`, `password`, `hash_key`, `access_key`, `sas_token`,
//! `client_secret`, `private_key`, … — any key containing `secret`, `token`, `password` or
//! `private_key`, or equal to `hash_key`, `access_key` or `key` in an auth table) and every
//! `user:password@` in a URL has its password masked; a string that cannot be expanded is shown
//! as written. Nothing else is changed.

use toml::Value;

/// Whether a value under `key` is a secret.
fn is_secret(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    ["secret", "token", "password", "private_key", "credential"].iter().any(|s| key.contains(s))
        || ["hash_key", "access_key", "sas", "api_key", "apikey"].contains(&key.as_str())
}

/// `text` with the password of every `scheme://user:password@` masked.
fn mask_url_passwords(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("://") {
        let (head, tail) = rest.split_at(at + 3);
        out.push_str(head);
        let authority_end = tail.find(['/', '?', '#', ' ', '"']).unwrap_or(tail.len());
        let authority = &tail[..authority_end];
        match authority.rfind('@').map(|at| (&authority[..at], &authority[at..])) {
            Some((userinfo, host)) if userinfo.contains(':') => {
                let user = userinfo.split(':').next().unwrap_or_default();
                out.push_str(&format!("{user}:***{host}"));
            }
            _ => out.push_str(authority),
        }
        rest = &tail[authority_end..];
    }
    out.push_str(rest);
    out
}

fn mask(value: &mut Value, key: &str) {
    match value {
        Value::String(s) => {
            if let Ok(Some(expanded)) = super::document::expand_env_in(s) {
                *s = expanded;
            }
            *s = if is_secret(key) && !s.is_empty() { "***".to_string() } else { mask_url_passwords(s) };
        }
        Value::Array(items) => items.iter_mut().for_each(|item| mask(item, key)),
        Value::Table(table) => table.iter_mut().for_each(|(k, v)| mask(v, k)),
        _ => {}
    }
}

/// The pipeline file `text` with variables expanded and secrets masked, as TOML; `None` when it
/// is not TOML.
pub fn masked(text: &str) -> Option<String> {
    let mut table: toml::Table = text.parse().ok()?;
    table.iter_mut().for_each(|(k, v)| mask(v, k));
    toml::to_string(&table).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_and_url_passwords_are_masked_and_nothing_else() {
        let text = r#"
[sources.api]
type = "firehose"
auth = { access_keys = [{ id = "AKID", secret = "s3cr3t", allow = ["PutRecord"] }] }
[sources.http]
bearer_tokens = [{ name = "a", token = "tok" }]
[transforms.mask]
hash_key = "hk"
[sinks.pg]
url = "postgres://sluice:pgpass@127.0.0.1:5432/db"
options = { secret_access_key = "sak", region = "eu-west-1" }
"#;
        let shown = masked(text).unwrap();
        for secret in ["s3cr3t", "tok\"", "\"hk\"", "pgpass", "sak"] {
            assert!(!shown.contains(secret), "{secret} shown: {shown}");
        }
        for kept in ["AKID", "PutRecord", "name = \"a\"", "postgres://sluice:***@127.0.0.1:5432/db", "eu-west-1"] {
            assert!(shown.contains(kept), "{kept} missing: {shown}");
        }
        assert!(masked("not toml [").is_none());
    }
}

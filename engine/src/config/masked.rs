//! A pipeline file as `sluice validate` shows it: `${VAR}`s expanded (`${file:…}` left as written),
//! every secret replaced by [`crate::redact::MASK`], so that what is printed can be pasted into a
//! ticket.
//!
//! Guarantees: what counts as a secret is [`crate::redact`]'s (the values of secret keys, URL
//! passwords and credential-like query parameters), so this and every other place that prints
//! config agree; a string that cannot be expanded is shown as written; nothing else changes.

use toml::Value;

use crate::redact::{MASK, is_secret_key};

fn mask(value: &mut Value, key: &str) {
    match value {
        Value::String(s) => {
            if let Ok(Some(expanded)) = super::document::expand_env_in(s, None) {
                *s = expanded;
            }
            *s = if is_secret_key(key) && !s.is_empty() { MASK.to_string() } else { crate::redact::url(s) };
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

    #[test]
    fn a_file_reference_is_shown_as_written() {
        let shown =
            masked("[sinks.s]\nname = \"${file:/etc/hostname}\"\ntoken = \"${file:/run/secrets/t}\"\n").unwrap();
        assert!(shown.contains("name = \"${file:/etc/hostname}\""), "{shown}");
        assert!(shown.contains("token = \"***\""), "{shown}");
    }
}

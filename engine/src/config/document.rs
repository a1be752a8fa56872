//! The pipeline file as a tree of spanned TOML values, and typed reads from it that report problems
//! as [`Diagnostic`]s pointing at the offending key or value.
//!
//! Guarantees: every string has had `${VAR}` replaced from the environment (an unset variable is an
//! error at that string, never an empty string, unless it gives a default: `${VAR:-default}`) and
//! `${file:PATH}` by the contents of that file (a mounted secret: a Kubernetes or Docker secret, a
//! systemd credential), PATH relative to the pipeline file's folder, one trailing newline removed, a
//! file that cannot be read an error at that string; every read that fails says where and what was
//! expected; keys nobody read are reported as unknown, with the nearest known key as a hint; a
//! connector's table read into its struct reports every key serde rejects, not the first.

use std::ops::Range;
use std::path::Path;

use serde::de::DeserializeOwned;
use toml::Spanned;
use toml::de::{DeTable, DeValue};

use super::diagnostic::{Diagnostic, Problems, did_you_mean, unknown_key_hint};

/// A spanned TOML value; it may borrow from the text it was parsed from.
pub type Value<'a> = Spanned<DeValue<'a>>;

/// Parses TOML text into a spanned table and expands `${VAR}` and `${file:PATH}` (PATH relative to
/// `base_dir`) in every string.
///
/// The tree borrows from `source`; what a pipeline is resolved into owns its data, so the text is
/// dropped once the pipeline is loaded.
pub fn parse_document<'a>(source: &'a str, base_dir: &Path) -> Result<Section<'a>, Vec<Diagnostic>> {
    let (table, errors) = DeTable::parse_recoverable(source);
    if !errors.is_empty() {
        return Err(errors
            .into_iter()
            .map(|e| {
                Diagnostic::new(e.span().unwrap_or(0..0), e.message().trim().to_string())
                    .with_hint("this is not valid TOML; see https://toml.io for the syntax")
            })
            .collect());
    }
    let span = table.span();
    let mut table = table.into_inner();
    let mut problems = Vec::new();
    for (_, value) in table.iter_mut() {
        expand_env(value, base_dir, &mut problems);
    }
    if problems.is_empty() {
        Ok(Section {
            path: String::new(),
            span,
            engine_keys: &[],
            asked: Vec::new(),
            misread: Vec::new(),
            entries: table,
        })
    } else {
        Err(problems)
    }
}

fn i64_of(i: &toml::de::DeInteger<'_>) -> Option<i64> {
    i64::from_str_radix(i.as_str(), i.radix()).ok()
}

/// Expands `${VAR}` and `${file:PATH}` in every string of `value`.
fn expand_env(value: &mut Value<'_>, base_dir: &Path, problems: &mut Vec<Diagnostic>) {
    let span = value.span();
    match value.get_mut() {
        DeValue::String(s) => match expand_env_in(s, Some(base_dir)) {
            Ok(Some(expanded)) => *s = std::borrow::Cow::Owned(expanded),
            Ok(None) => {}
            Err(e) => problems.push(Diagnostic::new(span, e.0).with_hint(e.1)),
        },
        DeValue::Array(items) => items.iter_mut().for_each(|v| expand_env(v, base_dir, problems)),
        DeValue::Table(t) => t.iter_mut().for_each(|(_, v)| expand_env(v, base_dir, problems)),
        _ => {}
    }
}

/// What starts a file reference: `${file:PATH}`.
const FILE_REFERENCE: &str = "file:";
/// The largest file a `${file:…}` reads: a secret, a key or a token, not data.
const MAX_REFERENCED_FILE_BYTES: u64 = 64 * 1024;

/// The contents of the file `${file:<path>}` names (relative to `base_dir`), one trailing newline
/// and a leading UTF-8 byte order mark removed (PowerShell's `Out-File -Encoding utf8` and older
/// Notepads write one: it is no part of a token); `Ok(None)` when it does not exist; an error
/// (message, hint) when it cannot be read or is not UTF-8 (UTF-16 named as such).
fn referenced_file(path: &str, base_dir: &Path) -> Result<Option<String>, (String, String)> {
    use std::io::Read as _;
    let cannot = |why: String| {
        Err((
            format!("cannot read `{path}` for `${{file:{path}}}`: {why}"),
            format!(
                "`${{file:PATH}}` is replaced by the file's contents (at most {} KiB of UTF-8, one trailing newline and a byte order mark removed), PATH relative to the pipeline file's folder",
                MAX_REFERENCED_FILE_BYTES / 1024
            ),
        ))
    };
    let file = match std::fs::File::open(base_dir.join(path)) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return cannot(e.to_string()),
    };
    let mut bytes = Vec::new();
    match file.take(MAX_REFERENCED_FILE_BYTES + 1).read_to_end(&mut bytes) {
        Ok(n) if n as u64 > MAX_REFERENCED_FILE_BYTES => {
            cannot(format!("it is larger than {} KiB", MAX_REFERENCED_FILE_BYTES / 1024))
        }
        Ok(_) if bytes.starts_with(b"\xFF\xFE") || bytes.starts_with(b"\xFE\xFF") => {
            cannot("it is UTF-16 text (as Windows PowerShell's `Out-File` writes by default), not UTF-8: write it with `-Encoding utf8` (or `Set-Content`)".into())
        }
        Ok(_) => {
            let Ok(text) = String::from_utf8(bytes) else { return cannot("it is not UTF-8 text".into()) };
            let text = text.strip_prefix('\u{feff}').unwrap_or(&text);
            let line = text.strip_suffix('\n').map_or(text, |line| line.strip_suffix('\r').unwrap_or(line));
            Ok(Some(line.to_string()))
        }
        Err(e) => cannot(e.to_string()),
    }
}

/// `Ok(None)` when the string has no `${`; an error (message, hint) for an unset variable or a
/// missing file without a default (`${NAME:-default}`, `${file:PATH:-default}`), a file that cannot
/// be read, or an unclosed `${`. `$${` is a literal `${`. Without `files` (a display of the
/// config), a `${file:…}` stays as written: its contents are never shown.
pub(super) fn expand_env_in(s: &str, files: Option<&Path>) -> Result<Option<String>, (String, String)> {
    if !s.contains("${") {
        return Ok(None);
    }
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find("${") {
        if rest[..i].ends_with('$') {
            out.push_str(&rest[..i - 1]);
            out.push_str("${");
            rest = &rest[i + 2..];
            continue;
        }
        out.push_str(&rest[..i]);
        let after = &rest[i + 2..];
        let Some(end) = after.find('}') else {
            return Err(("unclosed `${` in string".into(), "write `${NAME}`, or `$${` for a literal `${`".into()));
        };
        let (name, default) = match after[..end].split_once(":-") {
            Some((name, default)) => (name, Some(default)),
            None => (&after[..end], None),
        };
        let value = match (name.strip_prefix(FILE_REFERENCE), files) {
            // A display of the config: the reference as written.
            (Some(_), None) => Some(format!("${{{}}}", &after[..end])),
            (Some(path), Some(base_dir)) => referenced_file(path, base_dir)?,
            (None, _) => std::env::var(name).ok(),
        };
        match (value, default) {
            (Some(v), _) => out.push_str(&v),
            (None, Some(default)) => out.push_str(default),
            (None, None) => {
                return Err(match name.strip_prefix(FILE_REFERENCE) {
                    Some(path) => (
                        format!("`{path}` does not exist (read for `${{file:{path}}}`)"),
                        "mount the secret there, or give a default: ${file:PATH:-value}; a relative PATH is taken from the pipeline file's folder".into(),
                    ),
                    None => (
                        format!("environment variable `{name}` is not set"),
                        format!(
                            "export {name}=... before running sluice, or give a default: ${{{name}:-value}}; an unset variable is an error, never an empty string; `$${{` writes a literal `${{`"
                        ),
                    ),
                });
            }
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(Some(out))
}

/// What kind of TOML value this is, for messages.
pub fn type_name(v: &DeValue<'_>) -> &'static str {
    match v {
        DeValue::String(_) => "a string",
        DeValue::Integer(_) => "an integer",
        DeValue::Float(_) => "a float",
        DeValue::Boolean(_) => "a boolean",
        DeValue::Datetime(_) => "a datetime",
        DeValue::Array(_) => "an array",
        DeValue::Table(_) => "a table",
    }
}

/// A TOML table being read: keys are taken out as they are read, and what is left is unknown.
#[derive(Debug, Clone)]
pub struct Section<'a> {
    /// Dotted path of the table for messages, e.g. `sinks.archive`.
    pub path: String,
    /// Where the table is in the source.
    pub span: Range<usize>,
    /// Keys the engine reads from this table whether or not they are present: also accepted keys
    /// when the connector rejects one ([`Self::accept_engine_keys`]).
    engine_keys: &'static [&'static str],
    /// Keys already asked for (by the engine or a connector's helper): accepted keys too.
    asked: Vec<String>,
    /// Keys taken whose value a `take_*` refused, with the problem reported ([`Self::misread`]).
    misread: Vec<String>,
    entries: DeTable<'a>,
}

/// A key of a table and where its value is ([`Section::key_at`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyAt {
    /// Its name in messages, e.g. `` `sinks.siem.timeout_s` ``.
    pub label: String,
    /// Its value's span.
    pub span: Range<usize>,
}

impl KeyAt {
    /// An optional number's value: `default` when absent, the value when within `range`, else the
    /// problem in the words the engine uses for its own keys ("`sinks.siem.timeout_s` = 0 is out
    /// of range: expected 1..=600") with `why` (its meaning and default) as the hint.
    pub fn within<T: PartialOrd + std::fmt::Display + Copy>(
        &self,
        value: Option<T>,
        default: T,
        range: std::ops::RangeInclusive<T>,
        why: &str,
    ) -> Result<T, Diagnostic> {
        match value {
            None => Ok(default),
            Some(v) if range.contains(&v) => Ok(v),
            Some(v) => Err(Diagnostic::new(
                self.span.clone(),
                format!("{} = {v} is out of range: expected {}..={}", self.label, range.start(), range.end()),
            )
            .with_hint(why.to_string())),
        }
    }
}

impl<'a> Section<'a> {
    /// Whether the table has `key`.
    pub fn contains(&self, key: &str) -> bool {
        self.entries.contains_key(key)
    }

    /// The keys left, with their spans, in source order.
    pub fn keys(&self) -> Vec<(String, Range<usize>)> {
        let mut keys: Vec<_> = self.entries.keys().map(|k| (k.get_ref().to_string(), k.span())).collect();
        keys.sort_by_key(|(_, s)| s.start);
        keys
    }

    /// The span of `key`, if present.
    pub fn key_span(&self, key: &str) -> Option<Range<usize>> {
        self.entries.get_key_value(key).map(|(k, _)| k.span())
    }

    /// The span of `key`'s value, if present (where a bad value is pointed at).
    pub fn value_span(&self, key: &str) -> Option<Range<usize>> {
        self.entries.get(key).map(|v| v.span())
    }

    /// The spans of the keys written in `key`'s table value (`options = { region = "…" }`), by
    /// name: where a problem with one of them is pointed at. Empty when `key` is absent or no table.
    pub fn member_key_spans(&self, key: &str) -> Vec<(String, Range<usize>)> {
        match self.entries.get(key).map(|v| v.get_ref()) {
            Some(DeValue::Table(members)) => members.keys().map(|k| (k.get_ref().to_string(), k.span())).collect(),
            _ => Vec::new(),
        }
    }

    fn label(&self, key: &str) -> String {
        if self.path.is_empty() { format!("`{key}`") } else { format!("`{}.{key}`", self.path) }
    }

    /// The spans of the elements of `key`'s array value, in order: where a problem with one of them
    /// is pointed at. Empty when `key` is absent or no array.
    pub fn element_spans(&self, key: &str) -> Vec<Range<usize>> {
        match self.entries.get(key).map(|v| v.get_ref()) {
            Some(DeValue::Array(elements)) => elements.iter().map(|e| e.span()).collect(),
            _ => Vec::new(),
        }
    }

    /// `key` as a connector's checks of its value point at it: its value's span (the table's when
    /// it is absent) and its name in messages. Taken before the table is deserialized.
    pub fn key_at(&self, key: &str) -> KeyAt {
        KeyAt { label: self.label(key), span: self.value_span(key).unwrap_or(self.span.clone()) }
    }

    /// Says which of the engine's keys this table takes, before its connector reads the rest:
    /// they are listed as accepted when the connector rejects a key, and a key the engine asked
    /// for but refuses here (a fixed-body sink's `format`) no longer is.
    pub fn accept_engine_keys(&mut self, keys: &'static [&'static str]) {
        self.engine_keys = keys;
        self.asked.retain(|asked| keys.contains(&asked.as_str()));
    }

    /// Whether `key` was written but a `take_*` refused its value (and reported why): a check that
    /// needs the key is then skipped, not made as if it were absent (which would report a
    /// follow-on, "needs `key`", of the problem already said).
    pub fn misread(&self, key: &str) -> bool {
        self.misread.iter().any(|k| k == key)
    }

    /// Reports `problem` of `key`'s value and remembers the key as [`Self::misread`].
    fn refuse<T>(&mut self, key: &str, problem: Diagnostic, problems: &mut Vec<Diagnostic>) -> Option<T> {
        self.misread.push(key.to_string());
        problems.push(problem);
        None
    }

    /// Takes `key` out of the table.
    pub fn take(&mut self, key: &str) -> Option<Value<'a>> {
        if !self.asked.iter().any(|k| k == key) {
            self.asked.push(key.to_string());
        }
        self.entries.remove(key)
    }

    /// Takes `keys` out of the table as they are written, to put them back with
    /// [`Self::restore`] (a connector reading a key the engine also knows keeps it from the engine).
    pub fn set_aside(&mut self, keys: &[&str]) -> Vec<(toml::Spanned<std::borrow::Cow<'a, str>>, Value<'a>)> {
        keys.iter().filter_map(|k| self.entries.remove_entry(*k)).collect()
    }

    /// Puts back what [`Self::set_aside`] took.
    pub fn restore(&mut self, entries: Vec<(toml::Spanned<std::borrow::Cow<'a, str>>, Value<'a>)>) {
        for (key, value) in entries {
            self.entries.insert(key, value);
        }
    }

    /// Takes a sub-table.
    pub fn take_table(&mut self, key: &str, problems: &mut Vec<Diagnostic>) -> Option<Section<'a>> {
        let value = self.take(key)?;
        let span = value.span();
        let path = if self.path.is_empty() { key.to_string() } else { format!("{}.{key}", self.path) };
        match value.into_inner() {
            DeValue::Table(entries) => {
                Some(Section { path, span, engine_keys: &[], asked: Vec::new(), misread: Vec::new(), entries })
            }
            other => {
                let problem =
                    Diagnostic::new(span, format!("{} must be a table, found {}", self.label(key), type_name(&other)));
                self.refuse(key, problem, problems)
            }
        }
    }

    /// Takes a string.
    pub fn take_string(&mut self, key: &str, problems: &mut Vec<Diagnostic>) -> Option<Spanned<String>> {
        let value = self.take(key)?;
        let span = value.span();
        match value.into_inner() {
            DeValue::String(s) => Some(Spanned::new(span, s.into_owned())),
            other => {
                let problem =
                    Diagnostic::new(span, format!("{} must be a string, found {}", self.label(key), type_name(&other)))
                        .with_hint_if(kind_hint(key, &other, "a string"));
                self.refuse(key, problem, problems)
            }
        }
    }

    /// Takes an array of strings.
    pub fn take_string_list(
        &mut self,
        key: &str,
        problems: &mut Vec<Diagnostic>,
    ) -> Option<Spanned<Vec<Spanned<String>>>> {
        let value = self.take(key)?;
        let span = value.span();
        let label = self.label(key);
        match value.into_inner() {
            DeValue::Array(items) => {
                let mut out = Vec::new();
                for item in items {
                    let item_span = item.span();
                    match item.into_inner() {
                        DeValue::String(s) => out.push(Spanned::new(item_span, s.into_owned())),
                        other => problems.push(
                            Diagnostic::new(
                                item_span,
                                format!("{label} must list strings, found {}", type_name(&other)),
                            )
                            .with_hint_if(kind_hint("", &other, "a string")),
                        ),
                    }
                }
                Some(Spanned::new(span, out))
            }
            other => {
                let hint = kind_hint(key, &other, "an array").unwrap_or_else(|| format!("write {key} = [\"...\"]"));
                let problem =
                    Diagnostic::new(span, format!("{label} must be an array of strings, found {}", type_name(&other)))
                        .with_hint(hint);
                self.refuse(key, problem, problems)
            }
        }
    }

    /// Takes an integer within `range` (inclusive).
    pub fn take_int_in(
        &mut self,
        key: &str,
        range: std::ops::RangeInclusive<i64>,
        why: &str,
        problems: &mut Vec<Diagnostic>,
    ) -> Option<Spanned<i64>> {
        let value = self.take(key)?;
        let span = value.span();
        match value.into_inner() {
            DeValue::Integer(i) => {
                let n = i64_of(&i).unwrap_or(i64::MAX);
                // The one place a number out of range is said, for the engine's keys and connectors'.
                let at = KeyAt { label: self.label(key), span: span.clone() };
                match at.within(Some(n), n, range, why) {
                    Ok(n) => Some(Spanned::new(span, n)),
                    Err(problem) => self.refuse(key, problem, problems),
                }
            }
            other => {
                let problem = Diagnostic::new(
                    span,
                    format!("{} must be an integer, found {}", self.label(key), type_name(&other)),
                )
                .with_hint_if(kind_hint(key, &other, "an integer"));
                self.refuse(key, problem, problems)
            }
        }
    }

    /// Takes a boolean.
    pub fn take_bool(&mut self, key: &str, problems: &mut Vec<Diagnostic>) -> Option<Spanned<bool>> {
        let value = self.take(key)?;
        let span = value.span();
        match value.into_inner() {
            DeValue::Boolean(b) => Some(Spanned::new(span, b)),
            other => {
                let problem = Diagnostic::new(
                    span,
                    format!("{} must be true or false, found {}", self.label(key), type_name(&other)),
                )
                .with_hint("write true or false, without quotes");
                self.refuse(key, problem, problems)
            }
        }
    }

    /// Takes an array of tables (`[[key]]` or `key = [{...}, ...]`).
    pub fn take_table_array(&mut self, key: &str, problems: &mut Vec<Diagnostic>) -> Option<Vec<Section<'a>>> {
        let value = self.take(key)?;
        let span = value.span();
        let label = self.label(key);
        let path = if self.path.is_empty() { key.to_string() } else { format!("{}.{key}", self.path) };
        match value.into_inner() {
            DeValue::Array(items) => Some(
                items
                    .into_iter()
                    .enumerate()
                    .filter_map(|(i, item)| Section::from_value(format!("{path}[{i}]"), item, problems))
                    .collect(),
            ),
            other => {
                let problem =
                    Diagnostic::new(span, format!("{label} must be an array of tables, found {}", type_name(&other)))
                        .with_hint(format!("write each entry as [[{path}]]"));
                self.refuse(key, problem, problems)
            }
        }
    }

    /// Takes a table whose values are all strings.
    pub fn take_string_map(
        &mut self,
        key: &str,
        problems: &mut Vec<Diagnostic>,
    ) -> Option<std::collections::BTreeMap<String, String>> {
        let table = self.take_table(key, problems)?;
        let mut out = std::collections::BTreeMap::new();
        for (k, span, v) in table.into_entries() {
            match v.into_inner() {
                DeValue::String(s) => {
                    out.insert(k, s.into_owned());
                }
                other => problems
                    .push(Diagnostic::new(span, format!("`{key}.{k}` must be a string, found {}", type_name(&other)))),
            }
        }
        Some(out)
    }

    /// Reports every key still in the table as unknown; `known` lists the accepted keys for hints.
    pub fn deny_unknown(self, known: &[&str], problems: &mut Vec<Diagnostic>) {
        for (key, span) in self.keys() {
            let (hint, _) = unknown_key_hint(&key, known);
            problems.push(Diagnostic::new(span, format!("unknown key {}", self.label(&key))).with_hint(hint));
        }
    }

    /// Deserializes what is left of the table into a connector's own `deny_unknown_fields` struct;
    /// a failure points at the key or value serde rejected. An unknown key is reported like the
    /// engine's own ([`Section::deny_unknown`]): its hint lists every key the table accepts, the
    /// engine's included. Every problem is reported at once, into `problems`: the key a problem is
    /// at is left out and the rest deserialized again until serde takes it; the config without the
    /// keys left out is returned, so the connector checks what is left and reports its own problems
    /// too. A required key that is absent is reported (unless it was left out, or misspelt as an
    /// unknown key said) and stood in for (an empty string, 0, false, an empty list or table,
    /// whichever serde takes), so the rest is still read and the connector's checks of its other
    /// keys still run: `problems` knows which keys' problems it holds ([`Problems::said`]), keeps
    /// no check of a stand-in or of a key left out, and holds the key's absence, so no connector
    /// is built on a stand-in. `None` when no stand-in fits.
    pub fn deserialize<T: DeserializeOwned>(self, problems: &mut Problems) -> Option<T> {
        let whole = self.span.clone();
        let path = self.path.clone();
        let asked: Vec<&str> = self.engine_keys.iter().copied().chain(self.asked.iter().map(String::as_str)).collect();
        let mut entries = self.entries;
        let (mut left_out, mut misspelt): (Vec<String>, Vec<String>) = (Vec::new(), Vec::new());
        // Where each key left out was written (its name's span and its value's).
        let mut written_at: Vec<Range<usize>> = Vec::new();
        // A required key that is absent is reported, then stood in for by a placeholder (of each
        // kind in turn, until serde takes one) so the rest of the table is still read; the
        // connector is then not built. The placeholder's span is no key's: serde's complaint about
        // it means "another kind".
        let stand_in_span = whole.end..whole.end;
        let mut stand_in: Option<(Spanned<std::borrow::Cow<'a, str>>, usize)> = None;
        let mut stood_in: Vec<String> = Vec::new();
        loop {
            let value: Value = Spanned::new(whole.clone(), DeValue::Table(entries.clone()));
            let error = match T::deserialize(toml::de::ValueDeserializer::from(value)) {
                Ok(config) => {
                    // The connector's checks of what was said here are follow-ons: of a stand-in,
                    // at the table (where an absent key's problems point); of a key written
                    // wrong, where it was written.
                    if !stood_in.is_empty() {
                        written_at.push(whole);
                    }
                    let said = stood_in.into_iter().chain(left_out).chain(misspelt).collect();
                    problems.said_already(said, written_at);
                    return Some(config);
                }
                Err(error) => error,
            };
            let message = error.message().trim().to_string();
            let span = error.span().unwrap_or(whole.clone());
            // A problem anywhere else means the stand-in was taken.
            if let Some((key, kind)) = stand_in.take()
                && span == stand_in_span
            {
                let next = STAND_INS.get(kind + 1)?;
                entries.insert(key.clone(), stand_in_value(next, &stand_in_span));
                stand_in = Some((key, kind + 1));
                continue;
            }
            // (A key missing from a table inside a value is said of that value, below.)
            if let Some(missing) = message.strip_prefix("missing field `").and_then(|m| m.split('`').next())
                && span == whole
            {
                // A key missing because it was left out, or misspelt (as the unknown key said), is said once.
                if !left_out.iter().chain(&misspelt).any(|k| k == missing) {
                    problems.push(Diagnostic::new(span.clone(), in_toml_words(&message, &path, None)));
                }
                stood_in.push(missing.to_string());
                let key = Spanned::new(stand_in_span.clone(), std::borrow::Cow::Owned(missing.to_string()));
                entries.insert(key.clone(), stand_in_value(STAND_INS[0], &stand_in_span));
                stand_in = Some((key, 0));
                continue;
            }
            // The key the problem is at: its name, or somewhere in its value (then the problem is
            // said of that key, as `sinks.hook.backup_store`, with the keys accepted there).
            let at = |s: Range<usize>| s.start <= span.start && span.end <= s.end;
            let culprit = (span != whole)
                .then(|| entries.iter().find(|(k, v)| at(k.span()) || at(v.span())))
                .flatten()
                .map(|(k, v)| (k.clone(), at(v.span()) && !at(k.span())));
            // Said of the innermost key the problem is at (`sinks.hook.store.url`, `….patterns[1]`).
            let (place, accepted_here, nested, found) = match &culprit {
                Some((key, true)) => {
                    let (below, found) = entries.get(key).map(|v| path_within(v, &span)).unzip();
                    let below = below.unwrap_or_default();
                    (format!("{path}.{}{below}", key.get_ref()), &[][..], true, found)
                }
                _ => (path.clone(), &asked[..], false, None),
            };
            let found_kind = found.map(|v| type_name(v.get_ref()));
            problems.push(match explain_serde_message(&message, accepted_here) {
                Some(SerdeProblem::UnknownKey { key, hint, near }) => {
                    if !nested {
                        misspelt.extend(near);
                    }
                    Diagnostic::new(span.clone(), format!("unknown key `{place}.{key}`")).with_hint(hint)
                }
                Some(SerdeProblem::Other { hint }) => {
                    Diagnostic::new(span.clone(), in_toml_words(&message, &place, found_kind)).with_hint(hint)
                }
                None => {
                    let said = Diagnostic::new(span.clone(), in_toml_words(&message, &place, found_kind));
                    // A key's whole value written where a table belongs: how to write the table;
                    // a value of another kind that says what was meant: how to write it.
                    let hint = match &culprit {
                        Some((key, true))
                            if expects_a_table(&message) && entries.get(key).is_some_and(|v| v.span() == span) =>
                        {
                            table_hint::<T>(&entries, key, &whole, message.ends_with(" or a table"))
                        }
                        _ => found
                            .zip(expected_kind(&message))
                            .and_then(|(written, expected)| kind_hint(key_of(&place), written.get_ref(), expected)),
                    };
                    said.with_hint_if(hint)
                }
            });
            let (key, _) = culprit?;
            left_out.push(key.get_ref().to_string());
            if let Some(value) = entries.get(&key) {
                written_at.extend([key.span(), value.span()]);
            }
            entries.remove(&key);
        }
    }
}

/// What stands in for an absent required key, of each kind a connector's key can be.
const STAND_INS: &[&str] = &["\"\"", "0", "false", "[]", "{}"];

/// The value `text` (one of [`STAND_INS`]) at `span`.
fn stand_in_value(text: &'static str, span: &Range<usize>) -> Value<'static> {
    let value = DeValue::parse(text).map(Spanned::into_inner).unwrap_or(DeValue::Boolean(false));
    Spanned::new(span.clone(), value)
}

/// What a serde message about a table means to the user.
enum SerdeProblem {
    /// `unknown field `x``: a key nobody reads.
    UnknownKey { key: String, hint: String, near: Option<String> },
    /// Another message with a hint (an unknown variant's "did you mean").
    Other { hint: String },
}

/// serde says "unknown field `x`, expected one of `a`, `b`" (or "expected `a`", or "there are no
/// fields"): name the key, and suggest from the connector's keys and the engine's.
fn explain_serde_message(message: &str, engine_keys: &[&str]) -> Option<SerdeProblem> {
    let ticked = ticked(message);
    let (unknown, expected) = ticked.split_first()?;
    if message.starts_with("unknown field") {
        let mut accepted: Vec<&str> = expected.iter().chain(engine_keys).copied().collect();
        accepted.sort_unstable();
        accepted.dedup();
        let (hint, near) = unknown_key_hint(unknown, &accepted);
        return Some(SerdeProblem::UnknownKey { key: (*unknown).to_string(), hint, near: near.map(str::to_string) });
    }
    if message.starts_with("unknown variant") {
        let hint = match did_you_mean(unknown, expected.iter().copied()) {
            Some(k) => format!("did you mean `{k}`?"),
            None => format!("expected one of {}", join_ticked(expected)),
        };
        return Some(SerdeProblem::Other { hint });
    }
    None
}

/// What is written for a key whose value should be a table, to learn its keys from serde: no
/// struct has a field of this name, so serde answers "unknown field, expected one of" its fields.
const KEYS_PROBE: &str = "{ \"\\u0001\" = 0 }";

/// How to write `key`'s value as the table `T` expects there, with its keys, learnt by reading
/// `entries` (the table of `T`, spanning `whole`) again with [`KEYS_PROBE`] as the key's value: with
/// its `url` when a string was written for a table that takes one, or its URL alone when that is
/// taken too (`url_alone`). `None` when serde does not list the keys (a table of any keys, or one
/// that takes unknown keys).
fn table_hint<T: DeserializeOwned>(
    entries: &DeTable<'_>,
    key: &Spanned<std::borrow::Cow<'_, str>>,
    whole: &Range<usize>,
    url_alone: bool,
) -> Option<String> {
    let written = entries.get(key)?;
    let mut probe = entries.clone();
    probe.insert(key.clone(), stand_in_value(KEYS_PROBE, &written.span()));
    let refused = T::deserialize(toml::de::ValueDeserializer::from(Spanned::new(whole.clone(), DeValue::Table(probe))));
    let error = refused.err()?;
    let listed = error.message().strip_prefix("unknown field `\u{1}`")?;
    let keys = ticked(listed);
    let first = keys.first()?;
    let (key, keys) = (key.get_ref(), join_ticked(&keys));
    Some(match written.get_ref() {
        _ if url_alone => format!("write `{key} = \"s3://bucket/prefix\"` (a URL), or a table of its keys: {keys}"),
        DeValue::String(url) if listed.contains("`url`") => {
            format!("write `{key} = {{ url = {url:?} }}` (its keys: {keys})")
        }
        _ => format!("write `{key} = {{ {first} = … }}` (its keys: {keys})"),
    })
}

/// Whether serde's message says a table (a struct or a map, or "a URL or a table") was expected.
fn expects_a_table(message: &str) -> bool {
    let expected = message.rsplit_once(", expected ").map_or("", |(_, e)| e);
    expected.starts_with("struct ") || expected == "a map" || expected.ends_with(" or a table")
}

/// The path below `value` to the innermost value `span` is in (`.url`, `[1].name`; empty for
/// `value` itself), and that value.
fn path_within<'v, 'a>(value: &'v Value<'a>, span: &Range<usize>) -> (String, &'v Value<'a>) {
    let holds = |v: &Value<'_>| v.span().start <= span.start && span.end <= v.span().end;
    let (mut below, mut at) = (String::new(), value);
    while at.span() != *span {
        let inner = match at.get_ref() {
            DeValue::Table(table) => {
                table.iter().find(|(_, v)| holds(v)).map(|(k, v)| (format!(".{}", k.get_ref()), v))
            }
            DeValue::Array(items) => {
                items.iter().enumerate().find(|(_, v)| holds(v)).map(|(i, v)| (format!("[{i}]"), v))
            }
            _ => None,
        };
        let Some((step, v)) = inner else { break };
        below.push_str(&step);
        at = v;
    }
    (below, at)
}

/// The kind of value serde's "invalid type" message says was expected, in the engine's words
/// (`None` for other messages and for kinds no hint is given for).
fn expected_kind(message: &str) -> Option<&'static str> {
    let expected = message.strip_prefix("invalid type: ")?.rsplit_once(", expected ")?.1;
    ["an integer", "a number", "a string", "true or false", "an array"]
        .into_iter()
        .find(|k| *k == expected_words(expected))
}

/// The key a place ends with (`size_mb` of `sinks.out.buffer.size_mb`); empty for an array's item
/// (`columns[0]`), whose hint shows the value alone.
fn key_of(place: &str) -> &str {
    place.rsplit('.').next().filter(|k| !k.ends_with(']')).unwrap_or("")
}

/// How to write `written`, found where `expected` (one of [`expected_kind`]'s kinds) belongs, when
/// it shows what was meant: a number or a boolean in quotes, a number or a boolean where a string
/// belongs, one value where a list belongs or a list of one where one value does, a whole number
/// written with a decimal point. `key` leads the example (`size_mb = 64`) unless empty.
fn kind_hint(key: &str, written: &DeValue<'_>, expected: &str) -> Option<String> {
    let example = |value: String| if key.is_empty() { value } else { format!("{key} = {value}") };
    let scalar = |v: &DeValue<'_>| -> Option<String> {
        match v {
            DeValue::String(s) => Some(format!("{s:?}")),
            DeValue::Integer(i) => Some(i.as_str().to_string()),
            DeValue::Float(f) => Some(f.as_str().to_string()),
            DeValue::Boolean(b) => Some(b.to_string()),
            _ => None,
        }
    };
    let hint = match (expected, written) {
        ("an integer", DeValue::String(s)) if s.trim().parse::<i64>().is_ok() => {
            format!("write the number without quotes: {}", example(s.trim().to_string()))
        }
        ("a number", DeValue::String(s)) if s.trim().parse::<f64>().is_ok_and(f64::is_finite) => {
            format!("write the number without quotes: {}", example(s.trim().to_string()))
        }
        ("an integer", DeValue::Float(f)) => match f.as_str().parse::<f64>() {
            Ok(x) if x.fract() == 0.0 && x.abs() < 1e15 => {
                format!("write a whole number, without a decimal point: {}", example(format!("{x:.0}")))
            }
            _ => "a whole number is expected here (no decimal point)".to_string(),
        },
        ("true or false", DeValue::String(s)) if matches!(s.trim(), "true" | "false") => {
            format!("write true or false without quotes: {}", example(s.trim().to_string()))
        }
        ("a string", DeValue::Integer(_) | DeValue::Float(_) | DeValue::Boolean(_)) => {
            format!("write it in quotes: {}", example(format!("{:?}", scalar(written)?)))
        }
        ("a string", DeValue::Array(items)) if items.len() == 1 && matches!(items[0].get_ref(), DeValue::String(_)) => {
            format!("one value, not a list: {}", example(scalar(items[0].get_ref())?))
        }
        ("an array", DeValue::String(_) | DeValue::Integer(_) | DeValue::Float(_) | DeValue::Boolean(_)) => {
            format!("write a list, even of one: {}", example(format!("[{}]", scalar(written)?)))
        }
        _ => return None,
    };
    Some(hint)
}

/// serde's (and toml's) message about the value at `place` in the words the engine uses for its
/// own keys ("`sinks.siem.timeout_s` must be an integer, found a string", "… = -1 is out of
/// range: expected 0 or more", "`sinks.siem` needs `url`"): serde speaks of Rust's types (`u64`,
/// `struct BackupStore`, `sequence`), which the user never wrote. `found` is the kind of value
/// written there, for toml's messages that do not say it. Any other message is kept, after
/// "in `place`:".
fn in_toml_words(message: &str, place: &str, found: Option<&'static str>) -> String {
    reworded(message, place, found).unwrap_or_else(|| format!("in `{place}`: {message}"))
}

/// [`in_toml_words`] for the messages whose shape it knows.
fn reworded(message: &str, place: &str, found: Option<&'static str>) -> Option<String> {
    if let Some(key) = message.strip_prefix("missing field `").and_then(|m| m.strip_suffix('`')) {
        return Some(format!("`{place}` needs `{key}`"));
    }
    if let Some((written, expected)) = message.strip_prefix("invalid type: ").and_then(|m| m.rsplit_once(", expected "))
    {
        return Some(format!("`{place}` must be {}, found {}", expected_words(expected), found_words(written)));
    }
    if let Some((written, expected)) =
        message.strip_prefix("invalid value: ").and_then(|m| m.rsplit_once(", expected "))
    {
        let number = written.strip_prefix("integer `").and_then(|n| n.strip_suffix('`'));
        return match (number, integer_range(expected)) {
            (Some(n), Some(range)) => Some(format!("`{place}` = {n} is out of range: expected {range}")),
            _ => Some(format!("`{place}` must be {}, found {written}", expected_words(expected))),
        };
    }
    if let Some(expected) = message.strip_prefix("invalid length ").and_then(|m| m.split_once(", expected ")) {
        return expected.1.starts_with("struct ").then(|| format!("`{place}` must be a table, found an array"));
    }
    if let Some(name) = message.strip_prefix("unknown variant `").and_then(|m| m.split('`').next())
        && let Some(key) = place.rsplit('.').next().filter(|k| !k.ends_with(']'))
    {
        return Some(format!("unknown {key} `{name}`"));
    }
    if message == "wanted string or table" {
        return Some(format!("`{place}` must be a string or a table, found {}", found.unwrap_or("another kind")));
    }
    if message.starts_with("wanted exactly 1 element") {
        return Some(format!("`{place}` must be a string, or a table of one key"));
    }
    None
}

/// A Rust type serde expected, as a kind of TOML value.
fn expected_words(expected: &str) -> &str {
    match expected {
        "u8" | "u16" | "u32" | "u64" | "u128" | "usize" | "i8" | "i16" | "i32" | "i64" | "i128" | "isize" => {
            "an integer"
        }
        "f32" | "f64" => "a number",
        "a string" | "a borrowed string" | "string" => "a string",
        "a boolean" => "true or false",
        "a sequence" => "an array",
        "a map" => "a table",
        "a character" | "a char" => "a single character",
        e if e.starts_with("struct ") => "a table",
        other => other,
    }
}

/// What serde says was written (`sequence`, `integer `5``), as a kind of TOML value.
fn found_words(written: &str) -> &str {
    match written {
        "sequence" => "an array",
        "map" => "a table",
        w if w.starts_with("string ") => "a string",
        w if w.starts_with("integer `") => "an integer",
        w if w.starts_with("floating point `") => "a float",
        w if w.starts_with("boolean `") => "a boolean",
        other => other,
    }
}

/// The values an integer type takes, as the engine's range messages say them.
fn integer_range(expected: &str) -> Option<&'static str> {
    Some(match expected {
        "u8" => "0..=255",
        "u16" => "0..=65535",
        "u32" => "0..=4294967295",
        "u64" | "u128" | "usize" => "0 or more",
        "i8" => "-128..=127",
        "i16" => "-32768..=32767",
        "i32" => "-2147483648..=2147483647",
        _ => return None,
    })
}

/// The names between backticks in serde's `message` (`` unknown field `x`, expected `a` ``).
fn ticked(message: &str) -> Vec<&str> {
    message.split('`').skip(1).step_by(2).collect()
}

/// `a`, `b`, `c`
pub fn join_ticked(words: &[&str]) -> String {
    words.iter().map(|w| format!("`{w}`")).collect::<Vec<_>>().join(", ")
}

impl<'a> Section<'a> {
    /// Takes every entry out, in source order: `(key, key span, value)`.
    pub fn into_entries(self) -> Vec<(String, Range<usize>, Value<'a>)> {
        let mut entries: Vec<_> = self
            .entries
            .into_iter()
            .map(|(k, v)| {
                let span = k.span();
                (k.into_inner().into_owned(), span, v)
            })
            .collect();
        entries.sort_by_key(|(_, span, _)| span.start);
        entries
    }

    /// Turns a value into a section named `path`, or reports that it is not a table.
    pub fn from_value(path: String, value: Value<'a>, problems: &mut Vec<Diagnostic>) -> Option<Section<'a>> {
        let span = value.span();
        match value.into_inner() {
            DeValue::Table(entries) => {
                Some(Section { path, span, engine_keys: &[], asked: Vec::new(), misread: Vec::new(), entries })
            }
            other => {
                problems.push(
                    Diagnostic::new(span, format!("`{path}` must be a table, found {}", type_name(&other)))
                        .with_hint(format!("write it as [{path}] followed by its keys")),
                );
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expands_environment_variables_and_rejects_unset_ones() {
        let expand = |s: &str| expand_env_in(s, Some(Path::new(".")));
        assert_eq!(expand("plain"), Ok(None));
        assert_eq!(expand("a$${b}"), Ok(Some("a${b}".into())));
        let unset = expand("${SLUICE_TEST_SURELY_UNSET_VARIABLE}").unwrap_err();
        assert!(unset.0.contains("SLUICE_TEST_SURELY_UNSET_VARIABLE"));
        let home = std::env::var("PATH").unwrap_or_default();
        assert_eq!(expand("x${PATH}y"), Ok(Some(format!("x{home}y"))));
        assert_eq!(expand("${SLUICE_TEST_SURELY_UNSET_VARIABLE:-fallback}/x"), Ok(Some("fallback/x".into())));
        assert_eq!(expand("${PATH:-fallback}"), Ok(Some(home)));
    }

    /// What `sluice serve` compares at a reload: the whole file's text with its secrets read, so a
    /// renewed secret file is a change; the text itself when something cannot be expanded.
    #[test]
    fn a_file_s_expanded_text_changes_with_the_secret_it_reads() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let secret = dir.path().join("secret");
        std::fs::write(&secret, "one\n").unwrap_or_else(|e| panic!("{e}"));
        let text = "# a pipeline\n[sinks.siem]\ntoken = \"${file:secret}\"\nliteral = \"$${file:secret}\"\n";
        let before = crate::config::expanded_text(text, dir.path());
        assert_eq!(before, "# a pipeline\n[sinks.siem]\ntoken = \"one\"\nliteral = \"${file:secret}\"\n");
        std::fs::write(&secret, "two\n").unwrap_or_else(|e| panic!("{e}"));
        assert_ne!(crate::config::expanded_text(text, dir.path()), before);
        let unset = "token = \"${SLUICE_TEST_SURELY_UNSET_VARIABLE}\"";
        assert_eq!(crate::config::expanded_text(unset, dir.path()), unset);
    }

    #[test]
    fn a_file_reference_is_replaced_by_the_file_s_contents_and_never_shown_unexpanded() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let write = |name: &str, bytes: &[u8]| {
            std::fs::write(dir.path().join(name), bytes).unwrap_or_else(|e| panic!("{e}"));
        };
        write("token", b"s3cr3t\n");
        write("crlf", b"line\r\n");
        write("two", b"a\n\n");
        write("bare", b"k");
        write("binary", b"\x80\x81");
        // What Windows PowerShell writes: `Out-File` UTF-16 by default, `-Encoding utf8` with a
        // byte order mark (and CRLF).
        write("utf16", b"\xff\xfes\x003\x00\r\x00\n\x00");
        write("utf8_bom", b"\xef\xbb\xbfs3cr3t\r\n");
        write("large", &vec![b'x'; 64 * 1024 + 1]);
        std::fs::create_dir(dir.path().join("secrets")).unwrap_or_else(|e| panic!("{e}"));
        write("secrets/key", b"nested");
        let expand = |s: &str| expand_env_in(s, Some(dir.path()));
        assert_eq!(expand("Bearer ${file:token}!"), Ok(Some("Bearer s3cr3t!".into())));
        assert_eq!(expand("${file:crlf}|${file:two}|${file:bare}"), Ok(Some("line|a\n|k".into())));
        assert_eq!(expand("${file:secrets/key}"), Ok(Some("nested".into())));
        let absolute = dir.path().join("bare").display().to_string();
        let elsewhere = expand_env_in(&format!("${{file:{absolute}}}"), Some(Path::new("/elsewhere")));
        assert_eq!(elsewhere, Ok(Some("k".into())));
        assert_eq!(expand("${file:missing:-fallback}"), Ok(Some("fallback".into())));
        let missing = expand("${file:missing}").unwrap_err();
        assert!(missing.0.contains("`missing` does not exist"), "{missing:?}");
        let binary = expand("${file:binary:-ignored}").unwrap_err();
        assert!(binary.0.contains("not UTF-8"), "{binary:?}");
        let utf16 = expand("${file:utf16}").unwrap_err();
        assert!(utf16.0.contains("UTF-16") && utf16.0.contains("-Encoding utf8"), "{utf16:?}");
        assert_eq!(expand("Bearer ${file:utf8_bom}"), Ok(Some("Bearer s3cr3t".into())));
        assert!(expand("${file:large}").unwrap_err().0.contains("larger than 64 KiB"));
        assert!(expand("${file:secrets}").is_err(), "a folder is not a secret");
        // What `sluice validate` shows: the reference as written, never the contents.
        assert_eq!(expand_env_in("Bearer ${file:token}", None), Ok(Some("Bearer ${file:token}".into())));
        assert_eq!(expand_env_in("${file:token:-d}", None), Ok(Some("${file:token:-d}".into())));
    }

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)] // read through Debug
    struct ConnectorKeys {
        url: String,
        timeout_s: Option<u64>,
        name: Option<String>,
        store: Option<StoreKeys>,
    }

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)] // read through Debug
    struct StoreKeys {
        url: String,
    }

    /// What a connector's `deserialize` of the table `[t]` written as `text` gives, and the messages.
    fn connector_keys(text: &'static str) -> (Option<ConnectorKeys>, Vec<String>) {
        let (keys, found) = connector_problems(text);
        (keys, found.into_diagnostics().into_iter().map(|d| d.message).collect())
    }

    /// The table `[t]` of `text`.
    fn table_t(text: &'static str) -> Section<'static> {
        let mut root = parse_document(text, Path::new(".")).unwrap_or_else(|e| panic!("{e:?}"));
        root.take_table("t", &mut Vec::new()).unwrap_or_else(|| panic!("no [t] in {text}"))
    }

    /// What a connector's `deserialize` of the table `[t]` written as `text` gives, and its problems.
    fn connector_problems(text: &'static str) -> (Option<ConnectorKeys>, Problems) {
        let table = table_t(text);
        let mut found = Problems::default();
        let keys = table.deserialize::<ConnectorKeys>(&mut found);
        (keys, found)
    }

    #[test]
    fn a_connector_checks_a_number_against_its_range_in_the_engine_s_words() {
        let text = "[t]\ntimeout_s = 0\n";
        let table = table_t(text);
        let (timeout, retries) = (table.key_at("timeout_s"), table.key_at("retries"));
        assert_eq!(retries.within(None, 3, 0..=300, "why"), Ok(3));
        assert_eq!(retries.within(Some(300), 3, 0..=300, "why"), Ok(300));
        let refused = timeout.within(Some(0), 60, 1..=900, "default 60").unwrap_err();
        assert_eq!(refused.message, "`t.timeout_s` = 0 is out of range: expected 1..=900");
        assert_eq!(&text[refused.span.clone()], "0");
        assert_eq!(refused.hint.as_deref(), Some("default 60"));
        // An absent key's problems point at its table.
        assert_eq!(retries.span, table.span);
    }

    #[test]
    fn a_connector_table_reports_every_serde_problem_and_keeps_what_is_right() {
        let (keys, mut messages) = connector_keys("[t]\nurl = \"u\"\ntimeot_s = 3\nname = 7\nextra = true\n");
        messages.sort();
        assert_eq!(messages.len(), 3, "{messages:?}");
        assert_eq!(messages[0], "`t.name` must be a string, found an integer");
        assert!(messages[1].contains("unknown key `t.extra`"), "{messages:?}");
        assert!(messages[2].contains("unknown key `t.timeot_s`"), "{messages:?}");
        // The keys left out are as if unwritten, so the connector checks the rest.
        let keys = keys.unwrap_or_else(|| panic!("{messages:?}"));
        assert_eq!((keys.url.as_str(), keys.timeout_s, keys.name), ("u", None, None));
    }

    #[test]
    fn a_problem_inside_a_value_is_said_of_its_key_with_the_keys_accepted_there() {
        let (keys, messages) = connector_keys("[t]\nurl = \"u\"\nstore = { url = \"s\", utl = 3 }\ntimeout_s = -1\n");
        let keys = keys.unwrap_or_else(|| panic!("{messages:?}"));
        assert!(keys.store.is_none() && keys.timeout_s.is_none(), "{keys:?}");
        let mut messages = messages;
        messages.sort();
        assert_eq!(messages.len(), 2, "{messages:?}");
        assert_eq!(messages[0], "`t.timeout_s` = -1 is out of range: expected 0 or more");
        assert_eq!(messages[1], "unknown key `t.store.utl`");
    }

    #[test]
    fn a_required_key_misspelt_or_of_the_wrong_type_is_reported_once() {
        // Misspelt: the unknown key is the problem; a stand-in takes the required key's place.
        let (keys, messages) = connector_keys("[t]\nuri = \"u\"\n");
        assert_eq!(keys.map(|k| k.url), Some(String::new()));
        assert_eq!(messages.len(), 1, "{messages:?}");
        assert!(messages[0].contains("unknown key `t.uri`"), "{messages:?}");
        // Of the wrong type: said once; a check of its stand-in, pointing where it was written, is
        // not kept.
        let text = "[t]\nurl = 5\ntimeout_s = \"x\"\n";
        let (keys, mut found) = connector_problems(text);
        assert!(keys.is_some() && found.said("url"));
        let written = text.find('5').unwrap_or_default();
        found.push(Diagnostic::new(written..written + 1, "`` is not a URL"));
        let messages: Vec<String> = found.into_diagnostics().into_iter().map(|d| d.message).collect();
        assert_eq!(messages.len(), 2, "{messages:?}");
        assert!(messages.iter().all(|m| m.contains("must be")), "{messages:?}");
        // A required key never written is reported (it is no follow-on of another problem), and
        // the rest is still read: every problem of the table at once.
        let (keys, messages) = connector_keys("[t]\nname = 7\n");
        assert!(keys.is_some());
        assert_eq!(messages.len(), 2, "{messages:?}");
        assert!(messages.contains(&"`t` needs `url`".to_string()), "{messages:?}");
        assert!(messages.contains(&"`t.name` must be a string, found an integer".to_string()), "{messages:?}");
    }

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)] // read through Debug
    struct KeysOfEveryKind {
        port: Option<u16>,
        count: Option<u64>,
        on: Option<bool>,
        store: Option<StoreKeys>,
        stores: Option<Vec<StoreKeys>>,
        profile: Option<Profile>,
        name: Option<String>,
        tags: Option<Vec<String>>,
        ratio: Option<f64>,
    }

    #[derive(Debug, serde::Deserialize)]
    #[serde(rename_all = "lowercase")]
    enum Profile {
        Cloudfront,
        Cloudtrail,
    }

    /// The messages (sorted) and hints of `deserialize` of `[t]` written as `text`.
    fn every_kind(text: &'static str) -> Vec<(String, Option<String>)> {
        let mut found = Problems::default();
        table_t(text).deserialize::<KeysOfEveryKind>(&mut found);
        let mut said: Vec<_> = found.into_diagnostics().into_iter().map(|d| (d.message, d.hint)).collect();
        said.sort();
        said
    }

    #[test]
    fn serde_s_rust_types_are_said_as_toml_s_kinds_of_value_of_the_innermost_key() {
        let said = every_kind(
            "[t]\nport = 70000\ncount = -1\non = \"yes\"\nstore = \"s3://b/p\"\n\
             stores = [{ url = \"u\" }, { url = 5 }]\nprofile = \"cloudfrnt\"\n",
        );
        let messages: Vec<&str> = said.iter().map(|(m, _)| m.as_str()).collect();
        assert_eq!(
            messages,
            [
                "`t.count` = -1 is out of range: expected 0 or more",
                "`t.on` must be true or false, found a string",
                "`t.port` = 70000 is out of range: expected 0..=65535",
                "`t.store` must be a table, found a string",
                "`t.stores[1].url` must be a string, found an integer",
                "unknown profile `cloudfrnt`",
            ]
        );
        // A table written as a string: how to write it, with its keys (asked of serde).
        assert_eq!(said[3].1.as_deref(), Some("write `store = { url = \"s3://b/p\" }` (its keys: `url`)"));
        assert_eq!(said[5].1.as_deref(), Some("did you mean `cloudfront`?"));
        let said = every_kind("[t]\nstores = [{ url = \"u\" }, {}]\n");
        assert_eq!(said, [("`t.stores[1]` needs `url`".to_string(), None)]);
        let said = every_kind("[t]\nport = [1]\nstore = []\nstores = {}\nprofile = 3\ncount = 1.5\n");
        let messages: Vec<&str> = said.iter().map(|(m, _)| m.as_str()).collect();
        assert_eq!(
            messages,
            [
                "`t.count` must be an integer, found a float",
                "`t.port` must be an integer, found an array",
                "`t.profile` must be a string or a table, found an integer",
                "`t.store` must be a table, found an array",
                "`t.stores` must be an array, found a table",
            ]
        );
        assert_eq!(said[3].1.as_deref(), Some("write `store = { url = … }` (its keys: `url`)"));
        // A message in no shape known is kept as serde gave it.
        assert_eq!(in_toml_words("trailing characters", "t.x", None), "in `t.x`: trailing characters");
    }

    #[test]
    fn a_value_of_another_kind_that_shows_what_was_meant_gets_an_example_of_how_to_write_it() {
        let said = every_kind(
            "[t]\nport = \"8080\"\ncount = 64.0\non = \"true\"\nname = 5\ntags = \"a\"\nratio = \" 0.5\"\n\
             stores = [{ url = 5 }]\n",
        );
        let hints: Vec<(&str, Option<&str>)> = said.iter().map(|(m, h)| (m.as_str(), h.as_deref())).collect();
        assert_eq!(
            hints,
            [
                (
                    "`t.count` must be an integer, found a float",
                    Some("write a whole number, without a decimal point: count = 64")
                ),
                ("`t.name` must be a string, found an integer", Some("write it in quotes: name = \"5\"")),
                ("`t.on` must be true or false, found a string", Some("write true or false without quotes: on = true")),
                ("`t.port` must be an integer, found a string", Some("write the number without quotes: port = 8080")),
                ("`t.ratio` must be a number, found a string", Some("write the number without quotes: ratio = 0.5")),
                ("`t.stores[0].url` must be a string, found an integer", Some("write it in quotes: url = \"5\"")),
                ("`t.tags` must be an array, found a string", Some("write a list, even of one: tags = [\"a\"]")),
            ]
        );
        // What does not show what was meant gets no example.
        let said = every_kind("[t]\nport = \"http\"\ncount = 1.5\non = \"yes\"\nname = [\"x\"]\ntags = [\"a\", 1]\n");
        let hints: Vec<(&str, Option<&str>)> = said.iter().map(|(m, h)| (m.as_str(), h.as_deref())).collect();
        assert_eq!(
            hints,
            [
                (
                    "`t.count` must be an integer, found a float",
                    Some("a whole number is expected here (no decimal point)")
                ),
                ("`t.name` must be a string, found an array", Some("one value, not a list: name = \"x\"")),
                ("`t.on` must be true or false, found a string", None),
                ("`t.port` must be an integer, found a string", None),
                ("`t.tags[1]` must be a string, found an integer", Some("write it in quotes: \"1\"")),
            ]
        );
    }

    #[test]
    fn the_engine_s_own_keys_get_the_same_examples() {
        let text = "[t]\nworkers = \"2\"\ninputs = \"in\"\nname = true\nlist = [\"a\", 2]\n";
        let mut table = table_t(text);
        let mut problems = Vec::new();
        assert!(table.take_int_in("workers", 1..=64, "", &mut problems).is_none());
        assert!(table.take_string_list("inputs", &mut problems).is_none());
        assert!(table.take_string("name", &mut problems).is_none());
        assert!(table.take_string_list("list", &mut problems).is_some());
        let hints: Vec<Option<&str>> = problems.iter().map(|d| d.hint.as_deref()).collect();
        assert_eq!(
            hints,
            [
                Some("write the number without quotes: workers = 2"),
                Some("write a list, even of one: inputs = [\"in\"]"),
                Some("write it in quotes: name = \"true\""),
                Some("write it in quotes: \"2\""),
            ]
        );
    }

    #[test]
    fn a_stand_in_for_a_missing_key_is_never_a_problem_of_its_own_and_the_other_checks_run() {
        let text = "[t]\ntimeout_s = 0\n";
        let table = table_t(text);
        let (url, timeout) = (table.key_at("url"), table.key_at("timeout_s"));
        let mut found = Problems::default();
        let keys = table.deserialize::<ConnectorKeys>(&mut found).unwrap_or_else(|| panic!("{found:?}"));
        assert!(found.said("url") && !found.said("timeout_s"));
        // The connector's checks: of the stand-in (at the table, where an absent key's problems
        // point), not kept; of the key written, kept; and no connector is built.
        found.push(Diagnostic::new(url.span.clone(), format!("`{}` is not a URL", keys.url)));
        found.take(timeout.within(keys.timeout_s, 60, 1..=900, "default 60"));
        // A problem of the table itself, where the stand-in's checks point too, is kept.
        found.push(Diagnostic::new(url.span, "a `t` needs `store`").of_the_table());
        let messages: Vec<String> = found.clone().into_diagnostics().into_iter().map(|d| d.message).collect();
        assert_eq!(
            messages,
            ["`t` needs `url`", "`t.timeout_s` = 0 is out of range: expected 1..=900", "a `t` needs `store`"]
        );
        assert!(found.finish(Some(keys)).is_err());
        // Nothing stood in for: a problem at the table is kept.
        let (keys, mut found) = connector_problems("[t]\nurl = \"u\"\n");
        assert!(keys.is_some() && !found.said("url"));
        found.push(Diagnostic::new(0..text.len(), "a problem of the whole table"));
        assert!(!found.is_empty());
    }
}

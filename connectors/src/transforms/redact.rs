//! `type = "redact"`: finds personal data and secrets in records and masks, hashes or drops them.
//!
//! ```toml
//! [transforms.mask]
//! type = "redact"
//! inputs = ["api"]
//! detectors = ["ssn", "credit_card", "email", "aws_access_key", "ipv4", "ipv6", "jwt", "phone"]  # default: all
//! patterns = [{ name = "employee_id", regex = "EMP-[0-9]{6}" }]   # extra detectors (Rust `regex` syntax)
//! fields = ["ssn_note", "userIdentity.userName"]  # default: every string value, nested included
//! mode = "mask"          # mask (default) | hash | drop_field
//! hash_key = "${REDACT_KEY}"  # required with mode = "hash"
//! ```
//!
//! A JSON record is rewritten in place: only its string values are scanned (keys never change;
//! numbers, booleans and nulls are left alone), every byte outside a changed value is kept, so key
//! order and formatting stay as they were and the record stays valid JSON. `fields` are dotted paths
//! of object keys (arrays are passed through: `records.name` is the `name` of every element of
//! `records`); a path scans the string at it and every string nested under it. A record that is not
//! JSON is scanned as one text (with `drop_field` it is masked: there is no field to drop).
//!
//! Each string is scanned once for all detectors (a `RegexSet` says which can match, then only
//! those run); candidates are validated (an SSN's area is not 000, 666 or 9xx; a card number has
//! 13-19 digits in a row or grouped by spaces or dashes and passes the Luhn check; an IP address parses; a match does not continue a longer
//! run of digits or key characters), overlaps go to the earliest, longest match. `mask` writes
//! `[REDACTED:<detector>]`; `hash` writes the first 16 hex digits of HMAC-SHA256(`hash_key`, match),
//! so equal values stay joinable without being readable; `drop_field` removes the object member
//! (an array element becomes `null`). Counted per detector in `RedactedValues{detector}`.

use std::ops::Range;
use std::sync::Arc;

use hmac::{Hmac, KeyInit, Mac};
use regex::bytes::{Regex, RegexSet};
use serde::Deserialize;
use sha2::Sha256;
use sluice_engine::config::{ConnectorConfig, Diagnostic};
use sluice_engine::contract::{
    Emit, RecordByRecord, RecordTransform, Transform, TransformContext, TransformError, TransformFailure,
    TransformWorker,
};
use sluice_engine::metrics::TransformMetrics;

/// The built-in detectors, in the order they win a tie.
pub const DETECTORS: &[&str] = &["jwt", "aws_access_key", "email", "credit_card", "ssn", "ipv6", "ipv4", "phone"];

/// The check a candidate must pass in its context (the text it was found in, where).
type Check = fn(&[u8], Range<usize>) -> bool;

/// A detector: a candidate pattern and the check a candidate must pass.
#[derive(Clone)]
struct Detector {
    name: Arc<str>,
    regex: Regex,
    valid: Check,
}

fn built_in(name: &str) -> Option<(&'static str, Check)> {
    Some(match name {
        "ssn" => (r"(?-u)[0-9]{3}-[0-9]{2}-[0-9]{4}", valid_ssn),
        // 13-19 digits in a row, or grouped 4-4-4-4 (Visa, Mastercard, Discover) or 4-6-5 (Amex),
        // by spaces or by dashes.
        "credit_card" => (
            r"(?-u)[0-9]{13,19}|[0-9]{4}-[0-9]{4}-[0-9]{4}-[0-9]{4}|[0-9]{4} [0-9]{4} [0-9]{4} [0-9]{4}|[0-9]{4}[ -][0-9]{6}[ -][0-9]{4,5}",
            valid_card,
        ),
        "email" => (r"(?-u)[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}", |h, r| {
            !continues(h, &r, |b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
        }),
        "aws_access_key" => (r"(?-u)(?:AKIA|ASIA)[A-Z0-9]{16}", |h, r| {
            !continues(h, &r, |b| b.is_ascii_uppercase() || b.is_ascii_digit())
        }),
        "ipv4" => (r"(?-u)[0-9]{1,3}(?:\.[0-9]{1,3}){3}", valid_ipv4),
        "ipv6" => (r"(?-ui)[0-9a-f]{0,4}(?::[0-9a-f]{0,4}){2,7}(?:(?:[0-9]{1,3}\.){3}[0-9]{1,3})?", valid_ipv6),
        "jwt" => (r"(?-u)eyJ[A-Za-z0-9_-]{2,}\.eyJ[A-Za-z0-9_-]{2,}\.[A-Za-z0-9_-]+", |h, r| {
            !continues(h, &r, |b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.')
        }),
        "phone" => (
            r"(?-u)\+[1-9][0-9]{7,14}|(?:\+?1[-. ]?)?(?:\([2-9][0-9]{2}\) ?|[2-9][0-9]{2}[-. ])[2-9][0-9]{2}[-. ][0-9]{4}",
            |h, r| !continues(h, &r, |b| b.is_ascii_digit()),
        ),
        _ => return None,
    })
}

/// Whether the bytes just before or just after `range` are of the kind `part` (the match would be
/// a piece of something longer).
fn continues(haystack: &[u8], range: &Range<usize>, part: impl Fn(u8) -> bool) -> bool {
    let before = range.start.checked_sub(1).and_then(|i| haystack.get(i)).is_some_and(|&b| part(b));
    let after = haystack.get(range.end).is_some_and(|&b| part(b));
    before || after
}

fn digits(bytes: &[u8]) -> impl Iterator<Item = u32> + '_ {
    bytes.iter().filter(|b| b.is_ascii_digit()).map(|b| u32::from(b - b'0'))
}

fn valid_ssn(haystack: &[u8], range: Range<usize>) -> bool {
    let s = &haystack[range.clone()];
    let area: u32 = digits(&s[..3]).fold(0, |a, d| a * 10 + d);
    let group = &s[4..6];
    let serial = &s[7..11];
    !continues(haystack, &range, |b| b.is_ascii_digit() || b == b'-')
        && area != 0
        && area != 666
        && area < 900
        && group != b"00"
        && serial != b"0000"
}

/// The Luhn checksum of a digit string.
pub fn luhn(digits: &[u32]) -> bool {
    let sum: u32 = digits
        .iter()
        .rev()
        .enumerate()
        .map(|(i, &d)| if i % 2 == 1 { if d * 2 > 9 { d * 2 - 9 } else { d * 2 } } else { d })
        .sum();
    sum.is_multiple_of(10)
}

fn valid_card(haystack: &[u8], range: Range<usize>) -> bool {
    let d: Vec<u32> = digits(&haystack[range.clone()]).collect();
    (13..=19).contains(&d.len()) && !continues(haystack, &range, |b| b.is_ascii_digit()) && luhn(&d)
}

fn valid_ipv4(haystack: &[u8], range: Range<usize>) -> bool {
    let continued = continues(haystack, &range, |b| b.is_ascii_digit())
        || (haystack.get(range.end) == Some(&b'.') && haystack.get(range.end + 1).is_some_and(u8::is_ascii_digit))
        || (range.start >= 2 && haystack[range.start - 1] == b'.' && haystack[range.start - 2].is_ascii_digit());
    !continued && std::str::from_utf8(&haystack[range]).is_ok_and(|s| s.parse::<std::net::Ipv4Addr>().is_ok())
}

fn valid_ipv6(haystack: &[u8], range: Range<usize>) -> bool {
    haystack[range.clone()].iter().any(u8::is_ascii_hexdigit)
        && !continues(haystack, &range, |b| b.is_ascii_hexdigit() || b == b':')
        && std::str::from_utf8(&haystack[range]).is_ok_and(|s| s.parse::<std::net::Ipv6Addr>().is_ok())
}

/// What a match becomes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Mode {
    Mask,
    Hash,
    DropField,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RedactConfig {
    #[serde(default)]
    detectors: Option<Vec<String>>,
    #[serde(default)]
    patterns: Vec<PatternConfig>,
    #[serde(default)]
    fields: Option<Vec<String>>,
    #[serde(default)]
    mode: Option<Mode>,
    #[serde(default)]
    hash_key: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PatternConfig {
    name: String,
    regex: String,
}

/// A configured redact transform.
pub struct RedactTransform {
    detectors: Vec<Detector>,
    set: RegexSet,
    fields: Option<Vec<Vec<String>>>,
    mode: Mode,
    hash_key: Option<Hmac<Sha256>>,
}

impl std::fmt::Debug for RedactTransform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedactTransform").field("mode", &self.mode).finish()
    }
}

/// Builds a redact transform from `[transforms.<name>]`.
pub fn configure(config: ConnectorConfig) -> Result<Arc<dyn Transform>, Diagnostic> {
    let span = config.table.span.clone();
    let spans = |key: &str| config.table.value_span(key).unwrap_or(span.clone());
    let (detectors_span, patterns_span, hash_span, fields_span) =
        (spans("detectors"), spans("patterns"), spans("hash_key"), spans("fields"));
    let c: RedactConfig = config.table.deserialize()?;
    let mut detectors = Vec::new();
    let chosen: Vec<String> = c.detectors.unwrap_or_else(|| DETECTORS.iter().map(|d| d.to_string()).collect());
    for pattern in &c.patterns {
        if pattern.name.is_empty() || DETECTORS.contains(&pattern.name.as_str()) {
            return Err(Diagnostic::new(patterns_span, format!("pattern name `{}` is not usable", pattern.name))
                .with_hint("give each pattern a name of its own (it is written as [REDACTED:<name>]), not a built-in detector's"));
        }
        let regex = Regex::new(&pattern.regex).map_err(|e| {
            Diagnostic::new(patterns_span.clone(), format!("pattern `{}`: invalid regex: {e}", pattern.name))
                .with_hint("Rust `regex` syntax (no look-around or backreferences), e.g. regex = \"EMP-[0-9]{6}\"")
        })?;
        detectors.push(Detector { name: pattern.name.as_str().into(), regex, valid: |_, _| true });
    }
    // Built-ins in tie order, whatever order they are listed in.
    for name in &chosen {
        if built_in(name).is_none() {
            let d = Diagnostic::new(detectors_span.clone(), format!("unknown detector `{name}`"));
            return Err(match sluice_engine::config::did_you_mean(name, DETECTORS.iter().copied()) {
                Some(k) => d.with_hint(format!("did you mean `{k}`? built-in detectors: {}", DETECTORS.join(", "))),
                None => {
                    d.with_hint(format!("built-in detectors: {}; add your own with `patterns`", DETECTORS.join(", ")))
                }
            });
        }
    }
    for name in DETECTORS.iter().filter(|d| chosen.iter().any(|c| c == *d)) {
        if let Some((pattern, valid)) = built_in(name) {
            let regex = Regex::new(pattern)
                .map_err(|e| Diagnostic::new(detectors_span.clone(), format!("detector `{name}`: {e}")))?;
            detectors.push(Detector { name: (*name).into(), regex, valid });
        }
    }
    if detectors.is_empty() {
        return Err(Diagnostic::new(detectors_span, "a redact transform with no detectors changes nothing")
            .with_hint(format!("list built-in detectors ({}) or add `patterns`", DETECTORS.join(", "))));
    }
    let set = RegexSet::new(detectors.iter().map(|d| d.regex.as_str()))
        .map_err(|e| Diagnostic::new(patterns_span, format!("the patterns cannot be combined: {e}")))?;
    let mode = c.mode.unwrap_or(Mode::Mask);
    let hash_key = match (mode, c.hash_key) {
        (Mode::Hash, None) => {
            return Err(Diagnostic::new(span, "mode = \"hash\" needs `hash_key`")
                .with_hint("hash_key = \"${REDACT_KEY}\": the HMAC-SHA256 key; keep it secret, or hashes of guessable values can be reversed"));
        }
        (Mode::Hash, Some(key)) if key.len() < 16 => {
            return Err(Diagnostic::new(hash_span, "`hash_key` must be at least 16 bytes")
                .with_hint("use a long random secret, e.g. from `openssl rand -hex 32`"));
        }
        (Mode::Hash, Some(key)) => Some(
            Hmac::<Sha256>::new_from_slice(key.as_bytes())
                .map_err(|e| Diagnostic::new(hash_span, format!("`hash_key`: {e}")))?,
        ),
        (_, Some(_)) => {
            return Err(Diagnostic::new(hash_span, "`hash_key` is only used with mode = \"hash\"")
                .with_hint("remove it, or set mode = \"hash\""));
        }
        (_, None) => None,
    };
    let fields = match c.fields {
        Some(fields) if fields.is_empty() || fields.iter().any(|f| f.is_empty() || f.split('.').any(str::is_empty)) => {
            return Err(Diagnostic::new(fields_span, "`fields` must list dotted key paths").with_hint(
                "e.g. fields = [\"ssn_note\", \"userIdentity.userName\"]; leave it out to scan every string",
            ));
        }
        Some(fields) => Some(fields.iter().map(|f| f.split('.').map(str::to_string).collect()).collect()),
        None => None,
    };
    Ok(Arc::new(RedactTransform { detectors, set, fields, mode, hash_key }))
}

impl Transform for RedactTransform {
    fn describe(&self) -> String {
        let names: Vec<&str> = self.detectors.iter().map(|d| d.name.as_ref()).collect();
        let mode = match self.mode {
            Mode::Mask => "mask",
            Mode::Hash => "hash",
            Mode::DropField => "drop_field",
        };
        let fields = self.fields.as_ref().map_or("every string".to_string(), |f| format!("{} fields", f.len()));
        format!("redact: {mode} {} in {fields}", names.join(", "))
    }

    fn open(&self, context: &TransformContext) -> Result<Box<dyn TransformWorker>, TransformError> {
        Ok(Box::new(RecordByRecord(Redactor {
            detectors: self.detectors.clone(),
            set: self.set.clone(),
            fields: self.fields.clone(),
            mode: self.mode,
            hash_key: self.hash_key.clone(),
            counts: vec![0; self.detectors.len()],
            metrics: Arc::clone(&context.metrics),
            out: Vec::new(),
            value: Vec::new(),
            path: Vec::new(),
            found: Vec::new(),
        })))
    }
}

/// One worker's redactor.
struct Redactor {
    detectors: Vec<Detector>,
    set: RegexSet,
    fields: Option<Vec<Vec<String>>>,
    mode: Mode,
    hash_key: Option<Hmac<Sha256>>,
    /// Matches per detector not yet added to the metrics.
    counts: Vec<u64>,
    metrics: Arc<TransformMetrics>,
    out: Vec<u8>,
    value: Vec<u8>,
    path: Vec<Option<String>>,
    found: Vec<(Range<usize>, usize)>,
}

/// A container being scanned in a JSON record.
struct Frame {
    object: bool,
    /// In an object: the next string is a key.
    expect_key: bool,
    /// In an object: where the current member starts in the output (before its comma).
    member_start: usize,
    /// The first member was dropped: the next comma is not written.
    skip_comma: bool,
}

impl Redactor {
    /// Finds the detectors' matches in `text` (into `self.found`, ordered, not overlapping).
    fn find(&mut self, text: &[u8]) {
        self.found.clear();
        for i in self.set.matches(text).iter() {
            let d = &self.detectors[i];
            // A candidate that fails its check may hide a valid one starting inside it (a digit
            // before a card number): search again one byte further, not after the candidate.
            let mut at = 0;
            while let Some(m) = d.regex.find_at(text, at) {
                if !m.range().is_empty() && (d.valid)(text, m.range()) {
                    self.found.push((m.range(), i));
                    at = m.end();
                } else {
                    at = m.start() + 1;
                }
                if at >= text.len() {
                    break;
                }
            }
        }
        // Earliest first, then longest, then the detector listed first.
        self.found.sort_by_key(|(r, i)| (r.start, std::cmp::Reverse(r.end), *i));
        let mut end = 0;
        self.found.retain(|(r, _)| {
            let keep = r.start >= end;
            if keep {
                end = r.end;
            }
            keep
        });
    }

    /// Writes `text` with its matches replaced into `out`; whether anything matched.
    fn replace_into(&mut self, text: &[u8], out: &mut Vec<u8>) -> bool {
        self.find(text);
        if self.found.is_empty() {
            return false;
        }
        let mut at = 0;
        for (range, detector) in &self.found {
            out.extend_from_slice(&text[at..range.start]);
            self.counts[*detector] += 1;
            match &self.hash_key {
                Some(key) => {
                    let mut mac = key.clone();
                    mac.update(&text[range.clone()]);
                    let digest = mac.finalize().into_bytes();
                    for b in &digest[..8] {
                        out.extend_from_slice(format!("{b:02x}").as_bytes());
                    }
                }
                None => {
                    out.extend_from_slice(b"[REDACTED:");
                    out.extend_from_slice(self.detectors[*detector].name.as_bytes());
                    out.push(b']');
                }
            }
            at = range.end;
        }
        out.extend_from_slice(&text[at..]);
        true
    }

    /// Whether the string at the current path is scanned.
    fn in_fields(&self) -> bool {
        let Some(fields) = &self.fields else { return true };
        let keys: Vec<&str> = self.path.iter().flatten().map(String::as_str).collect();
        fields.iter().any(|f| keys.len() >= f.len() && keys.iter().zip(f).all(|(k, f)| k == f))
    }

    /// Rewrites a JSON record (already known to be valid JSON) into `self.out`.
    fn redact_json(&mut self, record: &[u8]) {
        self.out.clear();
        self.path.clear();
        let mut frames: Vec<Frame> = Vec::new();
        let mut i = 0;
        while i < record.len() {
            let b = record[i];
            match b {
                b'{' | b'[' => {
                    self.out.push(b);
                    frames.push(Frame {
                        object: b == b'{',
                        expect_key: true,
                        member_start: self.out.len(),
                        skip_comma: false,
                    });
                    self.path.push(None);
                    i += 1;
                }
                b'}' | b']' => {
                    frames.pop();
                    self.path.pop();
                    self.out.push(b);
                    i += 1;
                }
                b',' => {
                    if let Some(f) = frames.last_mut() {
                        f.expect_key = f.object;
                        if f.skip_comma {
                            f.skip_comma = false;
                            f.member_start = self.out.len();
                            i += 1;
                            continue;
                        }
                        f.member_start = self.out.len();
                    }
                    self.out.push(b);
                    i += 1;
                }
                b':' => {
                    if let Some(f) = frames.last_mut() {
                        f.expect_key = false;
                    }
                    self.out.push(b);
                    i += 1;
                }
                b'"' => {
                    let end = string_end(record, i);
                    let raw = &record[i..end];
                    i = end;
                    let is_key = frames.last().is_some_and(|f| f.object && f.expect_key);
                    if is_key {
                        if let Some(slot) = self.path.last_mut() {
                            *slot = serde_json::from_slice::<String>(raw).ok();
                        }
                        self.out.extend_from_slice(raw);
                        continue;
                    }
                    if !self.in_fields() {
                        self.out.extend_from_slice(raw);
                        continue;
                    }
                    let Ok(text) = serde_json::from_slice::<std::borrow::Cow<'_, str>>(raw) else {
                        self.out.extend_from_slice(raw);
                        continue;
                    };
                    let mut value = std::mem::take(&mut self.value);
                    value.clear();
                    let changed = self.replace_into(text.as_bytes(), &mut value);
                    match (changed, self.mode) {
                        (false, _) => self.out.extend_from_slice(raw),
                        (true, Mode::DropField) => match frames.last_mut() {
                            Some(f) if f.object => {
                                let first = record_starts_member(&self.out, f.member_start);
                                self.out.truncate(f.member_start);
                                // The first member had no comma before it: drop the one after it.
                                f.skip_comma = first;
                            }
                            _ => self.out.extend_from_slice(b"null"),
                        },
                        (true, _) => {
                            let replaced = String::from_utf8_lossy(&value);
                            // Serializing a string into a Vec cannot fail.
                            let _ = serde_json::to_writer(&mut self.out, replaced.as_ref());
                        }
                    }
                    self.value = value;
                }
                _ => {
                    self.out.push(b);
                    i += 1;
                }
            }
        }
    }
}

/// Whether the member starting at `member_start` is its object's first (no comma before it).
fn record_starts_member(out: &[u8], member_start: usize) -> bool {
    out.get(member_start) != Some(&b',')
}

/// The end (exclusive) of the JSON string starting with the quote at `start`.
fn string_end(json: &[u8], start: usize) -> usize {
    let mut i = start + 1;
    while i < json.len() {
        match json[i] {
            b'\\' => i += 2,
            b'"' => return i + 1,
            _ => i += 1,
        }
    }
    json.len()
}

impl RecordTransform for Redactor {
    fn transform(&mut self, record: &[u8], emit: &mut Emit<'_>) -> Result<(), TransformFailure> {
        let is_json = record.iter().find(|b| !b.is_ascii_whitespace()).is_some_and(|b| matches!(b, b'{' | b'[' | b'"'))
            && serde_json::from_slice::<serde::de::IgnoredAny>(record).is_ok();
        if is_json {
            self.redact_json(record);
            emit.record(&self.out);
        } else {
            let mut out = std::mem::take(&mut self.out);
            out.clear();
            if self.replace_into(record, &mut out) {
                emit.record(&out);
            } else {
                emit.record(record);
            }
            self.out = out;
        }
        Ok(())
    }

    fn end_of_batch(&mut self) {
        for (count, detector) in self.counts.iter_mut().zip(&self.detectors) {
            if *count > 0 {
                self.metrics.count("RedactedValues", "detector", &detector.name, *count);
                *count = 0;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use sluice_engine::record::RecordBatch;

    use super::*;

    fn redactor(mode: Mode, fields: Option<&[&str]>) -> Redactor {
        let mut detectors: Vec<Detector> = vec![Detector {
            name: "employee_id".into(),
            regex: Regex::new("EMP-[0-9]{6}").unwrap_or_else(|e| panic!("{e}")),
            valid: |_, _| true,
        }];
        for name in DETECTORS {
            let (pattern, valid) = built_in(name).unwrap_or_else(|| panic!("{name}"));
            detectors.push(Detector {
                name: (*name).into(),
                regex: Regex::new(pattern).unwrap_or_else(|e| panic!("{e}")),
                valid,
            });
        }
        let set = RegexSet::new(detectors.iter().map(|d| d.regex.as_str())).unwrap_or_else(|e| panic!("{e}"));
        Redactor {
            counts: vec![0; detectors.len()],
            detectors,
            set,
            fields: fields.map(|f| f.iter().map(|p| p.split('.').map(str::to_string).collect()).collect()),
            mode,
            hash_key: (mode == Mode::Hash)
                .then(|| Hmac::<Sha256>::new_from_slice(b"0123456789abcdef").unwrap_or_else(|e| panic!("{e}"))),
            metrics: Arc::default(),
            out: Vec::new(),
            value: Vec::new(),
            path: Vec::new(),
            found: Vec::new(),
        }
    }

    fn redact(r: &mut Redactor, record: &str) -> String {
        let mut batch = RecordBatch::default();
        r.transform(record.as_bytes(), &mut Emit::new(&mut batch)).unwrap_or_else(|e| panic!("{e:?}"));
        batch.iter().next().map(|b| String::from_utf8_lossy(b).into_owned()).unwrap_or_default()
    }

    #[test]
    fn masks_each_detector() {
        let mut r = redactor(Mode::Mask, None);
        let cases = [
            ("ssn 123-45-6789.", "ssn [REDACTED:ssn]."),
            ("card 4111 1111 1111 1111", "card [REDACTED:credit_card]"),
            ("card 4111-1111-1111-1111!", "card [REDACTED:credit_card]!"),
            ("mail a.b+c@example.co.uk now", "mail [REDACTED:email] now"),
            ("key AKIAIOSFODNN7EXAMPLE", "key [REDACTED:aws_access_key]"),
            ("from 10.0.0.255:443", "from [REDACTED:ipv4]:443"),
            ("from 2001:db8::1 and ::1", "from [REDACTED:ipv6] and [REDACTED:ipv6]"),
            ("t eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.sig_nature-1", "t [REDACTED:jwt]"),
            (
                "call +442071838750 or (555) 234-5678 or 555-234-5678",
                "call [REDACTED:phone] or [REDACTED:phone] or [REDACTED:phone]",
            ),
            ("id EMP-123456", "id [REDACTED:employee_id]"),
        ];
        for (input, expected) in cases {
            assert_eq!(redact(&mut r, input), expected, "{input}");
        }
    }

    #[test]
    fn leaves_what_only_looks_alike() {
        let mut r = redactor(Mode::Mask, None);
        for input in [
            "000-12-3456 666-12-3456 900-12-3456 123-00-4567 123-45-0000",
            "4111 1111 1111 1112",
            "1234-56-78901",
            "12:30:45 and 00:1a:2b:3c:4d:5e",
            "version 1.2.3.4.5 and 999.1.1.1",
        ] {
            assert_eq!(redact(&mut r, input), input);
        }
    }

    #[test]
    fn rewrites_only_string_values_and_keeps_the_rest() {
        let mut r = redactor(Mode::Mask, None);
        let input = r#"{"z":"ssn 123-45-6789","a":[1,"x@example.com",{"123-45-6789":true}], "n": 123456789, "u":"\u00e9 é \"q\""}"#;
        let out = redact(&mut r, input);
        assert_eq!(
            out,
            r#"{"z":"ssn [REDACTED:ssn]","a":[1,"[REDACTED:email]",{"123-45-6789":true}], "n": 123456789, "u":"\u00e9 é \"q\""}"#
        );
    }

    #[test]
    fn scans_only_the_fields_asked_for() {
        let mut r = redactor(Mode::Mask, Some(&["ssn_note", "userIdentity.userName"]));
        let input =
            r#"{"ssn_note":"123-45-6789","other":"123-45-6789","userIdentity":{"userName":"a@b.io","arn":"a@b.io"}}"#;
        assert_eq!(
            redact(&mut r, input),
            r#"{"ssn_note":"[REDACTED:ssn]","other":"123-45-6789","userIdentity":{"userName":"[REDACTED:email]","arn":"a@b.io"}}"#
        );
    }

    #[test]
    fn hashes_and_drops_fields() {
        let mut r = redactor(Mode::Hash, None);
        let a = redact(&mut r, r#"{"m":"x@example.com"}"#);
        let b = redact(&mut r, r#"{"m":"x@example.com"}"#);
        assert_eq!(a, b);
        let v: serde_json::Value = serde_json::from_str(&a).unwrap_or_default();
        let hashed = v["m"].as_str().unwrap_or_default();
        assert!(hashed.len() == 16 && hashed.bytes().all(|b| b.is_ascii_hexdigit()), "{a}");

        let mut r = redactor(Mode::DropField, None);
        assert_eq!(redact(&mut r, r#"{"a":"x@example.com","b":1,"c":"123-45-6789"}"#), r#"{"b":1}"#);
        assert_eq!(redact(&mut r, r#"{"a":"x@example.com"}"#), r#"{}"#);
        assert_eq!(redact(&mut r, r#"{"a":["ok","x@example.com"]}"#), r#"{"a":["ok",null]}"#);
    }

    #[test]
    fn long_and_unicode_strings() {
        let mut r = redactor(Mode::Mask, None);
        let long = format!("{} 123-45-6789 {}", "é🦀".repeat(100_000), "x".repeat(1_000_000));
        let out = redact(&mut r, &serde_json::json!({ "s": long }).to_string());
        let v: serde_json::Value = serde_json::from_str(&out).unwrap_or_default();
        assert!(v["s"].as_str().is_some_and(|s| s.contains("[REDACTED:ssn]") && !s.contains("6789")));
    }

    fn luhn_complete(prefix: &[u32]) -> Vec<u32> {
        let mut digits = prefix.to_vec();
        digits.push(0);
        let check = (0..10).find(|&c| {
            *digits.last_mut().unwrap_or(&mut 0) = c;
            luhn(&digits)
        });
        *digits.last_mut().unwrap_or(&mut 0) = check.unwrap_or(0);
        digits
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]

        #[test]
        fn generated_secrets_are_always_masked_and_the_json_keeps_its_keys(
            before in "[ -~]{0,30}",
            after in "[ -~]{0,30}",
            area in 1u32..900,
            group in 1u32..100,
            serial in 1u32..10_000,
            card in proptest::collection::vec(0u32..10, 15),
            which in 0usize..3,
            key in "[a-z]{1,8}",
        ) {
            prop_assume!(area != 666);
            let secret = match which {
                0 => format!("{area:03}-{group:02}-{serial:04}"),
                1 => {
                    let mut c = card.clone();
                    c[0] = c[0].max(1);
                    luhn_complete(&c).iter().map(|d| d.to_string()).collect()
                }
                _ => format!("{key}.user@example.com"),
            };
            let text = format!("{before} {secret} {after}");
            let record = serde_json::json!({ "k": key, key.clone(): [text], "z": { "n": 1 } }).to_string();
            let mut r = redactor(Mode::Mask, None);
            let out = redact(&mut r, &record);
            let v: serde_json::Value = serde_json::from_str(&out).map_err(|e| TestCaseError::fail(format!("{e}: {out}")))?;
            let original: serde_json::Value = serde_json::from_str(&record).unwrap_or_default();
            let keys = |v: &serde_json::Value| v.as_object().map(|o| o.keys().cloned().collect::<Vec<_>>());
            prop_assert_eq!(keys(&v), keys(&original));
            prop_assert!(!out.contains(&secret), "{} still in {}", secret, out);
        }

        #[test]
        fn luhn_invalid_numbers_are_never_masked(card in proptest::collection::vec(0u32..10, 16), off in 1u32..10) {
            let mut digits = luhn_complete(&card[..15]);
            let last = digits.len() - 1;
            digits[last] = (digits[last] + off) % 10;
            let number: String = digits.iter().map(|d| d.to_string()).collect();
            let record = serde_json::json!({ "n": format!("card {number} end") }).to_string();
            let mut r = redactor(Mode::Mask, Some(&["n"]));
            prop_assert_eq!(redact(&mut r, &record), record);
        }
    }
}

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
//! a JSON object, array or string (a line of text; also a bare number or word, so that a card
//! number alone on a line is masked) is scanned as one text (with `drop_field` it is masked: there
//! is no field to drop).
//!
//! The built-in detectors are found by hand over the whole record at once (`scan`: the bytes each
//! can start with are located sixteen at a time, then only those places are parsed; none
//! of their matches contains a quote, so each lies inside one string) and validated there (an SSN's
//! area is not 000, 666 or 9xx; a card number has 13-19 digits in a row or grouped by spaces or
//! dashes and passes the Luhn check; an IP address parses and stands alone; no match continues a
//! longer run of digits or key characters); a record without a match is passed on unparsed, and
//! one whose matches all lie inside string values (quotes counted; no escapes, no `patterns`, no
//! `fields`, not `drop_field`) is rewritten unparsed: read as JSON or as text it gets every match
//! replaced. A string with escapes is decoded and scanned alone, and `patterns` (regular
//! expressions whose anchors must see a string's own start and end) run on each string alone,
//! after a `RegexSet` says which can match. Overlaps go to the earliest, longest match. `mask` writes
//! `[REDACTED:<detector>]`; `hash` writes the first 16 hex digits of HMAC-SHA256(`hash_key`, match),
//! so equal values stay joinable without being readable; `drop_field` removes the object member
//! (an array element becomes `null`). Counted per detector in `RedactedValues{detector}`.

use std::ops::Range;
use std::sync::Arc;

use hmac::{Hmac, KeyInit, Mac};
use regex::bytes::{Regex, RegexSet};
use serde::Deserialize;
use sha2::Sha256;
use sluice_engine::config::{ConnectorConfig, Diagnostic, Problems};
use sluice_engine::contract::{
    Emit, RecordByRecord, RecordTransform, Transform, TransformContext, TransformError, TransformFailure,
    TransformWorker,
};
use sluice_engine::metrics::{Family, TransformMetrics};

use super::{json, words};

/// Values masked, by detector.
const REDACTED_VALUES: Family = Family { name: "RedactedValues", help: "Values masked, by detector." };

/// The built-in detectors, in the order they win a tie.
pub const DETECTORS: &[&str] = &["jwt", "aws_access_key", "email", "credit_card", "ssn", "ipv6", "ipv4", "phone"];

/// A detector: a built-in one, found by [`scan`], or a pattern of the user's.
#[derive(Clone)]
struct Detector {
    name: Arc<str>,
    kind: Kind,
}

#[derive(Clone)]
enum Kind {
    /// A built-in detector (index into [`DETECTORS`]). Its matches never contain a quote, so a
    /// whole JSON record is scanned at once and each match lies inside one string.
    BuiltIn(usize),
    /// A pattern of the user's: it may match anything and assert on where a string starts and ends
    /// (`^`, `$`, `\b`), so it searches each string alone.
    Pattern(Regex),
}

impl Detector {
    fn is_built_in(&self) -> bool {
        matches!(self.kind, Kind::BuiltIn(_))
    }
}

const JWT: usize = 0;
const AWS_ACCESS_KEY: usize = 1;
const EMAIL: usize = 2;
const CREDIT_CARD: usize = 3;
const SSN: usize = 4;
const IPV6: usize = 5;
const IPV4: usize = 6;
const PHONE: usize = 7;

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

/// The built-in detectors, by hand (a regex per detector cost about 1.5 µs per detector per
/// 700-byte record; this scan costs well under that for all of them): the places a detector can
/// start are located sixteen bytes at a time (`words`, `memchr`), and only there is a shape
/// parsed (a byte-at-a-time search for them took 40 % of the scan on CloudTrail records, whose
/// every tenth byte starts a digit run or is a colon). Each detector's definition:
///
/// - `ssn`: `ddd-dd-dddd` not touching another digit or dash, area not 000, 666 or 9xx, group not
///   00, serial not 0000;
/// - `credit_card`: 13-19 digits in a row, or `dddd dddd dddd dddd` / `dddd-dddd-dddd-dddd`, or
///   `dddd dddddd ddddd` (Amex; 4-6-4 for Diners; space or dash), not touching another digit,
///   passing the Luhn check;
/// - `email`: `local@domain.tld`, local of `[A-Za-z0-9._%+-]`, domain labels of `[A-Za-z0-9-]`, a
///   top-level label of two letters or more;
/// - `aws_access_key`: `AKIA` or `ASIA` and 16 of `[A-Z0-9]`, standing alone;
/// - `ipv4`: four dotted decimal octets (0-255, no leading zero), not part of a longer dotted run;
/// - `ipv6`: a run of hex digits, colons and dots with two colons or more that parses as an IPv6
///   address (trailing dots dropped), not glued to letters or digits;
/// - `jwt`: `eyJ…​.eyJ…​.…` (three base64url segments), standing alone;
/// - `phone`: E.164 (`+` and 8-15 digits) or a US number (`(555) 234-5678`, `555-234-5678`,
///   `555.234.5678`, optionally after `1` or `+1`), not touching another digit.
///
/// `wanted[k]` is the detector index that built-in `k` reports as, if it runs.
fn scan(text: &[u8], wanted: &[Option<usize>; 8], out: &mut Vec<(Range<usize>, usize)>) {
    // Each detector is looked for from the bytes it must start with (or, for e-mail addresses and
    // IPv6 addresses, contain): digits, `+`, `(`, `@` and `:` are located sixteen bytes at a time
    // (`words`), `AKIA`, `ASIA` and `eyJ` by `memmem`, so the bytes between them cost no branch
    // each. The matches come out in any order, a match possibly twice: every caller settles them
    // (`settle`).
    let at = |i: usize| text.get(i).copied().unwrap_or(0);
    let before = |i: usize| if i == 0 { 0 } else { text[i - 1] };
    let digit_based = [SSN, CREDIT_CARD, PHONE, IPV4].iter().any(|&k| wanted[k].is_some());
    // IPv6 runs already looked at end before this.
    let mut v6_done = 0;
    for block_start in (0..text.len()).step_by(words::BLOCK) {
        let block = words::block_at(text, block_start);
        if digit_based {
            for i in digit_runs_worth_a_look(text, block_start, block) {
                digit_shapes_at(text, i, wanted, out);
            }
        }
        let mut marks = 0;
        if wanted[PHONE].is_some() {
            marks |= words::equal(block, b'+') | words::equal(block, b'(');
        }
        if wanted[EMAIL].is_some() {
            marks |= words::equal(block, b'@');
        }
        if wanted[IPV6].is_some() {
            marks |= words::equal(block, b':');
        }
        for i in words::offsets(marks).map(|k| block_start + k) {
            match (text[i], wanted[PHONE], wanted[EMAIL], wanted[IPV6]) {
                (b'+' | b'(', Some(d), _, _) if !before(i).is_ascii_digit() => {
                    let end = if text[i] == b'+' {
                        e164_at(text, i).or_else(|| us_phone_at(text, i))
                    } else {
                        us_phone_at(text, i)
                    };
                    if let Some(end) = end {
                        out.push((i..end, d));
                    }
                }
                (b'@', _, Some(d), _) => {
                    if let Some(range) = email_around(text, i) {
                        out.push((range, d));
                    }
                }
                // A colon with neither neighbour in a run of hex digits, colons and dots (`":"`
                // between a JSON key and its value) is no IPv6 address.
                (b':', _, _, Some(d)) if i >= v6_done && (is_v6(before(i)) || is_v6(at(i + 1))) => {
                    let (range, end) = ipv6_around(text, i);
                    v6_done = end;
                    if let Some(range) = range {
                        out.push((range, d));
                    }
                }
                _ => {}
            }
        }
    }
    if let Some(d) = wanted[AWS_ACCESS_KEY] {
        // `AKIA` and `ASIA` in one pass: their common `IA`, then the two bytes before it.
        let starts = FINDERS.ia.find_iter(text).filter_map(|i| i.checked_sub(2));
        for i in starts.filter(|&i| matches!(&text[i..i + 2], b"AK" | b"AS")) {
            let alone = |b: u8| !(b.is_ascii_uppercase() || b.is_ascii_digit());
            let key = alone(before(i))
                && text
                    .get(i + 4..i + 20)
                    .is_some_and(|k| k.iter().all(|b| b.is_ascii_uppercase() || b.is_ascii_digit()))
                && alone(at(i + 20));
            if key {
                out.push((i..i + 20, d));
            }
        }
    }
    if let Some(d) = wanted[JWT] {
        for i in FINDERS.jwt.find_iter(text).filter(|&i| !is_base64url(before(i)) && before(i) != b'.') {
            if let Some(end) = jwt_at(text, i) {
                out.push((i..end, d));
            }
        }
    }
}

/// The IPv6 address in the run of hex digits, colons and dots around the colon at `i`, if the run
/// is one standing alone (trailing dots dropped); and where the run ends.
fn ipv6_around(text: &[u8], i: usize) -> (Option<Range<usize>>, usize) {
    let start = i - text[..i].iter().rev().take_while(|&&c| is_v6(c)).count();
    let end = i + text[i..].iter().take_while(|&&c| is_v6(c)).count();
    let glued_before = start > 0 && text[start - 1].is_ascii_alphanumeric();
    if glued_before || text.get(end).is_some_and(u8::is_ascii_alphanumeric) {
        return (None, end);
    }
    let mut last = end;
    while last > start && text[last - 1] == b'.' {
        last -= 1;
    }
    let run = &text[start..last];
    let parses = run.iter().filter(|&&c| c == b':').count() >= 2
        && run.iter().any(u8::is_ascii_hexdigit)
        && std::str::from_utf8(run).is_ok_and(|s| s.parse::<std::net::Ipv6Addr>().is_ok());
    (parses.then_some(start..last), end)
}

/// The digit-based detectors' matches starting at the digit run at `i` (not preceded by a digit).
fn digit_shapes_at(text: &[u8], i: usize, wanted: &[Option<usize>; 8], out: &mut Vec<(Range<usize>, usize)>) {
    let at = |i: usize| text.get(i).copied().unwrap_or(0);
    let before = |i: usize| if i == 0 { 0 } else { text[i - 1] };
    let run = digit_run(text, i, usize::MAX);
    let after = at(i + run);
    let prev = before(i);
    let mut push = |k: usize, end: Option<usize>| {
        if let (Some(d), Some(end)) = (wanted[k], end) {
            out.push((i..end, d));
        }
    };
    // Each shape's first digit run and what follows it, before its parser runs.
    if run == 3 && after == b'-' && prev != b'-' && wanted[SSN].is_some() {
        push(SSN, ssn_at(text, i));
    }
    if ((13..=19).contains(&run) || (run == 4 && (after == b' ' || after == b'-'))) && wanted[CREDIT_CARD].is_some() {
        push(CREDIT_CARD, card_at(text, i));
    }
    if ((run == 3 && matches!(after, b'-' | b'.' | b' ')) || (run == 1 && text[i] == b'1')) && wanted[PHONE].is_some() {
        push(PHONE, us_phone_at(text, i));
    }
    if run <= 3 && after == b'.' && wanted[IPV4].is_some() && !(prev == b'.' && before(i - 1).is_ascii_digit()) {
        push(IPV4, ipv4_at(text, i));
    }
}

/// The starts of the digit runs in the sixteen bytes `block` at `block_start` that a digit-based
/// detector may begin with (one run possibly twice): every shape [`scan`] looks for starts with a
/// run followed by `-`, `.`, ` ` or `(` (an SSN's area, a card's or a phone number's first group,
/// an IPv4 address's first octet, a phone number's `1`), or with 13 digits or more in a row (an
/// ungrouped card number). A block without a digit costs a few instructions; in the others the
/// runs' starts, and which of them begin 13 digits in a row, come from the blocks' digit masks
/// (measured on CloudTrail, where IDs put many short runs in a block: the scan took 17 % less
/// time than walking back and forth from every run start of a digit-dense block).
fn digit_runs_worth_a_look(text: &[u8], block_start: usize, block: wide::u8x16) -> impl Iterator<Item = usize> {
    let digits = words::within(block, b'0', b'9');
    let digit_before = u32::from(block_start > 0 && text[block_start - 1].is_ascii_digit());
    // Bit k: a run of digits starts at byte k.
    let starts = digits & !(digits << 1 | digit_before);
    let (separated, long) = if digits == 0 {
        (0, 0)
    } else {
        let next = words::block_at(text, block_start + 1);
        let separated = words::within(next, b'-', b'.') | words::equal(next, b' ') | words::equal(next, b'(');
        // A run of 13 starting here lies in this block (13 digits in it) or runs past its last
        // byte: only then is the next block looked at.
        let long = if digits >> (words::BLOCK - 1) == 0 && digits.count_ones() < 13 {
            0
        } else {
            // Bit k of `thirteen`: bytes k to k + 12 are digits, from the digits of this block
            // and the next one, each mask ANDed with itself shifted (2, 4, 8, then 8 + 4 + 1).
            let window =
                digits | words::within(words::block_at(text, block_start + words::BLOCK), b'0', b'9') << words::BLOCK;
            let two = window & window >> 1;
            let four = two & two >> 2;
            let eight = four & four >> 4;
            let thirteen = eight & four >> 8 & window >> 12;
            starts & thirteen
        };
        (separated, long)
    };
    // A run's start from its last digit: in this block from the masks, else looked for.
    let start_of = move |k: usize| {
        let before = starts & ((2u32 << k) - 1);
        if before != 0 {
            block_start + 31 - before.leading_zeros() as usize
        } else {
            let end = block_start + k;
            end - text[..end].iter().rev().take_while(|b| b.is_ascii_digit()).count()
        }
    };
    words::offsets(digits & separated).map(start_of).chain(words::offsets(long).map(move |k| block_start + k))
}

/// Substring finders built once (building one per record cost more than the search).
struct Finders {
    ia: memchr::memmem::Finder<'static>,
    jwt: memchr::memmem::Finder<'static>,
}

static FINDERS: std::sync::LazyLock<Finders> = std::sync::LazyLock::new(|| Finders {
    ia: memchr::memmem::Finder::new(b"IA").into_owned(),
    jwt: memchr::memmem::Finder::new(b"eyJ").into_owned(),
});

fn is_v6(b: u8) -> bool {
    b.is_ascii_hexdigit() || b == b':' || b == b'.'
}

fn is_base64url(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'-'
}

/// How many digits start at `i` (at most `max`).
fn digit_run(text: &[u8], i: usize, max: usize) -> usize {
    text.get(i..).map_or(0, |t| t.iter().take(max).take_while(|b| b.is_ascii_digit()).count())
}

fn number(text: &[u8]) -> u32 {
    text.iter().fold(0, |a, b| a * 10 + u32::from(b - b'0'))
}

fn ssn_at(text: &[u8], i: usize) -> Option<usize> {
    let s = text.get(i..i + 11)?;
    let shape =
        digit_run(s, 0, 3) == 3 && s[3] == b'-' && digit_run(s, 4, 2) == 2 && s[6] == b'-' && digit_run(s, 7, 4) == 4;
    let after = text.get(i + 11).copied().unwrap_or(0);
    let area = if shape { number(&s[..3]) } else { 0 };
    (shape
        && !after.is_ascii_digit()
        && after != b'-'
        && area != 0
        && area != 666
        && area < 900
        && &s[4..6] != b"00"
        && &s[7..11] != b"0000")
        .then_some(i + 11)
}

fn card_at(text: &[u8], i: usize) -> Option<usize> {
    let digits_of = |range: Range<usize>| -> Vec<u32> {
        text[range].iter().filter(|b| b.is_ascii_digit()).map(|b| u32::from(b - b'0')).collect()
    };
    let run = digit_run(text, i, usize::MAX);
    let end = if (13..=19).contains(&run) {
        i + run
    } else if run == 4 {
        // Grouped: 4-4-4-4 with one separator throughout, or 4-6-5 / 4-6-4.
        let sep = text.get(i + 4).copied().filter(|&c| c == b' ' || c == b'-')?;
        let g = |at: usize, len: usize| digit_run(text, at, len + 1) == len;
        if g(i + 5, 4)
            && text.get(i + 9) == Some(&sep)
            && g(i + 10, 4)
            && text.get(i + 14) == Some(&sep)
            && g(i + 15, 4)
        {
            i + 19
        } else if g(i + 5, 6) && matches!(text.get(i + 11), Some(b' ' | b'-')) {
            let last = digit_run(text, i + 12, 6);
            if last == 4 || last == 5 { i + 12 + last } else { return None }
        } else {
            return None;
        }
    } else {
        return None;
    };
    let digits = digits_of(i..end);
    (!text.get(end).is_some_and(u8::is_ascii_digit) && (13..=19).contains(&digits.len()) && luhn(&digits))
        .then_some(end)
}

fn e164_at(text: &[u8], i: usize) -> Option<usize> {
    let run = digit_run(text, i + 1, usize::MAX);
    (matches!(text.get(i + 1), Some(b'1'..=b'9')) && (8..=15).contains(&run)).then_some(i + 1 + run)
}

fn us_phone_at(text: &[u8], i: usize) -> Option<usize> {
    let sep = |at: usize| matches!(text.get(at), Some(b'-' | b'.' | b' '));
    let three = |at: usize| matches!(text.get(at), Some(b'2'..=b'9')) && digit_run(text, at, 3) == 3;
    // The number after an optional country prefix starting at `at`.
    let rest = |mut at: usize| -> Option<usize> {
        if text.get(at) == Some(&b'(') {
            if !three(at + 1) || text.get(at + 4) != Some(&b')') {
                return None;
            }
            at += 5;
            if text.get(at) == Some(&b' ') {
                at += 1;
            }
        } else {
            if !three(at) || !sep(at + 3) {
                return None;
            }
            at += 4;
        }
        if !three(at) || !sep(at + 3) || digit_run(text, at + 4, 5) != 4 {
            return None;
        }
        Some(at + 8)
    };
    let prefixed = if text[i..].starts_with(b"+1") {
        Some(i + 2)
    } else if text.get(i) == Some(&b'1') {
        Some(i + 1)
    } else {
        None
    };
    let with_prefix = prefixed.and_then(|at| rest(if sep(at) { at + 1 } else { at }).or_else(|| rest(at)));
    with_prefix.or_else(|| if text.get(i) == Some(&b'+') { None } else { rest(i) })
}

fn ipv4_at(text: &[u8], i: usize) -> Option<usize> {
    let mut at = i;
    for octet in 0..4 {
        if octet > 0 {
            if text.get(at) != Some(&b'.') {
                return None;
            }
            at += 1;
        }
        let run = digit_run(text, at, 3);
        // What `Ipv4Addr`'s parser accepts: 0 to 255, no leading zero.
        let value = number(&text[at..at + run]);
        if run == 0 || value > 255 || (run > 1 && text[at] == b'0') {
            return None;
        }
        at += run;
    }
    let continued = text.get(at).is_some_and(u8::is_ascii_digit)
        || (text.get(at) == Some(&b'.') && text.get(at + 1).is_some_and(u8::is_ascii_digit));
    (!continued).then_some(at)
}

fn email_around(text: &[u8], at: usize) -> Option<Range<usize>> {
    let local = |b: u8| b.is_ascii_alphanumeric() || b"._%+-".contains(&b);
    let start = at - text[..at].iter().rev().take_while(|&&b| local(b)).count();
    let end =
        at + 1 + text[at + 1..].iter().take_while(|&&b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-').count();
    let domain = &text[at + 1..end];
    let labels: Vec<&[u8]> = domain.split(|&b| b == b'.').collect();
    let valid = start < at
        && labels.len() >= 2
        && labels.iter().all(|l| !l.is_empty())
        && labels.last().is_some_and(|tld| tld.len() >= 2 && tld.iter().all(u8::is_ascii_alphabetic));
    valid.then_some(start..end)
}

fn jwt_at(text: &[u8], i: usize) -> Option<usize> {
    let segment = |at: usize| text.get(at..).map_or(0, |t| t.iter().take_while(|&&b| is_base64url(b)).count());
    if !text[i..].starts_with(b"eyJ") {
        return None;
    }
    let first = segment(i + 3);
    let second_at = i + 3 + first + 1;
    if first < 2 || text.get(second_at - 1) != Some(&b'.') || !text[second_at..].starts_with(b"eyJ") {
        return None;
    }
    let second = segment(second_at + 3);
    let third_at = second_at + 3 + second + 1;
    if second < 2 || text.get(third_at - 1) != Some(&b'.') {
        return None;
    }
    let third = segment(third_at);
    let end = third_at + third;
    (third >= 1 && !text.get(end).is_some_and(|&b| is_base64url(b) || b == b'.')).then_some(end)
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
pub fn configure(config: ConnectorConfig) -> Result<Arc<dyn Transform>, Problems> {
    let span = config.table.span.clone();
    let spans = |key: &str| config.table.value_span(key).unwrap_or(span.clone());
    let (detectors_span, patterns_span, hash_span, fields_span) =
        (spans("detectors"), spans("patterns"), spans("hash_key"), spans("fields"));
    let detector_spans = config.table.element_spans("detectors");
    let mut problems = Problems::default();
    let Some(c) = config.table.deserialize::<RedactConfig>(&mut problems) else { return Err(problems) };
    let mut detectors = Vec::new();
    let chosen: Vec<String> = c.detectors.unwrap_or_else(|| DETECTORS.iter().map(|d| d.to_string()).collect());
    for pattern in &c.patterns {
        if pattern.name.is_empty() || DETECTORS.contains(&pattern.name.as_str()) {
            problems.push(Diagnostic::new(patterns_span.clone(), format!("pattern name `{}` is not usable", pattern.name))
                .with_hint("give each pattern a name of its own (it is written as [REDACTED:<name>]), not a built-in detector's"));
        }
        match Regex::new(&pattern.regex) {
            Ok(regex) => detectors.push(Detector { name: pattern.name.as_str().into(), kind: Kind::Pattern(regex) }),
            Err(e) => problems.push(
                Diagnostic::new(patterns_span.clone(), format!("pattern `{}`: invalid regex: {e}", pattern.name))
                    .with_hint("Rust `regex` syntax (no look-around or backreferences), e.g. regex = \"EMP-[0-9]{6}\""),
            ),
        }
    }
    // Built-ins in tie order, whatever order they are listed in.
    for (at, name) in chosen.iter().enumerate() {
        if !DETECTORS.contains(&name.as_str()) {
            let span = detector_spans.get(at).unwrap_or(&detectors_span).clone();
            let d = Diagnostic::new(span, format!("unknown detector `{name}`"));
            problems.push(match sluice_engine::config::did_you_mean(name, DETECTORS.iter().copied()) {
                Some(k) => d.with_hint(format!("did you mean `{k}`? built-in detectors: {}", DETECTORS.join(", "))),
                None => {
                    d.with_hint(format!("built-in detectors: {}; add your own with `patterns`", DETECTORS.join(", ")))
                }
            });
        }
    }
    for (k, name) in DETECTORS.iter().enumerate().filter(|(_, d)| chosen.iter().any(|c| c == *d)) {
        detectors.push(Detector { name: (*name).into(), kind: Kind::BuiltIn(k) });
    }
    if detectors.is_empty() && c.patterns.is_empty() {
        problems.push(
            Diagnostic::new(detectors_span, "a redact transform with no detectors changes nothing")
                .with_hint(format!("list built-in detectors ({}) or add `patterns`", DETECTORS.join(", "))),
        );
    }
    let patterns: Vec<&str> = detectors
        .iter()
        .filter_map(|d| match &d.kind {
            Kind::Pattern(r) => Some(r.as_str()),
            Kind::BuiltIn(_) => None,
        })
        .collect();
    let set = problems.take(
        RegexSet::new(patterns)
            .map_err(|e| Diagnostic::new(patterns_span, format!("the patterns cannot be combined: {e}"))),
    );
    let mode = c.mode.unwrap_or(Mode::Mask);
    let hash_key = problems.take(match (mode, c.hash_key) {
        (Mode::Hash, None) => Err(Diagnostic::new(span, "mode = \"hash\" needs `hash_key`")
            .with_hint("hash_key = \"${REDACT_KEY}\": the HMAC-SHA256 key; keep it secret, or hashes of guessable values can be reversed")),
        (Mode::Hash, Some(key)) if key.len() < 16 => Err(Diagnostic::new(hash_span, "`hash_key` must be at least 16 bytes")
            .with_hint("use a long random secret, e.g. from `openssl rand -hex 32`")),
        (Mode::Hash, Some(key)) => Hmac::<Sha256>::new_from_slice(key.as_bytes())
            .map(Some)
            .map_err(|e| Diagnostic::new(hash_span, format!("`hash_key`: {e}"))),
        (_, Some(_)) => Err(Diagnostic::new(hash_span, "`hash_key` is only used with mode = \"hash\"")
            .with_hint("remove it, or set mode = \"hash\"")),
        (_, None) => Ok(None),
    });
    let fields = problems.take(match c.fields {
        Some(fields) if fields.is_empty() || fields.iter().any(|f| f.is_empty() || f.split('.').any(str::is_empty)) => {
            Err(Diagnostic::new(fields_span, "`fields` must list dotted key paths").with_hint(
                "e.g. fields = [\"ssn_note\", \"userIdentity.userName\"]; leave it out to scan every string",
            ))
        }
        Some(fields) => Ok(Some(fields.iter().map(|f| f.split('.').map(str::to_string).collect()).collect())),
        None => Ok(None),
    });
    let (set, hash_key, fields) = problems.finish((|| Some((set?, hash_key?, fields?)))())?;
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
        Ok(Box::new(RecordByRecord(self.redactor(Arc::clone(&context.metrics)))))
    }
}

impl RedactTransform {
    /// One worker's redactor, counting into `metrics`.
    fn redactor(&self, metrics: Arc<TransformMetrics>) -> Redactor {
        Redactor {
            detectors: self.detectors.clone(),
            set: self.set.clone(),
            fields: self.fields.clone(),
            mode: self.mode,
            hash_key: self.hash_key.clone(),
            counts: vec![0; self.detectors.len()],
            metrics,
            out: Vec::new(),
            value: Vec::new(),
            path: Vec::new(),
            found: Vec::new(),
            built_ins: (0..self.detectors.len()).filter(|&i| self.detectors[i].is_built_in()).collect(),
            patterns: (0..self.detectors.len()).filter(|&i| !self.detectors[i].is_built_in()).collect(),
            candidates: Vec::new(),
            cursor: 0,
            strings: Vec::new(),
        }
    }
}

/// Whether `record` is read as JSON (an object, an array or a string); anything else, a bare
/// number or word among them, is scanned as one text (module docs).
fn read_as_json(record: &[u8]) -> bool {
    record.iter().find(|b| !b.is_ascii_whitespace()).is_some_and(|b| matches!(b, b'{' | b'[' | b'"'))
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
    /// The built-in detectors (searched over the whole record) and the `patterns` (searched in each
    /// string alone), as indices into `detectors`.
    built_ins: Vec<usize>,
    patterns: Vec<usize>,
    /// The built-in detectors' matches in the record, settled; `cursor` is the first not yet placed.
    candidates: Vec<(Range<usize>, usize)>,
    cursor: usize,
    /// The value strings of the record being spliced.
    strings: Vec<(Range<usize>, bool)>,
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

/// Finds the matches of `detectors` (indices into `all`) in `text`, appending them to `found`: the
/// built-in ones in one [`scan`], the patterns one regex each.
fn search(
    all: &[Detector],
    detectors: impl IntoIterator<Item = usize>,
    text: &[u8],
    found: &mut Vec<(Range<usize>, usize)>,
) {
    let mut wanted = [None; 8];
    let mut any_built_in = false;
    for i in detectors {
        match &all[i].kind {
            Kind::BuiltIn(k) => {
                wanted[*k] = Some(i);
                any_built_in = true;
            }
            Kind::Pattern(regex) => {
                found.extend(regex.find_iter(text).filter(|m| !m.range().is_empty()).map(|m| (m.range(), i)));
            }
        }
    }
    if any_built_in {
        scan(text, &wanted, found);
    }
}

/// Orders matches earliest first, then longest, then by detector, and drops those that overlap
/// one kept before them.
fn settle(found: &mut Vec<(Range<usize>, usize)>) {
    found.sort_by_key(|(r, i)| (r.start, std::cmp::Reverse(r.end), *i));
    let mut end = 0;
    found.retain(|(r, _)| {
        let keep = r.start >= end;
        if keep {
            end = r.end;
        }
        keep
    });
}

impl Redactor {
    /// Finds every detector's matches in `text` into `self.found` (the patterns the RegexSet says
    /// can match, and the built-ins).
    fn find_all(&mut self, text: &[u8]) {
        self.found.clear();
        let patterns: Vec<usize> = self.set.matches(text).iter().map(|p| self.patterns[p]).collect();
        search(&self.detectors, patterns.into_iter().chain(self.built_ins.iter().copied()), text, &mut self.found);
        settle(&mut self.found);
    }

    /// Writes `text` with the matches in `self.found` replaced into `out`; whether there were any.
    fn write_replaced(&mut self, text: &[u8], out: &mut Vec<u8>) -> bool {
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

    /// The matches inside the string value whose text (without escapes) is `record[content]`: the
    /// record-wide matches of the built-in detectors that fall in it, and the matches of the
    /// `patterns` searched in the value alone (their anchors see its start and end); into
    /// `self.found`, relative to the value.
    fn found_in(&mut self, record: &[u8], content: Range<usize>) {
        self.found.clear();
        while self.candidates.get(self.cursor).is_some_and(|(r, _)| r.start < content.start) {
            self.cursor += 1;
        }
        while let Some((r, i)) = self.candidates.get(self.cursor).filter(|(r, _)| r.end <= content.end) {
            self.found.push((r.start - content.start..r.end - content.start, *i));
            self.cursor += 1;
        }
        if !self.patterns.is_empty() {
            search(&self.detectors, self.patterns.iter().copied(), &record[content], &mut self.found);
            settle(&mut self.found);
        }
    }

    /// Whether the string at the current path is scanned.
    fn in_fields(&self) -> bool {
        let Some(fields) = &self.fields else { return true };
        let keys: Vec<&str> = self.path.iter().flatten().map(String::as_str).collect();
        fields.iter().any(|f| keys.len() >= f.len() && keys.iter().zip(f).all(|(k, f)| k == f))
    }

    /// Writes `record` with the matches in its string values (`strings`: each value string's range,
    /// quotes included, and whether it has an escape) replaced into `self.out`; what is outside a
    /// changed string is copied as it is.
    fn splice_json(&mut self, record: &[u8], strings: &[(Range<usize>, bool)]) {
        self.out.clear();
        let mut copied = 0;
        let mut value = std::mem::take(&mut self.value);
        for (range, escaped) in strings {
            value.clear();
            let changed = if *escaped {
                match serde_json::from_slice::<std::borrow::Cow<'_, str>>(&record[range.clone()]) {
                    Ok(text) => {
                        self.find_all(text.as_bytes());
                        self.write_replaced(text.as_bytes(), &mut value)
                    }
                    Err(_) => false,
                }
            } else {
                let content = range.start + 1..range.end - 1;
                // No record-wide match left and no patterns: this string cannot change.
                if self.cursor >= self.candidates.len() && self.patterns.is_empty() {
                    continue;
                }
                self.found_in(record, content.clone());
                self.write_replaced(&record[content], &mut value)
            };
            if !changed {
                continue;
            }
            self.out.extend_from_slice(&record[copied..range.start]);
            if *escaped {
                let replaced = String::from_utf8_lossy(&value);
                // Serializing a string into a Vec cannot fail.
                let _ = serde_json::to_writer(&mut self.out, replaced.as_ref());
            } else {
                self.out.push(b'"');
                self.out.extend_from_slice(&value);
                self.out.push(b'"');
            }
            copied = range.end;
        }
        self.out.extend_from_slice(&record[copied..]);
        self.value = value;
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
                        // Keys are only read to follow `fields`.
                        if self.fields.is_some()
                            && let Some(slot) = self.path.last_mut()
                        {
                            *slot = serde_json::from_slice::<String>(raw).ok();
                        }
                        self.out.extend_from_slice(raw);
                        continue;
                    }
                    if !self.in_fields() {
                        self.out.extend_from_slice(raw);
                        continue;
                    }
                    let mut value = std::mem::take(&mut self.value);
                    value.clear();
                    let escaped = raw.contains(&b'\\');
                    let changed = if escaped {
                        // Decoded and searched alone: the record-wide search saw the escapes.
                        match serde_json::from_slice::<std::borrow::Cow<'_, str>>(raw) {
                            Ok(text) => {
                                self.find_all(text.as_bytes());
                                self.write_replaced(text.as_bytes(), &mut value)
                            }
                            Err(_) => false,
                        }
                    } else {
                        // Without escapes the raw bytes are the text; what is written between the
                        // quotes is its pieces and ASCII tokens, so it stays a valid JSON string.
                        let content = i - raw.len() + 1..i - 1;
                        self.found_in(record, content.clone());
                        self.write_replaced(&record[content], &mut value)
                    };
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
                        (true, _) if escaped => {
                            let replaced = String::from_utf8_lossy(&value);
                            // Serializing a string into a Vec cannot fail.
                            let _ = serde_json::to_writer(&mut self.out, replaced.as_ref());
                        }
                        (true, _) => {
                            self.out.push(b'"');
                            self.out.extend_from_slice(&value);
                            self.out.push(b'"');
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
        // The built-in detectors search the whole record once (their matches never cross a
        // quote, so each lies inside one string); a record where none matches, with no escapes and
        // no `patterns`, passes untouched and unparsed.
        self.candidates.clear();
        self.cursor = 0;
        search(&self.detectors, self.built_ins.iter().copied(), record, &mut self.candidates);
        settle(&mut self.candidates);
        let escapes = memchr::memchr(b'\\', record).is_some();
        if self.candidates.is_empty() && self.patterns.is_empty() && !escapes {
            emit.record(record);
            return Ok(());
        }
        // Every string scanned, none removed, no patterns, and every match inside a string value:
        // as JSON the record gets every match replaced, and as text too, so it is not walked.
        if !escapes
            && self.patterns.is_empty()
            && self.splices_every_string()
            && all_in_value_strings(record, &self.candidates)
        {
            std::mem::swap(&mut self.found, &mut self.candidates);
            self.emit_replaced(record, emit);
            std::mem::swap(&mut self.found, &mut self.candidates);
            return Ok(());
        }
        self.redact_walked(record, emit);
        Ok(())
    }

    fn end_of_batch(&mut self) {
        for (count, detector) in self.counts.iter_mut().zip(&self.detectors) {
            if *count > 0 {
                self.metrics.count(REDACTED_VALUES, "detector", &detector.name, *count);
                *count = 0;
            }
        }
    }
}

#[cfg(any(test, fuzzing))]
impl Redactor {
    /// Every built-in detector, no `patterns`, no `fields`: the walk-free way is open to it.
    fn built_ins_only(mode: Mode) -> Redactor {
        let detectors =
            (0..DETECTORS.len()).map(|k| Detector { name: DETECTORS[k].into(), kind: Kind::BuiltIn(k) }).collect();
        let hash_key = (mode == Mode::Hash).then(|| Hmac::<Sha256>::new_from_slice(b"0123456789abcdef").ok()).flatten();
        RedactTransform { detectors, set: RegexSet::empty(), fields: None, mode, hash_key }.redactor(Arc::default())
    }

    /// What `record` becomes by the walked way alone (as JSON, else as text).
    fn walked_alone(&mut self, record: &[u8]) -> Vec<Vec<u8>> {
        search(&self.detectors, self.built_ins.iter().copied(), record, &mut self.candidates);
        settle(&mut self.candidates);
        let mut batch = sluice_engine::record::RecordBatch::default();
        self.redact_walked(record, &mut Emit::new(&mut batch));
        batch.iter().map(<[u8]>::to_vec).collect()
    }
}

/// Whether `record` comes out of the transform (every built-in detector; masked, or hashed when
/// `hash`) exactly as the walked way alone makes it, with the same counts, and, when it is JSON,
/// still JSON: the oracle of the unit tests and of the `redact_ways` fuzz target (`fuzz/`, built
/// with `--cfg fuzzing`).
#[cfg(any(test, fuzzing))]
pub fn walk_free_way_agrees(hash: bool, record: &[u8]) -> Result<(), String> {
    let mode = if hash { Mode::Hash } else { Mode::Mask };
    let mut transform = Redactor::built_ins_only(mode);
    let mut batch = sluice_engine::record::RecordBatch::default();
    transform.transform(record, &mut Emit::new(&mut batch)).map_err(|e| format!("{e:?}"))?;
    let out: Vec<Vec<u8>> = batch.iter().map(<[u8]>::to_vec).collect();
    let mut walk = Redactor::built_ins_only(mode);
    let expected = walk.walked_alone(record);
    let show =
        |records: &[Vec<u8>]| records.iter().map(|r| String::from_utf8_lossy(r).into_owned()).collect::<Vec<_>>();
    if out != expected || transform.counts != walk.counts {
        return Err(format!(
            "{:?}: the transform made {:?} (counts {:?}), the walk {:?} (counts {:?})",
            String::from_utf8_lossy(record),
            show(&out),
            transform.counts,
            show(&expected),
            walk.counts
        ));
    }
    let json = |bytes: &[u8]| serde_json::from_slice::<serde::de::IgnoredAny>(bytes).is_ok();
    if read_as_json(record) && json(record) && !out.iter().all(|o| json(o)) {
        return Err(format!("{:?} is JSON, {:?} is not", String::from_utf8_lossy(record), show(&out)));
    }
    Ok(())
}

impl Redactor {
    /// The way of a record [`all_in_value_strings`] cannot settle: walked as JSON (the string
    /// values, or every value when fields are chosen or dropped), else as one text. `candidates`
    /// holds the built-in detectors' settled matches in it.
    fn redact_walked(&mut self, record: &[u8], emit: &mut Emit<'_>) {
        let json_like = read_as_json(record);
        if json_like && self.splices_every_string() {
            // Every string value is scanned and none is removed: splice the replacements in.
            let mut strings = std::mem::take(&mut self.strings);
            strings.clear();
            if json::value_strings(record, &mut |range, escaped| strings.push((range, escaped))) == json::Scanned::Valid
            {
                self.splice_json(record, &strings);
                self.strings = strings;
                emit.record(&self.out);
                return;
            }
            self.strings = strings;
        } else if json_like && json::validate(record) == json::Scanned::Valid {
            self.redact_json(record);
            emit.record(&self.out);
            return;
        }
        // Not JSON: the whole record is one text.
        self.find_all(record);
        self.emit_replaced(record, emit);
    }

    /// Whether every string value is scanned and none is removed (no `fields`, not
    /// `drop_field`): a record's matches can then be spliced in where they are.
    fn splices_every_string(&self) -> bool {
        self.fields.is_none() && self.mode != Mode::DropField
    }

    /// Emits `record` with the matches in `self.found` replaced (or as it is, with none).
    fn emit_replaced(&mut self, record: &[u8], emit: &mut Emit<'_>) {
        let mut out = std::mem::take(&mut self.out);
        out.clear();
        if self.write_replaced(record, &mut out) {
            emit.record(&out);
        } else {
            emit.record(record);
        }
        self.out = out;
    }
}

/// Whether every match of `candidates` (settled: in order, not overlapping; none holds a quote)
/// lies inside a string that is a value, in `record` read as JSON without escapes (the caller
/// checks there is no backslash): each is preceded by an odd number of quotes, and the string's
/// closing quote is not followed by a colon. Exact for valid JSON without escapes, where every
/// quote opens or closes a string; for any other record it says nothing the caller relies on.
fn all_in_value_strings(record: &[u8], candidates: &[(Range<usize>, usize)]) -> bool {
    let mut quotes_before = 0;
    let mut counted_to = 0;
    for (range, _) in candidates {
        quotes_before += memchr::memchr_iter(b'"', &record[counted_to..range.start]).count();
        counted_to = range.start;
        let Some(close) = memchr::memchr(b'"', &record[range.start..]).map(|k| range.start + k) else {
            return false;
        };
        if quotes_before % 2 == 0 || close < range.end || record.get(json::skip_ws(record, close + 1)) == Some(&b':') {
            return false;
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use sluice_engine::record::RecordBatch;

    use super::*;

    /// The tests' pattern, compiled once (an unoptimised regex compile per case slowed the
    /// property tests tenfold).
    static EMPLOYEE_ID: std::sync::LazyLock<(Regex, RegexSet)> = std::sync::LazyLock::new(|| {
        (
            Regex::new("EMP-[0-9]{6}").unwrap_or_else(|e| panic!("{e}")),
            RegexSet::new(["EMP-[0-9]{6}"]).unwrap_or_else(|e| panic!("{e}")),
        )
    });

    fn redactor(mode: Mode, fields: Option<&[&str]>) -> Redactor {
        let mut detectors: Vec<Detector> =
            vec![Detector { name: "employee_id".into(), kind: Kind::Pattern(EMPLOYEE_ID.0.clone()) }];
        for (k, name) in DETECTORS.iter().enumerate() {
            detectors.push(Detector { name: (*name).into(), kind: Kind::BuiltIn(k) });
        }
        RedactTransform {
            detectors,
            set: EMPLOYEE_ID.1.clone(),
            fields: fields.map(|f| f.iter().map(|p| p.split('.').map(str::to_string).collect()).collect()),
            mode,
            hash_key: (mode == Mode::Hash)
                .then(|| Hmac::<Sha256>::new_from_slice(b"0123456789abcdef").unwrap_or_else(|e| panic!("{e}"))),
        }
        .redactor(Arc::default())
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
    fn finds_them_where_real_text_puts_them() {
        let mut r = redactor(Mode::Mask, None);
        let cases = [
            ("ip=fe80::1, then", "ip=[REDACTED:ipv6], then"),
            ("addr 2001:db8::1.", "addr [REDACTED:ipv6]."),
            ("to a@b@c.com", "to a@[REDACTED:email]"),
            ("call 1-800-555-1234", "call [REDACTED:phone]"),
            ("call +1 555 234 5678", "call [REDACTED:phone]"),
            ("amex 3782 822463 10005", "amex [REDACTED:credit_card]"),
            ("x 0123456789123 4111111111111111", "x 0123456789123 [REDACTED:credit_card]"),
            ("AKIAIOSFODNN7EXAMPLEX AKIAIOSFODNN7EXAMPL", "AKIAIOSFODNN7EXAMPLEX AKIAIOSFODNN7EXAMPL"),
        ];
        for (input, expected) in cases {
            assert_eq!(redact(&mut r, input), expected, "{input}");
        }
        for input in ["use std::io::Read", "deadbeef::cafe", "01.2.3.4"] {
            let out = redact(&mut r, input);
            assert!(!out.contains("ipv"), "{input} -> {out}");
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
    fn a_pattern_anchored_to_the_value_still_matches_whole_values() {
        let mut r = redactor(Mode::Mask, None);
        let regex = Regex::new("^[0-9]{4}$").unwrap_or_else(|e| panic!("{e}"));
        r.detectors.push(Detector { name: "pin".into(), kind: Kind::Pattern(regex) });
        r.counts.push(0);
        r.patterns.push(r.detectors.len() - 1);
        r.set = RegexSet::new(["EMP-[0-9]{6}", "^[0-9]{4}$"]).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            redact(&mut r, r#"{"pin":"1234","note":"pin 1234"}"#),
            r#"{"pin":"[REDACTED:pin]","note":"pin 1234"}"#
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

    /// What [`digit_shapes_at`] finds at every digit run's start, the way the scan once looked.
    fn digit_shapes_everywhere(text: &[u8], wanted: &[Option<usize>; 8]) -> Vec<(Range<usize>, usize)> {
        let mut found = Vec::new();
        for i in (0..text.len()).filter(|&i| text[i].is_ascii_digit() && (i == 0 || !text[i - 1].is_ascii_digit())) {
            digit_shapes_at(text, i, wanted, &mut found);
        }
        found
    }

    /// What [`digit_shapes_at`] finds at the runs the scan looks at.
    fn digit_shapes_looked_at(text: &[u8], wanted: &[Option<usize>; 8]) -> Vec<(Range<usize>, usize)> {
        let mut starts: Vec<usize> = (0..text.len())
            .step_by(words::BLOCK)
            .flat_map(|at| digit_runs_worth_a_look(text, at, words::block_at(text, at)))
            .collect();
        starts.sort_unstable();
        starts.dedup();
        let mut found = Vec::new();
        for i in starts {
            digit_shapes_at(text, i, wanted, &mut found);
        }
        found
    }

    /// Pieces of records: structure, detector matches, plain text.
    fn piece() -> impl Strategy<Value = &'static str> {
        proptest::sample::select(vec![
            "{",
            "}",
            "[",
            "]",
            "\"",
            ":",
            ",",
            " ",
            "\n",
            "1.2.3.4",
            "a@b.io",
            "123-45-6789",
            "4111111111111111",
            "x",
            "true",
            "7",
            "\\",
            "2001:db8::1",
        ])
    }

    /// JSON values whose strings, keys and numbers hold detector matches.
    fn json_value() -> impl Strategy<Value = serde_json::Value> {
        let leaf = prop_oneof![
            piece().prop_map(serde_json::Value::from),
            Just(serde_json::Value::from(4_111_111_111_111_111_u64)),
            Just(serde_json::Value::from(7)),
            Just(serde_json::Value::Null),
        ];
        leaf.prop_recursive(3, 16, 4, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::from),
                proptest::collection::btree_map(piece().prop_map(str::to_string), inner, 0..4)
                    .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(3000))]

        /// Records the walk-free way takes come out as the walked way makes them, valid JSON or
        /// not, matches in keys, values, numbers and between strings alike.
        #[test]
        fn the_walk_free_way_answers_as_the_walk(
            pieces in proptest::collection::vec(piece(), 0..24),
            value in json_value(),
            hash in any::<bool>(),
        ) {
            let valid = serde_json::to_string(&value).unwrap_or_default();
            for record in [pieces.concat(), valid] {
                if let Err(difference) = walk_free_way_agrees(hash, record.as_bytes()) {
                    return Err(TestCaseError::fail(difference));
                }
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        /// Access key ids are found wherever `AKIA` or `ASIA` starts one (looking at every byte).
        #[test]
        fn access_keys_are_found_at_every_akia_and_asia(text in "[AKSI0Z x]{0,60}|x?(AKIA|ASIA|AS|AK)[A-Z0-9]{14,18}[ x]?(ASIA|AKIA)?[A-Z]{0,17}") {
            let bytes = text.as_bytes();
            let wanted = [None, Some(1), None, None, None, None, None, None];
            let mut found = Vec::new();
            scan(bytes, &wanted, &mut found);
            found.sort_by_key(|(r, _)| r.start);
            let key_byte = |b: &u8| b.is_ascii_uppercase() || b.is_ascii_digit();
            let expected: Vec<(Range<usize>, usize)> = (0..bytes.len())
                .filter(|&i| matches!(bytes.get(i..i + 4), Some(b"AKIA" | b"ASIA")))
                .filter(|&i| {
                    (i == 0 || !key_byte(&bytes[i - 1]))
                        && bytes.get(i + 4..i + 20).is_some_and(|k| k.iter().all(key_byte))
                        && !bytes.get(i + 20).is_some_and(key_byte)
                })
                .map(|i| (i..i + 20, 1))
                .collect();
            prop_assert_eq!(found, expected, "{}", text);
        }
    }

    /// An IPv4 address's end by std's parser alone: the one end within 15 bytes where the text
    /// from `i` parses as an `Ipv4Addr` and neither a digit nor a dot and a digit follow.
    fn ipv4_by_std_parser(text: &[u8], i: usize) -> Option<usize> {
        let digit = |k: usize| text.get(k).is_some_and(u8::is_ascii_digit);
        (i + 1..=text.len().min(i + 15)).find(|&end| {
            std::str::from_utf8(&text[i..end]).is_ok_and(|s| s.parse::<std::net::Ipv4Addr>().is_ok())
                && !digit(end)
                && !(text.get(end) == Some(&b'.') && digit(end + 1))
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        /// Octets are judged as std's `Ipv4Addr` parser judges them (0-255, no leading zero).
        #[test]
        fn ipv4_octets_are_checked_as_std_parses_them(
            text in "[0-9.x]{0,20}|x?(2[5-9][0-9]|0[0-9]{0,2}|[0-9]{1,3})(\\.(2[4-6][0-9]|0[0-9]{0,2}|[0-9]{1,3})){3}[.0-9x]{0,2}"
        ) {
            for i in 0..text.len() {
                prop_assert_eq!(ipv4_at(text.as_bytes(), i), ipv4_by_std_parser(text.as_bytes(), i), "{} at {}", text, i);
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        /// The eight-bytes-at-a-time filter skips no run a digit-based detector matches at.
        #[test]
        fn the_digit_runs_looked_at_miss_no_match(text in "[0-9 .()+x-]{0,120}|[0-9]{0,30}[ .-][0-9]{0,30}|[x ]{0,9}1[ .(-]{0,2}[2-9][0-9]{2}[) .-]{0,2}[2-9][0-9]{2}[ .-][0-9]{4}") {
            let wanted = [None, None, None, Some(3), Some(4), None, Some(6), Some(7)];
            prop_assert_eq!(digit_shapes_looked_at(text.as_bytes(), &wanted), digit_shapes_everywhere(text.as_bytes(), &wanted));
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        /// The colons the scan skips (no neighbour in a hex/colon/dot run) are in no IPv6 address:
        /// it finds what looking around every colon finds.
        #[test]
        fn the_colons_looked_at_miss_no_ipv6_address(
            text in "[0-9a-fA-Fg:. x\"]{0,70}|[ x\"]{0,3}([0-9a-fA-F]{1,4}:){2,7}[0-9a-fA-F]{1,4}[ x\"]{0,3}|[ x\"]{0,3}[0-9a-f]{0,4}::[0-9a-f]{0,4}(:[0-9a-f]{1,4}){0,3}|x?([0-9]{1,4}:){7}[0-9]{1,4}|x?([a-f]{1,4}:){7}[a-f]{1,4}|x?([A-F]{1,4}:){7}[A-F]{1,4}|x?::ffff:[0-9]{1,3}\\.[0-9]{1,3}\\.[0-9]{1,3}\\.[0-9]{1,3}"
        ) {
            let text = text.as_bytes();
            let wanted = [None, None, None, None, None, Some(5), None, None];
            let mut found = Vec::new();
            scan(text, &wanted, &mut found);
            settle(&mut found);
            let mut everywhere = Vec::new();
            let mut v6_done = 0;
            for i in (0..text.len()).filter(|&i| text[i] == b':') {
                if i < v6_done {
                    continue;
                }
                let (range, end) = ipv6_around(text, i);
                v6_done = end;
                everywhere.extend(range.map(|r| (r, 5)));
            }
            settle(&mut everywhere);
            prop_assert_eq!(found, everywhere);
        }
    }

    #[test]
    fn long_runs_are_looked_at_wherever_they_lie_in_the_blocks() {
        let wanted = [None, None, None, Some(3), Some(4), None, Some(6), Some(7)];
        for offset in 0..2 * words::BLOCK {
            for len in 12..=20 {
                // A card number that passes the Luhn check, so the run is a match.
                let digits: String =
                    luhn_complete(&vec![4; len - 1]).iter().map(|d| char::from(b'0' + *d as u8)).collect();
                for after in ["", "x", "xxxx\"", "-", " 1"] {
                    let text = format!("{}{digits}{after}", "x".repeat(offset));
                    let found = digit_shapes_looked_at(text.as_bytes(), &wanted);
                    assert_eq!(found.is_empty(), !(13..=19).contains(&len), "{text}");
                    assert_eq!(found, digit_shapes_everywhere(text.as_bytes(), &wanted), "{text}");
                }
            }
        }
    }

    #[test]
    fn the_digit_runs_looked_at_miss_no_match_in_cloudtrail() {
        let mut text = Vec::new();
        crate::synth::write_ndjson(crate::synth::Profile::Cloudtrail, 7, 2_000, &mut text)
            .unwrap_or_else(|e| panic!("{e}"));
        let wanted = [None, None, None, Some(3), Some(4), None, Some(6), Some(7)];
        for record in text.split(|&b| b == b'\n') {
            assert_eq!(
                digit_shapes_looked_at(record, &wanted),
                digit_shapes_everywhere(record, &wanted),
                "{}",
                String::from_utf8_lossy(record)
            );
        }
    }

    #[test]
    fn the_walk_free_way_answers_as_the_walk_on_cloudtrail() {
        let mut text = Vec::new();
        crate::synth::write_ndjson(crate::synth::Profile::Cloudtrail, 11, 2_000, &mut text)
            .unwrap_or_else(|e| panic!("{e}"));
        let mut r = Redactor::built_ins_only(Mode::Mask);
        for record in String::from_utf8_lossy(&text).lines() {
            let out = redact(&mut r, record);
            walk_free_way_agrees(false, record.as_bytes()).unwrap_or_else(|e| panic!("{e}"));
            // Every generated record has a source address, in a value: it is rewritten without
            // a walk.
            assert_ne!(out, record);
            assert!(all_in_value_strings(record.as_bytes(), &r.candidates), "{record}");
        }
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

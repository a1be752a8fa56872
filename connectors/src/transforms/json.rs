//! A small strict JSON scanner shared by the transforms: it validates a document while it walks it
//! and hands out the raw byte ranges of values and object members, without building a tree.
//!
//! Guarantees: [`validate`] accepts exactly RFC 8259 JSON texts (one value, surrounding whitespace)
//! nested at most [`MAX_DEPTH`] deep whose `\u` escapes make characters (a surrogate only in a
//! pair, as jaq and serde_json read strings), except that it does not check that strings are UTF-8
//! (the transforms work on bytes and keep what they do not change as it was); ranges always cover
//! whole values of the scanned text.

use std::ops::Range;

use super::words;

/// Deepest nesting scanned (deeper documents are reported as [`Scanned::TooDeep`]).
pub const MAX_DEPTH: usize = 128;

/// What [`validate`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scanned {
    /// One JSON value.
    Valid,
    /// Not JSON.
    Invalid,
    /// Nested deeper than [`MAX_DEPTH`] (not judged).
    TooDeep,
}

/// Whether `bytes` is one JSON value.
pub fn validate(bytes: &[u8]) -> Scanned {
    value_strings(bytes, &mut |_, _| {})
}

/// Whether `bytes` is one JSON value, telling `string` the range (quotes included) of every string
/// that is a value (not an object key), in order, and whether it holds an escape.
pub fn value_strings(bytes: &[u8], string: &mut dyn FnMut(Range<usize>, bool)) -> Scanned {
    let mut at = skip_ws(bytes, 0);
    match skip_value(bytes, &mut at, 0, string) {
        Err(e) => e,
        Ok(()) if skip_ws(bytes, at) == bytes.len() => Scanned::Valid,
        Ok(()) => Scanned::Invalid,
    }
}

/// No-op string visitor.
fn ignore(_: Range<usize>, _: bool) {}

/// The index of the first byte at or after `at` that is not JSON whitespace.
#[inline(always)]
pub fn skip_ws(bytes: &[u8], mut at: usize) -> usize {
    // Compact JSON has none: one comparison says so (whitespace is below `!`).
    if bytes.get(at).is_some_and(|&b| b > b' ') {
        return at;
    }
    while at < bytes.len() && matches!(bytes[at], b' ' | b'\t' | b'\n' | b'\r') {
        at += 1;
    }
    at
}

/// Skips one value starting at `*at` (no leading whitespace), validating it, and tells `string`
/// the range of every string in it that is a value (not an object key) and whether it holds an
/// escape. One loop, not a call per nested value: the open containers are a stack of bits (object
/// or array), so the walk's position and state stay in registers (measured: the JSON walks of the
/// redact + jq pipeline went from 26.7 % to 24.9 % of its CPU against the recursive version).
fn skip_value<S: FnMut(Range<usize>, bool) + ?Sized>(
    bytes: &[u8],
    at: &mut usize,
    depth: usize,
    string: &mut S,
) -> Result<(), Scanned> {
    let mut i = *at;
    // Bit `n` is set when the `n`th open container (from the outside) is an object.
    let mut objects: u128 = 0;
    let mut open: usize = 0;
    loop {
        // A value starts at `i`.
        match bytes.get(i) {
            Some(b'"') => {
                let start = i;
                let escaped = skip_string(bytes, &mut i)?;
                string(start..i, escaped);
            }
            Some(&c @ (b'{' | b'[')) => {
                if depth + open >= MAX_DEPTH {
                    return Err(Scanned::TooDeep);
                }
                let object = c == b'{';
                i = skip_ws(bytes, i + 1);
                if bytes.get(i) == Some(if object { &b'}' } else { &b']' }) {
                    i += 1;
                } else {
                    objects = (objects & !(1 << open)) | (u128::from(object) << open);
                    open += 1;
                    if object {
                        i = key_and_colon(bytes, i)?;
                    }
                    continue;
                }
            }
            Some(b't') => literal(bytes, &mut i, b"true")?,
            Some(b'f') => literal(bytes, &mut i, b"false")?,
            Some(b'n') => literal(bytes, &mut i, b"null")?,
            Some(b'-' | b'0'..=b'9') => skip_number(bytes, &mut i)?,
            _ => return Err(Scanned::Invalid),
        }
        // A value ended at `i`: the next one in its container, or the container's end.
        loop {
            if open == 0 {
                *at = i;
                return Ok(());
            }
            let object = objects >> (open - 1) & 1 != 0;
            i = skip_ws(bytes, i);
            match bytes.get(i) {
                Some(b',') => {
                    i = skip_ws(bytes, i + 1);
                    if object {
                        i = key_and_colon(bytes, i)?;
                    }
                    break;
                }
                Some(b'}') if object => {
                    i += 1;
                    open -= 1;
                }
                Some(b']') if !object => {
                    i += 1;
                    open -= 1;
                }
                _ => return Err(Scanned::Invalid),
            }
        }
    }
}

/// Skips an object's key (at `i`), the colon after it and the whitespace around them: where its
/// value starts.
#[inline]
fn key_and_colon(bytes: &[u8], mut i: usize) -> Result<usize, Scanned> {
    if bytes.get(i) != Some(&b'"') {
        return Err(Scanned::Invalid);
    }
    skip_string(bytes, &mut i)?;
    i = skip_ws(bytes, i);
    if bytes.get(i) != Some(&b':') {
        return Err(Scanned::Invalid);
    }
    Ok(skip_ws(bytes, i + 1))
}

fn literal(bytes: &[u8], at: &mut usize, word: &[u8]) -> Result<(), Scanned> {
    if bytes.get(*at..*at + word.len()) == Some(word) {
        *at += word.len();
        Ok(())
    } else {
        Err(Scanned::Invalid)
    }
}

/// Whether `text` is one JSON number and nothing else (`-`, digits without a leading zero, a
/// fraction, an exponent).
pub fn is_number(text: &[u8]) -> bool {
    let mut at = 0;
    skip_number(text, &mut at).is_ok() && at == text.len()
}

fn skip_number(bytes: &[u8], at: &mut usize) -> Result<(), Scanned> {
    let digits = |at: &mut usize| {
        let start = *at;
        while bytes.get(*at).is_some_and(u8::is_ascii_digit) {
            *at += 1;
        }
        *at > start
    };
    if bytes.get(*at) == Some(&b'-') {
        *at += 1;
    }
    match bytes.get(*at) {
        Some(b'0') => *at += 1,
        Some(b'1'..=b'9') => {
            digits(at);
        }
        _ => return Err(Scanned::Invalid),
    }
    if bytes.get(*at) == Some(&b'.') {
        *at += 1;
        if !digits(at) {
            return Err(Scanned::Invalid);
        }
    }
    if matches!(bytes.get(*at), Some(b'e' | b'E')) {
        *at += 1;
        if matches!(bytes.get(*at), Some(b'+' | b'-')) {
            *at += 1;
        }
        if !digits(at) {
            return Err(Scanned::Invalid);
        }
    }
    Ok(())
}

/// Skips a string starting at its quote; whether it holds an escape.
#[inline(always)]
pub fn skip_string(bytes: &[u8], at: &mut usize) -> Result<bool, Scanned> {
    let mut escaped = false;
    let mut i = *at + 1;
    loop {
        // The next quote, backslash or control character, sixteen bytes at a time; which of them
        // it is comes from the masks, without reading the byte again.
        let (next, quote) = next_special(bytes, i);
        if next >= bytes.len() {
            return Err(Scanned::Invalid);
        }
        if quote {
            *at = next + 1;
            return Ok(escaped);
        }
        i = next;
        match bytes[i] {
            b'\\' => {
                escaped = true;
                match bytes.get(i + 1) {
                    Some(b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => i += 2,
                    Some(b'u') => i += unicode_escape(bytes, i)?,
                    _ => return Err(Scanned::Invalid),
                }
            }
            _ => return Err(Scanned::Invalid),
        }
    }
}

/// The length of the `\u` escape at `at` (6, or 12 for a surrogate pair), or `Invalid` when it
/// does not make a character: four hex digits, a high surrogate only followed by a low one, no low
/// surrogate alone (jaq and serde_json refuse the string otherwise; the JSON grammar alone would
/// let it be).
#[inline(never)]
fn unicode_escape(bytes: &[u8], at: usize) -> Result<usize, Scanned> {
    let unit = |from: usize| {
        let digits = bytes.get(from..from + 4)?;
        digits.iter().try_fold(0u16, |unit, &b| Some(unit << 4 | char::from(b).to_digit(16)? as u16))
    };
    match unit(at + 2).ok_or(Scanned::Invalid)? {
        0xD800..=0xDBFF if bytes.get(at + 6..at + 8) == Some(&b"\\u"[..]) => match unit(at + 8) {
            Some(0xDC00..=0xDFFF) => Ok(12),
            _ => Err(Scanned::Invalid),
        },
        0xD800..=0xDFFF => Err(Scanned::Invalid),
        _ => Ok(6),
    }
}

/// The index of the first byte at or after `i` that is a quote, a backslash or a control character
/// (`bytes.len()` if none), sixteen bytes per step, and whether it is a quote.
#[inline]
fn next_special(bytes: &[u8], mut i: usize) -> (usize, bool) {
    while i < bytes.len() {
        let block = words::block_at(bytes, i);
        let quotes = words::equal(block, b'"');
        let special = quotes | words::equal(block, b'\\') | words::below(block, 0x20);
        if special != 0 {
            let first = special.trailing_zeros();
            // Past the end the block reads zero, which is below 0x20: clamp to the end.
            return ((i + first as usize).min(bytes.len()), quotes & (1 << first) != 0);
        }
        i += words::BLOCK;
    }
    (bytes.len(), false)
}

/// Validates `bytes` as one JSON value and, when it is an object, lists its members into `out`
/// (one pass; `out` is left empty for any other value).
pub fn object_members(bytes: &[u8], out: &mut Vec<Member>) -> Scanned {
    out.clear();
    let mut at = skip_ws(bytes, 0);
    if bytes.get(at) != Some(&b'{') {
        return validate(bytes);
    }
    at = skip_ws(bytes, at + 1);
    if bytes.get(at) == Some(&b'}') {
        return if skip_ws(bytes, at + 1) == bytes.len() { Scanned::Valid } else { Scanned::Invalid };
    }
    loop {
        if bytes.get(at) != Some(&b'"') {
            return Scanned::Invalid;
        }
        let key_start = at;
        let key_escaped = match skip_string(bytes, &mut at) {
            Ok(e) => e,
            Err(e) => return e,
        };
        let key = key_start..at;
        at = skip_ws(bytes, at);
        if bytes.get(at) != Some(&b':') {
            return Scanned::Invalid;
        }
        at = skip_ws(bytes, at + 1);
        let value_start = at;
        if let Err(e) = skip_value(bytes, &mut at, 1, &mut ignore) {
            return e;
        }
        out.push(Member { key, key_escaped, value: value_start..at });
        at = skip_ws(bytes, at);
        match bytes.get(at) {
            Some(b',') => at = skip_ws(bytes, at + 1),
            Some(b'}') => {
                return if skip_ws(bytes, at + 1) == bytes.len() { Scanned::Valid } else { Scanned::Invalid };
            }
            _ => return Scanned::Invalid,
        }
    }
}

/// One member of an object: the raw key (with its quotes), whether the key has an escape, and the
/// raw value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// The key as written, quotes included.
    pub key: Range<usize>,
    /// Whether the key holds an escape (then its raw bytes are not its text).
    pub key_escaped: bool,
    /// The value as written.
    pub value: Range<usize>,
}

/// The members of the object `bytes[range]` (which must be valid JSON, e.g. after [`validate`]), in
/// order; `None` if it is not an object.
pub fn members(bytes: &[u8], range: Range<usize>, out: &mut Vec<Member>) -> Option<()> {
    out.clear();
    let end = range.end;
    let mut at = skip_ws(bytes, range.start);
    if bytes.get(at) != Some(&b'{') {
        return None;
    }
    at = skip_ws(bytes, at + 1);
    if bytes.get(at) == Some(&b'}') {
        return Some(());
    }
    while at < end {
        let key_start = at;
        let key_escaped = skip_string(bytes, &mut at).ok()?;
        let key = key_start..at;
        at = skip_ws(bytes, at);
        at = skip_ws(bytes, at + 1); // the colon
        let value_start = at;
        skip_value(bytes, &mut at, 0, &mut ignore).ok()?;
        out.push(Member { key, key_escaped, value: value_start..at });
        at = skip_ws(bytes, at);
        match bytes.get(at) {
            Some(b',') => at = skip_ws(bytes, at + 1),
            _ => return Some(()),
        }
    }
    Some(())
}

/// Whether `record` is one UTF-8 JSON object; else why not ([`why_not_one_object`]).
pub fn check_object(record: &[u8]) -> Result<(), String> {
    check_utf8(record)?;
    if record.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') || validate(record) != Scanned::Valid {
        return Err(why_not_one_object(record));
    }
    Ok(())
}

/// Why `record`, found wanting, is not one JSON object: serde_json's words where it refuses it
/// (what is wrong, at which line and column: a missing comma, a lone surrogate in a `\u`
/// escape), else what kind of JSON it is. Asked only of a refused record: a valid one pays nothing.
pub fn why_not_one_object(record: &[u8]) -> String {
    const NOT_ONE: &str = "the record is not one JSON object";
    match serde_json::from_slice::<serde_json::Value>(record) {
        Err(e) => format!("{NOT_ONE}: {e}"),
        Ok(serde_json::Value::Object(_)) => NOT_ONE.to_string(),
        Ok(serde_json::Value::Array(_)) => format!("{NOT_ONE}: it is an array"),
        Ok(serde_json::Value::String(_)) => format!("{NOT_ONE}: it is a string"),
        Ok(_) => format!("{NOT_ONE}: it is a number, a boolean or null"),
    }
}

/// Whether `record` is UTF-8; else why not (where its first byte that is not).
pub fn check_utf8(record: &[u8]) -> Result<(), String> {
    std::str::from_utf8(record)
        .map(|_| ())
        .map_err(|e| format!("the record is not UTF-8 (byte {} is not)", e.valid_up_to()))
}

/// Appends `record`, which must be one UTF-8 JSON object, to `out` on one line (the line breaks
/// valid JSON can hold only between tokens become spaces) followed by a newline; else says why
/// not and leaves `out` as it was. What a destination taking one JSON document per line needs.
pub fn push_object_line(record: &[u8], out: &mut Vec<u8>) -> Result<(), String> {
    check_object(record)?;
    let start = out.len();
    out.extend_from_slice(record.trim_ascii());
    for b in &mut out[start..] {
        if matches!(*b, b'\n' | b'\r') {
            *b = b' ';
        }
    }
    out.push(b'\n');
    Ok(())
}

/// Object-key paths to find in one validating pass ([`find_paths`]), as a tree: node 0 is the
/// record, each other node one key under its parent.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PathTree {
    nodes: Vec<PathNode>,
    paths: usize,
    /// Paths that repeat an earlier one (the repeat, the first): given what the first was found as.
    repeats: Vec<(usize, usize)>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct PathNode {
    /// The key, as written between its quotes (keys with escapes are never matched).
    key: Vec<u8>,
    /// The key's first eight bytes ([`prefix`]): compared before the key itself.
    prefix: u64,
    children: Vec<usize>,
    /// One bit per child, at [`filter_bit`] of its prefix and length: a key whose bit is clear
    /// is no child, found without comparing it with each.
    filter: u64,
    /// The path that ends here, if any.
    path: Option<usize>,
}

impl PathTree {
    /// The tree of `paths` (each a list of keys); path `i` is reported in `found[i]`.
    pub fn new(paths: &[Vec<Vec<u8>>]) -> Self {
        let mut tree = PathTree { nodes: vec![PathNode::default()], paths: paths.len(), repeats: Vec::new() };
        for (index, path) in paths.iter().enumerate() {
            let mut node = 0;
            for key in path {
                node = match tree.nodes[node].children.iter().copied().find(|&c| tree.nodes[c].key == *key) {
                    Some(child) => child,
                    None => {
                        tree.nodes.push(PathNode { key: key.clone(), prefix: prefix(key), ..PathNode::default() });
                        let child = tree.nodes.len() - 1;
                        tree.nodes[node].children.push(child);
                        tree.nodes[node].filter |= filter_bit(prefix(key), key.len());
                        child
                    }
                };
            }
            match tree.nodes[node].path {
                Some(first) => tree.repeats.push((index, first)),
                None => tree.nodes[node].path = Some(index),
            }
        }
        tree
    }

    /// The child of `node` for `key` (the node's filter first, then length and first eight bytes
    /// compared as two integers: most keys differ there, and many share their first letter, as
    /// CloudTrail's `event…` keys do).
    #[inline]
    fn child(&self, node: usize, key: &[u8]) -> Option<usize> {
        let PathNode { children, filter, .. } = &self.nodes[node];
        let start = prefix(key);
        // Most keys of a record are no child of a searched level (CloudTrail: 17 keys, 5 of them
        // asked for): one bit test turns nearly all of them away.
        if filter & filter_bit(start, key.len()) == 0 {
            return None;
        }
        children.iter().copied().find(|&c| {
            let want = &self.nodes[c];
            want.prefix == start && want.key.len() == key.len() && (key.len() <= 8 || want.key.as_slice() == key)
        })
    }

    /// Marks every path at or below `node` as `state`.
    fn mark(&self, node: usize, state: &Found, found: &mut [Found]) {
        if let Some(path) = self.nodes[node].path {
            found[path] = state.clone();
        }
        for &child in &self.nodes[node].children {
            self.mark(child, state, found);
        }
    }
}

/// The bit of a [`PathNode`]'s filter for a key with this prefix and length (a multiplicative
/// hash's top six bits).
#[inline]
fn filter_bit(prefix: u64, len: usize) -> u64 {
    1 << ((prefix ^ len as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 58)
}

/// The first eight bytes of `key` as an integer (zero past its end).
#[inline]
fn prefix(key: &[u8]) -> u64 {
    // One load for keys of eight bytes or more (a copy of a variable length went through
    // `memcpy` for every key of every record: 8 % of `find_paths` on CloudTrail).
    if let Some(first) = key.first_chunk::<8>() {
        return u64::from_le_bytes(*first);
    }
    let mut bytes = [0u8; 8];
    bytes[..key.len()].copy_from_slice(key);
    u64::from_le_bytes(bytes)
}

/// What [`find_paths`] found for one path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Found {
    /// A key on the way is missing, or a value on the way is `null`.
    Missing,
    /// The value's range (the last of duplicate keys, as jq reads them).
    At(Range<usize>),
    /// A value on the way is neither an object nor `null` (jq would fail to index it).
    Blocked,
}

/// Validates `bytes` as one JSON object and finds the value of each path of `tree` in the same
/// pass into `found`. `None` when the record is not an object, or a key on a searched level holds
/// an escape (the caller then takes the slow way); else what the validation found.
pub fn find_paths(bytes: &[u8], tree: &PathTree, found: &mut Vec<Found>) -> Option<Scanned> {
    found.clear();
    found.resize(tree.paths, Found::Missing);
    let mut at = skip_ws(bytes, 0);
    if bytes.get(at) != Some(&b'{') {
        return None;
    }
    let mut escaped_key = false;
    let scanned = match find_in_object(bytes, &mut at, 0, tree, 0, found, &mut escaped_key) {
        Err(e) => e,
        Ok(()) if skip_ws(bytes, at) == bytes.len() => Scanned::Valid,
        Ok(()) => Scanned::Invalid,
    };
    for &(repeat, first) in &tree.repeats {
        found[repeat] = found[first].clone();
    }
    (!escaped_key).then_some(scanned)
}

/// The text of the JSON string `raw` (quotes included): borrowed when it has no escape, decoded
/// when it has; `None` when `raw` is no string, or not UTF-8, or its escapes make no text.
pub fn string_text(raw: &[u8]) -> Option<std::borrow::Cow<'_, str>> {
    match raw {
        [b'"', inner @ .., b'"'] if !inner.contains(&b'\\') => std::str::from_utf8(inner).ok().map(Into::into),
        [b'"', ..] => serde_json::from_slice::<String>(raw).ok().map(Into::into),
        _ => None,
    }
}

/// What [`find_paths`] answers, for any object, keys with escapes included (each compared as its
/// decoded text): the slow way of its callers when it answers `None`, with the same answers (the
/// raw range of each value, the last of duplicate keys). `None` when `bytes` is not one valid JSON
/// object.
pub fn find_paths_decoding_keys(bytes: &[u8], paths: &[Vec<Vec<u8>>], found: &mut Vec<Found>) -> Option<()> {
    found.clear();
    if bytes.get(skip_ws(bytes, 0)) != Some(&b'{') || validate(bytes) != Scanned::Valid {
        return None;
    }
    let mut members_of = Vec::new();
    for path in paths {
        let mut value = 0..bytes.len();
        let mut state = None;
        for key in path {
            if members(bytes, value.clone(), &mut members_of).is_none() {
                // Indexing null gives null; anything else but an object cannot be indexed.
                let at = skip_ws(bytes, value.start);
                state = Some(if bytes.get(at) == Some(&b'n') { Found::Missing } else { Found::Blocked });
                break;
            }
            let named = |member: &&Member| string_text(&bytes[member.key.clone()]).is_some_and(|t| t.as_bytes() == key);
            match members_of.iter().rev().find(named) {
                Some(member) => value = member.value.clone(),
                None => {
                    state = Some(Found::Missing);
                    break;
                }
            }
        }
        found.push(state.unwrap_or(Found::At(value)));
    }
    Some(())
}

/// Whether [`find_paths_decoding_keys`] answers `record` as [`find_paths`] does where that answers,
/// and as a parsed tree (serde_json's) reads each path everywhere: the oracle of the unit tests
/// and of the `json_paths` fuzz target (`fuzz/`, built with `--cfg fuzzing`).
#[cfg(any(test, fuzzing))]
pub fn decoding_way_agrees(paths: &[Vec<Vec<u8>>], record: &[u8]) -> Result<(), String> {
    let show = || String::from_utf8_lossy(record).into_owned();
    let (mut fast, mut slow) = (Vec::new(), Vec::new());
    let decoded = find_paths_decoding_keys(record, paths, &mut slow);
    match find_paths(record, &PathTree::new(paths), &mut fast) {
        Some(Scanned::Valid) if decoded.is_none() || fast != slow => {
            return Err(format!("{:?}: one pass found {fast:?}, the decoding way {slow:?}", show()));
        }
        Some(Scanned::Invalid | Scanned::TooDeep) if decoded.is_some() => {
            return Err(format!("{:?}: one pass refused it, the decoding way found {slow:?}", show()));
        }
        _ => {}
    }
    let Ok(tree) = serde_json::from_slice::<serde_json::Value>(record) else { return Ok(()) };
    if decoded.is_some() != tree.is_object() {
        return Err(format!(
            "{:?}: an object to serde_json: {}, to the decoding way: {}",
            show(),
            tree.is_object(),
            decoded.is_some()
        ));
    }
    for (path, found) in paths.iter().zip(&slow) {
        let mut value = Some(&tree);
        let mut blocked = false;
        for key in path {
            value = match value {
                Some(serde_json::Value::Object(map)) => map.get(String::from_utf8_lossy(key).as_ref()),
                Some(serde_json::Value::Null) | None => None,
                Some(_) => {
                    blocked = true;
                    None
                }
            };
        }
        let agrees = match (found, value) {
            (Found::Blocked, None) => blocked,
            (Found::Missing, None) => !blocked,
            (Found::At(range), Some(v)) => {
                serde_json::from_slice::<serde_json::Value>(&record[range.clone()]).ok().as_ref() == Some(v)
            }
            _ => false,
        };
        if !agrees {
            return Err(format!("{:?}: path {path:?}: the decoding way found {found:?}, serde_json {value:?}", show()));
        }
    }
    Ok(())
}

/// The walk of [`skip_value`] through an object whose keys are searched under `node`.
fn find_in_object(
    bytes: &[u8],
    at: &mut usize,
    depth: usize,
    tree: &PathTree,
    node: usize,
    found: &mut [Found],
    escaped_key: &mut bool,
) -> Result<(), Scanned> {
    if depth >= MAX_DEPTH {
        return Err(Scanned::TooDeep);
    }
    *at = skip_ws(bytes, *at + 1);
    if bytes.get(*at) == Some(&b'}') {
        *at += 1;
        return Ok(());
    }
    loop {
        if bytes.get(*at) != Some(&b'"') {
            return Err(Scanned::Invalid);
        }
        let key_start = *at;
        let escaped = skip_string(bytes, at)?;
        let key = &bytes[key_start + 1..*at - 1];
        *escaped_key |= escaped;
        *at = skip_ws(bytes, *at);
        if bytes.get(*at) != Some(&b':') {
            return Err(Scanned::Invalid);
        }
        *at = skip_ws(bytes, *at + 1);
        let child = if escaped { None } else { tree.child(node, key) };
        let value_start = *at;
        match child {
            Some(child) if bytes.get(*at) == Some(&b'{') && !tree.nodes[child].children.is_empty() => {
                // A later duplicate key replaces what an earlier one gave.
                tree.mark(child, &Found::Missing, found);
                find_in_object(bytes, at, depth + 1, tree, child, found, escaped_key)?;
            }
            Some(child) => {
                skip_value(bytes, at, depth + 1, &mut ignore)?;
                let inner = if bytes[value_start] == b'n' { Found::Missing } else { Found::Blocked };
                for &grandchild in &tree.nodes[child].children {
                    tree.mark(grandchild, &inner, found);
                }
                if let Some(path) = tree.nodes[child].path {
                    found[path] = Found::At(value_start..*at);
                }
            }
            // Most values are strings: skipped here, without the general walk's set-up.
            None if bytes.get(*at) == Some(&b'"') => {
                skip_string(bytes, at)?;
            }
            None => skip_value(bytes, at, depth + 1, &mut ignore)?,
        }
        if let (Some(child), Some(b'{')) = (child, bytes.get(value_start))
            && let Some(path) = tree.nodes[child].path
        {
            found[path] = Found::At(value_start..*at);
        }
        *at = skip_ws(bytes, *at);
        match bytes.get(*at) {
            Some(b',') => *at = skip_ws(bytes, *at + 1),
            Some(b'}') => {
                *at += 1;
                return Ok(());
            }
            _ => return Err(Scanned::Invalid),
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// A refused record is told why: what is wrong and where (a lone surrogate named as one), or
    /// what kind of JSON it is, or where its bytes stop being UTF-8.
    #[test]
    fn a_record_that_is_not_one_object_is_told_why() {
        let why = |record: &[u8]| check_object(record).unwrap_err();
        let surrogate = why(br#"{"a":"\udcCC"}"#);
        assert!(surrogate.starts_with("the record is not one JSON object: "), "{surrogate}");
        assert!(surrogate.contains("surrogate") && surrogate.contains("column 12"), "{surrogate}");
        let comma = why(b"{\"a\":1\n \"b\":2}");
        assert!(comma.contains("expected `,` or `}` at line 2 column 2"), "{comma}");
        assert!(why(b"[1, 2]").ends_with("it is an array"));
        assert!(why(br#""text""#).ends_with("it is a string"));
        assert!(why(b"42").ends_with("a number, a boolean or null"));
        assert_eq!(why(b"{\"a\":\"\xff\"}"), "the record is not UTF-8 (byte 6 is not)");
        assert_eq!(check_object(br#" {"a":"\ud83e\udd80"} "#), Ok(()));
        let mut line = Vec::new();
        assert!(push_object_line(br#"{"a":"\udcCC"}"#, &mut line).is_err_and(|why| why.contains("surrogate")));
        assert!(line.is_empty());
    }

    #[test]
    fn validates_like_serde_json() {
        for text in [
            "{}",
            " [1, -0.5e+3, \"a\\u00e9\\n\", true, false, null, {\"k\": []}] ",
            "\"x\"",
            "0",
            "{\"a\":1,\"b\":[{\"c\":\"\\\"\"}]}",
            r#""\ud83d\ude00 \uD83D\uDE00 \u00e9 \uffff""#,
        ] {
            assert_eq!(validate(text.as_bytes()), Scanned::Valid, "{text}");
        }
        for text in
            ["", "{", "{\"a\"}", "[1,]", "01", "1.", "-", "\"\\x\"", "\"a\nb\"", "{} {}", "tru", "{'a':1}", "[1 2]"]
        {
            assert_eq!(validate(text.as_bytes()), Scanned::Invalid, "{text}");
        }
        // Escapes that make no character: jaq and serde_json refuse these strings (found by the
        // jq_fast_paths fuzz target: a plain path read `null` where jaq refused the record).
        for text in
            [r#""\udcCC""#, r#""\ud800""#, r#""\ud800x""#, r#""\ud800\u0041""#, r#""\ud800\ud800""#, r#""\u12""#]
        {
            assert_eq!(validate(text.as_bytes()), Scanned::Invalid, "{text}");
            assert!(serde_json::from_str::<String>(text).is_err(), "{text}");
        }
        assert_eq!(validate("[".repeat(200).as_bytes()), Scanned::TooDeep);
        // Exactly MAX_DEPTH containers deep is judged; one more is not (objects and arrays mixed).
        let nested = |n: usize| {
            let open: String = (0..n).map(|k| if k % 2 == 0 { "[" } else { "{\"k\":" }).collect();
            let close: String = (0..n).rev().map(|k| if k % 2 == 0 { "]" } else { "}" }).collect();
            format!("{open}1{close}")
        };
        assert_eq!(validate(nested(MAX_DEPTH).as_bytes()), Scanned::Valid);
        assert_eq!(validate(nested(MAX_DEPTH + 1).as_bytes()), Scanned::TooDeep);
        assert_eq!(validate(nested(MAX_DEPTH).replacen("1}", "1,}", 1).as_bytes()), Scanned::Invalid);
    }

    #[test]
    fn lists_members_with_their_raw_ranges() {
        let text = br#"{ "a" : 1, "b\n": {"c": [1, 2]}, "d":"x" }"#;
        let mut out = Vec::new();
        assert!(members(text, 0..text.len(), &mut out).is_some());
        let raw = |r: &Range<usize>| String::from_utf8_lossy(&text[r.clone()]).into_owned();
        let got: Vec<(String, bool, String)> =
            out.iter().map(|m| (raw(&m.key), m.key_escaped, raw(&m.value))).collect();
        assert_eq!(
            got,
            vec![
                ("\"a\"".into(), false, "1".into()),
                ("\"b\\n\"".into(), true, "{\"c\": [1, 2]}".into()),
                ("\"d\"".into(), false, "\"x\"".into())
            ]
        );
        assert!(members(b"[1]", 0..3, &mut out).is_none());
    }

    #[test]
    fn finds_special_bytes_in_any_position_and_tells_quotes_apart() {
        for len in 0..40 {
            for at in 0..=len {
                let mut text = vec![b'a'; len];
                if at < len {
                    text[at] = b'"';
                }
                assert_eq!(next_special(&text, 0), (at, at < len), "{len} {at}");
                if at < len {
                    text[at] = 0x1f;
                    assert_eq!(next_special(&text, 0), (at, false));
                    text[at] = b'\\';
                    assert_eq!(next_special(&text, 0), (at, false));
                    // A quote after the first special byte is not the one reported.
                    if at + 1 < len {
                        text[at + 1] = b'"';
                        assert_eq!(next_special(&text, 0), (at, false));
                        text[at + 1] = b'a';
                    }
                    text[at] = 0x7f;
                    assert_eq!(next_special(&text, 0), (len, false), "DEL is not special");
                }
            }
        }
    }

    /// What jq's `.a.b` reads in `value`, as [`find_paths`] reports it.
    fn expected(value: &serde_json::Value, path: &[&str]) -> Result<Option<serde_json::Value>, ()> {
        let mut current = value;
        for key in path {
            match current {
                serde_json::Value::Object(map) => match map.get(*key) {
                    Some(v) => current = v,
                    None => return Ok(None),
                },
                serde_json::Value::Null => return Ok(None),
                _ => return Err(()),
            }
        }
        Ok(if current.is_null() { None } else { Some(current.clone()) })
    }

    fn check_paths(text: &[u8], paths: &[&[&str]]) {
        let owned: Vec<Vec<Vec<u8>>> =
            paths.iter().map(|p| p.iter().map(|k| k.as_bytes().to_vec()).collect()).collect();
        let tree = PathTree::new(&owned);
        let mut found = Vec::new();
        let scanned = find_paths(text, &tree, &mut found);
        let value: Option<serde_json::Value> = serde_json::from_slice(text).ok();
        match value {
            Some(value) if value.is_object() => {
                assert_eq!(scanned, Some(Scanned::Valid), "{}", String::from_utf8_lossy(text));
                for (path, got) in paths.iter().zip(&found) {
                    let got = match got {
                        Found::At(r) => Ok(serde_json::from_slice::<serde_json::Value>(&text[r.clone()])
                            .ok()
                            .filter(|v| !v.is_null())),
                        Found::Missing => Ok(None),
                        Found::Blocked => Err(()),
                    };
                    assert_eq!(got, expected(&value, path), "{path:?} in {}", String::from_utf8_lossy(text));
                }
            }
            Some(_) => assert_eq!(scanned, None),
            None => assert!(scanned.is_none_or(|s| s != Scanned::Valid), "{}", String::from_utf8_lossy(text)),
        }
        // The decoding way answers as the one pass does, and as the tree reads it, with keys
        // escaped too (every string starting with `a` written with `\u0061`).
        let escaped = String::from_utf8_lossy(text).replace("\"a", "\"\\u0061");
        for text in [text, escaped.as_bytes()] {
            decoding_way_agrees(&owned, text).unwrap_or_else(|e| panic!("{e}"));
        }
    }

    #[test]
    fn paths_are_found_in_one_pass_as_jq_reads_them() {
        // Paths asked for twice (two columns of one field) are each found.
        let paths: &[&[&str]] = &[&["a"], &["a", "b"], &["c", "d", "e"], &["x"], &["a", "b"], &["a"], &["x"]];
        for text in [
            r#"{"a":{"b":1},"c":{"d":{"e":"deep"}}}"#,
            r#"{"a":null,"c":{"d":null}}"#,
            r#"{"a":"text","c":[1]}"#,
            r#"{"a":{"b":1},"a":{"z":2}}"#,
            r#"{"a":{"b":1},"a":null}"#,
            r#"{"a":"x","a":{"b":[1,{"c":2}]}}"#,
            r#" { "x" : true , "a" : { } } "#,
            r#"{}"#,
            r#"{"a":1} trailing"#,
            r#"[{"a":1}]"#,
        ] {
            check_paths(text.as_bytes(), paths);
        }
        // An escaped key on a searched level: the slow way.
        let tree = PathTree::new(&[vec![b"a".to_vec()]]);
        assert_eq!(find_paths(br#"{"\u0061":1}"#, &tree, &mut Vec::new()), None);
        assert_eq!(find_paths(br#"{"a":1,"z":{"\u0061":1}}"#, &tree, &mut Vec::new()), Some(Scanned::Valid));
    }

    /// Keys: single letters, and longer ones sharing their first eight bytes (or all but the last
    /// byte) with each other, as CloudTrail's `event…` keys do.
    fn key() -> impl Strategy<Value = String> {
        prop_oneof![
            "[a-d]",
            proptest::sample::select(vec![
                "eventName",
                "eventNamX",
                "eventNames",
                "eventNam",
                "eventTime",
                "aaaaaaaa",
                "aaaaaaaab",
                "aaaaaaaac",
            ])
            .prop_map(String::from),
        ]
    }

    /// The paths the proptests look for, long keys among them.
    const PATHS: &[&[&str]] = &[
        &["a"],
        &["a", "b"],
        &["b", "c", "d"],
        &["d"],
        &["c", "a"],
        &["eventName"],
        &["eventNam"],
        &["aaaaaaaab"],
        &["eventTime", "a"],
    ];

    fn json_value() -> impl Strategy<Value = serde_json::Value> {
        let leaf = prop_oneof![
            Just(serde_json::Value::Null),
            any::<bool>().prop_map(serde_json::Value::from),
            (-5i64..5).prop_map(serde_json::Value::from),
            "[a-c\\\"é]{0,3}".prop_map(serde_json::Value::from),
        ];
        leaf.prop_recursive(4, 24, 4, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..3).prop_map(serde_json::Value::from),
                proptest::collection::btree_map(key(), inner, 0..4)
                    .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #[test]
        fn find_paths_agrees_with_a_parsed_tree(
            members in proptest::collection::btree_map(key(), json_value(), 0..5),
            pretty in any::<bool>(),
        ) {
            let value = serde_json::Value::Object(members.into_iter().collect());
            let text = if pretty { serde_json::to_vec_pretty(&value) } else { serde_json::to_vec(&value) };
            let text = text.unwrap_or_default();
            check_paths(&text, PATHS);
        }

        #[test]
        fn object_members_agree_with_validate_and_members(
            bytes in proptest::collection::vec(proptest::sample::select(b"{}[]\":,01.-tn \\ua".to_vec()), 0..40)
        ) {
            let mut one = Vec::new();
            let scanned = object_members(&bytes, &mut one);
            prop_assert_eq!(scanned, validate(&bytes));
            if scanned == Scanned::Valid {
                let mut two = Vec::new();
                let object = members(&bytes, 0..bytes.len(), &mut two).is_some();
                prop_assert_eq!(if object { two } else { Vec::new() }, one);
            }
        }

        #[test]
        fn agrees_with_serde_json_on_any_bytes(bytes in proptest::collection::vec(proptest::sample::select(b"{}[]\":,0123456789.-+eEtrufalsn \\/u\nab".to_vec()), 0..40)) {
            let serde = serde_json::from_slice::<serde::de::IgnoredAny>(&bytes).is_ok();
            prop_assert_eq!(validate(&bytes) == Scanned::Valid, serde, "{:?}", String::from_utf8_lossy(&bytes));
        }
    }
}

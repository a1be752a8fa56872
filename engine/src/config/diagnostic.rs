//! Config diagnostics: one error with where it is (file:line:col), what was expected and a hint.
//!
//! Every config problem becomes a [`Diagnostic`]; resolution collects all of them instead of stopping
//! at the first, and [`Diagnostics`] renders them the way compilers do, with the offending source
//! line. What it renders goes through [`crate::redact`]: a secret written in the file (or echoed in
//! a message, such as a URL's password) is never printed.

use std::fmt;
use std::ops::Range;

/// One problem in a pipeline file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    /// Byte range in the source the problem points at (empty when it concerns the whole file).
    pub span: Range<usize>,
    /// What is wrong, e.g. "unknown key `pathz` in source `logs`".
    pub message: String,
    /// How to fix it, e.g. "did you mean `paths`?".
    pub hint: Option<String>,
    /// The problem is at this byte of the decoded string written at `span` (a query's or a
    /// pattern's own error offset); [`Diagnostics::new`] points it at the source character.
    pub in_string: Option<usize>,
    /// It is about the connector's table as a whole (a key the table lacks that its type needs),
    /// so it is never taken for a follow-on of a stand-in (see [`Problems`]).
    pub of_the_table: bool,
}

impl Diagnostic {
    /// A problem at `span`.
    pub fn new(span: Range<usize>, message: impl Into<String>) -> Self {
        Diagnostic { span, message: message.into(), hint: None, in_string: None, of_the_table: false }
    }

    /// A problem at byte `offset` of the string value written at `value_span` (any of TOML's four
    /// string kinds: quotes, escapes and line-ending backslashes are accounted for).
    pub fn in_string(value_span: Range<usize>, offset: usize, message: impl Into<String>) -> Self {
        Diagnostic {
            span: value_span,
            message: message.into(),
            hint: None,
            in_string: Some(offset),
            of_the_table: false,
        }
    }

    /// Adds a hint.
    pub fn with_hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }

    /// Adds a hint when there is one.
    pub fn with_hint_if(mut self, hint: Option<String>) -> Self {
        if hint.is_some() {
            self.hint = hint;
        }
        self
    }

    /// Says it is about the whole table (a key the table lacks), not about a key's value.
    pub fn of_the_table(mut self) -> Self {
        self.of_the_table = true;
        self
    }
}

/// Every problem a connector found in its own keys: a `configure` reports them all at once, as the
/// engine does for its keys, instead of the first. A check may fail with none when its problem was
/// reported already (a key deserializing left out); a `configure` that fails with none at all is a
/// bug the resolver reports as such.
///
/// A required key that is absent is reported by [`crate::config::Section::deserialize`], which
/// then stands in for it so that the connector's checks of its other keys still run, and a key
/// written wrong is reported there and left out: a check of either is a follow-on of what was
/// said and is not kept when it points where their problems do (the table, for a stand-in; where
/// the key was written), unless it says it is about the table itself
/// ([`Diagnostic::of_the_table`]: a sink lacking its `backup_store`); a check that needs such a
/// key's value (comparing another key with it, or asking for one of two keys) asks
/// [`Problems::said`] first.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Problems {
    found: Vec<Diagnostic>,
    /// The keys whose problem is said already (absent though required, or written wrong).
    said: Vec<String>,
    /// Where a check of those keys is a follow-on (see [`Problems`]).
    follow_ons_at: Vec<Range<usize>>,
}

impl From<Diagnostic> for Problems {
    fn from(diagnostic: Diagnostic) -> Self {
        Problems { found: vec![diagnostic], ..Problems::default() }
    }
}

impl Problems {
    /// Adds a problem (unless it is a follow-on of one said already: see [`Problems`]).
    pub fn push(&mut self, diagnostic: Diagnostic) {
        if !diagnostic.of_the_table && self.follow_ons_at.contains(&diagnostic.span) {
            return;
        }
        self.found.push(diagnostic);
    }

    /// The value of a check, or `None` with its problems kept: checks go on past a failed one.
    pub fn take<T>(&mut self, checked: Result<T, impl Into<Problems>>) -> Option<T> {
        match checked {
            Ok(value) => Some(value),
            Err(problems) => {
                for diagnostic in problems.into().found {
                    self.push(diagnostic);
                }
                None
            }
        }
    }

    /// `value` when no problem was found, else every problem found (`Err` too when `value` is
    /// `None`: a check that failed added its problem, or said it was reported already).
    pub fn finish<T>(self, value: Option<T>) -> Result<T, Problems> {
        match value {
            Some(value) if self.found.is_empty() => Ok(value),
            _ => Err(self),
        }
    }

    /// Whether a problem of `key` is said already (a required key absent, its value a stand-in;
    /// a key written wrong and left out, its value as if unwritten): a check that needs its value
    /// has none to check.
    pub fn said(&self, key: &str) -> bool {
        self.said.iter().any(|k| k == key)
    }

    /// Says that the problems of `keys` are said already, and that checks pointing `at` these
    /// spans are their follow-ons.
    pub(crate) fn said_already(&mut self, keys: Vec<String>, at: Vec<Range<usize>>) {
        self.said.extend(keys);
        self.follow_ons_at.extend(at);
    }

    /// Whether no problem was found.
    pub fn is_empty(&self) -> bool {
        self.found.is_empty()
    }

    /// The problems found.
    pub fn into_diagnostics(self) -> Vec<Diagnostic> {
        self.found
    }
}

/// Every problem found in one file, with the text needed to print positions.
#[derive(Debug, Clone)]
pub struct Diagnostics {
    /// The file as named on the command line.
    pub file: String,
    /// Its text (for line/column and the quoted line).
    pub source: String,
    /// The problems, in source order.
    pub items: Vec<Diagnostic>,
}

/// The source span of the character at byte `offset` of the decoded string written at `span` in
/// `source` (a TOML basic, literal, multi-line basic or multi-line literal string); `span` itself
/// when the offset is not inside it (a string changed by `${VAR}` expansion may not map exactly).
pub fn span_in_string(source: &str, span: Range<usize>, offset: usize) -> Range<usize> {
    let Some(raw) = source.get(span.clone()) else { return span };
    let (delimiter, basic) = match raw.as_bytes() {
        [b'\'', b'\'', b'\'', ..] => (3, false),
        [b'"', b'"', b'"', ..] => (3, true),
        [b'\'', ..] => (1, false),
        [b'"', ..] => (1, true),
        _ => return span,
    };
    let bytes = raw.as_bytes();
    let end = bytes.len().saturating_sub(delimiter);
    let mut at = delimiter;
    // A newline right after a multi-line string's opening delimiter is not part of the string.
    if delimiter == 3 {
        if bytes.get(at) == Some(&b'\n') {
            at += 1;
        } else if bytes.get(at..at + 2) == Some(b"\r\n") {
            at += 2;
        }
    }
    let mut decoded = 0;
    while at < end {
        // Bytes this source character stands for in the decoded string, and its length here.
        let (stands_for, written) = match bytes[at] {
            b'\\' if basic => match bytes.get(at + 1) {
                Some(b'u') => (unicode_escape_len(raw.get(at + 2..at + 6)), 6),
                Some(b'U') => (unicode_escape_len(raw.get(at + 2..at + 10)), 10),
                // A line-ending backslash: it and the whitespace after it stand for nothing.
                Some(b' ' | b'\t' | b'\r' | b'\n') => {
                    let skipped = bytes[at + 1..end].iter().take_while(|b| b.is_ascii_whitespace()).count();
                    (0, 1 + skipped)
                }
                _ => (1, 2),
            },
            b => {
                let n = if b < 0x80 { 1 } else { utf8_len(b) };
                (n, n)
            }
        };
        if offset < decoded + stands_for {
            return span.start + at..span.start + at + written;
        }
        decoded += stands_for;
        at += written;
    }
    span
}

/// Bytes of the character a `\uXXXX` or `\UXXXXXXXX` escape decodes to (1 when malformed).
fn unicode_escape_len(hex: Option<&str>) -> usize {
    hex.and_then(|h| u32::from_str_radix(h, 16).ok()).and_then(char::from_u32).map_or(1, char::len_utf8)
}

/// Bytes of the UTF-8 character starting with `first`.
fn utf8_len(first: u8) -> usize {
    match first {
        0xf0.. => 4,
        0xe0.. => 3,
        _ => 2,
    }
}

/// A 1-based line and column.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LineCol {
    /// Line, from 1.
    pub line: usize,
    /// Column in characters, from 1.
    pub col: usize,
}

/// Converts a byte offset into a line and column.
pub fn line_col(source: &str, offset: usize) -> LineCol {
    let offset = offset.min(source.len());
    let before = &source[..floor_char_boundary(source, offset)];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let col = before[line_start..].chars().count() + 1;
    LineCol { line, col }
}

fn floor_char_boundary(s: &str, mut i: usize) -> usize {
    while i > 0 && !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

impl Diagnostics {
    /// The problems found in `source` (named `file`), in source order, each pointing at its
    /// character inside a string value when it says which.
    pub fn new(file: &str, source: &str, mut items: Vec<Diagnostic>) -> Self {
        for d in &mut items {
            if let Some(offset) = d.in_string.take() {
                d.span = span_in_string(source, d.span.clone(), offset);
            }
        }
        items.sort_by_key(|d| d.span.start);
        Diagnostics { file: file.to_string(), source: source.to_string(), items }
    }

    /// Position of one diagnostic.
    pub fn position(&self, d: &Diagnostic) -> LineCol {
        line_col(&self.source, d.span.start)
    }

    /// One line per diagnostic, `file:line:col: message`, without source excerpts (for tests and logs).
    pub fn short(&self) -> Vec<String> {
        self.items
            .iter()
            .map(|d| {
                let p = self.position(d);
                format!("{}:{}:{}: {}", self.file, p.line, p.col, crate::redact::text(&d.message))
            })
            .collect()
    }
}

impl fmt::Display for Diagnostics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for d in &self.items {
            let p = self.position(d);
            writeln!(f, "error: {}", crate::redact::text(&d.message))?;
            writeln!(f, "  --> {}:{}:{}", self.file, p.line, p.col)?;
            if let Some(text) = self.source.lines().nth(p.line - 1) {
                let gutter = p.line.to_string();
                // A span a connector computed (an offset inside a string value) may end inside a
                // character: widen it to whole characters.
                let (mut start, mut end) = (d.span.start.min(self.source.len()), d.span.end.min(self.source.len()));
                while !self.source.is_char_boundary(start) {
                    start -= 1;
                }
                while !self.source.is_char_boundary(end) {
                    end += 1;
                }
                let pointed = crate::redact::text(self.source[start..end.max(start)].lines().next().unwrap_or(""));
                let width = pointed.chars().count().max(1);
                // The caret's column in the line as printed, secrets masked.
                let before: String = text.chars().take(p.col - 1).collect();
                let col = crate::redact::text(&before).chars().count();
                writeln!(f, "{} |", " ".repeat(gutter.len()))?;
                writeln!(f, "{gutter} | {}", crate::redact::text(text))?;
                writeln!(f, "{} | {}{}", " ".repeat(gutter.len()), " ".repeat(col), "^".repeat(width))?;
            }
            if let Some(h) = &d.hint {
                writeln!(f, "  = hint: {}", crate::redact::text(h))?;
            }
            writeln!(f)?;
        }
        let n = self.items.len();
        write!(f, "{} error{} in {}", n, if n == 1 { "" } else { "s" }, self.file)
    }
}

impl std::error::Error for Diagnostics {}

/// How to say a key of Firehose's API (`BucketARN`, `CustomTimeZone`, … in any case, with or
/// without underscores) that is not a key of sluice's: where its setting is here, if anywhere.
/// Names that are only a typo away from sluice's (`compression_format`, `error_output_prefix`)
/// are left to [`did_you_mean`].
pub fn firehose_key_hint(key: &str) -> Option<&'static str> {
    const PARTITIONING: &str =
        "Firehose's dynamic partitioning is `partitioning = { query = \"…\" }` here, its keys used in `prefix`";
    const FIREHOSE_KEYS: &[(&str, &str)] = &[
        ("bucketarn", "Firehose's BucketARN is the bucket of `url` here: url = \"s3://bucket/prefix\""),
        ("bucket", "the bucket is part of `url`: url = \"s3://bucket/prefix\""),
        (
            "rolearn",
            "there is no role to name: credentials come from the environment (AWS_* variables, the \
             instance's or a web identity's role) or the store's `options`",
        ),
        ("customtimezone", "Firehose's CustomTimeZone is `time_zone` here"),
        (
            "fileextension",
            "the extension follows `format` and `compression` (`.csv.gz`, `.parquet`); no other is written",
        ),
        ("dynamicpartitioningconfiguration", PARTITIONING),
        ("dynamicpartitioning", PARTITIONING),
        (
            "processingconfiguration",
            "processors are transforms here: a [transforms.<name>] table of their own, named in this sink's `inputs`",
        ),
        (
            "dataformatconversionconfiguration",
            "Firehose's record format conversion is `format = \"parquet\"` with a `schema` here",
        ),
        ("s3backupmode", "Firehose's S3BackupMode is `backup` here: \"failed\" (default) or \"all\""),
    ];
    let normalized: String = key.chars().filter(|c| *c != '_' && *c != '-').collect::<String>().to_lowercase();
    FIREHOSE_KEYS.iter().find(|(name, _)| *name == normalized).map(|(_, hint)| *hint)
}

/// The hint for `key`, which no reader of its table takes: Firehose's name for a setting said as
/// sluice's ([`firehose_key_hint`]), else the nearest key ([`did_you_mean`]), and the keys
/// `accepted` there; with the nearest key, if any.
pub fn unknown_key_hint<'a>(key: &str, accepted: &[&'a str]) -> (String, Option<&'a str>) {
    let near = did_you_mean(key, accepted.iter().copied());
    let listed = format!("accepted keys here: {}", super::document::join_ticked(accepted));
    let hint = match (firehose_key_hint(key), near) {
        (Some(firehose), _) => format!("{firehose}; {listed}"),
        // A key the table takes only with other settings (the engine says which where it can).
        (None, Some(k)) if k == key => format!("`{key}` does not apply with this table's other settings"),
        (None, Some(k)) => format!("did you mean `{k}`? {listed}"),
        (None, None) => listed,
    };
    (hint, near)
}

/// The closest of `candidates` to `word`, if close enough to be a plausible typo.
pub fn did_you_mean<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    candidates
        .into_iter()
        .map(|c| (strsim::jaro_winkler(word, c), c))
        .filter(|(score, _)| *score > 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, c)| c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_and_column_are_one_based() {
        let src = "a = 1\nbé = 2\n";
        assert_eq!(line_col(src, 0), LineCol { line: 1, col: 1 });
        assert_eq!(line_col(src, 6), LineCol { line: 2, col: 1 });
        assert_eq!(line_col(src, 9), LineCol { line: 2, col: 3 });
    }

    #[test]
    fn a_firehose_key_is_said_as_sluice_s_in_any_case_and_spelling() {
        for key in ["BucketARN", "bucket_arn", "bucketArn", "bucket-arn"] {
            assert!(firehose_key_hint(key).is_some_and(|h| h.contains("url = ")), "{key}");
        }
        assert!(firehose_key_hint("CustomTimeZone").is_some_and(|h| h.contains("`time_zone`")));
        // A typo of sluice's own key is did_you_mean's.
        assert_eq!(firehose_key_hint("compression_format"), None);
        let (hint, near) = unknown_key_hint("custom_time_zone", &["time_zone", "url"]);
        assert_eq!(hint, "Firehose's CustomTimeZone is `time_zone` here; accepted keys here: `time_zone`, `url`");
        assert_eq!(near, None);
        let (hint, near) = unknown_key_hint("urll", &["time_zone", "url"]);
        assert_eq!((hint.as_str(), near), ("did you mean `url`? accepted keys here: `time_zone`, `url`", Some("url")));
        // Accepted elsewhere, not with these settings: not "did you mean" itself.
        let (hint, _) = unknown_key_hint("url", &["time_zone", "url"]);
        assert_eq!(hint, "`url` does not apply with this table's other settings");
    }

    #[test]
    fn suggests_close_names_only() {
        assert_eq!(did_you_mean("pathz", ["paths", "url"]), Some("paths"));
        assert_eq!(did_you_mean("zzz", ["paths", "url"]), None);
    }

    /// The character pointed at for byte `offset` of each kind of string.
    #[test]
    fn offsets_in_every_kind_of_string_point_at_their_source_character() {
        let cases: &[(&str, usize, &str)] = &[
            // (the value as written, the offset in the decoded string, the source text pointed at)
            (r"'{a: .b | }'", 9, "}"),
            (r#""x\ty | z""#, 6, "z"),
            (r#""\u00e9 | z""#, 5, "z"),
            (r#""\u00e9 | z""#, 1, r"\u00e9"),
            ("'''\n{a: .b,\n  c: }'''", 13, "}"),
            ("\"\"\"\n.a | \\\n    bad(\"\"\"", 5, "b"),
            ("'é | z'", 5, "z"),
        ];
        for (value, offset, expected) in cases {
            let source = format!("query = {value}\n");
            let start = "query = ".len();
            let span = span_in_string(&source, start..start + value.len(), *offset);
            assert_eq!(&source[span], *expected, "{value} at {offset}");
        }
        // An offset past the end points at the whole value.
        assert_eq!(span_in_string("q = 'ab'", 4..8, 9), 4..8);
    }
}

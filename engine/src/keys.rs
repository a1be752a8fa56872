//! Object keys: Firehose's prefix expressions and object names (docs/firehose.md §3).
//!
//! An [`ObjectKeyTemplate`] is parsed and checked once, when the config is resolved; rendering it
//! cannot fail. Keys are `<evaluated prefix><stream>-<version>-<yyyy-MM-dd-HH-mm-ss>-<uuid><ext>`,
//! every `!{timestamp:...}` in one key shows the same instant (the oldest record's arrival time) in
//! the configured time zone (UTC by default), an evaluated prefix is at most 512 characters, and
//! a key is checked against what its store holds ([`KeyLimits`]): at validation for the prefixes'
//! literal text, for each new partition with its key values.

use chrono::{DateTime, Datelike, Offset as _, TimeZone, Timelike, Utc};
use chrono_tz::Tz;
use rand::Rng;

/// Longest evaluated prefix Firehose allows.
pub const MAX_EVALUATED_PREFIX: usize = 512;
/// Longest configured prefix string Firehose allows.
pub const MAX_CONFIGURED_PREFIX: usize = 1024;

/// The keys a store can hold, in bytes of UTF-8: the longest key, and the longest part of one
/// between two `/` (a file name, where the store keeps objects as files). A partition whose key
/// values would make a longer key goes to `partitioning-failed`
/// ([`ObjectKeys::check_partition`]), and a sink whose prefix alone does is refused at validation,
/// instead of each object failing at the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyLimits {
    /// The longest key.
    pub key_bytes: usize,
    /// The longest path segment.
    pub segment_bytes: usize,
}

impl KeyLimits {
    /// S3's and GCS's keys (1,024 bytes; Azure's blob names are 1,024 characters, so this is
    /// stricter for text beyond ASCII), with no limit on a segment but the key's.
    pub const OBJECT_STORE: KeyLimits = KeyLimits { key_bytes: 1024, segment_bytes: 1024 };
    /// A file name on the Linux file systems (`NAME_MAX`, 255 bytes).
    pub const FILE_NAME_BYTES: usize = 255;

    /// Why `key` is not one of these keys, if it is not.
    pub fn check(&self, key: &str) -> Result<(), String> {
        if key.len() > self.key_bytes {
            return Err(format!(
                "the object key would be {} bytes; the store takes at most {} under the sink's url",
                key.len(),
                self.key_bytes
            ));
        }
        match key.split('/').find(|segment| segment.len() > self.segment_bytes) {
            Some(segment) => Err(format!(
                "the object key's part `{}…` would be {} bytes; the store takes at most {} between two `/`",
                segment.chars().take(24).collect::<String>(),
                segment.len(),
                self.segment_bytes
            )),
            None => Ok(()),
        }
    }
}

/// The instant whose rendering is the longest a template can make: every number at its widest,
/// the longest month and day names (`September`, `Wednesday`), summer time where a zone has one
/// in the north.
fn widest_instant() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2099, 9, 30, 23, 59, 59).single().unwrap_or_default()
}

/// Why a prefix template was rejected; `offset` is a byte offset into the template.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct KeyTemplateError {
    /// Byte offset of the problem within the template string.
    pub offset: usize,
    /// What is wrong.
    pub message: String,
    /// How to fix it.
    pub hint: String,
}

fn template_error(offset: usize, message: impl Into<String>, hint: impl Into<String>) -> KeyTemplateError {
    KeyTemplateError { offset, message: message.into(), hint: hint.into() }
}

/// One piece of a Java `DateTimeFormatter` pattern, as Firehose's prefixes evaluate it (its
/// letters, their counts and the English texts of the default locale, from the `DateTimeFormatter`
/// documentation).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DatePart {
    /// A number, zero-padded to `width` digits (1: as many as it takes).
    Number {
        /// What it counts.
        field: NumberField,
        /// The fewest digits shown.
        width: u8,
    },
    /// `yy` or `uu`: the year's last two digits.
    YearOfCentury,
    /// `S`…`SSSSSSSSS`: the fraction of the second, `digits` digits, truncated.
    Fraction {
        /// How many digits.
        digits: u8,
    },
    /// A name in English: a month's, a day's, AM or PM, the era, the quarter.
    Text {
        /// What it names.
        field: TextField,
        /// How long a form.
        form: TextForm,
    },
    /// The time zone's offset from UTC.
    Offset(OffsetForm),
    /// Text copied as is: punctuation, or a quoted literal like `'year='`.
    Literal(String),
}

/// A number of a timestamp pattern.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NumberField {
    /// `y`, `u` (once, three, four or more times): the year.
    Year,
    /// `M`: month of the year, 1–12.
    Month,
    /// `Q`: quarter of the year, 1–4.
    Quarter,
    /// `d`: day of the month.
    Day,
    /// `D`: day of the year, 1–366.
    DayOfYear,
    /// `H`: hour of the day, 0–23.
    Hour,
    /// `k`: hour of the day, 1–24.
    ClockHourOfDay,
    /// `K`: hour of the half day, 0–11.
    HourOfAmPm,
    /// `h`: hour of the half day, 1–12.
    ClockHourOfAmPm,
    /// `m`: minute of the hour.
    Minute,
    /// `s`: second of the minute.
    Second,
    /// `A`: millisecond of the day.
    MilliOfDay,
    /// `n`: nanosecond of the second.
    NanoOfSecond,
}

/// A name of a timestamp pattern.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TextField {
    /// `MMM`…: `Jul`, `July`, `J`.
    Month,
    /// `E`…: `Tue`, `Tuesday`, `T`.
    DayOfWeek,
    /// `a`: `AM` or `PM`.
    AmPm,
    /// `G`…: `AD`, `Anno Domini`, `A`.
    Era,
    /// `QQQ`…: `Q3`, `3rd quarter`, `3`.
    Quarter,
}

/// Java's text styles: three letters give the short form, four the full one, five the narrow one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TextForm {
    /// `Jul`.
    Short,
    /// `July`.
    Full,
    /// `J`.
    Narrow,
}

/// How an offset from UTC is written (Java's `X`, `x`, `Z` and `O` letters).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OffsetForm {
    /// A colon between hours and minutes (`+09:00`).
    colon: bool,
    /// Minutes only when not zero (`X`, `x`: `+09`, `+0530`).
    minutes_optional: bool,
    /// What a zero offset is written as (`Z`, `+00:00`, ...), or `None` to write it as any other.
    zero: Option<&'static str>,
    /// Java's localized form: `GMT+09:00` (`ZZZZ`, `OOOO`), or `GMT+9` (`O`: `short`).
    gmt: Option<GmtForm>,
}

/// The `GMT` forms of an offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GmtForm {
    /// `GMT+9`, `GMT+5:30` (`O`).
    Short,
    /// `GMT+09:00` (`OOOO`, `ZZZZ`).
    Full,
}

/// One piece of a prefix template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Segment {
    /// Text outside any `!{...}`.
    Literal(String),
    /// `!{timestamp:<pattern>}`.
    Timestamp(Vec<DatePart>),
    /// `!{firehose:random-string}`: 11 random characters, new at each use.
    RandomString,
    /// `!{firehose:error-output-type}`: the reason records were sent to the error output.
    ErrorOutputType,
    /// `!{partitionKeyFromQuery:name}` or `!{partitionKeyFromLambda:name}`: a record's partition
    /// key value (dynamic partitioning).
    PartitionKey(PartitionKeyRef),
}

/// Where a partition key comes from, and its name.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PartitionKeyRef {
    /// From a lambda transform's `metadata.partitionKeys` (else from the sink's partitioning query).
    pub from_lambda: bool,
    /// The key's name.
    pub name: String,
}

/// A parsed, checked prefix (`Prefix` or `ErrorOutputPrefix`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectKeyTemplate {
    segments: Vec<Segment>,
    /// Where each segment starts in the template text (for errors).
    offsets: Vec<usize>,
}

/// The pattern letters we accept inside `!{timestamp:...}`.
pub const SUPPORTED_PATTERN_LETTERS: &str = "y/u (yyyy, yy), M (M, MM, MMM, MMMM), d, D, Q, E (EEE, EEEE), a, \
     H, k, K, h, m, s, S (SSS), A, n, G, offsets X, x, Z, O, and 'quoted text' (not the locale's week \
     letters Y, w, W, e, c, F, nor zone names V, z, v)";

/// The piece `count` letters `letter` make, as Java's `DateTimeFormatterBuilder.appendPattern`
/// reads them; `None` for a letter or count it refuses, or one we leave out (the week letters
/// depend on the JVM's locale, which Firehose does not document; zone names need a zone database's
/// names, and `VV`'s `/` would add a folder).
fn date_part(letter: char, count: usize) -> Option<DatePart> {
    use DatePart::{Fraction, Number, Offset, Text, YearOfCentury};
    let width = u8::try_from(count).ok()?;
    let number = |field, most: usize| (count <= most).then_some(Number { field, width });
    let form = |count: usize| match count {
        1..=3 => Some(TextForm::Short),
        4 => Some(TextForm::Full),
        5 => Some(TextForm::Narrow),
        _ => None,
    };
    let text = |field| Some(Text { field, form: form(count)? });
    let offset = |colon, minutes_optional, zero| OffsetForm { colon, minutes_optional, zero, gmt: None };
    let gmt = |form| OffsetForm { colon: true, minutes_optional: false, zero: Some("GMT"), gmt: Some(form) };
    match (letter, count) {
        ('y' | 'u', 2) => Some(YearOfCentury),
        ('y' | 'u', 1..=19) => Some(Number { field: NumberField::Year, width }),
        ('M' | 'L', 1 | 2) => number(NumberField::Month, 2),
        ('M' | 'L', _) => text(TextField::Month),
        ('Q' | 'q', 1 | 2) => number(NumberField::Quarter, 2),
        ('Q' | 'q', _) => text(TextField::Quarter),
        ('d', _) => number(NumberField::Day, 2),
        ('D', _) => number(NumberField::DayOfYear, 3),
        ('H', _) => number(NumberField::Hour, 2),
        ('k', _) => number(NumberField::ClockHourOfDay, 2),
        ('K', _) => number(NumberField::HourOfAmPm, 2),
        ('h', _) => number(NumberField::ClockHourOfAmPm, 2),
        ('m', _) => number(NumberField::Minute, 2),
        ('s', _) => number(NumberField::Second, 2),
        ('A', 1..=19) => number(NumberField::MilliOfDay, 19),
        ('n', 1..=19) => number(NumberField::NanoOfSecond, 19),
        ('S', 1..=9) => Some(Fraction { digits: width }),
        ('E', _) => text(TextField::DayOfWeek),
        ('a', 1) => text(TextField::AmPm),
        ('G', _) => text(TextField::Era),
        // `X` writes a zero offset `Z`; `x` as digits. One letter: minutes only when not zero.
        ('X', 1) => Some(Offset(offset(false, true, Some("Z")))),
        ('X', 2 | 4) => Some(Offset(offset(false, false, Some("Z")))),
        ('X', 3 | 5) => Some(Offset(offset(true, false, Some("Z")))),
        ('x', 1) => Some(Offset(offset(false, true, Some("+00")))),
        ('x', 2 | 4) => Some(Offset(offset(false, false, None))),
        ('x', 3 | 5) => Some(Offset(offset(true, false, None))),
        ('Z', 1..=3) => Some(Offset(offset(false, false, None))),
        ('Z', 4) => Some(Offset(gmt(GmtForm::Full))),
        ('Z', 5) => Some(Offset(offset(true, false, Some("Z")))),
        ('O', 1) => Some(Offset(gmt(GmtForm::Short))),
        ('O', 4) => Some(Offset(gmt(GmtForm::Full))),
        _ => None,
    }
}

fn parse_date_pattern(pattern: &str, base: usize) -> Result<Vec<DatePart>, KeyTemplateError> {
    let mut parts = Vec::new();
    let mut literal = String::new();
    let chars: Vec<(usize, char)> = pattern.char_indices().collect();
    let mut i = 0;
    let flush = |literal: &mut String, parts: &mut Vec<DatePart>| {
        if !literal.is_empty() {
            parts.push(DatePart::Literal(std::mem::take(literal)));
        }
    };
    while i < chars.len() {
        let (at, c) = chars[i];
        if c == '\'' {
            // Quoted literal; '' is a single quote.
            if chars.get(i + 1).map(|x| x.1) == Some('\'') {
                literal.push('\'');
                i += 2;
                continue;
            }
            let mut j = i + 1;
            loop {
                match chars.get(j) {
                    None => {
                        return Err(template_error(
                            base + at,
                            "unclosed quote in timestamp pattern",
                            "close the literal with ', e.g. !{timestamp:'year='yyyy}",
                        ));
                    }
                    Some((_, '\'')) if chars.get(j + 1).map(|x| x.1) == Some('\'') => {
                        literal.push('\'');
                        j += 2;
                    }
                    Some((_, '\'')) => break,
                    Some((_, ch)) => {
                        literal.push(*ch);
                        j += 1;
                    }
                }
            }
            i = j + 1;
            continue;
        }
        if c.is_ascii_alphabetic() {
            let run = chars[i..].iter().take_while(|(_, x)| *x == c).count();
            let Some(part) = date_part(c, run) else {
                return Err(template_error(
                    base + at,
                    format!("unsupported timestamp pattern `{}`", c.to_string().repeat(run)),
                    format!("supported: {SUPPORTED_PATTERN_LETTERS}; quote other text, e.g. 'T'"),
                ));
            };
            flush(&mut literal, &mut parts);
            parts.push(part);
            i += run;
            continue;
        }
        if c == '{' || c == '}' || c == '!' {
            return Err(template_error(
                base + at,
                format!("`{c}` is not allowed in a timestamp pattern"),
                "quote it if you mean the character",
            ));
        }
        literal.push(c);
        i += 1;
    }
    flush(&mut literal, &mut parts);
    if !parts.iter().any(|p| !matches!(p, DatePart::Literal(_))) {
        return Err(template_error(
            base,
            "timestamp pattern has no date or time field",
            "e.g. !{timestamp:yyyy/MM/dd}",
        ));
    }
    Ok(parts)
}

impl ObjectKeyTemplate {
    /// Parses a template, checking the syntax of every `!{...}` (docs/firehose.md §3).
    pub fn parse(template: &str) -> Result<Self, KeyTemplateError> {
        if template.len() > MAX_CONFIGURED_PREFIX {
            return Err(template_error(
                0,
                format!("prefix is {} characters; Firehose allows at most {MAX_CONFIGURED_PREFIX}", template.len()),
                "shorten the prefix",
            ));
        }
        let mut segments = Vec::new();
        let mut offsets = Vec::new();
        let mut rest = template;
        let mut offset = 0;
        while let Some(start) = rest.find("!{") {
            let literal = &rest[..start];
            if let Some(bad) = literal.find(['{', '}']) {
                return Err(template_error(
                    offset + bad,
                    "`{` and `}` may appear only inside a `!{...}` expression",
                    "remove the brace, or write an expression like !{timestamp:yyyy}",
                ));
            }
            if !literal.is_empty() {
                segments.push(Segment::Literal(literal.to_string()));
                offsets.push(offset);
            }
            let expr_start = offset + start;
            let after = &rest[start + 2..];
            let Some(end) = after.find('}') else {
                return Err(template_error(expr_start, "unclosed `!{` expression", "close it with `}`"));
            };
            let expr = &after[..end];
            let Some((namespace, value)) = expr.split_once(':') else {
                return Err(template_error(
                    expr_start,
                    format!("`!{{{expr}}}` is not `!{{namespace:value}}`"),
                    "use !{timestamp:...}, !{firehose:random-string} or !{firehose:error-output-type}",
                ));
            };
            let value_offset = expr_start + 2 + namespace.len() + 1;
            let segment = match (namespace, value) {
                ("timestamp", pattern) => Segment::Timestamp(parse_date_pattern(pattern, value_offset)?),
                ("firehose", "random-string") => Segment::RandomString,
                ("firehose", "error-output-type") => Segment::ErrorOutputType,
                ("firehose", other) => {
                    return Err(template_error(
                        value_offset,
                        format!("unknown firehose expression `{other}`"),
                        "use firehose:random-string or firehose:error-output-type",
                    ));
                }
                ("partitionKeyFromQuery" | "partitionKeyFromLambda", name) => {
                    if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b"_-".contains(&b)) {
                        return Err(template_error(
                            value_offset,
                            format!("`{name}` is not a partition key name"),
                            "use letters, digits, `_` and `-`, e.g. !{partitionKeyFromQuery:account}",
                        ));
                    }
                    Segment::PartitionKey(PartitionKeyRef {
                        from_lambda: namespace == "partitionKeyFromLambda",
                        name: name.to_string(),
                    })
                }
                (other, _) => {
                    return Err(template_error(
                        expr_start,
                        format!("unknown expression namespace `{other}`"),
                        "use timestamp, firehose, partitionKeyFromQuery or partitionKeyFromLambda",
                    ));
                }
            };
            segments.push(segment);
            offsets.push(expr_start);
            offset = expr_start + 2 + end + 1;
            rest = &after[end + 1..];
        }
        if let Some(bad) = rest.find(['{', '}']) {
            return Err(template_error(
                offset + bad,
                "`{` and `}` may appear only inside a `!{...}` expression",
                "remove the brace, or write an expression like !{timestamp:yyyy}",
            ));
        }
        if !rest.is_empty() {
            segments.push(Segment::Literal(rest.to_string()));
            offsets.push(offset);
        }
        Ok(ObjectKeyTemplate { segments, offsets })
    }

    /// Whether any `!{...}` expression is used.
    pub fn has_expressions(&self) -> bool {
        self.segments.iter().any(|s| !matches!(s, Segment::Literal(_)))
    }

    /// Whether a `!{timestamp:...}` is used.
    pub fn has_timestamp(&self) -> bool {
        self.segments.iter().any(|s| matches!(s, Segment::Timestamp(_)))
    }

    /// The partition keys the template uses, in order (each once).
    pub fn partition_keys(&self) -> Vec<PartitionKeyRef> {
        let mut keys: Vec<PartitionKeyRef> = Vec::new();
        for segment in &self.segments {
            if let Segment::PartitionKey(k) = segment
                && !keys.contains(k)
            {
                keys.push(k.clone());
            }
        }
        keys
    }

    /// Whether `!{firehose:error-output-type}` is used.
    pub fn has_error_output_type(&self) -> bool {
        self.segments.iter().any(|s| matches!(s, Segment::ErrorOutputType))
    }

    /// Appends the Firehose default time part `yyyy/MM/dd/HH/`.
    fn with_default_time(mut self) -> Self {
        let end = self.offsets.last().copied().unwrap_or(0);
        self.segments.push(Segment::Timestamp(parse_date_pattern("yyyy/MM/dd/HH/", 0).unwrap_or_default()));
        self.offsets.push(end);
        self
    }

    /// Checks that every rendering makes keys object stores take: no leading `/`, no empty, `.`
    /// or `..` path segment, no control character. Date fields render digits and random strings
    /// hex, so one rendering on a fixed date (with `error_output_type`) shows what the literal
    /// text, quoted pattern text included, makes of every key; an error points at the segment of
    /// the template that made the problem.
    fn check_storable(&self, error_output_type: &str) -> Result<(), KeyTemplateError> {
        let instant = Utc.with_ymd_and_hms(2026, 1, 2, 3, 4, 5).single().unwrap_or_default();
        let mut rendered = String::new();
        // The template segment each rendered byte came from.
        let mut owner = Vec::new();
        for (i, segment) in self.segments.iter().enumerate() {
            ObjectKeyTemplate { segments: vec![segment.clone()], offsets: vec![0] }.render(
                &instant,
                error_output_type,
                &mut rendered,
            );
            owner.resize(rendered.len(), i);
        }
        let at = |byte: usize| owner.get(byte).and_then(|&i| self.offsets.get(i)).copied().unwrap_or(0);
        let storable = "keys are relative to the sink's url; object stores refuse `.` and `..` segments, empty segments (`//`) and control characters";
        if let Some((byte, c)) = rendered.char_indices().find(|(_, c)| c.is_control()) {
            return Err(template_error(at(byte), format!("the key would hold the control character {c:?}"), storable));
        }
        if rendered.starts_with('/') {
            return Err(template_error(at(0), format!("the key `{rendered}…` would start with `/`"), storable));
        }
        let mut start = 0;
        for (byte, c) in rendered.char_indices() {
            if c != '/' {
                continue;
            }
            let segment = &rendered[start..byte];
            if segment.is_empty() || segment == "." || segment == ".." {
                let what = if segment.is_empty() {
                    "an empty path segment (`//`)".to_string()
                } else {
                    format!("a `{segment}` path segment")
                };
                return Err(template_error(
                    at(start.min(byte)),
                    format!("the key `{rendered}…` would have {what}"),
                    storable,
                ));
            }
            start = byte + 1;
        }
        Ok(())
    }

    /// Renders the template for `instant`; `error_output_type` fills `!{firehose:error-output-type}`
    /// (a partition key renders as `value`: see [`ObjectKeyTemplate::render_partition`]).
    pub fn render<Z: TimeZone>(&self, instant: &DateTime<Z>, error_output_type: &str, out: &mut String) {
        self.render_partition(instant, error_output_type, &[] as &[&str], out);
    }

    /// Renders the template with `values`, the partition key values in the order of
    /// [`ObjectKeyTemplate::partition_keys`] (a missing one renders as `value`).
    pub fn render_partition<Z: TimeZone>(
        &self,
        instant: &DateTime<Z>,
        error_output_type: &str,
        values: &[impl AsRef<str>],
        out: &mut String,
    ) {
        let keys = if values.is_empty() { Vec::new() } else { self.partition_keys() };
        for segment in &self.segments {
            match segment {
                Segment::Literal(s) => out.push_str(s),
                Segment::Timestamp(parts) => render_date(parts, instant, out),
                Segment::RandomString => out.push_str(&random_string()),
                Segment::ErrorOutputType => out.push_str(error_output_type),
                Segment::PartitionKey(k) => {
                    let value = keys.iter().position(|x| x == k).and_then(|i| values.get(i));
                    out.push_str(value.map_or("value", AsRef::as_ref));
                }
            }
        }
    }
}

fn render_date<Z: TimeZone>(parts: &[DatePart], t: &DateTime<Z>, out: &mut String) {
    use std::fmt::Write;
    for part in parts {
        let _ = match part {
            DatePart::Number { field, width } => {
                let n = number_of(*field, t);
                write!(out, "{n:0width$}", width = usize::from(*width))
            }
            DatePart::YearOfCentury => write!(out, "{:02}", t.year().rem_euclid(100)),
            DatePart::Fraction { digits } => {
                let nanos = format!("{:09}", t.timestamp_subsec_nanos().min(999_999_999));
                out.push_str(&nanos[..usize::from(*digits).min(9)]);
                Ok(())
            }
            DatePart::Text { field, form } => {
                out.push_str(&text_of(*field, *form, t));
                Ok(())
            }
            DatePart::Offset(form) => {
                write_offset(*form, t.offset().fix().local_minus_utc(), out);
                Ok(())
            }
            DatePart::Literal(s) => {
                out.push_str(s);
                Ok(())
            }
        };
    }
}

fn number_of<Z: TimeZone>(field: NumberField, t: &DateTime<Z>) -> i64 {
    let hour = i64::from(t.hour());
    match field {
        NumberField::Year => i64::from(t.year()),
        NumberField::Month => i64::from(t.month()),
        NumberField::Quarter => i64::from(t.month0() / 3 + 1),
        NumberField::Day => i64::from(t.day()),
        NumberField::DayOfYear => i64::from(t.ordinal()),
        NumberField::Hour => hour,
        NumberField::ClockHourOfDay => {
            if hour == 0 {
                24
            } else {
                hour
            }
        }
        NumberField::HourOfAmPm => hour % 12,
        NumberField::ClockHourOfAmPm => {
            if hour % 12 == 0 {
                12
            } else {
                hour % 12
            }
        }
        NumberField::Minute => i64::from(t.minute()),
        NumberField::Second => i64::from(t.second()),
        NumberField::MilliOfDay => {
            i64::from(t.num_seconds_from_midnight()) * 1000 + i64::from(t.timestamp_subsec_millis().min(999))
        }
        NumberField::NanoOfSecond => i64::from(t.timestamp_subsec_nanos().min(999_999_999)),
    }
}

const MONTHS: [&str; 12] = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
];
const DAYS: [&str; 7] = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"];

/// A name in the forms of Java's English locale data (`Jul`/`July`/`J`, `Tue`/`Tuesday`/`T`,
/// `Q3`/`3rd quarter`/`3`, `AD`/`Anno Domini`/`A`; `AM`/`PM` in every form).
fn text_of<Z: TimeZone>(field: TextField, form: TextForm, t: &DateTime<Z>) -> String {
    let name = |full: &str| match form {
        TextForm::Full => full.to_string(),
        TextForm::Short => full.chars().take(3).collect(),
        TextForm::Narrow => full.chars().take(1).collect(),
    };
    match field {
        TextField::Month => name(MONTHS[t.month0() as usize % 12]),
        TextField::DayOfWeek => name(DAYS[t.weekday().num_days_from_monday() as usize % 7]),
        TextField::AmPm => (if t.hour() < 12 { "AM" } else { "PM" }).to_string(),
        TextField::Era => {
            let common = t.year() > 0;
            match form {
                TextForm::Short => (if common { "AD" } else { "BC" }).to_string(),
                TextForm::Full => (if common { "Anno Domini" } else { "Before Christ" }).to_string(),
                TextForm::Narrow => (if common { "A" } else { "B" }).to_string(),
            }
        }
        TextField::Quarter => {
            let q = t.month0() / 3 + 1;
            match form {
                TextForm::Short => format!("Q{q}"),
                TextForm::Full => format!("{q}{} quarter", ["st", "nd", "rd", "th"][(q as usize - 1) % 4]),
                TextForm::Narrow => q.to_string(),
            }
        }
    }
}

/// `seconds` east of UTC written as `form` says (offsets are whole minutes in every zone now).
fn write_offset(form: OffsetForm, seconds: i32, out: &mut String) {
    use std::fmt::Write;
    if seconds == 0
        && let Some(zero) = form.zero
    {
        out.push_str(zero);
        return;
    }
    let sign = if seconds < 0 { '-' } else { '+' };
    let (hours, minutes) = (seconds.unsigned_abs() / 3600, seconds.unsigned_abs() / 60 % 60);
    let _ = match form.gmt {
        Some(GmtForm::Short) if minutes == 0 => write!(out, "GMT{sign}{hours}"),
        Some(GmtForm::Short) => write!(out, "GMT{sign}{hours}:{minutes:02}"),
        Some(GmtForm::Full) => write!(out, "GMT{sign}{hours:02}:{minutes:02}"),
        None if form.minutes_optional && minutes == 0 => write!(out, "{sign}{hours:02}"),
        None if form.colon => write!(out, "{sign}{hours:02}:{minutes:02}"),
        None => write!(out, "{sign}{hours:02}{minutes:02}"),
    };
}

/// Firehose's `random-string`: 11 characters, e.g. `046b6c7f-0b`.
fn random_string() -> String {
    let mut rng = rand::rng();
    let a: u32 = rng.random();
    let b: u8 = rng.random();
    format!("{a:08x}-{b:02x}")
}

/// How a sink names its objects: data prefix, error prefix, stream name, version, time zone.
#[derive(Debug, Clone)]
pub struct ObjectKeys {
    prefix: ObjectKeyTemplate,
    error_prefix: ObjectKeyTemplate,
    /// The prefixes as configured (for DescribeDeliveryStream).
    configured: (String, Option<String>),
    stream: String,
    version: u32,
    time_zone: Tz,
    /// `file_extension`: the data objects' extension in place of their format's (Firehose's
    /// `FileExtension`).
    file_extension: Option<String>,
}

/// The longest `file_extension` (Firehose's `FileExtension`: at most 128 characters).
pub const MAX_FILE_EXTENSION: usize = 128;

/// Whether `extension` is one Firehose's `FileExtension` takes (`^$|\.[0-9a-z!\-_.*'()]+`, at most
/// [`MAX_FILE_EXTENSION`] characters: a dot, then lowercase letters, digits and `!-_.*'()`); why not.
pub fn check_file_extension(extension: &str) -> Result<(), String> {
    if extension.len() > MAX_FILE_EXTENSION {
        return Err(format!(
            "is {} characters long; Firehose's FileExtension takes at most {MAX_FILE_EXTENSION}",
            extension.len()
        ));
    }
    if !extension.is_empty() && !extension.starts_with('.') {
        return Err("must start with `.`".into());
    }
    match extension
        .chars()
        .skip(1)
        .find(|c| !matches!(c, '0'..='9' | 'a'..='z' | '!' | '-' | '_' | '.' | '*' | '\'' | '(' | ')'))
    {
        Some(c) => Err(format!(
            "holds `{c}`: after its dot only lowercase letters, digits and !-_.*'() (Firehose's FileExtension)"
        )),
        None if extension == "." => Err("is a dot alone: name the extension after it".into()),
        None => Ok(()),
    }
}

/// One of Firehose's rules the `prefix`/`error_prefix` pair breaks; `field` names which key to point at.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{error}")]
pub struct PrefixRuleError {
    /// `prefix` or `error_prefix`.
    pub field: &'static str,
    /// The problem.
    pub error: KeyTemplateError,
}

/// Every rule the `prefix`/`error_prefix` pair breaks (at least one), so a config shows them all at once.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
pub struct PrefixRuleErrors(pub Vec<PrefixRuleError>);

impl ObjectKeys {
    /// The time zone of the keys' timestamps.
    pub fn time_zone(&self) -> Tz {
        self.time_zone
    }

    /// The `prefix` and `error_prefix` as configured (before the default time was appended).
    pub fn configured(&self) -> (&str, Option<&str>) {
        (&self.configured.0, self.configured.1.as_deref())
    }

    /// Applies Firehose's prefix rules (docs/firehose.md §3) to the configured prefixes, and
    /// reports every rule broken, in each of the two fields.
    ///
    /// - A prefix without a timestamp expression gets `!{timestamp:yyyy/MM/dd/HH/}` appended.
    /// - The prefix must not use `error-output-type`; a set error prefix must use it.
    /// - The error prefix may be left out only when the prefix has no expressions; it then becomes
    ///   `<prefix><error-output-type>/yyyy/MM/dd/HH/`.
    pub fn new(
        prefix: Option<&str>,
        error_prefix: Option<&str>,
        stream: &str,
        time_zone: Tz,
    ) -> Result<Self, PrefixRuleErrors> {
        let mut errors = Vec::new();
        let prefix_text = prefix.unwrap_or("");
        let parsed = match ObjectKeyTemplate::parse(prefix_text) {
            Ok(parsed) => Some(parsed),
            Err(error) => {
                errors.push(PrefixRuleError { field: "prefix", error });
                None
            }
        };
        if parsed.as_ref().is_some_and(ObjectKeyTemplate::has_error_output_type) {
            errors.push(PrefixRuleError {
                field: "prefix",
                error: template_error(
                    prefix_text.find("!{firehose:error-output-type}").unwrap_or(0),
                    "`!{firehose:error-output-type}` is allowed only in error_prefix",
                    "move it to error_prefix",
                ),
            });
        }
        let error_template = match error_prefix {
            Some(text) => match ObjectKeyTemplate::parse(text) {
                Err(error) => {
                    errors.push(PrefixRuleError { field: "error_prefix", error });
                    None
                }
                Ok(t) => {
                    let before = errors.len();
                    if !t.partition_keys().is_empty() {
                        errors.push(PrefixRuleError {
                            field: "error_prefix",
                            error: template_error(
                                text.find("!{partitionKey").unwrap_or(0),
                                "partition keys are not allowed in error_prefix",
                                "records that fail partitioning have no keys: keep them in prefix only",
                            ),
                        });
                    }
                    if !t.has_error_output_type() {
                        errors.push(PrefixRuleError {
                            field: "error_prefix",
                            error: template_error(
                                0,
                                "error_prefix must contain `!{firehose:error-output-type}`",
                                "e.g. error_prefix = \"errors/!{firehose:error-output-type}/!{timestamp:yyyy/MM/dd}/\"",
                            ),
                        });
                    }
                    (errors.len() == before).then(|| if t.has_timestamp() { t } else { t.with_default_time() })
                }
            },
            None if parsed.as_ref().is_some_and(ObjectKeyTemplate::has_expressions) => {
                errors.push(PrefixRuleError {
                    field: "prefix",
                    error: template_error(
                        0,
                        "error_prefix is required when prefix uses `!{...}` expressions",
                        "add error_prefix = \"errors/!{firehose:error-output-type}/!{timestamp:yyyy/MM/dd}/\"",
                    ),
                });
                None
            }
            None => {
                let mut segments = Vec::new();
                if !prefix_text.is_empty() {
                    segments.push(Segment::Literal(prefix_text.to_string()));
                }
                segments.push(Segment::ErrorOutputType);
                segments.push(Segment::Literal("/".into()));
                let offsets = vec![0; segments.len()];
                Some(ObjectKeyTemplate { segments, offsets }.with_default_time())
            }
        };
        let prefix_template = parsed.map(|p| if p.has_timestamp() { p } else { p.with_default_time() });
        // A default error prefix is made of the prefix: its problems are the prefix's.
        let error_field = if error_prefix.is_some() { "error_prefix" } else { "prefix" };
        // The longest a rendering can be: every field at its widest on a fixed date.
        let widest = widest_instant().with_timezone(&time_zone);
        let checks = [
            ("prefix", "prefix", "", prefix_template.as_ref()),
            (
                error_field,
                "error_prefix",
                crate::error_output::ErrorOutputType::FormatConversionFailed.name(),
                error_template.as_ref(),
            ),
        ];
        for (field, what, error_type, template) in checks {
            // A field that broke a rule gets no follow-on errors (a default error prefix is the
            // prefix and more: its field is the prefix's).
            let Some(template) = template.filter(|_| !errors.iter().any(|e| e.field == field)) else { continue };
            if let Err(error) = template.check_storable(error_type) {
                errors.push(PrefixRuleError { field, error });
                continue;
            }
            let mut rendered = String::new();
            template.render(&widest, "format-conversion-failed", &mut rendered);
            let characters = rendered.chars().count();
            if characters > MAX_EVALUATED_PREFIX {
                errors.push(PrefixRuleError {
                    field,
                    error: template_error(
                        0,
                        format!("{what} evaluates to {characters} characters; Firehose allows {MAX_EVALUATED_PREFIX}"),
                        "shorten it",
                    ),
                });
            }
        }
        match (prefix_template, error_template) {
            (Some(prefix_template), Some(error_template)) if errors.is_empty() => Ok(ObjectKeys {
                prefix: prefix_template,
                error_prefix: error_template,
                configured: (prefix_text.to_string(), error_prefix.map(str::to_string)),
                stream: stream.into(),
                version: 1,
                time_zone,
                file_extension: None,
            }),
            _ => Err(PrefixRuleErrors(errors)),
        }
    }

    /// Key of a data object whose oldest record arrived at `oldest_arrival_ms`.
    pub fn data_key(&self, oldest_arrival_ms: i64, extension: &str) -> String {
        self.key(&self.prefix, oldest_arrival_ms, "", &[] as &[&str], self.data_extension(extension))
    }

    /// The same keys, data objects named with `extension` (`file_extension`, checked with
    /// [`check_file_extension`]; empty: their format's, as without it) in place of their format's.
    pub fn with_file_extension(mut self, extension: Option<String>) -> Self {
        self.file_extension = extension.filter(|e| !e.is_empty());
        self
    }

    /// The extension of data objects whose format's is `format_extension`: `file_extension` when set.
    pub fn data_extension<'a>(&'a self, format_extension: &'a str) -> &'a str {
        self.file_extension.as_deref().unwrap_or(format_extension)
    }

    /// Key of a data object of the partition with key `values` (in the order of
    /// [`ObjectKeys::partition_keys`]).
    pub fn partition_data_key(&self, oldest_arrival_ms: i64, values: &[impl AsRef<str>], extension: &str) -> String {
        self.key(&self.prefix, oldest_arrival_ms, "", values, self.data_extension(extension))
    }

    /// The partition keys `prefix` uses, in order.
    pub fn partition_keys(&self) -> Vec<PartitionKeyRef> {
        self.prefix.partition_keys()
    }

    /// Why a partition with key `values` cannot name objects, if it cannot: a value holding `/`
    /// or a control character, a path segment left empty, `.` or `..`, an evaluated prefix over
    /// [`MAX_EVALUATED_PREFIX`] characters, or a data key (its objects' names end with
    /// `extension`, the format's) that the store cannot hold (`limits`). Such a record goes to the
    /// error output.
    pub fn check_partition(&self, values: &[String], limits: KeyLimits, extension: &str) -> Result<(), String> {
        if let Some(v) = values.iter().find(|v| v.contains('/') || v.chars().any(char::is_control)) {
            return Err(format!("the partition key value {v:?} holds `/` or a control character"));
        }
        let widest = widest_instant().with_timezone(&self.time_zone);
        let mut rendered = String::new();
        self.prefix.render_partition(&widest, "", values, &mut rendered);
        if rendered.chars().count() > MAX_EVALUATED_PREFIX {
            return Err(format!(
                "the prefix evaluates to {} characters; Firehose allows {MAX_EVALUATED_PREFIX}",
                rendered.chars().count()
            ));
        }
        let bad = rendered.split('/').rev().skip(1).find(|s| s.is_empty() || *s == "." || *s == "..");
        if let Some(segment) = bad {
            return Err(format!("the prefix would hold the path segment {segment:?} (`{rendered}`)"));
        }
        limits.check(&self.key(&self.prefix, widest.timestamp_millis(), "", values, self.data_extension(extension)))
    }

    /// Why the store cannot hold the data keys at all, if it cannot: their literal text alone
    /// (a partition key counting as one character, its shortest value) makes a key longer than
    /// `limits` allow, objects named with `extension` (the format's).
    pub fn check_data_limits(&self, limits: KeyLimits, extension: &str) -> Result<(), String> {
        let shortest: Vec<&str> = self.partition_keys().iter().map(|_| "v").collect();
        limits.check(&self.key(
            &self.prefix,
            widest_instant().timestamp_millis(),
            "",
            &shortest,
            self.data_extension(extension),
        ))
    }

    /// Why the store cannot hold the error-output keys of a sink of `destination`, if it cannot
    /// (with its longest error-output type and compression extension).
    pub fn check_error_limits(
        &self,
        limits: KeyLimits,
        destination: crate::destination::DestinationKind,
    ) -> Result<(), String> {
        let longest_type = crate::error_output::ErrorOutputType::longest_name(destination);
        use crate::compression::Compression;
        let longest_extension = Compression::NAMES
            .iter()
            .filter_map(|name| Compression::from_name(name))
            .map(Compression::extension)
            .max_by_key(|extension| extension.len())
            .unwrap_or_default();
        limits.check(&self.key(
            &self.error_prefix,
            widest_instant().timestamp_millis(),
            longest_type,
            &[] as &[&str],
            longest_extension,
        ))
    }

    /// Key of an error-output object.
    pub fn error_key(&self, oldest_arrival_ms: i64, error_output_type: &str, extension: &str) -> String {
        self.key(&self.error_prefix, oldest_arrival_ms, error_output_type, &[] as &[&str], extension)
    }

    fn key(
        &self,
        template: &ObjectKeyTemplate,
        ms: i64,
        error_type: &str,
        values: &[impl AsRef<str>],
        extension: &str,
    ) -> String {
        let instant = Utc.timestamp_millis_opt(ms).single().unwrap_or_default().with_timezone(&self.time_zone);
        let mut key = String::with_capacity(128);
        template.render_partition(&instant, error_type, values, &mut key);
        use std::fmt::Write;
        let _ = write!(
            key,
            "{}-{}-{}-{}{}",
            self.stream,
            self.version,
            instant.format("%Y-%m-%d-%H-%M-%S"),
            uuid::Uuid::new_v4(),
            extension
        );
        key
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::destination::DestinationKind;
    use crate::error_output::ErrorOutputType;

    /// Firehose's FileExtension rule, and a data key ending with it in place of the format's
    /// (error objects keep theirs; an empty one is the format's).
    #[test]
    fn a_file_extension_names_data_objects_as_firehose_allows() {
        for good in ["", ".json.gz", ".jsonl", ".log_2-(a)*'!"] {
            assert_eq!(check_file_extension(good), Ok(()), "{good}");
        }
        for bad in ["gz", ".GZ", ".json gz", ".a/b", ".", ".é"] {
            assert!(check_file_extension(bad).is_err(), "{bad}");
        }
        assert!(check_file_extension(&format!(".{}", "a".repeat(MAX_FILE_EXTENSION))).is_err());
        let keys = ObjectKeys::new(Some("logs/"), None, "s", Tz::UTC).unwrap_or_else(|e| panic!("{e}"));
        let named = keys.clone().with_file_extension(Some(".jsonl.gz".into()));
        assert!(named.data_key(0, ".gz").ends_with(".jsonl.gz"));
        assert!(named.partition_data_key(0, &[] as &[&str], ".gz").ends_with(".jsonl.gz"));
        assert!(named.error_key(0, "processing-failed", ".gz").ends_with(".gz"));
        assert!(!named.error_key(0, "processing-failed", ".gz").ends_with(".jsonl.gz"));
        let unset = keys.with_file_extension(Some(String::new()));
        assert!(unset.data_key(0, ".gz").ends_with(".gz") && !unset.data_key(0, ".gz").ends_with(".jsonl.gz"));
    }
    use proptest::prelude::*;

    fn utc(ms: i64) -> DateTime<Utc> {
        Utc.timestamp_millis_opt(ms).single().unwrap_or_default()
    }

    fn render(t: &str, ms: i64) -> String {
        let mut s = String::new();
        ObjectKeyTemplate::parse(t).unwrap_or_else(|e| panic!("{t}: {e}")).render(
            &utc(ms),
            "processing-failed",
            &mut s,
        );
        s
    }

    #[test]
    fn renders_the_firehose_examples() {
        let ms = 1_535_371_200_000; // 2018-08-27T12:00:00Z
        assert_eq!(render("myPrefix/!{timestamp:yyyy/MM/dd}/", ms), "myPrefix/2018/08/27/");
        assert_eq!(render("!{timestamp:'year='yyyy'/month='MM}/", ms), "year=2018/month=08/");
        assert_eq!(render("e/!{firehose:error-output-type}/", ms), "e/processing-failed/");
        assert_eq!(render("it''s/!{timestamp:''yy''}", ms), "it''s/'18'");
        let random = render("!{firehose:random-string}", ms);
        assert_eq!(random.len(), 11);
        assert_eq!(&random[8..9], "-");
    }

    /// Java's `DateTimeFormatter` letters and counts, each written as its documentation says
    /// (English texts, Java's offset forms), at instants that reach their edges: midnight (`k` 24,
    /// `h` 12, `K` 0), noon, a leap year's last day, offsets east and west with and without
    /// minutes, and UTC.
    #[test]
    fn renders_java_pattern_letters_as_java_does() {
        let at = |zone: Tz, text: &str| {
            let t = DateTime::parse_from_rfc3339(text).unwrap_or_else(|e| panic!("{e}")).with_timezone(&zone);
            move |pattern: &str| {
                let mut out = String::new();
                let template = format!("!{{timestamp:{pattern}}}");
                ObjectKeyTemplate::parse(&template)
                    .unwrap_or_else(|e| panic!("{pattern}: {e}"))
                    .render(&t, "", &mut out);
                out
            }
        };
        // 2024-12-31 00:05:09.123456 in Tokyo (+09:00), a Tuesday, the 366th day, Q4.
        let tokyo = at(chrono_tz::Asia::Tokyo, "2024-12-30T15:05:09.123456Z");
        for (pattern, expected) in [
            ("y", "2024"),
            ("yy", "24"),
            ("yyy", "2024"),
            ("yyyy", "2024"),
            ("yyyyy", "02024"),
            ("uuuu", "2024"),
            ("M", "12"),
            ("MM", "12"),
            ("MMM", "Dec"),
            ("MMMM", "December"),
            ("MMMMM", "D"),
            ("LLL", "Dec"),
            ("Q", "4"),
            ("QQ", "04"),
            ("QQQ", "Q4"),
            ("QQQQ", "4th quarter"),
            ("QQQQQ", "4"),
            ("d", "31"),
            ("D", "366"),
            ("DD", "366"),
            ("E", "Tue"),
            ("EEE", "Tue"),
            ("EEEE", "Tuesday"),
            ("EEEEE", "T"),
            ("a", "AM"),
            ("H", "0"),
            ("HH", "00"),
            ("k", "24"),
            ("kk", "24"),
            ("K", "0"),
            ("h", "12"),
            ("hh", "12"),
            ("m", "5"),
            ("mm", "05"),
            ("s", "9"),
            ("ss", "09"),
            ("S", "1"),
            ("SSS", "123"),
            ("SSSSSS", "123456"),
            ("SSSSSSSSS", "123456000"),
            ("A", "309123"),
            ("AAAAAAAA", "00309123"),
            ("n", "123456000"),
            ("G", "AD"),
            ("GGGG", "Anno Domini"),
            ("GGGGG", "A"),
            ("X", "+09"),
            ("XX", "+0900"),
            ("XXX", "+09:00"),
            ("XXXX", "+0900"),
            ("XXXXX", "+09:00"),
            ("x", "+09"),
            ("xxx", "+09:00"),
            ("Z", "+0900"),
            ("ZZZZ", "GMT+09:00"),
            ("ZZZZZ", "+09:00"),
            ("O", "GMT+9"),
            ("OOOO", "GMT+09:00"),
            ("yyyy-MM-dd'T'HH:mm:ss.SSSXXX", "2024-12-31T00:05:09.123+09:00"),
            ("'dt='yyyy-MM-dd/'h='HH", "dt=2024-12-31/h=00"),
        ] {
            assert_eq!(tokyo(pattern), expected, "{pattern}");
        }
        // Noon and a half-hour offset west of UTC: Newfoundland (-03:30 in winter).
        let st_johns = at(chrono_tz::America::St_Johns, "2026-01-15T15:30:00Z");
        for (pattern, expected) in [
            ("a", "PM"),
            ("h", "12"),
            ("K", "0"),
            ("k", "12"),
            ("X", "-0330"),
            ("XX", "-0330"),
            ("XXX", "-03:30"),
            ("x", "-0330"),
            ("Z", "-0330"),
            ("O", "GMT-3:30"),
            ("OOOO", "GMT-03:30"),
            ("EEEE", "Thursday"),
            ("D", "15"),
            ("DD", "15"),
            ("DDD", "015"),
        ] {
            assert_eq!(st_johns(pattern), expected, "{pattern}");
        }
        // UTC: `X` and `ZZZZZ` write Z, `x` and `Z` digits, the localized forms GMT.
        let utc = at(Tz::UTC, "2026-07-04T18:00:00Z");
        for (pattern, expected) in [
            ("X", "Z"),
            ("XXX", "Z"),
            ("x", "+00"),
            ("xx", "+0000"),
            ("xxx", "+00:00"),
            ("Z", "+0000"),
            ("ZZZZ", "GMT"),
            ("ZZZZZ", "Z"),
            ("O", "GMT"),
            ("a", "PM"),
            ("h", "6"),
            ("K", "6"),
            ("QQQQ", "3rd quarter"),
            ("MMMM", "July"),
            ("EEE", "Sat"),
        ] {
            assert_eq!(utc(pattern), expected, "{pattern}");
        }
    }

    #[test]
    fn rejects_bad_expressions_with_their_offset() {
        let e = ObjectKeyTemplate::parse("a/!{timestamp:yyyy/ww}").unwrap_err();
        assert_eq!(e.offset, 19);
        assert!(e.message.contains("ww"));
        // Java refuses these counts too ("Too many pattern letters").
        for refused in ["ddd", "HHH", "aa", "MMMMMM", "EEEEEE", "SSSSSSSSSS", "XXXXXX", "OO", "ZZZZZZ", "QQQQQQ"] {
            let e = ObjectKeyTemplate::parse(&format!("!{{timestamp:{refused}}}")).unwrap_err();
            assert!(e.message.contains(refused), "{refused}: {e}");
        }
        // The locale's week fields and zone names are left out, said with what is supported.
        for left_out in ["YYYY", "w", "W", "e", "c", "F", "VV", "z", "v"] {
            let e = ObjectKeyTemplate::parse(&format!("!{{timestamp:{left_out}}}")).unwrap_err();
            assert!(e.hint.contains("not the locale's week letters"), "{left_out}: {e:?}");
        }
        assert!(ObjectKeyTemplate::parse("a/!{timestamp:yyyy").is_err());
        assert!(ObjectKeyTemplate::parse("a/{b}").is_err());
        assert!(ObjectKeyTemplate::parse("!{nope:x}").is_err());
        assert!(ObjectKeyTemplate::parse("!{firehose:nope}").is_err());
        assert!(ObjectKeyTemplate::parse("!{timestamp:'x'}").is_err());
    }

    #[test]
    fn every_rule_the_two_prefixes_break_is_reported_without_follow_on_errors() {
        let fields = |prefix: Option<&str>, error_prefix: Option<&str>| match ObjectKeys::new(
            prefix,
            error_prefix,
            "s",
            Tz::UTC,
        ) {
            Ok(_) => Vec::new(),
            Err(errors) => errors.0.iter().map(|e| (e.field, e.error.message.clone())).collect(),
        };
        let broken = fields(Some("a/!{firehose:error-output-type}/"), Some("e/!{partitionKeyFromQuery:k}/"));
        assert_eq!(broken.len(), 3, "{broken:?}");
        assert_eq!(broken[0].0, "prefix");
        assert!(broken[0].1.contains("allowed only in error_prefix"), "{broken:?}");
        assert_eq!(broken.iter().filter(|(field, _)| *field == "error_prefix").count(), 2, "{broken:?}");
        // A default error prefix repeats nothing the prefix already broke.
        let long = format!("{}/", "x".repeat(600));
        let broken = fields(Some(&long), None);
        assert_eq!(broken.len(), 1, "{broken:?}");
        assert!(broken[0].1.starts_with("prefix evaluates to"), "{broken:?}");
        // A prefix that does not parse still lets the error prefix be checked.
        let broken = fields(Some("a/!{nope:x}/"), Some("e/"));
        assert_eq!(broken.iter().map(|(field, _)| *field).collect::<Vec<_>>(), ["prefix", "error_prefix"]);
    }

    #[test]
    fn prefixes_that_make_unstorable_keys_are_refused_where_they_go_wrong() {
        let refused = |prefix: &str| {
            ObjectKeys::new(Some(prefix), Some("e/!{firehose:error-output-type}/"), "s", Tz::UTC)
                .map(|_| ())
                .map_err(|e| (e.0[0].field, e.0[0].error.offset))
        };
        assert_eq!(refused("../../escape/"), Err(("prefix", 0)));
        assert_eq!(refused("/abs/"), Err(("prefix", 0)));
        assert_eq!(refused("a/./b/"), Err(("prefix", 0)));
        assert_eq!(refused("a//b/"), Err(("prefix", 0)));
        assert_eq!(refused("logs/!{timestamp:'../../'yyyy}/"), Err(("prefix", 5)));
        assert_eq!(refused("!{timestamp:yyyy}/../../"), Err(("prefix", 17)));
        assert_eq!(refused("a\tb/"), Err(("prefix", 0)));
        assert_eq!(refused("logs/!{timestamp:yyyy}/.."), Ok(()), "a last segment is joined to the object name");
        assert_eq!(refused("logs/..data/!{timestamp:yyyy}/"), Ok(()));
        let error = ObjectKeys::new(Some("ok/"), Some("../!{firehose:error-output-type}/"), "s", Tz::UTC).unwrap_err();
        assert_eq!(error.0[0].field, "error_prefix");
    }

    /// A partition's key values are checked against the store's keys: its data key (name and
    /// extension included) at most `key_bytes`, each part between two `/` at most `segment_bytes`,
    /// in bytes of UTF-8, not characters.
    #[test]
    fn a_partition_whose_key_the_store_cannot_hold_is_refused() {
        let keys = ObjectKeys::new(
            Some("account=!{partitionKeyFromQuery:a}/!{timestamp:yyyy}/"),
            Some("e/!{firehose:error-output-type}/"),
            "stream",
            Tz::UTC,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let files = KeyLimits { key_bytes: 4000, segment_bytes: KeyLimits::FILE_NAME_BYTES };
        let check = |value: &str, limits: KeyLimits| keys.check_partition(&[value.to_string()], limits, ".parquet");
        // `account=` and 247 bytes make a file name of 255.
        assert_eq!(check(&"a".repeat(247), files), Ok(()));
        let refused = check(&"a".repeat(248), files).unwrap_err();
        assert!(refused.contains("256 bytes") && refused.contains("at most 255"), "{refused}");
        assert!(check(&"é".repeat(124), files).is_err(), "two bytes a character");
        assert_eq!(check(&"a".repeat(300), KeyLimits::OBJECT_STORE), Ok(()));
        // Under 512 characters, over 1,024 bytes with the object's name.
        let cjk = "中".repeat(320);
        assert!(cjk.chars().count() < MAX_EVALUATED_PREFIX);
        let refused = check(&cjk, KeyLimits::OBJECT_STORE).unwrap_err();
        assert!(refused.contains("at most 1024"), "{refused}");
        assert_eq!(check(&"中".repeat(300), KeyLimits::OBJECT_STORE), Ok(()));
        let key = keys.partition_data_key(0, &["中".repeat(300)], ".parquet");
        assert_eq!(key.len(), "account=".len() + 900 + "/1970/stream-1-1970-01-01-00-00-00-".len() + 36 + 8);
    }

    /// A prefix whose literal text alone is too long for the store is found before any record
    /// (data keys with the format's extension; error keys with the longest error-output type);
    /// the widest rendering has the longest month and day names.
    #[test]
    fn prefixes_too_long_for_the_store_are_found_before_any_record() {
        let keys = |prefix: &str, error_prefix: &str| {
            ObjectKeys::new(Some(prefix), Some(error_prefix), "s", Tz::UTC).unwrap_or_else(|e| panic!("{e}"))
        };
        let files = KeyLimits { key_bytes: 4000, segment_bytes: KeyLimits::FILE_NAME_BYTES };
        let ok = keys("logs/!{partitionKeyFromQuery:a}/", "e/!{firehose:error-output-type}/");
        assert_eq!(ok.check_data_limits(files, ".gz"), Ok(()));
        assert_eq!(ok.check_error_limits(files, DestinationKind::OpenSearch), Ok(()));
        let long_folder = keys(&format!("{}/", "f".repeat(256)), "e/!{firehose:error-output-type}/");
        assert!(long_folder.check_data_limits(files, ".gz").is_err());
        assert_eq!(long_folder.check_data_limits(KeyLimits::OBJECT_STORE, ".gz"), Ok(()));
        let named = keys(&format!("{}!{{timestamp:MMMM}}/", "m".repeat(246)), "e/!{firehose:error-output-type}/");
        assert_eq!(named.check_data_limits(files, ".gz"), Ok(()), "246 + `September` is 255");
        let named = keys(&format!("{}!{{timestamp:MMMM}}/", "m".repeat(247)), "e/!{firehose:error-output-type}/");
        assert!(named.check_data_limits(files, "").is_err(), "247 + `September` is 256");
        // `AmazonOpenSearchService-failed` (30) in place of `s3-failed` (9) in an error key.
        let error_limit = |length: usize| KeyLimits { key_bytes: length, segment_bytes: length };
        let long_types = keys("d/", "e/!{firehose:error-output-type}/");
        let bytes = |kind| long_types.error_key(0, ErrorOutputType::longest_name(kind), ".snappy").len();
        let (s3, opensearch) = (bytes(DestinationKind::S3), bytes(DestinationKind::OpenSearch));
        assert_eq!(opensearch - s3, 30 - "format-conversion-failed".len());
        assert_eq!(long_types.check_error_limits(error_limit(opensearch), DestinationKind::OpenSearch), Ok(()));
        assert!(long_types.check_error_limits(error_limit(opensearch - 1), DestinationKind::OpenSearch).is_err());
        assert_eq!(long_types.check_error_limits(error_limit(s3), DestinationKind::S3), Ok(()));
    }

    #[test]
    fn applies_the_prefix_rules() {
        let keys = ObjectKeys::new(Some("logs/"), None, "s", Tz::UTC).unwrap_or_else(|e| panic!("{e}"));
        let k = keys.data_key(1_535_371_200_000, ".gz");
        assert!(k.starts_with("logs/2018/08/27/12/s-1-2018-08-27-12-00-00-"), "{k}");
        assert!(k.ends_with(".gz"));
        let e = keys.error_key(1_535_371_200_000, "format-conversion-failed", "");
        assert!(e.starts_with("logs/format-conversion-failed/2018/08/27/12/s-1-"), "{e}");

        assert_eq!(ObjectKeys::new(Some("x/!{timestamp:yyyy}/"), None, "s", Tz::UTC).unwrap_err().0[0].field, "prefix");
        assert_eq!(ObjectKeys::new(Some("x/"), Some("errors/"), "s", Tz::UTC).unwrap_err().0[0].field, "error_prefix");
        assert!(
            ObjectKeys::new(
                Some("!{firehose:error-output-type}"),
                Some("e/!{firehose:error-output-type}"),
                "s",
                Tz::UTC
            )
            .is_err()
        );
        let tokyo = ObjectKeys::new(None, None, "s", chrono_tz::Asia::Tokyo).unwrap_or_else(|e| panic!("{e}"));
        assert!(tokyo.data_key(1_535_371_200_000, "").starts_with("2018/08/27/21/s-1-2018-08-27-21-00-00-"));
    }

    /// Converts our supported Java letters into a chrono format string: an independent oracle.
    fn strftime_of(java: &[(&str, &str)]) -> (String, String) {
        let mut pattern = String::new();
        let mut chrono_fmt = String::new();
        for (j, c) in java {
            pattern.push_str(j);
            chrono_fmt.push_str(c);
        }
        (pattern, chrono_fmt)
    }

    proptest! {
        #[test]
        fn timestamp_patterns_match_chrono(
            ms in 0i64..4_102_444_800_000,
            pieces in proptest::collection::vec(0usize..26, 1..8),
        ) {
            let table: [(&str, &str); 26] = [
                ("yyyy", "%Y"), ("yy", "%y"), ("MM", "%m"), ("dd", "%d"), ("HH", "%H"),
                ("mm", "%M"), ("ss", "%S"), ("/", "/"), ("'T'", "T"), ("-", "-"),
                ("M", "%-m"), ("d", "%-d"), ("H", "%-H"), ("DDD", "%j"), ("D", "%-j"),
                ("MMM", "%b"), ("MMMM", "%B"), ("EEE", "%a"), ("EEEE", "%A"), ("a", "%p"),
                ("hh", "%I"), ("h", "%-I"), ("SSS", "%3f"), ("SSSSSS", "%6f"), ("uuuu", "%Y"),
                ("xxx", "%:z"),
            ];
            // Adjacent identical letter runs would merge (yyyy+yy = yyyyyy): separate them.
            let mut chosen: Vec<(&str, &str)> = Vec::new();
            for p in pieces {
                chosen.push(table[p]);
                chosen.push(("_", "_"));
            }
            // A pattern needs at least one date or time field.
            chosen.push(("HH", "%H"));
            let (pattern, chrono_fmt) = strftime_of(&chosen);
            let template = format!("p/!{{timestamp:{pattern}}}/q");
            let expected = format!("p/{}/q", utc(ms).format(&chrono_fmt));
            prop_assert_eq!(render(&template, ms), expected);
        }

        #[test]
        fn object_names_follow_the_firehose_shape(ms in 0i64..4_102_444_800_000) {
            let keys = ObjectKeys::new(Some("a/!{timestamp:yyyy}/"), Some("e/!{firehose:error-output-type}/"), "my-stream", Tz::UTC)
                .map_err(|e| TestCaseError::fail(e.to_string()))?;
            let key = keys.data_key(ms, ".gz");
            let t = utc(ms);
            let head = format!("a/{}/my-stream-1-{}-", t.format("%Y"), t.format("%Y-%m-%d-%H-%M-%S"));
            prop_assert!(key.starts_with(&head), "{} vs {}", key, head);
            let uuid = &key[head.len()..key.len() - 3];
            prop_assert!(uuid::Uuid::parse_str(uuid).is_ok(), "{}", uuid);
            prop_assert!(key.ends_with(".gz"));
        }

        /// Whatever the key values and the instant, a partition the check lets through names
        /// objects in the template's folders: as many segments, none empty, `.` or `..`, no
        /// control character, within the store's limits (the check renders the widest instant, in
        /// the sink's zone, with its longest month and day names).
        #[test]
        fn a_checked_partition_never_changes_the_folders_or_outgrows_the_store(
            a in "[a./é中\\x00-\\x1f]{0,90}",
            b in prop_oneof![Just(String::new()), Just("..".to_string()), "[a-z.]{1,4}", "x{200,300}"],
            ms in 0i64..4_102_444_800_000,
            zone in prop_oneof![Just(Tz::UTC), Just(Tz::Europe__London), Just(Tz::America__St_Johns)],
            limits in prop_oneof![
                Just(KeyLimits::OBJECT_STORE),
                Just(KeyLimits { key_bytes: 300, segment_bytes: KeyLimits::FILE_NAME_BYTES }),
            ],
        ) {
            let template = "t/!{partitionKeyFromQuery:a}/!{timestamp:MMMM-EEEE-X}/b=!{partitionKeyFromQuery:b}/";
            let keys = ObjectKeys::new(Some(template), Some("e/!{firehose:error-output-type}/"), "s", zone)
                .map_err(|e| TestCaseError::fail(e.to_string()))?;
            let values = [a, b];
            if keys.check_partition(&values, limits, ".parquet").is_ok() {
                let key = keys.partition_data_key(ms, &values, ".parquet");
                prop_assert_eq!(key.split('/').count(), 5, "{}", key);
                prop_assert!(key.split('/').all(|s| !s.is_empty() && s != "." && s != ".."), "{}", key);
                prop_assert!(!key.chars().any(char::is_control), "{:?}", key);
                prop_assert_eq!(limits.check(&key), Ok(()));
            } else {
                prop_assert!(
                    values.iter().any(|v| v.is_empty() || v == "." || v == ".." || v.contains('/')
                        || v.chars().any(char::is_control) || v.len() > 150),
                    "{:?} refused", values
                );
            }
        }
    }
}

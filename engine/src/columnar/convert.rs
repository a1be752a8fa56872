//! JSON records to typed rows, with the semantics of Firehose's OpenX JSON SerDe (docs/firehose.md §4).
//!
//! Keys match case-insensitively by default (`case_insensitive`), dots in keys can become
//! underscores (`dots_to_underscores`), and columns can read another key (`column_to_json_key`).
//! A record may hold several concatenated JSON objects, each a row. Extra keys are ignored; a missing
//! key is null. Guarantees: a record converts completely or not at all: on any value that does not fit
//! its column, [`RowConverter::convert`] returns an error naming the column and the value, and adds
//! no row.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use chrono::{DateTime, NaiveDate, NaiveDateTime};
use serde_json::Value;

use super::columns::{Cell, Columns, Leaf, ValueTooLarge};
use super::schema::{Column, ColumnType, TableSchema, TimestampFormat};

/// How JSON keys are matched to columns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JsonOptions {
    /// Match keys ignoring case (OpenX `CaseInsensitive`, default true).
    pub case_insensitive: bool,
    /// Read `a.b` as `a_b` (OpenX `ConvertDotsInJsonKeysToUnderscores`, default false).
    pub dots_to_underscores: bool,
    /// Column name → JSON key (OpenX `ColumnToJsonKeyMappings`).
    pub column_to_json_key: BTreeMap<String, String>,
}

impl Default for JsonOptions {
    fn default() -> Self {
        JsonOptions { case_insensitive: true, dots_to_underscores: false, column_to_json_key: BTreeMap::new() }
    }
}

/// A value that does not fit its column.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("column `{column}`: {message}")]
pub struct ConversionError {
    /// The column (dotted path for nested fields).
    pub column: String,
    /// What did not fit.
    pub message: String,
}

/// A JSON value as read for a scalar column, borrowed from the record where it can be.
#[derive(Debug, Clone)]
enum Scalar<'a> {
    Null,
    Bool(bool),
    Number(serde_json::Number),
    Str(&'a str),
    /// An object or array.
    Composite(&'a Value),
}

impl<'a> Scalar<'a> {
    fn of(v: &'a Value) -> Self {
        match v {
            Value::Null => Scalar::Null,
            Value::Bool(b) => Scalar::Bool(*b),
            Value::Number(n) => Scalar::Number(n.clone()),
            Value::String(s) => Scalar::Str(s),
            other => Scalar::Composite(other),
        }
    }

    /// The value as JSON text, cut at 80 characters, for error messages.
    fn short(&self) -> String {
        let text = match self {
            Scalar::Null => "null".to_string(),
            Scalar::Bool(b) => b.to_string(),
            Scalar::Number(n) => n.to_string(),
            Scalar::Str(s) => Value::from(*s).to_string(),
            Scalar::Composite(v) => v.to_string(),
        };
        if text.chars().count() > 80 { format!("{}…", text.chars().take(80).collect::<String>()) } else { text }
    }
}

/// Converts records for one schema.
#[derive(Debug)]
pub struct RowConverter {
    schema: Arc<TableSchema>,
    options: JsonOptions,
    /// Normalized JSON key → column index.
    lookup: HashMap<String, usize>,
}

fn fail<T>(column: &str, message: String) -> Result<T, ConversionError> {
    Err(ConversionError { column: column.to_string(), message })
}

fn err(column: &str, message: String) -> ConversionError {
    ConversionError { column: column.to_string(), message }
}

fn too_large(column: &str, e: ValueTooLarge) -> ConversionError {
    err(column, e.to_string())
}

/// Keys remembered by their position in the previous record: records of one stream nearly always
/// list the same keys in the same order, so a key is matched by one comparison with the key at the
/// same position last time instead of being normalized and hashed.
#[derive(Debug, Default)]
pub struct KeyMemo(Vec<(Box<str>, Option<usize>)>);

/// Whether `a` and `b` hold the same bytes: keys of up to 32 bytes (nearly every JSON key) are
/// compared a word at a time in line, instead of through a call to `memcmp` per key (measured: the
/// memo's comparisons were 2.9 % of a Parquet run's CPU, most of it the call).
#[inline]
fn same_bytes(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let word = |s: &[u8], at: usize| s.get(at..at + 8).and_then(|w| w.first_chunk::<8>()).copied();
    match a.len() {
        0..8 => a.iter().zip(b).all(|(x, y)| x == y),
        // Words at 0, 8, 16 as far as they fit, and the last word (overlapping the one before).
        len @ 8..=32 => {
            let last = len - 8;
            (0..last).step_by(8).chain([last]).all(|at| word(a, at) == word(b, at))
        }
        _ => a == b,
    }
}

/// Positions remembered per record; keys past this are looked up every time.
const KEY_MEMO_POSITIONS: usize = 256;

impl RowConverter {
    /// A converter for `schema` with `options`.
    pub fn new(schema: Arc<TableSchema>, options: JsonOptions) -> Self {
        let mut lookup = HashMap::new();
        for (i, column) in schema.columns.iter().enumerate() {
            let key = options.column_to_json_key.get(&column.name).unwrap_or(&column.json_key);
            lookup.insert(normalize(key, &options), i);
        }
        RowConverter { schema, options, lookup }
    }

    /// The schema.
    pub fn schema(&self) -> &Arc<TableSchema> {
        &self.schema
    }

    /// Empty columns to convert records into.
    pub fn new_columns(&self) -> Columns {
        Columns::new(Arc::clone(&self.schema))
    }

    /// The column a JSON key feeds, if any. Keys that need no normalizing are looked up as they are.
    fn column_of(&self, key: &str) -> Option<usize> {
        let plain = !(self.options.case_insensitive && key.bytes().any(|b| b.is_ascii_uppercase() || b >= 0x80)
            || self.options.dots_to_underscores && key.contains('.'));
        if plain { self.lookup.get(key).copied() } else { self.lookup.get(&normalize(key, &self.options)).copied() }
    }

    /// [`Self::column_of`] through the memo of the key at `position` in the previous record.
    fn column_at(&self, key: &str, position: usize, memo: &mut KeyMemo) -> Option<usize> {
        match memo.0.get_mut(position) {
            Some((known, column)) if same_bytes(known.as_bytes(), key.as_bytes()) => *column,
            Some(slot) => {
                let column = self.column_of(key);
                *slot = (key.into(), column);
                column
            }
            None => {
                let column = self.column_of(key);
                if position == memo.0.len() && position < KEY_MEMO_POSITIONS {
                    memo.0.push((key.into(), column));
                }
                column
            }
        }
    }

    /// Whether JSON key `key` names struct field `field`, without allocating in the common case.
    fn same_key(&self, key: &str, field: &str) -> bool {
        if self.options.dots_to_underscores || !key.is_ascii() || !field.is_ascii() {
            return normalize(key, &self.options) == normalize(field, &self.options);
        }
        if self.options.case_insensitive { key.eq_ignore_ascii_case(field) } else { key == field }
    }

    /// Converts every JSON object in `record` into a row appended to `columns`, or none of them;
    /// returns the rows added.
    ///
    /// The record is read key by key (no map is built): values go straight into their column's
    /// buffer, strings without escapes are copied once, and values of keys no column reads are
    /// skipped without being materialized.
    pub fn convert(&self, record: &[u8], columns: &mut Columns, memo: &mut KeyMemo) -> Result<usize, ConversionError> {
        let before = columns.rows();
        let result = self.convert_into(record, columns, memo);
        if result.is_err() {
            // All or nothing: drop the rows of the record's earlier objects and the partial row.
            columns.truncate(before);
        }
        result.map(|()| columns.rows() - before)
    }

    fn convert_into(&self, record: &[u8], columns: &mut Columns, memo: &mut KeyMemo) -> Result<(), ConversionError> {
        let not_json = |message: String| err("(record)", format!("not a JSON object: {message}"));
        // One (SIMD) validation of the whole record instead of one per string.
        let text = match simdutf8::basic::from_utf8(record) {
            Ok(text) => text,
            Err(_) => {
                return Err(not_json(std::str::from_utf8(record).err().map_or_else(String::new, |e| e.to_string())));
            }
        };
        let mut de = serde_json::Deserializer::from_str(text);
        loop {
            let mut failure = None;
            let parsed = serde::de::DeserializeSeed::deserialize(
                RowSeed { converter: self, columns, memo, failure: &mut failure },
                &mut de,
            );
            if let Some(failure) = failure {
                return Err(failure);
            }
            parsed.map_err(|e| not_json(e.to_string()))?;
            for (index, column) in self.schema.columns.iter().enumerate() {
                if !column.nullable && !columns.has_value(index) {
                    return fail(&column.name, "is not nullable and the record has no value for it".into());
                }
            }
            columns.end_row().map_err(|e| too_large("(record)", e))?;
            if de.end().is_ok() {
                return Ok(());
            }
        }
    }

    /// Converts a value of a nested column (or a nested field) into a cell tree.
    fn cell(
        &self,
        ty: &ColumnType,
        v: Value,
        formats: &[TimestampFormat],
        path: &str,
    ) -> Result<Cell, ConversionError> {
        let kind = |v: &Value, name: &str| format!("cannot read {} as {name}", Scalar::of(v).short());
        Ok(match ty {
            _ if v.is_null() => Cell::Null,
            ColumnType::Array(inner) => match v {
                Value::Array(items) => {
                    let path = format!("{path}[]");
                    Cell::List(
                        items
                            .into_iter()
                            .map(|item| self.cell(inner, item, formats, &path))
                            .collect::<Result<_, _>>()?,
                    )
                }
                other => return fail(path, kind(&other, "array")),
            },
            ColumnType::Struct(fields) => match v {
                Value::Object(map) => {
                    let mut cells = vec![Cell::Null; fields.len()];
                    for (k, value) in map {
                        if let Some(i) = fields.iter().position(|(name, _)| self.same_key(&k, name)) {
                            let (name, ty) = &fields[i];
                            cells[i] = self.cell(ty, value, formats, &format!("{path}.{name}"))?;
                        }
                    }
                    Cell::Struct(cells)
                }
                other => return fail(path, kind(&other, "struct")),
            },
            ColumnType::Map(key_ty, value_ty) => match v {
                Value::Object(map) => {
                    let mut entries = Vec::with_capacity(map.len());
                    for (k, value) in map {
                        let value_path = format!("{path}[{k}]");
                        let key = self.cell(key_ty, Value::String(k), formats, &format!("{path} key"))?;
                        entries.push((key, self.cell(value_ty, value, formats, &value_path)?));
                    }
                    Cell::Map(entries)
                }
                other => return fail(path, kind(&other, "map")),
            },
            scalar => Cell::from(leaf(scalar, Scalar::of(&v), formats, path)?),
        })
    }
}

/// Converts a non-null JSON value for a scalar column: the one place the OpenX coercions live.
fn leaf<'a>(
    ty: &ColumnType,
    v: Scalar<'a>,
    formats: &[TimestampFormat],
    path: &str,
) -> Result<Leaf<'a>, ConversionError> {
    let kind = |v: &Scalar<'_>, name: &str| format!("cannot read {} as {name}", v.short());
    Ok(match ty {
        _ if matches!(v, Scalar::Null) => Leaf::Null,
        ColumnType::String => Leaf::Text(text_of(v)),
        ColumnType::Varchar(n) | ColumnType::Char(n) => {
            let too_long = |v: &Scalar<'_>| format!("{} is longer than {n} characters", v.short());
            let text = text_of(v.clone());
            // A string no longer in bytes than the limit is short enough in characters.
            if text.len() > *n as usize && text.chars().count() > *n as usize {
                return fail(path, too_long(&v));
            }
            Leaf::Text(text)
        }
        ColumnType::Boolean => match &v {
            Scalar::Bool(b) => Leaf::Bool(*b),
            Scalar::Str(s) if s.eq_ignore_ascii_case("true") => Leaf::Bool(true),
            Scalar::Str(s) if s.eq_ignore_ascii_case("false") => Leaf::Bool(false),
            _ => return fail(path, kind(&v, "boolean")),
        },
        ColumnType::TinyInt => {
            Leaf::Int(int_in(&v, i8::MIN as i64, i8::MAX as i64).ok_or_else(|| err(path, kind(&v, "tinyint")))?)
        }
        ColumnType::SmallInt => {
            Leaf::Int(int_in(&v, i16::MIN as i64, i16::MAX as i64).ok_or_else(|| err(path, kind(&v, "smallint")))?)
        }
        ColumnType::Int => {
            Leaf::Int(int_in(&v, i32::MIN as i64, i32::MAX as i64).ok_or_else(|| err(path, kind(&v, "int")))?)
        }
        ColumnType::BigInt => Leaf::Int(int_in(&v, i64::MIN, i64::MAX).ok_or_else(|| err(path, kind(&v, "bigint")))?),
        ColumnType::Float | ColumnType::Double => {
            // Infinity and NaN written as such are kept; a number past the column's range is a
            // value that does not fit, never stored as an infinity.
            let value = match &v {
                Scalar::Number(n) => n.as_f64().ok_or_else(|| err(path, kind(&v, "a number")))?,
                Scalar::Str(s) => s.trim().parse::<f64>().map_err(|_| err(path, kind(&v, "a number")))?,
                _ => return fail(path, kind(&v, "a number")),
            };
            let (in_range, name) = match ty {
                ColumnType::Float => ((value as f32).is_finite(), "float (32-bit)"),
                _ => (value.is_finite(), "double"),
            };
            // (Looked at only for a value out of range: no work for the others.)
            let written_infinite = || match &v {
                Scalar::Str(s) => s.as_bytes().windows(3).any(|w| w.eq_ignore_ascii_case(b"inf")),
                _ => false,
            };
            if !(in_range || value.is_nan() || written_infinite()) {
                return fail(path, format!("{} is out of range for {name}", v.short()));
            }
            Leaf::Float(value)
        }
        ColumnType::Decimal { precision, scale } => {
            let parsed = match &v {
                Scalar::Number(n) => parse_decimal(&n.to_string(), *precision, *scale),
                Scalar::Str(s) => parse_decimal(s.trim(), *precision, *scale),
                _ => return fail(path, kind(&v, "decimal")),
            };
            Leaf::Decimal(parsed.map_err(|m| err(path, format!("{}: {m}", kind(&v, "decimal"))))?)
        }
        ColumnType::Date => {
            Leaf::Date(parse_date(&v).ok_or_else(|| err(path, format!("{} (expected yyyy-MM-dd)", kind(&v, "date"))))?)
        }
        ColumnType::Timestamp => Leaf::Micros(parse_timestamp(&v, formats).ok_or_else(|| {
            err(
                path,
                if formats.is_empty() {
                    format!(
                        "{} (expected ISO-8601, yyyy-MM-dd HH:mm:ss[.S], epoch seconds or milliseconds)",
                        kind(&v, "timestamp")
                    )
                } else {
                    format!("{} with the column's formats", kind(&v, "timestamp"))
                },
            )
        })?),
        ColumnType::Binary => match v {
            Scalar::Str(s) => Leaf::Bytes(Cow::Borrowed(s.as_bytes())),
            other => return fail(path, kind(&other, "binary")),
        },
        ColumnType::Array(_) | ColumnType::Struct(_) | ColumnType::Map(..) => {
            return fail(path, format!("{} is not a scalar column's value", v.short()));
        }
    })
}

/// Reads one top-level JSON object into the columns' row being built.
struct RowSeed<'s> {
    converter: &'s RowConverter,
    columns: &'s mut Columns,
    memo: &'s mut KeyMemo,
    /// A value that did not fit its column (the parse is aborted with a placeholder error).
    failure: &'s mut Option<ConversionError>,
}

/// An object's key, borrowed from the record when it has no escapes (the csv format's members
/// too).
pub(crate) struct Key<'de>(pub(crate) Cow<'de, str>);

impl<'de> serde::Deserialize<'de> for Key<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl<'de> serde::de::Visitor<'de> for KeyVisitor {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a key")
            }
            fn visit_borrowed_str<E: serde::de::Error>(self, v: &'de str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Borrowed(v)))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(v.to_string())))
            }
        }
        d.deserialize_str(KeyVisitor)
    }
}

impl<'de> serde::de::DeserializeSeed<'de> for RowSeed<'_> {
    type Value = ();
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> serde::de::Visitor<'de> for RowSeed<'_> {
    type Value = ();
    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON object")
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let mut position = 0;
        while let Some(Key(key)) = map.next_key::<Key<'de>>()? {
            let column = self.converter.column_at(&key, position, self.memo);
            position += 1;
            match column {
                Some(index) => map.next_value_seed(ValueSeed {
                    converter: self.converter,
                    columns: &mut *self.columns,
                    index,
                    failure: &mut *self.failure,
                })?,
                None => {
                    map.next_value::<serde::de::IgnoredAny>()?;
                }
            }
        }
        Ok(())
    }
}

/// Reads one value into column `index` of the row being built.
struct ValueSeed<'s> {
    converter: &'s RowConverter,
    columns: &'s mut Columns,
    index: usize,
    failure: &'s mut Option<ConversionError>,
}

impl<'s> ValueSeed<'s> {
    fn column(&self) -> &'s Column {
        &self.converter.schema.columns[self.index]
    }

    /// Stores `result`'s failure and aborts the parse.
    fn done<E: serde::de::Error>(self, result: Result<(), ConversionError>) -> Result<(), E> {
        result.map_err(|failure| {
            *self.failure = Some(failure);
            E::custom("value does not fit its column")
        })
    }

    fn put<E: serde::de::Error>(self, v: Scalar<'_>) -> Result<(), E> {
        let column = &self.converter.schema.columns[self.index];
        if let (Scalar::Str(s), ColumnType::String) = (&v, &column.ty) {
            // The most common value by far: a string for a string column, stored as it is.
            let result = self.columns.set_text(self.index, s).map_err(|e| too_large(&column.name, e));
            return self.done(result);
        }
        let result = match v {
            Scalar::Null if !column.nullable => {
                fail(&column.name, "is not nullable and the record has no value for it".into())
            }
            v => leaf(&column.ty, v, &column.formats, &column.name)
                .and_then(|leaf| self.columns.set(self.index, leaf).map_err(|e| too_large(&column.name, e))),
        };
        self.done(result)
    }
}

impl<'de> serde::de::DeserializeSeed<'de> for ValueSeed<'_> {
    type Value = ();
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        let column = self.column();
        if !matches!(column.ty, ColumnType::Array(_) | ColumnType::Struct(_) | ColumnType::Map(..)) {
            return d.deserialize_any(self);
        }
        let value = <Value as serde::Deserialize>::deserialize(d)?;
        let result = if value.is_null() && !column.nullable {
            fail(&column.name, "is not nullable and the record has no value for it".into())
        } else {
            self.converter
                .cell(&column.ty, value, &column.formats, &column.name)
                .and_then(|cell| self.columns.set_cell(self.index, cell).map_err(|e| too_large(&column.name, e)))
        };
        self.done(result)
    }
}

impl<'de> serde::de::Visitor<'de> for ValueSeed<'_> {
    type Value = ();
    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_unit<E: serde::de::Error>(self) -> Result<(), E> {
        self.put(Scalar::Null)
    }
    fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<(), E> {
        self.put(Scalar::Bool(v))
    }
    fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<(), E> {
        self.put(Scalar::Number(v.into()))
    }
    fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<(), E> {
        self.put(Scalar::Number(v.into()))
    }
    fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<(), E> {
        match serde_json::Number::from_f64(v) {
            Some(n) => self.put(Scalar::Number(n)),
            None => self.put(Scalar::Null),
        }
    }
    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<(), E> {
        self.put(Scalar::Str(v))
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, seq: A) -> Result<(), A::Error> {
        let value = <Value as serde::Deserialize>::deserialize(serde::de::value::SeqAccessDeserializer::new(seq))?;
        self.put(Scalar::Composite(&value))
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<(), A::Error> {
        let value = <Value as serde::Deserialize>::deserialize(serde::de::value::MapAccessDeserializer::new(map))?;
        self.put(Scalar::Composite(&value))
    }
}

/// A JSON key as matched: lowercased when keys are case-insensitive, dots as underscores if asked.
pub(crate) fn normalize(key: &str, options: &JsonOptions) -> String {
    let mut k = if options.case_insensitive { key.to_lowercase() } else { key.to_string() };
    if options.dots_to_underscores {
        k = k.replace('.', "_");
    }
    k
}

/// A string column's text: strings as is, anything else as its JSON text.
fn text_of(v: Scalar<'_>) -> Cow<'_, str> {
    match v {
        Scalar::Str(s) => Cow::Borrowed(s),
        Scalar::Null => Cow::Borrowed("null"),
        Scalar::Bool(b) => Cow::Borrowed(if b { "true" } else { "false" }),
        Scalar::Number(n) => Cow::Owned(n.to_string()),
        Scalar::Composite(v) => Cow::Owned(v.to_string()),
    }
}

/// `f` as an integer when it is one `i64` holds: a cast saturates (`1e30` and 2^63 would be
/// `i64::MAX`, a value the record never held), so what lies beyond is refused.
fn whole_i64(f: f64) -> Option<i64> {
    const TWO_TO_63: f64 = 9_223_372_036_854_775_808.0;
    (f.fract() == 0.0 && (-TWO_TO_63..TWO_TO_63).contains(&f)).then_some(f as i64)
}

fn int_in(v: &Scalar<'_>, min: i64, max: i64) -> Option<i64> {
    let n = match v {
        Scalar::Number(n) => match n.as_i64() {
            Some(i) => i,
            None => whole_i64(n.as_f64()?)?,
        },
        Scalar::Str(s) => s.trim().parse().ok()?,
        _ => return None,
    };
    (min..=max).contains(&n).then_some(n)
}

fn parse_date(v: &Scalar<'_>) -> Option<i32> {
    let epoch = NaiveDate::from_ymd_opt(1970, 1, 1)?;
    match v {
        Scalar::Str(s) => {
            let s = s.trim();
            let date_part = s.get(..10).filter(|_| s.len() > 10).unwrap_or(s);
            let d = NaiveDate::parse_from_str(date_part, "%Y-%m-%d").ok()?;
            i32::try_from((d - epoch).num_days()).ok()
        }
        Scalar::Number(n) => i32::try_from(n.as_i64()?).ok(),
        _ => None,
    }
}

/// Integers at or above this magnitude are epoch milliseconds; below, epoch seconds.
pub const EPOCH_MILLIS_THRESHOLD: i64 = 100_000_000_000;

fn parse_timestamp(v: &Scalar<'_>, formats: &[TimestampFormat]) -> Option<i64> {
    if formats.is_empty() {
        return parse_timestamp_default(v);
    }
    formats.iter().find_map(|f| match (f, v) {
        (TimestampFormat::EpochSeconds, _) => integer_of(v).and_then(|s| s.checked_mul(1_000_000)),
        (TimestampFormat::EpochMillis, _) => integer_of(v).and_then(|ms| ms.checked_mul(1_000)),
        (TimestampFormat::Pattern { chrono, zoned: true, .. }, Scalar::Str(s)) => {
            DateTime::parse_from_str(s.trim(), chrono).ok().map(|t| t.timestamp_micros())
        }
        (TimestampFormat::Pattern { chrono, zoned: false, .. }, Scalar::Str(s)) => {
            NaiveDateTime::parse_from_str(s.trim(), chrono).ok().map(|t| t.and_utc().timestamp_micros())
        }
        _ => None,
    })
}

fn integer_of(v: &Scalar<'_>) -> Option<i64> {
    match v {
        Scalar::Number(n) => n.as_i64(),
        Scalar::Str(s) => s.trim().parse().ok(),
        _ => None,
    }
}

fn epoch_number_micros(n: &serde_json::Number) -> Option<i64> {
    if let Some(i) = n.as_i64() {
        return if i.unsigned_abs() >= EPOCH_MILLIS_THRESHOLD.unsigned_abs() {
            i.checked_mul(1_000)
        } else {
            i.checked_mul(1_000_000)
        };
    }
    whole_i64((n.as_f64()? * 1e6).round())
}

/// The OpenX formats: ISO-8601 (`T`, up to 9 fractional digits, `Z` or an offset, or none for UTC),
/// `yyyy-[M]M-[d]d HH:mm:ss[.S]`, epoch seconds, epoch milliseconds, float epoch seconds.
fn parse_timestamp_default(v: &Scalar<'_>) -> Option<i64> {
    match v {
        Scalar::Number(n) => epoch_number_micros(n),
        Scalar::Str(s) => {
            let s = s.trim();
            rfc3339_micros(s).or_else(|| text_timestamp_micros(s))
        }
        _ => None,
    }
}

/// A timestamp's text read by chrono's general parsers, in the order the OpenX formats are tried.
fn text_timestamp_micros(s: &str) -> Option<i64> {
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Some(t.timestamp_micros());
    }
    for pattern in ["%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%d %H:%M:%S%.f"] {
        if let Ok(t) = NaiveDateTime::parse_from_str(s, pattern) {
            return Some(t.and_utc().timestamp_micros());
        }
    }
    if let Ok(t) = DateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S%.f%#z") {
        return Some(t.timestamp_micros());
    }
    let number: serde_json::Number = s.parse().ok()?;
    epoch_number_micros(&number)
}

/// Whether the fast reading of a timestamp's text ([`rfc3339_micros`]) answers, where it answers,
/// exactly as chrono's general parsers do: the oracle of the unit tests and of the `columns` fuzz
/// target (`fuzz/`, built with `--cfg fuzzing`).
#[cfg(any(test, fuzzing))]
pub fn timestamp_fast_path_agrees(text: &str) -> Result<(), String> {
    match rfc3339_micros(text) {
        Some(fast) if text_timestamp_micros(text) != Some(fast) => {
            Err(format!("`{text}`: the fast path read {fast} µs, chrono {:?}", text_timestamp_micros(text)))
        }
        _ => Ok(()),
    }
}

/// The common shape `yyyy-MM-ddTHH:mm:ss[.f{1,9}](Z|±HH:MM)` read without chrono's general parser
/// (same result: fractions below a microsecond are cut off); `None` for anything else, which the
/// general parsers then read.
fn rfc3339_micros(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    let digits = |from: usize, len: usize| -> Option<u32> {
        b.get(from..from + len)?.iter().try_fold(0u32, |n, &c| c.is_ascii_digit().then(|| n * 10 + u32::from(c - b'0')))
    };
    let separators = [(4, b'-'), (7, b'-'), (10, b'T'), (13, b':'), (16, b':')];
    if b.len() < 20 || separators.iter().any(|&(i, c)| b[i] != c) {
        return None;
    }
    let date = NaiveDate::from_ymd_opt(digits(0, 4)? as i32, digits(5, 2)?, digits(8, 2)?)?;
    let seconds = date.and_hms_opt(digits(11, 2)?, digits(14, 2)?, digits(17, 2)?)?.and_utc().timestamp();
    let mut i = 19;
    let mut micros = 0i64;
    if b[i] == b'.' {
        let start = i + 1;
        i = start;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        let fraction = &b[start..i];
        if fraction.is_empty() || fraction.len() > 9 {
            return None;
        }
        for k in 0..6 {
            micros = micros * 10 + fraction.get(k).map_or(0, |c| i64::from(*c - b'0'));
        }
    }
    let offset_seconds = match &b[i..] {
        [b'Z'] => 0,
        [sign @ (b'+' | b'-'), _, _, b':', _, _] => {
            // RFC 3339's offsets, as chrono reads them: hours 00–23, minutes 00–59.
            let (hours, minutes) = (digits(i + 1, 2)?, digits(i + 4, 2)?);
            if hours > 23 || minutes > 59 {
                return None;
            }
            let offset = i64::from(hours * 3600 + minutes * 60);
            if *sign == b'+' { offset } else { -offset }
        }
        _ => return None,
    };
    (seconds - offset_seconds).checked_mul(1_000_000)?.checked_add(micros)
}

/// Parses decimal text into an unscaled integer with `scale` digits, rounding half away from zero.
pub fn parse_decimal(text: &str, precision: u8, scale: i8) -> Result<i128, String> {
    let (negative, body) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text.strip_prefix('+').unwrap_or(text)),
    };
    // Exponent form (from a float's display) is widened first.
    let (mantissa, exponent) = match body.split_once(['e', 'E']) {
        Some((m, e)) => (m, e.parse::<i32>().map_err(|_| "bad exponent".to_string())?),
        None => (body, 0),
    };
    let (int_part, frac_part) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    if int_part.is_empty() && frac_part.is_empty()
        || !int_part.bytes().all(|b| b.is_ascii_digit())
        || !frac_part.bytes().all(|b| b.is_ascii_digit())
    {
        return Err("not a number".into());
    }
    let mut digits: String = format!("{int_part}{frac_part}");
    let mut point = int_part.len() as i64 + i64::from(exponent); // digits before the point
    // Leading zeros carry nothing: without them the exponent is bounded by the column below, and
    // so are the zeros written out for it (`1e2000000000` once asked for 2 GB of them).
    let zeros = digits.len() - digits.trim_start_matches('0').len();
    digits.drain(..zeros);
    point -= zeros as i64;
    let scale_u = scale.max(0) as usize;
    if digits.is_empty() || point < -(scale_u as i64) {
        // Zero, or every digit past the first one dropped (a zero: it rounds down).
        return Ok(0);
    }
    if point > i64::from(precision) - scale_u as i64 {
        return Err(format!("more than {} digits before the point", precision as i32 - scale as i32));
    }
    // Now -scale ≤ point ≤ precision - scale: the zeros written out are at most a column's digits.
    if point < 0 {
        digits = "0".repeat(point.unsigned_abs() as usize) + &digits;
    }
    let point = usize::try_from(point).unwrap_or(0);
    while digits.len() < point {
        digits.push('0');
    }
    let (whole, frac) = digits.split_at(point);
    let mut frac = frac.to_string();
    let round_up = frac.len() > scale_u && frac.as_bytes()[scale_u] >= b'5';
    frac.truncate(scale_u);
    while frac.len() < scale_u {
        frac.push('0');
    }
    let whole = whole.trim_start_matches('0');
    if whole.len() > (precision as usize).saturating_sub(scale_u) {
        return Err(format!("more than {} digits before the point", precision as i32 - scale as i32));
    }
    let mut unscaled: i128 = format!("{whole}{frac}").parse::<i128>().unwrap_or(0);
    if round_up {
        unscaled += 1;
        if unscaled >= 10i128.pow(precision as u32) {
            return Err(format!("does not fit decimal({precision},{scale}) after rounding"));
        }
    }
    Ok(if negative { -unscaled } else { unscaled })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The word-at-a-time comparison agrees with `==` at every length around its word boundaries,
    /// whichever byte differs.
    #[test]
    fn keys_compare_the_same_in_words_as_byte_by_byte() {
        for len in 0..41 {
            let a: Vec<u8> = (0..len).map(|i| b'a' + (i % 26) as u8).collect();
            assert!(same_bytes(&a, &a.clone()));
            assert!(!same_bytes(&a, &[a.as_slice(), b"x"].concat()));
            for differs in 0..len {
                let mut b = a.clone();
                b[differs] ^= 0x20;
                assert!(!same_bytes(&a, &b), "length {len}, byte {differs}");
            }
        }
    }

    /// Converts `record` into `columns`, with a fresh key memo.
    fn convert(c: &RowConverter, record: &[u8], columns: &mut Columns) -> Result<usize, ConversionError> {
        c.convert(record, columns, &mut KeyMemo::default())
    }

    fn schema(cols: &[(&str, &str, bool)]) -> Arc<TableSchema> {
        Arc::new(TableSchema {
            columns: cols
                .iter()
                .map(|(n, t, nullable)| Column {
                    name: n.to_string(),
                    ty: ColumnType::parse(t).unwrap(),
                    nullable: *nullable,
                    json_key: n.to_string(),
                    formats: vec![],
                })
                .collect(),
        })
    }

    #[test]
    fn matches_keys_like_openx_and_converts_types() {
        let c = RowConverter::new(
            schema(&[
                ("eventtime", "timestamp", true),
                ("user_name", "string", true),
                ("n", "int", true),
                ("ts", "bigint", true),
            ]),
            JsonOptions {
                dots_to_underscores: true,
                column_to_json_key: [("ts".to_string(), "time".to_string())].into(),
                ..JsonOptions::default()
            },
        );
        let mut rows = c.new_columns();
        let n = convert(
            &c,
            br#"{"EventTime":"2026-11-01T00:00:00.123456789Z","User.Name":"alice","n":"7","time":5,"extra":1}{"n":2}"#,
            &mut rows,
        )
        .unwrap();
        assert_eq!(n, 2);
        assert_eq!(
            rows.row(0),
            vec![Cell::Micros(1_793_491_200_123_456), Cell::Str("alice".into()), Cell::Int(7), Cell::Int(5)]
        );
        assert_eq!(rows.row(1), vec![Cell::Null, Cell::Null, Cell::Int(2), Cell::Null]);
    }

    #[test]
    fn accepts_every_openx_timestamp_form() {
        let micros = |v: Value| parse_timestamp_default(&Scalar::of(&v));
        let t = Some(1_793_491_200_000_000);
        assert_eq!(micros(Value::from("2026-11-01T00:00:00Z")), t);
        assert_eq!(micros(Value::from("2026-11-01T01:00:00+01:00")), t);
        assert_eq!(micros(Value::from("2026-11-01 00:00:00")), t);
        assert_eq!(micros(Value::from("2026-11-1 00:00:00.0")), t);
        assert_eq!(micros(Value::from(1_793_491_200i64)), t);
        assert_eq!(micros(Value::from(1_793_491_200_000i64)), t);
        assert_eq!(micros(Value::from(1_793_491_200.5f64)), Some(1_793_491_200_500_000));
        assert_eq!(micros(Value::from("yesterday")), None);
    }

    /// A number beyond what the column holds is refused, never saturated into its largest value:
    /// 2^63 and `1e30` are not `i64::MAX`, nor `-1e30` `i64::MIN`; an epoch of `1e300` seconds or
    /// of 2^64 milliseconds is no timestamp; `i64::MIN` as an epoch is refused, not a panic.
    #[test]
    fn numbers_beyond_a_column_are_refused_not_saturated() {
        let c = RowConverter::new(schema(&[("n", "bigint", true), ("t", "timestamp", true)]), JsonOptions::default());
        let mut rows = c.new_columns();
        for record in [
            r#"{"n":9223372036854775808}"#,
            r#"{"n":18446744073709551615}"#,
            r#"{"n":1e30}"#,
            r#"{"n":-1e30}"#,
            r#"{"n":9.3e18}"#,
            r#"{"t":1e300}"#,
            r#"{"t":-1e300}"#,
            r#"{"t":18446744073709551615}"#,
            r#"{"t":-9223372036854775808}"#,
        ] {
            let refused = convert(&c, record.as_bytes(), &mut rows);
            assert!(refused.is_err(), "{record} gave {:?}", rows.row(0));
        }
        for (record, row) in [
            (r#"{"n":9223372036854775807}"#, vec![Cell::Int(i64::MAX), Cell::Null]),
            (r#"{"n":-9223372036854775808}"#, vec![Cell::Int(i64::MIN), Cell::Null]),
            (r#"{"n":-9.2e18}"#, vec![Cell::Int(-9_200_000_000_000_000_000), Cell::Null]),
            (r#"{"n":4.0,"t":-1.5}"#, vec![Cell::Int(4), Cell::Micros(-1_500_000)]),
        ] {
            let mut rows = c.new_columns();
            assert_eq!(convert(&c, record.as_bytes(), &mut rows).map_err(|e| e.to_string()), Ok(1), "{record}");
            assert_eq!(rows.row(0), row, "{record}");
        }
    }

    #[test]
    fn a_value_that_does_not_fit_fails_the_whole_record_naming_the_column() {
        let c = RowConverter::new(schema(&[("a", "int", true), ("b", "tinyint", false)]), JsonOptions::default());
        let mut rows = c.new_columns();
        let e = convert(&c, br#"{"a":1,"b":300}"#, &mut rows).unwrap_err();
        assert_eq!(e.column, "b");
        assert!(e.message.contains("300"), "{e}");
        let e = convert(&c, br#"{"a":1}"#, &mut rows).unwrap_err();
        assert!(e.message.contains("not nullable"));
        assert!(convert(&c, br#"{"a":1,"b":1}{"a":"x","b":1}"#, &mut rows).is_err());
        assert_eq!(rows.rows(), 0);
    }

    /// A number beyond a `float`'s range (32-bit) or a `double`'s is a value that does not fit,
    /// never stored as infinity; infinity and NaN written as such, and numbers within range, are
    /// kept.
    #[test]
    fn numbers_beyond_a_float_or_double_do_not_fit() {
        let c = RowConverter::new(schema(&[("f", "float", true), ("d", "double", true)]), JsonOptions::default());
        let mut rows = c.new_columns();
        for (record, column) in [(r#"{"f":1e300}"#, "f"), (r#"{"f":"-4e38"}"#, "f"), (r#"{"d":"-1e309"}"#, "d")] {
            let e = convert(&c, record.as_bytes(), &mut rows).unwrap_err();
            assert_eq!(e.column, column, "{record}");
            assert!(e.message.contains("out of range"), "{record}: {e}");
        }
        // A JSON number past a double's range is refused as the JSON is read.
        assert!(convert(&c, br#"{"d":1e400}"#, &mut rows).is_err());
        for record in [r#"{"f":3.4e38,"d":1.7e308}"#, r#"{"f":"Infinity","d":"NaN"}"#, r#"{"f":1e-50,"d":-0.0}"#] {
            convert(&c, record.as_bytes(), &mut rows).unwrap_or_else(|e| panic!("{record}: {e}"));
        }
        assert_eq!(rows.rows(), 3);
    }

    #[test]
    fn decimals_round_and_check_precision() {
        assert_eq!(parse_decimal("12.345", 10, 2), Ok(1235));
        assert_eq!(parse_decimal("-0.5", 3, 0), Ok(-1));
        assert_eq!(parse_decimal("1e3", 6, 2), Ok(100_000));
        assert_eq!(parse_decimal("99999999.99", 10, 2), Ok(9_999_999_999));
        assert!(parse_decimal("123456789.1", 10, 2).is_err());
        assert!(parse_decimal("abc", 10, 2).is_err());
        assert!(parse_decimal("9.999", 3, 2).is_err());
        // Leading zeros, and exponents far past any column (the columns fuzz target's: each once
        // wrote out its zeros, 2 GB for `1e2000000000`, or overflowed `i32` at the largest).
        assert_eq!(parse_decimal("000000000000000000000000000000000000000001.5", 10, 2), Ok(150));
        assert_eq!(parse_decimal("0.00e5", 10, 2), Ok(0));
        assert_eq!(parse_decimal("0.005", 10, 2), Ok(1));
        assert_eq!(parse_decimal("0.0005", 10, 2), Ok(0));
        assert_eq!(parse_decimal("-5e-3", 10, 2), Ok(-1));
        assert_eq!(parse_decimal("1e-2000000000", 10, 2), Ok(0));
        assert_eq!(parse_decimal("123e-2147483648", 38, 10), Ok(0));
        for huge in ["1e2000000000", "1e2147483647", "0.1e2147483647"] {
            assert_eq!(parse_decimal(huge, 38, 2), Err("more than 36 digits before the point".into()), "{huge}");
        }
        assert_eq!(parse_decimal("1e99999999999", 38, 2), Err("bad exponent".into()));
        assert_eq!(parse_decimal("1e36", 38, 2), Err("more than 36 digits before the point".into()));
        assert_eq!(parse_decimal("1e35", 38, 2), Ok(10i128.pow(37)));
    }

    #[test]
    fn nested_structs_arrays_and_maps_convert() {
        let c = RowConverter::new(
            schema(&[
                ("u", "struct<type:string,accountid:bigint>", true),
                ("tags", "array<string>", true),
                ("m", "map<string,int>", true),
            ]),
            JsonOptions::default(),
        );
        let mut rows = c.new_columns();
        convert(&c, br#"{"u":{"Type":"IAMUser","accountId":"12"},"tags":["a",null],"m":{"x":1}}"#, &mut rows).unwrap();
        assert_eq!(
            rows.row(0),
            vec![
                Cell::Struct(vec![Cell::Str("IAMUser".into()), Cell::Int(12)]),
                Cell::List(vec![Cell::Str("a".into()), Cell::Null]),
                Cell::Map(vec![(Cell::Str("x".into()), Cell::Int(1))]),
            ]
        );
        let e = convert(&c, br#"{"u":{"accountid":"x"}}"#, &mut rows).unwrap_err();
        assert_eq!(e.column, "u.accountid");
    }

    #[test]
    fn a_failed_record_leaves_no_bytes_behind_and_keys_match_in_any_order() {
        let c = RowConverter::new(
            schema(&[("s", "string", true), ("n", "int", true), ("t", "string", true)]),
            JsonOptions::default(),
        );
        let (mut columns, mut memo) = (c.new_columns(), KeyMemo::default());
        c.convert(br#"{"s":"one","n":1,"t":"x"}"#, &mut columns, &mut memo).unwrap();
        // Fails after `s` was stored: its bytes must go too.
        assert!(c.convert(br#"{"s":"LEFTOVER","n":"nope","t":"y"}"#, &mut columns, &mut memo).is_err());
        // Other key order, an escaped key, a repeated key (the last value wins), a missing key.
        c.convert(br#"{"t":"z","N":2,"s":"a","s":"two"}"#, &mut columns, &mut memo).unwrap();
        c.convert(br#"{"\u0073":"three"}"#, &mut columns, &mut memo).unwrap();
        assert_eq!(columns.rows(), 3);
        assert_eq!(columns.row(0), vec![Cell::Str("one".into()), Cell::Int(1), Cell::Str("x".into())]);
        assert_eq!(columns.row(1), vec![Cell::Str("two".into()), Cell::Int(2), Cell::Str("z".into())]);
        assert_eq!(columns.row(2), vec![Cell::Str("three".into()), Cell::Null, Cell::Null]);
        let arrays = columns.take_arrays().unwrap();
        let strings = arrays[0].as_any().downcast_ref::<arrow_array::StringArray>().unwrap();
        assert_eq!(strings.iter().collect::<Vec<_>>(), vec![Some("one"), Some("two"), Some("three")]);
        assert_eq!(columns.rows(), 0);
    }

    #[test]
    fn invalid_utf8_is_a_conversion_failure() {
        let c = RowConverter::new(schema(&[("s", "string", true)]), JsonOptions::default());
        let e = convert(&c, b"{\"s\":\"\xff\"}", &mut c.new_columns()).unwrap_err();
        assert!(e.message.contains("utf-8"), "{e}");
    }

    #[test]
    fn the_fast_timestamp_reading_agrees_with_chrono_on_edges() {
        for text in [
            "2026-11-30T05:13:20Z",
            "2026-11-30T05:13:20.123456789+05:30",
            "2026-11-30T05:13:20+24:00",
            "2026-11-30T05:13:20+99:99",
            "2026-11-30T05:13:20-23:60",
            "2026-11-30T05:13:20+00:60",
            "2026-11-30T23:59:60Z",
            "2026-02-30T00:00:00Z",
            "0000-01-01T00:00:00Z",
            "9999-12-31T23:59:59.999999999-23:59",
            "2026-11-30T05:13:20.Z",
            "2026-11-30T05:13:20.1234567890Z",
        ] {
            timestamp_fast_path_agrees(text).unwrap_or_else(|e| panic!("{e}"));
        }
    }

    proptest::proptest! {
        /// The hand-written reader of the common ISO-8601 shape agrees with chrono's RFC 3339 parser.
        #[test]
        fn rfc3339_fast_path_matches_chrono(
            secs in -2_000_000_000i64..4_000_000_000,
            nanos in 0u32..1_000_000_000,
            digits in 0usize..10,
            offset_minutes in -840i32..=840,
        ) {
            let utc = DateTime::from_timestamp(secs, 0).unwrap();
            let fraction = if digits == 0 { String::new() } else { format!(".{:09}", nanos)[..=digits].to_string() };
            let zone = if offset_minutes == 0 {
                "Z".to_string()
            } else {
                let sign = if offset_minutes < 0 { '-' } else { '+' };
                format!("{sign}{:02}:{:02}", offset_minutes.abs() / 60, offset_minutes.abs() % 60)
            };
            let text = format!("{}{fraction}{zone}", utc.format("%Y-%m-%dT%H:%M:%S"));
            let expected = DateTime::parse_from_rfc3339(&text).map(|t| t.timestamp_micros()).ok();
            proptest::prop_assert_eq!(rfc3339_micros(&text), expected, "{}", text);
        }
    }
}

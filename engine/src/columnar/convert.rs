//! JSON records to typed rows, with the semantics of Firehose's OpenX JSON SerDe (FIREHOSE.md §6).
//!
//! Keys match case-insensitively by default (`case_insensitive`), dots in keys can become
//! underscores (`dots_to_underscores`), and columns can read another key (`column_to_json_key`).
//! A record may hold several concatenated JSON objects, each a row. Extra keys are ignored; a missing
//! key is null. Guarantees: a record converts completely or not at all: on any value that does not fit
//! its column, [`RowConverter::convert`] returns an error naming the column and the value, and adds
//! no row.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use chrono::{DateTime, NaiveDate, NaiveDateTime};
use serde_json::Value;

use super::schema::{ColumnType, TableSchema, TimestampFormat};

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

/// One converted value.
#[derive(Debug, Clone, PartialEq)]
pub enum Cell {
    /// Null.
    Null,
    /// Boolean.
    Bool(bool),
    /// Any integer type.
    Int(i64),
    /// float or double.
    Float(f64),
    /// string, varchar, char.
    Str(String),
    /// binary.
    Bytes(Vec<u8>),
    /// decimal, unscaled.
    Decimal(i128),
    /// date: days since 1970-01-01.
    Date(i32),
    /// timestamp: microseconds since the epoch, UTC.
    Micros(i64),
    /// array.
    List(Vec<Cell>),
    /// struct, one cell per field.
    Struct(Vec<Cell>),
    /// map entries.
    Map(Vec<(Cell, Cell)>),
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

/// Converts records for one schema.
#[derive(Debug)]
pub struct RowConverter {
    schema: Arc<TableSchema>,
    options: JsonOptions,
    /// Normalized JSON key → column index.
    lookup: HashMap<String, usize>,
}

fn short(v: &Value) -> String {
    let text = v.to_string();
    if text.chars().count() > 80 { format!("{}…", text.chars().take(80).collect::<String>()) } else { text }
}

fn fail<T>(column: &str, message: String) -> Result<T, ConversionError> {
    Err(ConversionError { column: column.to_string(), message })
}

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

    /// The column a JSON key feeds, if any. Keys that need no normalizing are looked up as they are.
    fn column_of(&self, key: &str, scratch: &mut String) -> Option<usize> {
        let plain = !(self.options.case_insensitive && key.bytes().any(|b| b.is_ascii_uppercase() || b >= 0x80)
            || self.options.dots_to_underscores && key.contains('.'));
        if plain {
            return self.lookup.get(key).copied();
        }
        scratch.clear();
        scratch.push_str(&normalize(key, &self.options));
        self.lookup.get(scratch.as_str()).copied()
    }

    /// Whether JSON key `key` names struct field `field`, without allocating in the common case.
    fn same_key(&self, key: &str, field: &str) -> bool {
        if self.options.dots_to_underscores || !key.is_ascii() || !field.is_ascii() {
            return normalize(key, &self.options) == normalize(field, &self.options);
        }
        if self.options.case_insensitive { key.eq_ignore_ascii_case(field) } else { key == field }
    }

    /// Converts every JSON object in `record` into a row appended to `rows`, or none of them.
    ///
    /// The top-level object is read key by key (no map is built): values of keys no column reads
    /// are skipped without being materialized.
    pub fn convert(&self, record: &[u8], rows: &mut Vec<Vec<Cell>>) -> Result<usize, ConversionError> {
        let before = rows.len();
        let result = self.convert_into(record, rows);
        if result.is_err() {
            // All or nothing: drop the rows of the record's earlier objects.
            rows.truncate(before);
        }
        result.map(|()| rows.len() - before)
    }

    fn convert_into(&self, record: &[u8], rows: &mut Vec<Vec<Cell>>) -> Result<(), ConversionError> {
        let mut de = serde_json::Deserializer::from_slice(record);
        let mut scratch = String::new();
        loop {
            let mut slots: Vec<Option<Value>> = vec![None; self.schema.columns.len()];
            serde::de::DeserializeSeed::deserialize(
                RowSeed { converter: self, slots: &mut slots, scratch: &mut scratch },
                &mut de,
            )
            .map_err(|e| ConversionError { column: "(record)".into(), message: format!("not a JSON object: {e}") })?;
            let mut row = Vec::with_capacity(slots.len());
            for (column, slot) in self.schema.columns.iter().zip(slots) {
                let cell = match slot {
                    None | Some(Value::Null) if !column.nullable => {
                        return fail(&column.name, "is not nullable and the record has no value for it".into());
                    }
                    None | Some(Value::Null) => Cell::Null,
                    Some(v) => self.cell(&column.ty, v, &column.formats, &column.name)?,
                };
                row.push(cell);
            }
            rows.push(row);
            if de.end().is_ok() {
                return Ok(());
            }
        }
    }

    fn cell(
        &self,
        ty: &ColumnType,
        v: Value,
        formats: &[TimestampFormat],
        path: &str,
    ) -> Result<Cell, ConversionError> {
        if v.is_null() {
            return Ok(Cell::Null);
        }
        let kind = |v: &Value, name: &str| format!("cannot read {} as {name}", short(v));
        Ok(match ty {
            ColumnType::String => Cell::Str(text_of(v)),
            ColumnType::Varchar(n) | ColumnType::Char(n) => {
                if let Value::String(s) = &v
                    && s.len() <= *n as usize
                {
                    // Fast path: a string no longer in bytes than the limit is short enough in characters.
                    return Ok(Cell::Str(text_of(v)));
                }
                let too_long = format!("{} is longer than {n} characters", short(&v));
                let s = text_of(v);
                if s.chars().count() > *n as usize {
                    return fail(path, too_long);
                }
                Cell::Str(s)
            }
            ColumnType::Boolean => match &v {
                Value::Bool(b) => Cell::Bool(*b),
                Value::String(s) if s.eq_ignore_ascii_case("true") => Cell::Bool(true),
                Value::String(s) if s.eq_ignore_ascii_case("false") => Cell::Bool(false),
                _ => return fail(path, kind(&v, "boolean")),
            },
            ColumnType::TinyInt => {
                Cell::Int(int_in(&v, i8::MIN as i64, i8::MAX as i64).ok_or_else(|| err(path, kind(&v, "tinyint")))?)
            }
            ColumnType::SmallInt => {
                Cell::Int(int_in(&v, i16::MIN as i64, i16::MAX as i64).ok_or_else(|| err(path, kind(&v, "smallint")))?)
            }
            ColumnType::Int => {
                Cell::Int(int_in(&v, i32::MIN as i64, i32::MAX as i64).ok_or_else(|| err(path, kind(&v, "int")))?)
            }
            ColumnType::BigInt => {
                Cell::Int(int_in(&v, i64::MIN, i64::MAX).ok_or_else(|| err(path, kind(&v, "bigint")))?)
            }
            ColumnType::Float | ColumnType::Double => Cell::Float(match &v {
                Value::Number(n) => n.as_f64().ok_or_else(|| err(path, kind(&v, "a number")))?,
                Value::String(s) => s.trim().parse().map_err(|_| err(path, kind(&v, "a number")))?,
                _ => return fail(path, kind(&v, "a number")),
            }),
            ColumnType::Decimal { precision, scale } => {
                let text = match &v {
                    Value::Number(n) => n.to_string(),
                    Value::String(s) => s.trim().to_string(),
                    _ => return fail(path, kind(&v, "decimal")),
                };
                Cell::Decimal(
                    parse_decimal(&text, *precision, *scale)
                        .map_err(|m| err(path, format!("{}: {m}", kind(&v, "decimal"))))?,
                )
            }
            ColumnType::Date => Cell::Date(
                parse_date(&v).ok_or_else(|| err(path, format!("{} (expected yyyy-MM-dd)", kind(&v, "date"))))?,
            ),
            ColumnType::Timestamp => Cell::Micros(parse_timestamp(&v, formats).ok_or_else(|| {
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
                Value::String(s) => Cell::Bytes(s.into_bytes()),
                other => return fail(path, kind(&other, "binary")),
            },
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
        })
    }
}

/// Reads one top-level JSON object into the column slots.
struct RowSeed<'a> {
    converter: &'a RowConverter,
    slots: &'a mut Vec<Option<Value>>,
    scratch: &'a mut String,
}

/// A key, borrowed from the record when it has no escapes.
struct Key<'de>(std::borrow::Cow<'de, str>);

impl<'de> serde::Deserialize<'de> for Key<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl<'de> serde::de::Visitor<'de> for KeyVisitor {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a key")
            }
            fn visit_borrowed_str<E: serde::de::Error>(self, v: &'de str) -> Result<Key<'de>, E> {
                Ok(Key(std::borrow::Cow::Borrowed(v)))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Key<'de>, E> {
                Ok(Key(std::borrow::Cow::Owned(v.to_string())))
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
        while let Some(Key(key)) = map.next_key::<Key<'de>>()? {
            match self.converter.column_of(&key, self.scratch) {
                Some(i) => self.slots[i] = Some(map.next_value::<Value>()?),
                None => {
                    map.next_value::<serde::de::IgnoredAny>()?;
                }
            }
        }
        Ok(())
    }
}

fn err(column: &str, message: String) -> ConversionError {
    ConversionError { column: column.to_string(), message }
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
fn text_of(v: Value) -> String {
    match v {
        Value::String(s) => s,
        other => other.to_string(),
    }
}

fn int_in(v: &Value, min: i64, max: i64) -> Option<i64> {
    let n = match v {
        Value::Number(n) => match n.as_i64() {
            Some(i) => i,
            None => {
                let f = n.as_f64()?;
                if f.fract() != 0.0 || !f.is_finite() {
                    return None;
                }
                f as i64
            }
        },
        Value::String(s) => s.trim().parse().ok()?,
        _ => return None,
    };
    (min..=max).contains(&n).then_some(n)
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
    let mut point = int_part.len() as i32 + exponent; // digits before the point
    if point < 0 {
        digits = "0".repeat((-point) as usize) + &digits;
        point = 0;
    }
    while digits.len() < point as usize {
        digits.push('0');
    }
    let scale_u = scale.max(0) as usize;
    let (whole, frac) = digits.split_at(point as usize);
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

fn parse_date(v: &Value) -> Option<i32> {
    let epoch = NaiveDate::from_ymd_opt(1970, 1, 1)?;
    match v {
        Value::String(s) => {
            let s = s.trim();
            let date_part = s.get(..10).filter(|_| s.len() > 10).unwrap_or(s);
            let d = NaiveDate::parse_from_str(date_part, "%Y-%m-%d").ok()?;
            i32::try_from((d - epoch).num_days()).ok()
        }
        Value::Number(n) => i32::try_from(n.as_i64()?).ok(),
        _ => None,
    }
}

/// Integers at or above this magnitude are epoch milliseconds; below, epoch seconds.
pub const EPOCH_MILLIS_THRESHOLD: i64 = 100_000_000_000;

fn parse_timestamp(v: &Value, formats: &[TimestampFormat]) -> Option<i64> {
    if formats.is_empty() {
        return parse_timestamp_default(v);
    }
    formats.iter().find_map(|f| match (f, v) {
        (TimestampFormat::EpochSeconds, _) => integer_of(v).and_then(|s| s.checked_mul(1_000_000)),
        (TimestampFormat::EpochMillis, _) => integer_of(v).and_then(|ms| ms.checked_mul(1_000)),
        (TimestampFormat::Pattern { chrono, zoned: true, .. }, Value::String(s)) => {
            DateTime::parse_from_str(s.trim(), chrono).ok().map(|t| t.timestamp_micros())
        }
        (TimestampFormat::Pattern { chrono, zoned: false, .. }, Value::String(s)) => {
            NaiveDateTime::parse_from_str(s.trim(), chrono).ok().map(|t| t.and_utc().timestamp_micros())
        }
        _ => None,
    })
}

fn integer_of(v: &Value) -> Option<i64> {
    match v {
        Value::Number(n) => n.as_i64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

fn epoch_number_micros(n: &serde_json::Number) -> Option<i64> {
    if let Some(i) = n.as_i64() {
        return if i.abs() >= EPOCH_MILLIS_THRESHOLD { i.checked_mul(1_000) } else { i.checked_mul(1_000_000) };
    }
    let f = n.as_f64()?;
    f.is_finite().then(|| (f * 1e6).round() as i64)
}

/// The OpenX formats: ISO-8601 (`T`, up to 9 fractional digits, `Z` or an offset, or none for UTC),
/// `yyyy-[M]M-[d]d HH:mm:ss[.S]`, epoch seconds, epoch milliseconds, float epoch seconds.
fn parse_timestamp_default(v: &Value) -> Option<i64> {
    match v {
        Value::Number(n) => epoch_number_micros(n),
        Value::String(s) => {
            let s = s.trim();
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
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::super::schema::Column;
    use super::*;

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
        let mut rows = Vec::new();
        let n = c
            .convert(br#"{"EventTime":"2026-11-01T00:00:00.123456789Z","User.Name":"alice","n":"7","time":5,"extra":1}{"n":2}"#, &mut rows)
            .unwrap();
        assert_eq!(n, 2);
        assert_eq!(
            rows[0],
            vec![Cell::Micros(1_793_491_200_123_456), Cell::Str("alice".into()), Cell::Int(7), Cell::Int(5)]
        );
        assert_eq!(rows[1], vec![Cell::Null, Cell::Null, Cell::Int(2), Cell::Null]);
    }

    #[test]
    fn accepts_every_openx_timestamp_form() {
        let micros = |v: Value| parse_timestamp_default(&v);
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

    #[test]
    fn a_value_that_does_not_fit_fails_the_whole_record_naming_the_column() {
        let c = RowConverter::new(schema(&[("a", "int", true), ("b", "tinyint", false)]), JsonOptions::default());
        let mut rows = Vec::new();
        let e = c.convert(br#"{"a":1,"b":300}"#, &mut rows).unwrap_err();
        assert_eq!(e.column, "b");
        assert!(e.message.contains("300"), "{e}");
        let e = c.convert(br#"{"a":1}"#, &mut rows).unwrap_err();
        assert!(e.message.contains("not nullable"));
        assert!(c.convert(br#"{"a":1,"b":1}{"a":"x","b":1}"#, &mut rows).is_err());
        assert!(rows.is_empty());
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
        let mut rows = Vec::new();
        c.convert(br#"{"u":{"Type":"IAMUser","accountId":"12"},"tags":["a",null],"m":{"x":1}}"#, &mut rows).unwrap();
        assert_eq!(
            rows[0],
            vec![
                Cell::Struct(vec![Cell::Str("IAMUser".into()), Cell::Int(12)]),
                Cell::List(vec![Cell::Str("a".into()), Cell::Null]),
                Cell::Map(vec![(Cell::Str("x".into()), Cell::Int(1))]),
            ]
        );
        let e = c.convert(br#"{"u":{"accountid":"x"}}"#, &mut rows).unwrap_err();
        assert_eq!(e.column, "u.accountid");
    }
}

//! Parquet schemas: columns with Glue/Hive types, read from TOML (a file or an inline table).
//!
//! Types use Glue/Hive syntax so a Glue table's columns can be pasted in: `string`, `varchar(n)`,
//! `char(n)`, `boolean`, `tinyint`, `smallint`, `int`, `bigint`, `float`, `double`,
//! `decimal(p,s)`, `date`, `timestamp`, `binary`, `array<T>`, `struct<name:T,...>`, `map<K,V>`,
//! nested to any depth. Guarantees: a parsed [`ColumnType`] is valid (decimal precision 1..=38,
//! scale ≤ precision, lengths ≥ 1, map keys primitive), and its Arrow type is what the writer uses,
//! with timestamps as microseconds adjusted to UTC.

use std::sync::Arc;

use arrow_schema::{DataType, Field, Fields, Schema, TimeUnit};

/// A column's type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ColumnType {
    /// `string`.
    String,
    /// `varchar(n)`: at most `n` characters.
    Varchar(u32),
    /// `char(n)`: at most `n` characters (not padded).
    Char(u32),
    /// `boolean`.
    Boolean,
    /// `tinyint` (8 bits).
    TinyInt,
    /// `smallint` (16 bits).
    SmallInt,
    /// `int` / `integer` (32 bits).
    Int,
    /// `bigint` (64 bits).
    BigInt,
    /// `float` (32 bits).
    Float,
    /// `double` (64 bits).
    Double,
    /// `decimal(precision, scale)`.
    Decimal {
        /// Total digits, 1..=38.
        precision: u8,
        /// Digits after the point, ≤ precision.
        scale: i8,
    },
    /// `date`.
    Date,
    /// `timestamp`: microseconds since the epoch, UTC.
    Timestamp,
    /// `binary`.
    Binary,
    /// `array<T>`.
    Array(Box<ColumnType>),
    /// `struct<name:T,...>`.
    Struct(Vec<(String, ColumnType)>),
    /// `map<K,V>`.
    Map(Box<ColumnType>, Box<ColumnType>),
}

/// A type string that does not parse; `offset` is a byte offset into it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct TypeError {
    /// Where in the type string.
    pub offset: usize,
    /// What is wrong.
    pub message: String,
}

/// The type names accepted, for hints.
pub const TYPE_NAMES: &str = "string, varchar(n), char(n), boolean, tinyint, smallint, int, bigint, float, double, decimal(p,s), date, timestamp, binary, array<T>, struct<name:T,...>, map<K,V>";

struct TypeParser<'a> {
    text: &'a str,
    pos: usize,
}

impl<'a> TypeParser<'a> {
    fn error<T>(&self, message: impl Into<String>) -> Result<T, TypeError> {
        Err(TypeError { offset: self.pos, message: message.into() })
    }

    fn skip_ws(&mut self) {
        while self.text[self.pos..].starts_with(char::is_whitespace) {
            self.pos += 1;
        }
    }

    fn eat(&mut self, c: char) -> bool {
        self.skip_ws();
        if self.text[self.pos..].starts_with(c) {
            self.pos += c.len_utf8();
            true
        } else {
            false
        }
    }

    fn expect(&mut self, c: char) -> Result<(), TypeError> {
        if self.eat(c) { Ok(()) } else { self.error(format!("expected `{c}`")) }
    }

    fn word(&mut self) -> &'a str {
        self.skip_ws();
        let start = self.pos;
        let len = self.text[start..]
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '.' || c == '-' || c == '@' || c == '$'))
            .unwrap_or(self.text.len() - start);
        self.pos += len;
        &self.text[start..start + len]
    }

    fn number(&mut self) -> Result<u32, TypeError> {
        let at = self.pos;
        let w = self.word();
        w.parse().map_err(|_| TypeError { offset: at, message: format!("expected a number, found `{w}`") })
    }

    fn parse_type(&mut self) -> Result<ColumnType, TypeError> {
        let start = self.pos;
        let name = self.word().to_ascii_lowercase();
        Ok(match name.as_str() {
            "string" => ColumnType::String,
            "boolean" | "bool" => ColumnType::Boolean,
            "tinyint" => ColumnType::TinyInt,
            "smallint" => ColumnType::SmallInt,
            "int" | "integer" => ColumnType::Int,
            "bigint" => ColumnType::BigInt,
            "float" => ColumnType::Float,
            "double" => ColumnType::Double,
            "date" => ColumnType::Date,
            "timestamp" => ColumnType::Timestamp,
            "binary" => ColumnType::Binary,
            "varchar" | "char" => {
                self.expect('(')?;
                let n = self.number()?;
                self.expect(')')?;
                if n == 0 {
                    return self.error("length must be at least 1");
                }
                if name == "varchar" { ColumnType::Varchar(n) } else { ColumnType::Char(n) }
            }
            "decimal" => {
                let (mut precision, mut scale) = (10, 0);
                if self.eat('(') {
                    precision = self.number()?;
                    if self.eat(',') {
                        scale = self.number()?;
                    }
                    self.expect(')')?;
                }
                if !(1..=38).contains(&precision) || scale > precision {
                    return Err(TypeError {
                        offset: start,
                        message: format!(
                            "decimal({precision},{scale}) is out of range: precision 1..=38, scale ≤ precision"
                        ),
                    });
                }
                ColumnType::Decimal { precision: precision as u8, scale: scale as i8 }
            }
            "array" => {
                self.expect('<')?;
                let inner = self.parse_type()?;
                self.expect('>')?;
                ColumnType::Array(Box::new(inner))
            }
            "map" => {
                self.expect('<')?;
                let key_at = self.pos;
                let key = self.parse_type()?;
                if matches!(key, ColumnType::Array(_) | ColumnType::Struct(_) | ColumnType::Map(..)) {
                    return Err(TypeError { offset: key_at, message: "map keys must be a primitive type".into() });
                }
                self.expect(',')?;
                let value = self.parse_type()?;
                self.expect('>')?;
                ColumnType::Map(Box::new(key), Box::new(value))
            }
            "struct" => {
                self.expect('<')?;
                let mut fields: Vec<(String, ColumnType)> = Vec::new();
                loop {
                    let at = self.pos;
                    let field = self.word().to_string();
                    if field.is_empty() {
                        return self.error("expected a field name");
                    }
                    if fields.iter().any(|(f, _)| f.eq_ignore_ascii_case(&field)) {
                        return Err(TypeError { offset: at, message: format!("field `{field}` appears twice") });
                    }
                    self.expect(':')?;
                    fields.push((field, self.parse_type()?));
                    if !self.eat(',') {
                        break;
                    }
                }
                self.expect('>')?;
                ColumnType::Struct(fields)
            }
            "" => return self.error("expected a type"),
            other => {
                return Err(TypeError { offset: start, message: format!("unknown type `{other}`") });
            }
        })
    }
}

impl ColumnType {
    /// Parses a Glue/Hive type string.
    pub fn parse(text: &str) -> Result<Self, TypeError> {
        let mut p = TypeParser { text, pos: 0 };
        let ty = p.parse_type()?;
        p.skip_ws();
        if p.pos < text.len() {
            return p.error(format!("unexpected `{}` after the type", &text[p.pos..]));
        }
        Ok(ty)
    }

    /// The Arrow type the writer uses.
    pub fn arrow_type(&self) -> DataType {
        match self {
            ColumnType::String | ColumnType::Varchar(_) | ColumnType::Char(_) => DataType::Utf8,
            ColumnType::Boolean => DataType::Boolean,
            ColumnType::TinyInt => DataType::Int8,
            ColumnType::SmallInt => DataType::Int16,
            ColumnType::Int => DataType::Int32,
            ColumnType::BigInt => DataType::Int64,
            ColumnType::Float => DataType::Float32,
            ColumnType::Double => DataType::Float64,
            ColumnType::Decimal { precision, scale } => DataType::Decimal128(*precision, *scale),
            ColumnType::Date => DataType::Date32,
            ColumnType::Timestamp => DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            ColumnType::Binary => DataType::Binary,
            ColumnType::Array(inner) => DataType::List(Arc::new(Field::new("element", inner.arrow_type(), true))),
            ColumnType::Struct(fields) => DataType::Struct(struct_fields(fields)),
            ColumnType::Map(k, v) => DataType::Map(map_entries_field(k, v), false),
        }
    }
}

/// Arrow fields of a struct's members (all nullable).
pub fn struct_fields(fields: &[(String, ColumnType)]) -> Fields {
    fields.iter().map(|(name, ty)| Field::new(name, ty.arrow_type(), true)).collect()
}

/// The `entries` field of a map type.
pub fn map_entries_field(key: &ColumnType, value: &ColumnType) -> Arc<Field> {
    Arc::new(Field::new(
        "key_value",
        DataType::Struct(Fields::from(vec![
            Field::new("key", key.arrow_type(), false),
            Field::new("value", value.arrow_type(), true),
        ])),
        false,
    ))
}

/// How a timestamp column reads strings and numbers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TimestampFormat {
    /// A Java pattern, converted to a chrono format string.
    Pattern {
        /// The pattern as written.
        java: String,
        /// The chrono equivalent.
        chrono: String,
        /// Whether it carries a zone offset (`X`/`Z`).
        zoned: bool,
    },
    /// Integer seconds since the epoch.
    EpochSeconds,
    /// Integer milliseconds since the epoch.
    EpochMillis,
}

impl TimestampFormat {
    /// Parses a `formats` entry: `epoch_seconds`, `epoch_millis` (or `millis`), or a Java pattern
    /// with `yyyy MM dd HH mm ss S… X Z` and quoted literals.
    pub fn parse(text: &str) -> Result<Self, String> {
        match text {
            "epoch_seconds" | "seconds" => return Ok(TimestampFormat::EpochSeconds),
            "epoch_millis" | "millis" => return Ok(TimestampFormat::EpochMillis),
            _ => {}
        }
        let mut chrono = String::new();
        let mut zoned = false;
        let chars: Vec<char> = text.chars().collect();
        let mut i = 0;
        while i < chars.len() {
            let c = chars[i];
            if c == '\'' {
                let mut j = i + 1;
                while j < chars.len() && chars[j] != '\'' {
                    push_literal(&mut chrono, chars[j]);
                    j += 1;
                }
                if j >= chars.len() {
                    return Err(format!("unclosed quote in `{text}`"));
                }
                i = j + 1;
                continue;
            }
            let run = chars[i..].iter().take_while(|x| **x == c).count();
            let piece = match (c, run) {
                ('y', 4) => "%Y",
                ('y', 2) => "%y",
                ('M', 1 | 2) => "%m",
                ('d', 1 | 2) => "%d",
                ('H', 1 | 2) => "%H",
                ('m', 1 | 2) => "%M",
                ('s', 1 | 2) => "%S",
                ('S', 1..=9) => "%.f",
                ('X' | 'Z' | 'x', _) => {
                    zoned = true;
                    "%#z"
                }
                (c, _) if c.is_ascii_alphabetic() => {
                    return Err(format!(
                        "unsupported pattern letter `{c}` in `{text}`; use yyyy MM dd HH mm ss S X and 'quoted text', or epoch_seconds / epoch_millis"
                    ));
                }
                _ => {
                    for _ in 0..run {
                        push_literal(&mut chrono, c);
                    }
                    i += run;
                    continue;
                }
            };
            // `.SSS`: chrono's `%.f` includes the dot.
            if piece == "%.f" && chrono.ends_with('.') {
                chrono.pop();
            }
            chrono.push_str(piece);
            i += run;
        }
        Ok(TimestampFormat::Pattern { java: text.to_string(), chrono, zoned })
    }
}

fn push_literal(out: &mut String, c: char) {
    if c == '%' {
        out.push_str("%%");
    } else {
        out.push(c);
    }
}

/// One column of a Parquet schema.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column {
    /// Column name in the Parquet file.
    pub name: String,
    /// Its type.
    pub ty: ColumnType,
    /// Whether it may be null (default true); a missing non-nullable value is a conversion failure.
    pub nullable: bool,
    /// The JSON key read (default: the name).
    pub json_key: String,
    /// Timestamp formats tried in order (timestamp columns); empty means every OpenX format.
    pub formats: Vec<TimestampFormat>,
}

/// A declared schema: columns in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableSchema {
    /// The columns.
    pub columns: Vec<Column>,
}

impl TableSchema {
    /// The Arrow schema the writer uses.
    pub fn arrow_schema(&self) -> Arc<Schema> {
        Arc::new(Schema::new(
            self.columns.iter().map(|c| Field::new(&c.name, c.ty.arrow_type(), c.nullable)).collect::<Vec<_>>(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_glue_types_to_any_depth() {
        let t = ColumnType::parse("struct<type:string, userName:varchar(64), tags:array<map<string,decimal(10,2)>>>")
            .unwrap();
        let ColumnType::Struct(fields) = &t else { panic!("{t:?}") };
        assert_eq!(fields[1], ("userName".into(), ColumnType::Varchar(64)));
        assert_eq!(
            fields[2].1,
            ColumnType::Array(Box::new(ColumnType::Map(
                Box::new(ColumnType::String),
                Box::new(ColumnType::Decimal { precision: 10, scale: 2 })
            )))
        );
        assert_eq!(ColumnType::parse("BIGINT").unwrap(), ColumnType::BigInt);
        assert_eq!(
            ColumnType::parse("timestamp").unwrap().arrow_type(),
            DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
        );
    }

    #[test]
    fn rejects_bad_types_with_an_offset() {
        assert_eq!(ColumnType::parse("array<strin>").unwrap_err().offset, 6);
        assert!(ColumnType::parse("decimal(40,2)").is_err());
        assert!(ColumnType::parse("decimal(5,6)").is_err());
        assert!(ColumnType::parse("map<array<int>,int>").is_err());
        assert!(ColumnType::parse("struct<a:int,a:int>").is_err());
        assert!(ColumnType::parse("int extra").is_err());
        assert!(ColumnType::parse("varchar(0)").is_err());
    }

    #[test]
    fn converts_java_timestamp_patterns() {
        let f = TimestampFormat::parse("yyyy-MM-dd'T'HH:mm:ss.SSSX").unwrap();
        assert_eq!(
            f,
            TimestampFormat::Pattern {
                java: "yyyy-MM-dd'T'HH:mm:ss.SSSX".into(),
                chrono: "%Y-%m-%dT%H:%M:%S%.f%#z".into(),
                zoned: true
            }
        );
        assert_eq!(TimestampFormat::parse("epoch_millis").unwrap(), TimestampFormat::EpochMillis);
        assert!(TimestampFormat::parse("yyyy QQ").is_err());
    }
}

//! `schema = "infer"`: a schema inferred from the first records of each object.
//!
//! The first [`INFER_SAMPLE`] records of an object (or all of them, if fewer) decide its columns:
//! every top-level key seen, in the order first seen (the keys of one record alphabetically), named
//! as the key matches (lowercased when keys are case-insensitive). Types widen so that every sampled record fits: integers and floats make
//! `double`, a key seen with different kinds of values becomes `string`, ISO-8601 strings with a
//! zone become `timestamp`, objects become structs and arrays take their elements' merged type.
//! Guarantees: each sampled record converts under the inferred schema. The trade-off: two objects
//! of one stream can have different schemas, and a later record that does not fit its object's
//! schema goes to the error output.

use serde_json::Value;

use super::convert::{JsonOptions, normalize};
use super::schema::{Column, ColumnType, TableSchema};

/// Records sampled per object before its schema is fixed.
pub const INFER_SAMPLE: usize = 1000;

#[derive(Debug, Clone, PartialEq)]
enum Inferred {
    /// Only nulls seen so far.
    Unknown,
    Bool,
    Int,
    Float,
    Timestamp,
    Text,
    Array(Box<Inferred>),
    Struct(Vec<(String, Inferred)>),
}

fn of(v: &Value, options: &JsonOptions) -> Inferred {
    match v {
        Value::Null => Inferred::Unknown,
        Value::Bool(_) => Inferred::Bool,
        Value::Number(n) if n.is_i64() || n.is_u64() && n.as_i64().is_some() => Inferred::Int,
        Value::Number(_) => Inferred::Float,
        Value::String(s) if chrono::DateTime::parse_from_rfc3339(s.trim()).is_ok() => Inferred::Timestamp,
        Value::String(_) => Inferred::Text,
        Value::Array(items) => {
            Inferred::Array(Box::new(items.iter().fold(Inferred::Unknown, |acc, item| merge(acc, of(item, options)))))
        }
        Value::Object(map) => {
            let mut fields: Vec<(String, Inferred)> = Vec::new();
            for (k, v) in map {
                add_field(&mut fields, normalize(k, options), of(v, options));
            }
            Inferred::Struct(fields)
        }
    }
}

fn add_field(fields: &mut Vec<(String, Inferred)>, name: String, ty: Inferred) {
    match fields.iter_mut().find(|(n, _)| *n == name) {
        Some((_, existing)) => *existing = merge(std::mem::replace(existing, Inferred::Unknown), ty),
        None => fields.push((name, ty)),
    }
}

fn merge(a: Inferred, b: Inferred) -> Inferred {
    use Inferred::*;
    match (a, b) {
        (Unknown, x) | (x, Unknown) => x,
        (Int, Float) | (Float, Int) => Float,
        (Array(x), Array(y)) => Array(Box::new(merge(*x, *y))),
        (Struct(mut x), Struct(y)) => {
            for (name, ty) in y {
                add_field(&mut x, name, ty);
            }
            Struct(x)
        }
        (x, y) if x == y => x,
        _ => Text,
    }
}

fn column_type(t: Inferred) -> ColumnType {
    match t {
        Inferred::Unknown | Inferred::Text => ColumnType::String,
        Inferred::Bool => ColumnType::Boolean,
        Inferred::Int => ColumnType::BigInt,
        Inferred::Float => ColumnType::Double,
        Inferred::Timestamp => ColumnType::Timestamp,
        Inferred::Array(inner) => ColumnType::Array(Box::new(column_type(*inner))),
        // Parquet has no empty groups: an object never seen with keys is kept as its JSON text.
        Inferred::Struct(fields) if fields.is_empty() => ColumnType::String,
        Inferred::Struct(fields) => ColumnType::Struct(fields.into_iter().map(|(n, t)| (n, column_type(t))).collect()),
    }
}

/// Infers a schema from sample top-level JSON objects.
pub fn infer_schema<'a>(
    objects: impl IntoIterator<Item = &'a serde_json::Map<String, Value>>,
    options: &JsonOptions,
) -> TableSchema {
    let mut fields: Vec<(String, Inferred)> = Vec::new();
    for object in objects {
        for (k, v) in object {
            add_field(&mut fields, normalize(k, options), of(v, options));
        }
    }
    TableSchema {
        columns: fields
            .into_iter()
            .map(|(name, t)| Column {
                json_key: name.clone(),
                name,
                ty: column_type(t),
                nullable: true,
                formats: Vec::new(),
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn objects(lines: &[&str]) -> Vec<serde_json::Map<String, Value>> {
        lines.iter().map(|l| serde_json::from_str(l).unwrap()).collect()
    }

    #[test]
    fn infers_and_widens_so_every_sample_fits() {
        let samples = objects(&[
            r#"{"ID":1,"ratio":1,"when":"2026-11-01T00:00:00Z","tags":["a"],"user":{"Name":"x"},"mixed":1,"none":null}"#,
            r#"{"id":2,"ratio":0.5,"when":"2026-11-01T00:00:01Z","tags":[],"user":{"age":3},"mixed":"two","extra":true}"#,
        ]);
        let schema = infer_schema(&samples, &JsonOptions::default());
        let got: Vec<(&str, &ColumnType)> = schema.columns.iter().map(|c| (c.name.as_str(), &c.ty)).collect();
        assert_eq!(
            got,
            vec![
                ("id", &ColumnType::BigInt),
                ("mixed", &ColumnType::String),
                ("none", &ColumnType::String),
                ("ratio", &ColumnType::Double),
                ("tags", &ColumnType::Array(Box::new(ColumnType::String))),
                (
                    "user",
                    &ColumnType::Struct(vec![("name".into(), ColumnType::String), ("age".into(), ColumnType::BigInt)])
                ),
                ("when", &ColumnType::Timestamp),
                ("extra", &ColumnType::Boolean),
            ]
        );
        let converter = super::super::RowConverter::new(std::sync::Arc::new(schema), JsonOptions::default());
        let (mut rows, mut memo) = (converter.new_columns(), super::super::KeyMemo::default());
        for o in &samples {
            converter.convert(Value::Object(o.clone()).to_string().as_bytes(), &mut rows, &mut memo).unwrap();
        }
        assert_eq!(rows.rows(), 2);
    }
}

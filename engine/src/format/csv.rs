//! `format = "csv"`: a header row of `columns`, then one RFC 4180 row per JSON object record (a
//! missing or null key is an empty field, a string its text, any other value as the record wrote
//! it: `1.50` stays `1.50`, a 30-digit integer keeps its digits, an object or array its JSON text).
//! A column is the record's key of that name; a name with dots that is no key of the record is a
//! path into its objects (`userIdentity.arn`: key `arn` of the object under `userIdentity`), keys
//! as written tried first on every level, so a flattened key (`"log.level"`, as ECS loggers write
//! it) and a nested one are both found.
//! A record that is not a JSON object is refused. Split back into the exact bytes of each row (quoted fields may hold
//! newlines), the header dropped.

use std::borrow::Cow;

use serde_json::Value;
use serde_json::value::RawValue;

use super::RecordCodec;
use crate::columnar::convert::Key;

/// CSV rows of chosen JSON keys.
#[derive(Debug, Clone)]
pub struct Csv {
    columns: Vec<String>,
    /// Each column's [`column_paths`].
    paths: Vec<Vec<Vec<String>>>,
}

impl Csv {
    /// Rows of `columns` (also the JSON keys read).
    pub fn new(columns: Vec<String>) -> Self {
        let paths = columns
            .iter()
            .map(|c| column_paths(c).into_iter().map(|p| p.into_iter().map(str::to_string).collect()).collect())
            .collect();
        Csv { columns, paths }
    }
}

fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// An object's members in their order, each value as its text, each key borrowed from the record
/// unless it has escapes (an object has a few dozen keys: a scan finds one faster than a map
/// would be built).
#[derive(Debug, Default)]
struct Members<'r>(Vec<(Cow<'r, str>, &'r RawValue)>);

impl<'r> Members<'r> {
    /// The value of `key`: of the last of duplicate keys, as jq reads them.
    fn get(&self, key: &str) -> Option<&'r RawValue> {
        self.0.iter().rev().find(|(k, _)| k == key).map(|(_, v)| *v)
    }
}

impl<'de> serde::Deserialize<'de> for Members<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Object;
        impl<'de> serde::de::Visitor<'de> for Object {
            type Value = Members<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Members<'de>, A::Error> {
                let mut members = Vec::with_capacity(32);
                while let Some((Key(key), value)) = map.next_entry::<Key<'de>, &'de RawValue>()? {
                    members.push((key, value));
                }
                Ok(Members(members))
            }
        }
        deserializer.deserialize_map(Object)
    }
}

/// The objects a record's columns reached into, each by the keys that lead to it and parsed once
/// per record (`None`: no object there).
type Nested<'p, 'r> = Vec<(&'p [String], Option<Members<'r>>)>;

/// Dots in a column's name past which only two of its ways are tried (the name as one key, and
/// split at every dot): the ways double with each dot.
const MAX_DOTS_TRIED_EVERY_WAY: usize = 6;

/// The paths (each its keys) a column's name may stand for, in the order they are tried, the
/// first that reaches a value giving the column's: the name as one key, then for each dot from
/// the left the key before it and each way of the rest under it (`a.b.c`: `a.b.c`; `a` → `b.c`;
/// `a` → `b` → `c`; `a.b` → `c`). So a key as written always wins, and a flattened key
/// (`"log.level"`) and a nested one are both found. A name of more than six dots is tried as
/// written and split at every dot only. The one rule for dotted names: the `csv` format's
/// `columns` and the postgres sink's `mapping` follow it.
pub fn column_paths(name: &str) -> Vec<Vec<&str>> {
    if name.matches('.').count() > MAX_DOTS_TRIED_EVERY_WAY {
        return vec![vec![name], name.split('.').collect()];
    }
    let mut ways = vec![vec![name]];
    for (dot, _) in name.match_indices('.') {
        for rest in column_paths(&name[dot + 1..]) {
            ways.push(std::iter::once(&name[..dot]).chain(rest).collect());
        }
    }
    ways
}

/// The value at `path` (its keys) in `members`; `None` when a key is missing or a value on the way
/// is no object. The objects on the way are parsed once per record, in `nested`.
fn find<'p, 'r>(members: &Members<'r>, path: &'p [String], nested: &mut Nested<'p, 'r>) -> Option<&'r RawValue> {
    let (last, parents) = path.split_last()?;
    if parents.is_empty() {
        return members.get(last);
    }
    let at = object_at(members, parents, nested)?;
    nested[at].1.as_ref()?.get(last)
}

/// Where in `nested` the object that `keys` lead to is (parsed and put there at the first ask).
fn object_at<'p, 'r>(members: &Members<'r>, keys: &'p [String], nested: &mut Nested<'p, 'r>) -> Option<usize> {
    if let Some(at) = nested.iter().position(|(seen, _)| *seen == keys) {
        return Some(at);
    }
    let (last, parents) = keys.split_last()?;
    let value = if parents.is_empty() {
        members.get(last)
    } else {
        let at = object_at(members, parents, nested)?;
        nested[at].1.as_ref().and_then(|parent| parent.get(last))
    };
    let object =
        value.map(RawValue::get).filter(|text| text.starts_with('{')).and_then(|text| serde_json::from_str(text).ok());
    nested.push((keys, object));
    Some(nested.len() - 1)
}

/// One CSV row (RFC 4180 quoting, `\n` line ends) through the `csv` crate.
fn write_row<T: AsRef<[u8]>>(out: &mut Vec<u8>, fields: impl IntoIterator<Item = T>) {
    let mut writer = csv::WriterBuilder::new().terminator(csv::Terminator::Any(b'\n')).from_writer(out);
    // Writing into a Vec cannot fail.
    let _ = writer.write_record(fields);
    let _ = writer.flush();
}

impl RecordCodec for Csv {
    fn describe(&self) -> String {
        format!("csv({})", self.columns.join(","))
    }

    fn content_type(&self) -> &'static str {
        "text/csv"
    }

    fn extension(&self) -> &'static str {
        ".csv"
    }

    fn header(&self) -> Vec<u8> {
        let mut out = Vec::new();
        write_row(&mut out, &self.columns);
        out
    }

    fn encode(&self, record: &[u8], out: &mut Vec<u8>) -> Result<(), String> {
        // Values as the record wrote them (a number's digits, an object's text); a string decoded;
        // the last of duplicate keys, as jq reads them.
        let Ok(members) = serde_json::from_slice::<Members<'_>>(record) else {
            let value: Value = serde_json::from_slice(record).map_err(|e| format!("record is not valid JSON: {e}"))?;
            return Err(format!("record is JSON {}, not an object", json_kind(&value)));
        };
        let mut fields = Vec::with_capacity(self.columns.len());
        let mut nested = Nested::new();
        for ways in &self.paths {
            let raw = ways.iter().find_map(|path| find(&members, path, &mut nested)).map_or("null", |v| v.get());
            fields.push(match raw.as_bytes().first() {
                Some(b'n') => Cow::Borrowed(""),
                Some(b'"') => Cow::Owned(
                    serde_json::from_str::<String>(raw).map_err(|e| format!("record is not valid JSON: {e}"))?,
                ),
                _ => Cow::Borrowed(raw),
            });
        }
        write_row(out, fields.iter().map(|field| field.as_bytes()));
        Ok(())
    }

    fn records_of(&self, text: &[u8]) -> Result<Vec<Vec<u8>>, String> {
        let mut reader = csv::ReaderBuilder::new().has_headers(true).from_reader(text);
        // The header is read lazily: read it now so the first row's position is after it.
        reader.byte_headers().map_err(|e| e.to_string())?;
        let mut starts = Vec::new();
        let mut row = csv::ByteRecord::new();
        loop {
            let start = reader.position().byte() as usize;
            match reader.read_byte_record(&mut row) {
                Ok(true) => starts.push(start),
                Ok(false) => break,
                Err(e) => return Err(e.to_string()),
            }
        }
        starts.push(text.len());
        Ok(starts
            .windows(2)
            .map(|w| text[w[0]..w[1]].strip_suffix(b"\n").unwrap_or(&text[w[0]..w[1]]).to_vec())
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_a_header_and_quoted_rows_refuses_non_objects_and_splits_back() {
        let csv = Csv::new(vec!["a".into(), "b".into(), "c".into()]);
        let mut out = csv.header();
        let mut errors = Vec::new();
        for r in [&br#"{"a":"x,y","b":2,"c":{"d":[1]}}"#[..], b"not json", b"[1]", br#"{"b":null,"a":"q\"r\nline"}"#] {
            if let Err(e) = csv.encode(r, &mut out) {
                errors.push(e);
            }
        }
        assert_eq!(String::from_utf8_lossy(&out), "a,b,c\n\"x,y\",2,\"{\"\"d\"\":[1]}\"\n\"q\"\"r\nline\",,\n");
        assert!(errors[0].starts_with("record is not valid JSON"));
        assert_eq!(errors[1], "record is JSON an array, not an object");
        let rows = csv.records_of(&out).unwrap();
        assert_eq!(rows, vec![b"\"x,y\",2,\"{\"\"d\"\":[1]}\"".to_vec(), b"\"q\"\"r\nline\",,".to_vec()]);
    }

    #[test]
    fn a_dotted_name_is_tried_as_written_then_split_from_the_left() {
        assert_eq!(column_paths("a"), [vec!["a"]]);
        assert_eq!(column_paths("a.b.c"), [vec!["a.b.c"], vec!["a", "b.c"], vec!["a", "b", "c"], vec!["a.b", "c"]]);
        assert_eq!(column_paths("a.b.c.d").len(), 8);
        let many = "a.b.c.d.e.f.g.h";
        assert_eq!(column_paths(many), [vec![many], many.split('.').collect()]);
        assert_eq!(column_paths("a.b.c.d.e.f.g").len(), 64);
    }

    /// Nested values by their path, flattened keys by their name, keys as written first; a path
    /// through something that is not an object, or to nothing, is an empty field.
    #[test]
    fn a_column_with_dots_is_a_key_as_written_or_else_a_path() {
        let columns = ["userIdentity.arn", "log.level", "a.b.c", "a.x", "n.m", "userIdentity.sessionContext.mfa"];
        let csv = Csv::new(columns.iter().map(|c| c.to_string()).collect());
        assert_eq!(String::from_utf8_lossy(&csv.header()), columns.join(",") + "\n");
        let mut out = Vec::new();
        let records: [&[u8]; 3] = [
            br#"{"userIdentity":{"type":"IAMUser","arn":"arn:aws:iam::1:user/a","sessionContext":{"mfa":true}},"log.level":"info","a":{"b.c":1,"x":[1]},"n":5}"#,
            // A flattened key wins over the path; of two paths, the one splitting first.
            br#"{"log":{"level":"nested"},"log.level":"flat","a.b":{"c":"second"},"a":{"b":{"c":"first"}}}"#,
            // A path through a string is no way; the next one is.
            br#"{"log":{"level":"nested"},"a":"text","a.b":{"c":"\u00e9"},"n":{"m":null}}"#,
        ];
        for record in records {
            csv.encode(record, &mut out).unwrap();
        }
        assert_eq!(
            String::from_utf8_lossy(&out),
            "arn:aws:iam::1:user/a,info,1,[1],,true\n,flat,first,,,\n,nested,é,,,\n"
        );
    }

    /// Values as the record wrote them (a tree wrote `1.50` as `1.5` and a 30-digit integer as a
    /// float), a key with escapes by its text, the last of duplicate keys.
    #[test]
    fn values_keep_the_records_digits_and_text() {
        let csv = Csv::new(vec!["a".into(), "b".into(), "c".into(), "k".into()]);
        let mut out = Vec::new();
        let record =
            br#"{"a":1.50,"b":123456789012345678901234567890,"c":{ "d" : [1e400] },"\u006b":"x","k":"y\u00e9"}"#;
        csv.encode(record, &mut out).unwrap();
        // A column's string whose escape makes no character refuses the record, and writes nothing.
        let mut nothing = Vec::new();
        let lone = csv.encode(br#"{"a":"\udcCC"}"#, &mut nothing);
        assert!(lone.is_err_and(|e| e.starts_with("record is not valid JSON")) && nothing.is_empty());
        assert_eq!(
            String::from_utf8_lossy(&out),
            "1.50,123456789012345678901234567890,\"{ \"\"d\"\" : [1e400] }\",yé\n"
        );
    }
}

//! `type = "jq"`: reshapes, filters or splits JSON records with a jq query (jaq, jq's language).
//!
//! ```toml
//! [transforms.shape]
//! type = "jq"
//! inputs = ["mask"]
//! query = '{time: .eventTime, user: .userIdentity.userName, event: .eventName} | select(.event != "GetObject")'
//! ```
//!
//! The query is compiled when the pipeline is read (a query that does not compile is a config error
//! pointing into it) and again once per worker (jaq's values are for one thread). Each record is
//! parsed by jaq's own reader and run through the query: each output becomes one record, compact
//! JSON; no output (`select`, `empty`) drops the record, counted; several (`.logEvents[]`) make
//! several records, in order. A record that is not JSON, a runtime error (jaq's message), or an
//! output that is not JSON (a byte string, NaN or an infinity) sends the record, as it entered, to
//! the error output as `processing-failed` with code `Jq.ProcessingFailed`, and nothing of it goes on.
//!
//! The most common query shape — an object built from paths, optionally followed by one
//! `select(.key == literal)` or `!=` on it — is also compiled into a `Projection` that reads the
//! record's raw bytes without building jaq's values (about ten times faster). It answers only when
//! its answer is exactly jaq's: the record is valid JSON, every path runs through objects or null,
//! and every value it copies is written the same way by jaq (a string without escapes, an integer
//! of at most 15 digits, `true`, `false`, `null`); any other record goes through jaq. So does the
//! shape that splits a document into its records, an array at a path iterated (`.Records[]`, a
//! CloudTrail log file's events): each element is copied as its bytes when every element is written
//! exactly as jaq writes it (compact, no key twice in an object, its strings and numbers as above),
//! else the record goes through jaq.

use std::sync::Arc;

use jaq_core::load::{Arena, File, Loader};
use jaq_core::{Ctx, Vars, data, unwrap_valr};
use jaq_json::Val;
use serde::Deserialize;
use sluice_engine::config::{ConnectorConfig, Diagnostic, Problems};

use super::json::{self, Scanned};
use super::words;
use sluice_engine::contract::{
    Emit, KeyQuery, KeyQueryError, KeyQueryWorker, RecordByRecord, RecordTransform, Transform, TransformContext,
    TransformError, TransformFailure, TransformWorker, put_key_value,
};

/// The error code of a record the query failed.
pub const PROCESSING_FAILED: &str = "Jq.ProcessingFailed";

type Filter = jaq_core::Filter<data::JustLut<Val>>;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct JqConfig {
    query: String,
}

/// A configured jq transform.
#[derive(Debug)]
pub struct JqTransform {
    query: String,
    projection: Option<Projection>,
    /// `.a.b[]`: the path whose array is iterated.
    iteration: Option<json::PathTree>,
}

/// Builds a jq transform from `[transforms.<name>]`.
pub fn configure(config: ConnectorConfig) -> Result<Arc<dyn Transform>, Problems> {
    let span = config.table.span.clone();
    let query_span = config.table.value_span("query").unwrap_or(span.clone());
    let mut problems = Problems::default();
    let Some(c) = config.table.deserialize::<JqConfig>(&mut problems) else { return Err(problems) };
    if let Err(errors) = compile(&c.query) {
        if errors.is_empty() {
            problems.push(Diagnostic::new(query_span.clone(), "the jq query does not compile"));
        }
        for (offset, message) in errors {
            problems.push(
                Diagnostic::in_string(query_span.clone(), offset, format!("the jq query does not compile: {message}"))
                    .with_hint("jq syntax (jaq): e.g. query = '{time: .eventTime, user: .userIdentity.userName}'"),
            );
        }
    }
    let c = problems.finish(Some(c))?;
    let projection = Projection::parse(&c.query);
    let iteration = iterated_path(&c.query).map(|p| json::PathTree::new(&[p]));
    Ok(Arc::new(JqTransform { query: c.query, projection, iteration }))
}

/// Compiles `query` with jq's standard library; on failure, each problem with its byte offset in the
/// query.
fn compile(query: &str) -> Result<Filter, Vec<(usize, String)>> {
    let offset = |s: &str| (s.as_ptr() as usize).saturating_sub(query.as_ptr() as usize).min(query.len());
    let defs = jaq_core::defs().chain(jaq_std::defs()).chain(jaq_json::defs());
    let funs = jaq_core::funs().chain(jaq_std::funs()).chain(jaq_json::funs());
    let loader = Loader::new(defs);
    let arena = Arena::default();
    let modules = loader.load(&arena, File { code: query, path: () }).map_err(|errors| {
        let mut problems = Vec::new();
        for (_, error) in errors {
            match error {
                jaq_core::load::Error::Io(e) => problems.extend(e.into_iter().map(|(s, m)| (offset(s), m))),
                jaq_core::load::Error::Lex(e) => problems
                    .extend(e.into_iter().map(|(expect, s)| (offset(s), format!("expected {}", expect.as_str())))),
                jaq_core::load::Error::Parse(e) => problems.extend(e.into_iter().map(|(expect, s)| {
                    let found = if s.is_empty() { "the end".to_string() } else { format!("`{s}`") };
                    (offset(s), format!("expected {}, found {found}", expect.as_str()))
                })),
            }
        }
        problems
    })?;
    jaq_core::Compiler::default().with_funs(funs).compile(modules).map_err(|errors| {
        errors
            .into_iter()
            .flat_map(|(_, e)| e)
            .map(|(name, undefined)| {
                let kind = undefined.as_str();
                let mut message = format!("undefined {kind} `{name}`");
                // `eventName` for `.eventName`: jq reads a bare word as a filter's name.
                if kind == "filter" && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
                    message.push_str(&format!(" (a key is read with a dot: `.{name}`)"));
                }
                (offset(name), message)
            })
            .collect()
    })
}

impl Transform for JqTransform {
    fn describe(&self) -> String {
        format!("jq: {}", self.query)
    }

    fn open(&self, _context: &TransformContext) -> Result<Box<dyn TransformWorker>, TransformError> {
        let filter =
            compile(&self.query).map_err(|p| TransformError::new(format!("jq query does not compile: {p:?}")))?;
        Ok(Box::new(RecordByRecord(JqWorker::new(filter, self.projection.clone(), self.iteration.clone()))))
    }
}

/// The query compiled for one worker.
struct JqWorker {
    filter: Filter,
    projection: Option<Projection>,
    /// `.a.b[]`: the array whose elements are copied as written when jaq would write them so.
    iteration: Option<json::PathTree>,
    /// What the projection found, reused.
    found: Vec<json::Found>,
    out: Vec<u8>,
}

impl JqWorker {
    fn new(filter: Filter, projection: Option<Projection>, iteration: Option<json::PathTree>) -> Self {
        JqWorker { filter, projection, iteration, found: Vec::new(), out: Vec::new() }
    }
}

impl RecordTransform for JqWorker {
    fn transform(&mut self, record: &[u8], emit: &mut Emit<'_>) -> Result<(), TransformFailure> {
        if let Some(projection) = &self.projection {
            self.out.clear();
            match projection.run(record, &mut self.found, &mut self.out) {
                Some(true) => {
                    emit.record(&self.out);
                    return Ok(());
                }
                Some(false) => return Ok(()),
                None => {}
            }
        }
        if let Some(tree) = &self.iteration
            && let Some(elements) = elements_as_written(record, tree, &mut self.found)
        {
            for element in elements {
                emit.record(element);
            }
            return Ok(());
        }
        let input = jaq_json::read::parse_single(record)
            .map_err(|e| TransformFailure::processing(PROCESSING_FAILED, format!("the record is not JSON: {e}")))?;
        let ctx = Ctx::<data::JustLut<Val>>::new(&self.filter.lut, Vars::new([]));
        for output in self.filter.id.run((ctx, input)).map(unwrap_valr) {
            let value = output.map_err(|e| TransformFailure::processing(PROCESSING_FAILED, e.to_string()))?;
            if let Some(problem) = not_json(&value) {
                return Err(TransformFailure::processing(
                    PROCESSING_FAILED,
                    format!("the query's output is not JSON: {problem}"),
                ));
            }
            self.out.clear();
            // Writing into a Vec cannot fail.
            let _ = jaq_json::write::write(&mut self.out, &jaq_json::write::Pp::default(), 0, &value);
            emit.record(&self.out);
        }
        Ok(())
    }
}

/// A sink's `partitioning.query`: the registry's key-query compiler (the same jq as the transform).
pub fn key_query(query: &str) -> Result<Arc<dyn KeyQuery>, (usize, String)> {
    if let Err(problems) = compile(query) {
        return Err(problems.into_iter().next().unwrap_or((0, "does not compile".into())));
    }
    Ok(Arc::new(JqKeyQuery { query: query.to_string(), projection: Projection::parse(query) }))
}

/// A partitioning query.
#[derive(Debug)]
struct JqKeyQuery {
    query: String,
    projection: Option<Projection>,
}

impl KeyQuery for JqKeyQuery {
    fn describe(&self) -> String {
        self.query.clone()
    }

    fn static_keys(&self) -> Option<Vec<String>> {
        let projection = self.projection.as_ref()?;
        let names = projection.fields.iter().map(|(k, _)| String::from_utf8_lossy(&k[1..k.len() - 1]).into_owned());
        Some(names.collect())
    }

    fn open(&self, wanted: &[String]) -> Result<Box<dyn KeyQueryWorker>, TransformError> {
        let filter =
            compile(&self.query).map_err(|p| TransformError::new(format!("jq query does not compile: {p:?}")))?;
        // Where each wanted key is among the projection's fields (a key it lacks: jaq answers).
        let projected = self.projection.as_ref().and_then(|projection| {
            let field = |name: &String| {
                projection.fields.iter().position(|(key, _)| key.get(1..key.len() - 1) == Some(name.as_bytes()))
            };
            wanted.iter().map(field).collect::<Option<Vec<usize>>>()
        });
        Ok(Box::new(JqKeys {
            worker: JqWorker::new(filter, self.projection.clone(), None),
            answers: sluice_engine::record::RecordBatch::default(),
            wanted: wanted.to_vec(),
            projected,
        }))
    }
}

/// One worker's partitioning query: the jq worker, then the answer read as keys.
struct JqKeys {
    worker: JqWorker,
    answers: sluice_engine::record::RecordBatch,
    /// The keys asked for, in order.
    wanted: Vec<String>,
    /// Each wanted key's field in the projection, when the projection has them all.
    projected: Option<Vec<usize>>,
}

impl KeyQueryWorker for JqKeys {
    fn values(&mut self, record: &[u8], values: &mut Vec<Vec<u8>>) -> Result<(), KeyQueryError> {
        // The projection's raw values, when it answers: strings without their quotes (it answers
        // only strings without escapes), numbers and booleans as written (null is not a key
        // value, in any field).
        if let (Some(projection), Some(projected)) = (&self.worker.projection, &self.projected)
            && projection.select.is_none()
            && projection.resolve(record, &mut self.worker.found)
            && (0..projection.fields.len()).all(|i| raw_value(record, &self.worker.found, i).first() != Some(&b'n'))
        {
            values.truncate(projected.len());
            for (slot, &field) in projected.iter().enumerate() {
                let value = raw_value(record, &self.worker.found, field);
                let text = if value.first() == Some(&b'"') { &value[1..value.len() - 1] } else { value };
                put_key_value(values, slot, text);
            }
            return Ok(());
        }
        self.answers.clear();
        self.worker
            .transform(record, &mut Emit::new(&mut self.answers))
            .map_err(|f| KeyQueryError::Failed(f.message))?;
        let mut answers = self.answers.iter();
        let (Some(answer), None) = (answers.next(), answers.next()) else {
            return Err(KeyQueryError::Failed(format!(
                "the query gave {} values; a partitioning query gives one object",
                self.answers.len()
            )));
        };
        // jaq keeps a string's bytes that are not UTF-8 as they are; as keys they become U+FFFD,
        // as jq reads them and as the partition operator takes the projection's raw values.
        let object: serde_json::Map<String, serde_json::Value> = serde_json::from_str(&String::from_utf8_lossy(answer))
            .map_err(|_| {
                KeyQueryError::Failed(format!("the query gave `{}`, not an object", String::from_utf8_lossy(answer)))
            })?;
        // Every member must be a possible key value, used in the prefix or not.
        let mut texts = Vec::with_capacity(object.len());
        for (name, value) in object {
            let text = match value {
                serde_json::Value::String(s) => s,
                serde_json::Value::Number(n) => n.to_string(),
                serde_json::Value::Bool(b) => b.to_string(),
                other => {
                    return Err(KeyQueryError::Failed(format!(
                        "key `{name}` is {other}, not a string, number or boolean"
                    )));
                }
            };
            texts.push((name, text));
        }
        values.truncate(self.wanted.len());
        for (slot, name) in self.wanted.iter().enumerate() {
            let (_, text) =
                texts.iter().find(|(n, _)| n == name).ok_or_else(|| KeyQueryError::MissingKey(name.clone()))?;
            put_key_value(values, slot, text.as_bytes());
        }
        Ok(())
    }
}

/// A query whose answer is a value, not records (the dedup transform's `key`): the same jq, and
/// the same fast paths: the projection, and a plain path (`.a.b`) read from the record's bytes
/// when its value is written as jaq writes it.
#[derive(Debug)]
pub struct ValueQuery {
    query: String,
    projection: Option<Projection>,
    path: Option<json::PathTree>,
}

/// `.a.b.c[]` and nothing else: the path's keys.
fn iterated_path(query: &str) -> Option<Vec<Vec<u8>>> {
    let mut text = QueryText { text: query.as_bytes(), at: 0 };
    let path = text.path()?;
    (text.eat("[]") && {
        text.ws();
        text.at == query.len()
    })
    .then_some(path)
}

/// The elements of the array at `tree`'s one path in `record`, each exactly as jaq would write it,
/// or `None` when jaq must answer: the record is not valid JSON, the path does not lead to an
/// array (jq iterates an object's values, fails on null), or the array is not written as jaq
/// writes it ([`elements_written_as_jaq_writes`]).
fn elements_as_written<'r>(
    record: &'r [u8],
    tree: &json::PathTree,
    found: &mut Vec<json::Found>,
) -> Option<Vec<&'r [u8]>> {
    if json::find_paths(record, tree, found) != Some(Scanned::Valid) {
        return None;
    }
    let Some(json::Found::At(range)) = found.first() else { return None };
    // (Bytes that are not UTF-8 inside a string: jaq writes them as they are, too.)
    let array = record.get(range.clone())?;
    elements_written_as_jaq_writes(array)
}

/// The elements of `array` (one valid JSON value) when it is an array written exactly as jaq writes
/// it: no white space, no object with a key twice, every string and number as [`as_written`] takes
/// it; read in one walk.
fn elements_written_as_jaq_writes(array: &[u8]) -> Option<Vec<&[u8]>> {
    /// Reads the value at `at`; false when it is not as jaq writes it.
    fn value_at(v: &[u8], at: &mut usize, depth: usize) -> bool {
        if depth > 128 {
            return false;
        }
        match v.get(*at) {
            Some(b'{') => {
                let mut keys: Vec<&[u8]> = Vec::new();
                items(v, at, b'}', |v, at| {
                    let start = *at;
                    if !string_at(v, at) || keys.contains(&&v[start..*at]) || v.get(*at) != Some(&b':') {
                        return false;
                    }
                    keys.push(&v[start..*at]);
                    *at += 1;
                    value_at(v, at, depth + 1)
                })
            }
            Some(b'[') => items(v, at, b']', |v, at| value_at(v, at, depth + 1)),
            Some(b'"') => string_at(v, at),
            Some(_) => {
                let end = v[*at..].iter().position(|b| matches!(b, b',' | b']' | b'}')).map_or(v.len(), |p| *at + p);
                let scalar = &v[*at..end];
                *at = end;
                as_written(scalar).is_some()
            }
            None => false,
        }
    }
    /// Reads the object or array opening at `at` up to its `close`: its items, each read by
    /// `item`, separated by single commas.
    fn items<'v>(v: &'v [u8], at: &mut usize, close: u8, mut item: impl FnMut(&'v [u8], &mut usize) -> bool) -> bool {
        *at += 1;
        if v.get(*at) == Some(&close) {
            *at += 1;
            return true;
        }
        loop {
            if !item(v, at) {
                return false;
            }
            match v.get(*at) {
                Some(b',') => *at += 1,
                Some(&b) if b == close => {
                    *at += 1;
                    return true;
                }
                _ => return false,
            }
        }
    }
    /// Reads the string at `at` (no escape in it, as [`as_written`] asks).
    fn string_at(v: &[u8], at: &mut usize) -> bool {
        if v.get(*at) != Some(&b'"') {
            return false;
        }
        let Some(close) = memchr::memchr2(b'"', b'\\', &v[*at + 1..]) else { return false };
        let end = *at + 1 + close;
        if v[end] != b'"' {
            return false;
        }
        let text = &v[*at..=end];
        *at = end + 1;
        as_written(text).is_some()
    }
    if array.first() != Some(&b'[') {
        return None;
    }
    let (mut at, mut elements) = (0, Vec::new());
    let whole = items(array, &mut at, b']', |v, at| {
        let start = *at;
        let written = value_at(v, at, 1);
        elements.push(&v[start..*at]);
        written
    });
    (whole && at == array.len()).then_some(elements)
}

/// `.a.b.c` and nothing else: the path's keys.
fn plain_path(query: &str) -> Option<Vec<Vec<u8>>> {
    let mut text = QueryText { text: query.as_bytes(), at: 0 };
    let path = text.path()?;
    text.ws();
    (text.at == query.len()).then_some(path)
}

impl ValueQuery {
    /// Compiles `query`; on failure, the first problem with its byte offset in the query.
    pub fn new(query: &str) -> Result<Self, (usize, String)> {
        if let Err(problems) = compile(query) {
            return Err(problems.into_iter().next().unwrap_or((0, "does not compile".into())));
        }
        let path = plain_path(query).map(|p| json::PathTree::new(&[p]));
        Ok(ValueQuery { query: query.to_string(), projection: Projection::parse(query), path })
    }

    /// The query as configured.
    pub fn describe(&self) -> &str {
        &self.query
    }

    /// The query for one worker (called on its thread).
    pub fn open(&self) -> Result<ValueWorker, TransformError> {
        let filter =
            compile(&self.query).map_err(|p| TransformError::new(format!("jq query does not compile: {p:?}")))?;
        Ok(ValueWorker {
            worker: JqWorker::new(filter, self.projection.clone(), None),
            answers: sluice_engine::record::RecordBatch::default(),
            path: self.path.clone(),
        })
    }
}

/// One worker's [`ValueQuery`].
pub struct ValueWorker {
    worker: JqWorker,
    answers: sluice_engine::record::RecordBatch,
    path: Option<json::PathTree>,
}

impl ValueWorker {
    /// The query's first output for `record`, as compact JSON (`None`: it gave none), or jq's error.
    pub fn first_value<'r>(&'r mut self, record: &'r [u8]) -> Result<Option<&'r [u8]>, String> {
        if let Some(tree) = &self.path
            && json::find_paths(record, tree, &mut self.worker.found) == Some(Scanned::Valid)
        {
            match self.worker.found.first() {
                Some(json::Found::Missing) => return Ok(Some(b"null")),
                Some(json::Found::At(range)) => {
                    if let Some(value) = record.get(range.clone()).and_then(as_written) {
                        return Ok(Some(value));
                    }
                }
                _ => {}
            }
        }
        self.answers.clear();
        self.worker.transform(record, &mut Emit::new(&mut self.answers)).map_err(|f| f.message)?;
        Ok(self.answers.iter().next())
    }
}

/// `query` run by each of its fast paths (the transform's projection, the partitioning query's
/// projected keys, a plain path's value) and by jaq alone, side by side: the oracle of the unit
/// tests and of the `jq_fast_paths` fuzz target (`fuzz/`, built with `--cfg fuzzing`).
#[cfg(any(test, fuzzing))]
pub struct FastPathOracle {
    query: String,
    /// The transform with its projection, and without.
    transform: Option<(JqWorker, JqWorker)>,
    /// The partitioning query with its projection, and without.
    keys: Option<(Box<dyn KeyQueryWorker>, Box<dyn KeyQueryWorker>)>,
    /// The value query with its plain path and projection, and without.
    values: Option<(ValueWorker, ValueWorker)>,
}

#[cfg(any(test, fuzzing))]
impl FastPathOracle {
    /// The oracle of `query`; `None` when it does not compile.
    pub fn new(query: &str) -> Option<Self> {
        // jaq's filters are not `Clone`: each worker compiles its own, as the pipeline's do.
        let worker = |projection: Option<Projection>, iteration: Option<json::PathTree>| {
            let filter = compile(query).ok()?;
            Some(JqWorker::new(filter, projection, iteration))
        };
        let projection = Projection::parse(query);
        let iteration = iterated_path(query).map(|p| json::PathTree::new(&[p]));
        let transform = if projection.is_some() || iteration.is_some() {
            Some((worker(projection.clone(), iteration)?, worker(None, None)?))
        } else {
            None
        };
        let keys = match &projection {
            Some(p) => {
                let fast = JqKeyQuery { query: query.to_string(), projection: Some(p.clone()) };
                let slow = JqKeyQuery { query: query.to_string(), projection: None };
                let wanted = fast.static_keys().unwrap_or_default();
                Some((fast.open(&wanted).ok()?, slow.open(&wanted).ok()?))
            }
            None => None,
        };
        let fast = ValueQuery::new(query).ok()?;
        let slow = ValueQuery { query: query.to_string(), projection: None, path: None };
        let values = (fast.path.is_some() || fast.projection.is_some()).then(|| (fast.open(), slow.open()));
        let values = match values {
            Some((Ok(fast), Ok(slow))) => Some((fast, slow)),
            Some(_) => return None,
            None => None,
        };
        Some(FastPathOracle { query: query.to_string(), transform, keys, values })
    }

    /// Whether every fast path answers `record` exactly as jaq does; else where they differ.
    pub fn check(&mut self, record: &[u8]) -> Result<(), String> {
        let show = |what: &str, fast: &dyn std::fmt::Debug, slow: &dyn std::fmt::Debug| {
            let record = String::from_utf8_lossy(record);
            format!("`{}` on {record:?}: {what} gave {fast:?}, jaq {slow:?}", self.query)
        };
        if let Some((fast, slow)) = &mut self.transform {
            let records = |worker: &mut JqWorker| {
                let mut batch = sluice_engine::record::RecordBatch::default();
                let result = worker.transform(record, &mut Emit::new(&mut batch));
                result.map(|()| batch.iter().map(<[u8]>::to_vec).collect::<Vec<_>>())
            };
            let (fast, slow) = (records(fast), records(slow));
            if differ(&fast, &slow) {
                return Err(show("the projection", &fast, &slow));
            }
        }
        if let Some((fast, slow)) = &mut self.keys {
            // As the partition operator reads the values: bytes that are not UTF-8 as U+FFFD.
            let answers = |worker: &mut Box<dyn KeyQueryWorker>| {
                let mut values = Vec::new();
                worker
                    .values(record, &mut values)
                    .map(|()| values.iter().map(|v| String::from_utf8_lossy(v).into_owned()).collect::<Vec<_>>())
            };
            let (fast, slow) = (answers(fast), answers(slow));
            if fast != slow {
                return Err(show("the projected keys", &fast, &slow));
            }
        }
        if let Some((fast, slow)) = &mut self.values {
            let fast = fast.first_value(record).map(|v| v.map(<[u8]>::to_vec));
            let slow = slow.first_value(record).map(|v| v.map(<[u8]>::to_vec));
            if differ(&fast, &slow) {
                return Err(show("the value query", &fast, &slow));
            }
        }
        Ok(())
    }
}

/// Whether two answers differ: in their outputs, or one failing where the other does not (errors
/// are not compared: each way words its own).
#[cfg(any(test, fuzzing))]
fn differ<T: PartialEq, E>(fast: &Result<T, E>, slow: &Result<T, E>) -> bool {
    fast.as_ref().ok() != slow.as_ref().ok() || fast.is_err() != slow.is_err()
}

/// jq's keywords, which are not plain identifiers.
const KEYWORDS: &[&str] = &[
    "and", "or", "not", "if", "then", "elif", "else", "end", "as", "def", "reduce", "foreach", "try", "catch", "label",
    "import", "include", "__loc__", "true", "false", "null",
];

/// `{key: .path.to.value, …}` optionally followed by `| select(.key == literal)` (or `!=`): the
/// query shape answered without jaq when the record allows (module docs).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Projection {
    /// Output keys (as JSON strings, quotes included) and the path each reads.
    fields: Vec<(Vec<u8>, Vec<Vec<u8>>)>,
    /// The output field compared, whether it must equal the literal, and the literal as JSON.
    select: Option<(usize, bool, Vec<u8>)>,
    /// The fields' paths, found in one validating pass.
    tree: json::PathTree,
}

/// A cursor over a query's text.
struct QueryText<'a> {
    text: &'a [u8],
    at: usize,
}

impl QueryText<'_> {
    fn ws(&mut self) {
        while self.text.get(self.at).is_some_and(u8::is_ascii_whitespace) {
            self.at += 1;
        }
    }

    fn eat(&mut self, token: &str) -> bool {
        self.ws();
        if self.text[self.at..].starts_with(token.as_bytes()) {
            self.at += token.len();
            true
        } else {
            false
        }
    }

    fn ident(&mut self) -> Option<String> {
        self.ws();
        let start = self.at;
        while self.text.get(self.at).is_some_and(|&b| b.is_ascii_alphanumeric() || b == b'_') {
            self.at += 1;
        }
        let ident = std::str::from_utf8(&self.text[start..self.at]).ok()?;
        let valid = ident.bytes().next().is_some_and(|b| b.is_ascii_alphabetic() || b == b'_');
        (valid && !KEYWORDS.contains(&ident)).then(|| ident.to_string())
    }

    /// `.a.b.c`, with no space inside.
    fn path(&mut self) -> Option<Vec<Vec<u8>>> {
        self.ws();
        let mut segments = Vec::new();
        while self.text.get(self.at) == Some(&b'.') {
            self.at += 1;
            if self.text.get(self.at).is_some_and(u8::is_ascii_whitespace) {
                return None;
            }
            segments.push(self.ident()?.into_bytes());
        }
        (!segments.is_empty()).then_some(segments)
    }

    /// A string without escapes, an integer, `true`, `false` or `null`, as canonical JSON.
    fn literal(&mut self) -> Option<Vec<u8>> {
        self.ws();
        let rest = &self.text[self.at..];
        for word in ["true", "false", "null"] {
            if rest.starts_with(word.as_bytes()) {
                self.at += word.len();
                return Some(word.as_bytes().to_vec());
            }
        }
        if rest.first() == Some(&b'"') {
            let end = rest[1..].iter().position(|&b| b == b'"' || b == b'\\')? + 1;
            if rest[end] != b'"' || rest[1..end].iter().any(|&b| b < 0x20 || b == 0x7f) {
                return None;
            }
            self.at += end + 1;
            return Some(rest[..=end].to_vec());
        }
        let digits = rest.iter().take_while(|b| b.is_ascii_digit() || **b == b'-').count();
        let number = std::str::from_utf8(&rest[..digits]).ok()?;
        let value: i64 = number.parse().ok()?;
        if number.len() > 15 || value.to_string() != number || number == "-0" {
            return None;
        }
        self.at += digits;
        Some(number.as_bytes().to_vec())
    }
}

impl Projection {
    /// The projection `query` is, if it has the shape.
    fn parse(query: &str) -> Option<Projection> {
        let mut q = QueryText { text: query.as_bytes(), at: 0 };
        if !q.eat("{") {
            return None;
        }
        let mut fields: Vec<(Vec<u8>, Vec<Vec<u8>>)> = Vec::new();
        loop {
            let key = q.ident()?;
            let path = if q.eat(":") { q.path()? } else { vec![key.clone().into_bytes()] };
            let key_json = format!("\"{key}\"").into_bytes();
            if fields.iter().any(|(k, _)| *k == key_json) {
                return None;
            }
            fields.push((key_json, path));
            if q.eat("}") {
                break;
            }
            if !q.eat(",") {
                return None;
            }
        }
        let mut select = None;
        if q.eat("|") {
            if !q.eat("select") || !q.eat("(") {
                return None;
            }
            let path = q.path()?;
            let [key] = path.as_slice() else { return None };
            let key_json = [b"\"".as_slice(), key, b"\""].concat();
            let field = fields.iter().position(|(k, _)| *k == key_json)?;
            let equal = if q.eat("==") {
                true
            } else if q.eat("!=") {
                false
            } else {
                return None;
            };
            let literal = q.literal()?;
            if !q.eat(")") {
                return None;
            }
            select = Some((field, equal, literal));
        }
        q.ws();
        let tree = json::PathTree::new(&fields.iter().map(|(_, path)| path.clone()).collect::<Vec<_>>());
        (q.at == q.text.len()).then_some(Projection { fields, select, tree })
    }

    /// Writes the output for `record` into `out`: `Some(true)` one record, `Some(false)` none (the
    /// select dropped it), `None` when only jaq can answer.
    fn run(&self, record: &[u8], found: &mut Vec<json::Found>, out: &mut Vec<u8>) -> Option<bool> {
        if !self.resolve(record, found) {
            return None;
        }
        if let Some((field, equal, literal)) = &self.select
            && (raw_value(record, found, *field) == literal.as_slice()) != *equal
        {
            return Some(false);
        }
        out.push(b'{');
        for (i, (key, _)) in self.fields.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            out.extend_from_slice(key);
            out.push(b':');
            out.extend_from_slice(raw_value(record, found, i));
        }
        out.push(b'}');
        Some(true)
    }
}

impl Projection {
    /// Whether jaq would write the value of every field for `record` exactly as the record holds
    /// it: one pass validates the record and finds every path into `found` (a missing key or a
    /// null on the way is `null`, as jq says); [`raw_value`] then reads each field's value. No
    /// allocation per record (collecting the values had been one).
    fn resolve(&self, record: &[u8], found: &mut Vec<json::Found>) -> bool {
        json::find_paths(record, &self.tree, found) == Some(Scanned::Valid)
            && found.iter().all(|f| match f {
                json::Found::At(range) => record.get(range.clone()).and_then(as_written).is_some(),
                json::Found::Missing => true,
                json::Found::Blocked => false,
            })
    }
}

/// Field `field`'s value in `record` as written, once [`Projection::resolve`] said jaq writes it
/// so: its bytes, or `null` for a missing one.
fn raw_value<'r>(record: &'r [u8], found: &[json::Found], field: usize) -> &'r [u8] {
    match found.get(field) {
        Some(json::Found::At(range)) => record.get(range.clone()).unwrap_or(b"null"),
        _ => b"null",
    }
}

/// `value`, one whole value of a document [`json::find_paths`] validated, when jaq would write it
/// exactly as it is: a string without escapes or DEL, a literal, an integer of at most 15 digits
/// (not `-0`); else `None`.
fn as_written(value: &[u8]) -> Option<&[u8]> {
    match value.first()? {
        // A validated string holds a backslash exactly when it holds an escape. Sixteen bytes at a
        // time: most values are one block.
        b'"' => {
            let plain = (0..value.len()).step_by(words::BLOCK).all(|at| {
                let block = words::block_at(value, at);
                words::equal(block, b'\\') | words::equal(block, 0x7f) == 0
            });
            plain.then_some(value)
        }
        b't' | b'f' | b'n' => Some(value),
        b'-' | b'0'..=b'9' => {
            let integer = value.iter().all(|b| b.is_ascii_digit() || *b == b'-');
            (integer && value.len() <= 15 && value != b"-0").then_some(value)
        }
        _ => None,
    }
}

/// What in `value` JSON cannot say, if anything: a byte string, NaN or an infinity.
fn not_json(value: &Val) -> Option<&'static str> {
    match value {
        Val::Null | Val::Bool(_) | Val::TStr(_) => None,
        Val::Num(jaq_json::Num::Float(f)) if !f.is_finite() => Some("a number that is NaN or infinite"),
        Val::Num(_) => None,
        Val::BStr(_) => Some("a byte string"),
        Val::Arr(items) => items.iter().find_map(not_json),
        Val::Obj(map) => map.iter().find_map(|(k, v)| {
            if matches!(k, Val::TStr(_)) { not_json(v) } else { Some("an object key that is not a string") }
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_engine::contract::Emit;

    fn worker(query: &str, fast: bool) -> JqWorker {
        JqWorker::new(
            compile(query).unwrap_or_else(|e| panic!("{e:?}")),
            if fast { Projection::parse(query) } else { None },
            if fast { iterated_path(query).map(|p| json::PathTree::new(&[p])) } else { None },
        )
    }

    /// `.Records[]` (and any `.path[]`): elements copied as their bytes answer exactly as jaq
    /// does, and only when jaq would write them so; a CloudTrail log file of compact events is
    /// answered without jaq.
    #[test]
    fn an_iterated_array_answers_exactly_as_jaq_or_not_at_all() {
        assert!(iterated_path(".Records[]").is_some() && iterated_path(" .a.b[] ").is_some());
        for q in [".Records", ".Records[]?", ".Records[0]", ".[]", ".Records[] | .a", ".Records[][]"] {
            assert!(iterated_path(q).is_none(), "{q}");
        }
        let records = [
            r#"{"Records":[{"a":1,"b":"x","c":{"d":[1,2,{"e":null}]},"f":true},{"g":[]},{}]}"#,
            r#"{"Records":[1,"s",null,false,[1,[2]]],"other":1}"#,
            r#"{"Records":[]}"#,
            r#"{"Records": [ {"a": 1} ] }"#,
            r#"{"Records":[{"a":1, "b":2}]}"#,
            r#"{"Records":[{"a":1,"a":2}]}"#,
            r#"{"Records":[{"a":"q"uote"}]}"#,
            r#"{"Records":[{"a":"é"}]}"#,
            r#"{"Records":[{"a":1.5}]}"#,
            r#"{"Records":[{"a":1.50}]}"#,
            r#"{"Records":[{"a":-0}]}"#,
            r#"{"Records":[{"a":1e2}]}"#,
            r#"{"Records":[{"a":1234567890123456789}]}"#,
            "{\"Records\":[{\"a\":\"x\u{7f}\"}]}",
            r#"{"Records":[{"é":"ü"}]}"#,
            r#"{"Records":{"a":1,"b":2}}"#,
            r#"{"Records":null}"#,
            r#"{"Records":"text"}"#,
            r#"{"other":1}"#,
            r#"{"Records":[{"a":1}]} trailing"#,
            r#"{"Records":[{"a":1}],"Records":[{"b":2}]}"#,
            r#"{"Records":[{"a":1}]}"#,
            r#"[{"a":1}]"#,
            "not json",
        ];
        let mut oracle = FastPathOracle::new(".Records[]").unwrap();
        for r in records {
            oracle.check(r.as_bytes()).unwrap_or_else(|e| panic!("{e}"));
        }
        // Bytes that are not UTF-8 inside a string: copied as jaq writes them, as they are.
        oracle.check(b"{\"Records\":[{\"a\":\"\xff\"}]}").unwrap_or_else(|e| panic!("{e}"));
        let tree = json::PathTree::new(&[vec![b"Records".to_vec()]]);
        let answered = |r: &str| elements_as_written(r.as_bytes(), &tree, &mut Vec::new()).is_some();
        assert!(answered(records[0]) && answered(records[1]) && answered(records[2]) && answered(records[14]));
        assert!(!answered(records[3]) && !answered(records[5]) && !answered(records[6]) && !answered(records[8]));
        // CloudTrail's log files: compact events, answered without jaq, exactly as jaq answers.
        let mut ndjson = Vec::new();
        crate::synth::write_ndjson(crate::synth::Profile::Cloudtrail, 5, 300, &mut ndjson).unwrap();
        let events: Vec<&str> = std::str::from_utf8(&ndjson).unwrap().lines().collect();
        for file in events.chunks(50) {
            let document = format!("{{\"Records\":[{}]}}", file.join(","));
            oracle.check(document.as_bytes()).unwrap_or_else(|e| panic!("{e}"));
            assert!(answered(&document), "a generated CloudTrail file goes through jaq");
        }
    }

    #[test]
    fn the_projection_answers_exactly_as_jaq_or_not_at_all() {
        let queries = [
            r#"{time: .eventTime, user: .userIdentity.userName, event: .eventName} | select(.event != "GetObject")"#,
            r#"{a, b: .b.c.d, n: .n} | select(.n == 3)"#,
            r#"{x: .a.b}"#,
            r#"{e: .e} | select(.e == null)"#,
            // A path asked for twice: each field has its value (the first had been null).
            r#"{time: .eventTime, at: .eventTime, who: .userIdentity.userName, user: .userIdentity.userName}"#,
        ];
        for q in queries {
            assert!(Projection::parse(q).is_some(), "{q}");
        }
        for q in [
            ".",
            "{a: .a[0]}",
            "{a: .a} | select(.b == 1)",
            "{if: .a}",
            "{a: .a} | .a",
            "{a: .a, a: .b}",
            "{a: .a} | select(.a == 1.5)",
        ] {
            assert!(Projection::parse(q).is_none(), "{q}");
        }
        let records = [
            r#"{"eventTime":"t","userIdentity":{"userName":"alice"},"eventName":"PutObject"}"#,
            r#"{"eventTime":"t","userIdentity":null,"eventName":"GetObject"}"#,
            r#"{"eventTime":1,"userIdentity":{"userName":"a"b"},"eventName":"X"}"#,
            r#"{"eventTime":1.5,"userIdentity":{"userName":"é"},"eventName":"X"}"#,
            r#"{"eventTime":"t","userIdentity":"string","eventName":"X"}"#,
            r#"{"eventTime":"t","userIdentity":{"userName":[1, 2]},"eventName":"X"}"#,
            r#"{"a":1,"a":2,"b":{"c":{"d":true}},"n":3}"#,
            r#"{"a":-0,"b":{"c":null},"n":"3"}"#,
            r#"{"a":123456789012345678,"b":{},"n":3,"e":null}"#,
            r#"{"aA":1}"#,
            // Escapes (in the first block of a string, and past it) and DEL, which jaq rewrites.
            r#"{"eventTime":"\u0041","userIdentity":{"userName":"a\"b"},"eventName":"X","a":"\n","n":3}"#,
            "{\"eventTime\":\"0123456789abcdefghij\\tk\",\"eventName\":\"0123456789abcdefghij\\u00e9\",\"a\":\"x\u{7f}\",\"n\":3}",
            r#" { "a" : "x" , "b" : { "c" : { "d" : false } } , "n" : 3 } "#,
            r#"[1,2]"#,
            r#"not json"#,
            r#""str""#,
        ];
        for q in queries.iter().chain(&[".eventTime", ".userIdentity.userName", ".b.c.d"]) {
            let mut oracle = FastPathOracle::new(q).unwrap();
            for r in records {
                oracle.check(r.as_bytes()).unwrap_or_else(|e| panic!("{e}"));
            }
        }
    }

    /// Records `scripts/fuzz.sh` (the `jq_fast_paths` target) found the fast paths and jaq
    /// answering differently, each with the query it was found with.
    #[test]
    fn the_fuzzers_findings_answer_as_jaq() {
        let findings: &[(&str, &[u8])] = &[
            // A key value with bytes that are not UTF-8: jaq's answer was refused as "not an
            // object" where the projection's was taken (U+FFFD in both now, as jq reads them).
            (
                "{account: .recipientAccountId, region: .awsRegion}",
                b"{\"awsRegion\":\"eu-west-1\",\"recipientAccountId\":\"1234\xdd\xdd\"}",
            ),
            // A lone surrogate escape: jaq refuses the record, the plain path read `null` (the
            // scanner now refuses such strings too).
            (".userIdentity.accessKeyId", br#" { "b" : "\udcCC" } "#),
        ];
        for (query, record) in findings {
            let mut oracle = FastPathOracle::new(query).unwrap();
            oracle.check(record).unwrap_or_else(|e| panic!("{e}"));
        }
    }

    /// A partitioning query's values come in the order the prefix asks for them, and the same
    /// whether the projection or jaq answers; a record without a wanted key, or whose query gives
    /// a value that cannot be a key, says so.
    #[test]
    fn key_values_come_in_the_order_asked_the_same_by_the_projection_and_by_jaq() {
        let wanted = ["region".to_string(), "account".to_string(), "region".to_string()];
        let fast_query = r#"{account: .recipientAccountId, region: .awsRegion, user: .userIdentity.userName}"#;
        let fast = JqKeyQuery { query: fast_query.into(), projection: Projection::parse(fast_query) };
        let slow = JqKeyQuery { query: fast_query.into(), projection: None };
        assert!(fast.projection.is_some());
        let (mut fast, mut slow) = (fast.open(&wanted).unwrap(), slow.open(&wanted).unwrap());
        let answers = |worker: &mut Box<dyn KeyQueryWorker>, record: &str| {
            let mut values = vec![b"stale".to_vec(); 5];
            worker.values(record.as_bytes(), &mut values).map(|()| values)
        };
        let records = [
            r#"{"recipientAccountId":"123","awsRegion":"eu-west-1","userIdentity":{"userName":"alice"}}"#,
            r#"{"recipientAccountId":123,"awsRegion":true,"userIdentity":{"userName":"b\u00e9"}}"#,
            r#"{"recipientAccountId":"1\"2","awsRegion":"r","userIdentity":{}}"#,
            r#"{"recipientAccountId":"1","awsRegion":{"nested":1},"userIdentity":{"userName":"x"}}"#,
            r#"{"recipientAccountId":"1","userIdentity":{"userName":"x"}}"#,
            "not json",
        ];
        for record in records {
            assert_eq!(answers(&mut fast, record), answers(&mut slow, record), "{record}");
        }
        let ok = |v: &[&str]| Ok(v.iter().map(|s| s.as_bytes().to_vec()).collect::<Vec<_>>());
        assert_eq!(answers(&mut fast, records[0]), ok(&["eu-west-1", "123", "eu-west-1"]));
        assert_eq!(answers(&mut fast, records[1]), ok(&["true", "123", "true"]));
        assert_eq!(
            answers(&mut fast, records[2]),
            Err(KeyQueryError::Failed("key `user` is null, not a string, number or boolean".into()))
        );
        assert!(matches!(answers(&mut fast, records[3]), Err(KeyQueryError::Failed(_))));
        assert!(matches!(answers(&mut fast, records[5]), Err(KeyQueryError::Failed(_))));
        // A key the query does not give at all.
        let other = JqKeyQuery { query: "{a: .a} + {b: .b}".into(), projection: None };
        let mut other = other.open(&["c".to_string()]).unwrap();
        assert_eq!(answers(&mut other, r#"{"a":"1","b":"2"}"#), Err(KeyQueryError::MissingKey("c".into())));
    }

    fn run(query: &str, record: &str) -> Result<Vec<String>, TransformFailure> {
        let mut worker = worker(query, true);
        let mut batch = sluice_engine::record::RecordBatch::default();
        worker.transform(record.as_bytes(), &mut Emit::new(&mut batch))?;
        Ok(batch.iter().map(|r| String::from_utf8_lossy(r).into_owned()).collect())
    }

    #[test]
    fn reshapes_selects_and_splits() {
        let q =
            r#"{time: .eventTime, user: .userIdentity.userName, event: .eventName} | select(.event != "GetObject")"#;
        let rec = r#"{"eventTime":"t","userIdentity":{"userName":"alice"},"eventName":"PutObject"}"#;
        assert_eq!(run(q, rec).ok(), Some(vec![r#"{"time":"t","user":"alice","event":"PutObject"}"#.to_string()]));
        let get = r#"{"eventTime":"t","eventName":"GetObject"}"#;
        assert_eq!(run(q, get).ok(), Some(vec![]));
        assert_eq!(
            run(".a[]", r#"{"a":[1,"x",{"b":null}]}"#).ok(),
            Some(vec!["1".into(), "\"x\"".into(), r#"{"b":null}"#.into()])
        );
    }

    #[test]
    fn fails_records_that_are_not_json_or_make_errors() {
        assert!(run(".", "not json").is_err_and(|f| f.message.contains("not JSON") && f.code == PROCESSING_FAILED));
        assert!(run(".a + 1", r#"{"a":"x"}"#).is_err_and(|f| f.message.contains("cannot")));
        assert!(run("nan", "{}").is_err_and(|f| f.message.contains("NaN")));
        assert!(run("error(\"boom\")", "{}").is_err_and(|f| f.message.contains("boom")));
    }

    #[test]
    fn a_plain_path_answers_as_jaq_does() {
        let query = ValueQuery::new(".a.b").unwrap();
        let mut fast = query.open().unwrap();
        let mut slow = ValueQuery { path: None, ..ValueQuery::new(".a.b").unwrap() }.open().unwrap();
        for record in [
            r#"{"a":{"b":"x"}}"#,
            r#"{"a":{"b":"\u0041"}}"#,
            r#"{"a":{"b":1.50}}"#,
            r#"{"a":{"b":12}}"#,
            r#"{"a":{"c":1}}"#,
            r#"{"a":null}"#,
            r#"{"a":"s"}"#,
            r#"{"a":{"b":[1, 2]}}"#,
            r#"not json"#,
        ] {
            let f = fast.first_value(record.as_bytes()).map(|v| v.map(<[u8]>::to_vec));
            let s = slow.first_value(record.as_bytes()).map(|v| v.map(<[u8]>::to_vec));
            assert_eq!(f.is_ok(), s.is_ok(), "{record}");
            assert_eq!(f.ok(), s.ok(), "{record}");
        }
        assert!(plain_path(".a | .b").is_none() && plain_path(".a.b ").is_some() && plain_path(".").is_none());
    }

    #[test]
    fn a_query_that_does_not_compile_says_where() {
        let problems = compile("{a: .b").err().unwrap_or_default();
        assert!(!problems.is_empty());
        let problems = compile(".a | nosuchfunction").err().unwrap_or_default();
        assert_eq!(problems.first().map(|p| p.0), Some(5), "{problems:?}");
        assert!(problems[0].1.contains("nosuchfunction"));
    }
}

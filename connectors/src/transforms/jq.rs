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

use std::sync::Arc;

use jaq_core::load::{Arena, File, Loader};
use jaq_core::{Ctx, Vars, data, unwrap_valr};
use jaq_json::Val;
use serde::Deserialize;
use sluice_engine::config::{ConnectorConfig, Diagnostic};
use sluice_engine::contract::{
    Emit, RecordByRecord, RecordTransform, Transform, TransformContext, TransformError, TransformFailure,
    TransformWorker,
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
}

/// Builds a jq transform from `[transforms.<name>]`.
pub fn configure(config: ConnectorConfig) -> Result<Arc<dyn Transform>, Diagnostic> {
    let span = config.table.span.clone();
    let query_span = config.table.value_span("query").unwrap_or(span.clone());
    let c: JqConfig = config.table.deserialize()?;
    if let Err(problems) = compile(&c.query) {
        let (offset, message) = problems.into_iter().next().unwrap_or((0, "does not compile".into()));
        // Inside the string when the offset falls in it (+1 skips a basic string's opening quote).
        let at = query_span.start + 1 + offset;
        let span = if at < query_span.end { at..at + 1 } else { query_span };
        return Err(Diagnostic::new(span, format!("the jq query does not compile: {message}"))
            .with_hint("jq syntax (jaq): e.g. query = '{time: .eventTime, user: .userIdentity.userName}'"));
    }
    Ok(Arc::new(JqTransform { query: c.query }))
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
            .map(|(name, undefined)| (offset(name), format!("undefined {} `{name}`", undefined.as_str())))
            .collect()
    })
}

impl Transform for JqTransform {
    fn describe(&self) -> String {
        format!("jq: {}", self.query)
    }

    fn open(&self, _context: &TransformContext) -> Result<Box<dyn TransformWorker>, TransformError> {
        let filter = compile(&self.query).map_err(|p| TransformError(format!("jq query does not compile: {p:?}")))?;
        Ok(Box::new(RecordByRecord(JqWorker { filter, out: Vec::new() })))
    }
}

/// The query compiled for one worker.
struct JqWorker {
    filter: Filter,
    out: Vec<u8>,
}

impl RecordTransform for JqWorker {
    fn transform(&mut self, record: &[u8], emit: &mut Emit<'_>) -> Result<(), TransformFailure> {
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

    fn run(query: &str, record: &str) -> Result<Vec<String>, TransformFailure> {
        let mut worker = JqWorker { filter: compile(query).unwrap_or_else(|e| panic!("{e:?}")), out: Vec::new() };
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
    fn a_query_that_does_not_compile_says_where() {
        let problems = compile("{a: .b").err().unwrap_or_default();
        assert!(!problems.is_empty());
        let problems = compile(".a | nosuchfunction").err().unwrap_or_default();
        assert_eq!(problems.first().map(|p| p.0), Some(5), "{problems:?}");
        assert!(problems[0].1.contains("nosuchfunction"));
    }
}

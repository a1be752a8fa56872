//! Config of Parquet sinks: the schema (`schema = "file.toml"` or an inline `[sinks.x.schema]`
//! table), `parquet = { row_group_mb, page_kb, dictionary, writer_version }` and
//! `json = { case_insensitive, dots_to_underscores, column_to_json_key }`.
//!
//! A schema file's own problems are reported at the `schema = "..."` value, each with the schema
//! file's line and column. Schema files are relative to the pipeline file's folder.

use std::path::Path;
use std::sync::Arc;

use toml::Spanned;
use toml::de::DeValue;

use super::diagnostic::{Diagnostic, Diagnostics};
use super::document::{Section, Value, parse_document};
use crate::columnar::schema::TYPE_NAMES;
use crate::columnar::{
    Column, ColumnType, JsonOptions, ParquetOptions, ParquetSpec, RowConverter, SchemaSource, TableSchema,
    TimestampFormat,
};
use crate::compression::Compression;

const COLUMN_KEYS: &[&str] = &["name", "type", "nullable", "json_key", "formats", "comment"];

/// Reads `[[columns]]` from a schema table.
fn read_columns(mut table: Section, problems: &mut Vec<Diagnostic>) -> Option<TableSchema> {
    let span = table.span.clone();
    let Some(entries) = table.take_table_array("columns", problems) else {
        if !table.contains("columns") {
            problems.push(
                Diagnostic::new(span, "the schema has no columns")
                    .with_hint("list them as [[columns]] tables with name = \"...\" and type = \"...\""),
            );
        }
        return None;
    };
    table.deny_unknown(&["columns"], problems);
    let before = problems.len();
    let mut columns: Vec<Column> = Vec::new();
    for mut entry in entries {
        let entry_span = entry.span.clone();
        let name = entry.take_string("name", problems);
        let ty = entry.take_string("type", problems);
        let nullable = entry.take_bool("nullable", problems).is_none_or(Spanned::into_inner);
        let json_key = entry.take_string("json_key", problems);
        let formats = entry.take_string_list("formats", problems);
        let _comment = entry.take_string("comment", problems);
        entry.deny_unknown(COLUMN_KEYS, problems);
        let Some(name) = name else {
            problems.push(Diagnostic::new(entry_span, "a column has no `name`"));
            continue;
        };
        if columns.iter().any(|c| c.name.eq_ignore_ascii_case(name.get_ref())) {
            problems.push(Diagnostic::new(name.span(), format!("column `{}` is declared twice", name.get_ref())));
        }
        let Some(ty_text) = ty else {
            problems.push(
                Diagnostic::new(entry_span, format!("column `{}` has no `type`", name.get_ref()))
                    .with_hint(format!("types: {TYPE_NAMES}")),
            );
            continue;
        };
        let ty = match ColumnType::parse(ty_text.get_ref()) {
            Ok(t) => t,
            Err(e) => {
                problems.push(
                    Diagnostic::in_string(
                        ty_text.span(),
                        e.offset,
                        format!("column `{}`: {}", name.get_ref(), e.message),
                    )
                    .with_hint(format!("types: {TYPE_NAMES}")),
                );
                continue;
            }
        };
        let mut parsed_formats = Vec::new();
        for f in formats.map(Spanned::into_inner).unwrap_or_default() {
            match TimestampFormat::parse(f.get_ref()) {
                Ok(tf) => parsed_formats.push(tf),
                Err(message) => problems.push(Diagnostic::new(f.span(), message)),
            }
        }
        columns.push(Column {
            json_key: json_key.map_or_else(|| name.get_ref().clone(), Spanned::into_inner),
            name: name.into_inner(),
            ty,
            nullable,
            formats: parsed_formats,
        });
    }
    if columns.is_empty() && problems.len() == before {
        problems.push(Diagnostic::new(span, "the schema has no columns"));
    }
    (problems.len() == before).then_some(TableSchema { columns })
}

/// Loads a schema file; its problems come back as one diagnostic at `at`.
fn load_schema_file(
    path: &Path,
    as_written: &str,
    at: std::ops::Range<usize>,
    problems: &mut Vec<Diagnostic>,
) -> Option<TableSchema> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) => {
            problems.push(
                Diagnostic::new(at, format!("cannot read schema file `{as_written}`: {e}"))
                    .with_hint("schema files are relative to the pipeline file's folder"),
            );
            return None;
        }
    };
    let mut inner = Vec::new();
    let schema = match parse_document(&text, path.parent().unwrap_or(Path::new("."))) {
        Ok(root) => read_columns(root, &mut inner),
        Err(d) => {
            inner = d;
            None
        }
    };
    if inner.is_empty() {
        return schema;
    }
    let rendered = Diagnostics::new(as_written, &text, inner);
    let lines: Vec<String> = rendered
        .short()
        .into_iter()
        .zip(&rendered.items)
        .map(|(line, d)| match &d.hint {
            Some(h) => format!("{line} (hint: {h})"),
            None => line,
        })
        .collect();
    problems.push(Diagnostic::new(at, format!("schema file has errors:\n    {}", lines.join("\n    "))));
    None
}

/// Reads the Parquet keys of a sink whose `format = "parquet"`.
pub(super) fn take_parquet_spec(
    section: &mut Section,
    compression: Option<Compression>,
    base_dir: &Path,
    format_span: std::ops::Range<usize>,
    problems: &mut Vec<Diagnostic>,
) -> Option<ParquetSpec> {
    let before = problems.len();
    let schema = match section.take("schema") {
        None => {
            problems.push(Diagnostic::new(format_span, "format = \"parquet\" needs a `schema`").with_hint(
                "schema = \"schemas/my-table.toml\", an inline [sinks.<name>.schema] with [[...columns]], or schema = \"infer\"",
            ));
            None
        }
        // `Some(None)`: inferred.
        Some(value) if value.get_ref().as_str() == Some("infer") => Some(None),
        Some(value) => schema_from_value(value, section.path.clone(), base_dir, problems).map(Some),
    };
    let mut options =
        ParquetOptions { compression: compression.unwrap_or(Compression::Snappy), ..ParquetOptions::default() };
    if let Some(mut p) = section.take_table("parquet", problems) {
        if let Some(mb) = p.take_int_in(
            "row_group_mb",
            1..=1024,
            "row-group size in MiB (Firehose's block size is 64..=1024, default 256; sluice's default 128)",
            problems,
        ) {
            options.row_group_bytes = (mb.into_inner() as usize) << 20;
        }
        if let Some(kb) =
            p.take_int_in("page_kb", 64..=65536, "page size in KiB (Firehose: at least 64, default 1024)", problems)
        {
            options.page_bytes = (kb.into_inner() as usize) << 10;
        }
        if let Some(d) = p.take_bool("dictionary", problems) {
            options.dictionary = d.into_inner();
        }
        if let Some(v) = p.take_string("writer_version", problems) {
            match v.get_ref().to_ascii_lowercase().as_str() {
                "v1" => options.v2 = false,
                "v2" => options.v2 = true,
                _ => problems.push(
                    Diagnostic::new(v.span(), format!("unknown writer_version `{}`", v.get_ref()))
                        .with_hint("use \"v1\" or \"v2\""),
                ),
            }
        }
        p.deny_unknown(&["row_group_mb", "page_kb", "dictionary", "writer_version"], problems);
    }
    let mut json = JsonOptions::default();
    if let Some(mut j) = section.take_table("json", problems) {
        if let Some(b) = j.take_bool("case_insensitive", problems) {
            json.case_insensitive = b.into_inner();
        }
        if let Some(b) = j.take_bool("dots_to_underscores", problems) {
            json.dots_to_underscores = b.into_inner();
        }
        if let Some(m) = j.take_string_map("column_to_json_key", problems) {
            json.column_to_json_key = m;
        }
        j.deny_unknown(&["case_insensitive", "dots_to_underscores", "column_to_json_key"], problems);
    }
    let schema = schema?;
    if problems.len() > before {
        return None;
    }
    let schema = match schema {
        Some(declared) => SchemaSource::Declared(Arc::new(RowConverter::new(Arc::new(declared), json))),
        None => SchemaSource::Infer(json),
    };
    Some(ParquetSpec { schema, options })
}

fn schema_from_value(
    value: Value,
    sink_path: String,
    base_dir: &Path,
    problems: &mut Vec<Diagnostic>,
) -> Option<TableSchema> {
    let span = value.span();
    if let DeValue::String(file) = value.get_ref() {
        return load_schema_file(&base_dir.join(file.as_ref()), file, span, problems);
    }
    if value.get_ref().as_table().is_some() {
        let table = Section::from_value(format!("{sink_path}.schema"), value, problems)?;
        return read_columns(table, problems);
    }
    problems.push(
        Diagnostic::new(span, "`schema` must be a file name or a table of [[columns]]")
            .with_hint("schema = \"schemas/my-table.toml\""),
    );
    None
}

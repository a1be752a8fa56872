//! The schema sluice declares, as each baseline is told it: DuckDB's `read_json(..., columns =
//! {...})` types and the pyarrow baseline's type names, with the Arrow types sluice writes (what
//! every output's columns are checked against). Shared with `cargo bench --bench pipeline`, so both
//! give their baselines the same schema.

use arrow_schema::DataType;
use sluice_engine::columnar::ColumnType;

/// One declared column as each tool names its type.
pub(crate) struct DeclaredColumn {
    /// The column.
    pub(crate) name: String,
    /// The Arrow type sluice writes.
    pub(crate) arrow: DataType,
    /// DuckDB's type.
    pub(crate) duckdb: &'static str,
    /// The key of [`PYARROW_SCRIPT`]'s type table.
    pub(crate) pyarrow: &'static str,
}

/// The columns of a schema file (`[[columns]]` with `name` and `type`), for the baselines.
pub(crate) fn declared(schema_toml: &str) -> Result<Vec<DeclaredColumn>, String> {
    #[derive(serde::Deserialize)]
    struct SchemaFile {
        columns: Vec<ColumnEntry>,
    }
    #[derive(serde::Deserialize)]
    struct ColumnEntry {
        name: String,
        #[serde(rename = "type")]
        kind: String,
    }
    let file: SchemaFile = toml::from_str(schema_toml).map_err(|e| e.to_string())?;
    file.columns
        .into_iter()
        .map(|c| {
            let parsed = ColumnType::parse(&c.kind).map_err(|e| e.message)?;
            let (duckdb, pyarrow) = match parsed {
                ColumnType::String | ColumnType::Varchar(_) | ColumnType::Char(_) => ("VARCHAR", "string"),
                ColumnType::Boolean => ("BOOLEAN", "boolean"),
                ColumnType::TinyInt => ("TINYINT", "tinyint"),
                ColumnType::SmallInt => ("SMALLINT", "smallint"),
                ColumnType::Int => ("INTEGER", "int"),
                ColumnType::BigInt => ("BIGINT", "bigint"),
                ColumnType::Float => ("FLOAT", "float"),
                ColumnType::Double => ("DOUBLE", "double"),
                ColumnType::Date => ("DATE", "date"),
                // sluice's timestamps are UTC instants (Arrow `Timestamp(us, "UTC")`).
                ColumnType::Timestamp => ("TIMESTAMPTZ", "timestamp"),
                other => return Err(format!("column `{}`: the baselines are not given type {other:?}", c.name)),
            };
            Ok(DeclaredColumn { name: c.name, arrow: parsed.arrow_type(), duckdb, pyarrow })
        })
        .collect()
}

/// DuckDB's `columns = {...}` struct literal for `columns`.
pub(crate) fn duckdb_columns(columns: &[DeclaredColumn]) -> String {
    let fields: Vec<String> = columns.iter().map(|c| format!("'{}': '{}'", c.name, c.duckdb)).collect();
    format!("{{{}}}", fields.join(", "))
}

/// The pyarrow baseline: `python pyarrow-parquet.py INPUT OUTPUT CODEC COLUMNS`, where COLUMNS is a
/// JSON file of `{"name", "type"}` (the declared schema) or `infer`. zstd at level 1, as sluice.
pub(crate) const PYARROW_SCRIPT: &str = r#"import json, sys
import pyarrow as pa, pyarrow.json as pj, pyarrow.parquet as pq
source, target, codec, columns = sys.argv[1:5]
types = {"string": pa.string(), "boolean": pa.bool_(), "tinyint": pa.int8(), "smallint": pa.int16(),
         "int": pa.int32(), "bigint": pa.int64(), "float": pa.float32(), "double": pa.float64(),
         "date": pa.date32(), "timestamp": pa.timestamp("us", tz="UTC")}
options = pj.ParseOptions()
if columns != "infer":
    with open(columns) as f:
        schema = pa.schema([(c["name"], types[c["type"]]) for c in json.load(f)])
    options = pj.ParseOptions(explicit_schema=schema, unexpected_field_behavior="ignore")
table = pj.read_json(source, parse_options=options)
pq.write_table(table, target, compression=codec, compression_level=1 if codec == "zstd" else None)
"#;

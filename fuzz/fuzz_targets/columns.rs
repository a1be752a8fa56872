//! Records into Parquet columns (`columnar::RowConverter`, Firehose's OpenX JSON reading) with a
//! schema of every column type: a record converts whole or not at all, the columns always make an
//! Arrow batch of the declared schema, and the fast reading of ISO-8601 timestamps answers as
//! chrono's parsers do.

#![no_main]

use std::cell::RefCell;
use std::sync::Arc;

use arrow_array::RecordBatch;
use libfuzzer_sys::fuzz_target;
use sluice_engine::columnar::convert::timestamp_fast_path_agrees;
use sluice_engine::columnar::{
    Column, ColumnType, Columns, JsonOptions, KeyMemo, RowConverter, TableSchema, TimestampFormat,
};

/// Every column type, a non-nullable column, a column with timestamp formats.
const COLUMNS: &[(&str, &str)] = &[
    ("s", "string"),
    ("v", "varchar(5)"),
    ("c", "char(3)"),
    ("b", "boolean"),
    ("t8", "tinyint"),
    ("i16", "smallint"),
    ("i", "int"),
    ("n", "bigint"),
    ("f", "float"),
    ("d", "double"),
    ("m", "decimal(10,2)"),
    ("day", "date"),
    ("ts", "timestamp"),
    ("tf", "timestamp"),
    ("bin", "binary"),
    ("a", "array<string>"),
    ("st", "struct<x:int,y:array<double>>"),
    ("mp", "map<string,bigint>"),
    ("req", "string"),
];

struct State {
    converter: RowConverter,
    columns: Columns,
    memo: KeyMemo,
}

fn state() -> State {
    let columns = COLUMNS
        .iter()
        .map(|&(name, ty)| Column {
            name: name.to_string(),
            ty: ColumnType::parse(ty).unwrap_or_else(|e| panic!("{ty}: {e}")),
            nullable: name != "req",
            json_key: name.to_string(),
            formats: if name == "tf" {
                ["yyyy-MM-dd HH:mm:ss", "millis"].iter().filter_map(|f| TimestampFormat::parse(f).ok()).collect()
            } else {
                Vec::new()
            },
        })
        .collect();
    let converter = RowConverter::new(Arc::new(TableSchema { columns }), JsonOptions::default());
    let columns = converter.new_columns();
    State { converter, columns, memo: KeyMemo::default() }
}

thread_local! {
    static STATE: RefCell<State> = RefCell::new(state());
}

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data)
        && text.len() <= 64
        && let Err(difference) = timestamp_fast_path_agrees(text.trim())
    {
        panic!("{difference}");
    }
    STATE.with_borrow_mut(|state| {
        let before = state.columns.rows();
        match state.converter.convert(data, &mut state.columns, &mut state.memo) {
            Ok(added) => assert_eq!(state.columns.rows(), before + added, "rows after a conversion"),
            Err(_) => assert_eq!(state.columns.rows(), before, "rows after a refused record"),
        }
        if state.columns.rows() >= 16 {
            let rows = state.columns.rows();
            let arrays = state.columns.take_arrays().unwrap_or_else(|e| panic!("the columns make no arrays: {e}"));
            let schema = state.converter.schema().arrow_schema();
            let batch = RecordBatch::try_new(schema, arrays).unwrap_or_else(|e| panic!("not the declared schema: {e}"));
            assert_eq!(batch.num_rows(), rows);
        }
    });
});

"""Reads Parquet files with pyarrow (and DuckDB) and prints what they hold as JSON, for the Rust tests.

Usage: read_parquet.py FILE...   One JSON object per file on stdout: the Arrow schema, the Parquet
physical/logical types, row and row-group counts, the column chunks that lack min/max statistics, the rows
(values made JSON-safe: timestamps as ISO-8601 with microseconds, decimals as strings, bytes as hex,
maps as [key, value] pairs), and DuckDB's row count and column types for the same file.
"""
import datetime
import decimal
import json
import sys

import duckdb
import pyarrow.parquet as pq


def safe(v):
    if isinstance(v, datetime.datetime):
        return v.isoformat()
    if isinstance(v, datetime.date):
        return v.isoformat()
    if isinstance(v, decimal.Decimal):
        return str(v)
    if isinstance(v, bytes):
        return v.hex()
    if isinstance(v, list):
        return [safe(x) for x in v]
    if isinstance(v, tuple):
        return [safe(x) for x in v]
    if isinstance(v, dict):
        return {k: safe(x) for k, x in v.items()}
    return v


for path in sys.argv[1:]:
    f = pq.ParquetFile(path)
    meta = f.metadata
    table = f.read()
    con = duckdb.connect()
    # Column chunks without min/max statistics (an all-null chunk has none to give), per DuckDB's
    # reading of the footer (it reads min_value/max_value, which Parquet writers use for floats).
    missing_stats = sorted({
        row[0]
        for row in con.execute(
            f"SELECT path_in_schema, stats_min_value, stats_max_value, stats_null_count, num_values "
            f"FROM parquet_metadata('{path}')"
        ).fetchall()
        if (row[1] is None or row[2] is None) and (row[3] is None or row[3] < row[4])
    })
    physical = {}
    for i in range(len(f.schema)):
        col = f.schema.column(i)
        physical[col.path] = [col.physical_type, str(col.logical_type)]
    duck_rows = con.execute(f"SELECT count(*) FROM read_parquet('{path}')").fetchone()[0]
    duck_types = {row[0]: row[1] for row in con.execute(f"DESCRIBE SELECT * FROM read_parquet('{path}')").fetchall()}
    print(json.dumps({
        "file": path,
        "schema": {field.name: str(field.type) for field in table.schema},
        "physical": physical,
        "num_rows": meta.num_rows,
        "row_groups": meta.num_row_groups,
        "missing_statistics": missing_stats,
        "created_by": meta.created_by,
        "rows": [safe(r) for r in table.to_pylist()],
        "duckdb_rows": duck_rows,
        "duckdb_types": duck_types,
    }))

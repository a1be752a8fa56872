//! The `enrich` transform's reference tables (`tables = [...]`): a CSV or NDJSON file joined to
//! records by one field, kept as a differential-dataflow collection arranged by key, each worker
//! holding the rows whose keys it owns ([`super::keyed`]).
//!
//! ```toml
//! tables = [{ path = "ref/assets.csv", field = "c_ip", key = "ip", target = "asset" }]
//! ```
//!
//! **The file.** CSV with a header row (quoted fields may hold commas, quotes and line breaks;
//! every value is written as a string), or NDJSON (one object per line, its values kept as they
//! are), by the file's extension (`.csv`; `.ndjson`, `.jsonl` or `.json`). A row's key is its
//! `key` column (a string, number or boolean value); the record's `field` (a dotted path, string or
//! number) is looked up, and the row, as one JSON object of its columns, goes under the record's
//! `target` (created as needed, replacing what was there). Two rows with the same key: the record
//! gets the smaller row (by its JSON text), the same on every run. A record whose field is
//! missing or whose key the table lacks passes unenriched (`EnrichmentMisses{reason=
//! "table:<target>.field_missing" | "table:<target>.not_found"}`); found rows count
//! `EnrichmentHits{part="table:<target>"}`.
//!
//! **Reloads are differences.** Worker 0 reads the file when the run starts and looks at its size,
//! modification time and inode once a second. When they change it reads the new file, hashes each
//! row and compares it with the row at the same place in the loaded file (a moved row is matched
//! by its hash): only rows that were added or removed are parsed and sent, as `+1`/`-1`
//! differences, to their owners, so a 1 GB table with one changed row costs one read and hash of
//! the file and two updates in the dataflow. Removed rows are read back from the loaded file,
//! which stays open (an updater's atomic rename leaves it intact). A new file that does not parse
//! (a row with the wrong number of fields, a line that is not an object, a truncated last row)
//! changes nothing: the loaded rows stay, `EnrichmentReloadFailures{part}` counts it and it is
//! logged; `EnrichmentReloads{part}` counts reloads that applied. A file rewritten in place (not
//! renamed) loses the rows the differences need; that reload fails the same way, with a hint.
//!
//! **Lookups are as of the record's epoch.** The table's differences are stamped with the epoch
//! after the one the records had reached when the change was seen (the table's source follows the
//! records' frontier, one ahead), and a record is looked up once the table is complete through its
//! epoch, reading the rows as they were at that epoch: records of earlier epochs see the old rows,
//! records of later epochs the new, whatever the number of workers. Records of the records'
//! current epoch are looked up as they come; only those a worker ahead of the others sends wait,
//! until the others reach its epoch. Guarantees kept: a record is held with its epoch's capability
//! until it is answered; failed records and backups pass on at once.

use std::collections::HashMap;
use std::fs::File;
use std::hash::BuildHasher;
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use serde::Deserialize;
use serde_json::Value;
use sluice_engine::contract::StageContext;
use sluice_engine::metrics::TransformMetrics;
use sluice_engine::operators::Epoch;
use sluice_engine::record::{RecordBatch, Records, UTF8_BOM};
use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::Probe;
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::operators::generic::operator::source;
use timely::dataflow::{ProbeHandle, Stream};

use super::enrich::{FileStamp, dotted, put, stamp};
use super::json;
use super::keyed::{self, Held, Keyed, Update};

/// How often worker 0 looks at a table file for a change.
const RELOAD_CHECK: Duration = Duration::from_secs(1);

/// One entry of `tables = [...]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TableSpec {
    path: String,
    field: String,
    key: String,
    target: String,
}

/// How a table file is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TableFormat {
    Csv,
    Ndjson,
}

/// A configured reference table.
pub struct Table {
    path: PathBuf,
    format: TableFormat,
    key: String,
    field: Vec<String>,
    target: Vec<String>,
    /// `table:<target>`, the part's name in the metrics.
    part: String,
}

/// Why a table file cannot be loaded.
#[derive(Debug, thiserror::Error)]
pub enum TableError {
    /// The file cannot be opened or read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The file's extension names no table format.
    #[error("{0}: a table is a `.csv` file with a header, or `.ndjson`/`.jsonl`/`.json` with one object per line")]
    Format(String),
    /// The CSV header has no column named `key`.
    #[error("{path}: the header has no column `{key}` (it has {columns})")]
    NoKeyColumn {
        /// The file.
        path: String,
        /// The key asked for.
        key: String,
        /// The columns found.
        columns: String,
    },
    /// A row does not parse.
    #[error("{path}: row {row}: {reason}")]
    Row {
        /// The file.
        path: String,
        /// The data row, from 1.
        row: usize,
        /// What is wrong.
        reason: String,
    },
    /// A row the differences need to remove no longer reads back from the loaded file.
    #[error(
        "{0} was rewritten in place, so the rows it held cannot be removed by difference; write the new file next to it and rename it into place"
    )]
    RewrittenInPlace(String),
}

/// Where one row of the loaded file is, and its hash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct RowIndex {
    hash: u64,
    offset: u64,
    len: u32,
}

/// What worker 0 knows of the file it loaded last.
#[derive(Default)]
struct Loaded {
    rows: Vec<RowIndex>,
    /// The loaded file, kept open to read removed rows back.
    file: Option<File>,
    stamp: Option<FileStamp>,
    /// The CSV header.
    columns: Vec<String>,
}

/// One table difference: key, row (a JSON object), +1 or -1.
type Difference = (String, String, isize);

impl Table {
    /// Checks `spec` (the file exists, parses, has the key column) relative to `base_dir`.
    pub fn configure(spec: TableSpec, base_dir: &Path) -> Result<Table, TableError> {
        let path = base_dir.join(&spec.path);
        let extension = path.extension().and_then(|e| e.to_str()).unwrap_or("").to_ascii_lowercase();
        let format = match extension.as_str() {
            "csv" => TableFormat::Csv,
            "ndjson" | "jsonl" | "json" => TableFormat::Ndjson,
            _ => return Err(TableError::Format(path.display().to_string())),
        };
        let target = dotted(&spec.target);
        let table = Table {
            path,
            format,
            key: spec.key,
            field: dotted(&spec.field),
            part: format!("table:{}", target.join(".")),
            target,
        };
        table.reload(&mut Loaded::default())?;
        Ok(table)
    }

    /// `table <path> by <field> → <target>`, for `describe`.
    pub fn describe(&self) -> String {
        format!("table {} ({} = {}) → {}", self.path.display(), self.field.join("."), self.key, self.target.join("."))
    }

    /// Reads the file again and answers its differences from `loaded` (which then describes the
    /// new file); on an error `loaded` is unchanged.
    fn reload(&self, loaded: &mut Loaded) -> Result<Vec<Difference>, TableError> {
        let path = self.path.display().to_string();
        let read_error = |source| TableError::Read { path: path.clone(), source };
        let mut file = File::open(&self.path).map_err(read_error)?;
        let before = stamp(&self.path);
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes).map_err(read_error)?;
        // Without a quote anywhere, CSV rows are lines (the quote-aware split is the slower one).
        let quoted = self.format == TableFormat::Csv && memchr::memchr(b'"', &bytes).is_some();
        // A byte order mark (Excel's "CSV UTF-8", PowerShell) says the encoding: it is not part
        // of the first column's name.
        let skip = if bytes.starts_with(UTF8_BOM) { UTF8_BOM.len() } else { 0 };
        let rows: Vec<(usize, usize)> = rows(&bytes[skip..], quoted).map(|(s, e)| (s + skip, e + skip)).collect();
        let (columns, data_rows) = match self.format {
            TableFormat::Csv => {
                let Some(&(start, end)) = rows.first() else {
                    return Err(TableError::Row { path, row: 0, reason: "the file has no header row".into() });
                };
                let columns = parse_csv_row(&bytes[start..end]).map_err(|reason| TableError::Row {
                    path: path.clone(),
                    row: 0,
                    reason: format!("the header: {reason}"),
                })?;
                if !columns.contains(&self.key) {
                    return Err(TableError::NoKeyColumn {
                        path,
                        key: self.key.clone(),
                        columns: columns.iter().map(|c| format!("`{c}`")).collect::<Vec<_>>().join(", "),
                    });
                }
                (columns, &rows[1..])
            }
            TableFormat::Ndjson => (Vec::new(), &rows[..]),
        };
        let hasher = rustc_hash::FxBuildHasher;
        let index: Vec<RowIndex> = data_rows
            .iter()
            .map(|&(start, end)| RowIndex {
                hash: hasher.hash_one(&bytes[start..end]),
                offset: start as u64,
                len: (end - start) as u32,
            })
            .collect();
        // Rows that differ from the loaded row at the same place; then rows that merely moved
        // (the same hash and length among the changed ones) are matched and left alone.
        let same_header = columns == loaded.columns;
        let mut added: Vec<usize> = Vec::new();
        let mut removed: HashMap<(u64, u32), Vec<usize>> = HashMap::new();
        for (i, row) in index.iter().enumerate() {
            match loaded.rows.get(i) {
                Some(old) if same_header && old.hash == row.hash && old.len == row.len => {}
                Some(old) => {
                    removed.entry((old.hash, old.len)).or_default().push(i);
                    added.push(i);
                }
                None => added.push(i),
            }
        }
        for (i, old) in loaded.rows.iter().enumerate().skip(index.len()) {
            removed.entry((old.hash, old.len)).or_default().push(i);
        }
        if same_header {
            added.retain(|&i| {
                let row = index[i];
                removed.get_mut(&(row.hash, row.len)).and_then(Vec::pop).is_none()
            });
        }
        let mut differences = Vec::with_capacity(added.len());
        for i in added {
            let row = index[i];
            let text = &bytes[row.offset as usize..row.offset as usize + row.len as usize];
            let (key, value) = self.parse_row(text, &columns).map_err(|reason| TableError::Row {
                path: path.clone(),
                row: i + 1,
                reason,
            })?;
            differences.push((key, value, 1));
        }
        let mut old_text = Vec::new();
        for i in removed.into_values().flatten() {
            let old = loaded.rows[i];
            let file = loaded.file.as_ref().ok_or_else(|| TableError::RewrittenInPlace(path.clone()))?;
            old_text.resize(old.len as usize, 0);
            let reads_back = file.read_exact_at(&mut old_text, old.offset).is_ok()
                && hasher.hash_one(old_text.as_slice()) == old.hash;
            if !reads_back {
                return Err(TableError::RewrittenInPlace(path));
            }
            let (key, value) =
                self.parse_row(&old_text, &loaded.columns).map_err(|_| TableError::RewrittenInPlace(path.clone()))?;
            differences.push((key, value, -1));
        }
        *loaded = Loaded { rows: index, file: Some(file), stamp: before, columns };
        Ok(differences)
    }

    /// A row's key and its JSON object.
    fn parse_row(&self, row: &[u8], columns: &[String]) -> Result<(String, String), String> {
        match self.format {
            TableFormat::Csv => {
                let fields = parse_csv_row(row)?;
                if fields.len() != columns.len() {
                    return Err(format!("{} fields where the header has {}", fields.len(), columns.len()));
                }
                // The object is written as it is read: columns in the header's order.
                let mut key = String::new();
                let mut object = Vec::with_capacity(row.len() + 8 * columns.len());
                object.push(b'{');
                for (i, (column, field)) in columns.iter().zip(fields).enumerate() {
                    if i > 0 {
                        object.push(b',');
                    }
                    serde_json::to_writer(&mut object, column).map_err(|e| e.to_string())?;
                    object.push(b':');
                    serde_json::to_writer(&mut object, &field).map_err(|e| e.to_string())?;
                    if *column == self.key {
                        key = field;
                    }
                }
                object.push(b'}');
                Ok((key, String::from_utf8(object).map_err(|e| e.to_string())?))
            }
            TableFormat::Ndjson => {
                let value: Value = serde_json::from_slice(row).map_err(|e| format!("not JSON: {e}"))?;
                let Value::Object(object) = &value else { return Err("not a JSON object".into()) };
                let key = match object.get(&self.key) {
                    Some(Value::String(s)) => s.clone(),
                    Some(v @ (Value::Number(_) | Value::Bool(_))) => v.to_string(),
                    _ => return Err(format!("no string, number or boolean `{}`", self.key)),
                };
                Ok((key, value.to_string()))
            }
        }
    }

    /// The table's part of the dataflow: its source on every worker (worker 0 reads the file),
    /// the arrangement, and the lookup of `records`.
    pub fn build<'scope>(
        self: &Arc<Self>,
        records: Stream<'scope, Epoch, Vec<Records>>,
        stage: &StageContext,
    ) -> Stream<'scope, Epoch, Vec<Records>> {
        let scope = records.scope();
        let worker = scope.index();
        let tree = json::PathTree::new(&[
            self.field.iter().map(|k| k.as_bytes().to_vec()).collect(),
            self.target.iter().map(|k| k.as_bytes().to_vec()).collect(),
        ]);
        let key_tree = tree.clone();
        let mut found = Vec::new();
        let probe = ProbeHandle::new();
        let budget = stage.budget.clone();
        let keyed = keyed::exchange_by_key(records, &self.part, "Enrich.KeyFailed", None, budget, move |record| {
            Ok(json::find_paths(record, &key_tree, &mut found).and_then(|_| key_text(record, found.first()?)))
        })
        .probe_with(&probe);
        let table = Arc::clone(self);
        let metrics = Arc::clone(&stage.metrics);
        let updates = source::<Epoch, CapacityContainerBuilder<Vec<Update<String, String>>>, _, _>(
            scope,
            &format!("Table({})", self.part),
            move |capability, info| {
                let activator = scope.activator_for(info.address);
                let mut capability = Some(capability);
                let mut loaded = (worker == 0).then(Loaded::default);
                let mut checked: Option<Instant> = None;
                let mut tried = false;
                move |output| {
                    let Some(cap) = capability.as_mut() else { return };
                    if let Some(loaded) = loaded.as_mut()
                        && checked.is_none_or(|c| c.elapsed() >= RELOAD_CHECK)
                    {
                        checked = Some(Instant::now());
                        let first = loaded.file.is_none();
                        if (first && !tried) || stamp(&table.path) != loaded.stamp {
                            tried = true;
                            let at = *cap.time();
                            match table.reload(loaded) {
                                Ok(differences) => {
                                    let mut session = output.session(&*cap);
                                    for (key, value, diff) in differences {
                                        session.give(((key, value), at, diff));
                                    }
                                    metrics.keys_held.store(loaded.rows.len() as i64, Relaxed);
                                    if !first {
                                        metrics.count(super::enrich::ENRICHMENT_RELOADS, "part", &table.part, 1);
                                        tracing::info!(table = %table.path.display(), epoch = at, "reference table reloaded");
                                    }
                                }
                                Err(e) => {
                                    // Looked at again only when the file changes again.
                                    loaded.stamp = stamp(&table.path);
                                    metrics.count(super::enrich::ENRICHMENT_RELOAD_FAILURES, "part", &table.part, 1);
                                    tracing::error!(error = %e, "reference table changed but cannot be read; keeping the loaded rows");
                                }
                            }
                        }
                    }
                    // The table's epoch follows the records', one ahead: a change is stamped with
                    // the epoch after the one they have reached, so the table is complete through
                    // their current epoch (its records are looked up as they come, not an epoch
                    // later); the first load is at epoch 0. The table ends with the records.
                    match probe.with_frontier(|f| f.first().copied()) {
                        None => capability = None,
                        Some(at) if at + 1 > *cap.time() && (tried || worker != 0) => cap.downgrade(&(at + 1)),
                        Some(_) => {}
                    }
                    activator.activate_after(Duration::from_millis(100));
                }
            },
        );
        let arranged = keyed::arrange_owned(updates, &format!("Arrange({})", self.part));
        lookup(keyed, arranged, Arc::clone(self), tree, Arc::clone(&stage.metrics))
    }
}

/// A table file read by differences outside a dataflow: what `sluice bench` times (a reload that
/// changes a few rows of a large table against one that changes every row).
pub struct TableLoader {
    table: Table,
    loaded: Loaded,
}

impl TableLoader {
    /// Opens `spec` (checked as in a pipeline) with nothing loaded yet.
    pub fn open(spec: TableSpec, base_dir: &Path) -> Result<Self, TableError> {
        Ok(TableLoader { table: Table::configure(spec, base_dir)?, loaded: Loaded::default() })
    }

    /// Reads the file again: its differences from what was loaded, as (key, row, +1 | -1).
    pub fn reload(&mut self) -> Result<Vec<(String, String, isize)>, TableError> {
        self.table.reload(&mut self.loaded)
    }
}

impl TableSpec {
    /// A table at `path` whose `key` column is looked up by the record's `field`, under `target`.
    pub fn new(path: &str, field: &str, key: &str, target: &str) -> Self {
        TableSpec { path: path.into(), field: field.into(), key: key.into(), target: target.into() }
    }
}

/// The text of a key value found in `record`: a string's contents, or a number's or boolean's
/// JSON text.
fn key_text(record: &[u8], found: &json::Found) -> Option<String> {
    let json::Found::At(range) = found else { return None };
    let raw = record.get(range.clone())?;
    match raw.first()? {
        b'"' => json::string_text(raw).map(std::borrow::Cow::into_owned),
        b'-' | b'0'..=b'9' | b't' | b'f' => std::str::from_utf8(raw).ok().map(str::to_string),
        _ => None,
    }
}

/// The lookup operator: holds each epoch's records until the table is complete through it, then
/// enriches them with the rows as of that epoch.
fn lookup<'scope>(
    keyed: Stream<'scope, Epoch, Vec<(u64, Keyed<String>)>>,
    arranged: differential_dataflow::operators::arrange::Arranged<'scope, keyed::KeyedTrace<String, String>>,
    table: Arc<Table>,
    tree: json::PathTree,
    metrics: Arc<TransformMetrics>,
) -> Stream<'scope, Epoch, Vec<Records>> {
    let mut trace = arranged.trace;
    let single_target = (table.target.len() == 1).then(|| table.target[0].clone());
    keyed.binary_frontier::<_, CapacityContainerBuilder<Vec<Records>>, _, _, _, _>(
        arranged.stream,
        Pipeline,
        Pipeline,
        &format!("Lookup({})", table.part),
        move |_, _| {
            let mut held = Held::new();
            let mut found = Vec::new();
            let mut scratch = Vec::new();
            move |(records, records_frontier), (batches, table_frontier), output| {
                records.for_each(|cap, data| {
                    for (_, keyed) in data.drain(..) {
                        if keyed.keys.iter().all(Option::is_none) {
                            if let Records::Deliver(b) = &keyed.records {
                                count(&metrics, &table.part, "field_missing", b.len() as u64);
                            }
                            output.session(&cap).give(held.pass(keyed));
                            continue;
                        }
                        held.hold(&cap, keyed);
                    }
                });
                batches.for_each(|_, data| data.clear());
                while let Some((epoch, cap, keyed_batches)) = held.next_complete(&table_frontier.frontier()) {
                    let mut session = output.session(&cap);
                    for keyed in keyed_batches {
                        let Records::Deliver(batch) = keyed.records else {
                            session.give(keyed.records);
                            continue;
                        };
                        let missing = keyed.keys.iter().filter(|k| k.is_none()).count() as u64;
                        let (keys, key_of_record) = keyed::distinct(keyed.keys);
                        // The row of each distinct key, read once.
                        let mut rows: Vec<Option<String>> = vec![None; keys.len()];
                        keyed::read_as_of(&mut trace, &keys, epoch, |k, row| {
                            rows[k] = Some(row.clone());
                            false
                        });
                        let row_of = |i: usize| key_of_record[i].and_then(|k| rows[k].as_deref());
                        let hits = (0..batch.len()).filter(|&i| row_of(i).is_some()).count() as u64;
                        count(&metrics, &table.part, "field_missing", missing);
                        count(&metrics, &table.part, "not_found", batch.len() as u64 - missing - hits);
                        if hits > 0 {
                            metrics.count(super::enrich::ENRICHMENT_HITS, "part", &table.part, hits);
                        }
                        let mut out =
                            RecordBatch::with_capacity(batch.arrival_ms, batch.byte_len() + batch.byte_len() / 2);
                        for (i, record) in batch.iter().enumerate() {
                            let enriched = row_of(i).and_then(|row| {
                                scratch.clear();
                                with_row(
                                    record,
                                    row,
                                    &tree,
                                    single_target.as_deref(),
                                    &table.target,
                                    &mut found,
                                    &mut scratch,
                                )
                                .then_some(&scratch)
                            });
                            out.push_carrying(
                                enriched.map_or(record, |s| s.as_slice()),
                                batch.origin(i),
                                batch.partition_keys(i),
                            );
                        }
                        session.give(Records::Deliver(out));
                    }
                }
                // No read will ask for an epoch before the oldest record held or still to come.
                if let Some(oldest) = held.oldest(&records_frontier.frontier()) {
                    keyed::compact(&mut trace, oldest);
                }
            }
        },
    )
}

/// Counts `n` misses of `part` for `reason`.
fn count(metrics: &TransformMetrics, part: &str, reason: &str, n: u64) {
    if n > 0 {
        metrics.count(super::enrich::ENRICHMENT_MISSES, "reason", &format!("{part}.{reason}"), n);
    }
}

/// `record` with `row` (a JSON object's text) under `target`, into `out`: appended before the
/// record's closing brace when the target is one top-level key the record lacks, else through a
/// parsed tree. False when the record is not a JSON object (it then passes unchanged).
fn with_row(
    record: &[u8],
    row: &str,
    tree: &json::PathTree,
    single_target: Option<&str>,
    target: &[String],
    found: &mut Vec<json::Found>,
    out: &mut Vec<u8>,
) -> bool {
    let scanned = json::find_paths(record, tree, found);
    if let (Some(json::Scanned::Valid), Some(key), Some(json::Found::Missing)) = (scanned, single_target, found.get(1))
    {
        let trimmed = record.trim_ascii_end();
        let Some(close) = trimmed.len().checked_sub(1) else { return false };
        let open = json::skip_ws(record, 0);
        out.extend_from_slice(&trimmed[..close]);
        if json::skip_ws(record, open + 1) < close {
            out.push(b',');
        }
        let _ = serde_json::to_writer(&mut *out, key);
        out.push(b':');
        out.extend_from_slice(row.as_bytes());
        out.push(b'}');
        return true;
    }
    let (Ok(mut value @ Value::Object(_)), Ok(row)) =
        (serde_json::from_slice::<Value>(record), serde_json::from_str::<Value>(row))
    else {
        return false;
    };
    put(&mut value, target, row);
    serde_json::to_writer(&mut *out, &value).is_ok()
}

/// The rows of a table file: `(start, end)` of each, without its line break (and a `\r` before
/// one); blank lines skipped. `quoted`: a row ends at a line break outside double quotes (a quoted
/// CSV field may hold line breaks); else at every line break (NDJSON, CSV without quotes).
fn rows(text: &[u8], quoted: bool) -> impl Iterator<Item = (usize, usize)> + '_ {
    let mut start = 0;
    std::iter::from_fn(move || {
        while start < text.len() {
            let end = if quoted { quoted_row_end(text, start) } else { line_end(text, start) };
            let row = (start, trim_cr(text, start, end));
            start = end + 1;
            if text[row.0..row.1].iter().any(|b| !b.is_ascii_whitespace()) {
                return Some(row);
            }
        }
        None
    })
}

/// Where the line from `start` ends (its line break, or the end of the text).
fn line_end(text: &[u8], start: usize) -> usize {
    memchr::memchr(b'\n', &text[start..]).map_or(text.len(), |i| start + i)
}

/// Where the CSV row from `start` ends: the first line break outside double quotes.
fn quoted_row_end(text: &[u8], start: usize) -> usize {
    let mut quoted = false;
    let mut at = start;
    while let Some(found) = memchr::memchr2(b'"', b'\n', &text[at..]) {
        let i = at + found;
        if text[i] == b'"' {
            quoted = !quoted;
        } else if !quoted {
            return i;
        }
        at = i + 1;
    }
    text.len()
}

/// `end`, less a `\r` just before it.
fn trim_cr(text: &[u8], start: usize, end: usize) -> usize {
    if end > start && text[end - 1] == b'\r' { end - 1 } else { end }
}

/// The fields of one CSV row (RFC 4180: a quoted field may hold commas, line breaks and `""` for a
/// quote). A quote left open (a truncated row), text after a closing quote, a quote inside an
/// unquoted field or bytes that are not UTF-8 are errors.
pub(crate) fn parse_csv_row(row: &[u8]) -> Result<Vec<String>, String> {
    let mut fields = Vec::new();
    let mut at = 0;
    loop {
        let mut field = Vec::new();
        if row.get(at) == Some(&b'"') {
            at += 1;
            loop {
                match row.get(at) {
                    None => return Err("an unbalanced quote (a truncated row?)".into()),
                    Some(b'"') if row.get(at + 1) == Some(&b'"') => {
                        field.push(b'"');
                        at += 2;
                    }
                    Some(b'"') => {
                        at += 1;
                        break;
                    }
                    Some(&b) => {
                        field.push(b);
                        at += 1;
                    }
                }
            }
            if !matches!(row.get(at), None | Some(b',')) {
                return Err(format!("text after the closing quote of field {}", fields.len() + 1));
            }
        } else {
            let end = memchr::memchr(b',', &row[at..]).map_or(row.len(), |p| at + p);
            field.extend_from_slice(&row[at..end]);
            if field.contains(&b'"') {
                return Err(format!("a quote inside unquoted field {}", fields.len() + 1));
            }
            at = end;
        }
        fields.push(String::from_utf8(field).map_err(|_| format!("field {} is not UTF-8", fields.len() + 1))?);
        if at >= row.len() {
            return Ok(fields);
        }
        at += 1; // the comma
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(dir: &Path, name: &str, text: &str) -> (Table, PathBuf) {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        let spec = TableSpec { path: name.into(), field: "ip".into(), key: "ip".into(), target: "asset".into() };
        (Table::configure(spec, dir).unwrap_or_else(|e| panic!("{e}")), path)
    }

    fn replace(path: &Path, text: &str) {
        let next = path.with_extension("next");
        std::fs::write(&next, text).unwrap();
        std::fs::rename(&next, path).unwrap();
    }

    #[test]
    fn a_reload_sends_only_the_rows_that_changed() {
        let dir = tempfile::tempdir().unwrap();
        let (t, path) = table(dir.path(), "a.csv", "ip,owner\n1.1.1.1,ann\n2.2.2.2,bob\n3.3.3.3,cy\n");
        let mut loaded = Loaded::default();
        assert_eq!(t.reload(&mut loaded).unwrap().len(), 3);
        // One row changed, one moved, one added.
        replace(&path, "ip,owner\n3.3.3.3,cy\n2.2.2.2,bea\n1.1.1.1,ann\n4.4.4.4,dee\n");
        let mut d = t.reload(&mut loaded).unwrap();
        d.sort();
        assert_eq!(
            d,
            vec![
                ("2.2.2.2".into(), r#"{"ip":"2.2.2.2","owner":"bea"}"#.into(), 1),
                ("2.2.2.2".into(), r#"{"ip":"2.2.2.2","owner":"bob"}"#.into(), -1),
                ("4.4.4.4".into(), r#"{"ip":"4.4.4.4","owner":"dee"}"#.into(), 1),
            ]
        );
    }

    /// Excel's "CSV UTF-8" and PowerShell start a file with a byte order mark: the first column is
    /// still found by its name (it had been "\u{feff}ip": no key column), and an NDJSON table's
    /// first line is still an object; a reload of the same rows sends nothing.
    #[test]
    fn a_byte_order_mark_is_not_part_of_the_first_row() {
        let dir = tempfile::tempdir().unwrap();
        let (t, path) = table(dir.path(), "a.csv", "\u{feff}ip,owner\r\n1.1.1.1,ann\r\n");
        let mut loaded = Loaded::default();
        assert_eq!(t.reload(&mut loaded).unwrap(), [("1.1.1.1".into(), r#"{"ip":"1.1.1.1","owner":"ann"}"#.into(), 1)]);
        replace(&path, "\u{feff}ip,owner\r\n1.1.1.1,ann\r\n2.2.2.2,\"bob\"\r\n");
        assert_eq!(t.reload(&mut loaded).unwrap(), [("2.2.2.2".into(), r#"{"ip":"2.2.2.2","owner":"bob"}"#.into(), 1)]);
        let (t, _) = table(dir.path(), "b.ndjson", "\u{feff}{\"ip\":\"1.1.1.1\",\"n\":1}\n");
        assert_eq!(
            t.reload(&mut Loaded::default()).unwrap(),
            [("1.1.1.1".into(), r#"{"ip":"1.1.1.1","n":1}"#.into(), 1)]
        );
    }

    #[test]
    fn a_truncated_file_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let (t, path) = table(dir.path(), "a.csv", "ip,owner\n1.1.1.1,ann\n2.2.2.2,\"bob\"\n");
        let mut loaded = Loaded::default();
        t.reload(&mut loaded).unwrap();
        replace(&path, "ip,owner\n1.1.1.1,ann\n2.2.2.2,\"bo");
        assert!(matches!(t.reload(&mut loaded), Err(TableError::Row { row: 2, .. })));
        replace(&path, "ip,owner\n1.1.1.1,ann\n2.2.");
        assert!(matches!(t.reload(&mut loaded), Err(TableError::Row { row: 2, .. })));
        assert_eq!(loaded.rows.len(), 2);
        // A file removed: nothing changes until one is back.
        std::fs::remove_file(&path).unwrap();
        assert!(matches!(t.reload(&mut loaded), Err(TableError::Read { .. })));
        assert_eq!(loaded.rows.len(), 2);
        replace(&path, "ip,owner\n1.1.1.1,ann\n2.2.2.2,\"bob\"\n");
        assert_eq!(t.reload(&mut loaded).unwrap(), vec![]);
    }

    #[test]
    fn a_file_rewritten_in_place_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (t, path) = table(dir.path(), "a.ndjson", "{\"ip\":\"1.1.1.1\",\"n\":1}\n");
        let mut loaded = Loaded::default();
        t.reload(&mut loaded).unwrap();
        std::fs::write(&path, "{\"ip\":\"1.1.1.1\",\"n\":2}\n").unwrap();
        assert!(matches!(t.reload(&mut loaded), Err(TableError::RewrittenInPlace(_))));
    }

    #[test]
    fn csv_rows_parse_as_rfc_4180_says() {
        assert_eq!(parse_csv_row(b"a,,\"b,\"\"c\"\"\nd\",").unwrap(), ["a", "", "b,\"c\"\nd", ""]);
        assert_eq!(parse_csv_row(b"").unwrap(), [""]);
        assert!(parse_csv_row(b"a,\"b").is_err());
        assert!(parse_csv_row(b"a,\"b\"c").is_err());
        assert!(parse_csv_row(b"a,b\"c").is_err());
        let text = b"h1,h2\r\n\"x\ny\",2\n\n3,4";
        let split: Vec<&[u8]> = rows(text, true).map(|(s, e)| &text[s..e]).collect();
        assert_eq!(split, [&b"h1,h2"[..], b"\"x\ny\",2", b"3,4"]);
        let split: Vec<&[u8]> = rows(b"{}\r\n \n{}", false).map(|(s, e)| &b"{}\r\n \n{}"[s..e]).collect();
        assert_eq!(split, [&b"{}"[..], b"{}"]);
    }

    #[test]
    fn a_missing_key_column_is_named() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.csv"), "addr,owner\n1.1.1.1,ann\n").unwrap();
        let spec = TableSpec { path: "a.csv".into(), field: "ip".into(), key: "ip".into(), target: "asset".into() };
        let e = Table::configure(spec, dir.path()).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(e.contains("no column `ip`") && e.contains("`addr`, `owner`"), "{e}");
    }

    #[test]
    fn rows_are_added_in_place_or_through_a_tree() {
        let tree = json::PathTree::new(&[vec![b"ip".to_vec()], vec![b"asset".to_vec()]]);
        let mut found = Vec::new();
        let mut out = Vec::new();
        let target = vec!["asset".to_string()];
        assert!(with_row(br#"{"ip":"1"}"#, r#"{"o":1}"#, &tree, Some("asset"), &target, &mut found, &mut out));
        assert_eq!(out, br#"{"ip":"1","asset":{"o":1}}"#);
        out.clear();
        assert!(with_row(
            br#"{"ip":"1","asset":2}"#,
            r#"{"o":1}"#,
            &tree,
            Some("asset"),
            &target,
            &mut found,
            &mut out
        ));
        assert_eq!(out, br#"{"asset":{"o":1},"ip":"1"}"#);
    }
}

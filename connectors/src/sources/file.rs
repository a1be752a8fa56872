//! `type = "file"`: newline-delimited records from local files matched by globs.
//!
//! Each line (without its `\n` or `\r\n`) is one record; empty lines are skipped, and so is a UTF-8 byte order
//! mark at the start of a file (of its decompressed bytes, for a compressed one). `.gz`, `.zst`,
//! `.snappy` (either framing) and `.zip` files, and files whose first bytes say gzip, zstd, framed
//! Snappy or ZIP, are decompressed as they are read, as the `object_store` source reads objects
//! (one reader for both: `Content::text_reader`); a ZIP archive gives each entry's lines; a file in
//! a compressed format sluice does not read (bzip2, xz, …) is given up with its format named, never
//! read as text. Plain files are
//! split into newline-aligned byte ranges shared out among the workers, so one large file is read
//! by all of them; a compressed file is read whole by one worker. The ranges are dealt to processes (by worker) and, within a process, taken by
//! whichever of its workers is free next. Guarantees: for any split, every line is read exactly
//! once (a line belongs to the range its first byte is in); a file that cannot be read to its end
//! (missing, corrupt) is given up with its path in the error and the run's outcome (exit 1), what
//! was read of it delivered, and the source goes on with the other files; a plain file found
//! shorter than it was when the run planned it (truncated while read) is warned about, and the
//! partial line it ends with is counted (`PartialRecords`), never delivered as a record. Relative
//! paths are relative to the current directory.

use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use serde::Deserialize;
use sluice_engine::compression::Content;
use sluice_engine::config::{ConnectorConfig, Diagnostic, Problems};
use sluice_engine::contract::{PrepareContext, ReadStatus, Source, SourceContext, SourceError, SourceReader};
use sluice_engine::metrics::PipelineMetrics;
use sluice_engine::record::RecordBatch;

use super::file_checkpoint::{FileCheckpoints, Saved};

/// The file source's own keys.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    /// Glob patterns, e.g. `data/*.ndjson.gz`.
    paths: Vec<String>,
    /// Plain files larger than this (MiB, default 16) are cut into ranges for parallel reading.
    split_mb: Option<u64>,
}

/// Plain files larger than this are split (`split_mb`'s default).
pub const MIN_SPLIT_BYTES: u64 = 16 << 20;

/// A configured file source.
#[derive(Debug)]
pub struct FileSource {
    patterns: Vec<String>,
    units: OnceLock<Result<Vec<WorkUnit>, String>>,
    /// This process's units, claimed by its workers as each becomes free.
    claims: std::sync::Mutex<Option<Arc<Claims>>>,
    min_split: u64,
    /// Where read progress is checkpointed (none: every run reads everything).
    checkpoint_dir: Option<PathBuf>,
    checkpoints: OnceLock<Arc<FileCheckpoints>>,
    /// The run's counters (for partial lines), from `prepare`.
    metrics: OnceLock<Arc<PipelineMetrics>>,
}

/// A piece of work for one worker: a whole file or a byte range of a plain one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkUnit {
    /// The file.
    pub path: PathBuf,
    /// First byte of the range.
    pub start: u64,
    /// End of the range (exclusive) for lines' first bytes; `None` reads to the end.
    pub end: Option<u64>,
    /// How it is compressed.
    pub compression: Content,
    /// The file's size when the run planned it.
    pub file_size: u64,
}

/// Builds a file source from `[sources.<name>]`.
pub fn configure(config: ConnectorConfig) -> Result<Arc<dyn Source>, Problems> {
    let span = config.table.key_span("paths").unwrap_or(config.table.span.clone());
    let split_at = config.table.key_at("split_mb");
    let mut problems = Problems::default();
    let Some(c) = config.table.deserialize::<FileConfig>(&mut problems) else { return Err(problems) };
    if c.paths.is_empty() {
        problems.push(
            Diagnostic::new(span.clone(), "`paths` is empty")
                .with_hint("list at least one glob, e.g. [\"data/*.ndjson\"]"),
        );
    }
    for p in &c.paths {
        if let Err(e) = glob::Pattern::new(p) {
            problems.push(Diagnostic::new(span.clone(), format!("bad glob `{p}`: {e}")));
        }
    }
    let min_split = problems.take(
        split_at
            .within(
                c.split_mb,
                MIN_SPLIT_BYTES >> 20,
                1..=4096,
                "MB a file's ranges start from, shared by the workers (default 16)",
            )
            .map(|mb| mb << 20),
    );
    let min_split = problems.finish(min_split)?;
    let mut source = FileSource::new(c.paths, min_split);
    source.checkpoint_dir = Some(config.data_dir.join(&config.name));
    Ok(Arc::new(source))
}

impl FileSource {
    /// A source over `patterns`, splitting plain files larger than `min_split` bytes ([`plan_units`]).
    pub fn new(patterns: Vec<String>, min_split: u64) -> Self {
        FileSource {
            patterns,
            units: OnceLock::new(),
            claims: std::sync::Mutex::new(None),
            min_split,
            checkpoint_dir: None,
            checkpoints: OnceLock::new(),
            metrics: OnceLock::new(),
        }
    }

    fn units(&self, workers: usize) -> Result<&Vec<WorkUnit>, SourceError> {
        self.units
            .get_or_init(|| plan_units(&self.patterns, workers, self.min_split))
            .as_ref()
            .map_err(|e| SourceError::Setup(e.clone()))
    }
}

/// What `path` holds: by its extension (`.gz`, `.zst`, `.snappy`, `.zip`), else by its first bytes
/// (a rotated log compressed under another name, a `.bz2` a `*` matched). A file that cannot be
/// opened is taken as plain here; reading it fails and gives it up.
fn compression_of(path: &std::path::Path) -> Content {
    Content::by_extension(&path.to_string_lossy()).unwrap_or_else(|| {
        let mut head = Vec::with_capacity(sluice_engine::compression::MAGIC_BYTES);
        if let Ok(file) = File::open(path) {
            let _ = file.take(sluice_engine::compression::MAGIC_BYTES as u64).read_to_end(&mut head);
        }
        sluice_engine::compression::content_of(&head)
    })
}

/// The files the globs match, sorted, each once; an error when none matches (a pattern that
/// matches nothing alone is a warning).
pub fn matching_files(patterns: &[String]) -> Result<Vec<PathBuf>, String> {
    let mut files = Vec::new();
    for pattern in patterns {
        let matches = glob::glob(pattern).map_err(|e| format!("bad glob `{pattern}`: {e}"))?;
        let mut found = 0;
        for entry in matches {
            let path = entry.map_err(|e| format!("cannot read {}: {}", e.path().display(), e.error()))?;
            if path.is_file() && !files.contains(&path) {
                files.push(path);
                found += 1;
            }
        }
        if found == 0 {
            tracing::warn!(pattern, "no file matches");
        }
    }
    if files.is_empty() {
        return Err(format!("no file matches {}", patterns.join(", ")));
    }
    files.sort();
    Ok(files)
}

/// Smallest range the last ranges of a run's plain files shrink to (or `split_mb`, if smaller).
pub const TAIL_SPLIT_BYTES: u64 = 1 << 20;

/// Expands the globs and cuts the files into work units: compressed files whole, plain files
/// larger than `min_split` into ranges. Workers claim units in order as they become free, so the
/// ranges shrink as the input runs out (guided self-scheduling): each is a share of what is left,
/// `left / (2 × workers)`, between [`TAIL_SPLIT_BYTES`] and the larger of `min_split` and an
/// eighth of a worker's share. A run starts with few, large ranges and ends with the workers
/// finishing within about one small range of each other (with ranges of 16 MiB to the end, the
/// last one kept a worker reading alone for ~45 ms of a 0.6 s two-worker run).
pub fn plan_units(patterns: &[String], workers: usize, min_split: u64) -> Result<Vec<WorkUnit>, String> {
    let files = matching_files(patterns)?;
    let mut sizes = Vec::new();
    for f in &files {
        let len = std::fs::metadata(f).map_err(|e| format!("cannot read {}: {e}", f.display()))?.len();
        sizes.push((len, compression_of(f)));
    }
    let plain_total: u64 = sizes.iter().filter(|(_, compression)| compression.is_plain()).map(|(s, _)| *s).sum();
    let workers = workers.max(1) as u64;
    let largest = (plain_total / (8 * workers)).max(min_split).max(1);
    let smallest = min_split.clamp(1, TAIL_SPLIT_BYTES);
    let mut left = plain_total;
    let mut units = Vec::new();
    for (path, (size, compression)) in files.into_iter().zip(sizes) {
        if !compression.is_plain() || size <= min_split {
            left = left.saturating_sub(if compression.is_plain() { size } else { 0 });
            units.push(WorkUnit { path, start: 0, end: None, compression, file_size: size });
            continue;
        }
        let mut start = 0;
        while start < size {
            let share = (left / (2 * workers)).clamp(smallest, largest);
            let end = (start + share).min(size);
            units.push(WorkUnit {
                path: path.clone(),
                start,
                end: if end >= size { None } else { Some(end) },
                compression,
                file_size: size,
            });
            left = left.saturating_sub(end - start);
            start = end;
        }
    }
    Ok(units)
}

impl Source for FileSource {
    fn describe(&self) -> String {
        format!("file: {}", self.patterns.join(", "))
    }

    fn is_finite(&self) -> bool {
        true
    }

    /// Checks that the globs match a file (else the run stops before it starts, whatever its other
    /// sources), and starts following the delivered frontier for checkpoints.
    fn prepare(&self, ctx: &PrepareContext) -> Result<(), SourceError> {
        matching_files(&self.patterns).map_err(SourceError::Setup)?;
        let _ = self.metrics.set(Arc::clone(&ctx.metrics));
        if let Some(dir) = &self.checkpoint_dir {
            let checkpoints = FileCheckpoints::load(dir.clone());
            checkpoints.follow(Arc::clone(&ctx.delivered));
            let _ = self.checkpoints.set(checkpoints);
        }
        Ok(())
    }

    fn finish(&self, stopped: bool) {
        if let Some(checkpoints) = self.checkpoints.get() {
            checkpoints.finish(stopped);
        }
    }

    /// The files and their sizes as this process sees them.
    fn input_fingerprint(&self) -> u64 {
        let Ok(files) = matching_files(&self.patterns) else { return 0 };
        let mut seen = String::new();
        for f in files {
            let size = std::fs::metadata(&f).map_or(0, |m| m.len());
            seen.push_str(&format!("{}\t{size}\n", f.display()));
        }
        sluice_engine::contract::fingerprint(seen.as_bytes())
    }

    fn open(&self, ctx: &SourceContext) -> Result<Box<dyn SourceReader>, SourceError> {
        let units = self.units(ctx.workers)?;
        let claims = {
            let mut shared = self.claims.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            // Each run opens the source once on every worker: once all of this process's workers
            // opened the current claims, the next open starts a new run's.
            let local = ctx.local_workers.len().max(1);
            let current = shared.as_ref().filter(|c| c.opened.load(Ordering::Relaxed) < local);
            let claims = match current {
                Some(c) => Arc::clone(c),
                None => {
                    // Unit `i` belongs to worker `i % workers`; this process's workers share theirs.
                    let workers = ctx.workers.max(1);
                    let mine = units.iter().enumerate().filter(|(i, _)| ctx.local_workers.contains(&(i % workers)));
                    let claims = Arc::new(Claims {
                        units: mine.map(|(_, u)| u.clone()).collect(),
                        next: AtomicUsize::new(0),
                        opened: AtomicUsize::new(0),
                    });
                    *shared = Some(Arc::clone(&claims));
                    claims
                }
            };
            claims.opened.fetch_add(1, Ordering::Relaxed);
            claims
        };
        let checkpoints = self.checkpoints.get().cloned();
        let metrics = self.metrics.get().cloned();
        Ok(Box::new(FileReader { claims, current: None, checkpoints, metrics, epoch: 0 }))
    }
}

/// The unit being read: the unit, its checkpoint key, its lines.
type CurrentUnit = (WorkUnit, String, LineReader<Box<dyn Read>>);

/// A process's units for one run, each taken by the first of its workers to ask: a worker slowed
/// down (a busier core, slower records) takes fewer, so the workers finish together instead of
/// one reading its fixed share alone at the end.
#[derive(Debug)]
struct Claims {
    units: Vec<WorkUnit>,
    /// The next unit not yet taken.
    next: AtomicUsize,
    /// Readers opened on these claims.
    opened: AtomicUsize,
}

impl Claims {
    /// The next unit nobody took, if any.
    fn take(&self) -> Option<WorkUnit> {
        self.units.get(self.next.fetch_add(1, Ordering::Relaxed)).cloned()
    }
}

struct FileReader {
    claims: Arc<Claims>,
    current: Option<CurrentUnit>,
    checkpoints: Option<Arc<FileCheckpoints>>,
    metrics: Option<Arc<PipelineMetrics>>,
    epoch: u64,
}

impl FileReader {
    /// A file that cannot be read (opened, decompressed) to its end: given up, the others read on,
    /// and the checkpoint kept for the next run to read it again.
    fn give_up(&self, unit: &WorkUnit, e: std::io::Error) -> SourceError {
        if let Some(c) = &self.checkpoints {
            c.give_up();
        }
        SourceError::InputFailed { context: format!("reading {}", unit.path.display()), source: e }
    }
}

/// Opens a unit at `offset`, a line start saved by a checkpoint (in the decompressed stream for a
/// compressed file).
pub fn open_unit_at(unit: &WorkUnit, offset: u64) -> std::io::Result<LineReader<Box<dyn Read>>> {
    let mut file = File::open(&unit.path)?;
    let reader: Box<dyn Read> = if unit.compression.is_plain() {
        file.seek(SeekFrom::Start(offset))?;
        Box::new(file)
    } else {
        let mut reader = open_unit(unit)?.inner;
        std::io::copy(&mut (&mut reader).take(offset), &mut std::io::sink())?;
        reader
    };
    Ok(LineReader::new(reader, offset, unit.end).expecting(planned_length(unit)))
}

/// The length a unit's stream must reach: the planned size of a plain file (a compressed file's
/// decompressed length is not known in advance).
fn planned_length(unit: &WorkUnit) -> Option<u64> {
    unit.compression.is_plain().then_some(unit.file_size)
}

/// Opens a unit positioned at the first line that starts in its range.
pub fn open_unit(unit: &WorkUnit) -> std::io::Result<LineReader<Box<dyn Read>>> {
    let mut file = File::open(&unit.path)?;
    let reader: Box<dyn Read> = if unit.compression.is_plain() {
        if unit.start > 0 {
            // Start at the byte before: if it is a newline, a line begins exactly at `start`.
            file.seek(SeekFrom::Start(unit.start - 1))?;
        }
        Box::new(file)
    } else {
        unit.compression.text_reader(BufReader::with_capacity(1 << 20, file), "leave it out of `paths`")?
    };
    let mut lines = LineReader::new(reader, unit.start.saturating_sub(1), unit.end).expecting(planned_length(unit));
    if unit.start > 0 {
        lines.skip_partial_line()?;
    } else {
        lines.offset = 0;
    }
    Ok(lines)
}

impl SourceReader for FileReader {
    fn set_epoch(&mut self, epoch: u64) {
        self.epoch = epoch;
    }

    fn read(&mut self, batch: &mut RecordBatch, max_bytes: usize) -> Result<ReadStatus, SourceError> {
        loop {
            if self.current.is_none() {
                let Some(unit) = self.claims.take() else {
                    return Ok(ReadStatus::Finished);
                };
                let (key, legacy_key) = unit_keys(&unit);
                let saved = self.checkpoints.as_ref().and_then(|c| c.saved(&key).or_else(|| c.saved(&legacy_key)));
                let opened = match saved {
                    Some(Saved::Done) => continue,
                    Some(Saved::Offset(offset)) => open_unit_at(&unit, offset),
                    None => open_unit(&unit),
                };
                let lines = opened.map_err(|e| self.give_up(&unit, e))?;
                self.current = Some((unit, key, lines));
            }
            let Some((unit, key, lines)) = self.current.as_mut() else {
                continue;
            };
            // A unit that fails is given up (not checkpointed past what was read: a next run with
            // checkpoints tries it again); the next read takes the next unit.
            let finished = match lines.fill(batch, max_bytes) {
                Ok(finished) => finished,
                Err(e) => {
                    let unit = unit.clone();
                    self.current = None;
                    return Err(self.give_up(&unit, e));
                }
            };
            if let Some(shrunk) = lines.take_shrinking() {
                tracing::warn!(
                    file = %unit.path.display(),
                    planned_bytes = unit.file_size,
                    found_bytes = shrunk.length,
                    partial_line_bytes = shrunk.partial_line,
                    "the file was truncated while it was read; its partial last line is not delivered"
                );
                if shrunk.partial_line > 0
                    && let Some(m) = &self.metrics
                {
                    m.partial_records.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            }
            if let Some(c) = &self.checkpoints {
                c.read(key, self.epoch, lines.offset, finished);
            }
            if finished {
                self.current = None;
            }
            if batch.byte_len() >= max_bytes || !batch.is_empty() && finished {
                return Ok(ReadStatus::Ready);
            }
        }
    }
}

const READ_CHUNK: usize = 1 << 20;

/// A stream that ended before the length it was expected to have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shrunk {
    /// Where it ended.
    pub length: u64,
    /// Bytes of the line it ended in the middle of (not delivered; 0 when it ended between lines).
    pub partial_line: u64,
}

/// Cuts a byte stream into lines, stopping at the first line that starts at or after `limit`.
pub struct LineReader<R> {
    inner: R,
    buf: Vec<u8>,
    head: usize,
    /// Stream offset of `buf[head]`.
    offset: u64,
    limit: Option<u64>,
    eof: bool,
    /// The stream's length when planned: ending before it means it was truncated meanwhile.
    expected_len: Option<u64>,
    shrunk: Option<Shrunk>,
}

impl<R: Read> LineReader<R> {
    /// Lines of `inner`, whose first byte is at stream offset `offset`.
    pub fn new(inner: R, offset: u64, limit: Option<u64>) -> Self {
        LineReader {
            inner,
            buf: Vec::with_capacity(READ_CHUNK),
            head: 0,
            offset,
            limit,
            eof: false,
            expected_len: None,
            shrunk: None,
        }
    }

    /// The same reader, expecting the stream to be at least `length` bytes long (when known).
    pub fn expecting(mut self, length: Option<u64>) -> Self {
        self.expected_len = length;
        self
    }

    /// The stream offset of the next unread line.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Whether the stream turned out shorter than expected (once).
    pub fn take_shrinking(&mut self) -> Option<Shrunk> {
        self.shrunk.take()
    }

    fn read_more(&mut self) -> std::io::Result<()> {
        if self.head > 0 {
            self.buf.drain(..self.head);
            self.head = 0;
        }
        let len = self.buf.len();
        self.buf.resize(len + READ_CHUNK, 0);
        let n = loop {
            match self.inner.read(&mut self.buf[len..]) {
                Ok(n) => break n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    self.buf.truncate(len);
                    return Err(e);
                }
            }
        };
        self.buf.truncate(len + n);
        if n == 0 {
            self.eof = true;
        }
        Ok(())
    }

    /// Discards bytes up to and including the next newline.
    fn skip_partial_line(&mut self) -> std::io::Result<()> {
        loop {
            if let Some(nl) = memchr::memchr(b'\n', &self.buf[self.head..]) {
                self.head += nl + 1;
                self.offset += nl as u64 + 1;
                return Ok(());
            }
            self.offset += (self.buf.len() - self.head) as u64;
            self.head = self.buf.len();
            if self.eof {
                return Ok(());
            }
            self.read_more()?;
        }
    }

    fn past_limit(&self) -> bool {
        self.limit.is_some_and(|l| self.offset >= l)
    }

    /// Adds lines to `batch` until it holds `max_bytes`; `Ok(true)` when the range is done.
    pub fn fill(&mut self, batch: &mut RecordBatch, max_bytes: usize) -> std::io::Result<bool> {
        loop {
            while let Some(nl) = memchr::memchr(b'\n', &self.buf[self.head..]) {
                if self.past_limit() {
                    return Ok(true);
                }
                let line = without_bom(&self.buf[self.head..self.head + nl], self.offset);
                // `\r\n` ends a line as `\n` does.
                let line = sluice_engine::record::without_line_end(line);
                if !line.is_empty() {
                    batch.push(line);
                }
                self.head += nl + 1;
                self.offset += nl as u64 + 1;
                if batch.byte_len() >= max_bytes {
                    return Ok(false);
                }
            }
            if self.eof {
                let rest = (self.buf.len() - self.head) as u64;
                let end = self.offset + rest;
                let partial = if self.past_limit() { 0 } else { rest };
                if self.expected_len.is_some_and(|expected| end < expected) {
                    // Truncated while read: a last line without its newline is cut, not a record.
                    self.shrunk = Some(Shrunk { length: end, partial_line: partial });
                } else if partial > 0 {
                    let line = without_bom(&self.buf[self.head..], self.offset);
                    if !line.is_empty() {
                        batch.push(line);
                    }
                }
                self.offset = end;
                self.head = self.buf.len();
                return Ok(true);
            }
            self.read_more()?;
        }
    }
}

/// `line`, which starts at stream offset `offset`, without the byte order mark a stream may start
/// with: it marks the file's encoding and is no part of its first record (jq and Python's `json`
/// skip it too; left in, every JSON reader of sluice's refused the record).
fn without_bom(line: &[u8], offset: u64) -> &[u8] {
    if offset == 0 { line.strip_prefix(sluice_engine::record::UTF8_BOM).unwrap_or(line) } else { line }
}

/// The key a unit is saved under: its file, range, the file's size and its modification time (a
/// changed file starts over, even one replaced by another of the same size between a stopped run
/// and the next); and the key runs before 2026-12-07 saved it under (no time), still read so that a
/// run stopped before an upgrade resumes after it.
fn unit_keys(unit: &WorkUnit) -> (String, String) {
    let metadata = std::fs::metadata(&unit.path).ok();
    let size = metadata.as_ref().map_or(0, |m| m.len());
    let end = unit.end.map_or("end".to_string(), |e| e.to_string());
    let legacy = format!("{}@{}-{end}#{size}", unit.path.display(), unit.start);
    let modified = metadata
        .and_then(|m| m.modified().ok())
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |since| since.as_nanos());
    (format!("{legacy}~{modified}"), legacy)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn read_range(data: &[u8], start: u64, end: Option<u64>) -> Vec<Vec<u8>> {
        let begin = start.saturating_sub(1) as usize;
        let mut lines = LineReader::new(&data[begin..], start.saturating_sub(1), end);
        if start > 0 {
            lines.skip_partial_line().unwrap_or_default();
        } else {
            lines.offset = 0;
        }
        let mut batch = RecordBatch::default();
        while !lines.fill(&mut batch, 7).unwrap_or(true) {}
        batch.iter().map(<[u8]>::to_vec).collect()
    }

    proptest! {
        /// Any cut of a file into ranges reads every non-empty line exactly once, in order, whether
        /// its lines end with `\n` or `\r\n`.
        #[test]
        fn ranges_read_every_line_once(
            lines in proptest::collection::vec("[a-z]{0,12}", 0..40),
            cuts in proptest::collection::vec(0usize..400, 0..6),
            trailing_newline in any::<bool>(),
            crlf in any::<bool>(),
        ) {
            let end = if crlf { "\r\n" } else { "\n" };
            let mut data = lines.join(end).into_bytes();
            if trailing_newline && !data.is_empty() { data.extend_from_slice(end.as_bytes()); }
            let mut points: Vec<u64> = cuts.into_iter().map(|c| (c.min(data.len())) as u64).collect();
            points.push(0);
            points.sort();
            points.dedup();
            let mut got = Vec::new();
            for (i, &start) in points.iter().enumerate() {
                let end = points.get(i + 1).copied();
                got.extend(read_range(&data, start, end));
            }
            let expected: Vec<Vec<u8>> = lines.iter().filter(|l| !l.is_empty()).map(|l| l.as_bytes().to_vec()).collect();
            prop_assert_eq!(got, expected);
        }
    }

    /// A UTF-8 byte order mark at the start of the stream is not part of the first record, however
    /// the file is cut and whether or not its line ends; the same bytes later on are data.
    #[test]
    fn a_byte_order_mark_at_the_start_is_not_part_of_the_first_record() {
        let data = b"\xEF\xBB\xBF{\"a\":1}\n\xEF\xBB\xBF{\"a\":2}\n";
        for cut in 0..data.len() as u64 {
            let mut got = read_range(data, 0, Some(cut));
            got.extend(read_range(data, cut, None));
            assert_eq!(got, vec![b"{\"a\":1}".to_vec(), b"\xEF\xBB\xBF{\"a\":2}".to_vec()], "cut at {cut}");
        }
        assert_eq!(read_range(b"\xEF\xBB\xBF{}", 0, None), vec![b"{}".to_vec()]);
        assert!(read_range(b"\xEF\xBB\xBF\n", 0, None).is_empty());
        // In a compressed file, at the start of its decompressed bytes.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("windows.ndjson.gz");
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut gz, b"\xEF\xBB\xBF{\"a\":1}\r\n").unwrap();
        std::fs::write(&path, gz.finish().unwrap()).unwrap();
        let units = plan_units(&[path.display().to_string()], 1, MIN_SPLIT_BYTES).unwrap();
        let mut lines = open_unit(&units[0]).unwrap();
        let mut batch = RecordBatch::default();
        while !lines.fill(&mut batch, 1 << 20).unwrap() {}
        assert_eq!(batch.iter().collect::<Vec<_>>(), vec![&b"{\"a\":1}"[..]]);
    }

    /// A file is read by what it holds when its name does not say it: a rotated log gzipped
    /// under a plain name, a ZIP archive (each entry its own lines), framed Snappy; Hadoop's
    /// Snappy by its extension (it has no magic number); a bzip2 file
    /// is refused with its format named when it is opened, never read as text; text is split; a
    /// gzip file's zero padding is not an error.
    #[test]
    fn files_are_read_by_their_content_and_unreadable_formats_are_refused() {
        use sluice_engine::compression::{Compression, compress};
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, bytes: &[u8]| std::fs::write(dir.path().join(name), bytes).unwrap();
        write("app.log.1", &compress(Compression::Gzip, b"{\"g\":1}\n").unwrap());
        write("export.zip", &compress(Compression::Zip, b"{\"z\":1}\n{\"z\":2}").unwrap());
        write("framed.sz", &compress(Compression::Snappy, b"{\"s\":1}\n").unwrap());
        write("hadoop.snappy", &compress(Compression::HadoopSnappy, b"{\"h\":1}\n").unwrap());
        write("old.log.bz2", b"BZh91AY&SY\x00\x01 not text\n");
        // Zero padding after the last member, as gzip -d and Python's gzip read it.
        write("padded.ndjson.gz", &[compress(Compression::Gzip, b"{\"z\":0}\n").unwrap(), vec![0; 512]].concat());
        write("plain.ndjson", b"{\"p\":1}\n");
        let units = plan_units(&[format!("{}/*", dir.path().display())], 1, MIN_SPLIT_BYTES).unwrap();
        let mut read = Vec::new();
        for unit in &units {
            let name = unit.path.file_name().unwrap().to_string_lossy().into_owned();
            match open_unit(unit) {
                Ok(mut lines) => {
                    let mut batch = RecordBatch::default();
                    while !lines.fill(&mut batch, 1 << 20).unwrap() {}
                    read.extend(batch.iter().map(|r| format!("{name}: {}", String::from_utf8_lossy(r))));
                }
                Err(e) => read.push(format!("{name}: {:?} {e}", e.kind())),
            }
        }
        assert_eq!(read.len(), 8, "{read:#?}");
        assert_eq!(read[0], "app.log.1: {\"g\":1}");
        assert_eq!(read[1..3], ["export.zip: {\"z\":1}", "export.zip: {\"z\":2}"]);
        assert_eq!(read[3], "framed.sz: {\"s\":1}");
        assert_eq!(read[4], "hadoop.snappy: {\"h\":1}");
        assert!(read[5].starts_with("old.log.bz2: InvalidData it is bzip2-compressed"), "{}", read[5]);
        assert!(read[5].ends_with("leave it out of `paths`"), "{}", read[5]);
        assert_eq!(read[6], "padded.ndjson.gz: {\"z\":0}");
        assert_eq!(read[7], "plain.ndjson: {\"p\":1}");
        assert_eq!(units.iter().filter(|u| u.compression.is_plain()).count(), 1);
    }

    /// Issue 11, item 4: a file cut while the run reads it does not deliver the half line it
    /// now ends with; the cut is warned about and counted.
    #[test]
    fn a_file_truncated_while_read_does_not_deliver_its_cut_line_and_counts_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log.ndjson");
        std::fs::write(&path, "aaaa\nbbbb\ncccccccc\n").unwrap();
        let source = FileSource::new(vec![path.display().to_string()], MIN_SPLIT_BYTES);
        let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let metrics = Arc::new(PipelineMetrics::new(1, 0));
        let ctx = PrepareContext {
            runtime: runtime.handle().clone(),
            stop: sluice_engine::contract::StopSignal::default(),
            metrics: Arc::clone(&metrics),
            delivered: Arc::default(),
            shared: None,
            meter: sluice_engine::metrics::SourceMeter::new(Arc::clone(&metrics), 0, "in"),
        };
        source.prepare(&ctx).unwrap();
        let mut reader = source.open(&SourceContext::single_process(0, 1)).unwrap();
        // The run planned 19 bytes; the file is cut in its third line before it is read.
        std::fs::OpenOptions::new().write(true).open(&path).unwrap().set_len(13).unwrap();
        let mut batch = RecordBatch::default();
        while reader.read(&mut batch, 1 << 20).unwrap() == ReadStatus::Ready {}
        assert_eq!(batch.iter().collect::<Vec<_>>(), vec![&b"aaaa"[..], b"bbbb"]);
        assert_eq!(metrics.partial_records.load(std::sync::atomic::Ordering::Relaxed), 1);
    }

    #[test]
    fn a_large_file_is_split_across_workers_and_compressed_files_are_not() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let plain = dir.path().join("a.ndjson");
        std::fs::write(&plain, "x\n".repeat(5000)).unwrap_or_else(|e| panic!("{e}"));
        let gz = dir.path().join("b.ndjson.gz");
        std::fs::write(&gz, b"").unwrap_or_else(|e| panic!("{e}"));
        let units = plan_units(&[format!("{}/*", dir.path().display())], 2, 1000).unwrap_or_default();
        let plain_units: Vec<_> = units.iter().filter(|u| u.path == plain).collect();
        assert_eq!(plain_units.len(), 10, "{units:?}");
        assert_eq!(plain_units[0].start, 0);
        assert_eq!(plain_units[9].end, None);
        assert_eq!(units.iter().filter(|u| u.path == gz).count(), 1);
        assert!(plan_units(&[format!("{}/*.none", dir.path().display())], 2, 1000).is_err());
    }

    /// A large file is cut into large ranges first and ever smaller ones as the input runs out, so
    /// workers taking them in order finish within about a MiB of each other; the ranges cover the
    /// file once, in order.
    #[test]
    fn ranges_shrink_towards_the_end_of_the_input() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("big.ndjson");
        // Only the size is planned from: a sparse file.
        std::fs::File::create(&path).unwrap().set_len(200_000_000).unwrap();
        let units = plan_units(&[path.display().to_string()], 2, MIN_SPLIT_BYTES).unwrap();
        let lengths: Vec<u64> = units.iter().map(|u| u.end.unwrap_or(u.file_size) - u.start).collect();
        let mut at = 0;
        for unit in &units {
            assert_eq!(unit.start, at);
            at = unit.end.unwrap_or(unit.file_size);
        }
        assert_eq!(at, 200_000_000);
        assert_eq!(units.last().unwrap().end, None);
        assert!(lengths.windows(2).all(|w| w[0] >= w[1]), "{lengths:?}");
        assert_eq!(lengths[0], MIN_SPLIT_BYTES, "{lengths:?}");
        let tail = lengths[lengths.len() - 3..].iter().max().unwrap();
        assert!(*tail < 2 * TAIL_SPLIT_BYTES, "{lengths:?}");
        assert!(units.len() < 30, "few ranges: {lengths:?}");
        // A `split_mb` below the tail size is the smallest range (but the file's last, its end);
        // a small file stays whole.
        let fine = plan_units(&[path.display().to_string()], 2, 1 << 19).unwrap();
        let fine: Vec<u64> = fine.iter().map(|u| u.end.unwrap_or(u.file_size) - u.start).collect();
        assert!(fine.iter().rev().skip(1).all(|&n| n >= 1 << 19), "{fine:?}");
        assert_eq!(fine[fine.len() - 2], 1 << 19, "{fine:?}");
        let small = dir.path().join("small.ndjson");
        std::fs::File::create(&small).unwrap().set_len(1 << 20).unwrap();
        assert_eq!(plan_units(&[small.display().to_string()], 2, MIN_SPLIT_BYTES).unwrap().len(), 1);
    }

    /// Every line of `reader`'s share, read to the end.
    fn read_all(reader: &mut Box<dyn SourceReader>) -> Vec<Vec<u8>> {
        let mut batch = RecordBatch::default();
        while reader.read(&mut batch, 1 << 20).unwrap_or_else(|e| panic!("{e}")) == ReadStatus::Ready {}
        batch.iter().map(<[u8]>::to_vec).collect()
    }

    /// A process's workers take its ranges as each becomes free (a worker that reads first takes
    /// what the others have not), every line once; in a cluster each process reads only its share;
    /// the source opened again (a new run) deals its ranges again.
    #[test]
    fn the_workers_of_a_process_take_its_ranges_as_they_become_free() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let path = dir.path().join("a.ndjson");
        let lines: Vec<Vec<u8>> = (0..20_000).map(|i| format!("line {i:05}").into_bytes()).collect();
        std::fs::write(&path, lines.iter().flat_map(|l| [l.as_slice(), b"\n"].concat()).collect::<Vec<u8>>())
            .unwrap_or_else(|e| panic!("{e}"));
        let source = FileSource::new(vec![path.display().to_string()], 1000);
        for run in 0..2 {
            let mut first = source.open(&SourceContext::single_process(0, 2)).unwrap_or_else(|e| panic!("{e}"));
            let mut second = source.open(&SourceContext::single_process(1, 2)).unwrap_or_else(|e| panic!("{e}"));
            // The first worker reads before the second asks: it takes every range.
            assert_eq!(read_all(&mut first), lines, "run {run}");
            assert!(read_all(&mut second).is_empty(), "run {run}");
        }
        // Two processes of one worker each: each reads the ranges dealt to its worker, together
        // every line once.
        let mut shares = Vec::new();
        for process in 0..2 {
            let source = FileSource::new(vec![path.display().to_string()], 1000);
            let ctx = SourceContext { worker: process, workers: 2, local_workers: process..process + 1 };
            shares.push(read_all(&mut source.open(&ctx).unwrap_or_else(|e| panic!("{e}"))));
        }
        assert!(
            shares.iter().all(|s| !s.is_empty() && s.len() < lines.len()),
            "{:?}",
            shares.iter().map(Vec::len).collect::<Vec<_>>()
        );
        let mut both = shares.concat();
        both.sort();
        assert_eq!(both, lines);
    }

    /// The file source through the real runtime: a plain file cut into 1 MiB ranges, a gzip file
    /// and a small file, every line exactly once at 1, 2 and 4 workers, a stop ends the run at once
    /// without repeating a line, and a stopped run resumes from its checkpoint.
    #[test]
    fn passes_the_source_conformance_kit() {
        use std::io::Write;

        use sluice_engine::testkit::source::{Check, SourceCase, conformance};

        let dir = tempfile::tempdir().unwrap();
        let line = |file: usize, i: usize| format!(r#"{{"file":{file},"line":{i},"pad":"{}"}}"#, "x".repeat(i % 90));
        let mut expected = Vec::new();
        let plain: String = (0..150_000).map(|i| line(0, i) + "\n").collect();
        std::fs::write(dir.path().join("a.ndjson"), &plain).unwrap();
        expected.extend((0..150_000).map(|i| line(0, i).into_bytes()));
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        for i in 0..60_000 {
            writeln!(gz, "{}", line(1, i)).unwrap();
        }
        std::fs::write(dir.path().join("b.ndjson.gz"), gz.finish().unwrap()).unwrap();
        expected.extend((0..60_000).map(|i| line(1, i).into_bytes()));
        // No newline at the end: the last line is a record all the same.
        std::fs::write(dir.path().join("c.ndjson"), format!("{}\n\n{}", line(2, 0), line(2, 1))).unwrap();
        expected.extend((0..2).map(|i| line(2, i).into_bytes()));
        let table = format!("type = \"file\"\npaths = [\"{}/*.ndjson*\"]\nsplit_mb = 1\n", dir.path().display());
        // The same files and a corrupt one, named first so that it is met before the others.
        std::fs::create_dir(dir.path().join("bad")).unwrap();
        std::fs::write(dir.path().join("bad/0-corrupt.ndjson.gz"), b"\x1f\x8b but not gzip").unwrap();
        let with_corrupt = format!(
            "type = \"file\"\npaths = [\"{}/bad/*.gz\", \"{}/*.ndjson*\"]\nsplit_mb = 1\n",
            dir.path().display(),
            dir.path().display()
        );
        let case = SourceCase::finite(table, expected.clone(), true, &dir.path().join("runs"))
            .with_unreadable_input(with_corrupt, expected);
        let report = conformance(crate::registry(), &case).unwrap_or_else(|e| panic!("{e}"));
        assert!(report.passed.contains(&Check::Resume) && report.skipped.is_empty(), "{report:?}");
        assert!(report.passed.contains(&Check::GivesUpAnUnreadableInput { workers: 1 }), "{report:?}");
    }
}

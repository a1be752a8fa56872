//! `type = "object_store"`: a batch source reading every object under an object-store URL, for
//! reprocessing an archive (an S3 prefix Firehose or sluice wrote) through a pipeline.
//!
//! ```toml
//! [sources.archive]
//! type = "object_store"
//! url = "s3://security-lake/raw/2026/11/"      # any URL the object_store sink takes
//! options = { region = "eu-west-1" }            # as for the sink
//! pattern = "*.gz"                              # optional glob on the key under the URL
//! ```
//!
//! Each line of an object (without its `\n` or `\r\n`) is one record; empty lines are skipped, and so is a byte
//! order mark at its start (the file source's [`LineReader`]); `.gz`, `.zst`, `.snappy` (framed, or
//! Hadoop's framing) and `.zip` (every entry of the archive, in its directory's order, each its own
//! lines: a last line without its newline does not run into the next entry's) objects are
//! decompressed by their extension. The objects are listed once, at start, sorted by key, and shared out among every worker of every process (object i to worker
//! i mod workers); processes of a cluster compare the lists they found before reading
//! ([`Source::input_fingerprint`]).
//!
//! Guarantees: an object is read as a stream (a chunk at a time, never whole in memory; but a ZIP
//! archive, whose directory is at its end: read whole, then decompressed); its
//! progress is checkpointed at the delivered frontier like a file's (the next line's offset, then
//! done), so a batch run that is stopped or dies resumes where its delivered records end and skips
//! the objects it finished; a plain object resumes with a ranged GET. An object's checkpoint is
//! keyed by its key, size and ETag, and every GET checks the answer's ETag against it: an object
//! replaced between runs is read from its start, one replaced during a run is given up, and no
//! object's lines are ever read from another's bytes. Errors name the object
//! (`url/key`), and each object's key is logged as it is started, so where a record came from is
//! never in doubt; an object that cannot be read to its end (corrupt, gone, the connection lost)
//! is given up (what was read of it delivered, its checkpoint left where its delivered records
//! end) and the worker goes on with its next one; the run's outcome names it (exit 1); before
//! that, a failure that may pass (a 5xx, `SlowDown`, a connection lost) is tried again, five
//! tries in a row (`READ_TRIES`), from the next unread line, with a wait doubling from 0.5 s; a
//! try that read 1 MiB (`PROGRESS_BYTES`) before it failed starts the count over, so a large object
//! read over a link that drops now and then is read to its end. A
//! listing that finds nothing stops the run before it starts. Files a `file://` sink is staging
//! inside the folder (under `.sluice-staging/`) are not objects and are skipped.

use std::collections::BTreeMap;
use std::io::Read;
use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use futures::StreamExt;
use futures::stream::BoxStream;
use object_store::path::Path;
use object_store::{GetOptions, GetRange, ObjectStore};
use serde::Deserialize;
use sluice_engine::compression::{Content, MAGIC_BYTES, content_of};
use sluice_engine::config::{ConnectorConfig, Diagnostic, Problems};
use sluice_engine::contract::{PrepareContext, ReadStatus, Source, SourceContext, SourceError, SourceReader};
use sluice_engine::record::RecordBatch;

use super::file::LineReader;
use super::file_checkpoint::{FileCheckpoints, Saved};
use crate::sinks::object_store::{ObjectStoreSink, StoreKeySpans};

/// The source's own keys.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ObjectSourceConfig {
    url: String,
    #[serde(default)]
    options: BTreeMap<String, toml::Value>,
    pattern: Option<String>,
}

/// An object found at start.
#[derive(Debug, Clone)]
struct Listed {
    location: Path,
    size: u64,
    /// The store's version tag of the object as listed (S3's, GCS's and Azure's ETag, a file's
    /// inode, time and size; a WebDAV server's when it gives one).
    e_tag: Option<String>,
}

impl Listed {
    /// The object's checkpoint key: its key, its size and its ETag, so that an object replaced by
    /// another (even of the same size) between a stopped run and the next is read from its start,
    /// not resumed inside someone else's bytes or skipped as done.
    fn checkpoint_key(&self) -> String {
        match &self.e_tag {
            Some(tag) => format!("{}\t{}\t{tag}", self.location, self.size),
            None => self.legacy_checkpoint_key(),
        }
    }

    /// Its key as runs before 2026-12-07 saved it (no ETag): still read, so that a run stopped
    /// before an upgrade resumes after it instead of reading its objects again.
    fn legacy_checkpoint_key(&self) -> String {
        format!("{}\t{}", self.location, self.size)
    }
}

/// What `prepare` found and set up.
struct Prepared {
    objects: Vec<Listed>,
    runtime: tokio::runtime::Handle,
    checkpoints: Arc<FileCheckpoints>,
    /// Where a retried read is written to the error log.
    metrics: Arc<sluice_engine::metrics::PipelineMetrics>,
}

/// A configured object-store source.
pub struct ObjectStoreSource {
    /// Shared with a check that outlives the call ([`Source::check`]).
    listing: Arc<Listing>,
    /// `[sources.<name>]`: the component its error-log lines name.
    name: String,
    checkpoint_dir: std::path::PathBuf,
    prepared: OnceLock<Prepared>,
}

/// What the source lists: the objects under a URL that a pattern matches.
struct Listing {
    store: Arc<dyn ObjectStore>,
    base: Path,
    /// The URL as shown (secrets masked).
    url: String,
    /// The store's error-code prefix (`S3`, `GCS`, …).
    code_prefix: &'static str,
    pattern: Option<glob::Pattern>,
    /// Where the store counts a refused renewal of its `tls.ca`.
    tls_metrics: crate::tls::TlsMetrics,
}

impl std::fmt::Debug for ObjectStoreSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ObjectStoreSource")
            .field("url", &self.listing.url)
            .field("pattern", &self.listing.pattern)
            .finish()
    }
}

/// Builds an object-store source from `[sources.<name>]`.
pub fn configure(mut config: ConnectorConfig) -> Result<Arc<dyn Source>, Problems> {
    let spans = StoreKeySpans::of(&config.table);
    let pattern_span = config.table.value_span("pattern").unwrap_or(spans.url.clone());
    let mut problems = Problems::default();
    let roots = crate::tls::take_store_roots(&mut config.table, &config.base_dir, &mut problems).unwrap_or_default();
    let Some(c) = config.table.deserialize::<ObjectSourceConfig>(&mut problems) else { return Err(problems) };
    let pattern = match &c.pattern {
        Some(p) => problems.take(glob::Pattern::new(p).map(Some).map_err(|e| {
            Diagnostic::new(pattern_span, format!("bad glob `{p}`: {e}")).with_hint("e.g. pattern = \"*.gz\"")
        })),
        None => Some(None),
    };
    let option_problems = ObjectStoreSink::option_problems(&c.url, &c.options);
    for problem in &option_problems {
        problems.push(problem.at_its_key(&spans));
    }
    let store = if option_problems.is_empty() {
        problems.take(
            ObjectStoreSink::from_config_with(&c.url, &c.options, Vec::new(), &roots).map_err(|e| e.at_its_key(&spans)),
        )
    } else {
        None
    };
    let (pattern, store) = problems.finish((|| Some((pattern?, store?)))())?;
    let tls_metrics = store.tls_metrics();
    let (store, base, url, code_prefix) = store.into_store();
    Ok(Arc::new(ObjectStoreSource {
        listing: Arc::new(Listing { store, base, url, code_prefix, pattern, tls_metrics }),
        checkpoint_dir: config.data_dir.join(&config.name),
        name: config.name,
        prepared: OnceLock::new(),
    }))
}

impl Listing {
    /// The key of `location` under the source's URL (what `pattern` matches and errors show).
    fn key_of<'a>(&self, location: &'a Path) -> &'a str {
        let full = location.as_ref();
        let base = self.base.as_ref();
        if base.is_empty() { full } else { full.strip_prefix(base).map_or(full, |k| k.trim_start_matches('/')) }
    }

    /// Lists every object under the URL that the pattern matches, sorted by key; none is an error
    /// (a run would have nothing to read).
    async fn list(&self) -> Result<Vec<Listed>, SourceError> {
        let prefix = (!self.base.as_ref().is_empty()).then_some(&self.base);
        let mut listing = self.store.list(prefix);
        let mut found = Vec::new();
        while let Some(meta) = listing.next().await {
            let meta = meta.map_err(|e| SourceError::Refused {
                code: crate::sinks::object_store::store_answer_code(self.code_prefix, &e),
                message: format!("cannot list {}: {}", self.url, sluice_engine::redact::error(&e)),
            })?;
            let key = self.key_of(&meta.location);
            // What a `file://` sink is writing into this folder (staged inside it) is no object yet.
            let staged = meta.location.parts().any(|part| part.as_ref() == crate::sinks::staged_files::STAGING_FOLDER);
            if !staged && self.pattern.as_ref().is_none_or(|p| p.matches(key)) {
                found.push(Listed { location: meta.location, size: meta.size, e_tag: meta.e_tag });
            }
        }
        if found.is_empty() {
            let matching = self.pattern.as_ref().map_or(String::new(), |p| format!(" matching {p}"));
            return Err(SourceError::Setup(format!("no object under {}{matching}", self.url)));
        }
        found.sort_by(|a, b| a.location.cmp(&b.location));
        Ok(found)
    }
}

impl ObjectStoreSource {
    fn prepared(&self) -> Result<&Prepared, SourceError> {
        self.prepared.get().ok_or_else(|| SourceError::Setup("the object_store source was not prepared".into()))
    }
}

impl Source for ObjectStoreSource {
    fn describe(&self) -> String {
        match &self.listing.pattern {
            Some(p) => format!("object_store: {} (keys matching {p})", self.listing.url),
            None => format!("object_store: {}", self.listing.url),
        }
    }

    fn is_finite(&self) -> bool {
        true
    }

    /// The objects listed as [`Source::prepare`] lists them (credentials, bucket, at least one
    /// object), read by nothing.
    fn check(&self) -> Option<futures::future::BoxFuture<'static, Result<(), SourceError>>> {
        let listing = Arc::clone(&self.listing);
        Some(Box::pin(async move { listing.list().await.map(|_| ()) }))
    }

    /// Lists the objects (once), and starts following the delivered frontier for checkpoints.
    fn prepare(&self, ctx: &PrepareContext) -> Result<(), SourceError> {
        self.listing.tls_metrics.meter_with(ctx.meter.clone());
        let objects = ctx.runtime.block_on(self.listing.list())?;
        tracing::info!(url = %self.listing.url, objects = objects.len(), "objects listed");
        let checkpoints = FileCheckpoints::load(self.checkpoint_dir.clone());
        checkpoints.follow(Arc::clone(&ctx.delivered));
        let metrics = Arc::clone(&ctx.metrics);
        let _ = self.prepared.set(Prepared { objects, runtime: ctx.runtime.clone(), checkpoints, metrics });
        Ok(())
    }

    fn finish(&self, stopped: bool) {
        if let Some(p) = self.prepared.get() {
            p.checkpoints.finish(stopped);
        }
    }

    fn input_fingerprint(&self) -> u64 {
        let Some(p) = self.prepared.get() else { return 0 };
        let listed: String = p.objects.iter().map(|o| format!("{}\t{}\n", o.location, o.size)).collect();
        sluice_engine::contract::fingerprint(listed.as_bytes())
    }

    fn open(&self, ctx: &SourceContext) -> Result<Box<dyn SourceReader>, SourceError> {
        let p = self.prepared()?;
        let mine: Vec<Listed> = p.objects.iter().skip(ctx.worker).step_by(ctx.workers.max(1)).cloned().collect();
        Ok(Box::new(ObjectReader {
            store: Arc::clone(&self.listing.store),
            name: self.name.clone(),
            code_prefix: self.listing.code_prefix,
            metrics: Arc::clone(&p.metrics),
            url: self.listing.url.clone(),
            base: self.listing.base.clone(),
            runtime: p.runtime.clone(),
            checkpoints: Arc::clone(&p.checkpoints),
            objects: mine.into_iter(),
            current: None,
            retry: None,
            epoch: 0,
        }))
    }
}

/// An object's bytes as a blocking reader: each chunk of the GET's body stream is awaited on the
/// run's runtime from the worker's thread (a timely worker is not a runtime thread).
struct StreamReader {
    chunks: BoxStream<'static, object_store::Result<Bytes>>,
    runtime: tokio::runtime::Handle,
    chunk: Bytes,
}

impl Read for StreamReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.chunk.is_empty() {
            match self.runtime.block_on(self.chunks.next()) {
                Some(Ok(chunk)) => self.chunk = chunk,
                Some(Err(e)) => return Err(std::io::Error::other(e)),
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.chunk.len());
        buf[..n].copy_from_slice(&self.chunk[..n]);
        self.chunk = self.chunk.slice(n..);
        Ok(n)
    }
}

/// The object being read.
struct CurrentObject {
    object: Listed,
    /// Its checkpoint key.
    key: String,
    lines: LineReader<Box<dyn Read>>,
    /// The tries in a row it failed.
    failed: u32,
    /// The offset this try began at.
    began: u64,
}

/// Tries at reading an object that fails for a reason that may pass (a 5xx or `SlowDown`, a
/// connection lost mid-object) before it is given up; each opens it again at its next unread line.
const READ_TRIES: u32 = 5;
/// The wait before the second try; it doubles (0.5, 1, 2, 4 s).
const FIRST_RETRY_WAIT: std::time::Duration = std::time::Duration::from_millis(500);
/// What a try must read before it fails for its failure to start the count of tries over: it got
/// on with the object (a store failing at once or within a few lines each time is given up).
const PROGRESS_BYTES: u64 = 1 << 20;

/// An object to open again, at `offset`, once `at` has come.
struct Retry {
    object: Listed,
    key: String,
    offset: u64,
    failed: u32,
    at: std::time::Instant,
}

/// The store's error behind a read error, when it may pass if tried again: the store's own
/// answer (a 5xx, a lost connection, throttling) but not a refusal (missing, denied), nor what the
/// bytes are (a corrupt `.gz` reads the same however often it is fetched).
fn passing_store_error(e: &std::io::Error) -> Option<&object_store::Error> {
    e.get_ref()
        .and_then(|inner| inner.downcast_ref::<object_store::Error>())
        .filter(|store| !crate::sinks::object_store::is_permanent(store))
}

/// A GET of `object` as it was listed: when the answer's ETag is another than the listing's, the
/// object was replaced since and is refused, its bytes never mixed with the listed object's (a
/// retry resuming mid-way, a checkpoint's offset), with an error saying what happened. (Compared
/// here rather than sent as `If-Match`: stores write the same tag with quotes in one place and
/// without in another, as Azure's listing does, and a server would refuse a tag it wrote.)
fn get_as_listed(
    runtime: &tokio::runtime::Handle,
    store: &dyn ObjectStore,
    object: &Listed,
    options: GetOptions,
) -> std::io::Result<object_store::GetResult> {
    let got = runtime.block_on(store.get_opts(&object.location, options)).map_err(std::io::Error::other)?;
    if let (Some(listed), Some(now)) = (&object.e_tag, &got.meta.e_tag)
        && bare_tag(listed) != bare_tag(now)
    {
        return Err(std::io::Error::other(format!(
            "it changed after it was listed (its ETag was {listed}, is {now}); the next run reads it as it is then"
        )));
    }
    Ok(got)
}

/// An ETag without its weak mark and quotes (`W/"abc"` and `abc` are one tag).
fn bare_tag(tag: &str) -> &str {
    let tag = tag.strip_prefix("W/").unwrap_or(tag);
    tag.strip_prefix('"').and_then(|t| t.strip_suffix('"')).unwrap_or(tag)
}

/// One worker's share of the objects.
struct ObjectReader {
    store: Arc<dyn ObjectStore>,
    /// The source's name, the store's error-code prefix and the run's counters: a retried read
    /// is a `WARN` line of the error log, as a retried delivery is.
    name: String,
    code_prefix: &'static str,
    metrics: Arc<sluice_engine::metrics::PipelineMetrics>,
    url: String,
    base: Path,
    runtime: tokio::runtime::Handle,
    checkpoints: Arc<FileCheckpoints>,
    objects: std::vec::IntoIter<Listed>,
    current: Option<CurrentObject>,
    retry: Option<Retry>,
    epoch: u64,
}

impl ObjectReader {
    fn shown(&self, location: &Path) -> String {
        let key = location.as_ref().strip_prefix(self.base.as_ref()).unwrap_or(location.as_ref());
        format!("{}/{}", self.url.trim_end_matches('/'), key.trim_start_matches('/'))
    }

    /// After a failed try at `retry`'s object: another try later when the error may pass and
    /// tries are left (what the batch holds goes on meanwhile); else the object is given up, the
    /// others read on, and the checkpoint is kept for the next run to read it again.
    fn failed(&mut self, mut retry: Retry, e: std::io::Error) -> Result<ReadStatus, SourceError> {
        retry.failed += 1;
        let shown = self.shown(&retry.object.location);
        if retry.failed < READ_TRIES
            && let Some(store_error) = passing_store_error(&e)
        {
            let wait = FIRST_RETRY_WAIT * 2u32.pow(retry.failed - 1);
            let code = crate::sinks::object_store::store_answer_code(self.code_prefix, store_error);
            self.metrics.report_error(sluice_engine::error_log::ErrorEvent {
                level: sluice_engine::error_log::Level::Warn,
                component: &self.name,
                error_code: &code,
                message: &format!(
                    "reading the object failed; trying again in {} ms from offset {}: {e}",
                    wait.as_millis(),
                    retry.offset
                ),
                attempts: Some(retry.failed),
                key: Some(&shown),
            });
            retry.at = std::time::Instant::now() + wait;
            self.retry = Some(retry);
            return Ok(ReadStatus::Pending(wait));
        }
        self.checkpoints.give_up();
        let tries = if retry.failed > 1 { format!(" ({} tries)", retry.failed) } else { String::new() };
        Err(SourceError::InputFailed { context: format!("reading object {shown}{tries}"), source: e })
    }

    /// Opens `object` at stream offset `offset` (a line start from a checkpoint, or 0): a plain
    /// object with a ranged GET, a compressed one decompressed from its start and skipped forward.
    fn open(&self, object: &Listed, offset: u64) -> std::io::Result<LineReader<Box<dyn Read>>> {
        let named = Content::by_extension(object.location.as_ref());
        // A key that says nothing is told by its first bytes: read with the object when it is
        // read from its start, asked for on their own before a plain object is resumed mid-way
        // (a Firehose object whose `file_extension` replaced `.gz`, a `.bz2`).
        let mut content = named.unwrap_or(Content::Plain);
        if named.is_none() && offset > 0 {
            let head = GetOptions { range: Some(GetRange::Bounded(0..MAGIC_BYTES as u64)), ..GetOptions::default() };
            let got = get_as_listed(&self.runtime, &*self.store, object, head)?;
            content = content_of(&self.runtime.block_on(got.bytes()).map_err(std::io::Error::other)?);
        }
        let range = (content.is_plain() && offset > 0).then_some(GetRange::Offset(offset));
        let got = get_as_listed(&self.runtime, &*self.store, object, GetOptions { range, ..GetOptions::default() })?;
        let body = StreamReader { chunks: got.into_stream(), runtime: self.runtime.clone(), chunk: Bytes::new() };
        let mut buffered = std::io::BufReader::with_capacity(1 << 20, body);
        if named.is_none() && offset == 0 {
            content = content_of(std::io::BufRead::fill_buf(&mut buffered)?);
        }
        let mut reader = content.text_reader(buffered, "leave it out with `pattern`")?;
        if !content.is_plain() && offset > 0 {
            std::io::copy(&mut (&mut reader).take(offset), &mut std::io::sink())?;
        }
        Ok(LineReader::new(reader, offset, None))
    }
}

impl SourceReader for ObjectReader {
    fn set_epoch(&mut self, epoch: u64) {
        self.epoch = epoch;
    }

    fn read(&mut self, batch: &mut RecordBatch, max_bytes: usize) -> Result<ReadStatus, SourceError> {
        loop {
            if self.current.is_none() {
                let (object, key, offset, failed) = match self.retry.take() {
                    Some(retry) => {
                        let now = std::time::Instant::now();
                        if retry.at > now {
                            let wait = retry.at - now;
                            self.retry = Some(retry);
                            return Ok(ReadStatus::Pending(wait));
                        }
                        (retry.object, retry.key, retry.offset, retry.failed)
                    }
                    None => {
                        let Some(object) = self.objects.next() else {
                            return Ok(ReadStatus::Finished);
                        };
                        let key = object.checkpoint_key();
                        let saved = self
                            .checkpoints
                            .saved(&key)
                            .or_else(|| self.checkpoints.saved(&object.legacy_checkpoint_key()));
                        let offset = match saved {
                            Some(Saved::Done) => continue,
                            Some(Saved::Offset(offset)) => offset,
                            None => 0,
                        };
                        (object, key, offset, 0)
                    }
                };
                tracing::info!(object = %self.shown(&object.location), offset, "reading");
                match self.open(&object, offset) {
                    Ok(lines) => self.current = Some(CurrentObject { object, key, lines, failed, began: offset }),
                    Err(e) => {
                        return self.failed(Retry { object, key, offset, failed, at: std::time::Instant::now() }, e);
                    }
                }
            }
            let Some(CurrentObject { key, lines, .. }) = self.current.as_mut() else { continue };
            let finished = match lines.fill(batch, max_bytes) {
                Ok(finished) => finished,
                Err(e) => {
                    let Some(CurrentObject { object, key, lines, failed, began }) = self.current.take() else {
                        continue;
                    };
                    // Again from the line after the last one taken into the batch.
                    let offset = lines.offset();
                    let failed = if offset.saturating_sub(began) >= PROGRESS_BYTES { 0 } else { failed };
                    return self.failed(Retry { object, key, offset, failed, at: std::time::Instant::now() }, e);
                }
            };
            self.checkpoints.read(key, self.epoch, lines.offset(), finished);
            if finished {
                self.current = None;
            }
            if batch.byte_len() >= max_bytes || !batch.is_empty() && finished {
                return Ok(ReadStatus::Ready);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_content_follows_the_extension() {
        use sluice_engine::compression::Compression;
        let compressed = |c| Some(Content::Compressed(c));
        assert_eq!(Content::by_extension("a/b.ndjson.gz"), compressed(Compression::Gzip));
        assert_eq!(Content::by_extension("b.zst"), compressed(Compression::Zstd));
        assert_eq!(Content::by_extension("b.snappy"), compressed(Compression::Snappy));
        assert_eq!(Content::by_extension("b.zip"), compressed(Compression::Zip));
        assert_eq!(Content::by_extension("b.ndjson"), None);
        assert_eq!(Content::by_extension("noext"), None);
        let refused = content_of(b"BZh91AY&SY").text_reader(&b""[..], "leave it out with `pattern`").err();
        assert!(refused.is_some_and(|e| e.to_string().contains("bzip2-compressed")));
    }

    /// An object replaced after it was listed is refused by its GET (its ETag another), with an
    /// error saying so, rather than read (a retry or a resumed run would mix two objects' bytes); the
    /// same object listed again is read.
    #[test]
    fn an_object_replaced_after_it_was_listed_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.ndjson"), "{\"a\":1}\n").unwrap();
        let store = object_store::local::LocalFileSystem::new_with_prefix(dir.path()).unwrap();
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let list = || -> Listed {
            let meta = runtime.block_on(object_store::ObjectStoreExt::head(&store, &Path::from("a.ndjson"))).unwrap();
            Listed { location: meta.location, size: meta.size, e_tag: meta.e_tag }
        };
        let listed = list();
        assert!(listed.e_tag.is_some() && listed.checkpoint_key() != listed.legacy_checkpoint_key());
        let got = get_as_listed(runtime.handle(), &store, &listed, GetOptions::default());
        assert!(got.is_ok(), "{:?}", got.err());
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::write(dir.path().join("a.ndjson"), "{\"b\":2}\n").unwrap();
        let refused = get_as_listed(runtime.handle(), &store, &listed, GetOptions::default()).err();
        assert!(refused.is_some_and(|e| e.to_string().starts_with("it changed after it was listed")));
        let again = list();
        assert_eq!(again.size, listed.size);
        assert_ne!(again.checkpoint_key(), listed.checkpoint_key(), "the same size, another object");
        assert!(get_as_listed(runtime.handle(), &store, &again, GetOptions::default()).is_ok());
        // One tag, written as each store writes it.
        assert_eq!([bare_tag("\"0x8D\""), bare_tag("0x8D"), bare_tag("W/\"0x8D\"")], ["0x8D"; 3]);
    }

    /// The object_store source through the real runtime (a `file://` store): plain, gzip (one of
    /// them under a plain name) and zstd objects, every line exactly once at 1, 2 and 4 workers, a stop ends the run at once without
    /// repeating a line, a stopped run resumes from its checkpoint, and a corrupt object among
    /// them is given up and named while every other object is read.
    #[test]
    fn passes_the_source_conformance_kit() {
        use std::io::Write;

        use sluice_engine::testkit::source::{Check, SourceCase, conformance};

        let dir = tempfile::tempdir().unwrap();
        let store = dir.path().join("store");
        std::fs::create_dir(&store).unwrap();
        let line =
            |object: usize, i: usize| format!(r#"{{"object":{object},"line":{i},"pad":"{}"}}"#, "x".repeat(i % 90));
        let mut expected = Vec::new();
        for object in 0..6 {
            let lines: String = (0..25_000).map(|i| line(object, i) + "\n").collect();
            let body = match object % 3 {
                0 => lines.into_bytes(),
                1 => {
                    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
                    gz.write_all(lines.as_bytes()).unwrap();
                    gz.finish().unwrap()
                }
                _ => zstd::encode_all(lines.as_bytes(), 1).unwrap(),
            };
            // One gzip object is named as if a Firehose `file_extension` replaced `.gz`: told by
            // its first bytes (and by a ranged GET of them when a run resumes within it).
            let extension = if object == 4 { "json" } else { ["ndjson", "ndjson.gz", "ndjson.zst"][object % 3] };
            std::fs::write(store.join(format!("log-{object}.{extension}")), body).unwrap();
            expected.extend((0..25_000).map(|i| line(object, i).into_bytes()));
        }
        // Listed first, so that a worker meets it before its other objects.
        std::fs::write(store.join("0-corrupt.ndjson.gz"), b"\x1f\x8b but not gzip").unwrap();
        let table = |pattern: &str| {
            format!("type = \"object_store\"\nurl = \"file://{}\"\npattern = \"{pattern}\"\n", store.display())
        };
        let case = SourceCase::finite(table("log-*"), expected.clone(), true, &dir.path().join("runs"))
            .with_unreadable_input(table("*"), expected);
        let report = conformance(crate::registry(), &case).unwrap_or_else(|e| panic!("{e}"));
        assert!(report.passed.contains(&Check::Resume) && report.skipped.is_empty(), "{report:?}");
        assert!(report.passed.contains(&Check::GivesUpAnUnreadableInput { workers: 4 }), "{report:?}");
    }
}

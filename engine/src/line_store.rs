//! Lines stored as objects (`[pipeline] audit_log`, `error_log`): buffered by size and time,
//! stored through the `object_store` sink for a URL, or written to stderr.
//!
//! Guarantees: a line is appended to a spool file under the pipeline's data folder before
//! [`LineStore::write`] returns, so a process kill loses no line written; a clean stop
//! ([`LineStore::close`]) stores every line before the run ends; a store that refuses keeps the
//! lines on disk (`sending-*.jsonl`) and they are stored, first, by the next start. When the spool
//! cannot be written (a full disk), the lines it lacks are kept in memory and stored from there
//! (put back in front, in order, when the store refuses them): the torn spool is never sent in
//! their place (only a kill before they are stored loses them). Objects are
//! `YYYY/MM/DD/HH/<pipeline>-<kind>-<YYYY-MM-DD-HH-MM-SS>-<uuid>.jsonl` under the URL.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::future::BoxFuture;

/// Where objects of lines are stored: the config wraps the `object_store` sink for the URL (so
/// this module needs nothing of the connector contract).
pub trait LineSink: Send + Sync {
    /// Checks the store before the run (credentials, folders); why not, as text.
    fn prepare(&self) -> BoxFuture<'static, Result<(), String>>;
    /// Asks the store what [`Self::prepare`] asks, changing nothing ([`Sink::check`]).
    ///
    /// [`Sink::check`]: crate::contract::Sink::check
    fn check(&self) -> BoxFuture<'static, Result<(), String>> {
        Box::pin(async { Ok(()) })
    }
    /// Stores `body` (JSON lines) as the object `key`; why not, as text.
    fn put(&self, key: String, body: Bytes) -> BoxFuture<'static, Result<(), String>>;
    /// Where, for messages (secrets masked).
    fn describe(&self) -> String;
    /// Tidies what `prepare` made for the run alone, once every line is stored ([`Sink::finish`]).
    ///
    /// [`Sink::finish`]: crate::contract::Sink::finish
    fn finish(&self) -> BoxFuture<'static, ()> {
        Box::pin(async {})
    }
}

/// Where lines go.
#[derive(Clone)]
pub enum LineTarget {
    /// One line at a time to stderr.
    Stderr,
    /// Objects through a store.
    Store(Arc<dyn LineSink>),
}

impl std::fmt::Debug for LineTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LineTarget::Stderr => f.write_str("stderr"),
            LineTarget::Store(sink) => f.write_str(&sink.describe()),
        }
    }
}

/// `[pipeline] audit_log` or `error_log` as resolved.
#[derive(Debug, Clone)]
pub struct LinePlan {
    /// Where lines go.
    pub target: LineTarget,
    /// An object is stored once this many bytes are buffered…
    pub size_bytes: usize,
    /// …or its oldest line is this old.
    pub interval: Duration,
}

#[derive(Debug, Default)]
struct Pending {
    /// Lines not yet handed to the store, in order.
    lines: Vec<u8>,
    /// When the first of them was recorded.
    since: Option<Instant>,
    /// The spool file they are also in.
    spool: Option<std::fs::File>,
    /// Some of `lines` are not whole in the spool (a write failed, or there was no spool): the
    /// spool is not sent for them.
    torn: bool,
    closing: bool,
}

/// Lines waiting to be stored: a file of them, or (when no file could be written) their bytes.
#[derive(Debug)]
enum Waiting {
    File(PathBuf),
    Lines(Vec<u8>),
}

/// A pipeline's lines of one kind (`audit`, `errors`).
#[derive(Debug)]
pub struct LineStore {
    pipeline: String,
    kind: &'static str,
    plan: LinePlan,
    /// `<data_dir>/<kind>`: the spool and lines waiting to be stored.
    dir: PathBuf,
    pending: Mutex<Pending>,
    wake: Condvar,
    flusher: Mutex<Option<std::thread::JoinHandle<()>>>,
    /// Lines written.
    pub lines: AtomicU64,
    /// Objects a store refused at least once.
    pub failures: AtomicU64,
}

/// Why the store could not start.
#[derive(Debug, thiserror::Error)]
#[error("{kind} log in {dir}: {source}")]
pub struct LineStoreError {
    kind: &'static str,
    dir: String,
    source: std::io::Error,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

const SPOOL: &str = "spool.jsonl";

impl LineStore {
    /// Starts the `kind` lines of `pipeline` with their spool in `data_dir/<kind>`; lines an
    /// earlier run left there are stored first.
    pub fn start(
        pipeline: &str,
        kind: &'static str,
        plan: LinePlan,
        data_dir: &Path,
    ) -> Result<Arc<LineStore>, LineStoreError> {
        let dir = data_dir.join(kind);
        let shown = dir.display().to_string();
        let io = |source| LineStoreError { kind, dir: shown.clone(), source };
        std::fs::create_dir_all(&dir).map_err(io)?;
        // What a killed run spooled is sent as it is (it was never handed to the store).
        let spool_path = dir.join(SPOOL);
        if std::fs::metadata(&spool_path).is_ok_and(|m| m.len() > 0) {
            let leftover = dir.join(format!("sending-{}.jsonl", uuid::Uuid::new_v4()));
            std::fs::rename(&spool_path, leftover).map_err(io)?;
        }
        let spool = match plan.target {
            LineTarget::Stderr => None,
            LineTarget::Store(_) => {
                Some(std::fs::OpenOptions::new().create(true).append(true).open(&spool_path).map_err(io)?)
            }
        };
        let trail = Arc::new(LineStore {
            pipeline: pipeline.to_string(),
            kind,
            plan,
            dir,
            pending: Mutex::new(Pending { spool, ..Pending::default() }),
            wake: Condvar::new(),
            flusher: Mutex::new(None),
            lines: AtomicU64::new(0),
            failures: AtomicU64::new(0),
        });
        if matches!(trail.plan.target, LineTarget::Store(_)) {
            let flusher = Arc::clone(&trail);
            let handle = std::thread::Builder::new()
                .name(format!("sluice-{kind}"))
                .spawn(move || flusher.flush_until_closed())
                .map_err(io)?;
            *lock(&trail.flusher) = Some(handle);
        }
        Ok(trail)
    }

    /// Writes `line` (one JSON line, its `\n` included; in the spool before this returns).
    pub fn write(&self, line: &[u8]) {
        self.lines.fetch_add(1, Relaxed);
        if matches!(self.plan.target, LineTarget::Stderr) {
            let _ = std::io::stderr().lock().write_all(line);
            return;
        }
        let mut pending = lock(&self.pending);
        let spooled = match pending.spool.as_mut() {
            Some(spool) => spool.write_all(line),
            None => Err(std::io::Error::other("no spool file is open")),
        };
        if let Err(e) = spooled {
            if !pending.torn {
                tracing::error!(kind = self.kind, error = %e, "cannot write the spool; lines are kept in memory until stored");
            }
            pending.torn = true;
        }
        pending.lines.extend_from_slice(line);
        pending.since.get_or_insert_with(Instant::now);
        if pending.lines.len() >= self.plan.size_bytes {
            self.wake.notify_all();
        }
    }

    /// Stores every line recorded so far and stops the flusher (a clean stop).
    pub fn close(&self) {
        lock(&self.pending).closing = true;
        self.wake.notify_all();
        if let Some(handle) = lock(&self.flusher).take() {
            let _ = handle.join();
        }
    }

    /// Hands the pending lines over: the spool becomes a `sending-*` file (kept until stored); a
    /// torn spool is dropped and the lines written to that file from memory instead, or, when no
    /// file can be written, handed over as they are.
    fn take_pending(&self, pending: &mut Pending) -> Option<Waiting> {
        if pending.lines.is_empty() {
            return None;
        }
        let sending = self.dir.join(format!("sending-{}.jsonl", uuid::Uuid::new_v4()));
        let spool = self.dir.join(SPOOL);
        pending.spool = None;
        let renamed = !pending.torn && std::fs::rename(&spool, &sending).is_ok();
        let taken = if renamed {
            Waiting::File(sending)
        } else {
            // The lines since the last hand-over are all in memory; the spool holds a part of them.
            let _ = std::fs::remove_file(&spool);
            match std::fs::write(&sending, &pending.lines) {
                Ok(()) => Waiting::File(sending),
                Err(e) => {
                    let _ = std::fs::remove_file(&sending);
                    tracing::error!(kind = self.kind, error = %e, "cannot write the pending lines aside; storing them from memory");
                    Waiting::Lines(std::mem::take(&mut pending.lines))
                }
            }
        };
        match std::fs::OpenOptions::new().create(true).append(true).open(&spool) {
            Ok(file) => pending.spool = Some(file),
            Err(e) => {
                tracing::error!(kind = self.kind, error = %e, "cannot open a new spool; lines are kept in memory until stored")
            }
        }
        pending.lines.clear();
        pending.since = None;
        pending.torn = false;
        Some(taken)
    }

    /// Puts lines a store refused, which no file holds, back before the pending ones (to be
    /// stored first, and written to a file at the next hand-over if one can be).
    fn requeue(&self, lines: Vec<u8>) {
        let mut pending = lock(&self.pending);
        let newer = std::mem::replace(&mut pending.lines, lines);
        pending.lines.extend_from_slice(&newer);
        pending.since.get_or_insert_with(Instant::now);
        pending.torn = true;
    }

    fn flush_until_closed(self: Arc<Self>) {
        let Ok(runtime) = tokio::runtime::Builder::new_current_thread().enable_all().build() else {
            tracing::error!(kind = self.kind, "cannot start the writer; lines stay in its spool");
            return;
        };
        let LineTarget::Store(sink) = self.plan.target.clone() else { return };
        loop {
            // Earlier runs' lines and lines a refusal left, oldest first.
            let mut files: Vec<PathBuf> = std::fs::read_dir(&self.dir)
                .into_iter()
                .flatten()
                .flatten()
                .map(|e| e.path())
                .filter(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("sending-")))
                .collect();
            files.sort_by_key(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok());
            let mut waiting: Vec<Waiting> = files.into_iter().map(Waiting::File).collect();
            let closing = {
                let mut pending = lock(&self.pending);
                if waiting.is_empty() && !pending.closing {
                    let full = |p: &Pending| p.lines.len() >= self.plan.size_bytes;
                    let due = |p: &Pending| p.since.is_some_and(|s| s.elapsed() >= self.plan.interval);
                    while !pending.closing && !full(&pending) && !due(&pending) {
                        let wait = pending
                            .since
                            .map_or(self.plan.interval, |s| self.plan.interval.saturating_sub(s.elapsed()));
                        pending = self
                            .wake
                            .wait_timeout(pending, wait.max(Duration::from_millis(10)))
                            .map_or_else(|e| e.into_inner().0, |(g, _)| g);
                    }
                }
                let closing = pending.closing;
                waiting.extend(self.take_pending(&mut pending));
                closing
            };
            let mut refused = false;
            for lines in waiting {
                if refused {
                    // (After a refusal only lines held in memory need keeping: files stay.)
                    if let Waiting::Lines(lines) = lines {
                        self.requeue(lines);
                    }
                    continue;
                }
                refused = match lines {
                    Waiting::File(file) => !self.store(&runtime, &sink, &file, closing),
                    Waiting::Lines(lines) => {
                        let stored = self.store_body(&runtime, &sink, lines.clone(), closing);
                        if !stored {
                            self.requeue(lines);
                        }
                        !stored
                    }
                };
            }
            if closing {
                if refused {
                    tracing::error!(kind = self.kind, dir = %self.dir.display(), "the store refused; the lines are kept for the next start (those no file could hold are lost)");
                }
                return;
            }
            if refused {
                // Wait a little before trying again (new lines keep going to the spool).
                let pending = lock(&self.pending);
                let _ = self.wake.wait_timeout(pending, Duration::from_secs(1));
            }
        }
    }

    /// Stores the lines of `file` as one object and deletes it; `false` if the store refused
    /// (after a few attempts when `closing`).
    fn store(&self, runtime: &tokio::runtime::Runtime, sink: &Arc<dyn LineSink>, file: &Path, closing: bool) -> bool {
        let Ok(body) = std::fs::read(file) else { return true };
        let stored = body.is_empty() || self.store_body(runtime, sink, body, closing);
        if stored {
            let _ = std::fs::remove_file(file);
        }
        stored
    }

    /// Stores `body` (lines) as one object; `false` if the store refused (after a few attempts
    /// when `closing`).
    fn store_body(
        &self,
        runtime: &tokio::runtime::Runtime,
        sink: &Arc<dyn LineSink>,
        body: Vec<u8>,
        closing: bool,
    ) -> bool {
        let now = chrono::Utc::now();
        let key = format!(
            "{}/{}-{}-{}-{}.jsonl",
            now.format("%Y/%m/%d/%H"),
            self.pipeline,
            self.kind,
            now.format("%Y-%m-%d-%H-%M-%S"),
            uuid::Uuid::new_v4()
        );
        let body = Bytes::from(body);
        let attempts = if closing { 5 } else { 1 };
        for attempt in 0..attempts {
            match runtime.block_on(sink.put(key.clone(), body.clone())) {
                Ok(()) => return true,
                Err(e) => {
                    self.failures.fetch_add(1, Relaxed);
                    tracing::warn!(kind = self.kind, error = %e, attempt = attempt + 1, "the store refused an object");
                    if attempt + 1 < attempts {
                        std::thread::sleep(Duration::from_millis(200 << attempt));
                    }
                }
            }
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicBool;

    /// A store that refuses while `down` is set and keeps what it takes.
    #[derive(Default)]
    struct Store {
        down: AtomicBool,
        objects: Mutex<Vec<(String, Bytes)>>,
    }

    impl LineSink for Store {
        fn prepare(&self) -> BoxFuture<'static, Result<(), String>> {
            Box::pin(async { Ok(()) })
        }

        fn put(&self, key: String, body: Bytes) -> BoxFuture<'static, Result<(), String>> {
            let refused = self.down.load(Relaxed);
            if !refused {
                lock(&self.objects).push((key, body));
            }
            Box::pin(async move { if refused { Err("503 Slow Down".into()) } else { Ok(()) } })
        }

        fn describe(&self) -> String {
            "test store".into()
        }
    }

    fn plan(store: &Arc<Store>) -> LinePlan {
        LinePlan {
            target: LineTarget::Store(Arc::clone(store) as Arc<dyn LineSink>),
            size_bytes: 1 << 20,
            interval: Duration::from_secs(900),
        }
    }

    /// A store that refuses at the stop: the lines stay on disk, counted, and the next start
    /// stores them first, whole, under the pipeline's key layout.
    #[test]
    fn lines_a_store_refuses_are_kept_and_stored_by_the_next_start() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::default());
        store.down.store(true, Relaxed);
        let lines = LineStore::start("p", "errors", plan(&store), dir.path()).unwrap();
        lines.write(b"{\"n\":1}\n");
        lines.write(b"{\"n\":2}\n");
        lines.close();
        assert!(lock(&store.objects).is_empty());
        assert!(lines.failures.load(Relaxed) >= 1);
        let kept: Vec<_> = std::fs::read_dir(dir.path().join("errors")).unwrap().flatten().collect();
        assert!(kept.iter().any(|e| e.file_name().to_string_lossy().starts_with("sending-")), "{kept:?}");

        store.down.store(false, Relaxed);
        let lines = LineStore::start("p", "errors", plan(&store), dir.path()).unwrap();
        lines.write(b"{\"n\":3}\n");
        lines.close();
        let objects = lock(&store.objects).clone();
        let bodies: Vec<&[u8]> = objects.iter().map(|(_, body)| body.as_ref()).collect();
        assert_eq!(bodies, [&b"{\"n\":1}\n{\"n\":2}\n"[..], &b"{\"n\":3}\n"[..]], "the refused lines first");
        assert!(objects.iter().all(|(key, _)| key.contains("/p-errors-") && key.ends_with(".jsonl")), "{objects:?}");
        let left: Vec<_> = std::fs::read_dir(dir.path().join("errors")).unwrap().flatten().collect();
        assert!(left.iter().all(|e| !e.file_name().to_string_lossy().starts_with("sending-")), "{left:?}");
    }

    /// With no file writable (the folder gone) and the store refusing, the lines held only in
    /// memory are put back before the newer ones at a refusal and stored, whole and in order,
    /// once the store takes them.
    #[test]
    fn lines_only_in_memory_survive_refusals_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::default());
        store.down.store(true, Relaxed);
        let plan = LinePlan { interval: Duration::from_millis(20), ..plan(&store) };
        let lines = LineStore::start("p", "audit", plan, dir.path()).unwrap();
        std::fs::remove_dir_all(dir.path().join("audit")).unwrap();
        lines.write(b"{\"n\":1}\n");
        lines.write(b"{\"n\":2}\n");
        let waited = Instant::now();
        while lines.failures.load(Relaxed) < 1 {
            assert!(waited.elapsed() < Duration::from_secs(10), "the store was never asked");
            std::thread::sleep(Duration::from_millis(10));
        }
        lines.write(b"{\"n\":3}\n");
        store.down.store(false, Relaxed);
        lines.close();
        let stored: Vec<u8> = lock(&store.objects).iter().flat_map(|(_, body)| body.to_vec()).collect();
        assert_eq!(String::from_utf8_lossy(&stored), "{\"n\":1}\n{\"n\":2}\n{\"n\":3}\n");
    }
}

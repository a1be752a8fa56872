//! Folders that survive a crash of the machine, not only of the process: a folder's entry is
//! durable only once the folder holding it is synced, and a file system without a journal (ext4
//! without one, as on the machines sluice is measured on) orders nothing, so a log segment, a
//! checkpoint or an object renamed into a new folder could be lost with the folder after it was
//! counted durable.
//!
//! Guarantees: when [`create_dir_synced`] returns, the folder exists, and it and every ancestor
//! the call made are synced into their holders (an error otherwise); ancestors that were there
//! are synced into theirs where the file system can sync folders (a read-only root cannot, and
//! needs not). A folder is synced once per process (a set lookup after that), remembering at most
//! `MAX_DURABLE_FOLDERS` folders; one remembered and then removed behind the process's back (an
//! empty staging folder another process tidied, [`remove_empty`]) is made again when a folder is
//! made in it. When [`FileSystemSync::sync`] returns, everything written to
//! its file system before the call (files, folders, renames) is durable, the sync shared with the
//! callers that came at about the same time.

use std::collections::HashSet;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// Folders known to be durable: made (or first met) by this process, their holders synced. Forgotten
/// all at once past [`MAX_DURABLE_FOLDERS`] (which only costs syncing their holders again).
static DURABLE_FOLDERS: std::sync::LazyLock<Mutex<HashSet<PathBuf>>> = std::sync::LazyLock::new(Mutex::default);

/// Folders remembered in [`DURABLE_FOLDERS`]: about 1 MiB of paths (logs, checkpoints and journals
/// make a few; past this many, folders met again cost a failed `mkdir` and a sync of their holder
/// once more).
const MAX_DURABLE_FOLDERS: usize = 8192;

/// Syncs the folder `dir` itself: what was created, renamed or removed in it is durable once this
/// returns (a file system without a journal orders nothing without it).
pub fn sync(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Replaces the file at `path` with `bytes` durably: written to `<path>.tmp` beside it, synced,
/// renamed over it, and its folder synced. A reader sees the old contents or the new, never part of
/// them, and after a crash of the machine the new contents once this returns. The folder must exist.
pub fn replace_file(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".tmp");
    let temporary = path.with_file_name(name);
    let mut file = File::create(&temporary)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    std::fs::rename(&temporary, path)?;
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    sync(dir)
}

/// Creates `dir` (relative to the current folder unless absolute) and its missing ancestors, each
/// synced into its holder once per process: when this process makes it, or first meets it
/// (another thread may have made it a moment ago and not synced its holder yet).
pub fn create_dir_synced(dir: &Path) -> std::io::Result<()> {
    synced(&std::path::absolute(dir)?)
}

fn synced(dir: &Path) -> std::io::Result<()> {
    if DURABLE_FOLDERS.lock().unwrap_or_else(std::sync::PoisonError::into_inner).contains(dir) {
        return Ok(());
    }
    // Whether this call made the folder (else it was there, maybe made a moment ago).
    let create = || match std::fs::create_dir(dir) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && dir.is_dir() => Ok(false),
        Err(e) => Err(e),
    };
    let not_found = |e: &std::io::Error| e.kind() == std::io::ErrorKind::NotFound;
    let made = match create() {
        Err(e) if not_found(&e) => {
            let Some(parent) = dir.parent() else { return Err(e) };
            synced(parent)?;
            match create() {
                // The holder was known and is gone (another process tidied an empty staging
                // folder a moment ago, or someone removed it): forgotten and made again, once.
                Err(e) if not_found(&e) => {
                    forget(parent);
                    synced(parent)?;
                    create()?
                }
                other => other?,
            }
        }
        other => other?,
    };
    if let Some(parent) = dir.parent() {
        synced(parent)?;
        // The holder of a folder made here was just written to and must sync; one found there is
        // synced as well as the file system allows (a read-only root such as squashfs cannot
        // sync its folders, and its entries need no sync).
        match sync(parent) {
            Err(e) if made => return Err(e),
            _ => {}
        }
    }
    let mut known = DURABLE_FOLDERS.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    if known.len() >= MAX_DURABLE_FOLDERS {
        known.clear();
    }
    known.insert(dir.to_path_buf());
    Ok(())
}

/// Forgets `dir` and the folders under it as made (they were removed, or may have been).
fn forget(dir: &Path) {
    DURABLE_FOLDERS.lock().unwrap_or_else(std::sync::PoisonError::into_inner).retain(|known| !known.starts_with(dir));
}

/// Removes `dir` when it is empty, then each of its ancestors up to and including `top` while they
/// are empty too, and forgets them as made; stops at the first that holds something (or cannot be
/// removed). For folders made for one run alone (a sink's staging folder and the folders holding
/// it), tidied when the run ends; a folder another writer still uses is never empty, so it stays.
pub fn remove_empty(dir: &Path, top: &Path) {
    let (Ok(dir), Ok(top)) = (std::path::absolute(dir), std::path::absolute(top)) else { return };
    if !dir.starts_with(&top) {
        return;
    }
    let mut folder = dir.as_path();
    loop {
        if std::fs::remove_dir(folder).is_err() {
            return;
        }
        forget(folder);
        match folder.parent() {
            Some(parent) if folder != top => folder = parent,
            _ => return,
        }
    }
}

/// Makes what was written to one file system durable together (group commit): every caller waits
/// for one sync of the whole file system that started after it called, so objects finished at about
/// the same time share one sync instead of paying an `fsync` per file and per folder each (a
/// partitioned sink finishing 1,020 objects in new folders made 4,429 of them).
///
/// On Linux the sync is `syncfs(2)`: it writes back every file, folder entry and block of the file
/// system, and (since Linux 5.8) reports any write-back error the file system met since the
/// previous call. A caller gets an error if any sync that finished after it called failed, so an
/// error about its writes is never taken by another caller. Elsewhere it is `sync(2)`.
/// The cost: a sync also waits for what other programs left unwritten on the same file system.
pub struct FileSystemSync {
    /// A folder on the file system (for messages, and opened for the sync).
    folder: PathBuf,
    /// Runs one sync of the file system.
    sync_once: Box<dyn Fn() -> std::io::Result<()> + Send + Sync>,
    rounds: Mutex<SyncRounds>,
    /// Callers waiting for round `n` wait on `round_finished[n % 2]`: while round `n` runs, callers
    /// need `n` (they came before it started) or `n + 1`, so its end wakes the first kind and one of
    /// the second (to run `n + 1` for all of them), not everyone: a quarter fewer thread switches
    /// for a partitioned sink's 1,020 objects (README: Performance, footnote 18).
    round_finished: [std::sync::Condvar; 2],
}

impl std::fmt::Debug for FileSystemSync {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileSystemSync").field("folder", &self.folder).finish()
    }
}

#[derive(Debug, Default)]
struct SyncRounds {
    /// Syncs started so far (one runs at a time).
    started: u64,
    /// Syncs finished so far.
    finished: u64,
    running: bool,
    /// Callers waiting for a sync to finish, by the parity of the round they wait for.
    waiting: [usize; 2],
    /// How many times a waiting caller woke (each costs a thread switch).
    wakeups: u64,
    /// The latest failed sync: its place in `finished` order, its error's kind and text.
    failure: Option<(u64, std::io::ErrorKind, String)>,
}

impl FileSystemSync {
    /// Syncs the file system holding `folder`, which is opened at each sync (it must exist then).
    pub fn new(folder: &Path) -> Self {
        let opened = folder.to_path_buf();
        Self::with(folder, move || file_system_sync(&File::open(&opened)?))
    }

    /// Syncs by running `sync_once` instead of syncing a file system: tests count syncs and make
    /// them fail with it (a failed `syncfs` cannot be caused on purpose).
    pub fn with(folder: &Path, sync_once: impl Fn() -> std::io::Result<()> + Send + Sync + 'static) -> Self {
        FileSystemSync {
            folder: folder.to_path_buf(),
            sync_once: Box::new(sync_once),
            rounds: Mutex::default(),
            round_finished: [std::sync::Condvar::new(), std::sync::Condvar::new()],
        }
    }

    /// Returns once everything written to the file system before the call is durable.
    pub fn sync(&self) -> std::io::Result<()> {
        let lock = || self.rounds.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut rounds = lock();
        // A sync running now may have started before this caller's writes: the next one counts.
        let needed = rounds.started + 1;
        let finished_before = rounds.finished;
        let parity = (needed % 2) as usize;
        while rounds.finished < needed {
            if rounds.running {
                rounds.waiting[parity] += 1;
                rounds = self.round_finished[parity].wait(rounds).unwrap_or_else(std::sync::PoisonError::into_inner);
                rounds.waiting[parity] -= 1;
                rounds.wakeups += 1;
                continue;
            }
            // Nothing runs, so `finished == started` and the round this caller needs is the next.
            rounds.running = true;
            rounds.started += 1;
            drop(rounds);
            // A panicking sync (a bug) fails its callers instead of leaving `running` set and
            // everyone after it waiting forever.
            let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| (self.sync_once)()))
                .unwrap_or_else(|_| Err(std::io::Error::other("the sync panicked")));
            rounds = lock();
            rounds.running = false;
            rounds.finished += 1;
            if let Err(e) = result {
                rounds.failure = Some((rounds.finished, e.kind(), e.to_string()));
            }
            let (ended, next) = ((rounds.finished % 2) as usize, ((rounds.finished + 1) % 2) as usize);
            self.round_finished[ended].notify_all();
            if rounds.waiting[next] > 0 {
                // One of those who came while it ran starts the next round for all of them.
                self.round_finished[next].notify_one();
            }
        }
        match &rounds.failure {
            Some((at, kind, message)) if *at > finished_before => Err(std::io::Error::new(
                *kind,
                format!("cannot sync the file system of {}: {message}", self.folder.display()),
            )),
            _ => Ok(()),
        }
    }
}

#[cfg(any(target_os = "linux", target_os = "android"))]
fn file_system_sync(handle: &File) -> std::io::Result<()> {
    rustix::fs::syncfs(handle).map_err(std::io::Error::from)
}

#[cfg(not(any(target_os = "linux", target_os = "android")))]
fn file_system_sync(_handle: &File) -> std::io::Result<()> {
    rustix::fs::sync();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A folder known as made and removed behind the process's back (another process tidied it):
    /// a folder made in it is made, the holder made again.
    #[test]
    fn a_known_folder_removed_by_another_is_made_again_for_what_goes_in_it() {
        let dir = tempfile::tempdir().unwrap();
        let holder = dir.path().join("staging").join("out");
        create_dir_synced(&holder).unwrap();
        std::fs::remove_dir(&holder).unwrap();
        std::fs::remove_dir(dir.path().join("staging")).unwrap();
        create_dir_synced(&holder.join("p.sink")).unwrap();
        assert!(holder.join("p.sink").is_dir());
        // And a tidy-up forgets what it removed: made again when asked for.
        remove_empty(&holder.join("p.sink"), &dir.path().join("staging"));
        assert!(!dir.path().join("staging").exists());
        create_dir_synced(&holder).unwrap();
        assert!(holder.is_dir());
    }

    #[test]
    fn folders_are_made_with_their_ancestors_concurrently() {
        let dir = tempfile::tempdir().unwrap();
        std::thread::scope(|s| {
            for t in 0..8 {
                let root = dir.path();
                s.spawn(move || {
                    for i in 0..20 {
                        create_dir_synced(&root.join(format!("a={}/b={}/t{t}-{i}", i % 3, i % 5))).unwrap();
                    }
                });
            }
        });
        assert_eq!(std::fs::read_dir(dir.path().join("a=1/b=1")).unwrap().count(), 8 * 2);
        // Removed behind the process's back: remembered as made (a set lookup, no `mkdir`).
        std::fs::remove_dir_all(dir.path().join("a=1")).unwrap();
        create_dir_synced(&dir.path().join("a=1/b=1")).unwrap();
        assert!(!dir.path().join("a=1").exists());
        // A relative path is made relative to the current folder; `..` is followed.
        let here = std::env::current_dir().unwrap();
        let relative = pathdiff(dir.path(), &here).join("rel/../made");
        create_dir_synced(&relative).unwrap();
        assert!(dir.path().join("made").is_dir());
        // A file where a folder must go is an error.
        std::fs::write(dir.path().join("file"), b"").unwrap();
        assert!(create_dir_synced(&dir.path().join("file/x")).is_err());
    }

    #[test]
    fn a_file_is_replaced_whole_and_its_temporary_does_not_remain() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        replace_file(&path, b"first").unwrap();
        replace_file(&path, b"second").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"second");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1, "only the file, no `.tmp` beside it");
        // Its folder must exist: nothing is made, the error says so.
        let missing = dir.path().join("absent/state.json");
        assert_eq!(replace_file(&missing, b"x").unwrap_err().kind(), std::io::ErrorKind::NotFound);
    }

    /// A sync run by the test: each round counts itself, then waits until the test lets it end
    /// with the result the test sends.
    struct HeldSyncs {
        calls: std::sync::Arc<std::sync::atomic::AtomicUsize>,
        end_round: std::sync::mpsc::Sender<std::io::Result<()>>,
        sync: FileSystemSync,
    }

    fn held_syncs() -> HeldSyncs {
        let (end_round, results) = std::sync::mpsc::channel::<std::io::Result<()>>();
        let results = Mutex::new(results);
        let calls = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = std::sync::Arc::clone(&calls);
        let sync = FileSystemSync::with(Path::new("/lake"), move || {
            counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            results.lock().unwrap().recv().unwrap()
        });
        HeldSyncs { calls, end_round, sync }
    }

    type Caller<'scope> = std::thread::ScopedJoinHandle<'scope, std::io::Result<()>>;

    impl HeldSyncs {
        fn rounds(&self) -> std::sync::MutexGuard<'_, SyncRounds> {
            self.sync.rounds.lock().unwrap()
        }

        /// Waiting callers' wake-ups so far, and the callers waiting now by round parity.
        fn wakeups_and_waiting(&self) -> (u64, [usize; 2]) {
            let rounds = self.rounds();
            (rounds.wakeups, rounds.waiting)
        }

        /// In `scope`: a caller whose sync is running, then `later` callers waiting behind it.
        fn callers<'scope, 'env: 'scope>(
            &'env self,
            scope: &'scope std::thread::Scope<'scope, 'env>,
            later: usize,
        ) -> (Caller<'scope>, Vec<Caller<'scope>>) {
            let first = scope.spawn(|| self.sync.sync());
            wait_until(|| self.rounds().running);
            let waiting: Vec<_> = (0..later).map(|_| scope.spawn(|| self.sync.sync())).collect();
            wait_until(|| self.rounds().waiting.iter().sum::<usize>() == later);
            (first, waiting)
        }
    }

    fn wait_until(condition: impl Fn() -> bool) {
        while !condition() {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    }

    #[test]
    fn callers_arriving_during_a_sync_wait_for_the_next_one_and_share_it() {
        let held = held_syncs();
        std::thread::scope(|s| {
            let (first, later) = held.callers(s, 3);
            held.end_round.send(Ok(())).unwrap();
            first.join().unwrap().unwrap();
            // The sync that was running when they called may have missed their writes: they wait
            // for the next, which one of them runs for all three.
            wait_until(|| held.rounds().running && held.rounds().started == 2);
            assert!(later.iter().all(|caller| !caller.is_finished()));
            held.end_round.send(Ok(())).unwrap();
            for caller in later {
                caller.join().unwrap().unwrap();
            }
        });
        assert_eq!(held.calls.load(std::sync::atomic::Ordering::SeqCst), 2);
    }

    #[test]
    fn the_end_of_a_round_wakes_its_callers_and_one_caller_of_the_next() {
        let held = held_syncs();
        // Wake-ups and waiting callers after each round's end, asserted once every caller has
        // returned (a failed assertion inside the scope would leave its callers waiting forever).
        let seen = std::thread::scope(|s| {
            let (first, for_second) = held.callers(s, 3);
            held.end_round.send(Ok(())).unwrap();
            first.join().unwrap().unwrap();
            // One of the three runs the second round; the other two sleep on.
            wait_until(|| held.rounds().running && held.rounds().started == 2);
            let after_first = held.wakeups_and_waiting();
            let for_third: Vec<_> = (0..2).map(|_| s.spawn(|| held.sync.sync())).collect();
            wait_until(|| held.rounds().waiting[1] == 2);
            held.end_round.send(Ok(())).unwrap();
            // The second round's two return, one of the third's runs it, the other sleeps on.
            wait_until(|| held.rounds().running && held.rounds().started == 3);
            for caller in for_second {
                caller.join().unwrap().unwrap();
            }
            let after_second = held.wakeups_and_waiting();
            held.end_round.send(Ok(())).unwrap();
            for caller in for_third {
                caller.join().unwrap().unwrap();
            }
            [after_first, after_second, held.wakeups_and_waiting()]
        });
        assert_eq!(seen, [(1, [2, 0]), (4, [0, 1]), (5, [0, 0])]);
        assert_eq!(held.calls.load(std::sync::atomic::Ordering::SeqCst), 3);
    }

    #[test]
    fn a_failed_sync_fails_every_caller_it_finished_for_and_the_next_sync_stands_alone() {
        let held = held_syncs();
        std::thread::scope(|s| {
            let (first, mut during) = held.callers(s, 1);
            held.end_round.send(Err(std::io::Error::other("write-back failed"))).unwrap();
            let error = first.join().unwrap().unwrap_err();
            assert_eq!(error.kind(), std::io::ErrorKind::Other);
            assert!(error.to_string().contains("/lake"), "{error}");
            // Its own sync succeeds, but the failed one may have been about its writes (the
            // kernel reports a write-back error once): it fails too.
            held.end_round.send(Ok(())).unwrap();
            assert!(during.remove(0).join().unwrap().is_err());
        });
        // A caller after both: its own sync's result.
        held.end_round.send(Ok(())).unwrap();
        held.sync.sync().unwrap();
        assert_eq!(held.calls.load(std::sync::atomic::Ordering::SeqCst), 3);
    }

    #[test]
    fn a_sync_that_panics_fails_its_caller_and_the_next_caller_gets_a_sync_of_its_own() {
        let calls = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = std::sync::Arc::clone(&calls);
        let sync = FileSystemSync::with(Path::new("/lake"), move || {
            if counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 0 {
                panic!("a bug in the sync");
            }
            Ok(())
        });
        let error = sync.sync().unwrap_err();
        assert!(error.to_string().contains("panicked"), "{error}");
        sync.sync().unwrap();
        assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 2);
    }

    #[test]
    fn the_file_system_of_a_folder_is_synced_and_a_missing_folder_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("object"), b"records").unwrap();
        FileSystemSync::new(dir.path()).sync().unwrap();
        let missing = FileSystemSync::new(&dir.path().join("absent"));
        assert_eq!(missing.sync().unwrap_err().kind(), std::io::ErrorKind::NotFound);
        std::fs::create_dir(dir.path().join("absent")).unwrap();
        missing.sync().unwrap();
    }

    /// `target` relative to `base` (both absolute), through `..` as far as needed.
    fn pathdiff(target: &Path, base: &Path) -> PathBuf {
        let (t, b): (Vec<_>, Vec<_>) = (target.components().collect(), base.components().collect());
        let common = t.iter().zip(&b).take_while(|(x, y)| x == y).count();
        let mut out = PathBuf::new();
        for _ in common..b.len() {
            out.push("..");
        }
        for c in &t[common..] {
            out.push(c);
        }
        out
    }
}

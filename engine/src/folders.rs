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
//! [`MAX_DURABLE_FOLDERS`] folders.

use std::collections::HashSet;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// Folders known to be durable: made (or first met) by this process, their holders synced. Forgotten
/// all at once past [`MAX_DURABLE_FOLDERS`] (which only costs syncing their holders again).
static DURABLE_FOLDERS: std::sync::LazyLock<Mutex<HashSet<PathBuf>>> = std::sync::LazyLock::new(Mutex::default);

/// Folders remembered in [`DURABLE_FOLDERS`]: about 1 MiB of paths. A partitioned sink makes a
/// folder per partition; past this many, folders met again cost a failed `mkdir` and a sync of
/// their holder once more (remembering 100,000 took 10 MiB: the sink's memory follows its open
/// partitions, not every partition it ever wrote).
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

/// Forgets that `dir` and its ancestors were made: a folder removed behind the process's back is
/// made (and synced into its holder) again.
pub fn forget(dir: &Path) {
    let Ok(dir) = std::path::absolute(dir) else { return };
    let mut known = DURABLE_FOLDERS.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    for folder in dir.ancestors() {
        known.remove(folder);
    }
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
    let exists = |e: &std::io::Error| e.kind() == std::io::ErrorKind::AlreadyExists && dir.is_dir();
    // Whether this call made the folder (else it was there, maybe made a moment ago).
    let made = match std::fs::create_dir(dir) {
        Ok(()) => true,
        Err(e) if exists(&e) => false,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let Some(parent) = dir.parent() else { return Err(e) };
            synced(parent)?;
            match std::fs::create_dir(dir) {
                Ok(()) => true,
                Err(e) if exists(&e) => false,
                Err(e) => return Err(e),
            }
        }
        Err(e) => return Err(e),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folders_are_made_with_their_ancestors_concurrently_and_again_when_forgotten() {
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
        // Removed behind the process's back: remembered as made until forgotten.
        std::fs::remove_dir_all(dir.path().join("a=1")).unwrap();
        create_dir_synced(&dir.path().join("a=1/b=1")).unwrap();
        assert!(!dir.path().join("a=1").exists());
        forget(&dir.path().join("a=1/b=1"));
        create_dir_synced(&dir.path().join("a=1/b=1")).unwrap();
        assert!(dir.path().join("a=1/b=1").is_dir());
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

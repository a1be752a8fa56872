//! The `file://` backend of the `object_store` sink: each object is written in a hidden staging
//! folder on the file system of the sink's folder, made durable, renamed into place (its folders
//! made as needed), and made durable there: each of the two steps waits for a sync of that file
//! system shared with the objects finished at about the same time ([`FileSystemSync`]: a
//! partitioned sink's 1,020 objects in new folders took 4,429 `fsync`s one by one, and 8 % more
//! time). The staging folder is beside the sink's folder
//! (`<parent>/.sluice-staging/<folder>/<pipeline>.<sink>/`), so that a listing of the sink's folder
//! never sees it; when it cannot be there, because the sink's folder is a file system of its own (a
//! mount point, such as a container's volume: no rename crosses into it) or the sink cannot write
//! its parent, it is inside it (`<folder>/.sluice-staging/<pipeline>.<sink>/`, a hidden folder,
//! its files without extension). Writes of a megabyte or more bypass the page cache
//! ([`UnbufferedFile`]: `O_DIRECT` where the file system takes it), since the sync writes them out
//! at once anyway and the copy into fresh cache pages was the largest kernel cost of a Parquet run.
//!
//! Guarantees: an object appears under the sink's folder whole or not at all, so a listing of the
//! prefix (DuckDB, Athena-style readers, `find`) never sees a partial file under the object's name,
//! even after a SIGKILL or a crash of the machine (its contents are durable before its name); it is
//! durable (contents, name, folders) when its delivery succeeds;
//! staging files left by an interrupted run are removed at the next start (they belong to this
//! sink alone); a part of an object uploaded in parts is written at its own offset, so parts can be
//! retried under their number and written concurrently; a key the file system cannot hold as a
//! name (`ENAMETOOLONG`) fails as unstorable, not retryable, so its object goes to the error
//! output at once instead of after the retry duration. A run that ends with everything stored
//! removes its staging folder ([`StagedFiles::finish`]), and the folders holding it while nothing
//! else stages in them.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use bytes::Bytes;
use futures::future::BoxFuture;
use sluice_engine::contract::{DeliveryError, PartUpload};
use sluice_engine::folders::FileSystemSync;
use sluice_engine::unbuffered::UnbufferedFile;

/// The name of staging folders: a reader of a sink's folder (the `object_store` source) skips it.
pub const STAGING_FOLDER: &str = ".sluice-staging";

/// Where a sink's objects go on the local file system, and where they are staged.
#[derive(Debug, Clone)]
pub struct StagedFiles {
    /// The sink's folder.
    root: PathBuf,
    /// The staging folder beside the sink's folder.
    beside: Staging,
    /// The staging folder inside it, for when beside cannot be used.
    inside: Staging,
    /// Whether [`Self::prepare`] chose the one inside (beside until it has run).
    chose_inside: Arc<OnceLock<bool>>,
}

/// A staging folder and the syncs of its file system (the sink folder's), shared by the sink's
/// deliveries.
#[derive(Debug, Clone)]
struct Staging {
    folder: PathBuf,
    sync: Arc<FileSystemSync>,
}

impl Staging {
    fn at(folder: PathBuf) -> Self {
        Staging { sync: Arc::new(FileSystemSync::new(&folder)), folder }
    }
}

/// Whether `a` and `b` (both existing) are on one file system, so a rename between them works.
fn same_file_system(a: &Path, b: &Path) -> std::io::Result<bool> {
    use std::os::unix::fs::MetadataExt;
    Ok(std::fs::metadata(a)?.dev() == std::fs::metadata(b)?.dev())
}

/// A file-system error as a delivery error: a name the file system cannot hold (longer than a
/// file name or a path may be: `ENAMETOOLONG`) is no key for it, whatever is tried again; the
/// rest may pass.
fn io_error(what: String) -> impl FnOnce(std::io::Error) -> DeliveryError {
    move |e| {
        let message = format!("{what}: {e}");
        match e.kind() {
            std::io::ErrorKind::InvalidFilename => {
                DeliveryError::Unstorable { code: "Local.InvalidKey".into(), message }
            }
            _ => DeliveryError::Retryable { code: "Local.InternalError".into(), message },
        }
    }
}

/// Runs blocking file work off the async threads.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, DeliveryError> + Send + 'static,
) -> Result<T, DeliveryError> {
    tokio::task::spawn_blocking(work).await.map_err(|e| DeliveryError::Retryable {
        code: "Local.InternalError".into(),
        message: format!("file work did not finish: {e}"),
    })?
}

/// Makes `staged` (written, not yet synced) the file at `target` durably: the file system is synced
/// so the contents are stored before the name, the folders are made, the file is renamed into
/// place, and the file system is synced again so the name and the folders are stored. The syncs are
/// shared with every object finished at about the same time (see [`FileSystemSync`]).
fn install(sync: &FileSystemSync, staged: &Path, target: &Path) -> Result<(), DeliveryError> {
    sync.sync().map_err(io_error(format!("cannot store {}", target.display())))?;
    let moved = std::fs::rename(staged, target).or_else(|e| {
        if e.kind() != std::io::ErrorKind::NotFound || !staged.exists() {
            return Err(e);
        }
        // The first object of its folder (or its folders were removed behind the sink's back).
        std::fs::create_dir_all(target.parent().unwrap_or(Path::new("/")))?;
        std::fs::rename(staged, target)
    });
    moved.map_err(io_error(format!("cannot move an object into {}", target.display())))?;
    sync.sync().map_err(io_error(format!("cannot store {}", target.display())))
}

impl StagedFiles {
    /// Objects under `root`, staged under a folder named `name` (unique per pipeline and sink).
    pub fn new(root: PathBuf, name: &str) -> Self {
        let folder = root.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "root".into());
        let parent = root.parent().map(Path::to_path_buf).unwrap_or_else(|| root.clone());
        let beside = Staging::at(parent.join(STAGING_FOLDER).join(folder).join(name));
        let inside = Staging::at(root.join(STAGING_FOLDER).join(name));
        StagedFiles { root, beside, inside, chose_inside: Arc::default() }
    }

    /// The staging folder in use.
    fn chosen(&self) -> &Staging {
        if self.chose_inside.get() == Some(&true) { &self.inside } else { &self.beside }
    }

    /// The sink's folder.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The staging folder in use.
    pub fn staging(&self) -> &Path {
        &self.chosen().folder
    }

    /// What [`Self::prepare`] needs, changing nothing: the folder is one (not a file), and it, or
    /// the nearest folder above it that exists, may be written by this process.
    pub async fn check(&self) -> Result<(), DeliveryError> {
        let root = self.root.clone();
        blocking(move || {
            let denied = |message: String| DeliveryError::Permanent { code: "Local.AccessDenied".into(), message };
            if root.exists() && !root.is_dir() {
                return Err(denied(format!(
                    "cannot prepare {}: it is a file: a file:// URL names the folder objects are written under",
                    root.display()
                )));
            }
            let Some(existing) = root.ancestors().find(|folder| folder.exists()) else { return Ok(()) };
            if !existing.is_dir() {
                return Err(denied(format!(
                    "cannot create {}: {} is not a folder",
                    root.display(),
                    existing.display()
                )));
            }
            match rustix::fs::access(existing, rustix::fs::Access::WRITE_OK | rustix::fs::Access::EXEC_OK) {
                Ok(()) => Ok(()),
                Err(e) => Err(denied(format!(
                    "cannot create {}: {} cannot be written by this process ({e})",
                    root.display(),
                    existing.display()
                ))),
            }
        })
        .await
    }

    /// Creates the sink's folder, chooses its staging folder (beside it, unless it is a file system
    /// of its own or its parent cannot be written) and creates it, and removes what an interrupted
    /// run left staged in either; returns how many files.
    pub async fn prepare(&self) -> Result<usize, DeliveryError> {
        let (root, beside, inside) = (self.root.clone(), self.beside.folder.clone(), self.inside.folder.clone());
        let chose_inside = Arc::clone(&self.chose_inside);
        let prepared = move || -> Result<usize, String> {
            fn cannot(what: &Path) -> impl FnOnce(std::io::Error) -> String + '_ {
                move |e| format!("cannot create {}: {e}", what.display())
            }
            if root.exists() && !root.is_dir() {
                return Err("it is a file: a file:// URL names the folder objects are written under".to_string());
            }
            sluice_engine::folders::create_dir_synced(&root).map_err(cannot(&root))?;
            let parent = root.parent().unwrap_or(&root);
            let own_file_system = !same_file_system(&root, parent).map_err(cannot(&root))?;
            let use_inside = own_file_system
                || match sluice_engine::folders::create_dir_synced(&beside) {
                    Ok(()) => false,
                    Err(e)
                        if matches!(
                            e.kind(),
                            std::io::ErrorKind::PermissionDenied | std::io::ErrorKind::ReadOnlyFilesystem
                        ) =>
                    {
                        true
                    }
                    Err(e) => return Err(cannot(&beside)(e)),
                };
            if use_inside {
                sluice_engine::folders::create_dir_synced(&inside).map_err(cannot(&inside))?;
            }
            let _ = chose_inside.set(use_inside);
            let mut removed = 0;
            for folder in [&beside, &inside] {
                for entry in std::fs::read_dir(folder).into_iter().flatten().flatten() {
                    if entry.file_type().is_ok_and(|t| t.is_file()) {
                        let path = entry.path();
                        std::fs::remove_file(&path).map_err(|e| format!("cannot remove {}: {e}", path.display()))?;
                        removed += 1;
                    }
                }
            }
            Ok(removed)
        };
        let root = self.root.clone();
        blocking(move || {
            prepared().map_err(|e| DeliveryError::Permanent {
                code: "Local.AccessDenied".into(),
                message: format!("cannot prepare {}: {e}", root.display()),
            })
        })
        .await
    }

    /// Removes the staging folder once a run has stored everything (it is then empty), with the
    /// folders made to hold it while they are empty too (another sink's staging keeps them), so a
    /// finished run leaves no `.sluice-staging` behind.
    pub async fn finish(&self) {
        let (staging, top) = if self.chose_inside.get() == Some(&true) {
            (self.inside.folder.clone(), self.root.join(STAGING_FOLDER))
        } else {
            let parent = self.root.parent().map(Path::to_path_buf).unwrap_or_else(|| self.root.clone());
            (self.beside.folder.clone(), parent.join(STAGING_FOLDER))
        };
        let _ = tokio::task::spawn_blocking(move || sluice_engine::folders::remove_empty(&staging, &top)).await;
    }

    /// A new staging file's path.
    fn staged_path(&self) -> PathBuf {
        self.staging().join(uuid::Uuid::new_v4().to_string())
    }

    /// Stores `body` as `key` (a key the sink has checked).
    pub fn put(&self, key: &str, body: Bytes) -> BoxFuture<'static, Result<(), DeliveryError>> {
        let (staged, target, sync) = (self.staged_path(), self.root.join(key), Arc::clone(&self.chosen().sync));
        Box::pin(blocking(move || {
            let written = UnbufferedFile::create(&staged).and_then(|f| f.write_all_at(&body, 0));
            if let Err(e) = written {
                let _ = std::fs::remove_file(&staged);
                return Err(io_error(format!("cannot stage {}", target.display()))(e));
            }
            install(&sync, &staged, &target).inspect_err(|_| {
                let _ = std::fs::remove_file(&staged);
            })
        }))
    }

    /// Starts an object `key` uploaded in parts (its staging file made off the async threads).
    pub fn start(&self, key: &str) -> BoxFuture<'static, Result<Box<dyn PartUpload>, DeliveryError>> {
        let (staged, target, sync) = (self.staged_path(), self.root.join(key), Arc::clone(&self.chosen().sync));
        Box::pin(blocking(move || {
            let file =
                UnbufferedFile::create(&staged).map_err(io_error(format!("cannot stage {}", target.display())))?;
            let upload: Box<dyn PartUpload> =
                Box::new(StagedUpload { file: Arc::new(file), staged, target, parts: Arc::default(), sync });
            Ok(upload)
        }))
    }
}

/// An object being written in parts into its staging file.
struct StagedUpload {
    file: Arc<UnbufferedFile>,
    staged: PathBuf,
    target: PathBuf,
    /// Each part's offset and length, by number (parts are handed over in order).
    parts: Arc<Mutex<BTreeMap<usize, (u64, u64)>>>,
    sync: Arc<FileSystemSync>,
}

impl PartUpload for StagedUpload {
    fn put_part(&self, index: usize, part: Bytes) -> BoxFuture<'static, Result<(), DeliveryError>> {
        let offset = {
            let mut parts = self.parts.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            match parts.get(&index) {
                Some(&(offset, _)) => Ok(offset),
                None if index == 0 => Ok(0),
                None => match parts.get(&(index - 1)) {
                    Some(&(offset, len)) => Ok(offset + len),
                    None => Err(DeliveryError::Permanent {
                        code: "Local.InternalError".into(),
                        message: format!("part {index} came before part {}", index - 1),
                    }),
                },
            }
            .inspect(|&offset| {
                parts.insert(index, (offset, part.len() as u64));
            })
        };
        let file = Arc::clone(&self.file);
        let target = self.target.clone();
        Box::pin(async move {
            let offset = offset?;
            blocking(move || {
                file.write_all_at(&part, offset)
                    .map_err(io_error(format!("cannot stage a part of {}", target.display())))
            })
            .await
        })
    }

    fn retries_parts(&self) -> bool {
        true
    }

    fn complete(&self) -> BoxFuture<'static, Result<(), DeliveryError>> {
        let (file, staged, target) = (Arc::clone(&self.file), self.staged.clone(), self.target.clone());
        let sync = Arc::clone(&self.sync);
        let length: u64 =
            self.parts.lock().map(|p| p.values().map(|(offset, len)| offset + len).max().unwrap_or(0)).unwrap_or(0);
        Box::pin(blocking(move || {
            // A retried part may have been longer before; the object ends with its last part.
            file.set_len(length).map_err(io_error(format!("cannot finish {}", target.display())))?;
            install(&sync, &staged, &target)
        }))
    }

    fn abort(&self) -> BoxFuture<'static, Result<(), DeliveryError>> {
        let staged = self.staged.clone();
        Box::pin(blocking(move || match std::fs::remove_file(&staged) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_error(format!("cannot remove {}", staged.display()))(e)),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every file under `dir`, relative.
    fn files(dir: &Path) -> Vec<String> {
        let mut out = Vec::new();
        let mut stack = vec![dir.to_path_buf()];
        while let Some(d) = stack.pop() {
            for entry in std::fs::read_dir(&d).into_iter().flatten().flatten() {
                if entry.path().is_dir() {
                    stack.push(entry.path());
                } else {
                    out.push(entry.path().strip_prefix(dir).unwrap().display().to_string());
                }
            }
        }
        out.sort();
        out
    }

    #[test]
    fn folders_removed_behind_the_sink_are_made_again_and_a_file_in_the_way_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let store = StagedFiles::new(dir.path().join("out"), "p.sink");
        tokio::runtime::Runtime::new().unwrap().block_on(store.prepare()).unwrap();
        let put = |key: &str, body: &[u8]| {
            let staged = store.staged_path();
            std::fs::write(&staged, body).unwrap();
            install(&store.chosen().sync, &staged, &store.root().join(key))
        };
        put("user=1/event=1/first", b"x").unwrap();
        // The folders are removed while the sink runs: the next object makes them again.
        std::fs::remove_dir_all(store.root().join("user=1")).unwrap();
        put("user=1/event=1/again", b"y").unwrap();
        assert_eq!(std::fs::read(store.root().join("user=1/event=1/again")).unwrap(), b"y");
        std::fs::write(store.root().join("blocked"), b"").unwrap();
        assert!(put("blocked/x", b"z").is_err());
        // A file where the folder should be: said so at start.
        let file = StagedFiles::new(dir.path().join("out/blocked"), "p.sink");
        let refused = tokio::runtime::Runtime::new().unwrap().block_on(file.prepare()).unwrap_err();
        assert!(
            matches!(&refused, DeliveryError::Permanent { message, .. } if message.contains("it is a file: a file:// URL names the folder")),
            "{refused:?}"
        );
    }

    /// A name longer than the file system holds (`ENAMETOOLONG`), as a folder or as the object's
    /// own name: unstorable (its records go to the error output at once, not after minutes of
    /// retries), nothing left staged; the name at its limit is stored.
    #[tokio::test(flavor = "multi_thread")]
    async fn a_name_the_file_system_cannot_hold_is_unstorable() {
        let dir = tempfile::tempdir().unwrap();
        let store = StagedFiles::new(dir.path().join("out"), "p.sink");
        store.prepare().await.unwrap();
        let longest = "n".repeat(sluice_engine::contract::KeyLimits::FILE_NAME_BYTES);
        for key in [format!("{longest}n/object.gz"), format!("a/{longest}n"), format!("{}/x", "é".repeat(128))] {
            let error = store.put(&key, Bytes::from_static(b"records")).await.unwrap_err();
            assert!(
                matches!(&error, DeliveryError::Unstorable { code, message } if code == "Local.InvalidKey" && message.contains("too long")),
                "{error:?}"
            );
        }
        assert!(files(store.staging()).is_empty(), "nothing left staged");
        store.put(&format!("{longest}/{longest}"), Bytes::from_static(b"records")).await.unwrap();
        assert_eq!(files(store.root()), vec![format!("{longest}/{longest}")]);
    }

    /// A sync that fails (the disk's write-back error): the delivery fails, retryable, and leaves
    /// nothing staged; if the contents could not be stored no object appears, and once the file
    /// system syncs again the retried delivery stores it.
    #[tokio::test(flavor = "multi_thread")]
    async fn a_failed_sync_fails_the_delivery_and_its_retry_stores_the_object() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = StagedFiles::new(dir.path().join("out"), "p.sink");
        store.prepare().await.unwrap();
        let failing = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let fails = Arc::clone(&failing);
        store.beside.sync = Arc::new(FileSystemSync::with(store.staging(), move || {
            if fails.load(std::sync::atomic::Ordering::SeqCst) {
                Err(std::io::Error::other("write-back failed"))
            } else {
                Ok(())
            }
        }));
        let error = store.put("a/one.gz", Bytes::from_static(b"records")).await.unwrap_err();
        assert!(
            matches!(&error, DeliveryError::Retryable { message, .. } if message.contains("write-back failed")),
            "{error:?}"
        );
        assert!(files(store.root()).is_empty(), "no object before its contents are stored");
        assert!(files(store.staging()).is_empty(), "nothing left staged");
        failing.store(false, std::sync::atomic::Ordering::SeqCst);
        store.put("a/one.gz", Bytes::from_static(b"records")).await.unwrap();
        assert_eq!(std::fs::read(store.root().join("a/one.gz")).unwrap(), b"records");
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn objects_appear_whole_and_interrupted_ones_are_cleaned_at_the_next_start() {
        let dir = tempfile::tempdir().unwrap();
        let files_store = StagedFiles::new(dir.path().join("out"), "p.sink");
        assert_eq!(files_store.prepare().await.unwrap(), 0);
        files_store.put("a/b/one.gz", Bytes::from_static(b"whole")).await.unwrap();
        // Parts, one retried, then completed.
        let upload = files_store.start("a/two").await.unwrap();
        upload.put_part(0, Bytes::from_static(b"first-")).await.unwrap();
        upload.put_part(1, Bytes::from_static(b"sec")).await.unwrap();
        upload.put_part(1, Bytes::from_static(b"second")).await.unwrap();
        upload.complete().await.unwrap();
        // An upload a crash interrupts: staged only.
        let interrupted = files_store.start("a/three").await.unwrap();
        interrupted.put_part(0, Bytes::from_static(b"partial")).await.unwrap();
        drop(interrupted);
        assert_eq!(files(&dir.path().join("out")), vec!["a/b/one.gz", "a/two"]);
        assert_eq!(std::fs::read(dir.path().join("out/a/two")).unwrap(), b"first-second");
        assert_eq!(files(files_store.staging()).len(), 1);
        // The next start removes what was left staged.
        let again = StagedFiles::new(dir.path().join("out"), "p.sink");
        assert_eq!(again.prepare().await.unwrap(), 1);
        assert!(files(again.staging()).is_empty());
        assert_eq!(files(&dir.path().join("out")), vec!["a/b/one.gz", "a/two"]);
    }

    /// A finished run leaves no staging folder, nor the folders made to hold it; another sink's
    /// staging beside it keeps the folders they share, and a run started after the tidy-up stages
    /// again (the folders made again, not taken as still there).
    #[tokio::test(flavor = "multi_thread")]
    async fn a_finished_run_leaves_no_staging_folder_behind() {
        let dir = tempfile::tempdir().unwrap();
        let ours = StagedFiles::new(dir.path().join("out"), "p.sink");
        let theirs = StagedFiles::new(dir.path().join("out"), "q.sink");
        ours.prepare().await.unwrap();
        theirs.prepare().await.unwrap();
        ours.put("a/one", Bytes::from_static(b"one")).await.unwrap();
        ours.finish().await;
        assert!(!ours.staging().exists());
        assert!(theirs.staging().exists(), "the other sink's staging stays");
        theirs.finish().await;
        assert!(!dir.path().join(STAGING_FOLDER).exists(), "{:?}", std::fs::read_dir(dir.path()).unwrap().count());
        assert_eq!(files(dir.path()), vec!["out/a/one"]);
        let again = StagedFiles::new(dir.path().join("out"), "p.sink");
        again.prepare().await.unwrap();
        again.put("a/two", Bytes::from_static(b"two")).await.unwrap();
        assert_eq!(files(&dir.path().join("out")), vec!["a/one", "a/two"]);
        // A staging file still there (a run is never finished with one in flight) keeps the folder.
        let upload = again.start("a/three").await.unwrap();
        upload.put_part(0, Bytes::from_static(b"partial")).await.unwrap();
        again.finish().await;
        assert_eq!(files(again.staging()).len(), 1);
    }
}

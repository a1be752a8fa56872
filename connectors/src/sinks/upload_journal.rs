//! The multipart uploads an `object_store` sink has started and not yet completed or aborted, kept
//! in a file under the pipeline's `data_dir`, so that the uploads a killed run left open (invisible
//! to listings, but billed by S3 until aborted) are aborted at the next start.
//!
//! Guarantees: an upload is written to the journal (synced, with its folder) before its first part is sent, and
//! leaves it only once completed or aborted; a journal that cannot be read is reported and
//! replaced, never a reason not to start.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Mutex;

/// Open uploads: upload id → object path.
#[derive(Debug)]
pub struct UploadJournal {
    path: PathBuf,
    open: Mutex<BTreeMap<String, String>>,
}

impl UploadJournal {
    /// The journal in `path` (read when [`UploadJournal::take_stale`] is called).
    pub fn new(path: PathBuf) -> Self {
        UploadJournal { path, open: Mutex::new(BTreeMap::new()) }
    }

    /// The uploads a previous run left open (upload id, object path), forgotten from the journal.
    pub fn take_stale(&self) -> Vec<(String, String)> {
        let stale: BTreeMap<String, String> = match std::fs::read(&self.path) {
            Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
                tracing::warn!(file = %self.path.display(), error = %e, "unreadable upload journal; replacing it");
                BTreeMap::new()
            }),
            Err(_) => BTreeMap::new(),
        };
        if let Err(e) = self.write(&BTreeMap::new()) {
            tracing::warn!(file = %self.path.display(), error = %e, "cannot write the upload journal");
        }
        stale.into_iter().collect()
    }

    /// Records an upload before its first part is sent.
    pub fn started(&self, id: &str, path: &str) -> std::io::Result<()> {
        let mut open = self.open.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        open.insert(id.to_string(), path.to_string());
        self.write(&open)
    }

    /// Forgets an upload that was completed or aborted.
    pub fn ended(&self, id: &str) {
        let mut open = self.open.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if open.remove(id).is_some()
            && let Err(e) = self.write(&open)
        {
            tracing::warn!(file = %self.path.display(), error = %e, "cannot write the upload journal");
        }
    }

    /// Replaces the journal durably: a temporary file, synced, renamed over it, and the folder
    /// synced (without a journal the file system may otherwise lose the rename in a crash, and
    /// with it the uploads to abort).
    fn write(&self, open: &BTreeMap<String, String>) -> std::io::Result<()> {
        let dir = self.path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(std::path::Path::new("."));
        sluice_engine::folders::create_dir_synced(dir)?;
        let text = serde_json::to_vec(open).map_err(std::io::Error::other)?;
        sluice_engine::folders::replace_file(&self.path, &text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_uploads_outlive_the_run_and_are_taken_once() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        // The journal's folder does not exist yet: it is made (and synced) with the first write.
        let path = dir.path().join("data/sink/uploads.json");
        let journal = UploadJournal::new(path.clone());
        assert!(journal.take_stale().is_empty());
        journal.started("u1", "a/1.gz").unwrap_or_else(|e| panic!("{e}"));
        journal.started("u2", "a/2.gz").unwrap_or_else(|e| panic!("{e}"));
        journal.ended("u1");
        assert!(!path.with_extension("json.tmp").exists(), "the temporary file is renamed over the journal");
        // The next run finds what this one left open, and only once.
        let next = UploadJournal::new(path.clone());
        assert_eq!(next.take_stale(), vec![("u2".to_string(), "a/2.gz".to_string())]);
        assert!(UploadJournal::new(path.clone()).take_stale().is_empty());
        // An unreadable journal is replaced, never a reason not to start.
        std::fs::write(&path, b"{not json").unwrap_or_else(|e| panic!("{e}"));
        assert!(UploadJournal::new(path).take_stale().is_empty());
        // A journal that cannot be written says so (the sink then warns that a crash would leave
        // that upload open, and goes on).
        std::fs::write(dir.path().join("blocked"), b"").unwrap_or_else(|e| panic!("{e}"));
        let blocked = UploadJournal::new(dir.path().join("blocked/uploads.json"));
        assert!(blocked.started("u3", "a/3.gz").is_err());
    }
}

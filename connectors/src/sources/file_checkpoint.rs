//! Where a source has got to in input it can read again, kept at the delivered frontier so that a
//! restarted run resumes instead of starting over: a file source's offsets, an object-store
//! source's, a Kinesis source's sequence number per shard.
//!
//! Each work unit (a file, or a byte range of one, keyed by path, range, file size and modification
//! time; an object, by key, size and ETag; a shard)
//! records its position after every read (the stream offset of its next unread line; the last
//! sequence number read), with the epoch that read was stamped with. A unit's checkpoint advances to an offset only once the delivered frontier has passed that
//! epoch, so it never points past a line that is not delivered: a resumed run re-reads at most what
//! was delivered after the last checkpoint (duplicates), never skips. The file
//! (`offsets.json` in the source's data folder) is written to a temporary name, synced and renamed.
//! A run that delivers all its input without being stopped removes it, so the next run starts over;
//! one that gave up an input it could not read (a corrupt file) keeps it, so the next run reads
//! only that input again, from where its delivered records end.

use std::collections::{BTreeMap, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// How often the checkpoint follows the delivered frontier.
const FOLLOW_EVERY: Duration = Duration::from_millis(500);

/// A unit's saved progress: a position `P` (a file's stream offset; a shard's sequence number).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Saved<P = u64> {
    /// Resume at this position (a file: the offset of a line start; a shard: after this sequence
    /// number).
    Offset(P),
    /// Read and delivered whole.
    Done,
}

#[derive(Debug)]
struct UnitProgress<P> {
    saved: Option<Saved<P>>,
    /// Reads not yet known delivered: (epoch, position after the read, the unit ended).
    pending: VecDeque<(u64, P, bool)>,
}

impl<P> Default for UnitProgress<P> {
    fn default() -> Self {
        UnitProgress { saved: None, pending: VecDeque::new() }
    }
}

/// The checkpoints of one source.
#[derive(Debug)]
pub struct FileCheckpoints<P = u64> {
    path: PathBuf,
    units: Mutex<BTreeMap<String, UnitProgress<P>>>,
    /// An input was given up ([`FileCheckpoints::give_up`]): the run's end keeps the checkpoint.
    given_up: std::sync::atomic::AtomicBool,
}

fn locked<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl<P> FileCheckpoints<P>
where
    P: Clone + Serialize + serde::de::DeserializeOwned + Send + 'static,
{
    /// The checkpoints saved in `dir` (none when the file is missing or unreadable: start over).
    pub fn load(dir: PathBuf) -> Arc<FileCheckpoints<P>> {
        let path = dir.join("offsets.json");
        let saved: BTreeMap<String, Saved<P>> = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
                tracing::warn!(file = %path.display(), error = %e, "unreadable file-source checkpoint; starting over");
                BTreeMap::new()
            }),
            Err(_) => BTreeMap::new(),
        };
        if !saved.is_empty() {
            tracing::info!(file = %path.display(), units = saved.len(), "resuming file reads from the checkpoint");
        }
        let units =
            saved.into_iter().map(|(k, s)| (k, UnitProgress { saved: Some(s), pending: VecDeque::new() })).collect();
        Arc::new(FileCheckpoints { path, units: Mutex::new(units), given_up: Default::default() })
    }

    /// Where to start `key`: `None` from its beginning.
    pub fn saved(&self, key: &str) -> Option<Saved<P>> {
        locked(&self.units).get(key).and_then(|u| u.saved.clone())
    }

    /// Notes a read of `key` up to `offset` in `epoch` (`done`: the unit ended).
    pub fn read(&self, key: &str, epoch: u64, offset: P, done: bool) {
        locked(&self.units).entry(key.to_string()).or_default().pending.push_back((epoch, offset, done));
    }

    /// The units it knows (saved or read in this run).
    pub fn units(&self) -> Vec<String> {
        locked(&self.units).keys().cloned().collect()
    }

    /// Forgets `key` once it is done and nothing read of it waits for delivery (a shard trimmed
    /// from its stream): the next write leaves it out. True if it was forgotten.
    pub fn forget_done(&self, key: &str) -> bool {
        let mut units = locked(&self.units);
        let done = units.get(key).is_some_and(|u| u.pending.is_empty() && matches!(u.saved, Some(Saved::Done)));
        if done {
            units.remove(key);
        }
        done
    }

    /// Advances every unit past the reads of epochs below `delivered`; true if anything changed.
    fn advance(&self, delivered: u64) -> bool {
        let mut changed = false;
        for unit in locked(&self.units).values_mut() {
            while let Some((epoch, _, _)) = unit.pending.front() {
                if *epoch >= delivered {
                    break;
                }
                let Some((_, offset, done)) = unit.pending.pop_front() else { break };
                unit.saved = Some(if done { Saved::Done } else { Saved::Offset(offset) });
                changed = true;
            }
        }
        changed
    }

    fn save(&self, delivered: u64) {
        if self.advance(delivered)
            && let Err(e) = self.write()
        {
            tracing::error!(file = %self.path.display(), error = %e, "cannot write the file-source checkpoint");
        }
    }

    /// Notes that a unit could not be read to its end and was given up: it is not done, and the
    /// run's end keeps the checkpoint so that the next run reads it again (and only it).
    pub fn give_up(&self) {
        self.given_up.store(true, Ordering::SeqCst);
    }

    /// At the end of a run (everything read was delivered): removes the checkpoint when the input
    /// was read to its end, so the next run starts over; keeps it, complete, when the run was
    /// stopped or gave up a unit, so the next run resumes.
    pub fn finish(&self, stopped: bool) {
        if stopped || self.given_up.load(Ordering::SeqCst) {
            self.save(u64::MAX);
        } else if let Err(e) = std::fs::remove_file(&self.path)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::error!(file = %self.path.display(), error = %e, "cannot remove the file-source checkpoint");
        }
    }

    fn write(&self) -> std::io::Result<()> {
        let saved: BTreeMap<String, Saved<P>> =
            locked(&self.units).iter().filter_map(|(k, u)| u.saved.clone().map(|s| (k.clone(), s))).collect();
        let dir = self.path.parent().map(PathBuf::from).unwrap_or_default();
        sluice_engine::folders::create_dir_synced(&dir)?;
        let text = serde_json::to_vec_pretty(&saved).map_err(std::io::Error::other)?;
        sluice_engine::folders::replace_file(&self.path, &text)
    }

    /// Follows the delivered frontier on a thread of its own while the run goes on.
    pub fn follow(self: &Arc<Self>, delivered: Arc<AtomicU64>) {
        let checkpoints = Arc::clone(self);
        let spawned = std::thread::Builder::new().name("sluice-offsets".into()).spawn(move || {
            loop {
                let frontier = delivered.load(Ordering::SeqCst);
                if frontier == u64::MAX {
                    return; // [`Self::finish`] takes it from here.
                }
                checkpoints.save(frontier);
                std::thread::sleep(FOLLOW_EVERY);
            }
        });
        if let Err(e) = spawned {
            tracing::error!(error = %e, "cannot start the file-source checkpoint thread; a restart starts over");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_unit_advances_only_past_delivered_epochs() {
        let dir = tempfile::tempdir().unwrap();
        let c = FileCheckpoints::load(dir.path().to_path_buf());
        c.read("a", 3, 100, false);
        c.read("a", 5, 200, true);
        c.read("b", 4, 50, false);
        assert!(c.advance(4));
        c.write().unwrap();
        let again = FileCheckpoints::load(dir.path().to_path_buf());
        assert_eq!(again.saved("a"), Some(Saved::Offset(100)));
        assert_eq!(again.saved("b"), None);
        assert!(c.advance(6));
        assert_eq!(c.saved("a"), Some(Saved::Done));
        assert_eq!(c.saved("b"), Some(Saved::Offset(50)));
    }

    #[test]
    fn only_a_done_unit_with_nothing_pending_is_forgotten() {
        let dir = tempfile::tempdir().unwrap();
        let c = FileCheckpoints::<String>::load(dir.path().to_path_buf());
        c.read("closed", 1, "9".into(), true);
        c.read("open", 1, "5".into(), false);
        assert!(!c.forget_done("closed"), "its end is not delivered yet");
        assert!(c.advance(2));
        assert!(!c.forget_done("open") && !c.forget_done("unknown"));
        assert!(c.forget_done("closed"));
        c.write().unwrap();
        let again = FileCheckpoints::<String>::load(dir.path().to_path_buf());
        assert_eq!((again.saved("closed"), again.saved("open")), (None, Some(Saved::Offset("5".into()))));
    }
}

//! Acknowledged means durable: an API source's accepted batches go through the write-ahead log
//! ([`sluice_engine::wal`]) before they are acknowledged, and the log is cut below what the
//! pipeline has delivered.
//!
//! Guarantees: with `durability = "fsync"`, [`DurableLog::commit`] returns only after the batch is
//! in the log and fsynced, and concurrent commits share one fsync (group commit: whoever finds no
//! sync running syncs for everyone appended so far); with `"buffered"`, after the write. Every
//! committed batch is tracked from the queue to the epoch its reader stamped it with; the
//! checkpoint advances only past batches whose epoch is below the delivered frontier, so a restart
//! replays exactly what was not yet delivered (at-least-once).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use sluice_engine::record::RecordBatch;
use sluice_engine::traits::Durability;
use sluice_engine::wal::{EntryAt, Recovery, Wal, WalError, remove_segments};

/// Segment size of an API source's log.
pub const SEGMENT_BYTES: u64 = 64 << 20;
/// How often the checkpoint follows the delivered frontier.
const TRUNCATE_EVERY: Duration = Duration::from_millis(500);

/// Entries to replay after a restart (read one at a time, so replay holds one batch in memory).
pub type Replay = Vec<EntryAt>;

#[derive(Debug, Default)]
struct SyncState {
    /// Entries below this are durable.
    synced: u64,
    /// A commit is syncing for everyone.
    syncing: bool,
    /// The last sync failure (every commit waiting on it fails).
    failed: Option<String>,
}

/// A pipeline source's write-ahead log with group commit and delivery tracking.
#[derive(Debug)]
pub struct DurableLog {
    dir: std::path::PathBuf,
    wal: Mutex<Wal>,
    mode: Durability,
    sync: Mutex<SyncState>,
    synced: Condvar,
    /// Committed batches not yet known delivered: sequence → the epoch they were read in (`None`
    /// while queued).
    pending: Mutex<BTreeMap<u64, Option<u64>>>,
}

fn locked<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl DurableLog {
    /// Opens the log in `dir`; returns it and the batches to replay (committed, not delivered),
    /// with their sequence numbers.
    pub fn open(dir: &Path, mode: Durability) -> Result<(Arc<DurableLog>, Replay), WalError> {
        let (mut wal, Recovery { entries, cut, .. }) = Wal::open(dir, SEGMENT_BYTES)?;
        wal.set_sync_on_roll(mode == Durability::Fsync);
        for c in &cut {
            tracing::warn!(segment = %c.segment.display(), bytes = c.bytes, offset = c.offset, "the log had a torn or corrupt tail; cut it");
        }
        let replay = entries;
        let synced = wal.next_seq();
        let log = DurableLog {
            dir: dir.to_path_buf(),
            wal: Mutex::new(wal),
            mode,
            sync: Mutex::new(SyncState { synced, ..SyncState::default() }),
            synced: Condvar::new(),
            pending: Mutex::new(replay.iter().map(|e| (e.seq, None)).collect()),
        };
        Ok((Arc::new(log), replay))
    }

    /// Appends `batch` and waits until it is as durable as the mode asks; returns its sequence.
    pub fn commit(&self, batch: &RecordBatch) -> Result<u64, WalError> {
        let seq = {
            let mut wal = locked(&self.wal);
            let seq = wal.append(&batch.to_bytes())?;
            locked(&self.pending).insert(seq, None);
            seq
        };
        if self.mode != Durability::Fsync {
            return Ok(seq);
        }
        let mut state = locked(&self.sync);
        loop {
            if state.synced > seq {
                return Ok(seq);
            }
            if let Some(e) = &state.failed {
                return Err(WalError::Io {
                    context: "the log could not be synced".into(),
                    source: std::io::Error::other(e.clone()),
                });
            }
            if state.syncing {
                state = self.synced.wait(state).unwrap_or_else(std::sync::PoisonError::into_inner);
                continue;
            }
            // Sync for everyone appended so far, without holding the log: appends go on meanwhile.
            state.syncing = true;
            drop(state);
            // (The log's lock is released at the end of this statement, before the fsync.)
            let point = locked(&self.wal).sync_point();
            let result = point.and_then(|(file, upto)| {
                file.sync_data().map_err(|source| WalError::Io { context: "cannot sync the log".into(), source })?;
                locked(&self.wal).mark_synced(upto);
                Ok(upto)
            });
            state = locked(&self.sync);
            state.syncing = false;
            match result {
                Ok(upto) => state.synced = state.synced.max(upto),
                Err(e) => state.failed = Some(e.to_string()),
            }
            self.synced.notify_all();
        }
    }

    /// Forgets a committed batch that was not acknowledged after all (the run was stopping): the
    /// checkpoint may pass it.
    pub fn abandon(&self, seq: u64) {
        locked(&self.pending).remove(&seq);
    }

    /// Notes that batch `seq` was taken into the dataflow in `epoch`.
    pub fn read_at(&self, seq: u64, epoch: u64) {
        if let Some(slot) = locked(&self.pending).get_mut(&seq) {
            *slot = Some(epoch);
        }
    }

    /// Advances the checkpoint past every batch read in an epoch below `delivered`.
    pub fn truncate(&self, delivered: u64) -> Result<(), WalError> {
        let checkpoint = {
            let mut pending = locked(&self.pending);
            pending.retain(|_, epoch| epoch.is_none_or(|e| e >= delivered));
            pending.keys().next().copied()
        };
        // The checkpoint's fsyncs and the unlinks run without holding the log: appends go on.
        let (plan, dir) = {
            let wal = locked(&self.wal);
            let frontier = checkpoint.unwrap_or_else(|| wal.next_seq());
            (wal.checkpoint_to(frontier), self.dir.clone())
        };
        let Some(plan) = plan else { return Ok(()) };
        plan.write()?;
        let below = locked(&self.wal).checkpointed(&plan);
        remove_segments(&dir, &below)
    }

    /// Follows the delivered frontier on a thread of its own until the run delivered everything.
    pub fn follow(self: &Arc<Self>, delivered: Arc<AtomicU64>) {
        let log = Arc::clone(self);
        let spawned = std::thread::Builder::new().name("sluice-wal".into()).spawn(move || {
            loop {
                let frontier = delivered.load(Ordering::SeqCst);
                if let Err(e) = log.truncate(frontier) {
                    tracing::error!(error = %e, "cannot advance the log checkpoint");
                }
                if frontier == u64::MAX {
                    return;
                }
                std::thread::sleep(TRUNCATE_EVERY);
            }
        });
        if let Err(e) = spawned {
            tracing::error!(error = %e, "cannot start the log checkpoint thread; the log grows until restart");
        }
    }
}

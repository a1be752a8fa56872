//! Acknowledged means durable: an API source's accepted batches go through the write-ahead log
//! ([`sluice_engine::wal`]) before they are acknowledged, and the log is cut below what the
//! pipeline has delivered.
//!
//! Guarantees: with `durability = "fsync"`, [`DurableLog::commit`] returns only after the batch is
//! in the log and fsynced, and concurrent commits share one fsync (group commit: whoever finds no
//! sync running syncs for everyone appended so far); with `"buffered"`, after the write. Every
//! committed batch is tracked from the queue to the epoch its reader stamped it with; the
//! checkpoint advances only past batches whose epoch is below the delivered frontier, and records
//! which later batches are delivered too, so a restart replays exactly what was not yet delivered
//! (at-least-once). The checkpoint follows the delivered
//! frontier as soon as it moves. What recovery finds at start (damage, missing segments, torn
//! writes) is logged, as an error when acknowledged records were lost, and counted in
//! `LogCorruptRecords` / `LogCorruptBytes`.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use sluice_engine::config::{Durability, Retention};
use sluice_engine::error_log::{ErrorEvent, Level};
use sluice_engine::metrics::PipelineMetrics;
use sluice_engine::record::{RecordBatch, now_ms};
use sluice_engine::wal::seal::LogKeys;
use sluice_engine::wal::{ENTRY_OVERHEAD, EntryAt, Position, Recovery, Wal, WalError};

/// Segment size of an API source's log.
pub const SEGMENT_BYTES: u64 = 64 << 20;
/// How often the checkpoint thread looks at the delivered frontier (a move is checkpointed at once).
const FOLLOW_EVERY: Duration = Duration::from_millis(10);
/// How often retention and the log's size are looked at when the frontier does not move.
const HOUSEKEEPING_EVERY: Duration = Duration::from_millis(500);

/// Entries to replay after a restart (read one at a time, so replay holds one batch in memory).
pub type Replay = Vec<EntryAt>;

#[derive(Debug, Default)]
struct SyncState {
    /// Entries below this are durable.
    synced: u64,
    /// A commit is syncing for everyone.
    syncing: bool,
    /// Entries below this were covered by a sync that failed (not durable, not acknowledged), and
    /// why; later entries are synced by a later attempt.
    failed: Option<(u64, String)>,
}

/// A pipeline source's write-ahead log with group commit and delivery tracking.
#[derive(Debug)]
pub struct DurableLog {
    wal: Mutex<Wal>,
    mode: Durability,
    sync: Mutex<SyncState>,
    synced: Condvar,
    /// Committed batches not yet known delivered, by sequence.
    pending: Mutex<BTreeMap<u64, Pending>>,
    retention: Retention,
    /// Bytes of the log on disk (as of the last checkpoint, plus what was appended since).
    disk_bytes: AtomicU64,
    /// The log's identity (records' [`sluice_engine::record::Origin`]).
    id: u64,
    /// The durable checkpoint: entries below it are never replayed.
    replay_floor: AtomicU64,
}

/// A committed batch on its way.
#[derive(Debug, Clone, Copy)]
struct Pending {
    /// The epoch it was read into the dataflow in (`None` while queued).
    epoch: Option<u64>,
    /// When it arrived (for `retention.max_hours`).
    arrival_ms: i64,
    /// Its records.
    records: u64,
    /// Records before it in the log (for the checkpoint's record count).
    first_record: u64,
}

fn locked<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl DurableLog {
    /// Opens the log in `dir`, encrypted with segment keys wrapped by `keys` when given; returns it
    /// and the batches to replay (committed, not delivered), with their sequence numbers.
    /// What recovery found is logged and counted into `metrics`.
    pub fn open(
        dir: &Path,
        mode: Durability,
        retention: Retention,
        keys: Option<Arc<dyn LogKeys>>,
        metrics: &PipelineMetrics,
    ) -> Result<(Arc<DurableLog>, Replay), WalError> {
        let (mut wal, Recovery { entries, findings, .. }) = Wal::open_sealed(dir, SEGMENT_BYTES, keys)?;
        metrics.api.log_retention_bytes.store(retention.max_bytes, Ordering::Relaxed);
        wal.set_buffered(mode == Durability::Buffered);
        for finding in &findings {
            let log = dir.display();
            if finding.known {
                tracing::warn!(log = %log, "known log damage, reported at an earlier start: {finding}");
            } else if finding.is_loss() {
                tracing::error!(log = %log, "ACKNOWLEDGED RECORDS LOST: {finding}");
                let api = &metrics.api;
                api.log_corrupt_records.fetch_add(finding.lost_records.unwrap_or(0), Ordering::Relaxed);
                api.log_corrupt_entries.fetch_add(finding.lost_entries, Ordering::Relaxed);
                api.log_corrupt_bytes.fetch_add(finding.bytes.unwrap_or(0), Ordering::Relaxed);
            } else {
                tracing::warn!(log = %log, "{finding}");
                metrics.api.log_corrupt_bytes.fetch_add(finding.bytes.unwrap_or(0), Ordering::Relaxed);
            }
        }
        let replay = entries;
        let synced = wal.next_seq();
        let disk_bytes = AtomicU64::new(wal.disk_bytes());
        let (id, replay_floor) = (wal.id(), AtomicU64::new(wal.checkpoint()));
        // Replayed batches count their age from the restart.
        let now = now_ms();
        let replayed = |e: &EntryAt| Pending {
            epoch: None,
            arrival_ms: now,
            records: u64::from(e.records),
            first_record: e.first_record.unwrap_or(0),
        };
        let log = DurableLog {
            wal: Mutex::new(wal),
            mode,
            sync: Mutex::new(SyncState { synced, ..SyncState::default() }),
            synced: Condvar::new(),
            pending: Mutex::new(replay.iter().map(|e| (e.seq, replayed(e))).collect()),
            retention,
            disk_bytes,
            id,
            replay_floor,
        };
        Ok((Arc::new(log), replay))
    }

    /// Appends `batch` and waits until it is as durable as the mode asks; returns its sequence.
    /// Past `retention.max_gb` it refuses ([`WalError::Full`]): the API throttles before the disk fills.
    pub fn commit(&self, batch: &RecordBatch) -> Result<u64, WalError> {
        let payload = batch.to_bytes();
        let held = self.disk_bytes.load(Ordering::SeqCst);
        if held + payload.len() as u64 > self.retention.max_bytes {
            return Err(WalError::Full { bytes: held });
        }
        let records = batch.len() as u64;
        let seq = {
            let mut wal = locked(&self.wal);
            let at = wal.append(&payload, u32::try_from(records).unwrap_or(u32::MAX))?;
            let pending = Pending { epoch: None, arrival_ms: batch.arrival_ms, records, first_record: at.record };
            locked(&self.pending).insert(at.seq, pending);
            at.seq
        };
        self.disk_bytes.fetch_add(payload.len() as u64 + ENTRY_OVERHEAD, Ordering::SeqCst);
        if self.mode != Durability::Fsync {
            return Ok(seq);
        }
        let mut state = locked(&self.sync);
        loop {
            if state.synced > seq {
                return Ok(seq);
            }
            if let Some((below, e)) = &state.failed
                && seq < *below
            {
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
            let result = match point {
                Ok((file, upto)) => match file.sync_data() {
                    Ok(()) => {
                        locked(&self.wal).mark_synced(upto);
                        Ok(upto.seq)
                    }
                    Err(e) => {
                        // Not durable: refuse what it covered; the log starts a new segment.
                        locked(&self.wal).sync_failed();
                        Err((upto.seq, format!("cannot sync the log: {e}")))
                    }
                },
                Err(e) => Err((seq + 1, e.to_string())),
            };
            state = locked(&self.sync);
            state.syncing = false;
            match result {
                Ok(upto) => state.synced = state.synced.max(upto),
                Err((below, e)) => {
                    tracing::error!(error = %e, "the log could not be synced; refusing the records it held");
                    state.failed = Some((below, e));
                }
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
            slot.epoch = Some(epoch);
        }
    }

    /// Advances the checkpoint past every batch read in an epoch below `delivered`, and past
    /// batches older than `retention.max_hours` (returns how many records those held: they are no
    /// longer protected by the log, though they may still be delivered).
    pub fn truncate(&self, delivered: u64) -> Result<u64, WalError> {
        let expire_before = now_ms().saturating_sub(self.retention.max_age.as_millis() as i64);
        let mut expired = 0;
        // The frontier is read under the log's lock, as commits append and register under it: a
        // batch appended meanwhile cannot fall below a checkpoint taken from an emptied queue.
        // The checkpoint's fsyncs and the unlinks run without holding the log: appends go on.
        let plan = {
            let wal = locked(&self.wal);
            let mut pending = locked(&self.pending);
            pending.retain(|_, p| {
                if p.arrival_ms < expire_before {
                    expired += p.records.max(1);
                    return false;
                }
                p.epoch.is_none_or(|e| e >= delivered)
            });
            let frontier = match pending.iter().next() {
                Some((&seq, p)) => Position { seq, record: p.first_record },
                None => wal.next(),
            };
            // Entries above the frontier no longer pending are delivered (or were never
            // acknowledged): a restart need not replay them. Two workers deliver in different
            // epochs, so these are often most of what lies above the frontier.
            let mut delivered = Vec::new();
            let mut from = frontier.seq;
            for &seq in pending.keys().chain(std::iter::once(&wal.next_seq())) {
                if seq > from {
                    delivered.push(from..seq);
                }
                from = seq + 1;
            }
            wal.checkpoint_to(frontier, &delivered)
        };
        if expired > 0 {
            tracing::error!(
                records = expired,
                max_hours = self.retention.max_age.as_secs() / 3600,
                "undelivered records are older than the log's retention and leave it: a crash now loses them"
            );
        }
        if let Some(plan) = plan {
            plan.write()?;
            let below = {
                let mut wal = locked(&self.wal);
                let below = wal.checkpointed(&plan);
                self.replay_floor.store(wal.checkpoint(), Ordering::SeqCst);
                below
            };
            plan.remove_segments(&below)?;
        }
        self.disk_bytes.store(locked(&self.wal).disk_bytes(), Ordering::SeqCst);
        Ok(expired)
    }

    /// At the end of a run (everything read was delivered): the last checkpoint.
    pub fn finish(&self) {
        if let Err(e) = self.truncate(u64::MAX) {
            tracing::error!(error = %e, "cannot advance the log checkpoint");
        }
    }

    /// Marks `batch`, logged as entry `seq`, with its records' origins in this log.
    pub fn mark_origins(&self, batch: &mut RecordBatch, seq: u64) {
        batch.set_log_entry(self.id, seq, self.replay_floor.load(Ordering::SeqCst));
    }

    /// Bytes of the log on disk.
    pub fn disk_bytes(&self) -> u64 {
        self.disk_bytes.load(Ordering::SeqCst)
    }

    /// Follows the delivered frontier on a thread of its own until the run delivered everything:
    /// checkpoints as soon as the frontier moves, and looks at retention every half second,
    /// counting into `metrics` (`LogBytes`, `LogExpiredRecords`).
    pub fn follow(self: &Arc<Self>, delivered: Arc<AtomicU64>, metrics: Arc<PipelineMetrics>) {
        let log = Arc::clone(self);
        let spawned = std::thread::Builder::new().name("sluice-wal".into()).spawn(move || {
            let mut last: Option<(u64, std::time::Instant)> = None;
            loop {
                let frontier = delivered.load(Ordering::SeqCst);
                let due = last.is_none_or(|(f, at)| f != frontier || at.elapsed() >= HOUSEKEEPING_EVERY);
                if due {
                    match log.truncate(frontier) {
                        Ok(expired) => {
                            metrics.api.log_expired_records.fetch_add(expired, Ordering::Relaxed);
                            if expired > 0 {
                                metrics.report_error(ErrorEvent {
                                    level: Level::Error,
                                    component: "write-ahead log",
                                    error_code: "LogExpiredRecords",
                                    message: &format!(
                                        "{expired} undelivered records older than retention.max_hours left the log"
                                    ),
                                    attempts: None,
                                    key: None,
                                });
                            }
                        }
                        Err(e) => tracing::error!(error = %e, "cannot advance the log checkpoint"),
                    }
                    metrics.api.log_bytes.store(log.disk_bytes(), Ordering::Relaxed);
                    last = Some((frontier, std::time::Instant::now()));
                }
                if frontier == u64::MAX {
                    return;
                }
                std::thread::sleep(FOLLOW_EVERY);
            }
        });
        if let Err(e) = spawned {
            tracing::error!(error = %e, "cannot start the log checkpoint thread; the log grows until restart");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(records: usize, arrival_ms: i64) -> RecordBatch {
        let mut b = RecordBatch::with_capacity(arrival_ms, 1024);
        (0..records).for_each(|_| b.push(&[b'x'; 100]));
        b
    }

    #[test]
    fn puts_are_refused_at_the_disk_budget_and_old_records_leave_the_log_counted() {
        let dir = tempfile::tempdir().unwrap();
        let retention = Retention { max_bytes: 2500, max_age: Duration::from_secs(3600) };
        let metrics = PipelineMetrics::new(1, 1);
        let (log, _) = DurableLog::open(dir.path(), Durability::Fsync, retention, None, &metrics).unwrap();
        let now = now_ms();
        let first = log.commit(&batch(10, now - 2 * 3600 * 1000)).unwrap();
        let second = log.commit(&batch(10, now)).unwrap();
        assert!(matches!(log.commit(&batch(10, now)), Err(WalError::Full { .. })));
        // Nothing delivered yet: only the batch older than an hour leaves, and is counted.
        assert_eq!(log.truncate(0).unwrap(), 10);
        log.read_at(second, 5);
        assert_eq!(log.truncate(6).unwrap(), 0);
        assert!(first < second);
        drop(log);
        let (_, replay) = DurableLog::open(dir.path(), Durability::Fsync, retention, None, &metrics).unwrap();
        assert!(replay.is_empty(), "{replay:?}");
    }

    /// Records leaving the log by age are an ERROR line in the error log (and so on the dashboard).
    #[test]
    fn records_leaving_the_log_by_age_are_in_the_error_log() {
        let dir = tempfile::tempdir().unwrap();
        let retention = Retention { max_bytes: 1 << 20, max_age: Duration::from_secs(3600) };
        let metrics = Arc::new(PipelineMetrics::new(1, 1));
        let _ = metrics.errors.set(Arc::new(sluice_engine::error_log::ErrorLog::new("s", None, false)));
        let (log, _) = DurableLog::open(dir.path(), Durability::Fsync, retention, None, &metrics).unwrap();
        log.commit(&batch(10, now_ms() - 2 * 3600 * 1000)).unwrap();
        let delivered = Arc::new(AtomicU64::new(0));
        Arc::new(log).follow(Arc::clone(&delivered), Arc::clone(&metrics));
        let started = std::time::Instant::now();
        let line = loop {
            let recent = metrics.errors.get().unwrap().recent();
            if let Some(line) = recent.into_iter().find(|l| l["errorCode"] == "LogExpiredRecords") {
                break line;
            }
            assert!(started.elapsed() < Duration::from_secs(10), "no LogExpiredRecords line");
            std::thread::sleep(Duration::from_millis(20));
        };
        delivered.store(u64::MAX, Ordering::SeqCst);
        assert_eq!((line["level"].as_str(), line["component"].as_str()), (Some("ERROR"), Some("write-ahead log")));
        assert!(line["message"].as_str().unwrap().starts_with("10 undelivered records"), "{line}");
        assert_eq!(metrics.api.log_expired_records.load(Ordering::Relaxed), 10);
    }
}

//! The write-ahead log: what the API acknowledges is first appended here and made durable, and a
//! restart replays what was not yet delivered.
//!
//! Layout in `dir`: segment files `<first sequence number, 20 digits>.wal` holding entries
//! `[length u32 LE][crc32c u32 LE of sequence ‖ payload][sequence u64 LE][payload]`, and a
//! `checkpoint` file with the delivered frontier (the first sequence number not yet delivered).
//! A segment rolls when it reaches its size limit; segments wholly below the checkpoint are deleted.
//!
//! Guarantees, under crashes at any instant (unsynced bytes may be lost or torn; a rename or unlink
//! not yet followed by a directory sync may be undone):
//! - an entry is durable once [`Wal::sync`] returned after its append: recovery returns it unless
//!   it is below the durable checkpoint;
//! - recovery never fails on a torn or corrupt tail: it finds the first entry whose length or
//!   checksum is wrong, cuts the segment there and reports the segment and the bytes cut;
//! - recovered entries are in sequence order without repeats; an entry below the checkpoint may
//!   come back only if the crash undid a checkpoint write (at-least-once, never lost);
//! - every step is ordered so that a crash between any two leaves a state recovery accepts: a new
//!   segment is created and the directory synced before entries go in; the checkpoint is written
//!   to a temporary file, synced, renamed, and the directory synced, before any segment below it
//!   is unlinked.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

/// Bytes before an entry's payload.
const HEADER: usize = 16;
/// The largest payload accepted (a PutRecordBatch carries at most 4 MiB of data).
pub const MAX_PAYLOAD: usize = 64 << 20;

/// Why the log failed (I/O; a corrupt tail is not an error but a [`Recovery`] report).
#[derive(Debug, thiserror::Error)]
pub enum WalError {
    /// A file operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The error.
        source: io::Error,
    },
    /// A payload over [`MAX_PAYLOAD`].
    #[error("an entry of {0} bytes is larger than the log accepts")]
    TooLarge(usize),
    /// The log holds its retention limit (`retention.max_gb`): throttle until delivery catches up.
    #[error("the log holds {bytes} bytes, its retention limit")]
    Full {
        /// Bytes on disk.
        bytes: u64,
    },
}

fn io_error(context: impl Into<String>) -> impl FnOnce(io::Error) -> WalError {
    let context = context.into();
    move |source| WalError::Io { context, source }
}

/// A torn or corrupt stretch cut off during recovery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CutTail {
    /// The segment file.
    pub segment: PathBuf,
    /// Offset of the first bad entry.
    pub offset: u64,
    /// Bytes removed.
    pub bytes: u64,
}

/// Where a recovered entry's payload is (read with [`EntryAt::read`], so a replay need not hold
/// the whole log in memory).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryAt {
    /// Its sequence number.
    pub seq: u64,
    /// Its segment file.
    pub segment: PathBuf,
    /// Offset of its payload in the segment.
    pub offset: u64,
    /// Payload length.
    pub len: u32,
}

impl EntryAt {
    /// The entry's payload (checked against its checksum at recovery; its segment is kept until the
    /// entry is below the checkpoint).
    pub fn read(&self) -> Result<Vec<u8>, WalError> {
        use std::io::{Seek, SeekFrom};
        let mut payload = vec![0; self.len as usize];
        File::open(&self.segment)
            .and_then(|mut f| f.seek(SeekFrom::Start(self.offset)).and_then(|_| f.read_exact(&mut payload)))
            .map_err(io_error(format!("cannot read {}", self.segment.display())))?;
        Ok(payload)
    }
}

/// What recovery found.
#[derive(Debug, Default)]
pub struct Recovery {
    /// Entries at or above the checkpoint, in order.
    pub entries: Vec<EntryAt>,
    /// Torn or corrupt stretches that were cut off.
    pub cut: Vec<CutTail>,
    /// The checkpoint read (first sequence number not yet delivered).
    pub checkpoint: u64,
}

/// An open log.
#[derive(Debug)]
pub struct Wal {
    dir: PathBuf,
    segment_bytes: u64,
    /// Segments in order: (first sequence, path); the last is the one appended to.
    segments: Vec<(u64, PathBuf)>,
    active: File,
    active_len: u64,
    /// Length of the active segment at its last sync.
    synced_len: u64,
    next_seq: u64,
    /// Sequence numbers below this are durable.
    synced_seq: u64,
    checkpoint: u64,
    /// Sync a segment before starting the next (off when durability is "buffered").
    sync_on_roll: bool,
}

fn segment_path(dir: &Path, first: u64) -> PathBuf {
    dir.join(format!("{first:020}.wal"))
}

fn sync_dir(dir: &Path) -> Result<(), WalError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(io_error(format!("cannot sync {}", dir.display())))
}

fn entry_checksum(seq: u64, payload: &[u8]) -> u32 {
    crc32c::crc32c_append(crc32c::crc32c(&seq.to_le_bytes()), payload)
}

/// One segment as read: its valid entries (sequence, payload offset, length), the length of its
/// valid prefix, its whole length.
struct SegmentRead {
    entries: Vec<(u64, u64, u32)>,
    valid: u64,
    total: u64,
}

/// A checkpoint to make durable: the first sequence number not yet delivered.
#[derive(Debug, Clone)]
pub struct Checkpoint {
    dir: PathBuf,
    frontier: u64,
}

impl Checkpoint {
    /// Writes it durably: a temporary file, synced, renamed over the old one, the folder synced.
    pub fn write(&self) -> Result<(), WalError> {
        let temporary = self.dir.join("checkpoint.tmp");
        let mut file = File::create(&temporary).map_err(io_error("cannot write the checkpoint"))?;
        file.write_all(self.frontier.to_string().as_bytes())
            .and_then(|()| file.sync_all())
            .map_err(io_error("cannot write the checkpoint"))?;
        std::fs::rename(&temporary, self.dir.join("checkpoint")).map_err(io_error("cannot write the checkpoint"))?;
        sync_dir(&self.dir)
    }

    /// Deletes `segments` (those [`Wal::checkpointed`] returned, below this written checkpoint),
    /// then syncs the folder.
    pub fn remove_segments(&self, segments: &[PathBuf]) -> Result<(), WalError> {
        for path in segments {
            std::fs::remove_file(path).map_err(io_error(format!("cannot delete {}", path.display())))?;
        }
        if segments.is_empty() { Ok(()) } else { sync_dir(&self.dir) }
    }
}

/// Reads the entries of one segment up to the first one whose length or checksum is wrong.
fn read_segment(path: &Path) -> Result<SegmentRead, WalError> {
    let mut bytes = Vec::new();
    File::open(path)
        .and_then(|mut f| f.read_to_end(&mut bytes))
        .map_err(io_error(format!("cannot read {}", path.display())))?;
    let mut entries = Vec::new();
    let mut at = 0usize;
    while at + HEADER <= bytes.len() {
        let word = |i: usize| u32::from_le_bytes([bytes[i], bytes[i + 1], bytes[i + 2], bytes[i + 3]]);
        let len = word(at) as usize;
        let crc = word(at + 4);
        let mut seq_bytes = [0u8; 8];
        seq_bytes.copy_from_slice(&bytes[at + 8..at + 16]);
        let seq = u64::from_le_bytes(seq_bytes);
        let end = at + HEADER + len;
        if len > MAX_PAYLOAD || end > bytes.len() {
            break;
        }
        let payload = &bytes[at + HEADER..end];
        if entry_checksum(seq, payload) != crc {
            break;
        }
        entries.push((seq, (at + HEADER) as u64, len as u32));
        at = end;
    }
    Ok(SegmentRead { entries, valid: at as u64, total: bytes.len() as u64 })
}

impl Wal {
    /// Opens (creating if needed) the log in `dir`, recovering what it holds.
    pub fn open(dir: &Path, segment_bytes: u64) -> Result<(Wal, Recovery), WalError> {
        std::fs::create_dir_all(dir).map_err(io_error(format!("cannot create {}", dir.display())))?;
        let checkpoint = match std::fs::read_to_string(dir.join("checkpoint")) {
            Ok(text) => text.trim().parse::<u64>().unwrap_or(0),
            Err(e) if e.kind() == io::ErrorKind::NotFound => 0,
            Err(e) => return Err(io_error("cannot read the checkpoint")(e)),
        };
        let _ = std::fs::remove_file(dir.join("checkpoint.tmp"));
        let mut segments: Vec<(u64, PathBuf)> = std::fs::read_dir(dir)
            .map_err(io_error(format!("cannot list {}", dir.display())))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter_map(|p| {
                let first = p.file_name()?.to_str()?.strip_suffix(".wal")?.parse().ok()?;
                Some((first, p))
            })
            .collect();
        segments.sort();
        let mut recovery = Recovery { checkpoint, ..Recovery::default() };
        let mut next_seq = checkpoint;
        for (_, path) in &segments {
            let SegmentRead { entries, valid, total } = read_segment(path)?;
            if valid < total {
                // A torn or corrupt tail: cut it so appends continue after the last good entry.
                let file = OpenOptions::new()
                    .write(true)
                    .open(path)
                    .map_err(io_error(format!("cannot open {}", path.display())))?;
                file.set_len(valid)
                    .and_then(|()| file.sync_all())
                    .map_err(io_error(format!("cannot cut {}", path.display())))?;
                tracing::warn!(segment = %path.display(), offset = valid, bytes = total - valid, "cut a torn or corrupt log tail");
                recovery.cut.push(CutTail { segment: path.clone(), offset: valid, bytes: total - valid });
            }
            for (seq, offset, len) in entries {
                // In order and never twice, even if a crash left a repeated or stale stretch.
                if seq >= next_seq {
                    next_seq = seq + 1;
                    recovery.entries.push(EntryAt { seq, segment: path.clone(), offset, len });
                }
            }
        }
        let (active, active_len) = match segments.last() {
            Some((_, path)) => {
                let file = OpenOptions::new()
                    .append(true)
                    .open(path)
                    .map_err(io_error(format!("cannot open {}", path.display())))?;
                let len = file.metadata().map_err(io_error("cannot stat the active segment"))?.len();
                (file, len)
            }
            None => {
                let path = segment_path(dir, next_seq);
                let file = Self::create_segment(dir, &path)?;
                segments.push((next_seq, path));
                (file, 0)
            }
        };
        let wal = Wal {
            dir: dir.to_path_buf(),
            segment_bytes: segment_bytes.max(1),
            segments,
            active,
            active_len,
            synced_len: active_len,
            next_seq,
            synced_seq: next_seq,
            checkpoint,
            sync_on_roll: true,
        };
        Ok((wal, recovery))
    }

    fn create_segment(dir: &Path, path: &Path) -> Result<File, WalError> {
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(io_error(format!("cannot create {}", path.display())))?;
        sync_dir(dir)?;
        Ok(file)
    }

    /// Appends an entry (not yet durable: see [`Wal::sync`]); returns its sequence number.
    pub fn append(&mut self, payload: &[u8]) -> Result<u64, WalError> {
        if payload.len() > MAX_PAYLOAD {
            return Err(WalError::TooLarge(payload.len()));
        }
        if self.active_len >= self.segment_bytes && self.active_len > 0 {
            self.roll()?;
        }
        let seq = self.next_seq;
        let mut entry = Vec::with_capacity(HEADER + payload.len());
        entry.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        entry.extend_from_slice(&entry_checksum(seq, payload).to_le_bytes());
        entry.extend_from_slice(&seq.to_le_bytes());
        entry.extend_from_slice(payload);
        self.active.write_all(&entry).map_err(io_error("cannot append to the log"))?;
        self.active_len += entry.len() as u64;
        self.next_seq += 1;
        Ok(seq)
    }

    /// Makes every appended entry durable (one fsync for all of them: group commit).
    pub fn sync(&mut self) -> Result<(), WalError> {
        if self.synced_seq < self.next_seq {
            self.active.sync_data().map_err(io_error("cannot sync the log"))?;
            self.synced_len = self.active_len;
            self.synced_seq = self.next_seq;
        }
        Ok(())
    }

    /// What a concurrent syncer needs: a handle on the active segment and the sequence number its
    /// sync will cover (every entry below it). Sync the handle without holding the log, then
    /// [`Wal::mark_synced`]: appends go on meanwhile (group commit).
    pub fn sync_point(&self) -> Result<(File, u64), WalError> {
        let file = self.active.try_clone().map_err(io_error("cannot sync the log"))?;
        Ok((file, self.next_seq))
    }

    /// Records that entries below `seq` are durable (a [`Wal::sync_point`]'s handle was synced; a
    /// roll in between synced the older segment itself).
    pub fn mark_synced(&mut self, seq: u64) {
        self.synced_seq = self.synced_seq.max(seq);
    }

    /// Whether a full segment is synced before the next starts (default yes). Off suits a log
    /// that is never synced ("buffered": it survives a process crash, not a power loss), where
    /// recovery cuts whatever a power loss tore, in any segment.
    pub fn set_sync_on_roll(&mut self, sync: bool) {
        self.sync_on_roll = sync;
    }

    /// Seals the active segment (synced unless [`Wal::set_sync_on_roll`] turned it off) and starts
    /// the next.
    fn roll(&mut self) -> Result<(), WalError> {
        if self.sync_on_roll {
            self.sync()?;
        }
        let path = segment_path(&self.dir, self.next_seq);
        self.active = Self::create_segment(&self.dir, &path)?;
        self.segments.push((self.next_seq, path));
        self.active_len = 0;
        self.synced_len = 0;
        Ok(())
    }

    /// Records that every entry below `frontier` is delivered: writes the checkpoint durably, then
    /// deletes the segments wholly below it (never the active one).
    pub fn truncate_below(&mut self, frontier: u64) -> Result<(), WalError> {
        let Some(checkpoint) = self.checkpoint_to(frontier) else { return Ok(()) };
        checkpoint.write()?;
        let below = self.checkpointed(&checkpoint);
        checkpoint.remove_segments(&below)
    }

    /// The checkpoint to write for `frontier`, or `None` if it would not advance. Writing it
    /// ([`Checkpoint::write`]) needs no access to the log, so appends go on meanwhile; then
    /// [`Wal::checkpointed`] and [`Checkpoint::remove_segments`].
    pub fn checkpoint_to(&self, frontier: u64) -> Option<Checkpoint> {
        let frontier = frontier.min(self.next_seq);
        (frontier > self.checkpoint).then(|| Checkpoint { dir: self.dir.clone(), frontier })
    }

    /// Takes a written checkpoint into account; returns the segments now wholly below it, which
    /// the caller deletes with [`Checkpoint::remove_segments`] (only after the checkpoint is durable).
    pub fn checkpointed(&mut self, checkpoint: &Checkpoint) -> Vec<PathBuf> {
        self.checkpoint = self.checkpoint.max(checkpoint.frontier);
        let mut below = Vec::new();
        // A segment is wholly below the checkpoint when the next one starts at or below it.
        while self.segments.len() > 1 && self.segments[1].0 <= self.checkpoint {
            below.push(self.segments.remove(0).1);
        }
        below
    }

    /// The next sequence number.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// Sequence numbers below this are durable.
    pub fn synced_seq(&self) -> u64 {
        self.synced_seq
    }

    /// The durable checkpoint.
    pub fn checkpoint(&self) -> u64 {
        self.checkpoint
    }

    /// Bytes of the segment files on disk.
    pub fn disk_bytes(&self) -> u64 {
        self.segments.iter().filter_map(|(_, p)| std::fs::metadata(p).ok()).map(|m| m.len()).sum()
    }

    /// Segment files on disk, oldest first.
    pub fn segments(&self) -> Vec<PathBuf> {
        self.segments.iter().map(|(_, p)| p.clone()).collect()
    }

    /// Bytes of the active segment, and how many of them are synced (for crash tests).
    pub fn active_lengths(&self) -> (u64, u64) {
        (self.active_len, self.synced_len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[derive(Debug, Clone)]
    enum Op {
        Append(Vec<u8>),
        Sync,
        Deliver(u8),
        /// Crash: keep `keep` of the unsynced bytes of the active segment, optionally flip a bit in
        /// what is kept, optionally undo the last segment deletion.
        Crash {
            keep: u16,
            flip: Option<u16>,
            undo_unlink: bool,
        },
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            5 => proptest::collection::vec(any::<u8>(), 0..200).prop_map(Op::Append),
            2 => Just(Op::Sync),
            1 => any::<u8>().prop_map(Op::Deliver),
            1 => (any::<u16>(), proptest::option::of(any::<u16>()), any::<bool>())
                .prop_map(|(keep, flip, undo_unlink)| Op::Crash { keep, flip, undo_unlink }),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(96))]

        /// The log against a model: whatever the crashes, every synced entry at or above the
        /// durable checkpoint comes back, in order, once, with its payload; nothing that was never
        /// appended comes back.
        #[test]
        fn recovers_every_durable_entry_whatever_the_crashes(ops in proptest::collection::vec(op(), 1..60)) {
            let dir = tempfile::tempdir().unwrap();
            let (mut wal, recovery) = Wal::open(dir.path(), 300).unwrap();
            prop_assert!(recovery.entries.is_empty());
            // Model: every payload ever appended, by sequence; the synced prefix; the checkpoint.
            let mut appended: std::collections::BTreeMap<u64, Vec<u8>> = Default::default();
            let mut durable_below = 0u64;
            let mut saved_segments: Vec<(PathBuf, Vec<u8>)> = Vec::new();
            for op in ops {
                match op {
                    Op::Append(payload) => {
                        let seq = wal.append(&payload).unwrap();
                        appended.insert(seq, payload);
                    }
                    Op::Sync => {
                        wal.sync().unwrap();
                        durable_below = wal.synced_seq();
                    }
                    Op::Deliver(n) => {
                        let frontier = wal.checkpoint() + u64::from(n % 8);
                        // Only what is durable can have been delivered.
                        let frontier = frontier.min(durable_below);
                        saved_segments = wal.segments().iter().map(|p| (p.clone(), std::fs::read(p).unwrap())).collect();
                        wal.truncate_below(frontier).unwrap();
                    }
                    Op::Crash { keep, flip, undo_unlink } => {
                        let checkpoint = wal.checkpoint();
                        let active = wal.segments().last().unwrap().clone();
                        let (len, synced) = wal.active_lengths();
                        drop(wal);
                        // Lose or tear the unsynced tail.
                        let kept = synced + u64::from(keep) % (len - synced + 1);
                        let file = OpenOptions::new().write(true).open(&active).unwrap();
                        file.set_len(kept).unwrap();
                        drop(file);
                        if let Some(bit) = flip && kept > synced {
                            let mut bytes = std::fs::read(&active).unwrap();
                            let at = synced as usize + usize::from(bit) % (kept - synced) as usize;
                            bytes[at] ^= 1 << (bit % 8);
                            std::fs::write(&active, bytes).unwrap();
                        }
                        if undo_unlink {
                            for (path, bytes) in &saved_segments {
                                if !path.exists() {
                                    std::fs::write(path, bytes).unwrap();
                                }
                            }
                        }
                        let (reopened, recovery) = Wal::open(dir.path(), 300).unwrap();
                        wal = reopened;
                        prop_assert_eq!(recovery.checkpoint, checkpoint);
                        let seqs: Vec<u64> = recovery.entries.iter().map(|e| e.seq).collect();
                        prop_assert!(seqs.windows(2).all(|w| w[0] < w[1]), "out of order: {:?}", seqs);
                        for entry in &recovery.entries {
                            prop_assert!(entry.seq >= checkpoint);
                            prop_assert_eq!(appended.get(&entry.seq), Some(&entry.read().unwrap()));
                        }
                        for seq in checkpoint..durable_below {
                            prop_assert!(seqs.contains(&seq), "durable entry {} lost; recovered {:?}", seq, seqs);
                        }
                        // What was not recovered is gone: later appends reuse its numbers.
                        appended.retain(|s, _| *s < wal.next_seq());
                        durable_below = durable_below.min(wal.next_seq());
                        saved_segments.clear();
                    }
                }
            }
        }
    }

    #[test]
    fn a_torn_tail_is_cut_and_reported_and_appends_continue() {
        let dir = tempfile::tempdir().unwrap();
        let (mut wal, _) = Wal::open(dir.path(), 1 << 20).unwrap();
        for i in 0..3u8 {
            wal.append(&[i; 10]).unwrap();
        }
        wal.sync().unwrap();
        let segment = wal.segments()[0].clone();
        drop(wal);
        let mut file = OpenOptions::new().append(true).open(&segment).unwrap();
        file.write_all(&[7u8; 9]).unwrap();
        drop(file);
        let (mut wal, recovery) = Wal::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(recovery.entries.len(), 3);
        assert_eq!(recovery.cut, vec![CutTail { segment: segment.clone(), offset: 3 * 26, bytes: 9 }]);
        assert_eq!(wal.append(b"next").unwrap(), 3);
        wal.sync().unwrap();
        drop(wal);
        let (_, recovery) = Wal::open(dir.path(), 1 << 20).unwrap();
        let last = recovery.entries.last().unwrap();
        assert_eq!((last.seq, last.read().unwrap()), (3, b"next".to_vec()));
        assert!(recovery.cut.is_empty());
    }

    #[test]
    fn segments_roll_and_are_deleted_below_the_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        let (mut wal, _) = Wal::open(dir.path(), 64).unwrap();
        for i in 0..10u8 {
            wal.append(&[i; 40]).unwrap();
        }
        wal.sync().unwrap();
        // 56-byte entries: a segment takes two before it passes 64 bytes.
        assert_eq!(wal.segments().len(), 5);
        wal.truncate_below(6).unwrap();
        assert_eq!(wal.segments().len(), 2);
        drop(wal);
        let (wal, recovery) = Wal::open(dir.path(), 64).unwrap();
        assert_eq!(recovery.entries.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![6, 7, 8, 9]);
        assert_eq!(wal.next_seq(), 10);
    }
}

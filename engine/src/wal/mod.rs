//! The write-ahead log: what the API acknowledges is first appended here and made durable, and a
//! restart replays what was not yet delivered.
//!
//! Layout in `dir`: `id`, the log's identity (16 hex digits, drawn at random when the log is
//! created; records carry it in their [`crate::record::Origin`]); segment files `<first sequence number, 20 digits>.wal`, each a header and
//! framed entries ([`format`]); a `checkpoint` file (JSON) with the delivered frontier, how far the
//! log was acknowledged, and the sealed segments it expects; and `quarantine/`, where recovery
//! keeps damaged bytes and a report (`recovery`). A segment rolls when it reaches its size
//! limit; segments wholly below the checkpoint are deleted.
//!
//! Guarantees, under crashes at any instant (unsynced bytes may be lost or torn; a rename or unlink
//! not yet followed by a directory sync may be undone), a full disk, and damage to files at rest:
//! - an entry is durable once [`Wal::sync`] returned after its append (or, with
//!   [`Wal::set_buffered`], once appended): recovery returns it unless it is below the durable
//!   checkpoint or its own bytes are damaged;
//! - a failed or short append leaves the log exactly as it was before it (what it wrote is cut
//!   off), and until that is done the log refuses appends; after a failed sync the next append
//!   starts a new segment. So an entry is acknowledged only if a restart will read it back;
//! - recovery never fails on content and never modifies a segment: damage costs only the entries
//!   whose bytes are damaged (framing lets it resynchronise on the next valid entry); missing and
//!   shortened segments are detected from the checkpoint's expectations and the segment headers;
//!   every acknowledged entry that cannot be read back is reported with its records and bytes,
//!   and the damaged bytes are copied to `quarantine/`;
//! - recovered entries are in sequence order without repeats; an entry below the checkpoint may
//!   come back only if the crash undid a checkpoint write (at-least-once, never lost);
//! - every step is ordered so that a crash between any two leaves a state recovery accepts: a new
//!   segment's header is synced and the directory synced before entries go in; the checkpoint is
//!   written to a temporary file, synced, renamed, and the directory synced, before any segment
//!   below it is unlinked. Appends after a restart always go to a new segment.
//!
//! With a log key ([`Wal::open_sealed`]), every segment has its own data key and every payload is
//! sealed with AES-256-GCM before it is framed ([`seal`]); a key that cannot be had is an error at
//! open ([`WalError::Key`]), and an entry whose checksums agree but whose seal does not is a
//! finding ([`FindingKind::TamperedEntry`]) like any damage.

mod format;
mod recovery;
pub mod seal;

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use format::{MAX_PAYLOAD, Position};
/// Delivered ranges above the frontier a checkpoint keeps (more are replayed: duplicates, not loss).
pub const MAX_DELIVERED_RANGES: usize = 4096;
/// Bytes the log adds to each entry's payload.
pub const ENTRY_OVERHEAD: u64 = format::ENTRY_HEADER as u64;
pub use recovery::{Finding, FindingKind, QUARANTINE};

use format::{ENTRY_HEADER, Layout, SEGMENT_HEADER, SegmentHeader};
use recovery::{CheckpointState, SealedSegment, SegmentOnDisk};

/// Why the log failed (I/O; damage found at start is not an error but a [`Recovery`] finding).
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
    /// A segment's key cannot be had (another key, no key file, KMS refused): nothing is read,
    /// deleted or quarantined until a start with the right key.
    #[error("segment {segment}{}: {reason}", offset.map_or(String::new(), |o| format!(" (first entry at offset {o})")))]
    Key {
        /// The segment file.
        segment: String,
        /// Its first entry's offset, when it has one.
        offset: Option<u64>,
        /// Why.
        reason: String,
    },
    /// An encrypted entry failed authentication when read.
    #[error("the entry at offset {offset} of {segment}: {reason}")]
    Unsealed {
        /// The segment file.
        segment: String,
        /// The entry's offset.
        offset: u64,
        /// Why.
        reason: seal::Unsealed,
    },
    /// Sealing an entry or a segment key failed.
    #[error("cannot encrypt: {0}")]
    Seal(String),
}

fn io_error(context: impl Into<String>) -> impl FnOnce(io::Error) -> WalError {
    let context = context.into();
    move |source| WalError::Io { context, source }
}

/// Where a recovered entry's payload is (read with [`EntryAt::read`], so a replay need not hold
/// the whole log in memory).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryAt {
    /// Its sequence number.
    pub seq: u64,
    /// Records before it in the log (unknown in segments of the first layout).
    pub first_record: Option<u64>,
    /// Records in it (0 when not counted).
    pub records: u32,
    /// Its segment file.
    pub segment: PathBuf,
    /// Offset of its payload in the segment.
    pub offset: u64,
    /// Payload length.
    pub len: u32,
    /// The key its payload is sealed with and the log's id (`None`: stored plain).
    pub sealed: Option<(seal::SegmentCipher, u64)>,
}

impl EntryAt {
    /// The entry's payload, decrypted when sealed (checked against its checksum and seal at
    /// recovery; its segment is kept until the entry is below the checkpoint).
    pub fn read(&self) -> Result<Vec<u8>, WalError> {
        use std::io::{Seek, SeekFrom};
        let mut payload = vec![0; self.len as usize];
        File::open(&self.segment)
            .and_then(|mut f| f.seek(SeekFrom::Start(self.offset)).and_then(|_| f.read_exact(&mut payload)))
            .map_err(io_error(format!("cannot read {}", self.segment.display())))?;
        self.open(payload)
    }

    /// The payload from the entry's stored bytes.
    fn open(&self, stored: Vec<u8>) -> Result<Vec<u8>, WalError> {
        match &self.sealed {
            None => Ok(stored),
            Some((cipher, log_id)) => cipher.open(*log_id, self.seq, stored).map_err(|reason| WalError::Unsealed {
                segment: file_name(&self.segment),
                offset: self.offset - ENTRY_HEADER as u64,
                reason,
            }),
        }
    }
}

/// What recovery found.
#[derive(Debug, Default)]
pub struct Recovery {
    /// Entries at or above the checkpoint, in order.
    pub entries: Vec<EntryAt>,
    /// Damage, missing entries and torn writes, each with what it cost.
    pub findings: Vec<Finding>,
    /// The checkpoint read (first sequence number not yet delivered).
    pub checkpoint: u64,
}

/// Fault injection for tests: asked before each write to the log's files, it may let only part of
/// the write through and fail it the way a full disk does.
pub trait WriteFaults: Send + Sync + std::fmt::Debug {
    /// `None`: write all `len` bytes. `Some(n)`: write the first `n` (at most `len`), then fail
    /// with "no space left on device".
    fn short_write(&self, len: usize) -> Option<usize>;
}

/// A segment on disk: where its entries start, and its file.
#[derive(Debug, Clone)]
struct Segment {
    first: Position,
    path: PathBuf,
}

/// An open log.
#[derive(Debug)]
pub struct Wal {
    dir: PathBuf,
    id: u64,
    segment_bytes: u64,
    /// Segments in order; the last is the one appended to.
    segments: Vec<Segment>,
    /// The sealed segments at or above the checkpoint, as the checkpoint file remembers them.
    sealed: Vec<SealedSegment>,
    /// `sealed` changed since the checkpoint was last written.
    sealed_changed: bool,
    /// How far the log was acknowledged at the last checkpoint written.
    checkpointed_acked: u64,
    /// The delivered ranges above the frontier at the last checkpoint written.
    checkpointed_delivered: Vec<[u64; 2]>,
    active: File,
    active_len: u64,
    /// Length of the active segment at its last sync.
    synced_len: u64,
    next: Position,
    /// Entries before this are durable.
    synced: Position,
    checkpoint: u64,
    /// Acknowledged once appended ("buffered"): no sync at roll, and everything appended counts as
    /// acknowledged.
    buffered: bool,
    /// Why the log refuses appends until it has put itself right (a failed write it could not cut).
    broken: Option<String>,
    /// A sync failed: the next append starts a new segment.
    roll_before_append: bool,
    faults: Option<Arc<dyn WriteFaults>>,
    /// Makes segment keys (an encrypted log).
    sealer: Option<Arc<seal::Sealer>>,
    /// The active segment's key (an encrypted log).
    cipher: Option<seal::SegmentCipher>,
}

/// A path's file name as text.
fn file_name(path: &Path) -> String {
    path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
}

fn segment_path(dir: &Path, first: u64) -> PathBuf {
    dir.join(format!("{first:020}.wal"))
}

fn sync_dir(dir: &Path) -> Result<(), WalError> {
    crate::folders::sync(dir).map_err(io_error(format!("cannot sync {}", dir.display())))
}

/// The log's identity from `dir/id`, or a new one written durably (temporary file, synced,
/// renamed, folder synced) when there is none. An unreadable one is replaced: the log's entries
/// then look new to sinks that remember origins (replayed again, never lost).
fn read_or_create_id(dir: &Path) -> Result<u64, WalError> {
    let path = dir.join("id");
    if let Ok(text) = std::fs::read_to_string(&path) {
        match u64::from_str_radix(text.trim(), 16) {
            Ok(id) => return Ok(id),
            Err(_) => tracing::warn!(file = %path.display(), "the log's id is unreadable; drawing a new one"),
        }
    }
    let id: u64 = rand::random();
    crate::folders::replace_file(&path, format!("{id:016x}\n").as_bytes())
        .map_err(io_error(format!("cannot write {}", path.display())))?;
    Ok(id)
}

/// Writes `bytes` to `file`, or as much of them as `faults` lets through before failing.
fn write_with_faults(file: &mut File, bytes: &[u8], faults: Option<&Arc<dyn WriteFaults>>) -> io::Result<()> {
    match faults.and_then(|f| f.short_write(bytes.len())) {
        None => file.write_all(bytes),
        Some(n) => {
            file.write_all(&bytes[..n.min(bytes.len())])?;
            Err(io::Error::from_raw_os_error(28)) // ENOSPC
        }
    }
}

/// A checkpoint to make durable.
#[derive(Debug, Clone)]
pub struct Checkpoint {
    dir: PathBuf,
    state: CheckpointState,
}

impl Checkpoint {
    /// Writes it durably: a temporary file, synced, renamed over the old one, the folder synced.
    pub fn write(&self) -> Result<(), WalError> {
        let text = serde_json::to_vec(&self.state).map_err(|e| io_error("cannot write the checkpoint")(e.into()))?;
        crate::folders::replace_file(&self.dir.join("checkpoint"), &text)
            .map_err(io_error("cannot write the checkpoint"))
    }

    /// Deletes `segments` (those [`Wal::checkpointed`] returned, below this written checkpoint),
    /// then syncs the folder.
    pub fn remove_segments(&self, segments: &[PathBuf]) -> Result<(), WalError> {
        for path in segments {
            std::fs::remove_file(path).map_err(io_error(format!("cannot delete {}", path.display())))?;
            remove_key_file(path)?;
        }
        if segments.is_empty() { Ok(()) } else { sync_dir(&self.dir) }
    }
}

/// Deletes the key file of the segment at `segment`, if it has one.
fn remove_key_file(segment: &Path) -> Result<(), WalError> {
    let key = seal::key_path(segment);
    match std::fs::remove_file(&key) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(io_error(format!("cannot delete {}", key.display()))(e)),
        _ => Ok(()),
    }
}

/// Whether the segment's entries are sealed: as its header says, or, when the header is damaged,
/// whether it has a key file.
fn is_sealed(segment: &SegmentOnDisk) -> bool {
    match segment.scan.layout {
        Layout::Current(Some(header)) => header.sealed,
        Layout::Current(None) => seal::key_path(&segment.path).exists(),
        Layout::Legacy => false,
    }
}

/// Gives every recovered entry of an encrypted segment its key and opens it: an entry whose seal
/// fails becomes a [`FindingKind::TamperedEntry`] (and is not replayed); a segment whose key
/// cannot be had is an error, before anything is changed on disk.
fn open_sealed_entries(
    log_id: u64,
    sealer: Option<&seal::Sealer>,
    on_disk: &[SegmentOnDisk],
    analysis: &mut recovery::Analysis,
) -> Result<(), WalError> {
    let mut ciphers = std::collections::HashMap::new();
    for segment in on_disk.iter().filter(|s| is_sealed(s)) {
        let entries: Vec<&EntryAt> = analysis.entries.iter().filter(|e| e.segment == segment.path).collect();
        let Some(first) = entries.first() else { continue };
        let key_error = |reason: String| WalError::Key {
            segment: file_name(&segment.path),
            offset: Some(first.offset - ENTRY_HEADER as u64),
            reason,
        };
        let Some(sealer) = sealer else {
            return Err(key_error(
                "its entries are encrypted, but the pipeline configures no `encryption`; configure the key it was written with"
                    .into(),
            ));
        };
        match sealer.open(&segment.path) {
            Ok(Some(cipher)) => {
                ciphers.insert(segment.path.clone(), cipher);
            }
            Ok(None) => {
                return Err(key_error(format!(
                    "its entries are encrypted and {} is missing",
                    file_name(&seal::key_path(&segment.path))
                )));
            }
            Err(reason) => return Err(key_error(reason)),
        }
    }
    let mut kept = Vec::with_capacity(analysis.entries.len());
    // One segment in memory at a time (the scan read them too, one at a time, and kept none: holding
    // every segment from the scan would cost the whole log in memory).
    let mut bytes: Option<(PathBuf, Vec<u8>)> = None;
    for mut entry in std::mem::take(&mut analysis.entries) {
        let Some(cipher) = ciphers.get(&entry.segment) else {
            kept.push(entry);
            continue;
        };
        entry.sealed = Some((cipher.clone(), log_id));
        if bytes.as_ref().is_none_or(|(path, _)| *path != entry.segment) {
            let mut whole = Vec::new();
            File::open(&entry.segment)
                .and_then(|mut f| f.read_to_end(&mut whole))
                .map_err(io_error(format!("cannot read {}", entry.segment.display())))?;
            bytes = Some((entry.segment.clone(), whole));
        }
        let stored = bytes
            .as_ref()
            .and_then(|(_, whole)| whole.get(entry.offset as usize..entry.offset as usize + entry.len as usize))
            .map(<[u8]>::to_vec)
            .unwrap_or_default();
        match entry.open(stored) {
            Ok(_) => kept.push(entry),
            Err(WalError::Unsealed { .. }) => analysis.findings.push(Finding::tampered(
                &entry.segment,
                entry.offset - ENTRY_HEADER as u64,
                u64::from(entry.len) + ENTRY_HEADER as u64,
                entry.seq,
                entry.records,
            )),
            Err(e) => return Err(e),
        }
    }
    analysis.entries = kept;
    Ok(())
}

/// The checkpoint file as read at start: its state, or why it could not be read.
fn read_checkpoint(dir: &Path) -> Result<(CheckpointState, Option<String>), WalError> {
    let text = match std::fs::read_to_string(dir.join("checkpoint")) {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok((CheckpointState::default(), None)),
        Err(e) if e.kind() == io::ErrorKind::InvalidData => String::new(),
        Err(e) => return Err(io_error("cannot read the checkpoint")(e)),
    };
    if let Ok(state) = serde_json::from_str::<CheckpointState>(&text) {
        return Ok((state, None));
    }
    // The first layout wrote the frontier alone.
    if let Ok(frontier) = text.trim().parse::<u64>() {
        return Ok((CheckpointState { frontier, frontier_record: None, ..CheckpointState::default() }, None));
    }
    let unreadable = CheckpointState { frontier: 0, frontier_record: None, ..CheckpointState::default() };
    Ok((unreadable, Some(format!("{} bytes that are not a checkpoint", text.len()))))
}

/// Reads and scans every segment file in `dir`, in order.
fn scan_segments(dir: &Path) -> Result<Vec<SegmentOnDisk>, WalError> {
    let mut named: Vec<(u64, PathBuf)> = std::fs::read_dir(dir)
        .map_err(io_error(format!("cannot list {}", dir.display())))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter_map(|p| {
            let first = p.file_name()?.to_str()?.strip_suffix(".wal")?.parse().ok()?;
            Some((first, p))
        })
        .collect();
    named.sort();
    named
        .into_iter()
        .map(|(name_seq, path)| {
            let mut bytes = Vec::new();
            File::open(&path)
                .and_then(|mut f| f.read_to_end(&mut bytes))
                .map_err(io_error(format!("cannot read {}", path.display())))?;
            Ok(SegmentOnDisk { scan: format::scan(&bytes), path, name_seq })
        })
        .collect()
}

impl Wal {
    /// Opens (creating if needed) the log in `dir`, recovering what it holds.
    pub fn open(dir: &Path, segment_bytes: u64) -> Result<(Wal, Recovery), WalError> {
        Self::open_sealed(dir, segment_bytes, None)
    }

    /// Opens the log in `dir`, encrypting what is appended with segment keys wrapped by `keys`
    /// when given (see [`seal`]); encrypted segments need it to be read.
    pub fn open_sealed(
        dir: &Path,
        segment_bytes: u64,
        keys: Option<Arc<dyn seal::LogKeys>>,
    ) -> Result<(Wal, Recovery), WalError> {
        // Synced into its holder: a log folder lost in a crash of the machine would take every
        // acknowledged record with it.
        crate::folders::create_dir_synced(dir).map_err(io_error(format!("cannot create {}", dir.display())))?;
        let id = read_or_create_id(dir)?;
        let (checkpoint, unreadable) = read_checkpoint(dir)?;
        let _ = std::fs::remove_file(dir.join("checkpoint.tmp"));
        let on_disk = scan_segments(dir)?;
        let mut analysis = recovery::analyze(&checkpoint, &on_disk);
        if let Some(detail) = unreadable {
            analysis.findings.insert(0, Finding::unreadable_checkpoint(detail));
        }
        let sealer = keys.map(|keys| Arc::new(seal::Sealer::new(keys)));
        open_sealed_entries(id, sealer.as_deref(), &on_disk, &mut analysis)?;
        recovery::quarantine(dir, &mut analysis.findings);
        let next = analysis.next;
        let mut segments: Vec<Segment> = on_disk
            .iter()
            .map(|s| {
                let first = match s.scan.layout {
                    Layout::Current(Some(h)) => h.first,
                    _ => Position { seq: s.first_seq(), record: 0 },
                };
                Segment { first, path: s.path.clone() }
            })
            .collect();
        let mut sealed = analysis.sealed;
        // Appends go to a new segment unless the last one is an untouched header.
        // (With the same encryption: a sealed header with its key, or a plain one without.)
        let reusable = on_disk.last().filter(|s| {
            s.scan.entries.is_empty()
                && s.scan.damaged.is_empty()
                && s.scan.len == SEGMENT_HEADER as u64
                && matches!(s.scan.layout, Layout::Current(Some(h)) if h.first == next && h.sealed == sealer.is_some())
        });
        let reused_cipher = match (reusable, &sealer) {
            (Some(last), Some(sealer)) => sealer.open(&last.path).ok().flatten(),
            _ => None,
        };
        let reusable = reusable.filter(|_| sealer.is_none() || reused_cipher.is_some());
        let (active, active_len, cipher) = match reusable {
            Some(last) => {
                let file = OpenOptions::new()
                    .append(true)
                    .open(&last.path)
                    .map_err(io_error(format!("cannot open {}", last.path.display())))?;
                (file, SEGMENT_HEADER as u64, reused_cipher)
            }
            None => {
                let path = segment_path(dir, next.seq);
                if let Some(i) = on_disk.iter().position(|s| s.path == path) {
                    // A file under the new segment's name holds nothing readable at or above
                    // `next` (else `next` would be past it): keep its bytes aside, then replace it.
                    let mut whole = Finding::replaced_segment(&on_disk[i].path, on_disk[i].scan.len);
                    recovery::quarantine(dir, std::slice::from_mut(&mut whole));
                    std::fs::remove_file(&path).map_err(io_error(format!("cannot replace {}", path.display())))?;
                    remove_key_file(&path)?;
                    segments.remove(i);
                    sealed.retain(|s| s.name != whole.segment);
                }
                if let Some(last) = on_disk.iter().rfind(|s| s.path != path) {
                    // The segment appended to before this start is sealed now.
                    let name = file_name(&last.path);
                    if !sealed.iter().any(|s| s.name == name) {
                        sealed.push(SealedSegment {
                            name,
                            first_seq: last.first_seq(),
                            end_seq: next.seq,
                            first_record: match last.scan.layout {
                                Layout::Current(Some(h)) => Some(h.first.record),
                                _ => None,
                            },
                            end_record: Some(next.record),
                            bytes: last.scan.len,
                        });
                    }
                }
                let header = SegmentHeader { first: next, acked_before: next, sealed: sealer.is_some() };
                let (file, cipher) = Self::create_segment(dir, &path, &header, None, sealer.as_deref())?;
                segments.push(Segment { first: next, path });
                (file, SEGMENT_HEADER as u64, cipher)
            }
        };
        let findings = std::mem::take(&mut analysis.findings);
        let sealed_changed = findings.iter().any(|f| !f.known);
        let wal = Wal {
            dir: dir.to_path_buf(),
            id,
            segment_bytes: segment_bytes.max(1),
            segments,
            sealed,
            sealed_changed,
            checkpointed_acked: next.seq,
            checkpointed_delivered: checkpoint.delivered.clone(),
            active,
            active_len,
            synced_len: active_len,
            next,
            synced: next,
            checkpoint: checkpoint.frontier,
            buffered: false,
            broken: None,
            roll_before_append: false,
            faults: None,
            sealer,
            cipher,
        };
        if sealed_changed {
            // Forget what was reported: a later start compares against what is left.
            let frontier = Position { seq: checkpoint.frontier, record: checkpoint.frontier_record.unwrap_or(0) };
            let state = wal.checkpoint_state(frontier, checkpoint.delivered.clone());
            if let Err(e) = (Checkpoint { dir: dir.to_path_buf(), state }).write() {
                tracing::error!(error = %e, "cannot rewrite the log checkpoint after recovery");
            }
        }
        Ok((wal, Recovery { entries: analysis.entries, findings, checkpoint: checkpoint.frontier }))
    }

    /// Creates a segment file with its header, synced, and syncs the folder; with a sealer, its
    /// key file first.
    fn create_segment(
        dir: &Path,
        path: &Path,
        header: &SegmentHeader,
        faults: Option<&Arc<dyn WriteFaults>>,
        sealer: Option<&seal::Sealer>,
    ) -> Result<(File, Option<seal::SegmentCipher>), WalError> {
        let cipher = sealer.map(|sealer| sealer.create(path)).transpose().map_err(WalError::Seal)?;
        let mut file = OpenOptions::new()
            .create_new(true)
            .append(true)
            .open(path)
            .map_err(io_error(format!("cannot create {}", path.display())))?;
        let written = write_with_faults(&mut file, &format::encode_segment_header(header), faults)
            .and_then(|()| file.sync_data())
            .map_err(io_error(format!("cannot create {}", path.display())))
            .and_then(|()| sync_dir(dir));
        if let Err(e) = written {
            drop(file);
            let _ = std::fs::remove_file(path);
            let _ = remove_key_file(path);
            return Err(e);
        }
        Ok((file, cipher))
    }

    /// The log's identity (see the module docs).
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Injects write faults (tests).
    pub fn set_faults(&mut self, faults: Arc<dyn WriteFaults>) {
        self.faults = Some(faults);
    }

    /// Acknowledge on append ("buffered": a process crash keeps what was written, a power loss may
    /// not): segments are not synced at roll, and everything appended counts as acknowledged.
    pub fn set_buffered(&mut self, buffered: bool) {
        self.buffered = buffered;
    }

    /// Where the log stands: every entry before it was acknowledged.
    fn acked(&self) -> Position {
        if self.buffered { self.next } else { self.synced }
    }

    /// Appends an entry of `records` records (not yet durable: see [`Wal::sync`]); returns its
    /// position (sequence number and the number of its first record). A failed append leaves the
    /// log as it was.
    pub fn append(&mut self, payload: &[u8], records: u32) -> Result<Position, WalError> {
        if payload.len() > MAX_PAYLOAD {
            return Err(WalError::TooLarge(payload.len()));
        }
        self.put_right()?;
        if self.roll_before_append || self.active_len >= self.segment_bytes && self.active_len > SEGMENT_HEADER as u64 {
            self.roll()?;
        }
        let at = self.next;
        let sealed = match &self.cipher {
            Some(cipher) => Some(cipher.seal(self.id, at.seq, payload).map_err(WalError::Seal)?),
            None => None,
        };
        let payload = sealed.as_deref().unwrap_or(payload);
        let mut entry = Vec::with_capacity(ENTRY_HEADER + payload.len());
        format::encode_entry(at.seq, at.record, records, payload, &mut entry);
        if let Err(e) = write_with_faults(&mut self.active, &entry, self.faults.as_ref()) {
            // Leave the log as it was: cut what this append wrote. If even that fails, refuse
            // appends until it succeeds (a later entry after a partial one would be lost at start).
            if let Err(cut) = self.active.set_len(self.active_len) {
                self.broken = Some(format!("a failed append could not be cut off: {cut}"));
            }
            return Err(io_error("cannot append to the log")(e));
        }
        self.active_len += entry.len() as u64;
        self.next = Position { seq: at.seq + 1, record: at.record + u64::from(records) };
        Ok(at)
    }

    /// Puts the log right after a failed append it could not cut off: cuts it now, or starts a
    /// new segment; refuses while neither works.
    fn put_right(&mut self) -> Result<(), WalError> {
        let Some(why) = self.broken.clone() else { return Ok(()) };
        if self.active.set_len(self.active_len).is_ok() {
            self.broken = None;
            return Ok(());
        }
        // The partial bytes stay at the end of a sealed segment: recovery sees a torn write
        // whose number the new segment reuses, so nothing acknowledged is behind it.
        match self.roll() {
            Ok(()) => {
                self.broken = None;
                Ok(())
            }
            Err(e) => Err(WalError::Io {
                context: format!("the log refuses appends until it is put right ({why})"),
                source: io::Error::other(e.to_string()),
            }),
        }
    }

    /// Makes every appended entry durable (one fsync for all of them: group commit).
    pub fn sync(&mut self) -> Result<(), WalError> {
        if self.synced.seq < self.next.seq {
            if let Err(e) = self.active.sync_data() {
                self.sync_failed();
                return Err(io_error("cannot sync the log")(e));
            }
            self.synced_len = self.active_len;
            self.synced = self.next;
        }
        Ok(())
    }

    /// What a concurrent syncer needs: a handle on the active segment and the position its sync
    /// will cover (every entry before it). Sync the handle without holding the log, then
    /// [`Wal::mark_synced`] (or [`Wal::sync_failed`]): appends go on meanwhile (group commit).
    pub fn sync_point(&self) -> Result<(File, Position), WalError> {
        let file = self.active.try_clone().map_err(io_error("cannot sync the log"))?;
        Ok((file, self.next))
    }

    /// Records that entries before `point` are durable (a [`Wal::sync_point`]'s handle was synced;
    /// a roll in between synced the older segment itself).
    pub fn mark_synced(&mut self, point: Position) {
        if point.seq > self.synced.seq {
            self.synced = point;
        }
    }

    /// Records that a sync failed: what it covered is not durable, and the file may have lost
    /// pages, so the next append starts a new segment (whose header says how far the log was
    /// acknowledged, so recovery does not count the unsynced entries as lost).
    pub fn sync_failed(&mut self) {
        self.roll_before_append = true;
    }

    /// Seals the active segment (synced unless buffered or after a failed sync) and starts the next.
    fn roll(&mut self) -> Result<(), WalError> {
        if !self.buffered && !self.roll_before_append {
            self.sync()?;
        }
        let path = segment_path(&self.dir, self.next.seq);
        let header = SegmentHeader { first: self.next, acked_before: self.acked(), sealed: self.sealer.is_some() };
        let (file, cipher) =
            Self::create_segment(&self.dir, &path, &header, self.faults.as_ref(), self.sealer.as_deref())?;
        if let Some(last) = self.segments.last() {
            self.sealed.push(SealedSegment {
                name: file_name(&last.path),
                first_seq: last.first.seq,
                end_seq: self.next.seq,
                first_record: Some(last.first.record),
                end_record: Some(self.next.record),
                bytes: self.active_len,
            });
            self.sealed_changed = true;
        }
        self.active = file;
        self.cipher = cipher;
        self.segments.push(Segment { first: self.next, path });
        self.active_len = SEGMENT_HEADER as u64;
        self.synced_len = self.active_len;
        self.roll_before_append = false;
        Ok(())
    }

    fn checkpoint_state(&self, frontier: Position, delivered: Vec<[u64; 2]>) -> CheckpointState {
        CheckpointState {
            frontier: frontier.seq,
            frontier_record: Some(frontier.record),
            acked_before: Some(self.acked()),
            sealed: self.sealed.iter().filter(|s| s.end_seq > frontier.seq).cloned().collect(),
            delivered,
        }
    }

    /// Records that every entry below `frontier` is delivered, and those in the `delivered`
    /// ranges above it: writes the checkpoint durably, then deletes the segments wholly below it
    /// (never the active one).
    pub fn truncate_below(&mut self, frontier: Position, delivered: &[std::ops::Range<u64>]) -> Result<(), WalError> {
        let Some(checkpoint) = self.checkpoint_to(frontier, delivered) else { return Ok(()) };
        checkpoint.write()?;
        let below = self.checkpointed(&checkpoint);
        checkpoint.remove_segments(&below)
    }

    /// The checkpoint to write for `frontier` (the first entry not delivered, with the number of
    /// its first record) and the ranges of entries above it that are delivered too (a restart does
    /// not replay them; at most [`MAX_DELIVERED_RANGES`] are kept, the rest is replayed), or `None`
    /// if nothing would change: the frontier and the delivered ranges did not move, no segment was
    /// sealed, and nothing more was acknowledged (the checkpoint also records how far the log was
    /// acknowledged, which is how recovery tells a lost entry from an interrupted write). Writing
    /// it ([`Checkpoint::write`]) needs no access to the log, so appends go on meanwhile; then
    /// [`Wal::checkpointed`] and [`Checkpoint::remove_segments`].
    pub fn checkpoint_to(&self, frontier: Position, delivered: &[std::ops::Range<u64>]) -> Option<Checkpoint> {
        let frontier = if frontier.seq >= self.next.seq { self.next } else { frontier };
        let delivered: Vec<[u64; 2]> = delivered
            .iter()
            .filter(|r| r.start >= frontier.seq && r.start < r.end && r.end <= self.next.seq)
            .take(MAX_DELIVERED_RANGES)
            .map(|r| [r.start, r.end])
            .collect();
        let changed = frontier.seq > self.checkpoint
            || delivered != self.checkpointed_delivered
            || self.sealed_changed
            || self.acked().seq > self.checkpointed_acked;
        changed.then(|| Checkpoint { dir: self.dir.clone(), state: self.checkpoint_state(frontier, delivered) })
    }

    /// Takes a written checkpoint into account; returns the segments now wholly below it, which
    /// the caller deletes with [`Checkpoint::remove_segments`] (only after the checkpoint is durable).
    pub fn checkpointed(&mut self, checkpoint: &Checkpoint) -> Vec<PathBuf> {
        self.checkpoint = self.checkpoint.max(checkpoint.state.frontier);
        self.sealed_changed = false;
        if let Some(acked) = checkpoint.state.acked_before {
            self.checkpointed_acked = self.checkpointed_acked.max(acked.seq);
        }
        self.checkpointed_delivered.clone_from(&checkpoint.state.delivered);
        let mut below = Vec::new();
        // A segment is wholly below the checkpoint when the next one starts at or below it.
        while self.segments.len() > 1 && self.segments[1].first.seq <= self.checkpoint {
            below.push(self.segments.remove(0).path);
        }
        let checkpoint = self.checkpoint;
        self.sealed.retain(|s| s.end_seq > checkpoint);
        below
    }

    /// Where the next entry goes.
    pub fn next(&self) -> Position {
        self.next
    }

    /// The next sequence number.
    pub fn next_seq(&self) -> u64 {
        self.next.seq
    }

    /// Sequence numbers below this are durable.
    pub fn synced_seq(&self) -> u64 {
        self.synced.seq
    }

    /// The durable checkpoint.
    pub fn checkpoint(&self) -> u64 {
        self.checkpoint
    }

    /// Bytes of the segment files on disk.
    pub fn disk_bytes(&self) -> u64 {
        self.segments.iter().filter_map(|s| std::fs::metadata(&s.path).ok()).map(|m| m.len()).sum()
    }

    /// Segment files on disk, oldest first.
    pub fn segments(&self) -> Vec<PathBuf> {
        self.segments.iter().map(|s| s.path.clone()).collect()
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
    use std::collections::{BTreeMap, BTreeSet};
    use std::sync::Mutex;

    /// Fails the next write after letting `n` bytes through, once.
    #[derive(Debug, Default)]
    struct OneShortWrite(Mutex<Option<usize>>);

    impl WriteFaults for OneShortWrite {
        fn short_write(&self, _len: usize) -> Option<usize> {
            self.0.lock().unwrap().take()
        }
    }

    #[derive(Debug, Clone)]
    enum Op {
        Append(Vec<u8>, u32),
        /// An append that fails after writing `keep` of its bytes (a full disk).
        FailAppend(Vec<u8>, u16),
        Sync,
        /// Deliver up to `n % 8` entries past the frontier, and the durable entries above it that
        /// `mask` picks.
        Deliver(u8, u64),
        /// Crash: keep `keep` of the unsynced bytes of the active segment, optionally flip a bit in
        /// what is kept, optionally undo the last segment deletion.
        Crash {
            keep: u16,
            flip: Option<u16>,
            undo_unlink: bool,
        },
        /// Damage at rest, then a restart: flip a byte of synced data.
        Corrupt {
            segment: u8,
            at: u32,
        },
        /// Damage at rest, then a restart: a sealed segment deleted.
        DeleteSegment(u8),
        /// Damage at rest, then a restart: a sealed segment cut short.
        Shorten {
            segment: u8,
            by: u32,
        },
    }

    fn op() -> impl Strategy<Value = Op> {
        let payload = || proptest::collection::vec(any::<u8>(), 0..200);
        prop_oneof![
            6 => (payload(), 0u32..5).prop_map(|(p, r)| Op::Append(p, r)),
            1 => (payload(), any::<u16>()).prop_map(|(p, k)| Op::FailAppend(p, k)),
            3 => Just(Op::Sync),
            1 => (any::<u8>(), any::<u64>()).prop_map(|(n, mask)| Op::Deliver(n, mask)),
            1 => (any::<u16>(), proptest::option::of(any::<u16>()), any::<bool>())
                .prop_map(|(keep, flip, undo_unlink)| Op::Crash { keep, flip, undo_unlink }),
            1 => (any::<u8>(), any::<u32>()).prop_map(|(segment, at)| Op::Corrupt { segment, at }),
            1 => any::<u8>().prop_map(Op::DeleteSegment),
            1 => (any::<u8>(), any::<u32>()).prop_map(|(segment, by)| Op::Shorten { segment, by }),
        ]
    }

    /// What the test knows: every entry appended (payload, position, records), which are durable,
    /// which were lost to damage it caused.
    #[derive(Default)]
    struct Model {
        appended: BTreeMap<u64, (Vec<u8>, u64, u32)>,
        durable: BTreeSet<u64>,
        /// Entries the test damaged (their loss must be reported).
        damaged: BTreeSet<u64>,
        /// Entries reported lost at some start (later starts may report them again, as known, or
        /// find them again if a later flip undid the damage).
        lost: BTreeMap<u64, (Vec<u8>, u64, u32)>,
        /// The first record number of every entry ever appended.
        positions: BTreeMap<u64, u64>,
        /// Entries above the frontier the last checkpoint records as delivered.
        delivered_above: BTreeSet<u64>,
    }

    impl Model {
        fn records_of(&self, seq: u64) -> u64 {
            u64::from(self.appended.get(&seq).or_else(|| self.lost.get(&seq)).map_or(0, |e| e.2))
        }
    }

    /// The entries of segment `path` in the clean log (before the damage), by byte range.
    fn entries_of(path: &Path) -> Vec<(u64, std::ops::Range<u64>)> {
        let bytes = std::fs::read(path).unwrap();
        format::scan(&bytes).entries.iter().map(|e| (e.seq, e.offset - ENTRY_HEADER as u64..e.end())).collect()
    }

    /// Reopens the log after a crash or damage and checks recovery against the model.
    fn reopen(dir: &Path, wal: &mut Wal, model: &mut Model) -> Result<(), TestCaseError> {
        let checkpoint = wal.checkpoint();
        let (reopened, recovery) = Wal::open(dir, 300).unwrap();
        *wal = reopened;
        prop_assert_eq!(recovery.checkpoint, checkpoint);
        let seqs: Vec<u64> = recovery.entries.iter().map(|e| e.seq).collect();
        prop_assert!(seqs.windows(2).all(|w| w[0] < w[1]), "out of order: {:?}", seqs);
        for entry in &recovery.entries {
            prop_assert!(entry.seq >= checkpoint);
            prop_assert!(!model.delivered_above.contains(&entry.seq), "delivered entry {} replayed", entry.seq);
            let (payload, first_record, records) =
                model.appended.get(&entry.seq).or_else(|| model.lost.get(&entry.seq)).cloned().unwrap_or_default();
            prop_assert_eq!(&payload, &entry.read().unwrap(), "entry {}", entry.seq);
            prop_assert_eq!((entry.first_record, entry.records), (Some(first_record), records));
        }
        let recovered: BTreeSet<u64> = seqs.iter().copied().collect();
        let mut reported = BTreeSet::new();
        for f in &recovery.findings {
            let Some(range) = &f.seqs else { continue };
            let lost: Vec<u64> = (range.start..range.start + f.lost_entries).collect();
            if let Some(records) = f.lost_records {
                let expected: u64 = lost.iter().map(|s| model.records_of(*s)).sum();
                prop_assert_eq!(records, expected, "records of {}", f);
            }
            reported.extend(lost);
        }
        for &seq in model.durable.range(checkpoint..) {
            if model.delivered_above.contains(&seq) {
                prop_assert!(!reported.contains(&seq), "delivered entry {} reported lost", seq);
            } else if model.damaged.contains(&seq) || model.lost.contains_key(&seq) {
                prop_assert!(
                    recovered.contains(&seq) || reported.contains(&seq),
                    "lost entry {} not reported: {:?}",
                    seq,
                    recovery.findings
                );
            } else {
                prop_assert!(
                    recovered.contains(&seq),
                    "durable entry {} lost; recovered {:?} {:?}",
                    seq,
                    seqs,
                    recovery.findings
                );
            }
        }
        for seq in &reported {
            // An entry not yet durable may be reported lost (a crash tore it behind a later one);
            // a durable one only if the test damaged it.
            prop_assert!(
                !model.durable.contains(seq) || model.damaged.contains(seq) || model.lost.contains_key(seq),
                "durable entry {} reported lost but the test did not damage it: {:?}",
                seq,
                recovery.findings
            );
        }
        for seq in reported {
            if let Some(entry) = model.appended.get(&seq).cloned() {
                model.lost.insert(seq, entry);
            }
        }
        for seq in &recovered {
            if let Some(entry) = model.lost.remove(seq) {
                model.appended.insert(*seq, entry);
            }
        }
        // What was not recovered is gone (or delivered); what was is on disk now.
        model.appended.retain(|s, _| *s < checkpoint || recovered.contains(s));
        model.durable = model.appended.keys().copied().collect();
        model.damaged.clear();
        prop_assert!(wal.next_seq() >= seqs.last().map_or(0, |s| s + 1));
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]

        /// The log against a model: whatever the crashes, failed appends and damage at rest, every
        /// durable entry at or above the durable checkpoint comes back, in order, once, with its
        /// payload and record counts, unless the test damaged it, in which case its loss is
        /// reported with exactly its records; nothing undamaged is reported lost; nothing that was
        /// never appended comes back.
        #[test]
        fn recovers_every_durable_entry_and_reports_exactly_what_damage_cost(
            ops in proptest::collection::vec(op(), 1..70),
            buffered in any::<bool>(),
        ) {
            let dir = tempfile::tempdir().unwrap();
            let (mut wal, recovery) = Wal::open(dir.path(), 300).unwrap();
            let faults = Arc::new(OneShortWrite::default());
            wal.set_faults(faults.clone());
            wal.set_buffered(buffered);
            prop_assert!(recovery.entries.is_empty());
            let mut model = Model::default();
            let mut saved_segments: Vec<(PathBuf, Vec<u8>)> = Vec::new();
            for op in ops {
                match op {
                    Op::Append(payload, records) => {
                        let at = wal.append(&payload, records).unwrap();
                        model.appended.insert(at.seq, (payload, at.record, records));
                        model.positions.insert(at.seq, at.record);
                    }
                    Op::FailAppend(payload, keep) => {
                        *faults.0.lock().unwrap() = Some(usize::from(keep) % (payload.len() + ENTRY_HEADER));
                        let before = wal.next();
                        prop_assert!(wal.append(&payload, 1).is_err());
                        prop_assert_eq!(wal.next(), before);
                        *faults.0.lock().unwrap() = None;
                    }
                    Op::Sync => {
                        wal.sync().unwrap();
                        let synced = wal.synced_seq();
                        model.durable.extend(model.appended.range(..synced).map(|(s, _)| *s));
                    }
                    Op::Deliver(n, mask) => {
                        // Only what is durable (or gone) can have been delivered.
                        let mut frontier = wal.checkpoint();
                        for _ in 0..n % 8 {
                            if frontier >= wal.next_seq() || model.appended.contains_key(&frontier) && !model.durable.contains(&frontier) {
                                break;
                            }
                            frontier += 1;
                        }
                        // The frontier is the first entry still pending: never a delivered or lost one.
                        while frontier < wal.next_seq()
                            && (model.delivered_above.contains(&frontier) || !model.appended.contains_key(&frontier))
                        {
                            frontier += 1;
                        }
                        let record = model.positions.get(&frontier).copied().filter(|_| frontier < wal.next_seq()).unwrap_or(wal.next().record);
                        saved_segments = wal.segments().iter().map(|p| (p.clone(), std::fs::read(p).unwrap())).collect();
                        // Once delivered, always delivered (as the pending set of the log's user).
                        let picked = model.durable.range(frontier + 1..).copied().filter(|s| mask >> (s % 64) & 1 == 1);
                        let above: BTreeSet<u64> = picked
                            .chain(model.delivered_above.range(frontier + 1..).copied())
                            .filter(|s| !model.damaged.contains(s))
                            .collect();
                        let ranges: Vec<std::ops::Range<u64>> = above.iter().map(|&s| s..s + 1).collect();
                        wal.truncate_below(Position { seq: frontier, record }, &ranges).unwrap();
                        model.delivered_above = above;
                    }
                    Op::Crash { keep, flip, undo_unlink } => {
                        let active = wal.segments().last().unwrap().clone();
                        let (len, synced) = wal.active_lengths();
                        // Lose or tear the unsynced tail.
                        let kept = synced + u64::from(keep) % (len - synced + 1);
                        OpenOptions::new().write(true).open(&active).unwrap().set_len(kept).unwrap();
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
                        saved_segments.clear();
                        reopen(dir.path(), &mut wal, &mut model)?;
                        wal.set_faults(faults.clone());
                        wal.set_buffered(buffered);
                    }
                    Op::Corrupt { segment, at } => {
                        wal.sync().unwrap();
                        model.durable.extend(model.appended.keys().copied());
                        // As the checkpoint thread does within half a second: record how far the
                        // log is acknowledged.
                        let frontier = wal.checkpoint();
                        let record = model.positions.get(&frontier).copied().filter(|_| frontier < wal.next_seq()).unwrap_or(wal.next().record);
                        let ranges: Vec<std::ops::Range<u64>> =
                            model.delivered_above.range(frontier + 1..).map(|&s| s..s + 1).collect();
                        wal.truncate_below(Position { seq: frontier, record }, &ranges).unwrap();
                        let segments = wal.segments();
                        let path = segments[usize::from(segment) % segments.len()].clone();
                        let mut bytes = std::fs::read(&path).unwrap();
                        if bytes.is_empty() {
                            continue;
                        }
                        let at = at as usize % bytes.len();
                        if let Some((seq, _)) = entries_of(&path).into_iter().find(|(_, r)| r.contains(&(at as u64))) {
                            model.damaged.insert(seq);
                        }
                        bytes[at] ^= 0x5a;
                        std::fs::write(&path, bytes).unwrap();
                        saved_segments.clear();
                        reopen(dir.path(), &mut wal, &mut model)?;
                        wal.set_faults(faults.clone());
                        wal.set_buffered(buffered);
                    }
                    Op::DeleteSegment(segment) | Op::Shorten { segment, .. } if wal.segments().len() < 2 => {
                        let _ = segment;
                    }
                    Op::DeleteSegment(segment) => {
                        let segments = wal.segments();
                        let path = segments[usize::from(segment) % (segments.len() - 1)].clone();
                        model.damaged.extend(entries_of(&path).into_iter().map(|(s, _)| s));
                        std::fs::remove_file(&path).unwrap();
                        saved_segments.clear();
                        reopen(dir.path(), &mut wal, &mut model)?;
                        wal.set_faults(faults.clone());
                        wal.set_buffered(buffered);
                    }
                    Op::Shorten { segment, by } => {
                        let segments = wal.segments();
                        let path = segments[usize::from(segment) % (segments.len() - 1)].clone();
                        let len = std::fs::metadata(&path).unwrap().len();
                        let new_len = len - u64::from(by) % (len + 1);
                        model.damaged.extend(entries_of(&path).into_iter().filter(|(_, r)| r.end > new_len).map(|(s, _)| s));
                        OpenOptions::new().write(true).open(&path).unwrap().set_len(new_len).unwrap();
                        saved_segments.clear();
                        reopen(dir.path(), &mut wal, &mut model)?;
                        wal.set_faults(faults.clone());
                        wal.set_buffered(buffered);
                    }
                }
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Fuzz: random files as segments and checkpoint, and valid logs with random bytes
        /// overwritten anywhere (headers, checkpoint included): recovery always opens the log,
        /// never panics, and a second start finds the same entries.
        #[test]
        fn recovery_opens_any_bytes(
            files in proptest::collection::vec((0u64..50, proptest::collection::vec(any::<u8>(), 0..600)), 0..4),
            checkpoint in proptest::option::of(proptest::collection::vec(any::<u8>(), 0..80)),
            valid in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..120), 0..20),
            scribbles in proptest::collection::vec((any::<u16>(), any::<u16>(), any::<u8>()), 0..8),
        ) {
            let dir = tempfile::tempdir().unwrap();
            {
                let (mut wal, _) = Wal::open(dir.path(), 400).unwrap();
                for payload in &valid {
                    wal.append(payload, 1).unwrap();
                }
                wal.sync().unwrap();
                wal.truncate_below(Position { seq: 0, record: 0 }, &[]).unwrap();
            }
            for (first, bytes) in &files {
                std::fs::write(dir.path().join(format!("{first:020}.wal")), bytes).unwrap();
            }
            if let Some(text) = &checkpoint {
                std::fs::write(dir.path().join("checkpoint"), text).unwrap();
            }
            let mut paths: Vec<PathBuf> = std::fs::read_dir(dir.path()).unwrap().flatten().map(|e| e.path()).filter(|p| p.is_file()).collect();
            paths.sort();
            for (file, at, value) in scribbles {
                let path = &paths[usize::from(file) % paths.len()];
                let mut bytes = std::fs::read(path).unwrap();
                if !bytes.is_empty() {
                    let at = usize::from(at) % bytes.len();
                    bytes[at] = value;
                    std::fs::write(path, bytes).unwrap();
                }
            }
            let (_, first) = Wal::open(dir.path(), 400).unwrap();
            let (_, second) = Wal::open(dir.path(), 400).unwrap();
            let seqs = |r: &Recovery| r.entries.iter().map(|e| e.seq).collect::<Vec<_>>();
            prop_assert_eq!(seqs(&first), seqs(&second));
            for entry in &first.entries {
                prop_assert!(entry.read().is_ok());
            }
        }
    }

    #[test]
    fn a_log_keeps_its_identity_across_restarts_and_a_new_log_draws_another() {
        let (dir, other) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let id = Wal::open(dir.path(), 1 << 20).unwrap().0.id();
        assert_eq!(Wal::open(dir.path(), 1 << 20).unwrap().0.id(), id);
        assert_ne!(Wal::open(other.path(), 1 << 20).unwrap().0.id(), id);
        // An unreadable identity is replaced (entries look new: replayed again, not lost).
        std::fs::write(dir.path().join("id"), "not hex").unwrap();
        let replaced = Wal::open(dir.path(), 1 << 20).unwrap().0.id();
        assert_ne!(replaced, id);
        assert_eq!(Wal::open(dir.path(), 1 << 20).unwrap().0.id(), replaced);
    }

    #[test]
    fn a_torn_tail_is_kept_aside_and_appends_go_to_a_new_segment() {
        let dir = tempfile::tempdir().unwrap();
        let (mut wal, _) = Wal::open(dir.path(), 1 << 20).unwrap();
        for i in 0..3u8 {
            wal.append(&[i; 10], 1).unwrap();
        }
        wal.sync().unwrap();
        let segment = wal.segments()[0].clone();
        let len = std::fs::metadata(&segment).unwrap().len();
        drop(wal);
        let mut file = OpenOptions::new().append(true).open(&segment).unwrap();
        file.write_all(&[7u8; 9]).unwrap();
        drop(file);
        let (mut wal, recovery) = Wal::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(recovery.entries.len(), 3);
        assert_eq!(recovery.findings.len(), 1, "{:?}", recovery.findings);
        let torn = &recovery.findings[0];
        assert_eq!(
            (torn.kind, torn.offset, torn.bytes, torn.lost_entries),
            (FindingKind::DamagedBytes, Some(len), Some(9), 0)
        );
        assert_eq!(std::fs::read(torn.quarantined.as_ref().unwrap()).unwrap(), vec![7u8; 9]);
        // The segment is untouched; the next entry goes to a new one.
        assert_eq!(std::fs::metadata(&segment).unwrap().len(), len + 9);
        assert_eq!(wal.append(b"next", 1).unwrap().seq, 3);
        assert_eq!(wal.segments().len(), 2);
        wal.sync().unwrap();
        drop(wal);
        let (_, recovery) = Wal::open(dir.path(), 1 << 20).unwrap();
        let last = recovery.entries.last().unwrap();
        assert_eq!((last.seq, last.read().unwrap()), (3, b"next".to_vec()));
        assert!(recovery.findings.iter().all(|f| f.known), "{:?}", recovery.findings);
    }

    #[test]
    fn a_failed_append_is_cut_off_and_later_appends_survive_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let (mut wal, _) = Wal::open(dir.path(), 1 << 20).unwrap();
        let faults = Arc::new(OneShortWrite::default());
        wal.set_faults(faults.clone());
        wal.append(b"before", 2).unwrap();
        *faults.0.lock().unwrap() = Some(20);
        assert!(matches!(wal.append(&[1; 100], 5), Err(WalError::Io { .. })));
        assert_eq!(wal.append(b"after", 3).unwrap(), Position { seq: 1, record: 2 });
        wal.sync().unwrap();
        drop(wal);
        let (_, recovery) = Wal::open(dir.path(), 1 << 20).unwrap();
        let got: Vec<Vec<u8>> = recovery.entries.iter().map(|e| e.read().unwrap()).collect();
        assert_eq!(got, vec![b"before".to_vec(), b"after".to_vec()]);
        assert!(recovery.findings.is_empty(), "{:?}", recovery.findings);
    }

    #[test]
    fn corruption_mid_segment_costs_one_entry_reported_once_with_its_records() {
        let dir = tempfile::tempdir().unwrap();
        let (mut wal, _) = Wal::open(dir.path(), 64 << 20).unwrap();
        for i in 0..40u32 {
            wal.append(&vec![i as u8; 500], 10 + i).unwrap();
        }
        wal.sync().unwrap();
        let segment = wal.segments()[0].clone();
        drop(wal);
        let entry_18 = entries_of(&segment)[18].1.clone();
        let mut bytes = std::fs::read(&segment).unwrap();
        let original = bytes.clone();
        for b in &mut bytes[entry_18.start as usize + 100..entry_18.start as usize + 104] {
            *b ^= 0xff;
        }
        std::fs::write(&segment, &bytes).unwrap();
        let (_, recovery) = Wal::open(dir.path(), 64 << 20).unwrap();
        assert_eq!(recovery.entries.len(), 39);
        assert!(recovery.entries.iter().all(|e| e.seq != 18));
        assert_eq!(recovery.findings.len(), 1, "{:?}", recovery.findings);
        let f = &recovery.findings[0];
        assert_eq!(
            (f.kind, f.seqs.clone(), f.lost_entries, f.lost_records),
            (FindingKind::DamagedBytes, Some(18..19), 1, Some(28))
        );
        assert_eq!((f.offset, f.bytes), (Some(entry_18.start), Some(entry_18.end - entry_18.start)));
        assert!(!f.known);
        // The segment was not rewritten; the damaged bytes were copied aside with a report.
        assert_eq!(std::fs::read(&segment).unwrap().len(), original.len());
        assert_eq!(
            std::fs::read(f.quarantined.as_ref().unwrap()).unwrap(),
            bytes[entry_18.start as usize..entry_18.end as usize]
        );
        let report = std::fs::read_to_string(dir.path().join(QUARANTINE).join("report.ndjson")).unwrap();
        assert_eq!(report.lines().count(), 1);
        assert!(report.contains("\"lostEntries\":1"), "{report}");
        // A second start finds the same damage and knows it.
        let (_, recovery) = Wal::open(dir.path(), 64 << 20).unwrap();
        assert!(recovery.findings.iter().all(|f| f.known), "{:?}", recovery.findings);
        let report = std::fs::read_to_string(dir.path().join(QUARANTINE).join("report.ndjson")).unwrap();
        assert_eq!(report.lines().count(), 1);
    }

    #[test]
    fn a_deleted_and_a_shortened_segment_are_reported_from_the_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        let (mut wal, _) = Wal::open(dir.path(), 2000).unwrap();
        for i in 0..30u8 {
            wal.append(&[i; 300], 7).unwrap();
        }
        wal.sync().unwrap();
        // A checkpoint that has delivered nothing still records the sealed segments.
        wal.truncate_below(Position { seq: 0, record: 0 }, &[]).unwrap();
        let segments = wal.segments();
        assert!(segments.len() >= 4, "{segments:?}");
        drop(wal);
        let first = entries_of(&segments[0]);
        let second = entries_of(&segments[1]);
        let first_len = std::fs::metadata(&segments[0]).unwrap().len();
        std::fs::remove_file(&segments[0]).unwrap();
        let second_len = std::fs::metadata(&segments[1]).unwrap().len();
        let cut_at = second[2].1.start + 5;
        OpenOptions::new().write(true).open(&segments[1]).unwrap().set_len(cut_at).unwrap();
        let (_, recovery) = Wal::open(dir.path(), 2000).unwrap();
        let missing = &recovery.findings[0];
        assert_eq!(missing.kind, FindingKind::MissingSegment, "{:?}", recovery.findings);
        assert_eq!(
            (missing.lost_entries, missing.lost_records, missing.bytes),
            (first.len() as u64, Some(7 * first.len() as u64), Some(first_len))
        );
        let shortened = &recovery.findings[1];
        assert_eq!(shortened.kind, FindingKind::ShortenedSegment, "{:?}", recovery.findings);
        let lost = second.len() as u64 - 2;
        assert_eq!((shortened.lost_entries, shortened.lost_records), (lost, Some(7 * lost)));
        assert_eq!(shortened.bytes, Some(second_len - second[2].1.start));
        let kept = recovery.entries.len() as u64;
        assert_eq!(kept, 30 - first.len() as u64 - lost);
    }

    #[test]
    fn segments_roll_and_are_deleted_below_the_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        let (mut wal, _) = Wal::open(dir.path(), 200).unwrap();
        for i in 0..10u8 {
            wal.append(&[i; 40], 1).unwrap();
        }
        wal.sync().unwrap();
        // 76-byte entries after a 48-byte header: a segment takes two before it reaches 200 bytes.
        assert_eq!(wal.segments().len(), 5);
        wal.truncate_below(Position { seq: 6, record: 6 }, &[]).unwrap();
        assert_eq!(wal.segments().len(), 2);
        drop(wal);
        let (wal, recovery) = Wal::open(dir.path(), 200).unwrap();
        assert_eq!(recovery.entries.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![6, 7, 8, 9]);
        assert!(recovery.findings.is_empty(), "{:?}", recovery.findings);
        assert_eq!(wal.next_seq(), 10);
    }

    fn key_file(dir: &Path, byte: u8) -> Option<Arc<dyn seal::LogKeys>> {
        use base64::Engine as _;
        let path = dir.join(format!("key-{byte}"));
        std::fs::write(&path, base64::engine::general_purpose::STANDARD.encode([byte; 32])).unwrap();
        Some(Arc::new(seal::KeyFile::load(&path).unwrap()))
    }

    fn payloads(recovery: &Recovery) -> Vec<Vec<u8>> {
        recovery.entries.iter().map(|e| e.read().unwrap()).collect()
    }

    /// Sealed entries: no plaintext on disk, one key file per segment (deleted with it), read back
    /// only with the key they were written with; without it the open fails naming the segment and
    /// changes nothing, so the right key still reads everything.
    #[test]
    fn an_encrypted_log_reads_back_only_with_its_key() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("log");
        let (mut wal, _) = Wal::open_sealed(&log, 200, key_file(dir.path(), 1)).unwrap();
        let written: Vec<Vec<u8>> = (0..6).map(|i| format!("MARKER-{i}-secret").into_bytes()).collect();
        for payload in &written {
            wal.append(payload, 1).unwrap();
        }
        wal.sync().unwrap();
        let segments = wal.segments();
        assert!(segments.len() >= 3, "{segments:?}");
        for segment in &segments {
            let bytes = std::fs::read(segment).unwrap();
            assert!(!bytes.windows(6).any(|w| w == b"MARKER"), "plaintext in {}", segment.display());
            assert!(seal::key_path(segment).exists());
        }
        drop(wal);
        for (keys, why) in [(None, "configures no `encryption`"), (key_file(dir.path(), 2), "does not unwrap")] {
            let error = Wal::open_sealed(&log, 200, keys).unwrap_err();
            assert!(
                matches!(&error, WalError::Key { segment, offset: Some(48), .. } if segment.ends_with(".wal")),
                "{error}"
            );
            assert!(error.to_string().contains(why), "{error}");
        }
        let (mut wal, recovery) = Wal::open_sealed(&log, 200, key_file(dir.path(), 1)).unwrap();
        assert_eq!(payloads(&recovery), written);
        assert!(recovery.findings.is_empty(), "{:?}", recovery.findings);
        wal.truncate_below(wal.next(), &[]).unwrap();
        for segment in &segments {
            assert!(!segment.exists() && !seal::key_path(segment).exists());
        }
    }

    /// An entry changed on disk with its checksums made to agree fails its seal: a finding with
    /// its segment, offset and records; the entries around it are replayed.
    #[test]
    fn a_tampered_entry_is_reported_and_the_rest_replayed() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("log");
        let (mut wal, _) = Wal::open_sealed(&log, 1 << 20, key_file(dir.path(), 1)).unwrap();
        let offsets: Vec<u64> = (0..3u8)
            .map(|i| {
                let before = wal.active_lengths().0;
                wal.append(&[i; 20], 2).unwrap();
                before
            })
            .collect();
        wal.sync().unwrap();
        let segment = wal.segments()[0].clone();
        drop(wal);
        // Flip a ciphertext byte of the middle entry and recompute both checksums.
        let mut bytes = std::fs::read(&segment).unwrap();
        let at = offsets[1] as usize;
        let len = u32::from_le_bytes(bytes[at + 8..at + 12].try_into().unwrap()) as usize;
        bytes[at + ENTRY_HEADER + 20] ^= 0x40;
        let payload_crc = crc32c::crc32c(&bytes[at + ENTRY_HEADER..at + ENTRY_HEADER + len]);
        bytes[at + 32..at + 36].copy_from_slice(&payload_crc.to_le_bytes());
        let header_crc = crc32c::crc32c(&bytes[at + 8..at + ENTRY_HEADER]);
        bytes[at + 4..at + 8].copy_from_slice(&header_crc.to_le_bytes());
        std::fs::write(&segment, bytes).unwrap();
        let (_, recovery) = Wal::open_sealed(&log, 1 << 20, key_file(dir.path(), 1)).unwrap();
        assert_eq!(payloads(&recovery), vec![vec![0u8; 20], vec![2u8; 20]]);
        let [tampered] = recovery.findings.as_slice() else { panic!("{:?}", recovery.findings) };
        assert_eq!(
            (tampered.kind, tampered.offset, tampered.lost_records, tampered.seqs.clone()),
            (FindingKind::TamperedEntry, Some(offsets[1]), Some(2), Some(1..2))
        );
        assert!(tampered.to_string().contains(&format!("tampered entry in {}", file_name(&segment))), "{tampered}");
        assert!(tampered.quarantined.is_some());
    }

    /// Turning encryption on keeps the plain entries readable and seals what comes after.
    #[test]
    fn plain_entries_stay_readable_when_encryption_is_turned_on() {
        let dir = tempfile::tempdir().unwrap();
        let (mut wal, _) = Wal::open(dir.path(), 1 << 20).unwrap();
        wal.append(b"plain MARKER", 1).unwrap();
        wal.sync().unwrap();
        drop(wal);
        let (mut wal, recovery) = Wal::open_sealed(dir.path(), 1 << 20, key_file(dir.path(), 1)).unwrap();
        assert_eq!(payloads(&recovery), vec![b"plain MARKER".to_vec()]);
        wal.append(b"sealed MARKER", 1).unwrap();
        wal.sync().unwrap();
        let sealed_segment = wal.segments().last().unwrap().clone();
        assert!(!std::fs::read(&sealed_segment).unwrap().windows(6).any(|w| w == b"MARKER"));
        drop(wal);
        let (_, recovery) = Wal::open_sealed(dir.path(), 1 << 20, key_file(dir.path(), 1)).unwrap();
        assert_eq!(payloads(&recovery), vec![b"plain MARKER".to_vec(), b"sealed MARKER".to_vec()]);
    }
}

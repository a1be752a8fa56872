//! The log's bytes on disk: segment headers, framed entries, the first (legacy) entry layout, and
//! the scan that reads a segment back.
//!
//! A segment starts with a 48-byte header (`sluicewl`, version 2, or 3 when its entries are
//! encrypted ([`super::seal`]), a checksum, the position it starts at, and how far the log was
//! acknowledged when it was created; a version 3 checksum differs, so a flipped version is a
//! damaged header, never an encrypted segment read as plain). Each
//! entry is framed so that a reader can find the next one after damage:
//! `[magic 4][header crc 4][len 4][records 4][seq 8][first record 8][payload crc 4][payload]`, the
//! header checksum covering bytes 8..36. Guarantees of [`scan`]: it never fails on content; every
//! byte of a segment is either in a valid entry or in a reported damaged stretch; an entry is
//! valid only when its magic, both checksums and its length agree, so damage in one entry costs
//! that entry and nothing after it. Legacy segments (no header; `[len][crc][seq][payload]`) are
//! read up to their first bad entry, the rest reported as one damaged stretch.

use std::ops::Range;

/// First bytes of a current segment.
pub(super) const SEGMENT_MAGIC: [u8; 8] = *b"sluicewl";
/// The layout version written for plain entries.
const SEGMENT_VERSION: u32 = 2;
/// The layout version written for sealed (encrypted) entries.
const SEALED_SEGMENT_VERSION: u32 = 3;
/// Mixed into a sealed segment header's checksum.
const SEALED_CRC_SALT: u32 = 0x5EA1_ED03;
/// Bytes of a segment header.
pub(super) const SEGMENT_HEADER: usize = 48;
/// First bytes of an entry (a value that starts no UTF-8 text or JSON: resynchronisation looks for it).
const ENTRY_MAGIC: [u8; 4] = [0xE7, b'S', b'L', b'W'];
/// Bytes before an entry's payload.
pub(super) const ENTRY_HEADER: usize = 36;
/// Bytes before a legacy entry's payload.
const LEGACY_HEADER: usize = 16;
/// The largest payload accepted (a PutRecordBatch carries at most 4 MiB of data).
pub const MAX_PAYLOAD: usize = 64 << 20;

/// A place in the log: a sequence number (entries) and the record number of that entry's first
/// record (records of all entries before it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Position {
    /// Entries before this place.
    pub seq: u64,
    /// Records before this place.
    pub record: u64,
}

/// What a segment header says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct SegmentHeader {
    /// Where the segment's first entry goes.
    pub first: Position,
    /// Every entry before this was acknowledged when the segment was created.
    pub acked_before: Position,
    /// Its entries are sealed (see [`super::seal`]).
    pub sealed: bool,
}

fn header_crc(bytes: &[u8], sealed: bool) -> u32 {
    let crc = crc32c::crc32c(&bytes[16..SEGMENT_HEADER]);
    if sealed { crc ^ SEALED_CRC_SALT } else { crc }
}

fn word(bytes: &[u8], at: usize) -> u32 {
    let mut w = [0u8; 4];
    w.copy_from_slice(&bytes[at..at + 4]);
    u32::from_le_bytes(w)
}

fn long(bytes: &[u8], at: usize) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&bytes[at..at + 8]);
    u64::from_le_bytes(w)
}

/// The header bytes of a segment.
pub(super) fn encode_segment_header(header: &SegmentHeader) -> [u8; SEGMENT_HEADER] {
    let mut out = [0u8; SEGMENT_HEADER];
    out[..8].copy_from_slice(&SEGMENT_MAGIC);
    let version = if header.sealed { SEALED_SEGMENT_VERSION } else { SEGMENT_VERSION };
    out[8..12].copy_from_slice(&version.to_le_bytes());
    out[16..24].copy_from_slice(&header.first.seq.to_le_bytes());
    out[24..32].copy_from_slice(&header.first.record.to_le_bytes());
    out[32..40].copy_from_slice(&header.acked_before.seq.to_le_bytes());
    out[40..48].copy_from_slice(&header.acked_before.record.to_le_bytes());
    let crc = header_crc(&out, header.sealed);
    out[12..16].copy_from_slice(&crc.to_le_bytes());
    out
}

/// Reads a segment header; `None` when the bytes are not a valid current header.
fn decode_segment_header(bytes: &[u8]) -> Option<SegmentHeader> {
    if bytes.len() < SEGMENT_HEADER || bytes[..8] != SEGMENT_MAGIC {
        return None;
    }
    let sealed = match word(bytes, 8) {
        SEGMENT_VERSION => false,
        SEALED_SEGMENT_VERSION => true,
        _ => return None,
    };
    if header_crc(bytes, sealed) != word(bytes, 12) {
        return None;
    }
    let first = Position { seq: long(bytes, 16), record: long(bytes, 24) };
    let acked_before = Position { seq: long(bytes, 32), record: long(bytes, 40) };
    Some(SegmentHeader { first, acked_before, sealed })
}

/// Appends one framed entry to `out`.
pub(super) fn encode_entry(seq: u64, first_record: u64, records: u32, payload: &[u8], out: &mut Vec<u8>) {
    let start = out.len();
    out.extend_from_slice(&ENTRY_MAGIC);
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&records.to_le_bytes());
    out.extend_from_slice(&seq.to_le_bytes());
    out.extend_from_slice(&first_record.to_le_bytes());
    out.extend_from_slice(&crc32c::crc32c(payload).to_le_bytes());
    let header_crc = crc32c::crc32c(&out[start + 8..start + ENTRY_HEADER]);
    out[start + 4..start + 8].copy_from_slice(&header_crc.to_le_bytes());
    out.extend_from_slice(payload);
}

/// One valid entry found in a segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct ScannedEntry {
    /// Its sequence number.
    pub seq: u64,
    /// Records before it in the log (`None` in legacy segments, which do not count records).
    pub first_record: Option<u64>,
    /// Records in it (0 when not counted).
    pub records: u32,
    /// Offset of its payload in the segment.
    pub offset: u64,
    /// Payload length.
    pub len: u32,
}

impl ScannedEntry {
    /// Offset just past the entry.
    pub fn end(&self) -> u64 {
        self.offset + u64::from(self.len)
    }
}

/// How a segment is laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Layout {
    /// Framed entries after a header (`None` when the header itself is damaged).
    Current(Option<SegmentHeader>),
    /// The first layout: no header, no framing, no record counts.
    Legacy,
}

/// A segment as read back.
#[derive(Debug, Clone)]
pub(super) struct SegmentScan {
    /// Its layout.
    pub layout: Layout,
    /// Valid entries in file order.
    pub entries: Vec<ScannedEntry>,
    /// Entries written whole (intact header, every byte present) whose payload is damaged: they
    /// existed, and what they held is lost.
    pub broken: Vec<ScannedEntry>,
    /// Stretches that hold no valid entry, in file order.
    pub damaged: Vec<Range<u64>>,
    /// The file's length.
    pub len: u64,
}

/// What is at `at`: a valid entry, an entry written whole whose payload is damaged, or neither.
enum Found {
    Valid(ScannedEntry),
    Broken(ScannedEntry),
    Nothing,
}

/// Reads the entry whose header starts at `at`.
fn entry_at(bytes: &[u8], at: usize) -> Found {
    let Some(header) = bytes.get(at..at + ENTRY_HEADER) else { return Found::Nothing };
    if header[..4] != ENTRY_MAGIC || crc32c::crc32c(&header[8..ENTRY_HEADER]) != word(header, 4) {
        return Found::Nothing;
    }
    let len = word(header, 8) as usize;
    if len > MAX_PAYLOAD {
        return Found::Nothing;
    }
    let Some(payload) = bytes.get(at + ENTRY_HEADER..at + ENTRY_HEADER + len) else { return Found::Nothing };
    let entry = ScannedEntry {
        seq: long(header, 16),
        first_record: Some(long(header, 24)),
        records: word(header, 12),
        offset: (at + ENTRY_HEADER) as u64,
        len: len as u32,
    };
    if crc32c::crc32c(payload) == word(header, 32) { Found::Valid(entry) } else { Found::Broken(entry) }
}

/// The legacy entry at `at`, if its length and checksum agree.
fn legacy_entry_at(bytes: &[u8], at: usize) -> Option<ScannedEntry> {
    let header = bytes.get(at..at + LEGACY_HEADER)?;
    let len = word(header, 0) as usize;
    if len > MAX_PAYLOAD {
        return None;
    }
    let seq = long(header, 8);
    let payload = bytes.get(at + LEGACY_HEADER..at + LEGACY_HEADER + len)?;
    let crc = crc32c::crc32c_append(crc32c::crc32c(&seq.to_le_bytes()), payload);
    (crc == word(header, 4)).then_some(ScannedEntry {
        seq,
        first_record: None,
        records: 0,
        offset: (at + LEGACY_HEADER) as u64,
        len: len as u32,
    })
}

/// Reads a segment's bytes: every valid entry, and every stretch that holds none.
pub(super) fn scan(bytes: &[u8]) -> SegmentScan {
    let len = bytes.len() as u64;
    if bytes.is_empty() {
        return SegmentScan {
            layout: Layout::Current(None),
            entries: Vec::new(),
            broken: Vec::new(),
            damaged: Vec::new(),
            len,
        };
    }
    if bytes.len() >= SEGMENT_HEADER && bytes[..8] == SEGMENT_MAGIC
        || bytes.len() < SEGMENT_HEADER && SEGMENT_MAGIC.starts_with(bytes)
    {
        return scan_current(bytes, decode_segment_header(bytes));
    }
    if legacy_entry_at(bytes, 0).is_some() {
        return scan_legacy(bytes);
    }
    // Neither a current header nor a legacy entry: a current segment whose header is damaged.
    scan_current(bytes, None)
}

fn scan_current(bytes: &[u8], header: Option<SegmentHeader>) -> SegmentScan {
    let mut entries = Vec::new();
    let mut broken = Vec::new();
    let mut damaged = Vec::new();
    let mut bad_from: Option<usize> = if header.is_some() { None } else { Some(0) };
    let mut at = SEGMENT_HEADER.min(bytes.len());
    while at < bytes.len() {
        match entry_at(bytes, at) {
            Found::Valid(entry) => {
                if let Some(from) = bad_from.take() {
                    damaged.push(from as u64..at as u64);
                }
                at = entry.end() as usize;
                entries.push(entry);
            }
            Found::Broken(entry) => {
                // Its intact header says where it ends: the damage is its payload.
                bad_from.get_or_insert(at);
                at = entry.end() as usize;
                broken.push(entry);
            }
            Found::Nothing => {
                bad_from.get_or_insert(at);
                // Resynchronise on the next entry magic.
                at = memchr::memmem::find(&bytes[at + 1..], &ENTRY_MAGIC).map_or(bytes.len(), |i| at + 1 + i);
            }
        }
    }
    if let Some(from) = bad_from {
        damaged.push(from as u64..bytes.len() as u64);
    }
    SegmentScan { layout: Layout::Current(header), entries, broken, damaged, len: bytes.len() as u64 }
}

fn scan_legacy(bytes: &[u8]) -> SegmentScan {
    let mut entries = Vec::new();
    let mut at = 0usize;
    while let Some(entry) = legacy_entry_at(bytes, at) {
        at = entry.end() as usize;
        entries.push(entry);
    }
    let mut damaged = Vec::new();
    if at < bytes.len() {
        damaged.push(at as u64..bytes.len() as u64);
    }
    SegmentScan { layout: Layout::Legacy, entries, broken: Vec::new(), damaged, len: bytes.len() as u64 }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn segment(entries: &[(&[u8], u32)]) -> Vec<u8> {
        let start = Position { seq: 10, record: 100 };
        let mut out =
            encode_segment_header(&SegmentHeader { first: start, acked_before: start, sealed: false }).to_vec();
        let mut record = start.record;
        for (i, (payload, records)) in entries.iter().enumerate() {
            encode_entry(10 + i as u64, record, *records, payload, &mut out);
            record += u64::from(*records);
        }
        out
    }

    #[test]
    fn a_damaged_entry_costs_only_itself() {
        let mut bytes = segment(&[(b"first", 1), (b"second entry", 2), (b"third", 3)]);
        let clean = scan(&bytes);
        assert_eq!(clean.entries.len(), 3);
        assert!(clean.damaged.is_empty());
        assert_eq!(
            clean.layout,
            Layout::Current(Some(SegmentHeader {
                first: Position { seq: 10, record: 100 },
                acked_before: Position { seq: 10, record: 100 },
                sealed: false,
            }))
        );
        // Flip a payload byte of the second entry, then a header byte of the third.
        let second = clean.entries[1];
        bytes[second.offset as usize + 3] ^= 0x40;
        let damaged = scan(&bytes);
        assert_eq!(damaged.entries.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![10, 12]);
        assert_eq!(damaged.damaged, vec![second.offset - ENTRY_HEADER as u64..second.end()]);
        assert_eq!(damaged.broken, vec![second]);
        assert_eq!(damaged.entries[1].first_record, Some(103));
        let third = clean.entries[2];
        bytes[third.offset as usize - 20] ^= 1;
        assert_eq!(scan(&bytes).entries.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![10]);
    }

    #[test]
    fn a_damaged_segment_header_keeps_the_entries() {
        let mut bytes = segment(&[(b"a", 1), (b"b", 1)]);
        bytes[20] ^= 1;
        let scanned = scan(&bytes);
        assert_eq!(scanned.layout, Layout::Current(None));
        assert_eq!(scanned.entries.len(), 2);
        assert_eq!(scanned.damaged, vec![0..SEGMENT_HEADER as u64]);
    }

    #[test]
    fn legacy_segments_are_read_to_their_first_bad_entry() {
        let mut bytes = Vec::new();
        for (seq, payload) in [(0u64, &b"one"[..]), (1, b"two")] {
            bytes.extend_from_slice(&(payload.len() as u32).to_le_bytes());
            let crc = crc32c::crc32c_append(crc32c::crc32c(&seq.to_le_bytes()), payload);
            bytes.extend_from_slice(&crc.to_le_bytes());
            bytes.extend_from_slice(&seq.to_le_bytes());
            bytes.extend_from_slice(payload);
        }
        bytes.extend_from_slice(&[9; 5]);
        let scanned = scan(&bytes);
        assert_eq!(scanned.layout, Layout::Legacy);
        assert_eq!(scanned.entries.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![0, 1]);
        assert_eq!(scanned.damaged, vec![38..43]);
    }
}

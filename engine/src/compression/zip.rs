//! ZIP archives of one entry: Firehose's `ZIP` compression (docs/firehose.md §3), what `unzip`,
//! Python's `zipfile` and Java's `ZipInputStream` read.
//!
//! The entry's data is one deflate stream (level 6) compressed as the object grows; its CRC-32 and
//! sizes follow it in a data descriptor (general purpose flag bit 3, PKWARE's APPNOTE 4.3.9), then
//! come the central directory and its end record. The entry is named when the archive is finished
//! (after the object's key, without `.zip`), so the archive is held, compressed, until then.
//! Guarantees: [`extract`] gives back exactly what was written (and reads archives of several
//! entries, stored or deflated, as other tools write them: [`extract_lines`] keeps each entry's
//! lines apart); an entry of 4 GiB or more (which
//! would need ZIP64; a sink's buffer is at most 128 MiB) is refused, never written wrong.

use std::io::Write;

/// Local file header, central directory header, data descriptor and end of central directory
/// signatures (APPNOTE 4.3.7, 4.3.12, 4.3.9, 4.3.16).
const LOCAL_HEADER: u32 = 0x0403_4b50;
const CENTRAL_HEADER: u32 = 0x0201_4b50;
const DATA_DESCRIPTOR: u32 = 0x0807_4b50;
const END_OF_DIRECTORY: u32 = 0x0605_4b50;
/// Version 2.0: deflate.
const VERSION_NEEDED: u16 = 20;
/// Made by Unix (3), version 2.0: the external attributes are a Unix mode.
const VERSION_MADE_BY: u16 = (3 << 8) | 20;
/// Sizes and CRC in the data descriptor.
const FLAG_DESCRIPTOR: u16 = 1 << 3;
/// The name is UTF-8.
const FLAG_UTF8: u16 = 1 << 11;
const METHOD_STORED: u16 = 0;
const METHOD_DEFLATE: u16 = 8;

/// The name of the entry of the object `key`: its last segment without `.zip`.
pub fn entry_name(key: &str) -> String {
    let file = key.rsplit('/').next().unwrap_or(key);
    let name = file.strip_suffix(".zip").unwrap_or(file);
    if name.is_empty() { "records".to_string() } else { name.to_string() }
}

/// The entry being written: its deflate stream so far and what the descriptor says of it.
pub struct ZipEntry {
    deflate: flate2::write::DeflateEncoder<Vec<u8>>,
    crc: libdeflater::Crc,
    size: u64,
}

impl ZipEntry {
    /// About the memory of zlib's deflate state at level 6 (its window, hash chains and buffers).
    pub const STATE_BYTES: usize = 300 << 10;

    /// An empty entry.
    pub fn new() -> Self {
        ZipEntry {
            deflate: flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::new(6)),
            crc: libdeflater::Crc::new(),
            size: 0,
        }
    }

    /// Adds `bytes` to the entry.
    pub fn write(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.crc.update(bytes);
        self.size += bytes.len() as u64;
        self.deflate.write_all(bytes)
    }

    /// Compressed bytes held.
    pub fn held(&self) -> usize {
        self.deflate.get_ref().capacity()
    }

    /// The archive: the entry named `name`, modified at `modified`.
    pub fn finish(self, name: &str, modified: chrono::DateTime<chrono::Utc>) -> std::io::Result<Vec<u8>> {
        let (crc, size) = (self.crc.sum(), self.size);
        let data = self.deflate.finish()?;
        archive_of(name, modified, crc, size, &data)
    }
}

impl Default for ZipEntry {
    fn default() -> Self {
        Self::new()
    }
}

/// `bytes` as an archive of one entry named `name`.
pub fn archive(name: &str, bytes: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut entry = ZipEntry::new();
    entry.write(bytes)?;
    entry.finish(name, chrono::Utc::now())
}

fn too_large() -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::InvalidInput,
        "a ZIP entry of 4 GiB or more needs ZIP64, which sluice does not write",
    )
}

fn archive_of(
    name: &str,
    modified: chrono::DateTime<chrono::Utc>,
    crc: u32,
    size: u64,
    data: &[u8],
) -> std::io::Result<Vec<u8>> {
    use chrono::{Datelike, Timelike};
    let size = u32::try_from(size).map_err(|_| too_large())?;
    let compressed = u32::try_from(data.len()).map_err(|_| too_large())?;
    let name_len =
        u16::try_from(name.len()).map_err(|_| std::io::Error::other("a ZIP entry's name is at most 65535 bytes"))?;
    let flags = FLAG_DESCRIPTOR | if name.is_ascii() { 0 } else { FLAG_UTF8 };
    // MS-DOS time and date (two-second steps, years from 1980).
    let time = ((modified.hour() << 11) | (modified.minute() << 5) | (modified.second() / 2)) as u16;
    let year = modified.year().clamp(1980, 2107) as u32 - 1980;
    let date = ((year << 9) | (modified.month() << 5) | modified.day()) as u16;

    let mut out = Vec::with_capacity(data.len() + 2 * name.len() + 128);
    let u16s = |out: &mut Vec<u8>, values: &[u16]| values.iter().for_each(|v| out.extend_from_slice(&v.to_le_bytes()));
    let u32s = |out: &mut Vec<u8>, values: &[u32]| values.iter().for_each(|v| out.extend_from_slice(&v.to_le_bytes()));
    // Local file header: CRC and sizes zero, given by the descriptor.
    u32s(&mut out, &[LOCAL_HEADER]);
    u16s(&mut out, &[VERSION_NEEDED, flags, METHOD_DEFLATE, time, date]);
    u32s(&mut out, &[0, 0, 0]);
    u16s(&mut out, &[name_len, 0]);
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(data);
    u32s(&mut out, &[DATA_DESCRIPTOR, crc, compressed, size]);
    let directory = u32::try_from(out.len()).map_err(|_| too_large())?;
    u32s(&mut out, &[CENTRAL_HEADER]);
    u16s(&mut out, &[VERSION_MADE_BY, VERSION_NEEDED, flags, METHOD_DEFLATE, time, date]);
    u32s(&mut out, &[crc, compressed, size]);
    // Name, extra and comment lengths, disk number, internal attributes.
    u16s(&mut out, &[name_len, 0, 0, 0, 0]);
    // External attributes: a regular file, rw-r--r--; the local header at 0.
    u32s(&mut out, &[0o100644 << 16, 0]);
    out.extend_from_slice(name.as_bytes());
    let directory_len = u32::try_from(out.len()).map_err(|_| too_large())? - directory;
    u32s(&mut out, &[END_OF_DIRECTORY]);
    // This disk, the directory's disk, its entries here and in all, its size and offset, no comment.
    u16s(&mut out, &[0, 0, 1, 1]);
    u32s(&mut out, &[directory_len, directory]);
    u16s(&mut out, &[0]);
    Ok(out)
}

fn invalid(what: &str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, format!("not a ZIP archive sluice reads: {what}"))
}

/// The data of every entry of `archive` (stored or deflated), in the central directory's order,
/// each checked against its CRC-32 and size.
pub fn extract(archive: &[u8]) -> std::io::Result<Vec<u8>> {
    read_entries(archive, |_, _| {})
}

/// The lines of every entry of `archive`, as [`extract`] reads them, each entry its own whole
/// lines: a last line without its newline is ended (else it ran into the next entry's first
/// line, two records read as one), and a UTF-8 byte order mark at an entry's start is dropped (it
/// marks that file's encoding; [`crate::record::UTF8_BOM`]).
pub fn extract_lines(archive: &[u8]) -> std::io::Result<Vec<u8>> {
    read_entries(archive, |out, start| {
        if out[start..].starts_with(crate::record::UTF8_BOM) {
            out.drain(start..start + crate::record::UTF8_BOM.len());
        }
        if out.len() > start && out.last() != Some(&b'\n') {
            out.push(b'\n');
        }
    })
}

/// Every entry's data appended to one buffer, each checked, then handed to `after_entry` with the
/// offset where it starts.
fn read_entries(archive: &[u8], mut after_entry: impl FnMut(&mut Vec<u8>, usize)) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let u16_at = |at: usize| archive.get(at..at + 2).map(|b| u16::from_le_bytes([b[0], b[1]]));
    let u32_at = |at: usize| archive.get(at..at + 4).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]));
    // The end record is the last 22 bytes but for a comment of at most 65535.
    let lowest = archive.len().saturating_sub(22 + 65_535);
    let end = (lowest..=archive.len().saturating_sub(22))
        .rev()
        .find(|&at| u32_at(at) == Some(END_OF_DIRECTORY))
        .ok_or_else(|| invalid("no end of central directory record"))?;
    let entries = u16_at(end + 10).ok_or_else(|| invalid("a cut end record"))?;
    let mut at = u32_at(end + 16).ok_or_else(|| invalid("a cut end record"))? as usize;
    let mut out = Vec::new();
    for _ in 0..entries {
        if u32_at(at) != Some(CENTRAL_HEADER) {
            return Err(invalid("a central directory entry without its signature"));
        }
        let field16 = |offset: usize| u16_at(at + offset).ok_or_else(|| invalid("a cut directory entry"));
        let field32 = |offset: usize| u32_at(at + offset).ok_or_else(|| invalid("a cut directory entry"));
        let (method, crc, compressed, size) = (field16(10)?, field32(16)?, field32(20)? as usize, field32(24)?);
        let (name, extra, comment) = (field16(28)? as usize, field16(30)? as usize, field16(32)? as usize);
        let local = field32(42)? as usize;
        if u32_at(local) != Some(LOCAL_HEADER) {
            return Err(invalid("a local header without its signature"));
        }
        let local_name = u16_at(local + 26).ok_or_else(|| invalid("a cut local header"))? as usize;
        let local_extra = u16_at(local + 28).ok_or_else(|| invalid("a cut local header"))? as usize;
        let start = local + 30 + local_name + local_extra;
        let data = archive.get(start..start + compressed).ok_or_else(|| invalid("an entry's data is cut short"))?;
        let before = out.len();
        match method {
            METHOD_STORED => out.extend_from_slice(data),
            METHOD_DEFLATE => {
                flate2::read::DeflateDecoder::new(data).read_to_end(&mut out)?;
            }
            other => return Err(invalid(&format!("compression method {other}"))),
        }
        let mut check = libdeflater::Crc::new();
        check.update(&out[before..]);
        if check.sum() != crc || (out.len() - before) as u64 != u64::from(size) {
            return Err(invalid("an entry's CRC-32 or size does not match its data"));
        }
        after_entry(&mut out, before);
        at += 46 + name + extra + comment;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An entry of 4 GiB or more would need ZIP64's fields: refused with the reason, never written
    /// with its size cut to 32 bits (the sizes as the data descriptor would say them; no 4 GiB of
    /// data is made).
    #[test]
    fn an_entry_of_4_gib_or_more_is_refused() {
        let now = chrono::Utc::now();
        let refused = archive_of("records", now, 0, 1 << 32, b"").unwrap_err();
        assert_eq!(refused.kind(), std::io::ErrorKind::InvalidInput);
        assert!(refused.to_string().contains("needs ZIP64"), "{refused}");
        assert!(archive_of("records", now, 0, u64::from(u32::MAX), b"").is_ok(), "just under 4 GiB fits");
    }

    #[test]
    fn an_archive_gives_back_what_was_written_in_pieces() {
        let mut entry = ZipEntry::new();
        let mut written = Vec::new();
        for i in 0..20_000 {
            let line = format!("{{\"n\":{i}}}\n");
            entry.write(line.as_bytes()).unwrap_or_else(|e| panic!("{e}"));
            written.extend_from_slice(line.as_bytes());
        }
        let archive = entry.finish("s-1-2026-12-06", chrono::Utc::now()).unwrap_or_else(|e| panic!("{e}"));
        assert!(archive.len() < written.len() / 4, "{} bytes", archive.len());
        assert_eq!(extract(&archive).unwrap_or_else(|e| panic!("{e}")), written);
        // Empty, and a name past ASCII (flagged UTF-8).
        assert_eq!(extract(&archive_or_panic("leer", b"")).unwrap_or_default(), b"");
        assert_eq!(extract(&archive_or_panic("journal-é", b"x")).unwrap_or_default(), b"x");
    }

    fn archive_or_panic(name: &str, bytes: &[u8]) -> Vec<u8> {
        archive(name, bytes).unwrap_or_else(|e| panic!("{e}"))
    }

    /// An archive of `entries` (name, data), stored or deflated, as `zip` and Python's `zipfile`
    /// write them: local headers with their sizes, then the central directory.
    fn archive_of_entries(entries: &[(&str, &[u8], bool)]) -> Vec<u8> {
        let (mut out, mut directory) = (Vec::new(), Vec::new());
        for &(name, data, deflated) in entries {
            let mut crc = libdeflater::Crc::new();
            crc.update(data);
            let body = if deflated {
                let mut d = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::new(6));
                d.write_all(data).unwrap_or_else(|e| panic!("{e}"));
                d.finish().unwrap_or_else(|e| panic!("{e}"))
            } else {
                data.to_vec()
            };
            let method = if deflated { METHOD_DEFLATE } else { METHOD_STORED };
            let sizes = [crc.sum(), body.len() as u32, data.len() as u32];
            let local = out.len() as u32;
            out.extend_from_slice(&LOCAL_HEADER.to_le_bytes());
            for half in [VERSION_NEEDED, 0, method, 0, 0] {
                out.extend_from_slice(&half.to_le_bytes());
            }
            sizes.iter().for_each(|v| out.extend_from_slice(&v.to_le_bytes()));
            out.extend_from_slice(&(name.len() as u16).to_le_bytes());
            out.extend_from_slice(&0u16.to_le_bytes());
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(&body);
            directory.extend_from_slice(&CENTRAL_HEADER.to_le_bytes());
            for half in [VERSION_MADE_BY, VERSION_NEEDED, 0, method, 0, 0] {
                directory.extend_from_slice(&half.to_le_bytes());
            }
            sizes.iter().for_each(|v| directory.extend_from_slice(&v.to_le_bytes()));
            for half in [name.len() as u16, 0, 0, 0, 0] {
                directory.extend_from_slice(&half.to_le_bytes());
            }
            directory.extend_from_slice(&0u32.to_le_bytes());
            directory.extend_from_slice(&local.to_le_bytes());
            directory.extend_from_slice(name.as_bytes());
        }
        let at = out.len() as u32;
        out.extend_from_slice(&directory);
        out.extend_from_slice(&END_OF_DIRECTORY.to_le_bytes());
        let count = entries.len() as u16;
        for half in [0, 0, count, count] {
            out.extend_from_slice(&half.to_le_bytes());
        }
        out.extend_from_slice(&(directory.len() as u32).to_le_bytes());
        out.extend_from_slice(&at.to_le_bytes());
        out.extend_from_slice(&0u16.to_le_bytes());
        out
    }

    /// Read as lines, each entry of an archive of several keeps its lines to itself: a last line
    /// without its newline does not run into the next entry's first, and an entry's byte order
    /// mark is not part of its first line; read as bytes, the entries are as written.
    #[test]
    fn each_entry_of_an_archive_read_as_lines_is_its_own_lines() {
        let archive = archive_of_entries(&[
            ("a.ndjson", b"{\"a\":1}\n{\"a\":2}", true),
            ("b.ndjson", b"\xEF\xBB\xBF{\"b\":1}\r\n", false),
            ("empty.ndjson", b"", true),
            ("c.ndjson", b"{\"c\":1}", false),
        ]);
        let lines = extract_lines(&archive).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(String::from_utf8_lossy(&lines), "{\"a\":1}\n{\"a\":2}\n{\"b\":1}\r\n{\"c\":1}\n");
        let bytes = extract(&archive).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(bytes, b"{\"a\":1}\n{\"a\":2}\xEF\xBB\xBF{\"b\":1}\r\n{\"c\":1}");
    }

    #[test]
    fn a_damaged_archive_is_an_error_not_a_panic() {
        let good = archive_or_panic("a", b"hello hello hello");
        assert!(extract(b"").is_err());
        assert!(extract(&good[..good.len() - 5]).is_err());
        let mut flipped = good.clone();
        flipped[40] ^= 0xff;
        assert!(extract(&flipped).is_err());
    }

    #[test]
    fn entries_are_named_after_the_object() {
        assert_eq!(entry_name("logs/2026/12/06/s-1-2026-12-06-08-00-00-uuid.zip"), "s-1-2026-12-06-08-00-00-uuid");
        assert_eq!(entry_name("a/b.csv.zip"), "b.csv");
        assert_eq!(entry_name(".zip"), "records");
    }
}

//! Files whose large writes bypass the page cache (`O_DIRECT`): the bytes go from a reused,
//! page-aligned buffer straight to the device instead of being copied into page-cache pages that a
//! sync then writes out.
//!
//! Why: `file://` objects are made durable before they are named, so with buffered writes every
//! byte is paid for twice, the copy into fresh page-cache pages and their write-back at the sync.
//! On the machines sluice is measured on, the copy of the Parquet scenario's two 17 MB objects was
//! 8 % of the run's CPU (`copy_folio_from_iter_atomic`), mostly after both workers had finished
//! (README: Performance, footnote 19).
//!
//! Guarantees: [`UnbufferedFile::write_all_at`] writes exactly the bytes given at the offset given,
//! like `FileExt::write_all_at`. A write of at least [`DIRECT_MIN_BYTES`] sends its page-aligned
//! middle through `O_DIRECT` and its unaligned head and tail through the page cache, so no page is
//! written both ways; smaller writes go through the page cache. Where the file system refuses
//! `O_DIRECT` or its alignment (`EINVAL`: some FUSE and older tmpfs mounts), the bytes are written
//! through the page cache instead, never an error for that reason. Durability stays the caller's:
//! the file's size, blocks and the device's cache are stored by the sync that follows, as before.
//! Memory: at most [`POOLED_BUFFERS`] buffers of [`DIRECT_CHUNK`] bytes stay allocated between
//! writes.

use std::fs::File;
use std::io::ErrorKind;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

/// Alignment of a direct write's memory, offset and length: the page size, a multiple of the
/// logical block size of the devices sluice runs on (512 or 4,096 bytes).
pub const DIRECT_ALIGN: usize = 4096;
/// Bytes one direct write hands to the device (the aligned buffer's size).
pub const DIRECT_CHUNK: usize = 1 << 20;
/// Writes smaller than this go through the page cache: their copy is cheap, and the sync that
/// follows writes many of them together (a partitioned sink's thousand small objects).
pub const DIRECT_MIN_BYTES: usize = 1 << 20;
/// Aligned buffers kept between writes (more are allocated while more writes run at once).
pub const POOLED_BUFFERS: usize = 4;

/// Aligned buffers not in use.
static POOL: Mutex<Vec<Vec<u8>>> = Mutex::new(Vec::new());

/// A file being written, its large writes around the page cache.
#[derive(Debug)]
pub struct UnbufferedFile {
    path: PathBuf,
    buffered: File,
    /// The same file opened with `O_DIRECT`, at the first large write; `None` where refused.
    direct: OnceLock<Option<File>>,
}

impl UnbufferedFile {
    /// Creates (or truncates) the file at `path`.
    pub fn create(path: &Path) -> std::io::Result<Self> {
        Ok(UnbufferedFile { path: path.to_path_buf(), buffered: File::create(path)?, direct: OnceLock::new() })
    }

    /// Writes all of `bytes` at `offset` (see the module's guarantees).
    pub fn write_all_at(&self, bytes: &[u8], offset: u64) -> std::io::Result<()> {
        let direct = if bytes.len() >= DIRECT_MIN_BYTES { self.direct_handle() } else { None };
        let Some(direct) = direct else {
            return self.buffered.write_all_at(bytes, offset);
        };
        let head = (offset.next_multiple_of(DIRECT_ALIGN as u64) - offset) as usize;
        let middle = (bytes.len() - head) / DIRECT_ALIGN * DIRECT_ALIGN;
        let (head_bytes, rest) = bytes.split_at(head);
        let (middle_bytes, tail_bytes) = rest.split_at(middle);
        let middle_at = offset + head as u64;
        self.buffered.write_all_at(head_bytes, offset)?;
        self.write_middle(direct, middle_bytes, middle_at)?;
        self.buffered.write_all_at(tail_bytes, middle_at + middle as u64)
    }

    /// Writes `bytes` at `offset` through `direct`, or through the page cache where the file
    /// system took the file but refuses the write's alignment (`EINVAL`).
    fn write_middle(&self, direct: &File, bytes: &[u8], offset: u64) -> std::io::Result<()> {
        match write_direct(direct, bytes, offset) {
            Err(e) if e.kind() == ErrorKind::InvalidInput => self.buffered.write_all_at(bytes, offset),
            done => done,
        }
    }

    /// Truncates or extends the file to `length` bytes.
    pub fn set_len(&self, length: u64) -> std::io::Result<()> {
        self.buffered.set_len(length)
    }

    /// The `O_DIRECT` handle, opened once; `None` where the file system refuses it (or cannot be
    /// asked: not Linux).
    fn direct_handle(&self) -> Option<&File> {
        self.direct.get_or_init(|| open_direct(&self.path).ok()).as_ref()
    }
}

#[cfg(any(target_os = "linux", target_os = "android"))]
fn open_direct(path: &Path) -> std::io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new().write(true).custom_flags(rustix::fs::OFlags::DIRECT.bits() as i32).open(path)
}

#[cfg(not(any(target_os = "linux", target_os = "android")))]
fn open_direct(_: &Path) -> std::io::Result<File> {
    Err(ErrorKind::Unsupported.into())
}

/// Writes `bytes` (a multiple of [`DIRECT_ALIGN`] long) at `offset` (aligned) through `file`
/// (opened with `O_DIRECT`), a chunk at a time through a pooled aligned buffer.
fn write_direct(file: &File, bytes: &[u8], offset: u64) -> std::io::Result<()> {
    let mut buffer = POOL
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .pop()
        .unwrap_or_else(|| vec![0; DIRECT_CHUNK + DIRECT_ALIGN]);
    let start = buffer.as_ptr().align_offset(DIRECT_ALIGN);
    let written = match buffer.get_mut(start..start + DIRECT_CHUNK) {
        Some(aligned) => {
            bytes.chunks(DIRECT_CHUNK).zip((offset..).step_by(DIRECT_CHUNK)).try_for_each(|(chunk, at)| {
                aligned[..chunk.len()].copy_from_slice(chunk);
                file.write_all_at(&aligned[..chunk.len()], at)
            })
        }
        // No aligned slice in the buffer (cannot happen for bytes): treated as a refused alignment.
        None => Err(ErrorKind::InvalidInput.into()),
    };
    let mut pool = POOL.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    if pool.len() < POOLED_BUFFERS {
        pool.push(buffer);
    }
    written
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `n` bytes that differ from their neighbours (a misplaced chunk shows).
    fn pattern(n: usize, seed: u8) -> Vec<u8> {
        (0..n).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed).wrapping_add((i >> 12) as u8)).collect()
    }

    /// Writes of every shape land exactly where asked: small ones, large ones with unaligned
    /// heads and tails, a part rewritten shorter (a retry) and the file cut to its end.
    #[test]
    fn writes_land_at_their_offsets_whatever_their_alignment() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("object");
        let file = UnbufferedFile::create(&path).unwrap();
        let first = pattern(DIRECT_CHUNK * 2 + 1234, 1);
        let second = pattern(DIRECT_MIN_BYTES + 99, 2);
        let small = pattern(5000, 3);
        file.write_all_at(&first, 0).unwrap();
        let second_at = first.len() as u64;
        file.write_all_at(&second, second_at).unwrap();
        let small_at = second_at + second.len() as u64;
        file.write_all_at(&small, small_at).unwrap();
        let mut expected = [first.clone(), second.clone(), small.clone()].concat();
        assert_eq!(std::fs::read(&path).unwrap(), expected);
        // The second write again, shorter, and the file ended after it (as a completed upload is).
        let retried = pattern(DIRECT_MIN_BYTES + 7, 4);
        file.write_all_at(&retried, second_at).unwrap();
        file.set_len(second_at + retried.len() as u64).unwrap();
        expected.truncate(second_at as usize);
        expected.extend_from_slice(&retried);
        assert_eq!(std::fs::read(&path).unwrap(), expected);
        // On Linux's usual file systems the large writes went around the page cache.
        if cfg!(target_os = "linux") {
            assert!(file.direct_handle().is_some(), "O_DIRECT was refused here");
        }
    }

    /// A direct write the file system refuses for its alignment (here: an offset off the page
    /// boundary, which ext4 refuses with `EINVAL`) lands through the page cache instead.
    #[test]
    fn a_direct_write_refused_for_its_alignment_goes_through_the_page_cache() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("object");
        let file = UnbufferedFile::create(&path).unwrap();
        let Some(direct) = file.direct_handle() else { return };
        let bytes = pattern(2 * DIRECT_ALIGN, 6);
        let refused = write_direct(direct, &bytes, 100);
        assert_eq!(refused.map_err(|e| e.kind()), Err(ErrorKind::InvalidInput), "the refusal the fallback matches");
        file.write_middle(direct, &bytes, 100).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), [vec![0; 100], bytes].concat());
    }

    /// A file system that refuses `O_DIRECT` (here: the handle is made to be missing) gets the
    /// same bytes through the page cache.
    #[test]
    fn without_direct_writes_the_bytes_are_the_same() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("object");
        let file = UnbufferedFile::create(&path).unwrap();
        file.direct.set(None).unwrap();
        let bytes = pattern(DIRECT_CHUNK * 3 + 17, 5);
        file.write_all_at(&bytes[..100], 0).unwrap();
        file.write_all_at(&bytes[100..], 100).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), bytes);
    }
}

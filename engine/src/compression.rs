//! Compression of objects: a streaming compressor that encoded bytes go through as an object grows
//! ([`ObjectWriter`]), and its inverse ([`decompress`]).
//!
//! gzip is written as independent members of at most [`STAGING_BYTES`] each, every one compressed
//! whole by libdeflate at level 6 (libdeflate has no streaming API and, whole-buffer, runs about
//! 1.3 times as fast as zlib-rs at level 6 for a slightly smaller output, measured on CloudTrail
//! NDJSON; README: Performance). A gzip stream of several members is one stream to every reader
//! (RFC 1952 §2.2: gzip, zcat, Python's `gzip`, flate2's `MultiGzDecoder`, DuckDB, pyarrow, and
//! Hadoop's codec that Athena reads with), which the tests check with each reader they use.
//!
//! zstd is written the same way, as independent frames of at most [`ZSTD_FRAME_BYTES`] (1 MiB)
//! each, compressed whole at level 3 by the thread's reused context. A streaming zstd context
//! copies its input into a ring of one window (2 MiB at level 3) and, once the ring wraps, runs its
//! slower "external dictionary" match finder on every block: measured on CloudTrail NDJSON, the
//! stream ran at ~155 MB/s a core, 1 MiB frames at ~205 MB/s and 1.0 % smaller than the stream's
//! output (level 3 picks its tables by the frame's size), 256 KiB frames 6 % larger. The zstd
//! CLI, libzstd's streaming decoder (what DuckDB and pyarrow use) and the `zstd` crate read the
//! frames of an object as one stream (the zstd format, RFC 8878 §3.1); python-zstandard's
//! one-shot `decompress` reads the first frame only unless told `read_across_frames=True`.
//!
//! Guarantees: an open object holds at most one staging block of uncompressed bytes plus compressed
//! bytes (small writes are staged in blocks so the compressor is called per block, not per
//! record); an object smaller than one block has no compressor of its own: it is compressed whole
//! when it is finished, by a compressor kept per thread and reset between objects, so thousands of
//! small open objects (a partitioned sink's) cost their bytes, not a compressor's state each (a
//! gzip or zstd object never holds one; Snappy's streaming encoder holds ~132 KiB). An object
//! written [`ObjectWriter::in_blocks`] never has one either: each full block of [`STAGING_BYTES`]
//! becomes an independent member (gzip member, zstd frame, Snappy stream) of the same stream format. The compressed bytes produced so far can be taken
//! while the object continues (a part of an object uploaded while it grows); what
//! [`ObjectWriter::finish`] returns decompresses to exactly what was written.

use std::cell::RefCell;
use std::io::Write;

/// Object compression.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// Stored as is.
    None,
    /// gzip (level 6, libdeflate members).
    Gzip,
    /// zstd (level 3).
    Zstd,
    /// Snappy, framed format.
    Snappy,
}

impl Compression {
    /// Names accepted in config.
    pub const NAMES: &'static [&'static str] = &["none", "gzip", "zstd", "snappy"];

    /// Its config name.
    pub fn name(self) -> &'static str {
        match self {
            Compression::None => "none",
            Compression::Gzip => "gzip",
            Compression::Zstd => "zstd",
            Compression::Snappy => "snappy",
        }
    }

    /// Parses a config name.
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "none" => Some(Compression::None),
            "gzip" => Some(Compression::Gzip),
            "zstd" => Some(Compression::Zstd),
            "snappy" => Some(Compression::Snappy),
            _ => None,
        }
    }

    /// File extension (docs/firehose.md §3).
    pub fn extension(self) -> &'static str {
        match self {
            Compression::None => "",
            Compression::Gzip => ".gz",
            Compression::Zstd => ".zst",
            Compression::Snappy => ".snappy",
        }
    }

    /// Firehose's `CompressionFormat` name (DescribeDeliveryStream); sluice adds `ZSTD`.
    pub fn firehose_name(self) -> &'static str {
        match self {
            Compression::None => "UNCOMPRESSED",
            Compression::Gzip => "GZIP",
            Compression::Zstd => "ZSTD",
            Compression::Snappy => "Snappy",
        }
    }

    /// `Content-Encoding` of an object so compressed, if any.
    pub fn content_encoding(self) -> Option<&'static str> {
        match self {
            Compression::None => None,
            Compression::Gzip => Some("gzip"),
            Compression::Zstd => Some("zstd"),
            Compression::Snappy => Some("x-snappy-framed"),
        }
    }
}

/// A streaming compressor writing into memory.
enum Compressor {
    None(Vec<u8>),
    Snappy(Box<snap::write::FrameEncoder<Vec<u8>>>),
    /// No state: each block is compressed whole, as its own member, by the thread's compressor;
    /// the members so far.
    Blocks(Vec<u8>),
}

impl Compressor {
    fn new(compression: Compression) -> std::io::Result<Self> {
        Ok(match compression {
            Compression::None => Compressor::None(Vec::new()),
            // Never streamed: members compressed whole (see the module's documentation).
            Compression::Gzip | Compression::Zstd => Compressor::Blocks(Vec::new()),
            Compression::Snappy => Compressor::Snappy(Box::new(snap::write::FrameEncoder::new(Vec::new()))),
        })
    }
}

const GZIP_LEVEL: i32 = 6;
const ZSTD_LEVEL: i32 = 3;

thread_local! {
    /// libdeflate's compressor, reused by the gzip members made on this thread.
    static DEFLATE: RefCell<Option<libdeflater::Compressor>> = const { RefCell::new(None) };
    /// zstd's context, reused by the zstd frames made on this thread.
    static ZSTD: RefCell<Option<zstd::bulk::Compressor<'static>>> = const { RefCell::new(None) };
    /// Where this thread's members are compressed before they are copied to their object.
    static SCRATCH: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// Compresses a whole small object with this thread's reused compressor: the same stream format
/// (one gzip member, one zstd frame, a Snappy frame stream) a streaming compressor writes.
fn compress_whole(compression: Compression, bytes: &[u8]) -> std::io::Result<Vec<u8>> {
    match compression {
        Compression::None => Ok(bytes.to_vec()),
        Compression::Gzip | Compression::Zstd => {
            let mut out = Vec::new();
            member_into(compression, bytes, &mut out)?;
            Ok(out)
        }
        Compression::Snappy => {
            // Snappy's state is small and has no reset: a fresh frame encoder per object.
            let mut w = snap::write::FrameEncoder::new(Vec::with_capacity(bytes.len() + 64));
            w.write_all(bytes)?;
            w.into_inner().map_err(|e| std::io::Error::other(e.to_string()))
        }
    }
}

/// Appends `bytes` to `out` as one member compressed whole by this thread's compressor: a gzip
/// member (header, deflate at level 6 by libdeflate, CRC-32 and length) or a zstd frame (level 3,
/// with its content size). Snappy and no compression are streams of their own (`compress_whole`).
fn member_into(compression: Compression, bytes: &[u8], out: &mut Vec<u8>) -> std::io::Result<()> {
    // Into the thread's scratch buffer, sized for the worst case, then copied: an open object's
    // own buffer grows by what the member takes, not by the bound (a partitioned sink holds
    // thousands of them).
    SCRATCH.with(|scratch| {
        let mut scratch = scratch.borrow_mut();
        let n = match compression {
            Compression::Zstd => ZSTD.with(|cell| {
                let mut slot = cell.borrow_mut();
                let compressor = match slot.as_mut() {
                    Some(c) => c,
                    None => slot.insert(zstd::bulk::Compressor::new(ZSTD_LEVEL)?),
                };
                scratch.resize(zstd::zstd_safe::compress_bound(bytes.len()), 0);
                compressor.compress_to_buffer(bytes, &mut scratch[..])
            })?,
            Compression::Gzip => DEFLATE.with(|cell| {
                let mut slot = cell.borrow_mut();
                let compressor = match slot.as_mut() {
                    Some(c) => c,
                    None => {
                        let level = libdeflater::CompressionLvl::new(GZIP_LEVEL)
                            .map_err(|e| std::io::Error::other(format!("libdeflate level {GZIP_LEVEL}: {e:?}")))?;
                        slot.insert(libdeflater::Compressor::new(level))
                    }
                };
                scratch.resize(compressor.gzip_compress_bound(bytes.len()), 0);
                compressor
                    .gzip_compress(bytes, &mut scratch[..])
                    .map_err(|e| std::io::Error::other(format!("gzip: {e}")))
            })?,
            other => {
                return Err(std::io::Error::other(format!("{} has no members compressed whole", other.name())));
            }
        };
        out.extend_from_slice(&scratch[..n]);
        Ok(())
    })
}

/// An object being written: encoded bytes go in, compressed bytes accumulate.
///
/// Small writes (one record each) are staged and handed to the compressor in blocks of
/// [`STAGING_BYTES`]: compressors pay a cost per call, and a record is a few hundred bytes. The
/// object's own compressor is made with its first full block; an object finished before that is
/// compressed whole by the thread's reused compressor.
pub struct ObjectWriter {
    compression: Compression,
    /// `None` until the first block is full (always `Some` without compression); boxed, so an
    /// object without one is a few words.
    compressor: Option<Box<Compressor>>,
    staged: Vec<u8>,
    /// Bytes written before compression.
    uncompressed: u64,
    /// Full blocks become independent members instead of going through a compressor of its own.
    in_blocks: bool,
    /// Everything is staged and compressed in one piece when finished (one gzip member).
    whole: bool,
}

/// Size of the blocks handed to the compressor: 256 KiB stays in L2 (2 MiB measured 10-28 % slower
/// for gzip); the frames of an object written [`ObjectWriter::in_blocks`], whatever its compression.
pub const STAGING_BYTES: usize = 256 * 1024;
/// Size of the frames of a zstd object (not written in blocks): see the module's documentation.
pub const ZSTD_FRAME_BYTES: usize = 1024 * 1024;

impl std::fmt::Debug for ObjectWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ObjectWriter").field("uncompressed", &self.uncompressed).finish()
    }
}

impl ObjectWriter {
    /// A new, empty object.
    pub fn new(compression: Compression) -> std::io::Result<Self> {
        Ok(Self::empty(compression, false))
    }

    /// A new, empty object that never holds a compressor: each block of [`STAGING_BYTES`] is
    /// compressed whole as an independent member (a gzip member, a zstd frame, a Snappy stream) by
    /// the thread's compressor. The object is its members back to back, which the format's readers
    /// read as one stream (RFC 1952 §2.2; zstd frames; Snappy's framing format allows a repeated
    /// stream identifier); each member starts without the previous block's dictionary.
    pub fn in_blocks(compression: Compression) -> Self {
        Self::empty(compression, true)
    }

    /// A new, empty object compressed in one piece when it is finished: one gzip member, one zstd
    /// frame, one Snappy stream (an HTTP request body, which some servers decode as one gzip member
    /// only). It stages every byte written until then.
    pub fn whole(compression: Compression) -> Self {
        let mut writer = Self::empty(compression, false);
        writer.whole = compression != Compression::None;
        writer
    }

    fn empty(compression: Compression, in_blocks: bool) -> Self {
        // Without compression the bytes go straight to the output; with it, the compressor (or the
        // members) come with the first full block. The staging buffer grows with what is written
        // (a partitioned sink may hold thousands of small open objects).
        let compressor = match compression {
            Compression::None => Some(Box::new(Compressor::None(Vec::new()))),
            _ => None,
        };
        ObjectWriter { compression, compressor, staged: Vec::new(), uncompressed: 0, in_blocks, whole: false }
    }

    /// About how much memory the open object holds: its staged and compressed bytes and its
    /// compressor's state once it has one (Snappy's encoder; gzip and zstd members hold none).
    pub fn memory(&self) -> u64 {
        let (state, output) = match self.compressor.as_deref() {
            None => (0, 0),
            Some(Compressor::None(v)) => (0, v.capacity()),
            Some(Compressor::Snappy(w)) => (132 << 10, w.get_ref().capacity()),
            Some(Compressor::Blocks(v)) => (0, v.capacity()),
        };
        (state + output + self.staged.capacity()) as u64
    }

    /// Adds `bytes` to the object.
    pub fn write(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.uncompressed += bytes.len() as u64;
        if let Some(Compressor::None(v)) = self.compressor.as_deref_mut() {
            v.extend_from_slice(bytes);
            return Ok(());
        }
        self.staged.extend_from_slice(bytes);
        if self.staged.len() >= self.block_bytes() && !self.whole { self.compress_staged() } else { Ok(()) }
    }

    /// Adds what `encode` appends to the buffer it is given (a record encoded in place, without a
    /// copy); when it fails, nothing is added and its error is returned.
    pub fn write_with<E>(
        &mut self,
        encode: impl FnOnce(&mut Vec<u8>) -> Result<(), E>,
    ) -> std::io::Result<Result<(), E>> {
        let buf = match self.compressor.as_deref_mut() {
            Some(Compressor::None(v)) => v,
            _ => &mut self.staged,
        };
        let start = buf.len();
        if let Err(e) = encode(buf) {
            buf.truncate(start);
            return Ok(Err(e));
        }
        self.uncompressed += (buf.len() - start) as u64;
        if self.staged.len() >= self.block_bytes() && !self.whole {
            self.compress_staged()?;
        }
        Ok(Ok(()))
    }

    /// How many staged bytes make a block handed to the compressor.
    fn block_bytes(&self) -> usize {
        if self.compression == Compression::Zstd && !self.in_blocks { ZSTD_FRAME_BYTES } else { STAGING_BYTES }
    }

    fn compress_staged(&mut self) -> std::io::Result<()> {
        let compressor = match &mut self.compressor {
            Some(c) => c,
            empty if self.in_blocks => empty.insert(Box::new(Compressor::Blocks(Vec::new()))),
            empty => empty.insert(Box::new(Compressor::new(self.compression)?)),
        };
        let result = match compressor.as_mut() {
            Compressor::None(v) => {
                v.extend_from_slice(&self.staged);
                Ok(())
            }
            Compressor::Snappy(w) => w.write_all(&self.staged),
            Compressor::Blocks(_) if self.staged.is_empty() => Ok(()),
            Compressor::Blocks(members) if matches!(self.compression, Compression::Gzip | Compression::Zstd) => {
                member_into(self.compression, &self.staged, members)
            }
            Compressor::Blocks(members) => {
                compress_whole(self.compression, &self.staged).map(|member| members.extend_from_slice(&member))
            }
        };
        self.staged.clear();
        result
    }

    /// Bytes written so far, before compression.
    pub fn uncompressed_len(&self) -> u64 {
        self.uncompressed
    }

    fn output(&mut self) -> Option<&mut Vec<u8>> {
        Some(match self.compressor.as_deref_mut()? {
            Compressor::None(v) => v,
            Compressor::Snappy(w) => w.get_mut(),
            Compressor::Blocks(v) => v,
        })
    }

    /// Compressed bytes produced and not yet taken.
    pub fn output_len(&mut self) -> usize {
        self.output().map_or(0, |o| o.len())
    }

    /// Takes the compressed bytes produced so far (the object continues after them): a part of an
    /// object uploaded while it grows.
    pub fn take_output(&mut self) -> Vec<u8> {
        self.output().map(std::mem::take).unwrap_or_default()
    }

    /// Finishes the stream and returns the compressed object.
    pub fn finish(mut self) -> std::io::Result<Vec<u8>> {
        if self.compressor.is_none() {
            return compress_whole(self.compression, &self.staged);
        }
        self.compress_staged()?;
        match self.compressor.map(|c| *c) {
            None => Ok(Vec::new()),
            Some(Compressor::None(v)) => Ok(v),
            Some(Compressor::Snappy(w)) => w.into_inner().map_err(|e| std::io::Error::other(e.to_string())),
            Some(Compressor::Blocks(members)) => Ok(members),
        }
    }
}

/// Decompresses a whole object (tests, tools, and readers of our own output).
pub fn decompress(compression: Compression, bytes: &[u8]) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let mut out = Vec::new();
    match compression {
        Compression::None => out.extend_from_slice(bytes),
        Compression::Gzip => {
            flate2::read::MultiGzDecoder::new(bytes).read_to_end(&mut out)?;
        }
        Compression::Zstd => {
            zstd::stream::read::Decoder::new(bytes)?.read_to_end(&mut out)?;
        }
        Compression::Snappy => {
            snap::read::FrameDecoder::new(bytes).read_to_end(&mut out)?;
        }
    }
    Ok(out)
}

/// Compresses `bytes` whole.
pub fn compress(compression: Compression, bytes: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut writer = ObjectWriter::new(compression)?;
    writer.write(bytes)?;
    writer.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The first bytes of every zstd frame.
    const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];

    /// `n` lines of NDJSON, `{"n":i}` each.
    fn numbered_lines(n: usize) -> Vec<u8> {
        (0..n).flat_map(|i| format!("{{\"n\":{i}}}\n").into_bytes()).collect()
    }

    /// What a single-member gzip decoder (some HTTP servers' `Content-Encoding: gzip`) reads.
    fn first_gzip_member(compressed: &[u8]) -> Vec<u8> {
        let mut single = Vec::new();
        std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(compressed), &mut single)
            .unwrap_or_else(|e| panic!("{e}"));
        single
    }

    #[test]
    fn every_compression_round_trips() {
        let payload = numbered_lines(200_000);
        for name in Compression::NAMES {
            let c = Compression::from_name(name).unwrap_or(Compression::None);
            let mut w = ObjectWriter::new(c).unwrap_or_else(|e| panic!("{e}"));
            for chunk in payload.chunks(7777) {
                w.write(chunk).unwrap_or_else(|e| panic!("{e}"));
            }
            assert_eq!(w.uncompressed_len(), payload.len() as u64);
            let compressed = w.finish().unwrap_or_else(|e| panic!("{e}"));
            if c != Compression::None {
                assert!(compressed.len() < payload.len() / 2, "{name} did not compress: {}", compressed.len());
            }
            if c == Compression::Zstd {
                // 2.3 MB in frames of 1 MiB: three frames, each starting with zstd's magic number.
                let frames = compressed.windows(4).filter(|w| w == &ZSTD_MAGIC).count();
                assert_eq!(frames, payload.len().div_ceil(ZSTD_FRAME_BYTES), "zstd frames");
            }
            assert_eq!(decompress(c, &compressed).unwrap_or_default(), payload, "{name}");
        }
    }

    /// Objects smaller than a block are compressed whole by the thread's reused compressor: each
    /// is a complete stream on its own (state reset between them), readable by the standard
    /// decoders, and a gzip member is byte for byte what the streaming encoder writes.
    #[test]
    fn small_objects_compressed_whole_are_complete_streams() {
        for name in Compression::NAMES {
            let c = Compression::from_name(name).unwrap_or(Compression::None);
            for n in [0usize, 1, 10, 5_000, 1_000] {
                let payload = numbered_lines(n);
                let mut w = ObjectWriter::new(c).unwrap_or_else(|e| panic!("{e}"));
                w.write(&payload).unwrap_or_else(|e| panic!("{e}"));
                assert_eq!(w.memory(), payload.len().max(w.staged.capacity()) as u64, "{name}: no compressor state");
                let compressed = w.finish().unwrap_or_else(|e| panic!("{e}"));
                assert_eq!(decompress(c, &compressed).unwrap_or_default(), payload, "{name} {n}");
                if c == Compression::Gzip {
                    // One member: the single-member decoder reads all of it.
                    assert_eq!(first_gzip_member(&compressed), payload);
                }
            }
        }
    }

    /// An object written whole is one stream however large: a single-member gzip decoder (what
    /// some HTTP servers use for `Content-Encoding: gzip`) reads all of it.
    #[test]
    fn objects_written_whole_are_one_stream() {
        let payload = numbered_lines(120_000);
        for name in Compression::NAMES {
            let c = Compression::from_name(name).unwrap_or(Compression::None);
            let mut w = ObjectWriter::whole(c);
            for chunk in payload.chunks(1000) {
                w.write(chunk).unwrap_or_else(|e| panic!("{e}"));
            }
            let compressed = w.finish().unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(decompress(c, &compressed).unwrap_or_default(), payload, "{name}");
            if c == Compression::Gzip {
                assert_eq!(first_gzip_member(&compressed), payload, "one member");
            }
        }
    }

    /// An object written in blocks is its blocks' members back to back: every decoder of the
    /// format reads it whole, and it holds no compressor state while open.
    #[test]
    fn objects_in_blocks_are_members_back_to_back() {
        let payload = numbered_lines(120_000);
        for name in Compression::NAMES {
            let c = Compression::from_name(name).unwrap_or(Compression::None);
            let mut w = ObjectWriter::in_blocks(c);
            for chunk in payload.chunks(1000) {
                w.write(chunk).unwrap_or_else(|e| panic!("{e}"));
                // Its staged block and its members, never a compressor's state.
                let state_free =
                    matches!(w.compressor.as_deref(), None | Some(Compressor::Blocks(_) | Compressor::None(_)));
                assert!(state_free, "{name}");
            }
            let compressed = w.finish().unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(decompress(c, &compressed).unwrap_or_default(), payload, "{name}");
            // Several members (the payload is more than four blocks), each with its format's magic.
            let magic: &[u8] = match c {
                Compression::Gzip => &[0x1f, 0x8b, 8],
                Compression::Zstd => &ZSTD_MAGIC,
                _ => &[],
            };
            if !magic.is_empty() {
                let members = compressed.windows(magic.len()).filter(|w| w == &magic).count();
                assert!(members >= 4, "{name}: {members} members");
            }
        }
    }
}

//! Encryption at rest for the write-ahead log (`[pipeline] encryption`): envelope encryption with a
//! fresh AES-256-GCM data key per segment (aws-lc-rs).
//!
//! Keys, from the top: a *log key* wraps the segment keys. It is either the 32 bytes of a key file,
//! or a data key KMS generated for this start (`GenerateDataKey`; its encrypted copy is stored with
//! every segment key it wraps and unwrapped with `Decrypt` at a later start): a [`LogKeys`] gives
//! it, and says in a *locator* (JSON) how to get it back. Each segment gets its own random data key,
//! wrapped under the log key (the segment's file name authenticated with it) and written, synced,
//! to `<segment>.key` before the segment exists. Each entry's payload is sealed as
//! `SLE1 | nonce (12 random bytes) | ciphertext | tag (16)`, with the log's id and the entry's
//! sequence number authenticated, so an entry cannot be moved to another place or another log
//! undetected. The frame's checksums cover the sealed bytes, so a torn tail is found as before.
//!
//! Guarantees: with a log key configured, no payload byte reaches the disk in the clear; a segment
//! whose key cannot be unwrapped (another key file, another KMS key, its key file missing beside
//! encrypted entries, an encrypted log opened without `encryption`) is an error at open naming the
//! segment and the entry's offset, and nothing is deleted or quarantined for it, so a start with
//! the right key reads everything; an entry that fails authentication (tampered) is a finding of
//! its own, never a crash and never passed on as records. Entries written before encryption was
//! turned on stay readable; key material never appears in `Debug` output or errors.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use base64::Engine as _;
use serde::{Deserialize, Serialize};

/// First bytes of a sealed payload (a record batch's encoding never starts with them).
const SEALED_MAGIC: [u8; 4] = *b"SLE1";
/// Bytes of the GCM tag.
const TAG_LEN: usize = 16;
/// Bytes sealing adds to a payload.
const SEAL_OVERHEAD: usize = SEALED_MAGIC.len() + NONCE_LEN + TAG_LEN;

/// A 256-bit key. `Debug` shows nothing of it.
#[derive(Clone, PartialEq, Eq)]
pub struct KeyBytes(pub [u8; 32]);

impl fmt::Debug for KeyBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("KeyBytes(***)")
    }
}

/// The key that wraps the segment keys of this start, and how a later start finds it again.
#[derive(Debug, Clone)]
pub struct LogKey {
    /// The key.
    pub key: KeyBytes,
    /// Stored in every segment key file it wraps (e.g. KMS's encrypted copy of the key).
    pub locator: serde_json::Value,
}

/// Where log keys come from: a key file ([`KeyFile`]) or KMS (the connectors' client).
pub trait LogKeys: Send + Sync + fmt::Debug {
    /// The key wrapping segment keys created from now on (asked once per open).
    fn current(&self) -> Result<LogKey, String>;
    /// The key a stored locator names (asked once per distinct locator at open).
    fn recover(&self, locator: &serde_json::Value) -> Result<KeyBytes, String>;
}

/// `encryption = { key_file = "..." }`: 32 random bytes, base64, in a file.
#[derive(Clone)]
pub struct KeyFile {
    path: PathBuf,
    key: KeyBytes,
}

impl fmt::Debug for KeyFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyFile").field("path", &self.path).finish_non_exhaustive()
    }
}

impl KeyFile {
    /// Reads the key at `path`: base64 of exactly 32 bytes (surrounding whitespace allowed).
    pub fn load(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(text.trim())
            .map_err(|_| format!("{} is not base64", path.display()))?;
        let key: [u8; 32] = bytes
            .try_into()
            .map_err(|b: Vec<u8>| format!("{} holds {} bytes; a key is 32 random bytes", path.display(), b.len()))?;
        Ok(KeyFile { path: path.to_path_buf(), key: KeyBytes(key) })
    }
}

impl LogKeys for KeyFile {
    fn current(&self) -> Result<LogKey, String> {
        Ok(LogKey { key: self.key.clone(), locator: serde_json::json!({"kind": "key_file"}) })
    }

    fn recover(&self, locator: &serde_json::Value) -> Result<KeyBytes, String> {
        match locator.get("kind").and_then(serde_json::Value::as_str) {
            Some("key_file") => Ok(self.key.clone()),
            Some(kind) => Err(format!("its key is a `{kind}` key, but `encryption` names a key file")),
            None => Err("its key file names no key".into()),
        }
    }
}

/// One segment's data key, ready to seal and open entries.
#[derive(Clone)]
pub struct SegmentCipher(Arc<LessSafeKey>);

impl fmt::Debug for SegmentCipher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SegmentCipher(***)")
    }
}

impl PartialEq for SegmentCipher {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for SegmentCipher {}

/// Why a sealed entry did not open.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Unsealed {
    /// Its tag does not verify: tampered, or sealed for another place or key.
    #[error("the entry fails authentication (tampered, or sealed under another key)")]
    Unauthentic,
}

fn aad(log_id: u64, seq: u64) -> [u8; 16] {
    let mut aad = [0u8; 16];
    aad[..8].copy_from_slice(&log_id.to_le_bytes());
    aad[8..].copy_from_slice(&seq.to_le_bytes());
    aad
}

fn random<const N: usize>() -> Result<[u8; N], String> {
    let mut bytes = [0u8; N];
    aws_lc_rs::rand::fill(&mut bytes).map_err(|_| "the system random generator failed".to_string())?;
    Ok(bytes)
}

fn cipher_of(key: &KeyBytes) -> Result<LessSafeKey, String> {
    UnboundKey::new(&AES_256_GCM, &key.0).map(LessSafeKey::new).map_err(|_| "not an AES-256 key".to_string())
}

/// Whether a payload is sealed.
fn is_sealed(payload: &[u8]) -> bool {
    payload.starts_with(&SEALED_MAGIC)
}

impl SegmentCipher {
    /// Seals `payload` for entry `seq` of log `log_id`.
    pub fn seal(&self, log_id: u64, seq: u64, payload: &[u8]) -> Result<Vec<u8>, String> {
        let nonce = random::<NONCE_LEN>()?;
        let mut out = Vec::with_capacity(payload.len() + SEAL_OVERHEAD);
        out.extend_from_slice(&SEALED_MAGIC);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(payload);
        let head = SEALED_MAGIC.len() + NONCE_LEN;
        let tag = self
            .0
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad(log_id, seq)),
                &mut out[head..],
            )
            .map_err(|_| "sealing a log entry failed".to_string())?;
        out.extend_from_slice(tag.as_ref());
        Ok(out)
    }

    /// Opens what [`SegmentCipher::seal`] made for entry `seq` of log `log_id`.
    pub fn open(&self, log_id: u64, seq: u64, mut sealed: Vec<u8>) -> Result<Vec<u8>, Unsealed> {
        let head = SEALED_MAGIC.len() + NONCE_LEN;
        if !is_sealed(&sealed) || sealed.len() < head + TAG_LEN {
            return Err(Unsealed::Unauthentic);
        }
        let mut nonce = [0u8; NONCE_LEN];
        nonce.copy_from_slice(&sealed[SEALED_MAGIC.len()..head]);
        let plain = self
            .0
            .open_in_place(Nonce::assume_unique_for_key(nonce), Aad::from(aad(log_id, seq)), &mut sealed[head..])
            .map_err(|_| Unsealed::Unauthentic)?
            .len();
        sealed.copy_within(head..head + plain, 0);
        sealed.truncate(plain);
        Ok(sealed)
    }
}

/// A segment's key file as stored.
#[derive(Debug, Serialize, Deserialize)]
struct StoredKey {
    version: u32,
    /// How to get the log key back.
    log_key: serde_json::Value,
    /// nonce | the segment key sealed under the log key | tag, base64.
    wrapped: String,
}

/// The key file of the segment at `segment`.
pub fn key_path(segment: &Path) -> PathBuf {
    segment.with_extension("key")
}

fn segment_name(segment: &Path) -> Vec<u8> {
    segment.file_name().map(|n| n.to_string_lossy().into_owned().into_bytes()).unwrap_or_default()
}

/// Makes and opens segment keys for one log.
#[derive(Debug)]
pub struct Sealer {
    keys: Arc<dyn LogKeys>,
    /// This start's log key (asked for when the first segment key is made).
    current: Mutex<Option<LogKey>>,
    /// Log keys recovered, by locator.
    recovered: Mutex<HashMap<String, KeyBytes>>,
}

impl Sealer {
    /// A sealer with log keys from `keys`.
    pub fn new(keys: Arc<dyn LogKeys>) -> Self {
        Sealer { keys, current: Mutex::new(None), recovered: Mutex::new(HashMap::new()) }
    }

    /// Makes the data key of a new segment at `segment` and writes its key file (synced; the
    /// caller syncs the folder with the segment's creation).
    pub fn create(&self, segment: &Path) -> Result<SegmentCipher, String> {
        let log_key = {
            let mut current = self.current.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            match current.as_ref() {
                Some(key) => key.clone(),
                None => {
                    let key = self.keys.current()?;
                    *current = Some(key.clone());
                    key
                }
            }
        };
        let data_key = KeyBytes(random::<32>()?);
        let nonce = random::<NONCE_LEN>()?;
        let mut wrapped = data_key.0.to_vec();
        let tag = cipher_of(&log_key.key)?
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(segment_name(segment)),
                &mut wrapped,
            )
            .map_err(|_| "wrapping a segment key failed".to_string())?;
        let mut stored = nonce.to_vec();
        stored.extend_from_slice(&wrapped);
        stored.extend_from_slice(tag.as_ref());
        let file = StoredKey {
            version: 1,
            log_key: log_key.locator,
            wrapped: base64::engine::general_purpose::STANDARD.encode(stored),
        };
        let text = serde_json::to_vec(&file).map_err(|e| e.to_string())?;
        let path = key_path(segment);
        let tmp = path.with_extension("key.tmp");
        let written = std::fs::File::create(&tmp).and_then(|mut f| {
            use std::io::Write;
            f.write_all(&text)?;
            f.sync_all()
        });
        written
            .and_then(|()| std::fs::rename(&tmp, &path))
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        Ok(SegmentCipher(Arc::new(cipher_of(&data_key)?)))
    }

    /// The data key of the segment at `segment`: `Ok(None)` when it has no key file (written
    /// before encryption was configured), an error naming why when the key cannot be unwrapped.
    pub fn open(&self, segment: &Path) -> Result<Option<SegmentCipher>, String> {
        let path = key_path(segment);
        let text = match std::fs::read(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
        };
        let stored: StoredKey =
            serde_json::from_slice(&text).map_err(|e| format!("{} is not a segment key file: {e}", path.display()))?;
        let locator = stored.log_key.to_string();
        let log_key = {
            let mut recovered = self.recovered.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            match recovered.get(&locator) {
                Some(key) => key.clone(),
                None => {
                    let key = self.keys.recover(&stored.log_key)?;
                    recovered.insert(locator, key.clone());
                    key
                }
            }
        };
        let mut wrapped = base64::engine::general_purpose::STANDARD
            .decode(stored.wrapped.as_bytes())
            .map_err(|_| format!("{} holds no wrapped key", path.display()))?;
        if wrapped.len() != NONCE_LEN + 32 + TAG_LEN {
            return Err(format!("{} holds no wrapped key", path.display()));
        }
        let mut nonce = [0u8; NONCE_LEN];
        nonce.copy_from_slice(&wrapped[..NONCE_LEN]);
        let key = cipher_of(&log_key)?
            .open_in_place(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(segment_name(segment)),
                &mut wrapped[NONCE_LEN..],
            )
            .map_err(|_| "its data key does not unwrap with the configured key (another key?)".to_string())?;
        let mut data_key = [0u8; 32];
        data_key.copy_from_slice(key);
        Ok(Some(SegmentCipher(Arc::new(cipher_of(&KeyBytes(data_key))?))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key_file(dir: &Path, byte: u8) -> Arc<dyn LogKeys> {
        let path = dir.join(format!("k{byte}"));
        std::fs::write(&path, base64::engine::general_purpose::STANDARD.encode([byte; 32])).unwrap();
        Arc::new(KeyFile::load(&path).unwrap())
    }

    #[test]
    fn entries_open_only_at_their_place_under_their_segment_key() {
        let dir = tempfile::tempdir().unwrap();
        let segment = dir.path().join("00000000000000000000.wal");
        let sealer = Sealer::new(key_file(dir.path(), 1));
        let cipher = sealer.create(&segment).unwrap();
        let sealed = cipher.seal(7, 3, b"secret record").unwrap();
        assert!(is_sealed(&sealed) && !sealed.windows(6).any(|w| w == b"secret"));
        assert_eq!(cipher.open(7, 3, sealed.clone()).unwrap(), b"secret record");
        assert_eq!(cipher.open(7, 4, sealed.clone()), Err(Unsealed::Unauthentic), "another sequence number");
        assert_eq!(cipher.open(8, 3, sealed.clone()), Err(Unsealed::Unauthentic), "another log");
        let mut flipped = sealed.clone();
        flipped[20] ^= 1;
        assert_eq!(cipher.open(7, 3, flipped), Err(Unsealed::Unauthentic));
        // The key file brings the same key back; another key file does not unwrap it.
        let reopened = Sealer::new(key_file(dir.path(), 1)).open(&segment).unwrap().unwrap();
        assert_eq!(reopened.open(7, 3, sealed).unwrap(), b"secret record");
        let wrong = Sealer::new(key_file(dir.path(), 2)).open(&segment).unwrap_err();
        assert!(wrong.contains("does not unwrap"), "{wrong}");
        // A segment without a key file was written before encryption.
        assert_eq!(sealer.open(&dir.path().join("00000000000000000009.wal")).unwrap(), None);
    }

    #[test]
    fn a_key_file_must_hold_32_bytes_of_base64() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("short");
        std::fs::write(&path, base64::engine::general_purpose::STANDARD.encode([0u8; 16])).unwrap();
        assert!(KeyFile::load(&path).unwrap_err().contains("16 bytes"));
        std::fs::write(&path, "not base64!").unwrap();
        assert!(KeyFile::load(&path).unwrap_err().contains("not base64"));
        assert!(KeyFile::load(&dir.path().join("missing")).unwrap_err().contains("cannot read"));
    }
}

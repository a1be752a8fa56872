//! A MaxMind DB file loaded once, with its search tree walked for many addresses at once.
//!
//! The fields the enrich transform writes are read from the data records by hand
//! ([`SearchTree::geo_fields`], [`SearchTree::asn_fields`]: the crate's serde decoder skipped the
//! same fields more slowly and needed a second walk to the record); a record laid out otherwise
//! than MaxMind's writers lay theirs out is [`Unusual`], and the caller asks the `maxminddb` crate.
//! Finding an address's record is a walk down the
//! file's binary search tree, one node per bit of the address, and in a database larger than the
//! CPU's caches (GeoLite2 City is 60 MB) nearly every node below the first levels is a cache miss:
//! measured on the enrich bench, three quarters of the lookup's time sat on the loads of the next
//! node. [`SearchTree::locate_many`] walks up to [`LANES`] addresses in lockstep, one level of each
//! per round, so their misses overlap instead of following one another.
//!
//! Guarantees: the fields read by hand are the crate's for every record of MaxMind's test
//! databases, and reading at any place of a file is an answer or [`Unusual`], never a panic;
//! [`SearchTree::locate`] and [`SearchTree::locate_many`] find the same data record as
//! the crate's own `Reader::lookup` for every address (tested against it on MaxMind's test
//! databases, IPv4 and IPv6); a node outside the file (a damaged database) is "not found", never a
//! panic. The file's bytes are held once, shared by the crate's reader and the tree ([`Bytes`]).

use std::net::IpAddr;
use std::ops::ControlFlow::{self, Break, Continue};
use std::path::Path;

use bytes::Bytes;

/// Addresses walked together: enough to keep the memory system busy, few enough that each round's
/// state stays in registers and L1.
pub const LANES: usize = 16;

/// A database as loaded: the crate's reader (to decode records) and the search tree over the
/// same bytes.
pub struct Loaded {
    /// The crate's reader: decodes a found record.
    pub reader: maxminddb::Reader<Bytes>,
    /// Finds records, many addresses at a time.
    pub tree: SearchTree,
}

/// The search tree of a MaxMind DB file.
pub struct SearchTree {
    bytes: Bytes,
    node_count: usize,
    /// Bytes per node: two records of 24, 28 or 32 bits.
    node_bytes: usize,
    record_bits: u16,
    /// Where IPv4 addresses start in an IPv6 tree (the node after 96 zero bits); 0 in an IPv4 tree.
    ipv4_start: usize,
    ipv6: bool,
    /// Where an IPv4 address's walk is after its first [`TOP_BITS`] bits, by those bits (or where
    /// it ended, if sooner): the top levels are shared by every lookup, and walking them was a
    /// quarter of the lookups' time (they sit in the cache; what remains is the misses below).
    /// Empty when a node does not fit in `u32` (then every walk starts at the top).
    ipv4_top: Vec<u32>,
}

/// Bits of an IPv4 address looked up in [`SearchTree::ipv4_top`] (a 256 KiB table).
const TOP_BITS: u32 = 16;

/// Where an address's data is: the search tree's pointer to its record (unique per data record),
/// or `None` when the database has no record for it.
pub type Located = Option<usize>;

impl Loaded {
    /// Reads a database file.
    pub fn open(path: &Path) -> Result<Self, String> {
        let bytes = Bytes::from(std::fs::read(path).map_err(|e| format!("cannot open {}: {e}", path.display()))?);
        let reader = maxminddb::Reader::from_source(bytes.clone())
            .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
        let metadata = reader.metadata();
        let record_bits = metadata.record_size;
        let mut tree = SearchTree {
            bytes,
            node_count: metadata.node_count as usize,
            node_bytes: usize::from(record_bits) / 4,
            record_bits,
            ipv4_start: 0,
            ipv6: metadata.ip_version == 6,
            ipv4_top: Vec::new(),
        };
        if tree.ipv6 {
            let mut node = 0;
            for _ in 0..96 {
                if node >= tree.node_count {
                    break;
                }
                node = tree.child(node, 0).unwrap_or(tree.node_count);
            }
            tree.ipv4_start = node;
        }
        tree.ipv4_top = tree.top_table();
        Ok(Loaded { reader, tree })
    }
}

/// One address being walked: the node it is at, its bits (left-aligned) and how many remain.
#[derive(Clone, Copy)]
struct Walk {
    node: usize,
    bits: u128,
    left: u32,
}

impl SearchTree {
    /// The child `side` (0: left, 1: right) of `node`; `None` past the end of the file (or for a
    /// record size the format does not have).
    #[inline(always)]
    fn child(&self, node: usize, side: usize) -> Option<usize> {
        let at = node * self.node_bytes;
        let b = self.bytes.get(at..at + self.node_bytes)?;
        let be = |range: std::ops::Range<usize>| {
            b.get(range).map(|b| b.iter().fold(0usize, |v, &x| (v << 8) | usize::from(x)))
        };
        // 28 bits: the middle byte's high nibble tops the left record, its low nibble the right.
        let nibble = |shift: u8| b.get(3).map(|&m| usize::from((m >> shift) & 0x0f) << 24);
        match (self.record_bits, side) {
            (24, 0) => be(0..3),
            (24, _) => be(3..6),
            (28, 0) => Some(nibble(4)? | be(0..3)?),
            (28, _) => Some(nibble(0)? | be(4..7)?),
            (32, 0) => be(0..4),
            (32, _) => be(4..8),
            // The crate opens no other record size.
            _ => None,
        }
    }

    /// Where a walk of `address` starts; `None` for an IPv6 address in an IPv4 database.
    /// [`Self::ipv4_top`] of this tree's bytes: each 16-bit prefix walked from the IPv4 start.
    fn top_table(&self) -> Vec<u32> {
        let mut table = Vec::with_capacity(1 << TOP_BITS);
        for prefix in 0..1u32 << TOP_BITS {
            let mut walk = Walk { node: self.ipv4_start, bits: u128::from(prefix) << (128 - TOP_BITS), left: TOP_BITS };
            while self.step(&mut walk) {}
            match u32::try_from(walk.node) {
                Ok(node) => table.push(node),
                Err(_) => return Vec::new(),
            }
        }
        table
    }

    fn start(&self, address: IpAddr) -> Option<Walk> {
        match address {
            IpAddr::V4(v4) => {
                let bits = u32::from(v4);
                Some(match self.ipv4_top.get((bits >> (32 - TOP_BITS)) as usize) {
                    Some(&node) => {
                        Walk { node: node as usize, bits: u128::from(bits) << (96 + TOP_BITS), left: 32 - TOP_BITS }
                    }
                    None => Walk { node: self.ipv4_start, bits: u128::from(bits) << 96, left: 32 },
                })
            }
            IpAddr::V6(v6) if self.ipv6 => Some(Walk { node: 0, bits: u128::from(v6), left: 128 }),
            IpAddr::V6(_) => None,
        }
    }

    /// What a finished walk found: a pointer past the nodes is a data record (`node_count` itself
    /// is the empty record; a node still inside the tree means the bits ran out).
    fn found(&self, node: usize) -> Located {
        (node > self.node_count).then_some(node)
    }

    /// Takes one step of `walk`; false when it has finished.
    #[inline(always)]
    fn step(&self, walk: &mut Walk) -> bool {
        if walk.left == 0 || walk.node >= self.node_count {
            return false;
        }
        let side = (walk.bits >> 127) as usize;
        walk.node = self.child(walk.node, side).unwrap_or(self.node_count);
        walk.bits <<= 1;
        walk.left -= 1;
        true
    }

    /// Where `address`'s data is.
    pub fn locate(&self, address: IpAddr) -> Located {
        let mut walk = self.start(address)?;
        while self.step(&mut walk) {}
        self.found(walk.node)
    }

    /// Where each of `addresses`' data is, into `out` (cleared first, one entry per address):
    /// [`LANES`] walks at a time, a level of each per round.
    pub fn locate_many(&self, addresses: &[IpAddr], out: &mut Vec<Located>) {
        out.clear();
        for chunk in addresses.chunks(LANES) {
            let mut walks = [Walk { node: self.node_count, bits: 0, left: 0 }; LANES];
            let mut valid = [false; LANES];
            for (i, &address) in chunk.iter().enumerate() {
                if let Some(walk) = self.start(address) {
                    walks[i] = walk;
                    valid[i] = true;
                }
            }
            loop {
                let mut moved = false;
                for walk in &mut walks[..chunk.len()] {
                    moved |= self.step(walk);
                }
                if !moved {
                    break;
                }
            }
            out.extend(
                walks[..chunk.len()].iter().zip(valid).map(|(w, ok)| if ok { self.found(w.node) } else { None }),
            );
        }
    }
}

/// The fields of a City (or Country) record the enrich transform writes.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub struct GeoFields<'a> {
    /// `city.names.en`.
    pub city: Option<&'a str>,
    /// `country.names.en`.
    pub country: Option<&'a str>,
    /// `country.iso_code`.
    pub country_code: Option<&'a str>,
    /// `location.latitude`.
    pub latitude: Option<f64>,
    /// `location.longitude`.
    pub longitude: Option<f64>,
}

/// The fields of an ASN record the enrich transform writes.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub struct AsnFields<'a> {
    /// `autonomous_system_number`.
    pub number: Option<u32>,
    /// `autonomous_system_organization`.
    pub organization: Option<&'a str>,
}

/// A record read by hand was not laid out as MaxMind's databases lay theirs out (a field of
/// another type, a pointer to a pointer, a key twice, text that is not UTF-8, bytes past the
/// end): the caller asks the crate instead, whose answer then decides.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unusual;

/// Deepest nesting of maps and arrays skipped by hand.
const MAX_DATA_DEPTH: usize = 32;

/// Data types of the MaxMind DB format (spec §"Output Data Section").
const POINTER: u8 = 1;
const UTF8: u8 = 2;
const DOUBLE: u8 = 3;
const UINT16: u8 = 5;
const UINT32: u8 = 6;
const MAP: u8 = 7;
const UINT64: u8 = 9;
const ARRAY: u8 = 11;
const BOOLEAN: u8 = 14;
const FLOAT: u8 = 15;

impl Loaded {
    /// The bytes of the database file (a bound for [`SearchTree`] pointers in tests).
    #[cfg(test)]
    pub fn tree_bytes(&self) -> usize {
        self.tree.bytes.len()
    }
}

impl SearchTree {
    /// The data section: what follows the search tree and its 16-byte separator.
    fn data(&self) -> Option<&[u8]> {
        self.bytes.get(self.node_count * self.node_bytes + 16..)
    }

    /// Where the record `located` points to starts in the data section.
    fn record_at(&self, located: usize) -> Option<usize> {
        located.checked_sub(self.node_count + 16)
    }

    /// The fields the transform writes of the City record at `located`, read by hand (the crate's
    /// serde decoder, and the second walk down the tree it needs to find the record, were a sixth
    /// of the enrich transform's time).
    pub fn geo_fields(&self, located: usize) -> Result<GeoFields<'_>, Unusual> {
        let data = Data(self.data().ok_or(Unusual)?);
        let mut fields = GeoFields::default();
        data.wanted(self.record_at(located).ok_or(Unusual)?, [b"city", b"country", b"location"], |which, value| {
            let inner: [&[u8]; 2] = if which == 2 { [b"latitude", b"longitude"] } else { [b"names", b"iso_code"] };
            data.wanted(value, inner, |member, value| {
                match (which, member) {
                    (0 | 1, 0) => {
                        let mut english = None;
                        data.wanted(value, [b"en"], |_, value| {
                            english = Some(data.text(value)?);
                            Ok(())
                        })?;
                        if which == 0 {
                            fields.city = english;
                        } else {
                            fields.country = english;
                        }
                    }
                    // A city's code is read (it must be text) but not written.
                    (0, _) => {
                        data.text(value)?;
                    }
                    (1, _) => fields.country_code = Some(data.text(value)?),
                    (_, 0) => fields.latitude = Some(data.double(value)?),
                    _ => fields.longitude = Some(data.double(value)?),
                }
                Ok(())
            })
        })?;
        Ok(fields)
    }

    /// The fields the transform writes of the ASN record at `located`, read by hand.
    pub fn asn_fields(&self, located: usize) -> Result<AsnFields<'_>, Unusual> {
        let data = Data(self.data().ok_or(Unusual)?);
        let mut fields = AsnFields::default();
        let wanted: [&[u8]; 2] = [b"autonomous_system_number", b"autonomous_system_organization"];
        data.wanted(self.record_at(located).ok_or(Unusual)?, wanted, |slot, value| {
            if slot == 0 {
                fields.number = Some(u32::try_from(data.unsigned(value)?).map_err(|_| Unusual)?);
            } else {
                fields.organization = Some(data.text(value)?);
            }
            Ok(())
        })?;
        Ok(fields)
    }
}

/// A database's data section, read field by field.
struct Data<'a>(&'a [u8]);

/// A field's type, its size (a map's or array's count), and where its payload starts.
#[derive(Debug, Clone, Copy)]
struct Field {
    kind: u8,
    size: usize,
    payload: usize,
}

impl<'a> Data<'a> {
    fn byte(&self, at: usize) -> Result<u8, Unusual> {
        self.0.get(at).copied().ok_or(Unusual)
    }

    /// `n` bytes at `at` as a big-endian number.
    fn number(&self, at: usize, n: usize) -> Result<usize, Unusual> {
        let bytes = self.0.get(at..at.checked_add(n).ok_or(Unusual)?).ok_or(Unusual)?;
        Ok(bytes.iter().fold(0usize, |v, &b| (v << 8) | usize::from(b)))
    }

    /// The field whose control byte is at `at`.
    #[inline]
    fn field(&self, at: usize) -> Result<Field, Unusual> {
        let control = self.byte(at)?;
        let mut kind = control >> 5;
        let mut next = at + 1;
        if kind == 0 {
            kind = self.byte(next)?.checked_add(7).ok_or(Unusual)?;
            next += 1;
        }
        if kind == POINTER {
            return Ok(Field { kind, size: usize::from((control >> 3) & 3) + 1, payload: next });
        }
        let size = match control & 0x1f {
            29 => 29 + self.number(next, 1)?,
            30 => 285 + self.number(next, 2)?,
            31 => 65_821 + self.number(next, 3)?,
            small => usize::from(small),
        };
        let size_bytes = match control & 0x1f {
            29 => 1,
            30 => 2,
            31 => 3,
            _ => 0,
        };
        Ok(Field { kind, size, payload: next + size_bytes })
    }

    /// The field at `at`, or the one it points to (one pointer is followed; a pointer to a
    /// pointer is unusual).
    fn resolved(&self, at: usize) -> Result<Field, Unusual> {
        self.resolve(at, self.field(at)?)
    }

    /// `field`, read at `at`, or the field it points to.
    #[inline]
    fn resolve(&self, at: usize, field: Field) -> Result<Field, Unusual> {
        if field.kind != POINTER {
            return Ok(field);
        }
        let control = self.byte(at)?;
        let low = usize::from(control & 7);
        let target = match field.size {
            1 => (low << 8) | self.number(field.payload, 1)?,
            2 => ((low << 16) | self.number(field.payload, 2)?) + 2048,
            3 => ((low << 24) | self.number(field.payload, 3)?) + 526_336,
            _ => self.number(field.payload, 4)?,
        };
        let pointed = self.field(target)?;
        if pointed.kind == POINTER { Err(Unusual) } else { Ok(pointed) }
    }

    /// Where the field at `at` ends (a pointer ends after its own bytes).
    fn skip(&self, at: usize, depth: usize) -> Result<usize, Unusual> {
        self.end(self.field(at)?, depth)
    }

    /// Where `field` ends.
    #[inline]
    fn end(&self, field: Field, depth: usize) -> Result<usize, Unusual> {
        if depth > MAX_DATA_DEPTH {
            return Err(Unusual);
        }
        match field.kind {
            MAP => (0..field.size * 2).try_fold(field.payload, |next, _| self.skip(next, depth + 1)),
            ARRAY => (0..field.size).try_fold(field.payload, |next, _| self.skip(next, depth + 1)),
            BOOLEAN => Ok(field.payload),
            DOUBLE => Ok(field.payload + 8),
            FLOAT => Ok(field.payload + 4),
            // Pointers, strings, bytes and integers: their size is their payload's.
            1..=6 | 8..=10 => Ok(field.payload + field.size),
            _ => Err(Unusual),
        }
    }

    /// Calls `member` with each key and the place of its value, of the map at `at` (a pointer to a
    /// map is followed), until it breaks (the members after that are not skipped through); a
    /// field that is not a map is unusual.
    fn members(
        &self,
        at: usize,
        mut member: impl FnMut(&'a [u8], usize) -> Result<ControlFlow<()>, Unusual>,
    ) -> Result<(), Unusual> {
        let map = self.resolved(at)?;
        if map.kind != MAP {
            return Err(Unusual);
        }
        let mut next = map.payload;
        for _ in 0..map.size {
            // Each field's control byte read once here (a key is most often a pointer to a string
            // shared by every record).
            let written = self.field(next)?;
            let value = self.end(written, 0)?;
            let key = self.resolve(next, written)?;
            if key.kind != UTF8 {
                return Err(Unusual);
            }
            let key = self.0.get(key.payload..key.payload + key.size).ok_or(Unusual)?;
            if member(key, value)?.is_break() {
                break;
            }
            next = self.skip(value, 0)?;
        }
        Ok(())
    }

    /// Calls `each` with the place in `wanted` and the value of each wanted member of the map at
    /// `at`, and stops once every wanted key was met: a key repeated before that is unusual; one
    /// repeated after it (MaxMind's writers never repeat one) is not looked for.
    fn wanted<const N: usize>(
        &self,
        at: usize,
        wanted: [&[u8]; N],
        mut each: impl FnMut(usize, usize) -> Result<(), Unusual>,
    ) -> Result<(), Unusual> {
        let mut seen = [false; N];
        self.members(at, |key, value| {
            let Some(slot) = wanted.iter().position(|w| *w == key) else { return Ok(Continue(())) };
            if std::mem::replace(&mut seen[slot], true) {
                return Err(Unusual);
            }
            each(slot, value)?;
            Ok(if seen.iter().all(|s| *s) { Break(()) } else { Continue(()) })
        })
    }

    /// The UTF-8 string at `at`.
    fn text(&self, at: usize) -> Result<&'a str, Unusual> {
        let field = self.resolved(at)?;
        let bytes = self.0.get(field.payload..field.payload + field.size).ok_or(Unusual)?;
        match field.kind {
            UTF8 => std::str::from_utf8(bytes).map_err(|_| Unusual),
            _ => Err(Unusual),
        }
    }

    /// The double at `at`.
    fn double(&self, at: usize) -> Result<f64, Unusual> {
        let field = self.resolved(at)?;
        match field.kind {
            DOUBLE if field.size == 8 => {
                let bytes = self.0.get(field.payload..field.payload + 8).ok_or(Unusual)?;
                Ok(f64::from_be_bytes(bytes.try_into().map_err(|_| Unusual)?))
            }
            _ => Err(Unusual),
        }
    }

    /// The unsigned integer (16, 32 or 64 bits) at `at`.
    fn unsigned(&self, at: usize) -> Result<u64, Unusual> {
        let field = self.resolved(at)?;
        match field.kind {
            UINT16 | UINT32 | UINT64 if field.size <= 8 => Ok(self.number(field.payload, field.size)? as u64),
            _ => Err(Unusual),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> Loaded {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/mmdb").join(name);
        Loaded::open(&path).unwrap_or_else(|e| panic!("{e}"))
    }

    /// The crate's own lookup, as a pointer comparable with ours: its data offset, mapped back.
    fn crate_says(loaded: &Loaded, address: IpAddr) -> Option<usize> {
        let found = loaded.reader.lookup(address).ok()?;
        found.offset().map(|offset| offset + loaded.tree.node_count + 16)
    }

    /// Every network of both test databases (IPv4 and IPv6), the addresses just before and after
    /// each, and a spread of other addresses: the same record as `Reader::lookup`, alone and many
    /// at once (in chunks that do not line up with the lanes).
    #[test]
    fn finds_what_the_crate_finds() {
        for name in ["GeoIP2-City-Test.mmdb", "GeoLite2-ASN-Test.mmdb"] {
            let loaded = fixture(name);
            let mut addresses: Vec<IpAddr> = Vec::new();
            let networks = loaded.reader.networks(Default::default()).unwrap_or_else(|e| panic!("{e}"));
            for network in networks.flatten() {
                let Ok(net) = network.network() else { continue };
                addresses.push(net.network());
                addresses.push(net.broadcast());
                if let IpAddr::V4(v4) = net.network() {
                    addresses.push(IpAddr::V4(u32::from(v4).wrapping_sub(1).into()));
                }
            }
            let mut x: u32 = 12345;
            for _ in 0..5_000 {
                x = x.wrapping_mul(1_103_515_245).wrapping_add(12_345);
                addresses.push(IpAddr::V4(x.into()));
                addresses.push(IpAddr::V6((u128::from(x) << 96 | u128::from(x)).into()));
            }
            addresses.push("::ffff:81.2.69.160".parse().unwrap_or_else(|e| panic!("{e}")));
            let hits = addresses.iter().filter(|&&a| crate_says(&loaded, a).is_some()).count();
            assert!(hits > 100, "{name}: {hits} addresses found");
            let mut many = Vec::new();
            loaded.tree.locate_many(&addresses[..addresses.len() - 3], &mut many);
            for (i, &address) in addresses.iter().enumerate() {
                let expected = crate_says(&loaded, address);
                assert_eq!(loaded.tree.locate(address), expected, "{name} {address}");
                if i < many.len() {
                    assert_eq!(many[i], expected, "{name} {address}, many at once");
                }
            }
        }
    }

    /// Hand-made data sections: a wanted key repeated before the others were met is unusual, one
    /// repeated after them is not looked for; a pointer to a pointer and a string in place of a
    /// map are unusual; a pointer to a string is followed.
    #[test]
    fn unusual_layouts_are_told_apart_from_usual_ones() {
        // {"a": "x", "a": "y"}: a map of 2 (0xE2), keys and values UTF-8 strings of 1 (0x41).
        let repeated = [0xE2, 0x41, b'a', 0x41, b'x', 0x41, b'a', 0x41, b'y'];
        let data = Data(&repeated);
        let mut values: Vec<String> = Vec::new();
        let mut take = |v: usize| -> Result<(), Unusual> {
            values.push(data.text(v)?.to_string());
            Ok(())
        };
        let keys: [&[u8]; 2] = [b"a", b"b"];
        assert_eq!(data.wanted(0, keys, |_, v| take(v)), Err(Unusual));
        assert_eq!(data.wanted(0, [b"a"], |_, v| take(v)), Ok(()));
        // "x" before the repeat is refused (the second "a" is never taken); "x" alone when only
        // "a" is wanted, which stops reading there.
        assert_eq!(values, ["x", "x"]);
        // At 0 a pointer (0x20: size 0) to 2, a pointer to 4, a string "z"; a string is no map.
        let pointers = [0x20, 0x02, 0x20, 0x04, 0x41, b'z'];
        let data = Data(&pointers);
        assert_eq!(data.text(0), Err(Unusual));
        assert_eq!(data.text(2), Ok("z"));
        assert_eq!(data.wanted(4, [b"a"], |_, _| Ok(())), Err(Unusual));
    }

    /// A damaged file whose tree points past its end: not found, no panic.
    #[test]
    fn a_tree_pointing_outside_the_file_finds_nothing() {
        let loaded = fixture("GeoLite2-ASN-Test.mmdb");
        let mut tree = SearchTree { bytes: loaded.tree.bytes.slice(..64), ..loaded.tree };
        tree.ipv4_top = tree.top_table();
        assert_eq!(tree.locate("1.128.0.0".parse().unwrap_or_else(|e| panic!("{e}"))), None);
    }
}

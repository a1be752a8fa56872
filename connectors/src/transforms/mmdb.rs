//! A MaxMind DB file loaded once, with its search tree walked for many addresses at once.
//!
//! The `maxminddb` crate decodes the data records; finding an address's record is a walk down the
//! file's binary search tree, one node per bit of the address, and in a database larger than the
//! CPU's caches (GeoLite2 City is 60 MB) nearly every node below the first levels is a cache miss:
//! measured on the enrich bench, three quarters of the lookup's time sat on the loads of the next
//! node. [`SearchTree::locate_many`] walks up to [`LANES`] addresses in lockstep, one level of each
//! per round, so their misses overlap instead of following one another.
//!
//! Guarantees: [`SearchTree::locate`] and [`SearchTree::locate_many`] find the same data record as
//! the crate's own `Reader::lookup` for every address (tested against it on MaxMind's test
//! databases, IPv4 and IPv6); a node outside the file (a damaged database) is "not found", never a
//! panic. The file's bytes are held once, shared by the crate's reader and the tree ([`Bytes`]).

use std::net::IpAddr;
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
}

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
    fn start(&self, address: IpAddr) -> Option<Walk> {
        match address {
            IpAddr::V4(v4) => Some(Walk { node: self.ipv4_start, bits: u128::from(u32::from(v4)) << 96, left: 32 }),
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

    /// A damaged file whose tree points past its end: not found, no panic.
    #[test]
    fn a_tree_pointing_outside_the_file_finds_nothing() {
        let loaded = fixture("GeoLite2-ASN-Test.mmdb");
        let tree = SearchTree { bytes: loaded.tree.bytes.slice(..64), ..loaded.tree };
        assert_eq!(tree.locate("1.128.0.0".parse().unwrap_or_else(|e| panic!("{e}"))), None);
    }
}

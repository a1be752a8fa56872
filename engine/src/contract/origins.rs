//! Where a payload's records came from: what a sink needs to store each logged record exactly
//! once across crashes (the postgres sink's load ledger).
//!
//! A record read from a write-ahead log carries its [`Origin`] (log, entry, record of the entry);
//! the buffer operator gives each record of a payload its [`RecordPosition`]: the origin plus its
//! part, the record's place among the records one source record became by the time it reached the
//! sink (a transform may turn one record into several). A restart replays undelivered entries
//! whole, the stages between source and sink are deterministic about what a record becomes and
//! keep the order of an entry's records, so a replayed record reaches the sink with the position
//! it had before.
//!
//! Guarantees a sink builds on (for sinks without dynamic partitioning, whose records are never
//! exchanged between workers: all records of one entry that reach the sink reach one buffer, in
//! order):
//! - positions are unique within (log, entry) and the same on every replay;
//! - [`PayloadOrigins::ranges`]: for each range `first..=last` of an entry, every record of that
//!   entry with a position in it that the sink ever receives is in this payload. Records of the
//!   entry between them that are not in it never reach the sink's data (a transform dropped or
//!   failed them, or the format refused them: they do so again on replay). So a sink that
//!   remembers the ranges of what it stored, and skips replayed records inside them, stores each
//!   record once;
//! - [`PayloadOrigins::replay_floors`]: entries below a log's floor are never replayed; what a
//!   sink remembers about them may be forgotten.

use crate::record::Origin;

/// Bits of a position below the source record's index: the part.
const PART_BITS: u32 = 32;

/// A payload record's place in the log it was read from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecordPosition {
    /// The log's identity.
    pub log: u64,
    /// The entry's sequence number.
    pub seq: u64,
    /// `index << 32 | part`: the source record's index in the entry, and which of the records it
    /// became this is.
    pub position: u64,
    /// Entries of the log below this are never replayed.
    pub replay_floor: u64,
}

impl RecordPosition {
    /// Part `part` of the record at `origin`.
    pub fn new(origin: Origin, part: u32) -> Self {
        RecordPosition {
            log: origin.log,
            seq: origin.seq,
            position: (u64::from(origin.index) << PART_BITS) | u64::from(part),
            replay_floor: origin.replay_floor,
        }
    }
}

/// A range of positions of one log entry (see the module's guarantees).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EntryRange {
    /// The log's identity.
    pub log: u64,
    /// The entry's sequence number.
    pub seq: u64,
    /// The first position.
    pub first: u64,
    /// The last position (inclusive).
    pub last: u64,
}

impl EntryRange {
    /// Whether `p` lies in it.
    pub fn holds(&self, p: &RecordPosition) -> bool {
        p.log == self.log && p.seq == self.seq && (self.first..=self.last).contains(&p.position)
    }
}

/// The positions of a payload's records, in the payload's order (`None` for a record that was not
/// read from a log).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PayloadOrigins {
    positions: Vec<Option<RecordPosition>>,
}

impl PayloadOrigins {
    /// Sets the position of record `index`, the next one (records before it without one are
    /// not stored until a record has one).
    pub fn record(&mut self, index: usize, position: Option<RecordPosition>) {
        if position.is_none() && self.positions.is_empty() {
            return;
        }
        self.positions.resize(index, None);
        self.positions.push(position);
    }

    /// The position of record `index` of the payload.
    pub fn get(&self, index: usize) -> Option<RecordPosition> {
        self.positions.get(index).copied().flatten()
    }

    /// Records it knows about.
    pub fn len(&self) -> usize {
        self.positions.len()
    }

    /// Whether no record has a position.
    pub fn is_empty(&self) -> bool {
        self.positions.iter().all(Option::is_none)
    }

    /// The ranges of entries this payload answers, one per run of an entry's records in order.
    pub fn ranges(&self) -> Vec<EntryRange> {
        let mut ranges: Vec<EntryRange> = Vec::new();
        let mut open: rustc_hash::FxHashMap<(u64, u64), usize> = Default::default();
        for p in self.positions.iter().flatten() {
            match open.get(&(p.log, p.seq)).copied() {
                Some(at) if ranges[at].last < p.position => ranges[at].last = p.position,
                _ => {
                    open.insert((p.log, p.seq), ranges.len());
                    ranges.push(EntryRange { log: p.log, seq: p.seq, first: p.position, last: p.position });
                }
            }
        }
        ranges
    }

    /// The highest replay floor seen per log.
    pub fn replay_floors(&self) -> Vec<(u64, u64)> {
        let mut floors: Vec<(u64, u64)> = Vec::new();
        for p in self.positions.iter().flatten() {
            match floors.iter_mut().find(|(log, _)| *log == p.log) {
                Some((_, floor)) => *floor = (*floor).max(p.replay_floor),
                None => floors.push((p.log, p.replay_floor)),
            }
        }
        floors
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(seq: u64, index: u32, part: u32) -> Option<RecordPosition> {
        Some(RecordPosition::new(Origin { log: 7, seq, index, replay_floor: seq / 2 }, part))
    }

    #[test]
    fn runs_of_an_entry_become_ranges_and_gaps_inside_a_run_are_covered() {
        let mut o = PayloadOrigins::default();
        [at(3, 0, 0), at(3, 0, 1), at(3, 2, 0), None, at(4, 0, 0), at(3, 5, 0), at(3, 1, 0)]
            .into_iter()
            .enumerate()
            .for_each(|(i, p)| o.record(i, p));
        let ranges = o.ranges();
        assert_eq!(ranges.len(), 3, "{ranges:?}");
        assert_eq!((ranges[0].seq, ranges[0].first, ranges[0].last), (3, 0, 5 << 32));
        assert_eq!((ranges[1].seq, ranges[1].first), (4, 0));
        // A position behind its entry's run starts a range of its own.
        assert_eq!((ranges[2].seq, ranges[2].first, ranges[2].last), (3, 1 << 32, 1 << 32));
        assert!(ranges[0].holds(&at(3, 1, 7).unwrap()));
        assert!(!ranges[0].holds(&at(4, 1, 0).unwrap()));
        assert_eq!(o.replay_floors(), vec![(7, 2)]);
        assert!(!o.is_empty());
        let mut late = PayloadOrigins::default();
        late.record(0, None);
        assert!(late.is_empty());
        late.record(1, at(1, 0, 0));
        assert_eq!((late.len(), late.get(0), late.get(1)), (2, None, at(1, 0, 0)));
    }
}

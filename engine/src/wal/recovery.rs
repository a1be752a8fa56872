//! Recovery: what the segments on disk hold against what the last checkpoint expected — which
//! acknowledged entries cannot be read back, where they were, how many records and bytes — and the
//! quarantine that keeps damaged bytes and a report of each finding.
//!
//! Guarantees: [`analyze`] is a pure function of the scans and the checkpoint, never fails and
//! never panics on content; every entry at or above the checkpoint that a scan found valid is
//! returned once, in sequence order; every sequence number that the checkpoint, a segment header
//! or a later entry shows was written, and that no scan found, is reported in exactly one
//! finding, split into what had been acknowledged (a loss) and what had not (a torn write).
//! A missing entry counts as acknowledged when the checkpoint, a segment header or a sealed
//! segment says the log was acknowledged past it, when a later entry was found (a gap behind a
//! later write is damage, not an interrupted write), or when its header was found whole; otherwise
//! it is the end of the log that a crash interrupted. [`quarantine`] copies damaged stretches aside and never modifies a segment; a finding reported
//! at an earlier start is marked known instead of being reported again.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::io::{Read, Seek, SeekFrom, Write};
use std::ops::Range;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::EntryAt;
use super::format::{Layout, Position, SegmentScan};

/// The folder under the log's folder where damaged bytes and the report go.
pub const QUARANTINE: &str = "quarantine";
/// The report in the quarantine folder: one JSON object per finding.
const REPORT: &str = "report.ndjson";

/// A sealed segment as the checkpoint remembers it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SealedSegment {
    /// Its file name.
    pub name: String,
    /// Its first sequence number.
    pub first_seq: u64,
    /// The sequence number after its last entry.
    pub end_seq: u64,
    /// Records before it (unknown for legacy segments).
    pub first_record: Option<u64>,
    /// Records before the entry after it.
    pub end_record: Option<u64>,
    /// Its length in bytes.
    pub bytes: u64,
}

/// What the checkpoint file holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckpointState {
    /// The first entry not yet delivered (`record` unknown after a legacy checkpoint).
    pub frontier: u64,
    /// Records before the frontier.
    pub frontier_record: Option<u64>,
    /// Every entry before this had been acknowledged when the checkpoint was written.
    pub acked_before: Option<Position>,
    /// The sealed segments at or above the frontier.
    pub sealed: Vec<SealedSegment>,
    /// Entries above the frontier that were delivered already (`[start, end)` ranges): a restart
    /// does not replay them, and their damage costs nothing.
    #[serde(default)]
    pub delivered: Vec<[u64; 2]>,
}

impl CheckpointState {
    /// Whether entry `seq` is at or above the frontier and delivered already.
    fn delivered_above(&self, seq: u64) -> bool {
        let i = self.delivered.partition_point(|r| r[1] <= seq);
        self.delivered.get(i).is_some_and(|r| r[0] <= seq && seq < r[1])
    }
}

impl Default for CheckpointState {
    fn default() -> Self {
        CheckpointState {
            frontier: 0,
            frontier_record: Some(0),
            acked_before: None,
            sealed: Vec::new(),
            delivered: Vec::new(),
        }
    }
}

/// A segment file as found at start.
#[derive(Debug, Clone)]
pub struct SegmentOnDisk {
    /// Its path.
    pub path: PathBuf,
    /// The first sequence number its name gives.
    pub name_seq: u64,
    /// What it holds.
    pub scan: SegmentScan,
}

impl SegmentOnDisk {
    fn name(&self) -> String {
        super::file_name(&self.path)
    }

    /// Its first sequence number: its header's, or its name's when the header is damaged.
    pub fn first_seq(&self) -> u64 {
        match self.scan.layout {
            Layout::Current(Some(h)) => h.first.seq,
            _ => self.name_seq,
        }
    }
}

/// What kind of trouble recovery found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FindingKind {
    /// A stretch of a segment holds no valid entry (a torn write, or corruption).
    DamagedBytes,
    /// A segment the checkpoint expected is gone.
    MissingSegment,
    /// A segment is shorter than the checkpoint remembers.
    ShortenedSegment,
    /// Entries are missing and nothing on disk shows where they were.
    MissingEntries,
    /// The checkpoint could not be read: everything the log holds is replayed.
    UnreadableCheckpoint,
    /// An encrypted entry whose checksums agree fails authentication: tampered with.
    TamperedEntry,
}

/// One thing recovery found, with what it cost.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Finding {
    /// What was found.
    pub kind: FindingKind,
    /// The segment file concerned.
    pub segment: String,
    /// Where in it the damage starts.
    pub offset: Option<u64>,
    /// Bytes damaged or missing, when known.
    pub bytes: Option<u64>,
    /// Sequence numbers that cannot be read back.
    pub seqs: Option<Range<u64>>,
    /// Acknowledged entries among them: lost.
    pub lost_entries: u64,
    /// Records in the lost entries, when known.
    pub lost_records: Option<u64>,
    /// Entries among them that had not been acknowledged (a write torn by a crash): not a loss.
    pub unacknowledged_entries: u64,
    /// Where the damaged bytes were copied.
    pub quarantined: Option<PathBuf>,
    /// Reported at an earlier start already.
    #[serde(skip)]
    pub known: bool,
    /// Details (for an unreadable checkpoint, why).
    pub detail: Option<String>,
}

impl Finding {
    fn new(kind: FindingKind, segment: String) -> Self {
        Finding {
            kind,
            segment,
            offset: None,
            bytes: None,
            seqs: None,
            lost_entries: 0,
            lost_records: None,
            unacknowledged_entries: 0,
            quarantined: None,
            known: false,
            detail: None,
        }
    }

    /// The checkpoint could not be read (`detail` says why): everything is replayed.
    pub(super) fn unreadable_checkpoint(detail: String) -> Self {
        let mut finding = Finding::new(FindingKind::UnreadableCheckpoint, "checkpoint".into());
        finding.detail = Some(format!("{detail}; replaying everything the log holds"));
        finding
    }

    /// A segment file that holds nothing readable, replaced by a new segment of the same name.
    pub(super) fn replaced_segment(path: &Path, bytes: u64) -> Self {
        let mut finding = Finding::new(FindingKind::DamagedBytes, super::file_name(path));
        finding.offset = Some(0);
        finding.bytes = Some(bytes);
        finding.lost_records = Some(0);
        finding.detail = Some("replaced by a new segment".into());
        finding
    }

    /// An encrypted entry at `offset` (its frame) of `segment` that failed authentication.
    pub(super) fn tampered(segment: &Path, offset: u64, bytes: u64, seq: u64, records: u32) -> Self {
        let mut finding = Finding::new(FindingKind::TamperedEntry, super::file_name(segment));
        finding.offset = Some(offset);
        finding.bytes = Some(bytes);
        finding.seqs = Some(seq..seq + 1);
        finding.lost_entries = 1;
        finding.lost_records = Some(u64::from(records));
        finding.detail = Some("its checksums agree but its encryption tag does not: changed on disk".into());
        finding
    }

    /// Whether acknowledged entries were lost.
    pub fn is_loss(&self) -> bool {
        self.lost_entries > 0
    }

    /// A stable name for the finding, so a later start recognises it.
    fn id(&self) -> String {
        let seqs = self.seqs.as_ref().map_or(String::new(), |s| format!("{}-{}", s.start, s.end));
        format!("{:?}:{}:{}:{}", self.kind, self.segment, self.offset.map_or(String::new(), |o| o.to_string()), seqs)
    }
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = match self.kind {
            FindingKind::DamagedBytes => "damaged bytes",
            FindingKind::MissingSegment => "segment missing",
            FindingKind::ShortenedSegment => "segment shortened",
            FindingKind::MissingEntries => "entries missing",
            FindingKind::UnreadableCheckpoint => "checkpoint unreadable",
            FindingKind::TamperedEntry => "tampered entry",
        };
        write!(f, "{what} in {}", self.segment)?;
        if let Some(offset) = self.offset {
            write!(f, " at offset {offset}")?;
        }
        if let Some(bytes) = self.bytes {
            write!(f, ", {bytes} bytes")?;
        }
        if let Some(seqs) = &self.seqs {
            write!(f, ", entries {}..{}", seqs.start, seqs.end)?;
        }
        if self.lost_entries > 0 {
            let records = self.lost_records.map_or("an unknown number of".to_string(), |r| r.to_string());
            write!(f, ": {} acknowledged entries ({records} records) lost", self.lost_entries)?;
        } else {
            write!(f, ": no acknowledged entry lost")?;
        }
        if self.unacknowledged_entries > 0 {
            write!(f, "; {} unacknowledged entries torn by a crash", self.unacknowledged_entries)?;
        }
        if let Some(detail) = &self.detail {
            write!(f, " ({detail})")?;
        }
        if let Some(q) = &self.quarantined {
            write!(f, "; damaged bytes kept in {}", q.display())?;
        }
        Ok(())
    }
}

/// The outcome of [`analyze`].
#[derive(Debug, Clone)]
pub struct Analysis {
    /// Valid entries at or above the checkpoint, in order.
    pub entries: Vec<EntryAt>,
    /// What was found, in log order.
    pub findings: Vec<Finding>,
    /// Where the next entry goes: past everything known to have been written.
    pub next: Position,
    /// The sealed segments on disk (all but the last), as the next checkpoint should remember them.
    pub sealed: Vec<SealedSegment>,
}

/// Record numbers known at sequence numbers.
#[derive(Debug, Default)]
struct Anchors(BTreeMap<u64, u64>);

impl Anchors {
    fn add(&mut self, seq: u64, record: Option<u64>) {
        if let Some(record) = record {
            self.0.entry(seq).or_insert(record);
        }
    }

    fn records_between(&self, from: u64, to: u64) -> Option<u64> {
        Some(self.0.get(&to)?.saturating_sub(*self.0.get(&from)?))
    }
}

/// Works out what the segments hold against what the checkpoint expected.
pub fn analyze(checkpoint: &CheckpointState, segments: &[SegmentOnDisk]) -> Analysis {
    let frontier = checkpoint.frontier;
    let mut anchors = Anchors::default();
    anchors.add(frontier, checkpoint.frontier_record);
    let mut end = frontier;
    let mut ack_bound = 0u64;
    if let Some(acked) = checkpoint.acked_before {
        anchors.add(acked.seq, Some(acked.record));
        end = end.max(acked.seq);
        ack_bound = ack_bound.max(acked.seq);
    }
    for sealed in &checkpoint.sealed {
        anchors.add(sealed.first_seq, sealed.first_record);
        anchors.add(sealed.end_seq, sealed.end_record);
        end = end.max(sealed.end_seq);
        ack_bound = ack_bound.max(sealed.end_seq);
    }
    let mut entries = Vec::new();
    let mut found = BTreeSet::new();
    let mut next_found = frontier;
    for segment in segments {
        if let Layout::Current(Some(h)) = segment.scan.layout {
            anchors.add(h.first.seq, Some(h.first.record));
            anchors.add(h.acked_before.seq, Some(h.acked_before.record));
            end = end.max(h.first.seq).max(h.acked_before.seq);
            ack_bound = ack_bound.max(h.acked_before.seq);
        }
        for e in &segment.scan.broken {
            // Written whole, then damaged: it existed, and a crash does not tear a whole entry.
            anchors.add(e.seq, e.first_record);
            anchors.add(e.seq + 1, e.first_record.map(|r| r + u64::from(e.records)));
            end = end.max(e.seq + 1);
            ack_bound = ack_bound.max(e.seq + 1);
        }
        for e in &segment.scan.entries {
            anchors.add(e.seq, e.first_record);
            anchors.add(e.seq + 1, e.first_record.map(|r| r + u64::from(e.records)));
            // In order and never twice, even if a crash left a repeated or stale stretch.
            if e.seq >= next_found {
                next_found = e.seq + 1;
                found.insert(e.seq);
                if checkpoint.delivered_above(e.seq) {
                    continue;
                }
                entries.push(EntryAt {
                    seq: e.seq,
                    first_record: e.first_record,
                    records: e.records,
                    segment: segment.path.clone(),
                    offset: e.offset,
                    len: e.len,
                    sealed: None,
                });
            }
        }
    }
    end = end.max(next_found);
    // A gap behind an entry that was written later is damage, not a write a crash interrupted.
    ack_bound = ack_bound.max(next_found);

    let mut used: BTreeSet<(usize, usize)> = BTreeSet::new();
    let mut findings = Vec::new();
    // Delivered entries cost nothing if their bytes are gone.
    let found = |seq: &u64| found.contains(seq) || checkpoint.delivered_above(*seq);
    let mut seq = frontier;
    while seq < end {
        if found(&seq) {
            seq += 1;
            continue;
        }
        let run_start = seq;
        while seq < end && !found(&seq) {
            seq += 1;
        }
        findings.push(missing_run(run_start..seq, ack_bound, &anchors, checkpoint, segments, &mut used));
    }
    // Damaged stretches no missing entry explains: torn writes whose entries were never
    // acknowledged (their numbers were reused), or damage in entries already delivered.
    for (i, segment) in segments.iter().enumerate() {
        for (j, stretch) in segment.scan.damaged.iter().enumerate() {
            if used.contains(&(i, j)) {
                continue;
            }
            let next_seq_after = segment
                .scan
                .entries
                .iter()
                .find(|e| e.offset > stretch.start)
                .map(|e| e.seq)
                .or_else(|| segments.get(i + 1).map(SegmentOnDisk::first_seq))
                .unwrap_or(end);
            if next_seq_after < frontier {
                continue;
            }
            let mut finding = Finding::new(FindingKind::DamagedBytes, segment.name());
            finding.offset = Some(stretch.start);
            finding.bytes = Some(stretch.end - stretch.start);
            findings.push(finding);
        }
    }
    let next_record = anchors.0.get(&end).copied().or_else(|| anchors.0.range(..=end).next_back().map(|(_, r)| *r));
    let sealed = segments
        .windows(2)
        .map(|pair| {
            let (this, next) = (&pair[0], &pair[1]);
            let first_seq = this.first_seq();
            let end_seq = next.first_seq();
            SealedSegment {
                name: this.name(),
                first_seq,
                end_seq,
                first_record: anchors.0.get(&first_seq).copied(),
                end_record: anchors.0.get(&end_seq).copied(),
                bytes: this.scan.len,
            }
        })
        .collect();
    Analysis { entries, findings, next: Position { seq: end, record: next_record.unwrap_or(0) }, sealed }
}

/// The finding for sequence numbers `run` that no scan found.
fn missing_run(
    run: Range<u64>,
    ack_bound: u64,
    anchors: &Anchors,
    checkpoint: &CheckpointState,
    segments: &[SegmentOnDisk],
    used: &mut BTreeSet<(usize, usize)>,
) -> Finding {
    let acked_end = run.end.min(ack_bound.max(run.start));
    let expected = checkpoint.sealed.iter().find(|s| s.first_seq <= run.start && run.start < s.end_seq);
    let on_disk = segments.iter().rposition(|s| s.first_seq() <= run.start);
    let missing_file = expected.filter(|s| on_disk.is_none_or(|i| segments[i].name() != s.name));
    let mut finding = match (missing_file, on_disk) {
        (Some(sealed), _) => {
            let mut f = Finding::new(FindingKind::MissingSegment, sealed.name.clone());
            f.bytes = Some(sealed.bytes);
            f
        }
        (_, Some(i)) => {
            let segment = &segments[i];
            let before = segment.scan.entries.iter().rev().find(|e| e.seq < run.start);
            let from = before.map_or(0, |e| e.end());
            let after = segment.scan.entries.iter().find(|e| e.seq >= run.end);
            let until = after.map_or(u64::MAX, |e| e.offset);
            let stretch = segment.scan.damaged.iter().position(|d| d.end > from && d.start < until);
            let later_valid = after.is_some();
            let shortened = expected.filter(|s| s.name == segment.name() && s.bytes > segment.scan.len && !later_valid);
            let mut f = match (shortened, stretch) {
                (Some(sealed), stretch) => {
                    let mut f = Finding::new(FindingKind::ShortenedSegment, segment.name());
                    let tail = stretch.map_or(0, |j| {
                        used.insert((i, j));
                        let d = &segment.scan.damaged[j];
                        f.offset = Some(d.start);
                        d.end - d.start
                    });
                    f.bytes = Some(sealed.bytes - segment.scan.len + tail);
                    f
                }
                (None, Some(j)) => {
                    used.insert((i, j));
                    let d = &segment.scan.damaged[j];
                    let mut f = Finding::new(FindingKind::DamagedBytes, segment.name());
                    f.offset = Some(d.start);
                    f.bytes = Some(d.end - d.start);
                    f
                }
                (None, None) => Finding::new(FindingKind::MissingEntries, segment.name()),
            };
            if f.offset.is_none() && f.kind == FindingKind::MissingEntries {
                f.offset = Some(segment.scan.len);
            }
            f
        }
        (None, None) => Finding::new(
            FindingKind::MissingEntries,
            segments.first().map(SegmentOnDisk::name).unwrap_or_else(|| "(no segment)".into()),
        ),
    };
    finding.seqs = Some(run.clone());
    finding.lost_entries = acked_end - run.start;
    finding.unacknowledged_entries = run.end - acked_end;
    finding.lost_records =
        if finding.lost_entries > 0 { anchors.records_between(run.start, acked_end) } else { Some(0) };
    finding
}

/// Copies the damaged stretches of new findings into `dir/quarantine/` and appends every new
/// finding to its report; marks findings reported at an earlier start as known. Best effort: a
/// quarantine that cannot be written (a full disk) is logged, and recovery goes on.
pub fn quarantine(dir: &Path, findings: &mut [Finding]) {
    let folder = dir.join(QUARANTINE);
    let report_path = folder.join(REPORT);
    let known: BTreeSet<String> = std::fs::read_to_string(&report_path)
        .map(|text| {
            text.lines()
                .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
                .filter_map(|v| v.get("id").and_then(|i| i.as_str()).map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    let mut lines = Vec::new();
    for finding in findings.iter_mut() {
        let id = finding.id();
        if known.contains(&id) {
            finding.known = true;
            continue;
        }
        if let (
            FindingKind::DamagedBytes | FindingKind::ShortenedSegment | FindingKind::TamperedEntry,
            Some(offset),
            Some(bytes),
        ) = (finding.kind, finding.offset, finding.bytes)
        {
            let stem = finding.segment.trim_end_matches(".wal");
            let target = folder.join(format!("{stem}-{offset}.bin"));
            match copy_range(&dir.join(&finding.segment), offset, bytes, &target) {
                Ok(()) => finding.quarantined = Some(target),
                Err(e) => tracing::error!(file = %target.display(), error = %e, "cannot quarantine damaged log bytes"),
            }
        }
        let mut line = serde_json::to_value(&*finding).unwrap_or_default();
        if let serde_json::Value::Object(map) = &mut line {
            map.insert("id".into(), id.into());
            map.insert("time".into(), chrono::Utc::now().to_rfc3339().into());
            map.insert("message".into(), finding.to_string().into());
        }
        lines.push(line.to_string());
    }
    if lines.is_empty() {
        return;
    }
    // The folder is synced last: the report and the copies made above are new entries in it.
    let written = crate::folders::create_dir_synced(&folder).and_then(|()| {
        let mut report = std::fs::OpenOptions::new().create(true).append(true).open(&report_path)?;
        for line in &lines {
            writeln!(report, "{line}")?;
        }
        report.sync_all()?;
        crate::folders::sync(&folder)
    });
    if let Err(e) = written {
        tracing::error!(file = %report_path.display(), error = %e, "cannot write the log's quarantine report");
    }
}

/// Copies `len` bytes at `offset` of `from` (at most what is there) to a new file `to`.
fn copy_range(from: &Path, offset: u64, len: u64, to: &Path) -> std::io::Result<()> {
    if let Some(parent) = to.parent() {
        crate::folders::create_dir_synced(parent)?;
    }
    let mut source = std::fs::File::open(from)?;
    source.seek(SeekFrom::Start(offset))?;
    let mut target = std::fs::File::create(to)?;
    std::io::copy(&mut source.take(len), &mut target)?;
    target.sync_all()
}

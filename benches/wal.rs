//! The write-ahead log: append throughput (entries of one PutRecordBatch, ~140 KB) with a sync per
//! entry and with group commit (one sync per 16 entries), and the recovery time of a 1 GiB log (the
//! files are in the page cache right after writing; a cold disk adds its read time).
//!
//! `cargo bench --bench wal` (`SLUICE_WAL_MB`, default 1024).

// A benchmark has no caller to report to: a failed set-up aborts it with its reason.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::time::Instant;

use sluice_engine::wal::Wal;

const ENTRY: usize = 140_000;

fn main() {
    let total_mb: usize = std::env::var("SLUICE_WAL_MB").ok().and_then(|v| v.parse().ok()).unwrap_or(1024);
    let entries = total_mb * (1 << 20) / ENTRY;
    let payload: Vec<u8> = (0..ENTRY).map(|i| (i % 251) as u8).collect();
    println!("write-ahead log: {entries} entries of {ENTRY} B ({total_mb} MiB), 64 MiB segments");
    for group in [1usize, 16] {
        let dir = tempfile::tempdir().unwrap();
        let (mut wal, _) = Wal::open(dir.path(), 64 << 20).unwrap();
        let n = entries.min(if group == 1 { 2000 } else { entries });
        let started = Instant::now();
        for i in 0..n {
            wal.append(&payload, 500).unwrap();
            if (i + 1) % group == 0 {
                wal.sync().unwrap();
            }
        }
        wal.sync().unwrap();
        let secs = started.elapsed().as_secs_f64();
        println!(
            "  append + fsync every {group:>2} entries: {:>7.1} MiB/s, {:>6.0} entries/s ({n} entries)",
            (n * ENTRY) as f64 / (1 << 20) as f64 / secs,
            n as f64 / secs
        );
        if group == 16 {
            drop(wal);
            let started = Instant::now();
            let (_, recovery) = Wal::open(dir.path(), 64 << 20).unwrap();
            assert_eq!(recovery.entries.len(), n);
            // Replaying reads each payload back.
            let replayed: usize = recovery.entries.iter().map(|e| e.read().unwrap().len()).sum();
            let secs = started.elapsed().as_secs_f64();
            assert_eq!(replayed, n * ENTRY);
            println!(
                "  recovery and replay of {} MiB ({n} entries, checksums verified): {secs:.2} s, {:.0} MiB/s",
                (n * ENTRY) >> 20,
                (n * ENTRY) as f64 / (1 << 20) as f64 / secs
            );
        }
    }
}

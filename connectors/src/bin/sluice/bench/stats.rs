//! What the runs come to: each case's median and spread (min–max) of wall time, CPU time,
//! throughput and peak RSS, and each comparison's ratios of medians.

use serde::Serialize;
use sluice_connectors::measure::Usage;

use super::plan::Case;

/// Which of a comparison's ratios it is about (the report shows the other as `—`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum About {
    /// Speed and memory alike (sluice against a baseline).
    Both,
    /// Speed only (a speed-up).
    Speed,
    /// Memory only (growth with the input).
    Memory,
}

/// The figures of one case over its runs.
#[derive(Debug, Clone, Serialize)]
pub struct CaseResult {
    /// Scenario.
    pub scenario: String,
    /// Case name, e.g. `sluice gzip` or `pigz -6 -p 2`.
    pub case: String,
    /// Whether this is sluice.
    pub sluice: bool,
    /// Input bytes and records.
    pub input_bytes: u64,
    /// Input records.
    pub input_records: u64,
    /// Each run's figures, in run order.
    pub runs: Vec<Usage>,
    /// Median and spread of wall seconds.
    pub wall_s: Stat,
    /// Median and spread of CPU seconds.
    pub cpu_s: Stat,
    /// Median and spread of input MB/s (10^6 bytes).
    pub mb_per_s: Stat,
    /// Median and spread of input records/s.
    pub records_per_s: Stat,
    /// Median and spread of peak RSS in MiB.
    pub peak_rss_mib: Stat,
}

/// Median, minimum and maximum.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Stat {
    /// Median.
    pub median: f64,
    /// Smallest.
    pub min: f64,
    /// Largest.
    pub max: f64,
}

impl Stat {
    /// Median and spread of `values`.
    pub(crate) fn of(mut values: Vec<f64>) -> Stat {
        values.sort_by(f64::total_cmp);
        let n = values.len();
        let median = match n {
            0 => 0.0,
            _ if n % 2 == 1 => values[n / 2],
            _ => (values[n / 2 - 1] + values[n / 2]) / 2.0,
        };
        Stat { median, min: values.first().copied().unwrap_or(0.0), max: values.last().copied().unwrap_or(0.0) }
    }
}

/// One comparison's ratios.
#[derive(Debug, Clone, Serialize)]
pub struct ComparisonResult {
    /// Scenario.
    pub scenario: String,
    /// The case compared (usually sluice).
    pub case: String,
    /// What it is compared with.
    pub against: String,
    /// Median wall of `against` ÷ median wall of `case`: above 1, `case` is faster.
    pub speed_ratio: f64,
    /// Median peak RSS of `case` ÷ that of `against`: below 1, `case` uses less memory.
    pub memory_ratio: f64,
    /// What the ratio means.
    pub meaning: String,
    /// Which ratio it is about.
    pub about: About,
}

/// Everything one `sluice bench` found.
#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    /// When it ran (RFC 3339, UTC).
    pub started: String,
    /// The machine: cores, memory, kernel.
    pub machine: String,
    /// The command line that reproduces it.
    pub command: String,
    /// Runs per case.
    pub runs: usize,
    /// Every case.
    pub cases: Vec<CaseResult>,
    /// Every ratio.
    pub comparisons: Vec<ComparisonResult>,
    /// Baselines and scenarios skipped, with why.
    pub notes: Vec<String>,
}

pub(crate) fn case_result(case: &Case, runs: Vec<Usage>) -> CaseResult {
    let stat = |f: &dyn Fn(&Usage) -> f64| Stat::of(runs.iter().map(f).collect());
    let secs = |u: &Usage| u.wall.as_secs_f64().max(1e-9);
    CaseResult {
        scenario: case.scenario.to_string(),
        case: case.name.clone(),
        sluice: case.sluice,
        input_bytes: case.input.bytes,
        input_records: case.input.records,
        wall_s: stat(&|u| u.wall.as_secs_f64()),
        cpu_s: stat(&|u| u.cpu.as_secs_f64()),
        mb_per_s: stat(&|u| case.input.bytes as f64 / 1e6 / secs(u)),
        records_per_s: stat(&|u| case.input.records as f64 / secs(u)),
        peak_rss_mib: stat(&|u| u.max_rss_bytes as f64 / (1024.0 * 1024.0)),
        runs,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians_and_spreads() {
        let s = Stat::of(vec![3.0, 1.0, 2.0]);
        assert_eq!((s.median, s.min, s.max), (2.0, 1.0, 3.0));
        assert_eq!(Stat::of(vec![4.0, 1.0, 2.0, 3.0]).median, 2.5);
    }
}

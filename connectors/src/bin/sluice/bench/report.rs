//! The report: `results.json` (every run's figures), `results.md` (the ratios, the cases, the
//! notes) and `results.svg` ([`super::svg`]), written to `<out>`.

use std::fmt::Write as _;
use std::io;
use std::path::Path;

use super::stats::{About, BenchReport, Stat};
use super::svg::svg;
use super::{BenchError, io_error};

/// Cores, memory and kernel of this machine.
pub(crate) fn machine() -> String {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let memory = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| m.lines().next().and_then(|l| l.split_whitespace().nth(1)).and_then(|kb| kb.parse::<u64>().ok()))
        .map_or_else(|| "? GiB".to_string(), |kb| format!("{:.0} GiB", kb as f64 / 1024.0 / 1024.0));
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_string())
        })
        .unwrap_or_default();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!("{cores} cores ({cpu}), {memory}, Linux {}", kernel.trim())
}

pub(crate) fn write_results(out: &Path, report: &BenchReport) -> Result<(), BenchError> {
    let json = serde_json::to_vec_pretty(report)
        .map_err(|e| BenchError::Io { what: "cannot encode results".into(), source: io::Error::other(e) })?;
    std::fs::write(out.join("results.json"), json).map_err(io_error("cannot write results.json"))?;
    std::fs::write(out.join("results.md"), markdown(report)).map_err(io_error("cannot write results.md"))?;
    std::fs::write(out.join("results.svg"), svg(report)).map_err(io_error("cannot write results.svg"))?;
    Ok(())
}

pub(crate) fn spread(s: &Stat, digits: usize) -> String {
    format!("{:.d$} ({:.d$}–{:.d$})", s.median, s.min, s.max, d = digits)
}

/// The results as Markdown: the machine and command, the cases, the ratios, the notes.
pub fn markdown(report: &BenchReport) -> String {
    let mut md = String::new();
    let _ = writeln!(md, "# sluice bench\n");
    let _ = writeln!(md, "- when: {}\n- machine: {}\n- command: `{}`", report.started, report.machine, report.command);
    let _ = writeln!(md, "- each case ran {} times, alternating with the others; median (min–max)\n", report.runs);
    let _ = writeln!(md, "## Ratios\n");
    let _ = writeln!(md, "| scenario | case | against | speed ratio | memory ratio | meaning |");
    let _ = writeln!(md, "|---|---|---|---:|---:|---|");
    for c in &report.comparisons {
        let shown = |on: bool, ratio: f64| if on { format!("{ratio:.2}×") } else { "—".to_string() };
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} | {} |",
            c.scenario,
            c.case,
            c.against,
            shown(c.about != About::Memory, c.speed_ratio),
            shown(c.about != About::Speed, c.memory_ratio),
            c.meaning
        );
    }
    let _ = writeln!(
        md,
        "\nSpeed ratio: the other's median wall time ÷ this case's (above 1: faster). Memory ratio: this case's median peak RSS ÷ the other's (below 1: less memory).\n"
    );
    let _ = writeln!(md, "## Cases\n");
    let _ = writeln!(md, "| scenario | case | input | wall s | CPU s | MB/s | records/s | peak RSS MiB |");
    let _ = writeln!(md, "|---|---|---:|---:|---:|---:|---:|---:|");
    for c in &report.cases {
        let _ = writeln!(
            md,
            "| {} | {} | {:.0} MB | {} | {} | {} | {:.0} | {} |",
            c.scenario,
            if c.sluice { format!("**{}**", c.case) } else { c.case.clone() },
            c.input_bytes as f64 / 1e6,
            spread(&c.wall_s, 2),
            spread(&c.cpu_s, 2),
            spread(&c.mb_per_s, 1),
            c.records_per_s.median,
            spread(&c.peak_rss_mib, 0),
        );
    }
    if !report.notes.is_empty() {
        let _ = writeln!(md, "\n## Notes\n");
        for n in &report.notes {
            let _ = writeln!(md, "- {n}");
        }
    }
    md
}

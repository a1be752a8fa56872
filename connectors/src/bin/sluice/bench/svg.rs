//! The chart: throughput and peak RSS per case, on logarithmic axes.

use std::fmt::Write as _;

use super::stats::BenchReport;

pub(crate) fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

/// Where `value` falls on a log axis from `low` to `high` (both decades), as a fraction.
pub(crate) fn log_fraction(value: f64, low: f64, high: f64) -> f64 {
    ((value.max(low).log10() - low.log10()) / (high.log10() - low.log10()).max(1e-9)).clamp(0.0, 1.0)
}

/// The decades around `values`: from the one at or below the smallest to the one at or above the
/// largest.
pub(crate) fn decades(values: impl Iterator<Item = f64>) -> (f64, f64) {
    let (low, high) = values.filter(|v| *v > 0.0).fold((f64::MAX, f64::MIN), |(l, h), v| (l.min(v), h.max(v)));
    if low > high {
        return (1.0, 10.0);
    }
    let low = 10f64.powf(low.log10().floor());
    let high = 10f64.powf(high.log10().ceil()).max(low * 10.0);
    (low, high)
}

/// Two bar charts side by side: MB/s and peak RSS per case, grouped by scenario, sluice in one
/// colour and baselines in another. Both axes are logarithmic (marked at each decade): the cases
/// span three orders of magnitude (a trivial server reads 1.5 GB/s; gzip compresses 50 MB/s), and
/// a linear axis would squeeze most bars to nothing. The label column is as wide as its longest
/// label.
pub fn svg(report: &BenchReport) -> String {
    let row = 22.0;
    let labels: Vec<String> = report.cases.iter().map(|c| format!("{} · {}", c.scenario, c.case)).collect();
    // ~7 px per character at 12 px sans-serif, plus margins.
    let label_width = 20.0 + 7.0 * labels.iter().map(|l| l.chars().count()).max().unwrap_or(10) as f64;
    let panel = 320.0;
    let gap = 70.0;
    let top = 58.0;
    let height = top + row * report.cases.len() as f64 + 44.0;
    let width = label_width + 2.0 * panel + gap + 70.0;
    let speed_axis = decades(report.cases.iter().map(|c| c.mb_per_s.median));
    let rss_axis = decades(report.cases.iter().map(|c| c.peak_rss_mib.median));
    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0}" height="{height:.0}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(svg, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        svg,
        r#"<text x="10" y="20" font-size="14" font-weight="bold">sluice bench: {}</text>"#,
        xml_escape(&report.machine)
    );
    let panels = [
        (label_width, "throughput, MB/s, log scale (longer is better)", speed_axis),
        (label_width + panel + gap, "peak RSS, MiB, log scale (shorter is better)", rss_axis),
    ];
    let bottom = top + row * report.cases.len() as f64;
    for (x, title, (low, high)) in panels {
        let _ = writeln!(svg, r#"<text x="{x:.0}" y="38">{title}</text>"#);
        // A gridline and a label at each decade.
        let mut decade = low;
        while decade <= high * 1.0001 {
            let gx = x + log_fraction(decade, low, high) * panel;
            let _ = writeln!(
                svg,
                r##"<line x1="{gx:.1}" y1="{:.0}" x2="{gx:.1}" y2="{bottom:.0}" stroke="#dddddd"/><text x="{gx:.1}" y="{:.0}" fill="#777" text-anchor="middle" font-size="10">{}</text>"##,
                top - 4.0,
                top - 8.0,
                if decade >= 1.0 { format!("{decade:.0}") } else { format!("{decade}") }
            );
            decade *= 10.0;
        }
    }
    for (i, (c, label)) in report.cases.iter().zip(&labels).enumerate() {
        let y = top + row * i as f64;
        let colour = if c.sluice { "#1f77b4" } else { "#aaaaaa" };
        let _ = writeln!(
            svg,
            r#"<text x="{:.0}" y="{:.0}" text-anchor="end">{}</text>"#,
            label_width - 8.0,
            y + 14.0,
            xml_escape(label)
        );
        for ((x, _, (low, high)), value) in panels.iter().zip([c.mb_per_s.median, c.peak_rss_mib.median]) {
            let w = (log_fraction(value, *low, *high) * panel).max(1.0);
            let _ = writeln!(
                svg,
                r#"<rect x="{x:.0}" y="{:.0}" width="{w:.1}" height="{:.0}" fill="{colour}"/>"#,
                y + 3.0,
                row - 6.0
            );
            let _ = writeln!(svg, r#"<text x="{:.1}" y="{:.0}">{value:.0}</text>"#, x + w + 4.0, y + 14.0);
        }
    }
    let _ = writeln!(
        svg,
        r##"<text x="10" y="{:.0}" fill="#555">blue: sluice, grey: baselines; medians of {} alternating runs</text>"##,
        height - 12.0,
        report.runs
    );
    svg.push_str("</svg>\n");
    svg
}

//! `sluice top ADDR`: the admin endpoint's figures as a terminal view, for an ssh session where no
//! browser reaches the dashboard. It scrapes `GET /metrics` once a second and redraws: per stream
//! incoming records/s and MB/s, throttled records/s, in-flight bytes and the write-ahead log's
//! size, how far a Kinesis source reads behind its stream, and the TLS certificates it uses that
//! end within the alert rules' 14 days (or have ended); per sink delivered records/s, the success
//! ratio, retries/s, bytes buffered, data freshness, records sent to the error output and, for a
//! partitioning sink, its open partitions; per transform records in/out/dropped/failed per second;
//! under `sluice serve`, how many pipeline files of its folder it does not serve as written.
//!
//! Guarantees: it only reads `/metrics`; an address that does not answer is shown as such and
//! retried, never fatal; `q` (read without Enter on a terminal) or Ctrl-C ends it with exit code 0
//! and the terminal as it was (`stty` settings saved and restored); without a terminal it prints
//! one frame per second and still stops on `q` from stdin.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Read, Write};
use std::net::SocketAddr;
use std::process::{Command, ExitCode, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// One sample: its family, labels and value.
type Sample = (String, BTreeMap<String, String>, f64);

/// Parses the Prometheus text format (what `/metrics` serves): comments skipped, histograms'
/// series read like any other.
fn parse(text: &str) -> Vec<Sample> {
    let mut samples = Vec::new();
    for line in text.lines().filter(|l| !l.starts_with('#') && !l.trim().is_empty()) {
        let Some((series, value)) = line.rsplit_once(' ') else { continue };
        let Ok(value) = value.parse::<f64>() else { continue };
        let (name, labels) = match series.split_once('{') {
            Some((name, rest)) => (name, rest.trim_end_matches('}')),
            None => (series, ""),
        };
        let mut map = BTreeMap::new();
        // Label values are written without `",` inside them (engine::metrics escapes them).
        for pair in labels.split("\",").filter(|p| !p.is_empty()) {
            if let Some((k, v)) = pair.split_once("=\"") {
                map.insert(k.to_string(), v.trim_end_matches('"').to_string());
            }
        }
        samples.push((name.to_string(), map, value));
    }
    samples
}

/// A scrape and when it was taken.
struct Scrape {
    at: Instant,
    samples: Vec<Sample>,
}

impl Scrape {
    /// The sum of the samples of `family` whose labels include every pair of `with`.
    fn value(&self, family: impl Fn(&str) -> bool, with: &[(&str, &str)]) -> f64 {
        self.samples
            .iter()
            .filter(|(name, labels, _)| {
                family(name) && with.iter().all(|(k, v)| labels.get(*k).is_some_and(|l| l == v))
            })
            .map(|(_, _, v)| v)
            .sum()
    }

    /// Label `key`'s values among samples of `family`, in order, each once.
    fn labels(&self, family: impl Fn(&str) -> bool, keys: &[&str]) -> Vec<Vec<String>> {
        let mut out: Vec<Vec<String>> = Vec::new();
        for (name, labels, _) in &self.samples {
            if !family(name) {
                continue;
            }
            let values: Option<Vec<String>> = keys.iter().map(|k| labels.get(*k).cloned()).collect();
            if let Some(values) = values
                && !out.contains(&values)
            {
                out.push(values);
            }
        }
        out
    }
}

/// `/metrics` of the admin endpoint at `address`.
async fn scrape(client: &reqwest::Client, address: SocketAddr) -> Result<Scrape, String> {
    let text = client
        .get(format!("http://{address}/metrics"))
        .send()
        .await
        .and_then(reqwest::Response::error_for_status)
        .map_err(|e| sluice_engine::redact::error(&e))?
        .text()
        .await
        .map_err(|e| sluice_engine::redact::error(&e))?;
    Ok(Scrape { at: Instant::now(), samples: parse(&text) })
}

/// Per second between two scrapes.
fn rate(now: &Scrape, before: Option<&Scrape>, value: impl Fn(&Scrape) -> f64) -> f64 {
    match before {
        Some(b) if now.at > b.at => ((value(now) - value(b)) / now.at.duration_since(b.at).as_secs_f64()).max(0.0),
        _ => 0.0,
    }
}

fn is_delivery(family: &str, suffix: &str) -> bool {
    family.starts_with("sluice_DeliveryTo") && family.ends_with(suffix)
}

/// The certificates of `stream` (the API listener's, connectors' client certificates) that end
/// within the alert rules' threshold or have ended, each said as a line.
fn certificates_ending(now: &Scrape, stream: &str) -> Vec<String> {
    use sluice_connectors::tls::Ends;
    use sluice_engine::metrics::{CERTIFICATE_ENDING_DAYS, CLIENT_CERTIFICATE_EXPIRY};
    let client = format!("sluice_{CLIENT_CERTIFICATE_EXPIRY}");
    let mut lines = Vec::new();
    for (family, labels, ends) in &now.samples {
        if labels.get("stream").map(String::as_str) != Some(stream) {
            continue;
        }
        let whose = if family == "sluice_ListenerCertificateExpiry_seconds" {
            "API certificate".to_string()
        } else if *family == client {
            let Some((kind, name)) = ["destination", "source", "transform"]
                .iter()
                .find_map(|k| labels.get(*k).map(|name| (if *k == "destination" { "sink" } else { *k }, name)))
            else {
                continue;
            };
            format!("{kind} {name}'s client certificate")
        } else {
            continue;
        };
        let when = match Ends::of(*ends as u64) {
            Ends::Past(at) => format!("ended at {at}"),
            Ends::Soon { days, .. } => {
                format!("ends in {} (within the {CERTIFICATE_ENDING_DAYS}-day alert)", days_hours(days * 86_400.0))
            }
            Ends::Later(_) => continue,
        };
        lines.push(format!("{whose} {when}"));
    }
    lines
}

/// `seconds` as days and hours (hours and minutes under a day).
fn days_hours(seconds: f64) -> String {
    let s = seconds as u64;
    if s >= 86_400 {
        format!("{} d {} h", s / 86_400, s % 86_400 / 3_600)
    } else {
        format!("{} h {} min", s / 3_600, s % 3_600 / 60)
    }
}

/// One frame of the view.
fn frame(address: SocketAddr, now: &Scrape, before: Option<&Scrape>) -> String {
    let mut out = String::new();
    let clock = chrono::Local::now().format("%H:%M:%S");
    out.push_str(&format!("sluice top  {address}  {clock}  (every 1 s; q or Ctrl-C to quit)\n"));
    // Under `sluice serve`: pipeline files of its folder it does not serve as written.
    let failed = now.value(|f| f == "sluice_ConfigFilesFailed", &[]);
    if failed > 0.0 {
        let s = if failed == 1.0 { "" } else { "s" };
        out.push_str(&format!(
            "{failed:.0} pipeline file{s} of the folder not served as written (the log and the dashboard say why)\n"
        ));
    }
    out.push('\n');
    let streams = now.labels(|f| f == "sluice_IncomingRecords", &["stream"]);
    out.push_str(&format!(
        "{:<28} {:>12} {:>10} {:>13} {:>13} {:>10}\n",
        "STREAM", "IN rec/s", "IN MB/s", "THROTTLED/s", "IN FLIGHT MiB", "LOG MiB"
    ));
    if streams.is_empty() {
        out.push_str("  (no stream reports yet)\n");
    }
    for stream in &streams {
        let s = stream[0].as_str();
        let with = [("stream", s)];
        let records = rate(now, before, |x| x.value(|f| f == "sluice_IncomingRecords", &with));
        let bytes = rate(now, before, |x| x.value(|f| f == "sluice_IncomingBytes", &with));
        let throttled = rate(now, before, |x| x.value(|f| f == "sluice_ThrottledRecords", &with));
        let log = now.value(|f| f == "sluice_LogBytes", &with) / f64::from(1 << 20);
        let inflight = now.value(|f| f == "sluice_InFlightBytes", &with) / f64::from(1 << 20);
        out.push_str(&format!(
            "{s:<28} {records:>12.0} {:>10.2} {throttled:>13.0} {inflight:>13.1} {log:>10.1}\n",
            bytes / 1e6
        ));
        let kinesis = |f: &str| f == "sluice_KinesisMillisBehindLatest";
        if now.labels(kinesis, &["stream"]).iter().any(|l| l[0] == s) {
            let behind = now.value(kinesis, &with) / 1000.0;
            let alert = if behind > 300.0 { "  (past the 5 min alert)" } else { "" };
            out.push_str(&format!("{:<28} kinesis source {behind:.1} s behind its stream{alert}\n", ""));
        }
        for line in certificates_ending(now, s) {
            out.push_str(&format!("{:<28} {line}\n", ""));
        }
    }
    out.push_str(&format!(
        "\n{:<28} {:>12} {:>8} {:>10} {:>12} {:>12} {:>13}\n",
        "SINK (stream/sink)", "DELIVERED/s", "SUCCESS", "RETRIES/s", "BUFFER MiB", "FRESHNESS s", "ERROR OUTPUT"
    ));
    let sinks = now.labels(|f| is_delivery(f, "_Records"), &["stream", "destination"]);
    if sinks.is_empty() {
        out.push_str("  (no sink reports yet)\n");
    }
    for sink in &sinks {
        let with = [("stream", sink[0].as_str()), ("destination", sink[1].as_str())];
        let delivered = rate(now, before, |x| x.value(|f| is_delivery(f, "_Records"), &with));
        let retries = rate(now, before, |x| x.value(|f| is_delivery(f, "_Retries"), &with));
        let buffered = now.value(|f| f == "sluice_BufferedBytes", &with) / f64::from(1 << 20);
        let success = now.value(|f| is_delivery(f, "_Success"), &with);
        let freshness = now.value(|f| is_delivery(f, "_DataFreshness_seconds"), &with);
        let failed = now.value(|f| is_delivery(f, "_FailedRecords"), &with);
        let name = format!("{}/{}", sink[0], sink[1]);
        out.push_str(&format!(
            "{name:<28} {delivered:>12.0} {success:>8.3} {retries:>10.1} {buffered:>12.2} {freshness:>12.1} {failed:>13.0}\n"
        ));
        // A partitioning sink's partitions (every sink has the families; 0 when it does not partition).
        let open = now.value(|f| f == "sluice_PartitionCount", &with);
        let sealed = now.value(|f| f == "sluice_PartitionsSealedEarly", &with);
        if open > 0.0 || sealed > 0.0 {
            let early = if sealed > 0.0 {
                format!(", {sealed:.0} sealed early to stay within max_open_mb")
            } else {
                String::new()
            };
            out.push_str(&format!("{:<28} {open:.0} partitions open{early}\n", ""));
        }
    }
    let transforms = now.labels(|f| f == "sluice_TransformRecords", &["stream", "transform"]);
    if !transforms.is_empty() {
        out.push_str(&format!(
            "\n{:<28} {:>12} {:>10} {:>11} {:>10}\n",
            "TRANSFORM (stream/name)", "IN/s", "OUT/s", "DROPPED/s", "FAILED/s"
        ));
    }
    for transform in &transforms {
        let per_second = |outcome: &str| {
            let with = [("stream", transform[0].as_str()), ("transform", transform[1].as_str()), ("outcome", outcome)];
            rate(now, before, |x| x.value(|f| f == "sluice_TransformRecords", &with))
        };
        let name = format!("{}/{}", transform[0], transform[1]);
        out.push_str(&format!(
            "{name:<28} {:>12.0} {:>10.0} {:>11.0} {:>10.0}\n",
            per_second("in"),
            per_second("out"),
            per_second("dropped"),
            per_second("failed")
        ));
    }
    out
}

/// The terminal's settings, restored when dropped.
struct RawTerminal(Option<String>);

impl RawTerminal {
    /// Keys without Enter and without echo, when stdin is a terminal.
    fn enter() -> Self {
        if !std::io::stdin().is_terminal() {
            return RawTerminal(None);
        }
        let saved = Command::new("stty").arg("-g").stdin(Stdio::inherit()).output().ok();
        let saved = saved.filter(|o| o.status.success()).map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
        if saved.is_some() {
            let _ = Command::new("stty").args(["-icanon", "-echo", "min", "1"]).stdin(Stdio::inherit()).status();
        }
        RawTerminal(saved)
    }
}

impl Drop for RawTerminal {
    fn drop(&mut self) {
        if let Some(saved) = &self.0 {
            let _ = Command::new("stty").arg(saved).stdin(Stdio::inherit()).status();
        }
    }
}

/// Runs the view until `q` or Ctrl-C.
pub fn top_command(address: SocketAddr) -> anyhow::Result<ExitCode> {
    let quit = Arc::new(AtomicBool::new(false));
    let terminal = std::io::stdout().is_terminal();
    let _raw = RawTerminal::enter();
    // `q` from stdin, on a thread of its own (a read blocks).
    let keys = Arc::clone(&quit);
    std::thread::Builder::new().name("sluice-top-keys".into()).spawn(move || {
        let mut byte = [0u8; 1];
        while let Ok(1) = std::io::stdin().read(&mut byte) {
            if byte[0] == b'q' || byte[0] == b'Q' {
                keys.store(true, Ordering::SeqCst);
                return;
            }
        }
    })?;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async {
        let client = reqwest::Client::builder().timeout(Duration::from_secs(2)).build()?;
        let mut before: Option<Scrape> = None;
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        let ctrl_c = tokio::signal::ctrl_c();
        tokio::pin!(ctrl_c);
        loop {
            tokio::select! {
                _ = &mut ctrl_c => break,
                _ = tick.tick() => {}
            }
            if quit.load(Ordering::SeqCst) {
                break;
            }
            let text = match scrape(&client, address).await {
                Ok(now) => {
                    let text = frame(address, &now, before.as_ref());
                    before = Some(now);
                    text
                }
                Err(e) => format!("sluice top  {address}: no answer ({e}); retrying every second\n"),
            };
            let mut stdout = std::io::stdout().lock();
            // Home and clear on a terminal; frames one after another otherwise.
            if terminal {
                let _ = stdout.write_all(b"\x1b[H\x1b[2J");
            }
            let _ = stdout.write_all(text.as_bytes());
            let _ = stdout.write_all(b"\n");
            let _ = stdout.flush();
            // `q` is seen within a tenth of a second, not only at the next tick.
            for _ in 0..9 {
                if quit.load(Ordering::SeqCst) {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            if quit.load(Ordering::SeqCst) {
                break;
            }
        }
        anyhow::Ok(())
    })?;
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_come_from_two_scrapes_of_the_text_format() {
        let text = |n: u64| {
            format!(
                "# TYPE sluice_IncomingRecords counter\nsluice_IncomingRecords{{stream=\"s\"}} {n}\n\
                 sluice_IncomingBytes{{stream=\"s\"}} {}\nsluice_DeliveryToS3_Records{{stream=\"s\",destination=\"out\"}} {n}\n\
                 sluice_DeliveryToS3_Success{{stream=\"s\",destination=\"out\"}} 0.5\n",
                n * 100
            )
        };
        let start = Instant::now();
        let before = Scrape { at: start, samples: parse(&text(1000)) };
        let now = Scrape { at: start + Duration::from_secs(2), samples: parse(&text(3000)) };
        let shown = frame("127.0.0.1:1".parse().unwrap(), &now, Some(&before));
        let stream = shown.lines().find(|l| l.starts_with("s ")).unwrap();
        assert!(stream.contains(" 1000 ") && stream.contains(" 0.10 "), "{shown}");
        let sink = shown.lines().find(|l| l.starts_with("s/out")).unwrap();
        assert!(sink.contains(" 1000 ") && sink.contains(" 0.500 "), "{shown}");
        assert!(!shown.contains("kinesis") && !shown.contains("partitions"), "{shown}");
        // A stream with a Kinesis source an hour behind says so under its line.
        let lagging = format!("{}sluice_KinesisMillisBehindLatest{{stream=\"s\"}} 3600000\n", text(3000));
        let now = Scrape { at: start + Duration::from_secs(2), samples: parse(&lagging) };
        let shown = frame("127.0.0.1:1".parse().unwrap(), &now, Some(&before));
        assert!(shown.contains("kinesis source 3600.0 s behind its stream  (past the 5 min alert)"), "{shown}");
        assert!(!shown.contains("certificate"), "{shown}");
    }

    /// Under `sluice serve`, files of its folder it does not serve are said at the top.
    #[test]
    fn files_a_serve_does_not_serve_are_said() {
        let samples = |failed: u32| {
            parse(&format!("sluice_ConfigFilesFailed {failed}\nsluice_IncomingRecords{{stream=\"s\"}} 0\n"))
        };
        let shown = frame("127.0.0.1:1".parse().unwrap(), &Scrape { at: Instant::now(), samples: samples(2) }, None);
        assert!(shown.contains("2 pipeline files of the folder not served as written"), "{shown}");
        let shown = frame("127.0.0.1:1".parse().unwrap(), &Scrape { at: Instant::now(), samples: samples(0) }, None);
        assert!(!shown.contains("not served"), "{shown}");
    }

    /// A partitioning sink's open partitions, and those sealed early, are said under its line.
    #[test]
    fn a_partitioning_sink_s_partitions_are_said_under_it() {
        let text = "sluice_IncomingRecords{stream=\"s\"} 0\n\
                    sluice_DeliveryToS3_Records{stream=\"s\",destination=\"lake\"} 10\n\
                    sluice_PartitionCount{stream=\"s\",destination=\"lake\"} 1020\n\
                    sluice_PartitionsSealedEarly{stream=\"s\",destination=\"lake\"} 4\n";
        let now = Scrape { at: Instant::now(), samples: parse(text) };
        let shown = frame("127.0.0.1:1".parse().unwrap(), &now, None);
        let lines: Vec<&str> = shown.lines().collect();
        let sink = lines.iter().position(|l| l.starts_with("s/lake")).unwrap();
        assert_eq!(
            lines[sink + 1].trim(),
            "1020 partitions open, 4 sealed early to stay within max_open_mb",
            "{shown}"
        );
    }

    /// A certificate ending within the alert rules' threshold, or ended, is said under its
    /// stream's line; one ending later is not.
    #[test]
    fn certificates_ending_soon_are_said_under_their_stream() {
        let unix_now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
        let text = format!(
            "sluice_IncomingRecords{{stream=\"s\"}} 0\n\
             sluice_ListenerCertificateExpiry_seconds{{stream=\"s\"}} {}\n\
             sluice_ClientCertificateExpiry_seconds{{stream=\"s\",destination=\"siem\"}} {}\n\
             sluice_ClientCertificateExpiry_seconds{{stream=\"s\",transform=\"enrich\"}} {}\n",
            unix_now + 90 * 86_400,
            unix_now + 2 * 86_400 + 3 * 3_600 + 60,
            unix_now - 7_200,
        );
        let now = Scrape { at: Instant::now(), samples: parse(&text) };
        let shown = frame("127.0.0.1:1".parse().unwrap(), &now, None);
        assert!(shown.contains("sink siem's client certificate ends in 2 d 3 h (within the 14-day alert)"), "{shown}");
        let ended = chrono::DateTime::from_timestamp(i64::try_from(unix_now - 7_200).unwrap(), 0).unwrap();
        let ended = ended.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        assert!(shown.contains(&format!("transform enrich's client certificate ended at {ended}")), "{shown}");
        assert!(!shown.contains("API certificate"), "ninety days left is not said: {shown}");
    }
}

//! The error log (`[pipeline] error_log`, `--log-format json`): CloudWatch Logs' equivalent for a
//! delivery stream. Every delivery failure, retry exhaustion, backup, transform failure, throttle
//! burst, refused TLS renewal (through a connector's meter) and log truncation is one JSON line:
//! `time, level, stream, component, errorCode, message` and, when known, `attempts` and `key` (the
//! object or request), written through a [`LineStore`] (`error_log = "<URL>"`) and/or to stderr
//! (`--log-format json`); without JSON on stderr, each line is also a log line at its level
//! (`WARN`, `ERROR`), so a destination that fails shows in the terminal at its first failed
//! attempt, not only when its retry duration runs out; the last [`RECENT`] lines are kept in
//! memory for the dashboard.
//!
//! Guarantees: at most [`PER_WINDOW`] lines per component, error code and level per [`WINDOW`]
//! (a flood of retries never hides a backup), so a
//! destination that is down does not write a line per record; what is held back is counted and
//! the next line of that code carries `suppressed` (how many since the previous one), and a stop
//! writes a last line for every code still holding some back. Lines never carry configured
//! secrets: callers pass codes, keys and messages, never config values, and URLs in messages go
//! through [`crate::redact`].

use std::collections::{HashMap, VecDeque};
use std::io::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::line_store::LineStore;

/// Lines per component and error code in one window.
pub const PER_WINDOW: u32 = 5;
/// The window.
pub const WINDOW: Duration = Duration::from_secs(60);
/// Lines kept for the dashboard.
pub const RECENT: usize = 50;

/// How bad an event is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Level {
    /// Something will be tried again (a failed attempt, a throttled request).
    Warn,
    /// Records went to the error output or left the log.
    Error,
}

/// One event, as a caller knows it.
#[derive(Debug, Clone, Copy)]
pub struct ErrorEvent<'a> {
    /// How bad.
    pub level: Level,
    /// The source, transform or sink name.
    pub component: &'a str,
    /// Machine-readable, e.g. `S3.AccessDenied`, `Jq.ProcessingFailed`.
    pub error_code: &'a str,
    /// What happened.
    pub message: &'a str,
    /// Attempts made, when counted.
    pub attempts: Option<u32>,
    /// The object key or request id concerned.
    pub key: Option<&'a str>,
}

#[derive(Debug)]
struct Window {
    started: Instant,
    written: u32,
    /// Held back since the last line written for this code.
    held: u64,
}

/// A pipeline's error log.
#[derive(Debug)]
pub struct ErrorLog {
    stream: String,
    store: Option<Arc<LineStore>>,
    /// Lines go to stderr as JSON (else as log lines).
    json_on_stderr: bool,
    windows: Mutex<HashMap<(String, String, Level), Window>>,
    recent: Mutex<VecDeque<Value>>,
    /// Lines written.
    pub written: AtomicU64,
    /// Lines held back by the rate limit.
    pub suppressed: AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl ErrorLog {
    /// The error log of `stream`, into `store` and to stderr: as JSON lines when
    /// `json_on_stderr`, else as log lines.
    pub fn new(stream: &str, store: Option<Arc<LineStore>>, json_on_stderr: bool) -> Self {
        ErrorLog {
            stream: stream.to_string(),
            store,
            json_on_stderr,
            windows: Mutex::new(HashMap::new()),
            recent: Mutex::new(VecDeque::with_capacity(RECENT)),
            written: AtomicU64::new(0),
            suppressed: AtomicU64::new(0),
        }
    }

    /// Reports `event`, unless its code has had [`PER_WINDOW`] lines in this window.
    pub fn report(&self, event: ErrorEvent<'_>) {
        self.report_at(event, Instant::now());
    }

    fn report_at(&self, event: ErrorEvent<'_>, now: Instant) {
        let held = {
            let mut windows = lock(&self.windows);
            let window = windows
                .entry((event.component.to_string(), event.error_code.to_string(), event.level))
                .or_insert(Window { started: now, written: 0, held: 0 });
            if now.duration_since(window.started) >= WINDOW {
                window.started = now;
                window.written = 0;
            }
            if window.written >= PER_WINDOW {
                window.held += 1;
                self.suppressed.fetch_add(1, Relaxed);
                return;
            }
            window.written += 1;
            std::mem::take(&mut window.held)
        };
        self.write(event, held, false);
    }

    /// Writes `event`'s line; `held`: lines of its code held back before it; `at_stop`: the stop's
    /// last line for its code, whose message says the count.
    fn write(&self, event: ErrorEvent<'_>, held: u64, at_stop: bool) {
        let mut line = json!({
            "time": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            "level": match event.level { Level::Warn => "WARN", Level::Error => "ERROR" },
            "stream": self.stream,
            "component": event.component,
            "errorCode": event.error_code,
            // A destination's error may quote its URL: passwords and credential parameters masked.
            "message": crate::redact::text(event.message),
        });
        if let Some(attempts) = event.attempts {
            line["attempts"] = attempts.into();
        }
        if let Some(key) = event.key {
            line["key"] = key.into();
        }
        if held > 0 {
            line["suppressed"] = held.into();
        }
        let mut text = line.to_string().into_bytes();
        text.push(b'\n');
        if self.json_on_stderr {
            let _ = std::io::stderr().lock().write_all(&text);
        } else {
            log_line(&self.stream, &line, event, if at_stop { 0 } else { held });
        }
        if let Some(store) = &self.store {
            store.write(&text);
        }
        self.written.fetch_add(1, Relaxed);
        let mut recent = lock(&self.recent);
        if recent.len() == RECENT {
            recent.pop_front();
        }
        recent.push_back(line);
    }

    /// The last [`RECENT`] lines, oldest first.
    pub fn recent(&self) -> Vec<Value> {
        lock(&self.recent).iter().cloned().collect()
    }

    /// Writes a line for every code still holding lines back, and stores what was written.
    pub fn close(&self) {
        let held: Vec<((String, String, Level), u64)> = lock(&self.windows)
            .iter_mut()
            .filter(|(_, w)| w.held > 0)
            .map(|(k, w)| (k.clone(), std::mem::take(&mut w.held)))
            .collect();
        for ((component, code, level), n) in held {
            let message = format!("the rate limit held back {n} more lines of this error until the stop");
            let event = ErrorEvent {
                level,
                component: &component,
                error_code: &code,
                message: &message,
                attempts: None,
                key: None,
            };
            self.write(event, n, true);
        }
        if let Some(store) = &self.store {
            store.close();
        }
    }
}

/// `line` (an error-log line of `stream`) as a log line at its level: the message, then what else
/// it says.
fn log_line(stream: &str, line: &Value, event: ErrorEvent<'_>, held: u64) {
    let message = line["message"].as_str().unwrap_or_default();
    let mut details = format!("{}, {}", event.component, event.error_code);
    if let Some(attempts) = event.attempts {
        details.push_str(&format!(", {attempts} attempt{}", if attempts == 1 { "" } else { "s" }));
    }
    if let Some(key) = event.key {
        details.push_str(&format!(", key {key}"));
    }
    if held > 0 {
        details.push_str(&format!(", {held} more held back before this line"));
    }
    match event.level {
        Level::Warn => tracing::warn!(target: "sluice::error_log", stream, "{message} ({details})"),
        Level::Error => tracing::error!(target: "sluice::error_log", stream, "{message} ({details})"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(code: &str) -> ErrorEvent<'_> {
        ErrorEvent {
            level: Level::Warn,
            component: "out",
            error_code: code,
            message: "down",
            attempts: Some(1),
            key: None,
        }
    }

    /// A flood of one code writes PER_WINDOW lines per window; the next line says how many were
    /// held back; other codes are not affected; a close reports what is still held.
    #[test]
    fn each_code_is_rate_limited_and_what_is_held_back_is_counted() {
        let log = ErrorLog::new("s", None, false);
        let start = Instant::now();
        for _ in 0..100 {
            log.report_at(event("Http.Down"), start);
        }
        log.report_at(event("Other.Code"), start);
        assert_eq!((log.written.load(Relaxed), log.suppressed.load(Relaxed)), (6, 95));
        log.report_at(event("Http.Down"), start + WINDOW);
        let last = log.recent().pop().unwrap();
        assert_eq!((last["errorCode"].as_str(), last["suppressed"].as_u64()), (Some("Http.Down"), Some(95)));
        for _ in 0..10 {
            log.report_at(event("Http.Down"), start + WINDOW);
        }
        log.close();
        let last = log.recent().pop().unwrap();
        assert_eq!(last["suppressed"], 6, "{last}");
        let first = &log.recent()[0];
        for field in ["time", "level", "stream", "component", "errorCode", "message", "attempts"] {
            assert!(!first[field].is_null(), "{field}: {first}");
        }
    }
}

//! Runs a command and measures what it cost: wall time, CPU time (user + system) and peak resident
//! memory, from the kernel's accounting of that one child (`wait4`), so a baseline tool and a
//! `sluice` run are measured the same way.
//!
//! Linux folds the peak RSS of the process that spawned a child into the child's own figure when
//! the child execs, so a large parent (a benchmark that already converted gigabytes) would make
//! every child look as large as itself. [`measure_via`] therefore measures through a small
//! intermediary, `sluice measure`, whose own size (a few MiB) is the floor of any figure.
//! Guarantees: the figures are the child's own plus its waited-for descendants'; a command that
//! cannot start is an error; a command that fails is reported with its exit code.

use std::ffi::OsString;
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use wait4::Wait4;

/// What one run cost.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Usage {
    /// Wall-clock time from spawn to exit.
    pub wall: Duration,
    /// User plus system CPU time.
    pub cpu: Duration,
    /// Peak resident set size in bytes.
    pub max_rss_bytes: u64,
}

/// A command to measure: a program, its arguments and an optional file on its standard input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MeasuredCommand {
    /// The program.
    pub program: OsString,
    /// Its arguments.
    pub args: Vec<OsString>,
    /// A file to read as standard input (otherwise none).
    pub stdin: Option<PathBuf>,
}

impl MeasuredCommand {
    /// `program` with `args`.
    pub fn new(program: impl Into<OsString>, args: impl IntoIterator<Item = impl Into<OsString>>) -> Self {
        MeasuredCommand { program: program.into(), args: args.into_iter().map(Into::into).collect(), stdin: None }
    }

    /// With `path` on standard input.
    pub fn stdin(mut self, path: impl Into<PathBuf>) -> Self {
        self.stdin = Some(path.into());
        self
    }
}

/// How a measured run ended.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Measured {
    /// Exit code (`None` when killed by a signal).
    pub code: Option<i32>,
    /// What it cost.
    pub usage: Usage,
}

/// Runs `command` as a direct child (standard output discarded) and measures it. Accurate for peak
/// RSS only when this process is small; see [`measure_via`].
pub fn measure_child(command: &MeasuredCommand) -> io::Result<Measured> {
    let mut child = Command::new(&command.program);
    child.args(&command.args).stdout(Stdio::null());
    if let Some(path) = &command.stdin {
        child.stdin(std::fs::File::open(path)?);
    }
    let started = Instant::now();
    let used = child.spawn()?.wait4()?;
    Ok(Measured {
        code: used.status.code(),
        usage: Usage {
            wall: started.elapsed(),
            cpu: used.rusage.utime + used.rusage.stime,
            max_rss_bytes: used.rusage.maxrss,
        },
    })
}

/// Runs `command` through `sluice measure` (the binary at `sluice`), so its peak RSS is its own.
pub fn measure_via(sluice: &Path, command: &MeasuredCommand) -> io::Result<Measured> {
    let report = tempfile::NamedTempFile::new()?;
    let mut args: Vec<OsString> = vec!["measure".into(), "--report".into(), report.path().into()];
    if let Some(stdin) = &command.stdin {
        args.extend(["--stdin".into(), stdin.into()]);
    }
    args.push("--".into());
    args.push(command.program.clone());
    args.extend(command.args.iter().cloned());
    let status = Command::new(sluice).args(&args).stdout(Stdio::null()).status()?;
    if !status.success() {
        return Err(io::Error::other(format!("`sluice measure` failed ({status}) for {:?}", command.program)));
    }
    let text = std::fs::read_to_string(report.path())?;
    serde_json::from_str(&text).map_err(|e| io::Error::other(format!("bad measure report: {e}")))
}

/// `sluice measure`: measures `command` as a direct child and writes the JSON [`Measured`] to
/// `report`. Exits 0 whenever the command could be run (its own exit code is in the report).
pub fn write_report(command: &MeasuredCommand, report: &Path) -> io::Result<()> {
    let measured = measure_child(command)?;
    std::fs::write(report, serde_json::to_vec(&measured).map_err(io::Error::other)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn measures_a_child_that_touches_memory() {
        // `sh` holding ~40 MB in a variable shows up in its peak RSS.
        let command = MeasuredCommand::new("sh", ["-c", "x=$(head -c 40000000 /dev/zero | tr '\\0' a); echo ${#x}"]);
        let measured = measure_child(&command).unwrap();
        assert_eq!(measured.code, Some(0));
        assert!(measured.usage.max_rss_bytes > 30_000_000, "{measured:?}");
        let quiet = measure_child(&MeasuredCommand::new("true", Vec::<String>::new())).unwrap();
        // A forked child starts with this process's resident set counted in its peak until it
        // execs: when the test process (other tests run beside this one) is larger than `sh` was,
        // `true` cannot be told from it, and only the absolute figure above is checked.
        let parent = sluice_engine::metrics::peak_rss_bytes().unwrap_or(u64::MAX);
        if parent < measured.usage.max_rss_bytes {
            assert!(quiet.usage.max_rss_bytes < measured.usage.max_rss_bytes, "{quiet:?}");
        }
    }
}

//! Finding the baselines (the PATH, the virtualenvs `scripts/bench-tools.sh` and `scripts/test.sh`
//! make) and writing command lines for them.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use sluice_connectors::measure::MeasuredCommand;

/// A program on the PATH, or in one of the repository's virtualenvs (DuckDB CLI, pyarrow).
pub(crate) fn find_program(name: &str, extra_dirs: &[PathBuf]) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path).chain(extra_dirs.iter().cloned()).map(|d| d.join(name)).find(|p| p.is_file())
}

/// The `target` folders where `scripts/test.sh` puts the baselines: the working directory's and the
/// binary's (`target/<profile>/sluice`).
pub(crate) fn venv_roots(sluice: &Path) -> Vec<PathBuf> {
    let mut roots = vec![PathBuf::from("target")];
    if let Some(target) = sluice.parent().and_then(Path::parent) {
        roots.push(target.to_path_buf());
    }
    roots
}

/// The virtualenvs `scripts/test.sh` makes.
pub(crate) fn venv_dirs(sluice: &Path) -> Vec<PathBuf> {
    venv_roots(sluice).iter().flat_map(|t| ["bench-venv", "test-venv"].map(|v| t.join(v).join("bin"))).collect()
}

/// A Python that imports pyarrow.
pub(crate) fn python_with_pyarrow(dirs: &[PathBuf]) -> Option<PathBuf> {
    dirs.iter().map(|d| d.join("python")).chain([PathBuf::from("python3")]).find(|python| {
        Command::new(python)
            .args(["-c", "import pyarrow.json, pyarrow.parquet"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    })
}

pub(crate) fn shell_quote(p: &Path) -> String {
    format!("'{}'", p.display().to_string().replace('\'', "'\\''"))
}

/// `sh -c` running `line` (for baselines that write their output through a redirection).
pub(crate) fn shell(line: String) -> MeasuredCommand {
    MeasuredCommand::new("sh", ["-c".to_string(), line])
}

pub(crate) fn command_line(c: &MeasuredCommand) -> String {
    std::iter::once(&c.program).chain(&c.args).map(|a| a.to_string_lossy().into_owned()).collect::<Vec<_>>().join(" ")
}

//! Helpers shared by the integration tests: reading objects back from stores and folders, and the
//! `sluice` binary.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use futures::TryStreamExt;
use object_store::{ObjectStore, ObjectStoreExt};
use sluice_connectors::sinks::object_store::memory_store;
use sluice_engine::testkit::read_lines;

/// Every object in the `memory://NAME` store: key → decompressed lines.
pub fn memory_objects(name: &str) -> BTreeMap<String, Vec<String>> {
    let store = memory_store(name);
    let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap_or_else(|e| panic!("{e}"));
    runtime.block_on(async {
        let metas: Vec<_> = store.list(None).try_collect().await.unwrap_or_else(|e| panic!("{e}"));
        let mut out = BTreeMap::new();
        for meta in metas {
            let key = meta.location.to_string();
            let bytes = store.get(&meta.location).await.unwrap_or_else(|e| panic!("{e}")).bytes().await;
            let bytes = bytes.unwrap_or_else(|e| panic!("{e}"));
            out.insert(key.clone(), read_lines(&key, &bytes).unwrap_or_else(|e| panic!("{key}: {e}")));
        }
        out
    })
}

/// Every file under `dir`: path relative to `dir` → decompressed lines.
pub fn folder_objects(dir: &Path) -> BTreeMap<String, Vec<String>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else { continue };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else {
                let key = path.strip_prefix(dir).unwrap_or(&path).to_string_lossy().to_string();
                let bytes = match std::fs::read(&path) {
                    Ok(bytes) => bytes,
                    // A store's staging file, renamed between the listing and the read (a run in progress).
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                    Err(e) => panic!("{}: {e}", path.display()),
                };
                out.insert(key.clone(), read_lines(&key, &bytes).unwrap_or_else(|e| panic!("{key}: {e}")));
            }
        }
    }
    out
}

/// All lines of all objects, sorted (a multiset).
pub fn all_lines<'a>(objects: impl IntoIterator<Item = (&'a String, &'a Vec<String>)>) -> Vec<String> {
    let mut lines: Vec<String> = objects.into_iter().flat_map(|(_, l)| l.iter().cloned()).collect();
    lines.sort();
    lines
}

/// The built `sluice` binary.
pub fn sluice() -> std::process::Command {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_sluice"));
    cmd.env("SLUICE_LOG", "error");
    cmd
}

/// The repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// `n` generated records of `profile` for `seed`, as lines.
pub fn generated(profile: sluice_connectors::synth::Profile, seed: u64, n: u64) -> Vec<String> {
    let mut out = Vec::new();
    sluice_connectors::synth::write_ndjson(profile, seed, n, &mut out).unwrap_or_else(|e| panic!("{e}"));
    String::from_utf8_lossy(&out).lines().map(str::to_string).collect()
}

/// The Python with the test packages (pyarrow, DuckDB, boto3, the AWS CLI): `SLUICE_TEST_PYTHON`,
/// else target/test-venv, else python3.
pub fn python() -> PathBuf {
    if let Some(p) = std::env::var_os("SLUICE_TEST_PYTHON") {
        return PathBuf::from(p);
    }
    let venv = repo_root().join("target/test-venv/bin/python");
    if venv.exists() { venv } else { PathBuf::from("python3") }
}

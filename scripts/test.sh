#!/usr/bin/env bash
# The whole test suite, from a fresh machine: formatting, lints, unit and integration tests.
# It installs what the tests read back with (pyarrow and DuckDB, pinned, into target/test-venv);
# every server the tests use is started by the tests themselves on 127.0.0.1 (an in-process S3
# server, s3s-fs with SigV4 checking; the `sluice` binary).
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v cargo >/dev/null; then
  echo "cargo is required (https://rustup.rs)" >&2
  exit 1
fi
venv=target/test-venv
if ! "$venv/bin/python" -c 'import pyarrow, duckdb' 2>/dev/null; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check -r tests/requirements.txt
fi
export SLUICE_TEST_PYTHON="$PWD/$venv/bin/python"
cargo fmt --all --check
cargo clippy --workspace --all-targets -- -D warnings
cargo test --workspace --no-fail-fast

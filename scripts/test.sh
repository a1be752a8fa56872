#!/usr/bin/env bash
# The whole test suite, from a fresh machine: formatting, lints, unit and integration tests.
# Every real component the tests use is started by the tests themselves on 127.0.0.1
# (an in-process S3 server, s3s-fs with SigV4 checking; the `sluice` binary); nothing else to install.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v cargo >/dev/null; then
  echo "cargo is required (https://rustup.rs)" >&2
  exit 1
fi
cargo fmt --all --check
cargo clippy --workspace --all-targets -- -D warnings
cargo test --workspace --no-fail-fast

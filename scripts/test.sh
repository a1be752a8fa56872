#!/usr/bin/env bash
# The whole test suite, from a fresh machine: formatting, lints, unit and integration tests.
# It installs what the tests use, pinned: pyarrow and DuckDB (to read Parquet back), boto3 and the
# AWS CLI (Firehose API producers) into target/test-venv, and the AWS SDK for JavaScript into
# tests/js/node_modules (npm ci). Every server the tests use is started by the tests themselves on
# 127.0.0.1 (an in-process S3 server, s3s-fs with SigV4 checking; the `sluice` binary). The
# baselines `sluice bench` knows are installed too: pigz, gzip, zstd and syslog-ng (with its http
# module) from Debian, rsyslog unpacked from Debian's package, the DuckDB CLI and pyarrow into the
# venv.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v cargo >/dev/null; then
  echo "cargo is required (https://rustup.rs)" >&2
  exit 1
fi
for tool in python3 node npm; do
  if ! command -v "$tool" >/dev/null; then
    echo "$tool is required by the tests (see README: Tests)" >&2
    exit 1
  fi
done
missing=()
for tool in pigz gzip zstd; do
  command -v "$tool" >/dev/null || missing+=("$tool")
done
if ! command -v syslog-ng >/dev/null && [ ! -x /usr/sbin/syslog-ng ]; then
  missing+=(syslog-ng-core syslog-ng-mod-http)
fi
if [ ${#missing[@]} -gt 0 ]; then
  if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null ||
      (apt-get update -qq && apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null)
  else
    echo "note: ${missing[*]} not installed; sluice bench will list them as skipped baselines" >&2
  fi
fi
# rsyslog (a gzip baseline) conflicts with syslog-ng in Debian: its package is unpacked, not installed.
tools=target/bench-tools
if ! command -v rsyslogd >/dev/null && [ ! -x /usr/sbin/rsyslogd ] && [ ! -x "$tools/rsyslog/usr/sbin/rsyslogd" ] &&
  command -v apt-get >/dev/null; then
  mkdir -p "$tools/debs"
  packages=(rsyslog libestr0 libfastjson4 liblognorm5)
  if (cd "$tools/debs" && (apt-get download -qq "${packages[@]}" 2>/dev/null ||
    (apt-get update -qq && apt-get download -qq "${packages[@]}" 2>/dev/null))); then
    for deb in "$tools"/debs/*.deb; do dpkg -x "$deb" "$tools/rsyslog"; done
  else
    echo "note: rsyslog could not be downloaded; sluice bench will list it as a skipped baseline" >&2
  fi
fi
venv=target/test-venv
# Reinstall whenever tests/requirements.txt changes.
stamp="$venv/.installed-$(sha256sum tests/requirements.txt | cut -c1-16)"
if [ ! -f "$stamp" ]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check -r tests/requirements.txt
  touch "$stamp"
fi
js_stamp="tests/js/node_modules/.installed-$(sha256sum tests/js/package-lock.json | cut -c1-16)"
if [ ! -f "$js_stamp" ]; then
  (cd tests/js && npm ci --no-audit --no-fund --loglevel=error)
  touch "$js_stamp"
fi
export SLUICE_TEST_PYTHON="$PWD/$venv/bin/python"
cargo fmt --all --check
cargo clippy --workspace --all-targets --all-features -- -D warnings
cargo test --workspace --no-fail-fast

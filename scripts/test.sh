#!/usr/bin/env bash
# The whole test suite, from a fresh machine: formatting, lints, unit and integration tests.
# It installs what the tests use, pinned: Debian's jq (1.6, the jq transform's reference), pyarrow and DuckDB (to read Parquet back), python-snappy (Hadoop-framed Snappy), boto3 and the
# AWS CLI (Firehose API producers), osmem-server (an in-memory OpenSearch API server the opensearch tests start), moto_server
# (KMS and S3 on 127.0.0.1 for the encryption tests; Kinesis for the kinesis source's) and aws-kinesis-agg (KPL
# aggregated records) into target/test-venv,
# Debian's prometheus for promtool (the alert rules' tests), Debian's chromium and PyPI's playwright (the dashboard's
# browser test), Debian's PostgreSQL 15 when its server binaries are missing (the postgres tests start their own clusters), and the AWS SDK for JavaScript
# and Azurite (Azure Blob Storage for tests/azure.rs; Microsoft's azure-storage-blob reads it back) and OpenTelemetry's JavaScript
# logs SDK with its OTLP/HTTP JSON exporter (tests/otlp.rs) into tests/js/node_modules (npm ci). Every server the tests use is started by the tests themselves on
# 127.0.0.1 (an in-process S3 server, s3s-fs with SigV4 checking; the `sluice` binary; as root, a
# small tmpfs for the full-disk test). The baselines `sluice bench` compares with are not needed:
# scripts/bench-tools.sh installs them (the bench's own test notes the ones missing).
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v cargo >/dev/null; then
  echo "cargo is required (https://rustup.rs)" >&2
  exit 1
fi
for tool in python3 node npm; do
  if ! command -v "$tool" >/dev/null; then
    echo "$tool is required by the tests (see README: Two commands)" >&2
    exit 1
  fi
done
# Installs Debian packages as root with apt-get, or says what to install ($1: why they are needed).
install() {
  why=$1; shift
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    apt-get install -y -qq --no-install-recommends "$@" >/dev/null \
      || { apt-get update -qq && apt-get install -y -qq --no-install-recommends "$@" >/dev/null; }
  else
    echo "$why: apt-get install $*" >&2
    exit 1
  fi
}
# Installs the packages after $2 when the command $1 is missing ($2: why it is needed).
need() {
  if ! command -v "$1" >/dev/null; then
    shift
    install "$@"
  fi
}
# The jq transform is checked against the jq 1.6 CLI (Debian's `jq`, the engine Firehose names).
need jq "jq (1.6, Debian's package) is required by the tests" jq
# The postgres sink's tests start throwaway clusters from PostgreSQL's server binaries (initdb,
# pg_ctl; as root they run them as the `postgres` user) and use psql.
if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || ! command -v psql >/dev/null; then
  install "PostgreSQL's server binaries are required by the tests" postgresql-15 postgresql-client-15
fi
# The alert rules (docs/alerts.yml) are checked and unit-tested with promtool (Debian's prometheus;
# only promtool is used, no server is started).
need promtool "promtool is required by the tests" prometheus
# The dashboard's test drives Debian's Chromium with Playwright (tests/requirements.txt); Playwright's
# own browser download is not used.
need chromium "Chromium is required by the dashboard's test" chromium
# zstd objects are read back with the zstd CLI (zstdcat) as well as DuckDB and pyarrow.
need zstdcat "The zstd CLI is required by the tests" zstd
# The syslog source's RELP mode is driven by rsyslog's own RELP output (omrelp, Debian's
# rsyslog-relp; rsyslogd is run in the foreground by the test with its own configuration).
if ! command -v rsyslogd >/dev/null || ! ls /usr/lib/*/rsyslog/omrelp.so >/dev/null 2>&1; then
  install "rsyslog and its RELP output are required by the syslog source's RELP test" rsyslog rsyslog-relp
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
# The API docs build without a warning (broken or ambiguous links).
RUSTDOCFLAGS="-D warnings" cargo doc --no-deps --workspace --all-features
cargo test --workspace --no-fail-fast

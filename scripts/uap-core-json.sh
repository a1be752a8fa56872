#!/usr/bin/env bash
# Regenerates connectors/uap-core/regexes.json (and the test cases under tests/fixtures/uap)
# from the uap-core YAML the ua-parser crate ships, for the enrich transform. Run after changing the
# ua-parser version in Cargo.toml; needs PyYAML.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo fetch -q
uap=$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/ua-parser-"$(cargo tree -p sluice-connectors -i ua-parser --depth 0 -e normal | awk '/ua-parser/{print substr($2,2); exit}')"/uap-core | head -1)
python3 - "$uap" <<'PY'
import json, sys, yaml
uap = sys.argv[1]
json.dump(yaml.safe_load(open(f"{uap}/regexes.yaml")), open("connectors/uap-core/regexes.json", "w"), separators=(",", ":"))
for name in ["firefox_user_agent_strings", "opera_mini_user_agent_strings", "podcasting_user_agent_strings", "additional_os_tests"]:
    json.dump(yaml.safe_load(open(f"{uap}/test_resources/{name}.yaml")), open(f"tests/fixtures/uap/{name}.json", "w"), indent=0)
PY
cp "$uap/LICENSE" connectors/uap-core/LICENSE
cp "$uap/LICENSE" tests/fixtures/uap/LICENSE
echo "uap-core data from $uap"

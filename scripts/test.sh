#!/usr/bin/env bash
# The project's test command (README): builds the guests, runs every test of
# the workspace (all features), and reports how many tests were skipped
# because /dev/kvm is missing. Fails if any test fails.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p target
bash guests/build.sh >/dev/null
export VLAPIC_GUEST_DIR="$PWD/target/guests"
log=target/test-output.log
set +e
cargo test --workspace --all-features --no-fail-fast -- --nocapture 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e
skips=$(grep -c '^SKIP: ' "$log" || true)
passed=$(grep -Eo 'test result: ok\. [0-9]+ passed' "$log" | awk '{s+=$4} END {print s+0}')
echo "== tests: $passed passed in ok suites; $skips SKIP lines (tests that need /dev/kvm skipped: $(grep -c '^SKIP: no /dev/kvm' "$log" || true))"
exit "$status"

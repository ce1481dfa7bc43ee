#!/usr/bin/env bash
# Runs every fuzz target with cargo-fuzz (libFuzzer, nightly) for N seconds
# each and prints executions and crashes per target.
#
#   fuzz/run.sh [seconds-per-target] [target...]   default: 60 s, all targets
#   fuzz/run.sh --ci                               CI mode: 10 s per target
#
# Environment: FUZZ_JOBS (parallel targets, default 1), FUZZ_ARGS (extra
# libFuzzer flags). Seeds come from fuzz/seeds/<target> (committed); new
# inputs go to fuzz/corpus/<target> and crashes to fuzz/artifacts/<target>
# (both ignored by git). Exit status 1 if any target crashed.
#
# Stable, no cargo-fuzz: the same target logic runs in
#   cargo test -p vlapic --all-features --test hostile
#   cargo test -p vioapic --test hostile; cargo test -p vlapic-kvm --test hostile
#   cargo test --manifest-path fuzz/targets/Cargo.toml   (+ JSON path, corpus replay)
set -uo pipefail

cd "$(dirname "$0")"
secs=60
if [[ "${1:-}" == "--ci" ]]; then
    secs=10
    shift
elif [[ "${1:-}" =~ ^[0-9]+$ ]]; then
    secs=$1
    shift
fi
targets=("$@")
if [[ ${#targets[@]} -eq 0 ]]; then
    targets=(lapic_ops fabric restore kvm_blob ioapic)
fi

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "installing cargo-fuzz..."
    cargo install cargo-fuzz --locked || exit 2
fi

for t in "${targets[@]}"; do
    cargo +nightly fuzz build -O "$t" || { echo "build of $t failed"; exit 2; }
done

mkdir -p logs
run_one() {
    local t=$1
    mkdir -p "corpus/$t" "artifacts/$t"
    # -rss_limit_mb / -timeout: a step that allocates or loops without
    # bound is a finding too.
    cargo +nightly fuzz run -O "$t" "corpus/$t" "seeds/$t" -- \
        -max_total_time="$secs" -timeout=10 -rss_limit_mb=1024 -max_len=4096 \
        -print_final_stats=1 ${FUZZ_ARGS:-} >"logs/$t.log" 2>&1
    echo $? >"logs/$t.rc"
}

jobs=${FUZZ_JOBS:-1}
for t in "${targets[@]}"; do
    run_one "$t" &
    while [[ $(jobs -rp | wc -l) -ge $jobs ]]; do wait -n; done
done
wait

status=0
printf '%-10s %12s %10s %8s %6s %s\n' target execs exec/s corpus cov crashes
for t in "${targets[@]}"; do
    log="logs/$t.log"
    execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' | tail -1)
    rate=$(grep -o 'stat::average_exec_per_sec: *[0-9]*' "$log" | grep -o '[0-9]*$' | tail -1)
    cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1 | grep -o '[0-9]*')
    corp=$(find "corpus/$t" -type f | wc -l)
    crashes=$(find "artifacts/$t" -type f \( -name 'crash-*' -o -name 'timeout-*' -o -name 'oom-*' -o -name 'leak-*' \) | wc -l)
    rc=$(cat "logs/$t.rc")
    printf '%-10s %12s %10s %8s %6s %s\n' "$t" "${execs:-?}" "${rate:-?}" "$corp" "${cov:-?}" "$crashes"
    if [[ "$rc" != 0 || "$crashes" != 0 ]]; then
        status=1
        echo "  $t: exit $rc; see fuzz/logs/$t.log"
        grep -m1 -A3 'panicked at' "$log" | sed 's/^/    /'
        find "artifacts/$t" -type f | sed 's/^/    artifact: /'
    fi
done
exit $status

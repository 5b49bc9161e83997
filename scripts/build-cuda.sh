#!/usr/bin/env bash
# Builds the `cuda` binary on any x86-64 Linux machine, with or without a GPU, from NVIDIA's CUDA
# wheels on PyPI (nvcc, its headers and libcudart): no CUDA installation, no system package.
#
#   bash scripts/build-cuda.sh            -> target/cuda/release/robust-ssl (+ libcudart beside it)
#
# The binary loads the CUDA driver, cuBLAS, cuRAND and NVRTC at run time (cudarc's `dynamic-loading`),
# so it starts and runs on the CPU where there is no GPU, and `--device cuda` there is refused with
# a message saying what is missing. Where there is a GPU, it needs those libraries on the loader's
# path: PyTorch's own CUDA wheels serve (tools/gpu_check.sh sets LD_LIBRARY_PATH from them).
#
# candle-core 0.11 asks cudarc for `dynamic-linking` (the libraries are named in the binary, which
# then cannot start without them). This script builds against a copy of candle-core whose only
# change is that word, `dynamic-linking` -> `dynamic-loading`, through a `--config` patch: the
# project's Cargo.toml and Cargo.lock, and the CPU build, are left as they are (it builds a copy).
#
# The binary needs no system library beyond glibc and libstdc++ (NYU's labeled .mat is read in pure
# Rust): it runs on the GPU machines' own images.
#
# Settings (environment):
#   CUDA_SERIES        the CUDA toolkit wheels to build with (default 13.0; 13.x only: the 12.x
#                      wheels on PyPI carry no nvcc). The GPU machine's driver must be at least this.
#   CUDA_COMPUTE_CAP   the GPU architecture of the kernels (default 90: H100/H200)
set -euo pipefail
cd "$(dirname "$0")/.."

series=${CUDA_SERIES:-13.0}
major=${series%%.*}
export CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP:-90}
if [ "$major" -lt 13 ]; then
    echo "build-cuda.sh: CUDA_SERIES=$series: PyPI's CUDA $major wheels have no nvcc; use 13.0 or later" >&2
    exit 2
fi

work=$PWD/target/cuda-build
toolkit=$work/toolkit
cuda_home=$toolkit/nvidia/cu$major
if [ ! -x "$cuda_home/bin/nvcc" ] || [ "$(cat "$work/series" 2>/dev/null)" != "$series" ]; then
    echo "== CUDA $series toolkit from PyPI into $toolkit"
    rm -rf "$toolkit"
    mkdir -p "$work"
    python3 -m pip install --quiet --disable-pip-version-check --target "$toolkit" \
        "nvidia-cuda-nvcc==$series.*" "nvidia-cuda-runtime==$series.*" "nvidia-cuda-cccl==$series.*" \
        "nvidia-cuda-crt==$series.*" "nvidia-nvvm==$series.*"
    echo "$series" >"$work/series"
fi
# The runtime wheel ships only the versioned library; the linker looks for the plain name.
cudart=$(cd "$cuda_home/lib" && ls libcudart.so.* | sort | head -n1)
ln -sf "$cudart" "$cuda_home/lib/libcudart.so"

echo "== candle-core with cudarc's dynamic-loading"
manifest=$(cargo metadata --format-version 1 --locked | python3 -c '
import json, sys
meta = json.load(sys.stdin)
print(next(p["manifest_path"] for p in meta["packages"] if p["name"] == "candle-core"))')
patched=$work/candle-core
# Made once per candle-core release: a fresh copy would rebuild candle on every run.
if [ "$(cat "$patched/.copied-from" 2>/dev/null)" != "$manifest" ]; then
    rm -rf "$patched"
    cp -r "$(dirname "$manifest")" "$patched"
    chmod -R u+w "$patched"
    if [ "$(grep -c '"dynamic-linking",' "$patched/Cargo.toml")" != 1 ]; then
        echo "build-cuda.sh: $manifest: expected cudarc's \"dynamic-linking\" feature exactly once; candle-core changed, update this script" >&2
        exit 1
    fi
    sed -i 's/"dynamic-linking",/"dynamic-loading",/' "$patched/Cargo.toml"
    echo "$manifest" >"$patched/.copied-from"
fi

echo "== cargo build --features cuda (kernels for compute capability $CUDA_COMPUTE_CAP)"
# The patch rewrites Cargo.lock's candle-core entry: build a copy of the sources (mtimes kept, so
# rebuilds stay incremental), and the project's own Cargo.lock is never touched.
src=$work/src
rm -rf "$src"
mkdir -p "$src"
tar -c --exclude=./target --exclude=./.git --exclude=./runs --exclude=./assets --exclude=./.gpu . | tar -x -C "$src"
(
    cd "$src"
    PATH=$cuda_home/bin:$PATH CUDA_HOME=$cuda_home NVCC=$cuda_home/bin/nvcc \
        RUSTFLAGS="-L $cuda_home/lib -C link-arg=-Wl,-rpath,\$ORIGIN" \
        cargo build --release --no-default-features --features cuda --target-dir "$OLDPWD/target/cuda" \
        --config "patch.crates-io.candle-core.path=\"$patched\"" "$@"
)

# Beside the binary, found through its rpath: it then starts on machines without CUDA.
cp -L "$cuda_home/lib/$cudart" target/cuda/release/
bin=target/cuda/release/robust-ssl
echo "== $bin"
if ldd "$bin" | grep -q "not found"; then
    ldd "$bin" >&2
    echo "build-cuda.sh: $bin: a library it needs is missing" >&2
    exit 1
fi
"$bin" --version

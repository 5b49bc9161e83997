"""Side by side with AutoAttack itself: robust-ssl's AutoAttack attacks against AutoAttack's own
implementation (PyPI `pyautoattack`, fra31/auto-attack packaged) on the same model and images.

    python3 -m pip install torch safetensors numpy pyautoattack
    cargo build --release
    python3 tools/compare_autoattack.py --bin target/release/robust-ssl [--n 60] [--eps 1,2,4,8]
    python3 tools/compare_autoattack.py --norm l2 --eps 0.1,0.25,0.5,1 --out compare_autoattack_l2.md

The model: the tiny DINOv2 fixture (tests/fixtures/encoder/dinov2_official.pth, 2 blocks, 64 dims,
patch 14) + a linear probe on CLS ⊕ mean patch, trained by `robust-ssl train-head` on Fashion-MNIST
(Debian's dataset-fashion-mnist) at 28 px. PyTorch runs the same weights through
tools/reference_vit.py (a restatement of DINOv2's own forward, checked against it by
tools/gen_encoder_fixtures.py) and the probe's safetensors file; the images are the first `--n` of
Fashion-MNIST's test split, /255, grey replicated to RGB (what robust-ssl reads).

Each ε (in 1/255 under L∞, in pixel units of [0, 1] under L2): robust accuracy (a sample counts if right clean and under the attack) of robust-ssl's
`apgd` (APGD-CE), `apgd-dlr`, `apgd-t`, `fab-t`, `square` and `autoattack`, and of AutoAttack's
apgd-ce, apgd-dlr, apgd-t, fab-t, square and its standard ensemble, with AutoAttack's defaults on
both sides (100 iterations, 9 target classes, 5,000 Square queries). Prints a Markdown table and
writes it to --out (JSON beside it).
"""
import argparse
import gzip
import json
import os
import struct
import subprocess
import sys
import time

import numpy as np
import torch
from safetensors.torch import load_file

sys.path.insert(0, os.path.dirname(__file__))
import reference_vit as ref  # noqa: E402

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
ENCODER = os.path.join(ROOT, "tests/fixtures/encoder/dinov2_official.pth")
FMNIST = "/usr/share/datasets/fashion-mnist"
OURS = ["apgd", "apgd-dlr", "apgd-t", "fab-t", "square", "autoattack"]
THEIRS = ["apgd-ce", "apgd-dlr", "apgd-t", "fab-t", "square", "standard"]


class Probe(torch.nn.Module):
    """normalize → encoder → CLS ⊕ mean patch → linear, on pixels in [0, 1]."""

    def __init__(self, vit, head):
        super().__init__()
        self.vit = vit
        self.linear = torch.nn.Linear(head["linear.weight"].shape[1], head["linear.weight"].shape[0])
        with torch.no_grad():
            self.linear.weight.copy_(head["linear.weight"])
            self.linear.bias.copy_(head["linear.bias"])

    def forward(self, x):
        cls, patch = self.vit(ref.normalize(x))
        return self.linear(torch.cat([cls, patch.mean(1)], 1))


def fashion_test(n, folder):
    """The first `n` test images and labels, also written to `folder` as a Fashion-MNIST test split
    of exactly those images (so robust-ssl attacks them all, in order, without --limit)."""
    with gzip.open(os.path.join(FMNIST, "t10k-images-idx3-ubyte.gz"), "rb") as f:
        raw = f.read()
        images = np.frombuffer(raw, np.uint8, offset=16).reshape(-1, 28, 28)[:n]
    with gzip.open(os.path.join(FMNIST, "t10k-labels-idx1-ubyte.gz"), "rb") as f:
        labels = np.frombuffer(f.read(), np.uint8, offset=8)[:n]
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "t10k-images-idx3-ubyte"), "wb") as f:
        f.write(struct.pack(">IIII", 0x803, n, 28, 28) + images.tobytes())
    with open(os.path.join(folder, "t10k-labels-idx1-ubyte"), "wb") as f:
        f.write(struct.pack(">II", 0x801, n) + labels.tobytes())
    x = torch.from_numpy(images.astype(np.float32) / 255.0)[:, None].expand(-1, 3, -1, -1).contiguous()
    return x, torch.from_numpy(labels.astype(np.int64))


def ours(binary, head, kind, eps, norm, folder):
    args = [binary, "attack", "--task", "cls", "--checkpoint", ENCODER, "--num-heads", "4", "--size", "28",
            "--dataset", f"fashion-mnist:{folder}", "--split", "test", "--head", head,
            "--attack", kind, "--norm", norm, "--eps", budget_text(eps, norm), "--seed", "0", "--json"]
    t = time.time()
    out = subprocess.run(args, check=True, capture_output=True, text=True)
    r = json.loads(out.stdout)
    return r["clean"]["head"]["accuracy"], r["adversarial"]["head"]["accuracy"], time.time() - t


def budget_text(eps, norm):
    return f"{eps:g}/255" if norm == "linf" else f"{eps:g}"


def budget(eps, norm):
    return eps / 255 if norm == "linf" else eps


def theirs(model, x, y, kind, eps, norm):
    from pyautoattack import AutoAttack

    t = time.time()
    # The standard version's settings (1 restart, 9 targets, 5,000 queries); one component alone
    # keeps them and runs only that attack.
    aa = AutoAttack(model, norm={"linf": "Linf", "l2": "L2"}[norm], eps=budget(eps, norm), version="standard", seed=0)
    if kind != "standard":
        aa.attacks_to_run = [kind]
    x_adv, _ = aa.run_standard_evaluation(x, y, batch_size=len(x))
    with torch.no_grad():
        clean_ok = model(x).argmax(1) == y
        adv_ok = model(x_adv).argmax(1) == y
    moved = (x_adv - x).flatten(1)
    size = moved.abs().max(1)[0] if norm == "linf" else moved.norm(dim=1)
    assert size.max() <= budget(eps, norm) + 1e-5, "AutoAttack left the budget"
    return (clean_ok & adv_ok).float().mean().item(), time.time() - t


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--bin", default=os.path.join(ROOT, "target/release/robust-ssl"))
    p.add_argument("--n", type=int, default=60)
    p.add_argument("--eps", default="1,2,4,8", help="budgets: in 1/255 under linf, pixel units under l2")
    p.add_argument("--norm", default="linf", choices=["linf", "l2"])
    p.add_argument("--train", type=int, default=2000, help="Fashion-MNIST training images for the probe")
    p.add_argument("--out", default="compare_autoattack.md")
    a = p.parse_args()
    torch.manual_seed(0)
    work = os.path.splitext(a.out)[0] + ".work"
    os.makedirs(work, exist_ok=True)
    head = os.path.join(work, "probe.safetensors")
    subprocess.run([a.bin, "train-head", "--task", "cls", "--checkpoint", ENCODER, "--num-heads", "4",
                    "--dataset", f"fashion-mnist:{FMNIST}", "--limit", str(a.train), "--size", "28",
                    "--pooling", "cls+mean", "--epochs", "100", "--lr", "5e-2", "--out", head, "--json"],
                   check=True, capture_output=True)

    vit = ref.VisionTransformer(14, 64, 2, 4, pos_grid=4)
    vit.load_state_dict(torch.load(ENCODER, map_location="cpu"))
    model = Probe(vit, load_file(head)).eval()
    for q in model.parameters():
        q.requires_grad_(False)
    test = os.path.join(work, "fashion-mnist-test")
    x, y = fashion_test(a.n, test)
    with torch.no_grad():
        torch_clean = (model(x).argmax(1) == y).float().mean().item()

    rows, record = [], {"n": a.n, "norm": a.norm, "torch_clean": torch_clean, "eps": {}}
    for e in [float(v) for v in a.eps.split(",")]:
        cell = {}
        for k in OURS:
            clean, adv, secs = ours(a.bin, head, k, e, a.norm, test)
            cell[f"ours:{k}"] = (adv, secs)
            assert abs(clean - torch_clean) < 0.5 / a.n, f"clean accuracy differs: robust-ssl {clean}, PyTorch {torch_clean}"
        for k in THEIRS:
            cell[f"theirs:{k}"] = theirs(model, x, y, k, e, a.norm)
        record["eps"][str(e)] = cell
        print(json.dumps({str(e): cell}), flush=True)
        pct = lambda key: f"{100 * cell[key][0]:.1f}" if key in cell else "—"  # noqa: E731
        rows.append(f"| {budget_text(e, a.norm)} | {100 * torch_clean:.1f} | {pct('ours:apgd')} / {pct('theirs:apgd-ce')} "
                    f"| {pct('ours:apgd-dlr')} / {pct('theirs:apgd-dlr')} | {pct('ours:apgd-t')} / {pct('theirs:apgd-t')} "
                    f"| {pct('ours:fab-t')} / {pct('theirs:fab-t')} | {pct('ours:square')} / {pct('theirs:square')} "
                    f"| {pct('ours:autoattack')} / {pct('theirs:standard')} "
                    f"| {cell['ours:autoattack'][1] / a.n:.3f} / {cell['theirs:standard'][1] / a.n:.3f} |")
    table = "\n".join([
        f"Robust accuracy (%), robust-ssl / AutoAttack (pyautoattack), {'L∞' if a.norm == 'linf' else 'L2'}, {a.n} Fashion-MNIST test images,",
        "tiny DINOv2 (2 blocks, 64 dims) + linear probe; last column: seconds per image of each ensemble.",
        "",
        "| ε | clean | APGD-CE | APGD-DLR | APGD-T | FAB-T | Square | AutoAttack | s/image |",
        "|---|---|---|---|---|---|---|---|---|",
        *rows,
    ])
    print(table)
    with open(a.out, "w") as f:
        f.write(table + "\n")
    with open(os.path.splitext(a.out)[0] + ".json", "w") as f:
        json.dump(record, f, indent=1)


if __name__ == "__main__":
    main()

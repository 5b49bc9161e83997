"""PyTorch eager reference for head training the reference code's way (BENCHMARKS.md):
encoder features recomputed for every batch of every epoch, then one head step.

    python3 tools/bench_torch_heads.py --task seg --samples 64 --size 224 --epochs 3 --threads 2

The encoder is the official DINOv2 ViT-S/14 restated in reference_vit.py (random weights: speed
does not depend on them), f32, eager, under no_grad; the heads are the study's: a linear probe
on CLS (batch 256), BatchNorm + 1x1 conv + bilinear upsampling + cross-entropy (batch 8), and
DINOv2's BNHead with 256 bins, SigLoss + 0.5 GradLoss (batch 8); AdamW. Inputs are random images
of the same size and count as the robust-ssl run (decoding is a small share of the time).
Prints one JSON line with the wall time.
"""
import argparse
import json
import os
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(__file__))
import reference_vit as ref  # noqa: E402
from gen_loss_fixtures import grad_loss, sig_loss  # noqa: E402


class DepthHead(nn.Module):
    def __init__(self, d, bins=256, lo=1e-3, hi=10.0):
        super().__init__()
        self.bn = nn.BatchNorm2d(2 * d)
        self.conv = nn.Conv2d(2 * d, bins, 1)
        self.register_buffer("bins", torch.linspace(lo, hi, bins).view(1, bins, 1, 1))

    def forward(self, x, size):
        logits = F.interpolate(self.conv(self.bn(x)), scale_factor=4, mode="bilinear", align_corners=False)
        p = torch.relu(logits) + 0.1
        p = p / p.sum(1, keepdim=True)
        depth = (p * self.bins).sum(1, keepdim=True)
        return F.interpolate(depth, size=size, mode="bilinear", align_corners=False)[:, 0]


def main():
    a = argparse.ArgumentParser()
    a.add_argument("--task", choices=["cls", "seg", "depth"], required=True)
    a.add_argument("--samples", type=int, required=True)
    a.add_argument("--size", type=int, default=224)
    a.add_argument("--epochs", type=int, required=True)
    a.add_argument("--threads", type=int, default=os.cpu_count())
    a = a.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    enc = ref.randomize(ref.VisionTransformer(14, 384, 12, 6, pos_grid=37), 0).eval()
    for q in enc.parameters():
        q.requires_grad_(False)
    d, s, g = 384, a.size, a.size // 14
    images = torch.rand(a.samples, 3, s, s)
    if a.task == "cls":
        head, batch = nn.Linear(d, 10), 256
        targets = torch.randint(0, 10, (a.samples,))
    elif a.task == "seg":
        head, batch = nn.Sequential(nn.BatchNorm2d(d), nn.Conv2d(d, 5, 1)), 8
        targets = torch.randint(0, 5, (a.samples, s, s))
    else:
        head, batch = DepthHead(d), 8
        targets = torch.rand(a.samples, s, s) * 9 + 0.5
    opt = torch.optim.AdamW(head.parameters(), lr=1e-3, weight_decay=1e-4)
    t0 = time.perf_counter()
    for epoch in range(a.epochs):
        order = torch.randperm(a.samples)
        for i in range(0, a.samples, batch):
            idx = order[i:i + batch]
            with torch.no_grad():
                cls, patch = enc(ref.normalize(images[idx]))
            b = len(idx)
            if a.task == "cls":
                loss = F.cross_entropy(head(cls), targets[idx])
            elif a.task == "seg":
                x = patch.transpose(1, 2).reshape(b, d, g, g)
                logits = F.interpolate(head(x), size=(s, s), mode="bilinear", align_corners=False)
                loss = F.cross_entropy(logits, targets[idx], ignore_index=255)
            else:
                x = torch.cat([patch, cls[:, None].expand(-1, g * g, -1)], 2).transpose(1, 2).reshape(b, 2 * d, g, g)
                pred, gt = head(x, (s, s)), targets[idx]
                mask = (gt > 1e-3) & (gt < 10.0)
                loss = sig_loss(pred, gt, mask) + 0.5 * grad_loss(pred, gt, mask)
            opt.zero_grad()
            loss.backward()
            opt.step()
    print(json.dumps({"task": a.task, "samples": a.samples, "epochs": a.epochs, "threads": a.threads,
                      "torch": torch.__version__, "seconds": time.perf_counter() - t0}))


if __name__ == "__main__":
    main()

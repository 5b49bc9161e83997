"""Writes a DINOv2 ViT of official size with random weights, in Meta's layout as .safetensors, for
the memory and speed benchmarks of real-size encoders (nothing here reaches a model hub):

    /work/pyenv/bin/python tools/gen_random_vit.py dinov2_vitg14 runs/bench/vitg14.safetensors
    (any python with numpy and safetensors; arch: dinov2_vit{s,b,l,g}14[_reg])

The shapes are those of Meta's released checkpoints (facebookresearch/dinov2, hubconf.py /
vision_transformer.py: patch 14, position grid 37x37 for 518 px, LayerScale, ViT-g/14 with the
fused SwiGLU FFN `mlp.w12` [2*4096, 1536] / `mlp.w3`; `_reg`: 4 register tokens). Weights are
N(0, 0.02) (LayerScale 0.1, LayerNorm weight 1, biases 0), seeded, in f32 as the hub's .pth. The
numbers mean nothing; the shapes and the cost are the real model's.
"""
import os
import sys

import numpy as np
from safetensors.numpy import save_file

ARCHS = {  # embed dim, depth, heads, FFN hidden (SwiGLU: one half of w12's output)
    "s": (384, 12, 6, 1536, False),
    "b": (768, 12, 12, 3072, False),
    "l": (1024, 24, 16, 4096, False),
    "g": (1536, 40, 24, 4096, True),
}


def main():
    arch, out = sys.argv[1], sys.argv[2]
    name = arch.removeprefix("dinov2_vit")
    regs = 4 if name.endswith("_reg") else 0
    d, depth, heads, hidden, swiglu = ARCHS[name[0]]
    assert name.startswith(name[0] + "14"), f"{arch}: expected dinov2_vit{{s,b,l,g}}14[_reg]"
    rng = np.random.default_rng(0)
    r = lambda *shape: (rng.standard_normal(shape, dtype=np.float32) * 0.02)
    t = {
        "cls_token": r(1, 1, d),
        "pos_embed": r(1, 37 * 37 + 1, d),
        "mask_token": np.zeros((1, d), np.float32),
        "patch_embed.proj.weight": r(d, 3, 14, 14),
        "patch_embed.proj.bias": np.zeros(d, np.float32),
        "norm.weight": np.ones(d, np.float32),
        "norm.bias": np.zeros(d, np.float32),
    }
    if regs:
        t["register_tokens"] = r(1, regs, d)
    for i in range(depth):
        p = f"blocks.{i}."
        t[p + "norm1.weight"], t[p + "norm1.bias"] = np.ones(d, np.float32), np.zeros(d, np.float32)
        t[p + "attn.qkv.weight"], t[p + "attn.qkv.bias"] = r(3 * d, d), np.zeros(3 * d, np.float32)
        t[p + "attn.proj.weight"], t[p + "attn.proj.bias"] = r(d, d), np.zeros(d, np.float32)
        t[p + "ls1.gamma"] = np.full(d, 0.1, np.float32)
        t[p + "norm2.weight"], t[p + "norm2.bias"] = np.ones(d, np.float32), np.zeros(d, np.float32)
        if swiglu:
            t[p + "mlp.w12.weight"], t[p + "mlp.w12.bias"] = r(2 * hidden, d), np.zeros(2 * hidden, np.float32)
            t[p + "mlp.w3.weight"], t[p + "mlp.w3.bias"] = r(d, hidden), np.zeros(d, np.float32)
        else:
            t[p + "mlp.fc1.weight"], t[p + "mlp.fc1.bias"] = r(hidden, d), np.zeros(hidden, np.float32)
            t[p + "mlp.fc2.weight"], t[p + "mlp.fc2.bias"] = r(d, hidden), np.zeros(d, np.float32)
        t[p + "ls2.gamma"] = np.full(d, 0.1, np.float32)
    os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
    save_file(t, out)
    n = sum(v.size for v in t.values())
    print(f"{out}: {arch}, {n / 1e6:.1f} M parameters, {os.path.getsize(out) / 1e9:.2f} GB")


if __name__ == "__main__":
    main()

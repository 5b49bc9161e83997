"""Packs a checkpoint's tensors small enough to travel to a GPU machine with the working tree
(the device tool carries 64 MiB in all), and unpacks them there with numpy alone:

    python3 tools/carry_weights.py pack   IN.safetensors  OUT.npz   # here
    python3 tools/carry_weights.py unpack IN.npz  OUT.safetensors   # there: f32 again

Each tensor of 4096 values or more is stored as int8 with one f32 scale per row of its last axis
(symmetric: scale = max|row| / 127); smaller ones (biases, norms) as f16. Both devices then run the
same unpacked weights, so a CPU-against-GPU parity check on them is exact in what it compares; the
weights are the original ones rounded to 8 bits, which the check's report says.
"""
import sys

import numpy as np
from safetensors.numpy import load_file, save_file


def pack(src, dst):
    out = {}
    for name, t in load_file(src).items():
        t = t.astype(np.float32)
        if t.size >= 4096:
            rows = t.reshape(-1, t.shape[-1])
            scale = np.abs(rows).max(axis=1, keepdims=True) / 127.0
            scale[scale == 0] = 1.0
            out["q8:" + name] = np.round(rows / scale).astype(np.int8).reshape(t.shape)
            out["scale:" + name] = scale.astype(np.float32)
        else:
            out["f16:" + name] = t.astype(np.float16)
    np.savez_compressed(dst, **out)


def unpack(src, dst):
    data = np.load(src)
    out = {}
    for key in data.files:
        kind, name = key.split(":", 1)
        if kind == "q8":
            q = data[key]
            out[name] = (q.reshape(-1, q.shape[-1]).astype(np.float32) * data["scale:" + name]).reshape(q.shape)
        elif kind == "f16":
            out[name] = data[key].astype(np.float32)
    save_file(out, dst)


if __name__ == "__main__":
    {"pack": pack, "unpack": unpack}[sys.argv[1]](sys.argv[2], sys.argv[3])

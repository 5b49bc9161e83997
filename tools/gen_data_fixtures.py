"""Tiny dataset files in each native format, with their decoding by the official loaders' numpy
semantics, under tests/fixtures/data/ (run by hand; outputs committed).

    python3 -m pip install numpy safetensors
    python3 tools/gen_data_fixtures.py

For every dataset and split: the native files, and `<kind>_<split>.expected.safetensors` with
`images` (f32 [N,3,H,W] in [0,1], grayscale replicated) and `labels` (i64; -1 when unlabeled).
Decoding follows the reference loaders: CIFAR binary records `label + bytes.reshape(3,32,32)`;
STL-10 `reshape(-1,3,96,96).transpose(0,3,2,1)` (column-major planes); IDX big-endian headers.
"""
import gzip
import os
import struct

import numpy as np
from safetensors.numpy import save_file

OUT = os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures", "data")
rng = np.random.default_rng(0)


def expected(name, images_nhwc_or_nchw, labels, nchw=True):
    imgs = images_nhwc_or_nchw if nchw else images_nhwc_or_nchw.transpose(0, 3, 1, 2)
    if imgs.shape[1] == 1:
        imgs = np.repeat(imgs, 3, axis=1)
    save_file({"images": np.ascontiguousarray(imgs.astype(np.float32) / 255.0),
               "labels": np.asarray(labels, dtype=np.int64)}, os.path.join(OUT, f"{name}.expected.safetensors"))


def cifar(dirname, kind, files, label_bytes, classes):
    d = os.path.join(OUT, dirname)
    os.makedirs(d, exist_ok=True)
    for split, names, per_file in files:
        imgs, labels = [], []
        for name in names:
            with open(os.path.join(d, name), "wb") as f:
                for _ in range(per_file):
                    lab = [int(rng.integers(0, 20)), int(rng.integers(0, classes))] if label_bytes == 2 else [int(rng.integers(0, classes))]
                    px = rng.integers(0, 256, 3072, dtype=np.uint8)
                    f.write(bytes(lab) + px.tobytes())
                    imgs.append(px.reshape(3, 32, 32))
                    labels.append(lab[-1])
        expected(f"{kind}_{split}", np.stack(imgs), labels)


def stl10():
    d = os.path.join(OUT, "stl10_binary")
    os.makedirs(d, exist_ok=True)
    for split, n in [("train", 2), ("test", 1), ("unlabeled", 1)]:
        raw = rng.integers(0, 256, n * 3 * 96 * 96, dtype=np.uint8)
        raw.tofile(os.path.join(d, f"{split}_X.bin"))
        images = np.reshape(raw, (-1, 3, 96, 96)).transpose(0, 3, 2, 1)  # official read_all_images
        if split == "unlabeled":
            labels = [-1] * n
        else:
            y = rng.integers(1, 11, n, dtype=np.uint8)
            y.tofile(os.path.join(d, f"{split}_y.bin"))
            labels = (y.astype(np.int64) - 1).tolist()
        expected(f"stl10_{split}", images, labels, nchw=False)


def idx(dirname, kind, gz):
    d = os.path.join(OUT, dirname)
    os.makedirs(d, exist_ok=True)
    opener = gzip.open if gz else open
    suffix = ".gz" if gz else ""
    for split, prefix, n in [("train", "train", 3), ("test", "t10k", 2)]:
        px = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        y = rng.integers(0, 10, n, dtype=np.uint8)
        with opener(os.path.join(d, f"{prefix}-images-idx3-ubyte{suffix}"), "wb") as f:
            f.write(struct.pack(">IIII", 0x0803, n, 28, 28) + px.tobytes())
        with opener(os.path.join(d, f"{prefix}-labels-idx1-ubyte{suffix}"), "wb") as f:
            f.write(struct.pack(">II", 0x0801, n) + y.tobytes())
        expected(f"{kind}_{split}", px[:, None], y.tolist())


def main():
    os.makedirs(OUT, exist_ok=True)
    cifar("cifar-10-batches-bin", "cifar10",
          [("train", [f"data_batch_{i}.bin" for i in range(1, 6)], 2), ("test", ["test_batch.bin"], 3)], 1, 10)
    cifar("cifar-100-binary", "cifar100", [("train", ["train.bin"], 4), ("test", ["test.bin"], 2)], 2, 100)
    stl10()
    idx("mnist", "mnist", gz=False)
    idx("fashion-mnist-gz", "fashion-mnist", gz=True)
    print("wrote", sorted(os.listdir(OUT)))


if __name__ == "__main__":
    main()

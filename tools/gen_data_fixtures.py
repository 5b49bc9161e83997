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
import sys
import struct

import numpy as np
from PIL import Image
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


# cityscapesScripts labels.py: (labelId, trainId) of the 19 evaluated classes; the rest -> 255.
CITYSCAPES_TRAIN_IDS = {7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11, 25: 12,
                        26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18}


def smooth_image(h, w):
    """A photo-like image (smooth gradients + noise), so JPEG round trips stay close."""
    y, x = np.mgrid[0:h, 0:w]
    base = np.stack([x * 255 / w, y * 255 / h, (x + y) * 127 / (h + w)], axis=-1)
    return np.clip(base + rng.normal(0, 8, (h, w, 3)), 0, 255).astype(np.uint8)


def seg_expected(name, images, labels):
    """Per-sample tensors: image_i (f32 [3,H,W], as PIL decodes the stored file), labels_i (i64)."""
    out = {}
    for i, (img_path, lab) in enumerate(zip(images, labels)):
        arr = np.asarray(Image.open(img_path).convert("RGB"), dtype=np.float32) / 255.0
        out[f"image_{i}"] = np.ascontiguousarray(arr.transpose(2, 0, 1))
        out[f"labels_{i}"] = np.ascontiguousarray(lab.astype(np.int64))
    save_file(out, os.path.join(OUT, f"{name}.expected.safetensors"))


def voc():
    root = os.path.join(OUT, "VOCdevkit", "VOC2012")
    for sub in ["JPEGImages", "SegmentationClass", "ImageSets/Segmentation"]:
        os.makedirs(os.path.join(root, sub), exist_ok=True)
    palette = []
    for i in range(256):  # the VOC colour map
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        palette += [r, g, b]
    ids = {"train": ["2007_000032", "2007_000039"], "val": ["2007_000033"]}
    for split, names in ids.items():
        with open(os.path.join(root, "ImageSets/Segmentation", f"{split}.txt"), "w") as f:
            f.write("\n".join(names) + "\n")
        imgs, labs = [], []
        for k, name in enumerate(names):
            h, w = 20 + 4 * k, 28
            Image.fromarray(smooth_image(h, w)).save(os.path.join(root, "JPEGImages", f"{name}.jpg"), quality=95)
            lab = rng.integers(0, 21, (h, w)).astype(np.uint8)
            lab[0, :] = 255  # object border
            png = Image.fromarray(lab, mode="P")
            png.putpalette(palette)
            path = os.path.join(root, "SegmentationClass", f"{name}.png")
            png.save(path)
            imgs.append(os.path.join(root, "JPEGImages", f"{name}.jpg"))
            labs.append(np.asarray(Image.open(path)))  # palette indices, as stored
        seg_expected(f"voc2012_{split}", imgs, labs)


def ade20k():
    root = os.path.join(OUT, "ADEChallengeData2016")
    for split, d, n in [("train", "training", 2), ("val", "validation", 1)]:
        os.makedirs(os.path.join(root, "images", d), exist_ok=True)
        os.makedirs(os.path.join(root, "annotations", d), exist_ok=True)
        imgs, labs = [], []
        for k in range(n):
            stem = f"ADE_{d[:5] if d == 'training' else 'val'}_{k + 1:08d}"
            img = os.path.join(root, "images", d, f"{stem}.jpg")
            Image.fromarray(smooth_image(24, 16 + 8 * k)).save(img, quality=95)
            raw = rng.integers(0, 151, (24, 16 + 8 * k)).astype(np.uint8)
            Image.fromarray(raw, mode="L").save(os.path.join(root, "annotations", d, f"{stem}.png"))
            labs.append(np.where(raw == 0, 255, raw.astype(np.int64) - 1))
            imgs.append(img)
        seg_expected(f"ade20k_{split}", imgs, labs)


def cityscapes():
    root = os.path.join(OUT, "cityscapes")
    for split, cities in [("train", ["aachen", "bochum"]), ("val", ["frankfurt"])]:
        imgs, labs = [], []
        for city in cities:
            os.makedirs(os.path.join(root, "leftImg8bit", split, city), exist_ok=True)
            os.makedirs(os.path.join(root, "gtFine", split, city), exist_ok=True)
            name = f"{city}_000000_000019"
            img = os.path.join(root, "leftImg8bit", split, city, f"{name}_leftImg8bit.png")
            Image.fromarray(smooth_image(16, 32)).save(img)
            ids = rng.integers(0, 34, (16, 32)).astype(np.uint8)
            Image.fromarray(ids, mode="L").save(os.path.join(root, "gtFine", split, city, f"{name}_gtFine_labelIds.png"))
            labs.append(np.vectorize(lambda v: CITYSCAPES_TRAIN_IDS.get(int(v), 255))(ids))
            imgs.append(img)
        seg_expected(f"cityscapes_{split}", imgs, labs)


def image_folder():
    root = os.path.join(OUT, "imagefolder")
    for split, per_class in [("train", 2), ("val", 1)]:
        imgs, labels = [], []
        for c, cls in enumerate(["cat", "dog"]):  # torchvision: sorted folder names
            os.makedirs(os.path.join(root, split, cls), exist_ok=True)
            for k in range(per_class):
                arr = smooth_image(12, 10)
                Image.fromarray(arr).save(os.path.join(root, split, cls, f"{k}.png"))
                imgs.append(arr.transpose(2, 0, 1))
                labels.append(c)
        expected(f"imagefolder_{split}", np.stack(imgs), labels)


def nyu():
    root = os.path.join(OUT, "nyu")
    for split, scenes in [("train", ["kitchen_0028a", "bedroom_0004"]), ("test", ["office_0003"])]:
        imgs, depths, lines = [], [], []
        for k, scene in enumerate(scenes):
            os.makedirs(os.path.join(root, split, scene), exist_ok=True)
            rgb = f"{split}/{scene}/rgb_{k:05d}.jpg"
            dep = f"{split}/{scene}/sync_depth_{k:05d}.png"
            Image.fromarray(smooth_image(12, 16)).save(os.path.join(root, rgb), quality=95)
            mm = rng.integers(0, 10000, (12, 16)).astype(np.uint16)
            mm[0, 0] = 0  # no measurement
            Image.fromarray(mm).save(os.path.join(root, dep))  # 16-bit grayscale PNG
            lines.append(f"/{rgb} /{dep} 518.8579")
            imgs.append(os.path.join(root, rgb))
            depths.append(np.asarray(Image.open(os.path.join(root, dep))).astype(np.float32) / 1000.0)
        with open(os.path.join(root, f"{split}.txt"), "w") as f:
            f.write("\n".join(lines) + "\n")
        out = {}
        for i, (img, d) in enumerate(zip(imgs, depths)):
            out[f"image_{i}"] = np.ascontiguousarray(np.asarray(Image.open(img).convert("RGB"), np.float32).transpose(2, 0, 1) / 255.0)
            out[f"depth_{i}"] = np.ascontiguousarray(d)
        save_file(out, os.path.join(OUT, f"nyu_{split}.expected.safetensors"))


def nyu_mat():
    """The official labeled file (MATLAB v7.3 = HDF5 after a 512-byte user block, arrays stored
    with their dimensions reversed: images (N, 3, W, H) u8, depths (N, W, H) f32 metres, chunked and
    deflated as MATLAB writes them) and splits.mat (MATLAB v5, 1-based trainNdxs/testNdxs columns).
    Expected decoding as the usual loaders do: images[i].transpose(2, 1, 0), depths[i].T."""
    import h5py
    import scipy.io
    r = np.random.default_rng(7)
    root = os.path.join(OUT, "nyu_mat")
    os.makedirs(root, exist_ok=True)
    n, h, w = 5, 12, 16
    images = r.integers(0, 256, (n, 3, w, h), dtype=np.uint8)
    depths = r.uniform(0.5, 9.5, (n, w, h)).astype(np.float32)
    depths[1, 0, 0] = 0.0  # no measurement
    path = os.path.join(root, "nyu_depth_v2_labeled.mat")
    with h5py.File(path, "w", userblock_size=512) as f:
        f.create_dataset("images", data=images, chunks=(1, 3, w, h), compression="gzip")
        f.create_dataset("depths", data=depths, chunks=(1, w, h), compression="gzip")
        f.create_dataset("labels", data=r.integers(0, 895, (n, w, h), dtype=np.uint16))
    with open(path, "r+b") as f:
        f.write(b"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: Mon Jan  1 00:00:00 2024 HDF5 schema 1.00 .".ljust(116))
    train, test = [1, 3, 4], [2, 5]  # 1-based, as the official splits
    scipy.io.savemat(os.path.join(root, "splits.mat"), {"trainNdxs": np.array(train, float)[:, None], "testNdxs": np.array(test, float)[:, None]})
    with h5py.File(path, "r") as f:
        for split, idx in [("train", train), ("test", test)]:
            out = {}
            for k, i in enumerate(idx):
                out[f"image_{k}"] = np.ascontiguousarray(f["images"][i - 1].transpose(2, 1, 0).transpose(2, 0, 1).astype(np.float32) / 255.0)
                out[f"depth_{k}"] = np.ascontiguousarray(f["depths"][i - 1].T)
            save_file(out, os.path.join(OUT, f"nyu_mat_{split}.expected.safetensors"))


def nyu_mat_contiguous():
    """The labeled file's other storage: contiguous (unchunked, uncompressed) arrays and float64
    depths, as MATLAB writes an array it does not compress; no user-block text. Same expected
    decoding as nyu_mat()."""
    import h5py
    import scipy.io
    r = np.random.default_rng(11)
    root = os.path.join(OUT, "nyu_mat_contiguous")
    os.makedirs(root, exist_ok=True)
    n, h, w = 3, 14, 10
    images = r.integers(0, 256, (n, 3, w, h), dtype=np.uint8)
    depths = r.uniform(0.5, 9.5, (n, w, h)).astype(np.float64)
    path = os.path.join(root, "nyu_depth_v2_labeled.mat")
    with h5py.File(path, "w", userblock_size=512) as f:
        f.create_dataset("images", data=images)
        f.create_dataset("depths", data=depths)
    scipy.io.savemat(os.path.join(root, "splits.mat"), {"trainNdxs": np.array([3, 1], float)[:, None], "testNdxs": np.array([2], float)[:, None]})
    with h5py.File(path, "r") as f:
        for split, idx in [("train", [3, 1]), ("test", [2])]:
            out = {}
            for k, i in enumerate(idx):
                out[f"image_{k}"] = np.ascontiguousarray(f["images"][i - 1].transpose(2, 1, 0).transpose(2, 0, 1).astype(np.float32) / 255.0)
                out[f"depth_{k}"] = np.ascontiguousarray(f["depths"][i - 1].T.astype(np.float32))
            save_file(out, os.path.join(OUT, f"nyu_mat_contiguous_{split}.expected.safetensors"))


def main():
    os.makedirs(OUT, exist_ok=True)
    # `gen_data_fixtures.py NAME...` writes only those parts (each is seeded on its own).
    if len(sys.argv) > 1:
        for name in sys.argv[1:]:
            globals()[name]()
        return
    cifar("cifar-10-batches-bin", "cifar10",
          [("train", [f"data_batch_{i}.bin" for i in range(1, 6)], 2), ("test", ["test_batch.bin"], 3)], 1, 10)
    cifar("cifar-100-binary", "cifar100", [("train", ["train.bin"], 4), ("test", ["test.bin"], 2)], 2, 100)
    stl10()
    idx("mnist", "mnist", gz=False)
    idx("fashion-mnist-gz", "fashion-mnist", gz=True)
    voc()
    ade20k()
    cityscapes()
    image_folder()
    nyu()
    nyu_mat()
    nyu_mat_contiguous()
    print("wrote", sorted(os.listdir(OUT)))


if __name__ == "__main__":
    main()

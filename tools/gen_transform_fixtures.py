"""Reference resizes by torch's F.interpolate (align_corners=False) for tests/transforms.rs.

    python3 -m pip install torch safetensors
    python3 tools/gen_transform_fixtures.py

Writes tests/fixtures/transform/resize.expected.safetensors: `image` (f32 [3,37,53]), `labels`
(f32 [1,37,53] holding integers) and, per case NAME = <mode>_<aa|plain>_<H>x<W>, the resized image;
`nearest_<H>x<W>` the labels resized with mode='nearest'.
"""
import os

import torch
import torch.nn.functional as F
from safetensors.torch import save_file

OUT = os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures", "transform")


def main():
    os.makedirs(OUT, exist_ok=True)
    g = torch.Generator().manual_seed(0)
    image = torch.rand(3, 37, 53, generator=g)
    labels = torch.randint(0, 21, (1, 37, 53), generator=g).float()
    out = {"image": image, "labels": labels}
    for size in [(24, 30), (50, 70), (37, 20)]:
        for mode in ["bilinear", "bicubic"]:
            for aa in [False, True]:
                name = f"{mode}_{'aa' if aa else 'plain'}_{size[0]}x{size[1]}"
                out[name] = F.interpolate(image[None], size=size, mode=mode, align_corners=False, antialias=aa)[0]
        out[f"nearest_{size[0]}x{size[1]}"] = F.interpolate(labels[None], size=size, mode="nearest")[0]
    save_file({k: v.contiguous() for k, v in out.items()}, os.path.join(OUT, "resize.expected.safetensors"))
    print("wrote", len(out), "tensors")


if __name__ == "__main__":
    main()

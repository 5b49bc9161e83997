"""Sliding-window inference and an attack's gradient through it, in f64, on the tiny DINOv2 of
tests/fixtures/encoder/dinov2_official.pth and a linear segmentation head (tests/attacks.rs).

    python3 -m pip install torch safetensors
    python3 tools/gen_window_fixtures.py

The windows are mmseg's `EncoderDecoder.slide_inference`
(mmseg/models/segmentors/encoder_decoder.py), restated: h_grids = max(H - crop + stride - 1, 0)
// stride + 1 (and the same for the width); window (h, w) spans y1 = h * stride, y2 = min(y1 +
crop, H), y1 = max(y2 - crop, 0) (and x alike); each window's logits (encode_decode: backbone,
then the head's logits resized bilinearly to the window, align_corners=False) are added into the
whole image with F.pad, a count matrix counts the windows over each pixel, and the logits are
the sum divided by the count. The head is DINOv2's linear segmentation head (BatchNorm in eval
mode, then a 1x1 conv on the patch map). Two images of uneven sizes, each on its own (mmseg's
batch of one); 56-px windows (the checkpoint's own 4x4 position grid: no resize of the position
embedding) with stride 28. The loss is SegPGD's (the SegPGD paper's form: torch's per-pixel
cross-entropy with ignore index 255 on the stitched logits, weighted 1 - lambda on correctly and
lambda on wrongly classified pixels, lambda = t / 2T, over the labelled pixels); its gradient
with respect to the whole image's pixels by autograd through the windows.

The whole frame, centre-padded (the study's depth, which restates DINOv2's depther): the hub's
`CenterPadding(patch)` (dinov2/hub/utils.py), registered as a forward pre-hook of the backbone
(dinov2/hub/depthers.py), pads the *normalised* image with zeros, ceil(size / patch) * patch on
each axis, pad // 2 before and the rest after (the study's encoder_decoder.py `add_pad` /
`_get_pad` are the same lines); the head is DINOv2's linear depth head (last block's CLS and patch
tokens without the final norm, patch channels then CLS, no BatchNorm, bilinear x4, 1x1 conv to
bins, ReLU + 0.1, normalised, sum of p * bin), `encode_decode` clamps to [min, max] and resizes
bilinearly to the image size *before* the padding (`img.shape[2:]`: the padded border is squeezed
in, not cropped). The loss is DepthPGD's (SigLoss + 0.5 GradLoss as DINOv2 defines them,
gen_loss_fixtures.py) on the valid pixels; its gradient by autograd through the padding.
"""
import os
import sys

import torch
import torch.nn.functional as F
from safetensors.torch import save_file

sys.path.insert(0, os.path.dirname(__file__))
import reference_vit as ref  # noqa: E402
from gen_loss_fixtures import grad_loss, sig_loss  # noqa: E402

HERE = os.path.dirname(__file__)
OUT = os.path.join(HERE, "..", "tests", "fixtures", "attacks", "windows.safetensors")
CROP, STRIDE, PATCH, K = 56, 28, 14, 5
SIZES = [(70, 84), (84, 63)]
T_STEP, T_TOTAL = 1, 4
WHOLE_SIZES = [(45, 62), (42, 56)]  # padded to 56 x 70 (offsets 5 and 4), and already a multiple
BINS, MIN, MAX = 16, 1e-3, 10.0


def center_padding(x, multiple=PATCH):
    """dinov2/hub/utils.py CenterPadding.forward, restated."""
    pads = []
    for size in x.shape[:1:-1]:
        new_size = -(-size // multiple) * multiple
        pad_size = new_size - size
        pads += [pad_size // 2, pad_size - pad_size // 2]
    return F.pad(x, pads)


def slide_inference(m, head, x):
    """mmseg's slide_inference over `x` [1, 3, H, W] (pixels in [0, 1]; the backbone normalizes)."""
    _, _, h_img, w_img = x.shape
    h_grids = max(h_img - CROP + STRIDE - 1, 0) // STRIDE + 1
    w_grids = max(w_img - CROP + STRIDE - 1, 0) // STRIDE + 1
    preds = x.new_zeros((1, K, h_img, w_img))
    count_mat = x.new_zeros((1, 1, h_img, w_img))
    for h_idx in range(h_grids):
        for w_idx in range(w_grids):
            y1 = h_idx * STRIDE
            x1 = w_idx * STRIDE
            y2 = min(y1 + CROP, h_img)
            x2 = min(x1 + CROP, w_img)
            y1 = max(y2 - CROP, 0)
            x1 = max(x2 - CROP, 0)
            crop_img = x[:, :, y1:y2, x1:x2]
            crop_seg_logit = head(m, crop_img)
            preds = preds + F.pad(crop_seg_logit, (int(x1), int(preds.shape[3] - x2), int(y1), int(preds.shape[2] - y2)))
            count_mat[:, :, y1:y2, x1:x2] += 1
    assert (count_mat == 0).sum() == 0
    return preds / count_mat


def main():
    g = torch.Generator().manual_seed(0)
    m = ref.VisionTransformer(PATCH, 64, 2, 4, pos_grid=4)
    m.load_state_dict(torch.load(os.path.join(HERE, "..", "tests", "fixtures", "encoder", "dinov2_official.pth")))
    m = m.double().eval()
    for p in m.parameters():
        p.requires_grad_(False)
    d = 64
    bn = dict(w=1 + 0.1 * torch.randn(d, generator=g, dtype=torch.float64),
              b=0.1 * torch.randn(d, generator=g, dtype=torch.float64),
              rm=0.1 * torch.randn(d, generator=g, dtype=torch.float64),
              rv=0.5 + 0.1 * torch.rand(d, generator=g, dtype=torch.float64))
    seg_w = torch.randn(K, d, generator=g, dtype=torch.float64) * 0.5
    seg_b = torch.randn(K, generator=g, dtype=torch.float64) * 0.1
    out = {f"seg_bn_{k}": v for k, v in bn.items()}
    out.update(seg_w=seg_w, seg_b=seg_b)

    def head(m, crop):
        # DINOv2's linear head: BatchNorm (eval) and a 1x1 conv over the patch map, then the
        # logits resized to the window (mmseg's resize, bilinear, align_corners=False).
        _, patch = m(ref.normalize(crop))
        gh, gw = crop.shape[2] // PATCH, crop.shape[3] // PATCH
        feats = (patch - bn["rm"]) / torch.sqrt(bn["rv"] + 1e-5) * bn["w"] + bn["b"]
        logits = (feats @ seg_w.T + seg_b).reshape(1, gh, gw, K).permute(0, 3, 1, 2)
        return F.interpolate(logits, size=crop.shape[2:], mode="bilinear", align_corners=False)

    lam = T_STEP / (2 * T_TOTAL)
    for i, (h, w) in enumerate(SIZES):
        x = (0.1 + 0.8 * torch.rand(1, 3, h, w, generator=g, dtype=torch.float64)).requires_grad_(True)
        labels = torch.randint(0, K, (1, h, w), generator=g)
        labels[0, :3, :] = 255
        logits = slide_inference(m, head, x)
        ce = F.cross_entropy(logits, labels, ignore_index=255, reduction="none")
        valid = labels != 255
        right = (logits.argmax(1) == labels) & valid
        weight = torch.where(right, 1 - lam, lam) * valid
        loss = (ce * weight).sum() / valid.sum()
        (grad,) = torch.autograd.grad(loss, x)
        out.update({f"x{i}": x.detach(), f"labels{i}": labels.double(), f"logits{i}": logits.detach(),
                    f"segpgd_loss{i}": loss.detach().reshape(1), f"segpgd_grad{i}": grad})
    depth_w = torch.randn(BINS, 2 * d, generator=g, dtype=torch.float64) * 0.5
    depth_b = torch.randn(BINS, generator=g, dtype=torch.float64) * 0.1
    bins = torch.linspace(MIN, MAX, BINS, dtype=torch.float64)
    out.update(depth_w=depth_w, depth_b=depth_b)
    for i, (h, w) in enumerate(WHOLE_SIZES):
        x = (0.1 + 0.8 * torch.rand(1, 3, h, w, generator=g, dtype=torch.float64)).requires_grad_(True)
        metres = 0.5 + 8.5 * torch.rand(1, h, w, generator=g, dtype=torch.float64)
        metres[0, :2, :] = 0.0  # invalid
        padded = center_padding(ref.normalize(x))
        cls, patch = m.forward_prenorm(padded)
        gh, gw = padded.shape[2] // PATCH, padded.shape[3] // PATCH
        feats = torch.cat([patch.reshape(1, gh, gw, d).permute(0, 3, 1, 2), cls[:, :, None, None].expand(-1, -1, gh, gw)], 1)
        feats = F.interpolate(feats, size=(4 * gh, 4 * gw), mode="bilinear", align_corners=False)
        prob = torch.relu(F.conv2d(feats, depth_w[:, :, None, None], depth_b)) + 0.1
        prob = prob / prob.sum(1, keepdim=True)
        depth = torch.einsum("ikmn,k->imn", prob, bins).unsqueeze(1).clamp(MIN, MAX)
        pred = F.interpolate(depth, size=(h, w), mode="bilinear", align_corners=False)[:, 0]
        mask = (metres > MIN) & (metres < MAX)
        loss = sig_loss(pred, metres, mask) + 0.5 * grad_loss(pred, metres, mask)
        (grad,) = torch.autograd.grad(loss, x)
        out.update({f"whole_x{i}": x.detach(), f"whole_metres{i}": metres, f"whole_depth{i}": pred.detach(),
                    f"depthpgd_loss{i}": loss.detach().reshape(1), f"depthpgd_grad{i}": grad})
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    save_file({k: v.contiguous() for k, v in out.items()}, OUT)
    print("wrote", OUT)


if __name__ == "__main__":
    main()

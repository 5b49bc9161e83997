"""Reference forward passes and gradients of the three heads (tests/heads.rs).

    python3 -m pip install torch safetensors
    python3 tools/gen_head_fixtures.py

A PyTorch restatement, f64: BatchNorm through torch's F.batch_norm (training: batch statistics,
evaluation: running ones), the 1x1 convolution as a linear map, F.interpolate (bilinear,
align_corners=False), F.cross_entropy(ignore_index=255), and the depth head as DINOv2's BNHead
(patch ⊕ CLS, uniform bins, ReLU + 0.1, normalised, ×4 upsampling). Losses: cross-entropy for the
probe and segmentation, SigLoss + 0.5·GradLoss for depth (from gen_loss_fixtures.py).
"""
import os
import sys

import torch
import torch.nn.functional as F
from safetensors.torch import save_file

sys.path.insert(0, os.path.dirname(__file__))
from gen_loss_fixtures import grad_loss, sig_loss  # noqa: E402

OUT = os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures", "heads")
B, H, W, D, K, BINS = 2, 3, 4, 16, 5, 8


def main():
    os.makedirs(OUT, exist_ok=True)
    g = torch.Generator().manual_seed(0)
    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)  # noqa: E731
    cls, patch = r(B, D).requires_grad_(True), r(B, H * W, D).requires_grad_(True)
    out = {"cls": cls.detach(), "patch": patch.detach()}

    # Linear probe on CLS ⊕ mean patch.
    pw, pb = r(K, 2 * D).requires_grad_(True), r(K).requires_grad_(True)
    labels = torch.tensor([3, 1])
    logits = torch.cat([cls, patch.mean(1)], 1) @ pw.T + pb
    loss = F.cross_entropy(logits, labels)
    grads = torch.autograd.grad(loss, [pw, pb, cls, patch])
    out.update(probe_w=pw.detach(), probe_b=pb.detach(), probe_labels=labels, probe_logits=logits.detach(),
               probe_loss=loss.detach(), **{f"probe_d{n}": t for n, t in zip(["w", "b", "cls", "patch"], grads)})

    # Segmentation head, both BatchNorm modes; labels at 7x9 with ignored pixels.
    bn_w, bn_b, rm, rv = r(D).requires_grad_(True), r(D).requires_grad_(True), r(D), r(D).abs() + 0.5
    sw, sb = r(K, D).requires_grad_(True), r(K).requires_grad_(True)
    seg_labels = torch.randint(0, K, (B, 7, 9), generator=g)
    seg_labels[0, 0] = 255
    out.update(seg_bn_w=bn_w.detach(), seg_bn_b=bn_b.detach(), seg_rm=rm, seg_rv=rv, seg_w=sw.detach(), seg_b=sb.detach(),
               seg_labels=seg_labels)
    for mode, training in [("train", True), ("eval", False)]:
        x = F.batch_norm(patch.reshape(-1, D), rm.clone(), rv.clone(), bn_w, bn_b, training=training, eps=1e-5)
        lg = (x @ sw.T + sb).reshape(B, H, W, K).permute(0, 3, 1, 2)
        up = F.interpolate(lg, size=(7, 9), mode="bilinear", align_corners=False)
        loss = F.cross_entropy(up, seg_labels, ignore_index=255)
        grads = torch.autograd.grad(loss, [sw, bn_w, patch])
        out.update({f"seg_{mode}_logits": lg.detach(), f"seg_{mode}_loss": loss.detach(),
                    f"seg_{mode}_dw": grads[0], f"seg_{mode}_dbn_w": grads[1], f"seg_{mode}_dpatch": grads[2]})

    # Depth head (DINOv2 BNHead), ground truth 11x13 with invalid pixels.
    dbn_w, dbn_b, drm, drv = r(2 * D).requires_grad_(True), r(2 * D).requires_grad_(True), r(2 * D), r(2 * D).abs() + 0.5
    dw, db = (r(BINS, 2 * D) * 0.3).requires_grad_(True), r(BINS).requires_grad_(True)
    gt = torch.exp(r(B, 11, 13) * 0.4) * 3.0
    gt[1, :2] = 0.0
    mask = (gt > 1e-3) & (gt < 10.0)
    bins = torch.linspace(1e-3, 10.0, BINS, dtype=torch.float64)
    out.update(depth_bn_w=dbn_w.detach(), depth_bn_b=dbn_b.detach(), depth_rm=drm, depth_rv=drv, depth_w=dw.detach(),
               depth_b=db.detach(), depth_gt=gt)
    for mode, training in [("train", True), ("eval", False)]:
        feat = torch.cat([patch, cls[:, None].expand(B, H * W, D)], 2).reshape(-1, 2 * D)
        x = F.batch_norm(feat, drm.clone(), drv.clone(), dbn_w, dbn_b, training=training, eps=1e-5)
        lg = (x @ dw.T + db).reshape(B, H, W, BINS).permute(0, 3, 1, 2)
        lg = F.interpolate(lg, size=(4 * H, 4 * W), mode="bilinear", align_corners=False)
        p = torch.relu(lg) + 0.1
        p = p / p.sum(1, keepdim=True)
        depth = torch.einsum("ikmn,k->imn", p, bins).unsqueeze(1)
        pred = F.interpolate(depth, size=(11, 13), mode="bilinear", align_corners=False)[:, 0]
        loss = sig_loss(pred, gt, mask) + 0.5 * grad_loss(pred, gt, mask)
        grads = torch.autograd.grad(loss, [dw, dbn_w, cls, patch])
        out.update({f"depth_{mode}_depth": depth.detach(), f"depth_{mode}_loss": loss.detach(),
                    f"depth_{mode}_dw": grads[0], f"depth_{mode}_dbn_w": grads[1], f"depth_{mode}_dcls": grads[2],
                    f"depth_{mode}_dpatch": grads[3]})
    save_file({k: v.contiguous() for k, v in out.items()}, os.path.join(OUT, "heads.expected.safetensors"))
    print(len(out), "tensors")


if __name__ == "__main__":
    main()

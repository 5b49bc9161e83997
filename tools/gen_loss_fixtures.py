"""Reference values and gradients of the task losses and head upsampling (tests/losses.rs).

    python3 -m pip install torch safetensors
    python3 tools/gen_loss_fixtures.py

Cross-entropy is torch's own `F.cross_entropy(ignore_index=255)`; bilinear upsampling is
`F.interpolate(align_corners=False)`. SigLoss and GradLoss restate DINOv2's own
(dinov2/eval/depth/models/losses/{sigloss,gradientloss}.py, eps 0.001 in the logs, torch.var
unbiased; GradLoss on each image's own map, pixels two apart, strides 1, 2, 4, 6), on valid pixels
only, with the same mask for both (ours: min < gt < max).
"""
import os

import torch
import torch.nn.functional as F
from safetensors.torch import save_file

OUT = os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures", "losses")
MIN, MAX = 1e-3, 10.0


EPS = 0.001  # DINOv2's losses: "avoid grad explode"


def sig_loss(pred, gt, mask):
    """DINOv2's SigLoss (dinov2/eval/depth/models/losses/sigloss.py, `sigloss`, warm-up off), on
    the valid pixels of the whole batch (our mask min < gt < max in place of its gt > 0)."""
    g = torch.log(pred[mask] + EPS) - torch.log(gt[mask] + EPS)
    Dg = torch.var(g) + 0.15 * torch.pow(torch.mean(g), 2)
    return torch.sqrt(Dg)


def gradientloss(input, target, mask, scales=4):
    """DINOv2's GradientLoss.gradientloss (dinov2/eval/depth/models/losses/gradientloss.py) on one
    image's [H, W] map, restated line by line: the map and its [::2i, ::2i] subsamplings for
    i = 1..3, log differences masked, |d - d shifted by two| on each axis over pairs both valid,
    divided by the valid pixels N at that scale. Our mask replaces `target > 0`; a scale with
    N = 0 is skipped (the source would divide by zero); `scales` keeps the first ones."""
    input_downscaled = [input] + [input[:: 2 * i, :: 2 * i] for i in range(1, 4)]
    target_downscaled = [target] + [target[:: 2 * i, :: 2 * i] for i in range(1, 4)]
    mask_downscaled = [mask] + [mask[:: 2 * i, :: 2 * i] for i in range(1, 4)]
    gradient_loss = 0
    for input, target, mask in list(zip(input_downscaled, target_downscaled, mask_downscaled))[:scales]:
        N = torch.sum(mask)
        if N == 0:
            continue
        # torch.where, not mul: the fixture's invalid pixels may be 0 (log(0 + EPS) is finite
        # there, but a NaN would not be masked by a product).
        log_d_diff = torch.where(mask, torch.log(input + EPS) - torch.log(target + EPS), 0.0)
        mask = mask.to(input.dtype)
        v_gradient = torch.abs(log_d_diff[0:-2, :] - log_d_diff[2:, :])
        v_mask = torch.mul(mask[0:-2, :], mask[2:, :])
        v_gradient = torch.mul(v_gradient, v_mask)
        h_gradient = torch.abs(log_d_diff[:, 0:-2] - log_d_diff[:, 2:])
        h_mask = torch.mul(mask[:, 0:-2], mask[:, 2:])
        h_gradient = torch.mul(h_gradient, h_mask)
        gradient_loss = gradient_loss + (torch.sum(h_gradient) + torch.sum(v_gradient)) / N
    return gradient_loss


def grad_loss(pred, gt, mask, scales=4):
    """GradLoss of a batch of [B, H, W] maps: each image's own map, averaged over the images."""
    per = [pred.new_zeros(()) + gradientloss(pred[b], gt[b], mask[b], scales) for b in range(pred.shape[0])]
    return torch.stack(per).mean()


def main():
    os.makedirs(OUT, exist_ok=True)
    g = torch.Generator().manual_seed(0)
    out = {}
    # Cross-entropy with ignored pixels.
    logits = torch.randn(2, 5, 4, 6, generator=g, dtype=torch.float64, requires_grad=True)
    labels = torch.randint(0, 5, (2, 4, 6), generator=g)
    labels[0, 0, :3] = 255
    labels[1, 2, 4] = 255
    ce = F.cross_entropy(logits, labels, ignore_index=255)
    (g_logits,) = torch.autograd.grad(ce, logits)
    out.update(logits=logits.detach(), labels=labels.to(torch.int64), ce=ce.detach(), ce_grad=g_logits)
    # Depth losses with invalid pixels (0 and beyond MAX) and a prediction that is bad there.
    pred = torch.exp(torch.randn(2, 19, 23, generator=g, dtype=torch.float64) * 0.5).requires_grad_(True)
    gt = torch.exp(torch.randn(2, 19, 23, generator=g, dtype=torch.float64) * 0.5)
    gt[0, :3, :] = 0.0
    gt[1, 5, 7] = 12.0
    mask = (gt > MIN) & (gt < MAX)
    with torch.no_grad():
        pred[~mask] = 0.0  # a log there would be -inf: must not leak into the loss
    for name, fn in [("sig", sig_loss), ("grad", lambda p, t, m: grad_loss(p, t, m)),
                     ("depth", lambda p, t, m: sig_loss(p, t, m) + 0.5 * grad_loss(p, t, m))]:
        value = fn(pred, gt, mask)
        (gp,) = torch.autograd.grad(value, pred)
        out[f"{name}_loss"], out[f"{name}_grad"] = value.detach(), gp
    out.update(pred=pred.detach(), gt=gt)
    # Bilinear upsampling of head outputs and its gradient.
    # float32, as head outputs are: torch then computes source coordinates in float32 too.
    x = torch.randn(2, 3, 4, 5, generator=g, dtype=torch.float32, requires_grad=True)
    up = F.interpolate(x, size=(9, 13), mode="bilinear", align_corners=False)
    proj = torch.randn(up.shape, generator=g, dtype=torch.float32)
    (gx,) = torch.autograd.grad((up * proj).sum(), x)
    out.update(up_in=x.detach(), up_out=up.detach(), up_proj=proj, up_grad=gx)
    save_file({k: v.contiguous() for k, v in out.items()}, os.path.join(OUT, "losses.expected.safetensors"))
    print({k: tuple(v.shape) for k, v in out.items()})


if __name__ == "__main__":
    main()

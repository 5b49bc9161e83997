"""Reference values and gradients of the task losses and head upsampling (tests/losses.rs).

    python3 -m pip install torch safetensors
    python3 tools/gen_loss_fixtures.py

Cross-entropy is torch's own `F.cross_entropy(ignore_index=255)`; bilinear upsampling is
`F.interpolate(align_corners=False)`. SigLoss and GradLoss are restated here from their
definition (SigLoss as the reference code, with torch.var unbiased; GradLoss as specified — the
reference code's version is always 0): on valid pixels only, with the same mask for both.
"""
import os

import torch
import torch.nn.functional as F
from safetensors.torch import save_file

OUT = os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures", "losses")
MIN, MAX = 1e-3, 10.0


def sig_loss(pred, gt, mask):
    g = torch.log(pred[mask]) - torch.log(gt[mask])
    return torch.sqrt(torch.var(g) + 0.15 * torch.mean(g) ** 2)


def grad_loss(pred, gt, mask, scales=4):
    d = torch.zeros_like(pred)
    d[mask] = torch.log(pred[mask]) - torch.log(gt[mask])
    m = mask.to(pred.dtype)
    total = pred.new_zeros(())
    for s in range(scales):
        if s > 0:
            d, m = d[:, ::2, ::2], m[:, ::2, ::2]
        n = m.sum()
        if n == 0 or d.shape[1] < 2 or d.shape[2] < 2:
            continue
        dx = (d[:, :, 1:] - d[:, :, :-1]).abs() * m[:, :, 1:] * m[:, :, :-1]
        dy = (d[:, 1:, :] - d[:, :-1, :]).abs() * m[:, 1:, :] * m[:, :-1, :]
        total = total + (dx.sum() + dy.sum()) / n
    return total


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

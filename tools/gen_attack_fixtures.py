"""Reference values and pixel gradients of every attack objective on the tiny DINOv2 of
tests/fixtures/encoder/dinov2_official.pth, in f64 (tests/attacks.rs).

    python3 -m pip install torch safetensors
    python3 tools/gen_attack_fixtures.py

The encoder is the official code restated in reference_vit.py; the objectives are written out here
from their definitions: EmbedAttack (mean squared difference, or 1 - cosine averaged over tokens,
to the clean tokens of another image), per-sample cross-entropy of a linear probe on CLS + mean
patch, SegPGD in both forms (the paper's: torch's per-pixel cross-entropy with ignore index 255, weighted 1 - lambda on
correctly and lambda on wrongly classified pixels, lambda = t / 2T, over the labelled pixels of
each image; the study's: the study code's means over correct and over wrong pixels) and DepthPGD (DINOv2's BNHead readout, SigLoss + 0.5 GradLoss per image on valid
pixels), and AutoAttack's DLR losses (untargeted, and targeted at the second most likely class:
APGD-T's first target) copied from its autopgd_base.py. Gradients with respect to the pixels by
autograd.
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
OUT = os.path.join(HERE, "..", "tests", "fixtures", "attacks", "objectives.safetensors")
MIN, MAX = 1e-3, 10.0


def bn_eval(x, w, b, rm, rv):
    return (x - rm) / torch.sqrt(rv + 1e-5) * w + b


def main():
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    m = ref.VisionTransformer(14, 64, 2, 4, pos_grid=4)
    m.load_state_dict(torch.load(os.path.join(HERE, "..", "tests", "fixtures", "encoder", "dinov2_official.pth")))
    m = m.double().eval()
    for p in m.parameters():
        p.requires_grad_(False)
    # 56 px = the checkpoint's own 4x4 position grid: no resize (the reference resizes in f32).
    x = 0.1 + 0.8 * torch.rand(2, 3, 56, 56, generator=g, dtype=torch.float64)
    x0 = 0.1 + 0.8 * torch.rand(2, 3, 56, 56, generator=g, dtype=torch.float64)
    with torch.no_grad():
        c0, p0 = m(ref.normalize(x0))
    out = {"x": x, "x0": x0}
    d, h, w = 64, 56, 56

    def record(name, per_sample_fn):
        xi = x.clone().requires_grad_(True)
        cls, patch = m(ref.normalize(xi))
        losses = per_sample_fn(cls, patch)
        (grad,) = torch.autograd.grad(losses.sum(), xi)
        out[f"{name}_losses"] = losses.detach()
        out[f"{name}_grad"] = grad

    def cosine(a, b):
        return 1 - (a * b).sum(-1) / (a.norm(dim=-1) * b.norm(dim=-1) + 1e-12)

    record("embed_both_mse", lambda c, p: ((c - c0) ** 2).mean(-1) + ((p - p0) ** 2).mean(-1).mean(-1))
    record("embed_cls_cosine", lambda c, p: cosine(c, c0))
    record("embed_patch_cosine", lambda c, p: cosine(p, p0).mean(-1))

    probe_w = torch.randn(10, 2 * d, generator=g, dtype=torch.float64) * 0.5
    probe_b = torch.randn(10, generator=g, dtype=torch.float64) * 0.1
    labels = torch.tensor([3, 7])
    out.update(probe_w=probe_w, probe_b=probe_b, probe_labels=labels.double())
    record("ce", lambda c, p: F.cross_entropy(torch.cat([c, p.mean(1)], 1) @ probe_w.T + probe_b, labels, reduction="none"))

    def ce_scaled(c, p):
        # The study's DownstreamPGD (evaluators/attack.py): logits divided by their sample's
        # max(max_k z_k, 1), the divisor under no_grad, then the cross-entropy.
        logits = torch.cat([c, p.mean(1)], 1) @ probe_w.T + probe_b
        with torch.no_grad():
            div = torch.maximum(logits, torch.ones_like(logits)).max(dim=1, keepdim=True)[0]
        return F.cross_entropy(logits / div, labels, reduction="none")

    record("ce_scaled", ce_scaled)

    def bn_params(prefix, dim):
        vals = dict(w=1 + 0.1 * torch.randn(dim, generator=g, dtype=torch.float64),
                    b=0.1 * torch.randn(dim, generator=g, dtype=torch.float64),
                    rm=0.1 * torch.randn(dim, generator=g, dtype=torch.float64),
                    rv=0.5 + 0.1 * torch.rand(dim, generator=g, dtype=torch.float64))
        out.update({f"{prefix}_bn_{k}": v for k, v in vals.items()})
        return vals

    bn = bn_params("seg", d)
    seg_w = torch.randn(5, d, generator=g, dtype=torch.float64) * 0.5
    seg_b = torch.randn(5, generator=g, dtype=torch.float64) * 0.1
    seg_labels = torch.randint(0, 5, (2, h, w), generator=g)
    seg_labels[0, :2, :] = 255
    out.update(seg_w=seg_w, seg_b=seg_b, seg_labels=seg_labels.double())
    t_step, t_total = 3, 4
    lam = t_step / (2 * t_total)

    def segpgd(c, p):
        feats = bn_eval(p, bn["w"], bn["b"], bn["rm"], bn["rv"]) @ seg_w.T + seg_b  # [B, 16, K]
        logits = feats.reshape(2, 4, 4, 5).permute(0, 3, 1, 2)
        logits = F.interpolate(logits, size=(h, w), mode="bilinear", align_corners=False)
        ce = F.cross_entropy(logits, seg_labels, ignore_index=255, reduction="none")
        valid = seg_labels != 255
        right = (logits.argmax(1) == seg_labels) & valid
        weight = torch.where(right, 1 - lam, lam) * valid
        return (ce * weight).flatten(1).sum(1) / valid.flatten(1).sum(1)

    record("segpgd", segpgd)

    def segpgd_study(c, p):
        # The study's form (evaluators/attack.py, SegPGD.run), restated per image: CE with its
        # ignore index over the correctly classified pixels, and over the wrongly classified
        # ones, each a mean, mixed (1 - lambda, lambda); an empty set adds nothing (the source's
        # mean would be NaN). Our ignore index 255 for its 0; logits, not averaged probabilities.
        feats = bn_eval(p, bn["w"], bn["b"], bn["rm"], bn["rv"]) @ seg_w.T + seg_b
        logits = feats.reshape(2, 4, 4, 5).permute(0, 3, 1, 2)
        logits = F.interpolate(logits, size=(h, w), mode="bilinear", align_corners=False)
        loss_fn = torch.nn.CrossEntropyLoss(ignore_index=255)
        per = []
        for b in range(logits.shape[0]):
            label, adv_logits = seg_labels[b], logits[b]  # [H, W], [K, H, W]
            pred_label = torch.argmax(adv_logits, dim=0)
            labelled = label != 255
            correct_voxels = (label == pred_label) & labelled
            wrong_voxels = (label != pred_label) & labelled
            zero = adv_logits.new_zeros(())
            loss_correct = loss_fn(adv_logits[:, correct_voxels].permute(1, 0), label[correct_voxels]) if correct_voxels.any() else zero
            loss_wrong = loss_fn(adv_logits[:, wrong_voxels].permute(1, 0), label[wrong_voxels]) if wrong_voxels.any() else zero
            per.append((1 - lam) * loss_correct + lam * loss_wrong)
        return torch.stack(per)

    record("segpgd_study", segpgd_study)

    bnd = bn_params("depth", 2 * d)
    depth_w = torch.randn(16, 2 * d, generator=g, dtype=torch.float64) * 0.5
    depth_b = torch.randn(16, generator=g, dtype=torch.float64) * 0.1
    metres = 0.5 + 8.5 * torch.rand(2, h, w, generator=g, dtype=torch.float64)
    metres[1, :3, :] = 0.0
    out.update(depth_w=depth_w, depth_b=depth_b, depth_metres=metres)
    bins = torch.linspace(MIN, MAX, 16, dtype=torch.float64).view(1, 16, 1, 1)

    def depthpgd(c, p):
        feats = torch.cat([p, c[:, None].expand(-1, 16, -1)], 2)
        logits = bn_eval(feats, bnd["w"], bnd["b"], bnd["rm"], bnd["rv"]) @ depth_w.T + depth_b
        logits = logits.reshape(2, 4, 4, 16).permute(0, 3, 1, 2)
        logits = F.interpolate(logits, scale_factor=4, mode="bilinear", align_corners=False)
        prob = torch.relu(logits) + 0.1
        prob = prob / prob.sum(1, keepdim=True)
        depth = (prob * bins).sum(1, keepdim=True)
        pred = F.interpolate(depth, size=(h, w), mode="bilinear", align_corners=False)[:, 0]
        losses = []
        for i in range(2):
            gt = metres[i:i + 1]
            mask = (gt > MIN) & (gt < MAX)
            losses.append(sig_loss(pred[i:i + 1], gt, mask) + 0.5 * grad_loss(pred[i:i + 1], gt, mask))
        return torch.stack(losses)

    record("depthpgd", depthpgd)

    # The same objective through DINOv2's own linear depth head (dinov2/eval/depth/models/
    # decode_heads/linear_head.py, the hub's depther): the last block's CLS and patch tokens
    # *without* the final norm (get_intermediate_layers(norm=False)), patch channels first then
    # CLS, no BatchNorm (commented out there), bilinear x4, 1x1 conv to bins, ReLU + 0.1,
    # normalised, sum of p * bin, clamped to [min, max], resized to the image.
    def record_prenorm(name, per_sample_fn):
        xi = x.clone().requires_grad_(True)
        cls, patch = m.forward_prenorm(ref.normalize(xi))
        losses = per_sample_fn(cls, patch)
        (grad,) = torch.autograd.grad(losses.sum(), xi)
        out[f"{name}_losses"] = losses.detach()
        out[f"{name}_grad"] = grad

    def depthpgd_dinov2(c, p):
        feats = torch.cat([p.reshape(2, 4, 4, d).permute(0, 3, 1, 2), c[:, :, None, None].expand(-1, -1, 4, 4)], 1)
        feats = F.interpolate(feats, scale_factor=4, mode="bilinear", align_corners=False)
        logits = F.conv2d(feats, depth_w[:, :, None, None], depth_b)
        prob = torch.relu(logits) + 0.1
        prob = prob / prob.sum(1, keepdim=True)
        depth = torch.einsum("ikmn,k->imn", prob, bins.view(-1)).unsqueeze(1).clamp(MIN, MAX)
        pred = F.interpolate(depth, size=(h, w), mode="bilinear", align_corners=False)[:, 0]
        losses = []
        for i in range(2):
            gt = metres[i:i + 1]
            mask = (gt > MIN) & (gt < MAX)
            losses.append(sig_loss(pred[i:i + 1], gt, mask) + 0.5 * grad_loss(pred[i:i + 1], gt, mask))
        return torch.stack(losses)

    record_prenorm("depthpgd_dinov2", depthpgd_dinov2)
    # EmbedAttack on the study's depth embedding: the pre-norm patch tokens (MSE).
    with torch.no_grad():
        _, p0_pre = m.forward_prenorm(ref.normalize(x0))
    record_prenorm("embed_patch_prenorm_mse", lambda c, p: ((p - p0_pre) ** 2).mean(-1).mean(-1))

    # AutoAttack's DLR losses, as autopgd_base.py writes them (APGDAttack.dlr_loss and
    # APGDAttack_targeted.dlr_loss_targeted, its y_target an argument here; `.float()` → f64).
    def dlr_loss(x, y):
        x_sorted, ind_sorted = x.sort(dim=1)
        ind = (ind_sorted[:, -1] == y).double()
        u = torch.arange(x.shape[0])
        return -(x[u, y] - x_sorted[:, -2] * ind - x_sorted[:, -1] * (1. - ind)) / (x_sorted[:, -1] - x_sorted[:, -3] + 1e-12)

    def dlr_loss_targeted(x, y, y_target):
        x_sorted, ind_sorted = x.sort(dim=1)
        u = torch.arange(x.shape[0])
        return -(x[u, y] - x[u, y_target]) / (x_sorted[:, -1] - .5 * (x_sorted[:, -3] + x_sorted[:, -4]) + 1e-12)

    def probe_logits(c, p):
        return torch.cat([c, p.mean(1)], 1) @ probe_w.T + probe_b

    with torch.no_grad():
        z = probe_logits(*m(ref.normalize(x)))
    top = z.argmax(1)  # labels the probe gets right: the true class leads
    # APGD-T's first target (APGDAttack_targeted.perturb, target_class = 2): the second most likely class.
    y_target = z.sort(dim=1)[1][:, -2]
    out.update(dlr_top_labels=top.double(), dlr_targets=y_target.double())
    record("dlr", lambda c, p: dlr_loss(probe_logits(c, p), labels))
    record("dlr_top", lambda c, p: dlr_loss(probe_logits(c, p), top))
    record("dlr_targeted", lambda c, p: dlr_loss_targeted(probe_logits(c, p), top, y_target))
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    save_file({k: v.contiguous() for k, v in out.items()}, OUT)
    print("wrote", OUT, {k: tuple(v.shape) for k, v in out.items() if k.endswith("losses")})


if __name__ == "__main__":
    main()

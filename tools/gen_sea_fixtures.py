"""Reference values and logit gradients of the segmentation losses of SEA (Croce, Singh & Hein,
"Towards Reliable Evaluation and Fast Training of Robust Semantic Segmentation Models", ECCV
2024; code github.com/nmndeep/Robust-Segmentation) and of CosPGD (Agnihotri, Jung & Keuper,
"CosPGD: an efficient white-box adversarial attack for pixel-wise prediction tasks", ICML 2024;
code github.com/shashankskagnihotri/cospgd), in f64, on fixed random logits
(tests/fixtures/attacks/sea_losses.safetensors).

    python3 -m pip install torch safetensors
    python3 tools/gen_sea_fixtures.py

The definitions are restated here from the sources (nothing is imported from them), with our
ignore index 255 where SEA's code uses -1:

- masked_ce: SEA's `masked_cross_entropy` (semseg/attacker.py, key "mask-ce-avg"): per pixel
  the cross-entropy, times the (constant) indicator that the pixel is labelled and its argmax is
  its label;
- masked_balanced_ce: SEA's `masked_cross_entropy_balanced` ("mask-ce-bal"): the same with
  torch's class weights, w[y] * CE. SEA passes fixed per-dataset weights (VOC_WTS / ADE_WTS in
  semseg/utils/utils.py: they sum to 1 and look like inverse pixel frequencies over the dataset);
  here `class_weights` are the inverse class frequencies over this fixture's labelled pixels
  (all three images), normalised to sum 1, and saved;
- js: SEA's `js_loss` / `js_div_fn` ("js-avg"): per pixel the Jensen-Shannon divergence between
  the softmax p and the one-hot label q, sum over classes of (KL(p||m) + KL(q||m)) / 2,
  m = (p + q) / 2, on every labelled pixel (no correctness mask);
- masked_spherical: "mask-norm-corrlog-avg" = `single_logits_loss(normalized=True, masked=True)`
  of the pre-release history (semseg/utils/attacker.py at commit 9b45521; gone from the released
  code, whose SEA has only the three losses above): per pixel -z_y / ||z||_2 on the LOGITS z (not
  the softmax; the norm is differentiated), on labelled pixels whose argmax is their label;
- cospgd: the cospgd package's `Attack.cospgd_scale` (cospgd/attack_implementations.py) on
  torch's CrossEntropyLoss(ignore_index=255, reduction="none") as unet_backbones/backbones_unet/
  utils/trainer.py (`adv_attack`) calls it: per pixel cos(softmax(z), one_hot(y)) = p_y / ||p||_2,
  detached, times the cross-entropy (0 on ignored pixels).

Reduction: SEA's `pixel_to_img_loss` takes, per image, the mean over ALL H*W pixels (ignored and
masked-out pixels count in the denominator as zeros), and APGD differentiates the sum over the
batch of these per-image values; `{name}_losses` is that per-image value. CosPGD's trainer takes
`loss.mean()` over the whole batch B*H*W (its default batch size is 1); `cospgd_losses` is the
per-image mean over H*W, so the source's batch loss is their mean over images (and its gradient
1/B of `cospgd_grad`). `{name}_grad` is the gradient of the sum of `{name}_losses` with respect
to `logits`, by autograd, the masks and the CosPGD weight held constant as in the sources.

Keys: logits [3,5,6,7] f64; labels [3,6,7] f64 (class ids 0..4, 255 = ignored); class_weights
[5] f64; {masked_ce, masked_balanced_ce, js, masked_spherical, cospgd}_losses [3] f64 and _grad
[3,5,6,7] f64.
"""
import os

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

HERE = os.path.dirname(__file__)
OUT = os.path.join(HERE, "..", "tests", "fixtures", "attacks", "sea_losses.safetensors")
IGNORE = 255
B, K, H, W = 3, 5, 6, 7


def make_inputs():
    g = torch.Generator().manual_seed(0)
    logits = 2.0 * torch.randn(B, K, H, W, generator=g, dtype=torch.float64)
    # Mostly the prediction (so the masked losses see pixels), a third relabelled at random (most
    # of those now misclassified), and some pixels ignored: image 0's first row, scattered ones.
    labels = logits.argmax(1)
    relabel = torch.rand(B, H, W, generator=g) < 0.35
    labels = torch.where(relabel, torch.randint(0, K, (B, H, W), generator=g), labels)
    labels[0, 0, :] = IGNORE
    labels[torch.rand(B, H, W, generator=g) < 0.1] = IGNORE
    # Class weights as SEA's pre-computed ones look: inverse pixel frequency, summing to 1.
    counts = torch.stack([(labels == c).sum() for c in range(K)]).to(torch.float64)
    weights = (1.0 / counts) / (1.0 / counts).sum()
    return logits, labels, weights


def one_hot(labels, k):
    """One-hot [B, K, H, W] of the labels; SEA maps ignored pixels to class 0 first (the pixels
    are zeroed later by the mask)."""
    valid = labels != IGNORE
    return F.one_hot(labels * valid, k).permute(0, 3, 1, 2).to(torch.float64), valid


def still_correct(logits, labels):
    """SEA's mask: labelled pixels whose argmax is their label, constant (detached)."""
    return ((logits.argmax(1) == labels) & (labels != IGNORE)).to(torch.float64)


def per_image(pixel_loss):
    """SEA's `pixel_to_img_loss`: the mean over every pixel of the image (H*W)."""
    return pixel_loss.flatten(1).mean(1)


def masked_ce(logits, labels, weights=None):
    # semseg/attacker.py: masked_cross_entropy / masked_cross_entropy_balanced (reduction "none").
    ce = F.cross_entropy(logits, labels, weight=weights, reduction="none", ignore_index=IGNORE)
    return per_image(still_correct(logits, labels) * ce)


def masked_balanced_ce(logits, labels, weights):
    # torch's weight with reduction "none": weights[y] * CE per pixel, no renormalisation.
    return masked_ce(logits, labels, weights)


def js(logits, labels):
    # semseg/attacker.py: js_loss -> js_div_fn(p, q, red_dim=1): KL terms of torch's kl_div
    # (target * (log target - input), 0 where target = 0), summed over classes, halved, times
    # the labelled-pixel mask.
    q, valid = one_hot(labels, logits.shape[1])
    log_p = F.log_softmax(logits, 1)
    p = log_p.exp()
    log_m = ((p + q) / 2).log()
    kl_p = (p * (log_p - log_m)).sum(1)
    kl_q = -(q * log_m).sum(1)  # q log q = 0 for a one-hot q
    return per_image(valid * (kl_p + kl_q) / 2)


def masked_spherical(logits, labels):
    # semseg/utils/attacker.py @ 9b45521: single_logits_loss(normalized=True, masked=True).
    q, valid = one_hot(labels, logits.shape[1])
    u = logits / (logits ** 2).sum(1, keepdim=True).sqrt()
    loss = -(q * u).sum(1) * valid
    return per_image(still_correct(logits, labels) * loss)


def cospgd(logits, labels):
    # cospgd/attack_implementations.py: Attack.cospgd_scale(one_hot=True, targeted=False) on
    # CrossEntropyLoss(ignore_index=255, reduction="none"); the label is clamped into
    # [labels.min(), K-1] for the one-hot (255 -> K-1), where the cross-entropy is 0 anyway.
    k = logits.shape[1]
    target = F.one_hot(labels.clamp(int(labels.min()), k - 1), k).permute(0, 3, 1, 2).to(torch.float64)
    cos = F.cosine_similarity(F.softmax(logits, 1), target, dim=1)
    ce = F.cross_entropy(logits, labels, reduction="none", ignore_index=IGNORE)
    return per_image(cos.detach() * ce)


def main():
    logits, labels, weights = make_inputs()
    out = {"logits": logits, "labels": labels.to(torch.float64), "class_weights": weights}
    losses = {
        "masked_ce": lambda z: masked_ce(z, labels),
        "masked_balanced_ce": lambda z: masked_balanced_ce(z, labels, weights),
        "js": lambda z: js(z, labels),
        "masked_spherical": lambda z: masked_spherical(z, labels),
        "cospgd": lambda z: cospgd(z, labels),
    }
    for name, fn in losses.items():
        z = logits.clone().requires_grad_(True)
        per = fn(z)
        (grad,) = torch.autograd.grad(per.sum(), z)
        out[f"{name}_losses"] = per.detach()
        out[f"{name}_grad"] = grad
    save_file({k: v.contiguous() for k, v in out.items()}, OUT)

    back = load_file(OUT)
    valid = labels != IGNORE
    right = (logits.argmax(1) == labels) & valid
    print(f"wrote {OUT}: {len(back)} tensors")
    print(f"labelled {int(valid.sum())}/{labels.numel()}, still correct {int(right.sum())}, "
          f"misclassified {int((valid & ~right).sum())}; class weights {weights.tolist()}")
    for name in losses:
        print(f"{name:>20}: losses {back[f'{name}_losses'].tolist()}  |grad| {back[f'{name}_grad'].abs().sum():.6f}")


if __name__ == "__main__":
    main()

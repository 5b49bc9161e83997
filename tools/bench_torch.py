"""PyTorch eager reference timings for BENCHMARKS.md (same protocol as `robust-ssl bench`).

    python3 tools/bench_torch.py --batch 8 --size 224 --threads 2

The model is the official DINOv2 ViT-S/14 (or --arch b / l: ViT-B/14, ViT-L/14) architecture restated in reference_vit.py (random
weights: speed does not depend on them), f32, eager. Forward runs under no_grad; forward+backward
computes the gradient of a random projection of CLS and patch tokens with respect to the pixels
only (weights frozen, as in an attack: the fastest PyTorch setting). Median of --iters after
--warmup. Prints one JSON line.
"""
import argparse
import json
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(__file__))
import reference_vit as ref  # noqa: E402


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--iters", type=int, default=5)
    p.add_argument("--attack-steps", type=int, default=0,
                   help="also time an EmbedAttack PGD loop (L-inf 8/255, step 2/255) of this many steps "
                        "(the second of two such loops)")
    p.add_argument("--window", default=None,
                   help="with --attack-steps: also time the attack on whole --image images through mmseg's sliding "
                        "windows CROP:STRIDE (windows batched, outputs per window, autograd through the cut)")
    p.add_argument("--image", default=None, help="HxW of the whole images for --window (default: --size square)")
    p.add_argument("--arch", choices=["s", "b", "l"], default="s",
                   help="DINOv2 ViT-S/14, ViT-B/14 or ViT-L/14 (width, depth, heads as Meta's)")
    p.add_argument("--precision", choices=["f32", "bf16"], default="f32",
                   help="bf16: every pass under torch.autocast('cpu', dtype=torch.bfloat16), PyTorch's own mixed precision")
    p.add_argument("--linear", action="store_true",
                   help="also time the linear layers alone (x @ W and dy @ W^T at batch x tokens rows, f32 and "
                        "bf16: PyTorch's matmul, oneDNN on x86), GFLOP/s")
    p.add_argument("--device", default="cpu",
                   help="cpu or cuda: where the model and the inputs live (timings wait for the GPU's queue)")
    p.add_argument("--finetune-steps", type=int, default=0,
                   help="also time DeACL fine-tuning steps (after one untimed step)")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    if a.precision == "bf16":
        # Every forward below runs under autocast (matrix products in bf16 through oneDNN); the
        # backward passes follow the dtypes autocast chose, as they do in a user's loop.
        autocast = torch.autocast(a.device.split(":")[0], dtype=torch.bfloat16)
        autocast.__enter__()
    dim, depth, heads = {"s": (384, 12, 6), "b": (768, 12, 12), "l": (1024, 24, 16)}[a.arch]
    dev = torch.device(a.device)
    m = ref.randomize(ref.VisionTransformer(14, dim, depth, heads, pos_grid=37), 0).eval().to(dev)
    for q in m.parameters():
        q.requires_grad_(False)
    x = torch.rand(a.batch, 3, a.size, a.size, device=dev)
    n = (a.size // 14) ** 2
    pc, pp = torch.randn(a.batch, dim, device=dev), torch.randn(a.batch, n, dim, device=dev)

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    def fwd():
        with torch.no_grad():
            cls, patch = m(ref.normalize(x))
        return cls.sum().item()

    def fwd_bwd():
        xi = x.clone().requires_grad_(True)
        cls, patch = m(ref.normalize(xi))
        loss = (cls * pc).sum() + (patch * pp).sum()
        (g,) = torch.autograd.grad(loss, xi)
        return g.sum().item()

    def timed(f):
        ts = []
        for i in range(a.warmup + a.iters):
            sync()
            t0 = time.perf_counter()
            f()
            sync()
            if i >= a.warmup:
                ts.append(time.perf_counter() - t0)
        return sorted(ts)[len(ts) // 2]

    def window_attack_steps_per_s(xs, crop, stride):
        """The reference loop: per step a forward and a backward to the pixels (weights frozen),
        sign step, projection onto the ball and the pixel box; then a final forward. The second of
        two such attacks is timed. Through mmseg's sliding windows (slide_inference's positions)
        when the images are larger than `crop`: the windows of every image as one batch, the loss
        over every window's tokens, a backward to the whole images through the cut."""
        _, _, h, w = xs.shape

        def spans(n):
            grids = max(n - crop + stride - 1, 0) // stride + 1
            out = []
            for i in range(grids):
                end = min(i * stride + crop, n)
                out.append((max(end - crop, 0), end))
            return out

        boxes = [(y0, y1, x0, x1) for (y0, y1) in spans(h) for (x0, x1) in spans(w)]

        def cut(img):
            return torch.cat([img[:, :, y0:y1, x0:x1] for (y0, y1, x0, x1) in boxes])

        with torch.no_grad():
            c0, p0 = m(ref.normalize(cut(xs)))
        eps, alpha = 8 / 255, 2 / 255

        def attack():
            delta = (torch.rand_like(xs) * 2 - 1) * eps
            delta = (xs + delta).clamp(0, 1) - xs
            for _ in range(a.attack_steps):
                d = delta.clone().requires_grad_(True)
                cls, patch = m(ref.normalize(cut(xs + d)))
                loss = ((cls - c0) ** 2).mean(-1).sum() + ((patch - p0) ** 2).mean((-1, -2)).sum()
                (g,) = torch.autograd.grad(loss, d)
                with torch.no_grad():
                    delta = (delta + alpha * g.sign()).clamp(-eps, eps)
                    delta = (xs + delta).clamp(0, 1) - xs
            with torch.no_grad():
                m(ref.normalize(cut(xs + delta)))

        # One untimed attack first, as on our side: a run attacks batch after batch, and the first
        # attack of a process pays for memory the later ones reuse.
        attack()
        sync()
        t0 = time.perf_counter()
        attack()
        sync()
        return a.attack_steps / (time.perf_counter() - t0), len(boxes)

    def finetune_steps_per_s():
        """DeACL as the reference trains: frozen teacher, trainable student copy; per step the
        teacher's CLS, a 5-step PGD (8/255, 2/255, random start) maximising 1 - cos(s(x'), t(x))
        with gradients to the pixels only, then -cos(s(x), t(x)) - 2 cos(s(x'), s(x)) backward to
        the student's weights and an SGD step (momentum 0.9, weight decay 5e-4)."""
        import copy
        import torch.nn.functional as F
        student = copy.deepcopy(m).train()
        for q in student.parameters():
            q.requires_grad_(True)
        opt = torch.optim.SGD(student.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
        eps, alpha = 8 / 255, 2 / 255

        def step():
            with torch.no_grad():
                t_cls, _ = m(ref.normalize(x))
            delta = (torch.rand_like(x) * 2 - 1) * eps
            delta = (x + delta).clamp(0, 1) - x
            for _ in range(5):
                d = delta.clone().requires_grad_(True)
                s_cls, _ = student(ref.normalize(x + d))
                loss = (1 - F.cosine_similarity(s_cls, t_cls, dim=-1)).sum()
                (g,) = torch.autograd.grad(loss, d)
                with torch.no_grad():
                    delta = (delta + alpha * g.sign()).clamp(-eps, eps)
                    delta = (x + delta).clamp(0, 1) - x
            s, _ = student(ref.normalize(torch.cat([x, x + delta])))
            s_x, s_adv = s[: len(x)], s[len(x):]
            loss = -F.cosine_similarity(s_x, t_cls, dim=-1).mean() - 2 * F.cosine_similarity(s_adv, s_x, dim=-1).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()

        step()
        sync()
        t0 = time.perf_counter()
        for _ in range(a.finetune_steps):
            step()
        sync()
        return a.finetune_steps / (time.perf_counter() - t0)

    out = {"batch": a.batch, "size": a.size, "iters": a.iters, "threads": a.threads,
           "torch": torch.__version__, "precision": a.precision, "device": a.device, "forward_s": timed(fwd), "forward_backward_s": timed(fwd_bwd)}
    if a.attack_steps:
        # One window as large as the image: the plain reference loop.
        out["attack_steps_per_s"] = window_attack_steps_per_s(x, a.size, a.size)[0]
    if a.finetune_steps:
        out["finetune_steps_per_s"] = finetune_steps_per_s()
    if a.linear:
        rows = a.batch * (n + 1)
        layers = []
        for name, k_in, k_out in [("qkv", dim, 3 * dim), ("proj", dim, dim), ("fc1", dim, 4 * dim), ("fc2", 4 * dim, dim)]:
            # The forward x @ W, the input gradient dy @ W^T, the weight gradient x^T @ dy.
            for suffix, mm, k, nn, t in [("", rows, k_in, k_out, False), (" (dx)", rows, k_out, k_in, False),
                                         (" (dw)", k_in, rows, k_out, True)]:
                row = {"layer": name + suffix, "m": mm, "k": k, "n": nn}
                for dt, key in [(torch.float32, "f32_gflops"), (torch.bfloat16, "bf16_gflops")]:
                    xa = torch.rand(k, mm).to(dt).t() if t else torch.rand(mm, k).to(dt)
                    wb = torch.rand(k, nn).to(dt)
                    with torch.autocast("cpu", enabled=False):
                        secs = timed(lambda: xa @ wb)
                    row[key] = 2 * mm * k * nn / secs / 1e9
                layers.append(row)
        out["linear"] = layers
    if a.window and a.attack_steps:
        crop, stride = (int(v) for v in a.window.split(":"))
        h, w = (int(v) for v in a.image.split("x")) if a.image else (a.size, a.size)
        x_crop = torch.rand(a.batch, 3, crop, crop, device=dev)
        one, _ = window_attack_steps_per_s(x_crop, crop, stride)
        whole, n = window_attack_steps_per_s(torch.rand(a.batch, 3, h, w, device=dev), crop, stride)
        out["windows"] = {"window": a.window, "image": [h, w], "windows": n, "one_crop_steps_per_s": one,
                          "whole_image_steps_per_s": whole, "cost_ratio": one / whole}
    print(json.dumps(out))


if __name__ == "__main__":
    main()

"""The DeACL loss and its gradient with respect to every student weight, in f64, on the tiny
DINOv2 of tests/fixtures/encoder/dinov2_official.pth (tests/defense.rs).

    python3 -m pip install torch safetensors
    python3 tools/gen_deacl_fixture.py

Teacher: the checkpoint. Student: the same weights, each tensor perturbed by seeded noise, written
as an official-naming checkpoint (deacl_student.safetensors) that the Rust side loads. Two fixed
image batches stand for x and x_adv. The loss is written out from its definition,
    L = mean_b [ -cos(s(x)_cls, t(x)_cls) - k * cos(s(x_adv)_cls, s(x)_cls) ],  k = 2,
with gradients by autograd; they are stored under the official tensor names (grad.NAME).
"""
import os
import sys

import torch
import torch.nn.functional as F
from safetensors.torch import save_file

sys.path.insert(0, os.path.dirname(__file__))
import reference_vit as ref  # noqa: E402

HERE = os.path.dirname(__file__)
FIX = os.path.join(HERE, "..", "tests", "fixtures")
K = 2.0


def model():
    m = ref.VisionTransformer(14, 64, 2, 4, pos_grid=4)
    m.load_state_dict(torch.load(os.path.join(FIX, "encoder", "dinov2_official.pth")))
    return m


def main():
    g = torch.Generator().manual_seed(0)
    teacher = model().double().eval()
    student = model()
    with torch.no_grad():
        for p in student.parameters():
            p.mul_(1 + 0.05 * torch.randn(p.shape, generator=g)).add_(0.01 * torch.randn(p.shape, generator=g))
    state = {k: v.float().contiguous() for k, v in student.state_dict().items()}
    save_file(state, os.path.join(FIX, "defense", "deacl_student.safetensors"))
    student = student.double().train()
    x = 0.1 + 0.8 * torch.rand(3, 3, 56, 56, generator=g, dtype=torch.float64)
    x_adv = (x + (8 / 255) * (2 * torch.rand(x.shape, generator=g, dtype=torch.float64) - 1)).clamp(0, 1)
    with torch.no_grad():
        t_cls, _ = teacher(ref.normalize(x))
    s_cls, _ = student(ref.normalize(x))
    a_cls, _ = student(ref.normalize(x_adv))
    fidelity = F.cosine_similarity(s_cls, t_cls, dim=-1, eps=0).mean()
    robustness = F.cosine_similarity(a_cls, s_cls, dim=-1, eps=0).mean()
    loss = -fidelity - K * robustness
    names = [n for n, _ in student.named_parameters() if n != "mask_token"]
    grads = torch.autograd.grad(loss, [p for n, p in student.named_parameters() if n != "mask_token"])
    out = {"x": x, "x_adv": x_adv, "loss": loss.detach().reshape(1), "fidelity": fidelity.detach().reshape(1), "robustness": robustness.detach().reshape(1)}
    out.update({f"grad.{n}": gr.contiguous() for n, gr in zip(names, grads)})
    save_file(out, os.path.join(FIX, "defense", "deacl.safetensors"))
    print(f"loss {loss.item():.6f}, {len(names)} gradients")


if __name__ == "__main__":
    main()

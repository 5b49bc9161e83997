"""Reference values of AutoAttack's FAB-T (targeted Fast Adaptive Boundary attack) and of its two
projections, for the Rust port in src/attacks/fab.rs and src/attacks/fab_projection.rs.

    python3 -m pip install torch safetensors numpy pyautoattack==0.2.0   # AutoAttack, packaged
    python3 tools/gen_fab_fixtures.py

Everything here is computed by AutoAttack's own code (pyautoattack: fab_projections.py, fab_base.py,
fab_pt.py), called, never restated; the project's Rust code does not contain it.

1. `projection_linf` and `projection_l2` on batches of 6 rows, of dimension 12 and of dimension 147
   (longer sorts and bisections), with the inputs FAB gives them: the points are pixel vectors in
   [0, 1] (FAB passes the current iterate x1 and the clean image x0, both flattened), `w` is the
   gradient of the logit gap and `b = w·x1 - gap`, so that the hyperplane `w·z = b` is the
   linearised decision boundary; the output is the step `d` with `t + d` on the hyperplane and in
   [0, 1] (or as near as the box allows). The rows cover: a reachable hyperplane on either side,
   one the point already lies on (b = w·t exactly), one the box keeps out of reach, zero weights,
   and points on the box faces. The functions run in the dtype of their inputs (their `.float()`
   only makes exact 0/1 masks, which promote), so the plain keys are float64 runs and the `_f32`
   keys are float32 runs on the same inputs rounded to float32.

2. Whole FAB-T runs (`FABAttack_PT(targeted=True, n_restarts=1, n_target_classes=1, n_iter=10)`,
   alpha_max 0.1, eta 1.05, beta 0.9: AutoAttack's defaults) at Linf eps 8/255 and at L2 eps 0.5,
   on two tiny models of x in [0, 1]^(3x4x4), 10 classes: a linear classifier
   `W flatten(x) + b` and an MLP `W2 tanh(W1 flatten(x) + b1) + b2` (hidden 16; b1 centres the
   first layer on the grey image so the images fall in several classes). The labels are the
   models' own clean predictions, so every image is attacked; the single target is the second most
   likely clean class. With n_restarts = 1 the only restart is restart 0, which runs
   `use_rand_start=(counter > 0)` = False: no random start, so the runs are deterministic.
   `attack_single_run` casts the images to float32 (`x.detach().clone().float()`), so AutoAttack's
   FAB runs in float32: the plain `fab_*` keys are that run, unmodified, with float32 models. The
   `_f64` keys are the same run in float64: the one `.float()` cast removed from the method's own
   source (nothing else changed) and torch's default dtype set to float64, with the same weights
   and images (all exactly representable in float32) in float64. `*_x1trace` holds the iterate x1
   at the start of each of the 10 iterations (what FAB differentiates: after the previous
   iteration's backward step where that one was adversarial), `*_fooled` whether the
   returned image is misclassified (the returned image is the clean one unless fooled within eps).

Output: tests/fixtures/attacks/fab.safetensors, keys:
  {linf,l2}[_d147]_{points,w,b,out}: float64, [6, D] / [6] / [6] / [6, D], D = 12 or 147; the same
      with _f32 appended: the float32 inputs (rounded) and the float32 outputs. Rows: 0 reachable
      (b > w·t), 1 on the plane, 2 unreachable (b > w·t), 3 zero weights (every third), reachable
      (b < w·t), 4 coordinates on 0 and 1, reachable (b < w·t), 5 unreachable (b < w·t).
  x [8,3,4,4], model_w [10,48], model_b [10], mlp_w1 [16,48], mlp_b1 [16], mlp_w2 [10,16],
      mlp_b2 [10]: float32 (exact in float64); y, target, y_mlp, target_mlp [8]: int64.
  fab_{linf,l2}_adv[_mlp][_f64] [8,3,4,4]: perturb's output (float32; _f64 float64).
  fab_{linf,l2}[_mlp]_{fooled,norm,found,x1trace}[_f64]: fooled [8] uint8 (argmax(adv) != y),
      norm [8] (Linf or L2 norm of adv - x; 0 where the clean image came back), found [8,3,4,4]
      (attack_single_run's output, before perturb's eps test), x1trace [10,8,3,4,4].
"""
import inspect
import os
import textwrap

import numpy as np
import torch
from safetensors.torch import load_file, save_file

import pyautoattack.fab_base as fab_base
from pyautoattack.fab_projections import projection_l2, projection_linf
from pyautoattack.fab_pt import FABAttack_PT

HERE = os.path.dirname(__file__)
OUT = os.path.join(HERE, "..", "tests", "fixtures", "attacks", "fab.safetensors")
N_ITER = 10
EPS = {"linf": ("Linf", 8 / 255), "l2": ("L2", 0.5)}


# ---------------------------------------------------------------------------------------------
# Projections
# ---------------------------------------------------------------------------------------------

def projection_case(g, dim):
    """6 rows of (points, w, b) in float64, of the meanings FAB gives them."""
    n = 6
    t = torch.rand(n, dim, generator=g, dtype=torch.float64)
    w = torch.randn(n, dim, generator=g, dtype=torch.float64)
    gap = torch.empty(n, dtype=torch.float64)
    # row 0: the hyperplane a little above the point (w·t < b), reachable
    gap[0] = -0.3
    # row 1: the point already on the hyperplane: b = w·t exactly
    gap[1] = 0.0
    # row 2: far above: the box [0, 1] keeps it out of reach
    gap[2] = -(w[2].abs().sum().item() + 5.0)
    # row 3: some weights exactly zero, hyperplane below the point (w·t > b)
    w[3, ::3] = 0.0
    gap[3] = 0.4
    # row 4: points on the box faces, hyperplane below
    t[4, ::2] = 0.0
    t[4, 1::4] = 1.0
    gap[4] = 0.8
    # row 5: far below, unreachable on the other side
    gap[5] = w[5].abs().sum().item() + 5.0
    b = (w * t).sum(1) - gap
    b[1] = (w[1] * t[1]).sum()
    return t, w, b


def projections(g, out):
    for dim, suffix in ((12, ""), (147, "_d147")):
        t, w, b = projection_case(g, dim)
        for name, fn in (("linf", projection_linf), ("l2", projection_l2)):
            key = name + suffix
            out[f"{key}_points"], out[f"{key}_w"], out[f"{key}_b"] = t.clone(), w.clone(), b.clone()
            d = fn(t.clone(), w.clone(), b.clone())
            assert d.dtype == torch.float64
            out[f"{key}_out"] = d
            t32, w32, b32 = t.float(), w.float(), b.float()
            out[f"{key}_points_f32"], out[f"{key}_w_f32"], out[f"{key}_b_f32"] = t32.clone(), w32.clone(), b32.clone()
            d32 = fn(t32.clone(), w32.clone(), b32.clone())
            assert d32.dtype == torch.float32
            out[f"{key}_out_f32"] = d32
            z = t + d
            resid = ((w * z).sum(1) - b).abs()
            print(f"{key}: |w·(t+d) - b| = {[f'{r:.1e}' for r in resid.tolist()]}, "
                  f"box ok {bool(((z > -1e-12) & (z < 1 + 1e-12)).all())}, "
                  f"max |d - d_f32| = {(d - d32.double()).abs().max():.1e}")


# ---------------------------------------------------------------------------------------------
# FAB-T runs
# ---------------------------------------------------------------------------------------------

class Linear(torch.nn.Module):
    def __init__(self, w, b):
        super().__init__()
        self.w, self.b = w, b

    def forward(self, x):
        return x.reshape(x.shape[0], -1) @ self.w.T + self.b


class Mlp(torch.nn.Module):
    def __init__(self, w1, b1, w2, b2):
        super().__init__()
        self.w1, self.b1, self.w2, self.b2 = w1, b1, w2, b2

    def forward(self, x):
        h = torch.tanh(x.reshape(x.shape[0], -1) @ self.w1.T + self.b1)
        return h @ self.w2.T + self.b2


class TracedFab(FABAttack_PT):
    """AutoAttack's FABAttack_PT, recording the iterate x1 it differentiates at each iteration."""

    def __init__(self, *a, **k):
        super().__init__(*a, **k)
        self.trace = []

    def attack_single_run(self, *a, **k):
        self.found = super().attack_single_run(*a, **k)
        return self.found

    def get_diff_logits_grads_batch_targeted(self, imgs, la, la_target):
        self.trace.append(imgs.detach().clone())
        return super().get_diff_logits_grads_batch_targeted(imgs, la, la_target)


def _float64_single_run():
    """FABAttack.attack_single_run from its own source, without the cast of x to float32."""
    src = textwrap.dedent(inspect.getsource(fab_base.FABAttack.attack_single_run))
    cast = "x = x.detach().clone().float().to(self.device)"
    assert src.count(cast) == 1, "attack_single_run changed: the float32 cast is not where expected"
    src = src.replace(cast, "x = x.detach().clone().to(self.device)")
    scope = {}
    exec(compile(src, fab_base.__file__, "exec"), vars(fab_base), scope)
    return scope["attack_single_run"]


class TracedFab64(TracedFab):
    def attack_single_run(self, *a, **k):
        self.found = _SINGLE_RUN_F64(self, *a, **k)
        return self.found


_SINGLE_RUN_F64 = _float64_single_run()


def fab_run(model, x, y, norm, eps, f64):
    cls = TracedFab64 if f64 else TracedFab
    attack = cls(model, norm=norm, n_restarts=1, n_iter=N_ITER, eps=eps, seed=0, targeted=True,
                 n_target_classes=1, device=x.device)
    assert (attack.alpha_max, attack.eta, attack.beta) == (0.1, 1.05, 0.9)
    adv = attack.perturb(x, y)
    dtype = torch.float64 if f64 else torch.float32
    assert adv.dtype == dtype and all(t.dtype == dtype for t in attack.trace), (adv.dtype, attack.trace[0].dtype)
    assert len(attack.trace) == N_ITER
    with torch.no_grad():
        fooled = model(adv).argmax(1) != y
    # every image is correctly classified, so attack_single_run saw the whole batch
    assert attack.found.shape == x.shape and attack.found.dtype == dtype
    return adv, torch.stack(attack.trace), fooled, attack.found


def norm_of(norm, v):
    v = v.reshape(v.shape[0], -1)
    return v.abs().max(1)[0] if norm == "Linf" else (v ** 2).sum(1).sqrt()


def fab_runs(g, out):
    n, shape, classes, hidden = 8, (3, 4, 4), 10, 16
    dim = int(np.prod(shape))
    x = torch.rand(n, *shape, generator=g)
    lin = {"model_w": 0.5 * torch.randn(classes, dim, generator=g),
           "model_b": 0.5 * torch.randn(classes, generator=g)}
    # the MLP's first layer is centred on the grey image (b1 = -W1·0.5 + noise) so that the
    # images land in several classes rather than all in one
    w1 = 2.0 * torch.randn(hidden, dim, generator=g)
    mlp = {"mlp_w1": w1,
           "mlp_b1": -0.5 * w1.sum(1) + 0.5 * torch.randn(hidden, generator=g),
           "mlp_w2": 0.5 * torch.randn(classes, hidden, generator=g),
           "mlp_b2": 0.5 * torch.randn(classes, generator=g)}
    out["x"] = x
    out.update(lin)
    out.update(mlp)
    for f64 in (False, True):
        torch.set_default_dtype(torch.float64 if f64 else torch.float32)
        cast = (lambda v: v.double()) if f64 else (lambda v: v)
        xs = cast(x)
        for mname, model in (("", Linear(cast(lin["model_w"]), cast(lin["model_b"]))),
                             ("_mlp", Mlp(*(cast(mlp[k]) for k in ("mlp_w1", "mlp_b1", "mlp_w2", "mlp_b2"))))):
            with torch.no_grad():
                logits = model(xs)
            y = logits.argmax(1)
            target = logits.sort(dim=-1)[1][:, -2]
            if not f64:
                out["y" + mname] = y
                out["target" + mname] = target
            else:
                assert torch.equal(out["y" + mname], y) and torch.equal(out["target" + mname], target)
            for key, (norm, eps) in EPS.items():
                adv, trace, fooled, found = fab_run(model, xs, y, norm, eps, f64)
                suffix = "_f64" if f64 else ""
                stem = f"fab_{key}{mname}"
                out[f"fab_{key}_adv{mname}{suffix}"] = adv
                out[f"{stem}_x1trace{suffix}"] = trace
                out[f"{stem}_fooled{suffix}"] = fooled.to(torch.uint8)
                dist = norm_of(norm, adv - xs)
                out[f"{stem}_norm{suffix}"] = dist
                out[f"{stem}_found{suffix}"] = found
                with torch.no_grad():
                    found_adv = model(found).argmax(1) != y
                fdist = norm_of(norm, found - xs)
                print(f"{stem}{suffix}: fooled {fooled.int().tolist()} norms "
                      f"{[round(v, 4) for v in dist.tolist()]} (eps {eps:.4f}); before the eps test: "
                      f"adversarial {found_adv.int().tolist()} norms {[round(v, 4) for v in fdist.tolist()]}")
    torch.set_default_dtype(torch.float32)


def main():
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    out = {}
    projections(g, out)
    fab_runs(g, out)
    save_file({k: v.contiguous() for k, v in out.items()}, OUT)
    back = load_file(OUT)
    assert set(back) == set(out) and all(torch.equal(back[k], out[k]) for k in out)
    print(f"wrote {OUT}: {len(out)} tensors")


if __name__ == "__main__":
    main()

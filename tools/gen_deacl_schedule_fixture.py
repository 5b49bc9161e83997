"""Writes tests/fixtures/defense/deacl_study_lr.json: the learning rate of every epoch under the
study's DeACL schedule, as pl_bolts' own LinearWarmupCosineAnnealingLR computes it (run by hand;
output committed).

    /work/pyenv/bin/pip download --no-deps -d /tmp/plb pytorch-lightning-bolts==0.3.2
    (cd /tmp/plb && unzip -o -q pytorch_lightning_bolts-0.3.2-py3-none-any.whl)
    /work/pyenv/bin/python tools/gen_deacl_schedule_fixture.py /tmp/plb

The study (layer6ai-labs/ssl-robustness: fine_tune/deacl/deacl.py, configure_optimizers; conf/task/deacl.yaml)
builds `LinearWarmupCosineAnnealingLR(optimizer, warmup_epochs=10, max_epochs=101,
warmup_start_lr=0.003, eta_min=0)` around `torch.optim.SGD(lr=0.5, weight_decay=5e-4)` and
Lightning steps it once per epoch. Only the scheduler module is loaded (the package's __init__
pulls in pytorch_lightning).
"""
import importlib.util
import json
import os
import sys

import torch

root = sys.argv[1] if len(sys.argv) > 1 else "/tmp/plb"
spec = importlib.util.spec_from_file_location("plb_lr", os.path.join(root, "pl_bolts", "optimizers", "lr_scheduler.py"))
mod = importlib.util.module_from_spec(spec)
spec.loader.exec_module(mod)


def epochs_lr(lr, warmup_epochs, max_epochs, start):
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=lr, weight_decay=5e-4)
    sched = mod.LinearWarmupCosineAnnealingLR(opt, warmup_epochs=warmup_epochs, max_epochs=max_epochs,
                                              warmup_start_lr=start, eta_min=0.0)
    out = []
    for _ in range(max_epochs):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


cases = [
    dict(name="study", lr=0.5, warmup_epochs=10, epochs=101, start_lr=0.003),
    dict(name="small", lr=0.2, warmup_epochs=3, epochs=7, start_lr=0.01),
]
for c in cases:
    c["lr_per_epoch"] = epochs_lr(c["lr"], c["warmup_epochs"], c["epochs"], c["start_lr"])
out = os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures", "defense", "deacl_study_lr.json")
with open(out, "w") as f:
    json.dump(cases, f, indent=1)
print("wrote", os.path.normpath(out), [c["lr_per_epoch"][:3] for c in cases])

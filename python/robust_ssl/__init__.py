"""robust-ssl from Python: numpy in and out, no torch needed.

Every function runs the `robust-ssl` command's own code; keyword arguments are its flags
(``num_heads=4`` is ``--num-heads 4``, ``random_start=False`` is ``--no-random-start``), with the
same defaults and checks, so a result here equals the command's on the same inputs.

    import numpy as np, robust_ssl
    enc = robust_ssl.Encoder("dinov2_vits14.pth")
    tokens = enc.embed(images)                 # {"cls": [N, D], "patch": [N, P, D]}
    out = robust_ssl.attack(enc, "probe.safetensors", images, labels, attack="pgd", eps=8/255)
    out["adversarial"], out["per_sample"]      # numpy images, one dict per image
    robust_ssl.run("study.toml", out="runs/study", set={"run.size": 518})
    df = robust_ssl.results("runs/study")      # pandas, one row per cell x predictor x metric
"""

import io
import json
import sys
from fractions import Fraction

import numpy as np

from . import _native

__version__ = _native.__version__
__all__ = ["Encoder", "attack", "run", "results", "__version__"]


def _flag_value(value):
    if isinstance(value, Fraction):
        return f"{value.numerator}/{value.denominator}"
    if isinstance(value, float):
        return repr(value)
    return str(value)


def _flags(**options):
    """Keyword arguments as command-line flags: None is left out, True is the bare flag, False
    of a flag spelled ``--no-X`` by the command (``random_start``) is that flag, a list repeats."""
    out = []
    for key, value in options.items():
        if value is None:
            continue
        flag = "--" + key.replace("_", "-")
        if value is True:
            out.append(flag)
        elif value is False:
            if key == "random_start":
                out.append("--no-random-start")
            elif key in ("ce_scaling",):
                out += [flag, "false"]
        elif isinstance(value, (list, tuple)):
            for v in value:
                out += [flag, _flag_value(v)]
        else:
            out += [flag, _flag_value(value)]
    return out


def _images(images, what="images"):
    """A C-contiguous float32 [N, 3, H, W] array in [0, 1], or a clear exception."""
    a = np.asarray(images)
    if a.dtype != np.float32:
        raise TypeError(f"{what} must be float32 in [0, 1], shape [N, 3, H, W]; got {a.dtype} (use .astype(np.float32), and /255 for bytes)")
    if a.ndim != 4 or a.shape[1] != 3 or 0 in a.shape:
        raise ValueError(f"{what} must have shape [N, 3, H, W] with N, H, W at least 1; got {list(a.shape)}")
    if not np.isfinite(a).all():
        raise ValueError(f"{what} hold NaN or infinite values")
    if a.min() < 0.0 or a.max() > 1.0:
        raise ValueError(f"{what} must lie in [0, 1] (not normalized); they span [{a.min()}, {a.max()}]")
    return np.ascontiguousarray(a)


def _labels(labels, n):
    a = np.asarray(labels)
    if a.shape[:1] != (n,):
        raise ValueError(f"labels must have one entry per image ({n}); got shape {list(a.shape)}")
    if np.issubdtype(a.dtype, np.integer):
        if a.ndim not in (1, 3):
            raise ValueError(f"integer labels are classes [N] or label maps [N, H, W]; got shape {list(a.shape)}")
        if (a < 0).any():
            raise ValueError("labels must be non-negative classes (255: ignored pixel)")
        return np.ascontiguousarray(a, dtype=np.int64)
    if np.issubdtype(a.dtype, np.floating):
        if a.ndim != 3:
            raise ValueError(f"float labels are depths [N, H, W] in metres; got shape {list(a.shape)}")
        if not np.isfinite(a).all() or (a < 0).any():
            raise ValueError("depth labels must be finite metres, 0 where unmeasured")
        return np.ascontiguousarray(a, dtype=np.float32)
    raise TypeError(f"labels must be integers (classes, label maps) or floats (depths); got {a.dtype}")


class Encoder:
    """An encoder loaded from a checkpoint (official .pth, timm / Hugging Face .safetensors,
    ONNX, or a model folder). Options are the command's model flags: ``arch``, ``num_heads``,
    ``pos_resize``, ``backbone``, ``precision``."""

    def __init__(self, path, **load_options):
        self.path = str(path)
        self._native = _native.Encoder(["--checkpoint", self.path] + _flags(**load_options))

    @property
    def flags(self):
        return list(self._native.flags)

    def embed(self, images, batch_size=8):
        """CLS [N, D] and patch tokens [N, P, D] (after the final norm) of float32 images
        [N, 3, H, W] in [0, 1] (not normalized; sides multiples of the patch size)."""
        cls, patch = self._native.embed(_images(images), int(batch_size))
        return {"cls": cls, "patch": patch}

    def info(self):
        """What the checkpoint holds and how it was read (``robust-ssl inspect --json``)."""
        return json.loads(self._native.info())

    def __repr__(self):
        info = self.info()
        return f"Encoder({self.path!r}, arch={info.get('arch')!r})"


def attack(encoder, head, images, labels, attack="pgd", eps=Fraction(8, 255), task=None, **options):
    """Attacks ``images`` (float32 [N, 3, H, W] in [0, 1]) with their ``labels`` (int classes
    [N], int label maps [N, H, W], or float32 depths [N, H, W]) through ``encoder`` and the head
    file ``head`` (from ``train-head``), as ``robust-ssl attack`` does, without transforms.
    ``task`` defaults to the head's; other options are the command's flags (``steps``,
    ``norm``, ``step_size``, ``restarts``, ``random_start``, ``seed``, ``batch_size``,
    ``embed_target``, ``embed_distance``, ``iterate``, ``protocol``, ...).

    Returns a dict: ``adversarial`` and ``delta`` (numpy, like ``images``), ``per_sample`` (one
    dict per image: its index and its figures on the clean and the attacked input), and the
    command's report (``clean``, ``adversarial_metrics``, ``sanity``, ``config``, ...)."""
    if not isinstance(encoder, Encoder):
        raise TypeError("encoder must be a robust_ssl.Encoder")
    x = _images(images)
    y = _labels(labels, x.shape[0])
    if task is None:
        task = _head_task(head)
    flags = encoder.flags + _flags(task=task, head=str(head), attack=attack, eps=eps, json=True, **options)
    text, adversarial, delta = _native.attack(flags, x, y)
    report = json.loads(text)
    out = {"adversarial": adversarial, "delta": delta, "per_sample": report.pop("per_sample")}
    out["adversarial_metrics"] = report.pop("adversarial")
    out.update(report)
    return out


def _head_task(head):
    """The task a head file was trained for (its metadata, beside it or in its header)."""
    import struct

    with open(head, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
    meta = header.get("__metadata__", {})
    for value in meta.values():
        try:
            parsed = json.loads(value)
        except (TypeError, ValueError):
            continue
        if isinstance(parsed, dict) and "task" in parsed:
            return parsed["task"]
    raise ValueError(f"{head}: no task in the head file's metadata; pass task='cls', 'seg' or 'depth'")


def _toml(value):
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, Fraction):
        return json.dumps(f"{value.numerator}/{value.denominator}")
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return json.dumps(str(value))


def run(experiment, out=None, shard=None, set=None, unshared=False):
    """Runs an experiment file (or one shard, ``shard="I/N"``) into its run folder (default
    ``runs/STEM``), resuming whatever a killed run left; ``set`` overrides values of the file
    (``{"run.size": 518, "attack.0.eps": ["4/255"]}``, as ``--set``). Returns
    ``{"run_dir", "store", "summary"}``."""
    argv = [str(experiment)] + _flags(out=None if out is None else str(out), shard=shard, unshared=unshared)
    for path, value in (set or {}).items():
        argv += ["--set", f"{path}={_toml(value)}"]
    return json.loads(_native.run(argv))


def results(run_dir, per_sample=False):
    """A run's results as a pandas DataFrame in the long format of ``robust-ssl export``: one
    row per cell x predictor (clean, adversarial, baseline) x metric, every setting a column.
    ``per_sample=True``: one row per attack cell x image x predictor x figure
    (``export --format per-sample``)."""
    import pandas as pd

    return pd.read_csv(io.StringIO(_native.export_csv(str(run_dir), bool(per_sample))))


def _main():
    """The ``robust-ssl`` command (installed on the PATH by pip)."""
    sys.exit(_native.cli(sys.argv[1:]))

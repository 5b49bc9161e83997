"""The Python API against the `robust-ssl` command that pip put on the PATH beside it: the same
inputs give the same outputs, bit for bit; bad input raises an exception with the message."""

import csv
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

import robust_ssl

ROOT = Path(__file__).resolve().parents[2]
TINY = str(ROOT / "tests/fixtures/encoder/dinov2_official.pth")
CIFAR = f"cifar10:{ROOT / 'tests/fixtures/data/cifar-10-batches-bin'}"


def command():
    """The installed command (the venv's bin folder), else the module's entry point."""
    exe = shutil.which("robust-ssl", path=os.path.dirname(sys.executable))
    return [exe] if exe else [sys.executable, "-c", "import robust_ssl; robust_ssl._main()"]


def cli(*args):
    out = subprocess.run(command() + [str(a) for a in args], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return out.stdout


@pytest.fixture(scope="module")
def encoder():
    return robust_ssl.Encoder(TINY, num_heads=4)


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(0).random((5, 3, 28, 28), dtype=np.float32)


@pytest.fixture(scope="module")
def head(tmp_path_factory):
    path = tmp_path_factory.mktemp("head") / "probe.safetensors"
    cli("train-head", "--task", "cls", "--checkpoint", TINY, "--num-heads", "4", "--dataset", CIFAR, "--size", "28",
        "--epochs", "20", "--lr", "5e-2", "--out", path, "--cache-dir", path.parent)
    return path


def test_the_command_is_on_the_path():
    assert cli("--version").strip() == f"robust-ssl {robust_ssl.__version__}"


def test_embed_equals_the_command(encoder, images, tmp_path):
    tokens = encoder.embed(images, batch_size=2)
    assert tokens["cls"].shape == (5, 64) and tokens["patch"].shape == (5, 4, 64)
    assert tokens["cls"].dtype == np.float32
    save_file({"images": images}, str(tmp_path / "in.safetensors"))
    cli("embed", "--checkpoint", TINY, "--num-heads", "4", "--input", tmp_path / "in.safetensors",
        "--output", tmp_path / "out.safetensors", "--batch-size", "2")
    want = load_file(str(tmp_path / "out.safetensors"))
    assert np.array_equal(tokens["cls"], want["cls"]) and np.array_equal(tokens["patch"], want["patch"])
    info = encoder.info()
    assert info["file"].endswith("dinov2_official.pth") and info["format"]


def test_attack_equals_the_command(encoder, images, head, tmp_path):
    labels = np.array([3, 1, 4, 1, 5], dtype=np.int64)
    out = robust_ssl.attack(encoder, head, images, labels, attack="pgd", eps="8/255", steps=3, batch_size=2, seed=7)
    assert out["adversarial"].shape == images.shape and out["adversarial"].dtype == np.float32
    assert np.abs(out["delta"]).max() <= 8 / 255 + 1e-6
    assert np.array_equal(out["adversarial"] - out["delta"], images) or np.allclose(out["adversarial"] - out["delta"], images, atol=1e-6)
    assert len(out["per_sample"]) == 5 and out["per_sample"][0]["index"] == 0

    save_file({"images": images, "labels": labels}, str(tmp_path / "in.safetensors"))
    report = json.loads(cli(
        "attack", "--task", "cls", "--head", head, "--checkpoint", TINY, "--num-heads", "4",
        "--dataset", f"arrays:{tmp_path / 'in.safetensors'}", "--transforms", "", "--attack", "pgd", "--eps", "8/255",
        "--steps", "3", "--batch-size", "2", "--seed", "7", "--json", "--save-adversarial", tmp_path / "adv.safetensors"))
    saved = load_file(str(tmp_path / "adv.safetensors"))
    assert np.array_equal(out["adversarial"], saved["images"]) and np.array_equal(out["delta"], saved["delta"])
    assert np.array_equal(saved["labels"], labels)
    assert out["per_sample"] == report["per_sample"]
    assert out["clean"] == report["clean"] and out["adversarial_metrics"] == report["adversarial"]
    assert out["sanity"] == report["sanity"] and out["config"] == report["config"]
    # eps as the float 8/255 (passed as its shortest decimal) is the very same budget.
    again = robust_ssl.attack(encoder, head, images, labels, attack="pgd", eps=8 / 255, steps=3, batch_size=2, seed=7)
    assert np.array_equal(again["adversarial"], out["adversarial"]) and again["config"] == out["config"]


def test_non_contiguous_arrays_are_read_as_their_values(encoder, images):
    wide = np.random.default_rng(1).random((5, 3, 28, 56), dtype=np.float32)
    view = wide[:, :, :, ::2]
    assert not view.flags["C_CONTIGUOUS"]
    got, want = encoder.embed(view), encoder.embed(np.ascontiguousarray(view))
    assert np.array_equal(got["cls"], want["cls"])


def test_bad_input_raises_with_the_message(encoder, images, head):
    with pytest.raises(TypeError, match="float32"):
        encoder.embed(images.astype(np.float64))
    with pytest.raises(ValueError, match=r"\[N, 3, H, W\]"):
        encoder.embed(images[:, 0])
    bad = images.copy()
    bad[0, 0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        encoder.embed(bad)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        encoder.embed(images * 255)
    with pytest.raises(RuntimeError, match="multiples of the patch size"):
        encoder.embed(np.zeros((1, 3, 30, 30), np.float32))
    with pytest.raises(RuntimeError, match="no-such.pth"):
        robust_ssl.Encoder("/no-such.pth")
    with pytest.raises(ValueError, match="colour"):
        robust_ssl.Encoder(TINY, colour="red")
    with pytest.raises(ValueError, match="one entry per image"):
        robust_ssl.attack(encoder, head, images, np.zeros(3, np.int64))
    with pytest.raises(ValueError, match="'mystery'"):
        robust_ssl.attack(encoder, head, images, np.zeros(5, np.int64), attack="mystery")


def test_run_and_results_equal_the_export(tmp_path):
    exp = tmp_path / "tiny.toml"
    exp.write_text(f"""name = "tiny"
[run]
size = 28
attack_batch_size = 4

[[encoder]]
name = "tiny"
checkpoint = "{TINY}"
num_heads = 4

[[task]]
name = "cifar"
task = "cls"
train = {{ dataset = "{CIFAR}" }}
eval = {{ dataset = "{CIFAR}", split = "test" }}
heads = [{{ epochs = 5, batch_size = 4 }}]

[[attack]]
kinds = ["embed", "task"]
eps = ["8/255"]
steps = 2
""")
    done = robust_ssl.run(exp, out=tmp_path / "run", set={"attack.0.eps": ["2/255", "8/255"], "attack.0.norm": "Linf"})
    assert done["summary"]["items_run"] == done["summary"]["items_in_shard"] > 0
    df = robust_ssl.results(tmp_path / "run")
    rows = list(csv.DictReader(io.StringIO(cli("export", tmp_path / "run"))))
    assert len(df) == len(rows) > 0
    assert list(df.columns) == list(rows[0].keys())
    assert sorted(df["eps_text"].dropna().unique()) == ["2/255", "8/255"]
    for (_, got), want in zip(df.iterrows(), rows):
        assert got["key"] == want["key"] and got["predictor"] == want["predictor"] and got["metric"] == want["metric"]
        assert float(got["value"]) == float(want["value"])
    per = robust_ssl.results(tmp_path / "run", per_sample=True)
    want = list(csv.DictReader(io.StringIO(cli("export", tmp_path / "run", "--format", "per-sample"))))
    assert len(per) == len(want) > 0 and set(per["predictor"]) == {"clean", "adversarial"}
    events = [json.loads(line) for line in (tmp_path / "run" / "events.jsonl").read_text().splitlines()]
    assert events[0]["event"] == "start" and events[-1]["event"] == "end"

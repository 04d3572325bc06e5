"""The writers: atomic, and the same bytes for the same content whatever the path or process."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import pytest
import torch
from safetensors.torch import load_file

from mnist_pipeline import atomic
from mnist_pipeline.model import LeNet5, load_model, save_model
from tests.conftest import ROOT


def _same_bytes_in_two_places(tmp_path: Path, write, name_a: str, name_b: str) -> bytes:
    a, b = tmp_path / "one" / name_a, tmp_path / "two" / "deeper" / name_b
    write(a)
    write(b)
    assert a.read_bytes() == b.read_bytes()
    assert not list(a.parent.glob(".*.tmp")), "no temp file is left behind"
    return a.read_bytes()


def test_json_is_canonical(tmp_path: Path) -> None:
    atomic.write_json(tmp_path / "a.json", {"b": 1, "a": {"y": 2.5, "x": [1, 2]}})
    atomic.write_json(tmp_path / "sub" / "b.json", {"a": {"x": [1, 2], "y": 2.5}, "b": 1})
    assert (tmp_path / "a.json").read_bytes() == (tmp_path / "sub" / "b.json").read_bytes()
    assert (tmp_path / "a.json").read_text().endswith("}\n")


def test_model_files_do_not_depend_on_their_name(tmp_path: Path) -> None:
    torch.manual_seed(0)
    net = LeNet5()
    data = _same_bytes_in_two_places(
        tmp_path, lambda p: save_model(net, p, {"mean": 0.1}), "lenet5.pt", "other.pt"
    )
    assert b"lenet5" not in data and b".tmp" not in data  # torch.save's archive folder
    back, meta = load_model(tmp_path / "one" / "lenet5.pt")
    assert meta == {"mean": 0.1}
    for k, v in net.state_dict().items():
        assert torch.equal(back.state_dict()[k], v)


def test_safetensors_header_is_canonical(tmp_path: Path) -> None:
    tensors = {
        "labels": np.arange(5, dtype=np.int64),
        "images": np.random.default_rng(0).random((5, 1, 2, 2), dtype=np.float32),
    }
    meta = {"std": "0.3", "mean": "0.1", "z": "last", "a": "first"}
    # The library orders the metadata by a hash map seeded per call: many tries, one result.
    variants = {atomic.safetensors_bytes(tensors, meta) for _ in range(20)}
    assert len(variants) == 1
    _same_bytes_in_two_places(
        tmp_path, lambda p: atomic.write_safetensors(p, tensors, meta), "x.safetensors", "y.st"
    )
    back = load_file(str(tmp_path / "one" / "x.safetensors"))  # as the stages read it
    assert torch.equal(back["images"], torch.from_numpy(tensors["images"]))
    assert torch.equal(back["labels"], torch.from_numpy(tensors["labels"]))


def test_safetensors_bytes_are_the_same_in_another_process(tmp_path: Path) -> None:
    code = (
        "import sys, numpy as np; from mnist_pipeline import atomic; "
        "sys.stdout.buffer.write(atomic.safetensors_bytes({'t': np.ones(3, np.float32)}, "
        "{'b': '2', 'a': '1', 'c': '3'}))"
    )
    runs = {
        subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True).stdout
        for _ in range(2)
    }
    assert len(runs) == 1 and len(next(iter(runs))) > 8


def test_png_has_no_software_stamp(tmp_path: Path) -> None:
    drawn = []

    def plot(path: Path) -> None:
        fig, ax = plt.subplots(figsize=(2, 2))
        ax.plot([0, 1], [1, 0])
        atomic.write_figure(path, fig, dpi=50)
        drawn.append(fig.number)

    data = _same_bytes_in_two_places(tmp_path, plot, "a.png", "b.png")
    assert data.startswith(b"\x89PNG") and b"matplotlib" not in data.lower()
    # Closed: a stage that plots in a loop does not leak figures.
    assert not set(drawn) & set(plt.get_fignums())


def test_a_failed_write_leaves_the_old_file(tmp_path: Path) -> None:
    target = tmp_path / "out.json"
    atomic.write_json(target, {"old": True})
    with pytest.raises(TypeError), atomic.atomic_path(target) as tmp:
        tmp.write_text("half")
        raise TypeError("interrupted")
    assert target.read_text() == atomic.json_text({"old": True})
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]

"""The prepare stage: seeded validation split, train-set normalization, exact round trip."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from mnist_pipeline import errors
from mnist_pipeline.data import mnist_files
from mnist_pipeline.data.dataset import load_normalization, load_split, split_indices
from stages import prepare
from testing.synthetic import make_images
from tests.conftest import ROOT


def test_split_is_seeded_disjoint_and_complete() -> None:
    tr, va = split_indices(100, 10, seed=3)
    assert len(va) == 10 and len(tr) == 90
    assert set(tr).isdisjoint(va) and set(tr) | set(va) == set(range(100))
    tr2, va2 = split_indices(100, 10, seed=3)
    np.testing.assert_array_equal(tr, tr2)
    np.testing.assert_array_equal(va, va2)
    assert not np.array_equal(va, split_indices(100, 10, seed=4)[1])


def test_prepared_splits(prepared: Path) -> None:
    meta = json.loads((prepared / "meta.json").read_text())
    assert meta["sizes"] == {"train": 500, "val": 100, "test": 200}
    train, val, test = (load_split(prepared, s) for s in ("train", "val", "test"))
    assert train.images.shape == (500, 1, 28, 28) and train.images.dtype == torch.float32
    assert train.labels.dtype == torch.int64 and set(train.labels.tolist()) <= set(range(10))
    # Normalized with the training split's statistics only.
    assert abs(float(train.images.mean())) < 1e-4
    assert abs(float(train.images.std()) - 1.0) < 1e-2
    assert abs(float(val.images.mean())) > 1e-4 or abs(float(test.images.mean())) > 1e-4


def test_test_split_is_the_original_test_file_in_order(prepared: Path) -> None:
    images, labels = make_images(200, seed=2)  # what tests/synthetic.py wrote as t10k
    test = load_split(prepared, "test")
    norm = load_normalization(prepared)
    np.testing.assert_array_equal(norm.invert(test.images)[:, 0].numpy(), images)
    np.testing.assert_array_equal(test.labels.numpy(), labels)


def test_val_split_comes_from_train_file(prepared: Path) -> None:
    images, _ = make_images(600, seed=1)
    val = load_split(prepared, "val")
    pixels = load_normalization(prepared).invert(val.images)[:, 0].numpy()
    train_rows = {img.tobytes() for img in images}
    assert all(img.tobytes() in train_rows for img in pixels)


def test_main_writes_outputs_and_reuses_downloads(
    tmp_path: Path, params_file: Path, mirror_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def argv(out: Path) -> list[str]:
        return [
            *("--params", str(params_file), "--raw-dir", str(tmp_path / "raw")),
            *("--out", str(out), "--provenance", str(out.parent / "provenance.json")),
        ]

    assert errors.run(prepare.main, argv(tmp_path / "prepared")) == 0
    assert sorted(p.name for p in (tmp_path / "prepared").iterdir()) == [
        "meta.json",
        "test.safetensors",
        "train.safetensors",
        "val.safetensors",
    ]
    record = json.loads((tmp_path / "provenance.json").read_text())
    assert record["stage"] == "prepare" and record["mirrors"] == [str(mirror_env)]
    assert {Path(p).name for p in record["inputs_md5"]} == {name for name, _ in mnist_files.FILES}
    # Second run, into another folder: verified raw files are reused, even with the mirror
    # gone, and every prepared file comes out byte for byte the same.
    monkeypatch.setenv("MNIST_MIRROR", str(tmp_path / "gone"))
    assert errors.run(prepare.main, argv(tmp_path / "elsewhere" / "again")) == 0
    assert not list(tmp_path.glob(".prepared*")), "no temporary folder left behind"
    for f in (tmp_path / "prepared").iterdir():
        assert f.read_bytes() == (tmp_path / "elsewhere" / "again" / f.name).read_bytes(), f.name


def test_main_without_mirror_fails_cleanly(
    tmp_path: Path,
    params_file: Path,
    mirror_env: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("MNIST_MIRROR", str(tmp_path / "nowhere"))
    out = tmp_path / "prepared"
    argv = ["--params", str(params_file), "--raw-dir", str(tmp_path / "raw"), "--out", str(out)]
    assert errors.run(prepare.main, argv) == 1
    err = capsys.readouterr().err
    assert mnist_files.FILES[0][0] in err and "Set MNIST_MIRROR" in err
    assert not out.exists()


def test_prepare_runs_without_torch_or_lightning(
    tmp_path: Path, params_file: Path, mirror_env: Path
) -> None:
    """The stage process loads numpy, not torch, torchvision or Lightning: it starts fast."""
    argv = ["--params", str(params_file), "--raw-dir", str(tmp_path / "raw")]
    argv += ["--out", str(tmp_path / "out"), "--provenance", str(tmp_path / "run.json")]
    code = (
        f"import sys; from stages import prepare; prepare.main({argv!r}); "
        "heavy = ('torch', 'torchvision', 'pytorch_lightning'); "
        "print(sorted(m for m in heavy if m in sys.modules))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().splitlines()[-1] == "[]"
    assert (tmp_path / "out" / "train.safetensors").is_file()
    assert json.loads((tmp_path / "run.json").read_text())["stage"] == "prepare"


def test_a_killed_prepare_leaves_no_temporary_folder_for_good_and_one_runs_at_a_time(
    tmp_path: Path, params_file: Path, mirror_env: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """What a SIGKILLed prepare leaves (`.prepared.<random>.tmp`, 121 MB on the real MNIST) is
    cleared by the next run; a copy still running (its `dvc` killed) keeps a second out."""
    out = tmp_path / "prepared"
    left = tmp_path / ".prepared.k1ll3d.tmp"
    left.mkdir()
    (left / "train.safetensors").write_bytes(b"half")
    argv = [
        *("--params", str(params_file), "--raw-dir", str(tmp_path / "raw")),
        *("--out", str(out), "--provenance", str(tmp_path / "provenance.json")),
    ]
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from pathlib import Path; from mnist_pipeline import stage\n"
            "with stage.one_at_a_time(Path(sys.argv[1]), 'prepare'):\n"
            "    print('locked', flush=True); time.sleep(60)",
            str(tmp_path / "provenance.json"),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "locked\n"
        assert errors.run(prepare.main, argv) == 1
        err = capsys.readouterr().err
        assert f"another prepare is already running in these folders (pid {holder.pid}" in err
        assert not out.exists() and left.exists()
    finally:
        holder.kill()
        holder.wait()
    assert errors.run(prepare.main, argv) == 0  # the kernel dropped the dead holder's lock
    assert not list(tmp_path.glob(".prepared.*")), "the stale temporary folder was cleared"

"""The pipeline through `dvc repro`: synthetic data by default, the real MNIST files when slow."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT, tiny_params_dict
from tests.pipeline_repo import copy_repo, dvc


def _ran(output: str) -> set[str]:
    return {line.split("'")[1] for line in output.splitlines() if line.startswith("Running stage")}


def test_dvc_repro_runs_every_stage_then_nothing_then_only_what_changed(
    tmp_path: Path, synthetic_mirror: Path
) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    copy_repo(repo)
    (repo / "params.yaml").write_text(yaml.safe_dump(tiny_params_dict(), sort_keys=False))
    env = {
        "MNIST_MIRROR": str(synthetic_mirror),
        "MNIST_MD5SUMS": str(synthetic_mirror / "MD5SUMS"),
    }
    stages = list(yaml.safe_load((repo / "dvc.yaml").read_text())["stages"])

    assert _ran(dvc(repo, "repro", **env)) == set(stages)
    metrics = json.loads(dvc(repo, "metrics", "show", "--json"))
    acc_keys = json.dumps(metrics)
    assert '"acc"' in acc_keys

    again = dvc(repo, "repro", **env)
    assert _ran(again) == set() and "up to date" in again

    # A train param: train and what follows re-run, prepare does not.
    out = dvc(repo, "exp", "run", "-S", "train.max_epochs=1", **env)
    assert "prepare" not in _ran(out) and {"train", "evaluate"} <= _ran(out)
    exp = json.loads(dvc(repo, "exp", "show", "--json"))
    assert exp, "the experiment is recorded"


@pytest.mark.slow
def test_real_mnist_end_to_end(tmp_path: Path) -> None:
    mirror = os.environ.get("MNIST_MIRROR") or str(ROOT.parent / "shared" / "data" / "mnist")
    if not (Path(mirror) / "train-images-idx3-ubyte.gz").is_file() and "://" not in mirror:
        pytest.skip(f"real MNIST files not found at {mirror}; set MNIST_MIRROR")
    repo = tmp_path / "repo"
    repo.mkdir()
    copy_repo(repo)
    dvc(repo, "repro", MNIST_MIRROR=mirror)
    acc = json.loads((repo / "metrics" / "evaluate.json").read_text())["test"]["acc"]
    assert acc >= 0.99

    start = time.perf_counter()
    again = dvc(repo, "repro", MNIST_MIRROR=mirror)
    assert _ran(again) == set() and "up to date" in again
    assert time.perf_counter() - start < 30

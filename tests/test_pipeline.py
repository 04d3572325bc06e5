"""The pipeline through `dvc repro`: synthetic data by default, the real MNIST files when slow."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from unittest import mock

import pytest
import yaml

from testing.scratch_repo import copy_repo, dvc, git
from testing.scratch_repo import env as pipeline_env
from tests.conftest import ROOT, tiny_params_dict
from tests.test_drift_real import assert_drift_caught


def _ran(output: str) -> set[str]:
    return {line.split("'")[1] for line in output.splitlines() if line.startswith("Running stage")}


# Slow: two full `dvc repro`s on synthetic data, 100 s of the default run's 5 minutes. CI runs
# it with the real-MNIST audit below.
@pytest.mark.slow
def test_dvc_repro_is_byte_identical_in_another_clone_and_reruns_only_what_changed(
    tmp_path: Path, synthetic_mirror: Path
) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    copy_repo(ROOT, repo, replace={"params.yaml": yaml.safe_dump(tiny_params_dict())})
    env = {
        "MNIST_MIRROR": str(synthetic_mirror),
        "MNIST_MD5SUMS": str(synthetic_mirror / "MD5SUMS"),
    }
    stages = list(yaml.safe_load((repo / "dvc.yaml").read_text())["stages"])

    assert _ran(dvc(repo, "repro", **env)) == set(stages)
    metrics = json.loads(dvc(repo, "metrics", "show", "--json"))
    shown = json.dumps(metrics)
    assert '"acc"' in shown and '"fit_time_s"' in shown  # results and measurements
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "the pipeline's outputs")
    lock = (repo / "dvc.lock").read_text()

    # A second copy, cloned from the commit and rebuilt by the audit command: the same bytes.
    audit = subprocess.run(
        [sys.executable, "-m", "pipelines.verify", "--keep", str(tmp_path / "audit")],
        cwd=repo,
        env=pipeline_env(**env),
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert audit.returncode == 0, audit.stdout[-4000:] + audit.stderr[-2000:]
    assert (tmp_path / "audit" / "repo" / "dvc.lock").read_text() == lock
    assert "reproduces byte for byte" in audit.stdout

    again = dvc(repo, "repro", **env)
    assert _ran(again) == set() and "up to date" in again

    # Train again on purpose: the same model, so nothing downstream is out of date.
    assert _ran(dvc(repo, "repro", "-f", "-s", "train", **env)) == {"train"}
    assert "up to date" in dvc(repo, "status", **env)
    assert (repo / "dvc.lock").read_text() == lock

    # A corrupt download is fetched again; the prepared data, and so the rest, stays the same.
    (repo / "data" / "raw" / "train-labels-idx1-ubyte.gz").write_bytes(b"corrupt")
    assert _ran(dvc(repo, "repro", "-f", "-s", "prepare", **env)) == {"prepare"}
    assert "up to date" in dvc(repo, "status", **env)
    assert (repo / "dvc.lock").read_text() == lock

    # An experiment that changes an evaluate param re-runs evaluate alone.
    out = dvc(repo, "exp", "run", "-S", "evaluate.n_misclassified=5", **env)
    assert _ran(out) == {"evaluate"}
    exp = json.loads(dvc(repo, "exp", "show", "--json"))
    assert exp, "the experiment is recorded"


def _start_env(**extra: str) -> dict[str, str]:
    """`pipeline_env` over the environment the tests started with, official checksums."""
    with mock.patch.dict(os.environ, START_ENV, clear=True):
        env = pipeline_env(**extra)
    env.pop("MNIST_MD5SUMS", None)
    return env


# The environment the tests started with, read at collection, before any test runs. Tests
# change their worker's: the flow tests point MNIST_MIRROR and MNIST_MD5SUMS at synthetic files
# for the session, and Lightning's CPU DDP sets OMP_NUM_THREADS. Either would change what the
# audit rebuilds (the thread count changes the weights).
START_ENV = dict(os.environ)
REAL_MIRROR = START_ENV.get("MNIST_MIRROR") or str(ROOT.parent / "shared" / "data" / "mnist")


@pytest.mark.slow
def test_real_mnist_audit_reproduces_the_committed_outputs(tmp_path: Path) -> None:
    """`python -m pipelines.verify` on this checkout's HEAD (a clean clone of main in CI):
    rebuilt from scratch on the real MNIST, every output has the hash `dvc.lock` records."""
    mirror = REAL_MIRROR
    if not (Path(mirror) / "train-images-idx3-ubyte.gz").is_file() and "://" not in mirror:
        missing = f"real MNIST files not found at {mirror}; set MNIST_MIRROR"
        if START_ENV.get("CI") == "true":
            pytest.fail(missing)  # CI must audit the real pipeline, not skip it
        pytest.skip(missing)
    audit = subprocess.run(
        [sys.executable, "-m", "pipelines.verify", "--keep", str(tmp_path / "audit")],
        cwd=ROOT,
        env=_start_env(MNIST_MIRROR=mirror),
        capture_output=True,
        text=True,
        timeout=3600,
    )
    assert audit.returncode == 0, audit.stdout[-6000:] + audit.stderr[-2000:]
    stages = list(yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"])
    assert f"rebuilt {len(stages)} stages in a fresh clone" in audit.stdout
    assert "compute profile: portable" in audit.stdout
    repo = tmp_path / "audit" / "repo"
    # The clone's own evaluation, not the committed file: its run record is the clone's.
    record = json.loads((repo / "provenance" / "evaluate.json").read_text())
    committed = json.loads((ROOT / "provenance" / "evaluate.json").read_text())
    assert record["started"] != committed["started"] or record["host"] != committed["host"]
    acc = json.loads((repo / "metrics" / "evaluate.json").read_text())["test"]["acc"]
    assert acc >= 0.99
    # The rebuilt models and profile catch shifted real digits, and not clean ones.
    assert_drift_caught(repo / "data" / "prepared", repo / "models")

    # Nothing runs again (how long that takes is `python -m benchmarks`' noop figure).
    again = dvc(repo, "repro", MNIST_MIRROR=mirror)
    assert _ran(again) == set() and "up to date" in again

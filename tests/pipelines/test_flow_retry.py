"""The pipeline flow's retries: a training killed mid-epoch resumes on the task's retry and
ends with the bytes of a run that was never killed. In a file of its own, so that it runs
beside the other flow tests rather than after them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from mnist_pipeline.model import load_model
from mnist_pipeline.training.checkpoints import FAIL_ENV
from tests.conftest import tiny_params_dict
from tests.pipelines.conftest import make_repo, run_flow, task_runs
from tests.stage_runs import output_hashes

pytestmark = pytest.mark.usefixtures("prefect_harness", "flow_env")


def test_killed_training_resumes_on_retry_with_the_same_result(
    tmp_path: Path, trained_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    uninterrupted = trained_model.parents[1]  # the train stage's outputs, from the same params
    repo = make_repo(tmp_path / "repo", tmp_path / "remote")
    k = 1  # killed halfway through epoch k+1 (1-based), after k epochs were checkpointed
    monkeypatch.setenv(FAIL_ENV, str(k))
    # Only what the comparison needs: prepare and train.
    state, _ = run_flow(repo, targets=["train"], retries=2, push=False)
    assert state.is_completed(), state.message

    runs = task_runs(str(state.state_details.flow_run_id))
    (train_run,) = [r for r in runs if r.name == "train"]
    assert train_run.run_count == 2  # killed once, retried once
    summary = json.loads((repo / "metrics/train.json").read_text())
    record = json.loads((repo / "provenance/train.json").read_text())
    assert record["resumed_from_epoch"] == k  # the retry started at epoch k+1, not at 1
    assert summary["epochs"] == tiny_params_dict()["train"]["max_epochs"]

    # The DVCLive curves continue across the kill: one row per epoch, the same rows (steps and
    # values) as an uninterrupted run's.
    for curve in ("val/acc.tsv", "val/loss.tsv", "train/loss.tsv"):
        rel = f"dvclive/train/plots/metrics/{curve}"
        resumed, fresh = (repo / rel).read_text(), (uninterrupted / rel).read_text()
        assert resumed == fresh, curve
    assert len((repo / "dvclive/train/plots/metrics/val/acc.tsv").read_text().splitlines()) == (
        1 + summary["epochs"]
    )

    a, _ = load_model(repo / "models/lenet5.pt")
    b, _ = load_model(trained_model)
    for (name, wa), wb in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        torch.testing.assert_close(wa, wb, rtol=0, atol=0, msg=f"{name} differs")
    # Byte for byte: every output DVC hashes for the stage.
    assert output_hashes(repo, ["train"]) == output_hashes(uninterrupted, ["train"])

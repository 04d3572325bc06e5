"""The resumable fit: it resumes only a checkpoint with its fingerprint, refuses one that
would run code, keeps a tuned batch size across a resume, and compiles to a plain model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from mnist_pipeline.data.dataset import load_split
from mnist_pipeline.model import load_model, predict_logits, save_model
from mnist_pipeline.params.schema import parse_params
from mnist_pipeline.training import checkpoints, fit, trainer
from tests.conftest import tiny_params_dict
from tests.stages.conftest import plant_checkpoint

COMPUTE = parse_params(tiny_params_dict()).compute


def test_resume_only_with_matching_fingerprint(
    tmp_path: Path,
    prepared: Path,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    params = parse_params(tiny_params_dict()).train
    params = params.model_copy(update={"max_epochs": 1})
    fit.train(params, COMPUTE, prepared, tmp_path / "ckpt", tmp_path / "live")
    fp = fit.fingerprint(params, COMPUTE, prepared)
    assert checkpoints.find_resumable(tmp_path / "ckpt", fp) == tmp_path / "ckpt" / "last.ckpt"

    other = params.model_copy(update={"seed": params.seed + 1})
    assert fit.fingerprint(other, COMPUTE, prepared) != fp
    # Params that do not change the weights do not block resuming.
    assert (
        fit.fingerprint(params.model_copy(update={"progress_bar": False}), COMPUTE, prepared) == fp
    )
    # How the process computes does (each changes the last bits of each step): the thread
    # count, and the profile (the portable one's pinned kernels against the machine's).
    other_threads = COMPUTE.model_copy(update={"threads": COMPUTE.threads + 1})
    assert fit.fingerprint(params, other_threads, prepared) != fp
    torch.set_num_threads(COMPUTE.threads)
    fast = COMPUTE.model_copy(update={"profile": "fast"})
    assert fit.fingerprint(params, fast, prepared) != fp
    torch.set_num_threads(COMPUTE.threads)
    # So does what `precision: auto` resolves to on other hardware (under the fast profile).
    auto = params.model_copy(update={"precision": "auto", "accelerator": "cpu"})
    monkeypatch.setattr(trainer, "cpu_has_bf16", lambda: True)
    with_bf16 = fit.fingerprint(auto, fast, prepared)
    monkeypatch.setattr(trainer, "cpu_has_bf16", lambda: False)
    assert fit.fingerprint(auto, fast, prepared) != with_bf16
    torch.set_num_threads(COMPUTE.threads)
    # So does another version of a compute library.
    other_env = {"torch": "0.0-other"}
    monkeypatch.setattr(checkpoints.environment, "installed_versions", lambda: other_env)
    assert fit.fingerprint(params, COMPUTE, prepared) != fp
    monkeypatch.undo()
    with caplog.at_level("WARNING"):
        other_fp = fit.fingerprint(other, COMPUTE, prepared)
        assert checkpoints.find_resumable(tmp_path / "ckpt", other_fp) is None
    assert "starting fresh" in caplog.text

    (tmp_path / "ckpt" / "last.ckpt").write_bytes(b"cut short by a kill")
    assert checkpoints.find_resumable(tmp_path / "ckpt", fp) is None
    assert "unreadable" in caplog.text


def test_a_checkpoint_that_would_run_code_is_refused_unread_and_training_starts_fresh(
    tmp_path: Path, prepared: Path, caplog: pytest.LogCaptureFixture
) -> None:
    every = parse_params(tiny_params_dict())
    params, compute = every.train, every.compute
    ckpt_dir = tmp_path / "ckpt"
    # The right fingerprint, as someone who can write to a shared checkpoint folder could copy.
    fp = fit.fingerprint(params, compute, prepared)
    marker = plant_checkpoint(ckpt_dir / checkpoints.LAST, fp)
    _, summary = fit.train(params, compute, prepared, ckpt_dir, tmp_path / "live")
    assert not marker.exists()
    assert "made to run code when unpickled; refused unread" in caplog.text
    assert "starting fresh" in caplog.text
    assert summary["resumed_from_epoch"] is None and summary["epochs"] == params.max_epochs
    # The planted file is gone, replaced by the fresh run's own checkpoint.
    assert checkpoints.saved(ckpt_dir / checkpoints.LAST, "epoch") == params.max_epochs - 1


def test_tuned_batch_size_grows_stays_within_the_split_and_survives_resume(
    tmp_path: Path, prepared: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    params = parse_params(tiny_params_dict()).train
    params = params.model_copy(update={"max_epochs": 2, "tune_batch_size": True})
    n_train = json.loads((prepared / "meta.json").read_text())["sizes"]["train"]
    _, summary = fit.train(params, COMPUTE, prepared, tmp_path / "ckpt", tmp_path / "live")
    # A CPU never runs out of memory on these batches: the tuner doubles up to the split.
    assert params.batch_size < summary["batch_size"] <= n_train
    assert summary["epochs"] == 2
    ckpt = torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=True)
    assert ckpt["MNISTDataModule"] == {"batch_size": summary["batch_size"]}

    # Run again: it resumes from the finished checkpoint, with that batch size and no tuning.
    monkeypatch.setattr(fit, "tune_batch_size", lambda *a: pytest.fail("tuned on resume"))
    _, again = fit.train(params, COMPUTE, prepared, tmp_path / "ckpt", tmp_path / "live")
    assert again["resumed_from_epoch"] == 2
    assert again["batch_size"] == summary["batch_size"]


@pytest.mark.slow  # the compile alone takes about 12 s on 2 cores
def test_compiled_training_saves_a_plain_model(tmp_path: Path, prepared: Path) -> None:
    params = parse_params(tiny_params_dict()).train
    params = params.model_copy(update={"max_epochs": 1, "compile": True})
    net, _ = fit.train(params, COMPUTE, prepared, tmp_path / "ckpt", tmp_path / "live")
    save_model(net, tmp_path / "m.pt")
    back, _ = load_model(tmp_path / "m.pt")  # parameter names as without compile
    test = load_split(prepared, "test")
    assert (predict_logits(back, test.images).argmax(1) == test.labels).float().mean() >= 0.5

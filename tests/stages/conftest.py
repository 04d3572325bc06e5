"""Fixtures the stage tests share: the synthetic models pruned and exported once per worker."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from mnist_pipeline.model import load_model, save_model
from mnist_pipeline.params.schema import parse_params
from mnist_pipeline.pruning import structured as pruning
from stages import export
from tests.conftest import tiny_params_dict
from tests.stage_runs import stage_argv


@pytest.fixture(scope="session")
def pruned_model(tmp_path_factory: pytest.TempPathFactory, trained_model: Path) -> Path:
    """The trained model with half its channels removed (no fine-tuning: speed)."""
    params = parse_params(tiny_params_dict()).prune.structured
    net, meta = load_model(trained_model)
    pruner = pruning.make_structured_pruner(net, params, rounds=1)
    pruning.structured_step(pruner, net, params, train=None)
    path = tmp_path_factory.mktemp("pruned") / "lenet5_pruned.pt"
    save_model(pruning.plain_copy(net), path, meta=meta)
    return path


@pytest.fixture(scope="session")
def exported(
    tmp_path_factory: pytest.TempPathFactory,
    trained_model: Path,
    pruned_model: Path,
    prepared: Path,
) -> Path:
    """The export stage's outputs for the synthetic models, in a folder laid out as the
    repository is (`models/lenet5.onnx`, `metrics/export.json`...)."""
    tmp = tmp_path_factory.mktemp("exported")
    params = tmp / "params.yaml"
    params.write_text(yaml.safe_dump(tiny_params_dict(), sort_keys=False))
    inputs = {"model": trained_model, "pruned": pruned_model, "data": prepared}
    export.main(stage_argv("export", params, tmp, **inputs))
    return tmp


class RunsCode:
    """Unpickling this creates `marker`: a stand-in for a checkpoint planted to run code."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (open, (str(self.marker), "w"))


def plant_checkpoint(path: Path, fp: str, **entries: object) -> Path:
    """Write a checkpoint at `path` with fingerprint `fp` whose pickle would create a marker
    file next to it; returns the marker's path (which must never come to exist)."""
    import torch

    marker = path.parent / "code-ran"
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"fingerprint": fp, **entries, "payload": RunsCode(marker)}, path)
    return marker

"""A stage imports what its work uses, when it uses it (docs/speed.md, "Start-up").

Each check runs in a fresh process: this one has imported everything already.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mnist_pipeline.stage import STARTUP_MARK
from tests.conftest import ROOT
from tests.stage_runs import stage_argv, stage_env

STAGES = sorted(p.stem for p in (ROOT / "stages").glob("*.py") if p.stem != "__init__")
# Seconds each on 2 cores, and used by no stage's start: the fit's, the export's, the plots'.
HEAVY = (
    "pytorch_lightning",
    "lightning",
    "lightning_fabric",
    "torchmetrics",
    "torchvision",
    "torchaudio",
    "scipy",
    "matplotlib",
    "onnx",
    "onnxruntime",
    "onnxscript",
    "torch_pruning",
    "dvc",
    "dvclive",
    "prefect",
)


def loaded_after(code: str, env: dict[str, str] | None = None) -> list[str]:
    """The HEAVY libraries in sys.modules once `code` ran in a fresh interpreter."""
    listed = f"[m for m in {HEAVY!r} if m in sys.modules]"
    probe = f"{code}\nimport json, sys\nprint(json.dumps({listed}))"
    done = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        env=env or {**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("name", STAGES)
def test_importing_a_stage_loads_no_heavy_library(name: str) -> None:
    assert loaded_after(f"import stages.{name}") == []


def test_evaluate_runs_without_torchmetrics_torchvision_or_lightning(
    tmp_path: Path, params_file: Path, trained_model: Path, prepared: Path
) -> None:
    """Its scores are written out (mnist_pipeline.evaluation.metrics): torchmetrics would bring
    every domain it has; matplotlib is loaded, for the plots."""
    argv = stage_argv("evaluate", params_file, tmp_path, model=trained_model, data=prepared)
    code = f"from stages import evaluate\nevaluate.main({argv!r})"
    loaded = loaded_after(code)
    assert "matplotlib" in loaded  # the probe sees what the run loaded
    assert not {"torchmetrics", "torchvision", "pytorch_lightning", "scipy"} & set(loaded)
    assert (tmp_path / "metrics/evaluate.json").is_file()


def test_the_startup_mark_stops_a_stage_where_its_work_begins(
    tmp_path: Path, params_file: Path, trained_model: Path, prepared: Path, synthetic_mirror: Path
) -> None:
    """What benchmarks/startup.py times: `python -m stages.evaluate` up to its work, which it
    then does not do; torch loaded (the compute set-up), the plots' matplotlib not yet."""
    mark = tmp_path / "mark.json"
    argv = stage_argv("evaluate", params_file, tmp_path, model=trained_model, data=prepared)
    env = {**stage_env(synthetic_mirror), STARTUP_MARK: str(mark)}
    done = subprocess.run(
        [sys.executable, "-m", "stages.evaluate", *argv],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    got = json.loads(mark.read_text())
    assert got["stage"] == "evaluate" and isinstance(got["monotonic"], float)
    assert "torch" in got["modules"] and "matplotlib" not in got["modules"]
    assert not (tmp_path / "metrics").exists()
    assert not (tmp_path / "provenance/evaluate.json").exists()

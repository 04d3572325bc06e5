"""A serving install: only the serving set of `uv.lock` (`uv sync --no-default-groups`), no
training stack, and `mnist-serve` and `mnist-predict` classify real digits with it."""

from __future__ import annotations

import io
import os
import subprocess
from pathlib import Path

import httpx
import pytest
from PIL import Image

from benchmarks.serving import start_server
from tests.conftest import ROOT, RealDigits

pytestmark = pytest.mark.slow
# What a serving install holds beyond Python's own: the `dependencies` of pyproject.toml.
TRAINING_STACK = ("torch", "lightning", "pytorch_lightning", "dvc", "gto", "prefect", "onnx")


@pytest.fixture(scope="module")
def serving_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A virtual environment with the serving set of `uv.lock`, and the project as a wheel
    installs it: no source tree on its path."""
    venv = tmp_path_factory.mktemp("serving") / "venv"
    env = {**os.environ, "UV_PROJECT_ENVIRONMENT": str(venv), "UV_NO_PROGRESS": "1"}
    subprocess.run(
        ["uv", "sync", "--locked", "--no-default-groups", "--no-editable"],
        cwd=ROOT,
        env=env,
        check=True,
        capture_output=True,
    )
    return venv


def _png(pixels: object) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")  # type: ignore[arg-type]
    return buf.getvalue()


def test_the_serving_set_has_no_training_stack(serving_venv: Path) -> None:
    for name in TRAINING_STACK:
        found = subprocess.run(
            [serving_venv / "bin/python", "-c", f"import {name}"], capture_output=True, text=True
        )
        assert found.returncode != 0 and "ModuleNotFoundError" in found.stderr, name


def test_mnist_serve_and_predict_classify_real_digits(
    serving_venv: Path, real_digits: RealDigits, tmp_path: Path
) -> None:
    files = []
    for i in range(20):
        files.append(tmp_path / f"{i}.png")
        files[-1].write_bytes(_png(real_digits.digits[i]))
    out = subprocess.run(
        [serving_venv / "bin/mnist-predict", "--model", real_digits.model, *files],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stderr
    predicted = [int(line.split(": ")[1].split()[0]) for line in out.stdout.splitlines()]
    assert sum(p == y for p, y in zip(predicted, real_digits.labels[:20], strict=True)) >= 18

    served = start_server(
        real_digits.model,
        [],
        log=tmp_path / "serve.log",
        command=[str(serving_venv / "bin/mnist-serve")],
    )
    try:
        answer = httpx.post(
            f"{served.url}/predict",
            files=[("file", (f.name, f.read_bytes(), "image/png")) for f in files],
            timeout=30,
        )
        assert answer.status_code == 200, answer.text
        assert [p["digit"] for p in answer.json()] == predicted
    finally:
        served.stop()

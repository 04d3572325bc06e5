"""Fixtures of the predict and server tests: an exported model and a few real-looking digits."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from mnist_pipeline.dataset import load_normalization, load_split
from mnist_pipeline.model import RawPixelsLeNet5, load_model
from mnist_pipeline.params import parse_params
from stages import export
from tests.conftest import tiny_params_dict


@pytest.fixture(scope="session")
def onnx_model(tmp_path_factory: pytest.TempPathFactory, trained_model: Path) -> Path:
    params = parse_params(tiny_params_dict()).export
    net, meta = load_model(trained_model)
    norm = export.Normalization(mean=meta["mean"], std=meta["std"])
    path = tmp_path_factory.mktemp("onnx") / "lenet5.onnx"
    export.export_onnx(
        RawPixelsLeNet5(net, norm), path, params, export.metadata(params, norm, net)
    )
    return path


@pytest.fixture(scope="session")
def digits(prepared: Path) -> list[np.ndarray]:
    """Four test-set digits as uint8 (28, 28) pixels, light on dark like MNIST."""
    test = load_split(prepared, "test")
    pixels = load_normalization(prepared).invert(test.images[:4])
    return [p[0].numpy() for p in pixels]

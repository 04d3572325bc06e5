"""Shared fixtures: a synthetic mirror, prepared data and tiny params, built once per session."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import yaml

from mnist_pipeline.compute import pin_environment
from mnist_pipeline.params.schema import Params, load_params, parse_params

ROOT = Path(__file__).resolve().parents[1]
# Before anything imports torch: the tests that call a stage's `main` in this process compute
# as the repo's params say, as `python -m stages.<name>` does (mnist_pipeline.compute).
pin_environment(load_params(ROOT / "params.yaml").compute)

from testing.synthetic import write_mirror  # noqa: E402
from testing.tiny import shrink  # noqa: E402


def tiny_params_dict() -> dict:
    """The repo's params.yaml, shrunk to run in seconds on the synthetic data."""
    return shrink(yaml.safe_load((ROOT / "params.yaml").read_text()))


@pytest.fixture(scope="session", autouse=True)
def model_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Registered versions fetched without `--cache-dir` land in a temporary folder, not in
    the user's ~/.cache/mnist-pipeline/models: tests write only under their temp folders."""
    from mnist_pipeline.serving import model_ref

    folder = tmp_path_factory.mktemp("model-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(model_ref, "default_cache_dir", lambda: folder)
        yield folder


@pytest.fixture(scope="session")
def synthetic_mirror(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with four synthetic MNIST .gz files and their MD5SUMS."""
    folder = tmp_path_factory.mktemp("mirror")
    write_mirror(folder)
    return folder


@pytest.fixture
def mirror_env(synthetic_mirror: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point prepare at the synthetic mirror and its checksums."""
    monkeypatch.setenv("MNIST_MIRROR", str(synthetic_mirror))
    monkeypatch.setenv("MNIST_MD5SUMS", str(synthetic_mirror / "MD5SUMS"))
    return synthetic_mirror


@pytest.fixture
def tiny_params() -> Params:
    return parse_params(tiny_params_dict())


@pytest.fixture
def params_file(tmp_path: Path) -> Path:
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(tiny_params_dict(), sort_keys=False))
    return path


@pytest.fixture(scope="session")
def prepared(tmp_path_factory: pytest.TempPathFactory, synthetic_mirror: Path) -> Path:
    """The synthetic data run through `prepare`, shared read-only by the session."""
    from stages import prepare

    root = tmp_path_factory.mktemp("prepared")
    mp = pytest.MonkeyPatch()
    mp.setenv("MNIST_MIRROR", str(synthetic_mirror))
    mp.setenv("MNIST_MD5SUMS", str(synthetic_mirror / "MD5SUMS"))
    try:
        prepare.prepare(parse_params(tiny_params_dict()).prepare, root / "raw", root / "prepared")
    finally:
        mp.undo()
    return root / "prepared"


@pytest.fixture(scope="session")
def trained_model(tmp_path_factory: pytest.TempPathFactory, prepared: Path) -> Path:
    """A LeNet-5 trained for two epochs on the synthetic data by the `train` stage's main."""
    from stages import train
    from tests.stage_runs import stage_argv

    root = tmp_path_factory.mktemp("trained")
    (root / "params.yaml").write_text(yaml.safe_dump(tiny_params_dict(), sort_keys=False))
    train.main(stage_argv("train", root / "params.yaml", root, data=prepared))
    return root / "models/lenet5.pt"


@pytest.fixture(scope="session")
def onnx_model(tmp_path_factory: pytest.TempPathFactory, trained_model: Path) -> Path:
    """`trained_model` exported to ONNX as the `export` stage does (raw 0-255 pixels in)."""
    from mnist_pipeline.data.dataset import Normalization
    from mnist_pipeline.model import RawPixelsLeNet5, load_model
    from mnist_pipeline.onnx import export as onnx_export

    params = parse_params(tiny_params_dict()).export
    net, meta = load_model(trained_model)
    norm = Normalization(mean=meta["mean"], std=meta["std"])
    path = tmp_path_factory.mktemp("onnx") / "lenet5.onnx"
    onnx_export.export_onnx(
        RawPixelsLeNet5(net, norm), path, params, onnx_export.metadata(params, norm, net)
    )
    return path


@pytest.fixture(scope="session")
def digits(prepared: Path) -> list:
    """Four test-set digits as uint8 (28, 28) numpy pixels, light on dark like MNIST."""
    from mnist_pipeline.data.dataset import load_normalization, load_split

    test = load_split(prepared, "test")
    pixels = load_normalization(prepared).invert(test.images[:4])
    return [p[0].numpy() for p in pixels]


@pytest.fixture(scope="session")
def synthetic_profile(
    tmp_path_factory: pytest.TempPathFactory, prepared: Path, onnx_model: Path
) -> Path:
    """The `profile` stage's main on the synthetic data and the tiny ONNX model."""
    import json

    from stages import profile as profile_stage

    root = tmp_path_factory.mktemp("profile")
    params = root / "params.yaml"
    params.write_text(json.dumps(tiny_params_dict()))
    out = root / "drift_profile.json"
    args = ["--params", str(params), "--data", str(prepared), "--out", str(out)]
    profile_stage.main([*args, "--onnx", str(onnx_model)])
    return out


REAL_MIRROR = Path(os.environ.get("MNIST_MIRROR") or ROOT.parent / "shared" / "data" / "mnist")


@dataclass(frozen=True)
class RealDigits:
    """An ONNX LeNet-5 trained briefly on real MNIST, and real test digits it did not see."""

    model: Path
    digits: np.ndarray  # (N, 28, 28) uint8, light on dark
    labels: np.ndarray  # (N,)


@pytest.fixture(scope="session")
def real_digits(tmp_path_factory: pytest.TempPathFactory) -> RealDigits:
    """A LeNet-5 trained for one pass over 12,000 real training digits (about 10 s on 2 cores;
    about 97% on the test set), exported as the `export` stage does. For the slow tests that
    check real digits come back right: from a serving-only install, from the container image."""
    import torch

    from mnist_pipeline.data import mnist_files
    from mnist_pipeline.data.dataset import fit_normalization
    from mnist_pipeline.model import LeNet5, RawPixelsLeNet5
    from mnist_pipeline.onnx import export as onnx_export

    if not (REAL_MIRROR / "train-images-idx3-ubyte.gz").exists():
        pytest.skip(f"real MNIST files not found at {REAL_MIRROR}; set MNIST_MIRROR")
    (tri, _), (trl, _), (tei, _), (tel, _) = mnist_files.FILES
    train_x = mnist_files.read_idx(REAL_MIRROR / tri)[:12000]
    train_y = mnist_files.read_idx(REAL_MIRROR / trl)[:12000]
    norm = fit_normalization(train_x)
    torch.manual_seed(0)
    net = LeNet5()
    opt = torch.optim.Adam(net.parameters(), lr=2.0e-3)
    x = torch.from_numpy(norm.apply(train_x)).unsqueeze(1)  # (N, 1, 28, 28)
    y = torch.from_numpy(train_y.astype(np.int64))
    for i in range(0, len(x), 64):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(net(x[i : i + 64]), y[i : i + 64]).backward()
        opt.step()
    params = parse_params(tiny_params_dict()).export
    path = tmp_path_factory.mktemp("real") / "lenet5.onnx"
    onnx_export.export_onnx(
        RawPixelsLeNet5(net, norm), path, params, onnx_export.metadata(params, norm, net)
    )
    test_x, test_y = (
        mnist_files.read_idx(REAL_MIRROR / tei),
        mnist_files.read_idx(REAL_MIRROR / tel),
    )
    return RealDigits(path, test_x[:200], test_y[:200])

"""Plugins: found by name once installed, checked with params.yaml before any work, and run by
`train` (the example package's wider LeNet-5, early stopping and CSV logger)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from mnist_pipeline import plugins
from mnist_pipeline.errors import ParamsError
from mnist_pipeline.model import LeNet5, load_model, widths_of
from mnist_pipeline.params.schema import parse_params
from testing.plugin_example import install_example
from tests.conftest import tiny_params_dict
from tests.stage_runs import stage_argv


@pytest.fixture
def example(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The example plugin package, installed into this process's path."""
    folder = install_example(tmp_path / "site")
    monkeypatch.syspath_prepend(str(folder))
    return folder


def test_builtins_are_found_by_name() -> None:
    assert {"lenet5"} <= set(plugins.installed("model"))
    assert {"dvclive", "tensorboard", "mlflow"} <= set(plugins.installed("logger"))
    lenet = plugins.load("model", "lenet5")
    assert lenet.distribution == "mnist-pipeline"
    assert type(plugins.build("model", "lenet5", {})) is LeNet5


def test_installed_package_is_found_by_name(example: Path) -> None:
    wide = plugins.load("model", "wide_lenet5")
    assert (wide.distribution, wide.version) == ("mnist-plugin-example", "0.1.0")
    net = plugins.build("model", "wide_lenet5", {"factor": 2})
    assert widths_of(net).conv1 == 12
    assert "early_stopping" in plugins.installed("callback")
    assert "csv" in plugins.installed("logger")


def test_unknown_name_is_a_params_error_listing_the_installed(example: Path) -> None:
    raw = tiny_params_dict()
    raw["train"]["callbacks"] = [{"name": "early_stop"}]
    with pytest.raises(ParamsError) as err:
        parse_params(raw)
    assert "train.callbacks.0" in str(err.value)
    assert "unknown callback plugin 'early_stop'" in str(err.value)
    assert "early_stopping, lr_monitor" in str(err.value)


@pytest.mark.parametrize(
    ("key", "spec", "says"),
    [
        ("train.model", {"name": "wide_lenet5", "args": {"factor": 0}}, "args.factor"),
        ("train.model", {"name": "wide_lenet5", "args": {"widht": 2}}, "args.widht: unknown"),
        ("train.model", {"name": "wide_lenet5", "args": {"factor": "2"}}, "args.factor"),
    ],
)
def test_bad_arguments_name_the_key(example: Path, key: str, spec: dict, says: str) -> None:
    raw = tiny_params_dict()
    raw["train"]["model"] = spec
    with pytest.raises(ParamsError) as err:
        parse_params(raw)
    assert f"{key}: " in str(err.value) and says in str(err.value)


def test_bad_plugin_params_fail_the_stage_before_any_work(example: Path, tmp_path: Path) -> None:
    from stages import train

    raw = tiny_params_dict()
    raw["train"]["loggers"] = [{"name": "dvclive"}, {"name": "tensorboard", "args": {"x": 1}}]
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    out = tmp_path / "out"
    argv = stage_argv("train", tmp_path / "params.yaml", out, data=tmp_path / "missing")
    with pytest.raises(ParamsError, match=r"train\.loggers\.1: .*args\.x: unknown argument"):
        train.main(argv)
    assert not out.exists()


def test_example_plugins_run_during_train(example: Path, tmp_path: Path, prepared: Path) -> None:
    """The wider model is trained, early stopping stops the fit, the CSV logger writes, and the
    run record names each plugin's distribution."""
    from stages import train

    raw = tiny_params_dict()
    raw["train"]["max_epochs"] = 5
    raw["train"]["model"] = {"name": "wide_lenet5", "args": {"factor": 2}}
    # No change can beat min_delta 1.0: the fit stops after `patience` validations.
    stop = {"monitor": "val/acc", "mode": "max", "patience": 1, "min_delta": 1.0}
    raw["train"]["callbacks"] = [{"name": "early_stopping", "args": stop}]
    csv_dir = tmp_path / "csv"
    raw["train"]["loggers"] = [{"name": "dvclive"}, {"name": "csv", "args": {"dir": str(csv_dir)}}]
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    train.main(stage_argv("train", tmp_path / "params.yaml", tmp_path, data=prepared))

    assert json.loads((tmp_path / "metrics/train.json").read_text())["epochs"] == 2
    net, _ = load_model(tmp_path / "models/lenet5.pt")
    assert widths_of(net).fc1 == 240
    assert list(csv_dir.glob("train/version_*/metrics.csv"))
    record = json.loads((tmp_path / "provenance/train.json").read_text())
    used = {p["name"]: p["distribution"] for p in record["plugins"]}
    assert used == {
        "wide_lenet5": "mnist-plugin-example",
        "early_stopping": "mnist-plugin-example",
        "dvclive": "mnist-pipeline",
        "csv": "mnist-plugin-example",
    }

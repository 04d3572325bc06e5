"""Params overrides: `dvc exp run -S` syntax, validated before params.yaml is touched."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from mnist_pipeline.params.schema import ParamsError
from pipelines.overrides import apply
from tests.conftest import tiny_params_dict


def test_overrides_are_validated_then_written(params_file: Path) -> None:
    old = yaml.safe_load(params_file.read_text())["train"]
    overrides = ["train.max_epochs=3", "params.yaml:train.optimizer.lr=0.0123"]
    params, changes = apply(params_file, overrides)
    assert params.train.max_epochs == 3 and params.train.optimizer.lr == 0.0123
    assert changes == {
        "train.max_epochs": (old["max_epochs"], 3),
        "train.optimizer.lr": (old["optimizer"]["lr"], 0.0123),
    }
    written = yaml.safe_load(params_file.read_text())
    assert written["train"]["max_epochs"] == 3 and written["train"]["optimizer"]["lr"] == 0.0123


def test_no_overrides_only_validates(params_file: Path) -> None:
    before = params_file.read_text()
    params, changes = apply(params_file, [])
    assert params.train.max_epochs == tiny_params_dict()["train"]["max_epochs"]
    assert changes == {} and params_file.read_text() == before


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("train.max_epochs=0", r"train\.max_epochs: Input should be greater than or equal to 1"),
        ("train.max_epoch=3", r"Could not override 'train\.max_epoch'"),
        ("+train.foo=1", r"train\.foo: unknown key"),
        ("train.optimizer.name=adagrad", r"train\.optimizer\.name"),
        ("other.yaml:a=1", r"only params\.yaml"),
        ("train.max_epochs=[1", r"invalid override"),
    ],
)
def test_a_bad_override_leaves_params_untouched(
    params_file: Path, override: str, message: str
) -> None:
    before = params_file.read_text()
    with pytest.raises(ParamsError, match=message):
        apply(params_file, [override])
    assert params_file.read_text() == before

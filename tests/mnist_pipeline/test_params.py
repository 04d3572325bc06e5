"""The params loader: the real file validates; bad input fails naming the key, touching nothing."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from mnist_pipeline import errors
from mnist_pipeline.params.schema import ParamsError, load_params, parse_params
from stages import evaluate
from tests.conftest import ROOT, tiny_params_dict
from tests.stage_runs import stage_argv


def test_repo_params_file_is_valid() -> None:
    params = load_params(ROOT / "params.yaml")
    assert params.train.max_epochs >= 1
    assert params.train.optimizer.lr > 0


def _error_for(mutate) -> str:
    raw = tiny_params_dict()
    mutate(raw)
    with pytest.raises(ParamsError) as exc:
        parse_params(raw)
    return str(exc.value)


def test_unknown_key_is_named_with_the_allowed_keys() -> None:
    msg = _error_for(lambda r: r["train"]["optimizer"].update(lrr=0.1))
    assert "train.optimizer.lrr: unknown key" in msg
    assert "lr, momentum, name, nesterov, weight_decay" in msg


def test_unknown_section_is_named() -> None:
    msg = _error_for(lambda r: r.update(trian={}))
    assert "trian: unknown key" in msg


def test_wrong_type_names_key_and_value() -> None:
    msg = _error_for(lambda r: r["train"].update(batch_size="big"))
    assert "train.batch_size" in msg and "'big'" in msg


def test_out_of_range_names_the_bound() -> None:
    msg = _error_for(lambda r: r["train"]["optimizer"].update(lr=-1.0))
    assert "train.optimizer.lr" in msg and "greater than 0" in msg


def test_bad_choice_lists_the_allowed_values() -> None:
    msg = _error_for(lambda r: r["train"]["optimizer"].update(name="adagrad"))
    assert "train.optimizer.name" in msg
    assert "'adam', 'adamw' or 'sgd'" in msg


def test_missing_key_is_named() -> None:
    msg = _error_for(lambda r: r["train"].pop("seed"))
    assert "train.seed: required key is missing" in msg


def test_float_written_without_a_dot_is_caught() -> None:
    # PyYAML reads 1e-3 as the string "1e-3"; the loader must not silently accept it.
    raw = yaml.safe_load("lr: 1e-3")
    assert raw["lr"] == "1e-3"
    msg = _error_for(lambda r: r["train"]["optimizer"].update(lr=raw["lr"]))
    assert "train.optimizer.lr: Input should be a valid number" in msg


def test_not_a_mapping_and_bad_yaml(tmp_path: Path) -> None:
    bad = tmp_path / "params.yaml"
    bad.write_text("train: [unclosed")
    with pytest.raises(ParamsError, match="not valid YAML"):
        load_params(bad)
    bad.write_text("- a list\n")
    with pytest.raises(ParamsError, match="expected a mapping"):
        load_params(bad)
    with pytest.raises(ParamsError, match="not found"):
        load_params(tmp_path / "missing.yaml")


def test_stage_with_bad_params_exits_2_and_touches_no_output(
    tmp_path: Path,
    params_file: Path,
    trained_model: Path,
    prepared: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    raw = yaml.safe_load(params_file.read_text())
    raw["evaluate"]["batch_size"] = 0
    params_file.write_text(yaml.safe_dump(raw))
    metrics = tmp_path / "metrics/evaluate.json"
    metrics.parent.mkdir()
    metrics.write_text('{"test": {"acc": 0.5}}')
    argv = stage_argv("evaluate", params_file, tmp_path, model=trained_model, data=prepared)
    assert errors.run(evaluate.main, argv) == 2
    assert "evaluate.batch_size" in capsys.readouterr().err
    assert metrics.read_text() == '{"test": {"acc": 0.5}}'
    assert not (tmp_path / "plots").exists()

"""Loggers observe: DVCLive, TensorBoard and MLflow together give the bytes DVCLive alone
gives, TensorBoard's event files and MLflow's run read back with their own readers, and the
example's wider LeNet-5 is exported to an ONNX file that passes the parity contract."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from stages import train
from testing.plugin_example import install_example
from tests.conftest import tiny_params_dict
from tests.stage_runs import output_hashes, stage_argv

pytestmark = pytest.mark.slow


def _train(tmp: Path, prepared: Path, raw: dict) -> Path:
    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / "params.yaml").write_text(yaml.safe_dump(raw))
    train.main(stage_argv("train", tmp / "params.yaml", tmp, data=prepared))
    return tmp


def test_three_loggers_give_dvclive_alones_bytes(tmp_path: Path, prepared: Path) -> None:
    alone = _train(tmp_path / "alone", prepared, tiny_params_dict())
    raw = tiny_params_dict()
    store = tmp_path / "mlruns"
    raw["train"]["loggers"] = [
        {"name": "dvclive"},
        {"name": "tensorboard"},  # by default beside the DVCLive folder
        {"name": "mlflow", "args": {"tracking_uri": store.as_uri(), "experiment": "t"}},
    ]
    three = _train(tmp_path / "three", prepared, raw)
    tb = three / "dvclive/tensorboard"
    hashes = output_hashes(alone, ["train"])
    assert hashes and hashes == output_hashes(three, ["train"])

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    (events,) = tb.glob("train/version_0/events.out.tfevents.*")
    acc = EventAccumulator(str(events))
    acc.Reload()
    assert {"val/acc", "train/loss"} <= set(acc.Tags()["scalars"])
    assert len(acc.Scalars("val/acc")) == raw["train"]["max_epochs"]

    import mlflow
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=store.as_uri())
    (run,) = client.search_runs([client.get_experiment_by_name("t").experiment_id])
    assert run.data.params["optimizer.name"] == raw["train"]["optimizer"]["name"]
    metrics = json.loads((alone / "metrics/train.json").read_text())
    assert run.data.metrics["val/acc"] == pytest.approx(metrics["val_acc"])
    mlflow.set_tracking_uri(store.as_uri())
    model = mlflow.models.get_model_info(f"runs:/{run.info.run_id}/model")
    # The signature as the MLmodel file stores it (JSON; `Schema.to_dict` gives shapes as tuples).
    signature = {k: json.loads(v) for k, v in model.signature.to_dict().items() if v}
    assert signature == {
        "inputs": [_tensor_spec([-1, 1, 28, 28])],
        "outputs": [_tensor_spec([-1, 10])],
    }
    assert model.flavors.keys() >= {"pytorch", "python_function"}


def _tensor_spec(shape: list[int]) -> dict:
    return {"type": "tensor", "tensor-spec": {"dtype": "float32", "shape": shape}}


def test_wide_model_plugin_goes_to_onnx_with_parity(
    tmp_path: Path, prepared: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.syspath_prepend(str(install_example(tmp_path / "site")))
    from stages import export

    raw = tiny_params_dict()
    raw["train"]["model"] = {"name": "wide_lenet5", "args": {"factor": 2}}
    trained = _train(tmp_path / "run", prepared, raw)
    model = trained / "models/lenet5.pt"
    argv = stage_argv("export", trained / "params.yaml", trained, data=prepared, pruned=model)
    export.main(argv)
    metrics = json.loads((trained / "metrics/export.json").read_text())
    assert metrics["dense"]["parity_atol"] == raw["export"]["atol"]
    assert (trained / "models/lenet5.onnx").stat().st_size > 0

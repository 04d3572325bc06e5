"""Quantize: INT8 models that keep the float models' contract, or no model at all."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import yaml

from mnist_pipeline import errors
from mnist_pipeline.onnx import quantization, runtime
from stages import quantize
from tests.conftest import tiny_params_dict
from tests.stage_runs import stage_argv


def _argv(out: Path, exported: Path, prepared: Path, params: Path) -> list[str]:
    """dvc.yaml's arguments for the stage, reading the `exported` models."""
    models = {"onnx": exported / "models/lenet5.onnx"}
    models["pruned_onnx"] = exported / "models/lenet5_pruned.onnx"
    return stage_argv("quantize", params, out, data=prepared, **models)


@pytest.fixture(scope="module")
def quantized(tmp_path_factory: pytest.TempPathFactory, exported: Path, prepared: Path) -> Path:
    out = tmp_path_factory.mktemp("quantized")
    params = out / "params.yaml"
    params.write_text(yaml.safe_dump(tiny_params_dict(), sort_keys=False))
    quantize.main(_argv(out, exported, prepared, params))
    return out


def test_int8_models_keep_accuracy_predictions_and_the_input_contract(
    quantized: Path, exported: Path
) -> None:
    m = json.loads((quantized / "metrics/quantize.json").read_text())
    for name, float_file in (("dense", "lenet5.onnx"), ("pruned", "lenet5_pruned.onnx")):
        r = m[name]
        assert r["acc_drop_points"] <= 0.2 and r["agreement"] >= 0.995
        assert r["int8_test_acc"] >= 0.9
        assert r["int8_bytes"] < 0.5 * r["float_bytes"], "int8 weights: a much smaller file"
        int8 = onnx.load(quantized / "models" / f"{Path(float_file).stem}_int8.onnx")
        onnx.checker.check_model(int8, full_check=True)
        assert any(n.op_type == "QuantizeLinear" for n in int8.graph.node)  # QDQ format
        float_model = onnx.load(exported / "models" / float_file)
        props = {p.key: p.value for p in int8.metadata_props}
        assert {p.key: p.value for p in float_model.metadata_props}.items() <= props.items()
        assert "raw grayscale pixel values 0-255" in props["input_contract"]
        assert [i.name for i in int8.graph.input] == ["pixels"]
    t = json.loads((quantized / "measurements/quantize.json").read_text())
    assert t["dense_int8"]["latency_ms"] > 0 and t["pruned_int8"]["throughput_ips"] > 0
    assert set(t["pruned_int8_vs_float"]) == {"latency_speedup", "throughput_speedup"}
    # The stage's seconds by what they were spent on (docs/speed.md's stage table).
    assert set(t["phases_s"]) == {"quantize", "contract", "timing", "plot"}
    assert all(s > 0 for s in t["phases_s"].values())
    assert (quantized / "plots/tradeoff.png").read_bytes().startswith(b"\x89PNG")
    assert json.loads((quantized / "provenance/quantize.json").read_text())["stage"] == "quantize"


def test_the_same_inputs_give_the_same_int8_bytes(
    tmp_path: Path, quantized: Path, exported: Path, prepared: Path
) -> None:
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(tiny_params_dict(), sort_keys=False))
    quantize.main(_argv(tmp_path / "again", exported, prepared, params))
    for name in (
        "models/lenet5_int8.onnx",
        "models/lenet5_pruned_int8.onnx",
        "metrics/quantize.json",
    ):
        assert (tmp_path / "again" / name).read_bytes() == (quantized / name).read_bytes(), name


def test_a_model_that_breaks_the_contract_is_not_written(
    tmp_path: Path, exported: Path, prepared: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = runtime.logits
    calls = []

    def int8_disagrees(sess: object, pixels: np.ndarray, batch_size: int) -> np.ndarray:
        calls.append(1)
        out = real(sess, pixels, batch_size)
        return out if len(calls) % 2 else np.roll(out, 1, axis=1)  # every second: the INT8

    monkeypatch.setattr(runtime, "logits", int8_disagrees)
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(tiny_params_dict(), sort_keys=False))
    argv = _argv(tmp_path / "out", exported, prepared, params)
    with pytest.raises(errors.StageError, match="dense: the INT8 model breaks its contract") as e:
        quantize.main(argv)
    assert "agrees" in str(e.value)
    assert not list(tmp_path.rglob("*.onnx")) and not list(tmp_path.rglob("*.tmp"))
    assert not (tmp_path / "out/metrics/quantize.json").exists()


def test_calibration_sample_is_seeded_and_bounded() -> None:
    pixels = np.arange(100).reshape(100, 1)
    a = quantization.calibration_sample(pixels, 10, seed=3)
    assert len(a) == 10 and list(a[:, 0]) == sorted(a[:, 0])
    assert np.array_equal(a, quantization.calibration_sample(pixels, 10, seed=3))
    assert not np.array_equal(a, quantization.calibration_sample(pixels, 10, seed=4))
    with pytest.raises(errors.StageError, match="calibration_size is 101"):
        quantization.calibration_sample(pixels, 101, seed=0)

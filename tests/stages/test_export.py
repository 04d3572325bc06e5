"""Export: checked ONNX files with raw-pixel input and a dynamic batch, equal to PyTorch in
ONNX Runtime, and a stage that refuses to write a file that is not."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from mnist_pipeline import errors
from mnist_pipeline.data.dataset import load_normalization, load_split
from mnist_pipeline.model import RawPixelsLeNet5, load_model, predict_logits, save_model
from mnist_pipeline.onnx import export as onnx_export
from mnist_pipeline.onnx import runtime as onnx_runtime
from mnist_pipeline.onnx import speed
from mnist_pipeline.params.schema import ExportParams, parse_params
from stages import export
from tests.conftest import tiny_params_dict
from tests.stage_runs import stage_argv


def _params(**kw: object) -> ExportParams:
    return parse_params(tiny_params_dict()).export.model_copy(update=kw)


def test_main_writes_checked_files_with_the_input_contract(exported: Path) -> None:
    for name in ("lenet5.onnx", "lenet5_pruned.onnx"):
        model = onnx.load(exported / "models" / name)
        onnx.checker.check_model(model, full_check=True)
        assert {o.version for o in model.opset_import if o.domain in ("", "ai.onnx")} == {18}
        (inp,) = model.graph.input
        assert inp.name == "pixels"
        assert inp.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
        dims = inp.type.tensor_type.shape.dim
        assert dims[0].dim_param and [d.dim_value for d in dims[1:]] == [1, 28, 28]
        props = {p.key: p.value for p in model.metadata_props}
        assert "raw grayscale pixel values 0-255" in props["input_contract"]
        assert props["input_dtype"] == "float32" and props["input_range"] == "0-255"
        assert float(props["normalization_std"]) > 0
    assert (exported / "models/lenet5_pruned.onnx").stat().st_size < (
        exported / "models/lenet5.onnx"
    ).stat().st_size / 3


def test_metrics_record_parity_accuracy_and_timings(exported: Path) -> None:
    m = json.loads((exported / "metrics/export.json").read_text())
    t = json.loads((exported / "measurements/export.json").read_text())
    # The stage's seconds by what they were spent on (docs/speed.md's stage table).
    assert set(t["phases_s"]) == {"export", "parity", "timing"}
    assert all(s > 0 for s in t["phases_s"].values())
    for name in ("dense", "pruned"):
        r = m[name]
        assert r["mismatches"] == 0 and r["parity_atol"] == 1e-4
        assert r["ort_test_acc"] == r["torch_test_acc"]
        # ONNX Runtime's difference from PyTorch depends on the CPU's kernels: a measurement.
        assert "max_abs_diff" not in r and 0 <= t[name]["ort_max_abs_diff"] <= 1e-4
        # Raw pixels normalized in the graph give what the prepared tensors gave.
        assert r["raw_vs_prepared_max_abs_diff"] <= 1e-5
        # Timings are measurements, apart from the results DVC hashes.
        assert not any("latency" in k or "throughput" in k for k in r)
        assert t[name]["ort_latency_ms"] > 0 and t[name]["torch_throughput_ips"] > 0
    assert m["dense"]["ort_test_acc"] >= 0.9
    assert m["pruned"]["onnx_bytes"] < m["dense"]["onnx_bytes"]
    assert set(t["pruned_vs_dense"]) >= {"ort_latency_speedup", "ort_throughput_speedup"}
    record = json.loads((exported / "provenance/export.json").read_text())
    assert (
        record["stage"] == "export" and "CPUExecutionProvider" in record["onnxruntime_providers"]
    )


@pytest.mark.parametrize("batch", [1, 7, 300])
def test_ort_equals_pytorch_at_other_batch_sizes(
    exported: Path, pruned_model: Path, prepared: Path, batch: int
) -> None:
    # The export example had batch 2: the batch axis must really be dynamic.
    net, _ = load_model(pruned_model)
    model = RawPixelsLeNet5(net, load_normalization(prepared))
    pixels = torch.randint(0, 256, (batch, 1, 28, 28)).float()
    got = onnx_runtime.session(exported / "models/lenet5_pruned.onnx").run(
        None, {"pixels": pixels.numpy()}
    )
    with torch.inference_mode():
        ref = model(pixels).numpy()
    assert got[0].shape == (batch, 10)
    assert np.abs(got[0] - ref).max() <= 1e-4


@pytest.mark.filterwarnings("ignore:You are using the legacy TorchScript-based ONNX export")
@pytest.mark.filterwarnings("ignore:The feature will be removed")
@pytest.mark.parametrize("dynamo", [True, False])
def test_uint8_and_float32_raw_pixels_match_pytorch_on_normalized_input(
    tmp_path: Path, trained_model: Path, prepared: Path, dynamo: bool
) -> None:
    net, _ = load_model(trained_model)
    norm = load_normalization(prepared)
    test = load_split(prepared, "test")
    pixels = norm.invert(test.images)  # (N, 1, 28, 28) uint8, the original digits
    expected = predict_logits(net, test.images)  # the model as trained, normalized input
    model = RawPixelsLeNet5(net, norm)
    for dtype, np_dtype in (("uint8", np.uint8), ("float32", np.float32)):
        params = _params(input_dtype=dtype, dynamo=dynamo)
        path = tmp_path / f"{dtype}.onnx"
        onnx_export.export_onnx(model, path, params, onnx_export.metadata(params, norm, net))
        sess = onnx_runtime.session(path)
        assert sess.get_inputs()[0].type == f"tensor({'float' if dtype == 'float32' else dtype})"
        got = onnx_runtime.logits(sess, pixels.numpy().astype(np_dtype), 64)
        assert np.array_equal(got.argmax(1), expected.argmax(1).numpy())
        assert np.abs(got - expected.numpy()).max() <= 1e-4


def test_stage_fails_and_writes_nothing_when_parity_breaks(
    tmp_path: Path,
    trained_model: Path,
    pruned_model: Path,
    prepared: Path,
    params_file: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    real = onnx_runtime.logits

    def off_by_a_bit(*args: object) -> np.ndarray:
        return real(*args) + 1e-3  # as a wrong exporter or runtime would

    monkeypatch.setattr(onnx_runtime, "logits", off_by_a_bit)
    inputs = {"model": trained_model, "pruned": pruned_model, "data": prepared}
    assert errors.run(export.main, stage_argv("export", params_file, tmp_path, **inputs)) == 1
    err = capsys.readouterr().err
    assert "dense: ONNX Runtime does not match PyTorch" in err and "allowed 0.0001" in err
    assert not list(tmp_path.rglob("*.onnx")) and not (tmp_path / "metrics/export.json").exists()
    assert not list(tmp_path.rglob(".*.tmp"))  # no half-written leftovers


def test_slower_pruned_model_fails_the_check() -> None:
    t = {"ort_latency_ms": 1.0, "ort_throughput_ips": 1000.0}
    t |= {"torch_latency_ms": 1.0, "torch_throughput_ips": 1000.0}
    faster = speed.speedups({"dense": t, "pruned": {**t, "ort_throughput_ips": 1500.0}})
    assert faster["ort_throughput_speedup"] == 1.5
    export.check_not_slower(faster, max_slowdown=0.0)
    slower = speed.speedups({"dense": t, "pruned": {**t, "ort_latency_ms": 1.3}})
    export.check_not_slower(slower, max_slowdown=0.5)  # within the tolerance
    with pytest.raises(errors.StageError, match="slower than the dense one"):
        export.check_not_slower(slower, max_slowdown=0.1)


def test_model_without_normalization_is_refused(
    tmp_path: Path, trained_model: Path, prepared: Path, params_file: Path
) -> None:
    net, _ = load_model(trained_model)
    save_model(net, tmp_path / "bare.pt", meta={})
    bare = tmp_path / "bare.pt"
    argv = stage_argv("export", params_file, tmp_path, model=bare, pruned=bare, data=prepared)
    with pytest.raises(errors.StageError, match="no normalization"):
        export.main(argv)

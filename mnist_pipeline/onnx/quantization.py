"""INT8 models of the exported ONNX files, and the contract each must keep with its float model.

ONNX Runtime static quantization: `quant_pre_process` (shape inference and graph clean-up),
then QDQ nodes with per-channel int8 weights and int8 activations whose ranges are calibrated
on a sample of raw pixels. The ranges come from activations that the portable reference
(`mnist_pipeline.onnx.reference`, PyTorch) computes, so an INT8 file has the same bytes on
every CPU. `check_contract` holds an INT8 model to its float model's accuracy, predictions and
interface, on the reference (the result) and in ONNX Runtime (a measurement).
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    create_calibrator,
    quantize_static,
)
from onnxruntime.quantization.calibrate import save_tensors_data
from onnxruntime.quantization.shape_inference import quant_pre_process

from mnist_pipeline import errors
from mnist_pipeline.onnx import reference as onnx_reference
from mnist_pipeline.onnx import runtime as onnx_runtime
from mnist_pipeline.onnx.runtime import INPUT_NAME
from mnist_pipeline.params.schema import QuantizeParams

log = logging.getLogger(__name__)

METHODS = {
    "minmax": CalibrationMethod.MinMax,
    "entropy": CalibrationMethod.Entropy,
    "percentile": CalibrationMethod.Percentile,
}
CALIBRATION_BATCH = 100


class _Batches(CalibrationDataReader):
    """The calibration pixels, fed to ONNX Runtime's calibrator in batches."""

    def __init__(self, pixels: np.ndarray) -> None:
        self._batches = iter(
            [
                {INPUT_NAME: pixels[i : i + CALIBRATION_BATCH]}
                for i in range(0, len(pixels), CALIBRATION_BATCH)
            ]
        )

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._batches, None)


def calibration_sample(pixels: np.ndarray, size: int, seed: int) -> np.ndarray:
    """`size` digits drawn without replacement, in their original order."""
    if size > len(pixels):
        raise errors.StageError(
            f"quantize.calibration_size is {size}, but the validation split has {len(pixels)}"
        )
    idx = np.sort(np.random.default_rng(seed).choice(len(pixels), size, replace=False))
    return pixels[idx]


def calibrate(model: Path, calibration: np.ndarray, params: QuantizeParams, cache: Path) -> None:
    """Write the activation ranges of `model` on the calibration pixels to `cache`, in the
    form `quantize_static(calibration_cache_path=...)` reads.

    ONNX Runtime's calibrator adds its outputs to the graph (ReduceMin/ReduceMax, or every
    activation for the histogram methods) and turns what that graph computes into ranges; the
    graph runs on the portable reference instead of an ONNX Runtime session, whose kernels,
    chosen by CPU, would move the ranges, and so the INT8 file's bytes, in the last bits.
    """
    with tempfile.TemporaryDirectory(prefix="calibrate-") as tmp:
        calibrator = create_calibrator(
            model,
            augmented_model_path=str(Path(tmp) / "augmented.onnx"),
            calibrate_method=METHODS[params.method],
            extra_options={"percentile": params.percentile},
        )
        calibrator.infer_session = onnx_reference.ReferenceSession(calibrator.get_augment_model())
        calibrator.collect_data(_Batches(calibration))
        save_tensors_data(calibrator.compute_data(), cache)


def quantize_onnx(src: Path, dst: Path, calibration: np.ndarray, params: QuantizeParams) -> None:
    """Write the INT8 (QDQ, per-channel) model of `src` to `dst`, with `src`'s metadata."""
    float_model = onnx.load(src)
    with tempfile.TemporaryDirectory(prefix="quantize-") as tmp:
        pre, out = Path(tmp) / "pre.onnx", Path(tmp) / "int8.onnx"
        ranges = Path(tmp) / "ranges.json"
        quant_pre_process(str(src), str(pre))
        calibrate(pre, calibration, params, ranges)
        quantize_static(
            str(pre),
            str(out),
            None,  # the ranges are read from `ranges`
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=METHODS[params.method],
            calibration_cache_path=str(ranges),
        )
        proto = onnx.load(out)
    # The same contract as the float model: its doc string and metadata, and a note.
    proto.doc_string = float_model.doc_string
    props = {p.key: p.value for p in float_model.metadata_props}
    props["quantization"] = (
        f"ONNX Runtime static, QDQ, int8 per-channel weights and int8 activations, "
        f"{params.method} calibration on {len(calibration)} validation digits"
    )
    del proto.metadata_props[:]
    onnx.helper.set_model_props(proto, props)
    onnx.checker.check_model(proto, full_check=True)
    onnx.save(proto, dst)


def contract_figures(
    float_logits: np.ndarray, int8_logits: np.ndarray, labels: np.ndarray
) -> dict[str, Any]:
    """Test accuracy of both models, the points lost and how often they predict the same."""
    ref, out = float_logits.argmax(axis=1), int8_logits.argmax(axis=1)
    float_acc, int8_acc = float((ref == labels).mean()), float((out == labels).mean())
    return {
        "float_test_acc": round(float_acc, 5),
        "int8_test_acc": round(int8_acc, 5),
        "acc_drop_points": round((float_acc - int8_acc) * 100, 3),
        "agreement": round(float((ref == out).mean()), 5),
        "mismatches": int((ref != out).sum()),
    }


def contract_problems(figures: dict[str, Any], params: QuantizeParams) -> list[str]:
    problems = []
    drop, agreement = figures["acc_drop_points"], figures["agreement"]
    if drop > params.max_acc_drop:
        problems.append(f"it loses {drop:.2f} accuracy points (allowed {params.max_acc_drop:g})")
    if agreement < params.min_agreement:
        problems.append(
            f"it agrees with the float model on {agreement:.2%} of the test digits "
            f"(needed {params.min_agreement:.2%})"
        )
    return problems


def check_contract(
    src: Path,
    float_sess: ort.InferenceSession,
    int8: Path,
    pixels: np.ndarray,
    labels: np.ndarray,
    params: QuantizeParams,
    name: str,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Accuracy, agreement and interface of the INT8 model against the float one on the test
    set, on the portable reference (the result) and in ONNX Runtime (a measurement); raises
    `StageError` when either breaks the contract. `float_sess` is `src`'s ONNX Runtime session."""
    int8_sess = onnx_runtime.session(int8)
    problems = []
    for what, a, b in (
        ("inputs", float_sess.get_inputs(), int8_sess.get_inputs()),
        ("outputs", float_sess.get_outputs(), int8_sess.get_outputs()),
    ):
        if [(x.name, x.type, x.shape) for x in a] != [(x.name, x.type, x.shape) for x in b]:
            problems.append(f"its {what} differ from the float model's")
    want = float_sess.get_modelmeta().custom_metadata_map
    got = int8_sess.get_modelmeta().custom_metadata_map
    if any(got.get(k) != v for k, v in want.items()):
        problems.append("its metadata (the input contract) differs from the float model's")
    n = params.batch_size
    reference = contract_figures(
        onnx_reference.logits(onnx_reference.ReferenceSession(src), pixels, n),
        onnx_reference.logits(onnx_reference.ReferenceSession(int8), pixels, n),
        labels,
    )
    in_ort = contract_figures(
        onnx_runtime.logits(float_sess, pixels, n),
        onnx_runtime.logits(int8_sess, pixels, n),
        labels,
    )
    problems += contract_problems(reference, params)
    problems += [f"in ONNX Runtime, {p}" for p in contract_problems(in_ort, params)]
    for where, f in (("reference", reference), ("ONNX Runtime", in_ort)):
        log.info(
            "%s INT8 (%s): test accuracy %.4f (float %.4f), same prediction on %.2f%% of %d "
            "digits",
            name,
            where,
            f["int8_test_acc"],
            f["float_test_acc"],
            f["agreement"] * 100,
            len(labels),
        )
    if problems:
        raise errors.StageError(
            f"{name}: the INT8 model breaks its contract: {'; '.join(problems)}"
        )
    return reference, {f"ort_{k}": v for k, v in in_ort.items()}

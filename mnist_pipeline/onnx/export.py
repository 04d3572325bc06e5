"""The dense and pruned LeNet-5 as ONNX files, and the proof that each equals PyTorch.

`export_onnx` writes a model that takes raw pixels (`RawPixelsLeNet5`) at the pinned opset,
with its input contract in the file's metadata; `check_parity` compares ONNX Runtime with
PyTorch on the same pixels. The `export` stage runs both on the test set.
"""

from __future__ import annotations

import json
import logging
import tempfile
from dataclasses import asdict
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch

from mnist_pipeline import errors
from mnist_pipeline.data.dataset import Normalization
from mnist_pipeline.model import (
    RAW_PIXEL_DTYPES,
    LeNet5,
    RawPixelsLeNet5,
    predict_logits,
    widths_of,
)
from mnist_pipeline.onnx import runtime
from mnist_pipeline.onnx.runtime import INPUT_NAME, OUTPUT_NAME
from mnist_pipeline.params.schema import ExportParams

log = logging.getLogger(__name__)

# Batch of the example input: not 0 or 1, which torch.export would specialize.
EXAMPLE_BATCH = 2


def input_contract(params: ExportParams, norm: Normalization) -> str:
    return (
        f"Input '{INPUT_NAME}': {params.input_dtype} tensor [N, 1, 28, 28] of raw grayscale "
        "pixel values 0-255 (0 = background, 255 = ink: a white digit on black, as in MNIST), "
        "the digit fitted into a 20x20 box and centred by its centre of mass in the 28x28 "
        f"field. Normalization ((x/255 - {norm.mean:.6f}) / {norm.std:.6f}) is inside the "
        f"graph. Output '{OUTPUT_NAME}': float32 [N, 10], unnormalized scores of the digits "
        "0-9; softmax gives probabilities."
    )


def metadata(params: ExportParams, norm: Normalization, net: LeNet5) -> dict[str, str]:
    """The key/value pairs written into the ONNX file's metadata_props."""
    return {
        "input_contract": input_contract(params, norm),
        "input_name": INPUT_NAME,
        "input_dtype": params.input_dtype,
        "input_shape": "[N, 1, 28, 28]",
        "input_range": "0-255",
        "input_polarity": "light-on-dark",
        "output_name": OUTPUT_NAME,
        "output": "logits [N, 10] for the digits 0-9",
        "classes": ",".join(str(c) for c in range(10)),
        "normalization_mean": repr(norm.mean),
        "normalization_std": repr(norm.std),
        "widths": json.dumps(asdict(widths_of(net))),
    }


def export_onnx(model: RawPixelsLeNet5, path: Path, params: ExportParams, props: dict) -> None:
    """Write `model` to `path` as ONNX at the pinned opset, with a dynamic batch axis."""
    model = model.eval()
    example = torch.zeros(EXAMPLE_BATCH, 1, 28, 28, dtype=RAW_PIXEL_DTYPES[params.input_dtype])
    with tempfile.TemporaryDirectory(prefix="onnx-export-") as tmp:
        raw = Path(tmp) / "model.onnx"
        # The batch axis is dynamic either way; each exporter spells it its own way.
        batch_axis = (
            {
                "dynamic_shapes": {"pixels": {0: torch.export.Dim("batch")}},
                "external_data": False,
                "verbose": False,
            }
            if params.dynamo
            else {"dynamic_axes": {INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}}}
        )
        torch.onnx.export(
            model,
            (example,),
            raw,
            dynamo=params.dynamo,
            opset_version=params.opset,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            **batch_axis,
        )
        proto = onnx.load(raw)
    for node in proto.graph.node:
        # The exporter's per-node debug info (Python class paths, FX nodes): not part of the
        # model, and it would make the file differ between checkouts.
        del node.metadata_props[:]
    proto.doc_string = props["input_contract"]
    onnx.helper.set_model_props(proto, props)
    onnx.checker.check_model(proto, full_check=True)
    opset = next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))
    if opset != params.opset:
        raise errors.StageError(f"exported opset {opset}, but export.opset is {params.opset}")
    onnx.save(proto, path)


def raw_logits(model: RawPixelsLeNet5, pixels: torch.Tensor, params: ExportParams) -> torch.Tensor:
    """PyTorch's logits for raw pixels, given as the exported graph takes them: what ONNX
    Runtime is checked against, computed once per model."""
    return predict_logits(
        model, pixels.to(RAW_PIXEL_DTYPES[params.input_dtype]), params.batch_size
    )


def check_parity(
    torch_logits: torch.Tensor,
    sess: ort.InferenceSession,
    pixels: torch.Tensor,
    labels: torch.Tensor,
    params: ExportParams,
    name: str,
) -> dict[str, float]:
    """Compare ONNX Runtime with PyTorch's logits (`torch_logits`, from `raw_logits`) on the
    same raw pixels; raise `StageError` if they differ by more than `params.atol` or disagree
    on any prediction."""
    x = pixels.to(RAW_PIXEL_DTYPES[params.input_dtype])
    ref = torch_logits.numpy()
    got = runtime.logits(sess, x.numpy(), params.batch_size)
    diff = float(np.abs(got - ref).max())
    ref_pred, got_pred = ref.argmax(axis=1), got.argmax(axis=1)
    mismatches = int((ref_pred != got_pred).sum())
    y = labels.numpy()
    result = {
        "max_abs_diff": diff,
        "mismatches": mismatches,
        "ort_test_acc": round(float((got_pred == y).mean()), 5),
        "torch_test_acc": round(float((ref_pred == y).mean()), 5),
    }
    log.info(
        "%s: ONNX Runtime vs PyTorch on %d test digits: max |diff| %.3g, %d differing "
        "predictions, accuracy %.4f",
        name,
        len(y),
        diff,
        mismatches,
        result["ort_test_acc"],
    )
    if not diff <= params.atol or mismatches:  # `not <=` also catches NaN
        raise errors.StageError(
            f"{name}: ONNX Runtime does not match PyTorch on the test set: max |logit diff| "
            f"{diff:.3g} (allowed {params.atol:g}), {mismatches} predictions differ"
        )
    return result

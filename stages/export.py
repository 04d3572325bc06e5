"""Export the dense and the pruned LeNet-5 to ONNX and prove each equal to PyTorch.

Stage `export`: models/lenet5.pt, models/lenet5_pruned.pt, data/prepared ->
models/lenet5.onnx, models/lenet5_pruned.onnx, metrics/export.json (parity and sizes),
measurements/export.json (latency, throughput, ONNX Runtime's max logit difference),
provenance/export.json
Params: `export` section of params.yaml.

Input contract of the ONNX files (also in each file's metadata_props): one input `pixels`,
float32 or uint8 (params: export.input_dtype) of shape [N, 1, 28, 28] holding RAW grayscale
pixels 0-255, white digit on black like MNIST; the training normalization (x/255 - mean)/std is
part of the graph, so a client needs no statistics. One output `logits` [N, 10].

A file is written only if onnx.checker accepts it and ONNX Runtime matches PyTorch on the whole
test set (same raw pixels): max |logit difference| <= export.atol and identical predictions.
Otherwise the stage fails. It then times both runtimes and fails if the pruned model is slower
in ONNX Runtime than the dense one (beyond export.max_slowdown).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch

from mnist_pipeline import errors, inference_speed, logs, onnx_runtime, provenance
from mnist_pipeline.atomic import atomic_path, write_json
from mnist_pipeline.dataset import Normalization, load_normalization, load_split
from mnist_pipeline.model import (
    RAW_PIXEL_DTYPES,
    LeNet5,
    RawPixelsLeNet5,
    load_model,
    predict_logits,
    widths_of,
)
from mnist_pipeline.onnx_runtime import INPUT_NAME, OUTPUT_NAME
from mnist_pipeline.params import ExportParams, load_params

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


def check_parity(
    model: RawPixelsLeNet5,
    sess: ort.InferenceSession,
    pixels: torch.Tensor,
    labels: torch.Tensor,
    params: ExportParams,
    name: str,
) -> dict[str, float]:
    """Compare ONNX Runtime with PyTorch on the same raw pixels; raise `StageError` if they
    differ by more than `params.atol` or disagree on any prediction."""
    x = pixels.to(RAW_PIXEL_DTYPES[params.input_dtype])
    ref = predict_logits(model, x, params.batch_size).numpy()
    got = onnx_runtime.logits(sess, x.numpy(), params.batch_size)
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


def check_not_slower(speedup: dict[str, float], max_slowdown: float) -> None:
    """`StageError` if the pruned model is slower than the dense one in ONNX Runtime by more
    than the fraction `max_slowdown`."""
    worst = min(speedup["ort_latency_speedup"], speedup["ort_throughput_speedup"])
    if worst < 1 / (1 + max_slowdown):
        raise errors.StageError(
            f"the pruned ONNX model is slower than the dense one in ONNX Runtime "
            f"({speedup}; allowed slowdown {max_slowdown:.0%})"
        )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m stages.export", description=__doc__.splitlines()[0]
    )
    p.add_argument("--params", type=Path, default=Path("params.yaml"))
    p.add_argument("--model", type=Path, required=True, help="dense model file")
    p.add_argument("--pruned", type=Path, required=True, help="pruned model file")
    p.add_argument("--data", type=Path, required=True, help="prepared data folder")
    p.add_argument("--onnx", type=Path, required=True, help="dense ONNX file to write")
    p.add_argument("--pruned-onnx", type=Path, required=True, help="pruned ONNX file to write")
    p.add_argument("--metrics", type=Path, required=True, help="results JSON to write")
    p.add_argument("--timings", type=Path, default=None, help="measurements JSON to write")
    p.add_argument("--provenance", type=Path, default=None, help="run record JSON to write")
    return p.parse_args(argv)


def _normalization(meta: dict[str, Any], path: Path, data_norm: Normalization) -> Normalization:
    """The statistics stored with the model, which must be those of the prepared data."""
    if "mean" not in meta or "std" not in meta:
        raise errors.StageError(f"{path} has no normalization (mean, std) in its metadata")
    norm = Normalization(mean=float(meta["mean"]), std=float(meta["std"]))
    if norm != data_norm:
        raise errors.StageError(
            f"{path} was trained with normalization {norm}, the prepared data has {data_norm}"
        )
    return norm


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logs.setup_logging()
    for noisy in ("onnxscript", "onnx_ir"):  # the exporter's graph passes log each step
        logging.getLogger(noisy).setLevel(logging.WARNING)
    every = load_params(args.params)
    params = every.export
    inputs = [args.model, args.pruned, args.data / "test.safetensors", args.data / "meta.json"]
    with provenance.record(args.provenance, "export", inputs, [params], every.compute) as record:
        record.facts["onnxruntime_providers"] = ort.get_available_providers()
        run(params, args)


def run(params: ExportParams, args: argparse.Namespace) -> None:
    """Export both models, check them, time them; write the files and the metrics."""
    data_norm = load_normalization(args.data)
    test = load_split(args.data, "test")
    pixels = data_norm.invert(test.images)  # (N, 1, 28, 28) uint8, the original test digits

    models: dict[str, tuple[RawPixelsLeNet5, ort.InferenceSession]] = {}
    metrics: dict[str, Any] = {}
    measured: dict[str, dict[str, float]] = {}  # CPU-dependent figures, beside the timings
    widths = []
    for name, src, dst in (
        ("dense", args.model, args.onnx),
        ("pruned", args.pruned, args.pruned_onnx),
    ):
        net, meta = load_model(src)
        widths.append(widths_of(net))
        norm = _normalization(meta, src, data_norm)
        model = RawPixelsLeNet5(net, norm).eval()
        # Checked before it replaces `dst`, so a failed check leaves no file behind.
        with atomic_path(dst) as tmp:
            export_onnx(model, tmp, params, metadata(params, norm, net))
            parity = check_parity(
                model, onnx_runtime.session(tmp), pixels, test.labels, params, name
            )
        # The raw-pixel path against the tensors the model was trained and evaluated on.
        prepared = predict_logits(net, test.images, params.batch_size)
        raw = predict_logits(model, pixels, params.batch_size)
        parity["raw_vs_prepared_max_abs_diff"] = float((raw - prepared).abs().max())
        # ONNX Runtime's logits differ between CPUs in the last bits (it picks its kernels by
        # CPU), so the difference it measured is a measurement. The result is the contract it
        # passed: within `atol`, every prediction the same, so both have PyTorch's accuracy.
        measured[name] = {"ort_max_abs_diff": parity.pop("max_abs_diff")}
        metrics[name] = {"onnx_bytes": dst.stat().st_size, "parity_atol": params.atol, **parity}
        models[name] = (model, onnx_runtime.session(dst, params.num_threads))
    metrics["opset"] = params.opset
    write_json(args.metrics, metrics)

    timings: dict[str, Any] = {**inference_speed.benchmark(models, pixels, params)}
    for name, parity in measured.items():
        timings[name] = {**parity, **timings[name]}
    for name, t in timings.items():
        log.info("%s: %s", name, t)
    timings["pruned_vs_dense"] = inference_speed.speedups(timings)
    if args.timings is not None:
        write_json(args.timings, timings)
    log.info("pruned vs dense: %s", timings["pruned_vs_dense"])
    if widths[0] == widths[1]:
        # Unstructured pruning keeps every shape: no speed-up to check, only timing noise.
        log.info("the pruned model has the dense model's shapes: speed check skipped")
    else:
        check_not_slower(timings["pruned_vs_dense"], params.max_slowdown)


if __name__ == "__main__":
    sys.exit(errors.run(main))

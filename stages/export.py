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
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mnist_pipeline import errors, stage
from mnist_pipeline.atomic import atomic_path, write_json
from mnist_pipeline.data.dataset import Normalization, load_normalization, load_split
from mnist_pipeline.model import (
    RawPixelsLeNet5,
    load_model,
    predict_logits,
    require_lenet5,
    widths_of,
)
from mnist_pipeline.params.schema import ExportParams

if TYPE_CHECKING:  # ONNX and ONNX Runtime: imported by the work that uses them
    import onnxruntime as ort

log = logging.getLogger(__name__)


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
    paths = {
        "--model": "dense model file",
        "--pruned": "pruned model file",
        "--data": "prepared data folder",
        "--onnx": "dense ONNX file to write",
        "--pruned-onnx": "pruned ONNX file to write",
    }
    return stage.parser("export", __doc__, paths, metrics=True, timings=True).parse_args(argv)


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
    inputs = [args.model, args.pruned, args.data / "test.safetensors", args.data / "meta.json"]
    with stage.running(args, "export", inputs) as run:
        for noisy in ("onnxscript", "onnx_ir"):  # the exporter's graph passes log each step
            logging.getLogger(noisy).setLevel(logging.WARNING)
        import onnxruntime as ort

        run.facts["onnxruntime_providers"] = ort.get_available_providers()
        export_both(run.params.export, args)


def export_both(params: ExportParams, args: argparse.Namespace) -> None:
    """Export both models, check them, time them; write the files and the metrics."""
    from mnist_pipeline.onnx import runtime
    from mnist_pipeline.onnx import speed as inference_speed
    from mnist_pipeline.onnx.export import check_parity, export_onnx, metadata, raw_logits

    data_norm = load_normalization(args.data)
    test = load_split(args.data, "test")
    pixels = data_norm.invert(test.images)  # (N, 1, 28, 28) uint8, the original test digits

    models: dict[str, tuple[RawPixelsLeNet5, ort.InferenceSession]] = {}
    metrics: dict[str, Any] = {}
    measured: dict[str, dict[str, float]] = {}  # CPU-dependent figures, beside the timings
    phases: dict[str, float] = {}  # this function's seconds, by what they are spent on
    widths = []
    for name, src, dst in (
        ("dense", args.model, args.onnx),
        ("pruned", args.pruned, args.pruned_onnx),
    ):
        loaded, meta = load_model(src)
        net = require_lenet5(loaded, src, "export")
        widths.append(widths_of(net))
        norm = _normalization(meta, src, data_norm)
        model = RawPixelsLeNet5(net, norm).eval()
        # Checked before it replaces `dst`, so a failed check leaves no file behind.
        with atomic_path(dst) as tmp:
            with stage.timed(phases, "export"):
                export_onnx(model, tmp, params, metadata(params, norm, net))
            with stage.timed(phases, "parity"):
                raw = raw_logits(model, pixels, params)
                sess = runtime.session(tmp)
                parity = check_parity(raw, sess, pixels, test.labels, params, name)
        with stage.timed(phases, "parity"):
            # The raw-pixel path against the tensors the model was trained and evaluated on.
            prepared = predict_logits(net, test.images, params.batch_size)
            parity["raw_vs_prepared_max_abs_diff"] = float((raw - prepared).abs().max())
        # ONNX Runtime's logits differ between CPUs in the last bits (it picks its kernels by
        # CPU), so the difference it measured is a measurement. The result is the contract it
        # passed: within `atol`, every prediction the same, so both have PyTorch's accuracy.
        measured[name] = {"ort_max_abs_diff": parity.pop("max_abs_diff")}
        metrics[name] = {"onnx_bytes": dst.stat().st_size, "parity_atol": params.atol, **parity}
        models[name] = (model, runtime.session(dst, params.num_threads))
    metrics["opset"] = params.opset
    write_json(args.metrics, metrics)

    with stage.timed(phases, "timing"):
        timings: dict[str, Any] = {**inference_speed.benchmark(models, pixels, params)}
    for name, parity in measured.items():
        timings[name] = {**parity, **timings[name]}
    for name, t in timings.items():
        log.info("%s: %s", name, t)
    timings["pruned_vs_dense"] = inference_speed.speedups(timings)
    timings["phases_s"] = phases
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

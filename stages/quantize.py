"""Quantize the exported ONNX models to INT8 and prove each close to its float model.

Stage `quantize`: models/lenet5.onnx, models/lenet5_pruned.onnx, data/prepared ->
models/lenet5_int8.onnx, models/lenet5_pruned_int8.onnx, metrics/quantize.json (results),
measurements/quantize.json (latency, throughput), plots/tradeoff.png (accuracy against size
and latency, a measurement), provenance/quantize.json
Params: `quantize` section of params.yaml.

ONNX Runtime static quantization: `quant_pre_process` (shape inference and graph clean-up),
then QDQ nodes with per-channel int8 weights and int8 activations whose ranges are calibrated
on a seeded sample of the validation split, as raw pixels like every client sends them. An
INT8 model is written only if, on the whole test set, its accuracy is within
`quantize.max_acc_drop` points of its float model, it predicts what the float model predicts
on at least `quantize.min_agreement` of the digits, and it keeps the float model's input,
output and metadata (the input contract). Otherwise the stage fails.

What is hashed does not depend on the CPU: ONNX Runtime's calibrator computes the ranges, but
from activations that the portable reference (`mnist_pipeline.onnx.reference`, PyTorch)
computes, so the INT8 files have the same bytes everywhere; the accuracies in
metrics/quantize.json are the reference's too. The contract must also hold in ONNX Runtime,
whose own figures go to measurements/quantize.json with the timings.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mnist_pipeline import errors, stage
from mnist_pipeline.atomic import atomic_path, write_figure, write_json
from mnist_pipeline.data.dataset import load_normalization, load_split
from mnist_pipeline.params.schema import QuantizeParams

if TYPE_CHECKING:  # ONNX, ONNX Runtime and matplotlib: imported by the work that uses them
    import onnxruntime as ort

log = logging.getLogger(__name__)


def plot_tradeoff(rows: list[dict[str, Any]], path: Path) -> None:
    """Test accuracy against file size and against batch-1 latency, one point per model."""
    import matplotlib

    matplotlib.use("Agg")  # headless: no display on CI or servers
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, key, label in (
        (axes[0], "kb", "ONNX file size (kB)"),
        (axes[1], "latency_ms", "ONNX Runtime batch-1 latency (ms, one thread)"),
    ):
        for r in rows:
            int8 = "INT8" in r["model"]  # its label below the point, clear of the float one's
            ax.scatter(r[key], r["acc"] * 100, s=60, marker="s" if int8 else "o")
            ax.annotate(r["model"], (r[key], r["acc"] * 100), textcoords="offset points",
                        xytext=(6, -12 if int8 else 5), fontsize=9)  # fmt: skip
        ax.set(xlabel=label, ylabel="test accuracy (%)")
        ax.grid(alpha=0.3)
    fig.suptitle("Accuracy against size and speed: dense, pruned and their INT8 models")
    write_figure(path, fig, dpi=100)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    paths = {
        "--onnx": "dense float ONNX model",
        "--pruned-onnx": "pruned float ONNX model",
        "--data": "prepared data folder",
        "--out": "dense INT8 model to write",
        "--pruned-out": "pruned INT8 model to write",
    }
    optional = {"--plot": "trade-off PNG to write"}
    p = stage.parser("quantize", __doc__, paths, optional, metrics=True, timings=True)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    with stage.running(args, "quantize", [args.onnx, args.pruned_onnx, args.data]) as run:
        import onnxruntime as ort

        run.facts["onnxruntime_providers"] = ort.get_available_providers()
        quantize_both(run.params.quantize, args)


def quantize_both(params: QuantizeParams, args: argparse.Namespace) -> None:
    """Quantize both models, check each contract, time all four; write files and metrics."""
    from mnist_pipeline.onnx import runtime
    from mnist_pipeline.onnx.quantization import calibration_sample, check_contract, quantize_onnx
    from mnist_pipeline.onnx.speed import session_speeds

    norm = load_normalization(args.data)
    val = norm.invert(load_split(args.data, "val").images).numpy()  # raw 0-255, uint8
    test = load_split(args.data, "test")
    test_pixels, labels = norm.invert(test.images).numpy(), test.labels.numpy()

    metrics: dict[str, Any] = {
        "method": params.method,
        "calibration_size": params.calibration_size,
    }
    sessions: dict[str, ort.InferenceSession] = {}
    in_ort: dict[str, dict[str, Any]] = {}  # ONNX Runtime's own figures: measurements
    phases: dict[str, float] = {}  # this function's seconds, by what they are spent on
    for name, src, dst in (
        ("dense", args.onnx, args.out),
        ("pruned", args.pruned_onnx, args.pruned_out),
    ):
        float_sess = runtime.session(src)
        dtype = runtime.input_dtype(float_sess)
        calibration = calibration_sample(
            val.astype(dtype), params.calibration_size, params.calibration_seed
        )
        # Checked before it replaces `dst`, so a model that breaks the contract is not written.
        with atomic_path(dst) as tmp:
            with stage.timed(phases, "quantize"):
                quantize_onnx(src, tmp, calibration, params)
            with stage.timed(phases, "contract"):
                contract, in_ort[name] = check_contract(
                    src, float_sess, tmp, test_pixels.astype(dtype), labels, params, name
                )
        float_bytes, int8_bytes = src.stat().st_size, dst.stat().st_size
        metrics[name] = {
            "float_bytes": float_bytes,
            "int8_bytes": int8_bytes,
            "size_ratio": round(int8_bytes / float_bytes, 5),
            **contract,
        }
        sessions[name] = runtime.session(src, params.num_threads)
        sessions[f"{name}_int8"] = runtime.session(dst, params.num_threads)
    write_json(args.metrics, metrics)

    with stage.timed(phases, "timing"):
        times = session_speeds(sessions, test_pixels, params)
    measured: dict[str, Any] = {k: {**in_ort.get(k, {}), **v} for k, v in times.items()}
    for name in ("dense", "pruned"):
        f, q = times[name], times[f"{name}_int8"]
        measured[f"{name}_int8_vs_float"] = {
            "latency_speedup": round(f["latency_ms"] / q["latency_ms"], 3),
            "throughput_speedup": round(q["throughput_ips"] / f["throughput_ips"], 3),
        }
        log.info("%s: INT8 against float: %s", name, measured[f"{name}_int8_vs_float"])
    if args.plot is not None:
        rows = []
        for name, label in (("dense", "dense"), ("pruned", "pruned")):
            for suffix, acc_key, bytes_key in (
                ("", "float_test_acc", "float_bytes"),
                ("_int8", "int8_test_acc", "int8_bytes"),
            ):
                rows.append(
                    {
                        "model": f"{label}{' INT8' if suffix else ''}",
                        "acc": metrics[name][acc_key],
                        "kb": metrics[name][bytes_key] / 1024,
                        "latency_ms": times[f"{name}{suffix}"]["latency_ms"],
                    }
                )
        with stage.timed(phases, "plot"):
            plot_tradeoff(rows, args.plot)
    if args.timings is not None:
        write_json(args.timings, {**measured, "phases_s": phases})


if __name__ == "__main__":
    sys.exit(errors.run(main))

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
from activations that the portable reference (`mnist_pipeline.onnx_reference`, PyTorch)
computes, so the INT8 files have the same bytes everywhere; the accuracies in
metrics/quantize.json are the reference's too. The contract must also hold in ONNX Runtime,
whose own figures go to measurements/quantize.json with the timings.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # headless: no display on CI or servers
import matplotlib.pyplot as plt
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

from mnist_pipeline import errors, logs, onnx_reference, onnx_runtime, provenance
from mnist_pipeline.atomic import atomic_path, write_json, write_png
from mnist_pipeline.dataset import load_normalization, load_split
from mnist_pipeline.inference_speed import median_times
from mnist_pipeline.onnx_runtime import INPUT_NAME, OUTPUT_NAME
from mnist_pipeline.params import QuantizeParams, load_params

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
    int8: Path,
    pixels: np.ndarray,
    labels: np.ndarray,
    params: QuantizeParams,
    name: str,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Accuracy, agreement and interface of the INT8 model against the float one on the test
    set, on the portable reference (the result) and in ONNX Runtime (a measurement); raises
    `StageError` when either breaks the contract."""
    float_sess, int8_sess = onnx_runtime.session(src), onnx_runtime.session(int8)
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


def timings(
    sessions: dict[str, ort.InferenceSession], pixels: np.ndarray, params: QuantizeParams
) -> dict[str, dict[str, float]]:
    """Batch-1 latency (ms) and batch throughput (images/s) of each session, interleaved; each
    gets the raw `pixels` in the input type its model takes."""
    many = np.resize(pixels, (params.throughput_batch, *pixels.shape[1:]))

    def runner(sess: ort.InferenceSession, x: np.ndarray):
        x = x.astype(onnx_runtime.input_dtype(sess))
        return lambda: sess.run([OUTPUT_NAME], {INPUT_NAME: x})

    lat = median_times(
        {k: runner(s, pixels[:1]) for k, s in sessions.items()},
        params.warmup_runs,
        params.latency_runs,
    )
    thr = median_times(
        {k: runner(s, many) for k, s in sessions.items()},
        max(1, params.warmup_runs // 10),
        params.throughput_runs,
    )
    return {
        k: {
            "latency_ms": round(lat[k] * 1e3, 4),
            "throughput_ips": round(params.throughput_batch / thr[k], 1),
        }
        for k in sessions
    }


def plot_tradeoff(rows: list[dict[str, Any]], path: Path) -> None:
    """Test accuracy against file size and against batch-1 latency, one point per model."""
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
    fig.tight_layout()
    write_png(path, fig, dpi=100)
    plt.close(fig)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m stages.quantize", description=__doc__.splitlines()[0]
    )
    p.add_argument("--params", type=Path, default=Path("params.yaml"))
    p.add_argument("--onnx", type=Path, required=True, help="dense float ONNX model")
    p.add_argument("--pruned-onnx", type=Path, required=True, help="pruned float ONNX model")
    p.add_argument("--data", type=Path, required=True, help="prepared data folder")
    p.add_argument("--out", type=Path, required=True, help="dense INT8 model to write")
    p.add_argument("--pruned-out", type=Path, required=True, help="pruned INT8 model to write")
    p.add_argument("--metrics", type=Path, required=True, help="results JSON to write")
    p.add_argument("--timings", type=Path, default=None, help="measurements JSON to write")
    p.add_argument("--plot", type=Path, default=None, help="trade-off PNG to write")
    p.add_argument("--provenance", type=Path, default=None, help="run record JSON to write")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logs.setup_logging()
    every = load_params(args.params)
    params = every.quantize
    inputs = [args.onnx, args.pruned_onnx, args.data]
    with provenance.record(args.provenance, "quantize", inputs, [params], every.compute) as record:
        record.facts["onnxruntime_providers"] = ort.get_available_providers()
        run(params, args)


def run(params: QuantizeParams, args: argparse.Namespace) -> None:
    """Quantize both models, check each contract, time all four; write files and metrics."""
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
    for name, src, dst in (
        ("dense", args.onnx, args.out),
        ("pruned", args.pruned_onnx, args.pruned_out),
    ):
        float_sess = onnx_runtime.session(src)
        dtype = onnx_runtime.input_dtype(float_sess)
        calibration = calibration_sample(
            val.astype(dtype), params.calibration_size, params.calibration_seed
        )
        # Checked before it replaces `dst`, so a model that breaks the contract is not written.
        with atomic_path(dst) as tmp:
            quantize_onnx(src, tmp, calibration, params)
            contract, in_ort[name] = check_contract(
                src, tmp, test_pixels.astype(dtype), labels, params, name
            )
        float_bytes, int8_bytes = src.stat().st_size, dst.stat().st_size
        metrics[name] = {
            "float_bytes": float_bytes,
            "int8_bytes": int8_bytes,
            "size_ratio": round(int8_bytes / float_bytes, 5),
            **contract,
        }
        sessions[name] = onnx_runtime.session(src, params.num_threads)
        sessions[f"{name}_int8"] = onnx_runtime.session(dst, params.num_threads)
    write_json(args.metrics, metrics)

    times = timings(sessions, test_pixels, params)
    measured: dict[str, Any] = {k: {**in_ort.get(k, {}), **v} for k, v in times.items()}
    for name in ("dense", "pruned"):
        f, q = times[name], times[f"{name}_int8"]
        measured[f"{name}_int8_vs_float"] = {
            "latency_speedup": round(f["latency_ms"] / q["latency_ms"], 3),
            "throughput_speedup": round(q["throughput_ips"] / f["throughput_ips"], 3),
        }
        log.info("%s: INT8 against float: %s", name, measured[f"{name}_int8_vs_float"])
    if args.timings is not None:
        write_json(args.timings, measured)
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
        plot_tradeoff(rows, args.plot)


if __name__ == "__main__":
    sys.exit(errors.run(main))

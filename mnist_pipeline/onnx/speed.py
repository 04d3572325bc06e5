"""Inference speed of the exported models: ONNX Runtime against PyTorch eager, batch-1 latency
and batch throughput, each a median of runs interleaved so that a shared machine's load weighs
on every model alike. The `export` and `quantize` stages and the benchmarks time with this."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import onnxruntime as ort
import torch
from torch import nn

from mnist_pipeline.model import RAW_PIXEL_DTYPES, RawPixelsLeNet5
from mnist_pipeline.onnx import runtime
from mnist_pipeline.onnx.runtime import INPUT_NAME, OUTPUT_NAME
from mnist_pipeline.params.schema import ExportParams, QuantizeParams


def median_times(fns: dict[str, Callable[[], Any]], warmup: int, runs: int) -> dict[str, float]:
    """Median seconds per call of each function, interleaved run by run so that the load of
    a shared machine weighs on all of them alike."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(runs):
        for k, fn in fns.items():
            t = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t)
    return {k: statistics.median(v) for k, v in times.items()}


def benchmark(
    models: dict[str, tuple[RawPixelsLeNet5, ort.InferenceSession]],
    pixels: torch.Tensor,
    params: ExportParams,
) -> dict[str, dict[str, float]]:
    """Batch-1 latency (ms, median) and batch-`throughput_batch` throughput (images/s) of
    each model in ONNX Runtime and in PyTorch eager."""
    x = pixels.to(RAW_PIXEL_DTYPES[params.input_dtype])
    one, many = x[:1], x[: params.throughput_batch]
    if len(many) < params.throughput_batch:
        many = many.repeat(-(-params.throughput_batch // len(many)), 1, 1, 1)
        many = many[: params.throughput_batch]
    one_np, many_np = one.numpy(), many.numpy()

    def ort_fn(sess: ort.InferenceSession, a: np.ndarray) -> Callable[[], Any]:
        return lambda: sess.run([OUTPUT_NAME], {INPUT_NAME: a})

    def torch_fn(model: nn.Module, t: torch.Tensor) -> Callable[[], Any]:
        def run() -> Any:
            with torch.inference_mode():
                return model(t)

        return run

    threads = torch.get_num_threads()
    if params.num_threads:
        torch.set_num_threads(params.num_threads)
    try:
        lat = median_times(
            {
                f"{name}/{rt}": ort_fn(s, one_np) if rt == "ort" else torch_fn(m.eval(), one)
                for name, (m, s) in models.items()
                for rt in ("ort", "torch")
            },
            params.warmup_runs,
            params.latency_runs,
        )
        thr = median_times(
            {
                f"{name}/{rt}": ort_fn(s, many_np) if rt == "ort" else torch_fn(m.eval(), many)
                for name, (m, s) in models.items()
                for rt in ("ort", "torch")
            },
            max(1, params.warmup_runs // 10),
            params.throughput_runs,
        )
    finally:
        torch.set_num_threads(threads)
    out: dict[str, dict[str, float]] = {}
    for name in models:
        out[name] = {}
        for rt in ("ort", "torch"):
            out[name][f"{rt}_latency_ms"] = round(lat[f"{name}/{rt}"] * 1e3, 4)
            out[name][f"{rt}_throughput_ips"] = round(
                params.throughput_batch / thr[f"{name}/{rt}"], 1
            )
    return out


def session_speeds(
    sessions: dict[str, ort.InferenceSession], pixels: np.ndarray, params: QuantizeParams
) -> dict[str, dict[str, float]]:
    """Batch-1 latency (ms) and batch throughput (images/s) of each session, interleaved; each
    gets the raw `pixels` in the input type its model takes."""
    many = np.resize(pixels, (params.throughput_batch, *pixels.shape[1:]))

    def runner(sess: ort.InferenceSession, x: np.ndarray) -> Callable[[], Any]:
        x = x.astype(runtime.input_dtype(sess))
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


def speedups(timings: dict[str, dict[str, float]]) -> dict[str, float]:
    """How much faster the pruned model runs than the dense one (above 1: faster)."""
    d, p = timings["dense"], timings["pruned"]
    return {
        f"{rt}_{what}_speedup": round(
            d[f"{rt}_latency_ms"] / p[f"{rt}_latency_ms"]
            if what == "latency"
            else p[f"{rt}_throughput_ips"] / d[f"{rt}_throughput_ips"],
            3,
        )
        for rt in ("ort", "torch")
        for what in ("latency", "throughput")
    }

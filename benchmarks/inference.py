"""Inference speed: ONNX Runtime against PyTorch eager, dense against pruned, batch-1 latency
and batch-256 throughput, timed by the code the `export` stage times with
(`mnist_pipeline.onnx.speed`) on the models `dvc repro` wrote."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from mnist_pipeline.data.dataset import load_normalization, load_split
from mnist_pipeline.model import RawPixelsLeNet5, load_model
from mnist_pipeline.onnx import runtime
from mnist_pipeline.onnx import speed as inference_speed
from mnist_pipeline.params.schema import ExportParams

MODELS = {
    "dense": ("lenet5.pt", "lenet5.onnx"),
    "pruned": ("lenet5_pruned.pt", "lenet5_pruned.onnx"),
}


def measure(
    models_dir: Path, data_dir: Path, params: ExportParams, quick: bool = False
) -> dict[str, Any]:
    missing = [
        f for pt, onnx in MODELS.values() for f in (pt, onnx) if not (models_dir / f).is_file()
    ]
    if missing:
        return {"skipped": f"not available: run dvc repro ({', '.join(missing)} missing)"}
    norm = load_normalization(data_dir)
    pixels = norm.invert(load_split(data_dir, "test").images[:1024])  # raw 0-255, as served
    models = {}
    for name, (pt, onnx) in MODELS.items():
        net, _ = load_model(models_dir / pt)
        sess = runtime.session(models_dir / onnx, params.num_threads)
        # Time the files as they were exported, whatever params.yaml says now.
        dtype = np.dtype(runtime.input_dtype(sess)).name
        params = params.model_copy(update={"input_dtype": dtype})
        models[name] = (RawPixelsLeNet5(net, norm).eval(), sess)
    if quick:
        params = params.model_copy(
            update={"warmup_runs": 2, "latency_runs": 20, "throughput_runs": 3}
        )
    timings = inference_speed.benchmark(models, pixels, params)
    return {
        **timings,
        "pruned_vs_dense": inference_speed.speedups(timings),
        "threads": params.num_threads,
        "latency_runs": params.latency_runs,
        "throughput_batch": params.throughput_batch,
        "throughput_runs": params.throughput_runs,
    }

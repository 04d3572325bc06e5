"""Inference speed: ONNX Runtime against PyTorch eager, dense against pruned, batch-1 latency
and batch-256 throughput, timed by the `export` stage's own interleaved-median code on the
models `dvc repro` wrote."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mnist_pipeline.dataset import load_normalization, load_split
from mnist_pipeline.model import load_model
from mnist_pipeline.params import ExportParams

MODELS = {
    "dense": ("lenet5.pt", "lenet5.onnx"),
    "pruned": ("lenet5_pruned.pt", "lenet5_pruned.onnx"),
}
ORT_DTYPES = {"tensor(float)": "float32", "tensor(uint8)": "uint8"}


def measure(
    models_dir: Path, data_dir: Path, params: ExportParams, quick: bool = False
) -> dict[str, Any]:
    missing = [
        f for pt, onnx in MODELS.values() for f in (pt, onnx) if not (models_dir / f).is_file()
    ]
    if missing:
        return {"skipped": f"not available: run dvc repro ({', '.join(missing)} missing)"}
    try:
        from stages import export
    except ImportError as err:
        return {"skipped": f"not available: stages.export cannot be imported ({err})"}
    norm = load_normalization(data_dir)
    pixels = norm.invert(load_split(data_dir, "test").images[:1024])  # raw 0-255, as served
    models = {}
    for name, (pt, onnx) in MODELS.items():
        net, _ = load_model(models_dir / pt)
        sess = export.ort_session(models_dir / onnx, params.num_threads)
        # Time the files as they were exported, whatever params.yaml says now.
        params = params.model_copy(update={"input_dtype": ORT_DTYPES[sess.get_inputs()[0].type]})
        models[name] = (export.RawPixelsLeNet5(net, norm).eval(), sess)
    if quick:
        params = params.model_copy(
            update={"warmup_runs": 2, "latency_runs": 20, "throughput_runs": 3}
        )
    timings = export.benchmark(models, pixels, params)
    return {
        **timings,
        "pruned_vs_dense": export.speedups(timings),
        "threads": params.num_threads,
        "latency_runs": params.latency_runs,
        "throughput_batch": params.throughput_batch,
        "throughput_runs": params.throughput_runs,
    }

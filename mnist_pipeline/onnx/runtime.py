"""The exported models in ONNX Runtime: one session set-up, the graph's names and dtypes.

Imports no torch, so `mnist-predict` (and a server) start fast.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort

from mnist_pipeline.errors import UsageError

INPUT_NAME, OUTPUT_NAME = "pixels", "logits"
# The input types an exported model can have (`export.input_dtype`), by ONNX Runtime's name.
ONNX_DTYPES: dict[str, type[np.generic]] = {"tensor(float)": np.float32, "tensor(uint8)": np.uint8}


def session(path: Path, num_threads: int = 0) -> ort.InferenceSession:
    """A CPU session for the model file; `num_threads` 0 keeps ONNX Runtime's default."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = num_threads
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def open_model(path: Path, num_threads: int = 0) -> ort.InferenceSession:
    """`session`, with a `UsageError` that names the file when it is missing or does not load."""
    if not path.is_file():
        raise UsageError(f"model {path} not found")
    try:
        return session(path, num_threads)
    except Exception as err:  # onnxruntime raises its own exception types
        raise UsageError(f"cannot load model {path}: {err}") from None


def input_dtype(sess: ort.InferenceSession) -> type[np.generic]:
    """The numpy dtype the session's input takes; ValueError for a model not of this project."""
    inp = sess.get_inputs()[0]
    dtype = ONNX_DTYPES.get(inp.type)
    if dtype is None:
        raise ValueError(f"the model's input has type {inp.type}; expected float or uint8")
    return dtype


def logits(sess: ort.InferenceSession, pixels: np.ndarray, batch_size: int) -> np.ndarray:
    """Logits (N, 10) for raw pixels (N, 1, 28, 28), in batches."""
    return np.concatenate(
        [
            sess.run([OUTPUT_NAME], {INPUT_NAME: pixels[i : i + batch_size]})[0]
            for i in range(0, len(pixels), batch_size)
        ]
    )

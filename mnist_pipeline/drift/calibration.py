"""Make the reference profile (`profile.py`): the features of the training split, the served
models' predictions on held-out digits, and each signal's threshold calibrated on clean
windows drawn from held-out digits.

Held-out digits are the validation split, cut in two by a seeded shuffle: the models'
reference predictions come from one half, their calibration windows from the other, so that a
window is never compared with the very digits it was drawn from. The features' calibration
windows are drawn from the whole validation split (their reference is the training split).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mnist_pipeline.drift import features, statistics
from mnist_pipeline.drift.profile import monitor_confidence, rounded
from mnist_pipeline.params.schema import ProfileParams

if TYPE_CHECKING:
    import onnxruntime as ort

log = logging.getLogger(__name__)


def raw_pixels(data_dir: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """A prepared split's digits as the server gets them, uint8 (N, 28, 28), and its labels."""
    from safetensors.numpy import load_file

    from mnist_pipeline.data.dataset import load_normalization

    norm = load_normalization(data_dir)
    tensors = load_file(str(data_dir / f"{split}.safetensors"))
    images = tensors["images"][:, 0]  # (N, 28, 28) float32, normalized
    pixels = ((images * np.float32(norm.std) + np.float32(norm.mean)) * np.float32(255.0)).round()
    return pixels.clip(0, 255).astype(np.uint8), tensors["labels"]


def _numeric(values: np.ndarray, windows: np.ndarray, p: ProfileParams) -> dict[str, Any]:
    """A KS signal: the reference quantiles of `values`, calibrated on `windows` (B, n)."""
    grid = statistics.quantile_grid(values, p.quantiles)
    scale = statistics.ks_scale(windows.shape[1], p.quantiles)
    stats = np.array([statistics.ks_statistic(w, grid) * scale for w in windows])
    return {
        "test": "ks",
        "reference": [rounded(q) for q in grid],
        "size": p.quantiles,
        "critical": rounded(statistics.critical(stats, p.false_alarm_quantile, p.margin)),
        "mean": rounded(values.mean()),
    }


def _classes(classes: np.ndarray, windows: np.ndarray, p: ProfileParams) -> dict[str, Any]:
    """A chi-square signal: the class frequencies of `classes`, calibrated on `windows`."""
    freqs = np.bincount(classes, minlength=10) / len(classes)
    scale = statistics.chi_square_scale(windows.shape[1], len(classes))
    stats = np.array([statistics.chi_square(w, freqs) / scale for w in windows])
    return {
        "test": "chi2",
        "reference": [rounded(f) for f in freqs],
        "size": len(classes),
        "critical": rounded(statistics.critical(stats, p.false_alarm_quantile, p.margin)),
    }


def _draws(rng: np.random.Generator, n: int, p: ProfileParams) -> np.ndarray:
    """Indices (B, window) of the calibration windows, drawn with replacement from range(n)."""
    return rng.integers(0, n, (p.calibration_windows, p.calibration_window))


def probabilities(sess: ort.InferenceSession, pixels: np.ndarray, batch: int) -> np.ndarray:
    """Softmax (N, 10) of the model on uint8 digits (N, 28, 28), as the server computes it."""
    from mnist_pipeline.onnx import runtime  # ONNX Runtime loads with the models, not before

    x = pixels[:, None].astype(runtime.input_dtype(sess))  # (N, 1, 28, 28)
    logits = runtime.logits(sess, x, batch).astype(np.float64)
    z = np.exp(logits - logits.max(axis=1, keepdims=True))
    return z / z.sum(axis=1, keepdims=True)


def model_entry(
    probs: np.ndarray, labels: np.ndarray, halves: tuple[np.ndarray, np.ndarray], p: ProfileParams
) -> dict[str, Any]:
    """A model's reference predictions (from the first half) and thresholds (the second)."""
    ref, cal = halves
    rng = np.random.default_rng(p.seed)
    draws = cal[_draws(rng, len(cal), p)]  # (B, window) indices into the split
    conf, cls = monitor_confidence(probs), probs.argmax(axis=1)
    return {
        "accuracy": rounded((cls[ref] == labels[ref]).mean()),
        "confidence_mean": rounded(conf[ref].mean()),
        "signals": {
            "confidence": _numeric(conf[ref], conf[draws], p),
            "predicted_class": _classes(cls[ref], cls[draws], p),
        },
    }


def build(
    data_dir: Path, models: dict[str, tuple[str, ort.InferenceSession]], p: ProfileParams
) -> dict[str, Any]:
    """The profile of the prepared data in `data_dir` for `models`: file name -> (sha256, its
    session)."""
    train, train_labels = raw_pixels(data_dir, "train")
    val, val_labels = raw_pixels(data_dir, "val")
    ref_feats, val_feats = features.extract(train), features.extract(val)
    rng = np.random.default_rng(p.seed)
    order = rng.permutation(len(val))
    halves = (np.sort(order[: len(val) // 2]), np.sort(order[len(val) // 2 :]))
    draws = _draws(rng, len(val), p)
    signals = {
        name: _numeric(ref_feats[:, i], val_feats[draws, i], p)
        for i, name in enumerate(features.FEATURES)
    }
    entries = {}
    for name, (sha256, sess) in sorted(models.items()):
        probs = probabilities(sess, val, p.batch_size)
        entries[name] = {"sha256": sha256, **model_entry(probs, val_labels, halves, p)}
        log.info("%s: reference accuracy %.4f", name, entries[name]["accuracy"])
    prior = np.bincount(train_labels, minlength=10) / len(train_labels)
    return {
        "calibration": {
            "false_alarm_quantile": p.false_alarm_quantile,
            "margin": p.margin,
            "window": p.calibration_window,
            "windows": p.calibration_windows,
        },
        "features": list(features.FEATURES),
        "label_prior": [rounded(f) for f in prior],
        "models": entries,
        "signals": signals,
        "sizes": {"train": len(train), "val": len(val), "reference_predictions": len(halves[0])},
    }

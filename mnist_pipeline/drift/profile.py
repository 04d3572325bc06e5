"""The reference profile: what the `profile` stage writes and the drift monitor reads.

    {"signals": {<feature>: {"test": "ks", "reference": [K quantiles], "size": K,
                             "critical": c, "mean": m}},
     "models": {<ONNX file name>: {"sha256": ..., "confidence_mean": ...,
                "signals": {"confidence": {"test": "ks", ...},
                            "predicted_class": {"test": "chi2", "reference": [10 freqs],
                                                "size": m, "critical": c}}}},
     "label_prior": [10 freqs], "calibration": {...}, "sizes": {...}}

The features' references come from the training split; the predictions' from the models'
runs on held-out digits, one entry per ONNX model the pipeline ships, found by its sha256.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mnist_pipeline.drift import statistics

PREDICTION_SIGNALS = ("predicted_class", "confidence")


@dataclass(frozen=True)
class Signal:
    """One signal's test against its reference, with the calibrated constant."""

    name: str
    test: str  # "ks" (numeric values) or "chi2" (predicted classes)
    reference: np.ndarray  # sorted quantiles (ks) or class frequencies (chi2)
    size: int  # K quantiles (ks) or m reference predictions (chi2)
    critical: float

    def score(self, values: np.ndarray) -> float:
        if self.test == "chi2":
            return statistics.chi_square(values, self.reference)
        return statistics.ks_statistic(values, self.reference)

    def threshold(self, n: int) -> float:
        """The threshold of a window of n values."""
        if self.test == "chi2":
            return self.critical * statistics.chi_square_scale(n, self.size)
        return self.critical / statistics.ks_scale(n, self.size)


@dataclass(frozen=True)
class Profile:
    """A loaded profile; `for_model` picks the prediction signals of one served model."""

    signals: dict[str, Signal]  # the input features'
    models: dict[str, dict[str, Any]]
    sha256: str  # of the profile file
    path: Path

    def for_model(self, sha256: str | None) -> tuple[str | None, dict[str, Signal], float | None]:
        """(the profile's name of the model, its prediction signals, its reference mean
        confidence) for the model of that sha256; (None, {}, None) when it has no entry."""
        for name, entry in sorted(self.models.items()):
            if entry["sha256"] == sha256:
                signals = {s: _signal(s, entry["signals"][s]) for s in PREDICTION_SIGNALS}
                return name, signals, float(entry["confidence_mean"])
        return None, {}, None


def _signal(name: str, raw: dict[str, Any]) -> Signal:
    return Signal(
        name,
        raw["test"],
        np.asarray(raw["reference"], dtype=np.float64),
        int(raw["size"]),
        float(raw["critical"]),
    )


def load(path: Path) -> Profile:
    """Read a profile file; ValueError or OSError when it is not one."""
    import hashlib

    data = path.read_bytes()
    raw = json.loads(data)
    signals = {name: _signal(name, s) for name, s in sorted(raw["signals"].items())}
    return Profile(signals, raw["models"], hashlib.sha256(data).hexdigest(), path)


def monitor_confidence(probabilities: np.ndarray) -> np.ndarray:
    """The max-softmax (N,) of softmax rows (N, 10), to the 6 places `/predict` answers with:
    the profile and the live window round alike."""
    return np.round(np.asarray(probabilities, dtype=np.float64).max(axis=1), 6)


def rounded(x: float) -> float:
    """6 significant digits: the JSON stays the same across CPUs' last bits."""
    return float(f"{float(x):.6g}")

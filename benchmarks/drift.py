"""Drift section: clean and shifted streams of real test digits through the drift monitor,
in process, one digit a request, as `mnist-serve` sees them.

For each stream (testing.drift_streams): every signal's score over threshold after each
`step` requests, and the requests until the first alarm; then the false-alarm rate: the share
of `seeds` clean streams on which any signal alarmed at any point. The scores do not depend on
the machine's speed or load.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np

from mnist_pipeline.drift import calibration, monitor, profile
from mnist_pipeline.onnx import runtime
from testing import drift_streams

MODEL = "lenet5_pruned_int8.onnx"  # the serving target cell's
LENGTH, STEP, SEEDS = 1500, 10, 20


def _run(
    mon: monitor.DriftMonitor, pixels: np.ndarray, probs: np.ndarray, step: int
) -> dict[str, Any]:
    """Feed the stream a digit at a time; the ratio score / threshold of every signal after
    each `step` digits, and the request of the first alarm (None: none)."""
    ratios: dict[str, list[float | None]] = {}
    first = None
    for i in range(len(pixels)):
        mon.observe(pixels[i : i + 1], probs[i : i + 1])
        if (i + 1) % step:
            continue
        rep = mon.report()
        for name, s in rep.signals.items():
            ratio = None if s.score is None or s.threshold is None else s.score / s.threshold
            ratios.setdefault(name, []).append(None if ratio is None else round(ratio, 4))
        alarms = sorted(n for n, s in rep.signals.items() if s.alarm)
        if alarms and first is None:
            first = {"request": i + 1, "signals": alarms}
    return {"ratios": ratios, "first_alarm": first}


def measure(
    data: Path,
    models: Path,
    profile_path: Path,
    window: int = monitor.DEFAULT_WINDOW,
    length: int = LENGTH,
    seeds: int = SEEDS,
    step: int = STEP,
) -> dict[str, Any]:
    """The drift scores of every stream, and the clean streams' false-alarm rate."""
    prof = profile.load(profile_path)
    model_bytes = (models / MODEL).read_bytes()
    sha = hashlib.sha256(model_bytes).hexdigest()
    sess = runtime.session(models / MODEL, 1)
    pixels, labels = calibration.raw_pixels(data, "test")

    def fresh() -> monitor.DriftMonitor:
        return monitor.DriftMonitor(prof, sha, window=window, every=10**9)

    def probs(digits: np.ndarray) -> np.ndarray:
        return calibration.probabilities(sess, digits, 1000)

    streams = {}
    for kind in drift_streams.STREAMS:
        digits = drift_streams.stream(pixels, labels, kind, length, seed=0)
        streams[kind] = _run(fresh(), digits, probs(digits), step)
    clean = []
    for seed in range(seeds):
        digits = drift_streams.stream(pixels, labels, "clean", length, seed=1000 + seed)
        run = _run(fresh(), digits, probs(digits), step)
        peak = max(r for rs in run["ratios"].values() for r in rs if r is not None)
        clean.append({"seed": 1000 + seed, "first_alarm": run["first_alarm"], "peak": peak})
    alarmed = sum(c["first_alarm"] is not None for c in clean)
    return {
        "model": MODEL,
        "profile_sha256": prof.sha256,
        "window": window,
        "min_samples": min(monitor.DEFAULT_MIN_SAMPLES, window),
        "length": length,
        "step": step,
        "streams": streams,
        "false_alarms": {
            "seeds": seeds,
            "alarmed": alarmed,
            "rate": alarmed / seeds,
            "peak_ratio": max(c["peak"] for c in clean),
            "runs": clean,
        },
    }


def markdown(d: dict[str, Any]) -> list[str]:
    """The streams' first alarms and the false-alarm rate, as Markdown lines."""
    fa = d["false_alarms"]
    lines = [
        f"Model `{d['model']}`, window {d['window']} digits (alarms from {d['min_samples']}), "
        f"one digit a request, tested every {d['step']} requests, {d['length']} requests a "
        "stream.",
        "",
        "| stream | first alarm at request | signals alarming then |",
        "|---|--:|---|",
    ]
    for kind, s in d["streams"].items():
        first = s["first_alarm"]
        at, which = ("none", "-") if first is None else (first["request"], first["signals"])
        names = which if isinstance(which, str) else ", ".join(f"`{n}`" for n in which)
        lines.append(f"| {kind} | {at} | {names} |")
    lines += [
        "",
        f"False alarms: {fa['alarmed']} of {fa['seeds']} clean streams ({fa['rate']:.0%}) "
        f"raised any alarm; the highest score / threshold on any clean stream was "
        f"{fa['peak_ratio']:.2f}.",
    ]
    return lines


def figure(d: dict[str, Any]) -> Any:
    """Each stream's highest score / threshold over the signals, request by request."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.0))
    for kind, s in d["streams"].items():
        rows = [r for r in zip(*s["ratios"].values(), strict=True)]
        worst = [max((v for v in row if v is not None), default=0.0) for row in rows]
        x = [(i + 1) * d["step"] for i in range(len(worst))]
        ax.plot(x, worst, label=kind, linewidth=2.2 if kind == "clean" else 1.3)
    ax.axhline(1.0, color="black", linestyle="--", linewidth=1, label="threshold")
    ax.axvline(d["min_samples"], color="grey", linestyle=":", linewidth=1)
    ax.set_yscale("log")
    ax.set_xlabel("requests (one digit each)")
    ax.set_ylabel("highest drift score / threshold")
    ax.set_title(f"Drift of test-digit streams, window {d['window']} ({d['model']})")
    ax.legend(fontsize=8, ncol=2)
    return fig


def png(fig: Any) -> bytes:
    """The figure as PNG bytes, without the software-version text chunk (byte-stable)."""
    import io

    import matplotlib.pyplot as plt

    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, metadata={"Software": None})
    plt.close(fig)
    return buf.getvalue()

"""Drift monitoring in numpy: the digit features, the tests against a brute-force reading of
their definitions, the calibrated thresholds, and the monitor's windows, on synthetic
profiles."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from mnist_pipeline.drift import calibration, features, monitor, profile, statistics
from mnist_pipeline.onnx import runtime
from mnist_pipeline.params.schema import parse_params
from stages import profile as profile_stage
from testing import drift_streams
from tests.conftest import tiny_params_dict

FEATURE = {name: i for i, name in enumerate(features.FEATURES)}


def test_features_of_a_known_block() -> None:
    digit = np.zeros((1, 28, 28), np.uint8)
    digit[0, 8:20, 10:14] = 255  # a 12 x 4 upright bar
    f = features.extract(digit)[0]
    assert f[FEATURE["bbox_height"]] == 12 and f[FEATURE["bbox_width"]] == 4
    assert f[FEATURE["centroid_x"]] == pytest.approx(11.5)
    assert f[FEATURE["centroid_y"]] == pytest.approx(13.5)
    assert f[FEATURE["ink_mass"]] == pytest.approx(48 / 784, abs=1e-4)
    assert f[FEATURE["orientation"]] == pytest.approx(0.0, abs=1e-9)
    assert f[FEATURE["background"]] == 0
    inverted = features.extract(drift_streams.inverted(digit))[0]
    assert inverted[FEATURE["background"]] == 1 and inverted[FEATURE["ink_mass"]] > 0.9
    turned = features.extract(drift_streams.rotated(digit, drift_streams.ROTATION_DEG))[0]
    assert abs(turned[FEATURE["orientation"]]) == pytest.approx(30, abs=3)
    thick = features.extract(drift_streams.thickened(digit))[0]
    assert thick[FEATURE["bbox_width"]] == 6 and thick[FEATURE["bbox_height"]] == 14


def test_an_empty_field_has_finite_features() -> None:
    assert np.isfinite(features.extract(np.zeros((2, 28, 28), np.uint8))).all()


def _brute_ks(a: np.ndarray, b: np.ndarray) -> float:
    points = np.concatenate([a, b])
    fa = (a[None, :] <= points[:, None]).mean(axis=1)
    fb = (b[None, :] <= points[:, None]).mean(axis=1)
    return float(np.abs(fa - fb).max())


@pytest.mark.parametrize("ties", [False, True])
def test_ks_statistic_is_the_two_sample_statistic(ties: bool) -> None:
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=300), np.sort(rng.normal(0.3, 1.2, size=200))
    if ties:
        a, b = a.round(), np.sort(b.round())
    assert statistics.ks_statistic(a, b) == pytest.approx(_brute_ks(a, b))


def test_chi_square_is_pearsons() -> None:
    probs = np.full(10, 0.1)
    classes = np.array([0] * 30 + [1] * 10 + list(range(2, 10)) * 5)
    n = len(classes)
    counts = np.bincount(classes, minlength=10)
    want = ((counts - n * 0.1) ** 2 / (n * 0.1)).sum()
    assert statistics.chi_square(classes, probs) == pytest.approx(want)


def _signal(test: str, reference: np.ndarray, size: int, critical: float) -> profile.Signal:
    return profile.Signal("s", test, reference, size, critical)


def test_thresholds_scale_so_clean_windows_of_any_size_stay_below() -> None:
    """Calibrated at one window size, the KS and chi-square thresholds hold at others: the
    share of clean windows over threshold stays near the calibration's quantile."""
    rng = np.random.default_rng(1)
    p = parse_params(tiny_params_dict()).profile.model_copy(
        update={"calibration_window": 200, "calibration_windows": 400, "margin": 1.0}
    )
    values, held_out = rng.normal(size=20_000), rng.normal(size=5_000)
    ks = calibration._numeric(values, held_out[rng.integers(0, 5000, (400, 200))], p)
    sig = _signal("ks", np.array(ks["reference"]), ks["size"], ks["critical"])
    freqs = np.full(10, 0.1)
    classes = rng.integers(0, 10, 5000)
    chi = calibration._classes(
        classes[:2500], classes[2500:][rng.integers(0, 2500, (400, 200))], p
    )
    csig = _signal("chi2", np.array(chi["reference"]), chi["size"], chi["critical"])
    for n in (50, 200, 1000):
        over = np.mean([sig.score(rng.normal(size=n)) > sig.threshold(n) for _ in range(200)])
        assert over <= 0.05, (n, over)
        drifted = np.mean(
            [sig.score(rng.normal(1.0, size=n)) > sig.threshold(n) for _ in range(20)]
        )
        assert drifted == 1.0
        draws = rng.choice(10, size=(200, n), p=freqs)
        cover = np.mean([csig.score(c) > csig.threshold(n) for c in draws])
        assert cover <= 0.05, (n, cover)


def test_the_profile_stage_is_byte_stable_and_names_its_model(
    synthetic_profile: Path, prepared: Path, onnx_model: Path, tmp_path: Path
) -> None:
    params = synthetic_profile.parent / "params.yaml"
    again = tmp_path / "again.json"
    args = ["--params", str(params), "--data", str(prepared), "--out", str(again)]
    profile_stage.main([*args, "--onnx", str(onnx_model)])
    assert again.read_bytes() == synthetic_profile.read_bytes()
    raw = json.loads(synthetic_profile.read_text())
    assert set(raw["signals"]) == set(features.FEATURES)
    entry = raw["models"][onnx_model.name]
    assert entry["sha256"] == hashlib.sha256(onnx_model.read_bytes()).hexdigest()
    assert sum(raw["label_prior"]) == pytest.approx(1, abs=1e-4)
    assert sum(entry["signals"]["predicted_class"]["reference"]) == pytest.approx(1, abs=1e-4)


def _probs(onnx_model: Path, pixels: np.ndarray) -> np.ndarray:
    return calibration.probabilities(runtime.session(onnx_model, 1), pixels, 256)


def test_the_monitor_alarms_on_inverted_digits_and_not_on_clean_ones(
    synthetic_profile: Path, prepared: Path, onnx_model: Path
) -> None:
    prof = profile.load(synthetic_profile)
    sha = hashlib.sha256(onnx_model.read_bytes()).hexdigest()
    pixels, labels = calibration.raw_pixels(prepared, "val")
    reports: list[monitor.Report] = []
    clean = monitor.DriftMonitor(prof, sha, window=60, every=20, min_samples=30)
    digits = drift_streams.stream(pixels, labels, "clean", 120, seed=0)
    clean.observe(digits, _probs(onnx_model, digits))
    rep = clean.report()
    assert rep.samples == 60 and rep.model == onnx_model.name
    assert set(rep.signals) == {*features.FEATURES, "confidence", "predicted_class"}
    assert not any(s.alarm for s in rep.signals.values()), rep.signals
    shifted = monitor.DriftMonitor(prof, sha, window=60, every=20, min_samples=30,
                                   on_report=reports.append)  # fmt: skip
    digits = drift_streams.stream(pixels, labels, "inverted", 60, seed=0)
    probs = _probs(onnx_model, digits)
    for i in range(60):
        shifted.observe(digits[i : i + 1], probs[i : i + 1])
    assert [r.samples for r in reports] == [20, 40, 60]  # every 20 digits, off the hot path
    assert not any(s.alarm for s in reports[0].signals.values())  # under min_samples
    assert reports[1].signals["background"].alarm and reports[2].signals["ink_mass"].alarm


def test_the_window_is_bounded_and_keeps_the_latest_digits(synthetic_profile: Path) -> None:
    prof = profile.load(synthetic_profile)
    mon = monitor.DriftMonitor(prof, None, window=8, every=1000)
    assert mon.model is None and mon.prediction_signals == {}
    blank = np.zeros((5, 28, 28), np.uint8)
    full = np.full((5, 28, 28), 255, np.uint8)
    probs = np.full((5, 10), 0.1)
    mon.observe(blank, probs)
    mon.observe(full, probs)
    mon.observe(full, probs)  # 15 digits through a window of 8: the last 8, all full
    feats, _, _ = mon._values()
    assert feats.shape == (8, len(features.FEATURES))
    assert (feats[:, FEATURE["mean_intensity"]] == 1).all()
    mon.observe(np.zeros((20, 28, 28), np.uint8), np.full((20, 10), 0.1))  # more than a window
    assert (mon._values()[0][:, FEATURE["mean_intensity"]] == 0).all()
    assert set(mon.report().signals) == set(features.FEATURES)

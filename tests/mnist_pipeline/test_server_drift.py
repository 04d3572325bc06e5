"""Drift monitoring in `mnist-serve`: the profile it finds or is given, `/model` naming it,
`GET /monitoring/drift`, the gauges of the metric contract, `--no-drift`, and `--workers`."""

from __future__ import annotations

import shutil
from pathlib import Path

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from benchmarks.serving import start_server
from mnist_pipeline.drift import calibration
from mnist_pipeline.serving import server
from mnist_pipeline.serving.drift import PROFILE_NAME, DriftOptions
from testing import drift_streams
from tests.mnist_pipeline.test_model_server import _wait_ready


def _client(model: Path, drift: DriftOptions | None = None) -> TestClient:
    return TestClient(server.create_app(model, drift=drift))


def _samples(text: str) -> dict[tuple[str, tuple], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


@pytest.fixture(scope="module")
def inverted(prepared: Path) -> np.ndarray:
    pixels, labels = calibration.raw_pixels(prepared, "val")
    return drift_streams.stream(pixels, labels, "inverted", 120, seed=0)


@pytest.fixture
def beside(onnx_model: Path, synthetic_profile: Path, tmp_path: Path) -> Path:
    """The model in a folder with its profile beside it, as `dvc repro` leaves models/."""
    shutil.copy(onnx_model, tmp_path / "lenet5.onnx")
    shutil.copy(synthetic_profile, tmp_path / PROFILE_NAME)
    return tmp_path / "lenet5.onnx"


def test_the_profile_beside_the_model_is_found_and_inverted_digits_alarm(
    beside: Path, synthetic_profile: Path, inverted: np.ndarray
) -> None:
    with _client(beside, DriftOptions(window=60)) as c:
        _wait_ready(c)
        ref = c.get("/model").json()["drift_profile"]
        assert ref["file"] == PROFILE_NAME and ref["model"] == "lenet5.onnx"
        before = c.get("/monitoring/drift").json()
        assert before["enabled"] and before["samples"] == 0
        assert not any(s["alarm"] for s in before["signals"].values())
        for i in range(0, 120, 4):  # 30 requests of 4 digits
            r = c.post("/predict", json={"pixels": inverted[i : i + 4].tolist()})
            assert r.status_code == 200
        drift = c.get("/monitoring/drift").json()
        assert drift["samples"] == drift["window"] == 60
        assert drift["signals"]["background"]["alarm"], drift["signals"]["background"]
        assert drift["reference_confidence_mean"] is not None
        m = _samples(c.get("/metrics").text)
    alarm = m[("mnist_drift_alarm", (("signal", "background"),))]
    score = m[("mnist_drift_score", (("signal", "background"),))]
    assert alarm == 1 and score > m[("mnist_drift_threshold", (("signal", "background"),))]
    assert m[("mnist_drift_window_samples", ())] == 60
    signals = {dict(k[1]).get("signal") for k in m if k[0] == "mnist_drift_score"}
    assert {"ink_mass", "centroid_x", "bbox_width", "predicted_class", "confidence"} <= signals
    assert ("mnist_window_confidence_mean", ()) in m
    assert ("mnist_reference_confidence_mean", ()) in m


def test_uploaded_images_are_monitored_too(beside: Path, inverted: np.ndarray) -> None:
    import io

    from PIL import Image

    def png(d: np.ndarray) -> bytes:
        buf = io.BytesIO()
        Image.fromarray(d, mode="L").save(buf, format="PNG")
        return buf.getvalue()

    with _client(beside) as c:
        _wait_ready(c)
        files = [("file", (f"{i}.png", png(inverted[i]), "image/png")) for i in range(3)]
        assert c.post("/predict", files=files).status_code == 200
        assert c.get("/monitoring/drift").json()["samples"] == 3


def test_open_inference_requests_are_monitored_too(beside: Path, inverted: np.ndarray) -> None:
    """Every route that classifies feeds the one window: the v2 infer as /predict does."""
    digits = inverted[:60, None]  # (60, 1, 28, 28)
    tensor = {"name": "pixels", "datatype": "UINT8", "shape": list(digits.shape)}
    with _client(beside, DriftOptions(window=60)) as c:
        _wait_ready(c)
        r = c.post(
            f"/v2/models/{beside.name}/infer",
            json={"inputs": [tensor | {"data": digits.ravel().tolist()}]},
        )
        assert r.status_code == 200, r.text
        drift = c.get("/monitoring/drift").json()
    assert drift["samples"] == 60
    assert drift["signals"]["background"]["alarm"], drift["signals"]["background"]


def test_no_drift_and_no_profile_say_why(
    beside: Path, onnx_model: Path, synthetic_profile: Path
) -> None:
    with _client(beside, DriftOptions(enabled=False)) as c:
        _wait_ready(c)
        assert c.get("/model").json()["drift_profile"] is None
        assert c.get("/monitoring/drift").json() == {
            **c.get("/monitoring/drift").json(),
            "enabled": False,
            "reason": "--no-drift",
        }
        assert c.post("/predict", json={"pixels": [[0] * 28] * 28}).status_code == 200
    with _client(onnx_model) as c:  # no profile beside it
        _wait_ready(c)
        drift = c.get("/monitoring/drift").json()
        assert not drift["enabled"] and PROFILE_NAME in drift["reason"]
    with _client(onnx_model, DriftOptions(profile=synthetic_profile)) as c:  # named
        _wait_ready(c)
        assert c.get("/monitoring/drift").json()["enabled"]


def test_the_drift_options_reach_the_workers(beside: Path, synthetic_profile: Path) -> None:
    args = server.parse_args(["--model", str(beside), "--drift-window", "64", "--no-drift"])
    options = server.app_options(args, server.ModelSource(beside))
    assert options["drift"] == {"profile": None, "window": 64, "enabled": False}
    with pytest.raises(SystemExit):
        server.parse_args(["--model", str(beside), "--drift-window", "0"])
    args = server.parse_args(["--model", str(beside), "--drift-profile", str(synthetic_profile)])
    import json

    app = server.app_from_options(
        json.loads(json.dumps(server.app_options(args, server.ModelSource(beside)), default=str))
    )
    with TestClient(app) as c:
        _wait_ready(c)
        assert c.get("/model").json()["drift_profile"]["file"] == synthetic_profile.name


@pytest.mark.slow
def test_workers_keep_their_own_windows_and_the_gauges_take_the_worst(
    beside: Path, inverted: np.ndarray, tmp_path: Path
) -> None:
    extra = ["--workers", "2", "--drift-window", "40"]
    served = start_server(beside, extra, timeout_s=180, log=tmp_path / "s.log")
    try:
        for i in range(120):  # on fresh connections, so both workers take some
            r = httpx.post(f"{served.url}/predict", json={"pixels": inverted[i].tolist()})
            assert r.is_success
        m = _samples(httpx.get(f"{served.url}/metrics").text)
        assert m[("mnist_drift_alarm", (("signal", "background"),))] == 1  # no pid label
        assert m[("mnist_drift_window_samples", ())] == 40
    finally:
        assert served.stop() == 0

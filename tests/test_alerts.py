"""The shipped Prometheus alert rules (monitoring/prometheus): promtool checks them and runs
their unit tests; slow, a real Prometheus scrapes a real `mnist-serve` with them and its own
`/api/v1/alerts` shows each alert fire (drift on a shifted stream of real digits, and not on a
clean one; 5xx answers; a server not ready, then gone)."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from benchmarks.serving import Served, start_server
from mnist_pipeline.serving.metrics import ServerMetrics
from testing import shifted_streams
from testing.prometheus_server import CONFIG, Prometheus, config_for, running_prometheus
from tests.conftest import REAL_MIRROR, ROOT, RealDigits

RULES = CONFIG.with_name("alerts.yml")
RULE_TESTS = CONFIG.with_name("alerts_test.yml")
FOR_S = 30  # every alert's `for:` in alerts.yml
NO_PROMTOOL = "promtool not on PATH (Debian: apt-get install prometheus; CI installs it)"
NO_PROMETHEUS = "prometheus not on PATH (Debian: apt-get install prometheus; CI installs it)"


def _tool(name: str, reason: str) -> str:
    exe = shutil.which(name)
    if exe is None:
        if os.environ.get("CI") == "true":
            pytest.fail(reason)  # CI installs it: a missing tool must not pass as a skip
        pytest.skip(reason)
    return exe


def _rules() -> list[dict]:
    return [r for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]]


@pytest.mark.parametrize(
    ("args", "path"),
    [(["check", "rules"], RULES), (["check", "config"], CONFIG), (["test", "rules"], RULE_TESTS)],
    ids=["check-rules", "check-config", "unit-tests"],
)
def test_promtool_passes_the_shipped_files(args: list[str], path: Path) -> None:
    promtool = _tool("promtool", NO_PROMTOOL)
    done = subprocess.run([promtool, *args, str(path)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def test_each_alert_has_a_unit_test_that_fires_it_and_one_that_does_not() -> None:
    fired: set[str] = set()
    quiet: set[str] = set()
    for case in yaml.safe_load(RULE_TESTS.read_text())["tests"]:
        for check in case["alert_rule_test"]:
            (fired if check["exp_alerts"] else quiet).add(check["alertname"])
    alerts = {r["alert"] for r in _rules()}
    assert fired == alerts and quiet == alerts


def test_the_rules_use_metrics_the_server_exports() -> None:
    """A metric renamed in serving/metrics.py would leave its alert silently never firing."""
    families = list(text_string_to_metric_families(ServerMetrics().render(True)[0].decode()))
    # A labelled counter or gauge has no samples before its first value: its family names it.
    exported = {f"{f.name}_total" for f in families if f.type == "counter"}
    exported |= {f.name for f in families if f.type == "gauge"}
    exported |= {s.name for f in families for s in f.samples}
    used = {name for r in _rules() for name in re.findall(r"\b(?:mnist|http)_[a-z_]+", r["expr"])}
    assert used <= exported, used - exported
    assert {"mnist_drift_alarm", "mnist_window_confidence_mean", "mnist_ready"} <= used


def test_the_test_config_is_the_shipped_one_at_1_s_with_the_shipped_rules() -> None:
    shipped = yaml.safe_load(CONFIG.read_text())
    config = config_for(["127.0.0.1:1234"])
    assert config["global"] == {"scrape_interval": "1s", "evaluation_interval": "1s"}
    assert config["rule_files"] == [str(RULES)]
    assert config["scrape_configs"][0]["static_configs"] == [{"targets": ["127.0.0.1:1234"]}]
    for key in ("global", "rule_files", "scrape_configs"):
        config.pop(key), shipped.pop(key)
    assert config == shipped  # nothing else differs


@pytest.fixture
def prometheus_binary() -> str:
    return _tool("prometheus", NO_PROMETHEUS)


def _target(served: Served) -> str:
    return served.url.removeprefix("http://")


def _scraped(prom: Prometheus, expr: str) -> float | None:
    """The value Prometheus holds now for a query with one sample, else None."""
    result = prom.query(expr)
    return float(result[0]["value"][1]) if len(result) == 1 else None


def _firing(prom: Prometheus, name: str) -> list[dict]:
    return [a for a in prom.alerts(name) if a["state"] == "firing"]


@pytest.fixture(scope="module")
def watched_model(real_digits: RealDigits, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`real_digits`' model in a folder with the drift profile that the `profile` stage makes
    for it (this repo's params, the real training and validation digits) beside it, as
    `dvc repro` leaves `models/`: so mnist-serve monitors it."""
    from mnist_pipeline.params.schema import load_params
    from mnist_pipeline.serving.drift import PROFILE_NAME
    from stages import prepare
    from stages import profile as profile_stage

    root = tmp_path_factory.mktemp("watched")
    with pytest.MonkeyPatch.context() as mp:  # the official files and their official MD5s
        mp.setenv("MNIST_MIRROR", str(REAL_MIRROR))
        mp.delenv("MNIST_MD5SUMS", raising=False)
        prepare.prepare(load_params(ROOT / "params.yaml").prepare, root / "raw", root / "data")
    model = root / "models" / real_digits.model.name
    model.parent.mkdir()
    shutil.copy(real_digits.model, model)
    argv = ["--params", str(ROOT / "params.yaml"), "--data", str(root / "data")]
    argv += ["--out", str(model.parent / PROFILE_NAME), "--onnx", str(model)]
    profile_stage.main(argv)
    return model


@pytest.mark.slow
def test_drift_alert_fires_on_an_inverted_stream_and_not_on_a_clean_one(
    prometheus_binary: str, watched_model: Path, tmp_path: Path
) -> None:
    served = start_server(watched_model, [], log=tmp_path / "serve.log")
    try:
        with urllib.request.urlopen(f"{served.url}/monitoring/drift", timeout=10) as r:
            assert json.load(r)["enabled"], "the drift monitor is off: no profile beside the model"
        with running_prometheus(tmp_path / "prometheus", [_target(served)]) as prom:
            count, mirror = "2000", str(REAL_MIRROR)
            # What docs/serving.md, "Alerts", tells a person to run.
            shifted_streams.main(
                ["clean", "--url", served.url, "--count", count, "--mirror", mirror]
            )
            now = _window(served)
            prom.wait_for(
                lambda: _scraped(prom, "max(mnist_drift_window_samples)") == now,
                30,
                "Prometheus scraped the clean window",
            )
            assert _scraped(prom, "max(mnist_drift_alarm)") == 0
            # Quiet for longer than `for:`: never even pending.
            quiet_until = time.monotonic() + FOR_S + 5
            while time.monotonic() < quiet_until:
                assert prom.alerts("MnistInputDrift") == [], prom.alerts("MnistInputDrift")
                time.sleep(1)

            sent = time.monotonic()
            argv = ["inverted", "--url", served.url, "--count", count, "--start", count]
            shifted_streams.main([*argv, "--mirror", mirror])
            firing = prom.wait_for(
                lambda: _firing(prom, "MnistInputDrift"), FOR_S + 60, "the drift alert fired"
            )
            print(f"drift alert firing {time.monotonic() - sent:.1f} s after the stream")
            assert {a["labels"]["instance"] for a in firing} == {_target(served)}
            assert all(a["labels"]["signal"] for a in firing)
    finally:
        served.stop()


def _window(served: Served) -> float:
    """The drift window's digit count, as the server's own scrape says."""
    with urllib.request.urlopen(f"{served.url}/metrics", timeout=10) as r:
        text = r.read().decode()
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == "mnist_drift_window_samples":
                return s.value
    raise AssertionError("no mnist_drift_window_samples in the scrape")


@pytest.fixture
def saturated(onnx_model: Path, tmp_path: Path) -> Iterator[Served]:
    """`mnist-serve` taking one request at a time: concurrent ones get 503."""
    served = start_server(onnx_model, ["--max-in-flight", "1"], log=tmp_path / "serve.log")
    yield served
    served.stop()


@pytest.mark.slow
def test_error_rate_alert_fires_on_503s_of_a_saturated_server(
    prometheus_binary: str, saturated: Served, digits: list[np.ndarray], tmp_path: Path
) -> None:
    with running_prometheus(tmp_path / "prometheus", [_target(saturated)]) as prom:
        prom.wait_for(lambda: _scraped(prom, "up") == 1, 30, "Prometheus scraped the server")
        assert prom.alerts("MnistServerErrors") == []
        statuses: list[int] = []
        stop = threading.Event()
        batch = np.stack(digits * 16)  # (64, 28, 28)

        def client() -> None:
            while not stop.is_set():
                try:
                    shifted_streams.send(saturated.url, batch)
                    statuses.append(200)
                except urllib.error.HTTPError as err:
                    statuses.append(err.code)

        clients = [threading.Thread(target=client) for _ in range(8)]
        for c in clients:
            c.start()
        try:
            prom.wait_for(
                lambda: _firing(prom, "MnistServerErrors"), FOR_S + 60, "the 5xx alert fired"
            )
        finally:
            stop.set()
            for c in clients:
                c.join()
        assert 503 in statuses and 200 in statuses


@pytest.mark.slow
def test_not_ready_fires_while_draining_and_server_down_once_it_is_gone(
    prometheus_binary: str, onnx_model: Path, tmp_path: Path
) -> None:
    # SIGTERM keeps it serving (scraped, /readyz 503) for longer than the alert's `for:`.
    extra = ["--drain-s", str(FOR_S + 60), "--grace-s", str(FOR_S + 90)]
    served = start_server(onnx_model, extra, log=tmp_path / "serve.log")
    try:
        with running_prometheus(tmp_path / "prometheus", [_target(served)]) as prom:
            prom.wait_for(lambda: _scraped(prom, "mnist_ready") == 1, 30, "scraped ready")
            assert prom.alerts("MnistNotReady") == [] and prom.alerts("MnistServerDown") == []

            served.proc.send_signal(signal.SIGTERM)
            prom.wait_for(lambda: _firing(prom, "MnistNotReady"), FOR_S + 30, "not ready fired")
            assert _scraped(prom, "up") == 1 and prom.alerts("MnistServerDown") == []

            served.proc.kill()
            served.proc.wait()
            prom.wait_for(lambda: _firing(prom, "MnistServerDown"), FOR_S + 30, "down fired")
    finally:
        served.stop()

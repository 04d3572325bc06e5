"""A real Prometheus (Debian's `prometheus` binary) scraping servers on 127.0.0.1 with the
shipped alert rules, for the tests that watch the alerts fire in Prometheus's own API.

Its config is the shipped `monitoring/prometheus/prometheus.yml` with three changes: 1 s
scrape and evaluation intervals (so an alert's `for:` is the only wait), the targets given, and
the shipped rules file by its absolute path. The rules themselves are not touched.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import yaml

from testing.ports import PortTaken, answers_200, on_a_free_port, port_taken

CONFIG = Path(__file__).resolve().parents[1] / "monitoring" / "prometheus" / "prometheus.yml"
T = TypeVar("T")


def binary() -> str | None:
    """The `prometheus` on PATH (Debian's package installs /usr/bin/prometheus), or None."""
    return shutil.which("prometheus")


def config_for(targets: list[str], interval_s: int = 1, shipped: Path = CONFIG) -> dict:
    """The shipped config, scraping `targets` and evaluating the shipped rules every
    `interval_s` seconds."""
    config = yaml.safe_load(shipped.read_text())
    config["global"].update(scrape_interval=f"{interval_s}s", evaluation_interval=f"{interval_s}s")
    config["rule_files"] = [str((shipped.parent / f).resolve()) for f in config["rule_files"]]
    (job,) = config["scrape_configs"]
    job["static_configs"] = [{"targets": targets}]
    return config


@dataclass
class Prometheus:
    """A running Prometheus: its process, base URL and log."""

    proc: subprocess.Popen
    url: str
    log: Path

    def api(self, path: str, **query: str) -> Any:
        """The `data` of a GET on `/api/v1/<path>`."""
        url = f"{self.url}/api/v1/{path}?{urllib.parse.urlencode(query)}"
        with urllib.request.urlopen(url, timeout=10) as r:
            body = json.load(r)
        assert body["status"] == "success", body
        return body["data"]

    def alerts(self, name: str) -> list[dict[str, Any]]:
        """The alerts named `name` that Prometheus holds now, pending or firing."""
        return [a for a in self.api("alerts")["alerts"] if a["labels"]["alertname"] == name]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """An instant query's samples: each its `metric` labels and `value` [time, "value"]."""
        return self.api("query", query=expr)["result"]

    def wait_for(self, what: Callable[[], T], timeout_s: float, why: str) -> T:
        """`what()` once it is truthy, polled every 0.5 s; AssertionError after `timeout_s`."""
        deadline = time.monotonic() + timeout_s
        while not (got := what()):
            if time.monotonic() > deadline:
                raise AssertionError(f"{why}: not within {timeout_s} s; log:\n{self.tail()}")
            time.sleep(0.5)
        return got

    def tail(self) -> str:
        return self.log.read_text()[-3000:]


@contextmanager
def running_prometheus(
    folder: Path, targets: list[str], interval_s: int = 1, timeout_s: float = 60
) -> Iterator[Prometheus]:
    """Prometheus on a free port of 127.0.0.1, its config, data and log in `folder`, scraping
    `targets` with the shipped rules; yielded once it is ready, stopped on exit."""
    exe = binary()
    if exe is None:
        raise FileNotFoundError("no prometheus on PATH (Debian: apt-get install prometheus)")
    folder.mkdir(parents=True, exist_ok=True)
    config = folder / "prometheus.yml"
    config.write_text(yaml.safe_dump(config_for(targets, interval_s), sort_keys=False))
    prom, _ = on_a_free_port(partial(_start, exe, config, folder, timeout_s))
    try:
        yield prom
    finally:
        prom.proc.terminate()
        try:
            prom.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            prom.proc.kill()
            prom.proc.wait()


def _start(exe: str, config: Path, folder: Path, timeout_s: float, port: int) -> Prometheus:
    log = folder / f"prometheus-{port}.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [
                exe,
                f"--config.file={config}",
                f"--storage.tsdb.path={folder / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
            stdout=subprocess.DEVNULL,
            stderr=out,
        )
    prom = Prometheus(proc, f"http://127.0.0.1:{port}", log)
    deadline = time.monotonic() + timeout_s
    while not answers_200(f"{prom.url}/-/ready"):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            proc.wait()
            error = PortTaken if port_taken(prom.tail()) else RuntimeError
            raise error(f"Prometheus did not start:\n{prom.tail()}")
        time.sleep(0.2)
    return prom

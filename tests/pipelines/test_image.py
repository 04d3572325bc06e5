"""The container image of a registered version, built and run as a deployment would.

One image, built once for this module from a scratch registry (`digits-onnx#prod`, a LeNet-5
trained on real MNIST), runs with its port on 127.0.0.1, read-only, as nobody: it classifies
real test digits, answers its probes, metrics and `/model`, and exits 0 on SIGTERM. A second
build, with no cache, gives the same image ID: the same config, the same layers. Needs podman
(`.ci/run` installs it, and `mmdebstrap` for the Debian base: no registry here); on a machine
like these, a containers.conf in $CONTAINERS_CONF (docs/shipping.md).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from mnist_pipeline.onnx import runtime
from mnist_pipeline.serving import predict
from pipelines import image
from pipelines.registry import register
from testing.ports import free_port
from testing.scratch_repo import git, registry_repo
from tests.conftest import RealDigits

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not (shutil.which("podman") and shutil.which("mmdebstrap")),
        reason="needs podman and mmdebstrap (apt-get install podman runc mmdebstrap)",
    ),
]
ARTIFACTS = """\
artifacts:
  digits-onnx:
    path: models/m.onnx
    type: model
    meta:
      card: cards/digits-onnx.md
"""
CARD = "# digits-onnx\n\nA LeNet-5 for the image test.\n"


@dataclass(frozen=True)
class Built:
    image: image.Image
    out: Path
    sha256: str  # of the registered model file
    engine: list[str]


def _engine() -> list[str]:
    return image.engine_command()


@pytest.fixture(scope="module")
def base() -> str:
    """The Debian base (mmdebstrap, imported), made once per machine: no registry here."""
    engine = _engine()
    found = subprocess.run([*engine, "image", "exists", image.DEBIAN_BASE])
    return image.DEBIAN_BASE if found.returncode == 0 else image.debian_base(engine=None)


@pytest.fixture(scope="module")
def built(
    tmp_path_factory: pytest.TempPathFactory, real_digits: RealDigits, base: str
) -> Iterator[Built]:
    """`digits-onnx` v0.1.0, promoted to prod in a scratch registry, built into an image."""
    from gto import api

    root = tmp_path_factory.mktemp("registry")
    with registry_repo(root, ARTIFACTS) as repo:
        (root / "cards").mkdir()
        (root / "cards/digits-onnx.md").write_text(CARD)
        shutil.copy(real_digits.model, root / "models/m.onnx")
        repo.add(str(root / "models/m.onnx"))
        git(root, "add", "-A")
        git(root, "commit", "-q", "-m", "a model")
        assert register(root, "digits-onnx", "minor", "v0.1.0").version == "v0.1.0"
        api.assign(str(root), "digits-onnx", stage="prod", version="v0.1.0")
    out = tmp_path_factory.mktemp("image")
    tag = "localhost/mnist-serve-test:v0.1.0"
    built = image.build("digits-onnx#prod", str(root), tag, base, out)
    sha = hashlib.sha256(real_digits.model.read_bytes()).hexdigest()
    yield Built(built, out, sha, _engine())
    subprocess.run([*_engine(), "rmi", "--force", tag], capture_output=True)


@dataclass
class Running:
    name: str
    url: str


@pytest.fixture(scope="module")
def running(built: Built) -> Iterator[Running]:
    """The image running read-only, with its port published on 127.0.0.1 only."""
    port, name = free_port(), f"mnist-serve-test-{free_port()}"
    subprocess.run(
        [*built.engine, "run", "--detach", "--name", name, "--read-only",
         "--publish", f"127.0.0.1:{port}:8000", built.image.tag],
        check=True, capture_output=True,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                break
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    else:
        logs = subprocess.run([*built.engine, "logs", name], capture_output=True, text=True)
        subprocess.run([*built.engine, "rm", "--force", name], capture_output=True)
        pytest.fail(
            f"the image did not get ready in 60 s: {logs.stdout[-2000:]}{logs.stderr[-2000:]}"
        )
    yield Running(name, url)
    subprocess.run([*built.engine, "rm", "--force", name], capture_output=True)


def test_the_image_classifies_real_digits(running: Running, real_digits: RealDigits) -> None:
    digits = []
    for start in (0, 50):  # a request holds at most 64 digits (--max-files)
        pixels = real_digits.digits[start : start + 50].tolist()
        answer = httpx.post(f"{running.url}/predict", json={"pixels": pixels}, timeout=60)
        assert answer.status_code == 200, answer.text
        digits += [p["digit"] for p in answer.json()]
    here = predict.classify(
        runtime.open_model(real_digits.model), list(real_digits.digits[:100]), ["d"] * 100
    )
    assert digits == [p.digit for p in here]  # the same model, the same answers
    assert sum(d == y for d, y in zip(digits, real_digits.labels[:100], strict=True)) >= 90


def test_probes_metrics_and_model_answer(running: Running, built: Built) -> None:
    assert httpx.get(f"{running.url}/readyz").json() == {"status": "ready"}
    metrics = httpx.get(f"{running.url}/metrics")
    assert metrics.status_code == 200 and "http_requests_total" in metrics.text
    model = httpx.get(f"{running.url}/model").json()
    assert (model["name"], model["version"], model["stage"]) == ("digits-onnx", "v0.1.0", "prod")
    assert model["sha256"] == built.sha256 and model["card"]
    assert httpx.get(f"{running.url}/model/card").text == CARD
    health = subprocess.run([*built.engine, "healthcheck", "run", running.name])
    assert health.returncode == 0


def test_it_runs_as_nobody_on_a_read_only_root(running: Running, built: Built) -> None:
    def run(*argv: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [*built.engine, "exec", running.name, *argv], capture_output=True, text=True
        )

    assert run("id", "-u").stdout.strip() == "65534"
    assert run("python3", "-c", "open('/opt/mnist-serve/x', 'w')").returncode != 0
    info = json.loads(subprocess.check_output([*built.engine, "inspect", running.name]))[0]
    assert info["HostConfig"]["ReadonlyRootfs"] is True
    assert info["NetworkSettings"]["Ports"]["8000/tcp"][0]["HostIp"] == "127.0.0.1"


def test_labels_sbom_and_no_training_stack(built: Built, running: Running) -> None:
    labels = built.image.labels
    assert labels["dev.mnist-pipeline.model.sha256"] == built.sha256
    assert labels["org.opencontainers.image.version"] == "v0.1.0"
    assert len(labels["org.opencontainers.image.revision"]) == 40
    sbom = json.loads((built.out / "sbom.cdx.json").read_text())
    names = {c["name"] for c in sbom["components"]}
    assert {"onnxruntime", "fastapi", "uvicorn", "digits-onnx"} <= names
    assert not names & {"torch", "pytorch-lightning", "dvc", "prefect", "gto"}
    inside = subprocess.run(
        [*built.engine, "exec", running.name, "python3", "-c", "import torch"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert "No module named 'torch'" in inside.stderr
    print(f"image {built.image.size_bytes / 1e6:.0f} MB, serving layer "
          f"{built.image.serving_layer_bytes / 1e6:.0f} MB, {built.image.id}")  # fmt: skip


def test_sigterm_makes_it_exit_0(built: Built) -> None:
    name = f"mnist-serve-term-{free_port()}"
    subprocess.run(
        [*built.engine, "run", "--detach", "--name", name, "--read-only", built.image.tag],
        check=True, capture_output=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            ready = subprocess.run(
                [*built.engine, "exec", name, "python3", "-c",
                 "import urllib.request as r; r.urlopen('http://127.0.0.1:8000/readyz')"],
                capture_output=True,
            )  # fmt: skip
            if ready.returncode == 0:
                break
            time.sleep(0.5)
        subprocess.run([*built.engine, "kill", "--signal", "TERM", name], check=True)
        code = subprocess.check_output([*built.engine, "wait", name], text=True)
        assert code.strip() == "0"
    finally:
        subprocess.run([*built.engine, "rm", "--force", name], capture_output=True)


def test_a_second_build_gives_the_same_image(built: Built, base: str) -> None:
    """Built again with no cache: the same image ID, so the same config and every layer."""
    again = image.build(
        "digits-onnx#prod",
        built.image.labels["org.opencontainers.image.source"],
        "localhost/mnist-serve-test:again",
        base,
        no_cache=True,
    )
    try:
        assert again.layers == built.image.layers and len(again.layers) >= 7
        assert again.labels == built.image.labels and again.sbom == built.image.sbom
        assert again.id == built.image.id
    finally:
        subprocess.run([*built.engine, "untag", again.id, again.tag], capture_output=True)
        if again.id != built.image.id:
            subprocess.run([*built.engine, "rmi", "--force", again.id], capture_output=True)

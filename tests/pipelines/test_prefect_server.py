"""The README's server paths for real, on a Prefect server on 127.0.0.1 started here:
`python -m pipelines.deploy` and a process worker, and `python -m pipelines.prefect_serve`; runs
triggered through the REST API, the stages run in order.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import httpx
import psutil
import pytest

from testing.prefect_server import (
    running_server,
    server_settings,
    stop_group,
    without_prefect_settings,
)
from testing.scratch_repo import GIT_IDENTITY
from tests.pipelines.conftest import make_repo

pytestmark = pytest.mark.slow

DEPLOYMENT = "mnist-pipeline/nightly-retrain"
TERMINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}


def start(cmd: list[str], cwd: Path, env: dict[str, str], log: Path) -> subprocess.Popen:
    return subprocess.Popen(
        cmd,
        cwd=cwd,
        env=env,
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,  # stopped as a group: the worker's flow runs go with it
    )


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, dict[str, str]]]:
    """A Prefect server of its own (SQLite in a temp folder); yields (API URL, client env)."""
    home = tmp_path_factory.mktemp("prefect-server") / "prefect-home"
    with running_server(home) as url:
        yield url, without_prefect_settings(**server_settings(home), PREFECT_API_URL=url)


def client_env(env: dict[str, str], mirror: Path) -> dict[str, str]:
    return {
        **env,
        **GIT_IDENTITY,
        "MNIST_MIRROR": str(mirror),
        "MNIST_MD5SUMS": str(mirror / "MD5SUMS"),
        "PREFECT_WORKER_QUERY_SECONDS": "2",
        "PREFECT_RUNNER_POLL_FREQUENCY": "2",
    }


@pytest.fixture
def client(
    tmp_path: Path, server: tuple[str, dict[str, str]], synthetic_mirror: Path
) -> tuple[str, dict[str, str], Path]:
    """(API URL, the environment of a client of the server, a fresh repo with its remote)."""
    url, env = server
    return (
        url,
        client_env(env, synthetic_mirror),
        make_repo(tmp_path / "repo", tmp_path / "remote"),
    )


def wait_for(api: httpx.Client, flow_run_id: str, proc: subprocess.Popen, log: Path) -> dict:
    """The flow run's final state; fails if `proc` (worker or server) dies or 10 minutes pass."""
    deadline = time.monotonic() + 600
    while True:
        state = api.get(f"/flow_runs/{flow_run_id}").raise_for_status().json()["state"]
        if state and state["type"] in TERMINAL:
            return state
        assert proc.poll() is None, log.read_text()[-3000:]
        assert time.monotonic() < deadline, "the flow run did not finish in 10 minutes"
        time.sleep(3)


def wait_until_idle(proc: subprocess.Popen, log: Path, timeout_s: float = 60) -> None:
    """Until `proc` (a runner) has no flow run's process left, its resource tracker aside."""

    def runs() -> list[str]:
        cmds = []
        for child in psutil.Process(proc.pid).children(recursive=True):
            try:
                cmds.append(" ".join(child.cmdline()))
            except psutil.NoSuchProcess:  # exited since the listing
                continue
        return [cmd for cmd in cmds if "resource_tracker" not in cmd]

    deadline = time.monotonic() + timeout_s
    while left := runs():
        assert proc.poll() is None, log.read_text()[-3000:]
        assert time.monotonic() < deadline, f"still running after {timeout_s} s: {left}"
        time.sleep(0.5)


def stage_runs(api: httpx.Client, flow_run_id: str, stages: set[str]) -> list[dict]:
    runs = api.post("/task_runs/filter", json={"flow_runs": {"id": {"any_": [flow_run_id]}}})
    found = [r for r in runs.raise_for_status().json() if r["name"] in stages]
    return sorted(found, key=lambda r: r["start_time"])


def deploy(url: str, env: dict[str, str], repo: Path) -> httpx.Client:
    """`python -m pipelines.deploy` in `repo`; a client of the server's API."""
    deployed = subprocess.run(
        [sys.executable, "-m", "pipelines.deploy"],
        cwd=repo,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert deployed.returncode == 0, deployed.stdout[-3000:] + deployed.stderr[-3000:]
    return httpx.Client(base_url=url, timeout=30)


def create_flow_run(api: httpx.Client, dep: dict, params: dict) -> str:
    """A flow run of `dep` with `params`, made through the API; its id. Retried on 503, as
    Prefect's own client retries it: a loaded server answers so for a while (seen in CI)."""
    for wait in (1, 2, 4, 8, 16, 0):
        created = api.post(
            f"/deployments/{dep['id']}/create_flow_run", json={"parameters": params}
        )
        if created.status_code != 503 or not wait:
            return created.raise_for_status().json()["id"]
        time.sleep(wait)
    raise AssertionError("unreachable")


def run_on_worker(
    api: httpx.Client, dep: dict, params: dict, tmp_path: Path, env: dict[str, str], *opts: str
) -> str:
    """A run of deployment `dep` with `params`, now, as `prefect deployment run` or the UI's
    "Quick run" would, on a process worker of its pool; its id, once it completed."""
    flow_run_id = create_flow_run(api, dep, params)
    pool = dep["work_pool_name"]
    log = tmp_path / "worker.log"
    worker = start(
        [sys.executable, "-m", "prefect", "worker", "start", "--pool", pool, *opts],
        tmp_path,
        env,
        log,
    )
    try:
        state = wait_for(api, flow_run_id, worker, log)
    finally:
        stop_group(worker)
    assert state["type"] == "COMPLETED", f"{state}\n{log.read_text()[-4000:]}"
    return flow_run_id


def test_deployed_flow_runs_on_a_worker_against_a_real_server(
    tmp_path: Path, client: tuple[str, dict[str, str], Path]
) -> None:
    url, env, repo = client
    api = deploy(url, env, repo)
    dep = api.get(f"/deployments/name/{DEPLOYMENT}").raise_for_status().json()
    assert [s["schedule"]["cron"] for s in dep["schedules"]] == ["0 2 * * *"]
    assert dep["global_concurrency_limit"]["limit"] == 1
    assert dep["concurrency_options"]["collision_strategy"] == "ENQUEUE"
    (pull,) = dep["pull_steps"]
    assert Path(pull["prefect.deployments.steps.set_working_directory"]["directory"]) == repo

    params = {"targets": ["evaluate"], "retry_delay_s": 0}
    flow_run_id = run_on_worker(api, dep, params, tmp_path, env, "--limit", "1")

    stages = stage_runs(api, flow_run_id, {"prepare", "train", "evaluate"})
    assert [r["name"] for r in stages] == ["prepare", "train", "evaluate"]
    assert all(r["state"]["type"] == "COMPLETED" for r in stages)
    assert (repo / "models/lenet5.pt").is_file()
    assert (repo / "metrics/evaluate.json").is_file()


def test_served_flow_runs_and_pauses_its_schedule_on_exit(
    tmp_path: Path, client: tuple[str, dict[str, str], Path]
) -> None:
    url, env, repo = client
    name = "mnist-pipeline/served-test"
    serving = start(
        [sys.executable, "-m", "pipelines.prefect_serve", "--name", "served-test", "--no-push"],
        repo,
        env,
        tmp_path / "serve.log",
    )
    api = httpx.Client(base_url=url, timeout=30)
    try:
        deadline = time.monotonic() + 180
        while (dep := api.get(f"/deployments/name/{name}")).status_code != 200:
            assert serving.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "serve did not register its deployment"
            time.sleep(2)
        dep = dep.json()
        assert [s["schedule"]["cron"] for s in dep["schedules"]] == ["0 2 * * *"]
        assert dep["global_concurrency_limit"]["limit"] == 1
        flow_run_id = create_flow_run(api, dep, {"targets": ["prepare"]})
        state = wait_for(api, flow_run_id, serving, tmp_path / "serve.log")
        log = (tmp_path / "serve.log").read_text()
        assert state["type"] == "COMPLETED", f"{state}\n{log[-4000:]}"
        assert [r["name"] for r in stage_runs(api, flow_run_id, {"prepare", "train"})] == [
            "prepare"
        ]
        # Ctrl-C on an idle server: a run's state is COMPLETED a moment before its process
        # exits, and a Ctrl-C in that moment has the runner cancel the run on the way out.
        wait_until_idle(serving, tmp_path / "serve.log")
    finally:
        os.killpg(serving.pid, signal.SIGINT)  # Ctrl-C
        try:
            serving.wait(timeout=60)
        except subprocess.TimeoutExpired:
            pytest.fail(f"serve ignored Ctrl-C:\n{(tmp_path / 'serve.log').read_text()[-3000:]}")
        finally:
            stop_group(serving)
    assert api.get(f"/deployments/name/{name}").json()["paused"] is True


def _most_at_once(runs: list[dict]) -> int:
    """The most of `runs` whose start-to-end intervals overlap at one instant."""
    at = datetime.fromisoformat
    edges = sorted(  # an end before a start at the same instant
        [(at(r["start_time"]), 1) for r in runs] + [(at(r["end_time"]), -1) for r in runs]
    )
    most = now = 0
    for _, step in edges:
        now += step
        most = max(most, now)
    return most


def test_deployed_sweep_on_a_worker_runs_jobs_trials_at_a_time(
    tmp_path: Path, client: tuple[str, dict[str, str], Path]
) -> None:
    """prefect.yaml's lr-sweep, run from its deployment on a process worker with
    `{"execution": {"jobs": 2}}`: of three trials, never more than two run at once."""
    url, env, repo = client
    api = deploy(url, env, repo)
    dep = api.get("/deployments/name/mnist-sweep/lr-sweep").raise_for_status().json()
    space = {"overrides": ["train.seed=1,2,3", "train.max_epochs=1"], "name": "jobs"}
    params = {"space": space, "execution": {"jobs": 2, "retry_delay_s": 0}}
    flow_run_id = run_on_worker(api, dep, params, tmp_path, env)
    trial_runs = stage_runs(api, flow_run_id, {"jobs-000", "jobs-001", "jobs-002"})
    assert len(trial_runs) == 3 and all(r["state"]["type"] == "COMPLETED" for r in trial_runs)
    assert _most_at_once(trial_runs) == 2

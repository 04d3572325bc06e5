"""Flow tests: one Prefect test harness for the session, and throw-away git + DVC repos.

Every flow runs in a temporary copy of this repository (its git-tracked and new, not ignored
files, without DVC-cached outputs) with its own DVC cache, a DVC remote in the test's
temporary folder (set with `--local`, as a user would), the tiny synthetic MNIST and tiny
params, so nothing here touches this checkout's `dvc.lock`, cache or remote.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from testing.scratch_repo import GIT_IDENTITY, copy_repo
from tests.conftest import ROOT, tiny_params_dict


def run(cmd: list[str], cwd: Path, **kw: Any) -> subprocess.CompletedProcess:
    done = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, **kw)
    assert done.returncode == 0, f"{cmd} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


def dvc(repo: Path, *args: str) -> subprocess.CompletedProcess:
    return run([sys.executable, "-m", "dvc", *args], repo)


def cached_outputs() -> list[str]:
    """The paths dvc.yaml declares as cached outputs: DVC owns them, git must not."""
    spec = yaml.safe_load((ROOT / "dvc.yaml").read_text())
    paths = []
    for stage in spec.get("stages", {}).values():
        for kind in ("outs", "metrics", "plots"):
            for entry in stage.get(kind, []):
                path, opts = next(iter(entry.items())) if isinstance(entry, dict) else (entry, {})
                if (opts or {}).get("cache", True):
                    paths.append(path)
    return paths


def make_repo(dest: Path, remote: Path, params: dict | None = None) -> Path:
    """A git + DVC copy of this checkout in `dest` with tiny params, pushing to `remote`."""
    text = yaml.safe_dump(params or tiny_params_dict(), sort_keys=False)
    copy_repo(ROOT, dest, skip=cached_outputs(), replace={"params.yaml": text})
    set_remote(dest, remote)
    return dest


def set_remote(repo: Path, remote: Path) -> None:
    """Point the default remote at `remote`, for this clone only (.dvc/config.local)."""
    name = dvc(repo, "remote", "default").stdout.strip()
    dvc(repo, "remote", "add", "--local", "--force", "-d", name, str(remote))


@pytest.fixture(scope="session")
def prefect_harness() -> Iterator[None]:
    """The one temporary Prefect server (SQLite in a temp folder) every flow test runs against."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=180):
        yield


@pytest.fixture(scope="session")
def flow_env(synthetic_mirror: Path) -> Iterator[None]:
    """The synthetic MNIST mirror and a git identity, for the flow and the processes it starts."""
    mp = pytest.MonkeyPatch()
    mp.setenv("MNIST_MIRROR", str(synthetic_mirror))
    mp.setenv("MNIST_MD5SUMS", str(synthetic_mirror / "MD5SUMS"))
    mp.delenv("MNIST_FAIL_AFTER_EPOCH", raising=False)
    for key, value in GIT_IDENTITY.items():
        mp.setenv(key, os.environ.get(key, value))
    yield
    mp.undo()


@dataclass(frozen=True)
class FlowRun:
    repo: Path
    remote: Path
    result: dict[str, Any]
    flow_run_id: str
    seconds: float


def run_flow(repo: Path, **params: Any) -> tuple[Any, float]:
    """Run the pipeline flow on `repo` in this process; (final state, seconds)."""
    import time

    from pipelines.flow import pipeline

    params.setdefault("retry_delay_s", 0.0)
    params.setdefault("min_test_acc", 0.5)
    start = time.perf_counter()
    state = pipeline(root=str(repo), return_state=True, **params)
    return state, time.perf_counter() - start


def task_runs(flow_run_id: str) -> list[Any]:
    """The flow run's task runs as the Prefect API has them, in start order."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
        )
    return sorted(runs, key=lambda r: (r.start_time or r.expected_start_time, r.name))


@pytest.fixture(scope="session")
def finished_run(
    tmp_path_factory: pytest.TempPathFactory, prefect_harness: None, flow_env: None
) -> FlowRun:
    """One uninterrupted flow run on the synthetic data, registering a model version."""
    base = tmp_path_factory.mktemp("flow")
    repo = make_repo(base / "repo", base / "remote")
    state, seconds = run_flow(repo, register_model=True)
    assert state.is_completed(), state.message
    return FlowRun(
        repo, base / "remote", state.result(), str(state.state_details.flow_run_id), seconds
    )


def run_sweep(repo: Path, **params: Any) -> Any:
    """The sweep flow on `repo` with `params` (grouped as its CLI groups them), as a state."""
    from prefect.task_runners import ThreadPoolTaskRunner

    from pipelines.flow_cli import grouped
    from pipelines.sweep.flow import sweep

    params.setdefault("retry_delay_s", 0.0)
    runner = ThreadPoolTaskRunner(max_workers=params.get("jobs", 1))
    run = sweep.with_options(task_runner=runner)
    return run(root=str(repo), return_state=True, **grouped(sweep, **params))


def sweep_report(repo: Path, name: str) -> dict[str, Any]:
    """The sweep's results file, as written to `sweeps/<name>.json`."""
    return json.loads((repo / "sweeps" / f"{name}.json").read_text())

"""A sweep on a Dask cluster reporting to a Prefect server backed by PostgreSQL, as teams run it.

Dask workers on other machines run each trial's Prefect task and report its states to the
Prefect API the flow uses, so a sweep across hosts needs a Prefect server they all reach (not
the flow's temporary one on 127.0.0.1), and that server keeps the runs in its database. This
test starts a real PostgreSQL server (Debian's `postgresql` package; `.ci/run` installs it), a
`prefect server start` on it, and a Dask cluster of two worker processes; the sweep runs as a
user runs it, in its own process, with only `PREFECT_API_URL` pointing at the server.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipelines.sweep import trials
from testing.ports import free_port
from testing.prefect_server import running_server, without_prefect_settings
from tests.conftest import ROOT
from tests.pipelines.conftest import make_repo

pytestmark = pytest.mark.slow


def _pg_bin(name: str) -> str:
    found = shutil.which(name) or next(
        iter(sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))), None
    )
    if found is None:
        pytest.skip(f"PostgreSQL's {name} is not installed (apt-get install postgresql)")
    return found


class PostgreSQL:
    """A throwaway PostgreSQL server in a folder, on a free port, trusting local connections."""

    def __init__(self) -> None:
        # Outside pytest's temp folders, which the `postgres` user may not enter.
        self.folder, self.port = Path(tempfile.mkdtemp(prefix="mnist-pg-")), free_port()
        self.data = self.folder / "data"
        # initdb refuses to run as root: as root, the server runs as Debian's `postgres` user.
        self.as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []

    def _run(self, *cmd: str) -> subprocess.CompletedProcess:
        done = subprocess.run([*self.as_user, *cmd], capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, f"{' '.join(cmd)}: {done.stdout}{done.stderr}"
        return done

    def start(self) -> None:
        if self.as_user:
            shutil.chown(self.folder, "postgres", "postgres")
        self._run(_pg_bin("initdb"), "-D", str(self.data), "-A", "trust", "-U", "postgres")
        options = f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1"
        log = str(self.folder / "server.log")
        self._run(_pg_bin("pg_ctl"), "-D", str(self.data), "-o", options, "-l", log, "-w", "start")
        self.sql("CREATE DATABASE prefect")

    def stop(self) -> None:
        self._run(_pg_bin("pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop")
        shutil.rmtree(self.folder, ignore_errors=True)

    def sql(self, query: str, db: str = "postgres") -> str:
        cmd = ["psql", "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", "-d", db]
        return self._run(_pg_bin(cmd[0]), *cmd[1:], "-tAc", query).stdout.strip()

    @property
    def url(self) -> str:
        return f"postgresql+asyncpg://postgres@127.0.0.1:{self.port}/prefect"


@pytest.fixture(scope="module")
def prefect_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, PostgreSQL]]:
    """`prefect server start` on a PostgreSQL database; yields its API URL and the database."""
    pg = PostgreSQL()
    pg.start()
    try:
        with running_server(tmp_path_factory.mktemp("prefect-home"), pg.url) as api:
            yield api, pg
    finally:
        pg.stop()


def test_a_sweep_on_a_dask_cluster_reports_to_a_prefect_server_on_postgresql(
    tmp_path: Path, prefect_server: tuple[str, PostgreSQL], flow_env: None
) -> None:
    from distributed import LocalCluster

    api, pg = prefect_server
    repo = make_repo(tmp_path / "repo", tmp_path / "remote")
    # Workers report to the server named in their environment, as `dask worker` on a host
    # does when started with PREFECT_API_URL (README); without it each would start a temporary
    # server of its own for its logs.
    workers_env = {"PREFECT_API_URL": api}
    with LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, env=workers_env
    ) as cluster:
        cmd = [sys.executable, "-m", "pipelines.sweep", "--root", str(repo), "--name", "pg"]
        cmd += ["-S", "train.optimizer.lr=8e-3,1.6e-2", "--jobs", "2"]
        cmd += ["--cluster", cluster.scheduler_address]
        done = subprocess.run(
            cmd,
            cwd=ROOT,
            env=without_prefect_settings(PREFECT_API_URL=api),
            capture_output=True,
            text=True,
            timeout=900,
        )
        worker_pids = {w.process.pid for w in cluster.workers.values()}
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    data = json.loads((repo / "sweeps" / "pg.json").read_text())
    assert data["counts"] == {"succeeded": 2, "failed": 0, "pruned": 0}
    assert {int(t["worker"].rsplit(":", 1)[1]) for t in data["trials"]} == worker_pids
    assert {"pg-000", "pg-001"} <= set(trials.experiments(repo))

    # The runs are in PostgreSQL: the flow run, and each trial's task run as its worker reported
    # it to the server.
    flows = pg.sql("SELECT state_type FROM flow_run", db="prefect").splitlines()
    assert flows == ["COMPLETED"]
    tasks = pg.sql(
        "SELECT name || ' ' || state_type FROM task_run WHERE name LIKE 'pg-%' ORDER BY name",
        db="prefect",
    ).splitlines()
    assert tasks == ["pg-000 COMPLETED", "pg-001 COMPLETED"]

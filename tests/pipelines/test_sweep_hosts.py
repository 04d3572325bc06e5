"""A sweep's trials on other hosts: a bare git repo stands in for the team's git server, a folder
DVC remote for S3, one copy of this repo for the host that runs the sweep, and another folder
for a worker host's clones."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from mnist_pipeline.data.mnist_files import md5sum
from mnist_pipeline.errors import PARAMS_ERROR_EXIT, UsageError
from pipelines.sweep import trials
from testing.scratch_repo import git
from tests.pipelines.conftest import dvc, make_repo, run_sweep, sweep_report


@dataclass(frozen=True)
class Hosts:
    driver: Path  # host A: the clone that runs the sweep
    server: Path  # the team's git server (a bare repo)
    remote: Path  # the DVC remote, as the committed .dvc/config names it
    worker: Path  # host B's MNIST_SWEEP_WORKDIR


@pytest.fixture(scope="module")
def hosts(
    tmp_path_factory: pytest.TempPathFactory, prefect_harness: None, flow_env: None
) -> Iterator[Hosts]:
    base = tmp_path_factory.mktemp("hosts")
    h = Hosts(base / "a", base / "server.git", base / "dvc-remote", base / "b")
    make_repo(h.driver, h.remote)
    remote = dvc(h.driver, "remote", "default").stdout.strip()
    dvc(h.driver, "remote", "add", "--force", "-d", remote, str(h.remote))  # committed
    git(h.driver, "commit", "-qam", "the team's DVC remote")
    git(base, "init", "-q", "--bare", "-b", "main", str(h.server))
    git(h.driver, "remote", "add", "origin", str(h.server))
    git(h.driver, "push", "-q", "origin", "HEAD:refs/heads/main")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(trials.WORKDIR_ENV, str(h.worker))
        yield h


@pytest.mark.slow
def test_trials_on_another_host_clone_pull_and_push_through_the_servers(hosts: Hosts) -> None:
    """The sweep on A, its trial in B's folder: cloned from the git server, the shared data
    pulled from the DVC remote, the experiment pushed to both; A and a fresh clone C see it."""
    state = run_sweep(
        hosts.driver,
        overrides=["train.optimizer.lr=8e-3", "train.max_epochs=1"],
        name="far",
        origin="origin",  # the driver's git remote: the server
        promote=True,
    )
    assert state.is_completed(), state.message
    commit = trials.head_commit(hosts.driver)
    # Host B's clone: from the server, at the commit, with its own cache (none of A's).
    ws = hosts.worker / "far" / "far-000"
    assert git(ws, "remote", "get-url", "origin").strip() == str(hosts.server)
    assert trials.head_commit(ws) == commit
    assert trials.cache_dir(ws) == ws / ".dvc" / "cache"
    assert not (trials.sweep_dir(hosts.driver, "far") / "far-000").exists()
    # prepare ran once, on A, and its outputs reached B through the DVC remote.
    (row,) = sweep_report(hosts.driver, "far")["trials"]
    assert row["status"] == "succeeded" and row["ran"] == ["train", "evaluate"]
    lock = yaml.safe_load((ws / "dvc.lock").read_text())["stages"]
    prepared = next(o for o in lock["prepare"]["outs"] if o["path"] == "data/prepared")["md5"]
    for cache in (hosts.remote, ws / ".dvc" / "cache"):
        assert (cache / "files" / "md5" / prepared[:2] / prepared[2:]).is_file()
    # The experiment: in the server's refs, and in A's dvc exp show with its metrics.
    ref = f"refs/exps/{commit[:2]}/{commit[2:]}/far-000"
    assert ref in git(hosts.server, "for-each-ref", "--format=%(refname)", "refs/exps")
    shown = json.loads(dvc(hosts.driver, "exp", "show", "--json").stdout)
    exps = {
        r["name"]: r["data"] for b in shown for e in b.get("experiments") or [] for r in e["revs"]
    }
    assert 0.0 <= exps["far-000"]["metrics"]["metrics/evaluate.json"]["data"]["test"]["acc"] <= 1.0
    # --promote applied it on A, its model pulled from the DVC remote.
    model = next(o for o in lock["train"]["outs"] if o["path"] == "models/lenet5.pt")["md5"]
    assert md5sum(hosts.driver / "models" / "lenet5.pt") == model
    # A third clone C, fresh from the server: the experiment and its model.
    c = hosts.driver.parent / "c"
    git(hosts.driver.parent, "clone", "-q", str(hosts.server), str(c))
    dvc(c, "exp", "pull", "--no-cache", "origin", "far-000")
    # Its params, lock and metrics; checking its outputs out fails: this clone has no cache yet.
    cmd = [sys.executable, "-m", "dvc", "exp", "apply", "far-000"]
    applied = subprocess.run(cmd, cwd=c, capture_output=True, text=True)
    assert "models/lenet5.pt" in applied.stderr
    assert yaml.safe_load((c / "dvc.lock").read_text())["stages"] == lock
    dvc(c, "pull", "train")
    assert md5sum(c / "models" / "lenet5.pt") == model


def test_a_commit_the_server_lacks_is_refused_before_any_trial(
    hosts: Hosts, capsys: pytest.CaptureFixture[str]
) -> None:
    from pipelines.sweep.cli import main

    d = hosts.driver.parent / "d"
    git(hosts.driver.parent, "clone", "-q", str(hosts.server), str(d))
    git(d, "commit", "-q", "--allow-empty", "-m", "not pushed")
    args = ["--root", str(d), "--name", "unpushed", "-S", "train.seed=1", "--origin", "origin"]
    assert main(args) == PARAMS_ERROR_EXIT
    err = capsys.readouterr().err
    assert f"commit {trials.head_commit(d)[:12]} is not in {hosts.server}" in err
    assert "push it first" in err
    assert not (hosts.worker / "unpushed").exists()
    assert not trials.sweep_dir(d, "unpushed").exists()
    # Pushed, but with no DVC remote for the data: refused too.
    dvc(d, "remote", "default", "--unset")
    git(d, "commit", "-qam", "no DVC remote")
    git(d, "push", "-q", "origin", "HEAD:refs/heads/no-remote")
    with pytest.raises(UsageError, match="no default DVC remote"):
        trials.check_origin(d, str(hosts.server), trials.head_commit(d))

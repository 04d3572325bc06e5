"""A sweep's trials as DVC experiments, each in its own clone of the repo.

A trial runs `dvc exp run -n <name> -S ... <targets>` in a git clone of the repo at the sweep's
commit (`.dvc/tmp/sweeps/<sweep>/<trial>`, ignored by git), then `dvc exp push`es the
experiment back to the repo, where `dvc exp show`, `dvc exp apply` and `dvc exp branch` see it
like any other. The clone is what another machine would have (clone at the commit, `dvc pull`,
run, `dvc exp push`), so the same code runs a trial here or on a Dask worker elsewhere.

On one machine the clones use the repo's own DVC cache (`cache.dir` in their
`.dvc/config.local`). The stages no swept param touches (`prepare`) run once per commit, in a
shared clone (`.dvc/tmp/sweeps/_shared/<commit>`), and every trial starts from its lock entries
and checks their outputs out of the cache. A clone outlives a failed attempt, so a retried
trial resumes `train` from the checkpoint the killed attempt left in it.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipelines import dvc_repo
from pipelines.retry import StepFailed

log = logging.getLogger(__name__)

SWEEPS_DIR = Path(".dvc") / "tmp" / "sweeps"  # DVC's tmp folder: ignored by git and DVC
SHARED = "_shared"  # _shared/<commit>: the clone that runs the stages all trials share
_RAN = re.compile(r"^Running stage '([^']+)'", re.MULTILINE)
_CACHED = re.compile(r"Stage '([^']+)' is cached - skipping run")


@dataclass(frozen=True)
class TrialRun:
    """What one trial did: the experiment's commit, its metrics and what DVC ran."""

    name: str
    rev: str
    metrics: dict[str, dict[str, Any]]  # {file: {"test.acc": ...}}, as dvc metrics show
    seconds: float
    ran: list[str] = field(default_factory=list)  # stages DVC ran
    cached: list[str] = field(default_factory=list)  # stages restored from the run cache
    reused: bool = False  # the experiment was already there, nothing ran
    worker: str = ""  # host:pid of the process that ran it (a Dask worker, or this one)
    curve: dict[int, float] = field(default_factory=dict)  # the watched metric, by epoch
    pruned: bool = False  # stopped by the pruner: no experiment, no metrics


class TrialStopped(Exception):
    """`run_trial`'s `stop` ended the trial's `dvc exp run`: no experiment, not a failure."""

    def __init__(self, name: str, seconds: float) -> None:
        super().__init__(f"trial {name} was stopped after {seconds:.1f} s")
        self.seconds = seconds
        self.worker = f"{socket.gethostname()}:{os.getpid()}"  # the process that ran it


def git(cwd: Path, *args: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=cwd, capture_output=True, text=True, check=True
    ).stdout.strip()


def head_commit(root: Path) -> str:
    return git(root, "rev-parse", "HEAD")


def cache_dir(root: Path) -> Path:
    """The repo's DVC cache folder (after any `cache.dir` setting)."""
    with dvc_repo.open_repo(root) as repo:
        return Path(repo.cache.local_cache_dir)


def sweep_dir(root: Path, sweep: str) -> Path:
    return root / SWEEPS_DIR / sweep


def workspace(root: Path, sweep: str, name: str, commit: str, cache: Path | None) -> Path:
    """The trial's clone of `root` at `commit`, made on first use and kept for retries.

    With `cache`, the clone stores its DVC data there (the repo's own cache, on this machine);
    without, it keeps its own cache and gets data with `dvc pull` (another machine).
    """
    ws = sweep_dir(root, sweep) / name
    if not (ws / ".git").exists():
        tmp = ws.with_name(f".{name}.cloning")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.parent.mkdir(parents=True, exist_ok=True)
        git(root, "clone", "--quiet", "--no-checkout", str(root), str(tmp))
        tmp.rename(ws)
    if subprocess.run(["git", "cat-file", "-e", f"{commit}^{{commit}}"], cwd=ws).returncode:
        git(ws, "fetch", "--quiet", "origin")
    # -f: a killed attempt may have left params.yaml or dvc.lock changed; ignored files (the
    # training checkpoint) stay, which is what lets a retry resume.
    git(ws, "checkout", "--quiet", "-f", "--detach", commit)
    if cache is not None:
        from dvc.config import Config

        with Config(dvc_dir=str(ws / ".dvc")).edit("local") as conf:
            conf["cache"]["dir"] = str(cache)
            # Hard links where copy-on-write is missing: stages replace their outputs, never
            # write into them, so a linked cache file is never changed in place.
            conf["cache"]["type"] = "reflink,hardlink,copy"
    return ws


def experiment_rev(ws: Path, name: str) -> str | None:
    """The commit of experiment `name` in this clone's refs, if it exists."""
    refs = git(ws, "for-each-ref", "--format=%(objectname) %(refname)", "refs/exps")
    for line in refs.splitlines():
        rev, ref = line.split(" ", 1)
        if ref.rsplit("/", 1)[-1] == name:
            return rev
    return None


def run_trial(
    ws: Path,
    name: str,
    overrides: list[str],
    targets: list[str],
    shared: list[str],
    shared_cache: bool,
    timeout_s: float | None,
    echo: Callable[[str], None] = log.info,
    stop: Callable[[], bool] | None = None,
) -> TrialRun:
    """`dvc exp run` one trial in its clone `ws` and push the experiment to its origin.

    `shared` stages are checked out from the cache first (their outputs are the same for
    every trial). Raises `StepFailed` (with DVC's verdict on whether a retry can help), or
    `TrialStopped` when `stop`, polled while `dvc exp run` runs, ended it (the pruner's watch).
    """
    start = time.perf_counter()
    rev = experiment_rev(ws, name)
    ran: list[str] = []
    cached: list[str] = []
    reused = rev is not None
    if rev is None:
        if shared:  # the shared stages' outputs, from the cache the shared clone filled
            dvc_repo.run(ws, ["checkout", "--quiet", *shared], timeout_s, echo=lambda _: None)
        args = ["exp", "run", "-n", name]
        for o in overrides:
            args += ["-S", o]
        done = dvc_repo.run(ws, [*args, *targets], timeout_s, echo=echo, stop=stop)
        if done.stopped:
            raise TrialStopped(name, done.seconds)
        if not done.ok:
            raise StepFailed(f"trial {name}", done.returncode, done.tail)
        ran, cached = _RAN.findall(done.tail), _CACHED.findall(done.tail)
        rev = experiment_rev(ws, name)
        if rev is None:
            raise StepFailed(f"trial {name}", 1, f"{done.tail}\nno experiment named {name}")
    push = ["exp", "push", *([] if not shared_cache else ["--no-cache"]), "origin", name]
    done = dvc_repo.run(ws, push, timeout_s, echo=echo)
    if not done.ok:
        raise StepFailed(f"dvc exp push of {name}", done.returncode, done.tail)
    seconds = time.perf_counter() - start
    worker = f"{socket.gethostname()}:{os.getpid()}"
    return TrialRun(name, rev, dvc_repo.metrics(ws), seconds, ran, cached, reused, worker)


def run_shared(
    ws: Path, stages: list[str], timeout_s: float | None, echo: Callable[[str], None]
) -> SharedRun:
    """`dvc repro` the stages every trial shares, once, so that their outputs reach the cache.

    Their lock entries (and run records) are what changes in the clone; each trial starts
    from these files and checks the outputs out, so no trial runs the stages again. (DVC's run
    cache would not do it: it skips stages with persistent outputs, as `prepare`'s downloads.)
    """
    if not stages:
        return SharedRun([], [])
    dvc_repo.run(ws, ["checkout", "--quiet", *stages], timeout_s, echo=lambda _: None)
    done = dvc_repo.run(ws, ["repro", *stages], timeout_s, echo=echo)
    if not done.ok:
        raise StepFailed(f"shared stages {', '.join(stages)}", done.returncode, done.tail)
    changed = git(ws, "diff", "--name-only", "HEAD").splitlines()
    return SharedRun(_RAN.findall(done.tail), changed)


@dataclass(frozen=True)
class SharedRun:
    ran: list[str]  # the stages that ran (none when the commit's outputs were in the cache)
    changed: list[str]  # tracked files the run changed (dvc.lock, run records)


def take_shared(ws: Path, shared_ws: Path, changed: list[str]) -> None:
    """Start the trial from the shared stages' lock entries and records."""
    for rel in changed:
        src = shared_ws / rel
        if src.is_file():
            (ws / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, ws / rel)


# --- the experiments as the repo sees them -----------------------------------------------------


@dataclass(frozen=True)
class Experiment:
    name: str
    rev: str
    params: dict[str, Any]  # params.yaml, flattened
    metrics: dict[str, dict[str, Any]]  # {file: flattened metrics}


def experiments(root: Path) -> dict[str, Experiment]:
    """The experiments of the repo's HEAD, by name (`dvc exp show`), finished ones only."""
    with dvc_repo.open_repo(root) as repo:
        shown = [e.dumpd() for e in repo.experiments.show()]
    found: dict[str, Experiment] = {}
    for baseline in shown:
        for exp in baseline.get("experiments") or []:
            for rev in exp.get("revs") or []:
                data = rev.get("data") or {}
                if not rev.get("name") or rev.get("error") or not data:
                    continue
                params = (data.get("params") or {}).get("params.yaml", {}).get("data", {})
                metrics = {
                    path: dvc_repo.flatten(entry.get("data") or {})
                    for path, entry in (data.get("metrics") or {}).items()
                }
                found[rev["name"]] = Experiment(
                    rev["name"], rev["rev"], dvc_repo.flatten(params), metrics
                )
    return found

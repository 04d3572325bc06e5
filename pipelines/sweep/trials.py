"""A sweep's trials as DVC experiments, each in its own clone of the repo.

A trial runs `dvc exp run -n <name> -S ... <targets>` in a git clone of the repo at the sweep's
commit, then `dvc exp push`es the experiment to the clone's origin, where `dvc exp show`,
`dvc exp apply` and `dvc exp branch` see it like any other. The stages no param of the sweep
touches (`prepare`) run once per commit, in a shared clone on the machine that runs the sweep
(`.dvc/tmp/sweeps/_shared/<commit>`, ignored by git); every trial starts from the tracked files
that run changed (its lock entries and run records, passed by content) and takes their outputs
instead of running them again. A clone outlives a failed attempt, so a retried trial resumes
`train` from the checkpoint the killed attempt left in it. Where the clones come from (a
`Source`) is one of two:

- This machine (the default): the clones are of the repo itself, in its
  `.dvc/tmp/sweeps/<sweep>/<trial>`, and use its DVC cache (`cache.dir` in their
  `.dvc/config.local`): the shared outputs are checked out of it, and `dvc exp push` sends git
  refs only.
- A git URL every worker reaches (`--origin`): the clones are in the worker's own folder
  (`$MNIST_SWEEP_WORKDIR/<sweep>/<trial>`, default `~/.cache/mnist-pipeline/sweeps`), cloned
  from that URL, each with its own DVC cache. The sweep pushes the commit's shared outputs to
  the DVC remote the commit's `.dvc/config` names; a trial `dvc pull`s them and
  `dvc exp push`es its experiment with its outputs (refs to the URL, data to the DVC remote),
  and the sweep fetches the experiments' refs back. Nothing of the sweep's machine is read.
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

from mnist_pipeline.errors import UsageError
from pipelines import dvc_repo, user_values
from pipelines.retry import StepFailed

log = logging.getLogger(__name__)

SWEEPS_DIR = Path(".dvc") / "tmp" / "sweeps"  # DVC's tmp folder: ignored by git and DVC
SHARED = "_shared"  # _shared/<commit>: the clone that runs the stages all trials share
WORKDIR_ENV = "MNIST_SWEEP_WORKDIR"  # a worker's folder for the clones of a --origin sweep
WORKDIR = Path("~") / ".cache" / "mnist-pipeline" / "sweeps"
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


def worker_dir() -> Path:
    """This worker's folder for the clones of trials cloned from a git URL."""
    return Path(os.environ.get(WORKDIR_ENV) or WORKDIR).expanduser()


@dataclass(frozen=True)
class Source:
    """Where a trial's clone comes from: the repo on this machine, with its DVC cache, or a
    git URL (`cache` None), when the clone keeps its own cache and its data moves through the
    DVC remote."""

    url: str  # what `git clone` reads, and where `dvc exp push origin` sends the experiment
    cache: Path | None = None

    @property
    def here(self) -> bool:
        return self.cache is not None

    def clone_dir(self, sweep: str, name: str) -> Path:
        base = Path(self.url) / SWEEPS_DIR if self.here else worker_dir()
        return base / sweep / name


def workspace(source: Source, sweep: str, name: str, commit: str) -> Path:
    """The trial's clone of `source` at `commit`, made on first use and kept for retries."""
    # A task's parameters: checked where the task runs too (`SHARED` is the project's own).
    if sweep != SHARED:
        user_values.slug("sweep name", sweep)
    ws = source.clone_dir(sweep, user_values.slug("trial name", name))
    if (ws / ".git").exists() and git(ws, "remote", "get-url", "origin") != source.url:
        shutil.rmtree(ws)  # a clone of another repo, from a sweep of the same name
    if not (ws / ".git").exists():
        tmp = ws.with_name(f".{name}.cloning")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.parent.mkdir(parents=True, exist_ok=True)
        git(tmp.parent, "clone", "--quiet", "--no-checkout", "--", source.url, str(tmp))
        tmp.rename(ws)
    if not _has_commit(ws, commit):
        git(ws, "fetch", "--quiet", "origin")
    # -f: a killed attempt may have left params.yaml or dvc.lock changed; ignored files (the
    # training checkpoint) stay, which is what lets a retry resume.
    git(ws, "checkout", "--quiet", "-f", "--detach", commit)
    if source.cache is not None:
        from dvc.config import Config

        with Config(dvc_dir=str(ws / ".dvc")).edit("local") as conf:
            conf["cache"]["dir"] = str(source.cache)
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

    `shared` stages' outputs (the same for every trial) are checked out of the cache first, or
    without `shared_cache` pulled from the DVC remote, where the experiment's outputs then go
    too. Raises `StepFailed` (with DVC's verdict on whether a retry can help), or
    `TrialStopped` when `stop`, polled while `dvc exp run` runs, ended it (the pruner's watch).
    """
    start = time.perf_counter()
    rev = experiment_rev(ws, name)
    ran: list[str] = []
    cached: list[str] = []
    reused = rev is not None
    if rev is None:
        if shared:  # the shared stages' outputs: from the cache the shared clone filled
            take = ["checkout" if shared_cache else "pull", "--quiet", *shared]
            done = dvc_repo.run(ws, take, timeout_s, echo=lambda _: None)
            if not done.ok and not shared_cache:
                raise StepFailed(f"dvc pull {' '.join(shared)}", done.returncode, done.tail)
        args = ["exp", "run", "--name", user_values.slug("trial name", name)]
        args += [f"--set-param={o}" for o in overrides]  # one argument each, never an option
        done = dvc_repo.run(ws, [*args, "--", *targets], timeout_s, echo=echo, stop=stop)
        if done.stopped:
            raise TrialStopped(name, done.seconds)
        if not done.ok:
            raise StepFailed(f"trial {name}", done.returncode, done.tail)
        ran, cached = _RAN.findall(done.tail), _CACHED.findall(done.tail)
        rev = experiment_rev(ws, name)
        if rev is None:
            raise StepFailed(f"trial {name}", 1, f"{done.tail}\nno experiment named {name}")
    push = ["exp", "push", *([] if not shared_cache else ["--no-cache"]), "--", "origin", name]
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
        return SharedRun([], {})
    dvc_repo.run(ws, ["checkout", "--quiet", *stages], timeout_s, echo=lambda _: None)
    done = dvc_repo.run(ws, ["repro", *stages], timeout_s, echo=echo)
    if not done.ok:
        raise StepFailed(f"shared stages {', '.join(stages)}", done.returncode, done.tail)
    changed = git(ws, "diff", "--name-only", "HEAD").splitlines()
    files = {rel: (ws / rel).read_bytes() for rel in changed if (ws / rel).is_file()}
    return SharedRun(_RAN.findall(done.tail), files)


@dataclass(frozen=True)
class SharedRun:
    ran: list[str]  # the stages that ran (none when the commit's outputs were in the cache)
    changed: dict[str, bytes]  # tracked files the run changed (dvc.lock, run records)


def take_shared(ws: Path, changed: dict[str, bytes]) -> None:
    """Start the trial from the shared stages' lock entries and records."""
    for rel, data in changed.items():
        (ws / rel).parent.mkdir(parents=True, exist_ok=True)
        (ws / rel).write_bytes(data)


# --- a git URL for the workers ------------------------------------------------------------------


def origin_url(root: Path, origin: str) -> str:
    """`--origin` as the workers' `git clone` reads it: a git remote of the repo by name, an
    absolute path for a folder here, or the URL as given (never one git reads as an option)."""
    user_values.not_an_option("--origin", origin)
    named = subprocess.run(
        ["git", "remote", "get-url", "--", origin], cwd=root, capture_output=True, text=True
    )
    if named.returncode == 0:
        origin = named.stdout.strip()
    path = Path(origin).expanduser()
    return str(path.resolve()) if "://" not in origin and path.exists() else origin


def check_origin(root: Path, url: str, commit: str) -> str:
    """Refuse a sweep the workers could not run: `commit` not on a branch or tag of `url`, or
    no default DVC remote in the commit's `.dvc/config`. Returns that remote's URL."""
    user_values.not_an_option("--origin", url)
    listed = subprocess.run(
        ["git", "ls-remote", "--", url], cwd=root, capture_output=True, text=True
    )
    if listed.returncode:
        raise UsageError(f"--origin {url}: git cannot read it: {listed.stderr.strip()}")
    tips = {}
    for line in listed.stdout.splitlines():
        sha, ref = line.split("\t", 1)
        if ref.startswith(("refs/heads/", "refs/tags/")):
            tips[ref.removesuffix("^{}")] = sha
    unknown = [ref for ref, sha in tips.items() if not _has_commit(root, sha)]
    if unknown:  # into FETCH_HEAD only: no ref of the repo moves
        git(root, "fetch", "--quiet", "--no-tags", "--", url, *unknown)
    if not any(_is_ancestor(root, commit, sha) for sha in tips.values()):
        raise UsageError(
            f"commit {commit[:12]} is not in {url} (on no branch or tag there): the workers "
            f"clone it from there; push it first (git push <remote> HEAD)"
        )
    from dvc.repo import Repo

    with Repo(str(root), rev=commit) as repo:
        conf = repo.config.load_one("repo")  # the committed .dvc/config: what a clone has
    name = conf["core"].get("remote")
    remote = conf["remote"].get(name, {}).get("url") if name else None
    if not remote:
        raise UsageError(
            f"commit {commit[:12]} has no default DVC remote in .dvc/config: the workers take "
            "the shared stages' outputs from it and push their own there "
            "(dvc remote add -d <name> <url>, then commit .dvc/config)"
        )
    if "://" not in remote:
        log.warning(
            "the DVC remote %s is a folder: every worker must see it (a shared mount)", remote
        )
    return remote


def _has_commit(root: Path, sha: str) -> bool:
    return _git_ok(root, "cat-file", "-e", f"{sha}^{{commit}}")


def _is_ancestor(root: Path, commit: str, tip: str) -> bool:
    return _git_ok(root, "merge-base", "--is-ancestor", commit, tip)


def _git_ok(cwd: Path, *args: str) -> bool:
    return subprocess.run(["git", *args], cwd=cwd, capture_output=True).returncode == 0


def fetch_experiments(root: Path, url: str, commit: str, sweep: str) -> None:
    """The sweep's experiments from `url` into the repo's refs, where `dvc exp show` reads."""
    refs = f"refs/exps/{commit[:2]}/{commit[2:]}/{user_values.slug('sweep name', sweep)}-*"
    git(root, "fetch", "--quiet", "--no-tags", "--", url, f"+{refs}:{refs}")


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

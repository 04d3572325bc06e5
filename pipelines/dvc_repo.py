"""DVC as the orchestrator sees it: the stage graph, what changed, and commands in a subprocess.

DVC stays the owner of the graph, the cache and `dvc.lock`. Reads (stage order, status,
metrics) go through DVC's Python API in this process, which is quick; anything that writes
(`dvc repro`, `dvc push`) runs as `python -m dvc ...` in its own process group, so a stage can
be killed on timeout with everything it started (DDP ranks included) and DVC's own locking
applies exactly as on the command line.
"""

from __future__ import annotations

import logging
import os
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mnist_pipeline.errors import UsageError
from mnist_pipeline.yamlload import safe_load

log = logging.getLogger(__name__)

# DVC's own message when it restores a stage's outputs from its run cache instead of running it.
_RUN_CACHE_HIT = re.compile(r"Stage '[^']+' is cached - skipping run")


# The repos opened by `one_repo`, by root: every read goes through the open one.
_shared: dict[Path, Any] = {}


@contextmanager
def open_repo(root: Path) -> Iterator[Any]:
    """The DVC repo at `root`: the one `one_repo` holds open, or one opened for this read."""
    shared = _shared.get(Path(root).resolve())
    if shared is not None:
        yield shared
        return
    from dvc.repo import Repo

    repo = Repo(str(root))
    try:
        yield repo
    finally:
        repo.close()


@contextmanager
def one_repo(root: Path) -> Iterator[None]:
    """Within the block, the reads of `root` share one open DVC repo instead of opening one
    each (a flow run asks a dozen questions; each open re-reads the config and the pipeline).
    After a command that writes (`run`) or `written`, its cached index is dropped."""
    from dvc.repo import Repo

    key = Path(root).resolve()
    if key in _shared:  # nested: the outer block owns it
        yield
        return
    repo = Repo(str(root))
    _shared[key] = repo
    try:
        yield
    finally:
        del _shared[key]
        repo.close()


def written(root: Path) -> None:
    """Files of `root` changed outside DVC's API: the shared repo (if any) reads them again."""
    shared = _shared.get(Path(root).resolve())
    if shared is not None:
        shared._reset()


def stage_order(root: Path, targets: list[str] | None = None) -> list[str]:
    """The runnable stages of the repo, dependencies first, ties in `dvc.yaml` order.

    Read from DVC's own graph, so stages added to `dvc.yaml` (or a nested one) are picked up
    with no change here. Names are DVC addresses from the root (`train`, `sub/dvc.yaml:train`).
    With `targets`, only those stages and the ones they depend on, as `dvc repro <targets>`.
    """
    import networkx as nx

    with open_repo(root) as repo:
        stages = [s for s in repo.index.stages if s.cmd]  # .dvc files are data, not steps
        position = {s: i for i, s in enumerate(repo.index.stages)}
        # DVC's edges point from a stage to the stages it depends on.
        deps = repo.index.graph.subgraph(stages)
        if targets:
            by_name = {address(root, s): s for s in stages}
            unknown = sorted(set(targets) - set(by_name))
            if unknown:
                raise UsageError(
                    f"no such stage: {', '.join(unknown)} (stages: {sorted(by_name)})"
                )
            keep = {by_name[t] for t in targets}
            keep |= {d for t in targets for d in nx.descendants(deps, by_name[t])}
            deps = deps.subgraph(keep)
        ordered = nx.lexicographical_topological_sort(deps.reverse(), key=lambda s: position[s])
        return [address(root, s) for s in ordered]


def address(root: Path, stage: Any) -> str:
    """The stage's DVC address from the repo root (`addressing` is relative to the cwd)."""
    dvcfile = Path(os.path.relpath(stage.path, root)).as_posix()
    return stage.name if dvcfile == "dvc.yaml" else f"{dvcfile}:{stage.name}"


def _indexed(repo: Any, root: Path, stage: str) -> Any:
    """The stage from the repo's index. `Repo.status` and `Repo.stage.collect` parse every
    `dvc.yaml` and `dvc.lock` again on each call; the index is parsed once per shared repo
    (and again after a write: `written`), so a flow's per-stage questions cost a lookup."""
    for st in repo.index.stages:
        if address(root, st) == stage:
            return st
    raise UsageError(f"no such stage: {stage}")


def changes(root: Path, stage: str | None = None) -> dict[str, Any]:
    """`dvc status` of one stage (or of the whole pipeline); empty when up to date."""
    with open_repo(root) as repo:
        if stage is None:
            return repo.status()
        st = _indexed(repo, root, stage)
        with repo.lock:  # as `Repo.status` reads: no other dvc writes meanwhile
            status: dict[str, Any] = st.status(check_updates=True)
            return status


def cloud_changes(root: Path) -> dict[str, Any]:
    """`dvc status --cloud`: what the default remote is missing; empty when in sync."""
    with open_repo(root) as repo:
        return repo.status(cloud=True)


def metrics(root: Path) -> dict[str, dict[str, Any]]:
    """`dvc metrics show`, flattened: {file: {"test.acc": 0.99, ...}}; {} when there are none."""
    with open_repo(root) as repo:
        shown = repo.metrics.show()
    first: dict[str, Any] = next(iter(shown.values()), {})
    files = first.get("data", {})
    return {path: flatten(entry.get("data", {})) for path, entry in files.items()}


def metrics_diff(root: Path, a_rev: str = "HEAD") -> dict[str, dict[str, dict[str, Any]]]:
    """`dvc metrics diff <a_rev> --json`: {file: {key: {"old", "new", "diff"}}}; {} off git."""
    from dvc.scm import NoSCMError, SCMError

    try:
        with open_repo(root) as repo:
            return repo.metrics.diff(a_rev=a_rev).get("diff", {})
    except (NoSCMError, SCMError) as err:  # no commits yet: nothing to compare with
        log.info("no metrics diff against %s: %s", a_rev, err)
        return {}


def out_paths(root: Path, stage: str) -> list[Path]:
    """The outputs (outs, metrics, plots) a stage declares in `dvc.yaml`."""
    with open_repo(root) as repo:
        return [root / out.def_path for out in _indexed(repo, root, stage).outs]


def artifacts(root: Path) -> dict[str, Path]:
    """The named artifacts `dvc.yaml` declares (its `artifacts:` section): {name: path}."""
    with open_repo(root) as repo:
        return {
            name: root / Path(dvcfile).parent / art.path
            for dvcfile, arts in repo.artifacts.read().items()
            for name, art in arts.items()
        }


def remote_url(root: Path) -> str | None:
    """Where `dvc push` sends data: the default remote's URL, after `--local` overrides."""
    with open_repo(root) as repo:
        name = repo.config["core"].get("remote")
        return repo.config["remote"].get(name, {}).get("url") if name else None


def stage_arg(root: Path, stage: str, flag: str) -> Path | None:
    """The path a stage's command in dvc.yaml passes with `flag` (None: the flag is not there)."""
    spec = safe_load((root / "dvc.yaml").read_text()) or {}
    args = shlex.split(str((spec.get("stages") or {}).get(stage, {}).get("cmd", "")))
    return root / args[args.index(flag) + 1] if flag in args[:-1] else None


def provenance_file(root: Path, stage: str) -> Path | None:
    """The run record a stage's command writes (its `--provenance` argument in dvc.yaml)."""
    return stage_arg(root, stage, "--provenance")


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dicts as one level of dotted keys: {"test": {"acc": 1}} -> {"test.acc": 1}."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, f"{key}."))
        else:
            out[key] = v
    return out


@dataclass(frozen=True)
class Completed:
    """A finished `dvc` command: `returncode` is None when it was killed on timeout."""

    args: tuple[str, ...]
    returncode: int | None
    seconds: float
    tail: str  # the last lines of its merged stdout and stderr
    stopped: bool = False  # `run`'s `stop` asked for it to end, and it was stopped

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and not self.stopped

    @property
    def run_cache_hit(self) -> bool:
        return bool(_RUN_CACHE_HIT.search(self.tail))


def run(
    root: Path,
    args: list[str],
    timeout_s: float | None = None,
    echo: Callable[[str], None] = log.info,
    tail_lines: int = 200,
    extra_env: dict[str, str] | None = None,
    stop: Callable[[], bool] | None = None,
    poll_s: float = 1.0,
) -> Completed:
    """Run `dvc <args>` in `root`, streaming its output line by line to `echo`.

    On timeout the whole process group gets SIGTERM, then SIGKILL 30 s later; so it does
    when `stop`, called every `poll_s` while the command runs, returns True (`stopped`).
    """
    env = {**os.environ, **(extra_env or {})}
    # The stage commands run `python -m stages.<name>`: make that this environment's python.
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.setdefault("PYTHONUNBUFFERED", "1")
    cmd = [sys.executable, "-m", "dvc", *args]
    tail: deque[str] = deque(maxlen=tail_lines)
    start = time.perf_counter()
    proc = subprocess.Popen(
        cmd,
        cwd=root,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        errors="replace",
        start_new_session=True,  # its own process group, killed as a whole on timeout
    )

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            line = line.rstrip()
            tail.append(line)
            echo(line)

    reader = threading.Thread(target=pump, name=f"dvc {' '.join(args)}", daemon=True)
    reader.start()
    try:
        returncode, why = _wait(proc, timeout_s, stop, poll_s)
        if why:
            echo(f"dvc {' '.join(args)}: {why}, stopping it")
            _kill_group(proc)
            returncode = proc.returncode if why == _ASKED else None  # None: timed out
    except BaseException:  # the flow was cancelled or interrupted: take the stage down with it
        _kill_group(proc)
        raise
    finally:
        reader.join(timeout=10)
        written(root)
    seconds = time.perf_counter() - start
    return Completed(tuple(args), returncode, seconds, "\n".join(tail), why == _ASKED)


_ASKED = "asked to stop"


def _wait(
    proc: subprocess.Popen, timeout_s: float | None, stop: Callable[[], bool] | None, poll_s: float
) -> tuple[int | None, str]:
    """(exit status, ""), or (None, why) when it must be stopped: a timeout, or `stop()`."""
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    while True:
        left = None if deadline is None else max(0.0, deadline - time.monotonic())
        wait_s = left if stop is None or (left is not None and left < poll_s) else poll_s
        try:
            return proc.wait(timeout=wait_s), ""
        except subprocess.TimeoutExpired:
            if left is not None and wait_s is not None and left <= wait_s:
                return None, f"timed out after {timeout_s:.0f} s"
            if stop is not None and stop():
                return None, _ASKED


def _kill_group(proc: subprocess.Popen, grace_s: float = 30.0) -> None:
    for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 10.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait_s)
            return
        except subprocess.TimeoutExpired:
            continue

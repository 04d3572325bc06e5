"""This working tree against a reference commit, side by side in one run on one machine.

Each side is a checkout of its own, in the work folder: the branch is a copy of this working
tree (uncommitted work included), the reference a `git clone --shared` of the reference commit;
each has its own virtual environment (`uv sync --frozen`, quick from uv's cache) or, with
`own_venv=False`, this interpreter, and its own empty DVC cache, so every stage really runs.
The two take turns in every repetition (reference first, then branch first), so the load of a
shared machine weighs on both alike, and the summary takes medians over repetitions:

- `dvc repro --force --no-run-cache`, the whole pipeline from scratch (every stage's resume
  state, its `--ckpt-dir` in dvc.yaml, removed first): its wall seconds, each
  stage's wall seconds as DVC ran it (from one `Running stage` line to the next: the process,
  its imports, its own work and DVC's hashing of its outputs), the stage's own seconds (its run
  record in provenance/) and their difference, the stage's overhead;
- `python -c "import stages.X"` in a fresh process: the process's seconds, the import's, and
  how many modules it loads (a count that does not depend on the machine's load);
- `dvc repro` when nothing changed, and the flow when nothing changed (ephemeral, and against a
  running Prefect server): `benchmarks.orchestration.noop_sides`;
- the training epoch and the time to the target accuracy on the side's prepared data:
  `benchmarks.training.run_once`, the project's path as `stages.train` runs it.

Ratios are reference / branch: above 1, the branch is that many times faster (or lighter).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from benchmarks import orchestration, training
from benchmarks.orchestration import Checkout
from pipelines import dvc_repo
from testing.scratch_repo import copy_repo, git

REFERENCE, BRANCH = "reference", "branch"
RUNNING = re.compile(r"Running stage '([^']+)':")
# What a stage's import costs, measured inside a fresh interpreter (its start is the rest).
IMPORT_PROBE = (
    "import json, sys, time; t = time.perf_counter(); import {module}; "
    "print(json.dumps({{'import_s': time.perf_counter() - t, 'modules': len(sys.modules)}}))"
)


def resolve_ref(root: Path, ref: str | None) -> str:
    """The commit `ref` names, by default the merge-base of HEAD with origin/main (or main)."""
    if ref is None:
        for main in ("origin/main", "main"):
            done = subprocess.run(
                ["git", "merge-base", "HEAD", main], cwd=root, capture_output=True, text=True
            )
            if done.returncode == 0:
                return done.stdout.strip()
        raise ValueError("no reference given and no merge-base with origin/main or main")
    return git(root, "rev-parse", "--verify", f"{ref}^{{commit}}").strip()


def side_env(root: Path, python: str, extra: dict[str, str] | None = None) -> dict[str, str]:
    """The shell of a user of the side's environment: its bin first on PATH (a stage's `python`
    is the side's), without the compute pins a process may carry (each stage pins its own)."""
    from mnist_pipeline.compute import environment_for
    from mnist_pipeline.params.schema import ComputeParams

    compute = yaml.safe_load((root / "params.yaml").read_text())["compute"]
    pins = environment_for(ComputeParams.model_validate({**compute, "profile": "portable"}))
    env = {k: v for k, v in os.environ.items() if k not in pins and k != "VIRTUAL_ENV"}
    path = f"{Path(python).parent}{os.pathsep}{env.get('PATH', '')}"
    return {**env, "PATH": path, "PYTHONUNBUFFERED": "1", **(extra or {})}


def checkout(
    root: Path,
    ref: str,
    workdir: Path,
    *,
    own_venv: bool,
    shrink: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
    extra_env: dict[str, str] | None = None,
) -> dict[str, Checkout]:
    """The two sides in `workdir`, each with its params.yaml passed through `shrink` if given."""
    branch = copy_repo(root, workdir / BRANCH)
    reference = workdir / REFERENCE
    subprocess.run(
        ["git", "clone", "-q", "--shared", "--no-checkout", str(root), str(reference)],
        check=True,
        capture_output=True,
    )
    git(reference, "checkout", "-q", "--detach", ref)
    sides = {}
    for name, dest in ((REFERENCE, reference), (BRANCH, branch)):
        if shrink is not None:
            raw = yaml.safe_load((dest / "params.yaml").read_text())
            (dest / "params.yaml").write_text(yaml.safe_dump(shrink(raw), sort_keys=False))
        python = sys.executable
        if own_venv:
            env = {k: v for k, v in os.environ.items() if not k.startswith(("VIRTUAL_ENV", "UV_"))}
            subprocess.run(
                ["uv", "sync", "--frozen", "--quiet", "--compile-bytecode"],
                cwd=dest,
                env=env,
                check=True,
                timeout=1800,
            )
            python = str(dest / ".venv" / "bin" / "python")
        sides[name] = Checkout(dest, python, side_env(dest, python, extra_env))
    return sides


def clear_resume_state(root: Path) -> None:
    """Remove each stage's checkpoints (its `--ckpt-dir` in dvc.yaml), from which a stage
    resumes where the last run stopped."""
    for stage in stage_names(root):
        ckpt = dvc_repo.stage_arg(root, stage, "--ckpt-dir")
        if ckpt is not None:
            shutil.rmtree(ckpt, ignore_errors=True)


def repro_from_scratch(side: Checkout, timeout_s: float) -> dict[str, float]:
    """Every stage run by `dvc repro --force --no-run-cache` (also those whose outputs git
    holds) without the checkpoints of an earlier repetition, timed as a whole and stage by
    stage from DVC's `Running stage` lines."""
    clear_resume_state(side.root)
    cmd = orchestration.dvc_cmd("repro", "--force", "--no-run-cache", python=side.python)
    marks: list[tuple[str, float]] = []
    tail: deque[str] = deque(maxlen=30)
    start = time.perf_counter()
    with subprocess.Popen(
        cmd,
        cwd=side.root,
        env=side.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    ) as proc:
        killer = threading.Timer(timeout_s, proc.kill)
        killer.start()
        assert proc.stdout is not None
        for line in proc.stdout:
            tail.append(line)
            if m := RUNNING.search(line):
                marks.append((m.group(1), time.perf_counter()))
        code = proc.wait()
        killer.cancel()
    end = time.perf_counter()
    if code != 0:
        raise RuntimeError(f"`dvc repro` failed in {side.root}:\n{''.join(tail)}")
    out = {"dvc_repro_full_s": end - start}
    ends = [t for _, t in marks[1:]] + [end]
    for (stage, began), ended in zip(marks, ends, strict=True):
        out[f"stage_wall_s/{stage}"] = ended - began
        record = dvc_repo.provenance_file(side.root, stage)
        if record is not None and record.is_file():
            own = float(json.loads(record.read_text())["seconds"])
            out[f"stage_own_s/{stage}"] = own
            out[f"stage_overhead_s/{stage}"] = ended - began - own
    return out


def stage_names(root: Path) -> list[str]:
    return list((yaml.safe_load((root / "dvc.yaml").read_text()) or {}).get("stages", {}))


def imports(side: Checkout) -> dict[str, float]:
    """Each stage module imported in a fresh interpreter: the process's and the import's own
    seconds, and the number of modules loaded."""
    out: dict[str, float] = {}
    for stage in stage_names(side.root):
        if not (side.root / "stages" / f"{stage}.py").is_file():
            continue
        code = IMPORT_PROBE.format(module=f"stages.{stage}")
        start = time.perf_counter()
        done = subprocess.run(
            [side.python, "-c", code], cwd=side.root, env=side.env, capture_output=True, text=True
        )
        wall = time.perf_counter() - start
        if done.returncode != 0:
            raise RuntimeError(f"importing stages.{stage} failed in {side.root}:\n{done.stderr}")
        probe = json.loads(done.stdout.strip().splitlines()[-1])
        out[f"import_process_s/{stage}"] = wall
        out[f"import_s/{stage}"] = probe["import_s"]
        out[f"import_modules/{stage}"] = probe["modules"]
    return out


def epoch_times(side: Checkout, workdir: Path, rep: int, target: float, timeout_s: float) -> dict:
    """The project's training path on the side's prepared data, with its own params."""
    raw = yaml.safe_load((side.root / "params.yaml").read_text())
    variant = training.Variant(training.PROJECT, "project", raw["train"], raw["compute"])
    setup = training.Setup(
        data_dir=side.root / "data" / "prepared",
        torchvision_root=workdir,  # unused by the project's path
        workdir=workdir,
        target_acc=target,
        seed_epochs=0,
        seed_batches=None,
        timeout_s=timeout_s,
    )
    r = training.run_once(variant, setup, rep, False, python=side.python, cwd=side.root)
    return {"steady_epoch_s": r["steady_epoch_s"], "time_to_target_s": r["time_to_target_s"]}


def dense_acc(root: Path) -> dict[str, float]:
    metrics = dvc_repo.stage_arg(root, "evaluate", "--metrics")
    if metrics is None or not metrics.is_file():
        return {}
    return {"dense_test_acc": json.loads(metrics.read_text())["test"]["acc"]}


def _median(xs: list[float]) -> float:
    return round(statistics.median(xs), 4)


def summarize(runs: dict[str, dict[str, list[float]]]) -> dict[str, Any]:
    """Medians per side, and reference / branch for every figure both sides have (accuracy
    aside: it is compared as it is)."""
    sides = {name: {k: _median(v) for k, v in sorted(r.items()) if v} for name, r in runs.items()}
    ref, br = sides[REFERENCE], sides[BRANCH]
    ratios = {
        k: round(ref[k] / br[k], 3)
        for k in ref
        if k in br and not k.endswith("_acc") and br[k] and ref[k] is not None
    }
    return {"sides": sides, "ratios": ratios}


def measure(
    root: Path,
    ref: str | None,
    workdir: Path,
    reps: int,
    *,
    own_venv: bool = True,
    quick: bool = False,
    train: bool = True,
    flows: bool | None = None,
    mirror: Path | None = None,
    target: float = 0.99,
    timeout_s: float = 3600,
    log: Callable[[str], None] = lambda _: None,
) -> dict[str, Any]:
    """Both sides measured in turns; `quick`: tiny params (testing.tiny) on the synthetic
    `mirror`, no flow timings (a Prefect server takes longer to start than all the rest);
    `train` False: no training epochs (a pipeline without the project's `train`); `flows`
    (default: not `quick`) False: no flow timings."""
    from testing.tiny import shrink

    sha, workdir = resolve_ref(root, ref), workdir.resolve()
    extra = {}
    if mirror is not None:
        extra["MNIST_MIRROR"] = str(mirror.resolve())
        if (mirror / "MD5SUMS").is_file():
            extra["MNIST_MD5SUMS"] = str((mirror / "MD5SUMS").resolve())
    sides = checkout(
        root, sha, workdir, own_venv=own_venv, shrink=shrink if quick else None, extra_env=extra
    )
    runs: dict[str, dict[str, list[float]]] = {name: {} for name in sides}
    for rep in range(reps):
        order = [REFERENCE, BRANCH] if rep % 2 == 0 else [BRANCH, REFERENCE]
        for name in order:
            log(f"repetition {rep + 1}/{reps}, {name}: dvc repro from scratch, imports")
            got = {**repro_from_scratch(sides[name], timeout_s), **imports(sides[name])}
            if train:
                got |= epoch_times(sides[name], workdir / f"train-{name}", rep, target, timeout_s)
            for k, v in got.items():
                if v is not None:
                    runs[name].setdefault(k, []).append(v)
    for name in sides:
        for k, v in dense_acc(sides[name].root).items():
            runs[name].setdefault(k, []).append(v)
    log("no-change dvc repro and flow, in turns")
    noop = orchestration.noop_sides(sides, reps, flows=not quick if flows is None else flows)
    for name, times in noop.items():
        for k, vs in times.items():
            runs[name].setdefault(k, []).extend(vs)
    head = git(root, "rev-parse", "HEAD").strip()
    dirty = bool(git(root, "status", "--porcelain", "--untracked-files=no").strip())
    return {
        "quick": quick,
        "repetitions": reps,
        "own_venv": own_venv,
        "commits": {REFERENCE: sha, BRANCH: head, "branch_uncommitted_changes": dirty},
        "stages": stage_names(sides[BRANCH].root),  # in dvc.yaml's order, for the tables
        **summarize(runs),
    }

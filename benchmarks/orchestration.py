"""Orchestration overhead: `dvc repro` and the Prefect flow (`pipelines.flow`) when nothing
changed, and, opt-in because each takes minutes, a full run through the flow against a plain
`dvc repro`, each in a fresh copy of the repository. Every command runs in its own process,
as a user would run it, and the two take turns within each repetition."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from testing.prefect_server import running_server
from testing.scratch_repo import copy_repo


@dataclass(frozen=True)
class Checkout:
    """A repository to time commands in, with the interpreter and environment they run with."""

    root: Path
    python: str = sys.executable
    env: dict[str, str] = field(default_factory=lambda: dict(os.environ))


def dvc_cmd(*args: str, python: str = sys.executable) -> list[str]:
    return [python, "-m", "dvc", *args]


def flow_cmd(root: Path, python: str = sys.executable) -> list[str]:
    return [python, "-m", "pipelines.flow", "--root", str(root), "--no-push"]


def timed(cmd: list[str], cwd: Path, timeout_s: float, env: dict[str, str] | None = None) -> float:
    """Wall seconds of `cmd`; raises with the end of its output if it fails."""
    # A busy machine can take longer than Prefect's 20 s default to start its temporary server.
    env = {"PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120", **(env or os.environ)}
    t = time.perf_counter()
    done = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout_s, env=env)
    elapsed = time.perf_counter() - t
    if done.returncode != 0:
        tail = "\n".join((done.stdout + done.stderr).splitlines()[-20:])
        raise RuntimeError(f"`{' '.join(cmd[1:])}` failed in {cwd}:\n{tail}")
    return elapsed


def not_up_to_date(root: Path, python: str = sys.executable) -> str | None:
    """Why `root` is no DVC pipeline with nothing to do, or None when it is one."""
    if not (root / "dvc.yaml").is_file():
        return f"{root} has no dvc.yaml"
    done = subprocess.run(
        dvc_cmd("status", "--json", python=python),
        cwd=root,
        capture_output=True,
        text=True,
        timeout=600,
    )
    if done.returncode != 0:
        return f"`dvc status` failed in {root}: {done.stderr.strip()[-300:]}"
    changed = json.loads(done.stdout or "{}")
    if changed:
        return (
            f"the pipeline in {root} is not up to date ({', '.join(sorted(changed))} changed): "
            "run dvc repro first, or pass --full-runs"
        )
    return None


def _medians(times: dict[str, list[float]]) -> dict[str, Any]:
    out: dict[str, Any] = {k: round(statistics.median(v), 3) for k, v in times.items() if v}
    out["repetitions"] = max((len(v) for v in times.values()), default=0)
    return out


def noop(root: Path, reps: int, timeout_s: float = 600) -> dict[str, Any]:
    """`dvc repro` and the flow when DVC says nothing changed (checked first: otherwise they
    would train): the flow in ephemeral mode (its own temporary server) and against a Prefect
    server already running (started once, before the timings, with its own SQLite file)."""
    reason = not_up_to_date(root)
    if reason:
        return {"skipped": reason}
    return _medians(noop_sides({"": Checkout(root)}, reps, timeout_s)[""])


def noop_sides(
    sides: dict[str, Checkout], reps: int, timeout_s: float = 600, flows: bool = True
) -> dict[str, dict[str, list[float]]]:
    """`noop`'s timings for several checkouts (each up to date), taking turns in an order
    rotated every repetition, against one Prefect server; `flows` False: `dvc repro` only."""
    for side in sides.values():
        reason = not_up_to_date(side.root, side.python)
        if reason:
            raise RuntimeError(reason)
    keys = ("dvc_repro_noop_s", "flow_noop_s", "flow_noop_server_s") if flows else ()
    times: dict[str, dict[str, list[float]]] = {
        name: {k: [] for k in keys or ("dvc_repro_noop_s",)} for name in sides
    }
    names = list(sides)
    with contextlib.ExitStack() as stack:
        api = None
        if flows:
            home = stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-prefect-"))
            api = stack.enter_context(running_server(Path(home)))
        for rep in range(reps):
            k = rep % len(names)
            for name in names[k:] + names[:k]:
                s, out = sides[name], times[name]
                out["dvc_repro_noop_s"].append(
                    timed(dvc_cmd("repro", python=s.python), s.root, timeout_s, s.env)
                )
                if api is None:
                    continue
                flow = flow_cmd(s.root, s.python)
                out["flow_noop_s"].append(timed(flow, s.root, timeout_s, s.env))
                server_env = {**s.env, "PREFECT_API_URL": api}
                out["flow_noop_server_s"].append(timed(flow, s.root, timeout_s, server_env))
    return times


def full_runs(
    root: Path, workdir: Path, reps: int, mirror: Path, timeout_s: float = 3600
) -> dict[str, Any]:
    """Every stage from scratch, by `dvc repro` and by the flow, each in a fresh copy; then
    the no-op cost in the copy `dvc repro` just brought up to date."""
    env = {**os.environ, "MNIST_MIRROR": str(mirror.resolve())}
    times: dict[str, list[float]] = {"dvc_repro_full_s": [], "flow_full_s": []}
    noop_times: dict[str, list[float]] = {"dvc_repro_noop_s": [], "flow_noop_s": []}
    for rep in range(reps):
        kinds = ["dvc", "flow"] if rep % 2 == 0 else ["flow", "dvc"]
        for kind in kinds:
            dest = copy_repo(root, workdir / f"repo-{kind}-{rep}")
            cmd = dvc_cmd("repro") if kind == "dvc" else flow_cmd(dest)
            times[f"{'dvc_repro' if kind == 'dvc' else 'flow'}_full_s"].append(
                timed(cmd, dest, timeout_s, env)
            )
            if kind == "dvc":
                noop_times["dvc_repro_noop_s"].append(timed(dvc_cmd("repro"), dest, 600, env))
                noop_times["flow_noop_s"].append(timed(flow_cmd(dest), dest, 600, env))
            shutil.rmtree(dest, ignore_errors=True)
    return {**_medians(times), "noop_in_fresh_copy": _medians(noop_times)}


def profiles(root: Path, workdir: Path, reps: int, mirror: Path, timeout_s: float = 3600) -> dict:
    """A whole `dvc repro` from scratch under each compute profile (params.yaml's, and the
    other), in fresh copies taking turns; with each copy's `train` fit time and stage times
    (from its measurements and run records)."""
    import yaml

    from mnist_pipeline.compute import environment_for
    from mnist_pipeline.params.schema import load_params

    env = {**os.environ, "MNIST_MIRROR": str(mirror.resolve())}
    for key in environment_for(load_params(root / "params.yaml").compute):
        env.pop(key, None)  # each stage pins its own profile
    raw = yaml.safe_load((root / "params.yaml").read_text())
    runs: dict[str, dict[str, list[float]]] = {}
    for rep in range(reps):
        order = ["portable", "fast"] if rep % 2 == 0 else ["fast", "portable"]
        for profile in order:
            raw["compute"]["profile"] = profile
            text = yaml.safe_dump(raw, sort_keys=False)
            dest = copy_repo(
                root, workdir / f"repo-{profile}-{rep}", replace={"params.yaml": text}
            )
            times = runs.setdefault(profile, {"dvc_repro_full_s": []})
            # --force: every stage runs, also those whose outputs git holds (evaluate's), and
            # --no-run-cache: none is restored from an earlier run of the same commit.
            repro = dvc_cmd("repro", "--force", "--no-run-cache")
            times["dvc_repro_full_s"].append(timed(repro, dest, timeout_s, env))
            fit = json.loads((dest / "measurements" / "train.json").read_text())["fit_time_s"]
            times.setdefault("train_fit_s", []).append(fit)
            for record in sorted((dest / "provenance").glob("*.json")):
                seconds = json.loads(record.read_text())["seconds"]
                times.setdefault(f"{record.stem}_stage_s", []).append(seconds)
            test_acc = json.loads((dest / "metrics" / "evaluate.json").read_text())["test"]["acc"]
            times.setdefault("test_acc", []).append(test_acc)
            shutil.rmtree(dest, ignore_errors=True)
    out: dict[str, Any] = {p: _medians(t) for p, t in runs.items()}
    if "portable" in out and "fast" in out:
        out["portable_over_fast"] = {
            k: round(out["portable"][k] / out["fast"][k], 3)
            for k in ("dvc_repro_full_s", "train_fit_s")
        }
    return out

"""Sweeps: 4 one-epoch trials one after another and two at a time (`pipelines.sweep --jobs`),
and what the sweep machinery costs per trial over a plain `dvc exp run`.

Everything runs in one fresh copy of the repository, each command in its own process as a user
would run it. `prepare` runs once first (the sweeps share it, per commit), so the timings are
of the trials. The plain `dvc exp run` trains the same recipe in the copy's workspace.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from benchmarks.orchestration import dvc_cmd, timed
from testing.scratch_repo import copy_repo
from testing.scratch_repo import env as repo_env

LRS = ("6.0e-3", "1.2e-2", "2.4e-2", "4.8e-2")


def cached_outputs(root: Path) -> list[str]:
    """dvc.yaml's cached outputs: a fresh copy leaves them behind, as a clone would."""
    spec = yaml.safe_load((root / "dvc.yaml").read_text())
    paths = []
    for stage in (spec.get("stages") or {}).values():
        for kind in ("outs", "metrics", "plots"):
            for entry in stage.get(kind) or []:
                path, opts = next(iter(entry.items())) if isinstance(entry, dict) else (entry, {})
                if (opts or {}).get("cache", True):
                    paths.append(path)
    return paths


def sweep_cmd(root: Path, name: str, jobs: int, lrs: tuple[str, ...], epochs: int) -> list[str]:
    return [
        sys.executable,
        "-m",
        "pipelines.sweep",
        "--root",
        str(root),
        "--name",
        name,
        "-S",
        f"train.optimizer.lr={','.join(lrs)}",
        "-S",
        f"train.max_epochs={epochs}",
        "--jobs",
        str(jobs),
    ]


def measure(
    root: Path,
    workdir: Path,
    mirror: Path,
    params_text: str | None = None,
    epochs: int = 1,
    lrs: tuple[str, ...] = LRS,
    timeout_s: float = 3600,
) -> dict[str, Any]:
    """Wall seconds of the sweep sequential and with --jobs 2, their ratio, and the overhead
    per trial against `dvc exp run` of one trial."""
    repo = workdir / "sweep-repo"
    repo.mkdir(parents=True, exist_ok=True)
    copy_repo(
        root,
        repo,
        skip=cached_outputs(root),
        replace={"params.yaml": params_text} if params_text else None,
    )
    env = repo_env(MNIST_MIRROR=str(mirror.resolve()))
    env.pop("MNIST_FAIL_AFTER_EPOCH", None)
    if (mirror / "MD5SUMS").is_file():
        env["MNIST_MD5SUMS"] = str((mirror / "MD5SUMS").resolve())
    # The shared stage, once for both sweeps (they find it done), and the workspace's data.
    t = time.perf_counter()
    timed(sweep_cmd(repo, "warm-up", 1, lrs[:1], epochs), repo, timeout_s, env)
    warm_s = time.perf_counter() - t
    # The same prepared bytes are in the cache now (the committed lock's, on real MNIST).
    subprocess.run(dvc_cmd("checkout", "prepare"), cwd=repo, env=env, capture_output=True)
    timed(dvc_cmd("repro", "prepare"), repo, timeout_s, env)

    seq = timed(sweep_cmd(repo, "sequential", 1, lrs, epochs), repo, timeout_s, env)
    par = timed(sweep_cmd(repo, "parallel", 2, lrs, epochs), repo, timeout_s, env)
    plain = timed(
        dvc_cmd(
            "exp", "run", "-n", "plain", "-S", f"train.optimizer.lr={lrs[-1]}",
            "-S", f"train.max_epochs={epochs}", "evaluate",
        ),
        repo,
        timeout_s,
        env,
    )  # fmt: skip
    per_trial = {}
    for name in ("sequential", "parallel"):
        data = json.loads((repo / "sweeps" / f"{name}.json").read_text())
        if data["counts"]["succeeded"] != len(lrs):
            raise RuntimeError(f"sweep {name}: {data['counts']}")
        per_trial[name] = [t["seconds"] for t in data["trials"]]
    seq_trial = sum(per_trial["sequential"]) / len(lrs)
    return {
        "trials": len(lrs),
        "epochs": epochs,
        "cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "warm_up_sweep_s": round(warm_s, 2),
        "sequential_s": round(seq, 2),
        "jobs2_s": round(par, 2),
        "ratio": round(seq / par, 3),
        "sequential_trial_s": round(seq_trial, 2),
        "jobs2_trial_s": round(sum(per_trial["parallel"]) / len(lrs), 2),
        "plain_exp_run_s": round(plain, 2),
        # The trial's own clone, checkout and `dvc exp push`, over a plain `dvc exp run`.
        "trial_overhead_s": round(seq_trial - plain, 2),
        # The flow itself per trial: Prefect's server and tasks, the report, spread over 4.
        "flow_overhead_per_trial_s": round((seq - sum(per_trial["sequential"])) / len(lrs), 2),
    }

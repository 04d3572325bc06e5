"""Where a stage's outputs came from, recorded beside them and never inside them.

Each stage writes one provenance file per run (its path comes from `dvc.yaml`, which declares
it nowhere, so DVC does not hash it): the git commit and whether the working tree had
changes, a hash of the params the stage read, the md5 of every input file, the versions of the
compute libraries, the device and resolved precision, the CPU features that choose kernels,
the host and the times. The outputs themselves embed only what determines them, so two runs
of the same commit give the same bytes while their provenance files differ.
"""

from __future__ import annotations

import hashlib
import json
import socket
import subprocess
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from mnist_pipeline import environment
from mnist_pipeline.atomic import write_json
from mnist_pipeline.params.schema import ComputeParams

# A dirty tree lists at most this many changed paths.
_MAX_CHANGED = 20


def git_state(cwd: Path | None = None) -> dict[str, Any]:
    """HEAD's commit and the tracked files that differ from it ({} outside a git repo)."""

    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(
                ["git", *args], cwd=cwd, capture_output=True, text=True, timeout=30
            )
        except (OSError, subprocess.TimeoutExpired):
            return None
        return done.stdout if done.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    if commit is None:
        return {}
    status = git("status", "--porcelain", "--untracked-files=no") or ""
    changed = sorted(line[3:] for line in status.splitlines() if line.strip())
    return {"commit": commit.strip(), "dirty": bool(changed), "changed": changed[:_MAX_CHANGED]}


def md5_files(paths: Iterable[Path]) -> dict[str, str]:
    """md5 of each file, and of each file inside each folder, keyed by path."""
    out: dict[str, str] = {}
    for path in paths:
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        for f in files:
            with f.open("rb") as fh:
                out[f.as_posix()] = hashlib.file_digest(fh, "md5").hexdigest()
    return out


def params_sha256(*sections: BaseModel) -> str:
    """A hash of the validated params a stage read (sorted keys: independent of YAML order)."""
    dumped = [s.model_dump(mode="json") for s in sections]
    return hashlib.sha256(json.dumps(dumped, sort_keys=True).encode()).hexdigest()


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


@dataclass
class Run:
    """What the stage adds to its record while it runs (device, precision, ...)."""

    facts: dict[str, Any] = field(default_factory=dict)
    keep: bool = True  # False: this process writes no record (a DDP rank other than 0)


@contextmanager
def record(
    path: Path | None,
    stage: str,
    inputs: Iterable[Path],
    params: Iterable[BaseModel],
    compute: ComputeParams | None = None,
) -> Iterator[Run]:
    """Write the record to `path` once the block succeeds (`path` None: record nothing).

    With `compute`, the block runs as it says (`mnist_pipeline.compute.apply`: threads set, the
    portable profile checked), and the record says how the libraries computed, from inside."""
    run = Run()
    if compute is not None:
        from mnist_pipeline import compute as compute_mod  # imports torch: not for prepare

        run.facts["compute"] = compute_mod.apply(compute)
        params = [*params, compute]
    started, clock = _now(), time.perf_counter()
    yield run
    if path is None or not run.keep:
        return
    write_json(
        path,
        {
            "stage": stage,
            "started": started,
            "finished": _now(),
            "seconds": round(time.perf_counter() - clock, 3),
            "host": socket.gethostname(),
            "git": git_state(),
            "params_sha256": params_sha256(*params),
            "inputs_md5": md5_files(inputs),
            "libraries": environment.installed_versions(),
            "cpu": environment.cpu_features(),
            **run.facts,
        },
    )


def read(path: Path) -> dict[str, Any] | None:
    """A provenance file, or None if it is missing or unreadable."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None

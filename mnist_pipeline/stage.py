"""The skeleton every stage shares: its arguments, logging, the validated params, its run record.

A stage module declares its paths to `parser(...)` and does its work inside `running(...)`:

    def main(argv: list[str] | None = None) -> None:
        args = parse_args(argv)
        with stage.running(args, "evaluate", [args.model, args.data]) as run:
            evaluate_files(run.params.evaluate, ...)

Paths reach a stage only as arguments (from `dvc.yaml`); `--metrics` is a result, `--timings`
and `--provenance` are measurements and run records, kept out of what DVC hashes.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import sys
import time
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mnist_pipeline import locked, logs, provenance
from mnist_pipeline.errors import StageError
from mnist_pipeline.params.schema import Params, load_params

# The start-up benchmark's hook (benchmarks/startup.py): set to a file, a stage writes there
# the monotonic clock and the top-level modules loaded as its own work begins, and stops.
STARTUP_MARK = "MNIST_STAGE_STARTUP_MARK"


def parser(
    name: str,
    doc: str | None,
    paths: Mapping[str, str],
    optional: Mapping[str, str] | None = None,
    *,
    metrics: bool = False,
    timings: bool = False,
) -> argparse.ArgumentParser:
    """`python -m stages.<name>`'s arguments: the shared `--params` and `--provenance`, the
    results JSON `--metrics` and the measurements JSON `--timings` where the stage writes them,
    then the stage's own required `paths` and `optional` ones (default None), option -> help."""
    p = argparse.ArgumentParser(
        prog=f"python -m stages.{name}", description=(doc or "").splitlines()[0]
    )
    p.add_argument("--params", type=Path, default=Path("params.yaml"))
    if metrics:
        p.add_argument("--metrics", type=Path, required=True, help="results JSON to write")
    if timings:
        p.add_argument("--timings", type=Path, default=None, help="measurements JSON to write")
    p.add_argument("--provenance", type=Path, default=None, help="run record JSON to write")
    for option, help in paths.items():
        p.add_argument(option, type=Path, required=True, help=help)
    for option, help in (optional or {}).items():
        p.add_argument(option, type=Path, default=None, help=help)
    return p


@dataclass(frozen=True)
class StageRun:
    """What a stage's work gets: every validated param, and the record it may add facts to."""

    params: Params
    record: provenance.Run

    @property
    def facts(self) -> dict[str, Any]:
        return self.record.facts


@contextmanager
def running(
    args: argparse.Namespace,
    name: str,
    inputs: Iterable[Path],
    sections: Iterable[str] | None = None,
    *,
    computes: bool = True,
) -> Iterator[StageRun]:
    """Set up logging, load and validate `args.params` whole, check the input files against
    the `dvc.lock` that recorded them (`locked.check_inputs`), and run the block inside the
    stage's provenance record, which hashes the params `sections` it reads (default: its own)
    and the `inputs`. With `computes`, the block runs as the `compute` section says
    (`provenance.record`'s `compute`), which imports torch: not for `prepare`."""
    logs.setup_logging()
    params = load_params(args.params)
    inputs = list(inputs)
    locked.check_inputs(inputs)
    read = [getattr(params, s) for s in (sections or (name,))]
    compute = params.compute if computes else None
    with (
        one_at_a_time(args.provenance, name),
        provenance.record(args.provenance, name, inputs, read, compute) as record,
    ):
        _work_begins(name)
        yield StageRun(params, record)


@contextmanager
def timed(phases: dict[str, float], phase: str) -> Iterator[None]:
    """Add the seconds the block takes to `phases[phase]`: a stage's own seconds split by what
    it spends them on, for its `--timings` file (the stage table of docs/speed.md)."""
    start = time.perf_counter()
    try:
        yield
    finally:
        phases[phase] = round(phases.get(phase, 0.0) + time.perf_counter() - start, 3)


@contextmanager
def one_at_a_time(run_record: Path | None, name: str) -> Iterator[None]:
    """Hold an exclusive lock on `.<name>.stage-lock` beside the stage's run record (which
    DVC does not hash) while the stage runs: a copy left running by a `dvc` that was killed
    keeps it, so a second copy cannot start in the same folders; it stops with a StageError
    instead (`pipelines.retry` takes it as transient). The kernel drops the lock when the
    holder dies, however it dies. Without a run record (a stage run by hand), no lock. The
    other processes of a distributed run (DDP ranks, other nodes) join the run of the process
    that holds it: only global rank 0, or a process that is no rank at all, takes it."""
    if run_record is None or not _first_rank():
        yield
        return
    path = run_record.parent / f".{name}.stage-lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a+") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.seek(0)
            holder = lock.read().strip() or "?"
            raise StageError(
                f"another {name} is already running in these folders (pid {holder}, lock "
                f"{path}); wait for it or stop it"
            ) from None
        lock.seek(0)
        lock.truncate()
        lock.write(f"{os.getpid()}\n")
        lock.flush()
        yield


def _work_begins(name: str) -> None:
    """With `STARTUP_MARK` set, record this moment for the benchmark and exit before any work
    (no output touched, no run record written)."""
    mark = os.environ.get(STARTUP_MARK)
    if not mark:
        return
    now = time.monotonic()  # CLOCK_MONOTONIC: one clock for every process of the machine
    modules = sorted({m.partition(".")[0] for m in sys.modules})
    Path(mark).write_text(json.dumps({"stage": name, "monotonic": now, "modules": modules}))
    raise SystemExit(0)


def _first_rank() -> bool:
    """Whether this process is rank 0 of its run (or not part of a distributed one): the
    launchers (Lightning's DDP, torchrun, SLURM, a second node) set these for the others."""
    ranks = ("RANK", "LOCAL_RANK", "NODE_RANK", "GROUP_RANK", "SLURM_PROCID")
    return all(os.environ.get(k, "0") in ("", "0") for k in ranks)

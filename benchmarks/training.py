"""Training speed side by side: the project's path, the seed recipe and a plain PyTorch loop.

Every run is a fresh process (`python -m benchmarks.training SPEC OUT`), so its peak memory is
its own and no run warms caches for the next. Within a repetition the variants take turns, in
an order rotated every repetition, so that the load of a shared machine weighs on all alike;
the summary takes medians over repetitions.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from mnist_pipeline.atomic import write_json

SEED, PLAIN, PROJECT = "seed recipe", "plain loop", "project"
Kind = Literal["seed", "plain", "project"]


@dataclass(frozen=True)
class Variant:
    name: str
    kind: Kind
    train: dict[str, Any]  # the `train` params section, overrides applied (unused by `seed`)
    compute: dict[str, Any]  # the `compute` section: the child pins it before torch loads


@dataclass(frozen=True)
class Setup:
    data_dir: Path  # prepared data (`prepare` stage output)
    torchvision_root: Path  # raw files in torchvision's layout, for the seed recipe
    workdir: Path
    target_acc: float
    seed_epochs: int
    seed_batches: int | None  # per epoch; None: whole epochs
    timeout_s: float


def run_once(
    variant: Variant,
    setup: Setup,
    rep: int,
    in_process: bool,
    python: str = sys.executable,
    cwd: Path | None = None,
) -> dict[str, Any]:
    """One training run of `variant`, in a fresh process unless `in_process` (--quick, where
    only the plumbing is tested: peak memory is then the whole session's); the process runs
    `python` in `cwd` (another checkout's code: `benchmarks.compare`)."""
    slug = "".join(c if c.isalnum() else "-" for c in variant.name)
    run_dir = setup.workdir / f"{slug}-{rep}"
    run_dir.mkdir(parents=True, exist_ok=True)
    fields = {k: str(v) if isinstance(v, Path) else v for k, v in asdict(setup).items()}
    spec = {"variant": asdict(variant), "setup": {**fields, "workdir": str(run_dir)}}
    if in_process:
        return _run_child(spec)
    write_json(run_dir / "spec.json", spec)
    log = run_dir / "log.txt"
    from mnist_pipeline.compute import environment_for
    from mnist_pipeline.params.schema import ComputeParams

    compute = ComputeParams.model_validate(variant.compute)
    portable_pins = environment_for(compute.model_copy(update={"profile": "portable"}))
    env = {k: v for k, v in os.environ.items() if k not in portable_pins}
    env |= {"PYTHONWARNINGS": "ignore", **environment_for(compute)}
    with log.open("w") as out:
        done = subprocess.run(
            [python, "-m", "benchmarks.training", str((run_dir / "spec.json").resolve())],
            cwd=cwd,
            stdout=out,
            stderr=subprocess.STDOUT,
            timeout=setup.timeout_s,
            env=env,
        )
    if done.returncode != 0:
        tail = "\n".join(log.read_text().splitlines()[-30:])
        raise RuntimeError(f"{variant.name} (repetition {rep + 1}) failed:\n{tail}")
    return json.loads((run_dir / "result.json").read_text())


def measure(
    variants: list[Variant],
    setup: Setup,
    reps: int,
    progress: Callable[[str, int, dict[str, Any]], None] | None = None,
    in_process: bool = False,
) -> dict[str, list[dict[str, Any]]]:
    runs: dict[str, list[dict[str, Any]]] = {v.name: [] for v in variants}
    for rep in range(reps):
        k = rep % len(variants)
        for v in variants[k:] + variants[:k]:
            runs[v.name].append(run_once(v, setup, rep, in_process))
            if progress is not None:
                progress(v.name, rep, runs[v.name][-1])
    return runs


def _median(xs: list[float | None]) -> float | None:
    xs = [x for x in xs if x is not None]
    return round(statistics.median(xs), 4) if xs else None


def summarize(runs: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """Medians over repetitions per variant, and the ratios the issue asks for, computed per
    training image (the seed recipe's epoch is 60,000 images, the project's 55,000)."""
    out: dict[str, Any] = {}
    for name, rs in runs.items():
        epoch = _median([r["steady_epoch_s"] for r in rs])
        per_image = statistics.median(r["steady_epoch_s"] / r["images_per_epoch"] for r in rs)
        reached = [r["time_to_target_s"] for r in rs if r["time_to_target_s"] is not None]
        out[name] = {
            "repetitions": len(rs),
            "steady_epoch_s": epoch,
            "first_epoch_s": _median([r["epoch_s"][0] for r in rs]),
            "images_per_epoch": rs[0]["images_per_epoch"],
            "train_images_per_s": round(1 / per_image, 1),
            "train_s": _median([r["train_s"] for r in rs]),
            "time_to_target_s": _median(reached),
            "target_reached": f"{len(reached)}/{len(rs)}",
            "target_acc": rs[0]["target_acc"],
            "final_test_acc": _median([r["final_test_acc"] for r in rs]),
            "peak_rss_mb": _median([r["peak_rss_mb"] for r in rs]),
            "rss_before_training_mb": _median([r["rss_before_training_mb"] for r in rs]),
            "gpu_peak_mb": _median([r["gpu_peak_mb"] for r in rs]),
            "startup_s": _median([r["startup_s"] for r in rs]),
            "device": rs[0]["device"],
            "precision": rs[0]["precision"],
            "runs": rs,
        }
    for name, s in out.items():
        if name != PROJECT and PROJECT in out:
            # Above 1: the project trains that many times faster per image.
            s["project_speedup"] = round(
                out[PROJECT]["train_images_per_s"] / s["train_images_per_s"], 3
            )
    return out


def ratios(summary: dict[str, Any]) -> dict[str, float]:
    """The issue's two targets: the project at least 5x faster per image than the seed recipe,
    and at most 1.10x the plain loop's time per image."""
    out = {}
    if SEED in summary and PROJECT in summary:
        out["project_speedup_over_seed"] = summary[SEED]["project_speedup"]
    if PLAIN in summary and PROJECT in summary:
        out["project_time_over_plain"] = round(1 / summary[PLAIN]["project_speedup"], 3)
    return out


# --- the child process ----------------------------------------------------------------------


def _run_child(spec: dict[str, Any]) -> dict[str, Any]:
    from benchmarks import memory, plain_loop, project_path, seed_recipe
    from mnist_pipeline.params.schema import ComputeParams, TrainParams

    v, s = spec["variant"], spec["setup"]
    workdir, target = Path(s["workdir"]), float(s["target_acc"])
    startup_s = _process_age()
    # Imports alone (torch, Lightning) hold most of the peak; this is what training adds to.
    rss_before = memory.peak_rss_mb()
    if v["kind"] == "seed":
        result = seed_recipe.run(
            Path(s["torchvision_root"]),
            workdir,
            int(s["seed_epochs"]),
            s["seed_batches"],
            target,
            seed=int(v["train"].get("seed", 0)),
        )
    else:
        params = TrainParams.model_validate(v["train"])
        compute = ComputeParams.model_validate(v["compute"])
        if v["kind"] == "plain":
            result = plain_loop.run(params, compute, Path(s["data_dir"]), target)
        else:
            result = project_path.run(params, compute, Path(s["data_dir"]), workdir, target)
    return {
        **result,
        **memory.peak(),
        "rss_before_training_mb": rss_before,
        "startup_s": round(startup_s, 3),
    }


def _process_age() -> float:
    """Seconds this process has lived: interpreter start and imports, before any training."""
    import psutil

    return time.time() - psutil.Process().create_time()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.training", description=__doc__)
    p.add_argument("spec", type=Path, help="spec.json written by `run_once`")
    args = p.parse_args(argv)
    result = _run_child(json.loads(args.spec.read_text()))
    write_json(args.spec.with_name("result.json"), result)


if __name__ == "__main__":
    main()

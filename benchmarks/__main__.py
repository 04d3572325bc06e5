"""Speed of the project, measured side by side in one run on one machine.

    python -m benchmarks                  # training, inference, no-op orchestration (minutes)
    python -m benchmarks --full-runs      # plus full pipeline runs, DVC against the flow
    python -m benchmarks --quick          # seconds, on synthetic data: proves it works
    python -m benchmarks --skip seed --variant bs512:batch_size=512,optimizer.lr=8.0e-3
    python -m benchmarks --skip training --skip inference --skip orchestration   # sweep only
    python -m benchmarks --prune-recipes  # plus the prune recipe study (benchmarks.prune_recipes)
    python -m benchmarks --compare        # this tree against the merge-base with main, only
    python -m benchmarks --compare HEAD~3 --quick   # tiny params, synthetic digits: minutes
    python -m benchmarks --skip seed --skip plain --skip training --skip inference \
        --skip serving --skip orchestration --skip sweep      # drift only (seconds)
    python -m benchmarks --only startup   # stage start-up, library imports, the busy core

Prints tables and writes every number, with the machine, to a JSON file (--out).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from rich.console import Console

from benchmarks import (
    drift,
    inference,
    machine,
    orchestration,
    report,
    serving,
    startup,
    targets,
    training,
)
from benchmarks import sweep as sweep_bench
from benchmarks.training import PLAIN, PROJECT, SEED, Setup, Variant
from mnist_pipeline.params.schema import load_params
from pipelines import overrides

SKIPPABLE = (
    "seed",
    "plain",
    "training",
    "inference",
    "serving",
    "drift",
    "orchestration",
    "sweep",
    "startup",
)
# --quick: the test fixtures' tiny recipe, on synthetic digits.
QUICK_TRAIN = {"max_epochs": 2, "batch_size": 32, "eval_batch_size": 256, "progress_bar": False}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description=__doc__.splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n".join(__doc__.splitlines()[2:]),
    )
    p.add_argument("--quick", action="store_true", help="synthetic data, 1 repetition, tiny runs")
    p.add_argument("--reps", type=int, default=None, help="repetitions (default 3; quick 1)")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/latest.json"))
    p.add_argument("--markdown", type=Path, default=None, help="also write Markdown tables")
    p.add_argument("--params", type=Path, default=Path("params.yaml"))
    p.add_argument("--data", type=Path, default=Path("data/prepared"), help="prepared data")
    p.add_argument("--raw", type=Path, default=Path("data/raw"), help="the four MNIST .gz files")
    p.add_argument("--models", type=Path, default=Path("models"), help="dvc repro's models")
    p.add_argument("--root", type=Path, default=Path("."), help="the DVC repository")
    p.add_argument("--target-acc", type=float, default=0.99, help="test accuracy to reach")
    p.add_argument("--seed-epochs", type=int, default=2, help="epochs of the seed recipe")
    p.add_argument(
        "--seed-batches", type=int, default=None, help="batches per seed-recipe epoch (all)"
    )
    p.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="NAME:KEY=VALUE,...",
        help="another project-path run with `train` params overridden (repeatable)",
    )
    p.add_argument("--skip", action="append", default=[], choices=SKIPPABLE)
    p.add_argument(
        "--only", action="append", default=[], choices=SKIPPABLE, help="skip every other section"
    )
    p.add_argument(
        "--full-runs", action="store_true", help="also time full pipeline runs (many minutes)"
    )
    p.add_argument(
        "--profiles",
        action="store_true",
        help="also time a whole dvc repro under each compute profile (many minutes)",
    )
    p.add_argument(
        "--prune-recipes",
        action="store_true",
        help="also run the prune recipe study over 3 seeds (hours; benchmarks.prune_recipes)",
    )
    p.add_argument(
        "--compare",
        nargs="?",
        const="",
        default=None,
        metavar="REF",
        help="only the side-by-side run against REF (default: the merge-base with main)",
    )
    p.add_argument(
        "--compare-venv",
        choices=("own", "this"),
        default="own",
        help="--compare: each side `uv sync`s its own venv, or both use this interpreter",
    )
    p.add_argument("--workdir", type=Path, default=None, help="keep run folders here")
    p.add_argument("--timeout-s", type=float, default=1800, help="per training run")
    p.add_argument(
        "--requests", type=int, default=2000, help="serving load test: requests per run"
    )
    return p.parse_args(argv)


def quick_data(workdir: Path) -> tuple[Path, Path]:
    """Synthetic raw files and their prepared splits, through the project's own writers."""
    from mnist_pipeline.data import mnist_files
    from mnist_pipeline.data.dataset import make_splits, save_splits
    from testing.synthetic import write_mirror

    raw = workdir / "raw"
    write_mirror(raw)
    splits, norm = make_splits(
        mnist_files.load_raw({name: raw / name for name, _ in mnist_files.FILES}),
        val_size=100,
        seed=0,
    )
    save_splits(workdir / "prepared", splits, norm)
    return raw, workdir / "prepared"


def make_variants(args: argparse.Namespace, quick: list[str]) -> list[Variant]:
    """The project's defaults (params.yaml, with `quick` overrides), the baselines, and each
    `--variant NAME:KEY=VALUE,...`: `train` keys in the syntax of `dvc exp run -S`, applied and
    validated by the flow's own code, so a bad override fails before any run."""
    params = overrides.overridden(args.params, quick)[0]
    train, compute = (params.train.model_dump(mode="json"), params.compute.model_dump(mode="json"))
    variants = [Variant(PROJECT, "project", train, compute)]
    if "plain" not in args.skip:
        variants.insert(0, Variant(PLAIN, "plain", train, compute))
    if "seed" not in args.skip:
        variants.insert(0, Variant(SEED, "seed", train, compute))
    for spec in args.variant:
        name, _, sets = spec.partition(":")
        sections = ("train.", "compute.")
        keys = [s if s.startswith(sections) else f"train.{s}" for s in sets.split(",") if s]
        other, _ = overrides.overridden(args.params, [*quick, *keys])
        variants.append(
            Variant(
                name,
                "project",
                other.train.model_dump(mode="json"),
                other.compute.model_dump(mode="json"),
            )
        )
    return variants


def run_training(
    args: argparse.Namespace, raw: Path, data: Path, workdir: Path, reps: int, console: Console
) -> dict[str, Any]:
    from benchmarks.seed_recipe import torchvision_root

    quick = [f"train.{k}={json.dumps(v)}" for k, v in QUICK_TRAIN.items()] if args.quick else []
    variants = make_variants(args, quick)
    setup = Setup(
        data_dir=data,
        torchvision_root=torchvision_root(raw, workdir / "torchvision"),
        workdir=workdir / "runs",
        target_acc=args.target_acc,
        seed_epochs=args.seed_epochs,
        seed_batches=5 if args.quick and args.seed_batches is None else args.seed_batches,
        timeout_s=args.timeout_s,
    )

    def progress(name: str, rep: int, r: dict[str, Any]) -> None:
        console.log(
            f"repetition {rep + 1}/{reps} {name}: epochs {r['epoch_s']} s, "
            f"test acc {r['test_acc']}, peak RSS {r['peak_rss_mb']} MiB"
        )

    runs = training.measure(variants, setup, reps, progress, in_process=args.quick)
    return training.summarize(runs)


def committed_prune_metrics(root: Path) -> dict[str, Any] | None:
    """The `prune` stage's results as `dvc repro` left them (its `--metrics` in dvc.yaml)."""
    from pipelines import dvc_repo

    if not (root / "dvc.yaml").is_file():
        return None
    path = dvc_repo.stage_arg(root, "prune", "--metrics")
    return json.loads(path.read_text()) if path is not None and path.is_file() else None


def run_serving(args: argparse.Namespace, data: Path) -> dict[str, Any]:
    """The load test on the first test digit, as raw pixels in a PNG."""
    from mnist_pipeline.data.dataset import load_normalization, load_split

    if args.quick:
        return {"skipped": "not in --quick mode (it needs dvc repro's models)"}
    norm = load_normalization(data)
    digit = norm.invert(load_split(data, "test").images[:1])[0, 0].numpy()  # (28, 28) uint8
    return serving.measure(args.models, digit, args.requests)


def run_orchestration(
    args: argparse.Namespace, raw: Path, workdir: Path, reps: int
) -> dict[str, Any]:
    if args.quick:
        return {"skipped": "not in --quick mode"}
    root = args.root.resolve()
    out = {"noop": orchestration.noop(root, reps)}
    if args.full_runs:
        out["full"] = orchestration.full_runs(root, workdir, max(1, reps // 3), raw)
    if args.profiles:
        out["profiles"] = orchestration.profiles(root, workdir, max(1, reps // 3), raw)
    return out


def run_prune_recipes(args: argparse.Namespace, data: Path, workdir: Path) -> dict[str, Any]:
    from benchmarks import prune_recipes

    if args.quick:
        return {"skipped": "not in --quick mode (it needs dvc repro's dense model)"}
    setup = prune_recipes.load_setup(args.params, args.models / "lenet5.pt", data)
    out = workdir / "prune-recipes.json"
    return prune_recipes.study(prune_recipes.RECIPES, [0, 1, 2], setup, data, out)


def run_compare(
    args: argparse.Namespace, raw: Path, workdir: Path, reps: int, console: Console
) -> dict[str, Any]:
    from benchmarks import compare

    return compare.measure(
        args.root.resolve(),
        args.compare or None,
        workdir.resolve() / "compare",
        reps,
        own_venv=args.compare_venv == "own",
        quick=args.quick,
        mirror=raw,
        target=args.target_acc,
        timeout_s=args.timeout_s,
        log=console.log,
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.only:
        args.skip = [s for s in SKIPPABLE if s not in args.only and s not in ("seed", "plain")]
    console = Console(stderr=True)
    reps = args.reps or (1 if args.quick else 3)
    started = time.perf_counter()
    results: dict[str, Any] = {
        "command": shlex.join(["python", "-m", "benchmarks", *(argv or sys.argv[1:])]),
        "quick": args.quick,
        "repetitions": reps,
        "machine": machine.describe(),
    }
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="benchmarks-"))
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        if args.quick:
            raw, data = quick_data(workdir)
        elif args.compare is not None:
            raw, data = Path(os.environ.get("MNIST_MIRROR") or args.raw), args.data
        else:
            raw, data = args.raw, args.data
            for need in (raw, data):
                if not need.is_dir():
                    console.print(f"error: {need} not found: run `dvc repro prepare` first")
                    return 2
        if args.compare is not None:
            results["compare"] = run_compare(args, raw, workdir, reps, console)
            args.skip = list(SKIPPABLE)
        if "training" not in args.skip:
            results["training"] = run_training(args, raw, data, workdir, reps, console)
            results["ratios"] = training.ratios(results["training"])
        if "inference" not in args.skip:
            try:
                export_params = load_params(args.params).export
            except Exception as err:  # an older params.yaml without `export`
                results["inference"] = {"skipped": f"not available: {err}"}
            else:
                results["inference"] = inference.measure(
                    args.models, data, export_params, args.quick
                )
        if "serving" not in args.skip:
            results["serving"] = run_serving(args, data)
        if "drift" not in args.skip:
            profile = args.models / "drift_profile.json"
            results["drift"] = (
                {"skipped": "not in --quick mode (it needs dvc repro's models and profile)"}
                if args.quick
                else drift.measure(data, args.models, profile)
            )
        if "orchestration" not in args.skip:
            results["orchestration"] = run_orchestration(args, raw, workdir, reps)
        if "startup" not in args.skip:
            results["startup"] = startup.measure(args.root.resolve(), reps, args.quick)
        if "sweep" not in args.skip:
            results["sweep"] = (
                {"skipped": "not in --quick mode"}
                if args.quick
                else sweep_bench.measure(
                    args.root.resolve(), workdir, raw, timeout_s=args.timeout_s
                )
            )
        if args.prune_recipes:
            results["prune_recipes"] = run_prune_recipes(args, data, workdir)
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    results["targets"] = targets.judge(results, committed_prune_metrics(args.root))
    results["duration_s"] = round(time.perf_counter() - started, 1)
    report.write(results, args.out)
    if args.markdown:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text(report.markdown(results))
    report.show(results)
    console.print(f"results written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

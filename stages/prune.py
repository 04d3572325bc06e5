"""Prune the trained LeNet-5 and fine-tune it back: a model really smaller, or one with zeros.

Stage `prune`: models/lenet5.pt, data/prepared -> models/lenet5_pruned.pt, metrics/prune.json
(results), measurements/prune.json (fine-tuning time), provenance/prune.json
Params: `prune` section of params.yaml; the fine-tuning Trainer (batch size, accelerator,
precision) is set up from the `train` section, by the same code that trains the dense model.

`structured` (the default) removes whole conv channels and fc neurons, so the result is a plain
`LeNet5(Widths(...))` with fewer parameters and MACs, which loads without torch-pruning and runs
faster. `unstructured` zeroes the weights of smallest magnitude: the tensors keep their shapes,
so only a compressed file shrinks and nothing runs faster (`mnist_pipeline.pruning.structured`).
Either method works in `rounds` steps, each pruning an equal share of the target and then
fine-tuning, optionally distilling from the dense model (`mnist_pipeline.pruning.distillation`).

Resuming: after each round, the state so far is saved to `--ckpt-dir` with a fingerprint; a
retried or killed run with the same fingerprint starts at the round after the last one saved
and ends with the same model as an uninterrupted run (`mnist_pipeline.pruning.rounds`).
"""

from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

from mnist_pipeline import errors, stage
from mnist_pipeline.atomic import write_json
from mnist_pipeline.data.dataset import load_split
from mnist_pipeline.model import accuracy, load_model, require_lenet5, save_model, widths_of
from mnist_pipeline.params.schema import ComputeParams, PruneParams, TrainParams

log = logging.getLogger(__name__)


def summarize(
    dense_stats: dict[str, Any], pruned_stats: dict[str, Any], report: dict[str, Any]
) -> dict[str, Any]:
    """The metrics file: both models, their ratios, and the accuracy lost (numbers only)."""
    keys = ("params", "nonzero_params", "macs", "file_bytes", "gzip_bytes")
    drop = (dense_stats["test_acc"] - pruned_stats["test_acc"]) * 100
    return {
        "dense": dense_stats,
        "pruned": pruned_stats,
        "ratio": {k: round(pruned_stats[k] / dense_stats[k], 5) for k in keys},
        "acc_drop_points": round(drop, 3),
        **report,
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    paths = {
        "--model": "dense model file to prune",
        "--data": "prepared data folder",
        "--out": "pruned model file to write",
    }
    optional = {"--ckpt-dir": "per-round checkpoints, to resume"}
    p = stage.parser("prune", __doc__, paths, optional, metrics=True, timings=True)
    return p.parse_args(argv)


def prune_file(
    params: PruneParams,
    train_params: TrainParams,
    compute: ComputeParams,
    model_path: Path,
    data: Path,
    out: Path,
    metrics_path: Path,
    timings_path: Path | None,
    ckpt_dir: Path | None = None,
) -> int | None:
    """Prune the dense model file, fine-tune, and write the pruned model and its metrics.

    Returns the round it resumed after (None: it started at round 1)."""
    # The fine-tuning's Lightning and torch-pruning, imported when the work needs them.
    from mnist_pipeline.pruning.rounds import fingerprint, prune_and_finetune
    from mnist_pipeline.pruning.structured import file_sizes, model_stats

    loaded, meta = load_model(model_path)
    dense = require_lenet5(loaded, model_path, "prune")
    test = load_split(data, "test")

    dense_stats = {
        **model_stats(dense),
        **file_sizes(model_path),
        "test_acc": round(accuracy(dense, test.images, test.labels), 5),
    }
    fp = (
        fingerprint(params, train_params, compute, model_path, data)
        if ckpt_dir is not None
        else ""
    )
    pruned, report = prune_and_finetune(
        dense, params, train_params, compute, data, test, ckpt_dir, fp
    )
    timings = {"finetune_time_s": report.pop("finetune_time_s")}
    resumed_after = report.pop("resumed_after_round")
    prune_meta = {"prune_method": params.method, "widths_dense": asdict(widths_of(dense))}
    save_model(pruned, out, meta={**meta, **prune_meta})
    pruned_stats = {
        **model_stats(pruned),
        **file_sizes(out),
        "test_acc": round(accuracy(pruned, test.images, test.labels), 5),
    }
    metrics = summarize(dense_stats, pruned_stats, report)
    write_json(metrics_path, metrics)
    if timings_path is not None:
        write_json(timings_path, timings)
    log.info(
        "%s: %s; params x%.3f, MACs x%.3f, gzip x%.3f; test acc %.4f -> %.4f (%.2f points)",
        params.method,
        widths_of(pruned),
        metrics["ratio"]["params"],
        metrics["ratio"]["macs"],
        metrics["ratio"]["gzip_bytes"],
        dense_stats["test_acc"],
        pruned_stats["test_acc"],
        metrics["acc_drop_points"],
    )
    return resumed_after


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    # The fine-tuning Trainer is `train`'s: its section is read too.
    with stage.running(args, "prune", [args.model, args.data], ("prune", "train")) as run:
        from mnist_pipeline.training.trainer import resolve_precision

        every = run.params
        run.facts["precision"] = resolve_precision(
            every.train.precision, every.train.accelerator, every.compute.profile
        )
        run.facts["resumed_after_round"] = prune_file(
            every.prune,
            every.train,
            every.compute,
            args.model,
            args.data,
            args.out,
            args.metrics,
            args.timings,
            args.ckpt_dir,
        )


if __name__ == "__main__":
    sys.exit(errors.run(main))

"""Download MNIST, verify it, carve a seeded validation split and normalize every split once.

Stage `prepare`: (mirrors) -> data/raw (the four verified .gz files, reused when present),
data/prepared (see `mnist_pipeline.data.dataset` for the layout), provenance/prepare.json.
Params: `prepare` section of params.yaml; the `MNIST_MIRROR` environment variable overrides
`prepare.mirror`.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from mnist_pipeline import errors, stage
from mnist_pipeline.atomic import atomic_dir, remove_stale
from mnist_pipeline.data import mnist_files
from mnist_pipeline.data.dataset import make_splits, save_splits
from mnist_pipeline.params.schema import PrepareParams

log = logging.getLogger(__name__)


def prepare(params: PrepareParams, raw_dir: Path, out_dir: Path) -> dict:
    """Fetch and verify the raw files, then write the prepared splits atomically."""
    mirrors = mnist_files.resolve_mirrors(params.mirror)
    files = mnist_files.fetch_all(mirrors, raw_dir, params.retries, params.timeout_s)
    raw = mnist_files.load_raw(files)
    splits, norm = make_splits(raw, params.val_size, params.split_seed)
    meta = {
        "split_seed": params.split_seed,
        "sources": dict(mnist_files.expected_files()),
    }
    # A prepare killed while it wrote left its temporary folder (a hundred MB); the stage's
    # lock says no other prepare is writing here now.
    for stale in remove_stale(out_dir):
        log.info("removed %s, left by an interrupted run", stale)
    with atomic_dir(out_dir) as tmp:
        save_splits(tmp, splits, norm, meta)
    log.info(
        "prepared %s; normalization mean %.4f std %.4f",
        ", ".join(f"{k} {len(labels)}" for k, (_, labels) in splits.items()),
        norm.mean,
        norm.std,
    )
    return {"mean": norm.mean, "std": norm.std, **{k: len(y) for k, (_, y) in splits.items()}}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    paths = {"--raw-dir": "where the .gz files are kept", "--out": "prepared data folder to write"}
    return stage.parser("prepare", __doc__, paths).parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    # No `compute`: that imports torch, and nothing here computes with it.
    with stage.running(args, "prepare", [args.raw_dir], computes=False) as run:
        params = run.params.prepare
        prepare(params, args.raw_dir, args.out)
        run.facts["mirrors"] = [m.base for m in mnist_files.resolve_mirrors(params.mirror)]


if __name__ == "__main__":
    sys.exit(errors.run(main))

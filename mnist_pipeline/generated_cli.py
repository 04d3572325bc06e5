"""The command line of a generator of checked files: `--write` regenerates, `--check` exits 1
on drift.

`mnist_pipeline.params.docs` (params.yaml's comments, the params table) and `benchmarks.docs`
(the measured figures) share it: exit 0 when written or in date, 1 when a file drifted (each
problem logged), 2 when the inputs cannot be read.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger(__name__)


def parser(prog: str, doc: str | None, write: str, check: str) -> argparse.ArgumentParser:
    """`prog`'s parser, with the required choice of `--write` and `--check` (their help)."""
    p = argparse.ArgumentParser(prog=prog, description=(doc or "").splitlines()[0])
    mode = p.add_mutually_exclusive_group(required=True)
    mode.add_argument("--write", action="store_true", help=write)
    mode.add_argument("--check", action="store_true", help=check)
    return p


def run(
    args: argparse.Namespace,
    write: Callable[[], list[Path]],
    drift: Callable[[], list[str]],
    errors: tuple[type[Exception], ...],
    regenerate: str | None = None,
) -> int:
    """Call `write` (with `--write`) or `drift` (with `--check`) and log what they return;
    the exit status. `errors` are those of unreadable inputs; `regenerate`, the command that
    fixes a drift, is logged after the problems."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        if args.write:
            for path in write():
                log.info("wrote %s", path)
            return 0
        problems = drift()
    except errors as err:
        log.error("error: %s", err)
        return 2
    for problem in problems:
        log.error("%s", problem)
    if problems and regenerate:
        log.error("regenerate: %s", regenerate)
    return 1 if problems else 0

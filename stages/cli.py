"""What every stage's `main` shares: logging set-up and turning user errors into exit codes."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable

from stages.params import ParamsError

log = logging.getLogger("stages")


class StageError(RuntimeError):
    """A failure the user can fix (bad input, unreachable mirror); printed without a traceback."""


def setup_logging() -> None:
    level = os.environ.get("LOG_LEVEL", "INFO").upper()
    logging.basicConfig(
        level=level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        force=True,
    )


def run(main: Callable[[list[str] | None], None], argv: list[str] | None = None) -> int:
    """Run a stage's `main`; a params or stage error exits 2 with its message, not a traceback."""
    try:
        main(argv)
    except ParamsError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except StageError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0

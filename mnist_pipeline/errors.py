"""The errors a user can fix, and the exit codes they map to, for stages and flows alike.

A usage error (bad params, an unknown stage or model name) exits 2: nothing ran, and a retry
would fail the same way. A stage error (bad input, an unreachable mirror, a failed check)
exits 1. Both print their message without a traceback. `pipelines.retry` reads these codes
to decide what a retry can fix.
"""

from __future__ import annotations

import errno
import sys
from collections.abc import Callable

PARAMS_ERROR_EXIT = 2
STAGE_ERROR_EXIT = 1


class UsageError(ValueError):
    """Bad arguments: an unknown stage, model or revision; invalid params."""


class ParamsError(UsageError):
    """`params.yaml` (or an override of it) is missing, unreadable or invalid; the message
    names the key."""


class StageError(RuntimeError):
    """A failure the user can fix (bad input, unreachable mirror); printed without a traceback."""


def exit_code(err: BaseException) -> int | None:
    """The exit code for an error a user can fix; None for a bug (let it raise)."""
    if isinstance(err, UsageError):
        return PARAMS_ERROR_EXIT
    if isinstance(err, StageError):
        return STAGE_ERROR_EXIT
    return None


def run(main: Callable[[list[str] | None], object], argv: list[str] | None = None) -> int:
    """Run a command's `main`: 0 on success; a usage error exits 2 and a stage error 1, each
    with its message on stderr instead of a traceback. Anything else is a bug, and raises."""
    try:
        main(argv)
    except (UsageError, StageError) as err:
        print(f"error: {err}", file=sys.stderr)
        return exit_code(err) or STAGE_ERROR_EXIT
    except OSError as err:
        if err.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        # A full disk is not a bug: say so, and which file, where the OS says it.
        where = f" writing {err.filename}" if err.filename else ""
        print(f"error: no space left on the device{where}: {err.strerror}", file=sys.stderr)
        return STAGE_ERROR_EXIT
    return 0

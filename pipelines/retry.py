"""Which failures are worth a retry: transient ones, never configuration or validation errors.

A stage killed by a signal (the OOM killer's SIGKILL, exit 137 through a shell), a stage that
ran past its timeout, DVC's repo lock or a stage's paths ("is busy") held by another process,
and network errors are transient: the same command can succeed a moment later, and `train`
resumes from its last checkpoint. A params validation error (exit 2, see
`mnist_pipeline.errors`) or any other error fails at once: running it again would fail the
same way.
"""

from __future__ import annotations

import errno
import re
import signal
from dataclasses import dataclass
from typing import Any

from mnist_pipeline.errors import PARAMS_ERROR_EXIT, StageError

# `dvc repro` reports a stage's exit status as "... failed to run: <cmd>, exited with <n>".
_STAGE_EXIT = re.compile(r"exited with (-?\d+)")
# DVC's repo lock, and the per-path lock (rwlock) a running stage holds on its deps and outs
# while the repo lock is released; then the stage skeleton's own lock (`mnist_pipeline.stage`).
LOCK_CONTENTION = re.compile(
    r"Unable to acquire lock|is busy, it is being blocked by|is already running in these folders"
)
NETWORK = re.compile(
    r"urlopen error|timed out|Connection (?:refused|reset|aborted)|Remote end closed"
    r"|Temporary failure in name resolution|Name or service not known|Network is unreachable"
    r"|No route to host|IncompleteRead|HTTP Error 5\d\d|Service Unavailable|SSLError"
    r"|ConnectTimeout|ReadTimeout|ConnectionError",
)
OUT_OF_MEMORY = re.compile(r"out of memory|MemoryError|Cannot allocate memory", re.IGNORECASE)
# Only the end of the output decides: earlier lines may show problems that were overcome.
_LAST_LINES = 40


@dataclass(frozen=True)
class Verdict:
    transient: bool
    reason: str


def classify(returncode: int | None, output: str) -> Verdict:
    """Judge a failed `dvc` command from its exit status (None: killed on timeout) and output."""
    if returncode is None:
        return Verdict(True, "timed out and was stopped")
    if returncode < 0:  # dvc itself was killed
        return Verdict(True, f"dvc was killed by {_signal_name(-returncode)}")
    tail = "\n".join(output.splitlines()[-_LAST_LINES:])
    exits = _STAGE_EXIT.findall(tail)
    stage_exit = int(exits[-1]) if exits else None
    if stage_exit == PARAMS_ERROR_EXIT:
        return Verdict(False, "the stage rejected its params (exit code 2)")
    if stage_exit is not None and stage_exit < 0:
        return Verdict(True, f"the stage was killed by {_signal_name(-stage_exit)}")
    if stage_exit is not None and stage_exit > 128 and stage_exit - 128 in _KILL_SIGNALS:
        return Verdict(True, f"the stage was killed by {_signal_name(stage_exit - 128)}")
    if LOCK_CONTENTION.search(tail):
        return Verdict(True, "another DVC process holds the repo lock or the stage's paths")
    if NETWORK.search(tail):
        return Verdict(True, f"network error: {NETWORK.search(tail).group(0)}")  # type: ignore[union-attr]
    if OUT_OF_MEMORY.search(tail):
        return Verdict(True, "ran out of memory")
    if stage_exit is not None:
        return Verdict(False, f"the stage failed (exit code {stage_exit})")
    return Verdict(False, f"dvc failed (exit code {returncode})")


_KILL_SIGNALS = {signal.SIGKILL, signal.SIGTERM, signal.SIGINT, signal.SIGHUP}


def _signal_name(num: int) -> str:
    try:
        return signal.Signals(num).name
    except ValueError:
        return f"signal {num}"


class StepFailed(StageError):
    """A `dvc` command failed; `transient` says whether retrying it can help."""

    def __init__(self, step: str, returncode: int | None, output: str) -> None:
        self.step = step
        self.returncode = returncode
        self.verdict = classify(returncode, output)
        self.transient = self.verdict.transient
        last = "\n".join(output.splitlines()[-15:])
        kind = "transient, will be retried" if self.transient else "not retried"
        super().__init__(f"{step}: {self.verdict.reason} ({kind})\n{last}")


_TRANSIENT_ERRNOS = {
    errno.ECONNREFUSED,
    errno.ECONNRESET,
    errno.ECONNABORTED,
    errno.ETIMEDOUT,
    errno.EHOSTUNREACH,
    errno.ENETUNREACH,
    errno.ENOMEM,
}


def is_transient(exc: BaseException | None) -> bool:
    """True for failures a retry can fix; False for everything else, config errors included."""
    if exc is None:
        return False
    if isinstance(exc, StepFailed):
        return exc.transient
    if type(exc).__name__ == "LockError":  # dvc.lock.LockError, from an in-process DVC call
        return True
    if isinstance(exc, TimeoutError | ConnectionError | MemoryError):
        return True
    return isinstance(exc, OSError) and exc.errno in _TRANSIENT_ERRNOS


def exception_of(state: Any) -> BaseException | None:
    """The exception a failed Prefect state holds, without raising it."""
    data = getattr(state, "data", None)
    if isinstance(data, BaseException):
        return data
    try:
        result = state.result(raise_on_failure=False)
    except Exception as err:  # the result could not be read back: judge that error
        return err
    return result if isinstance(result, BaseException) else None


def retry_condition(task: Any, task_run: Any, state: Any) -> bool:
    """Prefect's `retry_condition_fn`: retry transient failures only, and say why in the log."""
    from prefect.logging import get_logger

    exc = exception_of(state)
    retry = is_transient(exc)
    attempt = getattr(task_run, "run_count", 0)
    get_logger("pipelines.retry").warning(
        "%s attempt %d failed: %s; %s",
        getattr(task_run, "name", "task"),
        attempt,
        getattr(getattr(exc, "verdict", None), "reason", None) or repr(exc),
        "transient, retrying if attempts are left" if retry else "not transient, no retry",
    )
    return retry

"""The retry decision: transient failures are retried, configuration errors are not."""

from __future__ import annotations

import errno
import subprocess
import sys
import time
from pathlib import Path

import pytest
from prefect.states import Completed, Failed

from mnist_pipeline.params.schema import ParamsError
from pipelines import dvc_repo
from pipelines.retry import StepFailed, classify, is_transient, retry_condition
from testing import scratch_repo

CMD = "python -m stages.train --data data/prepared"


def dvc_failure(stage_exit: int, extra: str = "") -> str:
    """What `dvc repro` prints when a stage's command fails."""
    return (
        f"{extra}ERROR: failed to reproduce 'train': failed to run: {CMD}, "
        f"exited with {stage_exit}"
    )


@pytest.mark.parametrize(
    ("returncode", "output", "transient"),
    [
        # The OOM killer (or MNIST_FAIL_AFTER_EPOCH) sends SIGKILL: DVC reports -9.
        (255, dvc_failure(-9), True),
        (255, dvc_failure(-15), True),
        (255, dvc_failure(137), True),  # SIGKILL seen through a shell
        (None, "", True),  # stopped on timeout
        (-9, "", True),  # dvc itself killed
        (255, "ERROR: Unable to acquire lock. Most likely another DVC process is running", True),
        (255, "ERROR: 'data/prepared' is busy, it is being blocked by:\n  (PID 42)", True),
        (255, dvc_failure(1, "error: could not fetch x.gz: <urlopen error timed out>\n"), True),
        (255, dvc_failure(1, "torch.OutOfMemoryError: CUDA out of memory.\n"), True),
        (1, "ERROR: failed to push data to the cloud - Connection reset by peer", True),
        # Params validation error: exit code 2, even if the output mentions the network.
        (255, dvc_failure(2, "error: params.yaml is invalid:\n  train.max_epochs: ...\n"), False),
        (255, dvc_failure(2, "retrying after: Connection refused\n"), False),
        (255, dvc_failure(1, "error: checksum mismatch for x.gz\n"), False),  # StageError
        (255, dvc_failure(3), False),
        (255, "ERROR: 'dvc.yaml' does not exist", False),  # DVC configuration
        (255, "ERROR: unexpected error - bad stage name", False),
    ],
)
def test_classify(returncode: int | None, output: str, transient: bool) -> None:
    assert classify(returncode, output).transient is transient


def test_only_the_end_of_the_output_decides() -> None:
    early_hiccup = "WARNING: Connection reset by peer, retrying\n" + "progress\n" * 100
    assert not classify(255, dvc_failure(1, early_hiccup)).transient


@pytest.mark.parametrize(
    ("exc", "transient"),
    [
        (StepFailed("stage train", 255, dvc_failure(-9)), True),
        (StepFailed("stage train", 255, dvc_failure(2)), False),
        (type("LockError", (Exception,), {})("Unable to acquire lock"), True),
        (ConnectionResetError(errno.ECONNRESET, "reset"), True),
        (TimeoutError("slow"), True),
        (OSError(errno.ENETUNREACH, "Network is unreachable"), True),
        (FileNotFoundError(errno.ENOENT, "dvc.yaml"), False),
        (ParamsError("params.yaml is invalid"), False),
        (ValueError("no such stage: trian"), False),
        (None, False),
    ],
)
def test_is_transient(exc: BaseException | None, transient: bool) -> None:
    assert is_transient(exc) is transient


class FakeTaskRun:
    name = "train"
    run_count = 1


def test_retry_condition_reads_the_exception_from_the_failed_state() -> None:
    killed = Failed(data=StepFailed("stage train", 255, dvc_failure(-9)))
    invalid = Failed(data=StepFailed("stage train", 255, dvc_failure(2)))
    assert retry_condition(None, FakeTaskRun(), killed) is True
    assert retry_condition(None, FakeTaskRun(), invalid) is False
    assert retry_condition(None, FakeTaskRun(), Failed(data=ParamsError("bad"))) is False
    assert retry_condition(None, FakeTaskRun(), Completed()) is False


def test_failure_message_says_why_and_whether_it_is_retried() -> None:
    msg = str(StepFailed("stage train", 255, dvc_failure(-9)))
    assert "killed by SIGKILL" in msg and "will be retried" in msg and "exited with -9" in msg
    msg = str(StepFailed("stage train", 255, dvc_failure(2)))
    assert "params" in msg and "not retried" in msg


SLOW_STAGE = """\
stages:
  slow:
    cmd: python -c "import pathlib, time; pathlib.Path('started').touch(); time.sleep(15);
      pathlib.Path('out.txt').write_text('x')"
    outs:
      - out.txt
"""


@pytest.mark.slow
def test_a_concurrent_dvc_repro_is_a_transient_failure(tmp_path: Path) -> None:
    """While one `dvc repro` runs a stage, DVC answers a second with "'out.txt' is busy, it
    is being blocked by (PID ...)": a retry a moment later can succeed."""
    (tmp_path / "dvc.yaml").write_text(SLOW_STAGE)
    scratch_repo.dvc(tmp_path, "init", "--no-scm", "-q")
    first = subprocess.Popen(
        [sys.executable, "-m", "dvc", "repro"],
        cwd=tmp_path,
        env=scratch_repo.env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while not (tmp_path / "started").exists():
            assert first.poll() is None and time.monotonic() < deadline, "the stage never began"
            time.sleep(0.2)
        done = dvc_repo.run(tmp_path, ["repro", "--single-item", "slow", "--force"], 60)
    finally:
        first.wait(timeout=120)
    assert not done.ok and "is busy, it is being blocked by" in done.tail, done.tail
    assert classify(done.returncode, done.tail).transient
    assert first.returncode == 0

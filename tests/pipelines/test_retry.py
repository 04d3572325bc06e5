"""The retry decision: transient failures are retried, configuration errors are not."""

from __future__ import annotations

import errno

import pytest
from prefect.states import Completed, Failed

from mnist_pipeline.params.schema import ParamsError
from pipelines.retry import StepFailed, classify, is_transient, retry_condition

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

"""Errors a user can fix map to exit codes with a message; bugs still raise."""

from __future__ import annotations

import pytest

from mnist_pipeline import errors


def _raising(err: BaseException):
    def main(argv: list[str] | None) -> None:
        raise err

    return main


def test_exit_codes_and_messages(capsys: pytest.CaptureFixture[str]) -> None:
    assert errors.run(lambda argv: None) == 0
    assert errors.run(_raising(errors.ParamsError("train.lr: bad"))) == 2
    assert capsys.readouterr().err == "error: train.lr: bad\n"
    assert errors.run(_raising(errors.UsageError("no such stage: x"))) == 2
    assert errors.run(_raising(errors.StageError("mirror unreachable"))) == 1
    assert "mirror unreachable" in capsys.readouterr().err
    with pytest.raises(KeyError):
        errors.run(_raising(KeyError("a bug")))

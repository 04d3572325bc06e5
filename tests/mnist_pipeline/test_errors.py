"""Errors a user can fix map to exit codes with a message; bugs still raise."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest

from mnist_pipeline import atomic, errors


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


def test_a_full_disk_names_the_file_instead_of_a_traceback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def full(self: Path, data: bytes) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")  # a write names no file

    monkeypatch.setattr(Path, "write_bytes", full)
    target = tmp_path / "metrics" / "train.json"
    assert errors.run(lambda argv: atomic.write_json(target, {"acc": 1.0})) == 1
    assert capsys.readouterr().err == (
        f"error: no space left on the device writing {target}: No space left on device\n"
    )
    assert not list(target.parent.iterdir()), "no temporary file left behind"
    # An OSError that names its file, from anywhere else, says it too.
    enospc = OSError(errno.ENOSPC, "No space left on device", "/data/x.tmp")
    assert errors.run(_raising(enospc)) == 1
    assert "no space left on the device writing /data/x.tmp" in capsys.readouterr().err

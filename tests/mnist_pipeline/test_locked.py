"""A stage checks the input files an upstream stage wrote against the `dvc.lock` that recorded
them; a file no entry records (a stage run by hand, outside DVC) is used as it is."""

from __future__ import annotations

import argparse
import hashlib
from pathlib import Path

import pytest
import yaml

from mnist_pipeline import errors, locked, stage
from tests.conftest import tiny_params_dict


def _lock(path: str, data: bytes) -> str:
    md5 = hashlib.md5(data).hexdigest()
    return yaml.safe_dump(
        {
            "schema": "2.0",
            "stages": {
                "train": {"outs": [{"path": path, "md5": md5}]},
                # A dep's md5 is what prune last read, not what train wrote since.
                "prune": {"deps": [{"path": path, "md5": "0" * 32}]},
            },
        }
    )


def test_recorded_md5_reads_outputs_and_dvc_files_only() -> None:
    lock = _lock("models/lenet5.pt", b"good")
    assert locked.recorded_md5("models/lenet5.pt", lock) == hashlib.md5(b"good").hexdigest()
    assert locked.recorded_md5("models/other.pt", lock) is None
    assert locked.recorded_md5("m.onnx", None, "outs:\n- md5: abc\n  path: m.onnx\n") == "abc"


def test_a_stage_refuses_an_input_model_that_is_not_the_one_dvc_lock_records(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(tiny_params_dict()))
    model = Path("models/lenet5.pt")
    model.parent.mkdir()
    model.write_bytes(b"good")
    args = argparse.Namespace(params=Path("params.yaml"), provenance=None)

    def export(_: list[str] | None) -> None:
        with stage.running(args, "export", [model, tmp_path / "data"], computes=False):
            pass

    assert errors.run(export) == 0  # no dvc.lock: run by hand, nothing to check against
    Path("dvc.lock").write_text(_lock("models/lenet5.pt", b"good"))
    assert errors.run(export) == 0
    model.write_bytes(b"flipped")  # a corrupt cache object that `dvc checkout` restored
    assert errors.run(export) == 1
    err = capsys.readouterr().err
    assert f"models/lenet5.pt has md5 {hashlib.md5(b'flipped').hexdigest()}" in err
    assert f"dvc.lock records {hashlib.md5(b'good').hexdigest()}" in err

"""The audit command's comparison and explanations, on hand-written `dvc.lock` contents.

The real thing (a clone rebuilt and compared) runs in tests/test_pipeline.py.
"""

from __future__ import annotations

import subprocess
import sys

from pipelines import verify
from tests.conftest import ROOT


def _lock(model_md5: str, data_md5: str = "d1.dir", code_md5: str = "c1", lr: float = 0.1):
    return {
        "stages": {
            "prepare": {"outs": [{"path": "data/prepared", "md5": data_md5}]},
            "train": {
                "deps": [
                    {"path": "data/prepared", "md5": data_md5},
                    {"path": "stages/train.py", "md5": code_md5},
                ],
                "params": {"params.yaml": {"train": {"lr": lr}}},
                "outs": [{"path": "models/lenet5.pt", "md5": model_md5}],
            },
        }
    }


def test_same_outputs_pass() -> None:
    rows = verify.compare(_lock("m1"), _lock("m1"), ["prepare", "train"])
    assert [(r.stage, r.path, r.verdict) for r in rows] == [
        ("prepare", "data/prepared", "same"),
        ("train", "models/lenet5.pt", "same"),
    ]
    assert verify.Audit("c0", rows).ok
    assert "reproduces byte for byte" in verify.report(verify.Audit("c0", rows))


def test_a_different_output_fails_and_names_the_hashes() -> None:
    rows = verify.compare(_lock("m1"), _lock("m2"), ["prepare", "train"])
    audit = verify.Audit("c0", rows)
    assert not audit.ok
    text = verify.report(audit)
    assert "models/lenet5.pt" in text and "m1" in text and "m2" in text and "different" in text
    assert "1 of 2 outputs are the same" in text


def test_only_the_asked_stages_are_compared() -> None:
    rows = verify.compare(_lock("m1", "d1"), _lock("m2", "d2"), ["prepare"])
    assert [r.path for r in rows] == ["data/prepared"]


def test_explanations_stale_lock_upstream_and_provenance() -> None:
    committed, rebuilt = _lock("m1", "d1", "c1"), _lock("m2", "d2", "c2", lr=0.2)
    rows = verify.compare(committed, rebuilt, ["prepare", "train"])
    before = {"precision": "bf16-mixed", "cpu": {"amx": True, "model": "A"}}
    after = {"precision": "32-true", "cpu": {"amx": False, "model": "A"}}
    reasons = verify.explain(committed, rebuilt, rows, {"train": (before, after)})
    text = "\n".join(reasons)
    assert "stale" in text and "stages/train.py" in text and "params.yaml:train" in text
    assert "upstream output: data/prepared" in text
    assert "precision: 'bf16-mixed' -> '32-true'" in text
    assert "amx True -> False" in text and "model" not in text.split("cpu:")[1]


def test_a_missing_output_is_not_the_same() -> None:
    rebuilt = _lock("m1")
    del rebuilt["stages"]["train"]["outs"][0]
    (row,) = [r for r in verify.compare(_lock("m1"), rebuilt, ["train"])]
    assert row.verdict == "missing" and not verify.Audit("c0", [row]).ok


def test_unknown_stage_or_revision_is_a_usage_error() -> None:
    for args in (["--stages", "nosuchstage"], ["--rev", "no-such-rev"]):
        done = subprocess.run(
            [sys.executable, "-m", "pipelines.verify", *args],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 2, done.stderr
        assert done.stderr.startswith("error:")


def test_the_report_names_the_plugins_and_the_unpinned_ones(tmp_path) -> None:
    (tmp_path / "uv.lock").write_text('[[package]]\nname = "mnist-pipeline"\nversion = "0.1.0"\n')
    used = [
        {"kind": "model", "name": "lenet5", "distribution": "mnist-pipeline", "version": "0.1.0"},
        {"kind": "callback", "name": "early_stopping", "distribution": "mnist-plugin-example"},
    ]
    notes = verify.unlocked_plugin_notes(tmp_path, {"train": {"plugins": used}, "card": None})
    assert len(notes) == 1 and "early_stopping" in notes[0] and "uv.lock" in notes[0]
    audit = verify.Audit("c0", plugins={"train": [verify.plugin_text(p) for p in used]})
    assert "plugins of train: model lenet5 (mnist-pipeline 0.1.0), callback early_stopping" in (
        verify.report(audit)
    )

"""Run records: what they hold, and that a failed block writes none."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from mnist_pipeline import environment, provenance
from mnist_pipeline.params.schema import PrepareParams
from testing.scratch_repo import git

PARAMS = PrepareParams(val_size=10, split_seed=0)


def test_record_holds_commit_inputs_versions_and_the_stage_facts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "code.py").write_text("x = 1\n")
    (repo / "data").mkdir()
    (repo / "data" / "a.bin").write_bytes(b"abc")
    git(repo, "init", "-q", "-b", "main")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "c")
    (repo / "code.py").write_text("x = 2\n")  # an uncommitted change
    monkeypatch.chdir(repo)
    out = tmp_path / "record.json"
    with provenance.record(out, "prepare", [Path("data")], [PARAMS]) as run:
        run.facts["precision"] = "32-true"
    r = json.loads(out.read_text())
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True)
    assert r["git"] == {"commit": head.stdout.strip(), "dirty": True, "changed": ["code.py"]}
    assert r["inputs_md5"] == {"data/a.bin": "900150983cd24fb0d6963f7d28e17f72"}
    assert r["libraries"] == environment.installed_versions()
    assert r["params_sha256"] == provenance.params_sha256(PARAMS)
    assert r["precision"] == "32-true" and r["stage"] == "prepare" and r["seconds"] >= 0
    assert {"avx512_bf16", "amx", "model"} <= set(r["cpu"])


def test_params_hash_follows_the_values() -> None:
    other = PrepareParams(val_size=11, split_seed=0)
    assert provenance.params_sha256(PARAMS) != provenance.params_sha256(other)
    assert provenance.params_sha256(PARAMS) == provenance.params_sha256(PARAMS.model_copy())


def test_a_failed_stage_leaves_no_record(tmp_path: Path) -> None:
    out = tmp_path / "record.json"
    with pytest.raises(RuntimeError), provenance.record(out, "train", [], [PARAMS]):
        raise RuntimeError("the stage failed")
    assert not out.exists()
    with provenance.record(out, "train", [], [PARAMS]) as run:
        run.keep = False  # a DDP rank other than 0
    assert not out.exists()


def test_outside_git_the_record_has_no_commit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path.parent))
    assert provenance.git_state() == {}

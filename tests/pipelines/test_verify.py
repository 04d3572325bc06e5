"""The audit command's comparison and explanations, on hand-written `dvc.lock` contents; its
checks of what is committed and cached on a one-stage scratch repo (slow).

The real pipeline rebuilt and compared runs in tests/test_pipeline.py.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import pytest

from pipelines import cache_check, verify
from testing import scratch_repo
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


def test_the_profile_line_names_what_the_rebuilt_stages_used() -> None:
    """`--stages prepare` rebuilds no stage that computes with torch: no profile, no warning."""
    rows = verify.compare(_lock("m1"), _lock("m1"), ["prepare"])
    fast = " (results of the fast profile reproduce on the same CPU model only)"
    cases = [({}, "none (no torch stage)"), ({"train": "portable"}, "portable")]
    for profiles, shown in cases:
        text = verify.report(verify.Audit("c0", rows, rebuilt=["prepare"], profiles=profiles))
        assert f"compute profile: {shown}\n" in text + "\n" and fast not in text
    text = verify.report(verify.Audit("c0", rows, rebuilt=["train"], profiles={"train": "fast"}))
    assert f"compute profile: fast{fast}" in text


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


# A one-stage pipeline that runs in a second: a cached "model", a git-tracked metrics file and
# a run record, so the audit's checks run for real on a scratch git + DVC repo.
MAKE = """\
import json, sys, time
from pathlib import Path
Path("model.bin").write_bytes(bytes(range(256)) * 64)
Path("metrics.json").write_text(json.dumps({"acc": 0.992}) + "\\n")
Path(sys.argv[2]).write_text(json.dumps({"ran_at": time.time()}))
"""
PIPELINE = """\
stages:
  make:
    cmd: python make.py --provenance run.json
    deps: [make.py]
    outs: [model.bin]
    metrics:
      - metrics.json:
          cache: false
"""


@pytest.fixture
def scratch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A committed run of the one-stage pipeline, its objects in the cache and on a remote."""
    for key, value in scratch_repo.GIT_IDENTITY.items():
        monkeypatch.setenv(key, value)
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "make.py").write_text(MAKE)
    (repo / "dvc.yaml").write_text(PIPELINE)
    (repo / ".gitignore").write_text("run.json\n")
    scratch_repo.git(repo, "init", "-q", "-b", "main")
    scratch_repo.dvc(repo, "init", "-q")
    scratch_repo.dvc(repo, "remote", "add", "-d", "store", str(tmp_path / "remote"))
    scratch_repo.dvc(repo, "repro")
    scratch_repo.dvc(repo, "push")
    scratch_repo.git(repo, "add", "-A")
    scratch_repo.git(repo, "commit", "-q", "-m", "a run")
    return repo


def _flip_a_byte(path: Path) -> None:
    path.chmod(0o644)  # DVC makes its objects read-only
    data = bytearray(path.read_bytes())
    data[100] ^= 0x01
    path.write_bytes(bytes(data))


def _object(store: Path, data: bytes) -> Path:
    md5 = hashlib.md5(data).hexdigest()
    return store / "files" / "md5" / md5[:2] / md5[2:]


@pytest.mark.slow
def test_a_committed_result_edited_by_hand_fails_the_audit(scratch: Path) -> None:
    """The audit rebuilds the same bytes, but the commit holds another file than its dvc.lock
    records: it fails, names the file, both hashes and the wrong side."""
    locked = hashlib.md5((scratch / "metrics.json").read_bytes()).hexdigest()
    (scratch / "metrics.json").write_text('{"acc": 0.999}\n')
    scratch_repo.git(scratch, "commit", "-q", "-am", "a better accuracy")
    edited = hashlib.md5((scratch / "metrics.json").read_bytes()).hexdigest()
    audit = verify.verify(scratch, echo=lambda _: None)
    text = verify.report(audit)
    assert not audit.ok, text
    assert all(o.verdict == "same" for o in audit.outputs)  # the rebuild alone would pass
    (row,) = [c for c in audit.committed if not c.same]
    assert (row.path, row.locked, row.actual, row.rebuilt) == (
        "metrics.json",
        locked,
        edited,
        locked,
    )
    assert f"metrics.json (make): the commit's file hashes to {edited}" in text
    assert f"its dvc.lock records {locked}: the committed file is wrong" in text


@pytest.mark.slow
def test_a_flipped_byte_in_the_cache_or_on_the_remote_fails(scratch: Path) -> None:
    model = (scratch / "model.bin").read_bytes()
    md5 = hashlib.md5(model).hexdigest()
    assert verify.verify(scratch, echo=lambda _: None, remote=True).ok
    _flip_a_byte(_object(scratch / ".dvc" / "cache", model))
    audit = verify.verify(scratch, echo=lambda _: None)
    assert not audit.ok and audit.cache is not None
    (bad,) = audit.cache.corrupt
    assert (bad.where, bad.name, bad.output) == ("local cache", md5, "model.bin")
    text = verify.report(audit)
    assert f"object {md5} (model.bin) hashes to {bad.actual}: the cached copy is corrupt" in text
    # The standalone check says the same (exit 1); the remote's copy is still intact.
    cli = [sys.executable, "-m", "pipelines.cache_check", "--root", str(scratch)]
    done = subprocess.run([*cli, "--remote"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 1 and "CORRUPT: local cache" in done.stdout, done.stderr
    assert "CORRUPT: remote" not in done.stdout
    # A corrupt object on the remote is found too, when asked.
    _flip_a_byte(_object(scratch.parent / "remote", model))
    remote = cache_check.check(scratch, remote=True, local=False)
    assert [c.where.split()[0] for c in remote.corrupt] == ["remote"]
    assert remote.checked == {f"remote {scratch.parent / 'remote'}": 1}


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

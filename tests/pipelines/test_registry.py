"""Model versions as GTO git tags: next version from existing tags, one version per tree."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from pipelines import registry
from pipelines.registry import latest_version, register
from testing.scratch_repo import GIT_IDENTITY
from tests.pipelines.conftest import run


@pytest.fixture
def repo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for key, value in GIT_IDENTITY.items():
        monkeypatch.setenv(key, value)
    run(["git", "init", "-q", "-b", "main"], tmp_path)
    (tmp_path / "dvc.lock").write_text("model: a\n")
    run(["git", "add", "-A"], tmp_path)
    run(["git", "commit", "-q", "-m", "first"], tmp_path)
    return tmp_path


def test_versions_follow_existing_tags(repo: Path) -> None:
    assert latest_version(repo, "lenet5") is None
    first = register(repo, "lenet5", "minor", "first model")
    assert latest_version(repo, "lenet5") == "v0.1.0"
    assert (first.tag, first.snapshot, first.created) == ("lenet5@v0.1.0", False, True)
    assert run(["git", "cat-file", "-t", first.tag], repo).stdout.strip() == "tag"  # annotated
    assert first.commit == run(["git", "rev-parse", "HEAD"], repo).stdout.strip()

    (repo / "dvc.lock").write_text("model: b\n")  # a new run, not committed
    second = register(repo, "lenet5", "minor", "second model")
    assert (second.tag, second.snapshot) == ("lenet5@v0.2.0", True)
    assert latest_version(repo, "lenet5") == "v0.2.0"
    # The snapshot holds the run's dvc.lock; the branch and the files were not touched.
    assert run(["git", "show", f"{second.tag}:dvc.lock"], repo).stdout == "model: b\n"
    assert run(["git", "rev-parse", "HEAD"], repo).stdout.strip() == first.commit
    assert run(["git", "status", "--porcelain"], repo).stdout.strip() == "M dvc.lock"

    again = register(repo, "lenet5", "minor", "same model again")
    assert (again.tag, again.created) == ("lenet5@v0.2.0", False)
    assert register(repo, "lenet5", "major", "x").tag == "lenet5@v0.2.0"

    (repo / "dvc.lock").write_text("model: c\n")
    assert register(repo, "lenet5", "patch", "third").tag == "lenet5@v0.2.1"
    (repo / "dvc.lock").write_text("model: d\n")
    assert register(repo, "lenet5", "major", "fourth").tag == "lenet5@v1.0.0"


@pytest.mark.parametrize(
    ("test_acc", "min_test_acc"),
    [(0.1135, float("nan")), (0.1135, -1.0), (float("nan"), 0.98), (None, 0.98), (0.97, 0.98)],
)
def test_the_registration_gate_refuses_what_is_not_a_pass(
    repo: Path, monkeypatch: pytest.MonkeyPatch, test_acc: float | None, min_test_acc: float
) -> None:
    """`acc < nan` is always false: a NaN threshold or accuracy must not register anything."""
    monkeypatch.setattr(registry, "get_run_logger", lambda: logging.getLogger("test"))
    register_version = registry.register_version.fn
    state = register_version(repo, "lenet5", "minor", test_acc, min_test_acc, None, None)
    assert state.name == "Rejected"
    assert latest_version(repo, "lenet5") is None

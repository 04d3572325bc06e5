"""DVC as the flow sees it: stage order from DVC's graph, and stage processes that can be
stopped on timeout.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from pipelines import dvc_repo
from tests.conftest import ROOT


def _repo(root: Path, stages: dict) -> Path:
    from dvc.repo import Repo

    Repo.init(str(root), no_scm=True).close()
    (root / "dvc.yaml").write_text(yaml.safe_dump({"stages": stages}, sort_keys=False))
    return root


def test_stage_order_follows_the_dvc_graph_not_the_listing(tmp_path: Path) -> None:
    stages = {  # listed out of order on purpose
        "report": {"cmd": "cat b > c", "deps": ["b"], "outs": ["c"]},
        "make_a": {"cmd": "echo a > a", "outs": ["a"]},
        "make_b": {"cmd": "cat a > b", "deps": ["a"], "outs": ["b"]},
        "lonely": {"cmd": "echo x > x", "outs": ["x"]},
    }
    _repo(tmp_path, stages)
    assert dvc_repo.stage_order(tmp_path) == ["make_a", "make_b", "report", "lonely"]
    assert dvc_repo.stage_order(tmp_path, ["report"]) == ["make_a", "make_b", "report"]
    with pytest.raises(ValueError, match="no such stage: reprot"):
        dvc_repo.stage_order(tmp_path, ["reprot"])


def test_this_repos_stage_order_starts_with_the_core_stages() -> None:
    order = dvc_repo.stage_order(ROOT)
    assert order[:3] == ["prepare", "train", "evaluate"]
    spec = yaml.safe_load((ROOT / "dvc.yaml").read_text())
    assert sorted(order) == sorted(spec["stages"])  # every stage, none hard-coded


@pytest.mark.parametrize("why", ["timeout", "stop"])
def test_a_stage_past_its_timeout_or_told_to_stop_is_stopped_with_its_children(
    tmp_path: Path, why: str
) -> None:
    # `$$` is the shell DVC starts for the command; `sleep` is its child.
    repo = _repo(tmp_path, {"slow": {"cmd": "echo $$ > pid && sleep 300", "outs": ["never"]}})
    # `stop`: the pruner's watch says so once the stage is running.
    how: dict[str, Any] = {"timeout_s": 5}
    if why == "stop":
        how = {"timeout_s": 120, "stop": (repo / "pid").exists, "poll_s": 0.2}
    done = dvc_repo.run(repo, ["repro", "--single-item", "slow"], echo=print, **how)
    assert not done.ok and done.stopped == (why == "stop")
    assert (done.returncode is None) == (why == "timeout")  # stopped: the signal's exit status
    shell = int((repo / "pid").read_text())
    status = Path(f"/proc/{shell}/status")
    deadline = time.monotonic() + 10
    while status.exists() and "zombie" not in status.read_text() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not status.exists() or "zombie" in status.read_text()


def test_run_cache_hits_are_recognized() -> None:
    hit = "Stage 'evaluate' is cached - skipping run, checking out outputs\nUpdating lock file"
    assert dvc_repo.Completed(("repro",), 0, 1.0, hit).run_cache_hit
    ran = "Running stage 'evaluate':\n> python -m stages.evaluate"
    assert not dvc_repo.Completed(("repro",), 0, 1.0, ran).run_cache_hit


def test_one_repo_serves_every_read_and_sees_what_commands_wrote(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from dvc.repo import Repo

    repo = _repo(tmp_path, {"make_a": {"cmd": "echo a > a", "outs": ["a"]}})
    opened: list[str] = []
    init = Repo.__init__

    def counted(self: Repo, *args: object, **kwargs: object) -> None:
        opened.append(str(args[0]) if args else "")
        init(self, *args, **kwargs)

    monkeypatch.setattr(Repo, "__init__", counted)
    with dvc_repo.one_repo(repo):
        assert dvc_repo.stage_order(repo) == ["make_a"]
        assert dvc_repo.changes(repo, "make_a")  # never run
        assert dvc_repo.run(repo, ["repro", "make_a"], timeout_s=120).ok
        assert dvc_repo.changes(repo, "make_a") == {}  # the run's dvc.lock is read again
        assert dvc_repo.out_paths(repo, "make_a") == [repo / "a"]
        spec = {
            "make_a": {"cmd": "echo a > a", "outs": ["a"]},
            "b": {"cmd": "echo", "deps": ["a"]},
        }
        (repo / "dvc.yaml").write_text(yaml.safe_dump({"stages": spec}))
        dvc_repo.written(repo)
        assert dvc_repo.stage_order(repo) == ["make_a", "b"]
    assert len(opened) == 1
    assert dvc_repo.stage_order(repo) == ["make_a", "b"] and len(opened) == 2  # closed after

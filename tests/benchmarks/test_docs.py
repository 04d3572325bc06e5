"""The docs' tables of measured figures are what the committed JSON generates, whatever the
last `dvc repro` on this machine left in the working tree."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest

from benchmarks import docs, targets
from testing.scratch_repo import git

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def copy(tmp_path: Path) -> Path:
    """The docs, and every file their blocks are generated from as committed, in one folder."""
    shutil.copytree(ROOT / "docs", tmp_path / "docs", symlinks=True)
    with docs.committed(ROOT) as sources:
        shutil.copytree(sources, tmp_path, dirs_exist_ok=True)
    return tmp_path


def test_committed_pages_match_their_json() -> None:
    with docs.committed(ROOT) as sources:
        assert docs.drift(ROOT / "docs", sources) == []


def test_a_run_on_this_machine_leaves_the_check_passing(tmp_path: Path) -> None:
    """`dvc repro` rewrites the tracked measurements/ and provenance/ with this machine's
    timings: the check reads them as committed; `--worktree` reads what the run left."""
    repo = tmp_path / "repo"
    git(tmp_path, "clone", "-q", str(ROOT), str(repo))
    path = repo / "measurements/export.json"
    m = json.loads(path.read_text())
    m["dense"]["ort_latency_ms"] = 9.876  # another machine's timing
    path.write_text(json.dumps(m))
    args = ["--check", "--docs", str(repo / "docs"), "--root", str(repo)]
    assert docs.main(args) == 0
    assert docs.main([*args, "--worktree"]) == 1
    git(repo, "commit", "-qam", "this machine's run")
    assert docs.main(args) == 1  # committed without --write: the pages are stale
    assert docs.main(["--write", *args[1:]]) == 0
    assert "| 9.8760 ms |" in (repo / "docs/prune-export.md").read_text()
    assert docs.main(["--check", *args[1:], "--rev", "HEAD~1"]) == 1


def test_every_block_is_used_on_some_page() -> None:
    used = {
        name
        for page in docs.pages(ROOT / "docs")
        for name in docs.OPENING.findall(page.read_text())
    }
    assert used == set(docs.BLOCKS)


def test_a_changed_figure_in_the_json_fails_the_check(
    copy: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = copy / "measurements/export.json"
    m = json.loads(path.read_text())
    m["dense"]["ort_latency_ms"] = 0.132  # the README's stale figure of issue 19
    path.write_text(json.dumps(m))
    args = ["--check", "--docs", str(copy / "docs"), "--root", str(copy), "--worktree"]
    with caplog.at_level(logging.ERROR):
        assert docs.main(args) == 1
    assert (
        f"{copy / 'docs/prune-export.md'}: generated block(s) out of date: models" in caplog.text
    )
    assert docs.main(["--write", *args[1:]]) == 0
    assert "| 0.1320 ms |" in (copy / "docs/prune-export.md").read_text()
    assert docs.main(args) == 0


def test_a_figure_edited_by_hand_is_named_and_write_restores_only_it(copy: Path) -> None:
    page = copy / "docs/speed.md"
    text = page.read_text()
    target = next(t for t in targets.TARGETS if t.what == "pruned accuracy lost (points)")
    row = f"| {target.what} | <= 0.1 |"
    assert row in text
    page.write_text(text.replace(row, f"| {target.what} | <= 0.15 |"))
    assert docs.drift(copy / "docs", copy) == [f"{page}: generated block(s) out of date: targets"]
    assert docs.write(copy / "docs", copy) == [page]
    assert page.read_text() == text


def test_the_targets_table_holds_every_target_once() -> None:
    block = docs.targets_block(ROOT)
    for t in targets.TARGETS:
        assert block.count(f"| {t.what} |") == 1, t.what


def test_an_unknown_or_unclosed_block_is_an_error(copy: Path) -> None:
    page = copy / "docs/index.md"
    page.write_text("<!-- generated: no-such-table -->\n<!-- end: no-such-table -->\n")
    args = ["--check", "--docs", str(copy / "docs"), "--root", str(copy), "--worktree"]
    assert docs.main(args) == 2
    assert docs.main(args[:-1]) == 2  # no git repository: no committed JSON
    page.write_text("<!-- generated: evaluate -->\n")
    with pytest.raises(ValueError, match="no `<!-- end: NAME -->` for: evaluate"):
        docs.render(page.read_text(), copy)


def test_the_frontier_says_whether_a_prune_recipe_reached_the_goal(copy: Path) -> None:
    from benchmarks import frontier

    assert "none reached" in frontier.frontier_block(copy)
    path = copy / frontier.RECIPES
    study = json.loads(path.read_text())
    name, entry = next(iter(study["recipes"].items()))
    entry["summary"]["loss_mean"] = study["targets"]["goal_loss_points"]
    path.write_text(json.dumps(study))
    text = frontier.frontier_block(copy)
    assert f"`{name}` reached" in text and "none reached" not in text

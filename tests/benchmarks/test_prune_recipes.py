"""The prune recipe study: recipes as exact params, runs over seeds that a second call takes up
rather than repeats, the choice among them, and its table and plot in the docs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from benchmarks import prune_frontier
from benchmarks import prune_recipes as pr

TINY = {"rounds": 1, "finetune.epochs": 1, "structured.ratio": 0.52}


def _summary(
    loss: float, epochs: int, meets: bool = True, seeds: int = 3, std: float = 0.0
) -> dict[str, Any]:
    return {
        "loss_mean": loss,
        "loss_std": std,
        "student_epochs": epochs,
        "meets_size": meets,
        "seeds": seeds,
    }


def test_recipes_are_whole_prune_sections_and_unknown_keys_fail() -> None:
    base = {"rounds": 3, "finetune": {"epochs": 3, "optimizer": {"lr": 1.0e-2}}}
    out = pr.recipe_params(base, {"rounds": 1, "finetune.optimizer.lr": 5.0e-3})
    assert out == {"rounds": 1, "finetune": {"epochs": 3, "optimizer": {"lr": 5.0e-3}}}
    assert base["rounds"] == 3  # the base is not changed
    with pytest.raises(KeyError, match=r"prune\.finetune\.epoch"):
        pr.recipe_params(base, {"finetune.epoch": 1})


def test_the_choice_is_the_cheapest_that_meets_the_goal_else_the_smallest_loss() -> None:
    summaries = {
        "cheap-bad": _summary(0.5, 1),
        "good": _summary(0.08, 6),
        "good-dear": _summary(0.05, 9),
        "too-big": _summary(0.0, 1, meets=False),
        "one-seed": _summary(0.01, 1, seeds=1),
    }
    assert pr.choose(summaries, min_seeds=3, budget=10) == "good"
    # Over the fine-tuning budget, a recipe is not chosen, however little it loses.
    assert pr.choose(summaries, min_seeds=3, budget=3) == "cheap-bad"
    del summaries["good"], summaries["good-dear"]
    assert pr.choose(summaries, min_seeds=3, budget=10) == "cheap-bad"
    assert pr.choose({"too-big": _summary(0.0, 1, meets=False)}, min_seeds=3) is None


def test_the_current_recipe_stays_unless_another_is_better_beyond_the_seed_spread() -> None:
    summaries = {
        "current": _summary(0.45, 3, std=0.03),
        "within-noise": _summary(0.43, 3, std=0.04),
    }
    assert pr.choose(summaries, min_seeds=3, current="current") == "current"
    summaries["clearly-better"] = _summary(0.30, 3, std=0.02)
    assert pr.choose(summaries, min_seeds=3, current="current") == "clearly-better"
    assert pr.choose(summaries, min_seeds=3) == "clearly-better"  # no current: the smallest


def test_aggregate_gives_the_spread_over_seeds() -> None:
    runs = [
        {"loss_points": x, "params_ratio": 0.2, "macs_ratio": m, "student_epochs": 2}
        for x, m in ((0.1, 0.2), (0.3, 0.2), (0.2, 0.26))
    ]
    s = pr.aggregate(runs)
    assert (s["loss_mean"], s["loss_std"], s["loss_min"], s["loss_max"]) == (0.2, 0.1, 0.1, 0.3)
    assert s["macs_ratio"] == 0.26 and not s["meets_size"]  # one seed over the MAC target


def test_a_tiny_study_runs_resumes_and_merges(
    tmp_path: Path,
    params_file: Path,
    trained_model: Path,
    prepared: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    setup = pr.load_setup(params_file, trained_model, prepared)
    out = tmp_path / "s0.json"
    result = pr.study({"tiny": TINY}, [0], setup, prepared, out)
    run = result["recipes"]["tiny"]["runs"][0]
    assert run["params_ratio"] <= 0.25 and run["macs_ratio"] <= 0.25
    assert run["loss_points"] == pytest.approx((setup["dense_acc"] - run["test_acc"]) * 100, 0.01)
    assert result["recipes"]["tiny"]["prune"]["structured"]["ratio"] == 0.52  # exact params
    assert json.loads(out.read_text()) == result

    # A second call takes the study up: the run already in the file is not run again.
    def no_run(*_: object) -> None:
        raise AssertionError("ran again")

    other = tmp_path / "s1.json"
    with monkeypatch.context() as m:
        m.setattr(pr, "run_one", no_run)
        assert pr.study({"tiny": TINY}, [0], setup, prepared, out) == result
    pr.study({"tiny": TINY}, [1], setup, prepared, other)
    merged = pr.merge([json.loads(out.read_text()), json.loads(other.read_text())])
    assert [r["seed"] for r in merged["recipes"]["tiny"]["runs"]] == [0, 1]
    assert merged["recipes"]["tiny"]["summary"]["seeds"] == 2
    assert merged["chosen"] is None  # fewer than 3 seeds: nothing is judged yet

    # Its table and plot in the docs, and the check that notices a stale plot.
    (tmp_path / prune_frontier.STUDY).parent.mkdir(parents=True)
    (tmp_path / prune_frontier.STUDY).write_text(json.dumps(merged))
    block = prune_frontier.frontier_block(tmp_path)
    # The tests' params.yaml prunes as `tiny` does, so the table names it as params.yaml's.
    assert merged["current"] == "tiny"
    assert "| `tiny` (params.yaml) | 1 x 1 | l2, per layer, 0.52 |" in block
    assert f"{setup['compute'].threads} thread(s)" in block
    docs = tmp_path / "docs"
    assert prune_frontier.plot_drift(docs, tmp_path)
    assert prune_frontier.plot_write(docs, tmp_path) == [docs / prune_frontier.PLOT]
    assert (docs / prune_frontier.PLOT).read_bytes().startswith(b"\x89PNG")
    assert prune_frontier.plot_drift(docs, tmp_path) == []

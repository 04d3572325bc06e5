"""`python -m benchmarks --quick` runs end to end and writes the JSON it promises (no timing
assertions: only that every number is there, finite and positive)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import __main__ as bench
from benchmarks import orchestration
from benchmarks.clocks import EpochLog
from mnist_pipeline.errors import ParamsError
from tests.conftest import ROOT
from tests.stage_runs import shell_env

VARIANTS = ("seed recipe", "plain loop", "project")


def _positive(x: object) -> bool:
    return isinstance(x, int | float) and math.isfinite(x) and x > 0


def test_epoch_log_times_epochs_and_finds_the_target() -> None:
    log = EpochLog(starts=[0.0, 2.0, 3.5], ends=[1.9, 3.4, 4.9], test_acc=[0.97, 0.991, 0.995])
    log.done = 5.0
    assert log.epoch_s() == pytest.approx([2.0, 1.5, 1.5])
    assert log.time_to(0.99) == pytest.approx(3.4)
    assert log.time_to(0.999) is None


def test_variants_use_the_override_syntax_of_dvc_exp_run(tmp_path: Path) -> None:
    make_variants, parse_args = bench.make_variants, bench.parse_args

    args = parse_args(["--variant", "big:batch_size=512,optimizer.lr=8.0e-3", "--skip", "seed"])
    plain, project, big = make_variants(args, quick=["train.max_epochs=1"])
    assert [v.name for v in (plain, project, big)] == ["plain loop", "project", "big"]
    assert project.train["max_epochs"] == 1 and big.train["max_epochs"] == 1
    assert big.train["batch_size"] == 512 and big.train["optimizer"]["lr"] == 8.0e-3
    assert project.train["optimizer"]["lr"] != 8.0e-3  # the defaults are left alone
    bad = parse_args(["--variant", "typo:optimizer.lrr=1.0"])
    with pytest.raises(ParamsError, match=r"optimizer\.lrr"):
        make_variants(bad, quick=[])


def test_orchestration_skips_what_is_no_dvc_pipeline(tmp_path: Path) -> None:
    assert "skipped" in orchestration.noop(tmp_path, reps=1)


def test_quick_run_writes_sane_json(tmp_path: Path) -> None:
    """Run as a user runs it: a fresh process, from a shell without the pins of the test
    session (tests/conftest.py), so the command applies the compute profile itself."""
    out = tmp_path / "results.json"
    args = ["--quick", "--out", str(out), "--workdir", str(tmp_path / "work")]
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks", *args, "--models", str(tmp_path / "no-models")],
        cwd=ROOT,
        env=shell_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    results = json.loads(out.read_text())

    assert results["quick"] is True
    assert results["machine"]["torch"]
    training_ = results["training"]
    assert set(training_) == set(VARIANTS)
    for name in VARIANTS:
        s = training_[name]
        for key in ("steady_epoch_s", "first_epoch_s", "train_images_per_s", "train_s"):
            assert _positive(s[key]), (name, key, s[key])
        assert _positive(s["peak_rss_mb"])
        assert 0.0 <= s["final_test_acc"] <= 1.0
        assert s["time_to_target_s"] is None or _positive(s["time_to_target_s"])
    # The synthetic digits are easy: the project's recipe learns them in two epochs.
    assert training_["project"]["final_test_acc"] >= 0.9
    for name in ("seed recipe", "plain loop"):
        assert _positive(training_[name]["project_speedup"])
    assert "run dvc repro" in results["inference"]["skipped"]
    assert "skipped" in results["orchestration"]
    startup = results["startup"]
    assert _positive(startup["libraries"]["torch"]["import_s"])
    assert _positive(startup["libraries"]["python_s"])
    assert "dvc repro" in startup["stages"]["skipped"]
    if "skipped" not in startup["busy_core"]:  # two cores and taskset
        for policy in ("default", "active", "passive"):
            for key in (f"quiet_{policy}", f"busy_{policy}"):
                assert _positive(startup["busy_core"][f"{key}_step_ms"]), key
    judged = {r["what"]: r["verdict"] for r in results["targets"]}
    assert judged["final test accuracy"] in ("met", "not met")  # measured, on synthetic digits
    assert judged["dvc repro, nothing changed (s)"] == "not measured"


def test_targets_judge_only_what_was_measured() -> None:
    from benchmarks import targets

    results = {
        "training": {"project": {"steady_epoch_s": 0.7, "time_to_target_s": None}},
        "orchestration": {"skipped": "not in --quick mode"},
    }
    rows = {r["what"]: r for r in targets.judge(results, {"ratio": {"params": 0.3}})}
    assert rows["training epoch, steady state (s)"]["verdict"] == "met"
    assert rows["fit time to 99.0% test accuracy (s)"]["verdict"] == "not measured"  # not reached
    assert rows["dvc repro, nothing changed (s)"]["verdict"] == "not measured"
    assert rows["pruned params / dense"] == {
        "what": "pruned params / dense",
        "target": "<= 0.25",
        "measured": 0.3,
        "verdict": "not met",
    }
    assert rows["pruned MACs / dense"]["verdict"] == "not measured"
    assert {r["verdict"] for r in targets.judge({}, None)} == {"not measured"}

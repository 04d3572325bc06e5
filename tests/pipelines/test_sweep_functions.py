"""The sweep's pieces as plain functions, on plain data: the search space, the plan's thread
and shared-stage choices, the report, and the early stopping of trials (Optuna's pruners).
The flow itself runs for real in test_sweep.py.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from mnist_pipeline.errors import ParamsError
from pipelines.sweep import early_stopping
from pipelines.sweep import report as sr
from pipelines.sweep import space as sweep_space
from pipelines.sweep.plan import shared_stages, thread_overrides
from tests.conftest import ROOT

# --- the search space ------------------------------------------------------------------------


def test_grid_is_dvcs_product_of_comma_lists_range_and_choice() -> None:
    points = sweep_space.grid(
        [
            "train.optimizer.lr=1.2e-2,4.8e-2",
            "train.optimizer.name=choice(adam,adamw)",
            "train.seed=range(0,3)",
            "params.yaml:train.max_epochs=1",
        ]
    )
    assert len(points) == 2 * 2 * 3
    assert points[0] == [
        "train.optimizer.lr=0.012",
        "train.optimizer.name=adam",
        "train.seed=0",
        "train.max_epochs=1",
    ]
    assert points[-1][:3] == [
        "train.optimizer.lr=0.048",
        "train.optimizer.name=adamw",
        "train.seed=2",
    ]
    keys = sweep_space.swept_keys(["train.optimizer.lr=1e-2,2e-2", "train.max_epochs=1"])
    assert keys == ["train.optimizer.lr"]


@pytest.mark.parametrize(
    ("override", "named"),
    [
        ("train.optimizer.lr=(", "malformed override 'train.optimizer.lr=('"),
        ("=3", "no key before '='"),
        ("train.seed=range(a)", "malformed override 'train.seed=range(a)'"),
        ("train.optimizer.lr=interval(0.1,1)", "INTERVAL_SWEEP"),
        ("other.yaml:train.seed=1", "only params.yaml can be overridden"),
    ],
)
def test_bad_syntax_is_refused_naming_the_override(override: str, named: str) -> None:
    with pytest.raises(ParamsError, match=None) as err:
        sweep_space.grid_trials("s", ["train.max_epochs=1", override])
    assert named in str(err.value)


def test_every_trial_is_validated_and_the_bad_ones_named(tmp_path: Path) -> None:
    params = tmp_path / "params.yaml"
    params.write_text((ROOT / "params.yaml").read_text())
    plan = sweep_space.grid_trials("s", ["train.optimizer.lr=1.2e-2,20.0", "train.seed=1,2"])
    bad = sweep_space.validate(params, plan)
    assert [b.trial.name for b in bad] == ["s-002", "s-003"]
    message = str(sweep_space.refuse(bad, len(plan)))
    assert "2 of 4 trials have invalid params" in message
    assert "s-002 (train.optimizer.lr=20.0 train.seed=1)" in message
    assert "train.optimizer.lr: Input should be less than or equal to 10" in message
    unknown = sweep_space.grid_trials("s", ["train.optimizer.lrr=1.0,2.0"])
    (first, _) = sweep_space.validate(params, unknown)
    assert "Could not override 'train.optimizer.lrr'" in first.error  # DVC's own words
    added = sweep_space.grid_trials("s", ["+train.optimizer.lrr=1.0"])
    (first,) = sweep_space.validate(params, added)
    assert "train.optimizer.lrr: unknown key" in first.error  # the schema's


def test_optuna_space_reads_the_same_grammar() -> None:
    dims = sweep_space.optuna_space(
        [
            "train.optimizer.lr=tag(log,interval(1e-3,1e-1))",
            "train.batch_size=range(32,129,32)",
            "train.optimizer.name=adam,adamw",
            "train.max_epochs=1",
        ]
    )
    lr, batch, name, epochs = dims
    assert (lr.kind, lr.low, lr.high, lr.log) == ("float", 1e-3, 1e-1, True)
    assert (batch.kind, batch.low, batch.high, batch.step) == ("int", 32, 128, 32)
    assert (name.kind, name.choices) == ("categorical", ("adam", "adamw"))
    assert epochs.kind == "fixed"
    values = {
        "train.optimizer.lr": 0.0123456789,
        "train.batch_size": 64,
        "train.optimizer.name": "adam",
    }
    assert sweep_space.sampled_overrides(dims, values) == [
        "train.optimizer.lr=0.0123457",
        "train.batch_size=64",
        "train.optimizer.name=adam",
        "train.max_epochs=1",
    ]
    for bad, named in [
        ("train.optimizer.lr=interval(0.1,0.01)", "interval needs low < high"),
        ("train.optimizer.lr=tag(log,interval(0,1))", "low > 0 for log"),
        ("train.seed=range(5,1)", "the range is empty"),
        ("train.seed=interval(", "malformed override"),
    ]:
        with pytest.raises(ParamsError, match="override") as err:
            sweep_space.optuna_space([bad])
        assert named in str(err.value) and bad in str(err.value)


def test_jobs_share_the_cores_unless_the_sweep_sets_threads(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("pipelines.sweep.plan.cores", lambda: 8)
    assert thread_overrides([], jobs=2, threads=None) == ["compute.threads=4"]
    assert thread_overrides([], jobs=1, threads=None) == []
    assert thread_overrides([], jobs=16, threads=None) == ["compute.threads=1"]
    assert thread_overrides(["compute.threads=1,2"], jobs=2, threads=None) == []


def test_stages_no_swept_param_reaches_run_once_for_the_sweep() -> None:
    assert shared_stages(ROOT, ["evaluate"], ["train.optimizer.lr"]) == ["prepare"]
    assert shared_stages(ROOT, ["evaluate"], ["prepare.val_size"]) == []
    assert shared_stages(ROOT, ["evaluate"], ["evaluate.batch_size"]) == ["prepare", "train"]


# --- the report ------------------------------------------------------------------------------


def _results() -> list[sr.TrialResult]:
    return [
        sr.TrialResult(
            "s-000", sr.SUCCEEDED, {"lr": "0.01", "opt": "adam"}, 0.97, {"loss": 0.1}, 20.0, 1
        ),
        sr.TrialResult(
            "s-001", sr.SUCCEEDED, {"lr": "0.1", "opt": "adamw"}, 0.99, {"loss": 0.05}, 21.0, 2
        ),
        sr.TrialResult(
            "s-002", sr.FAILED, {"lr": "1.0", "opt": "adam"}, None, {}, 3.0, 1, None, "boom\nmore"
        ),
    ]


def test_leaderboard_ranks_the_best_first_and_lists_failures_last() -> None:
    rows = sr.leaderboard(_results(), ["lr", "opt"], "test.acc", maximize=True)
    assert [(r["rank"], r["trial"], r["status"]) for r in rows] == [
        (1, "s-001", "succeeded"),
        (2, "s-000", "succeeded"),
        (None, "s-002", "failed"),
    ]
    assert list(rows[0]) == [
        "rank",
        "trial",
        "status",
        "lr",
        "opt",
        "test.acc",
        "loss",
        "seconds",
        "attempts",
        "note",
    ]
    assert rows[2]["note"] == "boom"
    low = sr.leaderboard(_results(), ["lr"], "test.loss", maximize=False)
    assert low[0]["trial"] == "s-000"
    md = sr.summary_markdown("s", _results(), ["lr", "opt"], "test.acc", True, None, None)
    assert "3 trials: 2 succeeded, 1 failed, 0 pruned" in md
    assert "dvc exp apply s-001" in md and "## Failed trials" in md


def test_plot_has_a_panel_per_swept_param(tmp_path: Path) -> None:
    from PIL import Image

    path = tmp_path / "plots" / "s.png"
    sr.plot(path, _results(), ["lr", "opt"], "test.acc", maximize=True)
    with Image.open(path) as img:
        assert img.format == "PNG" and img.size == (800, 340)  # two 4-inch panels at 100 dpi


# --- early stopping of trials (Optuna pruning) ----------------------------------------------


def _write_tsv(path: Path, name: str, rows: list[tuple[int, float]], partial: str = "") -> None:
    """A DVCLive TSV as `train` leaves it (`partial`: a row it is writing)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join([f"step\t{name}\n", *(f"{s}\t{v}\n" for s, v in rows), partial]))


def _past(*curves: dict[int, float]) -> tuple[early_stopping.PastTrial, ...]:
    return tuple(early_stopping.PastTrial("COMPLETE", c[max(c)], c) for c in curves)


EARLIER = _past({0: 0.50, 1: 0.80, 2: 0.90}, {0: 0.60, 1: 0.85, 2: 0.92}, {0: 0.4, 1: 0.7})


def test_a_trial_below_the_median_is_pruned_at_its_first_epoch_after_the_warm_up(
    tmp_path: Path,
) -> None:
    """The watcher in a trial's clone: the commit's own curve does not count; each epoch is
    reported once `epoch.tsv` names it; the pruner waits out the warm-up, then prunes."""
    metrics = tmp_path / "dvclive" / "train" / "plots" / "metrics"
    acc, epochs = metrics / "val" / "acc.tsv", metrics / "epoch.tsv"
    _write_tsv(acc, "acc", [(106, 0.97), (213, 0.98), (320, 0.985)])  # the commit's
    settings = early_stopping.Pruning("median", startup_trials=2, warmup_epochs=1)
    watch = early_stopping.Watch("val/acc", True, "dvclive/train", settings, EARLIER)
    watcher = early_stopping.Watcher(watch, tmp_path)
    assert watcher() is False and watcher.curve == {}  # the commit's curve, not this trial's
    # (Unless nothing ran: an experiment already in the clone, with its curve.)
    assert early_stopping.Watcher(watch, tmp_path).finish(reused=True) == {
        0: 0.97,
        1: 0.98,
        2: 0.985,
    }
    acc.unlink()  # DVCLive's fresh start
    _write_tsv(acc, "acc", [(3, 0.11)])
    _write_tsv(epochs, "epoch", [(3, 0), (3, 0)])
    assert watcher() is False and watcher.curve == {0: 0.11}  # epoch 0: the warm-up
    _write_tsv(acc, "acc", [(3, 0.11), (6, 0.12)], partial="9\t0.1")
    assert watcher() is False and watcher.curve == {0: 0.11}  # epoch.tsv does not have 6 yet
    _write_tsv(epochs, "epoch", [(3, 0), (3, 0), (6, 1)])
    assert watcher() is True and watcher.pruned_at == 1  # 0.12 < the median 0.8 at epoch 1
    assert watcher.finish() == {0: 0.11, 1: 0.12}
    # A trial at the median goes on; so does a hopeless one before enough trials completed.
    assert _grow(watch, tmp_path / "good", "acc", [0.6, 0.8, 0.95]) == [False] * 3
    few = dataclasses.replace(watch, past=EARLIER[:1])
    assert _grow(few, tmp_path / "few", "acc", [0.1] * 3) == [False] * 3
    # Minimising val/loss: the trial whose loss stays above the median is the hopeless one.
    loss = dataclasses.replace(
        watch, metric="val/loss", maximize=False, past=_past({0: 1.0, 1: 0.5}, {0: 1.2, 1: 0.4})
    )
    assert _grow(loss, tmp_path / "loss", "loss", [1.1, 0.9]) == [False, True]


def _grow(watch: early_stopping.Watch, ws: Path, name: str, values: list[float]) -> list[bool]:
    """A watcher's answers while `train` writes `values`, an epoch at a time."""
    watcher = early_stopping.Watcher(watch, ws)
    answers = []
    for n in range(1, len(values) + 1):
        rows = [(10 * (e + 1), v) for e, v in enumerate(values[:n])]
        _write_tsv(ws / watch.tsv, name, rows)
        _write_tsv(ws / watch.epochs_tsv, "epoch", [(s, s // 10 - 1) for s, _ in rows])
        answers.append(watcher())
    return answers


def test_the_driver_tells_the_study_what_the_worker_saw() -> None:
    """The journal study gets each trial's epochs and outcome; its snapshot is what the next
    trial's pruner compares with, and a pruned trial counts as pruned, not as completed."""
    import optuna
    from optuna.trial import TrialState

    study = optuna.create_study(direction="maximize")
    for curve, value, state in [
        ({0: 0.5, 1: 0.9}, 0.95, TrialState.COMPLETE),
        ({0: 0.1}, None, TrialState.PRUNED),
        ({}, None, TrialState.FAIL),
    ]:
        early_stopping.tell(study, study.ask(), curve, "val/acc", value, state)
    past = early_stopping.snapshot(study)
    assert past == (
        early_stopping.PastTrial("COMPLETE", 0.95, {0: 0.5, 1: 0.9}),
        early_stopping.PastTrial("PRUNED", 0.1, {0: 0.1}),  # Optuna's value: its last epoch's
    )
    assert study.trials[1].user_attrs == {early_stopping.METRIC_ATTR: "val/acc"}
    assert (
        early_stopping.describe({0: 0.1, 1: 0.1125}, "val/acc") == "after epoch 2: val/acc 0.1125"
    )

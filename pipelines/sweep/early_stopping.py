"""Early stopping of an Optuna sweep's hopeless trials on their per-epoch validation metric
(Optuna calls it pruning: `--prune-trials`; nothing to do with the `prune` stage's pruning of
the model).

`train` logs its validation metrics once an epoch with DVCLive, into the trial's clone
(`<live-dir>/plots/metrics/val/acc.tsv` with `--live-dir dvclive/train` in dvc.yaml, and the
epoch of each step in `epoch.tsv` beside it). While a trial's `dvc exp run` runs, a `Watcher`
reads that file; at each new epoch it reports the value to an Optuna pruner (`MedianPruner` or
`PercentilePruner`, Optuna's own code) and asks `should_prune()`. When the pruner says so, the
trial's process group is stopped (`dvc_repo.run`'s `stop`), and the sweep records the trial as
PRUNED, in its report and in its study, after reporting the epochs it did.

Where the decision is taken: on the worker that runs the trial, not on the driver. The study
is a journal file on the machine that runs the flow, which a Dask worker elsewhere cannot
open; and asking the driver at every epoch would need a channel from the task back to the
flow while it runs, which Prefect's task runners do not give. So the trial's task gets a
`Watch`: the pruner's settings and a snapshot of the study's finished trials (their
per-epoch values, value and state), plain data that pickles to any worker. There it builds an
in-memory study with the same pruner and direction, adds those trials
(`optuna.trial.create_trial`, `study.add_trial`), asks one trial and `report`s each epoch to
it. The params of the trials are left out: the percentile pruners read only the states and
intermediate values (and a changed space would make old params fail validation for nothing).
The driver then tells the journal study the real outcome (`tell`), with the epochs reported,
so later trials, and a rerun, know it. The snapshot is taken when the trial is submitted: the
trials finishing while it runs (at most `--jobs` - 1) are not in it, a cost paid only by the
pruner's view of the median, never by the study. Pruners that keep state of their own in the
study (successive halving's rungs, Hyperband's brackets) would need that state written back
from the worker, so they are not offered.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mnist_pipeline import errors
from pipelines import dvc_repo
from pipelines.sweep import trials

if TYPE_CHECKING:
    from pipelines.sweep.options import EarlyStopping

STAGE = "train"  # the stage whose per-epoch metrics are watched
METRICS_DIR = Path("plots") / "metrics"  # where DVCLive writes a metric's TSV in its dir
EPOCHS = "epoch.tsv"  # DVCLive's TSV of Lightning's epoch at each step
METRIC_ATTR = "epochs_of"  # the study's user attribute naming the metric its epochs are of


@dataclass(frozen=True)
class Pruning:
    """The pruner as the command line sets it."""

    pruner: str  # median | percentile
    startup_trials: int  # no pruning before this many trials completed
    warmup_epochs: int  # a trial's first epochs are never pruned
    percentile: float = 25.0  # percentile: a trial not among the best `percentile` % is pruned

    def make(self) -> Any:
        """The Optuna pruner (interval of one epoch; one completed trial is enough per step)."""
        import optuna

        if self.pruner == "median":
            return optuna.pruners.MedianPruner(self.startup_trials, self.warmup_epochs)
        return optuna.pruners.PercentilePruner(
            self.percentile, self.startup_trials, self.warmup_epochs
        )


@dataclass(frozen=True)
class PastTrial:
    """A finished trial of the study, as the pruner sees it."""

    state: str  # COMPLETE | PRUNED (an optuna TrialState name)
    value: float | None
    curve: dict[int, float]  # the pruned-on metric by epoch (Lightning's, from 0)


@dataclass(frozen=True)
class Watch:
    """What a trial's task needs to follow its metric, and to prune it where it runs (no
    study file, no driver). Without `pruning` it only records the epochs, for the study."""

    metric: str  # a metric `train` logs once an epoch with DVCLive: val/acc, val/loss
    maximize: bool
    live_dir: str  # `train`'s DVCLive folder, relative to the trial's clone
    pruning: Pruning | None = None
    past: tuple[PastTrial, ...] = ()

    @property
    def tsv(self) -> Path:
        return metric_tsv(Path(self.live_dir), self.metric)

    @property
    def epochs_tsv(self) -> Path:
        return Path(self.live_dir) / METRICS_DIR / EPOCHS


def metric_tsv(live_dir: Path, metric: str) -> Path:
    """The TSV DVCLive writes for `metric` under its `live_dir`."""
    return live_dir / METRICS_DIR / f"{metric}.tsv"


def snapshot(study: Any) -> tuple[PastTrial, ...]:
    """The study's completed and pruned trials, as plain data."""
    from optuna.trial import TrialState

    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))
    return tuple(PastTrial(t.state.name, t.value, dict(t.intermediate_values)) for t in done)


def tell(
    study: Any, trial: Any, curve: dict[int, float], metric: str, value: float | None, state: Any
) -> None:
    """Report a trial's epochs to the study, then its outcome (the driver's side)."""
    if curve:
        trial.set_user_attr(METRIC_ATTR, metric)
    for epoch, v in sorted(curve.items()):
        trial.report(v, epoch)
    study.tell(trial, value, state=state)


def read_tsv(path: Path) -> list[tuple[int, float]]:
    """The complete (step, value) rows of a DVCLive TSV; [] while it is not there."""
    try:
        text = path.read_text()
    except (FileNotFoundError, NotADirectoryError):
        return []
    lines = text.splitlines()
    if not text.endswith("\n"):
        lines = lines[:-1]  # a row being written
    rows = []
    for line in lines[1:]:  # the header: step, name
        step, _, value = line.partition("\t")
        try:
            rows.append((int(step), float(value)))
        except ValueError:
            continue
    return rows


def curve(
    metric_rows: list[tuple[int, float]], epoch_rows: list[tuple[int, float]] | None
) -> dict[int, float]:
    """{epoch: value}: each metric row at the epoch `epoch.tsv` gives its step; rows whose
    epoch is not written yet wait. Without `epoch.tsv` (None), the rows count the epochs."""
    if epoch_rows is None:
        return dict(enumerate(v for _, v in metric_rows))
    epoch_of = {step: int(epoch) for step, epoch in epoch_rows}
    return {epoch_of[s]: v for s, v in metric_rows if s in epoch_of}


class Watcher:
    """Follows a trial's metric in its clone `ws` and asks the pruner at each new epoch.

    Called (no arguments) while the trial runs, it says whether to stop it. The clone has the
    commit's own curves until `train` starts writing (DVCLive removes them on a fresh start,
    appends to them on a resumed one), so the file counts once it differs from what it was
    when the watch began.
    """

    def __init__(self, watch: Watch, ws: Path) -> None:
        self.tsv, self.epochs_tsv = ws / watch.tsv, ws / watch.epochs_tsv
        self._before = _read_bytes(self.tsv)
        self._live = False
        self.curve: dict[int, float] = {}
        self.pruned_at: int | None = None
        self._trial = None if watch.pruning is None else _in_memory_trial(watch)

    def read(self) -> dict[int, float]:
        """The trial's epochs so far (none while the file is the commit's)."""
        if not self._live:
            if _read_bytes(self.tsv) == self._before:
                return {}
            self._live = True
        epochs = read_tsv(self.epochs_tsv) if self.epochs_tsv.exists() else None
        return curve(read_tsv(self.tsv), epochs)

    def __call__(self) -> bool:
        """Report the new epochs; True when the pruner says the trial is hopeless."""
        for epoch, value in sorted(self.read().items()):
            if epoch in self.curve:
                continue
            self.curve[epoch] = value
            if self._trial is None:
                continue
            self._trial.report(value, epoch)
            if self._trial.should_prune():
                self.pruned_at = epoch
                return True
        return False

    def finish(self, reused: bool = False) -> dict[int, float]:
        """The whole curve once the trial ended (its last epochs, written after the last poll).
        `reused`: nothing ran, the clone's experiment was there, and so is its curve."""
        self._live = self._live or reused
        if self.pruned_at is None:
            self.curve.update({e: v for e, v in self.read().items() if e not in self.curve})
        return dict(sorted(self.curve.items()))


def _in_memory_trial(watch: Watch) -> Any:
    """A trial of an in-memory study with the pruner, the direction and the past trials."""
    import optuna
    from optuna.trial import TrialState, create_trial

    assert watch.pruning is not None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        direction="maximize" if watch.maximize else "minimize",
        pruner=watch.pruning.make(),
        sampler=optuna.samplers.RandomSampler(seed=0),
    )
    for past in watch.past:
        state = TrialState[past.state]
        value = past.value if state == TrialState.COMPLETE else None
        study.add_trial(create_trial(state=state, value=value, intermediate_values=past.curve))
    return study.ask()


def _read_bytes(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except (FileNotFoundError, NotADirectoryError):
        return None


def describe(curve: dict[int, float], metric: str) -> str:
    """`after epoch 2: val/acc 0.113`, the last epoch a trial reported (epochs from 1)."""
    if not curve:
        return "before its first epoch"
    epoch = max(curve)
    return f"after epoch {epoch + 1}: {metric} {curve[epoch]:.4g}"


def settings(options: EarlyStopping, adaptive: bool) -> Pruning | None:
    """The pruner's settings, or None; refused for a grid (no study to compare with)."""
    if options.pruner == "none":
        return None
    if not adaptive:
        raise errors.UsageError(
            f"--prune-trials {options.pruner} needs --trials: a grid has no study whose "
            "finished trials a pruner could compare a trial with"
        )
    o = options
    if o.startup_trials < 0 or o.warmup_epochs < 0 or not 0.0 <= o.percentile <= 100.0:
        raise errors.UsageError(
            "--prune-startup-trials and --prune-warmup-epochs must be at least 0, "
            "--prune-percentile between 0 and 100"
        )
    return Pruning(o.pruner, o.startup_trials, o.warmup_epochs, o.percentile)


def watch(
    root: Path,
    commit: str,
    targets: list[str],
    shared: list[str],
    metric: str,
    maximize: bool,
    prune: Pruning | None,
) -> Watch | None:
    """What each trial follows: `train`'s per-epoch `metric`, which the study records for
    every trial (so a later run with a pruner has the epochs it compares), and `prune`.
    None when the trials do not run `train`; then pruning is refused."""
    live = dvc_repo.stage_arg(root, STAGE, "--live-dir")
    runs_train = STAGE in dvc_repo.stage_order(root, targets)
    if live is None or not runs_train or STAGE in shared:
        if prune is not None:
            raise errors.UsageError(
                f"--prune-trials needs trials that run the {STAGE!r} stage with its "
                "DVCLive metrics (--live-dir in dvc.yaml), whose epochs it watches"
            )
        return None
    live_dir = live.relative_to(root)
    folder = (live_dir / METRICS_DIR).as_posix()
    known = trials.git(root, "ls-tree", "-r", "--name-only", commit, "--", folder).splitlines()
    tsv = metric_tsv(live_dir, metric).as_posix()
    if known and tsv not in known:
        if prune is None:
            return None  # no such curve to record, and no pruner asked for one
        names = [k.removeprefix(f"{folder}/").removesuffix(".tsv") for k in known]
        raise errors.UsageError(
            f"--prune-metric {metric}: train logs no such per-epoch metric (in {folder}: "
            f"{', '.join(n for n in names if n != 'epoch')})"
        )
    return Watch(metric, maximize, live_dir.as_posix(), prune)

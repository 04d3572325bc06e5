"""The adaptive mode (`--trials N`): Optuna's TPE over the space's `interval`/`range`/`choice`,
its study a journal file in the sweep's folder, so a rerun (or `--trials` raised) goes on from
the trials it finished."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from prefect.futures import as_completed

from pipelines.sweep import early_stopping, results, space, trials
from pipelines.sweep import report as sr
from pipelines.sweep.space import Trial


def storage(root: Path, name: str) -> Any:
    """The sweep's study journal, in its folder beside its clones."""
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    folder = trials.sweep_dir(root, name)
    folder.mkdir(parents=True, exist_ok=True)
    return JournalStorage(JournalFileBackend(str(folder / "optuna.journal")))


def plan(
    root: Path,
    name: str,
    user: list[str],
    extra: list[str],
    base_params: Path,
    seed: int,
    maximize: bool,
) -> tuple[list[str], list[Trial], Any]:
    """The space's corners, validated now; the study (kept in the sweep's folder), and its
    finished trials, which a rerun does not run again."""
    import optuna

    dims = space.optuna_space(user)
    corners = []
    for d in dims:
        picks = [d.low, d.high] if d.kind in ("float", "int") else list(d.choices)
        if d.kind == "fixed":
            continue
        for v in picks:
            values = {x.key: (v if x is d else _first(x)) for x in dims}
            overrides = (*space.sampled_overrides(dims, values), *extra)
            corners.append(Trial(f"{d.key}={v}", overrides))
    bad = space.validate(base_params, corners)
    if bad:
        raise space.refuse(bad, len(corners))
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        study_name=f"{name}@{trials.head_commit(root)}",  # experiments belong to a commit too
        storage=storage(root, name),
        direction="maximize" if maximize else "minimize",
        sampler=optuna.samplers.TPESampler(seed=seed),
        load_if_exists=True,
    )
    # A reloaded study's sampler starts its random draws again: seed it past the trials it has,
    # or a resumed sweep would propose its first trials a second time.
    study.sampler = optuna.samplers.TPESampler(seed=seed + len(study.trials))
    done = []
    for ft in study.get_trials(deepcopy=False):
        if ft.state.is_finished():
            over = (*space.sampled_overrides(dims, ft.params), *extra)
            done.append(Trial(space.trial_name(name, ft.number), over))
    swept = [d.key for d in dims if d.kind != "fixed"]
    return swept, done, study


def _first(d: space.Dimension) -> Any:
    return d.low if d.kind in ("float", "int") else d.choices[0]


def loop(
    study: Any,
    name: str,
    user: list[str],
    extra: list[str],
    base_params: Path,
    n: int,
    jobs: int,
    submit: Callable[[Trial], Any],
    collect: Callable[[Trial, Any], sr.TrialResult],
    metric: str,
) -> dict[str, sr.TrialResult]:
    """Ask TPE for trials, `jobs` in flight at a time, until the study has `n` finished; tell
    it each one's outcome, with the epochs of `metric` it reported (what pruners compare)."""
    from optuna.trial import TrialState

    dims = space.optuna_space(user)
    dist = {d.key: d.distribution() for d in dims if d.kind != "fixed"}
    finished = sum(t.state.is_finished() for t in study.get_trials(deepcopy=False))
    for ft in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        study.tell(ft.number, state=TrialState.FAIL)  # a killed sweep's: ask for them again
        study.enqueue_trial(ft.params)
    out: dict[str, sr.TrialResult] = {}
    in_flight: dict[Any, tuple[Any, Trial]] = {}
    while finished + len(in_flight) < n or in_flight:
        while finished + len(in_flight) < n and len(in_flight) < jobs:
            ot = study.ask(dist)
            t = Trial(
                space.trial_name(name, ot.number),
                (*space.sampled_overrides(dims, ot.params), *extra),
            )
            bad = space.validate(base_params, [t])
            if bad:
                study.tell(ot, state=TrialState.FAIL)
                out[t.name] = results.failed(t, bad[0].error)
                finished += 1
                continue
            in_flight[submit(t)] = (ot, t)
        if not in_flight:
            break
        future = next(as_completed(list(in_flight)))
        ot, t = in_flight.pop(future)
        result = collect(t, future)
        out[t.name] = result
        state = {sr.SUCCEEDED: TrialState.COMPLETE, sr.PRUNED: TrialState.PRUNED}.get(
            result.status, TrialState.FAIL
        )
        value = result.objective if state == TrialState.COMPLETE else None
        early_stopping.tell(study, ot, result.curve, metric, value, state)
        finished += 1
    return out


def finished(study: Any, name: str) -> dict[str, Any]:
    """The study's finished trials, by trial name: they are not run again."""
    done = study.get_trials(deepcopy=False)
    return {space.trial_name(name, ft.number): ft for ft in done if ft.state.is_finished()}


def study_outcome(trial: Trial, ft: Any, metric: str) -> sr.TrialResult:
    """A trial the study has finished that left no experiment: pruned, or else failed."""
    if ft.state.name != "PRUNED":
        return results.failed(trial, "failed in an earlier run of this sweep")
    metric = ft.user_attrs.get(early_stopping.METRIC_ATTR, metric)
    curve = ft.intermediate_values
    return results.pruned(trial, curve, metric, None, 0, when=" in an earlier run")

"""A sweep's plan, made before any task runs: its trials, every one's params validated, the
stages they share, what each trial follows, and which trials an earlier run already did.

A malformed override or an unknown key stops the sweep (exit 2); so does a value outside the
schema, unless `skip_invalid`, when that trial alone fails. With `origin`, so does a commit the
git URL lacks, or one with no default DVC remote.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from prefect import get_run_logger

from mnist_pipeline import errors
from pipelines import dvc_repo, overrides
from pipelines.sweep import adaptive, early_stopping, results, space, trials
from pipelines.sweep import report as sr
from pipelines.sweep.early_stopping import Watch
from pipelines.sweep.options import EarlyStopping, Execution, Promotion, SearchSpace
from pipelines.sweep.space import Invalid, Trial

THREADS_KEY = "compute.threads"


@dataclass
class Plan:
    """What the sweep runs, and where."""

    repo: Path
    name: str
    mode: str  # grid | optuna
    commit: str
    url: str | None  # the git URL the workers clone from (`origin`), or None: this machine
    targets: list[str]
    user: list[str]  # the overrides as given
    extra: list[str]  # what the sweep adds to every trial's overrides (compute.threads)
    files: list[str]  # the metrics files the trials' stages write
    base_params: Path  # params.yaml as the trials see it (the commit's)
    swept: list[str]
    trials: list[Trial]  # the grid's, or the study's finished trials
    study: Any  # the Optuna study (adaptive mode), or None
    shared: list[str]  # the stages every trial shares, run once
    metric: str  # the per-epoch metric the trials follow
    watch: Watch | None
    invalid: dict[str, Invalid] = field(default_factory=dict)
    expected: dict[str, dict[str, Any]] = field(default_factory=dict)  # the trials' params


def make(
    root: Path,
    search: SearchSpace,
    execution: Execution,
    stopping: EarlyStopping,
    promotion: Promotion,
) -> Plan:
    """The plan, or a `UsageError`/`ParamsError` before anything ran."""
    log = get_run_logger()
    repo = root.resolve()
    user = list(search.overrides)
    targets = list(execution.targets or ["evaluate"])
    mode = "optuna" if search.trials else "grid"
    name = search.name or space.default_name(user, mode)  # not N: --trials 20 extends a run of 10
    if promotion.register_model and not promotion.promote:
        raise errors.UsageError("--register needs --promote: the best trial is what is tagged")
    metric = stopping.metric or ("val/acc" if search.maximize else "val/loss")
    prune = early_stopping.settings(stopping, adaptive=bool(search.trials))
    dvc_repo.stage_order(repo, targets)  # an unknown stage is a usage error, before anything
    check_objective(repo, search.objective)
    commit = trials.head_commit(repo)
    if trials.git(repo, "status", "--porcelain", "--untracked-files=no"):
        log.warning("uncommitted changes are not part of the sweep: trials run at %s", commit)
    url = trials.origin_url(repo, execution.origin) if execution.origin else None
    if url:
        dvc_remote = trials.check_origin(repo, url, commit)
        log.info(
            "trials clone %s from %s; data through the DVC remote %s", commit[:12], url, dvc_remote
        )
    extra = thread_overrides(user, execution.jobs, execution.threads_per_trial)

    # params.yaml as the trials see it (the commit's), kept beside the sweep's clones
    base_params = committed_params(repo, commit, trials.sweep_dir(repo, name))
    if search.trials:
        swept, plan, study = adaptive.plan(
            repo, name, user, extra, base_params, search.seed, search.maximize
        )
    else:
        plan = space.grid_trials(name, user, extra)
        swept, study = space.swept_keys(user), None
    # A stage that reads a key set to one value for all trials is not shared either: the shared
    # clone runs the commit's params.
    shared = shared_stages(repo, targets, overridden_keys([*user, *extra]))
    watch = None  # a grid's trials are not followed: no study to tell their epochs to
    if study is not None:
        watch = early_stopping.watch(repo, commit, targets, shared, metric, search.maximize, prune)
    invalid = {b.trial.name: b for b in space.validate(base_params, plan)}
    if invalid and not search.skip_invalid:
        raise space.refuse(list(invalid.values()), len(plan))
    expected = {t.name: expected_params(base_params, t) for t in plan if t.name not in invalid}
    log.info(
        "sweep %s (%s): %d trials over %s at %s, %d at a time%s",
        name,
        mode,
        search.trials or len(plan),
        swept or "nothing",
        commit[:12],
        execution.jobs,
        f", {extra[0]}" if extra else "",
    )
    files = metric_files(repo, targets)
    return Plan(
        repo, name, mode, commit, url, targets, user, extra, files, base_params, swept, plan,
        study, shared, metric, watch, invalid, expected,
    )  # fmt: skip


def done_earlier(plan: Plan, objective: str) -> dict[str, sr.TrialResult]:
    """The trials an earlier run of the sweep finished (their experiments, or the study's
    outcome of those that left none), and the invalid ones: none of them runs."""
    log = get_run_logger()
    if plan.url:  # a killed sweep's trials may have pushed theirs to origin only
        trials.fetch_experiments(plan.repo, plan.url, plan.commit, plan.name)
    existing = trials.experiments(plan.repo)
    done: dict[str, sr.TrialResult] = {}
    for t in plan.trials:
        if t.name in plan.invalid:
            done[t.name] = results.failed(t, plan.invalid[t.name].error)
            continue
        exp = existing.get(t.name)
        if exp is None:
            continue
        if any(exp.params.get(k) != v for k, v in plan.expected[t.name].items()):
            raise errors.UsageError(
                f"experiment {t.name} exists with other params: name the sweep with --name, "
                f"or remove it (dvc exp remove {t.name})"
            )
        done[t.name] = results.outcome(
            t, exp, None, objective, plan.files, None, 0, "done earlier"
        )
    if plan.study is not None:  # the study's finished trials that left no experiment
        told = adaptive.finished(plan.study, plan.name)
        for t in plan.trials:
            r = done.setdefault(t.name, adaptive.study_outcome(t, told[t.name], plan.metric))
            r.curve = r.curve or dict(told[t.name].intermediate_values)
    if done:
        log.info("already done, not run again: %s", sorted(done))
    return done


def cores() -> int:
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def thread_overrides(user: list[str], jobs: int, threads: int | None) -> list[str]:
    """`compute.threads` for J trials sharing the cores, unless the sweep sets it itself."""
    if THREADS_KEY in overridden_keys(user):
        return []
    if threads is None:
        if jobs <= 1:
            return []  # one at a time: params.yaml's own setting
        threads = max(1, cores() // jobs)
    return [f"{THREADS_KEY}={threads}"]


def overridden_keys(given: list[str]) -> list[str]:
    """Every key the overrides set, swept or not."""
    return [overrides.strip_file(o).lstrip("+~").partition("=")[0] for o in given]


def committed_params(root: Path, commit: str, into: Path) -> Path:
    """params.yaml as the trials see it: the commit's, not the workspace's."""
    into.mkdir(parents=True, exist_ok=True)
    path = into / overrides.PARAMS_FILE
    path.write_text(trials.git(root, "show", f"{commit}:{overrides.PARAMS_FILE}") + "\n")
    return path


def expected_params(params_path: Path, trial: Trial) -> dict[str, Any]:
    _, text = overrides.overridden(params_path, list(trial.overrides))
    return dvc_repo.flatten(yaml.safe_load(text))


def shared_stages(root: Path, targets: list[str], swept: list[str]) -> list[str]:
    """The stages upstream of `targets` that no swept key reaches, directly or upstream."""
    spec = yaml.safe_load((root / "dvc.yaml").read_text()) or {}
    stages = spec.get("stages") or {}

    def reads(stage: str, key: str) -> bool:
        for entry in stages.get(stage, {}).get("params") or []:
            names = [entry] if isinstance(entry, str) else next(iter(entry.values())) or []
            for p in names if isinstance(names, list) else [names]:
                if key == p or key.startswith(f"{p}.") or p.startswith(f"{key}."):
                    return True
        return False

    order = dvc_repo.stage_order(root, targets)
    shared: list[str] = []
    for stage in order:
        upstream = [s for s in dvc_repo.stage_order(root, [stage]) if s != stage]
        if all(s in shared for s in upstream) and not any(reads(stage, k) for k in swept):
            shared.append(stage)
    return shared


def metric_files(root: Path, targets: list[str]) -> list[str]:
    """The metrics files the trials' stages write (the columns of the leaderboard)."""
    spec = yaml.safe_load((root / "dvc.yaml").read_text()) or {}
    files = []
    for stage in dvc_repo.stage_order(root, targets):
        for entry in (spec.get("stages") or {}).get(stage, {}).get("metrics") or []:
            files.append(next(iter(entry)) if isinstance(entry, dict) else entry)
    return files


def check_objective(root: Path, objective: str) -> None:
    """Refuse an objective that none of the repo's metrics has (when it has any yet)."""
    metrics = dvc_repo.metrics(root)
    if metrics and sr.find_metric(metrics, objective) is None:
        raise errors.UsageError(
            f"objective {objective!r} is not a metric of this repo (or is ambiguous); "
            f"metrics: {', '.join(sr.metric_names(metrics))}"
        )


def collect(plan: Plan, finished: dict[str, sr.TrialResult]) -> list[sr.TrialResult]:
    """The results in name order, as `dvc exp show` shows them: the leaderboard reads the
    experiments back from this repo (fetched from `origin` first), and takes the seconds of
    the trials done earlier from the previous report."""
    if plan.url:
        trials.fetch_experiments(plan.repo, plan.url, plan.commit, plan.name)
    shown = trials.experiments(plan.repo)
    earlier = results.earlier_seconds(results.results_file(plan.repo, plan.name))
    for key, r in finished.items():
        if r.seconds is None:
            r.seconds = earlier.get(key)
        if r.status != sr.SUCCEEDED:
            continue
        if key not in shown:
            r.status, r.note = sr.FAILED, "its experiment is not in dvc exp show"
            continue
        r.metrics = sr.other_metrics(shown[key].metrics, plan.files) or r.metrics
        r.rev = shown[key].rev
    return sorted(finished.values(), key=lambda r: r.name)

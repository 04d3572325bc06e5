"""Hyper-parameter sweeps as a Prefect flow: every trial a DVC experiment, J at a time.

    uv run python -m pipelines.sweep -S 'train.optimizer.lr=1.2e-2,4.8e-2' \\
        -S train.max_epochs=1 --jobs 2
    uv run python -m pipelines.sweep --trials 8 --jobs 2 \\
        -S 'train.optimizer.lr=tag(log,interval(3e-3,1e-1))' -S 'train.optimizer.name=adam,adamw'
    uv run python -m pipelines.sweep ... --engine dask [--cluster tcp://scheduler:8786]
    uv run python -m pipelines.sweep ... --cluster tcp://scheduler:8786 --origin <git url>

1. Before any task: the `-S` overrides become trials (`pipelines.sweep_space`: a grid, as
   `dvc exp run --queue -S` expands it, or, with `--trials N`, Optuna TPE over the same
   grammar's `interval`/`range`/`choice`), and every trial's params.yaml is validated before
   anything runs. A malformed override or an unknown key stops the sweep (exit 2); so does a
   value outside the schema, unless `--skip-invalid`, when that trial alone fails. With
   `--origin`, so does a commit the git URL lacks, or one with no default DVC remote.
2. `shared-stages`: the stages no overridden param reaches (`prepare`) run once per commit,
   into the cache (with `--origin`, then `dvc push`ed); every trial takes their outputs.
3. One `trial` task per trial (`pipelines.trials`): `dvc exp run -n <sweep>-<i> -S ...` in the
   trial's clone, then `dvc exp push` to this repo (with `--origin`, to that URL, and fetched
   from there), so `dvc exp show` lists it. `--jobs J` runs J at a time and sets
   `compute.threads` so that they share the cores. A transient failure (a killed process)
   is retried and `train` resumes from its checkpoint; any other failure fails that trial
   alone. A trial whose experiment already exists with the same params is not run again, so a
   killed sweep, run again, picks up where it stopped. In the adaptive mode each trial's
   per-epoch `val/acc` is followed and told to the study with its outcome; with
   `--prune-trials median|percentile` an Optuna pruner stops the hopeless ones where they run
   (`pipelines.pruning`): PRUNED in the study and the report, with no experiment.
4. `report`: a leaderboard table artifact, a markdown summary with the best trial and the
   command that applies it, `plots/sweeps/<sweep>.png` and `sweeps/<sweep>.json`.
5. `--promote`: `dvc exp apply` the best trial here (with `--origin`, its outputs pulled from
   the DVC remote first); with `--register`, tag it as the next model version
   (`pipelines.registry`).

Exit code: 0 when every trial succeeded (or was pruned), 1 when some failed, 2 for bad params.
"""

# No `from __future__ import annotations`: Prefect validates flow parameters from the
# annotations (see pipelines/flow.py).
import argparse
import dataclasses
import json
import os
import re
import sys
from pathlib import Path
from typing import Any

import yaml
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.futures import as_completed
from prefect.task_runners import ThreadPoolTaskRunner
from prefect.tasks import exponential_backoff

from mnist_pipeline import errors
from pipelines import dvc_repo, overrides, pruning, sweep_space, trials, user_values
from pipelines import sweep_report as sr
from pipelines.flow import MODEL_NAME, register_version
from pipelines.registry import Bump
from pipelines.retry import StepFailed, exception_of, retry_condition
from pipelines.sweep_space import Trial

LEADERBOARD_KEY, SUMMARY_KEY = "mnist-sweep-leaderboard", "mnist-sweep-summary"
RESULTS_DIR, PLOTS_DIR = Path("sweeps"), Path("plots") / "sweeps"
THREADS_KEY = "compute.threads"
_ERROR_LINE = re.compile(r"^\s*(\w+\.)*\w*(Error|Exception): |^error: ")


class SweepFailed(errors.StageError):
    """Some trials failed; the report says which and why."""


def cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


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


@task(name="shared-stages", cache_policy=NO_CACHE, retry_condition_fn=retry_condition)
def run_shared_stages(
    root: Path,
    sweep: str,
    commit: str,
    cache: Path,
    stages: list[str],
    timeout_s: float,
    push: bool = False,
) -> dict[str, bytes]:
    """`dvc repro` the stages every trial shares once, in the commit's shared clone (one for
    all the sweeps at this commit), and with `push` `dvc push` their outputs to the DVC remote;
    returns the tracked files it changed, which every trial starts from (path: bytes)."""
    logger = get_run_logger()
    ws = trials.workspace(trials.Source(str(root), cache), trials.SHARED, commit[:12], commit)
    done = trials.run_shared(ws, stages, timeout_s, echo=logger.info)
    logger.info("shared stages %s: ran %s", stages, done.ran or "none (up to date)")
    if push and stages:
        pushed = dvc_repo.run(ws, ["push", *stages], timeout_s, echo=logger.info)
        if not pushed.ok:
            raise StepFailed(f"dvc push {' '.join(stages)}", pushed.returncode, pushed.tail)
    return done.changed


@task(
    name="trial",
    task_run_name="{name}",
    cache_policy=NO_CACHE,  # DVC is the cache: its run cache and the experiments
    retry_condition_fn=retry_condition,
    retry_jitter_factor=0.5,
)
def run_trial(
    source: trials.Source,
    sweep: str,
    commit: str,
    name: str,
    trial_overrides: list[str],
    targets: list[str],
    shared: list[str],
    shared_files: dict[str, bytes],
    timeout_s: float,
    watch: pruning.Watch | None = None,
) -> trials.TrialRun:
    """One trial; with `watch`, its per-epoch metric is followed, and it is pruned when the
    pruner (if any) says so: then it returns a `pruned` run without an experiment."""
    logger = get_run_logger()
    ws = trials.workspace(source, sweep, name, commit)
    trials.take_shared(ws, shared_files)
    logger.info("trial %s in %s: %s", name, ws, " ".join(trial_overrides))
    watcher = pruning.Watcher(watch, ws) if watch is not None else None
    try:
        run = trials.run_trial(
            ws,
            name,
            trial_overrides,
            targets,
            shared,
            shared_cache=source.here,
            timeout_s=timeout_s,
            echo=lambda line: logger.info("[%s] %s", name, line),
            stop=watcher,
        )
    except trials.TrialStopped as stopped:  # only a watcher stops a trial
        curve = watcher.finish()
        logger.info("trial %s: pruned %s", name, pruning.describe(curve, watch.metric))
        return trials.TrialRun(
            name, "", {}, stopped.seconds, worker=stopped.worker, curve=curve, pruned=True
        )
    if watcher is not None:
        run = dataclasses.replace(run, curve=watcher.finish(reused=run.reused))
    logger.info(
        "trial %s: experiment %s in %.1f s (ran %s; from the run cache %s)",
        name,
        run.rev[:7],
        run.seconds,
        run.ran or "nothing",
        run.cached or "nothing",
    )
    return run


@task(name="report", cache_policy=NO_CACHE)
def publish_report(
    root: Path,
    sweep: str,
    commit: str,
    mode: str,
    results: list[sr.TrialResult],
    swept: list[str],
    objective: str,
    maximize: bool,
) -> dict[str, Any]:
    """The leaderboard and summary artifacts, the results file and the plot."""
    results_file = root / RESULTS_DIR / f"{sweep}.json"
    plot_file = root / PLOTS_DIR / f"{sweep}.png"
    from mnist_pipeline.atomic import write_json

    data = sr.as_json(sweep, commit, mode, objective, maximize, swept, results)
    write_json(results_file, data)
    sr.plot(plot_file, results, swept, objective, maximize)
    rel = [p.relative_to(root) for p in (plot_file, results_file)]
    create_table_artifact(
        sr.leaderboard(results, swept, objective, maximize),
        key=LEADERBOARD_KEY,
        description=f"Sweep {sweep}: every trial, best first",
    )
    create_markdown_artifact(
        sr.summary_markdown(sweep, results, swept, objective, maximize, *rel),
        key=SUMMARY_KEY,
        description=f"Sweep {sweep}",
    )
    return data


def _result(
    trial: Trial,
    exp: trials.Experiment | None,
    run: trials.TrialRun | None,
    objective: str,
    files: list[str],
    seconds: float | None,
    attempts: int,
    note: str = "",
) -> sr.TrialResult:
    metrics = exp.metrics if exp else (run.metrics if run else {})
    value = sr.find_metric(metrics, objective)
    status = sr.SUCCEEDED
    if value is None:
        status, note = sr.FAILED, note or f"no metric {objective!r} in {sorted(metrics)}"
    return sr.TrialResult(
        name=trial.name,
        status=status,
        values=trial.values,
        objective=value,
        metrics=sr.other_metrics(metrics, files),
        seconds=seconds,
        attempts=attempts,
        rev=(exp.rev if exp else run.rev if run else None),
        note=note,
        ran=list(run.ran) if run else [],
        worker=run.worker if run else "",
        curve=dict(run.curve) if run else {},
    )


def _pruned(
    trial: Trial,
    curve: dict[int, float],
    metric: str,
    seconds: float | None,
    attempts: int,
    worker: str = "",
    when: str = "",
) -> sr.TrialResult:
    """A trial the pruner stopped: no experiment, no objective, its epochs until then."""
    note = f"pruned{when} {pruning.describe(curve, metric)}"
    return sr.TrialResult(
        trial.name,
        sr.PRUNED,
        trial.values,
        seconds=seconds,
        attempts=attempts,
        note=note,
        ran=[pruning.STAGE],
        worker=worker,
        curve=dict(sorted(curve.items())),
    )


def _failed(trial: Trial, note: str, attempts: int = 0, seconds: float | None = None):
    return sr.TrialResult(
        trial.name, sr.FAILED, trial.values, None, {}, seconds, attempts, None, note
    )


def _metric_files(root: Path, targets: list[str]) -> list[str]:
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


@flow(name="mnist-sweep")
def sweep(
    root: str = ".",
    overrides: list[str] | None = None,
    name: str | None = None,
    objective: str = "test.acc",
    maximize: bool = True,
    trials_n: int | None = None,
    seed: int = 0,
    jobs: int = 1,
    threads_per_trial: int | None = None,
    targets: list[str] | None = None,
    skip_invalid: bool = False,
    retries: int = 2,
    retry_delay_s: float = 10.0,
    trial_timeout_s: float = 6 * 3600,
    promote: bool = False,
    register_model: bool = False,
    model_name: str = MODEL_NAME,
    bump: Bump = "minor",
    min_test_acc: float = 0.98,
    origin: str | None = None,
    prune_trials: pruning.Pruner = "none",
    prune_metric: str | None = None,
    prune_startup_trials: int = 5,
    prune_warmup_epochs: int = 1,
    prune_percentile: float = 25.0,
) -> dict[str, Any]:
    """Run a sweep of DVC experiments in `root` and report it.

    Args:
        root: the DVC repository; trials run at its HEAD commit.
        overrides: `-S` overrides of `dvc exp run`; comma lists, range() and choice() sweep.
        name: the sweep's name, the prefix of its experiments; default: from the space.
        objective: a metric, `key` or `file:key`, e.g. `test.acc` from evaluate.
        maximize: maximise the objective (False: minimise it).
        trials_n: Optuna TPE with this many trials instead of the grid.
        seed: the TPE sampler's seed.
        jobs: trials running at once.
        threads_per_trial: `compute.threads` of each trial; default: the cores / jobs.
        targets: the stages each trial runs, with their upstream; default: evaluate.
        skip_invalid: a trial whose params do not validate fails alone instead of the sweep.
        retries: retries of a trial after a transient failure (its training resumes).
        retry_delay_s: delay before the first retry; doubled for each later one.
        trial_timeout_s: a trial still running after this long is stopped (and retried).
        promote: `dvc exp apply` the best trial to the workspace.
        register_model: with promote, tag it as the next `<model_name>@vX.Y.Z`.
        model_name: the dvc.yaml artifact to register.
        bump: which part of the version to increase.
        min_test_acc: the test accuracy a model needs to be registered.
        origin: a git URL (or a git remote's name) every worker can clone the commit from;
            default: none, the trials run in clones of `root` with its DVC cache (one machine).
        prune_trials: with trials_n, stop hopeless trials on their per-epoch metric: none,
            median or percentile (Optuna's pruners; see pipelines.pruning).
        prune_metric: the per-epoch metric `train` logs with DVCLive that pruning reads;
            default: val/acc when maximising, val/loss when minimising.
        prune_startup_trials: no pruning until this many trials completed.
        prune_warmup_epochs: a trial's first epochs are never pruned.
        prune_percentile: with percentile, a trial not among the best this % at an epoch is
            pruned.
    """
    logger = get_run_logger()
    # First: they become folders, refs and git arguments (and may come from any flow run).
    user_values.check(name=name, origin=origin, prune_metric=prune_metric, model_name=model_name)
    repo = Path(root).resolve()
    user = list(overrides or [])
    targets = list(targets or ["evaluate"])
    mode = "optuna" if trials_n else "grid"
    name = name or sweep_space.default_name(user, mode)  # not N: --trials 20 extends a run of 10
    if register_model and not promote:
        raise errors.UsageError("--register needs --promote: the best trial is what is tagged")
    metric = prune_metric or ("val/acc" if maximize else "val/loss")
    prune = _pruning(
        prune_trials, trials_n, prune_startup_trials, prune_warmup_epochs, prune_percentile
    )
    dvc_repo.stage_order(repo, targets)  # an unknown stage is a usage error, before anything
    check_objective(repo, objective)
    commit = trials.head_commit(repo)
    if trials.git(repo, "status", "--porcelain", "--untracked-files=no"):
        logger.warning("uncommitted changes are not part of the sweep: trials run at %s", commit)
    url = trials.origin_url(repo, origin) if origin else None
    if url:
        dvc_remote = trials.check_origin(repo, url, commit)
        logger.info(
            "trials clone %s from %s; data through the DVC remote %s", commit[:12], url, dvc_remote
        )
    extra = thread_overrides(user, jobs, threads_per_trial)
    files = _metric_files(repo, targets)

    # params.yaml as the trials see it (the commit's), kept beside the sweep's clones
    base_params = committed_params(repo, commit, trials.sweep_dir(repo, name))
    if trials_n:
        swept, plan, study = _optuna_plan(repo, name, user, extra, base_params, seed, maximize)
    else:
        plan = sweep_space.grid_trials(name, user, extra)
        swept, study = sweep_space.swept_keys(user), None
    # A stage that reads a key set to one value for all trials is not shared either: the shared
    # clone runs the commit's params.
    shared = shared_stages(repo, targets, overridden_keys([*user, *extra]))
    watch = None  # a grid's trials are not followed: no study to tell their epochs to
    if study is not None:
        watch = _watch(repo, commit, targets, shared, metric, maximize, prune)
    invalid = {b.trial.name: b for b in sweep_space.validate(base_params, plan)}
    if invalid and not skip_invalid:
        raise sweep_space.refuse(list(invalid.values()), len(plan))
    expected = {t.name: expected_params(base_params, t) for t in plan if t.name not in invalid}
    logger.info(
        "sweep %s (%s): %d trials over %s at %s, %d at a time%s",
        name,
        mode,
        trials_n or len(plan),
        swept or "nothing",
        commit[:12],
        jobs,
        f", {extra[0]}" if extra else "",
    )

    if url:  # a killed sweep's trials may have pushed theirs to origin only
        trials.fetch_experiments(repo, url, commit, name)
    existing = trials.experiments(repo)
    results: dict[str, sr.TrialResult] = {}
    for t in plan:
        if t.name in invalid:
            results[t.name] = _failed(t, invalid[t.name].error)
            continue
        exp = existing.get(t.name)
        if exp is None:
            continue
        if _differs(exp.params, expected[t.name]):
            raise errors.UsageError(
                f"experiment {t.name} exists with other params: name the sweep with --name, "
                f"or remove it (dvc exp remove {t.name})"
            )
        results[t.name] = _result(t, exp, None, objective, files, None, 0, "done earlier")
    if study is not None:  # the study's finished trials that left no experiment
        told = _finished(study, name)
        for t in plan:
            r = results.setdefault(t.name, _study_outcome(t, told[t.name], metric))
            r.curve = r.curve or dict(told[t.name].intermediate_values)
    if results:
        logger.info("already done, not run again: %s", sorted(results))

    cache = trials.cache_dir(repo)
    source = trials.Source(url) if url else trials.Source(str(repo), cache)
    todo = [t for t in plan if t.name not in results]
    shared_files: dict[str, bytes] = {}
    if todo or trials_n:
        shared_files = run_shared_stages(
            repo, name, commit, cache, shared, trial_timeout_s, push=not source.here
        )
    trial_task = run_trial.with_options(
        retries=retries, retry_delay_seconds=exponential_backoff(backoff_factor=retry_delay_s)
    )

    def submit(t: Trial) -> Any:
        # The study's finished trials as they are now: what the pruner compares this one with.
        past = pruning.snapshot(study) if watch and watch.pruning else ()
        return trial_task.submit(
            source,
            name,
            commit,
            t.name,
            list(t.overrides),
            targets,
            shared,
            shared_files,
            trial_timeout_s,
            watch=dataclasses.replace(watch, past=past) if watch else None,
        )

    def collect(t: Trial, future: Any) -> sr.TrialResult:
        future.wait()  # the final state, with its result (the API copy has none)
        state = future.state
        attempts = _attempts(future)
        if state.is_completed():
            run = state.result()
            if run.pruned:
                return _pruned(t, run.curve, metric, run.seconds, attempts, run.worker)
            return _result(t, None, run, objective, files, run.seconds, attempts)
        err = exception_of(state)
        note = _cause(str(err) if err else state.message or "failed")
        logger.warning("trial %s failed: %s", t.name, note.splitlines()[0])
        return _failed(t, note, attempts)

    if study is None:
        futures = {t.name: (t, submit(t)) for t in todo}
        for t, future in futures.values():
            future.wait()
            results[t.name] = collect(t, future)
    else:
        results.update(
            _optuna_loop(
                study, name, user, extra, base_params, trials_n, jobs, submit, collect, metric
            )
        )

    # The leaderboard reads the experiments back from this repo: what `dvc exp show` shows.
    if url:
        trials.fetch_experiments(repo, url, commit, name)
    shown = trials.experiments(repo)
    earlier = _earlier_seconds(repo / RESULTS_DIR / f"{name}.json")
    for key, r in results.items():
        if r.seconds is None:
            r.seconds = earlier.get(key)
        if r.status != sr.SUCCEEDED:
            continue
        if key not in shown:
            r.status, r.note = sr.FAILED, "its experiment is not in dvc exp show"
            continue
        r.metrics = sr.other_metrics(shown[key].metrics, files) or r.metrics
        r.rev = shown[key].rev
    ordered = sorted(results.values(), key=lambda r: r.name)
    data = publish_report(repo, name, commit, mode, ordered, swept, objective, maximize)
    c = data["counts"]
    logger.info(
        "sweep %s: %d succeeded, %d failed, %d pruned; best %s",
        name,
        c["succeeded"],
        c["failed"],
        c["pruned"],
        data["best"],
    )

    registered = None
    if promote and data["best"]:
        promote_best(repo, data["best"], targets, url)
        if register_model:
            best = results[data["best"]]
            declared = dvc_repo.artifacts(repo)
            reg = register_version(
                repo,
                model_name,
                bump,
                best.metrics.get("test.acc", best.objective if objective == "test.acc" else None),
                min_test_acc,
                None,
                declared.get(model_name),
                return_state=True,
            ).result()
            registered = reg.tag if reg is not None else None
    data["registered"] = registered
    if c["failed"]:
        raise SweepFailed(
            f"sweep {name}: {c['failed']} of {len(ordered)} trials failed "
            f"({c['succeeded']} succeeded, {c['pruned']} pruned); see "
            f"{RESULTS_DIR / (name + '.json')}"
        )
    return data


def promote_best(root: Path, best: str, targets: list[str], url: str | None = None) -> None:
    """`dvc exp apply` the best trial. Outputs of stages the trials did not run (prune, export)
    may be missing from the cache if this clone never had them: that is a warning, not a
    failure, since the trial's own outputs are in place (`dvc repro` makes the rest). A trial
    of another machine (`url`) left its outputs in the DVC remote: they are pulled first."""
    logger = get_run_logger()
    if url:
        done = dvc_repo.run(root, ["exp", "pull", "--", url, best], 600, echo=logger.info)
        if not done.ok:
            raise StepFailed(f"dvc exp pull {best}", done.returncode, done.tail)
    done = dvc_repo.run(root, ["exp", "apply", "--", best], 600, echo=logger.info)
    if not done.ok:
        missing = _checkout_failed(done.tail)
        own = {
            p.relative_to(root).as_posix()
            for stage in dvc_repo.stage_order(root, targets)
            for p in dvc_repo.out_paths(root, stage)
        }
        if not missing or any(m.rstrip("/") in own for m in missing):
            raise StepFailed(f"dvc exp apply {best}", done.returncode, done.tail)
        logger.warning(
            "applied %s; not in the cache, from stages the trials did not run: %s "
            "(dvc repro or dvc pull brings them)",
            best,
            ", ".join(missing),
        )
        return
    logger.info("applied %s to the workspace: params.yaml, dvc.lock and outputs", best)


def _checkout_failed(output: str) -> list[str]:
    """The targets of DVC's 'Checkout failed for following targets:' message."""
    lines = output.splitlines()
    for i, line in enumerate(lines):
        if "Checkout failed for following targets" in line:
            rest = lines[i + 1 :]
            return [ln.strip() for ln in rest if ln.strip() and not ln.startswith(("Is ", "<"))]
    return []


def _cause(text: str) -> str:
    """A failure's first line, and the error line of the output it carries (the cause)."""
    lines = text.splitlines()
    errors_ = [ln.strip() for ln in lines[1:] if _ERROR_LINE.search(ln)]
    return "\n".join([lines[0], *errors_[-1:], *lines[1:]]) if lines else text


def _earlier_seconds(results_file: Path) -> dict[str, float]:
    """Each trial's seconds from the sweep's previous report, for the trials done then."""
    try:
        data = json.loads(results_file.read_text())
    except (OSError, ValueError):
        return {}
    return {t["name"]: t["seconds"] for t in data.get("trials", []) if t.get("seconds")}


def _differs(have: dict[str, Any], want: dict[str, Any]) -> bool:
    return any(have.get(k) != v for k, v in want.items())


def _attempts(future: Any) -> int:
    try:
        from prefect.client.orchestration import get_client

        with get_client(sync_client=True) as client:
            return client.read_task_run(future.task_run_id).run_count
    except Exception:  # the count is for the report only
        return 1


# --- adaptive mode ---------------------------------------------------------------------------


def _storage(root: Path, name: str) -> Any:
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    folder = trials.sweep_dir(root, name)
    folder.mkdir(parents=True, exist_ok=True)
    return JournalStorage(JournalFileBackend(str(folder / "optuna.journal")))


def _optuna_plan(
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

    dims = sweep_space.optuna_space(user)
    corners = []
    for d in dims:
        picks = [d.low, d.high] if d.kind in ("float", "int") else list(d.choices)
        if d.kind == "fixed":
            continue
        for v in picks:
            values = {x.key: (v if x is d else _first(x)) for x in dims}
            corners.append(
                Trial(
                    f"{d.key}={v}", tuple([*sweep_space.sampled_overrides(dims, values), *extra])
                )
            )
    bad = sweep_space.validate(base_params, corners)
    if bad:
        raise sweep_space.refuse(bad, len(corners))
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        study_name=f"{name}@{trials.head_commit(root)}",  # experiments belong to a commit too
        storage=_storage(root, name),
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
            over = [*sweep_space.sampled_overrides(dims, ft.params), *extra]
            done.append(Trial(sweep_space.trial_name(name, ft.number), tuple(over)))
    swept = [d.key for d in dims if d.kind != "fixed"]
    return swept, done, study


def _first(d: sweep_space.Dimension) -> Any:
    return d.low if d.kind in ("float", "int") else d.choices[0]


def _optuna_loop(
    study: Any,
    name: str,
    user: list[str],
    extra: list[str],
    base_params: Path,
    n: int,
    jobs: int,
    submit: Any,
    collect: Any,
    metric: str,
) -> dict[str, sr.TrialResult]:
    """Ask TPE for trials, `jobs` in flight at a time, until the study has `n` finished; tell
    it each one's outcome, with the epochs of `metric` it reported (what pruners compare)."""
    from optuna.trial import TrialState

    dims = sweep_space.optuna_space(user)
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
                sweep_space.trial_name(name, ot.number),
                tuple([*sweep_space.sampled_overrides(dims, ot.params), *extra]),
            )
            bad = sweep_space.validate(base_params, [t])
            if bad:
                study.tell(ot, state=TrialState.FAIL)
                out[t.name] = _failed(t, bad[0].error)
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
        pruning.tell(study, ot, result.curve, metric, value, state)
        finished += 1
    return out


def _pruning(
    pruner: str, trials_n: int | None, startup: int, warmup: int, percentile: float
) -> pruning.Pruning | None:
    """The pruner's settings, or None; refused for a grid (no study to compare with)."""
    if pruner == "none":
        return None
    if not trials_n:
        raise errors.UsageError(
            f"--prune-trials {pruner} needs --trials: a grid has no study whose finished "
            "trials a pruner could compare a trial with"
        )
    if startup < 0 or warmup < 0 or not 0.0 <= percentile <= 100.0:
        raise errors.UsageError(
            "--prune-startup-trials and --prune-warmup-epochs must be at least 0, "
            "--prune-percentile between 0 and 100"
        )
    return pruning.Pruning(pruner, startup, warmup, percentile)


def _watch(
    root: Path,
    commit: str,
    targets: list[str],
    shared: list[str],
    metric: str,
    maximize: bool,
    prune: pruning.Pruning | None,
) -> pruning.Watch | None:
    """What each trial follows: `train`'s per-epoch `metric`, which the study records for
    every trial (so a later run with a pruner has the epochs it compares), and `prune`.
    None when the trials do not run `train`; then pruning is refused."""
    live = dvc_repo.stage_arg(root, pruning.STAGE, "--live-dir")
    runs_train = pruning.STAGE in dvc_repo.stage_order(root, targets)
    if live is None or not runs_train or pruning.STAGE in shared:
        if prune is not None:
            raise errors.UsageError(
                f"--prune-trials needs trials that run the {pruning.STAGE!r} stage with its "
                "DVCLive metrics (--live-dir in dvc.yaml), whose epochs it watches"
            )
        return None
    live_dir = live.relative_to(root)
    folder = (live_dir / pruning.METRICS_DIR).as_posix()
    known = trials.git(root, "ls-tree", "-r", "--name-only", commit, "--", folder).splitlines()
    tsv = pruning.metric_tsv(live_dir, metric).as_posix()
    if known and tsv not in known:
        if prune is None:
            return None  # no such curve to record, and no pruner asked for one
        names = [k.removeprefix(f"{folder}/").removesuffix(".tsv") for k in known]
        raise errors.UsageError(
            f"--prune-metric {metric}: train logs no such per-epoch metric (in {folder}: "
            f"{', '.join(n for n in names if n != 'epoch')})"
        )
    return pruning.Watch(metric, maximize, live_dir.as_posix(), prune)


def _finished(study: Any, name: str) -> dict[str, Any]:
    """The study's finished trials, by trial name: they are not run again."""
    done = study.get_trials(deepcopy=False)
    return {sweep_space.trial_name(name, ft.number): ft for ft in done if ft.state.is_finished()}


def _study_outcome(trial: Trial, ft: Any, metric: str) -> sr.TrialResult:
    """A trial the study has finished that left no experiment: pruned, or else failed."""
    if ft.state.name != "PRUNED":
        return _failed(trial, "failed in an earlier run of this sweep")
    metric = ft.user_attrs.get(pruning.METRIC_ATTR, metric)
    return _pruned(trial, ft.intermediate_values, metric, None, 0, when=" in an earlier run")


# --- command line ----------------------------------------------------------------------------


def task_runner(engine: str, jobs: int, cluster: str | None) -> Any:
    """Threads in this process (each trial is a subprocess), or a Dask cluster."""
    if engine == "threads" and cluster is None:
        return ThreadPoolTaskRunner(max_workers=max(1, jobs))
    from prefect_dask import DaskTaskRunner

    if cluster:
        return DaskTaskRunner(address=cluster)
    return DaskTaskRunner(
        cluster_class="distributed.LocalCluster",
        cluster_kwargs={"n_workers": max(1, jobs), "threads_per_worker": 1, "processes": True},
    )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m pipelines.sweep",
        description=__doc__.splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--root", default=".", help="the DVC repository (default: here)")
    p.add_argument(
        "-S",
        "--set-param",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUES",
        help="a param and its values, as `dvc exp run --queue -S` (repeatable)",
    )
    p.add_argument("--name", help="the sweep's name, its experiments' prefix")
    p.add_argument("--objective", default="test.acc", help="a metric: key or file:key")
    p.add_argument("--minimize", action="store_true", help="minimise the objective")
    p.add_argument("--trials", type=int, help="Optuna TPE with this many trials (not a grid)")
    p.add_argument("--seed", type=int, default=0, help="the TPE sampler's seed")
    p.add_argument("-j", "--jobs", type=int, default=1, help="trials at once")
    p.add_argument("--threads-per-trial", type=int, help="compute.threads of each trial")
    p.add_argument("--target", dest="targets", action="append", help="stage(s) a trial runs")
    p.add_argument("--skip-invalid", action="store_true", help="invalid trials fail alone")
    p.add_argument("--engine", choices=["threads", "dask"], default="threads")
    p.add_argument("--cluster", help="a Dask scheduler, e.g. tcp://host:8786 (implies dask)")
    p.add_argument(
        "--origin",
        metavar="GIT_URL",
        help="workers clone the commit from this git URL (or remote) and move data through "
        "the DVC remote, not this repo's folder and cache (default: one machine)",
    )
    p.add_argument("--retries", type=int, default=2)
    p.add_argument("--retry-delay-s", type=float, default=10.0)
    p.add_argument("--trial-timeout-s", type=float, default=6 * 3600)
    p.add_argument("--promote", action="store_true", help="dvc exp apply the best trial")
    p.add_argument("--register", action="store_true", help="with --promote: tag it (GTO)")
    p.add_argument("--model-name", default=MODEL_NAME)
    p.add_argument("--bump", choices=["major", "minor", "patch"], default="minor")
    p.add_argument("--min-test-acc", type=float, default=0.98)
    g = p.add_argument_group("pruning (with --trials; see pipelines.pruning)")
    g.add_argument(
        "--prune-trials",
        choices=pruning.PRUNERS,
        default="none",
        help="stop hopeless trials on their per-epoch metric with this Optuna pruner",
    )
    g.add_argument("--prune-metric", help="default: val/acc (val/loss with --minimize)")
    g.add_argument(
        "--prune-startup-trials", type=int, default=5, help="completed trials before any pruning"
    )
    g.add_argument(
        "--prune-warmup-epochs", type=int, default=1, help="first epochs of a trial never pruned"
    )
    g.add_argument(
        "--prune-percentile", type=float, default=25.0, help="percentile: keep the best P %%"
    )
    args = p.parse_args(argv)
    if args.jobs < 1 or (args.trials is not None and args.trials < 1):
        p.error("--jobs and --trials must be at least 1")
    return args


def run_from_args(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    runner = task_runner(args.engine, args.jobs, args.cluster)
    return sweep.with_options(task_runner=runner)(
        root=args.root,
        overrides=args.overrides,
        name=args.name,
        objective=args.objective,
        maximize=not args.minimize,
        trials_n=args.trials,
        seed=args.seed,
        jobs=args.jobs,
        threads_per_trial=args.threads_per_trial,
        targets=args.targets,
        skip_invalid=args.skip_invalid,
        retries=args.retries,
        retry_delay_s=args.retry_delay_s,
        trial_timeout_s=args.trial_timeout_s,
        promote=args.promote,
        register_model=args.register,
        model_name=args.model_name,
        bump=args.bump,
        min_test_acc=args.min_test_acc,
        origin=args.origin,
        prune_trials=args.prune_trials,
        prune_metric=args.prune_metric,
        prune_startup_trials=args.prune_startup_trials,
        prune_warmup_epochs=args.prune_warmup_epochs,
        prune_percentile=args.prune_percentile,
    )


def main(argv: list[str] | None = None) -> int:
    """Exit 0 when every trial succeeded, 1 when some failed, 2 for bad params or names."""
    return errors.run(run_from_args, argv)


if __name__ == "__main__":
    sys.exit(main())

"""Running a sweep's plan: the stages every trial shares once, then one `trial` task per trial,
J at a time (the flow holds that limit, not the task runner), each a DVC experiment in its own
clone (`pipelines.sweep.trials`).

A transient failure (a killed process) is retried and `train` resumes from its checkpoint;
any other failure fails that trial alone. In the adaptive mode each trial's per-epoch metric
is followed and told to the study with its outcome; with a pruner, the hopeless ones are
stopped where they run (`pipelines.sweep.early_stopping`).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.futures import as_completed
from prefect.tasks import exponential_backoff

from pipelines import dvc_repo
from pipelines.retry import StepFailed, exception_of, retry_condition
from pipelines.sweep import adaptive, early_stopping, results, trials
from pipelines.sweep import report as sr
from pipelines.sweep.options import Execution, SearchSpace
from pipelines.sweep.plan import Plan
from pipelines.sweep.space import Trial


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
    watch: early_stopping.Watch | None = None,
) -> trials.TrialRun:
    """One trial; with `watch`, its per-epoch metric is followed, and it is pruned when the
    pruner (if any) says so: then it returns a `pruned` run without an experiment."""
    logger = get_run_logger()
    ws = trials.workspace(source, sweep, name, commit)
    trials.take_shared(ws, shared_files)
    logger.info("trial %s in %s: %s", name, ws, " ".join(trial_overrides))
    watcher = early_stopping.Watcher(watch, ws) if watch is not None else None
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
        assert watch is not None and watcher is not None
        curve = watcher.finish()
        logger.info("trial %s: pruned %s", name, early_stopping.describe(curve, watch.metric))
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


def run(
    plan: Plan, search: SearchSpace, execution: Execution, done: dict[str, sr.TrialResult]
) -> dict[str, sr.TrialResult]:
    """The shared stages, then every trial not `done`: the grid's all at once (J run at a
    time), or those the study asks for until it has `search.trials` finished."""
    logger = get_run_logger()
    cache = trials.cache_dir(plan.repo)
    source = trials.Source(plan.url) if plan.url else trials.Source(str(plan.repo), cache)
    todo = [t for t in plan.trials if t.name not in done]
    shared_files: dict[str, bytes] = {}
    timeout_s = execution.trial_timeout_s
    if todo or search.trials:
        shared_files = run_shared_stages(
            plan.repo, plan.name, plan.commit, cache, plan.shared, timeout_s, push=not source.here
        )
    trial_task = run_trial.with_options(
        retries=execution.retries,
        retry_delay_seconds=exponential_backoff(backoff_factor=execution.retry_delay_s),
    )
    watch, study = plan.watch, plan.study

    def submit(t: Trial) -> Any:
        # The study's finished trials as they are now: what the pruner compares this one with.
        past = early_stopping.snapshot(study) if watch and watch.pruning else ()
        return trial_task.submit(
            source,
            plan.name,
            plan.commit,
            t.name,
            list(t.overrides),
            plan.targets,
            plan.shared,
            shared_files,
            timeout_s,
            watch=dataclasses.replace(watch, past=past) if watch else None,
        )

    def collect(t: Trial, future: Any) -> sr.TrialResult:
        future.wait()  # the final state, with its result (the API copy has none)
        state = future.state
        attempts = _attempts(future)
        if state.is_completed():
            run = state.result()
            if run.pruned:
                return results.pruned(t, run.curve, plan.metric, run.seconds, attempts, run.worker)
            return results.outcome(
                t, None, run, search.objective, plan.files, run.seconds, attempts
            )
        err = exception_of(state)
        note = results.cause(str(err) if err else state.message or "failed")
        logger.warning("trial %s failed: %s", t.name, note.splitlines()[0])
        return results.failed(t, note, attempts)

    if study is None:
        # J in flight at a time, whatever the task runner: a deployment's flow run has
        # Prefect's default one, with no limit of its own (the command line bounds it too).
        waiting, in_flight = list(todo), dict[Any, Trial]()
        while waiting or in_flight:
            while waiting and len(in_flight) < execution.jobs:
                t = waiting.pop(0)
                in_flight[submit(t)] = t
            future = next(as_completed(list(in_flight)))
            t = in_flight.pop(future)
            done[t.name] = collect(t, future)
        return done
    n = search.trials or 0
    ran = adaptive.loop(
        study, plan.name, plan.user, plan.extra, plan.base_params, n, execution.jobs, submit,
        collect, plan.metric,
    )  # fmt: skip
    return {**done, **ran}


def _attempts(future: Any) -> int:
    try:
        from prefect.client.orchestration import get_client

        with get_client(sync_client=True) as client:
            return client.read_task_run(future.task_run_id).run_count
    except Exception:  # the count is for the report only
        return 1

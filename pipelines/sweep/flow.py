"""The sweep flow: plan, run, collect, promote (see `pipelines.sweep`).

No `from __future__ import annotations`: Prefect validates flow parameters from the
annotations (see pipelines/flow.py).
"""

from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE

from mnist_pipeline import errors
from pipelines import user_values
from pipelines.sweep import plan as planning
from pipelines.sweep import promote, results, run
from pipelines.sweep import report as sr
from pipelines.sweep.options import EarlyStopping, Execution, Promotion, SearchSpace

LEADERBOARD_KEY, SUMMARY_KEY = "mnist-sweep-leaderboard", "mnist-sweep-summary"
PLOTS_DIR = Path("plots") / "sweeps"
# The defaults of the flow's groups (frozen, so one instance serves every call).
SPACE, EXECUTION, EARLY_STOPPING, PROMOTION = (
    SearchSpace(),
    Execution(),
    EarlyStopping(),
    Promotion(),
)


class SweepFailed(errors.StageError):
    """Some trials failed; the report says which and why."""


@flow(name="mnist-sweep")
def sweep(
    root: str = ".",
    space: SearchSpace = SPACE,
    execution: Execution = EXECUTION,
    early_stopping: EarlyStopping = EARLY_STOPPING,
    promotion: Promotion = PROMOTION,
) -> dict[str, Any]:
    """Run a sweep of DVC experiments in `root` and report it.

    Args:
        root: the DVC repository; trials run at its HEAD commit.
        space: what the sweep searches, and for what.
        execution: where and how the trials run.
        early_stopping: stopping hopeless trials early (with `trials`).
        promotion: what becomes of the best trial.
    """
    # First: they become folders, refs and git arguments (and may come from any flow run).
    user_values.check(
        name=space.name,
        origin=execution.origin,
        prune_metric=early_stopping.metric,
        model_name=promotion.model_name,
    )
    folder = user_values.existing_folder("--root", root)
    plan = planning.make(folder, space, execution, early_stopping, promotion)
    done = planning.done_earlier(plan, space.objective)
    ordered = planning.collect(plan, run.run(plan, space, execution, done))
    data = publish_report(
        plan.repo, plan.name, plan.commit, plan.mode, ordered, plan.swept, space.objective,
        space.maximize,
    )  # fmt: skip
    c = data["counts"]
    get_run_logger().info(
        "sweep %s: %d succeeded, %d failed, %d pruned; best %s",
        plan.name,
        c["succeeded"],
        c["failed"],
        c["pruned"],
        data["best"],
    )
    data["registered"] = None
    if promotion.promote and data["best"]:
        best = next(r for r in ordered if r.name == data["best"])
        data["registered"] = promote.promote(
            plan.repo, best, plan.targets, plan.url, space.objective, promotion
        )
    if c["failed"]:
        raise SweepFailed(
            f"sweep {plan.name}: {c['failed']} of {len(ordered)} trials failed "
            f"({c['succeeded']} succeeded, {c['pruned']} pruned); see "
            f"{results.RESULTS_DIR / (plan.name + '.json')}"
        )
    return data


@task(name="report", cache_policy=NO_CACHE)
def publish_report(
    root: Path,
    sweep: str,
    commit: str,
    mode: str,
    trials: list[sr.TrialResult],
    swept: list[str],
    objective: str,
    maximize: bool,
) -> dict[str, Any]:
    """The leaderboard and summary artifacts, the results file and the plot."""
    from mnist_pipeline.atomic import write_json

    results_file = results.results_file(root, sweep)
    plot_file = root / PLOTS_DIR / f"{sweep}.png"
    data = sr.as_json(sweep, commit, mode, objective, maximize, swept, trials)
    write_json(results_file, data)
    sr.plot(plot_file, trials, swept, objective, maximize)
    rel = [p.relative_to(root) for p in (plot_file, results_file)]
    create_table_artifact(
        sr.leaderboard(trials, swept, objective, maximize),
        key=LEADERBOARD_KEY,
        description=f"Sweep {sweep}: every trial, best first",
    )
    create_markdown_artifact(
        sr.summary_markdown(sweep, trials, swept, objective, maximize, *rel),
        key=SUMMARY_KEY,
        description=f"Sweep {sweep}",
    )
    return data

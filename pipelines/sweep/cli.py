"""`python -m pipelines.sweep`: the sweep flow's parameters as options (derived from
`pipelines.sweep.options` by `pipelines.flow_cli`), and where its tasks run."""

from __future__ import annotations

import argparse
from typing import Any

from mnist_pipeline import errors
from pipelines import flow_cli
from pipelines.sweep.flow import sweep


def task_runner(engine: str, jobs: int, cluster: str | None) -> Any:
    """Threads in this process (each trial is a subprocess), or a Dask cluster."""
    if engine == "threads" and cluster is None:
        from prefect.task_runners import ThreadPoolTaskRunner

        return ThreadPoolTaskRunner(max_workers=max(1, jobs))
    from prefect_dask import DaskTaskRunner

    if cluster:
        return DaskTaskRunner(address=cluster)
    return DaskTaskRunner(
        cluster_class="distributed.LocalCluster",
        cluster_kwargs={"n_workers": max(1, jobs), "threads_per_worker": 1, "processes": True},
    )


def parser() -> argparse.ArgumentParser:
    import pipelines.sweep

    p = argparse.ArgumentParser(
        prog="python -m pipelines.sweep",
        description=(pipelines.sweep.__doc__ or "").split("\n\n")[0],
    )
    flow_cli.add_arguments(p, sweep)
    g = p.add_argument_group("where the tasks run (the command line only)")
    g.add_argument("--engine", choices=["threads", "dask"], default="threads")
    g.add_argument("--cluster", help="a Dask scheduler, e.g. tcp://host:8786 (implies dask)")
    return p


def run_from_args(argv: list[str] | None = None) -> dict[str, Any]:
    args, kwargs = flow_cli.parse(parser(), sweep, argv)
    runner = task_runner(args.engine, args.jobs, args.cluster)
    data: dict[str, Any] = sweep.with_options(task_runner=runner)(**kwargs)
    return data


def main(argv: list[str] | None = None) -> int:
    """Exit 0 when every trial succeeded, 1 when some failed, 2 for bad params or names."""
    return errors.run(run_from_args, argv)

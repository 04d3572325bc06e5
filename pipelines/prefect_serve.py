"""Serve the pipeline flow on a schedule from this machine, without a work pool or worker.

    uv run python -m pipelines.prefect_serve                       # nightly at 02:00 UTC
    uv run python -m pipelines.prefect_serve --cron "*/30 * * * *" -S train.max_epochs=2

`flow.serve` keeps a deployment and its schedule on the Prefect server and runs each flow run
in a subprocess here until stopped (Ctrl-C pauses the schedule). A schedule is only useful on
a server that outlives this process, so without a reachable one (`PREFECT_API_URL` unset, or
nothing answering there) this refuses, saying how to start one, instead of serving into a
temporary server that disappears with it.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

HOW_TO_START = (
    "Start a server and point this shell at it:\n"
    "  uv run prefect server start --host 127.0.0.1 --port 4200     # in another terminal\n"
    "  uv run prefect config set PREFECT_API_URL=http://127.0.0.1:4200/api\n"
    "Or run the pipeline once, with no server: uv run python -m pipelines.flow"
)


def api_problem() -> str | None:
    """Why the configured Prefect API cannot hold a schedule, or None if it can."""
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL

    url = PREFECT_API_URL.value()
    if not url:  # the client would start a temporary server: no place for a schedule
        return "PREFECT_API_URL is not set: there is no Prefect server to keep the schedule."
    with get_client(sync_client=True) as client:
        err = client.api_healthcheck()
    return None if err is None else f"cannot reach the Prefect API at {url}: {err!r}"


# The pipeline flow's parameters a served deployment takes from this command line.
FLOW_PARAMS = ("root", "overrides", "push", "register_model")


def parse_args(argv: list[str] | None) -> tuple[argparse.Namespace, dict[str, Any]]:
    """This command's options, and the pipeline flow's parameters among them."""
    from pipelines import flow_cli
    from pipelines.flow import pipeline

    p = argparse.ArgumentParser(
        prog="python -m pipelines.prefect_serve", description=__doc__.splitlines()[0]
    )
    p.add_argument("--name", default="nightly-retrain-served", help="deployment name")
    p.add_argument("--cron", default="0 2 * * *", help="schedule (default: 02:00 daily)")
    p.add_argument("--timezone", default="UTC")
    p.add_argument("--check", action="store_true", help="only check the server, then exit")
    flow_cli.add_arguments(p, pipeline, only=FLOW_PARAMS)
    args, params = flow_cli.parse(p, pipeline, argv)
    # The runs start in the deployment's own folder: the repository as an absolute path.
    return args, {**params, "root": str(Path(params["root"]).resolve())}


def main(argv: list[str] | None = None) -> int:
    args, params = parse_args(argv)
    problem = api_problem()
    if problem:
        print(f"error: {problem}\n{HOW_TO_START}", file=sys.stderr)
        return 2
    if args.check:
        print("the Prefect API is reachable")
        return 0
    from prefect.client.schemas.schedules import CronSchedule

    from pipelines.flow import pipeline

    pipeline.serve(
        name=args.name,
        schedules=[CronSchedule(cron=args.cron, timezone=args.timezone)],
        parameters=params,
        global_limit=1,  # one run at a time across every server of this deployment: DVC's lock
        limit=1,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

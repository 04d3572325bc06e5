"""Deployment without a flow run: the default remote, prefect.yaml, and refusing to schedule
without a Prefect server.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from pipelines import deploy, prefect_serve
from tests.conftest import ROOT


def test_default_remote_is_shared_by_every_clone_of_this_user() -> None:
    from dvc.config import Config

    conf = Config(dvc_dir=str(ROOT / ".dvc"), validate=True).load_one("repo")
    url = conf["remote"][conf["core"]["remote"]]["url"]
    # Outside any clone and the same path for all of them: under the user's home.
    assert Path(url).is_absolute() and Path(url).is_relative_to(Path.home())
    assert not Path(url).is_relative_to(ROOT)


def test_prefect_yaml_deploys_the_flows_on_schedules_one_run_at_a_time() -> None:
    from prefect.client.schemas.schedules import CronSchedule
    from prefect.flows import load_flow_from_entrypoint

    spec = yaml.safe_load((ROOT / "prefect.yaml").read_text())
    flows = {}
    for dep in spec["deployments"]:
        flow = load_flow_from_entrypoint(str(ROOT / dep["entrypoint"]))
        flows[dep["name"]] = flow.name
        flow.validate_parameters(dep["parameters"])  # raises on a parameter the flow lacks
        for sched in dep["schedules"]:  # none: run on demand
            CronSchedule(cron=sched["cron"], timezone=sched["timezone"])
        assert dep["concurrency_limit"]["limit"] == 1
    assert flows == {
        "nightly-retrain": "mnist-pipeline",
        "weekly-audit": "mnist-pipeline-audit",
        "lr-sweep": "mnist-sweep",
    }
    assert all(d["schedules"] for d in spec["deployments"] if d["name"] != "lr-sweep")
    assert deploy.work_pools(ROOT / "prefect.yaml") == ["mnist-process"]


@pytest.mark.parametrize("url", [None, "http://127.0.0.1:9/api"])
@pytest.mark.parametrize("command", [prefect_serve.main, deploy.main])
def test_scheduling_without_a_server_says_how_to_start_one(
    command: Callable[[list[str]], int], url: str | None, capsys: pytest.CaptureFixture
) -> None:
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: url}):
        assert command([]) == 2
    err = capsys.readouterr().err
    assert ("PREFECT_API_URL is not set" if url is None else "cannot reach") in err
    assert "prefect server start --host 127.0.0.1" in err

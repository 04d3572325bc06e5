"""The sweep flow: its trials as DVC experiments, failures, reruns, the report it publishes.

The flow runs for real in one throw-away git + DVC copy of this repo on the tiny synthetic data
(see conftest.py): a two-trial grid two at a time, the same sweep again, and a sweep where
trials fail. Trials on other hosts are in test_sweep_hosts.py, the sweep's pieces as plain
functions in test_sweep_functions.py.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from mnist_pipeline.errors import PARAMS_ERROR_EXIT, STAGE_ERROR_EXIT
from pipelines.sweep import trials
from testing.scratch_repo import git
from tests.pipelines.conftest import dvc, make_repo, run_sweep, sweep_report

# --- the flow, for real ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def sweep_repo(
    tmp_path_factory: pytest.TempPathFactory, prefect_harness: None, flow_env: None
) -> Path:
    base = tmp_path_factory.mktemp("sweep")
    return make_repo(base / "repo", base / "remote")


GRID = ["train.optimizer.lr=8e-3,1.6e-2,20.0"]  # the third is outside the schema


@pytest.fixture(scope="module")
def grid_run(sweep_repo: Path) -> Any:
    """Two trials, two at a time, and an invalid one that fails alone (--skip-invalid)."""
    state = run_sweep(sweep_repo, overrides=GRID, name="lr", jobs=2, skip_invalid=True)
    assert state.is_failed() and "1 of 3 trials failed" in state.message, state.message
    return state


def test_two_trials_at_once_are_dvc_experiments_with_their_metrics(
    sweep_repo: Path, grid_run: Any
) -> None:

    shown = json.loads(dvc(sweep_repo, "exp", "show", "--json").stdout)
    exps = {
        r["name"]: r["data"] for b in shown for e in b.get("experiments") or [] for r in e["revs"]
    }
    assert set(exps) >= {"lr-000", "lr-001"}
    for name, lr in [("lr-000", 0.008), ("lr-001", 0.016)]:
        params = exps[name]["params"]["params.yaml"]["data"]
        assert params["train"]["optimizer"]["lr"] == lr
        assert params["compute"]["threads"] == 1  # 2 jobs, 2 cores
        assert 0.0 <= exps[name]["metrics"]["metrics/evaluate.json"]["data"]["test"]["acc"] <= 1.0
    result = sweep_report(sweep_repo, "lr")
    assert result["counts"] == {"succeeded": 2, "failed": 1, "pruned": 0}
    rows = {r["name"]: r for r in result["trials"]}
    # The invalid trial failed alone, with its params error, and never ran.
    assert "train.optimizer.lr: Input should be less than or equal to 10" in rows["lr-002"]["note"]
    assert rows["lr-002"]["attempts"] == 0 and "lr-002" not in exps
    # prepare ran once, in the sweep's shared clone; each trial trained and evaluated.
    for row in (rows["lr-000"], rows["lr-001"]):
        assert row["status"] == "succeeded" and row["attempts"] == 1 and row["seconds"] > 0
        assert row["ran"] == ["train", "evaluate"]
    clones = [
        *trials.sweep_dir(sweep_repo, "lr").iterdir(),
        *trials.sweep_dir(sweep_repo, "_shared").iterdir(),
    ]
    locks = {p.name: (p / "dvc.lock").read_text() for p in clones if p.is_dir()}
    assert set(locks) == {"lr-000", "lr-001", trials.head_commit(sweep_repo)[:12]}
    prepared = set()
    for text in locks.values():
        outs = yaml.safe_load(text)["stages"]["prepare"]["outs"]
        prepared.add(next(o["md5"] for o in outs if o["path"] == "data/prepared"))
    assert len(prepared) == 1  # the same prepared data everywhere


def test_leaderboard_artifact_results_file_and_plot(sweep_repo: Path, grid_run: Any) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    from pipelines.sweep.flow import LEADERBOARD_KEY, SUMMARY_KEY

    with get_client(sync_client=True) as client:
        found = client.read_artifacts(
            artifact_filter=ArtifactFilter(
                flow_run_id=ArtifactFilterFlowRunId(any_=[str(grid_run.state_details.flow_run_id)])
            )
        )
    by_key = {a.key: a for a in found}
    table = json.loads(by_key[LEADERBOARD_KEY].data)
    assert [r["trial"] for r in table][2:] == ["lr-002"]  # failures last
    assert {"train.optimizer.lr", "test.acc", "seconds", "test.loss"} <= set(table[0])
    assert table[0]["rank"] == 1 and table[0]["test.acc"] >= table[1]["test.acc"]
    assert table[2]["status"] == "failed" and table[2]["rank"] is None
    summary = by_key[SUMMARY_KEY].data
    best = table[0]["trial"]
    assert f"dvc exp apply {best}" in summary and "2 succeeded, 1 failed, 0 pruned" in summary
    data = json.loads((sweep_repo / "sweeps" / "lr.json").read_text())
    assert data["best"] == best and data["swept"] == ["train.optimizer.lr"]
    png = sweep_repo / "plots" / "sweeps" / "lr.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_rerun_runs_nothing_that_finished(
    sweep_repo: Path, grid_run: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    ran: list[str] = []
    real = trials.run_trial
    monkeypatch.setattr(trials, "run_trial", lambda *a, **k: ran.append(a[1]) or real(*a, **k))
    # A killed sweep, its last trial lost: run again, only that one runs.

    dvc(sweep_repo, "exp", "remove", "lr-001")
    run_sweep(sweep_repo, overrides=GRID, name="lr", jobs=2, skip_invalid=True)
    assert ran == ["lr-001"]
    rows = {r["name"]: r for r in sweep_report(sweep_repo, "lr")["trials"]}
    assert rows["lr-000"]["note"] == "done earlier" and rows["lr-000"]["status"] == "succeeded"
    assert rows["lr-000"]["seconds"] > 0  # from the first run's report
    assert rows["lr-001"]["status"] == "succeeded" and rows["lr-001"]["attempts"] == 1
    ran.clear()
    run_sweep(sweep_repo, overrides=GRID, name="lr", jobs=2, skip_invalid=True)
    assert ran == [] and sweep_report(sweep_repo, "lr")["counts"]["succeeded"] == 2
    # The same name with another space is refused, not overwritten.
    other = run_sweep(sweep_repo, overrides=["train.optimizer.lr=2e-3"], name="lr")
    assert other.is_failed() and "exists with other params" in other.message


def test_the_flow_itself_runs_jobs_trials_at_a_time(
    sweep_repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As a deployment calls it: the flow function with JSON parameters and Prefect's default
    task runner, no command line around it; at most `jobs` trials run at once."""
    from pipelines.sweep.flow import sweep

    lock, running, most, started = threading.Lock(), [0], [0], []

    def counted(ws: Path, name: str, *args: Any, **kwargs: Any) -> Any:
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
            started.append(name)
        time.sleep(1.5)
        with lock:
            running[0] -= 1
        raise RuntimeError("counted, not run")

    monkeypatch.setattr(trials, "run_trial", counted)
    state = sweep(
        root=str(sweep_repo),
        space={"overrides": ["train.seed=1,2,3,4"], "name": "jobs"},
        execution={"jobs": 2, "retries": 0},
        return_state=True,
    )
    assert state.is_failed() and "4 of 4 trials failed" in state.message, state.message
    assert sorted(started) == ["jobs-000", "jobs-001", "jobs-002", "jobs-003"]
    assert most[0] == 2


def test_bad_params_stop_the_sweep_before_any_trial(
    sweep_repo: Path, grid_run: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    from pipelines.sweep.cli import main

    code = main(["--root", str(sweep_repo), "--name", "bad", "-S", "train.optimizer.lr=1e-2,20.0"])
    assert code == PARAMS_ERROR_EXIT
    assert not trials.sweep_dir(sweep_repo, "bad").joinpath("bad-000").exists()
    assert main(["--root", str(sweep_repo), "-S", "train.optimizer.lr=("]) == PARAMS_ERROR_EXIT
    assert main(["--root", str(sweep_repo), "--objective", "nope", "-S", "train.seed=1"]) == 2
    # Pruning needs a study (--trials) and a per-epoch metric that train logs.
    capsys.readouterr()
    grid = ["--root", str(sweep_repo), "-S", "train.seed=1,2", "--prune-trials", "median"]
    assert main(grid) == 2 and "--prune-trials median needs --trials" in capsys.readouterr().err
    tpe = [*grid, "--trials", "2", "--prune-metric", "val/accuracy"]
    assert main(tpe) == 2
    assert (
        "no such per-epoch metric (in dvclive/train/plots/metrics: train/acc, train/loss, "
        "val/acc, val/loss)" in capsys.readouterr().err
    )
    evaluate_only = [*grid[:2], "-S", "evaluate.batch_size=128,256", *grid[4:], "--trials", "2"]
    assert main(evaluate_only) == 2 and "that run the 'train' stage" in capsys.readouterr().err


@pytest.mark.slow
def test_failing_trials_fail_alone_and_a_killed_one_resumes(
    sweep_repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One trial invalid (skipped with its params error), one failing in training (no GPU of
    that kind here), one killed by a signal in its second epoch: retried, it resumes."""
    from pipelines.sweep.cli import main

    monkeypatch.setenv("MNIST_FAIL_AFTER_EPOCH", "1")
    code = main(
        [
            "--root",
            str(sweep_repo),
            "--name",
            "fail",
            "-S",
            "train.optimizer.lr=8e-3,20.0",
            "-S",
            "train.accelerator=cpu,mps",
            "--skip-invalid",
            "--jobs",
            "2",
            "--retry-delay-s",
            "0",
        ]
    )
    assert code == STAGE_ERROR_EXIT
    data = json.loads((sweep_repo / "sweeps" / "fail.json").read_text())
    assert data["counts"] == {"succeeded": 1, "failed": 3, "pruned": 0}
    rows = {r["name"]: r for r in data["trials"]}
    assert rows["fail-000"]["status"] == "succeeded" and rows["fail-000"]["attempts"] == 2
    assert "MPSAccelerator" in rows["fail-001"]["note"] and rows["fail-001"]["attempts"] == 1
    for name in ("fail-002", "fail-003"):
        assert "train.optimizer.lr: Input should be less than or equal to 10" in rows[name]["note"]
        assert rows[name]["attempts"] == 0
    record = json.loads(
        (
            trials.sweep_dir(sweep_repo, "fail") / "fail-000" / "provenance" / "train.json"
        ).read_text()
    )
    assert record["resumed_from_epoch"] == 1  # the retry went on from the checkpoint


def _workers_env() -> dict[str, str]:
    """The Prefect API of the tests' server, for a Dask cluster's worker processes, as a
    worker host's `dask worker` gets PREFECT_API_URL (README). Without it each worker would
    start a temporary server of its own for its logs, which outlives the cluster here."""
    from prefect.settings import PREFECT_API_URL

    return {"PREFECT_API_URL": str(PREFECT_API_URL.value())}


@pytest.mark.slow
def test_a_dask_cluster_of_two_workers_runs_the_trials_side_by_side(sweep_repo: Path) -> None:
    """The distributed engine: a scheduler and two worker processes, reached by address as a
    real cluster would be (`--cluster tcp://host:8786`); one trial on each worker."""
    from distributed import LocalCluster

    from pipelines.sweep.cli import main

    with LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, env=_workers_env()
    ) as cluster:
        assert cluster.scheduler_address.startswith("tcp://")
        code = main(
            [
                "--root",
                str(sweep_repo),
                "--name",
                "dask",
                "-S",
                "train.optimizer.lr=8e-3,1.6e-2",
                "--jobs",
                "2",
                "--cluster",
                cluster.scheduler_address,
            ]
        )
        worker_pids = {w.process.pid for w in cluster.workers.values()}
    assert code == 0
    data = json.loads((sweep_repo / "sweeps" / "dask.json").read_text())
    assert data["counts"] == {"succeeded": 2, "failed": 0, "pruned": 0}
    ran_on = {int(t["worker"].rsplit(":", 1)[1]) for t in data["trials"]}
    assert ran_on == worker_pids  # each worker ran one trial
    names = set(trials.experiments(sweep_repo))
    assert {"dask-000", "dask-001"} <= names


@pytest.mark.slow
def test_optuna_trials_are_experiments_and_a_rerun_only_adds_the_missing_ones(
    sweep_repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ran: list[str] = []
    real = trials.run_trial
    monkeypatch.setattr(trials, "run_trial", lambda *a, **k: ran.append(a[1]) or real(*a, **k))
    space = ["train.optimizer.lr=tag(log,interval(3e-3,3e-2))", "train.optimizer.name=adam,adamw"]
    state = run_sweep(sweep_repo, overrides=space, name="tpe", trials=2, jobs=2)
    assert state.is_completed(), state.message
    assert sorted(ran) == ["tpe-000", "tpe-001"]
    ran.clear()
    state = run_sweep(sweep_repo, overrides=space, name="tpe", trials=3, jobs=2)
    assert state.is_completed(), state.message
    assert ran == ["tpe-002"]  # the study knows the first two
    data = state.result()
    assert data["counts"]["succeeded"] == 3 and data["mode"] == "optuna"
    assert data["swept"] == ["train.optimizer.lr", "train.optimizer.name"]
    values = [tuple(t["values"].items()) for t in data["trials"]]
    assert len(set(values)) == 3  # a resumed study proposes new points, not its first ones
    assert {"tpe-000", "tpe-001", "tpe-002"} <= set(trials.experiments(sweep_repo))


@pytest.mark.slow
def test_a_hopeless_trial_is_pruned_counted_and_not_run_again(
    sweep_repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A study that knows one good trial (its epochs recorded without a pruner), extended with
    the median pruner and a hopeless learning rate, on a Dask worker (which cannot see the
    study): stopped after its first epoch, counted as pruned, exit code 0; the study has it as
    PRUNED with its epoch, so a rerun does not run it."""
    import optuna
    from distributed import LocalCluster

    from pipelines.sweep.adaptive import storage as _storage
    from pipelines.sweep.cli import main

    ran: list[str] = []
    real = trials.run_trial
    monkeypatch.setattr(trials, "run_trial", lambda *a, **k: ran.append(a[1]) or real(*a, **k))
    good = ["train.optimizer.lr=tag(log,interval(8e-3,1.6e-2))"]
    state = run_sweep(sweep_repo, overrides=good, name="prune", trials=1)
    assert state.is_completed(), state.message
    args = ["--root", str(sweep_repo), "--name", "prune", "--trials", "2", "--retry-delay-s", "0"]
    args += ["-S", "train.optimizer.lr=tag(log,interval(1e-4,1.5e-4))", "--prune-trials", "median"]
    args += ["--prune-startup-trials", "1", "--prune-warmup-epochs", "0"]
    with LocalCluster(
        n_workers=1, threads_per_worker=1, processes=True, env=_workers_env()
    ) as cluster:
        assert main([*args, "--cluster", cluster.scheduler_address]) == 0  # pruned: not failed
        (worker,) = (w.process.pid for w in cluster.workers.values())
    data = sweep_report(sweep_repo, "prune")
    assert data["counts"] == {"succeeded": 1, "failed": 0, "pruned": 1}
    rows = {r["name"]: r for r in data["trials"]}
    hopeless = rows["prune-001"]
    assert hopeless["status"] == "pruned" and list(hopeless["curve"]) == ["0"]
    assert hopeless["note"].startswith("pruned after epoch 1: val/acc ")
    assert hopeless["curve"]["0"] < rows["prune-000"]["curve"]["0"]
    # Stopped in `train`: the stages after it never ran in its clone (evaluate's metrics are
    # still the commit's).
    clone = trials.sweep_dir(sweep_repo, "prune") / "prune-001"
    assert not git(clone, "status", "--porcelain", "--", "metrics/evaluate.json")
    assert int(hopeless["worker"].rsplit(":", 1)[1]) == worker  # decided there
    assert "prune-001" not in trials.experiments(sweep_repo)  # stopped before its commit
    storage = _storage(sweep_repo, "prune")
    (study_name,) = optuna.get_all_study_names(storage)
    told = optuna.load_study(study_name=study_name, storage=storage).trials
    assert [t.state.name for t in told] == ["COMPLETE", "PRUNED"]
    assert set(told[0].intermediate_values) == {0, 1} and set(told[1].intermediate_values) == {0}
    ran.clear()
    assert main(args) == 0
    assert ran == []  # the study knows it finished
    again = {r["name"]: r for r in sweep_report(sweep_repo, "prune")["trials"]}["prune-001"]
    assert again["status"] == "pruned" and again["note"].startswith("pruned in an earlier run")

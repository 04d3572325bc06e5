"""The pipeline flow end to end on the synthetic data: order, skipping, which failures are
retried, validation, push and pull, model registration. (A training killed and resumed on the
retry: test_flow_retry.py.)
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from mnist_pipeline.params.schema import ParamsError
from pipelines import dvc_repo
from tests.conftest import tiny_params_dict
from tests.pipelines.conftest import (
    FlowRun,
    dvc,
    make_repo,
    run,
    run_flow,
    set_remote,
    task_runs,
)

pytestmark = pytest.mark.usefixtures("prefect_harness", "flow_env")


def _stage_runs(flow_run_id: str, stages: list[str]) -> list:
    return [r for r in task_runs(flow_run_id) if r.name in stages]


def test_stages_run_in_dvc_order_one_task_each(finished_run: FlowRun) -> None:
    stages = dvc_repo.stage_order(finished_run.repo)
    assert stages[:3] == ["prepare", "train", "evaluate"]  # what dvc.yaml's graph says
    runs = _stage_runs(finished_run.flow_run_id, stages)
    assert [r.name for r in runs] == stages
    assert all(r.state.name == "Completed" and r.run_count == 1 for r in runs)
    assert [s["state"] for s in finished_run.result["stages"]] == ["ran"] * len(stages)
    assert dvc_repo.changes(finished_run.repo) == {}  # DVC agrees: everything is up to date
    metrics = json.loads((finished_run.repo / "metrics/evaluate.json").read_text())
    assert metrics["test"]["acc"] >= 0.9


def test_report_artifacts(finished_run: FlowRun) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    from pipelines.flow import PER_CLASS_KEY, SUMMARY_KEY

    with get_client(sync_client=True) as client:
        found = client.read_artifacts(
            artifact_filter=ArtifactFilter(
                flow_run_id=ArtifactFilterFlowRunId(any_=[finished_run.flow_run_id])
            )
        )
    by_key = {a.key: a for a in found}
    summary = by_key[SUMMARY_KEY].data
    assert "| metrics/evaluate.json | test.acc |" in summary
    assert "Δ previous run" in summary and "Δ HEAD" in summary
    assert str(finished_run.remote) in summary
    assert "lenet5@v0.1.0" in summary
    # Each stage's run record: host, commit, precision (not hashed into dvc.lock).
    assert "## Provenance" in summary and "| train |" in summary and "32-true" in summary
    if "export" in dvc_repo.stage_order(finished_run.repo):
        assert "models/lenet5.onnx" in summary
    table = json.loads(by_key[PER_CLASS_KEY].data)
    assert [row["class"] for row in table] == [str(c) for c in range(10)]
    assert all(0.0 <= row["accuracy"] <= 1.0 for row in table)


def test_rerun_with_nothing_changed_skips_every_stage(
    finished_run: FlowRun, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_subprocess(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"nothing should run: dvc {args[1]}")

    monkeypatch.setattr(dvc_repo, "run", no_subprocess)
    state, _ = run_flow(finished_run.repo, register_model=True)
    assert state.is_completed(), state.message
    stages = dvc_repo.stage_order(finished_run.repo)
    runs = _stage_runs(str(state.state_details.flow_run_id), stages)
    assert [(r.name, r.state.name) for r in runs] == [(s, "Skipped") for s in stages]
    result = state.result()
    assert result["pushed"] == "already up to date"
    assert result["registered"] == finished_run.result["registered"]  # not a new version


def test_container_image_builds_the_registered_version_and_reports_its_id(
    finished_run: FlowRun, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`--container-image`: the image of the version registered, tagged with it, its ID in the
    result and the report. The build itself is pipelines.image's (test_image.py): faked here."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    from pipelines import flow, image
    from pipelines.flow import SUMMARY_KEY

    builds = []

    def build(spec: str, repo: str, tag: str, base: str) -> image.Image:
        builds.append((spec, repo, tag, base))
        return image.Image(tag, "sha256:" + "ab" * 32, {}, 1, 1, "", [])

    def no_subprocess(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"nothing should run: dvc {args[1]}")

    monkeypatch.setattr(flow.image, "build", build)
    monkeypatch.setattr(dvc_repo, "run", no_subprocess)
    base = "localhost/some-base:1"
    state, _ = run_flow(
        finished_run.repo, register_model=True, container_image=True, image_base=base
    )
    assert state.is_completed(), state.message
    version = finished_run.result["registered"]  # lenet5@v0.1.0, still the one registered
    tag = "localhost/mnist-serve-" + version.replace("@", ":")
    assert builds == [(version, str(finished_run.repo), tag, base)]
    result = state.result()
    assert result["image"]["tag"] == tag and result["image"]["id"] == "sha256:" + "ab" * 32
    with get_client(sync_client=True) as client:
        found = client.read_artifacts(
            artifact_filter=ArtifactFilter(
                flow_run_id=ArtifactFilterFlowRunId(any_=[str(state.state_details.flow_run_id)])
            )
        )
    summary = next(a.data for a in found if a.key == SUMMARY_KEY)
    assert f"image {tag} (sha256:{'ab' * 32})" in str(summary)


@pytest.mark.slow  # a second full repo and flow run: 14 s of the default run's 5 minutes
def test_a_stage_restored_from_the_run_cache_shows_as_cached(finished_run: FlowRun) -> None:
    repo = finished_run.repo
    params_text = (repo / "params.yaml").read_text()
    n = yaml.safe_load(params_text)["evaluate"]["n_misclassified"]
    try:
        other, _ = run_flow(
            repo, targets=["evaluate"], overrides=[f"evaluate.n_misclassified={n - 1}"], push=False
        )
        back, _ = run_flow(
            repo, targets=["evaluate"], overrides=[f"evaluate.n_misclassified={n}"], push=False
        )
    finally:
        (repo / "params.yaml").write_text(params_text)
    assert other.is_completed() and back.is_completed(), (other.message, back.message)
    names = ["prepare", "train", "evaluate"]
    ran = _stage_runs(str(other.state_details.flow_run_id), names)
    assert [r.state.name for r in ran] == ["Skipped", "Skipped", "Completed"]
    # Back to the old value: DVC restores evaluate's outputs from its run cache.
    restored = _stage_runs(str(back.state_details.flow_run_id), names)
    assert [r.state.name for r in restored] == ["Skipped", "Skipped", "Cached"]
    assert dvc_repo.changes(repo) == {}


def test_invalid_override_fails_before_anything_runs(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo", tmp_path / "remote")
    before = (repo / "params.yaml").read_text()
    state, _ = run_flow(repo, overrides=["train.max_epochs=0"])
    assert state.is_failed()
    with pytest.raises(ParamsError, match=r"train\.max_epochs"):
        state.result()
    assert (repo / "params.yaml").read_text() == before  # left as it was
    runs = task_runs(str(state.state_details.flow_run_id))
    assert [r.name.rsplit("-", 1)[0] for r in runs] == ["check-params"]  # no stage started
    assert not (repo / "data/prepared").exists()


def test_stage_with_a_params_error_is_not_retried(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The stage itself meets an invalid params.yaml (exit code 2): one attempt, no retry."""
    from pipelines import flow

    params = tiny_params_dict()
    params["prepare"]["val_size"] = 0
    repo = make_repo(tmp_path / "repo", tmp_path / "remote", params)
    # Skip the flow's own up-front check so that the stage gets to see the bad value.
    monkeypatch.setattr(flow.overrides, "apply", lambda path, overrides: (None, {}))
    state, _ = run_flow(repo, retries=3, retry_delay_s=60.0)
    assert state.is_failed()
    (prepare,) = _stage_runs(str(state.state_details.flow_run_id), ["prepare"])
    assert prepare.run_count == 1 and prepare.state.name == "Failed"  # no retry was waited for
    assert "params" in prepare.state.message and "not retried" in prepare.state.message
    assert [r.name for r in _stage_runs(str(state.state_details.flow_run_id), ["train"])] == []


def test_pushed_model_version_pulls_into_another_clone(
    finished_run: FlowRun, tmp_path: Path
) -> None:
    tag = finished_run.result["registered"]
    assert tag == "lenet5@v0.1.0"
    repo = finished_run.repo
    assert run(["git", "cat-file", "-t", tag], repo).stdout.strip() == "tag"  # annotated
    assert "test accuracy" in run(["git", "tag", "-n5", tag], repo).stdout

    clone = tmp_path / "clone"
    run(["git", "clone", "-q", str(repo), str(clone)], tmp_path)
    run(["git", "checkout", "-q", tag], clone)
    # Another clone on this machine: the same remote (here the test's, not the default).
    set_remote(clone, finished_run.remote)
    dvc(clone, "pull")
    assert (clone / "models/lenet5.pt").read_bytes() == (repo / "models/lenet5.pt").read_bytes()
    assert json.loads(dvc(clone, "status", "--json").stdout) == {}


def test_audit_flow_rebuilds_the_registered_version_and_publishes_the_comparison(
    finished_run: FlowRun,
) -> None:
    """The audit as a Prefect flow, on the version the run registered (its snapshot commit
    holds that run's dvc.lock); `prepare` alone, to keep it quick."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    from pipelines.flow import AUDIT_KEY, audit

    tag = finished_run.result["registered"]
    state = audit(root=str(finished_run.repo), rev=tag, stages=["prepare"], return_state=True)
    assert state.is_completed(), state.message
    assert state.result()["same"] and state.result()["outputs"] == 2
    with get_client(sync_client=True) as client:
        (artifact,) = client.read_artifacts(
            artifact_filter=ArtifactFilter(
                flow_run_id=ArtifactFilterFlowRunId(any_=[str(state.state_details.flow_run_id)])
            )
        )
    assert artifact.key == AUDIT_KEY and "| prepare | data/prepared |" in artifact.data

"""The DVC pipeline as a Prefect flow: one task per stage, transient failures retried.

    uv run python -m pipelines.flow                       # once, no server needed
    uv run python -m pipelines.flow -S train.max_epochs=3 --register

DVC owns the stage graph, the cache and `dvc.lock`; this flow adds retries, logs, reports and
versioned artifacts around it:

1. `check-params`: apply the `-S` overrides to `params.yaml` and validate the whole file
   (`mnist_pipeline.params.schema.load_params`); an invalid value stops the run before anything
   runs.
2. One task per stage, in the order of DVC's graph (read from `dvc.yaml`, never listed here),
   named after the stage: `dvc repro --single-item <stage>` in a subprocess, or nothing when
   `dvc status` says the stage is up to date (state "Skipped"; "Cached" when DVC restored the
   outputs from its run cache). Transient failures are retried with exponential backoff and
   jitter (`pipelines.retry`); a killed `train` resumes from its last checkpoint.
3. `push`: `dvc push` to the default remote, so another clone can `dvc pull`.
4. `register-model` (opt-in): a GTO tag `lenet5@vX.Y.Z` once evaluation (and export) pass.
5. `report`: Prefect artifacts with the metrics, their change, per-class accuracy, the models.
"""

# No `from __future__ import annotations` here: Prefect validates flow parameters with pydantic
# from the annotations, and a flow loaded from its file by a runner (`flow.serve`) cannot
# resolve string annotations such as "Bump" against this module.
import argparse
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Annotated, Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.context import TaskRunContext
from prefect.runtime import flow_run as current_flow_run
from prefect.runtime import task_run as current_task_run
from prefect.states import Completed, State
from prefect.tasks import exponential_backoff

from mnist_pipeline import errors, provenance
from pipelines import dvc_repo, flow_cli, image, overrides, registry, report, user_values, verify
from pipelines.flow_cli import Cli
from pipelines.registry import MODEL_NAME, Bump, register_version
from pipelines.report import StageRun
from pipelines.retry import StepFailed, retry_condition

EVALUATE, EXPORT = "evaluate", "export"
SUMMARY_KEY, PER_CLASS_KEY = "mnist-pipeline-summary", "mnist-per-class-accuracy"
AUDIT_KEY = "mnist-pipeline-audit"


def _attempt() -> tuple[int, int]:
    """(this attempt, attempts allowed) of the running task."""
    ctx = TaskRunContext.get()
    allowed = (ctx.task.retries + 1) if ctx else 1
    return current_task_run.run_count, allowed


@task(name="check-params", cache_policy=NO_CACHE)
def check_params(root: Path, overrides_: list[str]) -> dict[str, Any]:
    """Apply the overrides to params.yaml and validate it; raises ParamsError, never retried."""
    _, changes = overrides.apply(root / overrides.PARAMS_FILE, overrides_)
    logger = get_run_logger()
    for key, (old, new) in changes.items():
        logger.info("params.yaml: %s %r -> %r", key, old, new)
    logger.info("params.yaml is valid%s", " with the overrides" if overrides_ else "")
    return changes


@task(
    name="stage",
    task_run_name="{stage}",
    cache_policy=NO_CACHE,  # DVC is the cache: it decides what is up to date
    retry_condition_fn=retry_condition,
    retry_jitter_factor=0.5,
)
def run_stage(root: Path, stage: str, force: bool, timeout_s: float) -> StageRun | State:
    logger = get_run_logger()
    attempt, allowed = _attempt()
    logger.info("stage %s: attempt %d of %d", stage, attempt, allowed)
    if not force:
        pending = dvc_repo.changes(root, stage)
        if not pending:
            logger.info("stage %s: up to date (dvc status), skipping", stage)
            return Completed(
                name="Skipped",
                message="up to date according to dvc status",
                data=StageRun(stage, "skipped", attempt, 0.0),
            )
        logger.info("stage %s: changed: %s", stage, pending.get(stage, pending))
    args = ["repro", "--single-item", stage, *(["--force"] if force else [])]
    done = dvc_repo.run(root, args, timeout_s, echo=logger.info)
    if not done.ok:
        raise StepFailed(f"stage {stage}", done.returncode, done.tail)
    logger.info("stage %s: done in %.1f s (attempt %d)", stage, done.seconds, attempt)
    if done.run_cache_hit:
        return Completed(
            name="Cached",
            message="outputs restored from DVC's run cache",
            data=StageRun(stage, "cached", attempt, done.seconds),
        )
    return StageRun(stage, "ran", attempt, done.seconds)


@task(
    name="push",
    cache_policy=NO_CACHE,
    retries=3,
    retry_delay_seconds=exponential_backoff(backoff_factor=10),
    retry_jitter_factor=0.5,
    retry_condition_fn=retry_condition,
)
def dvc_push(root: Path, timeout_s: float = 3600) -> str:
    """`dvc push` to the default remote, when it is missing something."""
    logger = get_run_logger()
    url = dvc_repo.remote_url(root)
    if url is None:
        logger.warning("no default DVC remote configured: nothing pushed")
        return "not pushed: no remote"
    missing = dvc_repo.cloud_changes(root)
    if not missing:
        logger.info("remote %s already has every output", url)
        return "already up to date"
    logger.info("pushing %d files to %s (attempt %d)", len(missing), url, _attempt()[0])
    done = dvc_repo.run(root, ["push"], timeout_s, echo=logger.info)
    if not done.ok:
        raise StepFailed("dvc push", done.returncode, done.tail)
    return f"pushed {len(missing)} files"


@task(name="report", cache_policy=NO_CACHE)
def publish_report(
    root: Path,
    stages: list[str],
    runs: list[StageRun],
    before: report.Metrics,
    changes: dict[str, Any],
    pushed: str,
    registered: str | None,
) -> str:
    """Markdown summary and per-class table as Prefect artifacts; returns the markdown."""
    now = dvc_repo.metrics(root)
    rows = report.metrics_rows(now, before, dvc_repo.metrics_diff(root))
    outs = {s: dvc_repo.out_paths(root, s) for s in stages}
    records = {s: _provenance(root, s) for s in stages}
    markdown = report.summary_markdown(
        run_name=str(current_flow_run.name),
        stages=runs,
        metric_rows=rows,
        models=report.model_files(root, [p for paths in outs.values() for p in paths]),
        remote=dvc_repo.remote_url(root),
        pushed=pushed,
        registered=registered,
        overrides=changes,
        provenance=report.provenance_rows({s: r for s, r in records.items() if r}),
    )
    create_markdown_artifact(markdown, key=SUMMARY_KEY, description="MNIST pipeline run")
    per_class = _find(outs.get(EVALUATE, []), "per_class.json")
    if per_class is not None:
        create_table_artifact(
            report.per_class_rows(report.read_json(per_class)),
            key=PER_CLASS_KEY,
            description="Per-class test accuracy (recall), precision and F1",
        )
    return markdown


def _provenance(root: Path, stage: str) -> dict[str, Any] | None:
    path = dvc_repo.provenance_file(root, stage)
    return provenance.read(path) if path else None


def _find(paths: list[Path], name: str) -> Path | None:
    for p in paths:
        hits = [p] if p.name == name else sorted(p.rglob(name)) if p.is_dir() else []
        if hits and hits[0].is_file():
            return hits[0]
    return None


def _test_acc(root: Path, evaluate_outs: list[Path], metrics: report.Metrics) -> float | None:
    for p in evaluate_outs:
        value = metrics.get(p.relative_to(root).as_posix(), {}).get("test.acc")
        if isinstance(value, int | float):
            return float(value)
    return None


def _declared_artifacts(repo: Path, model_name: str) -> dict[str, Path]:
    """dvc.yaml's artifacts, among which `model_name` must be if there are any."""
    declared = dvc_repo.artifacts(repo)
    if declared and model_name not in declared:
        raise errors.UsageError(
            f"{model_name!r} is not in dvc.yaml's artifacts: {sorted(declared)}"
        )
    return declared


def _register(
    repo: Path,
    stages: list[str],
    model_name: str,
    bump: Bump,
    min_test_acc: float,
    artifact: Path | None,
) -> str | None:
    """The registration task, from what this run's stages left; the new tag, or None."""
    outs = {s: dvc_repo.out_paths(repo, s) for s in (EVALUATE, EXPORT) if s in stages}
    onnx = None
    if EXPORT in outs:
        onnx = [m["file"] for m in report.model_files(repo, outs[EXPORT])]
        onnx = [f for f in onnx if f.endswith(".onnx")]
    reg = register_version(
        repo,
        model_name,
        bump,
        _test_acc(repo, outs.get(EVALUATE, []), dvc_repo.metrics(repo)),
        min_test_acc,
        onnx,
        artifact,
        return_state=True,
    ).result()
    # A rejected registration's state carries no data: None.
    return reg.tag if isinstance(reg, registry.Registration) else None


@task(name="image", cache_policy=NO_CACHE)
def build_image(repo: Path, registered: str, base: str) -> image.Image:
    """The container image of the version just registered (`name@vX.Y.Z`), tagged with its
    version (`pipelines.image`)."""
    name, version = registered.split("@", 1)
    return image.build(registered, str(repo), f"localhost/mnist-serve-{name}:{version}", base)


@flow(name="mnist-pipeline")
def pipeline(
    root: str = ".",
    overrides: Annotated[list[str] | None, Cli(("-S", "--set-param"), "KEY=VALUE")] = None,
    targets: Annotated[list[str] | None, Cli(positional=True)] = None,
    force: bool = False,
    push: Annotated[bool, Cli(("--no-push",), help="skip `dvc push`")] = True,
    register_model: Annotated[bool, Cli(("--register",))] = False,
    model_name: str = MODEL_NAME,
    bump: Bump = "minor",
    min_test_acc: flow_cli.Fraction = 0.98,
    retries: flow_cli.Count = 3,
    retry_delay_s: flow_cli.Seconds = 30.0,
    stage_timeout_s: flow_cli.PositiveSeconds = 6 * 3600,
    container_image: bool = False,
    image_base: str = image.DEFAULT_BASE,
) -> dict[str, Any]:
    """Run the DVC pipeline in `root`, stage by stage.

    Args:
        root: the DVC repository (a clone of this project).
        overrides: params overrides as `dvc exp run -S` takes them, e.g. train.max_epochs=3
            (repeatable); written to params.yaml after validation.
        targets: run only these stages and those they depend on (`dvc repro <targets>`);
            default: every stage.
        force: re-run every stage even if DVC says it is up to date.
        push: `dvc push` the outputs to the default remote after a successful run.
        register_model: tag the model as the next `<model_name>@vX.Y.Z` once its checks pass.
        model_name: the artifact to register; one of `dvc.yaml`'s `artifacts:` if it has any.
        bump: which part of the version to increase when registering.
        min_test_acc: the test accuracy a model needs to be registered.
        retries: retries of a stage after a transient failure (signal, timeout, lock, network).
        retry_delay_s: delay before the first retry; doubled for each later one, with jitter.
        stage_timeout_s: a stage still running after this long is stopped (and retried).
        container_image: build the container image of the version registered, tagged with
            its version; its ID goes into the report (docs/shipping.md).
        image_base: the image's base (a Python image; `python -m pipelines.image base`).
    """
    logger = get_run_logger()
    user_values.check(model_name=model_name)  # it becomes a git tag
    repo = user_values.existing_folder("--root", root)
    with dvc_repo.one_repo(repo):
        # A typo in the name should not cost a whole training run to find out.
        declared = _declared_artifacts(repo, model_name) if register_model else {}
        changes = check_params(repo, list(overrides or []))
        dvc_repo.written(repo)  # params.yaml
        stages = dvc_repo.stage_order(repo, targets)
        logger.info("stages, in order: %s", " -> ".join(stages))
        before = dvc_repo.metrics(repo)

        stage_task = run_stage.with_options(
            retries=retries,
            retry_delay_seconds=exponential_backoff(backoff_factor=retry_delay_s),
        )
        runs: list[StageRun] = []
        for stage in stages:
            # return_state: a skipped stage returns its state; .result() raises if it failed.
            state = stage_task(repo, stage, force, stage_timeout_s, return_state=True)
            run = state.result()
            assert isinstance(run, StageRun)  # a returned state's data is the run
            runs.append(run)

        pushed = dvc_push(repo) if push else "not pushed (push=False)"
        registered = (
            _register(repo, stages, model_name, bump, min_test_acc, declared.get(model_name))
            if register_model
            else None
        )
        built = None
        if container_image and registered is not None:
            built = build_image(repo, registered, image_base)
            registered = f"{registered}; image {built.tag} ({built.id})"
        publish_report(repo, stages, runs, before, changes, pushed, registered)
        return {
            "stages": [asdict(r) for r in runs],
            "pushed": pushed,
            "registered": registered,
            "image": asdict(built) if built else None,
            "params_changes": changes,
        }


class AuditFailed(errors.StageError):
    """The audited commit did not reproduce: some output's bytes differ from its dvc.lock."""


@flow(name="mnist-pipeline-audit")
def audit(
    root: str = ".",
    rev: str = "HEAD",
    stages: list[str] | None = None,
    timeout_s: flow_cli.PositiveSeconds = 6 * 3600,
    remote: bool = True,
) -> dict[str, Any]:
    """Check `rev`'s git-tracked outputs against its dvc.lock, re-hash the cache objects it
    names, rebuild it in a fresh clone and compare every output with its dvc.lock
    (`pipelines.verify`); the run fails when one check fails. Publishes the comparison.

    Args:
        root: the repository to clone from.
        rev: the commit, branch or tag to audit (a schedule audits `main`).
        stages: only these stages and their upstream; default: every stage.
        timeout_s: stop the rebuild after this long.
        remote: re-hash the commit's objects on the default DVC remote too.
    """
    logger = get_run_logger()
    folder = user_values.existing_folder("--root", root)
    result = verify.verify(
        folder, rev, stages, timeout_s=timeout_s, echo=logger.info, remote=remote
    )
    text = verify.report(result)
    checks = [f"MISMATCH: {c.describe()}" for c in result.committed if not c.same]
    checks += [result.cache.summary()] if result.cache else []
    create_markdown_artifact(
        f"# Reproducibility audit of `{result.commit[:12]}`\n\n"
        + report.markdown_table([{**asdict(o), "verdict": o.verdict} for o in result.outputs])
        + "".join(f"\n- {line}" for line in [*checks, *result.reasons, *result.notes])
        + (f"\n\nThe rebuild failed: {result.failed}" if result.failed else ""),
        key=AUDIT_KEY,
        description="Rebuilt outputs against the committed dvc.lock",
    )
    logger.info("%s", text)
    if not result.ok:
        raise AuditFailed(text)
    return {"commit": result.commit, "outputs": len(result.outputs), "same": True}


def parser() -> argparse.ArgumentParser:
    """The pipeline flow's parameters as options (`pipelines.flow_cli`)."""
    p = argparse.ArgumentParser(
        prog="python -m pipelines.flow", description=__doc__.splitlines()[0]
    )
    flow_cli.add_arguments(p, pipeline)
    return p


def run_from_args(argv: list[str] | None = None) -> None:
    _, kwargs = flow_cli.parse(parser(), pipeline, argv)
    user_values.existing_folder("--root", kwargs["root"])  # before a flow run starts
    pipeline(**kwargs)


def main(argv: list[str] | None = None) -> int:
    """Exit 0 when the run succeeded, 2 for bad params, stage or model names, 1 when a step
    failed."""
    return errors.run(run_from_args, argv)


if __name__ == "__main__":
    sys.exit(main())

"""Promoting a sweep's best trial: `dvc exp apply` it here (with `origin`, its outputs pulled
from the DVC remote first) and, if asked, tag it as the next model version
(`pipelines.registry`)."""

from __future__ import annotations

from pathlib import Path

from prefect import get_run_logger

from pipelines import dvc_repo, registry
from pipelines.registry import register_version
from pipelines.retry import StepFailed
from pipelines.sweep import report as sr
from pipelines.sweep.options import Promotion


def promote(
    root: Path,
    best: sr.TrialResult,
    targets: list[str],
    url: str | None,
    objective: str,
    options: Promotion,
) -> str | None:
    """Apply the best trial; with `register_model`, register it: returns its tag, or None."""
    promote_best(root, best.name, targets, url)
    if not options.register_model:
        return None
    declared = dvc_repo.artifacts(root)
    reg = register_version(
        root,
        options.model_name,
        options.bump,
        best.metrics.get("test.acc", best.objective if objective == "test.acc" else None),
        options.min_test_acc,
        None,
        declared.get(options.model_name),
        return_state=True,
    ).result()
    # A rejected registration's state carries no data: None.
    return reg.tag if isinstance(reg, registry.Registration) else None


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

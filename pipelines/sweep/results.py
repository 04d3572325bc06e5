"""A sweep's trials as the report shows them: each from its experiment, its run, the pruner
that stopped it or its failure; then read back from `dvc exp show`, as a user sees them."""

from __future__ import annotations

import json
import re
from pathlib import Path

from pipelines.sweep import early_stopping, trials
from pipelines.sweep import report as sr
from pipelines.sweep.space import Trial

RESULTS_DIR = Path("sweeps")
_ERROR_LINE = re.compile(r"^\s*(\w+\.)*\w*(Error|Exception): |^error: ")


def outcome(
    trial: Trial,
    exp: trials.Experiment | None,
    run: trials.TrialRun | None,
    objective: str,
    files: list[str],
    seconds: float | None,
    attempts: int,
    note: str = "",
) -> sr.TrialResult:
    """A trial that ran (`run`) or had run (`exp`): succeeded, or failed for want of a metric."""
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


def pruned(
    trial: Trial,
    curve: dict[int, float],
    metric: str,
    seconds: float | None,
    attempts: int,
    worker: str = "",
    when: str = "",
) -> sr.TrialResult:
    """A trial the pruner stopped: no experiment, no objective, its epochs until then."""
    note = f"pruned{when} {early_stopping.describe(curve, metric)}"
    return sr.TrialResult(
        trial.name,
        sr.PRUNED,
        trial.values,
        seconds=seconds,
        attempts=attempts,
        note=note,
        ran=[early_stopping.STAGE],
        worker=worker,
        curve=dict(sorted(curve.items())),
    )


def failed(
    trial: Trial, note: str, attempts: int = 0, seconds: float | None = None
) -> sr.TrialResult:
    return sr.TrialResult(
        trial.name, sr.FAILED, trial.values, None, {}, seconds, attempts, None, note
    )


def cause(text: str) -> str:
    """A failure's first line, and the error line of the output it carries (the cause)."""
    lines = text.splitlines()
    errors_ = [ln.strip() for ln in lines[1:] if _ERROR_LINE.search(ln)]
    return "\n".join([lines[0], *errors_[-1:], *lines[1:]]) if lines else text


def results_file(root: Path, sweep: str) -> Path:
    return root / RESULTS_DIR / f"{sweep}.json"


def earlier_seconds(path: Path) -> dict[str, float]:
    """Each trial's seconds from the sweep's previous report, for the trials done then."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return {t["name"]: t["seconds"] for t in data.get("trials", []) if t.get("seconds")}

"""A sweep's report: the leaderboard, the summary and the plot, from plain trial results.

Nothing here talks to Prefect or DVC (the sweep flow publishes what these return), so it is
tested with plain data.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeGuard

from pipelines.report import fmt, markdown_table

SUCCEEDED, FAILED, PRUNED = "succeeded", "failed", "pruned"


@dataclass
class TrialResult:
    """One trial as the report shows it. status: succeeded | failed | pruned."""

    name: str
    status: str
    values: dict[str, str]  # the trial's overrides, {key: value as written}
    objective: float | None = None
    metrics: dict[str, Any] = field(default_factory=dict)  # other metrics, flattened
    seconds: float | None = None
    attempts: int = 0
    rev: str | None = None
    note: str = ""  # the error, or "done earlier" for a trial found finished
    ran: list[str] = field(default_factory=list)  # the stages DVC ran for it
    worker: str = ""  # host:pid that ran it
    curve: dict[int, float] = field(default_factory=dict)  # the pruned-on metric, by epoch


def find_metric(metrics: dict[str, dict[str, Any]], name: str) -> float | None:
    """`name` in `dvc metrics show` data: `file:key`, or a key that only one file has."""
    path, sep, key = name.rpartition(":")
    if sep:
        value = metrics.get(path, {}).get(key)
        return float(value) if _number(value) else None
    hits = [float(m[name]) for m in metrics.values() if _number(m.get(name))]
    return hits[0] if len(hits) == 1 else None


def metric_names(metrics: dict[str, dict[str, Any]]) -> list[str]:
    """Every numeric metric as `file:key`."""
    return [f"{p}:{k}" for p, m in sorted(metrics.items()) for k, v in m.items() if _number(v)]


def _number(value: Any) -> TypeGuard[int | float]:
    return isinstance(value, int | float) and not isinstance(value, bool)


def other_metrics(metrics: dict[str, dict[str, Any]], files: list[str]) -> dict[str, Any]:
    """The numeric metrics of `files`, keyed `key` where unambiguous, `file:key` otherwise."""
    keys: dict[str, list[str]] = {}
    for path in files:
        for key, value in metrics.get(path, {}).items():
            if _number(value):
                keys.setdefault(key, []).append(path)
    out = {}
    for key, paths in keys.items():
        for path in paths:
            out[key if len(paths) == 1 else f"{path}:{key}"] = metrics[path][key]
    return out


def ranked(results: list[TrialResult], maximize: bool) -> list[TrialResult]:
    """Best first; trials without an objective last, in name order."""
    scored = [r for r in results if r.objective is not None and r.status == SUCCEEDED]
    scored.sort(key=lambda r: (-(r.objective or 0.0) if maximize else r.objective or 0.0, r.name))
    rest = sorted((r for r in results if r not in scored), key=lambda r: r.name)
    return scored + rest


def counts(results: list[TrialResult]) -> dict[str, int]:
    return {s: sum(r.status == s for r in results) for s in (SUCCEEDED, FAILED, PRUNED)}


def leaderboard(
    results: list[TrialResult], swept: list[str], objective: str, maximize: bool
) -> list[dict[str, Any]]:
    """One row per trial, best first: rank, name, status, swept params, objective, metrics."""
    rows = []
    order = ranked(results, maximize)
    metric_cols = sorted({k for r in order for k in r.metrics})
    for i, r in enumerate(order, 1):
        row: dict[str, Any] = {
            "rank": i if r.objective is not None and r.status == SUCCEEDED else None,
            "trial": r.name,
            "status": r.status,
        }
        row.update({k: r.values.get(k) for k in swept})
        row[objective] = r.objective
        row.update({k: r.metrics.get(k) for k in metric_cols if k != objective})
        row["seconds"] = None if r.seconds is None else round(r.seconds, 1)
        row["attempts"] = r.attempts
        row["note"] = r.note.splitlines()[0][:120] if r.note else ""
        rows.append(row)
    return rows


def summary_markdown(
    sweep: str,
    results: list[TrialResult],
    swept: list[str],
    objective: str,
    maximize: bool,
    plot: Path | None,
    results_file: Path | None,
) -> str:
    """The sweep in a few lines: the counts, the best trial and the commands that use it."""
    c = counts(results)
    best = best_trial(results, maximize)
    parts = [
        f"# Sweep `{sweep}`\n\n",
        f"{len(results)} trials: {c[SUCCEEDED]} succeeded, {c[FAILED]} failed, "
        f"{c[PRUNED]} pruned. Objective: `{objective}`, "
        f"{'maximised' if maximize else 'minimised'}.\n",
    ]
    if best is not None:
        parts += [
            f"\n## Best trial: `{best.name}` ({objective} = {fmt(best.objective)})\n\n",
            markdown_table([{"param": k, "value": best.values.get(k)} for k in swept])
            if swept
            else "",
            "\nApply it to the workspace (params.yaml and outputs), or keep it on a branch:\n\n",
            f"```\ndvc exp apply {best.name}\ndvc exp branch {best.name} {best.name}\n```\n",
        ]
    failed = [r for r in results if r.status == FAILED]
    if failed:
        parts += [
            "\n## Failed trials\n\n",
            markdown_table([{"trial": r.name, "error": r.note.splitlines()[0]} for r in failed]),
        ]
    if plot or results_file:
        parts.append("\nFiles: " + ", ".join(f"`{p}`" for p in (plot, results_file) if p) + "\n")
    parts += [
        "\n## Leaderboard\n\n",
        markdown_table(leaderboard(results, swept, objective, maximize)),
    ]
    return "".join(parts)


def best_trial(results: list[TrialResult], maximize: bool) -> TrialResult | None:
    order = ranked(results, maximize)
    return order[0] if order and order[0].objective is not None else None


def as_json(
    sweep: str,
    commit: str,
    mode: str,
    objective: str,
    maximize: bool,
    swept: list[str],
    results: list[TrialResult],
) -> dict[str, Any]:
    """The results file: everything the leaderboard shows, best first."""
    best = best_trial(results, maximize)
    return {
        "sweep": sweep,
        "commit": commit,
        "mode": mode,
        "objective": objective,
        "direction": "maximize" if maximize else "minimize",
        "swept": swept,
        "counts": counts(results),
        "best": best.name if best else None,
        "trials": [asdict(r) for r in ranked(results, maximize)],
    }


def _as_number(text: str | None) -> float | None:
    try:
        value = float(text) if text is not None else None
    except ValueError:
        return None
    return value if value is not None and math.isfinite(value) else None


def plot(
    path: Path, results: list[TrialResult], swept: list[str], objective: str, maximize: bool
) -> None:
    """The objective against each swept param, one panel per param; the best trial in red."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from mnist_pipeline.atomic import write_figure

    done = [r for r in results if r.objective is not None and r.status == SUCCEEDED]
    best = best_trial(results, maximize)
    keys = swept or ["trial"]
    fig, axes = plt.subplots(1, len(keys), figsize=(4 * len(keys), 3.4), squeeze=False)
    for ax, key in zip(axes[0], keys, strict=True):
        raw = [r.name if key == "trial" else r.values.get(key) for r in done]
        numbers = [_as_number(v) for v in raw]
        numeric = key != "trial" and all(v is not None for v in numbers) and len(set(raw)) > 1
        if numeric:
            xs: list[Any] = numbers
            positive = [x for x in xs if x > 0]
            if len(positive) == len(xs) and max(xs) / min(xs) >= 10:
                ax.set_xscale("log")
        else:
            labels = sorted({str(v) for v in raw}, key=lambda s: (_as_number(s) is None, s))
            xs = [labels.index(str(v)) for v in raw]
            ax.set_xticks(range(len(labels)), labels, rotation=30 if len(labels) > 4 else 0)
        ys = [r.objective for r in done]
        ax.scatter(xs, ys, color="tab:blue", zorder=2)
        if best is not None and best in done:
            i = done.index(best)
            ax.scatter([xs[i]], [ys[i]], color="tab:red", s=80, zorder=3, label=best.name)
            ax.legend(fontsize="small", loc="best")
        ax.set_xlabel(key)
        ax.set_ylabel(objective)
        ax.grid(alpha=0.3)
    fig.suptitle(f"{objective} against each swept param ({len(done)} trials)")
    write_figure(path, fig, dpi=100)

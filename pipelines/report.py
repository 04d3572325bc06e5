"""The end-of-run report: plain data in, markdown and tables out (the flow publishes them).

Nothing here talks to Prefect or DVC, so it is tested with plain dicts.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

Metrics = dict[str, dict[str, Any]]  # {file: {"test.acc": 0.99, ...}}, as dvc metrics show


@dataclass(frozen=True)
class StageRun:
    stage: str
    state: str  # "ran", "skipped" (up to date) or "cached" (restored from DVC's run cache)
    attempts: int
    seconds: float


def fmt(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return "—" if value is None else str(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return f"{value:.4g}" if not math.isnan(value) else "nan"
    return str(value)


def fmt_delta(delta: Any) -> str:
    if not isinstance(delta, int | float) or isinstance(delta, bool):
        return ""
    if delta == 0:
        return "0"
    return f"{delta:+.4g}"


def metrics_rows(now: Metrics, before: Metrics, head_diff: Metrics) -> list[dict[str, str]]:
    """One row per numeric metric: value, change since the previous run and since HEAD."""
    rows = []
    for path in sorted(now):
        for key, value in now[path].items():
            if not isinstance(value, int | float) or isinstance(value, bool):
                continue
            old = before.get(path, {}).get(key)
            prev = value - old if isinstance(old, int | float) and old is not None else None
            head = head_diff.get(path, {}).get(key, {})
            rows.append(
                {
                    "file": path,
                    "metric": key,
                    "value": fmt(value),
                    "Δ previous run": fmt_delta(prev) if old is not None else "new",
                    "Δ HEAD": fmt_delta(head.get("diff")) if head else "0",
                }
            )
    return rows


def per_class_rows(per_class: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """plots/evaluate/per_class.json as a table; a class's accuracy is its recall."""
    return [
        {
            "class": r["class"],
            "accuracy": r["recall"],
            "precision": r["precision"],
            "f1": r["f1"],
            "support": r["support"],
        }
        for r in per_class
    ]


def provenance_rows(records: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per stage's run record (`mnist_pipeline.provenance`): where and how it ran."""
    rows = []
    for stage, r in records.items():
        git = r.get("git") or {}
        cpu = r.get("cpu") or {}
        libs = r.get("libraries") or {}
        commit = str(git.get("commit", ""))[:12] + (" (dirty)" if git.get("dirty") else "")
        rows.append(
            {
                "stage": stage,
                "finished": r.get("finished"),
                "host": r.get("host"),
                "commit": commit or None,
                "precision": r.get("precision"),
                "device": r.get("device"),
                "cpu": cpu.get("model"),
                "bf16 / AMX": f"{cpu.get('avx512_bf16')} / {cpu.get('amx')}",
                "torch": libs.get("torch"),
                "params sha256": str(r.get("params_sha256", ""))[:12] or None,
            }
        )
    return rows


def markdown_table(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "_none_\n"
    cols = list(rows[0])
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(fmt(r[c]) for c in cols) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def summary_markdown(
    run_name: str,
    stages: list[StageRun],
    metric_rows: list[dict[str, str]],
    models: list[dict[str, Any]],
    remote: str | None,
    pushed: str,
    registered: str | None,
    overrides: dict[str, Any],
    provenance: list[dict[str, Any]] | None = None,
) -> str:
    ran = [s.stage for s in stages if s.state == "ran"]
    parts = [
        f"# MNIST pipeline run `{run_name}`\n\n",
        (
            f"Ran {', '.join(f'`{s}`' for s in ran)}; the other stages were up to date.\n"
            if ran
            else "Nothing changed: every stage was up to date, none ran.\n"
        ),
        "\n## Stages\n\n",
        markdown_table(
            [
                {
                    "stage": s.stage,
                    "result": s.state,
                    "attempts": s.attempts,
                    "seconds": round(s.seconds, 1),
                }
                for s in stages
            ]
        ),
    ]
    if overrides:
        parts += [
            "\n## Params overrides (written to params.yaml)\n\n",
            markdown_table([{"key": k, "was": a, "now": b} for k, (a, b) in overrides.items()]),
        ]
    parts += [
        "\n## Metrics\n\n",
        "Δ previous run: against the metrics in this workspace before this run; "
        "Δ HEAD: `dvc metrics diff HEAD`.\n\n",
        markdown_table(metric_rows),
        "\n## Models\n\n",
        markdown_table(models),
        f"\nDVC remote: `{remote or 'none configured'}` ({pushed}). "
        "Another clone gets them with `dvc pull`; without a clone, "
        "`dvc get <repo-url> <path>`.\n",
    ]
    if registered:
        parts.append(f"\nRegistered model version: `{registered}`.\n")
    if provenance:
        parts += [
            "\n## Provenance\n\n",
            "Where each stage's outputs were last made (its run record; library versions, "
            "input md5s and times are in the record itself).\n\n",
            markdown_table(provenance),
        ]
    return "".join(parts)


def model_files(root: Path, paths: list[Path]) -> list[dict[str, Any]]:
    """The model files (.pt, .onnx) among a run's outputs, with their sizes."""
    files = [f for p in paths for f in (sorted(p.rglob("*")) if p.is_dir() else [p])]
    rows = []
    for p in sorted(set(files)):
        if p.suffix in (".pt", ".onnx") and p.is_file():
            rows.append(
                {
                    "file": p.relative_to(root).as_posix(),
                    "format": "ONNX" if p.suffix == ".onnx" else "PyTorch",
                    "kB": round(p.stat().st_size / 1024, 1),
                }
            )
    return rows


def read_json(path: Path) -> Any:
    return json.loads(path.read_text()) if path.is_file() else None

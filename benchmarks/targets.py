"""The speed and size targets the project holds itself to, each beside what this run measured.

This is the one list of targets: `python -m benchmarks` judges its run against it, the serving
benchmark takes its cell and its scraping bound from it, and the docs' targets table
(`python -m benchmarks.docs`) is generated from it with the committed reference results.
Only what the run measured is judged: a target whose figure is missing (a section skipped, no
`--full-runs`, no GPU) says "not measured", never "met". The pruned model's figures are the
`prune` stage's committed results (its `--metrics` file in dvc.yaml), as `dvc repro` left them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Target:
    what: str
    at_most: bool  # True: the figure must be <= bound; False: >= bound
    bound: float
    path: tuple[str, ...]  # where the figure is in the results

    def judge(self, results: dict[str, Any]) -> dict[str, Any]:
        got: Any = results
        for key in self.path:
            got = got.get(key) if isinstance(got, dict) else None
        if not isinstance(got, int | float):
            verdict, got = "not measured", None
        else:
            met = got <= self.bound if self.at_most else got >= self.bound
            verdict = "met" if met else "not met"
        return {
            "what": self.what,
            "target": f"{'<=' if self.at_most else '>='} {self.bound:g}",
            "measured": got,
            "verdict": verdict,
        }


# The load test's target cell: this model at this concurrency, on 2 cores.
SERVING_CELL: dict[str, Any] = {
    "model": "pruned-int8",
    "concurrency": 8,
    "rps": 1000.0,
    "p99_ms": 20.0,
}
# Scraping /metrics once a second may cost at most this fraction of the cell's requests/s.
SCRAPE_MAX_COST = 0.05
# Drift monitoring on, against off, at the same cell: its share of the cell's req/s, at most.
MONITORING_MAX_COST = 0.05
_CELL = f"{SERVING_CELL['model']} at concurrency {SERVING_CELL['concurrency']}"

# what, at most (else at least), the bound, and where the figure is in the results
_TABLE = [
    (
        "epoch time, seed recipe / project (x, per image)",
        False,
        5.0,
        "ratios.project_speedup_over_seed",
    ),
    (
        "epoch time, project / plain PyTorch loop (x, per image)",
        True,
        1.10,
        "ratios.project_time_over_plain",
    ),
    ("training epoch, steady state (s)", True, 0.8, "training.project.steady_epoch_s"),
    ("fit time to 99.0% test accuracy (s)", True, 4.0, "training.project.time_to_target_s"),
    ("final test accuracy", False, 0.991, "training.project.final_test_acc"),
    ("dvc repro from scratch (s)", True, 30.0, "orchestration.full.dvc_repro_full_s"),
    ("dvc repro, nothing changed (s)", True, 0.6, "orchestration.noop.dvc_repro_noop_s"),
    (
        "stage start-up, process start to its work, worst stage (s)",
        True,
        1.5,
        "startup.stages.worst_startup_s",
    ),
    ("flow, nothing changed, ephemeral (s)", True, 6.0, "orchestration.noop.flow_noop_s"),
    (
        "flow, nothing changed, against a running server (s)",
        True,
        2.0,
        "orchestration.noop.flow_noop_server_s",
    ),
    (f"serving, {_CELL} (req/s)", False, SERVING_CELL["rps"], "serving.target_best.rps"),
    (f"serving, {_CELL}, p99 (ms)", True, SERVING_CELL["p99_ms"], "serving.target_best.p99_ms"),
    (
        f"serving, {_CELL}, drift monitoring's cost (share of req/s)",
        True,
        MONITORING_MAX_COST,
        "serving.monitoring.cost",
    ),
    ("sweep, --jobs 2 over --jobs 1 on 2 cores (x)", False, 1.6, "sweep.ratio"),
    ("pruned params / dense", True, 0.25, "prune_metrics.ratio.params"),
    ("pruned MACs / dense", True, 0.25, "prune_metrics.ratio.macs"),
    ("pruned accuracy lost (points)", True, 0.1, "prune_metrics.acc_drop_points"),
]
TARGETS = [
    Target(what, at_most, bound, tuple(at.split("."))) for what, at_most, bound, at in _TABLE
]


def judge(results: dict[str, Any], prune_metrics: dict[str, Any] | None) -> list[dict[str, Any]]:
    """Every target with its measured figure and verdict."""
    return [t.judge({**results, "prune_metrics": prune_metrics}) for t in TARGETS]

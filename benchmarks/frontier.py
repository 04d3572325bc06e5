"""Issue 28's goals, each beside the best figure measured and what stops it there: a generated
block of docs/speed.md (`benchmarks.docs`), every figure read from the committed runs.

- the side-by-side run (`--compare`): the whole loop, the no-change commands, the epoch;
- the start-up run (`--only startup`): each stage's start, `import torch` and a no-change
  `dvc repro` broken down by `python -X importtime`, the libraries' imports;
- the step profile (`benchmarks.step_profile`): what a training step spends its time on;
- the prune recipe study (`benchmarks.prune_recipes`): accuracy lost against fine-tuning;
- the run records and measurements `dvc repro` left: each stage's own seconds, by phase.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import yaml

REF = "benchmarks/reference"
COMPARE = f"{REF}/cpu-2core-compare.json"
STARTUP = f"{REF}/cpu-2core-startup.json"
STEP = f"{REF}/cpu-2core-step-profile.json"
RECIPES = f"{REF}/cpu-2core-prune-recipes.json"
# MNIST's training set; `prepare.val_size` of it is held out for validation.
MNIST_TRAIN = 60_000


def _load(root: Path, rel: str) -> dict[str, Any]:
    return json.loads((root / rel).read_text())


def _own_s(root: Path, stage: str) -> float:
    return float(_load(root, f"provenance/{stage}.json")["seconds"])


def _phases(root: Path, stage: str) -> str:
    phases = _load(root, f"measurements/{stage}.json").get("phases_s", {})
    return ", ".join(
        f"{what} {s:.1f} s" for what, s in sorted(phases.items(), key=lambda p: -p[1])
    )


def _epoch(root: Path, branch: dict[str, Any]) -> list[str]:
    params = yaml.safe_load((root / "params.yaml").read_text())
    batch = params["train"]["batch_size"]
    steps = math.ceil((MNIST_TRAIN - params["prepare"]["val_size"]) / batch)
    groups = _load(root, STEP)["step_profile"]["portable"]["groups_ms_per_step"]
    conv = groups["conv forward"] + groups["conv backward"]
    pool = groups["max-pool forward"] + groups["max-pool backward"] + groups["fill_"]
    return [
        f"| training epoch, steady (s) | <= 1.2 | {branch['steady_epoch_s']:.2f} "
        f"| the convolutions: {conv:.1f} ms of each batch-{batch} step, forward and backward "
        f"(oneDNN's AVX2 kernels, the portable profile), so {conv * steps / 1000:.2f} s for the "
        f"{steps} steps of an epoch on their own; max-pooling and its zero-fill "
        f"{pool:.1f} ms more | `{STEP}`, `{COMPARE}` |"
    ]


def _startup(root: Path, branch: dict[str, Any]) -> list[str]:
    st = _load(root, STARTUP)["startup"]
    torch, dvc = (st["import_profiles"][k] for k in ("import torch", "dvc repro, nothing changed"))
    worst = max(
        (s for s in st["stages"].values() if isinstance(s, dict)), key=lambda s: s["startup_s"]
    )
    torch_top = max(torch["top_own_s"].items(), key=lambda kv: kv[1])
    dvc_rest = dvc["wall_s"] - dvc["imports_s"]
    return [
        f"| stage start-up, worst stage (s) | <= 1.5 | {worst['startup_s']:.2f} "
        f"| `import torch`: {st['libraries']['torch']['import_s']:.2f} s on its own, "
        f"{torch['modules']:,} modules (under `python -X importtime`, "
        f"the slowest on its own is `{torch_top[0]}`, {torch_top[1]:.2f} s of "
        f"{torch['imports_s']:.2f} s); every stage that computes with torch imports it before "
        f"its work | `{STARTUP}` |",
        f"| `dvc repro`, nothing changed (s) | <= 0.6 | {dvc['wall_s']:.2f} "
        f"| DVC itself: {dvc['modules']:,} modules imported in {dvc['imports_s']:.2f} s, then "
        f"{dvc_rest:.2f} s of its own work (collecting the stages from `dvc.yaml` and "
        f"`dvc.lock`, checking each stage's dependencies); no stage runs | `{STARTUP}` |",
        f"| flow, nothing changed, against a running server (s) | <= 2 | "
        f"{branch['flow_noop_server_s']:.2f} | `import prefect`: "
        f"{st['libraries']['prefect']['import_s']:.2f} s on its own, then the flow's API calls "
        f"and a `dvc` status per stage | `{STARTUP}`, `{COMPARE}` |",
    ]


def _prune(root: Path) -> list[str]:
    study = _load(root, RECIPES)
    goal = study["targets"]["goal_loss_points"]
    by_loss = sorted(study["recipes"].items(), key=lambda kv: kv[1]["summary"]["loss_mean"])
    best_name, best = by_loss[0]
    chosen = study["recipes"][study["chosen"]]["summary"]
    tune_s = _load(root, "measurements/prune.json")["finetune_time_s"]
    per_epoch = tune_s / chosen["student_epochs"]
    stage_s = _own_s(root, "prune")
    lost = _load(root, "metrics/prune.json")["acc_drop_points"]
    b = best["summary"]
    reached = [n for n, e in by_loss if e["summary"]["loss_mean"] <= goal]
    verdict = f"`{'`, `'.join(reached)}` reached {goal:g}" if reached else f"none reached {goal:g}"
    return [
        f"| `prune` stage (s) | <= 15 | {stage_s:.1f} | fine-tuning the student: {tune_s:.1f} s "
        f"for {chosen['student_epochs']} epochs ({per_epoch:.1f} s each), and "
        f"{stage_s - tune_s:.1f} s besides | "
        "`provenance/prune.json`, `measurements/prune.json` |",
        f"| pruned accuracy lost, mean over seeds (points) | <= {goal:g} | {lost:.2f} "
        f"(chosen `{study['chosen']}`: {chosen['loss_mean']:.2f} ± {chosen['loss_std']:.2f}) "
        f"| the fine-tuning budget: the lowest mean loss measured is {b['loss_mean']:.2f} "
        f"± {b['loss_std']:.2f} (`{best_name}`, {b['student_epochs']} student epochs, about "
        f"{b['student_epochs'] * per_epoch:.0f} s of fine-tuning at the stage's pace); of "
        f"{len(by_loss)} recipes, {verdict} | `{RECIPES}` |",
    ]


def _onnx(root: Path) -> list[str]:
    return [
        f"| `{stage}` stage, own work (s) | <= 3 | {_own_s(root, stage):.1f} "
        f"| {_phases(root, stage)} | `provenance/{stage}.json`, `measurements/{stage}.json` |"
        for stage in ("export", "quantize")
    ]


def frontier_block(root: Path) -> str:
    cmp = _load(root, COMPARE)["compare"]
    branch, ratios = cmp["sides"]["branch"], cmp["ratios"]
    stages = ("train", "prune", "export", "quantize", "profile")
    heavy = ", ".join(f"{s} {branch[f'stage_wall_s/{s}']:.1f}" for s in stages)
    lines = [
        "| goal (issue 28) | goal | measured | what stops it | evidence |",
        "|---|--:|--:|---|---|",
        f"| `dvc repro` from scratch, reference / branch (x) | >= 2 | "
        f"{ratios['dvc_repro_full_s']:.2f} | the stages' own work: of "
        f"{branch['dvc_repro_full_s']:.1f} s, {heavy} s (wall, as DVC ran them); the rows "
        f"below say what stops each | `{COMPARE}` |",
        *_epoch(root, branch),
        *_startup(root, branch),
        *_prune(root),
        *_onnx(root),
    ]
    sources = ", ".join(
        f"`{rel}`"
        for rel in (COMPARE, STARTUP, STEP, RECIPES, "params.yaml", "metrics/prune.json")
    )
    sources += ", `provenance/<stage>.json`, `measurements/<stage>.json`"
    return "\n".join([*lines, "", f"*Generated by `python -m benchmarks.docs` from {sources}.*"])

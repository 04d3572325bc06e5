"""Issue 28's goals, each beside the best figure measured and what stops it there: a generated
block of docs/speed.md (`benchmarks.docs`), every figure read from the committed runs.

- the side-by-side run (`--compare`): the whole loop, the no-change commands, the epoch, and
  each stage's own seconds (the median of its repetitions: the figure each stage goal is
  judged by);
- the start-up run (`--only startup`): each stage's start, `import torch` and a no-change
  `dvc repro` broken down by `python -X importtime`, the libraries' imports;
- the step profile (`benchmarks.step_profile`): what a training step spends its time on;
- the prune recipe study (`benchmarks.prune_recipes`): accuracy lost against fine-tuning;
- the run records and measurements the committed `dvc repro` left: where one run of a stage
  spent its own seconds, by phase.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import yaml

from benchmarks.startup import FLOW_PROFILE

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


# What each phase of `export` and `quantize` (their `phases_s`) does.
PHASES = {
    "export": "`torch.onnx.export` with the dynamo exporter (torch.export, then ONNX), 2 models",
    "parity": "PyTorch's and ONNX Runtime's logits on the test set",
    "timing": "the latency and throughput runs (`latency_runs`, `throughput_runs`)",
    "contract": "INT8 against float on the test set, in the reference and in ONNX Runtime",
    "quantize": "calibration and quantization",
    "plot": "the trade-off PNG (matplotlib)",
}


def _phases(root: Path, stage: str) -> str:
    phases = _load(root, f"measurements/{stage}.json").get("phases_s", {})
    split = "; ".join(
        f"{PHASES.get(what, what)}: {s:.1f} s"
        for what, s in sorted(phases.items(), key=lambda p: -p[1])
    )
    return f"in the committed `dvc repro`'s {_own_s(root, stage):.1f} s, {split}"


def _row(
    what: str, at_most: bool, bound: float, got: float, where: str, evidence: str, shown: str = ""
) -> str:
    """One goal: its bound, the figure measured (`shown`: how to print it, if not plainly), its
    verdict, where the time or the loss goes, and the files that show it."""
    met = got <= bound if at_most else got >= bound
    sign = "<=" if at_most else ">="
    return (
        f"| {what} | {sign} {bound:g} | {shown or f'{got:.2f}'} | {'met' if met else 'not met'} "
        f"| {where} | {evidence} |"
    )


def _epoch(root: Path, branch: dict[str, Any]) -> list[str]:
    params = yaml.safe_load((root / "params.yaml").read_text())
    batch = params["train"]["batch_size"]
    steps = math.ceil((MNIST_TRAIN - params["prepare"]["val_size"]) / batch)
    groups = _load(root, STEP)["step_profile"]["portable"]["groups_ms_per_step"]
    conv = groups["conv forward"] + groups["conv backward"]
    pool = groups["max-pool forward"] + groups["max-pool backward"] + groups["fill_"]
    where = (
        f"the convolutions: {conv:.1f} ms of each batch-{batch} step, forward and backward "
        f"(oneDNN's AVX2 kernels, the portable profile), so {conv * steps / 1000:.2f} s for the "
        f"{steps} steps of an epoch on their own; max-pooling and its zero-fill {pool:.1f} ms more"
    )
    epochs = branch["time_to_target_s"] / branch["steady_epoch_s"]
    to_target = (
        f"the epoch: the fit takes {epochs:.1f} steady epochs' time to reach 99 % test accuracy, "
        "and each epoch is what the row above says"
    )
    return [
        _row(
            "fit time to 99 % test accuracy (s)",
            True,
            4.0,
            branch["time_to_target_s"],
            to_target,
            f"`{COMPARE}`",
        ),
        _row(
            "training epoch, steady (s)",
            True,
            1.2,
            branch["steady_epoch_s"],
            where,
            f"`{STEP}`, `{COMPARE}`",
        ),
    ]


def _startup(root: Path, branch: dict[str, Any]) -> list[str]:
    st = _load(root, STARTUP)["startup"]
    torch, dvc = (st["import_profiles"][k] for k in ("import torch", "dvc repro, nothing changed"))
    worst = max(
        (s for s in st["stages"].values() if isinstance(s, dict)), key=lambda s: s["startup_s"]
    )
    torch_top = max(torch["top_own_s"].items(), key=lambda kv: kv[1])
    dvc_rest = dvc["wall_s"] - dvc["imports_s"]
    torch_where = (
        f"`import torch`: {st['libraries']['torch']['import_s']:.2f} s on its own, "
        f"{torch['modules']:,} modules (under `python -X importtime`, the slowest on its own is "
        f"`{torch_top[0]}`, {torch_top[1]:.2f} s of {torch['imports_s']:.2f} s); every stage "
        "that computes with torch imports it before its work"
    )
    dvc_where = (
        f"DVC itself: {dvc['modules']:,} modules imported in {dvc['imports_s']:.2f} s, then "
        f"{dvc_rest:.2f} s of its own work (collecting the stages from `dvc.yaml` and "
        "`dvc.lock`, checking each stage's dependencies); no stage runs"
    )
    flow = st["import_profiles"].get(FLOW_PROFILE)
    flow_where = f"`import prefect`: {st['libraries']['prefect']['import_s']:.2f} s on its own"
    if flow is not None:
        flow_where += (
            f"; under `python -X importtime` the flow spent {flow['imports_s']:.2f} s of "
            f"{flow['wall_s']:.2f} s importing {flow['modules']:,} modules, and the rest in its "
            "own work: Prefect's API calls for the flow run and each task run, and DVC's status "
            "of each stage"
        )
    server = branch["flow_noop_s"] - branch["flow_noop_server_s"]
    ephemeral_where = (
        f"Prefect's temporary API server: without `PREFECT_API_URL` the flow starts one, "
        f"{server:.1f} s more than the same flow against a running server (next row)"
    )
    return [
        _row(
            "stage start-up, worst stage (s)",
            True,
            1.5,
            worst["startup_s"],
            torch_where,
            f"`{STARTUP}`",
        ),
        _row(
            "`dvc repro`, nothing changed (s)",
            True,
            0.6,
            branch["dvc_repro_noop_s"],
            dvc_where,
            f"`{STARTUP}`, `{COMPARE}`",
        ),
        _row(
            "flow, nothing changed, ephemeral (s)",
            True,
            6.0,
            branch["flow_noop_s"],
            ephemeral_where,
            f"`{COMPARE}`",
        ),
        _row(
            "flow, nothing changed, against a running server (s)",
            True,
            2.0,
            branch["flow_noop_server_s"],
            flow_where,
            f"`{STARTUP}`, `{COMPARE}`",
        ),
    ]


def _prune(root: Path, branch: dict[str, float]) -> list[str]:
    study = _load(root, RECIPES)
    goal = study["targets"]["goal_loss_points"]
    by_loss = sorted(study["recipes"].items(), key=lambda kv: kv[1]["summary"]["loss_mean"])
    best_name, best = by_loss[0]
    chosen = study["recipes"][study["chosen"]]["summary"]
    tune_s = _load(root, "measurements/prune.json")["finetune_time_s"]
    per_epoch = tune_s / chosen["student_epochs"]
    run_s, stage_s = _own_s(root, "prune"), branch["stage_own_s/prune"]
    b = best["summary"]
    reached = [n for n, e in by_loss if e["summary"]["loss_mean"] <= goal]
    verdict = f"`{'`, `'.join(reached)}` reached {goal:g}" if reached else f"none reached {goal:g}"
    stage_where = (
        f"fine-tuning the student: in the committed `dvc repro`'s {run_s:.1f} s, {tune_s:.1f} s "
        f"for {chosen['student_epochs']} epochs ({per_epoch:.1f} s each), and "
        f"{run_s - tune_s:.1f} s besides"
    )
    loss_where = (
        f"the fine-tuning budget: the lowest mean loss measured is {b['loss_mean']:.2f} "
        f"± {b['loss_std']:.2f} (`{best_name}`, {b['student_epochs']} student epochs, about "
        f"{b['student_epochs'] * per_epoch:.0f} s of fine-tuning at the stage's pace); of "
        f"{len(by_loss)} recipes, {verdict}"
    )
    shown = f"{chosen['loss_mean']:.2f} ± {chosen['loss_std']:.2f} (`{study['chosen']}`)"
    return [
        _row(
            "`prune` stage (s)",
            True,
            15.0,
            stage_s,
            stage_where,
            f"`{COMPARE}`, `provenance/prune.json`, `measurements/prune.json`",
        ),
        _row(
            "pruned accuracy lost, mean over seeds (points)",
            True,
            goal,
            chosen["loss_mean"],
            loss_where,
            f"`{RECIPES}`",
            shown,
        ),
    ]


def _onnx(root: Path, branch: dict[str, float]) -> list[str]:
    return [
        _row(
            f"`{stage}` stage, own work (s)",
            True,
            3.0,
            branch[f"stage_own_s/{stage}"],
            _phases(root, stage),
            f"`{COMPARE}`, `provenance/{stage}.json`, `measurements/{stage}.json`",
        )
        for stage in ("export", "quantize")
    ]


def frontier_block(root: Path) -> str:
    cmp = _load(root, COMPARE)["compare"]
    branch, ratios = cmp["sides"]["branch"], cmp["ratios"]
    stages = ("train", "prune", "export", "quantize", "profile")
    heavy = ", ".join(f"{s} {branch[f'stage_wall_s/{s}']:.1f}" for s in stages)
    ref = cmp["sides"]["reference"]
    moved = ", ".join(
        f"{s} {ref[f'stage_wall_s/{s}']:.1f} -> {branch[f'stage_wall_s/{s}']:.1f}"
        if ref.get(f"stage_wall_s/{s}") is not None
        else f"{s} (new) {branch[f'stage_wall_s/{s}']:.1f}"
        for s in cmp["stages"]
    )
    whole = (
        f"the stages' own work: of {branch['dvc_repro_full_s']:.1f} s, {heavy} s (wall, as DVC "
        "ran them); the rows below say where each goes"
    )
    lines = [
        "| goal (issue 28) | goal | measured | verdict | where it goes, what stops it "
        "| evidence |",
        "|---|--:|--:|---|---|---|",
        _row(
            "`dvc repro` from scratch (s)",
            True,
            30.0,
            branch["dvc_repro_full_s"],
            whole,
            f"`{COMPARE}`",
        ),
        _row(
            "`dvc repro` from scratch, reference / branch (x)",
            False,
            2.0,
            ratios["dvc_repro_full_s"],
            "each stage's wall seconds, reference -> branch: " + moved,
            f"`{COMPARE}`",
        ),
        *_epoch(root, branch),
        *_startup(root, branch),
        *_prune(root, branch),
        *_onnx(root, branch),
    ]
    sources = ", ".join(f"`{rel}`" for rel in (COMPARE, STARTUP, STEP, RECIPES, "params.yaml"))
    sources += ", `provenance/<stage>.json`, `measurements/<stage>.json`"
    return "\n".join([*lines, "", f"*Generated by `python -m benchmarks.docs` from {sources}.*"])

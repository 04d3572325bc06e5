"""Markdown tables of the side-by-side run (`benchmarks.compare`) and of the step profile
(`benchmarks.step_profile`), for `--markdown` and the docs' generated blocks."""

from __future__ import annotations

from typing import Any

# The side-by-side run's figures in the order the tables show them: prefix, then what it is.
_FIGURES = (
    ("dvc_repro_full_s", "`dvc repro` from scratch (s)"),
    ("dvc_repro_noop_s", "`dvc repro`, nothing changed (s)"),
    ("flow_noop_s", "flow, nothing changed, ephemeral (s)"),
    ("flow_noop_server_s", "flow, nothing changed, Prefect server (s)"),
    ("steady_epoch_s", "training epoch, steady state (s)"),
    ("time_to_target_s", "training, time to the target accuracy (s)"),
    ("dense_test_acc", "dense test accuracy"),
)
_PER_STAGE = (
    ("stage_wall_s", "wall s, as DVC ran it"),
    ("stage_own_s", "own s (run record)"),
    ("stage_overhead_s", "overhead s"),
    ("import_process_s", "`python -c 'import stages.X'` s"),
    ("import_s", "import s, in process"),
    ("import_modules", "modules imported"),
)


def _cell(x: Any) -> str:
    if x is None:
        return "-"
    return f"{x:,.0f}" if isinstance(x, int) or abs(x) >= 1000 else f"{x:.4g}"


def compare_markdown(c: dict[str, Any]) -> list[str]:
    ref, br = c["sides"]["reference"], c["sides"]["branch"]
    ratios, commits = c["ratios"], c["commits"]
    dirty = " plus uncommitted changes" if commits["branch_uncommitted_changes"] else ""
    lines = [
        f"Reference `{commits['reference'][:10]}`, branch `{commits['branch'][:10]}`{dirty}; "
        f"medians of {c['repetitions']} repetitions taken in turns"
        f"{' (quick: tiny params, synthetic digits)' if c['quick'] else ''}. "
        "Ratio: reference / branch, above 1 the branch is faster (or imports fewer modules).",
        "",
        "| figure | reference | branch | ratio |",
        "|---|--:|--:|--:|",
    ]
    for key, what in _FIGURES:
        if key in ref or key in br:
            row = (_cell(ref.get(key)), _cell(br.get(key)), _cell(ratios.get(key)))
            lines.append(f"| {what} | {' | '.join(row)} |")
    measured = {k.split("/", 1)[1] for k in {**ref, **br} if "/" in k}
    stages = [s for s in c.get("stages", []) if s in measured]
    stages += sorted(measured - set(stages))  # stages the branch's dvc.yaml no longer has
    lines += ["", "| stage | figure | reference | branch | ratio |", "|---|---|--:|--:|--:|"]
    for stage in stages:
        for prefix, what in _PER_STAGE:
            key = f"{prefix}/{stage}"
            if key in ref or key in br:
                row = (_cell(ref.get(key)), _cell(br.get(key)), _cell(ratios.get(key)))
                lines.append(f"| {stage} | {what} | {' | '.join(row)} |")
    return lines


def step_profile_markdown(d: dict[str, Any], top: int = 12) -> list[str]:
    profiles = d["step_profile"]
    names = sorted(profiles, key=lambda n: n != "portable")  # the portable profile first
    lines = [
        f"Batch {d['batch_size']}, {d['steps']} profiled steps per profile; ms per step "
        "(torch.profiler's self CPU time, so the operators add up to the profiled step).",
        "",
        f"| operator group | {' | '.join(names)} |",
        f"|---|{'--:|' * len(names)}",
    ]
    groups = sorted({g for p in profiles.values() for g in p["groups_ms_per_step"]})
    for g in sorted(groups, key=lambda g: -profiles[names[0]]["groups_ms_per_step"].get(g, 0)):
        cells = [_cell(profiles[n]["groups_ms_per_step"].get(g)) for n in names]
        lines.append(f"| {g} | {' | '.join(cells)} |")
    for label, key in (
        ("profiled step", "profiled_ms_per_step"),
        ("step, no profiler", "step_ms_median"),
    ):
        lines.append(f"| **{label}** | {' | '.join(_cell(profiles[n][key]) for n in names)} |")
    first = profiles[names[0]]["ops"]
    ranked = sorted(first, key=lambda k: -first[k]["ms_per_step"])[:top]
    lines += [
        "",
        f"| operator | calls per step | {' | '.join(names)} |",
        f"|---|--:|{'--:|' * len(names)}",
    ]
    for op in ranked:
        cells = [_cell(profiles[n]["ops"].get(op, {}).get("ms_per_step")) for n in names]
        lines.append(f"| `{op}` | {first[op]['calls']:g} | {' | '.join(cells)} |")
    fills = profiles[names[0]].get("fill_callers")
    if fills:
        lines += ["", f"Where the fills come from ({names[0]}):", ""]
        lines += ["| called by | calls per step | ms per step |", "|---|--:|--:|"]
        for f in fills:
            callers = " <- ".join(f["chain"].split(" <- ")[:3])
            lines.append(f"| `{callers}` | {f['calls_per_step']:g} | {_cell(f['ms_per_step'])} |")
    return lines

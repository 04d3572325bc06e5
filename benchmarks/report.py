"""The benchmark's results as rich tables on the terminal and as one JSON file."""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from mnist_pipeline.atomic import write_json


def _f(x: Any, fmt: str = ".2f") -> str:
    if x is None:
        return "-"
    if isinstance(x, float) and not math.isfinite(x):
        return "nan"
    return format(x, fmt) if isinstance(x, int | float) else str(x)


def training_table(training: dict[str, Any]) -> Table:
    first = next(iter(training.values()))
    t = Table(
        title=f"Training: medians of {first['repetitions']} runs each, interleaved",
        caption="epoch: steady state (epochs after the first), validation and checkpoint "
        "included; x: the project's speed per training image over this variant's",
    )
    t.add_column("variant")
    t.add_column("device")
    for col in (
        "epoch s",
        "1st epoch s",
        "img/s",
        "project x",
        f"to {first['target_acc']:.1%} s",
        "train s",
        "test acc",
        "peak RSS MiB",
    ):
        t.add_column(col, justify="right")
    for name, s in training.items():
        rss = _f(s["peak_rss_mb"], ".0f")
        if s.get("gpu_peak_mb"):
            rss += f", GPU {_f(s['gpu_peak_mb'], '.0f')}"
        reached = _f(s["time_to_target_s"])
        if s["target_reached"] != f"{s['repetitions']}/{s['repetitions']}":
            reached += f" ({s['target_reached']})"
        t.add_row(
            name,
            f"{s['device']} {s['precision']}",
            _f(s["steady_epoch_s"]),
            _f(s["first_epoch_s"]),
            _f(s["train_images_per_s"], ".0f"),
            _f(s.get("project_speedup")),
            reached,
            _f(s["train_s"]),
            _f(s["final_test_acc"], ".4f"),
            rss,
        )
    return t


def inference_table(inference: dict[str, Any]) -> Table:
    t = Table(title=f"Inference ({inference['threads'] or 'default'} threads; medians)")
    for col in ("model", "runtime", "batch 1 ms", f"batch {inference['throughput_batch']} img/s"):
        t.add_column(col, justify="right" if "batch" in col else "left")
    for model in ("dense", "pruned"):
        for rt, label in (("ort", "ONNX Runtime"), ("torch", "PyTorch eager")):
            m = inference[model]
            t.add_row(
                model,
                label,
                _f(m[f"{rt}_latency_ms"], ".3f"),
                _f(m[f"{rt}_throughput_ips"], ".0f"),
            )
    return t


def serving_rows(serve: dict[str, Any]) -> list[list[str]]:
    """(model, setting, then rps and p50/p99 ms at each concurrency) for each server run."""
    rows = []
    for model, settings in serve["runs"].items():
        for setting, by_c in settings.items():
            cells = [
                f"{_f(r['rps'], '.0f')} ({_f(r['p50_ms'], '.1f')}/{_f(r['p99_ms'], '.1f')})"
                for _, r in sorted(by_c.items(), key=lambda kv: int(kv[0]))
            ]
            rows.append([model, setting, *cells])
    return rows


def serving_columns(serve: dict[str, Any]) -> list[str]:
    first = next(iter(next(iter(serve["runs"].values())).values()))
    # Written JSON has sorted keys ("1", "32", "8"): order the concurrencies as numbers.
    return ["model", "server", *(f"c={c} req/s (p50/p99 ms)" for c in sorted(first, key=int))]


def serving_verdict(serve: dict[str, Any]) -> str:
    t = serve["target"]
    best = serve.get("target_best")
    if best is None:
        return f"target ({t['model']}, c={t['concurrency']}): not measured"
    return (
        f"target: {t['model']} at c={t['concurrency']} >= {t['rps']:.0f} req/s with p99 <= "
        f"{t['p99_ms']:.0f} ms; best measured {best['rps']:.0f} req/s, p99 "
        f"{best['p99_ms']:.1f} ms: {'met' if serve['target_met'] else 'not met'}"
    )


def scraping_verdict(serve: dict[str, Any]) -> str:
    """What scraping `/metrics` meanwhile cost the target's cell, setting by setting."""
    sc = serve.get("scraping")
    if not sc:
        return "scraping: not measured"
    cells = [
        f"{setting} {v['rps_off']:.0f} -> {v['rps_on']:.0f} req/s (cost {v['cost']:.1%}; "
        f"one scrape {v['scrape_ms']:.1f} ms)"
        for setting, v in sc.items()
        if isinstance(v, dict)
    ]
    return (
        f"scraping /metrics every {sc['every_s']:g} s at c={sc['concurrency']} (medians): "
        f"{'; '.join(cells)}; bound {sc['max_cost']:.0%}: "
        f"{'met' if sc['bound_met'] else 'not met'}"
    )


def serving_table(serve: dict[str, Any]) -> Table:
    t = Table(
        title=f"Serving: {serve['requests']} single-PNG requests per cell on 127.0.0.1",
        caption=f"{serving_verdict(serve)}\n{scraping_verdict(serve)}",
    )
    for i, col in enumerate(serving_columns(serve)):
        t.add_column(col, justify="left" if i < 2 else "right")
    for row in serving_rows(serve):
        t.add_row(*row)
    return t


def targets_table(rows: list[dict[str, Any]]) -> Table:
    t = Table(title="Targets (2-core CPU), each beside this run's figure")
    for col in ("what", "target", "measured", "verdict"):
        t.add_column(col, justify="right" if col in ("target", "measured") else "left")
    for r in rows:
        t.add_row(r["what"], r["target"], _f(r["measured"], ".4g"), r["verdict"])
    return t


ORCHESTRATION_ROWS = {
    ("noop", "dvc_repro_noop_s"): "dvc repro, nothing changed",
    ("noop", "flow_noop_s"): "Prefect flow, nothing changed (temporary server)",
    ("noop", "flow_noop_server_s"): "Prefect flow, nothing changed (running server)",
    ("full", "dvc_repro_full_s"): "dvc repro, every stage (fresh copy)",
    ("full", "flow_full_s"): "Prefect flow, every stage (fresh copy)",
    ("fresh", "dvc_repro_noop_s"): "dvc repro, nothing changed (fresh copy)",
    ("fresh", "flow_noop_s"): "Prefect flow, nothing changed (fresh copy)",
}


def orchestration_rows(orch: dict[str, Any]) -> list[tuple[str, str]]:
    """(what, seconds or why not) for each orchestration measurement."""
    parts = {
        "noop": orch.get("noop", {}),
        "full": orch.get("full", {}),
        "fresh": orch.get("full", {}).get("noop_in_fresh_copy", {}),
    }
    rows = []
    for part, label in (("noop", "nothing changed, this repository"), ("full", "full runs")):
        if "skipped" in parts[part]:
            rows.append((label, f"skipped: {parts[part]['skipped']}"))
    for (part, key), label in ORCHESTRATION_ROWS.items():
        got = parts[part]
        if key in got:
            rows.append((f"{label} (x{got['repetitions']})", _f(got[key])))
    return rows


def orchestration_table(orch: dict[str, Any]) -> Table:
    t = Table(title="Orchestration: wall seconds, medians")
    t.add_column("what")
    t.add_column("s", justify="right")
    for row in orchestration_rows(orch):
        t.add_row(*row)
    return t


SWEEP_ROWS = {
    "sequential_s": "4 trials, one after another (wall s)",
    "jobs2_s": "4 trials, --jobs 2 (wall s)",
    "ratio": "speed-up of --jobs 2",
    "sequential_trial_s": "one trial, sequential (s)",
    "jobs2_trial_s": "one trial, two at a time (s)",
    "plain_exp_run_s": "plain dvc exp run of one trial (s)",
    "trial_overhead_s": "trial machinery over dvc exp run (s)",
    "flow_overhead_per_trial_s": "flow and report, per trial (s)",
}


def sweep_rows(sweep: dict[str, Any]) -> list[tuple[str, str]]:
    return [(label, _f(sweep[key])) for key, label in SWEEP_ROWS.items() if key in sweep]


def sweep_table(sweep: dict[str, Any]) -> Table:
    t = Table(title=f"Sweep: {sweep['trials']} trials of {sweep['epochs']} epoch(s)")
    t.add_column("what")
    t.add_column("value", justify="right")
    for row in sweep_rows(sweep):
        t.add_row(*row)
    return t


def show(results: dict[str, Any], console: Console | None = None) -> None:
    console = console or Console(width=None if sys.stdout.isatty() else 132)
    m = results["machine"]
    console.print(
        f"[bold]{m['cpu']}[/], {m['cpu_cores']} cores, GPU {m['gpu'] or 'none'}, "
        f"torch {m['torch']}, Lightning {m['lightning']}, load {m['load_avg_1m_at_start']}"
    )
    if results.get("ratios"):
        console.print(", ".join(f"{k}: {v}" for k, v in results["ratios"].items()))
    for section, table in (
        ("training", training_table),
        ("inference", inference_table),
        ("serving", serving_table),
        ("orchestration", orchestration_table),
        ("sweep", sweep_table),
    ):
        value = results.get(section)
        if value is None:
            continue
        if "skipped" in value:
            console.print(f"{section}: skipped: {value['skipped']}")
        else:
            console.print(table(value))
    if results.get("compare"):
        from rich.markdown import Markdown

        from benchmarks.compare_report import compare_markdown

        console.print(Markdown("\n".join(compare_markdown(results["compare"]))))
    drift = results.get("drift")
    if drift is not None:
        from benchmarks.drift import markdown

        console.print(
            "drift: " + drift["skipped"] if "skipped" in drift else "\n".join(markdown(drift))
        )
    if results.get("startup"):
        from benchmarks.startup import markdown as startup_markdown

        console.print("\n".join(startup_markdown(results["startup"])))
    if results.get("targets"):
        console.print(targets_table(results["targets"]))


def write(results: dict[str, Any], path: Path) -> None:
    write_json(path, results)


def training_markdown(tr: dict[str, Any]) -> list[str]:
    """The training variants as Markdown table lines."""
    first = next(iter(tr.values()))
    lines = [
        f"| variant | device | epoch s | 1st epoch s | img/s | project x | "
        f"to {first['target_acc']:.1%} s | train s | test acc | peak RSS MiB |",
        "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for name, s in tr.items():
        reached = _f(s["time_to_target_s"])
        if s["target_reached"] != f"{s['repetitions']}/{s['repetitions']}":
            reached += f" ({s['target_reached']})"
        lines.append(
            f"| {name} | {s['device']} {s['precision']} | {_f(s['steady_epoch_s'])} | "
            f"{_f(s['first_epoch_s'])} | {_f(s['train_images_per_s'], '.0f')} | "
            f"{_f(s.get('project_speedup'))} | {reached} | {_f(s['train_s'])} | "
            f"{_f(s['final_test_acc'], '.4f')} | {_f(s['peak_rss_mb'], '.0f')} |"
        )
    return lines


def inference_markdown(inf: dict[str, Any]) -> list[str]:
    lines = [
        f"| model | runtime | batch 1 ms | batch {inf['throughput_batch']} img/s |",
        "|---|---|--:|--:|",
    ]
    for model in ("dense", "pruned"):
        for rt, label in (("ort", "ONNX Runtime"), ("torch", "PyTorch eager")):
            lines.append(
                f"| {model} | {label} | {_f(inf[model][f'{rt}_latency_ms'], '.3f')} | "
                f"{_f(inf[model][f'{rt}_throughput_ips'], '.0f')} |"
            )
    return lines


def serving_markdown(serve: dict[str, Any]) -> list[str]:
    cols = serving_columns(serve)
    lines = ["| " + " | ".join(cols) + " |", "|---|---|" + "--:|" * (len(cols) - 2)]
    return lines + ["| " + " | ".join(row) + " |" for row in serving_rows(serve)]


def orchestration_markdown(orch: dict[str, Any]) -> list[str]:
    lines = ["| orchestration | s |", "|---|--:|"]
    return lines + [f"| {what} | {s} |" for what, s in orchestration_rows(orch)]


def sweep_markdown(sw: dict[str, Any]) -> list[str]:
    lines = ["| sweep | value |", "|---|--:|"]
    return lines + [f"| {what} | {v} |" for what, v in sweep_rows(sw)]


def targets_markdown(rows: list[dict[str, Any]]) -> list[str]:
    lines = ["| target | bound | measured | verdict |", "|---|--:|--:|---|"]
    return lines + [
        f"| {r['what']} | {r['target']} | {_f(r['measured'], '.4g')} | {r['verdict']} |"
        for r in rows
    ]


def markdown(results: dict[str, Any]) -> str:
    """The same numbers as Markdown tables, for the docs."""
    m = results["machine"]
    lines = [
        f"Machine: {m['cpu']}, {m['cpu_cores']} cores, {m['memory_gb']} GB, GPU "
        f"{m['gpu'] or 'none'}; torch {m['torch']}, Lightning {m['lightning']}; load average "
        f"{m['load_avg_1m_at_start']} at the start. Command: `{results['command']}`.",
        "",
    ]
    if results.get("ratios"):
        lines += [", ".join(f"{k}: {v}" for k, v in results["ratios"].items()), ""]
    tr = results.get("training")
    if tr and "skipped" not in tr:
        lines += [*training_markdown(tr), ""]
    inf = results.get("inference")
    if inf and "skipped" not in inf:
        lines += [f"Inference, {inf['threads'] or 'default'} thread(s), medians:", ""]
        lines += [*inference_markdown(inf), ""]
    serve = results.get("serving")
    if serve and "skipped" not in serve:
        lines += [f"Serving, {serve['requests']} single-PNG requests per cell on 127.0.0.1:", ""]
        lines += serving_markdown(serve)
        lines += ["", serving_verdict(serve), "", scraping_verdict(serve), ""]
    orch = results.get("orchestration")
    if orch and "skipped" not in orch:
        lines += [*orchestration_markdown(orch), ""]
    sw = results.get("sweep")
    if sw and "skipped" not in sw:
        lines += [*sweep_markdown(sw), ""]
    if results.get("compare"):
        from benchmarks.compare_report import compare_markdown

        lines += [*compare_markdown(results["compare"]), ""]
    if results.get("startup"):
        from benchmarks.startup import markdown as startup_markdown

        lines += [*startup_markdown(results["startup"]), ""]
    if results.get("targets"):
        lines += [*targets_markdown(results["targets"]), ""]
    for section in ("training", "inference", "serving", "orchestration", "sweep"):
        value = results.get(section)
        if value and "skipped" in value:
            lines.append(f"{section}: skipped: {value['skipped']}")
    return "\n".join(lines) + "\n"


def _pct(x: float) -> str:
    return f"{x:.2%}"


def profiles_markdown(d: dict[str, Any]) -> list[str]:
    """The compute profiles side by side: training (each run a fresh process, taking turns,
    medians) and a whole `dvc repro --force` from scratch in fresh copies."""
    t = {k: v for k, v in d["training"].items() if isinstance(v, dict) and "runs" in v}
    names = sorted(t, key=lambda n: n != "project")  # the default first
    fast = next((n for n in names if "fast" in n), None)
    label = {"project": "portable, avx2 (the default)"}
    lines = [
        "| training, 4 epochs, real MNIST | " + " | ".join(label.get(n, n) for n in names) + " |",
        "|---|" + "--:|" * len(names),
        "| precision | " + " | ".join(t[n]["precision"] for n in names) + " |",
        "| steady epoch (s) | "
        + " | ".join(f"{t[n]['steady_epoch_s']:.2f}" for n in names)
        + " |",
        "| fit (s) | " + " | ".join(f"{t[n]['train_s']:.1f}" for n in names) + " |",
        "| test accuracy | " + " | ".join(_pct(t[n]["final_test_acc"]) for n in names) + " |",
        "| repetitions | " + " | ".join(str(t[n]["repetitions"]) for n in names) + " |",
    ]
    if fast is not None:
        ratios = (f"{t[n]['train_s'] / t[fast]['train_s']:.2f}x" for n in names)
        lines.insert(5, "| fit / the fast profile's | " + " | ".join(ratios) + " |")
    p = d["orchestration"]["profiles"]
    stages = sorted(k for k in p["portable"] if k.endswith("_stage_s"))
    lines += [
        "",
        "| `dvc repro --force` from scratch | portable | fast | portable / fast |",
        "|---|--:|--:|--:|",
    ]
    for key, label in [("dvc_repro_full_s", "whole pipeline (s)")] + [
        (k, f"{k.removesuffix('_stage_s')} (s)") for k in stages
    ]:
        a, b = p["portable"][key], p["fast"][key]
        ratio = f"{a / b:.2f}x" if b else ""
        lines.append(f"| {label} | {a:.1f} | {b:.1f} | {ratio} |")
    acc = (p["portable"]["test_acc"], p["fast"]["test_acc"])
    lines.append(f"| test accuracy | {_pct(acc[0])} | {_pct(acc[1])} | |")
    return lines

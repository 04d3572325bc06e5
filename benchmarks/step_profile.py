"""Where a training step's time goes: torch.profiler over N steps of the project's LeNet-5.

    python -m benchmarks.step_profile --out benchmarks/results/step-profile.json
    python -m benchmarks.step_profile --steps 3 --warmup 1 --stacks   # seconds; fill_'s callers

Each compute profile (`portable`, `fast`) runs in a fresh process that starts with the profile's
pins (`mnist_pipeline.compute.environment_for`), as a stage does. A step is the plain loop's
(`benchmarks.plain_loop`): forward, cross-entropy, `zero_grad(set_to_none=True)`, backward and
the optimizer's step, on one batch of `train.batch_size` digits in the memory format and with
the optimizer of params.yaml. The JSON holds, per profile, each operator's self time in ms per
step (the profiler's self CPU time, so the operators add up to the step) and the step's wall
time measured without the profiler; `--stacks` adds the Python callers of every fill_/zero_.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from mnist_pipeline.atomic import write_json

PROFILES = ("portable", "fast")
# The names for the operators that make up a LeNet-5 step.
GROUPS = {
    "aten::convolution_backward": "conv backward",
    "aten::mkldnn_convolution": "conv forward",
    "aten::max_pool2d_with_indices": "max-pool forward",
    "aten::max_pool2d_with_indices_backward": "max-pool backward",
    "aten::mm": "mm/addmm",
    "aten::addmm": "mm/addmm",
    "aten::fill_": "fill_",
    "aten::zero_": "fill_",
    "aten::relu_": "ReLU",
    "aten::clamp_min_": "ReLU",  # what an in-place ReLU runs
    "aten::threshold_backward": "ReLU",
}
FILLS = ("aten::fill_", "aten::zero_")


def _step_fn(batch_size: int, params_file: Path) -> Any:
    import torch
    import torch.nn.functional as F

    from mnist_pipeline.model import LeNet5
    from mnist_pipeline.params.schema import load_params
    from mnist_pipeline.training.lightning_module import build_optimizer

    train = load_params(params_file).train
    fmt = torch.channels_last if train.channels_last else torch.contiguous_format
    torch.manual_seed(train.seed)
    net = LeNet5().to(memory_format=fmt).train()
    opt = build_optimizer(train.optimizer, net)
    x = torch.randn(batch_size, 1, 28, 28).contiguous(memory_format=fmt)  # (N, 1, 28, 28)
    y = torch.randint(0, 10, (batch_size,))

    def step() -> None:
        loss = F.cross_entropy(net(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def fill_callers(events: Any, steps: int) -> list[dict[str, Any]]:
    """Every fill_/zero_ by the chain of operators that called it (innermost first; Python
    frames left out), with its calls and self ms per step (`--stacks`)."""
    chains: dict[tuple[str, ...], list[float]] = {}
    for e in events:
        if e.name not in FILLS:
            continue
        chain, parent = [e.name], e.cpu_parent
        while parent is not None:
            if not any(mark in parent.name for mark in (".py(", "built-in method", "<frozen")):
                chain.append(parent.name)
            parent = parent.cpu_parent
        c = chains.setdefault(tuple(chain), [0, 0.0])
        c[0] += 1
        c[1] += e.self_cpu_time_total
    return [
        {
            "chain": " <- ".join(chain),
            "calls_per_step": calls / steps,
            "ms_per_step": round(us / 1e3 / steps, 4),
        }
        for chain, (calls, us) in sorted(chains.items(), key=lambda kv: -kv[1][1])
    ]


def profile_here(
    profile: str, params_file: Path, batch_size: int, steps: int, warmup: int, stacks: bool
) -> dict[str, Any]:
    """This process's profile: it must have started with `profile`'s pins."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    from mnist_pipeline import compute as compute_mod
    from mnist_pipeline.params.schema import load_params

    compute = load_params(params_file).compute.model_copy(update={"profile": profile})
    facts = compute_mod.apply(compute)
    step = _step_fn(batch_size, params_file)
    for _ in range(warmup):
        step()
    walls = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        walls.append((time.perf_counter() - start) * 1e3)
    with torch_profile(activities=[ProfilerActivity.CPU], with_stack=stacks) as prof:
        for _ in range(steps):
            step()
    ops = {
        e.key: {"ms_per_step": e.self_cpu_time_total / 1e3 / steps, "calls": e.count / steps}
        for e in prof.key_averages()
        if e.self_cpu_time_total > 0
    }
    groups: dict[str, float] = {}
    for key, v in ops.items():
        name = GROUPS.get(key, "other")
        groups[name] = groups.get(name, 0.0) + v["ms_per_step"]
    out: dict[str, Any] = {
        "compute": facts,
        "step_ms_median": round(statistics.median(walls), 3),
        "profiled_ms_per_step": round(sum(v["ms_per_step"] for v in ops.values()), 3),
        "groups_ms_per_step": {k: round(v, 3) for k, v in sorted(groups.items())},
        "ops": {
            k: {"ms_per_step": round(v["ms_per_step"], 4), "calls": v["calls"]}
            for k, v in sorted(ops.items(), key=lambda kv: -kv[1]["ms_per_step"])
        },
    }
    if stacks:
        out["fill_callers"] = fill_callers(prof.events(), steps)
    return out


def measure(
    params_file: Path,
    batch_size: int,
    steps: int,
    warmup: int,
    stacks: bool = False,
    profiles: tuple[str, ...] = PROFILES,
) -> dict[str, Any]:
    """Each profile in a fresh process started with its pins."""
    from mnist_pipeline.compute import environment_for
    from mnist_pipeline.params.schema import load_params

    compute = load_params(params_file).compute
    pins = environment_for(compute.model_copy(update={"profile": "portable"}))
    out: dict[str, Any] = {}
    for profile in profiles:
        env = {k: v for k, v in os.environ.items() if k not in pins}
        env |= environment_for(compute.model_copy(update={"profile": profile}))
        with tempfile.TemporaryDirectory(prefix="step-profile-") as tmp:
            result = Path(tmp) / "result.json"
            cmd = [sys.executable, "-m", "benchmarks.step_profile", "--child", profile]
            cmd += ["--params", str(params_file), "--batch-size", str(batch_size)]
            cmd += ["--steps", str(steps), "--warmup", str(warmup), "--out", str(result)]
            cmd += ["--stacks"] if stacks else []
            done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1800)
            if done.returncode != 0:
                raise RuntimeError(f"the {profile} profile failed:\n{done.stderr[-3000:]}")
            out[profile] = json.loads(result.read_text())
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.step_profile",
        description=__doc__.splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--params", type=Path, default=Path("params.yaml"))
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--steps", type=int, default=50, help="profiled steps (and timed ones)")
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--stacks", action="store_true", help="also the callers of fill_/zero_")
    p.add_argument("--profile", action="append", choices=PROFILES, default=None)
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/step-profile.json"))
    p.add_argument("--child", choices=PROFILES, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child is not None:
        result = profile_here(
            args.child, args.params, args.batch_size, args.steps, args.warmup, args.stacks
        )
        write_json(args.out, result)
        return 0
    from benchmarks import machine

    results = {
        "command": " ".join(["python -m benchmarks.step_profile", *(argv or sys.argv[1:])]),
        "machine": machine.describe(),
        "batch_size": args.batch_size,
        "steps": args.steps,
        "step_profile": measure(
            args.params,
            args.batch_size,
            args.steps,
            args.warmup,
            args.stacks,
            tuple(args.profile or PROFILES),
        ),
    }
    write_json(args.out, results)
    print(f"results written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Stage start-up: what a stage process costs before its own work, and what each heavy library
costs to import; and a training step with a core kept busy, under each OpenMP wait policy.

- `stages`: each stage's command from dvc.yaml, run in the repository (its inputs as `dvc repro`
  left them) with `MNIST_STAGE_STARTUP_MARK` set: the stage stops where its work begins
  (`mnist_pipeline.stage.running`, after params, the input check against dvc.lock and the
  compute set-up, which imports torch) and writes the monotonic clock there. Its start-up is
  that clock less the one read just before the process was spawned (CLOCK_MONOTONIC is one
  clock for the whole machine), so it holds the interpreter's own start too. No output is
  touched; the run record and the stage lock go to a scratch folder. Beside it, the seconds of
  `import stages.<name>` alone, and the heavy libraries loaded when the work begins.
- `libraries`: `import <library>` in a fresh process, torch first where the library needs it
  (the figure is then the library's own, after torch).
- `busy_core`: `python -m benchmarks.startup --step ...` times training steps of LeNet-5 on
  2 pinned threads, alone and beside a busy loop pinned to one of the two cores, under
  `OMP_WAIT_POLICY` unset (DEFAULT: OpenMP's own, spinning a while then sleeping, as stages
  ran before issue 28), ACTIVE and PASSIVE (`mnist_pipeline.compute.WAIT_POLICY`).

Every figure is the median of `reps` fresh processes, taking turns.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from mnist_pipeline.stage import STARTUP_MARK

# The libraries a stage may need, and what each is imported after (None: nothing).
LIBRARIES: dict[str, str | None] = {
    "torch": None,
    "pytorch_lightning": "torch",
    "torchmetrics": "torch",
    "torchvision": "torch",
    "torch_pruning": "torch",
    "onnx": None,
    "onnxruntime": None,
    "matplotlib.pyplot": None,
    "dvc.cli": None,
    "dvc.repo": None,
    "prefect": None,
}
# What `python -X importtime` breaks down (each with the arguments Python runs): where a
# stage's floor (torch) and a no-change `dvc repro` spend their seconds.
IMPORT_PROFILES: dict[str, list[str]] = {
    "import torch": ["-c", "import torch"],
    "dvc repro, nothing changed": ["-m", "dvc", "repro"],
}
# ... and the flow when nothing changed, against a Prefect server started for it (where its
# running-server target is measured): its imports, and the rest, its own work.
FLOW_PROFILE = "flow, nothing changed, against a running server"
TOP_MODULES = 6
HEAVY = {name.partition(".")[0] for name in LIBRARIES}
# OMP_WAIT_POLICY's values; DEFAULT: unset, OpenMP's own.
POLICIES = ("DEFAULT", "ACTIVE", "PASSIVE")


def _median(values: list[float]) -> float:
    return round(statistics.median(values), 3)


def _python(code: str, cwd: Path, env: dict[str, str] | None = None) -> str:
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, timeout=600, env=env
    )
    if done.returncode != 0:
        raise RuntimeError(f"`python -c {code!r}` failed:\n{done.stderr[-2000:]}")
    return done.stdout


def import_seconds(module: str, after: str | None, cwd: Path) -> float:
    """Seconds of `import module` in a fresh process, once `after` is imported."""
    first = f"import {after}; " if after else ""
    code = f"{first}import time; t = time.perf_counter(); import {module}; "
    code += "print(time.perf_counter() - t)"
    return float(_python(code, cwd).strip())


def stage_startup(root: Path, name: str, scratch: Path) -> dict[str, Any]:
    """One run of stage `name` up to where its work begins: seconds, and the heavy libraries
    loaded by then."""
    words = shlex.split(yaml.safe_load((root / "dvc.yaml").read_text())["stages"][name]["cmd"])
    # The stage's own command, but its run record goes to the scratch folder (an option may
    # take several values: `--onnx a b c`).
    args = words[3:]
    if "--provenance" in args:
        args[args.index("--provenance") + 1] = str(scratch / f"{name}.json")
    argv = [sys.executable, "-m", f"stages.{name}", *args]
    mark = scratch / f"{name}.mark.json"
    mark.unlink(missing_ok=True)
    env = {**os.environ, STARTUP_MARK: str(mark), "PYTHONPATH": str(root)}
    started = time.monotonic()
    done = subprocess.run(argv, cwd=root, env=env, capture_output=True, text=True, timeout=600)
    if done.returncode != 0 or not mark.is_file():
        raise RuntimeError(f"{name} did not reach its work:\n{done.stderr[-2000:]}")
    got = json.loads(mark.read_text())
    return {
        "startup_s": got["monotonic"] - started,
        "heavy_loaded": sorted(HEAVY & set(got["modules"])),
    }


def stages(root: Path, reps: int) -> dict[str, Any]:
    """Every stage's start-up and module import seconds (medians), taking turns."""
    names = list(yaml.safe_load((root / "dvc.yaml").read_text())["stages"])
    runs: dict[str, dict[str, Any]] = {n: {"startup_s": [], "import_s": []} for n in names}
    with tempfile.TemporaryDirectory(prefix="bench-startup-") as scratch:
        for _ in range(reps):
            for name in names:
                got = stage_startup(root, name, Path(scratch))
                runs[name]["startup_s"].append(got["startup_s"])
                runs[name]["heavy_loaded"] = got["heavy_loaded"]
                runs[name]["import_s"].append(import_seconds(f"stages.{name}", None, root))
    out: dict[str, Any] = {
        name: {
            "startup_s": _median(r["startup_s"]),
            "import_s": _median(r["import_s"]),
            "heavy_loaded": r["heavy_loaded"],
        }
        for name, r in runs.items()
    }
    out["worst_startup_s"] = max(s["startup_s"] for s in out.values())
    return out


def libraries(root: Path, reps: int, names: list[str]) -> dict[str, Any]:
    times: dict[str, list[float]] = {name: [] for name in names}
    for _ in range(reps):
        for name in names:
            times[name].append(import_seconds(name, LIBRARIES[name], root))
    out: dict[str, Any] = {
        name: {"import_s": _median(t), "after": LIBRARIES[name]} for name, t in times.items()
    }
    out["python_s"] = _median([_python_start(root) for _ in range(reps)])
    return out


def import_profile(
    args: list[str], cwd: Path, env: dict[str, str] | None = None
) -> dict[str, Any]:
    """One run of `python -X importtime ARGS`: its wall seconds, the seconds its imports took
    (the sum of every module's own time), and the modules whose own import took longest."""
    t = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-X", "importtime", *args],
        cwd=cwd,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=600,
    )
    wall = time.perf_counter() - t
    if done.returncode != 0:
        raise RuntimeError(f"`python {' '.join(args)}` failed:\n{done.stderr[-2000:]}")
    if "Running stage" in done.stdout + done.stderr:
        raise RuntimeError(f"`python {' '.join(args)}` ran a stage: run `dvc repro` first")
    own: dict[str, float] = {}
    for line in done.stderr.splitlines():
        fields = line.removeprefix("import time:").split("|")
        if line.startswith("import time:") and len(fields) == 3 and fields[0].strip().isdigit():
            own[fields[2].strip()] = own.get(fields[2].strip(), 0.0) + int(fields[0]) / 1e6
    top = sorted(own.items(), key=lambda kv: -kv[1])[:TOP_MODULES]
    return {
        "wall_s": round(wall, 3),
        "imports_s": round(sum(own.values()), 3),
        "modules": len(own),
        "top_own_s": {name: round(s, 3) for name, s in top},
    }


def import_profiles(root: Path, reps: int) -> dict[str, Any]:
    """`import_profile` of each of IMPORT_PROFILES and of the flow (FLOW_PROFILE), taking
    turns: the run with the median wall time of each."""
    from testing.prefect_server import running_server

    flow = ["-m", "pipelines.flow", "--root", str(root.resolve()), "--no-push"]
    runs: dict[str, list[dict[str, Any]]] = {what: [] for what in [*IMPORT_PROFILES, FLOW_PROFILE]}
    with (
        tempfile.TemporaryDirectory(prefix="bench-prefect-") as home,
        running_server(Path(home)) as api,
    ):
        commands = {
            **{what: (args, None) for what, args in IMPORT_PROFILES.items()},
            FLOW_PROFILE: (flow, {"PREFECT_API_URL": api}),
        }
        for _ in range(reps):
            for what, (args, env) in commands.items():
                runs[what].append(import_profile(args, root, env))
    return {what: sorted(r, key=lambda x: x["wall_s"])[len(r) // 2] for what, r in runs.items()}


def _python_start(root: Path) -> float:
    t = time.perf_counter()
    _python("pass", root)
    return time.perf_counter() - t


def busy_core(root: Path, reps: int, steps: int, batch: int) -> dict[str, Any]:
    """Median step milliseconds on cores 0 and 1, alone and with a busy loop on core 0, under
    each wait policy; None where this machine has no two cores or no taskset."""
    taskset = shutil.which("taskset")
    if taskset is None or len(os.sched_getaffinity(0)) < 2:
        return {"skipped": "needs taskset and two cores"}
    cores = sorted(os.sched_getaffinity(0))[:2]
    pin = [taskset, "-c", f"{cores[0]},{cores[1]}"]
    spin = [taskset, "-c", str(cores[0]), sys.executable, "-c", "while True: pass"]
    times: dict[str, list[float]] = {}
    for rep in range(reps):
        for busy in (False, True):
            for policy in POLICIES if rep % 2 == 0 else POLICIES[::-1]:
                key = f"{'busy' if busy else 'quiet'}_{policy.lower()}_step_ms"
                ms = _steps(root, pin, policy, steps, batch, spin if busy else None)
                times.setdefault(key, []).append(ms)
    out: dict[str, Any] = {k: _median(v) for k, v in times.items()}
    out.update({"steps": steps, "batch_size": batch, "cores": cores})
    return out


def _steps(
    root: Path, pin: list[str], policy: str, steps: int, batch: int, spin: list[str] | None
) -> float:
    """`step_ms` in a child process under `pin` and `policy`, beside `spin` if given."""
    loop = subprocess.Popen(spin) if spin else None
    try:
        env = {**os.environ, "PYTHONPATH": str(root)}
        cmd = [*pin, sys.executable, "-m", "benchmarks.startup", "--step", str(steps), str(batch)]
        cmd += ["--wait-policy", policy]
        done = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=600)
    finally:
        if loop is not None:
            loop.kill()
            loop.wait()
    if done.returncode != 0:
        raise RuntimeError(f"the training steps failed:\n{done.stderr[-2000:]}")
    return float(done.stdout.strip())


def measure(root: Path, reps: int, quick: bool) -> dict[str, Any]:
    """Everything above; `quick`: torch's import only, a few small steps, no stages."""
    steps, batch = (3, 64) if quick else (30, 512)
    names = ["torch"] if quick else list(LIBRARIES)
    out: dict[str, Any] = {"libraries": libraries(root, reps, names)}
    out["busy_core"] = busy_core(root, reps, steps, batch)
    if quick:
        out["stages"] = {"skipped": "not in --quick mode (it needs dvc repro's inputs)"}
        out["import_profiles"] = {"skipped": "not in --quick mode"}
    else:
        out["stages"] = stages(root, reps)
        out["import_profiles"] = import_profiles(root, reps)
    return out


def step_ms(steps: int, batch: int, policy: str) -> float:
    """Median milliseconds of a training step of LeNet-5 (SGD, cross-entropy, random digits),
    computing as params.yaml's `compute` says, with OMP_WAIT_POLICY `policy` (one of
    POLICIES)."""
    from mnist_pipeline import compute
    from mnist_pipeline.params.schema import load_params

    params = load_params(Path("params.yaml")).compute
    compute.pin_environment(params)
    os.environ.pop("OMP_WAIT_POLICY")  # OpenMP reads it when torch loads it, next
    if policy != "DEFAULT":
        os.environ["OMP_WAIT_POLICY"] = policy
    import torch

    from mnist_pipeline.model import LeNet5

    compute.apply(params, check=False)
    torch.manual_seed(0)
    net = LeNet5()
    opt = torch.optim.SGD(net.parameters(), lr=0.01)
    x, y = torch.randn(batch, 1, 28, 28), torch.randint(0, 10, (batch,))
    times = []
    for i in range(steps + 2):  # the first two warm the kernels up
        t = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(net(x), y).backward()
        opt.step()
        if i >= 2:
            times.append(time.perf_counter() - t)
    return statistics.median(times) * 1000


if __name__ == "__main__":
    p = argparse.ArgumentParser(description="training steps, for busy_core (a child process)")
    p.add_argument("--step", nargs=2, type=int, metavar=("STEPS", "BATCH"), required=True)
    p.add_argument("--wait-policy", choices=POLICIES, required=True)
    a = p.parse_args()
    print(step_ms(*a.step, a.wait_policy))


def markdown(d: dict[str, Any]) -> list[str]:
    """The start-up tables: stages, libraries, the busy core."""
    lines: list[str] = []
    st = d.get("stages", {})
    if "skipped" not in st:
        lines += [
            "| stage | process start to its work (s) | `import stages.<name>` (s) | heavy "
            "libraries loaded by then |",
            "|---|--:|--:|---|",
        ]
        for name, s in st.items():
            if isinstance(s, dict):
                loaded = ", ".join(s["heavy_loaded"]) or "none"
                lines.append(f"| {name} | {s['startup_s']:.2f} | {s['import_s']:.2f} | {loaded} |")
        lines.append("")
    libs = d["libraries"]
    lines += [
        f"Python itself starts in {libs['python_s']:.2f} s.",
        "",
        "| library | import (s) | after |",
        "|---|--:|---|",
    ]
    for name, lib in libs.items():
        if isinstance(lib, dict):
            lines.append(f"| `{name}` | {lib['import_s']:.2f} | {lib['after'] or '-'} |")
    profiles = d.get("import_profiles", {"skipped": "not measured"})
    if "skipped" not in profiles:
        lines += [
            "",
            "`python -X importtime`, the run with the median wall time of each:",
            "",
            "| command | wall (s) | importing (s) | modules "
            "| the slowest modules' own import (s) |",
            "|---|--:|--:|--:|---|",
        ]
        for what, p in profiles.items():
            slowest = sorted(p["top_own_s"].items(), key=lambda kv: -kv[1])  # JSON sorts keys
            top = ", ".join(f"`{name}` {s:.2f}" for name, s in slowest)
            lines.append(
                f"| {what} | {p['wall_s']:.2f} | {p['imports_s']:.2f} | {p['modules']:,} | {top} |"
            )
    busy = d["busy_core"]
    if "skipped" not in busy:
        lines += [
            "",
            f"A training step (batch {busy['batch_size']}, 2 threads on cores "
            f"{busy['cores'][0]} and {busy['cores'][1]}), median of {busy['steps']} steps:",
            "",
            "| `OMP_WAIT_POLICY` | alone (ms) | a busy loop on one of its cores (ms) |",
            "|---|--:|--:|",
        ]
        for policy in POLICIES:
            quiet, loaded = (busy.get(f"{k}_{policy.lower()}_step_ms") for k in ("quiet", "busy"))
            if quiet is not None and loaded is not None:  # DEFAULT: not in older runs
                name = "unset (OpenMP's default)" if policy == "DEFAULT" else policy
                lines.append(f"| {name} | {quiet:.1f} | {loaded:.1f} |")
    return lines

"""Test helper: the stages of dvc.yaml run as their own processes, outside DVC and git.

Each stage runs its `cmd` from dvc.yaml (so the paths are the pipeline's) in a scratch folder
that holds a params file, with this checkout on PYTHONPATH, optionally behind a launcher
(`taskset -c 0`, `qemu-x86_64 -cpu Haswell`). `output_hashes` then reads back the md5 of every
output that DVC would hash. `stage_argv` gives the tests that call a stage's `main` in-process
the same command line, so a stage option that dvc.yaml does not pass cannot go unnoticed.
"""

from __future__ import annotations

import hashlib
import os
import shlex
import subprocess
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
DVC = yaml.safe_load((ROOT / "dvc.yaml").read_text())


def stage_argv(name: str, params: Path, out: Path, **inputs: Path) -> list[str]:
    """The arguments dvc.yaml's `cmd` gives stage `name`, plus `--params params`: an option
    named in `inputs` (`pruned_onnx=` for `--pruned-onnx`) reads that path, and every other
    path lands where dvc.yaml puts it, under `out` (`out / "metrics/train.json"`)."""
    words = shlex.split(DVC["stages"][name]["cmd"])
    assert words[:3] == ["python", "-m", f"stages.{name}"], words
    options = dict(zip(words[3::2], words[4::2], strict=True))
    given = {"--" + key.replace("_", "-"): str(path) for key, path in inputs.items()}
    assert set(given) <= set(options), f"{name} takes no {sorted(set(given) - set(options))}"
    argv = ["--params", str(params)]
    for option, path in options.items():
        argv += [option, given.get(option, str(out / path))]
    return argv


def shell_env() -> dict[str, str]:
    """This process's environment as a user's shell has it: less the compute pins that
    tests/conftest.py sets before torch is imported."""
    from mnist_pipeline.compute import environment_for
    from mnist_pipeline.params.schema import load_params

    pins = environment_for(load_params(ROOT / "params.yaml").compute)
    return {k: v for k, v in os.environ.items() if k not in pins}


def stage_env(mirror: Path) -> dict[str, str]:
    """This process's environment, less the compute pins it may carry, plus the mirror."""
    return shell_env() | {
        "PYTHONPATH": str(ROOT),
        "MNIST_MIRROR": str(mirror),
        "MNIST_MD5SUMS": str(mirror / "MD5SUMS"),
        "PYTHONHASHSEED": "0",
    }


# What qemu-user prints when the program it emulates dies of a signal. Its emulation of a
# multi-threaded process crashes now and then where the same stage runs natively without fault
# (seen once: `quantize` under `-cpu Haswell` died of SIGSEGV in a CI run that otherwise passed).
EMULATOR_CRASH = "qemu: uncaught target signal"


def run_stages(
    workdir: Path,
    stages: Sequence[str],
    mirror: Path,
    launcher: Sequence[str] = (),
    timeout: float = 1800,
    emulator_crash_retries: int = 0,
) -> None:
    """Run `stages` in order in `workdir` (which holds params.yaml); raise on a failure. A stage
    the emulator crashed runs again, up to `emulator_crash_retries` times, with a warning: its
    outputs are written atomically, so a crash leaves none half-written to compare."""
    env = stage_env(mirror)
    for name in stages:
        argv = shlex.split(DVC["stages"][name]["cmd"])
        assert argv[0] == "python"
        for attempt in range(emulator_crash_retries + 1):
            done = subprocess.run(
                [*launcher, sys.executable, *argv[1:]],
                cwd=workdir,
                env=env,
                capture_output=True,
                text=True,
                timeout=timeout,
            )
            crashed = done.returncode != 0 and EMULATOR_CRASH in done.stderr
            if not crashed or attempt == emulator_crash_retries:
                break
            crash = next(line for line in done.stderr.splitlines() if EMULATOR_CRASH in line)
            warnings.warn(f"{name}: emulator crash ({crash}), running it again", stacklevel=2)
        assert done.returncode == 0, f"{name} failed:\n{done.stderr[-3000:]}"


def outputs(stages: Sequence[str]) -> list[str]:
    """The paths DVC hashes for `stages`: outs, metrics and plots."""
    paths = []
    for name in stages:
        stage = DVC["stages"][name]
        for kind in ("outs", "metrics", "plots"):
            paths += [o if isinstance(o, str) else next(iter(o)) for o in stage.get(kind, [])]
    return paths


def output_hashes(workdir: Path, stages: Sequence[str]) -> dict[str, str]:
    """md5 of each file of each output of `stages` in `workdir`, keyed by path."""
    out = {}
    for path in outputs(stages):
        top = workdir / path
        files = sorted(p for p in top.rglob("*") if p.is_file()) if top.is_dir() else [top]
        for f in files:
            out[f.relative_to(workdir).as_posix()] = hashlib.md5(f.read_bytes()).hexdigest()
    return out

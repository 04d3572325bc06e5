"""Apply `prefect.yaml` to the Prefect server: its work pool, then its deployments.

    uv run python -m pipelines.deploy          # from the repo root; then start a worker

`prefect deploy` with no server configured writes the deployment into a temporary server that
stops when the command ends, and exits 0: a schedule nobody will ever run. This checks first
that `PREFECT_API_URL` answers, and refuses with the steps to start one if it does not.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import yaml

from pipelines.prefect_serve import HOW_TO_START, api_problem


def _prefect(*args: str, cwd: Path | None = None, quiet: bool = False) -> int:
    # PWD: prefect.yaml's pull step runs the flow in "{{ $PWD }}", the folder deployed from.
    env = {**os.environ, "PWD": str((cwd or Path.cwd()).resolve())}
    return subprocess.run(
        [sys.executable, "-m", "prefect", *args], cwd=cwd, env=env, capture_output=quiet
    ).returncode


def work_pools(prefect_file: Path) -> list[str]:
    spec = yaml.safe_load(prefect_file.read_text()) or {}
    names = {(d.get("work_pool") or {}).get("name") for d in spec.get("deployments", [])}
    return sorted(n for n in names if n)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m pipelines.deploy", description=__doc__.splitlines()[0]
    )
    p.add_argument("--prefect-file", type=Path, default=Path("prefect.yaml"))
    args = p.parse_args(argv)
    problem = api_problem()
    if problem:
        print(f"error: {problem}\n{HOW_TO_START}", file=sys.stderr)
        return 2
    prefect_file = args.prefect_file.resolve()
    for pool in work_pools(prefect_file):
        if _prefect("work-pool", "inspect", pool, quiet=True) != 0:
            print(f"creating work pool {pool!r} (type process)")
            if _prefect("work-pool", "create", pool, "--type", "process") != 0:
                return 1
    return _prefect(
        "--no-prompt",
        "deploy",
        "--all",
        "--prefect-file",
        str(prefect_file),
        cwd=prefect_file.parent,
    )


if __name__ == "__main__":
    sys.exit(main())

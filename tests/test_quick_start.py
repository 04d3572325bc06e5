"""The README's quick start and the Getting started page, run as written, in order, in a fresh
clone, as a newcomer runs them.

The commands are read from the pages' fenced bash blocks, not copied here, and each runs in
`bash` from a shell's environment (none of this session's compute pins, no virtual environment
of its own): `uv run` makes the clone's `.venv` from `uv.lock` (from uv's cache, so offline),
`dvc repro` runs the whole pipeline on the real MNIST files of `MNIST_MIRROR` (the page's other
block, which CI's environment stands in for), and `uv run pytest` runs the clone's fast tests.
Then the page's experiments: one `dvc exp run` of the whole pipeline, the tables and plots, and
the experiment applied and committed. On 2 cores this is about a quarter of an hour, the
longest of the slow tests; it is the one that proves the two commands of the front page.
"""

from __future__ import annotations

import os
import re
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from testing.prefect_server import stop_group
from testing.scratch_repo import GIT_IDENTITY, git
from tests.conftest import ROOT
from tests.stage_runs import shell_env

# Longer than the suite's 20 minutes a test: a whole pipeline and the fast suite, one after the
# other, on a loaded 2-core machine.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(3600)]

# As the session started (read at collection, before any test runs): fixtures of other tests
# point MNIST_MIRROR at synthetic files, and a newcomer's shell has the real ones.
MIRROR = os.environ.get("MNIST_MIRROR")
FENCE = re.compile(r"^```bash\n(.*?)^```", re.S | re.M)


def bash_blocks(page: Path) -> list[list[str]]:
    """The page's ```bash blocks, each as its command lines (continuations joined)."""
    return [
        [line for line in block.replace("\\\n", " ").splitlines() if line.strip()]
        for block in FENCE.findall(page.read_text())
    ]


def quick_start(page: Path) -> list[str]:
    """The page's first bash block: its quick start."""
    return bash_blocks(page)[0]


def run(line: str, repo: Path, env: dict[str, str], timeout: float) -> float:
    """`line` in bash in `repo`; its seconds; fails with its output's tail if it fails. Run in
    a group of its own, which goes whatever ends the test: no `dvc repro` outlives it holding
    the repo's lock."""
    started = time.monotonic()
    proc = subprocess.Popen(
        ["bash", "-c", line],
        cwd=repo,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        out, _ = proc.communicate(timeout=timeout)
    finally:
        stop_group(proc)
    assert proc.returncode == 0, f"`{line}` exited {proc.returncode}:\n{out[-6000:]}"
    return time.monotonic() - started


@pytest.fixture(scope="module")
def newcomer(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    """A fresh clone of this repo at HEAD, and a shell's environment with the MNIST mirror."""
    mirror = MIRROR
    if not mirror:
        missing = "MNIST_MIRROR is not set (the README's offline setting)"
        if os.environ.get("CI") == "true":
            pytest.fail(missing)  # CI must run the quick start, not skip it
        pytest.skip(missing)
    repo = tmp_path_factory.mktemp("newcomer") / "mnist-pipeline"
    git(repo.parent, "clone", "-q", str(ROOT), str(repo))
    if subprocess.run(["git", "rev-parse", "-q", "--verify", "main"], cwd=repo).returncode:
        git(repo, "branch", "main")  # `dvc metrics diff main` compares with the branch
    venv_bin = str(ROOT / ".venv" / "bin")
    path = os.pathsep.join(p for p in os.environ["PATH"].split(os.pathsep) if p != venv_bin)
    own = ("VIRTUAL_ENV", "UV_PROJECT_ENVIRONMENT", "PYTEST_", "PYTHONPATH", "MNIST_")
    env = {k: v for k, v in shell_env().items() if not k.startswith(own)}
    env |= GIT_IDENTITY | {"PATH": path, "MNIST_MIRROR": str(Path(mirror).resolve())}
    env["UV_NO_PROGRESS"] = "1"
    return repo, env


def test_the_readme_quick_start_passes_in_order_in_a_fresh_clone(
    newcomer: tuple[Path, dict[str, str]],
) -> None:
    repo, env = newcomer
    commands = quick_start(ROOT / "README.md")
    assert len(commands) == 2 and "dvc repro" in commands[0] and "pytest" in commands[1]
    took = {c.split("#")[0].strip(): round(run(c, repo, env, timeout=3000)) for c in commands}
    print("quick start, seconds:", took)
    assert (repo / "models" / "lenet5.pt").is_file()


def test_getting_started_runs_as_written_after_the_quick_start(
    newcomer: tuple[Path, dict[str, str]],
) -> None:
    repo, env = newcomer
    page = ROOT / "docs" / "getting-started.md"
    assert quick_start(page) == quick_start(ROOT / "README.md")  # run by the test above
    (experiments,) = [b for b in bash_blocks(page) if "dvc exp run" in b[0]]
    name = None
    for line in experiments:
        if "<exp>" in line:  # the page's placeholder: the experiment it ran
            # refs/exps/<baseline>/<name>; DVC leaves its own refs/exps/exec/EXEC_* beside it.
            refs = git(repo, "for-each-ref", "--format=%(refname)", "refs/exps").split()
            (name,) = [r.rsplit("/", 1)[1] for r in refs if not r.startswith("refs/exps/exec/")]
            line = line.replace("<exp>", name)
        run(line, repo, env, timeout=3000)
    assert name is not None
    params = yaml.safe_load(git(repo, "show", "HEAD:params.yaml"))
    assert params["train"]["max_epochs"] == 6 and params["train"]["optimizer"]["lr"] == 2.0e-3
    assert (repo / "dvc_plots" / "index.html").is_file()
    assert "dvc_plots" not in git(repo, "status", "--porcelain", "--ignored=no")

"""Throw-away git + DVC copies of a checkout, for the tests and benchmarks that run `dvc repro`
or the flow for real without touching this checkout's `dvc.lock`, cache or remote."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

# The one git identity of the copies' commits (and of a flow's model registrations in them).
GIT_IDENTITY = {
    "GIT_AUTHOR_NAME": "mnist-pipeline",
    "GIT_AUTHOR_EMAIL": "mnist-pipeline@localhost",
    "GIT_COMMITTER_NAME": "mnist-pipeline",
    "GIT_COMMITTER_EMAIL": "mnist-pipeline@localhost",
}


def env(**extra: str) -> dict[str, str]:
    """This environment with this interpreter's bin first (so `python` and `dvc` match it) and
    a git identity where none is set."""
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    return {**GIT_IDENTITY, **os.environ, "PATH": path, **extra}


def git(repo: Path, *args: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=repo, env=env(), capture_output=True, text=True, check=True
    ).stdout


def copy_repo(
    src: Path, dest: Path, skip: Iterable[str] = (), replace: Mapping[str, str] | None = None
) -> Path:
    """The files git tracks in `src`, and the untracked ones it does not ignore (so uncommitted
    work is tested too), committed to a fresh git repo in `dest`: the pipeline as a new clone
    sees it, with an empty DVC cache. Paths in `skip` (files or folders) stay behind; `replace`
    gives other contents to some files (`{"params.yaml": "..."}`)."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=src,
        capture_output=True,
        check=True,
    ).stdout.decode()
    skipped = [s.rstrip("/") for s in skip]
    for rel in filter(None, listed.split("\0")):
        if any(rel == s or rel.startswith(f"{s}/") for s in skipped):
            continue
        if (src / rel).is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src / rel, dest / rel)
    for rel, text in (replace or {}).items():
        (dest / rel).write_text(text)
    git(dest, "init", "-q", "-b", "main")
    git(dest, "add", "-A")
    git(dest, "commit", "-q", "-m", "copy")
    return dest


def dvc(repo: Path, *args: str, timeout: float = 1800, **extra_env: str) -> str:
    """Run dvc in `repo`; on failure raise with its output, which holds the stage's own error."""
    done = subprocess.run(
        [sys.executable, "-m", "dvc", *args],
        cwd=repo,
        env=env(**extra_env),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if done.returncode != 0:
        raise AssertionError(
            f"dvc {' '.join(args)} failed:\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}"
        )
    return done.stdout + done.stderr


@contextmanager
def registry_repo(root: Path, dvc_yaml: str) -> Iterator[Any]:
    """A new git + DVC repo in `root` with `dvc_yaml` and an empty `models/`, and this module's
    git identity in the environment for the block (a registration commits and tags): where the
    registry tests register model versions. Yields DVC's `Repo`."""
    import pytest
    from dvc.repo import Repo

    with pytest.MonkeyPatch.context() as mp:
        for key, value in GIT_IDENTITY.items():
            mp.setenv(key, value)
        git(root, "init", "-q", "-b", "main")
        repo = Repo.init(str(root))
        (root / "dvc.yaml").write_text(dvc_yaml)
        (root / "models").mkdir()
        yield repo

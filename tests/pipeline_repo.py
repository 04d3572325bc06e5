"""A throw-away git + DVC copy of this repository, for tests that run `dvc repro` for real."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def copy_repo(dest: Path) -> Path:
    """Copy the files git tracks (and untracked, not ignored ones) into a fresh git repo."""
    files = (
        subprocess.run(
            ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            cwd=ROOT,
            capture_output=True,
            check=True,
        )
        .stdout.decode()
        .split("\0")
    )
    for rel in filter(None, files):
        src = ROOT / rel
        if src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
    git(dest, "init", "-q", "-b", "main")
    git(dest, "add", "-A")
    git(dest, "commit", "-q", "-m", "copy")
    return dest


def env(**extra: str) -> dict[str, str]:
    """The test's environment with this interpreter's bin first, so `python` and `dvc` match."""
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    base = {
        "GIT_AUTHOR_NAME": "test",
        "GIT_AUTHOR_EMAIL": "test@localhost",
        "GIT_COMMITTER_NAME": "test",
        "GIT_COMMITTER_EMAIL": "test@localhost",
    }
    return {**base, **os.environ, "PATH": path, **extra}


def git(repo: Path, *args: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=repo, env=env(), capture_output=True, text=True, check=True
    ).stdout


def dvc(repo: Path, *args: str, timeout: float = 1800, **extra_env: str) -> str:
    """Run dvc; on failure raise with its output, which holds the stage's own error."""
    done = subprocess.run(
        ["dvc", *args],
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

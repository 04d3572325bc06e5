"""Register a model version as a git tag in the GTO convention: `lenet5@v1.2.0`, annotated.

The tag must name a commit whose `dvc.lock` describes the pushed model, so that
`git checkout lenet5@v1.2.0 && dvc pull` brings it back. When the run left the working tree as
HEAD has it, that is HEAD. Otherwise the tag points to a snapshot commit of the working tree
(HEAD plus every change, new files that are not ignored included), made with a temporary
index: the branch, the index and the files are left as they were.
"""

from __future__ import annotations

import math
import os
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run as current_flow_run
from prefect.states import Completed, State

MODEL_NAME = "lenet5"  # the dvc.yaml artifact the flows register
Bump = Literal["major", "minor", "patch"]
FIRST_VERSION: dict[str, str] = {"major": "v1.0.0", "minor": "v0.1.0", "patch": "v0.0.1"}
SNAPSHOT_NOTE = "Snapshot of the working tree the run left, on top of HEAD (branch not moved)."


@dataclass(frozen=True)
class Registration:
    tag: str
    version: str
    commit: str
    snapshot: bool  # True: a snapshot commit of the working tree, not HEAD
    created: bool  # False: this commit already had a version


def git(root: Path, *args: str, env: dict[str, str] | None = None) -> str:
    done = subprocess.run(
        ["git", *args],
        cwd=root,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        raise RuntimeError(f"git {' '.join(args)} failed: {done.stderr.strip()}")
    return done.stdout.strip()


def worktree_tree(root: Path) -> str:
    """The git tree of the working tree as it is (new, not ignored files included)."""
    with tempfile.TemporaryDirectory(prefix="git-index-") as tmp:
        env = {"GIT_INDEX_FILE": str(Path(tmp) / "index")}
        git(root, "read-tree", "HEAD", env=env)
        git(root, "add", "-A", env=env)
        return git(root, "write-tree", env=env)


def latest_version(root: Path, name: str) -> str | None:
    """The highest registered version of `name` (`v1.2.0`), by GTO; None when it has none."""
    from gto import api
    from gto.exceptions import ArtifactNotFound

    try:
        found = api.find_latest_version(str(root), name)
    except ArtifactNotFound:
        return None
    return found.version if found is not None else None


def register(root: Path, name: str, bump: Bump, message: str) -> Registration:
    """Tag the run's commit as the next version of `name`, computed by GTO from existing tags.

    A working tree that an existing version already pins (same git tree) is not registered
    again: that version is returned with `created=False`.
    """
    from gto import api

    tree = worktree_tree(root)
    for tag in git(root, "tag", "--list", f"{name}@v*").split():
        if git(root, "rev-parse", f"{tag}^{{tree}}") == tree:
            commit = git(root, "rev-parse", f"{tag}^{{commit}}")
            head = git(root, "rev-parse", "HEAD")
            return Registration(tag, tag.partition("@")[2], commit, commit != head, False)
    head = git(root, "rev-parse", "HEAD")
    is_snapshot = tree != git(root, "rev-parse", "HEAD^{tree}")
    commit = (
        git(root, "commit-tree", tree, "-p", head, "-m", f"{message}\n\n{SNAPSHOT_NOTE}")
        if is_snapshot
        else head
    )
    first = latest_version(root, name) is None
    event = api.register(
        str(root),
        name,
        commit,
        version=FIRST_VERSION[bump] if first else None,
        message=message,
        bump_major=not first and bump == "major",
        bump_minor=not first and bump == "minor",
        bump_patch=not first and bump == "patch",
    )
    return Registration(event.tag, event.version, commit, is_snapshot, created=True)


@task(name="register-model", cache_policy=NO_CACHE)
def register_version(
    root: Path,
    name: str,
    bump: Bump,
    test_acc: float | None,
    min_test_acc: float,
    onnx: list[str] | None,
    artifact: Path | None,
) -> Registration | State:
    """Tag the run's commit as the next model version, once its checks pass."""
    logger = get_run_logger()
    problems = []
    if artifact is not None and not artifact.is_file():
        problems.append(f"{artifact.relative_to(root)} ({name} in dvc.yaml) does not exist")
    if not (math.isfinite(min_test_acc) and 0.0 <= min_test_acc <= 1.0):
        # `acc < nan` is always false: a threshold that is not a number would pass anything.
        problems.append(f"the threshold min_test_acc={min_test_acc} is not a number in [0, 1]")
    if test_acc is None or not math.isfinite(test_acc):
        problems.append(f"no test accuracy from evaluate ({test_acc})")
    elif not test_acc >= min_test_acc:
        problems.append(f"test accuracy {test_acc:.4f} < {min_test_acc}")
    if onnx is not None and not onnx:  # the pipeline exports, but no ONNX model is there
        problems.append("the export stage left no .onnx model")
    if problems:
        logger.warning("model not registered: %s", "; ".join(problems))
        return Completed(name="Rejected", message="; ".join(problems), data=None)
    message = (
        f"{name}: test accuracy {test_acc:.4f}, flow run {current_flow_run.name} "
        f"({current_flow_run.id})"
    )
    reg = register(root, name, bump, message)
    if reg.created:
        where = "a snapshot commit of the working tree" if reg.snapshot else "HEAD"
        logger.info("registered %s on %s (%s)", reg.tag, where, reg.commit[:12])
        logger.info("publish it with: git push origin %s", reg.tag)
    else:
        logger.info("this model is already registered as %s", reg.tag)
    return reg

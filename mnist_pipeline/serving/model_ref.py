"""A model named on the command line: a file, or a registered version of a `dvc.yaml` artifact.

    models/lenet5_pruned.onnx           a file
    /srv/model                          a model bundle: a registered version, its card (bundle.py)
    lenet5-pruned-onnx@v1.2.0           that version (GTO tag `lenet5-pruned-onnx@v1.2.0`)
    lenet5-onnx#prod                    the version GTO has in stage `prod` now
    lenet5-onnx@latest, lenet5-onnx     the highest registered version

GTO reads the registry (git tags, in `--repo`, a local path or a git URL) and names the version
and its commit; `dvc artifacts get` then fetches the artifact's file as that commit's
`dvc.lock` pins it, from the DVC cache or remote. So what is served is what was registered,
whatever the working tree holds. Fetched files are kept under `cache_dir/<name>/<version>/`.
"""

from __future__ import annotations

import argparse
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import onnxruntime as ort
import yaml

from mnist_pipeline import locked
from mnist_pipeline.errors import UsageError
from mnist_pipeline.onnx import runtime
from mnist_pipeline.serving import bundle


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "mnist-pipeline" / "models"


@dataclass(frozen=True)
class ModelSource:
    """Where the model file is, and which registered version it is (None for a plain file)."""

    path: Path
    artifact: str | None = None
    version: str | None = None
    stage: str | None = None
    commit: str | None = None
    card: Path | None = None  # its model card, for a model bundle (serving.bundle)

    def describe(self) -> str:
        if self.artifact is None or self.version is None:
            return str(self.path)
        via = f" (stage {self.stage})" if self.stage else ""
        return f"{self.artifact}@{self.version}{via} at {(self.commit or '')[:12]} -> {self.path}"


def is_reference(spec: str) -> bool:
    """Whether `spec` names a registered artifact rather than a file."""
    if Path(spec).exists():
        return False
    return "@" in spec or "#" in spec or ("/" not in spec and Path(spec).suffix == "")


def _find_version(repo: str, name: str, version: str | None, stage: str | None) -> tuple[str, str]:
    """(version, commit) of `name` in the GTO registry of `repo`; UsageError when not there."""
    from gto import api
    from gto.exceptions import GTOException
    from scmrepo.exceptions import SCMError

    try:
        if stage:
            found = api.find_versions_in_stage(repo, name, stage)
            if not found:
                raise UsageError(f"no version of {name} is in stage {stage!r} in {repo}")
            hit = found[0] if isinstance(found, list) else found
            return hit.version, hit.commit_hexsha
        if version:
            events = api.check_ref(repo, f"{name}@{version}")
            if not events:
                raise UsageError(f"{name}@{version} is not a registered version in {repo}")
            return events[0].version, events[0].commit_hexsha
        latest = api.find_latest_version(repo, name)
    except SCMError as err:
        raise UsageError(f"{name}: no registry to look it up in: {err}") from None
    except GTOException as err:
        raise UsageError(f"{name}: {err} in the registry of {repo}") from None
    if latest is None:
        raise UsageError(f"{name} has no registered version in {repo}")
    return latest.version, latest.commit_hexsha


def _from_bundle(folder: Path) -> ModelSource:
    """The registered version a model bundle holds (serving.bundle), with its card."""
    info = bundle.read(folder)
    card = folder / bundle.CARD
    return ModelSource(
        folder / bundle.MODEL,
        info.get("name"),
        info.get("version"),
        info.get("stage"),
        info.get("commit"),
        card=card if card.is_file() else None,
    )


def resolve(spec: str, repo: str = ".", cache_dir: Path | None = None) -> ModelSource:
    """The model file `spec` names, fetched first when it is a registry reference."""
    if not is_reference(spec):
        return (
            _from_bundle(Path(spec)) if bundle.is_bundle(Path(spec)) else ModelSource(Path(spec))
        )
    from gto.api import parse_shortcut
    from gto.exceptions import GTOException

    try:
        ref = parse_shortcut(spec)
    except GTOException as err:
        raise UsageError(
            f"model {spec!r}: not a file, nor name@version or name#stage ({err})"
        ) from None
    version, commit = _find_version(repo, ref.name, ref.version, ref.stage)

    from dvc.exceptions import DvcException
    from dvc.repo.artifacts import Artifacts

    dest = (cache_dir or default_cache_dir()) / ref.name / version
    dest.mkdir(parents=True, exist_ok=True)
    try:
        _, out = Artifacts.get(repo, ref.name, version=version, out=str(dest), force=True)
    except DvcException as err:
        raise UsageError(f"cannot fetch {ref.name}@{version} from {repo}: {err}") from None
    check_registered(repo, commit, ref.name, version, Path(out))
    fetch_profile(repo, commit, ref.name, version, Path(out).parent / bundle.PROFILE)
    return ModelSource(Path(out), ref.name, version, ref.stage, commit)


def check_registered(repo: str, commit: str, name: str, version: str, file: Path) -> None:
    """UsageError unless `file` has the MD5 that `commit`'s `dvc.lock` (or the artifact's
    `.dvc` file) records for artifact `name`'s path."""
    where = f"{name}@{version} (commit {commit[:12]})"
    try:
        artifacts = yaml.safe_load(read_registered(repo, commit, "dvc.yaml")).get("artifacts")
        path = str(artifacts[name]["path"])
    except Exception as err:  # no dvc.yaml at that commit, or no such artifact in it
        raise UsageError(f"{where}: its dvc.yaml does not declare it: {err}") from None
    recorded = locked.recorded_md5(
        path,
        _read_or_none(repo, commit, locked.LOCK_FILE),
        _read_or_none(repo, commit, f"{path}.dvc"),
    )
    if recorded is None:
        raise UsageError(
            f"{where}: neither dvc.lock nor {path}.dvc at that commit records an md5 of {path}, "
            "so its bytes cannot be checked; refused"
        )
    actual = locked.md5_of(file)
    if actual != recorded:
        raise UsageError(
            f"{where}: the fetched {path} has md5 {actual}, but the commit records {recorded}: "
            "the copy in the DVC cache or remote is corrupt; refused (`python -m "
            "pipelines.cache_check --remote` finds it)"
        )


def fetch_profile(repo: str, commit: str, name: str, version: str, dest: Path) -> None:
    """The drift profile that artifact `name`'s `meta.drift_profile` in the commit's dvc.yaml
    names, written to `dest` (beside the fetched model, where mnist-serve looks) once its MD5
    is the one the commit records; nothing for a version registered without one."""
    dest.unlink(missing_ok=True)  # never another version's
    artifacts = yaml.safe_load(read_registered(repo, commit, "dvc.yaml")).get("artifacts") or {}
    path = ((artifacts.get(name) or {}).get("meta") or {}).get("drift_profile")
    if not path:
        return
    from dvc.api import read

    data = read(path, repo=repo, rev=commit, mode="rb")
    recorded = locked.recorded_md5(
        path,
        _read_or_none(repo, commit, locked.LOCK_FILE),
        _read_or_none(repo, commit, f"{path}.dvc"),
    )
    actual = hashlib.md5(data).hexdigest()
    if actual != recorded:
        raise UsageError(
            f"{name}@{version} (commit {commit[:12]}): its drift profile {path} has md5 "
            f"{actual}, but the commit records {recorded}; refused"
        )
    dest.write_bytes(data)


def _read_or_none(repo: str, commit: str, path: str) -> str | None:
    try:
        return read_registered(repo, commit, path)
    except Exception:  # dvc.api raises its own types for a file the commit does not have
        return None


def read_registered(repo: str, commit: str, path: str) -> str:
    """A text file of `repo` as the registered `commit` has it (DVC-tracked or in git)."""
    from dvc.api import read

    return read(path, repo=repo, rev=commit)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """`--model`, `--repo`, `--cache-dir`: the model options of mnist-predict and mnist-serve."""
    parser.add_argument(
        "--model",
        required=True,
        help="ONNX model file, or a registered artifact: name@v1.2.0, name#prod, name@latest",
    )
    parser.add_argument(
        "--repo", default=".", help="git repo (path or URL) whose registry --model names"
    )
    parser.add_argument(
        "--cache-dir",
        type=Path,
        default=None,
        help=f"where fetched versions are kept (default: {default_cache_dir()})",
    )


def open_model(args: argparse.Namespace) -> tuple[ModelSource, ort.InferenceSession]:
    """The model the options name, in an ONNX Runtime session; UsageError names the problem."""
    source = resolve(args.model, args.repo, args.cache_dir)
    return source, runtime.open_model(source.path)

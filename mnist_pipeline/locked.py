"""The MD5 `dvc.lock` records for a file, and the check that the bytes a consumer loads are those.

DVC trusts its cache: a flipped byte in a cached model is restored by `dvc checkout`, fetched
by `dvc artifacts get` and pushed by `dvc push` under its good name. So whoever loads a model
checks it against the hash DVC recorded when the model was made: `mnist-serve` and
`mnist-predict` against the `dvc.lock` of the commit a registered version's tag names
(`serving.model_ref`), and each stage against the `dvc.lock` of the repo it runs in, for the
input files an upstream stage wrote (`stage.running`). A file no `dvc.lock` entry records
(a stage run by hand on other paths, outside DVC) has nothing to be checked against, and is
used as it is.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Iterable
from pathlib import Path

from mnist_pipeline.errors import StageError
from mnist_pipeline.yamlload import safe_load

log = logging.getLogger(__name__)
LOCK_FILE = "dvc.lock"


def md5_of(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "md5").hexdigest()


def recorded_md5(path: str, lock_text: str | None, dvc_file_text: str | None = None) -> str | None:
    """The MD5 of the output at `path` (relative to the repo) that a `dvc.lock` records among
    its stages' outputs, or a `<path>.dvc` file (`dvc add`); None when neither does. Only
    outputs: a stage's `deps` hold what it last read, not what is there now."""
    found = recorded_outputs(lock_text).get(path)
    if found is not None:
        return found
    for out in (safe_load(dvc_file_text or "") or {}).get("outs", []):
        if out.get("md5"):
            return str(out["md5"])
    return None


def recorded_outputs(lock_text: str | None) -> dict[str, str]:
    """Each output path a `dvc.lock` records, with its MD5 (folders: their `.dir` hash)."""
    lock = safe_load(lock_text or "") or {}
    return {
        str(out["path"]): str(out["md5"])
        for entry in (lock.get("stages") or {}).values()
        for out in entry.get("outs", [])
        if out.get("path") and out.get("md5")
    }


def check_inputs(inputs: Iterable[Path], lock: Path = Path(LOCK_FILE)) -> None:
    """StageError unless each input file that `lock` records as an output has the bytes it
    records; files it does not record, folders, and a missing `lock` are not checked."""
    if not lock.is_file():
        return
    recorded_by_path = recorded_outputs(lock.read_text())  # parsed once, for every input
    base = lock.resolve().parent
    for path in inputs:
        if not path.is_file():
            continue
        rel = Path(os.path.relpath(path.resolve(), base)).as_posix()
        recorded = recorded_by_path.get(rel)
        if recorded is None:
            log.debug("%s: no entry in %s, not checked", rel, lock)
            continue
        actual = md5_of(path)
        if actual != recorded:
            raise StageError(
                f"{rel} has md5 {actual}, but {lock} records {recorded} for it: the file is not "
                "the one its stage wrote (a corrupt DVC cache object restored by `dvc checkout`, "
                "or an edit); run `python -m pipelines.cache_check`, then `dvc repro --force` "
                "the stage that writes it"
            )

"""What an audited commit holds: its git-tracked outputs (`cache: false`) against the hashes
its `dvc.lock` records, and which side is wrong where they differ (the audit's first check,
`pipelines.verify`)."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from pipelines import dvc_repo


@dataclass(frozen=True)
class Committed:
    """A git-tracked output (`cache: false`) as the audited commit holds it, against the hash
    that commit's `dvc.lock` records; `rebuilt` tells which of the two is wrong."""

    stage: str
    path: str
    locked: str
    actual: str | None  # None: the commit does not hold the file
    rebuilt: str | None = None

    @property
    def same(self) -> bool:
        return self.locked == self.actual

    def describe(self) -> str:
        if self.rebuilt is None:
            wrong = "not rebuilt, so which side is wrong is not known"
        elif self.rebuilt == self.locked:
            wrong = "the committed file is wrong (dvc.lock and the rebuild agree)"
        elif self.rebuilt == self.actual:
            wrong = "dvc.lock is wrong, stale (the committed file and the rebuild agree)"
        else:
            wrong = f"the rebuild ({self.rebuilt}) agrees with neither"
        return (
            f"{self.path} ({self.stage}): the commit's file hashes to "
            f"{self.actual or 'nothing (missing)'}, its dvc.lock records {self.locked}: {wrong}"
        )


def lock_entries(lock: dict[str, Any], key: str) -> dict[str, dict[str, str]]:
    """{stage: {path: md5}} of a parsed `dvc.lock`'s `outs` or `deps`; params under `deps` as
    `params.yaml:key`."""
    out: dict[str, dict[str, str]] = {}
    for stage, entry in (lock.get("stages") or {}).items():
        items = {e["path"]: str(e.get("md5") or e.get("hash")) for e in entry.get(key, [])}
        if key == "deps":
            for file, values in (entry.get("params") or {}).items():
                items |= {f"{file}:{k}": repr(v) for k, v in values.items()}
        out[stage] = items
    return out


def committed_outputs(clone: Path) -> list[Committed]:
    """Each git-tracked output of the checked-out commit in `clone`, hashed by DVC as
    `dvc.lock` hashes it, with the hash that `dvc.lock` records (outputs it has none for are
    left out: nothing was claimed)."""
    from dvc.repo import Repo

    rows = []
    with Repo(str(clone)) as repo:
        for st in repo.index.stages:
            for out in st.outs:
                if out.use_cache or not out.hash_info:
                    continue
                actual = out.get_hash().value if out.exists else None
                stage = dvc_repo.address(clone, st)
                rows.append(Committed(stage, out.def_path, str(out.hash_info.value), actual))
    return rows


def with_rebuilt(committed: list[Committed], rebuilt: dict[str, Any]) -> list[Committed]:
    """The rows with the rebuilt hash of each, which tells the wrong side where they differ."""
    hashes = lock_entries(rebuilt, "outs")
    return [replace(c, rebuilt=hashes.get(c.stage, {}).get(c.path)) for c in committed]

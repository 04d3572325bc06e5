"""Re-hash DVC's cache objects: every object must hash to its name, locally and on the remote.

    uv run python -m pipelines.cache_check                 # every object in the local cache
    uv run python -m pipelines.cache_check --remote        # and every one on the default remote
    uv run python -m pipelines.cache_check --rev HEAD      # only those HEAD's dvc.lock names

DVC names a cache object after its MD5 and then trusts the name: `dvc status` and `dvc repro`
compare the workspace with `dvc.lock`, never the object with its name, `dvc push` uploads an
object as it is, and `dvc checkout` copies it back. DVC has no command that re-hashes its
cache (`dvc status --cloud` only asks whether an object is on the remote), so this one reads
every object through DVC's own object store (`repo.cache.local`, `repo.cloud.get_remote_odb`,
so any remote DVC reaches), hashes its bytes and names each one whose bytes do not match: the
object is wrong, since its name is the hash `dvc.lock` recorded. It changes nothing (DVC's own
`odb.check` would delete the object); `dvc push --force` of a good copy, or `dvc repro --force`
of the stage, replaces it. The audit (`pipelines.verify`) runs it on the objects of the
commit it audits. Exit status 0 when every object checked is intact, 1 when one is not, 2 for
a usage error.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from mnist_pipeline import errors
from mnist_pipeline.errors import StageError, UsageError
from pipelines import dvc_repo, user_values

_CHUNK = 1 << 20


@dataclass(frozen=True)
class Corrupt:
    """A cache object whose bytes do not hash to its name."""

    where: str  # "local cache" or "remote <url>"
    name: str  # the object's name: the MD5 dvc.lock records
    actual: str  # the MD5 of its bytes
    path: str  # the object's file
    output: str | None  # the output of dvc.lock it belongs to, where known

    def describe(self) -> str:
        of = f" ({self.output})" if self.output else ""
        return (
            f"{self.where}: object {self.name}{of} hashes to {self.actual}: the cached copy is "
            f"corrupt, not dvc.lock ({self.path})"
        )


@dataclass
class CacheCheck:
    checked: dict[str, int] = field(default_factory=dict)  # where -> objects re-hashed
    corrupt: list[Corrupt] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.corrupt

    def summary(self) -> str:
        counts = ", ".join(f"{n} in the {w}" for w, n in self.checked.items()) or "none"
        lines = [f"cache objects re-hashed: {counts}"]
        lines += [f"CORRUPT: {c.describe()}" for c in self.corrupt]
        if self.ok:
            lines.append("every object hashes to its name")
        return "\n".join(lines)


def md5_of(odb: Any, oid: str) -> str:
    """The MD5 of an object's bytes, read through its object store's filesystem."""
    digest = hashlib.md5()
    with odb.fs.open(odb.oid_to_path(oid), "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def check_objects(
    odb: Any,
    where: str,
    oids: Iterable[str] | None = None,
    outputs: Mapping[str, str] | None = None,
) -> tuple[int, list[Corrupt]]:
    """Re-hash the objects `oids` that `odb` holds (default: all of them); a directory's
    listing (`<md5>.dir`) brings its files along when it is intact."""
    todo = list(odb.all()) if oids is None else list(dict.fromkeys(oids))
    names: dict[str, str | None] = dict(outputs or {})
    seen: set[str] = set()
    corrupt = []
    while todo:
        oid = todo.pop(0)
        if oid in seen or not odb.exists(oid):
            continue
        seen.add(oid)
        actual = md5_of(odb, oid)
        if actual != oid.split(".")[0]:
            corrupt.append(Corrupt(where, oid, actual, odb.oid_to_path(oid), names.get(oid)))
            continue
        if oid.endswith(".dir") and oids is not None:
            with odb.fs.open(odb.oid_to_path(oid), "rb") as f:
                entries = json.load(f)
            parent = names.get(oid)
            for e in entries:
                names.setdefault(e["md5"], f"{parent}/{e['relpath']}" if parent else None)
                todo.append(e["md5"])
    return len(seen), corrupt


def locked_objects(lock_text: str) -> dict[str, str]:
    """{object name: output path} of every cached output a `dvc.lock` records."""
    lock = yaml.safe_load(lock_text) or {}
    found: dict[str, str] = {}
    for entry in (lock.get("stages") or {}).values():
        for out in entry.get("outs", []):
            md5 = out.get("md5") or out.get("hash")
            if md5 and out.get("hash", "md5") == "md5":
                found.setdefault(str(md5), out["path"])
    return found


def check(
    root: Path, remote: bool = False, lock_text: str | None = None, local: bool = True
) -> CacheCheck:
    """Re-hash the local cache (`local`) and, with `remote`, the default remote: every object,
    or those the `dvc.lock` in `lock_text` names (and the files of its directories)."""
    from dvc.repo import Repo

    outputs = locked_objects(lock_text) if lock_text is not None else None
    oids = None if outputs is None else list(outputs)
    result = CacheCheck()
    with Repo(str(root)) as repo:
        stores = [("local cache", repo.cache.local)] if local else []
        if remote:
            url = dvc_repo.remote_url(root)
            if url is None:
                raise UsageError("--remote: this repo has no default DVC remote")
            stores.append((f"remote {url}", repo.cloud.get_remote_odb(None, hash_name="md5")))
        for where, odb in stores:
            n, bad = check_objects(odb, where, oids, outputs)
            result.checked[where] = n
            result.corrupt += bad
    return result


def lock_at(root: Path, rev: str) -> str:
    """The text of `dvc.lock` as commit `rev` of `root` has it."""
    user_values.check(rev=rev)
    done = subprocess.run(
        ["git", "show", "--end-of-options", f"{rev}:dvc.lock"],
        cwd=root,
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        raise UsageError(f"--rev {rev}: {done.stderr.strip()}")
    return done.stdout


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m pipelines.cache_check",
        description=__doc__.splitlines()[0],
        epilog="Exit status: 0 every object is intact, 1 one is corrupt, 2 usage error.",
    )
    p.add_argument("--root", type=Path, default=Path("."), help="the repository (default: here)")
    p.add_argument("--remote", action="store_true", help="the default remote's objects too")
    p.add_argument("--rev", default=None, help="only the objects this commit's dvc.lock names")
    return p.parse_args(argv)


def run_from_args(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    root = user_values.existing_folder("--root", args.root)
    lock_text = None if args.rev is None else lock_at(root, args.rev)
    result = check(root, args.remote, lock_text)
    print(result.summary())
    if not result.ok:
        raise StageError(f"{len(result.corrupt)} cache objects do not hash to their names")


def main(argv: list[str] | None = None) -> int:
    return errors.run(run_from_args, argv)


if __name__ == "__main__":
    sys.exit(main())

"""Audit a commit: check what it holds against its `dvc.lock`, then rebuild its pipeline in a
fresh clone and compare every output with `dvc.lock`.

    uv run python -m pipelines.verify                  # HEAD, every stage
    uv run python -m pipelines.verify --stages train   # train and what it needs
    uv run python -m pipelines.verify --rev main --keep /tmp/audit --remote

It clones the commit into a temporary folder (nothing of this working tree comes along: no
DVC cache, no checkpoints, no uncommitted change) and checks, before anything runs:

- what is committed: every output git tracks (`cache: false`: metrics, DVCLive's plots, the
  evaluation plots) is hashed as DVC hashes it and must match the hash the commit's `dvc.lock`
  records, so an edited, committed `metrics/evaluate.json` fails;
- what is cached: every object of this working tree's DVC cache that the commit's `dvc.lock`
  names (and, with `--remote`, every one on the default remote) must hash to its name
  (`pipelines.cache_check`), so a flipped byte in a cached model fails.

Then it runs `dvc repro --force` there, so that every stage is recomputed whatever is
committed to git (`evaluate`'s outputs are, and DVC would otherwise take them as up to date),
checks from each stage's run record that it ran and with which compute profile, and prints for
each output the hash the commit's `dvc.lock` records, the rebuilt hash, and whether they are
the same. A committed file that differs from `dvc.lock` is named with both hashes and, from
the rebuild, which side is wrong. Exit status 0 only when every check passes, every stage was
rebuilt and every output is the same, 1 when one fails, 2 for a usage error. Where it can, it
says why an output differs: the commit's `dvc.lock` was stale, an upstream output differed, or
the run's provenance differs from the committed one (resolved precision, CPU, library
versions), or the environment is not the locked one. Uncommitted changes are not audited, only
named in a note: the audit is of a commit.

The raw MNIST files come from `MNIST_MIRROR` when it is set, else from this working tree's
verified downloads (`data/raw`), else from the official mirrors; they are checksum-verified
either way. The Prefect flow `audit` (`pipelines.flow`) runs the same, for a scheduled audit.
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import subprocess
import sys
import tempfile
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from mnist_pipeline import environment, errors, provenance
from mnist_pipeline.errors import StageError, UsageError
from pipelines import cache_check, dvc_repo, user_values
from pipelines.committed import Committed, committed_outputs, lock_entries, with_rebuilt

SAME, DIFFERENT, MISSING = "same", "different", "missing"
RAW_DATA = Path("data/raw")  # the prepare stage's verified downloads, reused as a mirror
# Provenance facts whose difference explains a different output.
_EXPLAINING = ("compute", "precision", "device", "cpu", "libraries", "plugins")


@dataclass(frozen=True)
class Output:
    stage: str
    path: str
    committed: str | None
    rebuilt: str | None

    @property
    def verdict(self) -> str:
        if self.committed is None or self.rebuilt is None:
            return MISSING
        return SAME if self.committed == self.rebuilt else DIFFERENT


@dataclass
class Audit:
    commit: str
    outputs: list[Output] = field(default_factory=list)
    committed: list[Committed] = field(default_factory=list)  # git-tracked outputs vs dvc.lock
    cache: cache_check.CacheCheck | None = None  # the commit's objects in the cache, re-hashed
    reasons: list[str] = field(default_factory=list)  # why outputs differ, where known
    notes: list[str] = field(default_factory=list)  # worth knowing, whatever the verdict
    rebuilt: list[str] = field(default_factory=list)  # the stages the clone recomputed
    profiles: dict[str, str] = field(default_factory=dict)  # stage -> compute profile it used
    plugins: dict[str, list[str]] = field(default_factory=dict)  # stage -> the plugins it used
    failed: str | None = None  # the rebuild itself failed

    @property
    def ok(self) -> bool:
        return (
            self.failed is None
            and all(o.verdict == SAME for o in self.outputs)
            and all(c.same for c in self.committed)
            and (self.cache is None or self.cache.ok)
        )


def git(root: Path, *args: str) -> str:
    done = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True)
    if done.returncode != 0:
        raise UsageError(f"git {' '.join(args)} in {root}: {done.stderr.strip()}")
    return done.stdout.strip()


def compare(committed: dict[str, Any], rebuilt: dict[str, Any], stages: list[str]) -> list[Output]:
    """Per output of `stages`, the committed and the rebuilt hash."""
    a, b = lock_entries(committed, "outs"), lock_entries(rebuilt, "outs")
    rows = []
    for stage in stages:
        for path in sorted(a.get(stage, {}).keys() | b.get(stage, {}).keys()):
            rows.append(
                Output(stage, path, a.get(stage, {}).get(path), b.get(stage, {}).get(path))
            )
    return rows


def explain(
    committed: dict[str, Any],
    rebuilt: dict[str, Any],
    outputs: list[Output],
    provenances: dict[str, tuple[dict | None, dict | None]],
) -> list[str]:
    """Why the differing outputs differ, as far as the two locks and the provenance tell."""
    reasons = []
    bad_stages = [s for s in dict.fromkeys(o.stage for o in outputs if o.verdict != SAME)]
    deps_a, deps_b = lock_entries(committed, "deps"), lock_entries(rebuilt, "deps")
    produced = {o.path for o in outputs}
    for stage in bad_stages:
        a, b = deps_a.get(stage, {}), deps_b.get(stage, {})
        changed = sorted(p for p in a.keys() | b.keys() if a.get(p) != b.get(p))
        upstream = [p for p in changed if p in produced]
        inputs = [p for p in changed if p not in produced]
        if inputs:
            reasons.append(
                f"{stage}: the committed dvc.lock is stale: these inputs differ from what it "
                f"records: {', '.join(inputs)} (commit the dvc.lock of a run of this commit)"
            )
        if upstream:
            reasons.append(
                f"{stage}: follows from a different upstream output: {', '.join(upstream)}"
            )
        before, after = provenances.get(stage, (None, None))
        if before and after:
            for key in _EXPLAINING:
                diff = _differences(before.get(key), after.get(key))
                if diff:
                    reasons.append(f"{stage}: the committed run had another {key}: {diff}")
    return reasons


def _differences(a: Any, b: Any) -> str:
    """`key: committed -> rebuilt` for what differs between two provenance values."""
    if isinstance(a, dict) and isinstance(b, dict):
        keys = sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))
        return ", ".join(f"{k} {a.get(k)!r} -> {b.get(k)!r}" for k in keys)
    return "" if a == b else f"{a!r} -> {b!r}"


def environment_notes(clone: Path) -> list[str]:
    """Where this interpreter's compute libraries are not the versions the commit locks."""
    env_file = clone / "compute-env.txt"
    if not env_file.is_file():
        return []
    locked: dict[str, set[str]] = {}
    for line in env_file.read_text().splitlines():
        spec = line.split(";")[0].strip()
        if spec and not spec.startswith("#") and "==" in spec:
            name, _, version = spec.partition("==")
            locked.setdefault(name, set()).add(version)
    installed = environment.installed_versions(tuple(locked))
    off = [
        f"{n} {installed.get(n)} (locked {'/'.join(sorted(v))})"
        for n, v in locked.items()
        if installed.get(n) not in v
    ]
    if not off:
        return []
    return [f"this environment is not the locked one: {', '.join(off)}; `uv sync --locked`"]


def source_notes(root: Path) -> list[str]:
    changed = provenance.git_state(root).get("changed") or []
    if not changed:
        return []
    return [
        f"the working tree has uncommitted changes ({', '.join(changed[:5])}"
        f"{', ...' if len(changed) > 5 else ''}): the audit rebuilds the commit, not them"
    ]


def mirror_env(root: Path) -> dict[str, str]:
    """MNIST_MIRROR for the rebuild: the one set, else this tree's verified downloads."""
    from mnist_pipeline.data.mnist_files import FILES, MIRROR_ENV

    if os.environ.get(MIRROR_ENV):
        return {}
    raw = root / RAW_DATA
    if all((raw / name).is_file() for name, _ in FILES):
        return {MIRROR_ENV: str(raw.resolve())}
    return {}


def verify(
    root: Path,
    rev: str = "HEAD",
    stages: list[str] | None = None,
    keep: Path | None = None,
    timeout_s: float | None = None,
    echo: Callable[[str], None] = print,
    remote: bool = False,
) -> Audit:
    """Clone `rev` of `root`, check its git-tracked outputs against its dvc.lock and re-hash
    the cache objects it names (in `root`'s cache, and on the default remote with `remote`),
    then rebuild `stages` (default all) in the clone and compare with its dvc.lock."""
    root = user_values.existing_folder("--root", root)
    user_values.check(rev=rev)
    if timeout_s is not None and not (math.isfinite(timeout_s) and timeout_s > 0):
        raise UsageError(f"--timeout-s {timeout_s}: a number of seconds above 0")
    commit = git(root, "rev-parse", "--verify", "--end-of-options", f"{rev}^{{commit}}")
    audit = Audit(commit, notes=source_notes(root) if rev == "HEAD" else [])
    work = Path(tempfile.mkdtemp(prefix="mnist-verify-")) if keep is None else keep
    clone = work / "repo"
    try:
        echo(f"cloning {commit[:12]} into {clone}")
        git(root, "clone", "--quiet", "--no-checkout", "--", str(root), str(clone))
        git(clone, "checkout", "--quiet", commit)
        committed = (
            yaml.safe_load((clone / "dvc.lock").read_text())
            if (clone / "dvc.lock").is_file()
            else {}
        )
        order = dvc_repo.stage_order(clone, stages)
        audit.committed = committed_outputs(clone)
        lock_text = (clone / "dvc.lock").read_text() if committed else ""
        echo(f"re-hashing the cache objects of {commit[:12]}'s dvc.lock")
        audit.cache = cache_check.check(root, remote, lock_text)
        before = {s: _read_provenance(clone, s) for s in order}
        audit.notes += environment_notes(clone)
        env = mirror_env(root)
        echo(f"running `dvc repro --force {' '.join(stages or [])}` ({' -> '.join(order)})")
        argv = ["repro", "--force", *(stages or [])]
        done = dvc_repo.run(clone, argv, timeout_s, echo, extra_env=env)
        if not done.ok:
            audit.failed = f"`dvc repro` failed (exit {done.returncode}):\n{done.tail[-3000:]}"
            return audit
        rebuilt = yaml.safe_load((clone / "dvc.lock").read_text())
        audit.outputs = compare(committed, rebuilt, order)
        audit.committed = with_rebuilt(audit.committed, rebuilt)
        after = {s: _read_provenance(clone, s) for s in order}
        # A stage recomputed in the clone left a run record of its own there.
        audit.rebuilt = [s for s in order if after[s] and after[s] != before[s]]
        # Only the stages that compute with torch record a profile (prepare and card do not).
        audit.profiles = {
            s: str(record["compute"]["profile"])
            for s in audit.rebuilt
            if (record := after[s]) and record.get("compute")
        }
        audit.plugins = {
            s: [plugin_text(p) for p in record["plugins"]]
            for s in audit.rebuilt
            if (record := after[s]) and record.get("plugins")
        }
        audit.notes += unlocked_plugin_notes(clone, after)
        skipped = [s for s in order if s not in audit.rebuilt]
        if skipped:
            audit.failed = f"these stages were not recomputed in the clone: {', '.join(skipped)}"
        provs = {s: (before[s], after[s]) for s in order}
        audit.reasons = explain(committed, rebuilt, audit.outputs, provs)
        return audit
    finally:
        if keep is None:
            shutil.rmtree(work, ignore_errors=True)


def plugin_text(source: dict[str, Any]) -> str:
    """`model wide_lenet5 (mnist-plugin-example 0.1.0)`: a run record's plugin entry."""
    dist = f"{source.get('distribution')} {source.get('version')}"
    return f"{source.get('kind')} {source.get('name')} ({dist})"


def unlocked_plugin_notes(clone: Path, records: dict[str, dict | None]) -> list[str]:
    """The plugins a stage used from a distribution that the commit's uv.lock does not pin:
    another machine installs whatever version it finds, so the portable guarantee does not
    cover them."""
    lock = clone / "uv.lock"
    pinned = (
        {e.get("name") for e in tomllib.loads(lock.read_text()).get("package", [])}
        if lock.is_file()
        else set()
    )
    notes = []
    for stage, record in records.items():
        for p in (record or {}).get("plugins") or []:
            dist = str(p.get("distribution") or "").lower().replace("_", "-")
            if dist not in pinned:
                notes.append(
                    f"{stage} used {plugin_text(p)}, which uv.lock does not pin: add it to the "
                    "project's dependencies for the results to reproduce elsewhere"
                )
    return notes


def _read_provenance(root: Path, stage: str) -> dict | None:
    path = dvc_repo.provenance_file(root, stage)
    return provenance.read(path) if path else None


def report(audit: Audit) -> str:
    """The audit as text: a table of outputs, then the verdict and the reasons."""
    lines = [f"audit of commit {audit.commit}"]
    if audit.rebuilt:
        # Only the stages that compute with torch record a profile (not `prepare`).
        profiles = ", ".join(sorted(set(audit.profiles.values()))) or "none (no torch stage)"
        lines.append(
            f"rebuilt {len(audit.rebuilt)} stages in a fresh clone ({', '.join(audit.rebuilt)}), "
            f"compute profile: {profiles}"
            + (
                " (results of the fast profile reproduce on the same CPU model only)"
                if "fast" in audit.profiles.values()
                else ""
            )
        )
    lines += [f"plugins of {stage}: {', '.join(used)}" for stage, used in audit.plugins.items()]
    if audit.outputs:
        width = max(len(o.path) for o in audit.outputs)
        lines.append(
            f"{'stage':<9} {'output':<{width}}  {'committed':<36} {'rebuilt':<36} verdict"
        )
        for o in audit.outputs:
            lines.append(
                f"{o.stage:<9} {o.path:<{width}}  {o.committed or '-':<36} "
                f"{o.rebuilt or '-':<36} {o.verdict}"
            )
    wrong = [c for c in audit.committed if not c.same]
    if audit.committed:
        lines.append(
            f"{len(audit.committed) - len(wrong)} of {len(audit.committed)} git-tracked outputs "
            "of the commit match its dvc.lock"
        )
    lines += [f"MISMATCH: {c.describe()}" for c in wrong]
    if audit.cache is not None:
        lines.append(audit.cache.summary())
    if audit.failed:
        lines.append(f"FAILED: {audit.failed}")
    else:
        bad = [o for o in audit.outputs if o.verdict != SAME]
        lines.append(
            f"{len(audit.outputs) - len(bad)} of {len(audit.outputs)} outputs are the same"
            + ("" if bad else ": the commit reproduces byte for byte")
        )
    if not audit.ok and not audit.failed:
        lines.append("the audit FAILED: see the mismatches above")
    lines += [f"why: {r}" for r in audit.reasons]
    lines += [f"note: {n}" for n in audit.notes]
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m pipelines.verify",
        description=__doc__.splitlines()[0],
        epilog="Exit status: 0 every output is the same, 1 one differs or the run failed, "
        "2 usage error.",
    )
    p.add_argument("--root", type=Path, default=Path("."), help="the repository (default: here)")
    p.add_argument("--rev", default="HEAD", help="the commit to audit (default: HEAD)")
    p.add_argument("--stages", nargs="+", default=None, help="only these stages (and upstream)")
    p.add_argument("--keep", type=Path, default=None, help="rebuild here and keep the folder")
    p.add_argument("--timeout-s", type=float, default=None, help="stop the rebuild after this")
    p.add_argument(
        "--remote", action="store_true", help="re-hash the commit's objects on the DVC remote too"
    )
    return p.parse_args(argv)


def run_from_args(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    audit = verify(args.root, args.rev, args.stages, args.keep, args.timeout_s, remote=args.remote)
    print(report(audit))
    if not audit.ok:
        raise StageError(
            "the commit's outputs, its cache objects or their rebuild are not what its dvc.lock "
            "records"
        )


def main(argv: list[str] | None = None) -> int:
    return errors.run(run_from_args, argv)


if __name__ == "__main__":
    sys.exit(main())

"""Checks on the values a user gives the flows that become folder names, git refs or arguments
of a subprocess.

The values come from the command line or, as flow-run parameters, from anyone who can start
a run on the Prefect server, so each flow checks them where it starts, before any of them
reaches a path or a command: a name is a slug (it names folders and experiment refs, so
`../` cannot climb out of the sweep's folder), a metric is a path of slugs below its folder,
and a git URL or revision cannot be read as an option (`--upload-pack=...` would run a
command). Each refusal is a `UsageError` (exit 2) that names the option. The subprocesses
still get such values after `--` (or `--end-of-options`) where the command allows it.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

from mnist_pipeline.errors import UsageError

MAX_LEN = 64
# No '/', no '..', no leading '.' or '-': a file name on every system and a valid git ref part.
_SLUG = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9_-]|\.(?!\.))*")
_SLUG_RULE = (
    f"letters, digits, '-', '_' and single dots, starting with a letter or digit, at most "
    f"{MAX_LEN} characters"
)


def slug(option: str, value: str) -> str:
    """`value` if it is a slug: it names a folder and a git ref."""
    if len(value) > MAX_LEN or not _SLUG.fullmatch(value) or value.endswith("."):
        raise UsageError(f"{option} {value!r}: use {_SLUG_RULE} (it names folders and git refs)")
    return value


def relative_path(option: str, value: str) -> str:
    """`value` if it is slugs joined by '/', a path that stays below the folder it is read in."""
    if not all(_SLUG.fullmatch(part) and len(part) <= MAX_LEN for part in value.split("/")):
        raise UsageError(f"{option} {value!r}: use parts of {_SLUG_RULE}, joined by '/'")
    return value


def not_an_option(option: str, value: str) -> str:
    """`value` if no command could read it as an option (a git URL, remote or revision)."""
    if not value or value.startswith("-") or any(ord(c) < 32 for c in value):
        raise UsageError(
            f"{option} {value!r}: not a git URL, remote or revision (one starting with '-' "
            "would be read as an option of git)"
        )
    return value


# The flows' parameters that need a check, by name; the option is `--<name with dashes>`.
CHECKS: dict[str, Callable[[str, str], str]] = {
    "name": slug,
    "model_name": slug,
    "origin": not_an_option,
    "rev": not_an_option,
    "prune_metric": relative_path,
}


def check(**values: str | None) -> None:
    """Check each given flow parameter (None: not given) with its rule in `CHECKS`."""
    for param, value in values.items():
        if value is not None:
            CHECKS[param]("--" + param.replace("_", "-"), value)


def existing_folder(option: str, value: str | Path) -> Path:
    """`value` as an absolute path, if it is a folder that exists."""
    path = Path(value).resolve()
    if not path.is_dir():
        raise UsageError(f"{option} {str(value)!r}: no such folder")
    return path

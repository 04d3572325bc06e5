"""Params overrides for a flow run, in the syntax of `dvc exp run -S`, validated before any work.

`train.max_epochs=3` sets a key, `+section.key=v` adds one, `~section.key` deletes one (Hydra's
override grammar, which DVC uses; DVC's own code applies them, so the result is what
`dvc exp run -S` would write). Like `dvc exp run -S`, the new values are written to
`params.yaml`, so `dvc.lock` records them and `git diff params.yaml` shows what the run used.
The whole file is validated with `mnist_pipeline.params.schema.load_params` first: an invalid value
leaves `params.yaml` untouched and nothing runs.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

import yaml

from mnist_pipeline.atomic import write_bytes
from mnist_pipeline.errors import ParamsError
from mnist_pipeline.params.schema import Params, load_params, parse_params
from pipelines.dvc_repo import flatten

PARAMS_FILE = "params.yaml"


def strip_file(override: str) -> str:
    """`params.yaml:train.lr=0.1` -> `train.lr=0.1`; other files are not validated: refuse."""
    name = override.partition("=")[0]
    if ":" not in name:
        return override
    path, _, rest = override.partition(":")
    if Path(path).name != PARAMS_FILE:
        raise ParamsError(f"override {override!r}: only {PARAMS_FILE} can be overridden")
    return rest


def overridden(params_path: Path, overrides: list[str]) -> tuple[Params, str]:
    """`params_path` with `overrides` applied and validated, without touching the file:
    (params, the new file's text). Raises `ParamsError` naming the bad override or key."""
    if not overrides:
        return load_params(params_path), params_path.read_text()
    from dvc.exceptions import InvalidArgumentError
    from dvc.utils.hydra import apply_overrides

    plain = [strip_file(o) for o in overrides]
    with tempfile.TemporaryDirectory(prefix="params-") as tmp:
        candidate = Path(tmp) / PARAMS_FILE
        shutil.copyfile(params_path, candidate)
        try:
            apply_overrides(candidate, plain)
        except InvalidArgumentError as err:
            cause = err.__cause__ or err
            raise ParamsError(f"invalid override in {overrides}: {cause}") from None
        text = candidate.read_text()
    params = parse_params(yaml.safe_load(text), f"{params_path} with overrides {overrides}")
    return params, text


def apply(params_path: Path, overrides: list[str]) -> tuple[Params, dict[str, Any]]:
    """Validate `params_path` with `overrides` applied, then write it; return (params, changes).

    `changes` maps each changed key to (old, new). With no overrides only validation happens.
    """
    params, text = overridden(params_path, overrides)
    if not overrides:
        return params, {}
    changes = _changed(yaml.safe_load(params_path.read_text()) or {}, yaml.safe_load(text))
    write_bytes(params_path, text.encode())
    return params, changes


def _changed(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    a, b = flatten(old), flatten(new)
    return {k: (a.get(k), b.get(k)) for k in sorted(a.keys() | b.keys()) if a.get(k) != b.get(k)}

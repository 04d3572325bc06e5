"""A model bundle: a registered version of a model in a folder, with what says which it is.

    model.onnx      the model's bytes, as its registered version's dvc.lock entry pins them
    model.json      {"name", "version", "stage", "commit", "sha256", "source"}
    card.md         its model card, when the artifact has one
    drift_profile.json  the reference profile drift is measured against, when there is one
                    (mnist-serve finds it beside the model, as beside a file in models/)

`mnist-serve --model FOLDER` serves a bundle as the registered version it is (`GET /model`
names it, `GET /model/card` shows the card) with no registry, git or DVC at hand: the container
image holds one (`python -m pipelines.image`). A bundle whose model's sha256 is not the one
`model.json` records is refused.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from mnist_pipeline.errors import UsageError

MODEL, INFO, CARD = "model.onnx", "model.json", "card.md"
PROFILE = "drift_profile.json"


def is_bundle(path: Path) -> bool:
    return (path / INFO).is_file()


def write(
    folder: Path,
    info: dict[str, str | None],
    data: bytes,
    card: str | None,
    profile: bytes | None = None,
) -> dict:
    """Write a bundle of the model `data` into `folder`: `info` names it (name, version, stage,
    commit, source: where the version is registered), with its card and drift profile when it
    has them; return what `model.json` holds."""
    folder.mkdir(parents=True, exist_ok=True)
    info = {**info, "sha256": hashlib.sha256(data).hexdigest()}
    (folder / MODEL).write_bytes(data)
    (folder / INFO).write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
    if card is not None:
        (folder / CARD).write_text(card)
    if profile is not None:
        (folder / PROFILE).write_bytes(profile)
    return info


def read(folder: Path) -> dict[str, str | None]:
    """What `model.json` of a bundle says; UsageError when the bundle's model is not the one
    it records."""
    try:
        info = json.loads((folder / INFO).read_text())
        data = (folder / MODEL).read_bytes()
    except (OSError, ValueError) as err:
        raise UsageError(f"model bundle {folder}: {err}") from None
    if hashlib.sha256(data).hexdigest() != info.get("sha256"):
        raise UsageError(
            f"model bundle {folder}: {MODEL} is not the model {INFO} records "
            f"(sha256 {info.get('sha256')})"
        )
    return info

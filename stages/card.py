"""Write a model card for every artifact of dvc.yaml, from the pipeline's results only.

Stage `card`: dvc.yaml (its `artifacts:`), data/prepared/meta.json, metrics/{evaluate,
prune, export, quantize}.json, plots/evaluate/per_class.json, models/drift_profile.json ->
models/cards/<artifact>.md, provenance/card.json.
Params: `card` section of params.yaml, and the params each card shows.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import sys
from pathlib import Path
from typing import Any

import yaml

from mnist_pipeline import errors, stage
from mnist_pipeline.atomic import atomic_dir
from mnist_pipeline.evaluation import model_card

log = logging.getLogger(__name__)


def write_cards(
    artifacts: dict[str, Any], results: model_card.Results, n_weakest: int, out: Path
) -> None:
    """`out/<artifact>.md` for each artifact, replacing the folder whole."""
    with atomic_dir(out) as tmp:
        for name, artifact in sorted(artifacts.items()):
            (tmp / f"{name}.md").write_text(model_card.render(name, artifact, results, n_weakest))
            log.info("card for %s", name)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    paths = {
        "--dvc-yaml": "whose artifacts get cards",
        "--data": "prepared data folder (its meta)",
        "--plots": "evaluate's plots folder",
        **{
            f"--{name}": f"{name}'s metrics JSON"
            for name in ("evaluate", "prune", "export", "quantize")
        },
        "--profile": "the drift reference profile the cards name",
        "--out": "folder of the cards to write",
    }
    return stage.parser("card", __doc__, paths).parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    inputs = [args.dvc_yaml, args.data / "meta.json", args.plots / "per_class.json"]
    inputs += [args.evaluate, args.prune, args.export, args.quantize, args.profile]
    with stage.running(args, "card", inputs, computes=False) as run:
        params = run.params
        results = model_card.Results(
            params=params,
            data_meta=json.loads((args.data / "meta.json").read_text()),
            evaluate=json.loads(args.evaluate.read_text()),
            per_class=json.loads((args.plots / "per_class.json").read_text()),
            prune=json.loads(args.prune.read_text()),
            export=json.loads(args.export.read_text()),
            quantize=json.loads(args.quantize.read_text()),
            profile=json.loads(args.profile.read_text()),
            profile_file=(
                args.profile.name,
                hashlib.sha256(args.profile.read_bytes()).hexdigest(),
            ),
        )
        artifacts = yaml.safe_load(args.dvc_yaml.read_text())["artifacts"]
        write_cards(artifacts, results, params.card.weakest_classes, args.out)


if __name__ == "__main__":
    sys.exit(errors.run(main))

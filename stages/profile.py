"""Profile what the served models were made for: the reference their drift is measured against.

Stage `profile`: data/prepared, models/*.onnx -> models/drift_profile.json,
provenance/profile.json.
Params: `profile` section of params.yaml.

The features of the training digits (ink, intensity, centroid, box, orientation), the label
prior, and for each ONNX model its predicted classes and max-softmax on held-out digits, with
every signal's calibrated threshold (`mnist_pipeline.drift`). `mnist-serve` reads it.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import sys
from pathlib import Path

from mnist_pipeline import errors, stage
from mnist_pipeline.atomic import write_json
from mnist_pipeline.drift import calibration

log = logging.getLogger(__name__)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = stage.parser("profile", __doc__, {"--data": "prepared data folder", "--out": "profile"})
    p.add_argument("--onnx", type=Path, nargs="+", required=True, help="the models to profile")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    inputs = [args.data / "train.safetensors", args.data / "val.safetensors", *args.onnx]
    with stage.running(args, "profile", inputs, computes=False) as run:
        from mnist_pipeline.onnx import runtime  # where the work begins (docs/speed.md)

        # One thread: the profile's numbers do not depend on the machine's cores.
        models = {
            path.name: (hashlib.sha256(path.read_bytes()).hexdigest(), runtime.session(path, 1))
            for path in args.onnx
        }
        write_json(args.out, calibration.build(args.data, models, run.params.profile))
        log.info("wrote %s", args.out)


if __name__ == "__main__":
    sys.exit(errors.run(main))

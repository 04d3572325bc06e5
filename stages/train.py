"""Train LeNet-5 with PyTorch Lightning, resuming a killed run from its last checkpoint.

Stage `train`: data/prepared -> models/lenet5.pt, dvclive/train (metrics and plots),
metrics/train.json (results), measurements/train.json (fit time), provenance/train.json;
checkpoints in --ckpt-dir (kept between runs, not cached by DVC).
Params: `train` section of params.yaml.

The fit itself is `mnist_pipeline.training.fit`: a run resumes from `<ckpt-dir>/last.ckpt`
only when that checkpoint carries the same fingerprint, otherwise it starts fresh and says why.
For tests of that path, `MNIST_FAIL_AFTER_EPOCH=k` kills the process (SIGKILL, as the OOM killer
would) during epoch k+1 of a run that did not itself resume.
"""

from __future__ import annotations

import argparse
import logging
import sys

from mnist_pipeline import errors, stage
from mnist_pipeline.atomic import write_json
from mnist_pipeline.data.dataset import load_normalization

log = logging.getLogger(__name__)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    paths = {
        "--data": "prepared data folder",
        "--ckpt-dir": "checkpoints, kept for resuming",
        "--live-dir": "DVCLive metrics and plots",
        "--model": "trained model file to write",
    }
    return stage.parser("train", __doc__, paths, metrics=True, timings=True).parse_args(argv)


# Facts of this run rather than results of the training: kept out of the hashed outputs.
TIMINGS = ("fit_time_s",)
RUN_FACTS = ("resumed_from_epoch", "device", "precision", "fingerprint")


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    with stage.running(args, "train", [args.data]) as run:
        # Imported for the fit, not before (docs/speed.md, "Start-up"): Lightning, and with it
        # torchmetrics, are seconds of a process that stops at a params error.
        from mnist_pipeline.model import save_model
        from mnist_pipeline.training import checkpoints
        from mnist_pipeline.training.fit import train, used_plugins

        # Which plugins made this run, from which distributions (the audit reports them).
        run.facts["plugins"] = [p.source() for p in used_plugins(run.params.train)]
        net, summary = train(
            run.params.train,
            run.params.compute,
            args.data,
            args.ckpt_dir,
            args.live_dir,
            fail_after_epoch=checkpoints.fail_after_epoch(),
        )
        if not summary.pop("is_global_zero"):
            run.record.keep = False
            return
        run.facts.update({k: summary.pop(k) for k in RUN_FACTS})
        timings = {k: summary.pop(k) for k in TIMINGS}
        norm = load_normalization(args.data)
        # Only what determines the weights' meaning; where and when they were made is in the
        # provenance record.
        meta = {"mean": norm.mean, "std": norm.std, "precision": run.facts["precision"]}
        model = run.params.train.model
        save_model(net, args.model, meta=meta, plugin={"name": model.name, "args": model.args})
        # Numbers only: `dvc metrics show` and `dvc exp show` tabulate these files.
        write_json(args.metrics, {k: v for k, v in summary.items() if v is not None})
        if args.timings is not None:
            write_json(args.timings, timings)


if __name__ == "__main__":
    sys.exit(errors.run(main))

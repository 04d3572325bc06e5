"""The project's training path, exactly as the `train` stage runs it:
`mnist_pipeline.training.fit.train` (fingerprint, in-memory data module, Lightning Trainer,
checkpoint every epoch, DVCLive)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from benchmarks.clocks import EpochTimer, Stopwatch, summary
from mnist_pipeline.data.dataset import Split, load_split, split_sizes
from mnist_pipeline.model import accuracy
from mnist_pipeline.params.schema import ComputeParams, TrainParams
from mnist_pipeline.training import fit


def run(
    params: TrainParams, compute: ComputeParams, data_dir: Path, workdir: Path, target: float
) -> dict[str, Any]:
    watch = Stopwatch()
    test: list[Split] = []

    def acc_on_test(net: Any) -> float:
        if not test:
            test.append(load_split(data_dir, "test"))
        return accuracy(net, test[0].images, test[0].labels)

    timer = EpochTimer(watch, acc_on_test)
    _, run_summary = fit.train(
        params, compute, data_dir, workdir / "ckpt", workdir / "live", extra_callbacks=[timer]
    )
    n_train, batch = split_sizes(data_dir)["train"], run_summary["batch_size"]
    return {
        **summary(timer.record, target, n_train // batch * batch),
        "device": run_summary["device"],
        "precision": run_summary["precision"],
        "fit_time_s": run_summary["fit_time_s"],
    }

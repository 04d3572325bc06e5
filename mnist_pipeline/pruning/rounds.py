"""Pruning in rounds, each an equal share of the target then a fine-tuning, saved as it goes.

After each round, the model so far, the round's report and a fingerprint (the prune and train
params, the dense model, the data, the code and the environment, by the rules of `train`'s
checkpoints) are saved to the checkpoint folder. A retried or killed run with the same
fingerprint starts at the round after the last one saved, with the pruner put back where it
was, and ends with the same model as an uninterrupted run. `MNIST_FAIL_AFTER_ROUND=k` (a test
hook) kills the process with SIGKILL once round k is saved.
"""

from __future__ import annotations

import hashlib
import logging
import os
import signal
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
import torch_pruning as tp
from torch.nn.utils import prune as torch_prune

from mnist_pipeline import compute as compute_mod
from mnist_pipeline import errors
from mnist_pipeline.atomic import write_torch
from mnist_pipeline.data import dataset
from mnist_pipeline.data.datamodule import MNISTDataModule
from mnist_pipeline.data.dataset import Split, load_split
from mnist_pipeline.model import LeNet5, Widths, accuracy, widths_of
from mnist_pipeline.params.fit import PruneParams, StructuredPruneParams, TrainParams
from mnist_pipeline.params.schema import ComputeParams
from mnist_pipeline.pruning import distillation
from mnist_pipeline.pruning import structured as pruning
from mnist_pipeline.pruning.distillation import (
    DistilledLitLeNet5,
    SoftTargetDataModule,
    teacher_logits,
)
from mnist_pipeline.pruning.structured import (
    make_permanent,
    make_structured_pruner,
    model_stats,
    plain_copy,
    structured_step,
    unstructured_step,
)
from mnist_pipeline.training import checkpoints
from mnist_pipeline.training.lightning_module import LitLeNet5
from mnist_pipeline.training.trainer import make_datamodule, make_trainer, resolve_precision

log = logging.getLogger(__name__)

ROUND_CKPT = "last_round.pt"
FAIL_ENV = "MNIST_FAIL_AFTER_ROUND"  # test hook: SIGKILL once this round is saved


def fingerprint(
    params: PruneParams,
    train_params: TrainParams,
    compute: ComputeParams,
    model_path: Path,
    data_dir: Path,
) -> str:
    """The resume fingerprint of a `prune` run: `train`'s rules (its params, the resolved
    precision, how the process computes, the environment), plus the prune params, the dense
    model, all the splits (the test accuracy is in each round's report) and the pruning code."""
    splits = [f"{name}.safetensors" for name in dataset.SPLITS]
    files = [model_path, *(data_dir / n for n in ("meta.json", *splits))]
    precision = resolve_precision(
        train_params.precision, train_params.accelerator, compute.profile
    )
    code = (*checkpoints.TRAINING_CODE, pruning, distillation, sys.modules[__name__])
    computed = compute_mod.apply(compute)
    base = checkpoints.fingerprint(train_params, precision, computed, files, code)
    return hashlib.sha256(f"{base} prune={params.model_dump_json()}".encode()).hexdigest()


def save_round(
    ckpt_dir: Path,
    fp: str,
    done: int,
    net: LeNet5,
    report: dict[str, Any],
    pruner: tp.pruner.BasePruner | None = None,
) -> None:
    """The state after round `done`: the model (with its pruning masks, if any), the report,
    and the channel counts the structured pruner started from."""
    state = {k: v.detach().cpu() for k, v in net.state_dict().items()}
    write_torch(
        ckpt_dir / ROUND_CKPT,
        {
            "fingerprint": fp,
            "round": done,
            "widths": asdict(widths_of(net)),
            "state_dict": state,
            "report": report,
            "pruner_scopes": dict(pruner._scope_initial_channels) if pruner else {},
        },
    )


def load_round(ckpt_dir: Path, fp: str) -> dict[str, Any] | None:
    """The last saved round if it matches `fp`; otherwise None, with the reason logged."""
    path = ckpt_dir / ROUND_CKPT
    saved = checkpoints.load_matching(path, fp, "prune checkpoint", "starting at round 1")
    if saved is not None:
        log.info("resuming after round %d from %s (fingerprint %s)", saved["round"], path, fp[:12])
    return saved


def restore_net(saved: dict[str, Any]) -> LeNet5:
    """The saved round's model, masks (unstructured pruning) attached again."""
    net = LeNet5(Widths(**saved["widths"]))
    state = saved["state_dict"]
    for name, m in net.named_modules():
        if f"{name}.weight_mask" in state:
            torch_prune.identity(m, "weight")  # the mask's slot; its values load below
    net.load_state_dict(state)
    return net


def restore_pruner(
    net: LeNet5,
    dense: LeNet5,
    params: StructuredPruneParams,
    rounds: int,
    done: int,
    scopes: dict[str, int],
) -> tp.pruner.BasePruner:
    """A pruner on `net` that takes up after `done` of `rounds` steps begun on `dense`.

    torch-pruning has no saveable state, but all it keeps between steps is the step count and
    the channel counts before the first step, from which it computes how many channels the
    next step leaves: per layer and for the whole model (from a pruner built on a copy of the
    dense model, node by node), and per pruning scope (`scopes`, saved with each round).
    """
    first = make_structured_pruner(plain_copy(dense), params, rounds)
    pruner = make_structured_pruner(net, params, rounds)
    first_names = {m: n for n, m in first.model.named_modules()}
    names = {m: n for n, m in net.named_modules()}
    for counts in ("layer_init_out_ch", "layer_init_in_ch"):
        # Both graphs list their nodes (layers, and the ops between them) in the same order.
        before, now = getattr(first, counts), getattr(pruner, counts)
        pairs = list(zip(before.items(), now, strict=True))
        for (old, _), new in pairs:
            if type(old) is not type(new) or first_names.get(old) != names.get(new):
                raise errors.StageError(f"cannot resume pruning: {old} does not match {new}")
        setattr(pruner, counts, {new: count for (_, count), new in pairs})
    pruner.initial_total_channels = first.initial_total_channels
    pruner._scope_initial_channels = dict(scopes)
    pruner.current_step = done
    return pruner


def fail_after_round() -> int | None:
    value = os.environ.get(FAIL_ENV)
    return int(value) if value else None


def kill_now(done: int) -> None:
    log.error("%s=%d: killing the prune process now", FAIL_ENV, done)
    logging.shutdown()
    os.kill(os.getpid(), signal.SIGKILL)


def finetune(
    net: LeNet5,
    distilled: bool,
    params: PruneParams,
    train_params: TrainParams,
    compute: ComputeParams,
    data: MNISTDataModule,
    seed: int,
) -> dict[str, float]:
    """Fit `net` in place for `params.finetune.epochs` with the project's Trainer; `distilled`:
    `data` is a `SoftTargetDataModule`, its batches carry the teacher's logits."""
    ft = params.finetune
    pl.seed_everything(seed, workers=True, verbose=False)
    # The round's seed orders its batches too: with `train.seed`'s order, every seed of
    # `prune.seed` fine-tuned the same way (nothing else in a fine-tuning is random).
    data.seed = seed
    if distilled:
        lit: LitLeNet5 = DistilledLitLeNet5(
            ft.optimizer, ft.scheduler, net, params.distill.alpha, params.distill.temperature
        )
    else:
        lit = LitLeNet5(ft.optimizer, ft.scheduler, net=net)
    if train_params.channels_last:
        lit = lit.to(memory_format=torch.channels_last)
    net.train()  # Lightning keeps the modes it finds
    with tempfile.TemporaryDirectory(prefix="prune-finetune-") as root:
        # On this machine only: `train.num_nodes` is for `train`, started by a launcher on
        # every machine; prune runs where DVC runs it.
        here = train_params.model_copy(update={"num_nodes": 1})
        trainer = make_trainer(here, compute, ft.epochs, [], logger=False, root_dir=Path(root))
        trainer.fit(lit, datamodule=data)
    lit.net.cpu().to(memory_format=torch.contiguous_format).eval()
    return {k: float(v) for k, v in trainer.callback_metrics.items()}


def prune_and_finetune(
    dense: LeNet5,
    params: PruneParams,
    train_params: TrainParams,
    compute: ComputeParams,
    data_dir: Path,
    test: Split,
    ckpt_dir: Path | None = None,
    fp: str = "",
) -> tuple[LeNet5, dict[str, Any]]:
    """Prune a copy of `dense` in `params.rounds` steps, fine-tuning after each; with a
    `ckpt_dir`, each round is saved there and a run with the same `fp` resumes after it.

    Returns the pruned model as a plain `LeNet5` and a per-round report.
    """
    saved = load_round(ckpt_dir, fp) if ckpt_dir is not None else None
    done = saved["round"] if saved else 0
    net = restore_net(saved) if saved else plain_copy(dense)
    report: dict[str, Any] = dict(saved["report"]) if saved else {}
    distilled = params.distill.alpha > 0 and params.finetune.epochs > 0
    data = make_datamodule(train_params, data_dir)
    taylor = params.method == "structured" and params.structured.importance == "taylor"
    train = load_split(data_dir, "train") if taylor or distilled else None
    if distilled and train is not None:
        # Once per run: the dense model's outputs never change (no augmentation).
        soft = teacher_logits(plain_copy(dense), train.images, train_params.eval_batch_size)
        data = SoftTargetDataModule(data, soft)
    pruner = None
    if params.method == "structured" and done < params.rounds:
        scopes = saved["pruner_scopes"] if saved else {}
        pruner = restore_pruner(net, dense, params.structured, params.rounds, done, scopes)
    kill_after = fail_after_round() if saved is None else None
    start = time.perf_counter()
    for r in range(done + 1, params.rounds + 1):
        if pruner is not None:
            structured_step(pruner, net, params.structured, train)
        else:
            unstructured_step(net, params.unstructured.sparsity * r / params.rounds)
        acc_pruned = accuracy(net, test.images, test.labels)
        fit = {}
        if params.finetune.epochs > 0:
            fit = finetune(net, distilled, params, train_params, compute, data, params.seed + r)
        acc_tuned = accuracy(net, test.images, test.labels)
        report[f"round{r}"] = {
            **model_stats(net),
            "test_acc_pruned": round(acc_pruned, 5),
            "test_acc_finetuned": round(acc_tuned, 5),
            **({"val_acc": round(fit["val/acc"], 5)} if "val/acc" in fit else {}),
        }
        log.info(
            "round %d/%d: %s, %d params, %d MACs; test acc %.4f pruned, %.4f fine-tuned",
            r,
            params.rounds,
            widths_of(net),
            report[f"round{r}"]["params"],
            report[f"round{r}"]["macs"],
            acc_pruned,
            acc_tuned,
        )
        if ckpt_dir is not None:
            save_round(ckpt_dir, fp, r, net, report, pruner)
        if kill_after == r and r < params.rounds:
            kill_now(r)
    make_permanent(net)
    report["finetune_time_s"] = round(time.perf_counter() - start, 2)
    report["resumed_after_round"] = done if saved else None
    return plain_copy(net), report

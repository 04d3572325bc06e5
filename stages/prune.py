"""Prune the trained LeNet-5 and fine-tune it back: a model really smaller, or one with zeros.

Stage `prune`: models/lenet5.pt, data/prepared -> models/lenet5_pruned.pt, metrics/prune.json
(results), measurements/prune.json (fine-tuning time), provenance/prune.json
Params: `prune` section of params.yaml; the fine-tuning Trainer (batch size, accelerator,
precision) is set up from the `train` section, by the same code that trains the dense model.

`structured` (the default) removes whole conv channels and fc neurons along torch-pruning's
dependency graph, so the result is a plain `LeNet5(Widths(...))` with fewer parameters and
MACs, which loads without torch-pruning and runs faster. `unstructured` zeroes the weights of
smallest magnitude across all layers (torch.nn.utils.prune, made permanent): the tensors keep
their shapes, so only a compressed file shrinks and nothing runs faster. Either method works in
`rounds` steps, each pruning an equal share of the target and then fine-tuning, optionally
distilling from the dense model.

Resuming: after each round, the model so far, the round's report and a fingerprint (the prune
and train params, the dense model, the data, the code and the environment, by the rules of
`train`'s checkpoints) are saved to `--ckpt-dir`. A retried or killed run with the same
fingerprint starts at the round after the last one saved, with the pruner put back where it
was, and ends with the same model as an uninterrupted run.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import logging
import os
import signal
import sys
import tempfile
import time
import warnings
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
import torch_pruning as tp
from torch import nn
from torch.nn.utils import prune as torch_prune

from mnist_pipeline import (
    checkpoints,
    dataset,
    errors,
    logs,
    provenance,
)
from mnist_pipeline import (
    compute as compute_mod,
)
from mnist_pipeline.atomic import write_json, write_torch
from mnist_pipeline.datamodule import MNISTDataModule
from mnist_pipeline.dataset import Split, load_split
from mnist_pipeline.lightning_module import LitLeNet5
from mnist_pipeline.model import (
    LeNet5,
    Widths,
    accuracy,
    count_params,
    load_model,
    save_model,
    widths_of,
)
from mnist_pipeline.params import (
    ComputeParams,
    OptimizerParams,
    PruneParams,
    SchedulerParams,
    StructuredPruneParams,
    TrainParams,
    load_params,
)
from mnist_pipeline.training import make_datamodule, make_trainer, resolve_precision

log = logging.getLogger(__name__)

EXAMPLE_INPUT = torch.zeros(1, 1, 28, 28)
ROUND_CKPT = "last_round.pt"
FAIL_ENV = "MNIST_FAIL_AFTER_ROUND"  # test hook: SIGKILL once this round is saved


# --- measuring ------------------------------------------------------------------------------


def weight_layers(net: nn.Module) -> list[nn.Module]:
    return [m for m in net.modules() if isinstance(m, nn.Conv2d | nn.Linear)]


def count_macs(net: nn.Module) -> int:
    """Operations of one forward pass on one digit, as torch-pruning counts them.

    Multiply-accumulates of the conv and linear layers, plus one per ReLU and pooling output.
    """
    macs, _ = tp.utils.count_ops_and_params(net, EXAMPLE_INPUT.to(_device(net)))
    return int(macs)


def sparsity(net: nn.Module) -> float:
    """Fraction of the conv and linear weights that are exactly zero."""
    weights = [m.weight for m in weight_layers(net)]
    zeros = sum(int((w == 0).sum()) for w in weights)
    return zeros / sum(w.numel() for w in weights)


def file_sizes(path: Path) -> dict[str, int]:
    """Bytes on disk, and gzip-compressed: zeros only pay off once compressed."""
    data = path.read_bytes()
    return {"file_bytes": len(data), "gzip_bytes": len(gzip.compress(data, 9, mtime=0))}


def model_stats(net: nn.Module) -> dict[str, Any]:
    # Through the layers' `weight`, which is the masked weight while pruning masks are attached.
    tensors = [t for m in weight_layers(net) for t in (m.weight, m.bias) if t is not None]
    nonzero = sum(int((t != 0).sum()) for t in tensors)
    return {
        "params": count_params(net),
        "nonzero_params": nonzero,
        "macs": count_macs(net),
        "sparsity": round(sparsity(net), 5),
    }


# --- pruning --------------------------------------------------------------------------------


def make_importance(name: str) -> tp.importance.Importance:
    if name == "l1":
        return tp.importance.MagnitudeImportance(p=1)
    if name == "l2":
        return tp.importance.MagnitudeImportance(p=2)
    if name == "lamp":
        return tp.importance.LAMPImportance(p=2)
    return tp.importance.TaylorImportance()


def make_structured_pruner(
    net: LeNet5, params: StructuredPruneParams, rounds: int
) -> tp.pruner.BasePruner:
    """A pruner that reaches `params.ratio` after `rounds` calls of `step()`.

    The last layer (the 10 class logits) is ignored: its outputs are the model's contract.
    """
    return tp.pruner.BasePruner(
        net,
        EXAMPLE_INPUT.to(_device(net)),
        importance=make_importance(params.importance),
        pruning_ratio=params.ratio,
        iterative_steps=rounds,
        global_pruning=params.global_pruning,
        # Global ranking could otherwise empty a layer; keep at least a tenth of each.
        max_pruning_ratio=0.9,
        ignored_layers=[net.classifier[-1]],
    )


def accumulate_taylor_grads(net: LeNet5, train: Split, batches: int, batch_size: int) -> None:
    """Gradients of the training loss on the first `batches` batches, for Taylor importance."""
    net.zero_grad()
    net.train()
    device = _device(net)
    for b in range(batches):
        sl = slice(b * batch_size, (b + 1) * batch_size)
        x, y = train.images[sl].to(device), train.labels[sl].to(device)
        if len(y) == 0:
            break
        F.cross_entropy(net(x), y).backward()
    net.eval()


def structured_step(
    pruner: tp.pruner.BasePruner, net: LeNet5, params: StructuredPruneParams, train: Split
) -> None:
    """One pruning round: channels and neurons are removed from the layers in place."""
    if params.importance == "taylor":
        accumulate_taylor_grads(net, train, params.taylor_batches, batch_size=256)
    pruner.step()
    net.zero_grad(set_to_none=True)
    w = widths_of(net)
    if min(w.conv1, w.conv2, w.fc1, w.fc2) < 1:
        raise errors.StageError(f"pruning emptied a layer ({w}): lower prune.structured.ratio")


def unstructured_step(net: nn.Module, target_sparsity: float) -> None:
    """Zero the smallest-magnitude weights across all layers until `target_sparsity` is reached.

    Masks stay attached (as forward pre-hooks) so fine-tuning keeps the zeros; `make_permanent`
    bakes them into the weights.
    """
    params = [(m, "weight") for m in weight_layers(net)]
    total = sum(m.weight.numel() for m, _ in params)
    already = sum(int((m.weight_mask == 0).sum()) for m, _ in params if hasattr(m, "weight_mask"))
    amount = round(target_sparsity * total) - already
    if amount > 0:
        # An int amount counts weights among those not yet pruned.
        torch_prune.global_unstructured(
            params, pruning_method=torch_prune.L1Unstructured, amount=amount
        )


def make_permanent(net: nn.Module) -> None:
    for m in weight_layers(net):
        if torch_prune.is_pruned(m):
            torch_prune.remove(m, "weight")


def plain_copy(net: LeNet5) -> LeNet5:
    """The same weights in a freshly built `LeNet5(Widths(...))`: no pruning hooks or state."""
    fresh = LeNet5(widths_of(net))
    fresh.load_state_dict({k: v.detach().cpu() for k, v in net.state_dict().items()})
    return fresh.eval()


# --- resuming -------------------------------------------------------------------------------


def fingerprint(
    params: PruneParams,
    train_params: TrainParams,
    compute: ComputeParams,
    model_path: Path,
    data_dir: Path,
) -> str:
    """The resume fingerprint of a `prune` run: `train`'s rules (its params, the resolved
    precision, how the process computes, the environment), plus the prune params, the dense
    model, all the splits (the test accuracy is in each round's report) and this stage's code."""
    splits = [f"{name}.safetensors" for name in dataset.SPLITS]
    files = [model_path, *(data_dir / n for n in ("meta.json", *splits))]
    precision = resolve_precision(
        train_params.precision, train_params.accelerator, compute.profile
    )
    code = (*checkpoints.TRAINING_CODE, sys.modules[__name__])
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
    if not path.is_file():
        log.info("no prune checkpoint in %s: starting at round 1", ckpt_dir)
        return None
    try:
        saved = checkpoints.load(path)
    except checkpoints.Refused as err:
        log.warning("prune checkpoint %s: starting at round 1", err)
        return None
    except Exception as err:  # a checkpoint cut short by a kill is not worth dying for
        log.warning("prune checkpoint %s is unreadable (%s): starting at round 1", path, err)
        return None
    if saved.get("fingerprint") != fp:
        log.warning(
            "prune checkpoint %s was made with other params, data or code (fingerprint %s, "
            "now %s): starting at round 1",
            path,
            str(saved.get("fingerprint"))[:12],
            fp[:12],
        )
        return None
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


# --- fine-tuning ----------------------------------------------------------------------------


class DistilledLitLeNet5(LitLeNet5):
    """`LitLeNet5` whose training loss adds the dense teacher's temperature-softened outputs."""

    def __init__(
        self,
        optimizer: OptimizerParams,
        scheduler: SchedulerParams,
        net: LeNet5,
        teacher: nn.Module,
        alpha: float,
        temperature: float,
    ) -> None:
        super().__init__(optimizer, scheduler, net=net)
        self.teacher = teacher.eval().requires_grad_(False)
        self.alpha, self.temperature = alpha, temperature

    def on_train_epoch_start(self) -> None:
        self.teacher.eval()  # Lightning puts every submodule in train mode

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], _: int) -> torch.Tensor:
        x, y = batch  # (B, 1, 28, 28), (B,)
        logits = self.net(x)  # (B, 10)
        with torch.no_grad():
            teacher = self.teacher(x) / self.temperature  # (B, 10)
            p_teacher, log_p_teacher = F.softmax(teacher, dim=1), F.log_softmax(teacher, dim=1)
        # KL(teacher || student), batch mean: F.kl_div's value, written out with softmax and
        # log_softmax, whose kernels are PyTorch's own; F.kl_div would take torch.exp, which
        # MKL's VML computes with a code path chosen by CPU vendor (mnist_pipeline.compute).
        log_p_student = F.log_softmax(logits / self.temperature, dim=1)
        kd = (p_teacher * (log_p_teacher - log_p_student)).sum() / x.shape[0]
        # T^2 keeps the soft-target gradients on the scale of the hard-label ones (Hinton 2015).
        loss = (1 - self.alpha) * F.cross_entropy(logits, y) + (
            self.alpha * self.temperature**2 * kd
        )
        self.train_acc.update(logits.detach(), y)
        self.log("train/loss", loss.detach(), on_step=False, on_epoch=True)
        self.log("train/acc", self.train_acc, on_step=False, on_epoch=True)
        return loss


def finetune(
    net: LeNet5,
    teacher: nn.Module | None,
    params: PruneParams,
    train_params: TrainParams,
    compute: ComputeParams,
    data: MNISTDataModule,
    seed: int,
) -> dict[str, float]:
    """Fit `net` in place for `params.finetune.epochs` with the project's Trainer."""
    ft = params.finetune
    pl.seed_everything(seed, workers=True, verbose=False)
    if teacher is not None and params.distill.alpha > 0:
        lit: LitLeNet5 = DistilledLitLeNet5(
            ft.optimizer,
            ft.scheduler,
            net,
            teacher,
            params.distill.alpha,
            params.distill.temperature,
        )
    else:
        lit = LitLeNet5(ft.optimizer, ft.scheduler, net=net)
    if train_params.channels_last:
        lit = lit.to(memory_format=torch.channels_last)
    net.train()  # Lightning keeps the modes it finds; the teacher stays in eval mode
    with tempfile.TemporaryDirectory(prefix="prune-finetune-") as root:
        # On this machine only: `train.num_nodes` is for `train`, started by a launcher on
        # every machine; prune runs where DVC runs it.
        here = train_params.model_copy(update={"num_nodes": 1})
        trainer = make_trainer(here, compute, ft.epochs, [], logger=False, root_dir=Path(root))
        with warnings.catch_warnings():
            # The teacher is in eval mode on purpose.
            warnings.filterwarnings("ignore", r"Found \d+ module\(s\) in eval mode")
            trainer.fit(lit, datamodule=data)
    lit.net.cpu().to(memory_format=torch.contiguous_format).eval()
    if teacher is not None:
        teacher.cpu()
    return {k: float(v) for k, v in trainer.callback_metrics.items()}


# --- the stage ------------------------------------------------------------------------------


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
    teacher = plain_copy(dense) if params.distill.alpha > 0 else None
    data = make_datamodule(train_params, data_dir)
    train = load_split(data_dir, "train") if params.structured.importance == "taylor" else None
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
            fit = finetune(net, teacher, params, train_params, compute, data, params.seed + r)
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


def summarize(
    dense_stats: dict[str, Any], pruned_stats: dict[str, Any], report: dict[str, Any]
) -> dict[str, Any]:
    """The metrics file: both models, their ratios, and the accuracy lost (numbers only)."""
    keys = ("params", "nonzero_params", "macs", "file_bytes", "gzip_bytes")
    drop = (dense_stats["test_acc"] - pruned_stats["test_acc"]) * 100
    return {
        "dense": dense_stats,
        "pruned": pruned_stats,
        "ratio": {k: round(pruned_stats[k] / dense_stats[k], 5) for k in keys},
        "acc_drop_points": round(drop, 3),
        **report,
    }


def _device(net: nn.Module) -> torch.device:
    return next(net.parameters()).device


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m stages.prune", description=__doc__.splitlines()[0])
    p.add_argument("--params", type=Path, default=Path("params.yaml"))
    p.add_argument("--model", type=Path, required=True, help="dense model file to prune")
    p.add_argument("--data", type=Path, required=True, help="prepared data folder")
    p.add_argument("--out", type=Path, required=True, help="pruned model file to write")
    p.add_argument("--metrics", type=Path, required=True, help="results JSON to write")
    p.add_argument(
        "--ckpt-dir", type=Path, default=None, help="per-round checkpoints, for resuming"
    )
    p.add_argument("--timings", type=Path, default=None, help="measurements JSON to write")
    p.add_argument("--provenance", type=Path, default=None, help="run record JSON to write")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logs.setup_logging()
    all_params = load_params(args.params)
    inputs = [args.model, args.data]
    sections = [all_params.prune, all_params.train]
    compute = all_params.compute
    with provenance.record(args.provenance, "prune", inputs, sections, compute) as record:
        record.facts["precision"] = resolve_precision(
            all_params.train.precision, all_params.train.accelerator, compute.profile
        )
        record.facts["resumed_after_round"] = run(
            *sections,
            compute,
            args.model,
            args.data,
            args.out,
            args.metrics,
            args.timings,
            args.ckpt_dir,
        )


def run(
    params: PruneParams,
    train_params: TrainParams,
    compute: ComputeParams,
    model_path: Path,
    data: Path,
    out: Path,
    metrics_path: Path,
    timings_path: Path | None,
    ckpt_dir: Path | None = None,
) -> int | None:
    """Prune the dense model file, fine-tune, and write the pruned model and its metrics.

    Returns the round it resumed after (None: it started at round 1)."""
    dense, meta = load_model(model_path)
    test = load_split(data, "test")

    dense_stats = {
        **model_stats(dense),
        **file_sizes(model_path),
        "test_acc": round(accuracy(dense, test.images, test.labels), 5),
    }
    fp = (
        fingerprint(params, train_params, compute, model_path, data)
        if ckpt_dir is not None
        else ""
    )
    pruned, report = prune_and_finetune(
        dense, params, train_params, compute, data, test, ckpt_dir, fp
    )
    timings = {"finetune_time_s": report.pop("finetune_time_s")}
    resumed_after = report.pop("resumed_after_round")
    prune_meta = {"prune_method": params.method, "widths_dense": asdict(widths_of(dense))}
    save_model(pruned, out, meta={**meta, **prune_meta})
    pruned_stats = {
        **model_stats(pruned),
        **file_sizes(out),
        "test_acc": round(accuracy(pruned, test.images, test.labels), 5),
    }
    metrics = summarize(dense_stats, pruned_stats, report)
    write_json(metrics_path, metrics)
    if timings_path is not None:
        write_json(timings_path, timings)
    log.info(
        "%s: %s; params x%.3f, MACs x%.3f, gzip x%.3f; test acc %.4f -> %.4f (%.2f points)",
        params.method,
        widths_of(pruned),
        metrics["ratio"]["params"],
        metrics["ratio"]["macs"],
        metrics["ratio"]["gzip_bytes"],
        dense_stats["test_acc"],
        pruned_stats["test_acc"],
        metrics["acc_drop_points"],
    )
    return resumed_after


if __name__ == "__main__":
    sys.exit(errors.run(main))

"""Pruning LeNet-5, and what it saves: the algorithms and the model statistics.

`structured` removes whole conv channels and fc neurons along torch-pruning's dependency graph
(`make_structured_pruner`, `structured_step`), so the result is a plain `LeNet5(Widths(...))`
with fewer parameters and MACs. `unstructured` zeroes the weights of smallest magnitude across
all layers (`unstructured_step`, torch.nn.utils.prune; `make_permanent` bakes the masks in):
the tensors keep their shapes, so only a compressed file shrinks.
"""

from __future__ import annotations

import gzip
from pathlib import Path
from typing import Any, cast

import torch
import torch.nn.functional as F
import torch_pruning as tp
from torch import nn
from torch.nn.utils import prune as torch_prune

from mnist_pipeline import errors
from mnist_pipeline.data.dataset import Split
from mnist_pipeline.model import LeNet5, count_params, widths_of
from mnist_pipeline.params.fit import StructuredPruneParams

EXAMPLE_INPUT = torch.zeros(1, 1, 28, 28)


# --- measuring ------------------------------------------------------------------------------


def weight_layers(net: nn.Module) -> list[nn.Conv2d | nn.Linear]:
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
    pruner: tp.pruner.BasePruner,
    net: LeNet5,
    params: StructuredPruneParams,
    train: Split | None,
) -> None:
    """One pruning round: channels and neurons are removed from the layers in place. `train`
    (the training split) is needed by Taylor importance only."""
    if params.importance == "taylor":
        if train is None:
            raise ValueError("Taylor importance needs the training split")
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
    masks = [cast(torch.Tensor, m.weight_mask) for m, _ in params if hasattr(m, "weight_mask")]
    already = sum(int((mask == 0).sum()) for mask in masks)
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


def _device(net: nn.Module) -> torch.device:
    return next(net.parameters()).device

"""The one validated loader for `params.yaml`.

Every stage calls `load_params` before doing any work: an unknown key, a wrong type or an
out-of-range value raises `ParamsError` naming the key, so a typo fails fast and no output
is touched. Values that change results have no defaults here: DVC only tracks what is
written in `params.yaml`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from mnist_pipeline.errors import ParamsError


class _Section(BaseModel):
    # strict: YAML gives real ints, floats and bools; a quoted "1e-3" or "yes" is a mistake.
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class PrepareParams(_Section):
    # Where to fetch the four MNIST .gz files from: an http(s):// or file:// URL or a local
    # folder. null means the official mirrors. The MNIST_MIRROR environment variable wins.
    # Not a result-changing value (files are checksum-verified), so dvc.yaml does not track it.
    mirror: str | None = None
    val_size: int = Field(ge=1, le=30_000)
    split_seed: int = Field(ge=0)
    retries: int = Field(default=3, ge=1, le=10)
    timeout_s: float = Field(default=60.0, gt=0)


OptimizerName = Literal["adam", "adamw", "sgd"]
SchedulerName = Literal["none", "step", "onecycle", "cosine"]
Precision = Literal["auto", "32-true", "bf16-mixed", "16-mixed", "bf16-true"]
Accelerator = Literal["auto", "cpu", "gpu", "cuda", "mps"]


class OptimizerParams(_Section):
    name: OptimizerName
    lr: float = Field(gt=0, le=10)
    weight_decay: float = Field(ge=0, le=1)
    momentum: float = Field(ge=0, lt=1)  # SGD only
    nesterov: bool  # SGD only


class SchedulerParams(_Section):
    name: SchedulerName
    # onecycle: fraction of the steps spent warming up to `optimizer.lr`.
    pct_start: float = Field(gt=0, lt=1)
    # step: multiply the learning rate by `gamma` every `step_size` epochs.
    step_size: int = Field(ge=1)
    gamma: float = Field(gt=0, le=1)


class TrainParams(_Section):
    seed: int = Field(ge=0)
    max_epochs: int = Field(ge=1, le=1000)
    batch_size: int = Field(ge=1, le=65_536)
    eval_batch_size: int = Field(ge=1, le=65_536)
    optimizer: OptimizerParams
    scheduler: SchedulerParams
    accelerator: Accelerator
    devices: int | Literal["auto"]
    strategy: Literal["auto", "ddp", "ddp_spawn", "ddp_find_unused_parameters_true"]
    # auto: bf16-mixed on a GPU that supports it, 32-true elsewhere.
    precision: Precision
    channels_last: bool
    # Validate every n epochs; the last epoch is always validated.
    val_every_n_epochs: int = Field(ge=1)
    # CPU threads for intra-op parallelism; 0 keeps torch's default (one per physical core).
    num_threads: int = Field(default=0, ge=0, le=1024)
    progress_bar: bool = True
    # torch.compile the network: pays a compile (about 12 s on 2 CPU cores) before the first
    # step, so it only pays off in long runs. Off by default (see README, Speed).
    compile: bool = False
    # Before training, grow the batch size (powers of 2 from `batch_size`, at most the training
    # split) while it fits in memory, with Lightning's tuner. The lr is not rescaled. Not under
    # DDP; a resumed run keeps the batch size its checkpoint was trained with.
    tune_batch_size: bool = False

    @model_validator(mode="after")
    def _tuning_is_single_process(self) -> TrainParams:
        if self.tune_batch_size and self.strategy != "auto":
            raise ValueError(
                f"tune_batch_size: true needs strategy: auto (got {self.strategy!r}); "
                "Lightning's batch-size tuner does not run under distributed strategies"
            )
        return self


class EvaluateParams(_Section):
    batch_size: int = Field(ge=1, le=65_536)
    # How many misclassified test digits the gallery image shows.
    n_misclassified: int = Field(ge=0, le=400)


PruneMethod = Literal["structured", "unstructured"]
# l1 / l2: norm of each channel's weights across its dependency group; lamp: layer-adaptive
# magnitude; taylor: |weight * gradient| of the loss on training batches.
ImportanceName = Literal["l1", "l2", "lamp", "taylor"]


class StructuredPruneParams(_Section):
    # Fraction of each prunable layer's channels (conv) or neurons (fc) removed, reached over
    # `prune.rounds`; the 10 outputs are never pruned.
    ratio: float = Field(gt=0, lt=1)
    importance: ImportanceName
    # true: rank channels of all layers together, so layers lose different fractions.
    global_pruning: bool
    # taylor only: training batches whose gradients score the channels.
    taylor_batches: int = Field(ge=1, le=10_000)


class UnstructuredPruneParams(_Section):
    # Fraction of all conv and linear weights set to zero, ranked globally by magnitude.
    sparsity: float = Field(gt=0, lt=1)


class FinetuneParams(_Section):
    # Epochs after each pruning round; the rest of the Trainer set-up comes from `train`.
    epochs: int = Field(ge=0, le=1000)
    optimizer: OptimizerParams
    scheduler: SchedulerParams


class DistillParams(_Section):
    # Weight of the dense teacher's softened outputs in the fine-tuning loss; 0 turns it off.
    alpha: float = Field(ge=0, le=1)
    temperature: float = Field(gt=0, le=100)


class PruneParams(_Section):
    method: PruneMethod
    seed: int = Field(ge=0)
    # Prune and fine-tune in this many steps, each removing an equal share of the target.
    rounds: int = Field(ge=1, le=100)
    structured: StructuredPruneParams
    unstructured: UnstructuredPruneParams
    finetune: FinetuneParams
    distill: DistillParams


class ExportParams(_Section):
    # ONNX opset the files are written at: the oldest runtime that can load them.
    opset: int = Field(ge=18, le=23)
    # true: torch.export-based exporter; false: the legacy TorchScript one.
    dynamo: bool
    # The graph's input type; either way it takes raw 0-255 pixels.
    input_dtype: Literal["float32", "uint8"]
    # Largest allowed |ONNX Runtime logit - PyTorch logit| on the test set.
    atol: float = Field(gt=0, le=1.0)
    batch_size: int = Field(ge=1, le=65_536)
    # Timing: batch-1 latency is the median of `latency_runs`; throughput at `throughput_batch`.
    warmup_runs: int = Field(ge=0, le=100_000)
    latency_runs: int = Field(ge=1, le=1_000_000)
    throughput_batch: int = Field(ge=1, le=65_536)
    throughput_runs: int = Field(ge=1, le=100_000)
    # Threads for both runtimes while timing; 0 keeps each runtime's default.
    num_threads: int = Field(ge=0, le=1024)
    # The stage fails if the pruned model's ONNX Runtime latency exceeds the dense one's by
    # more than this fraction (timing noise on a shared machine).
    max_slowdown: float = Field(ge=0, le=10)


class Params(_Section):
    prepare: PrepareParams
    train: TrainParams
    evaluate: EvaluateParams
    prune: PruneParams
    export: ExportParams


def _allowed(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str] | None:
    """The keys allowed where `loc` points, for the message about an unknown key."""
    for key in loc[:-1]:
        field = model.model_fields.get(str(key))
        ann = field.annotation if field else None
        if not (isinstance(ann, type) and issubclass(ann, BaseModel)):
            return None
        model = ann
    return sorted(model.model_fields)


def _format(err: ValidationError) -> str:
    lines = []
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "<root>"
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            allowed = _allowed(Params, e["loc"])
            msg = "unknown key" + (f"; allowed keys here: {', '.join(allowed)}" if allowed else "")
        elif e["type"] == "missing":
            msg = "required key is missing"
        else:
            msg = f"{msg} (got {e.get('input')!r})"
        lines.append(f"  {key}: {msg}")
    return "\n".join(lines)


def parse_params(raw: Any, source: str = "params") -> Params:
    """Validate an already-parsed params mapping."""
    if not isinstance(raw, dict):
        raise ParamsError(f"{source}: expected a mapping of sections, got {type(raw).__name__}")
    try:
        return Params.model_validate(raw)
    except ValidationError as err:
        raise ParamsError(f"{source} is invalid:\n{_format(err)}") from None


def load_params(path: str | Path = "params.yaml") -> Params:
    """Read and validate the whole params file; raises `ParamsError` with the bad keys."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ParamsError(f"{path}: params file not found") from None
    except yaml.YAMLError as err:
        raise ParamsError(f"{path}: not valid YAML: {err}") from None
    return parse_params(raw, str(path))


def choices(literal: Any) -> tuple[str, ...]:
    """The allowed values of a Literal alias, for argparse choices and messages."""
    return get_args(literal)

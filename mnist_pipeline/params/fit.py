"""The params of fitting LeNet-5: the `train` and `prune` sections, with the optimizer and the
learning-rate schedule each fit uses, and the strict base every params section shares.

`mnist_pipeline.params.schema` holds the other sections and the one loader of the whole file; the
same rules hold here: no defaults for values that change results, each key described once.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from mnist_pipeline import plugins


class Section(BaseModel):
    """A section of params.yaml: unknown keys, loose types and changes are errors."""

    # strict: YAML gives real ints, floats and bools; a quoted "1e-3" or "yes" is a mistake.
    # Each key's description is the docstring under it; a short `title=` stands in for its
    # first sentence where that is too long for params.yaml's one comment line.
    model_config = ConfigDict(
        extra="forbid", frozen=True, strict=True, use_attribute_docstrings=True
    )


OptimizerName = Literal["adam", "adamw", "sgd"]
SchedulerName = Literal["none", "step", "onecycle", "cosine"]
Precision = Literal["auto", "32-true", "bf16-mixed", "16-mixed", "bf16-true"]
Accelerator = Literal["auto", "cpu", "gpu", "cuda", "mps"]


class OptimizerParams(Section):
    """An optimizer and its settings (training's, or fine-tuning's after pruning)."""

    name: OptimizerName
    """The torch.optim optimizer."""
    lr: float = Field(gt=0, le=10)
    """Learning rate; with the onecycle schedule, its peak."""
    weight_decay: float = Field(ge=0, le=1)
    """Weight decay (decoupled from the gradient in adamw)."""
    momentum: float = Field(ge=0, lt=1)
    """SGD only: momentum."""
    nesterov: bool
    """SGD only: Nesterov momentum (needs momentum > 0)."""


class SchedulerParams(Section):
    """A learning-rate schedule over the epochs of one fit."""

    name: SchedulerName = Field(title="How the learning rate moves over the fit.")
    """How the learning rate moves: none keeps `optimizer.lr`; step decays it every `step_size`
    epochs; onecycle warms up to it and anneals, and cosine anneals it to zero, both updated
    every batch."""
    pct_start: float = Field(gt=0, lt=1)
    """onecycle only: fraction of the steps spent warming up to `optimizer.lr`."""
    step_size: int = Field(ge=1)
    """step only: epochs between two decays."""
    gamma: float = Field(gt=0, le=1)
    """step only: factor applied to the learning rate at each decay."""


class PluginSpec(Section):
    """A plugin chosen by name, with its arguments (see docs/extending.md)."""

    kind: ClassVar[plugins.Kind]
    name: str
    """The plugin's name: an entry point of its group (`mnist_pipeline.<kind>s`)."""
    args: dict[str, Any] = Field(default_factory=dict)
    """The plugin's arguments, plain values checked by the plugin's own args model."""

    @model_validator(mode="after")
    def _installed_and_args_valid(self) -> PluginSpec:
        # A plain ValueError: pydantic reports it at this spec's key (`train.model`, ...).
        try:
            plugins.check_args(plugins.load(self.kind, self.name), self.args)
        except plugins.PluginError as err:
            raise ValueError(str(err)) from None
        return self


class ModelSpec(PluginSpec):
    """The network to train: a model plugin and its arguments."""

    kind = "model"


class CallbackSpec(PluginSpec):
    """A Lightning callback plugin and its arguments."""

    kind = "callback"


class LoggerSpec(PluginSpec):
    """An experiment logger plugin and its arguments."""

    kind = "logger"


class TrainParams(Section):
    """The `train` section: how LeNet-5 is trained."""

    model: ModelSpec = Field(title="The network: a model plugin by name, with its arguments.")
    """The network to train: a model plugin by name (`lenet5` is the built-in LeNet-5), with its
    arguments; see docs/extending.md."""
    callbacks: list[CallbackSpec] = Field(
        title="Lightning callback plugins by name, with their arguments."
    )
    """Lightning callback plugins, each `{name: ..., args: {...}}`, run in this order after the
    checkpointing the stage always does. Part of the resume fingerprint."""
    loggers: list[LoggerSpec] = Field(
        title="Experiment loggers by name (dvclive, tensorboard, mlflow), with their arguments.",
        min_length=1,
    )
    """Experiment logger plugins, each `{name: ..., args: {...}}`: dvclive (the metrics and
    plots DVC tracks; keep it first), tensorboard, mlflow, or an installed one. Loggers observe
    and change no result, so they are left out of the resume fingerprint."""

    seed: int = Field(
        title="Seed of the weight initialisation and of the per-epoch shuffling.", ge=0
    )
    """Seed of the weight initialisation and of the shuffling, which is seeded per epoch so that
    a resumed run ends with the same weights."""
    max_epochs: int = Field(ge=1, le=1000)
    """Epochs to train."""
    batch_size: int = Field(ge=1, le=65_536)
    """Training batch size, per process under DDP."""
    eval_batch_size: int = Field(ge=1, le=65_536)
    """Batch size of the validation passes, per process."""
    optimizer: OptimizerParams
    """The optimizer of the training run."""
    scheduler: SchedulerParams
    """The learning-rate schedule of the training run."""
    accelerator: Accelerator = Field(
        title="Lightning's accelerator; auto: a GPU when there is one."
    )
    """Lightning's accelerator; auto trains on a GPU when there is one."""
    devices: int | Literal["auto"]
    """Devices to train on (processes under DDP); auto lets Lightning choose."""
    num_nodes: int = Field(
        title="Machines training together (more than 1 needs `strategy: ddp`).",
        default=1,
        ge=1,
        le=1024,
    )
    """Machines training together, each with `devices` processes (see docs/multi-node.md); more
    than 1 needs `strategy: ddp` and a launcher (torchrun, SLURM) on every machine. The batch
    size stays per process."""
    strategy: Literal["auto", "ddp", "ddp_spawn", "ddp_find_unused_parameters_true"] = Field(
        title="Lightning's strategy."
    )
    """Lightning's strategy; ddp with `devices: N` trains on N processes (gloo on CPU, NCCL on
    GPUs)."""
    precision: Precision
    """Lightning's precision. auto: 32-true under the portable compute profile; under the fast
    one, bf16-mixed where the hardware computes bf16 natively (a GPU that supports it, or a CPU
    with AVX512-BF16 or AMX) and 32-true elsewhere. The resolved precision is recorded with the
    model."""
    channels_last: bool = Field(
        title="Channels-last memory format: faster convolutions and pooling on CPU."
    )
    """Channels-last memory format for the network and the images: faster convolutions and
    pooling on CPU (see docs/speed.md)."""
    val_every_n_epochs: int = Field(ge=1)
    """Validate every n epochs; the last epoch is always validated."""
    progress_bar: bool = Field(default=True)
    """Show Lightning's progress bar (on a terminal only); changes nothing in the results."""
    compile: bool = Field(
        title="torch.compile the network: it pays off only in long runs.", default=False
    )
    """torch.compile the network: a one-time compile cost before the first step, so it pays off
    only in long runs (see docs/speed.md)."""
    tune_batch_size: bool = Field(
        title="Grow the batch size with Lightning's tuner before training, while it fits.",
        default=False,
    )
    """Before training, grow the batch size (powers of 2 from `batch_size`, at most the training
    split) while it fits in memory, with Lightning's tuner. The lr is not rescaled. Needs
    `strategy: auto`; a resumed run keeps the batch size its checkpoint was trained with."""

    @model_validator(mode="after")
    def _tuning_is_single_process(self) -> TrainParams:
        if self.tune_batch_size and self.strategy != "auto":
            raise ValueError(
                f"tune_batch_size: true needs strategy: auto (got {self.strategy!r}); "
                "Lightning's batch-size tuner does not run under distributed strategies"
            )
        return self

    @model_validator(mode="after")
    def _nodes_need_ddp(self) -> TrainParams:
        if self.num_nodes > 1 and self.strategy not in ("ddp", "ddp_find_unused_parameters_true"):
            raise ValueError(
                f"num_nodes: {self.num_nodes} needs strategy: ddp (got {self.strategy!r}); "
                "the processes on each machine are started by torchrun or SLURM, which only "
                "ddp joins"
            )
        return self


PruneMethod = Literal["structured", "unstructured"]
ImportanceName = Literal["l1", "l2", "lamp", "taylor"]


class StructuredPruneParams(Section):
    """Settings of `method: structured` (torch-pruning)."""

    ratio: float = Field(
        title="Fraction of each layer's channels or neurons removed over all rounds.", gt=0, lt=1
    )
    """Fraction of each prunable layer's channels (conv) or neurons (fc) removed, reached over
    `prune.rounds`; the 10 outputs are never pruned."""
    importance: ImportanceName
    """How channels are ranked. l1 / l2: norm of each channel's weights across its dependency
    group; lamp: layer-adaptive magnitude; taylor: |weight * gradient| of the loss on training
    batches."""
    global_pruning: bool = Field(
        title="Rank the channels of all layers together (false: each layer loses `ratio`)."
    )
    """true: rank the channels of all layers together, so layers lose different fractions;
    false: every layer loses `ratio`."""
    taylor_batches: int = Field(ge=1, le=10_000)
    """taylor only: training batches whose gradients score the channels."""


class UnstructuredPruneParams(Section):
    """Settings of `method: unstructured` (torch.nn.utils.prune)."""

    sparsity: float = Field(
        title="Fraction of all conv and linear weights set to zero, by global magnitude.",
        gt=0,
        lt=1,
    )
    """Fraction of all conv and linear weights set to zero, ranked globally by magnitude."""


class FinetuneParams(Section):
    """Fine-tuning after each pruning round; the rest of the Trainer set-up is `train`'s."""

    epochs: int = Field(title="Epochs of fine-tuning after each round (0: none).", ge=0, le=1000)
    """Epochs of fine-tuning after each round (0: none); batch size, accelerator and precision
    come from `train`."""
    optimizer: OptimizerParams
    """The optimizer of each fine-tuning."""
    scheduler: SchedulerParams
    """The learning-rate schedule of each fine-tuning."""


class DistillParams(Section):
    """Distillation from the dense model while fine-tuning the pruned one."""

    alpha: float = Field(
        title="Weight of the teacher's softened outputs in the loss; 0: no distillation.",
        ge=0,
        le=1,
    )
    """Weight of the dense teacher's softened outputs in the fine-tuning loss; 0 turns
    distillation off."""
    temperature: float = Field(gt=0, le=100)
    """Softmax temperature of the teacher's and the student's outputs."""


class PruneParams(Section):
    """The `prune` section: how the trained model is made smaller."""

    method: PruneMethod = Field(
        title="structured removes channels; unstructured zeroes single weights."
    )
    """structured removes whole conv channels and fc neurons (a smaller, faster model);
    unstructured zeroes single weights (the same shapes, smaller only once compressed)."""
    seed: int = Field(ge=0)
    """Seed of the fine-tuning (round r uses seed + r)."""
    rounds: int = Field(title="Prune and fine-tune in this many equal steps.", ge=1, le=100)
    """Prune and fine-tune in this many steps, each removing an equal share of the target."""
    structured: StructuredPruneParams
    """Settings of `method: structured`."""
    unstructured: UnstructuredPruneParams
    """Settings of `method: unstructured`."""
    finetune: FinetuneParams
    """Fine-tuning after each pruning round."""
    distill: DistillParams
    """Distillation from the dense model while fine-tuning."""

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


# The descriptions below are the only ones: `python -m mnist_pipeline.params_docs --write`
# turns them, with the allowed values the types give, into params.yaml's comments and the
# README's params table, and a test fails when those drift.


class PrepareParams(_Section):
    """The `prepare` section: where the MNIST files come from, and the validation split."""

    mirror: str | None = Field(
        default=None,
        description=(
            "Where to fetch the four MNIST .gz files from: an http(s):// or file:// URL or a "
            "local folder; null means the official mirrors. The MNIST_MIRROR environment "
            "variable wins over it. Not tracked by DVC: the files are checksum-verified, so "
            "where they come from changes no result."
        ),
    )
    val_size: int = Field(
        ge=1,
        le=30_000,
        description="Images carved from the training set as the seeded validation split.",
    )
    split_seed: int = Field(ge=0, description="Seed of the validation split.")
    retries: int = Field(
        default=3,
        ge=1,
        le=10,
        description=(
            "Attempts per file at each network mirror, with exponential backoff and jitter "
            "between them (a local folder is read once). Not tracked by DVC."
        ),
    )
    timeout_s: float = Field(
        default=60.0,
        gt=0,
        description="Seconds a download may wait for the server. Not tracked by DVC.",
    )


OptimizerName = Literal["adam", "adamw", "sgd"]
SchedulerName = Literal["none", "step", "onecycle", "cosine"]
Precision = Literal["auto", "32-true", "bf16-mixed", "16-mixed", "bf16-true"]
Accelerator = Literal["auto", "cpu", "gpu", "cuda", "mps"]


class OptimizerParams(_Section):
    """An optimizer and its settings (training's, or fine-tuning's after pruning)."""

    name: OptimizerName = Field(description="The torch.optim optimizer.")
    lr: float = Field(
        gt=0, le=10, description="Learning rate; with the onecycle schedule, its peak."
    )
    weight_decay: float = Field(
        ge=0, le=1, description="Weight decay (decoupled from the gradient in adamw)."
    )
    momentum: float = Field(ge=0, lt=1, description="SGD only: momentum.")
    nesterov: bool = Field(description="SGD only: Nesterov momentum (needs momentum > 0).")


class SchedulerParams(_Section):
    """A learning-rate schedule over the epochs of one fit."""

    name: SchedulerName = Field(
        description=(
            "How the learning rate moves: none keeps `optimizer.lr`; step decays it every "
            "`step_size` epochs; onecycle warms up to it and anneals, and cosine anneals it to "
            "zero, both updated every batch."
        )
    )
    pct_start: float = Field(
        gt=0,
        lt=1,
        description="onecycle only: fraction of the steps spent warming up to `optimizer.lr`.",
    )
    step_size: int = Field(ge=1, description="step only: epochs between two decays.")
    gamma: float = Field(
        gt=0, le=1, description="step only: factor applied to the learning rate at each decay."
    )


class TrainParams(_Section):
    """The `train` section: how LeNet-5 is trained."""

    seed: int = Field(
        ge=0,
        description=(
            "Seed of the weight initialisation and of the shuffling, which is seeded per epoch "
            "so that a resumed run ends with the same weights."
        ),
    )
    max_epochs: int = Field(ge=1, le=1000, description="Epochs to train.")
    batch_size: int = Field(
        ge=1,
        le=65_536,
        description="Training batch size, per process under DDP.",
    )
    eval_batch_size: int = Field(
        ge=1, le=65_536, description="Batch size of the validation passes, per process."
    )
    optimizer: OptimizerParams = Field(description="The optimizer of the training run.")
    scheduler: SchedulerParams = Field(
        description="The learning-rate schedule of the training run."
    )
    accelerator: Accelerator = Field(
        description="Lightning's accelerator; auto trains on a GPU when there is one."
    )
    devices: int | Literal["auto"] = Field(
        description="Devices to train on (processes under DDP); auto lets Lightning choose."
    )
    num_nodes: int = Field(
        default=1,
        ge=1,
        le=1024,
        description=(
            "Machines training together, each with `devices` processes (see README, "
            "Multi-node training); more than 1 needs `strategy: ddp` and a launcher "
            "(torchrun, SLURM) on every machine. The batch size stays per process."
        ),
    )
    strategy: Literal["auto", "ddp", "ddp_spawn", "ddp_find_unused_parameters_true"] = Field(
        description=(
            "Lightning's strategy; ddp with `devices: N` trains on N processes (gloo on CPU, "
            "NCCL on GPUs)."
        )
    )
    precision: Precision = Field(
        description=(
            "Lightning's precision. auto: 32-true under the portable compute profile; under "
            "the fast one, bf16-mixed where the hardware computes bf16 natively (a GPU that "
            "supports it, or a CPU with AVX512-BF16 or AMX) and 32-true elsewhere. The "
            "resolved precision is recorded with the model."
        )
    )
    channels_last: bool = Field(
        description=(
            "Channels-last memory format for the network and the images: faster convolutions "
            "and pooling on CPU (see README, Speed)."
        )
    )
    val_every_n_epochs: int = Field(
        ge=1, description="Validate every n epochs; the last epoch is always validated."
    )
    progress_bar: bool = Field(
        default=True,
        description=(
            "Show Lightning's progress bar (on a terminal only); changes nothing in the results."
        ),
    )
    compile: bool = Field(
        default=False,
        description=(
            "torch.compile the network: a one-time compile cost before the first step, so it "
            "pays off only in long runs (see README, Speed)."
        ),
    )
    tune_batch_size: bool = Field(
        default=False,
        description=(
            "Before training, grow the batch size (powers of 2 from `batch_size`, at most the "
            "training split) while it fits in memory, with Lightning's tuner. The lr is not "
            "rescaled. Needs `strategy: auto`; a resumed run keeps the batch size its "
            "checkpoint was trained with."
        ),
    )

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


class EvaluateParams(_Section):
    """The `evaluate` section: test-set inference."""

    batch_size: int = Field(ge=1, le=65_536, description="Inference batch size.")
    n_misclassified: int = Field(
        ge=0, le=400, description="Misclassified test digits shown in `misclassified.png`."
    )


PruneMethod = Literal["structured", "unstructured"]
ImportanceName = Literal["l1", "l2", "lamp", "taylor"]


class StructuredPruneParams(_Section):
    """Settings of `method: structured` (torch-pruning)."""

    ratio: float = Field(
        gt=0,
        lt=1,
        description=(
            "Fraction of each prunable layer's channels (conv) or neurons (fc) removed, "
            "reached over `prune.rounds`; the 10 outputs are never pruned."
        ),
    )
    importance: ImportanceName = Field(
        description=(
            "How channels are ranked. l1 / l2: norm of each channel's weights across its "
            "dependency group; lamp: layer-adaptive magnitude; taylor: |weight * gradient| of "
            "the loss on training batches."
        )
    )
    global_pruning: bool = Field(
        description=(
            "true: rank the channels of all layers together, so layers lose different "
            "fractions; false: every layer loses `ratio`."
        )
    )
    taylor_batches: int = Field(
        ge=1,
        le=10_000,
        description="taylor only: training batches whose gradients score the channels.",
    )


class UnstructuredPruneParams(_Section):
    """Settings of `method: unstructured` (torch.nn.utils.prune)."""

    sparsity: float = Field(
        gt=0,
        lt=1,
        description=(
            "Fraction of all conv and linear weights set to zero, ranked globally by magnitude."
        ),
    )


class FinetuneParams(_Section):
    """Fine-tuning after each pruning round; the rest of the Trainer set-up is `train`'s."""

    epochs: int = Field(
        ge=0,
        le=1000,
        description=(
            "Epochs of fine-tuning after each round (0: none); batch size, accelerator and "
            "precision come from `train`."
        ),
    )
    optimizer: OptimizerParams = Field(description="The optimizer of each fine-tuning.")
    scheduler: SchedulerParams = Field(
        description="The learning-rate schedule of each fine-tuning."
    )


class DistillParams(_Section):
    """Distillation from the dense model while fine-tuning the pruned one."""

    alpha: float = Field(
        ge=0,
        le=1,
        description=(
            "Weight of the dense teacher's softened outputs in the fine-tuning loss; 0 turns "
            "distillation off."
        ),
    )
    temperature: float = Field(
        gt=0,
        le=100,
        description="Softmax temperature of the teacher's and the student's outputs.",
    )


class PruneParams(_Section):
    """The `prune` section: how the trained model is made smaller."""

    method: PruneMethod = Field(
        description=(
            "structured removes whole conv channels and fc neurons (a smaller, faster model); "
            "unstructured zeroes single weights (the same shapes, smaller only once compressed)."
        )
    )
    seed: int = Field(ge=0, description="Seed of the fine-tuning (round r uses seed + r).")
    rounds: int = Field(
        ge=1,
        le=100,
        description=(
            "Prune and fine-tune in this many steps, each removing an equal share of the target."
        ),
    )
    structured: StructuredPruneParams = Field(description="Settings of `method: structured`.")
    unstructured: UnstructuredPruneParams = Field(
        description="Settings of `method: unstructured`."
    )
    finetune: FinetuneParams = Field(description="Fine-tuning after each pruning round.")
    distill: DistillParams = Field(
        description="Distillation from the dense model while fine-tuning."
    )


class _TimingParams(_Section):
    """The timing fields of the sections that measure inference speed."""

    warmup_runs: int = Field(ge=0, le=100_000, description="Untimed runs before each timing.")
    latency_runs: int = Field(
        ge=1, le=1_000_000, description="Batch-1 runs; their median is the latency."
    )
    throughput_batch: int = Field(
        ge=1, le=65_536, description="Batch size of the throughput timing."
    )
    throughput_runs: int = Field(ge=1, le=100_000, description="Runs of the throughput timing.")


class ExportParams(_TimingParams):
    """The `export` section: the ONNX files, their parity check and their timing."""

    opset: int = Field(
        ge=18,
        le=23,
        description=(
            "ONNX opset the files are written at; it sets the oldest ONNX Runtime that loads them."
        ),
    )
    dynamo: bool = Field(
        description="true: the torch.export-based exporter; false: the legacy TorchScript one."
    )
    input_dtype: Literal["float32", "uint8"] = Field(
        description="The graph's input type; either way it takes raw 0-255 pixels."
    )
    atol: float = Field(
        gt=0,
        le=1.0,
        description=(
            "Largest allowed |ONNX Runtime logit - PyTorch logit| on the test set; beyond it, "
            "or on any other prediction, the stage fails."
        ),
    )
    batch_size: int = Field(ge=1, le=65_536, description="Batch size of the parity check.")
    num_threads: int = Field(
        ge=0,
        le=1024,
        description=(
            "Threads for both runtimes while timing; 0 keeps each runtime's default. One "
            "thread keeps timings stable on a shared machine and comparable across runtimes."
        ),
    )
    max_slowdown: float = Field(
        ge=0,
        le=10,
        description=(
            "The stage fails if the pruned model's ONNX Runtime latency exceeds the dense "
            "one's by more than this fraction (timing noise on a shared machine)."
        ),
    )


class QuantizeParams(_TimingParams):
    """The `quantize` section: INT8 models by ONNX Runtime static quantization, their contract
    and their timing."""

    method: Literal["minmax", "entropy", "percentile"] = Field(
        description=(
            "How calibration sets each activation's int8 range: the observed min and max, the "
            "range that keeps the histogram's entropy, or a percentile of the values."
        )
    )
    percentile: float = Field(
        gt=90,
        le=100,
        description="percentile only: the percentile of the activation values kept in range.",
    )
    calibration_size: int = Field(
        ge=1,
        le=60_000,
        description="Validation digits, drawn with `calibration_seed`, that calibrate the ranges.",
    )
    calibration_seed: int = Field(ge=0, description="Seed of the calibration sample.")
    max_acc_drop: float = Field(
        ge=0,
        le=100,
        description=(
            "Test accuracy an INT8 model may lose against its float model, in points; beyond "
            "it the stage fails and writes no model."
        ),
    )
    min_agreement: float = Field(
        gt=0,
        le=1,
        description=(
            "Fraction of the test digits on which an INT8 model must predict what its float "
            "model predicts; below it the stage fails and writes no model."
        ),
    )
    batch_size: int = Field(ge=1, le=65_536, description="Batch size of the test-set checks.")
    num_threads: int = Field(
        ge=0,
        le=1024,
        description="ONNX Runtime threads while timing; 0 keeps its default.",
    )


class ComputeParams(_Section):
    """The `compute` section: how every stage computes (see `mnist_pipeline.compute`)."""

    profile: Literal["portable", "fast"] = Field(
        description=(
            "portable: pinned kernels (`isa`), MKL's cross-vendor branch, `threads` threads and "
            "32-bit training, so every hashed output has the same bytes on any x86-64 CPU with "
            "AVX2. fast: native kernels, bf16 where the CPU computes it, every core; results "
            "reproduce on the same CPU model only (see README, Reproducible runs)."
        )
    )
    isa: Literal["avx2", "avx512"] = Field(
        description=(
            "portable only: the highest instruction set PyTorch and oneDNN may use. avx2 runs "
            "on every x86-64 CPU of the last decade; avx512 is faster where there is AVX-512, "
            "and its results then hold on AVX-512 CPUs only."
        )
    )
    threads: int = Field(
        ge=1,
        le=1024,
        description=(
            "portable only: the threads every stage computes with, whatever the machine's "
            "cores (the thread count splits every reduction, so it changes the last bits). "
            "The fast profile uses one thread per core."
        ),
    )


class CardParams(_Section):
    """Stage `card`: a model card for every artifact."""

    weakest_classes: int = Field(
        ge=1, le=10, description="Classes of lowest test F1 that each card lists."
    )


class Params(_Section):
    """The whole `params.yaml`: how every stage computes, then one section per stage."""

    compute: ComputeParams = Field(
        description="Every stage: kernels, threads and precision (portable or fast)."
    )

    prepare: PrepareParams = Field(
        description="Stage `prepare`: fetch and verify MNIST, split and normalize it."
    )
    train: TrainParams = Field(description="Stage `train`: fit LeNet-5 with Lightning.")
    evaluate: EvaluateParams = Field(
        description="Stage `evaluate`: metrics, plots and images on the test set."
    )
    prune: PruneParams = Field(
        description="Stage `prune`: remove channels (or zero weights), then fine-tune."
    )
    export: ExportParams = Field(
        description="Stage `export`: ONNX files, checked against PyTorch, and timed."
    )
    quantize: QuantizeParams = Field(
        description="Stage `quantize`: INT8 ONNX models, checked against the float ones."
    )
    card: CardParams = Field(
        description="Stage `card`: a model card for every artifact, from the results only."
    )

    @model_validator(mode="after")
    def _portable_is_32_bit(self) -> Params:
        if self.compute.profile == "portable" and self.train.precision not in ("auto", "32-true"):
            raise ValueError(
                f"train.precision: {self.train.precision} needs compute.profile: fast; 16-bit "
                "arithmetic on a CPU depends on its bf16 and fp16 support, so the portable "
                "profile trains in 32-true (or auto)"
            )
        return self


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

"""The one validated loader for `params.yaml`, and the schema of its sections.

Every stage calls `load_params` before doing any work: an unknown key, a wrong type or an
out-of-range value raises `ParamsError` naming the key, so a typo fails fast and no output
is touched. Values that change results have no defaults here: DVC only tracks what is
written in `params.yaml`. The sections that fit a model (`train`, `prune`) are in
`mnist_pipeline.params.fit`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, get_args

import yaml
from pydantic import BaseModel, Field, ValidationError, model_validator

from mnist_pipeline.errors import ParamsError
from mnist_pipeline.params.fit import PruneParams, Section, TrainParams
from mnist_pipeline.yamlload import safe_load

# The descriptions below (the docstring under each key, here and in `fit`) are the only
# ones: `python -m mnist_pipeline.params.docs --write` turns them, with the allowed values the
# types give, into params.yaml's comments and docs/pipeline.md's params table, and a test fails
# when those drift.


class PrepareParams(Section):
    """The `prepare` section: where the MNIST files come from, and the validation split."""

    mirror: str | None = Field(
        title="Where the MNIST files come from (null: the official mirrors).", default=None
    )
    """Where to fetch the four MNIST .gz files from: an http(s):// or file:// URL or a local
    folder; null means the official mirrors. The MNIST_MIRROR environment variable wins over it.
    Not tracked by DVC: the files are checksum-verified, so where they come from changes no
    result."""
    val_size: int = Field(ge=1, le=30_000)
    """Images carved from the training set as the seeded validation split."""
    split_seed: int = Field(ge=0)
    """Seed of the validation split."""
    retries: int = Field(
        title="Attempts per file at each network mirror, with backoff. Not tracked by DVC.",
        default=3,
        ge=1,
        le=10,
    )
    """Attempts per file at each network mirror, with exponential backoff and jitter between
    them (a local folder is read once). Not tracked by DVC."""
    timeout_s: float = Field(default=60.0, gt=0)
    """Seconds a download may wait for the server. Not tracked by DVC."""


class EvaluateParams(Section):
    """The `evaluate` section: test-set inference."""

    batch_size: int = Field(ge=1, le=65_536)
    """Inference batch size."""
    n_misclassified: int = Field(ge=0, le=400)
    """Misclassified test digits shown in `misclassified.png`."""


class _TimingParams(Section):
    """The timing fields of the sections that measure inference speed."""

    warmup_runs: int = Field(ge=0, le=100_000)
    """Untimed runs before each timing."""
    latency_runs: int = Field(ge=1, le=1_000_000)
    """Batch-1 runs; their median is the latency."""
    throughput_batch: int = Field(ge=1, le=65_536)
    """Batch size of the throughput timing."""
    throughput_runs: int = Field(ge=1, le=100_000)
    """Runs of the throughput timing."""


class ExportParams(_TimingParams):
    """The `export` section: the ONNX files, their parity check and their timing."""

    opset: int = Field(
        title="ONNX opset of the files; it sets the oldest ONNX Runtime that loads them.",
        ge=18,
        le=23,
    )
    """ONNX opset the files are written at; it sets the oldest ONNX Runtime that loads them."""
    dynamo: bool
    """true: the torch.export-based exporter; false: the legacy TorchScript one."""
    input_dtype: Literal["float32", "uint8"]
    """The graph's input type; either way it takes raw 0-255 pixels."""
    atol: float = Field(
        title="Largest allowed |ONNX Runtime - PyTorch| logit difference on the test set.",
        gt=0,
        le=1.0,
    )
    """Largest allowed |ONNX Runtime logit - PyTorch logit| on the test set; beyond it, or on
    any other prediction, the stage fails."""
    batch_size: int = Field(ge=1, le=65_536)
    """Batch size of the parity check."""
    num_threads: int = Field(ge=0, le=1024)
    """Threads for both runtimes while timing; 0 keeps each runtime's default. One thread keeps
    timings stable on a shared machine and comparable across runtimes."""
    max_slowdown: float = Field(
        title="How much slower the pruned ONNX model may be than the dense one (a fraction).",
        ge=0,
        le=10,
    )
    """The stage fails if the pruned model's ONNX Runtime latency exceeds the dense one's by
    more than this fraction (timing noise on a shared machine)."""


class QuantizeParams(_TimingParams):
    """The `quantize` section: INT8 models by ONNX Runtime static quantization, their contract
    and their timing."""

    method: Literal["minmax", "entropy", "percentile"] = Field(
        title="How calibration sets each activation's int8 range."
    )
    """How calibration sets each activation's int8 range: the observed min and max, the range
    that keeps the histogram's entropy, or a percentile of the values."""
    percentile: float = Field(gt=90, le=100)
    """percentile only: the percentile of the activation values kept in range."""
    calibration_size: int = Field(
        title="Validation digits that calibrate the ranges.", ge=1, le=60_000
    )
    """Validation digits, drawn with `calibration_seed`, that calibrate the ranges."""
    calibration_seed: int = Field(ge=0)
    """Seed of the calibration sample."""
    max_acc_drop: float = Field(
        title="Test accuracy points an INT8 model may lose against its float model.", ge=0, le=100
    )
    """Test accuracy an INT8 model may lose against its float model, in points; beyond it the
    stage fails and writes no model."""
    min_agreement: float = Field(
        title="Fraction of the test digits on which INT8 and float models must agree.", gt=0, le=1
    )
    """Fraction of the test digits on which an INT8 model must predict what its float model
    predicts; below it the stage fails and writes no model."""
    batch_size: int = Field(ge=1, le=65_536)
    """Batch size of the test-set checks."""
    num_threads: int = Field(ge=0, le=1024)
    """ONNX Runtime threads while timing; 0 keeps its default."""


class ComputeParams(Section):
    """The `compute` section: how every stage computes (see `mnist_pipeline.compute`)."""

    profile: Literal["portable", "fast"] = Field(
        title="portable: same bytes on any AVX2 CPU; fast: native kernels, every core."
    )
    """portable: pinned kernels (`isa`), MKL's cross-vendor branch, `threads` threads and 32-bit
    training, so every hashed output has the same bytes on any x86-64 CPU with AVX2. fast:
    native kernels, bf16 where the CPU computes it, every core; results reproduce on the same
    CPU model only (see docs/reproducibility.md)."""
    isa: Literal["avx2", "avx512"]
    """portable only: the highest instruction set PyTorch and oneDNN may use. avx2 runs on every
    x86-64 CPU of the last decade; avx512 is faster where there is AVX-512, and its results then
    hold on AVX-512 CPUs only."""
    threads: int = Field(
        title="portable only: the threads every stage computes with.", ge=1, le=1024
    )
    """portable only: the threads every stage computes with, whatever the machine's cores (the
    thread count splits every reduction, so it changes the last bits). The fast profile uses one
    thread per core."""


class CardParams(Section):
    """Stage `card`: a model card for every artifact."""

    weakest_classes: int = Field(ge=1, le=10)
    """Classes of lowest test F1 that each card lists."""


class ProfileParams(Section):
    """Stage `profile`: the reference profile the served models' drift is measured against."""

    quantiles: int = Field(ge=10, le=10_000)
    """Quantiles that summarize each numeric signal of the reference (its KS tests' K)."""
    calibration_window: int = Field(ge=20, le=100_000)
    """Digits per clean window the thresholds are calibrated on (they scale to any size)."""
    calibration_windows: int = Field(ge=10, le=100_000)
    """Clean windows, drawn with replacement from held-out digits, per calibration."""
    false_alarm_quantile: float = Field(gt=0.5, lt=1.0)
    """The quantile of the clean windows' statistics a threshold starts from."""
    margin: float = Field(ge=1.0, le=10.0)
    """The factor on that quantile: the test stream's writers are not the training split's."""
    seed: int = Field(ge=0)
    """Seed of the calibration windows and of the validation split's halves."""
    batch_size: int = Field(ge=1, le=65_536)
    """Digits per ONNX Runtime run on the validation split."""


class Params(Section):
    """The whole `params.yaml`: how every stage computes, then one section per stage."""

    compute: ComputeParams
    """Every stage: kernels, threads and precision (portable or fast)."""

    prepare: PrepareParams
    """Stage `prepare`: fetch and verify MNIST, split and normalize it."""
    train: TrainParams
    """Stage `train`: fit LeNet-5 with Lightning."""
    evaluate: EvaluateParams
    """Stage `evaluate`: metrics, plots and images on the test set."""
    prune: PruneParams
    """Stage `prune`: remove channels (or zero weights), then fine-tune."""
    export: ExportParams
    """Stage `export`: ONNX files, checked against PyTorch, and timed."""
    quantize: QuantizeParams
    """Stage `quantize`: INT8 ONNX models, checked against the float ones."""
    profile: ProfileParams
    """Stage `profile`: the reference profile for drift monitoring."""
    card: CardParams
    """Stage `card`: a model card for every artifact, from the results only."""

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
        raw = safe_load(path.read_text())
    except FileNotFoundError:
        raise ParamsError(f"{path}: params file not found") from None
    except yaml.YAMLError as err:
        raise ParamsError(f"{path}: not valid YAML: {err}") from None
    return parse_params(raw, str(path))


def choices(literal: Any) -> tuple[str, ...]:
    """The allowed values of a Literal alias, for argparse choices and messages."""
    return get_args(literal)

"""The model `mnist-serve` serves, how it is loaded and checked, and how it is swapped.

A model is served only once it has passed the input contract and a warm-up: its input takes
(N, 1, 28, 28) raw pixels as float or uint8, and classifying digits gives one finite row of
10 logits per digit. `ModelSlot` holds the model in service. `reload` re-resolves `--model`
(a file is read again; a registry reference is resolved again through GTO and DVC), loads and
checks the new model off the event loop, and swaps it in with one assignment: a request takes
the model once, when it starts, so requests in flight finish on the old one. A model that
fails to load or to pass is refused, and the old one goes on serving.
"""

from __future__ import annotations

import asyncio
import fcntl
import hashlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
import yaml
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from mnist_pipeline.errors import UsageError
from mnist_pipeline.onnx import runtime
from mnist_pipeline.serving import model_ref, predict
from mnist_pipeline.serving.micro_batcher import MicroBatcher
from mnist_pipeline.serving.model_ref import ModelSource

log = logging.getLogger(__name__)
DEFAULT_WARMUP_RUNS = 10


class ModelInput(BaseModel):
    name: str
    type: str
    shape: list[int | str | None]


class ProfileRef(BaseModel):
    """The reference profile a served model's drift is measured against (`serving.drift`)."""

    file: str = Field(description="The profile file's name")
    sha256: str = Field(description="Its SHA-256")
    model: str | None = Field(description="Its entry for this model (by sha256); None: none")


class ModelInfo(BaseModel):
    """What `GET /model` answers: which model, which version, its bytes and its contract."""

    name: str = Field(description="The artifact's name, or the file's name for a plain file")
    version: str | None = Field(description="The registered version (GTO), if any")
    stage: str | None = Field(description="The registry stage it was resolved from, if any")
    commit: str | None = Field(description="The commit the registered version points at")
    sha256: str = Field(description="SHA-256 of the model file served")
    input: ModelInput
    input_contract: str | None = Field(description="The model's own statement of its input")
    metadata: dict[str, str] = Field(description="The ONNX file's metadata")
    card: bool = Field(description="Whether `GET /model/card` has a model card to show")
    drift_profile: ProfileRef | None = Field(
        default=None, description="The drift reference profile; None: drift is not monitored"
    )


@dataclass(frozen=True)
class ModelSpec:
    """What `--model`, `--repo` and `--cache-dir` name: resolved again on every reload."""

    model: str
    repo: str = "."
    cache_dir: Path | None = None

    def resolve(self) -> ModelSource:
        return model_ref.resolve(self.model, self.repo, self.cache_dir)


@dataclass(frozen=True)
class ServedModel:
    source: ModelSource
    sess: ort.InferenceSession
    info: ModelInfo
    card: str | None  # the model card's Markdown, when one was found
    batcher: MicroBatcher


def session_from_bytes(data: bytes, num_threads: int) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = num_threads
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"])


def check_contract(sess: ort.InferenceSession, warmup_runs: int) -> None:
    """UsageError unless the model takes raw (N, 1, 28, 28) digits and gives (N, 10) finite
    logits; the warm-up runs are its last `warmup_runs` batch-1 runs."""
    inputs, outputs = sess.get_inputs(), sess.get_outputs()
    if [i.name for i in inputs] != [runtime.INPUT_NAME]:
        raise UsageError(f"the model's inputs are {[i.name for i in inputs]}; expected pixels")
    if runtime.OUTPUT_NAME not in [o.name for o in outputs]:
        raise UsageError(f"the model has no output {runtime.OUTPUT_NAME!r}")
    shape = inputs[0].shape
    if len(shape) != 4 or list(shape[1:]) != [1, predict.FIELD, predict.FIELD]:
        raise UsageError(f"the model's input has shape {shape}; expected [N, 1, 28, 28]")
    try:
        runtime.input_dtype(sess)
        rng = np.random.default_rng(0)
        digits = [rng.integers(0, 256, (predict.FIELD, predict.FIELD), np.uint8) for _ in range(2)]
        preds = predict.classify(sess, digits, ["a", "b"])  # a batch of 2: N is free
        for _ in range(warmup_runs):
            predict.classify(sess, digits[:1], ["a"])
    except Exception as err:  # onnxruntime's own errors, a wrong dtype
        raise UsageError(f"the model fails its warm-up: {err}") from None
    if len(preds) != 2 or any(len(p.probabilities) != 10 for p in preds):
        raise UsageError("the model does not give 10 classes per digit")
    if not all(np.isfinite(p.probabilities).all() for p in preds):
        raise UsageError("the model gives non-finite outputs")


def read_resolved(spec: ModelSpec) -> tuple[ModelSource, bytes]:
    """The model `spec` names now, and its bytes. Resolving and reading a registry reference
    hold a lock on the fetch folder, so `--workers` reloading at once fetch one at a time and
    none reads a file another is rewriting."""
    if not model_ref.is_reference(spec.model):
        source = spec.resolve()
        return source, _read(source.path)
    folder = spec.cache_dir or model_ref.default_cache_dir()
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / ".resolve.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        source = spec.resolve()
        return source, _read(source.path)


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as err:
        raise UsageError(f"model {path}: {err.strerror}") from None


def find_card(source: ModelSource, repo: str = ".") -> str | None:
    """The model card of the artifact served: the file its `meta.card` in `dvc.yaml` names,
    from the registered commit for a registry reference, from `repo`'s working tree for a
    file that is an artifact's path there; None for any other file or a card not found."""
    if source.card is not None:  # a model bundle's
        return source.card.read_text()
    try:
        if source.commit is not None:
            commit = source.commit

            def text(path: str) -> str:
                return model_ref.read_registered(repo, commit, path)
        else:

            def text(path: str) -> str:
                return (Path(repo) / path).read_text()

        artifacts = yaml.safe_load(text("dvc.yaml")).get("artifacts") or {}
        name = source.artifact
        if name is None:  # a file: the artifact at that path, if any
            here = source.path.resolve()
            found = [n for n, a in artifacts.items() if (Path(repo) / a["path"]).resolve() == here]
            name = found[0] if found else None
        card = (artifacts.get(name) or {}).get("meta", {}).get("card") if name else None
        return text(card) if card else None
    except Exception as err:  # no dvc.yaml, no such revision, no card yet: serve without one
        log.info("no model card for %s: %s", source.path.name, err)
        return None


def load(
    source: ModelSource,
    data: bytes,
    num_threads: int,
    warmup_runs: int,
    batcher: Callable[[ort.InferenceSession], MicroBatcher],
    repo: str = ".",
) -> ServedModel:
    """A model ready to serve from its bytes; UsageError names why it is not."""
    try:
        sess = session_from_bytes(data, num_threads)
    except Exception as err:  # onnxruntime raises its own exception types
        raise UsageError(f"cannot load model {source.path.name}: {err}") from None
    check_contract(sess, warmup_runs)
    meta = sess.get_modelmeta().custom_metadata_map
    inp = sess.get_inputs()[0]
    card = find_card(source, repo)
    info = ModelInfo(
        name=source.artifact or source.path.name,
        version=source.version,
        stage=source.stage,
        commit=source.commit,
        sha256=hashlib.sha256(data).hexdigest(),
        input=ModelInput(name=inp.name, type=inp.type, shape=list(inp.shape)),
        input_contract=meta.get("input_contract"),
        metadata=dict(sorted(meta.items())),
        card=card is not None,
    )
    return ServedModel(source, sess, info, card, batcher(sess))


class ModelSlot:
    """The model in service, loaded in the background at start and swapped on `reload`.

    `on_swap(old, new)` runs after each swap (old is None for the first model), and
    `on_failure(reason)` after each refused model."""

    def __init__(
        self,
        spec: ModelSpec,
        first: ModelSource | None,
        make: Callable[[ModelSource, bytes], ServedModel],
        on_swap: Callable[[ServedModel | None, ServedModel], None],
        on_failure: Callable[[str], None],
    ) -> None:
        self.spec, self.first, self.make = spec, first, make
        self.on_swap, self.on_failure = on_swap, on_failure
        self.current: ServedModel | None = None
        self._lock = asyncio.Lock()

    def _resolve_and_load(self, source: ModelSource | None) -> ServedModel:
        if source is None:
            source, data = read_resolved(self.spec)
        else:
            data = _read(source.path)
        return self.make(source, data)

    async def reload(self, source: ModelSource | None = None) -> bool:
        """Load the model `--model` names now (or `source`) and swap it in if it passes;
        False, with the reason logged and counted, if it does not. Reloads run one at a time."""
        async with self._lock:
            try:
                new = await run_in_threadpool(self._resolve_and_load, source)
            except Exception as err:  # any failure keeps the old model: say why and go on
                reason = str(err) if isinstance(err, UsageError) else repr(err)
                kept = f"; still serving {self.current.info.sha256[:12]}" if self.current else ""
                log.error("model %s refused: %s%s", self.spec.model, reason, kept)
                self.on_failure(reason)
                return False
            old, self.current = self.current, new
        log.info("serving %s (sha256 %s)", new.source.describe(), new.info.sha256[:12])
        self.on_swap(old, new)
        if old is not None:
            await old.batcher.retire()
        return True

    async def start(self) -> None:
        """The first load: the model the parent process resolved, or `--model` resolved now."""
        await self.reload(self.first)

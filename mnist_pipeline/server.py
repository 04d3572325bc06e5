"""Serve one exported ONNX model over HTTP, with ONNX Runtime and FastAPI.

    mnist-serve --model models/lenet5_pruned.onnx [--host 127.0.0.1] [--port 8000]
    mnist-serve --model lenet5-pruned-int8-onnx#prod --workers 2    # a registered version
    python -m mnist_pipeline.server --model models/lenet5_int8.onnx

- `POST /predict` with one or more image files (multipart field `file`, repeatable), or with
  JSON `{"pixels": ...}`: raw 0-255 digits, one 28x28 list of rows or a list of them. The
  answer is a JSON list of `{"file", "digit", "probability", "probabilities"}`, the fields of
  `mnist-predict --json`; images go through the same preprocessing (`predict.load_digit`).
- `GET /healthz`, `GET /model` (name, file hash, input contract, metadata), `GET /docs`.
- `GET /`: a page where you draw a digit and see the prediction and the ten probabilities as
  you draw (`static/index.html`; no CDN, it works offline).

Bad input gets a 4xx JSON error `{"error": ..., "file": ...}` that names the problem, and the
server keeps serving: a file that is not an image, truncated or over `--max-bytes`; a
decompression bomb; pixels of the wrong shape or range; more than `--max-files` files. It
binds 127.0.0.1 unless `--host` says otherwise. One ONNX Runtime session per process serves
every request (its `run` is thread-safe); each request's decoding and inference run in one trip
to a worker thread, off the event loop, or in a shared run with other requests' digits
(`--max-batch`, `--max-wait-ms`: micro-batching).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import io
import json
import os
import sys
import time
from collections.abc import Callable
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from mnist_pipeline import model_ref, onnx_runtime, predict
from mnist_pipeline.errors import UsageError
from mnist_pipeline.model_ref import ModelSource

PAGE = Path(__file__).with_name("static") / "index.html"
DEFAULT_MAX_BYTES = 5 * 1024 * 1024
DEFAULT_MAX_FILES = 64
# Micro-batching is off by default: for single-image requests on 2 cores it served no more
# requests than running each at once (parsing HTTP and images costs more than the model), and
# waiting 2 ms for company halved the rate of a lone client (README, "Serving").
DEFAULT_MAX_BATCH, DEFAULT_MAX_WAIT_MS = 1, 0.0
# One ONNX Runtime thread per run: a LeNet is too small to split across cores, and the cores
# are better spent on concurrent requests.
DEFAULT_THREADS = 1
# How `--workers` processes get the options the parent parsed.
OPTIONS_ENV = "MNIST_SERVE_OPTIONS"


Digits = tuple[list[np.ndarray], list[str]]  # uint8 (28, 28) digits and their names


class BadInput(Exception):
    """A request the server refuses: its status code and a message that names the problem."""

    def __init__(self, status: int, message: str, file: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.file = status, message, file


@dataclass(frozen=True)
class Limits:
    max_bytes: int = DEFAULT_MAX_BYTES  # per uploaded file
    max_files: int = DEFAULT_MAX_FILES  # per request, files or JSON digits
    max_pixels: int = predict.MAX_PIXELS  # per image, as its header declares


class MicroBatcher:
    """Classifies the digits of concurrent requests together, in one session run.

    A request that finds no run in progress runs at once, alone. The others queue, and a run
    takes the requests that queued while earlier ones ran, up to `max_batch` digits (a request
    with more runs alone), waiting at most `max_wait_ms` for more when that leaves room (0:
    none). So batching only happens under load, and a lone request pays nothing for it. Runs
    are off the event loop. With `max_batch` 1 every request runs on its own, at once.
    """

    def __init__(self, sess: ort.InferenceSession, max_batch: int, max_wait_ms: float) -> None:
        self.sess, self.max_batch, self.max_wait = sess, max_batch, max_wait_ms / 1000
        self._running = 0  # session runs in progress
        # The queue and its worker task belong to the event loop that serves (uvicorn has one).
        self._loop: asyncio.AbstractEventLoop | None = None
        self._queue: asyncio.Queue[tuple[list[np.ndarray], list[str], asyncio.Future]]
        self._worker: asyncio.Task | None = None

    async def classify(self, load: Callable[[], Digits]) -> list[predict.Prediction]:
        """The predictions for the digits `load` gives (it runs off the event loop too).

        With nothing running, a request runs at once, loading and classifying in one trip to a
        worker thread; otherwise its digits queue for the next shared run."""
        loop = asyncio.get_running_loop()
        idle = self._running == 0 and (loop is not self._loop or self._queue.empty())
        if self.max_batch <= 1 or idle:
            self._running += 1
            try:
                return await run_in_threadpool(lambda: predict.classify(self.sess, *load()))
            finally:
                self._running -= 1
        digits, names = await run_in_threadpool(load)
        if loop is not self._loop:
            await self.close()
            self._loop, self._queue = loop, asyncio.Queue()
            self._worker = loop.create_task(self._serve(self._queue))
        done = loop.create_future()
        await self._queue.put((digits, names, done))
        return await done

    async def _serve(self, queue: asyncio.Queue) -> None:
        carry = None  # a request that would have made the last run too big: the next one's
        while True:
            jobs = [carry if carry is not None else await queue.get()]
            carry, size = None, len(jobs[0][0])
            deadline = time.monotonic() + self.max_wait
            while size < self.max_batch:
                try:
                    job = queue.get_nowait()
                except asyncio.QueueEmpty:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    try:
                        job = await asyncio.wait_for(queue.get(), left)
                    except TimeoutError:
                        break
                if size + len(job[0]) > self.max_batch:
                    carry = job
                    break
                jobs.append(job)
                size += len(job[0])
            await self._run(jobs)

    async def _run(self, jobs: list[tuple[list[np.ndarray], list[str], asyncio.Future]]) -> None:
        digits = [d for job in jobs for d in job[0]]
        names = [n for job in jobs for n in job[1]]
        self._running += 1
        try:
            preds = await run_in_threadpool(predict.classify, self.sess, digits, names)
        except Exception as err:  # each waiting request gets the error
            for *_, done in jobs:
                if not done.done():
                    done.set_exception(err)
            return
        finally:
            self._running -= 1
        start = 0
        for job_digits, _, done in jobs:
            if not done.done():  # a request whose client went away
                done.set_result(preds[start : start + len(job_digits)])
            start += len(job_digits)

    async def close(self) -> None:
        if self._worker is not None and self._loop is asyncio.get_running_loop():
            self._worker.cancel()
        self._worker = None


def pixels_from_json(body: Any, limits: Limits) -> np.ndarray:
    """`{"pixels": ...}` as uint8 digits (N, 28, 28); `BadInput` (422) names what is wrong."""
    if not isinstance(body, dict) or "pixels" not in body:
        raise BadInput(422, 'expected a JSON object {"pixels": [...]} of 28x28 raw pixels')
    try:
        arr = np.asarray(body["pixels"], dtype=np.float64)
    except (TypeError, ValueError):
        raise BadInput(422, "pixels must be a 28x28 list of numbers, or a list of them") from None
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3 or arr.shape[1:] != (predict.FIELD, predict.FIELD) or len(arr) == 0:
        raise BadInput(422, f"pixels must have shape (28, 28) or (N, 28, 28), got {arr.shape}")
    if len(arr) > limits.max_files:
        raise BadInput(413, f"{len(arr)} digits in one request; at most {limits.max_files}")
    if not np.isfinite(arr).all() or arr.min() < 0 or arr.max() > 255:
        raise BadInput(422, "pixels must be raw values between 0 and 255")
    return np.round(arr).astype(np.uint8)


async def read_uploads(request: Request, limits: Limits) -> list[tuple[str, bytes]]:
    """The `file` fields of a multipart request, (name, bytes) in order, within the limits."""
    form = await request.form(max_files=limits.max_files + 1)
    uploads = [u for u in form.getlist("file") if isinstance(u, UploadFile)]
    if not uploads:
        raise BadInput(422, "no image: send one or more files in the multipart field `file`")
    if len(uploads) > limits.max_files:
        raise BadInput(413, f"{len(uploads)} files in one request; at most {limits.max_files}")
    files = []
    for upload in uploads:
        name = upload.filename or "file"
        data = await upload.read(limits.max_bytes + 1)
        if len(data) > limits.max_bytes:
            raise BadInput(413, f"larger than the limit of {limits.max_bytes:,} bytes", name)
        files.append((name, data))
    return files


def decode_uploads(files: list[tuple[str, bytes]], limits: Limits) -> Digits:
    """Uploaded images as digits, through `mnist-predict`'s preprocessing; `BadInput` (422)
    names the first file that is not a digit image."""
    digits = []
    for name, data in files:
        try:
            digits.append(predict.load_digit(io.BytesIO(data), "auto", limits.max_pixels))
        except predict.ImageError as err:
            raise BadInput(422, str(err), name) from None
    return digits, [name for name, _ in files]


def model_card(source: ModelSource, sess: ort.InferenceSession) -> dict[str, Any]:
    """What `GET /model` answers: the file, its registered version if any, its contract."""
    meta = sess.get_modelmeta().custom_metadata_map
    inp = sess.get_inputs()[0]
    return {
        "name": source.artifact or source.path.name,
        "version": source.version,
        "stage": source.stage,
        "commit": source.commit,
        "path": str(source.path),
        "sha256": hashlib.sha256(source.path.read_bytes()).hexdigest(),
        "input": {"name": inp.name, "type": inp.type, "shape": inp.shape},
        "input_contract": meta.get("input_contract"),
        "metadata": dict(sorted(meta.items())),
    }


def create_app(
    model: Path | ModelSource,
    limits: Limits | None = None,
    max_batch: int = DEFAULT_MAX_BATCH,
    max_wait_ms: float = DEFAULT_MAX_WAIT_MS,
    num_threads: int = DEFAULT_THREADS,
) -> FastAPI:
    """The app serving `model`; the session is made once, here."""
    source = model if isinstance(model, ModelSource) else ModelSource(model)
    limits = limits or Limits()
    sess = onnx_runtime.open_model(source.path, num_threads)
    card = model_card(source, sess)
    batcher = MicroBatcher(sess, max_batch, max_wait_ms)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> Any:
        yield
        await batcher.close()

    version = f" {card['version']}" if card["version"] else ""
    app = FastAPI(
        title="MNIST digit classifier",
        description=f"LeNet-5 `{card['name']}`{version} in ONNX Runtime. "
        f"{card['input_contract'] or ''}",
        lifespan=lifespan,
    )

    @app.exception_handler(BadInput)
    async def bad_input(_: Request, err: BadInput) -> JSONResponse:
        return JSONResponse({"error": err.message, "file": err.file}, status_code=err.status)

    @app.get("/", include_in_schema=False)
    async def page() -> HTMLResponse:
        return HTMLResponse(PAGE.read_text())

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/model")
    async def model_info() -> dict[str, Any]:
        return card

    @app.post("/predict", response_model=list[dict[str, Any]])
    async def predict_digits(request: Request) -> JSONResponse:
        """Image files (multipart field `file`, repeatable) or JSON `{"pixels": ...}`."""
        kind = request.headers.get("content-type", "")
        if kind.startswith("multipart/form-data"):
            files = await read_uploads(request, limits)
            preds = await batcher.classify(lambda: decode_uploads(files, limits))
        elif kind.startswith("application/json"):
            try:
                body = await request.json()
            except ValueError:
                raise BadInput(422, "the body is not valid JSON") from None
            batch = pixels_from_json(body, limits)
            names = [f"pixels[{i}]" for i in range(len(batch))]
            preds = await batcher.classify(lambda: (list(batch), names))
        else:
            raise BadInput(415, "send multipart/form-data (field `file`) or application/json")
        # A response made here skips FastAPI's validation of the return value (it is ours).
        return JSONResponse([p.as_json() for p in preds])

    return app


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="mnist-serve", description=__doc__.splitlines()[0])
    model_ref.add_arguments(p)
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: this machine)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--max-bytes", type=int, default=DEFAULT_MAX_BYTES, help="per uploaded file")
    p.add_argument("--max-files", type=int, default=DEFAULT_MAX_FILES, help="per request")
    p.add_argument(
        "--max-batch",
        type=int,
        default=DEFAULT_MAX_BATCH,
        help="digits of concurrent requests classified in one run (1: no micro-batching)",
    )
    p.add_argument(
        "--max-wait-ms",
        type=float,
        default=DEFAULT_MAX_WAIT_MS,
        help="how long a run waits for more requests when it has room (0: takes what queued)",
    )
    p.add_argument(
        "--threads", type=int, default=DEFAULT_THREADS, help="ONNX Runtime threads (0: all)"
    )
    p.add_argument(
        "--workers", type=int, default=1, help="server processes, each with its own session"
    )
    p.add_argument("--log-level", default="info", help="uvicorn's log level")
    args = p.parse_args(argv)
    if args.max_batch < 1 or args.max_wait_ms < 0 or args.threads < 0 or args.workers < 1:
        p.error("--max-batch and --workers must be >= 1, --max-wait-ms and --threads >= 0")
    return args


def app_from_env() -> FastAPI:
    """The app of one `--workers` process, made from the options its parent checked."""
    options = json.loads(os.environ[OPTIONS_ENV])
    source = ModelSource(Path(options.pop("path")), **options.pop("source"))
    return create_app(source, Limits(**options.pop("limits")), **options)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        source = model_ref.resolve(args.model, args.repo, args.cache_dir)
        app = create_app(
            source,
            Limits(args.max_bytes, args.max_files),
            args.max_batch,
            args.max_wait_ms,
            args.threads,
        )
    except UsageError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"serving {source.describe()}", file=sys.stderr)
    import uvicorn

    run = {"host": args.host, "port": args.port, "log_level": args.log_level}
    if args.workers == 1:
        uvicorn.run(app, **run)
        return 0
    os.environ[OPTIONS_ENV] = json.dumps(
        {
            "path": str(source.path),
            "source": {k: v for k, v in asdict(source).items() if k != "path"},
            "limits": asdict(Limits(args.max_bytes, args.max_files)),
            "max_batch": args.max_batch,
            "max_wait_ms": args.max_wait_ms,
            "num_threads": args.threads,
        }
    )
    uvicorn.run("mnist_pipeline.server:app_from_env", factory=True, workers=args.workers, **run)
    return 0


if __name__ == "__main__":
    sys.exit(main())

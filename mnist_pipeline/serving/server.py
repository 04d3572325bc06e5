"""Serve one exported ONNX model over HTTP, with ONNX Runtime and FastAPI.

    mnist-serve --model models/lenet5_pruned.onnx [--host 127.0.0.1] [--port 8000]
    mnist-serve --model lenet5-pruned-int8-onnx#prod --workers 2    # a registered version
    python -m mnist_pipeline.serving.server --model models/lenet5_int8.onnx

- `POST /predict` with one or more image files (multipart field `file`, repeatable), or with
  JSON `{"pixels": ...}`: raw 0-255 digits, one 28x28 list of rows or a list of them. The
  answer is a JSON list of `{"file", "digit", "probability", "probabilities", "id"}`, the
  fields of `mnist-predict --json` and a feedback id; images go through the same
  preprocessing (`predict.load_digit`).
- `GET /healthz` (liveness), `GET /readyz` (200 once a model is loaded and warmed up, 503
  before), `GET /model` (name, version, sha256, input contract, metadata), `GET /model/card`
  (the artifact's model card), `GET /metrics` (Prometheus), `GET /docs`.
- `POST /feedback`: the true label of an earlier prediction, by the `id` each answer carries
  (`feedback`). `/v2/...`: the Open Inference Protocol, KServe v2 REST (`open_inference`).
- `GET /`: a page where you draw a digit and see the prediction and the ten probabilities as
  you draw (`static/index.html`; no CDN, it works offline).
- SIGHUP loads the model `--model` names now and swaps it in once it passes its checks
  (`served_model`); SIGTERM turns `/readyz` 503, serves on for `--drain-s`, then stops
  accepting, answers every request it accepted within `--grace-s`, and exits 0 (`drain`). With
  `--workers N` the parent passes SIGHUP and SIGTERM to every worker.

Bad input gets a 4xx JSON error `{"error": ..., "file": ...}` that names the problem, and the
server keeps serving: a file that is not an image, truncated or over `--max-bytes`; a
decompression bomb; pixels of the wrong shape or range; more than `--max-files` files; a body
over its cap, or too slow (`serving.limits`). It binds 127.0.0.1 unless `--host` says
otherwise. One ONNX Runtime session per process serves every request (its `run` is
thread-safe); each request's decoding and inference run in one trip to a worker thread, off
the event loop, or in a shared run with other requests' digits (`--max-batch`,
`--max-wait-ms`: micro-batching).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import shutil
import signal
import sys
import tempfile
from contextlib import asynccontextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException

from mnist_pipeline.drift.monitor import DEFAULT_WINDOW
from mnist_pipeline.errors import UsageError
from mnist_pipeline.serving import drain, feedback, open_inference, routes, served_model
from mnist_pipeline.serving import metrics as server_metrics
from mnist_pipeline.serving.drift import PROFILE_NAME, DriftOptions, DriftWatch
from mnist_pipeline.serving.inputs import BadInput
from mnist_pipeline.serving.limits import (
    DEFAULT_BODY_TIMEOUT_S,
    DEFAULT_MAX_BYTES,
    DEFAULT_MAX_FILES,
    DEFAULT_MAX_IN_FLIGHT,
    Limits,
    RequestLimits,
)
from mnist_pipeline.serving.metrics import Observe, ServerMetrics
from mnist_pipeline.serving.micro_batcher import MicroBatcher
from mnist_pipeline.serving.model_ref import ModelSource
from mnist_pipeline.serving.outcomes import Outcomes
from mnist_pipeline.serving.served_model import (
    DEFAULT_WARMUP_RUNS,
    ModelSlot,
    ModelSpec,
)

log = logging.getLogger(__name__)
# Micro-batching is off by default: for single-image requests on 2 cores it served no more
# requests than running each at once (parsing HTTP and images costs more than the model), and
# waiting 2 ms for company halved the rate of a lone client (README, "Serving").
DEFAULT_MAX_BATCH, DEFAULT_MAX_WAIT_MS = 1, 0.0
# One ONNX Runtime thread per run: a LeNet is too small to split across cores, and the cores
# are better spent on concurrent requests.
DEFAULT_THREADS = 1
# uvicorn's: idle keep-alive connections are closed after this; open connections beyond the
# cap get 503 (slow clients that never finish their headers count too); SIGTERM's drain,
# delay included, takes at most this long.
DEFAULT_KEEP_ALIVE_S, DEFAULT_MAX_CONNECTIONS, DEFAULT_GRACE_S = 5, 1024, 30
# On SIGTERM, how long /readyz says 503 while the server still serves, so that a load balancer
# stops sending before connections are refused: a few health checks at common intervals.
DEFAULT_DRAIN_S = 5.0
# How `--workers` processes get the options the parent parsed.
OPTIONS_ENV = "MNIST_SERVE_OPTIONS"
HOST_ENV, PORT_ENV = "MNIST_SERVE_HOST", "MNIST_SERVE_PORT"
__all__ = ["BadInput", "Limits", "MicroBatcher", "ModelSource"]


def create_app(
    model: Path | ModelSource | ModelSpec,
    limits: Limits | None = None,
    max_batch: int = DEFAULT_MAX_BATCH,
    max_wait_ms: float = DEFAULT_MAX_WAIT_MS,
    num_threads: int = DEFAULT_THREADS,
    warmup_runs: int = DEFAULT_WARMUP_RUNS,
    log_format: str = "text",
    first: ModelSource | None = None,
    load_first: bool = False,
    docs: bool = False,
    feedback_capacity: int = feedback.DEFAULT_CAPACITY,
    drift: DriftOptions | None = None,
) -> FastAPI:
    """The app serving `model`: a file, a resolved source, or what `--model` names (resolved
    again on SIGHUP). It loads the model in the background once it starts; `/readyz` says
    when it may take traffic. `first`: the model to start with, already resolved.
    `load_first`: load it before serving instead; a `--workers` process shares its socket, and
    must not take a share of the connections while it cannot answer them. `docs`: serve
    Swagger UI at `/docs`, which loads its scripts from a CDN (off by default: an offline
    machine cannot reach it, and the page would run third-party code); `/openapi.json` is
    always there. `feedback_capacity`: predictions kept for `POST /feedback` (0: none).
    `drift`: the drift monitor's options (default: on, the profile found beside the model)."""
    if isinstance(model, ModelSpec):
        spec = model
    else:
        first = model if isinstance(model, ModelSource) else ModelSource(model)
        spec = ModelSpec(str(first.path))
    limits = limits or Limits()
    metrics = ServerMetrics()
    store = feedback.FeedbackStore(feedback_capacity)
    watch = DriftWatch(drift or DriftOptions(), metrics)
    outcomes = Outcomes(metrics, store, watch)

    def make(source: ModelSource, data: bytes) -> served_model.ServedModel:
        def batcher(sess: Any) -> MicroBatcher:
            return MicroBatcher(sess, max_batch, max_wait_ms, metrics.batch_size.observe)

        return served_model.load(source, data, num_threads, warmup_runs, batcher, spec.repo)

    def swapped(old: served_model.ServedModel | None, new: served_model.ServedModel) -> None:
        if old is not None:
            metrics.reloads.inc()
            metrics.served(old.info.name, old.info.version, old.info.sha256, up=False)
        metrics.served(new.info.name, new.info.version, new.info.sha256, up=True)
        watch.swap(new.source, new.info.sha256)

    slot = ModelSlot(spec, first, make, swapped, lambda _: metrics.reload_failures.inc())

    app = FastAPI(
        title="MNIST digit classifier",
        description="LeNet-5 in ONNX Runtime: raw 0-255 pixels of 28x28 digits, or images.",
        lifespan=_lifespan(slot, spec, load_first),
        docs_url="/docs" if docs else None,
        redoc_url=None,
    )
    access_log = server_metrics.json_access_log() if log_format == "json" else None
    handlers = routes.HANDLERS | open_inference.HANDLERS | {"/openapi.json"}
    handlers |= {"/docs"} if docs else set()
    app.add_middleware(RequestLimits, limits=limits)  # inside Observe: refusals are counted
    app.add_middleware(Observe, metrics=metrics, handlers=handlers, access_log=access_log)
    app.add_middleware(drain.CloseWhenDraining)
    app.add_exception_handler(BadInput, routes.bad_input)  # type: ignore[arg-type]
    # Starlette's own refusals (a malformed multipart body, 404, 405) in the same shape.
    app.add_exception_handler(HTTPException, routes.http_error)  # type: ignore[arg-type]
    app.add_exception_handler(RequestValidationError, routes.invalid_request)  # type: ignore[arg-type]
    for router in (
        routes.page_and_metrics(metrics, slot),
        routes.probes(slot),
        routes.model(slot, watch),
        routes.predictions(slot, outcomes, limits),
        routes.monitoring(watch),
        feedback.router(store, metrics),
        open_inference.router(slot, outcomes, limits, lambda: routes.readiness(slot)),
    ):
        app.include_router(router)
    return app


def _lifespan(slot: ModelSlot, spec: ModelSpec, load_first: bool) -> Any:
    """Load the model (in the background unless `load_first`), and SIGHUP reloads it."""

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> Any:
        loop = asyncio.get_running_loop()
        tasks: set[asyncio.Task] = set()
        if load_first:
            await slot.start()
        else:
            tasks.add(loop.create_task(slot.start()))

        def hup() -> None:
            log.info("SIGHUP: loading %s again", spec.model)
            task = loop.create_task(slot.reload())
            tasks.add(task)
            task.add_done_callback(tasks.discard)

        try:  # only the main thread's loop may handle signals (not a TestClient's)
            loop.add_signal_handler(signal.SIGHUP, hup)
        except (RuntimeError, ValueError):
            log.debug("not handling SIGHUP: not the main thread")
        yield
        with contextlib.suppress(RuntimeError, ValueError):
            loop.remove_signal_handler(signal.SIGHUP)
        for task in tasks:
            task.cancel()
        if slot.current is not None:
            await slot.current.batcher.close()

    return lifespan


def watching_options(p: argparse.ArgumentParser) -> None:
    """What watches the served model: feedback labels and drift (docs/serving.md)."""
    p.add_argument(
        "--feedback-capacity",
        type=int,
        default=None,
        help="recent predictions kept for POST /feedback, and the live accuracy's window "
        f"(default {feedback.DEFAULT_CAPACITY:,}; 0: no feedback, the only choice with --workers)",
    )
    p.add_argument(
        "--drift-profile",
        type=Path,
        default=None,
        help=f"the reference profile drift is measured against (default: {PROFILE_NAME} "
        "beside the model file, if there is one)",
    )
    p.add_argument(
        "--drift-window",
        type=int,
        default=DEFAULT_WINDOW,
        help=f"recent digits the drift tests look at, per process (default {DEFAULT_WINDOW})",
    )
    p.add_argument("--no-drift", action="store_true", help="monitor no drift")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="mnist-serve", description=__doc__.splitlines()[0])
    served_model.model_ref.add_arguments(p)
    # The environment may set them (the container image does: its port is a setting).
    env = os.environ.get
    p.add_argument(
        "--host",
        default=env(HOST_ENV, "127.0.0.1"),
        help=f"address to bind (default: ${HOST_ENV}, else this machine)",
    )
    p.add_argument(
        "--port",
        type=int,
        default=int(env(PORT_ENV, "8000")),
        help=f"0: any free port (it is logged); default ${PORT_ENV}, else 8000",
    )
    p.add_argument("--max-bytes", type=int, default=DEFAULT_MAX_BYTES, help="per uploaded file")
    p.add_argument("--max-files", type=int, default=DEFAULT_MAX_FILES, help="per request")
    for flag, kind, default, what in (
        ("--max-body-bytes", int, None, "per multipart body (default: --max-files files)"),
        ("--max-json-bytes", int, None, "per other body (default: what --max-files digits need)"),
        ("--max-in-flight", int, DEFAULT_MAX_IN_FLIGHT, "per process; more get 503, Retry-After"),
        ("--body-timeout-s", float, DEFAULT_BODY_TIMEOUT_S, "wait for a body's next piece (408)"),
        ("--keep-alive-s", int, DEFAULT_KEEP_ALIVE_S, "idle keep-alive connections close then"),
        ("--max-connections", int, DEFAULT_MAX_CONNECTIONS, "per process; more get 503 (uvicorn)"),
        ("--grace-s", int, DEFAULT_GRACE_S, "on SIGTERM, time to drain and exit, all told"),
        ("--drain-s", float, DEFAULT_DRAIN_S, "on SIGTERM, keep serving, /readyz 503 (default 5)"),
    ):
        p.add_argument(flag, type=kind, default=default, help=what)
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
        "--warmup-runs",
        type=int,
        default=DEFAULT_WARMUP_RUNS,
        help="inferences a model runs before it is ready (at start and on reload)",
    )
    p.add_argument(
        "--workers", type=int, default=1, help="server processes, each with its own session"
    )
    watching_options(p)
    p.add_argument("--log-level", default="info", help="uvicorn's log level")
    p.add_argument(
        "--log-format",
        choices=["text", "json"],
        default="text",
        help="json: one JSON line per request instead of uvicorn's access log",
    )
    p.add_argument(
        "--docs",
        action="store_true",
        help="serve Swagger UI at /docs (it loads its scripts from a CDN; /openapi.json is "
        "always served)",
    )
    args = p.parse_args(argv)
    if min(args.max_batch, args.workers, args.drift_window) < 1:
        p.error("--max-batch, --workers and --drift-window must be >= 1")
    if args.max_wait_ms < 0 or args.threads < 0:
        p.error("--max-wait-ms and --threads must be >= 0")
    if min(args.max_in_flight, args.max_connections, args.keep_alive_s) < 1:
        p.error("--max-in-flight, --max-connections and --keep-alive-s must be >= 1")
    if min(args.warmup_runs, args.grace_s, args.drain_s) < 0 or args.body_timeout_s <= 0:
        p.error("--warmup-runs, --grace-s and --drain-s must be >= 0, --body-timeout-s > 0")
    if args.feedback_capacity is None:  # a worker's store sees only its own predictions
        args.feedback_capacity = feedback.DEFAULT_CAPACITY if args.workers == 1 else 0
    if args.feedback_capacity < 0 or (args.feedback_capacity and args.workers > 1):
        p.error("--feedback-capacity must be >= 0, and 0 with --workers > 1 (docs: Feedback)")
    return args


def app_options(args: argparse.Namespace, first: ModelSource) -> dict[str, Any]:
    """`create_app`'s options as JSON, for the `--workers` processes."""
    limits = Limits(
        args.max_bytes,
        args.max_files,
        max_body=args.max_body_bytes,
        max_json_body=args.max_json_bytes,
        max_in_flight=args.max_in_flight,
        body_timeout_s=args.body_timeout_s,
    )
    return {
        "spec": {"model": args.model, "repo": args.repo, "cache_dir": args.cache_dir},
        "first": asdict(first),
        "limits": asdict(limits),
        "max_batch": args.max_batch,
        "max_wait_ms": args.max_wait_ms,
        "num_threads": args.threads,
        "warmup_runs": args.warmup_runs,
        "log_format": args.log_format,
        "docs": args.docs,
        "feedback_capacity": args.feedback_capacity,
        "drift": {
            "profile": args.drift_profile,
            "window": args.drift_window,
            "enabled": not args.no_drift,
        },
    }


def app_from_options(options: dict[str, Any], load_first: bool = False) -> FastAPI:
    spec = options.pop("spec")
    cache = spec.pop("cache_dir")
    first = options.pop("first")
    card = first.pop("card")  # JSON made both paths strings: a bundle's card is read as a Path
    drift = options.pop("drift")
    profile = drift.pop("profile")
    return create_app(
        ModelSpec(**spec, cache_dir=Path(cache) if cache else None),
        Limits(**options.pop("limits")),
        first=ModelSource(Path(first.pop("path")), **first, card=Path(card) if card else None),
        load_first=load_first,
        drift=DriftOptions(Path(profile) if profile else None, **drift),
        **options,
    )


def app_from_env() -> FastAPI:
    """The app of one `--workers` process, made from the options its parent checked."""
    return app_from_options(json.loads(os.environ[OPTIONS_ENV]), load_first=True)


def _exit_ok(*_: Any) -> None:
    # uvicorn re-raises the SIGTERM it drained on: exit 0 then, as a drained server should.
    raise SystemExit(0)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    spec = ModelSpec(args.model, args.repo, args.cache_dir)
    try:  # the model must load and pass before anything listens: a bad one is a usage error
        source, data = served_model.read_resolved(spec)
        served_model.check_contract(served_model.session_from_bytes(data, 1), 0)
    except UsageError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except Exception as err:  # onnxruntime's own errors: not a model
        print(f"error: cannot load model {args.model}: {err}", file=sys.stderr)
        return 2
    import uvicorn

    options = json.loads(json.dumps(app_options(args, source), default=str))
    config = uvicorn.Config(
        "mnist_pipeline.serving.server:app_from_env"
        if args.workers > 1
        else app_from_options(options),
        factory=args.workers > 1,
        host=args.host,
        port=args.port,
        workers=args.workers,
        log_level=args.log_level,
        access_log=args.log_format == "text",
        timeout_keep_alive=args.keep_alive_s,
        limit_concurrency=args.max_connections,
        timeout_graceful_shutdown=args.grace_s,
    )
    sock = config.bind_socket()
    # Listening now, before the line below announces the port: a client that reads it and
    # connects at once waits in the backlog instead of being refused while the server starts.
    sock.listen(config.backlog)
    print(
        f"serving {source.describe()} on http://{args.host}:{sock.getsockname()[1]}",
        file=sys.stderr,
        flush=True,
    )
    signal.signal(signal.SIGTERM, _exit_ok)
    if args.workers == 1:
        server = drain.DrainingServer(config, args.drain_s)
        server.run(sockets=[sock])
        return 0 if server.started else 1
    os.environ[OPTIONS_ENV] = json.dumps(options)
    made = not os.environ.get(server_metrics.MULTIPROC_ENV)
    if made:  # the workers' metric files, summed by a scrape; wiped with the server
        os.environ[server_metrics.MULTIPROC_ENV] = tempfile.mkdtemp(prefix="mnist-serve-metrics-")
    try:
        Supervisor(config, [sock], args.drain_s).run()
    finally:
        if made:
            shutil.rmtree(os.environ.pop(server_metrics.MULTIPROC_ENV), ignore_errors=True)
    return 0


class Supervisor(drain.Supervisor):
    """uvicorn's, with workers that drain, except that SIGHUP reaches every worker, each
    swapping its model in place, instead of replacing the workers (which would drop their
    connections)."""

    def handle_hup(self) -> None:
        log.info("SIGHUP: every worker loads its model again")
        for process in self.processes:
            if process.pid is not None:
                os.kill(process.pid, signal.SIGHUP)


if __name__ == "__main__":
    sys.exit(main())

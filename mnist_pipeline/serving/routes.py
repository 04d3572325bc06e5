"""The HTTP endpoints of `mnist-serve`, one router a concern: probes, the model, predictions,
and the page and metrics. Each reads the model in the slot once per request, so a swap while a
request runs does not change its model."""

from __future__ import annotations

import base64
import hashlib
import re
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from pydantic import BaseModel
from starlette.exceptions import HTTPException

from mnist_pipeline.serving import drain
from mnist_pipeline.serving.drift import DriftOut, DriftWatch
from mnist_pipeline.serving.inputs import BadInput, decode_uploads, pixels_from_json, read_uploads
from mnist_pipeline.serving.limits import RETRY_AFTER_S, Limits
from mnist_pipeline.serving.metrics import ServerMetrics
from mnist_pipeline.serving.outcomes import Outcomes
from mnist_pipeline.serving.predict import Prediction
from mnist_pipeline.serving.served_model import ModelInfo, ModelSlot, ServedModel

PAGE = Path(__file__).with_name("static") / "index.html"
HANDLERS = {
    "/",
    "/healthz",
    "/readyz",
    "/model",
    "/model/card",
    "/metrics",
    "/predict",
    "/feedback",
    "/monitoring/drift",
}


class ErrorOut(BaseModel):
    error: str
    file: str | None


class Status(BaseModel):
    status: str


class ServedPrediction(Prediction):
    id: str  # for `POST /feedback`; "" when feedback is off


def serving(slot: ModelSlot) -> ServedModel:
    """The model in the slot; 503 while none is loaded."""
    if slot.current is None:
        raise BadInput(503, "no model is loaded yet: see /readyz")
    return slot.current


def error_body(request: Request, message: str, file: str | None = None) -> dict[str, Any]:
    """`{"error", "file"}`; the Open Inference Protocol's `{"error"}` under /v2."""
    if request.url.path.startswith("/v2"):
        return {"error": message}
    return {"error": message, "file": file}


async def bad_input(request: Request, err: BadInput) -> JSONResponse:
    """Every refusal in the one documented shape, `{"error", "file"}`."""
    headers = {"retry-after": str(RETRY_AFTER_S)} if err.status == 503 else None
    return JSONResponse(
        error_body(request, err.message, err.file), status_code=err.status, headers=headers
    )


async def http_error(request: Request, err: HTTPException) -> JSONResponse:
    """Starlette's own refusals (a malformed multipart body, an unknown path or method) in the
    same shape, with their headers (`allow` of a 405)."""
    return JSONResponse(
        error_body(request, str(err.detail)),
        status_code=err.status_code,
        headers=getattr(err, "headers", None),
    )


async def invalid_request(request: Request, err: RequestValidationError) -> JSONResponse:
    problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in err.errors())
    return JSONResponse(error_body(request, problems), status_code=422)


def page_headers(html: str) -> dict[str, str]:
    """The drawing page's security headers: it runs only its own inline script and style
    (by hash), talks only to this server, and may not be framed or sniffed as another type."""
    sources = {}
    for kind in ("script", "style"):
        bodies = re.findall(rf"<{kind}>(.*?)</{kind}>", html, re.DOTALL)
        digests = [base64.b64encode(hashlib.sha256(b.encode()).digest()).decode() for b in bodies]
        sources[kind] = " ".join(f"'sha256-{d}'" for d in digests) or "'none'"
    policy = (
        f"default-src 'none'; script-src {sources['script']}; style-src {sources['style']}; "
        "img-src 'self' data: blob:; connect-src 'self'; base-uri 'none'; "
        "form-action 'self'; frame-ancestors 'none'"
    )
    return {
        "content-security-policy": policy,
        "x-frame-options": "DENY",
        "x-content-type-options": "nosniff",
        "referrer-policy": "no-referrer",
    }


def readiness(slot: ModelSlot) -> str:
    """`ready` once a model is loaded and passed its warm-up and no SIGTERM came; else why not."""
    if drain.draining():
        return "draining"
    return "loading" if slot.current is None else "ready"


def probes(slot: ModelSlot) -> APIRouter:
    router = APIRouter()

    @router.get("/healthz")
    async def healthz() -> Status:
        """Liveness: the process answers."""
        return Status(status="ok")

    @router.get("/readyz", responses={503: {"model": Status}})
    async def readyz() -> Status:
        """Readiness: a model is loaded and passed its warm-up, and no SIGTERM came."""
        status = readiness(slot)
        if status != "ready":
            return JSONResponse({"status": status}, status_code=503)  # type: ignore[return-value]
        return Status(status=status)

    return router


def model(slot: ModelSlot, watch: DriftWatch) -> APIRouter:
    router = APIRouter()

    @router.get("/model", responses={503: {"model": ErrorOut}})
    async def model_info() -> ModelInfo:
        return serving(slot).info.model_copy(update={"drift_profile": watch.ref})

    @router.get(
        "/model/card", response_class=PlainTextResponse, responses={404: {"model": ErrorOut}}
    )
    async def model_card() -> PlainTextResponse:
        """The model card (Markdown) of the artifact served."""
        card = serving(slot).card
        if card is None:
            raise BadInput(404, "this model has no model card (not a dvc.yaml artifact)")
        return PlainTextResponse(card, media_type="text/markdown; charset=utf-8")

    return router


def predictions(slot: ModelSlot, outcomes: Outcomes, limits: Limits) -> APIRouter:
    router = APIRouter()
    refusals: dict[int | str, dict[str, Any]] = {c: {"model": ErrorOut} for c in (413, 415, 422)}
    refusals[503] = {"model": ErrorOut, "description": "No model loaded yet, or saturated"}

    @router.post("/predict", response_model=list[ServedPrediction], responses=refusals)
    async def predict_digits(request: Request) -> JSONResponse:
        """Image files (multipart field `file`, repeatable) or JSON `{"pixels": ...}`."""
        model = serving(slot)  # once: a swap while this request runs does not change its model
        kind = request.headers.get("content-type", "")
        if kind.startswith("multipart/form-data"):
            files = await read_uploads(request, limits)
            out = await outcomes.classify(model, lambda: decode_uploads(files, limits))
        elif kind.startswith("application/json"):
            try:
                body = await request.json()
            except ValueError:
                raise BadInput(422, "the body is not valid JSON") from None
            except RecursionError:  # arrays nested thousands deep: no digit is
                raise BadInput(422, "the body is nested far deeper than (N, 28, 28)") from None
            batch = pixels_from_json(body, limits)
            names = [f"pixels[{i}]" for i in range(len(batch))]
            out = await outcomes.classify(model, lambda: (list(batch), names))
        else:
            raise BadInput(415, "send multipart/form-data (field `file`) or application/json")
        request.state.batch_size, request.state.model_sha256 = out.run, model.info.sha256
        # A response made here skips FastAPI's validation of the return value (it is ours).
        preds = zip(out.predictions, out.ids, strict=True)
        return JSONResponse([p.model_dump() | {"id": i} for p, i in preds])

    return router


def monitoring(watch: DriftWatch) -> APIRouter:
    router = APIRouter()

    @router.get("/monitoring/drift")
    async def drift() -> DriftOut:
        """This process's drift window tested against the reference profile (its gauges are
        updated too)."""
        return watch.report()

    return router


def page_and_metrics(metrics: ServerMetrics, slot: ModelSlot) -> APIRouter:
    router = APIRouter()

    html = PAGE.read_text()
    headers = page_headers(html)

    @router.get("/", include_in_schema=False)
    async def page() -> HTMLResponse:
        return HTMLResponse(html, headers=headers)

    @router.get("/metrics", response_class=PlainTextResponse)
    async def scrape() -> Response:
        """Prometheus metrics, in the text format."""
        data, kind = metrics.render(ready=readiness(slot) == "ready")
        return Response(data, media_type=kind)

    return router

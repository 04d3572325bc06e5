"""Serve one exported ONNX model over HTTP, with ONNX Runtime and FastAPI.

    mnist-serve --model models/lenet5_pruned.onnx [--host 127.0.0.1] [--port 8000]
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
binds 127.0.0.1 unless `--host` says otherwise. One ONNX Runtime session serves every request
(its `run` is thread-safe), off the event loop.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from mnist_pipeline import onnx_runtime, predict
from mnist_pipeline.errors import UsageError

PAGE = Path(__file__).with_name("static") / "index.html"
DEFAULT_MAX_BYTES = 5 * 1024 * 1024
DEFAULT_MAX_FILES = 64


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


async def digits_from_upload(
    request: Request, limits: Limits
) -> tuple[list[np.ndarray], list[str]]:
    """The `file` fields of a multipart request as digits, in order."""
    form = await request.form(max_files=limits.max_files + 1)
    uploads = [u for u in form.getlist("file") if isinstance(u, UploadFile)]
    if not uploads:
        raise BadInput(422, "no image: send one or more files in the multipart field `file`")
    if len(uploads) > limits.max_files:
        raise BadInput(413, f"{len(uploads)} files in one request; at most {limits.max_files}")
    digits, names = [], []
    for upload in uploads:
        name = upload.filename or "file"
        data = await upload.read(limits.max_bytes + 1)
        if len(data) > limits.max_bytes:
            raise BadInput(413, f"larger than the limit of {limits.max_bytes:,} bytes", name)
        try:
            digit = await run_in_threadpool(
                predict.load_digit, io.BytesIO(data), "auto", limits.max_pixels
            )
        except predict.ImageError as err:
            raise BadInput(422, str(err), name) from None
        digits.append(digit)
        names.append(name)
    return digits, names


def model_card(path: Path, sess: ort.InferenceSession) -> dict[str, Any]:
    meta = sess.get_modelmeta().custom_metadata_map
    inp = sess.get_inputs()[0]
    return {
        "name": path.name,
        "path": str(path),
        "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
        "input": {"name": inp.name, "type": inp.type, "shape": inp.shape},
        "input_contract": meta.get("input_contract"),
        "metadata": dict(sorted(meta.items())),
    }


def create_app(model: Path, limits: Limits | None = None) -> FastAPI:
    """The app serving `model`; the session is made once, here."""
    limits = limits or Limits()
    sess = onnx_runtime.open_model(model)
    card = model_card(model, sess)
    app = FastAPI(
        title="MNIST digit classifier",
        description=f"LeNet-5 `{model.name}` in ONNX Runtime. {card['input_contract'] or ''}",
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

    @app.post("/predict")
    async def predict_digits(request: Request) -> list[dict[str, Any]]:
        """Image files (multipart field `file`, repeatable) or JSON `{"pixels": ...}`."""
        kind = request.headers.get("content-type", "")
        if kind.startswith("multipart/form-data"):
            digits, names = await digits_from_upload(request, limits)
        elif kind.startswith("application/json"):
            try:
                body = await request.json()
            except ValueError:
                raise BadInput(422, "the body is not valid JSON") from None
            batch = pixels_from_json(body, limits)
            digits, names = list(batch), [f"pixels[{i}]" for i in range(len(batch))]
        else:
            raise BadInput(415, "send multipart/form-data (field `file`) or application/json")
        preds = await run_in_threadpool(predict.classify, sess, digits, names)
        return [p.as_json() for p in preds]

    return app


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="mnist-serve", description=__doc__.splitlines()[0])
    p.add_argument("--model", type=Path, required=True, help="ONNX model file (export stage)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: this machine)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--max-bytes", type=int, default=DEFAULT_MAX_BYTES, help="per uploaded file")
    p.add_argument("--max-files", type=int, default=DEFAULT_MAX_FILES, help="per request")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        app = create_app(args.model, Limits(args.max_bytes, args.max_files))
    except UsageError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    import uvicorn

    uvicorn.run(app, host=args.host, port=args.port, log_level="info")
    return 0


if __name__ == "__main__":
    sys.exit(main())

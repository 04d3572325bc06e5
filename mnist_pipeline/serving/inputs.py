"""What a `/predict` request may carry, and how it becomes digits: uploaded images or JSON
pixels, each refused with a `BadInput` that names the problem."""

from __future__ import annotations

import io
from typing import Any

import numpy as np
from fastapi import Request
from starlette.datastructures import UploadFile

from mnist_pipeline.serving import predict
from mnist_pipeline.serving.limits import Limits
from mnist_pipeline.serving.micro_batcher import Digits


class BadInput(Exception):
    """A request the server refuses: its status code and a message that names the problem."""

    def __init__(self, status: int, message: str, file: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.file = status, message, file


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

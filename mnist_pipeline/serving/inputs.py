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
    """`{"pixels": ...}` as uint8 digits (N, 28, 28); `BadInput` (422) names what is wrong.

    The structure and every value are checked in Python before NumPy sees them: a digit is 28
    lists of 28 numbers (int or float, not a string, a boolean or a list) from 0 to 255, so a
    400-digit integer or a string is refused rather than converted, and nothing deeper than
    (N, 28, 28) is walked."""
    if not isinstance(body, dict) or "pixels" not in body:
        raise BadInput(422, 'expected a JSON object {"pixels": [...]} of 28x28 raw pixels')
    pixels = body["pixels"]
    if not isinstance(pixels, list) or not pixels:
        raise BadInput(422, "pixels must be a 28x28 list of numbers, or a list of them")
    first = pixels[0]
    batch = isinstance(first, list) and bool(first) and isinstance(first[0], list)
    digits = pixels if batch else [pixels]
    if len(digits) > limits.max_files:
        raise BadInput(413, f"{len(digits)} digits in one request; at most {limits.max_files}")
    for i, digit in enumerate(digits):
        problem = _digit_problem(digit)
        if problem:
            raise BadInput(422, f"pixels[{i}]: {problem}" if batch else f"pixels: {problem}")
    return np.round(np.asarray(digits, dtype=np.float64)).astype(np.uint8)


def _digit_problem(digit: Any) -> str | None:
    """What makes `digit` not 28 lists of 28 raw pixel values; None when it is one."""
    field = predict.FIELD
    if not (
        isinstance(digit, list)
        and len(digit) == field
        and all(isinstance(row, list) and len(row) == field for row in digit)
    ):
        return "pixels must have shape (28, 28) or (N, 28, 28)"
    for row in digit:
        for value in row:
            if type(value) is not int and type(value) is not float:  # bool is an int subclass
                return f"pixels must be numbers, not {type(value).__name__} values"
            if not 0 <= value <= 255:  # NaN fails this too; a huge int compares without overflow
                return "pixels must be raw values between 0 and 255"
    return None


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

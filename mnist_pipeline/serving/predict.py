"""Classify images of handwritten digits with an exported ONNX model.

    mnist-predict --model models/lenet5_pruned.onnx digit.png other.jpg [--json]
    mnist-predict --model lenet5-pruned-onnx#prod digit.png   # a registered version
    python -m mnist_pipeline.serving.predict ...

Each image (PNG, JPEG, ... of any size and colour mode) is turned into what the model was
trained on, the way MNIST was made: grayscale, a light digit on a dark background (the
polarity is detected from the border, or set with --polarity), the digit's bounding box scaled
into 20x20 keeping its aspect ratio, then placed so its centre of mass is at the centre of the
28x28 field. The model takes these raw 0-255 pixels (its normalization is inside the graph).

Prints one line per file (digit and probability), or a JSON list with --json. A file that
cannot be read as an image gets an error line on stderr and the others are still classified.
Exit status: 0 all files classified, 1 some failed, 2 usage error (bad arguments or model).
Needs only Pillow, numpy and onnxruntime for a model file, so it starts fast; a registered
version is fetched first (`mnist_pipeline.serving.model_ref`: GTO and DVC).
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path
from typing import BinaryIO, Literal

import numpy as np
import onnxruntime as ort
from PIL import Image, ImageOps, UnidentifiedImageError
from pydantic import BaseModel, ConfigDict

from mnist_pipeline.errors import UsageError
from mnist_pipeline.onnx import runtime
from mnist_pipeline.serving import model_ref

Polarity = Literal["auto", "light-on-dark", "dark-on-light"]
FIELD, BOX = 28, 20  # MNIST: digits fitted into 20x20, centred in a 28x28 field
# Pixels at or below this (out of 255, after the background is removed) are not ink.
INK_THRESHOLD = 32
# The largest image read (a 16-megapixel photo): far more than a digit needs, and its float
# copies stay within a few hundred MB.
MAX_PIXELS = 4096 * 4096


class ImageError(ValueError):
    """This file cannot be turned into a digit image; the message says why."""


class Prediction(BaseModel):
    """One classified digit: what `mnist-predict --json` prints and `POST /predict` answers."""

    model_config = ConfigDict(frozen=True)

    file: str
    digit: int
    probability: float  # the digit's, rounded to 6 places like the ten below
    probabilities: list[float]


def to_gray(img: Image.Image) -> np.ndarray:
    """Grayscale float pixels (H, W) in 0-255. Transparent pixels become background: the
    image is laid on white if its visible strokes are dark, on black if they are light."""
    img = ImageOps.exif_transpose(img)
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        alpha = np.asarray(rgba.getchannel("A"), dtype=np.float64) / 255.0
        gray = np.asarray(rgba.convert("L"), dtype=np.float64)
        ink = (gray * alpha).sum() / max(alpha.sum(), 1e-9)
        background = 255.0 if ink < 128 else 0.0
        return gray * alpha + background * (1 - alpha)
    return np.asarray(img.convert("L"), dtype=np.float64)


def light_on_dark(gray: np.ndarray, polarity: Polarity = "auto") -> np.ndarray:
    """Make the digit light on a dark background, with the background at 0 and ink up to 255.

    auto: the background is whatever colour the image border mostly is.
    """
    dark_on_light = polarity == "dark-on-light"
    if polarity == "auto":
        border = np.concatenate([gray[0], gray[-1], gray[:, 0], gray[:, -1]])
        dark_on_light = bool(np.median(border) > 127.5)
    x = 255.0 - gray if dark_on_light else gray
    # Paper is rarely pure white: take the border level as the background and stretch the
    # rest to the full range.
    background = np.median(np.concatenate([x[0], x[-1], x[:, 0], x[:, -1]]))
    x = np.clip(x - background, 0, None)
    peak = x.max()
    if peak <= INK_THRESHOLD:
        hint = "" if polarity == "auto" else f" (or not {polarity}: check --polarity)"
        raise ImageError(f"no digit found: the image is blank{hint}")
    return x * (255.0 / peak)


def center_mnist(x: np.ndarray) -> np.ndarray:
    """A light-on-dark digit (H, W) as MNIST does it: uint8 (28, 28), bounding box scaled into
    20x20 keeping the aspect ratio, centre of mass at the centre of the field."""
    rows, cols = np.nonzero(x > INK_THRESHOLD)
    if len(rows) == 0:
        raise ImageError("no digit found: the image is blank")
    crop = x[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
    h, w = crop.shape
    scale = BOX / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))  # PIL wants (width, height)
    small = Image.fromarray(crop.astype(np.float32), mode="F").resize(
        size, Image.Resampling.LANCZOS
    )
    digit = np.clip(np.asarray(small, dtype=np.float64), 0, 255)  # (h', w'), both <= 20
    total = digit.sum()
    if total <= 0:
        raise ImageError("no digit found: the image is blank")
    ys, xs = np.indices(digit.shape)
    cy, cx = (ys * digit).sum() / total, (xs * digit).sum() / total
    # MNIST's digits have their centre of mass at pixel (14, 14), half a pixel past the
    # middle of the grid (the test set's mean is there).
    centre = FIELD / 2
    top = int(np.clip(round(centre - cy), 0, FIELD - digit.shape[0]))
    left = int(np.clip(round(centre - cx), 0, FIELD - digit.shape[1]))
    field = np.zeros((FIELD, FIELD))
    field[top : top + digit.shape[0], left : left + digit.shape[1]] = digit
    return np.round(field).astype(np.uint8)


def load_digit(
    source: Path | BinaryIO, polarity: Polarity = "auto", max_pixels: int = MAX_PIXELS
) -> np.ndarray:
    """An image file (a path, or an open binary file such as an upload) as the model's input
    pixels: uint8 (28, 28), 0-255, light on dark.

    An image that declares more than `max_pixels` pixels is refused before its data is read:
    a small file can declare a huge canvas (a decompression bomb)."""
    try:
        with warnings.catch_warnings():
            # Pillow warns past its own, higher limit; ours below refuses such an image anyway.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(source)
        with img:
            width, height = img.size
            if width * height > max_pixels:
                raise ImageError(
                    f"the image is {width}x{height} pixels, more than the {max_pixels:,} allowed "
                    "(a decompression bomb, or a photo to scale down first)"
                )
            img.load()
            gray = to_gray(img)
    except ImageError:
        raise
    except FileNotFoundError:
        raise ImageError("no such file") from None
    except IsADirectoryError:
        raise ImageError("is a directory, not an image") from None
    except UnidentifiedImageError:
        raise ImageError("not an image file Pillow can read") from None
    except Image.DecompressionBombError as err:  # a frame or tile past Pillow's own limit
        raise ImageError(f"refused as a decompression bomb: {err}") from None
    except (OSError, SyntaxError, ValueError) as err:  # truncated or corrupt image data
        raise ImageError(f"cannot read the image: {err}") from None
    return center_mnist(light_on_dark(gray, polarity))


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def classify(
    sess: ort.InferenceSession, digits: list[np.ndarray], files: list[str]
) -> list[Prediction]:
    """Run the model once on all digits (each uint8 (28, 28))."""
    batch = np.stack(digits)[:, None].astype(runtime.input_dtype(sess))  # (N, 1, 28, 28)
    logits = runtime.logits(sess, batch, batch_size=len(batch))  # (N, 10), raw 0-255 in
    probs = softmax(logits.astype(np.float64))
    return [
        Prediction(
            file=f,
            digit=int(p.argmax()),
            probability=round(float(p.max()), 6),
            probabilities=[round(float(v), 6) for v in p],
        )
        for f, p in zip(files, probs, strict=True)
    ]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="mnist-predict",
        description=__doc__.splitlines()[0],
        epilog="Exit status: 0 all files classified, 1 some failed, 2 usage error.",
    )
    model_ref.add_arguments(p)
    p.add_argument("images", nargs="+", type=Path, help="image files (PNG, JPEG, ...)")
    p.add_argument(
        "--polarity",
        choices=["auto", "light-on-dark", "dark-on-light"],
        default="auto",
        help="digit colour against the background; auto: decided from the image border",
    )
    p.add_argument("--json", action="store_true", help="print a JSON list instead of lines")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        source, sess = model_ref.open_model(args)
    except UsageError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2

    # (file, digit pixels or error message), in the order given
    loaded: list[tuple[str, np.ndarray | str]] = []
    for path in args.images:
        try:
            loaded.append((str(path), load_digit(path, args.polarity)))
        except ImageError as err:
            loaded.append((str(path), str(err)))
            print(f"error: {path}: {err}", file=sys.stderr)
    good = [(f, d) for f, d in loaded if isinstance(d, np.ndarray)]
    try:
        preds = iter(classify(sess, [d for _, d in good], [f for f, _ in good]) if good else [])
    except Exception as err:  # a model with another input shape, say
        print(f"error: model {source.path} cannot classify digits: {err}", file=sys.stderr)
        return 2

    results: list[dict] = []
    for f, d in loaded:
        if isinstance(d, str):
            results.append({"file": f, "error": d})
            continue
        p = next(preds)
        results.append(p.model_dump())
        if not args.json:
            print(f"{f}: {p.digit} (p={p.probability:.3f})")
    if args.json:
        print(json.dumps(results, indent=2))
    return 1 if len(good) < len(loaded) else 0


if __name__ == "__main__":
    sys.exit(main())

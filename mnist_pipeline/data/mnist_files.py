"""The raw MNIST files: official mirrors, checksums, retried downloads and the IDX format.

The URLs and md5s are torchvision's (`torchvision.datasets.MNIST`; a test keeps them equal),
written here so that `prepare` starts without importing torch.
A mirror override (the `MNIST_MIRROR` environment variable, else `prepare.mirror` in
params.yaml) replaces the official mirrors: an http(s):// or file:// URL, or a local folder.
"""

from __future__ import annotations

import gzip
import hashlib
import logging
import os
import random
import shutil
import struct
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mnist_pipeline.errors import StageError

log = logging.getLogger(__name__)

MIRROR_ENV = "MNIST_MIRROR"
# A file in `md5sum` format that replaces the official checksums: for test fixtures and for
# datasets in the MNIST format with the same file names (Fashion-MNIST, say).
MD5SUMS_ENV = "MNIST_MD5SUMS"
OFFICIAL_MIRRORS: tuple[str, ...] = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "http://yann.lecun.com/exdb/mnist/",
)
# (file name, md5) of the four files, in torchvision's order: train images, train labels,
# test images, test labels.
FILES: tuple[tuple[str, str], ...] = (
    ("train-images-idx3-ubyte.gz", "f68b3c2dcbeaaa9fbdd348bbdeb94873"),
    ("train-labels-idx1-ubyte.gz", "d53e105ee54ea40749a09fcbcd1e9432"),
    ("t10k-images-idx3-ubyte.gz", "9fb629c4189551a2d022fa330f9573f3"),
    ("t10k-labels-idx1-ubyte.gz", "ec29112dd5afa0611ce80d1b7f02629c"),
)
HOW_TO_MIRROR = (
    f"Set {MIRROR_ENV} to a folder holding the four .gz files, or to a file:// or http(s):// "
    f"URL of one (for example `export {MIRROR_ENV}=../shared/data/mnist`), or set "
    "`prepare.mirror` in params.yaml."
)

_IDX_DTYPES: dict[int, Any] = {
    0x08: np.uint8,
    0x09: np.int8,
    0x0B: ">i2",
    0x0C: ">i4",
    0x0D: ">f4",
    0x0E: ">f8",
}
_IDX_CODES = {np.dtype(np.uint8): 0x08, np.dtype(np.int8): 0x09}


class ChecksumError(StageError):
    pass


@dataclass(frozen=True)
class Mirror:
    """One place to fetch the files from: a URL prefix or a local folder."""

    base: str

    @property
    def is_local(self) -> bool:
        return not self.base.startswith(("http://", "https://"))

    def locate(self, filename: str) -> str:
        if self.base.startswith("file://"):
            return str(Path(urllib.request.url2pathname(self.base[len("file://") :])) / filename)
        if self.is_local:
            return str(Path(self.base).expanduser() / filename)
        return self.base.rstrip("/") + "/" + filename


def resolve_mirrors(
    param_mirror: str | None, env: Mapping[str, str] | None = None
) -> list[Mirror]:
    """The override alone if one is set (so offline machines never touch the network)."""
    env = os.environ if env is None else env
    override = env.get(MIRROR_ENV) or param_mirror
    if override:
        return [Mirror(override)]
    return [Mirror(m) for m in OFFICIAL_MIRRORS]


def md5sum(path: Path) -> str:
    h = hashlib.md5(usedforsecurity=False)
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _fetch_once(source: str, dest: Path, timeout_s: float, local: bool) -> None:
    if local:
        if not Path(source).is_file():
            raise FileNotFoundError(f"no such file: {source}")
        shutil.copyfile(source, dest)
        return
    req = urllib.request.Request(source, headers={"User-Agent": "mnist-pipeline"})
    with urllib.request.urlopen(req, timeout=timeout_s) as resp, dest.open("wb") as out:
        shutil.copyfileobj(resp, out)


def fetch_file(
    filename: str,
    md5: str,
    mirrors: list[Mirror],
    dest_dir: Path,
    retries: int = 3,
    timeout_s: float = 60.0,
    sleep: Callable[[float], None] = time.sleep,
) -> Path:
    """Fetch one file into `dest_dir` and verify its md5; a verified copy there is reused.

    Mirrors are tried in order; each network mirror up to `retries` times with exponential
    backoff and jitter. A file with the wrong checksum is discarded and fetched again.
    """
    dest = dest_dir / filename
    if dest.is_file():
        if md5sum(dest) == md5:
            log.info("%s: already present, checksum ok", filename)
            return dest
        log.warning("%s: present but checksum does not match, fetching again", filename)
        dest.unlink()
    dest_dir.mkdir(parents=True, exist_ok=True)
    tmp = dest_dir / f".{filename}.part"
    errors: list[str] = []
    for mirror in mirrors:
        source = mirror.locate(filename)
        attempts = 1 if mirror.is_local else retries
        for attempt in range(1, attempts + 1):
            try:
                log.info(
                    "%s: fetching from %s (attempt %d/%d)", filename, source, attempt, attempts
                )
                _fetch_once(source, tmp, timeout_s, mirror.is_local)
                got = md5sum(tmp)
                if got != md5:
                    raise ChecksumError(
                        f"checksum mismatch for {filename} from {source}: "
                        f"expected md5 {md5}, got {got} (truncated or corrupt file)"
                    )
                os.replace(tmp, dest)
                return dest
            except (OSError, urllib.error.URLError, ChecksumError) as err:
                errors.append(f"  {source} (attempt {attempt}): {err}")
                log.warning("%s: %s", filename, err)
                if attempt < attempts:
                    sleep(min(30.0, 2.0 ** (attempt - 1)) * (1 + random.random()))
            finally:
                tmp.unlink(missing_ok=True)
    raise StageError(
        f"could not fetch {filename} (expected md5 {md5}) from any mirror:\n"
        + "\n".join(errors)
        + f"\n{HOW_TO_MIRROR}"
    )


def expected_files(env: Mapping[str, str] | None = None) -> tuple[tuple[str, str], ...]:
    """(name, md5) of the four files: the official ones unless `MNIST_MD5SUMS` names others."""
    env = os.environ if env is None else env
    sums_file = env.get(MD5SUMS_ENV)
    if not sums_file:
        return FILES
    try:
        lines = Path(sums_file).read_text().split("\n")
    except OSError as err:
        raise StageError(f"{MD5SUMS_ENV}={sums_file}: cannot read: {err}") from None
    sums = {}
    for line in filter(None, (ln.strip() for ln in lines)):
        md5, _, name = line.partition(" ")
        sums[name.strip().lstrip("*")] = md5
    missing = [name for name, _ in FILES if name not in sums]
    if missing:
        raise StageError(f"{MD5SUMS_ENV}={sums_file}: no checksum for {', '.join(missing)}")
    log.warning("verifying against checksums from %s, not the official ones", sums_file)
    return tuple((name, sums[name]) for name, _ in FILES)


def fetch_all(
    mirrors: list[Mirror], dest_dir: Path, retries: int = 3, timeout_s: float = 60.0
) -> dict[str, Path]:
    return {
        name: fetch_file(name, md5, mirrors, dest_dir, retries, timeout_s)
        for name, md5 in expected_files()
    }


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (gzipped or not) into an array of its declared shape and type."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as err:
        raise StageError(f"{path}: cannot read IDX file: {err}") from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES:
        raise StageError(f"{path}: not an IDX file (bad magic number)")
    ndim = data[3]
    header = 4 + 4 * ndim
    shape = struct.unpack(f">{ndim}I", data[4:header])
    dtype = np.dtype(_IDX_DTYPES[data[2]])
    expected = int(np.prod(shape)) * dtype.itemsize
    if len(data) - header != expected:
        raise StageError(
            f"{path}: IDX header says shape {shape} ({expected} bytes) "
            f"but the file holds {len(data) - header}"
        )
    return (
        np.frombuffer(data, dtype=dtype, offset=header)
        .reshape(shape)
        .astype(dtype.newbyteorder("="))
    )


def write_idx(path: Path, array: np.ndarray) -> None:
    """Write a uint8/int8 array as an IDX file, gzipped when the name ends in .gz."""
    code = _IDX_CODES.get(array.dtype)
    if code is None:
        raise ValueError(f"write_idx supports uint8 and int8, not {array.dtype}")
    payload = bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    payload += np.ascontiguousarray(array).tobytes()
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "wb") as f:
        f.write(payload)


def load_raw(files: Mapping[str, Path]) -> dict[str, np.ndarray]:
    """The four arrays: train/test images (N, 28, 28) uint8 and labels (N,) uint8."""
    (tri, _), (trl, _), (tei, _), (tel, _) = FILES
    out = {
        "train_images": read_idx(files[tri]),
        "train_labels": read_idx(files[trl]),
        "test_images": read_idx(files[tei]),
        "test_labels": read_idx(files[tel]),
    }
    for split in ("train", "test"):
        imgs, labels = out[f"{split}_images"], out[f"{split}_labels"]
        if imgs.ndim != 3 or imgs.shape[1:] != (28, 28) or labels.shape != (imgs.shape[0],):
            raise StageError(
                f"{split}: expected images (N, 28, 28) and labels (N,), "
                f"got {imgs.shape} and {labels.shape}"
            )
    return out

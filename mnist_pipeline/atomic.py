"""Atomic, byte-stable writers: every file a stage produces goes through one of these.

Atomic: an interrupted stage never leaves a half-written file for DVC to cache (temp file,
then rename). Byte-stable: the same content gives the same bytes whatever the temp name, the
folder, the clock or the process, so `dvc.lock` only moves when a result does. The usual
sources of drift are handled here, once: JSON key order, the archive folder `torch.save`
names after the file it writes to, the order of safetensors' metadata, and PNG text chunks.
"""

from __future__ import annotations

import errno
import io
import json
import os
import shutil
import struct
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mnist_pipeline.errors import StageError

if TYPE_CHECKING:
    import numpy as np
    from matplotlib.figure import Figure

_UMASK = os.umask(0)
os.umask(_UMASK)


NO_SPACE = {errno.ENOSPC, errno.EDQUOT}


@contextmanager
def naming_a_full_disk(path: Path) -> Iterator[None]:
    """A full disk (or quota) while writing `path` becomes a StageError that names it: the
    OS error of a write names no file."""
    try:
        yield
    except OSError as err:
        if err.errno not in NO_SPACE:
            raise
        raise StageError(f"no space left on the device writing {path}: {err.strerror}") from err


def remove_stale(path: Path) -> list[Path]:
    """Remove the temporary siblings (`.<name>.*.tmp`, `.<name>.old`) that an `atomic_dir` or
    `atomic_path` of `path` killed before it finished left behind; call it only where no other
    process can be writing `path` (a stage holds its lock). Returns what it removed."""
    stale = [*path.parent.glob(f".{path.name}.*.tmp"), path.with_name(f".{path.name}.old")]
    removed = []
    for p in stale:
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
            removed.append(p)
        elif p.exists():
            p.unlink(missing_ok=True)
            removed.append(p)
    return removed


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it is renamed onto `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp_path = Path(tmp)
    tmp_path.chmod(0o666 & ~_UMASK)  # mkstemp makes it private; outputs are ordinary files
    try:
        with naming_a_full_disk(path):
            yield tmp_path
        os.replace(tmp_path, path)
    finally:
        tmp_path.unlink(missing_ok=True)


@contextmanager
def atomic_dir(path: Path) -> Iterator[Path]:
    """Yield a temporary folder beside `path`; on success it replaces `path` whole."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
    tmp.chmod(0o777 & ~_UMASK)  # mkdtemp makes it private; the output is an ordinary folder
    try:
        with naming_a_full_disk(path):
            yield tmp
        if path.exists():
            old = path.with_name(f".{path.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_bytes(path: Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def json_text(obj: Any) -> str:
    """The one JSON spelling of `obj`: sorted keys, two-space indent, a final newline."""
    return json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def write_json(path: Path, obj: Any) -> None:
    write_bytes(path, json_text(obj).encode())


def write_torch(path: Path, obj: Any) -> None:
    """`torch.save` through memory: written to a file, the zip archive's inner folder would be
    named after that file, here a random temp name."""
    import torch

    buf = io.BytesIO()
    torch.save(obj, buf)
    write_bytes(path, buf.getvalue())


def safetensors_bytes(
    arrays: Mapping[str, np.ndarray], metadata: Mapping[str, str] | None = None
) -> bytes:
    """A safetensors file with a canonical header: the library keeps `__metadata__` in a hash
    map, whose order changes from run to run, so the header is written again with sorted keys
    (the tensor data and its offsets are untouched; spaces pad the header, as the format
    allows)."""
    from safetensors.numpy import save

    raw = save(dict(arrays), metadata=dict(metadata) if metadata else None)
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    text = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + raw[8 + n :]


def write_safetensors(
    path: Path, arrays: Mapping[str, np.ndarray], metadata: Mapping[str, str] | None = None
) -> None:
    write_bytes(path, safetensors_bytes(arrays, metadata))


def write_figure(path: Path, fig: Figure, dpi: int) -> None:
    """Lay a matplotlib figure out, write it as PNG without the text chunk (software version)
    Matplotlib adds, and close it."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, metadata={"Software": None})
    write_bytes(path, buf.getvalue())
    plt.close(fig)

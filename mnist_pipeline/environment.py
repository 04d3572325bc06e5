"""The software and hardware a result depends on: the compute libraries and the CPU's kernels.

The locked versions of the libraries that compute the pipeline's results are written out to
`compute-env.txt`, which every stage in `dvc.yaml` depends on: a change of any of them re-runs
the pipeline, while the rest of `uv.lock` (test tools, servers, Prefect) does not. A test
keeps the file in line with `uv.lock`; after `uv lock`, regenerate it with

    uv run python -m mnist_pipeline.environment --lock uv.lock --write compute-env.txt

The resume fingerprint and the provenance records use the versions actually installed.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import platform
import sys
import tomllib
from pathlib import Path

# What computes the results: tensors, training, metrics, pruning, file formats, export and
# ONNX Runtime, the plots (Matplotlib writes PNGs through Pillow) and DVCLive's curves.
COMPUTE_PACKAGES: tuple[str, ...] = (
    "dvclive",
    "matplotlib",
    "numpy",
    "onnx",
    "onnx-ir",
    "onnxruntime",
    "onnxscript",
    "pillow",
    "pytorch-lightning",
    "safetensors",
    "torch",
    "torch-pruning",
    "torchmetrics",
    "torchvision",
)
_HEADER = """\
# The locked versions of the libraries that compute the pipeline's results (generated from
# uv.lock; tests check it). Every stage in dvc.yaml depends on this file, so a new version of
# any of them re-runs the pipeline. Regenerate after `uv lock` with:
#   uv run python -m mnist_pipeline.environment --lock uv.lock --write compute-env.txt
"""


def installed_versions(packages: tuple[str, ...] = COMPUTE_PACKAGES) -> dict[str, str | None]:
    """The versions installed in this interpreter (None: not installed), and Python's."""
    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in packages:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def locked_lines(lock: Path, packages: tuple[str, ...] = COMPUTE_PACKAGES) -> list[str]:
    """`name==version` for each package in `uv.lock`, with its Python markers when the lock
    holds several versions of it."""
    entries = tomllib.loads(lock.read_text()).get("package", [])
    lines = []
    for name in packages:
        found = [e for e in entries if e.get("name") == name]
        if not found:
            raise ValueError(f"{lock}: no package {name!r}")
        for e in found:
            markers = e.get("resolution-markers", [])
            suffix = f" ; {' or '.join(markers)}" if markers and len(found) > 1 else ""
            lines.append(f"{name}=={e['version']}{suffix}")
    return lines


def compute_env_text(lock: Path) -> str:
    return _HEADER + "".join(f"{line}\n" for line in locked_lines(lock))


def cpu_features() -> dict[str, object]:
    """The CPU and the features that choose kernels: bf16 autocast runs natively only with
    AVX512-BF16 or AMX, int8 inference is fast with VNNI or AMX-INT8, and PyTorch picks its
    vectorized kernels by the best ISA it finds."""
    flags: set[str] = set()
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                model = value.strip()
            elif key.strip() in ("flags", "Features") and not flags:
                flags = set(value.split())
    except OSError:
        pass
    facts: dict[str, object] = {
        "model": model,
        "machine": platform.machine(),
        "avx2": "avx2" in flags,
        "avx512f": "avx512f" in flags,
        "avx512_bf16": "avx512_bf16" in flags,
        "avx512_vnni": "avx512_vnni" in flags,  # int8 dot products (ONNX Runtime's int8 kernels)
        "amx": "amx_tile" in flags,
        "amx_int8": "amx_int8" in flags,
    }
    torch = sys.modules.get("torch")  # only when the stage uses torch: prepare does not
    if torch is not None:
        facts["torch_capability"] = torch.backends.cpu.get_cpu_capability()
        facts["torch_threads"] = torch.get_num_threads()
    return facts


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m mnist_pipeline.environment", description=__doc__.splitlines()[0]
    )
    p.add_argument("--lock", type=Path, default=Path("uv.lock"))
    p.add_argument("--write", type=Path, default=None, help="write here (default: print)")
    args = p.parse_args(argv)
    text = compute_env_text(args.lock)
    if args.write is None:
        sys.stdout.write(text)
    else:
        from mnist_pipeline.atomic import write_bytes

        write_bytes(args.write, text.encode())
    return 0


if __name__ == "__main__":
    sys.exit(main())

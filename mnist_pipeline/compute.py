"""How a stage computes: the kernels, the thread count and the precision, pinned from params.

The same commit, params and locked libraries give the same bytes on any x86-64 CPU with AVX2
only if nothing in the arithmetic is chosen by the machine. The libraries choose a lot:

- PyTorch's own kernels are compiled several times (default, AVX2, AVX-512) and the best the
  CPU has is picked at the first operation: `ATEN_CPU_CAPABILITY` caps it.
- oneDNN (convolutions, pooling) JIT-compiles for the best ISA it finds:
  `ONEDNN_MAX_CPU_ISA` caps it.
- MKL (linear layers, and PyTorch's elementwise exp/log/sqrt through its VML) picks a code
  path by CPU model *and vendor*: `MKL_CBWR=AVX2` is ignored on AMD (MKL_VERBOSE says
  `CNR:AUTO` there), so the portable branch is `COMPATIBLE`, the one Intel documents as
  giving the same results on Intel and non-Intel processors.
- Every reduction is split over the threads there are, so the thread count changes the last
  bits: it is a param, and the same on a laptop and a 64-core node.
- bf16 autocast runs natively only with AVX512-BF16 or AMX, so `precision: auto` resolves to
  32-true under the portable profile.

These are read when the libraries initialise, so `pin_environment` runs before torch is
imported: `stages/__init__.py` calls it for every `python -m stages.<name>` process (and each
DDP process Lightning starts the same way). A stage's `main` then calls `apply`, which sets the
thread count, checks that the libraries really run as pinned, and returns what they report
from inside for the provenance record.

Profiles (`compute.profile`):
- `portable` (default): the settings above; results reproduce byte for byte across CPUs.
- `fast`: whatever the machine does best (native kernels, bf16 where native, every core);
  results reproduce on the same CPU model only.

Under either profile, OpenMP's threads wait for each other passively (`OMP_WAIT_POLICY`,
`WAIT_POLICY`): a thread that reaches a barrier first sleeps instead of spinning. With another
process busy on one of the cores, spinning threads keep the core the late thread needs, and a
2-thread training step took many times as long (docs/speed.md, "A busy core"). The policy decides
how threads wait, not how the work is split, so the results are the same under both (a test
trains under each and compares the bytes): it is a fixed choice, not a param, and a value
already in the environment wins.
"""

from __future__ import annotations

import ctypes
import functools
import os
import re
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mnist_pipeline.params.schema import ComputeParams

PORTABLE, FAST = "portable", "fast"
# compute.isa -> (ATEN_CPU_CAPABILITY, ONEDNN_MAX_CPU_ISA, the CPU flag it needs)
ISAS = {"avx2": ("avx2", "AVX2", "avx2"), "avx512": ("avx512", "AVX512_CORE", "avx512f")}
# MKL's conditional numerical reproducibility branch; COMPATIBLE is the one kept on non-Intel
# CPUs, STRICT also pins the few functions CNR alone leaves free.
MKL_CBWR = "COMPATIBLE,STRICT"
# What torch.backends.cpu.get_cpu_capability() says for each ATEN_CPU_CAPABILITY value, and
# how oneDNN's verbose `isa:` line begins at each ONEDNN_MAX_CPU_ISA.
_TORCH_NAMES = {"avx2": "AVX2", "avx512": "AVX512"}
_ONEDNN_NAMES = {"avx2": "Intel AVX2", "avx512": "Intel AVX-512"}
# mkl_serv_cbwr_get's codes (mkl_service.h); STRICT is a flag bit on top of the branch.
_MKL_BRANCHES = {
    0: "OFF", 1: "BRANCH_OFF", 2: "AUTO", 3: "COMPATIBLE", 4: "SSE2", 6: "SSSE3", 7: "SSE4_1",
    8: "SSE4_2", 9: "AVX", 10: "AVX2", 11: "AVX512_MIC", 12: "AVX512", 13: "AVX512_MIC_E1",
    14: "AVX512_E1",
}  # fmt: skip
_MKL_STRICT = 0x10000
WAIT_POLICY = "PASSIVE"


def environment_for(params: ComputeParams) -> dict[str, str]:
    """The variables a portable process must start with ({} for the fast profile)."""
    if params.profile != PORTABLE:
        return {}
    aten, onednn, _ = ISAS[params.isa]
    threads = str(params.threads)
    return {
        "ATEN_CPU_CAPABILITY": aten,
        "ONEDNN_MAX_CPU_ISA": onednn,
        "MKL_CBWR": MKL_CBWR,
        "MKL_DYNAMIC": "FALSE",  # CNR needs a fixed thread count, so no dynamic adjustment
        "MKL_NUM_THREADS": threads,
        "OMP_NUM_THREADS": threads,
    }


def pin_environment(params: ComputeParams) -> None:
    """Set the variables for this process and its children; call before torch is imported.
    OpenMP reads its wait policy when it loads, so it is set here too (unless already set)."""
    os.environ.update(environment_for(params))
    os.environ.setdefault("OMP_WAIT_POLICY", WAIT_POLICY)


def pin_from_argv(argv: list[str]) -> None:
    """`pin_environment` from the `compute` section of the params file a stage's command line
    names (`--params`, default params.yaml). A missing or invalid file pins nothing: the
    stage's own `load_params` then reports it properly."""
    from mnist_pipeline.errors import ParamsError
    from mnist_pipeline.params.schema import load_params

    path = "params.yaml"
    for i, arg in enumerate(argv):
        if arg == "--params" and i + 1 < len(argv):
            path = argv[i + 1]
        elif arg.startswith("--params="):
            path = arg.partition("=")[2]
    try:
        params = load_params(path)
    except ParamsError:
        return
    pin_environment(params.compute)


def cpu_flags() -> set[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() in ("flags", "Features"):
                return set(value.split())
    except OSError:
        pass
    return set()


@functools.cache  # fixed once MKL has initialised: the same answer for the whole process
def mkl_cbwr() -> str | None:
    """MKL's reproducibility branch as MKL itself reports it (None: no MKL in this torch)."""
    import torch

    lib = Path(torch.__file__).parent / "lib" / "libtorch_cpu.so"
    try:
        get = ctypes.CDLL(str(lib)).mkl_serv_cbwr_get
    except (OSError, AttributeError):
        return None
    get.restype, get.argtypes = ctypes.c_int, [ctypes.c_int]
    code = get(-1)  # MKL_CBWR_ALL: the branch and the STRICT bit
    name = _MKL_BRANCHES.get(code & ~_MKL_STRICT, str(code))
    return f"{name},STRICT" if code & _MKL_STRICT else name


@functools.cache  # fixed once oneDNN has initialised: one probe a process
def onednn_isa() -> str | None:
    """The ISA oneDNN reports it dispatches to ("Intel AVX2", ...), from its verbose output of
    one small convolution (None: no oneDNN, or it printed nothing)."""
    import torch

    if not torch.backends.mkldnn.is_available():
        return None
    x, w = torch.ones(16, 1, 8, 8), torch.ones(2, 1, 3, 3)
    with tempfile.TemporaryFile() as out:
        sys.stdout.flush()
        saved = os.dup(1)  # oneDNN writes to the C-level stdout, not to sys.stdout
        os.dup2(out.fileno(), 1)
        try:
            with torch.backends.mkldnn.verbose(1):
                torch.nn.functional.conv2d(x, w)
        finally:
            os.dup2(saved, 1)
            os.close(saved)
        out.seek(0)
        text = out.read().decode(errors="replace")
    found = re.search(r"isa:([^,\n]+)", text)
    return found.group(1).strip() if found else None


def apply(params: ComputeParams, *, check: bool = True) -> dict[str, Any]:
    """Set the thread count; under the portable profile, raise `StageError` unless the
    libraries run as pinned (torch imported before `pin_environment`, or an ISA the CPU lacks).
    Returns what the libraries report from inside, for the provenance record."""
    import torch

    from mnist_pipeline.errors import StageError

    if params.profile == PORTABLE:
        torch.set_num_threads(params.threads)
    facts = {
        "profile": params.profile,
        "torch_capability": torch.backends.cpu.get_cpu_capability(),
        "onednn_isa": onednn_isa(),
        "mkl_cbwr": mkl_cbwr(),
        "threads": torch.get_num_threads(),
    }
    if params.profile != PORTABLE or not check:
        return facts
    aten, _, flag = ISAS[params.isa]
    problems = []
    if flag not in cpu_flags():
        problems.append(f"compute.isa is {params.isa}, but this CPU has no {flag}")
    want = {
        "torch_capability": _TORCH_NAMES[aten],
        "mkl_cbwr": MKL_CBWR,
        "threads": params.threads,
    }
    problems += [
        f"{key} is {facts[key]!r}, the portable profile needs {value!r}"
        for key, value in want.items()
        if facts[key] is not None and facts[key] != value
    ]
    isa = facts["onednn_isa"]
    if isa is not None and not str(isa).startswith(_ONEDNN_NAMES[params.isa]):
        problems.append(f"oneDNN runs {isa!r}, the portable profile needs {params.isa}")
    if problems:
        raise StageError(
            "the portable profile is not in force in this process: "
            + "; ".join(problems)
            + " (a process must pin it before importing torch: run the stage as "
            "`python -m stages.<name>`, which does, or call "
            "mnist_pipeline.compute.pin_environment first)"
        )
    return facts

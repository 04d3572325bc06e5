"""Peak memory of this process: host RSS and, on a GPU, what PyTorch's allocator held at most.

Children are left out: the seed recipe's DataLoader workers are forks that share most of their
pages with this process, so their RSS would count the same memory again.
"""

from __future__ import annotations

import resource
import sys

import torch


def peak_rss_mb() -> float:
    kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # Linux reports KiB, macOS bytes.
    return round(kib / (1 << 20 if sys.platform == "darwin" else 1 << 10), 1)


def peak() -> dict[str, float | None]:
    """Peak resident set size and peak GPU memory allocated, in MiB."""
    gpu = None
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        gpu = round(torch.cuda.max_memory_allocated() / (1 << 20), 1)
    return {"peak_rss_mb": peak_rss_mb(), "gpu_peak_mb": gpu}

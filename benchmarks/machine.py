"""The machine a benchmark ran on, written next to its numbers."""

from __future__ import annotations

import os
import platform
import subprocess
from typing import Any

import psutil
import pytorch_lightning as pl
import torch


def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return platform.processor() or "unknown"
    for line in out.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "Model name":
            return value.strip()
    return platform.processor() or "unknown"


def describe() -> dict[str, Any]:
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {
        "cpu": cpu_model(),
        "cpu_cores": psutil.cpu_count(logical=False),
        "cpu_threads": psutil.cpu_count(logical=True),
        "memory_gb": round(psutil.virtual_memory().total / 1e9, 1),
        "gpu": gpu,
        "torch": torch.__version__,
        "lightning": pl.__version__,
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        # A shared machine shows here: other work slows every variant, measured interleaved.
        "load_avg_1m_at_start": round(os.getloadavg()[0], 2),
    }

"""Measuring: a figure as the median of its repeats, and the machine it was measured on."""

from __future__ import annotations

import os
import platform
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from melgenre import __version__


def stat(values: Iterable[float], unit: str) -> dict[str, Any]:
    """A figure: the median of its repeats, the repeats themselves and the unit."""
    vals = [float(v) for v in values]
    return {"median": float(np.median(vals)), "values": vals, "unit": unit}


def machine_info() -> dict[str, Any]:
    """Cores, CPU model (and its int8 features: :func:`melgenre.models.int8_cpu`), memory, versions, GPU (if any)
    and load average of this machine."""
    import torch

    from melgenre.models import int8_cpu

    cpu = int8_cpu()
    mem_kb = None
    try:
        mem_kb = int(next(l for l in Path("/proc/meminfo").read_text().splitlines()
                          if l.startswith("MemTotal")).split()[1])
    except (OSError, StopIteration, ValueError):
        pass
    gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] \
        if torch.cuda.is_available() else []
    versions = {"python": platform.python_version(), "melgenre": __version__, "torch": torch.__version__}
    for name in ("numpy", "librosa", "onnxruntime", "lightning"):
        try:
            versions[name] = __import__(name).__version__
        except (ImportError, AttributeError):
            pass
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count() or 1
    return {
        "hostname": platform.node(),
        "platform": platform.platform(),
        "cpu_model": cpu.model,
        "int8_cpu": str(cpu),
        "cores": os.cpu_count() or 1,
        "usable_cores": usable,
        "memory_gb": round(mem_kb / 1024 ** 2, 1) if mem_kb else None,
        "torch_threads": torch.get_num_threads(),
        "cuda": bool(gpus),
        "gpus": gpus,
        "versions": versions,
        "loadavg": [round(x, 2) for x in os.getloadavg()],
    }

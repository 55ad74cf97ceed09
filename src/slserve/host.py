"""Facts about this host that several parts size themselves by."""

from __future__ import annotations

import functools
import os
from pathlib import Path


def cores() -> int:
    """The cores this process may run on (its CPU affinity, which a container's limits narrow)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


@functools.cache
def has_gpu() -> bool:
    """Whether the host shows an NVIDIA GPU (its driver lists one). Whether a runtime can use it is known only
    once an instance has loaded: pools trust their instances' reports over this."""
    gpus = Path("/proc/driver/nvidia/gpus")
    return gpus.is_dir() and any(gpus.iterdir())

"""Facts about this host that several parts size themselves by."""

from __future__ import annotations

import os


def cores() -> int:
    """The cores this process may run on (its CPU affinity, which a container's limits narrow)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1

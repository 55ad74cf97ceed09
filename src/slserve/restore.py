"""What a process restored from a memory snapshot (Lambda SnapStart, Modal's snapshots) must do first: every copy
restored from one snapshot starts with the snapshot's random state, so canary draws, request ids and sampling
would be alike in all of them unless each draws a fresh seed from the kernel."""

from __future__ import annotations

import os
import random
import sys


def reseed() -> int:
    """Fresh random state for `random`, numpy and torch (where loaded); returns the seed."""
    seed = int.from_bytes(os.urandom(8), "little")
    random.seed(seed)
    numpy = sys.modules.get("numpy")
    if numpy is not None:
        numpy.random.seed(seed % 2**32)
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.manual_seed(seed)
    return seed

"""What a function's requests cost to run remotely, from measured compute, beside what its tier charges."""

from __future__ import annotations

import math
import statistics
import time
from pathlib import Path

from slserve.platform.base import Deployed
from slserve.router.config import load_routes
from slserve.snapshot import ArtifactStore


def measure_compute(
    store: ArtifactStore, function: Deployed, device: str | None = "cpu", calls: int = 20
) -> tuple[float, str]:
    """The median time (ms) of the function's model call on its example input, here, and the device it ran on
    (`device`; None: as the spec and this host say, the GPU where there is one); init and warm-up left out."""
    from slserve.runtime import load_runtime
    from slserve.runtime.tensors import example_inputs

    assert function.digest is not None
    runtime = load_runtime(store.open(function.digest), device=device)
    inputs = example_inputs(runtime.spec.signature)
    runtime.infer(inputs)
    times = []
    for _ in range(calls):
        started = time.perf_counter()
        runtime.infer(inputs)
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times), runtime.device


def charged_per_million(function: Deployed, compute_ms: float, routes: Path) -> float:
    """What the function's tier charges a million such requests, in currency units (its prices are micro-units
    per request), or 0 when the routes define no such tier."""
    tier = load_routes(routes).tiers.get(function.spec.tier)
    if tier is None:
        return 0.0
    return float(tier.price_per_request + math.ceil(compute_ms) * tier.price_per_compute_ms)

"""What a function's requests cost to run remotely, from measured compute, beside what its tier charges."""

from __future__ import annotations

import dataclasses
import datetime
import socket
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import orjson

from slserve.platform.base import Deployed
from slserve.router.config import load_routes
from slserve.router.pricing import price
from slserve.snapshot import ArtifactStore

ROUNDS, CALLS = 5, 20


@dataclass(frozen=True)
class Measured:
    compute_ms: float
    device: str
    provenance: str  # how, where and when it was measured


def measure_compute(store: ArtifactStore, function: Deployed, device: str | None = "cpu") -> Measured:
    """The time (ms) of the function's model call on its example input, and the device it ran on (`device`;
    None: as the spec and this host say, the GPU where there is one); init and warm-up left out.

    Measured once per build and kept in the store beside it: a cost table read twice gives one figure. The
    figure is the lowest of several rounds' medians, the one least raised by whatever else this host runs."""
    assert function.digest is not None
    kept = store.root / "measured" / f"{function.digest}-{device or 'auto'}.json"
    if kept.is_file():
        doc = orjson.loads(kept.read_bytes())
        return Measured(doc["compute_ms"], doc["device"], doc["provenance"])
    from slserve.runtime import load_runtime
    from slserve.runtime.tensors import example_inputs

    runtime = load_runtime(store.open(function.digest), device=device)
    inputs = example_inputs(runtime.spec.signature)
    runtime.infer(inputs)
    medians = []
    for _ in range(ROUNDS):
        times = []
        for _ in range(CALLS):
            started = time.perf_counter()
            runtime.infer(inputs)
            times.append((time.perf_counter() - started) * 1000)
        medians.append(statistics.median(times))
    when = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    provenance = (
        f"{min(medians):.2f} ms on {runtime.device}: the lowest of {ROUNDS} medians of {CALLS} calls on its "
        f"example input, measured {when} on {socket.gethostname()} for build {function.digest[:12]} (kept: a "
        "rebuild measures again)"
    )
    measured = Measured(min(medians), runtime.device, provenance)
    kept.parent.mkdir(parents=True, exist_ok=True)
    kept.write_bytes(orjson.dumps(dataclasses.asdict(measured)))
    return measured


def charged_per_million(function: Deployed, routes: Path) -> float:
    """What the function's tier charges a million requests of its example input (one row, no tokens counted),
    in currency units (its prices are micro-units per request), or 0 when the routes define no such tier."""
    tier = load_routes(routes).tiers.get(function.spec.tier)
    if tier is None:
        return 0.0
    return float(price(tier, function.spec.pricing, rows=1, tokens=None))

"""The autoscaling policy: a pure function from what a pool looks like now to what it should do.

No clocks, no processes: the pool passes `now` and a snapshot, and applies the decision.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from slserve.spec import Scaling


@dataclass(frozen=True)
class InstanceLoad:
    id: int
    in_flight: int
    idle_since: float | None  # when it last became idle; None while busy


@dataclass(frozen=True)
class ScaleDecision:
    start: int = 0
    stop: list[int] = field(default_factory=list)


def desired_instances(scaling: Scaling, demand: int) -> int:
    """Enough instances that each carries at most `target_concurrency` requests, within [min, max]."""
    wanted = math.ceil(demand / scaling.target_concurrency)
    return max(scaling.min_instances, min(scaling.max_instances, wanted))


def decide(
    scaling: Scaling,
    ready: Sequence[InstanceLoad],
    starting: int,
    queued: int,
    now: float,
    idle_s: float | None = None,
) -> ScaleDecision:
    """Scale up at once to cover the demand (requests in flight + queued), counting instances already
    starting; scale down only instances idle for `idle_s` (the function's keep-alive now; `idle_seconds` when
    not given), longest-idle first, never below what the demand and `min_instances` need."""
    keep_s = scaling.idle_seconds if idle_s is None else idle_s
    demand = sum(i.in_flight for i in ready) + queued
    desired = desired_instances(scaling, demand)
    start = max(0, desired - len(ready) - starting)
    idle = sorted(
        (i for i in ready if i.in_flight == 0 and i.idle_since is not None and now - i.idle_since >= keep_s),
        key=lambda i: (i.idle_since, i.id),
    )
    surplus = max(0, len(ready) + starting - desired)
    return ScaleDecision(start=start, stop=[i.id for i in idle[:surplus]])


MIN_RETRY_AFTER_S = 1.0  # Retry-After is whole seconds
MAX_RETRY_AFTER_S = 60.0


def retry_after_s(queued: int, instances: int, rows_per_s: float | None) -> float:
    """When a client turned away by a full queue should come back: the time the instances need to work off
    the queue at their measured speed (rows per second each), within [1, 60] s. Unmeasured: 1 s."""
    if rows_per_s is None or rows_per_s <= 0:
        return MIN_RETRY_AFTER_S
    drain = queued / (max(1, instances) * rows_per_s)
    return min(MAX_RETRY_AFTER_S, max(MIN_RETRY_AFTER_S, drain))


def expected_wait_s(rows_ahead: int, instances: int, rows_per_s: float | None) -> float | None:
    """How long work of `rows_ahead` rows takes the instances at their measured speed; None: not measured."""
    if rows_per_s is None or rows_per_s <= 0 or instances < 1:
        return None
    return rows_ahead / (instances * rows_per_s)

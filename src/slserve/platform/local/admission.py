"""Whether a function's queue takes one more request: not past `scaling.queue_size`, and not when the work
already waiting would keep it past its deadline. A refusal is a 429 with the time after which a retry can
expect room, so its client can retry elsewhere or later and no capacity is spent on an answer nobody reads."""

from __future__ import annotations

import time
from collections.abc import Collection

from slserve.errors import Overloaded
from slserve.platform.base import InferRequest
from slserve.platform.local.autoscaler import expected_wait_s, retry_after_s
from slserve.platform.local.dispatch import Dispatcher
from slserve.platform.local.instance_handle import Instance, InstanceState
from slserve.spec import FunctionSpec


def check_room(
    name: str,
    spec: FunctionSpec,
    dispatcher: Dispatcher,
    instances: Collection[Instance],
    rows_per_s: float | None,
    request: InferRequest,
) -> None:
    queued = len(dispatcher.queue)
    if queued >= spec.scaling.queue_size:
        serving = sum(1 for i in instances if i.state is not InstanceState.DRAINING)
        raise Overloaded(
            f"{name}: {queued} requests are already waiting (scaling.queue_size); retry after the Retry-After interval",
            retry_after=retry_after_s(queued, serving, rows_per_s),
        )
    if request.deadline is None or not queued:
        return
    wait = expected_wait_s(dispatcher.rows_ahead(), sum(1 for i in instances if i.serving), rows_per_s)
    left = request.deadline - time.monotonic()
    if wait is not None and wait > left:
        raise Overloaded(
            f"{name}: the {queued} requests waiting need about {wait:.1f} s, more than this request's "
            f"{max(left, 0.0):.1f} s left (request_timeout_s, or x-slserve-timeout-ms); retry later",
            retry_after=wait,
        )

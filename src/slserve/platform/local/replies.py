"""What an instance's reply means for the request it answers: its result (with where and how long it waited and
ran), a drop (deadline passed, or the caller went away before it ran), or the error the instance raised; and
the function's speed, measured from its replies."""

from __future__ import annotations

from slserve.errors import ClientClosedRequest, GatewayTimeout, error_from_wire
from slserve.platform.base import InferResult
from slserve.platform.local.instance_handle import Instance, Pending, fail, resolve
from slserve.platform.wire import Kind, Message

SPEED_WEIGHT = 0.1  # of each new reply in the moving average of an instance's rows per second


def answer(function: str, inst: Instance, pending: Pending, msg: Message) -> None:
    """Resolve or fail `pending` with `msg`, its instance's reply."""
    if msg.kind is Kind.RESULT:
        result = InferResult(
            outputs=msg.tensors,
            function=function,
            version=inst.version,
            instance=inst.name,
            queue_ms=(pending.dispatched_at - pending.enqueued_at) * 1000,
            compute_ms=float(msg.meta.get("compute_ms", 0.0)),
            batch_size=int(msg.meta.get("batch_size", 1)),
            cold_start_ms=pending.cold_start_ms,
            tokens=msg.meta.get("tokens"),
            notes=msg.meta.get("notes") or {},
            device=inst.device,
        )
        resolve(pending, result)
    elif msg.kind is Kind.DROPPED:
        if msg.meta.get("reason") == "deadline":
            fail(pending, GatewayTimeout(f"{function}: the request's deadline passed before it ran"))
        else:
            fail(pending, ClientClosedRequest(f"{function}: the client went away; not run"))
    else:
        fail(pending, error_from_wire(msg.meta["status"], msg.meta["code"], msg.meta["message"]))


class Speed:
    """One instance's rows per second, a moving average over the model calls that answered (None before one)."""

    def __init__(self) -> None:
        self.rows_per_s: float | None = None

    def measure(self, msg: Message) -> None:
        seconds = float(msg.meta.get("compute_ms", 0.0)) / 1000
        if seconds > 0:
            speed = int(msg.meta.get("batch_size", 1)) / seconds
            last = self.rows_per_s
            self.rows_per_s = speed if last is None else last + SPEED_WEIGHT * (speed - last)

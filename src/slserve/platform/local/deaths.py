"""What an instance's death means for each request it held: a policy, apart from the processes.

A request is retried once, alone on an instance of its own (inference is idempotent, and alone it can only
take itself down); when that instance dies too, the request is refused with the reason, so that one tenant's
input cannot keep killing instances (nor, through a fallback, another tier's).
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict

from slserve.errors import ClientClosedRequest, InstanceFailed, OverMemoryLimit, PoisonRequest, SlserveError
from slserve.platform.base import InferRequest
from slserve.platform.local.instance_handle import Instance, Pending
from slserve.platform.wire import tensor_payload

RETRIES = 1
REMEMBERED = 1024  # poison inputs remembered per function (the oldest are forgotten first)


def after_death(pending: Pending, inst: Instance, status: str, function: str, memory_mb: int) -> SlserveError | None:
    """None: retry `pending` alone; else the error that ends it. Counts the death against it."""
    if pending.abandoned_at is not None:
        return ClientClosedRequest(f"{function}: the client went away while it ran")
    pending.attempts += 1
    if pending.attempts <= RETRIES:
        return None
    if inst.over_memory:
        return OverMemoryLimit(
            f"{function}: this request took an instance over the function's memory limit of {memory_mb} MB "
            "(resources.memory_mb), and again when it ran alone; send fewer or smaller rows"
        )
    if inst.stopped_because is None:
        return PoisonRequest(
            f"{function}: this request crashed instance {inst.name} ({status}) while it ran alone, after a first "
            "crash; it is not retried again (poison request): the model cannot take this input"
        )
    return InstanceFailed(f"{function}: instance {inst.name} was lost twice ({status})")


def input_digest(request: InferRequest) -> bytes:
    """What a request asks of the model: its inputs' names, types, shapes and bytes (and the processor options)."""
    h = hashlib.blake2b(repr(sorted(request.options.items())).encode(), digest_size=16)
    for name, arr in sorted(request.inputs.items()):
        h.update(f"{name}\0{arr.dtype.str}\0{arr.shape}\0".encode())
        h.update(tensor_payload(arr))
    return h.digest()


class PoisonMemory:
    """Inputs refused as poison (or as over the memory limit): the same input again is refused at once, without
    costing another instance. Empty, it costs a request nothing (no digest is computed)."""

    def __init__(self) -> None:
        self._refused: OrderedDict[bytes, SlserveError] = OrderedDict()

    def remember(self, request: InferRequest, error: SlserveError) -> None:
        self._refused[input_digest(request)] = error
        while len(self._refused) > REMEMBERED:
            self._refused.popitem(last=False)

    def check(self, request: InferRequest) -> None:
        if self._refused:
            error = self._refused.get(input_digest(request))
            if error is not None:
                raise type(error)(f"{error.message} (refused again without running it)")

"""The host's cores, shared by every function's model calls.

An instance computes with the threads its spec serves with (one for the samples). When the host has idle cores,
a call may use more, where the build proved that more threads give the same rows (`runtime.batching.
prove_threads`): a request alone on the host gets the idle cores, and calls side by side share them without
oversubscribing. Each request sent to an instance carries a grant: the host's cores less those the other
instances holding work were granted.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from slserve.host import cores
from slserve.platform.local.instance_handle import Instance


class HostCores:
    def __init__(self, instances: Callable[[], Iterable[Instance]], total: int | None = None) -> None:
        self.instances = instances  # every instance of every function on this host
        self.total = total or cores()

    def grant(self, to: Instance) -> int:
        """Threads `to` may use for the request it is about to get: one when it holds other work already (the
        request will share a call, or wait for one: the host is under load), else the cores that no other
        instance holding work was granted."""
        if to.in_flight:
            return 1
        taken = sum(i.granted for i in self.instances() if i is not to and i.in_flight)
        return max(1, self.total - taken)

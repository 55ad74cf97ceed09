"""Which instance takes which request of one function.

Requests wait in arrival order and go to the least loaded instance with a free slot, of the current build if
one is up (during a redeploy the previous build's instances serve until their replacements are ready). A
request retried after its instance died goes first, alone, to an instance holding nothing else; while such a
retry waits, the least loaded instance takes nothing new, so that it empties for it even under load. Work whose
caller left, or whose deadline passed, is never sent; work already sent is cancelled on its instance.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from typing import Any

from slserve.errors import GatewayTimeout, SlserveError
from slserve.platform.local.instance_handle import Instance, InstanceState, Pending, fail
from slserve.platform.wire import Kind, Message


class Dispatcher:
    def __init__(
        self,
        function: str,
        instances: dict[int, Instance],
        slots: int,
        digest: str | None,
        grant: Callable[[Instance], int] = lambda _: 1,
    ) -> None:
        self.function = function
        self.grant = grant  # threads an instance may use for its next call (the host's idle cores)
        self.instances = instances  # the pool's own, shared
        self.slots = slots  # requests one instance may hold at once
        self.digest = digest  # the current build
        self.queue: deque[Pending] = deque()
        self.queued_rows = 0  # the rows of the requests in `queue`
        self.retries: deque[Pending] = deque()  # held by an instance that died; each runs again alone

    @property
    def waiting(self) -> int:
        return len(self.queue) + len(self.retries)

    def enqueue(self, pending: Pending) -> None:
        self.queue.append(pending)
        self.queued_rows += pending.rows
        self.dispatch()

    def retry(self, pending: Pending) -> None:
        self.retries.append(pending)

    def rows_ahead(self) -> int:
        """The rows a new request would wait behind: queued, and on the instances."""
        on_instances = sum(p.rows for i in self.instances.values() if i.serving for p in i.in_flight.values())
        return self.queued_rows + on_instances

    def abandon(self, pending: Pending, error: SlserveError | None) -> None:
        """Nobody waits for `pending` any more: off the queue if it is still there (failed with `error`), else
        cancelled on its instance (which drops it unless its model call has begun)."""
        for line in (self.queue, self.retries):
            if pending in line:
                line.remove(pending)
                if line is self.queue:
                    self.queued_rows -= pending.rows
                if error is not None:
                    fail(pending, error)
                return
        for inst in self.instances.values():
            if inst.in_flight.get(pending.id) is pending:
                pending.abandoned_at = time.monotonic()
                if inst.channel is not None:
                    inst.channel.send(Message(Kind.CANCEL, pending.id))
                return

    def fail_all(self, error: SlserveError) -> int:
        """Every waiting request fails with `error`; returns how many did."""
        failed = 0
        for line in (self.queue, self.retries):
            while line:
                failed += 1
                fail(line.popleft(), error)
        self.queued_rows = 0
        return failed

    def dispatch(self) -> None:
        now = time.monotonic()
        while self.retries:  # each on an instance of its own, holding nothing else
            instance = self._empty_instance()
            if instance is None:
                break
            pending = self.retries.popleft()
            if self._still_wanted(pending, now):
                instance.exclusive = True
                self._send(instance, pending)
        while self.queue:
            instance = self._least_loaded()
            if instance is None:
                return
            pending = self.queue.popleft()
            self.queued_rows -= pending.rows
            if self._still_wanted(pending, now):
                self._send(instance, pending)

    def warm_capacity(self) -> int:
        if self.queue or self.retries:
            return 0
        return sum(max(0, self.slots - len(i.in_flight)) for i in self.instances.values() if self._open(i))

    def _still_wanted(self, pending: Pending, now: float) -> bool:
        if pending.future.done():
            return False
        if pending.expired(now):
            fail(pending, GatewayTimeout(f"{self.function}: the request's deadline passed while it waited"))
            return False
        return True

    def _empty_instance(self) -> Instance | None:
        for inst in self.instances.values():
            if inst.serving and not inst.in_flight and inst.digest == self.digest:
                return inst
        return None

    def _open(self, inst: Instance) -> bool:
        """Whether new requests may go to `inst` (not while it is the one emptying for a waiting retry)."""
        if not inst.serving or inst.exclusive or len(inst.in_flight) >= self.slots:
            return False
        return not (self.retries and inst is self._reserved())

    def _reserved(self) -> Instance | None:
        current = [i for i in self.instances.values() if i.serving and not i.exclusive and i.digest == self.digest]
        return min(current, key=lambda i: len(i.in_flight)) if current else None

    def _least_loaded(self) -> Instance | None:
        best: Instance | None = None
        previous: Instance | None = None
        for inst in self.instances.values():
            if not self._open(inst):
                continue
            if inst.digest != self.digest:
                if previous is None or len(inst.in_flight) < len(previous.in_flight):
                    previous = inst
            elif best is None or len(inst.in_flight) < len(best.in_flight):
                best = inst
        return best or previous

    def _send(self, inst: Instance, pending: Pending) -> None:
        assert inst.channel is not None and inst.ready_at is not None
        if inst.ready_at > pending.enqueued_at:
            pending.cold_start_ms = inst.cold_start_ms
        pending.dispatched_at = time.monotonic()
        inst.granted = self.grant(inst)  # before it holds this request: does it hold others?
        inst.in_flight[pending.id] = pending
        inst.state, inst.idle_since = InstanceState.BUSY, None
        request = pending.request
        meta: dict[str, Any] = {"threads": inst.granted} if inst.granted > 1 else {}
        if request.outputs is not None:
            meta["outputs"] = request.outputs
        if request.deadline is not None:
            meta["deadline"] = request.deadline
        if request.options:
            meta["options"] = request.options
        inst.channel.send(Message(Kind.INFER, pending.id, meta, request.inputs))

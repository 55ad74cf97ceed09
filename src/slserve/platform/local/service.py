"""The platform process of a gateway with several front workers (`slserve serve --workers N`): every target's
executor once for the host (locally: templates, pools, exact batching, the autoscaler, the memory budget;
Lambda's and Modal's clients), the keys' rate and concurrency limits, the dashboard's timeline and shadows'
comparisons, for every front worker over one unix socket (`platform.link`'s messages).

Pools and batches stay whole: requests from every worker queue in one pool and batch together in one instance.
Each front holds the platform's state as last broadcast (every `BROADCAST_S`), so routing never waits on a
round trip (status endpoints ask for it fresh). A front that goes away takes its requests with it: those not
yet running are dropped (their caller is gone), and the limits it held are given back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from pathlib import Path

from slserve.accounts.limits import Admission, KeyLimits, Limiter
from slserve.drift.comparison import OutputComparison, ShadowKey
from slserve.errors import InferenceFailed, SlserveError
from slserve.platform.base import Cancellation, InferRequest
from slserve.platform.channel import FrameChannel
from slserve.platform.link import PlatformState, Routing, error_message, request_of, result_message
from slserve.platform.targets import Targets
from slserve.platform.timeline import Timeline
from slserve.platform.wire import Kind, Message

BROADCAST_S = 0.05  # how stale a front's view of warm capacity may be
REFRESH_S = 1.0  # the catalog is looked at this often (`slserve build` is the deploy), as a lone gateway does
log = logging.getLogger("slserve.platform")


class FrontConnection(FrameChannel):
    """One front worker's end in the platform process: its calls in flight and the admissions it holds."""

    def __init__(self, service: PlatformService) -> None:
        super().__init__(lambda msg: service.handle(self, msg))
        self.service = service
        self.calls: dict[int, Cancellation] = {}
        self.admissions: dict[int, Admission] = {}

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self.service.joined(self)

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        self.service.left(self)


class PlatformService:
    def __init__(self, targets: Targets, socket_path: Path, limiter: Limiter | None = None) -> None:
        self.targets = targets
        self.socket_path = socket_path
        self.limiter = limiter or Limiter()
        self.timeline = Timeline()
        self.shadows: dict[ShadowKey, OutputComparison] = {}
        self.fronts: set[FrontConnection] = set()
        self._calls: set[asyncio.Task[None]] = set()

    async def serve(self, stop: asyncio.Event, drain_seconds: float) -> None:
        """Serve the fronts until `stop` is set; then finish what was accepted and stop every instance."""
        await self.targets.start()
        loop = asyncio.get_running_loop()
        self.socket_path.unlink(missing_ok=True)
        server = await loop.create_unix_server(lambda: FrontConnection(self), path=str(self.socket_path))
        watching = (self._broadcast(), self._refresh(), self.timeline.run(self.targets))
        tasks = [loop.create_task(task) for task in watching]
        log.info("platform serves front workers on %s", self.socket_path)
        try:
            await stop.wait()
        finally:
            server.close()
            for task in tasks:
                task.cancel()
            await self.targets.stop(drain_seconds)
            if self._calls:
                await asyncio.wait(self._calls, timeout=1.0)  # their answers, the drain's last
            self.socket_path.unlink(missing_ok=True)

    # --- the fronts ------------------------------------------------------------------------------------------

    def joined(self, front: FrontConnection) -> None:
        self.fronts.add(front)
        front.send(self.state().message())

    def left(self, front: FrontConnection) -> None:
        self.fronts.discard(front)
        for admission in front.admissions.values():
            admission.release()
        front.admissions.clear()
        for cancellation in list(front.calls.values()):
            cancellation.cancel()

    def handle(self, front: FrontConnection, msg: Message) -> None:
        if msg.kind is Kind.INFER:
            request = request_of(msg)
            request.cancellation = front.calls[msg.request_id] = Cancellation()
            task = asyncio.get_running_loop().create_task(self._infer(front, msg.request_id, request))
            self._calls.add(task)
            task.add_done_callback(self._calls.discard)
        elif msg.kind is Kind.CANCEL:
            if (cancellation := front.calls.get(msg.request_id)) is not None:
                cancellation.cancel()
        elif msg.kind is Kind.ADMIT:
            try:
                front.admissions[msg.request_id] = self.limiter.admit(KeyLimits(**msg.meta))
                front.send(Message(Kind.ADMITTED, msg.request_id))
            except SlserveError as e:
                front.send(error_message(Kind.ADMITTED, msg.request_id, e))
        elif msg.kind is Kind.RELEASE:
            if (admission := front.admissions.pop(msg.request_id, None)) is not None:
                admission.release()
        elif msg.kind is Kind.STATE:
            front.send(self.state().message(msg.request_id))
        elif msg.kind is Kind.SHADOW:
            model, alias, version = msg.meta["key"]
            comparison = OutputComparison(**msg.meta["comparison"])
            self.shadows.setdefault((model, alias, version), OutputComparison()).merge(comparison)
        elif msg.kind is Kind.TIMELINE:
            if "answered" in msg.meta:
                for function, status, seconds, cold_start_ms in msg.meta["answered"]:
                    self.timeline.answered(function, status, seconds, cold_start_ms)
            else:
                front.send(Message(Kind.TIMELINE, msg.request_id, self.timeline.snapshot()))
        else:
            log.warning("a front worker sent a %s message, which the platform does not take", msg.kind.name)

    async def _infer(self, front: FrontConnection, number: int, request: InferRequest) -> None:
        try:
            front.send(result_message(number, await self.targets.infer(request)))
        except SlserveError as e:
            front.send(error_message(Kind.ERROR, number, e))
        except Exception as e:  # a bug of ours: the caller gets a 500 naming it, the platform serves on
            log.exception("function %s: the platform failed a request", request.function)
            front.send(error_message(Kind.ERROR, number, InferenceFailed(f"platform error ({type(e).__name__})")))
        finally:
            front.calls.pop(number, None)

    # --- the state every front reads -------------------------------------------------------------------------

    def routing(self) -> Routing:
        warm: dict[str, int] = {}
        gpu: dict[str, bool | None] = {}
        for name in self.targets.functions():
            with contextlib.suppress(SlserveError):  # not servable here (its status says why)
                warm[name], gpu[name] = self.targets.warm_capacity(name), self.targets.gives_gpu(name)
        return Routing(self.targets.ready(), warm, gpu)

    def state(self) -> PlatformState:
        statuses = {s.name: s for s in self.targets.status()}
        return PlatformState(self.routing(), self.targets.host(), statuses, self.shadows)

    async def _broadcast(self) -> None:
        """The routing, whenever it changed: nothing while the host is idle."""
        last: Routing | None = None
        while True:
            await asyncio.sleep(BROADCAST_S)
            if not self.fronts:
                last = None
                continue
            routing = self.routing()
            if routing != last:  # a front that joined since had it whole on joining
                msg, last = routing.message(), routing
                for front in list(self.fronts):
                    front.send(msg)

    async def _refresh(self) -> None:
        while True:
            await asyncio.sleep(REFRESH_S)
            with contextlib.suppress(Exception):  # a folder deleted mid-scan: next time (the fronts log it)
                self.targets.refresh()

"""A front worker's end of the platform process (`platform.local.service`): the executor of every target, the
keys' rate and concurrency limits, the dashboard's timeline and shadows' comparisons, over one unix socket,
which is reconnected when the platform restarts.

Calls in flight when the platform goes away fail with a 503 that says to retry (the tier's fallback applies).
Routing reads warm capacity from the platform's last broadcast, never waiting; status endpoints catch up first.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import logging
from dataclasses import asdict
from pathlib import Path
from typing import Any

from slserve.accounts.keys import KeyRecord
from slserve.accounts.limits import KeyLimits
from slserve.drift.comparison import OutputComparison, ShadowKey
from slserve.errors import RuntimeUnavailable
from slserve.platform.base import Deployed, FunctionStatus, InferRequest, InferResult, Platform
from slserve.platform.channel import FrameChannel
from slserve.platform.link import PlatformState, Routing, error_of, request_message, result_of
from slserve.platform.wire import Kind, Message

RECONNECT_S = 0.1
log = logging.getLogger("slserve.platform")


class PlatformLink:
    """The connection to the platform process: numbered requests and their answers, and its latest state."""

    def __init__(self, socket_path: Path) -> None:
        self.socket_path = socket_path
        self.state: PlatformState | None = None  # as of the last ask (or connecting)
        self.routing: Routing | None = None  # as of the last broadcast
        self._channel: FrameChannel | None = None
        self._waiting: dict[int, asyncio.Future[Message]] = {}
        self._numbers = itertools.count(1)
        self._first_state = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def open(self, timeout_s: float) -> None:
        """Connect (and keep connecting); returns once the platform's first state came, or after `timeout_s`."""
        self._task = asyncio.get_running_loop().create_task(self._keep_connected())
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._first_state.wait(), timeout_s)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._channel is not None:
            self._channel.close()

    @property
    def connected(self) -> bool:
        return self._channel is not None

    async def _keep_connected(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                _, channel = await loop.create_unix_connection(
                    lambda: FrameChannel(self.received), str(self.socket_path)
                )
            except OSError:  # not up yet, or restarting
                await asyncio.sleep(RECONNECT_S)
                continue
            self._channel = channel
            await channel.closed
            self._channel, self.state, self.routing = None, None, None
            log.warning("the platform process went away; reconnecting")
            gone = RuntimeUnavailable("the platform process restarted during the request; retry")
            for future in self._waiting.values():
                if not future.done():
                    future.set_exception(gone)
            self._waiting.clear()

    def received(self, msg: Message) -> None:
        if msg.kind is Kind.ROUTING:
            self.routing = Routing.of(msg.meta)
            return
        if msg.kind is Kind.STATE:
            self.state = PlatformState.of(msg)
            self.routing = self.state.routing
            self._first_state.set()
            if not msg.request_id:  # on connecting, not an answer
                return
        future = self._waiting.pop(msg.request_id, None)
        if future is not None and not future.done():
            future.set_result(msg)

    def send(self, msg: Message) -> None:
        channel = self._channel
        if channel is None or not channel.open:
            raise RuntimeUnavailable("the platform process is not up (starting or restarting); retry")
        channel.send(msg)

    def ask(self, build: Any) -> tuple[int, asyncio.Future[Message]]:
        """Send the message `build(number)` makes; the future of its answer (given up on when cancelled)."""
        number = next(self._numbers)
        self.send(build(number))
        future = self._waiting[number] = asyncio.get_running_loop().create_future()
        future.add_done_callback(lambda _: self._waiting.pop(number, None))
        return number, future


class LinkedExecutor:
    """Every target, run by the platform process (the local one, and Lambda's and Modal's calls, so that each
    function's status and counters are one); this front forwards each call and reads the platform's state."""

    def __init__(self, link: PlatformLink, connect_timeout_s: float = 120.0) -> None:
        self.link = link
        self.connect_timeout_s = connect_timeout_s
        self.functions: dict[str, Deployed] = {}

    async def start(self, functions: list[Deployed]) -> None:
        for function in functions:
            self.functions[function.name] = function
        await self.link.open(self.connect_timeout_s)

    async def stop(self, drain_seconds: float) -> None:
        """The platform drains its own pools when the supervisor stops it; this front only lets go."""
        await self.link.close()

    def deploy(self, function: Deployed) -> None:  # the platform process watches the same catalog itself
        self.functions[function.name] = function

    def remove(self, name: str) -> None:
        self.functions.pop(name, None)

    async def infer(self, request: InferRequest) -> InferResult:
        number, answer = self.link.ask(lambda n: request_message(n, request))
        cancellation = request.cancellation

        def cancel() -> None:
            with contextlib.suppress(RuntimeUnavailable):
                self.link.send(Message(Kind.CANCEL, number))

        if cancellation is not None:
            cancellation.add_callback(cancel)
        try:
            msg = await answer
        except asyncio.CancelledError:
            cancel()
            raise
        finally:
            if cancellation is not None:
                cancellation.remove_callback(cancel)
        if msg.kind is Kind.RESULT:
            return result_of(msg)
        raise error_of(msg.meta)

    async def catch_up(self) -> None:
        """Every function's status and the host's as they are now (status endpoints read them after this)."""
        with contextlib.suppress(RuntimeUnavailable):  # not up: status says it is starting
            await self.link.ask(lambda n: Message(Kind.STATE, n))[1]

    def warm_capacity(self, function: str) -> int:
        routing = self.link.routing
        return 0 if routing is None else routing.warm.get(function, 0)

    def gives_gpu(self, function: str) -> bool | None:
        routing = self.link.routing
        return None if routing is None else routing.gpu.get(function)

    def status(self, function: str) -> FunctionStatus:
        state = self.link.state
        known = None if state is None else state.functions.get(function)
        if known is not None:
            return dataclasses.replace(known)
        deployed = self.functions[function]
        why = None if self.link.connected else "the platform process is starting"
        return FunctionStatus.of(deployed, error=why if deployed.error is None else deployed.error)

    def host(self) -> dict[str, Any] | None:
        state = self.link.state
        return None if state is None else state.host

    def ready(self) -> bool:
        routing = self.link.routing
        return routing is not None and routing.ready


@dataclasses.dataclass
class _LinkedAdmission:
    link: PlatformLink
    number: int
    released: bool = False

    def release(self) -> None:
        if not self.released:
            self.released = True
            with contextlib.suppress(RuntimeUnavailable):  # gone: the platform gave it back itself
                self.link.send(Message(Kind.RELEASE, self.number))


class _Unlimited:
    def release(self) -> None:
        pass


UNLIMITED = _Unlimited()


class LinkedLimits:
    """Keys' rate and concurrency, counted once in the platform process for every front worker. A key with
    neither costs no round trip."""

    def __init__(self, link: PlatformLink) -> None:
        self.link = link

    async def take(self, key: KeyRecord) -> _LinkedAdmission | _Unlimited:
        limits = KeyLimits.of(key)
        if not limits.limited:
            return UNLIMITED
        number, answer = self.link.ask(lambda n: Message(Kind.ADMIT, n, asdict(limits)))
        try:
            msg = await answer
        except asyncio.CancelledError:  # the caller left while asking: what the platform may grant goes back
            _LinkedAdmission(self.link, number).release()
            raise
        if msg.meta:
            raise error_of(msg.meta)
        return _LinkedAdmission(self.link, number)


class LinkedTimeline:
    """The dashboard's timeline, kept whole in the platform process: each request this front answers is told to
    it (those answered in one turn of the event loop in one message), and the view is the platform's."""

    def __init__(self, link: PlatformLink) -> None:
        self.link = link
        self._answered: list[tuple[str, int, float, float | None]] = []

    def answered(self, function: str, status: int, seconds: float, cold_start_ms: float | None) -> None:
        if not self._answered:
            asyncio.get_running_loop().call_soon(self._tell)
        self._answered.append((function, status, seconds, cold_start_ms))

    def _tell(self) -> None:
        answered, self._answered = self._answered, []
        with contextlib.suppress(RuntimeUnavailable):  # restarting: these are not shown
            self.link.send(Message(Kind.TIMELINE, 0, {"answered": answered}))

    async def run(self, platform: Platform) -> None:
        """Nothing to do here: the platform samples its instances and queues itself."""

    async def view(self) -> dict[str, Any]:
        return (await self.link.ask(lambda n: Message(Kind.TIMELINE, n))[1]).meta


class LinkedComparisons:
    """Shadows' comparisons, added up in the platform process for every front: each comparison this front makes
    is sent there; the totals are the platform's, as of the last `catch_up` (status endpoints ask it first)."""

    def __init__(self, link: PlatformLink) -> None:
        self.link = link

    def record(self, key: ShadowKey, comparison: OutputComparison) -> None:
        with contextlib.suppress(RuntimeUnavailable):  # restarting: this one is not counted
            self.link.send(Message(Kind.SHADOW, 0, {"key": list(key), "comparison": dataclasses.asdict(comparison)}))

    def totals(self) -> dict[ShadowKey, OutputComparison]:
        state = self.link.state
        return {} if state is None else state.shadows

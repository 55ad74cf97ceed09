"""The gateway's side of one instance process: its state, the requests it holds, and its socket."""

from __future__ import annotations

import asyncio
import os
import time
from dataclasses import dataclass
from enum import StrEnum

from slserve.platform.base import InferRequest, InferResult, InstanceStatus
from slserve.platform.channel import FrameChannel
from slserve.platform.local.template_handle import Template

PAGE = os.sysconf("SC_PAGE_SIZE")


class InstanceState(StrEnum):
    STARTING = "starting"
    IDLE = "idle"
    BUSY = "busy"
    DRAINING = "draining"
    DEAD = "dead"


@dataclass
class Pending:
    request: InferRequest
    future: asyncio.Future[InferResult]
    enqueued_at: float
    id: int = 0
    attempts: int = 0  # instances it was on when they died
    dispatched_at: float = 0.0
    cold_start_ms: float | None = None
    abandoned_at: float | None = None  # when its caller stopped waiting while an instance held it
    rows: int = 1  # its batch dimension: the work it asks for

    def expired(self, now: float) -> bool:
        deadline = self.request.deadline
        return deadline is not None and now >= deadline


class Instance:
    def __init__(self, function: str, number: int, digest: str, version: str) -> None:
        self.number = number
        self.name = f"{function}-{number}"
        self.digest = digest  # the artifact it runs (after a redeploy, old instances serve until replaced)
        self.version = version
        self.pid: int | None = None
        self.template: Template | None = None  # the process it was forked from (its exit is reported there)
        self.state = InstanceState.STARTING
        self.spawned_at = time.monotonic()
        self.ready_at: float | None = None
        self.idle_since: float | None = None
        self.in_flight: dict[int, Pending] = {}
        self.granted = 1  # threads its latest request may use (see `cores.HostCores`)
        self.exclusive = False  # holds a request retried after a crash, and nothing else
        self.channel: FrameChannel | None = None
        self.device: str | None = None
        self.load_ms: float | None = None
        self.preloaded: bool | None = None
        self.served = 0
        self.stopped_because: str | None = None  # why the gateway killed it, when it did
        self.over_memory = False

    @property
    def cold_start_ms(self) -> float | None:
        return None if self.ready_at is None else (self.ready_at - self.spawned_at) * 1000

    @property
    def serving(self) -> bool:
        return self.state is InstanceState.IDLE or self.state is InstanceState.BUSY

    def rss_bytes(self) -> int | None:
        """Resident memory of the process (what `ps` calls RSS), or None when it is gone."""
        if self.pid is None:
            return None
        try:
            with open(f"/proc/{self.pid}/statm", "rb") as f:
                return int(f.read().split()[1]) * PAGE
        except (OSError, IndexError, ValueError):
            return None

    def abandoned_by_all(self, now: float, grace_s: float) -> bool:
        """Every request it holds was given up by its caller more than `grace_s` ago: its work helps nobody."""
        if not self.in_flight:
            return False
        latest = 0.0
        for pending in self.in_flight.values():
            if pending.abandoned_at is None:
                return False
            latest = max(latest, pending.abandoned_at)
        return now - latest >= grace_s

    def status(self) -> InstanceStatus:
        return InstanceStatus(
            name=self.name,
            state=self.state.value,
            artifact=self.digest[:12],
            in_flight=len(self.in_flight),
            served=self.served,
            pid=self.pid,
            cold_start_ms=None if self.cold_start_ms is None else round(self.cold_start_ms, 1),
            load_ms=None if self.load_ms is None else round(self.load_ms, 1),
            device=self.device,
            preloaded=self.preloaded,
        )


def resolve(pending: Pending, result: InferResult) -> None:
    if not pending.future.done():
        pending.future.set_result(result)


def fail(pending: Pending, error: Exception) -> None:
    if not pending.future.done():
        pending.future.set_exception(error)

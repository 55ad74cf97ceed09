"""What the gateway asks of a platform (local process pool today; AWS Lambda and Modal later)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from slserve.spec import FunctionDef


class Cancellation:
    """Set by the caller when nobody waits for the answer any more (its client went away). A platform then drops
    the request if its work has not started (raising ClientClosedRequest), and lets work that has started finish
    (returning its result, so the ledger can say that it ran)."""

    __slots__ = ("_callbacks", "cancelled")

    def __init__(self) -> None:
        self.cancelled = False
        self._callbacks: list[Callable[[], None]] = []

    def add_callback(self, callback: Callable[[], None]) -> None:
        self._callbacks.append(callback)

    def remove_callback(self, callback: Callable[[], None]) -> None:
        if callback in self._callbacks:
            self._callbacks.remove(callback)

    def cancel(self) -> None:
        if not self.cancelled:
            self.cancelled = True
            for callback in list(self._callbacks):
                callback()


@dataclass
class InferRequest:
    """One decoded, signature-checked request for one function."""

    function: str
    inputs: dict[str, np.ndarray]
    outputs: list[str] | None = None  # requested output names; None = all
    id: str | None = None
    options: dict[str, Any] = field(default_factory=dict)  # for the function's processor (e.g. truncate)
    deadline: float | None = None  # time.monotonic() after which nobody wants the answer: never start it then
    cancellation: Cancellation | None = None


@dataclass
class InferResult:
    outputs: dict[str, np.ndarray]
    function: str
    version: str
    instance: str
    queue_ms: float
    compute_ms: float
    batch_size: int
    cold_start_ms: float | None = None  # set when the request waited for an instance to start
    tokens: int | None = None  # real tokens in the request, for text models
    notes: dict[str, Any] = field(default_factory=dict)  # what the processor reported (e.g. truncated rows)


@dataclass
class FunctionStatus:
    name: str
    model: str
    version: str
    framework: str
    tier: str
    artifact: str | None
    instances: list[dict[str, Any]] = field(default_factory=list)
    queued: int = 0
    in_flight: int = 0
    cold_starts: int = 0
    served: int = 0
    failed: int = 0
    error: str | None = None  # why the function cannot serve (not built, artifact corrupt, failed to start)
    ready: bool = False  # it can take requests now (instances may still be at zero)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


class Platform(Protocol):
    """Runs functions. The gateway decodes and validates; a platform only executes."""

    async def start(self) -> None: ...

    async def stop(self, drain_seconds: float) -> None:
        """Stop taking requests, finish the accepted ones (up to `drain_seconds`), then stop every instance."""
        ...

    def functions(self) -> Mapping[str, FunctionDef]: ...

    def ready(self) -> bool:
        """Whether every function can take requests now (instances may still be at zero)."""
        ...

    async def infer(self, request: InferRequest) -> InferResult: ...

    def warm_capacity(self, function: str) -> int:
        """Requests the function's running instances could take now without queueing (0: would queue or start)."""
        ...

    def status(self) -> list[FunctionStatus]: ...

    def refresh(self) -> bool:
        """Take in functions built, rebuilt or removed since the last call; returns whether the set changed."""
        ...

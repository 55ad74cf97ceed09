"""The seam between the gateway and whatever runs functions.

What is deployed (a `Catalog` of `Deployed` functions: name, spec, artifact digest, target) is apart from what
runs it (an `Executor` per target: the local process pool, Lambda, Modal). A `Platform` puts the two together
for the gateway, which sends each function's calls to the executor of its target.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

import numpy as np

from slserve.spec import FunctionSpec


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
    request_id: str | None = None  # the gateway's (x-request-id): sent with the call wherever it runs, for its logs
    trace: dict[str, str] = field(default_factory=dict)  # the client's W3C trace context (`slserve.tracing`)


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
    device: str | None = None  # where it ran ("cpu", "cuda"), where the executor knows


@dataclass(frozen=True)
class Deployed:
    """A function as the catalog says it is deployed: enough to route, check and bill its requests, and nothing
    about where it runs (`spec.target` says which executor runs it)."""

    name: str
    spec: FunctionSpec
    digest: str | None  # the artifact it serves; None: it cannot serve, and `error` says why
    error: str | None = None
    stale: str | None = None  # how its folder differs from the build it serves (edited, not rebuilt)

    @property
    def target(self) -> str:
        return self.spec.target


@dataclass
class InstanceStatus:
    """One running unit of a function (a process here, an execution environment or container elsewhere)."""

    name: str
    state: str  # starting | idle | busy | draining
    artifact: str
    in_flight: int = 0
    served: int = 0
    pid: int | None = None
    cold_start_ms: float | None = None
    load_ms: float | None = None
    device: str | None = None
    preloaded: bool | None = None


@dataclass
class FunctionStatus:
    name: str
    model: str
    version: str
    framework: str
    tier: str
    target: str
    artifact: str | None
    instances: list[InstanceStatus] = field(default_factory=list)
    queued: int = 0
    in_flight: int = 0
    cold_starts: int = 0
    served: int = 0
    failed: int = 0
    error: str | None = None  # why the function cannot serve (not built, artifact corrupt, failed to start)
    stale: str | None = None  # it serves its last build, and its folder has changed since (not rebuilt)
    ready: bool = False  # it can take requests now (instances may still be at zero)
    keep_alive: dict[str, Any] | None = None  # how long an idle instance stays, and why (local target)
    memory_mb: float | None = None  # what its instances hold together (PSS; local target)

    @classmethod
    def of(cls, function: Deployed, **state: Any) -> FunctionStatus:
        """A function's status: who it is, from its deployment, and `state` (instances, counters, readiness)."""
        spec = function.spec
        identity: dict[str, Any] = {
            "name": function.name,
            "model": spec.model.name,
            "version": spec.model.version,
            "framework": spec.framework.value,
            "tier": spec.tier,
            "target": function.target,
            "artifact": function.digest,
        }
        return cls(**{**identity, **state})

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Changes:
    """What a catalog refresh found: functions new or deployed anew, and functions gone."""

    deployed: list[Deployed]
    removed: list[str]

    def __bool__(self) -> bool:
        return bool(self.deployed or self.removed)


class Catalog(Protocol):
    """What is deployed: the functions, their specs and artifacts (a folder and an artifact store here; the same
    manifests in S3 or a Modal volume elsewhere)."""

    def functions(self) -> Mapping[str, Deployed]:
        """Every function by name; the mapping is kept up to date in place by `refresh`."""
        ...

    def refresh(self) -> Changes:
        """Look again; what changed since the last look (empty when nothing did)."""
        ...


class Executor(Protocol):
    """Runs the functions of one target (local processes, Lambda, Modal)."""

    async def start(self, functions: list[Deployed]) -> None: ...

    async def stop(self, drain_seconds: float) -> None:
        """Stop taking requests, finish the accepted ones (up to `drain_seconds`), then stop every instance."""
        ...

    def deploy(self, function: Deployed) -> None:
        """Serve `function` from now on: a new one, or a new artifact or spec of one it serves."""
        ...

    def remove(self, name: str) -> None:
        """Stop serving `name`: what it holds finishes, nothing new is taken."""
        ...

    async def infer(self, request: InferRequest) -> InferResult: ...

    def warm_capacity(self, function: str) -> int:
        """Requests the function's running instances could take now without queueing (0: would queue or start)."""
        ...

    def gives_gpu(self, function: str) -> bool | None:
        """Whether the function would run on a GPU here (None: not known before it runs)."""
        ...

    def status(self, function: str) -> FunctionStatus: ...

    def host(self) -> dict[str, Any] | None:
        """What the target's host holds (the local target: its memory budget); None where another runs it."""
        ...

    def ready(self) -> bool:
        """Whether what every function of this target shares is up (templates, connections)."""
        ...

    async def catch_up(self) -> None:
        """Bring `status`, `ready` and `host` up to date where they are kept in another process (one round trip;
        status endpoints ask it, routing reads what is there); nothing where they are this process's own."""
        ...


class Platform(Protocol):
    """What the gateway runs functions on: a catalog, and an executor per target. The gateway decodes and
    validates; a platform only executes."""

    async def start(self) -> None: ...

    async def stop(self, drain_seconds: float) -> None: ...

    def functions(self) -> Mapping[str, Deployed]: ...

    def ready(self) -> bool:
        """Whether every target can take requests now (instances may still be at zero)."""
        ...

    async def infer(self, request: InferRequest) -> InferResult: ...

    def warm_capacity(self, function: str) -> int: ...

    def gives_gpu(self, function: str) -> bool | None: ...

    def status(self) -> list[FunctionStatus]: ...

    def host(self) -> dict[str, Any] | None:
        """The local host's memory budget: held, peak, evictions, refusals."""
        ...

    async def catch_up(self) -> None:
        """Before a status endpoint reads `status`, `ready` or `host`: each executor's `catch_up`."""
        ...

    def refresh(self) -> bool:
        """Take in functions deployed, redeployed or removed since the last call; returns whether any were."""
        ...

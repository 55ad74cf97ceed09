"""The messages between a front worker and the platform process of a multi-worker gateway (`slserve serve
--workers N`), in the instances' wire format (`platform.wire`): a request and its answer, an error with what a
caller needs from it (Retry-After, whether it may have run), and the platform's state, which every front reads
locally between broadcasts (`Routing`) or asks for when it must be exact (`PlatformState`), and what fronts
count for the platform to add up (shadows' comparisons)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

from slserve.drift.comparison import OutputComparison, ShadowKey
from slserve.errors import InstanceFailed, RetryLater, SlserveError, error_from_wire
from slserve.platform.base import FunctionStatus, InferRequest, InferResult, InstanceStatus
from slserve.platform.wire import Kind, Message

_RESULT_FACTS = [f.name for f in fields(InferResult) if f.name != "outputs"]


def request_message(number: int, request: InferRequest) -> Message:
    meta: dict[str, Any] = {"function": request.function}
    for name in ("outputs", "id", "deadline", "request_id"):
        if (value := getattr(request, name)) is not None:
            meta[name] = value
    if request.options:
        meta["options"] = request.options
    if request.trace:
        meta["trace"] = request.trace
    return Message(Kind.INFER, number, meta, request.inputs)


def request_of(msg: Message) -> InferRequest:
    """The request as the front decoded it; deadlines are `time.monotonic()`, one clock for the whole host."""
    meta = msg.meta
    return InferRequest(
        function=meta["function"],
        inputs=msg.tensors,
        outputs=meta.get("outputs"),
        id=meta.get("id"),
        options=meta.get("options") or {},
        deadline=meta.get("deadline"),
        request_id=meta.get("request_id"),
        trace=meta.get("trace") or {},
    )


def result_message(number: int, result: InferResult) -> Message:
    return Message(Kind.RESULT, number, {name: getattr(result, name) for name in _RESULT_FACTS}, result.outputs)


def result_of(msg: Message) -> InferResult:
    return InferResult(outputs=msg.tensors, **{name: msg.meta[name] for name in _RESULT_FACTS})


def error_message(kind: Kind, number: int, error: SlserveError) -> Message:
    meta: dict[str, Any] = {"status": error.status, "code": error.code, "message": error.message}
    if isinstance(error, RetryLater):
        meta["retry_after"] = error.retry_after
    if isinstance(error, InstanceFailed):
        meta["may_have_run"] = error.may_have_run
    return Message(kind, number, meta)


def error_of(meta: dict[str, Any]) -> SlserveError:
    error = error_from_wire(meta["status"], meta["code"], meta["message"])
    if isinstance(error, RetryLater) and "retry_after" in meta:
        error.retry_after = float(meta["retry_after"])
    if isinstance(error, InstanceFailed):
        error.may_have_run = bool(meta.get("may_have_run"))
    return error


@dataclass(frozen=True)
class Routing:
    """What a front routes by: readiness, each function's warm capacity and whether it runs on a GPU. Broadcast
    whenever it changed (looked at every `BROADCAST_S`), so no request waits on a round trip for it."""

    ready: bool
    warm: dict[str, int]
    gpu: dict[str, bool | None]

    def message(self) -> Message:
        return Message(Kind.ROUTING, 0, {"ready": self.ready, "warm": self.warm, "gpu": self.gpu})

    @classmethod
    def of(cls, meta: dict[str, Any]) -> Routing:
        return cls(meta["ready"], meta["warm"], meta["gpu"])


@dataclass(frozen=True)
class PlatformState:
    """Every function's status and the host's, as status endpoints show them, with the routing: sent to a
    front when it connects, and whenever it asks (`LinkedExecutor.catch_up`)."""

    routing: Routing
    host: dict[str, Any] | None
    functions: dict[str, FunctionStatus]
    shadows: dict[ShadowKey, OutputComparison] = field(default_factory=dict)  # every front's comparisons

    def message(self, number: int = 0) -> Message:
        """The state on connecting (0), or the answer to a front's ask for it (`number`)."""
        meta = {
            "routing": self.routing.message().meta,
            "host": self.host,
            "functions": [s.to_dict() for s in self.functions.values()],
            "shadows": [[*key, asdict(c)] for key, c in self.shadows.items()],
        }
        return Message(Kind.STATE, number, meta)

    @classmethod
    def of(cls, msg: Message) -> PlatformState:
        meta = msg.meta
        functions = {}
        for doc in meta["functions"]:
            instances = [InstanceStatus(**i) for i in doc.pop("instances")]
            functions[doc["name"]] = FunctionStatus(**doc, instances=instances)
        shadows = {(m, a, v): OutputComparison(**c) for m, a, v, c in meta["shadows"]}
        return cls(Routing.of(meta["routing"]), meta["host"], functions, shadows)

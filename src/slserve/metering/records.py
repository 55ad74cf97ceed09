"""What the ledger holds and answers, whatever stores it: a request's record (and a later correction), an answer
kept for its Idempotency-Key, usage and spend rows; and `Ledger`, the seam each target implements (SQLite
locally, DynamoDB on AWS)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, fields
from operator import attrgetter
from typing import TYPE_CHECKING, Any, Protocol

import orjson

if TYPE_CHECKING:
    from slserve.compose.run import StepReport


@dataclass(slots=True)  # not frozen: a frozen dataclass's __init__ goes through object.__setattr__, per request
class Record:
    request_id: str
    time_us: int  # unix microseconds
    key_id: str
    tenant: str
    endpoint: str  # "v2" or "openai"
    model: str
    version: str
    alias: str | None
    tier: str
    function: str
    instance: str | None
    cold_start: bool
    cold_start_ms: float | None
    queue_ms: float | None
    compute_ms: float | None
    input_bytes: int
    output_bytes: int
    batch_size: int | None
    tokens: int | None
    status: int
    price: int  # micro-units of currency; 0 unless status is 200 (or 499 under the `bill_abandoned` policy)
    fallback: str | None = None
    steps: str | None = None  # a pipeline's steps, itemized (JSON: `steps_json`); their costs sum to `price`
    compute_cost: int | None = None  # micro-units: what its measured compute cost the house (None: not measured)
    trace_id: str | None = None  # W3C trace id (32 hex) of its trace: the client's traceparent or the gateway's span


@dataclass(frozen=True, slots=True)
class Correction:
    """A record already written, set to another status and price: its client left before the answer went out."""

    request_id: str
    status: int
    price: int


COLUMNS = [f.name for f in fields(Record)]
row_of = attrgetter(*COLUMNS)  # Record -> its row, in column order (dataclasses.astuple deep-copies: slow)


@dataclass(frozen=True)
class StoredResponse:
    """A response kept for `Idempotency-Key` replays."""

    request_id: str
    fingerprint: str  # of the request: a reused key with another request is refused
    status: int
    headers: dict[str, str]
    body: bytes
    omitted_bytes: int = 0  # > 0: the answer was too large for the store to keep (DynamoDB), `body` is empty


def steps_json(steps: Sequence[StepReport]) -> str:
    """A pipeline's steps as its ledger record keeps them: each model step's model, version, tier, function,
    compute and cost (built-in steps and lookups cost nothing and are kept with their time only)."""
    return orjson.dumps([s.to_dict() for s in steps]).decode()


@dataclass(frozen=True)
class StepUsage:
    """One step of a pipeline, summed over the pipeline's charged requests."""

    step: str
    model: str
    version: str
    tier: str
    requests: int
    compute_ms: float
    charged: int


def itemize(records: Iterable[tuple[str, str, str, str]]) -> dict[tuple[str, str, str], tuple[StepUsage, ...]]:
    """(model, version, tier, steps JSON) of charged pipeline records -> each (model, version, tier)'s steps."""
    totals: dict[tuple[str, str, str], dict[tuple[str, str, str, str], list[Any]]] = {}
    for model, version, tier, steps in records:
        by_step = totals.setdefault((model, version, tier), {})
        for s in orjson.loads(steps):
            if s.get("kind") != "model":
                continue
            total = by_step.setdefault((s["name"], s["model"], s["version"], s["tier"]), [0, 0.0, 0])
            total[0] += 1
            total[1] += s["compute_ms"]
            total[2] += s["cost"]
    return {
        key: tuple(StepUsage(*step, n, ms, charged) for step, (n, ms, charged) in by_step.items())
        for key, by_step in totals.items()
    }


@dataclass(frozen=True)
class UsageRow:
    model: str
    version: str
    tier: str
    requests: int  # answered
    failed: int  # recorded, not answered: refused, failed or timed out
    abandoned: int  # the client went away first (charged only under the `bill_abandoned` policy)
    compute_ms: float
    tokens: int
    charged: int  # micro-units
    compute_cost: int = 0  # micro-units: what the compute cost the house (the margin is charged - compute_cost)
    steps: tuple[StepUsage, ...] = ()  # a pipeline's charge, itemized by step


@dataclass(frozen=True)
class SpendRow:
    tenant: str
    tier: str
    requests: int  # recorded, whatever their outcome
    charged: int  # micro-units


class Ledger(Protocol):
    async def append(self, record: Record, response: tuple[str, str, StoredResponse] | None = None) -> None:
        """Make `record` durable (and `response` under (key id, idempotency key), in the same transaction);
        return once it is. Raises LedgerUnavailable when it cannot be."""
        ...

    async def correct(self, request_id: str, status: int, price: int) -> None:
        """Set a written record's status and price (and drop its stored answer); return once durable."""
        ...

    def stored_response(self, key_id: str, idempotency_key: str) -> StoredResponse | None: ...

    def charged_in_month(self, key_id: str, start: float, end: float) -> int: ...

    def usage(
        self, start: float, end: float, tenant: str | None = None, key_id: str | None = None
    ) -> list[UsageRow]: ...

    def spend(self, start: float, end: float) -> list[SpendRow]:
        """Money charged per tenant and tier over [start, end) (the dashboard's view of the month)."""
        ...

    def stats(self) -> dict[str, float]:
        """pending records, records and commits so far, the last group's size and lag (enqueue to durable)."""
        ...

    async def close(self) -> None: ...

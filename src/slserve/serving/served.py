"""What serving a request came to: the answer, where it ran, and what it is billed."""

from __future__ import annotations

from dataclasses import dataclass, field

from slserve.compose.run import StepReport
from slserve.platform.base import InferResult
from slserve.router.table import Route


@dataclass
class Served:
    result: InferResult
    route: Route
    tier: str  # the tier that served (and is billed: a tier served below its promise bills the one below)
    price: int  # micro-units of currency charged (`pricing`: by the request's work, never by the host's load)
    fallback: str | None  # "enc-v1->enc-v1-eco": the first choice's function, then the one that served
    steps: list[StepReport] = field(default_factory=list)  # a pipeline's steps, each with its own answer and cost
    compute_cost: int = 0  # micro-units: what the measured compute cost the house
    degraded: str | None = None  # how the tier was served below its promise (a GPU function on the CPU)

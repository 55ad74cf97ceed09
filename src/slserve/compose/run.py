"""Running a pipeline's graph for one request: every step starts as soon as the steps it reads have answered,
so independent steps run at once. Tensors pass between steps as numpy arrays, never as JSON; a model step goes
through the router (`call_model`), so it is routed, checked, run wherever its function is deployed and priced as
any request; an error names the step it came from.
"""

from __future__ import annotations

import asyncio
import copy
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from slserve import tracing
from slserve.compose import ops
from slserve.compose.graph import Graph
from slserve.compose.spec import Step
from slserve.errors import EntityNotFound, RuntimeUnavailable, SlserveError
from slserve.features import FeatureStore
from slserve.platform.base import InferResult


class Routed(Protocol):
    @property
    def model(self) -> str: ...


class StepAnswer(Protocol):
    """What a model step's call answers (the router's `Served`, which prices it as a request of its own)."""

    @property
    def result(self) -> InferResult: ...
    @property
    def route(self) -> Routed: ...
    @property
    def tier(self) -> str: ...
    @property
    def price(self) -> int: ...
    @property
    def compute_cost(self) -> int: ...


CallModel = Callable[[Step, dict[str, np.ndarray]], Awaitable[StepAnswer]]


@dataclass
class StepReport:
    name: str
    kind: str  # "model" | "op" | "lookup"
    ms: float  # wall time of the step itself (from its inputs being ready to its outputs)
    served: StepAnswer | None = None  # a model step's answer: function, version, tier, compute, price

    @property
    def cost(self) -> int:
        return self.served.price if self.served else 0

    def to_dict(self) -> dict[str, object]:
        doc: dict[str, object] = {"name": self.name, "kind": self.kind, "ms": round(self.ms, 3)}
        if self.served is not None:
            r = self.served.result
            doc.update(
                model=self.served.route.model,
                version=r.version,
                tier=self.served.tier,
                function=r.function,
                queue_ms=round(r.queue_ms, 3),
                compute_ms=round(r.compute_ms, 3),
                cold_start_ms=r.cold_start_ms,
                cost=self.served.price,
                compute_cost=self.served.compute_cost,
            )
        return doc


@dataclass
class Composed:
    outputs: dict[str, np.ndarray]
    steps: list[StepReport]  # in the graph's order


def in_step(error: SlserveError, step: Step) -> SlserveError:
    """The same error (class, status, retry-after) with the step it came from named first."""
    named = copy.copy(error)
    named.message = f"{step.describe()}: {error.message}"
    named.args = (named.message,)
    return named


async def run_graph(
    graph: Graph,
    inputs: dict[str, np.ndarray],
    call_model: CallModel,
    features: FeatureStore | None,
    outputs: list[str] | None = None,
) -> Composed:
    values: dict[str, np.ndarray] = dict(inputs)
    reports: dict[str, StepReport] = {}
    tasks: dict[str, asyncio.Task[None]] = {}

    async def run(step: Step) -> None:
        await asyncio.gather(*(tasks[name] for name in graph.needs[step.name]))
        started = time.perf_counter()
        served = None
        kind = "model" if step.model else "op" if step.op else "lookup"
        try:
            with tracing.span(f"step {step.name}", {"slserve.step.kind": kind}):  # (its span starts with its work)
                if step.model is not None:
                    assert isinstance(step.inputs, dict)
                    served = await call_model(step, {name: values[src] for name, src in step.inputs.items()})
                    out = served.result.outputs
                elif step.op is not None:
                    out = ops.apply(step, [values[src] for src in step.inputs])
                else:
                    assert step.key is not None
                    out = {"features": lookup(step, values[step.key], features)}
        except SlserveError as e:
            raise in_step(e, step) from None
        values.update({f"{step.name}.{name}": arr for name, arr in out.items()})
        reports[step.name] = StepReport(step.name, kind, (time.perf_counter() - started) * 1000, served)

    for step in graph.order:
        tasks[step.name] = asyncio.create_task(run(step))
    try:
        await asyncio.gather(*tasks.values())
    finally:
        for task in tasks.values():  # one step failed: the others stop (nobody wants their answers)
            task.cancel()
    wanted = graph.spec.outputs if outputs is None else {k: graph.spec.outputs[k] for k in outputs}
    return Composed({name: values[src] for name, src in wanted.items()}, [reports[s.name] for s in graph.order])


def lookup(step: Step, keys: np.ndarray, features: FeatureStore | None) -> np.ndarray:
    """The feature vectors of `keys` (BYTES or INT64), row for row; unknown keys get the step's default or a 404."""
    assert step.lookup is not None and step.width is not None
    table = step.lookup
    info = features.info(table) if features is not None else None
    if features is None or info is None:
        raise RuntimeUnavailable(
            f"feature table {table!r} is not loaded; load it with `slserve features load {table} FILE.parquet`"
        )
    if info.width != step.width:
        raise RuntimeUnavailable(
            f"feature table {table!r} has {info.width} features per key, the step takes {step.width}; reload the "
            "table or change the pipeline's width and rebuild it"
        )
    names = [bytes(k).decode("utf-8", "replace") if keys.dtype == object else str(int(k)) for k in keys]
    found = features.get(table, names)
    missing = [k for k in dict.fromkeys(names) if k not in found]
    if missing and step.default is None:
        shown = ", ".join(repr(k) for k in missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise EntityNotFound(f"feature table {table!r} has no key {shown}")
    default = np.asarray(step.default or [], dtype=np.float32)
    out = np.empty((len(names), step.width), dtype=np.float32)
    for i, name in enumerate(names):
        out[i] = found.get(name, default)
    return out

"""A pipeline's answer: its graph run step by step (`compose.run`), each model step routed for the caller,
checked against its function's signature and limits, and served and priced as a request of its own (in its own
tier, or the pipeline's); the pipeline is charged their sum."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

import numpy as np

from slserve.compose.run import run_graph
from slserve.compose.spec import Step
from slserve.errors import PayloadTooLarge, RuntimeUnavailable, SpecError
from slserve.platform.base import InferRequest, InferResult, Platform
from slserve.router.live import Resolve
from slserve.router.table import Route
from slserve.runtime.tensors import check_inputs
from slserve.serving.served import Served

if TYPE_CHECKING:
    from slserve.serving.runner import Runner


async def serve_pipeline(
    runner: Runner, platform: Platform, route: Route, tier: str, request: InferRequest, resolve: Resolve | None
) -> Served:
    router = runner.router
    name = next(f for t, f in route.candidates if t == tier)
    graph = router.graphs.get(name)
    if graph is None:
        raise RuntimeUnavailable(router.pipeline_errors.get(name) or f"pipeline {name} cannot serve")
    pipeline = router.pipelines[name]

    def step_route(model: str, selector: str | None, step_tier: str | None) -> Route:
        if resolve is not None:
            return resolve(model, selector, step_tier or tier)
        return router.default_route(model, selector, step_tier or tier)

    async def call_model(step: Step, inputs: dict[str, np.ndarray]) -> Served:
        assert step.model is not None
        routed = step_route(step.model, step.version, step.tier)
        fdef = router.signature_function(routed)
        if fdef.name in router.pipelines:
            raise SpecError(f"{step.model} is a pipeline; a step's model is served by functions")
        checked = check_inputs(fdef.spec.signature, inputs)
        rows, most = len(next(iter(checked.values()))), fdef.spec.limits.max_rows
        if rows > most:  # a pipeline's own limit never lifts a step's (it keeps the step's memory bounded)
            raise PayloadTooLarge(
                f"{rows} rows, over {fdef.name}'s limit of {most} per request (limits.max_rows); split the request"
            )
        call = dataclasses.replace(request, function=fdef.name, inputs=checked, outputs=None)
        return await runner.infer(platform, routed, call, resolve)

    composed = await run_graph(graph, request.inputs, call_model, runner.features, request.outputs)
    served = [s.served for s in composed.steps if s.served is not None]
    results = [s.result for s in served]
    cold = [r.cold_start_ms for r in results if r.cold_start_ms is not None]
    tokens = [r.tokens for r in results if r.tokens is not None]
    truncated = sum(r.notes.get("truncated", 0) for r in results)
    result = InferResult(
        composed.outputs,
        name,
        pipeline.spec.model.version,
        "pipeline",
        queue_ms=sum(r.queue_ms for r in results),
        compute_ms=sum(r.compute_ms for r in results),
        batch_size=next(iter(request.inputs.values())).shape[0],
        cold_start_ms=sum(cold) if cold else None,
        tokens=sum(tokens) if tokens else None,
        notes={"truncated": truncated} if truncated else {},
    )
    price, cost = sum(s.price for s in served), sum(s.compute_cost for s in served)
    return Served(result, route, tier, price, None, composed.steps, compute_cost=cost)

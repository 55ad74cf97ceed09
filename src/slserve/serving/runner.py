"""A routed request's way through its candidate functions: warm capacity first within a tier, fallback when a
tier cannot serve (never when the request may have run already), the price in the tier that served; then its
answer profiled for drift and its shadow copy started."""

from __future__ import annotations

import dataclasses
import time
from typing import Any

from slserve import tracing
from slserve.drift.monitor import DriftMonitor
from slserve.errors import InstanceFailed, Overloaded, RuntimeUnavailable, SlserveError
from slserve.features import FeatureStore
from slserve.platform.base import Deployed, InferRequest, InferResult, Platform
from slserve.router import pricing
from slserve.router.live import Resolve, Router
from slserve.router.table import Route
from slserve.serving.pipeline import serve_pipeline
from slserve.serving.served import Served
from slserve.serving.shadows import Comparisons, Shadows
from slserve.spec import Pricing, Signature

# What makes a tier "unable to serve" and lets the next candidate try: saturated, failing, no capacity.
CANNOT_SERVE = (Overloaded, RuntimeUnavailable, InstanceFailed)


class Runner:
    def __init__(
        self,
        router: Router,
        monitor: DriftMonitor | None = None,
        features: FeatureStore | None = None,
        comparisons: Comparisons | None = None,
    ) -> None:
        self.router = router
        self.monitor = monitor  # every answer of every model version (steps and shadows too) is profiled
        self.features = features  # the tables pipelines' lookups read
        self.shadows = Shadows(comparisons)  # counted here unless `comparisons` counts them for several

    def describe_routes(self) -> dict[str, Any]:
        """The routes in force, with how their shadows compare."""
        return {**self.router.describe(), "shadows": self.shadows.describe()}

    async def infer(
        self, platform: Platform, route: Route, request: InferRequest, resolve: Resolve | None = None
    ) -> Served:
        """`resolve` routes a pipeline's model steps for the caller (without it, a pipeline's steps take the
        route's tier and open every model: for callers inside the house only)."""
        ordered = _warm_first(platform, route.candidates)
        last: SlserveError | None = None
        for tier, function in ordered:
            pipeline = self.router.pipelines.get(function)
            if pipeline is not None:
                with tracing.span(f"pipeline {function}", {"slserve.tier": tier}):
                    served = await serve_pipeline(self, platform, route, tier, request, resolve)
                self._observe(route.model, route.version, pipeline.spec.signature, request, served.result)
                self._shadow(platform, route, request, served.result, resolve)
                return served
            try:
                self._check_hardware(platform, tier, function)
                routed = request if request.function == function else dataclasses.replace(request, function=function)
                with tracing.span(f"call {function}", {"slserve.tier": tier}):
                    started = time.monotonic()
                    result = await platform.infer(routed)
                    if tracing.enabled():
                        _trace_call(started, result)
            except CANNOT_SERVE as e:
                if isinstance(e, InstanceFailed) and e.may_have_run:
                    raise  # another tier would run it a second time, and bill it twice
                last = e
                continue
            fallback = None if (tier, function) == ordered[0] else f"{ordered[0][1]}->{function}"
            deployed = self.router.functions.get(function)  # (redeployed or removed meanwhile: not profiled)
            if deployed is not None:
                self._observe(route.model, result.version, deployed.spec.signature, routed, result)
            self._shadow(platform, route, request, result, resolve)
            return self._bill(result, route, tier, fallback, deployed, rows_of(routed))
        assert last is not None
        raise last

    def _observe(
        self, model: str, version: str, signature: Signature, request: InferRequest, answer: InferResult
    ) -> None:
        if self.monitor is not None:
            self.monitor.observe(model, version, signature, request.inputs, answer.outputs)

    def _shadow(
        self, platform: Platform, route: Route, request: InferRequest, primary: InferResult, resolve: Resolve | None
    ) -> None:
        if not route.shadow:
            return
        shadow_version = self.router.table.models[route.model].aliases[route.alias or ""].shadow_version or "?"

        async def run(shadow_route: Route, copy: InferRequest) -> InferResult:
            return (await self.infer(platform, shadow_route, copy, resolve)).result

        self.shadows.start(route, shadow_version, request, primary, run)

    def _check_hardware(self, platform: Platform, tier: str, function: str) -> None:
        """A tier set to refuse its functions without their GPU: the function is not run where it would get the
        CPU (fallback may take the request to another candidate)."""
        table = self.router.table
        if table.tiers[tier].without_gpu != "refuse":
            return
        deployed = self.router.functions.get(function)
        gpu = deployed.spec.resources.gpu if deployed is not None else None
        if gpu and platform.gives_gpu(function) is False:
            raise RuntimeUnavailable(
                f"{function} ({tier}) promises a {gpu} GPU and its target has none here; the tier refuses to serve "
                f'it on the CPU (tiers.{tier}.without_gpu = "refuse"; "degrade" serves it there at '
                f"{table.below(tier)}'s price)"
            )

    def _bill(
        self, result: InferResult, route: Route, tier: str, fallback: str | None, deployed: Deployed | None, rows: int
    ) -> Served:
        """The price of the work asked for, in the tier served; a tier served below its promise (its function
        names a GPU and ran on the CPU) is billed as the tier below it, and says so."""
        table = self.router.table
        degraded = None
        spec = deployed.spec if deployed is not None else None
        if spec is not None and spec.resources.gpu and result.device == "cpu":
            billed = table.below(tier)
            degraded = f"{tier} promises a {spec.resources.gpu} GPU; served on the CPU, billed as {billed}"
            tier = billed
        price = pricing.price(table.tiers[tier], spec.pricing if spec is not None else Pricing(), rows, result.tokens)
        cost = pricing.compute_cost(table.costs, result.compute_ms, result.device)
        return Served(result, route, tier, price, fallback, compute_cost=cost, degraded=degraded)


def _trace_call(started: float, result: InferResult) -> None:
    """A call's two parts, as the platform measured them: waiting for an instance (its cold start included),
    then running on it (with its batch)."""
    ended = time.monotonic()
    queued = min(ended, started + result.queue_ms / 1000)
    tracing.record("queue", started, queued, tracing.attributes_of({"slserve.cold_start_ms": result.cold_start_ms}))
    run = {
        "slserve.instance": result.instance,
        "slserve.batch_size": result.batch_size,
        "slserve.compute_ms": result.compute_ms,
        "slserve.device": result.device,
    }
    tracing.record("run", queued, ended, tracing.attributes_of(run))


def rows_of(request: InferRequest) -> int:
    """The rows a request asks for: its first input's first dimension (1 for a scalar input)."""
    first = next(iter(request.inputs.values()), None)
    return int(first.shape[0]) if first is not None and first.ndim else 1


def _warm_first(platform: Platform, candidates: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """Within each tier (candidates come grouped by tier, in fallback order), functions with warm free capacity
    go first, so a cold start happens only when no warm instance can take the request."""
    if len(candidates) < 2:
        return candidates
    order = {t: i for i, t in enumerate(dict.fromkeys(t for t, _ in candidates))}
    return sorted(candidates, key=lambda c: (order[c[0]], platform.warm_capacity(c[1]) == 0))

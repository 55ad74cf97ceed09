"""The live router: the current route table (reloaded when routes.toml changes), and a request's way through
its candidate functions: warm capacity first within a tier, fallback when a tier cannot serve, the price."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from itertools import chain
from pathlib import Path
from typing import Any

import numpy as np

from slserve.compose.catalog import DeployedPipeline, Pipelines, signatures_of
from slserve.compose.graph import Graph
from slserve.compose.run import StepReport, run_graph
from slserve.compose.spec import Step
from slserve.drift.comparison import OutputComparison
from slserve.drift.monitor import DriftMonitor
from slserve.errors import (
    Forbidden,
    InstanceFailed,
    ModelNotFound,
    Overloaded,
    PayloadTooLarge,
    RuntimeUnavailable,
    SlserveError,
    SpecError,
)
from slserve.features import FeatureStore
from slserve.platform.base import Deployed, InferRequest, InferResult, Platform
from slserve.router import pricing as pricing_
from slserve.router.config import load_routes
from slserve.router.table import BUCKETS, Route, RouteTable
from slserve.runtime.tensors import check_inputs
from slserve.spec import Pricing

log = logging.getLogger("slserve.router")
# What makes a tier "unable to serve" and lets the next candidate try: saturated, failing, no capacity.
CANNOT_SERVE = (Overloaded, RuntimeUnavailable, InstanceFailed)
# How a pipeline's model step is routed for the caller: (model, version or alias, tier or None) -> its route,
# within what the caller's key opens.
Resolve = Callable[[str, str | None, str | None], Route]


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


class Router:
    def __init__(
        self,
        functions: Mapping[str, Deployed],
        routes_path: Path,
        pipelines: Pipelines | None = None,
        features: FeatureStore | None = None,
        monitor: DriftMonitor | None = None,
    ) -> None:
        self.functions = functions
        self.monitor = monitor  # every answer of every model version (steps and shadows too) is profiled
        self.catalog = pipelines
        self.features = features
        self.graphs: dict[str, Graph] = {}  # pipelines whose steps fit the functions deployed now
        self.pipeline_errors: dict[str, str] = {}  # the others, and why not
        self.shadows: dict[tuple[str, str, str], OutputComparison] = {}  # (model, alias, shadow version) -> comparison
        self._shadow_tasks: set[asyncio.Task[None]] = set()
        self.routes_path = routes_path
        self.error: str | None = None
        self._seen: bytes | None = None
        self.table = RouteTable.build(self._served(), load_routes(routes_path))
        self._check_pipelines()
        self._seen = self._content()

    @property
    def pipelines(self) -> Mapping[str, DeployedPipeline]:
        return self.catalog.pipelines() if self.catalog else {}

    def _served(self) -> chain[Deployed | DeployedPipeline]:
        return chain(self.functions.values(), self.pipelines.values())

    def _check_pipelines(self) -> None:
        """Each built pipeline against the functions deployed now: one whose steps no longer fit (a model gone,
        a signature changed) cannot serve until they do, and says why."""
        self.graphs, self.pipeline_errors = {}, {}
        reach = signatures_of(self.functions.values())
        for name, pipeline in self.pipelines.items():
            if pipeline.digest is None:
                self.pipeline_errors[name] = pipeline.error or f"{name} is not built"
                continue
            try:
                self.graphs[name] = Graph.check(pipeline.spec, reach)
            except SpecError as e:
                self.pipeline_errors[name] = f"pipeline {name} cannot serve: {e.message}"
                log.error("%s", self.pipeline_errors[name])

    def _content(self) -> bytes | None:
        """The routes file's digest: a change is seen even within one tick of a coarse file clock."""
        try:
            return hashlib.blake2b(self.routes_path.read_bytes(), digest_size=16).digest()
        except FileNotFoundError:
            return None

    def reload_if_changed(self) -> bool:
        """Swap in the new table when routes.toml changed; a bad file keeps the old routes in force."""
        seen = self._content()
        if seen == self._seen:
            return False
        self._seen = seen
        return self.rebuild()

    def rebuild(self) -> bool:
        """A new table from routes.toml and the functions as they are now (the platform added, redeployed or
        removed some); when it does not validate, the old table stays in force and `error` says why."""
        try:
            self.table = RouteTable.build(self._served(), load_routes(self.routes_path))
        except SpecError as e:
            self.error = e.message
            log.error("routes not changed: %s", e.message)
            return False
        self._check_pipelines()
        self.error = None
        log.info("routes reloaded from %s", self.routes_path)
        return True

    def describe(self) -> dict[str, Any]:
        """The routes in force (and why a newer routes.toml was refused, if it was)."""
        models = {}
        for name, m in self.table.models.items():
            aliases = {}
            for alias, resolved in m.aliases.items():
                bounds = (0, *resolved.split.bounds)
                weights = {
                    v: (hi - lo) * 100 // BUCKETS
                    for v, lo, hi in zip(resolved.split.versions, bounds, bounds[1:], strict=False)
                }
                shadow = {"version": resolved.shadow_version, "percent": resolved.shadow_percent}
                aliases[alias] = {"split": weights, "shadow": shadow if resolved.shadow_version else None}
            models[name] = {"default": m.default, "versions": m.versions, "aliases": aliases}
        tiers = {name: tier.model_dump() for name, tier in self.table.tiers.items()}
        shadows = [
            {"model": m, "alias": a, "shadow_version": v, **stats.to_dict()}
            for (m, a, v), stats in self.shadows.items()
        ]
        return {
            "routes_file": str(self.routes_path),
            "error": self.error,
            "tiers": tiers,
            "models": models,
            "shadows": shadows,
        }

    def default_route(
        self, model: str, selector: str | None = None, tier: str | None = None, opens: tuple[str, ...] | None = None
    ) -> Route:
        """The route of a request with no routing key of its own (metadata, readiness, a pipeline's steps for
        callers inside the house): upgrades allowed, the split's first bucket."""
        return self.route(model, selector, routing_key="", tier=tier, allow_upgrade=True, draw=1.0, opens=opens)

    def route(
        self,
        model: str,
        selector: str | None,
        *,
        routing_key: str,
        tier: str | None,
        allow_upgrade: bool,
        draw: float,
        opens: tuple[str, ...] | None = None,
    ) -> Route:
        """A model name goes through the table; a function's own name addresses that function alone. `opens`:
        the models the caller's key opens (None: all); errors name nothing outside them."""
        fdef = self.functions.get(model) or self.pipelines.get(model)
        owner = model if model in self.table.models else fdef.spec.model.name if fdef else None
        if owner is not None and opens is not None and owner not in opens:
            raise Forbidden(f"this API key does not open model {owner!r}; it opens {sorted(opens)}")
        if model in self.table.models:
            return self.table.resolve(model, selector, routing_key, tier, allow_upgrade, draw)
        if fdef is None:
            known = {*self.table.models, *self.functions}
            if opens is not None:
                known = {m for m in self.table.models if m in opens}
                known |= {f for f, d in self.functions.items() if d.spec.model.name in opens}
                known |= {p for p, d in self.pipelines.items() if d.spec.model.name in opens}
            raise ModelNotFound(f"unknown model {model!r}; this API key can use {sorted(known)}")
        if selector is not None and selector != fdef.spec.model.version:
            raise ModelNotFound(f"function {model!r} serves version {fdef.spec.model.version!r}, not {selector!r}")
        tier = fdef.spec.tier or tier or "standard"
        return Route(fdef.spec.model.name, fdef.spec.model.version, None, tier, [(tier, model)])

    def signature_function(self, route: Route) -> Deployed | DeployedPipeline:
        """The function (or pipeline) whose signature requests of this route are checked against (all candidates
        of one model version share it)."""
        name = route.candidates[0][1]
        found = self.functions.get(name) or self.pipelines.get(name)
        if found is None:  # removed since the request was routed (while its body was read)
            raise ModelNotFound(
                f"{route.model} version {route.version} ({name}) was just removed; retry for the routes now"
            )
        return found

    async def infer(
        self, platform: Platform, route: Route, request: InferRequest, resolve: Resolve | None = None
    ) -> Served:
        """`resolve` routes a pipeline's model steps for the caller (without it, a pipeline's steps take the
        route's tier and open every model: for callers inside the house only)."""
        ordered = _warm_first(platform, route.candidates)
        last: SlserveError | None = None
        for tier, function in ordered:
            if function in self.pipelines:
                served = await self._compose(platform, route, tier, request, resolve)
                if self.monitor is not None:
                    signature = self.pipelines[function].spec.signature
                    self.monitor.observe(route.model, route.version, signature, request.inputs, served.result.outputs)
                if route.shadow:
                    self._start_shadow(platform, route, request, served.result, resolve)
                return served
            try:
                self._check_hardware(platform, tier, function)
                routed = request if request.function == function else dataclasses.replace(request, function=function)
                result = await platform.infer(routed)
            except CANNOT_SERVE as e:
                if isinstance(e, InstanceFailed) and e.may_have_run:
                    raise  # another tier would run it a second time, and bill it twice
                last = e
                continue
            fallback = None if (tier, function) == ordered[0] else f"{ordered[0][1]}->{function}"
            deployed = self.functions.get(function)  # (redeployed or removed meanwhile: not profiled)
            if self.monitor is not None and deployed is not None:
                signature = deployed.spec.signature
                self.monitor.observe(route.model, result.version, signature, routed.inputs, result.outputs)
            if route.shadow:
                self._start_shadow(platform, route, request, result, resolve)
            return self._bill(result, route, tier, fallback, deployed, rows_of(routed))
        assert last is not None
        raise last

    async def _compose(
        self, platform: Platform, route: Route, tier: str, request: InferRequest, resolve: Resolve | None
    ) -> Served:
        """A pipeline's answer: its graph run step by step, each model step routed and priced as a request of its
        own (in its own tier, or the pipeline's), the pipeline charged their sum."""
        name = next(f for t, f in route.candidates if t == tier)
        graph = self.graphs.get(name)
        if graph is None:
            raise RuntimeUnavailable(self.pipeline_errors.get(name) or f"pipeline {name} cannot serve")
        pipeline = self.pipelines[name]

        def step_route(model: str, selector: str | None, step_tier: str | None) -> Route:
            if resolve is not None:
                return resolve(model, selector, step_tier or tier)
            return self.default_route(model, selector, step_tier or tier)

        async def call_model(step: Step, inputs: dict[str, np.ndarray]) -> Served:
            assert step.model is not None
            step_route_ = step_route(step.model, step.version, step.tier)
            fdef = self.signature_function(step_route_)
            if fdef.name in self.pipelines:
                raise SpecError(f"{step.model} is a pipeline; a step's model is served by functions")
            checked = check_inputs(fdef.spec.signature, inputs)
            rows, most = len(next(iter(checked.values()))), fdef.spec.limits.max_rows
            if rows > most:  # a pipeline's own limit never lifts a step's (it keeps the step's memory bounded)
                raise PayloadTooLarge(
                    f"{rows} rows, over {fdef.name}'s limit of {most} per request (limits.max_rows); split the request"
                )
            call = dataclasses.replace(request, function=fdef.name, inputs=checked, outputs=None)
            return await self.infer(platform, step_route_, call, resolve)

        composed = await run_graph(graph, request.inputs, call_model, self.features, request.outputs)
        served = [s.served for s in composed.steps if s.served is not None]
        results = [s.result for s in served]
        cold = [r.cold_start_ms for r in results if r.cold_start_ms is not None]
        tokens = [r.tokens for r in results if r.tokens is not None]
        rows = next(iter(request.inputs.values())).shape[0]
        result = InferResult(
            composed.outputs,
            name,
            pipeline.spec.model.version,
            "pipeline",
            queue_ms=sum(r.queue_ms for r in results),
            compute_ms=sum(r.compute_ms for r in results),
            batch_size=rows,
            cold_start_ms=sum(cold) if cold else None,
            tokens=sum(tokens) if tokens else None,
            notes={"truncated": truncated} if (truncated := sum(r.notes.get("truncated", 0) for r in results)) else {},
        )
        price, cost = sum(s.price for s in served), sum(s.compute_cost for s in served)
        return Served(result, route, tier, price, None, composed.steps, compute_cost=cost)

    def _start_shadow(
        self,
        platform: Platform,
        route: Route,
        request: InferRequest,
        primary: InferResult,
        resolve: Resolve | None = None,
    ) -> None:
        """Run the shadow after the primary answered: the caller never waits for it, never sees it, is never
        billed for it."""
        shadow_version = self.table.models[route.model].aliases[route.alias or ""].shadow_version or "?"
        key = (route.model, route.alias or "", shadow_version)
        stats = self.shadows.setdefault(key, OutputComparison())
        # The caller has its answer: its disconnect or deadline must not stop the shadow halfway.
        shadow_request = dataclasses.replace(request, function=route.shadow[0][1], cancellation=None, deadline=None)

        async def run() -> None:
            try:
                shadow_route = dataclasses.replace(route, candidates=route.shadow, shadow=[])
                result = (await self.infer(platform, shadow_route, shadow_request, resolve)).result
            except SlserveError:
                stats.failed()
                return
            stats.add(primary.outputs, result.outputs)

        task = asyncio.get_running_loop().create_task(run())
        self._shadow_tasks.add(task)
        task.add_done_callback(self._shadow_tasks.discard)

    def _check_hardware(self, platform: Platform, tier: str, function: str) -> None:
        """A tier set to refuse its functions without their GPU: the function is not run where it would get the
        CPU (fallback may take the request to another candidate)."""
        if self.table.tiers[tier].without_gpu != "refuse":
            return
        deployed = self.functions.get(function)
        gpu = deployed.spec.resources.gpu if deployed is not None else None
        if gpu and platform.gives_gpu(function) is False:
            raise RuntimeUnavailable(
                f"{function} ({tier}) promises a {gpu} GPU and its target has none here; the tier refuses to serve "
                f'it on the CPU (tiers.{tier}.without_gpu = "refuse"; "degrade" serves it there at '
                f"{self.table.below(tier)}'s price)"
            )

    def _bill(
        self, result: InferResult, route: Route, tier: str, fallback: str | None, deployed: Deployed | None, rows: int
    ) -> Served:
        """The price of the work asked for, in the tier served; a tier served below its promise (its function
        names a GPU and ran on the CPU) is billed as the tier below it, and says so."""
        degraded = None
        spec = deployed.spec if deployed is not None else None
        if spec is not None and spec.resources.gpu and result.device == "cpu":
            billed = self.table.below(tier)
            degraded = f"{tier} promises a {spec.resources.gpu} GPU; served on the CPU, billed as {billed}"
            tier = billed
        pricing = spec.pricing if spec is not None else Pricing()
        price = pricing_.price(self.table.tiers[tier], pricing, rows, result.tokens)
        cost = pricing_.compute_cost(self.table.costs, result.compute_ms, result.device)
        return Served(result, route, tier, price, fallback, compute_cost=cost, degraded=degraded)


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

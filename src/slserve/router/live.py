"""The live router: the route table in force (reloaded when routes.toml changes, rebuilt when functions are
deployed or removed) and the pipelines whose steps fit the functions deployed now. It chooses; running a routed
request is `serving`'s."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Mapping
from itertools import chain
from pathlib import Path
from typing import Any

from slserve.compose.catalog import DeployedPipeline, Pipelines, signatures_of
from slserve.compose.graph import Graph
from slserve.errors import Forbidden, ModelNotFound, SpecError
from slserve.platform.base import Deployed
from slserve.router.config import load_routes
from slserve.router.table import BUCKETS, Route, RouteTable

log = logging.getLogger("slserve.router")
# How a pipeline's model step is routed for the caller: (model, version or alias, tier or None) -> its route,
# within what the caller's key opens.
Resolve = Callable[[str, str | None, str | None], Route]


class Router:
    def __init__(
        self,
        functions: Mapping[str, Deployed],
        routes_path: Path,
        pipelines: Pipelines | None = None,
    ) -> None:
        self.functions = functions
        self.catalog = pipelines
        self.graphs: dict[str, Graph] = {}  # pipelines whose steps fit the functions deployed now
        self.pipeline_errors: dict[str, str] = {}  # the others, and why not
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
        return {"routes_file": str(self.routes_path), "error": self.error, "tiers": tiers, "models": models}

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

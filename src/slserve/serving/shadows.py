"""Shadow copies: after the primary answered, the same request runs on the shadow version and the two answers
are compared. The caller never waits for it, never sees it, is never billed for it.

The comparisons are counted in this process, or, with several front workers, in the platform process for all
of them (`platform.linked.LinkedComparisons`)."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from slserve.drift.comparison import OutputComparison, ShadowKey
from slserve.errors import SlserveError
from slserve.platform.base import InferRequest, InferResult
from slserve.router.table import Route


class Comparisons(Protocol):
    """Where each shadow's comparisons add up."""

    def record(self, key: ShadowKey, comparison: OutputComparison) -> None:
        """One shadow request's comparison (or its failure)."""
        ...

    def totals(self) -> dict[ShadowKey, OutputComparison]: ...


class LocalComparisons:
    def __init__(self) -> None:
        self._totals: dict[ShadowKey, OutputComparison] = {}

    def record(self, key: ShadowKey, comparison: OutputComparison) -> None:
        self._totals.setdefault(key, OutputComparison()).merge(comparison)

    def totals(self) -> dict[ShadowKey, OutputComparison]:
        return self._totals


class Shadows:
    def __init__(self, comparisons: Comparisons | None = None) -> None:
        self.comparisons = comparisons or LocalComparisons()
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def stats(self) -> dict[ShadowKey, OutputComparison]:
        return self.comparisons.totals()

    def start(
        self,
        route: Route,
        shadow_version: str,
        request: InferRequest,
        primary: InferResult,
        run: Callable[[Route, InferRequest], Awaitable[InferResult]],
    ) -> None:
        """`run` serves the copy on the shadow's route."""
        key = (route.model, route.alias or "", shadow_version)
        # The caller has its answer: its disconnect or deadline must not stop the shadow halfway.
        copy = dataclasses.replace(request, function=route.shadow[0][1], cancellation=None, deadline=None)
        shadow_route = dataclasses.replace(route, candidates=route.shadow, shadow=[])

        async def compare() -> None:
            this = OutputComparison()
            try:
                result = await run(shadow_route, copy)
            except SlserveError:
                this.failed()
            else:
                this.add(primary.outputs, result.outputs)
            self.comparisons.record(key, this)

        task = asyncio.get_running_loop().create_task(compare())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def describe(self, model: str | None = None) -> list[dict[str, Any]]:
        return [
            {"model": m, "alias": a, "shadow_version": v, **stats.to_dict()}
            for (m, a, v), stats in self.stats.items()
            if model is None or m == model
        ]

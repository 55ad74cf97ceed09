"""Shadow copies: after the primary answered, the same request runs on the shadow version and the two answers
are compared. The caller never waits for it, never sees it, is never billed for it."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Awaitable, Callable
from typing import Any

from slserve.drift.comparison import OutputComparison
from slserve.errors import SlserveError
from slserve.platform.base import InferRequest, InferResult
from slserve.router.table import Route

ShadowKey = tuple[str, str, str]  # (model, alias, shadow version)


class Shadows:
    def __init__(self) -> None:
        self.stats: dict[ShadowKey, OutputComparison] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def start(
        self,
        route: Route,
        shadow_version: str,
        request: InferRequest,
        primary: InferResult,
        run: Callable[[Route, InferRequest], Awaitable[InferResult]],
    ) -> None:
        """`run` serves the copy on the shadow's route."""
        stats = self.stats.setdefault((route.model, route.alias or "", shadow_version), OutputComparison())
        # The caller has its answer: its disconnect or deadline must not stop the shadow halfway.
        copy = dataclasses.replace(request, function=route.shadow[0][1], cancellation=None, deadline=None)
        shadow_route = dataclasses.replace(route, candidates=route.shadow, shadow=[])

        async def compare() -> None:
            try:
                result = await run(shadow_route, copy)
            except SlserveError:
                stats.failed()
                return
            stats.add(primary.outputs, result.outputs)

        task = asyncio.get_running_loop().create_task(compare())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def describe(self, model: str | None = None) -> list[dict[str, Any]]:
        return [
            {"model": m, "alias": a, "shadow_version": v, **stats.to_dict()}
            for (m, a, v), stats in self.stats.items()
            if model is None or m == model
        ]

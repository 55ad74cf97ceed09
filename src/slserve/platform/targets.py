"""The platform the gateway runs on: a catalog of what is deployed, and an executor per target that runs it.

Each function's calls go to the executor its `target` names (`local`, `aws`, `modal`), so one gateway can keep
its standard tier on this machine and send its premium tier elsewhere. A function whose target has no executor
in this gateway is listed, and refused with the reason (503) instead of served.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import Any

from slserve.errors import ModelNotFound, RuntimeUnavailable
from slserve.platform.base import Catalog, Deployed, Executor, FunctionStatus, InferRequest, InferResult

log = logging.getLogger("slserve.platform")


class Targets:
    def __init__(
        self, catalog: Catalog, executors: Mapping[str, Executor], missing: Mapping[str, str] | None = None
    ) -> None:
        """`missing`: why a target has no executor here (what to configure), said in its functions' refusals."""
        self.catalog = catalog
        self.executors = dict(executors)
        self.missing = dict(missing or {})
        self._retry: dict[str, Deployed] = {}  # deployments an executor could not take in: tried again

    def functions(self) -> Mapping[str, Deployed]:
        return self.catalog.functions()

    def _distinct(self) -> list[Executor]:
        """Each executor once: a front worker's serves every target."""
        return list({id(e): e for e in self.executors.values()}.values())

    def _executor(self, function: Deployed) -> Executor | None:
        return self.executors.get(function.target)

    def _unrunnable(self, function: Deployed) -> str:
        known = ", ".join(sorted(self.executors)) or "none"
        why = self.missing.get(function.target, "configure that target")
        return (
            f"{function.name} names target {function.target!r}, which this gateway does not run (it runs: {known}); "
            f"{why}, or set `target` in its function.toml"
        )

    async def start(self) -> None:
        functions = list(self.functions().values())
        for executor in self._distinct():
            await executor.start([f for f in functions if self.executors.get(f.target) is executor])
        for function in functions:
            if self._executor(function) is None:
                log.warning("%s", self._unrunnable(function))

    async def stop(self, drain_seconds: float) -> None:
        await asyncio.gather(*(e.stop(drain_seconds) for e in self._distinct()))

    def refresh(self) -> bool:
        """Take in what the catalog says changed; returns whether the functions the router sees changed."""
        changes = self.catalog.refresh()
        pending = {**self._retry, **{f.name: f for f in changes.deployed}}
        self._retry = {}
        for name, function in pending.items():
            for target, other in self.executors.items():  # it may have moved to another target
                if target != function.target:
                    other.remove(name)
            executor = self._executor(function)
            if executor is None:
                log.warning("%s", self._unrunnable(function))
                continue
            try:
                executor.deploy(function)
            except Exception:  # one function's trouble must not stop the others (nor the watcher)
                log.exception("function %s: could not take in its new deployment; will try again", name)
                self._retry[name] = function
        for name in changes.removed:
            for executor in self.executors.values():
                executor.remove(name)
        return bool(changes)

    def _target_of(self, name: str) -> Executor:
        function = self.functions().get(name)
        if function is None:
            raise ModelNotFound(f"no function named {name!r}; GET /v2/models lists them")
        executor = self._executor(function)
        if executor is None:
            raise RuntimeUnavailable(self._unrunnable(function))
        return executor

    async def infer(self, request: InferRequest) -> InferResult:
        return await self._target_of(request.function).infer(request)

    def warm_capacity(self, function: str) -> int:
        deployed = self.functions().get(function)
        executor = self._executor(deployed) if deployed is not None else None
        return 0 if executor is None else executor.warm_capacity(function)

    def gives_gpu(self, function: str) -> bool | None:
        deployed = self.functions().get(function)
        executor = self._executor(deployed) if deployed is not None else None
        return None if executor is None else executor.gives_gpu(function)

    def ready(self) -> bool:
        return all(e.ready() for e in self.executors.values())

    async def catch_up(self) -> None:
        await asyncio.gather(*(e.catch_up() for e in self._distinct()))

    def host(self) -> dict[str, Any] | None:
        local = self.executors.get("local")
        return None if local is None else local.host()

    def status(self) -> list[FunctionStatus]:
        out = []
        for function in self.functions().values():
            executor = self._executor(function)
            if executor is not None:
                out.append(executor.status(function.name))
                out[-1].stale = function.stale  # the catalog's word: it changes without a redeploy
                continue
            out.append(FunctionStatus.of(function, error=self._unrunnable(function)))
        return out

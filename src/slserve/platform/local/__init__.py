"""The local executor: every function runs as OS processes forked from its family's template on this machine."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from pathlib import Path
from typing import Any

from slserve.errors import ArtifactCorrupt, ArtifactNotFound, ModelNotFound
from slserve.keepalive import load_gaps, save_gaps
from slserve.platform.base import Deployed, FunctionStatus, InferRequest, InferResult
from slserve.platform.local.budget import MemoryBudget, default_budget
from slserve.platform.local.cores import HostCores
from slserve.platform.local.families import Families, Member, family_modules
from slserve.platform.local.pool import FunctionPool
from slserve.platform.local.preloads import Preloads
from slserve.platform.local.template_handle import Template
from slserve.snapshot import ArtifactStore

TICK_S = 0.5
RECORD_GAPS_S = 60.0
POLICE_S = 0.1  # memory limits and abandoned work are checked this often (a few /proc reads)
REMOVED_DRAIN_S = 30.0
CHECK_ARTIFACTS_S = 2.0  # blobs are looked at this often: a stat and a marker read each, unless one changed
log = logging.getLogger("slserve.platform")


class LocalExecutor:
    """A pool per function, the templates they fork from, and the loops that keep them honest: scale-downs,
    memory limits and abandoned work, artifact checks."""

    def __init__(
        self,
        store: ArtifactStore,
        cores: int | None = None,
        memory_budget: int | None = None,
        learned: bool = True,
        gaps_file: Path | None = None,
    ) -> None:
        """`memory_budget`: bytes every process of the server may hold together (default: `default_budget`);
        `learned`: keep-alive learned per function (else fixed, for comparison: see `budget`); `gaps_file`:
        where each function's idle gaps are kept across restarts (and read by `slserve deploy modal`)."""
        self.gaps_file = gaps_file
        self._recorded = load_gaps(gaps_file) if gaps_file is not None else {}
        self.store = store
        self.pools: dict[str, FunctionPool] = {}
        self.cores = HostCores(lambda: (i for p in self.pools.values() for i in p.instances.values()), cores)
        recorded = None if gaps_file is None or not gaps_file.exists() else set(self._recorded)
        self.families = Families(store.root, self._members, Preloads(recorded))
        self.budget = MemoryBudget(memory_budget or default_budget(), self.pools.values, learned)
        self._tasks: list[asyncio.Task[None]] = []
        self._draining: set[asyncio.Task[None]] = set()
        self._check_now = asyncio.Event()

    def _members(self, family: str) -> list[Member]:
        return [p for p in self.pools.values() if p.function.spec.framework.value == family and p.digest]

    def launch(self, functions: list[Deployed]) -> None:
        """Start the templates now, before the gateway's own start (imports, app, server), which their imports
        then overlap; `start` takes them over."""
        self.families.launch([f for f in functions if f.digest])

    async def start(self, functions: list[Deployed]) -> None:
        self.families.start([f for f in functions if f.digest])
        for function in functions:
            template = self.families.templates.get(function.spec.framework.value)
            self.pools[function.name] = self._pool(function, template)
        self.budget.start()
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(c) for c in (self._tick(), self._watch_instances(), self._check_artifacts())]

    def deploy(self, function: Deployed) -> None:
        """A new function starts serving; a rebuilt one moves to its new artifact without a cold start for
        anyone (see `FunctionPool.redeploy`); the family's template is renewed to preload the new build."""
        template = self.families.template_for(function) if function.digest else None
        pool = self.pools.get(function.name)
        if pool is None:
            self.pools[function.name] = self._pool(function, template)
        elif function.digest is not None:
            pool.redeploy(function, template)
        self._check_now.set()
        if function.digest:
            log.info("function %s now serves artifact %s", function.name, function.digest[:12])
            self.families.renew_stale()
        else:
            log.warning("function %s cannot serve: %s", function.name, function.error)

    def _pool(self, function: Deployed, template: Template | None) -> FunctionPool:
        gaps = self._recorded.pop(function.name, None)
        return FunctionPool(function, template, self.store.root, self.cores, self.budget, gaps)

    def remove(self, name: str) -> None:
        pool = self.pools.pop(name, None)
        if pool is None:
            return
        task = asyncio.get_running_loop().create_task(pool.drain(REMOVED_DRAIN_S))
        self._draining.add(task)
        task.add_done_callback(self._draining.discard)
        log.info("function %s was removed; its instances drain", name)

    async def _tick(self) -> None:
        """Scale-downs happen with time, not with requests; the idle gaps are recorded now and then."""
        recorded = time.monotonic()
        while True:
            await asyncio.sleep(TICK_S)
            for pool in self.pools.values():
                pool.autoscale()
            if time.monotonic() - recorded >= RECORD_GAPS_S:
                recorded = time.monotonic()
                self._record_gaps()

    def _record_gaps(self) -> None:
        if self.gaps_file is not None:
            try:
                save_gaps(self.gaps_file, {name: pool.rhythm for name, pool in self.pools.items()})
            except OSError as e:
                log.warning("the functions' idle gaps could not be recorded in %s: %s", self.gaps_file, e)

    async def _watch_instances(self) -> None:
        while True:
            await asyncio.sleep(POLICE_S)
            now = time.monotonic()
            for pool in self.pools.values():
                pool.police(now)

    async def _check_artifacts(self) -> None:
        """Each served artifact's blobs against their checksums, off the event loop: a blob hashed once keeps
        a marker of its stat, so a check is a stat per blob, and a blob written to since is hashed again."""
        while True:
            for pool in list(self.pools.values()):
                digest = pool.digest
                if digest is not None:
                    pool.artifact_checked(digest, await asyncio.to_thread(self._artifact_problem, digest))
            self._check_now.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._check_now.wait(), CHECK_ARTIFACTS_S)

    def _artifact_problem(self, digest: str) -> str | None:
        try:
            self.store.open(digest).verify()
        except (ArtifactCorrupt, ArtifactNotFound) as e:
            return e.message
        return None

    def ready(self) -> bool:
        return self.families.ready()

    async def catch_up(self) -> None:
        pass  # its status is this process's own

    def pool(self, name: str) -> FunctionPool:
        try:
            return self.pools[name]
        except KeyError:
            raise ModelNotFound(f"no function named {name!r}; GET /v2/models lists them") from None

    async def infer(self, request: InferRequest) -> InferResult:
        pool = self.pool(request.function)
        if self.families.preloads.called(pool.function):  # newly in use: its build joins its template's preloads
            self.families.renew_stale()
        return await pool.infer(request)

    def warm_capacity(self, function: str) -> int:
        return self.pool(function).warm_capacity()

    def gives_gpu(self, function: str) -> bool | None:
        return self.pool(function).gives_gpu()

    def host(self) -> dict[str, Any] | None:
        return {"memory": self.budget.status()}

    def status(self, function: str) -> FunctionStatus:
        """The pool's status; ready only once its runtime family's template forks it ready to serve (an ONNX
        function is ready while torch still imports; big-mlp while MiniLM's model code still imports)."""
        pool = self.pool(function)
        status = pool.status()
        template = self.families.templates.get(status.framework)
        if status.ready and template is not None and not template.ready_for(pool.digest):
            return dataclasses.replace(status, ready=False)
        return status

    async def stop(self, drain_seconds: float) -> None:
        self.budget.stop()
        self._record_gaps()
        self.families.halt()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*(p.drain(drain_seconds) for p in self.pools.values()), *self._draining)
        self.families.stop()


__all__ = ["LocalExecutor", "family_modules"]

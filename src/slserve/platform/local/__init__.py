"""The embedded platform: every function runs as OS processes forked from a template on this machine."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

from slserve.build.key import stale_reason
from slserve.errors import ArtifactNotFound, ModelNotFound
from slserve.platform.base import FunctionStatus, InferRequest, InferResult
from slserve.platform.local.pool import FunctionPool
from slserve.platform.local.templates import RUNTIME_MODULES, Template
from slserve.snapshot import ArtifactStore
from slserve.spec import FunctionDef

TICK_S = 0.5


def family_modules(functions: list[FunctionDef]) -> dict[str, list[str]]:
    """Per runtime family, what its template imports: the adapter and every function's own modules (model
    code, processors), so that an instance imports nothing after the fork."""
    families: dict[str, list[str]] = {}
    for fdef in functions:
        spec = fdef.spec
        modules = families.setdefault(spec.framework.value, list(RUNTIME_MODULES[spec.framework.value]))
        refs = [spec.source.factory, spec.processor.factory if spec.processor else None]
        for ref in refs:
            module = ref.partition(":")[0] if ref else None
            if module and module not in modules:
                modules.append(module)
    return families


class LocalPlatform:
    def __init__(self, functions: list[FunctionDef], store: ArtifactStore) -> None:
        self.store = store
        self._functions = {f.name: f for f in functions}
        self.templates: dict[str, Template] = {}
        self.pools: dict[str, FunctionPool] = {}
        self._ticker: asyncio.Task[None] | None = None

    async def start(self) -> None:
        built: dict[str, str | None] = {}
        errors: dict[str, str] = {}
        for name, fdef in self._functions.items():
            built[name], error = self._current(fdef)
            if error:
                errors[name] = error
        wanted = [f for f in self._functions.values() if built[f.name]]
        for family, modules in family_modules(wanted).items():
            digests = [d for f in wanted if f.spec.framework.value == family and (d := built[f.name])]
            template = Template(family, modules, self.store.root, digests)
            template.start()
            self.templates[family] = template
        for name, fdef in self._functions.items():
            template_of_family = self.templates.get(fdef.spec.framework.value)
            self.pools[name] = FunctionPool(fdef, template_of_family, self.store.root, built[name], errors.get(name))
        self._ticker = asyncio.get_running_loop().create_task(self._tick())

    def _current(self, fdef: FunctionDef) -> tuple[str | None, str | None]:
        """The digest to serve, or None and why not (never built, or built from another spec or model code)."""
        try:
            artifact = self.store.current(fdef.name)
        except ArtifactNotFound:
            return None, f"{fdef.name} is not built: run `slserve build {fdef.name}`"
        reason = stale_reason(fdef, artifact)
        return (None, reason) if reason else (artifact.digest, None)

    async def _tick(self) -> None:
        """Scale-downs happen with time, not with requests."""
        while True:
            await asyncio.sleep(TICK_S)
            for pool in self.pools.values():
                pool.autoscale()

    async def wait_templates(self) -> None:
        await asyncio.gather(*(t.wait_ready() for t in self.templates.values()), return_exceptions=True)

    def ready(self) -> bool:
        return all(t.ready for t in self.templates.values())

    def functions(self) -> Mapping[str, FunctionDef]:
        return self._functions

    def pool(self, name: str) -> FunctionPool:
        try:
            return self.pools[name]
        except KeyError:
            raise ModelNotFound(f"no function named {name!r}; GET /v2/models lists them") from None

    async def infer(self, request: InferRequest) -> InferResult:
        return await self.pool(request.function).infer(request)

    def warm_capacity(self, function: str) -> int:
        return self.pool(function).warm_capacity()

    def status(self) -> list[FunctionStatus]:
        return [p.status() for p in self.pools.values()]

    async def stop(self, drain_seconds: float) -> None:
        if self._ticker is not None:
            self._ticker.cancel()
        await asyncio.gather(*(p.drain(drain_seconds) for p in self.pools.values()))
        for template in self.templates.values():
            template.stop()


__all__ = ["LocalPlatform", "family_modules"]

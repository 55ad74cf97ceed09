"""One template process per runtime family (torch, onnx), kept current and kept alive.

A template preloads the builds it was started with: those in use (`preloads.Preloads`). When a build in use is
missing from its template (a new function, a rebuild, a build just called for the first time), a new template is
started with every build of the family in use; once it is ready,
new instances fork from it, and the old one exits with its last instance. A template that dies unasked is
replaced the same way, after a pause that grows while it keeps dying.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Protocol

from slserve.errors import RuntimeUnavailable
from slserve.platform.base import Deployed
from slserve.platform.local.preloads import Preloads
from slserve.platform.local.template_handle import RUNTIME_MODULES, Template
from slserve.runtime.code import artifact_provides
from slserve.snapshot import ArtifactStore

RESTART_BACKOFF_S = (0.0, 1.0, 2.0, 5.0, 10.0, 30.0)  # a template that keeps dying is restarted ever more slowly
log = logging.getLogger("slserve.platform")


class Member(Protocol):
    """A function served from a family's template (the local pool)."""

    @property
    def function(self) -> Deployed: ...

    def use_template(self, template: Template) -> None: ...


def family_modules(functions: Iterable[Deployed], store: ArtifactStore) -> dict[str, list[str]]:
    """Per runtime family, what its template imports: the adapter and every function's installed modules (model
    code, processors), so that an instance imports nothing after the fork. A function's own code (in its folder,
    and so in its artifact) is imported with its preloaded build instead."""
    families: dict[str, list[str]] = {}
    for function in functions:
        spec = function.spec
        modules = families.setdefault(spec.framework.value, list(RUNTIME_MODULES[spec.framework.value]))
        manifest = store.open(function.digest).manifest if function.digest else None
        refs = [spec.source.factory, spec.processor.factory if spec.processor else None]
        for ref in refs:
            module = ref.partition(":")[0] if ref else None
            if not module or module in modules or (manifest and artifact_provides(manifest, module)):
                continue
            modules.append(module)
    return families


class Families:
    """The templates, by family. `members(family)` lists the functions with a build to serve in it."""

    def __init__(
        self, artifacts: Path, members: Callable[[str], list[Member]], preloads: Preloads | None = None
    ) -> None:
        self.artifacts = artifacts
        self.preloads = preloads or Preloads(None)
        self.store = ArtifactStore(artifacts)
        self.members = members
        self.templates: dict[str, Template] = {}
        self._renewing: dict[str, asyncio.Task[None]] = {}  # family -> its template being renewed
        self._retired: list[Template] = []
        self._restarts: dict[str, int] = {}  # family -> template crashes in a row
        self._stopping = False

    def launch(self, functions: list[Deployed]) -> None:
        """A template process per family of `functions`, preloading each one's build; `start` listens to them."""
        for family, modules in family_modules(functions, self.store).items():
            digests = [d for f in self._preloaded(functions) if f.spec.framework.value == family and (d := f.digest)]
            self.templates[family] = self._new(family, modules, digests, attach=False)

    def start(self, functions: list[Deployed]) -> None:
        """The templates `launch` started, or (none launched) a template per family of `functions`; listened to
        on the running loop from now on."""
        if not self.templates:
            self.launch(functions)
        for template in self.templates.values():
            template.attach()

    def template_for(self, function: Deployed) -> Template:
        """The family's running template, or a new one. A build the running template lacks is loaded after the
        fork until the template is renewed (`renew_stale`)."""
        assert function.digest is not None
        family = function.spec.framework.value
        if family not in self.templates:
            self.templates[family] = self._new(
                family,
                family_modules([function], self.store)[family],
                [function.digest] * self.preloads.wants(function),
            )
        return self.templates[family]

    def ready(self) -> bool:
        return all(t.settled for t in self.templates.values())  # each function can be ready before this

    def _new(self, family: str, modules: list[str], digests: list[str], attach: bool = True) -> Template:
        template = Template(family, modules, self.artifacts, digests)
        template.on_gone(self._on_gone)
        template.launch()
        if attach:
            template.attach()
        return template

    def _on_gone(self, template: Template) -> None:
        family = template.family
        if self._stopping or self.templates.get(family) is not template or family in self._renewing:
            return
        crashes = self._restarts.get(family, 0)
        self._restarts[family] = crashes + 1
        delay = RESTART_BACKOFF_S[min(crashes, len(RESTART_BACKOFF_S) - 1)]
        log.error("%s; restarting it in %.0f s", template.error, delay)
        self._renewing[family] = asyncio.get_running_loop().create_task(self._renew(family, delay))

    def renew_stale(self) -> None:
        for family, template in self.templates.items():
            stale = any(f.digest not in template.preload for f in self._preloaded(self._functions(family)))
            if stale and family not in self._renewing:
                self._renewing[family] = asyncio.get_running_loop().create_task(self._renew(family))

    async def _renew(self, family: str, delay_s: float = 0.0) -> None:
        try:
            await asyncio.sleep(delay_s)
            await self._start_renewed(family)
        finally:
            self._renewing.pop(family, None)
        current = self.templates.get(family)
        if current is not None and not current.alive:  # a restart that failed too: again, later
            self._on_gone(current)

    async def _start_renewed(self, family: str) -> None:
        functions = self._functions(family)
        digests = [d for f in self._preloaded(functions) if (d := f.digest)]
        renewed = self._new(family, family_modules(functions, self.store).get(family, RUNTIME_MODULES[family]), digests)
        try:
            await renewed.wait_preloaded()  # the old template serves meanwhile, with its own preloads
        except RuntimeUnavailable as e:
            log.error("the %s template was not renewed (%s); new builds load after the fork", family, e.message)
            renewed.stop()
            return
        except asyncio.CancelledError:  # the server is stopping
            renewed.stop()
            raise
        old = self.templates[family]
        self.templates[family] = renewed
        if not old.alive:  # it had died: this start counts as the recovery
            self._restarts.pop(family, None)
        for member in self.members(family):
            member.use_template(renewed)
        old.retire()
        self._retired = [t for t in self._retired if t.proc is not None and t.proc.poll() is None] + [old]
        preloaded = sorted(f.name for f in self._preloaded(functions))
        log.info("the %s template was renewed; it preloads %s", family, ", ".join(preloaded) or "nothing")
        if any(f.digest not in renewed.preload for f in self._preloaded(self._functions(family))):
            asyncio.get_running_loop().call_soon(self.renew_stale)  # rebuilt again meanwhile

    def _functions(self, family: str) -> list[Deployed]:
        return [m.function for m in self.members(family)]

    def _preloaded(self, functions: Iterable[Deployed]) -> list[Deployed]:
        """Those of `functions` whose builds a template preloads (built, and in use)."""
        return [f for f in functions if f.digest and self.preloads.wants(f)]

    def halt(self) -> None:
        """The server is stopping: no template is renewed or restarted any more."""
        self._stopping = True
        for task in list(self._renewing.values()):
            task.cancel()

    def stop(self) -> None:
        self.halt()
        for template in [*self.templates.values(), *self._retired]:
            template.stop()

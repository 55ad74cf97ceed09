"""The embedded platform: every function runs as OS processes forked from a template on this machine."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Mapping
from pathlib import Path

from slserve.build.key import stale_reason
from slserve.errors import ArtifactCorrupt, ArtifactNotFound, ModelNotFound, RuntimeUnavailable, SpecError
from slserve.platform.base import FunctionStatus, InferRequest, InferResult
from slserve.platform.local.pool import FunctionPool
from slserve.platform.local.templates import RUNTIME_MODULES, Template
from slserve.snapshot import ArtifactStore
from slserve.spec import SPEC_FILENAME, FunctionDef, discover_functions

TICK_S = 0.5
POLICE_S = 0.1  # memory limits and abandoned work are checked this often (a few /proc reads)
REMOVED_DRAIN_S = 30.0
RESTART_BACKOFF_S = (0.0, 1.0, 2.0, 5.0, 10.0, 30.0)  # a template that keeps dying is restarted ever more slowly
CHECK_ARTIFACTS_S = 2.0  # blobs are looked at this often: a stat and a marker read each, unless one changed
log = logging.getLogger("slserve.platform")


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
    def __init__(self, functions: list[FunctionDef], store: ArtifactStore, functions_dir: Path | None = None) -> None:
        self.store = store
        self._functions = {f.name: f for f in functions}
        self.functions_dir = functions_dir  # watched by `refresh` (None: the functions are fixed)
        self.templates: dict[str, Template] = {}
        self.pools: dict[str, FunctionPool] = {}
        self._ticker: asyncio.Task[None] | None = None
        self._seen = self._fingerprint()
        self._draining: set[asyncio.Task[None]] = set()
        self._renewing: dict[str, asyncio.Task[None]] = {}  # family -> its template being renewed
        self._retired: list[Template] = []
        self._restarts: dict[str, int] = {}  # family -> template crashes in a row
        self._police: asyncio.Task[None] | None = None
        self._checker: asyncio.Task[None] | None = None
        self._check_now = asyncio.Event()
        self._stopping = False

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
            self.templates[family] = self._new_template(family, modules, digests)
        for name, fdef in self._functions.items():
            template_of_family = self.templates.get(fdef.spec.framework.value)
            self.pools[name] = FunctionPool(fdef, template_of_family, self.store.root, built[name], errors.get(name))
        self._ticker = asyncio.get_running_loop().create_task(self._tick())
        self._police = asyncio.get_running_loop().create_task(self._watch_instances())
        self._checker = asyncio.get_running_loop().create_task(self._check_artifacts())

    def _new_template(self, family: str, modules: list[str], digests: list[str]) -> Template:
        template = Template(family, modules, self.store.root, digests)
        template.on_gone(self._on_template_gone)
        template.start()
        return template

    def _on_template_gone(self, template: Template) -> None:
        """A template that died (crashed, killed) is replaced, after a pause that grows while it keeps dying; its
        instances serve on until they exit."""
        family = template.family
        if self._stopping or self.templates.get(family) is not template or family in self._renewing:
            return
        crashes = self._restarts.get(family, 0)
        self._restarts[family] = crashes + 1
        delay = RESTART_BACKOFF_S[min(crashes, len(RESTART_BACKOFF_S) - 1)]
        log.error("%s; restarting it in %.0f s", template.error, delay)
        self._renewing[family] = asyncio.get_running_loop().create_task(self._renew(family, delay))

    def _current(self, fdef: FunctionDef) -> tuple[str | None, str | None]:
        """The digest to serve, or None and why not (never built, or built from another spec or model code)."""
        try:
            artifact = self.store.current(fdef.name)
        except ArtifactNotFound:
            return None, f"{fdef.name} is not built: run `slserve build {fdef.name}`"
        reason = stale_reason(fdef, artifact)
        return (None, reason) if reason else (artifact.digest, None)

    def refresh(self) -> bool:
        """Take in what `slserve build` published since the last look, without a restart: a function built for
        the first time starts serving; a rebuilt one moves to its new artifact (its running instances finish
        what they hold and stop; new ones run the new build); a deleted one drains away. A function edited but
        not rebuilt keeps serving its last build. Returns whether the functions the router sees changed."""
        if self.functions_dir is None:
            return False
        try:
            seen = self._fingerprint()
            if seen == self._seen:
                return False
            found = {f.name: f for f in discover_functions(self.functions_dir)}
        except SpecError as e:  # a spec being edited: said once, looked at again when the folder changes again
            self._seen = seen
            log.error("functions not reloaded: %s", e.message)
            return False
        except OSError as e:  # a folder removed while it was read: look again next time
            log.warning("functions folder changed while it was read (%s); looking again", e)
            return False
        changed, complete = False, True
        for name, fdef in found.items():
            try:
                changed |= self._take_in(name, fdef)
            except Exception:  # one function's trouble must not stop the others (nor the watcher)
                log.exception("function %s: could not take in its new build; will try again", name)
                complete = False
        for name in set(self.pools) - set(found):
            del self._functions[name]
            task = asyncio.get_running_loop().create_task(self.pools.pop(name).drain(REMOVED_DRAIN_S))
            self._draining.add(task)
            task.add_done_callback(self._draining.discard)
            log.info("function %s was removed; its instances drain", name)
            changed = True
        if complete:  # a function that failed is looked at again next time (each step is idempotent)
            self._seen = seen
        if changed:
            self._renew_stale_templates()
        return changed

    def _family(self, family: str) -> list[FunctionPool]:
        return [p for p in self.pools.values() if p.fdef.spec.framework.value == family and p.digest]

    def _renew_stale_templates(self) -> None:
        """A template preloads the builds it was started with. When a family gains a build its template lacks
        (a new function, or a rebuild), a new template is started with every current build of the family; once
        it is ready, new instances fork from it, and the old one exits with its last instance."""
        for family, template in self.templates.items():
            stale = any(p.digest not in template.preload for p in self._family(family))
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
            self._on_template_gone(current)

    async def _start_renewed(self, family: str) -> None:
        pools = self._family(family)
        digests = [p.digest for p in pools if p.digest]
        modules = family_modules([p.fdef for p in pools])[family]
        renewed = self._new_template(family, modules, digests)
        try:
            await renewed.wait_ready()
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
        for pool in self._family(family):
            pool.use_template(renewed)
        old.retire()
        self._retired = [t for t in self._retired if t.proc is not None and t.proc.poll() is None] + [old]
        log.info("the %s template was renewed; it preloads %s", family, ", ".join(sorted(p.fdef.name for p in pools)))
        if any(p.digest not in renewed.preload for p in self._family(family)):
            asyncio.get_running_loop().call_soon(self._renew_stale_templates)  # rebuilt again meanwhile

    def _take_in(self, name: str, fdef: FunctionDef) -> bool:
        pool = self.pools.get(name)
        digest, error = self._current(fdef)
        if pool is not None and (digest is None or digest == pool.digest):
            return False  # unchanged, or edited but not (yet) rebuilt: keep serving the last build
        template = self._template_for(fdef, digest) if digest else None
        if pool is None:
            self.pools[name] = FunctionPool(fdef, template, self.store.root, digest, error)
        else:
            assert digest is not None
            pool.redeploy(fdef, template, digest)
        self._functions[name] = fdef
        self._check_now.set()
        if digest:
            log.info("function %s now serves artifact %s", name, digest[:12])
        else:
            log.warning("function %s cannot serve: %s", name, error)
        return True

    def _fingerprint(self) -> tuple[tuple[str, int, str | None], ...]:
        """Cheap to take every second: each function folder's spec file time and its published artifact."""
        if self.functions_dir is None or not self.functions_dir.is_dir():
            return ()
        specs = sorted(d / SPEC_FILENAME for d in self.functions_dir.iterdir() if (d / SPEC_FILENAME).is_file())
        return tuple((s.parent.name, s.stat().st_mtime_ns, self.store.ref(s.parent.name)) for s in specs)

    def _template_for(self, fdef: FunctionDef, digest: str) -> Template:
        """The family's running template, or a new one. A build the running template lacks is loaded after the
        fork until the template is renewed (`_renew_stale_templates`)."""
        family = fdef.spec.framework.value
        if family not in self.templates:
            self.templates[family] = self._new_template(family, family_modules([fdef])[family], [digest])
        return self.templates[family]

    async def _tick(self) -> None:
        """Scale-downs happen with time, not with requests."""
        while True:
            await asyncio.sleep(TICK_S)
            for pool in self.pools.values():
                pool.autoscale()

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

    async def _watch_instances(self) -> None:
        while True:
            await asyncio.sleep(POLICE_S)
            now = time.monotonic()
            for pool in self.pools.values():
                pool.police(now)

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
        self._stopping = True
        for task in (self._ticker, self._police, self._checker):
            if task is not None:
                task.cancel()
        for task in list(self._renewing.values()):
            task.cancel()
        await asyncio.gather(*(p.drain(drain_seconds) for p in self.pools.values()), *self._draining)
        for template in [*self.templates.values(), *self._retired]:
            template.stop()


__all__ = ["LocalPlatform", "family_modules"]

"""The catalog of this machine: `functions/<name>/function.toml` and each function's published artifact in the
artifact store. `slserve build` is the deploy: a build publishes a new artifact, and the next look takes it in."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

import orjson

from slserve.build.key import stale_reason
from slserve.errors import ArtifactNotFound, SpecError
from slserve.platform.base import Changes, Deployed
from slserve.snapshot import ArtifactStore
from slserve.spec import SPEC_FILENAME, FunctionDef, FunctionSpec, discover_functions

log = logging.getLogger("slserve.platform")
Fingerprint = tuple[tuple[str, int, str | None], ...]


class FolderCatalog:
    """Functions from a folder (or a fixed list), served at the artifact each one's ref points to."""

    def __init__(self, store: ArtifactStore, directory: Path | None, functions: list[FunctionDef] | None = None):
        self.store = store
        self.directory = directory  # watched by `refresh` (None: the functions are fixed)
        found = functions if functions is not None else discover_functions(directory) if directory else []
        self._seen = self._fingerprint()
        self._functions = {f.name: self.deployed(f) for f in found}

    def functions(self) -> Mapping[str, Deployed]:
        return self._functions

    def deployed(self, fdef: FunctionDef) -> Deployed:
        """The function at its last build, or with none and why (never built). `slserve build` is the deploy: a
        function edited but not rebuilt serves its last build, as built (its spec too), and says how it is stale,
        whether the gateway was running when it was edited or started after."""
        try:
            artifact = self.store.current(fdef.name)
        except ArtifactNotFound:
            return Deployed(fdef.name, fdef.spec, None, f"{fdef.name} is not built: run `slserve build {fdef.name}`")
        stale = stale_reason(fdef, artifact)
        return Deployed(fdef.name, artifact.manifest.spec, artifact.digest, stale=stale)

    def refresh(self) -> Changes:
        """What `slserve build` published since the last look: a function built for the first time, or rebuilt,
        is deployed; a deleted folder is removed. A function edited but not rebuilt keeps serving its last build
        (it is not redeployed until its new artifact exists)."""
        none = Changes([], [])
        if self.directory is None:
            return none
        try:
            seen = self._fingerprint()
            if seen == self._seen:
                return none
            found = {f.name: f for f in discover_functions(self.directory)}
        except SpecError as e:  # a spec being edited: said once, looked at again when the folder changes again
            self._seen = seen
            log.error("functions not reloaded: %s", e.message)
            return none
        except OSError as e:  # a folder removed while it was read: look again next time
            log.warning("functions folder changed while it was read (%s); looking again", e)
            return none
        self._seen = seen
        deployed = []
        for name, fdef in found.items():
            now, before = self.deployed(fdef), self._functions.get(name)
            if now.stale and now.stale != (before and before.stale):
                log.warning("%s; serving its last build %s", now.stale, (now.digest or "")[:12])
            if before is not None and now.digest == before.digest:
                self._functions[name] = now  # unchanged, or edited but not (yet) rebuilt: the same build serves
                continue
            self._functions[name] = now
            deployed.append(now)
        removed = sorted(set(self._functions) - set(found))
        for name in removed:
            del self._functions[name]
        return Changes(deployed, removed)

    def _fingerprint(self) -> Fingerprint:
        """Cheap to take every second: each function folder's spec file time and its published artifact."""
        if self.directory is None or not self.directory.is_dir():
            return ()
        specs = sorted(d / SPEC_FILENAME for d in self.directory.iterdir() if (d / SPEC_FILENAME).is_file())
        return tuple((s.parent.name, s.stat().st_mtime_ns, self.store.ref(s.parent.name)) for s in specs)


class ManifestCatalog:
    """A catalog fixed at deploy time: a JSON document of the deployed functions (name, spec, artifact digest),
    as `slserve deploy` writes it for targets that do not read a functions folder (the router on AWS)."""

    def __init__(self, path: Path) -> None:
        doc = orjson.loads(path.read_bytes())
        self._functions = {
            f["name"]: Deployed(f["name"], FunctionSpec.model_validate(f["spec"]), f["digest"])
            for f in doc["functions"]
        }

    def functions(self) -> Mapping[str, Deployed]:
        return self._functions

    def refresh(self) -> Changes:
        return Changes([], [])  # a new catalog is a new deployment

    @staticmethod
    def write(path: Path, functions: Mapping[str, Deployed], pipelines: list[dict[str, object]] | None = None) -> None:
        """The document: the functions, and the pipelines (`ManifestPipelines.entries`) that serve beside them."""
        entries = [
            {"name": f.name, "digest": f.digest, "spec": f.spec.model_dump(mode="json")}
            for f in functions.values()
            if f.digest is not None
        ]
        doc = {"functions": entries, "pipelines": pipelines or []}
        path.write_bytes(orjson.dumps(doc, option=orjson.OPT_INDENT_2))

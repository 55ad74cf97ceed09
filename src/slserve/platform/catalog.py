"""The catalog of this machine: `functions/<name>/function.toml` and each function's published artifact in the
artifact store. `slserve build` is the deploy: a build publishes a new artifact, and the next look takes it in."""

from __future__ import annotations

import logging
import stat
from collections.abc import Mapping
from pathlib import Path

import orjson

from slserve.build.key import stale_reason
from slserve.build.locations import module_file
from slserve.errors import ArtifactCorrupt, ArtifactNotFound, SpecError
from slserve.platform.base import Changes, Deployed
from slserve.snapshot import ArtifactStore
from slserve.spec import SPEC_FILENAME, FunctionDef, FunctionSpec, discover_functions

log = logging.getLogger("slserve.platform")
FileStamp = tuple[str, int, int]  # path, modification time (ns), size
Fingerprint = tuple[tuple[str, str | None, tuple[FileStamp, ...]], ...]


class FolderCatalog:
    """Functions from a folder (or a fixed list), served at the artifact each one's ref points to."""

    def __init__(self, store: ArtifactStore, directory: Path | None, functions: list[FunctionDef] | None = None):
        self.store = store
        self.directory = directory  # watched by `refresh` (None: the functions are fixed)
        self._model_code: dict[str, list[Path]] = {}  # a build's digest -> the model code files it recorded
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
        """Cheap to take every second: for each function folder, its published artifact and every file its
        build read (the folder's files, and the model code outside it that the build recorded), by time and
        size: an edit to any of them is looked at, so `stale` says so."""
        if self.directory is None or not self.directory.is_dir():
            return ()
        specs = sorted(d / SPEC_FILENAME for d in self.directory.iterdir() if (d / SPEC_FILENAME).is_file())
        out = []
        for spec in specs:
            name, ref = spec.parent.name, self.store.ref(spec.parent.name)
            files = [p for p in spec.parent.rglob("*") if "__pycache__" not in p.parts]
            out.append((name, ref, _stamps(files + self._code_of(ref))))
        return tuple(out)

    def _code_of(self, digest: str | None) -> list[Path]:
        """The model code files (outside its folder) a build recorded, found once per build."""
        if digest is None:
            return []
        if digest not in self._model_code:
            found = []
            try:
                recorded = self.store.open(digest).manifest.build.source_files
                for key in recorded:
                    if key.startswith("code/") and (path := module_file(key.removeprefix("code/"))) is not None:
                        found.append(path)
            except (ArtifactNotFound, ArtifactCorrupt, SpecError):
                pass  # `deployed` says what is wrong with it
            self._model_code[digest] = found
        return self._model_code[digest]


def _stamps(files: list[Path]) -> tuple[FileStamp, ...]:
    out = []
    for path in sorted(files):
        try:
            st = path.stat()
        except OSError:  # removed while looked at: the next look sees the folder as it is
            continue
        if not stat.S_ISDIR(st.st_mode):  # the one stat: this runs every second
            out.append((str(path), st.st_mtime_ns, st.st_size))
    return tuple(out)


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

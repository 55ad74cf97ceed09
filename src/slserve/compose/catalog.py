"""Pipelines as built and served: `slserve build` checks a pipeline against the functions its steps reach and
publishes its spec (a content-addressed blob in the artifact store); the gateway serves the published spec. As
for functions, a pipeline edited but not rebuilt serves its last build and says how it is stale.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import orjson

from slserve.compose.graph import Graph, Signatures
from slserve.compose.spec import PIPELINE_FILENAME, PipelineDef, PipelineSpec, discover_pipelines
from slserve.errors import SpecError
from slserve.snapshot import ArtifactStore
from slserve.spec import NamedSpec, Signature, version_order

log = logging.getLogger("slserve.compose")


@dataclass(frozen=True)
class DeployedPipeline:
    name: str
    spec: PipelineSpec
    digest: str | None  # the published spec it serves; None: never built, `error` says so
    error: str | None = None
    stale: str | None = None


def signatures_of(functions: Iterable[NamedSpec]) -> Signatures:
    """What a step naming (model, version-or-alias) may reach among these functions: the version it names, or
    (an alias, or no version: routes may point it anywhere) every version of the model."""
    by_model: dict[str, dict[str, Signature]] = {}
    for f in functions:
        by_model.setdefault(f.spec.model.name, {})[f.spec.model.version] = f.spec.signature

    def reach(model: str, selector: str | None) -> list[tuple[str, Signature]]:
        versions = by_model.get(model)
        if not versions:
            raise SpecError(
                f"model {model!r} is served by no function (pipelines cannot be steps); models: {sorted(by_model)}"
            )
        if selector in versions:
            return [(f"{model} version {selector}", versions[selector])]
        return [(f"{model} version {v}", versions[v]) for v in sorted(versions, key=version_order)]

    return reach


def build_pipeline(pdef: PipelineDef, functions: Iterable[NamedSpec], store: ArtifactStore) -> str:
    """Check `pdef` against the functions' signatures (SpecError naming both ends of a misfit) and publish it."""
    try:
        Graph.check(pdef.spec, signatures_of(functions))
    except SpecError as e:
        raise SpecError(f"{pdef.directory / PIPELINE_FILENAME}: {e.message}") from None
    data = orjson.dumps({"name": pdef.name, "spec": pdef.spec.model_dump(mode="json")}, option=orjson.OPT_SORT_KEYS)
    digest, _ = store.blobs.put_bytes(data)
    store.set_pipeline_ref(pdef.name, digest)
    return digest


def published(store: ArtifactStore, name: str) -> tuple[str, PipelineSpec] | None:
    digest = store.pipeline_ref(name)
    if digest is None or not store.blobs.has(digest):
        return None
    path = store.blobs.path(digest)
    data = store.blobs.read_bytes(digest, path.stat().st_size, f"pipeline {name}")
    return digest, PipelineSpec.model_validate(orjson.loads(data)["spec"])


class Pipelines(Protocol):
    """What is deployed of pipelines: a folder and the artifact store here, a deploy's catalog document on AWS."""

    def pipelines(self) -> Mapping[str, DeployedPipeline]: ...

    def refresh(self) -> bool:
        """Look again; whether anything changed."""
        ...


class ManifestPipelines:
    """The pipelines a deploy placed in its catalog document (`slserve deploy aws`), fixed until the next."""

    def __init__(self, path: Path) -> None:
        doc = orjson.loads(path.read_bytes())
        self._pipelines = {
            p["name"]: DeployedPipeline(p["name"], PipelineSpec.model_validate(p["spec"]), p["digest"])
            for p in doc.get("pipelines", [])
        }

    def pipelines(self) -> Mapping[str, DeployedPipeline]:
        return self._pipelines

    def refresh(self) -> bool:
        return False

    @staticmethod
    def entries(pipelines: Iterable[DeployedPipeline]) -> list[dict[str, object]]:
        """The catalog document's `pipelines`: the published ones."""
        return [
            {"name": p.name, "digest": p.digest, "spec": p.spec.model_dump(mode="json")}
            for p in pipelines
            if p.digest is not None
        ]


class PipelineCatalog:
    """The pipelines of a functions folder, each at its published build."""

    def __init__(self, store: ArtifactStore, directory: Path | None) -> None:
        self.store = store
        self.directory = directory
        self._seen: tuple[tuple[str, int, str | None], ...] = ()
        self._pipelines: dict[str, DeployedPipeline] = {}
        self.refresh()

    def pipelines(self) -> Mapping[str, DeployedPipeline]:
        return self._pipelines

    def refresh(self) -> bool:
        """Take in pipelines built, rebuilt, edited or removed since the last look; whether any were."""
        if self.directory is None:
            return False
        seen = self._fingerprint()
        if seen == self._seen:
            return False
        self._seen = seen
        try:
            found = discover_pipelines(self.directory)
        except SpecError as e:  # one being edited: said once, looked at again when the folder changes again
            log.error("pipelines not reloaded: %s", e.message)
            return False
        self._pipelines = {p.name: self.deployed(p) for p in found}
        return True

    def deployed(self, pdef: PipelineDef) -> DeployedPipeline:
        built = published(self.store, pdef.name)
        if built is None:
            error = f"{pdef.name} is not built: run `slserve build {pdef.name}`"
            return DeployedPipeline(pdef.name, pdef.spec, None, error)
        digest, spec = built
        stale = (
            None
            if spec == pdef.spec
            else f"{pdef.name}'s pipeline.toml changed since its build: run `slserve build {pdef.name}`"
        )
        return DeployedPipeline(pdef.name, spec, digest, stale=stale)

    def _fingerprint(self) -> tuple[tuple[str, int, str | None], ...]:
        if self.directory is None or not self.directory.is_dir():
            return ()
        specs = sorted(d / PIPELINE_FILENAME for d in self.directory.iterdir() if (d / PIPELINE_FILENAME).is_file())
        return tuple((s.parent.name, s.stat().st_mtime_ns, self.store.pipeline_ref(s.parent.name)) for s in specs)

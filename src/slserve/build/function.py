"""One function folder built into an immutable, content-addressed, verified artifact."""

from __future__ import annotations

import platform
import socket
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import slserve
from slserve.build.key import build_key, library_versions, source_digests
from slserve.build.locations import resolve_location
from slserve.build.proofs import batch_floors
from slserve.build.reference import drift_reference
from slserve.build.signature_check import check_signature
from slserve.runtime.base import Runtime, load_runtime
from slserve.runtime.code import CODE_PREFIX, folder_code
from slserve.snapshot import Artifact, ArtifactStore, BuildInfo, FileEntry, Manifest, TensorEntry
from slserve.spec import Framework, FunctionDef

Report = Callable[[str], None]


@dataclass(frozen=True)
class BuildResult:
    artifact: Artifact
    cached: bool


def build_function(
    fdef: FunctionDef, store: ArtifactStore, *, force: bool = False, report: Report = lambda _: None
) -> BuildResult:
    """Build `fdef` into `store` and point the function's ref at it. Unchanged inputs reuse the cached
    artifact without importing a framework."""
    report("hashing inputs")
    sources = source_digests(fdef)
    key = build_key(fdef, sources)
    if not force and (cached := store.cached_build(key)) is not None:
        report("verifying cached artifact")
        cached.verify()
        if cached.manifest.spec != fdef.spec:  # the same model, deployed differently: a new manifest only
            report("updating deployment settings")
            cached = store.save(cached.manifest.model_copy(update={"spec": fdef.spec}))
            store.record_build(key, cached.digest)
        store.set_ref(fdef.name, cached.digest)
        return BuildResult(cached, cached=True)

    files: dict[str, FileEntry] = {}
    reference: bytes | None = None
    if fdef.spec.framework is Framework.TORCH:
        from slserve.build.torch_build import snapshot_torch

        report("snapshotting torch weights")
        tensors: dict[str, TensorEntry] = snapshot_torch(fdef, store.blobs)
    else:
        from slserve.build.onnx_build import snapshot_onnx

        report("snapshotting ONNX graph and initializers")
        tensors, files, reference = snapshot_onnx(fdef, store.blobs)
    for rel, path in folder_code(fdef.name, fdef.directory).files.items():
        digest, size = store.blobs.put_file(path)
        files[f"{CODE_PREFIX}{rel}"] = FileEntry(digest=digest, size=size)
    if fdef.spec.processor:
        report("storing assets")
        for location in fdef.spec.processor.assets:
            path = resolve_location(location, fdef.directory)
            digest, size = store.blobs.put_file(path)
            files[f"assets/{path.name}"] = FileEntry(digest=digest, size=size)

    manifest = Manifest(
        function=fdef.name,
        spec=fdef.spec,
        tensors=tensors,
        files=files,
        build=BuildInfo(
            build_key=key,
            slserve=slserve.__version__,
            python=platform.python_version(),
            created_at=datetime.now(UTC).isoformat(timespec="seconds"),
            host=socket.gethostname(),
            libraries=library_versions(),
            source_files=sources,
        ),
    )
    # The build's own checks run the model from its stored blobs (loaded once, for all of them); only the
    # finished manifest is saved.
    unsaved = Artifact(store, "", manifest)
    loaded: list[Runtime] = []

    def runtime() -> Runtime:
        if not loaded:
            loaded.append(load_runtime(unsaved))  # CUDA for a GPU function on a GPU host, else the CPU
        return loaded[0]

    report("running the model on inputs made from its signature")
    check_signature(fdef.name, fdef.spec, runtime())
    measured: dict[str, object] = {}
    if reference is not None:
        report("measuring the variant's agreement with fp32")
        from slserve.build.agreement import check_agreement

        measured["agreement"] = check_agreement(fdef, unsaved, reference)
    if fdef.spec.batching.max_batch_size > 1:
        report("proving exact batching for each feed shape")
        measured["batch_floors"], measured["thread_grants"] = batch_floors(unsaved, runtime())
    files = dict(manifest.files)
    if fdef.spec.drift.reference == "build":
        report("profiling calibration inputs (the drift reference)")
        files.update(drift_reference(fdef, unsaved, runtime, report))
    info = manifest.build.model_copy(update=measured)
    artifact = store.save(manifest.model_copy(update={"build": info, "files": files}))
    store.record_build(key, artifact.digest)
    store.set_ref(fdef.name, artifact.digest)
    return BuildResult(artifact, cached=False)

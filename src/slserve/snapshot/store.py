"""The artifact store: manifests and blobs on disk, the current artifact of each function, and the build cache.

Layout under the store root (default `.slserve/artifacts`):

    blobs/sha256/ab/ab12…      every file, named by its content (tensors, graphs, assets, manifests)
    verified/ab12…             "this blob hashed correctly while it had this stat" markers
    refs/<function>            the manifest digest a function currently serves
    pipelines/<pipeline>       the blob of the checked spec a pipeline currently serves
    builds/<build-key>         the manifest digest a given build input produced (makes rebuilds no-ops)
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import orjson

from slserve.errors import ArtifactCorrupt, ArtifactNotFound
from slserve.snapshot.blobs import BlobStore
from slserve.snapshot.manifest import Manifest


class Artifact:
    """One immutable, verified artifact: its manifest and access to its bytes."""

    def __init__(self, store: ArtifactStore, digest: str, manifest: Manifest) -> None:
        self.store = store
        self.digest = digest
        self.manifest = manifest

    @property
    def name(self) -> str:
        return self.manifest.function

    def map_tensors(self, names: Iterable[str] | None = None) -> dict[str, np.ndarray]:
        """The weights (all, or those in `names`) as numpy arrays over copy-on-write mappings of their blobs:
        no bytes are copied.

        Tensors that share a blob (tied weights) share one mapping.
        """
        mapped: dict[str, np.ndarray] = {}
        views: dict[str, memoryview] = {}
        tensors = self.manifest.tensors
        for name in tensors if names is None else names:
            t = tensors[name]
            if t.digest not in views:
                mm = self.store.blobs.map(t.digest, t.nbytes, f"{self.name}: tensor {name!r}")
                views[t.digest] = memoryview(mm)[: t.nbytes]
            arr = np.frombuffer(views[t.digest], dtype=t.numpy_dtype())
            mapped[name] = arr.reshape(t.shape)
        return mapped

    def file_path(self, key: str) -> Path:
        """The verified on-disk path of one of the artifact's files (graph, asset)."""
        entry = self.manifest.files.get(key)
        if entry is None:
            raise ArtifactNotFound(f"{self.name}: artifact {self.digest[:12]} has no file {key!r}")
        return self.store.blobs.verify(entry.digest, entry.size, f"{self.name}: file {key!r}")

    def asset_paths(self) -> dict[str, Path]:
        return {name: self.file_path(f"assets/{name}") for name in self.manifest.assets()}

    def verify(self, *, full: bool = False, threads: int = 2) -> None:
        """Check every blob. Blobs already hashed on this machine with an unchanged stat are skipped unless
        `full` drops the markers first. Hashing runs in threads (hashlib releases the GIL)."""
        owners: dict[str, str] = {}
        for name, t in self.manifest.tensors.items():
            owners.setdefault(t.digest, f"tensor {name!r}")
        for key, f in self.manifest.files.items():
            owners.setdefault(f.digest, f"file {key!r}")
        if full:
            for digest in owners:
                (self.store.root / "verified" / digest).unlink(missing_ok=True)
        sizes = self.manifest.unique_blobs()
        with ThreadPoolExecutor(max_workers=threads) as pool:
            jobs = [pool.submit(self.store.blobs.verify, d, sizes[d], f"{self.name}: {owners[d]}") for d in owners]
            for job in jobs:
                job.result()


class ArtifactStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.blobs = BlobStore(root)

    # --- manifests -------------------------------------------------------------------------------------------

    def save(self, manifest: Manifest) -> Artifact:
        data = orjson.dumps(manifest.model_dump(mode="json"), option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS)
        digest, _ = self.blobs.put_bytes(data)
        return Artifact(self, digest, manifest)

    def open(self, digest: str) -> Artifact:
        path = self.blobs.path(digest)
        if not path.is_file():
            raise ArtifactNotFound(f"artifact {digest[:12]} is not in {self.root}; run `slserve build`")
        size = path.stat().st_size
        data = self.blobs.read_bytes(digest, size, f"manifest {digest[:12]}")
        try:
            manifest = Manifest.model_validate(orjson.loads(data))
        except ValueError as e:
            raise ArtifactCorrupt(f"manifest {path} is not a valid slserve manifest: {e}") from None
        return Artifact(self, digest, manifest)

    # --- refs: the artifact each function serves -------------------------------------------------------------

    def set_ref(self, function: str, digest: str) -> None:
        self._write_pointer(self.root / "refs" / function, digest)

    def ref(self, function: str) -> str | None:
        return self._read_pointer(self.root / "refs" / function)

    def current(self, function: str) -> Artifact:
        digest = self.ref(function)
        if digest is None:
            raise ArtifactNotFound(f"function {function!r} has no artifact in {self.root}; run `slserve build`")
        return self.open(digest)

    def set_pipeline_ref(self, pipeline: str, digest: str) -> None:
        """A pipeline's published definition (a blob of its checked spec), apart from functions' manifests."""
        self._write_pointer(self.root / "pipelines" / pipeline, digest)

    def pipeline_ref(self, pipeline: str) -> str | None:
        return self._read_pointer(self.root / "pipelines" / pipeline)

    def functions(self) -> list[str]:
        refs = self.root / "refs"
        return sorted(p.name for p in refs.iterdir() if not p.name.startswith(".")) if refs.is_dir() else []

    # --- build cache -----------------------------------------------------------------------------------------

    def cached_build(self, build_key: str) -> Artifact | None:
        digest = self._read_pointer(self.root / "builds" / build_key)
        if digest is None or not self.blobs.has(digest):
            return None
        artifact = self.open(digest)
        if not all(self.blobs.has(d) for d in artifact.manifest.unique_blobs()):
            return None
        return artifact

    def record_build(self, build_key: str, digest: str) -> None:
        self._write_pointer(self.root / "builds" / build_key, digest)

    @staticmethod
    def _write_pointer(path: Path, digest: str) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}")
        tmp.write_text(digest + "\n")
        os.replace(tmp, path)

    @staticmethod
    def _read_pointer(path: Path) -> str | None:
        try:
            return path.read_text().strip() or None
        except FileNotFoundError:
            return None

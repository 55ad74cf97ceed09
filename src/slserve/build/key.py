"""The build key: a digest of everything a build reads, so rebuilding an unchanged function is a no-op."""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import platform
from pathlib import Path

import slserve
from slserve.build.locations import module_file, resolve_location
from slserve.snapshot import FORMAT
from slserve.snapshot.blobs import sha256_file
from slserve.spec import FunctionDef

LIBRARIES = ("torch", "onnx", "onnxruntime", "onnxruntime-gpu", "transformers", "tokenizers", "safetensors")


def library_versions() -> dict[str, str]:
    versions = {}
    for dist in LIBRARIES:
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            versions[dist] = importlib.metadata.version(dist)
    return versions


def source_digests(fdef: FunctionDef) -> dict[str, str]:
    """sha256 of every input file: the function folder, the code it imports, its weights and assets."""
    spec, base = fdef.spec, fdef.directory
    files = {f"function/{p.relative_to(base)}": p for p in sorted(base.rglob("*")) if p.is_file()}
    files = {k: p for k, p in files.items() if "__pycache__" not in k}
    refs = [spec.source.factory, spec.source.export, spec.processor.factory if spec.processor else None]
    for ref in filter(None, refs):
        path = module_file(ref)
        if path is not None:
            files[f"code/{ref}"] = path
    locations = [spec.source.weights, spec.source.path, *(spec.processor.assets if spec.processor else [])]
    for loc in filter(None, locations):
        files[f"input/{loc}"] = resolve_location(loc, base)
    return {k: sha256_file(p) for k, p in files.items()}


def slserve_code_digest() -> str:
    """Our own code takes part in every build: a change to the builder must not reuse old artifacts."""
    h = hashlib.sha256()
    root = Path(slserve.__file__).parent
    for path in sorted(root.rglob("*.py")):
        h.update(str(path.relative_to(root)).encode())
        h.update(path.read_bytes())
    return h.hexdigest()


def build_key(fdef: FunctionDef, sources: dict[str, str]) -> str:
    h = hashlib.sha256()
    parts = [
        FORMAT,
        slserve.__version__,
        slserve_code_digest(),
        platform.python_version(),
        fdef.name,
        fdef.spec.model_dump_json(),
        repr(sorted(library_versions().items())),
        repr(sorted(sources.items())),
    ]
    for part in parts:
        h.update(part.encode())
        h.update(b"\0")
    return h.hexdigest()

"""The build key: a digest of everything a build reads, so rebuilding an unchanged function is a no-op."""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import platform
from pathlib import Path

from pydantic.main import IncEx

import slserve
from slserve.build.locations import module_file, resolve_location
from slserve.errors import SpecError
from slserve.runtime.code import code_files, folder_code, provides
from slserve.snapshot import FORMAT, Artifact
from slserve.snapshot.blobs import sha256_file
from slserve.spec import FunctionDef, FunctionSpec

# How a function is deployed, not what it computes: changing these must not rebuild the artifact (the build
# only writes a new manifest). `max_batch_size` and `threads` stay in: the batching proof depends on them.
DEPLOYMENT: dict[str, IncEx | bool] = {
    "tier": True,
    "target": True,
    "scaling": True,
    "batching": {"max_delay_ms"},
    "resources": {"memory_mb", "aws_memory_mb"},
    "limits": True,
    "pricing": True,
}
SPEC_FILE = "function/function.toml"  # its content takes part through the parsed spec


def model_identity(spec: FunctionSpec) -> str:
    """The spec without its deployment settings."""
    return spec.model_dump_json(exclude=DEPLOYMENT)


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
    own = [str(p.relative_to(base)) for p in code_files(base)]  # the folder's own modules: hashed above
    for ref in filter(None, refs):
        if provides(own, ref.partition(":")[0]):
            continue
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
        model_identity(fdef.spec),
        repr(sorted(library_versions().items())),
        repr(sorted((k, v) for k, v in sources.items() if k != SPEC_FILE)),
    ]
    for part in parts:
        h.update(part.encode())
        h.update(b"\0")
    return h.hexdigest()


def stale_reason(fdef: FunctionDef, artifact: Artifact) -> str | None:
    """Why `artifact` is not what `slserve build` would make of `fdef` now, as far as cheap checks tell (the spec,
    and the code the build imported; weights and assets are not re-hashed); None when it is current."""
    built = artifact.manifest
    if model_identity(built.spec) != model_identity(fdef.spec):
        return f"{fdef.name}: function.toml changed since the last build; run `slserve build {fdef.name}`"
    if built.spec != fdef.spec:
        return (
            f"{fdef.name}: its deployment settings changed since the last build; run `slserve build {fdef.name}` "
            "(it only writes a new manifest)"
        )
    build = f"run `slserve build {fdef.name}`"
    own = folder_code(fdef.name, fdef.directory).digests
    sources = built.build.source_files
    built_own = {k[9:]: d for k, d in sources.items() if k.startswith("function/") and k.endswith(".py")}
    if own != built_own:
        changed = sorted(set(own) ^ set(built_own) | {rel for rel in own if own[rel] != built_own.get(rel)})
        return f"{fdef.name}: its code ({', '.join(changed)}) changed since the last build; {build}"
    for key, digest in built.build.source_files.items():
        if not key.startswith("code/"):
            continue
        try:
            path = module_file(key.removeprefix("code/"))
        except SpecError as e:
            return f"{fdef.name}: {e}"
        if path is not None and (not path.is_file() or sha256_file(path) != digest):
            return f"{fdef.name}: its model code ({path.name}) changed since the last build; {build}"
    return None

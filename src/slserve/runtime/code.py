"""A function's own code: the Python files in its folder, importable without installing them.

`factory = "model:build_model"` beside `functions/my-model/model.py` names the function's own module. The build
stores every `.py` file of the folder in the artifact (`code/<path>`), so the artifact carries the code it was
built from: templates, instances and the remote targets import it from there, a rebuild is picked up by a running
gateway like any other, and two functions may each have their own `model.py`. Each function's code is imported
as a package of its own, named after its content (`slserve_code_<digest>`), so it never collides with another
function's, or with another build of the same function. Modules in the folder import each other relatively
(`from . import layers`); a name the folder does not have is imported as usual, from what is installed.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.abc
import importlib.machinery
import linecache
import sys
import threading
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from slserve.snapshot import Artifact, Manifest

CODE_PREFIX = "code/"  # where an artifact keeps its function's own code
PACKAGE_PREFIX = "slserve_code_"


@dataclass(frozen=True)
class FunctionCode:
    """A function's code files: path relative to its folder ('model.py', 'nets/__init__.py') -> where it is now
    (the folder at build time, a blob afterwards)."""

    label: str  # shown in tracebacks: the function's name
    files: Mapping[str, Path]
    digests: Mapping[str, str]  # the same paths -> sha256 of the content

    @property
    def package(self) -> str:
        h = hashlib.sha256()
        for rel in sorted(self.digests):
            h.update(f"{rel}\0{self.digests[rel]}\0".encode())
        return PACKAGE_PREFIX + h.hexdigest()[:16]

    def owns(self, module: str) -> bool:
        return provides(self.files, module)

    def import_module(self, module: str) -> ModuleType:
        """`module` from this code when the folder has it, else from what is installed."""
        if not self.owns(module):
            return importlib.import_module(module)
        _FINDER.add(self)
        return importlib.import_module(f"{self.package}.{module}")


def provides(paths: Collection[str], module: str) -> bool:
    """Whether code with these files (paths relative to the function folder) has `module` (a dotted name)."""
    top = module.split(".")[0]
    return f"{top}.py" in paths or f"{top}/__init__.py" in paths


def artifact_provides(manifest: Manifest, module: str) -> bool:
    return provides({k.removeprefix(CODE_PREFIX) for k in manifest.files if k.startswith(CODE_PREFIX)}, module)


def code_files(directory: Path) -> list[Path]:
    """The `.py` files of a function folder, in a stable order."""
    return sorted(p for p in directory.rglob("*.py") if p.is_file() and "__pycache__" not in p.parts)


def folder_code(name: str, directory: Path) -> FunctionCode:
    from slserve.snapshot.blobs import sha256_file

    files = {str(p.relative_to(directory)): p for p in code_files(directory)}
    return FunctionCode(name, files, {rel: sha256_file(p) for rel, p in files.items()})


def artifact_code(artifact: Artifact) -> FunctionCode | None:
    """The code an artifact was built with (its blobs verified), or None when its function has none."""
    entries = {k.removeprefix(CODE_PREFIX): v for k, v in artifact.manifest.files.items() if k.startswith(CODE_PREFIX)}
    if not entries:
        return None
    files = {rel: artifact.file_path(CODE_PREFIX + rel) for rel in entries}
    return FunctionCode(artifact.name, files, {rel: e.digest for rel, e in entries.items()})


class _Finder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds `slserve_code_<digest>[.module...]` in the registered functions' code."""

    def __init__(self) -> None:
        self._codes: dict[str, FunctionCode] = {}
        self._lock = threading.Lock()

    def add(self, code: FunctionCode) -> None:
        with self._lock:
            if code.package in self._codes:
                return
            self._codes[code.package] = code
            if self not in sys.meta_path:
                sys.meta_path.insert(0, self)

    def find_spec(
        self, fullname: str, path: Sequence[str] | None = None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        package, _, rest = fullname.partition(".")
        code = self._codes.get(package)
        if code is None:
            return None
        if not rest:  # the package itself: empty, a home for the modules
            return importlib.machinery.ModuleSpec(fullname, self, is_package=True)
        rel = rest.replace(".", "/")
        if f"{rel}/__init__.py" in code.files:
            spec = importlib.machinery.ModuleSpec(fullname, self, origin=str(code.files[f"{rel}/__init__.py"]))
            spec.submodule_search_locations = []
            return spec
        if f"{rel}.py" in code.files:
            return importlib.machinery.ModuleSpec(fullname, self, origin=str(code.files[f"{rel}.py"]))
        return None

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return None  # the default module

    def exec_module(self, module: ModuleType) -> None:
        spec = module.__spec__
        assert spec is not None
        package, _, rest = spec.name.partition(".")
        if not rest:
            return
        code = self._codes[package]
        is_package = spec.submodule_search_locations is not None
        rel = rest.replace(".", "/") + ("/__init__.py" if is_package else ".py")
        source = code.files[rel].read_text()
        # Tracebacks name the file as the user knows it, and show its lines (kept in linecache, which never
        # drops an entry without a modification time).
        shown = f"{code.label}/{rel}"
        linecache.cache[shown] = (len(source), None, source.splitlines(keepends=True), shown)
        module.__file__ = str(code.files[rel])
        exec(compile(source, shown, "exec"), module.__dict__)


_FINDER = _Finder()

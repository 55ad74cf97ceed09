"""What a function needs beyond slserve, found from what is installed here: the remote targets' packages and
images install exactly that (pinned to the versions the build ran), and copy exactly its code."""

from __future__ import annotations

import ast
import importlib.metadata
import importlib.util
import sys
from collections.abc import Iterable
from pathlib import Path

from slserve.errors import BuildError
from slserve.runtime.code import artifact_code, artifact_provides
from slserve.snapshot import Artifact


def pinned(distributions: Iterable[str]) -> list[str]:
    """`name==version` as installed here (so Lambda runs what the build ran)."""
    out = []
    for dist in dict.fromkeys(distributions):
        try:
            out.append(f"{dist}=={importlib.metadata.version(dist)}")
        except importlib.metadata.PackageNotFoundError:
            raise BuildError(f"{dist} is not installed here: install the target's extra of slserve") from None
    return out


def module_files(refs: Iterable[str | None], artifacts: Iterable[Artifact] = ()) -> dict[str, Path]:
    """`package.module:attr` references -> the files their installed modules live in (package __init__s
    included). A module that one of `artifacts` carries as its function's own code travels with the artifact."""
    manifests = [a.manifest for a in artifacts]
    files: dict[str, Path] = {}
    for ref in filter(None, refs):
        if any(artifact_provides(m, ref.partition(":")[0]) for m in manifests):
            continue
        parts = ref.partition(":")[0].split(".")
        for depth in range(1, len(parts) + 1):
            spec = importlib.util.find_spec(".".join(parts[:depth]))
            if spec is None or spec.origin is None:
                raise BuildError(f"cannot find module {'.'.join(parts[:depth])!r} (from {ref!r})")
            files[".".join(parts[:depth])] = Path(spec.origin)
    return files


def own_code(artifacts: Iterable[Artifact]) -> list[Path]:
    """The files of the artifacts' own code (for `imported_distributions`)."""
    return [p for a in artifacts if (code := artifact_code(a)) is not None for p in code.files.values()]


def imported_distributions(files: Iterable[Path]) -> list[str]:
    """The third-party distributions the given source files import, wherever they do (a processor imports its
    tokenizer library inside `__init__`, so that the template process pays for it once)."""
    providers = importlib.metadata.packages_distributions()
    found = []
    for path in files:
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            for name in names:
                top = name.split(".")[0]
                if top in sys.stdlib_module_names or top == "slserve":
                    continue
                found += [d for d in providers.get(top, []) if d != "slserve"]
    return found

"""Where build inputs live: a path relative to the function folder, or `pkg:<module>/<path>` inside an
installed package (how sample weights ship without any download)."""

from __future__ import annotations

import importlib.resources
import importlib.util
from pathlib import Path

from slserve.errors import SpecError


def resolve_location(location: str, base: Path) -> Path:
    if location.startswith("pkg:"):
        module, _, rel = location.removeprefix("pkg:").partition("/")
        try:
            root = importlib.resources.files(module)
        except ModuleNotFoundError:
            raise SpecError(f"{location!r}: package {module!r} is not installed") from None
        path = Path(str(root)) / rel
    else:
        path = base / location
    if not path.is_file():
        raise SpecError(f"{location!r}: file {path} not found")
    return path


def module_file(ref: str) -> Path | None:
    """The source file of 'package.module:attr' without importing the module itself."""
    module = ref.partition(":")[0]
    try:
        found = importlib.util.find_spec(module)
    except ModuleNotFoundError:
        raise SpecError(f"{ref!r}: module {module!r} cannot be found; is its package installed?") from None
    if found is None:
        raise SpecError(f"{ref!r}: module {module!r} cannot be found; is its package installed?")
    return Path(found.origin) if found.origin and found.origin.endswith(".py") else None

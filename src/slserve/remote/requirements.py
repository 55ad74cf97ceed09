"""What a package runs, found from its source: the import closure of its entry modules.

Every package a deploy writes (the router's zip, a model function's zip or image, the Modal image) installs
exactly the third-party distributions its code can import, pinned to the versions installed here (so the target
runs what the build ran), and copies exactly the source modules it runs. Nothing is a hand-kept list: a new
import anywhere on a package's way is in its requirements at the next deploy.

The closure is read from the source (`ast`), never by importing it, and it follows an import wherever it stands
(a module's top, or inside a function: a gateway imports its Modal client only when a Modal target is set, and
that is still a path the package runs). Two kinds of import are not followed: those under `if TYPE_CHECKING:`
(never run) and those in a `try` that catches ImportError (optional: the code runs without them, e.g. SnapStart's
hooks, which only Lambda's managed runtimes have). Whole paths a package never runs are left out by name
(`leave_out`): the framework adapter of a framework it does not serve. Build-time code (a function's `export`)
is not an entry, so what only the build imports (torch for an ONNX export) is not shipped.
"""

from __future__ import annotations

import ast
import functools
import importlib.metadata
import importlib.util
import re
import sys
from collections.abc import Collection, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import slserve
from slserve.errors import BuildError
from slserve.runtime.code import artifact_code
from slserve.snapshot import Artifact
from slserve.spec import FunctionSpec

SLSERVE = Path(slserve.__file__).parent
# The adapter modules of each framework: a package that serves no function of a framework leaves them out.
ADAPTERS = {"torch": ("slserve.runtime.torch_runtime",), "onnx": ("slserve.runtime.onnx_runtime",)}


def adapters_except(frameworks: Collection[str]) -> list[str]:
    return [m for framework, modules in ADAPTERS.items() if framework not in frameworks for m in modules]


def serving_refs(spec: FunctionSpec) -> list[str]:
    """The `module:attr` references a function runs when it serves (its processor; a torch model's factory), not
    the ones only its build runs (an ONNX export, a calibration set)."""
    refs = [spec.processor.factory] if spec.processor else []
    if spec.framework.value == "torch" and spec.source.factory:
        refs.append(spec.source.factory)
    return refs


@dataclass
class ImportClosure:
    """The modules reachable from the entries, split into source to ship and third-party imports.

    `code`: a function's own files (paths relative to its folder -> where they are), whose modules import each
    other relatively and ship inside the artifact."""

    leave_out: Collection[str] = ()
    code: Mapping[str, Path] = field(default_factory=dict)
    shipped: dict[str, Path] = field(default_factory=dict)  # installed non-slserve modules to copy (with __init__s)
    third_party: dict[str, str] = field(default_factory=dict)  # import root (`_root`) -> a module importing it
    code_modules: set[str] = field(init=False)  # the top-level modules of `code`
    _seen: set[str] = field(default_factory=set)

    def add(self, *modules: str) -> ImportClosure:
        todo = list(modules)
        while todo:
            module = todo.pop()
            if module in self._seen or self._left_out(module):
                continue
            self._seen.add(module)
            found = self._source(module)
            if found is None:
                continue
            path, is_package = found
            parts = module.split(".")
            todo += [".".join(parts[:depth]) for depth in range(1, len(parts))]  # the packages above it
            for name in imports(ast.parse(path.read_text(), str(path)), module, is_package):
                top = name.split(".")[0]
                if self._ours(name) or top in self.code_modules:
                    todo.append(name)
                elif top not in sys.stdlib_module_names and (root := _root(name)) is not None:
                    self.third_party.setdefault(root, module)
        return self

    def __post_init__(self) -> None:
        self.code_modules = {rel.split("/")[0].removesuffix(".py") for rel in self.code}

    def distributions(self, provided: Collection[str] = ()) -> list[str]:
        """The distributions that provide the third-party imports (less the ones the target provides itself)."""
        out: dict[str, None] = {}
        for root, importer in sorted(self.third_party.items()):
            names = _providers_of(root)
            if not names:
                raise BuildError(f"{importer} imports {root!r}, which no installed distribution provides: install it")
            out.update((d, None) for d in names if canonical(d) not in {canonical(p) for p in provided})
        return list(out)

    def _left_out(self, module: str) -> bool:
        return any(module == gone or module.startswith(gone + ".") for gone in self.leave_out)

    def _ours(self, module: str) -> bool:
        """slserve's own modules, and importable ones no other distribution provides (slserve's samples, code
        on the path): their source ships."""
        top = module.split(".")[0]
        if top == "slserve":
            return True
        if top in sys.stdlib_module_names or _providers().get(top):
            return False
        try:
            return importlib.util.find_spec(top) is not None
        except (ImportError, ValueError):
            return False

    def _source(self, module: str) -> tuple[Path, bool] | None:
        """The file of `module` and whether it is a package, or None when it is not a module (an attribute)."""
        top, _, rest = module.partition(".")
        if top in self.code_modules:
            base = module.replace(".", "/")
            for rel, is_package in ((f"{base}/__init__.py", True), (f"{base}.py", False)):
                if rel in self.code:
                    return self.code[rel], is_package
            return None
        if top == "slserve":
            folder = SLSERVE.joinpath(*rest.split(".")) if rest else SLSERVE
            for path, is_package in ((folder / "__init__.py", True), (folder.with_suffix(".py"), False)):
                if path.is_file():
                    return path, is_package
            return None
        if not self._ours(module):
            return None
        try:
            spec = importlib.util.find_spec(module)
        except (ImportError, ValueError):
            return None
        if spec is None or spec.origin is None or not spec.origin.endswith(".py"):
            return None
        self.shipped[module] = Path(spec.origin)
        return Path(spec.origin), spec.submodule_search_locations is not None


@functools.cache
def _providers() -> dict[str, list[str]]:
    """Top-level import name -> the installed distributions (other than slserve) that provide it."""
    found = importlib.metadata.packages_distributions().items()
    return {top: [d for d in names if d != "slserve"] for top, names in found}


def _root(name: str) -> str | None:
    """What decides which distribution provides the import `name`: its top-level package; or where several
    distributions share that (a namespace package: `opentelemetry` is the API's, the SDK's, each exporter's),
    its first subpackage, and nothing for the bare namespace."""
    parts = name.split(".")
    if len(_providers().get(parts[0], [])) < 2:
        return parts[0]
    return ".".join(parts[:2]) if len(parts) > 1 else None


@functools.cache
def _providers_of(root: str) -> list[str]:
    """The distributions that provide an import root: those with its files, else every one that provides its
    top-level name (a subpackage no single distribution's files show)."""
    top, _, sub = root.partition(".")
    names = _providers().get(top, [])
    if not sub:
        return names
    prefixes = (f"{top}/{sub}/", f"{top}/{sub}.py")
    having = [d for d in names if any(str(f).startswith(prefixes) for f in importlib.metadata.files(d) or ())]
    return having or names


def imports(tree: ast.Module, module: str, is_package: bool) -> Iterator[str]:
    """The absolute names a module imports (`from a import b` gives `a` and `a.b`: b may be a module), less
    those under `if TYPE_CHECKING:` and those in a `try` that catches ImportError."""
    package = module.split(".") if is_package else module.split(".")[:-1]
    for node in _run_nodes(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                above = package[: len(package) - node.level + 1]
                base = ".".join([*above, *([node.module] if node.module else [])])
            else:
                base = node.module or ""
            if base:  # empty: `from . import x` at the top of a function's own code (its folder is the package)
                yield base
            yield from (f"{base}.{alias.name}".lstrip(".") for alias in node.names if alias.name != "*")


def _run_nodes(node: ast.AST) -> Iterator[ast.AST]:
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.If) and _is_type_checking(child.test):
            for other in child.orelse:
                yield other
                yield from _run_nodes(other)
            continue
        if isinstance(child, ast.Try) and _catches_import_error(child):
            for rest in [*child.handlers, *child.orelse, *child.finalbody]:
                yield from _run_nodes(rest)
            continue
        yield child
        yield from _run_nodes(child)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _catches_import_error(node: ast.Try) -> bool:
    for handler in node.handlers:
        caught = handler.type.elts if isinstance(handler.type, ast.Tuple) else [handler.type]
        names = {getattr(c, "id", getattr(c, "attr", None)) for c in caught if c is not None}
        if names & {"ImportError", "ModuleNotFoundError"}:
            return True
    return False


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def declared() -> dict[str, str]:
    """Distribution (canonical name) -> the requirement slserve's own metadata declares for it, without its
    environment marker (`aws-lambda-powertools[tracer,parser]>=3`, `onnxruntime-gpu>=1.18`)."""
    out: dict[str, str] = {}
    for requirement in importlib.metadata.requires("slserve") or []:
        spec = requirement.split(";")[0].strip()
        out.setdefault(canonical(re.split(r"[<>=!~\[ ]", spec)[0]), spec)
    return out


def pinned(distributions: Iterable[str]) -> list[str]:
    """`name[extras]==version` as installed here (so the target runs what the build ran), with the extras
    slserve's own requirements ask of it (`aws-lambda-powertools[tracer,parser]`: the tracer's X-Ray SDK is
    imported inside powertools, where no closure of ours looks)."""
    wanted_by_slserve = declared()
    out = []
    for dist in dict.fromkeys(distributions):
        try:
            version = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            raise BuildError(f"{dist} is not installed here: install the target's extra of slserve") from None
        extras = re.search(r"\[([^\]]+)\]", wanted_by_slserve.get(canonical(dist), ""))
        out.append(f"{dist}[{extras[1].replace(' ', '')}]=={version}" if extras else f"{dist}=={version}")
    return out


def function_closure(
    entries: Iterable[str], artifacts: Iterable[Artifact], frameworks: Collection[str]
) -> ImportClosure:
    """What a package serving these artifacts' functions runs: `entries` (its handler or app module), each
    function's serving code (from its artifact when the function carries it) and the adapters of `frameworks`."""
    closure = ImportClosure(leave_out=adapters_except(frameworks))
    closure.add(*entries)
    for artifact in artifacts:
        code = artifact_code(artifact)
        own = ImportClosure(leave_out=closure.leave_out, code=dict(code.files) if code else {})
        own.add(*(ref.partition(":")[0] for ref in serving_refs(artifact.manifest.spec)))
        closure.shipped.update(own.shipped)
        for top, importer in own.third_party.items():
            closure.third_party.setdefault(top, f"{artifact.name}'s {importer}")
    return closure

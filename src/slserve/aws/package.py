"""Packages for the AWS target, built by `slserve deploy aws`.

- **A zip** for ONNX Runtime functions and for the router: slserve's own code, the function's code (its
  processor's module), the artifact (its blobs, content-addressed as in the local store), and the third-party
  packages the import closure of what it runs reaches (`slserve.remote.requirements`), as wheels for Lambda's
  platform (manylinux x86_64, CPython 3.12), pinned to the versions installed here. No torch. Checked against
  Lambda's 250 MB unzipped limit.
- **A container image recipe** for torch functions (`Dockerfile` and its context): the pinned dependencies in
  one layer, the artifact's blobs in their own layer (unchanged blobs are not pushed again), the code last. No
  Docker engine runs here: the image is built by the deploy (`cdk deploy`), and the recipe is checked statically.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import slserve
from slserve.errors import BuildError
from slserve.platform.base import Deployed
from slserve.remote.requirements import ImportClosure, adapters_except, function_closure, pinned
from slserve.snapshot import ArtifactStore

ZIP_LIMIT = 250 * 1024 * 1024  # Lambda's limit on a function's unzipped code
# Lambda's Python 3.12 runs on Amazon Linux 2023 (glibc 2.34): any manylinux wheel up to that glibc runs there.
PLATFORMS = [f"manylinux_2_{minor}_x86_64" for minor in (34, 28, 27, 26, 24, 17)] + ["manylinux2014_x86_64"]
PYTHON = "3.12"
BASE_IMAGE = "public.ecr.aws/lambda/python:3.12"
MODEL_HANDLER = "slserve.aws.handler"
ROUTER_HANDLER = "slserve.aws.gateway"


@dataclass(frozen=True)
class Package:
    name: str
    directory: Path
    image: bool
    size_bytes: int  # unzipped (a zip), or the context's (an image)

    def describe(self) -> str:
        kind = "image context" if self.image else "zip, unzipped"
        return f"{self.name}: {kind} {self.size_bytes / 2**20:.1f} MB"


def install_wheels(target: Path, requirements: list[str], what: str = "the package", slim: bool = True) -> None:
    """Lambda's wheels (manylinux x86_64 up to glibc 2.34, CPython 3.12) of `requirements` and what they need,
    into `target` (`slim`: less what Lambda provides or never runs). `what` is named when they cannot be had."""
    command = [sys.executable, "-m", "pip", "install", "--quiet", "--target", str(target)]
    command += [arg for platform in PLATFORMS for arg in ("--platform", platform)]
    command += ["--python-version", PYTHON, "--implementation", "cp"]
    command += ["--only-binary=:all:", "--no-compile", "--upgrade", *requirements]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise BuildError(
            f"{what}: pip found no Lambda wheels (manylinux x86_64, CPython {PYTHON}) for what it runs, "
            f"{' '.join(requirements)}. A requirement pinned to a build of this host (a '+local' version) or with "
            "no wheel for Lambda's platform cannot ship; if only the build needs it, import it from build-time "
            "code (the function's `export`), which does not ship. pip said:\n" + done.stderr[-1500:]
        )
    if slim:
        slim_tree(target)


PROVIDED = ("boto3", "botocore", "s3transfer")  # Lambda's Python runtimes bring their own
# Never used at run time: the hub client tokenizers depends on (for `from_pretrained`: slserve reads the tokenizer
# from the artifact, and nothing is downloaded at run time), ONNX Runtime's model-editing tools.
BUILD_TIME_ONLY = (
    "huggingface_hub",
    "hf_xet",
    "onnxruntime/transformers",
    "onnxruntime/tools",
    "onnxruntime/quantization",
)


def slim_tree(target: Path) -> None:
    """What Lambda never runs: the packages its runtime provides, build-time tools, test suites, bytecode of
    another Python."""
    for name in (*PROVIDED, *BUILD_TIME_ONLY):
        shutil.rmtree(target / name, ignore_errors=True)
    for path in [*target.rglob("__pycache__"), *target.rglob("tests")]:
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)


def copy_code(target: Path, modules: dict[str, Path]) -> None:
    """slserve itself, and the function's own modules."""
    shutil.copytree(Path(slserve.__file__).parent, target / "slserve", ignore=shutil.ignore_patterns("__pycache__"))
    for module, path in modules.items():
        if module.split(".")[0] == "slserve":
            continue
        relative = Path(*module.split("."))
        destination = target / (relative / "__init__.py" if path.name == "__init__.py" else relative.with_suffix(".py"))
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, destination)


def copy_artifact(store: ArtifactStore, function: Deployed, target: Path) -> int:
    """The function's artifact as a store of its own (its manifest and blobs, and a ref); returns its bytes."""
    assert function.digest is not None
    artifact = store.open(function.digest)
    artifact.verify()  # nothing corrupt leaves this machine
    packaged = ArtifactStore(target)
    digests = [function.digest, *artifact.manifest.unique_blobs()]
    size = 0
    for digest in digests:
        source, destination = store.blobs.path(digest), packaged.blobs.path(digest)
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, destination)
        size += destination.stat().st_size
    packaged.set_ref(function.name, function.digest)
    return size


def tree_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def function_zip(store: ArtifactStore, function: Deployed, target: Path) -> Package:
    spec = function.spec
    if spec.framework.value != "onnx":
        raise BuildError(f"{function.name}: only ONNX Runtime functions ship as zips; torch ones as images")
    if target.exists():
        shutil.rmtree(target)
    target.mkdir(parents=True)
    assert function.digest is not None
    artifact = store.open(function.digest)
    closure = function_closure([MODEL_HANDLER], [artifact], {"onnx"})
    install_wheels(target, pinned(closure.distributions(PROVIDED)), function.name)
    copy_code(target, closure.shipped)
    copy_artifact(store, function, target / "artifacts")
    if (target / "torch").exists():
        raise BuildError(f"{function.name}: torch ended up in the zip (a dependency pulled it in)")
    size = tree_size(target)
    if size > ZIP_LIMIT:
        raise BuildError(
            f"{function.name}: its zip is {size / 2**20:.0f} MB unzipped, over Lambda's 250 MB; ship it as an image"
        )
    return Package(function.name, target, False, size)


def router_zip(target: Path, catalog: Path, routes: Path) -> Package:
    if target.exists():
        shutil.rmtree(target)
    target.mkdir(parents=True)
    closure = ImportClosure(leave_out=adapters_except(())).add(ROUTER_HANDLER)  # the router runs no model
    install_wheels(target, pinned(closure.distributions(PROVIDED)), "the router")
    copy_code(target, {})
    shutil.copyfile(catalog, target / "catalog.json")
    if routes.exists():
        shutil.copyfile(routes, target / "routes.toml")
    return Package("router", target, False, tree_size(target))


DOCKERFILE = """\
# slserve function {name}: torch, from the artifact {digest}
FROM {base}
# 1. the pinned dependencies (changes with the libraries only)
COPY requirements.txt ./
RUN pip install --no-cache-dir -r requirements.txt --extra-index-url https://download.pytorch.org/whl/cpu
# 2. the artifact's blobs, their own layer (content-addressed: an unchanged artifact is not pushed again)
COPY artifacts/ ${{LAMBDA_TASK_ROOT}}/artifacts/
# 3. the code, last (changes most often)
COPY code/ ${{LAMBDA_TASK_ROOT}}/
ENV SLSERVE_ARTIFACTS=/var/task/artifacts SLSERVE_FUNCTION={name}
CMD ["slserve.aws.handler.handler"]
"""


def function_image(store: ArtifactStore, function: Deployed, target: Path) -> Package:
    """The build context of a torch function's image; built by the deploy (a Docker engine's job)."""
    if target.exists():
        shutil.rmtree(target)
    target.mkdir(parents=True)
    assert function.digest is not None
    artifact = store.open(function.digest)
    closure = function_closure([MODEL_HANDLER], [artifact], {"torch"})
    requirements = pinned(closure.distributions(PROVIDED))
    (target / "requirements.txt").write_text("\n".join(requirements) + "\n")
    copy_code(target / "code", closure.shipped)
    copy_artifact(store, function, target / "artifacts")
    assert function.digest is not None
    (target / "Dockerfile").write_text(
        DOCKERFILE.format(name=function.name, digest=function.digest[:12], base=BASE_IMAGE)
    )
    return Package(function.name, target, True, tree_size(target))

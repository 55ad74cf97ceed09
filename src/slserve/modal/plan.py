"""What `slserve deploy modal` deploys, decided offline from the functions and their artifacts (one source of
truth: `function.toml` and the build): per function a Modal class with its GPU, snapshots, scaling, concurrency
and the blobs its volume must hold. The plan is written as JSON into the image, so that a container rebuilds
the very same app (`slserve.modal.container`) without the functions folder.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import orjson

from slserve.errors import BuildError
from slserve.keepalive import IdleGaps, choose
from slserve.platform.base import Deployed
from slserve.platform.modal_labels import modal_label
from slserve.remote.requirements import canonical, declared, function_closure, pinned
from slserve.snapshot import Artifact, ArtifactStore

PYTHON = "3.12"
VOLUME = "slserve-artifacts"  # the store on Modal: blobs by sha256, as in the local store
SECRET = "slserve-endpoint"  # holds SLSERVE_ENDPOINT_SECRET, which the gateways send as their Bearer token
ARTIFACTS = "/artifacts"  # where the volume is mounted
# Modal's GPU snapshots (alpha) checkpoint the CUDA context with the process; slserve turns them on where the
# runtime's CUDA state is what Modal's examples and tests cover (torch). ONNX Runtime's CUDA provider starts
# cuDNN/cuBLAS handles of its own: until that is proven on Modal, its weights go to the GPU after each restore.
GPU_SNAPSHOT_FRAMEWORKS = {"torch"}
CONTAINER = "slserve.modal.container"  # the module Modal imports in every container
PROVIDED = ("modal",)  # Modal puts its own client into every container
# The CPU runtimes this host runs, and their CUDA builds a GPU container installs instead.
GPU_BUILDS = {"onnxruntime": "onnxruntime-gpu", "torch": "torch"}
TIMEOUT_S = 300  # per input, Modal's default: the gateway's own deadline (x-slserve-timeout-ms) is the real bound
SCALEDOWN_RANGE = (2, 3600)  # Modal's bounds on scaledown_window, in seconds
MODAL_COLD_START_S = 2.0  # a memory snapshot's restore and first call: the keep-alive's pre-warm lead


@dataclass(frozen=True)
class ModalFunction:
    name: str
    cls_name: str  # the Python class Modal knows it by
    label: str  # its web endpoint: https://<workspace>--<label>.modal.run
    digest: str
    framework: str
    gpu: str | None
    memory_mb: int
    cpu: float  # physical cores (the spec's threads)
    timeout_s: int
    min_containers: int
    max_containers: int
    scaledown_window: int
    max_inputs: int  # requests one container takes at once (batched exactly inside)
    gpu_snapshot: bool
    snapshot: str  # what the memory snapshot holds, and why
    blobs: dict[str, int]  # digest -> bytes: the artifact's manifest and blobs, for the volume
    scaledown_basis: str = ""  # why that window: learned from the recorded idle gaps, or fixed


@dataclass(frozen=True)
class ModalPlan:
    app: str
    prefix: str
    volume: str
    secret: str
    python: str
    requirements: list[str]  # pinned, as installed here (GPU builds of the runtimes)
    modules: list[str]  # the function code's top-level packages, shipped as source beside slserve
    functions: list[ModalFunction]

    def to_json(self) -> bytes:
        return orjson.dumps(dataclasses.asdict(self), option=orjson.OPT_INDENT_2)

    @classmethod
    def from_json(cls, data: bytes) -> ModalPlan:
        doc = orjson.loads(data)
        return cls(**{**doc, "functions": [ModalFunction(**f) for f in doc["functions"]]})

    def write(self, path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(self.to_json())
        return path


def class_name(function: str) -> str:
    """`minilm-fp16` -> `MinilmFp16`: a Python identifier, one per function."""
    words = [w for w in re.split(r"[^0-9A-Za-z]+", function) if w]
    name = "".join(w[:1].upper() + w[1:] for w in words)
    return name if name[:1].isalpha() else f"Fn{name}"


def gpu_build(requirement: str) -> str:
    """A runtime's CUDA build, never tied to the CPU build's version (two distributions release apart): torch's
    default Linux wheel is its CUDA build (this host's `+cpu` local version is dropped); ONNX Runtime's is the
    `onnxruntime-gpu` distribution, at the version installed here if it is, else as slserve's `gpu` extra asks."""
    name = requirement.split("==")[0]
    if name == "torch":
        return requirement.split("+")[0]
    gpu = GPU_BUILDS[name]
    try:
        return pinned([gpu])[0]
    except BuildError:
        spec = declared().get(canonical(gpu))
    if spec is None:
        raise BuildError(f"slserve declares no requirement of {gpu}: reinstall slserve")
    return spec


def container_requirements(functions: list[Deployed], artifacts: list[Artifact]) -> tuple[list[str], list[str]]:
    """The image's pinned requirements (the runtimes as CUDA builds) and the top-level source packages it ships
    beside slserve, from the import closure of the container module and each function's serving code."""
    frameworks = {f.spec.framework.value for f in functions}
    closure = function_closure([CONTAINER], artifacts, frameworks)
    requirements = [
        gpu_build(r) if r.split("==")[0].split("[")[0] in GPU_BUILDS else r
        for r in pinned(closure.distributions(PROVIDED))
    ]
    return sorted(requirements), sorted({name.split(".")[0] for name in closure.shipped})


def scaledown_window(function: Deployed, gaps: IdleGaps | None) -> tuple[int, str]:
    """The class's scale-down window (the idle time a GPU container is paid for after its last call): the
    keep-alive its recorded idle gaps choose (`keepalive.choose`, `idle_seconds` the cap; a pre-warm policy's
    window, which Modal cannot schedule, counts from the call), within Modal's bounds; and why."""
    low, high = SCALEDOWN_RANGE
    cap = function.spec.scaling.idle_seconds
    policy = choose(gaps or IdleGaps(), cap, MODAL_COLD_START_S)
    seconds = policy.keep_s if policy.prewarm_s is None else min(cap, policy.prewarm_s + policy.keep_s)
    return min(high, max(low, math.ceil(seconds))), policy.basis


def plan_function(store: ArtifactStore, function: Deployed, prefix: str, gaps: IdleGaps | None = None) -> ModalFunction:
    spec = function.spec
    if function.digest is None:
        raise BuildError(f"{function.name} is not built: run `slserve build {function.name}` first")
    artifact = store.open(function.digest)
    gpu_snapshot = spec.resources.gpu is not None and spec.framework.value in GPU_SNAPSHOT_FRAMEWORKS
    if spec.resources.gpu is None:
        snapshot = "memory: the model loaded on the CPU and warmed up"
    elif gpu_snapshot:
        snapshot = "memory and GPU: the weights on the GPU and warmed up (CUDA checkpoint)"
    else:
        snapshot = (
            f"memory: the runtime imported and the weights mapped; {spec.framework.value} moves them to the GPU "
            "after each restore (GPU snapshots are on for torch only)"
        )
    window, why = scaledown_window(function, gaps)
    return ModalFunction(
        name=function.name,
        cls_name=class_name(function.name),
        label=modal_label(prefix, function.name),
        digest=function.digest,
        framework=spec.framework.value,
        gpu=spec.resources.gpu,
        memory_mb=spec.resources.memory_mb,
        cpu=float(spec.resources.threads),
        timeout_s=TIMEOUT_S,
        min_containers=spec.scaling.min_instances,
        max_containers=spec.scaling.max_instances,
        scaledown_window=window,
        max_inputs=max(spec.scaling.target_concurrency, spec.batching.max_batch_size),
        gpu_snapshot=gpu_snapshot,
        snapshot=snapshot,
        blobs={function.digest: store.blobs.path(function.digest).stat().st_size, **artifact.manifest.unique_blobs()},
        scaledown_basis=why,
    )


def plan_app(
    store: ArtifactStore,
    functions: list[Deployed],
    prefix: str = "slserve",
    gaps: Mapping[str, IdleGaps] | None = None,
) -> ModalPlan:
    """`gaps`: each function's idle gaps as the local gateway recorded them (`keepalive.save_gaps`)."""
    if not functions:
        raise BuildError('no function to deploy to Modal: name a GPU in its [resources], or set target = "modal"')
    artifacts = [store.open(f.digest) for f in functions if f.digest]
    requirements, modules = container_requirements(functions, artifacts)
    return ModalPlan(
        app=prefix,
        prefix=prefix,
        volume=VOLUME,
        secret=SECRET,
        python=PYTHON,
        requirements=requirements,
        modules=modules,
        functions=[plan_function(store, f, prefix, (gaps or {}).get(f.name)) for f in functions],
    )

"""The Modal app, built from a `ModalPlan`: one class per function.

Each class is a `FunctionContainer` with its own settings: the plan's GPU, memory snapshots (and GPU snapshots
where the plan says), min/max containers and scale-down window from `[scaling]`, the artifact store on a Volume,
the endpoint's secret, and `@modal.concurrent` with an ASGI app: slserve's endpoint (`slserve.remote.endpoint`)
takes many requests at once and batches them exactly itself. Modal's own `@modal.batched` is not used: a class
with a batched method may carry no other Modal method, so it could not also be the web endpoint, and its
batches would merge any shapes (slserve merges only the shapes the build proved exact).

Snapshots: the `snap=True` hook maps the artifact (checked against its checksums) and loads the model, on the
GPU when GPU snapshots are on (or on the CPU for a CPU function), warming it up; with GPU snapshots off it only
imports the runtime and prepares what needs no CUDA, and the `snap=False` hook puts the weights on the GPU after
each restore. After every restore, random state is re-seeded (containers restored from one snapshot must not
share it) and the endpoint is made; what it reports as the cold start is this container's work after restore.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, MutableMapping
from pathlib import Path
from typing import Any, ClassVar

import modal

from slserve.modal.plan import ARTIFACTS, ModalFunction, ModalPlan
from slserve.remote.endpoint import endpoint_app
from slserve.remote.model import ModelFunction
from slserve.runtime.base import Preloaded, preload_runtime
from slserve.snapshot import Artifact, ArtifactStore

PLAN_IN_IMAGE = "/root/slserve-modal-plan.json"
SECRET_ENV = "SLSERVE_ENDPOINT_SECRET"


class FunctionContainer:
    """One slserve function in a Modal container (each generated class sets `function`)."""

    function: ClassVar[ModalFunction]
    artifact: Artifact
    model: ModelFunction | None
    preloaded: Preloaded | None
    app: Any

    @modal.enter(snap=True)
    def before_snapshot(self) -> None:
        store = ArtifactStore(Path(os.environ.get("SLSERVE_ARTIFACTS", ARTIFACTS)))
        self.artifact = store.open(self.function.digest)
        self.artifact.verify()  # once per snapshot: a corrupt blob on the volume is never served
        self.model, self.preloaded = None, None
        if self.function.gpu is None or self.function.gpu_snapshot:
            self.model = ModelFunction.from_artifact(self.artifact)
        else:
            self.preloaded = preload_runtime(self.artifact)  # no CUDA before the snapshot

    @modal.enter(snap=False)
    def after_restore(self) -> None:
        started = time.perf_counter()
        if self.model is None:
            self.model = ModelFunction.from_artifact(self.artifact, preloaded=self.preloaded)
        self.model.after_restore()
        self.model.init_ms = (time.perf_counter() - started) * 1000
        self.app = endpoint_app(self.model, os.environ.get(SECRET_ENV))


def _web(label: str) -> Any:
    def web(self: FunctionContainer) -> Any:
        return self.app

    return modal.asgi_app(label=label)(web)


def image(plan: ModalPlan, plan_file: Path) -> modal.Image:
    """The same pinned dependencies as the build ran (CUDA builds of the runtimes), slserve and the functions'
    code as source, and the plan itself (a container rebuilds the app from it)."""
    return (
        modal.Image.debian_slim(python_version=plan.python)
        .pip_install(*plan.requirements)
        .env({"SLSERVE_ARTIFACTS": ARTIFACTS, "HF_HUB_OFFLINE": "1", "SLSERVE_MODAL_PLAN": PLAN_IN_IMAGE})
        .add_local_file(plan_file, PLAN_IN_IMAGE)
        .add_local_python_source("slserve", *plan.modules)
    )


def build_app(plan: ModalPlan, plan_file: Path, module: str, namespace: MutableMapping[str, Any]) -> modal.App:
    """The app, its classes defined in `namespace` (the globals of `module`, where a container finds them)."""
    app = modal.App(plan.app)
    built = image(plan, plan_file)
    volume = modal.Volume.from_name(plan.volume, create_if_missing=True)
    secret = modal.Secret.from_name(plan.secret, required_keys=[SECRET_ENV])
    for f in plan.functions:
        body = {"__module__": module, "__qualname__": f.cls_name, "function": f, "web": _web(f.label)}
        cls: Any = type(f.cls_name, (FunctionContainer,), body)
        decorate: Callable[[Any], Any] = app.cls(
            image=built,
            volumes={ARTIFACTS: volume},
            secrets=[secret],
            enable_memory_snapshot=True,
            gpu=f.gpu,
            memory=f.memory_mb,
            cpu=f.cpu,
            timeout=f.timeout_s,
            min_containers=f.min_containers,
            max_containers=f.max_containers,
            scaledown_window=f.scaledown_window,
            experimental_options={"enable_gpu_snapshot": True} if f.gpu_snapshot else None,
        )
        namespace[f.cls_name] = decorate(modal.concurrent(max_inputs=f.max_inputs)(cls))
    return app

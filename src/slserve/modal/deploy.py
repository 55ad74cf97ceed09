"""`slserve deploy modal`: plan the app from the functions, build it (offline), estimate what it costs, and with a
Modal token fill the volume (content-addressed: only blobs it lacks are sent), make the endpoint's secret once,
and deploy.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from slserve.errors import BuildError
from slserve.modal.plan import ModalFunction, ModalPlan
from slserve.platform.base import Deployed
from slserve.platform.catalog import FolderCatalog
from slserve.private import private_file
from slserve.snapshot import ArtifactStore

# Modal's list prices (2026-05), US dollars per second: GPU by type, CPU per physical core (Modal bills at least
# 0.125), memory per GiB. A container is billed while it runs, busy or within its scale-down window.
GPU_PER_S = {
    "T4": 0.000164,
    "L4": 0.000222,
    "A10G": 0.000306,
    "A10": 0.000306,
    "L40S": 0.000542,
    "A100": 0.000583,
    "A100-40GB": 0.000583,
    "A100-80GB": 0.000694,
    "H100": 0.001097,
    "H200": 0.001261,
    "B200": 0.001736,
}
CPU_CORE_PER_S = 0.0000131
MEMORY_GIB_PER_S = 0.00000222
MONTH_S = 30 * 86400


@dataclass(frozen=True)
class Estimate:
    function: str
    device: str  # where compute_ms was measured
    compute_ms: float
    modal_per_million: float  # US dollars for the containers' busy time, one request per call
    idle_per_scaledown: float  # US dollars a container costs idling through its scale-down window once
    always_on_per_month: float  # US dollars: the `min_containers` kept running all month, whatever the traffic
    charged_per_million: float


def selected(catalog: FolderCatalog, names: list[str] | None) -> list[Deployed]:
    """The functions for Modal: those that name a GPU, and those whose target is `modal`; built and current."""
    unknown = sorted(set(names or []) - set(catalog.functions()))
    if unknown:
        raise BuildError(f"no function(s) {unknown} in the functions folder")
    out = []
    for name, function in sorted(catalog.functions().items()):
        wanted = name in names if names is not None else bool(function.spec.resources.gpu) or function.target == "modal"
        if not wanted:
            continue
        if function.digest is None:
            raise BuildError(f"{function.error}")
        out.append(function)
    return out


def per_second(f: ModalFunction) -> float:
    gpu = 0.0
    if f.gpu is not None:
        kind = f.gpu.split(":")[0].upper()  # "H100:2" is two of them
        count = int(f.gpu.split(":")[1]) if ":" in f.gpu else 1
        if kind not in GPU_PER_S:
            raise BuildError(f"{f.name}: no Modal price known for GPU {f.gpu!r}; known: {sorted(GPU_PER_S)}")
        gpu = GPU_PER_S[kind] * count
    return gpu + CPU_CORE_PER_S * max(0.125, f.cpu) + MEMORY_GIB_PER_S * f.memory_mb / 1024


def estimate(f: ModalFunction, compute_ms: float, device: str, charged_per_million: float) -> Estimate:
    """A million requests' busy time at the measured compute (no batching assumed: batching only lowers it)."""
    rate = per_second(f)
    return Estimate(
        f.name,
        device,
        compute_ms,
        rate * compute_ms / 1000 * 1e6,
        rate * f.scaledown_window,
        rate * f.min_containers * MONTH_S,
        charged_per_million,
    )


def missing_for_deploy() -> list[str]:
    """What a real deploy needs that this machine lacks (empty: it can deploy)."""
    try:
        from modal.config import config
    except ImportError:
        return ["the modal client (`pip install 'slserve[modal]'`)"]
    if not (config.get("token_id") and config.get("token_secret")):
        return ["a Modal token (`modal token new`, or MODAL_TOKEN_ID and MODAL_TOKEN_SECRET)"]
    return []


def fill_volume(plan: ModalPlan, store: ArtifactStore, volume: Any, report: Callable[[str], None]) -> int:
    """Send the blobs the volume lacks, each where an `ArtifactStore` on the mounted volume finds it (a blob's name
    is its content's sha256: one there is that content). Returns the bytes sent."""
    for f in plan.functions:
        store.open(f.digest).verify()  # nothing corrupt leaves this machine
    present = _present(volume)
    wanted = {digest: size for f in plan.functions for digest, size in f.blobs.items()}
    missing = {digest: size for digest, size in wanted.items() if digest not in present}
    if missing:
        with volume.batch_upload() as batch:
            for digest in sorted(missing):
                path = store.blobs.path(digest)
                batch.put_file(path, f"/{path.relative_to(store.root).as_posix()}")
    sent = sum(missing.values())
    there = len(wanted) - len(missing)
    report(f"volume {plan.volume}: sent {len(missing)} blob(s) ({sent / 2**20:.1f} MB); {there} already there")
    return sent


def _present(volume: Any) -> set[str]:
    """The digests of the blobs on the volume."""
    from modal.exception import NotFoundError
    from modal.types import FileEntryType

    try:
        entries = volume.listdir("blobs", recursive=True)
    except NotFoundError:  # a new volume
        return set()
    return {PurePosixPath(entry.path).name for entry in entries if entry.type == FileEntryType.FILE}


def ensure_secret(name: str, report: Callable[[str], None]) -> str | None:
    """Create the endpoints' secret once; returns the new secret (to give the gateways), or None if it existed."""
    import modal

    value = secrets.token_urlsafe(32)
    try:
        modal.Secret.objects.create(name, {"SLSERVE_ENDPOINT_SECRET": value})
    except modal.exception.AlreadyExistsError:
        report(f"secret {name}: exists (the gateways keep the SLSERVE_MODAL_SECRET they have)")
        return None
    report(f"secret {name}: created")
    return value


def deploy(
    plan: ModalPlan, plan_file: Path, store: ArtifactStore, report: Callable[[str], None], secret_file: Path
) -> dict[str, str]:
    """Fill the volume, make the secret, deploy the app; returns each function's endpoint URL. A new secret is
    written to `secret_file` (owner-only), never printed: terminals and CI logs keep what they show."""
    import modal

    fill_volume(plan, store, modal.Volume.from_name(plan.volume, create_if_missing=True), report)
    secret = ensure_secret(plan.secret, report)
    os.environ["SLSERVE_MODAL_PLAN"] = str(plan_file)
    from slserve.modal import container  # builds the app from the plan, its classes under their names

    with modal.enable_output():
        container.app.deploy(name=plan.app)
    urls = {f.name: getattr(container, f.cls_name)().web.get_web_url() for f in plan.functions}
    if secret is not None:
        private_file(secret_file).write_text(secret)
        report(
            f"the endpoints' secret is in {secret_file} (owner-only): give it to the gateways as SLSERVE_MODAL_SECRET, "
            f"or to the AWS router: aws secretsmanager put-secret-value --secret-id <ModalEndpointSecret> "
            f"--secret-string file://{secret_file}"
        )
    return urls

"""The Modal image as Modal builds it, rebuilt here: a clean CPython 3.12 virtual environment with only the
image's own package list (`plan.requirements`; the runtimes' CUDA builds swapped for their CPU builds, since this
host has no GPU, and the Modal client, which Modal puts into every container), the sources the image ships
(slserve and `plan.modules`, read-only) and the plan file; the volume filled by `fill_volume`. The module Modal
imports in every container is imported there and each class answers a request through `.local()`. What the
image does not declare, the container cannot import."""

from __future__ import annotations

import importlib.metadata
import json
import shutil
import subprocess
from pathlib import Path

import pytest
from tests.integration.lambda_sandbox import python312, read_only_copy

import slserve
from slserve.platform.catalog import FolderCatalog
from slserve.snapshot import ArtifactStore

modal = pytest.importorskip("modal")

from tests.integration.modal_volume import FolderVolume  # noqa: E402

from slserve.modal.deploy import fill_volume  # noqa: E402
from slserve.modal.plan import GPU_BUILDS, plan_app  # noqa: E402

pytestmark = pytest.mark.slow
FUNCTIONS = Path(__file__).resolve().parents[2] / "functions"
MAIN = Path(__file__).with_name("modal_container_main.py")
SECRET = "image test secret"


def cpu_build(requirement: str) -> str:
    """A runtime's CUDA build -> its CPU build at the version installed here (this host has no GPU)."""
    name = requirement.split("==")[0].split(">")[0].split("[")[0]
    cpu = {gpu: cpu for cpu, gpu in GPU_BUILDS.items()}.get(name)
    return f"{cpu}=={importlib.metadata.version(cpu).split('+')[0]}" if cpu else requirement


def test_the_container_imports_and_serves_from_only_what_the_image_declares(
    build_sample,
    sample_store: ArtifactStore,
    tmp_path: Path,  # type: ignore[no-untyped-def]
) -> None:
    python = python312()
    if python is None:
        pytest.skip("no CPython 3.12 here (the image's Python)")
    for name in ("classifier", "minilm-fp16"):
        build_sample(name)
    functions = FolderCatalog(sample_store, FUNCTIONS).functions()
    plan = plan_app(sample_store, [functions["minilm-fp16"], functions["classifier"]])
    assert not any(r.startswith(("onnxruntime==", "torch==")) for r in plan.requirements)  # the CUDA builds only
    assert not any("+" in r for r in plan.requirements)  # nothing pinned to a build of this host

    env_dir = tmp_path / "image"
    subprocess.run([python, "-m", "venv", str(env_dir)], check=True)
    wanted = [cpu_build(r) for r in plan.requirements] + [f"modal=={importlib.metadata.version('modal')}"]
    pip = [str(env_dir / "bin/python"), "-m", "pip", "install", "--quiet", "--only-binary=:all:", *wanted]
    installed = subprocess.run(pip, capture_output=True, text=True)
    assert installed.returncode == 0, installed.stderr[-3000:]

    sources = tmp_path / "sources"  # what add_local_python_source puts beside the plan
    sources.mkdir()
    shutil.copytree(Path(slserve.__file__).parent, sources / "slserve", ignore=shutil.ignore_patterns("__pycache__"))
    for module in plan.modules:
        spec_origin = importlib.util.find_spec(module).origin  # type: ignore[union-attr]
        shutil.copytree(Path(spec_origin).parent, sources / module, ignore=shutil.ignore_patterns("__pycache__"))
    shipped = read_only_copy(sources, tmp_path / "root")
    plan_file = plan.write(tmp_path / "plan.json")
    volume = tmp_path / "volume"
    fill_volume(plan, sample_store, FolderVolume(volume), lambda _: None)

    home = tmp_path / "home"
    home.mkdir(mode=0o555)
    requests = {
        "Classifier": (
            "/v2/models/classifier/infer",
            {"inputs": [{"name": "features", "datatype": "FP32", "shape": [1, 4], "data": [0.1] * 4}]},
        ),
        "MinilmFp16": (
            "/v2/models/minilm/infer",
            {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": ["serverless"]}]},
        ),
    }
    env = {
        "PATH": "/usr/bin:/bin",
        "HOME": str(home),
        "PYTHONPATH": str(shipped),
        "PYTHONNOUSERSITE": "1",
        "SLSERVE_MODAL_PLAN": str(plan_file),
        "SLSERVE_ARTIFACTS": str(volume),  # the volume's mount point
        "SLSERVE_ENDPOINT_SECRET": SECRET,
        "HF_HUB_OFFLINE": "1",
    }
    run = [str(env_dir / "bin/python"), str(MAIN), json.dumps(requests), SECRET]
    done = subprocess.run(run, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    answers = {a["class"]: a for a in map(json.loads, done.stdout.splitlines())}
    assert set(answers) == set(requests)
    for cls_name, answer in answers.items():
        assert answer["status"] == 200, (cls_name, answer["body"])
    embedding = json.loads(answers["MinilmFp16"]["body"])["outputs"][0]
    assert embedding["shape"] == [1, 384]

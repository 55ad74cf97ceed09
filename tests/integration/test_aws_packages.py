"""The AWS packages, built for real: a zip of an ONNX Runtime function (Lambda's wheels for CPython 3.12, under
the 250 MB limit, no torch) that runs under the runtime client in Lambda's sandbox from the zip alone
(`lambda_sandbox`); the image recipe of a torch function, checked statically (no Docker engine here)."""

from __future__ import annotations

from pathlib import Path

from tests.integration.lambda_peer import start_environment
from tests.integration.lambda_sandbox import Sandbox, lambda_runtime
from tests.integration.test_lambda import FEATURES, decoded, direct

from slserve.aws.package import ZIP_LIMIT, function_image, function_zip
from slserve.platform.catalog import FolderCatalog
from slserve.snapshot import ArtifactStore

FUNCTIONS = Path(__file__).resolve().parents[2] / "functions"


def test_an_onnx_function_zip_runs_on_lambdas_python_from_the_zip_alone(
    build_sample,
    sample_store: ArtifactStore,
    tmp_path: Path,  # type: ignore[no-untyped-def]
) -> None:
    build_sample("classifier")
    function = FolderCatalog(sample_store, FUNCTIONS).functions()["classifier"]
    package = function_zip(sample_store, function, tmp_path / "zip")
    assert package.size_bytes < ZIP_LIMIT and not (package.directory / "torch").exists()
    assert (package.directory / "onnxruntime").is_dir() and (
        package.directory / "slserve" / "aws" / "handler.py"
    ).is_file()
    assert not list(package.directory.rglob("*.cpython-311*"))  # nothing built for this machine's Python
    sandbox = Sandbox.make(package.directory, lambda_runtime(tmp_path / "runtime"), tmp_path / "sandbox")
    env = {"SLSERVE_FUNCTION": "classifier"}
    environment = start_environment("slserve.aws.handler.handler", env, tmp_path / "lambda.log", sandbox=sandbox)
    try:
        status, headers, doc = decoded(environment.api.invoke(direct(FEATURES), timeout_s=120))
    finally:
        environment.stop()
    assert status == 200 and doc["outputs"][0]["shape"] == [2, 3], (tmp_path / "lambda.log").read_text()[-2000:]
    assert headers["x-slserve-cold-start-ms"]


def test_a_torch_function_image_recipe_layers_the_artifact_on_its_own(
    build_sample,
    sample_store: ArtifactStore,
    tmp_path: Path,  # type: ignore[no-untyped-def]
) -> None:
    build_sample("minilm-torch")
    function = FolderCatalog(sample_store, FUNCTIONS).functions()["minilm-torch"]
    package = function_image(sample_store, function, tmp_path / "image")
    lines = [line for line in (package.directory / "Dockerfile").read_text().splitlines() if line and line[0] != "#"]
    assert lines[0] == "FROM public.ecr.aws/lambda/python:3.12"
    copies = [line for line in lines if line.startswith("COPY")]
    assert copies == [
        "COPY requirements.txt ./",
        "COPY artifacts/ ${LAMBDA_TASK_ROOT}/artifacts/",  # the blobs: one layer of their own, before the code
        "COPY code/ ${LAMBDA_TASK_ROOT}/",
    ]
    assert lines[-1] == 'CMD ["slserve.aws.handler.handler"]'
    requirements = (package.directory / "requirements.txt").read_text().splitlines()
    assert any(r.startswith("torch==2.13.0") for r in requirements) and any(
        r.startswith("tokenizers==") for r in requirements
    )
    packaged = ArtifactStore(package.directory / "artifacts")
    assert packaged.ref("minilm-torch") == function.digest
    packaged.open(function.digest or "").verify(full=True)  # every blob, byte for byte
    assert (package.directory / "code" / "slserve_samples" / "minilm.py").is_file()

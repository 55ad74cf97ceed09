"""What a package ships is the import closure of what it runs: read from the source, following imports wherever
they stand, but not those never run (TYPE_CHECKING) or optional (a `try` catching ImportError), and not the
build-time code of a function (its export)."""

from __future__ import annotations

from pathlib import Path

import pytest

from slserve.errors import BuildError
from slserve.remote.requirements import ImportClosure, adapters_except, pinned


def write(root: Path, files: dict[str, str]) -> dict[str, Path]:
    out = {}
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        out[rel] = path
    return out


def test_function_code_is_followed_relatively_and_what_is_never_run_is_not(tmp_path: Path) -> None:
    code = write(
        tmp_path,
        {
            "model.py": "from . import layers\nfrom .nets import head\n",
            "layers.py": "import numpy\ndef later():\n    import orjson\n",  # inside a function: still run
            "nets/__init__.py": "",
            "nets/head.py": (
                "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import torch\n"
                "try:\n    import not_installed_anywhere\nexcept ImportError:\n    pass\n"
            ),
            "export.py": "import torch\n",  # build-time only: not reached from the serving module
        },
    )
    closure = ImportClosure(code=code).add("model")
    assert set(closure.third_party) == {"numpy", "orjson"}
    assert closure.distributions() == ["numpy", "orjson"]


def test_an_import_nothing_installed_provides_names_its_importer(tmp_path: Path) -> None:
    code = write(tmp_path, {"model.py": "import definitely_not_a_distribution_here\n"})
    closure = ImportClosure(code=code).add("model")
    with pytest.raises(BuildError, match=r"model imports 'definitely_not_a_distribution_here'"):
        closure.distributions()


def test_the_routers_closure_reaches_no_framework_and_the_modal_client_it_may_call() -> None:
    closure = ImportClosure(leave_out=adapters_except(())).add("slserve.aws.gateway")
    wanted = set(closure.distributions(provided=("boto3", "botocore")))
    assert {"cachetools", "httpx", "mangum", "starlette"} <= wanted  # features, the modal target, the transport
    assert not wanted & {"torch", "onnxruntime", "onnx", "safetensors", "boto3"}


def test_a_model_handler_ships_only_its_frameworks_adapter() -> None:
    onnx = ImportClosure(leave_out=adapters_except(("onnx",))).add("slserve.aws.handler")
    assert "onnxruntime" in onnx.third_party and "torch" not in onnx.third_party
    assert "aws_lambda_powertools" in onnx.third_party
    (powertools,) = [r for r in pinned(onnx.distributions()) if r.startswith("aws")]
    assert "[" in powertools and "tracer" in powertools  # the extras slserve declares (X-Ray, inside powertools)


def test_a_namespace_package_ships_the_distribution_of_the_subpackage_imported(tmp_path: Path) -> None:
    """`opentelemetry` is the API's, the SDK's and each exporter's: the gateway's trace context needs the API
    alone, and the SDK, imported only where traces are turned on (in a `try`), does not ship."""
    code = write(tmp_path, {"traced.py": "from opentelemetry import trace\nimport opentelemetry.context\n"})
    assert ImportClosure(code=code).add("traced").distributions() == ["opentelemetry-api"]
    handler = ImportClosure(leave_out=adapters_except(["onnx"])).add("slserve.aws.handler").distributions()
    assert "opentelemetry-api" in handler
    assert not [d for d in handler if d.startswith(("opentelemetry-sdk", "opentelemetry-exporter", "protobuf"))]

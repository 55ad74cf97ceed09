"""A function's own code, in its folder: built into its artifact, imported from there under a package of its
own (two functions' `model.py` never collide), and watched for edits like the spec."""

from __future__ import annotations

import traceback
from pathlib import Path

import numpy as np
import pytest
from tests.conftest import write_function

from slserve.build.function import build_function
from slserve.build.key import stale_reason
from slserve.errors import SpecError
from slserve.platform.catalog import FolderCatalog
from slserve.runtime import load_runtime
from slserve.snapshot import ArtifactStore
from slserve.spec import load_function

OWN_TOML = """
[model]
name = "{name}"

[source]
framework = "torch"
factory = "model:build_model"

[[signature.inputs]]
name = "x"
datatype = "FP32"
shape = [-1, 4]

[[signature.outputs]]
name = "y"
datatype = "FP32"
shape = [-1, 4]
"""

MODEL = """
import torch

from . import layers


def build_model() -> torch.nn.Module:
    return layers.Scale({factor})
"""

LAYERS = """
import torch


class Scale(torch.nn.Module):
    def __init__(self, factor: float) -> None:
        super().__init__()
        self.register_buffer("factor", torch.tensor(factor))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.factor
"""


def own_function(root: Path, name: str, factor: float) -> Path:
    d = write_function(root, name, OWN_TOML.format(name=name))
    (d / "model.py").write_text(MODEL.format(factor=factor))
    (d / "layers.py").write_text(LAYERS)
    return d


def answer(store: ArtifactStore, name: str) -> np.ndarray:
    runtime = load_runtime(store.current(name), device="cpu")
    return runtime.infer({"x": np.ones((1, 4), dtype=np.float32)})["y"]


def test_each_function_imports_its_own_model_py(tmp_path: Path, store: ArtifactStore) -> None:
    """Two functions, each with a `model.py` (and a `layers.py` it imports relatively), in one process: neither
    on sys.path, each answering with its own code."""
    for name, factor in (("double", 2.0), ("triple", 3.0)):
        build_function(load_function(own_function(tmp_path / "functions", name, factor)), store)
    assert answer(store, "double").tolist() == [[2.0] * 4]
    assert answer(store, "triple").tolist() == [[3.0] * 4]
    files = store.current("double").manifest.files
    assert {"code/model.py", "code/layers.py"} <= set(files)


def test_the_artifact_carries_the_code_it_was_built_with(tmp_path: Path, store: ArtifactStore) -> None:
    d = own_function(tmp_path / "functions", "scaled", 2.0)
    first = build_function(load_function(d), store).artifact
    (d / "model.py").write_text(MODEL.format(factor=5.0))
    assert "its code (model.py) changed since the last build" in str(stale_reason(load_function(d), first))
    second = build_function(load_function(d), store).artifact
    assert second.digest != first.digest and stale_reason(load_function(d), second) is None
    assert answer(store, "scaled").tolist() == [[5.0] * 4]
    # The first build still answers with the code it was built with (the folder's code changed since).
    x = {"x": np.ones((1, 4), dtype=np.float32)}
    assert load_runtime(first, device="cpu").infer(x)["y"].tolist() == [[2.0] * 4]
    (d / "helpers.py").write_text("X = 1\n")
    assert "helpers.py" in str(stale_reason(load_function(d), second))
    (d / "helpers.py").unlink()
    (d / "layers.py").unlink()
    assert "layers.py" in str(stale_reason(load_function(d), second))


def test_a_broken_module_names_its_error_and_line(tmp_path: Path, store: ArtifactStore) -> None:
    d = own_function(tmp_path / "functions", "broken-code", 2.0)
    (d / "layers.py").write_text(LAYERS + "\nraise RuntimeError('layers cannot load here')\n")
    with pytest.raises(SpecError) as failed:
        build_function(load_function(d), store)
    assert "RuntimeError: layers cannot load here (broken-code/layers.py, line 13)" in failed.value.message
    shown = "".join(traceback.format_exception(failed.value.__cause__))
    assert 'broken-code/layers.py", line 13' in shown and "raise RuntimeError" in shown

    (d / "layers.py").write_text(LAYERS)
    (d / "model.py").write_text("import not_installed_anywhere\n")
    with pytest.raises(SpecError, match="No module named 'not_installed_anywhere'"):
        build_function(load_function(d), store)


def test_a_module_the_folder_lacks_says_where_it_looked(tmp_path: Path, store: ArtifactStore) -> None:
    d = own_function(tmp_path / "functions", "typo", 2.0)
    (d / "function.toml").write_text(OWN_TOML.format(name="typo").replace("model:build_model", "modle:build_model"))
    with pytest.raises(SpecError, match=r"cannot be found|its function folder|No module named 'modle'"):
        build_function(load_function(d), store)


def test_a_running_catalog_sees_an_edit_to_any_file_its_build_read(tmp_path: Path, store: ArtifactStore) -> None:
    """Not only function.toml: the folder's code, and model code outside it, make the function stale."""
    functions = tmp_path / "functions"
    d = own_function(functions, "scaled", 2.0)
    build_function(load_function(d), store)
    catalog = FolderCatalog(store, functions)
    assert catalog.functions()["scaled"].stale is None
    (d / "layers.py").write_text((d / "layers.py").read_text() + "# edited\n")
    catalog.refresh()
    assert "its code (layers.py) changed since the last build" in str(catalog.functions()["scaled"].stale)
    build_function(load_function(d), store)
    catalog.refresh()
    assert catalog.functions()["scaled"].stale is None

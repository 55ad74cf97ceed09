"""A build runs the model on inputs made from its signature and fails, naming both sides, when it cannot."""

from __future__ import annotations

from pathlib import Path

import pytest
from tests.conftest import SMALL_MLP_TOML, write_function

from slserve.build.function import build_function
from slserve.errors import BuildError
from slserve.snapshot import ArtifactStore
from slserve.spec import load_function

CLASSIFIER_AS_16 = """
[model]
name = "wrong-width"

[source]
framework = "onnx"
export = "slserve_samples.classifier:export_onnx"

[[signature.inputs]]
name = "features"
datatype = "FP32"
shape = [-1, 16]

[[signature.outputs]]
name = "probabilities"
datatype = "FP32"
shape = [-1, 3]

[[signature.outputs]]
name = "label"
datatype = "INT64"
shape = [-1]
"""


def test_a_torch_signature_the_model_cannot_take_fails_the_build(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path / "artifacts")
    toml = SMALL_MLP_TOML.format(version="1", seed=0).replace(
        "shape = [-1, 16]\n\n[[signature.outputs]]", "shape = [-1, 10]\n\n[[signature.outputs]]"
    )
    d = write_function(tmp_path / "functions", "small-mlp", toml)
    with pytest.raises(BuildError) as refused:
        build_function(load_function(d), store)
    message = refused.value.message
    assert message.startswith("small-mlp: signature says x FP32 [-1, 10]; the model cannot run on inputs made from")
    assert "(its first layer, Linear, takes 16 features)" in message and "Make [signature] match" in message
    assert store.ref("small-mlp") is None  # nothing published


def test_an_onnx_signature_is_checked_against_the_graph_s_inputs(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path / "artifacts")
    d = write_function(tmp_path / "functions", "wrong-width", CLASSIFIER_AS_16)
    with pytest.raises(BuildError) as refused:
        build_function(load_function(d), store)
    message = refused.value.message
    assert message.startswith("wrong-width: signature says features FP32 [-1, 16]; the ONNX graph declares")
    assert "features [" in message and ", 4]" in message

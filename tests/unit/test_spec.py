from __future__ import annotations

from pathlib import Path

import pytest
from tests.conftest import FUNCTIONS, SMALL_MLP_TOML, write_function

from slserve.errors import SpecError
from slserve.spec import Datatype, Framework, load_function
from slserve.starters import function_template

SHIPPED = (
    "big-mlp",
    "classifier",
    "classifier-v2",
    "minilm-torch",
    "minilm-onnx",
    "minilm-int8",
    "minilm-fp16",
    "triage",
)


def test_every_sample_parses() -> None:
    """The functions the repository ships, by name: a folder a user added (`slserve init`) is theirs, not ours."""
    found = {name: load_function(FUNCTIONS / name) for name in SHIPPED}
    v1, v2 = found["classifier"].spec.model, found["classifier-v2"].spec.model
    assert (v1.name, v1.version, v2.name, v2.version) == ("classifier", "1", "classifier", "2")
    minilm = found["minilm-torch"].spec
    assert minilm.framework is Framework.TORCH
    assert minilm.signature.inputs[0].datatype is Datatype.BYTES
    assert minilm.signature.outputs[0].shape == [-1, 384]
    assert found["minilm-onnx"].spec.model == minilm.model  # one model version, four functions
    assert found["minilm-int8"].spec.model == minilm.model and found["minilm-int8"].spec.source.quantize == "int8"
    premium = found["minilm-fp16"].spec
    assert premium.model == minilm.model and premium.source.quantize == "fp16" and premium.tier == "premium"
    assert premium.scaling.min_instances == 1 and premium.resources.gpu
    assert found["classifier"].spec.scaling.min_instances == 0  # scale-to-zero by default


def test_defaults(tmp_path: Path) -> None:
    spec = load_function(write_function(tmp_path, "m", SMALL_MLP_TOML.format(version="1", seed=0))).spec
    assert spec.tier == "standard"
    assert (spec.scaling.min_instances, spec.scaling.max_instances) == (0, 4)
    assert spec.batching.max_batch_size == 1
    assert spec.resources.gpu is None


def test_init_template_parses(tmp_path: Path) -> None:
    d = write_function(tmp_path, "new-fn", function_template("new-fn"))
    assert load_function(d).spec.model.name == "new-fn"


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (("[model]", "[model]\ncolour = 'red'"), "model.colour: unknown field"),
        (('datatype = "FP32"', 'datatype = "FLOAT"'), "signature.inputs.0.datatype"),
        (("shape = [-1, 16]", "shape = [-1, 0]"), "dimensions must be positive or -1"),
        (("shape = [-1, 16]", "shape = []"), "needs at least one dimension"),
        (('framework = "torch"', 'framework = "tensorflow"'), "source.framework"),
        (('factory = "slserve_samples.big_mlp:build_small"', ""), "needs factory"),
        (('factory = "slserve_samples.big_mlp:build_small"', 'factory = "no colon"'), "source.factory"),
        (('name = "small-mlp"', 'name = "Small MLP"'), "model.name"),
        (('version = "1"', 'version = "1"\n[scaling]\nmin_instances = 5\nmax_instances = 2'), "exceeds"),
        (('name = "y"', 'name = "x"\n[[signature.outputs]]\nname = "x"'), "signature.outputs"),
    ],
)
def test_bad_fields_name_file_and_field(tmp_path: Path, edit: tuple[str, str], expected: str) -> None:
    toml = SMALL_MLP_TOML.format(version="1", seed=0).replace(*edit, 1)
    d = write_function(tmp_path, "bad", toml)
    with pytest.raises(SpecError) as info:
        load_function(d)
    assert str(d / "function.toml") in info.value.message
    assert expected in info.value.message


def test_onnx_needs_exactly_one_source(tmp_path: Path) -> None:
    toml = SMALL_MLP_TOML.format(version="1", seed=0).replace(
        'framework = "torch"\nfactory = "slserve_samples.big_mlp:build_small"',
        'framework = "onnx"\npath = "m.onnx"\nexport = "a.b:c"',
    )
    with pytest.raises(SpecError, match="exactly one of path"):
        load_function(write_function(tmp_path, "two", toml))


def test_not_toml_and_missing(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="not valid TOML"):
        load_function(write_function(tmp_path, "broken", "[model\nname="))
    (tmp_path / "empty").mkdir()
    with pytest.raises(SpecError, match="slserve init empty"):
        load_function(tmp_path / "empty")
    with pytest.raises(SpecError, match="function folder names"):
        load_function(write_function(tmp_path, "Bad_Name", SMALL_MLP_TOML))


def test_quantize_is_for_onnx_sources() -> None:
    from pydantic import ValidationError

    from slserve.spec import Source

    with pytest.raises(ValidationError, match="quantize is for framework 'onnx'"):
        Source(framework="torch", factory="m:f", quantize="int8")
    assert Source(framework="onnx", path="m.onnx", quantize="int8").min_agreement == 0.99

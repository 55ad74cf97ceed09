from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from slserve.build.function import build_function
from slserve.snapshot import Artifact, ArtifactStore
from slserve.spec import load_function

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parents[1]
FUNCTIONS = ROOT / "functions"

SMALL_MLP_TOML = """
[model]
name = "small-mlp"
version = "{version}"

[source]
framework = "torch"
factory = "slserve_samples.big_mlp:build_small"
seed = {seed}

[[signature.inputs]]
name = "x"
datatype = "FP32"
shape = [-1, 16]

[[signature.outputs]]
name = "y"
datatype = "FP32"
shape = [-1, 16]
"""

# A pipeline over the classifier in two tiers: with the economy function local (or on Lambda) and the premium
# one on Modal, its two steps run on two targets.
BOTH_TIERS = """
[model]
name = "both-tiers"

[[signature.inputs]]
name = "features"
datatype = "FP32"
shape = [-1, 4]

[[signature.outputs]]
name = "probabilities"
datatype = "FP32"
shape = [-1, 6]

[[steps]]
name = "here"
model = "classifier"
tier = "economy"
inputs = { features = "features" }

[[steps]]
name = "there"
model = "classifier"
tier = "premium"
inputs = { features = "features" }

[[steps]]
name = "both"
op = "concat"
inputs = ["here.probabilities", "there.probabilities"]

[outputs]
probabilities = "both.output"
"""


def write_function(root: Path, name: str, toml: str) -> Path:
    d = root / name
    d.mkdir(parents=True, exist_ok=True)
    (d / "function.toml").write_text(toml)
    return d


@pytest.fixture
def store(tmp_path: Path) -> ArtifactStore:
    return ArtifactStore(tmp_path / "artifacts")


@pytest.fixture(scope="session")
def sample_store(tmp_path_factory: pytest.TempPathFactory) -> ArtifactStore:
    """The repository's sample functions, built once per test session (big-mlp: ~1 GB on disk)."""
    return ArtifactStore(tmp_path_factory.mktemp("samples") / "artifacts")


_built: dict[str, Artifact] = {}


@pytest.fixture(scope="session")
def build_sample(sample_store: ArtifactStore):  # type: ignore[no-untyped-def]
    def build(name: str) -> Artifact:
        if name not in _built:
            _built[name] = build_function(load_function(FUNCTIONS / name), sample_store).artifact
        return _built[name]

    return build


@pytest.fixture
def copy_function(tmp_path: Path):  # type: ignore[no-untyped-def]
    def copy(name: str) -> Path:
        target = tmp_path / "functions" / name
        shutil.copytree(FUNCTIONS / name, target)
        return target

    return copy

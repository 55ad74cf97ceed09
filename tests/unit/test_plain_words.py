"""What the platform says is true and in the caller's words: errors name the datatype to send (not numpy's
internals), help text says what it means, a deploy lists only what it needs, torch's warnings stay out of logs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from tests.conftest import SMALL_MLP_TOML, write_function

from slserve.aws.deploy import missing_for_deploy
from slserve.build.function import build_function
from slserve.errors import InvalidInput
from slserve.platform.base import Deployed
from slserve.platform.v2 import RequestLimits, parse_infer
from slserve.runtime.tensors import as_bytes_array
from slserve.snapshot import ArtifactStore
from slserve.spec import load_function


def test_a_string_among_numbers_is_named_as_it_was_sent(tmp_path: Path) -> None:
    fdef = load_function(write_function(tmp_path, "small-mlp", SMALL_MLP_TOML.format(version="1", seed=0)))
    body = b'{"inputs":[{"name":"x","datatype":"FP32","shape":[1,16],"data":[1,2,3,4,5,6,7,8,"nine",0,0,0,0,0,0,0]}]}'
    with pytest.raises(InvalidInput) as refused:
        parse_infer(Deployed("small-mlp", fdef.spec, "d"), body, None, RequestLimits(1000, 10))
    assert refused.value.message == (
        "input 'x': data must be numbers for datatype FP32, got 'nine' among them (strings go in a BYTES input)"
    )
    with pytest.raises(InvalidInput, match=r"^input 't': datatype BYTES expects strings or bytes, got FP32 data$"):
        as_bytes_array(np.zeros(2, dtype=np.float32), "t")


def test_the_help_of_init_says_what_to_keep_in_step() -> None:
    code = "from slserve.cli import main; main()"
    shown = subprocess.run([sys.executable, "-c", code, "init", "--help"], capture_output=True, text=True, env={
        "COLUMNS": "200", "PATH": "/usr/bin:/bin"})  # fmt: skip
    assert "keep its signature table in step" in shown.stdout, shown.stdout


def test_a_deploy_of_zips_does_not_ask_for_docker() -> None:
    assert not [m for m in missing_for_deploy(images=False) if "Docker" in m]


def test_a_read_only_input_reaches_torch_without_a_warning(tmp_path: Path) -> None:
    """In a process of its own: torch warns once per process, so an earlier test's call would hide it here."""
    store = ArtifactStore(tmp_path / "artifacts")
    d = write_function(tmp_path / "functions", "small-mlp", SMALL_MLP_TOML.format(version="1", seed=0))
    digest = build_function(load_function(d), store).artifact.digest
    script = (
        "import numpy as np\n"
        "from slserve.runtime import load_runtime\n"
        "from pathlib import Path\nfrom slserve.snapshot import ArtifactStore\n"
        f"runtime = load_runtime(ArtifactStore(Path({str(store.root)!r})).open({digest!r}), device='cpu')\n"
        "x = np.frombuffer(np.ones(16, dtype=np.float32).tobytes(), dtype=np.float32).reshape(1, 16)\n"
        "runtime.infer({'x': x})\n"
    )
    ran = subprocess.run([sys.executable, "-W", "error::UserWarning", "-c", script], capture_output=True, text=True)
    assert ran.returncode == 0 and "not writable" not in ran.stderr, ran.stderr[-2000:]

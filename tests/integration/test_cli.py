"""The `slserve` command as a user runs it: a real process."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import SMALL_MLP_TOML, write_function


def slserve(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "200", "SLSERVE_FUNCTIONS": "functions", "SLSERVE_ARTIFACTS": "artifacts"}
    code = "from slserve.cli import main; main()"
    return subprocess.run(
        [sys.executable, "-c", code, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )


def test_init_build_invoke_verify(tmp_path: Path) -> None:
    first = slserve("init", "fresh", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    assert "keep its signature table in step" in " ".join(first.stdout.split())  # not eaten as markup
    assert (tmp_path / "functions/fresh/model.py").is_file()
    assert (tmp_path / "functions/fresh/function.toml").is_file()
    again = slserve("init", "fresh", cwd=tmp_path)
    assert again.returncode == 2 and "exists already" in again.stderr

    write_function(tmp_path / "functions", "small-mlp", SMALL_MLP_TOML.format(version="1", seed=0))
    built = slserve("build", "small-mlp", cwd=tmp_path)
    assert built.returncode == 0, built.stderr
    assert "built" in built.stdout
    cached = slserve("build", "small-mlp", cwd=tmp_path)
    assert "cached" in cached.stdout

    ran = slserve("invoke", "small-mlp", "--input", '{"x": [[' + ",".join(["0.5"] * 16) + "]]}", cwd=tmp_path)
    assert ran.returncode == 0, ran.stderr
    assert "float32[1, 16]" in ran.stdout

    checked = slserve("verify", "--full", cwd=tmp_path)
    assert checked.returncode == 0 and "small-mlp" in checked.stdout and "ok" in checked.stdout


def test_bad_spec_is_a_clear_error_not_a_traceback(tmp_path: Path) -> None:
    write_function(tmp_path / "functions", "broken", SMALL_MLP_TOML.format(version="1", seed=0).replace("FP32", "F32"))
    result = slserve("build", "broken", cwd=tmp_path)
    assert result.returncode == 2
    assert "signature.inputs.0.datatype" in result.stderr
    assert "Traceback" not in result.stderr


def test_bad_input_is_a_clear_error(tmp_path: Path) -> None:
    write_function(tmp_path / "functions", "small-mlp", SMALL_MLP_TOML.format(version="1", seed=0))
    assert slserve("build", cwd=tmp_path).returncode == 0
    result = slserve("invoke", "small-mlp", "--input", '{"x": [[1, 2]]}', cwd=tmp_path)
    assert result.returncode == 2
    assert "shape [1, 2] does not match" in " ".join(result.stderr.split())

"""`slserve deploy modal` from the command line: the dry run plans and builds the app offline from the functions
folder and prints what each class gets and costs; a real deploy without a Modal token says what is missing."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from tests.conftest import FUNCTIONS, write_function

from slserve.build.function import build_function
from slserve.modal.plan import ModalPlan
from slserve.snapshot import ArtifactStore
from slserve.spec import load_function

pytest.importorskip("modal")


def deploy_modal(functions: Path, store: ArtifactStore, work: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-c", "from slserve.cli import main; main()", "deploy", "modal", *extra]
    command += ["--functions", str(functions), "--artifacts", str(store.root), "--work", str(work)]
    command += ["--routes", str(work / "routes.toml")]
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODAL_")}  # no token from the environment
    env.update({"COLUMNS": "200", "HOME": str(work), "MODAL_CONFIG_PATH": str(work / ".modal.toml")})
    return subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)


def test_the_dry_run_plans_a_class_per_gpu_and_modal_function(build_sample, sample_store, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    functions = tmp_path / "functions"
    for name in ("classifier", "minilm-fp16"):
        write_function(functions, name, (FUNCTIONS / name / "function.toml").read_text())
    remote = 'target = "modal"\n' + (FUNCTIONS / "classifier" / "function.toml").read_text()
    write_function(functions, "classifier-modal", remote)
    for name in ("classifier", "minilm-fp16", "classifier-modal"):
        build_function(load_function(functions / name), sample_store)

    done = deploy_modal(functions, sample_store, tmp_path / "work", "--dry-run")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    plan = ModalPlan.from_json((tmp_path / "work" / "modal-plan.json").read_bytes())
    assert [f.name for f in plan.functions] == ["classifier-modal", "minilm-fp16"]  # not the local classifier
    for line in ("MinilmFp16", "ClassifierModal", "memory", "Modal $/M requests", "holds"):
        assert line in done.stdout, line

    refused = deploy_modal(functions, sample_store, tmp_path / "work")
    assert refused.returncode == 2 and "a Modal token" in refused.stdout, refused.stdout[-2000:]

"""`slserve build` of several functions: side by side in worker processes, a failure stopping none of the others,
and the batching proof reused by a build of the same structure (a retrained model, a second version)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from tests.conftest import FUNCTIONS, SMALL_MLP_TOML, write_function
from tests.integration.test_cli import slserve

from slserve.build.function import build_function
from slserve.build.proofs import batch_floors
from slserve.runtime import load_runtime
from slserve.snapshot import ArtifactStore
from slserve.spec import load_function


def test_functions_build_side_by_side_and_a_failure_stops_none(tmp_path: Path) -> None:
    functions = tmp_path / "functions"
    for name in ("classifier", "classifier-v2"):
        shutil.copytree(FUNCTIONS / name, functions / name)
    write_function(functions, "small-mlp", SMALL_MLP_TOML.format(version="1", seed=0))
    broken = SMALL_MLP_TOML.format(version="1", seed=0).replace("slserve_samples.big_mlp:build_small", "nowhere:x")
    write_function(functions, "broken", broken)

    ran = slserve("build", "--jobs", "2", cwd=tmp_path)
    assert ran.returncode == 2
    assert "broken: 'nowhere:x': module 'nowhere' cannot be found" in ran.stderr
    assert "1 of 4 functions failed to build (broken)" in ran.stderr and "warn" not in ran.stderr
    for name in ("classifier", "classifier-v2", "small-mlp"):
        assert f"{name}: built in" in ran.stdout, ran.stdout
    store = ArtifactStore(tmp_path / "artifacts")
    assert {"classifier", "classifier-v2", "small-mlp"} <= set(store.functions())
    assert store.ref("broken") is None

    again = slserve("build", "classifier", "small-mlp", "--jobs", "2", cwd=tmp_path)
    assert again.returncode == 0 and again.stdout.count("cached") >= 2


def test_a_rebuild_of_the_same_model_reuses_its_proof_and_new_weights_do_not(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path / "artifacts")
    first = build_function(load_function(FUNCTIONS / "classifier"), store).artifact
    proofs = sorted((store.root / "proofs").iterdir())
    assert len(proofs) == 1  # one device here: the CPU
    assert json.loads(proofs[0].read_text())["floors"] == first.manifest.build.batch_floors["cpu"]

    # A rebuild that changes nothing the kernels see (here --force; the same for a change to slserve itself).
    again = build_function(load_function(FUNCTIONS / "classifier"), store, force=True).artifact
    assert sorted((store.root / "proofs").iterdir()) == proofs
    assert again.manifest.build.batch_floors == first.manifest.build.batch_floors
    shutil.rmtree(store.root / "proofs")
    proven = batch_floors(again, load_runtime(again))[0]
    assert proven == first.manifest.build.batch_floors  # what it reused is what a proof finds

    # New weights on the same graph are proven anew: floors move with the values at the margin (v1 proves a
    # floor of 2 and the retrained v2 a floor of 1 here, on this library build).
    v2 = build_function(load_function(FUNCTIONS / "classifier-v2"), store).artifact
    assert len(list((store.root / "proofs").iterdir())) == 2
    assert v2.manifest.build.batch_floors == batch_floors(v2, load_runtime(v2))[0]

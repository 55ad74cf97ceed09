"""Filling the Modal volume, content-addressed: against a stand-in with the volume client's interface (listdir
raising modal's NotFoundError on a new volume, batch_upload's put_file) over a local folder, so that what lands
there can be opened as an artifact store, as a container will open the mounted volume."""

from __future__ import annotations

from pathlib import Path

import pytest

from slserve.platform.catalog import FolderCatalog
from slserve.snapshot import ArtifactStore

modal = pytest.importorskip("modal")

from tests.integration.modal_volume import FolderVolume  # noqa: E402

from slserve.modal.deploy import fill_volume  # noqa: E402
from slserve.modal.plan import plan_app  # noqa: E402


def test_only_missing_blobs_are_sent_and_the_volume_is_a_store(build_sample, sample_store, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    build_sample("minilm-fp16")
    functions = FolderCatalog(sample_store, Path(__file__).parents[2] / "functions").functions()
    plan = plan_app(sample_store, [functions["minilm-fp16"]])
    volume = FolderVolume(tmp_path / "volume")
    lines: list[str] = []
    total = sum(plan.functions[0].blobs.values())
    assert fill_volume(plan, sample_store, volume, lines.append) == total  # a new volume: everything
    assert len(volume.puts) == len(plan.functions[0].blobs)
    assert fill_volume(plan, sample_store, volume, lines.append) == 0 and "0 blob(s)" in lines[-1]
    lost = next(d for d in plan.functions[0].blobs if d != plan.functions[0].digest)
    next((tmp_path / "volume").rglob(lost)).unlink()
    assert fill_volume(plan, sample_store, volume, lines.append) == plan.functions[0].blobs[lost]  # just that one
    mounted = ArtifactStore(tmp_path / "volume")  # what the container opens at /artifacts
    mounted.open(plan.functions[0].digest).verify()

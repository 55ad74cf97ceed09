from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from tests.conftest import SMALL_MLP_TOML, write_function

from slserve.build.function import build_function
from slserve.build.key import stale_reason
from slserve.errors import ArtifactCorrupt, ArtifactNotFound
from slserve.snapshot import ArtifactStore, write_tensors
from slserve.snapshot.blobs import sha256_file
from slserve.spec import load_function


def _small(tmp_path: Path, version: str = "1", seed: int = 0, name: str = "small-mlp") -> Path:
    return write_function(tmp_path / "functions", name, SMALL_MLP_TOML.format(version=version, seed=seed))


def test_round_trip_is_bit_exact_for_every_dtype(store: ArtifactStore) -> None:
    rng = np.random.default_rng(0)
    arrays = {
        "f32": rng.standard_normal((3, 5)).astype(np.float32),
        "f16": rng.standard_normal(7).astype(np.float16),
        "f64": rng.standard_normal((2, 2, 2)),
        "i64": rng.integers(-(2**62), 2**62, size=9),
        "i8": rng.integers(-128, 127, size=4).astype(np.int8),
        "u8": rng.integers(0, 255, size=(4, 4)).astype(np.uint8),
        "b": np.array([True, False, True]),
        "scalar": np.array(3.5, dtype=np.float32),
        "empty": np.zeros((0, 4), dtype=np.float32),
    }
    bf16 = torch.randn(6, dtype=torch.bfloat16)
    arrays["bf16"] = bf16.view(torch.int16).numpy().view(np.uint16)
    entries = write_tensors(store.blobs, arrays, {"bf16": "bfloat16"})
    for name, arr in arrays.items():
        e = entries[name]
        assert e.shape == list(arr.shape)
        assert sha256_file(store.blobs.path(e.digest)) == e.digest
    artifact_tensors = {n: e for n, e in entries.items()}
    for name, e in artifact_tensors.items():
        mm = store.blobs.map(e.digest, e.nbytes, name)
        back = np.frombuffer(memoryview(mm)[: e.nbytes], dtype=e.numpy_dtype()).reshape(e.shape)
        assert back.dtype == arrays[name].dtype
        assert back.tobytes() == arrays[name].tobytes()
    assert entries["bf16"].dtype == "bfloat16"


def test_built_artifact_restores_the_module_exactly(tmp_path: Path, store: ArtifactStore) -> None:
    from slserve.build.torch_build import load_module
    from slserve.runtime.torch_runtime import torch_tensors

    fdef = load_function(_small(tmp_path))
    artifact = build_function(fdef, store).artifact
    reference = load_module(fdef).state_dict()
    restored = torch_tensors(artifact)
    assert set(restored) == set(reference)
    for name, tensor in reference.items():
        assert torch.equal(restored[name], tensor), name
    manifest = artifact.manifest
    assert manifest.build.libraries["torch"] == torch.__version__
    assert any(k.startswith("code/slserve_samples.big_mlp") for k in manifest.build.source_files)
    for entry in manifest.tensors.values():
        assert sha256_file(store.blobs.path(entry.digest)) == entry.digest


def test_mapping_is_zero_copy_and_read_only_on_disk(tmp_path: Path, store: ArtifactStore) -> None:
    artifact = build_function(load_function(_small(tmp_path)), store).artifact
    arrays = artifact.map_tensors()
    name, arr = next(iter(arrays.items()))
    assert not arr.flags.owndata  # a view over the mapping, not a copy
    entry = artifact.manifest.tensors[name]
    path = store.blobs.path(entry.digest)
    assert os.stat(path).st_mode & 0o222 == 0  # blobs are read-only
    original = path.read_bytes()
    arr.reshape(-1)[0] += 1  # copy-on-write: the process's view changes, the file never does
    assert path.read_bytes() == original


def test_rebuild_of_unchanged_function_is_a_no_op(tmp_path: Path, store: ArtifactStore) -> None:
    d = _small(tmp_path)
    first = build_function(load_function(d), store)
    again = build_function(load_function(d), store)
    assert not first.cached and again.cached
    assert again.artifact.digest == first.artifact.digest
    (d / "function.toml").write_text((d / "function.toml").read_text().replace("seed = 0", "seed = 1"))
    changed = build_function(load_function(d), store)
    assert not changed.cached and changed.artifact.digest != first.artifact.digest
    assert store.ref("small-mlp") == changed.artifact.digest


def test_a_deployment_change_writes_a_new_manifest_without_rebuilding(tmp_path: Path, store: ArtifactStore) -> None:
    d = _small(tmp_path)
    first = build_function(load_function(d), store)
    (d / "function.toml").write_text((d / "function.toml").read_text() + "\n[scaling]\nmax_instances = 7\n")
    steps: list[str] = []
    redeployed = build_function(load_function(d), store, report=steps.append)
    assert redeployed.cached and "snapshotting torch weights" not in steps
    assert redeployed.artifact.digest != first.artifact.digest  # the manifest records the spec it serves
    assert redeployed.artifact.manifest.spec.scaling.max_instances == 7
    assert redeployed.artifact.manifest.tensors == first.artifact.manifest.tensors
    assert store.ref("small-mlp") == redeployed.artifact.digest
    assert build_function(load_function(d), store).artifact.digest == redeployed.artifact.digest


def test_an_artifact_is_stale_when_its_spec_or_model_code_changed(
    tmp_path: Path, store: ArtifactStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    code = tmp_path / "code"
    code.mkdir()
    (code / "stale_model.py").write_text(
        "from slserve_samples.big_mlp import build_small\n\ndef build():\n    return build_small()\n"
    )
    monkeypatch.syspath_prepend(str(code))
    toml = SMALL_MLP_TOML.format(version="1", seed=0).replace(
        "slserve_samples.big_mlp:build_small", "stale_model:build"
    )
    d = write_function(tmp_path / "functions", "small-mlp", toml)
    artifact = build_function(load_function(d), store).artifact
    assert stale_reason(load_function(d), artifact) is None

    (d / "function.toml").write_text(toml.replace('version = "1"', 'version = "1"\ndescription = "edited"'))
    assert "function.toml changed" in str(stale_reason(load_function(d), artifact))
    (d / "function.toml").write_text(toml + "\n[scaling]\nmax_instances = 7\n")
    assert "deployment settings changed" in str(stale_reason(load_function(d), artifact))
    (d / "function.toml").write_text(toml)
    (code / "stale_model.py").write_text((code / "stale_model.py").read_text() + "# edited\n")
    assert "model code (stale_model.py) changed" in str(stale_reason(load_function(d), artifact))
    rebuilt = build_function(load_function(d), store).artifact
    assert rebuilt.digest != artifact.digest and stale_reason(load_function(d), rebuilt) is None


def test_tensors_shared_between_versions_are_stored_once(tmp_path: Path, store: ArtifactStore) -> None:
    v1 = build_function(load_function(_small(tmp_path / "a", version="1")), store).artifact
    blobs_after_v1 = set((store.root / "blobs").rglob("*"))
    v2 = build_function(load_function(_small(tmp_path / "b", version="2")), store).artifact
    new_blobs = {p for p in set((store.root / "blobs").rglob("*")) - blobs_after_v1 if p.is_file()}
    assert v1.digest != v2.digest  # a different version is a different artifact...
    assert {t.digest for t in v1.manifest.tensors.values()} == {t.digest for t in v2.manifest.tensors.values()}
    assert new_blobs == {store.blobs.path(v2.digest)}  # ...whose weights cost nothing new: only its manifest

    # Partial sharing: one changed tensor adds exactly one blob.
    rng = np.random.default_rng(1)
    base = {f"w{i}": rng.standard_normal(1000).astype(np.float32) for i in range(4)}
    e1 = write_tensors(store.blobs, base)
    e2 = write_tensors(store.blobs, {**base, "w3": base["w3"] + 1})
    assert [e1[k].digest == e2[k].digest for k in sorted(base)] == [True, True, True, False]


def _blob_of_first_tensor(store: ArtifactStore, tmp_path: Path) -> tuple[str, Path]:
    artifact = build_function(load_function(_small(tmp_path)), store).artifact
    name, entry = next(iter(artifact.manifest.tensors.items()))
    path = store.blobs.path(entry.digest)
    os.chmod(path, 0o644)
    return name, path


def test_flipped_byte_is_refused_with_file_and_tensor_named(tmp_path: Path, store: ArtifactStore) -> None:
    name, path = _blob_of_first_tensor(store, tmp_path)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    artifact = store.current("small-mlp")
    with pytest.raises(ArtifactCorrupt) as info:
        artifact.map_tensors()
    assert str(path) in info.value.message and repr(name) in info.value.message
    assert "checksum" in info.value.message
    with pytest.raises(ArtifactCorrupt):
        artifact.verify()


def test_truncated_file_is_refused(tmp_path: Path, store: ArtifactStore) -> None:
    name, path = _blob_of_first_tensor(store, tmp_path)
    with path.open("r+b") as f:
        f.truncate(path.stat().st_size - 3)
    with pytest.raises(ArtifactCorrupt, match="truncated") as info:
        store.current("small-mlp").map_tensors()
    assert repr(name) in info.value.message


def test_corruption_after_a_full_verify_is_still_caught(tmp_path: Path, store: ArtifactStore) -> None:
    _, path = _blob_of_first_tensor(store, tmp_path)
    store.current("small-mlp").verify(full=True)  # leaves a fresh marker for the good bytes
    data = bytearray(path.read_bytes())
    data[0] ^= 0xFF
    path.write_bytes(bytes(data))  # a write changes mtime: the marker no longer vouches for the file
    with pytest.raises(ArtifactCorrupt, match="checksum"):
        store.current("small-mlp").map_tensors()


def test_missing_blob_and_unknown_function(tmp_path: Path, store: ArtifactStore) -> None:
    _, path = _blob_of_first_tensor(store, tmp_path)
    path.unlink()
    with pytest.raises(ArtifactNotFound, match="missing"):
        store.current("small-mlp").map_tensors()
    with pytest.raises(ArtifactNotFound, match="slserve build"):
        store.current("nope")


def test_manifest_is_itself_content_addressed(tmp_path: Path, store: ArtifactStore) -> None:
    artifact = build_function(load_function(_small(tmp_path)), store).artifact
    assert sha256_file(store.blobs.path(artifact.digest)) == artifact.digest
    assert store.open(artifact.digest).manifest == artifact.manifest

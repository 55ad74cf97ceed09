"""The artifact manifest: what a function is, and the digest, size and layout of every byte it needs."""

from __future__ import annotations

from typing import Annotated

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from slserve.spec import FunctionSpec

FORMAT = "slserve.artifact/1"

# Snapshot dtypes and how numpy holds them. numpy has no bfloat16: its bytes travel as uint16 and the torch
# runtime reinterprets them.
NUMPY_DTYPES: dict[str, np.dtype[np.generic]] = {
    name: np.dtype(np_name)
    for name, np_name in {
        "float64": "<f8",
        "float32": "<f4",
        "float16": "<f2",
        "bfloat16": "<u2",
        "int64": "<i8",
        "int32": "<i4",
        "int16": "<i2",
        "int8": "i1",
        "uint8": "u1",
        "bool": "?",
    }.items()
}

Digest = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TensorEntry(_Frozen):
    dtype: str
    shape: list[int]
    digest: Digest
    nbytes: int

    def numpy_dtype(self) -> np.dtype[np.generic]:
        return NUMPY_DTYPES[self.dtype]


class FileEntry(_Frozen):
    digest: Digest
    size: int


class BuildInfo(_Frozen):
    build_key: Digest
    slserve: str
    python: str
    created_at: str
    host: str
    libraries: dict[str, str] = Field(default_factory=dict)
    source_files: dict[str, Digest] = Field(default_factory=dict, description="code the build imported")
    agreement: dict[str, float] = Field(default_factory=dict, description="checks run against the source")
    batch_floors: dict[str, dict[str, int]] = Field(
        default_factory=dict,
        description="device -> feed shape -> smallest call size from which batching is bit-exact (measured); "
        "requests of other shapes, or on a device not measured, are never merged",
    )
    thread_grants: dict[str, dict[str, dict[str, int]]] = Field(
        default_factory=dict,
        description="device -> feed shape -> call size -> the most intra-op threads giving the same rows as the "
        "serving thread count (measured); a call uses more threads only there, when the host has idle cores",
    )


class Manifest(_Frozen):
    format: str = FORMAT
    function: str
    spec: FunctionSpec
    tensors: dict[str, TensorEntry]
    files: dict[str, FileEntry] = Field(
        default_factory=dict, description="graph.onnx, graph.opt-cpu.onnx, assets/<name>, ..."
    )
    build: BuildInfo

    @property
    def weight_bytes(self) -> int:
        """Bytes of distinct tensor blobs (tied or repeated tensors count once)."""
        return sum({t.digest: t.nbytes for t in self.tensors.values()}.values())

    def unique_blobs(self) -> dict[str, int]:
        """digest -> size of every blob this artifact references, each once."""
        blobs = {t.digest: t.nbytes for t in self.tensors.values()}
        blobs.update({f.digest: f.size for f in self.files.values()})
        return blobs

    def assets(self) -> dict[str, FileEntry]:
        return {k.removeprefix("assets/"): v for k, v in self.files.items() if k.startswith("assets/")}

"""The built-in steps, a class each: what it makes of its inputs' specs (`spec`, checked at build) and of their
arrays (`run`, at run time).

Every op works row by row on the batch dimension, so a pipeline answers a batch as it answers each row.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import ClassVar

import numpy as np

from slserve.compose.spec import Step
from slserve.errors import InvalidInput, SpecError
from slserve.spec import Datatype, TensorSpec

NUMERIC = frozenset(Datatype) - {Datatype.BYTES, Datatype.BOOL}
FLOATS = frozenset({Datatype.FP16, Datatype.FP32, Datatype.FP64})


def _out(name: str, datatype: Datatype, shape: list[int]) -> TensorSpec:
    return TensorSpec(name=name, datatype=datatype, shape=shape)


class BuiltIn:
    many_inputs: ClassVar[bool] = False  # concat's; the others take one input

    def spec(self, step: Step, specs: Sequence[TensorSpec], where: str) -> dict[str, TensorSpec]:
        raise NotImplementedError

    def run(self, step: Step, arrays: Sequence[np.ndarray]) -> dict[str, np.ndarray]:
        raise NotImplementedError


class Select(BuiltIn):
    """Columns of a [batch, n] tensor, in the order listed."""

    def spec(self, step: Step, specs: Sequence[TensorSpec], where: str) -> dict[str, TensorSpec]:
        x, columns = specs[0], step.columns
        assert columns is not None
        if len(x.shape) != 2:
            raise SpecError(f"{where}: select takes [batch, n] tensors, {_name(x)} is {x.shape}")
        if x.shape[1] != -1 and max(columns) >= x.shape[1]:
            raise SpecError(f"{where}: column {max(columns)} is past the {x.shape[1]} columns of {_name(x)}")
        return {"output": _out("output", x.datatype, [-1, len(columns)])}

    def run(self, step: Step, arrays: Sequence[np.ndarray]) -> dict[str, np.ndarray]:
        x, columns = arrays[0], step.columns
        assert columns is not None
        if columns and max(columns) >= x.shape[1]:
            raise InvalidInput(f"{step.describe()}: column {max(columns)} is past the {x.shape[1]} columns")
        return {"output": np.ascontiguousarray(x[:, columns])}


class Reshape(BuiltIn):
    """Each row to the step's shape (the same elements)."""

    def spec(self, step: Step, specs: Sequence[TensorSpec], where: str) -> dict[str, TensorSpec]:
        x, shape = specs[0], step.shape
        assert shape is not None
        if any(d < 1 for d in shape):
            raise SpecError(f"{where}: reshape's shape must be positive dimensions after the batch, got {shape}")
        have = x.shape[1:]
        if -1 not in have and math.prod(have) != math.prod(shape):
            raise SpecError(
                f"{where}: {_name(x)} has {math.prod(have)} elements per row, {shape} needs {math.prod(shape)}"
            )
        return {"output": _out("output", x.datatype, [-1, *shape])}

    def run(self, step: Step, arrays: Sequence[np.ndarray]) -> dict[str, np.ndarray]:
        x, shape = arrays[0], step.shape
        assert shape is not None
        if math.prod(x.shape[1:]) != math.prod(shape):
            raise InvalidInput(f"{step.describe()}: rows of shape {list(x.shape[1:])} cannot become {shape}")
        return {"output": x.reshape(x.shape[0], *shape)}


class TopK(BuiltIn):
    """The k largest of each row of a numeric [batch, n] tensor, and their indices."""

    def spec(self, step: Step, specs: Sequence[TensorSpec], where: str) -> dict[str, TensorSpec]:
        x, k = specs[0], step.k
        assert k is not None
        if len(x.shape) != 2 or x.datatype not in NUMERIC:
            raise SpecError(f"{where}: topk takes a numeric [batch, n] tensor, {_name(x)} is {x.datatype} {x.shape}")
        if x.shape[1] != -1 and k > x.shape[1]:
            raise SpecError(f"{where}: k = {k} is more than the {x.shape[1]} columns of {_name(x)}")
        return {"values": _out("values", x.datatype, [-1, k]), "indices": _out("indices", Datatype.INT64, [-1, k])}

    def run(self, step: Step, arrays: Sequence[np.ndarray]) -> dict[str, np.ndarray]:
        x = arrays[0]
        assert step.k is not None
        k = min(step.k, x.shape[1])
        # Stable: ties keep the lower index first, as torch.topk on CPU and `sorted` would.
        indices = np.argsort(-x if x.dtype.kind == "f" else -x.astype(np.float64), axis=1, kind="stable")[:, :k]
        return {"values": np.take_along_axis(x, indices, axis=1), "indices": indices.astype(np.int64)}


class Normalize(BuiltIn):
    """Each row to unit length (L2) along its last axis."""

    def spec(self, step: Step, specs: Sequence[TensorSpec], where: str) -> dict[str, TensorSpec]:
        x = specs[0]
        if x.datatype not in FLOATS or len(x.shape) < 2:
            raise SpecError(
                f"{where}: normalize takes floating-point [batch, ...] tensors, {_name(x)} is {x.datatype} {x.shape}"
            )
        return {"output": _out("output", x.datatype, list(x.shape))}

    def run(self, step: Step, arrays: Sequence[np.ndarray]) -> dict[str, np.ndarray]:
        x = arrays[0]
        norms = np.linalg.norm(x, axis=-1, keepdims=True)
        return {"output": (x / np.maximum(norms, np.finfo(x.dtype).tiny)).astype(x.dtype)}


class Concat(BuiltIn):
    """Its inputs joined along an axis after the batch axis (one datatype, one rank)."""

    many_inputs = True

    def spec(self, step: Step, specs: Sequence[TensorSpec], where: str) -> dict[str, TensorSpec]:
        x = specs[0]
        rank, datatype = len(x.shape), x.datatype
        axis = step.axis % rank if -rank <= step.axis < rank else None
        if axis is None or axis == 0:
            raise SpecError(f"{where}: axis {step.axis} must be an axis after the batch axis of rank-{rank} tensors")
        for other in specs[1:]:
            if other.datatype != datatype or len(other.shape) != rank:
                raise SpecError(
                    f"{where}: {_name(other)} is {other.datatype} {other.shape}, {_name(x)} is "
                    f"{datatype} {x.shape}; concat needs one datatype and one rank"
                )
            for d, (a, b) in enumerate(zip(x.shape, other.shape, strict=True)):
                if d != axis and a != -1 and b != -1 and a != b:
                    raise SpecError(
                        f"{where}: {_name(x)} {x.shape} and {_name(other)} {other.shape} differ on axis {d}"
                    )
        joined = [s.shape[axis] for s in specs]
        shape = list(x.shape)
        shape[axis] = -1 if -1 in joined else sum(joined)
        return {"output": _out("output", datatype, shape)}

    def run(self, step: Step, arrays: Sequence[np.ndarray]) -> dict[str, np.ndarray]:
        rows = {a.shape[0] for a in arrays}
        if len(rows) > 1:
            raise InvalidInput(f"{step.describe()}: its inputs have different numbers of rows {sorted(rows)}")
        return {"output": np.concatenate(arrays, axis=step.axis)}


BUILT_INS: dict[str, BuiltIn] = {
    "select": Select(),
    "reshape": Reshape(),
    "topk": TopK(),
    "normalize": Normalize(),
    "concat": Concat(),
}


def built_in(step: Step) -> BuiltIn:
    assert step.op is not None
    return BUILT_INS[step.op]


def infer(step: Step, specs: Sequence[TensorSpec]) -> dict[str, TensorSpec]:
    """The op's outputs for inputs of these specs; a SpecError names the step and what does not fit."""
    where, op = step.describe(), built_in(step)
    if not op.many_inputs and len(specs) != 1:
        raise SpecError(f"{where} takes one input, is given {len(specs)}")
    if not specs:
        raise SpecError(f"{where} takes at least one input")
    return op.spec(step, specs, where)


def apply(step: Step, arrays: Sequence[np.ndarray]) -> dict[str, np.ndarray]:
    return built_in(step).run(step, arrays)


def lookup_spec(step: Step, key: TensorSpec) -> TensorSpec:
    if key.datatype not in (Datatype.BYTES, Datatype.INT64) or len(key.shape) != 1:
        raise SpecError(
            f"{step.describe()}: keys are a [batch] tensor of BYTES or INT64, {_name(key)} is "
            f"{key.datatype} {key.shape}"
        )
    assert step.width is not None
    return TensorSpec(name="features", datatype=Datatype.FP32, shape=[-1, step.width])


def _name(spec: TensorSpec) -> str:
    return repr(spec.name)

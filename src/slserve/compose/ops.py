"""The built-in steps: what each makes of its inputs' specs (checked at build) and of their arrays (at run).

Every op works row by row on the batch dimension, so a pipeline answers a batch as it answers each row.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from slserve.compose.spec import Step
from slserve.errors import InvalidInput, SpecError
from slserve.spec import Datatype, TensorSpec

NUMERIC = frozenset(Datatype) - {Datatype.BYTES, Datatype.BOOL}
FLOATS = frozenset({Datatype.FP16, Datatype.FP32, Datatype.FP64})
OUTPUTS = {"topk": ("values", "indices")}  # every other op has one output, "output"


def output_names(step: Step) -> tuple[str, ...]:
    assert step.op is not None
    return OUTPUTS.get(step.op, ("output",))


def infer(step: Step, specs: Sequence[TensorSpec]) -> dict[str, TensorSpec]:
    """The op's outputs for inputs of these specs; a SpecError names the step and what does not fit."""
    where = step.describe()
    if step.op != "concat" and len(specs) != 1:
        raise SpecError(f"{where} takes one input, is given {len(specs)}")
    if not specs:
        raise SpecError(f"{where} takes at least one input")
    x = specs[0]

    def out(name: str, datatype: Datatype, shape: list[int]) -> TensorSpec:
        return TensorSpec(name=name, datatype=datatype, shape=shape)

    if step.op == "select":
        assert step.columns is not None
        if len(x.shape) != 2:
            raise SpecError(f"{where}: select takes [batch, n] tensors, {_name(x)} is {x.shape}")
        if x.shape[1] != -1 and max(step.columns) >= x.shape[1]:
            raise SpecError(f"{where}: column {max(step.columns)} is past the {x.shape[1]} columns of {_name(x)}")
        return {"output": out("output", x.datatype, [-1, len(step.columns)])}
    if step.op == "reshape":
        assert step.shape is not None
        if any(d < 1 for d in step.shape):
            raise SpecError(f"{where}: reshape's shape must be positive dimensions after the batch, got {step.shape}")
        have = x.shape[1:]
        if -1 not in have and math.prod(have) != math.prod(step.shape):
            raise SpecError(
                f"{where}: {_name(x)} has {math.prod(have)} elements per row, {step.shape} needs "
                f"{math.prod(step.shape)}"
            )
        return {"output": out("output", x.datatype, [-1, *step.shape])}
    if step.op == "topk":
        assert step.k is not None
        if len(x.shape) != 2 or x.datatype not in NUMERIC:
            raise SpecError(f"{where}: topk takes a numeric [batch, n] tensor, {_name(x)} is {x.datatype} {x.shape}")
        if x.shape[1] != -1 and step.k > x.shape[1]:
            raise SpecError(f"{where}: k = {step.k} is more than the {x.shape[1]} columns of {_name(x)}")
        return {
            "values": out("values", x.datatype, [-1, step.k]),
            "indices": out("indices", Datatype.INT64, [-1, step.k]),
        }
    if step.op == "normalize":
        if x.datatype not in FLOATS or len(x.shape) < 2:
            raise SpecError(
                f"{where}: normalize takes floating-point [batch, ...] tensors, {_name(x)} is {x.datatype} {x.shape}"
            )
        return {"output": out("output", x.datatype, list(x.shape))}
    assert step.op == "concat"
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
                raise SpecError(f"{where}: {_name(x)} {x.shape} and {_name(other)} {other.shape} differ on axis {d}")
    joined = [s.shape[axis] for s in specs]
    shape = list(x.shape)
    shape[axis] = -1 if -1 in joined else sum(joined)
    return {"output": out("output", datatype, shape)}


def apply(step: Step, arrays: Sequence[np.ndarray]) -> dict[str, np.ndarray]:
    x = arrays[0]
    if step.op == "select":
        assert step.columns is not None
        if step.columns and max(step.columns) >= x.shape[1]:
            raise InvalidInput(f"{step.describe()}: column {max(step.columns)} is past the {x.shape[1]} columns")
        return {"output": np.ascontiguousarray(x[:, step.columns])}
    if step.op == "reshape":
        assert step.shape is not None
        if math.prod(x.shape[1:]) != math.prod(step.shape):
            raise InvalidInput(f"{step.describe()}: rows of shape {list(x.shape[1:])} cannot become {step.shape}")
        return {"output": x.reshape(x.shape[0], *step.shape)}
    if step.op == "topk":
        assert step.k is not None
        k = min(step.k, x.shape[1])
        # Stable: ties keep the lower index first, as torch.topk on CPU and `sorted` would.
        indices = np.argsort(-x if x.dtype.kind == "f" else -x.astype(np.float64), axis=1, kind="stable")[:, :k]
        return {"values": np.take_along_axis(x, indices, axis=1), "indices": indices.astype(np.int64)}
    if step.op == "normalize":
        norms = np.linalg.norm(x, axis=-1, keepdims=True)
        return {"output": (x / np.maximum(norms, np.finfo(x.dtype).tiny)).astype(x.dtype)}
    assert step.op == "concat"
    rows = {a.shape[0] for a in arrays}
    if len(rows) > 1:
        raise InvalidInput(f"{step.describe()}: its inputs have different numbers of rows {sorted(rows)}")
    return {"output": np.concatenate(arrays, axis=step.axis)}


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

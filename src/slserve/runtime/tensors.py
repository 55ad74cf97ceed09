"""Tensors at the edge of a runtime: OIP v2 datatypes <-> numpy, and checks against a function's signature.

Inputs are decoded once into numpy buffers here; everything after this point trusts their dtype and shape.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from slserve.errors import InvalidInput
from slserve.spec import Datatype, Signature, TensorSpec

NUMPY_OF: dict[Datatype, np.dtype[np.generic]] = {
    Datatype.BOOL: np.dtype(np.bool_),
    Datatype.UINT8: np.dtype(np.uint8),
    Datatype.UINT16: np.dtype(np.uint16),
    Datatype.UINT32: np.dtype(np.uint32),
    Datatype.UINT64: np.dtype(np.uint64),
    Datatype.INT8: np.dtype(np.int8),
    Datatype.INT16: np.dtype(np.int16),
    Datatype.INT32: np.dtype(np.int32),
    Datatype.INT64: np.dtype(np.int64),
    Datatype.FP16: np.dtype(np.float16),
    Datatype.FP32: np.dtype(np.float32),
    Datatype.FP64: np.dtype(np.float64),
    Datatype.BYTES: np.dtype(object),
}
DATATYPE_OF: dict[np.dtype[np.generic], Datatype] = {v: k for k, v in NUMPY_OF.items()}


def datatype_of(arr: np.ndarray) -> Datatype:
    if arr.dtype.kind in ("O", "S", "U"):
        return Datatype.BYTES
    dtype = arr.dtype.newbyteorder("=") if arr.dtype.byteorder == ">" else arr.dtype
    found = DATATYPE_OF.get(dtype)
    if found is None:
        raise InvalidInput(
            f"{arr.dtype} values have no Open Inference Protocol datatype; send one of "
            f"{', '.join(d.value for d in NUMPY_OF)}"
        )
    return found


def shape_matches(shape: Sequence[int], declared: Sequence[int]) -> bool:
    return len(shape) == len(declared) and all(d == -1 or d == s for s, d in zip(shape, declared, strict=True))


def as_bytes_array(values: np.ndarray | Sequence[object], name: str) -> np.ndarray:
    """BYTES tensors travel as numpy object arrays of `bytes`; text is accepted and encoded as UTF-8."""
    arr = np.asarray(values, dtype=object) if not isinstance(values, np.ndarray) else values
    if arr.dtype.kind == "S":
        arr = arr.astype(object)
    elif arr.dtype.kind == "U":
        arr = np.vectorize(lambda s: s.encode(), otypes=[object])(arr)
    elif arr.dtype != object:
        got = DATATYPE_OF.get(arr.dtype)
        raise InvalidInput(
            f"input {name!r}: datatype BYTES expects strings or bytes, got {got.value if got else arr.dtype} data"
        )
    flat = arr.reshape(-1)
    for i, v in enumerate(flat):
        if isinstance(v, str):
            flat[i] = v.encode()
        elif not isinstance(v, bytes | bytearray):
            raise InvalidInput(f"input {name!r}: element {i} is {type(v).__name__}, BYTES expects str or bytes")
    return arr


def check_tensor(spec: TensorSpec, arr: np.ndarray) -> np.ndarray:
    """Validate one input against its declared datatype and shape; returns it in the declared dtype."""
    if spec.datatype is Datatype.BYTES:
        arr = as_bytes_array(arr, spec.name)
    elif arr.dtype != NUMPY_OF[spec.datatype]:
        raise InvalidInput(
            f"input {spec.name!r}: datatype {datatype_of(arr).value} does not match the signature's "
            f"{spec.datatype.value}; send {spec.datatype.value}"
        )
    if not shape_matches(arr.shape, spec.shape):
        raise InvalidInput(
            f"input {spec.name!r}: shape {list(arr.shape)} does not match the signature's {spec.shape} (-1 = any size)"
        )
    if arr.shape[0] == 0:
        raise InvalidInput(f"input {spec.name!r} has no rows (shape {list(arr.shape)}); send at least one")
    return arr


def check_inputs(signature: Signature, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Every declared input present, none unknown, each of the right datatype and shape, one batch size."""
    specs = signature.inputs
    if len(inputs) != len(specs) or any(t.name not in inputs for t in specs):
        declared = {t.name for t in specs}
        unknown = sorted(set(inputs) - declared)
        if unknown:
            raise InvalidInput(f"unknown input(s) {unknown}; this function takes {sorted(declared)}")
        missing = sorted(declared - set(inputs))
        raise InvalidInput(f"missing input(s) {missing}; this function takes {sorted(declared)}")
    checked = {t.name: check_tensor(t, inputs[t.name]) for t in specs}
    if len(checked) > 1:
        batch_sizes = {name: arr.shape[0] for name, arr in checked.items()}
        if len(set(batch_sizes.values())) > 1:
            raise InvalidInput(f"inputs disagree on the batch size (first dimension): {batch_sizes}")
    return checked


def example_inputs(signature: Signature, batch: int = 1) -> dict[str, np.ndarray]:
    """A valid input for any signature (variable dims = 1): for warm-ups and smoke tests."""
    out: dict[str, np.ndarray] = {}
    for t in signature.inputs:
        shape = [batch, *(1 if d == -1 else d for d in t.shape[1:])]
        if t.datatype is Datatype.BYTES:
            out[t.name] = np.full(shape, b"slserve warm-up", dtype=object)
        else:
            out[t.name] = np.zeros(shape, dtype=NUMPY_OF[t.datatype])
    return out

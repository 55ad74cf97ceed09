"""The wire format between the gateway and its instances (and between front workers and the platform process):

    frame   = u32 body_length | body                          (slserve.framing)
    body    = u8 kind | u64 request_id | u32 meta_length | meta (JSON) | tensors
    tensors = u16 count | count x tensor
    tensor  = u16 name_length | name | u8 datatype | u8 ndim | ndim x i64 dims | u64 nbytes | raw bytes

Tensor bytes travel raw (little-endian, C order): never re-encoded as JSON inside the house. A BYTES tensor's
bytes are its elements each prefixed by a u32 length, the Open Inference Protocol's own binary layout, so the
gateway can pass binary request data through unchanged. Small per-message facts (requested outputs, timings,
errors) ride in the JSON meta.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any

import numpy as np
import orjson

from slserve.errors import InvalidInput
from slserve.framing import frame
from slserve.runtime.tensors import NUMPY_OF, datatype_of
from slserve.spec import Datatype

_HEAD = struct.Struct("<BQI")
_TENSOR_HEAD = struct.Struct("<BB")
_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")

MAX_FRAME = 1 << 31
DATATYPES = list(Datatype)
CODE_OF = {dt: i for i, dt in enumerate(DATATYPES)}
LITTLE_ENDIAN = {dt: np_dtype.newbyteorder("<") for dt, np_dtype in NUMPY_OF.items()}


class Kind(IntEnum):
    INFER = 1  # gateway -> instance: a request (meta: outputs, deadline, alone, options)
    RESULT = 2  # instance -> gateway: the request's outputs
    ERROR = 3  # instance -> gateway: the request failed (or, with id 0, the instance failed to start)
    READY = 4  # instance -> gateway: loaded and warmed up
    STOP = 5  # gateway -> instance: finish what you have, then exit
    CANCEL = 6  # gateway -> instance: nobody wants this request's answer; drop it if it has not started
    DROPPED = 7  # instance -> gateway: the request was not run (meta: reason, "cancelled" or "deadline")
    # between a front worker and the platform process (`platform.link`): INFER, RESULT, ERROR and CANCEL as above
    STATE = 8  # platform -> front: every function's status, the host, the routing (meta); front -> platform
    # (numbered): send it now, as the answer
    ADMIT = 9  # front -> platform: let a key's request in by its rate and concurrency (meta: the key's limits)
    ADMITTED = 10  # platform -> front: let in (or, with meta "error", refused)
    RELEASE = 11  # front -> platform: the admitted request is over
    TIMELINE = 12  # front -> platform: the requests it answered (meta "answered"); platform -> front: the
    # dashboard's view of the whole timeline, the answer to a numbered TIMELINE without them
    ROUTING = 13  # platform -> front: readiness, warm capacity and GPU per function, when they changed (meta)
    SHADOW = 14  # front -> platform: one shadow request's comparison with its primary (meta)


@dataclass
class Message:
    kind: Kind
    request_id: int = 0
    meta: dict[str, Any] = field(default_factory=dict)
    tensors: dict[str, np.ndarray] = field(default_factory=dict)


def encode_bytes_tensor(arr: np.ndarray) -> bytes:
    """BYTES elements as the protocol's binary layout: u32 length + bytes, for each element in C order."""
    parts: list[bytes] = []
    for v in arr.reshape(-1):
        b = v if isinstance(v, bytes) else bytes(v)
        parts.append(_U32.pack(len(b)))
        parts.append(b)
    return b"".join(parts)


def decode_bytes_tensor(buf: memoryview, shape: list[int], name: str) -> np.ndarray:
    count = math.prod(shape)
    if count * _U32.size > len(buf):  # checked before anything is allocated for the declared shape
        raise InvalidInput(
            f"input {name!r}: shape {shape} declares {count} BYTES elements, but {len(buf)} bytes of data hold "
            f"at most {len(buf) // _U32.size} (each element is a 4-byte length and its bytes)"
        )
    out = np.empty(count, dtype=object)
    pos, end = 0, len(buf)
    for i in range(count):
        if pos + 4 > end:
            raise InvalidInput(f"input {name!r}: BYTES data ends after {i} of {count} elements")
        (n,) = _U32.unpack_from(buf, pos)
        pos += 4
        if pos + n > end:
            raise InvalidInput(f"input {name!r}: BYTES element {i} claims {n} bytes, only {end - pos} remain")
        out[i] = bytes(buf[pos : pos + n])
        pos += n
    if pos != end:
        raise InvalidInput(f"input {name!r}: {end - pos} bytes left over after {count} BYTES elements")
    return out.reshape(shape)


def tensor_payload(arr: np.ndarray) -> bytes | memoryview:
    """The raw bytes of a tensor as the wire (and the protocol's binary extension) carries them."""
    if arr.dtype == object:
        return encode_bytes_tensor(arr)
    if arr.size == 0:
        return b""
    if not arr.flags.c_contiguous or arr.dtype.byteorder == ">":
        arr = np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder("<"))
    return memoryview(arr).cast("B")  # type: ignore[arg-type]


def tensor_from_payload(datatype: Datatype, shape: list[int], buf: memoryview, name: str) -> np.ndarray:
    """A tensor over `buf` (zero-copy for numeric types); checks the byte count against the shape."""
    if datatype is Datatype.BYTES:
        return decode_bytes_tensor(buf, shape, name)
    dtype = LITTLE_ENDIAN[datatype]
    expected = math.prod(shape) * dtype.itemsize
    if len(buf) != expected:
        raise InvalidInput(
            f"input {name!r}: {len(buf)} bytes of data for shape {shape} of {datatype.value} "
            f"(that needs {expected} bytes)"
        )
    return np.frombuffer(buf, dtype=dtype).reshape(shape)


_DIMS = [struct.Struct(f"<{n}q") for n in range(33)]


def encode(msg: Message) -> list[bytes | memoryview]:
    """The frame as a list of buffers for one scatter-gather write (tensor bytes are not copied)."""
    meta = orjson.dumps(msg.meta) if msg.meta else b""
    head = [_HEAD.pack(msg.kind, msg.request_id, len(meta)), meta, _U16.pack(len(msg.tensors))]
    parts: list[bytes | memoryview] = [b"", b"".join(head)]
    size = len(parts[1])
    for name, arr in msg.tensors.items():
        data = tensor_payload(arr)
        nbytes = len(data) if isinstance(data, bytes) else data.nbytes
        encoded_name = name.encode()
        tensor_head = b"".join(
            (
                _U16.pack(len(encoded_name)),
                encoded_name,
                _TENSOR_HEAD.pack(CODE_OF[datatype_of(arr)], arr.ndim),
                _DIMS[arr.ndim].pack(*arr.shape),
                _U64.pack(nbytes),
            )
        )
        parts += (tensor_head, data)
        size += len(tensor_head) + nbytes
    if size >= MAX_FRAME:
        raise InvalidInput(f"message of {size} bytes is over the {MAX_FRAME}-byte frame limit")
    parts[0] = frame(size)
    return parts


def decode(body: bytes | bytearray | memoryview) -> Message:
    """Parse one frame body (without its length prefix). Numeric tensors are views into `body`."""
    view = memoryview(body)
    kind, request_id, meta_len = _HEAD.unpack_from(view, 0)
    pos = _HEAD.size
    meta: dict[str, Any] = orjson.loads(view[pos : pos + meta_len]) if meta_len else {}
    pos += meta_len
    (count,) = _U16.unpack_from(view, pos)
    pos += 2
    tensors: dict[str, np.ndarray] = {}
    for _ in range(count):
        (name_len,) = _U16.unpack_from(view, pos)
        pos += 2
        name = bytes(view[pos : pos + name_len]).decode()
        pos += name_len
        code, ndim = _TENSOR_HEAD.unpack_from(view, pos)
        pos += _TENSOR_HEAD.size
        shape = list(_DIMS[ndim].unpack_from(view, pos))
        pos += 8 * ndim
        (nbytes,) = _U64.unpack_from(view, pos)
        pos += 8
        tensors[name] = tensor_from_payload(DATATYPES[code], shape, view[pos : pos + nbytes], name)
        pos += nbytes
    return Message(Kind(kind), request_id, meta, tensors)


def error_meta(status: int, code: str, message: str) -> Mapping[str, Any]:
    return {"status": status, "code": code, "message": message}

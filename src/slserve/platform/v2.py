"""The Open Inference Protocol v2 (KServe / Triton) on the wire: JSON tensors and the binary tensor extension.

The message is validated by its one schema (`protocols.v2`); its tensors go straight from the body into numpy
buffers (binary data is viewed in place, never copied) and are checked against the function's signature here, so
a malformed request never reaches an instance.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from slserve import tracing
from slserve.errors import InvalidInput, PayloadTooLarge
from slserve.platform.base import InferRequest, InferResult
from slserve.platform.wire import tensor_from_payload, tensor_payload
from slserve.protocols import parse
from slserve.protocols.v2 import InferRequestBody, InferResponseBody, RequestedOutput, RequestParameters
from slserve.runtime.tensors import NUMPY_OF, check_inputs, datatype_of
from slserve.spec import Datatype, NamedSpec

HEADER_LENGTH = "inference-header-content-length"
REQUEST_ID = "x-request-id"  # the gateway's id of the request, sent to the function that runs it and answered
CLIENT_TIMEOUT = "x-slserve-timeout-ms"  # the client stops waiting after this: no work is queued or started past it
_JSON_OPTS = orjson.OPT_SERIALIZE_NUMPY
NO_PARAMETERS = RequestParameters()  # frozen: one for every request that sends none


@dataclass
class V2Request:
    request: InferRequest
    id: str | None
    binary_outputs: set[str]  # outputs to return as binary data
    parameters: RequestParameters  # the request-level v2 parameters


def client_timeout_s(headers: dict[str, str]) -> float:
    """How long the client says it will wait (`x-slserve-timeout-ms`); infinity when it does not say."""
    declared = headers.get(CLIENT_TIMEOUT)
    if declared is None:
        return math.inf
    if not declared.isdigit() or int(declared) == 0:
        raise InvalidInput(f"{CLIENT_TIMEOUT} must be a positive whole number of milliseconds, got {declared!r}")
    return int(declared) / 1000


def _fail(message: str) -> InvalidInput:
    return InvalidInput(message)


@dataclass(frozen=True)
class RequestLimits:
    """What one request may declare, checked against each tensor's shape before its data is decoded."""

    max_elements: int  # all inputs together (the server's max_tensor_elements)
    max_rows: int  # the first (batch) dimension (the function's limits.max_rows)
    max_bytes_per_element: int = 1 << 62  # a BYTES element (the function's limits.max_bytes_per_element)

    def check(self, name: str, shape: list[int], elements_so_far: int) -> int:
        """The elements `shape` declares (413 past either limit). A zero dimension makes no shape free: the
        others are held to the limit too."""
        count = math.prod(shape)
        if elements_so_far + max(count, math.prod(d for d in shape if d)) > self.max_elements:
            raise PayloadTooLarge(
                f"input {name!r}: shape {shape} brings the request to {elements_so_far + count} tensor elements, "
                f"over the server's limit of {self.max_elements} (max_tensor_elements); split it into smaller requests"
            )
        if shape and shape[0] > self.max_rows:
            raise PayloadTooLarge(
                f"input {name!r} has {shape[0]} rows, over this function's limit of {self.max_rows} per request "
                "(limits.max_rows); split it into smaller requests"
            )
        return count

    def check_bytes(self, name: str, tensor: np.ndarray) -> np.ndarray:
        """A BYTES tensor's elements against the function's longest (413 naming the element)."""
        for i, element in enumerate(tensor.ravel()):
            if len(element) > self.max_bytes_per_element:
                raise PayloadTooLarge(
                    f"input {name!r}: element {i} is {len(element)} bytes, over this function's limit of "
                    f"{self.max_bytes_per_element} per element (limits.max_bytes_per_element); send shorter ones"
                )
        return tensor


def _json_tensor(data: Any, datatype: Datatype, shape: list[int], name: str) -> np.ndarray:
    count = math.prod(shape)
    if datatype is Datatype.BYTES:
        flat = _flatten(data, len(shape), name)
        if len(flat) != count:
            raise _fail(f"input {name!r}: {len(flat)} elements in data for shape {shape} ({count} expected)")
        out = np.empty(count, dtype=object)
        for i, v in enumerate(flat):
            if not isinstance(v, str):
                raise _fail(f"input {name!r}: element {i} is {type(v).__name__}; BYTES data in JSON are strings")
            out[i] = v.encode()
        return out.reshape(shape)
    leaf = _first_leaf(data)
    if leaf is not None and not isinstance(leaf, int | float):  # bool is an int
        # before numpy sees it: a list of strings would become a unicode array of 4 bytes per character
        raise _fail(
            f"input {name!r}: data must be {_expected(datatype)} for datatype {datatype.value}, got {leaf!r:.40}"
        )
    try:
        arr = np.asarray(data)
    except ValueError:
        raise _fail(f"input {name!r}: data is ragged (nested lists of unequal length)") from None
    target = NUMPY_OF[datatype]
    if arr.size != count:
        raise _fail(f"input {name!r}: {arr.size} elements in data for shape {shape} ({count} expected)")
    if arr.size and arr.dtype.kind not in "biuf":
        odd = next((v for v in _leaves(data) if not isinstance(v, int | float)), None)
        raise _fail(
            f"input {name!r}: data must be {_expected(datatype)} for datatype {datatype.value}, got {odd!r:.40} "
            "among them (strings go in a BYTES input)"
        )
    if target.kind in "iu" and arr.dtype.kind == "f":
        raise _fail(f"input {name!r}: datatype {datatype.value} needs integers, data has fractional numbers")
    if target.kind == "b" and arr.size and arr.dtype.kind != "b":
        raise _fail(f"input {name!r}: datatype BOOL needs true/false values")
    cast = arr.astype(target)
    if target.kind in "iu" and arr.size and not np.array_equal(cast, arr):
        raise _fail(f"input {name!r}: values out of range for {datatype.value}")
    return cast.reshape(shape)


def _leaves(data: Any) -> Iterator[Any]:
    """The elements of nested lists, in order."""
    if isinstance(data, list):
        for item in data:
            yield from _leaves(item)
    else:
        yield data


def _first_leaf(data: Any) -> Any:
    """The first element of nested lists (None when there is none)."""
    while isinstance(data, list):
        if not data:
            return None
        data = data[0]
    return data


def _expected(datatype: Datatype) -> str:
    return "true/false values" if datatype is Datatype.BOOL else "numbers"


def _flatten(data: Any, max_depth: int, name: str) -> list[Any]:
    """Nested lists -> their leaves in order. Data is flat or nested as its shape; deeper nesting is refused
    (without recursion, so no depth can exhaust the stack)."""
    if not isinstance(data, list):
        return [data]
    out: list[Any] = []
    stack = [iter(data)]
    while stack:
        for v in stack[-1]:
            if isinstance(v, list):
                if len(stack) >= max_depth:
                    raise _fail(f"input {name!r}: data is nested deeper than its shape's {max_depth} dimension(s)")
                stack.append(iter(v))
                break
            out.append(v)
        else:
            stack.pop()
    return out


def split_body(body: bytes, header_length: str | None) -> tuple[bytes, memoryview]:
    """The JSON header (the whole body when no length is declared) and the binary tensors after it."""
    if header_length is None:
        return body, memoryview(body)[len(body) :]
    try:
        n = int(header_length)
    except ValueError:
        raise _fail(f"Inference-Header-Content-Length must be an integer, got {header_length!r}") from None
    if not 0 < n <= len(body):
        raise _fail(f"Inference-Header-Content-Length is {n} but the body has {len(body)} bytes")
    view = memoryview(body)
    return bytes(view[:n]), view[n:]


def parse_infer(fdef: NamedSpec, body: bytes, header_length: str | None, limits: RequestLimits) -> V2Request:
    header, binary = split_body(body, header_length)
    doc = parse(InferRequestBody, header)
    inputs: dict[str, np.ndarray] = {}
    offset = elements = 0
    for tensor in doc.inputs:
        name, datatype, shape = tensor.name, tensor.datatype, tensor.shape
        if name in inputs:
            raise _fail(f"input {name!r} appears twice")
        elements += limits.check(name, shape, elements)  # before anything is allocated for the shape
        size = tensor.parameters.binary_data_size if tensor.parameters else None
        if size is not None:
            if offset + size > len(binary):
                raise _fail(
                    f"input {name!r}: binary_data_size {size} runs past the end of the binary data "
                    f"({len(binary) - offset} bytes left); check Inference-Header-Content-Length"
                )
            inputs[name] = tensor_from_payload(datatype, shape, binary[offset : offset + size], name)
            offset += size
        elif tensor.data is not None:
            inputs[name] = _json_tensor(tensor.data, datatype, shape, name)
        else:
            raise _fail(f"input {name!r} has neither 'data' nor parameters.binary_data_size")
        if datatype is Datatype.BYTES:
            limits.check_bytes(name, inputs[name])
    if offset != len(binary):
        raise _fail(f"{len(binary) - offset} bytes of binary data are not claimed by any input's binary_data_size")
    checked = check_inputs(fdef.spec.signature, inputs)
    params = doc.parameters or NO_PARAMETERS
    outputs, binary_outputs = _requested_outputs(fdef, doc.outputs, params.binary_data_output)
    options = {"truncate": True} if params.truncate else {}
    return V2Request(InferRequest(fdef.name, checked, outputs, doc.id, options), doc.id, binary_outputs, params)


def _requested_outputs(
    fdef: NamedSpec, asked: list[RequestedOutput] | None, binary_all: bool
) -> tuple[list[str] | None, set[str]]:
    known = [t.name for t in fdef.spec.signature.outputs]
    if asked is None:
        return None, set(known) if binary_all else set()
    names: list[str] = []
    binary: set[str] = set()
    for out in asked:
        if out.name not in known:
            raise _fail(f"unknown output {out.name!r}; this function returns {known}")
        names.append(out.name)
        if binary_all or (out.parameters is not None and out.parameters.binary_data):
            binary.add(out.name)
    return names, binary


def encode_infer(
    result: InferResult, model: str, v2: V2Request, steps: list[dict[str, Any]] | None = None
) -> tuple[bytes, dict[str, str]]:
    """The response body and its content headers (JSON, or JSON header + binary tensors); a pipeline's `steps`
    go in the response's parameters."""
    outputs: list[dict[str, Any]] = []
    blobs: list[bytes | memoryview] = []
    for name, arr in result.outputs.items():
        datatype = datatype_of(arr)
        entry: dict[str, Any] = {"name": name, "datatype": datatype.value, "shape": list(arr.shape)}
        if name in v2.binary_outputs:
            data = tensor_payload(arr)
            entry["parameters"] = {"binary_data_size": len(data) if isinstance(data, bytes) else data.nbytes}
            blobs.append(data)
        elif datatype is Datatype.BYTES:
            entry["data"] = [bytes(v).decode("utf-8", errors="replace") for v in arr.reshape(-1)]
        elif datatype is Datatype.FP16:
            entry["data"] = arr.reshape(-1).astype(np.float32)
        else:
            entry["data"] = arr.reshape(-1)
        outputs.append(entry)
    doc: dict[str, Any] = {"model_name": model, "model_version": result.version, "outputs": outputs}
    if v2.id is not None:
        doc["id"] = v2.id
    if steps:
        doc["parameters"] = {"steps": steps}
    header = orjson.dumps(doc, option=_JSON_OPTS)
    if not blobs:
        return header, {"content-type": "application/json"}
    body = b"".join([header, *blobs])
    return body, {"content-type": "application/octet-stream", HEADER_LENGTH: str(len(header))}


def encode_request(request: InferRequest) -> tuple[bytes, dict[str, str]]:
    """A request as another v2 server takes it: every input as binary data (exact, no JSON numbers), every
    output asked for as binary; returns the body and its headers."""
    inputs: list[dict[str, Any]] = []
    blobs: list[bytes | memoryview] = []
    for name, arr in request.inputs.items():
        data = tensor_payload(arr)
        size = len(data) if isinstance(data, bytes) else data.nbytes
        entry = {"name": name, "datatype": datatype_of(arr).value, "shape": list(arr.shape)}
        inputs.append({**entry, "parameters": {"binary_data_size": size}})
        blobs.append(data)
    doc: dict[str, Any] = {"inputs": inputs, "parameters": {"binary_data_output": True, **request.options}}
    if request.outputs is not None:
        doc["outputs"] = [{"name": name, "parameters": {"binary_data": True}} for name in request.outputs]
    header = orjson.dumps(doc)
    headers = {"content-type": "application/octet-stream", HEADER_LENGTH: str(len(header))}
    if request.request_id is not None:
        headers[REQUEST_ID] = request.request_id
    headers.update(tracing.outgoing(request.trace))  # the call's span (traces on) or the client's context
    return b"".join([header, *blobs]), headers


def decode_outputs(body: bytes, header_length: str | None) -> dict[str, np.ndarray]:
    """The outputs of a v2 response (JSON data or binary), as numpy arrays."""
    header, binary = split_body(body, header_length)
    outputs: dict[str, np.ndarray] = {}
    offset = 0
    for out in parse(InferResponseBody, header).outputs:
        size = out.parameters.binary_data_size if out.parameters else None
        if size is not None:
            outputs[out.name] = tensor_from_payload(out.datatype, out.shape, binary[offset : offset + size], out.name)
            offset += size
        else:
            outputs[out.name] = _json_tensor(out.data or [], out.datatype, out.shape, out.name)
    return outputs

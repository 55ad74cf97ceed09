"""OpenAI-compatible embeddings: `POST /v1/embeddings` and `GET /v1/models`, for every model whose signature
is text -> embedding (one BYTES input, one FP32 output of shape [-1, dim]), so the official client works with
`base_url` pointed here. `model` is a model (`minilm`), `model:alias`, `model@version`, or a function's name.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass

import numpy as np
import orjson

from slserve.errors import InvalidInput, SlserveError
from slserve.platform.base import InferRequest
from slserve.platform.v2 import RequestLimits
from slserve.protocols import parse
from slserve.protocols.openai import EmbeddingsRequestBody
from slserve.spec import Datatype, NamedSpec

ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "invalid_request_error",
    413: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
}


@dataclass(frozen=True)
class EmbeddingsRequest:
    body: EmbeddingsRequestBody
    model: str  # the model named in the body's `model`
    selector: str | None  # and its version or alias


def embedding_io(fdef: NamedSpec) -> tuple[str, str] | None:
    """(input name, output name) when the function maps text to an embedding, else None."""
    sig = fdef.spec.signature
    if len(sig.inputs) != 1 or len(sig.outputs) != 1:
        return None
    tin, tout = sig.inputs[0], sig.outputs[0]
    if tin.datatype is not Datatype.BYTES or tout.datatype is not Datatype.FP32 or len(tout.shape) != 2:
        return None
    return tin.name, tout.name


def split_model(model: str) -> tuple[str, str | None]:
    """'minilm@1' / 'minilm:stable' / 'minilm' -> (model, version-or-alias)."""
    for sep in ("@", ":"):
        name, found, selector = model.partition(sep)
        if found:
            if not name or not selector:
                raise InvalidInput(f"model {model!r} must look like 'name', 'name:alias' or 'name@version'")
            return name, selector
    return model, None


def parse_embeddings(body: bytes) -> EmbeddingsRequest:
    doc = parse(EmbeddingsRequestBody, body)
    name, selector = split_model(doc.model)
    return EmbeddingsRequest(doc, name, selector)


def infer_request(fdef: NamedSpec, request: EmbeddingsRequest, request_id: str, max_elements: int) -> InferRequest:
    io = embedding_io(fdef)
    if io is None:
        raise InvalidInput(f"{fdef.spec.model.name} is not a text-embedding model; GET /v1/models lists those that are")
    body, dim = request.body, fdef.spec.signature.outputs[0].shape[1]
    if body.dimensions is not None and body.dimensions != dim:
        raise InvalidInput(f"'dimensions' must be {dim} for {fdef.spec.model.name} (or left out); it is fixed")
    limits = RequestLimits(max_elements, fdef.spec.limits.max_rows, fdef.spec.limits.max_bytes_per_element)
    limits.check("input", [len(body.input)], 0)
    texts = np.empty(len(body.input), dtype=object)
    texts[:] = [t.encode() for t in body.input]
    limits.check_bytes("input", texts)
    options = {"truncate": True} if body.truncate else {}
    return InferRequest(fdef.name, {io[0]: texts}, [io[1]], request_id, options)


def encode_embeddings(embeddings: np.ndarray, model: str, encoding: str, tokens: int | None) -> bytes:
    rows = np.ascontiguousarray(embeddings, dtype="<f4")
    if encoding == "base64":
        data = [
            {"object": "embedding", "index": i, "embedding": base64.b64encode(row.tobytes()).decode()}
            for i, row in enumerate(rows)
        ]
    else:
        data = [{"object": "embedding", "index": i, "embedding": row} for i, row in enumerate(rows)]
    usage = {"prompt_tokens": tokens or 0, "total_tokens": tokens or 0}
    doc = {"object": "list", "data": data, "model": model, "usage": usage}
    return orjson.dumps(doc, option=orjson.OPT_SERIALIZE_NUMPY)


def error_document(error: SlserveError) -> bytes:
    """OpenAI's error shape, which its client turns into typed exceptions."""
    kind = ERROR_TYPES.get(error.status, "api_error")
    return orjson.dumps({"error": {"message": error.message, "type": kind, "param": None, "code": error.code}})

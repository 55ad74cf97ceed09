"""One schema per protocol and one list of endpoints: what the gateway validates, routes and publishes are made
from the same definitions, and a refused body is told where it is wrong."""

from __future__ import annotations

import numpy as np
import orjson
import pytest

from slserve.errors import InvalidInput
from slserve.gateway.app import Gateway
from slserve.gateway.endpoints import ADMIN_PREFIX, ENDPOINTS, PUBLIC, front_endpoint
from slserve.gateway.front import Front
from slserve.gateway.openapi import openapi_document
from slserve.platform.base import InferRequest
from slserve.platform.v2 import encode_request
from slserve.protocols import parse
from slserve.protocols.openai import EmbeddingsRequestBody
from slserve.protocols.v2 import InferRequestBody

GOOD = {"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]}


def test_every_endpoint_is_published_answered_and_guarded_as_listed() -> None:
    document = openapi_document()
    published = {(path, method.upper()) for path, ops in document["paths"].items() for method in ops}
    assert published == {(e.path, e.method) for e in ENDPOINTS}
    for e in ENDPOINTS:
        assert callable(getattr(Front if e.front else Gateway, e.handler)), e
        assert (e.access == "admin") == e.path.startswith(ADMIN_PREFIX), e
        assert (e.path in PUBLIC) == (document["paths"][e.path][e.method.lower()].get("security") == [])
    assert front_endpoint("/v2/models/m/versions/2/infer") == (ENDPOINTS[1], {"model": "m", "version": "2"})
    assert front_endpoint("/v2/models/m/infer") == (ENDPOINTS[0], {"model": "m"})
    assert front_endpoint("/v2/models/m") is None and front_endpoint("/v2/models/a/b/infer") is None


@pytest.mark.parametrize(
    ("body", "said"),
    [
        (b'{"inputs": [', "the request's JSON is malformed: EOF while parsing a list"),
        (b"[1]", "the request body must be a JSON object (InferRequestBody in GET /openapi.json)"),
        ({"inputs": []}, "inputs must have at least 1 item (InferRequestBody"),
        ({"inputs": [{**GOOD, "shape": [1, -4]}]}, "inputs[0].shape[1]: should be greater than or equal to 0, got -4"),
        ({"inputs": [{**GOOD, "shape": ["1", 4]}]}, "inputs[0].shape[0]: should be a valid integer, got '1'"),
        (
            {"inputs": [{**GOOD, "datatype": "FLOAT"}]},
            "inputs[0].datatype: unknown datatype 'FLOAT'; use one of",
        ),
        ({"inputs": [GOOD], "parameters": {"truncate": 1}}, "parameters.truncate: should be a valid boolean, got 1"),
        ({"inputs": [{"shape": [1]}]}, "inputs[0].name is missing; inputs[0].datatype is missing"),
        ({"inputs": [{**GOOD, "shape": [1] * 40}]}, "inputs[0].shape has 40 items; at most 32"),
    ],
)
def test_a_refused_v2_body_is_told_where_it_is_wrong(body: object, said: str) -> None:
    with pytest.raises(InvalidInput) as refused:
        parse(InferRequestBody, body if isinstance(body, bytes) else orjson.dumps(body))
    assert said in refused.value.message


def test_unknown_fields_are_ignored_and_types_are_exact() -> None:
    """A client may send more than the protocol needs; it may not send "3" for 3 or 1 for true."""
    doc = parse(InferRequestBody, orjson.dumps({"inputs": [{**GOOD, "extra": 1}], "trace": "t"}))
    assert doc.inputs[0].shape == [1, 4]
    one = parse(EmbeddingsRequestBody, b'{"model": "m", "input": "a text", "user": "u"}')
    assert one.input == ["a text"] and one.encoding_format == "float"
    for bad in (b'{"model": "m", "input": [1, 2]}', b'{"model": "m", "input": "a", "dimensions": "384"}'):
        with pytest.raises(InvalidInput):
            parse(EmbeddingsRequestBody, bad)


def test_a_call_to_another_target_carries_the_gateways_request_id() -> None:
    """What the router sends Lambda or Modal names the request as the gateway's ledger and logs do."""
    request = InferRequest("f", {"x": np.zeros((1, 4), np.float32)}, request_id="ab" * 16)
    assert encode_request(request)[1]["x-request-id"] == "ab" * 16
    assert "x-request-id" not in encode_request(InferRequest("f", {"x": np.zeros((1, 4), np.float32)}))[1]

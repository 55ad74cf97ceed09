"""Hostile input gets a 4xx, and costs the gateway nothing it did not have to read: declared sizes are checked
against the body and the limits before anything is allocated, nesting cannot exhaust the stack. Properties
over generated inputs (hypothesis) and over the published OpenAPI document (schemathesis): never a 5xx, and
every answer as the document says."""

from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path
from typing import Any

import httpx
import schemathesis
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.specs.openapi.checks import positive_data_acceptance
from tests.integration.server import Server

from slserve.gateway.openapi import openapi_document

HEADER = "Inference-Header-Content-Length"


def gateway_peak_rss_mb(server: Server) -> float:
    """The gateway's peak resident memory so far (VmHWM): an allocation it made, even freed, shows here (with
    several front workers, their peaks together)."""
    peaks = [
        int(line.split()[1]) / 1024
        for pid in server.fronts()
        for line in Path(f"/proc/{pid}/status").read_text().splitlines()
        if line.startswith("VmHWM:")
    ]
    assert peaks, "no VmHWM"
    return sum(peaks)


def binary_request(path: str, server: Server, inputs: list[dict[str, Any]], data: bytes) -> httpx.Response:
    header = json.dumps({"inputs": inputs}).encode()
    headers = {**server.auth, HEADER: str(len(header)), "content-type": "application/octet-stream"}
    return httpx.post(server.url + path, content=header + data, headers=headers, timeout=30)


def nested(depth: int, leaf: Any) -> Any:
    for _ in range(depth):
        leaf = [leaf]
    return leaf


def test_deep_nesting_is_a_400(server: Server) -> None:
    for path, name, datatype, leaf in [
        ("/v2/models/words/infer", "text", "BYTES", '"a"'),
        ("/v2/models/hazards/infer", "x", "FP32", "1.0"),
    ]:
        data = "[" * 1000 + leaf + "]" * 1000
        body = f'{{"inputs": [{{"name": "{name}", "datatype": "{datatype}", "shape": [1], "data": {data}}}]}}'
        r = server.post(path, content=body.encode(), headers={"content-type": "application/json"})
        assert 400 <= r.status_code < 500, r.text
    shallow = {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": nested(5, "a")}]}
    r = server.post("/v2/models/words/infer", json=shallow)
    assert r.status_code == 400 and "nested deeper" in r.json()["error"], r.text


def test_declared_sizes_are_checked_before_anything_is_allocated(server: Server) -> None:
    server.post(
        "/v2/models/words/infer",
        json={"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": ["warm"]}]},
    )
    peak = gateway_peak_rss_mb(server)
    nine = struct.pack("<I", 5) + b"hello"[:5]
    for shape in ([200_000_000], [1_000_000_000_000], [2**64 - 1], [2**40, 2**40]):
        inputs = [{"name": "text", "datatype": "BYTES", "shape": shape, "parameters": {"binary_data_size": 9}}]
        r = binary_request("/v2/models/words/infer", server, inputs, nine)
        assert r.status_code == 413 and "max_tensor_elements" in r.json()["error"], r.text
    # Within the limits, but more elements than the bytes can hold: refused before the elements are made.
    inputs = [{"name": "text", "datatype": "BYTES", "shape": [30], "parameters": {"binary_data_size": 9}}]
    r = binary_request("/v2/models/words/infer", server, inputs, nine)
    assert r.status_code == 400 and "hold at most 2" in r.json()["error"], r.text
    assert gateway_peak_rss_mb(server) - peak < 50  # no allocation for what was declared


def test_rows_over_the_function_limit_are_refused_before_the_queue(server: Server) -> None:
    many = {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [33], "data": ["a"] * 33}]}
    r = server.post("/v2/models/words/infer", json=many)
    assert r.status_code == 413 and "limits.max_rows" in r.json()["error"] and "32" in r.json()["error"], r.text
    oa = server.post("/v1/embeddings", json={"model": "words", "input": ["a"] * 33})
    assert oa.status_code == 413 and "limits.max_rows" in oa.json()["error"]["message"], oa.text
    rows = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [65, 16], "data": [0.0] * 65 * 16}]}
    r = server.post("/v2/models/hazards/infer", json=rows)
    assert r.status_code == 413 and "64" in r.json()["error"], r.text
    assert server.status("words")["queued"] == 0


DIMS = st.lists(st.integers(0, 2**40) | st.integers(0, 40), min_size=0, max_size=4)
DATATYPES = st.sampled_from(["BYTES", "FP32", "INT64", "FP16", "BOOL", "UINT8"])


@settings(max_examples=120, deadline=None, suppress_health_check=list(HealthCheck))
@example(  # a zero dimension beside two huge ones: zero elements, but no array can have that shape
    path="/v2/models/words/infer", name="text", datatype="BYTES", shape=[0, 2**30, 2**30], data=b"",
    declared=0, header_length=None, depth=0,
)  # fmt: skip
@example(  # 200 M strings declared over 9 bytes
    path="/v2/models/words/infer", name="text", datatype="BYTES", shape=[200_000_000], data=b"\x05\0\0\0hello",
    declared=9, header_length=None, depth=0,
)  # fmt: skip
@example(  # nested far deeper than any shape
    path="/v2/models/words/infer", name="text", datatype="BYTES", shape=[1], data=b"", declared=None,
    header_length=None, depth=300,
)  # fmt: skip
@given(
    path=st.sampled_from(["/v2/models/words/infer", "/v2/models/hazards/infer"]),
    name=st.sampled_from(["text", "x"]),
    datatype=DATATYPES,
    shape=DIMS,
    data=st.binary(max_size=64),
    declared=st.integers(-4, 80) | st.none(),
    header_length=st.integers(-3, 400) | st.none(),
    depth=st.integers(0, 300),
)
def test_generated_binary_and_nested_requests_never_get_a_5xx(
    server: Server,
    path: str,
    name: str,
    datatype: str,
    shape: list[int],
    data: bytes,
    declared: int | None,
    header_length: int | None,
    depth: int,
) -> None:
    tensor: dict[str, Any] = {"name": name, "datatype": datatype, "shape": shape}
    if declared is None:
        tensor["data"] = nested(depth, "a" if datatype == "BYTES" else 1)
    else:
        tensor["parameters"] = {"binary_data_size": declared}
    header = json.dumps({"inputs": [tensor]}).encode()
    headers = {**server.auth, "content-type": "application/octet-stream"}
    if header_length is not None:
        headers[HEADER] = str(header_length if header_length > 0 else len(header))
    r = httpx.post(server.url + path, content=header + data, headers=headers, timeout=30)
    assert r.status_code < 500, (tensor, r.status_code, r.text)


SCHEMA = schemathesis.openapi.from_dict(openapi_document())
SCHEMA.config.generation.update(modes=[GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
# Every built-in check but one: a body the document allows can still be refused, since the document cannot know
# each model's signature (a 400 naming the mismatch is the right answer, not a nonconformance).
NOT_CHECKED = [positive_data_acceptance]


@SCHEMA.parametrize()
@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
def test_the_gateway_answers_as_its_document_says(case: Any, server: Server) -> None:
    """Requests the document allows and requests it forbids (schemathesis's positive and negative modes): the
    forbidden are refused with a 4xx, and every answer's status, content type, headers and body are the ones the
    document publishes for it; never a 5xx."""
    if case.path_parameters and "model" in case.path_parameters:
        # crc32, not hash(): the same case picks the same model in every process (hash() is salted per process)
        case.path_parameters["model"] = "words" if zlib.crc32(str(case.body).encode()) % 2 else "hazards"
    case.call_and_validate(base_url=server.url, headers=server.auth, timeout=30, excluded_checks=NOT_CHECKED)

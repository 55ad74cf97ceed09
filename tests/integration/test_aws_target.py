"""One gateway, two targets: a function whose `target` is `aws` is served by a Lambda function through the
Invoke API (boto3, over HTTP), here an Invoke API peer in front of the real handler under the runtime client."""

from __future__ import annotations

import os
from collections.abc import Iterator

import numpy as np
import pytest
from tests.conftest import FUNCTIONS, write_function
from tests.integration.lambda_peer import InvokeAPI, start_environment
from tests.integration.server import Server, start_server

from slserve.build.function import build_function
from slserve.snapshot import ArtifactStore
from slserve.spec import load_function

BODY = {"inputs": [{"name": "features", "datatype": "FP32", "shape": [2, 4], "data": [0.1, 0.2, 0.3, 0.4] * 2}]}


@pytest.fixture(scope="module")
def gateway(
    build_sample, sample_store: ArtifactStore, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Server, InvokeAPI]]:  # type: ignore[no-untyped-def]
    root = tmp_path_factory.mktemp("aws-target")
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
    classifier = (FUNCTIONS / "classifier" / "function.toml").read_text()
    functions = root / "functions"
    write_function(functions, "classifier", classifier)
    for name in ("remote-classifier", "ghost"):  # rows uncapped: Lambda's payload limit is what refuses
        write_function(functions, name, 'target = "aws"\n' + classifier + "\n[limits]\nmax_rows = 1000000\n")
    for name in ("classifier", "remote-classifier", "ghost"):
        build_function(load_function(functions / name), sample_store)
    env = start_environment(
        "slserve.aws.handler.handler",
        {"SLSERVE_ARTIFACTS": str(sample_store.root), "SLSERVE_FUNCTION": "remote-classifier"},
        root / "lambda.log",
    )
    invoke = InvokeAPI({"slserve-remote-classifier": env}).start()
    srv = start_server(
        functions, sample_store.root, root / "serve.log", aws_endpoint_url=invoke.url, aws_region="us-east-1"
    )
    yield srv, invoke
    srv.stop()
    invoke.stop()
    env.stop()


def test_an_aws_function_answers_as_the_local_one_and_is_billed(gateway: tuple[Server, InvokeAPI]) -> None:
    server, invoke = gateway
    local = server.post("/v2/models/classifier/infer", json=BODY)
    remote = server.post("/v2/models/remote-classifier/infer", json=BODY)
    assert local.status_code == remote.status_code == 200, remote.text
    assert remote.headers["x-slserve-function"] == "remote-classifier"
    for a, b in zip(local.json()["outputs"], remote.json()["outputs"], strict=True):
        assert a["name"] == b["name"] and np.array_equal(np.asarray(a["data"]), np.asarray(b["data"]))
    assert ("slserve-remote-classifier", "live") in invoke.calls  # through the alias
    assert "x-slserve-cold-start-ms" in remote.headers  # the environment's init, reported on its first call
    again = server.post("/v2/models/remote-classifier/infer", json=BODY)
    assert "x-slserve-cold-start-ms" not in again.headers and int(again.headers["x-slserve-cost"]) > 0
    status = server.status("remote-classifier")
    assert status["target"] == "aws" and status["served"] == 2 and status["cold_starts"] == 1


def test_lambdas_refusals_are_the_gateways_own_errors(gateway: tuple[Server, InvokeAPI]) -> None:
    server, invoke = gateway
    invoke.throttled.add("slserve-remote-classifier")
    try:
        r = server.post("/v2/models/remote-classifier/infer", json=BODY)
        assert r.status_code == 429 and "throttling" in r.json()["error"] and r.headers["retry-after"]
    finally:
        invoke.throttled.discard("slserve-remote-classifier")
    r = server.post("/v2/models/ghost/infer", json=BODY)
    assert r.status_code == 503 and "does not exist on Lambda" in r.json()["error"], r.text
    bad = {"inputs": [{"name": "features", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3]}]}
    r = server.post("/v2/models/remote-classifier/infer", json=bad)
    assert r.status_code == 400  # checked at the gateway, never sent
    assert server.post("/v2/models/remote-classifier/infer", json=BODY).status_code == 200


def test_a_call_over_lambdas_payload_limit_is_refused_before_it_is_sent(gateway: tuple[Server, InvokeAPI]) -> None:
    server, invoke = gateway
    rows = 300_000  # 4.8 MB of FP32, 6.4 MB once base64 is in the invoke payload: over Lambda's 6 MB
    features = np.random.default_rng(0).random((rows, 4), dtype=np.float32).tobytes()
    header = b'{"inputs":[{"name":"features","datatype":"FP32","shape":[%d,4],"parameters":{"binary_data_size":%d}}]}'
    head = header % (rows, len(features))
    calls = len(invoke.calls)
    r = server.post(
        "/v2/models/remote-classifier/infer",
        content=head + features,
        headers={"inference-header-content-length": str(len(head)), "content-type": "application/octet-stream"},
    )
    assert r.status_code == 413 and "Lambda's 6291456-byte limit" in r.json()["error"], r.text
    assert len(invoke.calls) == calls  # never sent
    assert server.post("/v2/models/remote-classifier/infer", json=BODY).status_code == 200

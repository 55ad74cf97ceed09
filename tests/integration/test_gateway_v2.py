"""The Open Inference Protocol v2 against a real `slserve serve` with every sample function."""

from __future__ import annotations

import shutil
import struct
from collections.abc import Iterator

import numpy as np
import orjson
import pytest
from tests.conformance import conforms
from tests.conftest import FUNCTIONS
from tests.integration.server import Server, start_server
from tests.integration.test_platform import wait_for

from slserve.runtime import load_runtime

SAMPLES = ["minilm-torch", "minilm-onnx", "minilm-fp16", "classifier", "big-mlp"]
TEXTS = ["A man is eating food.", "The new movie is awesome", "Der Himmel ist blau."]


@pytest.fixture(scope="module")
def server(build_sample, sample_store, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:  # type: ignore[no-untyped-def]
    functions = tmp_path_factory.mktemp("functions")
    for name in SAMPLES:
        build_sample(name)
        shutil.copytree(FUNCTIONS / name, functions / name)
    srv = start_server(functions, sample_store.root, functions.parent / "serve.log", max_body_mb="1")
    yield srv
    srv.stop()
    log = srv.log.read_text()
    assert "Application shutdown complete" in log and "Traceback" not in log, log


def text_request(texts: list[str], **extra: object) -> dict[str, object]:
    return {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [len(texts)], "data": texts}], **extra}


def fp32_request(name: str, arr: np.ndarray, **extra: object) -> dict[str, object]:
    tensor = {"name": name, "datatype": "FP32", "shape": list(arr.shape), "data": arr.reshape(-1).tolist()}
    return {"inputs": [tensor], **extra}


def output(body: dict[str, object], name: str) -> np.ndarray:
    for out in body["outputs"]:  # type: ignore[attr-defined]
        if out["name"] == name:
            dtype = {"FP32": np.float32, "INT64": np.int64}[out["datatype"]]
            return np.asarray(out["data"], dtype=dtype).reshape(out["shape"])
    raise AssertionError(f"no output {name}")


def test_health_and_metadata(server: Server) -> None:
    assert conforms(server.get("/v2/health/live")).json() == {"live": True}
    assert conforms(server.get("/v2/health/ready")).status_code == 200
    meta = conforms(server.get("/v2")).json()
    assert meta["name"] == "slserve" and "binary_tensor_data" in meta["extensions"]
    conforms(server.get("/v2/models"))
    model = conforms(server.get("/v2/models/classifier")).json()
    assert model["price"]["tier"]
    assert model["name"] == "classifier" and model["versions"] == ["1"] and model["platform"] == "onnxruntime_onnx"
    assert model["inputs"] == [{"name": "features", "datatype": "FP32", "shape": [-1, 4]}]
    assert conforms(server.get("/v2/models/classifier/versions/1")).json() == model
    assert conforms(server.get("/v2/models/minilm/ready")).json() == {"name": "minilm", "ready": True}
    conforms(server.get("/v1/models"))
    conforms(server.get("/v1/usage"))
    conforms(server.get("/v2/models/nope"))
    openapi = server.get("/openapi.json").json()
    assert "/v2/models/{model}/versions/{version}/infer" in openapi["paths"]
    assert "InferRequestBody" in openapi["components"]["schemas"]


@pytest.mark.parametrize("name", ["minilm-torch", "minilm-onnx"])
def test_minilm_embeddings_match_the_in_process_runtime(server: Server, build_sample, name: str) -> None:  # type: ignore[no-untyped-def]
    r = server.post(f"/v2/models/{name}/infer", json=text_request(TEXTS, id="req-1"))
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model_name"] == name and body["model_version"] == "1" and body["id"] == "req-1"
    got = output(body, "embedding")
    expected = load_runtime(build_sample(name)).infer({"text": np.array([t.encode() for t in TEXTS], dtype=object)})
    np.testing.assert_allclose(got, expected["embedding"], atol=1e-5)
    assert r.headers["x-slserve-function"] == name
    assert r.headers["x-slserve-version"] == "1"
    assert r.headers["x-slserve-instance"].startswith(f"{name}-")


def test_the_premium_tier_is_the_kept_warm_fp16_function(server: Server) -> None:
    # min_instances = 1: the instance starts with the server, before any premium request
    assert wait_for(lambda: [i["state"] for i in server.status("minilm-fp16")["instances"]] == ["idle"], 120)
    premium = server.post("/v2/models/minilm/infer", json=text_request(TEXTS), headers={"x-slserve-tier": "premium"})
    assert premium.status_code == 200, premium.text
    assert premium.headers["x-slserve-function"] == "minilm-fp16"
    assert "x-slserve-cold-start-ms" not in premium.headers  # nobody waited for a start
    standard = server.post("/v2/models/minilm/infer", json=text_request(TEXTS), headers={"x-slserve-tier": "standard"})
    assert standard.headers["x-slserve-function"] in ("minilm-torch", "minilm-onnx")
    a, b = output(premium.json(), "embedding"), output(standard.json(), "embedding")
    assert ((a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))).min() > 0.9999
    [instance] = server.status("minilm-fp16")["instances"]
    on_cpu = "names a GPU (L4) but this host has none: it runs on the CPU"
    assert (on_cpu in server.log.read_text()) == (instance["device"] == "cpu")  # said where it is true, only there
    if instance["device"] == "cpu":  # the tier served below its promise: said, and billed as the tier below
        assert premium.headers["x-slserve-tier"] == "standard"
        assert premium.headers["x-slserve-degraded"] == (
            "premium promises a L4 GPU; served on the CPU, billed as standard"
        )
        assert premium.headers["x-slserve-cost"] == standard.headers["x-slserve-cost"]  # same texts, same weight
    else:
        assert premium.headers["x-slserve-tier"] == "premium" and "x-slserve-degraded" not in premium.headers
        assert int(premium.headers["x-slserve-cost"]) > int(standard.headers["x-slserve-cost"])
    assert "x-slserve-degraded" not in standard.headers


def test_classifier_and_requested_outputs(server: Server) -> None:
    x = np.array([[0.1, 0.2, 0.3, 0.4], [2.0, -1.0, 0.5, 0.0]], dtype=np.float32)
    body = conforms(server.post("/v2/models/classifier/infer", json=fp32_request("features", x, id="r-1"))).json()
    probs, label = output(body, "probabilities"), output(body, "label")
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)
    assert (label == probs.argmax(axis=1)).all()
    only = server.post("/v2/models/classifier/infer", json=fp32_request("features", x, outputs=[{"name": "label"}]))
    assert [o["name"] for o in only.json()["outputs"]] == ["label"]


def test_big_mlp_nested_data(server: Server) -> None:
    x = np.linspace(-1, 1, 2048, dtype=np.float32).reshape(2, 1024)
    req = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [2, 1024], "data": x.tolist()}]}
    r = server.post("/v2/models/big-mlp/infer", json=req)
    assert r.status_code == 200, r.text
    assert output(r.json(), "y").shape == (2, 1024)


def binary_request(inputs: dict[str, tuple[str, np.ndarray]], binary_output: bool) -> tuple[bytes, dict[str, str]]:
    """A v2 request with every input as binary tensor data, encoded by hand to the extension's layout."""
    tensors, blobs = [], []
    for name, (datatype, arr) in inputs.items():
        if datatype == "BYTES":
            blob = b"".join(struct.pack("<I", len(v)) + v for v in arr.reshape(-1))
        else:
            blob = arr.tobytes()
        tensors.append(
            {
                "name": name,
                "datatype": datatype,
                "shape": list(arr.shape),
                "parameters": {"binary_data_size": len(blob)},
            }
        )
        blobs.append(blob)
    header = orjson.dumps({"inputs": tensors, "parameters": {"binary_data_output": binary_output}})
    headers = {"Inference-Header-Content-Length": str(len(header)), "Content-Type": "application/octet-stream"}
    return header + b"".join(blobs), headers


def binary_outputs(r: object) -> dict[str, np.ndarray]:
    n = int(r.headers["inference-header-content-length"])  # type: ignore[attr-defined]
    content: bytes = r.content  # type: ignore[attr-defined]
    header, pos, out = orjson.loads(content[:n]), n, {}
    for o in header["outputs"]:
        size = o["parameters"]["binary_data_size"]
        dtype = {"FP32": np.float32, "INT64": np.int64}[o["datatype"]]
        out[o["name"]] = np.frombuffer(content[pos : pos + size], dtype=dtype).reshape(o["shape"])
        pos += size
    assert pos == len(content)
    return out


def sample_input(name: str) -> tuple[str, str, np.ndarray]:
    rng = np.random.default_rng(len(name))
    if name.startswith("minilm"):
        return "text", "BYTES", np.array([t.encode() for t in TEXTS], dtype=object)
    width = {"classifier": 4, "big-mlp": 1024}[name]
    return ("features" if name == "classifier" else "x"), "FP32", rng.standard_normal((3, width)).astype(np.float32)


def json_request(tensor: str, datatype: str, arr: np.ndarray) -> dict[str, object]:
    data = [v.decode() for v in arr.reshape(-1)] if datatype == "BYTES" else arr.reshape(-1).tolist()
    return {"inputs": [{"name": tensor, "datatype": datatype, "shape": list(arr.shape), "data": data}]}


@pytest.mark.parametrize("name", SAMPLES)
def test_binary_tensors_equal_json_tensors_bit_for_bit(server: Server, name: str) -> None:
    tensor, datatype, arr = sample_input(name)
    as_json = server.post(f"/v2/models/{name}/infer", json=json_request(tensor, datatype, arr))
    assert as_json.status_code == 200, as_json.text
    body, headers = binary_request({tensor: (datatype, arr)}, binary_output=True)
    r = server.post(f"/v2/models/{name}/infer", content=body, headers=headers)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/octet-stream"
    binary = binary_outputs(r)
    for out in as_json.json()["outputs"]:
        assert np.array_equal(binary[out["name"]], output(as_json.json(), out["name"]))
    # binary inputs with JSON outputs
    body, headers = binary_request({tensor: (datatype, arr)}, binary_output=False)
    mixed = server.post(f"/v2/models/{name}/infer", content=body, headers=headers)
    assert mixed.status_code == 200 and mixed.headers["content-type"] == "application/json"
    assert mixed.json()["outputs"] == as_json.json()["outputs"]


def test_tritonclient_works_unchanged(server: Server) -> None:
    import tritonclient.http as triton

    client = triton.InferenceServerClient(server.url.removeprefix("http://"))
    assert client.is_server_live() and client.is_model_ready("classifier", headers=server.auth)
    x = np.random.default_rng(2).standard_normal((3, 4)).astype(np.float32)
    inp = triton.InferInput("features", list(x.shape), "FP32")
    inp.set_data_from_numpy(x, binary_data=True)
    outs = [triton.InferRequestedOutput("probabilities", binary_data=True), triton.InferRequestedOutput("label")]
    result = client.infer("classifier", [inp], outputs=outs, request_id="t-1", headers=server.auth)
    probs, label = result.as_numpy("probabilities"), result.as_numpy("label")
    assert probs.shape == (3, 3) and (label == probs.argmax(axis=1)).all()

    text = triton.InferInput("text", [2], "BYTES")
    text.set_data_from_numpy(np.array([b"hello world", b"goodbye"], dtype=object), binary_data=True)
    embedding = client.infer("minilm", [text], headers=server.auth).as_numpy("embedding")
    assert embedding.shape == (2, 384)
    np.testing.assert_allclose(np.linalg.norm(embedding, axis=1), 1.0, rtol=1e-5)


GOOD_CLASSIFIER = {"inputs": [{"name": "features", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]}]}


def _with(**changes: object) -> dict[str, object]:
    tensor = {**GOOD_CLASSIFIER["inputs"][0], **changes}  # type: ignore[index]
    return {"inputs": [tensor]}


BAD_REQUESTS = [
    ("/v2/models/nope/infer", orjson.dumps(GOOD_CLASSIFIER), {}, 404, "unknown model 'nope'"),
    ("/v2/models/classifier/versions/7/infer", orjson.dumps(GOOD_CLASSIFIER), {}, 404, "no version or alias '7'"),
    ("/v2/models/classifier/infer", orjson.dumps(_with(datatype="FP64")), {}, 400, "does not match the signature"),
    ("/v2/models/classifier/infer", orjson.dumps(_with(datatype="FLOAT")), {}, 400, "unknown datatype"),
    ("/v2/models/classifier/infer", orjson.dumps(_with(shape=[1, 5], data=[1] * 5)), {}, 400, "shape [1, 5]"),
    ("/v2/models/classifier/infer", orjson.dumps(_with(shape=[1, 4], data=[1, 2])), {}, 400, "2 elements"),
    ("/v2/models/classifier/infer", orjson.dumps(_with(name="feats")), {}, 400, "unknown input(s) ['feats']"),
    ("/v2/models/classifier/infer", orjson.dumps(_with(data=["a", "b", "c", "d"])), {}, 400, "must be numbers"),
    ("/v2/models/classifier/infer", orjson.dumps({"inputs": []}), {}, 400, "inputs must have at least 1 item"),
    ("/v2/models/classifier/infer", b'{"inputs": [', {}, 400, "malformed"),
    ("/v2/models/classifier/infer", b"[1, 2]", {}, 400, "JSON object"),
    (
        "/v2/models/classifier/infer",
        orjson.dumps({**GOOD_CLASSIFIER, "outputs": [{"name": "logits"}]}),
        {},
        400,
        "unknown output 'logits'",
    ),
    ("/v2/models/minilm/infer", orjson.dumps(text_request(["hi"])).replace(b'"BYTES"', b'"INT64"'), {}, 400, "numbers"),
    ("/v2/models/classifier/infer", orjson.dumps(_with(datatype="INT64", data=[1.5, 2, 3, 4])), {}, 400, "integers"),
    (
        "/v2/models/classifier/infer",
        orjson.dumps(_with(parameters={"binary_data_size": 16}, data=None)),
        {"Inference-Header-Content-Length": "100000"},
        400,
        "Inference-Header-Content-Length is 100000",
    ),
    (
        "/v2/models/classifier/infer",
        orjson.dumps(_with(parameters={"binary_data_size": 16})) + b"\0" * 8,
        {"Inference-Header-Content-Length": str(len(orjson.dumps(_with(parameters={"binary_data_size": 16}))))},
        400,
        "runs past the end",
    ),
    (
        "/v2/models/classifier/infer",
        orjson.dumps(_with(parameters={"binary_data_size": 8})) + b"\0" * 16,
        {"Inference-Header-Content-Length": str(len(orjson.dumps(_with(parameters={"binary_data_size": 8}))))},
        400,
        "8 bytes of data for shape [1, 4]",
    ),
    (
        "/v2/models/classifier/infer",
        orjson.dumps(_with(parameters={"binary_data_size": 16})) + b"\0" * 20,
        {"Inference-Header-Content-Length": str(len(orjson.dumps(_with(parameters={"binary_data_size": 16}))))},
        400,
        "4 bytes of binary data are not claimed",
    ),
    (
        "/v2/models/classifier/infer",
        orjson.dumps(GOOD_CLASSIFIER),
        {"Inference-Header-Content-Length": "x"},
        400,
        "must be an integer",
    ),
    ("/v2/models/classifier/infer", b"x" * (2 * 1024 * 1024), {}, 413, "-byte limit (the largest valid request to"),
    ("/v2/nowhere", b"", {}, 404, "no route /v2/nowhere"),
]


@pytest.mark.parametrize(("path", "body", "headers", "status", "message"), BAD_REQUESTS)
def test_bad_requests_get_a_clear_4xx_and_the_server_keeps_serving(
    server: Server, path: str, body: bytes, headers: dict[str, str], status: int, message: str
) -> None:
    r = server.post(path, content=body, headers={"Content-Type": "application/json", **headers})
    assert r.status_code == status, r.text
    assert message in r.json()["error"]
    ok = server.post("/v2/models/classifier/infer", json=GOOD_CLASSIFIER)
    assert ok.status_code == 200


def test_get_on_infer_is_405(server: Server) -> None:
    r = server.get("/v2/models/classifier/infer")
    assert r.status_code == 405 and "GET" in r.json()["error"]

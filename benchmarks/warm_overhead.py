"""Warm overhead at concurrency 1: end-to-end latency minus the instance's own model call, against a bare echo
endpoint on the same server stack, in the same run. Run: `make bench`.

The model call is what the instance measured for that very request (`x-slserve-compute-ms`: preprocessing and
the model call), so overhead = gateway decode + routing + unix-socket hop + framing + encode + HTTP. The client
(aiohttp, one keep-alive connection, sequential) is the same for both servers, so its own cost is in both.
Beside the echo, two floors on the same server: the same echo through one process hop (`/hop` in echo_app.py),
the floor for any gateway whose instances are processes; and the protocol's floor (`/v2hop/{model}`): the
same v2 request parsed, sent to a process as a wire frame, answered with zeros of the declared outputs (no
model) and encoded, with slserve's own code and none of the platform (no key, route, limits, pool, batching).
The floor's process keeps its core busy as long as the model call took in the same block (its median), and its
overhead is counted the same way (latency minus that time), so both pay the same wake-up after a long call.
What the gateway adds beyond the protocol floor is the platform's per-request work.

    python benchmarks/warm_overhead.py [--requests 2000]
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

from harness import OUT, Gateway, free_port, gateway, machine, make_functions, pct, save, wait_ready

FUNCTIONS = {"classifier": ("classifier", {}), "minilm": ("minilm-torch", {})}
BODIES = {
    "classifier": {"inputs": [{"name": "features", "datatype": "FP32", "shape": [1, 4], "data": [0.1, 0.2, 0.3, 0.4]}]},
    "minilm": {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": ["The quick brown fox."]}]},
}


async def sequential(
    url: str, body: bytes, n: int, headers: dict[str, str] | None = None
) -> tuple[list[float], list[float]]:
    latencies, computes = [], []
    async with aiohttp.ClientSession(headers={"content-type": "application/json", **(headers or {})}) as session:
        for i in range(n + 100):
            start = time.perf_counter()
            async with session.post(url, data=body) as r:
                await r.read()
                assert r.status == 200, r.status
                compute = float(r.headers.get("x-slserve-compute-ms", 0.0))
            if i >= 100:  # the first 100 warm up connections, caches and the instance
                latencies.append((time.perf_counter() - start) * 1000)
                computes.append(compute)
    return latencies, computes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=2000)
    args = parser.parse_args()
    functions = make_functions(OUT / "functions-warm", FUNCTIONS)
    port = free_port()
    echo = subprocess.Popen([sys.executable, str(Path(__file__).with_name("echo_app.py")), str(port)])
    results: dict[str, dict[str, float]] = {}
    try:
        wait_ready(f"http://127.0.0.1:{port}/ready", echo)
        for metering in (False, True):
            with gateway(functions, metering=metering) as gw:
                measure(gw, port, args.requests, results, "metering on" if metering else "metering off")
    finally:
        echo.terminate()
        echo.wait()
    save("warm_overhead", results)
    print(f"\nMachine: {machine()}. {args.requests} requests per function, concurrency 1.\n")
    print(
        "| function | ledger | e2e p50 / p99 (ms) | model call p50 (ms) | **overhead** p50 / p99 (ms) "
        "| bare echo p50 / p99 (ms) | overhead / echo (p50, p99) | echo + one hop p50 / p99 (ms) | hop / echo (p50) "
        "| protocol floor overhead p50 / p99 (ms) | floor / echo (p50) | overhead / floor (p50) |"
    )
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for key, r in results.items():
        name, ledger = key.split(" / ")
        print(
            f"| {name} | {ledger} | {r['e2e_p50']:.2f} / {r['e2e_p99']:.2f} | {r['model_p50']:.2f} | "
            f"**{r['overhead_p50']:.2f}** / {r['overhead_p99']:.2f} | {r['echo_p50']:.2f} / {r['echo_p99']:.2f} | "
            f"**{r['overhead_p50'] / r['echo_p50']:.2f}x**, {r['overhead_p99'] / r['echo_p99']:.2f}x | "
            f"{r['hop_p50']:.2f} / {r['hop_p99']:.2f} | {r['hop_p50'] / r['echo_p50']:.2f}x | "
            f"{r['floor_p50']:.2f} / {r['floor_p99']:.2f} | {r['floor_p50'] / r['echo_p50']:.2f}x | "
            f"{r['overhead_p50'] / r['floor_p50']:.2f}x |"
        )


def measure(gw: Gateway, port: int, requests: int, results: dict[str, dict[str, float]], label: str) -> None:
    """Echo and model interleaved in blocks, so drift hits both alike. Metering off is the platform's own
    overhead; metering on adds the durable ledger write (an fsync) before every response."""
    for name, body in BODIES.items():
        raw = orjson.dumps(body)
        lat, comp, echo_lat, hop_lat, floor_lat = [], [], [], [], []
        for _ in range(4):
            e, _ = asyncio.run(sequential(f"http://127.0.0.1:{port}/echo", raw, requests // 4))
            h, _ = asyncio.run(sequential(f"http://127.0.0.1:{port}/hop", raw, requests // 4))
            m, c = asyncio.run(sequential(f"{gw.url}/v2/models/{name}/infer", raw, requests // 4, gw.auth))
            floor_url = f"http://127.0.0.1:{port}/v2hop/{name}?wait_ms={pct(c, 50):.3f}"
            f, slept = asyncio.run(sequential(floor_url, raw, requests // 4))
            echo_lat += e
            hop_lat += h
            floor_lat += [e2e - s for e2e, s in zip(f, slept, strict=True)]
            lat += m
            comp += c
        overhead = [m - c for m, c in zip(lat, comp, strict=True)]
        results[f"{name} / {label}"] = {
            "e2e_p50": pct(lat, 50),
            "e2e_p99": pct(lat, 99),
            "model_p50": pct(comp, 50),
            "overhead_p50": pct(overhead, 50),
            "overhead_p99": pct(overhead, 99),
            "echo_p50": pct(echo_lat, 50),
            "echo_p99": pct(echo_lat, 99),
            "hop_p50": pct(hop_lat, 50),
            "hop_p99": pct(hop_lat, 99),
            "floor_p50": pct(floor_lat, 50),
            "floor_p99": pct(floor_lat, 99),
        }


if __name__ == "__main__":
    main()

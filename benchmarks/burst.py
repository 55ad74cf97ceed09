"""Burst: after scale-to-zero, N requests at once (default 256) to minilm; every one must succeed.

The client is asyncio + aiohttp with one connection per request (all opened at once), so the burst arrives
within a few milliseconds. Run: `make bench`.

    python benchmarks/burst.py [--requests 256] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

import aiohttp
import orjson

from harness import OUT, gateway, machine, make_functions, pct, save

FUNCTIONS = {
    "minilm": ("minilm-torch", {"scaling": {"idle_seconds": 1}}),
    "classifier": ("classifier", {"scaling": {"idle_seconds": 1}}),
}
BODIES = {
    "minilm": {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": ["The quick brown fox."]}]},
    "classifier": {"inputs": [{"name": "features", "datatype": "FP32", "shape": [1, 4], "data": [0.1, 0.2, 0.3, 0.4]}]},
}


async def burst(url: str, body: bytes, n: int, auth: dict[str, str]) -> tuple[list[float], list[int], list[str]]:
    connector = aiohttp.TCPConnector(limit=n)
    headers = {"content-type": "application/json", **auth}
    async with aiohttp.ClientSession(connector=connector, headers=headers) as session:

        async def one() -> tuple[float, int, str]:
            start = time.perf_counter()
            async with session.post(url, data=body, timeout=aiohttp.ClientTimeout(total=300)) as r:
                await r.read()
                return (time.perf_counter() - start) * 1000, r.status, r.headers.get("x-slserve-instance", "")

        done = await asyncio.gather(*(one() for _ in range(n)))
    return [d[0] for d in done], [d[1] for d in done], [d[2] for d in done]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    functions = make_functions(OUT / "functions-burst", FUNCTIONS)
    rows: dict[str, list[dict[str, float]]] = {name: [] for name in FUNCTIONS}
    memory: dict[str, list[dict[str, float]]] = {}
    with gateway(functions) as gw:
        for round_ in range(args.rounds):
            for name, body in BODIES.items():
                gw.wait_for_zero(name)
                before = gw.status(name)["cold_starts"]
                lat, codes, instances = asyncio.run(
                    burst(f"{gw.url}/v2/models/{name}/infer", orjson.dumps(body), args.requests, gw.auth)
                )
                memory.setdefault(name, [memory_of(i["pid"]) for i in gw.status(name)["instances"] if i["pid"]])
                rows[name].append(
                    {
                        "errors": float(sum(c != 200 for c in codes)),
                        "p50": pct(lat, 50),
                        "p99": pct(lat, 99),
                        "max": max(lat),
                        "instances": float(len(set(instances) - {""})),
                        "cold_starts": float(gw.status(name)["cold_starts"] - before),
                    }
                )
                print(name, round_, rows[name][-1], file=sys.stderr)
    save("burst", {"rounds": rows, "memory": memory})
    print(
        f"\nMachine: {machine()}. {args.requests} simultaneous requests after scale-to-zero, {args.rounds} rounds "
        "(each row one round).\n"
    )
    for name, per_instance in memory.items():
        shown = "; ".join(f"RSS {m['rss']:.0f}, PSS {m['pss']:.0f}, private {m['private']:.0f}" for m in per_instance)
        print(f"Memory of {name}'s instances after the burst (MB): {shown}.\n")
    print("| function | round | errors | p50 (ms) | p99 (ms) | max (ms) | instances used | cold starts |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for name, results in rows.items():
        for i, r in enumerate(results, 1):
            print(
                f"| {name} | {i} | **{r['errors']:.0f}** | {r['p50']:.0f} | {r['p99']:.0f} | {r['max']:.0f} | "
                f"{r['instances']:.0f} | {r['cold_starts']:.0f} |"
            )


def memory_of(pid: int) -> dict[str, float]:
    """MB of an instance's memory from /proc/PID/smaps_rollup: resident, proportional (shared pages divided among
    the processes mapping them) and private (this process's alone)."""
    fields: dict[str, float] = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
        key, value = line.split(":", 1)
        fields[key] = float(value.split()[0]) / 1024
    return {"rss": fields["Rss"], "pss": fields["Pss"], "private": fields["Private_Clean"] + fields["Private_Dirty"]}


if __name__ == "__main__":
    main()

"""Many functions on one host: a trace shaped like Azure Functions' production characterization ("Serverless in
the Wild", ATC'20: rates over orders of magnitude, most functions called rarely, some periodic, some bursty),
replayed at accelerated time against a memory budget smaller than every function warm. The fixed policy (each
idle instance stays `idle_seconds`, the longest idle goes first) and the learned one (`keep_alive = "learned"`:
per-function keep-alive and pre-warms from idle gaps, Greedy-Dual-Size-Frequency eviction) run the same trace,
one after the other in one run, each on a fresh gateway.

Printed per policy: cold starts per 1,000 requests, p50/p99 latency, memory-seconds held by the server's process
tree above its at-rest memory, peak memory (the tree's PSS, read by this process) against the budget, requests
refused. Targets (issue 26): peak never above the budget; cold starts <= 1/3 of fixed at equal or lower
memory-seconds.

    .venv/bin/python benchmarks/density.py [--functions 40] [--seconds 150] [--seed 1]
"""

from __future__ import annotations

import argparse
import asyncio
import math
import random
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import httpx

from harness import ARTIFACTS, OUT, gateway, machine, pct, save
from slserve.platform.local.memory import tree_pss
from slserve_samples.cached import cached_function

CAP_S = 10.0  # idle_seconds: ten minutes of the real trace's keep-alive at 60x
RATES = (10**-2.7, 10**1.3)  # calls per second: four orders of magnitude, log-uniform
BODY = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 16], "data": [0.5] * 16}]}


def write_functions(target: Path, count: int) -> list[str]:
    """`count` functions, one in eight big (`slserve_samples.cached`), the others the small MLP; built into the
    default artifact store."""
    names = []
    for i in range(count):
        big = i % 8 == 7
        name = f"{'big' if big else 'small'}-{i}"
        folder = target / name
        folder.mkdir(parents=True, exist_ok=True)
        factory = "slserve_samples.cached:build" if big else "slserve_samples.big_mlp:build_small"
        (folder / "function.toml").write_text(cached_function(name, 1000 + i, CAP_S, factory))
        names.append(name)
    slserve = [sys.executable, "-c", "from slserve.cli import main; main()"]
    build = [*slserve, "build", "--functions", str(target), "--artifacts", str(ARTIFACTS)]
    subprocess.run(build, check=True, capture_output=True)
    return names


def trace(names: list[str], seconds: float, seed: int) -> tuple[list[tuple[float, str]], dict[str, str]]:
    """(time, function) calls: each function's rate drawn log-uniform over `RATES`, half Poisson, a quarter
    periodic (5% jitter), a quarter bursty (bursts of 3-12 calls within a second, at a tenth of the rate)."""
    rng = random.Random(seed)
    calls: list[tuple[float, str]] = []
    kinds = {}
    low, high = (math.log10(r) for r in RATES)
    for name in names:
        rate = 10 ** rng.uniform(low, high)
        kind = rng.choice(["poisson", "poisson", "periodic", "bursty"])
        kinds[name] = f"{kind} {rate:.3g}/s"
        t = rng.uniform(0, 1 / rate) if kind == "periodic" else rng.expovariate(rate)
        while t < seconds:
            if kind == "bursty":
                size = rng.randint(3, 12)
                calls += [(t + rng.uniform(0, 1.0), name) for _ in range(size)]
                t += rng.expovariate(rate / size)
            else:
                calls.append((t, name))
                t += (1 / rate) * rng.uniform(0.95, 1.05) if kind == "periodic" else rng.expovariate(rate)
    calls = sorted(c for c in calls if c[0] < seconds)
    return calls, kinds


@dataclass
class Memory:
    """The server tree's PSS every 0.2 s: its peak, and memory-seconds above `rest`."""

    pid: int
    rest: int
    peak: int = 0
    byte_seconds: float = 0.0
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        last = time.monotonic()
        held = 0
        while not self.stop.wait(0.2):
            reading = tree_pss(self.pid)
            now = time.monotonic()
            if reading is not None:
                held = reading
                self.peak = max(self.peak, reading)
            self.byte_seconds += max(0, held - self.rest) * (now - last)
            last = now


Answer = tuple[str, int, float, bool]  # function, status, latency ms, waited for a cold start


async def replay(url: str, auth: dict[str, str], calls: list[tuple[float, str]]) -> list[Answer]:
    """Each call at its time (aiohttp: httpx's pool slows with every request it queues, and the client fell
    behind the trace)."""
    out: list[Answer] = []
    async with aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=256), headers=auth, timeout=aiohttp.ClientTimeout(total=60)
    ) as session:

        async def one(name: str) -> None:
            start = time.perf_counter()
            try:
                async with session.post(f"{url}/v2/models/{name}/infer", json=BODY) as r:
                    await r.read()
                    cold = "x-slserve-cold-start-ms" in r.headers
                    out.append((name, r.status, (time.perf_counter() - start) * 1000, cold))
            except (aiohttp.ClientError, TimeoutError):
                out.append((name, 0, (time.perf_counter() - start) * 1000, False))

        began = time.monotonic()
        tasks = []
        for at, name in calls:
            delay = began + at - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(name)))
        await asyncio.gather(*tasks)
    return out


def at_rest(functions: Path) -> int:
    with gateway(functions) as gw:
        time.sleep(2)  # the templates' preloads settle
        while (reading := tree_pss(gw.proc.pid)) is None:
            time.sleep(0.05)
        return reading


def run_policy(
    functions: Path, policy: str, budget: int, rest: int, calls: list[tuple[float, str]], kinds: dict[str, str]
) -> dict[str, Any]:
    settings = {"keep_alive": policy, "memory_budget_mb": str(budget / (1 << 20))}
    with gateway(functions, settings=settings) as gw:
        memory = Memory(gw.proc.pid, rest)
        sampler = threading.Thread(target=memory.run, daemon=True)
        sampler.start()
        answers = asyncio.run(replay(gw.url, gw.auth, calls))
        memory.stop.set()
        sampler.join()
        host = httpx.get(gw.url + "/slserve/functions", headers=gw.auth).json()["host"]["memory"]
    ok = [a for a in answers if a[1] == 200]
    cold = sum(1 for a in answers if a[3])
    by_kind: dict[str, list[int]] = {}
    for name, _, _, was_cold in answers:
        counts = by_kind.setdefault(kinds[name].split()[0], [0, 0])
        counts[0] += 1
        counts[1] += was_cold
    return {
        "policy": policy,
        "requests": len(answers),
        "cold_per_1000": round(1000 * cold / max(1, len(answers)), 1),
        "p50_ms": round(pct([a[2] for a in ok], 50), 1) if ok else None,
        "p99_ms": round(pct([a[2] for a in ok], 99), 1) if ok else None,
        "memory_gb_s": round(memory.byte_seconds / (1 << 30), 1),
        "peak_mb": memory.peak >> 20,
        "budget_mb": budget >> 20,
        "refused": sum(1 for a in answers if a[1] == 503),
        "failed": sum(1 for a in answers if a[1] not in (200, 503)),
        "evictions": host["evictions"],
        "cold_by_kind": {kind: f"{c[1]} of {c[0]}" for kind, c in sorted(by_kind.items())},
        "first_calls": len({a[0] for a in answers}),  # cold under any policy
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--functions", type=int, default=40)
    parser.add_argument("--seconds", type=float, default=150.0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--room-mb", type=int, default=480, help="the budget beyond the server's memory at rest")
    args = parser.parse_args()
    folder = OUT / "density-functions"
    names = write_functions(folder, args.functions)
    calls, kinds = trace(names, args.seconds, args.seed)
    rest = at_rest(folder)
    budget = rest + args.room_mb * (1 << 20)
    print(
        f"{len(names)} functions, {len(calls)} calls over {args.seconds:g} s; at rest {rest >> 20} MB, "
        f"budget {budget >> 20} MB; {machine()}"
    )
    rows = [run_policy(folder, policy, budget, rest, calls, kinds) for policy in ("fixed", "learned")]
    header = (
        "policy",
        "requests",
        "cold_per_1000",
        "p50_ms",
        "p99_ms",
        "memory_gb_s",
        "peak_mb",
        "budget_mb",
        "refused",
        "failed",
        "evictions",
    )
    print(" | ".join(header))
    for row in rows:
        print(" | ".join(str(row[h]) for h in header))
    for row in rows:
        print(f"{row['policy']}: cold starts by kind {row['cold_by_kind']}; {row['first_calls']} first calls")
    fixed, learned = rows
    ratio = learned["cold_per_1000"] / fixed["cold_per_1000"] if fixed["cold_per_1000"] else None
    print(f"cold starts learned/fixed: {ratio:.2f}" if ratio is not None else "no cold starts under fixed")
    save("density", {"rows": rows, "kinds": kinds, "machine": machine(), "seed": args.seed})


if __name__ == "__main__":
    main()

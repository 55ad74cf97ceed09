"""Soak: open-loop load at 3x the measured capacity for 60 s, mixed with hostile inputs, then recovery.

Bounded and loopback only. The honest traffic is MiniLM (ONNX) embeddings of 8 sentences (v2 and OpenAI), each
client giving up after 10 s (its connection closes: the server sees it leave). One request in ten is hostile:
a crashing row, a model bug, a 121-byte body declaring 200 M strings, JSON nested 1,000 deep, an empty batch,
too many rows, text over the model's limit, and an Idempotency-Key whose first holder fails while duplicates
wait. It prints requests sent, answered, refused (by status), lost (no answer and no client timeout: must be 0),
billed but undelivered (must be 0), ledger mismatches (must be 0), instance crashes, peak gateway and instance
resident memory, and the time back to normal latency. Beside it, a noisy tenant sends the uploads of
`noisy.py` (bodies over what their function takes, a crowd past the in-flight budget, slow uploads, huge and
trickled heads) while a bystander tenant calls the classifier every 50 ms: its p50, p99 and max against its own
quiet p50, and what each attack was answered.

    python benchmarks/soak.py [--seconds 60] [--factor 3] [--declare-timeout]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import multiprocessing
import sqlite3
import struct
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from harness import OUT, Gateway, gateway, machine, make_functions, pct, save
from noisy import attack_for, stand_by_for, worst_during
from slserve_samples.faulty import hazards_function

SENTENCES = [
    "Serverless inference scales to zero when nobody calls.",
    "A bill must be exact to the micro-unit.",
    "The quick brown fox jumps over the lazy dog.",
    "Cold starts are measured, not guessed.",
    "One request must never cost another its answer.",
    "Weights are mapped, never copied.",
    "Bursty traffic arrives all at once.",
    "Every record is durable before its response is sent.",
]
HAZARDS = hazards_function(max_instances=1, max_delay_ms=5)
FUNCTIONS = {"minilm": ("minilm-onnx", {"scaling": {"max_instances": 2}}), "classifier": ("classifier", {})}
CLIENT_TIMEOUT_S = 10.0
V2 = {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [8], "data": SENTENCES}]}
OPENAI = {"model": "minilm", "input": SENTENCES}


def hazard(first: float) -> dict[str, Any]:
    return {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 16], "data": [first] + [0.5] * 15}]}


def binary_bomb() -> tuple[bytes, dict[str, str]]:
    header = orjson.dumps(
        {
            "inputs": [
                {"name": "text", "datatype": "BYTES", "shape": [200_000_000], "parameters": {"binary_data_size": 9}}
            ]
        }
    )
    body = header + struct.pack("<I", 5) + b"hello"
    return body, {"inference-header-content-length": str(len(header)), "content-type": "application/octet-stream"}


def hostile(i: int) -> tuple[str, bytes, dict[str, str]]:
    """The i-th hostile request: (path, body, headers)."""
    kind = i % 8
    minilm, hazards = "/v2/models/minilm/infer", "/v2/models/hazards/infer"
    if kind == 0:
        return hazards, orjson.dumps(hazard(-1001.0)), {}  # crashes its instance
    if kind == 1:
        return hazards, orjson.dumps(hazard(-7777.0)), {}  # the model raises
    if kind == 2:
        return minilm, *binary_bomb()
    if kind == 3:
        nested = "[" * 1000 + '"a"' + "]" * 1000
        return minilm, f'{{"inputs":[{{"name":"text","datatype":"BYTES","shape":[1],"data":{nested}}}]}}'.encode(), {}
    if kind == 4:
        return minilm, orjson.dumps({"inputs": [{"name": "text", "datatype": "BYTES", "shape": [0], "data": []}]}), {}
    if kind == 5:
        rows = ["a"] * 300
        return (
            minilm,
            orjson.dumps({"inputs": [{"name": "text", "datatype": "BYTES", "shape": [300], "data": rows}]}),
            {},
        )
    if kind == 6:
        text = "tokens " * 600
        return (
            minilm,
            orjson.dumps({"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": [text]}]}),
            {},
        )
    return hazards, orjson.dumps(hazard(-7777.0)), {"idempotency-key": f"dup-{i // 8}"}  # its duplicates follow


@dataclass
class Tally:
    sent: int = 0
    statuses: collections.Counter[int] = field(default_factory=collections.Counter)
    timeouts: int = 0
    lost: list[str] = field(default_factory=list)  # neither an answer nor a client timeout
    delivered: dict[str, int] = field(default_factory=dict)  # request id -> x-slserve-cost of each 200
    latencies: list[float] = field(default_factory=list)


async def send(
    session: aiohttp.ClientSession, url: str, body: bytes, headers: dict[str, str], tally: Tally, honest: bool
) -> None:
    tally.sent += 1
    start = time.perf_counter()
    try:
        async with session.post(url, data=body, headers=headers) as r:
            await r.read()
            tally.statuses[r.status] += 1
            if r.status == 200:
                tally.delivered[r.headers["x-request-id"]] = int(r.headers.get("x-slserve-cost", "0"))
                if honest:
                    tally.latencies.append((time.perf_counter() - start) * 1000)
    except TimeoutError:
        tally.timeouts += 1
    except aiohttp.ClientError as e:
        tally.lost.append(f"{type(e).__name__}: {e}")


async def closed_loop(gw: Gateway, key: str, concurrency: int, seconds: float) -> tuple[float, list[float]]:
    """Requests per second and latencies of `concurrency` clients back to back."""
    tally = Tally()
    headers = {"content-type": "application/json", "authorization": f"Bearer {key}"}
    body = orjson.dumps(V2)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        end = time.monotonic() + seconds

        async def client() -> None:
            while time.monotonic() < end:
                await send(session, gw.url + "/v2/models/minilm/infer", body, headers, tally, True)

        started = time.monotonic()
        await asyncio.gather(*(client() for _ in range(concurrency)))
        elapsed = time.monotonic() - started
    return tally.statuses[200] / elapsed, tally.latencies


async def open_loop(gw: Gateway, key: str, rate: float, seconds: float, tally: Tally, declare_timeout: bool) -> None:
    """Arrivals at `rate` per second whatever the answers do; one in ten hostile, duplicates after each idem."""
    base = {"content-type": "application/json", "authorization": f"Bearer {key}"}
    if declare_timeout:  # the gateway then refuses at once what could not be answered in time
        base["x-slserve-timeout-ms"] = str(int(CLIENT_TIMEOUT_S * 1000))
    timeout = aiohttp.ClientTimeout(total=CLIENT_TIMEOUT_S)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0), timeout=timeout) as session:
        tasks: set[asyncio.Task[None]] = set()
        start = time.monotonic()
        i = 0
        while (due := start + i / rate) < start + seconds:
            await asyncio.sleep(max(0.0, due - time.monotonic()))
            if i % 10 == 9:
                path, body, extra = hostile(i // 10)
                jobs = [(path, body, {**base, **extra})]
                if "idempotency-key" in extra:  # duplicates with a good body, while the failing holder runs
                    jobs += [(path, orjson.dumps(hazard(0.25)), {**base, **extra})] * 3
                for path_, body_, headers in jobs:
                    task = asyncio.create_task(send(session, gw.url + path_, body_, headers, tally, False))
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
            else:
                oa = i % 10 == 4
                path, body = ("/v1/embeddings", OPENAI) if oa else ("/v2/models/minilm/infer", V2)
                task = asyncio.create_task(send(session, gw.url + path, orjson.dumps(body), base, tally, True))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            i += 1
        await asyncio.gather(*tasks)


def rss_mb(pid: int) -> float:
    try:
        return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * 4096 / 2**20
    except (OSError, IndexError):
        return 0.0


def children(pid: int) -> list[int]:
    """Every process under `pid` (templates, instances, the ledger writer)."""
    found, frontier = [], [pid]
    while frontier:
        parent = frontier.pop()
        for task in Path(f"/proc/{parent}/task").iterdir():
            try:
                kids = [int(k) for k in (task / "children").read_text().split()]
            except OSError:
                continue
            found += kids
            frontier += kids
    return found


async def watch_memory(gw: Gateway, peaks: dict[str, float], stop: asyncio.Event) -> None:
    while not stop.is_set():
        peaks["gateway"] = max(peaks.get("gateway", 0.0), rss_mb(gw.proc.pid))
        for child in children(gw.proc.pid):
            try:
                title = Path(f"/proc/{child}/cmdline").read_text().replace("\0", " ")
            except OSError:
                continue
            if title.startswith("slserve instance"):
                peaks["instance"] = max(peaks.get("instance", 0.0), rss_mb(child))
        await asyncio.sleep(0.25)


async def until_normal(gw: Gateway, key: str, normal_ms: float, limit_s: float = 120) -> float:
    """Seconds until a one-second window of requests at concurrency 1 has its p50 within 1.5x of normal."""
    start = time.monotonic()
    while time.monotonic() - start < limit_s:
        _, lat = await closed_loop(gw, key, 1, 1.0)
        if lat and pct(lat, 50) <= 1.5 * normal_ms:
            return time.monotonic() - start
    return float("inf")


def settle(gw: Gateway, functions: list[str], limit_s: float = 120) -> None:
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        if all(gw.status(f)["queued"] == 0 and gw.status(f)["in_flight"] == 0 for f in functions):
            return
        time.sleep(0.2)


def ledger_check(state: Path, tenant: str, tally: Tally) -> tuple[list[str], int, collections.Counter[int]]:
    """(request ids billed but undelivered, mismatches, records by status) for the tenant."""
    with sqlite3.connect(state / "ledger.sqlite") as db:
        rows = db.execute("SELECT request_id, status, price FROM records WHERE tenant = ?", (tenant,)).fetchall()
    records = {r[0]: (r[1], r[2]) for r in rows}
    undelivered = [
        request_id for request_id, (_, price) in records.items() if price and request_id not in tally.delivered
    ]
    mismatches = sum(1 for request_id, cost in tally.delivered.items() if records.get(request_id) != (200, cost))
    return undelivered, mismatches, collections.Counter(r[1] for r in rows)


def billed(state: Path, tenant: str) -> int:
    with sqlite3.connect(state / "ledger.sqlite") as db:
        return int(db.execute("SELECT COUNT(*) FROM records WHERE tenant = ? AND price > 0", (tenant,)).fetchone()[0])


def gateway_ms(log: Path, request_ids: list[str]) -> list[float]:
    """How long the gateway took to answer each of these requests (its access log), largest first."""
    wanted = set(request_ids)
    found = []
    for line in log.read_text().splitlines():
        if '"infer"' in line and any(r in line for r in wanted):
            found.append(float(json.loads(line)["ms"]))
    return sorted(found, reverse=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--factor", type=float, default=3.0)
    parser.add_argument(
        "--declare-timeout", action="store_true", help="clients send x-slserve-timeout-ms with their own timeout"
    )
    args = parser.parse_args()
    functions = make_functions(OUT / "functions-soak", FUNCTIONS, {"hazards": HAZARDS})
    log = OUT / "soak-gateway.log"
    with gateway(functions, log=log, settings={"request_timeout_s": "30"}) as gw:
        from slserve.accounts.keys import SQLiteKeyStore, new_key

        key = SQLiteKeyStore(gw.state).create(new_key("soak"))
        probe = SQLiteKeyStore(gw.state).create(new_key("probe"))  # measuring, not in the soak's accounts
        noisy, bystander = (SQLiteKeyStore(gw.state).create(new_key(t)) for t in ("noisy", "bystander"))
        side = ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn"))
        quiet_ms = pct([ms for _, ms in side.submit(stand_by_for, gw.url, bystander, 5.0).result()[0]], 50)
        asyncio.run(closed_loop(gw, probe, 4, 3.0))  # warm: instances up, page cache hot
        _, alone = asyncio.run(closed_loop(gw, probe, 1, 5.0))
        normal_ms = pct(alone, 50)
        capacity, _ = asyncio.run(closed_loop(gw, probe, 16, 10.0))
        settle(gw, ["minilm"])
        rate = args.factor * capacity
        tally = Tally()
        peaks: dict[str, float] = {}
        answered: dict[str, dict[int, int]] = {}  # the noisy tenant's attacks, by status
        beside: list[Any] = []  # the bystander's latencies, failures, worst during each attack, worst outside

        async def soak() -> float:
            stop = asyncio.Event()
            watcher = asyncio.create_task(watch_memory(gw, peaks, stop))
            loop = asyncio.get_running_loop()
            noise = loop.run_in_executor(side, attack_for, gw.url, noisy, args.seconds)
            standing = loop.run_in_executor(side, stand_by_for, gw.url, bystander, args.seconds)
            await open_loop(gw, key, rate, args.seconds, tally, args.declare_timeout)
            statuses, windows = await noise
            answered.update(statuses)
            calls, failures = await standing
            beside.extend([[ms for _, ms in calls], failures, *worst_during(calls, windows)])
            await asyncio.to_thread(settle, gw, ["minilm", "hazards"])
            recovered = await until_normal(gw, probe, normal_ms)
            stop.set()
            await watcher
            return recovered

        started = time.monotonic()
        recovered = asyncio.run(soak())
        wall = time.monotonic() - started
        billed_undelivered, mismatches, recorded = ledger_check(gw.state, "soak", tally)
        noisy_billed = billed(gw.state, "noisy")
        side.shutdown()
        undelivered = len(billed_undelivered)
        undelivered_ms = gateway_ms(log, billed_undelivered)
        ended = [line for line in log.read_text().splitlines() if "instance" in line and " ended (" in line]
        stopped = sum(1 for line in ended if "stopped by the gateway" in line)
        crashes = len(ended) - stopped
    refused = {s: n for s, n in sorted(tally.statuses.items()) if s != 200}
    result = {
        "machine": machine(),
        "capacity_rps": capacity,
        "rate_rps": rate,
        "seconds": args.seconds,
        "declared_timeout": args.declare_timeout,
        "normal_p50_ms": normal_ms,
        "sent": tally.sent,
        "answered": tally.statuses[200],
        "refused": refused,
        "client_timeouts": tally.timeouts,
        "lost": len(tally.lost),
        "lost_examples": tally.lost[:5],
        "billed_undelivered": undelivered,
        "billed_undelivered_gateway_ms": undelivered_ms,
        "ledger_mismatches": mismatches,
        "records_by_status": dict(sorted(recorded.items())),
        "instance_crashes": crashes,
        "instances_stopped_by_the_gateway": stopped,
        "peak_gateway_rss_mb": peaks.get("gateway", 0.0),
        "peak_instance_rss_mb": peaks.get("instance", 0.0),
        "back_to_normal_s": recovered,
        "bystander": {
            "quiet_p50_ms": quiet_ms,
            "p50_ms": pct(beside[0], 50),
            "p99_ms": pct(beside[0], 99),
            "max_ms": max(beside[0]),
            "calls": len(beside[0]),
            "failures": beside[1],
        },
        "bystander_max_during_ms": beside[2],
        "bystander_max_outside_attacks_ms": beside[3],
        "noisy_tenant": answered,
        "noisy_tenant_billed": noisy_billed,
        "wall_s": wall,
    }
    save("soak", result)
    print(f"\nMachine: {machine()}. MiniLM (ONNX, 2 instances max) and a hazards function; {args.seconds:.0f} s at")
    print(f"{args.factor:g}x the measured capacity ({capacity:.1f} req/s at c=16 -> {rate:.1f} req/s offered, one in")
    declared = " and say so (x-slserve-timeout-ms)" if args.declare_timeout else ""
    print(f"ten hostile); clients give up after {CLIENT_TIMEOUT_S:.0f} s{declared}.\n")
    print("| sent | answered | refused (by status) | client timeouts | lost | billed undelivered | ledger mismatches |")
    print("| ---: | ---: | --- | ---: | ---: | ---: | ---: |")
    statuses = ", ".join(f"{s}: {n}" for s, n in refused.items())
    print(
        f"| {tally.sent} | {tally.statuses[200]} | {statuses} | {tally.timeouts} | {len(tally.lost)} | "
        f"{undelivered} | {mismatches} |"
    )
    print("\n| instance crashes | stopped by the gateway | peak gateway RSS | peak instance RSS | back to normal |")
    print("| ---: | ---: | ---: | ---: | ---: |")
    print(
        f"| {crashes} | {stopped} | {peaks.get('gateway', 0.0):.0f} MB | {peaks.get('instance', 0.0):.0f} MB | "
        f"{recovered:.1f} s (p50 within 1.5x of {normal_ms:.1f} ms) |"
    )
    print("\nA bystander calling the classifier every 50 ms, and a noisy tenant's attacks (`noisy.py`):\n")
    print("| bystander quiet p50 | p50 | p99 | max | max / quiet p50 | failures |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: |")
    lat = beside[0]
    print(
        f"| {quiet_ms:.1f} ms | {pct(lat, 50):.1f} ms | {pct(lat, 99):.1f} ms | {max(lat):.1f} ms | "
        f"{max(lat) / quiet_ms:.1f}x | {sum(beside[1].values())} |"
    )
    print("\n| attack | answered (by status) | bystander max while it ran |")
    print("| --- | --- | ---: |")
    for name, counts in answered.items():
        statuses = ", ".join(f"{s}: {n}" for s, n in sorted(counts.items()))
        print(f"| {name} | {statuses} | {beside[2].get(name, 0.0):.1f} ms |")
    print(f"| (between attacks) | | {beside[3]:.1f} ms |")
    print(f"\nthe noisy tenant's priced records: {noisy_billed}")
    print(f"\nledger records by status: {json.dumps(dict(sorted(recorded.items())))}")
    if undelivered:
        print(f"billed undelivered: the gateway answered them in {[round(ms) for ms in undelivered_ms]} ms")
    if tally.lost:
        print(f"lost, e.g.: {tally.lost[:3]}")


if __name__ == "__main__":
    main()

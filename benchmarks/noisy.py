"""A noisy tenant for the soak: the uploads that once stalled every other tenant (issue 28), sent over raw sockets
(a gateway that refuses a body by its declared length answers before reading it and closes; an HTTP client
library would call that a lost request), and a bystander tenant calling the classifier every 50 ms.

Each attack is a bundle of uploads sent together, bundles one after another until the soak ends:

- bodies within the server's 64 MB but over what their function takes, declared by Content-Length: 16 M numbers
  for the classifier's `[16, 4]`, 4 M strings for MiniLM's `[64, 250000]`, 12 M binary elements of 0 or 1 byte,
  a 3 MB text (413 each);
- a crowd of 160 uploads of 2 MB at once, with a datatype MiniLM refuses (400 once read, 503 past the budget);
- 20 uploads trickled at 200 bytes/s (408 past the minimum rate);
- 40 requests with 8 MB of headers (431), 20 heads trickled a byte at a time (408 past the head timeout).
"""

from __future__ import annotations

import asyncio
import collections
import struct
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import orjson

CLASSIFIER = "/v2/models/classifier/infer"
MINILM = "/v2/models/minilm/infer"


@dataclass(frozen=True)
class Upload:
    path: str
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)
    body_bytes_per_s: float | None = None
    head_padding: int = 0  # bytes of one extra header
    head_bytes_per_s: float | None = None


def _v2(name: str, datatype: str, shape: list[int], data: object) -> bytes:
    return orjson.dumps({"inputs": [{"name": name, "datatype": datatype, "shape": shape, "data": data}]})


def attacks() -> dict[str, list[Upload]]:
    """Each attack's uploads, sent together."""
    numbers = b'{"inputs":[{"name":"features","datatype":"FP32","shape":[16,4],"data":[' + b"0.5," * 16_000_000
    numbers += b"0.5]}]}"
    elements = 12_000_000
    binary = (struct.pack("<I", 1) + b"a" + struct.pack("<I", 0)) * (elements // 2)
    declared = {
        "name": "text",
        "datatype": "BYTES",
        "shape": [elements],
        "parameters": {"binary_data_size": len(binary)},
    }
    header = orjson.dumps({"inputs": [declared]})
    crowd = _v2("text", "FP32", [32], ["word " * 12_500] * 32)
    return {
        "numbers over the classifier's take": [Upload(CLASSIFIER, numbers)],
        "4 M strings to MiniLM": [Upload(MINILM, _v2("text", "BYTES", [64, 250000], ["a"] * 4_000_000))],
        "12 M binary elements": [
            Upload(MINILM, header + binary, {"inference-header-content-length": str(len(header))})
        ],
        "a 3 MB text": [Upload(MINILM, _v2("text", "BYTES", [1], ["a" * 3_000_000]))],
        "160 uploads of 2 MB at once": [Upload(MINILM, crowd)] * 160,
        "20 uploads at 200 B/s": [Upload(MINILM, crowd, body_bytes_per_s=200)] * 20,
        "40 heads of 8 MB": [Upload(CLASSIFIER, b"{}", head_padding=8 << 20)] * 40,
        "20 heads trickled": [Upload(CLASSIFIER, b"{}", head_padding=1000, head_bytes_per_s=50)] * 20,
    }


async def send(url: str, key: str, upload: Upload) -> int:
    """The status the gateway answered, or 0 if it closed without one."""
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    lines = [f"POST {upload.path} HTTP/1.1", f"Host: {host}", f"Content-Length: {len(upload.body)}"]
    lines += [f"authorization: Bearer {key}", "content-type: application/json"]
    lines += [f"{k}: {v}" for k, v in upload.headers.items()]
    if upload.head_padding:
        lines.append("x-padding: " + "a" * upload.head_padding)
    head = ("\r\n".join(lines) + "\r\n\r\n").encode()
    answer = asyncio.create_task(reader.readline())
    try:
        await _write(writer, head, upload.head_bytes_per_s, answer)
        await _write(writer, upload.body, upload.body_bytes_per_s, answer)
        line = await asyncio.wait_for(answer, 60)
    except (ConnectionError, TimeoutError):
        line = answer.result() if answer.done() and not answer.exception() else b""
    finally:
        answer.cancel()
        writer.close()
    return int(line.split(b" ", 2)[1]) if line.startswith(b"HTTP/1.1 ") else 0


async def _write(
    writer: asyncio.StreamWriter, data: bytes, bytes_per_s: float | None, answer: asyncio.Task[bytes]
) -> None:
    """Write `data` (trickled at `bytes_per_s` in pieces of up to 10 bytes), stopping once an answer came."""
    step = max(1, int(bytes_per_s / 10)) if bytes_per_s else 1 << 20
    for start in range(0, len(data), step):
        if answer.done():
            return
        writer.write(data[start : start + step])
        await writer.drain()
        if bytes_per_s:
            await asyncio.sleep(step / bytes_per_s)


@dataclass
class NoisyTenant:
    """Sends every attack in turn until `stop`; counts the statuses each attack got."""

    url: str
    key: str
    statuses: dict[str, collections.Counter[int]] = field(default_factory=dict)
    windows: list[tuple[str, float, float]] = field(default_factory=list)  # attack, wall-clock start and end

    async def run(self, stop: asyncio.Event) -> None:
        bundles = attacks()
        while not stop.is_set():
            for name, uploads in bundles.items():
                if stop.is_set():
                    return
                started = time.time()
                got = await asyncio.gather(*(send(self.url, self.key, u) for u in uploads))
                self.windows.append((name, started, time.time()))
                self.statuses.setdefault(name, collections.Counter()).update(got)


@dataclass
class Bystander:
    """Another tenant calling the classifier every 50 ms; its latencies in ms."""

    url: str
    key: str
    latencies: list[tuple[float, float]] = field(default_factory=list)  # (wall-clock start, ms)
    failures: collections.Counter[int] = field(default_factory=collections.Counter)

    async def run(self, stop: asyncio.Event) -> None:
        import aiohttp

        body = _v2("features", "FP32", [1, 4], [0.1, 0.2, 0.3, 0.4])
        headers = {"authorization": f"Bearer {self.key}", "content-type": "application/json"}
        async with aiohttp.ClientSession() as session:
            while not stop.is_set():
                wall, started = time.time(), time.perf_counter()
                async with session.post(self.url + CLASSIFIER, data=body, headers=headers) as r:
                    await r.read()
                    if r.status != 200:
                        self.failures[r.status] += 1
                self.latencies.append((wall, (time.perf_counter() - started) * 1000))
                await asyncio.sleep(0.05)


Windows = list[tuple[str, float, float]]


def attack_for(url: str, key: str, seconds: float) -> tuple[dict[str, dict[int, int]], Windows]:
    """The noisy tenant for `seconds`, in a process of its own (building 64 MB bodies holds its GIL): the
    statuses each attack got, and when each bundle was sent."""
    tenant = NoisyTenant(url, key)
    asyncio.run(_for(seconds, tenant.run))
    return {name: dict(counts) for name, counts in tenant.statuses.items()}, tenant.windows


def stand_by_for(url: str, key: str, seconds: float) -> tuple[list[tuple[float, float]], dict[int, int]]:
    """The bystander for `seconds`, in a process of its own: its calls (wall-clock start, ms) and failures by
    status."""
    bystander = Bystander(url, key)
    asyncio.run(_for(seconds, bystander.run))
    return bystander.latencies, dict(bystander.failures)


def worst_during(calls: list[tuple[float, float]], windows: Windows) -> tuple[dict[str, float], float]:
    """The bystander's slowest call overlapping each attack's bundles, and its slowest outside them all."""
    during: dict[str, float] = {}
    outside = 0.0
    for wall, ms in calls:
        end = wall + ms / 1000
        hit = [name for name, start, stop in windows if wall < stop and end > start]
        for name in hit:
            during[name] = max(during.get(name, 0.0), ms)
        if not hit:
            outside = max(outside, ms)
    return during, outside


async def _for(seconds: float, run: Callable[[asyncio.Event], Awaitable[None]]) -> None:
    stop = asyncio.Event()
    asyncio.get_running_loop().call_later(seconds, stop.set)
    await run(stop)

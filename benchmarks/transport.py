"""The gateway <-> instance hop, alone: round trips between two processes over a unix socket pair.

- raw: 2 KB ping-pong, blocking send/recv on both sides (the floor for any framing);
- slserve: the real code on both ends, the gateway's asyncio protocol (uvloop) and the instance's `Connection`,
  echoing an INFER message as a RESULT, for a small tensor and a 4 MB one (bytes are never copied into JSON).

    python benchmarks/transport.py [--n 5000]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import time

import numpy as np
import uvloop

from harness import machine, pct, save
from slserve.framing import widen_buffers
from slserve.platform.channel import FrameChannel
from slserve.platform.local.instance_process import Connection
from slserve.platform.wire import Kind, Message


def raw(n: int) -> list[float]:
    a, b = socket.socketpair()
    payload = b"x" * 2048
    pid = os.fork()
    if pid == 0:
        a.close()
        while data := b.recv(65536):
            b.sendall(data)
        os._exit(0)
    b.close()
    times = []
    for _ in range(n):
        start = time.perf_counter()
        a.sendall(payload)
        got = 0
        while got < len(payload):
            got += len(a.recv(65536))
        times.append((time.perf_counter() - start) * 1e6)
    a.close()
    os.waitpid(pid, 0)
    return times


def framed(n: int, tensor: np.ndarray) -> list[float]:
    a, b = socket.socketpair()
    widen_buffers(a)  # as the template does for every instance's socket
    widen_buffers(b)
    pid = os.fork()
    if pid == 0:
        a.close()
        conn = Connection(b)
        while not conn.closed:
            for m in conn.receive(None):
                conn.send(Message(Kind.RESULT, m.request_id, {"compute_ms": 0.0}, m.tensors))
        os._exit(0)
    b.close()

    async def run() -> list[float]:
        loop = asyncio.get_running_loop()
        waiting: dict[int, asyncio.Future[Message]] = {}

        def on_message(msg: Message) -> None:
            waiting.pop(msg.request_id).set_result(msg)

        _, channel = await loop.create_unix_connection(lambda: FrameChannel(on_message), sock=a)
        times = []
        for i in range(n):
            start = time.perf_counter()
            waiting[i] = loop.create_future()
            channel.send(Message(Kind.INFER, i, {}, {"x": tensor}))
            await waiting[i]
            times.append((time.perf_counter() - start) * 1e6)
        assert channel.transport is not None
        channel.transport.close()
        return times

    times = uvloop.run(run())
    os.waitpid(pid, 0)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=5000)
    args = parser.parse_args()
    cases = {
        "raw 2 KB ping-pong (blocking both ends)": lambda: raw(args.n),
        "slserve frames, FP32 [1, 4]": lambda: framed(args.n, np.ones((1, 4), np.float32)),
        "slserve frames, FP32 [1, 384]": lambda: framed(args.n, np.ones((1, 384), np.float32)),
        "slserve frames, FP32 [1024, 1024] (4 MB)": lambda: framed(
            max(50, args.n // 50), np.ones((1024, 1024), np.float32)
        ),
    }
    results = {}
    for name, case in cases.items():
        times = case()[10:]
        results[name] = {"p50": pct(times, 50), "p99": pct(times, 99)}
    save("transport", results)
    print(f"\nMachine: {machine()}.\n")
    print("| round trip | p50 (µs) | p99 (µs) |")
    print("| --- | ---: | ---: |")
    for name, r in results.items():
        print(f"| {name} | {r['p50']:.0f} | {r['p99']:.0f} |")


if __name__ == "__main__":
    main()

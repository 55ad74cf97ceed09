"""A function instance: one OS process forked from its family's template, serving one function's requests.

The loop is single-threaded and never idles on purpose: it blocks for the first request, takes every other
request already waiting on the socket, runs them as exact batches (`runtime.batching`), answers, and repeats.
Requests that arrive while the model runs form the next batch by themselves, so at concurrency 1 nothing
waits; `max_delay_ms` is spent waiting for more only while traffic is concurrent (the last batch held more
than one request).
"""

from __future__ import annotations

import os
import select
import socket
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from slserve.errors import SlserveError
from slserve.framing import FrameAssembler
from slserve.platform.wire import Kind, Message, decode, encode, error_meta
from slserve.runtime.base import Preloaded, Runtime, load_runtime
from slserve.runtime.batching import Call, ExactBatcher, merge, split
from slserve.runtime.tensors import example_inputs
from slserve.snapshot import ArtifactStore


@dataclass(frozen=True)
class InstanceConfig:
    function: str
    artifacts: Path
    digest: str
    device: str | None = None


class Connection:
    """Frames over a blocking unix socket, read straight into the frame assembler's buffers."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.frames = FrameAssembler()
        self.ready: list[Message] = []
        self.closed = False
        self.maybe_more = False  # the last read filled its buffer: more may be waiting in the socket

    def receive(self, timeout: float | None) -> list[Message]:
        """Whatever complete messages arrive within `timeout` (None: block for at least one)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self.ready and not self.closed:
            wait = None if deadline is None else max(0.0, deadline - time.monotonic())
            if not self._fill(wait):
                break
        while not self.closed and self.maybe_more and self._fill(0.0):  # and everything already waiting
            pass
        messages, self.ready = self.ready, []
        return messages

    def _fill(self, timeout: float | None) -> bool:
        """Read what the socket has; wait up to `timeout` (None: forever) for something to arrive."""
        buffer = self.frames.buffer()
        try:
            if timeout is None:
                n = self.sock.recv_into(buffer)
            elif timeout == 0.0:
                n = self.sock.recv_into(buffer, 0, socket.MSG_DONTWAIT)
            else:
                readable, _, _ = select.select([self.sock], [], [], timeout)
                if not readable:
                    return False
                n = self.sock.recv_into(buffer)
        except BlockingIOError:
            self.maybe_more = False
            return False
        # A read that did not fill its buffer took all the socket had (at concurrency 1, always): asking again
        # would only cost a syscall and an exception.
        self.maybe_more = n == len(buffer)
        if not n:
            self.closed = True
            return False
        self.ready.extend(decode(body) for body in self.frames.received(n))  # tensors are views into `body`
        return True

    def send(self, msg: Message) -> None:
        parts = [memoryview(p).cast("B") for p in encode(msg)]
        while parts:
            sent = self.sock.sendmsg(parts)
            while parts and sent >= parts[0].nbytes:
                sent -= parts[0].nbytes
                parts.pop(0)
            if parts and sent:
                parts[0] = parts[0][sent:]


class InstanceLoop:
    def __init__(self, conn: Connection, runtime: Runtime, batcher: ExactBatcher, max_delay_ms: float) -> None:
        self.conn = conn
        self.runtime = runtime
        self.batcher = batcher
        self.max_batch = batcher.max_rows
        self.max_delay = max_delay_ms / 1000.0
        self.last_batch = 1

    def run(self) -> None:
        while not self.conn.closed:
            messages = self.conn.receive(None)
            requests = [m for m in messages if m.kind is Kind.INFER]
            if self.max_batch > 1 and self.max_delay > 0 and self.last_batch > 1:
                deadline = time.monotonic() + self.max_delay
                while len(requests) < self.max_batch and (left := deadline - time.monotonic()) > 0:
                    more = self.conn.receive(left)
                    messages.extend(more)
                    requests.extend(m for m in more if m.kind is Kind.INFER)
            if requests:
                self.serve(requests)
            if any(m.kind is Kind.STOP for m in messages):
                return

    def serve(self, requests: list[Message]) -> None:
        prepared: list[tuple[Message, dict[str, np.ndarray]]] = []
        for msg in requests:
            try:
                started = time.perf_counter()
                request_feeds = self.runtime.prepare(msg.tensors)
                prepared.append((msg, request_feeds))
                msg.meta["prepare_ms"] = (time.perf_counter() - started) * 1000
                msg.meta["tokens"] = self.runtime.tokens(request_feeds)
            except SlserveError as e:
                self.conn.send(Message(Kind.ERROR, msg.request_id, dict(error_meta(e.status, e.code, e.message))))
        calls = self.batcher.plan([f for _, f in prepared])
        self.last_batch = max((len(c.items) for c in calls), default=1)
        for call in calls:
            self._run_call([prepared[i] for i in call.items], call)

    def _run_call(self, items: list[tuple[Message, dict[str, np.ndarray]]], call: Call) -> None:
        start = time.perf_counter()
        try:
            merged, counts = merge([f for _, f in items], call.size)
            parts = split(self.runtime.run(merged), counts)
            outputs = [self.runtime.finish(p) for p in parts]
        except SlserveError as e:
            for msg, _ in items:
                self.conn.send(Message(Kind.ERROR, msg.request_id, dict(error_meta(e.status, e.code, e.message))))
            return
        compute_ms = (time.perf_counter() - start) * 1000
        for (msg, _), out in zip(items, outputs, strict=True):
            wanted = msg.meta.get("outputs")
            tensors = {k: np.ascontiguousarray(v) for k, v in out.items() if wanted is None or k in wanted}
            meta = {
                "compute_ms": compute_ms + msg.meta.get("prepare_ms", 0.0),
                "batch_size": len(items),
                "tokens": msg.meta.get("tokens"),
            }
            self.conn.send(Message(Kind.RESULT, msg.request_id, meta, tensors))


def serve_instance(sock: socket.socket, config: InstanceConfig, preloaded: Preloaded | None = None) -> int:
    """Load, warm up, report ready, serve until told to stop or the gateway goes away. Returns an exit code."""
    conn = Connection(sock)
    started = time.perf_counter()
    try:
        artifact = ArtifactStore(config.artifacts).open(config.digest)
        runtime = load_runtime(artifact, config.device, preloaded)
        loaded = time.perf_counter()
        batching = artifact.manifest.spec.batching
        floors = artifact.manifest.build.batch_floors.get(runtime.device, {})  # none measured: never merge
        batcher = ExactBatcher(batching.max_batch_size, floors)
        loop = InstanceLoop(conn, runtime, batcher, batching.max_delay_ms)
        # Warm up through the same path requests take (lazy initialization happens here, not in a request).
        feeds = runtime.prepare(example_inputs(runtime.spec.signature))
        merged, counts = merge([feeds], batcher.plan([feeds])[0].size)
        runtime.finish(split(runtime.run(merged), counts)[0])
    except SlserveError as e:
        conn.send(Message(Kind.ERROR, 0, dict(error_meta(e.status, e.code, f"{config.function}: {e.message}"))))
        return 1
    except Exception as e:  # a broken model must not look like a hung start: say what happened
        message = f"{config.function}: instance failed to start: {type(e).__name__}: {e}"
        conn.send(Message(Kind.ERROR, 0, dict(error_meta(500, "instance_start_failed", message))))
        return 1
    ready = time.perf_counter()
    meta = {
        "pid": os.getpid(),
        "load_ms": (loaded - started) * 1000,
        "warmup_ms": (ready - loaded) * 1000,
        "device": runtime.device,
        "preloaded": preloaded is not None,  # its template had loaded this build before the fork
    }
    conn.send(Message(Kind.READY, 0, meta))
    loop.run()
    return 0

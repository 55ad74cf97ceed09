"""A function instance: one OS process forked from its family's template, serving one function's requests.

The loop is single-threaded and never idles on purpose: it blocks for the first request, takes every other
request already waiting on the socket, runs them as exact batches (`runtime.batching`), answers, and repeats.
An exception in the processor or the model fails the request that raised it (a merged call that raises is run
again request by request, so the others are answered); the process serves on. A request the gateway cancelled,
or whose deadline passed, is dropped if its model call has not begun.
Requests that arrive while the model runs form the next batch by themselves, so at concurrency 1 nothing
waits; `max_delay_ms` is spent waiting for more only while traffic is concurrent (the last batch held more
than one request).
"""

from __future__ import annotations

import os
import select
import socket
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np

from slserve.errors import InferenceFailed, SlserveError
from slserve.framing import FrameAssembler
from slserve.platform.wire import Kind, Message, decode, encode, error_meta
from slserve.runtime.base import Preloaded, RequestContext, Runtime, Tensors, load_runtime
from slserve.runtime.batching import ExactBatcher, merge, run_call, shape_key, split
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


@dataclass
class Item:
    """One request prepared for a model call."""

    msg: Message
    feeds: dict[str, np.ndarray]
    context: RequestContext

    @property
    def id(self) -> int:
        return self.msg.request_id


IDLE_BEFORE_PREPARING_S = 0.2  # an instance that started with nothing to do makes its sessions this soon


class InstanceLoop:
    def __init__(
        self,
        conn: Connection,
        runtime: Runtime,
        batcher: ExactBatcher,
        max_delay_ms: float,
        function: str,
        grants: Mapping[str, Mapping[str, int]] | None = None,
        prepare_threads: Callable[[], None] | None = None,
    ) -> None:
        self.conn = conn
        # Sessions for more threads are made once the instance first has nothing waiting: made at its start,
        # they took a core from the burst it was started for, on the way of every request in it.
        self.prepare_threads = prepare_threads
        self.runtime = runtime
        self.grants = grants or {}  # shape -> call size -> the most threads proven exact (the build's)
        self.set_threads: Callable[[int], None] | None = getattr(runtime, "set_threads", None) if grants else None
        self.threads = runtime.spec.resources.threads  # the serving count, always exact
        self.batcher = batcher
        self.function = function
        self.max_batch = batcher.max_rows
        self.max_delay = max_delay_ms / 1000.0
        self.last_batch = 1
        self.waiting: list[Message] = []  # requests read, not yet taken into a round
        self.unstarted: set[int] = set()  # requests of this round whose model call has not begun
        self.stopping = False
        self.rounds = 0  # rounds served

    def run(self) -> None:
        while True:
            if not self.waiting:
                if self.stopping or self.conn.closed:
                    return
                if self.prepare_threads is not None:
                    # the first moment nothing waits after a round (a burst's share done), or a quiet start
                    arrived = [] if self.rounds else self.conn.receive(IDLE_BEFORE_PREPARING_S)
                    if not arrived:
                        self.prepare_threads()
                        self.prepare_threads = None
                        continue
                    self._take(arrived)
                else:
                    self._take(self.conn.receive(None))
            if self.max_batch > 1 and self.max_delay > 0 and self.last_batch > 1:
                deadline = time.monotonic() + self.max_delay
                while len(self.waiting) < self.max_batch and (left := deadline - time.monotonic()) > 0:
                    if self.conn.closed:
                        break
                    self._take(self.conn.receive(left))
            requests, self.waiting = self.waiting, []
            if requests:
                self.serve(requests)
                self.rounds += 1

    def _take(self, messages: list[Message]) -> None:
        """Requests wait for the next round; a cancel drops its request if it has not started; a stop lets
        everything already here finish."""
        for msg in messages:
            if msg.kind is Kind.INFER:
                self.waiting.append(msg)
            elif msg.kind is Kind.CANCEL:
                self._cancel(msg.request_id)
            elif msg.kind is Kind.STOP:
                self.stopping = True

    def _cancel(self, request_id: int) -> None:
        for msg in self.waiting:
            if msg.request_id == request_id:
                self.waiting.remove(msg)
                self._drop(request_id, "cancelled")
                return
        if request_id in self.unstarted:
            self.unstarted.discard(request_id)
            self._drop(request_id, "cancelled")
        # else: it is running or answered already

    def _drop(self, request_id: int, reason: str) -> None:
        self.conn.send(Message(Kind.DROPPED, request_id, {"reason": reason}))

    def _expired(self, msg: Message, now: float) -> bool:
        deadline = msg.meta.get("deadline")
        if deadline is not None and now >= deadline:  # CLOCK_MONOTONIC: one clock for every process of the host
            self._drop(msg.request_id, "deadline")
            return True
        return False

    def serve(self, requests: list[Message]) -> None:
        """Prepare each request, plan exact batches (a request retried after a crash runs alone), run them.
        Between calls, cancels that arrived meanwhile are taken in, and no call starts past its deadline."""
        now = time.monotonic()
        prepared: list[Item] = []
        for msg in requests:
            if self._expired(msg, now):
                continue
            try:
                started = time.perf_counter()
                context = RequestContext(options=msg.meta.get("options") or {})
                item = Item(msg, self.runtime.prepare(msg.tensors, context), context)
                msg.meta["prepare_ms"] = (time.perf_counter() - started) * 1000
                msg.meta["tokens"] = self.runtime.tokens(item.feeds)
            except Exception as e:  # processor code raised: this request fails, the instance serves on
                self._fail(msg, e)
                continue
            prepared.append(item)
        together = [i for i in prepared if not i.msg.meta.get("alone")]
        calls = [([together[j] for j in c.items], c.size) for c in self.batcher.plan([i.feeds for i in together])]
        calls += [([i], self._size_alone(i)) for i in prepared if i.msg.meta.get("alone")]
        self.last_batch = max((len(items) for items, _ in calls), default=1)
        self.unstarted = {i.id for i in prepared}
        for n, (items, size) in enumerate(calls):
            if n:  # the first call's requests were read just now; later ones may have been cancelled meanwhile
                self._take(self.conn.receive(0))
            now = time.monotonic()
            live = [i for i in items if i.id in self.unstarted and not self._expired(i.msg, now)]
            self.unstarted.difference_update(i.id for i in items)
            if len(live) == len(items):
                self._run_call(live, size)
            elif live:
                for planned in self.batcher.plan([i.feeds for i in live]):
                    self._run_call([live[j] for j in planned.items], planned.size)
        self.unstarted = set()

    def _size_alone(self, item: Item) -> int:
        return self._size_of(item.feeds)

    def _size_of(self, feeds: Tensors) -> int:
        return self.batcher.plan([feeds])[0].size

    def _run_call(self, items: list[Item], size: int) -> None:
        granted = min(int(i.msg.meta.get("threads", 1)) for i in items)

        def use_threads(feeds: Tensors, size: int) -> None:
            """More threads where the build proved them exact for this shape and call size, as many as granted."""
            if self.set_threads is not None and self.prepare_threads is None:  # never made on a request's way
                proven = self.grants.get(shape_key(feeds), {}).get(str(size), self.threads)
                self.set_threads(max(self.threads, min(granted, proven)))

        outcomes = run_call(self.runtime, [i.feeds for i in items], size, self._size_of, use_threads)
        for item, outcome in zip(items, outcomes, strict=True):
            msg = item.msg
            if outcome.outputs is None:
                assert outcome.error is not None
                self._fail(msg, outcome.error)
                continue
            wanted = msg.meta.get("outputs")
            tensors = {k: np.ascontiguousarray(v) for k, v in outcome.outputs.items() if wanted is None or k in wanted}
            meta = {
                "compute_ms": outcome.compute_ms + msg.meta.get("prepare_ms", 0.0),
                "batch_size": outcome.batch_size,
                "tokens": msg.meta.get("tokens"),
            }
            if item.context.notes:
                meta["notes"] = item.context.notes
            self.conn.send(Message(Kind.RESULT, msg.request_id, meta, tensors))

    def _fail(self, msg: Message, error: Exception) -> None:
        if not isinstance(error, SlserveError):  # the model's or processor's own exception, named for the caller
            error = InferenceFailed(f"{self.function}: {type(error).__name__}: {error}")
        self.conn.send(Message(Kind.ERROR, msg.request_id, dict(error_meta(error.status, error.code, error.message))))


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
        grants = artifact.manifest.build.thread_grants.get(runtime.device, {})
        batcher = ExactBatcher(batching.max_batch_size, floors)
        make_sessions = getattr(runtime, "prepare_threads", None)  # ONNX Runtime: a session per thread count
        thread_counts = {n for sizes in grants.values() for n in sizes.values()}
        prepare_threads = partial(make_sessions, thread_counts) if make_sessions and thread_counts else None
        loop = InstanceLoop(conn, runtime, batcher, batching.max_delay_ms, config.function, grants, prepare_threads)
        # Warm up through the same path requests take (lazy initialization happens here, not in a request).
        feeds = runtime.prepare(example_inputs(runtime.spec.signature))
        merged, counts = merge([feeds], batcher.plan([feeds])[0].size)
        runtime.finish(split(runtime.run(merged), counts)[0])
    except SlserveError as e:  # the gateway names the function
        conn.send(Message(Kind.ERROR, 0, dict(error_meta(e.status, e.code, e.message))))
        return 1
    except Exception as e:  # a broken model must not look like a hung start: say what happened
        message = f"instance failed to start: {type(e).__name__}: {e}"
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

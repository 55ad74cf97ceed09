"""Concurrent requests to one container, batched exactly: the local instance's rounds, on an event loop.

A container that takes many requests at once (a Modal class with `@modal.concurrent`) gathers the ones that
arrive together into a round (waiting up to `batching.max_delay_ms` once batching has paid off), prepares them,
plans the round with the same `ExactBatcher` and floors as a local instance, and runs its model calls one at a
time on one thread (a GPU's calls are serial anyway; a second thread would only contend). An answer therefore
does not depend on what shared its call, on any target.
"""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from slserve.errors import GatewayTimeout
from slserve.platform.v2 import V2Request
from slserve.remote.model import ModelFunction, failure
from slserve.runtime.base import RequestContext, Tensors
from slserve.runtime.batching import Outcome, rows_of, run_call


@dataclass
class _Waiting:
    v2: V2Request
    deadline: float | None  # time.monotonic() past which nobody wants the answer: never started then
    future: asyncio.Future[Outcome]
    context: RequestContext = field(default_factory=RequestContext)
    tokens: int | None = None


@dataclass(frozen=True)
class Answered:
    outcome: Outcome
    tokens: int | None
    notes: dict[str, object]


class Rounds:
    def __init__(self, model: ModelFunction) -> None:
        self.model = model
        self.max_rows = model.batcher.max_rows
        self.max_delay = model.function.spec.batching.max_delay_ms / 1000.0
        self.waiting: list[_Waiting] = []
        self.wake = asyncio.Event()
        self.thread = ThreadPoolExecutor(1, thread_name_prefix="model")
        self.last_batch = 1  # requests in the previous round's largest call: wait for company only when it helps
        self._task: asyncio.Task[None] | None = None

    async def infer(self, v2: V2Request, deadline: float | None) -> Answered:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._serve())
        waiting = _Waiting(v2, deadline, asyncio.get_running_loop().create_future())
        waiting.context = RequestContext(options=v2.request.options)
        self.waiting.append(waiting)
        self.wake.set()
        outcome = await waiting.future  # cancelled (the caller left): the round skips it if not started
        return Answered(outcome, waiting.tokens, waiting.context.notes)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
        self.thread.shutdown(wait=False, cancel_futures=True)

    async def _serve(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self.wake.wait()
            self.wake.clear()
            if self.max_rows > 1 and self.max_delay > 0 and self.last_batch > 1 and self._rows() < self.max_rows:
                await asyncio.sleep(self.max_delay)
            taken = [w for w in self.waiting if not w.future.done()]
            self.waiting = []
            if not taken:
                continue
            outcomes = await loop.run_in_executor(self.thread, self._round, taken)
            for waiting, outcome in zip(taken, outcomes, strict=True):
                if not waiting.future.done():
                    waiting.future.set_result(outcome)
            if self.waiting:
                self.wake.set()

    def _rows(self) -> int:
        return sum(rows_of(w.v2.request.inputs) for w in self.waiting if w.v2.request.inputs)

    def _round(self, taken: list[_Waiting]) -> list[Outcome]:
        """On the model thread: prepare, plan, run each call; an outcome per request, in order."""
        runtime, name = self.model.runtime, self.model.function.name
        outcomes: list[Outcome | None] = [None] * len(taken)
        prepared: list[tuple[int, Tensors, float]] = []
        now = time.monotonic()
        for i, waiting in enumerate(taken):
            if waiting.deadline is not None and now >= waiting.deadline:
                outcomes[i] = Outcome(None, GatewayTimeout(f"{name}: its deadline passed before it ran"), 0.0, 0)
                continue
            started = time.perf_counter()
            try:
                feeds = runtime.prepare(waiting.v2.request.inputs, waiting.context)
                waiting.tokens = runtime.tokens(feeds)
            except Exception as e:  # the processor's own: this request fails, the others run
                outcomes[i] = Outcome(None, failure(name, e), 0.0, 0)
                continue
            prepared.append((i, feeds, (time.perf_counter() - started) * 1000))
        calls = [[prepared[j] for j in call.items] for call in self.model.batcher.plan([f for _, f, _ in prepared])]
        self.last_batch = max((len(call) for call in calls), default=1)
        while calls:
            members = [m for m in calls.pop(0) if not taken[m[0]].future.done()]  # callers gone: not run
            group = [f for _, f, _ in members]
            planned = self.model.batcher.plan(group)
            if len(planned) > 1:  # fewer than planned: plan what is left again (as a local instance does)
                calls[:0] = [[members[j] for j in call.items] for call in planned]
                continue
            if not planned:
                continue
            for (i, _, prepare_ms), outcome in zip(
                members, run_call(runtime, group, planned[0].size, self.model.size_alone), strict=True
            ):
                error = None if outcome.error is None else failure(name, outcome.error)
                outcomes[i] = Outcome(outcome.outputs, error, outcome.compute_ms + prepare_ms, outcome.batch_size)
        gone = Outcome(None, GatewayTimeout(f"{name}: its caller left before it ran"), 0.0, 0)
        return [gone if o is None else o for o in outcomes]

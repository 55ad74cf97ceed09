"""One function's instances on this machine: a bounded queue, dispatch, autoscaling, retries.

Everything here runs on the gateway's event loop; instances are processes reached over unix sockets. The module
is long for the reason `FunctionPool` says: one owner per function's state; the rules it applies live beside it.

What a request may cost others is bounded here:
- a request whose caller stopped waiting is taken off the queue, or cancelled on its instance (dropped there if
  its model call has not begun); an instance whose every request was given up `ABANDONED_STOP_S` ago is
  stopped, so no core computes for nobody;
- an instance over the function's `resources.memory_mb` (resident memory) is stopped, never the host's OOM
  killer's choice;
- the requests an instance held when it died are retried once each, alone on an instance (nothing merged with
  it, nothing beside it); a request that kills that instance too is refused as a poison request, and the others
  are answered.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from pathlib import Path

from slserve import host
from slserve.errors import (
    ClientClosedRequest,
    OverMemoryLimit,
    PoisonRequest,
    RuntimeUnavailable,
    ShuttingDown,
    SlserveError,
)
from slserve.keepalive import IdleGaps, Rhythm
from slserve.platform.base import Deployed, FunctionStatus, InferRequest, InferResult
from slserve.platform.local.admission import check_room
from slserve.platform.local.autoscaler import (
    InstanceLoad,
    decide,
    desired_instances,
)
from slserve.platform.local.budget import Admission, MemoryBudget, refusal
from slserve.platform.local.cores import HostCores
from slserve.platform.local.deaths import PoisonMemory, after_death
from slserve.platform.local.dispatch import Dispatcher
from slserve.platform.local.instance_handle import Instance, InstanceState, Pending, fail
from slserve.platform.local.processes import Processes, kill
from slserve.platform.local.replies import Speed, answer
from slserve.platform.local.starts import START_RETRY_S, StartFailures
from slserve.platform.local.template_handle import Template
from slserve.platform.wire import Kind, Message
from slserve.spec import FunctionSpec

ABANDONED_STOP_S = 1.0  # an instance computing only for callers gone this long is stopped
_request_ids = itertools.count(1)
log = logging.getLogger("slserve.platform")


def slots(spec: FunctionSpec) -> int:
    """Requests one instance may hold at once: enough to fill a batch."""
    return max(spec.scaling.target_concurrency, spec.batching.max_batch_size)


class FunctionPool:
    """The one owner of a function's state on this machine: its instances, queue, counters and errors. It is
    longer than a class should be because every event that changes that state (a request, a reply, an instance
    ready or gone, a redeploy, an artifact check, the drain) must change it in one place, on the event loop; the
    rules those events apply each live in a module of their own (`admission`, `autoscaler`, `dispatch`,
    `replies`, `deaths`, `starts`, `budget`)."""

    def __init__(
        self,
        function: Deployed,
        template: Template | None,
        artifacts: Path,
        cores: HostCores | None = None,
        budget: MemoryBudget | None = None,
        gaps: IdleGaps | None = None,
    ) -> None:
        """`gaps`: its idle gaps as last recorded (a restarted gateway goes on learning from them)."""
        self.function = function
        self.spec = function.spec
        self.digest = function.digest
        self.error = function.error  # why it cannot serve (not built, stale, failing to start); None when it can
        self.artifact_error: str | None = None  # why its artifact may not be served (a blob corrupt or missing)
        self.checked: str | None = None  # the digest whose blobs were last found intact, or found not to be
        self.instances: dict[int, Instance] = {}
        grant = cores.grant if cores is not None else lambda _: 1
        self.dispatcher = Dispatcher(function.name, self.instances, slots(self.spec), self.digest, grant)
        self.poison = PoisonMemory()
        self.closing = False
        self.cold_starts = 0
        self.served = 0
        self.failed = 0
        self.starts = StartFailures(function.name)
        self.speed = Speed()  # one instance's rows per second
        self.device: str | None = None  # where its instances run, once one has loaded
        self.budget = budget  # the host's memory, shared with every other function (None: unbounded)
        self.rhythm = Rhythm(self.spec.scaling.idle_seconds, gaps)  # its idle gaps choose its keep-alive
        self.cold_start_s = 0.0  # its latest instance's cold start
        self._numbers = itertools.count(1)
        self.processes = Processes(function.name, artifacts, template, self._on_ready, self._on_reply, self._on_gone)

    # --- requests ------------------------------------------------------------------------------------------

    async def infer(self, request: InferRequest) -> InferResult:
        if self.closing:
            raise ShuttingDown(f"{self.function.name}: the server is shutting down; retry on another server")
        if self.digest is None:
            raise RuntimeUnavailable(self.error or f"{self.function.name} has no artifact")
        if self.artifact_error is not None:
            raise RuntimeUnavailable(self.artifact_error)
        self.poison.check(request)
        self._called()
        if self.error and self.starts.recent() and not self.instances:
            raise RuntimeUnavailable(f"{self.error} (retrying in at most {START_RETRY_S:.0f} s)")
        check_room(
            self.function.name, self.spec, self.dispatcher, self.instances.values(), self.speed.rows_per_s, request
        )
        loop = asyncio.get_running_loop()
        rows = int(next(iter(request.inputs.values())).shape[0]) if request.inputs else 1
        pending = Pending(request, loop.create_future(), time.monotonic(), next(_request_ids), rows=rows)
        cancellation = request.cancellation

        def abandon() -> None:
            gone = ClientClosedRequest(f"{self.function.name}: the client went away; not run")
            self.dispatcher.abandon(pending, gone)

        if cancellation is not None:
            cancellation.add_callback(abandon)
        self.dispatcher.enqueue(pending)
        if self.dispatcher.queue or self._may_scale_up():
            self.autoscale()
        try:
            return await pending.future
        except asyncio.CancelledError:  # the request timed out, or the server is stopping
            self.dispatcher.abandon(pending, None)
            raise
        finally:
            if cancellation is not None:
                cancellation.remove_callback(abandon)

    def _called(self) -> None:
        self.rhythm.called(time.monotonic(), self.cold_start_s)
        if self.budget is not None:
            self.budget.called(self, self.cold_start_s * 1000)

    def warm_capacity(self) -> int:
        return self.dispatcher.warm_capacity()

    def gives_gpu(self) -> bool:
        """Whether it runs on a GPU: as its instances report, or before any has loaded, whether the host has one."""
        return self.device != "cpu" if self.device is not None else host.has_gpu()

    def _may_scale_up(self) -> bool:
        """With an empty queue, whether the load in flight wants more instances than are running (the
        autoscaler's own rule); if not, a request an instance took at once skips the full decision (scale-downs
        are the ticker's)."""
        ready = in_flight = 0
        for i in self.instances.values():
            if i.state is InstanceState.IDLE or i.state is InstanceState.BUSY:
                ready += 1
                in_flight += len(i.in_flight)
        return desired_instances(self.spec.scaling, in_flight) > ready

    def _on_reply(self, inst: Instance, msg: Message) -> None:
        pending = inst.in_flight.pop(msg.request_id, None)
        if not inst.in_flight:
            inst.exclusive = False
            if inst.state is InstanceState.BUSY:
                inst.state, inst.idle_since = InstanceState.IDLE, time.monotonic()
        if pending is None:
            return
        inst.served += 1
        if msg.kind is Kind.RESULT:
            self.served += 1
            self.speed.measure(msg)
        elif msg.kind is not Kind.DROPPED:
            self.failed += 1
        answer(self.function.name, inst, pending, msg)
        self.dispatcher.dispatch()
        if not self.dispatcher.waiting and not any(i.in_flight for i in self.instances.values()):
            self.rhythm.went_idle(time.monotonic())

    # --- instances -----------------------------------------------------------------------------------------

    def autoscale(self) -> None:
        if self.processes.template is None or self.digest is None or self.closing:
            return
        if self.error and self.starts.given_up() and not self.dispatcher.waiting:
            return  # a function that keeps failing to start waits for the next request to try again
        now = time.monotonic()
        ready: list[InstanceLoad] = []
        starting = previous_load = 0
        for i in self.instances.values():
            if i.state is InstanceState.STARTING:
                starting += 1
            elif i.state in (InstanceState.IDLE, InstanceState.BUSY):
                if i.digest == self.digest:
                    ready.append(InstanceLoad(i.number, len(i.in_flight), i.idle_since))
                else:  # the previous build's: its load is demand for this build; it stops once idle long enough
                    previous_load += len(i.in_flight)
                    idle_since = i.idle_since
                    if idle_since is not None and now - idle_since >= self.spec.scaling.idle_seconds:
                        self._retire(i)
        waiting = self.dispatcher.waiting + previous_load
        decision = decide(self.spec.scaling, ready, starting, waiting, now)
        start = decision.start
        prewarm = not start and not ready and not starting and self.rhythm.prewarm_due(now)
        if prewarm and self.budget is not None and self.budget.learned and self.budget.fits(self):
            start = 1  # ahead of the call its idle gaps predict, where memory allows without stopping another
        for _ in range(start):
            if not self._launch():
                break
        if not start and self.budget is not None:
            self.budget.settled(self)
        for number in decision.stop:
            self._retire(self.instances[number])

    def _launch(self) -> bool:
        """Start an instance, if the host's memory budget has room for it (else room is being made, or the
        requests waiting are refused); returns whether it started."""
        assert self.digest is not None
        if self.budget is not None:
            admission = self.budget.admit(self)
            if admission is not Admission.YES:
                refused = refusal(self.budget, self, admission)
                if refused is not None:
                    self._fail_queue(refused)
                return False
        inst = Instance(self.function.name, next(self._numbers), self.digest, self.spec.model.version)
        self.instances[inst.number] = inst
        self.processes.start(inst)
        return True

    # --- the memory budget's view (budget.Tenant) ----------------------------------------------------------

    @property
    def name(self) -> str:
        return self.function.name

    @property
    def family(self) -> str:
        return self.spec.framework.value

    def evictable(self) -> list[Instance]:
        """Idle instances beyond `min_instances` (the longest idle first)."""
        idle = [i for i in self.instances.values() if i.state is InstanceState.IDLE and not i.in_flight]
        idle.sort(key=lambda i: i.idle_since or 0.0)
        busy = sum(1 for i in self.instances.values() if i.state is InstanceState.BUSY)
        kept = max(0, self.spec.scaling.min_instances - busy)  # busy instances count towards the minimum
        return idle[: max(0, len(idle) - kept)]

    def expired(self, now: float) -> list[Instance]:
        """Its evictable instances idle past the window its idle gaps chose: the first to go when memory is
        wanted."""
        limit = self.rhythm.idle_limit_s(now)
        return [i for i in self.evictable() if i.idle_since is not None and now - i.idle_since >= limit]

    def evict(self, inst: Instance) -> None:
        self._retire(inst)

    def _retire(self, inst: Instance) -> None:
        inst.state = InstanceState.DRAINING
        if inst.channel is not None:
            inst.channel.send(Message(Kind.STOP))

    def use_template(self, template: Template) -> None:
        self.processes.use(template)

    def redeploy(self, function: Deployed, template: Template | None) -> None:
        """Serve `digest` from now on, without a cold start for anyone: each running instance gets a
        replacement, and keeps serving until one is ready (then it finishes what it holds and stops). If the
        new build cannot start, the previous one keeps serving. Instances still starting for the previous
        build stop at once."""
        if template is not None:
            self.use_template(template)
        assert function.digest is not None
        self.function, self.spec, self.digest = function, function.spec, function.digest
        self.rhythm.cap_s = self.spec.scaling.idle_seconds
        self.dispatcher.slots, self.dispatcher.digest = slots(self.spec), self.digest
        self.error, self.artifact_error = None, None
        self.starts.started()
        serving = 0
        for inst in list(self.instances.values()):
            if inst.state is InstanceState.STARTING:
                self._retire(inst)
            elif inst.state in (InstanceState.IDLE, InstanceState.BUSY):
                serving += 1
        if self.processes.template is not None and not self.closing:
            for _ in range(min(serving, self.spec.scaling.max_instances)):
                self._launch()
        self.autoscale()

    def _on_ready(self, inst: Instance, msg: Message) -> None:
        if inst.state is InstanceState.DRAINING:  # retired while starting (a redeploy): stop it now
            self._retire(inst)
            return
        inst.ready_at = inst.idle_since = time.monotonic()
        self.cold_start_s = inst.ready_at - inst.spawned_at
        inst.device = str(msg.meta.get("device"))
        inst.load_ms = float(msg.meta.get("load_ms", 0.0)) + float(msg.meta.get("warmup_ms", 0.0))
        inst.preloaded = bool(msg.meta.get("preloaded"))
        first, self.device = self.device is None, inst.device
        if self.spec.resources.gpu and inst.device == "cpu" and first:  # said once per function, not per instance
            log.warning(
                "function %s names a GPU (%s) but this host has none: it runs on the CPU, slower than its tier "
                "promises",
                self.function.name,
                self.spec.resources.gpu,
            )
        if inst.state is InstanceState.STARTING:
            inst.state = InstanceState.IDLE
        replaced = [
            i for i in self.instances.values() if i.digest != inst.digest and i.state is not InstanceState.DRAINING
        ]
        if replaced:  # a redeploy's replacement: one instance of the previous build stops
            self._retire(min(replaced, key=lambda i: len(i.in_flight)))
        self.cold_starts += 1
        self.starts.started()
        self.error = None
        self.dispatcher.dispatch()
        self.autoscale()

    def police(self, now: float) -> None:
        """Stop the instances that harm others: over the memory limit, or computing only for callers gone; and
        end those whose process is gone unheard."""
        self.processes.reconcile()
        limit = self.spec.resources.memory_mb * 1024 * 1024
        for inst in list(self.instances.values()):
            if inst.pid is None or inst.stopped_because is not None:
                continue
            rss = inst.rss_bytes()
            if rss is not None and rss > limit:
                inst.over_memory = True
                self.processes.stop(
                    inst,
                    f"its resident memory reached {rss >> 20} MB, over the function's limit of "
                    f"{self.spec.resources.memory_mb} MB (resources.memory_mb)",
                )
            elif inst.abandoned_by_all(now, ABANDONED_STOP_S):
                self.processes.stop(inst, f"every request it held was given up more than {ABANDONED_STOP_S:g} s ago")

    async def _on_gone(self, inst: Instance, start_error: SlserveError | None) -> None:
        was_ready = inst.ready_at is not None
        expected = inst.state is InstanceState.DRAINING or self.closing
        inst.state = InstanceState.DEAD
        self.instances.pop(inst.number, None)
        status = await self.processes.ended(inst, make_sure=not expected)  # a process stuck after its socket closed
        orphans = list(inst.in_flight.values())
        inst.in_flight.clear()
        if not expected and was_ready:
            held = f", holding {len(orphans)} request(s)" if orphans else ""
            log.warning(
                "function %s: instance %s (pid %s) ended (%s)%s", self.function.name, inst.name, inst.pid, status, held
            )
        for pending in orphans:
            self._orphaned(pending, inst, status)
        if not was_ready and not expected:
            previous = any(i.ready_at is not None and i.digest != inst.digest for i in self.instances.values())
            error = self.starts.failed(inst, start_error, status, previous)
            if error != self.error:
                log.error("%s", error)
            self.error = error
            if start_error is not None or self.starts.given_up():
                self._fail_queue(RuntimeUnavailable(self.error))
        self.dispatcher.dispatch()
        self.autoscale()
        if self.budget is not None:
            self.budget.released()

    def _orphaned(self, pending: Pending, inst: Instance, status: str) -> None:
        if pending.future.done():
            return
        error = after_death(pending, inst, status, self.function.name, self.spec.resources.memory_mb)
        if error is None:
            self.dispatcher.retry(pending)
            return
        self.failed += 1
        if isinstance(error, PoisonRequest | OverMemoryLimit):
            self.poison.remember(pending.request, error)
        fail(pending, error)

    def _fail_queue(self, error: SlserveError) -> None:
        self.failed += self.dispatcher.fail_all(error)

    # --- lifecycle -----------------------------------------------------------------------------------------

    async def drain(self, timeout: float) -> None:
        """Stop taking requests, let the accepted ones finish, then stop every instance."""
        self.closing = True
        deadline = time.monotonic() + timeout
        while self._holds_work() and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        self._fail_queue(ShuttingDown(f"{self.function.name}: the server shut down before this request could run"))
        for inst in list(self.instances.values()):
            self._retire(inst)
        await self.processes.wait(timeout=5)
        for inst in list(self.instances.values()):
            if inst.pid is not None:
                kill(inst.pid)

    def _holds_work(self) -> bool:
        return bool(self.dispatcher.waiting or any(i.in_flight for i in self.instances.values()))

    def artifact_checked(self, digest: str, problem: str | None) -> None:
        """The result of checking `digest`'s blobs against their checksums. A corrupt artifact is never served:
        its instances finish what they hold and stop, and no new one starts until a rebuild."""
        if digest != self.digest:
            return  # redeployed meanwhile: the new build gets its own check
        if problem is not None and problem != self.artifact_error:
            log.error("function %s cannot serve: %s", self.function.name, problem)
            for inst in list(self.instances.values()):
                if inst.digest == digest and inst.state is not InstanceState.DRAINING:
                    self._retire(inst)
        elif problem is None and self.artifact_error is not None:
            log.info("function %s: its artifact is intact again", self.function.name)
        self.checked, self.artifact_error = digest, problem
        if problem is not None:
            self._fail_queue(RuntimeUnavailable(problem))

    @property
    def ready(self) -> bool:
        """It can take requests now: built, its artifact checked intact, not failing to start."""
        return (
            self.digest is not None
            and self.checked == self.digest
            and self.artifact_error is None
            and self.error is None
            and not self.closing
        )

    def status(self) -> FunctionStatus:
        return FunctionStatus.of(
            self.function,
            instances=[i.status() for i in self.instances.values()],
            queued=len(self.dispatcher.queue),
            in_flight=sum(len(i.in_flight) for i in self.instances.values()),
            cold_starts=self.cold_starts,
            served=self.served,
            failed=self.failed,
            error=self.artifact_error or self.error,
            ready=self.ready,
            keep_alive=self.rhythm.policy.to_dict(),
            memory_mb=None if self.budget is None else round(self.budget.held_by(self) / (1 << 20), 1),
        )

"""The host's memory budget: every process of the server (the gateway, the templates, the instances) counted by
what it really holds (`memory.MemoryMeter`), and no instance started where it would take the total past the
budget.

Each function's learned keep-alive (`keepalive.Rhythm`) decides which idle instances go when memory is wanted:
while the host has room, an idle instance stays its `idle_seconds` (memory no one needs costs nothing here);
above `HIGH_WATER`, those idle past their learned window are stopped. An instance that would not fit makes room
first: idle instances of other functions are stopped, those past their window first, then the cheapest to lose
(`eviction.GreedyDual`), and the start waits for their processes to be gone (their memory is counted
until then, so the total never passes the budget on the way). Where nothing idle could make room, the start waits
for memory to come free; a function whose instance could never fit, or that has waited `WAIT_S`, is refused with
a 503 that names the budget. The kernel's OOM killer never chooses.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable, Iterable
from enum import Enum
from typing import Protocol

from slserve.errors import MemoryFull
from slserve.platform.local.eviction import MB, GreedyDual, Idle, longest_idle
from slserve.platform.local.instance_handle import Instance, InstanceState
from slserve.platform.local.memory import Footprint, MemoryMeter, cgroup_oom_kills, descendants, host_memory, resident

READ_EVERY_S = 0.25  # how often the meter looks whether a full reading is due
WAIT_S = 5.0  # the longest a function's requests wait for memory before a 503
FIRST_GUESS = 128 * MB  # an instance's memory before any of its family has been measured
HIGH_WATER = 0.5  # past half the budget, idle instances past their learned keep-alive are stopped (room for a burst)
MARGIN = 1.25  # a new instance is expected to grow this far past the most one of its function was seen to hold
log = logging.getLogger("slserve.platform")


def default_budget() -> int:
    """The host's memory (or its cgroup's limit) less a reserve for the rest of the host: a tenth, 512 MB at
    least."""
    total = host_memory()
    return max(total // 2, total - max(total // 10, 512 * MB))


class Admission(Enum):
    YES = "yes"
    WAIT = "wait"  # room is being made, or memory may come free: try again when an instance is gone
    NEVER = "never"  # more than the budget leaves the instances, even with every other one stopped


class Tenant(Protocol):
    """A function's pool, as the budget sees it."""

    @property
    def name(self) -> str: ...

    @property
    def family(self) -> str: ...

    @property
    def instances(self) -> dict[int, Instance]: ...

    def evictable(self) -> list[Instance]:
        """Its idle instances beyond what it must keep (`min_instances`)."""
        ...

    def expired(self, now: float) -> list[Instance]:
        """Those of its evictable instances idle past its learned keep-alive (`keepalive.Rhythm`)."""
        ...

    def evict(self, inst: Instance) -> None: ...

    def autoscale(self) -> None: ...


class MemoryBudget:
    def __init__(self, limit: int, tenants: Callable[[], Iterable[Tenant]], learned: bool = True) -> None:
        """Every process of the server counts: this one (the gateway), and all it started (templates, their
        instances, the ledger's writer). `learned` False: the fixed policy, to compare with (each idle instance
        stays its `idle_seconds`, the longest idle goes first, no pre-warms)."""
        self.limit = limit
        self.tenants = tenants
        self.learned = learned
        self.tree = {os.getpid()}  # the server's processes, as last listed (instances are added as they start)
        self.meter = MemoryMeter()
        self.policy = GreedyDual()
        self.sizes: dict[str, Footprint] = {}  # function -> the most one of its called instances held
        self.waiting: dict[str, float] = {}  # function -> since when its start waits for memory
        self.peak = 0
        self.evictions = 0
        self.refused = 0
        self.over = False  # the last reading was over the budget (said once per crossing)
        self.oom_kills_at_start = cgroup_oom_kills()
        self._task: asyncio.Task[None] | None = None

    # --- what is held ----------------------------------------------------------------------------------------

    def _instances(self) -> set[int]:
        return {
            inst.pid
            for tenant in self.tenants()
            for inst in tenant.instances.values()
            if inst.pid is not None and inst.state is not InstanceState.DEAD
        }

    def used(self) -> int:
        """Bytes held now, and those promised: each instance counted at least at what its function's instances
        are expected to reach (one just started, or not called yet, holds less than it will), the server's own
        processes not read yet at their resident memory."""
        instances = self._instances()
        own = self.tree - instances
        held = self.meter.held(own | instances)
        total = self.meter.left_behind + sum(held.get(pid, resident(pid) or 0) for pid in own)
        for tenant in self.tenants():
            for inst in tenant.instances.values():
                if inst.state is not InstanceState.DEAD:
                    total += self._counted(tenant, inst, held)
        self.peak = max(self.peak, total)
        return total

    def _counted(self, tenant: Tenant, inst: Instance, held: dict[int, int]) -> int:
        """An instance not read yet: what its function's instances reached (PSS: a new process's share of the
        pages it maps is not taken from the others' readings until they are read again, and libraries mapped by
        processes outside the server share theirs too, so counting only its private memory would count it
        short). One read: what it holds, and the private memory it is still expected to add (a cache its first
        call fills)."""
        reading = self.meter.readings.get(inst.pid) if inst.pid is not None else None
        now = held.get(inst.pid) if inst.pid is not None else None
        if reading is None or now is None:
            return self.need(tenant).pss
        return now + max(0, self.need(tenant).private - reading.footprint.private)

    def need(self, tenant: Tenant) -> Footprint:
        """What an instance of `tenant` is expected to reach: the most one of its called instances held (PSS and
        private memory), with a margin; before any was read, the most of its family's, or a first guess."""
        seen = self.sizes.get(tenant.name)
        if seen is None:
            family = [self.sizes[t.name] for t in self.tenants() if t.family == tenant.family and t.name in self.sizes]
            seen = Footprint(
                max((f.pss for f in family), default=FIRST_GUESS), max((f.private for f in family), default=FIRST_GUESS)
            )
        return Footprint(int(seen.pss * MARGIN), int(seen.private * MARGIN))

    # --- admission -------------------------------------------------------------------------------------------

    def fits(self, tenant: Tenant) -> bool:
        """Whether an instance of `tenant` fits now without stopping any other (a pre-warm's test)."""
        return self.used() + self.need(tenant).pss <= self.limit

    def admit(self, tenant: Tenant) -> Admission:
        """Whether an instance of `tenant` may start now; if not, room is made where idle instances allow."""
        need, used = self.need(tenant).pss, self.used()
        if used + need <= self.limit:
            self.waiting.pop(tenant.name, None)
            return Admission.YES
        self.waiting.setdefault(tenant.name, time.monotonic())
        instances = sum(self._frees(t, i) for t in self.tenants() if t is not tenant for i in t.instances.values())
        if used - instances + need > self.limit:
            self.refused += 1
            return Admission.NEVER
        if self._make_room(used + need - self.limit, exclude=tenant):
            self.waiting[tenant.name] = time.monotonic()  # room is on its way: the wait starts again
        return Admission.WAIT

    def _make_room(self, short: int, exclude: Tenant | None = None) -> int:
        """Stop idle instances whose memory covers `short` bytes (none where all of them would not): first
        those idle past their function's learned keep-alive, the longest idle first, then those the policy
        values least; returns how many were stopped."""
        draining = sum(
            self._frees(t, i) for t in self.tenants() for i in t.instances.values() if i.state is InstanceState.DRAINING
        )
        short -= draining  # already on their way out
        if short <= 0:
            return 0
        now = time.monotonic()
        idle: list[Idle] = []
        expired: list[Idle] = []  # those idle past their learned window
        owners: dict[tuple[str, int], tuple[Tenant, Instance]] = {}
        for tenant in self.tenants():
            if tenant is exclude:
                continue
            past = {i.number for i in tenant.expired(now)} if self.learned else set()
            for inst in tenant.evictable():
                candidate = Idle(tenant.name, inst.number, self._frees(tenant, inst), inst.idle_since or 0.0)
                (expired if inst.number in past else idle).append(candidate)
                owners[(tenant.name, inst.number)] = (tenant, inst)
        victims = longest_idle(expired, short)  # those past their window, when they are enough
        if victims is None:
            victims = (self.policy.victims if self.learned else longest_idle)(idle + expired, short) or []
        for victim in victims:
            tenant, inst = owners[(victim.function, victim.number)]
            self.evictions += 1
            log.info("memory budget: %s stopped to make room (%d MB)", inst.name, victim.frees // MB)
            tenant.evict(inst)
        return len(victims)

    def _release_expired(self) -> None:
        now = time.monotonic()
        for tenant in self.tenants():
            for inst in tenant.expired(now):
                self.evictions += 1
                log.info("memory budget: %s idle past its learned keep-alive; stopped", inst.name)
                tenant.evict(inst)

    def _frees(self, tenant: Tenant, inst: Instance) -> int:
        """What stopping `inst` takes off `used` (what it is counted at; the pages it shares stay with the others
        until they are read again)."""
        now = self.meter.now(inst.pid) if inst.pid is not None else None
        return self._counted(tenant, inst, {} if now is None or inst.pid is None else {inst.pid: now})

    def waited(self, tenant: Tenant) -> float:
        """How long `tenant`'s start has waited for memory (0 when it does not)."""
        since = self.waiting.get(tenant.name)
        return 0.0 if since is None else time.monotonic() - since

    def called(self, tenant: Tenant, cold_start_ms: float) -> None:
        self.policy.called(tenant.name, cold_start_ms, self.need(tenant).pss)

    def released(self) -> None:
        """An instance's process is gone: the functions waiting for memory try again, the longest waiting first."""
        by_name = {t.name: t for t in self.tenants()}
        for name in sorted(self.waiting, key=self.waiting.__getitem__):
            tenant = by_name.get(name)
            if tenant is None:
                self.waiting.pop(name, None)
            else:
                tenant.autoscale()

    def settled(self, tenant: Tenant) -> None:
        """`tenant` wants no instance started now: it no longer waits for memory."""
        self.waiting.pop(tenant.name, None)

    # --- reading -------------------------------------------------------------------------------------------

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._read())

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()

    async def _read(self) -> None:
        while True:
            await asyncio.sleep(READ_EVERY_S)
            self.tree = {os.getpid(), *descendants(os.getpid())}
            pids = self.tree | self._instances()
            now = time.monotonic()
            if self.meter.due(pids, now):
                self.meter.take(await asyncio.to_thread(MemoryMeter.measure, pids), now)
                self._learn_sizes()
                if self.waiting:  # what ended processes shared is known to be free only now
                    self.released()
            used = self.used()
            if used > self.limit and not self.over:
                log.warning(
                    "memory budget: %d MB held, over the budget of %d MB (an instance grew past its estimate, or "
                    "the server's own processes did); idle instances are stopped to make room",
                    used // MB,
                    self.limit // MB,
                )
            self.over = used > self.limit
            if self.over:
                self._make_room(used - self.limit)
            elif used > HIGH_WATER * self.limit and self.learned:
                self._release_expired()  # memory is wanted soon: instances past their window go now

    def _learn_sizes(self) -> None:
        for tenant in self.tenants():
            for inst in tenant.instances.values():
                reading = self.meter.readings.get(inst.pid) if inst.pid is not None else None
                if reading is not None and inst.served:  # (before its first call it holds less than it will)
                    seen, now = self.sizes.get(tenant.name, Footprint(0, 0)), reading.footprint
                    self.sizes[tenant.name] = Footprint(max(seen.pss, now.pss), max(seen.private, now.private))

    def status(self) -> dict[str, object]:
        kills = cgroup_oom_kills()
        return {
            "budget_mb": self.limit // MB,
            "used_mb": self.used() // MB,
            "peak_mb": self.peak // MB,
            "evictions": self.evictions,
            "refused": self.refused,
            "waiting": sorted(self.waiting),
            "oom_kills": None if kills is None else kills - (self.oom_kills_at_start or 0),
        }

    def held_by(self, tenant: Tenant) -> int:
        """Bytes `tenant`'s instances hold (their last PSS readings)."""
        return sum(
            r.footprint.pss
            for inst in tenant.instances.values()
            if inst.pid is not None and (r := self.meter.readings.get(inst.pid)) is not None
        )


def refusal(budget: MemoryBudget, tenant: Tenant, admission: Admission) -> MemoryFull | None:
    """The 503 for `tenant`'s waiting requests when its instance cannot start (`admission` is not YES): at once
    when it could never fit, after `WAIT_S` when busy instances hold the memory and none of its own serves;
    None while it should wait on."""
    need, limit = budget.need(tenant).pss >> 20, budget.limit >> 20
    if admission is Admission.NEVER:
        return MemoryFull(
            f"{tenant.name}: an instance needs about {need} MB, more than the host's memory budget ({limit} MB, "
            "memory_budget_mb) leaves instances even with every other stopped; raise the budget or lower what the "
            "function holds",
            retry_after=WAIT_S,
        )
    serving = any(i.serving for i in tenant.instances.values())
    if admission is Admission.WAIT and budget.waited(tenant) > WAIT_S and not serving:
        return MemoryFull(
            f"{tenant.name}: the host's memory budget ({limit} MB, memory_budget_mb) is held by busy instances "
            f"and an instance of this function needs about {need} MB; retry after the Retry-After interval",
            retry_after=WAIT_S,
        )
    return None

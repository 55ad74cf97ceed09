"""What processes really cost in memory, and how much the host may give them.

A process's cost is its PSS (proportional set size): pages it shares with others (an instance's weights, mapped
once by the template it was forked from and by its siblings) are divided among those that map them, so the PSS
of every process added up counts each shared page once. What stopping a process frees is its private memory
(USS): the shared pages stay with the others.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from slserve.platform.local.instance_handle import PAGE

UNIFIED = Path("/sys/fs/cgroup")  # the cgroup v2 hierarchy, where the host has one


@dataclass(frozen=True)
class Footprint:
    pss: int  # bytes: its share of every page it maps
    private: int  # bytes: pages only it maps (what ending it frees)


def footprint(pid: int) -> Footprint | None:
    """The process's PSS and private memory from `/proc/<pid>/smaps_rollup` (its resident memory, counted as
    private, where the kernel has no rollup); None when it is gone."""
    try:
        with open(f"/proc/{pid}/smaps_rollup", "rb") as f:
            text = f.read()
    except FileNotFoundError:
        return _from_statm(pid) if os.path.exists(f"/proc/{pid}") else None
    except OSError:
        return None
    pss = private = 0
    for line in text.splitlines():
        key, _, rest = line.partition(b":")
        if key == b"Pss":
            pss = int(rest.split()[0]) * 1024
        elif key in (b"Private_Clean", b"Private_Dirty"):
            private += int(rest.split()[0]) * 1024
    return Footprint(pss, private)


def _from_statm(pid: int) -> Footprint | None:
    try:
        with open(f"/proc/{pid}/statm", "rb") as f:
            rss = int(f.read().split()[1]) * PAGE
    except (OSError, IndexError, ValueError):
        return None
    return Footprint(rss, rss)


def host_memory() -> int:
    """Bytes this host may give the server: its memory, or its cgroup's `memory.max` where that is lower."""
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    limit = cgroup_limit()
    return min(total, limit) if limit is not None else total


def _own_cgroup() -> Path | None:
    """This process's cgroup v2 folder, or None on a host without the unified hierarchy."""
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        if line.startswith("0::"):
            folder = UNIFIED / line[3:].lstrip("/")
            return folder if (folder / "memory.max").exists() else None
    return None


def cgroup_limit() -> int | None:
    """The cgroup v2 `memory.max` this process runs under (None: no limit, or no cgroup v2 here)."""
    folder = _own_cgroup()
    if folder is None:
        return None
    value = (folder / "memory.max").read_text().strip()
    return None if value == "max" else int(value)


def cgroup_oom_kills() -> int | None:
    """How many processes the kernel's OOM killer has ended in this cgroup (`memory.events`); None without
    cgroup v2: the budget then knows only its own readings."""
    folder = _own_cgroup()
    if folder is None:
        return None
    for line in (folder / "memory.events").read_text().splitlines():
        key, _, value = line.partition(" ")
        if key == "oom_kill":
            return int(value)
    return 0


def resident(pid: int) -> int | None:
    """The process's resident memory (a cheap read: no page-table walk)."""
    reading = _from_statm(pid)
    return None if reading is None else reading.pss


@dataclass(frozen=True)
class Reading:
    footprint: Footprint
    rss: int  # its resident memory when the footprint was read


class MemoryMeter:
    """The memory a set of processes holds together, each shared page once.

    Reading a PSS walks the process's page tables (milliseconds for a process with torch), so PSS is read only
    when the set changed (a process started or ended: the sharing among the others changed with it), when a
    process's resident memory moved by `MOVED` since its reading, or every `FULL_S`; in between, a process's
    growth is its resident memory's (a cheap read). A process that ended takes only its private memory with
    it until the next reading: the pages it shared stay with the others.
    """

    MOVED = 1 << 20
    FULL_S = 10.0

    def __init__(self) -> None:
        self.readings: dict[int, Reading] = {}
        self.left_behind = 0  # shared bytes of processes ended since the last full reading
        self.read_at = float("-inf")

    def held(self, pids: set[int]) -> dict[int, int]:
        """Bytes each process holds now: its last PSS and its growth since (cheap reads only). Add `left_behind`
        for the total."""
        for pid in [p for p in self.readings if p not in pids]:
            ended = self.readings.pop(pid)
            self.left_behind += ended.footprint.pss - ended.footprint.private
        held = {}
        for pid in pids:  # (not read yet: the caller knows what to count)
            if (now := self.now(pid)) is not None:
                held[pid] = now
        return held

    def now(self, pid: int) -> int | None:
        """Bytes the process holds now by its last reading and its growth since; None: not read, or gone."""
        reading = self.readings.get(pid)
        rss = resident(pid) if reading is not None else None
        return None if reading is None or rss is None else reading.footprint.pss + max(0, rss - reading.rss)

    def due(self, pids: set[int], now: float) -> bool:
        """Whether a full reading is due: the set changed, a process moved, or it has been `FULL_S`."""
        if now - self.read_at >= self.FULL_S or pids != set(self.readings):
            return True
        for pid, reading in self.readings.items():
            rss = resident(pid)
            if rss is not None and abs(rss - reading.rss) >= self.MOVED:
                return True
        return False

    @staticmethod
    def measure(pids: set[int]) -> dict[int, Reading]:
        """Every process's PSS (blocking, milliseconds each: call it off the event loop)."""
        readings: dict[int, Reading] = {}
        for pid in pids:
            rss = resident(pid)
            found = footprint(pid)
            if found is not None and rss is not None:
                readings[pid] = Reading(found, rss)
        return readings

    def take(self, readings: dict[int, Reading], now: float) -> None:
        """A full reading (`measure`'s) replaces the last; processes ended since are dropped by `held`."""
        self.readings, self.left_behind, self.read_at = readings, 0, now

    def private(self, pid: int) -> int | None:
        """The private memory the process had at its last reading (what ending it frees)."""
        reading = self.readings.get(pid)
        return None if reading is None else reading.footprint.private


def descendants(pid: int) -> set[int]:
    """Every process descended from `pid` (its children, theirs, ...), from the kernel's per-thread lists of
    children; where the kernel keeps none, from every process's parent."""
    found: set[int] = set()
    frontier = [pid]
    while frontier:
        parent = frontier.pop()
        children = _children(parent)
        if children is None:
            return _descendants_by_scan(pid)
        fresh = children - found
        found |= fresh
        frontier += fresh
    return found


def _children(pid: int) -> set[int] | None:
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return set()  # gone
    out: set[int] = set()
    for task in tasks:
        try:
            with open(f"/proc/{pid}/task/{task}/children", "rb") as f:
                out.update(int(c) for c in f.read().split())
        except FileNotFoundError:
            if not os.path.exists(f"/proc/{pid}/task/{task}"):
                continue  # the thread ended
            return None  # no children lists in this kernel
        except OSError:
            continue
    return out


def _descendants_by_scan(pid: int) -> set[int]:
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat", "rb") as f:
                    parents[int(entry)] = int(f.read().rsplit(b")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
    found: set[int] = set()
    frontier = [pid]
    while frontier:
        parent = frontier.pop()
        children = {p for p, pp in parents.items() if pp == parent} - found
        found |= children
        frontier += children
    return found


def tree_pss(pid: int) -> int | None:
    """The PSS of `pid` and every process descended from it, or None where a process started or ended while the
    tree was read: a fork halfway through would count the pages it shares twice (the parent read before, the
    child after)."""
    pids = {pid, *descendants(pid)}
    total = sum(f.pss for p in pids if (f := footprint(p)) is not None)
    return total if {pid, *descendants(pid)} == pids else None

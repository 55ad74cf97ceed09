"""Per model version: a sliding window of what it was asked and answered (`window_s`, in ten buckets, so the
window slides in steps of a tenth), compared with its reference: the build's calibration profile, or a window
an operator pinned (`slserve drift MODEL --pin`), which replaces it and is kept in the state folder.

Windows live in memory: a restarted gateway starts them empty and refills them from new traffic (by design: a
window is about now); references survive (in the artifact, or the state folder). Scores are computed when read
(`/metrics`, `/slserve/drift`, the dashboard) and by `run`, which logs a warning when a version starts drifting
and when it stops.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from slserve.drift.profile import Profile, Score, Thresholds, compare
from slserve.errors import InvalidInput
from slserve.spec import Signature

log = logging.getLogger("slserve.drift")
BUCKETS = 10
References = Callable[[str, str], Profile | None]  # (model, version) -> the build's reference profile, if any


Request = tuple[Mapping[str, np.ndarray], Mapping[str, np.ndarray]]
PENDING_REQUESTS = 64  # requests held for one reduction: numpy's per-call overhead is paid once for all of them
PENDING_ROWS = 4096  # ... and no more rows than this (a few MB at most)


@dataclass
class Window:
    signature: Signature
    bucket_s: float
    buckets: deque[tuple[int, Profile]] = field(default_factory=deque)
    pending: list[Request] = field(default_factory=list)  # observed, not yet in the last bucket's profile
    pending_rows: int = 0

    def observe(self, inputs: Mapping[str, np.ndarray], outputs: Mapping[str, np.ndarray], now: float) -> None:
        index = int(now // self.bucket_s)
        if not self.buckets or self.buckets[-1][0] != index:
            self.flush()
            self.buckets.append((index, Profile.empty(self.signature)))
            while self.buckets[0][0] <= index - BUCKETS:
                self.buckets.popleft()
        self.pending.append((inputs, outputs))
        self.pending_rows += len(next(iter(inputs.values()))) if inputs else 0
        if len(self.pending) >= PENDING_REQUESTS or self.pending_rows >= PENDING_ROWS:
            self.flush()

    def flush(self) -> None:
        if self.pending:
            self.buckets[-1][1].observe_many(self.pending)
            self.pending, self.pending_rows = [], 0

    def total(self, now: float) -> Profile:
        self.flush()
        first = int(now // self.bucket_s) - BUCKETS + 1
        total = Profile.empty(self.signature)
        for index, profile in self.buckets:
            if index >= first:
                total.add(profile)
        return total


@dataclass(frozen=True)
class VersionDrift:
    model: str
    version: str
    rows: int  # in the window
    reference: str | None  # "build" | "pinned" | None (nothing to compare with)
    reference_rows: int
    scores: list[Score]
    min_rows: int

    @property
    def drifting(self) -> bool:
        return any(s.drifting for s in self.scores)

    @property
    def state(self) -> str:
        if self.reference is None:
            return "no reference"
        if self.rows < self.min_rows:
            return "too few rows"
        return "drifting" if self.drifting else "stable"

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "version": self.version,
            "state": self.state,
            "drifting": self.drifting,
            "rows": self.rows,
            "reference": self.reference,
            "reference_rows": self.reference_rows,
            "scores": [s.to_dict() for s in self.scores],
        }


class DriftMonitor:
    def __init__(
        self,
        references: References,
        pinned_dir: Path | None,
        thresholds: Thresholds = Thresholds(),
        window_s: float = 300.0,
        min_rows: int = 100,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.references = references
        self.pinned_dir = pinned_dir
        self.thresholds = thresholds
        self.window_s = window_s
        self.min_rows = min_rows
        self.clock = clock
        self.windows: dict[tuple[str, str], Window] = {}
        self._pinned: dict[tuple[str, str], Profile | None] = {}
        self.flagged: set[tuple[str, str]] = set()

    def observe(
        self,
        model: str,
        version: str,
        signature: Signature,
        inputs: Mapping[str, np.ndarray],
        outputs: Mapping[str, np.ndarray],
    ) -> None:
        key = (model, version)
        window = self.windows.get(key)
        if window is None or (window.signature is not signature and window.signature != signature):
            window = self.windows[key] = Window(signature, self.window_s / BUCKETS)  # a new signature: anew
        window.observe(inputs, outputs, self.clock())

    def reference(self, model: str, version: str) -> tuple[Profile, str] | None:
        key = (model, version)
        if key not in self._pinned:
            self._pinned[key] = self._read_pinned(model, version)
        pinned = self._pinned[key]
        if pinned is not None:
            return pinned, "pinned"
        built = self.references(model, version)
        return (built, "build") if built is not None else None

    def version(self, model: str, version: str) -> VersionDrift:
        window = self.windows.get((model, version))
        current = window.total(self.clock()) if window else Profile()
        found = self.reference(model, version)
        scores: list[Score] = []
        if found is not None and current.rows >= self.min_rows:
            scores = compare(found[0], current, self.thresholds)
        return VersionDrift(
            model,
            version,
            current.rows,
            found[1] if found else None,
            found[0].rows if found else 0,
            scores,
            self.min_rows,
        )

    def report(self, model: str | None = None) -> list[VersionDrift]:
        keys = sorted(k for k in self.windows if model is None or k[0] == model)
        return [self.version(*key) for key in keys]

    def drifting(self, model: str, version: str) -> bool:
        return (model, version) in self.flagged

    def pin(self, model: str, version: str) -> VersionDrift:
        """The current window becomes this version's reference (kept in the state folder: survives restarts)."""
        window = self.windows.get((model, version))
        current = window.total(self.clock()) if window else Profile()
        if current.rows < self.min_rows:
            raise InvalidInput(
                f"{model} version {version} has {current.rows} rows in its window, fewer than drift_min_rows = "
                f"{self.min_rows}; pin once it has served more"
            )
        if self.pinned_dir is not None:
            self.pinned_dir.mkdir(parents=True, exist_ok=True)
            path = self._pinned_path(model, version)
            tmp = path.with_name(f".{path.name}.{os.getpid()}")
            tmp.write_bytes(orjson.dumps(current.to_dict()))
            tmp.replace(path)
        self._pinned[(model, version)] = current
        log.info("drift reference of %s version %s pinned from %d live rows", model, version, current.rows)
        return self.version(model, version)

    def evaluate(self) -> None:
        """Warn when a version starts drifting, say when it stops: once per change, not per look."""
        for drift in self.report():
            key = (drift.model, drift.version)
            if drift.drifting and key not in self.flagged:
                self.flagged.add(key)
                worst = max(drift.scores, key=lambda s: s.value / s.threshold if s.threshold else math.inf)
                log.warning(
                    "%s version %s is drifting from its %s reference: %s %s = %.4f (threshold %g) over %d rows",
                    drift.model,
                    drift.version,
                    drift.reference,
                    worst.tensor,
                    worst.measure,
                    worst.value,
                    worst.threshold,
                    drift.rows,
                )
            elif not drift.drifting and key in self.flagged and drift.state != "too few rows":
                self.flagged.discard(key)
                log.info("%s version %s is back within its drift thresholds", drift.model, drift.version)

    async def run(self) -> None:
        every = self.window_s / BUCKETS
        while True:
            await asyncio.sleep(every)
            try:
                self.evaluate()
            except Exception:  # a bad profile must not stop the watch
                log.exception("drift evaluation failed; trying again in %.0f s", every)

    def _pinned_path(self, model: str, version: str) -> Path:
        assert self.pinned_dir is not None
        return self.pinned_dir / f"{model}@{version}.json"

    def _read_pinned(self, model: str, version: str) -> Profile | None:
        if self.pinned_dir is None:
            return None
        try:
            return Profile.from_dict(orjson.loads(self._pinned_path(model, version).read_bytes()))
        except FileNotFoundError:
            return None

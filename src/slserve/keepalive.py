"""How long a function's idle instance is worth keeping, and when one is worth starting ahead of a call: learned
from the function's own idle gaps ("Serverless in the Wild", ATC'20), with `scaling.idle_seconds` as the cap.
The host applies it where memory is wanted (`budget`): idle instances past their window are the first to go;
on Modal it chooses a class's `scaledown_window`.

An idle gap is the time from the moment a function had nothing left to do to its next call. From the recent
gaps' distribution:
- the keep-alive window covers the gaps up to the 99th percentile (a margin added), so a call that comes within
  the usual rhythm finds its instance warm, and one that is later than almost all of them does not hold memory
  for nothing;
- when even the shortest gaps (the 5th percentile) are long against a cold start, the instance is let go as soon
  as it is idle and a new one is started just before the head of the distribution: warm for the call, without
  the memory held in between (the pre-warm window);
- too few gaps, or gaps spread too widely to predict: the fixed window (`idle_seconds`), as before.
No clock in here: the pool passes the times, and the tests pass them too.
"""

from __future__ import annotations

import json
import math
import os
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

GAPS_FILE = "idle-gaps.json"  # in the state folder: each function's recent gaps (`save_gaps`)
KEPT_GAPS = 256  # the distribution follows the recent rhythm, not the whole history
MIN_GAPS = 8  # fewer seen: the fixed window
HEAD, TAIL = 0.05, 0.99
MARGIN = 1.25  # the window reaches a quarter past the 99th percentile gap
LEAD_S = 0.5  # a pre-warm starts this long (plus twice the cold start) before the head of the gaps
MIN_RELEASE_S = 2.0  # letting go and pre-warming is worth it only for a head gap at least this long after the lead
MAX_SPREAD = 4.0  # the gaps' coefficient of variation above which the pre-warm's timing is not trusted


@dataclass(frozen=True)
class KeepAlive:
    keep_s: float  # an idle instance is stopped after this long (beyond `min_instances`)
    prewarm_s: float | None  # None: kept after its last call; else let go at once and started this long after
    basis: str  # why: read by operators in `slserve status`

    def to_dict(self) -> dict[str, object]:
        return {"keep_s": round(self.keep_s, 2), "prewarm_s": _round(self.prewarm_s), "basis": self.basis}


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 2)


class IdleGaps:
    """A function's recent idle gaps (seconds)."""

    def __init__(self) -> None:
        self.gaps: deque[float] = deque(maxlen=KEPT_GAPS)
        self._sorted: list[float] | None = None

    def add(self, seconds: float) -> None:
        self.gaps.append(max(0.0, seconds))
        self._sorted = None

    def __len__(self) -> int:
        return len(self.gaps)

    def percentile(self, q: float) -> float:
        """The gap below which a share `q` of the recent gaps lie (nearest rank)."""
        if self._sorted is None:
            self._sorted = sorted(self.gaps)
        ordered = self._sorted
        return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]

    def spread(self) -> float:
        """The coefficient of variation of the gaps (their standard deviation over their mean)."""
        mean = sum(self.gaps) / len(self.gaps)
        if mean <= 0:
            return 0.0
        return math.sqrt(sum((g - mean) ** 2 for g in self.gaps) / len(self.gaps)) / mean


def choose(gaps: IdleGaps, cap_s: float, cold_start_s: float) -> KeepAlive:
    """The keep-alive for a function with these gaps, whose cold start takes `cold_start_s`, within `cap_s`."""
    if len(gaps) < MIN_GAPS:
        return KeepAlive(cap_s, None, f"fixed: {len(gaps)} idle gaps seen, {MIN_GAPS} needed to learn")
    head, tail = gaps.percentile(HEAD), gaps.percentile(TAIL)
    lead = LEAD_S + 2 * cold_start_s
    if head - lead >= MIN_RELEASE_S and gaps.spread() <= MAX_SPREAD:
        prewarm = head - lead
        keep = min(cap_s, tail * MARGIN - prewarm)
        return KeepAlive(keep, prewarm, f"pre-warm: {len(gaps)} gaps, 5% within {head:.1f} s, 99% within {tail:.1f} s")
    if tail * MARGIN >= cap_s:
        return KeepAlive(cap_s, None, f"cap: 99% of {len(gaps)} gaps within {tail:.1f} s, over idle_seconds")
    return KeepAlive(tail * MARGIN, None, f"learned: 99% of {len(gaps)} gaps within {tail:.1f} s")


class Rhythm:
    """One function's idle gaps as they happen, and the keep-alive they choose now."""

    def __init__(self, cap_s: float, gaps: IdleGaps | None = None) -> None:
        self.cap_s = cap_s
        self.gaps = gaps or IdleGaps()
        self.idle_from: float | None = None  # since when it has had nothing to do (None: busy, or never called)
        self.policy = choose(self.gaps, cap_s, 0.0)

    def called(self, now: float, cold_start_s: float) -> None:
        """A call arrived; after a time with nothing to do, that time is a gap."""
        if self.idle_from is not None:
            self.gaps.add(now - self.idle_from)
            self.idle_from = None
            self.policy = choose(self.gaps, self.cap_s, cold_start_s)

    def went_idle(self, now: float) -> None:
        self.idle_from = now

    def idle_limit_s(self, now: float) -> float:
        """How long an idle instance may stay idle, now. With a pre-warm: none before the pre-warm (let go at
        once), through its window as long as it lasts, none after."""
        window = self._prewarm_window(now)
        return self.policy.keep_s if window is None else math.inf if window else 0.0

    def prewarm_due(self, now: float) -> bool:
        """Whether an instance should be up now, ahead of the call the gaps predict."""
        return bool(self._prewarm_window(now))

    def _prewarm_window(self, now: float) -> bool | None:
        """None: no pre-warm policy, or busy; else whether `now` is within the pre-warmed window."""
        policy, since = self.policy, self.idle_from
        if policy.prewarm_s is None or since is None:
            return None
        return since + policy.prewarm_s <= now < since + policy.prewarm_s + policy.keep_s


def save_gaps(path: Path, rhythms: Mapping[str, Rhythm]) -> None:
    """Each function's recent idle gaps, written atomically: a restarted gateway starts from them, and `slserve
    deploy modal` chooses each class's `scaledown_window` from them."""
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {name: [round(g, 3) for g in rhythm.gaps.gaps] for name, rhythm in rhythms.items() if len(rhythm.gaps)}
    partial = path.with_suffix(".partial")
    partial.write_text(json.dumps(record))
    os.replace(partial, path)


def load_gaps(path: Path) -> dict[str, IdleGaps]:
    """The gaps `save_gaps` wrote (none where nothing was recorded, or the record cannot be read)."""
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    out: dict[str, IdleGaps] = {}
    for name, seconds in record.items() if isinstance(record, dict) else ():
        gaps = out[name] = IdleGaps()
        for s in seconds if isinstance(seconds, list) else ():
            if isinstance(s, int | float):
                gaps.add(float(s))
    return out

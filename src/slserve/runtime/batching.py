"""Dynamic batching that is exact: merge requests' feeds along the batch dimension, split the outputs back.

A model's kernels may take another code path for another call size (torch and ONNX Runtime both do on CPU),
so a row computed in a call of 8 rows can differ in its last bits from the same row computed alone. Three rules
make a response independent of whatever else shared its model call:

- requests merge only when every feed has the same shape beyond the batch dimension (no extra padding inside
  a row; text processors pad to a few length buckets so that requests of similar length meet);
- calls come in a few sizes only, the ladder 1, 2, 4, ... up to `max_batch_size` (missing rows repeat the last
  real row and are dropped afterwards; a group that would need much padding is cut into ladder-sized calls
  instead), and each feed shape has a floor on that ladder: the smallest size from
  which a row comes out bit-identical in every call of that size or larger, at every position in the call.
  The build proves the floor for each shape the processor produces (`prove_shapes`) and records it in the
  manifest;
- a shape the build did not prove (or a request larger than `max_batch_size`) is never merged: it runs alone,
  at its own size, so its answer depends on the request only.

More threads per call are a kernel path of their own: with two intra-op threads MiniLM's rows change bits at
most call sizes of 8 and 12 tokens (their floors at two threads are 32), while at 16 tokens and more many sizes
give the one-thread rows exactly. `prove_threads` finds, per shape and call size, the thread counts that give
the same rows as the proven one-thread calls; an instance uses more threads for a call only there (when the
host has idle cores), so that a response depends neither on its batch mates nor on the host's load.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from slserve.errors import InferenceFailed
from slserve.runtime.base import Runtime, Tensors

_KEYS: dict[tuple[tuple[str, np.dtype[Any], tuple[int, ...]], ...], str] = {}
_MAX_KEYS = 4096  # distinct shapes remembered (a function fed arbitrary shapes must not grow it forever)


def shape_key(feeds: Mapping[str, np.ndarray]) -> str:
    """Feeds with equal keys can be concatenated along the first dimension, e.g.
    'attention_mask:int64[16] input_ids:int64[16]'. Computed once per shape: it is asked for every request."""
    signature = tuple((name, arr.dtype, arr.shape[1:]) for name, arr in feeds.items())
    key = _KEYS.get(signature)
    if key is None:
        key = " ".join(f"{name}:{feeds[name].dtype.name}{list(feeds[name].shape[1:])}" for name in sorted(feeds))
        if len(_KEYS) >= _MAX_KEYS:
            _KEYS.clear()
        _KEYS[signature] = key
    return key


def rows_of(feeds: Mapping[str, np.ndarray]) -> int:
    return int(next(iter(feeds.values())).shape[0])


def call_sizes(max_rows: int) -> list[int]:
    """The ladder of call sizes: powers of two below `max_rows`, then `max_rows` itself."""
    sizes = [1]
    while sizes[-1] * 2 < max_rows:
        sizes.append(sizes[-1] * 2)
    return [*sizes, max_rows] if max_rows > 1 else sizes


@dataclass(frozen=True)
class Call:
    items: list[int]  # indices into the planned requests, in arrival order
    size: int  # rows of the model call (padding included)


class ExactBatcher:
    """Plans model calls for the requests an instance holds at once."""

    def __init__(self, max_rows: int, floors: Mapping[str, int]) -> None:
        self.max_rows = max_rows
        self.floors = dict(floors) if max_rows > 1 else {}
        self.ladder = call_sizes(max_rows)

    def plan(self, items: Sequence[Mapping[str, np.ndarray]]) -> list[Call]:
        """Group requests of one proven shape, first come first served, at most `max_rows` rows per group, and
        cut each group into ladder-sized calls (`_cut`); everything else runs alone."""
        calls: list[tuple[list[int], str | None]] = []
        open_call: dict[str, tuple[list[int], int]] = {}
        for i, feeds in enumerate(items):
            key, rows = shape_key(feeds), rows_of(feeds)
            if key not in self.floors or rows > self.max_rows:
                calls.append(([i], None))
                continue
            if key in open_call and open_call[key][1] + rows <= self.max_rows:
                members, total = open_call[key]
                members.append(i)
                open_call[key] = (members, total + rows)
            else:
                open_call[key] = ([i], rows)
                calls.append((open_call[key][0], key))
        planned: list[Call] = []
        for members, proven in calls:
            counts = [rows_of(items[i]) for i in members]
            if proven is None:
                planned.append(Call(members, sum(counts)))
            else:
                planned += self._cut(members, counts, self.floors[proven])
        return planned

    def size_for(self, rows: int, floor: int) -> int:
        return next(s for s in self.ladder if s >= max(rows, floor))

    def _cut(self, members: list[int], rows: list[int], floor: int) -> list[Call]:
        """Padding a group up to the next ladder size can nearly double its compute (17 rows -> 32), so a group
        is padded only when that adds at most a quarter of the call; otherwise the largest ladder size that it
        fills goes first (17 -> 16 + 1). Whole requests only, in arrival order."""
        calls: list[Call] = []
        i = 0
        while i < len(members):
            left = sum(rows[i:])
            up = self.size_for(left, floor)
            fits = [s for s in self.ladder if floor <= s <= left]
            if up - left <= up // 4 or not fits:
                calls.append(Call(members[i:], up))
                break
            take, total = i, 0
            while take < len(members) and total + rows[take] <= fits[-1]:
                total += rows[take]
                take += 1
            take = max(take, i + 1)  # a request bigger than the target still runs (padded up)
            calls.append(Call(members[i:take], self.size_for(sum(rows[i:take]), floor)))
            i = take
        return calls


PROOF_ROWS = 8  # distinct rows a shape is proven on
PROOF_SHIFTS = 2  # arrangements of them per call size, so each row is seen at more than one position


def merge(items: Sequence[Mapping[str, np.ndarray]], size: int) -> tuple[Tensors, list[int]]:
    """Concatenate the items' feeds, padded to `size` rows; returns the feeds and each item's row count."""
    counts = [rows_of(f) for f in items]
    rows = sum(counts)
    if len(items) == 1 and size <= rows:
        return dict(items[0]), counts
    merged: Tensors = {}
    for name, first in items[0].items():
        # One allocation, each part copied in once, padding rows broadcast from the last real row (half the
        # time of np.repeat + np.concatenate for a single request padded to its floor).
        out = np.empty((max(size, rows), *first.shape[1:]), first.dtype)
        at = 0
        for feeds in items:
            part = feeds[name]
            out[at : at + len(part)] = part
            at += len(part)
        out[at:] = out[at - 1]
        merged[name] = out
    return merged, counts


def split(produced: Mapping[str, np.ndarray], counts: Sequence[int]) -> list[Tensors]:
    """Cut a merged call's outputs back into one set per item (padding rows are dropped)."""
    total = sum(counts)
    if len(counts) == 1 and all(arr.ndim and arr.shape[0] == total for arr in produced.values()):
        return [dict(produced)]
    for name, arr in produced.items():
        if arr.ndim == 0 or arr.shape[0] < total:
            raise InferenceFailed(
                f"output {name!r} has shape {list(arr.shape)}: a batched function's outputs need the batch "
                f"as their first dimension ({total} rows); set batching.max_batch_size = 1 for this model"
            )
    out: list[Tensors] = []
    start = 0
    for n in counts:
        out.append({name: arr[start : start + n] for name, arr in produced.items()})
        start += n
    return out


@dataclass(frozen=True)
class Outcome:
    """One request's part of a model call: its outputs, or the exception that failed it."""

    outputs: Tensors | None
    error: Exception | None
    compute_ms: float
    batch_size: int  # requests in the call that computed it


def run_call(
    runtime: Runtime,
    feeds: Sequence[Tensors],
    size: int,
    alone: Callable[[Tensors], int],
    before: Callable[[Tensors, int], None] = lambda feeds, size: None,
) -> list[Outcome]:
    """One planned model call for prepared requests, an `Outcome` each. When a merged call raises, each request
    is run again alone (at `alone(feeds)` rows), so one request's input fails that request only. `before(feeds,
    size)` runs before each model call (the instance sets its threads for that call's shape and size)."""
    started = time.perf_counter()
    try:
        before(feeds[0], size)
        merged, counts = merge(feeds, size)
        outputs = [runtime.finish(part) for part in split(runtime.run(merged), counts)]
    except Exception as e:
        if len(feeds) == 1:
            return [Outcome(None, e, (time.perf_counter() - started) * 1000, 1)]
        return [run_call(runtime, [f], alone(f), alone, before)[0] for f in feeds]
    compute_ms = (time.perf_counter() - started) * 1000
    return [Outcome(out, None, compute_ms, len(feeds)) for out in outputs]


def prove_shapes(runtime: Runtime, max_rows: int, examples: Sequence[Mapping[str, np.ndarray]]) -> dict[str, int]:
    """The floor on the call-size ladder for each distinct feed shape among `examples` (one-row feeds). Kernel
    choice depends on shapes, but a kernel's rounding can depend on a row's position in the call and on its
    values (on some CPUs MLAS rounds rows at odd positions differently, for some values only), so each shape is
    proven on distinct rows at every position (`distinct_rows`). A shape whose rows differ by position even in
    the largest call has no floor and is left out: its requests will run alone."""
    floors = {}
    for key, rows in by_shape(examples).items():
        floor = _floor(runtime, distinct_rows(rows), max_rows)
        if floor is not None:
            floors[key] = floor
    return floors


def by_shape(examples: Sequence[Mapping[str, np.ndarray]]) -> dict[str, list[Mapping[str, np.ndarray]]]:
    shapes: dict[str, list[Mapping[str, np.ndarray]]] = {}
    for feeds in examples:
        shapes.setdefault(shape_key(feeds), []).append(feeds)
    return shapes


def distinct_rows(rows: Sequence[Mapping[str, np.ndarray]], wanted: int = PROOF_ROWS) -> list[Mapping[str, np.ndarray]]:
    """At least `wanted` one-row feeds of one shape: the examples', then variants of them (floats scaled and
    shifted at random, integers such as token ids permuted within the row: still valid inputs) to make up the
    number. Seeded: a proof is the same on every build."""
    out: list[Mapping[str, np.ndarray]] = []
    out += [{k: v[:1] for k, v in r.items()} for r in rows][:wanted]
    rng = np.random.default_rng(0)
    while len(out) < wanted:
        base = out[len(out) % len(rows)]
        variant: dict[str, np.ndarray] = {}
        for name, arr in base.items():
            if arr.dtype.kind == "f":
                noise = rng.normal(0.0, 1.0, arr.shape) * (float(np.abs(arr).mean()) or 1.0)
                variant[name] = (arr * rng.uniform(0.5, 1.5, arr.shape) + noise).astype(arr.dtype)
            elif arr.dtype.kind in "iu" and arr.ndim > 1:
                variant[name] = arr[..., rng.permutation(arr.shape[-1])]
            else:
                variant[name] = arr
        out.append(variant)
    return out


def prove_threads(
    runtime: Runtime, max_rows: int, examples: Sequence[Mapping[str, np.ndarray]], floors: Mapping[str, int], most: int
) -> dict[str, dict[str, int]]:
    """Per proven shape, per call size from its floor up: the most threads (up to `most`) with which a call of
    that size gives rows bit-identical to the one-thread calls (every count from one thread to it checked).
    Sizes where only the serving thread count is exact are left out. Needs `runtime.set_threads`."""
    set_threads = getattr(runtime, "set_threads", None)
    if set_threads is None or most < 2:
        return {}
    serving = runtime.spec.resources.threads
    grants: dict[str, dict[str, int]] = {}
    try:
        for key, found in by_shape(examples).items():
            floor = floors.get(key)
            if floor is None:
                continue
            rows = distinct_rows(found)
            for size in (n for n in call_sizes(max_rows) if n >= floor):
                # distinct rows at every position; at the serving threads each is its answer alone (the floor's
                # proof), so a call on more threads must give the same rows
                merged, _ = merge([rows[i % len(rows)] for i in range(size)], size)
                set_threads(serving)
                reference = {k: v.copy() for k, v in runtime.run(merged).items()}
                exact = serving
                for threads in range(serving + 1, most + 1):
                    set_threads(threads)
                    produced = runtime.run(merged)
                    if not all(np.array_equal(produced[k], r) for k, r in reference.items()):
                        break
                    exact = threads
                if exact > serving:
                    grants.setdefault(key, {})[str(size)] = exact
    finally:
        set_threads(serving)
    return grants


def _floor(runtime: Runtime, rows: Sequence[Mapping[str, np.ndarray]], max_rows: int) -> int | None:
    """The smallest call size from which every row's answer is the same in every call of that size or larger,
    at every position; each distinct row is placed at several positions (a shifted arrangement per call)."""
    reference: dict[int, Tensors] = {}  # a distinct row's answer where it was first seen (in the largest call)
    floor = None
    for size in reversed(call_sizes(max_rows)):
        for shift in range(min(len(rows), PROOF_SHIFTS)):
            picks = [(i + shift) % len(rows) for i in range(size)]
            produced = runtime.run(merge([rows[p] for p in picks], size)[0])
            for position, p in enumerate(picks):
                answer = {k: v[position : position + 1] for k, v in produced.items()}
                known = reference.setdefault(p, {k: v.copy() for k, v in answer.items()})
                if not all(np.array_equal(answer[k], known[k]) for k in known):
                    return floor
        floor = size
    return floor

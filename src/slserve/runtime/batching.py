"""Dynamic batching that is exact: merge requests' feeds along the batch dimension, split the outputs back.

A model's kernels may take another code path for another batch size (torch and ONNX Runtime both do on CPU),
so a row computed in a batch of 8 can differ in its last bits from the same row computed alone. Two rules make
a response independent of whatever else shared its model call:

- requests merge only when every feed has the same shape beyond the batch dimension (no extra padding inside
  a row: text of another token length runs in another call);
- every call has at least `min_rows` rows, the smallest batch size from which the function's outputs are
  bit-identical up to `max_batch_size`. The build measures it on its calibration inputs (`measure_min_rows`)
  and records it in the manifest; missing rows repeat the last real row and are dropped afterwards.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

import numpy as np

from slserve.errors import InferenceFailed
from slserve.runtime.base import Runtime, Tensors
from slserve.runtime.tensors import example_inputs


def batch_key(feeds: Mapping[str, np.ndarray]) -> Hashable:
    """Feeds with equal keys can be concatenated along the first dimension."""
    return tuple((name, arr.dtype.str, arr.shape[1:]) for name, arr in feeds.items())


def rows_of(feeds: Mapping[str, np.ndarray]) -> int:
    return int(next(iter(feeds.values())).shape[0])


def plan_batches(items: Sequence[Mapping[str, np.ndarray]], max_rows: int) -> list[list[int]]:
    """Group item indices into model calls: same batch key, at most `max_rows` rows each (an item bigger than
    that runs alone), first come first served within a key."""
    if len(items) == 1:
        return [[0]]
    open_groups: dict[Hashable, list[int]] = {}
    open_rows: dict[Hashable, int] = {}
    done: list[list[int]] = []
    for i, feeds in enumerate(items):
        key, rows = batch_key(feeds), rows_of(feeds)
        if key in open_groups and open_rows[key] + rows > max_rows:
            done.append(open_groups.pop(key))
            del open_rows[key]
        open_groups.setdefault(key, []).append(i)
        open_rows[key] = open_rows.get(key, 0) + rows
    done.extend(open_groups.values())
    return sorted(done, key=lambda g: g[0])


def merge(items: Sequence[Mapping[str, np.ndarray]], min_rows: int) -> tuple[Tensors, list[int]]:
    """Concatenate the items' feeds (padded to `min_rows` rows); returns the feeds and each item's row count."""
    counts = [rows_of(f) for f in items]
    pad = max(0, min_rows - sum(counts))
    if len(items) == 1 and pad == 0:
        return dict(items[0]), counts
    merged: Tensors = {}
    for name in items[0]:
        parts = [f[name] for f in items]
        if pad:
            parts.append(np.repeat(parts[-1][-1:], pad, axis=0))
        merged[name] = np.concatenate(parts, axis=0)
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


def probe_sizes(max_rows: int) -> list[int]:
    if max_rows <= 64:
        return list(range(1, max_rows + 1))
    sizes = {*range(1, 65), max_rows}
    sizes.update(2**k + d for k in range(6, max_rows.bit_length()) for d in (-1, 0, 1) if 2**k + d <= max_rows)
    return sorted(sizes)


def measure_min_rows(runtime: Runtime, max_rows: int, examples: Sequence[Mapping[str, np.ndarray]] = ()) -> int:
    """The smallest batch size p such that the model computes a row bit-identically in every call of p to
    `max_rows` rows. Kernel choice depends on shapes, not values, but the boundary moves with the shape beyond
    the batch dimension (MiniLM: 2 rows at 8 tokens, 3 at 7), so every distinct feed shape among `examples`
    (one-row requests; default: the signature's example input) is probed and the largest p wins. Shapes never
    probed are not proven. At worst p = max_rows: every call is then padded to the full batch."""
    requests = list(examples) or [example_inputs(runtime.spec.signature)]
    shapes: dict[Hashable, Tensors] = {}
    for request in requests:
        feeds = runtime.prepare(request)
        shapes.setdefault(batch_key(feeds), feeds)
    return max(_min_rows_for(runtime, feeds, max_rows) for feeds in shapes.values())


def _min_rows_for(runtime: Runtime, feeds: Tensors, max_rows: int) -> int:
    first: dict[int, Tensors] = {}
    for m in probe_sizes(max_rows):
        merged, _ = merge([feeds], m)
        first[m] = {k: v[:1].copy() for k, v in runtime.run(merged).items()}
    sizes = sorted(first)
    reference = first[sizes[-1]]
    p = sizes[-1]
    for m in reversed(sizes[:-1]):
        if not all(np.array_equal(first[m][k], reference[k]) for k in reference):
            break
        p = m
    return p

"""A profile: sufficient statistics of some rows of a model version's inputs and outputs, one per tensor, chosen
by the tensor's kind (from its signature):

    text        BYTES                       histogram of UTF-8 lengths (fixed edges)     -> PSI
    classes     integers, [batch]           histogram of values 0..63 (+ the rest)       -> PSI
    features    numbers, [batch, d <= 64]   per dimension: count, sum, sum of squares    -> mean shift (in the
                                                                                            reference's std units)
    embedding   floats, wider or deeper     centroid (sum of rows), histogram of norms   -> centroid cosine
                                                                                            distance, norm PSI

Profiles add (windows are sums of buckets), cost a few numpy reductions per request, and are JSON on disk.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from slserve.spec import Datatype, Signature, TensorSpec

TEXT_EDGES = np.array([16, 32, 64, 128, 256, 512, 1024, 2048, 4096], dtype=np.float64)  # bytes; 10 bins
NORM_EDGES = np.geomspace(1e-3, 1e3, 25)  # 26 bins, below 0.001 to above 1000
CLASSES = 64  # values 0..63 each have a bin; any other value shares the last
MAX_FEATURES = 64  # wider numeric tensors are profiled as embeddings
EPSILON = 1e-4  # a bin's least share in PSI (an empty bin on one side would make it infinite)
FLOATS = {Datatype.FP16, Datatype.FP32, Datatype.FP64}


def kind_of(spec: TensorSpec) -> str | None:
    """Which statistics a tensor gets (None: none, e.g. a variable inner dimension)."""
    if spec.datatype is Datatype.BYTES:
        return "text" if len(spec.shape) == 1 else None
    inner = spec.shape[1:]
    if -1 in inner:
        return None
    if not inner:
        return "features" if spec.datatype in FLOATS else "classes"
    width = math.prod(inner)
    return "features" if width <= MAX_FEATURES else "embedding" if spec.datatype in FLOATS else None


@dataclass
class TensorProfile:
    kind: str
    count: int = 0  # rows
    hist: np.ndarray | None = None  # text, classes, embedding (norms)
    sum: np.ndarray | None = None  # features, embedding
    sumsq: np.ndarray | None = None  # features

    @classmethod
    def empty(cls, kind: str, width: int) -> TensorProfile:
        if kind == "text":
            return cls(kind, hist=np.zeros(len(TEXT_EDGES) + 1, dtype=np.int64))
        if kind == "classes":
            return cls(kind, hist=np.zeros(CLASSES + 1, dtype=np.int64))
        if kind == "features":
            return cls(kind, sum=np.zeros(width), sumsq=np.zeros(width))
        return cls(kind, hist=np.zeros(len(NORM_EDGES) + 1, dtype=np.int64), sum=np.zeros(width))

    def observe(self, arr: np.ndarray) -> None:
        rows = arr.shape[0]
        if rows == 0:
            return
        self.count += rows
        if self.kind == "text":
            assert self.hist is not None
            lengths = np.fromiter((len(v) for v in arr), dtype=np.float64, count=rows)
            self.hist += np.bincount(np.searchsorted(TEXT_EDGES, lengths, side="right"), minlength=self.hist.size)
        elif self.kind == "classes":
            assert self.hist is not None
            values = arr.astype(np.int64, copy=False)
            self.hist += np.bincount(
                np.where((values >= 0) & (values < CLASSES), values, CLASSES), minlength=CLASSES + 1
            )
        else:
            flat = arr.reshape(rows, -1).astype(np.float64, copy=False)
            assert self.sum is not None
            self.sum += flat.sum(axis=0)
            if self.kind == "features":
                assert self.sumsq is not None
                self.sumsq += np.einsum("ij,ij->j", flat, flat)
            else:
                assert self.hist is not None
                norms = np.sqrt(np.einsum("ij,ij->i", flat, flat))
                self.hist += np.bincount(np.searchsorted(NORM_EDGES, norms, side="right"), minlength=self.hist.size)

    def add(self, other: TensorProfile) -> None:
        self.count += other.count
        for name in ("hist", "sum", "sumsq"):
            mine, theirs = getattr(self, name), getattr(other, name)
            if mine is not None and theirs is not None:
                mine += theirs

    def copy(self) -> TensorProfile:
        copies = {n: None if getattr(self, n) is None else getattr(self, n).copy() for n in ("hist", "sum", "sumsq")}
        return TensorProfile(self.kind, self.count, **copies)

    def to_dict(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"kind": self.kind, "count": self.count}
        for name in ("hist", "sum", "sumsq"):
            value = getattr(self, name)
            if value is not None:
                doc[name] = value.tolist()
        return doc

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> TensorProfile:
        arrays = {
            name: np.asarray(doc[name], dtype=np.int64 if name == "hist" else np.float64)
            for name in ("hist", "sum", "sumsq")
            if name in doc
        }
        return cls(doc["kind"], int(doc["count"]), **arrays)


@dataclass
class Profile:
    """A model version's profile: one `TensorProfile` per input and output that has a kind."""

    tensors: dict[str, TensorProfile] = field(default_factory=dict)  # "input:text", "output:embedding", ...

    @classmethod
    def empty(cls, signature: Signature) -> Profile:
        tensors = {}
        for side, specs in (("input", signature.inputs), ("output", signature.outputs)):
            for spec in specs:
                kind = kind_of(spec)
                if kind is not None:
                    tensors[f"{side}:{spec.name}"] = TensorProfile.empty(kind, math.prod(spec.shape[1:]))
        return cls(tensors)

    @classmethod
    def of(cls, signature: Signature, inputs: Mapping[str, np.ndarray], outputs: Mapping[str, np.ndarray]) -> Profile:
        profile = cls.empty(signature)
        profile.observe(inputs, outputs)
        return profile

    @property
    def rows(self) -> int:
        return max((t.count for t in self.tensors.values()), default=0)

    def observe(self, inputs: Mapping[str, np.ndarray], outputs: Mapping[str, np.ndarray]) -> None:
        self.observe_many([(inputs, outputs)])

    def observe_many(self, requests: Sequence[tuple[Mapping[str, np.ndarray], Mapping[str, np.ndarray]]]) -> None:
        """Many requests at once: one reduction per tensor for all of them (a request's own would cost more in
        numpy's per-call overhead than in arithmetic)."""
        for key, tensor in self.tensors.items():
            side, _, name = key.partition(":")
            arrays = [a for i, o in requests if (a := (i if side == "input" else o).get(name)) is not None]
            if arrays:  # (an output a request did not ask for is not there)
                tensor.observe(arrays[0] if len(arrays) == 1 else np.concatenate(arrays))

    def add(self, other: Profile) -> None:
        for key, tensor in other.tensors.items():
            mine = self.tensors.get(key)
            if mine is None:
                self.tensors[key] = tensor.copy()
            elif mine.kind == tensor.kind:
                mine.add(tensor)

    def to_dict(self) -> dict[str, Any]:
        return {"rows": self.rows, "tensors": {k: t.to_dict() for k, t in self.tensors.items()}}

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> Profile:
        return cls({k: TensorProfile.from_dict(t) for k, t in doc["tensors"].items()})


@dataclass(frozen=True)
class Score:
    tensor: str  # "input:text"
    measure: str  # psi | mean_shift | centroid_cosine | norm_psi
    value: float
    threshold: float

    @property
    def drifting(self) -> bool:
        return self.value > self.threshold

    def to_dict(self) -> dict[str, Any]:
        return {
            "tensor": self.tensor,
            "measure": self.measure,
            "value": round(self.value, 6),
            "threshold": self.threshold,
            "drifting": self.drifting,
        }


@dataclass(frozen=True)
class Thresholds:
    psi: float = 0.25  # the usual reading: < 0.1 stable, 0.1-0.25 moderate, > 0.25 a significant shift
    mean_shift: float = 0.5  # in the reference's standard deviations, the largest over dimensions
    centroid_cosine: float = 0.05  # 1 - cosine between the reference's mean vector and the window's


def psi(reference: np.ndarray, current: np.ndarray) -> float:
    """Population stability index of two histograms over the same bins."""
    r = np.maximum(reference / max(reference.sum(), 1), EPSILON)
    c = np.maximum(current / max(current.sum(), 1), EPSILON)
    used = (reference > 0) | (current > 0)
    return float(np.sum(((c - r) * np.log(c / r))[used]))


def compare(reference: Profile, current: Profile, thresholds: Thresholds) -> list[Score]:
    scores = []
    for key, cur in current.tensors.items():
        ref = reference.tensors.get(key)
        if ref is None or ref.kind != cur.kind or ref.count == 0 or cur.count == 0:
            continue
        if cur.kind in ("text", "classes"):
            assert ref.hist is not None and cur.hist is not None
            scores.append(Score(key, "psi", psi(ref.hist, cur.hist), thresholds.psi))
        elif cur.kind == "features":
            assert ref.sum is not None and ref.sumsq is not None and cur.sum is not None
            mean_r, mean_c = ref.sum / ref.count, cur.sum / cur.count
            std_r = np.sqrt(np.maximum(ref.sumsq / ref.count - mean_r**2, 0.0))
            # A dimension constant in the reference: any move is measured against a small scale of its own.
            scale = np.maximum(std_r, 1e-3 * (np.abs(mean_r) + 1.0))
            scores.append(
                Score(key, "mean_shift", float(np.max(np.abs(mean_c - mean_r) / scale)), thresholds.mean_shift)
            )
        else:
            assert ref.sum is not None and cur.sum is not None and ref.hist is not None and cur.hist is not None
            a, b = ref.sum / ref.count, cur.sum / cur.count
            denom = float(np.linalg.norm(a) * np.linalg.norm(b))
            distance = 1.0 - float(a @ b) / denom if denom > 0 else 0.0
            scores.append(Score(key, "centroid_cosine", distance, thresholds.centroid_cosine))
            scores.append(Score(key, "norm_psi", psi(ref.hist, cur.hist), thresholds.psi))
    return scores

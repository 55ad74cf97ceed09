"""Two models' answers to the same inputs, compared: a shadow version's against the primary's (the router keeps
one comparison per model, alias and shadow version) and a quantized variant's against fp32 (the build's
agreement check)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

ShadowKey = tuple[str, str, str]  # (model, alias, shadow version): one comparison each


@dataclass
class OutputComparison:
    requests: int = 0
    failures: int = 0
    max_abs_diff: float = 0.0
    cosine_sum: float = 0.0
    cosine_rows: int = 0
    min_cosine: float = 1.0
    argmax_agree: int = 0
    argmax_rows: int = 0

    def add(self, primary: Mapping[str, np.ndarray], shadow: Mapping[str, np.ndarray]) -> None:
        """Compare every output both answers have: max |a - b|; per-row cosine of float outputs with a feature
        axis (embeddings, probabilities); argmax agreement of those rows, and equality of integer outputs
        (labels)."""
        self.requests += 1
        for name in primary.keys() & shadow.keys():
            a, b = np.asarray(primary[name]), np.asarray(shadow[name])
            if a.shape != b.shape:
                self.failures += 1
                continue
            if a.dtype.kind in "iub":
                self.argmax_agree += int((a == b).sum())
                self.argmax_rows += a.size
                continue
            a64, b64 = a.astype(np.float64), b.astype(np.float64)
            if a.size:
                self.max_abs_diff = max(self.max_abs_diff, float(np.abs(a64 - b64).max()))
            if a.ndim >= 2 and a.shape[-1] > 1:
                rows_a, rows_b = a64.reshape(-1, a.shape[-1]), b64.reshape(-1, a.shape[-1])
                norms = np.linalg.norm(rows_a, axis=1) * np.linalg.norm(rows_b, axis=1)
                cosine = (rows_a * rows_b).sum(axis=1) / np.where(norms == 0, 1.0, norms)
                self.cosine_sum += float(cosine.sum())
                self.cosine_rows += len(cosine)
                self.min_cosine = min(self.min_cosine, float(cosine.min()))
                self.argmax_agree += int((rows_a.argmax(axis=1) == rows_b.argmax(axis=1)).sum())
                self.argmax_rows += len(rows_a)

    def failed(self) -> None:
        self.requests += 1
        self.failures += 1

    def merge(self, other: OutputComparison) -> None:
        """Count `other`'s comparisons too (another process's, of the same shadow)."""
        self.requests += other.requests
        self.failures += other.failures
        self.max_abs_diff = max(self.max_abs_diff, other.max_abs_diff)
        self.cosine_sum += other.cosine_sum
        self.cosine_rows += other.cosine_rows
        self.min_cosine = min(self.min_cosine, other.min_cosine)
        self.argmax_agree += other.argmax_agree
        self.argmax_rows += other.argmax_rows

    def to_dict(self) -> dict[str, float | int | None]:
        return {
            "requests": self.requests,
            "failures": self.failures,
            "max_abs_diff": self.max_abs_diff,
            "mean_cosine": self.cosine_sum / self.cosine_rows if self.cosine_rows else None,
            "min_cosine": self.min_cosine if self.cosine_rows else None,
            "argmax_agreement": self.argmax_agree / self.argmax_rows if self.argmax_rows else None,
        }

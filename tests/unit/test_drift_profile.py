"""Drift statistics: each tensor kind's profile, the scores, windows that slide, pins that persist."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from slserve.drift.monitor import DriftMonitor
from slserve.drift.profile import Profile, Thresholds, compare, kind_of, psi
from slserve.errors import InvalidInput
from slserve.spec import Datatype, Signature, TensorSpec

SIGNATURE = Signature.model_validate(
    {
        "inputs": [
            {"name": "text", "datatype": "BYTES", "shape": [-1]},
            {"name": "x", "datatype": "FP32", "shape": [-1, 4]},
        ],
        "outputs": [
            {"name": "embedding", "datatype": "FP32", "shape": [-1, 384]},
            {"name": "label", "datatype": "INT64", "shape": [-1]},
        ],
    }
)
RNG = np.random.default_rng(0)
DIRECTION = RNG.normal(size=384)


def traffic(
    n: int, shift: float = 0.0, long_texts: bool = False, turn: float = 0.0, labels: int = 3
) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(int(1000 * shift + 10 * turn + n + long_texts))
    words = rng.integers(2, 40 if long_texts else 12, n)
    text = np.array([b"word " * int(w) for w in words], dtype=object)
    embedding = DIRECTION + rng.normal(size=(n, 384)) * 2.0 + turn * np.roll(DIRECTION, 7)
    return {
        "text": text,
        "x": (rng.normal(size=(n, 4)) + shift).astype(np.float32),
        "embedding": embedding.astype(np.float32),
        "label": rng.integers(0, labels, n).astype(np.int64),
    }


def profile(rows: dict[str, np.ndarray]) -> Profile:
    return Profile.of(SIGNATURE, {k: rows[k] for k in ("text", "x")}, {k: rows[k] for k in ("embedding", "label")})


def scores(reference: Profile, current: Profile) -> dict[tuple[str, str], float]:
    return {(s.tensor, s.measure): s.value for s in compare(reference, current, Thresholds())}


def test_kinds_follow_the_signature() -> None:
    def spec(datatype: str, shape: list[int]) -> TensorSpec:
        return TensorSpec(name="t", datatype=Datatype(datatype), shape=shape)

    assert kind_of(spec("BYTES", [-1])) == "text"
    assert kind_of(spec("INT64", [-1])) == "classes"
    assert kind_of(spec("FP32", [-1, 4])) == "features"
    assert kind_of(spec("FP32", [-1, 384])) == "embedding"
    assert kind_of(spec("FP32", [-1, -1])) is None  # rows of different widths cannot be summed
    assert kind_of(spec("INT64", [-1, 512])) is None


def test_the_same_distribution_scores_low_and_each_kind_of_shift_crosses_its_threshold() -> None:
    t = Thresholds()
    reference = profile(traffic(2000))
    same = scores(reference, profile(traffic(500, shift=0.0001)))
    assert same[("input:text", "psi")] < 0.05 and same[("output:label", "psi")] < 0.05
    assert same[("input:x", "mean_shift")] < 0.2 and same[("output:embedding", "centroid_cosine")] < t.centroid_cosine
    assert scores(reference, profile(traffic(500, shift=1.0)))[("input:x", "mean_shift")] > t.mean_shift
    assert scores(reference, profile(traffic(500, long_texts=True)))[("input:text", "psi")] > t.psi
    assert scores(reference, profile(traffic(500, labels=6)))[("output:label", "psi")] > t.psi
    turned = scores(reference, profile(traffic(500, turn=1.5)))
    assert turned[("output:embedding", "centroid_cosine")] > t.centroid_cosine


def test_psi_is_zero_for_equal_shares_and_finite_for_empty_bins() -> None:
    assert psi(np.array([10, 20, 0]), np.array([1, 2, 0])) == pytest.approx(0.0)
    assert 0 < psi(np.array([10, 0]), np.array([0, 10])) < 20


def test_profiles_add_and_round_trip_as_json() -> None:
    a, b = traffic(100), traffic(50, shift=0.5)
    whole = profile({k: np.concatenate([a[k], b[k]]) for k in a})
    summed = profile(a)
    summed.add(profile(b))
    again = Profile.from_dict(summed.to_dict())
    assert again.rows == whole.rows == 150
    for key, t in whole.tensors.items():
        other = again.tensors[key]
        for name in ("hist", "sum", "sumsq"):
            if getattr(t, name) is not None:
                assert np.allclose(getattr(t, name), getattr(other, name))


def test_the_window_slides_and_pins_persist(tmp_path: Path) -> None:
    now = [0.0]
    reference = profile(traffic(1000))
    monitor = DriftMonitor(lambda m, v: reference, tmp_path / "drift", window_s=100, min_rows=50, clock=lambda: now[0])

    def observe(rows: dict[str, np.ndarray]) -> None:
        monitor.observe(
            "m", "1", SIGNATURE, {k: rows[k] for k in ("text", "x")}, {k: rows[k] for k in ("embedding", "label")}
        )

    observe(traffic(40))
    assert monitor.version("m", "1").state == "too few rows"
    observe(traffic(200, shift=2.0))
    assert monitor.version("m", "1").state == "drifting"
    monitor.evaluate()
    assert monitor.drifting("m", "1")
    now[0] = 95.0  # the first buckets are still in the window
    assert monitor.version("m", "1").rows == 240
    now[0] = 105.0  # ... and now they slid out
    assert monitor.version("m", "1").rows == 0
    with pytest.raises(InvalidInput, match="has 0 rows in its window, fewer than drift_min_rows = 50"):
        monitor.pin("m", "1")
    observe(traffic(100, shift=2.0))
    assert monitor.pin("m", "1").state == "stable"
    monitor.evaluate()
    assert not monitor.drifting("m", "1")
    fresh = DriftMonitor(lambda m, v: reference, tmp_path / "drift", window_s=100, min_rows=50)
    found = fresh.reference("m", "1")
    assert found is not None and found[1] == "pinned" and found[0].rows == 100

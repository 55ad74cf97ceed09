"""Exact batching is proven on distinct rows at every position: a kernel that rounds a row differently at odd
positions, for some values only (MLAS on some CPUs), is caught; one row repeated would not catch it."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np

from slserve.runtime.batching import call_sizes, merge, prove_shapes


class OddRows:
    """y = 3x, except that rows at odd positions whose first value is over 0.5 come out a rounding off."""

    spec = SimpleNamespace(resources=SimpleNamespace(threads=1))

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        x = feeds["x"]
        y = x * np.float32(3)
        odd = (np.arange(len(x)) % 2 == 1) & (x[:, 0] > 0.5)
        y[odd] = np.nextafter(y[odd], np.float32(np.inf))
        return {"y": y}


class Exact:
    spec = SimpleNamespace(resources=SimpleNamespace(threads=1))

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {"y": feeds["x"] * np.float32(3)}


def test_a_position_and_value_dependent_rounding_leaves_the_shape_unbatched() -> None:
    example = [{"x": np.full((1, 4), 0.25, dtype=np.float32)}]  # a value the rounding never touches
    runtime = OddRows()
    one = example[0]
    for size in call_sizes(16):  # what a proof on one repeated row sees: every row alike
        produced = runtime.run(merge([one], size)[0])["y"]
        assert (produced == produced[:1]).all()
    assert prove_shapes(runtime, 16, example) == {}  # type: ignore[arg-type]
    assert prove_shapes(Exact(), 16, example) == {"x:float32[4]": 1}  # type: ignore[arg-type]

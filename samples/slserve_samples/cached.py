"""A model that keeps working memory of its own once called (a cache, as serving models keep KV caches and
workspaces): many of its functions on one host are what a memory budget is measured and tested with."""

from __future__ import annotations

import torch

WORKING_MB = 64  # what each instance allocates at its first call, and keeps


class Cached(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(16, 16)
        self.cache: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.cache is None:
            self.cache = torch.ones(WORKING_MB * 262144)  # touched: resident, and private to this instance
        return self.layer(x) + self.cache[:1]


def build() -> Cached:
    return Cached()


def cached_function(name: str, seed: int, idle_seconds: float, factory: str = "slserve_samples.cached:build") -> str:
    """A function.toml of one instance at most (`factory`: this model, or another of the same signature)."""
    return _TOML.format(name=name, seed=seed, idle_seconds=idle_seconds, factory=factory)


_TOML = """
[model]
name = "{name}"

[source]
framework = "torch"
factory = "{factory}"
seed = {seed}

[[signature.inputs]]
name = "x"
datatype = "FP32"
shape = [-1, 16]

[[signature.outputs]]
name = "y"
datatype = "FP32"
shape = [-1, 16]

[scaling]
max_instances = 1
idle_seconds = {idle_seconds}
"""

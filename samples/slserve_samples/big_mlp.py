"""A 1 GB float32 MLP, the cold-start workload: its weights are generated from a seed at build time."""

from __future__ import annotations

from torch import nn

IN_FEATURES = 1024
HIDDEN = 7680
DEPTH = 4  # square hidden layers: 4 x 7680^2 + 2 x 1024 x 7680 floats ~ 1.0 GB


class BigMLP(nn.Sequential):
    def __init__(self, width: int = HIDDEN, depth: int = DEPTH, features: int = IN_FEATURES) -> None:
        layers: list[nn.Module] = [nn.Linear(features, width), nn.ReLU()]
        for _ in range(depth):
            layers += [nn.Linear(width, width), nn.ReLU()]
        layers.append(nn.Linear(width, features))
        super().__init__(*layers)


def build() -> BigMLP:
    return BigMLP()


def build_small() -> BigMLP:
    """The same architecture at 1/1000 of the size, for fast tests of the code path."""
    return BigMLP(width=64, depth=2, features=16)

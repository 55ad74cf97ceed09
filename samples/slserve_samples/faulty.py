"""A model that kills its own process on a chosen input: exercises the platform's handling of dying instances."""

from __future__ import annotations

import os
import time

import torch
from torch import nn

CRASH_BELOW = -1000.0  # any input element below this makes the instance process exit at once


class CrashOnSentinel(nn.Module):
    def __init__(self, features: int = 16) -> None:
        super().__init__()
        self.linear = nn.Linear(features, features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if bool((x < CRASH_BELOW).any()):
            os._exit(3)  # like a segfault in native code: no exception, no cleanup
        return torch.relu(self.linear(x))


def build() -> CrashOnSentinel:
    return CrashOnSentinel()


class Slow(nn.Module):
    """Takes `SLOW_SECONDS` per call: keeps requests in flight long enough to test draining."""

    def __init__(self, features: int = 16) -> None:
        super().__init__()
        self.linear = nn.Linear(features, features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        time.sleep(SLOW_SECONDS)
        return self.linear(x)


SLOW_SECONDS = 0.3


def build_slow() -> Slow:
    return Slow()


class Broken(nn.Module):
    """Builds and snapshots fine, fails every call (its warm-up too): the function can never start an instance."""

    def __init__(self, features: int = 16) -> None:
        super().__init__()
        self.linear = nn.Linear(features, features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("this model is broken on purpose")


def build_broken() -> Broken:
    return Broken()


SLEEP_SENTINEL = 4242.0


class Sleepy(nn.Module):
    """Sleeps `x[0, 1]` seconds when `x[0, 0]` is the sentinel, else answers at once: holds one request for
    exactly as long as a test needs (timeouts, concurrency limits)."""

    def __init__(self, features: int = 16) -> None:
        super().__init__()
        self.linear = nn.Linear(features, features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] and float(x[0, 0]) == SLEEP_SENTINEL:
            time.sleep(min(max(float(x[0, 1]), 0.0), 30.0))
        return self.linear(x)


def build_sleepy() -> Sleepy:
    return Sleepy()

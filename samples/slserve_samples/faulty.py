"""A model that kills its own process on a chosen input: exercises the platform's handling of dying instances."""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
from setproctitle import getproctitle
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
    """Builds fine (the build runs it once), fails every call where it serves (its warm-up too), as a model whose
    serving host lacks what the build host had: the function can never start an instance."""

    def __init__(self, features: int = 16) -> None:
        super().__init__()
        self.linear = nn.Linear(features, features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if getproctitle().startswith("slserve instance"):
            raise RuntimeError("this model is broken on purpose")
        return self.linear(x)


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


# --- Hazards: one function that can misbehave in every way a tenant's input might make it ---------------------

SLEEP = 4242.0  # row = [SLEEP, seconds, ...]: the call sleeps that long (the longest asked, once per call)
MODEL_BUG = -7777.0  # row = [MODEL_BUG, ...]: the model raises ValueError
CRASH = -1001.0  # row = [CRASH, ...]: the process exits at once (as a segfault would)
HOG = 9999.0  # row = [HOG, megabytes, seconds, ...]: the call holds that much memory for that long
PROCESSOR_BUG = -3333.0  # row = [PROCESSOR_BUG, ...]: the processor raises IndexError
ORPHAN = 5151.0  # row = [ORPHAN, seconds, ...]: forks a process that holds the instance's open files that long


class Hazards(nn.Module):
    """A linear layer, unless a row of the call starts with one of the sentinels above."""

    def __init__(self, features: int = 16) -> None:
        super().__init__()
        self.linear = nn.Linear(features, features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.tolist() if x.shape[0] <= 64 else []
        time.sleep(max([min(max(row[1], 0.0), 60.0) for row in rows if row[0] == SLEEP], default=0.0))
        for row in rows:
            if row[0] == CRASH:
                os._exit(3)
            if row[0] == MODEL_BUG:
                raise ValueError("this row breaks the model on purpose")
            if row[0] == ORPHAN:
                hold_files(min(max(row[1], 0.0), 60.0))
            if row[0] == HOG:
                held = torch.ones(int(row[1]) * 1024 * 1024 // 4)  # touched pages: resident memory
                time.sleep(min(max(row[2], 0.0), 60.0))
                del held
        return self.linear(x)


def hold_files(seconds: float) -> None:
    """Fork a child that keeps every file this process has open (its socket to the gateway too) for `seconds`,
    as a model's helper process would: the socket then outlives the process that answered on it."""
    if os.fork() == 0:
        time.sleep(seconds)
        os._exit(0)


def build_hazards() -> Hazards:
    return Hazards()


class HazardProcessor:
    """Passes tensors through; raises IndexError, as buggy processor code would, on PROCESSOR_BUG."""

    def __init__(self, assets: Mapping[str, Path]) -> None:
        pass

    def preprocess(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        if bool((inputs["x"][:, 0] == PROCESSOR_BUG).any()):
            return {"x": inputs["x"][[]][0]}  # IndexError: index 0 is out of bounds
        return dict(inputs)

    def postprocess(self, outputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        return dict(outputs)


_HAZARDS_TOML = """
tier = "{tier}"

[model]
name = "hazards"

[source]
framework = "torch"
factory = "slserve_samples.faulty:build_hazards"
seed = 5

[processor]
factory = "slserve_samples.faulty:HazardProcessor"

[[signature.inputs]]
name = "x"
datatype = "FP32"
shape = [-1, 16]

[[signature.outputs]]
name = "y"
datatype = "FP32"
shape = [-1, 16]

[resources]
memory_mb = {memory_mb}

[scaling]
max_instances = {max_instances}
target_concurrency = 4

[batching]
max_batch_size = 8
max_delay_ms = {max_delay_ms}

[limits]
max_rows = 64
"""


def hazards_function(
    tier: str = "standard", memory_mb: int = 2048, max_instances: int = 2, max_delay_ms: int = 20
) -> str:
    """The function.toml of a `hazards` function (the tests' and the soak's)."""
    return _HAZARDS_TOML.format(tier=tier, memory_mb=memory_mb, max_instances=max_instances, max_delay_ms=max_delay_ms)

"""Device choice, as a pure function of what the spec asks for and what the host has."""

from __future__ import annotations

from slserve.errors import RuntimeUnavailable
from slserve.spec import FunctionSpec


def choose_device(spec: FunctionSpec, requested: str | None, cuda_available: bool) -> str:
    """`requested` ('cpu' or 'cuda') wins; otherwise a function that names a GPU gets CUDA when the host has
    one and falls back to the CPU when it does not (local development of GPU functions)."""
    if requested == "cuda" and not cuda_available:
        raise RuntimeUnavailable("device 'cuda' was requested but this host has no usable CUDA device")
    if requested in ("cpu", "cuda"):
        return requested
    if requested is not None:
        raise RuntimeUnavailable(f"unknown device {requested!r}; use 'cpu' or 'cuda'")
    return "cuda" if spec.resources.gpu and cuda_available else "cpu"

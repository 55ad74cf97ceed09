"""A routed request, run: its candidate functions in order (warm capacity first within a tier, fallback when a
tier cannot serve), the price of what it asked for, a pipeline's steps each served as a request of its own, the
shadow copy, and every answer profiled for drift. The router chooses (`router`); this runs what it chose."""

from slserve.serving.runner import Runner
from slserve.serving.served import Served

__all__ = ["Runner", "Served"]

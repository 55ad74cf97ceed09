"""Which builds a family's template preloads: those in use, not every build. A function is in use when it was
called (in this run, or often enough before a restart to have an idle gap recorded) or is kept warm
(`min_instances`); a rarely called one is mapped after the fork, on demand, and its first call puts it in use
(its family's template is renewed to preload it). With nothing recorded yet (a first start) every build is
preloaded, as nothing says which will be called."""

from __future__ import annotations

from collections.abc import Iterable

from slserve.platform.base import Deployed


class Preloads:
    def __init__(self, recorded: Iterable[str] | None) -> None:
        """`recorded`: the functions the last run saw called (None: no record)."""
        self.everything = recorded is None
        self.used = set(recorded or ())

    def wants(self, function: Deployed) -> bool:
        return self.everything or function.name in self.used or function.spec.scaling.min_instances > 0

    def called(self, function: Deployed) -> bool:
        """Note a call; True when it puts a build in use that was not preloaded before."""
        if self.wants(function):
            return False
        self.used.add(function.name)
        return True

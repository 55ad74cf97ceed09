"""A function's failures to start an instance: what to say, and when to stop trying. An error the instance
reported (a bad artifact, broken model code) will not go away by retrying at once, so the requests waiting are
refused; a start that just died is tried again, up to `MAX_START_FAILURES` in a row. After a failure, requests
fail fast for `START_RETRY_S` before the next start is tried."""

from __future__ import annotations

import time

from slserve.errors import SlserveError
from slserve.platform.local.instance_handle import Instance

MAX_START_FAILURES = 3
START_RETRY_S = 2.0


class StartFailures:
    def __init__(self, function: str) -> None:
        self.function = function
        self.count = 0  # in a row, since the last instance that started
        self.failed_at = -START_RETRY_S

    def recent(self) -> bool:
        return time.monotonic() - self.failed_at < START_RETRY_S

    def given_up(self) -> bool:
        return self.count >= MAX_START_FAILURES

    def started(self) -> None:
        self.count = 0

    def failed(self, inst: Instance, reported: SlserveError | None, status: str, previous_serves: bool) -> str:
        """What the function cannot do now, having failed to start `inst` (`reported`: the error the instance
        sent, if it sent one; `previous_serves`: the build before a redeploy still serves)."""
        self.count += 1
        self.failed_at = time.monotonic()
        if reported is not None:
            detail = reported.message.removeprefix(f"{self.function}: ")  # named once, here
        else:
            detail = f"instance {inst.name} exited while starting ({status})"
        error = f"{self.function}: cannot start an instance: {detail}"
        if previous_serves:  # a redeploy that cannot start: the build before it serves on
            error += f" (build {inst.digest[:12]}; the previous build keeps serving)"
        return error

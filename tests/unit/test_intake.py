"""The intake's minimum rate: a body that falls behind it is cut, whether it pauses or dribbles."""

from __future__ import annotations

import asyncio
from collections.abc import MutableMapping
from typing import Any

import pytest

from slserve.errors import UploadTooSlow
from slserve.gateway.intake import Intake

BODY = 200 * 1024  # over the untimed size, so its read is timed


def dribble(step: int, every_s: float, total: int = BODY) -> Any:
    """A receive that brings `step` bytes every `every_s` seconds until `total` have come."""
    sent = 0

    async def receive() -> MutableMapping[str, Any]:
        nonlocal sent
        await asyncio.sleep(every_s)
        chunk = b"x" * min(step, total - sent)
        sent += len(chunk)
        return {"type": "http.request", "body": chunk, "more_body": sent < total}

    return receive


def read(intake: Intake, receive: Any) -> tuple[bytes, int]:
    headers = {"content-length": str(BODY)}
    return asyncio.run(intake.read(headers, receive, 1 << 30, "test", "tenant"))


def test_a_body_dribbled_in_tiny_fast_messages_is_cut_when_it_falls_behind_the_rate() -> None:
    # 64 bytes every millisecond is 64 KB/s, far under the 10 MB/s minimum: no pause is long enough for a timer,
    # so the rate is checked on every message.
    intake = Intake(1 << 30, 1.0, min_bytes_per_s=10 << 20, grace_s=0.05)
    with pytest.raises(UploadTooSlow, match="slower than"):
        read(intake, dribble(64, 0.001))
    assert intake.held == 0 and intake.held_by == {}  # what it held is given back


def test_a_body_that_pauses_past_the_rate_is_cut_by_the_timer() -> None:
    intake = Intake(1 << 30, 1.0, min_bytes_per_s=10 << 20, grace_s=0.05)
    with pytest.raises(UploadTooSlow):
        read(intake, dribble(BODY, 5.0))
    assert intake.held == 0


def test_a_body_at_the_rate_is_read_whole() -> None:
    intake = Intake(1 << 30, 1.0, min_bytes_per_s=1 << 20, grace_s=1.0)
    body, kept = read(intake, dribble(32 * 1024, 0.001))
    assert len(body) == BODY and kept == 2 * BODY and intake.held == kept

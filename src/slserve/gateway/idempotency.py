"""Idempotency-Key: what makes two requests "the same", and one holder per key at a time.

Requests with the same (API key, Idempotency-Key) run one at a time, in arrival order. The holder either leaves
a stored answer (it succeeded: the ones after it get that answer, byte for byte, unbilled) or it does not (it
failed, or its answer could not be made durable): then the next one in line takes over and runs itself, and the
rest wait for it in turn. A waiter never runs beside the holder, so two answers are never stored for one key.
A waiter that is still in line after the request timeout gets a 409 and may retry.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections import deque
from collections.abc import Mapping

from slserve.errors import IdempotencyInProgress, InvalidInput

# Headers that change the answer (the tier, the canary bucket, fallback rights, where the binary part starts):
# two requests that differ in one of them are different requests, even with equal bodies.
ANSWER_HEADERS = (
    "x-slserve-tier",
    "x-slserve-routing-key",
    "x-slserve-allow-upgrade",
    "inference-header-content-length",
)
MAX_KEY_LENGTH = 255

Slot = tuple[str, str]  # (API key id, Idempotency-Key)


def fingerprint(endpoint: str, path: str, headers: Mapping[str, str], body: bytes) -> str:
    """Everything the answer depends on: the endpoint and path (model, version or alias), the headers above, and
    the body (inputs, requested outputs, binary flags, v2 parameters, OpenAI's model and encoding)."""
    h = hashlib.sha256(f"{endpoint}\0{path}\0".encode())
    for name in ANSWER_HEADERS:
        h.update(f"{headers.get(name, '')}\0".encode("latin-1"))
    h.update(body)
    return h.hexdigest()


def check_key(value: str) -> str:
    if not 0 < len(value) <= MAX_KEY_LENGTH:
        raise InvalidInput(f"Idempotency-Key must be 1 to {MAX_KEY_LENGTH} characters")
    return value


class _Line:
    __slots__ = ("held", "waiting")

    def __init__(self) -> None:
        self.held = False
        self.waiting: deque[asyncio.Future[None]] = deque()


class KeyHolders:
    """One holder per slot; the others wait in arrival order and are handed the slot one by one."""

    def __init__(self) -> None:
        self._lines: dict[Slot, _Line] = {}

    async def acquire(self, slot: Slot, timeout_s: float) -> None:
        line = self._lines.get(slot)
        if line is None:
            line = self._lines[slot] = _Line()
        if not line.held:
            line.held = True
            return
        turn = asyncio.get_running_loop().create_future()
        line.waiting.append(turn)
        try:
            await asyncio.wait((turn,), timeout=timeout_s)
        except asyncio.CancelledError:  # the client went away, or the server is stopping
            self._leave(slot, line, turn)
            raise
        if not turn.done():
            self._leave(slot, line, turn)
            raise IdempotencyInProgress(
                f"a request with Idempotency-Key {slot[1]!r} is still running after {timeout_s:g} s; "
                "retry later to get its answer"
            )

    def release(self, slot: Slot) -> None:
        """The holder is done: hand the slot to the next waiter, or free it."""
        line = self._lines.get(slot)
        if line is None:
            return
        while line.waiting:
            turn = line.waiting.popleft()
            if not turn.done():
                turn.set_result(None)  # it holds the slot now
                return
        line.held = False
        del self._lines[slot]

    def _leave(self, slot: Slot, line: _Line, turn: asyncio.Future[None]) -> None:
        if turn.done() and not turn.cancelled():  # handed the slot in the same instant: pass it on
            self.release(slot)
            return
        turn.cancel()
        if turn in line.waiting:
            line.waiting.remove(turn)

    def __len__(self) -> int:
        return len(self._lines)

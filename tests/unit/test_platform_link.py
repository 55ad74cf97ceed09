"""The link between front workers and the platform process (`slserve serve --workers N`): its messages, and keys'
limits counted once for every front, over a real unix socket to a real `PlatformService` (with the local
executor, here over an empty catalog: the functions' own calls are the integration tests')."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest

from slserve.accounts.keys import KeyRecord
from slserve.drift.comparison import OutputComparison
from slserve.errors import (
    InstanceFailed,
    MemoryFull,
    ModelNotFound,
    RateLimited,
    RuntimeUnavailable,
    TooManyRequests,
)
from slserve.platform.base import FunctionStatus, InferRequest, InferResult, InstanceStatus
from slserve.platform.catalog import FolderCatalog
from slserve.platform.link import (
    PlatformState,
    Routing,
    error_message,
    error_of,
    request_message,
    request_of,
    result_message,
    result_of,
)
from slserve.platform.linked import LinkedComparisons, LinkedExecutor, LinkedLimits, LinkedTimeline, PlatformLink
from slserve.platform.local import LocalExecutor
from slserve.platform.local.service import PlatformService
from slserve.platform.targets import Targets
from slserve.platform.wire import Kind, Message, decode, encode
from slserve.snapshot import ArtifactStore


def _through_wire(msg):  # type: ignore[no-untyped-def]
    return decode(b"".join(bytes(p) for p in encode(msg))[4:])


def test_a_request_crosses_with_its_tensors_deadline_and_trace() -> None:
    request = InferRequest(
        function="f",
        inputs={"x": np.arange(6, dtype=np.float32).reshape(2, 3)},
        outputs=["y"],
        id="r1",
        options={"normalize": True},
        deadline=time.monotonic() + 5,
        request_id="req-1",
        trace={"traceparent": "00-" + "a" * 32 + "-" + "b" * 16 + "-01"},
    )
    back = request_of(_through_wire(request_message(7, request)))
    assert (back.function, back.outputs, back.id, back.options) == ("f", ["y"], "r1", {"normalize": True})
    assert (back.deadline, back.request_id, back.trace) == (request.deadline, "req-1", request.trace)
    np.testing.assert_array_equal(back.inputs["x"], request.inputs["x"])


def test_a_result_crosses_with_every_fact_of_its_run() -> None:
    result = InferResult(
        outputs={"y": np.ones((2, 2), dtype=np.int64)},
        function="f",
        version="1",
        instance="f-1",
        queue_ms=0.5,
        compute_ms=2.0,
        batch_size=3,
        cold_start_ms=120.0,
        tokens=11,
        notes={"truncated_rows": [1]},
        device="cpu",
    )
    msg = _through_wire(result_message(9, result))
    assert msg.kind is Kind.RESULT and msg.request_id == 9
    back = result_of(msg)
    np.testing.assert_array_equal(back.outputs["y"], result.outputs["y"])
    back.outputs = result.outputs
    assert back == result


def test_an_error_keeps_its_status_retry_after_and_whether_it_may_have_run() -> None:
    full = MemoryFull("the host memory budget is full", retry_after=2.5)
    retry = error_of(_through_wire(error_message(Kind.ERROR, 1, full)).meta)
    assert isinstance(retry, MemoryFull) and retry.status == 503 and retry.retry_after == 2.5
    failed = InstanceFailed("instance crashed")
    failed.may_have_run = True
    back = error_of(_through_wire(error_message(Kind.ERROR, 2, failed)).meta)
    assert isinstance(back, InstanceFailed) and back.may_have_run and back.message == "instance crashed"
    missing = error_of(error_message(Kind.ERROR, 3, ModelNotFound("no function 'x'")).meta)
    assert isinstance(missing, ModelNotFound) and missing.status == 404


def test_the_platform_state_crosses_whole() -> None:
    status = FunctionStatus(
        name="f",
        model="m",
        version="1",
        framework="onnx",
        tier="standard",
        target="local",
        artifact="abc",
        instances=[InstanceStatus(name="f-1", state="idle", artifact="abc", served=4, pid=12)],
        queued=1,
        served=4,
    )
    state = PlatformState(Routing(True, {"f": 2}, {"f": None}), {"memory": {"held_mb": 12.0}}, {"f": status})
    back = PlatformState.of(_through_wire(state.message(5)))
    assert back == state
    routing = _through_wire(state.routing.message())
    assert routing.kind is Kind.ROUTING and Routing.of(routing.meta) == state.routing


def _key(key_id: str = "k1", **limits: float | int | None) -> KeyRecord:
    return KeyRecord(key_id=key_id, tenant="t", secret_hash=b"", created_at=0.0, **limits)  # type: ignore[arg-type]


@contextlib.asynccontextmanager
async def _platform(tmp_path: Path) -> AsyncIterator[Path]:
    (tmp_path / "functions").mkdir(exist_ok=True)
    store = ArtifactStore(tmp_path / "artifacts")
    catalog = FolderCatalog(store, tmp_path / "functions", [])
    local = LocalExecutor(store, 1, None)
    service = PlatformService(Targets(catalog, {"local": local}), tmp_path / "platform.sock")
    stop = asyncio.Event()
    serving = asyncio.get_running_loop().create_task(service.serve(stop, drain_seconds=1.0))
    try:
        yield tmp_path / "platform.sock"
    finally:
        stop.set()
        await serving


async def _link(socket_path: Path) -> PlatformLink:
    link = PlatformLink(socket_path)
    await link.open(timeout_s=10)
    assert link.state is not None, "the platform's first state did not come"
    return link


async def _until(condition, timeout_s: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "the condition did not come true"
        await asyncio.sleep(0.01)


async def _admitted_in_time(link: PlatformLink, key: KeyRecord, timeout_s: float = 10.0) -> None:
    """The key is let in again within `timeout_s` (what held it was given back)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            await LinkedLimits(link).take(key)
            return
        except TooManyRequests:
            assert time.monotonic() < deadline, f"key {key.key_id} was never let in again"
            await asyncio.sleep(0.01)


def test_a_keys_concurrency_is_counted_once_for_every_front(tmp_path: Path) -> None:
    async def run() -> None:
        async with _platform(tmp_path) as sock:
            one, two = await _link(sock), await _link(sock)
            key = _key(concurrency=2)
            first = await LinkedLimits(one).take(key)
            second = await LinkedLimits(two).take(key)
            with pytest.raises(TooManyRequests, match="k1"):
                await LinkedLimits(one).take(key)
            with pytest.raises(TooManyRequests):
                await LinkedLimits(two).take(key)
            first.release()
            third = await LinkedLimits(two).take(key)  # the release reached the platform before this ask
            second.release()
            third.release()
            await LinkedLimits(one).take(key)
            await one.close()
            await two.close()

    asyncio.run(run())


def test_what_a_front_held_goes_back_when_it_goes_away(tmp_path: Path) -> None:
    async def run() -> None:
        async with _platform(tmp_path) as sock:
            crashing, other = await _link(sock), await _link(sock)
            key = _key(concurrency=1)
            await LinkedLimits(crashing).take(key)
            with pytest.raises(TooManyRequests):
                await LinkedLimits(other).take(key)
            await crashing.close()  # its socket closes, as a killed front's does
            await _admitted_in_time(other, key)  # the gone front's admission was given back
            await other.close()

    asyncio.run(run())


def test_a_keys_rate_is_one_bucket_across_fronts_and_says_when_to_retry(tmp_path: Path) -> None:
    async def run() -> None:
        async with _platform(tmp_path) as sock:
            one, two = await _link(sock), await _link(sock)
            key = _key(rate_per_s=0.5, burst=2)
            await LinkedLimits(one).take(key)
            await LinkedLimits(two).take(key)
            with pytest.raises(RateLimited) as refused:
                await LinkedLimits(one).take(key)
            assert 0 < refused.value.retry_after <= 2.0
            await one.close()
            await two.close()

    asyncio.run(run())


def test_an_unlimited_key_costs_no_round_trip(tmp_path: Path) -> None:
    async def run() -> None:
        link = PlatformLink(tmp_path / "nothing-listens-here.sock")  # never connected
        admission = await LinkedLimits(link).take(_key())
        admission.release()

    asyncio.run(run())


def test_an_asker_that_leaves_gives_back_what_the_platform_granted(tmp_path: Path) -> None:
    async def run() -> None:
        async with _platform(tmp_path) as sock:
            link = await _link(sock)
            key = _key(concurrency=1)
            asking = asyncio.get_running_loop().create_task(LinkedLimits(link).take(key))
            await asyncio.sleep(0)  # the ADMIT is on its way
            asking.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await asking
            assert not link._waiting  # the ask given up on is no longer waited for
            await _admitted_in_time(link, key)  # a cancelled ask kept no admission
            await link.close()

    asyncio.run(run())


def test_a_call_for_a_function_the_platform_lacks_fails_with_its_own_error(tmp_path: Path) -> None:
    async def run() -> None:
        async with _platform(tmp_path) as sock:
            link = await _link(sock)
            executor = LinkedExecutor(link)
            with pytest.raises(ModelNotFound):
                await executor.infer(InferRequest(function="absent", inputs={"x": np.zeros(1, np.float32)}))
            assert executor.ready()
            await link.close()

    asyncio.run(run())


def test_calls_in_flight_fail_with_retry_when_the_platform_goes_away(tmp_path: Path) -> None:
    async def run() -> None:
        async with _platform(tmp_path) as sock:
            link = await _link(sock)
            _, answer = link.ask(lambda n: Message(Kind.RESULT, n))  # a kind the platform never answers
            assert link._channel is not None and link._channel.transport is not None
            link._channel.transport.abort()  # the connection breaks under the call
            with pytest.raises(RuntimeUnavailable, match="retry"):
                await answer
            await _until(lambda: link.state is not None)  # and it connects again
            await link.close()

    asyncio.run(run())


def test_requests_answered_by_two_fronts_show_in_one_timeline(tmp_path: Path) -> None:
    async def run() -> None:
        async with _platform(tmp_path) as sock:
            one, two = await _link(sock), await _link(sock)
            first, second = LinkedTimeline(one), LinkedTimeline(two)
            for _ in range(3):
                first.answered("f", 200, 0.010, None)
            second.answered("f", 503, 0.030, 150.0)
            await asyncio.sleep(0)  # each front tells the platform once per turn of its loop
            await _until_async(lambda: _requests(first), 4)
            recent = (await second.view())["recent"]["f"]
            assert (recent["errors"], recent["cold_starts"], recent["p99_ms"]) == (1, 1, 30.0)
            await one.close()
            await two.close()

    asyncio.run(run())


async def _requests(line: LinkedTimeline) -> int:
    return int((await line.view())["recent"].get("f", {}).get("requests", 0))


async def _until_async(read, expected: int, timeout_s: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while (got := await read()) != expected:
        assert time.monotonic() < deadline, f"read {got}, not {expected}"
        await asyncio.sleep(0.01)


def test_a_fronts_status_read_catches_up_with_the_platform(tmp_path: Path) -> None:
    async def run() -> None:
        async with _platform(tmp_path) as sock:
            link = await _link(sock)
            executor = LinkedExecutor(link)
            link.state = None  # as if it had never had the state whole
            await executor.catch_up()
            assert link.state is not None and executor.ready()
            await link.close()

    asyncio.run(run())


def test_shadow_comparisons_of_two_fronts_add_up_in_the_platform(tmp_path: Path) -> None:
    async def run() -> None:
        async with _platform(tmp_path) as sock:
            one, two = await _link(sock), await _link(sock)
            key = ("enc", "mirror", "2")
            primary = {"y": np.array([[1.0, 0.0], [0.0, 1.0]])}
            for link, shadow in ((one, [[1.0, 0.0], [0.0, 1.0]]), (two, [[0.0, 1.0], [0.0, 1.0]])):
                compared = OutputComparison()
                compared.add(primary, {"y": np.array(shadow)})
                LinkedComparisons(link).record(key, compared)
            failed = OutputComparison()
            failed.failed()
            LinkedComparisons(two).record(key, failed)
            executor = LinkedExecutor(one)

            async def totals() -> int:
                await executor.catch_up()
                stats = LinkedComparisons(one).totals().get(key)
                return 0 if stats is None else stats.requests

            await _until_async(totals, 3)
            stats = LinkedComparisons(one).totals()[key].to_dict()
            assert stats["failures"] == 1 and stats["argmax_agreement"] == 0.75 and stats["min_cosine"] == 0.0
            await one.close()
            await two.close()

    asyncio.run(run())

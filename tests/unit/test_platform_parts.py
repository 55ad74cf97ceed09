"""Pure parts of the platform: autoscaling policy, exact-batching plans, the wire format."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from slserve.errors import InvalidInput
from slserve.framing import FrameAssembler, frame
from slserve.platform.local.autoscaler import InstanceLoad, decide, desired_instances, retry_after_s
from slserve.platform.wire import Kind, Message, decode, encode
from slserve.runtime.batching import ExactBatcher, call_sizes, merge, shape_key, split
from slserve.spec import Scaling

SCALING = Scaling(min_instances=0, max_instances=3, target_concurrency=4, idle_seconds=10)


def test_scale_up_covers_the_queue_counting_instances_already_starting() -> None:
    assert decide(SCALING, [], starting=0, queued=1, now=0).start == 1
    assert decide(SCALING, [], starting=1, queued=3, now=0).start == 0
    assert decide(SCALING, [], starting=1, queued=9, now=0).start == 2
    assert decide(SCALING, [], starting=0, queued=500, now=0).start == 3  # capped at max_instances
    assert decide(SCALING, [InstanceLoad(1, 4, None)], starting=0, queued=4, now=0).start == 1


def test_scale_down_only_after_idle_seconds_and_never_below_min() -> None:
    idle = [InstanceLoad(1, 0, 0.0), InstanceLoad(2, 0, 5.0)]
    assert decide(SCALING, idle, 0, 0, now=9.9).stop == []
    assert decide(SCALING, idle, 0, 0, now=10.0).stop == [1]
    assert decide(SCALING, idle, 0, 0, now=15.0).stop == [1, 2]
    keep_one = SCALING.model_copy(update={"min_instances": 1})
    assert decide(keep_one, idle, 0, 0, now=100.0).stop == [1]
    assert decide(keep_one, [], 0, 0, now=0).start == 1  # min_instances start without traffic
    busy = [InstanceLoad(1, 0, 0.0), InstanceLoad(2, 3, None)]
    assert decide(SCALING, busy, 0, 0, now=100.0).stop == [1]


@given(st.integers(0, 10_000), st.integers(0, 5), st.integers(1, 8), st.integers(1, 64))
def test_desired_instances_stays_within_bounds(demand: int, lo: int, extra: int, target: int) -> None:
    scaling = Scaling(min_instances=lo, max_instances=lo + extra, target_concurrency=target)
    n = desired_instances(scaling, demand)
    assert lo <= n <= lo + extra
    assert n == lo + extra or n * target >= demand


def feeds(rows: int, length: int) -> dict[str, np.ndarray]:
    return {"ids": np.arange(rows * length, dtype=np.int64).reshape(rows, length)}


def test_plan_merges_proven_shapes_in_arrival_order_on_the_ladder_and_runs_the_rest_alone() -> None:
    proven = {shape_key(feeds(1, 5)): 2}
    batcher = ExactBatcher(max_rows=4, floors=proven)
    items = [feeds(1, 5), feeds(1, 7), feeds(2, 5), feeds(1, 5), feeds(40, 5), feeds(1, 7), feeds(1, 5)]
    calls = batcher.plan(items)
    # 5-wide rows merge up to 4 rows; 7-wide rows are unproven and run alone, unpadded; 40 rows exceed the max
    assert [(c.items, c.size) for c in calls] == [([0, 2, 3], 4), ([1], 1), ([4], 40), ([5], 1), ([6], 2)]
    assert [c.size for c in batcher.plan([feeds(1, 5)])] == [2]  # alone, a proven shape is padded to its floor
    assert [c.size for c in ExactBatcher(1, proven).plan([feeds(1, 5)] * 2)] == [1, 1]  # batching off


def test_a_group_is_padded_a_little_or_cut_into_ladder_sizes() -> None:
    proven = {shape_key(feeds(1, 5)): 2}
    batcher = ExactBatcher(max_rows=32, floors=proven)

    def sizes(n: int) -> list[tuple[int, int]]:
        return [(len(c.items), c.size) for c in batcher.plan([feeds(1, 5)] * n)]

    assert sizes(32) == [(32, 32)]
    assert sizes(30) == [(30, 32)]  # 2 padding rows of 32: cheaper than another call
    assert sizes(17) == [(16, 16), (1, 2)]  # not 15 padding rows: 16 now, the last one padded to its floor
    assert sizes(20) == [(16, 16), (4, 4)]
    assert sizes(7) == [(7, 8)]
    assert sizes(1) == [(1, 2)]
    mixed = [feeds(3, 5), feeds(1, 5), feeds(2, 5), feeds(4, 5), feeds(1, 5)]  # 11 rows, whole requests only
    calls = batcher.plan(mixed)
    assert [c.items for c in calls] == [[0, 1, 2], [3], [4]] and [c.size for c in calls] == [8, 4, 2]
    for n in range(1, 33):  # never fewer rows than the requests, always a proven size
        got = batcher.plan([feeds(1, 5)] * n)
        assert sum(len(c.items) for c in got) == n and all(c.size in batcher.ladder and c.size >= 2 for c in got)


def test_call_size_ladder() -> None:
    assert call_sizes(1) == [1]
    assert call_sizes(4) == [1, 2, 4]
    assert call_sizes(32) == [1, 2, 4, 8, 16, 32]
    assert call_sizes(24) == [1, 2, 4, 8, 16, 24]


def test_merge_pads_to_the_call_size_and_split_drops_the_padding() -> None:
    items = [feeds(1, 3), feeds(2, 3)]
    merged, counts = merge(items, size=5)
    assert merged["ids"].shape == (5, 3) and counts == [1, 2]
    assert np.array_equal(merged["ids"][3], merged["ids"][2]) and np.array_equal(merged["ids"][4], merged["ids"][2])
    parts = split({"out": merged["ids"] * 2}, counts)
    assert np.array_equal(parts[0]["out"], items[0]["ids"] * 2)
    assert np.array_equal(parts[1]["out"], items[1]["ids"] * 2)


def test_split_refuses_outputs_without_a_batch_dimension() -> None:
    with pytest.raises(Exception, match="batch"):
        split({"scalar": np.float32(1.0) * np.ones(())}, [1, 1])


def test_wire_roundtrip_keeps_every_datatype_bit_for_bit() -> None:
    tensors = {
        "f32": np.random.default_rng(0).standard_normal((3, 5)).astype(np.float32),
        "f16": np.arange(6, dtype=np.float16).reshape(2, 3),
        "i64": np.array([-(2**62), 0, 2**62], dtype=np.int64),
        "u8": np.arange(7, dtype=np.uint8),
        "b": np.array([True, False]),
        "text": np.array([[b"hello", b""], ["héllo".encode(), b"\x00\xff"]], dtype=object),
        "empty": np.zeros((0, 4), dtype=np.float32),
    }
    msg = Message(Kind.INFER, 42, {"outputs": ["y"]}, tensors)
    frame = b"".join(bytes(p) for p in encode(msg))
    assembler = FrameAssembler()
    view = assembler.buffer()
    view[: len(frame)] = frame
    (body,) = assembler.received(len(frame))
    back = decode(body)
    assert back.kind is Kind.INFER and back.request_id == 42 and back.meta == {"outputs": ["y"]}
    for name, arr in tensors.items():
        assert back.tensors[name].dtype == arr.dtype and back.tensors[name].shape == arr.shape
        assert (back.tensors[name] == arr).all()


def test_wire_rejects_bytes_that_do_not_match_the_shape() -> None:
    from slserve.platform.wire import tensor_from_payload
    from slserve.spec import Datatype

    with pytest.raises(InvalidInput, match="needs 16 bytes"):
        tensor_from_payload(Datatype.FP32, [2, 2], memoryview(b"\0" * 12), "x")
    with pytest.raises(InvalidInput, match="claims 100 bytes"):
        tensor_from_payload(Datatype.BYTES, [1], memoryview(b"\x64\0\0\0abc"), "t")


@given(
    st.lists(st.binary(max_size=300), min_size=1, max_size=12),
    st.lists(st.integers(1, 200), min_size=1, max_size=50),
)
def test_frames_come_out_whole_and_in_order_however_the_stream_is_cut(bodies: list[bytes], cuts: list[int]) -> None:
    stream = b"".join(frame(len(b)) + b for b in bodies)
    assembler = FrameAssembler(stage_bytes=64)  # small: frames bigger than the stage are read in place
    got: list[bytes] = []
    pos, i = 0, 0
    while pos < len(stream):
        target = assembler.buffer()
        assert len(target) > 0
        n = min(len(target), cuts[i % len(cuts)], len(stream) - pos)
        target[:n] = stream[pos : pos + n]
        got += [bytes(b) for b in assembler.received(n)]
        pos, i = pos + n, i + 1
    assert got == bodies


def test_retry_after_is_the_time_to_work_off_the_queue() -> None:
    assert retry_after_s(64, 2, 8.0) == 4.0  # 64 waiting, 2 instances of 8 rows/s each
    assert retry_after_s(64, 0, 8.0) == 8.0  # none up yet: counted as one
    assert retry_after_s(4, 2, 100.0) == 1.0  # never under a second (the header is whole seconds)
    assert retry_after_s(10_000, 1, 1.0) == 60.0  # nor over a minute
    assert retry_after_s(64, 2, None) == 1.0  # nothing measured yet


def test_the_host_s_idle_cores_go_to_a_call_alone_and_never_oversubscribe() -> None:
    from slserve.platform.local.cores import HostCores
    from slserve.platform.local.instance_handle import Instance

    a, b, c = (Instance("f", n, "digest", "1") for n in range(3))
    cores = HostCores(lambda: (a, b, c), total=4)
    assert cores.grant(a) == 4  # nothing else computes: every core
    a.in_flight[1], a.granted = object(), 4  # type: ignore[assignment]
    assert cores.grant(b) == 1  # a holds them all: one thread, never fewer
    a.granted = 2
    assert cores.grant(b) == 2
    b.in_flight[2], b.granted = object(), 2  # type: ignore[assignment]
    assert cores.grant(c) == 1
    assert cores.grant(a) == 1  # a holds work already: the host is under load, its next call gets one

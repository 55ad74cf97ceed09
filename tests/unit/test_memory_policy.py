"""The memory budget's policies on injected times and sizes: Greedy-Dual-Size-Frequency eviction, and the
keep-alive a function's idle gaps choose."""

from __future__ import annotations

import math
import tomllib
from pathlib import Path

import pytest
from tests.conftest import SMALL_MLP_TOML

from slserve.keepalive import GAPS_FILE, MIN_GAPS, IdleGaps, Rhythm, choose, load_gaps, save_gaps
from slserve.modal.plan import scaledown_window
from slserve.platform.base import Deployed
from slserve.platform.local.eviction import MB, GreedyDual, Idle
from slserve.platform.local.preloads import Preloads
from slserve.spec import FunctionSpec


def idle(function: str, number: int = 1, mb: int = 100, since: float = 0.0) -> Idle:
    return Idle(function, number, mb * MB, since)


def test_the_cheapest_to_lose_goes_first_frequency_times_cold_start_over_size() -> None:
    policy = GreedyDual()
    for _ in range(10):
        policy.called("hot", cold_start_ms=200, size=100 * MB)  # 10 x 200 / 100 = 20
    policy.called("rare", cold_start_ms=200, size=100 * MB)  # 2
    policy.called("slow-start", cold_start_ms=5000, size=100 * MB)  # 50
    policy.called("huge", cold_start_ms=200, size=4000 * MB)  # 0.05
    candidates = [idle("hot"), idle("rare"), idle("slow-start"), idle("huge", mb=4000)]
    assert [v.function for v in policy.victims(candidates, 100 * MB) or []] == ["huge"]
    assert [v.function for v in policy.victims(candidates[:3], 150 * MB) or []] == ["rare", "hot"]


def test_the_clock_ages_functions_not_called_since_an_eviction() -> None:
    policy = GreedyDual()
    for _ in range(5):
        policy.called("old-favourite", cold_start_ms=100, size=100 * MB)  # 5
    policy.called("a", cold_start_ms=100, size=100 * MB)  # 1
    assert [v.function for v in policy.victims([idle("a"), idle("old-favourite")], MB) or []] == ["a"]
    assert policy.clock == pytest.approx(1.0)
    for _ in range(6):  # "b" is called after the eviction: its priority starts from the clock
        policy.called("b", cold_start_ms=100, size=100 * MB)
    policy.called("b", cold_start_ms=100, size=100 * MB)  # 1 + 7
    assert policy.priority("b") > policy.priority("old-favourite")
    assert [v.function for v in policy.victims([idle("b"), idle("old-favourite")], MB) or []] == ["old-favourite"]


def test_nothing_is_evicted_when_all_the_idle_would_not_make_room() -> None:
    policy = GreedyDual()
    assert policy.victims([idle("a", mb=10), idle("b", mb=10)], 30 * MB) is None
    assert policy.clock == 0.0
    assert policy.victims([idle("a")], 0) == []


def test_equal_priorities_evict_the_longest_idle() -> None:
    policy = GreedyDual()
    found = policy.victims([idle("a", 1, since=5.0), idle("a", 2, since=1.0)], MB) or []
    assert [v.number for v in found] == [2]


def gaps(*seconds: float) -> IdleGaps:
    out = IdleGaps()
    for s in seconds:
        out.add(s)
    return out


def test_too_few_gaps_keep_the_fixed_window() -> None:
    policy = choose(gaps(*[1.0] * (MIN_GAPS - 1)), cap_s=60, cold_start_s=0.1)
    assert policy.keep_s == 60 and policy.prewarm_s is None and policy.basis.startswith("fixed")


def test_a_quick_rhythm_keeps_instances_just_past_its_99th_percentile() -> None:
    policy = choose(gaps(*[0.2 + 0.01 * i for i in range(100)]), cap_s=60, cold_start_s=0.1)
    assert policy.prewarm_s is None
    assert policy.keep_s == pytest.approx(1.18 * 1.25)  # the 99th of 0.20..1.19 is 1.18
    assert policy.basis.startswith("learned")


def test_gaps_past_the_cap_keep_the_cap() -> None:
    policy = choose(gaps(*[0.1] * 50, *[500.0] * 50), cap_s=60, cold_start_s=0.1)
    assert policy.keep_s == 60 and policy.prewarm_s is None and policy.basis.startswith("cap")


def test_a_slow_regular_rhythm_lets_go_and_prewarms_ahead_of_the_next_call() -> None:
    policy = choose(gaps(*[30.0 + (i % 5) * 0.5 for i in range(40)]), cap_s=10, cold_start_s=0.2)
    lead = 0.5 + 2 * 0.2
    assert policy.prewarm_s == pytest.approx(30.0 - lead)
    assert policy.keep_s == pytest.approx(min(10, 32.0 * 1.25 - (30.0 - lead)))
    assert policy.basis.startswith("pre-warm")


def test_the_rhythm_on_an_injected_clock() -> None:
    rhythm = Rhythm(cap_s=10)
    t = 0.0
    for _ in range(20):  # a call every 30 s, each done at once
        rhythm.called(t, cold_start_s=0.2)
        rhythm.went_idle(t + 0.01)
        t += 30.0
    assert rhythm.policy.prewarm_s is not None
    done = t - 30.0 + 0.01  # the last call's end
    assert rhythm.idle_limit_s(done + 1) == 0.0  # let go at once
    assert not rhythm.prewarm_due(done + 1)
    start = done + rhythm.policy.prewarm_s
    assert rhythm.prewarm_due(start + 0.01) and rhythm.idle_limit_s(start + 0.01) == math.inf
    end = start + rhythm.policy.keep_s
    assert not rhythm.prewarm_due(end + 0.01) and rhythm.idle_limit_s(end + 0.01) == 0.0
    rhythm.called(end + 1, cold_start_s=0.2)  # busy: surplus instances keep the learned window
    assert rhythm.idle_limit_s(end + 1) == rhythm.policy.keep_s


def test_gaps_follow_the_recent_rhythm() -> None:
    rhythm = Rhythm(cap_s=60)
    t = 0.0
    for gap in [0.5] * 300 + [5.0] * 300:
        rhythm.called(t, cold_start_s=0.05)
        rhythm.went_idle(t)
        t += gap
    rhythm.called(t, cold_start_s=0.05)
    assert rhythm.policy.prewarm_s == pytest.approx(5.0 - (0.5 + 2 * 0.05))  # the 0.5 s gaps have aged out


def test_recorded_gaps_survive_a_restart_and_choose_modal_scaledown_windows(tmp_path: Path) -> None:
    learned = Rhythm(cap_s=60)
    for i in range(50):
        learned.called(float(i * 3), cold_start_s=0.1)
        learned.went_idle(float(i * 3) + 0.5)  # a call every 3 s, each 0.5 s long: gaps of 2.5 s
    save_gaps(tmp_path / GAPS_FILE, {"steady": learned, "unseen": Rhythm(cap_s=60)})
    loaded = load_gaps(tmp_path / GAPS_FILE)
    assert set(loaded) == {"steady"} and len(loaded["steady"]) == 49
    assert choose(loaded["steady"], 60, 0.1) == learned.policy
    spec = FunctionSpec.model_validate(tomllib.loads(SMALL_MLP_TOML.format(version="1", seed=0)))
    function = Deployed(
        "steady", spec.model_copy(update={"scaling": spec.scaling.model_copy(update={"idle_seconds": 300})}), "d"
    )
    assert scaledown_window(function, None) == (300, "fixed: 0 idle gaps seen, 8 needed to learn")
    window, why = scaledown_window(function, loaded["steady"])
    assert window == math.ceil(2.5 * 1.25) and why.startswith("learned")  # no GPU paid for 300 s after each call
    (tmp_path / GAPS_FILE).write_text("not json")
    assert load_gaps(tmp_path / GAPS_FILE) == {}


def test_preloads_follow_use() -> None:
    spec = FunctionSpec.model_validate(tomllib.loads(SMALL_MLP_TOML.format(version="1", seed=0)))
    warm = spec.model_copy(update={"scaling": spec.scaling.model_copy(update={"min_instances": 1})})
    used, rare, kept = Deployed("used", spec, "d1"), Deployed("rare", spec, "d2"), Deployed("kept", warm, "d3")
    first_start = Preloads(None)  # nothing recorded: nothing says which will be called, so all are preloaded
    assert all(first_start.wants(f) for f in (used, rare, kept)) and not first_start.called(rare)
    after = Preloads({"used"})
    assert after.wants(used) and after.wants(kept) and not after.wants(rare)
    assert after.called(rare) and after.wants(rare)  # its first call puts it in use (the template is renewed)
    assert not after.called(rare) and not after.called(used)

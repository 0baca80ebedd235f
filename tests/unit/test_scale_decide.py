"""The autoscaler's pure decision over scripted load traces (no clock, no processes)."""
from __future__ import annotations

import pytest

from labkit.config import ScaleConfig
from labkit.scale import LoadPattern, Signals, decide
from labkit.scale.autoscaler import wanted

pytestmark = pytest.mark.unit

CONFIG = ScaleConfig(min_replicas=1, max_replicas=4, target_ongoing_requests=4, max_queue_per_replica=None,
                     upscale_delay_s=2.0, downscale_delay_s=10.0)


def replay(trace, config=CONFIG, start_replicas=1, dt=0.5):
    """Run decide() over a trace of in-flight counts (one sample every dt s), resizing as it says, like the
    Autoscaler does. Returns (t, replicas) after each sample."""
    history, replicas, out = [], start_replicas, []
    for i, ongoing in enumerate(trace):
        now = i * dt
        history.append(Signals(t=now, replicas=replicas, ongoing=ongoing))
        desired = decide(history, config, now)
        if desired != replicas:
            replicas, history = desired, []
        out.append((now, replicas))
    return out


def first_time(timeline, predicate):
    return next(t for t, n in timeline if predicate(n))


def test_a_load_step_scales_up_after_the_upscale_delay_and_not_before():
    timeline = replay([2] * 10 + [12] * 20)  # step at t=5 s to 12 in flight: 3 replicas at 4 each
    up_at = first_time(timeline, lambda n: n > 1)
    assert up_at == pytest.approx(5.0 + CONFIG.upscale_delay_s)
    assert dict(timeline)[up_at] == 3
    assert timeline[-1][1] == 3  # and it stays there while the load stays


def test_a_spike_shorter_than_the_upscale_delay_changes_nothing():
    timeline = replay([2] * 10 + [16] * 3 + [2] * 20)  # 1.5 s of 16 in flight, shorter than the 2 s delay
    assert {n for _, n in timeline} == {1}


def test_after_the_load_ends_it_scales_down_only_after_the_downscale_delay():
    timeline = replay([12] * 30 + [0] * 40, start_replicas=3)
    down_at = first_time(timeline, lambda n: n < 3)
    assert down_at == pytest.approx(15.0 + CONFIG.downscale_delay_s)
    assert timeline[-1][1] == 1  # down to min_replicas, never 0


def test_oscillating_load_does_not_flap():
    trace = ([12] * 3 + [0] * 3) * 20  # 1.5 s high, 1.5 s idle, for a minute
    timeline = replay(trace, start_replicas=2)
    changes = sum(1 for (_, a), (_, b) in zip(timeline, timeline[1:]) if a != b)
    assert changes == 0


def test_the_answer_stays_within_min_and_max():
    timeline = replay([100] * 20)
    assert max(n for _, n in timeline) == CONFIG.max_replicas
    assert decide([Signals(t=0, replicas=7, ongoing=0)], CONFIG, 0) == 4  # over max: corrected at once
    assert decide([Signals(t=0, replicas=0, ongoing=0)], CONFIG, 0) == 1  # under min: corrected at once


def test_upscale_goes_to_the_smallest_ask_of_the_window():
    trace = [2] * 4 + [9, 14, 12, 16, 13]  # asks 3, 4, 3, 4, 4 over the 2 s window
    timeline = replay(trace)
    assert timeline[-1][1] == 3


def test_queue_depth_and_latency_slo_each_ask_for_one_more_replica():
    config = ScaleConfig(min_replicas=1, max_replicas=4, target_ongoing_requests=100, max_queue_per_replica=2,
                         latency_slo_p99_s=1.0, upscale_delay_s=0, downscale_delay_s=5)
    assert wanted(Signals(t=0, replicas=2, ongoing=8, waiting=5), config) == 3
    assert wanted(Signals(t=0, replicas=2, ongoing=8, waiting=4), config) == 1
    assert wanted(Signals(t=0, replicas=2, ongoing=8, p99_s=1.5), config) == 3
    assert decide([Signals(t=0, replicas=2, ongoing=8, p99_s=1.5)], config, 0) == 3


def test_decide_needs_a_full_delay_of_samples_since_the_last_change():
    history = [Signals(t=9.0, replicas=1, ongoing=20), Signals(t=10.0, replicas=1, ongoing=20)]
    assert decide(history, CONFIG, 10.0) == 1  # only 1 s of evidence for a 2 s delay
    assert decide(history + [Signals(t=11.0, replicas=1, ongoing=20)], CONFIG, 11.0) == 4


def test_scale_config_refuses_nonsense():
    with pytest.raises(ValueError, match="max_replicas"):
        ScaleConfig(min_replicas=3, max_replicas=2)
    with pytest.raises(ValueError, match="target_ongoing_requests"):
        ScaleConfig(target_ongoing_requests=0)


@pytest.mark.parametrize("pattern", ["constant", "poisson", "ramp", "step", "burst"])
def test_load_patterns_send_about_the_requests_their_rate_implies(pattern):
    p = LoadPattern(pattern, rate=10, duration_s=10, low=2, burst_every_s=5, burst_s=1, seed=3)
    times = p.arrivals()
    expected = {"constant": 100, "poisson": 100, "ramp": 60, "step": 60, "burst": 2 * 8 + 2 * 10}[pattern]
    assert abs(len(times) - expected) <= max(2, 0.25 * expected)
    assert times == sorted(times) and all(0 <= t < 10 for t in times)
    assert times == LoadPattern(pattern, rate=10, duration_s=10, low=2, seed=3).arrivals() or pattern == "burst"


def test_ramp_and_step_put_the_load_where_the_pattern_says():
    ramp = LoadPattern("ramp", rate=10, duration_s=10).arrivals()
    assert sum(t >= 5 for t in ramp) > 2.5 * sum(t < 5 for t in ramp)
    step = LoadPattern("step", rate=10, low=0, duration_s=10, step_at=0.5).arrivals()
    assert min(step) >= 5.0

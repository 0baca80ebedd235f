"""The shared honest-measurement helper: interleaving, medians, verdicts that hold, tails that do not overclaim."""
import itertools

import pytest

from labkit.bench import measure
from labkit.bench.measure import Comparison, compare, contention_warning, tail


def test_rounds_interleave_and_rotate_who_goes_first():
    order = []
    systems = {name: (lambda name=name: order.append(name) or 1.0) for name in "abc"}
    result = compare(systems, rounds=3)
    assert order == list("abcbcacab")
    assert result.rounds == {"a": (1.0,) * 3, "b": (1.0,) * 3, "c": (1.0,) * 3}


def test_fewer_than_three_rounds_is_refused():
    with pytest.raises(ValueError, match="at least 3 rounds"):
        compare({"a": lambda: 1.0}, rounds=2)


def test_median_ignores_one_bad_round():
    values = iter([100.0, 10.0, 102.0])
    result = compare({"fast": lambda: next(values)}, rounds=3)
    assert result.median("fast") == 100.0
    assert result.spread("fast") == (10.0, 102.0)


def test_verdict_says_every_round_only_when_true():
    clear = Comparison({"engine": (300.0, 290.0, 310.0), "loop": (30.0, 29.0, 31.0)})
    assert clear.verdict("engine", "loop") == "engine beat loop in all 3 rounds (median 10.00x)."
    assert clear.verdict("loop", "engine") == "engine beat loop in all 3 rounds (median 10.00x)."
    mixed = Comparison({"a": (200.0, 100.0, 210.0), "b": (150.0, 160.0, 150.0)})
    assert "only in 2 of 3 rounds" in mixed.verdict("a", "b")
    close = Comparison({"a": (100.0, 101.0, 99.0), "b": (104.0, 98.0, 103.0)})
    assert "within 10% of each other" in close.verdict("a", "b")


def test_a_small_gap_won_in_every_round_is_not_called_no_difference():
    edge = Comparison({"a": (106.0, 105.0, 107.0), "b": (100.0, 99.0, 101.0)})
    assert edge.verdict("b", "a", "on decode") == edge.verdict("a", "b", "on decode") == (
        "a was ahead of b on decode in all 3 rounds, by under 10% (median 1.06x): a small edge, but a consistent "
        "one in these rounds.")
    faster = Comparison({"a": (0.95, 0.94, 0.96), "b": (1.0, 1.01, 0.99)}, higher_is_better=False)
    assert faster.verdict("b", "a").startswith("a was ahead of b in all 3 rounds, by under 10% (median 1.05x)")


def test_lower_is_better_for_latencies():
    latency = Comparison({"least": (1.0, 1.2, 1.1), "random": (2.0, 2.4, 2.2)}, higher_is_better=False)
    assert latency.best() == "least"
    assert latency.verdict("random", "least", "on p50 latency") == (
        "least beat random on p50 latency in all 3 rounds (median 2.00x).")


def test_tail_is_named_max_below_a_hundred_samples():
    assert tail(list(range(1, 35))) == measure.Tail("max", 34)
    hundred = tail([float(v) for v in range(1, 101)])
    assert hundred.name == "p99" and hundred.value == pytest.approx(99.01)
    assert tail(list(range(20)), q=0.9).name == "p90"
    assert tail([], 0.99).value is None


def test_contention_reads_the_kernels_pressure(tmp_path, monkeypatch):
    pressure = tmp_path / "cpu"
    totals = itertools.count(0, 600_000)  # +0.6 s of waiting per reading
    monkeypatch.setattr(measure, "PRESSURE", str(pressure))

    def write():
        pressure.write_text(f"some avg10=0.00 avg60=0.00 avg300=0.00 total={next(totals)}\n"
                            "full avg10=0.00 avg60=0.00 avg300=0.00 total=0\n")
    write()
    clock = iter([0.0, 1.0])
    monkeypatch.setattr(measure.time, "perf_counter", lambda: next(clock))
    meter = measure.ContentionMeter()
    write()
    assert meter.share() == pytest.approx(0.6)
    assert "60%" in contention_warning(0.6)
    assert contention_warning(0.05) is None and contention_warning(None) is None


def test_no_pressure_file_means_unknown(monkeypatch, tmp_path):
    monkeypatch.setattr(measure, "PRESSURE", str(tmp_path / "missing"))
    assert measure.cpu_pressure_seconds() is None
    assert compare({"a": lambda: 1.0}).contention is None


def test_bench_and_monitor_share_one_tail_definition():
    from labkit.monitor import percentiles

    assert measure.tail is percentiles.tail and measure.tail_name is percentiles.tail_name
    assert [percentiles.tail_name(n, 0.95) for n in (0, 19, 20)] == ["max", "max", "p95"]

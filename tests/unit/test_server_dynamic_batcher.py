"""The dynamic batcher groups items that arrive together, never beyond its batch size or delay."""
from __future__ import annotations

import threading
import time

import pytest

from labkit.engine.dynamic_batcher import DynamicBatcher, QueueFullError

pytestmark = pytest.mark.unit


def test_items_arriving_together_share_a_batch_and_results_keep_their_order():
    seen = []
    with DynamicBatcher(lambda xs: (seen.append(list(xs)), [x * 2 for x in xs])[1], max_batch_size=8,
                        max_queue_delay_ms=50) as batcher:
        futures = batcher.submit_many(list(range(5)))
        assert [f.result(timeout=5) for f in futures] == [0, 2, 4, 6, 8]
    assert seen == [[0, 1, 2, 3, 4]]
    assert batcher.stats.batches == 1 and batcher.stats.mean_batch_size == 5


def test_batches_never_exceed_max_batch_size():
    sizes = []
    with DynamicBatcher(lambda xs: (sizes.append(len(xs)), xs)[1], max_batch_size=4, max_queue_delay_ms=20) as b:
        assert [f.result(timeout=5) for f in b.submit_many(list(range(10)))] == list(range(10))
    assert max(sizes) <= 4 and sum(sizes) == 10


def test_a_lone_item_waits_no_longer_than_the_delay():
    with DynamicBatcher(lambda xs: xs, max_batch_size=32, max_queue_delay_ms=30) as batcher:
        started = time.perf_counter()
        assert batcher.submit("a").result(timeout=5) == "a"
        assert time.perf_counter() - started < 0.5


def test_items_from_many_threads_are_batched_together():
    sizes = []

    def slow(xs):
        sizes.append(len(xs))
        time.sleep(0.02)
        return xs

    with DynamicBatcher(slow, max_batch_size=16, max_queue_delay_ms=10) as batcher:
        results = {}
        threads = [threading.Thread(target=lambda i=i: results.__setitem__(i, batcher.submit(i).result(5)))
                   for i in range(32)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert results == {i: i for i in range(32)}
    assert len(sizes) < 32  # some batching happened


def test_a_failing_batch_fails_its_callers_and_the_worker_goes_on():
    def fn(xs):
        if "bad" in xs:
            raise ValueError("boom")
        return xs

    with DynamicBatcher(fn, max_batch_size=4, max_queue_delay_ms=0) as batcher:
        with pytest.raises(ValueError, match="boom"):
            batcher.submit("bad").result(timeout=5)
        assert batcher.submit("good").result(timeout=5) == "good"


def test_one_bad_item_fails_alone_and_the_rest_of_its_batch_gets_results():
    calls = []

    def fn(xs):
        calls.append(list(xs))
        if "bad" in xs:
            raise ValueError("boom")
        return [x.upper() for x in xs]

    with DynamicBatcher(fn, max_batch_size=8, max_queue_delay_ms=200) as batcher:
        futures = batcher.submit_many(["a", "bad", "c"])
        assert futures[0].result(timeout=5) == "A" and futures[2].result(timeout=5) == "C"
        with pytest.raises(ValueError, match="boom"):
            futures[1].result(timeout=5)
    assert calls == [["a", "bad", "c"], ["a"], ["bad"], ["c"]]  # the batch failed, so each ran alone


def test_full_queue_refuses_and_cancelled_items_are_skipped():
    gate = threading.Event()
    computed = []

    def fn(xs):
        gate.wait(5)
        computed.extend(xs)
        return xs

    batcher = DynamicBatcher(fn, max_batch_size=1, max_queue_delay_ms=0, max_queue_size=2)
    first = batcher.submit("first")  # taken by the worker, blocked on the gate
    time.sleep(0.05)
    second, third = batcher.submit_many(["second", "third"])
    with pytest.raises(QueueFullError):
        batcher.submit("fourth")
    assert second.cancel()
    gate.set()
    assert first.result(5) == "first" and third.result(5) == "third"
    batcher.close()
    assert computed == ["first", "third"]


def test_closed_batcher_refuses_work():
    batcher = DynamicBatcher(lambda xs: xs)
    batcher.close()
    with pytest.raises(RuntimeError, match="closed"):
        batcher.submit(1)


@pytest.mark.parametrize("kwargs", [{"max_batch_size": 0}, {"max_queue_delay_ms": -1}])
def test_bad_settings_are_refused(kwargs):
    with pytest.raises(ValueError):
        DynamicBatcher(lambda xs: xs, **kwargs)

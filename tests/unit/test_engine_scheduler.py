"""The scheduler and the KV page pool on their own: budgets, chunking, seats, preemption, freeing."""
from __future__ import annotations

import pytest
import torch

from labkit.config import EngineConfig
from labkit.engine import PagedKVCache, Request, RequestStatus, SamplingParams, Scheduler
from labkit.engine.kv_cache import KVShape

pytestmark = pytest.mark.unit
SHAPE = KVShape(num_layers=2, num_kv_heads=1, head_dim=4, dtype=torch.float32)


def make(pages: int = 8, page_size: int = 4, **config) -> Scheduler:
    config = EngineConfig(page_size=page_size, kv_cache_tokens=pages * page_size, **config)
    return Scheduler(config, PagedKVCache(SHAPE, config.kv_cache_tokens, page_size))


def request(name: str, prompt_len: int, max_tokens: int = 8) -> Request:
    return Request(name, list(range(3, 3 + prompt_len)), SamplingParams(temperature=0, max_tokens=max_tokens),
                   max_model_len=1000)


def run_step(scheduler: Scheduler, token: int = 7):
    """Schedule, then pretend the model ran: every request that reached its last token samples `token`."""
    plan = scheduler.schedule()
    sampled = {s.request.request_id: token for s in plan.scheduled if s.samples}
    scheduler.update(plan, sampled)
    return plan


def test_page_pool_hands_out_lowest_pages_and_takes_them_back():
    cache = PagedKVCache(SHAPE, num_tokens=40, page_size=4)
    assert cache.num_pages == 10 and cache.keys[0].shape == (10, 1, 4, 4)
    assert cache.memory_bytes == 40 * SHAPE.bytes_per_token == 40 * 2 * 2 * 4 * 4
    assert cache.reserve("a", 5) and cache.page_tables["a"] == [0, 1]
    assert cache.reserve("b", 4) and cache.page_tables["b"] == [2]
    assert cache.reserve("a", 8) and cache.page_tables["a"] == [0, 1]  # still fits in its two pages
    assert cache.usage == pytest.approx(0.3) and cache.utilisation == pytest.approx(12 / 12)
    cache.free("a")
    assert cache.reserve("c", 1) and cache.page_tables["c"] == [0]
    assert not cache.reserve("d", 40)  # too big: refused, nothing taken
    assert "d" not in cache.page_tables and cache.num_free_pages == 8


def test_decodes_go_first_and_the_budget_caps_each_step():
    scheduler = make(pages=64, max_num_batched_tokens=10)
    for name, length in (("a", 3), ("b", 20)):
        scheduler.add(request(name, length))
    first = run_step(scheduler)
    assert [(s.request.request_id, s.num_tokens) for s in first.scheduled] == [("a", 3), ("b", 7)]
    second = run_step(scheduler)  # a decodes (1 token) before b's next prompt chunk
    assert [(s.request.request_id, s.num_tokens) for s in second.scheduled] == [("a", 1), ("b", 9)]
    assert all(p.num_tokens <= 10 for p in (first, second))
    third = run_step(scheduler)
    assert [(s.request.request_id, s.num_tokens) for s in third.scheduled] == [("a", 1), ("b", 4)]
    assert scheduler.running[1].output_token_ids == [7]  # b's last chunk gave its first token


def test_max_num_seqs_limits_running_requests():
    scheduler = make(pages=64, max_num_seqs=2)
    for name in "abc":
        scheduler.add(request(name, 2))
    run_step(scheduler)
    assert [r.request_id for r in scheduler.running] == ["a", "b"]
    assert [r.request_id for r in scheduler.waiting] == ["c"]
    assert scheduler.waiting[0].status is RequestStatus.WAITING


def test_newest_request_is_preempted_when_pages_run_out_and_recomputed_later():
    scheduler = make(pages=4, page_size=4)  # 16 tokens in all
    scheduler.add(request("old", 7, max_tokens=8))
    scheduler.add(request("new", 7, max_tokens=8))
    run_step(scheduler)  # both prefilled (7 tokens in 2 pages each) and sampled their 8th token
    assert not run_step(scheduler).preempted  # the 8th token's key and value fill the second page
    plan = run_step(scheduler)  # old's 9th token needs a third page: none is free
    assert [r.request_id for r in plan.preempted] == ["new"]
    victim = scheduler.waiting[0]
    assert victim.request_id == "new" and victim.status is RequestStatus.PREEMPTED
    assert victim.num_computed_tokens == 0 and victim.num_preemptions == 1
    assert victim.num_tokens == 9  # prompt and the two tokens it made: what the recompute replays
    assert scheduler.cache.page_tables.keys() == {"old"}
    while scheduler.has_unfinished():
        run_step(scheduler)
    assert scheduler.cache.num_used_pages == 0 and scheduler.num_preemptions >= 1


def test_abort_frees_pages_at_once():
    scheduler = make(pages=8)
    scheduler.add(request("a", 6))
    scheduler.add(request("b", 3))
    run_step(scheduler)
    assert scheduler.cache.num_used_pages == 3 and scheduler.stats()["kv_peak_usage"] == 3 / 8
    aborted = scheduler.abort("a")
    assert aborted.status is RequestStatus.FINISHED_ABORTED and aborted.status.finish_reason == "abort"
    assert scheduler.cache.num_used_pages == 1 and [r.request_id for r in scheduler.running] == ["b"]
    assert scheduler.abort("a") is None


def test_status_order_makes_finished_a_comparison():
    assert RequestStatus.WAITING < RequestStatus.RUNNING < RequestStatus.PREEMPTED < RequestStatus.FINISHED_STOPPED
    assert [s.is_finished for s in RequestStatus] == [False, False, False, True, True, True, True]
    assert RequestStatus.FINISHED_ERROR.finish_reason == "error"
    assert RequestStatus.FINISHED_LENGTH.finish_reason == "length" and RequestStatus.RUNNING.finish_reason is None


def test_request_ends_on_eos_stop_ids_and_max_tokens():
    params = SamplingParams(temperature=0, max_tokens=3, stop_token_ids=[9])
    eos = Request("e", [5], params, eos_token_ids=frozenset({2}), max_model_len=100)
    eos.append_token(4, 1.0)
    eos.append_token(2, 1.5)
    assert eos.status is RequestStatus.FINISHED_STOPPED and eos.stop_reason == 2
    assert eos.inter_token_latencies == [0.5]
    stop = Request("s", [5], params, eos_token_ids=frozenset({2}), max_model_len=100)
    stop.append_token(9, 1.0)
    assert stop.status is RequestStatus.FINISHED_STOPPED and stop.stop_reason == 9
    length = Request("l", [5], params, eos_token_ids=frozenset({2}), max_model_len=100)
    for token in (4, 4, 4):
        assert not length.status.is_finished
        length.append_token(token, 1.0)
    assert length.status is RequestStatus.FINISHED_LENGTH
    ignored = Request("i", [5], SamplingParams(temperature=0, max_tokens=3, ignore_eos=True),
                      eos_token_ids=frozenset({2}), max_model_len=100)
    ignored.append_token(2, 1.0)
    assert not ignored.status.is_finished
    full = Request("f", [5] * 98, SamplingParams(temperature=0, max_tokens=50), max_model_len=100)
    assert full.max_output_tokens == 2  # the context, not max_tokens, is the limit


@pytest.mark.parametrize("bad", [dict(max_num_seqs=0), dict(max_num_batched_tokens=0), dict(page_size=0),
                                 dict(kv_cache_tokens=32, page_size=64), dict(max_model_len=1)])
def test_engine_config_refuses_values_that_could_never_run(bad):
    with pytest.raises(ValueError, match="EngineConfig"):
        EngineConfig(**bad)

"""The scheduler and the block manager on plain data (no tensors): budgets, chunking, seats, preemption,
freeing, and the prefix cache's pages and reference counts."""
from __future__ import annotations

import random

import pytest
import torch

from labkit.config import EngineConfig
from labkit.engine import PagedKVCache, Request, RequestStatus, SamplingParams, Scheduler
from labkit.engine.block_manager import BlockManager
from labkit.engine.kv_cache import KVShape

pytestmark = pytest.mark.unit
SHAPE = KVShape(num_layers=2, num_kv_heads=1, head_dim=4, dtype=torch.float32)


def make(pages: int = 8, page_size: int = 4, **config) -> Scheduler:
    config = EngineConfig(page_size=page_size, kv_cache_tokens=pages * page_size, **config)
    return Scheduler(config, BlockManager(pages, page_size, config.enable_prefix_caching))


def request(name: str, prompt_len: int, max_tokens: int = 8, prompt: list[int] | None = None) -> Request:
    first = 3 + 1000 * (sum(map(ord, name)) % 97)  # requests with different names share no prefix
    return Request(name, prompt or list(range(first, first + prompt_len)),
                   SamplingParams(temperature=0, max_tokens=max_tokens), max_model_len=1000)


def run_step(scheduler: Scheduler, token: int = 7, mirror: dict | None = None):
    """Schedule, then pretend the model ran: every request that reached its last token samples `token`.
    `mirror`: the block tables as a runner rebuilds them from the plans' deltas; checked against the truth."""
    plan = scheduler.schedule()
    if mirror is not None and plan:  # as the engine: an empty plan never reaches the runner
        for request_id in plan.departed:
            del mirror[request_id]
        for request_id, pages in plan.new_block_ids.items():
            mirror.setdefault(request_id, []).extend(pages)
        assert all(mirror[s.request_id] == scheduler.blocks.tables[s.request_id] for s in plan.scheduled)
        assert len(mirror) <= scheduler.config.max_num_seqs
    sampled = {s.request_id: token for s in plan.scheduled if s.samples}
    scheduler.update(plan, sampled)
    scheduler.blocks.check()
    return plan


def test_kv_pool_is_tensors_only_and_sized_in_pages():
    cache = PagedKVCache(SHAPE, num_tokens=42, page_size=4)
    assert cache.num_pages == 10 and cache.keys[0].shape == (10, 4, 1, 4)  # [pages, page_size, kv_heads, head_dim]
    assert cache.memory_bytes == 40 * SHAPE.bytes_per_token == 40 * 2 * 2 * 4 * 4


def test_block_manager_hands_out_lowest_pages_and_takes_them_back():
    blocks = BlockManager(10, 4, enable_prefix_caching=False)
    assert blocks.allocate("a", [], 5) and blocks.tables["a"] == [0, 1]
    assert blocks.allocate("b", [], 4) and blocks.tables["b"] == [2]
    assert blocks.reserve("a", 8) and blocks.tables["a"] == [0, 1]  # still fits in its two pages
    assert blocks.usage == pytest.approx(0.3) and blocks.utilisation == pytest.approx(12 / 12)
    blocks.free("a")
    assert blocks.allocate("c", [], 1) and blocks.tables["c"] == [0]
    assert not blocks.allocate("d", [], 40)  # too big: refused, nothing taken
    assert "d" not in blocks.tables and blocks.num_free_pages == 8
    blocks.check()


def test_full_computed_pages_are_shared_by_a_later_request_with_the_same_prefix():
    blocks = BlockManager(10, 4)
    prompt = list(range(100, 110))  # 10 tokens: two full pages and half of a third
    assert blocks.match(prompt) == [] and blocks.allocate("a", [], 10)
    blocks.cache_computed("a", prompt, 10)
    hits = blocks.match(prompt)
    assert hits == blocks.tables["a"][:2]  # the full pages; the last, partial one is private
    assert blocks.match(prompt[:8]) == hits[:1]  # the last token is always computed, so 8 tokens match 1 page
    assert blocks.match([999] + prompt[1:]) == []  # a different first page: nothing after it matches either
    assert blocks.allocate("b", hits, 10) and blocks.tables["b"][:2] == hits
    assert [blocks.ref_count[p] for p in hits] == [2, 2] and blocks.num_used_pages == 4
    blocks.free("a")
    blocks.free("b")
    assert blocks.num_used_pages == 0 and blocks.num_cached_free_pages == 2  # kept, with their keys
    assert blocks.match(prompt) == hits
    blocks.check()


def test_cached_pages_are_evicted_least_recently_freed_first_and_only_when_needed():
    blocks = BlockManager(4, 2)
    for name, first in (("a", 10), ("b", 20)):
        blocks.allocate(name, [], 3)
        blocks.cache_computed(name, [first, first + 1, first + 2], 3)  # one full page each
    blocks.free("a")
    blocks.free("b")
    assert blocks.num_cached_free_pages == 2 and blocks.num_free_pages == 4
    assert blocks.allocate("c", [], 4)  # two fresh pages: the cached ones survive
    assert blocks.match([10, 11, 12]) and blocks.match([20, 21, 22])
    assert blocks.allocate("d", [], 2)  # one more: the least recently freed cached page (a's) goes
    assert blocks.match([10, 11, 12]) == [] and blocks.match([20, 21, 22])
    blocks.check()


def test_a_shared_prefix_is_computed_once_and_the_request_after_starts_past_it():
    scheduler = make(pages=16, page_size=4)
    shared = list(range(500, 512))  # three full pages
    scheduler.add(request("first", 0, prompt=shared + [1, 2]))
    while scheduler.has_unfinished():
        run_step(scheduler)
    scheduler.add(request("second", 0, prompt=shared + [3, 4, 5]))
    plan = run_step(scheduler)
    [item] = plan.scheduled
    assert item.num_cached_tokens == 12 and item.num_tokens == 3 and item.start == 12  # only its own tokens are computed
    assert plan.new_block_ids["second"][:3] == tuple(scheduler.blocks.match(shared + [0]))
    assert scheduler.blocks.stats()["prefix_cache_hits"] == 12
    assert scheduler.blocks.hit_rate == pytest.approx(12 / (14 + 15))


def test_prefix_caching_can_be_turned_off():
    scheduler = make(pages=16, page_size=4, enable_prefix_caching=False)
    for name in ("x", "y"):
        scheduler.add(request(name, 0, prompt=list(range(600, 612))))
        while scheduler.has_unfinished():
            run_step(scheduler)
    assert scheduler.blocks.hits == 0 and scheduler.blocks.num_cached_free_pages == 0


def test_random_add_step_abort_preempt_never_leaks_a_page():
    rng = random.Random(7)
    scheduler = make(pages=12, page_size=4, max_num_seqs=4, max_num_batched_tokens=16)
    prefixes = [list(range(base, base + 8)) for base in (700, 800)]
    names = iter(range(10_000))
    mirror: dict[str, list[int]] = {}  # what the runner's input batch holds, built from deltas only
    for _ in range(300):
        action = rng.random()
        if action < 0.3:
            prompt = rng.choice(prefixes)[:rng.randint(1, 8)] + [rng.randint(0, 50) for _ in range(rng.randint(0, 6))]
            scheduler.add(Request(f"r{next(names)}", prompt, SamplingParams(temperature=0,
                                  max_tokens=rng.randint(1, 10)), max_model_len=40))
        elif action < 0.4 and scheduler.running + list(scheduler.waiting):
            scheduler.abort(rng.choice(scheduler.running + list(scheduler.waiting)).request_id)
        elif scheduler.has_unfinished():
            run_step(scheduler, token=rng.randint(0, 50), mirror=mirror)  # invariants checked after every step
    while scheduler.has_unfinished():
        run_step(scheduler, mirror=mirror)
    assert scheduler.num_preemptions > 0 and scheduler.blocks.hits > 0  # both paths were exercised
    assert scheduler.blocks.num_used_pages == 0 and scheduler.blocks.tables == {}
    blocks = scheduler.blocks
    assert blocks.num_free_pages + 0 == blocks.num_pages == len(blocks._free) + blocks.num_cached_free_pages


def test_decodes_go_first_and_the_budget_caps_each_step():
    scheduler = make(pages=64, max_num_batched_tokens=10)
    for name, length in (("a", 3), ("b", 20)):
        scheduler.add(request(name, length))
    first = run_step(scheduler)
    assert [(s.request_id, s.num_tokens) for s in first.scheduled] == [("a", 3), ("b", 7)]
    second = run_step(scheduler)  # a decodes (1 token) before b's next prompt chunk
    assert [(s.request_id, s.num_tokens) for s in second.scheduled] == [("a", 1), ("b", 9)]
    assert all(p.num_tokens <= 10 for p in (first, second))
    third = run_step(scheduler)
    assert [(s.request_id, s.num_tokens) for s in third.scheduled] == [("a", 1), ("b", 4)]
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
    assert plan.preempted == ["new"]
    victim = scheduler.waiting[0]
    assert victim.request_id == "new" and victim.status is RequestStatus.PREEMPTED
    assert victim.num_computed_tokens == 0 and victim.num_preemptions == 1
    assert victim.num_tokens == 9  # prompt and the two tokens it made: what the recompute replays
    assert scheduler.blocks.tables.keys() == {"old"}
    while scheduler.has_unfinished():
        run_step(scheduler)
    assert scheduler.blocks.num_used_pages == 0 and scheduler.num_preemptions >= 1


def test_abort_frees_pages_at_once():
    scheduler = make(pages=8)
    scheduler.add(request("a", 6))
    scheduler.add(request("b", 3))
    run_step(scheduler)
    assert scheduler.blocks.num_used_pages == 3 and scheduler.stats()["kv_peak_usage"] == 3 / 8
    aborted = scheduler.abort("a")
    assert aborted.status is RequestStatus.FINISHED_ABORTED and aborted.status.finish_reason == "abort"
    assert scheduler.blocks.num_used_pages == 1 and [r.request_id for r in scheduler.running] == ["b"]
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

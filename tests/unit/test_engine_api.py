"""`LLM` and `AsyncLLM` on a tiny random Llama: prompt forms, errors, limits, stops, timings, seeds, streams,
cancellation."""
from __future__ import annotations

import asyncio
import contextlib

import pytest
from engine_refs import hf_greedy, load_fp32, varied_prompts

from labkit.engine import LLM, AsyncLLM, SamplingParams

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def tiny(tiny_model_dirs):
    return load_fp32(tiny_model_dirs["llama"])


@pytest.fixture
def llm(tiny):
    model, tokenizer = tiny
    with LLM(model, tokenizer, kv_cache_tokens=2048, page_size=16) as engine:
        yield engine
    assert model.config._attn_implementation == "sdpa"  # closing gives the model its attention back


def test_accepts_text_chat_and_token_ids(llm, tiny):
    model, tokenizer = tiny
    chat = [{"role": "user", "content": "Hello there"}]
    chat_ids = tokenizer(tokenizer.apply_chat_template(chat, add_generation_prompt=True, tokenize=False),
                         add_special_tokens=False)["input_ids"]
    greedy = SamplingParams(temperature=0, max_tokens=5)
    by_text, by_chat, by_ids = llm.generate(["Hello there", chat, tokenizer("Hello there")["input_ids"]], greedy)
    assert by_text.token_ids == by_ids.token_ids == hf_greedy(model, tokenizer("Hello there")["input_ids"], 5)
    assert by_chat.token_ids == hf_greedy(model, chat_ids, 5) and by_chat.prompt_token_ids == chat_ids
    [single] = llm.generate("Hello there", greedy)  # one prompt alone is a batch of one
    assert single.token_ids == by_text.token_ids and single.text == tokenizer.decode(single.token_ids,
                                                                                        skip_special_tokens=True)


def test_over_long_prompt_is_refused_before_anything_runs(llm):
    with pytest.raises(ValueError, match=r"^The prompt has 600 tokens but this engine's context is 512 tokens"):
        llm.generate([[5] * 10, [5] * 600], SamplingParams(max_tokens=4))
    assert llm.stats()["num_waiting"] == 0 and llm.stats()["num_running"] == 0 and llm.steps == []
    with pytest.raises(ValueError, match="empty"):
        llm.generate([[]])
    with pytest.raises(ValueError, match="SamplingParams"):
        llm.generate(["a", "b"], [SamplingParams()] * 3)


def test_max_and_min_tokens_are_exact_and_timings_are_filled_in(llm, tiny):
    prompts = varied_prompts(tiny[1], 6, seed=3)
    params = [SamplingParams(temperature=0, max_tokens=n, min_tokens=n, ignore_eos=True) for n in (1, 2, 3, 5, 8, 13)]
    outs = llm.generate(prompts, params)
    for out, p, prompt in zip(outs, params, prompts):
        m = out.metrics
        assert len(out.token_ids) == p.max_tokens == m.num_output_tokens and out.finish_reason == "length"
        assert m.num_prompt_tokens == len(prompt)
        assert len(m.inter_token_latencies_s) == p.max_tokens - 1 and all(t > 0 for t in m.inter_token_latencies_s)
        assert 0 <= m.queue_time_s <= m.ttft_s <= m.e2e_latency_s
        assert m.e2e_latency_s == pytest.approx(m.ttft_s + sum(m.inter_token_latencies_s), abs=0.05)


def test_stop_token_ids_end_the_request_with_reason_stop(llm, tiny):
    model, tokenizer = tiny
    prompt = varied_prompts(tokenizer, 1, seed=5)[0]
    reference = hf_greedy(model, prompt, 12)
    stop = reference[4]
    [out] = llm.generate([prompt], SamplingParams(temperature=0, max_tokens=12, stop_token_ids=[stop]))
    assert out.token_ids == reference[:reference.index(stop) + 1]
    assert out.finish_reason == "stop" and out.stop_reason == stop
    [held] = llm.generate([prompt], SamplingParams(temperature=0, max_tokens=12, stop_token_ids=[stop],
                                                   min_tokens=reference.index(stop) + 1))
    assert stop not in held.token_ids[:reference.index(stop) + 1]  # masked until min_tokens


def test_seeded_sampling_is_reproducible_in_any_batch(llm, tiny):
    prompts = varied_prompts(tiny[1], 8, seed=7)
    seeded = SamplingParams(temperature=0.9, top_p=0.95, top_k=100, seed=1234, max_tokens=12)
    [alone] = llm.generate([prompts[0]], seeded)
    mixed = [seeded, SamplingParams(temperature=1.0, max_tokens=9), SamplingParams(temperature=0, max_tokens=5)] * 3
    batch = llm.generate(prompts[:1] + prompts[1:8], mixed[:8])
    assert batch[0].token_ids == alone.token_ids
    [other_seed] = llm.generate([prompts[0]], SamplingParams(temperature=0.9, top_p=0.95, top_k=100, seed=99,
                                                             max_tokens=12))
    assert other_seed.token_ids != alone.token_ids


def test_model_stays_usable_with_hf_generate_while_attached(llm, tiny):
    model, tokenizer = tiny
    prompt = varied_prompts(tokenizer, 1, seed=9)[0]
    [out] = llm.generate([prompt], SamplingParams(temperature=0, max_tokens=6))
    assert hf_greedy(model, prompt, 6) == out.token_ids  # SDPA fallback outside engine steps


def test_async_engine_streams_tokens_and_abort_frees_pages_at_once(tiny):
    model, tokenizer = tiny
    prompts = varied_prompts(tokenizer, 3, seed=11)
    expected = [hf_greedy(model, p, 10) for p in prompts]
    engine = AsyncLLM(model, tokenizer, kv_cache_tokens=2048, page_size=16)

    async def collect(prompt):
        steps = [out async for out in engine.generate(prompt, SamplingParams(temperature=0, max_tokens=10))]
        return steps

    async def main():
        streams = await asyncio.gather(*(collect(p) for p in prompts))
        for steps, want in zip(streams, expected):
            assert [t for s in steps[:-1] for t in s.new_token_ids] + steps[-1].new_token_ids == want
            assert steps[-1].finished and steps[-1].token_ids == want and steps[-1].metrics is not None
            assert all(not s.finished for s in steps[:-1])
        # Cancel one mid-stream: its pages are free when abort returns.
        long_run = engine.generate(prompts[0], SamplingParams(temperature=0, max_tokens=400, ignore_eos=True),
                                   request_id="long")
        first = await long_run.__anext__()
        assert first.new_token_ids and engine.kv_usage > 0
        assert engine.abort("long") and engine.kv_usage == 0 and engine.num_running == 0
        rest = [out async for out in long_run]  # tokens of a step that was in flight may come first
        assert rest[-1].finished and rest[-1].finish_reason == "abort"
        assert all(not out.finished for out in rest[:-1])
        # Leaving an `async for` early (a client going away) aborts too, once the generator is closed.
        async with contextlib.aclosing(engine.generate(prompts[1], SamplingParams(max_tokens=400,
                                                                                  ignore_eos=True))) as stream:
            async for _ in stream:
                break
        assert engine.num_running == 0 and engine.num_waiting == 0 and engine.kv_usage == 0
        with pytest.raises(ValueError, match="context"):
            async for _ in engine.generate([5] * 600):
                pass

    try:
        asyncio.run(main())
    finally:
        engine.stop()
        engine.engine.close()


def test_abort_is_served_before_the_next_step_and_never_blocks_the_event_loop(tiny):
    """The stepping thread must not win the engine again and again while an abort waits: an abort from
    another thread lands within two steps (the one in flight and the next), whatever the step rate."""
    model, tokenizer = tiny
    engine = AsyncLLM(model, tokenizer, kv_cache_tokens=2048, page_size=16)

    async def main():
        params = SamplingParams(max_tokens=1500, ignore_eos=True)
        stream = engine.generate([5, 6, 7], params, request_id="long")
        await stream.__anext__()
        for _ in range(20):  # many aborts of unknown ids, each waiting for the engine thread to serve it
            before = engine.engine.num_steps
            assert await asyncio.to_thread(engine.abort, "nobody") is False
            assert engine.engine.num_steps - before <= 2
        ticks = 0

        async def ticker():  # the event loop keeps running while an abort is in progress
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0)

        task = asyncio.create_task(ticker())
        before = engine.engine.num_steps
        assert await engine.abort_async("long") is True
        assert engine.engine.num_steps - before <= 2 and engine.kv_usage == 0
        task.cancel()
        assert ticks > 0
        rest = [out async for out in stream]
        assert rest[-1].finish_reason == "abort"

    try:
        asyncio.run(main())
    finally:
        engine.stop()
        engine.engine.close()


def test_bf16_prepacked_weights_change_nothing_but_speed(tiny_model_dirs):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = tiny_model_dirs["qwen2"]  # has biases on q/k/v
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16).eval()
    tokenizer = AutoTokenizer.from_pretrained(path)
    prompts = varied_prompts(tokenizer, 6, seed=13)
    params = SamplingParams(temperature=0, max_tokens=10)
    # labkit's kernels off: on a CPU with AMX they replace the oneDNN copies this test is about.
    with LLM(model, tokenizer, kv_cache_tokens=1024, page_size=16, prepack_weights=False, cpu_kernels=False) as plain:
        expected = [o.token_ids for o in plain.generate(prompts, params)]
    with LLM(model, tokenizer, kv_cache_tokens=1024, page_size=16, cpu_kernels=False) as packed:
        assert packed.engine.runner.num_packed_weights, "bf16 weights should be prepacked on this CPU"
        assert [o.token_ids for o in packed.generate(prompts, params)] == expected
    assert all("forward" not in layer.__dict__ for layer in model.modules())  # detached on close


def test_a_second_engine_on_the_same_model_takes_it_over_and_the_first_refuses_to_step(tiny):
    model, tokenizer = tiny
    greedy = SamplingParams(temperature=0, max_tokens=4)
    ids = tokenizer("Hello there")["input_ids"]
    first = LLM(model, tokenizer, kv_cache_tokens=1024, page_size=16)
    second = LLM(model, tokenizer, kv_cache_tokens=1024, page_size=16)  # e.g. a notebook cell run again
    try:
        with pytest.raises(RuntimeError, match="Another engine now drives this model"):
            first.generate([ids], greedy)
        [out] = second.generate([ids], greedy)  # the newcomer's cache was never written by the first
        assert out.token_ids == hf_greedy(model, ids, 4)
        assert second.engine.scheduler.blocks.usage == 0
        first.close()  # closing the displaced engine leaves the newcomer attached
        assert model.config._attn_implementation != "sdpa"
        assert second.generate([ids], greedy)[0].token_ids == out.token_ids
    finally:
        second.close()
    assert model.config._attn_implementation == "sdpa"


class _SamplerFailingOn:
    """The engine's sampler, except that it raises for any batch holding a request with this seed: a stand-in
    for a per-request value that breaks sampling (grammar bitmasks will be the next such thing)."""

    def __init__(self, sampler, seed: int):
        self.sampler, self.seed = sampler, seed

    def sample(self, logits, requests):
        if any(r.params.seed == self.seed for r in requests):
            raise OverflowError("a value this request brought does not fit")
        return self.sampler.sample(logits, requests)


def test_a_request_that_breaks_the_sampler_fails_alone_and_the_batch_goes_on(llm, tiny):
    model, tokenizer = tiny
    llm.engine.sampler = _SamplerFailingOn(llm.engine.sampler, seed=666)
    prompts = varied_prompts(tokenizer, 4)
    params = [SamplingParams(temperature=0, max_tokens=6)] * 4
    params[1] = SamplingParams(temperature=1.0, seed=666, max_tokens=6)
    outs = llm.generate(prompts, params)
    assert outs[1].finish_reason == "error" and "OverflowError" in outs[1].error and outs[1].token_ids == []
    for index in (0, 2, 3):  # the others are exactly what they would have been alone
        assert outs[index].finish_reason == "length" and outs[index].error is None
        assert outs[index].token_ids == hf_greedy(model, prompts[index], 6)
    assert llm.engine.scheduler.blocks.usage == 0 and not llm.engine.has_unfinished_requests()


def test_a_request_whose_text_cannot_be_processed_fails_alone(llm, tiny):
    model, tokenizer = tiny
    prompts = varied_prompts(tokenizer, 3)
    outs_before = llm.generate(prompts, SamplingParams(temperature=0, max_tokens=5))
    broken = SamplingParams(temperature=0, max_tokens=5, stop=("zz",))
    original_add = llm.engine.add_request

    def add_request(ids, params=None, **kwargs):  # the stop-string request's text fails on its 2nd token
        request = original_add(ids, params, **kwargs)
        if params is broken:
            text, calls = llm.engine.outputs.texts[request.request_id], []

            def add(token):
                calls.append(token)
                if len(calls) == 2:
                    raise UnicodeDecodeError("utf-8", b"\xff", 0, 1, "invalid start byte")
                return type(text).add(text, token)
            text.add = add
        return request

    llm.engine.add_request = add_request
    outs = llm.generate(prompts, [SamplingParams(temperature=0, max_tokens=5), broken,
                                  SamplingParams(temperature=0, max_tokens=5)])
    assert outs[1].finish_reason == "error" and "UnicodeDecodeError" in outs[1].error
    assert [outs[0].token_ids, outs[2].token_ids] == [outs_before[0].token_ids, outs_before[2].token_ids]
    assert llm.engine.scheduler.blocks.usage == 0


def test_async_engine_refuses_one_bad_arrival_and_keeps_serving(tiny):
    model, tokenizer = tiny
    engine = AsyncLLM(model, tokenizer, kv_cache_tokens=1024, page_size=16)
    ids = tokenizer("Hello there")["input_ids"]

    async def last(params):
        async with contextlib.aclosing(engine.generate(ids, params)) as stream:
            async for out in stream:
                pass
        return out

    async def main():
        # a stop token id past the vocabulary is refused inside the engine thread (add_request)
        bad, good = await asyncio.gather(last(SamplingParams(max_tokens=4, stop_token_ids=[10**9])),
                                         last(SamplingParams(temperature=0, max_tokens=4)))
        return bad, good, await last(SamplingParams(temperature=0, max_tokens=4))

    try:
        bad, good, after = asyncio.run(main())
    finally:
        engine.stop()
        engine.engine.close()
    assert bad.finish_reason == "error" and "stop_token_ids" in bad.error
    assert good.finish_reason == after.finish_reason == "length" and good.token_ids == after.token_ids
    assert engine.error is None


def test_the_step_log_is_a_window_and_the_step_count_goes_on(tiny):
    model, tokenizer = tiny
    with LLM(model, tokenizer, kv_cache_tokens=1024, page_size=16, step_log_size=3) as engine:
        engine.generate([tokenizer("Hello")["input_ids"]], SamplingParams(temperature=0, max_tokens=8))
        assert engine.engine.num_steps == 8 and len(engine.steps) == 3
        assert [s.index for s in engine.steps] == [5, 6, 7]

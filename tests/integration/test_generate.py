"""`Generator` and `labkit generate`: one engine built and warmed once, replies timed on it, conversations that
reuse it, and the one-off `stream_generate` kept for old callers."""
from __future__ import annotations

import subprocess
import sys

import pytest

import labkit
from labkit import Generator, LLM, SamplingParams, stream_generate

pytestmark = pytest.mark.integration


@pytest.fixture
def generator(default_llm_fp32):
    """One per test: an engine takes the model object over, so a test that builds another ends this one."""
    with Generator(default_llm_fp32) as warm:
        yield warm


def test_a_reply_streams_what_the_engine_generates_and_times_it_on_the_ready_engine(generator):
    reply = generator.stream("The capital of France is", max_tokens=12, temperature=0)
    pieces = list(reply)
    expected = generator.llm.generate("The capital of France is", SamplingParams(temperature=0, max_tokens=12))[0]
    assert "".join(pieces) == reply.text == expected.text and "Paris" in reply.text
    assert len(pieces) > 1  # streamed, not handed over at the end
    assert reply.num_tokens == len(expected.token_ids) and reply.finish_reason == expected.finish_reason
    assert reply.num_prompt_tokens == len(expected.prompt_token_ids) and reply.num_cached_tokens == 0
    assert 0 < reply.ttft_s < reply.duration_s
    assert reply.decode_tokens_per_s == pytest.approx((reply.num_tokens - 1) / (reply.duration_s - reply.ttft_s))
    assert generator.build_seconds > 0 and generator.warm_up_seconds > 0
    assert generator.ready_seconds == generator.build_seconds + generator.warm_up_seconds


def test_replies_share_one_engine_built_before_the_first(default_llm_fp32, monkeypatch):
    built = []
    monkeypatch.setattr(labkit.generate, "LLM", lambda *a, **kw: built.append(LLM(*a, **kw)) or built[-1])
    with Generator(default_llm_fp32) as generator:
        assert len(built) == 1 and built[0].engine.num_steps > 0  # the warm-up ran on it
        for prompt in ("Hello", "Name a colour."):
            list(generator.stream(prompt, max_tokens=3, temperature=0, chat=True))
    assert len(built) == 1


def test_a_conversation_reuses_the_earlier_turns_from_the_prefix_cache(generator):
    question = ("I am planning a long trip through Europe next spring, by train, and would like to see several of "
                "its capitals, starting with France. What is the capital of France? Answer in one sentence.")
    conversation = [{"role": "user", "content": question}]
    first = generator.stream(conversation, max_tokens=16, temperature=0)
    conversation.append({"role": "assistant", "content": "".join(first)})
    conversation.append({"role": "user", "content": "And of Italy?"})
    second = generator.stream(conversation, max_tokens=16, temperature=0)
    list(second)
    assert first.num_cached_tokens == 0  # the warm-up left nothing behind
    page = generator.llm.engine.config.page_size
    assert second.num_prompt_tokens > first.num_prompt_tokens
    assert first.num_prompt_tokens >= page  # so the first turn fills at least one whole page, the cache's unit
    assert page <= second.num_cached_tokens <= first.num_prompt_tokens + first.num_tokens
    assert second.num_cached_tokens % page == 0


def test_a_reply_abandoned_half_way_ends_when_the_next_starts(generator):
    abandoned = generator.stream("Tell me a long story.", max_tokens=64, temperature=0, chat=True)
    next(iter(abandoned))
    engine = generator.llm.engine
    steps_before = engine.num_steps
    following = generator.stream("The capital of France is", max_tokens=12, temperature=0)
    assert "Paris" in "".join(following)
    assert engine.num_steps - steps_before == following.num_tokens  # one prefill, then its own decodes alone
    assert not engine.has_unfinished_requests() and engine.scheduler.blocks.usage == 0


def test_stream_generate_still_yields_pieces_and_counts(default_llm_fp32):
    pairs = list(stream_generate(default_llm_fp32, "The capital of France is", max_tokens=12, temperature=0))
    counts = [count for _, count in pairs]
    assert counts == sorted(counts) and counts[-1] == 12
    with Generator(default_llm_fp32) as generator:
        warm = "".join(generator.stream("The capital of France is", max_tokens=12, temperature=0))
    assert "".join(piece for piece, _ in pairs) == warm


def test_generation_from_an_encoder_is_refused_clearly(default_encoder):
    with pytest.raises(TypeError, match="needs a causal LM"):
        Generator(default_encoder)
    with pytest.raises(TypeError, match="needs a causal LM"):
        next(stream_generate(default_encoder, "hi"))


def test_cli_generate_reports_loading_apart_from_a_warm_first_token():
    result = subprocess.run(
        [sys.executable, "-m", "labkit.cli", "generate", "The capital of France is", "--max-tokens", "12",
         "--temperature", "0"], capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert "Paris" in result.stdout
    ready, timing = result.stderr.strip().splitlines()  # timing on stderr, so stdout stays the text alone
    assert "loaded in" in ready and "engine ready in" in ready and "warm-up" in ready
    assert "first token after" in timing and "prefilled on the ready engine" in timing and "tok/s" in timing
    assert "Loading weights" not in result.stderr  # the model was ready: no bar for a one-second load


def test_cli_generate_refuses_an_encoder_in_one_line():
    result = subprocess.run([sys.executable, "-m", "labkit.cli", "generate", "hi", "--model", "minilm-l6-v2"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    assert result.stderr.strip() == "labkit: error: minilm-l6-v2 is an encoder; text generation needs a causal LM."

"""Decode steps through CUDA graphs' fixed shapes (engine/cuda_graphs.py): the buckets, the padding rows and
their scratch page, and the fallback when a capture fails. Off a GPU the same padded inputs run op by op, so
everything here but the recording itself runs on the CPU; tests/integration/test_engine_gpu.py replays real
graphs."""
from __future__ import annotations

import logging

import pytest
from engine_refs import load_fp32, varied_prompts

from labkit.engine import LLM, SamplingParams, model_runner
from labkit.engine.cuda_graphs import DecodeGraphs, bucket, page_buckets

pytestmark = pytest.mark.unit

LENGTHS = [3, 40, 9, 25, 17]  # requests leave at different steps: the batch shrinks through its buckets


def test_buckets():
    assert page_buckets(1) == (1,) and page_buckets(5) == (1, 2, 4, 5) and page_buckets(8) == (1, 2, 4, 8)
    assert [bucket(n, (1, 2, 4, 8)) for n in (1, 2, 3, 5, 8)] == [1, 2, 4, 8, 8]


@pytest.fixture
def graphs_on_the_cpu(monkeypatch):
    monkeypatch.setattr(model_runner, "GRAPH_DEVICES", ("cuda", "cpu"))


def _generate(model, tokenizer, prompts, **config):
    params = [SamplingParams(temperature=0, max_tokens=n, min_tokens=n, ignore_eos=True) for n in LENGTHS]
    with LLM(model, tokenizer, kv_cache_tokens=1024, page_size=16, max_num_seqs=8, **config) as llm:
        tokens = [o.token_ids for o in llm.generate(prompts, params, use_tqdm=False)]
        runner = llm.engine.runner
        # what the runner holds before closing drops it
        return tokens, (runner.graphs, runner.graphs_off_reason, runner.cache), llm.engine.stats()


def test_padded_decode_steps_make_the_eager_steps_tokens(tiny_model_dirs, graphs_on_the_cpu):
    model, tokenizer = load_fp32(tiny_model_dirs["llama"])
    prompts = varied_prompts(tokenizer, len(LENGTHS), seed=3)
    eager, (no_graphs, _, _), _ = _generate(model, tokenizer, prompts, enforce_eager=True)
    graphed, (graphs, _, cache), stats = _generate(model, tokenizer, prompts)
    assert no_graphs is None and graphs is not None
    assert graphed == eager
    replayed = set(graphs.replays)
    # 5 requests pad to 8 rows, then 4 and 2 as they leave, the last alone 1; contexts grow past 64 tokens
    assert {8, 4, 2, 1} == {size for size, _ in replayed} and {4, 8} <= {pages for _, pages in replayed}
    # every batch size was captured at start for contexts up to 256 tokens (16 pages of 16), longer ones on use;
    # every step after the one prefill step (all five prompts at once) replayed one
    started = {(size, pages) for size in graphs.batch_sizes for pages in (1, 2, 4, 8, 16)}
    assert set(graphs.graphs) == started | replayed
    assert stats["cuda_graphs"] == len(graphs.graphs) and stats["cuda_graph_replays"] == max(LENGTHS) - 1
    # the padding rows' page follows the pages requests get, and is never one of them
    assert cache.keys[0].shape[0] == cache.num_pages + 1 == graphs.scratch_page + 1
    assert stats["kv_capacity_tokens"] == 1024


def test_a_capture_that_fails_turns_graphs_off_and_the_step_runs_eagerly(tiny_model_dirs, graphs_on_the_cpu,
                                                                         monkeypatch, caplog):
    model, tokenizer = load_fp32(tiny_model_dirs["llama"])
    prompts = varied_prompts(tokenizer, len(LENGTHS), seed=4)
    eager, _, _ = _generate(model, tokenizer, prompts, enforce_eager=True)

    def refuse(self, size, pages):
        raise RuntimeError("operation not permitted when stream is capturing")

    monkeypatch.setattr(DecodeGraphs, "_capture", refuse)
    with caplog.at_level(logging.WARNING, logger="labkit.engine"):
        tokens, (graphs, off_reason, _), stats = _generate(model, tokenizer, prompts)
    assert tokens == eager
    assert graphs is None and "not permitted when stream is capturing" in off_reason
    assert "cuda_graphs" not in stats
    assert any("decode steps run eagerly" in record.getMessage() for record in caplog.records)


def test_no_graphs_for_the_generic_path_or_the_cpu_kernels(tiny_model_dirs, graphs_on_the_cpu):
    model, tokenizer = load_fp32(tiny_model_dirs["gpt2"])
    with LLM(model, tokenizer, kv_cache_tokens=256, page_size=16) as llm:
        assert llm.engine.runner.graphs is None
        assert llm.engine.runner.cache.keys[0].shape[0] == llm.engine.runner.cache.num_pages

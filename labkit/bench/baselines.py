"""The three Hugging Face baselines of `labkit bench engine`, each timed the same way as labkit.

Every request arrives at the start of the run (time 0). For each request we keep its output token count,
its first-token time and its finish time, both from time 0.
"""
from __future__ import annotations

import inspect
import time
from dataclasses import dataclass

import torch


@dataclass
class RequestTiming:
    output_tokens: int
    ttft_s: float
    latency_s: float


@dataclass
class SystemRun:
    wall_s: float
    requests: list[RequestTiming]
    notes: str = ""


class _FirstTokenClock:
    """A generate() streamer that only notes when the first new token arrives (its first put is the prompt)."""

    def __init__(self):
        self.calls = 0
        self.first_token_at: float | None = None

    def put(self, value) -> None:
        self.calls += 1
        if self.calls == 2 and self.first_token_at is None:
            self.first_token_at = time.perf_counter()

    def end(self) -> None:
        pass


def _generate(model, input_ids, attention_mask, new_tokens: int, pad_token_id: int, streamer=None):
    # min_new_tokens = max_new_tokens: EOS is masked, so every system makes exactly the requested tokens.
    with torch.inference_mode():
        return model.generate(input_ids, attention_mask=attention_mask, max_new_tokens=new_tokens,
                              min_new_tokens=new_tokens, do_sample=False, pad_token_id=pad_token_id,
                              streamer=streamer)


def hf_sequential(model, prompts: list[list[int]], lengths: list[int], pad_token_id: int) -> SystemRun:
    """HF generate, one request at a time, in arrival order."""
    started = time.perf_counter()
    timings = []
    for ids, n in zip(prompts, lengths):
        clock = _FirstTokenClock()
        tensor = torch.tensor([ids], device=model.device)
        out = _generate(model, tensor, torch.ones_like(tensor), n, pad_token_id, clock)
        now = time.perf_counter()
        timings.append(RequestTiming(out.shape[1] - len(ids), clock.first_token_at - started, now - started))
    return SystemRun(time.perf_counter() - started, timings)


def hf_static(model, prompts: list[list[int]], lengths: list[int], pad_token_id: int, batch_size: int = 8) -> SystemRun:
    """HF generate over left-padded batches in arrival order; a batch runs until its longest request is done,
    and all its requests finish together."""
    started = time.perf_counter()
    timings = []
    for first in range(0, len(prompts), batch_size):
        batch, wanted = prompts[first:first + batch_size], lengths[first:first + batch_size]
        width = max(len(p) for p in batch)
        ids = torch.tensor([[pad_token_id] * (width - len(p)) + p for p in batch], device=model.device)
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in batch], device=model.device)
        clock = _FirstTokenClock()
        out = _generate(model, ids, mask, max(wanted), pad_token_id, clock)
        now = time.perf_counter()
        made = out.shape[1] - width  # every row made this many; each request keeps the first n it asked for
        timings.extend(RequestTiming(min(n, made), clock.first_token_at - started, now - started) for n in wanted)
    return SystemRun(time.perf_counter() - started, timings, f"batches of {batch_size}, left-padded")


def hf_continuous(model, prompts: list[list[int]], lengths: list[int], *, kv_cache_tokens: int,
                  max_batch_tokens: int, max_num_seqs: int) -> SystemRun:
    """transformers' own continuous batching (ContinuousBatchingManager), with a cache bounded like labkit's
    (unbounded, it sizes itself to most of the machine's memory)."""
    from transformers import ContinuousBatchingConfig, GenerationConfig

    page_size = 256
    # transformers 5.17 calls a page a block (`block_size`); later releases renamed it `page_size`.
    size_name = "page_size" if "page_size" in inspect.signature(ContinuousBatchingConfig).parameters else "block_size"
    config = ContinuousBatchingConfig(**{size_name: page_size}, num_blocks=max(1, kv_cache_tokens // page_size),
                                      max_batch_tokens=max_batch_tokens, max_requests_per_batch=max_num_seqs)
    generation = GenerationConfig(do_sample=False, max_new_tokens=max(lengths), eos_token_id=-1,
                                  pad_token_id=model.generation_config.pad_token_id)
    results = {}
    with model.continuous_batching_context_manager(generation_config=generation, continuous_batching_config=config,
                                                   block=True, timeout=30, warmup=False) as manager:
        started = time.perf_counter()
        for index, (ids, n) in enumerate(zip(prompts, lengths)):
            # eos_token_id=-1: no EOS, so each request makes exactly n tokens (as min_new_tokens does elsewhere).
            manager.add_request(ids, request_id=f"r{index}", max_new_tokens=n, record_timestamps=True,
                                eos_token_id=-1)
        while len(results) < len(prompts):
            result = manager.get_result(timeout=1)
            if result is not None and result.is_finished():
                results[result.request_id] = (result, time.perf_counter())
            elif result is None and not manager.is_running():
                raise RuntimeError("transformers' continuous batching thread stopped early.")
        wall = time.perf_counter() - started
    timings = []
    for index in range(len(prompts)):
        result, seen_at = results[f"r{index}"]
        first = result.timestamps[0] if result.timestamps else seen_at
        timings.append(RequestTiming(len(result.generated_tokens), first - started, seen_at - started))
    return SystemRun(wall, timings, f"ContinuousBatchingConfig({size_name}={page_size}, num_blocks={config.num_blocks}, "
                                    f"max_batch_tokens={max_batch_tokens}, max_requests_per_batch={max_num_seqs})")

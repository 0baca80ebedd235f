"""`LLM`: the engine for scripts and notebooks. Give it prompts, get one output per prompt, in order.

    from labkit import LLM, SamplingParams, load_model
    llm = LLM(load_model("smollm2-135m-instruct"))
    outputs = llm.generate(["The capital of France is"], SamplingParams(temperature=0, max_tokens=16))
    outputs[0].text, outputs[0].finish_reason, outputs[0].metrics.ttft_s
"""
from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence

from ..config import EngineConfig
from ..errors import UnsupportedModel
from .chat import chat_token_ids
from .engine import LLMEngine, StepRecord
from .outputs import CompletionOutput, RequestOutput
from .sampling_params import SamplingParams

PROGRESS_BAR_FROM = 16  # prompts; smaller batches finish too fast for a bar to help


class LLM:
    """Continuous-batching generation over a loaded model.

    `model` is a `LoadedModel` (from `labkit.load_model`), an alias or path to load, or a transformers model
    (then pass its `tokenizer`). Engine settings come from `config` and/or keyword overrides of `EngineConfig`
    fields, e.g. `LLM(model, max_num_seqs=8)`. `bus` is the monitor's event bus the engine publishes to
    (`labkit.monitor.source(llm)` subscribes to `llm.bus`); by default the engine has its own.
    """

    def __init__(self, model, tokenizer=None, config: EngineConfig | None = None, *, bus=None, **overrides):
        if isinstance(model, str):
            from ..models import load_model

            model = load_model(model)
        if hasattr(model, "model") and hasattr(model, "tokenizer") and hasattr(model, "kind"):  # a LoadedModel
            if model.kind != "causal-lm":
                raise UnsupportedModel(f"{model.name} is an {model.kind} model; LLM needs a causal language model.")
            tokenizer = tokenizer or model.tokenizer
            model = model.model
        if tokenizer is None:
            raise TypeError("LLM needs a tokenizer with a bare transformers model: LLM(model, tokenizer).")
        config = dataclasses.replace(config or EngineConfig(), **overrides)
        self.engine = LLMEngine(model, tokenizer, config, bus=bus)
        self.tokenizer = tokenizer

    @property
    def bus(self):
        """The monitor's event bus: steps and finished requests are published here while someone listens."""
        return self.engine.bus

    # ---- prompts ----
    def encode(self, prompt) -> list[int]:
        """Token ids of one prompt: a string, a chat (a list of {"role", "content"} messages) or token ids."""
        if isinstance(prompt, str):
            return self.tokenizer(prompt)["input_ids"]
        if isinstance(prompt, Sequence) and prompt and all(isinstance(m, dict) for m in prompt):
            return chat_token_ids(self.tokenizer, list(prompt))  # message texts never become control tokens
        if isinstance(prompt, Sequence) and all(isinstance(t, int) for t in prompt):
            return list(prompt)
        raise TypeError(f"A prompt is a string, a list of chat messages or a list of token ids, not {type(prompt).__name__}.")

    @staticmethod
    def _as_batch(prompts) -> list:
        """A single prompt becomes a batch of one; a list of prompts stays as it is."""
        if isinstance(prompts, str):
            return [prompts]
        if isinstance(prompts, Sequence) and prompts and (isinstance(prompts[0], (int, dict))):
            return [prompts]  # one token-id prompt, or one chat
        return list(prompts)

    # ---- generation ----
    def generate(self, prompts, params: SamplingParams | Sequence[SamplingParams] | None = None, *,
                 use_tqdm: bool | None = None) -> list[RequestOutput]:
        """Run every prompt to completion, batched continuously; one finished output per prompt, in order."""
        batch = self._as_batch(prompts)
        if params is None or isinstance(params, SamplingParams):
            params = [params or SamplingParams()] * len(batch)
        if len(params) != len(batch):
            raise ValueError(f"Got {len(params)} SamplingParams for {len(batch)} prompts; give one, or one per prompt.")
        encoded = [self.encode(p) for p in batch]
        for ids in encoded:  # refuse the whole batch before anything runs
            self.engine.validate_prompt(ids)
        arrival = time.perf_counter()
        order: dict[str, tuple[int, int]] = {}  # engine request id -> (prompt index, sibling index)
        later = []  # siblings of n > 1 requests, added once their first sibling's prompt is in the KV cache
        for index, (prompt, ids, p) in enumerate(zip(batch, encoded, params)):
            first = self.engine.add_request(ids, p.child(0) if p.n > 1 else p, prompt=prompt, arrival_time=arrival)
            order[first.request_id] = (index, 0)
            later.extend((first, index, sibling, prompt, ids, p.child(sibling)) for sibling in range(1, p.n))
        siblings: list[list[RequestOutput | None]] = [[None] * p.n for p in params]
        bar = self._progress_bar(len(batch), use_tqdm)
        try:
            while self.engine.has_unfinished_requests() or later:
                later = self._add_siblings(later, order, arrival)
                for output in self.engine.step():
                    if output.finished:
                        index, sibling = order[output.request_id]
                        siblings[index][sibling] = output
                        if bar is not None and all(siblings[index]):
                            bar.update(1)
        except BaseException:
            for request_id in order:  # leave the engine clean (e.g. after Ctrl-C in a notebook)
                self.engine.abort(request_id)
            raise
        finally:
            if bar is not None:
                bar.close()
        return [outputs[0] if len(outputs) == 1 else _with_siblings(outputs) for outputs in siblings]

    def _add_siblings(self, later: list, order: dict, arrival: float) -> list:
        """Add the siblings whose first sibling has its prompt computed (or has ended): they then find the
        prompt's pages in the prefix cache and share them instead of computing them again."""
        waiting = []
        for first, index, sibling, prompt, ids, p in later:
            if first.num_computed_tokens >= len(ids) or first.status.is_finished:
                request = self.engine.add_request(ids, p, prompt=prompt, arrival_time=arrival)
                order[request.request_id] = (index, sibling)
            else:
                waiting.append((first, index, sibling, prompt, ids, p))
        return waiting

    @staticmethod
    def _progress_bar(total: int, use_tqdm: bool | None):
        if use_tqdm is False or (use_tqdm is None and total < PROGRESS_BAR_FROM):
            return None
        from tqdm.auto import tqdm

        return tqdm(total=total, desc="generate", unit="req")

    # ---- what happened ----
    @property
    def steps(self) -> list[StepRecord]:
        """Every step so far: which requests ran in it and how many tokens each (for timelines)."""
        return list(self.engine.steps)

    def stats(self) -> dict:
        return self.engine.stats()

    def kv_pages(self) -> dict:
        """Who holds which KV pages now: {"tables": {request_id: [page, ...]}, "holders": {page: count},
        "cached_free": pages no request holds that keep a cached prefix, "total": pages in the pool}."""
        blocks = self.engine.scheduler.blocks
        tables = {rid: list(pages) for rid, pages in blocks.tables.items()}
        holders = {page: count for page, count in enumerate(blocks.ref_count) if count}
        return {"tables": tables, "holders": holders, "cached_free": blocks.num_cached_free_pages,
                "total": blocks.num_pages}

    def reset_prefix_cache(self) -> None:
        """Forget the prefix cache's pages that no request holds (vLLM's name)."""
        self.engine.reset_prefix_cache()

    @property
    def max_model_len(self) -> int:
        return self.engine.max_model_len

    def close(self) -> None:
        self.engine.close()

    def __enter__(self) -> LLM:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _with_siblings(outputs: list[RequestOutput]) -> RequestOutput:
    """One output for an n > 1 request: the first sibling's fields, and every sibling in `outputs`."""
    completions = [CompletionOutput(i, o.text, o.token_ids, o.cumulative_logprob, o.logprobs, o.finish_reason,
                                    o.stop_reason) for i, o in enumerate(outputs)]
    return dataclasses.replace(outputs[0], siblings=completions)

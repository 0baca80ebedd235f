"""The one place the server touches the engine: submit a request, iterate its steps, abort it, read the
engine's state. Everything above this speaks `Step`s."""
from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import torch

from ..models import LoadedModel


@dataclass
class Step:
    new_token_ids: list[int]
    finished: bool = False
    finish_reason: str | None = None  # "stop" | "length" | "abort"
    timings: dict | None = field(default=None)  # queue_s, ttft_s, itl_s, e2e_s once finished


class EngineBridge:
    """Interim backend until the async engine lands: one request at a time through HF generate, in a
    worker thread, aborted through a stopping criterion."""

    def __init__(self, loaded: LoadedModel, max_num_seqs: int = 1, max_model_len: int | None = None):
        self.loaded = loaded
        self.max_num_seqs = max_num_seqs
        config_len = getattr(loaded.model.config, "max_position_embeddings", 2048)
        self.max_model_len = min(max_model_len or config_len, config_len)
        self._aborted: set[str] = set()
        self._lock = threading.Lock()
        self._running = 0
        self._waiting = 0

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass

    def problem(self) -> str | None:
        return None

    def num_running(self) -> int:
        return self._running

    def num_waiting(self) -> int:
        return self._waiting

    def kv_usage(self) -> float:
        return 0.0

    def abort(self, request_id: str) -> None:
        self._aborted.add(request_id)

    async def submit(self, request_id: str, prompt_ids: list[int], *, max_tokens: int, temperature: float,
                     top_p: float, top_k: int, seed: int | None, stop: tuple[str, ...] = (), ignore_eos: bool = False,
                     min_tokens: int = 0) -> AsyncIterator[Step]:
        loop = asyncio.get_running_loop()
        steps: asyncio.Queue[Step] = asyncio.Queue()
        self._waiting += 1

        def run():
            from transformers import StoppingCriteria, StoppingCriteriaList
            from transformers.generation.streamers import BaseStreamer

            bridge = self

            class Abort(StoppingCriteria):
                def __call__(self, input_ids, scores, **kwargs):
                    return request_id in bridge._aborted

            class Push(BaseStreamer):
                first = True

                def put(self, value):
                    if self.first:
                        self.first = False
                        return
                    loop.call_soon_threadsafe(steps.put_nowait, Step(value.flatten().tolist()))

                def end(self):
                    pass

            with self._lock:
                self._waiting -= 1
                self._running += 1
                try:
                    if request_id in self._aborted:
                        out_len = 0
                    else:
                        ids = torch.tensor([prompt_ids], device=self.loaded.device)
                        if seed is not None:
                            torch.manual_seed(seed)
                        sampling = dict(do_sample=True, temperature=temperature, top_p=top_p,
                                        top_k=top_k or None) if temperature > 0 else dict(do_sample=False)
                        with torch.inference_mode():
                            out = self.loaded.model.generate(
                                ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_tokens,
                                min_new_tokens=max_tokens if ignore_eos else min_tokens or None,
                                streamer=Push(), stopping_criteria=StoppingCriteriaList([Abort()]),
                                pad_token_id=self.loaded.tokenizer.pad_token_id, **sampling)
                        out_len = out.shape[1] - len(prompt_ids)
                        last = out[0, -1].item()
                finally:
                    self._running -= 1
            if request_id in self._aborted:
                reason = "abort"
            else:
                reason = "stop" if last == self.loaded.tokenizer.eos_token_id or out_len < max_tokens else "length"
            self._aborted.discard(request_id)
            loop.call_soon_threadsafe(steps.put_nowait, Step([], True, reason))

        threading.Thread(target=run, daemon=True).start()
        while True:
            step = await steps.get()
            yield step
            if step.finished:
                return

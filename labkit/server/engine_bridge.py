"""The one place the server touches the engine (`labkit.engine.AsyncLLM`): start and stop it, submit a
request and iterate its steps, abort it, read its queue lengths and KV-cache use."""
from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass

from ..engine import AsyncLLM, SamplingParams
from ..models import LoadedModel


@dataclass
class Step:
    new_token_ids: list[int]
    text: str  # the whole output text so far (cut before a stop string once finished)
    finished: bool = False
    finish_reason: str | None = None  # "stop" | "length" | "abort" | "error"
    error: str | None = None  # with "error": what failed
    num_cached_tokens: int = 0  # prompt tokens that came from the prefix cache (set once finished)


class EngineBridge:
    def __init__(self, loaded: LoadedModel, bus=None, **engine_options):
        self.engine = AsyncLLM(loaded, bus=bus, **engine_options)
        self.max_num_seqs = self.engine.max_num_seqs
        self.max_model_len = self.engine.max_model_len
        self._stopped = False

    async def start(self) -> None:
        self.engine.start()

    async def stop(self) -> None:
        """Abort what is left, stop the engine thread and give the model back its own attention."""
        if not self._stopped:
            self._stopped = True
            await asyncio.to_thread(self.engine.stop)
            self.engine.engine.close()

    def problem(self) -> str | None:
        error = self.engine.error
        return None if error is None else f"the engine thread failed: {type(error).__name__}: {error}"

    def num_running(self) -> int:
        return self.engine.num_running

    def num_waiting(self) -> int:
        return self.engine.num_waiting

    def kv_usage(self) -> float:
        return self.engine.kv_usage

    def abort(self, request_id: str) -> None:
        """Cancel now: the KV pages are free when this returns (it waits for at most the step in flight)."""
        self.engine.abort(request_id)

    async def abort_async(self, request_id: str) -> None:
        """`abort` without blocking the event loop."""
        await self.engine.abort_async(request_id)

    async def submit(self, request_id: str, prompt_ids: list[int], *, max_tokens: int, temperature: float,
                     top_p: float, top_k: int, seed: int | None, stop: tuple[str, ...] = (),
                     ignore_eos: bool = False, min_tokens: int = 0) -> AsyncIterator[Step]:
        params = SamplingParams(temperature=temperature, top_p=top_p, top_k=top_k, max_tokens=max_tokens,
                                min_tokens=min_tokens, stop=stop, ignore_eos=ignore_eos, seed=seed)
        async for out in self.engine.generate(prompt_ids, params, request_id=request_id):
            if not out.finished:
                yield Step(out.new_token_ids, out.text or "")
                continue
            yield Step(out.new_token_ids, out.text or "", True, out.finish_reason, out.error, out.num_cached_tokens)

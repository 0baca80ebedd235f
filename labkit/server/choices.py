"""Every choice of one completions or chat request: prompts x n engine requests, indexed prompt-major (choice
`prompt * n + sibling`, as OpenAI numbers a batched completion's choices).

A prompt's first choice starts at once; its siblings start when the engine has that prompt in its KV cache
(the first choice's first output), so they take the prompt's pages from the prefix cache instead of computing
them again (usage's `cached_tokens` counts them). Each choice streams from its own `GenerationJob`; `events()`
merges them as they come, `close()` ends them all.
"""
from __future__ import annotations

import asyncio
from dataclasses import dataclass

from ..engine import SamplingParams
from .errors import APIError


@dataclass
class Choice:
    index: int
    prompt_index: int
    prompt_ids: list[int]
    params: SamplingParams
    first: Choice | None = None  # the sibling whose prefill this one waits for (None: it starts at once)
    job: object = None  # its GenerationJob, once started
    text: str = ""


class ChoiceSet:
    def __init__(self, services, request_id: str, prompts: list[list[int]], params: list[SamplingParams]):
        self.services = services
        self.request_id = request_id
        self.prompts = prompts
        self.choices: list[Choice] = []
        for prompt_index, (ids, p) in enumerate(zip(prompts, params)):
            first = None
            for sibling in range(p.n):
                choice = Choice(len(self.choices), prompt_index, ids, p.child(sibling) if p.n > 1 else p, first)
                first = first or choice
                self.choices.append(choice)

    async def start(self) -> None:
        """Admit and submit each prompt's first choice (429 when the queue is full: nothing is left running)."""
        try:
            for choice in self.choices:
                if choice.first is None:
                    choice.job = self.services.start_job(self.request_id, choice.prompt_ids, choice.params)
        except APIError:
            await self.close()  # the ones already admitted leave the engine and the queue
            raise

    async def stream(self, choice: Choice):
        """The choice's text deltas; a sibling starts once its first sibling's prompt is in the cache."""
        if choice.job is None:
            await choice.first.job.prefilled.wait()
            choice.job = self.services.start_job(self.request_id, choice.prompt_ids, choice.params)
        async for delta in choice.job.stream():
            choice.text += delta
            yield delta

    async def events(self):
        """(choice, text delta) as any choice moves, then (choice, None) when it ends; the first error raises."""
        queue: asyncio.Queue = asyncio.Queue()

        async def pump(choice: Choice):
            try:
                async for delta in self.stream(choice):
                    await queue.put((choice, delta))
                await queue.put((choice, None))
            except BaseException as error:  # noqa: BLE001 (handed to the consumer, which raises it)
                await queue.put((choice, error))

        tasks = [asyncio.create_task(pump(choice)) for choice in self.choices]
        remaining = len(self.choices)
        try:
            while remaining:
                choice, item = await queue.get()
                if isinstance(item, BaseException):
                    raise item
                yield choice, item
                remaining -= item is None
        finally:
            for task in tasks:
                task.cancel()

    async def collect(self) -> None:
        async for _ in self.events():
            pass

    async def close(self) -> None:
        for choice in self.choices:
            if choice.job is not None:
                await choice.job.close()

    @property
    def finish_reason(self) -> str | None:
        return next((c.job.finish_reason for c in self.choices if c.job is not None), None)

    def usage(self) -> dict:
        """Prompt tokens once per prompt (siblings share it), completion tokens over every choice; a prompt's
        cached tokens are the most any of its choices took from the prefix cache (its siblings' hits)."""
        jobs = [c.job for c in self.choices if c.job is not None]
        prompt = sum(len(ids) for ids in self.prompts)
        completion = sum(job.completion_tokens for job in jobs)
        cached_per_prompt = {}
        for c in self.choices:
            if c.job is not None:
                cached_per_prompt[c.prompt_index] = max(cached_per_prompt.get(c.prompt_index, 0), c.job.cached_tokens)
        cached = sum(cached_per_prompt.values())
        return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
                "prompt_tokens_details": {"cached_tokens": cached}}

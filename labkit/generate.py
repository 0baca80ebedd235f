"""One prompt at a time on a warm engine, as `labkit generate` and notebook 01 use it.

Building an engine (its KV cache, its packed weights) and its first forward pass cost more than a short
prompt's prefill. `Generator` pays for them once and times them apart from any reply, so a reply's time to
first token is what a user of a running engine waits for: the prompt tokenised, prefilled, and its first
token sampled.

    generator = Generator(load_model("smollm2-135m-instruct"))
    reply = generator.stream("What is the capital of France?", chat=True, temperature=0)
    for piece in reply:
        print(piece, end="")
    reply.ttft_s, reply.decode_tokens_per_s
"""
from __future__ import annotations

import time
from collections.abc import Iterator

from .engine import LLM, SamplingParams
from .errors import UnsupportedModel
from .models import LoadedModel

# One prompt needs one sequence and a cache as long as the context it may use, not a server-sized one.
SINGLE_PROMPT_ENGINE = dict(max_num_seqs=1, kv_cache_tokens=4096)
# Two tokens: one prefill and one decode step, so both paths have run once before anything is timed.
WARM_UP = ("Hello", SamplingParams(temperature=0, max_tokens=2))


class Generator:
    """Streams replies from one engine, built once. `warm_up` runs one short untimed request first (the
    first forward pass pays one-off costs: allocations, kernel choices, on a GPU its libraries' start-up)
    and then empties the prefix cache, so no reply reuses what the warm-up computed. Engine settings
    override `SINGLE_PROMPT_ENGINE` as keywords (`Generator(model, kv_cache_tokens=8192)`)."""

    def __init__(self, model: LoadedModel, *, warm_up: bool = True, **engine_overrides):
        if model.kind != "causal-lm":
            raise UnsupportedModel(f"{model.name} is an {model.kind}; text generation needs a causal LM.")
        self.model = model
        started = time.perf_counter()
        self.llm = LLM(model, **{**SINGLE_PROMPT_ENGINE, **engine_overrides})
        self.build_seconds = time.perf_counter() - started
        self.warm_up_seconds = 0.0
        if warm_up:
            started = time.perf_counter()
            self.llm.generate(*WARM_UP, use_tqdm=False)
            self.llm.reset_prefix_cache()
            self.warm_up_seconds = time.perf_counter() - started

    @property
    def ready_seconds(self) -> float:
        """From a loaded model to an engine ready to answer: building it, plus the warm-up if there was one."""
        return self.build_seconds + self.warm_up_seconds

    def stream(self, prompt: str | list[dict], *, max_tokens: int = 128, temperature: float = 0.7,
               chat: bool = False, seed: int | None = None) -> Reply:
        """A reply to `prompt`: a string (a user message with `chat`, else text to continue) or a conversation
        (a list of {"role", "content"} messages). Greedy when `temperature` is 0. It runs as it is iterated;
        starting another reply ends this one."""
        if isinstance(prompt, str) and chat:
            prompt = [{"role": "user", "content": prompt}]
        return Reply(self.llm, prompt, SamplingParams(temperature=temperature, max_tokens=max_tokens, seed=seed))

    def close(self) -> None:
        self.llm.close()

    def __enter__(self) -> Generator:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class Reply:
    """Iterate for the text as it is produced; the numbers fill in as it streams. The clock starts at the
    first iteration, before the prompt is tokenised, and stops at the last token."""

    def __init__(self, llm: LLM, prompt, params: SamplingParams):
        self._llm, self._prompt, self._params = llm, prompt, params
        self._pieces = self._run()
        self.text = ""
        self.num_prompt_tokens = 0
        self.num_cached_tokens = 0  # prompt tokens whose KV came from the prefix cache (an earlier turn)
        self.num_tokens = 0
        self.finish_reason: str | None = None
        self.ttft_s: float | None = None  # first iteration -> first token
        self.duration_s: float | None = None  # first iteration -> last token

    def __iter__(self) -> Iterator[str]:
        return self._pieces

    @property
    def decode_tokens_per_s(self) -> float | None:
        """Tokens after the first over the time they took: the pace the reply streams at."""
        if self.duration_s is None or self.num_tokens < 2 or self.duration_s <= self.ttft_s:
            return None
        return (self.num_tokens - 1) / (self.duration_s - self.ttft_s)

    def _run(self) -> Iterator[str]:
        started = time.perf_counter()
        engine = self._llm.engine
        for request_id in list(engine.scheduler.requests):  # an earlier reply left unfinished ends here
            engine.abort(request_id)
        ids = self._llm.encode(self._prompt)
        self.num_prompt_tokens = len(ids)
        request = engine.add_request(ids, self._params, prompt=self._prompt, stream_text=True)
        try:
            while not request.status.is_finished:
                for output in engine.step():
                    if output.request_id != request.request_id:
                        continue
                    now = time.perf_counter()
                    if self.ttft_s is None and output.token_ids:
                        self.ttft_s = now - started
                        self.num_cached_tokens = output.num_cached_tokens or 0
                    piece, self.text = output.text[len(self.text):], output.text
                    self.num_tokens, self.duration_s = len(output.token_ids), now - started
                    self.finish_reason = output.finish_reason
                    if output.finish_reason == "error":  # this request's own failure (sampling, detokenising)
                        raise RuntimeError(f"generation failed: {output.error}")
                    if piece:
                        yield piece
        finally:
            engine.abort(request.request_id)  # a reply abandoned half-way frees its KV pages (no-op once done)


def stream_generate(loaded: LoadedModel, prompt: str, *, max_tokens: int = 128, temperature: float = 0.7,
                    chat: bool = False, seed: int | None = None) -> Iterator[tuple[str, int]]:
    """Yield (text piece, tokens so far) for one prompt on an engine built for it and closed after: its first
    token waits for the engine's construction. To time replies, or for more than one, use `Generator`."""
    with Generator(loaded, warm_up=False) as generator:
        reply = generator.stream(prompt, max_tokens=max_tokens, temperature=temperature, chat=chat, seed=seed)
        for piece in reply:
            yield piece, reply.num_tokens

"""Streaming generation of one prompt through the engine, as `labkit generate` and notebook 01 use it."""
from __future__ import annotations

from collections.abc import Iterator

from .engine import LLM, SamplingParams
from .models import LoadedModel

# One prompt needs one sequence and a cache as long as the context it may use, not a server-sized one.
SINGLE_PROMPT_ENGINE = dict(max_num_seqs=1, kv_cache_tokens=4096)


def stream_generate(loaded: LoadedModel, prompt: str, *, max_tokens: int = 128, temperature: float = 0.7,
                    chat: bool = False, seed: int | None = None) -> Iterator[tuple[str, int]]:
    """Yield (text piece, tokens so far) as the engine produces them. Greedy when `temperature` is 0."""
    if loaded.kind != "causal-lm":
        raise TypeError(f"{loaded.name} is an {loaded.kind}; text generation needs a causal LM.")
    llm = LLM(loaded, **SINGLE_PROMPT_ENGINE)
    try:
        ids = llm.encode([{"role": "user", "content": prompt}] if chat else prompt)
        params = SamplingParams(temperature=temperature, max_tokens=max_tokens, seed=seed)
        engine = llm.engine
        engine.add_request(ids, params, prompt=prompt, stream_text=True)
        shown = ""
        while engine.has_unfinished_requests():
            for output in engine.step():
                piece, shown = output.text[len(shown):], output.text
                if piece:
                    yield piece, len(output.token_ids)
    finally:
        llm.close()

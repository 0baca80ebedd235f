"""Streaming generation for one prompt, as the `labkit generate` command uses it."""
from __future__ import annotations

from collections.abc import Iterator
from threading import Thread

import torch

from .models import LoadedModel


def stream_generate(loaded: LoadedModel, prompt: str, *, max_tokens: int = 128, temperature: float = 0.7,
                    chat: bool = False, seed: int | None = None) -> Iterator[tuple[str, int]]:
    """Yield (text piece, tokens so far) as the model produces them. Greedy when `temperature` is 0."""
    if loaded.kind != "causal-lm":
        raise TypeError(f"{loaded.name} is an {loaded.kind}; text generation needs a causal LM.")
    tokenizer = loaded.tokenizer
    if chat:
        inputs = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                               return_tensors="pt", return_dict=True)
    else:
        inputs = tokenizer(prompt, return_tensors="pt")
    inputs = {k: v.to(loaded.device) for k, v in inputs.items()}
    streamer = _counting_streamer_class()(tokenizer, skip_prompt=True, skip_special_tokens=True)
    sampling = dict(do_sample=True, temperature=temperature) if temperature > 0 else dict(do_sample=False)
    if seed is not None:
        torch.manual_seed(seed)
    worker = Thread(target=_generate, daemon=True, kwargs=dict(
        model=loaded.model, streamer=streamer, max_new_tokens=max_tokens, min_new_tokens=None,
        pad_token_id=tokenizer.pad_token_id, top_p=None, top_k=None, **sampling, **inputs))
    worker.start()
    for piece in streamer:
        yield piece, streamer.generated
    worker.join()


def _counting_streamer_class():
    from transformers import TextIteratorStreamer

    class CountingStreamer(TextIteratorStreamer):
        """Text pieces arrive at word boundaries; the token count is kept beside them."""

        generated = 0

        def put(self, value):
            if not (self.skip_prompt and self.next_tokens_are_prompt):
                self.generated += value.numel()
            super().put(value)

    return CountingStreamer


@torch.inference_mode()
def _generate(model, **kwargs) -> None:
    model.generate(**kwargs)

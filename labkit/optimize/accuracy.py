"""Accuracy is measured, not assumed: perplexity on a fixed public-domain text, agreement of greedy
tokens with a reference model on fixed prompts, and cosine similarity of encoder embeddings."""
from __future__ import annotations

import math
from importlib import resources

import torch

from ..models.loaded import LoadedModel
from .decode import encode_batch, greedy

PROMPTS = (
    "The capital of France is",
    "Water boils at a temperature of",
    "def fibonacci(n):",
    "The three primary colours are",
    "Once upon a time, in a small village,",
    "To make a cup of tea, first",
    "The largest planet in the solar system is",
    "Photosynthesis is the process by which",
)

SENTENCES = (
    "A man is playing a guitar.",
    "The new movie is awesome.",
    "The cat sits outside on the mat.",
    "Inference servers batch requests to use the accelerator well.",
    "Quantization stores weights with fewer bits.",
    "I love pasta with tomato sauce.",
    "The stock market fell sharply today.",
    "Two dogs are running through a field.",
)


def reference_text() -> str:
    """Chapter 1 of Pride and Prejudice (Jane Austen, 1813; public domain), shipped with labkit."""
    return resources.files(__package__).joinpath("data/pride_and_prejudice_ch1.txt").read_text(encoding="utf-8")


@torch.inference_mode()
def perplexity(loaded: LoadedModel, *, window: int = 256, max_tokens: int = 1024) -> float:
    """exp(mean negative log-likelihood) over non-overlapping windows of the reference text, scored as
    one batch. Windows start without context, so absolute values are higher than with a sliding window;
    comparing variants on the same windows is the point."""
    if loaded.kind != "causal-lm":
        raise TypeError(f"perplexity needs a causal LM; {loaded.name} is an {loaded.kind} (use embedding_cosine)")
    ids = loaded.tokenizer(reference_text(), return_tensors="pt")["input_ids"][0][:max_tokens]
    count = len(ids) // window
    if count == 0:
        raise ValueError(f"the reference text has {len(ids)} tokens, fewer than one window of {window}")
    batch = ids[: count * window].view(count, window).to(loaded.device)
    mask = torch.ones_like(batch)
    positions = torch.arange(window, device=batch.device).expand(count, window)
    logits = loaded.model(input_ids=batch, attention_mask=mask, position_ids=positions, use_cache=False).logits
    logits = torch.as_tensor(logits).float()[:, :-1]
    nll = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1))
    return math.exp(nll.item())


def greedy_tokens(loaded: LoadedModel, *, new_tokens: int = 16, prompts: tuple[str, ...] = PROMPTS) -> torch.Tensor:
    ids, mask = encode_batch(loaded.tokenizer, list(prompts))
    return greedy(loaded.model, ids.to(loaded.device), mask.to(loaded.device), new_tokens).cpu()


def greedy_agreement(reference: torch.Tensor, candidate: torch.Tensor) -> float:
    """Mean fraction of each row's tokens that match before the first divergence: once two greedy
    continuations differ they condition on different text, so later matches mean little."""
    same = (reference == candidate).long()
    common_prefix = same.cumprod(dim=1).sum(dim=1).float()
    return (common_prefix / reference.shape[1]).mean().item()


def embedding_cosine(reference: LoadedModel, candidate: LoadedModel, sentences: tuple[str, ...] = SENTENCES) -> float:
    """Mean cosine similarity between the two models' normalised sentence embeddings."""
    a = reference.embed(list(sentences))
    b = candidate.embed(list(sentences))
    return (a * b).sum(dim=-1).mean().item()

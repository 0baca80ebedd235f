"""Accuracy is measured, not assumed: perplexity on a fixed public-domain text, agreement of greedy
tokens with a reference model on fixed prompts, agreement of next tokens position by position on the text,
and cosine similarity of encoder embeddings."""
from __future__ import annotations

import math
from dataclasses import dataclass
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


def perplexity(loaded: LoadedModel, *, window: int = 256, max_tokens: int = 1024) -> float:
    """exp(mean negative log-likelihood) over non-overlapping windows of the reference text, scored as
    one batch. Windows start without context, so absolute values are higher than with a sliding window;
    comparing variants on the same windows is the point."""
    batch, logits = _window_logits(loaded, window, max_tokens)
    nll = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1))
    return math.exp(nll.item())


@dataclass(frozen=True)
class NextTokenAgreement:
    """How often a candidate's most likely next token is the reference's, at every position of the reference
    text. Each position sees the true text before it, so one difference does not carry on as it does in a
    greedy continuation. The margins (the reference's top logit minus its second) say whether the candidate
    differs where the reference itself hesitated (small margin) or where it was sure (large margin)."""
    share: float
    margin_where_different: float | None  # median; None when they never differ
    margin_overall: float  # median over every position


def next_token_agreement(reference: LoadedModel, candidate: LoadedModel, *, window: int = 256,
                         max_tokens: int = 1024) -> NextTokenAgreement:
    _, expected = _window_logits(reference, window, max_tokens)
    _, got = _window_logits(candidate, window, max_tokens)
    top_two = expected.topk(2, dim=-1).values
    margins = top_two[..., 0] - top_two[..., 1]
    different = got.argmax(-1).to(expected.device) != expected.argmax(-1)  # the two may sit on different devices
    return NextTokenAgreement(share=1 - different.float().mean().item(),
                              margin_where_different=margins[different].median().item() if different.any() else None,
                              margin_overall=margins.median().item())


@torch.inference_mode()
def _window_logits(loaded: LoadedModel, window: int, max_tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The reference text's first `max_tokens` tokens as windows of `window` (one batch), and the model's
    float logits for every position but each window's last."""
    if loaded.kind != "causal-lm":
        raise TypeError(f"scoring text needs a causal LM; {loaded.name} is an {loaded.kind} (use embedding_cosine)")
    ids = loaded.tokenizer(reference_text(), return_tensors="pt")["input_ids"][0][:max_tokens]
    count = len(ids) // window
    if count == 0:
        raise ValueError(f"the reference text has {len(ids)} tokens, fewer than one window of {window}")
    batch = ids[: count * window].view(count, window).to(loaded.device)
    mask = torch.ones_like(batch)
    positions = torch.arange(window, device=batch.device).expand(count, window)
    logits = loaded.model(input_ids=batch, attention_mask=mask, position_ids=positions, use_cache=False).logits
    return batch, torch.as_tensor(logits).float()[:, :-1]


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

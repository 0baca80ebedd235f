"""top_k_top_p.draw against a reference that sorts the whole vocabulary: the same kept tokens, each drawn with
its renormalized probability (checked on a grid of uniforms), for peaked rows settled by the first candidates,
flat rows that need the whole vocabulary, top-k beyond the first candidates, banned tokens and empty rows."""
from __future__ import annotations

import pytest
import torch

from labkit.engine import cpu_kernels
from labkit.engine.top_k_top_p import CANDIDATES, draw

pytestmark = pytest.mark.unit
# Each test runs the torch path and, where labkit's CPU kernels run, the kernel with the torch path behind it.
PATHS = [pytest.param(False, id="torch"),
         pytest.param(True, id="kernel", marks=pytest.mark.skipif(cpu_kernels.unavailable_reason() is not None,
                                                                  reason="no labkit CPU kernels here"))]

VOCAB = 5000  # past every candidate count, so the last try is the whole vocabulary
assert CANDIDATES[-1] < VOCAB
GRID = 4000


def reference_probs(logits: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    """The kept tokens' renormalized probabilities, by a full sort (zero for every other token)."""
    logits = logits.clone()
    if top_k > 0:
        kth = logits.topk(top_k).values[-1]
        logits[logits < kth] = float("-inf")
    probs = logits.softmax(-1)
    ordered, order = probs.sort(descending=True)
    drop = (ordered.cumsum(-1) - ordered) >= top_p
    drop[0] = False
    probs[order[drop]] = 0
    return probs / probs.sum()


def grid_frequencies(logits: torch.Tensor, top_k: int, top_p: float, kernels: bool = False) -> torch.Tensor:
    uniforms = (torch.arange(GRID, dtype=torch.float32) + 0.5) / GRID
    tokens, usable = draw(logits.expand(GRID, -1).contiguous(), torch.full((GRID,), top_k),
                          torch.full((GRID,), top_p), uniforms, kernels=kernels)
    assert bool(usable.all())
    return torch.bincount(tokens, minlength=logits.shape[0]).float() / GRID


def peaked(seed: int) -> torch.Tensor:
    return torch.randn(VOCAB, generator=torch.Generator().manual_seed(seed)) * 4


def flat(seed: int) -> torch.Tensor:
    return torch.randn(VOCAB, generator=torch.Generator().manual_seed(seed)) * 0.1


@pytest.mark.parametrize("logits,top_k,top_p", [
    (peaked(0), 0, 0.9),          # settled by the first candidates
    (peaked(1), 0, 0.5),
    (peaked(2), 40, 1.0),         # top-k alone
    (peaked(3), 40, 0.8),         # top-k, then top-p of what it kept
    (flat(4), 0, 0.9),            # needs most of the vocabulary: the last try sorts it all
    (flat(5), 1000, 1.0),         # top-k past the first candidate count
    (flat(6), 3000, 0.7),
    (peaked(7), 0, 1e-9),         # only the likeliest survives
    (peaked(12), 0, 1.0),         # no truncation: the whole vocabulary
    (peaked(13), VOCAB, 0.9),     # a top-k of the whole vocabulary is no top-k
])
@pytest.mark.parametrize("kernels", PATHS)
def test_draws_follow_the_reference_distribution(logits, top_k, top_p, kernels):
    want = reference_probs(logits, top_k, top_p)
    got = grid_frequencies(logits, top_k, top_p, kernels)
    assert set(got.nonzero().flatten().tolist()) <= set(want.nonzero().flatten().tolist())
    assert float((got - want).abs().max()) <= 2 / GRID
    likely = want > 3 / GRID
    assert bool((got[likely] > 0).all())


@pytest.mark.parametrize("kernels", PATHS)
def test_banned_tokens_are_never_drawn_and_empty_rows_are_flagged(kernels):
    logits = peaked(8)
    logits[logits.topk(3).indices] = float("-inf")  # the three likeliest are banned (a grammar, min_tokens)
    want = reference_probs(logits, 0, 0.95)
    got = grid_frequencies(logits, 0, 0.95, kernels)
    assert float((got - want).abs().max()) <= 2 / GRID
    empty = torch.full((2, VOCAB), float("-inf"))
    _, usable = draw(empty, torch.tensor([0, 5]), torch.tensor([0.9, 1.0]), torch.tensor([0.3, 0.3]), kernels=kernels)
    assert not bool(usable.any())


@pytest.mark.parametrize("kernels", PATHS)
def test_rows_mix_settings_and_plain_rows_sample_the_whole_vocabulary(kernels):
    rows = torch.stack([peaked(9), flat(10), peaked(11)])
    top_k, top_p = torch.tensor([0, 0, 5]), torch.tensor([1.0, 0.9, 1.0])
    tokens, usable = draw(rows, top_k, top_p, torch.tensor([0.999, 0.5, 0.999]), kernels=kernels)
    assert bool(usable.all())
    # uniform 0.999 on an untruncated row lands deep in vocabulary order, past the likeliest tokens
    assert reference_probs(rows[0], 0, 1.0)[tokens[0]] > 0
    assert tokens[2] in rows[2].topk(5).indices.tolist()
    assert tokens[1] in reference_probs(rows[1], 0, 0.9).nonzero().flatten().tolist()



def test_the_kernel_settles_peaked_rows_itself_and_leaves_flat_ones_and_nan_to_the_exact_path():
    if cpu_kernels.unavailable_reason() is not None:
        pytest.skip("no labkit CPU kernels here")
    rows = torch.stack([peaked(14), flat(15), peaked(16), peaked(17)])
    rows[2, 7] = float("nan")
    _, settled = cpu_kernels.top_p_draw(rows, torch.tensor([0, 0, 0, 3000]), torch.tensor([0.9, 0.9, 0.9, 1.0]),
                                        torch.full((4,), 0.5))
    assert settled.tolist() == [True, False, False, False]  # flat: too many likely tokens; NaN; a top-k past them

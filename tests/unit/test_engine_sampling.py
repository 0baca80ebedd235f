"""SamplingParams checks and the batched sampler: greedy, top-k, top-p, min_tokens, seeds."""
from __future__ import annotations

import pytest
import torch

from labkit.engine import Request, SamplingParams
from labkit.engine.sampler import Sampler

pytestmark = pytest.mark.unit


def req(params: SamplingParams, name: str = "r", eos: int = 2) -> Request:
    return Request(name, [1], params, eos_token_ids=frozenset({eos}), max_model_len=100)


@pytest.mark.parametrize("bad", [dict(temperature=-1), dict(temperature=float("nan")), dict(temperature=float("inf")),
                                 dict(top_p=0), dict(top_p=1.5), dict(top_p=float("nan")), dict(top_k=-2),
                                 dict(top_k=10**20), dict(max_tokens=0), dict(max_tokens=2**63),
                                 dict(min_tokens=5, max_tokens=4), dict(seed=2**64), dict(stop_token_ids=[-1])])
def test_sampling_params_refuse_bad_values(bad):
    with pytest.raises(ValueError):
        SamplingParams(**bad)


def test_top_k_minus_one_means_off_and_a_top_k_past_the_vocabulary_keeps_all():
    assert SamplingParams(top_k=-1).top_k == 0
    logits = torch.tensor([[0.0, 1.0, 2.0]])
    seen = {Sampler(seed)(logits, [req(SamplingParams(temperature=1.0, top_k=2**63 - 1))])[0] for seed in range(40)}
    assert seen == {0, 1, 2}


def test_sampling_params_normalise_stops():
    params = SamplingParams(stop="###", stop_token_ids=[5, 6])
    assert params.stop == ("###",) and params.stop_token_ids == (5, 6)
    assert SamplingParams(temperature=0).greedy and not SamplingParams().greedy


def test_greedy_takes_the_argmax_of_each_row():
    logits = torch.tensor([[0.1, 3.0, 0.2], [5.0, 0.0, 1.0]])
    assert Sampler()(logits, [req(SamplingParams(temperature=0))] * 2) == [1, 0]


def test_top_k_1_and_tiny_top_p_are_greedy():
    torch.manual_seed(0)
    logits = torch.randn(4, 1000)
    requests = [req(SamplingParams(temperature=1.0, top_k=1)), req(SamplingParams(temperature=2.0, top_p=1e-6)),
                req(SamplingParams(temperature=0)), req(SamplingParams(temperature=1.0, top_k=1, top_p=0.5))]
    assert Sampler()(logits.clone(), requests) == logits.argmax(-1).tolist()


def test_top_k_keeps_sampling_inside_the_k_best():
    logits = torch.arange(50, dtype=torch.float32).repeat(200, 1)  # token 49 best, then 48, 47, ...
    tokens = Sampler(seed=1)(logits, [req(SamplingParams(temperature=5.0, top_k=3))] * 200)
    assert set(tokens) == {47, 48, 49}


def test_top_p_keeps_the_nucleus():
    probs = torch.tensor([0.5, 0.3, 0.15, 0.05])
    logits = probs.log().repeat(400, 1)
    tokens = Sampler(seed=2)(logits, [req(SamplingParams(temperature=1.0, top_p=0.75))] * 400)
    assert set(tokens) == {0, 1}  # 0.5 + 0.3 reaches 0.75; 2 and 3 are cut
    assert 0.5 < tokens.count(0) / 400 < 0.75  # renormalised: 0.5 / 0.8 = 0.625


def test_sampled_frequencies_follow_the_softmax_and_skip_impossible_tokens():
    probs = torch.tensor([0.1, 0.0, 0.6, 0.0, 0.3])  # zero-probability tokens sit between likely ones
    logits = probs.log().repeat(4000, 1)  # log(0) = -inf: masked, as top-k/top-p/min_tokens leave them
    tokens = Sampler(seed=3)(logits, [req(SamplingParams(temperature=1.0))] * 4000)
    assert tokens.count(1) == tokens.count(3) == 0
    for token, p in ((0, 0.1), (2, 0.6), (4, 0.3)):  # 4000 draws: a standard deviation is under 0.008
        assert abs(tokens.count(token) / 4000 - p) < 0.03


def test_degenerate_rows_still_give_a_token_of_the_vocabulary():
    torch.manual_seed(0)
    logits = torch.randn(3, 1000)
    logits[2] = float("nan")  # a broken model output must not crash the engine with an id past the vocabulary
    requests = [req(SamplingParams(temperature=1.0, top_p=1e-228)),  # rounds to 0 in float32: keeps the best token
                req(SamplingParams(temperature=1.0, top_k=205, top_p=1e-228)),
                req(SamplingParams(temperature=1.0))]
    tokens = Sampler(seed=4)(logits.clone(), requests)
    assert tokens[:2] == logits[:2].argmax(-1).tolist()
    assert 0 <= tokens[2] < 1000


def test_min_tokens_masks_eos_and_stop_ids():
    logits = torch.tensor([[0.0, 0.0, 9.0, 8.0, 1.0]])  # EOS (2) then stop id 3 are the best
    params = SamplingParams(temperature=0, min_tokens=2, max_tokens=4, stop_token_ids=[3])
    assert Sampler()(logits.clone(), [req(params)]) == [4]
    done = req(params)
    done.output_token_ids = [4, 4]
    assert Sampler()(logits.clone(), [done]) == [2]


def test_seeded_sampling_is_reproducible_whatever_the_batch():
    torch.manual_seed(0)
    logits = torch.randn(3, 500)
    seeded = SamplingParams(temperature=1.0, seed=42)
    alone_request = req(seeded)
    alone = [Sampler(0)(logits[:1].clone(), [alone_request])[0] for _ in range(20)]
    batched_request = req(seeded)
    others = [req(SamplingParams(temperature=1.0)), req(SamplingParams(temperature=0.5, seed=7))]
    batched = [Sampler(99)(logits.clone(), [batched_request, *others])[0] for _ in range(20)]
    assert alone == batched
    assert len(set(alone)) > 5  # it really samples


def test_greedy_choice_is_argmax_with_ties_and_nan():
    from labkit.engine.sampler import _argmax

    rows = torch.tensor([[1.0, 3.0, 3.0, 0.0], [float("nan"), 5.0, float("nan"), 1.0], [2.0, 2.0, 2.0, 2.0]],
                        dtype=torch.bfloat16)
    assert _argmax(rows) == rows.argmax(dim=-1).tolist() == [1, 0, 0]


def test_an_unseeded_engine_draws_fresh_randomness_and_an_engine_seed_repeats():
    logits = torch.zeros(1, 1000)  # uniform over 1,000 tokens: eight draws repeat by chance once in 1e24

    def draw(sampler):
        return sampler(logits.expand(8, -1), [req(SamplingParams(temperature=1.0))] * 8)

    assert draw(Sampler()) != draw(Sampler())  # a restarted server does not replay its "random" replies
    assert draw(Sampler(seed=5)) == draw(Sampler(seed=5))

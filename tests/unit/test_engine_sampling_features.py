"""The sampler's vLLM features against reference implementations written plainly, row by row: penalties,
logit_bias, min_p, log-probabilities (log_softmax of the raw logits), seeds over the int64 range, siblings."""
from __future__ import annotations

import math

import pytest
import torch

from labkit.engine import Request, SamplingParams
from labkit.engine.logits_processors import apply_penalties
from labkit.engine.sampler import Sampler

pytestmark = pytest.mark.unit
VOCAB = 12


def req(params: SamplingParams, prompt=(1,), output=(), name: str = "r") -> Request:
    request = Request(name, list(prompt), params, eos_token_ids=frozenset({2}), max_model_len=100)
    for token in output:
        request.append_token(token, 0.0)
    return request


def reference_penalties(logits: list[float], prompt: list[int], output: list[int], presence: float,
                        frequency: float, repetition: float) -> list[float]:
    """vLLM's semantics, one token at a time."""
    out = []
    for token, logit in enumerate(logits):
        if token in prompt or token in output:
            logit = logit / repetition if logit > 0 else logit * repetition
        logit -= frequency * output.count(token)
        logit -= presence * (token in output)
        out.append(logit)
    return out


def test_penalties_match_the_reference_row_by_row():
    torch.manual_seed(0)
    logits = torch.randn(3, VOCAB) * 3
    prompts = [[1, 4, 4], [0], [5, 6, 7, 8]]
    outputs = [[3, 3, 3, 9], [], [5, 11, 11]]
    settings = [(0.5, 0.3, 1.3), (1.0, -0.4, 0.7), (-1.5, 2.0, 1.0)]
    got = apply_penalties(logits.clone(), prompts, outputs, torch.tensor([s[0] for s in settings]),
                          torch.tensor([s[1] for s in settings]), torch.tensor([s[2] for s in settings]))
    for row, (presence, frequency, repetition) in enumerate(settings):
        want = reference_penalties(logits[row].tolist(), prompts[row], outputs[row], presence, frequency, repetition)
        assert got[row].tolist() == pytest.approx(want, abs=1e-6)


def test_sampler_applies_penalties_only_to_the_rows_that_ask():
    logits = torch.zeros(2, VOCAB)
    logits[:, 3] = 1.0  # token 3 is the argmax, and already in both outputs
    logits[:, 7] = 0.9
    penalized = req(SamplingParams(temperature=0, frequency_penalty=0.5), output=[3])
    plain = req(SamplingParams(temperature=0), output=[3])
    assert Sampler()(logits, [penalized, plain]) == [7, 3]
    assert logits[0, 3] == 1.0  # the caller's logits are left as they were


def test_logit_bias_adds_to_the_named_tokens_and_greedy_follows_it():
    logits = torch.zeros(2, VOCAB)
    logits[:, 0] = 5.0
    biased = req(SamplingParams(temperature=0, logit_bias={9: 6.0, 0: -1.0}))
    assert Sampler()(logits, [biased, req(SamplingParams(temperature=0))]) == [9, 0]
    sampled = [Sampler(seed)(logits[:1], [req(SamplingParams(temperature=1.0, logit_bias={4: 100.0}))])[0]
               for seed in range(20)]
    assert set(sampled) == {4}


def test_min_p_never_draws_a_token_below_its_share_of_the_likeliest():
    probs = torch.tensor([0.5, 0.3, 0.12, 0.08])  # min_p 0.2: threshold 0.1 keeps tokens 0, 1 and 2
    logits = probs.log().repeat(600, 1)
    requests = [req(SamplingParams(temperature=1.0, min_p=0.2, seed=i)) for i in range(600)]
    drawn = Sampler()(logits, requests)
    assert set(drawn) == {0, 1, 2}


def test_logprobs_are_log_softmax_of_the_raw_logits_with_ranks_and_top_k():
    torch.manual_seed(1)
    logits = torch.randn(3, VOCAB)
    requests = [req(SamplingParams(temperature=0, logprobs=3, repetition_penalty=1.5), output=[5]),
                req(SamplingParams(temperature=0)),
                req(SamplingParams(temperature=0.8, seed=-7, logprobs=0))]
    out = Sampler().sample(logits, requests)
    assert out.logprobs[1] is None
    reference = logits.log_softmax(-1)  # before the penalty and the temperature (vLLM's raw_logprobs)
    for row in (0, 2):
        entry = out.logprobs[row]
        token = out.token_ids[row]
        assert next(iter(entry)) == token  # the sampled token first
        assert entry[token].logprob == pytest.approx(reference[row, token].item(), abs=1e-6)
        assert entry[token].rank == 1 + int((reference[row] > reference[row, token]).sum())
    top = sorted(range(VOCAB), key=lambda t: -reference[0, t].item())[:3]
    assert set(out.logprobs[0]) == {out.token_ids[0], *top}
    assert all(out.logprobs[0][t].rank == i + 1 for i, t in enumerate(top))
    assert len(out.logprobs[2]) == 1


def test_seeds_cover_the_int64_range_and_siblings_get_their_own():
    logits = torch.zeros(1, 1000)

    def draws(seed):
        return [Sampler()(logits, [req(SamplingParams(temperature=1.0, seed=seed))])[0] for _ in range(3)]

    for seed in (-2**63, -1, 0, 2**63 - 1):
        assert draws(seed) == draws(seed)
    assert draws(-1) != draws(1)
    params = SamplingParams(n=3, seed=2**64 - 1, temperature=1.0)
    assert [params.child(i).seed for i in range(3)] == [2**64 - 1, 0, 1]
    assert all(params.child(i).n == 1 for i in range(3))


@pytest.mark.parametrize("bad", [dict(min_p=1.5), dict(presence_penalty=3), dict(repetition_penalty=0),
                                 dict(repetition_penalty=1e-137), dict(repetition_penalty=1000),
                                 dict(logit_bias={-1: 1.0}), dict(logit_bias={1: math.inf}), dict(logprobs=21),
                                 dict(prompt_logprobs=-1), dict(n=0), dict(seed=-2**63 - 1)])
def test_sampling_params_refuse_bad_feature_values(bad):
    with pytest.raises(ValueError):
        SamplingParams(**bad)

"""How a request body becomes SamplingParams: generation_config.json's defaults for fields left out (as vLLM),
the request's own values otherwise, and 400s naming what cannot be honoured."""
from __future__ import annotations

import pytest
from transformers import GenerationConfig

from labkit.server.errors import APIError
from labkit.server.generation import generation_defaults, sampling_params
from labkit.server.schemas import ChatCompletionRequest, CompletionRequest

pytestmark = pytest.mark.unit


class ModelWithGenerationConfig:
    """What the server reads from a model: its transformers GenerationConfig (as loaded from the json file)."""

    def __init__(self, **values):
        self.generation_config = GenerationConfig(**values)


def test_fields_left_out_take_the_generation_config_defaults():
    defaults = generation_defaults(ModelWithGenerationConfig(temperature=0.3, top_p=0.8, top_k=20,
                                                             repetition_penalty=1.1, max_new_tokens=12))
    assert defaults == {"temperature": 0.3, "top_p": 0.8, "top_k": 20, "repetition_penalty": 1.1, "max_tokens": 12}
    params = sampling_params(CompletionRequest(prompt="hi"), 5, 100, defaults)
    assert (params.temperature, params.top_p, params.top_k, params.repetition_penalty, params.max_tokens) == \
        (0.3, 0.8, 20, 1.1, 12)
    mine = sampling_params(CompletionRequest(prompt="hi", temperature=0, top_k=-1, max_tokens=3), 5, 100, defaults)
    assert (mine.temperature, mine.top_k, mine.max_tokens, mine.top_p) == (0, 0, 3, 0.8)


def test_transformers_own_defaults_are_not_the_models_choice():
    assert generation_defaults(ModelWithGenerationConfig()) == {}  # not top_k 50: the json file did not say so
    params = sampling_params(CompletionRequest(prompt="hi"), 5, 100, {})
    assert (params.temperature, params.top_k, params.repetition_penalty) == (1.0, 0, 1.0)


def test_request_fields_reach_the_engine_under_vllms_names():
    body = CompletionRequest(prompt="hi", n=2, best_of=2, seed=-5, logprobs=3, echo=True, min_p=0.1,
                             presence_penalty=0.5, frequency_penalty=-0.5, logit_bias={"7": -3},
                             stop_token_ids=[9])
    params = sampling_params(body, 5, 100, vocab_size=50)
    assert (params.n, params.seed, params.logprobs, params.prompt_logprobs, params.min_p) == (2, -5, 3, 3, 0.1)
    assert dict(params.logit_bias) == {7: -3.0} and params.stop_token_ids == (9,)
    chat = ChatCompletionRequest(messages=[{"role": "user", "content": "hi"}], logprobs=True, top_logprobs=4)
    assert sampling_params(chat, 5, 100).logprobs == 4
    assert sampling_params(chat.model_copy(update={"logprobs": False, "top_logprobs": None}), 5, 100).logprobs is None


@pytest.mark.parametrize("fields,param", [(dict(best_of=3, n=2), "best_of"), (dict(suffix="x"), "suffix"),
                                          (dict(logit_bias={"x": 1}), "logit_bias"),
                                          (dict(logit_bias={"50": 1}), "logit_bias"),
                                          (dict(stop_token_ids=[50]), "stop_token_ids")])
def test_what_cannot_be_honoured_is_a_400_naming_the_field(fields, param):
    with pytest.raises(APIError) as err:
        sampling_params(CompletionRequest(prompt="hi", **fields), 5, 100, vocab_size=50)
    assert err.value.status == 400 and err.value.param == param

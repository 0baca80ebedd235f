"""lm-eval-harness (its `local-completions` model) against labkit's server, on a four-question task with local
data (tests/data/lm_eval): every log-likelihood it gets through the server (echo + logprobs) equals the one the
engine computes itself from its prompt log-probabilities, within 1e-3."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

import labkit
from labkit.engine import LLM, SamplingParams

pytestmark = pytest.mark.integration
lm_eval = pytest.importorskip("lm_eval", reason="lm-eval is in the dev extra")
TASK_DIR = Path(__file__).parents[1] / "data" / "lm_eval"
MODEL = "smollm2-135m-instruct"


def tiny_task() -> dict:
    config = yaml.safe_load((TASK_DIR / "labkit_tiny.yaml").read_text())
    files = config["dataset_kwargs"]["data_files"]
    files["test"] = str(TASK_DIR / files["test"])  # datasets reads it relative to the working directory
    return config


def test_lm_eval_loglikelihoods_through_the_server_equal_the_engines(default_llm_fp32, default_llm_dir, monkeypatch):
    from lm_eval import simple_evaluate
    from lm_eval.models.openai_completions import LocalCompletionsAPI

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with labkit.serve(default_llm_fp32, encoder=None) as server:
        lm = LocalCompletionsAPI(base_url=server.url + "/v1/completions", model=MODEL, tokenizer=default_llm_dir,
                                 tokenizer_backend="huggingface", num_concurrent=1, max_retries=1)
        results = simple_evaluate(model=lm, tasks=[tiny_task()], log_samples=True, random_seed=0,
                                  numpy_random_seed=0, torch_random_seed=0, fewshot_random_seed=0)
    samples = results["samples"]["labkit_tiny"]
    assert len(samples) == 4 and 0 <= results["results"]["labkit_tiny"]["acc,none"] <= 1
    tokenizer = default_llm_fp32.tokenizer
    pairs, served = [], []
    for sample in samples:
        for (context, continuation), response in zip(sample["arguments"], sample["resps"]):
            pairs.append((tokenizer(context)["input_ids"], tokenizer(continuation)["input_ids"]))
            served.append(response[0][0])
    with LLM(default_llm_fp32) as llm:  # the engine's own numbers: prompt log-probabilities of context + continuation
        outputs = llm.generate([c + k for c, k in pairs], SamplingParams(temperature=0, max_tokens=1, prompt_logprobs=0))
    for (context, continuation), out, got in zip(pairs, outputs, served):
        want = sum(entry[token].logprob for entry, token in
                   zip(out.prompt_logprobs[len(context):], out.prompt_token_ids[len(context):]))
        assert got == pytest.approx(want, abs=1e-3)

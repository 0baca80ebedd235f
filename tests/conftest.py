"""Shared fixtures. One real model per test session, loaded once; tiny random models built once."""
from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never reach a model hub

from factories import TINY_ARCHITECTURES, build_tiny_model  # noqa: E402



def pytest_collection_modifyitems(items):
    for item in items:
        if item.get_closest_marker("gpu") and not torch.cuda.is_available():
            item.add_marker(pytest.mark.skip(reason="gpu test: no CUDA device here"))


@pytest.fixture(scope="session")
def default_llm_dir() -> str:
    """The converted default LLM directory (converted into the cache on first use)."""
    from labkit.models import ALIASES, DEFAULT_LLM, resolve_alias

    return str(resolve_alias(ALIASES[DEFAULT_LLM], progress=False))


@pytest.fixture(scope="session")
def default_llm_fp32():
    """The default LLM in float32, shared by every test that needs the real model."""
    from labkit import load_model

    return load_model("smollm2-135m-instruct", device="cpu", dtype="float32", progress=False)


@pytest.fixture(scope="session")
def default_llm_bf16():
    """The default LLM in bfloat16, the dtype the engine defaults to on a CPU that has it."""
    from labkit import load_model

    return load_model("smollm2-135m-instruct", device="cpu", dtype="bfloat16", progress=False)


@pytest.fixture(scope="session")
def default_encoder():
    from labkit import load_model

    return load_model("minilm-l6-v2", device="cpu", dtype="float32", progress=False)


@pytest.fixture(scope="session")
def tiny_model_dirs(tmp_path_factory, default_llm_dir) -> dict[str, str]:
    """Directories of tiny random decoder models: llama, qwen2, mistral, gpt2."""
    root = tmp_path_factory.mktemp("tiny-models")
    return {arch: str(build_tiny_model(arch, root / arch, default_llm_dir)) for arch in TINY_ARCHITECTURES}


@pytest.fixture(scope="module")
def default_server(default_llm_fp32):
    """The OpenAI-compatible server on the default model (float32), one per test module: an engine attaches to
    the model object, so a module that builds its own `LLM` on it must not share a server with another."""
    import labkit

    with labkit.serve(default_llm_fp32, encoder=None) as handle:
        yield handle


@pytest.fixture(scope="module")
def openai_client(default_server):
    """The official openai client on `default_server`, without retries (a test sees the first answer)."""
    import openai

    return openai.OpenAI(base_url=default_server.url + "/v1", api_key="unused", max_retries=0)

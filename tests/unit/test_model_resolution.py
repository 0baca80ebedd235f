"""Names resolve to sources, or fail with one clear sentence: no hub, no weights needed."""
from __future__ import annotations

import pytest
import torch

from labkit import load_model
from labkit.models import ALIASES, ModelNotFoundError
from labkit.models.loader import resolve_device, resolve_dtype

pytestmark = pytest.mark.unit


def test_unknown_name_lists_the_known_aliases(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelNotFoundError) as err:
        load_model("no-such-model")
    message = str(err.value)
    assert all(alias in message for alias in ALIASES)
    assert "cannot be reached" in message and "\n" not in message


def test_offline_hub_id_says_why_in_one_sentence(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelNotFoundError, match="not in the Hugging Face cache, and the hub cannot be reached"):
        load_model("openai-community/gpt2")


def test_missing_local_path(tmp_path):
    with pytest.raises(ModelNotFoundError, match="No model directory at"):
        load_model(str(tmp_path / "missing"))


def test_directory_without_config(tmp_path):
    with pytest.raises(ModelNotFoundError, match="no config.json"):
        load_model(str(tmp_path))


@pytest.mark.parametrize(("asked", "expected"), [("float32", torch.float32), ("bf16", torch.bfloat16),
                                                 (torch.float16, torch.float16)])
def test_dtype_names(asked, expected):
    assert resolve_dtype(asked, torch.device("cpu")) is expected


def test_bad_dtype_and_device_are_clear():
    with pytest.raises(ValueError, match="is not one of"):
        resolve_dtype("int3", torch.device("cpu"))
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA device"):
            resolve_device("cuda")
        assert resolve_device("auto") == torch.device("cpu")

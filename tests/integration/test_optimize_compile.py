"""torch.compile (inductor) on a tiny model: integration, because compiling takes ~30 s on 2 cores."""
from __future__ import annotations

import pytest
import torch

from labkit import load_model
from labkit.optimize import optimize, variant_of

pytestmark = pytest.mark.integration


def test_compiled_model_matches_eager(tiny_model_dirs):
    base = load_model(tiny_model_dirs["llama"], device="cpu", dtype="float32", progress=False)
    variant = optimize(base, "compile")
    ids = torch.tensor([[1, 5, 9, 13]])
    with torch.inference_mode():
        compiled = variant.model(input_ids=ids, use_cache=False).logits
        eager = base.model(input_ids=ids, use_cache=False).logits
    assert torch.allclose(compiled, eager, atol=1e-4)
    assert variant_of(variant) == "compile"

"""The sampler's penalties count tokens on the host from Python lists: the counts must follow the logits to
whatever device those are on (on a GPU a mismatch is an error, and the request fails). The meta device stands in
for a GPU here: it refuses a CPU tensor in the same way, and needs no hardware."""
from __future__ import annotations

import pytest
import torch

from labkit.engine.logits_processors import apply_penalties

pytestmark = pytest.mark.unit


def test_penalties_follow_the_logits_device():
    logits = torch.empty(2, 50, device="meta")
    out = apply_penalties(logits, [[1, 2], [3]], [[4, 4], []], presence=torch.tensor([0.5, 0.0]),
                          frequency=torch.tensor([0.1, 0.0]), repetition=torch.tensor([1.2, 1.0]))
    assert out.device == logits.device and out.shape == logits.shape


def test_penalties_on_the_cpu_are_unchanged_by_the_device_moves():
    logits = torch.tensor([[1.0, -1.0, 2.0, 0.5]])
    out = apply_penalties(logits.clone(), [[0]], [[1, 1]], presence=torch.tensor([0.5]),
                          frequency=torch.tensor([0.25]), repetition=torch.tensor([2.0]))
    # token 0 seen in the prompt (positive: halved), token 1 twice in the output (negative: doubled, then
    # frequency 2 * 0.25 and presence 0.5 subtracted), tokens 2 and 3 unseen
    assert torch.equal(out, torch.tensor([[0.5, -3.0, 2.0, 0.5]]))

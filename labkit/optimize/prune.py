"""Magnitude pruning of Linear weights: unstructured (smallest individual weights) or structured
(whole output rows with the smallest L2 norm), made permanent so no masks remain.

The zeros are stored densely, so memory and speed stay the same: pruning pays off only with sparse
kernels (2:4 sparsity on NVIDIA Ampere+) or when structured rows are physically removed. It is here to
show the accuracy cost of a given sparsity."""
from __future__ import annotations

import time

import torch
from torch.nn.utils import prune as torch_prune

from ..models.loaded import LoadedModel
from .variant import derive, private_copy

# Embeddings and the output head are left dense: pruning them removes whole tokens' representations.
SKIPPED = ("lm_head", "embed", "wte", "wpe")


def prune(loaded: LoadedModel, *, sparsity: float = 0.3, structured: bool = False) -> LoadedModel:
    if not 0.0 <= sparsity < 1.0:
        raise ValueError(f"sparsity must be in [0, 1), got {sparsity}")
    started = time.perf_counter()
    model = private_copy(loaded)
    for name, module in prunable_linears(model):
        if structured:
            torch_prune.ln_structured(module, "weight", amount=sparsity, n=2, dim=0)
        else:
            torch_prune.l1_unstructured(module, "weight", amount=sparsity)
        torch_prune.remove(module, "weight")
    kind = "structured" if structured else "unstructured"
    return derive(loaded, model, f"prune-{kind}-{round(sparsity * 100)}", started)


def prune_structured(loaded: LoadedModel, *, sparsity: float = 0.2) -> LoadedModel:
    return prune(loaded, sparsity=sparsity, structured=True)


def prunable_linears(model: torch.nn.Module) -> list[tuple[str, torch.nn.Linear]]:
    return [(name, module) for name, module in model.named_modules()
            if isinstance(module, torch.nn.Linear) and not any(s in name for s in SKIPPED)]


def sparsity_of(model: torch.nn.Module) -> float:
    """Fraction of exactly-zero weights over the prunable Linear layers."""
    zeros = total = 0
    for _, module in prunable_linears(model):
        zeros += int((module.weight == 0).sum())
        total += module.weight.numel()
    return zeros / max(total, 1)

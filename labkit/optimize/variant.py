"""What every optimizer shares: copy before changing, count the bytes honestly, label the result."""
from __future__ import annotations

import copy
import dataclasses
import time

import torch

from ..models.loaded import LoadedModel

# Set on the optimized module so tables, the engine and the server can tell which variant they hold
# without LoadedModel growing a field that every other layer would have to carry.
VARIANT_ATTRIBUTE = "labkit_variant"


def private_copy(loaded: LoadedModel) -> torch.nn.Module:
    """Optimizers change modules in place; the caller's model (often the fp32 reference) must stay intact."""
    return copy.deepcopy(loaded.model)


def variant_of(loaded: LoadedModel) -> str:
    return getattr(loaded.model, VARIANT_ATTRIBUTE, None) or _dtype_name(loaded.dtype)


def derive(loaded: LoadedModel, model, variant: str, started: float, *, dtype: torch.dtype | None = None,
           base_seconds: float | None = None) -> LoadedModel:
    """The optimized model as a LoadedModel. `load_seconds` is the base load plus the optimization time."""
    setattr(model, VARIANT_ATTRIBUTE, variant)
    base = loaded.load_seconds if base_seconds is None else base_seconds
    return dataclasses.replace(
        loaded,
        model=model,
        dtype=dtype or loaded.dtype,
        num_parameters=loaded.num_parameters,  # the same network; only its storage changed
        weight_bytes=stored_bytes(model),
        load_seconds=base + time.perf_counter() - started,
    )


def stored_bytes(model) -> int:
    """Bytes of weights as held in memory. Dynamic int8 Linear layers keep their weights in packed
    params that are neither parameters nor buffers, so they are counted separately; ONNX variants
    report their own size."""
    if hasattr(model, "weight_bytes"):
        return int(model.weight_bytes)
    tensors = {id(t): t for t in (*model.parameters(), *model.buffers())}
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    for module in model.modules():
        if isinstance(module, torch.ao.nn.quantized.dynamic.Linear):
            weight, bias = module._packed_params._weight_bias()
            total += weight.numel() * weight.element_size()
            total += 0 if bias is None else bias.numel() * bias.element_size()
    return total


def _dtype_name(dtype: torch.dtype) -> str:
    return {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}.get(dtype, str(dtype))

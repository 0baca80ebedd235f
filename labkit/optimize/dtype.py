"""Plain dtype casts, the baselines every other variant is compared with."""
from __future__ import annotations

import time

import torch

from ..models.loaded import LoadedModel
from .variant import derive, private_copy


def to_dtype(loaded: LoadedModel, dtype: torch.dtype, variant: str) -> LoadedModel:
    started = time.perf_counter()
    model = private_copy(loaded).to(dtype)
    return derive(loaded, model, variant, started, dtype=dtype)


def fp32(loaded: LoadedModel) -> LoadedModel:
    return to_dtype(loaded, torch.float32, "fp32")


def bf16(loaded: LoadedModel) -> LoadedModel:
    """Halves weight memory; faster only where the CPU or GPU multiplies in bf16 natively (AVX512-BF16, AMX)."""
    return to_dtype(loaded, torch.bfloat16, "bf16")

"""torch.compile of the model's forward (inductor). The first calls pay for compilation (tens of seconds
on 2 cores, again for each new shape unless dynamic); it pays off for long-running servers, mostly on
GPU with CUDA graphs ("reduce-overhead"), much less for a one-off notebook cell."""
from __future__ import annotations

import time

import torch

from ..models.loaded import LoadedModel
from .variant import derive, private_copy


def compile_model(loaded: LoadedModel, *, mode: str | None = None) -> LoadedModel:
    started = time.perf_counter()
    model = private_copy(loaded)
    # dynamic shapes: decode changes the sequence length every step; static would recompile each time
    model.forward = torch.compile(model.forward, mode=mode, dynamic=True)
    return derive(loaded, model, "compile", started)

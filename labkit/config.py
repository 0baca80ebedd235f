"""Frozen configuration, one dataclass per layer of the flow (load → serve → route → scale → monitor).

Configs are values: build a new one with `dataclasses.replace` rather than mutating a shared instance.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


def cache_dir() -> Path:
    """Where converted models live: `$LABKIT_CACHE`, else `~/.cache/labkit`."""
    return Path(os.environ.get("LABKIT_CACHE") or Path.home() / ".cache" / "labkit").expanduser()


@dataclass(frozen=True)
class ModelConfig:
    """What to load and how: an alias from `labkit models`, a Hugging Face id, or a local directory."""

    name: str = "smollm2-135m-instruct"
    device: str = "auto"  # "auto" picks CUDA when present, else CPU
    dtype: str = "auto"  # "auto": bfloat16 on CUDA and on CPUs with native bf16, else float32
    trust_remote_code: bool = False

"""`LoadedModel`: a model, its tokenizer and the facts about its footprint that inference cares about."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ..errors import UnsupportedModel
from .registry import ModelKind


@dataclass(frozen=True)
class LoadedModel:
    name: str  # alias, hub id or path, as asked for
    source: str  # the directory the weights were read from
    kind: ModelKind
    model: Any  # a transformers PreTrainedModel, in eval mode
    tokenizer: Any
    device: torch.device
    dtype: torch.dtype
    num_parameters: int
    weight_bytes: int  # parameters and buffers as stored in memory, tied weights counted once
    load_seconds: float

    @property
    def weight_mb(self) -> float:
        return self.weight_bytes / 2**20

    def summary(self) -> dict[str, Any]:
        """The footprint as plain values, for tables and logs."""
        return {
            "name": self.name,
            "kind": self.kind,
            "architecture": type(self.model).__name__,
            "device": str(self.device),
            "dtype": str(self.dtype).removeprefix("torch."),
            "parameters_m": round(self.num_parameters / 1e6, 1),
            "weight_mb": round(self.weight_mb, 1),
            "load_s": round(self.load_seconds, 2),
        }

    @torch.inference_mode()
    def embed(self, texts: list[str], *, normalize: bool = True) -> torch.Tensor:
        """Sentence embeddings of an encoder: mean of token states over the attention mask (as
        sentence-transformers does for MiniLM), L2-normalised so a dot product is a cosine."""
        if self.kind != "encoder":
            raise UnsupportedModel(f"{self.name} is a {self.kind} model; embeddings need an encoder such as minilm-l6-v2")
        batch = self.tokenizer(texts, padding=True, truncation=True, return_tensors="pt").to(self.device)
        states = self.model(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).to(states.dtype)
        pooled = (states * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
        pooled = pooled.float()
        return torch.nn.functional.normalize(pooled, dim=-1) if normalize else pooled

    def __repr__(self) -> str:
        s = self.summary()
        return (
            f"LoadedModel({s['name']!r}, {s['architecture']}, {s['parameters_m']}M params, "
            f"{s['weight_mb']} MB {s['dtype']} on {s['device']}, loaded in {s['load_s']} s)"
        )

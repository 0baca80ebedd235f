"""The encoder behind /v1/embeddings: a `LoadedModel` fed by the dynamic batcher, so texts that arrive
close together share one forward pass."""
from __future__ import annotations

import asyncio
import base64
from dataclasses import dataclass

import numpy as np
import torch

from ..errors import UnsupportedModel
from ..engine.dynamic_batcher import DynamicBatcher, QueueFullError
from ..models import LoadedModel
from .errors import queue_full


@dataclass(frozen=True)
class EmbeddedText:
    vector: np.ndarray  # float32, L2-normalised
    tokens: int  # tokens the encoder saw (after truncation to its maximum length)


class EmbeddingService:
    def __init__(self, loaded: LoadedModel, *, max_batch_size: int = 32, max_queue_delay_ms: float = 5.0,
                 max_queue_size: int = 4096, retry_after_s: int = 1, metrics=None):
        if loaded.kind != "encoder":
            raise UnsupportedModel(f"{loaded.name} is a {loaded.kind}; /v1/embeddings needs an encoder")
        self.loaded = loaded
        self.name = loaded.name
        self.dimensions = int(loaded.model.config.hidden_size)
        self.retry_after_s = retry_after_s
        on_batch = (lambda size, seconds: metrics.record_embedding_batch(size)) if metrics is not None else None
        self.batcher = DynamicBatcher(self._embed_batch, max_batch_size=max_batch_size,
                                      max_queue_delay_ms=max_queue_delay_ms, max_queue_size=max_queue_size,
                                      on_batch=on_batch, name="labkit-embeddings")

    @property
    def max_model_len(self) -> int:
        return int(getattr(self.loaded.model.config, "max_position_embeddings", 512))

    def _embed_batch(self, texts: list[str]) -> list[EmbeddedText]:
        counts = [len(ids) for ids in self.loaded.tokenizer(texts, truncation=True)["input_ids"]]
        with torch.inference_mode():
            vectors = self.loaded.embed(texts).cpu().numpy().astype(np.float32)
        return [EmbeddedText(vector, n) for vector, n in zip(vectors, counts)]

    async def embed(self, texts: list[str]) -> list[EmbeddedText]:
        try:
            futures = self.batcher.submit_many(texts)
        except QueueFullError:
            raise queue_full(self.retry_after_s) from None
        wrapped = [asyncio.wrap_future(f) for f in futures]
        try:
            return await asyncio.gather(*wrapped)
        except asyncio.CancelledError:  # the client left: texts not yet batched are skipped
            for future in futures:
                future.cancel()
            raise

    def close(self) -> None:
        self.batcher.close()


def encode_vector(vector: np.ndarray, encoding_format: str) -> list[float] | str:
    """OpenAI's two encodings: a list of floats, or base64 of little-endian float32 bytes."""
    if encoding_format == "base64":
        return base64.b64encode(vector.astype("<f4").tobytes()).decode("ascii")
    return vector.tolist()
